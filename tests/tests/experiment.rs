//! End-to-end tests of `cargo xtask experiment run|rerun|status|logs|stop|
//! list|fetch` on the three backends: `local` (host process), `docker` (the
//! engine `cargo xtask test` starts) and `sagemaker` (the AWS emulator). What
//! the emulator received is read back with boto3, independently of our code.
//! Every test has its own runs directory (`SCA_RUNS_DIR`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sca_e2e::lab::{
    emulated, experiment, first_file, make_bucket, metrics_without_time, s3_dataset,
    safetensors_weights, Emulated, Lab,
};
use sca_e2e::{
    boto3, require_services, run_xtask_env, test_base_image, test_registry, unique,
    update_json_object, Run,
};
use serde_json::Value;

fn rec_str<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn local_run_records_and_rerun_reproduces_it_exactly() {
    let lab = Lab::new(&experiment("e2e-local", "data", "data", true, 2, ""));
    let first = lab
        .xtask(&["experiment", "run", &lab.file(), "--output", "json"])
        .ok();
    let rec = Lab::record(&first);
    let job = rec_str(&rec, "job_name").to_string();
    assert_eq!(rec["status"], "Completed", "{rec}");
    assert_eq!(rec["backend"], "local");
    assert!(job.starts_with("e2e-local-"), "{job}");
    assert_eq!(rec_str(&rec, "commit").len(), 40);
    let bytes = std::fs::read(lab.dir.path().join("exp.toml")).unwrap();
    assert_eq!(rec_str(&rec, "experiment_sha256"), sha256_hex(&bytes));
    assert_eq!(rec["data_objects"], 48, "24 image + 24 mask tiles: {rec}");
    assert!(rec["final_metrics"]["iou"].as_f64().is_some(), "{rec}");
    let model = Path::new(rec_str(&rec, "artifacts")).join("model.safetensors");
    assert!(model.is_file(), "{}", model.display());
    // The record on disk is the one printed.
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(lab.runs.join(&job).join("record.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk, rec);

    // status, list, logs, fetch.
    let status = Lab::record(
        &lab.xtask(&["experiment", "status", &job, "--output", "json"])
            .ok(),
    );
    assert_eq!(status["status"], "Completed");
    let list: Value = serde_json::from_str(
        lab.xtask(&[
            "experiment",
            "list",
            "--experiment",
            "e2e-local",
            "--output",
            "json",
        ])
        .ok()
        .stdout
        .trim(),
    )
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let none: Value = serde_json::from_str(
        lab.xtask(&[
            "experiment",
            "list",
            "--commit",
            "0000000",
            "--output",
            "json",
        ])
        .ok()
        .stdout
        .trim(),
    )
    .unwrap();
    assert_eq!(none, serde_json::json!([]));
    let logs = lab.xtask(&["experiment", "logs", &job]).ok();
    assert!(logs.stdout.contains("split=val"), "{logs:?}");
    let to = lab.dir.path().join("fetched");
    let fetch = lab
        .xtask(&["experiment", "fetch", &job, "--to", to.to_str().unwrap()])
        .ok();
    assert!(fetch.stdout.contains("model.safetensors"), "{fetch:?}");
    assert_eq!(
        std::fs::read(to.join("model.safetensors")).unwrap(),
        std::fs::read(&model).unwrap()
    );
    // A bare relative --to is the working directory's.
    let relative: Run = sca_e2e::xtask(["experiment", "fetch", &job, "--to", "models"])
        .envs(lab.env())
        .current_dir(lab.dir.path())
        .output()
        .unwrap()
        .into();
    assert!(relative.success(), "{relative:?}");
    assert!(lab.dir.path().join("models/model.safetensors").is_file());
    // A reader gone before the first line (`list | head`) is no panic.
    for args in [
        &["experiment", "list"][..],
        &["experiment", "status", &job],
        &["experiment", "logs", &job],
        &["experiment", "fetch", &job],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let closed: Run = sca_e2e::xtask(args)
            .envs(lab.env())
            .stdout(writer)
            .output()
            .unwrap()
            .into();
        assert!(
            closed.success() && !closed.stderr.contains("panicked"),
            "{args:?}: {closed:?}"
        );
    }

    // A newer xtask's record is not rerun by this one, which would drop
    // what it does not know and still call the run the same.
    let newer = format!("{job}-v2");
    let mut v2 = rec.clone();
    v2["job_name"] = newer.as_str().into();
    v2["record_version"] = (rec["record_version"].as_u64().unwrap() + 1).into();
    std::fs::create_dir_all(lab.runs.join(&newer)).unwrap();
    std::fs::write(lab.runs.join(&newer).join("record.json"), v2.to_string()).unwrap();
    let refused = lab.xtask(&["experiment", "rerun", &newer, "--dry-run"]);
    assert!(
        !refused.success() && refused.stderr.contains("update the checkout"),
        "{refused:?}"
    );
    std::fs::remove_dir_all(lab.runs.join(&newer)).unwrap();

    // The rerun: same commit, experiment bytes and data, and, training being
    // deterministic, the same model bit for bit.
    let again = lab
        .xtask(&["experiment", "rerun", &job, "--output", "json"])
        .ok();
    let rerun = Lab::record(&again);
    // A rerun within the same second as the run still gets its own name and
    // directory: the first run's record is untouched.
    assert_ne!(rerun["job_name"], rec["job_name"]);
    assert_eq!(rerun["rerun_of"], job.as_str());
    let first_on_disk: Value =
        serde_json::from_slice(&std::fs::read(lab.runs.join(&job).join("record.json")).unwrap())
            .unwrap();
    assert_eq!(first_on_disk, rec);
    for key in [
        "commit",
        "experiment_sha256",
        "data_manifest_sha256",
        "dirty",
    ] {
        assert_eq!(rerun[key], rec[key], "{key}");
    }
    assert_eq!(rerun["status"], "Completed");
    // Each run checkpoints in its own new directory and passes the trainer
    // its own job's pins, so the rerun trained from the start: it did not
    // resume the first run's finished checkpoint.
    for (r, name) in [(&rec, job.as_str()), (&rerun, rec_str(&rerun, "job_name"))] {
        assert_eq!(r["hyperparameters"]["job_name"], name);
        assert_eq!(r["hyperparameters"]["commit"], r["commit"]);
        assert_eq!(
            r["hyperparameters"]["data_manifest_sha256"],
            r["data_manifest_sha256"]
        );
        assert_eq!(
            Path::new(rec_str(r, "checkpoint_uri")),
            lab.runs.join(name).join("opt/ml/checkpoints")
        );
    }
    let rerun_log =
        std::fs::read_to_string(lab.runs.join(rec_str(&rerun, "job_name")).join("train.log"))
            .unwrap();
    assert!(
        !rerun_log.contains("resuming from") && rerun_log.contains("split=val"),
        "{rerun_log}"
    );
    assert_eq!(
        metrics_without_time(&rerun["final_metrics"]),
        metrics_without_time(&rec["final_metrics"])
    );
    // The weights bit for bit: the safetensors data after the header (whose
    // metadata carries the run's timings).
    let model2 = Path::new(rec_str(&rerun, "artifacts")).join("model.safetensors");
    let (w1, w2) = (safetensors_weights(&model), safetensors_weights(&model2));
    assert!(!w1.is_empty());
    assert!(w1 == w2, "the rerun's weights differ");

    // The tree moves on (a new commit): a rerun runs the trainer kept for
    // the job's commit, not a build of what the tree holds now.
    lab_git(&lab, &["commit", "-q", "--allow-empty", "-m", "moved on"]);
    assert_ne!(lab.commit(), rec_str(&rec, "commit"));
    let moved_run = lab
        .xtask(&["experiment", "rerun", &job, "--output", "json"])
        .ok();
    assert!(
        !moved_run.stderr.contains("to build its trainer"),
        "the rerun built a checkout instead of running the kept trainer: {}",
        moved_run.stderr
    );
    let moved = Lab::record(&moved_run);
    assert_eq!(moved["status"], "Completed", "{moved}");
    assert_eq!(moved["commit"], rec["commit"]);
    let model3 = Path::new(rec_str(&moved, "artifacts")).join("model.safetensors");
    assert!(
        safetensors_weights(&model3) == w1,
        "the rerun after the tree moved trained other weights"
    );

    // `--region` on a rerun is where it runs, and its record says so.
    let dry = lab
        .xtask(&[
            "experiment",
            "rerun",
            &job,
            "--dry-run",
            "--region",
            "eu-central-1",
        ])
        .ok();
    let planned: Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(planned["resolved_job"]["region"], "eu-central-1");
    assert_eq!(rec["resolved_job"]["region"], "us-west-2");

    // Changed data: the rerun refuses, naming the object.
    let tile = first_file(&lab.dir.path().join("data"), "tif");
    let mut b = std::fs::read(&tile).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0xff;
    std::fs::write(&tile, b).unwrap();
    let before = lab.job_dirs();
    let refused = lab.xtask(&["experiment", "rerun", &job]);
    assert!(!refused.success());
    let name = tile.file_name().unwrap().to_str().unwrap();
    assert!(
        refused.stderr.contains("data changed") && refused.stderr.contains(name),
        "{refused:?}"
    );
    assert_eq!(lab.job_dirs(), before, "nothing was launched");
}

/// `git ARGS` in the lab's repository.
fn lab_git(lab: &Lab, args: &[&str]) {
    let ok = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .envs(lab.env())
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// `CARGO` and `REAL_CARGO` for a launch whose `cargo build` first runs
/// `on_build` (shell) in the lab: a fault injected at the build.
fn cargo_wrapper(lab: &Lab, on_build: &str) -> [(&'static str, String); 2] {
    let wrapper = lab.dir.path().join("cargo-wrapper");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\ncase \" $* \" in *\" build \"*) {on_build};; esac\nexec \"$REAL_CARGO\" \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let real = xtask::workspace::cargo_command().get_program().to_owned();
    [
        ("CARGO", wrapper.to_str().unwrap().to_string()),
        ("REAL_CARGO", real.to_str().unwrap().to_string()),
    ]
}

/// What the wrapper runs to commit during the build (a `git pull`).
const COMMIT_DURING_BUILD: &str =
    "git -c user.name=t -c user.email=t@t commit -q --allow-empty -m pulled || exit 99";

/// A commit lands while the trainer is being built (a `git pull` in another
/// terminal): the tree no longer holds the pinned code, so the launch is
/// refused before anything runs or is recorded, instead of recording one
/// commit and running another. The fault is injected through `$CARGO`, a
/// wrapper that commits and then runs the real cargo.
#[test]
fn a_commit_during_the_trainer_build_launches_nothing() {
    let lab = Lab::new(&experiment("e2e-moved", "data", "data", true, 1, ""));
    // A commit of its own: no trainer another test built and kept for the
    // labs' shared commit, so this launch builds one.
    lab_git(
        &lab,
        &["commit", "-q", "--allow-empty", "-m", &unique("e2e-moved")],
    );
    let env = cargo_wrapper(&lab, COMMIT_DURING_BUILD);
    let pinned = lab.commit();
    let run = lab.xtask_env(
        &["experiment", "run", &lab.file()],
        &env.each_ref().map(|(k, v)| (*k, v.as_str())),
    );
    assert!(!run.success(), "{run:?}");
    assert_ne!(lab.commit(), pinned, "the wrapper did not commit: {run:?}");
    assert!(
        run.stderr
            .contains("the working tree changed while the trainer was built")
            && run.stderr.contains(&pinned[..12])
            && run.stderr.contains("nothing was launched"),
        "{run:?}"
    );
    assert_eq!(lab.job_dirs(), 0, "a job was recorded");
}

/// The same during `image build --base` (the host build of the binary
/// takes minutes): the image would be labelled with a commit its binary
/// may not be, so the build is refused.
#[test]
fn a_commit_during_the_images_host_build_builds_nothing() {
    require_services();
    let base = test_base_image();
    let lab = Lab::new(&experiment("e2e-imoved", "data", "data", true, 1, ""));
    let env = cargo_wrapper(&lab, COMMIT_DURING_BUILD);
    let before = lab.commit();
    let tag = unique("e2e-imoved");
    let run = lab.xtask_env(
        &["image", "build", "--base", base, "--tag", &tag],
        &env.each_ref().map(|(k, v)| (*k, v.as_str())),
    );
    assert!(!run.success(), "{run:?}");
    assert_ne!(lab.commit(), before, "the wrapper did not commit: {run:?}");
    assert!(
        run.stderr
            .contains("the working tree changed while the image's context was made")
            && run.stderr.contains(&before[..12]),
        "{run:?}"
    );
    let image = format!("sca-train:{tag}");
    let listed = sca_e2e::docker(&["images", "-q", &image]).ok();
    assert_eq!(listed.stdout.trim(), "", "an image was built: {run:?}");
}

/// A trainer that cannot be started (here the kept build of the lab's
/// commit, not executable): the job is recorded Failed, naming the binary,
/// not left InProgress with no process to follow.
#[test]
fn a_trainer_that_cannot_start_is_recorded_failed() {
    let lab = Lab::new(&experiment("e2e-noexec", "data", "data", true, 1, ""));
    // A commit of its own: every lab starts at the same commit, whose kept
    // trainer the other tests' runs share and must not find broken.
    let own = unique("noexec");
    lab_git(&lab, &["commit", "-q", "--allow-empty", "-m", &own]);
    let kept = xtask::workspace::target_dir(&sca_e2e::root())
        .join("sca-trainers/xtask")
        .join(lab.commit())
        .join("sca-train");
    std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
    std::fs::write(&kept, "not a program").unwrap();
    let run = lab.xtask(&["experiment", "run", &lab.file()]);
    std::fs::remove_dir_all(kept.parent().unwrap()).unwrap();
    assert!(!run.success(), "{run:?}");
    assert!(
        run.stderr.contains("could not be started") && run.stderr.contains("recorded Failed"),
        "{run:?}"
    );
    let job = lab.job_named("e2e-noexec-");
    let rec = lab.status(&job);
    assert_eq!(rec["status"], "Failed", "{rec}");
    assert!(
        rec_str(&rec, "failure_reason").contains(kept.to_str().unwrap()),
        "{rec}"
    );
}

/// `cargo xtask experiment run` of a local experiment goes through the
/// entry point to `xtask-local`, the launcher built without the Docker and
/// SageMaker clients: it trains and records as the full one does, and that
/// binary, asked for a docker run directly, says what to run instead and
/// launches nothing.
#[test]
fn the_entry_point_runs_a_local_experiment_in_the_local_launcher() {
    let lab = Lab::new(&experiment("e2e-entry-local", "data", "data", true, 1, ""));
    let mut cmd = sca_e2e::cargo_xtask(["experiment", "run", &lab.file(), "--output", "json"]);
    cmd.stdin(Stdio::null()).envs(lab.env());
    let run = Run::from(cmd.output().unwrap()).ok();
    let rec = Lab::record(&run);
    assert_eq!(rec["status"], "Completed", "{rec}");
    assert_eq!(rec["backend"], "local");
    assert!(
        Path::new(rec_str(&rec, "artifacts"))
            .join("model.safetensors")
            .is_file(),
        "{rec}"
    );
    assert!(
        run.stderr.contains("xtask-local experiment run"),
        "cargo ran another binary: {}",
        run.stderr
    );

    let local = sca_e2e::xtask_bin().with_file_name("xtask-local");
    let mut cmd = Command::new(&local);
    cmd.args(["experiment", "run", &lab.file(), "--backend", "docker"])
        .stdin(Stdio::null())
        .envs(lab.env());
    let docker: Run = cmd.output().unwrap().into();
    assert_eq!(docker.code, Some(1), "{docker:?}");
    assert!(
        docker
            .stderr
            .contains("the docker backend's image needs the full launcher")
            && docker.stderr.contains("`cargo xtask ...`"),
        "{}",
        docker.stderr
    );
    assert_eq!(lab.job_dirs(), 1, "the refused docker run left a directory");
}

#[test]
fn invalid_experiment_and_dirty_tree_launch_nothing() {
    let lab = Lab::new("[experiment]\nname = \"x\"\n");
    let run = lab.xtask(&["experiment", "run", &lab.file(), "--allow-dirty"]);
    assert!(!run.success());
    assert!(run.stderr.contains("nothing was launched"), "{run:?}");
    assert!(run.stderr.contains("exp.toml"), "{run:?}");
    assert_eq!(lab.job_dirs(), 0);

    // A dirty tree is refused without --allow-dirty.
    let lab = Lab::new(&experiment("e2e-dirty", "data", "data", true, 1, ""));
    std::fs::write(lab.repo.path().join("a.txt"), "changed").unwrap();
    let run = lab.xtask(&["experiment", "run", &lab.file()]);
    assert!(!run.success());
    assert!(
        run.stderr.contains("uncommitted changes") && run.stderr.contains("--allow-dirty"),
        "{run:?}"
    );
    assert_eq!(lab.job_dirs(), 0);
    // With --allow-dirty the record carries the flag and the diff's hash.
    let dry = lab
        .xtask(&[
            "experiment",
            "run",
            &lab.file(),
            "--allow-dirty",
            "--dry-run",
        ])
        .ok();
    let rec: Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(rec["dirty"], true);
    assert_eq!(rec_str(&rec, "diff_sha256").len(), 64);
    assert_eq!(lab.job_dirs(), 0, "a dry run changes nothing");

    // An image tag or context of the caller's choosing is not the pinned
    // commit's image: a launch refuses them.
    let file = lab.file();
    for flag in [["--tag", "mine"], ["--dir", "/tmp"]] {
        let mut args = vec![
            "experiment",
            "run",
            &file,
            "--allow-dirty",
            "--backend",
            "docker",
        ];
        args.extend(flag);
        let run = lab.xtask(&args);
        assert!(
            !run.success()
                && run
                    .stderr
                    .contains("a launch builds the workspace at the commit it pins"),
            "{run:?}"
        );
    }
    assert_eq!(lab.job_dirs(), 0);
}

#[test]
fn local_backend_refuses_a_cuda_experiment_unless_sca_device_overrides_it() {
    let text = experiment("e2e-cuda-local", "data", "data", true, 1, "")
        .replace(
            "instance_type = \"ml.m5.xlarge\"",
            "instance_type = \"ml.g5.xlarge\"",
        )
        .replace(
            "checkpoint_every = 1\n",
            "checkpoint_every = 1\ndevice = \"cuda\"\n",
        );
    assert!(text.contains("device = \"cuda\"") && text.contains("ml.g5.xlarge"));
    let lab = Lab::new(&text);
    // A launch refused before anything is listed or written: its stderr.
    let refused = |sca_device: &str| {
        let run = lab.xtask_env(
            &["experiment", "run", &lab.file()],
            &[("SCA_DEVICE", sca_device)],
        );
        assert!(!run.success(), "SCA_DEVICE={sca_device:?}: {run:?}");
        assert_eq!(lab.job_dirs(), 0, "SCA_DEVICE={sca_device:?}");
        run.stderr
    };
    // The host's trainer has no CUDA (SCA_DEVICE empty counts as unset, as
    // for the trainer).
    let stderr = refused("");
    assert!(
        stderr.contains("exp.toml: train.device = \"cuda\"")
            && stderr.contains("--backend sagemaker")
            && stderr.contains("SCA_DEVICE=cpu"),
        "{stderr}"
    );
    // So is an override asking for the GPU, named as the cause.
    let stderr = refused("cuda");
    assert!(
        stderr.contains("SCA_DEVICE=cuda, but the local backend's trainer is a CPU build"),
        "{stderr}"
    );
    // An override the trainer would refuse is refused as early.
    let stderr = refused("tpu");
    assert!(stderr.contains("`tpu`"), "{stderr}");
    // SCA_DEVICE=cpu lets it run on this machine's CPU, and is recorded.
    let first = lab
        .xtask_env(
            &["experiment", "run", &lab.file(), "--output", "json"],
            &[("SCA_DEVICE", " cpu ")],
        )
        .ok();
    let rec = Lab::record(&first);
    assert_eq!(rec["status"], "Completed", "{rec}");
    assert_eq!(rec["device_override"], "cpu", "{rec}");
    assert!(first.stdout.contains("computing on cpu"), "{first:?}");
    // A rerun trains as the run did, whatever the shell's SCA_DEVICE now says.
    let job = rec_str(&rec, "job_name").to_string();
    let again = lab
        .xtask_env(
            &["experiment", "rerun", &job, "--output", "json"],
            &[("SCA_DEVICE", "cuda")],
        )
        .ok();
    let again = Lab::record(&again);
    assert_eq!(again["status"], "Completed", "{again}");
    assert_eq!(again["device_override"], "cpu", "{again}");
    assert_eq!(again["rerun_of"], job.as_str());

    // bf16 runs on a GPU only: with the CPU override it is refused as early
    // (the trainer would refuse it after the data was listed).
    let bf16 = Lab::new(&text.replace(
        "device = \"cuda\"\n",
        "device = \"cuda\"\nprecision = \"bf16\"\n",
    ));
    let run = bf16.xtask_env(
        &["experiment", "run", &bf16.file()],
        &[("SCA_DEVICE", "cpu")],
    );
    assert!(!run.success(), "{run:?}");
    assert!(
        run.stderr.contains("train.precision = \"bf16\"")
            && !run.stderr.contains("pinned the data"),
        "{run:?}"
    );
    assert_eq!(bf16.job_dirs(), 0);
}

#[test]
fn local_stop_checkpoints_and_records_stopped() {
    let lab = Lab::new(&experiment("e2e-stop", "data", "data", true, 200, ""));
    let (mut child, job) = launch_until_training(&lab);
    // The same launch again while it runs: refused, naming the running job,
    // not a second run of the same pins.
    let again = lab.xtask(&["experiment", "run", &lab.file()]);
    assert!(
        !again.success() && again.stderr.contains(&format!("{job} is running it now")),
        "{again:?}"
    );
    assert_eq!(lab.job_dirs(), 1, "a second run directory was made");
    let stop = lab.xtask(&["experiment", "stop", &job]).ok();
    assert!(stop.stderr.contains("SIGTERM"), "{stop:?}");
    let out: Run = child_output(&mut child);
    assert!(!out.success(), "a stopped job exits non-zero: {out:?}");
    let rec = Lab::record(&out);
    assert_eq!(rec["status"], "Stopped", "{rec}");
    let ckpt = lab.runs.join(&job).join("opt/ml/checkpoints");
    assert!(
        std::fs::read_dir(&ckpt).unwrap().count() > 0,
        "SIGTERM leaves a checkpoint in {}",
        ckpt.display()
    );
    // And the model as trained so far, which SageMaker would upload.
    let model = lab.runs.join(&job).join("opt/ml/model/model.safetensors");
    assert!(model.is_file(), "no model so far in {}", model.display());
}

/// Launches of one experiment started at once (two terminals, a script)
/// run it once: whichever claims its pins first runs it; each other one is
/// refused while that run is prepared or runs, or prints it completed.
#[test]
fn simultaneous_launches_of_one_experiment_run_it_once() {
    let lab = Lab::new(&experiment("e2e-twins", "data", "data", true, 2, ""));
    let outs = lab.xtask_at_once(&["experiment", "run", &lab.file(), "--output", "json"], 3);
    assert_eq!(
        lab.job_dirs(),
        1,
        "the experiment ran more than once: {outs:#?}"
    );
    let ran: Vec<&Run> = outs
        .iter()
        .filter(|o| o.stderr.contains("(local backend) in"))
        .collect();
    assert_eq!(ran.len(), 1, "{outs:#?}");
    assert_eq!(Lab::record(ran[0])["status"], "Completed", "{outs:#?}");
    for other in outs
        .iter()
        .filter(|o| !o.stderr.contains("(local backend) in"))
    {
        let seen = if other.success() {
            other.stderr.contains("already ran it")
        } else {
            other.stderr.contains("is being prepared now")
                || other.stderr.contains("is running it now")
        };
        assert!(seen, "{other:?}");
    }
}

/// `max_runtime` holds on the local backend as on SageMaker: the job is
/// stopped there (SIGTERM, the grace period), recorded Stopped with
/// SageMaker's `MaxRuntimeExceeded`, and keeps the model trained so far.
#[test]
fn local_runs_stop_at_max_runtime_as_sagemaker_jobs_do() {
    // Long enough that a loaded machine has trained a step by then (a stop
    // before the first keeps no model), short of the epochs' end.
    let text = experiment("e2e-maxrt", "data", "data", true, 2000, "")
        .replace("max_runtime = \"1h\"", "max_runtime = \"8s\"");
    assert!(text.contains("max_runtime = \"8s\""));
    let lab = Lab::new(&text);
    let run = lab.xtask(&["experiment", "run", &lab.file(), "--output", "json"]);
    assert!(!run.success(), "a stopped job exits non-zero: {run:?}");
    let rec = Lab::record(&run);
    assert_eq!(rec["status"], "Stopped", "{rec}");
    assert_eq!(rec["secondary_status"], "MaxRuntimeExceeded", "{rec}");
    assert!(
        rec_str(&rec, "failure_reason").contains("stopped at max_runtime (8 s)"),
        "{rec}"
    );
    let job = rec_str(&rec, "job_name");
    let model = lab.runs.join(job).join("opt/ml/model/model.safetensors");
    assert!(model.is_file(), "the model so far is kept: {rec}");
}

/// `experiment` with a 20 s `max_runtime` and epochs to outlast it.
fn outlasting_max_runtime(name: &str) -> String {
    let text = experiment(name, "data", "data", true, 2000, "")
        .replace("max_runtime = \"1h\"", "max_runtime = \"20s\"");
    assert!(text.contains("max_runtime = \"20s\""));
    text
}

/// Kill `launcher`, the training `job`'s, before its `max_runtime` (20 s),
/// then look at the run (`status`) until it has ended; the record then,
/// checked to be stopped at max_runtime as SageMaker records it.
fn stopped_by_a_look_at_max_runtime(
    lab: &Lab,
    job: &str,
    mut launcher: std::process::Child,
) -> Value {
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    let record = lab.runs.join(job).join("record.json");
    let left: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert!(
        left["status"] == "InProgress" && left["secondary_status"].is_null(),
        "the launcher died before max_runtime: {left}"
    );
    let start = Instant::now();
    let rec = loop {
        let rec = lab.status(job);
        if rec["status"] != "InProgress" && rec["status"] != "Stopping" {
            break rec;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "still {} after {:?}: {rec}",
            rec["status"],
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(rec["status"], "Stopped", "{rec}");
    assert_eq!(rec["secondary_status"], "MaxRuntimeExceeded", "{rec}");
    assert!(
        rec_str(&rec, "failure_reason").contains("stopped at max_runtime (20 s)"),
        "{rec}"
    );
    rec
}

/// A launcher killed mid-run leaves nobody to stop its trainer at
/// `max_runtime`: a look at the run past it (`status`) stops it as the
/// launcher would have, and the end is recorded as SageMaker records it.
#[test]
fn max_runtime_holds_after_the_launcher_is_killed() {
    let lab = Lab::new(&outlasting_max_runtime("e2e-maxrt-k"));
    let (child, job) = launch_until_training(&lab);
    let pid = trainer_pid(&lab, &job);
    /// Ends the trainer however the test ends.
    struct Reap(u64);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
    let reap = Reap(pid);
    let rec = stopped_by_a_look_at_max_runtime(&lab, &job, child);
    wait_until_ended(pid, Duration::from_secs(30));
    // Ended: its pid may be another process's from here on.
    std::mem::forget(reap);
    let model = lab.runs.join(&job).join("opt/ml/model/model.safetensors");
    assert!(
        model.is_file(),
        "the model so far is kept (SIGTERM, not SIGKILL): {rec}"
    );
}

#[test]
fn a_closed_stdout_neither_stops_the_training_nor_its_record() {
    // `experiment run ... | head -1`: the launcher's stdout loses its reader
    // after the first line, and the trainer has two epochs to go.
    let lab = Lab::new(&experiment("e2e-head", "data", "data", true, 2, ""));
    let mut child = sca_e2e::xtask(["experiment", "run", &lab.file(), "--output", "json"])
        .envs(lab.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let mut first = String::new();
    {
        use std::io::BufRead;
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut first).unwrap();
    }
    let status = child.wait().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(first.starts_with("sca-train:"), "{first:?}");
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("writing to stdout failed"),
        "the closed stdout is reported once: {stderr}"
    );
    let job = lab.jobs().remove(0);
    let rec: Value =
        serde_json::from_slice(&std::fs::read(job.join("record.json")).unwrap()).unwrap();
    assert_eq!(rec["status"], "Completed", "{rec}");
    assert_eq!(rec["final_metrics"]["epoch"], 2, "{rec}");
    assert!(job.join("opt/ml/model/model.safetensors").is_file());
    let log = std::fs::read_to_string(job.join("train.log")).unwrap();
    assert!(
        log.contains("epoch=2 split=val"),
        "the log goes on after stdout closes: {log}"
    );
}

#[test]
fn status_records_a_run_whose_launcher_and_trainer_died_as_failed() {
    // A killed terminal or launcher, then the trainer gone too (OOM killer):
    // nobody saw the exit, and the record must not stay `InProgress`.
    let lab = Lab::new(&experiment("e2e-orphan", "data", "data", true, 200, ""));
    let (mut child, job) = launch_until_training(&lab);
    let record = lab.runs.join(&job).join("record.json");
    let running: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let pid = running["pid"]
        .as_u64()
        .expect("a running job records its pid");
    assert!(running["pid_start"].as_u64().is_some(), "{running}");
    child.kill().unwrap();
    child.wait().unwrap();
    // The trainer's stdout has no reader now. It trains on, printing each
    // epoch's lines after its checkpoint: two checkpoints more prove that a
    // print on the closed pipe (a panic, until the trainer ignored EPIPE)
    // came and went.
    let checkpoints = lab.runs.join(&job).join("opt/ml/checkpoints");
    let newest = || {
        std::fs::read_dir(&checkpoints)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .max()
    };
    let mut seen = vec![newest()];
    let start = Instant::now();
    while seen.len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no new checkpoint after {seen:?}"
        );
        let now = newest();
        if now != *seen.last().unwrap() {
            seen.push(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = lab
        .xtask(&["experiment", "status", &job, "--output", "json"])
        .ok();
    assert_eq!(
        Lab::record(&status)["status"],
        "InProgress",
        "the trainer runs on"
    );
    let kill = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // SIGKILL takes effect asynchronously.
    wait_until_ended(pid, Duration::from_secs(30));
    let rec = lab.status(&job);
    assert_eq!(rec["status"], "Failed", "{rec}");
    assert!(
        rec_str(&rec, "failure_reason")
            .starts_with("the trainer process exited without recording an outcome"),
        "{rec}"
    );
    assert!(rec.get("pid").is_none(), "{rec}");
    let stored: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(
        stored["status"], "Failed",
        "written to the record: {stored}"
    );
}

/// Ctrl-C at the launcher, which is then killed (an impatient second
/// signal, a closed laptop) after its SIGTERM reached the trainer but
/// before the trainer ended: the record says Stopping by then, so `status`
/// records the run Stopped, as asked, not Failed for a SIGTERM without a
/// stop request. (The trainer is held with SIGSTOP while its SIGTERM is
/// pending, so the record is read and the launcher killed in between.)
#[test]
fn a_ctrl_c_is_recorded_as_a_stop_request_even_if_the_launcher_dies() {
    let lab = Lab::new(&experiment("e2e-ctrl-c", "data", "data", true, 200, ""));
    let (mut child, job) = launch_until_training(&lab);
    let pid = trainer_pid(&lab, &job);
    let signal = |sig: &str, pid: u64| {
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    };
    /// Lets the trainer go however the test ends.
    struct Resume(u64);
    impl Drop for Resume {
        fn drop(&mut self) {
            for sig in ["-CONT", "-KILL"] {
                let _ = Command::new("kill")
                    .args([sig, &self.0.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
    let resume = Resume(pid);
    assert!(signal("-STOP", pid));
    assert!(signal("-INT", u64::from(child.id())));
    // SIGTERM (15) pending at the stopped trainer: bit 14 of its masks.
    let pending = || {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                l.strip_prefix("ShdPnd:")
                    .or_else(|| l.strip_prefix("SigPnd:"))
            })
            .any(|m| u64::from_str_radix(m.trim(), 16).is_ok_and(|m| m & (1 << 14) != 0))
    };
    let start = Instant::now();
    while !pending() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no SIGTERM reached the trainer"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let record = lab.runs.join(&job).join("record.json");
    let stored: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(stored["status"], "Stopping", "before the SIGTERM: {stored}");
    child.kill().unwrap();
    child.wait().unwrap();
    // (The kernel may end the orphaned, stopped trainer with SIGHUP here,
    // before its SIGTERM: gone without a word after a stop request is
    // Stopped too.)
    signal("-CONT", pid);
    wait_until_ended(pid, Duration::from_secs(120));
    // (Ended: its pid may be another process's soon.)
    std::mem::forget(resume);
    let rec = lab.status(&job);
    assert_eq!(rec["status"], "Stopped", "{rec}");
}

/// SIGTERM at the launcher (`timeout`, a CI cancel, `kill`) stops the run
/// as Ctrl-C does: the trainer ends, the run is recorded Stopped, and the
/// launcher exits. It once ended the launcher alone, the trainer training
/// on unwatched past its max_runtime.
#[test]
fn a_sigterm_at_the_launcher_stops_the_run_as_ctrl_c_does() {
    let lab = Lab::new(&experiment("e2e-sigterm", "data", "data", true, 200, ""));
    let (child, job) = launch_until_training(&lab);
    let pid = trainer_pid(&lab, &job);
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    wait_until_ended(pid, Duration::from_secs(120));
    // And the launcher after it (a zombie once it exits: `wait_until_ended`
    // sees a child as well).
    wait_until_ended(u64::from(child.id()), Duration::from_secs(120));
    let stored: Value =
        serde_json::from_slice(&std::fs::read(lab.runs.join(&job).join("record.json")).unwrap())
            .unwrap();
    assert_eq!(
        stored["status"], "Stopped",
        "recorded by the launcher: {stored}"
    );
}

/// SIGTERM at a sweep while its first point's trainer is still being built
/// (before that point listens for it): the point is stopped as soon as its
/// trainer starts, and no other point starts. The signal was once seen by
/// the sweep alone, and the point trained to its end.
#[test]
fn a_sigterm_at_a_sweep_before_its_point_listens_stops_that_point() {
    let text = format!(
        "{}\n[sweep]\ngrid = {{ \"train.learning_rate\" = [0.01, 0.02] }}\n",
        experiment("e2e-sweepterm", "data", "data", true, 5000, "")
    );
    let lab = Lab::new(&text);
    // A commit of its own: its trainer is built, not kept from another test.
    lab_git(
        &lab,
        &[
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            &unique("e2e-sweepterm"),
        ],
    );
    let mark = lab.dir.path().join("building");
    let mut child = sca_e2e::xtask(["experiment", "sweep", &lab.file()])
        .envs(lab.env())
        .envs(cargo_wrapper(&lab, "touch \"$MARK\"; sleep 3"))
        .env("MARK", &mark)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !mark.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no trainer build started: {:?}",
            child_output(&mut child)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    wait_until_ended(u64::from(child.id()), Duration::from_secs(300));
    let out = child_output(&mut child);
    assert!(!out.success(), "{out:?}");
    let jobs = lab.jobs();
    assert_eq!(jobs.len(), 1, "one point launched, no more: {out:?}");
    let rec: Value =
        serde_json::from_slice(&std::fs::read(jobs[0].join("record.json")).unwrap()).unwrap();
    assert_eq!(rec["status"], "Stopped", "{rec}\n{out:?}");
}

/// The launcher killed, its trainer trains on to the end unwatched (its
/// stdout and stderr closed): `status` records what the trainer did, from
/// the exit code it left in `/opt/ml/output`: Completed, with its metrics,
/// not the launcher's absence as a failure.
#[test]
fn status_records_a_run_that_completed_after_its_launcher_died() {
    // Epochs enough to be caught training (a poll every 300 ms).
    let lab = Lab::new(&experiment("e2e-orphan-ok", "data", "data", true, 100, ""));
    let (mut child, job) = launch_until_training(&lab);
    let pid = trainer_pid(&lab, &job);
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until_ended(pid, Duration::from_secs(300));
    let rec = lab.status(&job);
    assert_eq!(rec["status"], "Completed", "{rec}");
    assert!(rec.get("failure_reason").is_none(), "{rec}");
    assert_eq!(rec["final_metrics"]["epoch"], 100, "{rec}");
}

/// A newer record of the same pins whose run is gone (launcher and
/// trainer) hides nothing: an older run still training, its launcher
/// killed, is found, and a launch is refused naming it, not run twice.
#[test]
fn a_dead_newer_twin_does_not_hide_an_older_one_still_training() {
    let lab = Lab::new(&experiment("e2e-two-twins", "data", "data", true, 200, ""));
    let (mut child, job) = launch_until_training(&lab);
    let pid = trainer_pid(&lab, &job);
    child.kill().unwrap();
    child.wait().unwrap();
    // Its twin, launched later (`--force`) and gone without a word: a
    // copy of its record, started later, with a pid no process has.
    let newer = format!("{job}-b");
    let mut rec: Value =
        serde_json::from_slice(&std::fs::read(lab.runs.join(&job).join("record.json")).unwrap())
            .unwrap();
    rec["job_name"] = newer.as_str().into();
    rec["started"] = "2099-01-01T00:00:00Z".into();
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    rec["pid"] = gone.id().into();
    std::fs::create_dir_all(lab.runs.join(&newer)).unwrap();
    std::fs::write(lab.runs.join(&newer).join("record.json"), rec.to_string()).unwrap();

    let again = lab.xtask(&["experiment", "run", &lab.file()]);
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    wait_until_ended(pid, Duration::from_secs(30));
    assert!(!again.success(), "{again:?}");
    assert!(
        again.stderr.contains(&format!("{job} is running it now")),
        "{again:?}"
    );
    assert_eq!(lab.jobs().len(), 2, "nothing launched: {again:?}");
    let dead: Value =
        serde_json::from_slice(&std::fs::read(lab.runs.join(&newer).join("record.json")).unwrap())
            .unwrap();
    assert_eq!(dead["status"], "Failed", "{dead}");
}

/// `logs --follow` of a run whose launcher died follows it to its end,
/// which it records (nobody else would): it returned never, though `run`
/// suggests it for a run in progress.
#[test]
fn following_the_log_of_a_run_whose_launcher_died_ends_with_the_run() {
    let lab = Lab::new(&experiment(
        "e2e-orphan-logs",
        "data",
        "data",
        true,
        100,
        "",
    ));
    let (mut child, job) = launch_until_training(&lab);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut follow = sca_e2e::xtask(["experiment", "logs", "--follow", &job])
        .envs(lab.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while follow.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(300) {
            let _ = follow.kill();
            panic!("`logs --follow` runs on 300 s after the launcher died");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child_output(&mut follow);
    assert!(out.success(), "{out:?}");
    let stored: Value =
        serde_json::from_slice(&std::fs::read(lab.runs.join(&job).join("record.json")).unwrap())
            .unwrap();
    assert_eq!(stored["status"], "Completed", "recorded: {stored}");
}

/// The pid of a running local job's trainer, from its record.
fn trainer_pid(lab: &Lab, job: &str) -> u64 {
    let path = lab.runs.join(job).join("record.json");
    let running: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    running["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("a running local job records its pid: {running}"))
}

/// Wait until process `pid` has ended (a zombie, or reaped), at most `limit`.
fn wait_until_ended(pid: u64, limit: Duration) {
    let stat = format!("/proc/{pid}/stat");
    let start = Instant::now();
    while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(start.elapsed() < limit, "pid {pid} runs on after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait (at most 600 s) until `job`'s container has exited; its id.
fn wait_until_exited(job: &str) -> String {
    let filter = format!("name={job}");
    let start = Instant::now();
    loop {
        let listed = [
            "ps",
            "-aq",
            "--filter",
            &filter,
            "--filter",
            "status=exited",
        ];
        let id = sca_e2e::docker(&listed).ok().stdout.trim().to_string();
        if !id.is_empty() {
            return id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the container of {job} runs on after 600 s"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A docker-backend run of `lab`'s experiment on `base`, launched and
/// followed until its trainer runs: the launcher and the job's name.
fn docker_run_until_training(lab: &Lab, base: &str) -> (std::process::Child, String) {
    let mut child = sca_e2e::xtask([
        "experiment",
        "run",
        &lab.file(),
        "--backend",
        "docker",
        "--base",
        base,
        "--allow-dirty",
        "--output",
        "json",
    ])
    .envs(lab.env())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let job = wait_for_running(lab, &mut child, Duration::from_secs(600));
    (child, job)
}

/// The job a run in `lab` started, once its trainer is training; fails at
/// once, with the launcher's output, if `child` (the launcher) exits first.
/// `experiment run` of the lab's file on the local backend, in the
/// background, once its job is training: the launcher and the job's name.
fn launch_until_training(lab: &Lab) -> (std::process::Child, String) {
    let mut child = sca_e2e::xtask(["experiment", "run", &lab.file(), "--output", "json"])
        .envs(lab.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let job = wait_for_running(lab, &mut child, Duration::from_secs(600));
    (child, job)
}

fn wait_for_running(lab: &Lab, child: &mut std::process::Child, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < limit,
            "the job did not start training in {limit:?}"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the launcher exited ({status}) before the job trained: {:?}",
                child_output(child)
            );
        }
        if let Some(dir) = lab.jobs().first() {
            let text = std::fs::read_to_string(dir.join("train.log")).unwrap_or_default();
            if text.contains("split=train") || text.contains("step") {
                return dir.file_name().unwrap().to_string_lossy().into_owned();
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn child_output(child: &mut std::process::Child) -> Run {
    let out = std::mem::replace(child, Command::new("true").spawn().unwrap());
    out.wait_with_output().unwrap().into()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn docker_backend_runs_the_image_like_sagemaker_and_packs_the_model() {
    require_services();
    let base = test_base_image();
    let lab = Lab::new(&experiment("e2e-docker", "data", "data", true, 1, ""));
    let run = lab
        .xtask(&[
            "experiment",
            "run",
            &lab.file(),
            "--backend",
            "docker",
            "--base",
            base,
            "--allow-dirty",
            "--output",
            "json",
        ])
        .ok();
    let rec = Lab::record(&run);
    let job = rec_str(&rec, "job_name").to_string();
    assert_eq!(rec["status"], "Completed", "{rec}");
    assert!(rec_str(&rec, "image").starts_with("sha256:"), "{rec}");
    assert_eq!(rec["image"], rec["image_digest"]);
    assert!(
        run.stdout.contains("split=val"),
        "the container's log is streamed"
    );
    let to = lab.dir.path().join("fetched");
    let fetch = lab
        .xtask(&["experiment", "fetch", &job, "--to", to.to_str().unwrap()])
        .ok();
    assert!(to.join("model.safetensors").is_file(), "{fetch:?}");
    assert!(to.join("metrics.json").is_file(), "{fetch:?}");
    // The container is gone; the record says so.
    assert!(rec.get("container").is_none(), "{rec}");
}

/// `--backend docker --registry` pins the registry's digest: a later
/// launch on an engine without the image (removed here, or another
/// machine's) pulls it by that digest and runs it. It once found the tag in
/// the registry, pushed nothing, and failed for the image not being here.
#[test]
fn a_docker_run_pinned_to_a_registry_pulls_the_image_it_lacks() {
    let registry = test_registry();
    let base = test_base_image();
    let lab = Lab::new(&experiment("e2e-dpull", "data", "data", true, 1, ""));
    // A commit of its own: a tag no other test pushed.
    lab_git(
        &lab,
        &["commit", "-q", "--allow-empty", "-m", &unique("e2e-dpull")],
    );
    let password = sca_e2e::test_registry_credentials();
    let file = lab.file();
    let run = |force: bool| {
        let mut args = vec![
            "experiment",
            "run",
            &file,
            "--backend",
            "docker",
            "--registry",
            &registry,
            "--base",
            base,
            "--allow-dirty",
            "--output",
            "json",
        ];
        if force {
            args.push("--force");
        }
        let out = lab
            .xtask_env(
                &args,
                &[
                    ("SCA_REGISTRY_USERNAME", "AWS"),
                    ("SCA_REGISTRY_PASSWORD", &password),
                ],
            )
            .ok();
        (Lab::record(&out), out)
    };
    let (first, _) = run(false);
    assert_eq!(first["status"], "Completed", "{first}");
    let image = rec_str(&first, "image").to_string();
    assert!(
        image.starts_with(&format!("{registry}/")) && image.contains("@sha256:"),
        "{first}"
    );
    let id = sca_e2e::docker(&["image", "inspect", "--format", "{{.Id}}", &image]).ok();
    sca_e2e::docker(&["rmi", "-f", id.stdout.trim()]).ok();
    let gone = sca_e2e::docker(&["image", "inspect", &image]);
    assert!(
        !gone.success(),
        "the image is still in the engine: {gone:?}"
    );
    let (second, out) = run(true);
    assert_eq!(second["status"], "Completed", "{second}\n{out:?}");
    assert_eq!(second["image"], first["image"], "the same digest: {second}");
    assert!(out.stderr.contains("pulling "), "{out:?}");
}

/// `experiment run --backend docker ... 2>&1 | head -1`: both of the
/// launcher's streams lose their reader once the container's log flows. The
/// launcher follows the container to its end and records it (a warning on
/// the closed stderr once ended it, the job left InProgress).
#[test]
fn a_docker_run_outlives_its_closed_stdout_and_stderr() {
    require_services();
    let base = test_base_image();
    let lab = Lab::new(&experiment("e2e-dhead", "data", "data", true, 2, ""));
    let mut child = sca_e2e::xtask([
        "experiment",
        "run",
        &lab.file(),
        "--backend",
        "docker",
        "--base",
        base,
        "--allow-dirty",
    ])
    .envs(lab.env())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // stderr is read up to the container's start, then its reader goes.
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("(docker backend") {
                break;
            }
        }
        seen
    });
    {
        use std::io::BufRead;
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        assert!(first.starts_with("sca-train:"), "{first:?}");
    }
    let seen = stderr.join().unwrap();
    assert!(seen.contains("(docker backend"), "{seen}");
    child.wait().unwrap();
    let job = lab.job_named("e2e-dhead-");
    let rec = lab.status(&job);
    assert_eq!(rec["status"], "Completed", "{rec}");
    assert_eq!(rec["final_metrics"]["epoch"], 2, "{rec}");
    assert!(rec.get("container").is_none(), "{rec}");
}

/// An image the engine creates a container from but cannot start (its
/// entrypoint is missing): the job is recorded Failed with the engine's
/// reason and its container removed, not left InProgress for ever.
#[test]
fn a_container_the_engine_cannot_start_is_recorded_failed() {
    require_services();
    let (id, name, tagged) = pushed_image("sca-e2e-noentry", &["ENTRYPOINT [\"/sca-train\"]"]);
    let lab = Lab::new(&experiment("e2e-nostart", "data", "data", true, 1, ""));
    let run = lab.xtask(&[
        "experiment",
        "run",
        &lab.file(),
        "--backend",
        "docker",
        "--image",
        &id,
    ]);
    assert!(!run.success(), "{run:?}");
    assert!(
        run.stderr.contains("could not start") && run.stderr.contains("recorded Failed"),
        "{run:?}"
    );
    let job = lab.job_named("e2e-nostart-");
    let rec = lab.status(&job);
    assert_eq!(rec["status"], "Failed", "{rec}");
    assert!(
        rec_str(&rec, "failure_reason").starts_with("the container never started: "),
        "{rec}"
    );
    assert!(rec.get("container").is_none(), "{rec}");
    let left = sca_e2e::docker(&["ps", "-aq", "--filter", &format!("name=^{job}$")]).ok();
    assert_eq!(left.stdout.trim(), "", "the container was not removed");
    sca_e2e::docker(&["image", "rm", "-f", &name, &tagged]).ok();
}

/// An image of one file (no trainer) imported with `changes` (Dockerfile
/// instructions) and pushed to the test registry, as `image push` would: its
/// `REPO@sha256:...` reference, local name and pushed tag.
fn pushed_image(prefix: &str, changes: &[&str]) -> (String, String, String) {
    let rootfs = tempfile::tempdir().unwrap();
    std::fs::write(rootfs.path().join("README"), "no trainer here\n").unwrap();
    let tar = Command::new("tar")
        .args(["--mtime=@0", "--owner=0", "--group=0", "-C"])
        .arg(rootfs.path())
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let name = unique(prefix).to_lowercase();
    let mut args = vec!["import"];
    for change in changes {
        args.extend(["--change", change]);
    }
    args.extend(["-", &name]);
    sca_e2e::docker_with_input(&args, Some(&tar.stdout)).ok();
    let tagged = format!("{}/{name}:t", test_registry());
    sca_e2e::docker(&["tag", &name, &tagged]).ok();
    let config = sca_e2e::registry_login();
    let cfg = config.path().to_str().unwrap();
    sca_e2e::docker(&["--config", cfg, "push", &tagged]).ok();
    let digests = sca_e2e::docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        &tagged,
    ])
    .ok();
    let id = digests.stdout.trim().to_string();
    assert!(id.contains("@sha256:"), "{digests:?}");
    (id, name, tagged)
}

/// `--image` must hold the pinned commit: an image whose revision label
/// names another commit, or a dirty build of this one, is refused before
/// anything is listed or launched, and so is any `--image` with
/// uncommitted changes (no given image can be shown to hold them). The
/// commit's own image is taken; one that says nothing, with a warning.
#[test]
fn a_given_image_must_hold_the_pinned_commit() {
    require_services();
    let lab = Lab::new(&experiment("e2e-given", "data", "data", true, 1, ""));
    let commit = lab.commit();
    let label = |revision: &str, version: &str| {
        pushed_image(
            "sca-e2e-given",
            &[&format!(
                "LABEL org.opencontainers.image.revision={revision} org.opencontainers.image.version={version}"
            )],
        )
    };
    let run = |image: &str| {
        lab.xtask(&[
            "experiment",
            "run",
            &lab.file(),
            "--backend",
            "docker",
            "--image",
            image,
            "--allow-dirty",
            "--dry-run",
        ])
    };
    let other = "0123456789abcdef0123456789abcdef01234567";
    let mut made = Vec::new();
    for (revision, version, refused) in [
        (other, "0123456789ab", Some(format!("holds commit {other}"))),
        (
            commit.as_str(),
            &format!("{}-dirty-0123456789ab", &commit[..12]),
            Some(format!("holds uncommitted changes made on commit {commit}")),
        ),
        // Built with `--tag` from a dirty tree: its label says so.
        (
            commit.as_str(),
            &format!("{} org.sca.dirty=true", &commit[..12]),
            Some(format!("holds uncommitted changes made on commit {commit}")),
        ),
        (commit.as_str(), &commit[..12], None),
    ] {
        let (image, name, tagged) = label(revision, version);
        let out = run(&image);
        match refused {
            Some(why) => {
                assert!(!out.success(), "{out:?}");
                assert!(
                    out.stderr.contains(&why)
                        && out
                            .stderr
                            .contains(&format!("this launch pins commit {commit}"))
                        && !out.stderr.contains("pinned the data"),
                    "{out:?}"
                );
            }
            None => {
                let out = out.ok();
                assert!(!out.stderr.contains("warning"), "{out:?}");
            }
        }
        made.extend([name, tagged]);
    }
    // An image that says nothing of its commit: taken, with a warning.
    let (plain, name, tagged) = pushed_image("sca-e2e-given", &[]);
    let out = run(&plain).ok();
    assert!(
        out.stderr.contains("which commit it holds cannot be read"),
        "{out:?}"
    );
    made.extend([name, tagged]);
    // Uncommitted changes: no given image holds them.
    std::fs::write(lab.repo.path().join("edit.txt"), "uncommitted\n").unwrap();
    let out = run(&plain);
    assert!(
        !out.success()
            && out
                .stderr
                .contains("the working tree has uncommitted changes"),
        "{out:?}"
    );
    assert_eq!(lab.job_dirs(), 0);
    let mut rm = vec!["image", "rm", "-f"];
    rm.extend(made.iter().map(String::as_str));
    sca_e2e::docker(&rm).ok();
}

/// An image in ECR is checked by the tags `image push` gave it: one pushed
/// from another commit is refused, this commit's is taken.
#[test]
fn a_given_ecr_image_is_checked_by_its_tags() {
    let Emulated {
        data, job_table, ..
    } = emulated();
    let lab = Lab::new(&experiment(
        &unique("e2e-ecrtag"),
        &data,
        &data,
        false,
        1,
        &job_table,
    ));
    let commit = lab.commit();
    let repo = unique("sca-given").to_lowercase();
    let other = "0123456789ab";
    // This commit, built on an arm64 engine (`derive_tag` names it).
    let arm = format!("{}-prebuilt-aaaaaaaaaaaa-arm64", &commit[..12]);
    let put = boto3(
        r#"
import sys, json
ecr = client("ecr")
ecr.create_repository(repositoryName=sys.argv[1])
out = {}
for tag, layer in [(sys.argv[2], "1"), (sys.argv[3], "2"), (sys.argv[4], "3")]:
    blob = {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1, "digest": "sha256:" + layer * 64}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "config": dict(blob, mediaType="application/vnd.docker.container.image.v1+json"), "layers": [blob]}
    image = ecr.put_image(repositoryName=sys.argv[1], imageManifest=json.dumps(manifest), imageTag=tag)["image"]
    out[tag] = image["imageId"]["imageDigest"]
print(json.dumps(out))
"#,
        &[&repo, &commit[..12], other, &arm],
    )
    .ok();
    let digests: Value = serde_json::from_str(put.stdout.trim()).unwrap();
    let image = |tag: &str| {
        format!(
            "123456789012.dkr.ecr.us-west-2.amazonaws.com/{repo}@{}",
            rec_str(&digests, tag)
        )
    };
    let run = |image: &str| {
        lab.xtask(&[
            "experiment",
            "run",
            &lab.file(),
            "--backend",
            "sagemaker",
            "--image",
            image,
            "--dry-run",
        ])
    };
    let refused = run(&image(other));
    assert!(!refused.success(), "{refused:?}");
    assert!(
        refused.stderr.contains(&format!("holds commit {other}"))
            && refused.stderr.contains(&format!("({other})")),
        "{refused:?}"
    );
    let taken = run(&image(&commit[..12])).ok();
    assert!(!taken.stderr.contains("warning"), "{taken:?}");
    // The right commit, but an image SageMaker's x86 instances cannot run.
    let arm64 = run(&image(&arm));
    assert!(!arm64.success(), "{arm64:?}");
    assert!(
        arm64.stderr.contains("is an image for arm64") && arm64.stderr.contains("amd64"),
        "{arm64:?}"
    );
}

/// A launcher that died between creating its container and starting it (a
/// second's window) leaves a container nothing will start: `status` ends
/// the job as Failed and removes the container, once the launch is well
/// past, instead of keeping it InProgress for ever.
#[test]
fn a_container_created_and_never_started_is_failed_by_status() {
    require_services();
    let base = test_base_image();
    let lab = Lab::new(&experiment("e2e-created", "data", "data", true, 1, ""));
    // A record of a finished local run, made into a docker job whose
    // launcher died after the create.
    let done = Lab::record(
        &lab.xtask(&["experiment", "run", &lab.file(), "--output", "json"])
            .ok(),
    );
    let job = rec_str(&done, "job_name").to_string();
    let created = sca_e2e::docker(&["create", "--name", &job, base, "/bin/true"]).ok();
    let id = created.stdout.trim().to_string();
    let path = lab.runs.join(&job).join("record.json");
    let mut rec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let obj = rec.as_object_mut().unwrap();
    obj.insert("backend".into(), "docker".into());
    obj.insert("status".into(), "InProgress".into());
    obj.insert("container".into(), id.clone().into());
    obj.insert("started".into(), "2026-01-01T00:00:00Z".into());
    for key in ["finished", "final_metrics", "pid", "exit_code"] {
        obj.remove(key);
    }
    std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();

    let after = lab.status(&job);
    assert_eq!(after["status"], "Failed", "{after}");
    assert!(
        rec_str(&after, "failure_reason").contains("never started: its launcher is gone"),
        "{after}"
    );
    let left = sca_e2e::docker(&["ps", "-aq", "--filter", &format!("id={id}")]).ok();
    assert_eq!(left.stdout.trim(), "", "the container was not removed");
}

#[test]
fn a_trainer_killed_without_a_stop_request_is_failed_not_stopped() {
    // What the kernel's OOM killer does: SIGKILL, no `experiment stop`.
    let lab = Lab::new(&experiment("e2e-kill9", "data", "data", true, 200, ""));
    let (mut child, job) = launch_until_training(&lab);
    let pid = trainer_pid(&lab, &job);
    let kill = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child_output(&mut child);
    assert!(!out.success(), "a killed job exits non-zero: {out:?}");
    let rec = Lab::record(&out);
    assert_eq!(rec["status"], "Failed", "{rec}");
    assert_eq!(
        rec["failure_reason"], "killed (SIGKILL; out of memory?) without a stop request",
        "{rec}"
    );
    assert!(rec.get("pid").is_none(), "{rec}");
}

/// The docker launcher killed while its container trains on (issue 17,
/// defect 3): the container finishes unwatched, and `status` concludes it
/// as the launcher would have: the exit code read from the engine, the
/// whole log, the model packed, the container removed, the record Completed.
#[test]
fn status_concludes_a_docker_run_whose_launcher_died() {
    require_services();
    let base = test_base_image();
    // Epochs enough that a loaded machine still catches it training.
    let lab = Lab::new(&experiment("e2e-dorphan", "data", "data", true, 150, ""));
    let (mut child, job) = docker_run_until_training(&lab, base);
    child.kill().unwrap();
    child.wait().unwrap();
    let first = lab
        .xtask(&["experiment", "status", &job, "--output", "json"])
        .ok();
    assert_eq!(
        Lab::record(&first)["status"],
        "InProgress",
        "the container trains on after its launcher died"
    );
    let start = Instant::now();
    let rec = loop {
        let status = lab
            .xtask(&["experiment", "status", &job, "--output", "json"])
            .ok();
        let rec = Lab::record(&status);
        if rec["status"] != "InProgress" {
            break rec;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "still InProgress after 600 s: {rec}"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    assert_eq!(rec["status"], "Completed", "{rec}");
    assert!(
        rec.get("container").is_none(),
        "the container is removed: {rec}"
    );
    let run_dir = lab.runs.join(&job);
    assert!(
        run_dir.join("model.tar.gz").is_file(),
        "the model is packed"
    );
    let log = std::fs::read_to_string(run_dir.join("train.log")).unwrap();
    assert!(
        log.contains("epoch=150 split=val"),
        "the whole container log, the epochs after the launcher died included: {log}"
    );
    let left = sca_e2e::docker(&["ps", "-aq", "--filter", &format!("name={job}")]).ok();
    assert_eq!(left.stdout.trim(), "", "no container is left");
}

/// `experiment stop` of a docker run whose container already ended unseen
/// (its launcher gone, the container killed from outside) is refused, and
/// the run is recorded as it ended: Failed, killed without a stop request.
/// The engine answers a stop of an exited container with success, and the
/// run was recorded "stopped on request".
#[test]
fn stopping_a_docker_run_that_already_ended_records_how_it_ended() {
    require_services();
    let base = test_base_image();
    let lab = Lab::new(&experiment("e2e-dkilled", "data", "data", true, 400, ""));
    let (mut child, job) = docker_run_until_training(&lab, base);
    child.kill().unwrap();
    child.wait().unwrap();
    sca_e2e::docker(&["kill", &job]).ok();
    wait_until_exited(&job);
    let stop = lab.xtask(&["experiment", "stop", &job]);
    assert!(!stop.success(), "{stop:?}");
    assert!(stop.stderr.contains("is not running"), "{stop:?}");
    let rec = lab.status(&job);
    assert_eq!(rec["status"], "Failed", "{rec}");
    assert!(
        rec_str(&rec, "failure_reason").contains("without a stop request"),
        "{rec}"
    );
}

/// The same, its exited container removed (`docker container prune`)
/// before any `status`: the exit code the trainer left in the run's
/// `/opt/ml` concludes it, Completed with its model packed, not Failed for
/// a container gone.
#[test]
fn status_concludes_a_docker_run_whose_container_was_pruned() {
    require_services();
    let base = test_base_image();
    let lab = Lab::new(&experiment("e2e-dpruned", "data", "data", true, 40, ""));
    let (mut child, job) = docker_run_until_training(&lab, base);
    child.kill().unwrap();
    child.wait().unwrap();
    let id = wait_until_exited(&job);
    sca_e2e::docker(&["rm", &id]).ok();
    let rec = lab.status(&job);
    assert_eq!(rec["status"], "Completed", "{rec}");
    assert_eq!(rec["final_metrics"]["epoch"], 40, "{rec}");
    assert!(
        lab.runs.join(&job).join("model.tar.gz").is_file(),
        "the model is packed"
    );
}

/// A `status` that concludes a docker run while its launcher is held up
/// (here stopped with SIGSTOP until then) removes the container; the
/// launcher, going on, finds it gone and returns the run as that `status`
/// recorded it, Completed, exit 0: not an error for a run that completed.
#[test]
fn a_docker_launcher_outrun_by_a_status_returns_the_recorded_end() {
    require_services();
    let base = test_base_image();
    let lab = Lab::new(&experiment("e2e-doutrun", "data", "data", true, 40, ""));
    let (mut child, job) = docker_run_until_training(&lab, base);
    let launcher = child.id().to_string();
    let signal = |sig: &str| {
        let sent = Command::new("kill")
            .args([sig, &launcher])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {sig}");
    };
    /// Lets the launcher go however the test ends.
    struct Resume(String);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-CONT", &self.0])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _resume = Resume(launcher.clone());
    signal("-STOP");
    wait_until_exited(&job);
    let rec = lab.status(&job);
    assert_eq!(rec["status"], "Completed", "{rec}");
    signal("-CONT");
    let out = child_output(&mut child);
    assert!(out.success(), "{out:?}");
    assert_eq!(Lab::record(&out)["status"], "Completed", "{out:?}");
    assert!(lab.runs.join(&job).join("model.tar.gz").is_file());
}

#[test]
fn docker_stop_sends_sigterm_and_the_job_is_stopped() {
    require_services();
    let base = test_base_image();
    let lab = Lab::new(&experiment("e2e-dstop", "data", "data", true, 200, ""));
    let (mut child, job) = docker_run_until_training(&lab, base);
    lab.xtask(&["experiment", "stop", &job]).ok();
    let out = child_output(&mut child);
    let rec = Lab::record(&out);
    assert_eq!(rec["status"], "Stopped", "{rec}\n{out:?}");
    assert!(!out.success());
}

/// A container removed by hand (`docker rm -f`) while its launcher follows
/// it: the record says the container was removed before its end was read,
/// not that the launcher was gone (the launcher itself wrote that). The
/// launcher is held (SIGSTOP) over the removal, so that it finds the
/// container gone, not merely killed.
#[test]
fn a_container_removed_under_its_launcher_is_recorded_so() {
    require_services();
    let base = test_base_image();
    let lab = Lab::new(&experiment("e2e-drm", "data", "data", true, 200, ""));
    let (mut child, job) = docker_run_until_training(&lab, base);
    let _gone = RemovedAtEnd(job.clone());
    let launcher = child.id().to_string();
    /// Lets the launcher go however the test ends.
    struct Resume(String);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-CONT", &self.0]).status();
        }
    }
    let resume = Resume(launcher.clone());
    assert!(Command::new("kill")
        .args(["-STOP", &launcher])
        .status()
        .unwrap()
        .success());
    sca_e2e::docker(&["rm", "-f", &job]).ok();
    drop(resume);
    let out = child_output(&mut child);
    let rec = Lab::record(&out);
    assert_eq!(rec["status"], "Failed", "{rec}\n{out:?}");
    let reason = rec_str(&rec, "failure_reason");
    assert!(
        reason.contains("was removed") && !reason.contains("launcher was gone"),
        "{rec}"
    );
}

/// As on the local backend: a container whose launcher was killed is
/// stopped at `max_runtime` by a look at the run past it.
#[test]
fn docker_max_runtime_holds_after_the_launcher_is_killed() {
    require_services();
    let base = test_base_image();
    let lab = Lab::new(&outlasting_max_runtime("e2e-dmaxrt-k"));
    let (child, job) = docker_run_until_training(&lab, base);
    let _gone = RemovedAtEnd(job.clone());
    stopped_by_a_look_at_max_runtime(&lab, &job, child);
}

/// Removes the container named so however the test ends.
struct RemovedAtEnd(String);

impl Drop for RemovedAtEnd {
    fn drop(&mut self) {
        let _ = sca_e2e::docker(&["rm", "-f", &self.0]);
    }
}

/// A Docker engine of an ID of its own that knows no container, as a
/// shell whose `DOCKER_HOST` names another engine reaches: on a unix socket
/// in `dir`; its `DOCKER_HOST`.
fn stranger_engine(dir: &Path) -> String {
    use std::io::{BufRead, BufReader, Write};
    let path = dir.join("stranger.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let line = |reader: &mut BufReader<_>| {
                    let mut line = String::new();
                    (reader.read_line(&mut line).unwrap_or(0) > 0).then_some(line)
                };
                // One GET after another (keep-alive), none with a body.
                while let Some(request) = line(&mut reader) {
                    while line(&mut reader).is_some_and(|h| h != "\r\n") {}
                    let path = request.split_whitespace().nth(1).unwrap_or_default();
                    let (status, body) = if path.ends_with("/version") {
                        ("200 OK", r#"{"ApiVersion":"1.41","Version":"20.10.0"}"#)
                    } else if path.ends_with("/info") {
                        ("200 OK", r#"{"ID":"stranger-engine"}"#)
                    } else {
                        ("404 Not Found", r#"{"message":"No such container"}"#)
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("unix://{}", path.display())
}

/// A `status` through another Docker engine than the one running the job
/// (another `DOCKER_HOST` in this shell), which does not know its
/// container, refuses to judge the run, with its launcher alive or gone,
/// rather than record it Failed as removed while it trains on. Through its
/// own engine the run is then stopped and recorded so.
#[test]
fn a_docker_run_is_not_judged_through_another_engine() {
    require_services();
    let base = test_base_image();
    let lab = Lab::new(&experiment("e2e-dother", "data", "data", true, 200, ""));
    let (mut child, job) = docker_run_until_training(&lab, base);
    let _gone = RemovedAtEnd(job.clone());
    let stranger = stranger_engine(lab.dir.path());
    let record = lab.runs.join(&job).join("record.json");
    let stored = || -> Value { serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap() };

    // A record from before the engine was recorded cannot tell, but while
    // its launcher is at work, an unknown container is left to it.
    let with_engine = stored();
    assert!(with_engine["engine_id"].is_string(), "{with_engine}");
    let mut without = with_engine.clone();
    without.as_object_mut().unwrap().remove("engine_id");
    std::fs::write(&record, serde_json::to_vec_pretty(&without).unwrap()).unwrap();
    let out = lab.xtask_env(
        &["experiment", "status", &job, "--output", "json"],
        &[("DOCKER_HOST", &stranger)],
    );
    assert_eq!(Lab::record(&out.ok())["status"], "InProgress");
    assert_eq!(stored(), without, "left as it was");
    std::fs::write(&record, serde_json::to_vec_pretty(&with_engine).unwrap()).unwrap();

    for launcher in ["alive", "killed"] {
        if launcher == "killed" {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        let out = lab.xtask_env(
            &["experiment", "status", &job, "--output", "json"],
            &[("DOCKER_HOST", &stranger)],
        );
        assert!(!out.success(), "launcher {launcher}: {out:?}");
        assert!(
            out.stderr.contains("which does not know it") && out.stderr.contains(&stranger),
            "launcher {launcher}: {out:?}"
        );
        let stored = stored();
        assert_eq!(
            stored["status"], "InProgress",
            "launcher {launcher}: {stored}"
        );
    }
    lab.xtask(&["experiment", "stop", &job]).ok();
    let start = Instant::now();
    let rec = loop {
        let rec = lab.status(&job);
        if rec["status"] != "InProgress" && rec["status"] != "Stopping" {
            break rec;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "{rec}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(rec["status"], "Stopped", "{rec}");
}

/// Synthetic tiles uploaded to the emulator's S3 under `s3://BUCKET/data/`.
#[test]
fn sagemaker_backend_creates_one_correct_job_and_every_lifecycle_command_reads_it() {
    let registry = test_registry();
    let base = test_base_image();
    let data_bucket = unique("sca-data").to_lowercase();
    let config_bucket = unique("sca-cfg").to_lowercase();
    make_bucket(&data_bucket);
    make_bucket(&config_bucket);
    let data = s3_dataset(&data_bucket);
    let job_table = format!(
        "config_bucket = \"{config_bucket}\"\noutput = \"s3://{data_bucket}/models\"\ntags = {{ team = \"snow\" }}"
    );
    let lab = Lab::new(&experiment("e2e-sm", &data, &data, false, 1, &job_table));
    let password = sca_e2e::test_registry_credentials();
    let run = lab
        .xtask_env(
            &[
                "experiment",
                "run",
                &lab.file(),
                "--backend",
                "sagemaker",
                "--registry",
                &registry,
                "--base",
                base,
                "--allow-dirty",
                "--wait",
                "--output",
                "json",
            ],
            &[
                ("SCA_REGISTRY_USERNAME", "AWS"),
                ("SCA_REGISTRY_PASSWORD", &password),
            ],
        )
        .ok();
    let rec = Lab::record(&run);
    let job = rec_str(&rec, "job_name").to_string();
    let image = rec_str(&rec, "image").to_string();
    let digest = rec_str(&rec, "image_digest").to_string();
    assert!(
        image.starts_with(&format!("{registry}/sca-train@sha256:")),
        "{rec}"
    );
    assert!(image.ends_with(&digest));
    assert_eq!(
        rec["status"], "Completed",
        "the emulator completes jobs at once: {rec}"
    );
    assert_eq!(rec["data_objects"], 32);

    // What the emulator received.
    let seen = boto3(
        r#"
import sys, json
sm = client("sagemaker")
job = sm.describe_training_job(TrainingJobName=sys.argv[1])
jobs = sm.list_training_jobs(NameContains=sys.argv[1])["TrainingJobSummaries"]
s3 = client("s3")
prefix = "experiments/%s/config/" % sys.argv[1]
objs = s3.list_objects_v2(Bucket=sys.argv[2], Prefix=prefix).get("Contents", [])
files = {o["Key"][len(prefix):]: s3.get_object(Bucket=sys.argv[2], Key=o["Key"])["Body"].read().decode() for o in objs}
record = s3.get_object(Bucket=sys.argv[2], Key="experiments/%s/record.json" % sys.argv[1])["Body"].read().decode()
tags = sm.list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]
print(json.dumps({"job": job, "tags": tags, "count": len(jobs), "files": files, "record": json.loads(record)}, default=str))
"#,
        &[&job, &config_bucket],
    )
    .ok();
    let seen: Value = serde_json::from_str(seen.stdout.trim()).unwrap();
    let described = &seen["job"];
    assert_eq!(seen["count"], 1, "exactly one job");
    // The record's end is SageMaker's, to the second.
    let ended = boto3(
        "import sys, datetime\nt = client('sagemaker').describe_training_job(TrainingJobName=sys.argv[1])['TrainingEndTime']\nprint(t.astimezone(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))",
        &[&job],
    )
    .ok();
    let ended = ended.stdout.trim().to_string();
    assert_eq!(rec["finished"], ended.as_str(), "{rec}");
    assert_eq!(
        described["AlgorithmSpecification"]["TrainingImage"],
        image.as_str()
    );
    assert_eq!(
        described["AlgorithmSpecification"]["TrainingInputMode"],
        "File"
    );
    assert_eq!(described["ResourceConfig"]["InstanceType"], "ml.m5.xlarge");
    assert_eq!(described["ResourceConfig"]["InstanceCount"], 1);
    assert_eq!(described["StoppingCondition"]["MaxRuntimeInSeconds"], 3600);
    assert_eq!(
        described["RoleArn"],
        "arn:aws:iam::123456789012:role/SageMakerSnowCover"
    );
    assert_eq!(
        described["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"],
        format!("s3://{config_bucket}/experiments/{job}/config/")
    );
    assert_eq!(
        described["OutputDataConfig"]["S3OutputPath"],
        format!("s3://{data_bucket}/models")
    );
    let tags: std::collections::BTreeMap<String, String> = seen["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["Key"].as_str().unwrap().into(),
                t["Value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(tags["sca:commit"], rec_str(&rec, "commit"));
    assert_eq!(tags["sca:image-digest"], digest);
    assert_eq!(
        tags["sca:experiment-sha256"],
        rec_str(&rec, "experiment_sha256")
    );
    assert_eq!(tags["sca:experiment"], "e2e-sm");
    let launch_id = &tags["sca:launch-id"];
    assert!(
        launch_id.len() == 32 && launch_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{launch_id}"
    );
    assert_eq!(tags["team"], "snow");
    let bytes = std::fs::read_to_string(lab.dir.path().join("exp.toml")).unwrap();
    assert_eq!(
        seen["files"]["exp.toml"],
        bytes.as_str(),
        "the channel holds the file byte for byte"
    );
    let manifest: Value =
        serde_json::from_str(seen["files"]["manifest.json"].as_str().unwrap()).unwrap();
    assert_eq!(manifest["objects"].as_array().unwrap().len(), 32);
    // And the experiment as this launch resolved it, defaults filled in.
    let resolved: Value =
        serde_json::from_str(seen["files"]["experiment.resolved.json"].as_str().unwrap()).unwrap();
    assert_eq!(resolved["experiment"]["name"], "e2e-sm");
    assert!(resolved["train"]["weight_decay"].is_number(), "{resolved}");
    assert_eq!(
        seen["record"]["job_name"],
        job.as_str(),
        "the record is beside the config"
    );

    // A job followed by nobody (launched without --wait), looked at later:
    // `status` records SageMaker's end time, not the time it looked.
    let path = lab.runs.join(&job).join("record.json");
    let mut unfollowed: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    unfollowed["status"] = "InProgress".into();
    unfollowed.as_object_mut().unwrap().remove("finished");
    std::fs::write(&path, serde_json::to_vec(&unfollowed).unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let later = lab.status(&job);
    assert_eq!(later["status"], "Completed", "{later}");
    assert_eq!(later["finished"], ended.as_str(), "{later}");

    // status and list.
    let status = lab.xtask(&["experiment", "status", &job]).ok();
    assert!(
        status.stdout.contains("Completed") && status.stdout.contains(&digest),
        "{status:?}"
    );
    let list = lab
        .xtask(&["experiment", "list", "--experiment", "e2e-sm"])
        .ok();
    assert!(
        list.stdout.contains(&job) && list.stdout.contains("sagemaker"),
        "{list:?}"
    );
    // From another machine: only the record in the config bucket.
    let elsewhere = tempfile::tempdir().unwrap();
    let remote = run_xtask_env(
        &[
            "experiment",
            "list",
            "--remote",
            "--bucket",
            &config_bucket,
            "--output",
            "json",
        ],
        &[("SCA_RUNS_DIR", elsewhere.path().to_str().unwrap())],
    )
    .ok();
    let remote: Value = serde_json::from_str(remote.stdout.trim()).unwrap();
    assert_eq!(remote.as_array().unwrap().len(), 1, "{remote}");
    assert_eq!(remote[0]["job_name"], job.as_str());
    assert_eq!(remote[0]["image_digest"], digest.as_str());

    // logs: CloudWatch Logs, where SageMaker's containers write.
    boto3(
        r#"
import sys, time
logs = client("logs")
try:
    logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
except logs.exceptions.ResourceAlreadyExistsException:
    pass
stream = sys.argv[1] + "/algo-1-1700000000"
logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream)
logs.put_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream,
    logEvents=[{"timestamp": int(time.time() * 1000) + i, "message": "epoch=1 split=val line %d" % i} for i in range(3)])
"#,
        &[&job],
    )
    .ok();
    let logs = lab.xtask(&["experiment", "logs", &job]).ok();
    for i in 0..3 {
        assert!(
            logs.stdout.contains(&format!("split=val line {i}")),
            "{logs:?}"
        );
    }
    // A reader gone before the first line (`logs JOB | head`) is no panic.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let closed: Run = sca_e2e::xtask(["experiment", "logs", &job])
        .envs(lab.env())
        .stdout(writer)
        .output()
        .unwrap()
        .into();
    assert!(
        closed.success() && !closed.stderr.contains("panicked"),
        "{closed:?}"
    );
    // `logs --follow` outlasts Describe answers lost past the SDK's own
    // retries, as `run --wait` does.
    let proxy = sca_e2e::fault_proxy::FaultProxy::start(
        &std::env::var("AWS_ENDPOINT_URL").unwrap(),
        vec![sca_e2e::fault_proxy::Rule {
            needle: "SageMaker.DescribeTrainingJob".into(),
            every: 1,
            // The SDK's three attempts: one look.
            limit: 3,
            fault: sca_e2e::fault_proxy::Fault::DropResponse,
        }],
    );
    let mut env = lab.env();
    env.push(("AWS_ENDPOINT_URL", proxy.url()));
    let followed: Run = sca_e2e::xtask(["experiment", "logs", "--follow", &job])
        .envs(env)
        .output()
        .unwrap()
        .into();
    assert_eq!(proxy.injected(0), 3, "{:?}", proxy.requests());
    assert!(
        followed.success()
            && followed.stderr.contains("looking again (1 of 5)")
            && followed.stdout.contains("split=val line 2"),
        "{followed:?}"
    );
    // A log this role may not read is an error saying so, not an empty log.
    let proxy = sca_e2e::fault_proxy::FaultProxy::start(
        &std::env::var("AWS_ENDPOINT_URL").unwrap(),
        vec![sca_e2e::fault_proxy::Rule::always(
            "Logs_20140328.GetLogEvents",
            sca_e2e::fault_proxy::Fault::AccessDenied,
        )],
    );
    let mut env = lab.env();
    env.push(("AWS_ENDPOINT_URL", proxy.url()));
    let denied: Run = sca_e2e::xtask(["experiment", "logs", &job])
        .envs(env)
        .output()
        .unwrap()
        .into();
    assert!(proxy.injected(0) >= 1, "{:?}", proxy.requests());
    assert!(
        !denied.success()
            && denied
                .stderr
                .contains(&format!("reading the CloudWatch log of {job}"))
            && !denied.stdout.contains("split=val"),
        "{denied:?}"
    );

    // fetch: model.tar.gz where SageMaker leaves it.
    let tgz_dir = tempfile::tempdir().unwrap();
    std::fs::write(tgz_dir.path().join("model.safetensors"), b"weights").unwrap();
    std::fs::write(tgz_dir.path().join("metrics.json"), b"[]").unwrap();
    let tgz = tgz_dir.path().join("model.tar.gz");
    let ok = Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(tgz_dir.path())
        .args(["model.safetensors", "metrics.json"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    boto3(
        "import sys\nclient('s3').upload_file(sys.argv[1], sys.argv[2], 'models/%s/output/model.tar.gz' % sys.argv[3])",
        &[tgz.to_str().unwrap(), &data_bucket, &job],
    )
    .ok();
    let to = lab.dir.path().join("fetched");
    lab.xtask(&["experiment", "fetch", &job, "--to", to.to_str().unwrap()])
        .ok();
    assert_eq!(
        std::fs::read(to.join("model.safetensors")).unwrap(),
        b"weights"
    );

    // rerun: the same image digest (nothing rebuilt), commit, experiment and data.
    let again = Lab::record(
        &lab.xtask(&["experiment", "rerun", &job, "--output", "json"])
            .ok(),
    );
    for key in [
        "image",
        "image_digest",
        "commit",
        "experiment_sha256",
        "data_manifest_sha256",
    ] {
        assert_eq!(again[key], rec[key], "{key}");
    }
    assert_ne!(again["job_name"], rec["job_name"]);
}

#[test]
fn sagemaker_launch_faults_say_what_to_do_and_create_nothing() {
    require_services();
    let data_bucket = unique("sca-data").to_lowercase();
    make_bucket(&data_bucket);
    let data = s3_dataset(&data_bucket);
    let image = format!("{}/sca-train@sha256:{}", test_registry(), "a".repeat(64));
    let missing = unique("sca-missing").to_lowercase();
    let lab = Lab::new(&experiment(
        "e2e-smfault",
        &data,
        &data,
        false,
        1,
        &format!("config_bucket = \"{missing}\"\noutput = \"s3://{data_bucket}/models\""),
    ));
    let base = [
        "experiment",
        "run",
        &lab.file(),
        "--backend",
        "sagemaker",
        "--image",
        &image,
        "--allow-dirty",
    ];

    // The dry run prints the exact request and changes nothing.
    let mut args = base.to_vec();
    args.push("--dry-run");
    let dry = lab.xtask(&args).ok();
    let out: Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(
        out["CreateTrainingJob"]["AlgorithmSpecification"]["TrainingImage"],
        image.as_str()
    );
    assert!(
        out["CreateTrainingJob"]["AlgorithmSpecification"]["MetricDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["Name"] == "val:iou")
    );
    let job = out["CreateTrainingJob"]["TrainingJobName"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(lab.job_dirs(), 0);
    assert_eq!(out["record"]["resolved_job"]["region"], "us-west-2");
    // `--region` is where the job runs, so the record (which later
    // commands find the job by, and cost is priced at) says it.
    let mut args = base.to_vec();
    args.extend(["--dry-run", "--region", "eu-central-1"]);
    let moved = lab.xtask(&args).ok();
    let out: Value = serde_json::from_str(&moved.stdout).unwrap();
    assert_eq!(out["record"]["resolved_job"]["region"], "eu-central-1");

    // A config bucket that does not exist: named, not created.
    let run = lab.xtask(&base);
    assert!(!run.success());
    assert!(
        run.stderr.contains(&missing) && run.stderr.contains("does not exist"),
        "{run:?}"
    );
    let exists = boto3(
        "import sys\nprint(len([b for b in client('s3').list_buckets()['Buckets'] if b['Name'] == sys.argv[1]]))",
        &[&missing],
    )
    .ok();
    assert_eq!(exists.stdout.trim(), "0", "no bucket was created");

    // No credentials: one line on how to configure them.
    let run = lab.xtask_env(
        &base,
        &[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("AWS_SESSION_TOKEN", ""),
            ("AWS_PROFILE", ""),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
            ("AWS_CONFIG_FILE", "/nonexistent/config"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    assert!(!run.success());
    assert!(
        run.stderr.contains("no AWS credentials found") && run.stderr.contains("aws configure"),
        "{run:?}"
    );

    let count = boto3(
        "import sys\nprint(len(client('sagemaker').list_training_jobs(NameContains=sys.argv[1])['TrainingJobSummaries']))",
        &[&job[..job.len() - 16]],
    )
    .ok();
    assert_eq!(count.stdout.trim(), "0", "no job was created");
    assert_eq!(lab.job_dirs(), 0, "a failed launch leaves no job directory");
}

/// Credentials only in a named profile, none in the environment: `--profile`
/// reaches every step that reads AWS, the launcher's data listing and the
/// local trainer's reads of S3 included (both used the default chain once).
#[test]
fn a_named_profile_serves_the_data_listing_and_the_local_trainer() {
    let Emulated { data, .. } = emulated();
    let aws = tempfile::tempdir().unwrap();
    let credentials = aws.path().join("credentials");
    let config = aws.path().join("config");
    std::fs::write(
        &credentials,
        "[research]\naws_access_key_id = test\naws_secret_access_key = test\n",
    )
    .unwrap();
    std::fs::write(&config, "[profile research]\nregion = us-west-2\n").unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_SECRET_ACCESS_KEY", ""),
        ("AWS_SESSION_TOKEN", ""),
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let lab = Lab::new(&experiment("e2e-profile", &data, &data, false, 1, ""));
    let args = ["experiment", "run", &lab.file(), "--output", "json"];

    let run = lab.xtask_env(&args, &env);
    assert!(!run.success());
    assert!(
        run.stderr.contains("no AWS credentials found"),
        "without --profile the default chain has nothing: {run:?}"
    );
    let mut undefined = args.to_vec();
    undefined.extend(["--profile", "nosuch"]);
    let run = lab.xtask_env(&undefined, &env);
    assert!(!run.success());
    assert!(
        run.stderr
            .contains("is profile `nosuch` (--profile) defined"),
        "{run:?}"
    );

    let mut with_profile = args.to_vec();
    with_profile.extend(["--profile", "research"]);
    let rec = Lab::record(&lab.xtask_env(&with_profile, &env).ok());
    assert_eq!(rec["status"], "Completed", "{rec}");
    assert_eq!(rec["data_objects"], 32, "16 image + 16 mask tiles: {rec}");
}

/// Occupy every job name a launch of `name` at `commit` could take in the
/// next two minutes, as another machine's launch in the same second would:
/// `mode` "s3" puts a different experiment file in each name's config
/// channel, "s3-other-file" one under another file name, "sagemaker" creates each training job with the same experiment
/// and commit tags (but not the launch's own id); "clear" empties the
/// bucket's `experiments/`.
fn occupy_job_names(mode: &str, name: &str, commit: &str, bucket: &str, sha256: &str) {
    boto3(
        r#"
import sys, datetime
mode, name, commit, bucket, sha = sys.argv[1:]
now = datetime.datetime.now(datetime.timezone.utc)
s3, sm = client("s3"), client("sagemaker")
for i in range(120):
    t = now + datetime.timedelta(seconds=i)
    job = f"{name}-{commit[:7]}-{t:%Y%m%d-%H%M%S}"
    key = f"experiments/{job}/config/exp.toml"
    if mode == "s3":
        s3.put_object(Bucket=bucket, Key=key, Body=b"someone else's experiment")
    elif mode == "s3-other-file":
        s3.put_object(Bucket=bucket, Key=key.replace("exp.toml", "theirs.toml"), Body=b"someone else's experiment")
    elif mode == "clear":
        for o in s3.list_objects_v2(Bucket=bucket, Prefix="experiments/").get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
        break
    else:
        sm.create_training_job(
            TrainingJobName=job,
            AlgorithmSpecification={"TrainingImage": "elsewhere/sca-train@sha256:" + "b" * 64, "TrainingInputMode": "File"},
            RoleArn="arn:aws:iam::123456789012:role/elsewhere",
            OutputDataConfig={"S3OutputPath": f"s3://{bucket}/elsewhere"},
            ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
            StoppingCondition={"MaxRuntimeInSeconds": 3600},
            Tags=[{"Key": "sca:commit", "Value": commit}, {"Key": "sca:experiment-sha256", "Value": sha}],
        )
"#,
        &[mode, name, commit, bucket, sha256],
    )
    .ok();
}

/// The keys under `experiments/` in `bucket`.
fn experiment_objects(bucket: &str) -> Vec<(String, String)> {
    let out = boto3(
        r#"
import sys, json
s3 = client("s3")
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=sys.argv[1], Prefix="experiments/").get("Contents", [])]
print(json.dumps([[k, s3.get_object(Bucket=sys.argv[1], Key=k)["Body"].read().decode()] for k in keys]))
"#,
        &[bucket],
    )
    .ok();
    serde_json::from_str(out.stdout.trim()).unwrap()
}

/// A SageMaker run that another machine launched (its record in the config
/// bucket, not in this runs directory) is this launch's twin: a dry run
/// names it and copies nothing; a launch looks at it, finds it completed,
/// copies its record and config channel here and creates no second job.
#[test]
fn a_sagemaker_run_from_another_machine_is_memoized_here() {
    let Emulated {
        data,
        image,
        job_table,
        config_bucket,
    } = emulated();
    let name = unique("e2e-elsewhere");
    let lab = Lab::new(&experiment(&name, &data, &data, false, 1, &job_table));
    let here = lab.runs.display().to_string();
    let elsewhere = tempfile::tempdir().unwrap();
    let file = lab.file();
    // On the machine whose runs directory is `runs`, with `env` beside.
    let run_with = |runs: &str, env: &[(&str, &str)], extra: &[&str]| {
        let mut args = vec![
            "experiment",
            "run",
            &file,
            "--backend",
            "sagemaker",
            "--image",
            &image,
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        let mut env = env.to_vec();
        env.push(("SCA_RUNS_DIR", runs));
        lab.xtask_env(&args, &env)
    };
    let run = |runs: &str, extra: &[&str]| run_with(runs, &[], extra);
    // Launched from the other machine, and not followed: its record there
    // (and in the bucket) says InProgress.
    let first = Lab::record(&run(elsewhere.path().to_str().unwrap(), &[]).ok());
    assert_eq!(first["status"], "InProgress", "{first}");
    let job = rec_str(&first, "job_name").to_string();

    // Beside it in the bucket, a record that does not parse: skipped with
    // a warning, not the end of the look.
    let garbage = format!("{}20990101-000000", &job[..job.len() - 15]);
    boto3(
        "import sys\nclient('s3').put_object(Bucket=sys.argv[1], Key='experiments/%s/record.json' % sys.argv[2], Body=b'{not json')",
        &[&config_bucket, &garbage],
    )
    .ok();
    let dry = run(&here, &["--dry-run"]);
    assert!(
        dry.stderr.contains(&format!("{job} is running it now")),
        "{dry:?}"
    );
    assert!(
        dry.stderr.contains(&format!(
            "skipping s3://{config_bucket}/experiments/{garbage}/record.json"
        )),
        "{dry:?}"
    );
    assert_eq!(lab.job_dirs(), 0, "a dry run copies nothing");

    // A record there that this role may not read is skipped too (the
    // emulator's answer replaced by AccessDenied).
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = sca_e2e::fault_proxy::FaultProxy::start(
        &moto,
        vec![sca_e2e::fault_proxy::Rule {
            needle: format!("GET /{config_bucket}/experiments/{garbage}/record.json"),
            every: 1,
            limit: usize::MAX,
            fault: sca_e2e::fault_proxy::Fault::AccessDenied,
        }],
    );
    let url = proxy.url();
    let again = run_with(&here, &[("AWS_ENDPOINT_URL", &url)], &[]).ok();
    assert!(proxy.injected(0) >= 1, "{:?}", proxy.requests());
    assert!(
        again.stderr.contains(&format!("{job} already ran it"))
            && again.stderr.contains("AccessDenied"),
        "{again:?}"
    );
    let rec = Lab::record(&again);
    assert_eq!(
        (rec["job_name"].as_str(), rec["status"].as_str()),
        (Some(job.as_str()), Some("Completed"))
    );
    assert_eq!(lab.jobs(), [lab.runs.join(&job)]);
    assert!(lab.runs.join(&job).join("config/exp.toml").is_file());
    let jobs = boto3(
        "import sys\nprint(len(client('sagemaker').list_training_jobs(NameContains=sys.argv[1])['TrainingJobSummaries']))",
        &[&name],
    )
    .ok();
    assert_eq!(jobs.stdout.trim(), "1", "one job in all");

    // A dry run on a third machine names the completed run where its
    // record is: in the bucket, not copied there.
    let third = tempfile::tempdir().unwrap();
    let dry = run(third.path().to_str().unwrap(), &["--dry-run"]).ok();
    assert!(
        dry.stderr.contains(&format!(
            "(record: s3://{config_bucket}/experiments/{job}/record.json)"
        )),
        "{dry:?}"
    );
}

#[test]
fn sagemaker_job_name_taken_elsewhere_launches_nothing_and_overwrites_nothing() {
    let Emulated {
        data,
        config_bucket,
        image,
        job_table,
    } = emulated();
    // Unique: the emulator keeps earlier runs' jobs.
    let name = unique("e2e-taken");
    let lab = Lab::new(&experiment(&name, &data, &data, false, 1, &job_table));
    let (commit, sha) = (
        lab.commit(),
        sha256_hex(&std::fs::read(lab.file()).unwrap()),
    );
    let run = [
        "experiment",
        "run",
        &lab.file(),
        "--backend",
        "sagemaker",
        "--image",
        &image,
        "--allow-dirty",
    ];
    let jobs = || {
        boto3(
            "import sys\npages = client('sagemaker').get_paginator('list_training_jobs').paginate(NameContains=sys.argv[1])\nprint(sum(len(p['TrainingJobSummaries']) for p in pages))",
            &[&name],
        )
        .ok()
        .stdout
        .trim()
        .to_string()
    };

    // The config channel's prefix holds another launch's file: refused
    // before anything is replaced or created.
    occupy_job_names("s3", &name, &commit, &config_bucket, &sha);
    let before = experiment_objects(&config_bucket);
    assert_eq!(before.len(), 120);
    let out = lab.xtask(&run);
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("already holds a different file")
            && out.stderr.contains("launch again"),
        "{out:?}"
    );
    assert_eq!(
        experiment_objects(&config_bucket),
        before,
        "nothing was overwritten or added"
    );
    assert_eq!(jobs(), "0", "no job was created");
    assert_eq!(lab.job_dirs(), 0);

    // Another launch's experiment file under another file name: the job
    // would start with two, so it is refused the same way.
    occupy_job_names("clear", &name, &commit, &config_bucket, &sha);
    occupy_job_names("s3-other-file", &name, &commit, &config_bucket, &sha);
    let before = experiment_objects(&config_bucket);
    let out = lab.xtask(&run);
    assert!(
        !out.success()
            && out.stderr.contains("theirs.toml is there already")
            && out.stderr.contains("launch again"),
        "{out:?}"
    );
    assert_eq!(
        experiment_objects(&config_bucket),
        before,
        "nothing was added"
    );
    assert_eq!(jobs(), "0", "no job was created");
    assert_eq!(lab.job_dirs(), 0);

    // A job of the same experiment and commit exists under the name, made by
    // another launch: refused before anything is uploaded (not taken for
    // this launch's own job). The emulator lets CreateTrainingJob replace a
    // job, so the same refusal after a create that SageMaker answers with
    // ResourceInUse is not reachable here.
    occupy_job_names("clear", &name, &commit, &config_bucket, &sha);
    occupy_job_names("sagemaker", &name, &commit, &config_bucket, &sha);
    let out = lab.xtask(&run);
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("already exists")
            && out.stderr.contains("another launch in the same second"),
        "{out:?}"
    );
    assert_eq!(
        experiment_objects(&config_bucket),
        [],
        "nothing was uploaded"
    );
    assert_eq!(jobs(), "120", "no job was added");
    assert_eq!(lab.job_dirs(), 0);
}

/// `experiment` with `init_checkpoint = "<init>"` in its `[model]`.
fn warm_started(text: &str, init: &str) -> String {
    text.replace(
        "[model]\n",
        &format!("[model]\ninit_checkpoint = \"{init}\"\n"),
    )
}

/// A lab of experiment `a` (`epochs` epochs), and beside its file
/// `b.toml`: experiment `b`, one epoch warm-started from `experiment:a`;
/// that file's path.
fn warm_start_lab(a: &str, epochs: u32, b: &str) -> (Lab, String) {
    let lab = Lab::new(&experiment(a, "data", "data", true, epochs, ""));
    let file = lab.dir.path().join("b.toml");
    let text = experiment(b, "data", "data", true, 1, "");
    std::fs::write(&file, warm_started(&text, &format!("experiment:{a}"))).unwrap();
    let file = file.display().to_string();
    (lab, file)
}

#[test]
fn local_warm_start_from_an_experiment_takes_its_newest_completed_model() {
    let (lab, b) = warm_start_lab("e2e-warm-a", 1, "e2e-warm-b");

    // Nothing of `e2e-warm-a` has run yet: said, and nothing launched.
    let early = lab.xtask(&["experiment", "run", &b]);
    assert!(!early.success());
    assert!(
        early.stderr.contains("e2e-warm-a")
            && early.stderr.contains("no completed local or docker run"),
        "{early:?}"
    );
    assert_eq!(lab.job_dirs(), 0);
    let missing = lab.dir.path().join("c.toml");
    std::fs::write(
        &missing,
        warm_started(
            &experiment("e2e-warm-c", "data", "data", true, 1, ""),
            "models/model.safetensors",
        ),
    )
    .unwrap();
    let run = lab.xtask(&["experiment", "run", missing.to_str().unwrap()]);
    assert!(!run.success());
    assert!(
        run.stderr.contains(&format!(
            "{} does not exist",
            lab.dir.path().join("models/model.safetensors").display()
        )),
        "{run:?}"
    );
    assert_eq!(lab.job_dirs(), 0);

    // The second run of the same file is forced: unforced, it would be
    // memoized (the first run has the same pins) and launch nothing.
    let file_a = lab.file();
    let run_a = |extra: &[&str]| {
        let mut args = vec!["experiment", "run", &file_a, "--output", "json"];
        args.extend_from_slice(extra);
        Lab::record(&lab.xtask(&args).ok())
    };
    let oldest = run_a(&[]);
    let newest = run_a(&["--force"]);
    assert_ne!(oldest["job_name"], newest["job_name"]);
    let out = lab
        .xtask(&["experiment", "run", &b, "--output", "json"])
        .ok();
    let rec = Lab::record(&out);
    assert_eq!(rec["status"], "Completed", "{rec}");
    let want = Path::new(rec_str(&newest, "artifacts")).join("model.safetensors");
    assert_eq!(rec_str(&rec, "init_checkpoint"), want.display().to_string());
    assert!(
        out.stderr
            .contains(&format!("warm start from {}", rec_str(&newest, "job_name"))),
        "{out:?}"
    );
    let log = lab
        .xtask(&["experiment", "logs", rec_str(&rec, "job_name")])
        .ok();
    assert!(
        log.stdout
            .contains(&format!("sca-train: warm start from {}", want.display())),
        "the trainer loaded it: {log:?}"
    );

    // The model is pinned with the data: once it changes, the run cannot be
    // repeated exactly, and rerun says so before launching anything.
    let jobs = lab.job_dirs();
    let mut bytes = std::fs::read(&want).unwrap();
    bytes.push(0);
    std::fs::write(&want, bytes).unwrap();
    let rerun = lab.xtask(&["experiment", "rerun", rec_str(&rec, "job_name")]);
    assert!(!rerun.success());
    assert!(
        rerun.stderr.contains("the warm-start model changed since")
            && rerun.stderr.contains(&want.display().to_string()),
        "{rerun:?}"
    );
    assert_eq!(lab.job_dirs(), jobs);
}

/// A run whose launcher was killed completes with nobody to record it: its
/// record says `InProgress` until something looks. A warm start from its
/// experiment looks first, and takes its model, the newest, not that of
/// the older run its stale record would leave as the newest completed one.
#[test]
fn a_warm_start_takes_the_model_a_killed_launchers_run_left_unrecorded() {
    let (lab, b) = warm_start_lab("e2e-warm-k", 30, "e2e-warm-l");
    let file = lab.file();
    let older = Lab::record(
        &lab.xtask(&["experiment", "run", &file, "--output", "json"])
            .ok(),
    );
    assert_eq!(older["status"], "Completed", "{older}");
    let older_job = rec_str(&older, "job_name").to_string();

    // Again, forced (unforced, the completed run is its result), and its
    // launcher killed as soon as it has recorded its trainer.
    let mut child = sca_e2e::xtask(["experiment", "run", &file, "--force"])
        .envs(lab.env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let (job, pid) = loop {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the second run recorded no trainer"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the launcher ended before its trainer was recorded"
        );
        let running = lab.jobs().into_iter().find_map(|dir| {
            let name = dir.file_name()?.to_string_lossy().into_owned();
            let rec: Value =
                serde_json::from_slice(&std::fs::read(dir.join("record.json")).ok()?).ok()?;
            (name != older_job).then_some((name, rec["pid"].as_u64()?))
        });
        if let Some(found) = running {
            break found;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let record = lab.runs.join(&job).join("record.json");
    wait_until_ended(pid, Duration::from_secs(600));
    let stale: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(
        stale["status"], "InProgress",
        "the launcher was killed before it could record the end: {stale}"
    );
    let exit = lab.runs.join(&job).join("opt/ml/output/exit-code");
    assert_eq!(
        std::fs::read_to_string(&exit).unwrap().trim(),
        "0",
        "the trainer completed on its own"
    );

    let out = lab
        .xtask(&["experiment", "run", &b, "--output", "json"])
        .ok();
    let rec = Lab::record(&out);
    assert_eq!(rec["status"], "Completed", "{rec}");
    let want = lab.runs.join(&job).join("opt/ml/model/model.safetensors");
    assert_eq!(rec_str(&rec, "init_checkpoint"), want.display().to_string());
    assert!(
        out.stderr.contains(&format!("warm start from {job}")),
        "{out:?}"
    );
    let looked: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(
        looked["status"], "Completed",
        "recorded as it ended: {looked}"
    );
}

#[test]
fn sagemaker_warm_start_from_an_experiment_takes_its_newest_completed_job_model() {
    let Emulated {
        data,
        config_bucket,
        image,
        job_table,
    } = emulated();
    // Unique: the emulator keeps earlier runs' jobs.
    let a = unique("e2e-wa");
    let lab = Lab::new(&experiment(&a, &data, &data, false, 1, &job_table));
    let write = |file: &str, text: String| {
        let path = lab.dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    // `<a>-later` starts like `a`'s job names: its jobs must not count as a's.
    let later = write(
        "later.toml",
        experiment(&format!("{a}-later"), &data, &data, false, 1, &job_table),
    );
    let b = write(
        "b.toml",
        warm_started(
            &experiment(&format!("{a}-b"), &data, &data, false, 1, &job_table),
            &format!("experiment:{a}"),
        ),
    );
    let launch_with = |file: &str, extra: &[&str]| {
        let mut args = vec![
            "experiment",
            "run",
            file,
            "--backend",
            "sagemaker",
            "--image",
            &image,
            "--allow-dirty",
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        lab.xtask(&args)
    };
    let launch = |file: &str| launch_with(file, &[]);

    let early = launch(&b);
    assert!(!early.success());
    assert!(
        early.stderr.contains(&a) && early.stderr.contains("no completed SageMaker training job"),
        "{early:?}"
    );

    let local = write(
        "local.toml",
        warm_started(
            &experiment(&format!("{a}-local"), &data, &data, false, 1, &job_table),
            "model.safetensors",
        ),
    );
    let run = launch(&local);
    assert!(!run.success());
    assert!(
        run.stderr
            .contains("is a local path, but a SageMaker job reads its warm start from S3"),
        "{run:?}"
    );

    // The emulator completes jobs at once.
    Lab::record(&launch(&lab.file()).ok());
    // Forced: unforced, the same file again is memoized and launches nothing.
    let newest = Lab::record(&launch_with(&lab.file(), &["--force"]).ok());
    Lab::record(&launch(&later).ok());
    // The emulator's jobs leave no model: put one where the newest says it is.
    boto3(
        r#"
import sys
sm, s3 = client("sagemaker"), client("s3")
uri = sm.describe_training_job(TrainingJobName=sys.argv[1])["ModelArtifacts"]["S3ModelArtifacts"]
bucket, key = uri[len("s3://"):].split("/", 1)
s3.put_object(Bucket=bucket, Key=key, Body=b"a model.tar.gz")
"#,
        &[rec_str(&newest, "job_name")],
    )
    .ok();
    let out = launch(&b).ok();
    let rec = Lab::record(&out);
    let described = boto3(
        r#"
import sys, json
sm = client("sagemaker")
a = sm.describe_training_job(TrainingJobName=sys.argv[1])
b = sm.describe_training_job(TrainingJobName=sys.argv[2])
print(json.dumps([a["ModelArtifacts"]["S3ModelArtifacts"], b["HyperParameters"].get("init_checkpoint")]))
"#,
        &[rec_str(&newest, "job_name"), rec_str(&rec, "job_name")],
    )
    .ok();
    let described: Value = serde_json::from_str(described.stdout.trim()).unwrap();
    let model = described[0].as_str().unwrap();
    assert!(model.ends_with("/output/model.tar.gz"), "{model}");
    assert_eq!(
        described[1], model,
        "the job was launched with a's newest model"
    );
    assert_eq!(rec_str(&rec, "init_checkpoint"), model);
    // Pinned in the data manifest of the config channel, by size and ETag.
    let manifest = boto3(
        r#"
import sys
print(client("s3").get_object(Bucket=sys.argv[1], Key=f"experiments/{sys.argv[2]}/config/manifest.json")["Body"].read().decode())
"#,
        &[&config_bucket, rec_str(&rec, "job_name")],
    )
    .ok();
    let manifest: Value = serde_json::from_str(manifest.stdout.trim()).unwrap();
    assert_eq!(manifest["init_checkpoint"]["uri"], model);
    assert_eq!(manifest["init_checkpoint"]["size"], 14);
    assert!(
        manifest["init_checkpoint"]["etag"].is_string(),
        "{manifest}"
    );
    assert!(
        out.stderr
            .contains(&format!("warm start from {}", rec_str(&newest, "job_name"))),
        "{out:?}"
    );
}

/// The config bucket's lease (`sagemaker/lease.rs`) against the emulator,
/// its times shortened: held, it is renewed past its lease time and other
/// takers see it; released, it is gone. Of two takers of a lapsed lease at
/// once, one holds it and the other sees it held; one dropped unreleased is
/// let go; one taken over meanwhile is left to its taker, and renewing it
/// before a create fails, as it does for one deleted; one replaced by this
/// take's own put (its answer lost) is still this take's, renewed and
/// released. A lapsed lease naming a job is taken over only once SageMaker
/// says the job is not there (or failed).
#[test]
fn the_config_buckets_lease_is_renewed_and_taken_over_once() {
    use xtask::experiment::backend::RemoteClaimed;
    use xtask::experiment::sagemaker::{client::Clients, lease};
    let Emulated { config_bucket, .. } = emulated();
    let field = |key: &str, name: &str| -> String {
        let out = boto3(
            "import sys, json\nprint(json.loads(client('s3').get_object(Bucket=sys.argv[1], Key=sys.argv[2])['Body'].read()).get(sys.argv[3]))",
            &[&config_bucket, key, name],
        );
        out.stdout.trim().to_string()
    };
    // Another machine's lease, put now (its age on S3's clock starts now).
    let other = |key: &str, job: &str| {
        boto3(
            r#"
import sys, json
body = {"holder": "xtask pid 1 on other-host since 2026-01-01T00:00:00Z", "host": "other-host",
        "boot_id": "b", "pid": 1, "pid_start": 1, "renewed": "2026-01-01T00:00:00Z",
        "job": sys.argv[3] or None, "region": "us-west-2"}
client("s3").put_object(Bucket=sys.argv[1], Key=sys.argv[2], Body=json.dumps(body).encode())
"#,
            &[&config_bucket, key, job],
        )
        .ok();
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let aws = xtask::aws::Session::default();
        let clients = Clients::new(&aws, Some("us-west-2")).await.unwrap();
        // Seconds apart enough for S3's whole-second clock and a loaded
        // machine's Python start between a put and the look after it.
        let timing = lease::Timing {
            lease: Duration::from_secs(8),
            renew: Duration::from_millis(400),
        };
        let take = |key: &'static str, peek: bool, timing: lease::Timing| {
            lease::take(&aws, &clients, &config_bucket, key, "us-west-2", peek, timing)
        };
        let key = "claims/sagemaker-renewed.json";
        let RemoteClaimed::Held(held) = take(key, false, timing).await.unwrap() else {
            panic!("a free lease is taken");
        };
        let first = field(key, "renewed");
        tokio::time::sleep(Duration::from_secs(9)).await;
        // Past its lease time since it was taken, and held: renewed.
        match take(key, true, timing).await.unwrap() {
            RemoteClaimed::By(holder) => assert!(
                holder.contains(&format!("xtask pid {} on ", std::process::id()))
                    && holder.contains(&format!("s3://{config_bucket}/{key}")),
                "{holder}"
            ),
            other => panic!("{other:?}"),
        }
        assert_ne!(field(key, "renewed"), first, "renewed");
        held.release().await;
        let gone = boto3(
            "import sys\nclient('s3').head_object(Bucket=sys.argv[1], Key=sys.argv[2])",
            &[&config_bucket, key],
        );
        assert!(gone.stderr.contains("404"), "released: deleted");

        // Another machine's, lapsed, and two takers at once.
        let lapsed = "claims/sagemaker-lapsed.json";
        other(lapsed, "");
        assert!(matches!(take(lapsed, true, timing).await.unwrap(), RemoteClaimed::By(_)));
        tokio::time::sleep(Duration::from_secs(9)).await;
        let (a, b) = tokio::join!(take(lapsed, false, timing), take(lapsed, false, timing));
        let (winner, loser) = match (a.unwrap(), b.unwrap()) {
            (RemoteClaimed::Held(w), l @ RemoteClaimed::By(_))
            | (l @ RemoteClaimed::By(_), RemoteClaimed::Held(w)) => (w, l),
            other => panic!("one taker wins: {other:?}"),
        };
        drop(loser);
        assert!(field(lapsed, "holder").contains(&format!("pid {} ", std::process::id())));
        // Dropped unreleased (an error's `?`), it is let go all the same.
        drop(winner);
        assert!(matches!(take(lapsed, true, timing).await.unwrap(), RemoteClaimed::Free));

        // Taken over by another machine (this one missed its renewals):
        // this one's release leaves that machine's lease (no renewal in
        // between: the conditional delete decides), and renewing it
        // before a create says it is lost.
        let slow = lease::Timing {
            renew: Duration::from_secs(600),
            ..timing
        };
        let RemoteClaimed::Held(held) = take(key, false, slow).await.unwrap() else {
            panic!("a free lease is taken");
        };
        other(key, "");
        let lost = held.confirm_for("a-job".into()).await.unwrap_err();
        assert!(lost.contains("taken over by another launch"), "{lost}");
        held.release().await;
        assert_eq!(field(key, "host"), "other-host");
        // Its job recorded, a launch lets go of the other launch's lease
        // too where that names the job (it took the name over), not else.
        for (theirs, deleted, lost) in [
            ("another-job", false, false),
            ("the-job", true, false),
            ("the-job", true, true),
        ] {
            boto3(
                "import sys\nclient('s3').delete_object(Bucket=sys.argv[1], Key=sys.argv[2])",
                &[&config_bucket, key],
            )
            .ok();
            let RemoteClaimed::Held(held) = take(key, false, slow).await.unwrap() else {
                panic!("a free lease is taken");
            };
            held.confirm_for("the-job".into()).await.unwrap();
            other(key, theirs);
            if lost {
                // (Known for lost by a renewal before the let-go.)
                held.confirm_for("the-job".into()).await.unwrap_err();
            }
            held.recorded().await;
            let gone = boto3(
                "import sys\nclient('s3').head_object(Bucket=sys.argv[1], Key=sys.argv[2])",
                &[&config_bucket, key],
            );
            assert_eq!(
                gone.stderr.contains("404"),
                deleted,
                "theirs names {theirs}, lost first: {lost}"
            );
        }

        // This take's own put landed unseen (its answer lost): the body
        // in S3 is its own, with another ETag. A renewal before a create
        // adopts it and names the job; a release deletes it.
        let touch = |key: &str| {
            let renewed = serde_json::json!({ "renewed": "2099-01-01T00:00:00Z" });
            update_json_object(&config_bucket, key, renewed);
        };
        let own = "claims/sagemaker-own.json";
        let RemoteClaimed::Held(held) = take(own, false, slow).await.unwrap() else {
            panic!("a free lease is taken");
        };
        touch(own);
        held.confirm_for("the-job".into()).await.unwrap();
        assert_eq!(field(own, "job"), "the-job");
        touch(own);
        held.release().await;
        assert!(matches!(take(own, true, timing).await.unwrap(), RemoteClaimed::Free));
        // Deleted under it (by hand): a renewal before a create says so.
        let RemoteClaimed::Held(held) = take(own, false, slow).await.unwrap() else {
            panic!("a free lease is taken");
        };
        boto3(
            "import sys\nclient('s3').delete_object(Bucket=sys.argv[1], Key=sys.argv[2])",
            &[&config_bucket, own],
        )
        .ok();
        let deleted = held.confirm_for("a-job".into()).await.unwrap_err();
        assert!(deleted.contains("was deleted"), "{deleted}");
        held.release().await;

        // Named for a job by a holder on this machine that is gone:
        // SageMaker does not list the job, so it is held while fresh (a
        // listing lags a create), and taken over once lapsed.
        let here = |key: &str, job: &str| {
            let read = |p: &str| std::fs::read_to_string(p).unwrap().trim().to_string();
            let ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
            boto3(
                r#"
import sys, json
bucket, key, job, host, boot, ns = sys.argv[1:]
body = {"holder": f"xtask pid 999999999 on {host} since 2026-01-01T00:00:00Z", "host": host,
        "boot_id": boot, "pid": 999999999, "pid_start": 1, "pid_ns": ns,
        "renewed": "2026-01-01T00:00:00Z", "job": job, "region": "us-west-2"}
client("s3").put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode())
"#,
                &[
                    &config_bucket,
                    key,
                    job,
                    &read("/proc/sys/kernel/hostname"),
                    &read("/proc/sys/kernel/random/boot_id"),
                    &ns.display().to_string(),
                ],
            )
            .ok();
        };
        let named = "claims/sagemaker-named.json";
        here(named, "e2e-never-created-20990101-000000");
        match take(named, true, timing).await.unwrap() {
            RemoteClaimed::By(by) => assert!(by.contains("does not list it yet"), "{by}"),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(matches!(take(named, true, timing).await.unwrap(), RemoteClaimed::Free));
        // Taken over, it passes the job's name on (its create may yet
        // come): the taker's lease names it from the take, and is kept
        // naming it when let go without a record.
        let RemoteClaimed::Held(held) = take(named, false, timing).await.unwrap() else {
            panic!("a lapsed lease is taken over");
        };
        let passed = held.inherited().cloned().expect("the name is passed on");
        assert_eq!(passed.job, "e2e-never-created-20990101-000000");
        assert!(passed.from.starts_with("xtask pid 999999999 on "), "{passed:?}");
        assert_eq!(field(named, "job"), passed.job);
        assert_eq!(field(named, "lease_secs"), "8");
        held.release().await;
        assert_eq!(field(named, "job"), passed.job, "kept, naming the job");
        assert!(field(named, "holder").contains(&format!("pid {} ", std::process::id())));
        // Lapsed, naming a job in another region: a launch here cannot
        // create it under that name (names are per region), so it is
        // refused, saying where to launch.
        let elsewhere = serde_json::json!({ "region": "eu-central-1", "lease_secs": 1 });
        update_json_object(&config_bucket, named, elsewhere);
        tokio::time::sleep(Duration::from_secs(2)).await;
        match take(named, false, timing).await.unwrap() {
            RemoteClaimed::By(by) => assert!(
                by.contains("in eu-central-1 and let its claim")
                    && by.contains("--region eu-central-1"),
                "{by}"
            ),
            other => panic!("{other:?}"),
        }
        // Naming no region (edited by hand): the job may be created in
        // any, so its name is passed on to none; held until deleted.
        let regionless = serde_json::json!({ "region": "", "lease_secs": 1 });
        update_json_object(&config_bucket, named, regionless);
        tokio::time::sleep(Duration::from_secs(2)).await;
        match take(named, false, timing).await.unwrap() {
            RemoteClaimed::By(by) => assert!(
                by.contains("in a region its claim") && by.contains("delete the claim"),
                "{by}"
            ),
            other => panic!("{other:?}"),
        }
        // Naming what is no job name (edited by hand): held, never shown
        // in a command, until deleted.
        let edited = serde_json::json!({ "job": "x; rm -rf ~", "lease_secs": 1 });
        update_json_object(&config_bucket, named, edited);
        tokio::time::sleep(Duration::from_secs(2)).await;
        match take(named, false, timing).await.unwrap() {
            RemoteClaimed::By(by) => assert!(
                by.contains("names \"x; rm -rf ~\"") && by.contains("not a training job"),
                "{by}"
            ),
            other => panic!("{other:?}"),
        }

        // Named for a job that completed (the emulator ends jobs at once)
        // with no record in the bucket: held, saying so, though lapsed.
        let job = unique("e2e-unrecorded").to_lowercase();
        boto3(
            r#"
import sys
client("sagemaker").create_training_job(
    TrainingJobName=sys.argv[1],
    AlgorithmSpecification={"TrainingImage": "elsewhere/sca-train@sha256:" + "b" * 64, "TrainingInputMode": "File"},
    RoleArn="arn:aws:iam::123456789012:role/elsewhere",
    OutputDataConfig={"S3OutputPath": "s3://elsewhere/out"},
    ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
    StoppingCondition={"MaxRuntimeInSeconds": 3600},
)
"#,
            &[&job],
        )
        .ok();
        here(named, &job);
        tokio::time::sleep(Duration::from_secs(9)).await;
        match take(named, false, timing).await.unwrap() {
            RemoteClaimed::By(by) => assert!(
                by.contains(&format!("created training job `{job}`"))
                    && by.contains("completed and has no record in the config bucket"),
                "{by}"
            ),
            other => panic!("{other:?}"),
        }
    });
}
