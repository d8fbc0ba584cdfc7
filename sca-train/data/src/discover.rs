//! Discovery: list the tile directories the experiment's regexes select under
//! the imagery and mask roots, join imagery and masks on `(z, x, y)`, and
//! validate every joined pair once.
//!
//! Joining rules (deterministic):
//! * the regexes are matched anywhere in a directory name (`Regex::is_match`;
//!   anchor them with `^...$` to match whole names);
//! * only tiles at the dataset's `zoom` are considered;
//! * when several files hold the same `(z, x, y)` (in several selected
//!   directories, or as `5.tif` and `05.tif` in one), the first by directory
//!   name, then by file name (byte order), wins and the others are counted
//!   as duplicates;
//! * masks without imagery and imagery without masks are reported (counts and
//!   a few examples, on stderr and in [`TileIndex`]) and dropped;
//! * no selected tiles on either side is [`DataError::EmptyDataset`], tiles on
//!   both sides but none in common is [`DataError::NothingJoined`].
//!
//! With a data manifest pinned at launch ([`discover_pinned`]) the listing must
//! equal the manifest (same objects, sizes and ETags) before anything is
//! joined, and the sources are pinned so each read is checked as well.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use regex::Regex;

use super::decode::{decode_imagery, decode_mask, max_tile_bytes};
use super::error::{panic_message, warn, DataError, Result, TileError, TileErrorKind};
use super::normalize::Normalizer;
use super::source::{S3Access, TileEntry, TileSource};
use sca_spec::{DataManifest, Dataset};

/// A slippy-map tile address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TileId {
    pub z: u8,
    pub x: u32,
    pub y: u32,
}

impl fmt::Display for TileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.z, self.x, self.y)
    }
}

impl TileId {
    /// The `(x, y)` of this tile's ancestor at `zoom` (itself when `zoom >= z`).
    pub fn parent_at(&self, zoom: u8) -> (u32, u32) {
        let shift = self.z.saturating_sub(zoom);
        (self.x >> shift, self.y >> shift)
    }
}

/// One joined imagery/mask pair; keys are relative to their roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TilePair {
    pub id: TileId,
    pub imagery: String,
    pub mask: String,
}

/// The joined dataset, sorted by `(z, x, y)`.
#[derive(Debug)]
pub struct TileIndex {
    pub imagery: Arc<TileSource>,
    pub masks: Arc<TileSource>,
    pub pairs: Vec<TilePair>,
    /// Masks at the zoom with no imagery tile (dropped).
    pub orphan_masks: Vec<TileId>,
    /// Imagery tiles at the zoom with no mask (dropped).
    pub orphan_imagery: Vec<TileId>,
    /// Imagery files shadowed by an earlier one (by directory, then file name) of the same z/x/y.
    pub duplicate_imagery: usize,
    /// Mask files shadowed by an earlier one (by directory, then file name) of the same z/x/y.
    pub duplicate_masks: usize,
}

impl TileIndex {
    /// Number of joined pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether no pair joined.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Read and decode pair `i` (imagery as reflectance, mask as 0/1).
    pub fn load_pair(
        &self,
        i: usize,
        tile_size: u32,
        need_bands: usize,
    ) -> Result<(super::RawTile, Vec<u8>), TileError> {
        let pair = &self.pairs[i];
        let ikey = self.imagery.uri(&pair.imagery);
        let mkey = self.masks.uri(&pair.mask);
        // No file larger than a tile of this size can be is read whole.
        let max = max_tile_bytes(tile_size, need_bands);
        let bands = super::decode::MAX_BANDS.max(need_bands);
        let ibytes = self
            .imagery
            .read_max(&pair.imagery, max)
            .map_err(|e| TileError::read(&ikey, bands, e))?;
        let image = decode_imagery(&ibytes, &ikey, tile_size, need_bands)?;
        let mbytes = self
            .masks
            .read_max(&pair.mask, max)
            .map_err(|e| TileError::read(&mkey, bands, e))?;
        let mask = decode_mask(&mbytes, &mkey, tile_size)?;
        Ok((image, mask))
    }
}

