//! Launching a [`Plan`] on its backend: its pins claimed (so two launches
//! on this machine never run one job twice, [`claim`]) and the run
//! directory (so two never share a job name), the backend run, the outcome
//! printed as an exit code; and [`backend`], the one place that maps a
//! record's backend to its implementation.
//!
//! Every backend gets the same `config` channel (the experiment file,
//! `manifest.json` and `experiment.resolved.json`) and the same job pins as hyperparameters (job name,
//! commit, image digest, data manifest: the trainer resumes only checkpoints
//! of its own job), and leaves the same [`RunRecord`]; `local` and `docker`
//! lay the `/opt/ml` tree out in the run's new directory the way SageMaker
//! does, with an empty `checkpoints/`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::experiment::backend;
use crate::experiment::contract;
#[cfg(feature = "full")]
use crate::experiment::docker::DockerBackend;
use crate::experiment::local::LocalBackend;
use crate::experiment::pins::Pins;
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

/// The model that `init_checkpoint = "experiment:<name>"` names for a job
/// on `kind`: what that backend's [`latest_model`](backend::Backend::latest_model)
/// finds. For local and docker, which read run records, a run of `name`
/// whose launcher was killed before it recorded the end, and whose trainer
/// left exit code 0, is looked at first (its backend's `status`), so that
/// it is recorded `Completed`: passed over as `InProgress`, an older model
/// would be the warm start. One that cannot be looked at (its engine down)
/// refuses the warm start rather than guess. `look`: false for a dry run,
/// which changes nothing and says what it did not look at.
pub async fn latest_model(
    root: &Path,
    kind: Backend,
    name: &str,
    job: &sca_spec::ResolvedJob,
    aws: &crate::aws::Session,
    look: bool,
) -> Result<String> {
    if kind != Backend::Sagemaker {
        let unrecorded = RunRecord::all(root).into_iter().filter(|r| {
            let run_dir = record::run_dir(root, &r.job_name);
            r.experiment == name
                && r.backend != Backend::Sagemaker
                && !r.status.is_terminal()
                // A launcher at work records its run's end itself.
                && contract::launcher_gone(&run_dir).ok().flatten() != Some(false)
                && sca_spec::contract::OptMl::at(run_dir.join("opt/ml")).read_exit_code() == Some(0)
        });
        for mut run in unrecorded {
            let job_name = run.job_name.clone();
            if !look {
                errln!(
                    "warning: {job_name} of experiment `{name}` completed, not recorded so (its launcher was killed), and a dry run records nothing: the warm start shown passes it over, where a launch would record it first and start from its model; `cargo xtask experiment status {job_name}` records it"
                );
                continue;
            }
            if let Err(e) = backend(run.backend).refresh(root, &mut run, aws).await {
                bail!(
                    "model.init_checkpoint names experiment `{name}`, whose {} run {job_name} completed, unrecorded (its launcher was killed), and cannot be looked at now ({e:#}): its model may be the newest. `cargo xtask experiment status {job_name}` records it; or set init_checkpoint to a model file",
                    run.backend
                );
            }
        }
    }
    backend(kind).latest_model(root, name, job, aws).await
}

/// A run pinned exactly as a plan: launching the plan would repeat it.
#[derive(Debug)]
pub enum Twin {
    /// It completed: its record is the plan's result (memoized).
    Completed(RunRecord),
    /// It runs now, looked at on its backend (so a record whose launcher
    /// died is not taken for a running job), or followed by the launcher
    /// that holds its [`Claim`]; or its record says so and it was not
    /// looked at (a dry run changes nothing), or could not be (the why).
    Running(RunRecord, Option<String>),
    /// Another launch on this machine holds the pins' [`Claim`] and has
    /// no record yet: its trainer builds, or its SageMaker create waits
    /// for quota. Who holds it (`xtask pid N since T`), and the jobs of
    /// these pins recorded before it was seen (not the one it prepares).
    Preparing(String, Vec<String>),
}

