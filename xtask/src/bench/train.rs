//! `cargo xtask bench train`: training throughput of the quickstart U-Net
//! (the depth and base width of `experiments/quickstart.toml`) on random
//! 256x256 tiles in batches of 8, beside a PyTorch reference of the identical
//! architecture, and the data loader's throughput from local disk and from S3.
//!
//! Training: `sca-train bench --device cpu` (release profile) and
//! `sca-train/bench/unet_reference.py` (PyTorch on the CPU, as many threads as
//! sca-train uses) run alternately, each in a fresh process, each timing the
//! same number of steps after one warm-up step (BCE loss, Adam at 1e-3, batch
//! norm); the medians over the rounds and their ratio are reported. PyTorch is
//! installed from PyPI into a throw-away virtualenv under `target/torch-venv`.
//!
//! Loader: `sca_data::bench_loader` in this process (the dev profile,
//! in which sca-train itself is optimised) on synthetic 256x256 tiles, read,
//! decoded, normalised and augmented in batches of 8, from a local directory
//! and from the same tiles uploaded to the AWS emulator (started, and stopped
//! again, only when `AWS_ENDPOINT_URL` is not already set).
//!
//! `--ported` instead times the size of the experiments ported from the
//! original workflow (depth 5, base width 32, 512x512 tiles, batch 7; see
//! `experiments/`), training only, into its own section. Both report each
//! side's peak resident memory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use sca_data::{bench_loader, BenchOptions, LoaderBench};
use sca_spec::Experiment;
use xshell::{cmd, Shell};

use super::{median, with_services};
use crate::image::build;
use crate::{flags, workspace};

const SIZE: usize = 256;
const BATCH: usize = 8;
/// Synthetic tiles the loader reads per pass.
const LOADER_TILES: u32 = 64;
/// Passes over them: local reads are fast, so more passes steady the figure.
const LOCAL_EPOCHS: u32 = 4;
const S3_EPOCHS: u32 = 2;

/// One side's training figure, as its JSON line reports it.
struct Train {
    tiles_per_s: f64,
    /// Peak resident memory of its process.
    peak_rss: Option<u64>,
}

/// The U-Net and batch a round trains.
#[derive(Debug, Clone, Copy)]
struct Shape {
    depth: u8,
    width: u32,
    size: usize,
    batch: usize,
}

impl Shape {
    /// Depth, base width, tile size and batch, as command-line arguments.
    fn args(self) -> [String; 4] {
        [
            self.depth.to_string(),
            self.width.to_string(),
            self.size.to_string(),
            self.batch.to_string(),
        ]
    }
}

/// The ported experiments' size (`experiments/`, from the original workflow).
const PORTED: Shape = Shape {
    depth: 5,
    width: 32,
    size: 512,
    batch: 7,
};

fn gib(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".into(), |b| {
        format!("{:.2} GiB", b as f64 / f64::from(1 << 30))
    })
}

