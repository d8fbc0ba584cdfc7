//! `sca-train train` end to end against an emulated `/opt/ml` tree: a run is
//! reproducible bit for bit, resuming after SIGTERM or SIGKILL ends exactly
//! where an uninterrupted run does (without reading the batches it skips,
//! and from the previous checkpoint when the newest does not read),
//! bad input ends with a failure file,
//! data that changed since launch (per the data manifest) is refused, and a
//! checkpoint of another job, or one trained on another device, is refused
//! rather than resumed.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sca_train::checkpoint::{self, Position, TrainedOn, MODEL_FILE};
use sca_train::sagemaker::OptMl;
use sca_train::spec::DataManifest;
use sca_train::train::{train, train_with, Outcome, TrainError};

const EPOCHS: u32 = 3;

fn experiment(data: &Path) -> String {
    format!(
        r#"
[experiment]
name = "train-test"
seed = 11

[dataset]
imagery = "{data}"
masks = "{data}"
imagery_regex = "_AnalyticMS_SR_clip_tiled$"
mask_regex = "_binary$"
tile_size = 64
train_fraction = 0.75
block_zoom = 13

[[channels]]
bands = [1, 2, 3, 4]
mean = [0.35, 0.35, 0.35, 0.35]
std = [0.25, 0.25, 0.25, 0.25]

[[classes]]
name = "snow"
color = "pink"

[model]
depth = 2
base_width = 4
loss = {{ bce = 1.0, lovasz = 0.5 }}

[train]
epochs = {EPOCHS}
batch_size = 4
learning_rate = 0.01
checkpoint_every = 1
"#,
        data = data.display()
    )
}

/// A fresh `/opt/ml` tree with the experiment in its config channel, over a shared synthetic dataset.
fn tree(data: &Path) -> (tempfile::TempDir, OptMl) {
    let dir = tempfile::tempdir().unwrap();
    let ml = OptMl::at(dir.path());
    std::fs::create_dir_all(ml.channel("config")).unwrap();
    std::fs::write(ml.channel("config").join("exp.toml"), experiment(data)).unwrap();
    (dir, ml)
}

fn dataset() -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    sca_train::synth::synth(data.path(), 24, 5, 64, 15).unwrap();
    data
}

/// The final weights, bit for bit.
fn weights(ml: &OptMl) -> Vec<(String, Vec<u32>)> {
    let ck = checkpoint::read(&ml.model_dir().join(MODEL_FILE)).unwrap();
    ck.weights
        .into_iter()
        .map(|(n, _, v)| (n, v.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

/// metrics.json without the wall-clock `seconds`.
fn metrics(ml: &OptMl) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ml.model_dir().join("metrics.json")).unwrap())
            .unwrap();
    for m in v.as_array_mut().unwrap() {
        m.as_object_mut().unwrap().remove("seconds");
    }
    v
}

fn run_to_end(ml: &OptMl) {
    let outcome = train(ml, &Arc::new(AtomicBool::new(false))).unwrap();
    assert!(matches!(outcome, Outcome::Completed { .. }), "{outcome:?}");
}

/// `b` ended exactly where `a` did: the same weights bit for bit and the
/// same metrics (but the wall-clock times).
fn same_result(a: &OptMl, b: &OptMl, how: &str) {
    assert!(weights(a) == weights(b), "{how}: the weights differ");
    assert_eq!(metrics(a), metrics(b), "{how}: the metrics differ");
}

/// Train with SIGTERM raised once the data is validated: the run stops
/// after its first step.
fn stop_at_first_step(ml: &OptMl) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    train_with(ml, &stop, &|_| stop.store(true, Ordering::SeqCst)).unwrap()
}

/// A SIGTERM before training (raised while the data is validated) stops
/// the run there, before SageMaker's SIGKILL, with nothing to checkpoint;
/// the trainer exits as a stopped one does (143, no failure).
#[test]
fn a_sigterm_during_data_validation_stops_before_training() {
    let data = dataset();
    let (_c, c) = tree(data.path());
    let outcome = train(&c, &Arc::new(AtomicBool::new(true))).unwrap();
    assert!(
        matches!(outcome, Outcome::StoppedBeforeTraining),
        "{outcome:?}"
    );
    assert_eq!(
        std::fs::read_dir(c.checkpoint_dir()).map_or(0, |d| d.count()),
        0
    );
    assert!(!c.model_dir().join(MODEL_FILE).exists());
}

/// A restarted run (a reclaimed spot instance's, its checkpoints synced
/// back, its model directory new) stopped while it reads its data again
/// keeps its checkpoint's model in the model directory, the only one
/// SageMaker uploads: the epochs trained before the restart are not lost.
#[test]
fn a_restart_stopped_before_training_keeps_its_checkpoints_model() {
    let data = dataset();
    let (_c, c) = tree(data.path());
    let checkpoint = stopped(stop_at_first_step(&c));
    std::fs::remove_dir_all(c.model_dir()).unwrap();
    let outcome = train(&c, &Arc::new(AtomicBool::new(true))).unwrap();
    assert!(
        matches!(outcome, Outcome::StoppedBeforeTraining),
        "{outcome:?}"
    );
    let kept = checkpoint::read(&c.model_dir().join(MODEL_FILE)).unwrap();
    let at = checkpoint::read(&checkpoint).unwrap();
    assert_eq!(kept.position, at.position);
    assert_eq!(kept.weights.len(), at.weights.len());
    assert_eq!(
        std::fs::read(c.model_dir().join("experiment.toml")).unwrap(),
        std::fs::read(c.channel("config").join("exp.toml")).unwrap()
    );
}

/// The checkpoint of a run that stopped.
fn stopped(outcome: Outcome) -> std::path::PathBuf {
    match outcome {
        Outcome::Stopped { checkpoint } => checkpoint,
        other => panic!("{other:?}"),
    }
}

