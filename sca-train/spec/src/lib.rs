//! The experiment file format, shared by the launcher (`xtask`) and the
//! trainer (`sca-train`): its types, its generated JSON schema, its
//! validation with located diagnostics, the data manifest a launch pins,
//! sweeps expanded into their child experiments, what a job may cost, and
//! SageMaker's container contract between the two ([`contract`]).

pub mod contract;
mod defaults;
mod instance_types;
mod manifest;
mod naming;
mod prices;
mod schema;
mod sweep;
mod types;
pub mod validate;

pub use defaults::{ResolvedJob, WorkspaceDefaults};
pub use instance_types::{
    compute_capability_text, cuda_capable_families, gpu_of, Gpu, MIN_CUDA_COMPUTE_CAPABILITY,
    TRAINING_INSTANCE_TYPES,
};
pub use manifest::{DataManifest, ManifestObject};
pub use naming::{
    is_job_name_of, job_name, job_name_prefix, JOB_SUFFIX_LEN, MAX_EXPERIMENT_NAME, MAX_JOB_NAME,
};
pub use prices::{
    billed, check_max_cost, check_sweep_max_cost, hourly_usd, limited_worst_usd, sweep_worst_case,
    within, worst_case, Billed, Cost, OverBudget, PRICED_REGIONS, PRICE_SOURCE,
};
pub use schema::{schema, schema_text, SCHEMA_PATH, SCHEMA_VERSION};
pub use sweep::{expand, Point, SweepPlan, CHILD_SUFFIX_LEN, MAX_POINTS, MAX_SWEEP_NAME};
pub use types::*;
pub use validate::{
    check_across, experiment_name, validate_bytes, validate_file, validate_str, Diagnostic, Report,
};