/// The right to launch a plan's pins on its backend: taken before the twin
/// check and held until the launch returns, so a second launch of the same
/// pins (another terminal, a sweep started again, another machine) sees the
/// first while it is still being prepared, before any record says so, and
/// never takes a record its launcher is about to update for one whose
/// launcher died. On this machine a file lock under `<runs>/.claims/`: a
/// killed holder never leaves it taken. Beside it, where the backend has
/// one, a claim other machines see ([`backend::RemoteClaim`]).
#[derive(Debug)]
pub struct Claim {
    /// Locked while held; its holder line cleared and the file closed (so
    /// unlocked) when dropped.
    lock: Option<std::fs::File>,
    /// The claim other machines see, if held.
    remote: backend::HeldClaim,
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Not left naming a launcher that is gone (a killed holder's line
        // stays, and says so by its pid).
        if let Some(file) = &self.lock {
            let _ = file.set_len(0);
        }
    }
}

impl Claim {
    /// No claim (a dry run; pins no other launch can share).
    pub fn none() -> Self {
        Claim {
            lock: None,
            remote: Default::default(),
        }
    }

    /// Let it go, the claim other machines see included.
    pub async fn release(mut self) {
        self.remote.release().await;
    }

    fn path(root: &Path, backend: Backend, pins: &Pins) -> Option<PathBuf> {
        let key = pins.launch_key()?;
        Some(
            record::runs_dir(root)
                .join(".claims")
                .join(format!("{backend}-{}.lock", &key[..32])),
        )
    }

    /// Take the claim of `pins` on `backend`, or say who holds it. `peek`
    /// (a dry run) writes nothing: who would take it gets none.
    fn take(
        root: &Path,
        backend: Backend,
        pins: &Pins,
        peek: bool,
    ) -> Result<std::result::Result<Claim, String>> {
        use std::io::Write;
        let Some(path) = Self::path(root, backend, pins) else {
            return Ok(Ok(Claim::none()));
        };
        let mut open = std::fs::OpenOptions::new();
        // A dry run opens it only to read (a read-only runs directory is
        // fine), and makes none.
        open.read(true).write(!peek);
        if !peek {
            let dir = path.parent().context("a claim has a directory")?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            // Never truncated on open: the holder's line is what a
            // second launch reports.
            open.create(true).truncate(false);
        }
        let mut file = match open.open(&path) {
            Ok(f) => f,
            Err(e) if peek && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Ok(Claim::none()))
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        // A dry run's look holds it for an instant: a launch tries again
        // before it calls the pins taken.
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) if peek => return Ok(Ok(Claim::none())),
                Ok(()) => {
                    let holder =
                        format!("xtask pid {} since {}", std::process::id(), record::now());
                    file.set_len(0)
                        .and_then(|()| file.write_all(holder.as_bytes()))
                        .with_context(|| format!("writing {}", path.display()))?;
                    return Ok(Ok(Claim {
                        lock: Some(file),
                        remote: Default::default(),
                    }));
                }
                Err(std::fs::TryLockError::WouldBlock) if tries < 5 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let holder = holder.trim();
                    return Ok(Err(match holder.is_empty() {
                        true => "another xtask".to_string(),
                        false => holder.to_string(),
                    }));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()))
                }
            }
        }
    }

    /// Who holds the claim of `plan`'s pins now, if anyone, on this
    /// machine or where other machines see it (a look that takes nothing).
    pub async fn holder(
        root: &Path,
        plan: &Plan,
        aws: &crate::aws::Session,
    ) -> Result<Option<String>> {
        if let Err(holder) = Self::take(root, plan.backend, &plan.pins, true)? {
            return Ok(Some(holder));
        }
        Ok(
            match backend(plan.backend).remote_claim(plan, aws, true).await {
                Ok(backend::RemoteClaimed::By(holder)) => Some(holder),
                Ok(_) => None,
                Err(e) => {
                    errln!(
                        "warning: the claim of {} beyond this machine cannot be read: {e:#}",
                        plan.experiment.experiment.name
                    );
                    None
                }
            },
        )
    }

    /// The claim of `plan`'s pins if no other launch holds it, else none: a
    /// launch that runs the pins a second time on purpose (`--force`,
    /// `rerun`) still shows itself to the launches after it, on this
    /// machine and, where it can, on others.
    pub async fn if_free(root: &Path, plan: &Plan, aws: &crate::aws::Session) -> Result<Claim> {
        let Ok(mut claim) = Self::take(root, plan.backend, &plan.pins, false)? else {
            return Ok(Claim::none());
        };
        if claim.lock.is_some() {
            if let Ok(backend::RemoteClaimed::Held(held)) =
                backend(plan.backend).remote_claim(plan, aws, false).await
            {
                claim.remote = backend::HeldClaim::new(Some(held));
            }
        }
        Ok(claim)
    }
}

