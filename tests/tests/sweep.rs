//! End-to-end tests of `cargo xtask experiment sweep` (local backend and the
//! SageMaker emulator), memoized `experiment run`, and `job.max_cost_usd`.
//! Each test has its own runs directory and git repository (`Lab`); what the
//! emulator received is read back with boto3.

use std::collections::BTreeSet;
use std::path::Path;

use sca_e2e::fault_proxy::{Fault, FaultProxy, Rule};
use sca_e2e::lab::{emulated, experiment, Emulated, Lab};
use sca_e2e::{boto3, unique, Run};
use serde_json::Value;

/// A tiny experiment over a 2x2 grid (learning rate x Dice weight).
fn sweep_experiment(name: &str, imagery: &str, job: &str) -> String {
    format!(
        "{}\n[sweep]\ngrid = {{ \"train.learning_rate\" = [0.01, 0.02], \"model.loss.dice\" = [0.5, 1.0] }}\nobjective = {{ metric = \"val_iou\", goal = \"max\" }}\n",
        experiment(name, imagery, imagery, imagery == "data", 1, job)
    )
}

/// The JSON table a sweep or `list --sweep --output json` prints last.
fn table(run: &Run) -> Value {
    let last = run.stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: last line {last:?}\n{run:?}"))
}

/// `experiment sweep` of the lab's file on SageMaker with `image`, its
/// table as JSON, with `env` over the lab's environment.
fn sagemaker_sweep(lab: &Lab, image: &str, env: &[(&str, &str)]) -> Run {
    let file = lab.file();
    let args = [
        "experiment",
        "sweep",
        &file,
        "--backend",
        "sagemaker",
        "--image",
        image,
        "--output",
        "json",
    ];
    lab.xtask_env(&args, env)
}

