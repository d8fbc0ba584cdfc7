//! The `train` entrypoint: read the experiment from the `/opt/ml` tree, train,
//! checkpoint, and leave the model, metrics and pictures in the model directory.
//!
//! Resumption is exact: the batch order, augmentation and initialisation are
//! pure functions of (seed, epoch, step), and a checkpoint stores the weights,
//! the optimiser state and the position within the epoch, so an interrupted
//! and resumed run ends with the same weights and metrics as an uninterrupted one.
//!
//! A run resumes only its own job's checkpoints: each records the job's
//! [`JobPins`] (job name, commit, image digest, data manifest), and a
//! checkpoint of another job in the checkpoint directory (a SageMaker
//! checkpoint prefix shared with an earlier launch) fails the run, naming
//! both jobs and the fix, instead of being reported as this job's training.
//! Nor does it resume on other compute than its checkpoint was trained on
//! ([`TrainedOn`]: the device is chosen afresh at each start, and `auto`
//! falls back to the CPU): the model would be neither run's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::checkpoint::{self, CheckpointError, Position, TrainedOn, MODEL_FILE};
use crate::data::{DataError, LoaderConfig, TrainData};
use crate::device::{Compute, DeviceError, DeviceRequest, WithDevice};
use crate::metrics::{self, Confusion, EpochMetrics, MetricsError, SplitName, TileMean};
use crate::model::{AdamWConfig, LoadError, ModelError, UNet, UNetConfig};
use crate::ops::HostDevice;
use crate::sagemaker::{
    model_files, ContractError, Hyperparameters, JobPins, OptMl, PinDifference,
};
use crate::spec::{DataManifest, Experiment};

/// Everything that can end a training run early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("invalid experiment file: {0}")]
    Invalid(String),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Synth(#[from] crate::synth::SynthError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(
        "checkpoint {} belongs to another job ({}); a job resumes only its own, never reports another's training as its own: give this job a fresh checkpoint prefix (the launcher gives each job `<job.checkpoint_s3>/<job name>/`) or delete the stale checkpoints from {} (and from the S3 prefix synced to it)",
        .path.display(),
        .differences.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        .dir.display()
    )]
    ForeignCheckpoint {
        path: PathBuf,
        dir: PathBuf,
        /// Each pin that differs, the checkpoint's value then this run's.
        differences: Vec<PinDifference>,
    },
    #[error("{0}")]
    OtherCompute(ComputeMismatch),
    #[error(
        "the validation loss of epoch {epoch} is not finite ({value}): the model diverged; \
         lower train.learning_rate, or check the data for extreme values"
    )]
    NonFiniteValidation { epoch: u32, value: f64 },
    #[error("{0}")]
    Other(String),
}

/// A checkpoint trained on other compute than this run's ([`TrainError::OtherCompute`]).
#[derive(Debug)]
pub struct ComputeMismatch {
    pub path: PathBuf,
    pub dir: PathBuf,
    /// What the checkpoint was trained on.
    pub checkpoint: TrainedOn,
    /// What this run computes on.
    pub run: TrainedOn,
}

impl std::fmt::Display for ComputeMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (was, now) = (&self.checkpoint, &self.run);
        let mut fix = Vec::new();
        if was.device != now.device {
            // Chosen afresh at each start: `auto` may have fallen back.
            fix.push(format!(
                "set {}={} where that device opens; `auto` takes the CPU when no GPU does",
                crate::device::ENV,
                was.device
            ));
        }
        if was.precision != now.precision {
            // The experiment is the same (its sha256 is checked first): the
            // precision came from another trainer's default.
            fix.push("with the trainer of the commit that wrote it".to_string());
        }
        write!(
            f,
            "checkpoint {} was trained on {was}, and this run computes on {now}: resumed, its \
             model would be neither a {was} run's nor a {now} run's; resume on the compute it \
             was trained on ({}), or start a new job (a fresh checkpoint prefix, or delete the \
             checkpoints from {} and from the S3 prefix synced to it)",
            self.path.display(),
            fix.join(", "),
            self.dir.display()
        )
    }
}

/// How a run ended without error.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every epoch ran; the last validation metrics.
    Completed { last_val: Option<EpochMetrics> },
    /// SIGTERM: the current step finished and a checkpoint was written.
    Stopped { checkpoint: PathBuf },
    /// SIGTERM before the first step (while the data was validated):
    /// nothing to checkpoint.
    StoppedBeforeTraining,
}

/// In the model directory: one line per tile validation left out (a tile
/// that did not decode), empty when none was.
pub const BAD_TILES_FILE: &str = model_files::BAD_TILES;

/// Train the experiment in `ml`'s config channel. `stop` is raised by the SIGTERM handler.
pub fn train(ml: &OptMl, stop: &Arc<AtomicBool>) -> Result<Outcome, TrainError> {
    train_with_hooks(ml, stop, &Hooks::default())
}

/// [`train`], calling `data_opened` once the data is discovered, validated
/// and split, before the model is built: the seam where tests inject faults
/// into a run (a tile that disappears after validation).
#[doc(hidden)]
pub fn train_with(
    ml: &OptMl,
    stop: &Arc<AtomicBool>,
    data_opened: &dyn Fn(&TrainData),
) -> Result<Outcome, TrainError> {
    let hooks = Hooks {
        data_opened: Some(data_opened),
        ..Hooks::default()
    };
    train_with_hooks(ml, stop, &hooks)
}

/// Where tests reach into a run.
#[doc(hidden)]
#[derive(Default)]
pub struct Hooks<'a> {
    /// Once the data is discovered, validated and split.
    pub data_opened: Option<&'a dyn Fn(&TrainData)>,
    /// At each validation batch of an epoch (1-based), before it is read.
    pub validating: Option<&'a dyn Fn(u32)>,
}

