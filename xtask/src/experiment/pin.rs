//! Pinning a launch: the validated experiment, the exact bytes and their
//! sha256, the git commit (refusing a dirty tree unless asked), the job name,
//! and the data manifest (every tile object the experiment selects, with size
//! and ETag or content hash), so that a job can be rerun on the same code,
//! image and data, or say why it cannot.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use sca_data::S3Access;
use sha2::{Digest, Sha256};

use xtask_entry::validate::render;

/// A validated experiment pinned to a commit.
#[derive(Debug, Clone)]
pub struct Pinned {
    /// The file as given.
    pub file: PathBuf,
    /// Its exact bytes: what goes into the `config` channel.
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub experiment: sca_spec::Experiment,
    pub resolved: sca_spec::ResolvedJob,
    /// The directory relative dataset paths are resolved against.
    pub base_dir: PathBuf,
    pub commit: String,
    pub dirty: bool,
    pub diff_sha256: Option<String>,
    pub job_name: String,
}

/// Validate `file` (nothing is launched from an invalid one) and pin it to
/// the workspace's commit. A sweep file is refused: it stands for its
/// points, which `experiment sweep` launches.
pub fn pin(root: &Path, file: &Path, allow_dirty: bool) -> Result<Pinned> {
    check_file_name(file)?;
    let defaults = crate::workspace::defaults()?;
    // Read once: the bytes validated are the bytes hashed and launched.
    let (report, bytes) = match read_experiment(file) {
        Some(bytes) => (
            sca_spec::validate::validate_bytes(&file.display().to_string(), &bytes, &defaults),
            bytes,
        ),
        // Missing, a directory, too large, unreadable: validation says which.
        None => (sca_spec::validate_file(file, &defaults), Vec::new()),
    };
    if bytes.is_empty() && report.is_valid() {
        bail!("{} could not be read: nothing was launched", file.display());
    }
    // Resolved once the file is known to be valid: an invalid one gets its
    // diagnostics, not this error.
    let base_dir = match report.is_valid() {
        true => std::fs::canonicalize(file)
            .with_context(|| format!("resolving {}", file.display()))?
            .parent()
            .context("a file has a parent directory")?
            .to_path_buf(),
        false => PathBuf::new(),
    };
    if let Some(sweep) = &report.sweep {
        bail!(
            "{} has a [sweep] table: it stands for {} child experiment(s), not one job; launch them with `cargo xtask experiment sweep {}` (or remove [sweep] to run the file as it is)",
            file.display(),
            sweep.points.len(),
            file.display()
        );
    }
    pinned(root, file, bytes, report, base_dir, allow_dirty)
}

/// Refuse an experiment file not named `<name>.toml`: the trainer reads the
/// one `*.toml` in its config channel (beside `manifest.json` and the
/// resolved file, which another name could overwrite), so any other name
/// would launch a job that finds no experiment.
fn check_file_name(file: &Path) -> Result<()> {
    let named = file.extension().is_some_and(|e| e == "toml")
        && file.file_stem().is_some_and(|s| !s.is_empty());
    if !named {
        // (`.toml` alone is a hidden file's whole name, with no extension.)
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy())
            .filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case(".toml"))
            .unwrap_or("experiment".into());
        bail!(
            "{}: an experiment file's name ends in `.toml` (the trainer reads the one *.toml in its config channel): rename it, e.g. to {stem}.toml; nothing was launched",
            file.display(),
        );
    }
    Ok(())
}

/// Pin a sweep's child: its `bytes` (the sweep file with the point applied),
/// saved as `file`, with relative dataset paths resolved against `base_dir`
/// (the sweep file's directory).
pub fn pin_child(
    root: &Path,
    file: &Path,
    bytes: Vec<u8>,
    base_dir: PathBuf,
    allow_dirty: bool,
) -> Result<Pinned> {
    let defaults = crate::workspace::defaults()?;
    let report = sca_spec::validate::validate_bytes(&file.display().to_string(), &bytes, &defaults);
    pinned(root, file, bytes, report, base_dir, allow_dirty)
}

fn pinned(
    root: &Path,
    file: &Path,
    bytes: Vec<u8>,
    report: sca_spec::validate::Report,
    base_dir: PathBuf,
    allow_dirty: bool,
) -> Result<Pinned> {
    if !report.is_valid() {
        for d in &report.diagnostics {
            eprintln!("{}", render(d, report.source.as_deref()));
        }
        bail!(
            "{} is invalid ({} problem(s) above): nothing was launched",
            file.display(),
            report.diagnostics.len()
        );
    }
    let experiment = report
        .experiment
        .context("a valid report carries the experiment")?;
    let resolved = report.job.context("a valid report carries the job")?;
    let sha256 = sca_data::manifest::sha256_hex(&bytes);

    let rev = crate::git::revision(root)?.context(
        "the workspace is not a git repository with a commit: runs are pinned to a commit; `git init && git commit` first",
    )?;
    if rev.dirty && !allow_dirty {
        bail!(
            "the working tree has uncommitted changes (see `git status`): commit them so the run is pinned to a commit, or pass --allow-dirty to record a hash of the diff"
        );
    }
    let diff_sha256 = rev.dirty.then(|| diff_hash(root)).transpose()?;
    let job_name = sca_spec::job_name(&experiment.experiment.name, &rev.commit, SystemTime::now());
    Ok(Pinned {
        file: file.to_path_buf(),
        bytes,
        sha256,
        experiment,
        resolved,
        base_dir,
        commit: rev.commit,
        dirty: rev.dirty,
        diff_sha256,
        job_name,
    })
}

