//! `cargo xtask test`: the README's test command. Starts the services the
//! tests need, runs every test of the workspace against them, and stops what
//! it started, whatever the outcome. It reports the free disk before and
//! after: a full disk breaks builds and image layers in ways that name no
//! test.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::{flags, services, workspace};

impl flags::Test {
    pub fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let before = free_bytes(&root);
        if let Some(free) = before {
            eprintln!("disk: {} free under {}", gb(free), root.display());
            if free < NEEDS_BYTES {
                eprintln!(
                    "warning: a test run from a clean clone needs up to {} (target/ and the Docker engine's data): free some, or expect 'no space left on device' failures",
                    gb(NEEDS_BYTES)
                );
            }
        }
        // Shared: a run beside this one that ends first leaves the services
        // it started to the last run out.
        let shared = services::up_shared(&root)?;
        let ended = self.run_tests(&root, &shared.env);
        let stopped = shared.release(&root);
        let ended = ended?;
        stopped?;
        if let (Some(before), Some(after)) = (before, free_bytes(&root)) {
            eprintln!(
                "disk: {} free under {} ({} less than at the start)",
                gb(after),
                root.display(),
                gb(before.saturating_sub(after))
            );
        }
        Ok(match ended {
            Ended::Exited(status) if status.success() => ExitCode::SUCCESS,
            Ended::Exited(status) => {
                eprintln!("cargo test failed: {status}");
                ExitCode::FAILURE
            }
            Ended::Interrupted(sig) => {
                eprintln!("interrupted by {sig}: the tests were stopped, and the services this run started");
                ExitCode::from(128 + sig as u8)
            }
        })
    }

    /// `cargo test` of the whole workspace against the services of `env`.
    fn run_tests(&self, root: &Path, env: &services::ServiceEnv) -> Result<Ended> {
        let sh = workspace::shell(root)?;
        // Every test target runs even after one fails: a CI report names
        // all the failures, not the first target's.
        let mut test = workspace::cargo(&sh);
        // The developer's own AWS, Docker and registry settings never reach
        // the tests: they would send real credentials to the emulators (or
        // pass an anonymous-push check with them), or point at another engine.
        for name in LEAKY_VARS {
            test = test.env_remove(name);
        }
        let test = test
            .args(["test", "--workspace", "--locked", "--no-fail-fast"])
            .args(&self.cargo_args)
            .envs(env.vars.iter().map(|(k, v)| (k, v)));
        eprintln!("$ {test}");
        run_forwarding(test.into())
    }
}

/// How a command [`run_forwarding`] ran ended.
#[derive(Debug)]
enum Ended {
    Exited(std::process::ExitStatus),
    /// This process was sent the signal (Ctrl-C, a CI job's cancel), and
    /// passed it on to the command's process group, which has ended.
    Interrupted(nix::sys::signal::Signal),
}

/// Run `cmd` in a process group of its own, and on SIGINT, SIGTERM or
/// SIGHUP sent to this process send SIGINT to that group (SIGKILL after a
/// minute), and return once it has ended: so that a cancelled test run
/// still stops the services it started, and leaves no test binary behind.
fn run_forwarding(mut cmd: std::process::Command) -> Result<Ended> {
    use std::os::unix::process::CommandExt;

    use nix::sys::signal::{killpg, Signal};
    use tokio::signal::unix::{signal, SignalKind};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Listened for before the command starts: none is missed.
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut child = cmd.process_group(0).spawn()?;
        let group = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        let mut wait = tokio::task::spawn_blocking(move || child.wait());
        let sig = tokio::select! {
            status = &mut wait => return Ok(Ended::Exited(status??)),
            _ = int.recv() => Signal::SIGINT,
            _ = term.recv() => Signal::SIGTERM,
            _ = hup.recv() => Signal::SIGHUP,
        };
        // SIGINT whichever came: a test's launcher takes it for a stop
        // request and stops its trainer (in a group of its own) before it
        // exits; SIGTERM would end the launcher and leave the trainer.
        let _ = killpg(group, Signal::SIGINT);
        // Until the whole group has gone, not only its leader (cargo).
        let deadline = tokio::time::Instant::now() + GROUP_GRACE;
        let _ = tokio::time::timeout_at(deadline, &mut wait).await;
        let leader = group.as_raw().unsigned_abs();
        while crate::procfs::group_alive(leader) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        if crate::procfs::group_alive(leader) {
            let _ = killpg(group, Signal::SIGKILL);
        }
        if !wait.is_finished() {
            let _ = wait.await;
        }
        Ok(Ended::Interrupted(sig))
    })
}

