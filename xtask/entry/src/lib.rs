//! `cargo xtask`'s entry point. The commands that need only the experiment
//! format (`experiment validate`, `schema`) run here, in a binary whose
//! dependency tree is sca-spec, clap and miette; every other command is
//! handed, unchanged, to the full `xtask` binary (AWS SDK, Docker client,
//! tokio) through `cargo run --package xtask`, which builds it on first use.
//! So a fresh clone checks an experiment file in minutes, not after the
//! whole launcher has compiled.
//!
//! The full xtask reuses this crate's flags and commands (one definition of
//! each), so `experiment validate` behaves the same whichever binary runs it.

pub mod flags;
pub mod fsx;
pub mod schema;
pub mod validate;
pub mod workspace;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The commands the entry point runs itself.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
pub struct Quick {
    #[command(subcommand)]
    command: QuickCommand,
}

#[derive(Debug, Subcommand)]
enum QuickCommand {
    Schema(flags::Schema),
    #[command(subcommand)]
    Experiment(QuickExperiment),
}

#[derive(Debug, Subcommand)]
enum QuickExperiment {
    Validate(flags::Validate),
}

impl Quick {
    /// The parsed command line when its command is one of ours
    /// (`args[0]` is the program), `None` when it belongs to the full xtask.
    /// A malformed line of ours exits with clap's usage message.
    pub fn claims(args: &[OsString]) -> Option<Quick> {
        let words: Vec<Option<&str>> = args.iter().skip(1).take(2).map(|a| a.to_str()).collect();
        let ours = matches!(
            words.as_slice(),
            [Some("schema"), ..] | [Some("experiment"), Some("validate")]
        );
        ours.then(|| Quick::parse_from(args))
    }
}

/// Run one of our commands; errors are reported here, as one chain.
pub fn run(quick: Quick) -> ExitCode {
    let result = match quick.command {
        QuickCommand::Schema(cmd) => cmd.run(),
        QuickCommand::Experiment(QuickExperiment::Validate(cmd)) => cmd.run(),
    };
    report(result)
}

/// The exit code of a command's result, its error printed as one chain.
pub fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Replace this process with `cargo run --package xtask -- ARGS`: the full
/// binary, built if stale, gets the terminal, the signals (Ctrl-C reaches a
/// sweep or a followed job directly) and the exit code, as if it had been
/// started by the alias itself. The arguments pass as argv, never through a
/// shell.
pub fn hand_over(args: &[OsString]) -> ExitCode {
    let manifest = workspace::root().join("Cargo.toml");
    let mut cargo = workspace::cargo_command();
    cargo
        .args(["run", "--package", "xtask", "--manifest-path"])
        .arg(&manifest)
        .arg("--")
        .args(args);
    #[cfg(unix)]
    let err = std::os::unix::process::CommandExt::exec(&mut cargo);
    #[cfg(not(unix))]
    let err = match cargo.status() {
        Ok(status) => return ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => e,
    };
    eprintln!(
        "error: starting `cargo run --package xtask` ({}): {err}",
        manifest.display()
    );
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(line: &str) -> Option<Quick> {
        let args: Vec<OsString> = std::iter::once("xtask-entry")
            .chain(line.split_whitespace())
            .map(OsString::from)
            .collect();
        Quick::claims(&args)
    }

    #[test]
    fn validate_and_schema_run_here() {
        let Some(Quick {
            command: QuickCommand::Experiment(QuickExperiment::Validate(v)),
        }) = claims("experiment validate a.toml b.toml --format json")
        else {
            panic!("validate not claimed");
        };
        assert_eq!(v.files.len(), 2);
        assert_eq!(v.format, flags::Format::Json);
        assert!(matches!(
            claims("schema --check"),
            Some(Quick {
                command: QuickCommand::Schema(flags::Schema { check: true })
            })
        ));
    }

    #[test]
    fn everything_else_goes_to_the_full_xtask() {
        for line in [
            "",
            "experiment",
            "experiment run experiments/quickstart.toml",
            "experiment list --output json",
            "image build",
            "bench validate",
            "test",
            "--help",
            "--version",
        ] {
            assert!(claims(line).is_none(), "`{line}` was claimed");
        }
    }
}
