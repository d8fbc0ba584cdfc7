//! `cargo xtask schema` and `cargo xtask experiment validate` as a user runs
//! them (through the entry point, which hands every other command to the
//! full xtask), plus an independent check of the generated schema with Python's
//! `jsonschema` (installed with the AWS emulator by `cargo xtask test`).

use sca_e2e::{cargo_xtask, root};

#[test]
fn schema_check_passes_on_the_tree() {
    let out = cargo_xtask(["schema", "--check"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_example_validates() {
    let out = cargo_xtask(["experiment", "validate"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every file under experiments/, counted here independently of the tool.
    let files = walk_toml(&root().join("experiments"));
    assert!(files >= 6, "quickstart, its sweep, co-train and the ports");
    assert!(
        stdout.contains(&format!("{files} experiment file(s) valid")),
        "{stdout}"
    );
}

fn walk_toml(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            if p.is_dir() {
                walk_toml(&p)
            } else {
                usize::from(p.extension().is_some_and(|e| e == "toml"))
            }
        })
        .sum()
}

#[test]
fn all_errors_of_all_files_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let quick = std::fs::read_to_string(root().join("experiments/quickstart.toml")).unwrap();
    let a = dir.path().join("a.toml");
    std::fs::write(
        &a,
        quick
            .replace("batch_size = 8", "bach_size = 8")
            .replace("epochs = 5", "epochs = 0"),
    )
    .unwrap();
    let b = dir.path().join("b.toml");
    std::fs::write(
        &b,
        quick.replace("mean = [0.35, 0.35, 0.35, 0.35]", "mean = [0.35]"),
    )
    .unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        quick.replace("name = \"quickstart\"", "name = \"quickstart-copy\""),
    )
    .unwrap();
    // Valid on its own, but the repository's quickstart.toml has its name.
    let twin = dir.path().join("twin.toml");
    std::fs::write(&twin, &quick).unwrap();
    let out = cargo_xtask(["experiment", "validate", "--format", "json"])
        .args([&a, &b, &good, &twin])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["files"], 4);
    assert_eq!(doc["invalid_files"], 3);
    let diags = doc["diagnostics"].as_array().unwrap();
    let keys: Vec<_> = diags.iter().map(|d| d["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "train.epochs",
            "train.bach_size",
            "channels[0].mean",
            "experiment.name"
        ],
        "{diags:#?}"
    );
    assert!(
        diags[3]["message"]
            .as_str()
            .unwrap()
            .ends_with("is also defined in experiments/quickstart.toml"),
        "{diags:#?}"
    );
    for d in diags {
        assert!(
            d["line"].as_u64().unwrap() > 0 && d["column"].as_u64().unwrap() > 0,
            "{d}"
        );
    }
    assert_eq!(diags[1]["help"], "did you mean `batch_size`?");
}

#[test]
fn human_output_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "[experiment]\nname = \"x\"\nnmae = 3\n").unwrap();
    let out = cargo_xtask(["experiment", "validate"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:3:1", f.display())), "{stderr}");
    assert!(stderr.contains("did you mean `name`?"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_paths_exit_non_zero_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let out = cargo_xtask(["experiment", "validate"])
        .arg(dir.path())
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is a directory") && stderr.contains("no such file"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The schema is valid draft 2020-12 and accepts the examples, according to a validator we did not write.
#[test]
fn independent_validator_accepts_schema_and_examples() {
    let script = r#"
import json, pathlib, sys, tomllib
import jsonschema
schema = json.loads(pathlib.Path("schema/experiment.schema.json").read_text())
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
files = sorted(pathlib.Path("experiments").rglob("*.toml"))
bad = 0
for f in files:
    for e in v.iter_errors(tomllib.loads(f.read_text())):
        print(f"{f}: {e.message}"); bad += 1
broken = tomllib.loads(files[0].read_text()); broken["train"]["bach_size"] = 3
rejected = not v.is_valid(broken)
print(json.dumps({"files": len(files), "errors": bad, "rejects_unknown_key": rejected}))
"#;
    // jsonschema comes with moto[server], in the Python `services up` names.
    let python = std::env::var("SCA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .current_dir(root())
        .args(["-c", script])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["errors"], 0, "{stdout}");
    assert!(last["files"].as_u64().unwrap() >= 5);
    assert_eq!(last["rejects_unknown_key"], true);
}

/// The entry point runs validate without the full xtask, and hands every
/// other command over unchanged: the full binary's stdout, stderr and exit
/// code reach the caller as they are.
#[test]
fn the_entry_point_hands_other_commands_to_the_full_xtask() {
    let out = cargo_xtask(["experiment", "status", "no-such-job-e2e"])
        .env("SCA_RUNS_DIR", root().join("target/e2e-entry-runs"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no run record for job `no-such-job-e2e`"),
        "{stderr}"
    );
    let list = cargo_xtask(["experiment", "list", "--output", "json"])
        .env("SCA_RUNS_DIR", root().join("target/e2e-entry-runs"))
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&list.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&list.stdout)));
    assert!(doc.is_array() || doc.is_object(), "{doc}");
    // Its own commands reject what the full xtask would, with clap's usage.
    let bad = cargo_xtask(["experiment", "validate", "--format", "yaml"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid value 'yaml'"));
}
