//! End-to-end tests of `cargo xtask experiment diff` and `experiment report`
//! on local runs (host processes, no services): two runs of a tiny synthetic
//! experiment that differ in one key and one tile, and a third experiment;
//! and on SageMaker jobs (the emulator) recorded only in the config bucket.
//! The report is opened in headless Chromium (Debian's `chromium`, which
//! `cargo xtask test` installs) with a dead proxy and a network log, and
//! its DOM is checked after the page's script ran.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sca_e2e::lab::{emulated, experiment, first_file, Emulated, Lab};
use sca_e2e::{boto3, unique};
use serde_json::Value;

/// Three completed local runs in one lab: `a`, then `b` (learning rate
/// 0.01 → 0.02 and one imagery tile's bytes changed), then `c` (another
/// experiment on the same data).
struct Runs {
    lab: Lab,
    a: String,
    b: String,
    c: String,
    /// The changed tile's uri in the data manifest (`data/<dir>/<z>/<x>/<y>.tif`).
    tile: String,
}

fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(|| {
        let lab = Lab::new(&experiment("e2e-report", "data", "data", true, 2, ""));
        let a = launch(&lab, &lab.file());

        let file = lab.dir.path().join("exp.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("learning_rate = 0.01\n"));
        let text = text.replace("learning_rate = 0.01\n", "learning_rate = 0.02 # tuned\n");
        // A comment alone changes the file's hash, not the experiment.
        std::fs::write(&file, format!("# second attempt\n{text}")).unwrap();
        let data = lab.dir.path().join("data");
        let tile = first_file(&data, "tif");
        // A byte in the middle of an uncompressed tile: its pixels change,
        // it still decodes.
        let mut bytes = std::fs::read(&tile).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&tile, bytes).unwrap();
        let b = launch(&lab, &lab.file());

        let other = lab.dir.path().join("other.toml");
        let text = experiment("e2e-report-other", "data", "data", true, 1, "");
        std::fs::write(&other, text).unwrap();
        let c = launch(&lab, other.to_str().unwrap());
        let tile = format!("data/{}", tile.strip_prefix(&data).unwrap().display());
        Runs { lab, a, b, c, tile }
    })
}

/// `experiment run FILE` to completion; the job's name.
fn launch(lab: &Lab, file: &str) -> String {
    let run = lab
        .xtask(&["experiment", "run", file, "--output", "json"])
        .ok();
    let rec = Lab::record(&run);
    assert_eq!(rec["status"], "Completed", "{rec}");
    rec["job_name"].as_str().unwrap().to_string()
}

