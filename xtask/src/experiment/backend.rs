//! The [`Backend`] trait: what a place to run jobs does (launch, status,
//! logs, stop, fetch, and find an experiment's newest model for a warm
//! start), implemented once per backend (`local.rs`, `docker.rs`,
//! `sagemaker/`). `launch::backend` is the one place that maps a record's
//! [`record::Backend`](crate::experiment::record::Backend) to its
//! implementation.
//!
//! The methods return boxed futures so that the implementations can be
//! used as `&dyn Backend`.

use std::path::Path;

use anyhow::Result;
use futures_util::future::BoxFuture;

use crate::aws::Session;
use crate::experiment::artifacts::Unpacked;
use crate::experiment::plan::{LaunchOptions, Plan};
use crate::experiment::record::RunRecord;

/// A claim of a launch's pins that other machines see (SageMaker: a lease
/// in the config bucket, `sagemaker/lease.rs`), held beside this machine's
/// [`Claim`](crate::experiment::launch::Claim).
pub trait RemoteClaim: Send + Sync + std::fmt::Debug {
    /// Let it go, the launch having left no job that other machines cannot
    /// see (a claim dropped unreleased is let go as it can). One that
    /// [passed on a job's name](RemoteClaim::inherited) is kept naming that
    /// job instead, which its former holder may yet create.
    fn release(self: Box<Self>) -> BoxFuture<'static, ()>;

    /// Let it go: the launch's job is recorded where other machines look
    /// (and so is another launch's claim that took it over naming that
    /// job, which has served).
    fn recorded(self: Box<Self>) -> BoxFuture<'static, ()>;

    /// The job name this launch creates its job under, passed on by the
    /// claim it took over: that claim's holder named the job before its
    /// create and let the claim lapse (its machine suspended, its request
    /// delayed) without SageMaker having the job. Its create may still
    /// come; under one name, only one of the two is created.
    fn inherited(&self) -> Option<&Inherited>;

    /// Leave it held for `job`, which was created (or may have been) and
    /// has no record where other machines look: whoever looks next asks
    /// the backend whether `job` exists, rather than launch a second one.
    fn keep_for(self: Box<Self>, job: String) -> BoxFuture<'static, ()>;

    /// Renew it now, naming `job`, which the launch is about to create:
    /// `Err` (why) where it is no longer this launch's (another launch took
    /// it over after this one could not renew it) or cannot be renewed,
    /// and the launch must not create its job.
    fn confirm_for(&self, job: String) -> BoxFuture<'_, std::result::Result<(), String>>;
}

/// A job name passed on by a lapsed claim ([`RemoteClaim::inherited`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherited {
    /// The job its former holder was about to create.
    pub job: String,
    /// That holder (`xtask pid N on HOST since T`).
    pub from: String,
}

/// The [`RemoteClaim`] of a launch, if it holds one: given to
/// [`Backend::launch`], which lets it go once other machines can see the
/// job's record (or keeps it for a job they cannot).
#[derive(Debug, Default)]
pub struct HeldClaim(Option<Box<dyn RemoteClaim>>);

impl HeldClaim {
    pub fn new(claim: Option<Box<dyn RemoteClaim>>) -> Self {
        HeldClaim(claim)
    }

    /// Let it go, if held (see [`RemoteClaim::release`]).
    pub async fn release(&mut self) {
        if let Some(claim) = self.0.take() {
            claim.release().await;
        }
    }

    /// Let it go, if held: the job's record is where other machines look.
    pub async fn recorded(&mut self) {
        if let Some(claim) = self.0.take() {
            claim.recorded().await;
        }
    }

    /// See [`RemoteClaim::inherited`].
    pub fn inherited(&self) -> Option<&Inherited> {
        self.0.as_ref().and_then(|c| c.inherited())
    }

    /// See [`RemoteClaim::keep_for`].
    pub async fn keep_for(&mut self, job: &str) {
        if let Some(claim) = self.0.take() {
            claim.keep_for(job.to_string()).await;
        }
    }

    /// See [`RemoteClaim::confirm_for`]; `Ok` where none is held.
    pub async fn confirm_for(&self, job: &str) -> std::result::Result<(), String> {
        match &self.0 {
            Some(claim) => claim.confirm_for(job.to_string()).await,
            None => Ok(()),
        }
    }
}

/// What [`Backend::remote_claim`] found.
#[derive(Debug)]
pub enum RemoteClaimed {
    /// The backend keeps no claims beyond this machine, or a look (a dry
    /// run) found none that holds.
    Free,
    /// Taken, by this launch.
    Held(Box<dyn RemoteClaim>),
    /// Held by another launch: who (`xtask pid N on HOST since T`, where).
    By(String),
}