#[test]
fn reproducible_and_resumable() {
    let data = dataset();
    let (_a, a) = tree(data.path());
    run_to_end(&a);
    for f in [
        "metrics.csv",
        "metrics.png",
        "train_ids.txt",
        "val_ids.txt",
        "experiment.toml",
        "bad_tiles.txt",
    ] {
        assert!(a.model_dir().join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        std::fs::read_to_string(a.model_dir().join("bad_tiles.txt")).unwrap(),
        "",
        "no tile left out"
    );
    let m = metrics(&a);
    assert_eq!(
        m.as_array().unwrap().len(),
        2 * EPOCHS as usize,
        "train and val per epoch"
    );
    let first_val = m[1]["loss"].as_f64().unwrap();
    let last_val = m[2 * EPOCHS as usize - 1]["loss"].as_f64().unwrap();
    assert!(
        last_val < first_val,
        "validation loss should fall: {first_val} -> {last_val}"
    );

    // The same experiment and seed: identical weights and metrics.
    let (_b, b) = tree(data.path());
    run_to_end(&b);
    same_result(&a, &b, "two runs of the same experiment differ");

    // Stopped after its first step (as by SIGTERM), then resumed mid-epoch.
    let (_c, c) = tree(data.path());
    let checkpoint = stopped(stop_at_first_step(&c));
    assert!(
        checkpoint
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains("e00000-s000001"),
        "{checkpoint:?}"
    );
    // The model so far is kept beside the checkpoint: what SageMaker
    // uploads of a stopped job (its MaxRuntime reached, say).
    let partial = checkpoint::read(&c.model_dir().join(MODEL_FILE)).unwrap();
    assert_eq!((partial.position.epoch, partial.position.step), (0, 1));
    assert_eq!(
        std::fs::read(c.model_dir().join("experiment.toml")).unwrap(),
        std::fs::read(c.channel("config").join("exp.toml")).unwrap()
    );
    run_to_end(&c);
    same_result(
        &a,
        &c,
        "a run resumed mid-epoch differs from an uninterrupted one",
    );
}

/// A SIGTERM while an epoch is validated (a pass that can outlast
/// SageMaker's 120 s grace) stops at once with the epoch's training
/// checkpointed; the resume validates that epoch and ends exactly where an
/// uninterrupted run does.
#[test]
fn a_stop_during_validation_keeps_the_epochs_training() {
    use sca_train::train::{train_with_hooks, Hooks};
    let data = dataset();
    let (_a, a) = tree(data.path());
    run_to_end(&a);

    let (_c, c) = tree(data.path());
    let stop = Arc::new(AtomicBool::new(false));
    let calls = std::sync::atomic::AtomicU32::new(0);
    let raise = |epoch: u32| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if epoch == 2 {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    };
    let hooks = Hooks {
        validating: Some(&raise),
        ..Hooks::default()
    };
    let outcome = train_with_hooks(&c, &stop, &hooks).unwrap();
    let checkpoint = stopped(outcome);
    let at = checkpoint::read(&checkpoint).unwrap().position;
    assert_eq!(at.epoch, 1, "epoch 2 (0-based 1) was in progress");
    assert!(at.step > 0, "its training steps are kept: {at:?}");
    let first_epoch_batches = calls.load(std::sync::atomic::Ordering::SeqCst) - 1;
    assert!(first_epoch_batches > 0);
    assert_eq!(
        at.history.len(),
        2,
        "epoch 1's train and val, not epoch 2's: {:?}",
        at.history
    );
    // The model directory's weights are epoch 2's so far, its metrics end
    // at epoch 1: `partial.json` says so, for readers of the metrics.
    let marker = c.model_dir().join("partial.json");
    let partial: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    assert_eq!(partial["epochs_trained"], 1, "{partial}");
    assert_eq!(partial["steps_trained"], at.step, "{partial}");
    assert_eq!(partial["metrics_epoch"], 1, "{partial}");
    assert_eq!(metrics(&c).as_array().unwrap().len(), 2);
    run_to_end(&c);
    assert!(!marker.exists(), "the finished model is not a partial one");
    same_result(
        &a,
        &c,
        "a run stopped during validation and resumed differs from an uninterrupted one",
    );
}

/// A stop whose model cannot be written (a full disk; here a directory
/// where its weights go) leaves no `partial.json` claiming it: the marker
/// was once written before the weights and kept, saying "the weights are
/// those after step 2" beside an earlier stop's, or none. A later stop's
/// marker and weights agree, and the finished model has no marker.
#[test]
fn a_stop_whose_model_is_not_written_leaves_no_marker_claiming_it() {
    let data = dataset();
    let (_c, c) = tree(data.path());
    let dir = c.model_dir();
    let (marker, model) = (dir.join("partial.json"), dir.join(MODEL_FILE));
    let marked = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap()
    };
    stop_after_first_step(&c);
    assert_eq!(marked()["steps_trained"], 1);

    std::fs::remove_file(&model).unwrap();
    std::fs::create_dir_all(model.join("blocker")).unwrap();
    let at = checkpoint::read(&stopped(stop_at_first_step(&c)))
        .unwrap()
        .position;
    assert_eq!((at.epoch, at.step), (0, 2), "stopped again, a step later");
    assert!(
        !marker.exists(),
        "a marker beside no weights: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            sca_train::sagemaker::model_files::is_trainer_file(&name),
            "`{name}` left in the model directory"
        );
    }

    std::fs::remove_dir_all(&model).unwrap();
    stop_after_first_step(&c);
    let kept = checkpoint::read(&model).unwrap().position;
    assert_eq!((kept.epoch, kept.step), (0, 3));
    assert_eq!(
        marked()["steps_trained"],
        kept.step,
        "the marker describes the weights"
    );
    run_to_end(&c);
    assert!(!marker.exists(), "the finished model keeps a stop's marker");
    let done = checkpoint::read(&model).unwrap().position;
    assert_eq!((done.epoch, done.step), (EPOCHS, 0));
}

/// A resumed epoch reports the time of all its steps, the ones before the
/// stop included, not only those after the resume.
#[test]
fn a_resumed_epoch_counts_the_time_before_the_stop() {
    let data = dataset();
    let (_c, c) = one_epoch_tree(data.path());
    let checkpoint = stopped(stop_at_first_step(&c));
    let before = checkpoint::read(&checkpoint)
        .unwrap()
        .position
        .partial_seconds;
    assert!(
        before > 0.0,
        "the stopped step's time is not kept: {before}"
    );
    run_to_end(&c);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.model_dir().join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(m[0]["split"], "train");
    let seconds = m[0]["seconds"].as_f64().unwrap();
    assert!(
        seconds >= before,
        "epoch 1 took {seconds} s, its first step alone {before} s"
    );
}

