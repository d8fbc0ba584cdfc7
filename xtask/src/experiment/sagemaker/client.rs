//! The SageMaker backend's AWS side that launching and the lifecycle both
//! use: the [`Clients`] of one command, `DescribeTrainingJob` with the
//! job's tags, SDK errors as one line with the fix, and the run record
//! saved beside the job's config channel in S3.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use crate::experiment::record::{check_writable, stored_version, RunRecord, Status};

/// The AWS clients of one launch.
pub struct Clients {
    pub sagemaker: aws_sdk_sagemaker::Client,
    pub s3: aws_sdk_s3::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
}

impl Clients {
    /// The clients for `aws`'s region (its flag, else `region`), credentials checked.
    pub async fn new(aws: &crate::aws::Session, region: Option<&str>) -> Result<Self> {
        let config = aws.config(region).await?;
        // Path-style addressing works with every endpoint, emulators included.
        let s3 = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(std::env::var("AWS_ENDPOINT_URL").is_ok_and(|u| !u.is_empty()))
            .build();
        Ok(Clients {
            sagemaker: aws_sdk_sagemaker::Client::new(&config),
            s3: aws_sdk_s3::Client::from_conf(s3),
            logs: aws_sdk_cloudwatchlogs::Client::new(&config),
        })
    }
}

/// What `DescribeTrainingJob` says, reduced to what the launcher shows.
#[derive(Debug, Clone, Default)]
pub struct JobState {
    pub status: Option<Status>,
    pub secondary: Option<String>,
    pub transitions: Vec<(String, String)>,
    pub failure_reason: Option<String>,
    pub model_artifacts: Option<String>,
    pub final_metrics: serde_json::Map<String, serde_json::Value>,
    pub tags: BTreeMap<String, String>,
    pub arn: Option<String>,
    /// `(TrainingTimeInSeconds, BillableTimeInSeconds)`, once SageMaker reports them.
    pub billed_secs: Option<(u64, u64)>,
    /// When the job ended, as SageMaker says (`TrainingEndTime`, else its
    /// last change once it has ended), RFC 3339 to the second.
    pub ended: Option<String>,
}

pub async fn describe(client: &aws_sdk_sagemaker::Client, job: &str) -> Result<JobState> {
    let out = client
        .describe_training_job()
        .training_job_name(job)
        .send()
        .await
        .map_err(|e| sdk_error(e, &format!("describing training job `{job}`")))?;
    let mut state = JobState {
        status: out
            .training_job_status()
            .and_then(|s| Status::parse(s.as_str())),
        secondary: out.secondary_status().map(|s| s.as_str().to_string()),
        failure_reason: out.failure_reason().map(str::to_string),
        model_artifacts: out
            .model_artifacts()
            .and_then(|m| m.s3_model_artifacts())
            .map(str::to_string),
        arn: out.training_job_arn().map(str::to_string),
        billed_secs: out
            .training_time_in_seconds()
            .zip(out.billable_time_in_seconds())
            .map(|(t, b)| (t.max(0) as u64, b.max(0) as u64)),
        ended: out
            .training_end_time()
            .or(out.last_modified_time())
            .and_then(|t| std::time::SystemTime::try_from(*t).ok())
            .and_then(crate::experiment::record::rfc3339),
        ..JobState::default()
    };
    for t in out.secondary_status_transitions() {
        state.transitions.push((
            t.status().map(|s| s.as_str()).unwrap_or("").to_string(),
            t.status_message().unwrap_or("").to_string(),
        ));
    }
    for m in out.final_metric_data_list() {
        if let (Some(name), Some(value)) = (m.metric_name(), m.value()) {
            state.final_metrics.insert(name.to_string(), value.into());
        }
    }
    Ok(state)
}

/// [`describe`] with the job's tags, for deciding whose job it is: a
/// `ListTags` failure is an error, never "no tags" (which would disown this
/// launch's own job, or skip a job `experiment:<name>` should pick).
pub async fn describe_with_tags(client: &aws_sdk_sagemaker::Client, job: &str) -> Result<JobState> {
    let mut state = describe(client, job).await?;
    let arn = state.arn.clone().with_context(|| {
        format!("DescribeTrainingJob named no ARN for `{job}`, so its tags cannot be read")
    })?;
    state.tags = job_tags(client, job, &arn).await?;
    Ok(state)
}

