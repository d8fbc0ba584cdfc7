//! Writes that never leave a half-written file behind.

use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` through a temporary file in the same directory and
/// a rename, so readers see the old contents or the new, never a mix; the
/// file and then its directory are synced, so after a power loss the
/// rename has not been lost either (a record reverting to an older state).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        // File systems that cannot sync a directory.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        r => r,
    }
}
