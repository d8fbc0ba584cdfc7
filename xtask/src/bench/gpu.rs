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
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use xshell::{cmd, Shell};

use crate::image::build;
use crate::{flags, workspace};

/// The CPU-vs-GPU loss trace agrees when every step's losses differ by at
/// most this much, relative to `max(1, |cpu loss|)`.
pub const TRACE_RTOL: f64 = 1e-3;

/// The bf16 loss trace (`precision = "bf16"`) agrees with the CPU's fp32 one
/// when every step's losses differ by at most this much, relative to
/// `max(1, |cpu loss|)`: bf16 operands keep 8 significant bits, so the
/// trace drifts from fp32's where fp32's drifts by rounding alone.
pub const BF16_TRACE_RTOL: f64 = 2e-2;

/// The throughput goals (issue 21): sca-train fp32 on the GPU at this fraction
/// of PyTorch fp32 (issue 6's was 0.5), and bf16 at this one of PyTorch AMP bf16.
const GOAL: f64 = 0.8;
const BF16_GOAL: f64 = 1.0;
/// The memory goal (issue 21): the most sca-train's device memory pool held
/// (dfdx's buffer cache included) at most this multiple of PyTorch's peak
/// reserved memory (its caching allocator's) in the same precision.
const MEM_GOAL: f64 = 1.5;

/// The settings gpu.sh times beside each bf16 round (the same binary): the
/// runs' tag before the round number, their row in the memory table, and
/// what the setting does.
const BF16_VARIANTS: [(&str, &str, &str); 2] = [
    (
        "sca-train-bf16-saved",
        "bf16, bf16 saved activations",
        "With bf16 saved activations (`SCA_BF16_SAVED=bf16`: each op that is the only holder of an input it keeps for its backward pass keeps a bf16 copy instead)",
    ),
    (
        "sca-train-bf16-saved-pool",
        "bf16, bf16 saved activations, memory pool",
        "With bf16 saved activations and the buffers from the driver's memory pool (`SCA_BF16_SAVED=bf16 SCA_CUDA_BUFFERS=pool`: a freed block serves any request it fits, where dfdx's cache keeps it for its exact size)",
    ),
];

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
    let sh = Shell::new()?;
    let script = root.join("sca-train/bench/gpu.sh");
    cmd!(sh, "bash {script} {kit} {out}")
        .quiet()
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
        .run()
        .context("gpu.sh failed in the rehearsal")?;
    Ok(())
}

/// What gpu.sh wrote: its JSON lines by `run` tag, and env.txt's `key: value` lines.
#[derive(Debug)]
pub(crate) struct Results {
    runs: BTreeMap<String, Value>,
    env: BTreeMap<String, String>,
    /// Nsight Compute's per-kernel times of one profiled process (`ncu.txt`), if any.
    kernels: Option<KernelProfile>,
}

/// gpu.sh's first line of `ncu.txt` when the profile holds the timed steps only.
const PROFILED_TIMED: &str = "gpu.sh: profiled range: timed steps";

/// GPU time by kernel name over the profiled process's training steps.
#[derive(Debug, PartialEq)]
pub(crate) struct KernelProfile {
    /// Training steps the process ran (warm-up and timed).
    steps: usize,
    /// `bf16` where the profiled process ran `--precision bf16`.
    bf16: bool,
    /// (kernel name, total microseconds, launches), longest total first.
    kernels: Vec<(String, f64, u64)>,
}

/// Reads `ncu --print-summary per-kernel` output: for each kernel name and
/// launch shape a header line (`  NAME (GRID)x(BLOCK), Device 0, CC 9.0,
/// Invocations N`) and, below it, the `gpu__time_duration.sum` row (unit,
/// minimum, maximum, average). The step count comes from the process's own
/// JSON line (`sca-train bench`): its timed steps where gpu.sh's first line
/// says only those were profiled, else warm-up and timed. None when it holds
/// no kernel.
fn parse_ncu(text: &str) -> Option<KernelProfile> {
    let timed_only = text.starts_with(PROFILED_TIMED);
    let report = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .find_map(|l| serde_json::from_str::<Value>(l).ok());
    let bf16 = report
        .as_ref()
        .is_some_and(|v| v["precision"].as_str() == Some("bf16"));
    let steps = report.map_or(2, |v| {
        let timed = v["steps"].as_u64().unwrap_or(1);
        let warmup = if timed_only {
            0
        } else {
            v["warmup"].as_u64().unwrap_or(1)
        };
        (timed + warmup).max(1) as usize
    });
    let mut by_name: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    let mut current: Option<(String, u64)> = None;
    for line in text.lines() {
        if let Some(head) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) {
            current = head
                .split_once(" (")
                .zip(head.rsplit_once("Invocations "))
                .and_then(|((name, _), (_, n))| Some((kernel_name(name), n.trim().parse().ok()?)));
        } else if line.trim_start().starts_with("gpu__time_duration.sum") {
            let f: Vec<&str> = line.split_whitespace().collect();
            let scale = match f.get(1).copied() {
                Some("ns" | "nsecond") => 1e-3,
                Some("us" | "usecond") => 1.0,
                Some("ms" | "msecond") => 1e3,
                Some("s" | "second") => 1e6,
                _ => continue,
            };
            let avg = f
                .get(4)
                .and_then(|v| v.replace(',', "").parse::<f64>().ok());
            if let (Some((name, n)), Some(avg)) = (current.take(), avg) {
                let e = by_name.entry(name).or_default();
                e.0 += avg * scale * n as f64;
                e.1 += n;
            }
        }
    }
    let mut kernels: Vec<_> = by_name.into_iter().map(|(k, (t, n))| (k, t, n)).collect();
    kernels.sort_by(|a, b| b.1.total_cmp(&a.1));
    (!kernels.is_empty()).then_some(KernelProfile {
        steps,
        bf16,
        kernels,
    })
}

