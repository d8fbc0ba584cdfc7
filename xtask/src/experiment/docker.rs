//! The `docker` backend: the pinned image under the Docker engine (bollard),
//! run the way SageMaker runs it: `/opt/ml` (config channel,
//! `hyperparameters.json`, `resourceconfig.json`, `inputdataconfig.json`)
//! bind-mounted from the run's directory, `train` as the command, a GPU
//! requested when the engine has the NVIDIA runtime, logs streamed, Ctrl-C or
//! `experiment stop` → SIGTERM then SIGKILL after 120 s, and `/opt/ml/model`
//! packed into `model.tar.gz` afterwards.
//!
//! Local dataset roots are mounted read-only at their host paths, so the
//! experiment's relative paths resolve inside the container exactly as on
//! the host; a local warm-start checkpoint is mounted alone, read-only, under
//! `/opt/ml/input/data/init/`. Mounts are typed (bollard's `Mount`), never
//! `src:dst` strings, which a `:` in a path would break.
//!
//! A job ends in [`conclude`]: exit code and the engine's OOMKilled read,
//! outcome recorded, model packed, container removed. The launcher calls it
//! when the container exits; `status` calls it for an exited container whose
//! launcher is gone.

use std::path::Path;

use anyhow::{bail, Context, Result};
use bollard::models::{
    ContainerCreateBody, ContainerState, DeviceRequest, HostConfig, Mount, MountType,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use futures_util::future::BoxFuture;

use crate::aws::Session;
use crate::experiment::artifacts::{self, Unpacked};
use crate::experiment::backend::Backend;
use crate::experiment::contract::{self, Exit, Sink, STOP_GRACE};
use crate::experiment::plan::{LaunchOptions, Plan};
use crate::experiment::record::{self, RunRecord, Status};
use crate::image;
use sca_spec::contract::OptMl;

/// The directory a local warm-start checkpoint is mounted in, alone.
const INIT_MOUNT: &str = "/opt/ml/input/data/init";

/// The `docker` backend.
pub struct DockerBackend;

impl Backend for DockerBackend {
    fn launch<'a>(
        &'a self,
        root: &'a Path,
        plan: &'a Plan,
        opts: &'a LaunchOptions,
        _: &'a mut crate::experiment::backend::HeldClaim,
    ) -> BoxFuture<'a, Result<Option<RunRecord>>> {
        Box::pin(run(root, plan, opts))
    }

    fn refresh<'a>(
        &'a self,
        root: &'a Path,
        record: &'a mut RunRecord,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(refresh(root, record))
    }

    fn logs<'a>(
        &'a self,
        root: &'a Path,
        record: &'a RunRecord,
        follow: bool,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(contract::print_log(
            root,
            record,
            follow,
            move |mut r| async move {
                refresh(root, &mut r).await?;
                Ok(r)
            },
        ))
    }

    fn stop<'a>(
        &'a self,
        root: &'a Path,
        record: &'a RunRecord,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(stop_job(root, record))
    }

    fn fetch<'a>(
        &'a self,
        root: &'a Path,
        record: &'a RunRecord,
        dir: &'a Path,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<Unpacked>> {
        Box::pin(async move { fetch(root, record, dir) })
    }

    fn latest_model<'a>(
        &'a self,
        root: &'a Path,
        name: &'a str,
        _: &'a sca_spec::ResolvedJob,
        _: &'a Session,
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move { contract::latest_host_model(root, name) })
    }
}

