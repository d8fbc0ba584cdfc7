//! The `local` backend: `sca-train train` as a host process against a
//! SageMaker-style `/opt/ml` tree in the run's directory; no Docker, and AWS
//! only for `s3://` data (with the launch's profile and region).
//!
//! The trainer is built from the pinned commit: the workspace itself when it
//! is at that commit, otherwise a git worktree of the commit (a rerun of an
//! older job), and kept per pin once the tree is seen to still hold that
//! code after the build ([`trainer_binary`]). Ctrl-C (or `experiment stop`)
//! sends the trainer SIGTERM, as SageMaker does, and SIGKILL 120 s later; the
//! trainer checkpoints and exits 143, and the record says `Stopped`.
//!
//! The launcher drains the trainer's stdout and stderr into `train.log` (and
//! its own terminal) until the trainer ends, whatever happens to its own
//! stdout (`| head`): a trainer blocked or killed by its log would lose the
//! epoch it is in. A trainer is named by pid and start time, so a reused pid
//! is never taken for it (`stop` refuses, `status` records the job ended).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::future::BoxFuture;

use crate::aws::Session;
use crate::experiment::artifacts::{self, Unpacked};
use crate::experiment::backend::Backend;
use crate::experiment::contract::{self, Exit, Sink, STOP_GRACE};
use crate::experiment::plan::{LaunchOptions, Plan};
use crate::experiment::record::{self, RunRecord, Status};
use crate::workspace;

/// The `local` backend.
pub struct LocalBackend;

impl Backend for LocalBackend {
    fn launch<'a>(
        &'a self,
        root: &'a Path,
        plan: &'a Plan,
        opts: &'a LaunchOptions,
        _: &'a mut crate::experiment::backend::HeldClaim,
    ) -> BoxFuture<'a, Result<Option<RunRecord>>> {
        Box::pin(run(root, plan, opts))
    }

    fn refresh<'a>(
        &'a self,
        root: &'a Path,
        record: &'a mut RunRecord,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { refresh(root, record) })
    }

    fn logs<'a>(
        &'a self,
        root: &'a Path,
        record: &'a RunRecord,
        follow: bool,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(contract::print_log(
            root,
            record,
            follow,
            move |mut r| async move {
                refresh(root, &mut r)?;
                Ok(r)
            },
        ))
    }

    fn stop<'a>(
        &'a self,
        root: &'a Path,
        record: &'a RunRecord,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { stop(root, record) })
    }

    fn fetch<'a>(
        &'a self,
        root: &'a Path,
        record: &'a RunRecord,
        dir: &'a Path,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<Unpacked>> {
        Box::pin(async move { fetch(root, record, dir) })
    }

    fn latest_model<'a>(
        &'a self,
        root: &'a Path,
        name: &'a str,
        _: &'a sca_spec::ResolvedJob,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move { contract::latest_host_model(root, name) })
    }
}

async fn run(root: &Path, plan: &Plan, opts: &LaunchOptions) -> Result<Option<RunRecord>> {
    let run_dir = record::run_dir(root, &plan.job_name);
    let ml = run_dir.join("opt/ml");
    let mut hyper = plan.host_hyperparameters();
    if let Some(init) = &plan.pins.init_checkpoint {
        hyper.init_checkpoint = Some(init.clone());
    }
    let mut record = plan.record(
        &hyper,
        ml.join("input/data/config").display().to_string(),
        ml.join("model").display().to_string(),
    );
    // The run's own, new directory (see `contract::write_opt_ml`).
    record.checkpoint_uri = Some(ml.join("checkpoints").display().to_string());
    if opts.dry_run {
        println!("{}", serde_json::to_string_pretty(&record)?);
        return Ok(None);
    }
    let bin = trainer_binary(root, &plan.pins, plan.code_in_tree)?;
    contract::write_opt_ml(&ml, plan, &hyper)?;
    plan.write_config_channel(&record.config_dir(root))?;
    // Held until the launch returns, from before the record says
    // InProgress: while its trainer's pid is not recorded yet, a look at
    // the record tells this launcher at work from one that is gone.
    let _launcher = contract::launcher_lock(&run_dir)?;
    record.save(root)?;

    contract::eprint_line(format_args!(
        "running {} (local backend) in {}",
        plan.job_name,
        run_dir.display()
    ));
    // The trainer stays on std::process, unlike the one-shot git and cargo
    // calls (xshell): it is long-running, its two pipes are drained while it
    // runs, and it gets its own process group and our signals.
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
        Some(device) => command.env(sca_spec::contract::DEVICE_ENV, device),
        None => command.env_remove(sca_spec::contract::DEVICE_ENV),
    };
    // Ctrl-C and SIGTERM latched from before the trainer exists: one that
    // came before the watcher below first listened would end this launcher
    // alone, the trainer (a process group of its own) training on.
    contract::catch_interrupts();
    let spawned = command
        .arg("train")
        .env("SCA_OPT_ML", &ml)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: the terminal's Ctrl-C reaches only us, and
        // we stop the trainer the way SageMaker does.
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            // The record says InProgress with no pid: nothing would ever end it.
            let reason = format!("the trainer {} could not be started: {e}", bin.display());
            RunRecord::update(root, &plan.job_name, |r| {
                r.fail_unless_ended(reason.clone());
                Ok(())
            })?;
            bail!("{reason}: the job is recorded Failed");
        }
    };
    let pid = child.id();
    // Read while the child is unreaped, so the pid is still this process.
    let start = crate::procfs::start_time(pid);
    record.pid = Some(pid);
    record.pid_start = start;
    if let Err(e) = record.save(root) {
        // The trainer runs: follow it to its end and record that, rather
        // than leave it unwatched (a full disk may have room again by then).
        contract::eprint_line(format_args!(
            "warning: recording the trainer's pid: {e:#}; following it anyway"
        ));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let (root, job) = (root.to_path_buf(), plan.job_name.clone());
        let max_runtime = plan.resolved.max_runtime_secs;
        tokio::spawn(async move {
            // Ctrl-C, or `max_runtime` run out: SageMaker stops its jobs
            // there, and so does this emulation of it.
            let timed_out = contract::stop_signal(&root, &job, max_runtime).await;
            stop.store(true, Ordering::SeqCst);
            // In the record too, before the SIGTERM: a `status` that finds
            // the trainer's end first (this launcher killed meanwhile)
            // records Stopped, not a SIGTERM without a stop request.
            if !timed_out {
                let _ = RunRecord::mark_stopping(&root, &job);
            }
            contract::eprint_line(format_args!(
                "\nstopping: SIGTERM to the trainer (SIGKILL in {} s)",
                STOP_GRACE.as_secs()
            ));
            terminate(pid, start);
        })
    };
    // A closed terminal (SIGHUP) ends the launcher by default, leaving the
    // trainer's end unrecorded; with a handler we follow it to the end.
    let _hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let log = run_dir.join("train.log");
    let status = tokio::task::spawn_blocking(move || {
        drain_and_wait(&mut child, &log, std::io::stdout(), std::io::stderr())
    })
    .await
    .context("waiting for the trainer")?
    .context("waiting for the trainer")?;
    watcher.abort();
    let code = status.code().map(i64::from).or_else(|| {
        std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + i64::from(s))
    });
    // The launcher saw the exit, so its outcome stands, even over a
    // `status` that found the trainer gone first; `experiment stop` from
    // another shell marked the record `Stopping`.
    let (record, ()) = RunRecord::update(root, &plan.job_name, |current| {
        let exit = Exit {
            code,
            stop_requested: stop.load(Ordering::SeqCst)
                || matches!(current.status, Status::Stopping | Status::Stopped),
            oom_killed: None,
        };
        contract::finish(current, &ml, exit);
        Ok(())
    })?;
    Ok(Some(record))
}

