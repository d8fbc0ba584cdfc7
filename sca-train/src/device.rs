//! Which dfdx device a run computes on: the experiment's `train.device`,
//! overridden by `SCA_DEVICE` (or `sca-train bench --device`): `cpu` (the
//! default), `cuda`, or `auto` (the GPU when this build has the `cuda` feature
//! and a GPU opens, else the CPU).
//!
//! On `cuda` the layers, the BCE loss and AdamW run on the GPU
//! (`ops/native.rs`); the Lovász and Dice losses stay host code, reached
//! through [`HostDevice`]'s copies. The default stays `cpu`, as the default
//! instance type has no GPU. Where a GPU run's buffers come from is
//! [`GpuBuffers`] (`SCA_CUDA_BUFFERS`).
//!
//! A GPU that opens is not yet one that can train: its generation may be
//! older than the one this build's kernels were compiled for, or its driver
//! older than the build's CUDA toolkit (it then rejects the kernels), and
//! dfdx compiles some kernels at run time, panicking when that fails. So
//! opening `cuda` checks the compute capability and runs one tiny training
//! step ([`probe`]) before any data is read: `cuda` fails at once with the
//! reason, `auto` falls back to the CPU saying why.
//!
//! Code that works on either device implements [`WithDevice`] and is handed
//! the opened device by [`Compute::run`], so each caller is written once,
//! generic over [`HostDevice`].

use std::fmt;

use dfdx::tensor::Cpu;
use sca_spec::{compute_capability_text, Precision};

use crate::gpu_memory::{GpuBuffers, PoolPeaks};
use crate::ops::HostDevice;

/// What the user asked for, and where it is read from: the contract's.
pub use sca_spec::contract::{
    device_env_override as env_override, DeviceRequest, DEVICE_ENV as ENV,
};

/// Why no device could be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Unknown(#[from] sca_spec::contract::UnknownDevice),
    #[error("device `cuda` asked for, but this sca-train was built without the `cuda` feature: use the CUDA image (the production Dockerfile) or `cargo xtask cuda build`, or ask for `cpu`")]
    NotBuilt,
    #[error("device `cuda` asked for, but no GPU could be opened: {0} (is the NVIDIA driver present, and the container started with the GPU, e.g. `docker run --gpus all`?); ask for `cpu` or `auto` to train on the CPU")]
    Open(String),
    #[error("device `cuda` asked for, but {0}; ask for `cpu` or `auto` to train on the CPU")]
    Unusable(String),
    #[error("precision = \"bf16\" asked for, but {0}; set train.precision = \"fp32\" (or remove it) to train in fp32")]
    Precision(String),
    /// A bad value of one of the GPU's environment settings: an error with
    /// `auto` too, which would otherwise fall back to the CPU over a typo.
    #[error("{0}")]
    Setting(String),
}

/// The compute capability this build's GPU kernels were compiled for (times
/// ten), from `CUDA_COMPUTE_CAP` at build time (both build routes set it:
/// the Dockerfile and `cargo xtask cuda build`); `None` when it was not set.
/// dfdx compiles its kernels to PTX for exactly that generation, which the
/// driver can JIT-compile for that generation and newer ones only.
pub fn build_compute_capability() -> Option<u32> {
    option_env!("CUDA_COMPUTE_CAP").and_then(|c| c.trim().trim_start_matches("sm_").parse().ok())
}

/// The devices this build computes on, for `sca-train --version`.
pub fn build_description() -> String {
    if !cfg!(feature = "cuda") {
        return "devices: cpu (built without the `cuda` feature)".into();
    }
    match build_compute_capability() {
        Some(c) => format!(
            "devices: cpu, cuda (kernels compiled for compute capability {} and newer)",
            compute_capability_text(c)
        ),
        None => "devices: cpu, cuda (kernels compiled for the GPU of the build machine)".into(),
    }
}

