//! What a job is pinned to, as one type: the commit (and the hash of an
//! uncommitted diff), the image by digest, the experiment bytes' sha256,
//! the data manifest's sha256 and the warm-start model. The plan carries
//! it, the run record stores it (flattened: the record's keys are the
//! fields'), the SageMaker tags are made from it, and a rerun takes it from
//! the record.

use std::fmt;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Everything a job's code, image, experiment and data are pinned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    /// The git commit the job runs (the record's `commit`).
    #[serde(deserialize_with = "hex")]
    pub commit: String,
    /// The working tree had uncommitted changes (`--allow-dirty`).
    pub dirty: bool,
    /// sha256 of `git diff HEAD` plus the untracked files' paths and
    /// contents, when dirty ([`super::pin::diff_hash`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "hex_option"
    )]
    pub diff_sha256: Option<String>,
    /// The image, never a tag (docker and sagemaker; the record's `image`
    /// and `image_digest`).
    #[serde(
        flatten,
        deserialize_with = "image_fields",
        skip_serializing_if = "Option::is_none"
    )]
    pub image: Option<ImageRef>,
    /// sha256 of the experiment file's exact bytes.
    #[serde(deserialize_with = "hex")]
    pub experiment_sha256: String,
    /// sha256 of the data manifest's canonical bytes (absent in records
    /// older than the manifest).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "hex_option"
    )]
    pub data_manifest_sha256: Option<String>,
    /// The concrete warm-start model (host path or URI), if any; the data
    /// manifest pins its size and hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_checkpoint: Option<String>,
}

/// A commit id or sha256 of a record, which comes from disk or from the
/// config bucket (`--remote`): refused unless hex, so that shortening one
/// for display never splits a character.
fn hex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(serde::de::Error::custom(format!(
            "{s:?} is not a hex commit id or hash"
        )));
    }
    Ok(s)
}

fn hex_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Hex(#[serde(deserialize_with = "hex")] String);
    Ok(Option::<Hex>::deserialize(d)?.map(|Hex(s)| s))
}

pub const TAG_COMMIT: &str = "sca:commit";
pub const TAG_IMAGE_DIGEST: &str = "sca:image-digest";
pub const TAG_EXPERIMENT_SHA256: &str = "sca:experiment-sha256";
pub const TAG_DIRTY: &str = "sca:dirty";
pub const TAG_DATA_MANIFEST_SHA256: &str = "sca:data-manifest-sha256";

impl Pins {
    /// The digest of the pinned image, if there is one.
    pub fn image_digest(&self) -> Option<&str> {
        self.image.as_ref().map(|i| i.digest.as_str())
    }

    /// The pins a SageMaker job's tags carry: experiment hash, commit, image
    /// digest (empty without an image), `sca:dirty` only when dirty, the
    /// data manifest's hash when known.
    pub fn tags(&self) -> Vec<(&'static str, String)> {
        let mut tags = vec![
            (TAG_EXPERIMENT_SHA256, self.experiment_sha256.clone()),
            (TAG_COMMIT, self.commit.clone()),
            (
                TAG_IMAGE_DIGEST,
                self.image_digest().unwrap_or_default().to_string(),
            ),
        ];
        if self.dirty {
            tags.push((TAG_DIRTY, "true".into()));
        }
        if let Some(m) = &self.data_manifest_sha256 {
            tags.push((TAG_DATA_MANIFEST_SHA256, m.clone()));
        }
        tags
    }

    /// Whether a job tagged `tags` was launched from the same experiment
    /// bytes and commit as these pins.
    pub fn same_experiment_and_commit(
        &self,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        tags.get(TAG_EXPERIMENT_SHA256) == Some(&self.experiment_sha256)
            && tags.get(TAG_COMMIT) == Some(&self.commit)
    }

    /// Whether a job pinned `other` runs exactly what these pins do: the
    /// same commit and working-tree diff, image digest, experiment bytes and
    /// data manifest (which pins the warm-start model too). The image's
    /// repository does not matter, its digest does.
    pub fn same_launch(&self, other: &Pins) -> bool {
        self.commit == other.commit
            && self.dirty == other.dirty
            && self.diff_sha256 == other.diff_sha256
            && self.image_digest() == other.image_digest()
            && self.experiment_sha256 == other.experiment_sha256
            && self.data_manifest_sha256.is_some()
            && self.data_manifest_sha256 == other.data_manifest_sha256
    }

