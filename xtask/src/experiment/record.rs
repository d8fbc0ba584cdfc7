//! Run records: one JSON document per job, holding everything needed to run
//! the identical job again (commit, image digest, experiment bytes' sha256,
//! data manifest hash, resolved settings) and how it ended.
//!
//! Records live in the runs directory (`target/sca-runs/<job>/record.json`,
//! or `$SCA_RUNS_DIR/<job>/record.json`) beside a copy of the job's `config`
//! channel (`config/`: the experiment file, the data manifest and the
//! experiment as resolved at launch); SageMaker
//! jobs also keep theirs beside the config in S3. Every write is atomic, and
//! read-modify-writes hold a lock beside the record ([`RunRecord::update`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::experiment::pins::Pins;
use crate::fsx;

/// How a job is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `sca-train train` as a host process against an /opt/ml tree in the runs directory (no Docker, no AWS)
    Local,
    /// The pinned image under the Docker engine, laid out as SageMaker runs it
    Docker,
    /// A SageMaker Training Job
    Sagemaker,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Local => "local",
            Backend::Docker => "docker",
            Backend::Sagemaker => "sagemaker",
        })
    }
}

/// A job's state, with SageMaker's names for every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    InProgress,
    Completed,
    Failed,
    Stopping,
    Stopped,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Stopped)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "InProgress" => Status::InProgress,
            "Completed" => Status::Completed,
            "Failed" => Status::Failed,
            "Stopping" => Status::Stopping,
            "Stopped" => Status::Stopped,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Everything needed to rerun a job, and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Format version of this record.
    pub record_version: u32,
    pub job_name: String,
    pub backend: Backend,
    pub experiment: String,
    /// The experiment file as given on the command line.
    pub experiment_file: String,
    pub schema_version: u32,
    /// Commit, diff hash, image, experiment and data manifest hashes, warm
    /// start: flattened, so the record keeps its keys (`commit`,
    /// `image_digest`, ...).
    #[serde(flatten)]
    pub pins: Pins,
    pub resolved_job: sca_spec::ResolvedJob,
    /// How many objects the data manifest lists.
    #[serde(default)]
    pub data_objects: usize,
    /// Hyperparameters handed to the trainer.
    pub hyperparameters: serde_json::Map<String, serde_json::Value>,
    /// `SCA_DEVICE` the local trainer ran with (it overrides `train.device`);
    /// a rerun sets it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_override: Option<String>,
    /// The `config` channel: an S3 prefix, or the local copy's directory.
    pub config_uri: String,
    /// The job this one reruns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
    /// The sweep this job is a point of (its `experiment` is the point's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<String>,
    /// What an ended SageMaker job was billed, from `DescribeTrainingJob`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Billed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_job_arn: Option<String>,
    /// Process id of the local trainer while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The trainer's start time (`/proc/<pid>/stat` field 22, clock ticks
    /// since boot): with the pid, it names the process, which the pid alone
    /// stops doing once the trainer ends and the pid is reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    /// Docker container id while it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The ID of the Docker engine that runs the container (`docker info`'s):
    /// a look through another engine, which does not know the container,
    /// must not take it for gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_id: Option<String>,
    pub started: String,
    #[serde(default)]
    pub finished: Option<String>,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// The last validation epoch's metrics.
    #[serde(default)]
    pub final_metrics: serde_json::Value,
    /// The model: a directory (local, docker) and `model.tar.gz` (docker, sagemaker).
    pub artifacts: String,
    /// Where the trainer's checkpoints are kept: the job's own S3 prefix
    /// `<job.checkpoint_s3>/<job>/` (sagemaker, when set), or the run's
    /// fresh `opt/ml/checkpoints` directory (local, docker). Never shared
    /// with another job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_uri: Option<String>,
}

pub const RECORD_VERSION: u32 = 1;

/// Refuse to write a record of format `version` (the record's, or the one
/// stored at `place`) newer than [`RECORD_VERSION`]: serde drops the keys
/// it does not know, so an older checkout rewriting it would lose them.
pub fn check_writable(version: u32, place: &str) -> Result<()> {
    if version > RECORD_VERSION {
        bail!(
            "{place} is a version {version} run record, newer than the version {RECORD_VERSION} this xtask writes, and rewriting it would drop what this xtask does not know: update the checkout (`git pull`) and run the command again"
        );
    }
    Ok(())
}

/// The `record_version` of a stored record's bytes, if they have one.
pub fn stored_version(bytes: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    struct Version {
        record_version: u32,
    }
    serde_json::from_slice::<Version>(bytes)
        .ok()
        .map(|v| v.record_version)
}

