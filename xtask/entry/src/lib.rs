//! `cargo xtask`'s entry point. The commands that need only the experiment
//! format (`experiment validate`, `schema`) run here, in a binary whose
//! dependency tree is sca-spec, clap and miette; every other command is
//! handed, unchanged, to a launcher binary through `cargo run`, which builds
//! it on first use: `xtask-local` (tokio, the S3 client; no Docker or
//! SageMaker client) for `experiment run|sweep` on the local backend, the
//! full `xtask` for the rest ([`Launcher::for_args`]). So a fresh clone
//! checks an experiment file in a couple of minutes and trains one without
//! waiting for clients a local run never calls.
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
            // Written, not `eprintln!`: a closed stderr must not turn the
            // failure into a panic's exit code.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The binary a handed-over command line runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `xtask-local`: xtask without its `full` feature.
    Local,
    /// `xtask`, every command and backend.
    Full,
}

impl Launcher {
    /// `Local` for `experiment run|sweep` on the local backend (`--backend`
    /// absent, the default, or `local`), `Full` otherwise. `args[0]` is the
    /// program.
    pub fn for_args(args: &[OsString]) -> Launcher {
        let words: Vec<Option<&str>> = args.iter().skip(1).map(|a| a.to_str()).collect();
        let [Some("experiment"), Some("run" | "sweep"), rest @ ..] = words.as_slice() else {
            return Launcher::Full;
        };
        let mut backends = rest.iter().enumerate().filter_map(|(i, w)| match w {
            Some("--backend") => Some(rest.get(i + 1).copied().flatten()),
            Some(w) => w.strip_prefix("--backend=").map(Some),
            None => None,
        });
        if backends.all(|b| b == Some("local")) {
            Launcher::Local
        } else {
            Launcher::Full
        }
    }

    /// What `cargo run` is asked to build and run.
    fn cargo_args(self) -> &'static [&'static str] {
        match self {
            Launcher::Local => &[
                "--package",
                "xtask",
                "--bin",
                "xtask-local",
                "--no-default-features",
            ],
            Launcher::Full => &["--package", "xtask", "--bin", "xtask"],
        }
    }
}

/// Replace this process with `cargo run [the launcher] -- ARGS`: the
/// binary, built if stale, gets the terminal, the signals (Ctrl-C reaches a
/// sweep or a followed job directly) and the exit code, as if it had been
/// started by the alias itself. The arguments pass as argv, never through a
/// shell. `args[0]` is the program.
pub fn hand_over(args: &[OsString]) -> ExitCode {
    let launcher = Launcher::for_args(args);
    let manifest = workspace::root().join("Cargo.toml");
    let mut cargo = workspace::cargo_command();
    cargo
        .arg("run")
        .args(launcher.cargo_args())
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--")
        .args(args.iter().skip(1));
    #[cfg(unix)]
    let err = std::os::unix::process::CommandExt::exec(&mut cargo);
    #[cfg(not(unix))]
    let err = match cargo.status() {
        Ok(status) => return ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => e,
    };
    eprintln!(
        "error: starting `cargo run {}` ({}): {err}",
        launcher.cargo_args().join(" "),
        manifest.display()
    );
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The argv of `cargo xtask LINE`.
    fn argv(line: &str) -> Vec<OsString> {
        std::iter::once("xtask-entry")
            .chain(line.split_whitespace())
            .map(OsString::from)
            .collect()
    }

    fn claims(line: &str) -> Option<Quick> {
        Quick::claims(&argv(line))
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

    fn launcher(line: &str) -> Launcher {
        Launcher::for_args(&argv(line))
    }

    #[test]
    fn local_runs_and_sweeps_go_to_the_local_launcher() {
        for line in [
            "experiment run experiments/quickstart.toml",
            "experiment run a.toml --backend local --output json",
            "experiment sweep s.toml --backend=local --dry-run",
        ] {
            assert_eq!(launcher(line), Launcher::Local, "{line}");
        }
        for line in [
            "experiment run a.toml --backend sagemaker",
            "experiment run a.toml --backend=docker",
            "experiment sweep s.toml --backend local --backend sagemaker",
            // clap's error for a missing value comes from the full one.
            "experiment run a.toml --backend",
            "experiment rerun job",
            "experiment status job",
            "experiment list",
            "image build",
            "test",
            "",
        ] {
            assert_eq!(launcher(line), Launcher::Full, "{line}");
        }
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