#[test]
fn diff_names_exactly_the_changed_key_and_tile() {
    let r = runs();
    let lab = &r.lab;
    let text = lab.xtask(&["experiment", "diff", &r.a, &r.b]).ok().stdout;
    assert!(
        text.contains(
            "experiment (resolved as launched): 1 key(s) differ\n  train.learning_rate: 0.01 → 0.02\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("data: 0 added, 0 removed, 1 changed (48 → 48 objects"),
        "{text}"
    );
    assert!(
        text.contains(&format!("changed {}: sha256 ", r.tile)),
        "{text}"
    );
    assert!(text.contains("results (final validation epoch):"), "{text}");
    // The same commit, image and warm start: those parts are left out.
    for absent in ["code:", "image:", "warm start:"] {
        assert!(!text.contains(absent), "{absent}\n{text}");
    }

    let json = lab
        .xtask(&["experiment", "diff", &r.a, &r.b, "--output", "json"])
        .ok()
        .stdout;
    let d: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(d["version"], 1);
    assert_eq!(d["a"]["job"], r.a.as_str());
    assert_eq!(d["b"]["job"], r.b.as_str());
    assert_eq!(d["experiment"]["resolved"], true);
    assert_eq!(d["experiment"]["as_launched"], true);
    assert_eq!(
        d["experiment"]["changes"],
        serde_json::json!([{"path": "train.learning_rate", "old": 0.01, "new": 0.02}])
    );
    assert_eq!(d["data"]["added"], serde_json::json!([]));
    assert_eq!(d["data"]["removed"], serde_json::json!([]));
    let changed = d["data"]["changed"].as_array().unwrap();
    assert_eq!(changed.len(), 1, "{d}");
    assert_eq!(changed[0]["uri"], r.tile.as_str());
    for part in ["code", "image", "warm_start"] {
        assert_eq!(d[part], Value::Null, "{part}: {d}");
    }
    let metrics = d["results"]["metrics"].as_array().unwrap();
    let iou = metrics.iter().find(|m| m["name"] == "iou").unwrap();
    let (x, y) = (iou["a"].as_f64().unwrap(), iou["b"].as_f64().unwrap());
    assert!(
        (iou["delta"].as_f64().unwrap() - (y - x)).abs() < 1e-12,
        "{iou}"
    );
    assert_eq!(d["results"]["epochs_compared"], 2, "{d}");
    assert_eq!(d["results"]["curves_missing"], serde_json::json!([]));

    // A run against itself.
    let same = lab.xtask(&["experiment", "diff", &r.a, &r.a]).ok().stdout;
    assert!(same.contains("no differences"), "{same}");
}

#[test]
fn diff_of_missing_or_foreign_records_says_what_is_missing() {
    let r = runs();
    let lab = &r.lab;
    let missing = lab.xtask(&["experiment", "diff", &r.a, "e2e-report-nope"]);
    assert!(!missing.success());
    assert!(
        missing
            .stderr
            .contains("no run record for job `e2e-report-nope`")
            && missing.stderr.contains("experiment list"),
        "{missing:?}"
    );

    // Records and config channels copied into runs directory of their own
    // (the other tests read the lab's), one as if from another checkout:
    // its commit is not in this repository.
    let runs = tempfile::tempdir().unwrap();
    let runs_dir = runs.path().display().to_string();
    let copy = |job: &str, as_job: &str| -> Value {
        let dir = runs.path().join(as_job);
        std::fs::create_dir_all(dir.join("config")).unwrap();
        for e in std::fs::read_dir(lab.runs.join(job).join("config")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join("config").join(e.file_name())).unwrap();
        }
        let mut rec: Value =
            serde_json::from_slice(&std::fs::read(lab.runs.join(job).join("record.json")).unwrap())
                .unwrap();
        rec["job_name"] = as_job.into();
        rec
    };
    let save = |rec: &Value| {
        let job = rec["job_name"].as_str().unwrap();
        std::fs::write(runs.path().join(job).join("record.json"), rec.to_string()).unwrap();
    };
    let b = copy(&r.b, &r.b);
    save(&b);
    let foreign = "e2e-report-foreign-20990101-000000";
    let mut rec = copy(&r.a, foreign);
    let commit = rec["commit"].clone();
    rec["commit"] = "f".repeat(40).into();
    save(&rec);
    let diff = |a: &str| {
        lab.xtask_env(
            &["experiment", "diff", a, &r.b],
            &[("SCA_RUNS_DIR", &runs_dir)],
        )
    };
    // What changed between the commits is unknown, said so; the rest is
    // compared all the same.
    let other = diff(foreign).ok();
    assert!(
        other.stdout.contains(&format!(
            "code: not compared: commit {} of job `{foreign}`",
            "f".repeat(40)
        )) && other.stdout.contains("another checkout")
            && other.stdout.contains("git fetch"),
        "{other:?}"
    );
    assert!(other.stdout.contains("train.learning_rate"), "{other:?}");

    // Its commit fixed, but its data manifest gone.
    rec["commit"] = commit;
    save(&rec);
    let manifest = runs.path().join(foreign).join("config/manifest.json");
    std::fs::remove_file(&manifest).unwrap();
    let gone = diff(foreign).ok();
    assert!(
        gone.stdout.contains(&format!(
            "data: not compared: the data manifest of job `{foreign}` is missing"
        )) && gone.stdout.contains(&manifest.display().to_string()),
        "{gone:?}"
    );
    assert!(gone.stdout.contains("train.learning_rate"), "{gone:?}");
}

/// Two SageMaker jobs (on the emulator) launched from "another machine":
/// this runs directory has no record of them, the config bucket has.
/// `diff --remote` and `report --remote` copy their records, config
/// channels and artifacts here and compare them like local runs.
#[test]
fn diff_and_report_read_jobs_recorded_only_in_the_config_bucket() {
    let Emulated {
        data,
        image,
        job_table,
        config_bucket,
    } = emulated();
    let name = unique("e2e-remote");
    let lab = Lab::new(&experiment(&name, &data, &data, false, 1, &job_table));
    let launch = || {
        let run = lab
            .xtask(&[
                "experiment",
                "run",
                &lab.file(),
                "--backend",
                "sagemaker",
                "--image",
                &image,
                "--output",
                "json",
            ])
            .ok();
        Lab::record(&run)
    };
    let a = launch();
    let file = lab.dir.path().join("exp.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("learning_rate = 0.01\n", "learning_rate = 0.02\n"),
    )
    .unwrap();
    let b = launch();
    let (ja, jb) = (
        a["job_name"].as_str().unwrap(),
        b["job_name"].as_str().unwrap(),
    );
    // The emulator trains nothing: each job's model.tar.gz, where SageMaker
    // leaves it, holds a metrics.csv whose validation IoU differs at epoch 2.
    boto3(
        r#"
import io, sys, tarfile
s3 = client("s3")
for uri, iou in zip(sys.argv[1::2], sys.argv[2::2]):
    bucket, key = uri[len("s3://"):].split("/", 1)
    csv = ("epoch,split,loss,iou\n1,train,0.7,0.4\n1,val,0.6,0.5\n2,train,0.5,0.6\n2,val,0.4,%s\n" % iou).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("metrics.csv")
        info.size = len(csv)
        t.addfile(info, io.BytesIO(csv))
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
"#,
        &[
            a["artifacts"].as_str().unwrap(),
            "0.7",
            b["artifacts"].as_str().unwrap(),
            "0.8",
        ],
    )
    .ok();

    // Another machine: a runs directory without either record.
    let elsewhere = tempfile::tempdir().unwrap();
    let runs = elsewhere.path().to_str().unwrap();
    let at = |args: &[&str]| lab.xtask_env(args, &[("SCA_RUNS_DIR", runs)]);
    let local_only = at(&["experiment", "diff", ja, jb]);
    assert!(!local_only.success());
    assert!(
        local_only
            .stderr
            .contains(&format!("no run record for job `{ja}`"))
            && local_only.stderr.contains("add --remote"),
        "{local_only:?}"
    );
    let nosuch = at(&[
        "experiment",
        "diff",
        ja,
        "e2e-remote-nosuch",
        "--remote",
        "--bucket",
        &config_bucket,
    ]);
    assert!(!nosuch.success());
    assert!(
        nosuch.stderr.contains(&format!(
            "s3://{config_bucket}/experiments/e2e-remote-nosuch/record.json"
        )) && nosuch.stderr.contains("list --remote"),
        "{nosuch:?}"
    );

    let diff = at(&[
        "experiment",
        "diff",
        ja,
        jb,
        "--remote",
        "--bucket",
        &config_bucket,
        "--output",
        "json",
    ])
    .ok();
    let d: Value = serde_json::from_str(diff.stdout.trim()).unwrap();
    assert_eq!(
        d["experiment"]["changes"],
        serde_json::json!([{"path": "train.learning_rate", "old": 0.01, "new": 0.02}]),
        "{d}"
    );
    for part in ["code", "image", "data", "warm_start"] {
        assert_eq!(d[part], Value::Null, "{part}: {d}");
    }
    assert_eq!(d["results"]["curves_missing"], serde_json::json!([]), "{d}");
    assert_eq!(d["results"]["epochs_compared"], 2, "{d}");
    assert_eq!(
        d["results"]["divergence"],
        serde_json::json!({"epoch": 2, "metric": "iou", "a": 0.7, "b": 0.8}),
        "{d}"
    );
    // What was copied: each record as the bucket has it, with its config
    // channel (experiment file and data manifest) and its artifacts.
    for (job, rec) in [(ja, &a), (jb, &b)] {
        let dir = elsewhere.path().join(job);
        let copied: Value =
            serde_json::from_slice(&std::fs::read(dir.join("record.json")).unwrap()).unwrap();
        assert_eq!(copied["experiment_sha256"], rec["experiment_sha256"]);
        assert!(dir.join("config/exp.toml").is_file());
        assert!(dir.join("config/manifest.json").is_file());
        assert!(dir.join("fetched/metrics.csv").is_file());
    }

    // The report of a third machine shows both, fetched under a progress bar.
    let third = tempfile::tempdir().unwrap();
    let out = third.path().join("report.html");
    lab.xtask_env(
        &[
            "experiment",
            "report",
            "--remote",
            "--bucket",
            &config_bucket,
            "--out",
            out.to_str().unwrap(),
        ],
        &[("SCA_RUNS_DIR", third.path().to_str().unwrap())],
    )
    .ok();
    let html = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        html.matches(r#"<tr class="run""#).count(),
        2,
        "one row per job"
    );
    for job in [ja, jb] {
        assert!(
            html.contains(&format!(r#"<svg class="curves" data-job="{job}""#)),
            "{job}'s curves"
        );
    }
    assert!(
        html.contains(&format!("cargo xtask experiment diff {ja} {jb}")),
        "b's section links its diff against a"
    );
    assert!(
        html.contains("train.learning_rate: 0.01 → 0.02"),
        "the embedded diff"
    );
}

/// Debian's `chromium`; panics (never skips) when it is missing.
fn chromium() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("chromium"))
                .find(|p| p.is_file())
        })
        .expect("chromium is not installed: `cargo xtask test` installs it (or `apt-get install chromium`)")
}