    /// A name for [`Self::same_launch`]'s equivalence: equal for pins that
    /// launch the same job, different otherwise (a hash of exactly the
    /// fields it compares); `None` where it holds for no pins (no data
    /// manifest).
    pub fn launch_key(&self) -> Option<String> {
        use sha2::Digest;
        let manifest = self.data_manifest_sha256.as_deref()?;
        let fields = [
            self.commit.as_str(),
            if self.dirty { "dirty" } else { "clean" },
            self.diff_sha256.as_deref().unwrap_or("-"),
            self.image_digest().unwrap_or("-"),
            &self.experiment_sha256,
            manifest,
        ];
        // NUL-separated: no field holds one (hex, digests, two words).
        Some(hex::encode(sha2::Sha256::digest(fields.join("\0"))))
    }

    /// The commit, shortened to 12 characters for people.
    pub fn short_commit(&self) -> &str {
        &self.commit[..self.commit.len().min(12)]
    }
}

/// An image named by digest: `REPOSITORY@sha256:<64 hex>` in a registry, or
/// (no repository) the local engine's image id `sha256:<64 hex>`, which is
/// the digest of the image's configuration. Never a tag, which can move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ImageFields", into = "ImageFields")]
pub struct ImageRef {
    /// `HOST/REPO`; `None` for the engine's image id.
    pub repository: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: String,
}

impl ImageRef {
    /// `REPOSITORY@sha256:...` or a bare `sha256:...` image id; anything
    /// else (a tag, a short digest) is refused.
    pub fn parse(reference: &str) -> Result<Self> {
        let (repository, digest) = match reference.rsplit_once('@') {
            Some((repo, digest)) if !repo.is_empty() => (Some(repo.to_string()), digest),
            Some(_) => bail!("`{reference}` names no repository before the `@`"),
            None => (None, reference),
        };
        if !is_digest(digest) {
            bail!("`{reference}` does not name an image by digest: give REPOSITORY@sha256:<64 hex> (jobs never run a tag, which can move)");
        }
        Ok(ImageRef {
            repository,
            digest: digest.to_string(),
        })
    }

    /// An image in a registry.
    pub fn in_registry(repository: &str, digest: &str) -> Result<Self> {
        Self::parse(&format!("{repository}@{digest}"))
    }

    /// The local engine's image id.
    pub fn engine_id(id: &str) -> Result<Self> {
        Self::parse(id)
    }
}

/// `sha256:` and 64 lowercase hex digits.
fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repository {
            Some(repo) => write!(f, "{repo}@{}", self.digest),
            None => f.write_str(&self.digest),
        }
    }
}

/// A record's `image` and `image_digest`: both or neither. Not serde's
/// flattened `Option`, which reads any error in them as "no image" (and the
/// record's next save would then drop the pin for good).
fn image_fields<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ImageRef>, D::Error> {
    #[derive(Deserialize)]
    struct Maybe {
        image: Option<String>,
        image_digest: Option<String>,
    }
    let Maybe {
        image,
        image_digest,
    } = Maybe::deserialize(d)?;
    let e = <D::Error as serde::de::Error>::custom::<String>;
    match (image, image_digest) {
        (None, None) => Ok(None),
        (Some(image), Some(image_digest)) => ImageFields {
            image,
            image_digest,
        }
        .try_into()
        .map(Some)
        .map_err(e),
        (Some(_), None) => Err(e(
            "`image` without `image_digest`: a record names its image by both".into(),
        )),
        (None, Some(_)) => Err(e(
            "`image_digest` without `image`: a record names its image by both".into(),
        )),
    }
}

/// How a run record stores an [`ImageRef`]: the full reference and its
/// digest, side by side.
#[derive(Serialize, Deserialize)]
struct ImageFields {
    image: String,
    image_digest: String,
}

impl From<ImageRef> for ImageFields {
    fn from(i: ImageRef) -> Self {
        ImageFields {
            image: i.to_string(),
            image_digest: i.digest,
        }
    }
}

impl TryFrom<ImageFields> for ImageRef {
    type Error = String;

