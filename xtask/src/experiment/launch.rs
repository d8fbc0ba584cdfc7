//! Launching a pinned job on a backend: the [`Plan`] (what exactly runs:
//! experiment bytes, commit, image digest, data manifest), made fresh from an
//! experiment file or again from a run record (`rerun`), and its execution.
//!
//! Every backend gets the same `config` channel (the experiment file and
//! `manifest.json`) and the same job pins as hyperparameters (job name,
//! commit, image digest, data manifest: the trainer resumes only checkpoints
//! of its own job), and leaves the same [`RunRecord`]; `local` and `docker`
//! lay the `/opt/ml` tree out in the run's new directory the way SageMaker
//! does, with an empty `checkpoints/`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::experiment::record::{self, Backend, RunRecord, Status};
use crate::experiment::{docker, local, pin, sagemaker};
use crate::{flags, fsx, image};
use sca_spec::contract::{self, Hyperparameters, OptMl, ResourceConfig};

/// What a launch runs: everything pinned.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The name as of planning, which a dry run prints; [`execute`] claims
    /// the final one with the run directory (a later second if it is taken).
    pub job_name: String,
    pub backend: Backend,
    pub experiment: sca_spec::Experiment,
    /// Name of the experiment file in the `config` channel.
    pub file_name: String,
    /// The file as given on the command line (for people).
    pub experiment_file: String,
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub resolved: sca_spec::ResolvedJob,
    pub base_dir: PathBuf,
    pub commit: String,
    pub dirty: bool,
    pub diff_sha256: Option<String>,
    pub manifest: sca_spec::DataManifest,
    /// (reference by digest, digest) for docker and sagemaker.
    pub image: Option<(String, String)>,
    /// The concrete warm-start checkpoint (host path or URI).
    pub init_checkpoint: Option<String>,
    pub rerun_of: Option<String>,
    /// `SCA_DEVICE` for the local trainer (the environment's at a fresh
    /// launch, the record's at a rerun); other backends never pass it.
    pub device_override: Option<String>,
    /// Whether the working tree holds exactly the pinned code (a fresh
    /// launch, or a rerun at the same commit with the same diff, if any);
    /// otherwise the local backend builds the commit in a git worktree.
    pub code_in_tree: bool,
    /// Whether the trainer at the pinned commit takes the job's pins as
    /// hyperparameters (a fresh launch; a rerun of a job launched with
    /// them). A rerun of a job launched before they existed runs a trainer
    /// that refuses hyperparameters it does not know, so it gets the old
    /// set; its checkpoints are still its own (a new run directory, or its
    /// job's own S3 prefix).
    pub trainer_takes_pins: bool,
}

/// How to launch: the `run` and `rerun` flags that matter past pinning.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub backend: Backend,
    pub wait: bool,
    pub dry_run: bool,
    pub json: bool,
    pub registry: Option<String>,
    /// `--profile`/`--region`, and the AWS configuration every step shares.
    pub aws: crate::aws::Session,
}