/// A kernel's name as ncu prints it, less a C++ signature's `void ` and
/// parameter list (`void ns::k<T>(P *, int)` is `ns::k<T>`).
fn kernel_name(name: &str) -> String {
    let name = name.strip_prefix("void ").unwrap_or(name);
    match (name.ends_with(')'), name.rfind(">(")) {
        (true, Some(i)) => name[..=i].to_string(),
        _ => name.to_string(),
    }
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
    let mut results = parse(&text, &env_txt).with_context(|| format!("in {}", jsonl.display()))?;
    results.kernels = std::fs::read_to_string(dir.join("ncu.txt"))
        .ok()
        .and_then(|t| parse_ncu(&t));
    Ok(results)
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
    Ok(Results {
        runs,
        env,
        kernels: None,
    })
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

impl Results {
    /// The run `tag` if it succeeded.
    fn ok(&self, tag: &str) -> Option<&Value> {
        self.runs.get(tag).filter(|v| v.get("error").is_none())
    }

    /// `tag`'s number `key`, if the run succeeded and has it.
    fn num(&self, tag: &str, key: &str) -> Option<f64> {
        self.ok(tag).and_then(|v| v[key].as_f64())
    }

    fn losses(&self, tag: &str) -> Option<Vec<f64>> {
        self.ok(tag)?["losses"]
            .as_array()?
            .iter()
            .map(Value::as_f64)
            .collect()
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.0} MiB", bytes / (1024.0 * 1024.0))
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "failed".into(), |v| format!("{v:.digits$}"))
}

fn median_of(v: &[Option<f64>]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().flatten().copied().collect();
    (!v.is_empty()).then(|| super::median(&mut v))
}