/// One way of running jobs.
pub trait Backend: Sync {
    /// Run `plan` (its run directory already made) and record it: the
    /// record as the launch leaves it (ended, or running on with
    /// SageMaker), or `None` for a dry run, which prints what it would do.
    /// `claim`: the launch's claim other machines see, if it holds one.
    fn launch<'a>(
        &'a self,
        root: &'a Path,
        plan: &'a Plan,
        opts: &'a LaunchOptions,
        claim: &'a mut HeldClaim,
    ) -> BoxFuture<'a, Result<Option<RunRecord>>>;

    /// Bring `record` up to date with the job itself (`experiment status`),
    /// recording the end of a job whose launcher is gone.
    fn refresh<'a>(
        &'a self,
        root: &'a Path,
        record: &'a mut RunRecord,
        aws: &'a Session,
    ) -> BoxFuture<'a, Result<()>>;

    /// Print the job's log; with `follow`, until the job ends.
    fn logs<'a>(
        &'a self,
        root: &'a Path,
        record: &'a RunRecord,
        follow: bool,
        aws: &'a Session,
    ) -> BoxFuture<'a, Result<()>>;

    /// Ask the running job to stop: SIGTERM, and SIGKILL after the grace
    /// period, as SageMaker does.
    fn stop<'a>(
        &'a self,
        root: &'a Path,
        record: &'a RunRecord,
        aws: &'a Session,
    ) -> BoxFuture<'a, Result<()>>;

    /// Unpack the job's model, metrics and plot into the fresh directory `dir`.
    fn fetch<'a>(
        &'a self,
        root: &'a Path,
        record: &'a RunRecord,
        dir: &'a Path,
        aws: &'a Session,
    ) -> BoxFuture<'a, Result<Unpacked>>;

    /// The model of experiment `name`'s newest completed run on this kind
    /// of backend (`init_checkpoint = "experiment:<name>"`), for a job
    /// with settings `job`.
    fn latest_model<'a>(
        &'a self,
        root: &'a Path,
        name: &'a str,
        job: &'a sca_spec::ResolvedJob,
        aws: &'a Session,
    ) -> BoxFuture<'a, Result<String>>;

    /// Runs of `plan`'s pins that another machine launched and recorded
    /// where this backend keeps records beyond this checkout (SageMaker:
    /// the config bucket), and this runs directory does not have; with
    /// `import`, copied here. None for a backend without such records.
    fn remote_twins<'a>(
        &'a self,
        _root: &'a Path,
        _plan: &'a Plan,
        _aws: &'a Session,
        _import: bool,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Claim `plan`'s pins where other machines launching on this backend
    /// see it (SageMaker: the config bucket), or say who holds them there;
    /// `peek` (a dry run) takes nothing. `Free` for a backend that runs
    /// jobs on this machine only.
    fn remote_claim<'a>(
        &'a self,
        _plan: &'a Plan,
        _aws: &'a Session,
        _peek: bool,
    ) -> BoxFuture<'a, Result<RemoteClaimed>> {
        Box::pin(async { Ok(RemoteClaimed::Free) })
    }

    /// Runs of experiment `name` at `commit` recorded there and not here,
    /// whatever their other pins (for a check before the image is built),
    /// read for a job with settings `job`.
    fn remote_runs<'a>(
        &'a self,
        _root: &'a Path,
        _name: &'a str,
        _commit: &'a str,
        _job: &'a sca_spec::ResolvedJob,
        _aws: &'a Session,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A backend this launcher was built without (`xtask-local`, no feature
/// `full`): every call fails with what to run instead.
#[cfg(not(feature = "full"))]
pub struct Unavailable(pub crate::experiment::record::Backend);

#[cfg(not(feature = "full"))]
impl Unavailable {
    fn fail<'a, T: Send + 'a>(&self) -> BoxFuture<'a, Result<T>> {
        let e = crate::needs_full(&format!("the {} backend", self.0));
        Box::pin(async move { Err(e) })
    }
}

#[cfg(not(feature = "full"))]
impl Backend for Unavailable {
    fn launch<'a>(
        &'a self,
        _: &'a Path,
        _: &'a Plan,
        _: &'a LaunchOptions,
        _: &'a mut HeldClaim,
    ) -> BoxFuture<'a, Result<Option<RunRecord>>> {
        self.fail()
    }
    fn refresh<'a>(
        &'a self,
        _: &'a Path,
        _: &'a mut RunRecord,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<()>> {
        self.fail()
    }
    fn logs<'a>(
        &'a self,
        _: &'a Path,
        _: &'a RunRecord,
        _: bool,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<()>> {
        self.fail()
    }
    fn stop<'a>(
        &'a self,
        _: &'a Path,
        _: &'a RunRecord,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<()>> {
        self.fail()
    }
    fn fetch<'a>(
        &'a self,
        _: &'a Path,
        _: &'a RunRecord,
        _: &'a Path,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<Unpacked>> {
        self.fail()
    }
    fn latest_model<'a>(
        &'a self,
        _: &'a Path,
        _: &'a str,
        _: &'a sca_spec::ResolvedJob,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<String>> {
        self.fail()
    }
}