/// An ended SageMaker job's billed time and what it implies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Billed {
    /// `TrainingTimeInSeconds`.
    pub training_secs: u64,
    /// `BillableTimeInSeconds` (per instance; less than the training time
    /// with managed spot).
    pub billable_secs: u64,
    /// Billable time x instances x the on-demand rate of sca-spec's price
    /// table; `None` when the table has no price for the type and region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
}

impl Billed {
    /// From the job's billed seconds and its resolved settings.
    pub fn new(job: &sca_spec::ResolvedJob, training_secs: u64, billable_secs: u64) -> Self {
        let usd = sca_spec::billed(
            &job.instance_type,
            &job.region,
            job.instance_count,
            training_secs,
            billable_secs,
        )
        .map(|b| b.usd);
        Billed {
            training_secs,
            billable_secs,
            usd,
        }
    }

    /// `$0.42 (1234 s billed)`, or the seconds alone when unpriced.
    pub fn describe(&self) -> String {
        match self.usd {
            Some(usd) => format!("${usd:.2} ({} s billed)", self.billable_secs),
            None => format!("{} s billed (no price)", self.billable_secs),
        }
    }
}

/// The runs directory.
pub fn runs_dir(root: &Path) -> PathBuf {
    runs_dir_of(std::env::var_os("SCA_RUNS_DIR"), root)
}

/// The runs directory `SCA_RUNS_DIR` (`var`) names. A relative one is made
/// absolute from the working directory: records, docker mounts and
/// warm-start paths made of it hold absolute paths, which a later command
/// run from another directory reads as the same.
fn runs_dir_of(var: Option<std::ffi::OsString>, root: &Path) -> PathBuf {
    var.filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .map(|d| std::path::absolute(&d).unwrap_or(d))
        .unwrap_or_else(|| root.join("target/sca-runs"))
}

/// The directory of one job in the runs directory.
pub fn run_dir(root: &Path, job: &str) -> PathBuf {
    runs_dir(root).join(job)
}

/// The record of one job in the runs directory (which may not exist yet).
pub fn record_path(root: &Path, job: &str) -> PathBuf {
    run_dir(root, job).join("record.json")
}

impl RunRecord {
    /// Write the record as it is (under the record's lock, so never in the
    /// middle of another process's [`RunRecord::update`]), unless the stored
    /// one has ended and this one has not ([`RunRecord::save_unless_ended`]).
    pub fn save(&self, root: &Path) -> Result<PathBuf> {
        self.save_unless_ended(root)?;
        Ok(record_path(root, &self.job_name))
    }

    /// Write the record under its lock, unless the stored record has ended
    /// and this one has not: this copy was read, or refreshed, before
    /// another process recorded the end (a `status` that asked SageMaker
    /// while `run --wait` saw the job complete), and must not undo it. The
    /// record as it now stands, this one or the stored one.
    pub fn save_unless_ended(&self, root: &Path) -> Result<RunRecord> {
        Self::check_name(&self.job_name)?;
        fsx::locked(&lock_path(root, &self.job_name), || {
            let path = record_path(root, &self.job_name);
            let bytes = std::fs::read(&path).ok();
            if let Some(version) = bytes.as_deref().and_then(stored_version) {
                check_writable(version, &path.display().to_string())?;
            }
            // An unreadable record is replaced, as before there was a rule.
            let stored = bytes.and_then(|b| serde_json::from_slice::<RunRecord>(&b).ok());
            match stored {
                Some(stored) if stored.supersedes(self) => Ok(stored),
                _ => {
                    self.write(root)?;
                    Ok(self.clone())
                }
            }
        })
    }

    /// Whether this record has ended and `other`, of the same job, has not:
    /// a job never runs again once ended, so `other` is an older look.
    pub fn supersedes(&self, other: &RunRecord) -> bool {
        self.status.is_terminal() && !other.status.is_terminal()
    }

    /// `local` records with `remote` ones (the config bucket's) beside
    /// them: a remote record replaces the local one of its job, being the
    /// one `status` keeps up to date wherever it runs, unless the local one
    /// has ended and it has not (an end saved here whose put to the bucket
    /// failed).
    pub fn merge_remote(mut local: Vec<RunRecord>, remote: Vec<RunRecord>) -> Vec<RunRecord> {
        for there in remote {
            match local.iter_mut().find(|r| r.job_name == there.job_name) {
                Some(here) if here.supersedes(&there) => {}
                Some(here) => *here = there,
                None => local.push(there),
            }
        }
        local
    }

