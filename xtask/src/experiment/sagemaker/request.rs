//! The `CreateTrainingJob` request as plain data, built from a job's
//! settings and [`Pins`] (so `--dry-run` can print it and tests can check
//! it), the same request as the SDK's call, and `StopTrainingJob`.

use std::collections::BTreeMap;

use anyhow::Result;
use aws_sdk_sagemaker::types as sm;
use serde::Serialize;

use crate::experiment::pins::Pins;

/// Where the trainer's checkpoints are, inside the container.
pub const CHECKPOINT_LOCAL_PATH: &str = "/opt/ml/checkpoints";

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

/// The launcher's tags besides the pins.
#[derive(Debug, Clone, Copy)]
pub struct LaunchTags<'a> {
    /// The experiment's name.
    pub experiment: &'a str,
    /// Random per launch: tells this launch's job from one that another
    /// machine created under the same name (same experiment, commit and second).
    pub launch_id: &'a str,
    /// The experiment's own `job.tags` (any `sca:` key is dropped: those are ours).
    pub user: &'a BTreeMap<String, String>,
    /// The sweep the job is a point of.
    pub sweep: Option<&'a str>,
}

pub const TAG_LAUNCH_ID: &str = "sca:launch-id";
pub const TAG_EXPERIMENT: &str = "sca:experiment";
pub const TAG_SWEEP: &str = "sca:sweep";

impl TrainingJobRequest {
    /// The request for `job_name` with settings `job`: the image pinned in
    /// `pins` (by digest), its config channel prefix
    /// (`s3://bucket/experiments/<job>/config/`), the pins and `tags` as
    /// tags; checkpoints go to the job's own prefix ([`checkpoint_prefix`])
    /// under `job.checkpoint_s3`.
    pub fn new(
        job_name: &str,
        job: &sca_spec::ResolvedJob,
        pins: &Pins,
        config_prefix: &str,
        hyper_parameters: BTreeMap<String, String>,
        tags: &LaunchTags,
    ) -> Self {
        let image = pins
            .image
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let mut all = vec![tag(TAG_EXPERIMENT, tags.experiment)];
        all.extend(pins.tags().into_iter().map(|(k, v)| tag(k, &v)));
        all.push(tag(TAG_LAUNCH_ID, tags.launch_id));
        if let Some(sweep) = tags.sweep {
            all.push(tag(TAG_SWEEP, sweep));
        }
        all.extend(
            tags.user
                .iter()
                .filter(|(k, _)| !k.starts_with("sca:"))
                .map(|(k, v)| tag(k, v)),
        );
        TrainingJobRequest {
            training_job_name: job_name.to_string(),
            role_arn: job.role_arn.clone(),
            algorithm_specification: AlgorithmSpecification {
                training_image: image,
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
            tags: all,
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

/// `StopTrainingJob` for `job` (SageMaker then sends SIGTERM, and SIGKILL after 120 s).
pub fn stop_request(
    client: &aws_sdk_sagemaker::Client,
    job: &str,
) -> aws_sdk_sagemaker::operation::stop_training_job::builders::StopTrainingJobFluentBuilder {
    client.stop_training_job().training_job_name(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::pins::{
        ImageRef, TAG_COMMIT, TAG_DATA_MANIFEST_SHA256, TAG_DIRTY, TAG_EXPERIMENT_SHA256,
        TAG_IMAGE_DIGEST,
    };
    use crate::experiment::sagemaker::client::capturing_client;

    const REPO: &str = "123.dkr.ecr.us-west-2.amazonaws.com/sca-train";
    const DIGEST: &str = "sha256:ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00";

    fn tags(user: &BTreeMap<String, String>) -> LaunchTags<'_> {
        LaunchTags {
            experiment: "exp",
            launch_id: "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f",
            user,
            sweep: None,
        }
    }

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

    fn pins(manifest: Option<&str>) -> Pins {
        Pins {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            dirty: false,
            diff_sha256: None,
            image: Some(ImageRef::parse(&format!("{REPO}@{DIGEST}")).unwrap()),
            experiment_sha256: "abc".into(),
            data_manifest_sha256: manifest.map(str::to_string),
            init_checkpoint: None,
        }
    }

    fn request(spot: bool) -> TrainingJobRequest {
        let mut extra = BTreeMap::new();
        extra.insert("team".to_string(), "snow".to_string());
        extra.insert("sca:commit".to_string(), "forged".to_string());
        TrainingJobRequest::new(
            "exp-0123456-20261126-120000",
            &resolved(spot),
            &pins(Some("m1")),
            "s3://cfg-bucket/experiments/exp-0123456-20261126-120000/config/",
            BTreeMap::from([("experiment_sha256".to_string(), "abc".to_string())]),
            &tags(&extra),
        )
    }

    #[test]
    fn request_has_the_api_shape() {
        let json = serde_json::to_value(request(true)).unwrap();
        assert_eq!(
            json["AlgorithmSpecification"]["TrainingImage"],
            format!("{REPO}@{DIGEST}")
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
        let pins = pins(None);
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
                        &pins,
                        "s3://cfg-bucket/experiments/x/config/",
                        BTreeMap::new(),
                        &tags(&BTreeMap::new()),
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
        assert_eq!(get(TAG_IMAGE_DIGEST), [DIGEST]);
        assert_eq!(get(TAG_DATA_MANIFEST_SHA256), ["m1"]);
        assert!(get(TAG_DIRTY).is_empty());
        assert_eq!(get(TAG_EXPERIMENT_SHA256), ["abc"]);
        assert_eq!(get(TAG_EXPERIMENT), ["exp"]);
        assert_eq!(get(TAG_LAUNCH_ID), ["0f".repeat(16).as_str()]);
        assert_eq!(get("team"), ["snow"]);
        // The launcher's tags come first, then the user's.
        assert_eq!(r.tags.last().unwrap().key, "team");
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
