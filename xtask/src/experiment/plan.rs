//! The [`Plan`]: what exactly a launch runs (experiment bytes, [`Pins`],
//! data manifest, resolved job settings), made fresh from an experiment
//! file ([`Plan::fresh`]) or again from a run record ([`Plan::again`],
//! `rerun`), and what every backend derives from it: the run record it
//! starts with, the `config` channel's files and the hyperparameters.
//!
//! Below the backends: it knows none of them. The one planning step that
//! asks a backend (the model of `init_checkpoint = "experiment:<name>"`)
//! is handed in by the caller as a function.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::experiment::pin;
use crate::experiment::pins::{ImageRef, Pins};
use crate::experiment::record::{self, Backend, RunRecord, Status};
use crate::{flags, fsx};
use sca_spec::contract::{DeviceRequest, Hyperparameters, JobPins, DEVICE_ENV};

/// What a launch runs: everything pinned.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The name as of planning, which a dry run prints; `launch::execute`
    /// claims the final one with the run directory (a later second if it is
    /// taken).
    pub job_name: String,
    pub backend: Backend,
    pub experiment: sca_spec::Experiment,
    /// Name of the experiment file in the `config` channel.
    pub file_name: String,
    /// The file as given on the command line (for people).
    pub experiment_file: String,
    /// The experiment file's exact bytes: validated, hashed
    /// (`pins.experiment_sha256`) and uploaded, read once.
    pub bytes: Vec<u8>,
    pub resolved: sca_spec::ResolvedJob,
    pub base_dir: PathBuf,
    /// Commit, image, experiment and data hashes, warm start.
    pub pins: Pins,
    pub manifest: sca_spec::DataManifest,
    /// [`RESOLVED_FILE`]'s bytes: the experiment as the pinned code resolves
    /// it (a fresh launch's own; a rerun's from the job it repeats, absent
    /// when that job has none).
    pub resolved_experiment: Option<Vec<u8>>,
    pub rerun_of: Option<String>,
    /// The sweep this job is a point of (`experiment sweep`).
    pub sweep: Option<String>,
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

