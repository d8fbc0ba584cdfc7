//! `cargo xtask bench gpu`: the figures of `sca-train/bench/gpu.sh`, the one
//! script a GPU machine runs (sanity, the CPU-vs-GPU loss trace, sca-train
//! beside PyTorch fp32 and AMP bf16), turned into BENCHMARKS.md's `gpu`
//! section.
//!
//! `bench gpu DIR` reads what the script left in DIR (`gpu.jsonl`, `env.txt`)
//! and records it. `bench gpu --dry-run` rehearses the script here, on the
//! CPU, at toy sizes, with a CPU build and the PyTorch of `bench train`'s
//! virtualenv, and renders (never records) the section: every step but the
//! GPU itself is exercised before a minute of device time is spent.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::image::build;
use crate::{flags, workspace};

/// The CPU-vs-GPU loss trace agrees when every step's losses differ by at
/// most this much, relative to `max(1, |cpu loss|)`.
pub const TRACE_RTOL: f64 = 1e-3;

/// The issue's throughput goal: sca-train on the GPU at this fraction of PyTorch fp32.
const GOAL: f64 = 0.5;

impl flags::BenchGpu {
    pub fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        if self.dry_run {
            let tmp = tempfile::tempdir()?;
            rehearse(&root, tmp.path())?;
            let body = render(
                &read_results(tmp.path())?,
                "rehearsal on this machine's CPU",
            )?;
            println!("{body}");
            println!("(dry run: nothing recorded)");
            return Ok(ExitCode::SUCCESS);
        }
        let Some(dir) = self.dir else {
            bail!("name the directory gpu.sh wrote (its OUT argument), or pass --dry-run to rehearse here");
        };
        let results = read_results(&dir)?;
        let body = render(&results, "on the GPU machine")?;
        println!("{body}");
        if !self.no_record {
            let machine = results.env.get("gpu").cloned().unwrap_or_default();
            let machine = format!(
                "{machine}; {}",
                results.env.get("cpu").map_or("", String::as_str)
            );
            super::record_on(&root, "gpu", &body, &machine)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Runs gpu.sh with `DEVICE=cpu` at toy sizes, its results into `out`.
fn rehearse(root: &Path, out: &Path) -> Result<()> {
    let python = super::train::torch_venv(root)?;
    let binary =
        build::build_sca_train_release(root, None, &["--bin", "sca-train"], &[], "sca-train")?;
    let kit = out.join("kit");
    std::fs::create_dir_all(&kit)?;
    std::fs::copy(&binary, kit.join("sca-train"))
        .with_context(|| format!("copying {}", binary.display()))?;
    std::fs::write(kit.join("cuda-include-dir"), "/nonexistent\n")?;
    let status = Command::new("bash")
        .arg(root.join("sca-train/bench/gpu.sh"))
        .arg(&kit)
        .arg(out)
        .envs([
            ("DEVICE", "cpu"),
            ("SIZE", "32"),
            ("BATCH", "2"),
            ("STEPS", "2"),
            ("WARMUP", "1"),
            ("ROUNDS", "2"),
            ("TRACE_STEPS", "3"),
            ("TRACE_SIZE", "16"),
            ("DEPTH", "2"),
            ("WIDTH", "4"),
        ])
        .env("PYTHON", &python)
        .status()
        .context("running bash")?;
    if !status.success() {
        bail!("gpu.sh failed in the rehearsal ({status})");
    }
    Ok(())
}

/// What gpu.sh wrote: its JSON lines by `run` tag, and env.txt's `key: value` lines.
#[derive(Debug)]
pub(crate) struct Results {
    runs: BTreeMap<String, Value>,
    env: BTreeMap<String, String>,
}

fn read_results(dir: &Path) -> Result<Results> {
    let jsonl = dir.join("gpu.jsonl");
    let text = std::fs::read_to_string(&jsonl).with_context(|| {
        format!(
            "reading {} (gpu.sh writes it into its OUT directory)",
            jsonl.display()
        )
    })?;
    let env_txt = std::fs::read_to_string(dir.join("env.txt")).unwrap_or_default();
    parse(&text, &env_txt).with_context(|| format!("in {}", jsonl.display()))
}

fn parse(jsonl: &str, env_txt: &str) -> Result<Results> {
    let mut runs = BTreeMap::new();
    for (i, line) in jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("line {} is not JSON", i + 1))?;
        let tag = v["run"]
            .as_str()
            .with_context(|| format!("line {} has no `run` tag", i + 1))?
            .to_string();
        runs.insert(tag, v);
    }
    let env = env_txt
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Results { runs, env })
}

/// The CPU-vs-GPU comparison of the loss traces.
#[derive(Debug, PartialEq)]
pub(crate) struct TraceCheck {
    steps: usize,
    max_abs: f64,
    max_rel: f64,
    first: (f64, f64),
    last: (f64, f64),
}