async fn run(root: &Path, plan: &Plan, opts: &LaunchOptions) -> Result<Option<RunRecord>> {
    let reference = plan
        .pins
        .image
        .as_ref()
        .context("the docker backend runs a pinned image")?
        .to_string();
    let run_dir = record::run_dir(root, &plan.job_name);
    let ml = run_dir.join("opt/ml");
    let mut hyper = plan.host_hyperparameters();
    let data = data_mounts(
        &plan.base_dir,
        &[
            &plan.experiment.dataset.imagery,
            &plan.experiment.dataset.masks,
        ],
    )?;
    let init = match &plan.pins.init_checkpoint {
        Some(init) if !init.starts_with("s3://") => {
            let (mount, inside) = init_mount(Path::new(init))?;
            hyper.init_checkpoint = Some(inside);
            Some(mount)
        }
        Some(init) => {
            hyper.init_checkpoint = Some(init.clone());
            None
        }
        None => None,
    };
    let mounts = mounts(&ml, data, init)?;
    let mut record = plan.record(
        &hyper,
        ml.join("input/data/config").display().to_string(),
        run_dir.join("model.tar.gz").display().to_string(),
    );
    // The run's own, new directory (see `contract::write_opt_ml`).
    record.checkpoint_uri = Some(ml.join("checkpoints").display().to_string());
    if opts.dry_run {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "record": record,
                "image": reference,
                "mounts": mounts,
                "command": ["train"],
            }))?
        );
        return Ok(None);
    }
    let docker = image::engine::connect().await?;
    if let Err(e) = docker.inspect_image(&reference).await {
        // A registry's image comes back by its digest; an engine's own id
        // only from a build that reproduces it byte for byte.
        let fix = if reference.contains('@') {
            format!("pull it (`docker pull {reference}`, logged in to its registry)")
        } else {
            format!(
                "build it at commit {c} (`git checkout {c} && cargo xtask image build`: the same id only if the build reproduces it), or launch with --registry, which pins an image any machine can pull",
                c = plan.pins.commit
            )
        };
        bail!("image {reference} is not in the Docker engine ({e}): {fix}");
    }
    contract::write_opt_ml(&ml, plan, &hyper)?;
    plan.write_config_channel(&record.config_dir(root))?;
    // Held until the launch returns: `logs --follow` concludes the run
    // itself only once this launcher is gone.
    let _launcher = contract::launcher_lock(&run_dir)?;

    // Asked once: whether it has the NVIDIA runtime, and its ID for the record.
    let info = docker.info().await.ok();
    let gpu = info
        .as_ref()
        .and_then(|i| i.runtimes.as_ref())
        .is_some_and(|r| r.contains_key("nvidia"));
    let host_config = HostConfig {
        mounts: Some(mounts),
        device_requests: gpu.then(|| {
            vec![DeviceRequest {
                driver: Some("nvidia".into()),
                count: Some(-1),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..Default::default()
            }]
        }),
        // SageMaker gives the container the instance's shared memory; the
        // loader's threads need more than Docker's 64 MiB default.
        shm_size: Some(1 << 30),
        ..Default::default()
    };
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    let body = ContainerCreateBody {
        image: Some(reference.clone()),
        cmd: Some(vec!["train".into()]),
        // As SageMaker sets it; credentials are the container's own (an
        // instance role), never copied in from this machine.
        env: Some(vec![format!(
            "AWS_REGION={}",
            opts.aws.region_or(&plan.resolved.region)
        )]),
        // Files in /opt/ml stay the launching user's.
        user: Some(format!("{uid}:{gid}")),
        labels: Some(
            [
                ("sca.job".to_string(), plan.job_name.clone()),
                ("sca.commit".to_string(), plan.pins.commit.clone()),
            ]
            .into(),
        ),
        host_config: Some(host_config),
        ..Default::default()
    };
    // As the local launcher does: latched before the container exists.
    contract::catch_interrupts();
    let created = docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::new()
                    .name(&plan.job_name)
                    .build(),
            ),
            body,
        )
        .await
        .with_context(|| format!("creating container {}", plan.job_name))?;
    record.container = Some(created.id.clone());
    record.engine_id = info.and_then(|i| i.id).filter(|id| !id.is_empty());
    record.save(root)?;
    contract::eprint_line(format_args!(
        "running {} (docker backend{}) from {reference}",
        plan.job_name,
        if gpu { ", GPU" } else { "" }
    ));
    if let Err(e) = docker.start_container(&created.id, None).await {
        let reason = e.to_string();
        fail_unstarted(&docker, root, &plan.job_name, &created.id, &reason).await?;
        bail!(
            "the engine could not start container {} ({reason}): the job is recorded Failed",
            plan.job_name
        );
    }

    let stop_requested = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let docker = docker.clone();
        let id = created.id.clone();
        let flag = stop_requested.clone();
        let (root, job) = (root.to_path_buf(), plan.job_name.clone());
        let max_runtime = plan.resolved.max_runtime_secs;
        tokio::spawn(async move {
            let timed_out = contract::stop_signal(&root, &job, max_runtime).await;
            // One that has ended already (killed, its log still being read
            // here) was not stopped on request, whatever comes now.
            if let Ok(Some(s)) = state(&docker, &id).await {
                if s.running != Some(true) {
                    return;
                }
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            // In the record too: a `status` that concludes the exited
            // container before this launcher does records Stopped.
            if !timed_out {
                let _ = RunRecord::mark_stopping(&root, &job);
            }
            contract::eprint_line(format_args!(
                "\nstopping: SIGTERM to the container (SIGKILL in {} s)",
                STOP_GRACE.as_secs()
            ));
            let _ = stop(&docker, &id).await;
        })
    };
    // As in the local backend: a closed terminal does not end the launcher.
    let _hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let log = run_dir.join("train.log");
    let short = stream_logs(&docker, &created.id, &log, true).await?;
    let code = wait(&docker, &created.id).await?;
    // Copied again from the exited container, before it is removed; kept
    // if that falls short too.
    let mut keep = None;
    if short.is_some() && code.is_some() {
        if let Err(e) = save_log(&docker, &created.id, &log).await {
            keep = Some(kept_for_its_log(&e, &created.id));
        }
    }
    watcher.abort();
    let requested = stop_requested.load(std::sync::atomic::Ordering::SeqCst);
    let record = conclude(
        &docker,
        root,
        &plan.job_name,
        &created.id,
        (code, requested),
        keep,
    )
    .await?;
    Ok(Some(record))
}

