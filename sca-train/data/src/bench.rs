//! Loader throughput: how many tiles per second the batch loader delivers
//! (read + decode + normalise + augment) from local disk or S3.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::discover::{default_workers, discover};
use super::error::{DataError, Result};
use super::loader::{EpochPlan, Loader, LoaderConfig};
use super::normalize::Normalizer;
use sca_spec::{Augmentation, Channel, Dataset};

/// Input bands of the benchmark tiles (the quickstart's 4-band imagery).
pub const BENCH_IN_CHANNELS: usize = 4;

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    pub batch_size: usize,
    /// Reader threads (`None`: the loader's default for the source).
    pub workers: Option<usize>,
    /// Use at most this many tiles (the first in index order).
    pub max_tiles: Option<usize>,
    /// Passes over the tiles.
    pub epochs: u32,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            batch_size: 8,
            workers: None,
            max_tiles: None,
            epochs: 1,
        }
    }
}

/// Result of [`bench_loader`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderBench {
    /// Tiles delivered (over all epochs).
    pub tiles: usize,
    pub tile_size: u32,
    pub workers: usize,
    /// Wall-clock seconds of the loading (discovery excluded).
    pub seconds: f64,
    pub tiles_per_sec: f64,
    /// Seconds spent discovering and joining the tiles.
    pub discover_seconds: f64,
}

/// Measure the loader's throughput on `dataset` (local roots relative to
/// `base_dir`): discover, then load every tile (shuffled, augmented as in
/// training) `epochs` times, and report tiles per second. Tiles are not
/// validated first; a bad tile fails the benchmark.
pub fn bench_loader(
    dataset: &Dataset,
    channels: &[Channel],
    base_dir: &Path,
    opts: &BenchOptions,
) -> Result<LoaderBench> {
    let t0 = Instant::now();
    let normalizer = Normalizer::new(channels)?;
    let mut index = discover(dataset, base_dir)?;
    if let Some(m) = opts.max_tiles {
        index.pairs.truncate(m.max(1));
    }
    let discover_seconds = t0.elapsed().as_secs_f64();
    let workers = opts.workers.unwrap_or_else(|| default_workers(&index));
    let tiles: Vec<usize> = (0..index.pairs.len()).collect();
    let loader = Loader::new(Arc::new(index), normalizer, dataset.tile_size);
    let cfg = LoaderConfig {
        workers: Some(workers),
        ..LoaderConfig::new(opts.batch_size)
    };
    let t1 = Instant::now();
    let mut n = 0usize;
    for epoch in 0..opts.epochs.max(1) {
        let plan = EpochPlan {
            epoch,
            seed: 0,
            shuffle: true,
            augmentation: Some(Augmentation::default()),
        };
        for batch in loader.batches(&tiles, &plan, &cfg) {
            let batch = batch?;
            if batch.images.iter().take(1).any(|v| v.is_nan()) {
                return Err(DataError::Loader("NaN in a loaded batch".into()));
            }
            n += batch.len();
        }
    }
    let seconds = t1.elapsed().as_secs_f64();
    Ok(LoaderBench {
        tiles: n,
        tile_size: dataset.tile_size,
        workers,
        seconds,
        tiles_per_sec: n as f64 / seconds.max(1e-9),
        discover_seconds,
    })
}
