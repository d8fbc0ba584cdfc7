//! SageMaker's container contract, one definition for both sides: the
//! launcher (`xtask`) writes it (local and docker runs) or asks SageMaker to
//! (a `CreateTrainingJob` request built from the same types), and the
//! trainer (`sca-train train`) reads it.
//!
//! SageMaker starts the image as `docker run IMAGE train` with:
//! - `input/config/hyperparameters.json` ([`Hyperparameters`]),
//!   `resourceconfig.json` ([`ResourceConfig`]), `inputdataconfig.json`
//!   ([`InputDataConfig`]);
//! - one directory per input channel under `input/data/<channel>/` (ours:
//!   [`CONFIG_CHANNEL`], holding the experiment file and, from the launcher,
//!   the data manifest and the experiment as resolved at launch, which only
//!   `experiment diff` reads);
//! - `model/` (tarred into `model.tar.gz` after the job; what the trainer
//!   leaves there: [`model_files`]), `checkpoints/` (synced with S3 for
//!   managed spot), and `output/failure` (its text becomes the job's
//!   FailureReason).
//!
//! The root is `/opt/ml` unless `SCA_OPT_ML` names another directory, so the
//! same code runs on a host for local runs and tests. The `SM_*` variables are
//! set only by AWS's Python toolkit, so nothing here reads them: what the
//! trainer knows of its launch (job name, commit, image digest, data
//! manifest) comes as hyperparameters, typed as [`JobPins`]. Which device it
//! computes on comes as [`DEVICE_ENV`] ([`DeviceRequest`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::DataManifest;

/// The environment variable that overrides `/opt/ml`.
pub const ROOT_ENV: &str = "SCA_OPT_ML";

/// The input channel that carries the experiment file and the data manifest.
pub const CONFIG_CHANNEL: &str = "config";

/// The environment variable that overrides the experiment's `train.device`
/// for `sca-train train`, `predict` and `bench` (a [`DeviceRequest`]).
pub const DEVICE_ENV: &str = "SCA_DEVICE";

/// What the trainer leaves in the model directory (`/opt/ml/model`), which
/// `experiment fetch` unpacks and nothing else.
pub mod model_files {
    /// The trained weights (safetensors).
    pub const MODEL: &str = "model.safetensors";
    /// The experiment file the model was trained from.
    pub const EXPERIMENT: &str = "experiment.toml";
    pub const METRICS_JSON: &str = "metrics.json";
    pub const METRICS_CSV: &str = "metrics.csv";
    pub const METRICS_PNG: &str = "metrics.png";
    pub const TRAIN_IDS: &str = "train_ids.txt";
    pub const VAL_IDS: &str = "val_ids.txt";
    /// Tiles that failed validation and were left out, with the reason.
    pub const BAD_TILES: &str = "bad_tiles.txt";
    /// Only beside a stopped job's model: where its weights stand, which
    /// the metrics files may not reach ([`super::PartialModel`]).
    pub const PARTIAL: &str = "partial.json";
    /// Every fixed name above.
    pub const ALL: &[&str] = &[
        MODEL,
        EXPERIMENT,
        METRICS_JSON,
        METRICS_CSV,
        METRICS_PNG,
        TRAIN_IDS,
        VAL_IDS,
        BAD_TILES,
        PARTIAL,
    ];

    /// The prediction overlay of validation tile `(z, x, y)`.
    pub fn overlay(z: u8, x: u32, y: u32) -> String {
        format!("overlay-{z}-{x}-{y}.png")
    }

    /// Whether the trainer writes a file of this name: one of [`ALL`] or an
    /// [`overlay`].
    pub fn is_trainer_file(name: &str) -> bool {
        ALL.contains(&name)
            || name
                .strip_prefix("overlay-")
                .and_then(|n| n.strip_suffix(".png"))
                .is_some_and(|zxy| {
                    let parts: Vec<&str> = zxy.split('-').collect();
                    parts.len() == 3
                        && parts
                            .iter()
                            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                })
    }
}

/// [`model_files::PARTIAL`]: the model directory holds a stopped job's
/// model, trained this far. The position `model.safetensors` records, for
/// readers of the metrics files: a stop mid-epoch saves weights trained
/// past the last epoch that `metrics.json` and `metrics.csv` describe.
/// It never stands beside other weights than those it describes; a kill
/// while the trainer replaces them can leave it beside none (no model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialModel {
    /// The epochs the experiment trains.
    pub epochs: u32,
    /// Whole epochs in the weights.
    pub epochs_trained: u32,
    /// Steps of epoch `epochs_trained + 1` in the weights too (0: none).
    pub steps_trained: u32,
    /// The last epoch in the metrics files (`None`: they have none). Not
    /// the weights' when `steps_trained` is not 0.
    pub metrics_epoch: Option<u32>,
    /// The same, in words.
    pub note: String,
}