/// SIGTERM now, SIGKILL after [`STOP_GRACE`] if the trainer is still there.
pub fn terminate(pid: u32, start: Option<u64>) {
    use nix::sys::signal::{kill, Signal};
    let _ = kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM);
    std::thread::spawn(move || kill_after_grace(pid, start));
}

/// Wait up to [`STOP_GRACE`] for the trainer `pid` (started at `start`) to
/// end; SIGKILL it if it has not. A pid that names another process by then
/// is left alone.
pub fn kill_after_grace(pid: u32, start: Option<u64>) {
    let deadline = std::time::Instant::now() + STOP_GRACE;
    while std::time::Instant::now() < deadline {
        if !matches!(trainer(pid, start), Ok(Trainer::Running)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if matches!(trainer(pid, start), Ok(Trainer::Running)) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// What a recorded trainer pid names now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trainer {
    /// Our trainer, running.
    Running,
    /// No process, or one that has exited and waits to be reaped.
    Gone,
    /// Another process that got the pid after the trainer ended: why we think so.
    Other(String),
}

/// What `pid`, recorded as a trainer that started at `start` (clock ticks
/// since boot; `None` in records older than the field), names now, from
/// `/proc`.
pub fn trainer(pid: u32, start: Option<u64>) -> Result<Trainer> {
    let dir = Path::new("/proc").join(pid.to_string());
    let read = |name: &str| match std::fs::read(dir.join(name)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.join(name).display())),
    };
    let (Some(stat), Some(cmdline)) = (read("stat")?, read("cmdline")?) else {
        return Ok(Trainer::Gone);
    };
    Ok(identify(
        pid,
        &String::from_utf8_lossy(&stat),
        &cmdline,
        start,
    ))
}

/// [`trainer`] from the text of `/proc/<pid>/stat` and `/proc/<pid>/cmdline`.
fn identify(pid: u32, stat: &str, cmdline: &[u8], start: Option<u64>) -> Trainer {
    let Some((state, started)) = crate::procfs::parse_stat(stat) else {
        return Trainer::Other(format!("/proc/{pid}/stat does not parse: {stat:?}"));
    };
    // Exited, not yet reaped: its cmdline is already empty.
    if matches!(state, 'Z' | 'X') {
        return Trainer::Gone;
    }
    if let Some(start) = start.filter(|&s| s != started) {
        return Trainer::Other(format!(
            "pid {pid} is a process started at clock tick {started}, the trainer at {start}"
        ));
    }
    let args: Vec<&[u8]> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    let is_trainer = args.first().is_some_and(|a| {
        Path::new(std::ffi::OsStr::from_bytes(a)).file_name() == Some("sca-train".as_ref())
    }) && args.get(1) == Some(&&b"train"[..]);
    if is_trainer {
        Trainer::Running
    } else {
        Trainer::Other(format!(
            "pid {pid} is now `{}`, not `sca-train train`",
            String::from_utf8_lossy(&cmdline.split(|&b| b == 0).collect::<Vec<_>>().join(&b' '))
                .trim()
        ))
    }
}

