//! SageMaker's container contract: the `/opt/ml` tree a training container
//! reads its inputs from and writes its results to.
//!
//! SageMaker starts the image as `docker run IMAGE train` with:
//! - `input/config/hyperparameters.json`, `resourceconfig.json`, `inputdataconfig.json`;
//! - one directory per input channel under `input/data/<channel>/` (ours: `config`,
//!   holding the experiment file and, from the launcher, the data manifest);
//! - `model/` (tarred into `model.tar.gz` after the job), `checkpoints/` (synced with
//!   S3 for managed spot), and `output/failure` (its text becomes the job's FailureReason;
//!   written on an error and, by [`install_panic_hook`], on a panic).
//!
//! The root is `/opt/ml` unless `SCA_OPT_ML` names another directory, so the
//! same code runs on a host for local runs and tests. The `SM_*` variables are
//! set only by AWS's Python toolkit, so nothing here reads them: what the
//! trainer knows of its launch (job name, commit, image digest, data
//! manifest) comes as hyperparameters, typed as [`JobPins`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::DataManifest;

/// The environment variable that overrides `/opt/ml`.
pub const ROOT_ENV: &str = "SCA_OPT_ML";

/// Hyperparameters this trainer understands. Anything else is an error: the
/// original workflow accepted keys and silently ignored them.
pub const KNOWN_HYPERPARAMETERS: &[(&str, &str)] = &[
    (
        "experiment_sha256",
        "sha256 of the experiment file; training refuses a file that does not match",
    ),
    (
        "data_base_dir",
        "directory that relative dataset paths are resolved against (local runs)",
    ),
    (
        "init_checkpoint",
        "the concrete warm-start checkpoint the launcher resolved from `experiment:<name>`",
    ),
    (
        JobPins::DATA_MANIFEST_SHA256,
        "sha256 of the data manifest (`DataManifest::sha256`); training refuses a missing or different `manifest.json`",
    ),
    (
        JobPins::JOB_NAME,
        "the training job's name; checkpoints record it, and a resume refuses another job's checkpoint",
    ),
    (
        JobPins::COMMIT,
        "the git commit the job runs; checkpoints record it",
    ),
    (
        JobPins::IMAGE_DIGEST,
        "the training image's digest (docker, sagemaker); checkpoints record it",
    ),
];

/// Which launch a run belongs to, as the launcher passes it in the
/// hyperparameters (each key optional: a hand-made `/opt/ml` tree has none).
/// Every checkpoint records the pins of the run that wrote it, and a run
/// resumes only a checkpoint with its own pins: the checkpoint directory may
/// hold another launch's checkpoints (a checkpoint S3 prefix shared with an
/// earlier job), and resuming one would report that job's training as this
/// one's. Within one job (a spot restart, a resume after SIGTERM) the
/// hyperparameters, and so the pins, are the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPins {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// The data manifest's sha256 (the channel's `manifest.json` as the
    /// trainer verified it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_manifest_sha256: Option<String>,
}

/// One pin on which two [`JobPins`] differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinDifference {
    /// The hyperparameter's name, e.g. `job_name`.
    pub key: &'static str,
    /// The values of the two sides (`None`: not pinned).
    pub theirs: Option<String>,
    pub ours: Option<String>,
}

impl JobPins {
    pub const JOB_NAME: &'static str = "job_name";
    pub const COMMIT: &'static str = "commit";
    pub const IMAGE_DIGEST: &'static str = "image_digest";
    pub const DATA_MANIFEST_SHA256: &'static str = "data_manifest_sha256";

    /// The pins among `hyperparameters`.
    pub fn from_hyperparameters(hyperparameters: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| hyperparameters.get(k).cloned();
        JobPins {
            job_name: get(Self::JOB_NAME),
            commit: get(Self::COMMIT),
            image_digest: get(Self::IMAGE_DIGEST),
            data_manifest_sha256: get(Self::DATA_MANIFEST_SHA256),
        }
    }

    /// The hyperparameters that pass these pins (the launcher's side).
    pub fn to_hyperparameters(&self) -> BTreeMap<String, String> {
        self.fields()
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.clone()?)))
            .collect()
    }

    fn fields(&self) -> [(&'static str, &Option<String>); 4] {
        [
            (Self::JOB_NAME, &self.job_name),
            (Self::COMMIT, &self.commit),
            (Self::IMAGE_DIGEST, &self.image_digest),
            (Self::DATA_MANIFEST_SHA256, &self.data_manifest_sha256),
        ]
    }

    /// Every pin on which `self` (a checkpoint's) and `ours` (this run's)
    /// differ, in the order job name, commit, image digest, data manifest.
    /// A pin set on one side only differs too: a checkpoint that does not
    /// say which job wrote it is not this job's.
    pub fn differences(&self, ours: &JobPins) -> Vec<PinDifference> {
        self.fields()
            .into_iter()
            .zip(ours.fields())
            .filter(|((_, theirs), (_, ours))| theirs != ours)
            .map(|((key, theirs), (_, ours))| PinDifference {
                key,
                theirs: theirs.clone(),
                ours: ours.clone(),
            })
            .collect()
    }
}