/// Record how the container `id` of `job` ended and clean up after it: its
/// exit code (`code`, or the engine's), whether the kernel's OOM killer
/// ended it, whether a stop was asked for (`stop_requested` here, or
/// `Stopping` in the record), `/opt/ml/model` packed into `model.tar.gz`,
/// the container removed unless `keep` says why not (its log was not
/// copied whole: the container holds the only whole copy), which is then
/// printed. A record that is already final is left as it is.
pub async fn conclude(
    docker: &Docker,
    root: &Path,
    job: &str,
    id: &str,
    (code, stop_requested): (Option<i64>, bool),
    keep: Option<String>,
) -> Result<RunRecord> {
    // Read before the container is removed. Gone already: removed by a
    // `status` that concluded the run first (its record is final), or by
    // hand, when the exit code the trainer left says how it ended.
    let Some(state) = state(docker, id).await? else {
        let ml = record::run_dir(root, job).join("opt/ml");
        let code = code.or_else(|| OptMl::at(&ml).read_exit_code());
        let record = record_end(root, job, code, stop_requested, None)?;
        if record.failure_reason.as_deref() != Some(contract::UNRECORDED) {
            return Ok(record);
        }
        // Said of a trainer whose launcher was gone; here the container
        // was, before anyone read how it ended.
        let (record, ()) = RunRecord::update(root, job, |r| {
            if r.failure_reason.as_deref() == Some(contract::UNRECORDED) {
                r.failure_reason = Some(format!(
                    "container {id} was removed (`docker rm -f`, `docker container prune`?) before its exit code was read, and its trainer left none"
                ));
            }
            Ok(())
        })?;
        return Ok(record);
    };
    let record = record_end(
        root,
        job,
        code.or(state.exit_code),
        stop_requested,
        state.oom_killed,
    )?;
    match keep {
        Some(why) => contract::eprint_line(format_args!("{why}")),
        None => remove(docker, id, job).await,
    }
    Ok(record)
}

/// Record the end of `job`, whose container exited with `code`: its
/// status and metrics from `/opt/ml`, the model packed into
/// `model.tar.gz`. A record that is already final is left as it is.
fn record_end(
    root: &Path,
    job: &str,
    code: Option<i64>,
    stop_requested: bool,
    oom_killed: Option<bool>,
) -> Result<RunRecord> {
    let run_dir = record::run_dir(root, job);
    let ml = run_dir.join("opt/ml");
    let (record, ()) = RunRecord::update(root, job, |record| {
        if record.status.is_terminal() && record.container.is_none() {
            return Ok(());
        }
        let exit = Exit {
            code,
            stop_requested: stop_requested
                || matches!(record.status, Status::Stopping | Status::Stopped),
            oom_killed,
        };
        contract::finish(record, &ml, exit);
        pack_model(&ml.join("model"), &run_dir.join("model.tar.gz"))?;
        record.container = None;
        Ok(())
    })?;
    Ok(record)
}