/// Claim `plan`'s pins for a launch, or the twin that has them. `look`: ask
/// the backend how a twin its record calls running is (which may record
/// its end); a dry run (`!look`) only reads, and holds no claim.
///
/// Where the backend records runs beyond this checkout (SageMaker's config
/// bucket), another machine's runs count too (copied here, unless a dry
/// run), and so does its claim there ([`Backend::remote_claim`]), which
/// this launch takes beside this machine's. When those cannot be read or
/// taken, a warning, and only this machine's count.
///
/// [`Backend::remote_claim`]: backend::Backend::remote_claim
pub async fn claim(
    root: &Path,
    plan: &Plan,
    aws: &crate::aws::Session,
    look: bool,
) -> Result<std::result::Result<Claim, Twin>> {
    let (on, pins) = (plan.backend, &plan.pins);
    let name = &plan.experiment.experiment.name;
    let (mut before, taken) = claim_here(root, on, pins, look)?;
    // Other machines' claim: tried only by a launch that holds this
    // machine's (one here that holds it is reported as this machine's),
    // and before their runs are read, so that a run whose launcher has let
    // its claim go is read.
    let elsewhere = match &taken {
        Err(_) => backend::RemoteClaimed::Free,
        Ok(_) => match backend(on).remote_claim(plan, aws, !look).await {
            Ok(claimed) => claimed,
            Err(e) => {
                errln!(
                    "warning: {name} cannot be claimed beyond this machine ({e:#}): a launch of it elsewhere is seen only once it has a record"
                );
                backend::RemoteClaimed::Free
            }
        },
    };
    let remote = match backend(on).remote_twins(root, plan, aws, look).await {
        Ok(remote) => remote,
        Err(e) => {
            errln!(
                "warning: runs of {name} recorded beyond this machine cannot be read ({e:#}): only this machine's count as twins"
            );
            Vec::new()
        }
    };
    before.extend(remote.iter().map(|r| r.job_name.clone()));
    let decided = decide(root, on, pins, before.clone(), taken, &remote, aws, look).await?;
    Ok(match (decided, elsewhere) {
        (Ok(mut claim), backend::RemoteClaimed::Held(held)) => {
            claim.remote = backend::HeldClaim::new(Some(held));
            Ok(claim)
        }
        // No run of them anywhere, and a launch on another machine holds
        // them: it prepares one.
        (Ok(_), backend::RemoteClaimed::By(holder)) => Err(Twin::Preparing(holder, before)),
        (decided, backend::RemoteClaimed::Held(held)) => {
            held.release().await;
            decided
        }
        (decided, _) => decided,
    })
}

/// This machine's part of [`claim`], where nothing is recorded beyond it.
#[cfg(test)]
async fn claim_pins(
    root: &Path,
    on: Backend,
    pins: &Pins,
    aws: &crate::aws::Session,
    look: bool,
) -> Result<std::result::Result<Claim, Twin>> {
    let (before, taken) = claim_here(root, on, pins, look)?;
    decide(root, on, pins, before, taken, &[], aws, look).await
}

/// The runs of `pins` recorded here (read before the claim is tried: those
/// that are not the one its holder prepares, if it is held), and this
/// machine's claim of them, or who holds it.
#[allow(clippy::type_complexity)]
fn claim_here(
    root: &Path,
    on: Backend,
    pins: &Pins,
    look: bool,
) -> Result<(Vec<String>, std::result::Result<Claim, String>)> {
    let before: Vec<String> = RunRecord::all(root)
        .into_iter()
        .filter(|r| r.is_launch_of(on, pins))
        .map(|r| r.job_name)
        .collect();
    Ok((before, Claim::take(root, on, pins, !look)?))
}