fn examples(ids: &[TileId]) -> String {
    let mut s: Vec<String> = ids.iter().take(3).map(|t| t.to_string()).collect();
    if ids.len() > 3 {
        s.push("...".into());
    }
    if s.is_empty() {
        "none".into()
    } else {
        s.join(", ")
    }
}

fn compile(field: &'static str, regex: &str) -> Result<Regex> {
    Regex::new(regex).map_err(|source| DataError::BadRegex {
        field,
        regex: regex.to_string(),
        source,
    })
}

/// List the selected tile directories under both roots and join imagery with
/// masks on `(z, x, y)`. Local roots are relative to `base_dir` (the
/// experiment file's directory).
pub fn discover(dataset: &Dataset, base_dir: &Path) -> Result<TileIndex> {
    discover_pinned(dataset, base_dir, None)
}

/// [`discover`], refusing data that differs from `pinned` (the manifest
/// recorded at launch) with [`DataError::DataChanged`] naming the first
/// differing object, and pinning the index's sources so that every later
/// read is checked against the manifest too.
pub fn discover_pinned(
    dataset: &Dataset,
    base_dir: &Path,
    pinned: Option<&DataManifest>,
) -> Result<TileIndex> {
    Ok(discover_listed(dataset, base_dir, pinned, &S3Access::default())?.0)
}

/// Every tile object the experiment's regexes select at its zoom, on both
/// sides, duplicates and orphans included (what a data manifest records).
#[derive(Debug)]
pub(crate) struct Listing {
    pub imagery: Vec<TileEntry>,
    pub masks: Vec<TileEntry>,
}

/// [`discover_pinned`], also returning the listing it joined.
pub(crate) fn discover_listed(
    dataset: &Dataset,
    base_dir: &Path,
    pinned: Option<&DataManifest>,
    access: &S3Access,
) -> Result<(TileIndex, Listing)> {
    let ire = compile("imagery_regex", &dataset.imagery_regex)?;
    let mre = compile("mask_regex", &dataset.mask_regex)?;
    let mut imagery = TileSource::open_with(&dataset.imagery, base_dir, access)?;
    let mut masks = TileSource::open_with(&dataset.masks, base_dir, access)?;

    let list = |src: &TileSource, re: &Regex| -> Result<(usize, Vec<TileEntry>)> {
        let dirs: Vec<String> = src
            .list_dirs()?
            .into_iter()
            .filter(|d| re.is_match(d))
            .collect();
        Ok((dirs.len(), src.list_tiles(&dirs, dataset.zoom)?))
    };
    let (idirs, ientries) = list(&imagery, &ire)?;
    let (mdirs, mentries) = list(&masks, &mre)?;
    let listing = Listing {
        imagery: ientries,
        masks: mentries,
    };
    if let Some(manifest) = pinned {
        let pins = super::manifest::verify_listing(manifest, dataset, &imagery, &masks, &listing)?;
        imagery.pin(pins.imagery);
        masks.pin(pins.masks);
    }
    let (imagery, masks) = (Arc::new(imagery), Arc::new(masks));

    let join = |entries: &[TileEntry]| -> (BTreeMap<TileId, String>, usize) {
        let mut map = BTreeMap::new();
        let mut dups = 0;
        // list_tiles sorts by directory, then id, then key: the first wins.
        for t in entries {
            match map.entry(t.id) {
                Entry::Vacant(v) => {
                    v.insert(t.key.clone());
                }
                Entry::Occupied(_) => dups += 1,
            }
        }
        (map, dups)
    };
    let (imap, duplicate_imagery) = join(&listing.imagery);
    let (mmap, duplicate_masks) = join(&listing.masks);

    if imap.is_empty() || mmap.is_empty() {
        return Err(DataError::EmptyDataset {
            imagery_root: imagery.root().into(),
            imagery_regex: dataset.imagery_regex.as_str().into(),
            imagery_dirs: idirs,
            imagery_tiles: imap.len(),
            mask_root: masks.root().into(),
            mask_regex: dataset.mask_regex.as_str().into(),
            mask_dirs: mdirs,
            mask_tiles: mmap.len(),
            zoom: dataset.zoom,
        });
    }

    let mut pairs = Vec::new();
    let mut orphan_imagery = Vec::new();
    for (id, key) in &imap {
        match mmap.get(id) {
            Some(mkey) => pairs.push(TilePair {
                id: *id,
                imagery: key.clone(),
                mask: mkey.clone(),
            }),
            None => orphan_imagery.push(*id),
        }
    }
    let orphan_masks: Vec<TileId> = mmap
        .keys()
        .filter(|id| !imap.contains_key(id))
        .copied()
        .collect();

    if pairs.is_empty() {
        let ids = |m: &BTreeMap<TileId, String>| m.keys().copied().collect::<Vec<_>>();
        return Err(DataError::NothingJoined {
            imagery_root: imagery.root().into(),
            imagery_tiles: imap.len(),
            imagery_examples: examples(&ids(&imap)).into(),
            mask_root: masks.root().into(),
            mask_tiles: mmap.len(),
            mask_examples: examples(&ids(&mmap)).into(),
        });
    }
    if !orphan_masks.is_empty() {
        warn(format_args!(
            "warning: {} mask tiles under {} have no imagery and are dropped (e.g. {})",
            orphan_masks.len(),
            masks.root(),
            examples(&orphan_masks)
        ));
    }
    if !orphan_imagery.is_empty() {
        warn(format_args!(
            "warning: {} imagery tiles under {} have no mask and are dropped (e.g. {})",
            orphan_imagery.len(),
            imagery.root(),
            examples(&orphan_imagery)
        ));
    }
    if duplicate_imagery + duplicate_masks > 0 {
        warn(format_args!(
            "warning: {duplicate_imagery} imagery and {duplicate_masks} mask tiles repeat a z/x/y \
             of another file; the first by directory name, then file name, is used"
        ));
    }
    let index = TileIndex {
        imagery,
        masks,
        pairs,
        orphan_masks,
        orphan_imagery,
        duplicate_imagery,
        duplicate_masks,
    };
    Ok((index, listing))
}

