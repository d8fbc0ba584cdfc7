//! Fault injection (issue 17): the launcher and the trainer against moto
//! through our fault proxy (`sca_e2e::fault_proxy`), bodies cut short,
//! stalled, answers lost after the request was acted on, access denied.
//! Each case asserts the final state: a fault the tool survives gives the
//! model bit for bit of the run without faults; one it cannot survive fails
//! the run cleanly (a Failed record naming the cause, no model).
//!
//! The local backend runs the trainer as a host process with the
//! launcher's environment, so `AWS_ENDPOINT_URL` pointing at the proxy puts
//! both the launcher's data listing and the trainer's tile reads behind it.

use std::path::Path;
use std::time::Duration;

use sca_e2e::fault_proxy::{Fault, FaultProxy, Gate, Rule};
use sca_e2e::lab::{
    emulated, experiment, make_bucket, metrics_without_time, s3_dataset, safetensors_weights,
    Emulated, Lab,
};
use sca_e2e::{boto3, require_services, unique, update_json_object, Run};
use serde_json::Value;

/// An S3 dataset of 16 synthetic tile pairs in a fresh bucket.
fn dataset() -> String {
    require_services();
    let bucket = unique("sca-faults").to_lowercase();
    make_bucket(&bucket);
    s3_dataset(&bucket)
}

/// Object reads of the dataset (not listings, which carry a query).
fn tile_reads(data: &str) -> String {
    let path = data.trim_start_matches("s3://");
    format!("GET /{path}/")
}

/// Runs `lab`'s experiment on the local backend with S3 behind `proxy`
/// (stalls cut after 2 s), returning the record.
fn run_behind(lab: &Lab, proxy: Option<&FaultProxy>) -> (bool, Value, String) {
    let url = proxy.map(FaultProxy::url);
    let mut env = vec![("SCA_S3_STALL_TIMEOUT_S", "2")];
    if let Some(url) = &url {
        env.push(("AWS_ENDPOINT_URL", url.as_str()));
    }
    let run = lab.xtask_env(
        &["experiment", "run", &lab.file(), "--output", "json"],
        &env,
    );
    let last = run.stdout.lines().last().unwrap_or("").to_string();
    let rec = serde_json::from_str(&last).unwrap_or(Value::Null);
    (run.success(), rec, format!("{run:?}"))
}

/// The run's weights (the model file less its header, whose metadata
/// carries the run's timings).
fn weights(rec: &Value) -> Vec<u8> {
    let dir = rec["artifacts"]
        .as_str()
        .unwrap_or_else(|| panic!("no artifacts in {rec}"));
    safetensors_weights(&Path::new(dir).join("model.safetensors"))
}

#[test]
fn survivable_s3_faults_give_the_model_of_a_run_without_faults() {
    let data = dataset();
    let text = experiment("e2e-faults", &data, &data, false, 2, "");
    let clean = Lab::new(&text);
    let (ok, rec, out) = run_behind(&clean, None);
    assert!(ok, "{out}");
    assert_eq!(rec["status"], "Completed", "{rec}");

    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let reads = tile_reads(&data);
    let proxy = FaultProxy::start(
        &moto,
        vec![
            // Every 5th tile read cut in half (the SDK does not retry a
            // body; the trainer reads it again).
            Rule {
                needle: reads.clone(),
                every: 5,
                limit: usize::MAX,
                fault: Fault::CutMidBody,
            },
            // Two tile reads stall past the 2 s stall timeout.
            Rule {
                needle: reads.clone(),
                every: 11,
                limit: 2,
                fault: Fault::Stall(Duration::from_secs(6)),
            },
            // Two answers lost after moto served them (the SDK retries).
            Rule {
                needle: reads.clone(),
                every: 13,
                limit: 2,
                fault: Fault::DropResponse,
            },
            // A listing page lost too.
            Rule {
                needle: "list-type=2".into(),
                every: 3,
                limit: 1,
                fault: Fault::DropResponse,
            },
        ],
    );
    let faulty = Lab::new(&text);
    let (ok, rec2, out) = run_behind(&faulty, Some(&proxy));
    assert!(ok, "{out}");
    assert_eq!(rec2["status"], "Completed", "{rec2}");
    for i in 0..4 {
        assert!(
            proxy.injected(i) > 0,
            "rule {i} injected no fault ({} matched): {:?}",
            proxy.matched(i),
            proxy.requests()
        );
    }
    assert_eq!(rec2["data_objects"], rec["data_objects"]);
    assert_eq!(rec2["data_manifest_sha256"], rec["data_manifest_sha256"]);
    assert!(
        weights(&rec2) == weights(&rec),
        "the weights trained through the faults differ from the clean run's"
    );
    assert_eq!(
        metrics_without_time(&rec2["final_metrics"]),
        metrics_without_time(&rec["final_metrics"])
    );
}

#[test]
fn denied_tile_reads_fail_the_run_cleanly_and_say_why() {
    let data = dataset();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = FaultProxy::start(
        &moto,
        vec![Rule::always(tile_reads(&data), Fault::AccessDenied)],
    );
    let lab = Lab::new(&experiment("e2e-denied", &data, &data, false, 1, ""));
    let (ok, rec, out) = run_behind(&lab, Some(&proxy));
    assert!(proxy.injected(0) > 0, "{:?}", proxy.requests());
    assert!(!ok, "a run whose tiles cannot be read must fail: {out}");
    assert!(
        out.contains("AccessDenied") && out.contains(&data),
        "the error names the cause and the data: {out}"
    );
    // Whatever was recorded says Failed, never Completed, and holds no model.
    if rec != Value::Null {
        assert_eq!(rec["status"], "Failed", "{rec}");
    }
    let runs = lab.job_dirs();
    for entry in std::fs::read_dir(&lab.runs).into_iter().flatten().flatten() {
        let record = entry.path().join("record.json");
        if let Ok(bytes) = std::fs::read(&record) {
            let r: Value = serde_json::from_slice(&bytes).unwrap();
            assert_ne!(r["status"], "Completed", "{r}");
            assert_ne!(
                r["status"], "InProgress",
                "a failed run left as running: {r}"
            );
        }
    }
    assert!(runs <= 1, "one launch, at most one run directory");
}

