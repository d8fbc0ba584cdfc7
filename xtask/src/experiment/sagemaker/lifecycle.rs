//! A SageMaker job's lifecycle after launch: its state from
//! `DescribeTrainingJob` into the record, followed to the end, its
//! CloudWatch log, stop, its `model.tar.gz` fetched, and the newest
//! completed job of an experiment (a warm start's model).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_sagemaker::types as sm;

use crate::aws::Session;
use crate::experiment::artifacts::{self, Unpacked};
use crate::experiment::record::{self, RunRecord};
use crate::experiment::sagemaker::client::{
    describe, describe_with_tags, save_everywhere, sdk_error, split_s3, upload_record, Clients,
};
use crate::experiment::sagemaker::request::{stop_request, TAG_EXPERIMENT};

/// SageMaker's CloudWatch Logs group for training jobs.
pub const LOG_GROUP: &str = "/aws/sagemaker/TrainingJobs";

/// The clients for the region `record`'s job runs in (or `--region`).
async fn clients(record: &RunRecord, aws: &Session) -> Result<Clients> {
    Clients::new(aws, Some(&record.resolved_job.region)).await
}

/// `experiment status`: the record refreshed from SageMaker, and saved
/// locally and in S3 (where no copy has ended meanwhile: `record` is then
/// that copy). A claim its launch kept in the config bucket for want of
/// that copy is let go.
pub async fn status(root: &Path, record: &mut RunRecord, aws: &Session) -> Result<()> {
    let clients = clients(record, aws).await?;
    refresh(&clients, record, &mut 0).await?;
    save_everywhere(root, &clients, record).await?;
    super::lease::let_go_recorded(&clients, record).await;
    Ok(())
}

