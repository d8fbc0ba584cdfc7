//! `cargo xtask experiment ...`: commands on experiment files.

mod run;
mod validate;

use std::process::ExitCode;

use anyhow::Result;

use crate::flags;

impl flags::Experiment {
    pub fn run(self) -> Result<ExitCode> {
        match self {
            flags::Experiment::Validate(cmd) => cmd.run(),
            flags::Experiment::Run(cmd) => cmd.run(),
        }
    }
}
