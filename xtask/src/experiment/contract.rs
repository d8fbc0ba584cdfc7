//! What every backend shares, below them all: the `/opt/ml` tree SageMaker
//! lays out (written for the local and docker backends), how a trainer's
//! end becomes a status ([`finish`]), the stop grace period, the sink the
//! trainer's output goes to, a run's log and the warm-start model of a
//! local or docker run.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::experiment::plan::Plan;
use crate::experiment::record::{self, Backend, RunRecord, Status};
use crate::fsx;
use sca_spec::contract::{Hyperparameters, OptMl, ResourceConfig};

/// Grace period between SIGTERM and SIGKILL, as SageMaker's.
pub const STOP_GRACE: Duration = Duration::from_secs(120);

/// Lay out `run_dir/opt/ml` as SageMaker does for a single host, from the
/// contract's types (the trainer reads the same ones).
pub fn write_opt_ml(ml: &Path, plan: &Plan, hyper: &Hyperparameters) -> Result<()> {
    let tree = OptMl::at(ml);
    plan.write_config_channel(&tree.config_channel())?;
    fsx::write_atomic(
        &tree.hyperparameters_file(),
        &serde_json::to_vec_pretty(&hyper.to_map())?,
    )?;
    fsx::write_atomic(
        &tree.resource_config_file(),
        &serde_json::to_vec_pretty(&ResourceConfig::single_host())?,
    )?;
    fsx::write_atomic(
        &tree.input_data_config_file(),
        &serde_json::to_vec_pretty(&sca_spec::contract::input_data_config())?,
    )?;
    for d in [tree.model_dir(), tree.output_dir()] {
        std::fs::create_dir_all(d)?;
    }
    fresh_checkpoint_dir(&tree)?;
    Ok(())
}

/// Create `ml/checkpoints`, which must not exist yet. `ml` is inside the run
/// directory that `launch::execute` has just created for this job (`create_dir`,
/// never an existing one), and a rerun is a new job with a new directory,
/// so a local or docker run starts with no checkpoints and can resume only
/// its own (the checkpoints of a previous run stay in that run's directory).
/// Refusing an existing directory keeps it so, should that change.
fn fresh_checkpoint_dir(ml: &OptMl) -> Result<()> {
    let dir = ml.checkpoint_dir();
    std::fs::create_dir(&dir).with_context(|| {
        format!(
            "creating {}: a run's checkpoint directory must be new, so that it resumes no other run's checkpoints",
            dir.display()
        )
    })
}

/// How the trainer ended, as the backend saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code; a signal `s` as `128 + s` (143: SIGTERM, 137: SIGKILL).
    pub code: Option<i64>,
    /// `experiment stop` or Ctrl-C asked for it to stop.
    pub stop_requested: bool,
    /// The engine reports the container killed by the kernel's OOM killer
    /// (docker's `State.OOMKilled`; `None` where nobody can tell).
    pub oom_killed: Option<bool>,
}

/// Why a job whose trainer ended unseen failed: its launcher, which waits
/// for it and records how it ended, was gone (killed, or its terminal
/// closed), and `status` found it ended.
pub const UNRECORDED: &str = "the trainer process exited without recording an outcome (its launcher was gone: killed, or its terminal closed)";

/// The final status and failure reason of a trainer that ended as `exit`,
/// having written `failure` (its `/opt/ml/output/failure`) or not.
fn outcome(exit: Exit, failure: Option<String>) -> (Status, Option<String>) {
    let status = match exit.code {
        Some(0) => Status::Completed,
        // The kernel's end, not the stop's, whatever was asked meanwhile.
        _ if exit.oom_killed == Some(true) => Status::Failed,
        // `None`: gone without a word after a stop request (`status` finding
        // the trainer of a `Stopping` job dead, its launcher gone too).
        Some(143) | Some(137) | None if exit.stop_requested => Status::Stopped,
        _ => Status::Failed,
    };
    let reason = match status {
        Status::Completed => None,
        Status::Stopped => Some("stopped on request".into()),
        _ if exit.oom_killed == Some(true) => Some(format!(
            "killed by the out-of-memory killer (the engine reports OOMKilled){}",
            failure.map_or(String::new(), |f| format!("; the trainer last wrote: {f}"))
        )),
        _ => failure.or_else(|| {
            Some(match exit.code {
                Some(137) => "killed (SIGKILL; out of memory?) without a stop request".into(),
                Some(143) => "terminated (SIGTERM) without a stop request".into(),
                Some(c) => format!("the trainer exited with code {c}"),
                None => UNRECORDED.into(),
            })
        }),
    };
    (status, reason)
}