/// `ListTags` of the job `job` (ARN `arn`), every page.
async fn job_tags(
    client: &aws_sdk_sagemaker::Client,
    job: &str,
    arn: &str,
) -> Result<BTreeMap<String, String>> {
    let mut tags = BTreeMap::new();
    let mut pages = client
        .list_tags()
        .resource_arn(arn)
        .into_paginator()
        .items()
        .send();
    while let Some(t) = pages.next().await {
        let t = t.map_err(|e| {
            sdk_error(
                e,
                &format!(
                    "reading the tags of training job `{job}` (they say which launch and experiment it belongs to; the role or user needs sagemaker:ListTags)"
                ),
            )
        })?;
        tags.insert(
            t.key().unwrap_or("").to_string(),
            t.value().unwrap_or("").to_string(),
        );
    }
    Ok(tags)
}

/// Turn an SDK error into one line that says what failed and, for the
/// common causes, how to fix it.
pub fn sdk_error<E, R>(e: aws_sdk_sagemaker::error::SdkError<E, R>, doing: &str) -> anyhow::Error
where
    E: std::error::Error + aws_sdk_sagemaker::error::ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_sagemaker::error::SdkError;
    let text = match &e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("no message")
            )
        }
        SdkError::DispatchFailure(d) => {
            let detail = format!("{:?}", d);
            if detail.contains("credentials") || detail.contains("Credentials") {
                return anyhow::anyhow!("{doing}: {}", crate::aws::NO_CREDENTIALS);
            }
            format!("the AWS endpoint could not be reached ({detail})")
        }
        SdkError::TimeoutError(_) => "the request timed out".to_string(),
        other => crate::aws::error_chain(other),
    };
    anyhow::anyhow!("{doing}: {text}")
}

/// `s3://bucket/key` → (bucket, key).
pub fn split_s3(uri: &str) -> Result<(&str, &str)> {
    let rest = uri
        .strip_prefix("s3://")
        .with_context(|| format!("`{uri}` is not an s3:// URI"))?;
    Ok(rest.split_once('/').unwrap_or((rest, "")))
}

/// The key prefix of a job's files in the config bucket: `experiments/<job>/`.
pub fn job_prefix(job: &str) -> String {
    format!("experiments/{job}/")
}

/// The key of a job's record in the config bucket, beside its config channel.
pub fn record_key(job: &str) -> String {
    format!("{}record.json", job_prefix(job))
}

/// The job named `name`, if there is one (found by listing, which answers
/// the same way for a missing job everywhere, unlike Describe's error text;
/// every page is read, empty ones too, since moto filters after paging).
pub async fn find_job(client: &aws_sdk_sagemaker::Client, name: &str) -> Result<Option<JobState>> {
    let mut jobs = client
        .list_training_jobs()
        .name_contains(name)
        .max_results(100)
        .into_paginator()
        .items()
        .send();
    while let Some(job) = jobs.next().await {
        let job =
            job.map_err(|e| sdk_error(e, &format!("looking for a training job named `{name}`")))?;
        if job.training_job_name() == Some(name) {
            return Ok(Some(describe_with_tags(client, name).await?));
        }
    }
    Ok(None)
}

/// Save the record locally and beside the config in S3, where neither
/// copy has ended while this one has not ([`RunRecord::save_unless_ended`]);
/// `record` becomes the record as saved here (an end found in S3 is saved
/// here too).
pub async fn save_everywhere(
    root: &std::path::Path,
    clients: &Clients,
    record: &mut RunRecord,
) -> Result<()> {
    *record = record.save_unless_ended(root)?;
    if let Some(there) = upload_record(clients, record).await? {
        // Another machine recorded the end meanwhile: that is the record.
        *record = there.save_unless_ended(root)?;
    }
    Ok(())
}

