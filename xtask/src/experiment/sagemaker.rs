//! The `sagemaker` backend: the exact `CreateTrainingJob` request (built as
//! plain data first, so `--dry-run` can print it and tests can check it),
//! the config upload, the launch, and the job's lifecycle (describe, follow,
//! logs, stop, fetch) through aws-sdk-sagemaker, -s3 and -cloudwatchlogs.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_sagemaker::error::ProvideErrorMetadata;
use aws_sdk_sagemaker::types as sm;
use serde::Serialize;

use crate::experiment::record::Status;

/// Where the trainer's checkpoints are, inside the container.
pub const CHECKPOINT_LOCAL_PATH: &str = "/opt/ml/checkpoints";
/// SageMaker's CloudWatch Logs group for training jobs.
pub const LOG_GROUP: &str = "/aws/sagemaker/TrainingJobs";

/// `CreateTrainingJob`'s input, in the API's own JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TrainingJobRequest {
    pub training_job_name: String,
    pub role_arn: String,
    pub algorithm_specification: AlgorithmSpecification,
    pub hyper_parameters: BTreeMap<String, String>,
    pub input_data_config: Vec<Channel>,
    pub output_data_config: OutputDataConfig,
    pub resource_config: ResourceConfig,
    pub stopping_condition: StoppingCondition,
    pub enable_managed_spot_training: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_config: Option<CheckpointConfig>,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AlgorithmSpecification {
    pub training_image: String,
    pub training_input_mode: String,
    pub metric_definitions: Vec<MetricDefinition>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetricDefinition {
    pub name: String,
    pub regex: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Channel {
    pub channel_name: String,
    pub data_source: DataSource,
    pub input_mode: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataSource {
    #[serde(rename = "S3DataSource")]
    pub s3_data_source: S3DataSource,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct S3DataSource {
    #[serde(rename = "S3DataType")]
    pub s3_data_type: String,
    #[serde(rename = "S3Uri")]
    pub s3_uri: String,
    #[serde(rename = "S3DataDistributionType")]
    pub distribution: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputDataConfig {
    #[serde(rename = "S3OutputPath")]
    pub s3_output_path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResourceConfig {
    pub instance_type: String,
    pub instance_count: u32,
    #[serde(rename = "VolumeSizeInGB")]
    pub volume_size_in_gb: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoppingCondition {
    pub max_runtime_in_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait_time_in_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointConfig {
    #[serde(rename = "S3Uri")]
    pub s3_uri: String,
    #[serde(rename = "LocalPath")]
    pub local_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// The pinned facts a job's tags carry (the launcher's own tags).
#[derive(Debug, Clone)]
pub struct JobFacts {
    pub experiment: String,
    pub experiment_sha256: String,
    pub commit: String,
    pub dirty: bool,
    pub image_digest: String,
    pub data_manifest_sha256: Option<String>,
    /// Random per launch: tells this launch's job from one that another
    /// machine created under the same name (same experiment, commit and second).
    pub launch_id: String,
}

pub const TAG_LAUNCH_ID: &str = "sca:launch-id";
pub const TAG_COMMIT: &str = "sca:commit";
pub const TAG_IMAGE_DIGEST: &str = "sca:image-digest";
pub const TAG_EXPERIMENT_SHA256: &str = "sca:experiment-sha256";
pub const TAG_EXPERIMENT: &str = "sca:experiment";

impl TrainingJobRequest {
    /// The request for `job`, its image (by digest), its config channel
    /// prefix (`s3://bucket/experiments/<job>/config/`) and the experiment's
    /// own tags; checkpoints go to the job's own prefix
    /// ([`checkpoint_prefix`]) under `job.checkpoint_s3`.
    pub fn new(
        job_name: &str,
        job: &sca_spec::ResolvedJob,
        image: &str,
        config_prefix: &str,
        hyper_parameters: BTreeMap<String, String>,
        facts: &JobFacts,
        extra_tags: &BTreeMap<String, String>,
    ) -> Self {
        let mut tags = vec![
            tag(TAG_EXPERIMENT, &facts.experiment),
            tag(TAG_EXPERIMENT_SHA256, &facts.experiment_sha256),
            tag(TAG_COMMIT, &facts.commit),
            tag(TAG_IMAGE_DIGEST, &facts.image_digest),
            tag(TAG_LAUNCH_ID, &facts.launch_id),
        ];
        if facts.dirty {
            tags.push(tag("sca:dirty", "true"));
        }
        if let Some(m) = &facts.data_manifest_sha256 {
            tags.push(tag("sca:data-manifest-sha256", m));
        }
        tags.extend(
            extra_tags
                .iter()
                .filter(|(k, _)| !k.starts_with("sca:"))
                .map(|(k, v)| tag(k, v)),
        );
        TrainingJobRequest {
            training_job_name: job_name.to_string(),
            role_arn: job.role_arn.clone(),
            algorithm_specification: AlgorithmSpecification {
                training_image: image.to_string(),
                training_input_mode: "File".into(),
                metric_definitions: sca_spec::contract::metric_definitions()
                    .into_iter()
                    .map(|(name, regex)| MetricDefinition { name, regex })
                    .collect(),
            },
            hyper_parameters,
            input_data_config: vec![Channel {
                channel_name: "config".into(),
                data_source: DataSource {
                    s3_data_source: S3DataSource {
                        s3_data_type: "S3Prefix".into(),
                        s3_uri: config_prefix.to_string(),
                        distribution: "FullyReplicated".into(),
                    },
                },
                input_mode: "File".into(),
            }],
            output_data_config: OutputDataConfig {
                s3_output_path: job.output.clone(),
            },
            resource_config: ResourceConfig {
                instance_type: job.instance_type.clone(),
                instance_count: job.instance_count,
                volume_size_in_gb: job.volume_gb,
            },
            stopping_condition: StoppingCondition {
                max_runtime_in_seconds: job.max_runtime_secs,
                max_wait_time_in_seconds: job.max_wait_secs,
            },
            enable_managed_spot_training: job.max_wait_secs.is_some(),
            checkpoint_config: job.checkpoint_s3.as_ref().map(|base| CheckpointConfig {
                s3_uri: checkpoint_prefix(base, job_name),
                local_path: CHECKPOINT_LOCAL_PATH.into(),
            }),
            tags,
        }
    }

    /// The same request as the SDK's call.
    pub fn send_with(
        &self,
        client: &aws_sdk_sagemaker::Client,
    ) -> Result<
        aws_sdk_sagemaker::operation::create_training_job::builders::CreateTrainingJobFluentBuilder,
    > {
        let a = &self.algorithm_specification;
        let mut algo = sm::AlgorithmSpecification::builder()
            .training_image(&a.training_image)
            .training_input_mode(sm::TrainingInputMode::from(a.training_input_mode.as_str()));
        for m in &a.metric_definitions {
            algo = algo.metric_definitions(
                sm::MetricDefinition::builder()
                    .name(&m.name)
                    .regex(&m.regex)
                    .build(),
            );
        }
        let mut call = client
            .create_training_job()
            .training_job_name(&self.training_job_name)
            .role_arn(&self.role_arn)
            .algorithm_specification(algo.build())
            .set_hyper_parameters(Some(
                self.hyper_parameters
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ))
            .output_data_config(
                sm::OutputDataConfig::builder()
                    .s3_output_path(&self.output_data_config.s3_output_path)
                    .build(),
            )
            .resource_config(
                sm::ResourceConfig::builder()
                    .instance_type(sm::TrainingInstanceType::from(
                        self.resource_config.instance_type.as_str(),
                    ))
                    .instance_count(self.resource_config.instance_count as i32)
                    .volume_size_in_gb(self.resource_config.volume_size_in_gb as i32)
                    .build(),
            )
            .stopping_condition(
                sm::StoppingCondition::builder()
                    .max_runtime_in_seconds(self.stopping_condition.max_runtime_in_seconds as i32)
                    .set_max_wait_time_in_seconds(
                        self.stopping_condition
                            .max_wait_time_in_seconds
                            .map(|s| s as i32),
                    )
                    .build(),
            )
            .enable_managed_spot_training(self.enable_managed_spot_training);
        for c in &self.input_data_config {
            let s3 = &c.data_source.s3_data_source;
            call = call.input_data_config(
                sm::Channel::builder()
                    .channel_name(&c.channel_name)
                    .input_mode(sm::TrainingInputMode::from(c.input_mode.as_str()))
                    .data_source(
                        sm::DataSource::builder()
                            .s3_data_source(
                                sm::S3DataSource::builder()
                                    .s3_data_type(sm::S3DataType::from(s3.s3_data_type.as_str()))
                                    .s3_uri(&s3.s3_uri)
                                    .s3_data_distribution_type(sm::S3DataDistribution::from(
                                        s3.distribution.as_str(),
                                    ))
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            );
        }
        if let Some(c) = &self.checkpoint_config {
            call = call.checkpoint_config(
                sm::CheckpointConfig::builder()
                    .s3_uri(&c.s3_uri)
                    .local_path(&c.local_path)
                    .build(),
            );
        }
        for t in &self.tags {
            call = call.tags(sm::Tag::builder().key(&t.key).value(&t.value).build());
        }
        Ok(call)
    }
}

/// The job's own checkpoint prefix under `job.checkpoint_s3`:
/// `<checkpoint_s3>/<job>/`. SageMaker copies what is there into
/// `/opt/ml/checkpoints` when the job starts, so a prefix shared by two jobs
/// handed one job's checkpoints to the other; a spot restart keeps its job's
/// name, and so finds its own.
pub fn checkpoint_prefix(checkpoint_s3: &str, job: &str) -> String {
    format!("{}/{job}/", checkpoint_s3.trim_end_matches('/'))
}

fn tag(key: &str, value: &str) -> Tag {
    Tag {
        key: key.into(),
        value: value.into(),
    }
}

/// `s3://bucket/key` → (bucket, key).
pub fn split_s3(uri: &str) -> Result<(&str, &str)> {
    let rest = uri
        .strip_prefix("s3://")
        .with_context(|| format!("`{uri}` is not an s3:// URI"))?;
    Ok(rest.split_once('/').unwrap_or((rest, "")))
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

/// `StopTrainingJob` for `job` (SageMaker then sends SIGTERM, and SIGKILL after 120 s).
pub fn stop_request(
    client: &aws_sdk_sagemaker::Client,
    job: &str,
) -> aws_sdk_sagemaker::operation::stop_training_job::builders::StopTrainingJobFluentBuilder {
    client.stop_training_job().training_job_name(job)
}

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

/// The key prefix of a job's files in the config bucket: `experiments/<job>/`.
pub fn job_prefix(job: &str) -> String {
    format!("experiments/{job}/")
}

/// Launch `plan` as a Training Job: upload the config channel, create the
/// job (exactly once), record it, and with `--wait` follow it to the end.
pub async fn run(
    root: &std::path::Path,
    plan: &crate::experiment::launch::Plan,
    opts: &crate::experiment::launch::LaunchOptions,
) -> Result<Option<crate::experiment::record::RunRecord>> {
    let job = &plan.resolved;
    let (reference, _) = plan
        .image
        .clone()
        .context("a SageMaker job runs a pinned image")?;
    let bucket = job.config_bucket.clone();
    let prefix = job_prefix(&plan.job_name);
    let config_prefix = format!("s3://{bucket}/{prefix}config/");
    let hyper_all = sca_spec::contract::Hyperparameters {
        init_checkpoint: plan.init_checkpoint.clone(),
        ..crate::experiment::launch::base_hyperparameters(plan)
    };
    let launch_id = uuid::Uuid::new_v4().simple().to_string();
    let request = TrainingJobRequest::new(
        &plan.job_name,
        job,
        &reference,
        &config_prefix,
        hyper_all.to_map(),
        &plan.facts(&launch_id),
        &plan.experiment.job.tags,
    );
    let mut record = plan.record(
        &hyper_all,
        config_prefix.clone(),
        format!(
            "{}/{}/output/model.tar.gz",
            job.output.trim_end_matches('/'),
            plan.job_name
        ),
    );
    record.checkpoint_uri = request.checkpoint_config.as_ref().map(|c| c.s3_uri.clone());
    if opts.dry_run {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "CreateTrainingJob": request,
                "config_channel": {
                    "uri": config_prefix,
                    "files": [plan.file_name, sca_spec::DataManifest::FILE_NAME],
                },
                "record": record,
            }))?
        );
        return Ok(None);
    }
    let region = opts.aws.region_or(&job.region);
    let clients = Clients::new(&opts.aws, Some(&region)).await?;

    // The bucket must exist: creating buckets in someone's account is not ours to do.
    if let Err(e) = clients.s3.head_bucket().bucket(&bucket).send().await {
        let not_found = e.as_service_error().is_some_and(|s| s.is_not_found())
            || e.raw_response().is_some_and(|r| r.status().as_u16() == 404);
        if not_found {
            bail!(
                "the config bucket `{bucket}` does not exist in {region}: create it (`aws s3 mb s3://{bucket} --region {region}`) or set job.config_bucket / config_bucket in [workspace.metadata.sca]"
            );
        }
        bail!(
            "the config bucket `{bucket}` cannot be used: {}",
            crate::aws::error_chain(&e)
        );
    }

    // A job of this name made elsewhere (another machine, the same
    // experiment and commit, the same second) is found before anything is
    // uploaded; the create below catches one made after this check.
    if let Some(existing) = find_job(&clients.sagemaker, &plan.job_name).await? {
        bail!(name_taken(plan, &existing.tags));
    }

    // Upload the channel without replacing anything (`If-None-Match: *`):
    // the prefix is named by the job, and another machine launching the same
    // experiment at the same commit in the same second would share it.
    // Ctrl-C or a failure here removes what this launch wrote; no job exists
    // yet, so nothing is half-created.
    let uploads = [
        (
            format!("{prefix}config/{}", plan.file_name),
            plan.bytes.clone(),
        ),
        (
            format!("{prefix}config/{}", sca_spec::DataManifest::FILE_NAME),
            plan.manifest.to_bytes(),
        ),
    ];
    let mut written: Vec<&str> = Vec::new();
    let upload = async {
        for (key, bytes) in &uploads {
            match put_new(&clients.s3, &bucket, key, bytes).await? {
                Put::Created => written.push(key),
                Put::Same => {}
                Put::Taken => bail!(
                    "s3://{bucket}/{key} already holds a different file: another launch took the job name `{}` (experiment, commit and time to the second); launch again",
                    plan.job_name
                ),
            }
        }
        anyhow::Ok(())
    };
    let uploaded = tokio::select! {
        r = upload => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = uploaded {
        remove_objects(&clients.s3, &bucket, &written).await;
        return Err(e.context("nothing was launched, and nothing this launch uploaded is left"));
    }
    eprintln!("uploaded the config channel to {config_prefix}");

    // Create the job, exactly once: a retry whose first attempt did reach
    // SageMaker, or a request whose answer was lost, is resolved by
    // describing the job under its name and reading this launch's id in its
    // tags (see `after_create`).
    let call = request.send_with(&clients.sagemaker)?;
    let arn = match call.send().await {
        Ok(out) => out.training_job_arn().unwrap_or_default().to_string(),
        Err(e) => {
            // A server error (500, 503) after the SDK's retries may follow a
            // create that took, so only a client error is a refusal.
            let failure = if e.as_service_error().map(|s| s.code()) == Some(Some("ResourceInUse")) {
                CreateFailure::NameInUse
            } else if e.as_service_error().is_some()
                && !e
                    .raw_response()
                    .is_some_and(|r| r.status().is_server_error())
            {
                CreateFailure::Refused
            } else {
                CreateFailure::NoAnswer
            };
            let cause = sdk_error(e, &format!("creating training job `{}`", plan.job_name));
            let existing = match failure {
                CreateFailure::Refused => None,
                _ => Some(describe_after_create(&clients.sagemaker, &plan.job_name).await),
            };
            match after_create(failure, &launch_id, existing) {
                AfterCreate::Ours(arn) => {
                    eprintln!("{cause:#}; the job exists, launched by this launch: recorded");
                    arn
                }
                AfterCreate::Refused => {
                    remove_objects(&clients.s3, &bucket, &written).await;
                    return Err(cause);
                }
                AfterCreate::Taken(tags) => bail!(name_taken(plan, &tags)),
                AfterCreate::Unknown(why) => bail!(
                    "{cause:#}; the outcome is unknown ({why}), so the training job `{job}` may exist and run: `aws sagemaker describe-training-job --training-job-name {job} --region {region}` tells (its tag {TAG_LAUNCH_ID} = {launch_id} marks it as this launch's), `aws sagemaker stop-training-job --training-job-name {job} --region {region}` stops it; its config channel {config_prefix} is kept for it",
                    job = plan.job_name
                ),
            }
        }
    };
    record.training_job_arn = Some(arn);
    plan.write_config_channel(&record.config_dir(root))?;
    save_everywhere(root, &clients, &record).await?;
    eprintln!("created training job {} with {reference}", plan.job_name);
    if opts.wait {
        // Ctrl-C while following detaches: the job is SageMaker's now.
        let detached = tokio::select! {
            r = follow(root, &clients, &mut record) => { r?; false }
            _ = tokio::signal::ctrl_c() => true,
        };
        if detached {
            save_everywhere(root, &clients, &record).await?;
            bail!(
                "interrupted: {job} keeps running on SageMaker; `cargo xtask experiment logs --follow {job}` follows it, `cargo xtask experiment stop {job}` stops it",
                job = plan.job_name
            );
        }
    }
    Ok(Some(record))
}

/// The job named `name`, if there is one (found by listing, which answers
/// the same way for a missing job everywhere, unlike Describe's error text;
/// every page is read, empty ones too, since moto filters after paging).
async fn find_job(client: &aws_sdk_sagemaker::Client, name: &str) -> Result<Option<JobState>> {
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

/// The job `job` with its tags, looked up after a failed create: a few
/// tries, since a create whose answer was lost may not be visible at once.
async fn describe_after_create(client: &aws_sdk_sagemaker::Client, job: &str) -> Result<JobState> {
    let mut tries = 0;
    loop {
        match describe_with_tags(client, job).await {
            Err(_) if tries < 2 => {
                tries += 1;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            r => return r,
        }
    }
}

/// How `CreateTrainingJob` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CreateFailure {
    /// `ResourceInUse`: a job of this name exists (this launch's own, when
    /// the SDK retried a request whose first answer was lost).
    NameInUse,
    /// Any other client error from SageMaker: no job was created.
    Refused,
    /// No answer (timeout, connection lost after sending) or a server
    /// error: the job may exist.
    NoAnswer,
}

/// What a launch does after a failed `CreateTrainingJob`.
#[derive(Debug, PartialEq)]
enum AfterCreate {
    /// The job exists with this launch's id: record it and go on (its ARN).
    Ours(String),
    /// Another launch's job has the name (its tags). Nothing is removed: the
    /// job's config channel is this prefix.
    Taken(BTreeMap<String, String>),
    /// SageMaker refused: no job exists, so the channel this launch uploaded goes.
    Refused,
    /// The job may exist, or not (why): keep the channel, say how to stop it.
    Unknown(String),
}

/// Decide, from how the create failed and what describing the job under its
/// name found (`None`: not looked), whether the job is this launch's. Only
/// the launch id tag makes it ours, and a job that could not be read (its
/// tags included) is unknown, never taken nor absent.
fn after_create(
    failure: CreateFailure,
    launch_id: &str,
    existing: Option<Result<JobState>>,
) -> AfterCreate {
    if failure == CreateFailure::Refused {
        return AfterCreate::Refused;
    }
    match existing {
        Some(Ok(job)) if job.tags.get(TAG_LAUNCH_ID).map(String::as_str) == Some(launch_id) => {
            AfterCreate::Ours(job.arn.unwrap_or_default())
        }
        Some(Ok(job)) => AfterCreate::Taken(job.tags),
        Some(Err(e)) => AfterCreate::Unknown(format!("{e:#}")),
        None => AfterCreate::Unknown("the job was not looked up".into()),
    }
}

/// Why a launch cannot use the job name `plan.job_name`, held by a job with `tags`.
fn name_taken(plan: &crate::experiment::launch::Plan, tags: &BTreeMap<String, String>) -> String {
    let same = tags.get(TAG_EXPERIMENT_SHA256) == Some(&plan.sha256)
        && tags.get(TAG_COMMIT) == Some(&plan.commit);
    format!(
        "a training job named `{}` already exists, launched {}: nothing was launched; launch again (the name carries the time to the second)",
        plan.job_name,
        if same {
            "from this experiment and commit by another launch in the same second"
        } else {
            "from something other than this experiment and commit"
        }
    )
}

/// What [`put_new`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Put {
    /// This call created the object.
    Created,
    /// The object was already there with these bytes (this launch's own
    /// retried request, or an identical launch's): left as it is.
    Same,
    /// The object was already there with other bytes: left as it is.
    Taken,
}

/// `PutObject` that never replaces an object (`If-None-Match: *`).
async fn put_new(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, bytes: &[u8]) -> Result<Put> {
    let put = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .if_none_match("*")
        .body(bytes.to_vec().into())
        .send()
        .await;
    let e = match put {
        Ok(_) => return Ok(Put::Created),
        Err(e) => e,
    };
    // 412: the object exists; 409: another write of it is in flight.
    let status = e.raw_response().map(|r| r.status().as_u16());
    if !matches!(status, Some(412 | 409)) {
        bail!(
            "uploading s3://{bucket}/{key}: {}",
            crate::aws::error_chain(&e)
        );
    }
    let existing = match s3.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => out.body.collect().await.map(|b| b.into_bytes()).ok(),
        Err(_) => None,
    };
    Ok(match existing {
        Some(existing) if existing.as_ref() == bytes => Put::Same,
        _ => Put::Taken,
    })
}

/// Best-effort removal of objects this launch wrote.
async fn remove_objects(s3: &aws_sdk_s3::Client, bucket: &str, keys: &[&str]) {
    for key in keys {
        let _ = s3.delete_object().bucket(bucket).key(*key).send().await;
    }
}

/// Save the record locally and beside the config in S3.
pub async fn save_everywhere(
    root: &std::path::Path,
    clients: &Clients,
    record: &crate::experiment::record::RunRecord,
) -> Result<()> {
    record.save(root)?;
    let (bucket, _) = split_s3(&record.config_uri)?;
    let key = format!("{}record.json", job_prefix(&record.job_name));
    clients
        .s3
        .put_object()
        .bucket(bucket)
        .key(&key)
        .body(record.to_json_pretty().into())
        .content_type("application/json")
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "saving the record to s3://{bucket}/{key}: {}",
                crate::aws::error_chain(&e)
            )
        })?;
    Ok(())
}

/// Refresh `record` from `DescribeTrainingJob`; the new secondary-status
/// transitions since `seen`.
pub async fn refresh(
    clients: &Clients,
    record: &mut crate::experiment::record::RunRecord,
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
        record.finished = Some(crate::experiment::record::now());
    }
    let new = state.transitions.get(*seen..).unwrap_or_default().to_vec();
    *seen = state.transitions.len();
    Ok(new)
}

/// Poll with backoff until the job ends, printing status transitions and
/// log lines as they come.
pub async fn follow(
    root: &std::path::Path,
    clients: &Clients,
    record: &mut crate::experiment::record::RunRecord,
) -> Result<()> {
    let mut seen = 0;
    let mut logs = LogCursor::default();
    let mut delay = Duration::from_secs(2);
    loop {
        for (status, message) in refresh(clients, record, &mut seen).await? {
            eprintln!("{}: {status}: {message}", record.job_name);
        }
        for line in logs.next(&clients.logs, &record.job_name).await {
            println!("{line}");
        }
        if record.status.is_terminal() {
            break;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 3 / 2).min(Duration::from_secs(30));
    }
    save_everywhere(root, clients, record).await
}

/// Where `experiment logs` is in each of a job's CloudWatch streams.
#[derive(Debug, Default)]
pub struct LogCursor {
    tokens: BTreeMap<String, String>,
}

impl LogCursor {
    /// Log lines new since the last call, stream by stream. A missing log
    /// group or stream is simply "nothing yet".
    pub async fn next(&mut self, logs: &aws_sdk_cloudwatchlogs::Client, job: &str) -> Vec<String> {
        let mut out = Vec::new();
        let streams = match logs
            .describe_log_streams()
            .log_group_name(LOG_GROUP)
            .log_stream_name_prefix(format!("{job}/"))
            .send()
            .await
        {
            Ok(s) => s,
            Err(_) => return out,
        };
        for stream in streams.log_streams() {
            let Some(name) = stream.log_stream_name() else {
                continue;
            };
            loop {
                let mut call = logs
                    .get_log_events()
                    .log_group_name(LOG_GROUP)
                    .log_stream_name(name)
                    .start_from_head(true);
                if let Some(t) = self.tokens.get(name) {
                    call = call.next_token(t);
                }
                let Ok(page) = call.send().await else { break };
                let events = page.events();
                out.extend(
                    events
                        .iter()
                        .filter_map(|e| e.message().map(str::to_string)),
                );
                let next = page.next_forward_token().map(str::to_string);
                let done = events.is_empty()
                    || next.as_deref() == self.tokens.get(name).map(|s| s.as_str());
                if let Some(t) = next {
                    self.tokens.insert(name.to_string(), t);
                }
                if done {
                    break;
                }
            }
        }
        out
    }
}

/// Every run record under `s3://bucket/experiments/*/record.json`
/// (paginated listing, concurrent downloads); unreadable ones are reported.
pub async fn remote_records(
    clients: &Clients,
    bucket: &str,
) -> Result<Vec<crate::experiment::record::RunRecord>> {
    use futures_util::StreamExt;
    let mut keys = Vec::new();
    let mut pages = clients
        .s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix("experiments/")
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            anyhow::anyhow!(
                "listing s3://{bucket}/experiments/: {}",
                crate::aws::error_chain(&e)
            )
        })?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key())
                .filter(|k| k.ends_with("/record.json"))
                .map(str::to_string),
        );
    }
    let records = futures_util::stream::iter(keys)
        .map(|key| async move {
            let got = clients
                .s3
                .get_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await;
            let bytes = match got {
                Ok(o) => o.body.collect().await.map(|b| b.into_bytes()).ok(),
                Err(_) => None,
            };
            match bytes.map(|b| serde_json::from_slice(&b)) {
                Some(Ok(r)) => Some(r),
                _ => {
                    eprintln!("warning: skipping s3://{bucket}/{key}: not a readable run record");
                    None
                }
            }
        })
        .buffer_unordered(16)
        .filter_map(|r| async move { r })
        .collect::<Vec<_>>()
        .await;
    Ok(records)
}

