//! Training-throughput benchmark of the U-Net on either device, the Rust side
//! of the comparison with `bench/unet_reference.py` (same architecture, BCE
//! loss, Adam), and the per-step loss trace that compares the CPU and GPU runs.
//!
//! `sca-train bench --device cpu|cuda ...` prints one JSON line
//! ([`BenchReport`]); `cargo xtask bench train` (CPU) and
//! `sca-train/bench/gpu.sh` (the GPU machine) run it.

use std::time::Instant;

use sca_spec::{Loss, LossKind, Precision};
use serde::Serialize;

use crate::device::{Compute, WithDevice};
use crate::gpu_memory::GpuBuffers;
use crate::model::{AdamWConfig, ModelError, SplitMix64, StepPhases, UNet, UNetConfig};
use crate::ops::HostDevice;

pub use sca_data::bench::BENCH_IN_CHANNELS;

/// What to train: a U-Net of `depth` and `base_width` (batch norm on) on
/// random `size x size` tiles in batches of `batch`, BCE loss, AdamW (lr 1e-3,
/// no decay); weights and data drawn from `seed`. Also `sca-train bench`'s
/// options, with the quickstart U-Net as the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::Args)]
pub struct BenchSpec {
    #[arg(long, default_value_t = 3)]
    pub depth: u8,
    #[arg(long, default_value_t = 16)]
    pub base_width: u32,
    /// Tile edge in pixels (divisible by 2^depth)
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Timed steps, after `warmup` untimed ones, all on one fixed batch (0: trace only)
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed steps before the timed ones
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Steps of the loss trace: each on a fresh batch drawn from the seed and
    /// the step number, from freshly initialised weights (0: none)
    #[arg(long, default_value_t = 0)]
    pub trace: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The convolutions' number format: fp32, or bf16 (cuda only)
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    pub precision: Precision,
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    match s {
        "fp32" => Ok(Precision::Fp32),
        "bf16" => Ok(Precision::Bf16),
        _ => Err(format!("`{s}` is not fp32 or bf16")),
    }
}

/// One JSON line of results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub device: &'static str,
    /// `host` (our kernels) or `dfdx` (the ops on dfdx's own kernels, as on
    /// the GPU), with the convolutions' library where it is another
    /// (`dfdx, cuDNN 9.x.y convolutions`).
    pub ops: String,
    #[serde(flatten)]
    pub spec: BenchSpec,
    /// Timed throughput; absent when `steps` is 0 (a trace-only run).
    pub s_per_step: Option<f64>,
    pub tiles_per_s: Option<f64>,
    /// GPU memory in use after the timed steps, less what was in use before the
    /// model was made (driver view, with dfdx's buffer cache holding the step's
    /// peak); absent on the CPU.
    pub gpu_mem_bytes: Option<u64>,
    /// Where the GPU buffers came from (`cache`: dfdx's buffer cache;
    /// `pool`: the driver's memory pool); absent on the CPU.
    pub gpu_buffers: Option<&'static str>,
    /// The most GPU memory the device's memory pool held at once, from the
    /// model's making to the end ([`Compute::gpu_pool_peaks`]: every buffer,
    /// dfdx's cache included; PyTorch's counterpart is its peak reserved
    /// memory); absent on the CPU.
    pub gpu_pool_reserved_bytes: Option<u64>,
    /// The most of it handed out at once (with dfdx's cache on, the cache's
    /// buffers count as handed out).
    pub gpu_pool_used_bytes: Option<u64>,
    /// What dfdx's buffer cache held at the end, every buffer given back
    /// (the model's too), by size: `[bytes of each buffer, how many]`,
    /// largest first ([`Compute::gpu_cached_buffers`]); absent on the CPU
    /// and with the pool.
    pub gpu_cache: Option<Vec<(usize, usize)>>,
    /// The process's peak resident memory (`VmHWM`), where the OS tells.
    pub peak_rss_bytes: Option<u64>,
    /// The loss of each trace step, in order.
    pub losses: Vec<f64>,
    /// One more step after the timed ones, its phases each ended by a
    /// device synchronisation: where a step's time goes. Absent in a
    /// trace-only run.
    pub phases: Option<StepPhases>,
}