/// A dataset bucket in another region than the job's (S3's 301, which the
/// Rust SDK does not follow) fails the launch naming the bucket's region
/// and the fix, not an opaque redirect.
#[test]
fn a_bucket_in_another_region_is_named_with_its_region() {
    let data = dataset();
    let bucket = data
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = FaultProxy::start(
        &moto,
        vec![Rule::always(
            format!("GET /{bucket}/?list-type"),
            Fault::BucketElsewhere("ap-southeast-2"),
        )],
    );
    let lab = Lab::new(&experiment("e2e-elsewhere", &data, &data, false, 1, ""));
    let (ok, _, out) = run_behind(&lab, Some(&proxy));
    assert!(proxy.injected(0) > 0, "{:?}", proxy.requests());
    assert!(!ok, "{out}");
    assert!(
        out.contains("the bucket is in region ap-southeast-2")
            && out.contains("--region ap-southeast-2")
            && out.contains(&bucket),
        "{out}"
    );
    assert_eq!(lab.job_dirs(), 0, "nothing launched: {out}");
}

/// Tile reads answered without an ETag: the pin (size and ETag) cannot be
/// checked, and a same-size replacement would pass a size check, so the
/// run fails naming the cause instead of training on unverified bytes.
#[test]
fn tile_reads_without_an_etag_fail_the_run_rather_than_go_unchecked() {
    let data = dataset();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = FaultProxy::start(
        &moto,
        vec![Rule::always(tile_reads(&data), Fault::DropHeader("ETag"))],
    );
    let lab = Lab::new(&experiment("e2e-no-etag", &data, &data, false, 1, ""));
    let (ok, rec, out) = run_behind(&lab, Some(&proxy));
    assert!(proxy.injected(0) > 0, "{:?}", proxy.requests());
    assert!(!ok, "a run whose reads cannot be checked must fail: {out}");
    assert!(out.contains("no ETag"), "the error names the cause: {out}");
    assert_eq!(rec["status"], "Failed", "{rec}");
    assert!(
        !Path::new(rec["artifacts"].as_str().unwrap_or("/nonexistent"))
            .join("model.safetensors")
            .exists(),
        "a model was written from unchecked reads: {rec}"
    );
}

/// CreateTrainingJob acted on but its answer lost, and the SDK's retries
/// throttled (400): the last answer is a refusal, yet the job exists. The
/// launch looks it up by name before believing the refusal, and records it,
/// instead of removing the config channel of a running job.
#[test]
fn a_create_refused_after_a_lost_answer_that_took_is_found_and_recorded() {
    let Emulated {
        data,
        image,
        job_table,
        ..
    } = emulated();
    let proxy = lost_create_then(Fault::Throttling, vec![]);
    let name = unique("e2e-throttled-create");
    let lab = Lab::new(&experiment(&name, &data, &data, false, 1, &job_table));
    let run = sagemaker_run(&lab, &image, &proxy, &[]);
    assert_eq!(proxy.injected(0), 1, "{:?}", proxy.requests());
    assert!(proxy.injected(1) > 0, "{:?}", proxy.requests());
    recorded_with_its_channel(&run, &name, "ThrottlingException");
}

/// As above, the retry answered ResourceLimitExceeded (the quota full of
/// the job the lost attempt created, here one that can never fit): the
/// launch looks the job up before it refuses or waits, and records it.
#[test]
fn a_quota_refusal_after_a_lost_answer_that_took_is_found_and_recorded() {
    let Emulated {
        data,
        image,
        job_table,
        ..
    } = emulated();
    let proxy = lost_create_then(
        Fault::ResourceLimitExceeded {
            limit: 0,
            in_use: 0,
        },
        vec![],
    );
    let name = unique("e2e-quota-after-lost");
    let lab = Lab::new(&experiment(&name, &data, &data, false, 1, &job_table));
    let run = sagemaker_run(&lab, &image, &proxy, &[]);
    assert_eq!(proxy.injected(0), 1, "{:?}", proxy.requests());
    assert!(proxy.injected(1) > 0, "{:?}", proxy.requests());
    recorded_with_its_channel(&run, &name, "ResourceLimitExceeded");
}

/// A refusal after a lost answer, where a listing does not show the new
/// job yet (it lags a create by seconds; here its name is hidden from every
/// ListTrainingJobs): Describe finds it, and the launch records it rather
/// than removing the channel of a running job and saying nothing launched.
#[test]
fn a_refused_create_is_looked_up_by_describe_not_a_lagging_listing() {
    let Emulated {
        data,
        image,
        job_table,
        ..
    } = emulated();
    let name = unique("e2e-listing-lags");
    let shown: &'static str = Box::leak(format!("\"TrainingJobName\": \"{name}").into_boxed_str());
    let proxy = lost_create_then(
        Fault::Throttling,
        vec![Rule::always(
            "SageMaker.ListTrainingJobs",
            Fault::Replace(shown, "\"TrainingJobName\": \"hidden"),
        )],
    );
    let lab = Lab::new(&experiment(&name, &data, &data, false, 1, &job_table));
    let run = sagemaker_run(&lab, &image, &proxy, &[]);
    assert_eq!(proxy.injected(0), 1, "{:?}", proxy.requests());
    recorded_with_its_channel(&run, &name, "ThrottlingException");
}

