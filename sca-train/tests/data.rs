//! Data pipeline on a local synthetic dataset: discovery and join, bad tiles,
//! the split, the loader's determinism, and data pinned by a manifest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sca_train::data::{
    discover, manifest, split_tiles, validate, DataError, EpochPlan, Loader, LoaderConfig,
    Normalizer, TileErrorKind, TileId, TrainData,
};
use sca_train::spec::{
    Augmentation, Channel, Class, DataManifest, Dataset, Experiment, Job, Meta, Model, Split,
    Synthetic, Train,
};
use sca_train::synth::{self, encode_tiff_f32, encode_tiff_u16, IMAGERY_DIR, MASK_DIR};

const TS: u32 = 32;

fn dataset(root: &str) -> Dataset {
    Dataset {
        imagery: root.into(),
        masks: root.into(),
        imagery_regex: "AnalyticMS_SR".into(),
        mask_regex: "_binary$".into(),
        zoom: 15,
        tile_size: TS,
        train_fraction: 0.7,
        split: Split::Spatial,
        block_zoom: 14,
        max_bad_fraction: 0.0,
        synthetic: None,
    }
}

fn channels() -> Vec<Channel> {
    vec![
        Channel {
            bands: vec![3, 2, 1],
            mean: vec![0.3, 0.3, 0.3],
            std: vec![0.3, 0.3, 0.3],
        },
        Channel {
            bands: vec![4],
            mean: vec![0.3],
            std: vec![0.1],
        },
    ]
}

fn tile_path(root: &Path, dir: &str, z: u8, x: u32, y: u32) -> PathBuf {
    root.join(dir)
        .join(z.to_string())
        .join(x.to_string())
        .join(format!("{y}.tif"))
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn discovery_joins_sorts_and_reports_orphans() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let s = synth::synth(&root, 9, 1, TS, 15).unwrap();
    assert_eq!((s.x_range, s.y_range), ((5470, 5472), (12720, 12722)));
    // An imagery tile without mask, a mask without imagery, files to ignore.
    std::fs::remove_file(tile_path(&root, MASK_DIR, 15, 5471, 12721)).unwrap();
    let m = std::fs::read(tile_path(&root, MASK_DIR, 15, 5470, 12720)).unwrap();
    write(&tile_path(&root, MASK_DIR, 15, 5480, 12720), &m);
    write(
        &root.join(MASK_DIR).join("15/5470/12720.tif.aux.xml"),
        b"<xml/>",
    );
    write(&root.join(MASK_DIR).join("15/README.txt"), b"hi");
    write(&root.join(MASK_DIR).join("16/10940/25440.tif"), &m);
    write(
        &root.join("ASO_other_binary_notselected").join("x.txt"),
        b"",
    );
    // A second imagery directory repeating one tile: the first (sorted) wins.
    let dup_dir = "30180528_AnalyticMS_SR_later";
    let i = std::fs::read(tile_path(&root, IMAGERY_DIR, 15, 5470, 12720)).unwrap();
    write(&tile_path(&root, dup_dir, 15, 5470, 12720), &i);

    let index = discover(&dataset("data"), tmp.path()).unwrap();
    assert_eq!(index.len(), 8);
    let ids: Vec<TileId> = index.pairs.iter().map(|p| p.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "pairs sorted by z/x/y");
    assert_eq!(
        index.orphan_imagery,
        vec![TileId {
            z: 15,
            x: 5471,
            y: 12721
        }]
    );
    assert_eq!(
        index.orphan_masks,
        vec![TileId {
            z: 15,
            x: 5480,
            y: 12720
        }]
    );
    assert_eq!(index.duplicate_imagery, 1);
    assert_eq!(
        index.pairs[0].imagery,
        format!("{IMAGERY_DIR}/15/5470/12720.tif")
    );
    assert_eq!(index.pairs[0].mask, format!("{MASK_DIR}/15/5470/12720.tif"));
    assert!(index
        .imagery
        .uri(&index.pairs[0].imagery)
        .ends_with("data/20180528_181110_1025_3B_AnalyticMS_SR_clip_tiled/15/5470/12720.tif"));
    // Deterministic.
    let again = discover(&dataset("data"), tmp.path()).unwrap();
    assert_eq!(again.pairs, index.pairs);
}