/// Every run record under the lab's runs directory.
fn records(lab: &Lab) -> Vec<Value> {
    let mut out: Vec<Value> = std::fs::read_dir(&lab.runs)
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("record.json")).ok())
        .map(|b| serde_json::from_slice(&b).unwrap())
        .collect();
    out.sort_by_key(|r| r["job_name"].as_str().unwrap().to_string());
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// The sweep's stderr line "N point(s): K to launch, ...": K.
fn to_launch(run: &Run) -> usize {
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains(" to launch, "))
        .unwrap_or_else(|| panic!("no plan line: {run:?}"));
    let before = line.split(" to launch").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn local_sweep_launches_each_point_once_pinned_and_resumes() {
    let lab = Lab::new(&sweep_experiment("e2e-sweep", "data", ""));
    let file = lab.file();
    let sweep = |extra: &[&str]| {
        let mut args = vec!["experiment", "sweep", &file, "--output", "json"];
        args.extend_from_slice(extra);
        lab.xtask(&args)
    };

    // A dry run plans all four and writes nothing.
    let dry = sweep(&["--dry-run"]).ok();
    let planned = table(&dry);
    let planned = planned.as_array().expect("a JSON list of points");
    assert_eq!(planned.len(), 4, "{dry:?}");
    assert!(planned.iter().all(|p| p["completed_run"].is_null()));
    assert_eq!(lab.job_dirs(), 0, "a dry run launches nothing");
    assert!(
        !lab.runs.join(".sweeps").exists(),
        "a dry run writes nothing"
    );

    let first = sweep(&["--max-parallel", "2"]).ok();
    assert_eq!(to_launch(&first), 4, "{first:?}");
    let t = table(&first);
    assert_eq!(t["sweep"], "e2e-sweep");
    let points = t["points"].as_array().unwrap();
    assert_eq!(points.len(), 4);
    let names: BTreeSet<&str> = points.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4, "distinct point names: {t}");
    for p in points {
        let name = p["name"].as_str().unwrap();
        let suffix = name.strip_prefix("e2e-sweep-").expect(name);
        assert!(
            suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
        assert_eq!(p["status"], "Completed", "{p}");
        assert!(p["objective"].is_f64(), "{p}");
        let values = p["values"].as_object().unwrap();
        assert_eq!(
            values.keys().collect::<Vec<_>>(),
            ["model.loss.dice", "train.learning_rate"],
            "{p}"
        );
    }
    // Each combination once.
    let combos: BTreeSet<String> = points.iter().map(|p| p["values"].to_string()).collect();
    assert_eq!(combos.len(), 4, "{t}");
    let best: Vec<&Value> = points.iter().filter(|p| p["best"] == true).collect();
    assert_eq!(best.len(), 1, "exactly one best: {t}");
    let top = points
        .iter()
        .map(|p| p["objective"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert_eq!(
        best[0]["objective"].as_f64().unwrap(),
        top,
        "the best is the max"
    );

    // Four ordinary runs, pinned alike, each to its own child file.
    assert_eq!(lab.job_dirs(), 4);
    let recs = records(&lab);
    assert_eq!(recs.len(), 4);
    let commit = lab.commit();
    let manifest = recs[0]["data_manifest_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    for r in &recs {
        assert_eq!(r["sweep"], "e2e-sweep", "{r}");
        assert_eq!(r["status"], "Completed", "{r}");
        assert_eq!(r["commit"], commit.as_str());
        assert_eq!(
            r["data_manifest_sha256"],
            manifest.as_str(),
            "one data manifest"
        );
        let point = r["experiment"].as_str().unwrap();
        assert!(names.contains(point), "{point}");
        let file = r["experiment_file"].as_str().unwrap();
        assert_eq!(
            Path::new(file),
            lab.runs
                .join(".sweeps/e2e-sweep")
                .join(format!("{point}.toml"))
        );
        let bytes = std::fs::read(file).unwrap();
        assert_eq!(r["experiment_sha256"], sha256_hex(&bytes).as_str());
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains("[sweep]"),
            "a child is one experiment:\n{text}"
        );
        assert!(text.contains(&format!("name = \"{point}\"")), "{text}");
        // The point's values are in its file.
        let values = &points.iter().find(|p| p["name"] == point).unwrap()["values"];
        let lr = values["train.learning_rate"].as_f64().unwrap();
        assert!(
            text.contains(&format!("learning_rate = {lr}")),
            "learning_rate {lr} in\n{text}"
        );
    }

    // Again: every point has a completed run with the same pins.
    let again = sweep(&[]).ok();
    assert_eq!(to_launch(&again), 0, "{again:?}");
    assert_eq!(lab.job_dirs(), 4);
    // `list --sweep`'s points.
    let list = || {
        let listed = lab
            .xtask(&[
                "experiment",
                "list",
                "--sweep",
                "e2e-sweep",
                "--output",
                "json",
            ])
            .ok();
        table(&listed)["points"].clone()
    };
    assert_eq!(list(), t["points"], "list --sweep shows the same");

    // A point whose record is gone runs again, and only it.
    let gone = recs[1]["job_name"].as_str().unwrap();
    std::fs::remove_dir_all(lab.runs.join(gone)).unwrap();
    let resumed = sweep(&[]).ok();
    assert_eq!(to_launch(&resumed), 1, "{resumed:?}");
    let after = records(&lab);
    assert_eq!(after.len(), 4);
    // The other three records are untouched; the fourth is the new run (a
    // launch in the same second as the removed one may take its free name
    // again, so it is found by elimination, not by a new name).
    for (i, old) in recs.iter().enumerate().filter(|(i, _)| *i != 1) {
        assert!(after.contains(old), "record {i} unchanged: {old:#}");
    }
    let new: Vec<&Value> = after
        .iter()
        .filter(|r| !recs.iter().enumerate().any(|(i, o)| i != 1 && o == *r))
        .collect();
    assert_eq!(new.len(), 1, "{after:#?}");
    assert_eq!(
        new[0]["experiment"], recs[1]["experiment"],
        "the same point"
    );
    assert_eq!(new[0]["experiment_sha256"], recs[1]["experiment_sha256"]);
    assert_eq!(new[0]["status"], "Completed");

    // Edited and launched on another backend, refused before anything
    // launches (a dirty tree): the sweep's record is as the last launch
    // wrote it, so its results still show.
    let before = list();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("seed = 3", "seed = 4")).unwrap();
    std::fs::write(lab.repo.path().join("notes.txt"), "uncommitted").unwrap();
    let refused = lab.xtask(&["experiment", "sweep", &file, "--backend", "docker"]);
    assert!(
        !refused.success() && refused.stderr.contains("uncommitted changes"),
        "{refused:?}"
    );
    assert_eq!(list(), before, "the completed points still show");
}

