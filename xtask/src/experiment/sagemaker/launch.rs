//! Launching a SageMaker Training Job: the config channel uploaded without
//! replacing anything, the job created exactly once (a lost answer or a
//! retried request is resolved by the job's launch-id tag), the record
//! saved locally and in S3, and with `--wait` the job followed to its end.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_sagemaker::error::ProvideErrorMetadata;

use crate::experiment::backend::HeldClaim;
use crate::experiment::plan::{LaunchOptions, Plan};
use crate::experiment::record::RunRecord;
use crate::experiment::sagemaker::client::{
    describe_with_tags, find_job, job_prefix, save_everywhere, sdk_error, Clients, JobState,
};
use crate::experiment::sagemaker::lifecycle::follow;
use crate::experiment::sagemaker::request::{LaunchTags, TrainingJobRequest, TAG_LAUNCH_ID};

/// The longest wait between tries of a job SageMaker refused with
/// `ResourceLimitExceeded` (30 s first, doubling).
const RESOURCE_LIMIT_PAUSE_MAX: Duration = Duration::from_secs(300);

/// Launch `plan` as a Training Job: upload the config channel, create the
/// job (exactly once), record it, and with `--wait` follow it to the end.
/// `claim`, the launch's lease in the config bucket (if held), is let go
/// once the job's record is there, where other machines look; for a job
/// created (or perhaps created) without it, it is kept, naming the job. A
/// job name the claim passed on (its former holder may yet create that
/// job, [`HeldClaim::inherited`]) is `plan.job_name`.
pub async fn run(
    root: &Path,
    plan: &Plan,
    opts: &LaunchOptions,
    claim: &mut HeldClaim,
) -> Result<Option<RunRecord>> {
    let job = &plan.resolved;
    let reference = plan
        .pins
        .image
        .as_ref()
        .context("a SageMaker job runs a pinned image")?
        .to_string();
    let bucket = job.config_bucket.clone();
    let prefix = job_prefix(&plan.job_name);
    let config_prefix = format!("s3://{bucket}/{prefix}config/");
    let hyper_all = sca_spec::contract::Hyperparameters {
        init_checkpoint: plan.pins.init_checkpoint.clone(),
        ..plan.hyperparameters()
    };
    let launch_id = uuid::Uuid::new_v4().simple().to_string();
    let request = TrainingJobRequest::new(
        &plan.job_name,
        job,
        &plan.pins,
        &config_prefix,
        hyper_all.to_map(),
        &LaunchTags {
            experiment: &plan.experiment.experiment.name,
            launch_id: &launch_id,
            user: &plan.experiment.job.tags,
            sweep: plan.sweep.as_deref(),
        },
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
                    "files": plan.config_files().into_iter().map(|(name, _)| name).collect::<Vec<_>>(),
                },
                "record": record,
            }))?
        );
        return Ok(None);
    }
    let region = opts.aws.region_or(&job.region);
    let clients = Clients::new(&opts.aws, Some(&region)).await?;
    // The launch whose lapsed claim this one took over, where it passed on
    // this job's name: it may yet create the job itself.
    let former = claim
        .inherited()
        .filter(|i| i.job == plan.job_name)
        .map(|i| i.from.clone());

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
        let what = format!("training job `{}` exists", plan.job_name);
        let named = former.is_some();
        bail!(
            name_in_use(
                plan,
                (claim, named),
                former.as_deref(),
                &existing.tags,
                &what
            )
            .await
        );
    }

    // Upload the channel without replacing anything (`If-None-Match: *`):
    // the prefix is named by the job, and another machine launching the same
    // experiment at the same commit in the same second would share it, as
    // does a launch the name was passed on to. Ctrl-C or a failure here
    // removes what this launch wrote (see `Withdraw`); no job exists yet, so
    // nothing is half-created.
    let uploads: Vec<(String, Vec<u8>)> = plan
        .config_files()
        .into_iter()
        .map(|(name, bytes)| (format!("{prefix}config/{name}"), bytes))
        .collect();
    let mut written: Vec<&str> = Vec::new();
    let upload = async {
        // A file there that this launch would not write (the experiment
        // file of another launch of this name, under another file name)
        // would start the job with two. Where the name was passed on, the
        // channel holds what its former holder uploaded, and must be read;
        // elsewhere (another launch in the same second) a channel that
        // cannot be listed is not looked at.
        let channel = format!("{prefix}config/");
        let no_foreign_file = || async {
            let keys = match super::remote::list_keys(&clients, &bucket, &channel).await {
                Ok(keys) => keys,
                Err(e) if former.is_some() => return Err(e),
                Err(_) => Vec::new(),
            };
            let Some(other) = first_foreign(&keys, &uploads) else {
                return Ok(());
            };
            match &former {
                Some(former) => bail!(
                    "s3://{bucket}/{other} is in the config channel of training job `{}`, which the launch whose lapsed claim this one took over ({former}) named, and this launch would not write it (that launch's files are named otherwise): launch as that launch did, or delete the claim (`claims/` in the config bucket) if that launch is gone for good",
                    plan.job_name
                ),
                None => bail!(
                    "s3://{bucket}/{other} is there already: another launch took the job name `{}` (experiment, commit and time to the second); launch again",
                    plan.job_name
                ),
            }
        };
        no_foreign_file().await?;
        for (key, bytes) in &uploads {
            match put_new(&clients.s3, &bucket, key, bytes).await? {
                Put::Created => written.push(key),
                Put::Same => {}
                Put::Taken if former.is_some() => bail!(
                    "s3://{bucket}/{key} already holds a different file, uploaded by the launch whose lapsed claim this one took over ({}) for training job `{job}`, which it named: that launch may yet create the job with it, so nothing was launched and the claim is left naming the job (`aws sagemaker describe-training-job --training-job-name {job} --region {region}` shows whether it exists; delete the claim, `claims/` in the config bucket, if that launch is gone for good)",
                    former.as_deref().unwrap_or_default(),
                    job = plan.job_name,
                ),
                Put::Taken => bail!(
                    "s3://{bucket}/{key} already holds a different file: another launch took the job name `{}` (experiment, commit and time to the second); launch again",
                    plan.job_name
                ),
            }
        }
        // Listed again: another launch of this name that listed the channel
        // before this one's files were in it may have uploaded its own
        // since. Of two such launches, each uploading before it lists
        // (S3 lists what is written), at least one sees the other's file
        // and withdraws its own (see `Withdraw` for what it leaves); so no
        // job starts with two.
        no_foreign_file().await
    };
    let uploaded = tokio::select! {
        r = upload => r,
        () = crate::experiment::contract::interrupted() => Err(anyhow::anyhow!("interrupted")),
    };
    // Once the claim names the job (from the take, where it passed on the
    // name; else from the first renewal before the create, which may land
    // unseen), a launch that takes it over creates the job under this
    // name, with this channel.
    let own = format!("{prefix}config/{}", plan.file_name);
    let withdraw = |claim, written, named| Withdraw {
        claim,
        clients: &clients,
        bucket: &bucket,
        written,
        uploads: &uploads,
        own: &own,
        job: &plan.job_name,
        config_prefix: &config_prefix,
        named,
    };
    if let Err(e) = uploaded {
        let left = withdraw(claim, &written, former.is_some()).run().await;
        return Err(e.context(format!("nothing was launched, and {left}")));
    }
    errln!("uploaded the config channel to {config_prefix}");

    // Create the job, exactly once: a retry whose first attempt did reach
    // SageMaker, or a request whose answer was lost, is resolved by
    // describing the job under its name and reading this launch's id in its
    // tags (see `after_create`).
    // ResourceLimitExceeded (the account's instance quota is in use, as when
    // a sweep's points outnumber it) created nothing: wait and try again.
    // A quota the job can never fit (0 instances, the common default for
    // GPU and spot types), or another limit, is a refusal: waiting would
    // never end.
    let mut pause = Duration::from_secs(30);
    // A job of the name a refusal's lookup found, for the decision below.
    let mut found = None;
    let sent = loop {
        // The lease renewed now, naming the job: a launch that could not
        // renew it for a whole lease (an outage, a suspended machine) may
        // have lost it to another, which launches these pins (under this
        // name); and one that finds it lapsed later asks SageMaker of this
        // job first.
        if let Err(why) = claim.confirm_for(&plan.job_name).await {
            // (Its renewal may have named the job unseen before another
            // launch took it over: that launch would use this channel.)
            bail!(
                "{job}: {why}; nothing was launched, and its config channel {config_prefix} is left, as a launch that took its claim over may create `{job}` with it (delete it if `aws sagemaker describe-training-job --training-job-name {job} --region {region}` finds no such job)",
                job = plan.job_name
            );
        }
        let sent = request.send_with(&clients.sagemaker)?.send().await;
        let over_quota = sent
            .as_ref()
            .err()
            .and_then(|e| e.as_service_error())
            .filter(|s| s.code() == Some("ResourceLimitExceeded"))
            .map(|s| s.message().unwrap_or_default().to_string());
        let Some(message) = over_quota else {
            break sent;
        };
        // An SDK retry of an attempt that created the job (its answer
        // lost) is answered so too, the quota full of that very job: a job
        // of the name is decided below as for any refusal.
        let looked = job_after_refusal(&clients.sagemaker, &plan.job_name).await;
        if let Ok(Some(job)) = looked {
            found = Some(job);
            break sent;
        }
        let quota = match instance_quota(&message) {
            // Doubt is no reason to end a wait: were the job there, the
            // next create is answered ResourceInUse, which its launch id
            // resolves.
            Some(q) if q.requested <= q.limit => {
                if let Err(e) = looked {
                    crate::experiment::contract::eprint_line(format_args!(
                        "warning: {}: whether an earlier attempt created it is unknown for now ({e:#}); the create is tried again, which tells",
                        plan.job_name
                    ));
                }
                q
            }
            // Nor a reason to withdraw: decided below as unknown.
            _ if looked.is_err() => break sent,
            never => {
                let left = withdraw(claim, &written, true).run().await;
                let why = match never {
                    Some(q) => format!(
                        "the account's quota for {} is {} instance(s) and the job asks for {}, so it can never start: request an increase in Service Quotas (SageMaker, \"{} for training job usage\", or \"... for spot training job usage\" with spot)",
                        job.instance_type, q.limit, q.requested, job.instance_type
                    ),
                    None => "a limit other than instances in use, which waiting does not lift".into(),
                };
                bail!(
                    "{}: SageMaker refused it (ResourceLimitExceeded: {message}): {why}; nothing was launched, and {left}",
                    plan.job_name
                );
            }
        };
        errln!(
            "{}: SageMaker refused it for now (ResourceLimitExceeded: the account's quota of {} {} is in use, {} of it); trying again in {} s (Ctrl-C gives up, launching nothing)",
            plan.job_name,
            quota.limit,
            job.instance_type,
            quota.in_use,
            pause.as_secs()
        );
        let interrupted = tokio::select! {
            _ = tokio::time::sleep(pause) => false,
            () = crate::experiment::contract::interrupted() => true,
        };
        if interrupted {
            let left = withdraw(claim, &written, true).run().await;
            bail!("interrupted while waiting for SageMaker capacity: nothing was launched, and {left}");
        }
        pause = (pause * 2).min(RESOURCE_LIMIT_PAUSE_MAX);
    };
    let arn = match sent {
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
            let decided = match failure {
                // The SDK retries a create itself: an attempt whose answer
                // was lost may have created the job before a later one was
                // refused (throttled). Only a job that is not there makes
                // the refusal true, and the config channel removable.
                CreateFailure::Refused => {
                    let looked = match found.take() {
                        Some(job) => Ok(Some(job)),
                        None => job_after_refusal(&clients.sagemaker, &plan.job_name).await,
                    };
                    match looked {
                        Ok(None) => AfterCreate::Refused,
                        Ok(Some(job)) => {
                            after_create(CreateFailure::NameInUse, &launch_id, Some(Ok(job)))
                        }
                        Err(e) => AfterCreate::Unknown(format!("{e:#}")),
                    }
                }
                _ => after_create(
                    failure,
                    &launch_id,
                    Some(describe_after_create(&clients.sagemaker, &plan.job_name).await),
                ),
            };
            match decided {
                AfterCreate::Ours(arn) => {
                    crate::experiment::contract::eprint_line(format_args!(
                        "{cause:#}; the job exists, launched by this launch: recorded"
                    ));
                    arn
                }
                AfterCreate::Refused => {
                    let left = withdraw(claim, &written, true).run().await;
                    bail!("{cause:#}; nothing was launched, and {left}");
                }
                AfterCreate::Taken(tags) => {
                    let what = format!("{cause:#}");
                    bail!(name_in_use(plan, (claim, true), former.as_deref(), &tags, &what).await)
                }
                AfterCreate::Unknown(why) => {
                    claim.keep_for(&plan.job_name).await;
                    bail!(
                        "{cause:#}; the outcome is unknown ({why}), so the training job `{job}` may exist and run: `aws sagemaker describe-training-job --training-job-name {job} --region {region}` tells (its tag {TAG_LAUNCH_ID} = {launch_id} marks it as this launch's), `aws sagemaker stop-training-job --training-job-name {job} --region {region}` stops it; its config channel {config_prefix} is kept for it",
                        job = plan.job_name
                    )
                }
            }
        }
    };
    record.training_job_arn = Some(arn);
    // The job's start, not the launch's: a wait for capacity above
    // (ResourceLimitExceeded) is no part of the job's duration.
    record.started = crate::experiment::record::now();
    // From here the job runs whatever fails: an error says so, or it would
    // read as "nothing was launched" and invite a second launch.
    let running = || {
        format!(
            "training job `{job}` was created and runs (`cargo xtask experiment status {job}`, `... stop {job}`)",
            job = plan.job_name
        )
    };
    // The config copy before the record here: a launch killed in between
    // leaves no record here without its config, which nothing would bring
    // (the config of a record that is here is never imported).
    let recorded = async {
        let copied = plan.write_config_channel(&record.config_dir(root));
        // Saved even where the copy failed (a full disk): `status` and
        // `stop` need the record, not the config.
        save_everywhere(root, &clients, &mut record).await?;
        copied.with_context(|| {
            format!(
                "copying its config channel into {} (its record is saved; `rerun` and `diff` need the channel: copy {config_prefix} there once there is room)",
                record.config_dir(root).display()
            )
        })
    }
    .await;
    if let Err(e) = recorded {
        // Other machines would not see the job: the lease stands for it.
        claim.keep_for(&plan.job_name).await;
        return Err(e.context(running()));
    }
    // Its record is in the config bucket now: that is what other machines
    // see from here on.
    claim.recorded().await;
    errln!("created training job {} with {reference}", plan.job_name);
    if opts.wait {
        // Ctrl-C (or SIGTERM) while following detaches: the job is
        // SageMaker's now.
        let detached = tokio::select! {
            r = follow(root, &clients, &mut record) => { r?; false }
            () = crate::experiment::contract::interrupted() => true,
        };
        if detached {
            save_everywhere(root, &clients, &mut record).await?;
            bail!(
                "interrupted: {job} keeps running on SageMaker; `cargo xtask experiment logs --follow {job}` follows it, `cargo xtask experiment stop {job}` stops it",
                job = plan.job_name
            );
        }
    }
    Ok(Some(record))
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