/// This launcher's binary and features, as cargo arguments.
#[cfg(feature = "full")]
const LAUNCHER: (&str, &[&str]) = ("xtask", &[]);
#[cfg(not(feature = "full"))]
const LAUNCHER: (&str, &[&str]) = ("xtask-local", &["--no-default-features"]);

/// How many built trainers `target/sca-trainers/` keeps (the most recently
/// used): a sweep's points and reruns reuse one; each is tens of MiB.
const KEPT_TRAINERS: usize = 8;

/// The `sca-train` binary of the pinned code, kept under
/// `target/sca-trainers/<launcher>/<commit>[-<diff>]/`. It is built once:
/// from the workspace when it holds the pinned code, else in a worktree of
/// the commit, and kept only once the tree it was built from is seen, after
/// the build, to still hold that code. A sweep's later points and reruns
/// then run it whatever the tree holds by then (an edit, a checkout), and a
/// concurrent build elsewhere cannot replace it before it starts.
/// The dev profile suffices: the workspace compiles sca-train and its
/// numeric dependencies at opt-level 3 even there, and the tests share these
/// artifacts.
fn trainer_binary(
    root: &Path,
    pins: &crate::experiment::pins::Pins,
    code_in_tree: bool,
) -> Result<PathBuf> {
    let (launcher, _) = LAUNCHER;
    let key = match &pins.diff_sha256 {
        Some(diff) => format!("{}-dirty-{}", pins.commit, &diff[..16.min(diff.len())]),
        None => pins.commit.clone(),
    };
    let kept_dir = workspace::target_dir(root)
        .join("sca-trainers")
        .join(launcher);
    let kept = kept_dir.join(&key).join("sca-train");
    if kept.is_file() {
        mark_used(&kept);
        return Ok(kept);
    }
    let commit = pins.commit.as_str();
    let target = match code_in_tree {
        true => workspace::target_dir(root),
        false => root.join("target/sca-worktrees/target"),
    };
    // One build at a time into a target directory, kept before the next:
    // none replaces another's binary between its build and its keep.
    crate::fsx::locked(&target.join(".sca-build.lock"), || {
        if kept.is_file() {
            return Ok(()); // kept by a launch that held the lock first
        }
        let dir = match code_in_tree {
            true => root.to_path_buf(),
            // The worktrees share one target directory, so that their
            // dependencies compile once. Cargo knows a path package's
            // sources by their path in the workspace and judges them fresh
            // by mtime, so a worktree checked out before another commit's
            // build would pass that build's trainer off as its own
            // (rust-lang/cargo#17312): its files are made newer than any
            // build's output first.
            false => {
                let dir = worktree(root, commit)?;
                touch_tracked(&dir)?;
                dir
            }
        };
        build(&dir, &target, pins, code_in_tree)?;
        keep(&target.join("debug/sca-train"), &kept)
    })?;
    mark_used(&kept);
    prune_trainers(&kept_dir, KEPT_TRAINERS);
    Ok(kept)
}

/// Build the launcher's `sca-train` from the workspace at `dir` into
/// `target`, and check that `dir` still holds the pinned code: the
/// workspace itself (`code_in_tree`, whose pins may name a diff), else a
/// worktree of the commit.
fn build(
    dir: &Path,
    target: &Path,
    pins: &crate::experiment::pins::Pins,
    code_in_tree: bool,
) -> Result<()> {
    let (launcher, features) = LAUNCHER;
    let commit = pins.commit.as_str();
    let sh = workspace::shell(dir)?;
    let mut cmd = workspace::cargo(&sh)
        .env("CARGO_TARGET_DIR", target)
        // With xtask selected too, in this launcher's features, cargo
        // resolves the same features as for the launcher's own build, so the
        // two share every compiled dependency. Only the binaries named are
        // built: the full and the local launcher leave each other's be.
        .args([
            "build",
            "--quiet",
            "--locked",
            "-p",
            "xtask",
            "-p",
            "sca-train",
        ])
        .args(features)
        .args(["--bin", "sca-train"]);
    if code_in_tree {
        cmd = cmd.args(["--bin", launcher]);
    }
    cmd.run()
        .with_context(|| format!("building sca-train at {commit} failed (see above)"))?;
    if code_in_tree {
        crate::experiment::pin::ensure_tree_unchanged(
            dir,
            commit,
            pins.dirty,
            pins.diff_sha256.as_deref(),
            "the trainer was built",
        )?;
    } else {
        ensure_worktree_holds(dir, commit)?;
    }
    Ok(())
}

/// Refuses a worktree that does not hold `commit` unchanged (edited, or a
/// checkout cut short): a trainer built there is not that commit's.
fn ensure_worktree_holds(dir: &Path, commit: &str) -> Result<()> {
    if crate::experiment::pin::tree_holds(dir, commit, false, None)? {
        return Ok(());
    }
    bail!(
        "{} does not hold commit {commit} unchanged (see `git -C {} status`), so a trainer built there is not that commit's: remove it (`git worktree remove --force {}`) and launch again",
        dir.display(),
        dir.display(),
        dir.display()
    )
}

/// Set the modification time of every file git tracks in the worktree
/// `dir` to now, so that cargo rebuilds each of its packages from them.
fn touch_tracked(dir: &Path) -> Result<()> {
    let files = crate::git::tracked_files(dir)?;
    let now = std::time::SystemTime::now();
    for file in files {
        let path = dir.join(&file);
        // (A tracked symlink or a submodule is not a source file.)
        if !path.symlink_metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        std::fs::File::open(&path)
            .and_then(|f| f.set_modified(now))
            .with_context(|| format!("touching {}", path.display()))?;
    }
    Ok(())
}

