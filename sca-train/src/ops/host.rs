//! Bridge between dfdx device storage and the host-side kernels, plus the small
//! deterministic-reduction and scratch-buffer helpers those kernels share.

use std::cell::RefCell;

use dfdx::shapes::{HasShape, Shape};
use dfdx::tensor::{Cpu, Storage, Tensor};
use dfdx::tensor_ops::Device;

/// A dfdx device whose gradient buffers the host kernels can read and update.
///
/// The kernels run on the CPU. [`Cpu`] exposes its buffers directly, so nothing
/// is copied; a GPU device could implement this by copying to and from the host
/// (dfdx's `Cuda` does not implement it yet, which keeps the `cuda` build
/// compiling without claiming GPU kernels exist).
pub trait HostDevice: Device<f32> {
    /// Calls `f` with a host view of a gradient (or other storage) buffer.
    fn with_host<R>(buf: &<Self as Storage<f32>>::Vec, f: impl FnOnce(&[f32]) -> R) -> R;
    /// Calls `f` with a mutable host view of a gradient buffer; what `f` writes is
    /// what the buffer holds afterwards.
    fn with_host_mut<R>(
        buf: &mut <Self as Storage<f32>>::Vec,
        f: impl FnOnce(&mut [f32]) -> R,
    ) -> R;
}

impl HostDevice for Cpu {
    fn with_host<R>(buf: &<Self as Storage<f32>>::Vec, f: impl FnOnce(&[f32]) -> R) -> R {
        f(&buf[..])
    }
    fn with_host_mut<R>(
        buf: &mut <Self as Storage<f32>>::Vec,
        f: impl FnOnce(&mut [f32]) -> R,
    ) -> R {
        f(&mut buf[..])
    }
}

/// Copies a contiguous tensor's elements to a host vector.
pub(crate) fn to_host<S: Shape, D: HostDevice, T>(t: &Tensor<S, f32, D, T>) -> Vec<f32> {
    let mut v = vec![0.0; t.shape().num_elements()];
    t.copy_into(&mut v);
    v
}

/// Length of the chunks that deterministic parallel sums split their input into.
/// Fixed (not derived from the thread count) so results do not depend on it.
pub(crate) const SUM_CHUNK: usize = 1 << 14;

/// Sum of `f(i)` for `i` in `0..len`, in f64, computed in parallel over
/// fixed-size chunks whose partial sums are added in index order.
pub(crate) fn det_sum(len: usize, f: impl Fn(usize) -> f64 + Sync) -> f64 {
    use rayon::prelude::*;
    let chunks = len.div_ceil(SUM_CHUNK);
    let partial: Vec<f64> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let end = ((c + 1) * SUM_CHUNK).min(len);
            (c * SUM_CHUNK..end).map(&f).sum()
        })
        .collect();
    partial.into_iter().sum()
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with a per-thread scratch buffer of `len` floats (contents
/// unspecified). Reusing it across calls avoids re-faulting large fresh
/// allocations for every im2col tile.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    // Taken out of the cell (not borrowed) so a nested call cannot panic; it
    // just gets a fresh buffer.
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < buf.len() {
            *s = buf;
        }
    });
    r
}

/// Adds `src` element-wise into `dst`.
pub(crate) fn add_into(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
    }
}

/// Per-channel sums of an NCHW buffer (`n` images, `c` channels, `hw` pixels),
/// each channel summed image by image in index order, in f64.
pub(crate) fn channel_sums(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f64> {
    use rayon::prelude::*;
    assert_eq!(x.len(), n * c * hw);
    (0..c)
        .into_par_iter()
        .map(|ch| {
            (0..n)
                .map(|i| {
                    let o = (i * c + ch) * hw;
                    x[o..o + hw].iter().map(|v| *v as f64).sum::<f64>()
                })
                .sum()
        })
        .collect()
}