/// Remove the ended container `id` of `job`; a failure is a warning (the
/// record is already final).
async fn remove(docker: &Docker, id: &str, job: &str) {
    if let Err(e) = docker
        .remove_container(
            id,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await
    {
        contract::eprint_line(format_args!(
            "warning: removing container {id} of {job}: {e} (`docker rm {id}` removes it)"
        ));
    }
}

/// Record as Failed the job whose container `id` the engine would not start
/// (`reason`: an OCI runtime error, an executable missing from the image),
/// and remove the container: left `created`, it would keep the job
/// InProgress for ever.
async fn fail_unstarted(
    docker: &Docker,
    root: &Path,
    job: &str,
    id: &str,
    reason: &str,
) -> Result<RunRecord> {
    let (record, ()) = RunRecord::update(root, job, |r| {
        r.fail_unless_ended(format!("the container never started: {reason}"));
        r.container = None;
        Ok(())
    })?;
    remove(docker, id, job).await;
    Ok(record)
}

/// Record the end of a job whose container has exited (or is gone) and
/// whose launcher did not record it.
async fn refresh(root: &Path, record: &mut RunRecord) -> Result<()> {
    let (false, Some(id)) = (record.status.is_terminal(), record.container.clone()) else {
        return Ok(());
    };
    let engine = image::engine::connect().await?;
    same_engine(&engine, root, record, &id).await?;
    // A launcher at work records the end itself (and a container it has
    // not started yet is about to be).
    let launcher_gone = contract::launcher_gone(&record::run_dir(root, &record.job_name))
        .ok()
        .flatten();
    let launcher_alive = launcher_gone == Some(false);
    match state(&engine, &id).await? {
        None if launcher_alive => {}
        // Removed since (`docker container prune`): the exit code the
        // trainer left in its `/opt/ml`, a directory of the run's here,
        // says how it ended.
        None => {
            let ml = record::run_dir(root, &record.job_name).join("opt/ml");
            match OptMl::at(&ml).read_exit_code() {
                Some(code) => {
                    *record = record_end(root, &record.job_name, Some(code), false, None)?
                }
                None => {
                    (*record, ()) = RunRecord::update(root, &record.job_name, |r| {
                        r.fail_unless_ended(format!(
                            "container {id} is gone, its trainer left no exit code, and its launcher did not record an end"
                        ));
                        Ok(())
                    })?;
                }
            }
        }
        Some(state) if exited(&state) => {
            let log = record::run_dir(root, &record.job_name).join("train.log");
            let keep = save_log(&engine, &id, &log)
                .await
                .err()
                .map(|e| kept_for_its_log(&e, &id));
            *record = conclude(&engine, root, &record.job_name, &id, (None, false), keep).await?;
        }
        // Created, and refused by the runtime when its launcher (since
        // gone) started it.
        Some(ContainerState {
            error: Some(error), ..
        }) if !error.is_empty() => {
            *record = fail_unstarted(&engine, root, &record.job_name, &id, &error).await?;
        }
        // Created and never started: its launcher died between the two
        // (which it does within a second), so nothing ever will start it.
        Some(state)
            if !launcher_alive
                && never_started(&state)
                && started_before(&record.started, NEVER_STARTED_AFTER) =>
        {
            let reason = format!(
                "created {} and never started: its launcher is gone",
                record.started
            );
            *record = fail_unstarted(&engine, root, &record.job_name, &id, &reason).await?;
        }
        // Only where the launcher is seen gone: one at work stops it itself.
        Some(state) if state.running == Some(true) && launcher_gone == Some(true) => {
            enforce_max_runtime(&engine, root, record, &id, &state).await?;
        }
        Some(_) => {}
    }
    Ok(())
}

/// Stop a container that has run past its job's `max_runtime` with its
/// launcher gone (killed; `refresh` saw its lock free), as the launcher would have (see
/// [`contract::overrun`]). Best effort: a signal the engine refuses is a
/// warning, not a failed look.
async fn enforce_max_runtime(
    engine: &Docker,
    root: &Path,
    record: &mut RunRecord,
    id: &str,
    state: &ContainerState,
) -> Result<()> {
    let Some(age) = state
        .started_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
    else {
        return Ok(());
    };
    let Some(step) = contract::overrun(root, record, age)? else {
        return Ok(());
    };
    let signal = match step {
        contract::Overrun::Term => "SIGTERM",
        contract::Overrun::Kill => "SIGKILL",
    };
    let options = bollard::query_parameters::KillContainerOptionsBuilder::new()
        .signal(signal)
        .build();
    match engine.kill_container(id, Some(options)).await {
        Ok(()) => contract::overran(
            root,
            &record.job_name,
            &format!("its container {id}"),
            age,
            record.resolved_job.max_runtime_secs,
            step,
        ),
        // Gone, or no longer running: it ended meanwhile.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => {}
        Err(e) => contract::eprint_line(format_args!(
            "warning: {}: its container {id} is past max_runtime and could not be sent {signal}: {e}",
            record.job_name
        )),
    }
    Ok(())
}

/// How long after its launch a container still merely created is taken
/// for one its launcher will never start.
const NEVER_STARTED_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// Whether a container was created and never started.
fn never_started(state: &ContainerState) -> bool {
    use bollard::models::ContainerStateStatusEnum as S;
    state.status == Some(S::CREATED)
}

/// Whether the RFC 3339 time `started` is more than `ago` in the past (an
/// unreadable time is not).
fn started_before(started: &str, ago: std::time::Duration) -> bool {
    humantime::parse_rfc3339(started)
        .ok()
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .is_some_and(|d| d > ago)
}

/// Whether a container has run and ended (not merely created, nor running).
fn exited(state: &ContainerState) -> bool {
    use bollard::models::ContainerStateStatusEnum as S;
    matches!(state.status, Some(S::EXITED | S::DEAD))
}

/// Stop the job's container (marked `Stopping` first; the mark is undone
/// if the engine refuses).
async fn stop_job(root: &Path, record: &RunRecord) -> Result<()> {
    let id = record
        .container
        .clone()
        .context("the record names no container: it has not started yet")?;
    let engine = image::engine::connect().await?;
    same_engine(&engine, root, record, &id).await?;
    // An exited container (OOM-killed, `docker kill`ed, its launcher gone)
    // is not stopped on request: marking it so would record its end as
    // "stopped on request" (the engine answers a stop of it with success).
    use bollard::models::ContainerStateStatusEnum as State;
    let job = &record.job_name;
    let state = match engine.inspect_container(&id, None).await {
        Ok(c) => c.state,
        Err(e) if image::engine::is_not_found(&e) => None,
        Err(e) => return Err(e).with_context(|| format!("inspecting container {id}")),
    };
    match state {
        Some(s) if s.running == Some(true) => {}
        // Its launcher is about to start it: a stop now would be answered
        // "already stopped" and lost.
        Some(s) if s.status == Some(State::CREATED) => bail!(
            "container {id} of {job} has not started yet: `cargo xtask experiment stop {job}` again in a moment (or Ctrl-C at its launcher)"
        ),
        _ => bail!(
            "container {id} of {job} is not running: `cargo xtask experiment status {job}` records how it ended"
        ),
    }
    RunRecord::mark_stopping(root, &record.job_name)?;
    eprintln!(
        "stopping container {id}: SIGTERM, SIGKILL after {} s",
        STOP_GRACE.as_secs()
    );
    if let Err(e) = stop(&engine, &id).await {
        // Undone only where the engine refused the stop: after a timeout
        // or a dropped connection the SIGTERM may have been sent, and the
        // container's 143 or 137 would be recorded as one without a request.
        if !refused(&e) {
            return Err(e.context(format!(
                "the stop may have reached container {id}: {job} stays marked Stopping; `cargo xtask experiment status {job}` records its end"
            )));
        }
        let previous = record.status;
        RunRecord::update(root, &record.job_name, |r| {
            if r.status == Status::Stopping {
                r.status = previous;
            }
            Ok(())
        })?;
        return Err(e);
    }
    Ok(())
}

/// Whether the engine answered a request with a refusal (a 4xx status),
/// having done nothing, as opposed to an answer that never came.
fn refused(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<bollard::errors::Error>(),
            Some(bollard::errors::Error::DockerResponseServerError { status_code, .. })
                if (400..500).contains(status_code)
        )
    })
}