/// The job named `job`, if any, after SageMaker refused its create: an
/// earlier attempt of the SDK's, its answer lost, may have created it.
/// Describe sees a create at once (a listing lags it by seconds), and is
/// tried again on an error other than "no such job" (a ValidationException,
/// the only one a job name it accepted at create gets); `None` only where
/// it and a listing both find none.
async fn job_after_refusal(
    client: &aws_sdk_sagemaker::Client,
    job: &str,
) -> Result<Option<JobState>> {
    let mut tries = 0;
    loop {
        match client
            .describe_training_job()
            .training_job_name(job)
            .send()
            .await
        {
            Ok(_) => return describe_with_tags(client, job).await.map(Some),
            Err(e)
                if e.as_service_error().and_then(|s| s.code()) == Some("ValidationException") =>
            {
                return find_job(client, job).await;
            }
            Err(_) if tries < 2 => {
                tries += 1;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Err(e) => return Err(sdk_error(e, &format!("describing training job `{job}`"))),
        }
    }
}

/// How `CreateTrainingJob` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CreateFailure {
    /// `ResourceInUse`: a job of this name exists (this launch's own, when
    /// the SDK retried a request whose first answer was lost).
    NameInUse,
    /// Any other client error from SageMaker: the last attempt created no
    /// job (an earlier attempt of the SDK's may have: the launch looks).
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
    /// SageMaker refused: no job exists, so the channel this launch uploaded
    /// goes, while its claim is still its own (see `Withdraw`).
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

/// Why a launch cannot create its job, a job of its name (`what`) with
/// `tags` being there: where its claim has named the job (`named`), one of
/// these pins created under that name by the launch that passed the name
/// on (`former`) or by one that took this launch's claim over; else
/// [`name_taken`].
async fn name_in_use(
    plan: &Plan,
    (claim, named): (&HeldClaim, bool),
    former: Option<&str>,
    tags: &BTreeMap<String, String>,
    what: &str,
) -> String {
    let job = &plan.job_name;
    if named && plan.pins.same_experiment_and_commit(tags) {
        let by = match former {
            Some(former) => format!(
                "the launch that passed its name on ({former}) or one that took this launch's claim over"
            ),
            None => "the launch that took it over".to_string(),
        };
        match (claim.confirm_for(job).await, former) {
            (Ok(()), Some(former)) => {
                return format!(
                    "{what}: the launch whose lapsed claim this one took over ({former}) named it and created it after all: it runs these pins; nothing was launched here (`cargo xtask experiment status {job}` where that launch ran records it; this launch's claim names the job until then)"
                )
            }
            (Err(why), _) => {
                return format!(
                    "{what}; this launch lost its claim ({why}): {by} created training job `{job}` under this name, with these pins; nothing was launched here (the config channel {}config/ is the job's)",
                    job_prefix(job)
                )
            }
            (Ok(()), None) => {}
        }
    }
    name_taken(plan, tags)
}

/// Why a launch cannot use the job name `plan.job_name`, held by a job with `tags`.
fn name_taken(plan: &Plan, tags: &BTreeMap<String, String>) -> String {
    let same = plan.pins.same_experiment_and_commit(tags);
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

/// What a launch uploaded for its job, to be removed once the launch
/// creates nothing after its claim has named the job.
struct Withdraw<'a> {
    claim: &'a HeldClaim,
    clients: &'a Clients,
    bucket: &'a str,
    /// The keys this launch created, of its `uploads` (key, bytes).
    written: &'a [&'a str],
    uploads: &'a [(String, Vec<u8>)],
    /// Its experiment file's key (the other uploads are named alike by
    /// every launch of the job name).
    own: &'a str,
    job: &'a str,
    config_prefix: &'a str,
    /// Whether the claim has named the job.
    named: bool,
}

