//! The U-Net's convolution and 2x2 transposed convolution on dfdx's `Cuda`
//! through cuDNN ([`super::cudnn`]), bias included (its gradient by the batch
//! norm's per-channel reduction, [`bias_grad`]), with backward passes
//! recorded on dfdx's tape like dfdx's own ops.
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

use super::cuda_bn::{bias_grad, contiguous};
use super::cudnn::{self, Geometry, Side, Write};
use super::{take_grad, OpError, Shape4};

type Vec1<T = NoneTape> = Tensor<(usize,), f32, Cuda, T>;

/// A cuDNN failure inside a backward pass, as dfdx's error type, which has
/// no free-form variant: the message goes to stderr beside it.
fn tape_err(op: &str, msg: String) -> CudaError {
    eprintln!("sca-train: {op} backward: {msg}");
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
    let xs = contiguous(OP, "input", &x)?;
    let ws = contiguous(OP, "weight", weight)?;
    // SAFETY: cuDNN overwrites every element (beta 0).
    let mut ys = unsafe { dev.alloc_uninit::<f32>(g.output_len()) }.map_err(dev_err)?;
    cudnn::forward(g, xs, ws, &mut ys, Write::Overwrite).map_err(cudnn_err)?;
    if let Some(b) = bias {
        cudnn::add_bias(g, Side::Output, contiguous(OP, "bias", b)?, &mut ys).map_err(cudnn_err)?;
    }

    let (x, mut tape) = x.split_tape();
    let y = dev.tensor_from_cuda_slice((n, k, h, w), ys);
    if T::OWNS_TAPE {
        let (x_g, w_g, b_g, y_g) = (
            x.ghost(),
            weight.ghost(),
            bias.map(|b| b.ghost()),
            y.ghost(),
        );
        let weight = weight.clone();
        tape.add_backward_op(move |grads| {
            let gy = take_grad!(grads, y_g, dev);
            let gy: &CudaSlice<f32> = &gy;
            // Contiguous: checked in the forward pass.
            let xs = x.contiguous_cuda_slice().expect("checked in forward");
            let ws = weight.contiguous_cuda_slice().expect("checked in forward");
            let err = |e| tape_err(OP, e);
            cudnn::backward_data(g, ws, gy, grads.get_or_alloc_mut(&x_g)?, Write::Accumulate)
                .map_err(err)?;
            cudnn::backward_filter(g, xs, gy, grads.get_or_alloc_mut(&w_g)?).map_err(err)?;
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
    let xs = contiguous(OP, "input", &x)?;
    let ws = contiguous(OP, "weight", weight)?;
    // SAFETY: cuDNN overwrites every element (beta 0).
    let mut ys = unsafe { dev.alloc_uninit::<f32>(g.input_len()) }.map_err(dev_err)?;
    cudnn::backward_data(g, ws, xs, &mut ys, Write::Overwrite).map_err(cudnn_err)?;
    cudnn::add_bias(g, Side::Input, contiguous(OP, "bias", bias)?, &mut ys).map_err(cudnn_err)?;

    let (x, mut tape) = x.split_tape();
    let y = dev.tensor_from_cuda_slice((n, cout, 2 * h, 2 * w), ys);
    if T::OWNS_TAPE {
        let (x_g, w_g, b_g, y_g) = (x.ghost(), weight.ghost(), bias.ghost(), y.ghost());
        let weight = weight.clone();
        tape.add_backward_op(move |grads| {
            let gy = take_grad!(grads, y_g, dev);
            let gy: &CudaSlice<f32> = &gy;
            let xs = x.contiguous_cuda_slice().expect("checked in forward");
            let ws = weight.contiguous_cuda_slice().expect("checked in forward");
            let err = |e| tape_err(OP, e);
            cudnn::forward(g, gy, ws, grads.get_or_alloc_mut(&x_g)?, Write::Accumulate)
                .map_err(err)?;
            cudnn::backward_filter(g, gy, xs, grads.get_or_alloc_mut(&w_g)?).map_err(err)?;
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
