//! `cargo xtask`: parse the command line, run it (the library's [`xtask::run`]).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    xtask::run(xtask::flags::Xtask::parse())
}