impl std::fmt::Display for PinDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| match v {
            Some(v) => format!("`{v}`"),
            None => "unset".to_string(),
        };
        write!(
            f,
            "{} {} there, {} here",
            self.key,
            show(&self.theirs),
            show(&self.ours)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("channel directory {0} does not exist: the job needs a `config` input channel holding the experiment file")]
    NoConfigChannel(PathBuf),
    #[error("no experiment file (*.toml) in {0}: upload exactly one to the `config` channel")]
    NoExperiment(PathBuf),
    #[error("{} experiment files in {dir}: {names}; the `config` channel must hold exactly one", .count, dir = .dir.display(), names = .names)]
    TwoExperiments {
        dir: PathBuf,
        count: usize,
        names: String,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON of the expected shape: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("unknown hyperparameter `{0}`: this trainer accepts only {known} (everything else belongs in the experiment file)", known = KNOWN_HYPERPARAMETERS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "))]
    UnknownHyperparameter(String),
}

/// The `/opt/ml` tree.
#[derive(Debug, Clone)]
pub struct OptMl {
    pub root: PathBuf,
}

/// `resourceconfig.json`: which host this is.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResourceConfig {
    pub current_host: String,
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl OptMl {
    /// `$SCA_OPT_ML`, or `/opt/ml`.
    pub fn from_env() -> Self {
        OptMl {
            root: std::env::var_os(ROOT_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/opt/ml")),
        }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        OptMl { root: root.into() }
    }

    pub fn config_dir(&self) -> PathBuf {
        self.root.join("input/config")
    }
    pub fn channel(&self, name: &str) -> PathBuf {
        self.root.join("input/data").join(name)
    }
    pub fn model_dir(&self) -> PathBuf {
        self.root.join("model")
    }
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn output_dir(&self) -> PathBuf {
        self.root.join("output")
    }
    pub fn failure_file(&self) -> PathBuf {
        self.output_dir().join("failure")
    }

    /// The one `*.toml` in the `config` channel.
    pub fn experiment_file(&self) -> Result<PathBuf, ContractError> {
        let dir = self.channel("config");
        if !dir.is_dir() {
            return Err(ContractError::NoConfigChannel(dir));
        }
        let entries = std::fs::read_dir(&dir).map_err(|source| ContractError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut tomls: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
            .collect();
        tomls.sort();
        match tomls.len() {
            0 => Err(ContractError::NoExperiment(dir)),
            1 => Ok(tomls.remove(0)),
            count => Err(ContractError::TwoExperiments {
                dir,
                count,
                names: tomls
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The data manifest the launcher put in the `config` channel
    /// ([`DataManifest::FILE_NAME`]); `None` when there is none.
    pub fn data_manifest(&self) -> Result<Option<DataManifest>, ContractError> {
        let path = self.channel("config").join(DataManifest::FILE_NAME);
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ContractError::Io { path, source }),
            Ok(bytes) => DataManifest::from_slice(&bytes)
                .map(Some)
                .map_err(|source| ContractError::Json { path, source }),
        }
    }

    /// `hyperparameters.json` (all values are strings in SageMaker's format); empty when absent.
    pub fn hyperparameters(&self) -> Result<BTreeMap<String, String>, ContractError> {
        let map: BTreeMap<String, String> =
            read_json_or_default(&self.config_dir().join("hyperparameters.json"))?;
        if let Some(unknown) = map
            .keys()
            .find(|k| !KNOWN_HYPERPARAMETERS.iter().any(|(n, _)| n == k))
        {
            return Err(ContractError::UnknownHyperparameter(unknown.clone()));
        }
        Ok(map)
    }

    /// `resourceconfig.json`; a single local host when absent.
    pub fn resource_config(&self) -> Result<ResourceConfig, ContractError> {
        let mut rc: ResourceConfig =
            read_json_or_default(&self.config_dir().join("resourceconfig.json"))?;
        if rc.current_host.is_empty() {
            rc.current_host = "algo-1".into();
        }
        Ok(rc)
    }

    /// Record why the job failed, as SageMaker expects: one line in `output/failure`.
    pub fn write_failure(&self, reason: &str) {
        let line: String = reason
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let _ = std::fs::create_dir_all(self.output_dir());
        // SageMaker truncates FailureReason at 1024 characters; keep the start, which names the cause.
        let line: String = line.chars().take(1000).collect();
        let _ = std::fs::write(self.failure_file(), format!("{line}\n"));
    }
}

/// Make any later panic write `ml`'s failure file before the usual report,
/// so that a bug that panics still leaves SageMaker (and the launcher) a
/// reason instead of a bare exit code.
pub fn install_panic_hook(ml: &OptMl) {
    let ml = ml.clone();
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        ml.write_failure(&format!("sca-train: internal error (a bug): {info}"));
        report(info);
    }));
}

fn read_json_or_default<T: Default + for<'de> Deserialize<'de>>(
    path: &Path,
) -> Result<T, ContractError> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(ContractError::Io {
            path: path.to_path_buf(),
            source,
        }),
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ContractError::Json {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, OptMl) {
        let dir = tempfile::tempdir().unwrap();
        let ml = OptMl::at(dir.path());
        (dir, ml)
    }

    #[test]
    fn experiment_file_needs_exactly_one_toml() {
        let (_d, ml) = tree();
        assert!(matches!(
            ml.experiment_file(),
            Err(ContractError::NoConfigChannel(_))
        ));
        std::fs::create_dir_all(ml.channel("config")).unwrap();
        assert!(matches!(
            ml.experiment_file(),
            Err(ContractError::NoExperiment(_))
        ));
        std::fs::write(ml.channel("config").join("a.toml"), "").unwrap();
        assert_eq!(ml.experiment_file().unwrap().file_name().unwrap(), "a.toml");
        std::fs::write(ml.channel("config").join("b.toml"), "").unwrap();
        let err = ml.experiment_file().unwrap_err().to_string();
        assert!(
            err.contains("a.toml, b.toml") && err.contains("exactly one"),
            "{err}"
        );
    }

    #[test]
    fn unknown_hyperparameters_are_refused() {
        let (_d, ml) = tree();
        assert!(ml.hyperparameters().unwrap().is_empty());
        std::fs::create_dir_all(ml.config_dir()).unwrap();
        std::fs::write(
            ml.config_dir().join("hyperparameters.json"),
            r#"{"experiment_sha256": "ab"}"#,
        )
        .unwrap();
        assert_eq!(ml.hyperparameters().unwrap()["experiment_sha256"], "ab");
        std::fs::write(
            ml.config_dir().join("hyperparameters.json"),
            r#"{"epochs": "3"}"#,
        )
        .unwrap();
        let err = ml.hyperparameters().unwrap_err().to_string();
        assert!(err.contains("unknown hyperparameter `epochs`"), "{err}");
        std::fs::write(ml.config_dir().join("hyperparameters.json"), "{").unwrap();
        assert!(matches!(
            ml.hyperparameters(),
            Err(ContractError::Json { .. })
        ));
    }

    #[test]
    fn job_pins_travel_as_hyperparameters_and_every_difference_is_named() {
        let ours = JobPins {
            job_name: Some("exp-0123456-20261126-120000".into()),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            image_digest: Some("sha256:ff".into()),
            data_manifest_sha256: Some("m1".into()),
        };
        let hyper = ours.to_hyperparameters();
        assert_eq!(hyper.len(), 4);
        assert_eq!(JobPins::from_hyperparameters(&hyper), ours);
        // The trainer accepts what the launcher passes.
        let (_d, ml) = tree();
        std::fs::create_dir_all(ml.config_dir()).unwrap();
        std::fs::write(
            ml.config_dir().join("hyperparameters.json"),
            serde_json::to_vec(&hyper).unwrap(),
        )
        .unwrap();
        assert_eq!(
            JobPins::from_hyperparameters(&ml.hyperparameters().unwrap()),
            ours
        );

        assert!(ours.differences(&ours).is_empty());
        assert!(JobPins::default()
            .differences(&JobPins::default())
            .is_empty());
        let theirs = JobPins {
            job_name: Some("exp-0123456-20261126-110000".into()),
            image_digest: None,
            ..ours.clone()
        };
        let d = theirs.differences(&ours);
        assert_eq!(
            d.iter().map(|d| d.key).collect::<Vec<_>>(),
            ["job_name", "image_digest"]
        );
        assert_eq!(
            d[0].to_string(),
            "job_name `exp-0123456-20261126-110000` there, `exp-0123456-20261126-120000` here"
        );
        assert_eq!(
            d[1].to_string(),
            "image_digest unset there, `sha256:ff` here"
        );
        for (key, other) in [
            (
                "commit",
                JobPins {
                    commit: Some("1".into()),
                    ..ours.clone()
                },
            ),
            (
                "data_manifest_sha256",
                JobPins {
                    data_manifest_sha256: Some("m2".into()),
                    ..ours.clone()
                },
            ),
        ] {
            assert_eq!(other.differences(&ours)[0].key, key);
        }
    }

    #[test]
    fn failure_is_one_line() {
        let (_d, ml) = tree();
        ml.write_failure("no tiles\n  matched the regex\n");
        assert_eq!(
            std::fs::read_to_string(ml.failure_file()).unwrap(),
            "no tiles; matched the regex\n"
        );
    }
}
