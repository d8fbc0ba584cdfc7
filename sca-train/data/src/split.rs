//! The seeded train/validation split.
//!
//! Tiles are grouped — one group per tile under [`Split::Random`], one group
//! per parent tile at `block_zoom` under [`Split::Spatial`] (so 4-neighbours
//! inside a block never straddle the split) — and each group gets a
//! pseudo-random rank in `[0, 2^64)` from `(seed, group)`. A group trains when
//! its rank is below `train_fraction * 2^64`, else validates. A group's side
//! therefore depends only on the seed, the fraction and the group itself:
//! adding or dropping tiles (a grown dataset, a warm start trained on a
//! subset, tiles left out as bad) never moves another group across, so a
//! tile validated on is never one a related run trained on. (Cutting at the
//! `round(train_fraction * groups)`-th rank instead moved a neighbouring group
//! whenever the count changed.) The one exception keeps both sides non-empty:
//! when every group falls on one side, the one ranked nearest the threshold
//! crosses. With fewer than two groups the split is an error (lower
//! `block_zoom`'s distance to `zoom`, or add tiles).
//!
//! Note `train_fraction` is each group's chance of training: the realised
//! fraction of `n` groups is within about `sqrt(f (1 - f) / n)` of it (±1.3%
//! at 1,200 tiles), and under the spatial split the fraction of *tiles* also
//! varies with block occupancy. `train_ids.txt` / `val_ids.txt` record what it
//! was.

use std::collections::BTreeMap;
use std::path::Path;

use super::discover::{TileId, TileIndex};
use super::error::{DataError, Result};
use sca_spec::contract::model_files;
use sca_spec::{Dataset, Split};

const TAG_SPLIT: u64 = 0x5350_4c49_5400_0001;

/// Indices into [`TileIndex::pairs`] of each side, ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitSet {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub train_ids: Vec<TileId>,
    pub val_ids: Vec<TileId>,
    /// Number of groups (tiles or blocks) split.
    pub groups: usize,
}

impl SplitSet {
    /// Write `train_ids.txt` and `val_ids.txt` (one `z/x/y` per line) into
    /// `dir`, creating it if needed; atomically, like the model beside them.
    pub fn write_split_ids(&self, dir: &Path) -> Result<()> {
        for (name, ids) in [
            (model_files::TRAIN_IDS, &self.train_ids),
            (model_files::VAL_IDS, &self.val_ids),
        ] {
            let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
            crate::fsx::write_atomic(&dir.join(name), text.as_bytes()).map_err(|e| {
                DataError::Io {
                    path: e.path,
                    source: e.source,
                }
            })?;
        }
        Ok(())
    }
}