impl Withdraw<'_> {
    /// Remove it; once the claim has named the job, only while the claim
    /// is still this launch's (one that took the claim over creates the
    /// job under its name, with this config channel) and SageMaker has no
    /// job of the name (an attempt of the SDK's whose answer was lost may
    /// have created it): checked before, and the claim again after, the
    /// files being put back if it was lost meanwhile (a machine stalled
    /// past the lease in between). What is left, in words.
    ///
    /// Where the channel holds another launch's experiment file (one of
    /// this job name in the same second), or cannot be listed, only this
    /// launch's experiment file goes: its data manifest and resolved file
    /// have the same bytes under the same names as that launch's (else one
    /// of the two uploads was refused), which may have found them there
    /// and be creating the job with them now. (It uploads its experiment
    /// file first, so it is listed by then.)
    async fn run(self) -> String {
        if self.written.is_empty() {
            return "nothing this launch uploaded is left".into();
        }
        let channel = self.own.rsplit_once('/').map_or(self.own, |(dir, _)| dir);
        let alone =
            match super::remote::list_keys(self.clients, self.bucket, &format!("{channel}/")).await
            {
                Ok(keys) => first_foreign(&keys, self.uploads).is_none(),
                Err(_) => false,
            };
        let mine: Vec<&str> = match alone {
            true => self.written.to_vec(),
            false => self
                .written
                .iter()
                .copied()
                .filter(|k| *k == self.own)
                .collect(),
        };
        let gone = match mine.len() == self.written.len() {
            true => "nothing this launch uploaded is left".to_string(),
            false => format!(
                "its experiment file is withdrawn; its data manifest and resolved file are left in {}, as another launch of this job name may use them",
                self.config_prefix
            ),
        };
        let s3 = &self.clients.s3;
        if !self.named {
            remove_objects(s3, self.bucket, &mine).await;
            return gone;
        }
        let left = |why: String| {
            format!(
                "its config channel {} is left ({why}, and a job `{}` may use it)",
                self.config_prefix, self.job
            )
        };
        if let Err(why) = self.claim.confirm_for(self.job).await {
            return left(why);
        }
        match find_job(&self.clients.sagemaker, self.job).await {
            Ok(None) => {}
            Ok(Some(_)) => return left("SageMaker has a job of its name".into()),
            Err(e) => return left(format!("whether SageMaker has one cannot be read: {e:#}")),
        }
        remove_objects(s3, self.bucket, &mine).await;
        let Err(why) = self.claim.confirm_for(self.job).await else {
            return gone;
        };
        for (key, bytes) in self.uploads {
            if mine.contains(&key.as_str()) {
                let _ = put_new(s3, self.bucket, key, bytes).await;
            }
        }
        left(format!("{why}; put back"))
    }
}

