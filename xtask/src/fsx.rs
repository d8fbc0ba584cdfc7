//! File-system helpers: writes that never leave a half-written file or
//! directory behind.

use std::path::Path;

pub use xtask_entry::fsx::{write_atomic, write_atomic_mode};

/// Runs `f` holding an exclusive lock on the file `lock` (created if
/// missing): concurrent callers, in this process or others (parallel tests,
/// two terminals), run it one after the other. The lock goes with the
/// process, so a killed holder never leaves it taken.
pub fn locked<R>(lock: &Path, f: impl FnOnce() -> anyhow::Result<R>) -> anyhow::Result<R> {
    use anyhow::Context;
    if let Some(parent) = lock.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let file = std::fs::File::create(lock)
        .with_context(|| format!("creating the lock file {}", lock.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", lock.display()))?;
    let r = f();
    drop(file);
    r
}

/// Replace the directory `dir` with one that `fill` makes: filled in a
/// sibling temporary directory (removed if `fill` fails), then swapped with
/// the old one in one step (`renameat2(RENAME_EXCHANGE)`), so `dir` is never
/// half-made, nor missing, even for a process killed half way.
pub fn replace_dir(
    dir: &Path,
    fill: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    // (A bare relative name's parent is "": the working directory.)
    let parent = dir
        .parent()
        .context("the directory has no parent")
        .map(|p| match p.as_os_str().is_empty() {
            true => Path::new("."),
            false => p,
        })?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir
        .file_name()
        .map_or("dir".into(), |n| n.to_string_lossy());
    let work = tempfile::Builder::new()
        .prefix(&format!(".{name}-"))
        .tempdir_in(parent)
        .with_context(|| format!("creating a work directory in {}", parent.display()))?;
    fill(work.path())?;
    // On disk before it is swapped in, as `write_atomic`'s file is: after a
    // power loss the directory is the old one or the whole new one, never
    // new names with empty files (fill's writers do not sync).
    sync_tree(work.path()).with_context(|| format!("syncing {} to disk", work.path().display()))?;
    // Removed (with the old directory in it) only once the new one is in place.
    let mut aside_dir = None;
    if dir.exists() {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        match renameat2(
            AT_FDCWD,
            work.path(),
            AT_FDCWD,
            dir,
            RenameFlags::RENAME_EXCHANGE,
        ) {
            // The old directory is where the work directory was, and goes
            // with it.
            Ok(()) => return sync_dir(parent),
            // A file system without the exchange: the old one aside first,
            // so a kill in between leaves it whole beside the new one.
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
                let aside = tempfile::Builder::new()
                    .prefix(&format!(".{name}-old-"))
                    .tempdir_in(parent)
                    .with_context(|| format!("creating a directory in {}", parent.display()))?;
                std::fs::rename(dir, aside.path().join(&*name))
                    .with_context(|| format!("moving {} aside", dir.display()))?;
                aside_dir = Some(aside);
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("swapping {} with {}", work.path().display(), dir.display())
                })
            }
        }
    }
    if let Err(e) = std::fs::rename(work.path(), dir) {
        // The old one back where it was (the new one goes with `work`): the
        // directory is never left missing. Should that fail too, the old one
        // stays where it is, and the error says where.
        let mut kept = String::new();
        if let Some(aside) = aside_dir {
            let old = aside.path().join(&*name);
            if std::fs::rename(&old, dir).is_err() {
                kept = format!("; the old {} is kept at {}", dir.display(), old.display());
                let _ = aside.keep();
            }
        }
        return Err(e).with_context(|| {
            format!(
                "moving {} to {}{kept}",
                work.path().display(),
                dir.display()
            )
        });
    }
    let _ = work.keep();
    sync_dir(parent)
}

/// fsync every file and directory under `root` (symlinks are not followed).
fn sync_tree(root: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(root).map_err(std::io::Error::other)
}

/// fsync a directory, so the names in it are on disk; a file system that
/// cannot sync one is left as it is.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        r => r.with_context(|| format!("syncing {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_runs_callers_one_at_a_time() {
        let root = tempfile::tempdir().unwrap();
        let lock = root.path().join("x.lock");
        let inside = std::sync::atomic::AtomicUsize::new(0);
        let most = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    locked(&lock, || {
                        use std::sync::atomic::Ordering::SeqCst;
                        let now = inside.fetch_add(1, SeqCst) + 1;
                        most.fetch_max(now, SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        inside.fetch_sub(1, SeqCst);
                        Ok(())
                    })
                    .unwrap()
                });
            }
        });
        assert_eq!(most.into_inner(), 1, "two callers held the lock at once");
    }

    #[test]
    fn replace_dir_swaps_whole_or_not_at_all() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("kit");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("old"), "").unwrap();
        replace_dir(&dir, |d| Ok(std::fs::write(d.join("new"), "1")?)).unwrap();
        assert!(dir.join("new").is_file() && !dir.join("old").exists());
        let e = replace_dir(&dir, |d| {
            std::fs::write(d.join("half"), "")?;
            anyhow::bail!("fill failed")
        });
        assert!(e.is_err());
        assert!(dir.join("new").is_file() && !dir.join("half").exists());
        let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no work directory left behind");
    }
}
