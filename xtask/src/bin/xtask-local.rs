//! `xtask-local`: the launcher of the local backend. The same command line
//! as `xtask`; built without the `full` feature (no Docker or SageMaker
//! client), it is what `cargo xtask experiment run|sweep` builds for a local
//! run, and it says what to run instead when asked for more.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    xtask::run(xtask::flags::Xtask::parse())
}
