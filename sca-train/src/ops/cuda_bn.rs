//! Training-mode batch norm fused into five CUDA kernels for dfdx's `Cuda`:
//! per-channel sums, mean and inverse deviation, normalise; gradient sums,
//! input and parameter gradients.
//!
//! Spelled out in dfdx's reductions and broadcasts ([`super::native`]), one
//! batch norm is seven passes over the activation forward and eleven backward,
//! the broadcasts' backward reducing with atomics: on an H100 that was about
//! 54 ms of a U-Net training step's 135 ms of GPU time (BENCHMARKS.md, GPU
//! section); here it is two passes forward and two backward (5 ms). The
//! kernels compute what the host kernel ([`super::batch_norm`]) computes, in
//! the same order of operations: per-channel sums in `f64`, `scale = gamma / sqrt(var + eps)`,
//! `shift = beta - mean * scale`, `y = x * scale + shift`, and
//! `gx = gamma * inv_std * (gy - mean(gy) - x̂ * mean(gy * x̂))`. The sums are
//! accumulated with `f64` atomics, whose order varies from run to run: the
//! results can differ in an `f64`'s last bits, which rarely moves an `f32`
//! result by one unit in the last place.
//!
//! The same per-channel reduction gives a convolution bias its gradient
//! ([`bias_grad`]): cuDNN's `cudnnConvolutionBackwardBias` took about 1 ms
//! for each of the U-Net's four biased convolutions on an H200, whose planes
//! are large and channels few.
//!
//! In a bf16 step with bf16 saved activations, the op keeps a bf16 copy of
//! its input for the backward pass ([`Saved`]), which the backward kernels
//! read in place (`BnDims::x_bf16`): exact
//! after the U-Net's bias-free bf16 convolutions, whose outputs are bf16
//! values. ReLU is then fused in (`relu`): applied as the output is
//! written, its mask recomputed backward from the kept input with the same
//! fused multiply-add, so the op keeps nothing of its output, which the
//! next layer alone holds (and keeps as a bf16 copy).
//!
//! The kernels are in `kernels.cu` ([`super::cuda_kernels`]). The GPU
//! machine's check (`bench/gpu.sh`) covers them: the CPU-vs-GPU loss trace
//! runs every batch norm forward and backward.

use cudarc::driver::{CudaSlice, DeviceSlice, LaunchAsync, LaunchConfig};
use dfdx::prelude::*;

use super::batch_norm::BnDims;
use super::cuda_bf16::Saved;
use super::cuda_kernels::{func, load};
use super::{take_grad, BatchStats, OpError, Shape4};

// SAFETY: repr(C) plain integers, as kernels.cu's `BnDims`.
unsafe impl cudarc::driver::DeviceRepr for BnDims {}

const THREADS: u32 = 256;

