//! `sca-data`: the training data, shared by the trainer (`sca-train`) and the
//! launcher (`xtask`), which must not compile the trainer's numeric stack to
//! pin a launch: tile discovery on local disk or S3, decoding and
//! validation, normalisation, the seeded train/validation split,
//! augmentation, the prefetching batch loader, the data manifest a launch
//! pins, and the synthetic dataset.
//!
//! The usual entry point is [`TrainData::open`], which runs the whole chain for
//! an experiment:
//!
//! 1. [`discover`] lists the tile directories selected by the experiment's
//!    regexes under the imagery and mask roots and joins them on `(z, x, y)`;
//! 2. [`validate`] reads and decodes every pair once, reports bad tiles and
//!    fails when more than `max_bad_fraction` of them are bad;
//! 3. [`split_tiles`] assigns tiles (or spatial blocks) to train/validation;
//! 4. [`Loader`] yields normalised, augmented NCHW batches with prefetching.
//!
//! [`TrainData::open_pinned`] first checks the data against the manifest a
//! launch recorded ([`manifest::build`]), and every read after that.
//!
//! Everything is deterministic from the experiment seed: the same experiment
//! gives the same split, batch order and augmentations on any machine and
//! regardless of thread timing.

pub mod augment;
pub mod bench;
pub mod decode;
pub mod discover;
pub mod error;
pub mod fsx;
pub mod loader;
pub mod manifest;
pub mod metered;
pub mod normalize;
pub mod par;
pub mod seed;
pub mod source;
pub mod split;
pub mod synth;

use std::path::Path;
use std::sync::Arc;

pub use augment::{augment_params, AugmentParams};
pub use bench::{bench_loader, BenchOptions, LoaderBench};
pub use decode::{decode_imagery, decode_mask, RawTile};
pub use discover::{discover, discover_pinned, validate, TileId, TileIndex, TilePair, Validation};
pub use error::{DataError, Result, TileError, TileErrorKind};
pub use loader::{Batch, BatchIter, EpochPlan, Loader, LoaderConfig, Sample};
pub use normalize::Normalizer;
pub use source::{S3Access, TileSource};
pub use split::{split_tiles, write_split_ids, SplitSet};

use sca_spec::{Augmentation, DataManifest, Experiment};

/// An experiment's data, discovered, validated and split, ready to load.
pub struct TrainData {
    /// The joined (and validated) tile pairs.
    pub index: Arc<TileIndex>,
    /// Which pairs train and which validate.
    pub split: SplitSet,
    /// Tiles that failed validation and were dropped.
    pub bad: Vec<TileError>,
    loader: Loader,
    seed: u64,
    augmentation: Augmentation,
}

impl TrainData {
    /// Discover, validate and split the experiment's dataset. Local roots are
    /// relative to `base_dir` (the experiment file's directory).
    pub fn open(exp: &Experiment, base_dir: &Path) -> Result<Self> {
        Self::open_pinned(exp, base_dir, None)
    }

    /// [`TrainData::open`] on the data `pinned` recorded at launch: the
    /// listing must match it, and every tile read (validation included)
    /// is checked against it; otherwise [`DataError::DataChanged`].
    pub fn open_pinned(
        exp: &Experiment,
        base_dir: &Path,
        pinned: Option<&DataManifest>,
    ) -> Result<Self> {
        Self::open_pinned_until(exp, base_dir, pinned, None)
    }

    /// [`TrainData::open_pinned`], ending with [`DataError::Interrupted`] once
    /// `stop` (SIGTERM) is raised while the tiles are validated.
    pub fn open_pinned_until(
        exp: &Experiment,
        base_dir: &Path,
        pinned: Option<&DataManifest>,
        stop: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<Self> {
        let normalizer = Normalizer::new(&exp.channels)?;
        let index = discover_pinned(&exp.dataset, base_dir, pinned)?;
        let Validation { index, bad } =
            discover::validate_until(index, &exp.dataset, &normalizer, None, stop)?;
        let split = split_tiles(&index, &exp.dataset, exp.experiment.seed)?;
        let index = Arc::new(index);
        let loader = Loader::new(index.clone(), normalizer, exp.dataset.tile_size);
        Ok(TrainData {
            index,
            split,
            bad,
            loader,
            seed: exp.experiment.seed,
            augmentation: exp.train.augmentation.clone(),
        })
    }

    /// The loader (for custom plans).
    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    /// Shuffled, augmented training batches of `epoch`.
    pub fn train_batches(&self, epoch: u32, cfg: &LoaderConfig) -> BatchIter {
        self.train_batches_from(epoch, cfg, 0)
    }

    /// [`TrainData::train_batches`] from batch `first` of the epoch on (a
    /// resumed run); the earlier batches' tiles are not read.
    pub fn train_batches_from(&self, epoch: u32, cfg: &LoaderConfig, first: usize) -> BatchIter {
        self.loader
            .batches_from(&self.split.train, &self.train_plan(epoch), cfg, first)
    }

    /// The order in which `epoch` visits the training tiles (indices into
    /// [`TileIndex::pairs`]).
    pub fn train_order(&self, epoch: u32) -> Vec<usize> {
        self.loader
            .order(&self.split.train, &self.train_plan(epoch))
    }

    fn train_plan(&self, epoch: u32) -> EpochPlan {
        EpochPlan {
            epoch,
            seed: self.seed,
            shuffle: true,
            augmentation: Some(self.augmentation.clone()),
        }
    }

    /// Validation batches in index order, without augmentation.
    pub fn val_batches(&self, cfg: &LoaderConfig) -> BatchIter {
        let plan = EpochPlan {
            epoch: 0,
            seed: self.seed,
            shuffle: false,
            augmentation: None,
        };
        self.loader.batches(&self.split.val, &plan, cfg)
    }

    /// Write `train_ids.txt` and `val_ids.txt` into `dir`.
    pub fn write_split_ids(&self, dir: &Path) -> Result<()> {
        write_split_ids(&self.index, &self.split, dir)
    }
}
