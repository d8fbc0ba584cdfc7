//! Cross-cutting facts about the tree, checked by `cargo test`: generated
//! files are fresh, every example experiment validates, every module says
//! what it is for.

use std::path::{Path, PathBuf};

use crate::workspace;

#[test]
fn schema_is_fresh() {
    let path = workspace::root().join(sca_spec::SCHEMA_PATH);
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == sca_spec::schema_text(),
        "{} is stale: run `cargo xtask schema` and commit the result",
        sca_spec::SCHEMA_PATH
    );
}

#[test]
fn every_experiment_validates() {
    let defaults = workspace::defaults().expect("reading [workspace.metadata.sca]");
    let files = files_with_ext(&workspace::root().join("experiments"), "toml");
    assert!(
        files.len() >= 5,
        "the quickstart and the four ported experiments: {files:?}"
    );
    for f in files {
        let report = sca_spec::validate_file(&f, &defaults);
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            report.is_valid(),
            "{}: {:#?}",
            f.display(),
            report.diagnostics
        );
        let depth = f
            .strip_prefix(workspace::root().join("experiments"))
            .unwrap()
            .components()
            .count();
        let want = format!(
            "#:schema {}schema/experiment.schema.json",
            "../".repeat(depth)
        );
        assert!(
            text.starts_with(&want),
            "{} must start with `{want}` so editors find the schema",
            f.display()
        );
    }
}

/// Both CUDA build routes, and the release workflow, compile the kernels for
/// the same GPU generation: the oldest one validation lets `device = "cuda"`
/// run on.
#[test]
fn every_cuda_build_targets_the_same_gpu_generation() {
    let root = workspace::root();
    let want = crate::cuda::DEFAULT_COMPUTE_CAP.to_string();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(
        dockerfile
            .lines()
            .any(|l| l == format!("ARG CUDA_COMPUTE_CAP={want}")),
        "Dockerfile: `ARG CUDA_COMPUTE_CAP={want}` expected (xtask/src/cuda.rs's default)"
    );
    let release = std::fs::read_to_string(root.join(".github/workflows/release.yml")).unwrap();
    let args: Vec<&str> = release
        .split_whitespace()
        .filter(|w| w.starts_with("CUDA_COMPUTE_CAP="))
        .collect();
    assert_eq!(args, [format!("CUDA_COMPUTE_CAP={want}")], "release.yml");
}

#[test]
fn every_module_has_a_doc_line() {
    let root = workspace::root();
    let mut missing = Vec::new();
    for dir in [
        "xtask/src",
        "sca-train/src",
        "sca-train/spec/src",
        "sca-train/data/src",
        "tests/src",
    ] {
        for f in files_with_ext(&root.join(dir), "rs") {
            let text = std::fs::read_to_string(&f).unwrap();
            if !text.trim_start().starts_with("//!") {
                missing.push(f.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "start these files with a `//!` line saying what they are for: {missing:?}"
    );
}

/// Cargo started from a test or from `cargo xtask` inherits cargo's per-crate
/// variables, and ring's build script reruns when they change: every nested
/// cargo goes through the one helper per crate that drops them.
#[test]
fn nested_cargo_goes_through_the_helper() {
    let root = workspace::root();
    let helpers = [root.join("xtask/src/workspace.rs")];
    let mut found = Vec::new();
    for dir in ["xtask/src", "tests/src", "tests/tests"] {
        for f in files_with_ext(&root.join(dir), "rs") {
            let text = std::fs::read_to_string(&f).unwrap();
            let names_cargo = [
                "var(\"CARGO\")",
                "var_os(\"CARGO\")",
                "Command::new(\"cargo\")",
            ]
            .iter()
            .any(|p| text.contains(p));
            if names_cargo && !helpers.contains(&f) {
                found.push(f.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    assert!(
        found.is_empty(),
        "start cargo with `workspace::cargo()` (xtask) or the tests' `cargo()` helper: {found:?}"
    );
}

/// Every file with extension `ext` under `dir`, recursively, sorted.
/// git is started from one module, so its errors and environment (`TZ`,
/// quiet, argument-safe `cmd!`) are the same everywhere.
#[test]
fn only_the_git_module_runs_git() {
    let root = workspace::root();
    let git_module = root.join("xtask/src/git.rs");
    let starts_git =
        regex::Regex::new(r#"(Command::new|\.cmd)\(\s*"git"|cmd!\([^,]+,\s*"git\b"#).unwrap();
    let found: Vec<String> = files_with_ext(&root.join("xtask/src"), "rs")
        .into_iter()
        .filter(|f| *f != git_module)
        .filter(|f| starts_git.is_match(&std::fs::read_to_string(f).unwrap()))
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        found.is_empty(),
        "run git through `crate::git` (xtask/src/git.rs): {found:?}"
    );
}

fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The launcher validates and launches without the trainer's numeric stack:
/// nothing xtask depends on (normal, build or dev) reaches dfdx, the GEMM
/// kernels or the plotting library. Those compile only into `sca-train`,
/// which xtask runs as a binary.
#[test]
fn xtask_does_not_depend_on_the_numeric_stack() {
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(workspace::root().join("Cargo.toml"))
        .other_options(vec!["--locked".to_string()])
        .exec()
        .expect("cargo metadata");
    let resolve = metadata.resolve.as_ref().expect("a resolved graph");
    let name_of = |id: &cargo_metadata::PackageId| metadata[id].name.to_string();
    let xtask = metadata
        .workspace_packages()
        .into_iter()
        .find(|p| p.name.as_str() == "xtask")
        .expect("the xtask package")
        .id
        .clone();
    // Breadth-first over the resolved graph, remembering one path to each package.
    let mut via: std::collections::HashMap<
        cargo_metadata::PackageId,
        Option<cargo_metadata::PackageId>,
    > = std::collections::HashMap::from([(xtask.clone(), None)]);
    let mut queue = std::collections::VecDeque::from([xtask]);
    while let Some(id) = queue.pop_front() {
        let node = resolve.nodes.iter().find(|n| n.id == id).expect("a node");
        for dep in &node.deps {
            if !via.contains_key(&dep.pkg) {
                via.insert(dep.pkg.clone(), Some(id.clone()));
                queue.push_back(dep.pkg.clone());
            }
        }
    }
    let forbidden = ["dfdx", "gemm", "plotters", "sca-train"];
    let mut found = Vec::new();
    for id in via.keys() {
        if forbidden.contains(&name_of(id).as_str()) {
            let mut path = vec![name_of(id)];
            let mut at = id;
            while let Some(Some(parent)) = via.get(at) {
                path.push(name_of(parent));
                at = parent;
            }
            path.reverse();
            found.push(path.join(" -> "));
        }
    }
    found.sort();
    assert!(
        found.is_empty(),
        "xtask must not compile the trainer's numeric stack (move what it needs into sca-spec or sca-data): {found:#?}"
    );
}