#[doc(hidden)]
pub fn train_with_hooks(
    ml: &OptMl,
    stop: &Arc<AtomicBool>,
    hooks: &Hooks<'_>,
) -> Result<Outcome, TrainError> {
    let hp = ml.hyperparameters()?;
    let exp_path = ml.experiment_file()?;
    let bytes = std::fs::read(&exp_path).map_err(|source| ContractError::Io {
        path: exp_path.clone(),
        source,
    })?;
    let sha = crate::data::manifest::sha256_hex(&bytes);
    if let Some(want) = &hp.experiment_sha256 {
        if *want != sha {
            return Err(TrainError::Invalid(format!(
                "{} has sha256 {sha} but the launcher pinned {want}: the experiment changed after launch",
                exp_path.display()
            )));
        }
    }
    let report = sca_spec::validate::validate_for_training(&exp_path.display().to_string(), &bytes);
    let Some(exp) = report.experiment else {
        let msgs: Vec<String> = report.diagnostics.iter().map(ToString::to_string).collect();
        return Err(TrainError::Invalid(msgs.join("; ")));
    };
    let base_dir = match &hp.data_base_dir {
        Some(d) => PathBuf::from(d),
        None => exp_path.parent().unwrap_or(Path::new(".")).to_path_buf(),
    };
    let rc = ml.resource_config()?;
    crate::progress!(
        "sca-train: experiment {} ({}) on {}, sha256 {sha}",
        exp.experiment.name,
        exp_path.display(),
        rc.current_host
    );
    // Before the data is read, so a wrong device setting fails at once.
    let compute =
        Compute::open(DeviceRequest::from_env_or(exp.train.device).map_err(DeviceError::from)?)?;
    // The training loop runs on this thread: its convolutions take this format.
    compute.set_precision(exp.train.precision)?;
    crate::progress!("sca-train: computing on {}", compute.describe());
    // The kind, not the GPU: a restart may get another card of the same kind.
    let trained_on = TrainedOn {
        device: compute.name().to_string(),
        precision: exp.train.precision,
    };

    let manifest = ml.data_manifest()?;
    let manifest_sha = manifest.as_ref().map(|m| m.sha256());
    if let Some(want) = &hp.pins.data_manifest_sha256 {
        if manifest_sha.as_ref() != Some(want) {
            return Err(TrainError::Other(format!(
                "the launcher pinned data manifest sha256 {want} but {} {}",
                ml.config_channel().join(DataManifest::FILE_NAME).display(),
                match &manifest_sha {
                    Some(have) => format!("has sha256 {have}"),
                    None => "does not exist".into(),
                }
            )));
        }
    }
    if let Some(s) = crate::synth::ensure_synthetic(&exp.dataset, &base_dir)? {
        crate::progress!("sca-train: generated synthetic dataset: {s:?}");
    }
    // A SIGTERM while every tile is read once (minutes on S3) stops here,
    // before SageMaker's SIGKILL: nothing is trained yet to keep.
    // The checkpoints this run writes say whose they are; it resumes only its own.
    let pins = JobPins {
        data_manifest_sha256: manifest_sha.clone(),
        ..hp.pins.clone()
    };
    let data = match TrainData::open_pinned_until(&exp, &base_dir, manifest.as_ref(), Some(stop)) {
        Err(DataError::Interrupted) => {
            crate::progress!(
                "sca-train: SIGTERM while the data was validated: stopped before training"
            );
            keep_checkpointed(ml, &pins, &sha, &bytes, exp.train.epochs);
            return Ok(Outcome::StoppedBeforeTraining);
        }
        data => data?,
    };
    if let (Some(m), Some(sha)) = (&manifest, &manifest_sha) {
        // Listing and sizes/ETags checked; every pair read once, contents checked.
        crate::progress!(
            "sca-train: data verified against manifest sha256 {sha} ({} objects)",
            m.objects.len()
        );
    }
    for bad in &data.bad {
        crate::warn!("sca-train: skipped bad tile: {bad}");
    }
    crate::progress!(
        "sca-train: {} tiles ({} train, {} val), {} skipped",
        data.index.pairs.len(),
        data.split.train.len(),
        data.split.val.len(),
        data.bad.len()
    );
    let model_dir = ml.model_dir();
    std::fs::create_dir_all(&model_dir)
        .map_err(|e| TrainError::Other(format!("cannot create {}: {e}", model_dir.display())))?;
    // A model write a kill cut short left its staged files (the size of a
    // model), which SageMaker's upload and the docker backend's archive
    // would carry: gone before anything else is written.
    discard_staged(&model_dir);
    data.write_split_ids(&model_dir)?;
    // The tiles left out (undecodable), with the model: a reader of the
    // model sees which of the manifest's tiles it was not trained on.
    let bad: String = data.bad.iter().map(|b| format!("{b}\n")).collect();
    crate::fsx::write_atomic(&model_dir.join(BAD_TILES_FILE), bad.as_bytes())
        .map_err(|e| TrainError::Other(format!("writing {BAD_TILES_FILE}: {e}")))?;
    if let Some(f) = hooks.data_opened {
        f(&data);
    }

    let cfg = UNetConfig::from_spec(&exp.model, exp.input_channels())?;
    let opt = AdamWConfig {
        lr: exp.train.learning_rate,
        weight_decay: exp.train.weight_decay,
        ..AdamWConfig::default()
    };
    compute.run(Run {
        ml,
        stop,
        validating: hooks.validating,
        hp: &hp,
        exp: &exp,
        exp_bytes: &bytes,
        sha,
        pins,
        trained_on,
        base_dir: &base_dir,
        data: &data,
        init_pin: manifest.as_ref().and_then(|m| m.init_checkpoint.as_ref()),
        model_dir: &model_dir,
        cfg,
        opt,
    })
}

/// The training loop's inputs, handed to whichever device [`train`] opened.
struct Run<'a> {
    ml: &'a OptMl,
    stop: &'a Arc<AtomicBool>,
    validating: Option<&'a dyn Fn(u32)>,
    hp: &'a Hyperparameters,
    exp: &'a Experiment,
    /// The experiment file as hashed and validated: what the model directory
    /// gets, whatever the file holds by then.
    exp_bytes: &'a [u8],
    sha: String,
    /// This run's job, recorded in every checkpoint it writes.
    pins: JobPins,
    /// What this run computes on, recorded in every checkpoint it writes too.
    trained_on: TrainedOn,
    base_dir: &'a Path,
    data: &'a TrainData,
    /// The data manifest's pin of the warm-start model.
    init_pin: Option<&'a crate::spec::ManifestObject>,
    model_dir: &'a Path,
    cfg: UNetConfig,
    opt: AdamWConfig,
}