/// The same sweep started twice at once (two terminals) runs each point
/// once: a point one of them claimed is left to it by the other.
#[test]
fn a_sweep_started_twice_at_once_runs_each_point_once() {
    let lab = Lab::new(&sweep_experiment("e2e-sweep-twice", "data", ""));
    let file = lab.file();
    let outs = lab.xtask_at_once(&["experiment", "sweep", &file, "--output", "json"], 2);
    let recs = records(&lab);
    let points: BTreeSet<&str> = recs
        .iter()
        .map(|r| r["experiment"].as_str().unwrap())
        .collect();
    assert_eq!((recs.len(), points.len()), (4, 4), "{outs:#?}");
    assert!(recs.iter().all(|r| r["status"] == "Completed"), "{recs:#?}");
    // Between them, every point was launched exactly once, and a point
    // left to the other sweep is no failure of either.
    assert_eq!(outs.iter().map(to_launch).sum::<usize>(), 4, "{outs:#?}");
    assert!(outs.iter().all(Run::success), "{outs:#?}");
}

#[test]
fn sagemaker_sweep_creates_one_tagged_job_per_point() {
    let Emulated {
        data,
        image,
        job_table,
        ..
    } = emulated();
    // Unique: the emulator keeps earlier runs' jobs.
    let name = unique("e2e-sw");
    let lab = Lab::new(&sweep_experiment(&name, &data, &job_table));
    let run = sagemaker_sweep(&lab, &image, &[]).ok();
    assert!(
        run.stderr.contains("worst-case cost $"),
        "the total is said before launching: {run:?}"
    );
    let t = table(&run);
    let points = t["points"].as_array().unwrap();
    assert_eq!(points.len(), 4);
    assert!(points.iter().all(|p| p["status"] == "Completed"), "{t}");

    let seen = boto3(
        r#"
import sys, json
sm = client("sagemaker")
# Every page: the emulator cuts a page before it filters by name.
pages = sm.get_paginator("list_training_jobs").paginate(NameContains=sys.argv[1])
out = []
for j in (j for p in pages for j in p["TrainingJobSummaries"]):
    d = sm.describe_training_job(TrainingJobName=j["TrainingJobName"])
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=d["TrainingJobArn"])["Tags"]}
    out.append({"job": j["TrainingJobName"], "tags": tags, "hp": d["HyperParameters"]})
print(json.dumps(out))
"#,
        &[&name],
    )
    .ok();
    let jobs: Vec<Value> = serde_json::from_str(seen.stdout.trim()).unwrap();
    assert_eq!(jobs.len(), 4, "one job per point: {jobs:?}");
    let recs = records(&lab);
    assert_eq!(recs.len(), 4);
    let experiments: BTreeSet<&str> = jobs
        .iter()
        .map(|j| {
            assert_eq!(j["tags"]["sca:sweep"], name.as_str(), "{j}");
            let rec = recs
                .iter()
                .find(|r| r["job_name"] == j["job"])
                .unwrap_or_else(|| panic!("no record of {j}"));
            assert_eq!(j["tags"]["sca:commit"], rec["commit"]);
            assert_eq!(j["tags"]["sca:experiment-sha256"], rec["experiment_sha256"]);
            assert_eq!(j["tags"]["sca:experiment"], rec["experiment"]);
            j["tags"]["sca:experiment"].as_str().unwrap()
        })
        .collect();
    assert_eq!(experiments.len(), 4, "four distinct points");

    // The emulator's jobs are completed: a second sweep launches none.
    let again = lab
        .xtask(&[
            "experiment",
            "sweep",
            &lab.file(),
            "--backend",
            "sagemaker",
            "--image",
            &image,
        ])
        .ok();
    assert_eq!(to_launch(&again), 0, "{again:?}");
    assert_eq!(records(&lab).len(), 4);

    // Nor does the same sweep from another machine (its own runs
    // directory): the config bucket's completed runs are its points'
    // results, copied there.
    let elsewhere = tempfile::tempdir().unwrap();
    let there = sagemaker_sweep(
        &lab,
        &image,
        &[("SCA_RUNS_DIR", elsewhere.path().to_str().unwrap())],
    )
    .ok();
    assert_eq!(to_launch(&there), 0, "{there:?}");
    let t = table(&there);
    let points = t["points"].as_array().unwrap();
    assert!(points.iter().all(|p| p["status"] == "Completed"), "{t}");
    let jobs: BTreeSet<&str> = points.iter().map(|p| p["job"].as_str().unwrap()).collect();
    let here: BTreeSet<&str> = recs
        .iter()
        .map(|r| r["job_name"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, here, "the same four jobs");
}