/// This process's peak resident set size: Linux's `VmHWM`; `None` elsewhere.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Runs `spec` on `compute`; `dfdx_ops` runs the ops on dfdx's own kernels
/// on the CPU too (they always do on the GPU).
pub fn run(spec: BenchSpec, compute: Compute, dfdx_ops: bool) -> Result<BenchReport, ModelError> {
    if spec.steps == 0 && spec.trace == 0 {
        return Err(ModelError::Input(
            "nothing to do: steps and trace are both 0".into(),
        ));
    }
    let device = compute.name();
    let before = compute.gpu_memory_used();
    compute.reset_gpu_pool_peaks();
    let probe = compute.clone();
    let (timing, phases, losses, ops) = if dfdx_ops {
        crate::ops::with_dfdx_ops(|| compute.run(Bench(spec)))?
    } else {
        compute.run(Bench(spec))?
    };
    let pool = probe.gpu_pool_peaks();
    let gpu_mem_bytes = match (before, probe.gpu_memory_used()) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    Ok(BenchReport {
        implementation: "sca-train",
        device,
        ops,
        spec,
        s_per_step: timing.map(|t| spec.batch as f64 / t),
        tiles_per_s: timing,
        gpu_mem_bytes,
        gpu_buffers: probe.gpu_buffers().map(GpuBuffers::name),
        gpu_pool_reserved_bytes: pool.map(|p| p.reserved),
        gpu_pool_used_bytes: pool.map(|p| p.used),
        gpu_cache: probe.gpu_cached_buffers(),
        peak_rss_bytes: peak_rss_bytes(),
        losses,
        phases,
    })
}

struct Bench(BenchSpec);

impl WithDevice for Bench {
    /// Tiles/s, one step's phases, the trace's losses, and which ops ran.
    type Output = Result<(Option<f64>, Option<StepPhases>, Vec<f64>, String), ModelError>;