/// Mark a kept trainer most recently used, for the pruning. Through a
/// read-only handle: a binary open for writing cannot be executed
/// (ETXTBSY), and another launch may be starting this one right now.
fn mark_used(kept: &Path) {
    let _ = std::fs::File::open(kept).and_then(|f| f.set_modified(std::time::SystemTime::now()));
}

/// Copy the built binary `built` to `kept` through a temporary file and a
/// rename, so `kept` is whole or absent.
fn keep(built: &Path, kept: &Path) -> Result<()> {
    let dir = kept.parent().context("a kept trainer has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".sca-train-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    std::fs::copy(built, tmp.path())
        .with_context(|| format!("copying {} to {}", built.display(), dir.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    // Closed before the rename: a launch that starts `kept` the moment it
    // appears must not find it still open for writing (ETXTBSY).
    let tmp = tmp.into_temp_path();
    tmp.persist(kept)
        .map_err(|e| e.error)
        .with_context(|| format!("moving the trainer to {}", kept.display()))?;
    Ok(())
}

/// Remove all but the `n` most recently used trainers under `dir`. Best
/// effort: a trainer removed while another launch starts it still runs
/// (the file lives on while it is open or mapped).
fn prune_trainers(dir: &Path, n: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut kept: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let used = e
                .path()
                .join("sca-train")
                .metadata()
                .ok()?
                .modified()
                .ok()?;
            Some((used, e.path()))
        })
        .collect();
    kept.sort_by_key(|k| std::cmp::Reverse(k.0));
    for (_, old) in kept.into_iter().skip(n) {
        let _ = std::fs::remove_dir_all(old);
    }
}

/// A checkout of `commit` under `target/sca-worktrees/`, for reruns of jobs
/// launched from another commit.
fn worktree(root: &Path, commit: &str) -> Result<PathBuf> {
    let dir = root.join("target/sca-worktrees").join(commit);
    if dir.join("Cargo.toml").is_file() {
        // Checked before the build too: a checkout cut short fails it with
        // errors that name no cause.
        ensure_worktree_holds(&dir, commit)?;
        return Ok(dir);
    }
    eprintln!(
        "checking out {commit} in {} to build its trainer",
        dir.display()
    );
    crate::git::add_worktree(root, &dir, commit)?;
    Ok(dir)
}

/// Wait for `child`, copying its stdout to `out` and its stderr to `err`,
/// and both, line by line, to the file `log`; its exit status.
///
/// The child's output is drained to the end whatever fails on our side: a
/// destination that cannot be written (our stdout closed by `| head`, a full
/// disk under the log) is dropped with one warning on `err`, and the rest go
/// on. Stopping to read would block the trainer on a full pipe, or kill it
/// with EPIPE, mid-epoch.
fn drain_and_wait(
    child: &mut Child,
    log: &Path,
    out: impl Write + Send,
    err: impl Write + Send,
) -> std::io::Result<ExitStatus> {
    let err = &Mutex::new(Sink::new(err, "writing to stderr".into()));
    let warn = |message: String| {
        err.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(format!("warning: {message}\n").as_bytes());
    };
    let file = std::fs::File::create(log)
        .inspect_err(|e| {
            warn(format!(
                "cannot create {} ({e}): the trainer's output goes unlogged",
                log.display()
            ))
        })
        .ok();
    let log = &Mutex::new(Sink::optional(file, format!("writing {}", log.display())));
    let copy = |from: &mut dyn Read, to: &mut dyn FnMut(&[u8]) -> Option<String>| {
        let mut from = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match from.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn(format!("reading the trainer's output: {e}"));
                    break;
                }
            }
            let failed = to(&line).into_iter().chain(
                log.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .put(&line)
                    .map(|why| format!("{why}: training goes on, its output is no longer logged")),
            );
            for why in failed {
                warn(why);
            }
        }
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    std::thread::scope(|s| {
        if let Some(mut stderr) = stderr {
            s.spawn(move || {
                copy(&mut stderr, &mut |line| {
                    err.lock().unwrap_or_else(PoisonError::into_inner).put(line);
                    None
                })
            });
        }
        if let Some(mut stdout) = stdout {
            let mut out = Sink::new(out, "writing to stdout".into());
            copy(&mut stdout, &mut |line| {
                out.put(line)
                    .map(|why| format!("{why}: training goes on, its output is in the log"))
            });
        }
    });
    child.wait()
}

/// The `sca-train train` process whose `/opt/ml` is `ml`, with its start
/// time: a trainer whose launcher was killed before it recorded the pid.
/// Only processes named `sca-train` that lead their own process group (as
/// the launcher starts the trainer) have their environment read.
fn find_trainer(ml: &Path) -> Option<(u32, Option<u64>)> {
    let ml = std::fs::canonicalize(ml).ok()?;
    crate::procfs::processes().find_map(|(pid, stat)| {
        if crate::procfs::parse_name_and_group(&stat)? != ("sca-train", pid) {
            return None;
        }
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let environ = std::fs::read(proc.join("environ")).ok()?;
        let opt_ml = environ
            .split(|&b| b == 0)
            .find_map(|var| var.strip_prefix(b"SCA_OPT_ML="))?;
        // A relative path is the trainer's, from its working directory.
        let opt_ml = proc.join("cwd").join(std::ffi::OsStr::from_bytes(opt_ml));
        let start = crate::procfs::start_time(pid);
        (std::fs::canonicalize(opt_ml).is_ok_and(|p| p == ml)
            && matches!(trainer(pid, start), Ok(Trainer::Running)))
        .then_some((pid, start))
    })
}