/// Split `ids` (e.g. the pairs of a [`TileIndex`]); see the module docs.
pub fn split_ids(
    ids: &[TileId],
    split: Split,
    train_fraction: f64,
    block_zoom: u8,
    seed: u64,
) -> Result<SplitSet> {
    if !(train_fraction > 0.0 && train_fraction < 1.0) {
        return Err(DataError::Split(format!(
            "train_fraction must be in (0, 1), got {train_fraction}"
        )));
    }
    let mut groups: BTreeMap<(u8, u32, u32), Vec<usize>> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let key = match split {
            Split::Random => (id.z, id.x, id.y),
            Split::Spatial => {
                let (x, y) = id.parent_at(block_zoom);
                (id.z.min(block_zoom), x, y)
            }
        };
        groups.entry(key).or_default().push(i);
    }
    let n = groups.len();
    if n < 2 {
        let what = match split {
            Split::Random => format!("{} tile(s)", ids.len()),
            Split::Spatial => format!(
                "{} tile(s) in {n} block(s) at block_zoom {block_zoom}; raise block_zoom \
                 (towards the tile zoom) for smaller blocks",
                ids.len()
            ),
        };
        return Err(DataError::Split(format!(
            "need at least 2 groups to have both training and validation tiles, found {what}"
        )));
    }
    let mut ranked: Vec<(u64, Vec<usize>)> = groups
        .into_iter()
        .map(|((z, x, y), members)| {
            let rank = crate::seed::mix_seed(seed, TAG_SPLIT ^ z as u64, x as u64, y as u64);
            (rank, members)
        })
        .collect();
    ranked.sort_by_key(|(rank, members)| (*rank, members[0]));
    // `train_fraction * 2^64`, saturating (the fraction is below 1).
    let threshold = (train_fraction * 2f64.powi(64)) as u64;
    let n_train = ranked
        .partition_point(|(rank, _)| *rank < threshold)
        .clamp(1, n - 1);
    let mut train: Vec<usize> = ranked[..n_train]
        .iter()
        .flat_map(|(_, m)| m.iter().copied())
        .collect();
    let mut val: Vec<usize> = ranked[n_train..]
        .iter()
        .flat_map(|(_, m)| m.iter().copied())
        .collect();
    train.sort_unstable();
    val.sort_unstable();
    Ok(SplitSet {
        train_ids: train.iter().map(|&i| ids[i]).collect(),
        val_ids: val.iter().map(|&i| ids[i]).collect(),
        train,
        val,
        groups: n,
    })
}

/// Split the pairs of `index` with the dataset's strategy and the experiment seed.
pub fn split_tiles(index: &TileIndex, dataset: &Dataset, seed: u64) -> Result<SplitSet> {
    let ids: Vec<TileId> = index.pairs.iter().map(|p| p.id).collect();
    split_ids(
        &ids,
        dataset.split,
        dataset.train_fraction,
        dataset.block_zoom,
        seed,
    )
}

