//! The U-Net's convolution and 2x2 transposed convolution on dfdx's `Cuda`
//! through cuDNN ([`super::cudnn`]), bias included (its gradient by the batch
//! norm's per-channel reduction, [`bias_grad`]), with backward passes
//! recorded on dfdx's tape like dfdx's own ops. Each keeps its input for
//! its filter gradient as [`Saved::keep`] decides: in a bf16 step with bf16
//! saved activations, a bf16 copy where it is the input's only holder (the
//! decoder's first convolution of each level, which alone reads the
//! concatenation), rounded once and read by both passes.
//!
//! Each computes what the host kernel of the same name computes (same
//! layouts and semantics; sums in cuDNN's order, so results agree to
//! rounding): the GPU machine's check (`bench/gpu.sh`) compares a 50-step
//! training loss trace with the CPU's host kernels, and the trainer's device
//! probe runs both ops forward and backward before any data is read.
//!
//! A transposed convolution is the data gradient of the plain convolution
//! that maps its output back to its input (PyTorch computes it the same
//! way): forward is that convolution's `backward_data`, the input gradient
//! its `forward`, the weight gradient its `backward_filter` with the roles
//! of input and output gradient swapped.

use cudarc::driver::CudaSlice;
use dfdx::prelude::*;

use super::cuda_bf16::Saved;
use super::cuda_bn::{bias_grad, contiguous};
use super::cudnn::{self, Geometry, Side, Write};
use super::{take_grad, OpError, Shape4};

type Vec1<T = NoneTape> = Tensor<(usize,), f32, Cuda, T>;

/// A cuDNN failure inside a backward pass, as dfdx's error type, which has
/// no free-form variant: the message goes to stderr beside it.
fn tape_err(op: &str, msg: String) -> CudaError {
    crate::warn!("sca-train: {op} backward: {msg}");
    CudaError::Driver(cudarc::driver::result::DriverError(
        cudarc::driver::sys::CUresult::CUDA_ERROR_UNKNOWN,
    ))
}