#[test]
fn regexes_selecting_nothing_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    synth::synth(&tmp.path().join("data"), 2, 1, TS, 15).unwrap();
    let mut d = dataset("data");
    d.imagery_regex = "^PSScene".into();
    let e = discover(&d, tmp.path()).unwrap_err();
    assert!(matches!(
        e,
        DataError::EmptyDataset {
            imagery_dirs: 0,
            mask_dirs: 1,
            ..
        }
    ));
    let msg = e.to_string();
    for part in ["^PSScene", "_binary$", "data", "zoom 15"] {
        assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    }
    // Wrong zoom: directories match but hold no tiles.
    let mut d = dataset("data");
    d.zoom = 14;
    assert!(matches!(
        discover(&d, tmp.path()),
        Err(DataError::EmptyDataset {
            imagery_dirs: 1,
            imagery_tiles: 0,
            ..
        })
    ));
    // Missing root.
    assert!(matches!(
        discover(&dataset("nope"), tmp.path()),
        Err(DataError::Io { .. })
    ));
    // Invalid regex.
    let mut d = dataset("data");
    d.mask_regex = "(".into();
    assert!(matches!(
        discover(&d, tmp.path()),
        Err(DataError::BadRegex {
            field: "mask_regex",
            ..
        })
    ));
    // Disjoint imagery and masks.
    let other = tmp.path().join("other");
    synth::synth(&other, 1, 1, TS, 15).unwrap();
    std::fs::rename(
        tile_path(&other, MASK_DIR, 15, 5470, 12720),
        other.join("m.tif"),
    )
    .unwrap();
    write(
        &tile_path(&other, MASK_DIR, 15, 1, 1),
        &std::fs::read(other.join("m.tif")).unwrap(),
    );
    let e = discover(&dataset("other"), tmp.path()).unwrap_err();
    assert!(matches!(e, DataError::NothingJoined { .. }), "{e}");
    assert!(e.to_string().contains("15/1/1"), "{e}");
}

/// Replace four imagery tiles with bad ones; returns their keys' suffixes.
fn break_tiles(root: &Path) -> Vec<(TileId, &'static str)> {
    let n = (TS * TS) as usize;
    let p = |x, y| tile_path(root, IMAGERY_DIR, 15, x, y);
    // Wrong size.
    write(
        &p(5470, 12720),
        &encode_tiff_u16(16, 16, 4, &vec![100; 16 * 16 * 4]).unwrap(),
    );
    // Three bands where band 4 is used.
    write(
        &p(5471, 12720),
        &encode_tiff_u16(TS, TS, 3, &vec![100; n * 3]).unwrap(),
    );
    // NaN in float imagery.
    let mut f = vec![0.2f32; n * 4];
    f[4 * 40 + 3] = f32::NAN;
    write(&p(5472, 12720), &encode_tiff_f32(TS, TS, 4, &f).unwrap());
    // Truncated.
    let bytes = std::fs::read(p(5470, 12721)).unwrap();
    write(&p(5470, 12721), &bytes[..bytes.len() / 3]);
    vec![
        (
            TileId {
                z: 15,
                x: 5470,
                y: 12720,
            },
            "is 16x16, expected 32x32",
        ),
        (
            TileId {
                z: 15,
                x: 5470,
                y: 12721,
            },
            "cannot decode",
        ),
        (
            TileId {
                z: 15,
                x: 5471,
                y: 12720,
            },
            "has 3 bands, the channels use band 4",
        ),
        (
            TileId {
                z: 15,
                x: 5472,
                y: 12720,
            },
            "band 4 has a non-finite value (NaN) at pixel (8, 1)",
        ),
    ]
}