/// The BENCHMARKS.md section for what gpu.sh wrote. A failed measurement
/// (an `error` line) shows as `failed`, with its message listed at the end;
/// the section is rendered from whatever succeeded.
fn render(r: &Results, where_: &str) -> Result<String> {
    let mut rounds = Vec::new();
    for round in 1.. {
        let tags = [
            format!("sca-train-{round}"),
            format!("pytorch-none-{round}"),
            format!("pytorch-bf16-{round}"),
            format!("sca-train-bf16-{round}"),
        ];
        if !tags.iter().any(|t| r.runs.contains_key(t)) {
            break;
        }
        rounds.push(tags.map(|t| r.num(&t, "tiles_per_s")));
    }
    // Scripts before `train.precision` measured no sca-train bf16 rounds.
    let bf16 = r.runs.keys().any(|t| t.starts_with("sca-train-bf16-"));
    if rounds.is_empty() {
        bail!("no throughput rounds (`sca-train-1` ...): gpu.sh stopped before them");
    }
    // The shape of the measurement, from whichever run of round 1 succeeded.
    let spec = ["sca-train-1", "pytorch-none-1", "pytorch-bf16-1"]
        .iter()
        .find_map(|t| r.ok(t))
        .with_context(|| {
            let why: Vec<String> = r
                .runs
                .iter()
                .filter_map(|(t, v)| v["error"].as_str().map(|e| format!("{t}: {}", e.trim())))
                .collect();
            format!("every run of round 1 failed; {}", why.join("; "))
        })?;
    let device = ["sanity", "sca-train-1", "trace-device"]
        .iter()
        .find_map(|t| r.ok(t).and_then(|v| v["device"].as_str()))
        .unwrap_or("cuda");
    let ops = ["sanity", "sca-train-1"]
        .iter()
        .find_map(|t| r.ok(t).and_then(|v| v["ops"].as_str()))
        .unwrap_or("?");
    let torch = ["pytorch-none-1", "pytorch-bf16-1"]
        .iter()
        .find_map(|t| r.ok(t).and_then(|v| v["torch"].as_str()))
        .unwrap_or("?");
    let mut s = format!(
        "`bash sca-train/bench/gpu.sh target/gpu-kit $OUT` ({where_}; the kit from `cargo xtask cuda kit`, the figures by `cargo xtask bench gpu $OUT`): the quickstart U-Net (depth {}, base width {}, batch norm), {}x{} random tiles, batch {}, BCE loss, Adam (lr 1e-3); {} timed steps after {} warm-up steps per process, sca-train on `{device}` (ops: {ops}) and PyTorch {torch} (fp32 without TF32, and AMP bf16), alternating.\n\n",
        spec["depth"], spec["base_width"], spec["size"], spec["size"], spec["batch"],
        spec["steps"], spec["warmup"],
    );
    let x = |v: Option<f64>| v.map_or("n/a".into(), |x| format!("{x:.3}x"));
    let div = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    if bf16 {
        s += "| round | sca-train fp32 tiles/s | PyTorch fp32 tiles/s | sca-train / PyTorch fp32 | sca-train bf16 tiles/s | PyTorch AMP bf16 tiles/s | sca-train bf16 / PyTorch AMP bf16 |\n|---|---|---|---|---|---|---|\n";
    } else {
        s += "| round | sca-train tiles/s | PyTorch fp32 tiles/s | PyTorch AMP bf16 tiles/s | sca-train / PyTorch fp32 |\n|---|---|---|---|---|\n";
    }
    let row = |label: String, [o, f, b, ob]: [Option<f64>; 4], bold: bool| {
        let c = |v: Option<f64>| {
            let t = cell(v, 2);
            if bold {
                format!("**{t}**")
            } else {
                t
            }
        };
        let q = |v: Option<f64>| {
            let t = x(v);
            if bold {
                format!("**{t}**")
            } else {
                t
            }
        };
        if bf16 {
            format!(
                "| {label} | {} | {} | {} | {} | {} | {} |\n",
                c(o),
                c(f),
                q(div(o, f)),
                c(ob),
                c(b),
                q(div(ob, b))
            )
        } else {
            format!(
                "| {label} | {} | {} | {} | {} |\n",
                c(o),
                c(f),
                c(b),
                q(div(o, f))
            )
        }
    };
    for (i, round) in rounds.iter().enumerate() {
        s += &row((i + 1).to_string(), *round, false);
    }
    let col = |k: usize| median_of(&rounds.iter().map(|r| r[k]).collect::<Vec<_>>());
    let (mo, mf, mb, mob) = (col(0), col(1), col(2), col(3));
    s += &row("**median**".into(), [mo, mf, mb, mob], true);
    s += "\n";
    let verdict = |ratio: Option<f64>, goal: f64| match ratio {
        Some(x) if x >= goal => "met",
        Some(_) => "not met",
        None => "not measured",
    };
    s += &format!(
        "Goal ≥ {GOAL}x PyTorch fp32: **{}**.",
        verdict(div(mo, mf), GOAL)
    );
    if bf16 {
        s += &format!(
            " Goal ≥ {BF16_GOAL}x PyTorch AMP bf16 with `--precision bf16`: **{}**.",
            verdict(div(mob, mb), BF16_GOAL)
        );
    }
    s += "\n\n";
    // The bf16 variants' rounds, where run.
    let mut variants = Vec::new();
    for (prefix, label, what) in BF16_VARIANTS {
        let tag = |round: usize| format!("{prefix}-{round}");
        if !(1..=rounds.len()).any(|i| r.runs.contains_key(&tag(i))) {
            continue;
        }
        let each: Vec<Option<f64>> = (1..=rounds.len())
            .map(|i| r.num(&tag(i), "tiles_per_s"))
            .collect();
        let ms = median_of(&each);
        let each: Vec<String> = each.iter().map(|v| cell(*v, 2)).collect();
        s += &format!(
            "{what}, `--precision bf16`: {} tiles/s, median {}, {} PyTorch AMP bf16 (goal ≥ {BF16_GOAL}x: **{}**).\n\n",
            each.join(", "),
            cell(ms, 2),
            x(div(ms, mb)),
            verdict(div(ms, mb), BF16_GOAL)
        );
        variants.push((prefix, label));
    }
    if let Some(im2col) = r.num("sca-train-im2col-1", "tiles_per_s") {
        s += &format!(
            "The same binary with cuDNN off (`SCA_CUDNN=0`: dfdx's im2col convolutions), round 1: {im2col:.2} tiles/s{}.\n\n",
            rounds[0][0].map_or(String::new(), |o| format!(
                "; with cuDNN {:.2}x that",
                o / im2col
            ))
        );
    }
    if let Some(line) = phases_line(r) {
        s += &line;
    }
    if let Some(line) = mfu_line(r, spec, [mo, mf, mob, mb]) {
        s += &line;
    }
    s += &memory_table(r, rounds.len(), bf16, &variants);
    match (r.losses("trace-host"), r.losses("trace-device")) {
        (Some(host), Some(dev)) => {
            let trace = compare_traces(&host, &dev)?;
            let t = &r.runs["trace-host"];
            s += &format!(
                "Loss trace, CPU with the host kernels vs `{device}` with {ops} ops: the first {} steps from the same seed, each on a fresh {}x{} batch of {}: largest difference {:.3e} (relative {:.3e}; tolerance {TRACE_RTOL:.0e} relative to max(1, |loss|)): **{}**. Step 1: {:.6} vs {:.6}; step {}: {:.6} vs {:.6}.\n",
                trace.steps,
                t["size"], t["size"], t["batch"],
                trace.max_abs,
                trace.max_rel,
                if trace.max_rel <= TRACE_RTOL { "agree" } else { "DISAGREE" },
                trace.first.0, trace.first.1, trace.steps, trace.last.0, trace.last.1,
            );
        }
        _ => s += "Loss trace, CPU vs GPU: **not measured** (a trace run failed).\n",
    }
    // The bf16 traces, each against the CPU's fp32 one, where gpu.sh ran them.
    for (tag, with, missing) in [
        ("trace-device-bf16", "`--precision bf16`", "in bf16"),
        (
            "trace-device-bf16-saved",
            "`--precision bf16` and bf16 saved activations",
            "with bf16 saved activations",
        ),
    ] {
        if !r.runs.contains_key(tag) {
            continue;
        }
        match (r.losses("trace-host"), r.losses(tag)) {
            (Some(host), Some(dev)) => {
                let trace = compare_traces(&host, &dev)?;
                s += &format!(
                    "\nThe same trace with {with} against the CPU's fp32: largest difference {:.3e} (relative {:.3e}; tolerance {BF16_TRACE_RTOL:.0e}): **{}**. Step {}: {:.6} vs {:.6}.\n",
                    trace.max_abs,
                    trace.max_rel,
                    if trace.max_rel <= BF16_TRACE_RTOL { "agree" } else { "DISAGREE" },
                    trace.steps, trace.last.0, trace.last.1,
                );
            }
            _ => s += &format!("\nLoss trace {missing}: **not measured** (a trace run failed).\n"),
        }
    }
    if let Some(k) = &r.kernels {
        // The step time measured in the profiled process's precision.
        let tiles_per_s = if k.bf16 { mob } else { mo };
        s += &kernel_table(
            k,
            tiles_per_s.map(|o| spec["batch"].as_f64().unwrap_or(0.0) / o),
        );
    }
    let failures: Vec<_> = r
        .runs
        .iter()
        .filter_map(|(t, v)| v["error"].as_str().map(|e| (t, e)))
        .collect();
    if !failures.is_empty() {
        s += "\nFailed on the machine:\n\n";
        for (t, e) in failures {
            s += &format!("- `{t}`: {}\n", e.lines().last().unwrap_or(e).trim());
        }
    }
    if !r.env.is_empty() {
        s += "\n```\n";
        for (k, v) in &r.env {
            s += &format!("{k}: {v}\n");
        }
        s += "```\n";
    }
    Ok(s)
}