/// What a claim found: its twin, here or in `remote` (the runs recorded
/// beyond this runs directory), or the claim.
#[allow(clippy::too_many_arguments)]
async fn decide(
    root: &Path,
    on: Backend,
    pins: &Pins,
    before: Vec<String>,
    taken: std::result::Result<Claim, String>,
    remote: &[RunRecord],
    aws: &crate::aws::Session,
    look: bool,
) -> Result<std::result::Result<Claim, Twin>> {
    // Read under the claim: a twin that ended just before it was taken is
    // seen completed, not missed.
    let completed = RunRecord::completed_twin(root, on, pins).or_else(|| {
        remote
            .iter()
            .find(|r| r.status == Status::Completed)
            .cloned()
    });
    if let Some(done) = completed {
        return Ok(Err(Twin::Completed(done)));
    }
    // One read only in the config bucket (a dry run's, or one that could
    // not be copied here) is not looked at: its refresh would save a
    // record here without its config channel.
    let here = RunRecord::running_twins(root, on, pins);
    let (running, copied) = match here.first() {
        Some(r) => (Some(r.clone()), true),
        None => (
            remote.iter().find(|r| !r.status.is_terminal()).cloned(),
            false,
        ),
    };
    let (claim, running) = match (taken, running) {
        // Its holder launches it, or follows the job it launched: it is
        // not asked of the backend here.
        (Err(holder), Some(running)) => {
            return Ok(Err(Twin::Running(
                running,
                Some(format!("launched by {holder}")),
            )))
        }
        (Err(holder), None) => return Ok(Err(Twin::Preparing(holder, before))),
        (Ok(claim), None) => return Ok(Ok(claim)),
        (Ok(claim), Some(running)) => (claim, running),
    };
    if !look || !copied {
        let why = match copied {
            true => "as recorded; not looked at",
            false => "as the config bucket records it; not looked at",
        };
        return Ok(Err(Twin::Running(running, Some(why.into()))));
    }
    // Each, newest first: a newer record found dead says nothing of an
    // older run still training (its launcher killed, its trainer not).
    for mut running in here {
        if let Err(e) = backend(running.backend)
            .refresh(root, &mut running, aws)
            .await
        {
            let why = format!("its state cannot be read now: {e:#}");
            return Ok(Err(Twin::Running(running, Some(why))));
        }
        match running.status {
            Status::Completed => return Ok(Err(Twin::Completed(running))),
            s if s.is_terminal() => {}
            _ => return Ok(Err(Twin::Running(running, None))),
        }
    }
    // Every one here has ended: one only in the config bucket has not.
    if let Some(there) = remote.iter().find(|r| {
        !r.status.is_terminal()
            && !crate::experiment::record::record_path(root, &r.job_name).is_file()
    }) {
        let why = "as the config bucket records it; not looked at".to_string();
        return Ok(Err(Twin::Running(there.clone(), Some(why))));
    }
    Ok(Ok(claim))
}

/// Run `plan` on its backend; the final record and the exit code.
/// `claim`, the plan's [`Claim`], is held until the launch returns.
pub async fn execute(
    root: &Path,
    plan: Plan,
    opts: &LaunchOptions,
    mut claim: Claim,
) -> Result<(RunRecord, ExitCode)> {
    let launched = launch_claimed(root, plan, opts, &mut claim.remote).await;
    // (What the backend did not let go or keep; this machine's with it.)
    claim.release().await;
    launched
}