impl WithDevice for Run<'_> {
    type Output = Result<Outcome, TrainError>;

    fn run<D: HostDevice>(self, dev: D) -> Result<Outcome, TrainError> {
        let Run {
            ml,
            stop,
            validating,
            hp,
            exp,
            exp_bytes,
            sha,
            pins,
            trained_on,
            base_dir,
            data,
            init_pin,
            model_dir,
            cfg,
            opt,
        } = self;
        let mut model = UNet::with_device(dev, cfg, exp.experiment.seed, opt)?;
        let mut pos = Position {
            experiment_sha256: sha.clone(),
            job: pins.clone(),
            trained_on: Some(trained_on.clone()),
            ..Position::default()
        };

        let ckdir = ml.checkpoint_dir();
        if let Some((path, ck)) = resume_point(&ckdir, &pins, &sha, &trained_on)? {
            let mismatch = |e: LoadError| {
                TrainError::Invalid(format!(
                    "checkpoint {}: {e}: it was written for other [model] settings; empty {} or run the matching experiment",
                    path.display(),
                    ckdir.display()
                ))
            };
            model.load_named(&ck.weights).map_err(mismatch)?;
            model.load_optimizer(&ck.optimizer).map_err(mismatch)?;
            pos = ck.position;
            // An older checkpoint does not say (it was accepted): from now on they do.
            pos.trained_on = Some(trained_on);
            crate::progress!(
                "sca-train: resuming from {} at epoch {} step {}",
                path.display(),
                pos.epoch + 1,
                pos.step
            );
            // An epoch's lines are printed after its checkpoint (below): a
            // kill between the two left them out of the log, where
            // SageMaker's metric definitions read the job's final metrics,
            // and a resume at the last epoch printed none. So again, the
            // same lines. (A mid-epoch checkpoint is written after the
            // lines of the epoch before.)
            if pos.step == 0 && pos.epoch > 0 {
                crate::progress!(
                    "sca-train: epoch {}'s metrics again, as checkpointed:",
                    pos.epoch
                );
                print_epoch(&pos.history, pos.epoch);
            }
        } else if let Some(init) = hp
            .init_checkpoint
            .as_ref()
            .or(exp.model.init_checkpoint.as_ref())
        {
            let ck = load_init(init, base_dir, init_pin)?;
            model.load_named(&ck.weights).map_err(|e| {
                TrainError::Invalid(format!(
                    "init_checkpoint {init}: {e}: a warm start needs a model of the same [model] settings and channels as this experiment"
                ))
            })?;
            // How far it was trained: a stopped job's model is one too (a
            // model without the trainer's metadata does not say).
            let trained = match ck.position.step {
                _ if ck.position.experiment_sha256.is_empty() => {
                    "how far it was trained is not recorded".to_string()
                }
                0 => format!("{} epochs trained", ck.position.epoch),
                step => format!(
                    "{} epochs and {step} steps trained: saved when its job stopped",
                    ck.position.epoch
                ),
            };
            crate::progress!("sca-train: warm start from {init} ({trained})");
        }

        let loader_cfg = LoaderConfig::new(exp.train.batch_size as usize);
        let epochs = exp.train.epochs;
        while pos.epoch < epochs {
            let epoch = pos.epoch;
            let started = Instant::now();
            let seconds = |started: Instant| pos.partial_seconds + started.elapsed().as_secs_f64();
            let (mut loss_sum, mut confusion, mut step) =
                (pos.partial_loss, pos.partial_confusion, pos.step);
            // A SIGTERM mid-epoch (after a step, or during validation): the
            // epoch's steps so far are checkpointed, and a resume goes on
            // from there (after every step, straight to validation).
            let stop_at = |model: &UNet<D>,
                           step: u32,
                           loss_sum: f64,
                           confusion: Confusion,
                           trained_secs: f64,
                           when: &str| {
                let at = Position {
                    step,
                    partial_loss: loss_sum,
                    partial_confusion: confusion,
                    partial_seconds: trained_secs,
                    ..pos.clone()
                };
                let path = checkpoint::save(
                    &ckdir,
                    &model.named_tensors(),
                    &model.optimizer_tensors(),
                    &at,
                )?;
                crate::progress!(
                    "sca-train: SIGTERM{when}: stopped after epoch {} step {step}, checkpoint {}",
                    epoch + 1,
                    path.display()
                );
                keep_partial(model, exp_bytes, &at, epochs, model_dir);
                Ok(Outcome::Stopped { checkpoint: path })
            };
            // A resumed epoch starts at its saved step: the batches already
            // trained on are not read again, and every batch read is used,
            // so a read error always ends the run, never just the epoch.
            let mut batches = data
                .train_batches_from(epoch, &loader_cfg, step as usize)
                .interrupt_on(stop.clone());
            // The limit before the read: a batch past it is never waited for.
            while exp.train.steps_per_epoch.is_none_or(|limit| step < limit) {
                let Some(batch) = batches.next() else { break };
                let batch = match batch {
                    // A SIGTERM while the next batch is read (an S3 read
                    // stalled until its timeouts): stop after the last step.
                    Err(DataError::Interrupted) => {
                        let secs = seconds(started);
                        return stop_at(
                            &model,
                            step,
                            loss_sum,
                            confusion,
                            secs,
                            " while tiles were read",
                        );
                    }
                    batch => batch?,
                };
                let (loss, logits) = model.train_step_with_logits(
                    &batch.images,
                    &batch.masks,
                    batch.len(),
                    batch.size,
                    batch.size,
                    &exp.model.loss,
                )?;
                loss_sum += loss.total;
                confusion.update(&logits, &batch.masks);
                step += 1;
                if stop.load(Ordering::SeqCst) {
                    let secs = seconds(started);
                    return stop_at(&model, step, loss_sum, confusion, secs, "");
                }
            }
            // Its readers stop now, not during validation; a SIGTERM while
            // they are waited for lets them go, and validation then stops.
            drop(batches);
            // The epoch's training time, without the validation pass after it.
            let trained_secs = seconds(started);
            let train = EpochMetrics::new(
                epoch + 1,
                SplitName::Train,
                loss_sum / f64::from(step.max(1)),
                &confusion,
                trained_secs,
            );
            let val = match evaluate(&model, data, exp, &loader_cfg, epoch + 1, stop, validating)? {
                Evaluated::Done(val) => val,
                // A validation pass can outlast SageMaker's 120 s between
                // SIGTERM and SIGKILL: the epoch's training is kept.
                Evaluated::Stopped => {
                    return stop_at(
                        &model,
                        step,
                        loss_sum,
                        confusion,
                        trained_secs,
                        " during validation",
                    )
                }
            };
            pos.history.push(train);
            pos.history.extend(val);
            pos = Position {
                epoch: epoch + 1,
                step: 0,
                partial_loss: 0.0,
                partial_confusion: Confusion::default(),
                partial_seconds: 0.0,
                ..pos
            };
            let last = pos.epoch == epochs;
            // Read once: a SIGTERM between two reads would stop without the
            // checkpoint the stop reports.
            let stopping = stop.load(Ordering::SeqCst);
            let saved = if pos.epoch.is_multiple_of(exp.train.checkpoint_every) || last || stopping
            {
                Some(checkpoint::save(
                    &ckdir,
                    &model.named_tensors(),
                    &model.optimizer_tensors(),
                    &pos,
                )?)
            } else {
                None
            };
            // Printed after the checkpoint: the epoch is saved first (a
            // resume from it prints them again, in case a kill came between).
            print_epoch(&pos.history, pos.epoch);
            if let Some(path) = saved.filter(|_| stopping && !last) {
                crate::progress!(
                    "sca-train: SIGTERM: stopped after epoch {}, checkpoint {}",
                    pos.epoch,
                    path.display()
                );
                keep_partial(&model, exp_bytes, &pos, epochs, model_dir);
                return Ok(Outcome::Stopped { checkpoint: path });
            }
        }

        finish(&model, data, exp, exp_bytes, &pos, model_dir, &loader_cfg)?;
        let last_val = pos
            .history
            .iter()
            .rev()
            .find(|m| m.split == SplitName::Val)
            .cloned();
        Ok(Outcome::Completed { last_val })
    }
}