/// What the driver says about the GPU a run would use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub name: String,
    /// Compute capability times ten (`90` is 9.0).
    pub compute_capability: u32,
    /// The newest CUDA version the driver supports, as `cuDriverGetVersion`
    /// reports it (`13000` is 13.0).
    pub driver_cuda: u32,
}

impl fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (compute capability {}, driver for CUDA {}.{})",
            self.name,
            compute_capability_text(self.compute_capability),
            self.driver_cuda / 1000,
            self.driver_cuda % 1000 / 10
        )
    }
}

/// Whether kernels compiled for compute capability `build` (see
/// [`build_compute_capability`]) can run on `gpu`; the reason and the fix if not.
pub fn check_generation(gpu: &GpuInfo, build: Option<u32>) -> Result<(), String> {
    let Some(build) = build else { return Ok(()) };
    if gpu.compute_capability >= build {
        return Ok(());
    }
    let min = sca_spec::MIN_CUDA_COMPUTE_CAPABILITY;
    let fix = if gpu.compute_capability < min {
        format!(
            "no build of the kernels runs on a GPU that old (compute capability {} or newer is needed): use a newer GPU instance type",
            compute_capability_text(min)
        )
    } else {
        format!(
            "build for it with CUDA_COMPUTE_CAP={} (`image build --build-arg CUDA_COMPUTE_CAP={0}`, or `CUDA_COMPUTE_CAP={0} cargo xtask cuda build`), or use a newer GPU",
            gpu.compute_capability
        )
    };
    Err(format!(
        "the GPU, {gpu}, is older than the compute capability {} this sca-train's kernels were compiled for: {fix}",
        compute_capability_text(build)
    ))
}

/// One tiny training step and one prediction of a small U-Net on `dev`,
/// through the same code as a real run: loads (and where dfdx does that at
/// run time, compiles) every kernel training uses, so that a GPU which
/// cannot run them is found before any data is read. A panic inside (dfdx
/// unwraps its run-time kernel compilation) becomes an error.
pub fn probe<D: HostDevice>(dev: &D) -> Result<(), String> {
    use crate::model::{AdamWConfig, UNet, UNetConfig};
    use sca_spec::{Loss, LossKind};
    let step = || -> Result<(), String> {
        let cfg = UNetConfig {
            in_channels: 4,
            depth: 1,
            base_width: 2,
            batch_norm: true,
        };
        let mut model = UNet::with_device(dev.clone(), cfg, 1, AdamWConfig::default())
            .map_err(|e| e.to_string())?;
        let (n, h, w) = (2, 8, 8);
        let images: Vec<f32> = (0..n * 4 * h * w).map(|i| (i % 7) as f32 - 3.0).collect();
        let masks: Vec<f32> = (0..n * h * w).map(|i| (i % 2) as f32).collect();
        let loss = model
            .train_step(&images, &masks, n, h, w, &Loss::Single(LossKind::Bce))
            .map_err(|e| e.to_string())?;
        if !loss.is_finite() {
            return Err(format!("its loss was {loss}"));
        }
        model.predict(&images, n, h, w).map_err(|e| e.to_string())?;
        Ok(())
    };
    caught(step)
}

/// `f`'s result, with a panic inside it turned into an error carrying the
/// panic's message. The default hook would print the panic as if the run had
/// crashed, so it is silenced meanwhile (no other thread runs yet when a
/// device is opened).
fn caught<R>(f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.unwrap_or_else(|payload| {
        Err(payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message")
            .to_string())
    })
}

/// An opened device.
#[derive(Clone)]
pub enum Compute {
    Cpu(Cpu),
    #[cfg(feature = "cuda")]
    Cuda(dfdx::tensor::Cuda, GpuInfo, GpuBuffers),
}

impl fmt::Debug for Compute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A computation that runs on whichever device was opened.
pub trait WithDevice {
    type Output;
    fn run<D: HostDevice>(self, dev: D) -> Self::Output;
}