#[test]
fn report_opens_offline_in_headless_chromium() {
    let chromium = chromium();
    let r = runs();
    let lab = &r.lab;
    let out = lab.dir.path().join("report.html");
    let shot = lab.dir.path().join("report.png");
    let run = lab
        .xtask(&[
            "experiment",
            "report",
            "--out",
            out.to_str().unwrap(),
            "--screenshot",
            shot.to_str().unwrap(),
        ])
        .ok();
    assert_eq!(run.stdout.trim(), out.display().to_string());
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page names a URL"
    );
    // The screenshot: a PNG of the window's size (IHDR width and height).
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), (1600, 1000));

    // The DOM after the page's script ran, every request going to a dead
    // proxy and into the network log.
    let (dom, netlog) = open_offline(&chromium, &out, &lab.dir.path().join("netlog.json"));
    assert!(
        dom.contains(r#"data-sortable="ready""#),
        "the page's script did not run"
    );
    assert_eq!(
        dom.matches(r#"<tr class="run""#).count(),
        3,
        "one row per run"
    );
    assert_eq!(
        dom.matches(r#"<svg class="curves""#).count(),
        3,
        "one curve chart per run"
    );
    for job in [&r.a, &r.b, &r.c] {
        assert!(
            dom.contains(&format!(r#"<svg class="curves" data-job="{job}""#)),
            "{job}'s curves"
        );
        assert!(dom.contains(&format!(r#"<section class="run" id="{job}">"#)));
    }
    assert!(
        dom.matches(r#"<img class="overlay""#).count() >= 3,
        "overlays"
    );
    assert!(
        dom.contains(&format!("cargo xtask experiment diff {} {}", r.a, r.b)),
        "b's section links its diff against a"
    );
    assert!(dom.contains("train.learning_rate: 0.01 → 0.02"));
    // Nothing left the file: the page requested no URL. The control shows
    // that the log does record what a page requests.
    let requested = page_requests(&netlog);
    assert!(
        requested.is_empty(),
        "requests leaving the file: {requested:?}"
    );
    let control = lab.dir.path().join("control.html");
    std::fs::write(
        &control,
        r#"<!doctype html><html><body><img src="http://example.invalid/x.png"></body></html>"#,
    )
    .unwrap();
    let (_, control_log) = open_offline(&chromium, &control, &lab.dir.path().join("control.json"));
    assert_eq!(
        page_requests(&control_log),
        ["http://example.invalid/x.png"],
        "the network log shows a page's requests"
    );
}

/// Open `page` in headless Chromium with a dead proxy (no request can
/// succeed) and a network log; the DOM after its scripts ran, and the log.
fn open_offline(chromium: &Path, page: &Path, netlog: &Path) -> (String, Value) {
    let profile = tempfile::tempdir().unwrap();
    // Bounded: a Chromium hung at start fails the test, not the whole run.
    let out = Command::new("timeout")
        .args(["-k", "10", "120"])
        .arg(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--proxy-server=127.0.0.1:9",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--log-net-log={}", netlog.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium: {out:?}");
    let log = serde_json::from_slice(&std::fs::read(netlog).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", netlog.display()));
    (String::from_utf8(out.stdout).unwrap(), log)
}

/// The URLs a `file://` page requested through the network stack: the
/// `URL_REQUEST_START_JOB` events on its behalf (network isolation key
/// `file://`), leaving out Chromium's own background requests (other keys).
fn page_requests(log: &Value) -> Vec<String> {
    let start_job = &log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"];
    assert!(start_job.is_number(), "not a Chromium net log");
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| &e["type"] == start_job)
        .filter(|e| {
            e["params"]["network_isolation_key"]
                .as_str()
                .is_some_and(|k| k.starts_with("file://"))
        })
        .filter_map(|e| e["params"]["url"].as_str().map(String::from))
        .collect()
}
