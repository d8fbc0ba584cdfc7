//! `cargo xtask test`: the README's test command. Starts the services the
//! tests need, runs every test of the workspace against them, and stops what
//! it started, whatever the outcome.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::{flags, services, workspace};

impl flags::Test {
    pub fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let env = services::up(&root)?;
        let status = workspace::cargo()
            .current_dir(&root)
            // Every test target runs even after one fails: a CI report
            // names all the failures, not the first target's.
            .args(["test", "--workspace", "--locked", "--no-fail-fast"])
            .args(&self.cargo_args)
            .envs(env.vars.iter().map(|(k, v)| (k, v)))
            .status()
            .context("running cargo test");
        services::down(&root)?;
        Ok(if status?.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}