/// Wait for what stops a local or docker job: Ctrl-C or SIGTERM (`false`;
/// `timeout`, a CI cancel or `kill` would otherwise end the launcher and
/// leave the job running unwatched, past its max_runtime), or its
/// `max_runtime_secs` run out (`true`, and `job`'s record marked so), as
/// SageMaker stops a job there.
pub async fn stop_signal(root: &Path, job: &str, max_runtime_secs: u64) -> bool {
    tokio::select! {
        () = interrupted() => false,
        () = tokio::time::sleep(Duration::from_secs(max_runtime_secs)) => {
            eprint_line(format_args!(
                "\nmax_runtime ({max_runtime_secs} s) reached: the job is stopped, as SageMaker stops it"
            ));
            let _ = RunRecord::mark_max_runtime_exceeded(root, job);
            true
        }
    }
}

/// Ctrl-C or SIGTERM: what stops a local or docker launch, and a sweep's
/// launching. (Once a SIGTERM handler is in, SIGTERM no longer ends the
/// process: every loop that Ctrl-C ends must end on it too.)
///
/// Latched for the process: a signal that came before this call (a sweep's
/// SIGTERM while a point's trainer was still being built, before that
/// point listened) is seen at once, not missed.
pub async fn interrupted() {
    use std::sync::atomic::Ordering;
    let latch = catch_interrupts();
    let notified = latch.1.notified();
    tokio::pin!(notified);
    // Registered before the flag is read: a signal in between still wakes it.
    notified.as_mut().enable();
    if latch.0.load(Ordering::SeqCst) {
        return;
    }
    notified.await;
}

/// The latch [`interrupted`] reads, its listener started (once) before
/// this returns: from here on Ctrl-C and SIGTERM no longer end the process
/// but are latched. A launcher calls it before it starts what it then
/// watches, so that no signal in between goes by.
pub fn catch_interrupts() -> &'static (std::sync::atomic::AtomicBool, tokio::sync::Notify) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;
    use tokio::sync::Notify;
    static LATCH: OnceLock<(AtomicBool, Notify)> = OnceLock::new();
    let mut first = false;
    let latch = LATCH.get_or_init(|| {
        first = true;
        (AtomicBool::new(false), Notify::new())
    });
    if first {
        // On a thread of its own, so that it outlives the runtime of the
        // command that first asked (the signal handlers stay in for the
        // process: this listener must too).
        let (registered, ready) = std::sync::mpsc::channel::<()>();
        let listen = async move {
            use tokio::signal::unix::{signal, SignalKind};
            let int = signal(SignalKind::interrupt());
            let term = signal(SignalKind::terminate());
            let _ = registered.send(());
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(int) => {}
                () = wait(term) => {}
            }
            latch.0.store(true, Ordering::SeqCst);
            latch.1.notify_waiters();
        };
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(listen);
                }
            });
        // In before this returns: a signal from now on is latched.
        if spawned.is_ok() {
            let _ = ready.recv();
        }
    }
    latch
}