/// The trainer's files from the run's `model.tar.gz`, unpacked into `dir`.
fn fetch(root: &Path, record: &RunRecord, dir: &Path) -> Result<Unpacked> {
    let tgz = record::run_dir(root, &record.job_name).join("model.tar.gz");
    let file = std::fs::File::open(&tgz)
        .with_context(|| format!("reading {} (has the job ended?)", tgz.display()))?;
    let name = tgz.display().to_string();
    artifacts::into_fresh_dir(dir, &record.job_name, |work| {
        artifacts::unpack(
            std::io::BufReader::new(file),
            &name,
            work,
            artifacts::MAX_UNPACKED_BYTES,
        )
    })
}

/// The mounts of a job's container: `ml` read-write at `/opt/ml`, the
/// dataset's ([`data_mounts`]), and `init` (see [`init_mount`]).
fn mounts(ml: &Path, data: Vec<Mount>, init: Option<Mount>) -> Result<Vec<Mount>> {
    let mut mounts = vec![bind(ml, "/opt/ml", false)?];
    mounts.extend(data);
    mounts.extend(init);
    Ok(mounts)
}

/// Where the trainer finds the dataset's local `roots` (relative to
/// `base_dir`, the experiment file's directory, as the trainer resolves
/// them): each root read-only at that path, and nothing else of the host.
/// The base directory itself was once mounted, which for a file in `$HOME`
/// handed the container `~/.aws`, `~/.ssh` and the rest. A root reached
/// through `..` needs the base directory to exist in the container to
/// resolve: an empty tmpfs stands for it (not over a directory the image
/// needs, nor `/`).
fn data_mounts(base_dir: &Path, roots: &[&str]) -> Result<Vec<Mount>> {
    let mut mounts: Vec<Mount> = Vec::new();
    let mut through_base = false;
    for root in roots.iter().filter(|r| !r.starts_with("s3://")) {
        let joined = base_dir.join(root);
        let source = std::fs::canonicalize(&joined)
            .with_context(|| format!("resolving the dataset root {root}"))?;
        // `.` and `..` taken out as written: the container has none of the
        // host's symlinks on the way.
        let target = image::dockerignore::clean(utf8(&joined)?);
        through_base |= !Path::new(&target).starts_with(base_dir);
        if !mounts.iter().any(|m| m.target.as_deref() == Some(&target)) {
            mounts.push(bind(&source, &target, true)?);
        }
    }
    let base = utf8(base_dir)?.to_string();
    // A root that is the base directory itself makes it exist already.
    if through_base && !mounts.iter().any(|m| m.target.as_deref() == Some(&base)) {
        let stand_in = if may_stand_in(base_dir) {
            Mount {
                typ: Some(MountType::TMPFS),
                target: Some(base),
                tmpfs_options: Some(bollard::models::MountTmpfsOptions {
                    size_bytes: Some(1 << 20),
                    ..Default::default()
                }),
                ..Default::default()
            }
        } else {
            // Not over a directory the image needs: the base directory
            // itself, read-only, as before (an experiment file under
            // /usr or /etc is no one's home).
            bind(base_dir, &base, true)?
        };
        mounts.insert(0, stand_in);
    }
    Ok(mounts)
}

/// Whether an empty tmpfs may stand for `base_dir` in the container: not
/// `/`, not a directory the image's system lives in (or above one), nor
/// SageMaker's `/opt/ml`.
fn may_stand_in(base_dir: &Path) -> bool {
    const SYSTEM: [&str; 10] = [
        "/bin", "/dev", "/etc", "/lib", "/lib64", "/opt/ml", "/proc", "/sbin", "/sys", "/usr",
    ];
    base_dir.parent().is_some()
        && !SYSTEM
            .iter()
            .any(|d| base_dir.starts_with(d) || Path::new(d).starts_with(base_dir))
}

