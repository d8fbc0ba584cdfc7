//! `cargo xtask experiment run`: validate, pin to the commit, run, and record.
//!
//! This version has the `local` backend: `sca-train train` as a host process
//! against a SageMaker-style `/opt/ml` tree in `target/sca-runs/<job>/opt/ml`.
//! The run record (`target/sca-runs/<job>/record.json`) holds what is needed
//! to run the identical job again.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::experiment::validate::render;
use crate::flags::{self, Backend, Output};
use crate::{fsx, image, workspace};

/// Everything needed to rerun a job, and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub job_name: String,
    pub backend: String,
    pub experiment: String,
    pub experiment_file: String,
    pub experiment_sha256: String,
    pub schema_version: u32,
    pub commit: String,
    pub dirty: bool,
    /// sha256 of `git diff HEAD` plus the untracked files' names, when dirty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff_sha256: Option<String>,
    pub resolved_job: sca_spec::ResolvedJob,
    pub started: String,
    pub finished: Option<String>,
    /// `Completed`, `Failed`, `Stopped`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// The last validation metrics line's values.
    pub final_metrics: serde_json::Value,
    /// Where the model directory is.
    pub artifacts: String,
}

impl flags::Run {
    pub fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let defaults = workspace::defaults()?;
        let report = sca_spec::validate_file(&self.file, &defaults);
        if !report.is_valid() {
            for d in &report.diagnostics {
                eprintln!("{}", render(d, report.source.as_deref()));
            }
            bail!("{} is invalid: nothing was launched", self.file.display());
        }
        let exp = report
            .experiment
            .expect("valid reports carry the experiment");
        let resolved = report.job.expect("valid reports carry the resolved job");
        let bytes = std::fs::read(&self.file)?;
        let sha = hex::encode(Sha256::digest(&bytes));

        let rev = image::git::revision(&root)?.context(
            "the workspace is not a git repository with a commit: runs are pinned to a commit",
        )?;
        if rev.dirty && !self.allow_dirty {
            bail!("the working tree has uncommitted changes (see `git status`): commit them so the run is pinned to a commit, or pass --allow-dirty to record a hash of the diff");
        }
        let diff_sha256 = rev.dirty.then(|| diff_hash(&root)).transpose()?;
        let job_name = sca_spec::job_name(&exp.experiment.name, &rev.commit, SystemTime::now());
        let exp_path = std::fs::canonicalize(&self.file)?;
        let exp_dir = exp_path
            .parent()
            .expect("a file has a parent")
            .to_path_buf();
        let run_dir = root.join("target/sca-runs").join(&job_name);
        let ml = run_dir.join("opt/ml");