#[test]
fn bad_tiles_are_reported_and_skipped_or_fail_the_load() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    synth::synth(&root, 16, 1, TS, 15).unwrap();
    let broken = break_tiles(&root);
    let norm = Normalizer::new(&channels()).unwrap();

    let mut d = dataset("data");
    d.max_bad_fraction = 0.25;
    let v = validate(discover(&d, tmp.path()).unwrap(), &d, &norm, Some(3)).unwrap();
    assert_eq!(v.index.len(), 12);
    assert_eq!(v.bad.len(), 4);
    let ids: Vec<TileId> = v.index.pairs.iter().map(|p| p.id).collect();
    for ((id, why), err) in broken.iter().zip(&v.bad) {
        assert!(!ids.contains(id));
        let msg = err.to_string();
        assert!(msg.contains(&format!("15/{}/{}.tif", id.x, id.y)), "{msg}");
        assert!(msg.contains(why), "{msg:?} lacks {why:?}");
    }
    assert!(matches!(v.bad[1].kind, TileErrorKind::Decode(_)));

    d.max_bad_fraction = 0.2;
    let e = validate(discover(&d, tmp.path()).unwrap(), &d, &norm, None).unwrap_err();
    assert!(matches!(
        e,
        DataError::TooManyBad {
            bad: 4,
            total: 16,
            ..
        }
    ));
    let msg = e.to_string();
    assert!(
        msg.contains("4 of 16 tiles") && msg.contains("max_bad_fraction 20.00%"),
        "{msg}"
    );
}

/// A tile that cannot be read (here: removed between listing and reading)
/// is a fault that fails validation, naming the file, never a bad tile
/// silently dropped, whatever `max_bad_fraction` allows.
#[test]
fn a_read_error_fails_validation_instead_of_dropping_the_tile() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    synth::synth(&root, 16, 1, TS, 15).unwrap();
    let mut d = dataset("data");
    d.max_bad_fraction = 0.5;
    let norm = Normalizer::new(&channels()).unwrap();
    let index = discover(&d, tmp.path()).unwrap();
    let gone = index.imagery.uri(&index.pairs[3].imagery);
    std::fs::remove_file(&gone).unwrap();
    let e = validate(index, &d, &norm, Some(3)).unwrap_err();
    assert!(
        matches!(&e, DataError::Tile(t) if matches!(t.kind, TileErrorKind::Read(_))),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains(&gone) && msg.contains("cannot read"), "{msg}");
}

fn experiment(root: &str, seed: u64) -> Experiment {
    Experiment {
        experiment: Meta {
            name: "synth".into(),
            description: String::new(),
            seed,
        },
        dataset: dataset(root),
        channels: channels(),
        classes: vec![Class {
            name: "snow".into(),
            color: "white".into(),
        }],
        model: Model::default(),
        train: Train::default(),
        job: Job::default(),
        sweep: None,
    }
}