/// A quota in use for now, and whether an earlier attempt created the job
/// cannot be told (Describe throttled past every try): the launch waits and
/// tries the create again, as without the doubt, rather than giving up with
/// "the outcome is unknown" or withdrawing its channel.
#[test]
fn a_capacity_wait_outlasts_a_lookup_that_cannot_tell() {
    let Emulated {
        data,
        image,
        job_table,
        ..
    } = emulated();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = FaultProxy::start(
        &moto,
        vec![
            Rule {
                needle: "SageMaker.CreateTrainingJob".into(),
                every: 1,
                limit: 1,
                fault: Fault::ResourceLimitExceeded {
                    limit: 1,
                    in_use: 1,
                },
            },
            // Three tries of the SDK's three attempts.
            Rule {
                needle: "SageMaker.DescribeTrainingJob".into(),
                every: 1,
                limit: 9,
                fault: Fault::Throttling,
            },
        ],
    );
    let name = unique("e2e-quota-doubt");
    let lab = Lab::new(&experiment(&name, &data, &data, false, 1, &job_table));
    let run = sagemaker_run(&lab, &image, &proxy, &[]);
    assert_eq!(proxy.injected(0), 1, "{:?}", proxy.requests());
    assert_eq!(proxy.injected(1), 9, "{:?}", proxy.requests());
    assert!(run.success(), "{run:?}");
    assert!(
        run.stderr
            .contains("whether an earlier attempt created it is unknown for now")
            && run.stderr.contains("trying again in 30 s"),
        "{run:?}"
    );
    let rec = Lab::record(&run);
    assert!(rec_job(&rec).starts_with(&name), "{rec}");
    assert_eq!(proxy.matched(0), 2, "one refused create, one that took");
}

fn rec_job(rec: &Value) -> &str {
    rec["job_name"].as_str().expect("a job name")
}

/// A proxy in front of the emulator where the first CreateTrainingJob is
/// acted on but its answer lost (rule 0), every later one answered `then`
/// (rule 1), and `more` rules after those.
fn lost_create_then(then: Fault, more: Vec<Rule>) -> FaultProxy {
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let needle = "SageMaker.CreateTrainingJob";
    let mut rules = vec![
        Rule {
            needle: needle.into(),
            every: 1,
            limit: 1,
            fault: Fault::DropResponse,
        },
        Rule::always(needle, then),
    ];
    rules.extend(more);
    FaultProxy::start(&moto, rules)
}

/// `run` recorded the job of experiment `name` after a create answered
/// `refusal` (the job existing, this launch's), and its config channel is
/// still there for it.
fn recorded_with_its_channel(run: &Run, name: &str, refusal: &str) {
    assert!(
        run.success(),
        "the job exists: the launch must record it: {run:?}"
    );
    assert!(
        run.stderr.contains(refusal)
            && run
                .stderr
                .contains("the job exists, launched by this launch: recorded"),
        "{run:?}"
    );
    let rec = Lab::record(run);
    let job = rec["job_name"].as_str().expect("a job name").to_string();
    assert!(job.starts_with(name), "{rec}");
    // Its config channel is still there for it.
    let uri = rec["config_uri"].as_str().expect("a config URI");
    let (bucket, prefix) = uri
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .unwrap_or_else(|| panic!("not an s3:// URI: {uri}"));
    let listed = boto3(
        "import sys\nr = client('s3').list_objects_v2(Bucket=sys.argv[1], Prefix=sys.argv[2])\nprint(r.get('KeyCount', 0))",
        &[bucket, prefix],
    )
    .ok();
    assert_ne!(
        listed.stdout.trim(),
        "0",
        "the config channel was removed: {rec}"
    );
}

/// A quota the job can never fit (0 instances: the default for many GPU
/// and spot types) is a refusal, not a wait without end: one attempt, the
/// quota named with where to raise it, no job and no config channel left.
#[test]
fn a_quota_the_job_can_never_fit_is_refused_at_once() {
    let Emulated {
        data,
        config_bucket,
        image,
        job_table,
    } = emulated();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = FaultProxy::start(
        &moto,
        vec![Rule {
            needle: "SageMaker.CreateTrainingJob".into(),
            every: 1,
            limit: usize::MAX,
            fault: Fault::ResourceLimitExceeded {
                limit: 0,
                in_use: 0,
            },
        }],
    );
    let name = unique("e2e-no-quota");
    let lab = Lab::new(&experiment(&name, &data, &data, false, 1, &job_table));
    let run = sagemaker_run(&lab, &image, &proxy, &[]);
    assert!(!run.success(), "{run:?}");
    assert_eq!(
        proxy.matched(0),
        1,
        "one attempt, no wait: {:?}",
        proxy.requests()
    );
    assert!(
        run.stderr.contains("can never start")
            && run.stderr.contains("Service Quotas")
            && run.stderr.contains("nothing was launched"),
        "{run:?}"
    );
    assert_eq!(lab.job_dirs(), 0);
    let left = boto3(
        "import sys\nr = client('s3').list_objects_v2(Bucket=sys.argv[1])\nprint(sum(sys.argv[2] in o['Key'] for o in r.get('Contents', [])))",
        &[&config_bucket, &name],
    )
    .ok();
    assert_eq!(
        left.stdout.trim(),
        "0",
        "the config channel was left behind"
    );
}

/// `experiment run` of `lab`'s experiment on SageMaker with `image`, its
/// AWS calls through `proxy`, and `extra` flags; the record printed as JSON.
fn sagemaker_run(lab: &Lab, image: &str, proxy: &FaultProxy, extra: &[&str]) -> Run {
    let file = lab.file();
    let mut args = vec![
        "experiment",
        "run",
        &file,
        "--backend",
        "sagemaker",
        "--image",
        image,
        "--allow-dirty",
        "--output",
        "json",
    ];
    args.extend(extra);
    let url = proxy.url();
    lab.xtask_env(&args, &[("AWS_ENDPOINT_URL", url.as_str())])
}

