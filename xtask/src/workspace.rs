//! Facts about the workspace (its root and `[workspace.metadata.sca]`
//! defaults, from xtask-entry) and the nested cargo the commands start.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::{Cmd, Shell};

pub use xtask_entry::workspace::{cargo_command, defaults, root};
use xtask_entry::workspace::{cargo_program, per_crate_cargo_vars};

/// The target directory cargo builds `root` into: `CARGO_TARGET_DIR` (taken
/// relative to `root`, where the nested cargo runs), else `root/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"))
}

/// [`cargo_command`] as an xshell command running in `sh`'s directory (see
/// [`shell`]); it is quiet, as callers print what they build in their own
/// words.
pub fn cargo(sh: &Shell) -> Cmd<'_> {
    let mut cmd = sh.cmd(cargo_program()).quiet();
    for name in per_crate_cargo_vars() {
        cmd = cmd.env_remove(name);
    }
    cmd
}

/// An xshell [`Shell`] whose commands run in `dir`.
pub fn shell(dir: &Path) -> Result<Shell> {
    let sh = Shell::new().context("reading the current directory")?;
    sh.change_dir(dir);
    Ok(sh)
}

/// The path of `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_cargo_drops_per_crate_variables_only() {
        // This test process is one cargo started, so it has them.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let sh = Shell::new().unwrap();
        let cmd = std::process::Command::from(cargo(&sh));
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert!(
            removed.iter().any(|k| k == "CARGO_MANIFEST_DIR"),
            "{removed:?}"
        );
        assert!(removed.iter().any(|k| k == "CARGO_PKG_NAME"), "{removed:?}");
    }
}