/// [`tree`] with a one-epoch experiment, so a tile removed during a run is
/// read only by that epoch.
fn one_epoch_tree(data: &Path) -> (tempfile::TempDir, OptMl) {
    let (dir, ml) = tree(data);
    let exp = experiment(data).replace(&format!("epochs = {EPOCHS}"), "epochs = 1");
    std::fs::write(ml.channel("config").join("exp.toml"), exp).unwrap();
    (dir, ml)
}

/// Train until the first step's checkpoint (as after a SIGTERM).
fn stop_after_first_step(ml: &OptMl) {
    let outcome = stop_at_first_step(ml);
    assert!(matches!(outcome, Outcome::Stopped { .. }), "{outcome:?}");
}

/// Resume `ml`, removing (after validation) the imagery of the tile at
/// position `at` of the first epoch's order; the path removed and the result.
fn resume_losing_tile(ml: &OptMl, at: usize) -> (String, Result<Outcome, TrainError>) {
    let removed = std::sync::Mutex::new(String::new());
    let r = train_with(ml, &Arc::new(AtomicBool::new(false)), &|data| {
        let pair = &data.index.pairs[data.train_order(0)[at]];
        let path = data.index.imagery.uri(&pair.imagery);
        std::fs::remove_file(&path).unwrap();
        *removed.lock().unwrap() = path;
    });
    (removed.into_inner().unwrap(), r)
}

/// A run resumed mid-epoch never reads the batches it already trained on:
/// a tile of the skipped first batch that became unreadable changes nothing
/// (it once ended the epoch early, and the run completed with other
/// weights), and one after the resume point fails the run, naming the file.
#[test]
fn resume_skips_without_reading_and_read_errors_fail_the_run() {
    let data = dataset();
    let (_a, a) = one_epoch_tree(data.path());
    run_to_end(&a);
    let (_c, c) = one_epoch_tree(data.path());
    stop_after_first_step(&c);
    // Batch 0 (batch_size 4) is positions 0..4 of the order.
    let (_, outcome) = resume_losing_tile(&c, 0);
    assert!(
        matches!(outcome, Ok(Outcome::Completed { .. })),
        "{outcome:?}"
    );
    same_result(
        &a,
        &c,
        "resumed past an unreadable skipped tile, the weights differ",
    );

    let data = dataset();
    let (_d, d) = one_epoch_tree(data.path());
    stop_after_first_step(&d);
    let (removed, outcome) = resume_losing_tile(&d, 5);
    let e = outcome.unwrap_err().to_string();
    assert!(e.contains(&removed) && e.contains("cannot read"), "{e}");
    // The failed resume wrote no model: the one there is the stop's.
    let kept = checkpoint::read(&d.model_dir().join(MODEL_FILE)).unwrap();
    assert_eq!((kept.position.epoch, kept.position.step), (0, 1));
}

/// The model directory gets the experiment as it was hashed, validated and
/// trained, not whatever the file holds when the run ends.
#[test]
fn the_model_keeps_the_experiment_it_was_trained_on() {
    let data = dataset();
    let (_d, ml) = one_epoch_tree(data.path());
    let file = ml.channel("config").join("exp.toml");
    let trained = std::fs::read(&file).unwrap();
    let r = train_with(&ml, &Arc::new(AtomicBool::new(false)), &|_| {
        std::fs::write(&file, "# edited during the run\n").unwrap();
    });
    assert!(matches!(r, Ok(Outcome::Completed { .. })), "{r:?}");
    let kept = std::fs::read(ml.model_dir().join("experiment.toml")).unwrap();
    assert!(kept == trained, "{}", String::from_utf8_lossy(&kept));
}

