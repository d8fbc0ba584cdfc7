//! The `local` backend: `sca-train train` as a host process against a
//! SageMaker-style `/opt/ml` tree in the run's directory; no Docker, and AWS
//! only for `s3://` data (with the launch's profile and region).
//!
//! The trainer is built from the pinned commit: the workspace itself when it
//! is at that commit, otherwise a git worktree of the commit (a rerun of an
//! older job). Ctrl-C (or `experiment stop`) sends the trainer SIGTERM, as
//! SageMaker does, and SIGKILL 120 s later; the trainer checkpoints and exits
//! 143, and the record says `Stopped`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::experiment::launch::{self, LaunchOptions, Plan};
use crate::experiment::record::{self, RunRecord};
use crate::workspace;

/// Grace period between SIGTERM and SIGKILL, as SageMaker's.
pub const STOP_GRACE: Duration = Duration::from_secs(120);

pub async fn run(root: &Path, plan: &Plan, opts: &LaunchOptions) -> Result<Option<RunRecord>> {
    let run_dir = record::run_dir(root, &plan.job_name);
    let ml = run_dir.join("opt/ml");
    let mut hyper = launch::host_hyperparameters(plan);
    if let Some(init) = &plan.init_checkpoint {
        hyper.insert("init_checkpoint".into(), init.clone().into());
    }
    let mut record = plan.record(
        hyper.clone(),
        ml.join("input/data/config").display().to_string(),
        ml.join("model").display().to_string(),
    );
    // The run's own, new directory (see `launch::write_opt_ml`).
    record.checkpoint_uri = Some(ml.join("checkpoints").display().to_string());
    if opts.dry_run {
        println!("{}", serde_json::to_string_pretty(&record)?);
        return Ok(None);
    }
    let bin = trainer_binary(root, &plan.commit, plan.code_in_tree)?;
    launch::write_opt_ml(&ml, plan, &hyper)?;
    plan.write_config_channel(&record.config_dir(root))?;
    record.save(root)?;

    eprintln!(
        "running {} (local backend) in {}",
        plan.job_name,
        run_dir.display()
    );
    let mut command = Command::new(&bin);
    // S3 data and models are read with the credentials and region the
    // launch listed and pinned them with.
    let access = opts.aws.s3_access(&plan.resolved.region);
    for (name, value) in [
        ("AWS_REGION", access.region),
        ("AWS_PROFILE", access.profile),
    ] {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    // The launch's device override, and only it (a rerun's too: not
    // whatever this shell holds now).
    match &plan.device_override {
        Some(device) => command.env(sca_train::device::ENV, device),
        None => command.env_remove(sca_train::device::ENV),
    };
    let mut child = command
        .arg("train")
        .env("SCA_OPT_ML", &ml)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its own process group: the terminal's Ctrl-C reaches only us, and
        // we stop the trainer the way SageMaker does.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id();
    record.pid = Some(pid);
    record.save(root)?;

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\nstopping: SIGTERM to the trainer (SIGKILL in {} s)",
                    STOP_GRACE.as_secs()
                );
                stop.store(true, Ordering::SeqCst);
                terminate(pid);
            }
        })
    };
    let log = run_dir.join("train.log");
    let status = tokio::task::spawn_blocking(move || {
        tee(child.stdout.take(), &log)?;
        child.wait()
    })
    .await
    .context("waiting for the trainer")?
    .context("waiting for the trainer")?;
    watcher.abort();
    let code = status.code().map(i64::from).or_else(|| {
        std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + i64::from(s))
    });
    // `experiment stop` from another shell marks the record `Stopping`.
    let requested = stop.load(Ordering::SeqCst)
        || RunRecord::load(root, &plan.job_name)
            .map(|r| r.status == record::Status::Stopping)
            .unwrap_or(false);
    let exit = launch::Exit {
        code,
        stop_requested: requested,
        oom_killed: None,
    };
    launch::finish(&mut record, &ml, exit);
    record.save(root)?;
    Ok(Some(record))
}

/// SIGTERM now, SIGKILL after [`STOP_GRACE`] if the process is still there.
pub fn terminate(pid: u32) {
    use nix::sys::signal::{kill, Signal};
    let _ = kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM);
    std::thread::spawn(move || kill_after_grace(pid));
}

/// Wait up to [`STOP_GRACE`] for `pid` to end; SIGKILL it if it has not.
pub fn kill_after_grace(pid: u32) {
    let deadline = std::time::Instant::now() + STOP_GRACE;
    while std::time::Instant::now() < deadline {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Whether a process `pid` exists.
pub fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// The `sca-train` binary built from `commit`. The dev profile suffices: the
/// workspace compiles sca-train and its numeric dependencies at opt-level 3
/// even there, and the tests share these artifacts.
fn trainer_binary(root: &Path, commit: &str, code_in_tree: bool) -> Result<PathBuf> {
    let (dir, target) = if code_in_tree {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        (root.to_path_buf(), target)
    } else {
        let dir = worktree(root, commit)?;
        let target = root.join("target/sca-worktrees/target");
        (dir, target)
    };
    let status = workspace::cargo()
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        // With xtask selected too, cargo resolves the same features as for
        // the xtask binary, so the two share every compiled dependency.
        .args([
            "build",
            "--quiet",
            "--locked",
            "-p",
            "xtask",
            "-p",
            "sca-train",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building sca-train at {commit} failed (see above)");
    }
    Ok(target.join("debug/sca-train"))
}

/// A clean checkout of `commit` under `target/sca-worktrees/`, for reruns of
/// jobs launched from another commit.
fn worktree(root: &Path, commit: &str) -> Result<PathBuf> {
    let dir = root.join("target/sca-worktrees").join(commit);
    if dir.join("Cargo.toml").is_file() {
        return Ok(dir);
    }
    eprintln!(
        "checking out {commit} in {} to build its trainer",
        dir.display()
    );
    let out = Command::new("git")
        .current_dir(root)
        .args(["worktree", "add", "--force", "--detach"])
        .arg(&dir)
        .arg(commit)
        .output()
        .context("running git worktree")?;
    if !out.status.success() {
        bail!(
            "cannot check out commit {commit} (is it in this repository? `git fetch` it): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(dir)
}

/// Copy the trainer's stdout to ours and to `log` as it comes.
fn tee(out: Option<std::process::ChildStdout>, log: &Path) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    let mut file = std::fs::File::create(log)?;
    if let Some(out) = out {
        for line in std::io::BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            writeln!(file, "{line}")?;
        }
    }
    Ok(())
}