/// How long an interrupted test run's process group has to end before
/// SIGKILL: a local run's launcher gives its trainer up to 120 s, but a
/// test's trainer is small.
const GROUP_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Variables of the developer's shell that the tests must not inherit
/// (the services' own, such as `DOCKER_HOST`, are set over them).
const LEAKY_VARS: [&str; 9] = [
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_DEFAULT_REGION",
    "DOCKER_CONFIG",
    "DOCKER_CONTEXT",
    "SCA_REGISTRY_USERNAME",
    "SCA_REGISTRY_PASSWORD",
];

/// Below this much free disk the run warns: `.ci/run` from a clean clone
/// peaked at 7.7 GiB (target/ and the Docker engine's data; 2026-11-27), plus
/// the crates and wheels a clean machine downloads.
const NEEDS_BYTES: u64 = 10 << 30;

/// Bytes available to this user on the file system holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    #[allow(clippy::useless_conversion)] // the field widths differ by platform
    Some(u64::from(stat.blocks_available()) * u64::from(stat.fragment_size()))
}

fn gb(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signal handling is the process's: one test at a time here, or one
    /// test's signal would interrupt the other's command.
    static SIGNALS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn sh(script: &str) -> std::process::Command {
        let shell = xshell::Shell::new().unwrap();
        xshell::cmd!(shell, "sh -c {script}").into()
    }

    /// A signal sent to this process reaches the command's whole group as
    /// a stop request (SIGINT: here a shell that traps it, and a child of
    /// it that ends a second after it), and the run returns once all of
    /// them have ended, saying which signal came.
    #[test]
    fn a_signal_to_the_runner_reaches_the_commands_group() {
        let _one = SIGNALS.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let (trapped, late, ready) = (path("trapped"), path("late"), path("ready"));
        // The child handles SIGINT first and says so; then the shell
        // signals its parent (this test process). The child outlives the
        // shell by a second, then leaves a file. (Perl: a shell's background
        // job ignores SIGINT and may not trap it.)
        let child = format!(
            r#"$SIG{{INT}} = sub {{ sleep 1; open my $f, ">", "{late}"; exit 0 }}; open my $r, ">", "{ready}"; close $r; sleep 30"#
        );
        let script = format!(
            "trap 'touch {trapped}; exit 42' INT; perl -e '{child}' & while [ ! -e {ready} ]; do sleep 0.05; done; kill -TERM $PPID; wait"
        );
        let (trapped, late) = (Path::new(&trapped), Path::new(&late));
        let start = std::time::Instant::now();
        let ended = run_forwarding(sh(&script)).unwrap();
        assert!(
            matches!(ended, Ended::Interrupted(nix::sys::signal::Signal::SIGTERM)),
            "{ended:?}"
        );
        assert!(trapped.exists(), "the shell never got the signal");
        assert!(late.exists(), "returned before the group had ended");
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn a_commands_exit_is_returned() {
        let _one = SIGNALS.lock().unwrap_or_else(|e| e.into_inner());
        match run_forwarding(sh("exit 3")).unwrap() {
            Ended::Exited(status) => assert_eq!(status.code(), Some(3)),
            other => panic!("{other:?}"),
        }
    }
}
