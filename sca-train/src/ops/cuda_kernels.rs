//! sca-train's own CUDA kernels (`kernels.cu`: batch norm and a bias's
//! gradient for `cuda_bn.rs`, BCE for `cuda_loss.rs`, AdamW for
//! `cuda_adamw.rs`, bf16 casts for `cuda_bf16.rs`), one module compiled by NVRTC at first use and loaded
//! into the device once per process. The
//! source includes no headers, so the GPU machine needs no CUDA include path
//! for it; the `cuda` e2e tests compile it with nvcc, so a broken edit fails
//! CI without a GPU, and `kernels_emu.rs` runs every kernel on the CPU
//! against the host kernels.

use std::sync::Arc;

use cudarc::driver::{CudaDevice, CudaFunction, LaunchConfig};

const MODULE: &str = "sca_kernels";
const FUNCS: [&str; 12] = [
    "bn_stats",
    "bn_finalize",
    "bn_forward",
    "bn_grad_sums",
    "bn_backward",
    "channel_sums_add",
    "bce_sum",
    "bce_grad",
    "adamw",
    "flag_nonfinite",
    "to_bf16",
    "from_bf16",
];

/// The kernels' source.
const SOURCE: &str = include_str!("kernels.cu");

/// Loads the kernels into `dev` unless they are there.
pub(crate) fn load(dev: &Arc<CudaDevice>) -> Result<(), String> {
    if dev.has_func(MODULE, FUNCS[0]) {
        return Ok(());
    }
    // The oldest generation the build supports (f64 atomicAdd needs 6.0);
    // NVRTC takes a `'static` name, made once per device.
    let arch = format!("compute_{}", sca_spec::MIN_CUDA_COMPUTE_CAPABILITY);
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(Box::leak(arch.into_boxed_str())),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts)
        .map_err(|e| format!("compiling sca-train's CUDA kernels with NVRTC: {e:?}"))?;
    dev.load_ptx(ptx, MODULE, &FUNCS)
        .map_err(|e| format!("loading sca-train's CUDA kernels: {e}"))
}

/// The kernel `name` of a device [`load`] has run on.
pub(crate) fn func(dev: &Arc<CudaDevice>, name: &str) -> CudaFunction {
    dev.get_func(MODULE, name)
        .expect("the kernels are loaded before use")
}

/// A grid-stride launch over `n` values: blocks of 256 threads, each
/// thread starting with about `per_thread` values, at most `max_blocks`
/// blocks (the kernels loop over the rest).
pub(crate) fn grid_1d(n: usize, per_thread: usize, max_blocks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            n.div_ceil(256 * per_thread).clamp(1, max_blocks) as u32,
            1,
            1,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}