/// Floating-point operations of one training step of the U-Net `sca-train
/// bench` trains (model.rs's layout: per level two 3x3 convolutions, a 2x2
/// stride-2 transposed convolution and a decoder block of two, a bottom
/// block, a 1x1 head; widths `base_width << level`): its convolutions,
/// forward and both gradients (3x forward, the usual convention for model
/// FLOP utilisation); batch norm, ReLU, pooling and the loss are left out.
fn unet_step_flops(in_channels: u64, depth: u32, width: u64, size: u64, batch: u64) -> f64 {
    let w = |l: u32| width << l;
    let conv = |k: u64, ci: u64, co: u64, hw: u64| (2 * k * k * ci * co * hw * hw) as f64;
    let mut f = 0.0;
    for l in 0..depth {
        let (ci, hw) = (if l == 0 { in_channels } else { w(l - 1) }, size >> l);
        f += conv(3, ci, w(l), hw) + conv(3, w(l), w(l), hw);
        // The transposed convolution up to this level (one tap per output pixel)
        // and the decoder block over the concatenated skip connection.
        f += (2 * w(l + 1) * w(l) * hw * hw) as f64;
        f += conv(3, 2 * w(l), w(l), hw) + conv(3, w(l), w(l), hw);
    }
    let hw = size >> depth;
    f += conv(3, w(depth - 1), w(depth), hw) + conv(3, w(depth), w(depth), hw);
    f += conv(1, w(0), 1, size);
    3.0 * f * batch as f64
}

/// Dense peak FLOP/s of a GPU named in env.txt's `gpu` line, from NVIDIA's
/// datasheets (SXM parts): (fp32 without tensor cores, bf16 on tensor cores).
fn peak_flops(gpu: &str) -> Option<(&'static str, f64, f64)> {
    [
        ("H200", 67e12, 989e12),
        ("H100", 67e12, 989e12),
        ("A100", 19.5e12, 312e12),
    ]
    .into_iter()
    .find(|(name, ..)| gpu.contains(name))
}

/// Model FLOP utilisation of the medians `[sca-train fp32, PyTorch fp32,
/// sca-train bf16, PyTorch AMP bf16]` (tiles/s), against the GPU's peaks.
fn mfu_line(r: &Results, spec: &Value, tiles_per_s: [Option<f64>; 4]) -> Option<String> {
    let (gpu, fp32_peak, bf16_peak) = peak_flops(r.env.get("gpu")?)?;
    let n = |k: &str| spec[k].as_u64();
    let (batch, size) = (n("batch")?, n("size")?);
    let flops = unet_step_flops(
        sca_data::bench::BENCH_IN_CHANNELS as u64,
        n("depth")? as u32,
        n("base_width")?,
        size,
        batch,
    );
    let rate = |t: Option<f64>| t.map(|t| flops * t / batch as f64);
    let pct = |t: Option<f64>, peak: f64| {
        rate(t).map_or("n/a".into(), |x| {
            format!("{:.2} TFLOP/s, {:.1}%", x / 1e12, 100.0 * x / peak)
        })
    };
    let [o, f, ob, b] = tiles_per_s;
    let mut line = format!(
        "Model FLOP utilisation ({:.0} GFLOP per step: the convolutions, forward and both gradients): against the {gpu}'s {:.0} TFLOP/s fp32 peak, sca-train fp32 {} and PyTorch fp32 {}",
        flops / 1e9,
        fp32_peak / 1e12,
        pct(o, fp32_peak),
        pct(f, fp32_peak),
    );
    if ob.is_some() || b.is_some() {
        line += &format!(
            "; against its {:.0} TFLOP/s bf16 tensor-core peak, sca-train bf16 {} and PyTorch AMP bf16 {}",
            bf16_peak / 1e12,
            pct(ob, bf16_peak),
            pct(b, bf16_peak),
        );
    }
    line += &format!(
        ". With {} to {} channels the convolutions are bound by memory, not arithmetic.\n\n",
        sca_data::bench::BENCH_IN_CHANNELS,
        n("base_width")? << n("depth")?
    );
    Some(line)
}

