//! AdamW on dfdx's `Cuda`: moments kept on the device, each parameter
//! updated by one `adamw` kernel ([`super::adamw`]'s arithmetic, rounded the
//! same way), gradients checked for non-finite values by one `flag_nonfinite`
//! launch each and a single read of the flags. On an H200 the host update
//! (every gradient and parameter copied to the host and back, about 90
//! synchronous copies) took 5.9 ms of a 64 ms step (BENCHMARKS.md, GPU
//! section).

use cudarc::driver::{CudaSlice, DeviceRepr, DeviceSlice, LaunchAsync, LaunchConfig};
use dfdx::prelude::*;

use super::adamw::AdamWStep;
use super::cuda_kernels::{func, grid_1d, load};

// SAFETY: `repr(C)`, eight f32s, the layout of kernels.cu's `AdamWStep`.
unsafe impl DeviceRepr for AdamWStep {}

/// Blocks of 256 threads for `n` elements, at most 1024.
fn grid(n: usize) -> LaunchConfig {
    grid_1d(n, 4, 1024)
}

fn loaded(dev: &std::sync::Arc<cudarc::driver::CudaDevice>) -> Result<(), CudaError> {
    // A kernel that fails to compile is a build defect the `cuda` e2e tests
    // catch; report it as the driver's "not found".
    load(dev).map_err(|e| {
        crate::warn!("{e}");
        CudaError::Driver(cudarc::driver::DriverError(
            cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_FOUND,
        ))
    })
}

/// `n` cleared flags.
pub(crate) fn flags(dev: &Cuda, n: usize) -> Result<CudaSlice<i32>, CudaError> {
    // SAFETY: cleared below before any read.
    let mut f = unsafe { dev.alloc_uninit::<i32>(n.max(1)) }?;
    f.device().memset_zeros(&mut f)?;
    Ok(f)
}

/// Sets `flags[i]` where `g` holds a non-finite value (queued; read by
/// `first_flagged`).
pub(crate) fn flag_nonfinite(
    g: &CudaSlice<f32>,
    flags: &mut CudaSlice<i32>,
    i: usize,
) -> Result<(), CudaError> {
    assert!(i < flags.len(), "flag {i} of {}", flags.len());
    let cuda = g.device();
    loaded(&cuda)?;
    let n = g.len();
    // SAFETY: `g` holds `n` floats, `flags` more than `i` ints.
    unsafe { func(&cuda, "flag_nonfinite").launch(grid(n), (g, n as i64, flags, i as i32)) }?;
    Ok(())
}

/// One AdamW step: `p` replaced by its update (a fresh buffer, so a clone of
/// the model sharing the old one keeps it), `m` and `v` updated in place.
pub(crate) fn adamw<S: Shape>(
    dev: &Cuda,
    p: &mut Tensor<S, f32, Cuda>,
    m: &mut CudaSlice<f32>,
    v: &mut CudaSlice<f32>,
    g: &CudaSlice<f32>,
    s: &AdamWStep,
) -> Result<(), CudaError> {
    let n = p.shape().num_elements();
    let ps = p
        .contiguous_cuda_slice()
        .expect("parameters are contiguous tensors");
    assert!(
        ps.len() == n && m.len() == n && v.len() == n && g.len() == n,
        "AdamW: buffers of different lengths"
    );
    let cuda = ps.device();
    loaded(&cuda)?;
    // SAFETY: the kernel writes every element.
    let mut out = unsafe { dev.alloc_uninit::<f32>(n) }?;
    // SAFETY: every buffer holds `n` floats; `s` is the kernel's struct.
    unsafe { func(&cuda, "adamw").launch(grid(n), (ps, &mut out, m, v, g, n as i64, *s)) }?;
    *p = dev.tensor_from_cuda_slice(*p.shape(), out);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! On a GPU (fails without one; run by `bench/gpu.sh`).
    use super::*;
    use crate::ops::host::HostDevice;
    use crate::ops::testutil::rand_vec;

    #[test]
    fn gpu_adamw_is_bit_identical_to_the_host_update() {
        let dev = Cuda::try_build(0, 0).expect("this test needs a GPU");
        let n = 5000;
        let p0 = rand_vec(n, 1);
        let g = rand_vec(n, 2);
        let (mut hp, mut hm, mut hv) = (p0.clone(), rand_vec(n, 3), rand_vec(n, 4));
        hv.iter_mut().for_each(|x| *x = x.abs());
        let mut p = dev.tensor_from_vec(p0, (n,));
        let mut m = dev.moments_from_host(&hm).unwrap();
        let mut v = dev.moments_from_host(&hv).unwrap();
        let gt = dev.tensor_from_vec(g.clone(), (n,));
        let gs = gt.contiguous_cuda_slice().unwrap();
        for t in 1..=3 {
            let s = AdamWStep::new(3e-3, 0.9, 0.999, 1e-8, 1e-2, t);
            super::super::adamw::update_host(&mut hp, &mut hm, &mut hv, &g, &s);
            adamw(&dev, &mut p, &mut m, &mut v, gs, &s).unwrap();
        }
        assert_eq!(p.as_vec(), hp, "parameters");
        assert_eq!(Cuda::moments_to_host(&m).unwrap(), hm, "first moments");
        assert_eq!(Cuda::moments_to_host(&v).unwrap(), hv, "second moments");
    }

    #[test]
    fn gpu_flags_name_the_gradients_holding_non_finite_values() {
        let dev = Cuda::try_build(0, 0).expect("this test needs a GPU");
        let mut bad = rand_vec(3000, 5);
        bad[2999] = f32::NAN;
        let mut inf = rand_vec(10, 6);
        inf[0] = f32::NEG_INFINITY;
        let grads = [rand_vec(100, 7), bad, inf];
        let mut f = flags(&dev, grads.len()).unwrap();
        assert_eq!(dev.first_flagged(&f).unwrap(), None);
        let ts: Vec<_> = grads
            .iter()
            .map(|g| dev.tensor_from_vec(g.clone(), (g.len(),)))
            .collect();
        for (i, t) in ts.iter().enumerate() {
            flag_nonfinite(t.contiguous_cuda_slice().unwrap(), &mut f, i).unwrap();
        }
        assert_eq!(dev.first_flagged(&f).unwrap(), Some(1));
        let host = f.device().dtoh_sync_copy(&f).unwrap();
        assert_eq!(host, vec![0, 1, 1]);
    }
}