impl PartialModel {
    /// The marker of weights trained `epochs_trained` epochs and
    /// `steps_trained` steps of `epochs`, beside metrics that end at
    /// `metrics_epoch`; `None` when they are the finished model.
    pub fn new(
        epochs: u32,
        epochs_trained: u32,
        steps_trained: u32,
        metrics_epoch: Option<u32>,
    ) -> Option<Self> {
        if epochs_trained >= epochs && steps_trained == 0 {
            return None;
        }
        let weights = match (epochs_trained, steps_trained) {
            (0, 0) => "untrained (stopped before its first step)".to_string(),
            (e, 0) => format!("those after epoch {e} of {epochs}"),
            (e, step) => format!("those after step {step} of epoch {} of {epochs}", e + 1),
        };
        let files = "metrics.json and metrics.csv";
        let metrics = match metrics_epoch {
            Some(e) if e == epochs_trained && steps_trained == 0 => {
                format!("epoch {e} is the last in {files}")
            }
            Some(e) => format!("{files} end at epoch {e} and do not describe them"),
            None => format!("{files} have no epoch"),
        };
        Some(PartialModel {
            epochs,
            epochs_trained,
            steps_trained,
            metrics_epoch,
            note: format!("saved when its job stopped: the weights are {weights}; {metrics}"),
        })
    }
}

/// Hyperparameters this trainer understands, with what each is for: the
/// keys of [`Hyperparameters`]. Anything else is an error: the original
/// workflow accepted keys and silently ignored them.
pub const KNOWN_HYPERPARAMETERS: &[(&str, &str)] = &[
    (
        Hyperparameters::EXPERIMENT_SHA256,
        "sha256 of the experiment file; training refuses a file that does not match",
    ),
    (
        Hyperparameters::DATA_BASE_DIR,
        "directory that relative dataset paths are resolved against (local runs)",
    ),
    (
        Hyperparameters::INIT_CHECKPOINT,
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

/// `hyperparameters.json`: everything the launcher tells the trainer besides
/// the experiment file (SageMaker passes string values only). Every key is
/// optional: a hand-made `/opt/ml` tree has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hyperparameters {
    /// sha256 of the experiment file; training refuses a file that does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment_sha256: Option<String>,
    /// Directory that relative dataset paths resolve against (local and
    /// docker runs, whose data are host paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base_dir: Option<String>,
    /// The concrete warm-start checkpoint the launcher resolved from
    /// `experiment:<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_checkpoint: Option<String>,
    /// Which launch this is.
    #[serde(flatten)]
    pub pins: JobPins,
}

impl Hyperparameters {
    pub const EXPERIMENT_SHA256: &'static str = "experiment_sha256";
    pub const DATA_BASE_DIR: &'static str = "data_base_dir";
    pub const INIT_CHECKPOINT: &'static str = "init_checkpoint";

    /// SageMaker's form: a map of strings (`CreateTrainingJob`'s
    /// `HyperParameters`, and `hyperparameters.json`).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let value = serde_json::to_value(self).expect("string fields serialise");
        serde_json::from_value(value).expect("every field is a string")
    }

    /// The hyperparameters in `map`, refusing a key this trainer does not know.
    pub fn from_map(map: BTreeMap<String, String>) -> Result<Self, ContractError> {
        if let Some(unknown) = map
            .keys()
            .find(|k| !KNOWN_HYPERPARAMETERS.iter().any(|(n, _)| n == k))
        {
            return Err(ContractError::UnknownHyperparameter(unknown.clone()));
        }
        let value = serde_json::to_value(map).expect("a map of strings serialises");
        Ok(serde_json::from_value(value).expect("every known key is an optional string"))
    }
}

/// The device a run asks for: the experiment's `train.device`, or
/// [`DEVICE_ENV`] over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    #[default]
    Cpu,
    Cuda,
    Auto,
}

/// A [`DEVICE_ENV`] or `--device` value that names no device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device `{0}` is not one of cpu, cuda, auto (set {DEVICE_ENV} or --device to one of them)")]
pub struct UnknownDevice(pub String);

impl std::str::FromStr for DeviceRequest {
    type Err = UnknownDevice;
    fn from_str(s: &str) -> Result<Self, UnknownDevice> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" | "gpu" => Ok(DeviceRequest::Cuda),
            "auto" => Ok(DeviceRequest::Auto),
            _ => Err(UnknownDevice(s.to_string())),
        }
    }
}