#[test]
fn loader_is_deterministic_whatever_the_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let mut exp = experiment("data", 5);
    exp.dataset.synthetic = Some(sca_train::spec::Synthetic { tiles: 20, seed: 9 });
    let made = synth::ensure_synthetic(&exp.dataset, tmp.path()).unwrap();
    assert_eq!(made.unwrap().tiles, 20);
    assert!(synth::ensure_synthetic(&exp.dataset, tmp.path())
        .unwrap()
        .is_none());

    let data = TrainData::open(&exp, tmp.path()).unwrap();
    assert_eq!(data.split.train.len() + data.split.val.len(), 20);
    assert!(!data.split.val.is_empty());
    // Spatial split at zoom 14: 2x2 blocks never straddle.
    for t in &data.split.train_ids {
        assert!(!data
            .split
            .val_ids
            .iter()
            .any(|v| v.parent_at(14) == t.parent_at(14)));
    }
    data.write_split_ids(&tmp.path().join("out")).unwrap();
    let lines = std::fs::read_to_string(tmp.path().join("out/train_ids.txt")).unwrap();
    assert_eq!(
        lines.lines().next().unwrap(),
        data.split.train_ids[0].to_string()
    );

    let collect = |cfg: &LoaderConfig, epoch: u32| -> Vec<sca_train::data::Batch> {
        data.train_batches(epoch, cfg).map(|b| b.unwrap()).collect()
    };
    let serial = LoaderConfig {
        batch_size: 3,
        workers: Some(1),
        prefetch_batches: 0,
        drop_last: false,
    };
    let parallel = LoaderConfig {
        batch_size: 3,
        workers: Some(7),
        prefetch_batches: 3,
        drop_last: false,
    };
    let a = collect(&serial, 2);
    let b = collect(&parallel, 2);
    assert_eq!(a, b);
    assert_eq!(a.len(), data.split.train.len().div_ceil(3));
    assert_eq!(a[0].image_shape(), [3, 4, 32, 32]);
    assert_eq!(a[0].images.len(), 3 * 4 * 32 * 32);
    assert_eq!(a[0].masks.len(), 3 * 32 * 32);
    assert!(a[0].masks.iter().all(|&m| m == 0.0 || m == 1.0));
    let tiles: Vec<usize> = a.iter().flat_map(|b| b.tiles.clone()).collect();
    let mut sorted = tiles.clone();
    sorted.sort();
    assert_eq!(
        sorted, data.split.train,
        "each training tile once per epoch"
    );
    // Another epoch: another order and other augmentations.
    let c = collect(&parallel, 3);
    assert_ne!(
        tiles,
        c.iter().flat_map(|b| b.tiles.clone()).collect::<Vec<_>>()
    );
    // Same as loading one by one with the documented augmentation draw.
    let aug = Augmentation::default();
    for (i, &t) in a[1].tiles.iter().enumerate() {
        let p = sca_train::data::augment_params(&aug, 5, 2, t);
        let s = data.loader().load_sample(t, Some(p)).unwrap();
        let n = 4 * 32 * 32;
        assert_eq!(&a[1].images[i * n..(i + 1) * n], &s.image[..]);
    }
    // drop_last and early drop of the iterator.
    let dl = LoaderConfig {
        drop_last: true,
        ..parallel.clone()
    };
    assert!(collect(&dl, 2).iter().all(|b| b.len() == 3));
    let mut it = data.train_batches(2, &parallel);
    assert_eq!(it.next().unwrap().unwrap(), a[0]);
    drop(it);
    // Validation: index order, no augmentation, identical across runs.
    let v1: Vec<_> = data.val_batches(&serial).map(|b| b.unwrap()).collect();
    let v2: Vec<_> = data.val_batches(&parallel).map(|b| b.unwrap()).collect();
    assert_eq!(v1, v2);
    assert_eq!(
        v1.iter().flat_map(|b| b.tiles.clone()).collect::<Vec<_>>(),
        data.split.val
    );
}

#[test]
fn loader_surfaces_a_failing_tile_at_its_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    synth::synth(&root, 8, 1, TS, 15).unwrap();
    let d = dataset("data");
    let index = Arc::new(discover(&d, tmp.path()).unwrap());
    let loader = Loader::new(index.clone(), Normalizer::new(&channels()).unwrap(), TS);
    // Break tile 5 after discovery.
    std::fs::remove_file(index.imagery.uri(&index.pairs[5].imagery)).unwrap();
    let plan = EpochPlan {
        epoch: 0,
        seed: 0,
        shuffle: false,
        augmentation: None,
    };
    let cfg = LoaderConfig {
        workers: Some(4),
        ..LoaderConfig::new(2)
    };
    let out: Vec<_> = loader
        .batches(&(0..8).collect::<Vec<_>>(), &plan, &cfg)
        .collect();
    assert_eq!(out.len(), 3);
    assert!(out[0].is_ok() && out[1].is_ok());
    let e = out[2].as_ref().unwrap_err().to_string();
    assert!(e.contains("cannot read") && e.contains("12722.tif"), "{e}");
    let split = split_tiles(&index, &d, 0);
    assert!(split.is_ok());
}

