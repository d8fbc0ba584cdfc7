//! Tensor operations the U-Net needs (convolution, transposed convolution,
//! max-pooling, batch norm with run-time channel counts), implemented as
//! custom dfdx ops with host kernels: on the CPU they are faster than dfdx's.
//!
//! On a device whose [`HostDevice::DFDX_KERNELS`] is set (dfdx's `Cuda`), or
//! inside [`with_dfdx_ops`], every op instead runs on dfdx's own kernels
//! (`native.rs`: dfdx's conv2d / convtrans2d / pool2d, which the workspace's
//! patch of dfdx compiles on stable Rust, and batch norm in dfdx's reductions
//! and broadcasts, or on CUDA in fused kernels of ours, `cuda_bn.rs`), on that
//! device, with backward passes dfdx records.
//!
//! Otherwise every op reads its input in host memory ([`HostDevice::host_view`]:
//! in place on the CPU, where the backward pass keeps it by reference count
//! rather than as a copy), runs its own forward kernel (im2col +
//! [`gemm`] for the convolutions, rayon over images or channels), builds the
//! output with `TensorFromVec` (initialised in parallel, [`host::par_init`])
//! and, when the input carries an
//! [`OwnedTape`](dfdx::tensor::OwnedTape), records a backward closure with
//! [`Tape::add_backward_op`](dfdx::tensor::Tape::add_backward_op) that
//! accumulates into the inputs' and parameters' gradients.
//!
//! Conventions shared by all ops:
//! * activations are NCHW, `f32`, row-major and contiguous (what `tensor_from_vec`,
//!   these ops and dfdx's element-wise ops produce); permuted or broadcast views
//!   must be materialised before they are passed in;
//! * parameters are passed by reference as tape-less tensors; their gradients land
//!   in the same [`Gradients`](dfdx::tensor::Gradients) as the input's, keyed by the
//!   parameter tensor;
//! * results are deterministic: every reduction runs in an order fixed by the data
//!   layout (per image, per channel, or fixed-size chunks summed in index order),
//!   never in the order threads happen to finish;
//! * an op's backward takes its output gradient out of `Gradients` (it is complete
//!   by then, as dfdx runs backward closures in reverse creation order), so the
//!   buffer is freed early; gradients of intermediate activations are therefore not
//!   available after `backward()`, only those of leaves (inputs, parameters).
//!   dfdx's own ops (on its kernels, and ReLU) are wrapped to do the same
//!   ([`freeing_output_grad`]).
//!
//! ReLU after batch norm is fused into it ([`Activation::Relu`]: no pass
//! of its own forward, its mask read off the op's output backward); a ReLU
//! without batch norm is dfdx's. The channel concatenation is ours on the
//! host and dfdx's `concat_along` on dfdx's kernels.

pub mod adamw;
pub mod batch_norm;
pub mod concat;
pub mod conv2d;
pub mod conv_transpose;
#[cfg(feature = "cuda")]
mod cuda_adamw;
#[cfg(feature = "cuda")]
pub mod cuda_bf16;
#[cfg(feature = "cuda")]
mod cuda_bn;
#[cfg(feature = "cuda")]
mod cuda_conv;
#[cfg(feature = "cuda")]
mod cuda_host;
#[cfg(feature = "cuda")]
mod cuda_kernels;
#[cfg(feature = "cuda")]
pub(crate) mod cuda_loss;
#[cfg(feature = "cuda")]
pub mod cudnn;
pub(crate) mod host;
#[cfg(test)]
mod kernels_emu;
mod linalg;
pub mod max_pool;
pub(crate) mod native;

use dfdx::prelude::*;

pub use batch_norm::{batch_norm2d_infer, batch_norm2d_train, Activation, BatchStats};
pub use concat::concat_channels;
pub use conv2d::conv2d;
pub use conv_transpose::conv_transpose2x2;
pub use host::HostDevice;
pub use max_pool::max_pool2x2;
pub use native::with_dfdx_ops;

/// Run-time NCHW shape of activations and convolution weights.
pub type Shape4 = (usize, usize, usize, usize);