/// A local warm-start checkpoint mounted on its own (not its directory,
/// which may be `$HOME`), read-only under [`INIT_MOUNT`]; the path the
/// trainer reads it at.
fn init_mount(checkpoint: &Path) -> Result<(Mount, String)> {
    let name = checkpoint.file_name().with_context(|| {
        format!(
            "model.init_checkpoint {} names no file",
            checkpoint.display()
        )
    })?;
    let inside = format!("{INIT_MOUNT}/{}", utf8(Path::new(name))?);
    Ok((bind(checkpoint, &inside, true)?, inside))
}

fn bind(source: &Path, target: &str, read_only: bool) -> Result<Mount> {
    Ok(Mount {
        typ: Some(MountType::BIND),
        source: Some(utf8(source)?.to_string()),
        target: Some(target.to_string()),
        read_only: Some(read_only),
        ..Default::default()
    })
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str().with_context(|| {
        format!(
            "{} is not valid UTF-8, which the Docker engine's API needs for a mount: rename it or use --backend local",
            path.display()
        )
    })
}

/// SIGTERM, then SIGKILL after the grace period (what `docker stop -t 120` does).
pub async fn stop(docker: &Docker, container: &str) -> Result<()> {
    // The engine answers once the container has ended: after the whole
    // grace period for a trainer that ignores SIGTERM, which bollard's
    // default request timeout (120 s, the grace period itself) would cut,
    // reporting a stop that worked as failed.
    stopping(docker)
        .stop_container(
            container,
            Some(
                StopContainerOptionsBuilder::new()
                    .t(STOP_GRACE.as_secs() as i32)
                    .build(),
            ),
        )
        .await
        .with_context(|| format!("stopping container {container}"))
}

/// `docker` for a stop request, which may take the grace period and a
/// minute for the SIGKILL and the engine's answer.
fn stopping(docker: &Docker) -> Docker {
    docker
        .clone()
        .with_timeout(STOP_GRACE + std::time::Duration::from_secs(60))
}

/// The container's state, or `None` if the engine has no such container
/// (an engine that cannot answer is an error, not a missing container).
pub async fn state(docker: &Docker, container: &str) -> Result<Option<ContainerState>> {
    match docker.inspect_container(container, None).await {
        Ok(info) => Ok(Some(info.state.unwrap_or_default())),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("inspecting container {container}")),
    }
}

/// Refuse to judge `record`'s container `id` through another engine than
/// the one that runs it (another `DOCKER_HOST` in this shell): there it is
/// unknown, and would be taken for removed, its run recorded Failed while
/// it trains on. Records from before the engine was recorded pass.
async fn same_engine(docker: &Docker, root: &Path, record: &RunRecord, id: &str) -> Result<()> {
    let Some(want) = &record.engine_id else {
        return Ok(());
    };
    let have = docker
        .info()
        .await
        .with_context(|| {
            format!(
                "asking the Docker engine at {} for its ID",
                image::engine::engine_host()
            )
        })?
        .id
        .unwrap_or_default();
    if &have != want {
        bail!(
            "{}'s container {id} runs on the Docker engine {want}, and DOCKER_HOST here ({}) is engine {have}, which does not know it: point DOCKER_HOST at the engine that ran it (as in the shell that launched it; `cargo xtask services up` prints its own) and look again. If that engine is gone for good (its data directory wiped, Docker reinstalled), delete `engine_id` from {} and look again: the run is then judged through this engine",
            record.job_name,
            image::engine::engine_host(),
            record::record_path(root, &record.job_name).display()
        );
    }
    Ok(())
}

/// Replace `log` with the whole output of the exited container `id` (what a
/// launcher that died while following it left unfinished); or, where the
/// engine's stream broke off or the copy could not be written, leave `log`
/// as it is and say so: the container, which a conclusion removes, holds
/// the only whole copy.
pub async fn save_log(docker: &Docker, id: &str, log: &Path) -> Result<()> {
    // Renamed into place: a launcher still appending to the old file (it
    // is about to record the end itself) cannot interleave with this one,
    // nor can another `status` saving it too (each has its own file).
    let dir = log.parent().context("a log has a directory")?;
    let partial = tempfile::Builder::new()
        .prefix(".train.log.")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    if let Some(why) = stream_logs(docker, id, partial.path(), false).await? {
        bail!("the log of container {id} was not copied whole ({why})");
    }
    // (A temporary file is private: the log keeps the mode it has, else
    // takes a created file's usual one.)
    let mode = std::fs::metadata(log)
        .map(|m| m.permissions())
        .unwrap_or_else(|_| std::os::unix::fs::PermissionsExt::from_mode(0o644));
    std::fs::set_permissions(partial.path(), mode)
        .with_context(|| format!("setting the mode of {}", partial.path().display()))?;
    partial
        .persist(log)
        .with_context(|| format!("moving the log to {}", log.display()))?;
    Ok(())
}