/// A sweep's limit holds over every launch of it, a rerun of one of its
/// points too: four points at $0.23 fit in $1.00, a fifth launch does not.
#[test]
fn a_rerun_of_a_sweep_point_keeps_within_the_sweeps_limit() {
    let Emulated {
        data,
        image,
        job_table,
        ..
    } = emulated();
    let name = unique("e2e-swr");
    let job = format!("{job_table}\nmax_cost_usd = 1.0");
    let lab = Lab::new(&sweep_experiment(&name, &data, &job));
    let sweep = sagemaker_sweep(&lab, &image, &[]).ok();
    let t = table(&sweep);
    let point = t["points"][0]["job"].as_str().unwrap().to_string();
    assert_eq!(records(&lab).len(), 4);
    let rerun = lab.xtask(&["experiment", "rerun", &point]);
    assert!(
        !rerun.success()
            && rerun
                .stderr
                .contains(&format!("{point} is a point of sweep `{name}`"))
            && rerun
                .stderr
                .contains("which holds over every launch of the sweep")
            && rerun.stderr.contains("nothing was launched"),
        "{rerun:?}"
    );
    assert_eq!(records(&lab).len(), 4, "nothing launched");
}

/// SageMaker refusing a point for the account's quota
/// (ResourceLimitExceeded, injected by our proxy in front of the emulator)
/// delays that point; the sweep waits, tries again and launches every point
/// exactly once.
#[test]
fn a_sweep_waits_out_resource_limit_exceeded() {
    let Emulated {
        data,
        image,
        job_table,
        ..
    } = emulated();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = FaultProxy::start(
        &moto,
        vec![Rule {
            needle: "SageMaker.CreateTrainingJob".into(),
            every: 1,
            limit: 1,
            fault: Fault::ResourceLimitExceeded {
                limit: 2,
                in_use: 2,
            },
        }],
    );
    let name = unique("e2e-quota");
    let text = sweep_experiment(&name, &data, &job_table)
        .replace(", \"model.loss.dice\" = [0.5, 1.0]", "");
    let lab = Lab::new(&text);
    let url = proxy.url();
    let run = sagemaker_sweep(&lab, &image, &[("AWS_ENDPOINT_URL", url.as_str())]);
    assert_eq!(proxy.injected(0), 1, "{:?}", proxy.requests());
    assert!(run.success(), "{run:?}");
    assert!(
        run.stderr.contains("ResourceLimitExceeded") && run.stderr.contains("trying again in 30 s"),
        "{run:?}"
    );
    assert_eq!(proxy.matched(0), 3, "two points, one of them tried twice");
    let t = table(&run);
    let points = t["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert!(points.iter().all(|p| p["status"] == "Completed"), "{t}");
    let jobs = boto3(
        "import sys\npages = client('sagemaker').get_paginator('list_training_jobs').paginate(NameContains=sys.argv[1])\nprint(sum(len(p['TrainingJobSummaries']) for p in pages))",
        &[&name],
    )
    .ok();
    assert_eq!(jobs.stdout.trim(), "2", "one job per point");
    let recs = records(&lab);
    assert_eq!(recs.len(), 2);
    // A job starts when it is created: the refused point's wait for
    // capacity is no part of its duration.
    let started: Vec<i64> = recs
        .iter()
        .map(|r| unix_secs(r["started"].as_str().unwrap()))
        .collect();
    assert!(
        (started[0] - started[1]).abs() >= 25,
        "the retried point's start includes its wait: {started:?}"
    );
}

/// `YYYY-MM-DDTHH:MM:SSZ` as seconds since 1970 (days from the civil date).
fn unix_secs(t: &str) -> i64 {
    let n = |a: usize, b: usize| t[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * m + 2) / 5 + d - 719_469;
    days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19)
}