/// Put the record beside the config in S3, unless the copy there has ended
/// and this one has not. The put is conditional on the copy it looked at
/// (`If-Match` its ETag, or `If-None-Match: *` where there was none): a
/// `status` on another machine that put between this look and this put
/// (an end, say) makes it fail, and the copy is looked at again. The copy
/// that stands instead of `record`, if one does.
pub async fn upload_record(clients: &Clients, record: &RunRecord) -> Result<Option<RunRecord>> {
    let (bucket, _) = split_s3(&record.config_uri)?;
    let key = record_key(&record.job_name);
    let place = format!("s3://{bucket}/{key}");
    const TRIES: u32 = 5;
    let mut unread = None;
    for attempt in 0..TRIES {
        if attempt > 0 {
            // The other writer's put lands meanwhile: 100 ms, doubling.
            tokio::time::sleep(std::time::Duration::from_millis(100 << (attempt - 1))).await;
        }
        // A copy S3 refuses to show is not looked at: a role may put
        // without reading, and without s3:ListBucket S3 answers a missing
        // key (a new job's) AccessDenied, not NoSuchKey; the put then goes
        // ahead unconditionally, as does one over a copy without an ETag.
        // A read that failed otherwise (a broken connection, a body cut
        // short) is tried again: the copy may hold an end this would undo.
        let (there, condition) = match get_object(&clients.s3, bucket, &key).await {
            Ok(Some(Object {
                bytes,
                etag: Some(etag),
                ..
            })) => (Some(bytes), Some(Condition::Match(etag))),
            Ok(Some(Object { bytes, .. })) => (Some(bytes), None),
            Ok(None) => (None, Some(Condition::Absent)),
            Err(e) if e.downcast_ref::<ReadDenied>().is_some() => (None, None),
            Err(e) => {
                unread = Some(e);
                continue;
            }
        };
        unread = None;
        if let Some(there) = superseding(there.as_deref(), record, &place)? {
            return Ok(Some(there));
        }
        let put = clients
            .s3
            .put_object()
            .bucket(bucket)
            .key(&key)
            .body(record.to_json_pretty().into())
            .content_type("application/json");
        let put = match condition {
            Some(Condition::Match(etag)) => put.if_match(etag),
            Some(Condition::Absent) => put.if_none_match("*"),
            None => put,
        };
        match put.send().await {
            Ok(_) => return Ok(None),
            // 412: another writer put since the look; 409: its put is in
            // flight. Looked at again.
            Err(e)
                if matches!(
                    e.raw_response().map(|r| r.status().as_u16()),
                    Some(412 | 409)
                ) => {}
            Err(e) => bail!(
                "saving the record to {place}: {}",
                crate::aws::error_chain(&e)
            ),
        }
    }
    if let Some(e) = unread {
        bail!(
            "saving the record to {place}: the copy there could not be read ({e:#}), so nothing was put over it (it may hold an end); the record here is saved: `cargo xtask experiment status {job}` puts it once S3 answers",
            job = record.job_name
        );
    }
    bail!("saving the record to {place}: another writer changed it under each of {TRIES} tries")
}

/// S3 refused a read (403): a role without `s3:GetObject`, or without
/// `s3:ListBucket` asking for a missing key.
#[derive(Debug, thiserror::Error)]
#[error("S3 refused the read (403)")]
pub struct ReadDenied;

/// What a record put is conditional on.
enum Condition {
    /// The copy with this ETag is still there.
    Match(String),
    /// There is still none.
    Absent,
}

/// An object as read: its bytes, ETag, and age on S3's clock (the
/// answer's `Date` less its `Last-Modified`, where S3 gives both), which
/// no machine's clock decides.
pub struct Object {
    pub bytes: Vec<u8>,
    pub etag: Option<String>,
    pub age: Option<std::time::Duration>,
}

/// Records the `Date` header of the answer it sees (S3's clock).
#[derive(Debug, Clone, Default)]
struct DateHeader(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl aws_sdk_s3::config::Intercept for DateHeader {
    fn name(&self) -> &'static str {
        "date-header"
    }

    fn read_before_deserialization(
        &self,
        ctx: &aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef<'_>,
        _: &aws_sdk_s3::config::RuntimeComponents,
        _: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let date = ctx.response().headers().get("date").map(str::to_string);
        *self.0.lock().expect("not poisoned") = date;
        Ok(())
    }
}