/// Print epoch `epoch`'s (1-based) metric lines of `history`, train then
/// val: the lines SageMaker's metric definitions read from the log.
fn print_epoch(history: &[EpochMetrics], epoch: u32) {
    for m in history.iter().filter(|m| m.epoch == epoch) {
        crate::progress!("{}", m.log_line());
    }
}

/// The checkpoint of `ckdir` to resume from: the newest that reads, if it
/// is this job's (`pins`) and this experiment's (`sha`), trained on this
/// run's compute (`on`) or not saying (an older one). The newer ones
/// that do not read are set aside only then, so that neither shadows it
/// nor counts as one of the two kept: a refused run leaves another job's
/// checkpoints as they are.
fn resume_point(
    ckdir: &Path,
    pins: &JobPins,
    sha: &str,
    on: &TrainedOn,
) -> Result<Option<(PathBuf, checkpoint::Checkpoint)>, TrainError> {
    // Unlisted is not empty: a run that cannot see its checkpoints would
    // train from the start and replace them.
    let (readable, unreadable) = checkpoint::latest_readable(ckdir).map_err(|e| {
        TrainError::Other(format!(
            "{e}: whether to resume is unknown; make it a directory this process can read, \
             or remove it to train from the start"
        ))
    })?;
    let Some((path, ck)) = readable else {
        if unreadable.is_empty() {
            return Ok(None);
        }
        let why: Vec<String> = unreadable.iter().map(ToString::to_string).collect();
        // On SageMaker a restart downloads the checkpoint prefix again:
        // removed only here, they come back.
        return Err(TrainError::Other(format!(
            "no checkpoint in {} is readable ({}); to train from the start, remove them from \
             it and from the checkpoint S3 prefix synced to it (`<job.checkpoint_s3>/<job \
             name>/`), if the job has one: SageMaker downloads that prefix again at each restart",
            ckdir.display(),
            why.join("; ")
        )));
    };
    // Another job's checkpoint is never resumed: its training would
    // pass for this job's (a finished one skips training outright).
    let differences = ck.position.job.differences(pins);
    if !differences.is_empty() {
        return Err(TrainError::ForeignCheckpoint {
            path,
            dir: ckdir.to_path_buf(),
            differences,
        });
    }
    if ck.position.experiment_sha256 != sha {
        return Err(TrainError::Invalid(format!(
            "checkpoint {} was written for another experiment file (sha256 {}); empty {} or run the matching experiment",
            path.display(),
            ck.position.experiment_sha256,
            ckdir.display()
        )));
    }
    // Its weights and optimiser state, trained on, would be neither run's.
    // One that does not say (written before it was recorded) resumes as before.
    if let Some(was) = ck.position.trained_on.as_ref().filter(|&was| was != on) {
        return Err(TrainError::OtherCompute(ComputeMismatch {
            path,
            dir: ckdir.to_path_buf(),
            checkpoint: was.clone(),
            run: on.clone(),
        }));
    }
    for e in &unreadable {
        let aside = match checkpoint::set_aside(e.path()) {
            Ok(to) => format!("moved to {}", to.display()),
            Err(err) => format!("cannot move it aside: {err}"),
        };
        crate::warn!("sca-train: warning: skipping unreadable checkpoint ({aside}): {e}");
    }
    Ok(Some((path, ck)))
}

/// How a validation pass ended.
enum Evaluated {
    /// The metrics (none when the split is empty).
    Done(Option<EpochMetrics>),
    /// `stop` was raised before it ended.
    Stopped,
}

/// Validation metrics for the model as it is, unless `stop` is raised
/// first (looked at before each batch).
fn evaluate<D: HostDevice>(
    model: &UNet<D>,
    data: &TrainData,
    exp: &Experiment,
    cfg: &LoaderConfig,
    epoch: u32,
    stop: &Arc<AtomicBool>,
    validating: Option<&dyn Fn(u32)>,
) -> Result<Evaluated, TrainError> {
    if data.split.val.is_empty() {
        return Ok(Evaluated::Done(None));
    }
    let started = Instant::now();
    let (mut loss, mut confusion) = (TileMean::default(), Confusion::default());
    for batch in data.val_batches(cfg).interrupt_on(stop.clone()) {
        if let Some(f) = validating {
            f(epoch);
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(Evaluated::Stopped);
        }
        let batch = match batch {
            Err(DataError::Interrupted) => return Ok(Evaluated::Stopped),
            batch => batch?,
        };
        let logits = model.predict(&batch.images, batch.len(), batch.size, batch.size)?;
        let (value, _) = crate::loss::evaluate(&logits, &batch.masks, batch.len(), &exp.model.loss)
            .map_err(|e| TrainError::Other(e.to_string()))?;
        loss.add(value.total, batch.len())
            .map_err(|value| TrainError::NonFiniteValidation { epoch, value })?;
        confusion.update(&logits, &batch.masks);
    }
    Ok(Evaluated::Done(Some(EpochMetrics::new(
        epoch,
        SplitName::Val,
        loss.mean(),
        &confusion,
        started.elapsed().as_secs_f64(),
    ))))
}