/// The hyperparameters the launcher passes for job `job` at `commit`.
fn as_job(ml: &OptMl, job: &str, commit: &str) {
    std::fs::create_dir_all(ml.config_dir()).unwrap();
    std::fs::write(
        ml.config_dir().join("hyperparameters.json"),
        format!(r#"{{"job_name": "{job}", "commit": "{commit}", "image_digest": "sha256:aa"}}"#),
    )
    .unwrap();
}

/// Two launches sharing a checkpoint directory (as two SageMaker jobs of one
/// experiment once shared `job.checkpoint_s3`): the second finds the first's
/// finished checkpoint and fails, naming both jobs and the fix, with a
/// failure file and no model (before: it resumed the finished checkpoint,
/// skipped training and reported the first job's weights as its own). The
/// same job still resumes its own checkpoint, bit for bit.
#[test]
fn a_checkpoint_of_another_job_is_refused_and_the_same_job_resumes() {
    let data = dataset();
    let (_a, a) = one_epoch_tree(data.path());
    as_job(&a, "train-test-a", "c1");
    run_to_end(&a);
    let (want_weights, want_metrics) = (weights(&a), metrics(&a));
    let kept = checkpoint::list(&a.checkpoint_dir()).unwrap();
    assert!(!kept.is_empty());
    let position = checkpoint::read(kept.last().unwrap()).unwrap().position;
    assert_eq!(position.job.job_name.as_deref(), Some("train-test-a"));
    assert_eq!(position.job.commit.as_deref(), Some("c1"));
    assert_eq!(position.job.image_digest.as_deref(), Some("sha256:aa"));

    std::fs::remove_dir_all(a.model_dir()).unwrap();
    as_job(&a, "train-test-b", "c1");
    fails_with(
        &a,
        "belongs to another job (job_name `train-test-a` there, `train-test-b` here)",
    );
    let failure = std::fs::read_to_string(a.failure_file()).unwrap();
    assert!(
        failure.contains(&kept.last().unwrap().display().to_string())
            && failure.contains("fresh checkpoint prefix")
            && failure.contains(&format!(
                "delete the stale checkpoints from {}",
                a.checkpoint_dir().display()
            )),
        "{failure}"
    );
    assert!(
        !a.model_dir().join(MODEL_FILE).exists(),
        "no model: nothing was trained"
    );
    assert_eq!(
        checkpoint::list(&a.checkpoint_dir()).unwrap(),
        kept,
        "the other job's checkpoints are left as they are"
    );
    // The same job name at another commit is another launch too, and a
    // run without the launcher's pins takes no job's checkpoint.
    as_job(&a, "train-test-a", "c2");
    fails_with(&a, "(commit `c1` there, `c2` here)");
    std::fs::remove_file(a.config_dir().join("hyperparameters.json")).unwrap();
    fails_with(&a, "job_name `train-test-a` there, unset here");

    let (_c, c) = one_epoch_tree(data.path());
    as_job(&c, "train-test-c", "c1");
    stop_after_first_step(&c);
    run_to_end(&c);
    assert!(
        weights(&c) == want_weights,
        "the job resumed from its own checkpoint differs from an uninterrupted run"
    );
    assert_eq!(metrics(&c), want_metrics);
}

/// A checkpoint says what it was trained on, and a resume on another device
/// (a GPU job restarted where `auto` fell back to the CPU) fails with a
/// failure file naming both and the fix, leaving the checkpoint as it is,
/// instead of going on to a model that is neither run's. One written before
/// that was recorded resumes as before, bit for bit.
#[test]
fn a_checkpoint_trained_on_another_device_is_refused_and_an_older_one_resumes() {
    let data = dataset();
    let (_a, a) = one_epoch_tree(data.path());
    run_to_end(&a);
    let (_c, c) = one_epoch_tree(data.path());
    stop_after_first_step(&c);
    let kept = checkpoint::latest(&c.checkpoint_dir()).unwrap().unwrap();
    let ck = checkpoint::read(&kept).unwrap();
    let cpu = TrainedOn {
        device: "cpu".into(),
        precision: sca_train::spec::Precision::Fp32,
    };
    assert_eq!(ck.position.trained_on.as_ref(), Some(&cpu));
    let rewrite = |trained_on: Option<TrainedOn>| {
        let position = Position {
            trained_on,
            ..ck.position.clone()
        };
        let bytes = checkpoint::to_bytes(&ck.weights, &ck.optimizer, Some(&position));
        checkpoint::write(&kept, &bytes).unwrap();
    };

    rewrite(Some(TrainedOn {
        device: "cuda".into(),
        ..cpu.clone()
    }));
    // And a model write that a kill cut short left its staged weights: gone
    // at the start, before anything can fail (SageMaker's upload of the
    // model directory would carry them).
    let staged = c.model_dir().join(".model.safetensors.staged");
    std::fs::write(&staged, b"cut short").unwrap();
    fails_with(
        &c,
        &format!(
            "checkpoint {} was trained on cuda (fp32), and this run computes on cpu (fp32)",
            kept.display()
        ),
    );
    let failure = std::fs::read_to_string(c.failure_file()).unwrap();
    assert!(
        failure.contains("set SCA_DEVICE=cuda") && failure.contains("start a new job"),
        "{failure}"
    );
    assert_eq!(
        checkpoint::list(&c.checkpoint_dir()).unwrap(),
        std::slice::from_ref(&kept)
    );
    assert!(!staged.exists(), "{} is left", staged.display());

    rewrite(None);
    run_to_end(&c);
    same_result(&a, &c, "resumed from a checkpoint of no recorded device");
    let last = checkpoint::latest(&c.checkpoint_dir()).unwrap().unwrap();
    let recorded = checkpoint::read(&last).unwrap().position.trained_on;
    assert_eq!(recorded, Some(cpu), "the resumed run records its device");
}

/// A newest checkpoint that does not read (truncated, as by a crash before
/// its data reached the disk) is set aside and the run resumes from the one
/// kept before it, ending where an uninterrupted run does.
#[test]
fn an_unreadable_newest_checkpoint_resumes_from_the_previous_one() {
    let data = dataset();
    let (_a, a) = tree(data.path());
    run_to_end(&a);
    let (_c, c) = tree(data.path());
    stop_after_first_step(&c);
    let kept = checkpoint::latest(&c.checkpoint_dir()).unwrap().unwrap();
    let bytes = std::fs::read(&kept).unwrap();
    let newest = c
        .checkpoint_dir()
        .join("checkpoint-e00001-s000000.safetensors");
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    run_to_end(&c);
    same_result(
        &a,
        &c,
        "resumed from the previous checkpoint, the weights differ",
    );
    assert!(c
        .checkpoint_dir()
        .join("checkpoint-e00001-s000000.safetensors.unreadable")
        .is_file());

    // Nothing readable: a clear error, not a silent start from scratch.
    let (_d, d) = tree(data.path());
    std::fs::create_dir_all(d.checkpoint_dir()).unwrap();
    std::fs::write(d.checkpoint_dir().join(newest.file_name().unwrap()), b"x").unwrap();
    let e = train(&d, &Arc::new(AtomicBool::new(false)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no checkpoint in") && e.contains("checkpoint-e00001-s000000"),
        "{e}"
    );
}

/// A warm start (`init_checkpoint`, as the launcher passes it) from a
/// finished run's `model.safetensors`, or from the `model.tar.gz` SageMaker
/// packs its model directory into, loads the same weights, and training
/// continues from them.
#[test]
fn warm_start_from_a_model_or_its_archive() {
    let data = dataset();
    let (_a, a) = tree(data.path());
    run_to_end(&a);
    let archive = a.model_dir().with_file_name("model.tar.gz");
    let ok = Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(a.model_dir())
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar czf");
    let warm = |init: &Path| {
        let (dir, ml) = tree(data.path());
        std::fs::create_dir_all(ml.config_dir()).unwrap();
        std::fs::write(
            ml.config_dir().join("hyperparameters.json"),
            serde_json::json!({ "init_checkpoint": init.display().to_string() }).to_string(),
        )
        .unwrap();
        run_to_end(&ml);
        (dir, ml)
    };
    let (_b, from_model) = warm(&a.model_dir().join(MODEL_FILE));
    let (_c, from_archive) = warm(&archive);
    assert!(
        weights(&from_model) == weights(&from_archive),
        "a warm start from model.tar.gz differs from one from its model.safetensors"
    );
    let first_train_loss = |ml: &OptMl| metrics(ml)[0]["loss"].as_f64().unwrap();
    assert!(
        first_train_loss(&from_model) < first_train_loss(&a),
        "a warm-started run's first epoch should start from the trained weights: {} vs {}",
        first_train_loss(&from_model),
        first_train_loss(&a)
    );

    // A model of other [model] settings is named, with the fix.
    let (_d, wider) = tree(data.path());
    let exp = experiment(data.path()).replace("base_width = 4", "base_width = 8");
    std::fs::write(wider.channel("config").join("exp.toml"), exp).unwrap();
    std::fs::create_dir_all(wider.config_dir()).unwrap();
    std::fs::write(
        wider.config_dir().join("hyperparameters.json"),
        serde_json::json!({ "init_checkpoint": archive.display().to_string() }).to_string(),
    )
    .unwrap();
    let e = train(&wider, &Arc::new(AtomicBool::new(false)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("init_checkpoint {}", archive.display()))
            && e.contains("same [model] settings"),
        "{e}"
    );
}

/// `predict` of `ml`'s model on the tiles under `data`, into `out`.
fn predict_options(ml: &OptMl, data: &Path, out: &Path) -> sca_train::predict::PredictOptions {
    sca_train::predict::PredictOptions {
        model_dir: ml.model_dir(),
        input: data.display().to_string(),
        regex: None,
        out: out.to_path_buf(),
        partial: false,
    }
}

/// `predict` on the training data reproduces, pixel for pixel, the last
/// epoch's validation confusion matrix: the same decoding, normalisation,
/// weights and threshold as training's own evaluation. Its files are a 0/255
/// PNG and a 0/1 single-band GeoTIFF per tile, in the input's layout.
#[test]
fn predict_agrees_with_the_validation_metrics() {
    use sca_train::predict::{predict, PredictOptions};
    use sca_train::synth::{IMAGERY_DIR, MASK_DIR};

    let data = dataset();
    let (_a, a) = tree(data.path());
    run_to_end(&a);
    let out = tempfile::tempdir().unwrap();
    let opts = predict_options(&a, data.path(), out.path());
    let written = predict(&opts).unwrap();
    assert_eq!(written, 24, "one prediction per imagery tile");

    let val_ids = std::fs::read_to_string(a.model_dir().join("val_ids.txt")).unwrap();
    let (mut tp, mut fp, mut tn, mut fn_) = (0u64, 0u64, 0u64, 0u64);
    for id in val_ids.lines() {
        let stem = out.path().join(IMAGERY_DIR).join(id);
        let png = image::open(stem.with_extension("png")).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (64, 64), "{id}");
        let tif = std::fs::read(stem.with_extension("tif")).unwrap();
        let mut dec = tiff::decoder::Decoder::new(std::io::Cursor::new(tif)).unwrap();
        assert_eq!(dec.colortype().unwrap(), tiff::ColorType::Gray(8), "{id}");
        let tiff::decoder::DecodingResult::U8(pred) = dec.read_image().unwrap() else {
            panic!("{id}: GeoTIFF is not 8-bit")
        };
        // The class in its colour (pink) on black.
        assert!(
            pred.iter()
                .zip(png.pixels())
                .all(|(&t, p)| t <= 1 && p.0 == if t == 1 { [255, 192, 203] } else { [0; 3] }),
            "{id}: PNG and GeoTIFF disagree, or values outside 0/1"
        );
        let truth = sca_train::data::decode_mask(
            &std::fs::read(data.path().join(MASK_DIR).join(id).with_extension("tif")).unwrap(),
            id,
            64,
        )
        .unwrap();
        for (&p, &t) in pred.iter().zip(&truth) {
            match (p == 1, t == 1) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, false) => tn += 1,
                (false, true) => fn_ += 1,
            }
        }
    }
    let m = metrics(&a);
    let last_val = &m[2 * EPOCHS as usize - 1];
    assert_eq!(last_val["split"], "val");
    let c = &last_val["confusion"];
    assert_eq!(
        (tp, fp, tn, fn_),
        (
            c["tp"].as_u64().unwrap(),
            c["fp"].as_u64().unwrap(),
            c["tn"].as_u64().unwrap(),
            c["fn"].as_u64().unwrap()
        ),
        "predict's masks disagree with training's validation confusion matrix"
    );

    // A directory that is not a model directory is named, not a panic.
    let err = predict(&PredictOptions {
        model_dir: out.path().to_path_buf(),
        ..opts
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("experiment.toml") && err.contains("model directory"),
        "{err}"
    );
}