impl Plan {
    /// A new job from an experiment file.
    pub async fn fresh(
        root: &Path,
        file: &Path,
        allow_dirty: bool,
        opts: &LaunchOptions,
        build: &flags::ImageBuildArgs,
        image_ref: Option<&str>,
    ) -> Result<Self> {
        let pinned = pin::pin(root, file, allow_dirty)?;
        if opts.backend == Backend::Sagemaker {
            for (key, uri) in [
                ("dataset.imagery", &pinned.experiment.dataset.imagery),
                ("dataset.masks", &pinned.experiment.dataset.masks),
            ] {
                if !uri.starts_with("s3://") {
                    bail!(
                        "{}: {key} = \"{uri}\" is a local path, but a SageMaker job reads its data from S3: upload the tiles and set {key} to their s3:// prefix (or use --backend local/docker)",
                        file.display()
                    );
                }
            }
        }
        let device_override = match opts.backend {
            Backend::Local => sca_spec::contract::device_env_override(),
            _ => None,
        };
        local_trainer_runs(
            opts.backend,
            &pinned.experiment,
            &file.display().to_string(),
            device_override.as_deref(),
        )?;
        let on_s3 = [
            &pinned.experiment.dataset.imagery,
            &pinned.experiment.dataset.masks,
        ]
        .iter()
        .any(|u| u.starts_with("s3://"));
        if on_s3 || opts.backend == Backend::Sagemaker {
            // Before listing S3: one clear line when there are no credentials.
            opts.aws.config(Some(&pinned.resolved.region)).await?;
        }
        let init_checkpoint = resolve_init(root, &pinned, opts).await?;
        let access = opts.aws.s3_access(&pinned.resolved.region);
        let mut manifest =
            pin::manifest(&pinned.experiment.dataset, &pinned.base_dir, access.clone()).await?;
        if let Some(init) = &init_checkpoint {
            manifest.init_checkpoint = Some(pin::pin_init(init, access).await?);
        }
        let image = match (opts.backend, image_ref) {
            (Backend::Local, _) => None,
            (_, Some(reference)) => Some(parse_digest_ref(reference)?),
            (backend, None) => Some(ensure_image(root, backend, opts, build, &pinned).await?),
        };
        Ok(Plan {
            job_name: pinned.job_name,
            backend: opts.backend,
            file_name: pinned
                .file
                .file_name()
                .context("the experiment path names a file")?
                .to_string_lossy()
                .into_owned(),
            experiment_file: pinned.file.display().to_string(),
            experiment: pinned.experiment,
            bytes: pinned.bytes,
            sha256: pinned.sha256,
            resolved: pinned.resolved,
            base_dir: pinned.base_dir,
            commit: pinned.commit,
            dirty: pinned.dirty,
            diff_sha256: pinned.diff_sha256,
            manifest,
            image,
            init_checkpoint,
            rerun_of: None,
            device_override,
            code_in_tree: true,
            trainer_takes_pins: true,
        })
    }

