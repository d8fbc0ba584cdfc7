//! `cargo xtask experiment diff A B`: why two runs differ, from their run
//! records and the copies of their `config` channels (with `--remote`,
//! copied from the config bucket for jobs recorded elsewhere): the resolved
//! experiment key by key, the code (commits, `git diff --stat`, dirty-tree
//! hashes), the image digest, the data manifests tile by tile, the warm
//! start, and the results (final metrics, and the first validation epoch
//! where the curves part). Each part is present only where the runs differ;
//! one that cannot be compared here (a record older than data manifests, a
//! config copy gone, a commit this repository lacks) is listed in
//! `unknown` with why, and the other parts are compared all the same.
//!
//! [`RunDiff`] is the `--output json` document; its field names are kept
//! stable (new fields may be added, none renamed), and `version` changes if
//! that ever has to break.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use sca_spec::{DataManifest, ManifestObject};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::experiment::curves::{self, Divergence};
use crate::experiment::plan::RESOLVED_FILE;
use crate::experiment::record::{Backend, RunRecord, Status};
use crate::{flags, git, workspace};

/// The version of the [`RunDiff`] document.
pub const DIFF_VERSION: u32 = 1;

/// How many names of added, removed or changed tiles the text lists.
const FIRST_FEW: usize = 5;

/// Everything that differs between two runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDiff {
    pub version: u32,
    pub a: Side,
    pub b: Side,
    pub experiment: Option<ExperimentDiff>,
    pub code: Option<CodeDiff>,
    pub image: Option<ImageDiff>,
    pub data: Option<DataDiff>,
    pub warm_start: Option<WarmStartDiff>,
    /// The device each run's trainer was told to use over the experiment's
    /// `train.device` (`SCA_DEVICE`), where they differ.
    #[serde(default)]
    pub device: Option<DeviceDiff>,
    pub results: Option<ResultsDiff>,
    /// The parts that could not be compared, and why.
    #[serde(default)]
    pub unknown: Vec<Unknown>,
}

/// A part of the diff that could not be compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unknown {
    /// `experiment`, `code` (the `git diff --stat` of differing commits),
    /// `data` or `curves` (a `metrics.csv` that does not read).
    pub part: String,
    /// What is missing, and the fix.
    pub reason: String,
}

impl Unknown {
    fn new(part: &str, reason: impl std::fmt::Display) -> Self {
        Unknown {
            part: part.into(),
            reason: reason.to_string(),
        }
    }
}

/// Which run a side is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Side {
    pub job: String,
    pub experiment: String,
    pub backend: Backend,
    pub status: Status,
    pub started: String,
}

/// The experiment's keys that differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentDiff {
    /// `true`: the experiments as the trainer reads them (defaults filled in,
    /// `[job]` merged with the workspace defaults); `false`: one of the
    /// files no longer parses with this schema, so both are compared as written.
    pub resolved: bool,
    /// `true`: both resolved as their launches recorded them
    /// ([`RESOLVED_FILE`]: the defaults of the code each pinned); `false`:
    /// resolved by this checkout's schema (a job launched before the file
    /// was kept), so a default changed since is not seen.
    #[serde(default)]
    pub as_launched: bool,
    pub changes: Vec<KeyChange>,
}