/// A pass started at a batch yields the full pass's batches from there on,
/// without reading the tiles of the batches before it.
#[test]
fn loader_starts_at_a_batch_without_reading_the_earlier_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let mut exp = experiment("data", 5);
    exp.dataset.synthetic = Some(sca_train::spec::Synthetic { tiles: 20, seed: 9 });
    synth::ensure_synthetic(&exp.dataset, tmp.path()).unwrap();
    let data = TrainData::open(&exp, tmp.path()).unwrap();
    let cfg = LoaderConfig {
        workers: Some(4),
        ..LoaderConfig::new(3)
    };
    let full: Vec<_> = data.train_batches(1, &cfg).map(|b| b.unwrap()).collect();
    assert!(full.len() >= 3, "{} batches", full.len());
    // Every tile of the first two batches becomes unreadable.
    let order = data.train_order(1);
    assert_eq!(order[..3], full[0].tiles[..]);
    for &t in &order[..6] {
        std::fs::remove_file(data.index.imagery.uri(&data.index.pairs[t].imagery)).unwrap();
    }
    let it = data.train_batches_from(1, &cfg, 2);
    assert_eq!(it.remaining(), full.len() - 2);
    let rest: Vec<_> = it.map(|b| b.unwrap()).collect();
    assert_eq!(rest, full[2..]);
    assert_eq!(data.train_batches_from(1, &cfg, full.len()).count(), 0);
    let e = data
        .train_batches_from(1, &cfg, 1)
        .next()
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
}