/// The lock a local or docker launcher holds on its run directory while it
/// launches and follows the run ([`launcher_gone`]).
pub fn launcher_lock(run_dir: &Path) -> Result<std::fs::File> {
    let path = run_dir.join("launcher.lock");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("creating the lock file {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// Whether the launcher of the run in `run_dir` has ended: its lock is
/// free. `None` where it cannot be told (a run of an xtask before the lock).
pub fn launcher_gone(run_dir: &Path) -> Result<Option<bool>> {
    let path = run_dir.join("launcher.lock");
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(true)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(Some(false)),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// How a look at a job past its `max_runtime`, whose launcher is gone,
/// stops it ([`overrun`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overrun {
    /// SIGTERM: the first look past the limit.
    Term,
    /// SIGKILL: a look once the grace period has passed since the SIGTERM.
    Kill,
}

/// The file whose time says when a look sent a job SIGTERM at its
/// `max_runtime` (see [`overrun`]).
const OVERRUN_SIGTERM: &str = "max-runtime-sigterm";

/// What a look at `record`, a job that has run for `age` with no launcher
/// left to stop it at its `max_runtime` (killed), must send it, as the
/// launcher would have: the first look past the limit marks the record
/// `MaxRuntimeExceeded` (so its end is recorded `Stopped`, as SageMaker
/// records it) and sends SIGTERM, which [`overran`] notes beside the
/// record once sent; a look once [`STOP_GRACE`] has passed since sends
/// SIGKILL; other looks nothing. `record` is left as marked.
pub fn overrun(root: &Path, record: &mut RunRecord, age: Duration) -> Result<Option<Overrun>> {
    if record.status.is_terminal()
        || age < Duration::from_secs(record.resolved_job.max_runtime_secs)
    {
        return Ok(None);
    }
    let sent = record::run_dir(root, &record.job_name).join(OVERRUN_SIGTERM);
    match std::fs::metadata(&sent).and_then(|m| m.modified()) {
        Ok(at) => Ok(at
            .elapsed()
            .is_ok_and(|since| since >= STOP_GRACE)
            .then_some(Overrun::Kill)),
        Err(_) => {
            // A stop asked for first (`experiment stop`, Ctrl-C: `Stopping`)
            // stays the reason, as SageMaker keeps a StopTrainingJob's; the
            // signals still come, in case that stop was cut short.
            (*record, ()) = RunRecord::update(root, &record.job_name, |r| {
                if !r.status.is_terminal() && r.status != Status::Stopping {
                    r.status = Status::Stopping;
                    r.secondary_status = Some(record::MAX_RUNTIME_EXCEEDED.into());
                }
                Ok(())
            })?;
            if record.status.is_terminal() {
                return Ok(None); // recorded ended meanwhile
            }
            Ok(Some(Overrun::Term))
        }
    }
}

/// Note that `what` of `job`, run for `age`, was sent `step`'s signal
/// ([`overrun`]), and say so. Only a SIGTERM sent is noted: one that could
/// not be sent is tried again by the next look, and the grace period
/// before a SIGKILL counts from one that was.
pub fn overran(
    root: &Path,
    job: &str,
    what: &str,
    age: Duration,
    max_runtime_secs: u64,
    step: Overrun,
) {
    if step == Overrun::Term {
        let sent = record::run_dir(root, job).join(OVERRUN_SIGTERM);
        if let Err(e) = fsx::write_atomic(&sent, record::now().as_bytes()) {
            // The next look sends SIGTERM again, which does no harm.
            eprint_line(format_args!("warning: writing {}: {e}", sent.display()));
        }
    }
    let (signal, next) = match step {
        Overrun::Term => (
            "SIGTERM",
            format!(
                "; a look from {} s on sends SIGKILL if it has not ended",
                STOP_GRACE.as_secs()
            ),
        ),
        Overrun::Kill => ("SIGKILL, its SIGTERM having gone unanswered", String::new()),
    };
    eprint_line(format_args!(
        "{job}: {what} has run {} s, past max_runtime ({max_runtime_secs} s), and its launcher is gone: sent {signal}, as SageMaker stops a job there{next}",
        age.as_secs()
    ));
}

/// Status, failure reason and final metrics from a finished `/opt/ml` tree
/// and how the trainer ended. Only a requested stop is `Stopped`: a trainer
/// killed otherwise (the OOM killer's SIGKILL, a stray SIGTERM) `Failed`,
/// and the reason says by what.
pub fn finish(record: &mut RunRecord, ml: &Path, exit: Exit) {
    // When it ended, not when its end was noticed (a `status` days later,
    // for a run whose launcher died, which would pass for the newest run):
    // as the trainer wrote its exit code, where it left one.
    let exited = std::fs::metadata(OptMl::at(ml).exit_code_file())
        .and_then(|m| m.modified())
        .ok()
        .and_then(record::rfc3339);
    record.finished = Some(exited.unwrap_or_else(record::now));
    let failure = std::fs::read_to_string(ml.join("output/failure"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    (record.status, record.failure_reason) = outcome(exit, failure);
    if record.secondary_status.as_deref() == Some(record::MAX_RUNTIME_EXCEEDED) {
        if record.status == Status::Stopped {
            record.failure_reason = Some(format!(
                "stopped at max_runtime ({} s), as SageMaker stops a job ({})",
                record.resolved_job.max_runtime_secs,
                record::MAX_RUNTIME_EXCEEDED
            ));
        } else {
            // It ended on its own before the stop reached it.
            record.secondary_status = None;
        }
    }
    record.final_metrics = std::fs::read(ml.join("model/metrics.json"))
        .map(|b| record::final_metrics(&b))
        .unwrap_or_default();
    record.pid = None;
    record.pid_start = None;
}

/// The model of experiment `name`'s newest completed local or docker run
/// (`init_checkpoint = "experiment:<name>"` on those backends).
pub fn latest_host_model(root: &Path, name: &str) -> Result<String> {
    let run = RunRecord::all(root)
        .into_iter()
        .filter(|r| r.experiment == name && r.status == Status::Completed && r.backend != Backend::Sagemaker)
        .max_by(|a, b| a.finished.cmp(&b.finished))
        .with_context(|| format!("model.init_checkpoint names experiment `{name}`, which has no completed local or docker run: run it first"))?;
    let model = run.model_dir(root).join("model.safetensors");
    if !model.is_file() {
        bail!(
            "model.init_checkpoint names experiment `{name}`: its newest run {} has no {}",
            run.job_name,
            model.display()
        );
    }
    eprintln!("warm start from {}: {}", run.job_name, model.display());
    Ok(model.display().to_string())
}

/// Print a local or docker run's `train.log`; with `follow`, until the job
/// ends: as its launcher records it, or, unless that launcher is seen
/// holding its lock, as `refresh` (the backend's `status`) finds it, since
/// nobody else records it then. (While the launcher lives it copies the
/// log's last lines before it records the end: a refresh here would end
/// the following before them, and take a docker run's container from
/// under it.)
pub async fn print_log<F, Fut>(
    root: &Path,
    record: &RunRecord,
    follow: bool,
    mut refresh: F,
) -> Result<()>
where
    F: FnMut(RunRecord) -> Fut,
    Fut: std::future::Future<Output = Result<RunRecord>>,
{
    let run_dir = record::run_dir(root, &record.job_name);
    let path = run_dir.join("train.log");
    let mut offset = 0u64;
    let mut warned = false;
    loop {
        let (printed, reader_gone) = print_from(&path, offset)?;
        offset += printed;
        let mut current = RunRecord::load(root, &record.job_name)?;
        if follow
            && !current.status.is_terminal()
            && launcher_gone(&run_dir).ok().flatten() != Some(false)
        {
            match refresh(current.clone()).await {
                Ok(refreshed) => current = refreshed,
                Err(e) if !warned => {
                    warned = true;
                    eprint_line(format_args!(
                        "warning: the run's state cannot be read ({e:#}): following its log until its record ends"
                    ));
                }
                Err(_) => {}
            }
        }
        // A reader gone (`logs --follow JOB | head`) ends the following,
        // once the look above has recorded a dead launcher's end.
        if reader_gone {
            return Ok(());
        }
        if !follow || current.status.is_terminal() {
            // One last read: lines written just before the end.
            print_from(&path, offset)?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Print `path` from byte `offset`: how many bytes were read, and whether
/// stdout's reader is gone (they were dropped).
fn print_from(path: &Path, offset: u64) -> Result<(u64, bool)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, false)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    // A reader gone (`logs JOB | head`) is no error: said, not raised.
    let mut out = std::io::stdout().lock();
    match out.write_all(&buf).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok((buf.len() as u64, true)),
        Err(e) => Err(e.into()),
        Ok(()) => Ok((buf.len() as u64, false)),
    }
}

/// A line on stderr, dropped if stderr is closed: a launcher whose terminal
/// went away (`2>&1 | head`, SIGHUP) must still record the job's end, where
/// `eprintln!` would panic.
pub fn eprint_line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// A line on stdout, dropped if stdout's reader is gone (`list | head`),
/// where `println!` would panic; any other failure (a full disk under
/// `> out.json`) is the error, never a success with the output lost.
pub fn print_line(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// A destination of the trainer's output, dropped at its first failure.
pub struct Sink<W> {
    to: Option<W>,
    what: String,
}

impl<W: Write> Sink<W> {
    pub fn new(to: W, what: String) -> Self {
        Sink::optional(Some(to), what)
    }

    /// A sink that may have nowhere to write from the start (`None`).
    pub fn optional(to: Option<W>, what: String) -> Self {
        Sink { to, what }
    }

    /// Write `bytes`; at the first failure, drop the destination and say why.
    pub fn put(&mut self, bytes: &[u8]) -> Option<String> {
        let to = self.to.as_mut()?;
        let e = to.write_all(bytes).and_then(|()| to.flush()).err()?;
        self.to = None;
        Some(format!("{} failed ({e})", self.what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job past its max_runtime with no launcher: SIGTERM from the first
    /// look past it (the record marked, so its end is recorded Stopped),
    /// nothing from the looks in the grace period after, SIGKILL from one
    /// after it, counted from the SIGTERM, not from the start.
    #[test]
    fn a_job_overrunning_max_runtime_gets_sigterm_once_then_sigkill_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let job = "exp-0123456-20261208-120000";
        let mut record = RunRecord::for_tests(job);
        assert_eq!(record.resolved_job.max_runtime_secs, 60);
        record.save(root).unwrap();
        let secs = Duration::from_secs;
        assert_eq!(overrun(root, &mut record, secs(59)).unwrap(), None);
        assert_eq!(
            RunRecord::load(root, job).unwrap().status,
            Status::InProgress
        );
        // First looked at long after the limit and the grace: SIGTERM all
        // the same, so that the trainer keeps the model trained so far.
        let late = secs(60) + STOP_GRACE * 10;
        assert_eq!(
            overrun(root, &mut record, late).unwrap(),
            Some(Overrun::Term)
        );
        for r in [&record, &RunRecord::load(root, job).unwrap()] {
            assert_eq!(r.status, Status::Stopping);
            assert_eq!(
                r.secondary_status.as_deref(),
                Some(record::MAX_RUNTIME_EXCEEDED)
            );
        }
        // Not sent (refused, the trainer gone meanwhile): asked again.
        assert_eq!(
            overrun(root, &mut record, late).unwrap(),
            Some(Overrun::Term)
        );
        overran(root, job, "its trainer", late, 60, Overrun::Term);
        assert_eq!(
            overrun(root, &mut record, late).unwrap(),
            None,
            "one SIGTERM"
        );
        let sent = record::run_dir(root, job).join(OVERRUN_SIGTERM);
        let before = std::time::SystemTime::now() - STOP_GRACE - secs(1);
        std::fs::File::options()
            .write(true)
            .open(&sent)
            .and_then(|f| f.set_modified(before))
            .unwrap();
        assert_eq!(
            overrun(root, &mut record, late).unwrap(),
            Some(Overrun::Kill)
        );
        // Recorded ended meanwhile: left alone.
        record.status = Status::Stopped;
        assert_eq!(overrun(root, &mut record, late).unwrap(), None);

        // Asked to stop first (its `experiment stop` cut short): signalled
        // all the same, and the request stays the reason.
        let asked = "exp-0123456-20261208-120001";
        let mut record = RunRecord::for_tests(asked);
        record.status = Status::Stopping;
        record.save(root).unwrap();
        assert_eq!(
            overrun(root, &mut record, late).unwrap(),
            Some(Overrun::Term)
        );
        let stored = RunRecord::load(root, asked).unwrap();
        assert_eq!(
            (stored.status, stored.secondary_status),
            (Status::Stopping, None)
        );
    }

    fn exit(code: i64, stop_requested: bool, oom_killed: Option<bool>) -> Exit {
        Exit {
            code: Some(code),
            stop_requested,
            oom_killed,
        }
    }

    /// A run ends when its trainer wrote its exit code, however much later
    /// a `status` notices it; without one, when noticed.
    #[test]
    fn a_run_ends_when_its_trainer_exited_not_when_that_is_noticed() {
        let ml = tempfile::tempdir().unwrap();
        let opt_ml = sca_spec::contract::OptMl::at(ml.path());
        let mut r = RunRecord::for_tests("exp-0123456-20261126-120000");
        finish(&mut r, ml.path(), exit(1, false, None));
        let noticed = humantime::parse_rfc3339(r.finished.as_deref().unwrap()).unwrap();
        let age = std::time::SystemTime::now()
            .duration_since(noticed)
            .unwrap();
        assert!(age < Duration::from_secs(60), "{:?}", r.finished);
        std::fs::create_dir_all(opt_ml.output_dir()).unwrap();
        std::fs::write(opt_ml.exit_code_file(), "0\n").unwrap();
        let exited = humantime::parse_rfc3339("2026-11-26T13:00:00Z").unwrap();
        std::fs::File::options()
            .append(true)
            .open(opt_ml.exit_code_file())
            .and_then(|f| f.set_modified(exited))
            .unwrap();
        let mut r = RunRecord::for_tests("exp-0123456-20261126-120000");
        finish(&mut r, ml.path(), exit(0, false, None));
        assert_eq!(r.finished.as_deref(), Some("2026-11-26T13:00:00Z"));
    }

    /// A job stopped at its max_runtime says so; one that ended on its own
    /// before the stop reached it keeps no `MaxRuntimeExceeded`.
    #[test]
    fn a_max_runtime_stop_is_named_and_only_on_a_stopped_job() {
        let ml = tempfile::tempdir().unwrap();
        let timed_out = || {
            let mut r = RunRecord::for_tests("exp-0123456-20261126-120000");
            r.status = Status::Stopping;
            r.secondary_status = Some(record::MAX_RUNTIME_EXCEEDED.into());
            r
        };
        let mut stopped = timed_out();
        finish(&mut stopped, ml.path(), exit(143, true, None));
        assert_eq!(stopped.status, Status::Stopped);
        assert!(
            stopped
                .failure_reason
                .as_deref()
                .is_some_and(|r| r.contains("stopped at max_runtime (60 s)")),
            "{stopped:?}"
        );
        let mut done = timed_out();
        finish(&mut done, ml.path(), exit(0, true, None));
        assert_eq!(
            (done.status, done.secondary_status),
            (Status::Completed, None)
        );
    }

    /// Two runs of one experiment, even in the same second (a run and its
    /// rerun), get two new run directories and so two empty checkpoint
    /// directories; a checkpoint directory that exists already is refused.
    #[test]
    fn every_run_starts_with_a_new_empty_checkpoint_directory() {
        let root = tempfile::tempdir().unwrap();
        let name_at = |t| sca_spec::job_name("exp", "0123456789", t);
        let first = record::reserve_run_dir(root.path(), name_at).unwrap();
        let ml = record::run_dir(root.path(), &first).join("opt/ml");
        std::fs::create_dir_all(&ml).unwrap();
        let ml = OptMl::at(ml);
        fresh_checkpoint_dir(&ml).unwrap();
        std::fs::write(
            ml.checkpoint_dir()
                .join("checkpoint-e00001-s000000.safetensors"),
            b"x",
        )
        .unwrap();
        let again = fresh_checkpoint_dir(&ml).unwrap_err();
        assert!(
            format!("{again:#}")
                .contains("must be new, so that it resumes no other run's checkpoints"),
            "{again:#}"
        );

        let second = record::reserve_run_dir(root.path(), name_at).unwrap();
        assert_ne!(first, second);
        let ml = record::run_dir(root.path(), &second).join("opt/ml");
        std::fs::create_dir_all(&ml).unwrap();
        let ml = OptMl::at(ml);
        fresh_checkpoint_dir(&ml).unwrap();
        assert_eq!(std::fs::read_dir(ml.checkpoint_dir()).unwrap().count(), 0);
    }

    #[test]
    fn only_a_requested_stop_is_stopped() {
        assert_eq!(
            outcome(exit(0, false, None), None),
            (Status::Completed, None)
        );
        for code in [137, 143] {
            assert_eq!(
                outcome(exit(code, true, None), None),
                (Status::Stopped, Some("stopped on request".into()))
            );
        }
        // A SIGKILL nobody asked for (5215846 recorded it as stopped on request).
        let (status, why) = outcome(exit(137, false, None), None);
        assert_eq!(status, Status::Failed);
        assert_eq!(
            why.as_deref(),
            Some("killed (SIGKILL; out of memory?) without a stop request")
        );
        let (status, why) = outcome(exit(143, false, None), None);
        assert_eq!(status, Status::Failed);
        assert!(why.unwrap().contains("SIGTERM"));
    }

    #[test]
    fn the_engines_oom_flag_and_the_trainers_failure_are_the_reason() {
        // With a stop asked for meanwhile too: the kernel ended it.
        for stop_requested in [false, true] {
            let (status, why) = outcome(exit(137, stop_requested, Some(true)), None);
            assert_eq!(status, Status::Failed);
            assert!(why.unwrap().contains("out-of-memory killer"));
        }
        let (_, why) = outcome(exit(1, false, Some(false)), Some("bad tile x".into()));
        assert_eq!(why.as_deref(), Some("bad tile x"));
        let (_, why) = outcome(exit(2, false, None), None);
        assert_eq!(why.as_deref(), Some("the trainer exited with code 2"));
    }

    #[test]
    fn a_trainer_that_ended_unseen_failed_unless_asked_to_stop() {
        let unseen = |stop_requested| Exit {
            code: None,
            stop_requested,
            oom_killed: None,
        };
        assert_eq!(
            outcome(unseen(false), None),
            (Status::Failed, Some(UNRECORDED.into()))
        );
        assert_eq!(outcome(unseen(true), None).0, Status::Stopped);
        // What the trainer wrote before it went is the better reason.
        let (status, why) = outcome(unseen(false), Some("bad tile x".into()));
        assert_eq!(
            (status, why.as_deref()),
            (Status::Failed, Some("bad tile x"))
        );
    }
}
