//! Launching a [`Plan`] on its backend: the run directory claimed (so two
//! launches never share a job name), the backend run, the outcome printed
//! as an exit code; and [`backend`], the one place that maps a record's
//! backend to its implementation.
//!
//! Every backend gets the same `config` channel (the experiment file,
//! `manifest.json` and `experiment.resolved.json`) and the same job pins as hyperparameters (job name,
//! commit, image digest, data manifest: the trainer resumes only checkpoints
//! of its own job), and leaves the same [`RunRecord`]; `local` and `docker`
//! lay the `/opt/ml` tree out in the run's new directory the way SageMaker
//! does, with an empty `checkpoints/`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::experiment::backend;
#[cfg(feature = "full")]
use crate::experiment::docker::DockerBackend;
use crate::experiment::local::LocalBackend;
use crate::experiment::plan::{LaunchOptions, Plan};
use crate::experiment::record::{self, Backend, RunRecord, Status};
#[cfg(feature = "full")]
use crate::experiment::sagemaker::SagemakerBackend;

/// The implementation of `backend`.
pub fn backend(kind: Backend) -> &'static dyn backend::Backend {
    match kind {
        Backend::Local => &LocalBackend,
        #[cfg(feature = "full")]
        Backend::Docker => &DockerBackend,
        #[cfg(feature = "full")]
        Backend::Sagemaker => &SagemakerBackend,
        #[cfg(not(feature = "full"))]
        Backend::Docker => &backend::Unavailable(Backend::Docker),
        #[cfg(not(feature = "full"))]
        Backend::Sagemaker => &backend::Unavailable(Backend::Sagemaker),
    }
}

/// A run pinned exactly as a plan: launching the plan would repeat it.
#[derive(Debug)]
pub enum Twin {
    /// It completed: its record is the plan's result (memoized).
    Completed(RunRecord),
    /// It runs now, looked at on its backend (so a record whose launcher
    /// died is not taken for a running job); or its record says so and it
    /// was not looked at (a dry run changes nothing), or could not be (the
    /// why).
    Running(RunRecord, Option<String>),
}

/// `plan`'s twin on its backend, if it has one; `look`: ask the backend how
/// a twin its record calls running is (which may record its end).
///
/// Only runs that have a record are seen: one still being prepared (its
/// trainer or image building, its SageMaker create waiting for quota) is not.
pub async fn twin(root: &Path, plan: &Plan, aws: &crate::aws::Session, look: bool) -> Option<Twin> {
    if let Some(done) = RunRecord::completed_twin(root, plan.backend, &plan.pins) {
        return Some(Twin::Completed(done));
    }
    let mut running = RunRecord::running_twin(root, plan.backend, &plan.pins)?;
    if !look {
        return Some(Twin::Running(
            running,
            Some("as recorded; not looked at".into()),
        ));
    }
    if let Err(e) = backend(running.backend)
        .refresh(root, &mut running, aws)
        .await
    {
        let why = format!("its state cannot be read now: {e:#}");
        return Some(Twin::Running(running, Some(why)));
    }
    match running.status {
        Status::Completed => Some(Twin::Completed(running)),
        s if s.is_terminal() => None,
        _ => Some(Twin::Running(running, None)),
    }
}

/// Run `plan` on its backend; the final record and the exit code.
pub async fn execute(
    root: &Path,
    mut plan: Plan,
    opts: &LaunchOptions,
) -> Result<(RunRecord, ExitCode)> {
    if !opts.dry_run {
        // Off the async threads: a name taken this second waits for the next.
        let (name, commit) = (
            plan.experiment.experiment.name.clone(),
            plan.pins.commit.clone(),
        );
        let runs_root = root.to_path_buf();
        plan.job_name = tokio::task::spawn_blocking(move || {
            record::reserve_run_dir(&runs_root, |at| sca_spec::job_name(&name, &commit, at))
        })
        .await??;
    }
    let launched = backend(plan.backend).launch(root, &plan, opts).await;
    let record = match launched {
        Ok(record) => record,
        Err(e) => {
            // A launch that failed before writing anything leaves no
            // directory behind (`remove_dir` removes only an empty one).
            let _ = std::fs::remove_dir(record::run_dir(root, &plan.job_name));
            return Err(e);
        }
    };
    let Some(record) = record else {
        return Ok((
            plan.record(&Default::default(), String::new(), String::new()),
            ExitCode::SUCCESS,
        ));
    };
    let code = report(root, &record, opts.json);
    Ok((record, code))
}

/// Print the outcome; the exit code it means.
pub fn report(root: &Path, record: &RunRecord, json: bool) -> ExitCode {
    if json {
        // Ignoring a closed stdout (`| head`): the record is written, and
        // the exit code below says how the job ended.
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string(record).expect("records serialize")
        );
    }
    eprintln!(
        "{}: {} (record: {})",
        record.job_name,
        record.status,
        record::run_dir(root, &record.job_name)
            .join("record.json")
            .display()
    );
    match record.status {
        Status::Completed | Status::InProgress | Status::Stopping => ExitCode::SUCCESS,
        Status::Failed | Status::Stopped => {
            if let Some(r) = &record.failure_reason {
                eprintln!(
                    "error: {} {}: {r}",
                    record.job_name,
                    record.status.to_string().to_lowercase()
                );
            }
            ExitCode::FAILURE
        }
    }
}