/// The model directory's final contents: weights, the experiment as trained, metrics, plot, overlays.
fn finish<D: HostDevice>(
    model: &UNet<D>,
    data: &TrainData,
    exp: &Experiment,
    exp_bytes: &[u8],
    pos: &Position,
    dir: &Path,
    cfg: &LoaderConfig,
) -> Result<(), TrainError> {
    write_model(model, exp_bytes, pos, exp.train.epochs, dir)?;
    metrics::plot_curves(&dir.join(model_files::METRICS_PNG), &pos.history)?;
    // The pictures are a view of a model already written whole: one that
    // cannot be drawn (a tile unreadable now) is a warning, not a failed run.
    if let Err(e) = write_overlays(model, data, exp, dir, cfg) {
        crate::warn!("sca-train: warning: validation overlays not written: {e}");
    }
    crate::progress!("sca-train: wrote {}", dir.display());
    Ok(())
}

/// The model directory's weights (with `pos`, which says how far training
/// got, of `epochs`), the experiment as trained and the metrics so far.
fn write_model<D: HostDevice>(
    model: &UNet<D>,
    exp_bytes: &[u8],
    pos: &Position,
    epochs: u32,
    dir: &Path,
) -> Result<(), TrainError> {
    write_weights(&model.named_tensors(), exp_bytes, pos, epochs, dir)
}

/// [`write_model`] of `weights`, with [`model_files::PARTIAL`] beside them
/// when they are not the finished model's: a stop mid-epoch saves weights
/// trained past the last epoch in the metrics files, which readers of
/// those (the launcher's final metrics, a report) cannot tell otherwise.
///
/// A marker never describes other weights than the `model.safetensors`
/// beside it, and a stop's weights never stand without one (as a finished
/// model's do): everything is written aside first ([`stage`]), where a
/// failure (a full disk) changes nothing in place, so the earlier model
/// stays, with its own marker and metrics; then moved into place
/// ([`place`]), where a failure leaves no marker beside no weights. The
/// marker was once written first and kept when the weights were not: it
/// described weights that were an earlier stop's, or none.
fn write_weights(
    weights: &[crate::model::NamedTensor],
    exp_bytes: &[u8],
    pos: &Position,
    epochs: u32,
    dir: &Path,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| TrainError::Other(format!("cannot create {}: {e}", dir.display())))?;
    let partial = crate::sagemaker::PartialModel::new(
        epochs,
        pos.epoch,
        pos.step,
        pos.history.last().map(|m| m.epoch),
    );
    let placed = stage(weights, exp_bytes, pos, partial.as_ref(), dir)
        .and_then(|()| place(dir, partial.is_some()));
    // What was not moved into place: this write's when it failed, a killed one's.
    discard_staged(dir);
    placed
}

/// The files [`write_weights`] stages, under [`staged`] names.
const STAGED: [&str; 5] = [
    MODEL_FILE,
    model_files::EXPERIMENT,
    model_files::METRICS_JSON,
    model_files::METRICS_CSV,
    model_files::PARTIAL,
];

/// Where [`write_weights`] writes the model directory's file `name` before
/// moving it into place: hidden, and no name a reader of the directory takes.
fn staged(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.staged"))
}

/// Write the model directory's files for `pos` under their [`staged`]
/// names, the weights first: the largest write, the likeliest to fail.
fn stage(
    weights: &[crate::model::NamedTensor],
    exp_bytes: &[u8],
    pos: &Position,
    partial: Option<&crate::sagemaker::PartialModel>,
    dir: &Path,
) -> Result<(), TrainError> {
    checkpoint::write(
        &staged(dir, MODEL_FILE),
        &checkpoint::to_bytes(weights, &[], Some(pos)),
    )?;
    metrics::write_atomic(&staged(dir, model_files::EXPERIMENT), exp_bytes)?;
    metrics::write_metrics_json(&staged(dir, model_files::METRICS_JSON), &pos.history)?;
    metrics::write_metrics_csv(&staged(dir, model_files::METRICS_CSV), &pos.history)?;
    if let Some(p) = partial {
        let json = serde_json::to_string_pretty(p).expect("a marker serializes");
        metrics::write_atomic(
            &staged(dir, model_files::PARTIAL),
            format!("{json}\n").as_bytes(),
        )?;
    }
    Ok(())
}

/// Move what [`stage`] wrote into place, the marker too when `marked`
/// (else an earlier stop's is removed): renames, which a full disk does
/// not stop. The old weights go first, the marker is replaced while there
/// are none, the new weights come last: cut off between two moves (a
/// kill), the directory holds a marker without weights, which is no model,
/// never weights under another's marker, nor a stop's weights without one.
fn place(dir: &Path, marked: bool) -> Result<(), TrainError> {
    if let Err(e) = move_staged_in(dir, marked) {
        // The old weights may be gone: a marker left would describe none.
        if !dir.join(MODEL_FILE).is_file() {
            let _ = std::fs::remove_file(dir.join(model_files::PARTIAL));
        }
        return Err(e);
    }
    // The renames durable, as each staged write is: a host crash could undo some.
    crate::fsx::sync_dir(dir)
        .map_err(|e| TrainError::Other(format!("cannot sync {}: {e}", dir.display())))
}

/// [`place`]'s moves, in its order; the first that fails ends them.
fn move_staged_in(dir: &Path, marked: bool) -> Result<(), TrainError> {
    remove_present(&dir.join(MODEL_FILE))?;
    for name in [
        model_files::EXPERIMENT,
        model_files::METRICS_JSON,
        model_files::METRICS_CSV,
    ] {
        move_staged(dir, name)?;
    }
    if marked {
        move_staged(dir, model_files::PARTIAL)?;
    } else {
        remove_present(&dir.join(model_files::PARTIAL))?;
    }
    move_staged(dir, MODEL_FILE)
}