fn compare_traces(cpu: &[f64], other: &[f64]) -> Result<TraceCheck> {
    if cpu.is_empty() || cpu.len() != other.len() {
        bail!(
            "the loss traces differ in length ({} on the CPU, {} on the device)",
            cpu.len(),
            other.len()
        );
    }
    let (mut max_abs, mut max_rel) = (0.0f64, 0.0f64);
    for (a, b) in cpu.iter().zip(other) {
        let d = (a - b).abs();
        if !d.is_finite() {
            bail!("a loss is not finite: CPU {a}, device {b}");
        }
        max_abs = max_abs.max(d);
        max_rel = max_rel.max(d / a.abs().max(1.0));
    }
    Ok(TraceCheck {
        steps: cpu.len(),
        max_abs,
        max_rel,
        first: (cpu[0], other[0]),
        last: (cpu[cpu.len() - 1], other[other.len() - 1]),
    })
}

fn num(v: &Value, key: &str, tag: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("run `{tag}` has no number `{key}`: {v}"))
}

fn losses(r: &Results, tag: &str) -> Result<Vec<f64>> {
    let v = r
        .runs
        .get(tag)
        .with_context(|| format!("no `{tag}` run: gpu.sh stopped early?"))?;
    v["losses"]
        .as_array()
        .with_context(|| format!("run `{tag}` has no losses"))?
        .iter()
        .map(|l| l.as_f64().context("a loss is not a number"))
        .collect()
}

fn mib(bytes: f64) -> String {
    format!("{:.0} MiB", bytes / (1024.0 * 1024.0))
}

