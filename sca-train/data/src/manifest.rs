//! The data manifest on the training side: [`build`] lists and pins the
//! experiment's tile objects at launch; [`verify_listing`] checks training's
//! own listing against it and gives the pins that each source then checks
//! every read against (see [`super::source`]).
//!
//! The manifest holds exactly what discovery lists: every tile at the zoom in
//! the directories the regexes select, on both sides (duplicates and orphans
//! too, since adding or removing them changes what discovery reports). S3
//! objects are pinned by size and ETag from the (paginated, per-directory
//! concurrent) listing; local files by size and the sha256 of their bytes.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::discover::{discover_listed, Listing};
use super::error::{DataError, Result};
use super::source::{Pins, S3Access, TileSource};
use sca_spec::{DataManifest, Dataset, ManifestObject};

/// List and pin the tile objects training would discover for `dataset`
/// (local roots relative to `base_dir`), hashing local files in parallel.
/// A synthetic dataset is generated first when missing, as training does.
/// Synchronous: S3 sources run their own runtime, so call it from
/// `spawn_blocking` in async code.
pub fn build(dataset: &Dataset, base_dir: &Path, access: &S3Access) -> Result<DataManifest> {
    crate::synth::ensure_synthetic(dataset, base_dir)?;
    let (index, listing) = discover_listed(dataset, base_dir, None, access)?;
    manifest_of(dataset, &index.imagery, &index.masks, &listing, true)
}

/// Pin one object outside the dataset, the warm-start model: `location` is
/// `s3://bucket/key` (pinned by size and ETag, without downloading it) or a
/// local path, absolute or relative to `base_dir` (by size and sha256). The
/// pin's `uri` is `location` as given.
pub fn pin_object(location: &str, base_dir: &Path, access: &S3Access) -> Result<ManifestObject> {
    let (source, key) = single_object(location, base_dir, access)?;
    let (size, etag, sha256) = match &source {
        TileSource::Local(_) => {
            let bytes = source.read(&key)?;
            (bytes.len() as u64, None, Some(sha256_hex(&bytes)))
        }
        TileSource::S3(_) => {
            let (size, etag) = source.head(&key)?;
            (size, etag, None)
        }
    };
    Ok(ManifestObject {
        uri: location.to_string(),
        size,
        etag,
        sha256,
    })
}

/// The bytes of the object at `location` (as for [`pin_object`]), refused as
/// [`DataError::DataChanged`] when they are not what `pin` recorded.
pub fn read_pinned_object(
    location: &str,
    base_dir: &Path,
    pin: &ManifestObject,
) -> Result<Vec<u8>> {
    let (mut source, key) = single_object(location, base_dir, &S3Access::default())?;
    source.pin(Pins::from([(key.clone(), pin.clone())]));
    source.read(&key)
}

/// The bytes of the object at `location` (as for [`pin_object`]), unchecked.
pub fn read_object(location: &str, base_dir: &Path) -> Result<Vec<u8>> {
    let (source, key) = single_object(location, base_dir, &S3Access::default())?;
    source.read(&key)
}

/// A source holding just the object at `location`, and its key there.
fn single_object(
    location: &str,
    base_dir: &Path,
    access: &S3Access,
) -> Result<(TileSource, String)> {
    if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        return Ok((
            TileSource::open_with(&format!("s3://{bucket}"), base_dir, access)?,
            key.to_string(),
        ));
    }
    let path = base_dir.join(location);
    let key = path
        .file_name()
        .ok_or_else(|| DataError::BadUri {
            uri: location.into(),
        })?
        .to_string_lossy()
        .into_owned();
    let dir = path.parent().unwrap_or(Path::new("."));
    Ok((
        TileSource::open(&dir.display().to_string(), Path::new("."))?,
        key,
    ))
}

/// Pins for the two sources of a verified listing.
pub(crate) struct SourcePins {
    pub imagery: Pins,
    pub masks: Pins,
}

/// Check that `manifest` was built for `dataset` and that `listing` (without
/// content hashes) matches it object for object; the pins for each source.
pub(crate) fn verify_listing(
    manifest: &DataManifest,
    dataset: &Dataset,
    imagery: &TileSource,
    masks: &TileSource,
    listing: &Listing,
) -> Result<SourcePins> {
    if manifest.version != DataManifest::VERSION {
        return Err(DataError::Manifest(format!(
            "version {} is not supported (this sca-train reads version {})",
            manifest.version,
            DataManifest::VERSION
        )));
    }
    if (&manifest.imagery, &manifest.masks, manifest.zoom)
        != (&dataset.imagery, &dataset.masks, dataset.zoom)
    {
        return Err(DataError::Manifest(format!(
            "it pins imagery {:?}, masks {:?} at zoom {} but the experiment reads imagery {:?}, \
             masks {:?} at zoom {}; launch again to pin this experiment's data",
            manifest.imagery,
            manifest.masks,
            manifest.zoom,
            dataset.imagery,
            dataset.masks,
            dataset.zoom
        )));
    }
    let now = manifest_of(dataset, imagery, masks, listing, false)?;
    if let Some((uri, reason)) = manifest.first_difference(&now) {
        return Err(DataError::DataChanged { uri, reason });
    }
    let by_uri: HashMap<&str, &ManifestObject> = manifest
        .objects
        .iter()
        .map(|o| (o.uri.as_str(), o))
        .collect();
    let pins = |src: &TileSource, entries: &[super::source::TileEntry]| -> Pins {
        entries
            .iter()
            .filter_map(|e| {
                let pin = by_uri.get(src.object_uri(&e.key).as_str())?;
                Some((e.key.clone(), (*pin).clone()))
            })
            .collect()
    };
    Ok(SourcePins {
        imagery: pins(imagery, &listing.imagery),
        masks: pins(masks, &listing.masks),
    })
}

