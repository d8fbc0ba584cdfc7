//! Which commit an image named by digest holds (`experiment run --image`),
//! so that a launch never records a commit its image does not hold: the
//! engine's `org.opencontainers.image.revision` label when the engine has
//! the image, else the tags the ECR repository gives its digest (`image
//! push` tags an image `<commit12>[-dirty-…][-prebuilt-…][-args-…][-<arch>]`,
//! [`super::build::derive_tag`]).

use aws_sdk_ecr::types::ImageIdentifier;

use super::{engine, push};
use crate::aws;

/// What an image was found to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holds {
    /// Built from `commit` (the full id from the label, or the 12-digit
    /// prefix from a tag), with uncommitted changes when `dirty`; `from`
    /// says where this was read.
    Commit {
        commit: String,
        dirty: bool,
        from: String,
        /// The CPU architecture it was built for (`amd64`, `arm64`), where
        /// that can be read: the image's configuration, or a tag's suffix.
        arch: Option<String>,
    },
    /// Nothing says (why).
    Unknown(String),
}

impl Holds {
    /// Whether this is commit `commit` (a full id), as committed: at least
    /// 12 digits of it (an empty or short label is a prefix of anything).
    pub fn is_clean(&self, commit: &str) -> bool {
        matches!(self, Holds::Commit { commit: c, dirty: false, .. }
            if is_commit_id(c) && commit.starts_with(c.as_str()))
    }
}