impl std::fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceRequest::Cpu => "cpu",
            DeviceRequest::Cuda => "cuda",
            DeviceRequest::Auto => "auto",
        })
    }
}

impl From<crate::Device> for DeviceRequest {
    fn from(d: crate::Device) -> Self {
        match d {
            crate::Device::Cpu => DeviceRequest::Cpu,
            crate::Device::Cuda => DeviceRequest::Cuda,
            crate::Device::Auto => DeviceRequest::Auto,
        }
    }
}

impl DeviceRequest {
    /// The request in [`DEVICE_ENV`], else the experiment's `train.device`.
    pub fn from_env_or(experiment: crate::Device) -> Result<Self, UnknownDevice> {
        Self::from_override_or(device_env_override().as_deref(), experiment)
    }

    /// `device_override` (a value of [`DEVICE_ENV`]) when given, else the
    /// experiment's `train.device`.
    pub fn from_override_or(
        device_override: Option<&str>,
        experiment: crate::Device,
    ) -> Result<Self, UnknownDevice> {
        match device_override {
            Some(v) => v.parse(),
            None => Ok(experiment.into()),
        }
    }
}

/// The value of [`DEVICE_ENV`], trimmed, when it is set and not blank
/// (blank counts as unset).
pub fn device_env_override() -> Option<String> {
    std::env::var(DEVICE_ENV)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The metric keys of the trainer's per-epoch log line, in order, after
/// `epoch` and `split` (SageMaker reads metrics from the job's log).
pub const LOG_KEYS: [&str; 8] = [
    "loss",
    "iou",
    "precision",
    "recall",
    "f1",
    "mcc",
    "accuracy",
    "seconds",
];

/// `(name, regex)` pairs for SageMaker `MetricDefinitions`, e.g.
/// `("val:iou", "split=val .*iou=([0-9.eE+-]+)")`, for every split and key of
/// the log line.
pub fn metric_definitions() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for split in ["train", "val"] {
        for key in LOG_KEYS {
            v.push((
                format!("{split}:{key}"),
                format!("split={split} .*{key}=([0-9.eE+-]+)"),
            ));
        }
    }
    v
}

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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceConfig {
    pub current_host: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface_name: Option<String>,
}

impl ResourceConfig {
    /// One host, as SageMaker lays it out for an instance count of 1 (what
    /// local and docker runs get).
    pub fn single_host() -> Self {
        ResourceConfig {
            current_host: "algo-1".into(),
            hosts: vec!["algo-1".into()],
            network_interface_name: Some("eth0".into()),
        }
    }
}

/// `inputdataconfig.json`: how each channel is delivered, by channel name.
pub type InputDataConfig = BTreeMap<String, ChannelConfig>;

/// One channel's delivery (SageMaker's field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ChannelConfig {
    pub training_input_mode: String,
    #[serde(rename = "S3DistributionType")]
    pub s3_distribution_type: String,
    pub record_wrapper_type: String,
}