/// Peak GPU memory of round `last`: each of ours (fp32; bf16 and its
/// `variants`, tag prefix and label, where they ran) against PyTorch in the
/// same precision, and the memory goal's verdicts. The goal compares like
/// with like: the most our device memory pool held at once (every buffer:
/// dfdx's cache, cuDNN's workspace; freed blocks the pool keeps) against
/// PyTorch's peak reserved memory (its caching allocator's segments);
/// neither counts the context or the libraries' loaded kernels, which the
/// driver's view, shown beside them, does. Results from before the pool was
/// read judge the driver's view, and say so.
fn memory_table(r: &Results, last: usize, bf16: bool, variants: &[(&str, &str)]) -> String {
    let mem = |tag: &str, k: &str| r.num(tag, k).map_or("n/a".to_string(), mib);
    let mut rows = vec![("fp32", format!("sca-train-{last}"), "none")];
    if bf16 {
        rows.push(("bf16", format!("sca-train-bf16-{last}"), "bf16"));
    }
    for (prefix, label) in variants {
        rows.push((label, format!("{prefix}-{last}"), "bf16"));
    }
    let mut s = format!(
        "Peak GPU memory, round {last}. sca-train's pool: the most the device's memory pool held from the driver (reserved) and handed out (used) at once, from the model's making to the end; every buffer comes from it, and dfdx's buffer cache counts as used. PyTorch's allocated and reserved: its caching allocator's peaks during the timed steps. Driver view: in use after the timed steps less before the model (also the libraries' handles and loaded kernels). The goal, ≤ {MEM_GOAL}x, compares the two reserved peaks.\n\n| run | sca-train pool reserved | sca-train pool used | sca-train driver view | PyTorch allocated | PyTorch reserved | PyTorch driver view | ratio (reserved / reserved) |\n|---|---|---|---|---|---|---|---|\n"
    );
    let mut verdicts = Vec::new();
    let mut caches = Vec::new();
    for (what, ours, amp) in rows {
        if let Some(line) = r.ok(&ours).and_then(|v| cache_profile(&v["gpu_cache"])) {
            caches.push(format!("- {what}: {line}\n"));
        }
        let theirs = format!("pytorch-{amp}-{last}");
        let reserved = r.num(&theirs, "gpu_mem_reserved_bytes");
        let (ratio, basis) = match r.num(&ours, "gpu_pool_reserved_bytes") {
            Some(pool) => (reserved.map(|t| pool / t), ""),
            None => (
                r.num(&ours, "gpu_mem_bytes")
                    .zip(reserved)
                    .map(|(o, t)| o / t),
                " (driver view)",
            ),
        };
        let (cell, verdict) = match ratio {
            Some(q) if q <= MEM_GOAL => (
                format!("{q:.2}x{basis}"),
                format!("{what} {q:.2}x{basis}: **met**"),
            ),
            Some(q) => (
                format!("{q:.2}x{basis}"),
                format!("{what} {q:.2}x{basis}: **not met**"),
            ),
            None => ("n/a".to_string(), format!("{what}: **not measured**")),
        };
        s += &format!(
            "| {what} | {} | {} | {} | {} | {} | {} | {cell} |\n",
            mem(&ours, "gpu_pool_reserved_bytes"),
            mem(&ours, "gpu_pool_used_bytes"),
            mem(&ours, "gpu_mem_bytes"),
            mem(&theirs, "gpu_mem_allocated_bytes"),
            mem(&theirs, "gpu_mem_reserved_bytes"),
            mem(&theirs, "gpu_mem_driver_bytes"),
        );
        verdicts.push(verdict);
    }
    s += &format!(
        "\nGoal ≤ {MEM_GOAL}x PyTorch's reserved memory in the same precision: {}.\n\n",
        verdicts.join("; ")
    );
    if !caches.is_empty() {
        s += "What dfdx's buffer cache held at the end of each run, every buffer given back (the model's too), by buffer size (a buffer is reused for a request of its exact size only, so each size holds the most of it the run had alive at once):\n\n";
        s += &caches.concat();
        s += "\n";
    }
    s
}

/// `gpu_cache`'s `[[bytes, count], ...]` as one line: the total, then each
/// size of at least 2% of it, largest first, the rest lumped together.
fn cache_profile(v: &Value) -> Option<String> {
    let sizes: Vec<(f64, u64)> = v
        .as_array()?
        .iter()
        .map(|e| Some((e.get(0)?.as_f64()?, e.get(1)?.as_u64()?)))
        .collect::<Option<_>>()?;
    let total: f64 = sizes.iter().map(|(b, n)| b * *n as f64).sum();
    let count: u64 = sizes.iter().map(|(_, n)| n).sum();
    if count == 0 {
        return Some("empty".into());
    }
    let (big, small): (Vec<_>, Vec<_>) = sizes
        .iter()
        .partition(|(b, n)| b * *n as f64 >= 0.02 * total);
    let mut parts: Vec<String> = big
        .iter()
        .map(|(b, n)| format!("{n} x {}", mib_fine(*b)))
        .collect();
    if !small.is_empty() {
        let rest: f64 = small.iter().map(|(b, n)| b * *n as f64).sum();
        let k: u64 = small.iter().map(|(_, n)| n).sum();
        parts.push(format!("{k} smaller ({})", mib_fine(rest)));
    }
    Some(format!(
        "{} in {count} buffers: {}",
        mib_fine(total),
        parts.join(", ")
    ))
}

/// Bytes in MiB, with a decimal below 10 MiB.
fn mib_fine(bytes: f64) -> String {
    let m = bytes / (1024.0 * 1024.0);
    if m < 10.0 {
        format!("{m:.1} MiB")
    } else {
        format!("{m:.0} MiB")
    }
}

/// Where one step of round 1 went, phase by phase (`sca-train bench`'s
/// `phases`: one more step, each phase ended by a device synchronisation).
fn phases_line(r: &Results) -> Option<String> {
    let p = r.ok("sca-train-1")?.get("phases")?;
    let names = [
        ("input_ms", "input to the device"),
        ("forward_ms", "forward"),
        ("logits_to_host_ms", "logits to the host"),
        ("loss_ms", "loss"),
        ("backward_ms", "backward"),
        ("update_ms", "AdamW and running statistics"),
    ];
    let parts: Vec<(String, f64)> = names
        .iter()
        .filter_map(|(k, name)| Some((name.to_string(), p.get(*k)?.as_f64()?)))
        .collect();
    if parts.is_empty() {
        return None;
    }
    let total: f64 = parts.iter().map(|p| p.1).sum();
    let list: Vec<String> = parts.iter().map(|(n, v)| format!("{n} {v:.1}")).collect();
    Some(format!(
        "One more step of round 1, each phase ended by a device synchronisation (ms): {} (sum {total:.1}).\n\n",
        list.join(", ")
    ))
}