/// The warning for a container kept because its log was not copied whole.
fn kept_for_its_log(e: &anyhow::Error, id: &str) -> String {
    format!(
        "warning: {e:#}: the run's end is recorded, and its container {id} is kept with the whole log (`docker logs {id}`; `docker rm {id}` once read)"
    )
}

/// Keep the container's output in `log`; `live`: as it comes, and printed
/// too. Neither a closed stdout nor a failing log stops the reading: the
/// launcher must still wait for the container and record its end. What
/// kept `log` from the whole output (a broken stream, a failed write), if
/// anything.
async fn stream_logs(docker: &Docker, id: &str, log: &Path, live: bool) -> Result<Option<String>> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut file = Sink::new(file, format!("writing {}", log.display()));
    let mut out = live.then(|| Sink::new(std::io::stdout(), "writing to stdout".into()));
    let mut logs = docker.logs(
        id,
        Some(
            LogsOptionsBuilder::new()
                .follow(live)
                .stdout(true)
                .stderr(true)
                .build(),
        ),
    );
    let mut short = None;
    while let Some(chunk) = logs.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                contract::eprint_line(format_args!(
                    "warning: the container's log stream ended: {e}"
                ));
                short.get_or_insert(format!("the engine's log stream ended: {e}"));
                break;
            }
        };
        let bytes = chunk.into_bytes();
        let echoed = out.as_mut().and_then(|out| out.put(&bytes));
        if let Some(why) = file.put(&bytes) {
            contract::eprint_line(format_args!("warning: {why}: the job goes on"));
            short.get_or_insert(why);
        }
        if let Some(why) = echoed {
            contract::eprint_line(format_args!("warning: {why}: the job goes on"));
        }
    }
    Ok(short)
}

/// The container's exit code.
async fn wait(docker: &Docker, id: &str) -> Result<Option<i64>> {
    let mut waits = docker.wait_container(
        id,
        Some(
            WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build(),
        ),
    );
    match waits.next().await {
        Some(Ok(r)) => Ok(Some(r.status_code)),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(Some(code)),
        // Removed: by a `status` that concluded the run first.
        Some(Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        })) => Ok(None),
        Some(Err(e)) => Err(e).context("waiting for the container"),
        None => bail!("the engine ended the wait without an exit code"),
    }
}

