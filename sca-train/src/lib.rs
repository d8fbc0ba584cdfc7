//! `sca-train`: the snow-covered-area U-Net training workload.

pub use sca_spec as spec;
