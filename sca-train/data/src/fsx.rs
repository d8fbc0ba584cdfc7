//! Atomic file writes for everything the trainer leaves behind (checkpoints,
//! model, metrics, plots, predictions, the split's tile lists): a reader, or
//! a run killed mid-write, sees the old file or the new one, never half of
//! one. Here rather than in `sca-train` so the data crate writes its files
//! the same way; `sca_train::fsx` re-exports it.
//!
//! The temporary file is flushed to disk (`fsync`) before the rename and the
//! directory after it, so a power loss or a host crash right after a
//! checkpoint cannot leave a renamed but empty or truncated file; on any
//! error the temporary file is removed, so a full disk is not filled further
//! by leftovers.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A failed file operation, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Write `bytes` to `path` through a temporary file in the same directory
/// (created if missing), `fsync` and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] with the contents written by `fill` into the temporary file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), FileError> {
    let err = |p: &Path| {
        let path = p.to_path_buf();
        move |source| FileError { path, source }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let written = File::create(&tmp).and_then(|mut f| {
        fill(&mut f)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        // Also when the create failed: a temporary file of an earlier,
        // killed run of this process id may be there.
        let _ = std::fs::remove_file(&tmp);
        return Err(err(path)(e));
    }
    sync_dir(dir).map_err(err(dir))
}

/// `fsync` a directory, making a rename in it durable. File systems that
/// cannot sync a directory (`EINVAL`) are left as they are. Public for the
/// renames of files already written whole (the trainer's model directory).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_names_failures() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/metrics.json");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");

        // A directory where the file should go: the error names the path.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("x")).unwrap();
        let e = write_atomic(&blocked, b"x").unwrap_err();
        assert_eq!(e.path, blocked);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "temporary file removed"
        );
    }

    /// A write that fails half way (as on a full disk) leaves the old file
    /// and no temporary file, and names the file.
    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("checkpoint.safetensors");
        write_atomic(&p, b"old").unwrap();
        let e = write_atomic_with(&p, |f| {
            f.write_all(b"half of the")?;
            Err(std::io::Error::other("no space left on device"))
        })
        .unwrap_err();
        assert_eq!(e.path, p);
        assert!(e.to_string().contains("no space left"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["checkpoint.safetensors"], "temporary file removed");
    }
}
