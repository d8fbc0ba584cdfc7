//! Writes that never leave a half-written file behind.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Write `bytes` to `path` through a temporary file in the same directory and
/// a rename, so readers see the old contents or the new, never a mix; the
/// file and then its directory are synced, so after a power loss the
/// rename has not been lost either (a record reverting to an older state).
///
/// A file replaced keeps its permissions and a new one gets 0666 less the
/// umask, as a plain write would leave it (0644 under the usual 022, 0600
/// under a private 077): records, reports and the rest hold no secrets by
/// design, and the temporary file's own 0600 hid them from other users (a
/// file that does hold one: [`write_atomic_mode`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, bytes, 0o666 & !umask())
}

/// The process's umask, read without changing it (`umask(2)` sets it, for
/// every thread) and once (records are written often); the usual 022 where
/// /proc cannot say.
fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("Umask:"))?;
                u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
            })
            .unwrap_or(0o022)
    })
}

/// [`write_atomic`], a new file getting permissions `mode` (a file replaced
/// keeps its own).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mode = std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map_or(mode, |m| m.permissions().mode() & 0o777);
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        // File systems that cannot sync a directory.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// A new file is readable as a plain write's would be (not the
    /// temporary file's 0600); a replaced one keeps what it had.
    #[test]
    fn written_files_have_the_old_files_mode_else_a_plain_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs/job/record.json");
        write_atomic(&path, b"1").unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"1").unwrap();
        assert_eq!(mode(&path), mode(&plain));
        for kept in [0o600, 0o640, 0o664] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(kept)).unwrap();
            write_atomic(&path, b"2").unwrap();
            assert_eq!(mode(&path), kept, "{kept:o}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"2");
        let private = dir.path().join("htpasswd");
        write_atomic_mode(&private, b"x", 0o600).unwrap();
        assert_eq!(mode(&private), 0o600);
    }

    /// Under a private umask (077) a new file is 0600, as a plain write's:
    /// it was 0644 whatever the umask. (In a child process: the umask is
    /// the whole process's.)
    #[test]
    fn a_private_umask_gives_private_files() {
        const CHILD: &str = "SCA_FSX_UMASK_CHILD";
        if let Some(path) = std::env::var_os(CHILD) {
            // SAFETY: umask(2) cannot fail; this child runs this test alone.
            unsafe { libc::umask(0o077) };
            write_atomic(Path::new(&path), b"x").unwrap();
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "fsx::tests::a_private_umask_gives_private_files"])
            .env(CHILD, &path)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(mode(&path), 0o600);
    }
}
