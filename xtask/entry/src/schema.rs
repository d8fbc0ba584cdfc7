//! `cargo xtask schema [--check]`: keep schema/experiment.schema.json in step with the Rust types.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::{flags, workspace};

impl flags::Schema {
    pub fn run(self) -> Result<ExitCode> {
        let path = workspace::root().join(sca_spec::SCHEMA_PATH);
        let want = sca_spec::schema_text();
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have == want {
            println!("{} is up to date", sca_spec::SCHEMA_PATH);
            return Ok(ExitCode::SUCCESS);
        }
        if self.check {
            eprintln!(
                "error: {} is stale: run `cargo xtask schema` and commit the result",
                sca_spec::SCHEMA_PATH
            );
            return Ok(ExitCode::FAILURE);
        }
        crate::fsx::write_atomic(&path, want.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", sca_spec::SCHEMA_PATH);
        Ok(ExitCode::SUCCESS)
    }
}