/// Why an op refused its inputs or failed on the device.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The inputs' shapes do not fit together.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// The dfdx device failed (allocation).
    #[error("{op}: device error: {msg}")]
    Device { op: &'static str, msg: String },
}

impl OpError {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        OpError::Shape {
            op,
            msg: msg.into(),
        }
    }
    pub(crate) fn device(op: &'static str, err: impl std::fmt::Display) -> Self {
        OpError::Device {
            op,
            msg: err.to_string(),
        }
    }
}

/// Takes the gradient buffer of `$ghost` out of `$grads`, leaving an empty one.
///
/// A macro rather than a function because dfdx keeps `GhostTensor` and its
/// `Tensorlike` bound crate-private, so a helper could not name them.
macro_rules! take_grad {
    ($grads:expr, $ghost:expr, $dev:expr) => {{
        let empty = dfdx::tensor::Storage::<f32>::try_alloc_len(&$dev, 0)?;
        std::mem::replace($grads.get_or_alloc_mut(&$ghost)?, empty)
    }};
}
pub(crate) use take_grad;

/// A gradient-freeing step that learns its tensor after it is recorded.
type Pending<D> = std::rc::Rc<
    std::cell::RefCell<
        Option<Box<dyn FnOnce(&mut Gradients<f32, D>) -> Result<(), <D as HasErr>::Err>>>,
    >,
>;

/// Runs `op`, one of dfdx's own ops, on `x` so that the gradient of its
/// output is freed as soon as `op`'s backward pass has read it, as this
/// module's ops free theirs ([`take_grad`]). dfdx keeps every gradient until
/// the whole backward pass has run: an activation-sized buffer per op (with
/// ReLU's in place, this took the peak memory of a CPU step on dfdx's ops,
/// `sca-train bench --dfdx-ops`, from 2.57 to 1.59-1.89 GiB; BENCHMARKS.md).
///
/// A step recorded on the tape before `op` runs after `op`'s backward pass
/// (dfdx runs them in reverse order); it is told the output once `op` has
/// made it.
pub(crate) fn freeing_output_grad<S1, S2, D, T, E>(
    x: Tensor<S1, f32, D, T>,
    op: impl FnOnce(Tensor<S1, f32, D, T>) -> Result<Tensor<S2, f32, D, T>, E>,
) -> Result<Tensor<S2, f32, D, T>, E>
where
    S1: Shape,
    S2: Shape,
    D: Device<f32>,
    T: Tape<f32, D>,
{
    if !T::OWNS_TAPE {
        return op(x);
    }
    let pending: Pending<D> = Default::default();
    let (x, mut tape) = x.split_tape();
    let later = pending.clone();
    tape.add_backward_op(move |grads| match later.borrow_mut().take() {
        Some(free) => free(grads),
        None => Ok(()),
    });
    let y = op(x.put_tape(tape))?;
    let (y_g, dev) = (y.ghost(), y.device().clone());
    *pending.borrow_mut() = Some(Box::new(move |grads| {
        drop(take_grad!(grads, y_g, dev));
        Ok(())
    }));
    Ok(y)
}

