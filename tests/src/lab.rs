//! An experiment lab for the end-to-end tests: a tiny experiment file, a
//! private runs directory and git repository of its own, and S3 datasets
//! uploaded to the emulator.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::{boto3, cargo_bin, require_services, run_xtask_env, test_registry, unique, Run};

/// A tiny experiment (U-Net depth 2 on 64-pixel tiles) over `data`.
pub fn experiment(
    name: &str,
    imagery: &str,
    masks: &str,
    synthetic: bool,
    epochs: u32,
    job: &str,
) -> String {
    let synth = if synthetic {
        "synthetic = { tiles = 24, seed = 5 }"
    } else {
        ""
    };
    format!(
        r#"[experiment]
name = "{name}"
seed = 3

[dataset]
imagery = "{imagery}"
masks = "{masks}"
imagery_regex = "_AnalyticMS_SR_clip_tiled$"
mask_regex = "_binary$"
tile_size = 64
train_fraction = 0.75
block_zoom = 13
{synth}

[[channels]]
bands = [1, 2, 3, 4]
mean = [0.35, 0.35, 0.35, 0.35]
std = [0.25, 0.25, 0.25, 0.25]

[[classes]]
name = "snow"
color = "white"

[model]
depth = 2
base_width = 4
loss = {{ bce = 1.0, dice = 0.5 }}

[train]
epochs = {epochs}
batch_size = 4
learning_rate = 0.01
checkpoint_every = 1

[job]
instance_type = "ml.m5.xlarge"
max_runtime = "1h"
{job}
"#
    )
}

/// A temporary experiment directory with `exp.toml`, a private runs
/// directory and a clean git repository of its own (through `GIT_DIR` and
/// `GIT_WORK_TREE`), so that what the tests pin does not depend on the state
/// of the workspace's own tree while it is being edited.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub runs: PathBuf,
    pub repo: tempfile::TempDir,
}

impl Lab {
    pub fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("exp.toml"), text).unwrap();
        let runs = dir.path().join("runs");
        let repo = git_repo();
        Lab { dir, runs, repo }
    }

    pub fn file(&self) -> String {
        self.dir.path().join("exp.toml").display().to_string()
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SCA_RUNS_DIR", self.runs.display().to_string()),
            (
                "GIT_DIR",
                self.repo.path().join(".git").display().to_string(),
            ),
            ("GIT_WORK_TREE", self.repo.path().display().to_string()),
        ]
    }

    pub fn xtask(&self, args: &[&str]) -> Run {
        self.xtask_env(args, &[])
    }

    pub fn xtask_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let mut env: Vec<(&str, String)> = self.env();
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_xtask_env(args, &refs)
    }

    /// `n` launchers of `xtask ARGS...` started at once (two terminals, a
    /// script), each run to its end.
    pub fn xtask_at_once(&self, args: &[&str], n: usize) -> Vec<Run> {
        let launchers: Vec<std::process::Child> = (0..n)
            .map(|_| {
                crate::xtask(args)
                    .envs(self.env())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        launchers
            .into_iter()
            .map(|c| c.wait_with_output().unwrap().into())
            .collect()
    }

    /// The record printed as the last line of stdout by `--output json`.
    pub fn record(run: &Run) -> Value {
        let last = run.stdout.lines().last().unwrap_or("");
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: last line {last:?}\n{run:?}"))
    }

    /// The commit a launch from this lab pins.
    pub fn commit(&self) -> String {
        let out = Command::new("git")
            .current_dir(self.repo.path())
            .args(["rev-parse", "HEAD"])
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .output()
            .unwrap();
        assert!(out.status.success(), "git rev-parse HEAD");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The job of this lab whose name starts with `prefix` (an experiment
    /// name and `-`), found by its run directory.
    pub fn job_named(&self, prefix: &str) -> String {
        std::fs::read_dir(&self.runs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|n| n.starts_with(prefix))
            .unwrap_or_else(|| panic!("no job directory starting with {prefix}"))
    }

    /// `experiment status JOB`'s record (after it refreshed it).
    pub fn status(&self, job: &str) -> Value {
        Self::record(
            &self
                .xtask(&["experiment", "status", job, "--output", "json"])
                .ok(),
        )
    }

    /// How many jobs have a directory (a sweep's `.sweeps` is not one).
    pub fn job_dirs(&self) -> usize {
        self.jobs().len()
    }

    /// The run directories (not `.sweeps`, `.claims`), by name.
    pub fn jobs(&self) -> Vec<std::path::PathBuf> {
        let mut jobs: Vec<std::path::PathBuf> = std::fs::read_dir(&self.runs)
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        jobs.sort();
        jobs
    }
}

/// A git repository with one commit and a clean tree.
pub fn git_repo() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .current_dir(repo.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    std::fs::write(repo.path().join("a.txt"), "a").unwrap();
    git(&["add", "a.txt"]);
    git(&["commit", "-qm", "a"]);
    repo
}

pub fn s3_dataset(bucket: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let bin = cargo_bin("sca-train", "sca-train", false);
    let ok = Command::new(bin)
        .args(["synth", "--out"])
        .arg(dir.path())
        .args(["--tiles", "16", "--seed", "9", "--tile-size", "64"])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "sca-train synth");
    boto3(
        r#"
import os, sys
s3 = client("s3")
bucket, root = sys.argv[1], sys.argv[2]
for d, _, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        s3.upload_file(p, bucket, "data/" + os.path.relpath(p, root))
"#,
        &[bucket, dir.path().to_str().unwrap()],
    )
    .ok();
    format!("s3://{bucket}/data")
}

pub fn make_bucket(bucket: &str) {
    boto3(
        "import sys\nclient('s3').create_bucket(Bucket=sys.argv[1], CreateBucketConfiguration={'LocationConstraint': 'us-west-2'})",
        &[bucket],
    )
    .ok();
}

/// A safetensors file's tensor data, after its header (whose metadata
/// carries the run's timings): equal for equal weights.
pub fn safetensors_weights(path: &std::path::Path) -> Vec<u8> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    b[8 + n..].to_vec()
}

/// What a SageMaker launch against the emulator needs: an uploaded dataset,
/// a config bucket, the `[job]` lines naming it and an output, and an image
/// reference by digest (the emulator runs nothing).
pub struct Emulated {
    pub data: String,
    pub config_bucket: String,
    pub image: String,
    pub job_table: String,
}

pub fn emulated() -> Emulated {
    require_services();
    let data_bucket = unique("sca-data").to_lowercase();
    let config_bucket = unique("sca-cfg").to_lowercase();
    make_bucket(&data_bucket);
    make_bucket(&config_bucket);
    Emulated {
        data: s3_dataset(&data_bucket),
        image: format!("{}/sca-train@sha256:{}", test_registry(), "a".repeat(64)),
        job_table: format!(
            "config_bucket = \"{config_bucket}\"\noutput = \"s3://{data_bucket}/models\""
        ),
        config_bucket,
    }
}

/// A run's final metrics less their wall time (`seconds`): equal for runs
/// that trained the same.
pub fn metrics_without_time(m: &Value) -> Value {
    let mut m = m.clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("seconds");
    }
    m
}

/// The first file (in path order) with extension `ext` under `dir`, at any
/// depth: a tile of a generated dataset, to change or delete.
pub fn first_file(dir: &std::path::Path, ext: &str) -> PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    let mut found = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                found.push(p);
            }
        }
    }
    found.sort();
    found.into_iter().next().expect("a tile")
}
