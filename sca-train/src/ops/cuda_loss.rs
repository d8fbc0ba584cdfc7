//! BCE-with-logits on dfdx's `Cuda`: the loss's value and gradient computed
//! where the logits are, so neither the 8 MB gradient of a 512x512 batch of
//! 8 nor the host's pass over it sits between a step's forward and backward
//! passes (on an H200 the host loss and the gradient's round trip were about
//! 12 ms of a 73 ms step). The same arithmetic as [`crate::loss`] on the
//! host (`f64` per pixel; the sum's order is the atomics', so the value can
//! differ in its last bits); the GPU machine's loss trace compares the two.

use cudarc::driver::{CudaSlice, DeviceSlice, LaunchAsync, LaunchConfig};
use dfdx::prelude::*;

use super::cuda_kernels::{func, grid_1d, load};
use super::{cuda_host, take_grad, Shape4};

/// Blocks of 256 threads for `n` elements, at most 1024.
fn grid(n: usize) -> LaunchConfig {
    grid_1d(n, 8, 1024)
}

/// `weight ×` the mean BCE-with-logits of `logits` against `targets` (their
/// host values, checked by the caller): the loss tensor, recording its
/// backward pass, and the unweighted value.
pub(crate) fn bce<T: Tape<f32, Cuda>>(
    logits: Tensor<Shape4, f32, Cuda, T>,
    targets: &[f32],
    weight: f32,
) -> super::native::DeviceLoss<Cuda, T> {
    let n = targets.len();
    let drv = |e: cudarc::driver::result::DriverError| format!("BCE on the GPU: {e}");
    let dev = logits.device().clone();
    let cuda = {
        let xs = logits
            .contiguous_cuda_slice()
            .ok_or("BCE on the GPU: the logits are not contiguous")?;
        if xs.len() != n {
            return Err(format!("BCE on the GPU: {} logits, {n} targets", xs.len()));
        }
        xs.device()
    };
    load(&cuda)?;
    // SAFETY: `upload` writes every element.
    let mut ts: CudaSlice<f32> =
        unsafe { dev.alloc_uninit::<f32>(n) }.map_err(|e| format!("BCE on the GPU: {e}"))?;
    // Checked by the caller; kernels queued below see the copy.
    cuda_host::upload(&mut ts, targets, false).map_err(|e| format!("BCE on the GPU: {e}"))?;
    let mut sum = cuda.alloc_zeros::<f64>(1).map_err(drv)?;
    let xs = logits.contiguous_cuda_slice().expect("checked above");
    // SAFETY: `xs` and `ts` hold `n` floats, `sum` one double.
    unsafe { func(&cuda, "bce_sum").launch(grid(n), (xs, &ts, &mut sum, n as i64)) }
        .map_err(drv)?;
    let value = cuda.dtoh_sync_copy(&sum).map_err(drv)?[0] / n.max(1) as f64;

    let (logits, mut tape) = logits.split_tape();
    let out = dev
        .try_tensor_from_vec(vec![(weight as f64 * value) as f32], ())
        .map_err(|e| format!("BCE on the GPU: {e}"))?;
    if T::OWNS_TAPE {
        let (x_g, y_g) = (logits.ghost(), out.ghost());
        tape.add_backward_op(move |grads| {
            let gy = take_grad!(grads, y_g, dev);
            let gy: &CudaSlice<f32> = &gy;
            let xs = logits.contiguous_cuda_slice().expect("checked in forward");
            let gx: &mut CudaSlice<f32> = grads.get_or_alloc_mut(&x_g)?;
            let count = n.max(1) as f64;
            // SAFETY: `xs`, `ts` and `gx` hold `n` floats, `gy` one.
            unsafe {
                func(&cuda, "bce_grad").launch(grid(n), (xs, &ts, gy, gx, n as i64, count, weight))
            }?;
            Ok(())
        });
    }
    Ok((out.put_tape(tape), value))
}

#[cfg(test)]
mod tests {
    //! On a GPU (fails without one; run by `bench/gpu.sh`).
    use super::*;
    use crate::ops::testutil::{assert_close_f32, rand_vec};

    #[test]
    fn gpu_bce_matches_the_host_loss() {
        let dev = Cuda::try_build(0, 0).expect("this test needs a GPU");
        let (n, h, w) = (2, 5, 7);
        let x: Vec<f32> = rand_vec(n * h * w, 3).iter().map(|v| v * 8.0).collect();
        let t: Vec<f32> = rand_vec(n * h * w, 4)
            .iter()
            .map(|v| if *v > 0.5 { 0.3 } else { f32::from(*v > 0.0) })
            .collect();
        let xt = dev.tensor_from_vec(x.clone(), (n, 1, h, w));
        let weight = 0.5;
        let (loss, value) = bce(xt.leaky_trace(), &t, weight).unwrap();
        let (host_value, host_grad) = crate::loss::bce_with_logits(&x, &t);
        assert!((value - host_value).abs() < 1e-9, "{value} vs {host_value}");
        assert_close_f32(
            "loss",
            &loss.with_empty_tape().as_vec(),
            &[(0.5 * host_value) as f32],
            1e-6,
        );
        let grads = loss.backward();
        let want: Vec<f32> = host_grad.iter().map(|g| weight * g).collect();
        assert_close_f32("gradient", &grads.get(&xt).as_vec(), &want, 1e-6);
    }
}