    fn try_from(f: ImageFields) -> Result<Self, String> {
        let image = ImageRef::parse(&f.image).map_err(|e| format!("{e:#}"))?;
        if image.digest != f.image_digest {
            return Err(format!(
                "image `{}` and image_digest `{}` disagree",
                f.image, f.image_digest
            ));
        }
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn image_refs_parse_and_print_by_digest_only() {
        let r = ImageRef::parse(&format!("127.0.0.1:5124/sca-train@{D}")).unwrap();
        assert_eq!(r.repository.as_deref(), Some("127.0.0.1:5124/sca-train"));
        assert_eq!(r.digest, D);
        assert_eq!(r.to_string(), format!("127.0.0.1:5124/sca-train@{D}"));
        let id = ImageRef::parse(D).unwrap();
        assert_eq!((id.repository.as_deref(), id.to_string()), (None, D.into()));
        for bad in [
            "sca-train:latest",
            "repo@sha256:ff",
            &format!("@{D}"),
            &format!("repo@{}", D.to_uppercase()),
        ] {
            let e = ImageRef::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    /// Two pins have one launch key exactly when they launch the same job.
    #[test]
    fn launch_keys_follow_same_launch() {
        let base = Pins {
            commit: "c".repeat(40),
            dirty: false,
            diff_sha256: None,
            image: Some(ImageRef::parse(&format!("127.0.0.1:5124/sca-train@{D}")).unwrap()),
            experiment_sha256: "e".repeat(64),
            data_manifest_sha256: Some("a".repeat(64)),
            init_checkpoint: None,
        };
        let variants: Vec<Pins> = vec![
            Pins {
                commit: "b".repeat(40),
                ..base.clone()
            },
            Pins {
                dirty: true,
                diff_sha256: Some("d".repeat(64)),
                ..base.clone()
            },
            Pins {
                dirty: true,
                diff_sha256: Some("f".repeat(64)),
                ..base.clone()
            },
            Pins {
                image: None,
                ..base.clone()
            },
            Pins {
                image: Some(ImageRef::parse(&D.replace('0', "1")).unwrap()),
                ..base.clone()
            },
            Pins {
                experiment_sha256: "f".repeat(64),
                ..base.clone()
            },
            Pins {
                data_manifest_sha256: Some("b".repeat(64)),
                ..base.clone()
            },
            // Another registry, the same image: the same launch.
            Pins {
                image: Some(ImageRef::parse(D).unwrap()),
                ..base.clone()
            },
            base.clone(),
        ];
        for a in std::iter::once(&base).chain(&variants) {
            for b in &variants {
                assert_eq!(
                    a.same_launch(b),
                    a.launch_key() == b.launch_key(),
                    "{a:?}\n{b:?}"
                );
            }
        }
        let none = Pins {
            data_manifest_sha256: None,
            ..base.clone()
        };
        assert_eq!(none.launch_key(), None);
    }

    /// The record's keys stay those of the fields it held before `Pins`.
    #[test]
    fn pins_serialize_as_the_records_flat_keys() {
        let pins = Pins {
            commit: "c".repeat(40),
            dirty: true,
            diff_sha256: Some("d1".into()),
            image: Some(ImageRef::parse(&format!("r/sca@{D}")).unwrap()),
            experiment_sha256: "e1".into(),
            data_manifest_sha256: Some("a1".into()),
            init_checkpoint: Some("s3://b/model.tar.gz".into()),
        };
        let json = serde_json::to_value(&pins).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "commit": "c".repeat(40), "dirty": true, "diff_sha256": "d1",
                "image": format!("r/sca@{D}"), "image_digest": D,
                "experiment_sha256": "e1", "data_manifest_sha256": "a1",
                "init_checkpoint": "s3://b/model.tar.gz",
            })
        );
        assert_eq!(serde_json::from_value::<Pins>(json).unwrap(), pins);
        let bare = serde_json::json!({"commit": "c", "dirty": false, "experiment_sha256": "e"});
        let read: Pins = serde_json::from_value(bare.clone()).unwrap();
        assert_eq!((&read.image, &read.data_manifest_sha256), (&None, &None));
        assert_eq!(serde_json::to_value(&read).unwrap(), bare);
    }
}