/// A record whose launcher saved it and ended (killed) before it recorded
/// the trainer's pid: the trainer it started, found by its `/opt/ml`, is
/// recorded as the run's; with none running, the run ends as the exit code
/// it left says, or, with none, Failed. A launcher still at work is left
/// to it.
fn adopt_or_fail(root: &Path, record: &mut RunRecord) -> Result<()> {
    let run_dir = record::run_dir(root, &record.job_name);
    if contract::launcher_gone(&run_dir)? != Some(true) {
        return Ok(());
    }
    let ml = run_dir.join("opt/ml");
    let found = find_trainer(&ml);
    (*record, ()) = RunRecord::update(root, &record.job_name, |r| {
        if r.status.is_terminal() || r.pid.is_some() {
            return Ok(());
        }
        match (found, sca_spec::contract::OptMl::at(&ml).read_exit_code()) {
            (Some((pid, start)), _) => (r.pid, r.pid_start) = (Some(pid), start),
            (None, Some(code)) => {
                let exit = Exit {
                    code: Some(code),
                    stop_requested: r.status == Status::Stopping,
                    oom_killed: None,
                };
                contract::finish(r, &ml, exit);
            }
            (None, None) => r.fail_unless_ended(
                "its launcher ended before it recorded the trainer's pid, and no trainer of it runs now nor left an exit code: launch it again".into(),
            ),
        }
        Ok(())
    })?;
    Ok(())
}