/// 12 to 64 lower-case hex digits: a commit id, or the prefix a tag keeps.
fn is_commit_id(s: &str) -> bool {
    (12..=64).contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What the image `repository@digest` holds: asked of the engine first,
/// then of ECR when the repository is there.
pub async fn commit_of(repository: &str, digest: &str, want: &str, aws: &aws::Session) -> Holds {
    let reference = format!("{repository}@{digest}");
    let engine = match from_engine(&reference).await {
        Ok(holds @ Holds::Commit { .. }) => return holds,
        Ok(Holds::Unknown(why)) | Err(why) => why,
    };
    let Some((host, name)) = repository.split_once('/') else {
        return Holds::Unknown(format!("{engine}; `{repository}` names no registry host"));
    };
    if !push::is_ecr_host(host) {
        return Holds::Unknown(format!("{engine}; {host} is not ECR, whose tags would say"));
    }
    match from_ecr(host, name, digest, want, aws).await {
        Ok(holds) => holds,
        Err(why) => Holds::Unknown(format!("{engine}; {why}")),
    }
}

async fn from_engine(reference: &str) -> Result<Holds, String> {
    let docker = engine::connect().await.map_err(|_| {
        format!(
            "no Docker engine at {} to inspect it",
            engine::engine_host()
        )
    })?;
    let image = match docker.inspect_image(reference).await {
        Ok(image) => image,
        Err(e) if engine::is_not_found(&e) => {
            return Err("the Docker engine does not have it".into())
        }
        Err(e) => return Err(format!("inspecting it in the Docker engine: {e}")),
    };
    let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
    let Some(commit) = labels.get("org.opencontainers.image.revision") else {
        return Ok(Holds::Unknown(
            "its configuration has no org.opencontainers.image.revision label".into(),
        ));
    };
    // An unset `ARG GIT_SHA` in someone's CI labels an image "".
    if !is_commit_id(commit) {
        return Ok(Holds::Unknown(format!(
            "its org.opencontainers.image.revision label {commit:?} is no commit id"
        )));
    }
    // Images built before the label: their derived tag says it.
    let dirty = match labels.get(super::build::DIRTY_LABEL) {
        Some(dirty) => dirty != "false",
        None => labels
            .get("org.opencontainers.image.version")
            .is_some_and(|tag| tag.contains("-dirty-")),
    };
    Ok(Holds::Commit {
        commit: commit.clone(),
        dirty,
        from: "its org.opencontainers.image.revision label".into(),
        arch: image.architecture.filter(|a| !a.is_empty()),
    })
}

async fn from_ecr(
    host: &str,
    name: &str,
    digest: &str,
    want: &str,
    aws: &aws::Session,
) -> Result<Holds, String> {
    // ACCOUNT.dkr.ecr.REGION.amazonaws.com
    let mut parts = host.split('.');
    let (account, region) = (parts.next(), parts.nth(2));
    let config = aws
        .config(region)
        .await
        .map_err(|e| format!("no AWS access to ask ECR: {e:#}"))?;
    let ecr = aws_sdk_ecr::Client::new(&config);
    let out = ecr
        .describe_images()
        .repository_name(name)
        .set_registry_id(account.map(str::to_string))
        .image_ids(ImageIdentifier::builder().image_digest(digest).build())
        .send()
        .await
        .map_err(|e| format!("ECR DescribeImages: {}", aws::error_chain(&e)))?;
    let tags: Vec<String> = out
        .image_details()
        .iter()
        .flat_map(|d| d.image_tags().iter().cloned())
        .collect();
    Ok(from_tags(
        &tags,
        &format!("its tags in {host}/{name}"),
        want,
    ))
}

/// The commit the tags `image push` derives name: commit `want`'s clean tag
/// if there is one (CI may add tags of its own, a 12-digit date among them),
/// else the first that names a commit.
fn from_tags(tags: &[String], from: &str, want: &str) -> Holds {
    let commit_tag = |t: &&String| {
        let (head, rest) = t.split_at(t.len().min(12));
        is_commit_id(head) && (rest.is_empty() || rest.starts_with('-'))
    };
    // `derive_tag` names a build's architecture last, unless amd64; a tag
    // without it (or from before it) does not say.
    let arch = |tag: &str| {
        let last = tag.rsplit('-').next().unwrap_or_default();
        (last != "amd64" && super::engine::ARCHITECTURES.contains(&last)).then(|| last.to_string())
    };
    let holds = |tag: &String| Holds::Commit {
        commit: tag[..12].to_string(),
        dirty: tag.contains("-dirty-"),
        from: format!("{from} ({tag})"),
        arch: arch(tag),
    };
    let named: Vec<Holds> = tags.iter().filter(commit_tag).map(holds).collect();
    if let Some(clean) = named.iter().find(|h| h.is_clean(want)) {
        return clean.clone();
    }
    match named.into_iter().next() {
        Some(holds) => holds,
        None if tags.is_empty() => Holds::Unknown(format!("{from}: it has none")),
        None => Holds::Unknown(format!("{from}: none names a commit ({})", tags.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_the_commit_they_were_pushed_from() {
        let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let full = "0123456789abcdef0123456789abcdef01234567";
        let other = "1123456789abcdef0123456789abcdef01234567";
        for clean in [
            "0123456789ab",
            "0123456789ab-args-ffffffffffff",
            "0123456789ab-prebuilt-aaaaaaaaaaaa",
        ] {
            let holds = from_tags(&tags(&["latest", clean]), "x", full);
            assert!(holds.is_clean(full), "{holds:?}");
            assert!(!holds.is_clean(other), "{holds:?}");
        }
        // A 12-digit tag of CI's own beside the commit's: the commit's.
        let dated = from_tags(&tags(&["202612070555", "0123456789ab"]), "x", full);
        assert!(dated.is_clean(full), "{dated:?}");
        let elsewhere = from_tags(&tags(&["202612070555", "0123456789ab"]), "x", other);
        assert!(matches!(elsewhere, Holds::Commit { ref commit, .. } if commit == "202612070555"));
        // The architecture a tag names.
        for (tag, want) in [
            ("0123456789ab", None),
            ("0123456789ab-prebuilt-aaaaaaaaaaaa-arm64", Some("arm64")),
        ] {
            let holds = from_tags(&tags(&[tag]), "x", full);
            assert!(
                matches!(&holds, Holds::Commit { arch, .. } if arch.as_deref() == want),
                "{holds:?}"
            );
        }
        let dirty = from_tags(&tags(&["0123456789ab-dirty-0123456789ab"]), "x", full);
        assert!(matches!(dirty, Holds::Commit { dirty: true, .. }) && !dirty.is_clean(full));
        // A label of no commit is no commit, not a prefix of every one.
        for label in ["", "0", "0123456789a", "0123456789AB"] {
            let holds = Holds::Commit {
                commit: label.into(),
                dirty: false,
                from: "x".into(),
                arch: None,
            };
            assert!(!holds.is_clean(full), "{label:?}");
        }
        for none in [
            &[][..],
            &["latest", "v1.2", "0123456789AB", "0123456789abc"][..],
        ] {
            assert!(
                matches!(from_tags(&tags(none), "x", full), Holds::Unknown(_)),
                "{none:?}"
            );
        }
    }
}