/// The manifest of a listing; with `hash`, local files are read and hashed.
fn manifest_of(
    dataset: &Dataset,
    imagery: &TileSource,
    masks: &TileSource,
    listing: &Listing,
    hash: bool,
) -> Result<DataManifest> {
    // One object per uri: with a shared root, both regexes may select a directory.
    let mut listed: BTreeMap<String, (u64, Option<String>, Option<PathBuf>)> = BTreeMap::new();
    for (src, entries) in [(imagery, &listing.imagery), (masks, &listing.masks)] {
        for e in entries {
            let path = match src {
                TileSource::Local(l) if hash => Some(l.root.join(&e.key)),
                _ => None,
            };
            listed
                .entry(src.object_uri(&e.key))
                .or_insert((e.size, e.etag.clone(), path));
        }
    }
    let objects = listed
        .into_par_iter()
        .map(|(uri, (size, etag, path))| {
            let (size, sha256) = match path {
                Some(path) => {
                    let (size, sha) = hash_file(&path)?;
                    (size, Some(sha))
                }
                None => (size, None),
            };
            Ok(ManifestObject {
                uri,
                size,
                etag,
                sha256,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(DataManifest {
        version: DataManifest::VERSION,
        imagery: dataset.imagery.clone(),
        masks: dataset.masks.clone(),
        zoom: dataset.zoom,
        objects,
        init_checkpoint: None,
    })
}

/// Size and hex sha256 of a file, streamed (also the launcher's hash of a
/// dirty tree's untracked files).
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sca_spec::Split;

    fn dataset(root: &str) -> Dataset {
        Dataset {
            imagery: root.into(),
            masks: root.into(),
            imagery_regex: "AnalyticMS_SR".into(),
            mask_regex: "_binary$".into(),
            zoom: 15,
            tile_size: 32,
            train_fraction: 0.7,
            split: Split::Spatial,
            block_zoom: 14,
            max_bad_fraction: 0.0,
            synthetic: None,
        }
    }

    #[test]
    fn local_manifest_names_paths_as_written_and_hashes_content() {
        let tmp = tempfile::tempdir().unwrap();
        crate::synth::synth(&tmp.path().join("data"), 4, 1, 32, 15).unwrap();
        let m = build(&dataset("data/"), tmp.path(), &S3Access::default()).unwrap();
        assert_eq!(m.objects.len(), 8, "4 imagery and 4 mask tiles");
        assert!(m.objects.windows(2).all(|w| w[0].uri < w[1].uri));
        let first = &m.objects[0];
        assert!(
            first.uri.starts_with("data/") && first.uri.ends_with(".tif"),
            "{}",
            first.uri
        );
        let bytes = std::fs::read(tmp.path().join(&first.uri)).unwrap();
        assert_eq!(first.size, bytes.len() as u64);
        assert_eq!(first.sha256.as_deref(), Some(sha256_hex(&bytes).as_str()));
        assert_eq!(first.etag, None);
        // Independent of where the directory lives.
        let other = tempfile::tempdir().unwrap();
        crate::synth::synth(&other.path().join("data"), 4, 1, 32, 15).unwrap();
        assert_eq!(
            build(&dataset("data/"), other.path(), &S3Access::default()).unwrap(),
            m
        );
        // Relative to the base directory itself.
        let inside = build(
            &dataset("."),
            &tmp.path().join("data"),
            &S3Access::default(),
        )
        .unwrap();
        assert_eq!(
            inside.objects[0].uri,
            first.uri.strip_prefix("data/").unwrap()
        );
    }

    #[test]
    fn sha256_hex_is_the_standard_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_pinned_single_object_is_read_only_while_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("models")).unwrap();
        let file = dir.path().join("models/model.safetensors");
        std::fs::write(&file, b"weights v1").unwrap();
        // Relative to the base directory, as an experiment file writes it.
        let pin = pin_object("models/model.safetensors", dir.path(), &S3Access::default()).unwrap();
        assert_eq!(pin.uri, "models/model.safetensors");
        assert_eq!(pin.size, 10);
        assert_eq!(
            pin.sha256.as_deref(),
            Some(sha256_hex(b"weights v1").as_str())
        );
        // By absolute path too (the docker backend reads it elsewhere): content decides.
        let abs = file.display().to_string();
        assert_eq!(
            read_pinned_object(&abs, Path::new("/"), &pin).unwrap(),
            b"weights v1"
        );
        std::fs::write(&file, b"weights v2").unwrap();
        match read_pinned_object(&abs, Path::new("/"), &pin) {
            Err(DataError::DataChanged { uri, reason }) => {
                assert!(uri.ends_with("model.safetensors"), "{uri}");
                assert!(reason.contains("sha256"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read_object(&abs, Path::new("/")).unwrap(), b"weights v2");
        assert!(pin_object(
            "models/missing.safetensors",
            dir.path(),
            &S3Access::default()
        )
        .is_err());
    }
}
