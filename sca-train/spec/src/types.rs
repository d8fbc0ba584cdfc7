//! The experiment file's Rust types: the single definition from which the
//! JSON schema is generated and into which both the launcher and the trainer
//! deserialize.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One training experiment: what to train on, how, and where to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "sca experiment")]
pub struct Experiment {
    pub experiment: Meta,
    pub dataset: Dataset,
    /// Input channels, concatenated in order; their band counts add up to the model's input channels.
    #[schemars(length(min = 1))]
    pub channels: Vec<Channel>,
    /// Segmentation classes. The model predicts one logit per pixel, so exactly one class (the foreground) is supported.
    #[schemars(length(min = 1, max = 1))]
    pub classes: Vec<Class>,
    #[serde(default)]
    pub model: Model,
    #[serde(default)]
    pub train: Train,
    /// SageMaker job settings; unset keys fall back to `[workspace.metadata.sca]` in the root Cargo.toml.
    #[serde(default)]
    pub job: Job,
    /// A search: this file becomes one child experiment per point (`cargo xtask experiment sweep`).
    // `with`: the table itself, not `anyOf [table, null]`, so that errors
    // inside it are located at their key (TOML has no null anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Sweep")]
    pub sweep: Option<Sweep>,
}

/// Identity of the experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// Experiment name; the SageMaker job name is `<name>-<short commit>-<UTC time>`, so at most 39 characters of letters, digits and inner hyphens.
    #[schemars(
        length(min = 1, max = 39),
        regex(pattern = r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
    )]
    pub name: String,
    /// Free text for reviewers: what this experiment tests and why.
    #[serde(default)]
    pub description: String,
    /// Seed for the split, weight initialisation, shuffling and augmentation: the same seed gives the same run.
    #[serde(default = "default_seed")]
    #[schemars(range(min = 0))]
    pub seed: u64,
}

fn default_seed() -> u64 {
    0
}

/// Where the tiles are and how they are split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// Root of the imagery tiles: `s3://bucket/prefix` or a local directory (relative to this file). Tiles live at `<root>/<tile-dir>/<z>/<x>/<y>.tif`.
    #[schemars(length(min = 1))]
    pub imagery: String,
    /// Root of the mask tiles (1 band, 0/1): `s3://bucket/prefix` or a local directory (relative to this file).
    #[schemars(length(min = 1))]
    pub masks: String,
    /// Regex that selects imagery tile directories directly under `imagery` (the original's `imagery_directory_regex`).
    #[schemars(length(min = 1))]
    pub imagery_regex: String,
    /// Regex that selects mask tile directories directly under `masks` (the original's `mask_directory_regex`).
    #[schemars(length(min = 1))]
    pub mask_regex: String,
    /// Slippy-map zoom level of the tiles.
    #[serde(default = "default_zoom")]
    #[schemars(range(min = 0, max = 24))]
    pub zoom: u8,
    /// Tile edge in pixels; a multiple of 32.
    #[serde(default = "default_tile_size")]
    #[schemars(range(min = 32, max = 4096), extend("multipleOf" = 32))]
    pub tile_size: u32,
    /// Each tile's (or spatial block's) chance of training; the rest validate. A tile's side depends only on the seed, this fraction and the tile, so adding or removing tiles never moves another across.
    #[serde(default = "default_train_fraction")]
    #[schemars(range(min = 0.05, max = 0.95))]
    pub train_fraction: f64,
    /// How tiles are divided between training and validation.
    #[serde(default)]
    pub split: Split,
    /// Zoom of the parent tiles that form one block under `split = "spatial"`; neighbours within a block never straddle the split.
    #[serde(default = "default_block_zoom")]
    #[schemars(range(min = 0, max = 24))]
    pub block_zoom: u8,
    /// Fraction of unreadable tiles tolerated (each is reported and skipped) before training fails.
    #[serde(default = "default_max_bad_fraction")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_bad_fraction: f64,
    /// Generate this local dataset with `sca-train synth` when it does not exist yet (quickstart and tests).
    // `with`: the table itself, not `anyOf [table, null]` (as for `sweep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Synthetic")]
    pub synthetic: Option<Synthetic>,
}

fn default_zoom() -> u8 {
    15
}
fn default_tile_size() -> u32 {
    512
}
fn default_train_fraction() -> f64 {
    0.7
}
fn default_block_zoom() -> u8 {
    12
}
fn default_max_bad_fraction() -> f64 {
    0.01
}

/// Train/validation split strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Per tile, seeded. Neighbouring tiles may land on both sides (the original's leak).
    Random,
    /// Per block of tiles sharing a parent at `block_zoom`, seeded: no leak between neighbours.
    #[default]
    Spatial,
}