/// dfdx's ReLU, its output's gradient freed after use
/// ([`freeing_output_grad`]). With the workspace's patch of dfdx its backward
/// pass reads its output, not its input, so it runs in place and keeps no
/// copy of its input either.
pub(crate) fn relu<D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor<Shape4, f32, D, T>,
) -> Result<Tensor<Shape4, f32, D, T>, OpError> {
    freeing_output_grad(x, |x| x.try_relu()).map_err(|e| OpError::device("relu", e))
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers for the ops' and losses' gradient tests.
    use dfdx::prelude::*;

    use super::{HostDevice, OpError, Shape4};

    /// A traced activation on device `D`.
    pub type Traced<D> = Tensor<Shape4, f32, D, OwnedTape<f32, D>>;
    /// An op under test: the traced input and the parameters (flat; the op
    /// reshapes the 4-D ones it needs) to its output.
    pub type Op<'a, D> =
        &'a dyn Fn(Traced<D>, &[Tensor<(usize,), f32, D>]) -> Result<Traced<D>, OpError>;

    /// `op`'s output on `(x, params)` on `dev`, and the gradients of
    /// `sum(r · output)` (`r` drawn from a fixed seed): the input's first,
    /// then each parameter's.
    pub fn output_and_grads<D: HostDevice>(
        dev: &D,
        x: &[f32],
        x_shape: Shape4,
        params: &[Vec<f32>],
        op: Op<'_, D>,
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        let xt = dev.tensor_from_vec(x.to_vec(), x_shape);
        let pt: Vec<_> = params
            .iter()
            .map(|p| dev.tensor_from_vec(p.clone(), (p.len(),)))
            .collect();
        let y = op(xt.leaky_trace(), &pt).unwrap();
        let r = dev.tensor_from_vec(rand_vec(y.shape().num_elements(), 99), *y.shape());
        let out = y.with_empty_tape().as_vec();
        let grads = (y * r).sum::<Rank0, _>().backward();
        let mut g = vec![grads.get(&xt).as_vec()];
        g.extend(pt.iter().map(|p| grads.get(p).as_vec()));
        (out, g)
    }

    /// Deterministic uniform values in [-1, 1) from a seed (SplitMix64).
    pub fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        (0..len)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    pub fn dot(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    /// Central-difference gradient of `f` at `x`.
    pub fn numeric_grad(x: &[f32], eps: f32, mut f: impl FnMut(&[f32]) -> f64) -> Vec<f64> {
        let mut x = x.to_vec();
        (0..x.len())
            .map(|i| {
                let orig = x[i];
                x[i] = orig + eps;
                let plus = f(&x);
                x[i] = orig - eps;
                let minus = f(&x);
                x[i] = orig;
                (plus - minus) / (2.0 * eps as f64)
            })
            .collect()
    }

    pub fn assert_close(what: &str, analytic: &[f32], numeric: &[f64], rtol: f64, atol: f64) {
        assert_eq!(analytic.len(), numeric.len(), "{what}: length");
        for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
            let a = *a as f64;
            assert!(
                (a - n).abs() <= atol + rtol * n.abs(),
                "{what}[{i}]: analytic {a} vs numeric {n}"
            );
        }
    }

    pub fn assert_close_f32(what: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{i}]: got {g}, want {w}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use dfdx::prelude::*;

    use super::Shape4;

    type Probe = Rc<RefCell<Option<Box<dyn FnOnce(&mut Gradients<f32, Cpu>) -> usize>>>>;

    /// The length of the gradient buffer of `op`'s output that `Gradients`
    /// holds right after `op`'s backward pass (a step recorded before `op`
    /// runs after it), and the input's gradient.
    fn after_backward(
        op: impl FnOnce(
            Tensor<Shape4, f32, Cpu, OwnedTape<f32, Cpu>>,
        ) -> Tensor<Shape4, f32, Cpu, OwnedTape<f32, Cpu>>,
    ) -> (usize, Vec<f32>) {
        let dev = Cpu::default();
        let x = dev.tensor_from_vec(vec![-1.0, 2.0, 0.0, 3.0, -0.5, 4.0], (1, 1, 2, 3));
        let probe: Probe = Default::default();
        let seen = Rc::new(RefCell::new(None));
        let (xt, mut tape) = x.leaky_trace().split_tape();
        let (later, out) = (probe.clone(), seen.clone());
        tape.add_backward_op(move |grads| {
            let measure = later.borrow_mut().take().expect("set after the op");
            *out.borrow_mut() = Some(measure(grads));
            Ok(())
        });
        let y = op(xt.put_tape(tape));
        let y_g = y.ghost();
        *probe.borrow_mut() = Some(Box::new(move |grads| {
            grads.get_or_alloc_mut(&y_g).expect("cpu").len()
        }));
        let r = dev.tensor_from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (1, 1, 2, 3));
        let grads = (y * r).sum::<Rank0, _>().backward();
        let len = seen.borrow_mut().take().expect("the probe ran");
        (len, grads.get(&x).as_vec())
    }

    #[test]
    fn a_dfdx_ops_output_gradient_is_freed_once_its_backward_pass_has_read_it() {
        // ReLU's gradient, read off its output: r where x > 0 (0 at x = 0).
        let want = vec![0.0, 2.0, 0.0, 4.0, 0.0, 6.0];
        let (kept, plain) = after_backward(|x| x.relu());
        assert_eq!(kept, 6, "dfdx itself keeps the output's gradient");
        assert_eq!(plain, want);
        let (freed, wrapped) = after_backward(|x| super::relu(x).unwrap());
        assert_eq!(freed, 0, "the output's gradient is freed");
        assert_eq!(wrapped, want);
    }

    #[test]
    fn relu_runs_in_place_keeping_no_copy_of_its_input() {
        // Its backward pass reads its output (the workspace's patch of dfdx),
        // so a traced input no one else holds is overwritten.
        let dev = Cpu::default();
        let x = dev.tensor_from_vec(vec![-1.0, 2.0, 0.0, 3.0], (1, 1, 2, 2));
        let h = x.leaky_trace() * 2.0;
        let before = h.contiguous_host_slice().expect("cpu").as_ptr();
        let y = super::relu(h).unwrap();
        assert_eq!(y.contiguous_host_slice().expect("cpu").as_ptr(), before);
        assert_eq!(y.as_vec(), [0.0, 4.0, 0.0, 6.0]);
        let grads = y.sum::<Rank0, _>().backward();
        assert_eq!(grads.get(&x).as_vec(), [0.0, 2.0, 0.0, 2.0]);
    }

    #[test]
    fn a_tensor_knows_whether_it_is_its_buffers_only_holder() {
        // What an op asks before it keeps a bf16 copy in place of its input
        // (cuda_bf16.rs, on the GPU): a copy beside a buffer someone else
        // holds would add memory.
        let dev = Cpu::default();
        let x = dev.tensor_from_vec(vec![-1.0f32, 2.0, 0.0, 3.0], (1, 1, 2, 2));
        assert!(x.data_is_unique());
        let clone = x.clone();
        assert!(!x.data_is_unique() && !clone.data_is_unique());
        drop(clone);
        assert!(x.data_is_unique());
        // dfdx's ReLU keeps its output for its backward pass (the workspace's
        // patch): the output is shared with the tape while that is alive.
        let y = super::relu(x.leaky_trace() * 2.0).unwrap();
        assert!(!y.data_is_unique());
        let (y, tape) = y.split_tape();
        drop(tape);
        assert!(y.data_is_unique());
        // A tape-less copy of a traced tensor (the U-Net's skips) shares it.
        let h = x.leaky_trace() * 2.0;
        let skip = h.with_empty_tape();
        assert!(!h.data_is_unique());
        drop(skip);
        assert!(h.data_is_unique());
    }

    #[test]
    fn a_devices_buffer_cache_tells_what_it_holds_by_size() {
        // The dfdx patch's change 8: `sca-train bench`'s profile of what a
        // GPU's buffer cache holds after the timed steps.
        let dev = Cpu::default();
        assert_eq!(dev.cached_buffers(), []);
        dev.enable_cache();
        let buffers: Vec<Tensor<(usize,), f32, Cpu>> = [300, 100, 300]
            .iter()
            .map(|n| dev.zeros_like(&(*n,)))
            .collect();
        assert_eq!(dev.cached_buffers(), [], "held by tensors, not cached");
        drop(buffers);
        let bytes: Tensor<(usize,), u8, Cpu> = dev.zeros_like(&(400,));
        drop(bytes);
        // Buffers of equal bytes count together, whatever their element type.
        assert_eq!(dev.cached_buffers(), [(1200, 2), (400, 2)]);
        let again: Tensor<(usize,), f32, Cpu> = dev.zeros_like(&(300,));
        assert_eq!(dev.cached_buffers(), [(1200, 1), (400, 2)]);
        drop(again);
        dev.disable_cache();
        assert_eq!(dev.cached_buffers(), []);
    }
}