/// Download and unpack `s3://.../model.tar.gz` into `dir` (see
/// [`artifacts`](crate::experiment::artifacts)), streamed: the body goes
/// through gzip and tar as it arrives, never held whole.
pub async fn fetch(
    clients: &Clients,
    uri: &str,
    dir: &std::path::Path,
) -> Result<crate::experiment::artifacts::Unpacked> {
    use crate::experiment::artifacts;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(spot: bool) -> sca_spec::ResolvedJob {
        sca_spec::ResolvedJob {
            region: "us-west-2".into(),
            role_arn: "arn:aws:iam::123456789012:role/R".into(),
            output: "s3://out-bucket/models".into(),
            config_bucket: "cfg-bucket".into(),
            ecr_repository: "sca-train".into(),
            image_name: "sca-train".into(),
            instance_type: "ml.p3.2xlarge".into(),
            instance_count: 1,
            volume_gb: 50,
            max_runtime_secs: 7 * 3600,
            max_wait_secs: spot.then_some(10 * 3600),
            checkpoint_s3: spot.then(|| "s3://out-bucket/ckpt/job".to_string()),
        }
    }

    fn request(spot: bool) -> TrainingJobRequest {
        let facts = JobFacts {
            experiment: "exp".into(),
            experiment_sha256: "abc".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            dirty: false,
            image_digest: "sha256:ff".into(),
            data_manifest_sha256: Some("m1".into()),
            launch_id: "0f".repeat(16),
        };
        let mut extra = BTreeMap::new();
        extra.insert("team".to_string(), "snow".to_string());
        extra.insert("sca:commit".to_string(), "forged".to_string());
        TrainingJobRequest::new(
            "exp-0123456-20261126-120000",
            &resolved(spot),
            "123.dkr.ecr.us-west-2.amazonaws.com/sca-train@sha256:ff",
            "s3://cfg-bucket/experiments/exp-0123456-20261126-120000/config/",
            BTreeMap::from([("experiment_sha256".to_string(), "abc".to_string())]),
            &facts,
            &extra,
        )
    }

    #[test]
    fn request_has_the_api_shape() {
        let json = serde_json::to_value(request(true)).unwrap();
        assert_eq!(
            json["AlgorithmSpecification"]["TrainingImage"],
            "123.dkr.ecr.us-west-2.amazonaws.com/sca-train@sha256:ff"
        );
        assert_eq!(json["AlgorithmSpecification"]["TrainingInputMode"], "File");
        assert_eq!(
            json["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"],
            "s3://cfg-bucket/experiments/exp-0123456-20261126-120000/config/"
        );
        assert_eq!(json["InputDataConfig"][0]["ChannelName"], "config");
        assert_eq!(json["ResourceConfig"]["VolumeSizeInGB"], 50);
        assert_eq!(json["StoppingCondition"]["MaxRuntimeInSeconds"], 25200);
        assert_eq!(json["StoppingCondition"]["MaxWaitTimeInSeconds"], 36000);
        assert_eq!(json["EnableManagedSpotTraining"], true);
        assert_eq!(json["CheckpointConfig"]["LocalPath"], "/opt/ml/checkpoints");
        let plain = serde_json::to_value(request(false)).unwrap();
        assert!(plain["StoppingCondition"]
            .get("MaxWaitTimeInSeconds")
            .is_none());
        assert!(plain.get("CheckpointConfig").is_none());
        assert_eq!(plain["EnableManagedSpotTraining"], false);
    }

    /// Each job checkpoints under `<checkpoint_s3>/<job>/`, a trailing `/`
    /// or not (before: `checkpoint_s3` as written, shared by every job of
    /// the experiment, so a later job resumed an earlier one's checkpoints).
    #[test]
    fn each_job_checkpoints_under_its_own_prefix() {
        let json = serde_json::to_value(request(true)).unwrap();
        assert_eq!(
            json["CheckpointConfig"]["S3Uri"],
            "s3://out-bucket/ckpt/job/exp-0123456-20261126-120000/"
        );
        let facts = JobFacts {
            experiment: "exp".into(),
            experiment_sha256: "abc".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            dirty: false,
            image_digest: "sha256:ff".into(),
            data_manifest_sha256: None,
            launch_id: "0f".repeat(16),
        };
        let cases = [
            ("s3://out-bucket/ckpt/job", "s3://out-bucket/ckpt/job/"),
            ("s3://out-bucket/ckpt/job/", "s3://out-bucket/ckpt/job/"),
            ("s3://out-bucket/ckpt/job//", "s3://out-bucket/ckpt/job/"),
            ("s3://out-bucket", "s3://out-bucket/"),
            ("s3://out-bucket/", "s3://out-bucket/"),
        ];
        for (base, under) in cases {
            let uris: Vec<String> = ["exp-0123456-20261126-120000", "exp-0123456-20261126-120001"]
                .into_iter()
                .map(|name| {
                    let mut job = resolved(true);
                    job.checkpoint_s3 = Some(base.to_string());
                    let r = TrainingJobRequest::new(
                        name,
                        &job,
                        "image@sha256:ff",
                        "s3://cfg-bucket/experiments/x/config/",
                        BTreeMap::new(),
                        &facts,
                        &BTreeMap::new(),
                    );
                    r.checkpoint_config
                        .expect("spot sets a checkpoint config")
                        .s3_uri
                })
                .collect();
            assert_eq!(
                uris,
                [
                    format!("{under}exp-0123456-20261126-120000/"),
                    format!("{under}exp-0123456-20261126-120001/")
                ],
                "{base}"
            );
        }
    }

    #[test]
    fn tags_carry_the_pins_and_users_cannot_forge_them() {
        let r = request(false);
        let get = |k: &str| {
            r.tags
                .iter()
                .filter(|t| t.key == k)
                .map(|t| t.value.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            get(TAG_COMMIT),
            ["0123456789abcdef0123456789abcdef01234567"]
        );
        assert_eq!(get(TAG_IMAGE_DIGEST), ["sha256:ff"]);
        assert_eq!(get(TAG_EXPERIMENT_SHA256), ["abc"]);
        assert_eq!(get(TAG_EXPERIMENT), ["exp"]);
        assert_eq!(get(TAG_LAUNCH_ID), ["0f".repeat(16).as_str()]);
        assert_eq!(get("team"), ["snow"]);
    }

    #[test]
    fn metric_regexes_match_the_trainers_log_lines() {
        let r = request(false);
        let line = "epoch=3 split=val loss=0.123400 iou=0.910000 precision=0.950000 recall=0.940000 f1=0.945000 mcc=0.900000 accuracy=0.990000 seconds=12.000";
        let defs = &r.algorithm_specification.metric_definitions;
        assert!(defs.len() >= 8, "{defs:?}");
        let iou = defs.iter().find(|d| d.name == "val:iou").expect("val:iou");
        let re = regex::Regex::new(&iou.regex).unwrap();
        assert_eq!(&re.captures(line).unwrap()[1], "0.910000");
        let train_iou = defs.iter().find(|d| d.name == "train:iou").unwrap();
        assert!(regex::Regex::new(&train_iou.regex)
            .unwrap()
            .captures(line)
            .is_none());
    }

    /// The `X-Amz-Target` header and the body of a request.
    type Captured = (Option<String>, Vec<u8>);

    /// Records the request the SDK is about to send, and stops it there.
    #[derive(Debug, Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Option<Captured>>>);

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

    fn capturing_client() -> (aws_sdk_sagemaker::Client, Capture) {
        let capture = Capture::default();
        let conf = aws_sdk_sagemaker::Config::builder()
            .behavior_version(aws_sdk_sagemaker::config::BehaviorVersion::latest())
            .region(aws_sdk_sagemaker::config::Region::new("us-west-2"))
            .credentials_provider(aws_sdk_sagemaker::config::Credentials::for_tests())
            .interceptor(capture.clone())
            .build();
        (aws_sdk_sagemaker::Client::from_conf(conf), capture)
    }

    /// A job as `describe_with_tags` finds it, with `launch` as its launch id tag.
    fn job(launch: Option<&str>) -> JobState {
        JobState {
            arn: Some("arn:aws:sagemaker:us-west-2:123456789012:training-job/j".into()),
            tags: launch
                .map(|l| BTreeMap::from([(TAG_LAUNCH_ID.to_string(), l.to_string())]))
                .unwrap_or_default(),
            ..JobState::default()
        }
    }

    #[test]
    fn a_failed_create_is_ours_only_by_the_launch_id_and_unknown_when_unread() {
        use AfterCreate::{Ours, Taken, Unknown};
        use CreateFailure::{NameInUse, NoAnswer};
        let arn = job(None).arn.unwrap();
        let cases: Vec<(CreateFailure, Option<Result<JobState>>, AfterCreate)> = vec![
            // A retried create found its own job; a lost answer too (before:
            // an error and no record of a running job).
            (NameInUse, Some(Ok(job(Some("me")))), Ours(arn.clone())),
            (NoAnswer, Some(Ok(job(Some("me")))), Ours(arn.clone())),
            // Another launch's: refused, its channel (this prefix) left alone.
            (
                NameInUse,
                Some(Ok(job(Some("other")))),
                Taken(job(Some("other")).tags),
            ),
            (NoAnswer, Some(Ok(job(None))), Taken(BTreeMap::new())),
            // Tags (or the job) unreadable: unknown, never "not ours" (before:
            // ListTags errors read as no tags, so this launch removed its own
            // job's config channel).
            (
                NameInUse,
                Some(Err(anyhow::anyhow!("ListTags: AccessDenied"))),
                Unknown("ListTags: AccessDenied".into()),
            ),
            (
                NoAnswer,
                Some(Err(anyhow::anyhow!("not found"))),
                Unknown("not found".into()),
            ),
            (CreateFailure::Refused, None, AfterCreate::Refused),
        ];
        for (failure, existing, expected) in cases {
            assert_eq!(
                after_create(failure, "me", existing),
                expected,
                "{failure:?}"
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

    /// The SDK call carries the request exactly: the body the SDK would send.
    #[tokio::test]
    async fn sdk_call_sends_the_request_and_stop_names_the_job() {
        let (client, capture) = capturing_client();
        assert!(request(true)
            .send_with(&client)
            .unwrap()
            .send()
            .await
            .is_err());
        let (target, body) = capture.0.lock().unwrap().take().expect("a request");
        assert_eq!(target.as_deref(), Some("SageMaker.CreateTrainingJob"));
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let expected = serde_json::to_value(request(true)).unwrap();
        for key in [
            "TrainingJobName",
            "RoleArn",
            "InputDataConfig",
            "OutputDataConfig",
            "ResourceConfig",
            "StoppingCondition",
            "CheckpointConfig",
            "HyperParameters",
            "EnableManagedSpotTraining",
            "Tags",
        ] {
            assert_eq!(body[key], expected[key], "{key}");
        }
        assert_eq!(
            body["AlgorithmSpecification"],
            expected["AlgorithmSpecification"]
        );

        let (client, capture) = capturing_client();
        assert!(stop_request(&client, "exp-0123456-20261126-120000")
            .send()
            .await
            .is_err());
        let (target, body) = capture.0.lock().unwrap().take().expect("a request");
        assert_eq!(target.as_deref(), Some("SageMaker.StopTrainingJob"));
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"TrainingJobName": "exp-0123456-20261126-120000"})
        );
    }
}
