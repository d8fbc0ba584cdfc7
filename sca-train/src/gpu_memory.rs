//! A GPU run's memory: where its buffers come from ([`GpuBuffers`],
//! `SCA_CUDA_BUFFERS`) and what the device's memory pool, from which every
//! buffer comes, has held ([`PoolPeaks`], read by `pool` in the `cuda` build). `sca-train bench`
//! reports these beside PyTorch's allocator figures (`bench/gpu.sh`).

/// Where a CUDA run's buffers come from: `SCA_CUDA_BUFFERS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuBuffers {
    /// dfdx's buffer cache (the default): a freed buffer is kept for the
    /// next request of its exact element type and length.
    Cache,
    /// The driver's stream-ordered memory pool, keeping what is freed (no
    /// release threshold): a freed block serves any request it fits, as a
    /// block of PyTorch's caching allocator does.
    Pool,
}

impl GpuBuffers {
    /// `SCA_CUDA_BUFFERS`'s value: unset, `cache` or `pool`.
    pub fn from_setting(v: Option<&str>) -> Result<Self, String> {
        match v.map(str::trim) {
            None | Some("" | "cache") => Ok(GpuBuffers::Cache),
            Some("pool") => Ok(GpuBuffers::Pool),
            Some(other) => Err(format!(
                "SCA_CUDA_BUFFERS={other:?} is not one of cache (dfdx's buffer cache, the default), pool (the driver's memory pool)"
            )),
        }
    }

    /// As `sca-train bench` reports it.
    pub fn name(self) -> &'static str {
        match self {
            GpuBuffers::Cache => "cache",
            GpuBuffers::Pool => "pool",
        }
    }
}

/// The memory pool's high-water marks, in bytes
/// ([`crate::device::Compute::gpu_pool_peaks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPeaks {
    pub reserved: u64,
    pub used: u64,
}

/// The device's current memory pool (its default one: nothing sets
/// another), from which cudarc's stream-ordered allocations
/// (`cuMemAllocAsync`) come, through the driver API (cudarc 0.9
/// has no safe wrapper for it). The context is current on this thread once
/// the device has run anything, as for `mem_get_info`.
#[cfg(feature = "cuda")]
pub(crate) mod pool {
    use cudarc::driver::sys::{self, CUmemPool_attribute as Attr};

    fn current() -> Option<sys::CUmemoryPool> {
        let mut dev: sys::CUdevice = 0;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: out-pointers to locals of the types the driver writes.
        unsafe {
            sys::cuCtxGetDevice(&mut dev).result().ok()?;
            sys::cuDeviceGetMemPool(&mut pool, dev).result().ok()?;
        }
        Some(pool)
    }

    /// One of the pool's byte counts (all are `cuuint64_t`). Zero (a pool
    /// nothing came from: cudarc allocating synchronously, where the GPU has
    /// no pools) reads as unknown.
    fn get(attr: Attr) -> Option<u64> {
        let mut v: u64 = 0;
        // SAFETY: the attribute's value is a cuuint64_t.
        unsafe { sys::cuMemPoolGetAttribute(current()?, attr, (&mut v as *mut u64).cast()) }
            .result()
            .ok()?;
        (v > 0).then_some(v)
    }

    fn set(attr: Attr, mut v: u64) -> Option<()> {
        // SAFETY: as in `get`.
        unsafe { sys::cuMemPoolSetAttribute(current()?, attr, (&mut v as *mut u64).cast()) }
            .result()
            .ok()
    }

    /// Restarts [`peaks`]' marks (zero is the only value the driver takes).
    pub fn reset_peaks() -> Option<()> {
        set(Attr::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)?;
        set(Attr::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, 0)
    }