/// `y = conv(x, weight) + bias`, stride 1, padding `k / 2` (shapes checked
/// by [`super::conv2d`]).
pub(crate) fn conv2d<T: Tape<f32, Cuda>>(
    x: Tensor<Shape4, f32, Cuda, T>,
    weight: &Tensor<Shape4, f32, Cuda>,
    bias: Option<&Vec1>,
) -> Result<Tensor<Shape4, f32, Cuda, T>, OpError> {
    const OP: &str = "conv2d";
    let (n, c, h, w) = *x.shape();
    let (k, _, r, _) = *weight.shape();
    let g = Geometry {
        n,
        c,
        h,
        w,
        k,
        r,
        pad: r / 2,
        stride: 1,
    };
    let dev = x.device().clone();
    let dev_err = |e: CudaError| OpError::device(OP, e);
    let cudnn_err = |e: String| OpError::device(OP, e);
    contiguous(OP, "input", &x)?;
    let ws = contiguous(OP, "weight", weight)?;
    let (x, mut tape) = x.split_tape();
    let x_g = x.ghost();
    // Kept first, so that a bf16 copy kept is also the forward's operand.
    let x = Saved::keep(x, T::OWNS_TAPE).map_err(cudnn_err)?;
    // SAFETY: cuDNN overwrites every element (beta 0).
    let mut ys = unsafe { dev.alloc_uninit::<f32>(g.output_len()) }.map_err(dev_err)?;
    cudnn::forward(&dev, g, x.operand(), ws, &mut ys, Write::Overwrite).map_err(cudnn_err)?;
    if let Some(b) = bias {
        cudnn::add_bias(g, Side::Output, contiguous(OP, "bias", b)?, &mut ys).map_err(cudnn_err)?;
    }

    let y = dev.tensor_from_cuda_slice((n, k, h, w), ys);
    if T::OWNS_TAPE {
        let (w_g, b_g, y_g) = (weight.ghost(), bias.map(|b| b.ghost()), y.ghost());
        let weight = weight.clone();
        tape.add_backward_op(move |grads| {
            let gy = take_grad!(grads, y_g, dev);
            let gy: &CudaSlice<f32> = &gy;
            // Contiguous: checked in the forward pass.
            let ws = weight.contiguous_cuda_slice().expect("checked in forward");
            let err = |e| tape_err(OP, e);
            cudnn::backward_data(
                &dev,
                g,
                ws,
                gy,
                grads.get_or_alloc_mut(&x_g)?,
                Write::Accumulate,
            )
            .map_err(err)?;
            cudnn::backward_filter(&dev, g, x.operand(), gy, grads.get_or_alloc_mut(&w_g)?)
                .map_err(err)?;
            if let Some(b_g) = &b_g {
                let (oh, ow) = g.out_hw();
                bias_grad(gy, grads.get_or_alloc_mut(b_g)?, (n, k, oh * ow)).map_err(err)?;
            }
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

/// `y = conv_transpose(x, weight) + bias`, kernel 2, stride 2, weight
/// `(Cin, Cout, 2, 2)` (shapes checked by [`super::conv_transpose2x2`]).
pub(crate) fn conv_transpose2x2<T: Tape<f32, Cuda>>(
    x: Tensor<Shape4, f32, Cuda, T>,
    weight: &Tensor<Shape4, f32, Cuda>,
    bias: &Vec1,
) -> Result<Tensor<Shape4, f32, Cuda, T>, OpError> {
    const OP: &str = "conv_transpose2x2";
    let (n, cin, h, w) = *x.shape();
    let cout = weight.shape().1;
    // The convolution from this op's output (n, cout, 2h, 2w) to its input.
    let g = Geometry {
        n,
        c: cout,
        h: 2 * h,
        w: 2 * w,
        k: cin,
        r: 2,
        pad: 0,
        stride: 2,
    };
    let dev = x.device().clone();
    let dev_err = |e: CudaError| OpError::device(OP, e);
    let cudnn_err = |e: String| OpError::device(OP, e);
    contiguous(OP, "input", &x)?;
    let ws = contiguous(OP, "weight", weight)?;
    let (x, mut tape) = x.split_tape();
    let x_g = x.ghost();
    // Kept first, so that a bf16 copy kept is also the forward's operand.
    let x = Saved::keep(x, T::OWNS_TAPE).map_err(cudnn_err)?;
    // SAFETY: cuDNN overwrites every element (beta 0).
    let mut ys = unsafe { dev.alloc_uninit::<f32>(g.input_len()) }.map_err(dev_err)?;
    cudnn::backward_data(&dev, g, ws, x.operand(), &mut ys, Write::Overwrite).map_err(cudnn_err)?;
    cudnn::add_bias(g, Side::Input, contiguous(OP, "bias", bias)?, &mut ys).map_err(cudnn_err)?;

    let y = dev.tensor_from_cuda_slice((n, cout, 2 * h, 2 * w), ys);
    if T::OWNS_TAPE {
        let (w_g, b_g, y_g) = (weight.ghost(), bias.ghost(), y.ghost());
        let weight = weight.clone();
        tape.add_backward_op(move |grads| {
            let gy = take_grad!(grads, y_g, dev);
            let gy: &CudaSlice<f32> = &gy;
            let ws = weight.contiguous_cuda_slice().expect("checked in forward");
            let err = |e| tape_err(OP, e);
            cudnn::forward(
                &dev,
                g,
                gy,
                ws,
                grads.get_or_alloc_mut(&x_g)?,
                Write::Accumulate,
            )
            .map_err(err)?;
            cudnn::backward_filter(&dev, g, gy, x.operand(), grads.get_or_alloc_mut(&w_g)?)
                .map_err(err)?;
            bias_grad(gy, grads.get_or_alloc_mut(&b_g)?, (n, cout, 4 * h * w)).map_err(err)?;
            Ok(())
        });
    }
    Ok(y.put_tape(tape))
}

#[cfg(test)]
mod tests {
    //! On a GPU with cuDNN (these fail without one: the `cuda` build's tests
    //! run on the GPU machine, `bench/gpu.sh`): each op against the host
    //! kernel on the CPU, values and the gradients of `sum(r · op(x, params))`
    //! for every input.
    use super::*;
    use crate::ops;
    use crate::ops::testutil::*;

    fn gpu() -> Cuda {
        let dev = Cuda::try_build(0, 0).expect("these tests need a GPU");
        assert!(
            cudnn::status().is_ok(),
            "these tests need cuDNN: {:?}",
            cudnn::status()
        );
        dev
    }

    fn same(
        what: &str,
        x_shape: Shape4,
        param_lens: &[usize],
        cpu_op: Op<'_, Cpu>,
        gpu_op: Op<'_, Cuda>,
    ) {
        within(what, 1e-4, x_shape, param_lens, cpu_op, gpu_op);
    }

    /// [`same`] to a tolerance; returns the GPU's output and gradients.
    fn within(
        what: &str,
        tol: f32,
        x_shape: Shape4,
        param_lens: &[usize],
        cpu_op: Op<'_, Cpu>,
        gpu_op: Op<'_, Cuda>,
    ) -> Vec<Vec<f32>> {
        let x = rand_vec(x_shape.0 * x_shape.1 * x_shape.2 * x_shape.3, 1);
        let params: Vec<Vec<f32>> = param_lens
            .iter()
            .enumerate()
            .map(|(i, n)| rand_vec(*n, 10 + i as u64))
            .collect();
        let (host_y, host_g) = output_and_grads(&Cpu::default(), &x, x_shape, &params, cpu_op);
        let (gpu_y, gpu_g) = output_and_grads(&gpu(), &x, x_shape, &params, gpu_op);
        assert_close_f32(&format!("{what}: y"), &gpu_y, &host_y, tol);
        for (i, (a, b)) in gpu_g.iter().zip(&host_g).enumerate() {
            assert_close_f32(&format!("{what}: grad {i}"), a, b, tol);
        }
        std::iter::once(gpu_y).chain(gpu_g).collect()
    }

    #[test]
    fn gpu_bf16_convolutions_are_within_bf16_rounding_of_the_host_kernels() {
        use cudnn::Precision;
        // bf16 keeps 8 significant bits: each operand is off by up to 2^-9
        // relative; sums of a few dozen products land within 3e-2 here.
        let (n, cin, cout, h, w) = (2, 3, 4, 6, 5);
        let ws = (cout, cin, 3, 3);
        let lens = [cout * cin * 9, cout];
        let conv: Op<'_, Cuda> = &|x, p| ops::conv2d(x, &p[0].clone().reshape_like(&ws), p.get(1));
        let host: Op<'_, Cpu> = &|x, p| ops::conv2d(x, &p[0].clone().reshape_like(&ws), p.get(1));
        let before = cudnn::set_precision(Precision::Bf16);
        let bf16 = within("bf16 conv2d", 3e-2, (n, cin, h, w), &lens, host, conv);
        let ts = (cin, cout, 2, 2);
        within(
            "bf16 conv_transpose2x2",
            3e-2,
            (n, cin, 3, 4),
            &[cin * cout * 4, cout],
            &|x, p| ops::conv_transpose2x2(x, &p[0].clone().reshape_like(&ts), &p[1]),
            &|x, p| ops::conv_transpose2x2(x, &p[0].clone().reshape_like(&ts), &p[1]),
        );
        cudnn::set_precision(Precision::Fp32);
        let fp32 = within("fp32 conv2d", 1e-4, (n, cin, h, w), &lens, host, conv);
        cudnn::set_precision(before);
        // The bf16 path really rounded: the output and the input's and
        // weight's gradients differ from fp32's somewhere (the bias's
        // gradient is the output gradient's sum, fp32 either way).
        for (i, what) in ["output", "input gradient", "weight gradient"]
            .iter()
            .enumerate()
        {
            assert_ne!(bf16[i], fp32[i], "the {what} in bf16 equals fp32's exactly");
        }
        assert_eq!(bf16[3], fp32[3], "the bias gradient");
    }

    /// A decoder block's start in a bf16 step: the concatenation, the
    /// bias-free convolution it alone feeds, batch norm with ReLU.
    fn decoder_start(
        x: Traced<Cuda>,
        p: &[Tensor<(usize,), f32, Cuda>],
    ) -> Result<Traced<Cuda>, OpError> {
        let c = ops::concat_channels(x.with_empty_tape(), x)?;
        conv_bn_relu(c, &p[..3])
    }

    /// A bias-free 3x3 convolution (weight `p[0]`), batch norm (`p[1]`,
    /// `p[2]`) and ReLU, as the U-Net's blocks have them.
    fn conv_bn_relu(
        x: Traced<Cuda>,
        p: &[Tensor<(usize,), f32, Cuda>],
    ) -> Result<Traced<Cuda>, OpError> {
        let (c, k) = (x.shape().1, p[1].shape().0);
        let y = ops::conv2d(x, &p[0].clone().reshape_like(&(k, c, 3, 3)), None)?;
        let (y, _) = ops::batch_norm2d_train(y, &p[1], &p[2], 1e-5, ops::Activation::Relu)?;
        Ok(y)
    }

    #[test]
    fn gpu_bf16_saved_activations_change_no_result() {
        use crate::ops::cuda_bf16::{set_saved, SavedFormat};
        use cudnn::Precision;
        // The convolution's bf16 copy of its input is what its filter
        // gradient rounds anyway, and batch norm's input is the bf16
        // convolution's output widened: both copies are exact. Batch norm
        // then fuses its ReLU in, the mask recomputed from that copy. So
        // only the order of atomic sums (cuDNN's, batch norm's f64) and the
        // rounding of `x * scale + shift` (one fused multiply-add, which
        // NVRTC makes of the unfused kernel's too) may differ.
        let (n, c, k, h, w) = (2, 3, 4, 6, 5);
        let x = rand_vec(n * c * h * w, 1);
        let params = [rand_vec(k * 2 * c * 9, 2), rand_vec(k, 3), rand_vec(k, 4)];
        let dev = gpu();
        let before = (
            cudnn::set_precision(Precision::Bf16),
            set_saved(SavedFormat::F32),
        );
        let f32_saved = output_and_grads(&dev, &x, (n, c, h, w), &params, &decoder_start);
        set_saved(SavedFormat::Bf16);
        let bf16_saved = output_and_grads(&dev, &x, (n, c, h, w), &params, &decoder_start);
        cudnn::set_precision(before.0);
        set_saved(before.1);
        assert_close_f32("output", &bf16_saved.0, &f32_saved.0, 1e-5);
        for (i, (a, b)) in bf16_saved.1.iter().zip(&f32_saved.1).enumerate() {
            assert_close_f32(&format!("grad {i}"), a, b, 1e-5);
        }
    }

    #[test]
    fn gpu_bf16_saved_activations_halve_what_the_forward_pass_keeps() {
        use crate::ops::cuda_bf16::{set_saved, SavedFormat};
        use cudnn::Precision;
        // dfdx's buffer cache is off in a device built here: a released
        // buffer goes back to the memory pool, whose count of bytes handed
        // out is what the forward pass keeps (the driver's count of memory
        // in use would include freed memory the pool keeps until a sync).
        let used = || crate::gpu_memory::pool::in_use().expect("a memory pool");
        let dev = gpu();
        let (n, c, k, h, w) = (2, 8, 16, 512, 512);
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        let params: Vec<_> = [k * 2 * c * 9, k, k, k * k * 9, k, k]
            .iter()
            .enumerate()
            .map(|(i, len)| dev.tensor_from_vec(rand_vec(*len, 2 + i as u64), (*len,)))
            .collect();
        let kept = |f: SavedFormat| {
            set_saved(f);
            let x = dev.tensor_from_vec(rand_vec(n * c * h * w, 1), (n, c, h, w));
            let before = used();
            // A whole decoder block.
            let y = decoder_start(x.leaky_traced(), &params)
                .and_then(|r1| conv_bn_relu(r1, &params[3..]))
                .expect("forward");
            let after = used();
            drop(y);
            after as f64 - before as f64
        };
        let prec = cudnn::set_precision(Precision::Bf16);
        let saved = set_saved(SavedFormat::F32);
        // A first pass makes cuDNN's plans and workspace.
        kept(SavedFormat::F32);
        let (f32_kept, bf16_kept) = (kept(SavedFormat::F32), kept(SavedFormat::Bf16));
        cudnn::set_precision(prec);
        set_saved(saved);
        // With f32 saved, the forward pass keeps the concatenation (32 MiB,
        // for the first convolution), both convolutions' outputs (for the
        // batch norms), the first ReLU's output (for itself and the second
        // convolution) and the block's output (32 MiB each): 160 MiB, less
        // `x` (16 MiB, consumed; only the concatenation read it). With bf16
        // saved, the ReLUs are fused into the batch norms, and the first
        // four are bf16 copies: 64 MiB less.
        let act = (n * k * h * w * 4) as f64;
        let less = f32_kept - bf16_kept;
        assert!(
            f32_kept >= 4.0 * act,
            "f32 saved: {:.1} MiB kept, at least {:.1} expected",
            mib(f32_kept as usize),
            mib((4.0 * act) as usize)
        );
        assert!(
            (1.75 * act..=2.25 * act).contains(&less),
            "bf16 saved keeps {:.1} MiB less than f32 saved ({:.1} vs {:.1} MiB); {:.1} expected",
            mib(less as usize),
            mib(bf16_kept as usize),
            mib(f32_kept as usize),
            mib((2.0 * act) as usize)
        );
    }

    #[test]
    fn gpu_a_bf16_convolution_keeps_nothing_but_cudnns_workspace() {
        use crate::gpu_memory::pool;
        // Operands larger than any other test's (32 MiB each in bf16): bf16
        // buffers kept from call to call would have to grow for them. The
        // rounded operands and the result come from dfdx's cache (off in a
        // device built here: back to the memory pool) and are released.
        let (n, c, k, h, w) = (2, 32, 32, 512, 512);
        let dev = gpu();
        let prec = cudnn::set_precision(cudnn::Precision::Bf16);
        let x = dev.tensor_from_vec(rand_vec(n * c * h * w, 1), (n, c, h, w));
        let wt = dev.tensor_from_vec(rand_vec(k * c * 9, 2), (k, c, 3, 3));
        let sync = || {
            let ws = wt.contiguous_cuda_slice().expect("contiguous");
            ws.device().synchronize().expect("synchronize");
        };
        let in_use = || pool::in_use().expect("a memory pool");
        sync();
        let (before, ws_before) = (in_use(), cudnn::workspace_bytes());
        // A clone: `x` stays allocated, as it was before.
        let y = ops::conv2d(x.clone().leaky_traced(), &wt, None).expect("forward");
        let grads = y.sum().backward();
        drop(grads);
        sync();
        let (after, ws_after) = (in_use(), cudnn::workspace_bytes());
        cudnn::set_precision(prec);
        let kept = after as f64 - before as f64 - (ws_after as f64 - ws_before as f64);
        assert!(
            kept.abs() < (1 << 20) as f64,
            "{kept} bytes kept beyond the workspace ({ws_before} then {ws_after} bytes): {before} in use before, {after} after"
        );
    }

    #[test]
    fn gpu_conv2d_matches_the_host_kernel() {
        for (k, bias) in [(3, true), (3, false), (1, true)] {
            let (n, cin, cout, h, w) = (2, 3, 4, 6, 5);
            let mut lens = vec![cout * cin * k * k];
            if bias {
                lens.push(cout);
            }
            let ws = (cout, cin, k, k);
            same(
                &format!("conv2d k={k} bias={bias}"),
                (n, cin, h, w),
                &lens,
                &|x, p| ops::conv2d(x, &p[0].clone().reshape_like(&ws), p.get(1)),
                &|x, p| ops::conv2d(x, &p[0].clone().reshape_like(&ws), p.get(1)),
            );
        }
    }

    #[test]
    fn gpu_conv_transpose_matches_the_host_kernel() {
        let (n, cin, cout, h, w) = (2, 3, 2, 3, 4);
        let ws = (cin, cout, 2, 2);
        same(
            "conv_transpose2x2",
            (n, cin, h, w),
            &[cin * cout * 4, cout],
            &|x, p| ops::conv_transpose2x2(x, &p[0].clone().reshape_like(&ws), &p[1]),
            &|x, p| ops::conv_transpose2x2(x, &p[0].clone().reshape_like(&ws), &p[1]),
        );
    }

    #[test]
    fn gpu_gradients_accumulate_over_two_uses() {
        // A skip connection: the input feeds two convolutions, and its
        // gradient is the sum of both (cuDNN writes with beta = 1).
        let (n, c, h, w) = (1, 2, 4, 4);
        let wl = c * c * 9;
        let ws = (c, c, 3, 3);
        same(
            "two uses",
            (n, c, h, w),
            &[wl],
            &|x, p| {
                let wt = p[0].clone().reshape_like(&ws);
                let a = ops::conv2d(x.with_empty_tape(), &wt, None)?;
                let b = ops::conv2d(x, &wt, None)?;
                Ok(b + a)
            },
            &|x, p| {
                let wt = p[0].clone().reshape_like(&ws);
                let a = ops::conv2d(x.with_empty_tape(), &wt, None)?;
                let b = ops::conv2d(x, &wt, None)?;
                Ok(b + a)
            },
        );
    }
}
