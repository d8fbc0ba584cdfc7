//! Runs recorded in the config bucket rather than in this checkout (jobs
//! launched from another machine, or a cleaned `target/`): every record
//! there, for `list --remote`; one job's record and `config` channel
//! copied into the runs directory, for `diff` and `report --remote`; and a
//! launch's twins there, so that a run another machine completed is
//! memoized here and one it runs is not launched twice.

use std::path::Path;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;

use crate::experiment::record::{Backend, RunRecord};
use crate::experiment::sagemaker::client::{get, record_key, split_s3, Clients};
use crate::experiment::sagemaker::lifecycle;
use crate::workspace;

/// The config bucket of a `--remote` command and the clients that read it.
pub struct Remote {
    pub clients: Clients,
    pub bucket: String,
    aws: crate::aws::Session,
}

impl Remote {
    /// `--bucket` (else the workspace's), with `aws`'s clients.
    pub async fn new(bucket_flag: Option<&str>, aws: &crate::aws::Session) -> Result<Self> {
        Ok(Remote {
            bucket: bucket(bucket_flag)?,
            clients: clients(aws).await?,
            aws: aws.clone(),
        })
    }

    /// `job`'s record: this checkout's where it has one (its own copy is
    /// never overwritten), else the bucket's, imported with [`import`]. A
    /// SageMaker job not ended when it was last recorded is asked about
    /// again (as `experiment status` does), so an ended job has its
    /// results and artifacts; where SageMaker cannot say, a warning.
    pub async fn load(&self, root: &Path, job: &str) -> Result<RunRecord> {
        RunRecord::check_name(job)?;
        let here = crate::experiment::record::record_path(root, job).is_file();
        let mut record = if here {
            RunRecord::load(root, job)?
        } else {
            import(root, &self.clients, &self.bucket, job).await?
        };
        if record.backend == Backend::Sagemaker && !record.status.is_terminal() {
            if let Err(e) = lifecycle::status(root, &mut record, &self.aws).await {
                errln!(
                    "warning: {job} is recorded as {} and SageMaker could not say more: {e:#}",
                    record.status
                );
            }
        }
        Ok(record)
    }
}

/// The config bucket `--remote` reads: `flag` (`--bucket`), else the
/// workspace's `config_bucket`.
pub fn bucket(flag: Option<&str>) -> Result<String> {
    match flag {
        Some(b) => Ok(b.to_string()),
        None => workspace::defaults()?.config_bucket.context(
            "--remote needs a config bucket: pass --bucket or set config_bucket in [workspace.metadata.sca]",
        ),
    }
}

/// The clients `--remote` uses: the workspace's region unless `--region`.
pub async fn clients(aws: &crate::aws::Session) -> Result<Clients> {
    let defaults = workspace::defaults()?;
    Clients::new(aws, defaults.region.as_deref()).await
}