/// `run --wait` follows a job for hours: Describe answers lost past the
/// SDK's own retries are looked at again, and the job is followed to its
/// end, not abandoned (exit 1, record InProgress) at the first.
#[test]
fn following_a_job_outlasts_lost_describe_answers() {
    let Emulated {
        data,
        image,
        job_table,
        ..
    } = emulated();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = FaultProxy::start(
        &moto,
        vec![Rule {
            needle: "SageMaker.DescribeTrainingJob".into(),
            every: 1,
            limit: 4,
            fault: Fault::DropResponse,
        }],
    );
    let name = unique("e2e-lost-describe");
    let lab = Lab::new(&experiment(&name, &data, &data, false, 1, &job_table));
    let run = sagemaker_run(&lab, &image, &proxy, &["--wait"]);
    assert_eq!(proxy.injected(0), 4, "{:?}", proxy.requests());
    assert!(run.success(), "{run:?}");
    assert!(run.stderr.contains("looking again (1 of 5)"), "{run:?}");
    let rec = Lab::record(&run);
    assert_eq!(rec["status"], "Completed", "{rec}");
}

/// CreateTrainingJob acted on but every answer lost (the SDK's retries
/// included): the launch cannot know whether its job exists, so it asks
/// SageMaker by name, finds its own job (by its launch id) and records it,
/// instead of leaving a job that no record names.
#[test]
fn a_training_job_created_without_an_answer_is_found_and_recorded() {
    let Emulated {
        data,
        image,
        job_table,
        ..
    } = emulated();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = FaultProxy::start(
        &moto,
        vec![Rule {
            needle: "SageMaker.CreateTrainingJob".into(),
            every: 1,
            limit: usize::MAX,
            fault: Fault::DropResponse,
        }],
    );
    let name = unique("e2e-lost-create");
    let lab = Lab::new(&experiment(&name, &data, &data, false, 1, &job_table));
    let run = sagemaker_run(&lab, &image, &proxy, &[]);
    assert!(proxy.injected(0) > 0, "{:?}", proxy.requests());
    assert!(
        run.success(),
        "the job exists: the launch must record it: {run:?}"
    );
    assert!(
        run.stderr
            .contains("the job exists, launched by this launch: recorded"),
        "resolved by name and launch id, not by a create that answered: {run:?}"
    );
    let rec = Lab::record(&run);
    let job = rec["job_name"].as_str().expect("a job name").to_string();
    assert!(job.starts_with(&name), "{rec}");
    let status = boto3(
        "import sys\nprint(client('sagemaker').describe_training_job(TrainingJobName=sys.argv[1])['TrainingJobName'])",
        &[&job],
    )
    .ok();
    assert_eq!(
        status.stdout.trim(),
        job,
        "the recorded job is the emulator's"
    );
    // The record on disk is the one printed, and it names the job.
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(lab.runs.join(&job).join("record.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk["job_name"], job.as_str());
}

/// A SageMaker job launched and not followed: its record says InProgress,
/// here and in S3 (`key` in `config_bucket`).
struct Unfollowed {
    lab: Lab,
    job: String,
    key: String,
    config_bucket: String,
    moto: String,
}

fn unfollowed(prefix: &str) -> Unfollowed {
    let Emulated {
        data,
        image,
        job_table,
        config_bucket,
    } = emulated();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let name = unique(prefix);
    let lab = Lab::new(&experiment(&name, &data, &data, false, 1, &job_table));
    let direct = FaultProxy::start(&moto, vec![]);
    let job = Lab::record(&sagemaker_run(&lab, &image, &direct, &[]).ok())["job_name"]
        .as_str()
        .unwrap()
        .to_string();
    let key = format!("experiments/{job}/record.json");
    Unfollowed {
        lab,
        job,
        key,
        config_bucket,
        moto,
    }
}

/// Every SageMaker Describe answers that the job is still training (the
/// emulator ends jobs at once).
fn still_training() -> Rule {
    Rule::always(
        "SageMaker.DescribeTrainingJob",
        Fault::Replace(
            "\"TrainingJobStatus\": \"Completed\"",
            "\"TrainingJobStatus\": \"InProgress\"",
        ),
    )
}

/// The status of the record `key` in `bucket`, as boto3 reads it.
fn stored_status(bucket: &str, key: &str) -> String {
    boto3(
        "import sys, json\nprint(json.loads(client('s3').get_object(Bucket=sys.argv[1], Key=sys.argv[2])['Body'].read())['status'])",
        &[bucket, key],
    )
    .ok()
    .stdout
    .trim()
    .to_string()
}

/// Another machine's end of the job whose record is `key` in `bucket`.
fn put_end(bucket: &str, key: &str) {
    boto3(
        r#"
import sys, json
s3 = client("s3")
record = json.loads(s3.get_object(Bucket=sys.argv[1], Key=sys.argv[2])["Body"].read())
record.update(status="Completed", finished="2026-12-07T00:00:00Z")
s3.put_object(Bucket=sys.argv[1], Key=sys.argv[2], Body=json.dumps(record).encode())
"#,
        &[bucket, key],
    )
    .ok();
}

/// Two machines write one job's record in S3: the launcher following the
/// job records its end, while a `status` elsewhere that looked at the job
/// just before it ended puts that look. The late put is conditional on the
/// copy it read (`If-Match`), so it fails, the copy is read again, and the
/// end stands, instead of a record that says a completed job still runs.
#[test]
fn a_stale_status_never_puts_over_an_end_in_s3() {
    let Unfollowed {
        lab,
        job,
        key,
        config_bucket,
        moto,
    } = unfollowed("e2e-stale-put");
    // `status` sees the job still training (the emulator ends jobs at
    // once), and its put of that is held until the end is put.
    static RELEASE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let proxy = FaultProxy::start(
        &moto,
        vec![
            still_training(),
            Rule {
                needle: format!("PUT /{config_bucket}/{key}"),
                every: 1,
                limit: 1,
                fault: Fault::HoldUntil(Gate(&RELEASE)),
            },
        ],
    );
    let url = proxy.url();
    let mut env = lab.env();
    env.push(("AWS_ENDPOINT_URL", url));
    let status = sca_e2e::xtask(["experiment", "status", &job, "--output", "json"])
        .envs(env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    proxy.wait_matched(1);
    // The launcher's end, put while the stale look's put is held.
    put_end(&config_bucket, &key);
    RELEASE.store(true, std::sync::atomic::Ordering::SeqCst);
    let out: Run = status.wait_with_output().unwrap().into();
    assert_eq!(proxy.injected(1), 1, "{:?}", proxy.requests());
    assert!(proxy.injected(0) >= 1, "{:?}", proxy.requests());
    assert!(out.success(), "{out:?}");
    assert_eq!(stored_status(&config_bucket, &key), "Completed", "{out:?}");
    // And the command reports the end it found, not its stale look.
    assert_eq!(Lab::record(&out)["status"], "Completed", "{out:?}");
}

/// A `status` whose look at the bucket's copy breaks off (the body cut
/// short) never puts its stale view blind: it looks again and finds the end
/// another machine recorded meanwhile, which stands.
#[test]
fn a_status_whose_look_at_the_bucket_breaks_off_never_puts_over_an_end() {
    let Unfollowed {
        lab,
        job,
        key,
        config_bucket,
        moto,
    } = unfollowed("e2e-cut-look");
    // Another machine's end, in the bucket before this `status` looks.
    put_end(&config_bucket, &key);
    // This `status` sees the job still training, and its first look at
    // the bucket's copy is cut short.
    let proxy = FaultProxy::start(
        &moto,
        vec![
            still_training(),
            Rule {
                needle: format!("GET /{config_bucket}/{key}"),
                every: 1,
                limit: 1,
                fault: Fault::CutMidBody,
            },
        ],
    );
    let mut env = lab.env();
    env.push(("AWS_ENDPOINT_URL", proxy.url()));
    let out: Run = sca_e2e::xtask(["experiment", "status", &job, "--output", "json"])
        .envs(env)
        .output()
        .unwrap()
        .into();
    assert_eq!(proxy.injected(1), 1, "{:?}", proxy.requests());
    assert!(out.success(), "{out:?}");
    assert_eq!(stored_status(&config_bucket, &key), "Completed", "{out:?}");
    assert_eq!(Lab::record(&out)["status"], "Completed", "{out:?}");
}

/// The lease objects under `claims/` in `bucket`: (key, holder line).
fn claims(bucket: &str) -> Vec<(String, String)> {
    let out = boto3(
        r#"
import sys, json
s3 = client("s3")
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=sys.argv[1], Prefix="claims/").get("Contents", [])]
print(json.dumps([[k, json.loads(s3.get_object(Bucket=sys.argv[1], Key=k)["Body"].read())["holder"]] for k in keys]))
"#,
        &[bucket],
    )
    .ok();
    serde_json::from_str(out.stdout.trim()).unwrap()
}

/// The number of training jobs whose name holds `name`.
fn jobs_named(name: &str) -> usize {
    let out = boto3(
        "import sys\npages = client('sagemaker').get_paginator('list_training_jobs').paginate(NameContains=sys.argv[1])\nprint(sum(len(p['TrainingJobSummaries']) for p in pages))",
        &[name],
    )
    .ok();
    out.stdout.trim().parse().unwrap()
}

/// A SageMaker launch of `lab`'s experiment with runs directory `runs`,
/// started in the background behind `proxy`; and, once a request of it is
/// held by rule 0 of `proxy`, its process.
fn launch_held(lab: &Lab, image: &str, runs: &Path, proxy: &FaultProxy) -> std::process::Child {
    let file = lab.file();
    let mut env = lab.env();
    env.push(("SCA_RUNS_DIR", runs.display().to_string()));
    env.push(("AWS_ENDPOINT_URL", proxy.url()));
    let child = sca_e2e::xtask([
        "experiment",
        "run",
        &file,
        "--backend",
        "sagemaker",
        "--image",
        image,
        "--output",
        "json",
    ])
    .envs(env)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    proxy.wait_matched(0);
    child
}

/// A first machine's SageMaker launch of a new experiment (its runs
/// directory `elsewhere`), held at its `CreateTrainingJob` by `proxy`
/// until `gate` is raised; the proxy keeps SageMaker's job-name rule where
/// `unique_names`.
struct HeldAtCreate {
    emulated: Emulated,
    moto: String,
    name: String,
    lab: Lab,
    elsewhere: tempfile::TempDir,
    proxy: FaultProxy,
    first: std::process::Child,
}

fn held_at_its_create(
    prefix: &str,
    gate: &'static std::sync::atomic::AtomicBool,
    unique_names: bool,
) -> HeldAtCreate {
    let emulated = emulated();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let name = unique(prefix);
    let (data, table) = (&emulated.data, &emulated.job_table);
    let lab = Lab::new(&experiment(&name, data, data, false, 1, table));
    let elsewhere = tempfile::tempdir().unwrap();
    let rules = vec![Rule {
        needle: "SageMaker.CreateTrainingJob".into(),
        every: 1,
        limit: 1,
        fault: Fault::HoldUntil(Gate(gate)),
    }];
    let proxy = match unique_names {
        true => FaultProxy::with_unique_job_names(&moto, rules),
        false => FaultProxy::start(&moto, rules),
    };
    let first = launch_held(&lab, &emulated.image, elsewhere.path(), &proxy);
    HeldAtCreate {
        emulated,
        moto,
        name,
        lab,
        elsewhere,
        proxy,
        first,
    }
}

/// Two machines (two runs directories) launch one experiment with the same
/// pins (a shared image) while neither has a record yet: the second sees
/// the first's claim in the config bucket and launches nothing, a dry run
/// too; once the first has launched, its record is the twin; its claim is
/// gone when it returns. One job in all.
#[test]
fn two_machines_launching_one_experiment_at_once_run_it_once() {
    static CREATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let HeldAtCreate {
        emulated: Emulated {
            image,
            config_bucket,
            ..
        },
        moto,
        name,
        lab,
        elsewhere: _elsewhere,
        proxy: _proxy,
        first,
    } = held_at_its_create("e2e-two-machines", &CREATE, false);
    let held = claims(&config_bucket);
    let pid = format!("xtask pid {} on ", first.id());
    assert!(
        held.len() == 1 && held[0].1.starts_with(&pid),
        "{held:?} {pid}"
    );

    // This machine: the same pins, while the first waits on its create.
    let direct = FaultProxy::start(&moto, vec![]);
    for dry in [true, false] {
        let extra: &[&str] = if dry { &["--dry-run"] } else { &[] };
        let second = sagemaker_run(&lab, &image, &direct, extra);
        assert!(!second.success(), "{second:?}");
        assert!(
            second.stderr.contains("being prepared now (xtask pid")
                && second.stderr.contains(&pid)
                && second
                    .stderr
                    .contains(&format!("its claim s3://{config_bucket}/{}", held[0].0)),
            "{second:?}"
        );
    }
    assert_eq!(jobs_named(&name), 0);

    CREATE.store(true, std::sync::atomic::Ordering::SeqCst);
    let out: Run = first.wait_with_output().unwrap().into();
    let job = Lab::record(&out.ok())["job_name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        claims(&config_bucket),
        [],
        "let go when the launch returned"
    );
    // Its record is the twin now.
    let third = sagemaker_run(&lab, &image, &direct, &[]);
    assert!(
        third.stderr.contains(&format!("{job} is running it now"))
            || third.stderr.contains(&format!("{job} already ran it")),
        "{third:?}"
    );
    assert_eq!(jobs_named(&name), 1, "one job in all");
    assert_eq!(claims(&config_bucket), []);
}

/// A launch stalls between naming its job in its claim and its create
/// reaching SageMaker (a suspended laptop, a partitioned network: here its
/// create is held) for longer than its claim's term (shortened to a second
/// in the lease, as a holder with that term writes it). Another machine
/// takes the lapsed claim over and launches the job under the name the
/// claim passed on; the stalled create, arriving after, is refused for the
/// name (SageMaker's rule, which the proxy keeps for the emulator). One job
/// in all: the second machine's record names it, the first says it lost
/// its claim, and the job's config channel is whole.
#[test]
fn a_create_that_arrives_after_its_claim_lapsed_makes_no_second_job() {
    static CREATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let HeldAtCreate {
        emulated: Emulated {
            image,
            config_bucket,
            ..
        },
        name,
        lab,
        elsewhere: _elsewhere,
        proxy,
        first,
        ..
    } = held_at_its_create("e2e-stalled-create", &CREATE, true);
    let held = claims(&config_bucket);
    assert_eq!(held.len(), 1, "{held:?}");
    let shortened = serde_json::json!({ "lease_secs": 1 });
    let lease = update_json_object(&config_bucket, &held[0].0, shortened);
    let job = lease["job"].as_str().unwrap_or_default().to_string();
    assert!(job.starts_with(&name), "the claim names the job: {job}");
    std::thread::sleep(Duration::from_secs(2));

    let second = sagemaker_run(&lab, &image, &proxy, &[]);
    let record = Lab::record(&second.ok());
    assert_eq!(record["job_name"], job.as_str(), "{record}");
    assert!(lab.runs.join(&job).join("record.json").is_file());

    CREATE.store(true, std::sync::atomic::Ordering::SeqCst);
    let out: Run = first.wait_with_output().unwrap().into();
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("ResourceInUse")
            && out.stderr.contains("this launch lost its claim")
            && out
                .stderr
                .contains(&format!("created training job `{job}` under this name")),
        "{out:?}"
    );
    assert_eq!(jobs_named(&name), 1, "one job in all");
    let channel = boto3(
        "import sys\nprint(sorted(o['Key'].rsplit('/', 1)[1] for o in client('s3').list_objects_v2(Bucket=sys.argv[1], Prefix=sys.argv[2]).get('Contents', [])))",
        &[&config_bucket, &format!("experiments/{job}/config/")],
    )
    .ok();
    assert!(
        channel.stdout.contains("'exp.toml'") && channel.stdout.contains("'manifest.json'"),
        "{channel:?}"
    );
    assert_eq!(claims(&config_bucket), [], "let go: the job is recorded");
}