/// `model.tar.gz` of the directory's contents, as SageMaker packs `/opt/ml/model`.
pub fn pack_model(model: &Path, out: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut bytes, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.follow_symlinks(false);
        if model.is_dir() {
            tar.append_dir_all(".", model)
                .with_context(|| format!("packing {}", model.display()))?;
        }
        tar.into_inner()?.finish()?;
    }
    crate::fsx::write_atomic(out, &bytes).with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only an engine's refusal undoes a stop's mark: an answer that never
    /// came (a timeout, a dropped socket) may follow a SIGTERM sent.
    #[test]
    fn only_a_refused_stop_is_undone() {
        let answered = |status_code| {
            anyhow::Error::new(bollard::errors::Error::DockerResponseServerError {
                status_code,
                message: "no".into(),
            })
            .context("stopping container c")
        };
        assert!(refused(&answered(404)));
        assert!(refused(&answered(409)));
        assert!(!refused(&answered(500)));
        let timed_out = anyhow::Error::new(bollard::errors::Error::RequestTimeoutError)
            .context("stopping container c");
        assert!(!refused(&timed_out));
    }

    /// bollard's default request timeout equals the grace period: a stop of
    /// a trainer that ignores SIGTERM timed out just as it succeeded.
    #[test]
    fn a_stop_request_outlasts_the_grace_period() {
        let docker = Docker::connect_with_http_defaults().unwrap();
        assert!(
            docker.timeout() <= STOP_GRACE,
            "the premise: bollard's default"
        );
        assert!(stopping(&docker).timeout() >= STOP_GRACE + std::time::Duration::from_secs(30));
    }

    fn summary(m: &Mount) -> (&str, &str, bool) {
        assert_eq!(m.typ, Some(MountType::BIND));
        (
            m.source.as_deref().unwrap(),
            m.target.as_deref().unwrap(),
            m.read_only.unwrap(),
        )
    }

    /// Only the dataset's roots are the host's in the container: never the
    /// experiment file's directory (`$HOME`, with `~/.aws` and `~/.ssh`).
    #[test]
    fn the_dataset_roots_are_mounted_not_the_experiments_directory() {
        let home = tempfile::tempdir().unwrap();
        let home = home.path().canonicalize().unwrap();
        for dir in ["data", ".aws", "elsewhere/masks"] {
            std::fs::create_dir_all(home.join(dir)).unwrap();
        }
        std::os::unix::fs::symlink(home.join("elsewhere/masks"), home.join("masks")).unwrap();
        let s = |p: &Path| p.display().to_string();
        let shown = |ms: &[Mount]| -> Vec<(Option<String>, String, Option<bool>)> {
            ms.iter()
                .map(|m| (m.source.clone(), m.target.clone().unwrap(), m.read_only))
                .collect()
        };
        // Roots inside the base directory, one a symlink: each at the path
        // the trainer reads, from where it really is.
        let m = data_mounts(&home, &["data", "./masks", "s3://b/x"]).unwrap();
        assert_eq!(
            shown(&m),
            [
                (
                    Some(s(&home.join("data"))),
                    s(&home.join("data")),
                    Some(true)
                ),
                (
                    Some(s(&home.join("elsewhere/masks"))),
                    s(&home.join("masks")),
                    Some(true)
                ),
            ]
        );
        // One root for both: one mount. S3 only: none.
        assert_eq!(data_mounts(&home, &["data", "data/"]).unwrap().len(), 1);
        assert!(data_mounts(&home, &["s3://b/x", "s3://b/y"])
            .unwrap()
            .is_empty());
        // Through `..`: an empty tmpfs stands for the base directory.
        let base = home.join("data");
        let m = data_mounts(&base, &["../elsewhere/masks"]).unwrap();
        assert_eq!(m[0].typ, Some(MountType::TMPFS));
        assert_eq!(m[0].target.as_deref(), Some(s(&base).as_str()));
        assert_eq!(m[0].source, None);
        assert_eq!(
            shown(&m[1..]),
            [(
                Some(s(&home.join("elsewhere/masks"))),
                s(&home.join("elsewhere/masks")),
                Some(true)
            )]
        );
        for m in m
            .iter()
            .chain(&data_mounts(&home, &["data", "masks"]).unwrap())
        {
            assert_ne!(m.source.as_deref(), Some(s(&home).as_str()), "{m:?}");
        }
        let e = data_mounts(&home, &["missing"]).unwrap_err().to_string();
        assert!(e.contains("resolving the dataset root missing"), "{e}");
        // The base directory as a root and a root through `..`: one mount
        // at the base directory, the root's.
        let m = data_mounts(&base, &[".", "../elsewhere/masks"]).unwrap();
        let at_base: Vec<_> = m
            .iter()
            .filter(|m| m.target.as_deref() == Some(s(&base).as_str()))
            .collect();
        assert_eq!(at_base.len(), 1, "{m:?}");
        assert_eq!(at_base[0].typ, Some(MountType::BIND));
    }

    /// A checkout under /opt or /var (a CI runner's) gets the tmpfs; the
    /// image's own system directories, and what holds them, do not.
    #[test]
    fn a_tmpfs_stands_in_only_where_the_image_needs_nothing() {
        for ok in [
            "/opt/repo/experiments",
            "/var/lib/jenkins/w",
            "/home/me",
            "/tmp/x",
        ] {
            assert!(may_stand_in(Path::new(ok)), "{ok}");
        }
        for no in [
            "/",
            "/usr/local/x",
            "/etc/exp",
            "/opt",
            "/opt/ml/input",
            "/lib",
        ] {
            assert!(!may_stand_in(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn mounts_are_typed_and_a_colon_in_a_path_is_just_a_character() {
        // `src:dst:ro` strings split this path into three fields.
        let ml = Path::new("/runs/exp-2026-01-01T10:00:00/opt/ml");
        let data = bind(Path::new("/data/tiles:2024"), "/data/tiles:2024", true).unwrap();
        let (init, inside) = init_mount(Path::new("/home/me/model:v2.safetensors")).unwrap();
        let mounts = mounts(ml, vec![data], Some(init)).unwrap();
        let got: Vec<_> = mounts.iter().map(summary).collect();
        assert_eq!(
            got,
            [
                ("/runs/exp-2026-01-01T10:00:00/opt/ml", "/opt/ml", false),
                ("/data/tiles:2024", "/data/tiles:2024", true),
                (
                    "/home/me/model:v2.safetensors",
                    "/opt/ml/input/data/init/model:v2.safetensors",
                    true
                ),
            ]
        );
        assert_eq!(inside, "/opt/ml/input/data/init/model:v2.safetensors");
    }

    #[test]
    fn a_warm_start_mounts_its_file_not_its_directory() {
        // A checkpoint in $HOME once mounted all of $HOME.
        let (mount, _) = init_mount(Path::new("/home/me/model.safetensors")).unwrap();
        assert_eq!(
            summary(&mount),
            (
                "/home/me/model.safetensors",
                "/opt/ml/input/data/init/model.safetensors",
                true
            )
        );
        let e = init_mount(Path::new("/")).unwrap_err().to_string();
        assert!(e.contains("names no file"), "{e}");
        use std::os::unix::ffi::OsStrExt;
        let bad = Path::new(std::ffi::OsStr::from_bytes(b"/data/\xff"));
        let e = bind(bad, "/data", true).unwrap_err().to_string();
        assert!(e.contains("not valid UTF-8"), "{e}");
    }
}
