//! The git revision an image is built from: commit, commit time, dirty state
//! and source URL, which become the image's tag and OCI labels.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The revision of a working tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// Full commit id of HEAD.
    pub commit: String,
    /// Commit time of HEAD, RFC 3339 in UTC (`2024-05-01T12:00:00Z`).
    pub commit_time: String,
    /// Whether tracked or untracked (not ignored) files differ from HEAD.
    pub dirty: bool,
    /// `origin`'s URL without credentials, if there is one.
    pub source: Option<String>,
}

impl Revision {
    /// The 12-character commit id used in tags.
    pub fn short(&self) -> &str {
        &self.commit[..12.min(self.commit.len())]
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<Option<String>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("TZ", "UTC")
        .output()
        .context("running git: is it installed?")?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// The revision of the git work tree containing `dir`; `None` when `dir` is not
/// in a git repository or the repository has no commit yet.
pub fn revision(dir: &Path) -> Result<Option<Revision>> {
    let Some(commit) = git(dir, &["rev-parse", "--verify", "--quiet", "HEAD"])? else {
        return Ok(None);
    };
    if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("unexpected commit id {commit:?} from git rev-parse HEAD");
    }
    let commit_time = git(
        dir,
        &[
            "show",
            "-s",
            "--format=%cd",
            "--date=format-local:%Y-%m-%dT%H:%M:%SZ",
            "HEAD",
        ],
    )?
    .context("reading the commit time of HEAD")?;
    let status = git(
        dir,
        &[
            "status",
            "--porcelain",
            "--untracked-files=normal",
            "--",
            ".",
        ],
    )?
    .context("running git status")?;
    let source = git(dir, &["remote", "get-url", "origin"])?
        .filter(|s| !s.is_empty())
        .map(|s| strip_credentials(&s));
    Ok(Some(Revision {
        commit,
        commit_time,
        dirty: !status.is_empty(),
        source,
    }))
}

/// `https://user:token@host/x` → `https://host/x`.
pub fn strip_credentials(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if let Some((_, host)) = authority.rsplit_once('@') {
            return if path.is_empty() {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}/{path}")
            };
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_stripped_from_urls() {
        assert_eq!(
            strip_credentials("https://x-access-token:abc@github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(
            strip_credentials("https://github.com/o/r"),
            "https://github.com/o/r"
        );
        assert_eq!(
            strip_credentials("git@github.com:o/r.git"),
            "git@github.com:o/r.git"
        );
    }

    #[test]
    fn revision_of_a_fresh_repository() {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let ok = Command::new("git")
                .arg("-C")
                .arg(dir.path())
                .args(args)
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok, "git {args:?}");
        };
        run(&["init", "-q"]);
        assert_eq!(revision(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join("a"), "a").unwrap();
        run(&["add", "a"]);
        run(&[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "-m",
            "one",
            "--date=2001-02-03T04:05:06Z",
        ]);
        let rev = revision(dir.path()).unwrap().unwrap();
        assert_eq!(rev.commit.len(), 40);
        assert!(!rev.dirty);
        assert_eq!(rev.source, None);
        std::fs::write(dir.path().join("b"), "b").unwrap();
        assert!(revision(dir.path()).unwrap().unwrap().dirty);
    }
}