/// What SageMaker billed (the emulator leaves it out of DescribeTrainingJob:
/// our proxy adds it) ends up in the record, `status` and `list`.
#[test]
fn an_ended_job_records_what_it_was_billed() {
    let Emulated {
        data,
        image,
        job_table,
        ..
    } = emulated();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = FaultProxy::start(
        &moto,
        vec![Rule {
            needle: "SageMaker.DescribeTrainingJob".into(),
            every: 1,
            limit: usize::MAX,
            fault: Fault::AddJsonMembers(
                r#""TrainingTimeInSeconds": 4000, "BillableTimeInSeconds": 3600"#,
            ),
        }],
    );
    let name = unique("e2e-billed");
    let lab = Lab::new(&experiment(&name, &data, &data, false, 1, &job_table));
    let url = proxy.url();
    let env = [("AWS_ENDPOINT_URL", url.as_str())];
    let run = lab
        .xtask_env(
            &[
                "experiment",
                "run",
                &lab.file(),
                "--backend",
                "sagemaker",
                "--image",
                &image,
                "--allow-dirty",
                "--wait",
                "--output",
                "json",
            ],
            &env,
        )
        .ok();
    assert!(proxy.injected(0) > 0, "{:?}", proxy.requests());
    let rec = Lab::record(&run);
    assert_eq!(rec["status"], "Completed", "{rec}");
    assert_eq!(rec["cost"]["training_secs"], 4000, "{rec}");
    assert_eq!(rec["cost"]["billable_secs"], 3600, "{rec}");
    // One hour of ml.m5.xlarge.
    let usd = rec["cost"]["usd"].as_f64().unwrap();
    assert!((usd - 0.23).abs() < 1e-9, "{rec}");
    let job = rec["job_name"].as_str().unwrap();
    let status = lab.xtask_env(&["experiment", "status", job], &env).ok();
    assert!(
        status.stdout.contains("$0.23 (3600 s billed)"),
        "{status:?}"
    );
    let list = lab.xtask_env(&["experiment", "list"], &env).ok();
    let row = list
        .stdout
        .lines()
        .find(|l| l.contains(job))
        .unwrap_or_else(|| panic!("{list:?}"));
    assert!(row.contains("$0.23"), "{list:?}");
}

#[test]
fn an_invalid_point_is_located_before_anything_launches() {
    let text =
        sweep_experiment("e2e-sweep-bad", "data", "").replace("[0.01, 0.02]", "[0.01, \"fast\"]");
    let lab = Lab::new(&text);
    let run = lab.xtask(&["experiment", "sweep", &lab.file()]);
    assert!(!run.success(), "{run:?}");
    let line = text.lines().position(|l| l.contains("\"fast\"")).unwrap() + 1;
    assert!(
        run.stderr.contains(&format!("exp.toml:{line}:")),
        "located at line {line}: {run:?}"
    );
    assert!(
        run.stderr.contains("train.learning_rate = \"fast\"")
            && run.stderr.contains("no point was launched"),
        "{run:?}"
    );
    assert_eq!(lab.job_dirs(), 0);
    assert!(!lab.runs.exists() || !lab.runs.join(".sweeps").exists());

    // A misspelt key path: did you mean.
    let text = sweep_experiment("e2e-sweep-typo", "data", "")
        .replace("\"train.learning_rate\"", "\"train.learnig_rate\"");
    let lab = Lab::new(&text);
    let (line, column) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("\"train.learnig_rate\"").map(|c| (i + 1, c + 1)))
        .unwrap();
    let run = lab.xtask(&["experiment", "sweep", &lab.file()]);
    assert!(!run.success());
    assert!(
        run.stderr.contains(&format!(
            "exp.toml:{line}:{column}: `train.learnig_rate`: unknown key path"
        )) && run.stderr.contains("did you mean `train.learning_rate`?"),
        "{run:?}"
    );
    assert_eq!(lab.job_dirs(), 0);
}