/// The channels of every job: [`CONFIG_CHANNEL`], copied whole to each host.
pub fn input_data_config() -> InputDataConfig {
    BTreeMap::from([(
        CONFIG_CHANNEL.to_string(),
        ChannelConfig {
            training_input_mode: "File".into(),
            s3_distribution_type: "FullyReplicated".into(),
            record_wrapper_type: "None".into(),
        },
    )])
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
    pub fn hyperparameters_file(&self) -> PathBuf {
        self.config_dir().join("hyperparameters.json")
    }
    pub fn resource_config_file(&self) -> PathBuf {
        self.config_dir().join("resourceconfig.json")
    }
    pub fn input_data_config_file(&self) -> PathBuf {
        self.config_dir().join("inputdataconfig.json")
    }
    /// The [`CONFIG_CHANNEL`]'s directory.
    pub fn config_channel(&self) -> PathBuf {
        self.channel(CONFIG_CHANNEL)
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
    /// `output/exit-code`: the code `sca-train train` exits with, written
    /// just before it exits, so that a launcher gone when it ended (killed,
    /// its terminal closed) still learns how it ended. Not SageMaker's: it
    /// reads the process's status itself.
    pub fn exit_code_file(&self) -> PathBuf {
        self.output_dir().join("exit-code")
    }

    /// Write [`OptMl::exit_code_file`]; best effort, like the failure file.
    pub fn write_exit_code(&self, code: u8) {
        let _ = write_whole(&self.exit_code_file(), format!("{code}\n").as_bytes());
    }

    /// The code in [`OptMl::exit_code_file`], if the trainer wrote one.
    pub fn read_exit_code(&self) -> Option<i64> {
        std::fs::read_to_string(self.exit_code_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Remove an [`OptMl::exit_code_file`] of an earlier process in this
    /// tree, before training starts.
    pub fn clear_exit_code(&self) {
        let _ = std::fs::remove_file(self.exit_code_file());
    }

    /// Remove an [`OptMl::failure_file`] of an earlier process in this
    /// tree, before training starts: else a run that ends without writing
    /// one (a stop, a kill) passes for failing with the earlier run's reason.
    pub fn clear_failure(&self) {
        let _ = std::fs::remove_file(self.failure_file());
    }

    /// The one `*.toml` in the `config` channel.
    pub fn experiment_file(&self) -> Result<PathBuf, ContractError> {
        let dir = self.config_channel();
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
        let path = self.config_channel().join(DataManifest::FILE_NAME);
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ContractError::Io { path, source }),
            Ok(bytes) => DataManifest::from_slice(&bytes)
                .map(Some)
                .map_err(|source| ContractError::Json { path, source }),
        }
    }

    /// `hyperparameters.json`; none set when absent.
    pub fn hyperparameters(&self) -> Result<Hyperparameters, ContractError> {
        let map: BTreeMap<String, String> = read_json_or_default(&self.hyperparameters_file())?;
        Hyperparameters::from_map(map)
    }

    /// `resourceconfig.json`; a single local host when absent.
    pub fn resource_config(&self) -> Result<ResourceConfig, ContractError> {
        let mut rc: ResourceConfig = read_json_or_default(&self.resource_config_file())?;
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
        // SageMaker reads the first 1024 bytes into FailureReason; keep the
        // start, which names the cause, and cut on a character boundary.
        let end = (0..=line.len().min(1000))
            .rev()
            .find(|&i| line.is_char_boundary(i))
            .unwrap_or(0);
        let line = &line[..end];
        let _ = write_whole(&self.failure_file(), format!("{line}\n").as_bytes());
    }
}

/// Write `bytes` to `path` (its directory created) through a temporary file
/// and a rename: a reader (the launcher's `status`), or a kill mid-write,
/// sees the old file or the new one, never an empty or half one. The
/// temporary name is unique within the process too: a panicking thread's
/// hook and the main thread may write the same file.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(
        ".{name}.tmp{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
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
        assert_eq!(ml.hyperparameters().unwrap(), Hyperparameters::default());
        std::fs::create_dir_all(ml.config_dir()).unwrap();
        std::fs::write(
            ml.config_dir().join("hyperparameters.json"),
            r#"{"experiment_sha256": "ab"}"#,
        )
        .unwrap();
        assert_eq!(
            ml.hyperparameters().unwrap().experiment_sha256.as_deref(),
            Some("ab")
        );
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
        let hyper = Hyperparameters {
            pins: ours.clone(),
            ..Default::default()
        }
        .to_map();
        assert_eq!(hyper.len(), 4);
        assert_eq!(Hyperparameters::from_map(hyper.clone()).unwrap().pins, ours);
        // The trainer accepts what the launcher passes.
        let (_d, ml) = tree();
        std::fs::create_dir_all(ml.config_dir()).unwrap();
        std::fs::write(
            ml.config_dir().join("hyperparameters.json"),
            serde_json::to_vec(&hyper).unwrap(),
        )
        .unwrap();
        assert_eq!(ml.hyperparameters().unwrap().pins, ours);

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
    fn known_hyperparameters_are_exactly_the_typed_ones() {
        let all = Hyperparameters {
            experiment_sha256: Some("e".into()),
            data_base_dir: Some("/d".into()),
            init_checkpoint: Some("/m".into()),
            pins: JobPins {
                job_name: Some("j".into()),
                commit: Some("c".into()),
                image_digest: Some("sha256:i".into()),
                data_manifest_sha256: Some("m".into()),
            },
        };
        let map = all.to_map();
        let mut known: Vec<&str> = KNOWN_HYPERPARAMETERS.iter().map(|(k, _)| *k).collect();
        known.sort_unstable();
        assert_eq!(map.keys().map(String::as_str).collect::<Vec<_>>(), known);
        assert_eq!(Hyperparameters::from_map(map).unwrap(), all);
    }

    #[test]
    fn host_layout_files_round_trip() {
        let rc = ResourceConfig::single_host();
        let json = serde_json::to_value(&rc).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"})
        );
        assert_eq!(
            serde_json::to_value(input_data_config()).unwrap(),
            serde_json::json!({"config": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}})
        );
        for name in model_files::ALL {
            assert!(model_files::is_trainer_file(name));
        }
        assert!(model_files::is_trainer_file(&model_files::overlay(
            12, 3, 4
        )));
        for not in [
            "overlay-1-2.png",
            "overlay-a-1-2.png",
            "model.bin",
            "../metrics.json",
        ] {
            assert!(!model_files::is_trainer_file(not), "{not}");
        }
    }

    #[test]
    fn device_requests_parse_and_fall_back_to_the_experiment() {
        assert_eq!("GPU".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cuda);
        assert_eq!(
            DeviceRequest::from_override_or(None, crate::Device::Auto).unwrap(),
            DeviceRequest::Auto
        );
        let err = DeviceRequest::from_override_or(Some("tpu"), crate::Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("`tpu`") && err.to_string().contains(DEVICE_ENV));
    }

    #[test]
    fn failure_is_one_line() {
        let (_d, ml) = tree();
        ml.write_failure("no tiles\n  matched the regex\n");
        assert_eq!(
            std::fs::read_to_string(ml.failure_file()).unwrap(),
            "no tiles; matched the regex\n"
        );
        // At most 1000 bytes, cut between characters: SageMaker reads 1024.
        ml.write_failure(&"é".repeat(2000));
        let text = std::fs::read_to_string(ml.failure_file()).unwrap();
        assert_eq!(text, format!("{}\n", "é".repeat(500)));
    }

    /// A reused tree's failure file is an earlier run's: cleared at start,
    /// so a run that ends without one (stopped, killed) is not given its
    /// reason by the launcher.
    #[test]
    fn the_failure_file_is_cleared() {
        let (_d, ml) = tree();
        ml.clear_failure();
        ml.write_failure("an earlier run's reason");
        ml.clear_failure();
        assert!(!ml.failure_file().exists());
    }

    /// The failure file and exit code are replaced whole: a reader that
    /// opened the old file (the launcher's `status`) reads all of it, never
    /// the truncated or half-written new one, and no temporary is left.
    #[test]
    fn the_failure_and_exit_code_are_replaced_whole() {
        use std::io::Read;
        let (_d, ml) = tree();
        ml.write_failure("first reason");
        ml.write_exit_code(143);
        let mut failure = std::fs::File::open(ml.failure_file()).unwrap();
        let mut code = std::fs::File::open(ml.exit_code_file()).unwrap();
        ml.write_failure("a second, longer reason");
        ml.write_exit_code(1);
        let read = |f: &mut std::fs::File| {
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            s
        };
        assert_eq!(read(&mut failure), "first reason\n");
        assert_eq!(read(&mut code), "143\n");
        assert_eq!(
            std::fs::read_to_string(ml.failure_file()).unwrap(),
            "a second, longer reason\n"
        );
        assert_eq!(ml.read_exit_code(), Some(1));
        let names: Vec<_> = std::fs::read_dir(ml.output_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// `partial.json` is written for every model but the finished one,
    /// and says whether the metrics describe the weights.
    #[test]
    fn a_partial_model_says_whether_the_metrics_describe_it() {
        assert_eq!(PartialModel::new(3, 3, 0, Some(3)), None);
        let note = |t, s, m| PartialModel::new(3, t, s, m).unwrap().note;
        assert_eq!(
            note(2, 0, Some(2)),
            "saved when its job stopped: the weights are those after epoch 2 of 3; \
             epoch 2 is the last in metrics.json and metrics.csv"
        );
        assert_eq!(
            note(0, 4, None),
            "saved when its job stopped: the weights are those after step 4 of epoch 1 of 3; \
             metrics.json and metrics.csv have no epoch"
        );
        assert_eq!(
            note(0, 0, None),
            "saved when its job stopped: the weights are untrained (stopped before its \
             first step); metrics.json and metrics.csv have no epoch"
        );
        let json = serde_json::to_value(PartialModel::new(3, 1, 5, Some(1)).unwrap()).unwrap();
        assert_eq!(json["steps_trained"], 5);
        assert_eq!(json["metrics_epoch"], 1);
        assert!(model_files::is_trainer_file(model_files::PARTIAL));
    }

    #[test]
    fn the_exit_code_is_read_back_and_cleared() {
        let (_d, ml) = tree();
        assert_eq!(ml.read_exit_code(), None);
        ml.write_exit_code(143);
        assert_eq!(ml.read_exit_code(), Some(143));
        ml.clear_exit_code();
        assert_eq!(ml.read_exit_code(), None);
        // Half a write, or anything else: no code, not a wrong one.
        std::fs::write(ml.exit_code_file(), "1x").unwrap();
        assert_eq!(ml.read_exit_code(), None);
    }
}