/// A launch refused by SageMaker after its claim named the job removes
/// its config channel only while the claim is its own: here its first
/// removal is held (a machine stalled for a whole lease at that instant)
/// while another machine takes the lapsed claim over and creates the job
/// under the name it passed on, with that channel. The stalled launch then
/// finds its claim lost and puts back what it removed: the job's channel
/// is whole, one job in all, and the first says its channel is left.
#[test]
fn a_withdrawal_that_loses_its_claim_midway_puts_the_channel_back() {
    static DELETE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let emulated = emulated();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let name = unique("e2e-put-back");
    let (data, table) = (&emulated.data, &emulated.job_table);
    let lab = Lab::new(&experiment(&name, data, data, false, 1, table));
    let elsewhere = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(
        &moto,
        vec![
            Rule {
                needle: format!("DELETE /{}/experiments/", emulated.config_bucket),
                every: 1,
                limit: 1,
                fault: Fault::HoldUntil(Gate(&DELETE)),
            },
            // A quota the job can never fit: refused, nothing created.
            Rule {
                needle: "SageMaker.CreateTrainingJob".into(),
                every: 1,
                limit: 1,
                fault: Fault::ResourceLimitExceeded {
                    limit: 0,
                    in_use: 0,
                },
            },
        ],
    );
    let first = launch_held(&lab, &emulated.image, elsewhere.path(), &proxy);
    let held = claims(&emulated.config_bucket);
    assert_eq!(held.len(), 1, "{held:?}");
    let shortened = serde_json::json!({ "lease_secs": 1 });
    let lease = update_json_object(&emulated.config_bucket, &held[0].0, shortened);
    let job = lease["job"].as_str().unwrap_or_default().to_string();
    assert!(job.starts_with(&name), "the claim names the job: {job}");
    std::thread::sleep(Duration::from_secs(2));

    // Another machine: takes the claim over, creates the job by its name.
    let direct = FaultProxy::start(&moto, vec![]);
    let second = sagemaker_run(&lab, &emulated.image, &direct, &[]);
    assert_eq!(Lab::record(&second.ok())["job_name"], job.as_str());

    DELETE.store(true, std::sync::atomic::Ordering::SeqCst);
    let out: Run = first.wait_with_output().unwrap().into();
    assert!(
        !out.success()
            && out.stderr.contains("ResourceLimitExceeded")
            && out.stderr.contains("put back")
            && out.stderr.contains("its config channel"),
        "{out:?}"
    );
    assert_eq!(jobs_named(&name), 1, "one job in all");
    let channel = boto3(
        "import sys\nprint(sorted(o['Key'].rsplit('/', 1)[1] for o in client('s3').list_objects_v2(Bucket=sys.argv[1], Prefix=sys.argv[2]).get('Contents', [])))",
        &[&emulated.config_bucket, &format!("experiments/{job}/config/")],
    )
    .ok();
    assert!(
        channel.stdout.contains("'exp.toml'") && channel.stdout.contains("'manifest.json'"),
        "the job's channel is whole: {channel:?}"
    );
    assert_eq!(
        claims(&emulated.config_bucket),
        [],
        "let go: the job is recorded"
    );
}

