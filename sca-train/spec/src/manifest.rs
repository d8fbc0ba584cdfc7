//! The data manifest: what a launch pinned of an experiment's dataset (every
//! selected tile object with its size and ETag or content hash), so that
//! training and reruns can prove they read the same data.
//!
//! The launcher writes [`DataManifest::to_bytes`] as `manifest.json` into the
//! `config` channel next to the experiment file; `sca-train train` lists the
//! data again and refuses to train on anything that differs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a launch pinned: every tile object the experiment selects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataManifest {
    /// Format version, [`DataManifest::VERSION`].
    pub version: u32,
    /// `dataset.imagery` as written in the experiment.
    pub imagery: String,
    /// `dataset.masks` as written in the experiment.
    pub masks: String,
    pub zoom: u8,
    /// Sorted by `uri` (canonical bytes sort them whatever the order here).
    pub objects: Vec<ManifestObject>,
    /// The warm-start model (`model.init_checkpoint` as the launcher resolved
    /// it: an absolute path or an `s3://` URI), pinned like a tile. Absent
    /// without a warm start, and then absent from the bytes, so manifests
    /// made before it existed keep their hash.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub init_checkpoint: Option<ManifestObject>,
}

/// One pinned tile object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestObject {
    /// `s3://bucket/key`, or for local roots the root as written in the
    /// experiment joined with the key (`data/<dir>/<z>/<x>/<y>.tif`), so the
    /// manifest does not depend on where the checkout lives.
    pub uri: String,
    pub size: u64,
    /// The S3 ETag as listed (quotes included).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub etag: Option<String>,
    /// Hex sha256 of a local file's bytes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256: Option<String>,
}

impl DataManifest {
    /// Its name in the `config` channel.
    pub const FILE_NAME: &'static str = "manifest.json";
    /// The format version this crate writes and reads.
    pub const VERSION: u32 = 1;

    /// Parse manifest bytes (any object order, any JSON formatting).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Canonical bytes: compact JSON, objects sorted by uri (duplicates of a
    /// uri collapse to the first), so equal manifests hash equally.
    pub fn to_bytes(&self) -> Vec<u8> {
        let canonical = DataManifest {
            objects: self.by_uri().into_values().cloned().collect(),
            ..self.clone()
        };
        serde_json::to_vec(&canonical).expect("a manifest always serialises")
    }