/// Parameters of a generated synthetic dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Synthetic {
    /// Number of tiles to generate.
    #[schemars(range(min = 1, max = 100000))]
    pub tiles: u32,
    /// Seed of the generator (independent of the experiment seed).
    #[serde(default)]
    pub seed: u64,
}

/// One group of input bands with its normalisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    /// 1-based band indices of the imagery tiles.
    #[schemars(length(min = 1, max = 64), inner(range(min = 1, max = 64)))]
    pub bands: Vec<u16>,
    /// Per-band mean, in reflectance units after scaling to [0, 1]; same length as `bands`.
    #[schemars(length(min = 1, max = 64))]
    pub mean: Vec<f64>,
    /// Per-band standard deviation (> 0); same length as `bands`.
    #[schemars(length(min = 1, max = 64), inner(range(min = 0.0)))]
    pub std: Vec<f64>,
}

/// A segmentation class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Class {
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z][a-z0-9_-]*$"))]
    pub name: String,
    /// The class's colour in `sca-train predict`'s PNG masks (on black): a
    /// CSS colour name or `#rrggbb`.
    #[schemars(length(min = 1))]
    pub color: String,
}

/// The network and its loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Model {
    #[serde(default)]
    pub architecture: Architecture,
    /// Number of down-sampling steps of the U-Net; the tile size must be divisible by 2^depth.
    #[serde(default = "default_depth")]
    #[schemars(range(min = 1, max = 6))]
    pub depth: u8,
    /// Feature maps at the first level; each level down doubles it.
    #[serde(default = "default_width")]
    #[schemars(range(min = 2, max = 256))]
    pub base_width: u32,
    /// Batch normalisation after each convolution.
    #[serde(default = "default_true")]
    pub batch_norm: bool,
    /// Loss: one of `bce`, `lovasz`, `dice`, or a table of weights such as `{ bce = 0.5, dice = 0.5 }`.
    #[serde(default)]
    pub loss: Loss,
    /// Warm start: `s3://bucket/key`, a local path (relative to this file) to a `model.safetensors` or `model.tar.gz`, or `experiment:<name>` for the final model of that experiment's newest completed run on the same kind of backend (its newest completed SageMaker job for `--backend sagemaker`, its newest local or docker run otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+|experiment:[a-zA-Z0-9](-*[a-zA-Z0-9])*|[^:]+)$"
    ))]
    pub init_checkpoint: Option<String>,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            architecture: Architecture::default(),
            depth: default_depth(),
            base_width: default_width(),
            batch_norm: true,
            loss: Loss::default(),
            init_checkpoint: None,
        }
    }
}

fn default_depth() -> u8 {
    4
}
fn default_width() -> u32 {
    32
}
fn default_true() -> bool {
    true
}

/// Network architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// U-Net: two 3x3 convolutions per level, 2x2 max-pool down, 2x2 transposed convolution up, skip connections.
    #[default]
    Unet,
}

/// A single loss or a weighted sum of losses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Loss {
    Single(LossKind),
    Weighted(LossWeights),
}

impl Default for Loss {
    fn default() -> Self {
        Loss::Single(LossKind::Bce)
    }
}

impl Loss {
    /// The loss as `(kind, weight)` terms with non-zero weight.
    pub fn terms(&self) -> Vec<(LossKind, f64)> {
        match self {
            Loss::Single(k) => vec![(*k, 1.0)],
            Loss::Weighted(w) => [
                (LossKind::Bce, w.bce),
                (LossKind::Lovasz, w.lovasz),
                (LossKind::Dice, w.dice),
            ]
            .into_iter()
            .filter_map(|(k, w)| w.filter(|w| *w > 0.0).map(|w| (k, w)))
            .collect(),
        }
    }
}

/// A loss function.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Binary cross-entropy on logits.
    Bce,
    /// Binary Lovász hinge (optimises IoU directly).
    Lovasz,
    /// Soft Dice loss.
    Dice,
}

/// Weights of a summed loss; at least one must be positive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1))]
pub struct LossWeights {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub bce: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub lovasz: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub dice: Option<f64>,
}

/// Optimisation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Train {
    #[serde(default = "default_epochs")]
    #[schemars(range(min = 1, max = 10000))]
    pub epochs: u32,
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1024))]
    pub batch_size: u32,
    /// Adam learning rate.
    #[serde(default = "default_lr")]
    #[schemars(range(min = 0.0, max = 1.0), extend("exclusiveMinimum" = 0.0))]
    pub learning_rate: f64,
    /// Decoupled (AdamW-style) weight decay.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub weight_decay: f64,
    /// Limit the steps of each epoch (all batches when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // The type's own bound, so the schema refuses what would not fit.
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub steps_per_epoch: Option<u32>,
    /// Write a checkpoint every this many epochs (and always on SIGTERM and after the last epoch).
    #[serde(default = "default_one")]
    // The type's own bound, so the schema refuses what would not fit.
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub checkpoint_every: u32,
    #[serde(default)]
    pub augmentation: Augmentation,
    /// What `sca-train train` computes on (the `SCA_DEVICE` environment variable overrides it).
    #[serde(default)]
    pub device: Device,
    /// The convolutions' number format: `fp32`, or `bf16` (needs `device = "cuda"`).
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
}

