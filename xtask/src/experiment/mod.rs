//! `cargo xtask experiment ...`: validate experiment files, launch them on a
//! backend (local, docker, sagemaker) pinned to a commit, an image digest and
//! a data manifest, and manage the jobs afterwards.
//!
//! Library layout: [`pin`] (validation, git, data manifest) → [`launch`]
//! (the plan and its execution) → a backend ([`local`], [`docker`],
//! [`sagemaker`]) → [`record`] (the run record); [`lifecycle`] holds status,
//! logs, stop, list, fetch and rerun, and [`artifacts`] what fetch unpacks.
//! Reading runs afterwards: [`diff`] (why two runs differ) and [`report`]
//! (one HTML page of every run), both drawing on [`curves`].

pub mod artifacts;
pub mod curves;
pub mod diff;
pub mod docker;
pub mod launch;
pub mod lifecycle;
pub mod local;
pub mod pin;
pub mod record;
pub mod report;
mod run;
pub mod sagemaker;
mod validate;

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::flags;

impl flags::Experiment {
    pub fn run(self) -> Result<ExitCode> {
        let rt = || {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")
        };
        match self {
            flags::Experiment::Validate(cmd) => cmd.run(),
            flags::Experiment::Run(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::Rerun(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::Status(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::Logs(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::Stop(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::List(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::Fetch(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::Diff(cmd) => cmd.run(),
            flags::Experiment::Report(cmd) => rt()?.block_on(cmd.run()),
        }
    }
}
