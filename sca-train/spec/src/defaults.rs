//! Workspace-wide launch defaults (`[workspace.metadata.sca]` in the root
//! Cargo.toml) and their merge with an experiment's `[job]` table.

use serde::{Deserialize, Serialize};

use crate::{parse_duration, Experiment};

/// `[workspace.metadata.sca]`: every key optional; an experiment's `[job]` overrides each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceDefaults {
    pub region: Option<String>,
    pub ecr_repository: Option<String>,
    pub image_name: Option<String>,
    pub config_bucket: Option<String>,
    pub role_arn: Option<String>,
    pub output: Option<String>,
}

/// The job settings after the merge: what a launch actually uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedJob {
    pub region: String,
    pub role_arn: String,
    pub output: String,
    pub config_bucket: String,
    pub ecr_repository: String,
    pub image_name: String,
    pub instance_type: String,
    pub instance_count: u32,
    pub volume_gb: u32,
    pub max_runtime_secs: u64,
    /// Set for managed spot training.
    pub max_wait_secs: Option<u64>,
    pub checkpoint_s3: Option<String>,
}

/// A key that could not be resolved: `(key path, message, help)`.
pub type ResolveError = (String, String, String);

impl ResolvedJob {
    /// Merge `exp.job` over `defaults`. Shape checks of the values are the validator's job.
    pub fn resolve(
        exp: &Experiment,
        defaults: &WorkspaceDefaults,
    ) -> Result<Self, Vec<ResolveError>> {
        let job = &exp.job;
        let mut errors = Vec::new();
        let mut pick = |key: &str, own: &Option<String>, default: &Option<String>| -> String {
            match own.clone().or_else(|| default.clone()) {
                Some(v) => v,
                None => {
                    errors.push((
                        format!("job.{key}"),
                        format!("no `{key}` for the job"),
                        format!("set `{key}` under [job] or in [workspace.metadata.sca] of the root Cargo.toml"),
                    ));
                    String::new()
                }
            }
        };
        let region = pick("region", &job.region, &defaults.region);
        let role_arn = pick("role_arn", &job.role_arn, &defaults.role_arn);
        let output = pick("output", &job.output, &defaults.output);
        let config_bucket = pick("config_bucket", &job.config_bucket, &defaults.config_bucket);
        let ecr_repository = pick(
            "ecr_repository",
            &job.ecr_repository,
            &defaults.ecr_repository,
        );
        let image_name = defaults
            .image_name
            .clone()
            .unwrap_or_else(|| "sca-train".into());
        let max_runtime_secs = match parse_duration(&job.max_runtime) {
            Ok(d) => d.as_secs(),
            Err(e) => {
                errors.push((
                    "job.max_runtime".into(),
                    format!("`{}` is not a duration: {e}", job.max_runtime),
                    "write a duration such as \"7h\", \"90m\" or \"1h 30m\"".into(),
                ));
                0
            }
        };
        let max_wait_secs = match &job.spot {
            None => None,
            Some(spot) => match parse_duration(&spot.max_wait) {
                Ok(d) => Some(d.as_secs()),
                Err(e) => {
                    errors.push((
                        "job.spot.max_wait".into(),
                        format!("`{}` is not a duration: {e}", spot.max_wait),
                        "write a duration such as \"10h\"".into(),
                    ));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ResolvedJob {
            region,
            role_arn,
            output,
            config_bucket,
            ecr_repository,
            image_name,
            instance_type: job.instance_type.clone(),
            instance_count: job.instance_count,
            volume_gb: job.volume_gb,
            max_runtime_secs,
            max_wait_secs,
            checkpoint_s3: job.checkpoint_s3.clone(),
        })
    }
}