/// Record the end of a job whose trainer is gone and whose launcher did
/// not record it (killed, or its terminal closed).
fn refresh(root: &Path, record: &mut RunRecord) -> Result<()> {
    // A launcher still holding its lock records the end itself, from the
    // trainer's own exit status: a look from here (another pid namespace
    // or user, where /proc cannot show the trainer) must not judge it.
    let run_dir = record::run_dir(root, &record.job_name);
    let launcher_gone = contract::launcher_gone(&run_dir).ok().flatten();
    if !record.status.is_terminal() && launcher_gone == Some(false) {
        return Ok(());
    }
    if !record.status.is_terminal() && record.pid.is_none() {
        adopt_or_fail(root, record)?;
    }
    if let (false, Some(pid)) = (record.status.is_terminal(), record.pid) {
        let running = trainer(pid, record.pid_start)?;
        if running == Trainer::Running {
            // Only where the launcher is seen gone: one in another pid
            // namespace is not a launcher too old to hold a lock.
            if launcher_gone == Some(true) {
                enforce_max_runtime(root, record, pid)?;
            }
        } else {
            let ml = record::run_dir(root, &record.job_name).join("opt/ml");
            (*record, ()) = RunRecord::update(root, &record.job_name, |r| {
                // Unless its launcher recorded the end meanwhile.
                if !r.status.is_terminal() && r.pid == Some(pid) {
                    let exit = Exit {
                        // What the trainer wrote as it exited; none if it
                        // was killed.
                        code: sca_spec::contract::OptMl::at(&ml).read_exit_code(),
                        stop_requested: r.status == Status::Stopping,
                        oom_killed: None,
                    };
                    contract::finish(r, &ml, exit);
                }
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// Stop a trainer that has run past its job's `max_runtime` with its
/// launcher gone (killed), as the launcher would have (see
/// [`contract::overrun`]). Best effort: a signal that cannot be sent is a
/// warning, not a failed look.
fn enforce_max_runtime(root: &Path, record: &mut RunRecord, pid: u32) -> Result<()> {
    let Some(age) = record.pid_start.and_then(crate::procfs::age) else {
        return Ok(()); // a record older than pid_start: its age is unknown
    };
    let Some(step) = contract::overrun(root, record, age)? else {
        return Ok(());
    };
    // Again just before the signal: the trainer may have ended (and its
    // pid been taken) since the look that found it running.
    if !matches!(trainer(pid, record.pid_start), Ok(Trainer::Running)) {
        return Ok(());
    }
    use nix::sys::signal::{kill, Signal};
    let signal = match step {
        contract::Overrun::Term => Signal::SIGTERM,
        contract::Overrun::Kill => Signal::SIGKILL,
    };
    match kill(nix::unistd::Pid::from_raw(pid as i32), signal) {
        Ok(()) => contract::overran(
            root,
            &record.job_name,
            &format!("its trainer (pid {pid})"),
            age,
            record.resolved_job.max_runtime_secs,
            step,
        ),
        Err(nix::errno::Errno::ESRCH) => {} // ended meanwhile
        Err(e) => contract::eprint_line(format_args!(
            "warning: {}: its trainer (pid {pid}) is past max_runtime and could not be sent {signal}: {e}",
            record.job_name
        )),
    }
    Ok(())
}

/// SIGTERM to the job's trainer, if it is still the recorded process, and
/// SIGKILL after the grace period if it runs on.
fn stop(root: &Path, record: &RunRecord) -> Result<()> {
    let job = &record.job_name;
    let mut record = record.clone();
    if record.pid.is_none() {
        // A trainer its launcher (gone) did not record, adopted as `status`
        // does; or the run's end, recorded.
        adopt_or_fail(root, &mut record)?;
    }
    if record.status.is_terminal() {
        eprintln!("{job} has already ended: {}", record.status);
        return Ok(());
    }
    let pid = record.pid.context(
        "the record names no trainer process: its launcher has not started it yet (`experiment stop` again in a moment, or Ctrl-C at the launcher)",
    )?;
    match trainer(pid, record.pid_start)? {
        Trainer::Running => {}
        Trainer::Gone => bail!(
            "the trainer (pid {pid}) of {job} is not running: `cargo xtask experiment status {job}` records how it ended"
        ),
        Trainer::Other(why) => bail!(
            "refusing to signal pid {pid}: {why}, so the trainer of {job} has ended and its pid was reused; `cargo xtask experiment status {job}` records the end"
        ),
    }
    RunRecord::mark_stopping(root, job)?;
    use nix::sys::signal::{kill, Signal};
    kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM)
        .with_context(|| format!("signalling pid {pid}"))?;
    eprintln!(
        "sent SIGTERM to {job} (pid {pid}); its launcher sends SIGKILL if it is still running in {} s",
        STOP_GRACE.as_secs()
    );
    // The same 120 s as under SageMaker; we wait only while it runs.
    kill_after_grace(pid, record.pid_start);
    Ok(())
}

/// The trainer's files from the run's model directory, copied into `dir`.
fn fetch(root: &Path, record: &RunRecord, dir: &Path) -> Result<Unpacked> {
    let model = record.model_dir(root);
    let entries = std::fs::read_dir(&model)
        .with_context(|| format!("reading {} (has the job run?)", model.display()))?;
    artifacts::into_fresh_dir(dir, &record.job_name, |work| {
        let mut out = Unpacked::default();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_file() && artifacts::is_artifact(&name) {
                std::fs::copy(entry.path(), work.join(&name))
                    .with_context(|| format!("copying {}", entry.path().display()))?;
                out.files.push(name);
            } else {
                out.skipped.push(name);
            }
        }
        out.files.sort();
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Launches of one pin share its kept trainer: one marking it used
    /// (or keeping it) while another starts it must not make the start
    /// fail with ETXTBSY ("Text file busy"), which recorded the job Failed.
    #[test]
    fn a_kept_trainer_starts_while_another_launch_marks_it_used() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let built = dir.path().join("built");
        std::fs::write(&built, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&built, std::fs::Permissions::from_mode(0o755)).unwrap();
        let kept = dir.path().join("kept/sca-train");
        keep(&built, &kept).unwrap();
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        /// Ends the marking thread however the starts end (a failed
        /// assertion too, or the scope would wait for it for ever).
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, SeqCst);
            }
        }
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(SeqCst) {
                    mark_used(&kept);
                }
            });
            let _done = Done(&done);
            for _ in 0..300 {
                let started = std::process::Command::new(&kept).status();
                assert!(started.as_ref().is_ok_and(|s| s.success()), "{started:?}");
            }
        });
    }

    /// A worktree whose checkout was cut short (or edited since) is refused
    /// before anything is built there, saying to remove it.
    #[test]
    fn a_worktree_that_does_not_hold_its_commit_is_refused_before_the_build() {
        let repo = crate::git::testing::Repo::new();
        let root = repo.path();
        repo.commit("Cargo.toml", "[workspace]\n");
        repo.commit("src.rs", "fn f() {}\n");
        let commit = crate::git::revision(root).unwrap().unwrap().commit;
        let dir = worktree(root, &commit).unwrap();
        assert_eq!(worktree(root, &commit).unwrap(), dir, "reused as it is");
        std::fs::remove_file(dir.join("src.rs")).unwrap();
        let e = format!("{:#}", worktree(root, &commit).unwrap_err());
        assert!(
            e.contains("does not hold commit") && e.contains("git worktree remove --force"),
            "{e}"
        );
    }

    /// Worktrees of two commits share one target directory. The one
    /// checked out first, built again after the other's build (its kept
    /// trainer pruned), builds its own trainer: cargo took that build's
    /// outputs for fresh against its older files, and kept the other
    /// commit's trainer as this one's. (A workspace of the two packages the
    /// build names, whose trainer prints its commit's word.)
    #[test]
    fn a_worktree_checked_out_before_another_commits_build_builds_its_own_trainer() {
        let repo = crate::git::testing::Repo::new();
        let root = repo.path();
        repo.write(
            "Cargo.toml",
            "[workspace]\nmembers = [\"xtask\", \"sca-train\"]\nresolver = \"2\"\n",
        );
        repo.write(".gitignore", "/target\n");
        for package in ["xtask", "sca-train"] {
            repo.write(
                &format!("{package}/Cargo.toml"),
                &format!("[package]\nname = \"{package}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[features]\ndefault = [\"full\"]\nfull = []\n"),
            );
        }
        repo.write("xtask/src/lib.rs", "");
        let word = |w: &str| format!("fn main() {{\n    println!(\"{w}\");\n}}\n");
        repo.write("sca-train/src/main.rs", &word("one"));
        let sh = workspace::shell(root).unwrap();
        workspace::cargo(&sh)
            .args(["generate-lockfile", "--offline"])
            .run()
            .unwrap();
        repo.git(&["add", "-A"]);
        repo.git(&["commit", "-q", "-m", "one"]);
        let one = crate::git::revision(root).unwrap().unwrap().commit;
        repo.commit("sca-train/src/main.rs", &word("two"));
        let two = crate::git::revision(root).unwrap().unwrap().commit;
        let pins = |commit: &str| -> crate::experiment::pins::Pins {
            serde_json::from_value(serde_json::json!({
                "commit": commit, "dirty": false, "experiment_sha256": "ab"
            }))
            .unwrap()
        };
        // Built, run, and its kept copy pruned (as after KEPT_TRAINERS others).
        let says = |commit: &str| {
            let kept = trainer_binary(root, &pins(commit), false).unwrap();
            let out = std::process::Command::new(&kept).output().unwrap();
            std::fs::remove_dir_all(kept.parent().unwrap()).unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        assert_eq!(says(&two), "two");
        assert_eq!(says(&one), "one");
        assert_eq!(
            says(&two),
            "two",
            "the other commit's trainer, kept as this one's"
        );
    }

    #[test]
    fn only_the_most_recently_used_trainers_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..5u64 {
            let bin = dir.path().join(format!("c{i}")).join("sca-train");
            std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
            std::fs::write(&bin, b"x").unwrap();
            let f = std::fs::File::options().append(true).open(&bin).unwrap();
            // c3 used last, then c1, c4, c2, c0.
            let used = [0, 3, 1, 4, 2][i as usize];
            f.set_modified(t0 + Duration::from_secs(used)).unwrap();
        }
        // Not a trainer's directory: left alone.
        std::fs::write(dir.path().join(".sca-train-partial"), b"").unwrap();
        prune_trainers(dir.path(), 3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".sca-train-partial", "c1", "c3", "c4"]);
    }

    /// A stdout whose reader is gone, as under `| head`.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_stdout_neither_stops_the_log_nor_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("train.log");
        // More than a pipe buffer (64 KiB) on each stream: a launcher that
        // stopped reading would block the child, one that returned would
        // kill it with EPIPE.
        let mut child = Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 20000 ]; do echo \"line $i\"; echo \"err $i\" >&2; i=$((i+1)); done; exit 3",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = Vec::new();
        let status = drain_and_wait(&mut child, &log, Closed, &mut err).unwrap();
        assert_eq!(status.code(), Some(3), "the child's own exit status");
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), 40_000);
        assert!(text.contains("line 19999\n") && text.contains("err 19999\n"));
        let err = String::from_utf8(err).unwrap();
        let warnings: Vec<_> = err.lines().filter(|l| l.starts_with("warning:")).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("writing to stdout failed"),
            "{warnings:?}"
        );
        assert_eq!(err.lines().count(), 20_001, "stderr is still forwarded");
    }

    #[test]
    fn an_unwritable_log_still_drains_to_stdout() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("missing/train.log");
        let mut child = Command::new("sh")
            .args(["-c", "echo one; echo two"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = drain_and_wait(&mut child, &log, &mut out, &mut err).unwrap();
        assert!(status.success());
        assert_eq!(out, b"one\ntwo\n");
        assert!(String::from_utf8(err).unwrap().contains("cannot create"));
    }

    fn stat(state: char, start: u64) -> String {
        // The command name may hold spaces and parentheses.
        let mut fields = vec!["0".to_string(); 20];
        fields[22 - 4] = start.to_string();
        format!("4242 (sca (x) train) {state} {}", fields.join(" "))
    }

    #[test]
    fn a_reused_pid_is_not_the_trainer() {
        let ours = b"/w/target/debug/sca-train\0train\0";
        assert_eq!(
            identify(4242, &stat('R', 99), ours, Some(99)),
            Trainer::Running
        );
        // Records older than the start time: the command line decides.
        assert_eq!(identify(4242, &stat('S', 99), ours, None), Trainer::Running);
        // Alive, but another program now.
        let other = identify(4242, &stat('S', 99), b"/usr/bin/vim\0notes\0", Some(99));
        assert!(
            matches!(&other, Trainer::Other(why) if why.contains("/usr/bin/vim notes")),
            "{other:?}"
        );
        let other = identify(4242, &stat('S', 99), b"/usr/bin/vim\0", None);
        assert!(matches!(other, Trainer::Other(_)), "{other:?}");
        // Another sca-train train, started after ours ended.
        let later = identify(4242, &stat('R', 500), ours, Some(99));
        assert!(
            matches!(&later, Trainer::Other(why) if why.contains("tick 500")),
            "{later:?}"
        );
        // Exited, not reaped yet.
        assert_eq!(identify(4242, &stat('Z', 99), b"", Some(99)), Trainer::Gone);
        assert!(matches!(
            identify(4242, "garbage", ours, None),
            Trainer::Other(_)
        ));
    }

    /// A record saved InProgress before its trainer's pid: left to its
    /// launcher while that holds the run's lock (and where no lock tells,
    /// a run of an older xtask); once the launcher is gone, the trainer it
    /// started, found by its `/opt/ml`, is recorded as the run's, and with
    /// none the run is recorded Failed.
    /// While its launcher holds its lock, a run is left to it: a look from
    /// where /proc cannot show its trainer (another pid namespace, another
    /// user) once recorded a training run Failed and dropped its pid.
    #[test]
    fn a_run_whose_launcher_lives_is_not_judged_from_here() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut record = RunRecord::for_tests("exp-0123456-20261208-120000");
        // A pid no trainer of ours has here (an exited process's).
        let mut gone = Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        record.pid = Some(gone.id());
        record.save(root).unwrap();
        std::fs::create_dir_all(record::run_dir(root, &record.job_name).join("opt/ml")).unwrap();
        let launcher = contract::launcher_lock(&record::run_dir(root, &record.job_name)).unwrap();
        refresh(root, &mut record).unwrap();
        assert_eq!(
            (record.status, record.pid),
            (Status::InProgress, Some(gone.id()))
        );
        // Its launcher gone too: the run is settled from here.
        drop(launcher);
        refresh(root, &mut record).unwrap();
        assert_eq!(record.status, Status::Failed, "{record:?}");
    }

    #[test]
    fn a_record_without_a_trainer_pid_is_settled_once_its_launcher_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let saved = |job: &str| {
            let record = RunRecord::for_tests(job);
            record.save(root).unwrap();
            let ml = record::run_dir(root, job).join("opt/ml");
            std::fs::create_dir_all(&ml).unwrap();
            (record, ml)
        };
        let (mut record, ml) = saved("exp-0123456-20261207-120000");
        let run_dir = record::run_dir(root, &record.job_name);
        refresh(root, &mut record).unwrap();
        assert_eq!((record.status, record.pid), (Status::InProgress, None));
        let launcher = contract::launcher_lock(&run_dir).unwrap();
        refresh(root, &mut record).unwrap();
        assert_eq!((record.status, record.pid), (Status::InProgress, None));

        // Its trainer: `sca-train train` (a copy of sh, reading `train`)
        // with the run's /opt/ml, leading its own process group.
        let bin = tempfile::tempdir().unwrap();
        std::fs::copy("/bin/sh", bin.path().join("sca-train")).unwrap();
        std::fs::write(bin.path().join("train"), "sleep 60\n").unwrap();
        let spawn_trainer = |ml: &Path| {
            // A test thread's fork between the copy and its exec holds the
            // copy open for writing a moment (ETXTBSY): tried again.
            let mut tries = 0;
            let child = loop {
                match Command::new(bin.path().join("sca-train"))
                    .arg("train")
                    .current_dir(bin.path())
                    .env("SCA_OPT_ML", ml)
                    .process_group(0)
                    .spawn()
                {
                    Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    r => break r.unwrap(),
                }
            };
            let start = std::time::Instant::now();
            while trainer(child.id(), None).unwrap() != Trainer::Running {
                assert!(start.elapsed() < Duration::from_secs(10));
                std::thread::sleep(Duration::from_millis(20));
            }
            child
        };
        let mut child = spawn_trainer(&ml);
        let pid = child.id();
        let started = crate::procfs::start_time(pid);
        drop(launcher);
        // (Until the lock is seen free: a process another test forks just
        // then holds a copy of it until it execs.)
        let settle = |record: &mut RunRecord| {
            let start = std::time::Instant::now();
            while !record.status.is_terminal() && record.pid.is_none() {
                refresh(root, record).unwrap();
                assert!(start.elapsed() < Duration::from_secs(10));
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        settle(&mut record);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!((record.status, record.pid), (Status::InProgress, Some(pid)));
        assert_eq!(record.pid_start, started);
        assert_eq!(
            RunRecord::load(root, &record.job_name).unwrap().pid,
            Some(pid)
        );

        // Failed, saying `why`, once its launcher (which took the lock) is gone.
        let fails = |mut record: RunRecord, why: &str| {
            drop(contract::launcher_lock(&record::run_dir(root, &record.job_name)).unwrap());
            settle(&mut record);
            assert_eq!(record.status, Status::Failed);
            assert!(
                record
                    .failure_reason
                    .as_deref()
                    .is_some_and(|r| r.contains(why)),
                "{record:?}"
            );
        };
        // Another, whose launcher ended before any trainer started.
        let (record, _) = saved("exp-0123456-20261207-120001");
        fails(
            record,
            "launcher ended before it recorded the trainer's pid",
        );

        // And one whose trainer ran and exited unwatched: its exit code
        // and failure are the record's.
        let (record, ml) = saved("exp-0123456-20261207-120002");
        let opt_ml = sca_spec::contract::OptMl::at(&ml);
        std::fs::create_dir_all(opt_ml.exit_code_file().parent().unwrap()).unwrap();
        std::fs::write(opt_ml.exit_code_file(), "1\n").unwrap();
        std::fs::create_dir_all(ml.join("output")).unwrap();
        std::fs::write(ml.join("output/failure"), "tile 3 is corrupt").unwrap();
        fails(record, "tile 3 is corrupt");

        // `experiment stop` of one whose trainer runs unrecorded: adopted,
        // and sent SIGTERM, not said to have not started.
        let (record, ml) = saved("exp-0123456-20261207-120003");
        let child = spawn_trainer(&ml);
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        drop(contract::launcher_lock(&record::run_dir(root, &record.job_name)).unwrap());
        let reaper = std::thread::spawn(move || {
            let mut child = child;
            child.wait()
        });
        let start = std::time::Instant::now();
        while let Err(e) = stop(root, &record) {
            assert!(start.elapsed() < Duration::from_secs(10), "{e:#}");
            std::thread::sleep(Duration::from_millis(10));
        }
        let ended = reaper.join().unwrap().unwrap();
        // (Its `sleep`, which SIGTERM to the shell leaves running.)
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&ended),
            Some(15)
        );
        let stored = RunRecord::load(root, &record.job_name).unwrap();
        assert_eq!(stored.status, Status::Stopping, "{stored:?}");
    }

    #[test]
    fn this_process_is_named_by_its_start_time() {
        let me = std::process::id();
        let start = crate::procfs::start_time(me).expect("our own /proc/<pid>/stat");
        // Not `sca-train train`, so: another process.
        assert!(matches!(
            trainer(me, Some(start)).unwrap(),
            Trainer::Other(_)
        ));
        assert!(matches!(
            trainer(me, Some(start + 1)).unwrap(),
            Trainer::Other(why) if why.contains("clock tick")
        ));
        assert_eq!(trainer(u32::MAX / 2, None).unwrap(), Trainer::Gone);
    }
}