/// Another machine launches the same experiment at the same commit in the
/// same second, so under the same job name, from an experiment file named
/// otherwise (its pins differ: no claim is shared). Its file lands in the
/// job's config channel after this launch listed the channel empty (here
/// this launch's first upload is held while it is put): this launch lists
/// the channel again once uploaded, finds the other's file, withdraws its
/// own and creates nothing, so no job starts with two experiment files.
#[test]
fn a_file_put_beside_a_launchs_upload_makes_it_withdraw() {
    static UPLOAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let emulated = emulated();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let name = unique("e2e-same-second");
    let (data, table) = (&emulated.data, &emulated.job_table);
    let lab = Lab::new(&experiment(&name, data, data, false, 1, table));
    let needle = format!("PUT /{}/experiments/", emulated.config_bucket);
    let proxy = FaultProxy::start(
        &moto,
        vec![Rule {
            needle: needle.clone(),
            every: 1,
            limit: 1,
            fault: Fault::HoldUntil(Gate(&UPLOAD)),
        }],
    );
    let first = launch_held(&lab, &emulated.image, &lab.runs, &proxy);
    // `PUT /<bucket>/experiments/<job>/config/<file>?x-id=PutObject HTTP/1.1`
    let held = proxy.requests().into_iter().find(|l| l.contains(&needle));
    let job = held
        .as_deref()
        .and_then(|l| l.split('/').nth(3))
        .unwrap_or_default()
        .to_string();
    assert!(job.starts_with(&name), "{held:?}");
    let theirs = format!("experiments/{job}/config/theirs.toml");
    boto3(
        "import sys\nclient('s3').put_object(Bucket=sys.argv[1], Key=sys.argv[2], Body=b\"someone else's experiment\")",
        &[&emulated.config_bucket, &theirs],
    )
    .ok();
    UPLOAD.store(true, std::sync::atomic::Ordering::SeqCst);
    let out: Run = first.wait_with_output().unwrap().into();
    assert!(
        !out.success()
            && out.stderr.contains("theirs.toml is there already")
            && out.stderr.contains("nothing was launched"),
        "{out:?}"
    );
    assert_eq!(jobs_named(&name), 0, "no job");
    let channel = boto3(
        "import sys\nprint(sorted(o['Key'].rsplit('/', 1)[1] for o in client('s3').list_objects_v2(Bucket=sys.argv[1], Prefix=sys.argv[2]).get('Contents', [])))",
        &[&emulated.config_bucket, &format!("experiments/{job}/")],
    )
    .ok();
    // Its experiment file withdrawn; the manifest, which the other
    // launch may share (same name, same bytes), left.
    assert!(
        !channel.stdout.contains("'exp.toml'")
            && channel.stdout.contains("'theirs.toml'")
            && channel.stdout.contains("'manifest.json'"),
        "{channel:?}"
    );
    assert_eq!(claims(&emulated.config_bucket), [], "let go");
    assert_eq!(lab.job_dirs(), 0, "no run directory");
}