/// Where a fresh launch's image comes from.
#[derive(Debug, Clone, Copy)]
pub enum ImageChoice<'a> {
    /// Built (and pushed) from the pinned commit.
    Build,
    /// `--image REPOSITORY@sha256:...`, checked against the pinned commit.
    Given(&'a str),
    /// One this command built or checked for the same code (a sweep's
    /// later points).
    Built(&'a ImageRef),
}

impl<'a> ImageChoice<'a> {
    /// `--image`, if given.
    pub fn from_flag(image: Option<&'a str>) -> Self {
        image.map_or(ImageChoice::Build, ImageChoice::Given)
    }
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

/// In the `config` channel beside the experiment file: the experiment as
/// the launch resolved it (JSON; every default filled in by the code it
/// pins). `experiment diff` compares these, not what a later checkout's
/// schema would fill in. The trainer reads only the `.toml`.
pub const RESOLVED_FILE: &str = "experiment.resolved.json";

impl Plan {
    /// A new job from an experiment file. `latest_model(name, job)` is the
    /// backend's model of experiment `name`'s newest completed run, for
    /// `init_checkpoint = "experiment:<name>"`.
    #[allow(clippy::too_many_arguments)]
    pub async fn fresh(
        root: &Path,
        file: &Path,
        allow_dirty: bool,
        opts: &LaunchOptions,
        build: &flags::ImageBuildArgs,
        image: ImageChoice<'_>,
        latest_model: impl AsyncFnOnce(&str, &sca_spec::ResolvedJob) -> Result<String>,
    ) -> Result<Self> {
        let pinned = pin::pin(root, file, allow_dirty)?;
        Self::from_pinned(pinned, opts, build, image, None, latest_model).await
    }

    /// A new job from a pinned experiment (a file, or a sweep's point).
    /// `manifests`, when given, lists each dataset once across calls (a
    /// sweep's points mostly share theirs).
    pub async fn from_pinned(
        pinned: pin::Pinned,
        opts: &LaunchOptions,
        build: &flags::ImageBuildArgs,
        image: ImageChoice<'_>,
        manifests: Option<&ManifestCache>,
        latest_model: impl AsyncFnOnce(&str, &sca_spec::ResolvedJob) -> Result<String>,
    ) -> Result<Self> {
        // The image must hold the pinned commit's code: another context
        // directory, or a tag of the caller's choosing (which may already
        // name another image in the registry), would not.
        if build.dir.is_some() || build.tag.is_some() {
            bail!(
                "--dir and --tag are for `cargo xtask image build|push`: a launch builds the workspace at the commit it pins and derives the tag from it (or takes a pushed image as --image REPO@sha256:...)"
            );
        }
        unused_image_flags(opts, build, &image)?;
        let mut pinned = pinned;
        // `--region` is where the job runs and its data is read: the
        // record says so (later commands find the job there), and the cost
        // is priced there.
        if let Some(region) = opts.aws.region(None) {
            pinned.resolved.region = region;
        }
        let file = pinned.file.clone();
        if opts.backend == Backend::Sagemaker {
            // Before anything is built or listed: the worst case, or a refusal.
            check_cost(
                &pinned.experiment,
                &pinned.resolved,
                &file.display().to_string(),
            )?;
        }
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
        // A given image is checked before the data is listed.
        let given = match (opts.backend, image) {
            (Backend::Local, _) => None,
            (_, ImageChoice::Given(reference)) => {
                let image = parse_image_flag(reference)?;
                check_given_image(&image, &pinned, opts).await?;
                Some(image)
            }
            _ => None,
        };
        let init_checkpoint = resolve_init(&pinned, opts.backend, latest_model).await?;
        let access = opts.aws.s3_access(&pinned.resolved.region);
        let mut manifest = match manifests {
            Some(cache) => cache.get(&pinned, access.clone()).await?,
            None => {
                pin::manifest(&pinned.experiment.dataset, &pinned.base_dir, access.clone()).await?
            }
        };
        if let Some(init) = &init_checkpoint {
            manifest.init_checkpoint = Some(pin::pin_init(init, access).await?);
        }
        let image = match (opts.backend, image) {
            (Backend::Local, _) => None,
            (_, ImageChoice::Given(_)) => given,
            (_, ImageChoice::Built(image)) => Some(image.clone()),
            (backend, ImageChoice::Build) => {
                Some(ensure_image(backend, opts, build, &pinned).await?)
            }
        };
        let resolved_experiment =
            serde_json::to_vec_pretty(&pinned.experiment).context("experiments serialize")?;
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
            resolved: pinned.resolved,
            base_dir: pinned.base_dir,
            pins: Pins {
                commit: pinned.commit,
                dirty: pinned.dirty,
                diff_sha256: pinned.diff_sha256,
                image,
                experiment_sha256: pinned.sha256,
                data_manifest_sha256: Some(manifest.sha256()),
                init_checkpoint,
            },
            manifest,
            resolved_experiment: Some(resolved_experiment),
            rerun_of: None,
            sweep: None,
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
        let sha256 = sca_data::manifest::sha256_hex(&bytes);
        if sha256 != old.pins.experiment_sha256 {
            bail!(
                "{} changed after launch (sha256 {} now, {} recorded): it cannot be rerun exactly",
                dir.join(&file_name).display(),
                sha256,
                old.pins.experiment_sha256
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
        let resolved = sca_spec::ResolvedJob {
            // As at a fresh launch: the record says where it ran.
            region: aws.region_or(&old.resolved_job.region),
            ..old.resolved_job.clone()
        };
        if old.backend == Backend::Sagemaker {
            // As at a fresh launch, before anything is listed: a rerun is
            // billed again, and `--region` may move it where the limit fails.
            check_cost(&experiment, &resolved, &old.experiment_file)?;
        }
        let pinned: sca_spec::DataManifest = serde_json::from_slice(
            &std::fs::read(dir.join(sca_spec::DataManifest::FILE_NAME))
                .with_context(|| format!("reading the data manifest in {}", dir.display()))?,
        )
        .context("the recorded data manifest does not parse")?;
        if Some(pinned.sha256()) != old.pins.data_manifest_sha256 {
            bail!(
                "the data manifest in {} does not match the hash in {}'s record",
                dir.display(),
                old.job_name
            );
        }
        let pins = &old.pins;
        let code_in_tree =
            pin::tree_holds(root, &pins.commit, pins.dirty, pins.diff_sha256.as_deref())?;
        if pins.dirty && old.backend == Backend::Local {
            // The code is recoverable only if the tree still holds the same diff.
            if !code_in_tree {
                bail!(
                    "{} ran the local backend on a dirty tree (diff sha256 {}), and this tree no longer holds that diff on {}: its code is not recoverable from git, so it cannot be rerun exactly",
                    old.job_name,
                    pins.diff_sha256.as_deref().unwrap_or("?"),
                    pins.short_commit()
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
            &pins.commit,
            std::time::SystemTime::now(),
        );
        Ok(Plan {
            job_name,
            backend: old.backend,
            experiment,
            file_name,
            experiment_file: old.experiment_file.clone(),
            bytes,
            resolved,
            base_dir,
            pins: pins.clone(),
            manifest: pinned,
            resolved_experiment: std::fs::read(dir.join(RESOLVED_FILE)).ok(),
            rerun_of: Some(old.job_name.clone()),
            sweep: old.sweep.clone(),
            device_override: old.device_override.clone(),
            code_in_tree,
            trainer_takes_pins: old.hyperparameters.contains_key(JobPins::JOB_NAME),
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
            schema_version: sca_spec::SCHEMA_VERSION,
            pins: self.pins.clone(),
            resolved_job: self.resolved.clone(),
            data_objects: self.manifest.objects.len(),
            hyperparameters: hyperparameters
                .to_map()
                .into_iter()
                .map(|(k, v)| (k, v.into()))
                .collect(),
            config_uri,
            rerun_of: self.rerun_of.clone(),
            sweep: self.sweep.clone(),
            cost: None,
            device_override: self.device_override.clone(),
            training_job_arn: None,
            pid: None,
            pid_start: None,
            container: None,
            engine_id: None,
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

    /// The `config` channel's files, names and bytes: the experiment file,
    /// the data manifest and, where known, [`RESOLVED_FILE`].
    pub fn config_files(&self) -> Vec<(String, Vec<u8>)> {
        let mut files = vec![
            (self.file_name.clone(), self.bytes.clone()),
            (
                sca_spec::DataManifest::FILE_NAME.to_string(),
                self.manifest.to_bytes(),
            ),
        ];
        if let Some(resolved) = &self.resolved_experiment {
            files.push((RESOLVED_FILE.to_string(), resolved.clone()));
        }
        files
    }

    /// Write the `config` channel's files ([`Plan::config_files`]) into `dir`.
    pub fn write_config_channel(&self, dir: &Path) -> Result<()> {
        for (name, bytes) in self.config_files() {
            fsx::write_atomic(&dir.join(name), &bytes)?;
        }
        Ok(())
    }

    /// The pins the trainer records in its checkpoints, and checks a
    /// checkpoint it would resume against (see [`JobPins`]).
    pub fn job_pins(&self) -> JobPins {
        JobPins {
            job_name: Some(self.job_name.clone()),
            commit: Some(self.pins.commit.clone()),
            image_digest: self.pins.image_digest().map(str::to_string),
            // The trainer also refuses a config channel whose manifest is not this one.
            data_manifest_sha256: self.pins.data_manifest_sha256.clone(),
        }
    }

    /// The hyperparameters every backend passes: the experiment's hash and
    /// the job's pins (called once the job's name is final).
    pub fn hyperparameters(&self) -> Hyperparameters {
        hyperparameters(
            &self.pins.experiment_sha256,
            self.job_pins(),
            self.trainer_takes_pins,
        )
    }

    /// The hyperparameters of a job whose data paths are host paths (local
    /// and docker): relative dataset roots resolve against the experiment's
    /// directory.
    pub fn host_hyperparameters(&self) -> Hyperparameters {
        Hyperparameters {
            data_base_dir: Some(self.base_dir.display().to_string()),
            ..self.hyperparameters()
        }
    }
}

/// A SageMaker job's worst-case cost in its region, printed, or a refusal
/// naming `file` where it is above `job.max_cost_usd` or cannot be priced.
fn check_cost(
    experiment: &sca_spec::Experiment,
    resolved: &sca_spec::ResolvedJob,
    file: &str,
) -> Result<()> {
    let name = &experiment.experiment.name;
    match sca_spec::check_max_cost(experiment.job.max_cost_usd, resolved) {
        Ok(Some(cost)) => eprintln!("{name}: worst-case cost {cost}"),
        Ok(None) => eprintln!(
            "{name}: worst-case cost unknown: no price for {} in {} (sca-spec's price table)",
            resolved.instance_type, resolved.region
        ),
        Err(over) => bail!("{file}: {over}: nothing was launched"),
    }
    Ok(())
}

/// The experiment's hash and `pins`; of the pins only the data manifest's
/// hash when the trainer predates the others.
fn hyperparameters(
    experiment_sha256: &str,
    pins: JobPins,
    trainer_takes_pins: bool,
) -> Hyperparameters {
    let pins = if trainer_takes_pins {
        pins
    } else {
        JobPins {
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

/// Data manifests already listed, by dataset table and base directory: a
/// sweep lists each distinct dataset once.
#[derive(Default)]
pub struct ManifestCache(tokio::sync::Mutex<Vec<(String, sca_spec::DataManifest)>>);

impl ManifestCache {
    /// The manifest of `pinned`'s dataset, listed on first use.
    async fn get(
        &self,
        pinned: &pin::Pinned,
        access: sca_data::S3Access,
    ) -> Result<sca_spec::DataManifest> {
        let key = format!(
            "{}\0{}",
            serde_json::to_string(&pinned.experiment.dataset)?,
            pinned.base_dir.display()
        );
        // Held while listing: the next point waits for this listing instead
        // of starting the same one.
        let mut known = self.0.lock().await;
        if let Some((_, m)) = known.iter().find(|(k, _)| *k == key) {
            return Ok(m.clone());
        }
        let m = pin::manifest(&pinned.experiment.dataset, &pinned.base_dir, access).await?;
        known.push((key, m.clone()));
        Ok(m)
    }
}

/// `--image REPOSITORY@sha256:...`; a tag, or an image id without a
/// repository, is refused.
fn parse_image_flag(reference: &str) -> Result<ImageRef> {
    match ImageRef::parse(reference) {
        Ok(image) if image.repository.is_some() => Ok(image),
        _ => bail!(
            "--image `{reference}` does not name an image by digest: give REPOSITORY@sha256:<64 hex> (jobs never run a tag, which can move)"
        ),
    }
}

/// `--image` must hold the pinned code: a record naming commit A beside an
/// image of commit B would say the job ran code it never ran. Refused when
/// the tree has uncommitted changes (no given image can be shown to hold
/// them), or when the image's label (engine) or tags (ECR) name another
/// commit or a dirty build; taken with a warning when nothing says.
#[cfg(feature = "full")]
async fn check_given_image(
    image: &ImageRef,
    pinned: &pin::Pinned,
    opts: &LaunchOptions,
) -> Result<()> {
    use crate::image::provenance::{commit_of, Holds};
    if pinned.dirty {
        bail!(
            "--image {image}: the working tree has uncommitted changes, and no given image can be shown to hold them: commit them and launch again, or launch without --image (the launch builds the image of the tree as it is)"
        );
    }
    let repository = image.repository.as_deref().unwrap_or_default();
    let commit = &pinned.commit;
    let holds = commit_of(repository, &image.digest, commit, &opts.aws).await;
    // SageMaker's training instances run amd64 images.
    if let Holds::Commit {
        arch: Some(arch),
        from,
        ..
    } = &holds
    {
        if opts.backend == Backend::Sagemaker && arch != "amd64" {
            bail!(
                "--image {image} is an image for {arch} (as {from} says), and SageMaker's training instances run amd64 (x86_64) ones: push an image built on an amd64 machine (CI's) and launch with that"
            );
        }
    }
    match holds {
        holds if holds.is_clean(commit) => Ok(()),
        Holds::Commit {
            commit: held,
            dirty,
            from,
            ..
        } => bail!(
            "--image {image} holds {} (as {from} says), but this launch pins commit {commit}: launch at that commit (`git checkout {held}`), or without --image to build this commit's image",
            match dirty {
                true => format!("uncommitted changes made on commit {held}"),
                false => format!("commit {held}"),
            }
        ),
        Holds::Unknown(why) => {
            eprintln!(
                "warning: --image {image}: which commit it holds cannot be read ({why}); the record pins it to commit {} as given",
                pinned.commit
            );
            Ok(())
        }
    }
}

#[cfg(not(feature = "full"))]
async fn check_given_image(_: &ImageRef, _: &pin::Pinned, opts: &LaunchOptions) -> Result<()> {
    Err(crate::needs_full(&format!(
        "the {} backend's --image",
        opts.backend
    )))
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
    if backend != Backend::Local {
        return Ok(());
    }
    // What the trainer will ask for (an override it would refuse is refused
    // here, not after the data is listed).
    let request = DeviceRequest::from_override_or(device_override, experiment.train.device)?;
    if request == DeviceRequest::Cuda {
        let env = DEVICE_ENV;
        let asked = match device_override {
            Some(_) => format!("{env}=cuda"),
            None => format!("{file}: train.device = \"cuda\""),
        };
        bail!(
            "{asked}, but the local backend's trainer is a CPU build of sca-train: run it with --backend sagemaker (or --backend docker on a machine with an NVIDIA GPU), or set {env}=cpu (or auto) to train on this machine's CPU"
        );
    }
    // So it computes on the CPU, where the trainer refuses bf16.
    if experiment.train.precision == sca_spec::Precision::Bf16 {
        bail!(
            "{file}: train.precision = \"bf16\", but the local backend's trainer computes on the CPU, where bf16 convolutions do not run: run it with --backend sagemaker (or --backend docker on a machine with an NVIDIA GPU), or set precision = \"fp32\""
        );
    }
    Ok(())
}

/// Refuse image flags the launch would not use, rather than ignore them:
/// any on the local backend (a host process, no image), and the build
/// flags and `--registry` beside `--image` (nothing is built or pushed).
fn unused_image_flags(
    opts: &LaunchOptions,
    build: &flags::ImageBuildArgs,
    image: &ImageChoice<'_>,
) -> Result<()> {
    let defaults = <flags::ImageBuildArgs as clap::FromArgMatches>::from_arg_matches(
        &<flags::ImageBuildArgs as clap::Args>::augment_args(clap::Command::default())
            .get_matches_from(["x"]),
    )
    .expect("the build flags' defaults parse");
    let mut set: Vec<&str> = [
        (build.dockerfile != defaults.dockerfile, "--dockerfile"),
        (build.base.is_some(), "--base"),
        (!build.build_args.is_empty(), "--build-arg"),
        (build.allow_secrets, "--allow-secrets"),
        (
            build.max_context_size != defaults.max_context_size,
            "--max-context-size",
        ),
        (build.no_cache, "--no-cache"),
        (opts.registry.is_some(), "--registry"),
    ]
    .into_iter()
    .filter_map(|(given, flag)| given.then_some(flag))
    .collect();
    if opts.backend == Backend::Local {
        if matches!(image, ImageChoice::Given(_)) {
            set.insert(0, "--image");
        }
        if !set.is_empty() {
            bail!(
                "{}: image flags, but the local backend runs the trainer on this host with no image: drop them, or pass --backend docker (or sagemaker)",
                set.join(", ")
            );
        }
    } else if matches!(image, ImageChoice::Given(_)) && !set.is_empty() {
        bail!(
            "{}: flags for building or pushing an image, but --image names one already built: drop them, or drop --image to build the commit's image",
            set.join(", ")
        );
    }
    Ok(())
}

/// Build (and for sagemaker, or with --registry, push) the commit's image.
#[cfg(not(feature = "full"))]
async fn ensure_image(
    backend: Backend,
    _: &LaunchOptions,
    _: &flags::ImageBuildArgs,
    _: &pin::Pinned,
) -> Result<ImageRef> {
    Err(crate::needs_full(&format!("the {backend} backend's image")))
}

/// Build (and for sagemaker, or with --registry, push) the commit's image.
#[cfg(feature = "full")]
async fn ensure_image(
    backend: Backend,
    opts: &LaunchOptions,
    build: &flags::ImageBuildArgs,
    pinned: &pin::Pinned,
) -> Result<ImageRef> {
    use crate::image;
    let options = image::BuildOptions::from_flags(build)?;
    // The image holds what the tree held when its context was read, which
    // is after the pin (of the workspace's tree) was taken.
    let unchanged = |root: &Path| {
        pin::ensure_tree_unchanged(
            root,
            &pinned.commit,
            pinned.dirty,
            pinned.diff_sha256.as_deref(),
            "the image was built",
        )
    };
    let dir = crate::workspace::root();
    let docker = image::engine::connect().await?;
    if backend == Backend::Docker && opts.registry.is_none() {
        let built = image::ensure_built(&docker, &options).await?;
        unchanged(&dir)?;
        // The engine's image id is the digest of its configuration: content-addressed.
        return ImageRef::engine_id(&built.id)
            .with_context(|| format!("the engine named the built image `{}`", built.id));
    }
    if backend == Backend::Sagemaker {
        let arch = image::engine::architecture(&docker).await?;
        if !arch.is_empty() && arch != "amd64" {
            bail!(
                "the Docker engine at {} builds {arch} images, and SageMaker's training instances run amd64 (x86_64) ones: build and push the image on an amd64 machine (CI's), then launch with --image REPOSITORY@sha256:…",
                image::engine::engine_host()
            );
        }
    }
    let pushed = image::ensure_pushed(
        &docker,
        &image::PushOptions {
            build: options,
            registry: opts.registry.clone(),
            repository: pinned.resolved.ecr_repository.clone(),
            aws: opts.aws.clone(),
            region: Some(pinned.resolved.region.clone()),
            pull: backend == Backend::Docker,
        },
    )
    .await?;
    unchanged(&dir)?;
    ImageRef::in_registry(&pushed.repository, &pushed.digest)
        .with_context(|| format!("the registry named the pushed image `{}`", pushed.reference))
}

/// The concrete warm-start model: a local path made absolute (and checked),
/// an `s3://` URI as it is, and for `experiment:<name>` what the backend's
/// `latest_model` finds: the model of that experiment's newest completed
/// run on the same kind of backend.
async fn resolve_init(
    pinned: &pin::Pinned,
    backend: Backend,
    latest_model: impl AsyncFnOnce(&str, &sca_spec::ResolvedJob) -> Result<String>,
) -> Result<Option<String>> {
    let Some(init) = pinned.experiment.model.init_checkpoint.as_deref() else {
        return Ok(None);
    };
    let Some(name) = init.strip_prefix("experiment:") else {
        if init.starts_with("s3://") {
            return Ok(Some(init.to_string()));
        }
        if backend == Backend::Sagemaker {
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
    Ok(Some(latest_model(name, &pinned.resolved).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trainer is told its job's pins, which it records in every
    /// checkpoint and checks before resuming one; a rerun of a job launched
    /// before pins existed passes only what that job's trainer accepts.
    #[test]
    fn hyperparameters_carry_the_job_pins_the_trainer_knows() {
        use sca_spec::contract::KNOWN_HYPERPARAMETERS;
        let pins = JobPins {
            job_name: Some("exp-0123456-20261126-120000".into()),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            image_digest: Some("sha256:ff".into()),
            data_manifest_sha256: Some("a1".into()),
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

    /// `rerun` checks `job.max_cost_usd` where the rerun goes (`--region`),
    /// as `run` does, before it lists any data.
    #[tokio::test]
    async fn a_sagemaker_rerun_keeps_within_max_cost() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let bytes = include_str!("../../../experiments/co-train.toml")
            .replace("[job]\n", "[job]\nmax_cost_usd = 100.0\n");
        assert!(bytes.contains("max_cost_usd = 100.0"));
        let mut old = RunRecord::for_tests("co-train-0123456-20261126-120000");
        old.backend = Backend::Sagemaker;
        old.experiment_file = "experiments/co-train.toml".into();
        old.pins.experiment_sha256 = sca_data::manifest::sha256_hex(bytes.as_bytes());
        old.resolved_job.instance_type = "ml.g5.2xlarge".into();
        old.resolved_job.max_runtime_secs = 7 * 3600;
        let config = old.config_dir(root);
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(config.join("co-train.toml"), &bytes).unwrap();
        let again = |region: Option<&str>| {
            let aws = crate::aws::Session::new(None, region.map(str::to_string));
            let old = old.clone();
            async move { format!("{:#}", Plan::again(root, &old, &aws).await.unwrap_err()) }
        };
        // No price where `--region` sends it: refused, before the manifest.
        let e = again(Some("eu-west-1")).await;
        assert!(e.contains("max_cost_usd") && e.contains("eu-west-1"), "{e}");
        assert!(e.contains("nothing was launched"), "{e}");
        // Where it ran ($1.515/h x 7h): within $100, on to the manifest.
        let e = again(None).await;
        assert!(!e.contains("max_cost_usd"), "{e}");
        assert!(e.contains("data manifest"), "{e}");
    }

    /// Image flags a launch would not use are refused, not ignored: any on
    /// the local backend, and build flags or --registry beside --image.
    #[test]
    fn image_flags_a_launch_would_not_use_are_refused() {
        use clap::{Args, FromArgMatches};
        let build = |args: &[&str]| {
            let cmd = flags::ImageBuildArgs::augment_args(clap::Command::default());
            let all = [&["x"][..], args].concat();
            flags::ImageBuildArgs::from_arg_matches(&cmd.get_matches_from(all)).unwrap()
        };
        let opts = |backend, registry: Option<&str>| LaunchOptions {
            backend,
            wait: false,
            dry_run: false,
            json: false,
            registry: registry.map(str::to_string),
            aws: crate::aws::Session::default(),
        };
        let given = ImageChoice::Given("r@sha256:00");
        let none = build(&[]);
        let check = |o: &LaunchOptions, b: &flags::ImageBuildArgs, i: &ImageChoice<'_>| {
            unused_image_flags(o, b, i).map_err(|e| e.to_string())
        };
        assert!(check(&opts(Backend::Local, None), &none, &ImageChoice::Build).is_ok());
        assert!(check(&opts(Backend::Docker, None), &none, &given).is_ok());
        let e = check(&opts(Backend::Local, None), &none, &given).unwrap_err();
        assert!(
            e.starts_with("--image: image flags, but the local backend"),
            "{e}"
        );
        let e = check(
            &opts(Backend::Local, Some("127.0.0.1:5124")),
            &build(&["--no-cache", "--build-arg", "A=1"]),
            &ImageChoice::Build,
        )
        .unwrap_err();
        assert!(
            e.starts_with("--build-arg, --no-cache, --registry: image flags"),
            "{e}"
        );
        let e = check(
            &opts(Backend::Sagemaker, None),
            &build(&["--base", "b"]),
            &given,
        )
        .unwrap_err();
        assert!(
            e.starts_with("--base: flags for building or pushing an image, but --image"),
            "{e}"
        );
        // Building the commit's image, the flags are used.
        let flags = build(&["--base", "b", "--max-context-size", "2GiB"]);
        assert!(check(
            &opts(Backend::Docker, Some("r")),
            &flags,
            &ImageChoice::Build
        )
        .is_ok());
    }

    #[test]
    fn the_image_flag_takes_a_registry_reference_by_digest_only() {
        let d = format!("sha256:{}", "a".repeat(64));
        let image = parse_image_flag(&format!("127.0.0.1:5124/sca-train@{d}")).unwrap();
        assert_eq!(image.digest, d);
        for bad in ["sca-train:latest".to_string(), d] {
            let e = parse_image_flag(&bad).unwrap_err().to_string();
            assert!(e.contains("does not name an image by digest"), "{e}");
        }
    }
}