/// The bytes of the experiment file `file`, read once, if it is a regular
/// file within validation's size limit (`None`: `validate_file` says why not).
pub fn read_experiment(file: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    if !std::fs::metadata(file).ok()?.is_file() {
        return None;
    }
    let limit = sca_spec::validate::MAX_FILE_BYTES;
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .ok()?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() as u64 <= limit).then_some(bytes)
}

/// The data manifest of `dataset`: lists (and, for local files, hashes)
/// every selected tile, S3 objects with `access`. Runs on a blocking thread:
/// the S3 listing owns a runtime of its own.
pub async fn manifest(
    dataset: &sca_spec::Dataset,
    base_dir: &Path,
    access: S3Access,
) -> Result<sca_spec::DataManifest> {
    let dataset = dataset.clone();
    let base = base_dir.to_path_buf();
    let start = std::time::Instant::now();
    let manifest =
        tokio::task::spawn_blocking(move || sca_data::manifest::build(&dataset, &base, &access))
            .await
            .context("the data listing thread failed")?
            .context("listing the dataset for the data manifest")?;
    eprintln!(
        "pinned the data: {} objects, manifest sha256 {} ({:.2} s)",
        manifest.objects.len(),
        &manifest.sha256()[..12],
        start.elapsed().as_secs_f64()
    );
    Ok(manifest)
}

/// The warm-start model at `location` (an absolute path or an `s3://` URI,
/// as `launch::resolve_init` makes it) pinned for the data manifest: size and
/// sha256, or size and ETag (with `access`).
pub async fn pin_init(location: &str, access: S3Access) -> Result<sca_spec::ManifestObject> {
    let owned = location.to_string();
    tokio::task::spawn_blocking(move || {
        sca_data::manifest::pin_object(&owned, Path::new("/"), &access)
    })
    .await
    .context("the pinning thread failed")?
    .with_context(|| format!("pinning the warm-start model {location}"))
}

/// sha256 of the uncommitted changes ([`crate::git::uncommitted`]): `git
/// diff HEAD --binary`, and each untracked file's path and contents.
pub fn diff_hash(root: &Path) -> Result<String> {
    let mut h = Sha256::new();
    for part in crate::git::uncommitted(root)? {
        h.update(&part);
    }
    Ok(hex::encode(h.finalize()))
}

/// Whether the work tree at `root` holds exactly the pinned code: HEAD is
/// `commit`, and the tree is clean, or dirty with the diff hashed as
/// `diff_sha256`.
pub fn tree_holds(
    root: &Path,
    commit: &str,
    dirty: bool,
    diff_sha256: Option<&str>,
) -> Result<bool> {
    let rev = crate::git::revision(root)?.context("the workspace is not a git repository")?;
    Ok(rev.commit == commit
        && rev.dirty == dirty
        && (!dirty || Some(diff_hash(root)?.as_str()) == diff_sha256))
}

/// Refuses a launch whose code was built after the tree stopped holding
/// the pinned code (an edit, checkout or pull while `built` ran): the
/// record would name one commit and the job run another.
pub fn ensure_tree_unchanged(
    root: &Path,
    commit: &str,
    dirty: bool,
    diff_sha256: Option<&str>,
    built: &str,
) -> Result<()> {
    if tree_holds(root, commit, dirty, diff_sha256)? {
        return Ok(());
    }
    let pinned = match diff_sha256 {
        Some(diff) => format!(
            "{} with uncommitted changes (diff sha256 {})",
            &commit[..12.min(commit.len())],
            &diff[..12.min(diff.len())]
        ),
        None => format!("{}, clean", &commit[..12.min(commit.len())]),
    };
    bail!(
        "the working tree changed while {built} (the job was pinned to {pinned}; `git status` and `git log -1` show what it holds now): nothing was launched, as its record would name code it did not run. Launch again once the tree holds the code you mean to run"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name the trainer would not take for the experiment, or that is one
    /// of the channel's other files, is refused before anything is read.
    #[test]
    fn an_experiment_file_is_named_dot_toml() {
        let dir = tempfile::tempdir().unwrap();
        for (name, fix) in [
            ("exp.txt", "exp.toml"),
            ("exp.TOML", "exp.toml"),
            ("manifest.json", "manifest.toml"),
            ("experiments/exp", "exp.toml"),
            (".toml", "experiment.toml"),
        ] {
            let e = format!("{:#}", pin(dir.path(), Path::new(name), true).unwrap_err());
            assert!(
                e.contains("ends in `.toml`") && e.contains(&format!("to {fix}")),
                "{name}: {e}"
            );
        }
        assert!(check_file_name(Path::new("experiments/exp.toml")).is_ok());
    }
}