        let mut hyper = serde_json::Map::new();
        hyper.insert("experiment_sha256".into(), sha.clone().into());
        hyper.insert("data_base_dir".into(), exp_dir.display().to_string().into());
        if let Some(init) = exp
            .model
            .init_checkpoint
            .as_deref()
            .and_then(|i| i.strip_prefix("experiment:"))
        {
            let model = latest_model(&root, init)?;
            hyper.insert("init_checkpoint".into(), model.display().to_string().into());
        }
        let mut record = RunRecord {
            job_name: job_name.clone(),
            backend: "local".into(),
            experiment: exp.experiment.name.clone(),
            experiment_file: self.file.display().to_string(),
            experiment_sha256: sha,
            schema_version: sca_spec::SCHEMA_VERSION,
            commit: rev.commit.clone(),
            dirty: rev.dirty,
            diff_sha256,
            resolved_job: resolved,
            started: now(),
            finished: None,
            status: "InProgress".into(),
            failure_reason: None,
            final_metrics: serde_json::Value::Null,
            artifacts: ml.join("model").display().to_string(),
        };
        if self.dry_run {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "record": record, "hyperparameters": hyper })
                )?
            );
            return Ok(ExitCode::SUCCESS);
        }
        match self.backend {
            Backend::Local => {}
        }

        // The /opt/ml tree, as SageMaker lays it out.
        let config = ml.join("input/data/config");
        std::fs::create_dir_all(&config)?;
        std::fs::copy(
            &exp_path,
            config.join(exp_path.file_name().expect("a file name")),
        )?;
        let cfg = ml.join("input/config");
        fsx::write_atomic(
            &cfg.join("hyperparameters.json"),
            serde_json::to_string_pretty(&hyper)?.as_bytes(),
        )?;
        fsx::write_atomic(
            &cfg.join("resourceconfig.json"),
            br#"{"current_host": "algo-1", "hosts": ["algo-1"]}"#,
        )?;
        fsx::write_atomic(&cfg.join("inputdataconfig.json"), br#"{"config": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}}"#)?;
        write_record(&run_dir, &record)?;

        let bin = build_trainer(&root)?;
        eprintln!(
            "running {job_name} (local backend) in {}",
            run_dir.display()
        );
        let status = Command::new(&bin)
            .arg("train")
            .env("SCA_OPT_ML", &ml)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| tee(&mut child, &run_dir.join("train.log")))
            .with_context(|| format!("starting {}", bin.display()))?;

        record.finished = Some(now());
        let failure = std::fs::read_to_string(ml.join("output/failure"))
            .ok()
            .map(|s| s.trim().to_string());
        record.status = match (status.code(), &failure) {
            (Some(0), _) => "Completed",
            (Some(143), None) => "Stopped",
            _ => "Failed",
        }
        .into();
        record.failure_reason = failure
            .or_else(|| (!status.success()).then(|| format!("sca-train exited with {status}")));
        record.final_metrics = final_metrics(&ml.join("model/metrics.json"));
        write_record(&run_dir, &record)?;
        match self.output {
            Output::Json => println!("{}", serde_json::to_string(&record)?),
            Output::Text => eprintln!(
                "{job_name}: {} (record: {})",
                record.status,
                run_dir.join("record.json").display()
            ),
        }
        if record.status == "Completed" {
            Ok(ExitCode::SUCCESS)
        } else {
            if let Some(r) = &record.failure_reason {
                eprintln!("error: {job_name} {}: {r}", record.status.to_lowercase());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Copy the child's stdout to ours and to `log` as it comes; wait for it.
fn tee(child: &mut std::process::Child, log: &Path) -> std::io::Result<std::process::ExitStatus> {
    use std::io::{BufRead, Write};
    let mut file = std::fs::File::create(log)?;
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            writeln!(file, "{line}")?;
        }
    }
    child.wait()
}

/// The trainer binary. The dev profile suffices: the workspace compiles
/// sca-train and its numeric dependencies at opt-level 3 even there, and the
/// tests share these artifacts.
fn build_trainer(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--quiet", "-p", "sca-train"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building sca-train failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("debug/sca-train"))
}

/// `model.safetensors` of the newest completed local run of `experiment`.
fn latest_model(root: &Path, experiment: &str) -> Result<PathBuf> {
    let mut runs: Vec<RunRecord> = std::fs::read_dir(root.join("target/sca-runs"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("record.json")).ok())
        .filter_map(|b| serde_json::from_slice::<RunRecord>(&b).ok())
        .filter(|r| r.experiment == experiment && r.status == "Completed")
        .collect();
    runs.sort_by(|a, b| a.finished.cmp(&b.finished));
    let run = runs.pop().with_context(|| format!("init_checkpoint names experiment `{experiment}`, which has no completed run: run it first"))?;
    Ok(PathBuf::from(run.artifacts).join("model.safetensors"))
}

fn write_record(run_dir: &Path, record: &RunRecord) -> Result<()> {
    fsx::write_atomic(
        &run_dir.join("record.json"),
        serde_json::to_string_pretty(record)?.as_bytes(),
    )?;
    Ok(())
}

fn final_metrics(path: &Path) -> serde_json::Value {
    let Ok(bytes) = std::fs::read(path) else {
        return serde_json::Value::Null;
    };
    let all: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
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

fn diff_hash(root: &Path) -> Result<String> {
    let mut h = Sha256::new();
    for args in [
        &["diff", "HEAD", "--binary"][..],
        &["ls-files", "--others", "--exclude-standard"][..],
    ] {
        let out = Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .context("running git")?;
        h.update(&out.stdout);
    }
    Ok(hex::encode(h.finalize()))
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