    fn write(&self, root: &Path) -> Result<PathBuf> {
        let path = record_path(root, &self.job_name);
        check_writable(self.record_version, &path.display().to_string())?;
        fsx::write_atomic(&path, &self.to_json_pretty())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Read, change with `f` and write `job`'s record, holding an exclusive
    /// lock on `record.lock` beside it throughout: the launcher recording
    /// the end, `stop` marking `Stopping` and `status` recording a dead run
    /// run in separate processes, and without the lock one's write could
    /// undo the other's. Nothing is written when `f` fails.
    pub fn update<R>(
        root: &Path,
        job: &str,
        f: impl FnOnce(&mut RunRecord) -> Result<R>,
    ) -> Result<(RunRecord, R)> {
        // Checked before the lock path is made from the name.
        Self::read(root, job)?;
        fsx::locked(&lock_path(root, job), || {
            let mut record = Self::read(root, job)?;
            let path = record_path(root, job);
            check_writable(record.record_version, &path.display().to_string())?;
            let r = f(&mut record)?;
            record.write(root)?;
            Ok((record, r))
        })
    }

    pub fn to_json_pretty(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("records serialize")
    }

    /// The record of `job`, or a message naming what exists; a warning
    /// when its format is newer than this xtask knows.
    pub fn load(root: &Path, job: &str) -> Result<Self> {
        let record = Self::read(root, job)?;
        if record.record_version > RECORD_VERSION {
            errln!(
                "warning: {} is a version {} run record, newer than the version {RECORD_VERSION} this xtask knows: what it adds is not shown, and this checkout will not change it (update it with `git pull`)",
                record_path(root, job).display(),
                record.record_version
            );
        }
        Ok(record)
    }

    /// [`RunRecord::load`] without the warning.
    fn read(root: &Path, job: &str) -> Result<Self> {
        Self::check_name(job)?;
        let path = record_path(root, job);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no run record for job `{job}` in {}: `cargo xtask experiment list` shows the jobs this checkout launched, `list --remote` the SageMaker jobs launched elsewhere (`diff --remote {job} {job}` copies one here)",
                runs_dir(root).display()
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let record = Self::parse(&bytes, &path)?;
        record.check_place(&path, job)?;
        Ok(record)
    }

    /// The record in `bytes` (read from `path`). One a newer xtask wrote
    /// that this one cannot read (a status or backend it adds) says so,
    /// with the fix, not "not a run record".
    fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| match stored_version(bytes) {
            Some(v) if v > RECORD_VERSION => anyhow::anyhow!(
                "{} is a version {v} run record, newer than the version {RECORD_VERSION} this xtask reads ({e}): update the checkout (`git pull`) and run the command again",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("{} is not a run record", path.display())),
        })
    }

    /// Refuse a record that is not in its job's directory (one copied or
    /// renamed, `cp -r runs/J runs/J.keep`): its config, curves and model
    /// are looked up by the name it records, so it would show another
    /// run's, and a list of records would hold job J twice.
    fn check_place(&self, path: &Path, dir: &str) -> Result<()> {
        if self.job_name != dir {
            bail!(
                "{} records job `{}`, not `{dir}`: the run directory was copied or renamed; rename it back to {} or move it out of {}",
                path.display(),
                self.job_name,
                self.job_name,
                path.parent()
                    .and_then(Path::parent)
                    .map_or_else(String::new, |p| p.display().to_string())
            );
        }
        Ok(())
    }

    /// Refuse what is not a job name, before a path is made of it.
    pub fn check_name(job: &str) -> Result<()> {
        if job.is_empty() || job.contains(['/', '\\']) || job.starts_with('.') {
            bail!("`{job}` is not a job name (see `cargo xtask experiment list`)");
        }
        Ok(())
    }

    /// Every readable record, oldest first; unreadable ones are reported on stderr.
    pub fn all(root: &Path) -> Vec<Self> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(runs_dir(root)) else {
            return out;
        };
        for entry in entries.flatten() {
            let path = entry.path().join("record.json");
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            match RunRecord::parse(&bytes, &path) {
                Ok(r) => match r.check_place(&path, &entry.file_name().to_string_lossy()) {
                    Ok(()) => out.push(r),
                    Err(e) => errln!("warning: skipping it: {e}"),
                },
                Err(e) => errln!("warning: skipping it: {e:#}"),
            }
        }
        out.sort_by(|a, b| (&a.started, &a.job_name).cmp(&(&b.started, &b.job_name)));
        out
    }

    /// The newest completed run on `backend` pinned exactly as `pins` (same
    /// commit and working-tree diff, image digest, experiment bytes, data
    /// manifest and so warm start): a launch of `pins` would repeat it.
    pub fn completed_twin(root: &Path, backend: Backend, pins: &Pins) -> Option<Self> {
        Self::all(root)
            .into_iter()
            .rev()
            .find(|r| r.status == Status::Completed && r.is_launch_of(backend, pins))
    }

    /// The runs on `backend` pinned exactly as `pins` that their records
    /// say have not ended (a second launch would run them twice), newest
    /// first: a newer one's record may be stale (its launcher and trainer
    /// gone) while an older one still runs.
    pub fn running_twins(root: &Path, backend: Backend, pins: &Pins) -> Vec<Self> {
        Self::all(root)
            .into_iter()
            .rev()
            .filter(|r| !r.status.is_terminal() && r.is_launch_of(backend, pins))
            .collect()
    }

    /// Whether this is a run of `pins` on `backend`: a launch of them would
    /// repeat it ([`Pins::same_launch`]).
    pub fn is_launch_of(&self, backend: Backend, pins: &Pins) -> bool {
        self.backend == backend && self.pins.same_launch(pins)
    }

    /// A running local job's record, `job`, for tests.
    #[cfg(test)]
    pub fn for_tests(job: &str) -> Self {
        serde_json::from_value(serde_json::json!({
            "record_version": RECORD_VERSION, "job_name": job, "backend": "local",
            "experiment": "exp", "experiment_file": "exp.toml", "experiment_sha256": "0",
            "schema_version": 1, "commit": "0123456789", "dirty": false,
            "resolved_job": {
                "region": "us-west-2", "role_arn": "", "output": "", "config_bucket": "",
                "ecr_repository": "", "image_name": "", "instance_type": "ml.m5.xlarge",
                "instance_count": 1, "volume_gb": 1, "max_runtime_secs": 60,
                "max_wait_secs": null, "checkpoint_s3": null,
            },
            "hyperparameters": {}, "config_uri": "", "started": now(),
            "status": "InProgress", "artifacts": "",
        }))
        .expect("a valid record")
    }

    /// The local copy of the job's `config` channel.
    pub fn config_dir(&self, root: &Path) -> PathBuf {
        run_dir(root, &self.job_name).join("config")
    }

    /// The model directory of a local or docker run.
    pub fn model_dir(&self, root: &Path) -> PathBuf {
        run_dir(root, &self.job_name).join("opt/ml/model")
    }

    /// End this record as Failed for `reason`, unless it has ended already
    /// (whoever saw the end first recorded it): for a job nothing else
    /// would end (its container or trainer never ran, or is gone unseen).
    pub fn fail_unless_ended(&mut self, reason: String) {
        if !self.status.is_terminal() {
            self.status = Status::Failed;
            self.failure_reason = Some(reason);
            self.finished = Some(now());
        }
    }

    /// Mark the job stopping because its `max_runtime` ran out, with
    /// SageMaker's secondary status for it ([`MAX_RUNTIME_EXCEEDED`]), which
    /// the end then names as the reason (local and docker runs are stopped
    /// there as SageMaker stops its jobs).
    pub fn mark_max_runtime_exceeded(root: &Path, job: &str) -> Result<RunRecord> {
        let (record, ()) = Self::update(root, job, |r| {
            if !r.status.is_terminal() {
                r.status = Status::Stopping;
                r.secondary_status = Some(MAX_RUNTIME_EXCEEDED.into());
            }
            Ok(())
        })?;
        Ok(record)
    }

    /// Mark `job` `Stopping` in its record, unless it has ended meanwhile
    /// (marked first, so the launcher records `Stopped`, not `Failed`); the
    /// record as marked.
    pub fn mark_stopping(root: &Path, job: &str) -> Result<RunRecord> {
        let (record, ()) = Self::update(root, job, |r| {
            if !r.status.is_terminal() {
                r.status = Status::Stopping;
            }
            Ok(())
        })?;
        Ok(record)
    }
}

