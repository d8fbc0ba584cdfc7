//! Training-throughput benchmark of the U-Net, the Rust side of the comparison
//! with `bench/unet_reference.py` (same architecture, BCE loss, Adam).
//!
//! Run (release build, prints one JSON line):
//! `SCA_BENCH=depth,base_width,size,batch,steps cargo run --release -p sca-train --example bench_unet`
//! (default `4,32,256,8,3`).

use std::time::Instant;

use sca_spec::{Loss, LossKind};

use crate::model::{AdamWConfig, ModelError, SplitMix64, UNet, UNetConfig};

/// Input bands of the benchmark tiles (the quickstart's 4-band imagery).
pub const BENCH_IN_CHANNELS: usize = 4;

/// Tiles per second of `steps` training steps (after one warm-up step) of a
/// U-Net with `depth` and `base_width` on random `size x size` tiles in batches
/// of `batch`, BCE loss, AdamW (lr 1e-3, no decay), batch norm on; weights and
/// data drawn from `seed`.
pub fn bench_train(
    depth: u8,
    base_width: u32,
    size: usize,
    batch: usize,
    steps: usize,
    seed: u64,
) -> Result<f64, ModelError> {
    if steps == 0 {
        return Err(ModelError::Input("steps must be at least 1".into()));
    }
    let cfg = UNetConfig {
        in_channels: BENCH_IN_CHANNELS,
        depth: depth as usize,
        base_width: base_width as usize,
        batch_norm: true,
    };
    let mut model = UNet::new(cfg, seed, AdamWConfig::default())?;
    let mut rng = SplitMix64::new(seed ^ 0x5EED);
    let images: Vec<f32> = (0..batch * BENCH_IN_CHANNELS * size * size)
        .map(|_| rng.normal() as f32)
        .collect();
    let masks: Vec<f32> = (0..batch * size * size)
        .map(|_| (rng.uniform() > 0.5) as u8 as f32)
        .collect();
    let loss = Loss::Single(LossKind::Bce);
    model.train_step(&images, &masks, batch, size, size, &loss)?;
    let t0 = Instant::now();
    for _ in 0..steps {
        model.train_step(&images, &masks, batch, size, size, &loss)?;
    }
    Ok((batch * steps) as f64 / t0.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_benchmark_runs() {
        let tps = bench_train(1, 2, 8, 2, 1, 0).unwrap();
        assert!(tps.is_finite() && tps > 0.0);
        assert!(bench_train(1, 2, 8, 2, 0, 0).is_err());
        assert!(
            bench_train(3, 2, 12, 2, 1, 0).is_err(),
            "12 is not divisible by 8"
        );
    }
}