/// One key whose value differs; `old` (run A) or `new` (run B) is absent
/// where that run does not have the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyChange {
    /// Dotted TOML path, array elements by index: `train.learning_rate`, `channels[0].mean`.
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeDiff {
    pub a_commit: String,
    pub b_commit: String,
    pub same_commit: bool,
    /// `git diff --stat A B`, when the commits differ.
    pub stat: Option<String>,
    pub a_dirty: bool,
    pub b_dirty: bool,
    pub a_diff_sha256: Option<String>,
    pub b_diff_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageDiff {
    pub a: Option<String>,
    pub b: Option<String>,
    /// The runs come from different commits or trees, which makes different
    /// images expected; `false`: the same source gave two images.
    pub explained_by_code: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataDiff {
    pub a_manifest_sha256: Option<String>,
    pub b_manifest_sha256: Option<String>,
    pub a_objects: usize,
    pub b_objects: usize,
    /// `imagery`, `masks`, `zoom` of the manifests, where they differ.
    pub settings: Vec<KeyChange>,
    /// Tile objects in B only, by uri.
    pub added: Vec<String>,
    /// Tile objects in A only.
    pub removed: Vec<String>,
    pub changed: Vec<ObjectChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectChange {
    pub uri: String,
    /// What differs: `size 10 → 12 bytes`, `sha256 ab… → cd…`, `ETag …`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmStartDiff {
    /// The concrete model each run started from (none: from scratch).
    pub a: Option<String>,
    pub b: Option<String>,
    /// The model as each data manifest pinned it (size, hash).
    pub a_pin: Option<ManifestObject>,
    pub b_pin: Option<ManifestObject>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDiff {
    /// `SCA_DEVICE` of each run (none: the experiment's `train.device`).
    pub a: Option<String>,
    pub b: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsDiff {
    /// The last validation epoch's metrics, side by side.
    pub metrics: Vec<MetricDelta>,
    /// The absolute tolerance the curves were compared with.
    pub tolerance: f64,
    /// Validation epochs both curves have.
    pub epochs_compared: usize,
    /// The first validation epoch (and metric) beyond the tolerance.
    pub divergence: Option<Divergence>,
    /// Jobs whose `metrics.csv` is not on this machine (`experiment fetch` brings it).
    pub curves_missing: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricDelta {
    pub name: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// `b - a`.
    pub delta: Option<f64>,
}

impl RunDiff {
    /// Whether nothing at all differs.
    pub fn is_empty(&self) -> bool {
        self.experiment.is_none()
            && self.code.is_none()
            && self.image.is_none()
            && self.data.is_none()
            && self.warm_start.is_none()
            && self.device.is_none()
            && self.results.is_none()
            && self.unknown.is_empty()
    }
}

impl flags::Diff {
    pub async fn run(self) -> Result<ExitCode> {
        if !self.tolerance.is_finite() || self.tolerance < 0.0 {
            bail!(
                "--tolerance {} is not a finite non-negative number: pass e.g. --tolerance 1e-4",
                self.tolerance
            );
        }
        let root = workspace::root();
        let (a, b) = if self.remote {
            self.load_remote(&root).await?
        } else {
            // `--remote` helps only a record that is not here: one here
            // that does not read is read as it is with `--remote` too.
            let load = |job: &str, which: &str| {
                let here = RunRecord::check_name(job).is_ok()
                    && crate::experiment::record::record_path(&root, job).exists();
                RunRecord::load(&root, job).with_context(|| {
                    if here {
                        format!("run {which}")
                    } else {
                        format!("run {which} (a job launched from another machine: add --remote to read it from the config bucket)")
                    }
                })
            };
            (load(&self.a, "A")?, load(&self.b, "B")?)
        };
        let diff = compare(&root, &a, &b, self.tolerance)?;
        if self.output == flags::Output::Json {
            println!("{}", serde_json::to_string(&diff)?);
        } else {
            print!("{}", render(&diff));
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Runs A and B from the config bucket, with their curves.
    #[cfg(feature = "full")]
    async fn load_remote(&self, root: &Path) -> Result<(RunRecord, RunRecord)> {
        use crate::experiment::{lifecycle, sagemaker::remote::Remote};
        let remote = Remote::new(self.bucket.as_deref(), &self.aws.session()).await?;
        let a = remote.load(root, &self.a).await.context("run A")?;
        let b = remote.load(root, &self.b).await.context("run B")?;
        // Their curves, for where the validation curves part.
        lifecycle::fetch_missing(root, &[a.clone(), b.clone()], &self.aws).await;
        Ok((a, b))
    }

    #[cfg(not(feature = "full"))]
    async fn load_remote(&self, _: &Path) -> Result<(RunRecord, RunRecord)> {
        Err(crate::needs_full("--remote"))
    }
}

/// Compare run `a` with run `b` (both recorded in `root`'s runs directory).
/// A part whose files or commits are missing here is [`Unknown`], not an error.
pub fn compare(root: &Path, a: &RunRecord, b: &RunRecord, tolerance: f64) -> Result<RunDiff> {
    let mut unknown = Vec::new();
    // The same file and job settings can still have run with other
    // defaults: launches at commits whose schemas differ.
    // Both as their launches resolved them, or both by this checkout's
    // schema: one of each would show a default that changed between the
    // two resolutions as a change between the runs.
    let (la, lb) = match (launch_resolution(root, a), launch_resolution(root, b)) {
        (Some(x), Some(y)) => (Some(x), Some(y)),
        _ => (None, None),
    };
    let same_resolution = la == lb;
    let experiment = if a.pins.experiment_sha256 == b.pins.experiment_sha256
        && a.resolved_job == b.resolved_job
        && same_resolution
    {
        None
    } else {
        match (experiment_view(root, a, la), experiment_view(root, b, lb)) {
            (Ok((va, ra)), Ok((vb, rb))) => {
                let resolved = ra.is_some() && rb.is_some();
                let (changes, as_launched) = match (ra, rb) {
                    (Some((ra, la)), Some((rb, lb))) => (key_changes(&ra, &rb), la && lb),
                    // As written, with the job's settings as it ran
                    // (`--region`, the workspace's defaults) beside them.
                    _ => {
                        let mut changes = key_changes(&va, &vb);
                        let settings = |r: &RunRecord| serde_json::to_value(&r.resolved_job).ok();
                        walk(
                            "resolved_job".into(),
                            settings(a).as_ref(),
                            settings(b).as_ref(),
                            &mut changes,
                        );
                        (changes, false)
                    }
                };
                (!changes.is_empty()).then_some(ExperimentDiff {
                    resolved,
                    as_launched,
                    changes,
                })
            }
            (x, y) => {
                for e in [x.err(), y.err()].into_iter().flatten() {
                    unknown.push(Unknown::new("experiment", format!("{e:#}")));
                }
                None
            }
        }
    };

    let code = code_diff(root, a, b, &mut unknown);
    let image = (a.pins.image_digest() != b.pins.image_digest()).then(|| ImageDiff {
        a: a.pins.image.as_ref().map(|i| i.to_string()),
        b: b.pins.image.as_ref().map(|i| i.to_string()),
        explained_by_code: code.is_some(),
    });

    // Two records without a manifest are not "the same data": each is
    // unknown, as one without is beside one with.
    let manifests = if a.pins.data_manifest_sha256 == b.pins.data_manifest_sha256
        && a.pins.data_manifest_sha256.is_some()
    {
        None
    } else {
        match (manifest(root, a), manifest(root, b)) {
            (Ok(ma), Ok(mb)) => Some((ma, mb)),
            (x, y) => {
                for e in [x.err(), y.err()].into_iter().flatten() {
                    unknown.push(Unknown::new("data", format!("{e:#}")));
                }
                None
            }
        }
    };
    let (data, pins) = match manifests {
        None => (None, (None, None)),
        Some((ma, mb)) => {
            let d = manifest_diff(&ma, &mb);
            let changed = !(d.settings.is_empty()
                && d.added.is_empty()
                && d.removed.is_empty()
                && d.changed.is_empty());
            let data = changed.then(|| DataDiff {
                a_manifest_sha256: a.pins.data_manifest_sha256.clone(),
                b_manifest_sha256: b.pins.data_manifest_sha256.clone(),
                a_objects: ma.objects.len(),
                b_objects: mb.objects.len(),
                ..d
            });
            (data, (ma.init_checkpoint, mb.init_checkpoint))
        }
    };
    let warm_start =
        (a.pins.init_checkpoint != b.pins.init_checkpoint || pins.0 != pins.1).then(|| {
            WarmStartDiff {
                a: a.pins.init_checkpoint.clone(),
                b: b.pins.init_checkpoint.clone(),
                a_pin: pins.0,
                b_pin: pins.1,
            }
        });

    let device = (a.device_override != b.device_override).then(|| DeviceDiff {
        a: a.device_override.clone(),
        b: b.device_override.clone(),
    });

    let results = results_diff(root, a, b, tolerance, &mut unknown);
    Ok(RunDiff {
        version: DIFF_VERSION,
        a: side(a),
        b: side(b),
        experiment,
        code,
        image,
        data,
        warm_start,
        device,
        results,
        unknown,
    })
}

fn side(r: &RunRecord) -> Side {
    Side {
        job: r.job_name.clone(),
        experiment: r.experiment.clone(),
        backend: r.backend,
        status: r.status,
        started: r.started.clone(),
    }
}

/// A file of the job's `config` channel copy, or an error naming it and why
/// it may be missing.
fn config_file(root: &Path, r: &RunRecord, name: &str, what: &str) -> Result<(PathBuf, Vec<u8>)> {
    let path = r.config_dir(root).join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok((path, bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{what} of job `{}` is missing: {} does not exist. The record comes from another checkout or machine, or its run directory was cleaned; diff jobs this checkout launched (`cargo xtask experiment list`), or copy the job's run directory here",
            r.job_name,
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The experiment as the job's launch resolved it ([`RESOLVED_FILE`]),
/// where its config copy has one this schema reads (one of an older launch
/// that it cannot read counts as none).
fn launch_resolution(root: &Path, r: &RunRecord) -> Option<sca_spec::Experiment> {
    let bytes = std::fs::read(r.config_dir(root).join(RESOLVED_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The job's experiment as written (TOML values, comments dropped) and as
/// resolved: defaults filled in and the `[job]` keys it leaves unset taken
/// from the record's resolved job settings (the workspace defaults of its
/// commit). Resolved as its launch recorded it where the config copy has
/// [`RESOLVED_FILE`] (`launched`; the `bool`), else by this schema where it
/// still reads the file.
fn experiment_view(
    root: &Path,
    r: &RunRecord,
    launched: Option<sca_spec::Experiment>,
) -> Result<(Value, Option<(Value, bool)>)> {
    let name = Path::new(&r.experiment_file)
        .file_name()
        .with_context(|| {
            format!(
                "the record of `{}` names no experiment file ({:?})",
                r.job_name, r.experiment_file
            )
        })?
        .to_string_lossy()
        .into_owned();
    let (path, bytes) = config_file(root, r, &name, "the experiment file")?;
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    let written: toml::Table = toml::from_str(text)
        .with_context(|| format!("{} is not a TOML document", path.display()))?;
    let written = serde_json::to_value(written).context("TOML values convert to JSON")?;
    let resolved = match launched {
        Some(exp) => Some((resolved_view(&exp, &r.resolved_job), true)),
        None => sca_spec::validate::validate_for_training(&name, &bytes)
            .experiment
            .map(|exp| (resolved_view(&exp, &r.resolved_job), false)),
    };
    Ok((written, resolved))
}

/// `exp` as the job ran it: its `[job]` keys as the job's resolved
/// `settings` (defaults filled in, `--region` applied), and each setting in one spelling whatever
/// the file wrote: durations in seconds (`"7h"` and `"420m"` are one
/// runtime), the loss as its weighted terms (`"bce"` is `{ bce = 1.0 }`,
/// a zero weight is no term).
fn resolved_view(exp: &sca_spec::Experiment, settings: &sca_spec::ResolvedJob) -> Value {
    let mut v = serde_json::to_value(exp).expect("experiments serialize");
    let terms: serde_json::Map<String, Value> = exp
        .model
        .loss
        .terms()
        .into_iter()
        .map(|(kind, weight)| {
            let kind = serde_json::to_value(kind).expect("loss kinds serialize");
            (kind.as_str().unwrap_or_default().to_string(), weight.into())
        })
        .collect();
    if let Some(model) = v.get_mut("model").and_then(Value::as_object_mut) {
        model.insert("loss".into(), Value::Object(terms));
    }
    if let (Some(Value::Object(job)), Ok(Value::Object(settings))) =
        (v.get_mut("job"), serde_json::to_value(settings))
    {
        for (k, setting) in settings {
            match k.as_str() {
                // The experiment states these two as `max_runtime` and `spot`.
                "max_runtime_secs" => {
                    job.insert("max_runtime".into(), setting);
                }
                "max_wait_secs" => {
                    if let Some(Value::Object(spot)) = job.get_mut("spot") {
                        spot.insert("max_wait".into(), setting);
                    }
                }
                // What ran, over what the file wrote: `--region` moves a
                // job whatever its file says.
                _ => {
                    job.insert(k, setting);
                }
            }
        }
    }
    v
}

/// Every key whose value differs between `a` and `b`, in key order. Tables
/// are walked key by key and arrays of tables element by element; other
/// arrays are compared whole. A null counts as absent (TOML has none).
pub fn key_changes(a: &Value, b: &Value) -> Vec<KeyChange> {
    let mut out = Vec::new();
    walk(String::new(), Some(a), Some(b), &mut out);
    out
}

fn walk(path: String, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<KeyChange>) {
    let (a, b) = (a.filter(|v| !v.is_null()), b.filter(|v| !v.is_null()));
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                walk(join_key(&path, k), x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y)))
            if x.iter().chain(y).any(|v| v.is_object() || v.is_array()) =>
        {
            for i in 0..x.len().max(y.len()) {
                walk(format!("{path}[{i}]"), x.get(i), y.get(i), out);
            }
        }
        (x, y) if x == y => {}
        (x, y) => out.push(KeyChange {
            path,
            old: x.cloned(),
            new: y.cloned(),
        }),
    }
}

/// `path.key`, quoting keys that are not bare TOML keys.
fn join_key(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    let key = if bare {
        key.to_string()
    } else {
        serde_json::to_string(key).expect("strings serialize")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// The code part; where the commits differ and one is not in the
/// repository (or git fails), without its `git diff --stat`, which is
/// [`Unknown`].
fn code_diff(
    root: &Path,
    a: &RunRecord,
    b: &RunRecord,
    unknown: &mut Vec<Unknown>,
) -> Option<CodeDiff> {
    let same_commit = a.pins.commit == b.pins.commit;
    if same_commit && a.pins.dirty == b.pins.dirty && a.pins.diff_sha256 == b.pins.diff_sha256 {
        return None;
    }
    let stat = if same_commit {
        None
    } else {
        let stat = || -> Result<String> {
            for r in [a, b] {
                if !git::has_commit(root, &r.pins.commit)? {
                    bail!(
                        "commit {} of job `{}` is not in the repository at {}, so what changed between the commits is unknown: the record comes from another checkout; fetch the commit (`git fetch origin {}`) or run the diff in the checkout that launched it",
                        r.pins.commit,
                        r.job_name,
                        root.display(),
                        r.pins.commit
                    );
                }
            }
            git::diff_stat(root, &a.pins.commit, &b.pins.commit)
        };
        stat()
            .map_err(|e| unknown.push(Unknown::new("code", format!("{e:#}"))))
            .ok()
    };
    Some(CodeDiff {
        a_commit: a.pins.commit.clone(),
        b_commit: b.pins.commit.clone(),
        same_commit,
        stat,
        a_dirty: a.pins.dirty,
        b_dirty: b.pins.dirty,
        a_diff_sha256: a.pins.diff_sha256.clone(),
        b_diff_sha256: b.pins.diff_sha256.clone(),
    })
}

fn manifest(root: &Path, r: &RunRecord) -> Result<DataManifest> {
    if r.pins.data_manifest_sha256.is_none() {
        bail!(
            "the record of job `{}` pins no data manifest (it was recorded before launches pinned their data), so what data it trained on is unknown",
            r.job_name
        );
    }
    let (path, bytes) = config_file(root, r, DataManifest::FILE_NAME, "the data manifest")?;
    DataManifest::from_slice(&bytes)
        .with_context(|| format!("{} is not a data manifest", path.display()))
}

/// The tile objects added, removed and changed from `a` to `b` (the
/// warm-start model aside: [`WarmStartDiff`] has it), each list in uri
/// order; the counts are left at zero.
pub fn manifest_diff(a: &DataManifest, b: &DataManifest) -> DataDiff {
    let by_uri = |m: &DataManifest| -> BTreeMap<String, ManifestObject> {
        let mut map = BTreeMap::new();
        for o in &m.objects {
            map.entry(o.uri.clone()).or_insert_with(|| o.clone());
        }
        map
    };
    let (x, y) = (by_uri(a), by_uri(b));
    let mut settings = Vec::new();
    for (key, va, vb) in [
        (
            "imagery",
            Value::from(a.imagery.clone()),
            Value::from(b.imagery.clone()),
        ),
        (
            "masks",
            Value::from(a.masks.clone()),
            Value::from(b.masks.clone()),
        ),
        ("zoom", Value::from(a.zoom), Value::from(b.zoom)),
    ] {
        if va != vb {
            settings.push(KeyChange {
                path: key.into(),
                old: Some(va),
                new: Some(vb),
            });
        }
    }
    DataDiff {
        a_manifest_sha256: None,
        b_manifest_sha256: None,
        a_objects: 0,
        b_objects: 0,
        settings,
        added: y.keys().filter(|u| !x.contains_key(*u)).cloned().collect(),
        removed: x.keys().filter(|u| !y.contains_key(*u)).cloned().collect(),
        changed: x
            .iter()
            .filter_map(|(uri, oa)| {
                let reason = object_difference(oa, y.get(uri)?)?;
                Some(ObjectChange {
                    uri: uri.clone(),
                    reason,
                })
            })
            .collect(),
    }
}

/// How object `b` differs from `a`, the same object in another manifest.
/// ETags and hashes count only where both have one, ETags without quotes.
fn object_difference(a: &ManifestObject, b: &ManifestObject) -> Option<String> {
    let mut why = Vec::new();
    if a.size != b.size {
        why.push(format!("size {} → {} bytes", a.size, b.size));
    }
    if let (Some(x), Some(y)) = (&a.etag, &b.etag) {
        if x.trim_matches('"') != y.trim_matches('"') {
            why.push(format!("ETag {x} → {y}"));
        }
    }
    if let (Some(x), Some(y)) = (&a.sha256, &b.sha256) {
        if !x.eq_ignore_ascii_case(y) {
            why.push(format!("sha256 {} → {}", short(x), short(y)));
        }
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// A metric of a run's final metrics (`iou`, or SageMaker's `val:iou`).
pub fn final_metric(r: &RunRecord, name: &str) -> Option<f64> {
    let m = &r.final_metrics;
    m.get(name)
        .or_else(|| m.get(format!("val:{name}")))
        .and_then(Value::as_f64)
}

fn results_diff(
    root: &Path,
    a: &RunRecord,
    b: &RunRecord,
    tolerance: f64,
    unknown: &mut Vec<Unknown>,
) -> Option<ResultsDiff> {
    let metrics: Vec<MetricDelta> = curves::METRICS
        .iter()
        .map(|name| {
            let (x, y) = (final_metric(a, name), final_metric(b, name));
            MetricDelta {
                name: (*name).to_string(),
                a: x,
                b: y,
                delta: x.zip(y).map(|(x, y)| y - x),
            }
        })
        .filter(|m| m.a.is_some() || m.b.is_some())
        .collect();
    // A metrics.csv that does not read leaves the curves uncompared, not
    // the whole diff.
    // (Missing is not here; one here that does not read is said as such.)
    let mut load = |r: &RunRecord| match curves::load(root, r) {
        Ok(c) => (c, false),
        Err(e) => {
            unknown.push(Unknown::new("curves", format!("{e:#}")));
            (None, true)
        }
    };
    let ((ca, a_bad), (cb, b_bad)) = (load(a), load(b));
    let curves_missing: Vec<String> = [(a, &ca, a_bad), (b, &cb, b_bad)]
        .iter()
        .filter(|(_, c, bad)| c.is_none() && !bad)
        .map(|(r, _, _)| r.job_name.clone())
        .collect();
    let (divergence, epochs_compared) = match (&ca, &cb) {
        (Some(x), Some(y)) => (
            curves::first_divergence(x, y, tolerance),
            curves::common_val_epochs(x, y),
        ),
        _ => (None, 0),
    };
    // Results on one side only differ; a metric one trainer version
    // reports and another does not (`mcc`) is no difference by itself.
    let has = |side: fn(&MetricDelta) -> Option<f64>| metrics.iter().any(|m| side(m).is_some());
    let metrics_differ = has(|m| m.a) != has(|m| m.b)
        || metrics
            .iter()
            .any(|m| m.delta.is_some_and(|d| d.abs() > tolerance));
    let differ = metrics_differ || divergence.is_some();
    // Where nothing differs, what was not compared is said, so that "no
    // differences" never stands for results or curves nobody looked at.
    if !differ {
        if metrics.is_empty() && curves_missing.len() == 2 {
            unknown.push(Unknown::new(
                "results",
                format!(
                    "neither run has results here (A {}, B {}): a run records them when it ends; `cargo xtask experiment fetch JOB` brings a remote run's",
                    a.status, b.status
                ),
            ));
        } else {
            for job in &curves_missing {
                unknown.push(Unknown::new(
                    "curves",
                    format!("no metrics.csv of {job} here, so the validation curves were not compared: `cargo xtask experiment fetch {job}` brings it"),
                ));
            }
        }
    }
    differ.then_some(ResultsDiff {
        metrics,
        tolerance,
        epochs_compared,
        divergence,
        curves_missing,
    })
}

/// The first 12 characters of a hash or commit. Characters, not bytes:
/// a data manifest's hashes are not checked to be hex when it is read, and
/// a hand-edited one must not end the diff mid-character.
pub fn short(s: &str) -> &str {
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    s.char_indices().nth(12).map_or(s, |(end, _)| &s[..end])
}

fn json_text(v: &Option<Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(v) => v.to_string(),
    }
}

/// `v` to `places` decimals.
fn number(v: Option<f64>, places: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.places$}"))
}

/// Decimals enough to show a difference of `tolerance` (4 at the default
/// 1e-4; a `--tolerance 0` run shows 9): a difference the diff reports is
/// never printed as `+0.0000`.
fn places(tolerance: f64) -> usize {
    if tolerance > 0.0 {
        ((-tolerance.log10()).ceil().max(0.0) as usize).clamp(4, 12)
    } else {
        9
    }
}

/// The diff as text, one part per difference.
pub fn render(d: &RunDiff) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "A  {} ({}, {}, started {})",
        d.a.job, d.a.backend, d.a.status, d.a.started
    );
    let _ = writeln!(
        s,
        "B  {} ({}, {}, started {})",
        d.b.job, d.b.backend, d.b.status, d.b.started
    );
    if d.a.experiment != d.b.experiment {
        let _ = writeln!(
            s,
            "(different experiments: {} and {})",
            d.a.experiment, d.b.experiment
        );
    }
    if d.is_empty() {
        s.push_str(
            "\nno differences: the same experiment, code, image, data, warm start and results\n",
        );
        return s;
    }
    if let Some(e) = &d.experiment {
        let how = if e.as_launched {
            "resolved as launched"
        } else if e.resolved {
            "resolved by this checkout's schema"
        } else {
            "as written: one no longer parses with this schema"
        };
        let _ = writeln!(s, "\nexperiment ({how}): {} key(s) differ", e.changes.len());
        for c in &e.changes {
            let _ = writeln!(
                s,
                "  {}: {} → {}",
                c.path,
                json_text(&c.old),
                json_text(&c.new)
            );
        }
    }
    if let Some(c) = &d.code {
        s.push_str("\ncode:\n");
        if c.same_commit {
            let _ = writeln!(s, "  same commit {}", short(&c.a_commit));
        } else {
            let _ = writeln!(
                s,
                "  commit {} → {}",
                short(&c.a_commit),
                short(&c.b_commit)
            );
            if let Some(stat) = c.stat.as_deref().filter(|t| !t.is_empty()) {
                for line in stat.lines() {
                    let _ = writeln!(s, "  {line}");
                }
            }
        }
        if (c.a_dirty, &c.a_diff_sha256) != (c.b_dirty, &c.b_diff_sha256) {
            let tree = |dirty: bool, h: &Option<String>| match (dirty, h) {
                (false, _) => "clean".to_string(),
                (true, Some(h)) => format!("dirty (diff sha256 {})", short(h)),
                (true, None) => "dirty".to_string(),
            };
            let _ = writeln!(
                s,
                "  tree: {} → {}",
                tree(c.a_dirty, &c.a_diff_sha256),
                tree(c.b_dirty, &c.b_diff_sha256)
            );
        }
    }
    if let Some(i) = &d.image {
        let name = |i: &Option<String>| i.clone().unwrap_or_else(|| "(none: host process)".into());
        let _ = writeln!(s, "\nimage: different\n  {} → {}", name(&i.a), name(&i.b));
        s.push_str(if i.a.is_none() || i.b.is_none() {
            "  one ran as a host process (the local backend), the other in an image\n"
        } else if i.explained_by_code {
            "  the code differs too, which explains it\n"
        } else {
            "  the same code gave two images: rebuilt (builds are not bit-for-bit reproducible), or given with --image\n"
        });
    }
    if let Some(data) = &d.data {
        let _ = writeln!(
            s,
            "\ndata: {} added, {} removed, {} changed ({} → {} objects; manifest {} → {})",
            data.added.len(),
            data.removed.len(),
            data.changed.len(),
            data.a_objects,
            data.b_objects,
            data.a_manifest_sha256.as_deref().map_or("-", short),
            data.b_manifest_sha256.as_deref().map_or("-", short),
        );
        for c in &data.settings {
            let _ = writeln!(
                s,
                "  {}: {} → {}",
                c.path,
                json_text(&c.old),
                json_text(&c.new)
            );
        }
        let mut list = |label: &str, items: Vec<String>| {
            for item in items.iter().take(FIRST_FEW) {
                let _ = writeln!(s, "  {label} {item}");
            }
            if items.len() > FIRST_FEW {
                let _ = writeln!(s, "  … and {} more {label}", items.len() - FIRST_FEW);
            }
        };
        list("added  ", data.added.clone());
        list("removed", data.removed.clone());
        list(
            "changed",
            data.changed
                .iter()
                .map(|c| format!("{}: {}", c.uri, c.reason))
                .collect(),
        );
    }
    if let Some(w) = &d.warm_start {
        let model = |m: &Option<String>, pin: &Option<ManifestObject>| match (m, pin) {
            (None, _) => "none (from scratch)".to_string(),
            (Some(m), Some(p)) => format!(
                "{m} ({} bytes{})",
                p.size,
                p.sha256
                    .as_deref()
                    .or(p.etag.as_deref())
                    .map(|h| format!(", {}", short(h.trim_matches('"'))))
                    .unwrap_or_default()
            ),
            (Some(m), None) => m.clone(),
        };
        let _ = writeln!(
            s,
            "\nwarm start:\n  A {}\n  B {}",
            model(&w.a, &w.a_pin),
            model(&w.b, &w.b_pin)
        );
    }
    if let Some(dev) = &d.device {
        let device = |d: &Option<String>| match d {
            Some(d) => format!("SCA_DEVICE={d}"),
            None => "train.device (no SCA_DEVICE)".to_string(),
        };
        let _ = writeln!(
            s,
            "\ndevice:\n  A {}\n  B {}",
            device(&dev.a),
            device(&dev.b)
        );
    }
    if let Some(r) = &d.results {
        s.push_str("\nresults (final validation epoch):\n");
        let _ = writeln!(
            s,
            "  {:<10} {:>10} {:>10} {:>10}",
            "metric", "A", "B", "B - A"
        );
        let places = places(r.tolerance);
        for m in &r.metrics {
            // (Smaller than the places show: in exponent form, not +0.0…)
            let delta = m.delta.map_or("-".into(), |d| {
                if d != 0.0 && d.abs() < 10f64.powi(-(places as i32)) {
                    format!("{d:+.3e}")
                } else {
                    format!("{d:+.places$}")
                }
            });
            let _ = writeln!(
                s,
                "  {:<10} {:>10} {:>10} {:>10}",
                m.name,
                number(m.a, places),
                number(m.b, places),
                delta
            );
        }
        match &r.divergence {
            Some(v) => {
                let _ = writeln!(
                    s,
                    "  validation curves first differ at epoch {} ({} {} vs {}, tolerance {})",
                    v.epoch, v.metric, v.a, v.b, r.tolerance
                );
            }
            None if r.curves_missing.is_empty() => {
                let _ = writeln!(
                    s,
                    "  validation curves agree within {} over the {} epochs both have",
                    r.tolerance, r.epochs_compared
                );
            }
            None => {}
        }
        for job in &r.curves_missing {
            let _ = writeln!(
                s,
                "  no metrics.csv of {job} here: `cargo xtask experiment fetch {job}` brings it"
            );
        }
    }
    for u in &d.unknown {
        let _ = writeln!(s, "\n{}: not compared: {}", u.part, u.reason);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn toml_value(text: &str) -> Value {
        serde_json::to_value(toml::from_str::<toml::Table>(text).unwrap()).unwrap()
    }

    fn check(a: &str, b: &str, expected: &[(&str, Option<Value>, Option<Value>)]) {
        let got = key_changes(&toml_value(a), &toml_value(b));
        let got: Vec<(&str, Option<Value>, Option<Value>)> = got
            .iter()
            .map(|c| (c.path.as_str(), c.old.clone(), c.new.clone()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn one_setting_spelled_two_ways_is_no_change() {
        let base = include_str!("../../../experiments/quickstart.toml");
        let view = |text: &str| {
            let exp = sca_spec::validate::validate_for_training("exp.toml", text.as_bytes())
                .experiment
                .unwrap_or_else(|| panic!("valid: {text}"));
            let settings =
                sca_spec::ResolvedJob::resolve(&exp, &crate::workspace::defaults().unwrap())
                    .unwrap_or_else(|e| panic!("{e:?}"));
            resolved_view(&exp, &settings)
        };
        let a = view(base);
        let b = view(
            &base
                .replace("max_runtime = \"30m\"", "max_runtime = \"1800s\"")
                .replace(
                    "loss = { bce = 0.5, dice = 0.5 }",
                    "loss = { bce = 0.5, dice = 0.5, lovasz = 0.0 }",
                ),
        );
        assert_eq!(key_changes(&a, &b), []);
        assert_eq!(a["job"]["max_runtime"], 1800);
        // A real change still shows, in the one spelling.
        let c = view(&base.replace("loss = { bce = 0.5, dice = 0.5 }", "loss = \"bce\""));
        let changes: Vec<String> = key_changes(&a, &c).iter().map(|k| k.path.clone()).collect();
        assert_eq!(changes, ["model.loss.bce", "model.loss.dice"]);
        let d = view(&base.replace("loss = { bce = 0.5, dice = 0.5 }", "loss = { bce = 1.0 }"));
        assert_eq!(key_changes(&c, &d), []);
        // Where it ran, not where the file said (`--region`).
        let pinned = base.replace("[job]\n", "[job]\nregion = \"us-west-2\"\n");
        let a = view(&pinned);
        assert_eq!(a["job"]["region"], "us-west-2");
        let exp = sca_spec::validate::validate_for_training("exp.toml", pinned.as_bytes())
            .experiment
            .unwrap();
        let mut moved =
            sca_spec::ResolvedJob::resolve(&exp, &crate::workspace::defaults().unwrap()).unwrap();
        moved.region = "eu-central-1".into();
        let e = resolved_view(&exp, &moved);
        let changes: Vec<String> = key_changes(&a, &e).iter().map(|k| k.path.clone()).collect();
        assert_eq!(changes, ["job.region"]);
    }

    #[test]
    fn key_walk_names_each_changed_key_and_ignores_comments() {
        check(
            "# a comment\n[train]\nepochs = 2 # two\nlearning_rate = 0.01\n",
            "[train]\nlearning_rate = 0.02\nepochs = 2\n",
            &[("train.learning_rate", Some(json!(0.01)), Some(json!(0.02)))],
        );
        check("[a]\nx = 1\n", "[a]\nx = 1\n", &[]);
        // Added and removed keys and tables.
        check(
            "[a]\nx = 1\n[b]\ny = true\n",
            "[a]\nx = 1\nz = \"s\"\n",
            &[
                ("a.z", None, Some(json!("s"))),
                ("b", Some(json!({"y": true})), None),
            ],
        );
    }

    #[test]
    fn key_walk_indexes_arrays_of_tables_and_compares_other_arrays_whole() {
        check(
            "[[channels]]\nbands = [1, 2]\n[[channels]]\nbands = [3]\n",
            "[[channels]]\nbands = [1, 2]\n[[channels]]\nbands = [3, 4]\n[[channels]]\nbands = [5]\n",
            &[
                ("channels[1].bands", Some(json!([3])), Some(json!([3, 4]))),
                ("channels[2]", None, Some(json!({"bands": [5]}))),
            ],
        );
        // Inline tables are tables; odd keys are quoted.
        check(
            "[model]\nloss = { bce = 1.0, dice = 0.5 }\n[job.tags]\n\"a.b\" = \"x\"\n",
            "[model]\nloss = { bce = 1.0, dice = 1.0 }\n[job.tags]\n\"a.b\" = \"y\"\n",
            &[
                ("job.tags.\"a.b\"", Some(json!("x")), Some(json!("y"))),
                ("model.loss.dice", Some(json!(0.5)), Some(json!(1.0))),
            ],
        );
    }

    #[test]
    fn nulls_count_as_absent() {
        let got = key_changes(&json!({"a": null, "b": 1}), &json!({"b": 1}));
        assert_eq!(got, []);
        let got = key_changes(&json!({"a": null}), &json!({"a": 2}));
        assert_eq!(got[0].old, None);
    }

    fn obj(uri: &str, size: u64, sha: &str) -> ManifestObject {
        ManifestObject {
            uri: uri.into(),
            size,
            etag: None,
            sha256: Some(sha.into()),
        }
    }

    fn manifest(objects: Vec<ManifestObject>) -> DataManifest {
        DataManifest {
            version: DataManifest::VERSION,
            imagery: "data".into(),
            masks: "data".into(),
            zoom: 15,
            objects,
            init_checkpoint: None,
        }
    }

    #[test]
    fn manifest_diff_lists_added_removed_and_changed_tiles() {
        let a = manifest(vec![
            obj("data/i/15/1/1.tif", 10, "aa"),
            obj("data/i/15/1/2.tif", 10, "bb"),
            obj("data/i/15/1/3.tif", 10, "cc"),
        ]);
        let b = manifest(vec![
            obj("data/i/15/1/4.tif", 10, "dd"),
            obj("data/i/15/1/3.tif", 12, "cc"),
            obj("data/i/15/1/1.tif", 10, "AA"),
        ]);
        let d = manifest_diff(&a, &b);
        assert_eq!(d.added, ["data/i/15/1/4.tif"]);
        assert_eq!(d.removed, ["data/i/15/1/2.tif"]);
        assert_eq!(
            d.changed,
            [ObjectChange {
                uri: "data/i/15/1/3.tif".into(),
                reason: "size 10 → 12 bytes".into()
            }],
            "hashes compare without case"
        );
        assert!(d.settings.is_empty());
        let same = manifest_diff(&a, &a);
        assert!(same.added.is_empty() && same.removed.is_empty() && same.changed.is_empty());
    }

    /// A manifest's hashes are whatever its file says: one that is not hex
    /// shortens on a character boundary.
    #[test]
    fn hashes_that_are_not_hex_shorten_by_characters() {
        let odd = format!("a{}", "é".repeat(20));
        assert_eq!(short(&odd), format!("a{}", "é".repeat(11)));
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        let d = manifest_diff(
            &manifest(vec![obj("data/i/15/1/1.tif", 10, &odd)]),
            &manifest(vec![obj("data/i/15/1/1.tif", 10, "bb")]),
        );
        assert_eq!(d.changed.len(), 1);
        assert!(
            d.changed[0].reason.starts_with("sha256 aéé"),
            "{:?}",
            d.changed
        );
    }

    #[test]
    fn manifest_diff_compares_etags_without_quotes_and_names_root_changes() {
        let e = |uri: &str, etag: &str| ManifestObject {
            uri: uri.into(),
            size: 1,
            etag: Some(etag.into()),
            sha256: None,
        };
        let a = manifest(vec![
            e("s3://b/x.tif", "\"e1\""),
            e("s3://b/y.tif", "\"e1\""),
        ]);
        let mut b = manifest(vec![e("s3://b/x.tif", "e1"), e("s3://b/y.tif", "\"e2\"")]);
        b.zoom = 14;
        let d = manifest_diff(&a, &b);
        assert_eq!(d.changed.len(), 1);
        assert_eq!(d.changed[0].uri, "s3://b/y.tif");
        assert!(d.changed[0].reason.starts_with("ETag"), "{:?}", d.changed);
        assert_eq!(d.settings[0].path, "zoom");
    }

    /// Two runs alike but for `SCA_DEVICE` (one trained on the GPU) differ
    /// there, and only there: not "the same experiment, code and data".
    #[test]
    fn a_device_override_is_a_difference() {
        let dir = tempfile::tempdir().unwrap();
        let a = RunRecord::for_tests("exp-0123456-20261126-120000");
        let mut b = RunRecord::for_tests("exp-0123456-20261126-130000");
        b.device_override = Some("cuda".into());
        let d = compare(dir.path(), &a, &b, 1e-4).unwrap();
        assert!(!d.is_empty(), "{d:?}");
        assert_eq!(
            d.device,
            Some(DeviceDiff {
                a: None,
                b: Some("cuda".into())
            })
        );
        assert!(render(&d).contains("B SCA_DEVICE=cuda"), "{}", render(&d));
        let d = compare(dir.path(), &a, &a, 1e-4).unwrap();
        assert_eq!(d.device, None);
    }

    /// A record older than data manifests, config copies gone and commits
    /// this repository lacks leave those parts unknown, with why; the rest
    /// is still compared.
    #[test]
    fn parts_that_cannot_be_compared_are_unknown_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut a = RunRecord::for_tests("exp-0123456-20261126-120000");
        a.pins.data_manifest_sha256 = None;
        a.final_metrics = json!({"iou": 0.5});
        let mut b = RunRecord::for_tests("exp-abcdef0-20261126-130000");
        b.pins.commit = "abcdef0123".into();
        b.pins.experiment_sha256 = "1".into();
        b.final_metrics = json!({"iou": 0.75});
        let m = manifest(vec![obj("data/i/15/1/1.tif", 10, "aa")]);
        b.pins.data_manifest_sha256 = Some(m.sha256());
        std::fs::create_dir_all(b.config_dir(root)).unwrap();
        std::fs::write(
            b.config_dir(root).join(DataManifest::FILE_NAME),
            m.to_bytes(),
        )
        .unwrap();
        let d = compare(root, &a, &b, 1e-4).unwrap();
        let reasons = |part: &str| -> Vec<&str> {
            d.unknown
                .iter()
                .filter(|u| u.part == part)
                .map(|u| u.reason.as_str())
                .collect()
        };
        let data = reasons("data");
        assert_eq!(data.len(), 1, "{:?}", d.unknown);
        assert!(
            data[0].contains("`exp-0123456-20261126-120000` pins no data manifest"),
            "{data:?}"
        );
        let code = reasons("code");
        assert!(
            code.len() == 1 && code[0].contains("is not in the repository"),
            "{code:?}"
        );
        let experiment = reasons("experiment");
        assert!(
            experiment.len() == 2 && experiment.iter().all(|r| r.contains("is missing")),
            "{experiment:?}"
        );
        let c = d.code.as_ref().expect("the commits still differ");
        assert_eq!((c.a_commit.as_str(), c.stat.as_ref()), ("0123456789", None));
        assert_eq!(d.data, None);
        let r = d.results.as_ref().expect("the results still compare");
        assert_eq!(r.metrics[0].delta, Some(0.25));
        let text = render(&d);
        assert!(text.contains("\ndata: not compared: "), "{text}");
        assert!(text.contains("commit 0123456789 → abcdef0123"), "{text}");
        assert!(text.contains("results (final validation epoch)"), "{text}");
    }

    /// The same file launched at two commits whose defaults differ: the
    /// change is named from what each launch resolved, not hidden because
    /// this checkout's schema resolves both alike.
    #[test]
    fn a_default_changed_between_launches_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let text = include_str!("../../../experiments/quickstart.toml");
        let exp = sca_spec::validate::validate_for_training("exp.toml", text.as_bytes())
            .experiment
            .unwrap();
        let launch = |job: &str, learning_rate: f64| {
            let r = RunRecord::for_tests(job);
            let config = r.config_dir(root);
            std::fs::create_dir_all(&config).unwrap();
            std::fs::write(config.join("exp.toml"), text).unwrap();
            let mut resolved = exp.clone();
            resolved.train.learning_rate = learning_rate;
            let bytes = serde_json::to_vec_pretty(&resolved).unwrap();
            std::fs::write(config.join(RESOLVED_FILE), bytes).unwrap();
            r
        };
        let a = launch("exp-0123456-20261126-120000", 1e-3);
        let b = launch("exp-0123456-20261126-130000", 3e-4);
        assert_eq!(a.pins.experiment_sha256, b.pins.experiment_sha256);
        let d = compare(root, &a, &b, 1e-4).unwrap();
        let e = d.experiment.expect("the defaults differ");
        assert!(e.as_launched, "{e:?}");
        let paths: Vec<&str> = e.changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["train.learning_rate"]);
        let text = render(&compare(root, &a, &b, 1e-4).unwrap());
        assert!(text.contains("resolved as launched"), "{text}");

        // A launch that kept no resolution: this schema's, as before.
        std::fs::remove_file(b.config_dir(root).join(RESOLVED_FILE)).unwrap();
        assert_eq!(compare(root, &a, &b, 1e-4).unwrap().experiment, None);
        // ... for both sides: A's launch-time default against B's by this
        // schema would be a change neither run made.
        let mut b = b;
        b.pins.experiment_sha256 = "other".into();
        std::fs::write(
            b.config_dir(root).join("exp.toml"),
            include_str!("../../../experiments/quickstart.toml").replace("epochs = ", "epochs = 1"),
        )
        .unwrap();
        let e = compare(root, &a, &b, 1e-4).unwrap().experiment.unwrap();
        let paths: Vec<&str> = e.changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["train.epochs"]);
        assert!(!e.as_launched);
        // A kept resolution this schema cannot read counts as none.
        std::fs::write(b.config_dir(root).join(RESOLVED_FILE), b"{\"old\": 1}").unwrap();
        let e = compare(root, &a, &b, 1e-4).unwrap().experiment.unwrap();
        let paths: Vec<&str> = e.changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["train.epochs"]);
        assert!(!e.as_launched);
    }

    /// A file this schema no longer reads is compared as written, and the
    /// job settings as the runs ran them beside it (`--region`).
    #[test]
    fn an_unreadable_old_file_still_shows_the_jobs_settings() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let text = "[experiment]\nname = \"exp\"\nkey_of_an_old_schema = 1\n";
        let launch = |job: &str, region: &str| {
            let mut r = RunRecord::for_tests(job);
            r.resolved_job.region = region.into();
            let config = r.config_dir(root);
            std::fs::create_dir_all(&config).unwrap();
            std::fs::write(config.join("exp.toml"), text).unwrap();
            r
        };
        let mut a = launch("exp-0123456-20261126-120000", "us-west-2");
        let b = launch("exp-0123456-20261126-130000", "eu-central-1");
        a.pins.experiment_sha256 = b.pins.experiment_sha256.clone();
        let e = compare(root, &a, &b, 1e-4).unwrap().experiment.unwrap();
        let paths: Vec<&str> = e.changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["resolved_job.region"]);
        assert!(!e.resolved);
    }

    /// A metric only a newer trainer reports is no difference between two
    /// runs that otherwise agree; results on one side only are; and a
    /// metrics.csv that does not read leaves the curves unknown, not the diff.
    #[test]
    fn results_compare_what_both_report() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut a = RunRecord::for_tests("exp-0123456-20261126-120000");
        a.final_metrics = json!({"iou": 0.5, "loss": 0.25});
        let mut b = RunRecord::for_tests("exp-0123456-20261126-130000");
        b.final_metrics = json!({"iou": 0.5, "loss": 0.25, "mcc": 0.1});
        assert_eq!(compare(root, &a, &b, 1e-4).unwrap().results, None);
        b.final_metrics = Value::Null;
        let r = compare(root, &a, &b, 1e-4).unwrap().results;
        assert!(r.is_some_and(|r| r.metrics.iter().all(|m| m.b.is_none())));

        let csv = a.model_dir(root).join("metrics.csv");
        std::fs::create_dir_all(csv.parent().unwrap()).unwrap();
        std::fs::write(&csv, "epoch,split,loss\nnot-a-number,val,0.5\n").unwrap();
        let d = compare(root, &a, &b, 1e-4).unwrap();
        let curves: Vec<_> = d.unknown.iter().filter(|u| u.part == "curves").collect();
        assert!(
            curves.len() == 1 && curves[0].reason.contains("metrics.csv"),
            "{:?}",
            d.unknown
        );
        // Unreadable is not missing: only B's is not here.
        let missing = &d.results.as_ref().expect("results differ").curves_missing;
        assert_eq!(missing, &[b.job_name.clone()]);
    }

    /// "No differences" is said only of what was compared: two records
    /// that pin no data manifest, runs without results and curves that are
    /// not here are each named as not compared.
    #[test]
    fn what_was_not_compared_is_never_called_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut a = RunRecord::for_tests("exp-0123456-20261126-120000");
        let mut b = RunRecord::for_tests("exp-0123456-20261126-130000");
        let parts = |d: &RunDiff| -> Vec<String> {
            let mut p: Vec<String> = d.unknown.iter().map(|u| u.part.clone()).collect();
            p.dedup();
            p
        };
        let d = compare(root, &a, &b, 1e-4).unwrap();
        assert_eq!(parts(&d), ["data", "results"], "{:?}", d.unknown);
        assert!(!render(&d).contains("no differences"), "{}", render(&d));
        assert_eq!(d.unknown.iter().filter(|u| u.part == "data").count(), 2);

        // The same final metrics, neither run's curves here.
        a.final_metrics = json!({"iou": 0.5});
        b.final_metrics = json!({"iou": 0.5});
        let d = compare(root, &a, &b, 1e-4).unwrap();
        assert_eq!(d.results, None);
        let curves: Vec<_> = d.unknown.iter().filter(|u| u.part == "curves").collect();
        assert_eq!(curves.len(), 2, "{:?}", d.unknown);
        assert!(curves[1]
            .reason
            .contains("experiment fetch exp-0123456-20261126-130000"));

        // Both curves here and alike: the results were compared.
        for r in [&a, &b] {
            let csv = r.model_dir(root).join("metrics.csv");
            std::fs::create_dir_all(csv.parent().unwrap()).unwrap();
            std::fs::write(&csv, "epoch,split,iou\n1,val,0.5\n").unwrap();
        }
        let d = compare(root, &a, &b, 1e-4).unwrap();
        assert_eq!(parts(&d), ["data"], "{:?}", d.unknown);
    }

    /// A local run beside a container run differs in its image because one
    /// had none, not because the same code was built twice.
    #[test]
    fn a_host_run_beside_an_image_run_is_said_to_be_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = RunRecord::for_tests("exp-0123456-20261126-120000");
        let mut b = RunRecord::for_tests("exp-0123456-20261126-130000");
        b.pins.image = Some(
            crate::experiment::pins::ImageRef::parse(&format!("r/sca@sha256:{}", "a".repeat(64)))
                .unwrap(),
        );
        let text = render(&compare(dir.path(), &a, &b, 1e-4).unwrap());
        assert!(text.contains("one ran as a host process"), "{text}");
        assert!(!text.contains("the same code gave two images"), "{text}");
    }

    #[test]
    fn the_json_document_round_trips() {
        let d = RunDiff {
            version: DIFF_VERSION,
            a: Side {
                job: "a".into(),
                experiment: "e".into(),
                backend: Backend::Local,
                status: Status::Completed,
                started: "2026-01-01T00:00:00Z".into(),
            },
            b: Side {
                job: "b".into(),
                experiment: "e".into(),
                backend: Backend::Local,
                status: Status::Completed,
                started: "2026-01-01T00:00:01Z".into(),
            },
            experiment: Some(ExperimentDiff {
                resolved: true,
                as_launched: true,
                changes: vec![KeyChange {
                    path: "train.epochs".into(),
                    old: Some(json!(1)),
                    new: Some(json!(2)),
                }],
            }),
            code: None,
            image: None,
            data: None,
            warm_start: None,
            device: Some(DeviceDiff {
                a: None,
                b: Some("cuda".into()),
            }),
            results: Some(ResultsDiff {
                metrics: vec![MetricDelta {
                    name: "iou".into(),
                    a: Some(0.5),
                    b: Some(0.75),
                    delta: Some(0.25),
                }],
                tolerance: 1e-4,
                epochs_compared: 1,
                divergence: Some(Divergence {
                    epoch: 1,
                    metric: "iou".into(),
                    a: 0.5,
                    b: 0.75,
                }),
                curves_missing: vec![],
            }),
            unknown: vec![],
        };
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<RunDiff>(&text).unwrap(), d);
        // Absent parts are present as null: a consumer can rely on the keys.
        let v: Value = serde_json::from_str(&text).unwrap();
        for key in [
            "experiment",
            "code",
            "image",
            "data",
            "warm_start",
            "device",
            "results",
            "unknown",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        let text = render(&d);
        assert!(text.contains("B SCA_DEVICE=cuda"), "{text}");
        assert!(text.contains("train.epochs: 1 → 2"), "{text}");
        assert!(text.contains("first differ at epoch 1"), "{text}");
        assert!(!text.contains("code:"), "{text}");
        // A difference the tolerance counts is never printed as +0.0000.
        let mut tight = d.clone();
        let r = tight.results.as_mut().unwrap();
        r.tolerance = 0.0;
        r.metrics[0] = MetricDelta {
            name: "iou".into(),
            a: Some(0.5),
            b: Some(0.5000001),
            delta: Some(0.5000001 - 0.5),
        };
        let text = render(&tight);
        assert!(text.contains("+0.000000100"), "{text}");
        tight.results.as_mut().unwrap().metrics[0].delta = Some(2e-13);
        let text = render(&tight);
        assert!(text.contains("+2.000e-13"), "{text}");
        assert!(render(&d).contains("+0.2500"), "{}", render(&d));
    }
}
