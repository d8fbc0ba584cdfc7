//! Facts about the workspace: its root, the `[workspace.metadata.sca]`
//! defaults, and how to start a nested cargo.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use sca_spec::WorkspaceDefaults;

/// The workspace root (where the root Cargo.toml is).
pub fn root() -> PathBuf {
    // This crate is always at xtask/entry/ below the root.
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .nth(2)
        .expect("xtask/entry lives inside the workspace")
        .to_path_buf()
}

/// `[workspace.metadata.sca]` from the root Cargo.toml (a table cargo
/// itself ignores, so reading the file is all `cargo metadata` would do).
pub fn defaults() -> Result<WorkspaceDefaults> {
    let path = root().join("Cargo.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let manifest: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    match manifest
        .get("workspace")
        .and_then(|w| w.get("metadata"))
        .and_then(|m| m.get("sca"))
    {
        None => Ok(WorkspaceDefaults::default()),
        Some(sca) => sca.clone().try_into().with_context(|| {
            format!(
                "invalid [workspace.metadata.sca] in {}: keys are region, ecr_repository, image_name, config_bucket, role_arn, output (all strings)",
                path.display()
            )
        }),
    }
}

/// A `cargo` command (the cargo that runs us, `$CARGO`) without the per-crate
/// variables cargo sets for `cargo run` and `cargo test` processes
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...). Build scripts such as ring's
/// declare `rerun-if-env-changed` on those names, so a nested build that
/// inherited them would rebuild the TLS stack and everything above it, and
/// the next build from a shell would rebuild it back.
pub fn cargo_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(cargo_program());
    for name in per_crate_cargo_vars() {
        cmd.env_remove(name);
    }
    cmd
}

/// The cargo that runs us, `$CARGO`, else the one on `PATH`.
pub fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The per-crate variables set in this process's environment.
pub fn per_crate_cargo_vars() -> Vec<OsString> {
    std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| name.to_str().is_some_and(is_per_crate_cargo_var))
        .collect()
}

/// Variables cargo sets for a crate's own processes, not for cargo itself.
pub fn is_per_crate_cargo_var(name: &str) -> bool {
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
    fn the_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"), "{}", root().display());
    }

    #[test]
    fn the_workspace_defaults_are_read() {
        let d = defaults().unwrap();
        assert!(d.region.is_some() && d.config_bucket.is_some(), "{d:?}");
    }

    #[test]
    fn only_per_crate_variables_are_scrubbed() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_BIN_EXE_xtask",
        ] {
            assert!(is_per_crate_cargo_var(name), "{name}");
        }
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
