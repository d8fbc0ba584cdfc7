//! The heap allocator of sca-train's binaries: mimalloc, told to keep the
//! memory a training step frees.
//!
//! Why: every step allocates and frees the same few hundred MB of activations
//! and gradients. glibc hands blocks that large back to the kernel on free
//! (`munmap`) and faults fresh pages in on the next step; on a 2-core machine
//! the page faults and TLB shoot-downs took ~40% of a step (measured with
//! `perf`, see BENCHMARKS.md). Binaries opt in with
//! `#[global_allocator] static A: sca_train::alloc::Allocator = sca_train::alloc::Allocator;`
//! and call [`keep_freed_memory`] first thing in `main`.

/// The allocator type for `#[global_allocator]`.
pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (the same index in its
/// v2 and v3 headers; the test below fails if a release moves it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed pages to the operating system: a trainer's working set
/// is the same every step, so the pages are reused instead of re-faulted.
pub fn keep_freed_memory() {
    // SAFETY: sets a plain integer option; mimalloc reads it on each purge.
    // Not thread-safe per mimalloc's docs, hence "first thing in main".
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_index_is_mimallocs() {
        // SAFETY: reads an integer option.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(
                default, 1000,
                "purge_delay defaults to 1000 ms in mimalloc v3's options.c (the only option that does)"
            );
        }
        keep_freed_memory();
        // SAFETY: as above.
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            -1
        );
    }
}