    /// Hex sha256 of [`DataManifest::to_bytes`]: the manifest's identity.
    pub fn sha256(&self) -> String {
        Sha256::digest(self.to_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The first tile object (in uri order) that differs between `self`
    /// (pinned at launch) and `now`, as `(uri, reason)`; the warm-start model
    /// is compared on its own, where it is read. ETags and hashes are compared
    /// only where both sides have one: training lists local files without
    /// hashing them and checks their content when it reads them.
    pub fn first_difference(&self, now: &DataManifest) -> Option<(String, String)> {
        let (then, now) = (self.by_uri(), now.by_uri());
        let mut uris: Vec<&str> = then.keys().chain(now.keys()).copied().collect();
        uris.sort_unstable();
        uris.dedup();
        uris.into_iter().find_map(|uri| {
            let reason = match (then.get(uri), now.get(uri)) {
                (Some(_), None) => "missing now".to_string(),
                (None, Some(_)) => "not present at launch".to_string(),
                (Some(a), Some(b)) => a.difference(b)?,
                (None, None) => unreachable!("uri comes from one of the maps"),
            };
            Some((uri.to_string(), reason))
        })
    }

    fn by_uri(&self) -> BTreeMap<&str, &ManifestObject> {
        let mut map = BTreeMap::new();
        for o in &self.objects {
            map.entry(o.uri.as_str()).or_insert(o);
        }
        map
    }
}

impl ManifestObject {
    /// Why `now` is not this (pinned) object, if it is not. ETags and hashes
    /// are compared only where both sides have one, ETags without their
    /// quotes (some S3 implementations drop them in one API and not another).
    pub fn difference(&self, now: &ManifestObject) -> Option<String> {
        if self.size != now.size {
            return Some(format!(
                "size {} bytes at launch, {} now",
                self.size, now.size
            ));
        }
        if let (Some(a), Some(b)) = (&self.etag, &now.etag) {
            if a.trim_matches('"') != b.trim_matches('"') {
                return Some(format!("ETag {a} at launch, {b} now"));
            }
        }
        if let (Some(a), Some(b)) = (&self.sha256, &now.sha256) {
            if !a.eq_ignore_ascii_case(b) {
                return Some(format!("sha256 {a} at launch, {b} now"));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(uri: &str, size: u64, etag: Option<&str>, sha: Option<&str>) -> ManifestObject {
        ManifestObject {
            uri: uri.into(),
            size,
            etag: etag.map(Into::into),
            sha256: sha.map(Into::into),
        }
    }

    fn manifest(objects: Vec<ManifestObject>) -> DataManifest {
        DataManifest {
            version: DataManifest::VERSION,
            imagery: "s3://b/imagery".into(),
            masks: "data".into(),
            zoom: 15,
            objects,
            init_checkpoint: None,
        }
    }

    fn pinned() -> DataManifest {
        manifest(vec![
            obj("s3://b/imagery/d/15/1/2.tif", 10, Some("\"a\""), None),
            obj("data/m/15/1/2.tif", 7, None, Some("00ff")),
            obj("s3://b/imagery/d/15/1/3.tif", 11, Some("\"c\""), None),
        ])
    }

    /// The difference `edit` makes to the pinned manifest.
    fn check(edit: impl FnOnce(&mut Vec<ManifestObject>), expected: Option<(&str, &str)>) {
        let mut now = pinned();
        edit(&mut now.objects);
        assert_eq!(
            pinned().first_difference(&now),
            expected.map(|(u, r)| (u.to_string(), r.to_string()))
        );
    }

    #[test]
    fn canonical_bytes_ignore_object_order() {
        let a = pinned();
        let mut b = pinned();
        b.objects.reverse();
        assert_ne!(a, b);
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_eq!(a.sha256(), b.sha256());
        assert_eq!(a.sha256().len(), 64);
        let text = String::from_utf8(a.to_bytes()).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"imagery":"s3://b/imagery","masks":"data","zoom":15,"objects":[{"uri":"data/m/15/1/2.tif","size":7,"sha256":"00ff"},{"uri":"s3://b/imagery/d/15/1/2.tif","size":10,"etag":"\"a\""},{"uri":"s3://b/imagery/d/15/1/3.tif","size":11,"etag":"\"c\""}]}"#
        );
        let back = DataManifest::from_slice(text.as_bytes()).unwrap();
        assert_eq!(back.to_bytes(), a.to_bytes());
        // Any change of content changes the hash.
        let mut c = pinned();
        c.objects[0].size += 1;
        assert_ne!(c.sha256(), a.sha256());
    }

    #[test]
    fn first_difference_names_the_first_changed_object() {
        check(|_| {}, None);
        check(|o| o.reverse(), None);
        check(
            |o| o[2].size = 12,
            Some((
                "s3://b/imagery/d/15/1/3.tif",
                "size 11 bytes at launch, 12 now",
            )),
        );
        check(
            |o| o[0].etag = Some("\"b\"".into()),
            Some((
                "s3://b/imagery/d/15/1/2.tif",
                "ETag \"a\" at launch, \"b\" now",
            )),
        );
        check(|o| o[0].etag = Some("a".into()), None);
        check(
            |o| o[1].sha256 = Some("0100".into()),
            Some(("data/m/15/1/2.tif", "sha256 00ff at launch, 0100 now")),
        );
        // Unhashed now (training's listing): only the size is compared.
        check(|o| o[1].sha256 = None, None);
        check(
            |o| {
                o.remove(2);
            },
            Some(("s3://b/imagery/d/15/1/3.tif", "missing now")),
        );
        check(
            |o| o.push(obj("s3://b/imagery/d/15/1/25.tif", 1, Some("\"z\""), None)),
            Some(("s3://b/imagery/d/15/1/25.tif", "not present at launch")),
        );
        // Several differences: the first in uri order wins.
        check(
            |o| {
                o[2].size = 1;
                o[0].etag = Some("\"x\"".into());
            },
            Some((
                "s3://b/imagery/d/15/1/2.tif",
                "ETag \"a\" at launch, \"x\" now",
            )),
        );
    }

    #[test]
    fn a_warm_start_pin_changes_the_identity_and_only_when_present() {
        let plain = pinned();
        assert!(!String::from_utf8(plain.to_bytes())
            .unwrap()
            .contains("init_checkpoint"));
        let mut warm = pinned();
        warm.init_checkpoint = Some(obj(
            "s3://b/job/output/model.tar.gz",
            5,
            Some("\"e\""),
            None,
        ));
        assert_ne!(warm.sha256(), plain.sha256());
        let back = DataManifest::from_slice(&warm.to_bytes()).unwrap();
        assert_eq!(back.init_checkpoint, warm.init_checkpoint);
        assert_eq!(back.to_bytes(), warm.to_bytes());
    }
}