/// Grid for one pass: `(blocks per channel, channels)`, enough blocks to fill
/// a large GPU when there are few channels, one per channel when the planes
/// are small.
fn grid(c: usize, hw: usize) -> LaunchConfig {
    let per_channel = hw.div_ceil(THREADS as usize * 16).clamp(1, 64) as u32;
    LaunchConfig {
        grid_dim: (per_channel, c as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

type Vec1<T = NoneTape> = Tensor<(usize,), f32, Cuda, T>;

/// `t`'s device buffer, or a shape error naming `what` where its elements
/// are not contiguous in it (a broadcast or permuted view).
pub(super) fn contiguous<'a, S: Shape, T>(
    op: &'static str,
    what: &str,
    t: &'a Tensor<S, f32, Cuda, T>,
) -> Result<&'a CudaSlice<f32>, OpError> {
    t.contiguous_cuda_slice()
        .ok_or_else(|| OpError::shape(op, format!("{what} is not contiguous")))
}

/// [`super::batch_norm2d_train`] on the GPU, with ReLU fused in where
/// `relu` (its mask recomputed from the input backward); shapes were
/// checked by the caller.
#[allow(clippy::type_complexity)]
pub(crate) fn batch_norm2d_train<T: Tape<f32, Cuda>>(
    x: Tensor<Shape4, f32, Cuda, T>,
    gamma: &Vec1,
    beta: &Vec1,
    eps: f32,
    relu: bool,
) -> Result<(Tensor<Shape4, f32, Cuda, T>, BatchStats), OpError> {
    const OP: &str = "batch_norm2d_train";
    let err = |e: cudarc::driver::DriverError| OpError::device(OP, e);
    let shape = *x.shape();
    let (n, c, h, w) = shape;
    let hw = h * w;
    let count = (n * hw) as f64;
    let numel = n * c * hw;
    let xs = contiguous(OP, "input", &x)?;
    let cuda = xs.device();
    load(&cuda).map_err(|e| OpError::device(OP, e))?;
    let cfg = grid(c, hw);
    let (ni, ci, hwi) = (n as i32, c as i32, hw as i32);
    let dims = BnDims {
        n: ni,
        c: ci,
        hw: hwi,
        relu: i32::from(relu),
        x_bf16: 0,
    };

    let mut sums = cuda.alloc_zeros::<f64>(2 * c).map_err(err)?;
    // Safety: bn_finalize writes every element.
    let mut mv = unsafe { cuda.alloc::<f64>(2 * c) }.map_err(err)?;
    let dev = x.device().clone();
    // Safety: bn_forward writes every element.
    let mut ys = unsafe { dev.alloc_uninit::<f32>(numel) }.map_err(|e| OpError::device(OP, e))?;
    let (gs, bs) = (
        contiguous(OP, "gamma", gamma)?,
        contiguous(OP, "beta", beta)?,
    );
    unsafe {
        func(&cuda, "bn_stats")
            .launch(cfg, (xs, &mut sums, ni, ci, hwi))
            .map_err(err)?;
        func(&cuda, "bn_finalize")
            .launch(
                LaunchConfig::for_num_elems(c as u32),
                (&sums, &mut mv, ci, count, eps),
            )
            .map_err(err)?;
        func(&cuda, "bn_forward")
            .launch(cfg, (xs, &mv, gs, bs, &mut ys, dims))
            .map_err(err)?;
    }
    // The running statistics need them on the host (one small copy).
    let host = cuda.dtoh_sync_copy(&sums).map_err(err)?;
    let stats = BatchStats {
        mean: (0..c).map(|ch| (host[2 * ch] / count) as f32).collect(),
        var: (0..c)
            .map(|ch| {
                let m = host[2 * ch] / count;
                (host[2 * ch + 1] / count - m * m).max(0.0) as f32
            })
            .collect(),
        count: n * hw,
    };

    let (x, mut tape) = x.split_tape();
    let y = dev.tensor_from_cuda_slice(shape, ys);
    if T::OWNS_TAPE {
        let (x_g, g_g, b_g, y_g) = (x.ghost(), gamma.ghost(), beta.ghost(), y.ghost());
        // In a bf16 step, possibly a bf16 copy (lossless after a bias-free
        // bf16 convolution; cuda_bf16.rs), `x`'s buffer released.
        let x = Saved::keep(x, true).map_err(|e| OpError::device(OP, e))?;
        let (gamma, beta) = (gamma.clone(), beta.clone());
        tape.add_backward_op(move |grads| {
            let gy = take_grad!(grads, y_g, dev);
            let gy: &CudaSlice<f32> = &gy;
            // Contiguous: checked in the forward pass.
            let (gs, bs) = (
                gamma.contiguous_cuda_slice().expect("checked in forward"),
                beta.contiguous_cuda_slice().expect("checked in forward"),
            );
            // Three gradient buffers at once: take two out, borrow the third.
            let mut gg = take_grad!(grads, g_g, dev);
            let mut gb = take_grad!(grads, b_g, dev);
            let gx: &mut CudaSlice<f32> = grads.get_or_alloc_mut(&x_g)?;
            // The kernels read a bf16 copy in place (no widened buffer).
            let (xs, x_bf16) = x.raw();
            let dims = BnDims {
                x_bf16: i32::from(x_bf16),
                ..dims
            };
            let mut gsums = cuda.alloc_zeros::<f64>(2 * c)?;
            unsafe {
                func(&cuda, "bn_grad_sums").launch(cfg, (xs, gy, &mv, gs, bs, &mut gsums, dims))
            }?;
            let ggs: &mut CudaSlice<f32> = &mut gg;
            let gbs: &mut CudaSlice<f32> = &mut gb;
            unsafe {
                func(&cuda, "bn_backward").launch(
                    cfg,
                    (xs, gy, &mv, &gsums, gs, bs, gx, ggs, gbs, dims, count),
                )
            }?;
            *grads.get_or_alloc_mut(&g_g)? = gg;
            *grads.get_or_alloc_mut(&b_g)? = gb;
            Ok(())
        });
    }
    Ok((y.put_tape(tape), stats))
}

/// `gb += ` the per-channel sums of `gy`, an `(n, c, hw)` gradient: the
/// gradient of a per-channel bias added to the tensor `gy` is the gradient of.
pub(crate) fn bias_grad(
    gy: &CudaSlice<f32>,
    gb: &mut CudaSlice<f32>,
    (n, c, hw): (usize, usize, usize),
) -> Result<(), String> {
    let err = |e: cudarc::driver::DriverError| format!("bias gradient: {e}");
    if gy.len() != n * c * hw || gb.len() != c {
        return Err(format!(
            "bias gradient: {} and {} elements for ({n}, {c}, {hw})",
            gy.len(),
            gb.len()
        ));
    }
    let cuda = gy.device();
    load(&cuda)?;
    let mut sums = cuda.alloc_zeros::<f64>(2 * c).map_err(err)?;
    let (ni, ci, hwi) = (n as i32, c as i32, hw as i32);
    // Safety: lengths checked above; the kernels read and write within them.
    unsafe {
        func(&cuda, "bn_stats")
            .launch(grid(c, hw), (gy, &mut sums, ni, ci, hwi))
            .map_err(err)?;
        func(&cuda, "channel_sums_add")
            .launch(LaunchConfig::for_num_elems(c as u32), (&sums, gb, ci))
            .map_err(err)?;
    }
    Ok(())
}