    /// The same job again, from its record: same commit, image digest,
    /// experiment bytes and data (or an error saying why not); S3 is read
    /// through `aws`.
    pub async fn again(root: &Path, old: &RunRecord, aws: &crate::aws::Session) -> Result<Self> {
        let dir = old.config_dir(root);
        let file_name = Path::new(&old.experiment_file)
            .file_name()
            .context("the record names an experiment file")?
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::read(dir.join(&file_name)).with_context(|| {
            format!(
                "the copy of {}'s experiment file is missing from {}: the job cannot be rerun from this checkout",
                old.job_name,
                dir.display()
            )
        })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if sha256 != old.experiment_sha256 {
            bail!(
                "{} changed after launch (sha256 {} now, {} recorded): it cannot be rerun exactly",
                dir.join(&file_name).display(),
                sha256,
                old.experiment_sha256
            );
        }
        let experiment = sca_spec::validate::validate_for_training(&file_name, &bytes)
            .experiment
            .with_context(|| {
                format!(
                    "{}'s experiment file no longer validates with this version of the schema",
                    old.job_name
                )
            })?;
        local_trainer_runs(
            old.backend,
            &experiment,
            &old.experiment_file,
            old.device_override.as_deref(),
        )?;
        let pinned: sca_spec::DataManifest = serde_json::from_slice(
            &std::fs::read(dir.join(sca_spec::DataManifest::FILE_NAME))
                .with_context(|| format!("reading the data manifest in {}", dir.display()))?,
        )
        .context("the recorded data manifest does not parse")?;
        if Some(pinned.sha256()) != old.data_manifest_sha256 {
            bail!(
                "the data manifest in {} does not match the hash in {}'s record",
                dir.display(),
                old.job_name
            );
        }
        let rev = crate::git::revision(root)?.context("the workspace is not a git repository")?;
        let code_in_tree = rev.commit == old.commit
            && rev.dirty == old.dirty
            && (!old.dirty || Some(pin::diff_hash(root)?) == old.diff_sha256);
        if old.dirty && old.backend == Backend::Local {
            // The code is recoverable only if the tree still holds the same diff.
            if !code_in_tree {
                bail!(
                    "{} ran the local backend on a dirty tree (diff sha256 {}), and this tree no longer holds that diff on {}: its code is not recoverable from git, so it cannot be rerun exactly",
                    old.job_name,
                    old.diff_sha256.as_deref().unwrap_or("?"),
                    &old.commit[..old.commit.len().min(12)]
                );
            }
        }
        let base_dir = PathBuf::from(
            old.hyperparameters
                .get("data_base_dir")
                .and_then(|v| v.as_str())
                .unwrap_or("."),
        );
        let access = aws.s3_access(&old.resolved_job.region);
        let now = pin::manifest(&experiment.dataset, &base_dir, access.clone()).await?;
        if let Some((uri, why)) = pinned.first_difference(&now) {
            bail!(
                "the data changed since {} was launched: {uri}: {why}; it cannot be rerun on the same data (restore the object, or launch the experiment anew with `experiment run`)",
                old.job_name
            );
        }
        if let Some(then) = &pinned.init_checkpoint {
            let now = pin::pin_init(&then.uri, access).await.with_context(|| {
                format!("{}'s warm-start model cannot be read now", old.job_name)
            })?;
            if let Some(why) = then.difference(&now) {
                bail!(
                    "the warm-start model changed since {} was launched: {}: {why}; it cannot be rerun from the same weights (restore the model, or launch the experiment anew with `experiment run`)",
                    old.job_name,
                    then.uri
                );
            }
        }
        let job_name = sca_spec::job_name(
            &experiment.experiment.name,
            &old.commit,
            std::time::SystemTime::now(),
        );
        Ok(Plan {
            job_name,
            backend: old.backend,
            experiment,
            file_name,
            experiment_file: old.experiment_file.clone(),
            bytes,
            sha256,
            resolved: old.resolved_job.clone(),
            base_dir,
            commit: old.commit.clone(),
            dirty: old.dirty,
            diff_sha256: old.diff_sha256.clone(),
            manifest: pinned,
            image: old.image.clone().zip(old.image_digest.clone()),
            init_checkpoint: old.init_checkpoint.clone(),
            rerun_of: Some(old.job_name.clone()),
            device_override: old.device_override.clone(),
            code_in_tree,
            trainer_takes_pins: old
                .hyperparameters
                .contains_key(sca_spec::contract::JobPins::JOB_NAME),
        })
    }

    /// The record this plan starts with.
    pub fn record(
        &self,
        hyperparameters: &Hyperparameters,
        config_uri: String,
        artifacts: String,
    ) -> RunRecord {
        RunRecord {
            record_version: record::RECORD_VERSION,
            job_name: self.job_name.clone(),
            backend: self.backend,
            experiment: self.experiment.experiment.name.clone(),
            experiment_file: self.experiment_file.clone(),
            experiment_sha256: self.sha256.clone(),
            schema_version: sca_spec::SCHEMA_VERSION,
            commit: self.commit.clone(),
            dirty: self.dirty,
            diff_sha256: self.diff_sha256.clone(),
            image: self.image.as_ref().map(|i| i.0.clone()),
            image_digest: self.image.as_ref().map(|i| i.1.clone()),
            resolved_job: self.resolved.clone(),
            data_manifest_sha256: Some(self.manifest.sha256()),
            data_objects: self.manifest.objects.len(),
            hyperparameters: hyperparameters
                .to_map()
                .into_iter()
                .map(|(k, v)| (k, v.into()))
                .collect(),
            init_checkpoint: self.init_checkpoint.clone(),
            config_uri,
            rerun_of: self.rerun_of.clone(),
            device_override: self.device_override.clone(),
            training_job_arn: None,
            pid: None,
            pid_start: None,
            container: None,
            started: record::now(),
            finished: None,
            status: Status::InProgress,
            secondary_status: None,
            failure_reason: None,
            final_metrics: serde_json::Value::Null,
            artifacts,
            checkpoint_uri: None,
        }
    }