/// `experiment logs`: the job's CloudWatch log; with `follow`, until it ends.
pub async fn logs(record: &RunRecord, follow: bool, aws: &Session) -> Result<()> {
    let clients = clients(record, aws).await?;
    let mut cursor = LogCursor::default();
    let mut record = record.clone();
    let job = record.job_name.clone();
    let unread = |e: String| anyhow::anyhow!("reading the CloudWatch log of {job}: {e}");
    let mut failed = 0;
    loop {
        if !follow {
            let read = cursor.print_new(&clients.logs, &job).await;
            cursor.written()?;
            return match read {
                Some(e) => Err(unread(e)),
                None => Ok(()),
            };
        }
        if let Some(e) = cursor.print_new(&clients.logs, &job).await {
            crate::experiment::contract::eprint_line(format_args!(
                "warning: {}: reading it again",
                unread(e)
            ));
        }
        // Its reader gone (`logs --follow JOB | head`): nothing to follow for.
        if !cursor.written()? {
            return Ok(());
        }
        // As `follow` does ([`look_failed`]).
        match refresh(&clients, &mut record, &mut 0).await {
            Ok(_) => failed = 0,
            Err(e) => look_failed(
                e,
                &mut failed,
                &format!("`cargo xtask experiment logs --follow {job}` follows it again"),
            )?,
        }
        if record.status.is_terminal() {
            let read = cursor.print_rest(&clients.logs, &job).await;
            cursor.written()?;
            return match read {
                Some(e) => Err(unread(e)),
                None => Ok(()),
            };
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// `experiment stop`: `StopTrainingJob`, and the record marked `Stopping`.
pub async fn stop(root: &Path, record: &RunRecord, aws: &Session) -> Result<()> {
    let clients = clients(record, aws).await?;
    stop_request(&clients.sagemaker, &record.job_name)
        .send()
        .await
        .map_err(|e| sdk_error(e, &format!("stopping {}", record.job_name)))?;
    // Marked on the record as it is now, not on the copy read before the
    // stop: the job may have ended meanwhile, and its end stands.
    let record = RunRecord::mark_stopping(root, &record.job_name)?;
    if let Some(there) = upload_record(&clients, &record).await? {
        // It ended meanwhile, recorded from another machine.
        there.save_unless_ended(root)?;
    }
    eprintln!("asked SageMaker to stop {}", record.job_name);
    Ok(())
}

/// `experiment fetch`: the job's `model.tar.gz` unpacked into `dir`.
pub async fn fetch_model(record: &RunRecord, dir: &Path, aws: &Session) -> Result<Unpacked> {
    let clients = clients(record, aws).await?;
    fetch(&clients, &record.artifacts, dir).await
}

/// The model of experiment `name`'s newest completed training job, in the
/// region of `job` (or `--region`).
pub async fn warm_start(name: &str, job: &sca_spec::ResolvedJob, aws: &Session) -> Result<String> {
    let region = aws.region_or(&job.region);
    let clients = Clients::new(aws, Some(&region)).await?;
    let (job, model) = latest_model(&clients.sagemaker, name)
        .await?
        .with_context(|| format!("model.init_checkpoint names experiment `{name}`, which has no completed SageMaker training job with a model in {region}: run it first with --backend sagemaker, or set init_checkpoint to an s3:// model"))?;
    eprintln!("warm start from {job}: {model}");
    Ok(model)
}

/// The newest completed training job of experiment `name` that left a model:
/// `(job, model.tar.gz URI)`. Jobs are found by their name's `<name>-` prefix
/// and kept only when their `sca:experiment` tag is `name`, since a longer
/// experiment name may start with this one.
pub async fn latest_model(
    client: &aws_sdk_sagemaker::Client,
    name: &str,
) -> Result<Option<(String, String)>> {
    let prefix = format!("{name}-");
    let mut listed = client
        .list_training_jobs()
        .name_contains(&prefix)
        .status_equals(sm::TrainingJobStatus::Completed)
        .sort_by(sm::SortBy::CreationTime)
        .sort_order(sm::SortOrder::Descending)
        .max_results(100)
        .into_paginator()
        .items()
        .send();
    let mut jobs = Vec::new();
    while let Some(j) = listed.next().await {
        let j = j.map_err(|e| sdk_error(e, &format!("listing the training jobs of `{name}`")))?;
        if let Some(job) = j.training_job_name().filter(|n| n.starts_with(&prefix)) {
            let created = j.creation_time().map(|t| (t.secs(), t.subsec_nanos()));
            jobs.push((created, job.to_string()));
        }
    }
    jobs.sort_by(|a, b| b.cmp(a));
    for (_, job) in jobs {
        let state = describe_with_tags(client, &job).await?;
        if state.tags.get(TAG_EXPERIMENT).map(String::as_str) == Some(name) {
            if let Some(model) = state.model_artifacts {
                return Ok(Some((job, model)));
            }
        }
    }
    Ok(None)
}

/// Refresh `record` from `DescribeTrainingJob`; the new secondary-status
/// transitions since `seen`.
pub async fn refresh(
    clients: &Clients,
    record: &mut RunRecord,
    seen: &mut usize,
) -> Result<Vec<(String, String)>> {
    let state = describe(&clients.sagemaker, &record.job_name).await?;
    if let Some(s) = state.status {
        record.status = s;
    }
    record.secondary_status = state.secondary.clone();
    record.failure_reason = state.failure_reason.clone();
    if let Some(m) = state.model_artifacts {
        record.artifacts = m;
    }
    if !state.final_metrics.is_empty() {
        record.final_metrics = serde_json::Value::Object(state.final_metrics.clone());
    }
    if record.status.is_terminal() && record.finished.is_none() {
        // SageMaker's end, not when this look happened (a `status` days
        // later would stretch the job's duration by days).
        record.finished = Some(state.ended.clone().unwrap_or_else(record::now));
    }
    if let Some((training, billable)) = state.billed_secs.filter(|_| record.status.is_terminal()) {
        record.cost = Some(record::Billed::new(
            &record.resolved_job,
            training,
            billable,
        ));
    }
    let new = state.transitions.get(*seen..).unwrap_or_default().to_vec();
    *seen = state.transitions.len();
    Ok(new)
}

/// Poll with backoff until the job ends, printing status transitions and
/// log lines as they come.
pub async fn follow(root: &Path, clients: &Clients, record: &mut RunRecord) -> Result<()> {
    let mut seen = 0;
    let mut logs = LogCursor::default();
    let mut delay = Duration::from_secs(2);
    let mut failed = 0;
    loop {
        match refresh(clients, record, &mut seen).await {
            Ok(transitions) => {
                failed = 0;
                for (status, message) in transitions {
                    crate::experiment::contract::eprint_line(format_args!(
                        "{}: {status}: {message}",
                        record.job_name
                    ));
                }
            }
            Err(e) => look_failed(
                e,
                &mut failed,
                &format!(
                    "`cargo xtask experiment status {}` looks again",
                    record.job_name
                ),
            )?,
        }
        if record.status.is_terminal() {
            // Its last lines (the trainer's error, for a failed job) are
            // read now or not by this command.
            if let Some(e) = logs.print_rest(&clients.logs, &record.job_name).await {
                crate::experiment::contract::eprint_line(format_args!(
                    "warning: the last lines of the job's CloudWatch log could not be read ({e}): `cargo xtask experiment logs {}` reads them",
                    record.job_name
                ));
            }
            break;
        }
        if let Some(e) = logs.print_new(&clients.logs, &record.job_name).await {
            crate::experiment::contract::eprint_line(format_args!(
                "warning: the job's CloudWatch log could not be read ({e}): reading it again"
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 3 / 2).min(Duration::from_secs(30));
    }
    save_everywhere(root, clients, record).await
}

/// How many failed looks in a row `follow` (`run --wait`) and `logs
/// --follow` tolerate.
const FOLLOW_FAILURES: u32 = 5;

/// A look at a followed job that failed past the SDK's own retries
/// (throttling, a dropped connection): a job runs for hours, so it is said
/// and looked at again, unless [`FOLLOW_FAILURES`] in a row failed; then
/// the error, with `again` (what looks again).
fn look_failed(e: anyhow::Error, failed: &mut u32, again: &str) -> Result<()> {
    if *failed < FOLLOW_FAILURES {
        *failed += 1;
        crate::experiment::contract::eprint_line(format_args!(
            "warning: {e:#}; looking again ({failed} of {FOLLOW_FAILURES})"
        ));
        return Ok(());
    }
    Err(e.context(format!(
        "{FOLLOW_FAILURES} looks in a row failed; the job goes on: {again}"
    )))
}

/// The most pages read from one stream in one call (10 000 events or 1 MB
/// each); the rest comes at the next call.
const MAX_LOG_PAGES: usize = 1000;

/// Where `experiment logs` is in each of a job's CloudWatch streams.
#[derive(Debug, Default)]
pub struct LogCursor {
    tokens: BTreeMap<String, String>,
    /// The first write to stdout that failed (its lines are dropped since).
    unwritten: Option<std::io::Error>,
}

impl LogCursor {
    /// Whether every line so far reached stdout: `false` once its reader
    /// is gone; any other failed write (a full disk under `> log`) is the
    /// error, never a success with the lines lost.
    pub fn written(&mut self) -> Result<bool> {
        match self.unwritten.take() {
            None => Ok(true),
            Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.unwritten = Some(e);
                Ok(false)
            }
            Some(e) => Err(e).context("writing the log to stdout"),
        }
    }

    /// Print the log lines new since the last call; why some could not be
    /// read, if so (they come at a later call).
    pub async fn print_new(
        &mut self,
        logs: &aws_sdk_cloudwatchlogs::Client,
        job: &str,
    ) -> Option<String> {
        let (lines, failed) = self.next(logs, job).await;
        // A failed write is kept for `logs` to end on (its reader gone) or
        // fail with (a full disk); `run --wait` follows the job regardless.
        let mut out = std::io::stdout().lock();
        for line in lines {
            if self.unwritten.is_some() {
                break;
            }
            if let Err(e) = writeln!(out, "{line}") {
                self.unwritten = Some(e);
            }
        }
        failed
    }

    /// [`Self::print_new`] once the job has ended, tried again where it
    /// fails (3 tries, 2 s apart): nothing reads after it.
    pub async fn print_rest(
        &mut self,
        logs: &aws_sdk_cloudwatchlogs::Client,
        job: &str,
    ) -> Option<String> {
        let mut failed = None;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            failed = self.print_new(logs, job).await;
            if failed.is_none() {
                break;
            }
        }
        failed
    }

    /// Log lines new since the last call, stream by stream, and why some
    /// could not be read, if so. A missing log group or stream is simply
    /// "nothing yet"; any other failure (a denied read, throttling past the
    /// SDK's retries) is said, never taken for an empty log.
    async fn next(
        &mut self,
        logs: &aws_sdk_cloudwatchlogs::Client,
        job: &str,
    ) -> (Vec<String>, Option<String>) {
        let mut out = Vec::new();
        let mut failed = None;
        // Every page: a job of many instances, or restarted on spot, has
        // more streams than one page holds.
        let mut names = Vec::new();
        let mut pages = logs
            .describe_log_streams()
            .log_group_name(LOG_GROUP)
            .log_stream_name_prefix(format!("{job}/"))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    failed = log_failure(&e, |e| e.is_resource_not_found_exception()).or(failed);
                    break;
                }
            };
            names.extend(
                page.log_streams()
                    .iter()
                    .filter_map(|s| s.log_stream_name().map(str::to_string)),
            );
        }
        for name in &names {
            let name = name.as_str();
            // Bounded, should a service never hand the token back.
            for _ in 0..MAX_LOG_PAGES {
                let mut call = logs
                    .get_log_events()
                    .log_group_name(LOG_GROUP)
                    .log_stream_name(name)
                    .start_from_head(true);
                if let Some(t) = self.tokens.get(name) {
                    call = call.next_token(t);
                }
                let page = match call.send().await {
                    Ok(page) => page,
                    Err(e) => {
                        failed =
                            log_failure(&e, |e| e.is_resource_not_found_exception()).or(failed);
                        break;
                    }
                };
                let events = page.events();
                out.extend(
                    events
                        .iter()
                        .filter_map(|e| e.message().map(str::to_string)),
                );
                let next = page.next_forward_token().map(str::to_string);
                // The end of a stream is the token coming back unchanged:
                // an empty page before it is not (CloudWatch Logs pages by
                // time and may answer one with no events mid-stream).
                let done =
                    next.is_none() || next.as_deref() == self.tokens.get(name).map(|s| s.as_str());
                if let Some(t) = next {
                    self.tokens.insert(name.to_string(), t);
                }
                if done {
                    break;
                }
            }
        }
        (out, failed)
    }
}