/// A SageMaker launch of a new experiment killed (`kill -9`) while it
/// holds its claim, held at its first upload (forwarded after the kill, at
/// most an orphan config file: no job): its lab, experiment name, the
/// lease it left, and the proxy, which must outlive the held request.
fn killed_holding_its_claim(prefix: &str) -> (Emulated, Lab, String, String, FaultProxy) {
    let emulated = emulated();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let name = unique(prefix);
    let lab = Lab::new(&experiment(
        &name,
        &emulated.data,
        &emulated.data,
        false,
        1,
        &emulated.job_table,
    ));
    static NEVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let proxy = FaultProxy::start(
        &moto,
        vec![Rule {
            needle: format!("PUT /{}/experiments/", emulated.config_bucket),
            every: 1,
            limit: 1,
            fault: Fault::HoldUntil(Gate(&NEVER)),
        }],
    );
    let mut killed = launch_held(&lab, &emulated.image, &lab.runs, &proxy);
    killed.kill().unwrap();
    killed.wait().unwrap();
    let left = claims(&emulated.config_bucket);
    assert_eq!(left.len(), 1, "{left:?}");
    let key = left[0].0.clone();
    (emulated, lab, name, key, proxy)
}

/// A launcher killed while it holds its claim leaves the claim in the
/// config bucket; as another machine's, renewed now, it holds: a launch
/// here is refused, naming that machine. (Taken over once it lapses
/// unrenewed: the_config_buckets_lease_is_renewed_and_taken_over_once.)
#[test]
fn another_machines_live_claim_refuses_a_launch_here() {
    let (emulated, lab, name, key, _proxy) = killed_holding_its_claim("e2e-killed-claim");
    let elsewhere = serde_json::json!({
        "host": "build-host-7",
        "holder": "xtask pid 1 on build-host-7",
    });
    update_json_object(&emulated.config_bucket, &key, elsewhere);
    let direct = FaultProxy::start(&std::env::var("AWS_ENDPOINT_URL").unwrap(), vec![]);
    let refused = sagemaker_run(&lab, &emulated.image, &direct, &[]);
    assert!(
        !refused.success() && refused.stderr.contains("xtask pid 1 on build-host-7"),
        "{refused:?}"
    );
    assert_eq!(jobs_named(&name), 0);
}

