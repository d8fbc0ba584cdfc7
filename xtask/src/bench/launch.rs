//! `cargo xtask bench launch`: the time from starting `cargo xtask experiment
//! run --backend sagemaker` (binary built, image already pushed and named by
//! digest) until `CreateTrainingJob` has returned, beside the SageMaker Python
//! SDK's `Estimator(...).fit(wait=False)` doing the same launch against the
//! same AWS emulator, alternating, in the same run.
//!
//! Our launch does strictly more: validation, git pinning, the data
//! manifest's S3 listing, the bucket check, the config upload and the
//! record's upload. The SDK is installed in a throw-away virtualenv under
//! `target/bench-venv`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Cmd, Shell};

use super::median;
use crate::{flags, services, workspace};

const SDK_SCRIPT: &str = include_str!("sagemaker_sdk.py");
const ROLE: &str = "arn:aws:iam::123456789012:role/SageMakerSnowCover";

impl flags::BenchLaunch {
    pub fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let services = match std::env::var("AWS_ENDPOINT_URL") {
            Err(_) => Some(services::up_shared(&root)?),
            Ok(_) => None,
        };
        let env = services
            .as_ref()
            .map(|s| s.env.vars.clone())
            .unwrap_or_default();
        let result = self.measure(&root, &env);
        if let Some(services) = services {
            services.release(&root)?;
        }
        result
    }

    fn measure(&self, root: &Path, env: &[(String, String)]) -> Result<ExitCode> {
        let python = venv(root)?;
        let xtask = std::env::current_exe().context("locating the xtask binary")?;
        let lab = tempfile::tempdir()?;
        let stamp = std::process::id();
        let data_bucket = format!("sca-bench-data-{stamp}");
        let config_bucket = format!("sca-bench-config-{stamp}");
        let setup = "import boto3, os, sys\ns3 = boto3.client('s3', region_name='us-west-2')\n\
for b in sys.argv[1:3]:\n    s3.create_bucket(Bucket=b, CreateBucketConfiguration={'LocationConstraint': 'us-west-2'})\n\
root = sys.argv[3]\n\
for d, _, files in os.walk(root):\n    for f in files:\n        p = os.path.join(d, f)\n        s3.upload_file(p, sys.argv[1], 'data/' + os.path.relpath(p, root))\n";
        let data = lab.path().join("data");
        sca_data::synth::synth(&data, 64, 1, 64, 15).context("making the benchmark's tiles")?;
        let sh = workspace::shell(root)?;
        cmd!(
            sh,
            "{python} -c {setup} {data_bucket} {config_bucket} {data}"
        )
        .quiet()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .run()
        .context("setting up the emulator's buckets failed")?;
        let exp = lab.path().join("bench.toml");
        let template = std::fs::read_to_string(root.join("experiments/quickstart.toml"))?;
        let text = template
            .replace("name = \"quickstart\"", "name = \"bench-launch\"")
            .replace(
                "\"../target/sca-data/quickstart\"",
                &format!("\"s3://{data_bucket}/data\""),
            )
            .replace("synthetic = { tiles = 96, seed = 2019 }\n", "")
            .replace("tile_size = 128", "tile_size = 64")
            .replace(
                "[job]\n",
                &format!("[job]\nconfig_bucket = \"{config_bucket}\"\noutput = \"s3://{data_bucket}/models\"\n"),
            );
        std::fs::write(&exp, text)?;
        let image = format!("127.0.0.1:5124/sca-train@sha256:{}", "b".repeat(64));

        let mut ours = Vec::new();
        let mut peer = Vec::new();
        let runs_dir = lab.path().join("runs");
        // One launch of each first: disk caches and the emulator warm up.
        // `--force`: the emulator completes each job at once, and without it
        // every launch after the first found that completed twin and only
        // printed it, timing a lookup, not a launch.
        for i in 0..=self.runs {
            let t = timed(
                cmd!(
                    sh,
                    "{xtask} experiment run {exp} --backend sagemaker --image {image} --allow-dirty --force"
                )
                .env("SCA_RUNS_DIR", &runs_dir),
                env,
                "our launch",
            )?;
            let job = format!("bench-sdk-{stamp}-{i}");
            let config = format!("s3://{config_bucket}/experiments/{job}/config/");
            let p = timed(
                sdk(&sh, &python, &image, &data_bucket, &config, &[job]),
                env,
                "the SageMaker SDK's launch",
            )?;
            if i > 0 {
                ours.push(t);
                peer.push(p);
            }
        }
        // Each timed launch made a job of its own: what was timed is a launch.
        let launched = std::fs::read_dir(&runs_dir)
            .with_context(|| format!("listing {}", runs_dir.display()))?
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count();
        if launched != self.runs + 1 {
            bail!(
                "{launched} launches recorded in {}, {} timed: a launch did not launch",
                runs_dir.display(),
                self.runs + 1
            );
        }
        let (o, p) = (median(&mut ours), median(&mut peer));
        let mut rows = format!(
            "| launches per side | `experiment run --backend sagemaker` | SageMaker Python SDK `fit(wait=False)` | ratio |\n|---|---|---|---|\n| {} | {:.3} s (median; min {:.3}, max {:.3}) | {:.3} s (median; min {:.3}, max {:.3}) | {:.1}x |\n\n\
Both from process start until `CreateTrainingJob` returned, against `moto_server` on 127.0.0.1, image already pushed and passed by digest to both (`--image REF@sha256:…` for ours; without it, ours adds the registry check of `image push`, whose no-op time is in the image section), alternating. Ours also validates, pins the commit, lists the dataset's {} S3 objects for the data manifest, checks the config bucket and that no job has its name yet, uploads the config channel (never replacing an object) and the run record; the SDK uploads nothing.\n",
            self.runs,
            o,
            ours.first().unwrap_or(&0.0),
            ours.last().unwrap_or(&0.0),
            p,
            peer.first().unwrap_or(&0.0),
            peer.last().unwrap_or(&0.0),
            p / o,
            64 * 2,
        );
        if self.sweep > 0 {
            rows.push_str(&self.sweep_rows(
                root,
                env,
                (&python, &xtask),
                &exp,
                &image,
                lab.path(),
                (&data_bucket, &config_bucket),
            )?);
        }
        println!("{rows}");
        if !self.no_record {
            super::record(root, "launch", &rows)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl flags::BenchLaunch {
    /// A sweep of `self.sweep` points over the learning rate, launched by
    /// `experiment sweep --backend sagemaker` and by the SDK in a loop, each
    /// timed from process start until every point's `CreateTrainingJob` has
    /// returned (ours also waits for each job's end, which the emulator
    /// reports at once); a table row per point.
    #[allow(clippy::too_many_arguments)]
    fn sweep_rows(
        &self,
        root: &Path,
        env: &[(String, String)],
        (python, xtask): (&Path, &Path),
        exp: &Path,
        image: &str,
        lab: &Path,
        (data_bucket, config_bucket): (&str, &str),
    ) -> Result<String> {
        let n = self.sweep;
        let rates: Vec<String> = (1..=n).map(|i| format!("{:e}", 1e-3 * i as f64)).collect();
        let base = std::fs::read_to_string(exp)?;
        let mut ours = Vec::new();
        let mut peer = Vec::new();
        let stamp = std::process::id();
        let config = format!("s3://{config_bucket}/experiments/bench-sdk-sweep-{stamp}/config/");
        let sh = workspace::shell(root)?;
        for round in 0..=self.runs.min(3) {
            // A fresh name per round: a repeated sweep would be memoized.
            let file = lab.join(format!("sweep-{round}.toml"));
            std::fs::write(
                &file,
                format!(
                    "{}\n[sweep]\ngrid = {{ \"train.learning_rate\" = [{}] }}\n",
                    base.replace(
                        "name = \"bench-launch\"",
                        &format!("name = \"bench-sweep-{round}\"")
                    ),
                    rates.join(", ")
                ),
            )?;
            let t = timed(
                cmd!(
                    sh,
                    "{xtask} experiment sweep {file} --backend sagemaker --image {image} --allow-dirty"
                )
                .env("SCA_RUNS_DIR", lab.join("runs")),
                env,
                "our sweep",
            )?;
            let jobs: Vec<String> = (0..n)
                .map(|i| format!("bench-sdk-sweep-{stamp}-{round}-{i}"))
                .collect();
            let p = timed(
                sdk(&sh, python, image, data_bucket, &config, &jobs),
                env,
                "the SageMaker SDK's loop",
            )?;
            if round > 0 {
                ours.push(t / n as f64);
                peer.push(p / n as f64);
            }
        }
        let rounds = ours.len();
        let (o, p) = (median(&mut ours), median(&mut peer));
        Ok(format!(
            "\n| sweep | `experiment sweep --backend sagemaker`, per point | SDK `fit(wait=False)` in a loop, per point | ratio |\n|---|---|---|---|\n| {n} points x {rounds} rounds | {o:.3} s (median) | {p:.3} s (median) | {:.1}x |\n\n\
A sweep's whole time divided by its points, from process start until every point's job was created (ours: every point validated and planned first, the data manifest listed once, then each point's config uploaded, job created, record written, and its end read back: the emulator ends jobs at once; all points in flight at once, the SageMaker default) against one Python process creating the same number of jobs in a loop, uploading nothing.\n",
            p / o
        ))
    }
}

/// The SageMaker SDK creating one training job per name in `jobs`
/// (`sagemaker_sdk.py`), its models under `s3://{data_bucket}/models`.
fn sdk<'a>(
    sh: &'a Shell,
    python: &Path,
    image: &str,
    data_bucket: &str,
    config: &str,
    jobs: &[String],
) -> Cmd<'a> {
    let output = format!("s3://{data_bucket}/models");
    cmd!(
        sh,
        "{python} -c {SDK_SCRIPT} {image} {ROLE} {output} {config} {jobs...}"
    )
}

/// Runs `cmd` with `env` (quiet, its stdout dropped) and returns its wall
/// time in seconds; when it fails, an error with `who` and its stderr.
fn timed(cmd: Cmd<'_>, env: &[(String, String)], who: &str) -> Result<f64> {
    let cmd = cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let start = Instant::now();
    let out = cmd.quiet().ignore_stdout().ignore_status().output()?;
    let t = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{who} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t)
}

/// The virtualenv's python with the SageMaker SDK (installed on first use).
fn venv(root: &Path) -> Result<std::path::PathBuf> {
    super::venv::ensure(
        &root.join("target/bench-venv"),
        "sagemaker, boto3",
        "the SageMaker Python SDK",
        |python| super::venv::pip_install(python, &["sagemaker>=2.200,<3", "boto3"]),
    )
}