/// Why a CloudWatch Logs call failed, unless for want of the log group or
/// stream (`missing`: "nothing yet").
fn log_failure<E, R>(
    e: &aws_sdk_cloudwatchlogs::error::SdkError<E, R>,
    missing: impl Fn(&E) -> bool,
) -> Option<String>
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    (!e.as_service_error().is_some_and(missing)).then(|| crate::aws::error_chain(e))
}

/// Download and unpack `s3://.../model.tar.gz` into `dir` (see
/// [`artifacts`](crate::experiment::artifacts)), streamed: the body goes
/// through gzip and tar as it arrives, never held whole.
pub async fn fetch(clients: &Clients, uri: &str, dir: &Path) -> Result<Unpacked> {
    let (bucket, key) = split_s3(uri)?;
    let object = clients
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "downloading {uri}: {} (has the job completed?)",
                crate::aws::error_chain(&e)
            )
        })?;
    let body = BodyReader {
        runtime: tokio::runtime::Handle::current(),
        body: object.body,
        chunk: bytes::Bytes::new(),
    };
    let (uri, dir) = (uri.to_string(), dir.to_path_buf());
    // tar and flate2 read synchronously: off the async threads.
    tokio::task::spawn_blocking(move || {
        artifacts::into_fresh_dir(&dir, &uri, |work| {
            artifacts::unpack(body, &uri, work, artifacts::MAX_UNPACKED_BYTES)
        })
    })
    .await
    .context("the unpacking task ended abnormally")?
}

/// An S3 object's body as a blocking [`std::io::Read`], for a blocking thread.
struct BodyReader {
    runtime: tokio::runtime::Handle,
    body: aws_sdk_s3::primitives::ByteStream,
    chunk: bytes::Bytes,
}

impl std::io::Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.body.try_next()) {
                Ok(Some(chunk)) => self.chunk = chunk,
                Ok(None) => return Ok(0),
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
