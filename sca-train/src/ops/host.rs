//! Bridge between dfdx device storage and the host-side kernels, plus the small
//! deterministic-reduction and scratch-buffer helpers those kernels share.

use std::borrow::Cow;
use std::cell::RefCell;

use dfdx::shapes::{HasShape, Shape};
use dfdx::tensor::{Cpu, Storage, Tensor};
use dfdx::tensor_ops::Device;

use super::adamw::AdamWStep;

/// A tensor from host data, or the index of the data's first value that is
/// not finite ([`HostDevice::tensor_from_host`]).
pub type Checked<D> = Result<Tensor<super::Shape4, f32, D>, usize>;

/// A dfdx device whose gradient buffers the host kernels can read and update.
///
/// The kernels run on the CPU. [`Cpu`] exposes its buffers directly, so nothing
/// is copied. dfdx's `Cuda` (feature `cuda`) copies each buffer to the host and
/// back; there the layer ops, BCE and AdamW run on the GPU
/// ([`Self::DFDX_KERNELS`], [`Self::adamw`]) and only the logits, a host
/// loss's gradient and the batch statistics cross.
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
    /// A tensor of `shape` holding `data`, or the index of the first value
    /// of `data` that is not finite (on a GPU, checked while it is copied
    /// through pinned memory, `cuda_host.rs`).
    fn tensor_from_host(
        &self,
        data: &[f32],
        shape: super::Shape4,
    ) -> Result<Checked<Self>, Self::Err> {
        use rayon::prelude::*;
        if let Some(i) = data.par_iter().position_first(|v| !v.is_finite()) {
            return Ok(Err(i));
        }
        self.try_tensor_from_vec(data.to_vec(), shape).map(Ok)
    }

    /// The elements of a contiguous tensor in host memory: borrowed where
    /// the device keeps them there (the CPU: no copy), else copied.
    fn host_view<S: Shape, T>(t: &Tensor<S, f32, Self, T>) -> Cow<'_, [f32]> {
        Cow::Owned(to_host(t))
    }

    /// AdamW's first or second moments of one parameter, where the update
    /// runs: a host vector on the CPU, a device buffer on a GPU.
    type Moments: Clone + std::fmt::Debug + Send + Sync;
    fn moments_from_host(&self, values: &[f32]) -> Result<Self::Moments, Self::Err>;
    fn moments_to_host(m: &Self::Moments) -> Result<Vec<f32>, Self::Err>;
    /// One mark per parameter, set where its gradient holds a non-finite
    /// value: [`Self::flag_nonfinite`] marks (on a GPU, a kernel launch),
    /// [`Self::first_flagged`] reads them all at once (one round trip).
    type Flags;
    fn nonfinite_flags(&self, n: usize) -> Result<Self::Flags, Self::Err>;
    fn flag_nonfinite(
        &self,
        g: &<Self as Storage<f32>>::Vec,
        flags: &mut Self::Flags,
        i: usize,
    ) -> Result<(), Self::Err>;
    fn first_flagged(&self, flags: &Self::Flags) -> Result<Option<usize>, Self::Err>;
    /// One AdamW step of `p` with gradient `g` ([`super::adamw`]).
    fn adamw<S: Shape>(
        &self,
        p: &mut Tensor<S, f32, Self>,
        m: &mut Self::Moments,
        v: &mut Self::Moments,
        g: &<Self as Storage<f32>>::Vec,
        s: &AdamWStep,
    ) -> Result<(), Self::Err>;
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
    fn host_view<S: Shape, T>(t: &Tensor<S, f32, Self, T>) -> Cow<'_, [f32]> {
        t.contiguous_host_slice()
            .map_or_else(|| Cow::Owned(to_host(t)), Cow::Borrowed)
    }
    type Moments = Vec<f32>;
    fn moments_from_host(&self, values: &[f32]) -> Result<Vec<f32>, Self::Err> {
        Ok(values.to_vec())
    }
    fn moments_to_host(m: &Vec<f32>) -> Result<Vec<f32>, Self::Err> {
        Ok(m.clone())
    }
    type Flags = Vec<bool>;
    fn nonfinite_flags(&self, n: usize) -> Result<Vec<bool>, Self::Err> {
        Ok(vec![false; n])
    }
    fn flag_nonfinite(
        &self,
        g: &<Self as Storage<f32>>::Vec,
        flags: &mut Vec<bool>,
        i: usize,
    ) -> Result<(), Self::Err> {
        use rayon::prelude::*;
        flags[i] = !g.par_iter().all(|v| v.is_finite());
        Ok(())
    }
    fn first_flagged(&self, flags: &Vec<bool>) -> Result<Option<usize>, Self::Err> {
        Ok(flags.iter().position(|f| *f))
    }
    fn adamw<S: Shape>(
        &self,
        p: &mut Tensor<S, f32, Self>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        g: &<Self as Storage<f32>>::Vec,
        s: &AdamWStep,
    ) -> Result<(), Self::Err> {
        let mut data = to_host(p);
        super::adamw::update_host(&mut data, m, v, g, s);
        p.copy_from(&data);
        Ok(())
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
    ) -> Result<Checked<Self>, Self::Err> {
        use super::cuda_host::{upload, UploadError};
        if data.len() != shape.num_elements() {
            return Err(dfdx::tensor::CpuError::WrongNumElements.into());
        }
        // SAFETY: `upload` writes every element.
        let mut buf = unsafe { self.alloc_uninit::<f32>(data.len()) }?;
        match upload(&mut buf, data, true) {
            Ok(()) => Ok(Ok(self.tensor_from_cuda_slice(shape, buf))),
            Err(UploadError::NonFinite(i)) => Ok(Err(i)),
            Err(UploadError::Driver(e)) => Err(e.into()),
        }
    }
    type Moments = cudarc::driver::CudaSlice<f32>;
    fn moments_from_host(&self, values: &[f32]) -> Result<Self::Moments, Self::Err> {
        // SAFETY: written in full below.
        let mut m = unsafe { self.alloc_uninit::<f32>(values.len()) }?;
        m.device().htod_sync_copy_into(values, &mut m)?;
        Ok(m)
    }
    fn moments_to_host(m: &Self::Moments) -> Result<Vec<f32>, Self::Err> {
        Ok(m.device().dtoh_sync_copy(m)?)
    }
    type Flags = cudarc::driver::CudaSlice<i32>;
    fn nonfinite_flags(&self, n: usize) -> Result<Self::Flags, Self::Err> {
        super::cuda_adamw::flags(self, n)
    }
    fn flag_nonfinite(
        &self,
        g: &<Self as Storage<f32>>::Vec,
        flags: &mut Self::Flags,
        i: usize,
    ) -> Result<(), Self::Err> {
        super::cuda_adamw::flag_nonfinite(g, flags, i)
    }
    fn first_flagged(&self, flags: &Self::Flags) -> Result<Option<usize>, Self::Err> {
        let host = flags.device().dtoh_sync_copy(flags)?;
        Ok(host.iter().position(|f| *f != 0))
    }
    fn adamw<S: Shape>(
        &self,
        p: &mut Tensor<S, f32, Self>,
        m: &mut Self::Moments,
        v: &mut Self::Moments,
        g: &<Self as Storage<f32>>::Vec,
        s: &AdamWStep,
    ) -> Result<(), Self::Err> {
        super::cuda_adamw::adamw(self, p, m, v, g, s)
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

/// A vector of `len` floats made chunk by chunk in parallel: chunk `i`
/// (`chunk` floats, the last one shorter) is zeroed and handed to
/// `init(i, chunk)` by the same task. Unlike `vec![0.0; len]` followed by a
/// parallel pass, the zeroing is not a serial pass over the whole buffer
/// and the chunk is still in cache when `init` writes it.
pub(crate) fn par_init(
    len: usize,
    chunk: usize,
    init: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| {
            c.fill(std::mem::MaybeUninit::new(0.0));
            // SAFETY: every element of `c` was initialised just above, and
            // `MaybeUninit<f32>` has the layout of `f32`.
            let c = unsafe { &mut *(c as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            init(i, c);
        });
    // SAFETY: the loop above initialised all `len` elements of the capacity.
    unsafe { v.set_len(len) };
    v
}

/// Adds `src` element-wise into `dst`.
pub(crate) fn add_into(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
    }
}

/// Adds a convolution's per-image weight-gradient partials into `gw` in
/// image order, so the sum does not depend on scheduling.
pub(crate) fn add_partials(gw: &mut [f32], partials: &[Vec<f32>]) {
    for p in partials {
        add_into(gw, p);
    }
}

/// `gb +=` the per-channel sums of `gy`, an `(n, c, hw)` output gradient:
/// the gradient of a per-channel bias added to that output.
pub(crate) fn add_bias_grad(gb: &mut [f32], gy: &[f32], (n, c, hw): (usize, usize, usize)) {
    for (d, s) in gb.iter_mut().zip(channel_sums(gy, n, c, hw)) {
        *d += s as f32;
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

#[cfg(test)]
mod tests {
    use dfdx::prelude::*;

    use super::*;

    #[test]
    fn par_init_hands_each_chunk_its_index() {
        let v = par_init(10, 3, |i, c| c.fill(i as f32));
        assert_eq!(v, [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0]);
        assert!(par_init(0, 4, |_, _| unreachable!()).is_empty());
    }

    /// The dfdx patch fills large buffers in parallel (SCA-PATCH.md, change
    /// 5): every element, fresh or from dfdx's buffer cache.
    #[test]
    fn dfdx_fills_large_buffers_whole() {
        let dev: Cpu = Default::default();
        let n = (1 << 19) + 7;
        for cache in [false, true] {
            if cache {
                dev.enable_cache();
            }
            for _ in 0..2 {
                let ones: Tensor<(usize,), f32, Cpu> = dev.ones_like(&(n,));
                assert!(ones.as_vec().iter().all(|v| *v == 1.0));
                drop(ones);
                let zeros: Tensor<(usize,), f32, Cpu> = dev.zeros_like(&(n,));
                assert!(zeros.as_vec().iter().all(|v| *v == 0.0));
            }
        }
        // A gradient buffer (the allocation the patch is for).
        let x: Tensor<(usize,), f32, Cpu> = dev.ones_like(&(n,));
        let mut grads = Gradients::<f32, Cpu>::leaky();
        assert!(grads
            .get_or_alloc_mut(&x)
            .unwrap()
            .iter()
            .all(|v| *v == 0.0));
    }
}