/// predict refuses what would give wrong or lost masks (an experiment file
/// the weights were not trained on, two files of one tile, the input as
/// the output) and skips, listing them, the tiles that do not decode.
#[test]
fn predict_checks_its_inputs_and_skips_bad_tiles() {
    use sca_train::predict::{predict, PredictOptions, SKIPPED_FILE};
    use sca_train::synth::IMAGERY_DIR;

    let data = dataset();
    let (_a, a) = one_epoch_tree(data.path());
    run_to_end(&a);
    let out = tempfile::tempdir().unwrap();
    let opts = predict_options(&a, data.path(), out.path());
    let fails = |o: &PredictOptions, needle: &str| {
        let e = predict(o).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    };
    // The input as the output: its GeoTIFFs would be replaced.
    fails(
        &PredictOptions {
            out: data.path().to_path_buf(),
            ..opts.clone()
        },
        "would replace the imagery",
    );
    // An experiment file other than the one trained on.
    let exp = a.model_dir().join("experiment.toml");
    let trained = std::fs::read_to_string(&exp).unwrap();
    std::fs::write(&exp, trained.replace("mean = [0.35", "mean = [0.45")).unwrap();
    fails(&opts, "is not the experiment");
    std::fs::write(&exp, &trained).unwrap();

    // One tile that does not decode is skipped and listed.
    let tiles: Vec<_> = walk(&data.path().join(IMAGERY_DIR))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tif"))
        .collect();
    std::fs::write(&tiles[0], b"not a tile").unwrap();
    assert_eq!(predict(&opts).unwrap(), tiles.len() - 1);
    let skipped = std::fs::read_to_string(out.path().join(SKIPPED_FILE)).unwrap();
    assert_eq!(skipped.lines().count(), 1, "{skipped}");
    assert!(skipped.contains("not a TIFF or PNG"), "{skipped}");
    assert!(!out
        .path()
        .join(IMAGERY_DIR)
        .join(
            tiles[0]
                .strip_prefix(data.path().join(IMAGERY_DIR))
                .unwrap()
        )
        .exists());

    // Again into the same directory: the skipped tile's mask of an earlier
    // run would pass for this one's.
    fails(&opts, "is not empty");

    // Two files of one tile (`5.tif`, `05.tif`) would write one output.
    let y = tiles[1].file_stem().unwrap().to_string_lossy().into_owned();
    std::fs::copy(&tiles[1], tiles[1].with_file_name(format!("0{y}.tif"))).unwrap();
    fails(&opts, "are one tile");
}