/// Rename the [`staged`] `name` of `dir` to `name`.
fn move_staged(dir: &Path, name: &str) -> Result<(), TrainError> {
    let (from, to) = (staged(dir, name), dir.join(name));
    std::fs::rename(&from, &to).map_err(|e| {
        TrainError::Other(format!(
            "cannot move {} to {}: {e}",
            from.display(),
            to.display()
        ))
    })
}

/// Remove the file `path`, if there is one.
fn remove_present(path: &Path) -> Result<(), TrainError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TrainError::Other(format!(
            "cannot remove {}: {e}",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Remove every [`staged`] file of `dir`, as far as it can.
fn discard_staged(dir: &Path) {
    for name in STAGED {
        let _ = std::fs::remove_file(staged(dir, name));
    }
}

/// On a stop (SIGTERM: `experiment stop`, SageMaker's MaxRuntime or a
/// spot reclaim), the model as trained so far, beside the checkpoint: what
/// SageMaker uploads of a stopped job is its model directory, and without
/// `checkpoint_s3` the checkpoint goes nowhere. A resumed run replaces it.
/// [`model_files::PARTIAL`] says how far it is trained, past the metrics.
/// One that cannot be written is a warning: the checkpoint is what a
/// resume needs, and the directory keeps an earlier model with the marker
/// that describes it, or none ([`write_weights`]).
fn keep_partial<D: HostDevice>(
    model: &UNet<D>,
    exp_bytes: &[u8],
    pos: &Position,
    epochs: u32,
    dir: &Path,
) {
    match write_model(model, exp_bytes, pos, epochs, dir) {
        Ok(()) => crate::progress!(
            "sca-train: the model as trained so far ({}) is in {}, described by its {}",
            match (pos.epoch, pos.step) {
                (epoch, 0) => format!("after epoch {epoch}"),
                (0, step) => format!("epoch 1, step {step}; no epoch's metrics yet"),
                (epoch, step) => format!(
                    "epoch {}, step {step}; the metrics end at epoch {epoch}",
                    epoch + 1
                ),
            },
            dir.display(),
            model_files::PARTIAL
        ),
        Err(e) => crate::warn!(
            "sca-train: warning: the model so far was not written ({} holds an earlier model \
             or none, and no {} of this stop): {e}",
            dir.display(),
            model_files::PARTIAL
        ),
    }
}

/// On a stop before training, the model of the checkpoint this run would
/// have resumed from (a restarted spot job's, stopped while it read its
/// data again), as [`keep_partial`] keeps a model: else its model
/// directory, all SageMaker uploads of it, would hold none, though epochs
/// were trained. Only a readable checkpoint of this job and experiment.
fn keep_checkpointed(ml: &OptMl, pins: &JobPins, sha: &str, exp_bytes: &[u8], epochs: u32) {
    let (path, ck) = match checkpoint::latest_readable(&ml.checkpoint_dir()) {
        Ok((Some(found), _)) => found,
        Ok((None, _)) => return,
        Err(e) => {
            crate::warn!("sca-train: warning: no checkpoint's model kept: {e}");
            return;
        }
    };
    if !ck.position.job.differences(pins).is_empty() || ck.position.experiment_sha256 != sha {
        return;
    }
    let dir = ml.model_dir();
    match write_weights(&ck.weights, exp_bytes, &ck.position, epochs, &dir) {
        Ok(()) => crate::progress!(
            "sca-train: the model of checkpoint {} is in {}",
            path.display(),
            dir.display()
        ),
        Err(e) => crate::warn!("sca-train: warning: the checkpoint's model was not written: {e}"),
    }
}

/// Prediction-vs-mask pictures for the first few validation tiles.
fn write_overlays<D: HostDevice>(
    model: &UNet<D>,
    data: &TrainData,
    exp: &Experiment,
    dir: &Path,
    _cfg: &LoaderConfig,
) -> Result<(), TrainError> {
    const COUNT: usize = 4;
    // 1-based band numbers, in the channels' order.
    let bands: Vec<usize> = exp
        .channels
        .iter()
        .flat_map(|c| c.bands.iter().map(|b| usize::from(*b)))
        .collect();
    let need = bands.iter().copied().max().unwrap_or(1);
    let size = exp.dataset.tile_size;
    for &tile in data.split.val.iter().take(COUNT) {
        let pair = &data.index.pairs[tile];
        let sample = data
            .loader()
            .load_sample(tile, None)
            .map_err(|e| TrainError::Other(e.to_string()))?;
        let logits = model.predict(&sample.image, 1, size as usize, size as usize)?;
        let bytes = data.index.imagery.read(&pair.imagery)?;
        let raw = crate::data::decode_imagery(&bytes, &pair.imagery, size, need)
            .map_err(|e| TrainError::Other(e.to_string()))?;
        let name = model_files::overlay(pair.id.z, pair.id.x, pair.id.y);
        let rgb = overlay_bands(&bands, raw.bands);
        metrics::write_overlay_png(&dir.join(name), &raw, rgb, &logits, &sample.mask)?;
    }
    Ok(())
}

/// The 1-based bands an overlay shows as red, green and blue. Planet's
/// order is B, G, R, NIR: bands 3, 2, 1, by number, not by their place in
/// `channel_bands` (listed R, G, B, the places gave blue as red), and
/// whether or not the channels use them, since the decoded tile holds
/// every band of its file. A tile of fewer bands: grey, of the channels'
/// first band.
fn overlay_bands(channel_bands: &[usize], tile_bands: usize) -> [usize; 3] {
    if tile_bands >= 3 {
        [3, 2, 1]
    } else {
        [channel_bands.first().copied().unwrap_or(1); 3]
    }
}

/// The warm-start weights `init` names: a `model.safetensors`, a checkpoint
/// file or a `model.tar.gz`, on S3 or relative to the experiment's directory;
/// checked against `pin` (the data manifest's) when the launcher pinned it.
/// Only the content is compared: the docker backend mounts the pinned file
/// under another path.
fn load_init(
    init: &str,
    base_dir: &Path,
    pin: Option<&crate::spec::ManifestObject>,
) -> Result<checkpoint::Checkpoint, TrainError> {
    if let Some(name) = init.strip_prefix("experiment:") {
        return Err(TrainError::Invalid(format!(
            "init_checkpoint `experiment:{name}` must be resolved by the launcher (`cargo xtask experiment run`), which passes the concrete checkpoint as the `init_checkpoint` hyperparameter"
        )));
    }
    let on_s3 = init.starts_with("s3://");
    let source = if on_s3 {
        PathBuf::from(init)
    } else {
        base_dir.join(init)
    };
    if !on_s3 {
        // Said as it is: a directory or an unreadable path is not "missing".
        let why = match std::fs::metadata(&source) {
            Ok(m) if m.is_dir() => Some(
                "is a directory: name the model.safetensors, checkpoint or model.tar.gz in it"
                    .to_string(),
            ),
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("does not exist".into()),
            Err(e) => Some(format!("cannot be read: {e}")),
        };
        if let Some(why) = why {
            return Err(TrainError::Invalid(format!(
                "init_checkpoint {} {why}",
                source.display()
            )));
        }
    }
    let bytes = match pin {
        Some(pin) => crate::data::manifest::read_pinned_object(init, base_dir, pin)?,
        None => crate::data::manifest::read_object(init, base_dir)?,
    };
    Ok(checkpoint::from_model_bytes(&source, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str) -> JobPins {
        JobPins {
            job_name: Some(name.into()),
            ..JobPins::default()
        }
    }

    /// A CPU run's compute, in fp32.
    fn cpu() -> TrainedOn {
        on("cpu")
    }

    fn on(device: &str) -> TrainedOn {
        TrainedOn {
            device: device.into(),
            precision: crate::spec::Precision::Fp32,
        }
    }

    /// A readable checkpoint of job `a` at epoch 1, and a newer one (epoch
    /// 2) cut short, as a crash mid-write leaves it; the latter's path.
    fn readable_and_truncated(dir: &Path, a: &JobPins) -> PathBuf {
        let at = |epoch| Position {
            epoch,
            experiment_sha256: "e".into(),
            job: a.clone(),
            ..Position::default()
        };
        checkpoint::save(dir, &[], &[], &at(1)).unwrap();
        let newer = checkpoint::save(dir, &[], &[], &at(2)).unwrap();
        let bytes = std::fs::read(&newer).unwrap();
        std::fs::write(&newer, &bytes[..bytes.len() / 2]).unwrap();
        newer
    }

    /// Another job's checkpoints are refused before anything is done to
    /// them: the newer, unreadable one of them was once renamed aside
    /// first, a refused run changing another job's checkpoint prefix.
    #[test]
    fn a_refused_run_leaves_another_jobs_unreadable_checkpoint_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let truncated = readable_and_truncated(dir.path(), &job("a"));
        let e = resume_point(dir.path(), &job("b"), "e", &cpu()).unwrap_err();
        assert!(matches!(e, TrainError::ForeignCheckpoint { .. }), "{e}");
        assert!(truncated.is_file(), "{} was moved", truncated.display());

        // Another experiment's: refused too, and nothing moved.
        let e = resume_point(dir.path(), &job("a"), "other", &cpu()).unwrap_err();
        assert!(e.to_string().contains("another experiment file"), "{e}");
        assert!(truncated.is_file(), "{} was moved", truncated.display());

        // This job's: resumed from the readable one, the other set aside.
        let (path, ck) = resume_point(dir.path(), &job("a"), "e", &cpu())
            .unwrap()
            .unwrap();
        assert_eq!(ck.position.epoch, 1, "{}", path.display());
        assert!(!truncated.exists());
        let mut aside = truncated.into_os_string();
        aside.push(".unreadable");
        assert!(Path::new(&aside).is_file());
    }

    /// A checkpoint trained on the GPU is refused by a run on the CPU (as
    /// `auto` gives one where no GPU opens), naming both and the fix, and
    /// nothing is moved; on the GPU it resumes, and one that does not say
    /// what it was trained on (written before that was recorded) resumes
    /// anywhere, as before.
    #[test]
    fn a_checkpoint_of_other_compute_is_refused_and_an_older_one_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let truncated = readable_and_truncated(dir.path(), &job("a"));
        let at = |trained_on: Option<TrainedOn>| Position {
            epoch: 1,
            experiment_sha256: "e".into(),
            job: job("a"),
            trained_on,
            ..Position::default()
        };
        let path = checkpoint::save(dir.path(), &[], &[], &at(Some(on("cuda")))).unwrap();
        let e = resume_point(dir.path(), &job("a"), "e", &cpu()).unwrap_err();
        assert!(matches!(e, TrainError::OtherCompute(_)), "{e}");
        let e = e.to_string();
        assert!(
            e.starts_with(&format!(
                "checkpoint {} was trained on cuda (fp32), and this run computes on cpu (fp32): ",
                path.display()
            )) && e.contains("set SCA_DEVICE=cuda where that device opens")
                && e.contains("or start a new job")
                && e.contains(&dir.path().display().to_string()),
            "{e}"
        );
        assert!(truncated.is_file(), "{} was moved", truncated.display());

        let (_, ck) = resume_point(dir.path(), &job("a"), "e", &on("cuda"))
            .unwrap()
            .unwrap();
        assert_eq!(ck.position.trained_on, Some(on("cuda")));

        checkpoint::save(dir.path(), &[], &[], &at(None)).unwrap();
        let (found, ck) = resume_point(dir.path(), &job("a"), "e", &cpu())
            .unwrap()
            .unwrap();
        assert_eq!((found, ck.position.trained_on), (path, None));
    }

    /// No checkpoint that reads: the fix names the checkpoint S3 prefix too,
    /// from which SageMaker downloads them again at each restart.
    #[test]
    fn no_readable_checkpoint_names_the_s3_prefix_to_empty() {
        let dir = tempfile::tempdir().unwrap();
        let truncated = readable_and_truncated(dir.path(), &job("a"));
        std::fs::remove_file(checkpoint::list(dir.path()).unwrap()[0].clone()).unwrap();
        let e = resume_point(dir.path(), &job("a"), "e", &cpu())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "no checkpoint in {} is readable",
                dir.path().display()
            )) && e.contains(&truncated.display().to_string())
                && e.contains("and from the checkpoint S3 prefix synced to it")
                && e.contains("SageMaker downloads that prefix again at each restart"),
            "{e}"
        );
        assert!(
            resume_point(&dir.path().join("none"), &job("a"), "e", &cpu())
                .unwrap()
                .is_none()
        );
    }

    /// A checkpoint directory that cannot be listed is not an empty one: a
    /// restart once trained from the start, silently, and replaced the
    /// checkpoints it could not see. (A file where the directory should be:
    /// ENOTDIR, which root meets too, unlike a permission.)
    #[test]
    fn an_unlistable_checkpoint_directory_fails_the_resume_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let ckdir = dir.path().join("checkpoints");
        std::fs::write(&ckdir, b"not a directory").unwrap();
        let e = resume_point(&ckdir, &job("a"), "e", &cpu())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "cannot list checkpoint directory {}: ",
                ckdir.display()
            )) && e.contains("remove it to train from the start"),
            "{e}"
        );
        // Missing is empty: a first run trains from the start.
        let none = dir.path().join("none");
        assert!(resume_point(&none, &job("a"), "e", &cpu())
            .unwrap()
            .is_none());
    }

    /// A stop mid-epoch saves weights trained past the last epoch in the
    /// metrics files, which once passed for that epoch's (the launcher's
    /// final metrics): `partial.json` beside them says where they stand,
    /// until the finished model replaces them.
    #[test]
    fn a_stopped_jobs_model_says_where_its_weights_stand() {
        let dir = tempfile::tempdir().unwrap();
        let epoch = |e, split| EpochMetrics::new(e, split, 0.5, &Confusion::default(), 1.0);
        let stopped = Position {
            epoch: 1,
            step: 5,
            history: vec![epoch(1, SplitName::Train), epoch(1, SplitName::Val)],
            ..Position::default()
        };
        write_weights(&[], b"x", &stopped, 3, dir.path()).unwrap();
        let marker = dir.path().join(model_files::PARTIAL);
        let read: crate::sagemaker::PartialModel =
            serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
        assert_eq!(
            (read.epochs, read.epochs_trained, read.steps_trained),
            (3, 1, 5)
        );
        assert_eq!(read.metrics_epoch, Some(1));
        assert_eq!(
            read.note,
            "saved when its job stopped: the weights are those after step 5 of epoch 2 of 3; \
             metrics.json and metrics.csv end at epoch 1 and do not describe them"
        );

        let finished = Position {
            epoch: 3,
            history: (1..=3).map(|e| epoch(e, SplitName::Val)).collect(),
            ..Position::default()
        };
        write_weights(&[], b"x", &finished, 3, dir.path()).unwrap();
        assert!(!marker.exists(), "the finished model keeps a stop's marker");
    }

    /// A stop's model that cannot be written (a full disk; here a directory
    /// where its weights are staged) leaves the earlier stop's model as it
    /// was, with the marker that describes it: the marker was once written
    /// first and kept, describing weights the directory did not hold. With
    /// room again, the marker and the weights agree, and nothing staged is
    /// left.
    #[test]
    fn a_failed_model_write_keeps_the_earlier_model_with_its_marker() {
        let dir = tempfile::tempdir().unwrap();
        let at = |step| Position {
            step,
            ..Position::default()
        };
        let read = |dir: &Path| {
            let marker: crate::sagemaker::PartialModel =
                serde_json::from_slice(&std::fs::read(dir.join(model_files::PARTIAL)).unwrap())
                    .unwrap();
            let weights = checkpoint::read(&dir.join(MODEL_FILE)).unwrap().position;
            (marker.steps_trained, weights.step)
        };
        write_weights(&[], b"x", &at(1), 3, dir.path()).unwrap();
        let blocked = staged(dir.path(), MODEL_FILE);
        std::fs::create_dir_all(blocked.join("x")).unwrap();
        let e = write_weights(&[], b"x", &at(5), 3, dir.path()).unwrap_err();
        assert!(matches!(e, TrainError::Checkpoint(_)), "{e}");
        assert_eq!(read(dir.path()), (1, 1), "the earlier stop's, as it was");

        std::fs::remove_dir_all(&blocked).unwrap();
        write_weights(&[], b"x", &at(5), 3, dir.path()).unwrap();
        assert_eq!(read(dir.path()), (5, 5));
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "experiment.toml",
                "metrics.csv",
                "metrics.json",
                "model.safetensors",
                "partial.json"
            ]
        );
    }

    /// The overlay's colours are Planet's bands 3, 2, 1 (R, G, B) whatever
    /// order the channels list them in: `[[3, 2, 1]]` once showed band 1
    /// (blue) as red, band 3 (red) as blue.
    #[test]
    fn overlay_colours_follow_band_numbers_not_channel_order() {
        for channels in [
            &[1, 2, 3, 4][..],
            &[3, 2, 1],
            &[4, 3, 2, 1],
            &[2, 1, 3],
            &[3, 4],
        ] {
            assert_eq!(overlay_bands(channels, 4), [3, 2, 1], "{channels:?}");
        }
        // Fewer than three bands in the tile: grey.
        assert_eq!(overlay_bands(&[2, 1], 2), [2, 2, 2]);
        assert_eq!(overlay_bands(&[1], 1), [1, 1, 1]);

        // Band b of the tile is b / 10 everywhere: red shows band 3, blue band 1.
        let tile = crate::data::RawTile {
            width: 1,
            height: 1,
            bands: 4,
            data: vec![0.1, 0.2, 0.3, 0.4],
        };
        let img =
            metrics::overlay_image(&tile, overlay_bands(&[3, 2, 1], 4), &[-1.0], &[0.0]).unwrap();
        let [r, g, b] = img.get_pixel(0, 0).0;
        assert!(r > g && g > b, "{:?}", [r, g, b]);
    }

    /// A warm start from a directory is said to be one, not "does not
    /// exist" (which sent the reader looking for a typo).
    #[test]
    fn an_init_checkpoint_that_is_a_directory_is_said_to_be_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("model")).unwrap();
        let e = load_init("model", dir.path(), None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "invalid experiment file: init_checkpoint {} is a directory: name the \
                 model.safetensors, checkpoint or model.tar.gz in it",
                dir.path().join("model").display()
            )
        );
        let e = load_init("gone", dir.path(), None).unwrap_err().to_string();
        assert!(e.ends_with("gone does not exist"), "{e}");
        // A path through a file: not a directory, not missing either.
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let e = load_init("f/model.safetensors", dir.path(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("f/model.safetensors cannot be read: "), "{e}");
    }
}