    /// The most bytes the pool held, and had handed out, at once since
    /// [`reset_peaks`].
    pub fn peaks() -> Option<super::PoolPeaks> {
        Some(super::PoolPeaks {
            reserved: get(Attr::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
            used: get(Attr::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
        })
    }

    /// Makes the pool keep freed memory for later requests instead of
    /// returning it to the driver at each synchronisation (`keep`: its
    /// release threshold, 0 by default, raised to everything), or not.
    /// `None` where the GPU has no pool.
    pub fn keep_freed(keep: bool) -> Option<()> {
        let threshold = if keep { u64::MAX } else { 0 };
        set(Attr::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, threshold)
    }

    /// The bytes the pool holds from the driver now.
    #[cfg(test)]
    pub fn reserved_now() -> Option<u64> {
        get(Attr::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)
    }

    /// The bytes of the pool's handed out now: buffers not yet freed. Unlike
    /// the driver's count of memory in use, not raised by freed memory the
    /// pool keeps until the next synchronisation.
    #[cfg(test)]
    pub fn in_use() -> Option<u64> {
        get(Attr::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "cuda")]
    #[test]
    fn gpu_the_pool_counts_buffers_handed_out_and_its_peak_restarts() {
        use dfdx::prelude::*;
        const MIB: u64 = 1 << 20;
        // A device built here keeps no buffer cache: a dropped tensor's
        // buffer goes back to the pool.
        let dev = dfdx::tensor::Cuda::try_build(0, 0).expect("this test needs a GPU");
        let probe: Tensor<Rank1<1>, f32, _> = dev.zeros();
        // Frees are stream-ordered: counted once the stream reaches them.
        let sync = || {
            let p = probe.contiguous_cuda_slice().expect("contiguous");
            p.device().synchronize().expect("synchronize");
        };
        sync();
        let base = pool::in_use().unwrap_or(0);
        pool::reset_peaks().expect("the GPU has a memory pool");
        let big: Tensor<(usize,), f32, _> = dev.zeros_like(&(64 * MIB as usize / 4,));
        let with_big = pool::in_use().expect("in use");
        assert!(with_big >= base + 64 * MIB, "{base} then {with_big}");
        let peaks = pool::peaks().expect("peaks");
        let high = peaks.used;
        assert!(high >= with_big, "peak {high} below in use {with_big}");
        assert!(peaks.reserved >= high, "{peaks:?}");
        drop(big);
        sync();
        let after = pool::in_use().unwrap_or(0);
        assert!(
            after + 64 * MIB <= with_big,
            "{with_big} then {after} after the drop"
        );
        // The mark restarts from what is in use, which is 64 MiB less.
        pool::reset_peaks().expect("reset");
        let small: Tensor<(usize,), f32, _> = dev.zeros_like(&(MIB as usize / 4,));
        let restarted = pool::peaks().expect("peaks after the reset").used;
        assert!(
            restarted + 48 * MIB <= high,
            "peak {high}, then {restarted} after a reset"
        );
        drop(small);
        // Kept: freed memory stays the pool's across a synchronisation.
        pool::keep_freed(true).expect("a release threshold");
        let big: Tensor<(usize,), f32, _> = dev.zeros_like(&(64 * MIB as usize / 4,));
        drop(big);
        sync();
        let kept = pool::reserved_now().unwrap_or(0);
        pool::keep_freed(false).expect("the default threshold");
        sync();
        let released = pool::reserved_now().unwrap_or(0);
        assert!(
            kept >= 64 * MIB && released + 48 * MIB <= kept,
            "reserved after a freed 64 MiB: {kept} kept, {released} once released"
        );
        drop(probe);
    }

    #[test]
    fn cuda_buffer_settings_parse_and_bad_ones_name_the_choices() {
        assert_eq!(GpuBuffers::from_setting(None), Ok(GpuBuffers::Cache));
        assert_eq!(GpuBuffers::from_setting(Some("")), Ok(GpuBuffers::Cache));
        assert_eq!(
            GpuBuffers::from_setting(Some(" cache")),
            Ok(GpuBuffers::Cache)
        );
        assert_eq!(GpuBuffers::from_setting(Some("pool")), Ok(GpuBuffers::Pool));
        let e = GpuBuffers::from_setting(Some("arena")).unwrap_err();
        assert!(
            e.contains("SCA_CUDA_BUFFERS=\"arena\"") && e.contains("cache") && e.contains("pool"),
            "{e}"
        );
        assert_eq!(GpuBuffers::Pool.name(), "pool");
    }
}