/// Write `train_ids.txt` / `val_ids.txt` for `split` into `dir`.
pub fn write_split_ids(_index: &TileIndex, split: &SplitSet, dir: &Path) -> Result<()> {
    split.write_split_ids(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn grid(x0: u32, y0: u32, w: u32, h: u32, z: u8) -> Vec<TileId> {
        let mut v = Vec::new();
        for x in x0..x0 + w {
            for y in y0..y0 + h {
                v.push(TileId { z, x, y });
            }
        }
        v
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let ids = grid(5470, 12720, 12, 12, 15);
        let a = split_ids(&ids, Split::Random, 0.7, 12, 7).unwrap();
        let b = split_ids(&ids, Split::Random, 0.7, 12, 7).unwrap();
        let c = split_ids(&ids, Split::Random, 0.7, 12, 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.train, c.train);
        assert_eq!(a.train.len() + a.val.len(), ids.len());
        // 0.7 of 144 tiles is 100.8; one standard deviation is 5.5 tiles.
        assert!((85..=117).contains(&a.train.len()), "{}", a.train.len());
        let s = split_ids(&ids, Split::Spatial, 0.7, 13, 7).unwrap();
        assert_eq!(s, split_ids(&ids, Split::Spatial, 0.7, 13, 7).unwrap());
    }

    /// Growing or shrinking the dataset never moves a tile that stays: a
    /// tile one run trained on is never another's validation tile.
    #[test]
    fn sides_are_stable_when_tiles_come_and_go() {
        let side = |s: &SplitSet| -> HashMap<TileId, bool> {
            let train = s.train_ids.iter().map(|&t| (t, true));
            train.chain(s.val_ids.iter().map(|&t| (t, false))).collect()
        };
        for (split, block_zoom) in [(Split::Random, 13), (Split::Spatial, 13)] {
            let small = grid(5470, 12720, 10, 10, 15);
            let big = grid(5466, 12716, 20, 20, 15);
            for seed in 0..10 {
                let a = side(&split_ids(&small, split, 0.7, block_zoom, seed).unwrap());
                let b = side(&split_ids(&big, split, 0.7, block_zoom, seed).unwrap());
                for (t, in_train) in &a {
                    assert_eq!(
                        b[t], *in_train,
                        "{t} changed side as tiles were added ({split:?}, seed {seed})"
                    );
                }
            }
        }
        // The realised fraction is near the asked one at scale.
        let many = grid(0, 0, 100, 100, 15);
        let s = split_ids(&many, Split::Random, 0.7, 13, 3).unwrap();
        let f = s.train.len() as f64 / many.len() as f64;
        assert!((f - 0.7).abs() < 0.02, "{f}");
    }

    #[test]
    fn spatial_never_straddles_neighbours() {
        let ids = grid(5470, 12720, 16, 16, 15);
        for seed in 0..20 {
            let s = split_ids(&ids, Split::Spatial, 0.6, 13, seed).unwrap();
            assert!(!s.train.is_empty() && !s.val.is_empty());
            let side: HashMap<TileId, bool> = s
                .train_ids
                .iter()
                .map(|&t| (t, true))
                .chain(s.val_ids.iter().map(|&t| (t, false)))
                .collect();
            assert_eq!(side.len(), ids.len());
            for t in &ids {
                let (bx, by) = t.parent_at(13);
                for (dx, dy) in [(1i64, 0i64), (0, 1)] {
                    let n = TileId {
                        z: 15,
                        x: (t.x as i64 + dx) as u32,
                        y: (t.y as i64 + dy) as u32,
                    };
                    // Neighbours within the same block share a side.
                    if let Some(&ns) = side.get(&n) {
                        if n.parent_at(13) == (bx, by) {
                            assert_eq!(ns, side[t], "{t} and {n} straddle the split");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn needs_two_groups() {
        let ids = grid(5472, 12720, 4, 4, 15); // one zoom-13 block
        let e = split_ids(&ids, Split::Spatial, 0.7, 13, 0).unwrap_err();
        assert!(e.to_string().contains("1 block"), "{e}");
        let one = grid(0, 0, 1, 1, 15);
        assert!(split_ids(&one, Split::Random, 0.7, 13, 0).is_err());
        // Two groups and an extreme fraction: still one on each side.
        let two = grid(0, 0, 2, 1, 15);
        let s = split_ids(&two, Split::Random, 0.05, 13, 0).unwrap();
        assert_eq!((s.train.len(), s.val.len()), (1, 1));
    }

    #[test]
    fn writes_ids() {
        let ids = grid(1, 2, 2, 2, 3);
        let s = split_ids(&ids, Split::Random, 0.5, 1, 0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        s.write_split_ids(dir.path()).unwrap();
        let train = std::fs::read_to_string(dir.path().join("train_ids.txt")).unwrap();
        let val = std::fs::read_to_string(dir.path().join("val_ids.txt")).unwrap();
        assert_eq!(train.lines().count() + val.lines().count(), 4);
        assert!(train
            .lines()
            .chain(val.lines())
            .all(|l| l.starts_with("3/")));
    }

    /// A reader of the old lists (or a run killed mid-write) sees the old
    /// file whole: the new one is written beside it and renamed over it,
    /// never written into it.
    #[test]
    fn ids_are_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let old = split_ids(&grid(1, 2, 2, 2, 3), Split::Random, 0.5, 1, 0).unwrap();
        old.write_split_ids(dir.path()).unwrap();
        let path = dir.path().join(model_files::TRAIN_IDS);
        let before = std::fs::read_to_string(&path).unwrap();
        let mut reader = std::fs::File::open(&path).unwrap();
        let new = split_ids(&grid(7, 7, 3, 3, 4), Split::Random, 0.5, 1, 0).unwrap();
        new.write_split_ids(dir.path()).unwrap();
        let mut seen = String::new();
        std::io::Read::read_to_string(&mut reader, &mut seen).unwrap();
        assert_eq!(seen, before, "the open file was written into");
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(after.lines().all(|l| l.starts_with("4/")), "{after}");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "no temporary file left behind");
    }
}
