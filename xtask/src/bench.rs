//! `cargo xtask bench ...`: benchmarks that record their figures in BENCHMARKS.md.

use std::process::ExitCode;

use anyhow::Result;

use crate::flags;

impl flags::Bench {
    pub fn run(self) -> Result<ExitCode> {
        match self {
            flags::Bench::Validate(cmd) => cmd.run(),
        }
    }
}

impl flags::BenchValidate {
    pub fn run(self) -> Result<ExitCode> {
        anyhow::bail!("not written yet")
    }
}
