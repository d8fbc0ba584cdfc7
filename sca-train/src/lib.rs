//! `sca-train`: the snow-covered-area U-Net training workload.
//!
//! The crate knows nothing about Docker or the launcher: it reads the
//! experiment file and SageMaker's `/opt/ml` tree and trains.

pub use sca_spec as spec;
// The data crate under its old names here: `sca_train::data`, `sca_train::synth`.
pub use sca_data as data;
pub use sca_data::synth;
pub mod alloc;
pub mod bench;
pub mod checkpoint;
pub mod device;
pub mod fsx;
pub mod gpu_memory;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod predict;
pub mod progress;
pub mod sagemaker;
pub mod train;
