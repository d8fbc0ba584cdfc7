//! `cargo xtask experiment ...`: validate experiment files, launch them on a
//! backend (local, docker, sagemaker) pinned to a commit, an image digest and
//! a data manifest, and manage the jobs afterwards.
//!
//! Library layout, each module importing only those after it (a tidy test
//! checks that no module imports one that imports it back): the commands
//! [`run`], [`sweep`] and [`lifecycle`] (status, logs, stop, list, fetch,
//! rerun) →
//! [`launch`] (run directory, dispatch, outcome; the one map from a
//! record's backend to its implementation) → the backends [`local`],
//! [`docker`], [`sagemaker`], each implementing [`backend::Backend`] →
//! [`contract`] (the `/opt/ml` tree, how a trainer's end is recorded) →
//! [`plan`] (what a launch runs, fresh or from a record) → [`pin`]
//! (validation, git, data manifest), [`record`] (run records), [`pins`]
//! (the typed pins), [`artifacts`] (what fetch unpacks). Reading runs
//! afterwards, above them all: [`diff`] (why two runs differ) and [`report`]
//! (one HTML page of every run), both drawing on [`curves`].

pub mod artifacts;
pub mod backend;
pub mod contract;
pub mod curves;
pub mod diff;
#[cfg(feature = "full")]
pub mod docker;
pub mod launch;
pub mod lifecycle;
pub mod local;
pub mod pin;
pub mod pins;
pub mod plan;
pub mod record;
pub mod report;
mod run;
#[cfg(feature = "full")]
pub mod sagemaker;
pub mod sweep;

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
            flags::Experiment::Sweep(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::Rerun(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::Status(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::Logs(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::Stop(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::List(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::Fetch(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::Diff(cmd) => rt()?.block_on(cmd.run()),
            flags::Experiment::Report(cmd) => rt()?.block_on(cmd.run()),
        }
    }
}