/// The number format of the convolutions, where nearly all of a step's arithmetic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats throughout (no TF32).
    #[default]
    Fp32,
    /// Each convolution's operands rounded to bfloat16 and multiplied on the GPU's tensor
    /// cores, accumulating in fp32 (like PyTorch's autocast); weights, optimiser state,
    /// batch norm and the loss stay fp32. bf16 keeps fp32's exponent range, so the loss
    /// needs no scaling. GPU only (`device = "cuda"`).
    Bf16,
}

impl Precision {
    /// The default, which experiment files need not spell out.
    pub fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }
}

/// The device a training run computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU, with sca-train's own kernels.
    #[default]
    Cpu,
    /// The GPU (an image built with the `cuda` feature on a GPU instance); an error without
    /// one, or with a GPU older than its kernels can be built for (compute capability 8.0:
    /// not ml.p2, ml.p3, ml.g4dn).
    Cuda,
    /// The GPU when the image has CUDA and the instance a GPU that runs its kernels, else the CPU.
    Auto,
}

impl Default for Train {
    fn default() -> Self {
        Train {
            epochs: default_epochs(),
            batch_size: default_batch_size(),
            learning_rate: default_lr(),
            weight_decay: 0.0,
            steps_per_epoch: None,
            checkpoint_every: 1,
            augmentation: Augmentation::default(),
            device: Device::default(),
            precision: Precision::default(),
        }
    }
}

fn default_epochs() -> u32 {
    10
}
fn default_batch_size() -> u32 {
    8
}
fn default_lr() -> f64 {
    1e-3
}
fn default_one() -> u32 {
    1
}

/// Training-split augmentation, applied per tile with these probabilities (seeded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Augmentation {
    /// Probability of a horizontal and, independently, a vertical flip.
    #[serde(default = "default_half")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub flip: f64,
    /// Probability of a random 90/180/270-degree rotation.
    #[serde(default = "default_half")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub rotate: f64,
}

impl Default for Augmentation {
    fn default() -> Self {
        Augmentation {
            flip: 0.5,
            rotate: 0.5,
        }
    }
}

fn default_half() -> f64 {
    0.5
}

/// SageMaker training-job settings. Unset keys fall back to `[workspace.metadata.sca]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// SageMaker training instance type. The default, `ml.c5.4xlarge` (16 vCPUs), suits the default `train.device = "cpu"`; `device = "cuda"` needs a GPU type such as `ml.g5.xlarge`.
    #[serde(default = "default_instance_type")]
    #[schemars(regex(pattern = r"^ml\.[a-z0-9-]+\.[a-z0-9]+$"))]
    pub instance_type: String,
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 1))]
    pub instance_count: u32,
    /// EBS volume attached to each instance, in GB.
    #[serde(default = "default_volume")]
    #[schemars(range(min = 1, max = 16384))]
    pub volume_gb: u32,
    /// Longest the job may run, as a duration such as `7h` or `90m` (SageMaker's limit is 28 days).
    #[serde(default = "default_runtime")]
    #[schemars(regex(pattern = r"^\s*[0-9]+\s*[a-zA-Z]+(\s*[0-9]+\s*[a-zA-Z]+)*\s*$"))]
    pub max_runtime: String,
    /// Where SageMaker writes `<job>/output/model.tar.gz`: `s3://bucket[/prefix]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"))]
    pub output: Option<String>,
    /// IAM role SageMaker assumes, `arn:aws:iam::<account>:role/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$"))]
    pub role_arn: Option<String>,
    /// Managed spot training; requires `checkpoint_s3` so a reclaimed instance resumes.
    // `with`: the table itself, not `anyOf [table, null]` (as for `sweep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Spot")]
    pub spot: Option<Spot>,
    /// S3 prefix for checkpoints: each job keeps its own under
    /// `<checkpoint_s3>/<job>/`, which SageMaker syncs with `/opt/ml/checkpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"))]
    pub checkpoint_s3: Option<String>,
    /// AWS region (overrides the workspace default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$"))]
    pub region: Option<String>,
    /// Bucket for the uploaded experiment and data manifest (overrides the workspace default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"))]
    pub config_bucket: Option<String>,
    /// ECR repository of the training image (overrides the workspace default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]+([._/-][a-z0-9]+)*$"))]
    pub ecr_repository: Option<String>,
    /// Extra tags on the training job (the launcher adds commit, image digest and experiment hash).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 40))]
    pub tags: BTreeMap<String, String>,
    /// Refuse the launch when its worst-case cost (max_runtime x on-demand price x instance count) is above this many US dollars; for a sweep, the sum over its points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    pub max_cost_usd: Option<f64>,
}