/// The same, its holder on this machine: the relaunch goes ahead at once.
#[test]
fn a_relaunch_takes_over_the_claim_of_its_killed_launcher() {
    let (emulated, lab, name, _, _proxy) = killed_holding_its_claim("e2e-relaunch-claim");
    let direct = FaultProxy::start(&std::env::var("AWS_ENDPOINT_URL").unwrap(), vec![]);
    let again = Lab::record(&sagemaker_run(&lab, &emulated.image, &direct, &[]).ok());
    assert_eq!(again["status"], "InProgress", "{again}");
    assert_eq!(jobs_named(&name), 1);
    assert_eq!(claims(&emulated.config_bucket), []);
}

/// A launch whose job was created but whose record could not be put in
/// the config bucket (denied) keeps its claim there, naming the job:
/// another machine's launch is refused while SageMaker runs that job, and
/// once it has completed unrecorded; recorded (by `status` where it was
/// launched, which lets the claim go), it is the twin.
#[test]
fn a_job_created_without_a_record_in_the_bucket_keeps_its_claim() {
    let Emulated {
        data,
        image,
        job_table,
        config_bucket,
    } = emulated();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let name = unique("e2e-kept-claim");
    let lab = Lab::new(&experiment(&name, &data, &data, false, 1, &job_table));
    let elsewhere = tempfile::tempdir().unwrap();
    let denied = FaultProxy::start(
        &moto,
        vec![Rule {
            needle: "/record.json?x-id=PutObject".into(),
            every: 1,
            limit: usize::MAX,
            fault: Fault::AccessDenied,
        }],
    );
    let out = lab.xtask_env(
        &[
            "experiment",
            "run",
            &lab.file(),
            "--backend",
            "sagemaker",
            "--image",
            &image,
        ],
        &[
            ("SCA_RUNS_DIR", elsewhere.path().to_str().unwrap()),
            ("AWS_ENDPOINT_URL", &denied.url()),
        ],
    );
    assert!(!out.success(), "{out:?}");
    assert!(denied.injected(0) >= 1, "{:?}", denied.requests());
    assert_eq!(jobs_named(&name), 1);
    let kept = claims(&config_bucket);
    assert_eq!(kept.len(), 1, "kept for the job: {kept:?}");

    // The job still trains (as SageMaker would say of it): refused.
    let training = FaultProxy::start(
        &moto,
        vec![Rule {
            needle: "SageMaker.DescribeTrainingJob".into(),
            every: 1,
            limit: usize::MAX,
            fault: Fault::Replace(
                "\"TrainingJobStatus\": \"Completed\"",
                "\"TrainingJobStatus\": \"InProgress\"",
            ),
        }],
    );
    let refused = sagemaker_run(&lab, &image, &training, &[]);
    assert!(
        !refused.success()
            && refused.stderr.contains("which created training job `")
            && refused
                .stderr
                .contains("has not recorded it in the config bucket"),
        "{refused:?}"
    );
    assert_eq!(jobs_named(&name), 1);

    // Completed, and still unrecorded there: refused, saying how to
    // record it.
    let direct = FaultProxy::start(&moto, vec![]);
    let refused = sagemaker_run(&lab, &image, &direct, &[]);
    assert!(
        !refused.success()
            && refused
                .stderr
                .contains("completed and has no record in the config bucket"),
        "{refused:?}"
    );
    // Recorded where it was launched (`status` puts its record there):
    // it is this launch's twin.
    let job = rec_str_of(&refused.stderr);
    lab.xtask_env(
        &["experiment", "status", &job],
        &[
            ("SCA_RUNS_DIR", elsewhere.path().to_str().unwrap()),
            ("AWS_ENDPOINT_URL", &direct.url()),
        ],
    )
    .ok();
    assert_eq!(claims(&config_bucket), [], "recorded: its claim let go");
    let memoized = sagemaker_run(&lab, &image, &direct, &[]).ok();
    assert!(
        memoized.stderr.contains(&format!("{job} already ran it")),
        "{memoized:?}"
    );
    assert_eq!(jobs_named(&name), 1, "one job in all");
}

/// The job a refusal names (`... created training job `JOB` ...`).
fn rec_str_of(stderr: &str) -> String {
    let at = stderr.find("created training job `").expect("a job named") + 22;
    stderr[at..].split('`').next().unwrap().to_string()
}

/// The answer to a launch's put of its claim is lost (the put took; the
/// SDK's retry is refused, the claim being there): the claim is the
/// launch's own, not another launch's, and the job is launched once.
#[test]
fn a_claim_whose_put_answer_was_lost_is_the_launchs_own() {
    let Emulated {
        data,
        image,
        job_table,
        config_bucket,
    } = emulated();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let name = unique("e2e-lost-answer");
    let lab = Lab::new(&experiment(&name, &data, &data, false, 1, &job_table));
    let proxy = FaultProxy::start(
        &moto,
        vec![Rule {
            needle: format!("PUT /{config_bucket}/claims/"),
            every: 1,
            limit: 1,
            fault: Fault::DropResponse,
        }],
    );
    let rec = Lab::record(&sagemaker_run(&lab, &image, &proxy, &[]).ok());
    assert_eq!(proxy.injected(0), 1, "{:?}", proxy.requests());
    assert_eq!(rec["status"], "InProgress", "{rec}");
    assert_eq!(jobs_named(&name), 1);
    assert_eq!(claims(&config_bucket), []);
}