/// The first of a config channel's `keys` that is a file this launch would
/// not write (not one of its `uploads`): another launch's. (A "folder"
/// object, `.../config/`, is no file.)
fn first_foreign<'k>(keys: &'k [String], uploads: &[(String, Vec<u8>)]) -> Option<&'k String> {
    keys.iter()
        .find(|k| !k.ends_with('/') && !uploads.iter().any(|(u, _)| u == *k))
}

/// Best-effort removal of objects this launch wrote.
async fn remove_objects(s3: &aws_sdk_s3::Client, bucket: &str, keys: &[&str]) {
    for key in keys {
        let _ = s3.delete_object().bucket(bucket).key(*key).send().await;
    }
}

/// An instance quota as SageMaker's ResourceLimitExceeded states it: "The
/// account-level service limit '<type> for training job usage' is 2
/// Instances, with current utilization of 2 Instances and a request delta
/// of 1 Instances. ..."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InstanceQuota {
    limit: u64,
    in_use: u64,
    requested: u64,
}

fn instance_quota(message: &str) -> Option<InstanceQuota> {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"is (\d+) Instances?, with current utilization of (\d+) Instances? and a request delta of (\d+) Instances?",
        )
        .expect("a valid regex")
    });
    let c = RE.captures(message)?;
    let n = |i: usize| c[i].parse::<u64>().ok();
    Some(InstanceQuota {
        limit: n(1)?,
        in_use: n(2)?,
        requested: n(3)?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn instance_quotas_are_read_from_sagemakers_message() {
        let m = "The account-level service limit 'ml.g5.xlarge for spot training job usage' is 0 Instances, with current utilization of 0 Instances and a request delta of 1 Instances. Please use AWS Service Quotas to request an increase for this quota.";
        assert_eq!(
            super::instance_quota(m),
            Some(super::InstanceQuota {
                limit: 0,
                in_use: 0,
                requested: 1
            })
        );
        assert_eq!(super::instance_quota("Rate exceeded"), None);
    }

    use super::*;

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
}