#[test]
fn max_cost_usd_refuses_a_run_and_a_sweep_above_it() {
    // ml.m5.xlarge for at most 1 h costs more than a cent.
    let lab = Lab::new(&experiment(
        "e2e-cost",
        "data",
        "data",
        true,
        1,
        "max_cost_usd = 0.01",
    ));
    let run = lab.xtask(&["experiment", "run", &lab.file()]);
    assert!(!run.success());
    assert!(
        run.stderr.contains("job.max_cost_usd")
            && run.stderr.contains("$0.23")
            && run.stderr.contains("$0.01"),
        "the figures: {run:?}"
    );
    assert_eq!(lab.job_dirs(), 0);

    // Each point alone would fit; the four together do not.
    let lab = Lab::new(&sweep_experiment(
        "e2e-cost-sweep",
        "data",
        "max_cost_usd = 0.5",
    ));
    let run = lab.xtask(&["experiment", "sweep", &lab.file()]);
    assert!(!run.success());
    // 4 x 1 h x $0.23.
    let message = run.stderr_unwrapped();
    assert!(
        message.contains("the sweep's worst-case cost $0.92 (4 points, each at most its max_runtime) is above job.max_cost_usd = $0.50"),
        "{message}\n{run:?}"
    );
    assert_eq!(lab.job_dirs(), 0);

    // The total said before launching is priced where `--region` creates
    // the jobs, not in the file's region: no price is known in eu-west-1,
    // so none is claimed.
    let lab = Lab::new(&sweep_experiment("e2e-cost-region", "data", ""));
    let file = lab.file();
    let total = |extra: &[&str]| {
        let mut args = vec![
            "experiment",
            "sweep",
            &file,
            "--backend",
            "sagemaker",
            "--dry-run",
        ];
        args.extend_from_slice(extra);
        let run = lab.xtask(&args);
        run.stderr
            .lines()
            .find(|l| l.contains("worst-case cost $") && l.contains("in all"))
            .map(str::to_string)
    };
    assert_eq!(
        total(&[]).as_deref(),
        Some("e2e-cost-region: 4 point(s), worst-case cost $0.92 in all")
    );
    assert_eq!(total(&["--region", "eu-west-1"]), None);
    assert_eq!(lab.job_dirs(), 0);
}

#[test]
fn a_memoized_run_launches_nothing_and_force_does() {
    let lab = Lab::new(&experiment("e2e-memo", "data", "data", true, 1, ""));
    let file = lab.file();
    let run = |extra: &[&str]| {
        let mut args = vec!["experiment", "run", &file, "--output", "json"];
        args.extend_from_slice(extra);
        lab.xtask(&args).ok()
    };
    let first = Lab::record(&run(&[]));
    assert_eq!(first["status"], "Completed");
    assert_eq!(lab.job_dirs(), 1);

    let memo = run(&[]);
    assert!(
        memo.stderr.contains(&format!(
            "{} already ran it, completed",
            first["job_name"].as_str().unwrap()
        )) && memo.stderr.contains("nothing launched"),
        "{memo:?}"
    );
    assert_eq!(Lab::record(&memo)["job_name"], first["job_name"]);
    assert_eq!(lab.job_dirs(), 1, "nothing launched");

    let forced = Lab::record(&run(&["--force"]));
    assert_ne!(forced["job_name"], first["job_name"]);
    assert_eq!(forced["status"], "Completed");
    assert_eq!(forced["experiment_sha256"], first["experiment_sha256"]);
    assert_eq!(lab.job_dirs(), 2);

    // Any pin that differs launches: here the experiment's bytes.
    let text = std::fs::read_to_string(lab.file()).unwrap() + "# a comment\n";
    std::fs::write(lab.file(), text).unwrap();
    let changed = Lab::record(&run(&[]));
    assert_ne!(changed["experiment_sha256"], first["experiment_sha256"]);
    assert_eq!(lab.job_dirs(), 3);
}
