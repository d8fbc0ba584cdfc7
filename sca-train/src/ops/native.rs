//! The U-Net's ops on dfdx's own kernels, for devices where those run and
//! ours cannot without copying every buffer to the host: dfdx's `Cuda`.
//! Convolution, transposed convolution and max-pooling are dfdx's layer ops
//! ([`LayerKernels`]: im2col kernels and cuBLAS GEMMs on CUDA); batch norm is
//! spelled out in dfdx's reductions and broadcasts, except on CUDA, where
//! [`LayerKernels::device_batch_norm2d_train`] runs fused kernels of ours
//! (`cuda_bn.rs`). dfdx records their backward passes itself.
//!
//! Each function computes what the host kernel of the same name computes
//! (same layouts, same semantics); the tests compare values and gradients on
//! the CPU, where both run. Shapes are validated by the public op before it
//! dispatches here. Differences to the host kernels: sums run in dfdx's
//! order in `f32` (results agree to rounding, not bit for bit), and a
//! max-pool window with tied maxima passes the gradient to every tied
//! element (after a ReLU only zeros tie, and their gradient is zero anyway).

use std::cell::Cell;

use dfdx::prelude::*;

use super::{freeing_output_grad, Activation, BatchStats, HostDevice, OpError, Shape4};

thread_local! {
    static FORCED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the ops dispatch here on device `D` (on this thread).
pub(crate) fn enabled<D: HostDevice>() -> bool {
    D::DFDX_KERNELS || FORCED.with(Cell::get)
}

/// Runs `f` with the ops on dfdx's own kernels on every device, the CPU
/// included: how the GPU's computation is rehearsed and checked on the CPU
/// (`sca-train bench --dfdx-ops`, the tests).
pub fn with_dfdx_ops<R>(f: impl FnOnce() -> R) -> R {
    let before = FORCED.with(|c| c.replace(true));
    let r = f();
    FORCED.with(|c| c.set(before));
    r
}

type Vec1<D, T = NoneTape> = Tensor<(usize,), f32, D, T>;

/// A loss computed on the device: its tensor (recording the backward pass)
/// and its unweighted value, or why it could not be.
pub(crate) type DeviceLoss<D, T> = Result<(Tensor<(), f32, D, T>, f64), String>;

/// Broadcasts a per-channel vector to NCHW.
fn per_channel<D: HostDevice, T: Tape<f32, D>>(
    v: Vec1<D, T>,
    shape: Shape4,
) -> Result<Tensor<Shape4, f32, D, T>, D::Err> {
    v.try_broadcast_like::<_, Axes3<0, 2, 3>>(&shape)
}

/// dfdx's own convolution and pooling kernels (on CUDA: an im2col kernel and
/// cuBLAS GEMMs; on the CPU: the same scheme on `gemm`). dfdx bounds them by
/// crate-private kernel traits, so they are reached through this trait,
/// implemented for each concrete device. They are compiled on stable Rust by
/// the workspace's patch of dfdx (`vendor/dfdx/SCA-PATCH.md`).
pub trait LayerKernels: Device<f32> {
    /// Stride-1 convolution with `padding` zeros on each side.
    fn dfdx_conv2d<T: Tape<f32, Self>>(
        x: Tensor<Shape4, f32, Self, T>,
        weight: &Tensor<Shape4, f32, Self>,
        padding: usize,
    ) -> Result<Tensor<Shape4, f32, Self, T>, Self::Err>;
    /// Transposed convolution, kernel 2, stride 2; weight `(Cin, Cout, 2, 2)`.
    fn dfdx_conv_transpose2x2<T: Tape<f32, Self>>(
        x: Tensor<Shape4, f32, Self, T>,
        weight: &Tensor<Shape4, f32, Self>,
    ) -> Result<Tensor<Shape4, f32, Self, T>, Self::Err>;
    /// Max over each 2x2 window, stride 2.
    fn dfdx_max_pool2x2<T: Tape<f32, Self>>(
        x: Tensor<Shape4, f32, Self, T>,
    ) -> Result<Tensor<Shape4, f32, Self, T>, Self::Err>;
    /// Whether [`Self::device_bce`] computes BCE on this device.
    const DEVICE_BCE: bool = false;
    /// `weight ×` the mean BCE-with-logits of `logits` against `targets`
    /// (checked by the caller) on this device, recording its backward pass,
    /// and the unweighted value: [`crate::loss::bce_with_logits`] where the
    /// logits are. Called only where [`Self::DEVICE_BCE`].
    fn device_bce<T: Tape<f32, Self>>(
        logits: Tensor<Shape4, f32, Self, T>,
        targets: &[f32],
        weight: f32,
    ) -> DeviceLoss<Self, T> {
        let _ = (logits, targets, weight);
        Err("this device has no BCE kernel".into())
    }
    /// Whose convolutions [`Self::device_conv2d`] runs, where it is not
    /// dfdx's: `cuDNN 9.x.y`.
    fn convolutions() -> Option<String> {
        None
    }
    /// [`super::conv2d`] on this device: dfdx's convolution plus the bias,
    /// or on CUDA cuDNN's (`cuda_conv.rs`) where cuDNN loads.
    fn device_conv2d<T: Tape<f32, Self>>(
        x: Tensor<Shape4, f32, Self, T>,
        weight: &Tensor<Shape4, f32, Self>,
        bias: Option<&Vec1<Self>>,
    ) -> Result<Tensor<Shape4, f32, Self, T>, OpError>
    where
        Self: HostDevice,
    {
        dfdx_conv2d_bias(x, weight, bias).map_err(|e| OpError::device("conv2d", e))
    }
    /// [`super::conv_transpose2x2`] on this device, like [`Self::device_conv2d`].
    fn device_conv_transpose2x2<T: Tape<f32, Self>>(
        x: Tensor<Shape4, f32, Self, T>,
        weight: &Tensor<Shape4, f32, Self>,
        bias: &Vec1<Self>,
    ) -> Result<Tensor<Shape4, f32, Self, T>, OpError>
    where
        Self: HostDevice,
    {
        dfdx_conv_transpose2x2_bias(x, weight, bias)
            .map_err(|e| OpError::device("conv_transpose2x2", e))
    }
    /// [`super::batch_norm2d_train`] on this device, `act` after it: dfdx's
    /// reductions and broadcasts ([`batch_norm2d_train`]) and `act` as an
    /// op of its own, or on CUDA fused kernels (`cuda_bn.rs`), which do in
    /// four passes what those do in eighteen (with ReLU fused in too, in a
    /// step with bf16 saved activations).
    #[allow(clippy::type_complexity)]
    fn device_batch_norm2d_train<T: Tape<f32, Self>>(
        x: Tensor<Shape4, f32, Self, T>,
        gamma: &Vec1<Self>,
        beta: &Vec1<Self>,
        eps: f32,
        act: Activation,
    ) -> Result<(Tensor<Shape4, f32, Self, T>, BatchStats), OpError>
    where
        Self: HostDevice,
    {
        let (y, stats) = batch_norm2d_train(x, gamma, beta, eps)
            .map_err(|e| OpError::device("batch_norm2d_train", e))?;
        Ok((act.apply(y)?, stats))
    }
}

macro_rules! layer_kernels {
    ($dev:ty $(, $($extra:tt)*)?) => {
        impl LayerKernels for $dev {
            $($($extra)*)?
            fn dfdx_conv2d<T: Tape<f32, Self>>(
                x: Tensor<Shape4, f32, Self, T>,
                weight: &Tensor<Shape4, f32, Self>,
                padding: usize,
            ) -> Result<Tensor<Shape4, f32, Self, T>, Self::Err> {
                // (stride, padding, dilation, groups); the weight's gradient
                // is keyed by its id, so a clone (same id) records it.
                (x, weight.clone()).try_conv2d(1usize, padding, 1usize, 1usize)
            }
            fn dfdx_conv_transpose2x2<T: Tape<f32, Self>>(
                x: Tensor<Shape4, f32, Self, T>,
                weight: &Tensor<Shape4, f32, Self>,
            ) -> Result<Tensor<Shape4, f32, Self, T>, Self::Err> {
                (x, weight.clone()).try_convtrans2d(2usize, 0usize, 1usize, 1usize)
            }
            fn dfdx_max_pool2x2<T: Tape<f32, Self>>(
                x: Tensor<Shape4, f32, Self, T>,
            ) -> Result<Tensor<Shape4, f32, Self, T>, Self::Err> {
                // (kind, kernel, stride, padding, dilation)
                x.try_pool2d(Pool2DKind::Max, 2usize, 2usize, 0usize, 1usize)
            }
        }
    };
}

layer_kernels!(Cpu);
#[cfg(feature = "cuda")]
layer_kernels! {
    Cuda,
    fn device_batch_norm2d_train<T: Tape<f32, Self>>(
        x: Tensor<Shape4, f32, Self, T>,
        gamma: &Vec1<Self>,
        beta: &Vec1<Self>,
        eps: f32,
        act: Activation,
    ) -> Result<(Tensor<Shape4, f32, Self, T>, BatchStats), OpError> {
        // ReLU fused in where its output must not be kept (bf16 saved
        // activations); else dfdx's, as measured on the GPU so far.
        let fuse = act == Activation::Relu && super::cuda_bf16::bf16_saved();
        let (y, stats) = super::cuda_bn::batch_norm2d_train(x, gamma, beta, eps, fuse)?;
        Ok((if fuse { y } else { act.apply(y)? }, stats))
    }
    const DEVICE_BCE: bool = true;
    fn device_bce<T: Tape<f32, Self>>(
        logits: Tensor<Shape4, f32, Self, T>,
        targets: &[f32],
        weight: f32,
    ) -> DeviceLoss<Self, T> {
        super::cuda_loss::bce(logits, targets, weight)
    }
    fn convolutions() -> Option<String> {
        super::cudnn::status().ok()
    }
    fn device_conv2d<T: Tape<f32, Self>>(
        x: Tensor<Shape4, f32, Self, T>,
        weight: &Tensor<Shape4, f32, Self>,
        bias: Option<&Vec1<Self>>,
    ) -> Result<Tensor<Shape4, f32, Self, T>, OpError> {
        if super::cudnn::status().is_ok() {
            super::cuda_conv::conv2d(x, weight, bias)
        } else {
            dfdx_conv2d_bias(x, weight, bias).map_err(|e| OpError::device("conv2d", e))
        }
    }
    fn device_conv_transpose2x2<T: Tape<f32, Self>>(
        x: Tensor<Shape4, f32, Self, T>,
        weight: &Tensor<Shape4, f32, Self>,
        bias: &Vec1<Self>,
    ) -> Result<Tensor<Shape4, f32, Self, T>, OpError> {
        if super::cudnn::status().is_ok() {
            super::cuda_conv::conv_transpose2x2(x, weight, bias)
        } else {
            dfdx_conv_transpose2x2_bias(x, weight, bias)
                .map_err(|e| OpError::device("conv_transpose2x2", e))
        }
    }
}

/// [`super::conv2d`] on the device's own convolution ([`LayerKernels::device_conv2d`]).
pub(crate) fn conv2d<D: HostDevice, T: Tape<f32, D>>(
    x: Tensor<Shape4, f32, D, T>,
    weight: &Tensor<Shape4, f32, D>,
    bias: Option<&Vec1<D>>,
) -> Result<Tensor<Shape4, f32, D, T>, OpError> {
    D::device_conv2d(x, weight, bias)
}

/// dfdx's convolution with "same" padding, plus the bias.
fn dfdx_conv2d_bias<D: HostDevice, T: Tape<f32, D>>(
    x: Tensor<Shape4, f32, D, T>,
    weight: &Tensor<Shape4, f32, D>,
    bias: Option<&Vec1<D>>,
) -> Result<Tensor<Shape4, f32, D, T>, D::Err> {
    let k = weight.shape().2;
    let y = freeing_output_grad(x, |x| D::dfdx_conv2d(x, weight, k / 2))?;
    match bias {
        Some(b) => {
            let shape = *y.shape();
            freeing_output_grad(y, |y| y.try_add(per_channel(b.retaped::<T>(), shape)?))
        }
        None => Ok(y),
    }
}

/// [`super::conv_transpose2x2`] on the device's own transposed convolution
/// ([`LayerKernels::device_conv_transpose2x2`]).
pub(crate) fn conv_transpose2x2<D: HostDevice, T: Tape<f32, D>>(
    x: Tensor<Shape4, f32, D, T>,
    weight: &Tensor<Shape4, f32, D>,
    bias: &Vec1<D>,
) -> Result<Tensor<Shape4, f32, D, T>, OpError> {
    D::device_conv_transpose2x2(x, weight, bias)
}

/// dfdx's transposed convolution, plus the bias.
fn dfdx_conv_transpose2x2_bias<D: HostDevice, T: Tape<f32, D>>(
    x: Tensor<Shape4, f32, D, T>,
    weight: &Tensor<Shape4, f32, D>,
    bias: &Vec1<D>,
) -> Result<Tensor<Shape4, f32, D, T>, D::Err> {
    let y = freeing_output_grad(x, |x| D::dfdx_conv_transpose2x2(x, weight))?;
    let shape = *y.shape();
    freeing_output_grad(y, |y| y.try_add(per_channel(bias.retaped::<T>(), shape)?))
}

/// [`super::max_pool2x2`]: the maximum over each 2x2 window.
pub(crate) fn max_pool2x2<D: HostDevice, T: Tape<f32, D>>(
    x: Tensor<Shape4, f32, D, T>,
) -> Result<Tensor<Shape4, f32, D, T>, D::Err> {
    freeing_output_grad(x, D::dfdx_max_pool2x2)
}

/// [`super::batch_norm2d_train`]: normalised with the batch's mean and biased
/// variance, which are returned for the running statistics.
#[allow(clippy::type_complexity)]
pub(crate) fn batch_norm2d_train<D: HostDevice, T: Tape<f32, D>>(
    x: Tensor<Shape4, f32, D, T>,
    gamma: &Vec1<D>,
    beta: &Vec1<D>,
    eps: f32,
) -> Result<(Tensor<Shape4, f32, D, T>, BatchStats), D::Err> {
    // dfdx's `normalize`, spelled out so the batch statistics it computes are
    // also the ones returned (not reduced a second time).
    let shape = *x.shape();
    let mean = x.retaped::<T>().try_mean::<(usize,), Axes3<0, 2, 3>>()?;
    let mean_host = mean.as_vec();
    let centered = x.try_sub(per_channel(mean, shape)?)?;
    let var = centered
        .retaped::<T>()
        .try_square()?
        .try_mean::<(usize,), Axes3<0, 2, 3>>()?;
    let stats = BatchStats {
        mean: mean_host,
        var: var.as_vec(),
        count: shape.0 * shape.2 * shape.3,
    };
    let std = var.try_add(eps)?.try_sqrt()?;
    let y = centered
        .try_div(per_channel(std, shape)?)?
        .try_mul(per_channel(gamma.retaped::<T>(), shape)?)?
        .try_add(per_channel(beta.retaped::<T>(), shape)?)?;
    Ok((y, stats))
}

/// [`super::batch_norm2d_infer`]: normalised with the running statistics.
pub(crate) fn batch_norm2d_infer<D: HostDevice, T: Tape<f32, D>>(
    x: Tensor<Shape4, f32, D, T>,
    gamma: &Vec1<D>,
    beta: &Vec1<D>,
    running_mean: &[f32],
    running_var: &[f32],
    eps: f32,
) -> Result<Tensor<Shape4, f32, D, T>, D::Err> {
    let shape = *x.shape();
    let c = shape.1;
    let dev = x.device().clone();
    let mean = dev.try_tensor_from_vec(running_mean.to_vec(), (c,))?;
    let inv_std = dev.try_tensor_from_vec(
        running_var
            .iter()
            .map(|v| 1.0 / (v + eps).sqrt())
            .collect::<Vec<f32>>(),
        (c,),
    )?;
    x.try_sub(per_channel(mean, shape)?)?
        .try_mul(per_channel(inv_std, shape)?)?
        .try_mul(per_channel(gamma.retaped::<T>(), shape)?)?
        .try_add(per_channel(beta.retaped::<T>(), shape)?)
}

#[cfg(test)]
mod tests {
    //! Each op through dfdx's primitives against the host kernel, on the CPU:
    //! values, and the gradients of `sum(r · op(x, params))` for every input.
    use super::*;
    use crate::ops::testutil::*;
    use crate::ops::{self, Activation, OpError};

    type Out = Traced<Cpu>;

    /// Runs `op` on (x, params) host and native; compares outputs and gradients.
    fn same(
        what: &str,
        x_shape: Shape4,
        param_shapes: &[Vec<usize>],
        op: impl Fn(Out, &[Tensor<(usize,), f32, Cpu>]) -> Result<Out, OpError>,
    ) {
        let dev: Cpu = Default::default();
        let numel = |s: &Shape4| s.0 * s.1 * s.2 * s.3;
        let x = rand_vec(numel(&x_shape), 1);
        // Parameters travel flat; the op reshapes the 4-D ones it needs.
        let params: Vec<Vec<f32>> = param_shapes
            .iter()
            .enumerate()
            .map(|(i, s)| rand_vec(s.iter().product(), 10 + i as u64))
            .collect();
        let run = |native: bool| {
            let go = || output_and_grads(&dev, &x, x_shape, &params, &op);
            if native {
                with_dfdx_ops(go)
            } else {
                go()
            }
        };
        let (host_y, host_g) = run(false);
        let (nat_y, nat_g) = run(true);
        assert_close_f32(&format!("{what}: y"), &nat_y, &host_y, 1e-4);
        for (i, (a, b)) in nat_g.iter().zip(&host_g).enumerate() {
            assert_close_f32(&format!("{what}: grad {i}"), a, b, 1e-4);
        }
    }

    fn w4(p: &Tensor<(usize,), f32, Cpu>, s: Shape4) -> Tensor<Shape4, f32, Cpu> {
        // Same id as `p`: the gradient lands in p's buffer.
        p.clone().reshape_like(&s)
    }

    #[test]
    fn conv2d_3x3_and_1x1_match_the_host_kernel() {
        for (k, bias) in [(3, true), (3, false), (1, true)] {
            let (n, cin, cout, h, w) = (2, 3, 4, 6, 5);
            let mut shapes = vec![vec![cout * cin * k * k]];
            if bias {
                shapes.push(vec![cout]);
            }
            same(&format!("conv2d k={k}"), (n, cin, h, w), &shapes, |x, p| {
                let wt = w4(&p[0], (cout, cin, k, k));
                ops::conv2d(x, &wt, p.get(1))
            });
        }
    }

    #[test]
    fn conv_transpose_matches_the_host_kernel() {
        let (n, cin, cout, h, w) = (2, 3, 2, 3, 4);
        same(
            "conv_transpose2x2",
            (n, cin, h, w),
            &[vec![cin * cout * 4], vec![cout]],
            |x, p| ops::conv_transpose2x2(x, &w4(&p[0], (cin, cout, 2, 2)), &p[1]),
        );
    }

    #[test]
    fn max_pool_matches_the_host_kernel() {
        same("max_pool2x2", (2, 3, 4, 6), &[], |x, _| ops::max_pool2x2(x));
    }

    #[test]
    fn batch_norm_matches_the_host_kernel_in_both_modes() {
        let c = 3;
        let (rm, rv) = (vec![0.1, -0.2, 0.3], vec![0.5, 1.5, 2.0]);
        for act in [Activation::Identity, Activation::Relu] {
            same("bn train", (2, c, 4, 5), &[vec![c], vec![c]], |x, p| {
                ops::batch_norm2d_train(x, &p[0], &p[1], 1e-5, act).map(|(y, _)| y)
            });
            same("bn infer", (2, c, 4, 5), &[vec![c], vec![c]], |x, p| {
                ops::batch_norm2d_infer(x, &p[0], &p[1], &rm, &rv, 1e-5, act)
            });
        }
        // The batch statistics for the running averages agree too.
        let dev: Cpu = Default::default();
        let x = dev.tensor_from_vec(rand_vec(2 * c * 20, 5), (2, c, 4, 5));
        let g = dev.tensor_from_vec(vec![1.0; c], (c,));
        let b = dev.tensor_from_vec(vec![0.0; c], (c,));
        let id = Activation::Identity;
        let (_, host) = ops::batch_norm2d_train(x.clone(), &g, &b, 1e-5, id).unwrap();
        let (_, nat) =
            with_dfdx_ops(|| ops::batch_norm2d_train(x.clone(), &g, &b, 1e-5, id).unwrap());
        assert_eq!(nat.count, host.count);
        assert_close_f32("mean", &nat.mean, &host.mean, 1e-5);
        assert_close_f32("var", &nat.var, &host.var, 1e-5);
    }

    #[test]
    fn the_switch_is_per_thread_and_restored() {
        assert!(!enabled::<Cpu>());
        with_dfdx_ops(|| {
            assert!(enabled::<Cpu>());
            assert!(!std::thread::spawn(enabled::<Cpu>).join().unwrap());
        });
        assert!(!enabled::<Cpu>());
    }
}
