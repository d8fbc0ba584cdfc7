//! The `sagemaker` backend: [`request`] the exact `CreateTrainingJob`
//! request as data, [`launch`] the config upload and the job created
//! exactly once, [`lifecycle`] the job afterwards (describe, follow, logs,
//! stop, fetch, an experiment's newest model), [`remote`] the runs the
//! config bucket records and this checkout does not, [`lease`] a launch's
//! claim there that other machines see, [`client`] the AWS
//! clients and calls they share; through aws-sdk-sagemaker, -s3 and
//! -cloudwatchlogs.

pub mod client;
pub mod launch;
pub mod lease;
pub mod lifecycle;
pub mod remote;
pub mod request;

use std::path::Path;

use anyhow::Result;
use futures_util::future::BoxFuture;

use crate::aws::Session;
use crate::experiment::artifacts::Unpacked;
use crate::experiment::backend::{Backend, RemoteClaimed};
use crate::experiment::plan::{LaunchOptions, Plan};
use crate::experiment::record::RunRecord;

/// The `sagemaker` backend.
pub struct SagemakerBackend;

impl Backend for SagemakerBackend {
    fn launch<'a>(
        &'a self,
        root: &'a Path,
        plan: &'a Plan,
        opts: &'a LaunchOptions,
        claim: &'a mut crate::experiment::backend::HeldClaim,
    ) -> BoxFuture<'a, Result<Option<RunRecord>>> {
        Box::pin(launch::run(root, plan, opts, claim))
    }

    fn refresh<'a>(
        &'a self,
        root: &'a Path,
        record: &'a mut RunRecord,
        aws: &'a Session,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(lifecycle::status(root, record, aws))
    }

    fn logs<'a>(
        &'a self,
        _: &'a Path,
        record: &'a RunRecord,
        follow: bool,
        aws: &'a Session,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(lifecycle::logs(record, follow, aws))
    }

    fn stop<'a>(
        &'a self,
        root: &'a Path,
        record: &'a RunRecord,
        aws: &'a Session,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(lifecycle::stop(root, record, aws))
    }

    fn fetch<'a>(
        &'a self,
        _: &'a Path,
        record: &'a RunRecord,
        dir: &'a Path,
        aws: &'a Session,
    ) -> BoxFuture<'a, Result<Unpacked>> {
        Box::pin(lifecycle::fetch_model(record, dir, aws))
    }

    fn latest_model<'a>(
        &'a self,
        _: &'a Path,
        name: &'a str,
        job: &'a sca_spec::ResolvedJob,
        aws: &'a Session,
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(lifecycle::warm_start(name, job, aws))
    }

    fn remote_twins<'a>(
        &'a self,
        root: &'a Path,
        plan: &'a Plan,
        aws: &'a Session,
        import: bool,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>>> {
        Box::pin(remote::twins(root, plan, aws, import))
    }

    fn remote_claim<'a>(
        &'a self,
        plan: &'a Plan,
        aws: &'a Session,
        peek: bool,
    ) -> BoxFuture<'a, Result<RemoteClaimed>> {
        Box::pin(async move {
            let Some(launch_key) = plan.pins.launch_key() else {
                return Ok(RemoteClaimed::Free);
            };
            let clients = client::Clients::new(aws, Some(&plan.resolved.region)).await?;
            let key = lease::key(&plan.backend.to_string(), &launch_key);
            lease::take(
                aws,
                &clients,
                &plan.resolved.config_bucket,
                &key,
                // Where its job is created (`--region` over the file's).
                &aws.region_or(&plan.resolved.region),
                peek,
                lease::Timing::DEFAULT,
            )
            .await
        })
    }

    fn remote_runs<'a>(
        &'a self,
        root: &'a Path,
        name: &'a str,
        commit: &'a str,
        job: &'a sca_spec::ResolvedJob,
        aws: &'a Session,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>>> {
        Box::pin(async move {
            let clients = client::Clients::new(aws, Some(&job.region)).await?;
            remote::runs_of(root, &clients, &job.config_bucket, name, commit).await
        })
    }
}