impl flags::BenchTrain {
    pub fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let exp = quickstart(&root)?;
        let (depth, width) = (exp.model.depth, exp.model.base_width);
        let shape = if self.ported {
            PORTED
        } else {
            Shape {
                depth,
                width,
                size: SIZE,
                batch: BATCH,
            }
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let python = torch_venv(&root)?;
        let ours_bin =
            build::build_sca_train_release(&root, None, &["--bin", "sca-train"], &[], "sca-train")?;
        let load_before = loadavg();

        let (mut ours, mut peer) = (Vec::new(), Vec::new());
        let (mut ours_rss, mut peer_rss) = (None::<u64>, None::<u64>);
        let mut torch_version = String::from("?");
        for round in 1..=self.rounds {
            eprintln!("round {round}/{}: sca-train", self.rounds);
            let o = run_ours(&ours_bin, shape, self.steps)?;
            eprintln!("round {round}/{}: PyTorch", self.rounds);
            let (p, version) = run_peer(&root, &python, shape, self.steps, threads)?;
            torch_version = version;
            ours.push(o.tiles_per_s);
            peer.push(p.tiles_per_s);
            ours_rss = ours_rss.max(o.peak_rss);
            peer_rss = peer_rss.max(p.peak_rss);
        }
        let load_after = loadavg();
        let rss = format!(
            "Peak resident memory (the largest of the rounds): sca-train {}, PyTorch {}{}.\n\n",
            gib(ours_rss),
            gib(peer_rss),
            ours_rss
                .zip(peer_rss)
                .map_or(String::new(), |(o, p)| format!(
                    " ({:.2}x; goal at most 1.5x)",
                    o as f64 / p as f64
                ))
        );
        let (steps, rounds) = (self.steps, self.rounds);
        if self.ported {
            let Shape {
                depth,
                width,
                size,
                batch,
            } = shape;
            let mut rows = format!(
                "`cargo xtask bench train --ported --steps {steps} --rounds {rounds}`: the size of the experiments ported from the original workflow (U-Net depth {depth}, base width {width}, batch norm), {size}x{size} random tiles, batch {batch}, BCE loss, Adam (lr 1e-3); timed steps per process: {steps}, after one warm-up step, sca-train (`sca-train bench --device cpu`, release profile) and PyTorch {torch_version} on the CPU with {threads} threads alternating. Load average {load_before} before, {load_after} after.\n\n\
| round | sca-train tiles/s | PyTorch tiles/s | ratio (sca-train / PyTorch) |\n|---|---|---|---|\n"
            );
            for (i, (o, p)) in ours.iter().zip(&peer).enumerate() {
                rows += &format!("| {} | {o:.3} | {p:.3} | {:.2}x |\n", i + 1, o / p);
            }
            let (o, p) = (median(&mut ours), median(&mut peer));
            rows += &format!(
                "| **median** | **{o:.3}** | **{p:.3}** | **{:.2}x** |\n\n{}\n",
                o / p,
                rss.trim_end()
            );
            println!("{rows}");
            if !self.no_record {
                super::record(&root, "train-ported", &rows)?;
            }
            return Ok(ExitCode::SUCCESS);
        }

        let local = loader_local(&exp)?;
        let s3 = with_services(&root, |env| loader_s3(&exp, &python, env))?;

        let mut rows = format!(
            "`cargo xtask bench train --steps {steps} --rounds {rounds}`: the quickstart U-Net (depth {depth}, base width {width}, batch norm), {SIZE}x{SIZE} random tiles, batch {BATCH}, BCE loss, Adam (lr 1e-3); timed steps per process: {steps}, after one warm-up step, sca-train (`sca-train bench --device cpu`, release profile) and PyTorch {torch_version} on the CPU with {threads} threads alternating. Load average {load_before} before, {load_after} after.\n\n\
| round | sca-train tiles/s | PyTorch tiles/s | ratio (sca-train / PyTorch) |\n|---|---|---|---|\n",
        );
        for (i, (o, p)) in ours.iter().zip(&peer).enumerate() {
            rows += &format!("| {} | {o:.2} | {p:.2} | {:.2}x |\n", i + 1, o / p);
        }
        let (o, p) = (median(&mut ours), median(&mut peer));
        rows += &format!(
            "| **median** | **{o:.2}** | **{p:.2}** | **{:.2}x** |\n\n\
{rss}\
Loader (`sca_data::bench_loader` in-process, dev profile with sca-train optimised): {LOADER_TILES} synthetic 4-band {SIZE}x{SIZE} tiles, batch {BATCH}, read + decode + normalise + augment.\n\n\
| source | reader threads | tiles read | tiles/s |\n|---|---|---|---|\n\
| local disk | {} | {} | {:.0} |\n\
| S3 (`moto_server` on 127.0.0.1) | {} | {} | {:.0} |\n",
            o / p,
            local.workers,
            local.tiles,
            local.tiles_per_sec,
            s3.workers,
            s3.tiles,
            s3.tiles_per_sec,
        );
        println!("{rows}");
        if !self.no_record {
            super::record(&root, "train", &rows)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The validated quickstart experiment, whose model the benchmark trains.
fn quickstart(root: &Path) -> Result<Experiment> {
    let path = root.join("experiments/quickstart.toml");
    let report = sca_spec::validate_file(&path, &workspace::defaults()?);
    let Some(exp) = report.experiment else {
        bail!(
            "{} is invalid (`cargo xtask experiment validate {}` shows why)",
            path.display(),
            path.display()
        );
    };
    if !exp.model.batch_norm {
        bail!(
            "{}: model.batch_norm is false, but `sca-train bench` always trains with batch norm",
            path.display()
        );
    }
    let bands: usize = exp.channels.iter().map(|c| c.bands.len()).sum();
    if bands != sca_data::bench::BENCH_IN_CHANNELS {
        bail!(
            "{}: the channels have {bands} bands, but `sca-train bench` trains on {}",
            path.display(),
            sca_data::bench::BENCH_IN_CHANNELS
        );
    }
    if !SIZE.is_multiple_of(1 << exp.model.depth) {
        bail!(
            "{}: model.depth {} does not divide the benchmark's {SIZE}-pixel tiles",
            path.display(),
            exp.model.depth
        );
    }
    Ok(exp)
}

fn run_ours(bin: &Path, shape: Shape, steps: u32) -> Result<Train> {
    let sh = Shell::new()?;
    let [depth, width, size, batch] = shape.args();
    let steps = steps.to_string();
    let out = cmd!(
        sh,
        "{bin} bench --device cpu --warmup 1 --depth {depth} --base-width {width} --size {size} --batch {batch} --steps {steps}"
    )
    .quiet()
    .read()
    .context("`sca-train bench` failed")?;
    let v = json_line(&out, "sca-train bench")?;
    Ok(Train {
        tiles_per_s: tiles_per_s(&v, "sca-train bench")?,
        peak_rss: v["peak_rss_bytes"].as_u64(),
    })
}

/// PyTorch's figure and its version.
fn run_peer(
    root: &Path,
    python: &Path,
    shape: Shape,
    steps: u32,
    threads: usize,
) -> Result<(Train, String)> {
    let script = root.join("sca-train/bench/unet_reference.py");
    let sh = Shell::new()?;
    let [depth, width, size, batch] = shape.args();
    let (steps, threads) = (steps.to_string(), threads.to_string());
    let channels = sca_data::bench::BENCH_IN_CHANNELS.to_string();
    let out = cmd!(
        sh,
        "{python} {script} --size {size} --batch {batch} --depth {depth} --base-width {width} --in-channels {channels} --steps {steps} --warmup 1 --threads {threads}"
    )
    .quiet()
    .read()
    .context("the PyTorch reference failed")?;
    let v = json_line(&out, "the PyTorch reference")?;
    let version = v["torch"].as_str().unwrap_or("?").to_string();
    Ok((
        Train {
            tiles_per_s: tiles_per_s(&v, "the PyTorch reference")?,
            peak_rss: v["peak_rss_bytes"].as_u64(),
        },
        version,
    ))
}

/// The last line of `stdout` that parses as a JSON object.
fn json_line(stdout: &str, who: &str) -> Result<serde_json::Value> {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter(serde_json::Value::is_object)
        .with_context(|| format!("{who} printed no JSON line"))
}

fn tiles_per_s(v: &serde_json::Value, who: &str) -> Result<f64> {
    v["tiles_per_s"]
        .as_f64()
        .filter(|t| t.is_finite() && *t > 0.0)
        .with_context(|| format!("{who} printed no positive tiles_per_s: {v}"))
}

/// The quickstart's dataset rules (regexes, zoom, channels) with `root` for
/// both imagery and masks and the benchmark's tile size.
fn bench_dataset(exp: &Experiment, root: String) -> sca_spec::Dataset {
    let mut d = exp.dataset.clone();
    d.imagery = root.clone();
    d.masks = root;
    d.tile_size = SIZE as u32;
    d.synthetic = None;
    d
}

fn synth_tiles(exp: &Experiment, dir: &Path) -> Result<()> {
    sca_data::synth::synth(dir, LOADER_TILES, 1, SIZE as u32, exp.dataset.zoom)
        .context("making the loader benchmark's tiles")?;
    Ok(())
}

fn loader_local(exp: &Experiment) -> Result<LoaderBench> {
    let lab = tempfile::tempdir()?;
    let data = lab.path().join("data");
    synth_tiles(exp, &data)?;
    let dataset = bench_dataset(exp, data.display().to_string());
    let opts = BenchOptions {
        batch_size: BATCH,
        epochs: LOCAL_EPOCHS,
        ..BenchOptions::default()
    };
    bench_loader(&dataset, &exp.channels, lab.path(), &opts)
        .context("the loader benchmark on local disk failed")
}

/// Upload the synthetic tiles to a fresh bucket of the emulator (with boto3,
/// as `bench launch` does) and measure the loader reading them from there.
fn loader_s3(exp: &Experiment, python: &Path, env: &[(String, String)]) -> Result<LoaderBench> {
    let lab = tempfile::tempdir()?;
    let data = lab.path().join("data");
    synth_tiles(exp, &data)?;
    let bucket = format!("sca-bench-train-{}", std::process::id());
    let setup = "import boto3, os, sys\ns3 = boto3.client('s3', region_name='us-west-2')\n\
s3.create_bucket(Bucket=sys.argv[1], CreateBucketConfiguration={'LocationConstraint': 'us-west-2'})\n\
root = sys.argv[2]\n\
for d, _, files in os.walk(root):\n    for f in files:\n        p = os.path.join(d, f)\n        s3.upload_file(p, sys.argv[1], 'data/' + os.path.relpath(p, root))\n";
    let sh = Shell::new()?;
    let mut upload = cmd!(sh, "{python} -c {setup} {bucket} {data}").quiet();
    for (k, v) in env {
        upload = upload.env(k, v);
    }
    upload
        .run()
        .context("uploading the loader benchmark's tiles to the emulator failed")?;
    let dataset = bench_dataset(exp, format!("s3://{bucket}/data"));
    let opts = BenchOptions {
        batch_size: BATCH,
        epochs: S3_EPOCHS,
        ..BenchOptions::default()
    };
    bench_loader(&dataset, &exp.channels, lab.path(), &opts)
        .context("the loader benchmark on S3 failed")
}

/// The 1-minute load average, as text.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The virtualenv's python with PyTorch and boto3 (installed on first use):
/// the CPU-only wheel index first, then PyPI's default wheel.
pub(super) fn torch_venv(root: &Path) -> Result<PathBuf> {
    super::venv::ensure(
        &root.join("target/torch-venv"),
        "torch, numpy, boto3",
        "PyTorch, numpy and boto3",
        |python| {
            let pip = |args: &[&str]| {
                let mut all = vec!["--no-cache-dir"];
                all.extend_from_slice(args);
                super::venv::pip_install(python, &all)
            };
            // The CPU wheel is a fraction of the size of PyPI's default, which
            // pulls in the CUDA libraries; its index may be unreachable, so
            // fail fast there.
            let cpu = pip(&[
                "--retries",
                "0",
                "--timeout",
                "20",
                "--index-url",
                "https://download.pytorch.org/whl/cpu",
                "torch",
            ])?;
            if !cpu {
                eprintln!("the CPU-only wheel index is unreachable; installing PyPI's torch (with its CUDA libraries)");
            }
            pip(&["torch", "numpy", "boto3"])
        },
    )
}
