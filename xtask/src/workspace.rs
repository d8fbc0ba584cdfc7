//! Facts about the workspace: its root and the `[workspace.metadata.sca]` defaults.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sca_spec::WorkspaceDefaults;
use xshell::{Cmd, Shell};

/// The workspace root (where the root Cargo.toml is).
pub fn root() -> PathBuf {
    // xtask/ is always one level below the root.
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The target directory cargo builds `root` into: `CARGO_TARGET_DIR` (taken
/// relative to `root`, where the nested cargo runs), else `root/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"))
}

/// `[workspace.metadata.sca]` from the root Cargo.toml, read with `cargo metadata`.
pub fn defaults() -> Result<WorkspaceDefaults> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(root().join("Cargo.toml"))
        .no_deps()
        .exec()
        .context("running `cargo metadata` on the workspace")?;
    match metadata.workspace_metadata.get("sca") {
        None => Ok(WorkspaceDefaults::default()),
        Some(sca) => serde_json::from_value(sca.clone())
            .context("invalid [workspace.metadata.sca] in Cargo.toml: keys are region, ecr_repository, image_name, config_bucket, role_arn, output (all strings)"),
    }
}

/// A `cargo` command (the cargo that runs us, `$CARGO`) without the per-crate
/// variables cargo sets for `cargo run` and `cargo test` processes
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...). Build scripts such as ring's
/// declare `rerun-if-env-changed` on those names, so a nested build that
/// inherited them would rebuild the TLS stack and everything above it, and
/// the next build from a shell would rebuild it back.
///
/// The command runs in `sh`'s directory (see [`shell`]); it is quiet, as
/// callers print what they build in their own words.
pub fn cargo(sh: &Shell) -> Cmd<'_> {
    let mut cmd = sh.cmd(cargo_program()).quiet();
    for name in per_crate_cargo_vars() {
        cmd = cmd.env_remove(name);
    }
    cmd
}

/// [`cargo`] as a `std::process::Command`, for callers that stream its
/// output themselves (the end-to-end tests' builds).
pub fn cargo_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(cargo_program());
    for name in per_crate_cargo_vars() {
        cmd.env_remove(name);
    }
    cmd
}

/// The cargo that runs us, `$CARGO`, else the one on `PATH`.
fn cargo_program() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The per-crate variables set in this process's environment.
fn per_crate_cargo_vars() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| name.to_str().is_some_and(is_per_crate_cargo_var))
        .collect()
}

/// An xshell [`Shell`] whose commands run in `dir`.
pub fn shell(dir: &Path) -> Result<Shell> {
    let sh = Shell::new().context("reading the current directory")?;
    sh.change_dir(dir);
    Ok(sh)
}

/// Variables cargo sets for a crate's own processes, not for cargo itself.
fn is_per_crate_cargo_var(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
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
        assert!(is_per_crate_cargo_var("CARGO_BIN_EXE_xtask"));
        for kept in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_TERM_COLOR",
            "CARGO",
        ] {
            assert!(!is_per_crate_cargo_var(kept), "{kept}");
        }
    }
}