    fn run<D: HostDevice>(self, dev: D) -> Self::Output {
        let s = self.0;
        let cfg = UNetConfig {
            in_channels: BENCH_IN_CHANNELS,
            depth: s.depth as usize,
            base_width: s.base_width as usize,
            batch_norm: true,
        };
        let loss = Loss::Single(LossKind::Bce);
        let losses = if s.trace > 0 {
            let mut model = UNet::with_device(dev.clone(), cfg, s.seed, AdamWConfig::default())?;
            (0..s.trace)
                .map(|step| {
                    let (images, masks) = batch(&s, step as u64 + 1);
                    model
                        .train_step(&images, &masks, s.batch, s.size, s.size, &loss)
                        .map(f64::from)
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        let (timing, phases) = if s.steps > 0 {
            let mut model = UNet::with_device(dev, cfg, s.seed, AdamWConfig::default())?;
            let (images, masks) = batch(&s, 0);
            for _ in 0..s.warmup {
                model.train_step(&images, &masks, s.batch, s.size, s.size, &loss)?;
            }
            D::profiler_range(true);
            let t0 = Instant::now();
            for _ in 0..s.steps {
                // Returns the loss value, so each step has finished on the device.
                model.train_step(&images, &masks, s.batch, s.size, s.size, &loss)?;
            }
            let elapsed = t0.elapsed().as_secs_f64();
            D::profiler_range(false);
            let shape = (s.batch, s.size, s.size);
            let (_, phases) = model.train_step_phases(&images, &masks, shape, &loss)?;
            (Some((s.batch * s.steps) as f64 / elapsed), Some(phases))
        } else {
            (None, None)
        };
        let ops = if crate::ops::native::enabled::<D>() {
            match (D::convolutions(), s.precision) {
                (Some(conv), Precision::Bf16) => {
                    #[cfg(feature = "cuda")]
                    let saved = crate::ops::cuda_bf16::saved().describe();
                    #[cfg(not(feature = "cuda"))]
                    let saved = "";
                    format!("dfdx, {conv} convolutions, bf16 operands{saved}")
                }
                (Some(conv), Precision::Fp32) => format!("dfdx, {conv} convolutions"),
                (None, _) => "dfdx".into(),
            }
        } else {
            "host".into()
        };
        Ok((timing, phases, losses, ops))
    }
}

/// Random normal images and coin-flip masks for batch number `k`.
fn batch(s: &BenchSpec, k: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix64::new(s.seed ^ 0x5EED ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let images = (0..s.batch * BENCH_IN_CHANNELS * s.size * s.size)
        .map(|_| rng.normal() as f32)
        .collect();
    let masks = (0..s.batch * s.size * s.size)
        .map(|_| (rng.uniform() > 0.5) as u8 as f32)
        .collect();
    (images, masks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceRequest;

    fn tiny() -> BenchSpec {
        BenchSpec {
            depth: 1,
            base_width: 2,
            size: 8,
            batch: 2,
            steps: 1,
            warmup: 1,
            trace: 0,
            seed: 0,
            precision: Precision::Fp32,
        }
    }

    #[test]
    fn tiny_benchmark_runs_and_bad_specs_are_refused() {
        let cpu = || Compute::open(DeviceRequest::Cpu).unwrap();
        let tps = run(tiny(), cpu(), false).unwrap().tiles_per_s.unwrap();
        assert!(tps.is_finite() && tps > 0.0);
        let none = BenchSpec { steps: 0, ..tiny() };
        assert!(run(none, cpu(), false).is_err());
        let odd = BenchSpec {
            depth: 3,
            size: 12,
            ..tiny()
        };
        assert!(run(odd, cpu(), false).is_err(), "12 is not divisible by 8");
    }

    #[test]
    fn loss_trace_is_seeded_and_separate_from_timing() {
        let spec = BenchSpec {
            steps: 0,
            trace: 6,
            ..tiny()
        };
        let cpu = || Compute::open(DeviceRequest::Cpu).unwrap();
        let a = run(spec, cpu(), false).unwrap();
        assert_eq!(a.losses.len(), 6);
        assert_eq!(a.tiles_per_s, None);
        assert_eq!(a.gpu_mem_bytes, None);
        assert_eq!(
            (a.gpu_pool_reserved_bytes, a.gpu_pool_used_bytes),
            (None, None)
        );
        assert_eq!((a.gpu_buffers, &a.gpu_cache), (None, &None));
        // A test process holds more than a megabyte.
        assert!(a.peak_rss_bytes.is_some_and(|b| b > 1 << 20), "{a:?}");
        assert!(a.losses.iter().all(|l| l.is_finite() && *l > 0.0));
        // Same seed, same trace, also when timed steps run beside it.
        let b = run(BenchSpec { steps: 1, ..spec }, cpu(), false).unwrap();
        assert_eq!(a.losses, b.losses);
        assert!(b.tiles_per_s.is_some());
        // The phases of one more step, timed runs only.
        assert_eq!(a.phases, None);
        let p = b.phases.expect("a timed run reports one step's phases");
        let all = [
            p.input_ms,
            p.forward_ms,
            p.logits_to_host_ms,
            p.loss_ms,
            p.backward_ms,
            p.update_ms,
        ];
        assert!(all.iter().all(|v| v.is_finite() && *v >= 0.0), "{p:?}");
        assert!(p.forward_ms > 0.0 && p.backward_ms > 0.0, "{p:?}");
        let c = run(BenchSpec { seed: 1, ..spec }, cpu(), false).unwrap();
        assert_eq!(a.ops, "host");
        assert_ne!(a.losses, c.losses);
        // The JSON line carries what gpu.sh and xtask read.
        let v = serde_json::to_value(&b).unwrap();
        // The GPU's computation rehearsed on the CPU: the same trace to rounding.
        let d = run(spec, cpu(), true).unwrap();
        assert_eq!(d.ops, "dfdx");
        crate::ops::testutil::assert_close_f32(
            "dfdx trace",
            &d.losses.iter().map(|l| *l as f32).collect::<Vec<_>>(),
            &a.losses.iter().map(|l| *l as f32).collect::<Vec<_>>(),
            1e-4,
        );
        for key in [
            "impl",
            "device",
            "ops",
            "size",
            "batch",
            "tiles_per_s",
            "losses",
            "phases",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
    }
}