/// Every run record under `s3://bucket/experiments/*/record.json`
/// (paginated listing, concurrent downloads); unreadable ones are reported.
pub async fn records(clients: &Clients, bucket: &str) -> Result<Vec<RunRecord>> {
    let keys = list_keys(clients, bucket, "experiments/")
        .await?
        .into_iter()
        .filter(|k| k.ends_with("/record.json"));
    let records = futures_util::stream::iter(keys)
        .map(|key| async move {
            let bytes = get(clients, bucket, &key).await.ok().flatten();
            match bytes.map(|b| serde_json::from_slice(&b)) {
                Some(Ok(r)) => Some(r),
                _ => {
                    errln!("warning: skipping s3://{bucket}/{key}: not a readable run record");
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

/// The config bucket's runs of `plan`'s pins that this runs directory does
/// not have (launched from another machine, or before `target/` was
/// cleaned); with `import`, each copied here ([`import`]; one that cannot
/// be is still a twin, with a warning).
pub async fn twins(
    root: &Path,
    plan: &crate::experiment::plan::Plan,
    aws: &crate::aws::Session,
    import: bool,
) -> Result<Vec<RunRecord>> {
    let clients = Clients::new(aws, Some(&plan.resolved.region)).await?;
    let bucket = &plan.resolved.config_bucket;
    let runs = runs_of(
        root,
        &clients,
        bucket,
        &plan.experiment.experiment.name,
        &plan.pins.commit,
    )
    .await?;
    let mut twins = Vec::new();
    for record in runs
        .into_iter()
        .filter(|r| r.is_launch_of(plan.backend, &plan.pins))
    {
        if !import {
            twins.push(record);
            continue;
        }
        match self::import(root, &clients, bucket, &record.job_name).await {
            Ok(imported) => twins.push(imported),
            Err(e) => {
                errln!(
                    "warning: {} (a run of the same pins in s3://{bucket}) cannot be copied here: {e:#}",
                    record.job_name
                );
                twins.push(record);
            }
        }
    }
    Ok(twins)
}

/// The config bucket's SageMaker runs of experiment `name` at `commit`
/// that this runs directory does not have: only their keys are listed
/// (`experiments/<stem>-<commit7>-*`). A record that cannot be read is
/// skipped with a warning; a listing that fails is the error.
pub async fn runs_of(
    root: &Path,
    clients: &Clients,
    bucket: &str,
    name: &str,
    commit: &str,
) -> Result<Vec<RunRecord>> {
    let prefix = format!("experiments/{}", sca_spec::job_name_prefix(name, commit));
    let mut jobs = Vec::new();
    for key in list_keys(clients, bucket, &prefix).await? {
        let Some(job) = key
            .strip_prefix("experiments/")
            .and_then(|k| k.strip_suffix("/record.json"))
        else {
            continue;
        };
        let here = crate::experiment::record::record_path(root, job);
        if RunRecord::check_name(job).is_ok() && !here.exists() {
            jobs.push(job.to_string());
        }
    }
    let mut runs = Vec::new();
    for job in jobs {
        let key = record_key(&job);
        match get(clients, bucket, &key).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<RunRecord>(&bytes) {
                Ok(r) if r.backend == Backend::Sagemaker && r.job_name == job => runs.push(r),
                Ok(_) => {}
                Err(e) => errln!("warning: skipping s3://{bucket}/{key}: not a run record: {e}"),
            },
            Ok(None) => {}
            Err(e) => errln!("warning: skipping s3://{bucket}/{key}: {e:#}"),
        }
    }
    Ok(runs)
}

/// Copy `job`'s record and its `config` channel (the experiment file and
/// data manifest it was launched with) from the config bucket into `root`'s
/// runs directory, where `diff`, `report`, `status` and `fetch` read them.
/// The channel is written first, into a fresh directory renamed into
/// place, so a record never stands here without its config.
pub async fn import(root: &Path, clients: &Clients, bucket: &str, job: &str) -> Result<RunRecord> {
    RunRecord::check_name(job)?;
    let key = record_key(job);
    let Some(bytes) = get(clients, bucket, &key).await? else {
        bail!(
            "no run record for job `{job}` here ({}) nor in s3://{bucket}/{key}: `cargo xtask experiment list --remote` shows the jobs there (--bucket for another config bucket)",
            crate::experiment::record::runs_dir(root).display()
        );
    };
    let record: RunRecord = serde_json::from_slice(&bytes)
        .with_context(|| format!("s3://{bucket}/{key} is not a run record"))?;
    if record.job_name != job {
        bail!(
            "s3://{bucket}/{key} is the record of `{}`, not of `{job}`: the bucket's records were moved by hand; put it back under experiments/{}/",
            record.job_name,
            record.job_name
        );
    }
    let (config_bucket, config_key) = split_s3(&record.config_uri)?;
    let prefix = if config_key.ends_with('/') {
        config_key.to_string()
    } else {
        format!("{config_key}/")
    };
    let mut names = Vec::new();
    for key in list_keys(clients, config_bucket, &prefix).await? {
        let name = &key[prefix.len()..];
        // The channel is flat (experiment file, manifest): anything else
        // is not ours and must not choose where it is written.
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            errln!("warning: skipping s3://{config_bucket}/{key}: not a config channel file");
            continue;
        }
        names.push(name.to_string());
    }
    if names.is_empty() {
        bail!(
            "the config channel of job `{job}` ({}) is empty or gone: without its experiment file and data manifest the run cannot be compared",
            record.config_uri
        );
    }
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let key = format!("{prefix}{name}");
        let bytes = get(clients, config_bucket, &key)
            .await?
            .with_context(|| format!("s3://{config_bucket}/{key} vanished while it was copied"))?;
        files.push((name, bytes));
    }
    crate::fsx::replace_dir(&record.config_dir(root), |dir| {
        for (name, bytes) in &files {
            std::fs::write(dir.join(name), bytes)
                .with_context(|| format!("writing {}", dir.join(name).display()))?;
        }
        Ok(())
    })?;
    record.save_unless_ended(root)
}

/// Every key under `prefix` in `bucket` (the paginated listing).
pub(super) async fn list_keys(
    clients: &Clients,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut pages = clients
        .s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            anyhow::anyhow!(
                "listing s3://{bucket}/{prefix}: {}",
                crate::aws::error_chain(&e)
            )
        })?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key())
                .map(str::to_string),
        );
    }
    Ok(keys)
}
