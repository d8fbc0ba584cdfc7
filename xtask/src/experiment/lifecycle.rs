//! A job's lifecycle after launch, for every backend: `status`, `logs`,
//! `stop`, `list`, `fetch` and `rerun`. Local and docker jobs are read from
//! their run records and the engine; SageMaker jobs from the API, and their
//! records are refreshed as a side effect.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::experiment::launch::{self, LaunchOptions, Plan};
use crate::experiment::record::{self, Backend, RunRecord, Status};
use crate::experiment::{artifacts, docker, local, sagemaker};
use crate::{flags, image, workspace};

impl flags::Status {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let mut record = RunRecord::load(&root, &self.job)?;
        refresh(&root, &mut record, &self.aws).await?;
        if self.output == flags::Output::Json {
            println!("{}", serde_json::to_string(&record)?);
        } else {
            print_status(&record);
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn print_status(r: &RunRecord) {
    println!("job         {}", r.job_name);
    println!("backend     {}", r.backend);
    println!(
        "status      {}{}",
        r.status,
        r.secondary_status
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    );
    println!(
        "experiment  {} (sha256 {})",
        r.experiment, r.experiment_sha256
    );
    println!(
        "commit      {}{}",
        r.commit,
        if r.dirty { " (dirty)" } else { "" }
    );
    if let Some(i) = &r.image {
        println!("image       {i}");
    }
    if let Some(m) = &r.data_manifest_sha256 {
        println!(
            "data        {} objects, manifest sha256 {m}",
            r.data_objects
        );
    }
    println!("started     {}", r.started);
    if let Some(f) = &r.finished {
        println!("finished    {f}");
    }
    if let Some(f) = &r.failure_reason {
        println!("reason      {f}");
    }
    if let Some(iou) = r
        .final_metrics
        .get("iou")
        .or_else(|| r.final_metrics.get("val:iou"))
    {
        println!("val IoU     {iou}");
    }
    println!("artifacts   {}", r.artifacts);
}

/// Bring `record` up to date with the job itself. A local or docker job
/// is recorded by its launcher when it ends; one whose launcher is gone
/// (killed, its terminal closed) is recorded here once its trainer is.
async fn refresh(root: &Path, record: &mut RunRecord, aws: &flags::AwsArgs) -> Result<()> {
    match record.backend {
        Backend::Local => {
            if let (false, Some(pid)) = (record.status.is_terminal(), record.pid) {
                if local::trainer(pid, record.pid_start)? != local::Trainer::Running {
                    let ml = record::run_dir(root, &record.job_name).join("opt/ml");
                    (*record, ()) = RunRecord::update(root, &record.job_name, |r| {
                        // Unless its launcher recorded the end meanwhile.
                        if !r.status.is_terminal() && r.pid == Some(pid) {
                            let exit = launch::Exit {
                                code: None,
                                stop_requested: r.status == Status::Stopping,
                                oom_killed: None,
                            };
                            launch::finish(r, &ml, exit);
                        }
                        Ok(())
                    })?;
                }
            }
        }
        Backend::Docker => {
            if let (false, Some(id)) = (record.status.is_terminal(), record.container.clone()) {
                let engine = image::engine::connect().await?;
                match docker::state(&engine, &id).await? {
                    None => {
                        (*record, ()) = RunRecord::update(root, &record.job_name, |r| {
                            if !r.status.is_terminal() {
                                r.status = Status::Failed;
                                r.failure_reason = Some(format!(
                                    "container {id} is gone and its launcher did not record an end"
                                ));
                                r.finished = Some(record::now());
                            }
                            Ok(())
                        })?;
                    }
                    Some(state) if exited(&state) => {
                        let log = record::run_dir(root, &record.job_name).join("train.log");
                        docker::save_log(&engine, &id, &log).await?;
                        *record =
                            docker::conclude(&engine, root, &record.job_name, &id, None, false)
                                .await?;
                    }
                    Some(_) => {}
                }
            }
        }
        Backend::Sagemaker => {
            let clients = clients(record, aws).await?;
            sagemaker::refresh(&clients, record, &mut 0).await?;
            sagemaker::save_everywhere(root, &clients, record).await?;
        }
    }
    Ok(())
}

/// Whether a container has run and ended (not merely created, nor running).
fn exited(state: &bollard::models::ContainerState) -> bool {
    use bollard::models::ContainerStateStatusEnum as S;
    matches!(state.status, Some(S::EXITED | S::DEAD))
}

async fn clients(record: &RunRecord, aws: &flags::AwsArgs) -> Result<sagemaker::Clients> {
    sagemaker::Clients::new(&aws.session(), Some(&record.resolved_job.region)).await
}

impl flags::Logs {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let record = RunRecord::load(&root, &self.job)?;
        match record.backend {
            Backend::Local | Backend::Docker => {
                let path = record::run_dir(&root, &record.job_name).join("train.log");
                let mut offset = 0u64;
                loop {
                    offset += print_from(&path, offset)?;
                    let current = RunRecord::load(&root, &record.job_name)?;
                    if !self.follow || current.status.is_terminal() {
                        // One last read: lines written just before the end.
                        print_from(&path, offset)?;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            Backend::Sagemaker => {
                let clients = clients(&record, &self.aws).await?;
                let mut cursor = sagemaker::LogCursor::default();
                let mut record = record;
                loop {
                    for line in cursor.next(&clients.logs, &record.job_name).await {
                        println!("{line}");
                    }
                    if !self.follow {
                        break;
                    }
                    sagemaker::refresh(&clients, &mut record, &mut 0).await?;
                    if record.status.is_terminal() {
                        for line in cursor.next(&clients.logs, &record.job_name).await {
                            println!("{line}");
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Print `path` from byte `offset`; how many bytes were printed.
fn print_from(path: &Path, offset: u64) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    std::io::stdout().write_all(&buf)?;
    std::io::stdout().flush()?;
    Ok(buf.len() as u64)
}

impl flags::Stop {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let mut record = RunRecord::load(&root, &self.job)?;
        if record.status.is_terminal() {
            eprintln!("{} has already ended: {}", record.job_name, record.status);
            return Ok(ExitCode::SUCCESS);
        }
        // Marked first, so the launcher records `Stopped`, not `Failed`.
        let previous = record.status;
        record.status = Status::Stopping;
        match record.backend {
            Backend::Local => {
                let pid = record
                    .pid
                    .context("the record names no trainer process: it has not started yet")?;
                let job = &record.job_name;
                match local::trainer(pid, record.pid_start)? {
                    local::Trainer::Running => {}
                    local::Trainer::Gone => bail!(
                        "the trainer (pid {pid}) of {job} is not running: `cargo xtask experiment status {job}` records how it ended"
                    ),
                    local::Trainer::Other(why) => bail!(
                        "refusing to signal pid {pid}: {why}, so the trainer of {job} has ended and its pid was reused; `cargo xtask experiment status {job}` records the end"
                    ),
                }
                mark_stopping(&root, job)?;
                use nix::sys::signal::{kill, Signal};
                kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM)
                    .with_context(|| format!("signalling pid {pid}"))?;
                eprintln!(
                    "sent SIGTERM to {} (pid {pid}); its launcher sends SIGKILL if it is still running in {} s",
                    record.job_name,
                    local::STOP_GRACE.as_secs()
                );
                // The same 120 s as under SageMaker; we wait only while it runs.
                local::kill_after_grace(pid, record.pid_start);
            }
            Backend::Docker => {
                let id = record
                    .container
                    .clone()
                    .context("the record names no container: it has not started yet")?;
                mark_stopping(&root, &record.job_name)?;
                let engine = image::engine::connect().await?;
                eprintln!(
                    "stopping container {id}: SIGTERM, SIGKILL after {} s",
                    local::STOP_GRACE.as_secs()
                );
                if let Err(e) = docker::stop(&engine, &id).await {
                    RunRecord::update(&root, &record.job_name, |r| {
                        if r.status == Status::Stopping {
                            r.status = previous;
                        }
                        Ok(())
                    })?;
                    return Err(e);
                }
            }
            Backend::Sagemaker => {
                let clients = clients(&record, &self.aws).await?;
                sagemaker::stop_request(&clients.sagemaker, &record.job_name)
                    .send()
                    .await
                    .map_err(|e| {
                        sagemaker::sdk_error(e, &format!("stopping {}", record.job_name))
                    })?;
                sagemaker::save_everywhere(&root, &clients, &record).await?;
                eprintln!("asked SageMaker to stop {}", record.job_name);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Mark `job` `Stopping` in its record, unless it has ended meanwhile.
fn mark_stopping(root: &Path, job: &str) -> Result<()> {
    RunRecord::update(root, job, |r| {
        if !r.status.is_terminal() {
            r.status = Status::Stopping;
        }
        Ok(())
    })?;
    Ok(())
}

impl flags::List {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let mut all = RunRecord::all(&root);
        if self.remote {
            let defaults = workspace::defaults()?;
            let bucket = self
                .bucket
                .clone()
                .or(defaults.config_bucket)
                .context("--remote needs a config bucket: pass --bucket or set config_bucket in [workspace.metadata.sca]")?;
            let clients =
                sagemaker::Clients::new(&self.aws.session(), defaults.region.as_deref()).await?;
            // A remote record replaces the local one of the same job: it is
            // the one `status` keeps up to date wherever it runs.
            for remote in sagemaker::remote_records(&clients, &bucket).await? {
                all.retain(|r| r.job_name != remote.job_name);
                all.push(remote);
            }
            all.sort_by(|a, b| (&a.started, &a.job_name).cmp(&(&b.started, &b.job_name)));
        }
        let records: Vec<RunRecord> = all
            .into_iter()
            .filter(|r| self.experiment.as_ref().is_none_or(|e| &r.experiment == e))
            .filter(|r| {
                self.commit
                    .as_ref()
                    .is_none_or(|c| r.commit.starts_with(c.as_str()))
            })
            .collect();
        if self.output == flags::Output::Json {
            println!("{}", serde_json::to_string(&records)?);
            return Ok(ExitCode::SUCCESS);
        }
        if records.is_empty() {
            eprintln!("no runs in {}", record::runs_dir(&root).display());
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:<63}  {:<9}  {:<10}  {:<7}  {:<20}  val IoU",
            "JOB", "BACKEND", "STATUS", "COMMIT", "STARTED"
        );
        for r in &records {
            let iou = r
                .final_metrics
                .get("iou")
                .or_else(|| r.final_metrics.get("val:iou"))
                .and_then(|v| v.as_f64())
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<63}  {:<9}  {:<10}  {:<7}  {:<20}  {iou}",
                r.job_name,
                r.backend.to_string(),
                r.status.to_string(),
                &r.commit[..r.commit.len().min(7)],
                r.started
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl flags::Fetch {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let record = RunRecord::load(&root, &self.job)?;
        let dir = self
            .to
            .clone()
            .unwrap_or_else(|| record::run_dir(&root, &record.job_name).join("fetched"));
        let unpacked = match record.backend {
            Backend::Local => {
                let model = launch::model_dir(&root, &record);
                let entries = std::fs::read_dir(&model)
                    .with_context(|| format!("reading {} (has the job run?)", model.display()))?;
                artifacts::into_fresh_dir(&dir, &record.job_name, |work| {
                    let mut out = artifacts::Unpacked::default();
                    for entry in entries {
                        let entry = entry?;
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if entry.file_type()?.is_file() && artifacts::is_artifact(&name) {
                            std::fs::copy(entry.path(), work.join(&name))
                                .with_context(|| format!("copying {}", entry.path().display()))?;
                            out.files.push(name);
                        } else {
                            out.skipped.push(name);
                        }
                    }
                    out.files.sort();
                    Ok(out)
                })?
            }
            Backend::Docker => {
                let tgz = record::run_dir(&root, &record.job_name).join("model.tar.gz");
                let file = std::fs::File::open(&tgz)
                    .with_context(|| format!("reading {} (has the job ended?)", tgz.display()))?;
                let name = tgz.display().to_string();
                artifacts::into_fresh_dir(&dir, &record.job_name, |work| {
                    artifacts::unpack(
                        std::io::BufReader::new(file),
                        &name,
                        work,
                        artifacts::MAX_UNPACKED_BYTES,
                    )
                })?
            }
            Backend::Sagemaker => {
                let clients = clients(&record, &self.aws).await?;
                sagemaker::fetch(&clients, &record.artifacts, &dir).await?
            }
        };
        for s in &unpacked.skipped {
            eprintln!(
                "warning: skipped `{s}` of {}: not a file the trainer writes at the model's root",
                record.job_name
            );
        }
        for f in &unpacked.files {
            println!("{}", dir.join(f).display());
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl flags::Rerun {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let old = RunRecord::load(&root, &self.job)?;
        let opts = LaunchOptions {
            backend: old.backend,
            wait: self.wait,
            dry_run: self.dry_run,
            json: self.output == flags::Output::Json,
            registry: None,
            aws: self.aws.session(),
        };
        let plan = Plan::again(&root, &old, &opts.aws).await?;
        eprintln!(
            "rerunning {}: commit {}, experiment sha256 {}, {}data manifest {}",
            old.job_name,
            &old.commit[..old.commit.len().min(12)],
            &old.experiment_sha256[..12],
            old.image
                .as_deref()
                .map(|i| format!("image {i}, "))
                .unwrap_or_default(),
            &plan.manifest.sha256()[..12]
        );
        let (_, code) = launch::execute(&root, plan, &opts).await?;
        Ok(code)
    }
}