/// The error of opening `exp`'s data pinned to `m`.
#[track_caller]
fn pinned_err(exp: &Experiment, base: &Path, m: &DataManifest) -> DataError {
    match TrainData::open_pinned(exp, base, Some(m)) {
        Ok(_) => panic!("data differing from the manifest was accepted"),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_changed(e: &DataError, uri: &str, reason: &str) {
    assert!(
        matches!(e, DataError::DataChanged { uri: u, reason: r } if u == uri && r.starts_with(reason)),
        "expected {uri}: {reason}..., got {e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("data changed since launch: {uri}: {reason}")),
        "{msg}"
    );
}

#[test]
fn manifest_pins_local_data_and_every_read() {
    let tmp = tempfile::tempdir().unwrap();
    let mut exp = experiment("data", 5);
    exp.dataset.synthetic = Some(Synthetic { tiles: 12, seed: 3 });
    // A changed tile must fail the run even where bad tiles would be skipped.
    exp.dataset.max_bad_fraction = 0.5;
    // Like training, building generates a missing synthetic dataset first.
    let m = manifest::build(&exp.dataset, tmp.path(), &Default::default()).unwrap();
    assert_eq!(m.objects.len(), 24, "12 imagery and 12 mask tiles");
    for o in &m.objects {
        assert!(o.uri.starts_with("data/"), "{}", o.uri);
        assert!(o.sha256.is_some() && o.etag.is_none(), "{o:?}");
        assert_eq!(
            std::fs::metadata(tmp.path().join(&o.uri)).unwrap().len(),
            o.size
        );
    }
    assert_eq!(
        manifest::build(&exp.dataset, tmp.path(), &Default::default())
            .unwrap()
            .to_bytes(),
        m.to_bytes()
    );

    let data = TrainData::open_pinned(&exp, tmp.path(), Some(&m)).unwrap();
    assert_eq!(data.index.len(), 12);
    assert!(data.bad.is_empty());

    // Same size, other bytes, after the data was opened: the loader's read
    // (not only validation) refuses it, naming the tile.
    let key = data.index.pairs[data.split.train[0]].mask.clone();
    let uri = format!("data/{key}");
    let path = tmp.path().join(&uri);
    let original = std::fs::read(&path).unwrap();
    let mut other = original.clone();
    *other.last_mut().unwrap() ^= 0xff;
    std::fs::write(&path, &other).unwrap();
    let e = data
        .train_batches(0, &LoaderConfig::new(4))
        .find_map(|b| b.err())
        .expect("the batch holding the changed tile fails");
    assert_changed(&e, &uri, "sha256 ");
    // Validation reads every tile: opening fails before any training.
    assert_changed(&pinned_err(&exp, tmp.path(), &m), &uri, "sha256 ");
    // Without a manifest the same bytes are just data.
    assert!(TrainData::open(&exp, tmp.path()).is_ok());
    std::fs::write(&path, &original).unwrap();
    assert!(TrainData::open_pinned(&exp, tmp.path(), Some(&m)).is_ok());

    // The listing: a size change, a removed and an added tile.
    std::fs::write(&path, &original[..original.len() - 1]).unwrap();
    let size = original.len();
    assert_changed(
        &pinned_err(&exp, tmp.path(), &m),
        &uri,
        &format!("size {size} bytes at launch, {} now", size - 1),
    );
    std::fs::remove_file(&path).unwrap();
    assert_changed(&pinned_err(&exp, tmp.path(), &m), &uri, "missing now");
    std::fs::write(&path, &original).unwrap();
    let added = tile_path(&tmp.path().join("data"), MASK_DIR, 15, 5499, 12799);
    write(&added, &original);
    assert_changed(
        &pinned_err(&exp, tmp.path(), &m),
        &format!("data/{MASK_DIR}/15/5499/12799.tif"),
        "not present at launch",
    );
    std::fs::remove_file(&added).unwrap();
    assert!(TrainData::open_pinned(&exp, tmp.path(), Some(&m)).is_ok());

    // A manifest of other data is refused as such.
    let mut elsewhere = m.clone();
    elsewhere.imagery = "other".into();
    let e = pinned_err(&exp, tmp.path(), &elsewhere);
    assert!(
        matches!(&e, DataError::Manifest(msg) if msg.contains("\"other\"")),
        "{e}"
    );
}

/// Hostile inputs, built in code: the largest allocation each makes on its
/// thread is measured ([`largest_allocation`]), so a file's claims (bands,
/// pixels, sizes) are shown never to decide how much memory is taken.
mod hostile {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::io::Write;
    use std::path::Path;

    use sca_train::checkpoint;
    use sca_train::data::{decode_imagery, decode_mask, DataError, TileErrorKind, TileSource};
    use sca_train::synth::encode_tiff_u16;

    /// The system allocator, noting the largest request of the current
    /// thread while [`largest_allocation`] watches it.
    struct Tracking;

    thread_local! {
        static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
    }

    fn note(size: usize) {
        let _ = LARGEST.try_with(|l| {
            if let Some(m) = l.get() {
                l.set(Some(m.max(size)));
            }
        });
    }

    unsafe impl GlobalAlloc for Tracking {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            System.alloc(layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            System.alloc_zeroed(layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            System.realloc(ptr, layout, new_size)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
    }

    #[global_allocator]
    static ALLOC: Tracking = Tracking;

    /// `f`'s result and the largest single allocation it made on this thread.
    fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|l| l.set(Some(0)));
        let r = f();
        (r, LARGEST.with(|l| l.replace(None)).unwrap_or(0))
    }

    const MIB: usize = 1 << 20;
    const TS: u32 = 64;

    /// `tiff` with the value of the first entry of `tag` in its first
    /// directory set to `value` (as a LONG), as a hostile file would claim.
    fn patch_tiff(mut tiff: Vec<u8>, tag: u16, value: u32) -> Vec<u8> {
        assert_eq!(&tiff[..4], b"II*\0", "little-endian classic TIFF");
        let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let ifd = u32::from_le_bytes(tiff[4..8].try_into().unwrap()) as usize;
        for e in 0..u16_at(&tiff, ifd) as usize {
            let at = ifd + 2 + 12 * e;
            if u16_at(&tiff, at) == tag {
                tiff[at + 2..at + 4].copy_from_slice(&4u16.to_le_bytes());
                tiff[at + 4..at + 8].copy_from_slice(&1u32.to_le_bytes());
                tiff[at + 8..at + 12].copy_from_slice(&value.to_le_bytes());
                return tiff;
            }
        }
        panic!("no tag {tag}");
    }

    /// An uncompressed `width` x `height` TIFF of `bands` 16-bit samples per
    /// pixel whose one strip holds only 16 bytes: a consistent directory (one
    /// BitsPerSample per band) claiming far more than the file holds.
    fn tiff_claiming(width: u32, height: u32, bands: u16) -> Vec<u8> {
        const SHORT: u16 = 3;
        const LONG: u16 = 4;
        let n_entries = 10u32;
        let ifd = 8u32;
        let bits_at = ifd + 2 + 12 * n_entries + 4;
        let strip_at = bits_at + 2 * u32::from(bands);
        let entries: [(u16, u16, u32, u32); 10] = [
            (256, LONG, 1, width),
            (257, LONG, 1, height),
            (258, SHORT, u32::from(bands), bits_at),
            (259, SHORT, 1, 1),
            (262, SHORT, 1, 1),
            (273, LONG, 1, strip_at),
            (277, SHORT, 1, u32::from(bands)),
            (278, LONG, 1, height),
            (279, LONG, 1, 16),
            (284, SHORT, 1, 1),
        ];
        let mut t = b"II*\0".to_vec();
        t.extend_from_slice(&ifd.to_le_bytes());
        t.extend_from_slice(&(n_entries as u16).to_le_bytes());
        for (tag, kind, count, value) in entries {
            t.extend_from_slice(&tag.to_le_bytes());
            t.extend_from_slice(&kind.to_le_bytes());
            t.extend_from_slice(&count.to_le_bytes());
            t.extend_from_slice(&value.to_le_bytes());
        }
        t.extend_from_slice(&0u32.to_le_bytes());
        for _ in 0..bands {
            t.extend_from_slice(&16u16.to_le_bytes());
        }
        t.extend_from_slice(&[0; 16]);
        t
    }

    fn tile() -> Vec<u8> {
        let n = (TS * TS) as usize * 4;
        encode_tiff_u16(TS, TS, 4, &vec![100; n]).unwrap()
    }

    #[test]
    fn a_tiff_claiming_65535_bands_or_a_huge_size_is_a_bad_tile() {
        let hostile = tiff_claiming(TS, TS, 65535);
        let (r, largest) = largest_allocation(|| decode_imagery(&hostile, "b.tif", TS, 4));
        let e = r.unwrap_err();
        assert_eq!(
            e.kind,
            TileErrorKind::TooManyBands {
                have: 65535,
                max: 64
            }
        );
        assert!(
            e.to_string().starts_with("b.tif: claims 65535 bands"),
            "{e}"
        );
        assert!(largest < 4 * MIB, "{largest} bytes allocated at once");
        let (r, largest) = largest_allocation(|| decode_mask(&hostile, "m.tif", TS));
        assert!(matches!(
            r.unwrap_err().kind,
            TileErrorKind::TooManyBands { .. }
        ));
        assert!(largest < 4 * MIB, "{largest} bytes allocated at once");

        for (w, h) in [(100_000, 100_000), (TS, 100_000), (100_000, TS)] {
            let hostile = tiff_claiming(w, h, 4);
            let (r, largest) = largest_allocation(|| decode_imagery(&hostile, "h.tif", TS, 4));
            let e = r.unwrap_err();
            assert!(
                e.kind
                    == TileErrorKind::WrongSize {
                        width: w,
                        height: h,
                        expected: TS
                    },
                "{e}"
            );
            assert!(largest < 4 * MIB, "{largest} bytes allocated at once");
        }
        // Within the band limit, claiming more data than the file holds.
        let short = tiff_claiming(TS, TS, 64);
        let (r, largest) = largest_allocation(|| decode_imagery(&short, "s.tif", TS, 4));
        assert!(matches!(r.unwrap_err().kind, TileErrorKind::Decode(_)));
        assert!(largest < 4 * MIB, "{largest} bytes allocated at once");
        // Its strip claims more bytes than the image needs.
        const STRIP_BYTE_COUNTS: u16 = 279;
        let long = patch_tiff(tile(), STRIP_BYTE_COUNTS, u32::MAX);
        let (r, largest) = largest_allocation(|| decode_imagery(&long, "l.tif", TS, 4));
        assert!(r.is_err());
        assert!(largest < 4 * MIB, "{largest} bytes allocated at once");
    }

    /// A PNG of `w` x `h` 8-bit grey pixels, all zero: a few hundred bytes
    /// per megapixel, the shape of a decompression bomb.
    fn png_of_zeros(w: u32, h: u32) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(data);
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&crc.sum().to_be_bytes());
        }
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        let row = vec![0u8; w as usize + 1];
        for _ in 0..h {
            z.write_all(&row).unwrap();
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(&mut png, b"IDAT", &z.finish().unwrap());
        chunk(&mut png, b"IEND", &[]);
        png
    }

    #[test]
    fn a_png_bomb_is_refused_before_it_is_decompressed() {
        let fine = png_of_zeros(TS, TS);
        assert_eq!(decode_mask(&fine, "ok.png", TS).unwrap(), vec![0; 64 * 64]);
        // 8000 x 8000: 64 MB once decompressed, from about 64 KB.
        let bomb = png_of_zeros(8000, 8000);
        assert!(bomb.len() < 200_000, "{} bytes", bomb.len());
        let (r, largest) = largest_allocation(|| decode_mask(&bomb, "bomb.png", TS));
        let e = r.unwrap_err();
        assert!(
            matches!(
                e.kind,
                TileErrorKind::WrongSize {
                    width: 8000,
                    height: 8000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(largest < 4 * MIB, "{largest} bytes allocated at once");
        // Claims 100000 x 100000 (the header only; no data to speak of).
        let mut huge = fine.clone();
        huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        huge[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let e = decode_imagery(&huge, "huge.png", TS, 1).unwrap_err();
        assert!(
            e.to_string().contains("is 100000x100000, expected 64x64"),
            "{e}"
        );
        let e = decode_imagery(&fine[..20], "cut.png", TS, 1).unwrap_err();
        assert!(matches!(e.kind, TileErrorKind::Decode(_)), "{e}");
    }

    #[test]
    fn an_object_larger_than_the_cap_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("big.tif")).unwrap();
        file.set_len(1 << 30).unwrap(); // sparse: 1 GiB claimed, nothing stored
        let src = TileSource::open(&dir.path().display().to_string(), Path::new(".")).unwrap();
        let (r, largest) = largest_allocation(|| src.read_max("big.tif", 8 * MIB as u64));
        let e = r.unwrap_err();
        assert!(
            matches!(e, DataError::TooLarge { size, .. } if size == 1 << 30),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("big.tif") && msg.contains(&format!("{} bytes sca-train reads", 8 * MIB)),
            "{msg}"
        );
        assert!(largest < MIB, "{largest} bytes allocated at once");
        std::fs::write(dir.path().join("small.tif"), b"x").unwrap();
        assert_eq!(src.read_max("small.tif", 1).unwrap(), b"x");
        assert!(matches!(
            src.read_max("small.tif", 0),
            Err(DataError::TooLarge {
                size: 1,
                max: 0,
                ..
            })
        ));
    }

    /// A gzipped tar holding `model.safetensors` whose header claims `size`
    /// bytes, followed by only a few.
    fn archive_claiming(size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_path("model.safetensors").unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend_from_slice(&[0; 512 * 3]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn a_model_archive_with_a_huge_entry_size_is_an_error() {
        for size in [1 << 40, u64::MAX >> 1] {
            let archive = archive_claiming(size);
            let (r, largest) = largest_allocation(|| {
                checkpoint::from_model_bytes(Path::new("s3://b/model.tar.gz"), &archive)
            });
            let e = r.unwrap_err().to_string();
            assert!(
                e.contains("s3://b/model.tar.gz") && e.contains("larger than the"),
                "{e}"
            );
            assert!(largest < 4 * MIB, "{largest} bytes allocated at once");
        }
        // A header claiming less than the cap but more than the archive holds.
        let archive = archive_claiming(1 << 30);
        let (r, largest) =
            largest_allocation(|| checkpoint::from_model_bytes(Path::new("m.tar.gz"), &archive));
        assert!(r.is_err());
        assert!(largest < 128 * MIB, "{largest} bytes allocated at once");
    }
}