/// SageMaker's secondary status of a job stopped at its `max_runtime`.
pub const MAX_RUNTIME_EXCEEDED: &str = "MaxRuntimeExceeded";

/// The lock file that serialises changes to `job`'s record.
fn lock_path(root: &Path, job: &str) -> PathBuf {
    run_dir(root, job).join("record.lock")
}

/// Claim a fresh job name: the first `name_at(now)` whose run directory
/// this call creates. Names carry the time to the second, so a launch in the
/// same second as another one from this checkout (a quick `rerun`, two
/// terminals) waits for the next second instead of sharing, and overwriting,
/// the other job's directory, record and container name.
pub fn reserve_run_dir(root: &Path, name_at: impl Fn(SystemTime) -> String) -> Result<String> {
    let runs = runs_dir(root);
    std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    for _ in 0..5 {
        let now = SystemTime::now();
        let name = name_at(now);
        match std::fs::create_dir(runs.join(&name)) {
            Ok(()) => return Ok(name),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let into_second = now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                std::thread::sleep(Duration::from_nanos(1_000_000_000 - u64::from(into_second)));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("creating {}", runs.join(&name).display()))
            }
        }
    }
    bail!(
        "every job name tried in the last seconds already has a directory in {}: is another launch of the same experiment and commit looping? try again",
        runs.display()
    )
}

