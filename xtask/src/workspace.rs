//! Facts about the workspace: its root and the `[workspace.metadata.sca]` defaults.

use std::path::PathBuf;

use anyhow::{Context, Result};
use sca_spec::WorkspaceDefaults;

/// The workspace root (where the root Cargo.toml is).
pub fn root() -> PathBuf {
    // xtask/ is always one level below the root.
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
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
