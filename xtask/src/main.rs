//! `cargo xtask`: the workspace's workflow. `main` parses flags and
//! dispatches; each command lives in its own module.

mod aws;
mod bench;
mod cuda;
mod docs;
mod experiment;
mod flags;
mod fsx;
mod git;
mod image;
mod schema;
mod services;
mod test;
#[cfg(test)]
mod tidy;
mod workspace;

use std::process::ExitCode;

use clap::Parser;
use flags::{Command, Xtask};

fn main() -> ExitCode {
    let flags = Xtask::parse();
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
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
