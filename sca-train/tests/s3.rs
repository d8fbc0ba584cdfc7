//! S3 tile source against the moto S3 emulator, and S3 data pinned by a
//! data manifest (sizes and ETags).
//!
//! Needs `AWS_ENDPOINT_URL` (plus `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`), which `cargo xtask test` exports after starting moto. Without
//! it these tests fail (they are never skipped silently). For development:
//!
//! ```text
//! moto_server -H 127.0.0.1 -p 5123 &
//! AWS_ENDPOINT_URL=http://127.0.0.1:5123 AWS_ACCESS_KEY_ID=test \
//!   AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 cargo test -p sca-train --test s3
//! ```

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sca_train::data::{
    bench_loader, discover, discover_pinned, manifest, validate, BenchOptions, DataError,
    EpochPlan, Loader, LoaderConfig, Normalizer, TileErrorKind, TileSource,
};
use sca_train::spec::{Augmentation, Channel, Dataset, Split};
use sca_train::synth::{self, IMAGERY_DIR, MASK_DIR};

const TS: u32 = 64;

fn require_emulator() {
    if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        panic!(
            "AWS_ENDPOINT_URL is not set: the S3 tests need the moto S3 emulator; \
             start the services with `cargo xtask test`"
        );
    }
}

fn unique_bucket(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("sca-test-{tag}-{}-{nanos}", std::process::id())
}

fn dataset(imagery: &str, masks: &str) -> Dataset {
    Dataset {
        imagery: imagery.into(),
        masks: masks.into(),
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
    vec![Channel {
        bands: vec![1, 2, 3, 4],
        mean: vec![0.3; 4],
        std: vec![0.2; 4],
    }]
}

fn s3(uri: &str) -> sca_train::data::source::S3Source {
    match TileSource::open(uri, Path::new(".")).unwrap() {
        TileSource::S3(s) => s,
        TileSource::Local(_) => unreachable!(),
    }
}

/// Upload every file under `local` to `<source prefix>/<key_prefix>/<relative path>`.
fn upload_tree(dst: &sca_train::data::source::S3Source, local: &Path, key_prefix: &str) -> usize {
    let mut n = 0;
    let mut stack = vec![local.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let key = p
                    .strip_prefix(local)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .replace('\\', "/");
                dst.put(&format!("{key_prefix}/{key}"), std::fs::read(&p).unwrap())
                    .unwrap();
                n += 1;
            }
        }
    }
    n
}

