//! Bridge between dfdx device storage and the host-side kernels, plus the small
//! deterministic-reduction and scratch-buffer helpers those kernels share.

use std::cell::RefCell;

use dfdx::shapes::{HasShape, Shape};
use dfdx::tensor::{Cpu, Storage, Tensor};
use dfdx::tensor_ops::Device;

/// A dfdx device whose gradient buffers the host kernels can read and update.
///
/// The kernels run on the CPU. [`Cpu`] exposes its buffers directly, so nothing
/// is copied. dfdx's `Cuda` (feature `cuda`) copies each buffer to the host and
/// back; there the layer ops run on the GPU ([`Self::DFDX_KERNELS`]) and only
/// the loss (logits and their gradient), AdamW (parameters and gradients) and
/// the batch statistics cross.
pub trait HostDevice:
    Device<f32> + super::native::LayerKernels + dfdx::tensor::Synchronize
{
    /// The ops use dfdx's own kernels on this device ([`super::native`])
    /// instead of the host kernels, which would copy every buffer both ways.
    const DFDX_KERNELS: bool;
    /// Calls `f` with a host view of a gradient (or other storage) buffer.
    fn with_host<R>(
        buf: &<Self as Storage<f32>>::Vec,
        f: impl FnOnce(&[f32]) -> R,
    ) -> Result<R, Self::Err>;
    /// Calls `f` with a mutable host view of a gradient buffer; what `f` writes is
    /// what the buffer holds afterwards.
    fn with_host_mut<R>(
        buf: &mut <Self as Storage<f32>>::Vec,
        f: impl FnOnce(&mut [f32]) -> R,
    ) -> Result<R, Self::Err>;
    /// Opens (`true`) or closes the range a GPU profiler started with
    /// `--profile-from-start off` records (`cuProfilerStart`/`Stop`; no
    /// effect without one): `sca-train bench` brackets its timed steps, so a
    /// profile holds none of the warm-up's one-off work (kernel compilation,
    /// cuDNN's algorithm search).
    fn profiler_range(_open: bool) {}
    /// A tensor of `shape` holding `data` (on a GPU, copied through pinned
    /// memory, `cuda_host.rs`).
    fn tensor_from_host(
        &self,
        data: &[f32],
        shape: super::Shape4,
    ) -> Result<Tensor<super::Shape4, f32, Self>, Self::Err> {
        self.try_tensor_from_vec(data.to_vec(), shape)
    }
}

impl HostDevice for Cpu {
    const DFDX_KERNELS: bool = false;
    fn with_host<R>(
        buf: &<Self as Storage<f32>>::Vec,
        f: impl FnOnce(&[f32]) -> R,
    ) -> Result<R, Self::Err> {
        Ok(f(&buf[..]))
    }
    fn with_host_mut<R>(
        buf: &mut <Self as Storage<f32>>::Vec,
        f: impl FnOnce(&mut [f32]) -> R,
    ) -> Result<R, Self::Err> {
        Ok(f(&mut buf[..]))
    }
}

#[cfg(feature = "cuda")]
impl HostDevice for dfdx::tensor::Cuda {
    const DFDX_KERNELS: bool = true;
    fn with_host<R>(
        buf: &<Self as Storage<f32>>::Vec,
        f: impl FnOnce(&[f32]) -> R,
    ) -> Result<R, Self::Err> {
        // The buffer derefs to cudarc's `CudaSlice`, which knows its device.
        let host = buf.device().dtoh_sync_copy(&**buf)?;
        Ok(f(&host))
    }
    fn with_host_mut<R>(
        buf: &mut <Self as Storage<f32>>::Vec,
        f: impl FnOnce(&mut [f32]) -> R,
    ) -> Result<R, Self::Err> {
        let dev = buf.device();
        let mut host = dev.dtoh_sync_copy(&**buf)?;
        let r = f(&mut host);
        dev.htod_sync_copy_into(&host, &mut **buf)?;
        Ok(r)
    }
    fn tensor_from_host(
        &self,
        data: &[f32],
        shape: super::Shape4,
    ) -> Result<Tensor<super::Shape4, f32, Self>, Self::Err> {
        if data.len() != shape.num_elements() {
            return Err(dfdx::tensor::CpuError::WrongNumElements.into());
        }
        // SAFETY: `upload` writes every element.
        let mut buf = unsafe { self.alloc_uninit::<f32>(data.len()) }?;
        super::cuda_host::upload(&mut buf, data)?;
        Ok(self.tensor_from_cuda_slice(shape, buf))
    }
    fn profiler_range(open: bool) {
        // Failure only means no profiler is attached.
        let _ = if open {
            cudarc::driver::profiler_start()
        } else {
            cudarc::driver::profiler_stop()
        };
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