/// A stopped job's model (the model directory of a job stopped mid-way,
/// as SageMaker uploads it) predicts only when asked to with `partial`.
#[test]
fn predict_refuses_a_stopped_jobs_model_unless_asked() {
    use sca_train::predict::{predict, PredictOptions};
    let data = dataset();
    let (_a, a) = tree(data.path());
    stop_after_first_step(&a);
    let out = tempfile::tempdir().unwrap();
    let opts = predict_options(&a, data.path(), out.path());
    let e = predict(&opts).unwrap_err().to_string();
    assert!(
        e.contains(&format!("at step 1 of epoch 1 of {EPOCHS}")) && e.contains("--partial"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    assert_eq!(
        predict(&PredictOptions {
            partial: true,
            ..opts
        })
        .unwrap(),
        24
    );
}

fn binary(ml: &OptMl) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sca-train"));
    cmd.arg("train").env("SCA_OPT_ML", &ml.root);
    cmd
}

/// Wait until the first checkpoint exists, then send `signal` to the training process.
fn interrupt(ml: &OptMl, signal: &str) -> std::process::ExitStatus {
    let mut child = binary(ml)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while checkpoint::latest(&ml.checkpoint_dir()).unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap()
}

#[test]
fn sigterm_and_sigkill_resume_to_the_same_result() {
    let data = dataset();
    let (_a, a) = tree(data.path());
    run_to_end(&a);

    let (_t, t) = tree(data.path());
    // An earlier run's, in a reused tree: the launcher would read it as
    // this stop's failure reason.
    std::fs::create_dir_all(t.output_dir()).unwrap();
    std::fs::write(t.failure_file(), "an earlier run's reason\n").unwrap();
    let status = interrupt(&t, "-TERM");
    assert!(
        status.code() == Some(143) || status.success(),
        "SIGTERM: {status:?}"
    );
    assert!(!t.failure_file().exists(), "a stop is not a failure");
    assert!(binary(&t).status().unwrap().success());
    same_result(&a, &t, "resumed after SIGTERM differs");

    let (_k, k) = tree(data.path());
    let status = interrupt(&k, "-KILL");
    assert!(!status.success());
    assert!(binary(&k).status().unwrap().success());
    same_result(&a, &k, "resumed after SIGKILL differs");
}

/// A kill between an epoch's checkpoint and its printed metric lines left
/// them out of the log, where SageMaker's metric definitions read the
/// job's final metrics: a resume from that checkpoint prints them again,
/// the same lines, also when no epoch is left to train (it printed none).
#[test]
fn a_resume_from_an_epochs_checkpoint_prints_its_metric_lines_again() {
    let data = dataset();
    let (_a, a) = one_epoch_tree(data.path());
    run_to_end(&a);
    let last = checkpoint::latest(&a.checkpoint_dir()).unwrap().unwrap();
    let history = checkpoint::read(&last).unwrap().position.history;
    let lines: Vec<String> = history
        .iter()
        .filter(|m| m.epoch == 1)
        .map(|m| m.log_line())
        .collect();
    assert!(
        lines.len() == 2 && lines[1].starts_with("epoch=1 split=val "),
        "{lines:?}"
    );

    // As a kill right after the last checkpoint leaves the job.
    let (_k, k) = one_epoch_tree(data.path());
    std::fs::create_dir_all(k.checkpoint_dir()).unwrap();
    std::fs::copy(&last, k.checkpoint_dir().join(last.file_name().unwrap())).unwrap();
    let out = binary(&k).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in &lines {
        assert!(
            stdout.lines().any(|l| l == line.as_str()),
            "`{line}` not printed:\n{stdout}"
        );
    }
}

/// A panic (a bug) leaves SageMaker a reason too: the trainer's panic hook
/// writes the failure file, with the first panic's reason, not the one of
/// a panic it caused later. (No other test here replaces the hook.)
#[test]
fn a_panic_writes_the_failure_file() {
    let dir = tempfile::tempdir().unwrap();
    let ml = OptMl::at(dir.path());
    sca_train::sagemaker::install_panic_hook(&ml);
    let joined = std::thread::spawn(|| panic!("index 7 out of range")).join();
    let later = std::thread::spawn(|| panic!("a scoped thread panicked")).join();
    // Back to the default hook for the other tests.
    drop(std::panic::take_hook());
    assert!(joined.is_err() && later.is_err());
    let failure = std::fs::read_to_string(ml.failure_file()).expect("failure file written");
    assert_eq!(failure.lines().count(), 1, "{failure}");
    assert!(
        failure.starts_with("sca-train: internal error (a bug): panicked at")
            && failure.contains("index 7 out of range"),
        "{failure}"
    );
}

/// Bad input: a clear one-line reason in output/failure and a non-zero exit.
#[track_caller]
fn fails_with(ml: &OptMl, needle: &str) {
    let out = binary(ml).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failure = std::fs::read_to_string(ml.failure_file()).expect("failure file written");
    assert_eq!(failure.lines().count(), 1, "{failure}");
    assert!(failure.contains(needle), "`{needle}` not in `{failure}`");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// A launcher killed mid-run leaves stderr a pipe with no reader: the
/// failure file still gets the run's own reason, not a panic about stderr.
#[test]
fn a_closed_stderr_keeps_the_reason_in_the_failure_file() {
    let missing = tempfile::tempdir().unwrap();
    let ml = OptMl::at(missing.path());
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = binary(&ml)
        .stdout(std::process::Stdio::null())
        .stderr(writer)
        .status()
        .unwrap();
    let failure = std::fs::read_to_string(ml.failure_file()).expect("failure file written");
    assert!(
        failure.contains("channel directory") && !failure.contains("stderr"),
        "{failure}"
    );
    assert_eq!(status.code(), Some(1), "{failure}");
}

#[test]
fn bad_input_writes_the_failure_file() {
    let data = dataset();
    let missing = tempfile::tempdir().unwrap();
    fails_with(&OptMl::at(missing.path()), "channel directory");

    let (_d, two) = tree(data.path());
    std::fs::write(two.channel("config").join("other.toml"), "").unwrap();
    fails_with(&two, "exactly one");

    let (_d, empty) = tree(Path::new("/nonexistent-sca-data"));
    fails_with(&empty, "/nonexistent-sca-data");

    let (_d, invalid) = tree(data.path());
    std::fs::write(
        invalid.channel("config").join("exp.toml"),
        experiment(data.path()).replace("batch_size", "bach_size"),
    )
    .unwrap();
    fails_with(&invalid, "did you mean `batch_size`?");

    let (_d, pinned) = tree(data.path());
    std::fs::create_dir_all(pinned.config_dir()).unwrap();
    std::fs::write(
        pinned.config_dir().join("hyperparameters.json"),
        r#"{"experiment_sha256": "00"}"#,
    )
    .unwrap();
    fails_with(&pinned, "changed after launch");

    let (_d, ck) = tree(data.path());
    std::fs::create_dir_all(ck.checkpoint_dir()).unwrap();
    std::fs::write(
        ck.checkpoint_dir()
            .join("checkpoint-e00001-s000000.safetensors"),
        b"garbage",
    )
    .unwrap();
    fails_with(&ck, "not a readable safetensors");

    // This build has no CUDA: asking for it is an error naming the fix, before
    // any data is read; SCA_DEVICE overrides the experiment, and is checked too.
    // (On an instance type whose GPU the kernels run on: validation refuses
    // `cuda` on the default ml.p3's V100.)
    let (_d, cuda) = tree(data.path());
    std::fs::write(
        cuda.channel("config").join("exp.toml"),
        experiment(data.path()).replace(
            "checkpoint_every = 1",
            "checkpoint_every = 1\ndevice = \"cuda\"",
        ) + "\n[job]\ninstance_type = \"ml.g5.xlarge\"\n",
    )
    .unwrap();
    fails_with(&cuda, "built without the `cuda` feature");
    let out = binary(&cuda).env("SCA_DEVICE", "tpu").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let failure = std::fs::read_to_string(cuda.failure_file()).unwrap();
    assert!(
        failure.contains("`tpu`") && failure.contains("SCA_DEVICE"),
        "{failure}"
    );
}

/// The launcher's data manifest in the config channel: training verifies the
/// data against it and fails naming the first object that changed.
#[test]
fn data_manifest_is_verified_before_training() {
    use sca_train::synth::{IMAGERY_DIR, MASK_DIR};
    let base = tempfile::tempdir().unwrap();
    sca_train::synth::synth(&base.path().join("data"), 24, 5, 64, 15).unwrap();
    // Relative roots, resolved against `data_base_dir`; one short step.
    let (_d, ml) = tree(Path::new("data"));
    let exp = ml.channel("config").join("exp.toml");
    let text = experiment(Path::new("data"))
        .replace(
            &format!("epochs = {EPOCHS}"),
            "epochs = 1\nsteps_per_epoch = 1",
        )
        .replace("block_zoom = 13", "block_zoom = 13\nmax_bad_fraction = 0.5");
    std::fs::write(&exp, text).unwrap();
    std::fs::create_dir_all(ml.config_dir()).unwrap();
    let hyper = |extra: &str| {
        std::fs::write(
            ml.config_dir().join("hyperparameters.json"),
            format!(
                r#"{{"data_base_dir": {:?}{extra}}}"#,
                base.path().display().to_string()
            ),
        )
        .unwrap();
    };
    hyper("");

    // `sca-train manifest` prints the canonical bytes.
    let (m, out) = printed_manifest(&exp, Some(base.path()));
    assert_eq!(m.to_bytes(), out.stdout, "printed canonically");
    assert_eq!(m.objects.len(), 48);
    let sha = m.sha256();
    assert!(String::from_utf8_lossy(&out.stderr).contains(&sha));
    std::fs::write(
        ml.channel("config").join(DataManifest::FILE_NAME),
        &out.stdout,
    )
    .unwrap();

    hyper(&format!(r#", "data_manifest_sha256": "{sha}""#));
    let out = binary(&ml).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "data verified against manifest sha256 {sha} (48 objects)"
        )),
        "{stdout}"
    );

    // Same size, other bytes: caught when validation reads the tile.
    let tile = |dir: &str| {
        m.objects
            .iter()
            .map(|o| o.uri.clone())
            .find(|u| u.starts_with(&format!("data/{dir}/15/")))
            .unwrap()
    };
    let uri = tile(IMAGERY_DIR);
    let path = base.path().join(&uri);
    let original = std::fs::read(&path).unwrap();
    let mut other = original.clone();
    other[original.len() / 2] ^= 0x55;
    std::fs::write(&path, &other).unwrap();
    fails_with(&ml, &format!("data changed since launch: {uri}: sha256 "));
    std::fs::write(&path, &original).unwrap();

    // A deleted tile: caught by the listing.
    let mask_uri = tile(MASK_DIR);
    let mask = base.path().join(&mask_uri);
    let mask_bytes = std::fs::read(&mask).unwrap();
    std::fs::remove_file(&mask).unwrap();
    fails_with(
        &ml,
        &format!("data changed since launch: {mask_uri}: missing now"),
    );
    std::fs::write(&mask, mask_bytes).unwrap();

    // A manifest other than the one the launcher pinned.
    hyper(r#", "data_manifest_sha256": "00""#);
    fails_with(&ml, "pinned data manifest sha256 00");
    std::fs::remove_file(ml.channel("config").join(DataManifest::FILE_NAME)).unwrap();
    fails_with(&ml, "does not exist");
}

/// `dir` on a tmpfs of `bytes` (unmounted when dropped). Mounting needs root,
/// as the test services do; without it the test fails, saying so.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, bytes: u64) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a {bytes}-byte tmpfs on {} (this test needs root, like `cargo xtask test`'s services): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk under the checkpoints (ENOSPC mid-checkpoint) fails the run
/// cleanly: a failure file naming the cause, no partial or temporary file,
/// the checkpoint before it intact; the job restarted with room resumes from
/// it to the uninterrupted run's weights, bit for bit.
#[test]
fn a_full_disk_mid_checkpoint_fails_cleanly_and_the_restart_resumes_exactly() {
    let data = dataset();
    let (_a, a) = tree(data.path());
    run_to_end(&a);
    let size = std::fs::read_dir(a.checkpoint_dir())
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .max()
        .expect("the reference run kept checkpoints");

    let (_f, f) = tree(data.path());
    let saved = {
        // Room for one checkpoint and a half: the second one runs out.
        let _disk = SmallDisk::mount(&f.checkpoint_dir(), size * 3 / 2 + 4096);
        let out = binary(&f).output().unwrap();
        assert!(
            !out.status.success(),
            "a run that cannot checkpoint must fail"
        );
        let failure = std::fs::read_to_string(f.failure_file()).expect("a failure file");
        assert!(
            failure.contains("No space left on device") || failure.contains("os error 28"),
            "{failure}"
        );
        let names: Vec<String> = std::fs::read_dir(f.checkpoint_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len(),
            1,
            "one whole checkpoint, no partial or temporary file: {names:?}"
        );
        let path = f.checkpoint_dir().join(&names[0]);
        checkpoint::read(&path).expect("the checkpoint before the full disk reads");
        assert!(
            !f.model_dir().join(MODEL_FILE).exists(),
            "no model from a failed run"
        );
        (names[0].clone(), std::fs::read(&path).unwrap())
    };
    // The restart (SageMaker's, or the user's) with room again.
    let names: Vec<_> = std::fs::read_dir(f.checkpoint_dir())
        .unwrap()
        .flatten()
        .collect();
    assert!(names.is_empty(), "the tmpfs is gone");
    std::fs::write(f.checkpoint_dir().join(&saved.0), &saved.1).unwrap();
    let _ = std::fs::remove_file(f.failure_file());
    assert!(binary(&f).status().unwrap().success());
    same_result(&a, &f, "resumed after a full disk differs");
}

/// A tile validation leaves out (it does not decode) is listed with the
/// model, so the model says which pinned tiles it was not trained on.
#[test]
fn tiles_left_out_are_listed_with_the_model() {
    let data = dataset();
    let mut tiles: Vec<_> = walk(data.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tif"))
        .filter(|p| p.to_string_lossy().contains("_AnalyticMS_SR_clip_tiled"))
        .collect();
    tiles.sort();
    std::fs::write(&tiles[0], b"not a tiff").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ml = OptMl::at(dir.path());
    std::fs::create_dir_all(ml.channel("config")).unwrap();
    let text = experiment(data.path())
        .replace("block_zoom = 13", "block_zoom = 13\nmax_bad_fraction = 0.1");
    std::fs::write(ml.channel("config").join("exp.toml"), text).unwrap();
    run_to_end(&ml);
    let listed = std::fs::read_to_string(ml.model_dir().join("bad_tiles.txt")).unwrap();
    let name = tiles[0].file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains(&name), "{listed} names {name}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `sca-train manifest` pins a warm-start model as a launch does (by its
/// absolute path, relative to the experiment's directory), so the sha256
/// it prints is the launch's; an `experiment:` one is left out, said so.
#[test]
fn the_printed_manifest_pins_the_warm_start_model() {
    let base = tempfile::tempdir().unwrap();
    sca_train::synth::synth(&base.path().join("data"), 24, 5, 64, 15).unwrap();
    std::fs::write(base.path().join("init.safetensors"), b"weights").unwrap();
    let exp = base.path().join("exp.toml");
    let manifest = |init: &str| {
        std::fs::write(&exp, warm_started(&experiment(Path::new("data")), init)).unwrap();
        let (m, out) = printed_manifest(&exp, None);
        (m, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (m, _) = manifest("init.safetensors");
    let pin = m.init_checkpoint.expect("the warm start pinned");
    let at = std::fs::canonicalize(base.path())
        .unwrap()
        .join("init.safetensors");
    assert_eq!(pin.uri, at.display().to_string());
    assert_eq!(pin.size, 7);
    assert!(pin.sha256.is_some());
    let (m, stderr) = manifest("experiment:upstream");
    assert!(m.init_checkpoint.is_none());
    assert!(stderr.contains("is left out"), "{stderr}");

    // `--base-dir` moves the dataset's roots, not the warm start's: that is
    // beside the experiment file, as a launch resolves it.
    let cfg = base.path().join("cfg");
    std::fs::create_dir(&cfg).unwrap();
    std::fs::write(cfg.join("init.safetensors"), b"weights").unwrap();
    let text = warm_started(&experiment(Path::new("data")), "init.safetensors");
    std::fs::write(cfg.join("exp.toml"), text).unwrap();
    let (m, _) = printed_manifest(&cfg.join("exp.toml"), Some(base.path()));
    let at = std::fs::canonicalize(&cfg)
        .unwrap()
        .join("init.safetensors");
    assert_eq!(m.init_checkpoint.unwrap().uri, at.display().to_string());
}

/// `sca-train manifest EXP` (with `--base-dir BASE`), which must succeed:
/// the manifest it printed, and its output.
fn printed_manifest(exp: &Path, base_dir: Option<&Path>) -> (DataManifest, std::process::Output) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sca-train"));
    cmd.arg("manifest").arg(exp);
    if let Some(base) = base_dir {
        cmd.arg("--base-dir").arg(base);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (DataManifest::from_slice(&out.stdout).unwrap(), out)
}

/// The experiment `text` with `init_checkpoint = "<init>"` in its `[model]`.
fn warm_started(text: &str, init: &str) -> String {
    text.replace(
        "[model]\n",
        &format!("[model]\ninit_checkpoint = \"{init}\"\n"),
    )
}