#[test]
fn s3_source_lists_joins_and_loads_like_local() {
    require_emulator();
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("data");
    synth::synth(&local, 12, 3, TS, 15).unwrap();
    let bucket = unique_bucket("data");
    let imagery_uri = format!("s3://{bucket}/imagery");
    let masks_uri = format!("s3://{bucket}/masks/nested");

    let img = s3(&imagery_uri);
    img.ensure_bucket().unwrap();
    let msk = s3(&masks_uri);
    // Imagery dir under imagery/, mask dir under masks/nested/.
    assert_eq!(upload_tree(&img, &local.join(IMAGERY_DIR), IMAGERY_DIR), 12);
    assert_eq!(upload_tree(&msk, &local.join(MASK_DIR), MASK_DIR), 12);
    // Keys to ignore, an orphan mask, a directory the regex does not select.
    msk.put(
        &format!("{MASK_DIR}/15/5470/12720.tif.aux.xml"),
        b"x".to_vec(),
    )
    .unwrap();
    msk.put(&format!("{MASK_DIR}/15/notes.txt"), b"x".to_vec())
        .unwrap();
    msk.put(&format!("{MASK_DIR}/16/1/2.tif"), b"x".to_vec())
        .unwrap();
    let m = std::fs::read(local.join(MASK_DIR).join("15/5470/12720.tif")).unwrap();
    msk.put(&format!("{MASK_DIR}/15/9999/12720.tif"), m)
        .unwrap();
    img.put("unrelated_dir/15/5470/12720.tif", b"x".to_vec())
        .unwrap();

    let remote = dataset(&imagery_uri, &masks_uri);
    let index = discover(&remote, tmp.path()).unwrap();
    let local_index = discover(&dataset("data", "data"), tmp.path()).unwrap();
    assert_eq!(index.pairs, local_index.pairs, "same keys, same order");
    assert_eq!(index.len(), 12);
    assert_eq!(index.orphan_masks.len(), 1);
    assert_eq!(
        index.imagery.uri(&index.pairs[0].imagery),
        format!("s3://{bucket}/imagery/{IMAGERY_DIR}/15/5470/12720.tif")
    );

    // Pagination: two keys per page gives the same listing.
    let mut paged = s3(&masks_uri);
    paged.set_page_size(2);
    let paged = TileSource::S3(paged);
    let dirs = paged.list_dirs().unwrap();
    assert_eq!(dirs, vec![MASK_DIR.to_string()]);
    let tiles = paged.list_tiles(&dirs, 15).unwrap();
    assert_eq!(tiles.len(), 13);
    assert_eq!(tiles, index.masks.list_tiles(&dirs, 15).unwrap());

    // Validation and loading give exactly the local batches.
    let norm = Normalizer::new(&channels()).unwrap();
    let v = validate(index, &remote, &norm, None).unwrap();
    assert!(v.bad.is_empty());
    let plan = EpochPlan {
        epoch: 1,
        seed: 4,
        shuffle: true,
        augmentation: Some(Augmentation::default()),
    };
    let all: Vec<usize> = (0..12).collect();
    let cfg = LoaderConfig::new(5);
    let remote_loader = Loader::new(std::sync::Arc::new(v.index), norm.clone(), TS);
    let local_loader = Loader::new(std::sync::Arc::new(local_index), norm, TS);
    let a: Vec<_> = remote_loader
        .batches(&all, &plan, &cfg)
        .map(|b| b.unwrap())
        .collect();
    let b: Vec<_> = local_loader
        .batches(&all, &plan, &cfg)
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(a.len(), 3);
    assert_eq!(a, b);

    // Throughput (printed for the record).
    let r = bench_loader(&remote, &channels(), tmp.path(), &BenchOptions::default()).unwrap();
    assert_eq!(r.tiles, 12);
    eprintln!(
        "S3 (moto) loader: {:.1} tiles/s ({} tiles of {}x{}, {} workers)",
        r.tiles_per_sec, r.tiles, TS, TS, r.workers
    );
}

#[test]
fn s3_errors_name_the_uri() {
    require_emulator();
    let bucket = unique_bucket("err");
    let src = s3(&format!("s3://{bucket}/prefix"));
    src.ensure_bucket().unwrap();
    // Empty bucket: no directories, a clear error naming the roots and regexes.
    let d = dataset(
        &format!("s3://{bucket}/prefix"),
        &format!("s3://{bucket}/prefix"),
    );
    let e = discover(&d, Path::new(".")).unwrap_err();
    assert!(matches!(e, DataError::EmptyDataset { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!("s3://{bucket}/prefix")),
        "{e}"
    );
    // An object over the read cap: refused by its length, naming it.
    src.put("big.tif", vec![7; 4096]).unwrap();
    let src = TileSource::S3(src);
    let e = src.read_max("big.tif", 1000).unwrap_err();
    assert!(
        matches!(&e, DataError::TooLarge { uri, size: 4096, max: 1000 }
            if *uri == format!("s3://{bucket}/prefix/big.tif")),
        "{e:?}"
    );
    assert_eq!(src.read_max("big.tif", 4096).unwrap().len(), 4096);
    // Missing object and missing bucket.
    let e = src.read("nope.tif").unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("s3://{bucket}/prefix/nope.tif")),
        "{e}"
    );
    let missing = format!("s3://{}-missing/x", unique_bucket("m"));
    let e = discover(&dataset(&missing, &missing), Path::new(".")).unwrap_err();
    assert!(matches!(e, DataError::S3 { .. }), "{e}");
}

#[track_caller]
fn assert_changed(e: &DataError, uri: &str, reason: &str) {
    assert!(
        matches!(e, DataError::DataChanged { uri: u, reason: r } if u == uri && r.starts_with(reason)),
        "expected {uri}: {reason}..., got {e:?}"
    );
    assert!(
        e.to_string()
            .starts_with(&format!("data changed since launch: {uri}: {reason}")),
        "{e}"
    );
}

