//! Which dfdx device a run computes on: the experiment's `train.device`,
//! overridden by `SCA_DEVICE` (or `sca-train bench --device`): `cpu` (the
//! default), `cuda`, or `auto` (the GPU when this build has the `cuda` feature
//! and a GPU opens, else the CPU).
//!
//! On `cuda` the layers run on the GPU through dfdx's kernels (`ops/native.rs`);
//! the loss and AdamW stay host code, reached through [`HostDevice`]'s copies.
//! The default stays `cpu` until that path has been measured on a GPU
//! (`sca-train/bench/gpu.sh`).
//!
//! Code that works on either device implements [`WithDevice`] and is handed
//! the opened device by [`Compute::run`], so each caller is written once,
//! generic over [`HostDevice`].

use std::fmt;
use std::str::FromStr;

use dfdx::tensor::Cpu;

use crate::ops::HostDevice;

/// The environment variable that overrides the device of `sca-train train`, `predict` and `bench`.
pub const ENV: &str = "SCA_DEVICE";

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    #[default]
    Cpu,
    Cuda,
    Auto,
}

impl FromStr for DeviceRequest {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" | "gpu" => Ok(DeviceRequest::Cuda),
            "auto" => Ok(DeviceRequest::Auto),
            _ => Err(DeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceRequest::Cpu => "cpu",
            DeviceRequest::Cuda => "cuda",
            DeviceRequest::Auto => "auto",
        })
    }
}

impl DeviceRequest {
    /// The request in [`ENV`], `cpu` when unset.
    pub fn from_env() -> Result<Self, DeviceError> {
        Self::from_env_or(sca_spec::Device::Cpu)
    }

    /// The request in [`ENV`], else the experiment's `train.device`.
    pub fn from_env_or(experiment: sca_spec::Device) -> Result<Self, DeviceError> {
        match std::env::var(ENV) {
            Ok(v) if !v.trim().is_empty() => v.parse(),
            _ => Ok(experiment.into()),
        }
    }
}

impl From<sca_spec::Device> for DeviceRequest {
    fn from(d: sca_spec::Device) -> Self {
        match d {
            sca_spec::Device::Cpu => DeviceRequest::Cpu,
            sca_spec::Device::Cuda => DeviceRequest::Cuda,
            sca_spec::Device::Auto => DeviceRequest::Auto,
        }
    }
}

/// Why no device could be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device `{0}` is not one of cpu, cuda, auto (set {ENV} or --device to one of them)")]
    Unknown(String),
    #[error("device `cuda` asked for, but this sca-train was built without the `cuda` feature: use the CUDA image (the production Dockerfile) or `cargo xtask cuda build`, or ask for `cpu`")]
    NotBuilt,
    #[error("device `cuda` asked for, but no GPU could be opened: {0} (is the NVIDIA driver present, and the container started with the GPU, e.g. `docker run --gpus all`?); ask for `cpu` or `auto` to train on the CPU")]
    Open(String),
}

/// An opened device.
#[derive(Clone)]
pub enum Compute {
    Cpu(Cpu),
    #[cfg(feature = "cuda")]
    Cuda(dfdx::tensor::Cuda),
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
            DeviceRequest::Auto => {
                match open_cuda() {
                    Ok(c) => Ok(c),
                    Err(e) => {
                        if let DeviceError::Open(why) = e {
                            eprintln!("sca-train: device auto: no GPU could be opened ({why}); using the CPU");
                        }
                        Ok(Compute::Cpu(Cpu::default()))
                    }
                }
            }
        }
    }

    /// `cpu` or `cuda`.
    pub fn name(&self) -> &'static str {
        match self {
            Compute::Cpu(_) => "cpu",
            #[cfg(feature = "cuda")]
            Compute::Cuda(_) => "cuda",
        }
    }

    /// Runs `w` on this device.
    pub fn run<W: WithDevice>(self, w: W) -> W::Output {
        match self {
            Compute::Cpu(d) => w.run(d),
            #[cfg(feature = "cuda")]
            Compute::Cuda(d) => w.run(d),
        }
    }

    /// Bytes of GPU memory in use on the device (driver view: every process,
    /// plus dfdx's buffer cache), `None` on the CPU.
    pub fn gpu_memory_used(&self) -> Option<u64> {
        match self {
            Compute::Cpu(_) => None,
            #[cfg(feature = "cuda")]
            Compute::Cuda(_) => {
                // The device's context is current on this thread once it has run anything.
                let (free, total) = cudarc::driver::result::mem_get_info().ok()?;
                Some((total - free) as u64)
            }
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Compute, DeviceError> {
    use dfdx::tensor::{Cache, CudaError};
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
    let dev = dfdx::tensor::Cuda::try_build(0, 0).map_err(describe)?;
    // Reuse freed buffers instead of returning them to the driver each step:
    // fewer cudaMalloc calls, and the memory in use after a step is its peak.
    dev.try_enable_cache().map_err(describe)?;
    Ok(Compute::Cuda(dev))
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