/// The ten kernels with the most GPU time per step, and the total beside
/// the measured step time (`step_s`): the rest of a step is the GPU waiting.
fn kernel_table(k: &KernelProfile, step_s: Option<f64>) -> String {
    let per_step = |us: f64| us / k.steps as f64 / 1e3;
    let total: f64 = k.kernels.iter().map(|x| x.1).sum();
    let launches: u64 = k.kernels.iter().map(|x| x.2).sum();
    let mut s = format!(
        "\nWhere sca-train's GPU time goes{} (`ncu --metrics gpu__time_duration.sum`, one process of {} steps at the timed size, `ncu.txt`): {:.1} ms of kernels per step in {} launches{}.\n\n| kernel | ms/step | launches/step | share |\n|---|---|---|---|\n",
        if k.bf16 { " with `--precision bf16`" } else { "" },
        k.steps,
        per_step(total),
        launches / k.steps as u64,
        step_s.map_or(String::new(), |t| format!(
            ", against {:.1} ms measured per step (the rest: the GPU idle, waiting for the host)",
            t * 1e3
        )),
    );
    for (name, us, n) in k.kernels.iter().take(10) {
        let short: String = name.chars().take(60).collect();
        let ell = if short.len() < name.len() { "…" } else { "" };
        s += &format!(
            "| `{short}{ell}` | {:.2} | {} | {:.0}% |\n",
            per_step(*us),
            n / k.steps as u64,
            100.0 * us / total
        );
    }
    s
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
                ",\"tiles_per_s\":50.0,\"gpu_mem_bytes\":1048576000,\"gpu_pool_reserved_bytes\":1006632960,\"gpu_pool_used_bytes\":943718400",
            );
            s += &line(&format!("pytorch-none-{round}"), ",\"torch\":\"2.11.0\",\"tiles_per_s\":80.0,\"gpu_mem_allocated_bytes\":524288000,\"gpu_mem_reserved_bytes\":629145600,\"gpu_mem_driver_bytes\":838860800");
            s += &line(&format!("pytorch-bf16-{round}"), ",\"torch\":\"2.11.0\",\"tiles_per_s\":160.0,\"gpu_mem_allocated_bytes\":262144000,\"gpu_mem_reserved_bytes\":314572800,\"gpu_mem_driver_bytes\":419430400");
        }
        s
    }

    #[test]
    fn the_im2col_round_is_compared_with_round_1() {
        let mut text = sample("[0.9,0.8,0.7]").replacen(
            "\"run\":\"sca-train-1\"",
            "\"run\":\"sca-train-1\",\"phases\":{\"input_ms\":2.0,\"forward_ms\":10.5,\"logits_to_host_ms\":1.0,\"loss_ms\":3.0,\"backward_ms\":20.0,\"update_ms\":1.5}",
            1,
        );
        text += &line("sca-train-im2col-1", ",\"tiles_per_s\":25.0");
        let r = parse(&text, "").unwrap();
        let s = render(&r, "here").unwrap();
        assert!(
            s.contains("cuDNN off (`SCA_CUDNN=0`: dfdx's im2col convolutions), round 1: 25.00 tiles/s; with cuDNN 2.00x that"),
            "{s}"
        );
        // Not a round of its own.
        assert!(!s.contains("| 3 |"), "{s}");
        assert!(
            s.contains("(ms): input to the device 2.0, forward 10.5, logits to the host 1.0, loss 3.0, backward 20.0, AdamW and running statistics 1.5 (sum 38.0)"),
            "{s}"
        );
    }

    #[test]
    fn bf16_rounds_get_their_columns_goal_and_trace() {
        let mut text = sample("[0.9,0.8,0.7]");
        for round in 1..=2 {
            text += &line(
                &format!("sca-train-bf16-{round}"),
                ",\"tiles_per_s\":176.0,\"gpu_mem_bytes\":734003200",
            );
        }
        // Off by 1.5e-2 at step 2: within bf16's tolerance, not fp32's.
        text += &line("trace-device-bf16", ",\"losses\":[0.9,0.815,0.7]");
        let s = render(&parse(&text, "").unwrap(), "on the GPU machine").unwrap();
        assert!(
            s.contains("| **median** | **50.00** | **80.00** | **0.625x** | **176.00** | **160.00** | **1.100x** |"),
            "{s}"
        );
        assert!(
            s.contains("Goal ≥ 1x PyTorch AMP bf16 with `--precision bf16`: **met**"),
            "{s}"
        );
        // No pool peak in these bf16 rounds: the driver's view is judged.
        assert!(
            s.contains(
                "| bf16 | n/a | n/a | 700 MiB | 250 MiB | 300 MiB | 400 MiB | 2.33x (driver view) |"
            ),
            "{s}"
        );
        assert!(
            s.contains(
                "largest difference 1.500e-2 (relative 1.500e-2; tolerance 2e-2): **agree**"
            ),
            "{s}"
        );
        let worse = text.replace("0.815", "0.83");
        let s = render(&parse(&worse, "").unwrap(), "x").unwrap();
        assert!(s.contains("tolerance 2e-2): **DISAGREE**"), "{s}");
    }

    #[test]
    fn bf16_saved_rounds_get_their_speed_memory_verdict_and_trace() {
        let mut text = sample("[0.9,0.8,0.7]");
        for (round, tiles) in [(1, 170.0), (2, 180.0)] {
            text += &line(
                &format!("sca-train-bf16-{round}"),
                ",\"tiles_per_s\":176.0,\"gpu_mem_bytes\":734003200,\"gpu_cache\":[[67108864,4],[33554432,2],[4096,3]]",
            );
            // 440 MiB of buffers against AMP bf16's 300 MiB reserved.
            text += &line(
                &format!("sca-train-bf16-saved-{round}"),
                &format!(",\"tiles_per_s\":{tiles},\"gpu_mem_bytes\":524288000,\"gpu_pool_reserved_bytes\":461373440,\"gpu_pool_used_bytes\":419430400"),
            );
            // The pool: 330 MiB held (1.10x), 200 MiB of it handed out.
            text += &line(
                &format!("sca-train-bf16-saved-pool-{round}"),
                ",\"tiles_per_s\":150.0,\"gpu_mem_bytes\":419430400,\"gpu_pool_reserved_bytes\":346030080,\"gpu_pool_used_bytes\":209715200",
            );
        }
        text += &line("trace-device-bf16", ",\"losses\":[0.9,0.815,0.7]");
        text += &line("trace-device-bf16-saved", ",\"losses\":[0.9,0.81,0.7]");
        let s = render(&parse(&text, "").unwrap(), "on the GPU machine").unwrap();
        assert!(
            s.contains("`--precision bf16`: 170.00, 180.00 tiles/s, median 175.00, 1.094x PyTorch AMP bf16 (goal ≥ 1x: **met**)"),
            "{s}"
        );
        assert!(
            s.contains("| bf16, bf16 saved activations | 440 MiB | 400 MiB | 500 MiB | 250 MiB | 300 MiB | 400 MiB | 1.47x |"),
            "{s}"
        );
        assert!(
            s.contains("`SCA_BF16_SAVED=bf16 SCA_CUDA_BUFFERS=pool`: a freed block serves any request it fits, where dfdx's cache keeps it for its exact size), `--precision bf16`: 150.00, 150.00 tiles/s, median 150.00, 0.938x PyTorch AMP bf16 (goal ≥ 1x: **not met**)"),
            "{s}"
        );
        assert!(
            s.contains("| bf16, bf16 saved activations, memory pool | 330 MiB | 200 MiB | 400 MiB | 250 MiB | 300 MiB | 400 MiB | 1.10x |"),
            "{s}"
        );
        // The bf16 rounds' cache: 4 x 64 MiB, 2 x 32 MiB and 3 small ones.
        assert!(
            s.contains(
                "- bf16: 320 MiB in 9 buffers: 4 x 64 MiB, 2 x 32 MiB, 3 smaller (0.0 MiB)\n"
            ),
            "{s}"
        );
        assert!(
            !s.contains("- fp32:"),
            "no cache profile in the fp32 rounds: {s}"
        );
        assert!(
            s.contains("Goal ≤ 1.5x PyTorch's reserved memory in the same precision: fp32 1.60x: **not met**; bf16 2.33x (driver view): **not met**; bf16, bf16 saved activations 1.47x: **met**; bf16, bf16 saved activations, memory pool 1.10x: **met**."),
            "{s}"
        );
        assert!(
            s.contains("`--precision bf16` and bf16 saved activations against the CPU's fp32: largest difference 1.000e-2 (relative 1.000e-2; tolerance 2e-2): **agree**"),
            "{s}"
        );
        // A failed round shows as such; without the runs, no such lines.
        let failed = text.replace(
            &line(
                "sca-train-bf16-saved-2",
                ",\"tiles_per_s\":180,\"gpu_mem_bytes\":524288000,\"gpu_pool_reserved_bytes\":461373440,\"gpu_pool_used_bytes\":419430400",
            ),
            "{\"run\":\"sca-train-bf16-saved-2\",\"error\":\"CUDA_ERROR_UNKNOWN\"}\n",
        );
        assert_ne!(failed, text);
        let s = render(&parse(&failed, "").unwrap(), "x").unwrap();
        assert!(s.contains("170.00, failed tiles/s, median 170.00"), "{s}");
        assert!(
            s.contains("bf16, bf16 saved activations: **not measured**"),
            "{s}"
        );
        let s = render(&parse(&sample("[0.9,0.8,0.7]"), "").unwrap(), "x").unwrap();
        assert!(!s.contains("saved activations"), "{s}");
        assert!(
            s.contains("in the same precision: fp32 1.60x: **not met**."),
            "{s}"
        );
    }

    #[test]
    fn flops_of_a_tiny_unet_by_hand_and_mfu_against_the_gpu_peak() {
        // depth 1, width 2, 4 bands, 4x4, batch 1: down 4->2, 2->2 at 4x4;
        // bottom 2->4, 4->4 at 2x2; up 4->2 (2x2 -> 4x4); decoder 4->2, 2->2;
        // head 2->1 (1x1).
        let fwd = 2.0 * 9.0 * (4.0 * 2.0 + 2.0 * 2.0) * 16.0
            + 2.0 * 9.0 * (2.0 * 4.0 + 4.0 * 4.0) * 4.0
            + 2.0 * 4.0 * 2.0 * 16.0
            + 2.0 * 9.0 * (4.0 * 2.0 + 2.0 * 2.0) * 16.0
            + 2.0 * 2.0 * 16.0;
        assert_eq!(unet_step_flops(4, 1, 2, 4, 1), 3.0 * fwd);
        // The quickstart U-Net at 512x512, batch 8.
        let quick = unet_step_flops(4, 3, 16, 512, 8);
        assert!((quick / 1e9 - 447.1).abs() < 0.1, "{quick}");
        let mut text = sample("[0.9,0.8,0.7]");
        text += &line("sca-train-bf16-1", ",\"tiles_per_s\":200.0");
        let r = parse(&text, "gpu: NVIDIA H200, 580.159.04, 143771 MiB\n").unwrap();
        let s = render(&r, "x").unwrap();
        // 50 tiles/s: 447.1e9 * 50 / 8 = 2.79 TFLOP/s, 4.2% of 67.
        assert!(s.contains("sca-train fp32 2.79 TFLOP/s, 4.2%"), "{s}");
        assert!(s.contains("sca-train bf16 11.18 TFLOP/s, 1.1%"), "{s}");
        assert!(peak_flops("Tesla T4").is_none());
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
        assert!(s.contains("Goal ≥ 0.8x PyTorch fp32: **not met**"), "{s}");
        assert!(
            !s.contains("cuDNN off"),
            "no im2col run in this sample: {s}"
        );
        assert!(
            s.contains(
                "| fp32 | 960 MiB | 900 MiB | 1000 MiB | 500 MiB | 600 MiB | 800 MiB | 1.60x |"
            ),
            "{s}"
        );
        assert!(
            s.contains("in the same precision: fp32 1.60x: **not met**."),
            "{s}"
        );
        assert!(s.contains("**agree**"), "{s}");
        assert!(s.contains("gpu: NVIDIA H100"), "{s}");
    }

    /// ncu's per-kernel summary as the H100 printed it (excerpt).
    const NCU: &str = "==PROF== Connected to process 996 (/work/main/target/gpu-kit/sca-train)