#[test]
fn manifest_pins_s3_objects_by_etag() {
    use sca_train::sagemaker::OptMl;
    use sca_train::spec::DataManifest;
    use sca_train::train::{train, Outcome, TrainError};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    require_emulator();
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("data");
    synth::synth(&local, 16, 7, TS, 15).unwrap();
    let bucket = unique_bucket("pin");
    let imagery_uri = format!("s3://{bucket}/imagery");
    let masks_uri = format!("s3://{bucket}/masks");
    let img = s3(&imagery_uri);
    img.ensure_bucket().unwrap();
    let msk = s3(&masks_uri);
    upload_tree(&img, &local.join(IMAGERY_DIR), IMAGERY_DIR);
    upload_tree(&msk, &local.join(MASK_DIR), MASK_DIR);
    let mut d = dataset(&imagery_uri, &masks_uri);
    d.max_bad_fraction = 0.5;

    let m = manifest::build(&d, tmp.path(), &Default::default()).unwrap();
    assert_eq!(m.objects.len(), 32);
    for o in &m.objects {
        assert!(o.uri.starts_with(&format!("s3://{bucket}/")), "{}", o.uri);
        assert!(o.etag.is_some() && o.sha256.is_none(), "{o:?}");
    }
    let key = format!("{IMAGERY_DIR}/15/5470/12720.tif");
    let uri = format!("{imagery_uri}/{key}");
    let original = std::fs::read(local.join(IMAGERY_DIR).join("15/5470/12720.tif")).unwrap();
    let pinned = m.objects.iter().find(|o| o.uri == uri).unwrap();
    assert_eq!(pinned.size, original.len() as u64);

    // Training on the pinned data, through the config channel.
    let ml_dir = tempfile::tempdir().unwrap();
    let ml = OptMl::at(ml_dir.path());
    std::fs::create_dir_all(ml.channel("config")).unwrap();
    std::fs::write(
        ml.channel("config").join("exp.toml"),
        format!(
            r#"
[experiment]
name = "s3-pinned"
seed = 1

[dataset]
imagery = "{imagery_uri}"
masks = "{masks_uri}"
imagery_regex = "AnalyticMS_SR"
mask_regex = "_binary$"
tile_size = {TS}
block_zoom = 13
max_bad_fraction = 0.5

[[channels]]
bands = [1, 2, 3, 4]
mean = [0.3, 0.3, 0.3, 0.3]
std = [0.2, 0.2, 0.2, 0.2]

[[classes]]
name = "snow"
color = "white"

[model]
depth = 2
base_width = 4

[train]
epochs = 1
steps_per_epoch = 1
batch_size = 2
"#
        ),
    )
    .unwrap();
    std::fs::write(
        ml.channel("config").join(DataManifest::FILE_NAME),
        m.to_bytes(),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let outcome = train(&ml, &stop).unwrap();
    assert!(matches!(outcome, Outcome::Completed { .. }), "{outcome:?}");

    // Overwritten after discovery with other bytes of the same size: the
    // read's ETag differs, and validation fails however many bad tiles it
    // would tolerate.
    let index = discover_pinned(&d, tmp.path(), Some(&m)).unwrap();
    let i = index.pairs.iter().position(|p| p.imagery == key).unwrap();
    index.load_pair(i, TS, 4).unwrap();
    let mut other = original.clone();
    other[original.len() / 2] ^= 0x55;
    img.put(&key, other).unwrap();
    let e = index.load_pair(i, TS, 4).unwrap_err();
    assert_eq!(e.key, uri);
    assert!(
        matches!(&e.kind, TileErrorKind::Changed(r) if r.starts_with("ETag ")),
        "{e}"
    );
    let norm = Normalizer::new(&channels()).unwrap();
    assert_changed(
        &validate(index, &d, &norm, None).unwrap_err(),
        &uri,
        "ETag ",
    );
    // A new listing names it, and so does training.
    assert_changed(
        &discover_pinned(&d, tmp.path(), Some(&m)).unwrap_err(),
        &uri,
        "ETag ",
    );
    match train(&ml, &stop) {
        Err(TrainError::Data(e)) => assert_changed(&e, &uri, "ETag "),
        other => panic!("{other:?}"),
    }

    // The original bytes have the original ETag again; a removed object is named.
    img.put(&key, original).unwrap();
    discover_pinned(&d, tmp.path(), Some(&m)).unwrap();
    let mkey = format!("{MASK_DIR}/15/5471/12721.tif");
    msk.delete(&mkey).unwrap();
    assert_changed(
        &discover_pinned(&d, tmp.path(), Some(&m)).unwrap_err(),
        &format!("{masks_uri}/{mkey}"),
        "missing now",
    );
}
