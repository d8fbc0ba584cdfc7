//! `xtask`: the workspace's workflow as a library. The binary (`main.rs`)
//! parses flags and calls [`run`]; each command lives in its own module; the
//! end-to-end tests (crate `sca-e2e`) use the same helpers (nested cargo,
//! the workspace root) instead of copies.

pub mod aws;
pub mod bench;
pub mod cuda;
pub mod docs;
pub mod experiment;
pub mod flags;
pub mod fsx;
pub mod git;
pub mod image;
pub mod services;
pub mod test;
#[cfg(test)]
mod tidy;
pub mod workspace;

use std::process::ExitCode;

use flags::{Command, Xtask};

/// Run one parsed command line; errors are reported here, as one chain.
pub fn run(flags: Xtask) -> ExitCode {
    let result = match flags.command {
        Command::Schema(cmd) => cmd.run(),
        Command::Experiment(cmd) => cmd.run(),
        Command::Image(cmd) => cmd.run(),
        Command::Services(cmd) => cmd.run(),
        Command::Test(cmd) => cmd.run(),
        Command::Bench(cmd) => cmd.run(),
        Command::Cuda(cmd) => cmd.run(),
        Command::Docs(cmd) => cmd.run(),
    };
    xtask_entry::report(result)
}