fn render(r: &Results, where_: &str) -> Result<String> {
    let sanity = r.runs.get("sanity").context("no `sanity` run")?;
    let device = sanity["device"].as_str().unwrap_or("?").to_string();
    let trace = compare_traces(&losses(r, "trace-host")?, &losses(r, "trace-device")?)?;
    let ops = sanity["ops"].as_str().unwrap_or("?");
    let mut rounds = Vec::new();
    for round in 1.. {
        let tag = format!("sca-train-{round}");
        let Some(ours) = r.runs.get(&tag) else { break };
        let fp32 = r
            .runs
            .get(&format!("pytorch-none-{round}"))
            .with_context(|| format!("round {round} has no PyTorch fp32 run"))?;
        let bf16 = r
            .runs
            .get(&format!("pytorch-bf16-{round}"))
            .with_context(|| format!("round {round} has no PyTorch bf16 run"))?;
        rounds.push((ours.clone(), fp32.clone(), bf16.clone()));
    }
    if rounds.is_empty() {
        bail!("no throughput rounds (`sca-train-1` ...)");
    }
    let spec = &rounds[0].0;
    let trace_spec = &r.runs["trace-host"];
    let mut s = format!(
        "`bash sca-train/bench/gpu.sh target/gpu-kit $OUT` ({where_}; the kit from `cargo xtask cuda kit`, the figures by `cargo xtask bench gpu $OUT`): the quickstart U-Net (depth {}, base width {}, batch norm), {}x{} random tiles, batch {}, BCE loss, Adam (lr 1e-3); {} timed steps after {} warm-up steps per process, sca-train on `{device}` (ops: {ops}) and PyTorch {} (fp32 without TF32, and AMP bf16), alternating.\n\n",
        spec["depth"], spec["base_width"], spec["size"], spec["size"], spec["batch"],
        spec["steps"], spec["warmup"],
        rounds[0].1["torch"].as_str().unwrap_or("?"),
    );
    s += "| round | sca-train tiles/s | PyTorch fp32 tiles/s | PyTorch AMP bf16 tiles/s | sca-train / PyTorch fp32 |\n|---|---|---|---|---|\n";
    let (mut o, mut f, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (ours, fp32, bf16)) in rounds.iter().enumerate() {
        let (x, y, z) = (
            num(ours, "tiles_per_s", "sca-train")?,
            num(fp32, "tiles_per_s", "pytorch fp32")?,
            num(bf16, "tiles_per_s", "pytorch bf16")?,
        );
        s += &format!("| {} | {x:.2} | {y:.2} | {z:.2} | {:.3}x |\n", i + 1, x / y);
        o.push(x);
        f.push(y);
        b.push(z);
    }
    let (mo, mf, mb) = (
        super::median(&mut o),
        super::median(&mut f),
        super::median(&mut b),
    );
    let ratio = mo / mf;
    s += &format!("| **median** | **{mo:.2}** | **{mf:.2}** | **{mb:.2}** | **{ratio:.3}x** |\n\n");
    s += &format!(
        "Goal ≥ {GOAL}x PyTorch fp32: **{}**.\n\n",
        if ratio >= GOAL { "met" } else { "not met" }
    );
    let last = rounds.last().expect("non-empty");
    let mem = |v: &Value, k: &str| v[k].as_f64().map_or("n/a".to_string(), mib);
    s += &format!(
        "Peak GPU memory (last round): sca-train {} (driver view: in use after the timed steps less before the model, dfdx's buffer cache holding the step's peak); PyTorch fp32 {} allocated / {} reserved, AMP bf16 {} / {}.\n\n",
        mem(&last.0, "gpu_mem_bytes"),
        mem(&last.1, "gpu_mem_allocated_bytes"),
        mem(&last.1, "gpu_mem_reserved_bytes"),
        mem(&last.2, "gpu_mem_allocated_bytes"),
        mem(&last.2, "gpu_mem_reserved_bytes"),
    );
    let ok = trace.max_rel <= TRACE_RTOL;
    s += &format!(
        "Loss trace, CPU with the host kernels vs `{device}` with {ops} ops: the first {} steps from the same seed, each on a fresh {}x{} batch of {}: largest difference {:.3e} (relative {:.3e}; tolerance {TRACE_RTOL:.0e} relative to max(1, |loss|)): **{}**. Step 1: {:.6} vs {:.6}; step {}: {:.6} vs {:.6}.\n",
        trace.steps,
        trace_spec["size"], trace_spec["size"], trace_spec["batch"],
        trace.max_abs,
        trace.max_rel,
        if ok { "agree" } else { "DISAGREE" },
        trace.first.0, trace.first.1, trace.steps, trace.last.0, trace.last.1,
    );
    if !r.env.is_empty() {
        s += "\n```\n";
        for (k, v) in &r.env {
            s += &format!("{k}: {v}\n");
        }
        s += "```\n";
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(tag: &str, extra: &str) -> String {
        format!(
            "{{\"impl\":\"x\",\"device\":\"cuda\",\"depth\":3,\"base_width\":16,\"size\":512,\"batch\":8,\"steps\":20,\"warmup\":3,\"run\":\"{tag}\"{extra}}}\n"
        )
    }

    fn sample(gpu_trace: &str) -> String {
        let mut s = line("sanity", ",\"tiles_per_s\":1.0");
        s += &line("trace-host", ",\"losses\":[0.9,0.8,0.7]");
        s += &line("trace-device", &format!(",\"losses\":{gpu_trace}"));
        for round in 1..=2 {
            s += &line(
                &format!("sca-train-{round}"),
                ",\"tiles_per_s\":50.0,\"gpu_mem_bytes\":1048576000",
            );
            s += &line(&format!("pytorch-none-{round}"), ",\"torch\":\"2.11.0\",\"tiles_per_s\":80.0,\"gpu_mem_allocated_bytes\":524288000,\"gpu_mem_reserved_bytes\":629145600");
            s += &line(&format!("pytorch-bf16-{round}"), ",\"torch\":\"2.11.0\",\"tiles_per_s\":160.0,\"gpu_mem_allocated_bytes\":262144000,\"gpu_mem_reserved_bytes\":314572800");
        }
        s
    }

    #[test]
    fn renders_ratios_memory_and_the_trace_verdict() {
        let r = parse(
            &sample("[0.9,0.8001,0.7]"),
            "gpu: NVIDIA H100 80GB HBM3, 580.159.04, 81559 MiB\n",
        )
        .unwrap();
        let s = render(&r, "on the GPU machine").unwrap();
        assert!(
            s.contains("| **median** | **50.00** | **80.00** | **160.00** | **0.625x** |"),
            "{s}"
        );
        assert!(s.contains("Goal ≥ 0.5x PyTorch fp32: **met**"), "{s}");
        assert!(s.contains("sca-train 1000 MiB"), "{s}");
        assert!(
            s.contains("PyTorch fp32 500 MiB allocated / 600 MiB reserved"),
            "{s}"
        );
        assert!(s.contains("**agree**"), "{s}");
        assert!(s.contains("gpu: NVIDIA H100"), "{s}");
    }

    #[test]
    fn a_diverging_trace_and_missing_runs_are_reported() {
        let r = parse(&sample("[0.9,0.85,0.7]"), "").unwrap();
        assert!(render(&r, "x").unwrap().contains("**DISAGREE**"));
        let r = parse(&sample("[0.9,0.8]"), "").unwrap();
        let e = render(&r, "x").unwrap_err().to_string();
        assert!(e.contains("differ in length"), "{e}");
        let partial: String = sample("[0.9,0.8,0.7]")
            .lines()
            .take(4)
            .map(|l| format!("{l}\n"))
            .collect();
        let e = render(&parse(&partial, "").unwrap(), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("PyTorch fp32"), "{e}");
        let e = parse("{\"no_tag\":1}\n", "").unwrap_err().to_string();
        assert!(e.contains("no `run` tag"), "{e}");
    }

    #[test]
    fn trace_comparison_is_relative_to_the_loss_scale() {
        let c = compare_traces(&[10.0, 0.5], &[10.005, 0.5004]).unwrap();
        assert!((c.max_abs - 0.005).abs() < 1e-12);
        assert!((c.max_rel - 0.0005).abs() < 1e-12);
        assert!(compare_traces(&[1.0], &[f64::NAN]).is_err());
        assert!(compare_traces(&[], &[]).is_err());
    }
}