/// [`execute`], under its claim.
async fn launch_claimed(
    root: &Path,
    mut plan: Plan,
    opts: &LaunchOptions,
    remote: &mut backend::HeldClaim,
) -> Result<(RunRecord, ExitCode)> {
    if !opts.dry_run {
        // Off the async threads: a name taken this second waits for the next.
        let (name, commit) = (
            plan.experiment.experiment.name.clone(),
            plan.pins.commit.clone(),
        );
        // A name passed on by a lapsed claim: one of these pins' (a lease
        // edited by hand may name anything, and its job may yet come).
        let inherited = remote.inherited().map(|i| i.job.clone());
        if let Some(job) = &inherited {
            if !sca_spec::is_job_name_of(job, &name, &commit) {
                bail!(
                    "the claim of these pins names training job `{job}`, which is not a job name of experiment `{name}` at commit {commit}: was it edited by hand? Delete it (`claims/` in the config bucket) if no launch is creating that job; nothing was launched"
                );
            }
        }
        let runs_root = root.to_path_buf();
        plan.job_name = tokio::task::spawn_blocking(move || match inherited {
            Some(job) => record::reserve_named(&runs_root, &job).map(|()| job),
            None => {
                record::reserve_run_dir(&runs_root, |at| sca_spec::job_name(&name, &commit, at))
            }
        })
        .await??;
    }
    let launched = backend(plan.backend)
        .launch(root, &plan, opts, remote)
        .await;
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
    let here = record::record_path(root, &record.job_name);
    // A twin read only in the config bucket (a dry run's, or one that could
    // not be copied) is named where it is.
    let place = match (here.exists(), record.config_uri.strip_suffix("config/")) {
        (false, Some(dir)) if dir.starts_with("s3://") => format!("{dir}record.json"),
        _ => here.display().to_string(),
    };
    errln!("{}: {} (record: {place})", record.job_name, record.status);
    match record.status {
        Status::Completed | Status::InProgress | Status::Stopping => ExitCode::SUCCESS,
        Status::Failed | Status::Stopped => {
            if let Some(r) = &record.failure_reason {
                errln!(
                    "error: {} {}: {r}",
                    record.job_name,
                    record.status.to_string().to_lowercase()
                );
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn claim_of(root: &Path, pins: &Pins, look: bool) -> std::result::Result<Claim, Twin> {
        claim_pins(root, Backend::Local, pins, &Default::default(), look)
            .await
            .unwrap()
    }

    /// A second launch of pins another launch holds sees that launch, while
    /// it prepares (no record yet) and while it runs (its record, which is
    /// left to it: a local record with no pid yet is not a dead launcher's);
    /// once the holder is gone, the pins are free again.
    #[tokio::test]
    async fn a_second_launch_sees_the_first_from_its_claim() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut record = RunRecord::for_tests("exp-0123456-20261207-120000");
        record.pins.data_manifest_sha256 = Some("ab".into());
        let pins = record.pins.clone();

        let first = claim_of(root, &pins, true)
            .await
            .expect("free pins are claimed");
        let pid = format!("xtask pid {}", std::process::id());
        for look in [true, false] {
            match claim_of(root, &pins, look).await {
                Err(Twin::Preparing(holder, _)) => assert!(holder.starts_with(&pid), "{holder}"),
                other => panic!("{other:?}"),
            }
        }
        // Other pins, or the same on another backend, are another claim.
        let mut other = pins.clone();
        other.experiment_sha256 = "1".into();
        assert!(claim_of(root, &other, true).await.is_ok());
        let docker = claim_pins(root, Backend::Docker, &pins, &Default::default(), true).await;
        assert!(docker.unwrap().is_ok());

        // The first launch's record, before its trainer starts.
        record.save(root).unwrap();
        match claim_of(root, &pins, true).await {
            Err(Twin::Running(r, Some(why))) => {
                assert_eq!(r.job_name, record.job_name);
                assert!(why.contains(&pid), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            RunRecord::load(root, &record.job_name).unwrap().status,
            Status::InProgress
        );

        // It completes while its launcher still holds the claim; or fails.
        let end = |status: Status| {
            RunRecord::update(root, &record.job_name, |r| {
                r.status = status;
                Ok(())
            })
            .unwrap();
        };
        end(Status::Completed);
        let seen = claim_of(root, &pins, true).await;
        assert!(matches!(seen, Err(Twin::Completed(_))), "{seen:?}");
        end(Status::Failed);
        let seen = claim_of(root, &pins, true).await;
        // The failed run is not the one its holder prepares.
        match seen {
            Err(Twin::Preparing(_, before)) => assert_eq!(before, [record.job_name.clone()]),
            other => panic!("{other:?}"),
        }
        drop(first);
        assert!(claim_of(root, &pins, true).await.is_ok());
    }

    /// A dry run takes no claim and writes nothing; pins without a data
    /// manifest (no twin can share them) have none to take.
    #[tokio::test]
    async fn a_dry_run_and_unshareable_pins_claim_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut pins = RunRecord::for_tests("exp-0123456-20261207-120000").pins;
        let _ = claim_of(root, &pins, true).await.unwrap();
        assert!(!record::runs_dir(root).exists());
        pins.data_manifest_sha256 = Some("ab".into());
        let dry = claim_of(root, &pins, false).await.unwrap();
        assert!(!record::runs_dir(root).exists());
        drop(dry);
        let held = claim_of(root, &pins, true).await.unwrap();
        assert!(claim_of(root, &pins, true).await.is_err());
        // A dry run sees it held, and leaves the holder's line as it was.
        let path = Claim::path(root, Backend::Local, &pins).unwrap();
        let line = std::fs::read_to_string(&path).unwrap();
        assert!(line.starts_with("xtask pid "), "{line}");
        assert!(matches!(
            claim_of(root, &pins, false).await,
            Err(Twin::Preparing(..))
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), line);
        // Let go, it no longer names its holder.
        drop(held);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