impl Default for Job {
    fn default() -> Self {
        Job {
            instance_type: default_instance_type(),
            instance_count: 1,
            volume_gb: default_volume(),
            max_runtime: default_runtime(),
            output: None,
            role_arn: None,
            spot: None,
            checkpoint_s3: None,
            region: None,
            config_bucket: None,
            ecr_repository: None,
            tags: BTreeMap::new(),
            max_cost_usd: None,
        }
    }
}

/// A CPU type, like the default device: a GPU instance would be paid for and
/// left idle (see the test in `instance_types.rs`).
fn default_instance_type() -> String {
    "ml.c5.4xlarge".into()
}
fn default_volume() -> u32 {
    50
}
fn default_runtime() -> String {
    "7h".into()
}

/// Managed spot settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spot {
    /// Longest to wait for spot capacity plus run time, e.g. `10h`; at least `max_runtime`.
    #[schemars(regex(pattern = r"^\s*[0-9]+\s*[a-zA-Z]+(\s*[0-9]+\s*[a-zA-Z]+)*\s*$"))]
    pub max_wait: String,
}

/// `[sweep]`: the points of a search, each a child experiment of its own
/// (this file with the point's values set and `[sweep]` removed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// Key path (`"train.learning_rate"`) -> the values to try, in order. The points are the cartesian product of the lists, the first key varying slowest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("additionalProperties" = { "type": "array", "minItems": 1 }))]
    pub grid: BTreeMap<String, Vec<serde_json::Value>>,
    /// Key path -> distribution, drawn `samples` times (for each grid point when there is a grid), seeded by `experiment.seed`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub random: BTreeMap<String, Distribution>,
    /// Number of random draws; required with `random`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub samples: Option<u32>,
    /// Most points running at once (the launcher's `--max-parallel` overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // The type's own bound, so the schema refuses what would not fit.
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub max_parallel: Option<u32>,
    /// The final metric that ranks the points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Objective")]
    pub objective: Option<Objective>,
}

/// Where a random sweep key draws its values from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// `[lo, hi]`: a float, uniform between the bounds (4 significant digits).
    Uniform([f64; 2]),
    /// `[lo, hi]` with `0 < lo`: a float whose logarithm is uniform (learning rates, weight decay; 4 significant digits).
    LogUniform([f64; 2]),
    /// `[lo, hi]`: an integer, uniform, both bounds included.
    IntUniform([i64; 2]),
    /// One of these values, each equally likely.
    Choice(#[schemars(length(min = 1))] Vec<serde_json::Value>),
}

/// The metric a sweep optimises and in which direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    pub metric: Metric,
    pub goal: Goal,
}

/// A metric of the trainer's `metrics.json`, `<split>_<key>`: that split's
/// record of the last epoch (the epoch the final model comes from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ValLoss,
    ValIou,
    ValPrecision,
    ValRecall,
    ValF1,
    ValMcc,
    ValAccuracy,
    TrainLoss,
    TrainIou,
    TrainPrecision,
    TrainRecall,
    TrainF1,
    TrainMcc,
    TrainAccuracy,
}

impl Metric {
    /// `(split, key)` of the metric in `metrics.json` records: `("val", "iou")`.
    pub fn split_and_key(self) -> (&'static str, &'static str) {
        use Metric::*;
        match self {
            ValLoss => ("val", "loss"),
            ValIou => ("val", "iou"),
            ValPrecision => ("val", "precision"),
            ValRecall => ("val", "recall"),
            ValF1 => ("val", "f1"),
            ValMcc => ("val", "mcc"),
            ValAccuracy => ("val", "accuracy"),
            TrainLoss => ("train", "loss"),
            TrainIou => ("train", "iou"),
            TrainPrecision => ("train", "precision"),
            TrainRecall => ("train", "recall"),
            TrainF1 => ("train", "f1"),
            TrainMcc => ("train", "mcc"),
            TrainAccuracy => ("train", "accuracy"),
        }
    }
}

/// Whether a larger or a smaller objective is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    Max,
    Min,
}

impl Goal {
    /// Whether `a` is better than `b` under this goal: a number beats NaN
    /// (a diverged run), NaN beats nothing.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            _ if a.is_nan() => false,
            _ if b.is_nan() => true,
            Goal::Max => a > b,
            Goal::Min => a < b,
        }
    }
}

/// Parse a human duration (`7h`, `90m`, `1h 30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| e.to_string())
}

impl Experiment {
    /// Number of model input channels (all bands of all channel groups).
    pub fn input_channels(&self) -> usize {
        self.channels.iter().map(|c| c.bands.len()).sum()
    }
}