    /// Write the `config` channel's files (experiment + manifest) into `dir`.
    pub fn write_config_channel(&self, dir: &Path) -> Result<()> {
        fsx::write_atomic(&dir.join(&self.file_name), &self.bytes)?;
        fsx::write_atomic(
            &dir.join(sca_spec::DataManifest::FILE_NAME),
            &self.manifest.to_bytes(),
        )?;
        Ok(())
    }

    /// The pinned facts the job's tags carry, for the launch `launch_id`.
    pub fn facts(&self, launch_id: &str) -> sagemaker::JobFacts {
        sagemaker::JobFacts {
            experiment: self.experiment.experiment.name.clone(),
            experiment_sha256: self.sha256.clone(),
            commit: self.commit.clone(),
            dirty: self.dirty,
            image_digest: self.image.as_ref().map(|i| i.1.clone()).unwrap_or_default(),
            data_manifest_sha256: Some(self.manifest.sha256()),
            launch_id: launch_id.to_string(),
        }
    }
}

/// Run `plan` on its backend; the final record and the exit code.
pub async fn execute(
    root: &Path,
    mut plan: Plan,
    opts: &LaunchOptions,
) -> Result<(RunRecord, ExitCode)> {
    if !opts.dry_run {
        // Off the async threads: a name taken this second waits for the next.
        let (name, commit) = (plan.experiment.experiment.name.clone(), plan.commit.clone());
        let runs_root = root.to_path_buf();
        plan.job_name = tokio::task::spawn_blocking(move || {
            record::reserve_run_dir(&runs_root, |at| sca_spec::job_name(&name, &commit, at))
        })
        .await??;
    }
    let launched = match plan.backend {
        Backend::Local => local::run(root, &plan, opts).await,
        Backend::Docker => docker::run(root, &plan, opts).await,
        Backend::Sagemaker => sagemaker::run(root, &plan, opts).await,
    };
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
    eprintln!(
        "{}: {} (record: {})",
        record.job_name,
        record.status,
        record::run_dir(root, &record.job_name)
            .join("record.json")
            .display()
    );
    match record.status {
        Status::Completed | Status::InProgress | Status::Stopping => ExitCode::SUCCESS,
        Status::Failed | Status::Stopped => {
            if let Some(r) = &record.failure_reason {
                eprintln!(
                    "error: {} {}: {r}",
                    record.job_name,
                    record.status.to_string().to_lowercase()
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// `reference@sha256:...` → (reference, digest); a tag is refused.
pub fn parse_digest_ref(reference: &str) -> Result<(String, String)> {
    match reference.rsplit_once('@') {
        Some((_, digest)) if digest.starts_with("sha256:") && digest.len() == 71 => {
            Ok((reference.to_string(), digest.to_string()))
        }
        _ => bail!(
            "--image `{reference}` does not name an image by digest: give REPOSITORY@sha256:<64 hex> (jobs never run a tag, which can move)"
        ),
    }
}

/// Refuses, before any data is listed, a `local` launch whose trainer would
/// stop at once: the host's `sca-train` is a CPU build, and `train.device =
/// "cuda"` needs CUDA (`device_override`, the trainer's `SCA_DEVICE`,
/// overrides the file's device).
fn local_trainer_runs(
    backend: Backend,
    experiment: &sca_spec::Experiment,
    file: &str,
    device_override: Option<&str>,
) -> Result<()> {
    use sca_spec::contract::DeviceRequest;
    if backend != Backend::Local {
        return Ok(());
    }
    // What the trainer will ask for (an override it would refuse is refused
    // here, not after the data is listed).
    let request = DeviceRequest::from_override_or(device_override, experiment.train.device)?;
    if request == DeviceRequest::Cuda {
        let env = sca_spec::contract::DEVICE_ENV;
        let asked = match device_override {
            Some(_) => format!("{env}=cuda"),
            None => format!("{file}: train.device = \"cuda\""),
        };
        bail!(
            "{asked}, but the local backend's trainer is a CPU build of sca-train: run it with --backend sagemaker (or --backend docker on a machine with an NVIDIA GPU), or set {env}=cpu (or auto) to train on this machine's CPU"
        );
    }
    Ok(())
}

/// Build (and for sagemaker, or with --registry, push) the commit's image;
/// (reference by digest, digest).
async fn ensure_image(
    _root: &Path,
    backend: Backend,
    opts: &LaunchOptions,
    build: &flags::ImageBuildArgs,
    pinned: &pin::Pinned,
) -> Result<(String, String)> {
    let options = image::BuildOptions::from_flags(build)?;
    let docker = image::engine::connect().await?;
    if backend == Backend::Docker && opts.registry.is_none() {
        let built = image::ensure_built(&docker, &options).await?;
        // The engine's image id is the digest of its configuration: content-addressed.
        return Ok((built.id.clone(), built.id));
    }
    let pushed = image::ensure_pushed(
        &docker,
        &image::PushOptions {
            build: options,
            registry: opts.registry.clone(),
            repository: pinned.resolved.ecr_repository.clone(),
            aws: opts.aws.clone(),
            region: Some(pinned.resolved.region.clone()),
        },
    )
    .await?;
    Ok((pushed.reference, pushed.digest))
}

/// The concrete warm-start model: a local path made absolute (and checked),
/// an `s3://` URI as it is, and for `experiment:<name>` the model of that
/// experiment's newest completed run on the same kind of backend (a SageMaker
/// job's `model.tar.gz` in S3 for `sagemaker`; a local or docker run's
/// `model.safetensors` otherwise).
async fn resolve_init(
    root: &Path,
    pinned: &pin::Pinned,
    opts: &LaunchOptions,
) -> Result<Option<String>> {
    let Some(init) = pinned.experiment.model.init_checkpoint.as_deref() else {
        return Ok(None);
    };
    let Some(name) = init.strip_prefix("experiment:") else {
        if init.starts_with("s3://") {
            return Ok(Some(init.to_string()));
        }
        if opts.backend == Backend::Sagemaker {
            bail!("model.init_checkpoint = \"{init}\" is a local path, but a SageMaker job reads its warm start from S3: upload the model and set init_checkpoint to its s3:// URI (or use --backend local or docker)");
        }
        // Absolute, so that the docker backend can mount it and a rerun from
        // elsewhere finds it.
        let path = pinned.base_dir.join(init);
        if !path.is_file() {
            bail!(
                "model.init_checkpoint = \"{init}\": {} does not exist (a relative path is relative to the experiment file)",
                path.display()
            );
        }
        return Ok(Some(path.display().to_string()));
    };
    if opts.backend == Backend::Sagemaker {
        let region = opts.aws.region_or(&pinned.resolved.region);
        let clients = sagemaker::Clients::new(&opts.aws, Some(&region)).await?;
        let (job, model) = sagemaker::latest_model(&clients.sagemaker, name)
            .await?
            .with_context(|| format!("model.init_checkpoint names experiment `{name}`, which has no completed SageMaker training job with a model in {region}: run it first with --backend sagemaker, or set init_checkpoint to an s3:// model"))?;
        eprintln!("warm start from {job}: {model}");
        return Ok(Some(model));
    }
    let run = RunRecord::all(root)
        .into_iter()
        .filter(|r| r.experiment == name && r.status == Status::Completed && r.backend != Backend::Sagemaker)
        .max_by(|a, b| a.finished.cmp(&b.finished))
        .with_context(|| format!("model.init_checkpoint names experiment `{name}`, which has no completed local or docker run: run it first"))?;
    let model = model_dir(root, &run).join("model.safetensors");
    if !model.is_file() {
        bail!(
            "model.init_checkpoint names experiment `{name}`: its newest run {} has no {}",
            run.job_name,
            model.display()
        );
    }
    eprintln!("warm start from {}: {}", run.job_name, model.display());
    Ok(Some(model.display().to_string()))
}

/// The model directory of a local or docker run.
pub fn model_dir(root: &Path, record: &RunRecord) -> PathBuf {
    record::run_dir(root, &record.job_name).join("opt/ml/model")
}

/// The pins the trainer records in its checkpoints, and checks a
/// checkpoint it would resume against (see [`sca_spec::contract::JobPins`]).
pub fn job_pins(plan: &Plan) -> sca_spec::contract::JobPins {
    sca_spec::contract::JobPins {
        job_name: Some(plan.job_name.clone()),
        commit: Some(plan.commit.clone()),
        image_digest: plan.image.as_ref().map(|i| i.1.clone()),
        // The trainer also refuses a config channel whose manifest is not this one.
        data_manifest_sha256: Some(plan.manifest.sha256()),
    }
}

/// The hyperparameters every backend passes: the experiment's hash and the
/// job's pins (called once the job's name is final).
pub fn base_hyperparameters(plan: &Plan) -> Hyperparameters {
    hyperparameters(&plan.sha256, job_pins(plan), plan.trainer_takes_pins)
}

/// The experiment's hash and `pins`; of the pins only the data manifest's
/// hash when the trainer predates the others.
fn hyperparameters(
    experiment_sha256: &str,
    pins: sca_spec::contract::JobPins,
    trainer_takes_pins: bool,
) -> Hyperparameters {
    let pins = if trainer_takes_pins {
        pins
    } else {
        sca_spec::contract::JobPins {
            data_manifest_sha256: pins.data_manifest_sha256,
            ..Default::default()
        }
    };
    Hyperparameters {
        experiment_sha256: Some(experiment_sha256.to_string()),
        pins,
        ..Default::default()
    }
}

/// The hyperparameters of a job whose data paths are host paths (local and
/// docker): relative dataset roots resolve against the experiment's directory.
pub fn host_hyperparameters(plan: &Plan) -> Hyperparameters {
    Hyperparameters {
        data_base_dir: Some(plan.base_dir.display().to_string()),
        ..base_hyperparameters(plan)
    }
}

/// Lay out `run_dir/opt/ml` as SageMaker does for a single host.
pub fn write_opt_ml(ml: &Path, plan: &Plan, hyper: &Hyperparameters) -> Result<()> {
    let tree = OptMl::at(ml);
    plan.write_config_channel(&tree.config_channel())?;
    fsx::write_atomic(
        &tree.hyperparameters_file(),
        &serde_json::to_vec_pretty(&hyper.to_map())?,
    )?;
    fsx::write_atomic(
        &tree.resource_config_file(),
        &serde_json::to_vec_pretty(&ResourceConfig::single_host())?,
    )?;
    fsx::write_atomic(
        &tree.input_data_config_file(),
        &serde_json::to_vec_pretty(&contract::input_data_config())?,
    )?;
    for d in [tree.model_dir(), tree.output_dir()] {
        std::fs::create_dir_all(d)?;
    }
    fresh_checkpoint_dir(&tree)?;
    Ok(())
}

/// Create `ml/checkpoints`, which must not exist yet. `ml` is inside the run
/// directory that [`execute`] has just created for this job (`create_dir`,
/// never an existing one), and a rerun is a new job with a new directory,
/// so a local or docker run starts with no checkpoints and can resume only
/// its own (the checkpoints of a previous run stay in that run's directory).
/// Refusing an existing directory keeps it so, should that change.
fn fresh_checkpoint_dir(ml: &OptMl) -> Result<()> {
    let dir = ml.checkpoint_dir();
    std::fs::create_dir(&dir).with_context(|| {
        format!(
            "creating {}: a run's checkpoint directory must be new, so that it resumes no other run's checkpoints",
            dir.display()
        )
    })
}

/// How the trainer ended, as the backend saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code; a signal `s` as `128 + s` (143: SIGTERM, 137: SIGKILL).
    pub code: Option<i64>,
    /// `experiment stop` or Ctrl-C asked for it to stop.
    pub stop_requested: bool,
    /// The engine reports the container killed by the kernel's OOM killer
    /// (docker's `State.OOMKilled`; `None` where nobody can tell).
    pub oom_killed: Option<bool>,
}

/// Why a job whose trainer ended unseen failed: its launcher, which waits
/// for it and records how it ended, was gone (killed, or its terminal
/// closed), and `status` found it ended.
pub const UNRECORDED: &str = "the trainer process exited without recording an outcome (its launcher was gone: killed, or its terminal closed)";

/// The final status and failure reason of a trainer that ended as `exit`,
/// having written `failure` (its `/opt/ml/output/failure`) or not.
fn outcome(exit: Exit, failure: Option<String>) -> (Status, Option<String>) {
    let status = match exit.code {
        Some(0) => Status::Completed,
        // `None`: gone without a word after a stop request (`status` finding
        // the trainer of a `Stopping` job dead, its launcher gone too).
        Some(143) | Some(137) | None if exit.stop_requested => Status::Stopped,
        _ => Status::Failed,
    };
    let reason = match status {
        Status::Completed => None,
        Status::Stopped => Some("stopped on request".into()),
        _ if exit.oom_killed == Some(true) => Some(format!(
            "killed by the out-of-memory killer (the engine reports OOMKilled){}",
            failure.map_or(String::new(), |f| format!("; the trainer last wrote: {f}"))
        )),
        _ => failure.or_else(|| {
            Some(match exit.code {
                Some(137) => "killed (SIGKILL; out of memory?) without a stop request".into(),
                Some(143) => "terminated (SIGTERM) without a stop request".into(),
                Some(c) => format!("the trainer exited with code {c}"),
                None => UNRECORDED.into(),
            })
        }),
    };
    (status, reason)
}

/// Status, failure reason and final metrics from a finished `/opt/ml` tree
/// and how the trainer ended. Only a requested stop is `Stopped`: a trainer
/// killed otherwise (the OOM killer's SIGKILL, a stray SIGTERM) `Failed`,
/// and the reason says by what.
pub fn finish(record: &mut RunRecord, ml: &Path, exit: Exit) {
    record.finished = Some(record::now());
    let failure = std::fs::read_to_string(ml.join("output/failure"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    (record.status, record.failure_reason) = outcome(exit, failure);
    record.final_metrics = std::fs::read(ml.join("model/metrics.json"))
        .map(|b| record::final_metrics(&b))
        .unwrap_or_default();
    record.pid = None;
    record.pid_start = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i64, stop_requested: bool, oom_killed: Option<bool>) -> Exit {
        Exit {
            code: Some(code),
            stop_requested,
            oom_killed,
        }
    }

    /// The trainer is told its job's pins, which it records in every
    /// checkpoint and checks before resuming one; a rerun of a job launched
    /// before pins existed passes only what that job's trainer accepts.
    #[test]
    fn hyperparameters_carry_the_job_pins_the_trainer_knows() {
        use sca_spec::contract::{JobPins, KNOWN_HYPERPARAMETERS};
        let pins = JobPins {
            job_name: Some("exp-0123456-20261126-120000".into()),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            image_digest: Some("sha256:ff".into()),
            data_manifest_sha256: Some("m1".into()),
        };
        let typed = hyperparameters("e1", pins.clone(), true);
        assert_eq!(typed.pins, pins);
        assert_eq!(typed.experiment_sha256.as_deref(), Some("e1"));
        let hyper = typed.to_map();
        for key in hyper.keys() {
            assert!(
                KNOWN_HYPERPARAMETERS.iter().any(|(k, _)| k == key),
                "the trainer refuses `{key}`"
            );
        }
        let old = hyperparameters("e1", pins, false).to_map();
        assert_eq!(
            old.keys().collect::<Vec<_>>(),
            ["data_manifest_sha256", "experiment_sha256"]
        );
    }

    /// Two runs of one experiment, even in the same second (a run and its
    /// rerun), get two new run directories and so two empty checkpoint
    /// directories; a checkpoint directory that exists already is refused.
    #[test]
    fn every_run_starts_with_a_new_empty_checkpoint_directory() {
        let root = tempfile::tempdir().unwrap();
        let name_at = |t| sca_spec::job_name("exp", "0123456789", t);
        let first = record::reserve_run_dir(root.path(), name_at).unwrap();
        let ml = record::run_dir(root.path(), &first).join("opt/ml");
        std::fs::create_dir_all(&ml).unwrap();
        let ml = OptMl::at(ml);
        fresh_checkpoint_dir(&ml).unwrap();
        std::fs::write(
            ml.checkpoint_dir()
                .join("checkpoint-e00001-s000000.safetensors"),
            b"x",
        )
        .unwrap();
        let again = fresh_checkpoint_dir(&ml).unwrap_err();
        assert!(
            format!("{again:#}")
                .contains("must be new, so that it resumes no other run's checkpoints"),
            "{again:#}"
        );

        let second = record::reserve_run_dir(root.path(), name_at).unwrap();
        assert_ne!(first, second);
        let ml = record::run_dir(root.path(), &second).join("opt/ml");
        std::fs::create_dir_all(&ml).unwrap();
        let ml = OptMl::at(ml);
        fresh_checkpoint_dir(&ml).unwrap();
        assert_eq!(std::fs::read_dir(ml.checkpoint_dir()).unwrap().count(), 0);
    }

    #[test]
    fn only_a_requested_stop_is_stopped() {
        assert_eq!(
            outcome(exit(0, false, None), None),
            (Status::Completed, None)
        );
        for code in [137, 143] {
            assert_eq!(
                outcome(exit(code, true, None), None),
                (Status::Stopped, Some("stopped on request".into()))
            );
        }
        // A SIGKILL nobody asked for (5215846 recorded it as stopped on request).
        let (status, why) = outcome(exit(137, false, None), None);
        assert_eq!(status, Status::Failed);
        assert_eq!(
            why.as_deref(),
            Some("killed (SIGKILL; out of memory?) without a stop request")
        );
        let (status, why) = outcome(exit(143, false, None), None);
        assert_eq!(status, Status::Failed);
        assert!(why.unwrap().contains("SIGTERM"));
    }

    #[test]
    fn the_engines_oom_flag_and_the_trainers_failure_are_the_reason() {
        let (status, why) = outcome(exit(137, false, Some(true)), None);
        assert_eq!(status, Status::Failed);
        assert!(why.unwrap().contains("out-of-memory killer"));
        let (_, why) = outcome(exit(1, false, Some(false)), Some("bad tile x".into()));
        assert_eq!(why.as_deref(), Some("bad tile x"));
        let (_, why) = outcome(exit(2, false, None), None);
        assert_eq!(why.as_deref(), Some("the trainer exited with code 2"));
    }

    #[test]
    fn a_trainer_that_ended_unseen_failed_unless_asked_to_stop() {
        let unseen = |stop_requested| Exit {
            code: None,
            stop_requested,
            oom_killed: None,
        };
        assert_eq!(
            outcome(unseen(false), None),
            (Status::Failed, Some(UNRECORDED.into()))
        );
        assert_eq!(outcome(unseen(true), None).0, Status::Stopped);
        // What the trainer wrote before it went is the better reason.
        let (status, why) = outcome(unseen(false), Some("bad tile x".into()));
        assert_eq!(
            (status, why.as_deref()),
            (Status::Failed, Some("bad tile x"))
        );
    }
}