==PROF== Profiling \"bn_stats\" - 0: 0%....50%....100% - 1 pass
{\"impl\":\"sca-train\",\"device\":\"cuda\",\"steps\":1,\"warmup\":1,\"losses\":[]}
[996] sca-train@127.0.0.1
  badd_bwd_lhs_f32 (1, 1, 1)x(128, 1, 1), Device 0, CC 9.0, Invocations 3
    Section: Command line profiler metrics
    ---------------------- ----------- ------- ------- -------
    Metric Name            Metric Unit Minimum Maximum Average
    ---------------------- ----------- ------- ------- -------
    gpu__time_duration.sum          us    4.29    4.48    4.00
    ---------------------- ----------- ------- ------- -------

  badd_bwd_lhs_f32 (16384, 1, 1)x(128, 1, 1), Device 0, CC 9.0, Invocations 2
    Section: Command line profiler metrics
    ---------------------- ----------- ------- ------- -------
    Metric Name            Metric Unit Minimum Maximum Average
    ---------------------- ----------- ------- ------- -------
    gpu__time_duration.sum          ms    1.10    1.30    1.20
    ---------------------- ----------- ------- ------- -------

  sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize32x32x8_stage3_warpsize1x2x1_ffma_aligna4_alignc4_execute_kernel__5x_cublas (1, 1, 2)x(64, 1, 1), Device 0, CC 9.0, Invocations 10
    Section: Command line profiler metrics
    ---------------------- ----------- ------- ------- -------
    Metric Name            Metric Unit Minimum Maximum Average
    ---------------------- ----------- ------- ------- -------
    gpu__time_duration.sum          us    1,000.00    1,100.00    1,050.00
    ---------------------- ----------- ------- ------- -------
";

    #[test]
    fn kernel_times_are_summed_by_name_per_step() {
        let k = parse_ncu(NCU).unwrap();
        assert_eq!(k.steps, 2);
        // Profiled from the first timed step on (gpu.sh's first line): the
        // warm-up step is not counted.
        let timed = parse_ncu(&format!("{PROFILED_TIMED}\n{NCU}")).unwrap();
        assert_eq!(timed.steps, 1);
        assert_eq!(timed.kernels, k.kernels);
        // 10 x 1050 us; 3 x 4 us + 2 x 1200 us.
        assert_eq!(k.kernels.len(), 2, "{k:?}");
        assert!(k.kernels[0].0.starts_with("sm80_xmma_gemm"), "{k:?}");
        assert_eq!((k.kernels[0].1, k.kernels[0].2), (10_500.0, 10));
        assert_eq!(k.kernels[1].0, "badd_bwd_lhs_f32");
        assert!((k.kernels[1].1 - 2_412.0).abs() < 1e-9, "{k:?}");
        assert_eq!(k.kernels[1].2, 5);
        let t = kernel_table(&k, Some(0.010));
        // (10500 + 2412) us over 2 steps.
        assert!(
            t.contains("6.5 ms of kernels per step in 7 launches, against 10.0 ms measured"),
            "{t}"
        );
        assert!(t.contains("| `badd_bwd_lhs_f32` | 1.21 | 2 | 19% |"), "{t}");
        assert!(
            t.contains(
                "sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize32x32x8_stage3…` | 5.25 | 5 | 81% |"
            ),
            "{t}"
        );
        assert!(!k.bf16 && !t.contains("bf16"), "{t}");
        // A profile of `--precision bf16` says so.
        let bf16 =
            parse_ncu(&NCU.replace("\"losses\"", "\"precision\":\"bf16\",\"losses\"")).unwrap();
        assert!(bf16.bf16);
        assert!(
            kernel_table(&bf16, None).contains("GPU time goes with `--precision bf16`"),
            "{}",
            kernel_table(&bf16, None)
        );
        assert!(parse_ncu("==PROF== nothing profiled\n").is_none());
        assert_eq!(
            kernel_name(
                "void cublasLt::splitKreduce_kernel<32, 16, int>(cublasLt::P<T6>, const T4 *)"
            ),
            "cublasLt::splitKreduce_kernel<32, 16, int>"
        );
        assert_eq!(kernel_name("bn_stats"), "bn_stats");
    }

    #[test]
    fn a_diverging_trace_and_failed_runs_are_reported() {
        let r = parse(&sample("[0.9,0.85,0.7]"), "").unwrap();
        assert!(render(&r, "x").unwrap().contains("**DISAGREE**"));
        let r = parse(&sample("[0.9,0.8]"), "").unwrap();
        let e = render(&r, "x").unwrap_err().to_string();
        assert!(e.contains("differ in length"), "{e}");
        // A failed GPU run: the rest is still rendered, the failure listed.
        let failed = sample("[0.9,0.8,0.7]").replace(
            &line(
                "sca-train-2",
                ",\"tiles_per_s\":50.0,\"gpu_mem_bytes\":1048576000,\"gpu_pool_reserved_bytes\":1006632960,\"gpu_pool_used_bytes\":943718400",
            ),
            "{\"run\":\"sca-train-2\",\"error\":\"thread panicked\\nCUDA_ERROR_OUT_OF_MEMORY\"}\n",
        );
        let s = render(&parse(&failed, "").unwrap(), "x").unwrap();
        assert!(s.contains("| 2 | failed | 80.00 | 160.00 | n/a |"), "{s}");
        assert!(s.contains("| **median** | **50.00** | **80.00**"), "{s}");
        assert!(
            s.contains("- `sca-train-2`: CUDA_ERROR_OUT_OF_MEMORY"),
            "{s}"
        );
        assert!(
            s.contains("| fp32 | n/a | n/a | n/a | 500 MiB | 600 MiB | 800 MiB | n/a |"),
            "{s}"
        );
        assert!(s.contains("fp32: **not measured**"), "{s}");
        // No throughput at all is an error, and so is a line without a tag.
        let early: String = sample("[0.9,0.8,0.7]")
            .lines()
            .take(3)
            .map(|l| format!("{l}\n"))
            .collect();
        let e = render(&parse(&early, "").unwrap(), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no throughput rounds"), "{e}");
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
