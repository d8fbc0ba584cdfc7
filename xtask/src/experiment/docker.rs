//! The `docker` backend: the pinned image under the Docker engine (bollard),
//! run the way SageMaker runs it: `/opt/ml` (config channel,
//! `hyperparameters.json`, `resourceconfig.json`, `inputdataconfig.json`)
//! bind-mounted from the run's directory, `train` as the command, a GPU
//! requested when the engine has the NVIDIA runtime, logs streamed, Ctrl-C or
//! `experiment stop` → SIGTERM then SIGKILL after 120 s, and `/opt/ml/model`
//! packed into `model.tar.gz` afterwards.
//!
//! Local dataset roots and a local warm-start checkpoint are mounted
//! read-only at their host paths, so the experiment's relative paths resolve
//! inside the container exactly as on the host.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use crate::experiment::launch::{self, LaunchOptions, Plan};
use crate::experiment::local::STOP_GRACE;
use crate::experiment::record::{self, RunRecord, Status};
use crate::image;

/// Where a local warm-start checkpoint's directory is mounted.
const INIT_MOUNT: &str = "/opt/ml/input/data/init";

pub async fn run(root: &Path, plan: &Plan, opts: &LaunchOptions) -> Result<Option<RunRecord>> {
    let (reference, _) = plan
        .image
        .clone()
        .context("the docker backend runs a pinned image")?;
    let run_dir = record::run_dir(root, &plan.job_name);
    let ml = run_dir.join("opt/ml");
    let mut hyper = launch::host_hyperparameters(plan);
    // Read-only at their host paths: the dataset roots and the base
    // directory itself (so that `..` in relative roots resolves); a root
    // inside the base directory is covered by the base directory's mount.
    let mut host_dirs = vec![plan.base_dir.clone()];
    for root_uri in [
        &plan.experiment.dataset.imagery,
        &plan.experiment.dataset.masks,
    ] {
        if !root_uri.starts_with("s3://") {
            let host = std::fs::canonicalize(plan.base_dir.join(root_uri))
                .with_context(|| format!("resolving the dataset root {root_uri}"))?;
            if !host.starts_with(&plan.base_dir) && !host_dirs.contains(&host) {
                host_dirs.push(host);
            }
        }
    }
    let mut binds = vec![format!("{}:/opt/ml", ml.display())];
    binds.extend(
        host_dirs
            .iter()
            .map(|d| format!("{}:{}:ro", d.display(), d.display())),
    );
    if let Some(init) = &plan.init_checkpoint {
        if !init.starts_with("s3://") {
            let path = PathBuf::from(init);
            let dir = path.parent().context("a checkpoint path has a directory")?;
            let name = path.file_name().context("a checkpoint path names a file")?;
            binds.push(format!("{}:{INIT_MOUNT}:ro", dir.display()));
            hyper.insert(
                "init_checkpoint".into(),
                format!("{INIT_MOUNT}/{}", name.to_string_lossy()).into(),
            );
        } else {
            hyper.insert("init_checkpoint".into(), init.clone().into());
        }
    }
    let mut record = plan.record(
        hyper.clone(),
        ml.join("input/data/config").display().to_string(),
        run_dir.join("model.tar.gz").display().to_string(),
    );
    // The run's own, new directory (see `launch::write_opt_ml`).
    record.checkpoint_uri = Some(ml.join("checkpoints").display().to_string());
    if opts.dry_run {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "record": record,
                "image": reference,
                "binds": binds,
                "command": ["train"],
            }))?
        );
        return Ok(None);
    }
    let docker = image::engine::connect().await?;
    if let Err(e) = docker.inspect_image(&reference).await {
        bail!(
            "image {reference} is not in the Docker engine ({e}): build it at commit {} (`git checkout {} && cargo xtask image build`) or launch with --registry",
            plan.commit,
            plan.commit
        );
    }
    launch::write_opt_ml(&ml, plan, &hyper)?;
    plan.write_config_channel(&record.config_dir(root))?;

    let gpu = has_nvidia_runtime(&docker).await;
    let host_config = HostConfig {
        binds: Some(binds),
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
                ("sca.commit".to_string(), plan.commit.clone()),
            ]
            .into(),
        ),
        host_config: Some(host_config),
        ..Default::default()
    };
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
    record.save(root)?;
    eprintln!(
        "running {} (docker backend{}) from {reference}",
        plan.job_name,
        if gpu { ", GPU" } else { "" }
    );
    docker
        .start_container(&created.id, None)
        .await
        .with_context(|| format!("starting container {}", plan.job_name))?;

    let stop_requested = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let docker = docker.clone();
        let id = created.id.clone();
        let flag = stop_requested.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\nstopping: SIGTERM to the container (SIGKILL in {} s)",
                    STOP_GRACE.as_secs()
                );
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = stop(&docker, &id).await;
            }
        })
    };
    stream_logs(&docker, &created.id, &run_dir.join("train.log")).await?;
    let code = wait(&docker, &created.id).await?;
    watcher.abort();
    let requested = stop_requested.load(std::sync::atomic::Ordering::SeqCst)
        || RunRecord::load(root, &plan.job_name)
            .map(|r| r.status == Status::Stopping)
            .unwrap_or(false);
    // Read before the container is removed: whether the kernel killed it.
    let oom_killed = docker
        .inspect_container(&created.id, None)
        .await
        .ok()
        .and_then(|c| c.state)
        .and_then(|s| s.oom_killed);
    let exit = launch::Exit {
        code: Some(code),
        stop_requested: requested,
        oom_killed,
    };
    launch::finish(&mut record, &ml, exit);
    pack_model(&ml.join("model"), &run_dir.join("model.tar.gz"))?;
    let _ = docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await;
    record.container = None;
    record.save(root)?;
    Ok(Some(record))
}

/// SIGTERM, then SIGKILL after the grace period (what `docker stop -t 120` does).
pub async fn stop(docker: &Docker, container: &str) -> Result<()> {
    docker
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

/// The container's state (`running`, `exited`, ...), if it exists.
pub async fn state(docker: &Docker, container: &str) -> Option<String> {
    let info = docker.inspect_container(container, None).await.ok()?;
    info.state.and_then(|s| s.status).map(|s| s.to_string())
}

async fn has_nvidia_runtime(docker: &Docker) -> bool {
    docker
        .info()
        .await
        .ok()
        .and_then(|i| i.runtimes)
        .is_some_and(|r| r.contains_key("nvidia"))
}

/// Print the container's output as it comes and keep it in `log`.
async fn stream_logs(docker: &Docker, id: &str, log: &Path) -> Result<()> {
    use std::io::Write;
    let mut file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut logs = docker.logs(
        id,
        Some(
            LogsOptionsBuilder::new()
                .follow(true)
                .stdout(true)
                .stderr(true)
                .build(),
        ),
    );
    while let Some(chunk) = logs.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                eprintln!("warning: the container's log stream ended: {e}");
                break;
            }
        };
        let bytes = chunk.into_bytes();
        std::io::stdout().write_all(&bytes)?;
        file.write_all(&bytes)?;
    }
    Ok(())
}

/// The container's exit code.
async fn wait(docker: &Docker, id: &str) -> Result<i64> {
    let mut waits = docker.wait_container(
        id,
        Some(
            WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build(),
        ),
    );
    match waits.next().await {
        Some(Ok(r)) => Ok(r.status_code),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
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
