//! `xtask`: the workspace's workflow as a library. The binary (`main.rs`)
//! parses flags and calls [`run`]; each command lives in its own module; the
//! end-to-end tests (crate `sca-e2e`) use the same helpers (nested cargo,
//! the workspace root) instead of copies.
//!
//! Feature `full` (default) adds everything that needs the Docker engine or
//! SageMaker; without it (binary `xtask-local`, what `cargo xtask` builds
//! for a local run) those paths end in [`needs_full`]'s error.

/// `println!` that drops the line once stdout's reader is gone (`list |
/// head`), where `println!` would panic, and returns any other write error
/// with `?` (the caller returns an `anyhow::Result`).
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::experiment::contract::print_line(format_args!($($t)*))?
    };
}

/// `eprintln!` likewise for stderr: a launcher whose stderr went away
/// (`run 2>&1 | head`) still ends with its job's exit code.
macro_rules! errln {
    ($($t:tt)*) => {
        $crate::experiment::contract::eprint_line(format_args!($($t)*))
    };
}

pub mod aws;
#[cfg(feature = "full")]
pub mod bench;
#[cfg(feature = "full")]
pub mod cuda;
pub mod docs;
pub mod experiment;
pub mod flags;
pub mod fsx;
pub mod git;
#[cfg(feature = "full")]
pub mod image;
pub mod procfs;
#[cfg(feature = "full")]
pub mod services;
#[cfg(feature = "full")]
pub mod test;
// The workspace checks run once, in the default (full) build.
#[cfg(all(test, feature = "full"))]
mod tidy;
pub mod workspace;

use std::process::ExitCode;

use flags::{Command, Xtask};

/// Run one parsed command line; errors are reported here, as one chain.
pub fn run(flags: Xtask) -> ExitCode {
    let result = match flags.command {
        Command::Schema(cmd) => cmd.run(),
        Command::Experiment(cmd) => cmd.run(),
        #[cfg(feature = "full")]
        Command::Image(cmd) => cmd.run(),
        #[cfg(feature = "full")]
        Command::Services(cmd) => cmd.run(),
        #[cfg(feature = "full")]
        Command::Test(cmd) => cmd.run(),
        #[cfg(feature = "full")]
        Command::Bench(cmd) => cmd.run(),
        #[cfg(feature = "full")]
        Command::Cuda(cmd) => cmd.run(),
        #[cfg(not(feature = "full"))]
        Command::Image(_) => Err(needs_full("`image`")),
        #[cfg(not(feature = "full"))]
        Command::Services(_) => Err(needs_full("`services`")),
        #[cfg(not(feature = "full"))]
        Command::Test(_) => Err(needs_full("`test`")),
        #[cfg(not(feature = "full"))]
        Command::Bench(_) => Err(needs_full("`bench`")),
        #[cfg(not(feature = "full"))]
        Command::Cuda(_) => Err(needs_full("`cuda`")),
        Command::Docs(cmd) => cmd.run(),
    };
    xtask_entry::report(result)
}

/// The error of a launcher built without feature `full` (`xtask-local`)
/// asked for `what`, which needs the Docker engine or SageMaker.
#[cfg(not(feature = "full"))]
pub fn needs_full(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} needs the full launcher: this is `xtask-local`, built without the Docker and SageMaker clients for the local backend; run the same command as `cargo xtask ...`, which builds and runs the full one"
    )
}