impl Compute {
    /// Opens the requested device. `auto` falls back to the CPU, saying why on stderr.
    pub fn open(req: DeviceRequest) -> Result<Self, DeviceError> {
        match req {
            DeviceRequest::Cpu => Ok(Compute::Cpu(Cpu::default())),
            DeviceRequest::Cuda => open_cuda(),
            DeviceRequest::Auto => match open_cuda() {
                Ok(c) => Ok(c),
                Err(e @ DeviceError::Setting(_)) => Err(e),
                Err(e) => {
                    match e {
                        DeviceError::Open(why) => crate::warn!(
                            "sca-train: device auto: no GPU could be opened ({why}); using the CPU"
                        ),
                        DeviceError::Unusable(why) => {
                            crate::warn!("sca-train: device auto: {why}; using the CPU")
                        }
                        DeviceError::NotBuilt
                        | DeviceError::Unknown(_)
                        | DeviceError::Precision(_)
                        | DeviceError::Setting(_) => {}
                    }
                    Ok(Compute::Cpu(Cpu::default()))
                }
            },
        }
    }

    /// `cpu` or `cuda`.
    pub fn name(&self) -> &'static str {
        match self {
            Compute::Cpu(_) => "cpu",
            #[cfg(feature = "cuda")]
            Compute::Cuda(..) => "cuda",
        }
    }

    /// The device for a log line: `cpu`, or `cuda` and what the GPU is.
    pub fn describe(&self) -> String {
        match self {
            Compute::Cpu(_) => "cpu".into(),
            #[cfg(feature = "cuda")]
            Compute::Cuda(_, gpu, buffers) => {
                let buffers = match buffers {
                    GpuBuffers::Cache => "",
                    GpuBuffers::Pool => "; buffers: the driver's memory pool",
                };
                match crate::ops::cudnn::status() {
                    Ok(lib) if crate::ops::cudnn::precision() == Precision::Bf16 => {
                        let saved = crate::ops::cuda_bf16::saved().describe();
                        format!("cuda: {gpu}{buffers}; convolutions: {lib}, bf16 operands{saved}")
                    }
                    Ok(lib) => format!("cuda: {gpu}{buffers}; convolutions: {lib}"),
                    Err(why) => {
                        format!("cuda: {gpu}{buffers}; convolutions: dfdx's im2col kernels ({why})")
                    }
                }
            }
        }
    }

    /// Sets the number format of the convolutions this thread runs
    /// ([`Precision`]; per thread, [`crate::ops::cudnn::set_precision`]):
    /// bf16 needs the GPU and cuDNN.
    pub fn set_precision(&self, p: Precision) -> Result<(), DeviceError> {
        match (self, p) {
            (_, Precision::Fp32) => {
                #[cfg(feature = "cuda")]
                crate::ops::cudnn::set_precision(p);
                Ok(())
            }
            (Compute::Cpu(_), Precision::Bf16) => Err(DeviceError::Precision(
                "this run computes on the CPU (bf16 convolutions run on a GPU only: train.device = \"cuda\")".into(),
            )),
            #[cfg(feature = "cuda")]
            (Compute::Cuda(..), Precision::Bf16) => match crate::ops::cudnn::status() {
                Ok(_) => {
                    let saved =
                        crate::ops::cuda_bf16::saved_setting().map_err(DeviceError::Precision)?;
                    crate::ops::cuda_bf16::set_saved(saved);
                    crate::ops::cudnn::set_precision(p);
                    Ok(())
                }
                Err(why) => Err(DeviceError::Precision(format!(
                    "bf16 convolutions need cuDNN, which is off: {why}"
                ))),
            },
        }
    }

    /// Runs `w` on this device.
    pub fn run<W: WithDevice>(self, w: W) -> W::Output {
        match self {
            Compute::Cpu(d) => w.run(d),
            #[cfg(feature = "cuda")]
            Compute::Cuda(d, ..) => w.run(d),
        }
    }

    /// Bytes of GPU memory in use on the device (driver view: every process,
    /// plus dfdx's buffer cache), `None` on the CPU.
    pub fn gpu_memory_used(&self) -> Option<u64> {
        match self {
            Compute::Cpu(_) => None,
            #[cfg(feature = "cuda")]
            Compute::Cuda(..) => {
                // The device's context is current on this thread once it has run anything.
                let (free, total) = cudarc::driver::result::mem_get_info().ok()?;
                Some((total - free) as u64)
            }
        }
    }

    /// Where this run's GPU buffers come from; `None` on the CPU.
    pub fn gpu_buffers(&self) -> Option<GpuBuffers> {
        match self {
            Compute::Cpu(_) => None,
            #[cfg(feature = "cuda")]
            Compute::Cuda(_, _, b) => Some(*b),
        }
    }

    /// What dfdx's buffer cache on the GPU holds now, by size: (bytes of
    /// each buffer, how many), largest first. After a run, every buffer it
    /// used and gave back: with a cache that reuses a buffer for its exact
    /// size only, each size's most buffers alive at once. `None` on the CPU (no cache there: the
    /// allocator reuses freed memory) and with [`GpuBuffers::Pool`].
    pub fn gpu_cached_buffers(&self) -> Option<Vec<(usize, usize)>> {
        match self {
            Compute::Cpu(_) => None,
            #[cfg(feature = "cuda")]
            Compute::Cuda(d, _, GpuBuffers::Cache) => Some(dfdx::tensor::Cache::cached_buffers(d)),
            #[cfg(feature = "cuda")]
            Compute::Cuda(_, _, GpuBuffers::Pool) => None,
        }
    }

    /// Restarts [`Compute::gpu_pool_peaks`]'s marks from what the pool holds
    /// now; `None` on the CPU or where the driver has no memory pool.
    pub fn reset_gpu_pool_peaks(&self) -> Option<()> {
        match self {
            Compute::Cpu(_) => None,
            #[cfg(feature = "cuda")]
            Compute::Cuda(..) => crate::gpu_memory::pool::reset_peaks(),
        }
    }

    /// The device memory pool's high-water marks since
    /// [`Compute::reset_gpu_pool_peaks`]: every buffer comes from it (cudarc
    /// allocates stream-ordered), dfdx's buffer cache and cuDNN's workspace
    /// included. `reserved`: the most the pool held from the driver at once,
    /// freed blocks it keeps included: the counterpart of PyTorch's
    /// `max_memory_reserved` (its caching allocator's segments). `used`: the
    /// most it had handed out (with dfdx's cache on, the cache's buffers
    /// count as handed out). Neither counts the CUDA context or the
    /// libraries' loaded kernels, which the driver's view
    /// ([`Compute::gpu_memory_used`]) does. `None` on the CPU or where the
    /// driver keeps no pool.
    pub fn gpu_pool_peaks(&self) -> Option<PoolPeaks> {
        match self {
            Compute::Cpu(_) => None,
            #[cfg(feature = "cuda")]
            Compute::Cuda(..) => crate::gpu_memory::pool::peaks(),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Compute, DeviceError> {
    use dfdx::tensor::{Cache, CudaError};
    // A bad setting is named before anything else can fail.
    let buffers = GpuBuffers::from_setting(std::env::var("SCA_CUDA_BUFFERS").ok().as_deref())
        .map_err(DeviceError::Setting)?;
    // By code, not Display: cudarc's Display asks the driver for the message
    // and panics when that fails too, as it does on the driver stub.
    let describe = |e: CudaError| {
        DeviceError::Open(match e {
            CudaError::Driver(d) => format!("CUDA driver error {:?}", d.0),
            CudaError::Blas(b) => format!("cuBLAS error {:?}", b.0),
            CudaError::Cpu(c) => c.to_string(),
        })
    };
    // cudarc 0.9's `CudaDevice::new` unwraps these two: ask first, so a host
    // without a usable driver or GPU gets an error, not a panic.
    use cudarc::driver::result;
    result::init()
        .map_err(CudaError::Driver)
        .map_err(describe)?;
    let count = result::device::get_count()
        .map_err(CudaError::Driver)
        .map_err(describe)?;
    if count < 1 {
        return Err(DeviceError::Open(
            "the driver reports no CUDA device".into(),
        ));
    }
    let gpu = gpu_info().map_err(describe)?;
    check_generation(&gpu, build_compute_capability()).map_err(DeviceError::Unusable)?;
    let dev = dfdx::tensor::Cuda::try_build(0, 0).map_err(describe)?;
    // Reuse freed memory instead of returning it to the driver each step:
    // fewer allocations, and the memory in use after a step is its peak.
    match buffers {
        GpuBuffers::Cache => dev.try_enable_cache().map_err(describe)?,
        GpuBuffers::Pool => crate::gpu_memory::pool::keep_freed(true).ok_or_else(|| {
            DeviceError::Open(
                "SCA_CUDA_BUFFERS=pool, but this GPU and driver have no stream-ordered memory pool; unset it to use dfdx's buffer cache".into(),
            )
        })?,
    }
    // cuDNN (loaded at run time) that fails the first step is turned off,
    // and the step runs again on dfdx's own convolutions.
    let probed = match (probe(&dev), crate::ops::cudnn::status()) {
        (Err(why), Ok(lib)) => {
            let why = format!("{lib} failed the first training step ({why})");
            crate::warn!("sca-train: {why}; convolutions run on dfdx's im2col kernels");
            crate::ops::cudnn::disable(why);
            probe(&dev)
        }
        (r, _) => r,
    };
    probed.map_err(|why| {
        DeviceError::Unusable(format!(
            "the GPU, {gpu}, could not run a first training step: {why} (a driver older than the binary's CUDA toolkit rejects its kernels with CUDA_ERROR_UNSUPPORTED_PTX_VERSION: update the driver, or build with the toolkit the driver supports)"
        ))
    })?;
    Ok(Compute::Cuda(dev, gpu, buffers))
}

/// Name, compute capability and driver version of GPU 0 (the driver is initialised).
#[cfg(feature = "cuda")]
fn gpu_info() -> Result<GpuInfo, dfdx::tensor::CudaError> {
    use cudarc::driver::{result, sys};
    use dfdx::tensor::CudaError;
    let ordinal = result::device::get(0).map_err(CudaError::Driver)?;
    let attr = |a| {
        // SAFETY: `ordinal` came from cuDeviceGet.
        unsafe { result::device::get_attribute(ordinal, a) }.map_err(CudaError::Driver)
    };
    let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let mut name = [0 as std::ffi::c_char; 256];
    let mut version = 0;
    // SAFETY: the buffer's length is passed with it.
    unsafe {
        sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as i32, ordinal)
            .result()
            .map_err(CudaError::Driver)?;
        sys::cuDriverGetVersion(&mut version)
            .result()
            .map_err(CudaError::Driver)?;
    }
    let bytes: Vec<u8> = name.iter().map(|&c| c as u8).collect();
    let name = std::ffi::CStr::from_bytes_until_nul(&bytes)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
    Ok(GpuInfo {
        name,
        compute_capability: (major * 10 + minor) as u32,
        driver_cuda: version as u32,
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Compute, DeviceError> {
    Err(DeviceError::NotBuilt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_name_the_fix() {
        assert_eq!("cpu".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cpu);
        assert_eq!(
            " CUDA ".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Cuda
        );
        assert_eq!(
            "auto".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Auto
        );
        let e = "tpu".parse::<DeviceRequest>().unwrap_err().to_string();
        assert!(e.contains("`tpu`") && e.contains("cpu, cuda, auto"), "{e}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_an_error_and_auto_falls_back() {
        let e = Compute::open(DeviceRequest::Cuda).unwrap_err().to_string();
        assert!(e.contains("without the `cuda` feature"), "{e}");
        let c = Compute::open(DeviceRequest::Auto).unwrap();
        assert_eq!(c.name(), "cpu");
        assert_eq!(c.gpu_memory_used(), None);
        assert_eq!(c.reset_gpu_pool_peaks(), None);
        assert_eq!(c.gpu_pool_peaks(), None);
        assert_eq!(c.gpu_buffers(), None);
        assert_eq!(c.gpu_cached_buffers(), None);
    }

    fn gpu(cc: u32) -> GpuInfo {
        GpuInfo {
            name: "NVIDIA Test".into(),
            compute_capability: cc,
            driver_cuda: 12020,
        }
    }

    #[test]
    fn kernels_run_on_their_generation_and_newer_only() {
        assert_eq!(check_generation(&gpu(90), Some(90)), Ok(()));
        assert_eq!(check_generation(&gpu(100), Some(90)), Ok(()));
        assert_eq!(check_generation(&gpu(70), None), Ok(()), "unknown target");
        let e = check_generation(&gpu(86), Some(90)).unwrap_err();
        assert!(
            e.contains("NVIDIA Test (compute capability 8.6, driver for CUDA 12.2), is older than the compute capability 9.0 this sca-train's kernels were compiled for"),
            "{e}"
        );
        assert!(e.contains("CUDA_COMPUTE_CAP=86"), "{e}");
        let e = check_generation(&gpu(75), Some(90)).unwrap_err();
        assert!(
            e.contains("no build of the kernels runs on a GPU that old"),
            "{e}"
        );
        let e = DeviceError::Unusable(e).to_string();
        assert!(
            e.starts_with("device `cuda` asked for, but the GPU, NVIDIA Test"),
            "{e}"
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_says_so() {
        assert!(build_description().contains("devices: cpu (built without the `cuda` feature)"));
    }

    #[test]
    fn bf16_on_the_cpu_is_refused_with_the_fix() {
        let cpu = Compute::Cpu(Cpu::default());
        assert!(cpu.set_precision(Precision::Fp32).is_ok());
        let e = cpu.set_precision(Precision::Bf16).unwrap_err().to_string();
        assert!(e.contains("this run computes on the CPU"), "{e}");
        assert!(e.contains("set train.precision = \"fp32\""), "{e}");
    }

    #[test]
    fn the_probe_trains_a_step_on_either_set_of_kernels() {
        let cpu = Cpu::default();
        assert_eq!(probe(&cpu), Ok(()));
        assert_eq!(crate::ops::with_dfdx_ops(|| probe(&cpu)), Ok(()));
    }

    #[test]
    fn a_panic_becomes_the_error() {
        // As dfdx's run-time kernel compilation fails: an unwrapped error.
        fn compile() -> Result<(), &'static str> {
            Err("nvrtc: cannot open cuda_fp16.h")
        }
        let r: Result<(), String> = caught(|| {
            compile().unwrap();
            Ok(())
        });
        let e = r.unwrap_err();
        assert!(e.contains("nvrtc: cannot open cuda_fp16.h"), "{e}");
        assert_eq!(
            caught(|| -> Result<(), String> { panic!("boom") }),
            Err("boom".into())
        );
        assert_eq!(caught(|| Ok(3)), Ok(3));
    }

    #[test]
    fn run_hands_the_device_to_the_computation() {
        struct Sum;
        impl WithDevice for Sum {
            type Output = f32;
            fn run<D: HostDevice>(self, dev: D) -> f32 {
                use dfdx::prelude::*;
                let t = dev.tensor_from_vec(vec![1.0f32, 2.0, 3.0], (3,));
                t.sum().as_vec()[0]
            }
        }
        assert_eq!(Compute::open(DeviceRequest::Cpu).unwrap().run(Sum), 6.0);
    }
}