/// The index with the unreadable pairs removed, and those pairs' errors.
#[derive(Debug)]
pub struct Validation {
    pub index: TileIndex,
    /// Bad tiles in index order, each naming its file and the reason.
    pub bad: Vec<TileError>,
}

/// Default number of reader threads for a pair of sources.
pub(crate) fn default_workers(index: &TileIndex) -> usize {
    if index.imagery.is_remote() || index.masks.is_remote() {
        16
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

/// Read and decode every pair once (with `workers` threads, by default one per
/// CPU locally and 16 for S3). Each bad tile (one that reads but does not
/// decode or check) is reported on stderr and dropped; more than
/// `max_bad_fraction` bad tiles (or none good) is [`DataError::TooManyBad`].
/// A tile that differs from the pinned manifest, or that cannot be read (an
/// I/O or S3 error: a fault, not a property of the data, and dropping it would
/// train on another tile set than the one listed), is never dropped: it ends
/// validation (no further pair is started) and is the error, a changed tile
/// before an unreadable one, else the first in index order of those read.
pub fn validate(
    index: TileIndex,
    dataset: &Dataset,
    normalizer: &Normalizer,
    workers: Option<usize>,
) -> Result<Validation> {
    validate_until(index, dataset, normalizer, workers, None)
}

/// [`validate`], ending with [`DataError::Interrupted`] once `stop` is raised
/// (SIGTERM): no further pair is started, and the pairs being read finish.
pub fn validate_until(
    index: TileIndex,
    dataset: &Dataset,
    normalizer: &Normalizer,
    workers: Option<usize>,
    stop: Option<&AtomicBool>,
) -> Result<Validation> {
    let need = normalizer.required_bands();
    validate_with(index, dataset, workers, stop, |index, i| {
        index.load_pair(i, dataset.tile_size, need).map(drop)
    })
}

/// [`validate_until`] with `load` reading and checking pair `i` (a seam
/// for tests).
fn validate_with(
    index: TileIndex,
    dataset: &Dataset,
    workers: Option<usize>,
    stop: Option<&AtomicBool>,
    load: impl Fn(&TileIndex, usize) -> Result<(), TileError> + Sync,
) -> Result<Validation> {
    let workers = workers.unwrap_or_else(|| default_workers(&index));
    let fatal = |e: &TileError| {
        matches!(
            e.kind,
            TileErrorKind::Changed(_) | TileErrorKind::Read(_) | TileErrorKind::Panicked { .. }
        )
    };
    let stopped = || stop.is_some_and(|s| s.load(Ordering::SeqCst));
    // A panic (a decoder bug) becomes the error naming its pair, as in the
    // loader: uncaught, it ended the run as "a scoped thread panicked",
    // naming no tile.
    let checked = |i: usize| match crate::error::catch(|| load(&index, i)) {
        Ok(r) => r.err(),
        Err(panic) => {
            let pair = &index.pairs[i];
            Some(TileError::new(
                index.imagery.uri(&pair.imagery),
                TileErrorKind::Panicked {
                    mask: index.masks.uri(&pair.mask),
                    message: panic_message(&*panic).to_string(),
                },
            ))
        }
    };
    let results = crate::par::par_map_until(index.pairs.len(), workers, checked, |r| {
        r.as_ref().is_some_and(fatal) || stopped()
    });
    let errors = || results.iter().flatten().flatten();
    if let Some(e) = errors()
        .find(|e| matches!(e.kind, TileErrorKind::Changed(_)))
        .or_else(|| errors().find(|e| fatal(e)))
    {
        return Err(e.clone().into());
    }
    // A fault found is the error even when a stop came too.
    if stopped() {
        return Err(DataError::Interrupted);
    }
    // No fatal result and no stop: every pair was read.
    let results: Vec<Option<TileError>> = results.into_iter().map(Option::flatten).collect();
    let total = index.pairs.len();
    let mut bad = Vec::new();
    let mut keep = Vec::new();
    for (pair, res) in index.pairs.iter().zip(results) {
        match res {
            None => keep.push(pair.clone()),
            Some(e) => {
                warn(format_args!("warning: skipping bad tile {}: {e}", pair.id));
                bad.push(e);
            }
        }
    }
    if !bad.is_empty() {
        let frac = bad.len() as f64 / total as f64;
        if frac > dataset.max_bad_fraction || keep.is_empty() {
            let mut ex: Vec<String> = bad.iter().take(3).map(|e| e.to_string()).collect();
            if bad.len() > 3 {
                ex.push("...".into());
            }
            return Err(DataError::TooManyBad {
                bad: bad.len(),
                total,
                max_bad_fraction: dataset.max_bad_fraction,
                examples: ex.join("; "),
            });
        }
        warn(format_args!(
            "warning: {} of {total} tiles skipped as unreadable ({:.2}% <= max_bad_fraction {:.2}%)",
            bad.len(),
            100.0 * frac,
            100.0 * dataset.max_bad_fraction
        ));
    }
    Ok(Validation {
        index: TileIndex {
            pairs: keep,
            ..index
        },
        bad,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic while a pair is validated (a decoder bug) is the run's error,
    /// naming the pair and the panic: it once ended the run as "a scoped
    /// thread panicked", naming no tile.
    #[test]
    fn a_panic_in_validation_is_an_error_naming_the_tile() {
        let tmp = tempfile::tempdir().unwrap();
        let dataset = Dataset {
            max_bad_fraction: 0.5,
            ..crate::synth::small_dataset(tmp.path())
        };
        let index = discover(&dataset, tmp.path()).unwrap();
        let pair = index.pairs[2].clone();
        let (imagery, mask) = (
            index.imagery.uri(&pair.imagery),
            index.masks.uri(&pair.mask),
        );
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            validate_with(index, &dataset, Some(2), None, |_, i| {
                assert_ne!(i, 2, "decoder bug");
                Ok(())
            })
        }));
        let e = r
            .expect("the panic escaped validation")
            .expect_err("validated despite the panic")
            .to_string();
        assert!(
            e.starts_with(&format!(
                "{imagery}: reading it or its mask {mask} panicked (a bug): "
            )) && e.contains("decoder bug"),
            "{e}"
        );
    }
}
