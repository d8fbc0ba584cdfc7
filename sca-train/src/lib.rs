//! `sca-train`: the snow-covered-area U-Net training workload.
//!
//! The crate knows nothing about Docker or the launcher: it reads the
//! experiment file and SageMaker's `/opt/ml` tree and trains.

pub use sca_spec as spec;
pub mod alloc;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod fsx;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod predict;
pub mod progress;
pub mod sagemaker;
pub mod synth;
pub mod train;