/// Claim the job name `name`, one passed on by a lapsed claim (see
/// [`RemoteClaim::inherited`](crate::experiment::backend::RemoteClaim::inherited)):
/// its run directory, made, or reused where a launch of it from here left
/// it without a record (that launch created no job); refused where it
/// holds a record, which SageMaker does not list.
pub fn reserve_named(root: &Path, name: &str) -> Result<()> {
    let runs = runs_dir(root);
    std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    match std::fs::create_dir(runs.join(name)) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let record = record_path(root, name);
            if record.exists() {
                bail!(
                    "the claim of these pins names training job `{name}`, which SageMaker does not list, and {} records it: `cargo xtask experiment status {name}` looks at it, or delete the claim (`claims/` in the config bucket) if no launch is creating that job; nothing was launched",
                    record.display()
                );
            }
            Ok(())
        }
        done => done.with_context(|| format!("creating {}", runs.join(name).display())),
    }
}

/// Now, as RFC 3339 UTC to the second.
pub fn now() -> String {
    rfc3339(std::time::SystemTime::now()).unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// `t` as RFC 3339 UTC to the second; none outside the years 1970 to 9999
/// (a file's mtime set by hand, an API's odd timestamp), which the
/// formatter cannot write and would panic on.
pub fn rfc3339(t: std::time::SystemTime) -> Option<String> {
    const YEAR_10000: u64 = 253_402_300_800;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .filter(|d| d.as_secs() < YEAR_10000)
        .map(|_| humantime::format_rfc3339_seconds(t).to_string())
}

/// The last validation epoch of `metrics.json` (a list, or `{ "epochs": [...] }`).
pub fn final_metrics(bytes: &[u8]) -> serde_json::Value {
    let all: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let list = all
        .as_array()
        .cloned()
        .or_else(|| all.get("epochs").and_then(|e| e.as_array()).cloned())
        .unwrap_or_default();
    list.into_iter()
        .rev()
        .find(|m| m["split"] == "val")
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_metrics_takes_the_last_validation_epoch() {
        let m = final_metrics(
            br#"[{"split":"train","epoch":1},{"split":"val","epoch":1,"iou":0.5},{"split":"val","epoch":2,"iou":0.7},{"split":"train","epoch":3}]"#,
        );
        assert_eq!(m["epoch"], 2);
        assert_eq!(m["iou"], 0.7);
        assert_eq!(final_metrics(b"not json"), serde_json::Value::Null);
    }

    #[test]
    fn times_outside_what_rfc3339_writes_are_none_not_a_panic() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(86_400)).as_deref(),
            Some("1970-01-02T00:00:00Z")
        );
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)), None);
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(253_402_300_800)),
            None
        );
    }

    /// `list --remote`: the bucket's record of a job is shown, unless the
    /// one here has ended and it has not (the end's put failed).
    #[test]
    fn a_remote_record_never_hides_an_end_recorded_here() {
        let record = |job: &str, status: Status| RunRecord {
            status,
            ..RunRecord::for_tests(job)
        };
        let local = vec![
            record("ended-here", Status::Completed),
            record("moved-on-there", Status::InProgress),
            record("only-here", Status::InProgress),
        ];
        let remote = vec![
            record("ended-here", Status::InProgress),
            record("moved-on-there", Status::Stopped),
            record("only-there", Status::Failed),
        ];
        let merged: Vec<(String, Status)> = RunRecord::merge_remote(local, remote)
            .into_iter()
            .map(|r| (r.job_name, r.status))
            .collect();
        let want = [
            ("ended-here", Status::Completed),
            ("moved-on-there", Status::Stopped),
            ("only-here", Status::InProgress),
            ("only-there", Status::Failed),
        ];
        assert_eq!(merged, want.map(|(j, s)| (j.to_string(), s)));
    }

    #[test]
    fn reserved_names_never_share_a_run_dir() {
        let dir = tempfile::tempdir().unwrap();
        let name_at = |t: SystemTime| sca_spec::job_name("exp", "0123456789", t);
        let first = reserve_run_dir(dir.path(), name_at).unwrap();
        let second = reserve_run_dir(dir.path(), name_at).unwrap();
        assert_ne!(first, second);
        assert!(
            second > first,
            "{first} then {second}: names sort by launch"
        );
        for name in [&first, &second] {
            assert!(run_dir(dir.path(), name).is_dir(), "{name}");
        }
    }

    /// A name passed on is reserved as it is: made, or reused where a
    /// launch of it from here left its directory without a record; one
    /// with a record is refused, naming it.
    #[test]
    fn a_name_passed_on_is_reserved_unless_recorded_here() {
        let dir = tempfile::tempdir().unwrap();
        let job = "exp-0123456-20991231-235959";
        reserve_named(dir.path(), job).unwrap();
        assert!(run_dir(dir.path(), job).is_dir());
        reserve_named(dir.path(), job).unwrap();
        std::fs::write(record_path(dir.path(), job), "{}").unwrap();
        let err = reserve_named(dir.path(), job).unwrap_err().to_string();
        assert!(
            err.contains(job)
                && err.contains("record.json")
                && err.contains("nothing was launched"),
            "{err}"
        );
    }

    #[test]
    fn load_refuses_paths_and_names_missing_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let err = RunRecord::load(dir.path(), "../etc")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a job name"), "{err}");
        let err = RunRecord::load(dir.path(), "nope-abc")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no run record for job `nope-abc`"), "{err}");
    }

    /// A run directory copied under another name holds job J's record: it
    /// is refused by its own name and left out of the list, not read as a
    /// second run of J (whose config and curves it would show).
    #[test]
    fn a_copied_run_directory_is_not_a_second_run() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let job = "exp-0123456-20261126-120000";
        RunRecord::for_tests(job).save(root).unwrap();
        let copy = format!("{job}.keep");
        std::fs::create_dir_all(run_dir(root, &copy)).unwrap();
        std::fs::copy(record_path(root, job), record_path(root, &copy)).unwrap();
        let e = format!("{:#}", RunRecord::load(root, &copy).unwrap_err());
        assert!(
            e.contains(&format!("records job `{job}`, not `{copy}`"))
                && e.contains("rename it back"),
            "{e}"
        );
        let all: Vec<String> = RunRecord::all(root)
            .into_iter()
            .map(|r| r.job_name)
            .collect();
        assert_eq!(all, [job]);
        assert!(RunRecord::load(root, job).is_ok());
    }

    /// A newer xtask's record this one cannot read says to update the
    /// checkout, in `load` and in the list alike.
    #[test]
    fn a_newer_record_this_xtask_cannot_read_says_to_update() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let job = "exp-0123456-20261126-120000";
        let mut v = serde_json::to_value(RunRecord::for_tests(job)).unwrap();
        v["record_version"] = (RECORD_VERSION + 1).into();
        v["backend"] = "batch".into();
        std::fs::create_dir_all(run_dir(root, job)).unwrap();
        std::fs::write(record_path(root, job), v.to_string()).unwrap();
        let e = format!("{:#}", RunRecord::load(root, job).unwrap_err());
        assert!(
            e.contains("newer than the version") && e.contains("git pull"),
            "{e}"
        );
        v["record_version"] = RECORD_VERSION.into();
        std::fs::write(record_path(root, job), v.to_string()).unwrap();
        let e = format!("{:#}", RunRecord::load(root, job).unwrap_err());
        assert!(
            e.contains("is not a run record") && !e.contains("git pull"),
            "{e}"
        );
    }

    #[test]
    fn a_relative_runs_dir_is_made_absolute() {
        let root = Path::new("/w");
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(runs_dir_of(Some("runs".into()), root), cwd.join("runs"));
        assert_eq!(runs_dir_of(Some("/r".into()), root), Path::new("/r"));
        assert_eq!(
            runs_dir_of(Some("".into()), root),
            root.join("target/sca-runs")
        );
        assert_eq!(runs_dir_of(None, root), root.join("target/sca-runs"));
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let job = reserve_run_dir(root, |t| sca_spec::job_name("exp", "0123456789", t)).unwrap();
        RunRecord::for_tests(&job).save(root).unwrap();
        // Two writers (the launcher and `stop`, say), each reading the record,
        // changing it and writing it back: every change survives.
        const EACH: usize = 25;
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..EACH {
                        RunRecord::update(root, &job, |r| {
                            let seen = r.data_objects;
                            // Widens the window another writer would hit.
                            std::thread::sleep(Duration::from_millis(1));
                            r.data_objects = seen + 1;
                            Ok(())
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(RunRecord::load(root, &job).unwrap().data_objects, 2 * EACH);
        // A failing change writes nothing.
        let e = RunRecord::update::<()>(root, &job, |r| {
            r.status = Status::Failed;
            anyhow::bail!("no")
        });
        assert!(e.is_err());
        assert_eq!(
            RunRecord::load(root, &job).unwrap().status,
            Status::InProgress
        );
    }

    /// A launch's twins: a completed run of the same pins is its result; one
    /// not ended is a run in progress; other pins or backends are neither.
    #[test]
    fn twins_match_pins_backend_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut running = RunRecord::for_tests("exp-0123456-20261126-120000");
        running.pins.data_manifest_sha256 = Some("ab".into());
        running.save(root).unwrap();
        let pins = running.pins.clone();
        let names = |backend, pins: &Pins| -> Vec<String> {
            RunRecord::running_twins(root, backend, pins)
                .into_iter()
                .map(|r| r.job_name)
                .collect()
        };
        assert_eq!(names(Backend::Local, &pins), [running.job_name.clone()]);
        assert!(RunRecord::completed_twin(root, Backend::Local, &pins).is_none());
        assert!(names(Backend::Docker, &pins).is_empty());
        let mut other = pins.clone();
        other.experiment_sha256 = "1".into();
        assert!(names(Backend::Local, &other).is_empty());
        // Newest first.
        let mut newer = running.clone();
        newer.job_name = "exp-0123456-20261126-130000".into();
        newer.started = "2099-01-01T00:00:00Z".into();
        newer.save(root).unwrap();
        assert_eq!(
            names(Backend::Local, &pins),
            [newer.job_name.clone(), running.job_name.clone()]
        );
        for job in [&running.job_name, &newer.job_name] {
            RunRecord::update(root, job, |r| {
                r.status = Status::Failed;
                Ok(())
            })
            .unwrap();
        }
        assert!(names(Backend::Local, &pins).is_empty());
    }

    /// A refresh read before another process recorded the end (`status`
    /// racing `run --wait`) saves nothing over that end.
    #[test]
    fn a_stale_save_never_undoes_an_end() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let job = "exp-0123456-20261126-120000";
        let stale = RunRecord::for_tests(job);
        stale.save(root).unwrap();
        RunRecord::update(root, job, |r| {
            r.status = Status::Completed;
            r.finished = Some(now());
            Ok(())
        })
        .unwrap();
        let mut looked = stale.clone();
        looked.secondary_status = Some("Training".into());
        let saved = looked.save_unless_ended(root).unwrap();
        assert_eq!(saved.status, Status::Completed);
        assert!(saved.secondary_status.is_none(), "{saved:?}");
        stale.save(root).unwrap();
        let stored = RunRecord::load(root, job).unwrap();
        assert_eq!(stored.status, Status::Completed);
        assert!(stored.finished.is_some());
        // An end replaces an end, and a running look a running one.
        let mut failed = stored.clone();
        failed.status = Status::Failed;
        assert_eq!(
            failed.save_unless_ended(root).unwrap().status,
            Status::Failed
        );
        let other = "exp-0123456-20261126-130000";
        RunRecord::for_tests(other).save(root).unwrap();
        let mut stopping = RunRecord::for_tests(other);
        stopping.status = Status::Stopping;
        stopping.save(root).unwrap();
        assert_eq!(
            RunRecord::load(root, other).unwrap().status,
            Status::Stopping
        );
    }

    /// A record of a newer format is read, but never written: an older
    /// xtask would drop the keys it does not know.
    #[test]
    fn a_newer_record_is_never_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let job = "exp-0123456-20261126-120000";
        let mut newer = serde_json::to_value(RunRecord::for_tests(job)).unwrap();
        newer["record_version"] = (RECORD_VERSION + 1).into();
        newer["added_later"] = "kept".into();
        let path = record_path(root, job);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes = serde_json::to_vec_pretty(&newer).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let check = |e: anyhow::Error| {
            let e = format!("{e:#}");
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains("update the checkout"), "{e}");
        };
        let loaded = RunRecord::load(root, job).unwrap();
        check(loaded.save(root).unwrap_err());
        check(RunRecord::mark_stopping(root, job).unwrap_err());
        // Nor does a record of this version replace it.
        check(RunRecord::for_tests(job).save(root).unwrap_err());
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert_eq!(stored_version(b"{}"), None);
    }

    /// A record as written before the pins were one type reads, and writes
    /// back, key for key and value for value.
    #[test]
    fn records_keep_their_keys_and_values() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let old = serde_json::json!({
            "record_version": 1, "job_name": "exp-0123456-20261126-120000",
            "backend": "sagemaker", "experiment": "exp", "experiment_file": "experiments/exp.toml",
            "experiment_sha256": "e1", "schema_version": 1,
            "commit": "0123456789abcdef0123456789abcdef01234567", "dirty": true,
            "diff_sha256": "d1", "image": format!("1.dkr.ecr.us-west-2.amazonaws.com/sca-train@{digest}"),
            "image_digest": digest,
            "resolved_job": {
                "region": "us-west-2", "role_arn": "", "output": "", "config_bucket": "",
                "ecr_repository": "", "image_name": "", "instance_type": "ml.m5.xlarge",
                "instance_count": 1, "volume_gb": 1, "max_runtime_secs": 60,
                "max_wait_secs": null, "checkpoint_s3": null,
            },
            "data_manifest_sha256": "a1", "data_objects": 4,
            "hyperparameters": {"commit": "0123456789abcdef0123456789abcdef01234567"},
            "device_override": "cpu", "init_checkpoint": "s3://b/model.tar.gz",
            "config_uri": "s3://c/experiments/x/config/", "rerun_of": "exp-0123456-20261126-110000",
            "training_job_arn": "arn:x", "started": "2026-11-26T12:00:00Z",
            "finished": "2026-11-26T13:00:00Z", "status": "Completed",
            "secondary_status": "Completed", "final_metrics": {"val:iou": 0.9},
            "artifacts": "s3://o/model.tar.gz", "checkpoint_uri": "s3://k/exp/",
        });
        let record: RunRecord = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(record.pins.image_digest(), Some(digest.as_str()));
        assert_eq!(
            record.pins.init_checkpoint.as_deref(),
            Some("s3://b/model.tar.gz")
        );
        let back: serde_json::Value = serde_json::from_slice(&record.to_json_pretty()).unwrap();
        assert_eq!(back, old);
        // A local run's record (no image, no diff) has no such keys.
        let local = RunRecord::for_tests("exp-0123456-20261126-120000");
        let json = serde_json::to_value(&local).unwrap();
        for key in ["image", "image_digest", "diff_sha256", "init_checkpoint"] {
            assert!(json.get(key).is_none(), "{key}: {json}");
        }
        // A hand-edited or foreign record whose hashes are not hex is not a
        // record: `list` once panicked shortening such a commit.
        for (key, bad) in [
            ("commit", "ééééééé"),
            ("experiment_sha256", "x1"),
            ("diff_sha256", "é"),
            ("data_manifest_sha256", "sha256:00"),
        ] {
            let mut edited = old.clone();
            edited[key] = bad.into();
            let e = serde_json::from_value::<RunRecord>(edited).unwrap_err();
            assert!(e.to_string().contains("not a hex"), "{key}: {e}");
        }
        // Nor is one whose image pin is a tag, disagrees with its digest or
        // is half there: such a record once read as "no image", and its
        // next save dropped the pin.
        let tag = "1.dkr.ecr.us-west-2.amazonaws.com/sca-train:latest";
        let other = format!("r@sha256:{}", "cd".repeat(32));
        for (edit, says) in [
            (
                serde_json::json!({"image": tag}),
                "does not name an image by digest",
            ),
            (serde_json::json!({"image": other}), "disagree"),
            (
                serde_json::json!({"image_digest": null}),
                "`image` without `image_digest`",
            ),
            (
                serde_json::json!({"image": null}),
                "`image_digest` without `image`",
            ),
        ] {
            let mut edited = old.clone();
            for (k, v) in edit.as_object().unwrap() {
                match v {
                    serde_json::Value::Null => edited.as_object_mut().unwrap().remove(k),
                    v => edited.as_object_mut().unwrap().insert(k.clone(), v.clone()),
                };
            }
            let e = serde_json::from_value::<RunRecord>(edited).unwrap_err();
            assert!(e.to_string().contains(says), "{edit}: {e}");
        }
    }

    #[test]
    fn status_names_round_trip() {
        for s in [
            Status::InProgress,
            Status::Completed,
            Status::Failed,
            Status::Stopping,
            Status::Stopped,
        ] {
            assert_eq!(Status::parse(&s.to_string()), Some(s));
        }
        assert!(Status::Completed.is_terminal() && !Status::InProgress.is_terminal());
    }
}