/// The object at `key` in `bucket`, or `None` where it does not exist.
pub async fn get_object(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<Object>> {
    use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
    let date = DateHeader::default();
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .customize()
        .interceptor(date.clone())
        .send()
        .await;
    let out = match out {
        Ok(out) => out,
        Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
        Err(e) => {
            let what = format!(
                "downloading s3://{bucket}/{key}: {}",
                crate::aws::error_chain(&e)
            );
            if e.raw_response().map(|r| r.status().as_u16()) == Some(403) {
                return Err(anyhow::Error::new(ReadDenied).context(what));
            }
            bail!(what)
        }
    };
    let now = date
        .0
        .lock()
        .expect("not poisoned")
        .as_deref()
        .and_then(|d| DateTime::from_str(d, DateTimeFormat::HttpDate).ok());
    let age = match (now, out.last_modified()) {
        // (S3's front ends may differ by a second: never negative.)
        (Some(now), Some(modified)) => Some(std::time::Duration::from_secs(
            u64::try_from(now.secs() - modified.secs()).unwrap_or(0),
        )),
        _ => None,
    };
    let etag = out.e_tag().map(str::to_string);
    let bytes = out
        .body
        .collect()
        .await
        .with_context(|| format!("downloading s3://{bucket}/{key}"))?;
    Ok(Some(Object {
        bytes: bytes.into_bytes().to_vec(),
        etag,
        age,
    }))
}

/// The copy in S3 (`there`, the bytes at `place`) that `record` must not
/// replace: one that has ended where `record` has not. None where there is
/// no copy, or an unreadable one; an error where either is of a newer
/// format than this xtask writes.
fn superseding(there: Option<&[u8]>, record: &RunRecord, place: &str) -> Result<Option<RunRecord>> {
    check_writable(record.record_version, place)?;
    if let Some(version) = there.and_then(stored_version) {
        check_writable(version, place)?;
    }
    let there = there.and_then(|b| serde_json::from_slice::<RunRecord>(b).ok());
    // (A copy of another job's, moved there by hand, is not this job's end.)
    Ok(there.filter(|there| there.job_name == record.job_name && there.supersedes(record)))
}

/// An object's bytes, or `None` where it does not exist.
pub async fn get(clients: &Clients, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
    Ok(get_object(&clients.s3, bucket, key).await?.map(|o| o.bytes))
}

/// A SageMaker client whose requests are captured, not sent (for tests).
#[cfg(test)]
pub use tests::capturing_client;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::record::RECORD_VERSION;

    /// The `X-Amz-Target` header and the body of a request.
    pub type Captured = (Option<String>, Vec<u8>);

    /// Records the request the SDK is about to send, and stops it there.
    #[derive(Debug, Clone, Default)]
    pub struct Capture(pub std::sync::Arc<std::sync::Mutex<Option<Captured>>>);

    impl aws_sdk_sagemaker::config::Intercept for Capture {
        fn name(&self) -> &'static str {
            "capture"
        }

        fn read_before_transmit(
            &self,
            ctx: &aws_sdk_sagemaker::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
            _: &aws_sdk_sagemaker::config::RuntimeComponents,
            _: &mut aws_sdk_sagemaker::config::ConfigBag,
        ) -> Result<(), aws_sdk_sagemaker::error::BoxError> {
            let request = ctx.request();
            let target = request.headers().get("x-amz-target").map(str::to_string);
            let body = request.body().bytes().unwrap_or_default().to_vec();
            *self.0.lock().unwrap() = Some((target, body));
            Err("captured, not sent".into())
        }
    }

    pub fn capturing_client() -> (aws_sdk_sagemaker::Client, Capture) {
        let capture = Capture::default();
        let conf = aws_sdk_sagemaker::Config::builder()
            .behavior_version(aws_sdk_sagemaker::config::BehaviorVersion::latest())
            .region(aws_sdk_sagemaker::config::Region::new("us-west-2"))
            .credentials_provider(aws_sdk_sagemaker::config::Credentials::for_tests())
            .interceptor(capture.clone())
            .build();
        (aws_sdk_sagemaker::Client::from_conf(conf), capture)
    }

    /// The record in S3 is replaced unless it has ended and ours has not.
    #[test]
    fn an_upload_never_undoes_an_end_in_s3() {
        let running = RunRecord::for_tests("exp-0123456-20261126-120000");
        let mut completed = running.clone();
        completed.status = Status::Completed;
        let bytes = |r: &RunRecord| r.to_json_pretty();
        let over = |there: Option<&[u8]>, r: &RunRecord| {
            superseding(there, r, "s3://b/k").unwrap().is_none()
        };
        assert!(!over(Some(&bytes(&completed)), &running));
        assert!(over(Some(&bytes(&running)), &completed));
        assert!(over(Some(&bytes(&completed)), &completed));
        assert!(over(Some(&bytes(&running)), &running));
        assert!(over(None, &running));
        assert!(over(Some(b"not a record"), &running));
        // Nothing of a newer format is replaced, nor put.
        let mut newer = completed.clone();
        newer.record_version = RECORD_VERSION + 1;
        for e in [
            superseding(Some(&bytes(&newer)), &completed, "s3://b/k"),
            superseding(None, &newer, "s3://b/k"),
        ] {
            let e = format!("{:#}", e.unwrap_err());
            assert!(
                e.contains("s3://b/k") && e.contains("update the checkout"),
                "{e}"
            );
        }
    }

    /// A failed `ListTags` is an error, not an empty tag set.
    #[tokio::test]
    async fn list_tags_errors_propagate() {
        let (client, capture) = capturing_client();
        let e = job_tags(&client, "j", "arn:aws:sagemaker:us-west-2:1:training-job/j")
            .await
            .unwrap_err();
        let (target, _) = capture.0.lock().unwrap().take().expect("a request");
        assert_eq!(target.as_deref(), Some("SageMaker.ListTags"));
        assert!(
            format!("{e:#}").contains("tags of training job `j`"),
            "{e:#}"
        );
    }
}
