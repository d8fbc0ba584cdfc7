//! Cross-cutting facts about the tree, checked by `cargo test`: generated
//! files are fresh, every example experiment validates, every module says
//! what it is for, and the invariants of ARCHITECTURE.md that code can
//! check (the dependency graph and build reuse, the launcher's layering, git,
//! xshell and nested cargo used only as designed, one CUDA generation).

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
        "xtask/entry/src",
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
/// cargo goes through the one helper that drops them (xtask-entry's
/// `workspace` module, which xtask and the e2e tests call).
#[test]
fn nested_cargo_goes_through_the_helper() {
    let root = workspace::root();
    let helpers = [root.join("xtask/entry/src/workspace.rs")];
    let mut found = Vec::new();
    for dir in ["xtask/src", "xtask/entry/src", "tests/src", "tests/tests"] {
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

/// git is started from one module, so its errors and environment (`TZ`,
/// quiet, argument-safe `cmd!`) are the same everywhere.
#[test]
fn only_the_git_module_runs_git() {
    let starts_git = r#"(Command::new|\.cmd)\(\s*"git"|cmd!\([^,]+,\s*"git\b"#;
    let found = xtask_sources_matching(starts_git, &["xtask/src/git.rs"]);
    assert!(
        found.is_empty(),
        "run git through `crate::git` (xtask/src/git.rs): {found:?}"
    );
}

/// The workflow's processes run through xshell (`cmd!`: each argument passed
/// as it is, never through a shell string, and errors that name the
/// command). std::process stays only where a child outlives the call or is
/// piped and signalled (ARCHITECTURE.md): these files, for those children.
#[test]
fn processes_run_through_xshell() {
    let allowed = [
        "xtask/src/services.rs",         // the services' daemons
        "xtask/src/experiment/local.rs", // the local backend's trainer
        "xtask/src/bench/image.rs",      // `tar -T -`, fed file names on stdin
        "xtask/src/bench/dockerfile.rs", // `tar | docker import`
        "xtask/src/tidy.rs",             // this test's own patterns
    ];
    let found = xtask_sources_matching(r"\bCommand::new\(", &allowed);
    assert!(
        found.is_empty(),
        "run the process with xshell's `cmd!` (see git.rs or bench/venv.rs): {found:?}"
    );
}

/// The `.rs` files under `xtask/src` (workspace-relative paths, sorted)
/// whose text matches `pattern`, other than the `except` ones.
fn xtask_sources_matching(pattern: &str, except: &[&str]) -> Vec<String> {
    let root = workspace::root();
    let pattern = regex::Regex::new(pattern).unwrap();
    let except: Vec<PathBuf> = except.iter().map(|f| root.join(f)).collect();
    files_with_ext(&root.join("xtask/src"), "rs")
        .into_iter()
        .filter(|f| !except.contains(f))
        .filter(|f| pattern.is_match(&std::fs::read_to_string(f).unwrap()))
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect()
}

/// Every file with extension `ext` under `dir`, recursively, sorted.
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

/// The image's build stage builds sca-train in a copy of the workspace whose
/// other members are stubs, and cargo refuses a workspace with a member's
/// manifest missing: the Dockerfile copies each member's Cargo.toml (the
/// production build cannot run here without a CUDA base image).
#[test]
fn the_dockerfile_copies_every_members_manifest() {
    let root = workspace::root();
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let dockerignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    let missing: Vec<String> = members
        .iter()
        .map(|m| format!("{}/Cargo.toml", m.as_str().unwrap()))
        .filter(|m| {
            let copied = dockerfile.contains(&format!("COPY {m} {m}\n"));
            let sent = dockerignore
                .lines()
                .filter_map(|l| l.strip_prefix('!'))
                .any(|p| {
                    m.as_str() == p || m.starts_with(&format!("{}/", p.trim_end_matches('/')))
                });
            !(copied && sent)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "copy these manifests in the Dockerfile's build stage and re-include them in .dockerignore: {missing:?}"
    );
}

/// The launcher validates and launches without the trainer's numeric stack:
/// nothing xtask depends on (normal, build or dev) reaches dfdx, the GEMM
/// kernels or the plotting library. Those compile only into `sca-train`,
/// which xtask runs as a binary.
#[test]
fn xtask_does_not_depend_on_the_numeric_stack() {
    let found = dependency_paths("xtask", &["dfdx", "gemm", "plotters", "sca-train"]);
    assert!(
        found.is_empty(),
        "xtask must not compile the trainer's numeric stack (move what it needs into sca-spec or sca-data): {found:#?}"
    );
}

/// `cargo xtask experiment validate` from a fresh clone compiles only the
/// entry point's tree: no AWS SDK, Docker client, async runtime or data
/// layer (the full xtask has those, and builds only when another command
/// needs it).
#[test]
fn the_entry_point_compiles_only_the_format() {
    let found = dependency_paths(
        "xtask-entry",
        &[
            "aws-config",
            "aws-sdk-s3",
            "aws-sdk-sagemaker",
            "bollard",
            "tokio",
            "hyper",
            "sca-data",
            "xtask",
        ],
    );
    assert!(
        found.is_empty(),
        "xtask-entry must stay small (move what needs these into xtask, which it hands other commands to): {found:#?}"
    );
}

/// `cargo xtask experiment run` of a local experiment: the entry point's
/// `cargo run` of the local launcher, and that launcher's trainer build.
const LOCAL_LAUNCHER: &[&str] = &[
    "build",
    "-p",
    "xtask",
    "--bin",
    "xtask-local",
    "--no-default-features",
];
const LOCAL_TRAINER: &[&str] = &[
    "build",
    "-p",
    "xtask",
    "-p",
    "sca-train",
    "--no-default-features",
    "--bin",
    "sca-train",
    "--bin",
    "xtask-local",
];

/// A local run compiles no Docker or SageMaker client (the point of
/// `xtask-local`: BENCHMARKS.md, first-result), and both of its builds are
/// what the entry point and the local backend ask cargo for.
#[test]
fn a_local_run_compiles_no_docker_or_sagemaker_client() {
    let forbidden = [
        "bollard",
        "aws-sdk-sagemaker",
        "aws-sdk-ecr",
        "aws-sdk-cloudwatchlogs",
    ];
    let units = planned_units(LOCAL_TRAINER);
    let found: Vec<&str> = units
        .values()
        .map(|u| u.label.as_str())
        .filter(|l| forbidden.iter().any(|f| l.starts_with(&format!("{f}@"))))
        .collect();
    assert!(
        found.is_empty(),
        "a local run compiles these (gate what uses them behind xtask's `full` feature): {found:#?}"
    );
    assert!(
        units.values().any(|u| u.label.starts_with("sca-train@")),
        "no trainer in {LOCAL_TRAINER:?}"
    );
    let entry = std::fs::read_to_string(workspace::root().join("xtask/entry/src/lib.rs"))
        .expect("the entry point's source");
    let local = std::fs::read_to_string(workspace::root().join("xtask/src/experiment/local.rs"))
        .expect("the local backend's source");
    for (source, what, args) in [
        (&entry, "the entry point", &LOCAL_LAUNCHER[3..]),
        (&local, "the local backend", &LOCAL_LAUNCHER[5..]),
    ] {
        for arg in args {
            assert!(
                source.contains(&format!("\"{arg}\"")),
                "{what} no longer passes `{arg}`: update this test's builds to match"
            );
        }
    }
}

/// One dependency path from workspace package `package` to each package
/// named in `forbidden` that it reaches (normal, build or dev edges), as
/// `a -> b -> c`, sorted.
fn dependency_paths(package: &str, forbidden: &[&str]) -> Vec<String> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(workspace::root().join("Cargo.toml"))
        .other_options(vec!["--locked".to_string()])
        .exec()
        .expect("cargo metadata");
    let resolve = metadata.resolve.as_ref().expect("a resolved graph");
    let name_of = |id: &cargo_metadata::PackageId| metadata[id].name.to_string();
    let start = metadata
        .workspace_packages()
        .into_iter()
        .find(|p| p.name.as_str() == package)
        .unwrap_or_else(|| panic!("no workspace package {package}"))
        .id
        .clone();
    // Breadth-first over the resolved graph, remembering one path to each package.
    let mut via: std::collections::HashMap<
        cargo_metadata::PackageId,
        Option<cargo_metadata::PackageId>,
    > = std::collections::HashMap::from([(start.clone(), None)]);
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(id) = queue.pop_front() {
        let node = resolve.nodes.iter().find(|n| n.id == id).expect("a node");
        for dep in &node.deps {
            if !via.contains_key(&dep.pkg) {
                via.insert(dep.pkg.clone(), Some(id.clone()));
                queue.push_back(dep.pkg.clone());
            }
        }
    }
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
    found
}

/// Each build of a fresh clone reuses the crates of the build before it:
/// `cargo xtask` builds the entry point (`-p xtask-entry`), then the full
/// launcher (`-p xtask`), then the trainer (`-p xtask -p sca-train`, the
/// local backend), and CI then every test (`test --workspace`). Every unit (compiler invocation) of a build must be one
/// the next build plans too, or the next recompiles it and every crate
/// above it: without the feature-unification blocks in xtask/Cargo.toml and
/// xtask/entry/Cargo.toml, a few features on crates deep under the AWS SDK
/// made the trainer's build recompile ~400 crates, and a `syn` built with
/// other features made the launcher's recompile the entry point's
/// (BENCHMARKS.md, first-result).
#[test]
fn each_build_reuses_the_crates_of_the_one_before() {
    let entry = planned_units(&["build", "-p", "xtask-entry"]);
    let local = planned_units(LOCAL_LAUNCHER);
    let local_trainer = planned_units(LOCAL_TRAINER);
    let launcher = planned_units(&["build", "-p", "xtask", "--bin", "xtask"]);
    let trainer = planned_units(&[
        "build",
        "-p",
        "xtask",
        "-p",
        "sca-train",
        "--bin",
        "xtask",
        "--bin",
        "sca-train",
    ]);
    let tests = planned_units(&["test", "--workspace", "--no-run"]);
    assert!(
        entry.len() > 50 && local.len() > 200 && launcher.len() > local.len(),
        "{}, {} and {} units: is the unit graph read right?",
        entry.len(),
        local.len(),
        launcher.len()
    );
    // A local run first (`xtask-local`, then its trainer), then any other
    // command (the full launcher, its trainer); CI builds the full ones
    // first and the local ones in the tests, which needs the same.
    let mut differ = not_reused(&entry, &local, "xtask/entry/Cargo.toml");
    differ.extend(not_reused(&local, &local_trainer, "xtask/Cargo.toml"));
    differ.extend(not_reused(&local, &launcher, "xtask/Cargo.toml"));
    differ.extend(not_reused(&local_trainer, &trainer, "xtask/Cargo.toml"));
    differ.extend(not_reused(&launcher, &trainer, "xtask/Cargo.toml"));
    // `cargo xtask test` (CI) then builds every test: its dependencies too.
    differ.extend(not_reused(
        &trainer,
        &tests,
        "the dev-dependencies' Cargo.toml",
    ));
    assert!(
        differ.is_empty(),
        "the next build would compile these again (their features, or their dependencies', \
         differ): ask for the next build's features in the named Cargo.toml's \
         feature-unification block: {differ:#?}"
    );
}

/// The dependencies of build `first` that build `second` would compile
/// again (the workspace's own crates left out), as their root causes: the
/// units whose own dependencies are all reused, each with the features
/// `second` builds that package with and the manifest that should ask for
/// them; then how many units above them follow.
fn not_reused(first: &Units, second: &Units, manifest: &str) -> Vec<String> {
    let missing: std::collections::BTreeSet<u64> = first
        .iter()
        .filter(|(id, unit)| !unit.ours && !second.contains_key(*id))
        .map(|(id, _)| *id)
        .collect();
    let mut out: Vec<String> = missing
        .iter()
        .map(|id| &first[id])
        .filter(|unit| unit.deps.iter().all(|d| !missing.contains(d)))
        .map(|unit| {
            let pkg = unit.label.split(' ').next().unwrap_or(&unit.label);
            let mut next: Vec<&str> = second
                .values()
                .filter(|u| u.label.split(' ').next() == Some(pkg))
                .map(|u| u.label[pkg.len()..].trim())
                .collect();
            next.sort();
            next.dedup();
            format!("{manifest}: {}; next build: {}", unit.label, next.join(" "))
        })
        .collect();
    out.sort();
    out.dedup();
    if !missing.is_empty() {
        out.push(format!("({} units recompiled in all)", missing.len()));
    }
    out
}

/// One planned unit: a workspace crate?, `name@version [features]`, and its
/// dependencies' identities.
struct Unit {
    ours: bool,
    label: String,
    deps: Vec<u64>,
}

/// Unit identity → unit.
type Units = std::collections::BTreeMap<u64, Unit>;

/// The compiler invocations `cargo ARGS` (a build or test selection) plans,
/// from cargo's unit graph. A unit's
/// identity is what decides whether two builds share its artifact: its
/// package, target, mode, features and profile, and its dependencies'
/// identities. `--unit-graph` is unstable; RUSTC_BOOTSTRAP=1 lets this
/// test (and only it) ask stable cargo for the plan. `cargo tree -e
/// features` is no substitute: it merges a package's host and target
/// builds, and missed the second `syn` that made the launcher's build
/// recompile the entry point's proc macros and all above them.
fn planned_units(args: &[&str]) -> Units {
    let root = workspace::root();
    let sh = workspace::shell(&root).expect("a shell");
    let cmd = workspace::cargo(&sh)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(args)
        .args(["--locked", "-Z", "unstable-options", "--unit-graph"]);
    let graph: serde_json::Value =
        serde_json::from_str(&cmd.read().expect("cargo build --unit-graph")).expect("JSON");
    let units = graph["units"].as_array().expect("units");
    let mut memo: Vec<Option<u64>> = vec![None; units.len()];
    let ids: Vec<u64> = (0..units.len())
        .map(|i| identify(i, units, &mut memo))
        .collect();
    let mut out = std::collections::BTreeMap::new();
    for (i, unit) in units.iter().enumerate() {
        let pkg = unit["pkg_id"].as_str().expect("pkg_id");
        // `registry+…#name@version`, `path+file:///…/dir#name@version`, or
        // `path+file:///…/name#version` when the directory has the name.
        let (url, fragment) = pkg.rsplit_once('#').unwrap_or(("", pkg));
        let name = if fragment.contains('@') {
            fragment.to_string()
        } else {
            format!("{}@{fragment}", url.rsplit('/').next().unwrap_or(url))
        };
        let features: Vec<&str> = unit["features"]
            .as_array()
            .expect("features")
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        let label = format!("{name} [{}]", features.join(","));
        let unit = Unit {
            ours: pkg.starts_with("path+"),
            label,
            deps: dependencies(unit).map(|d| ids[d]).collect(),
        };
        out.insert(ids[i], unit);
    }
    out
}

/// Unit `i`'s identity (see [`planned_units`]) as a hash, memoised in
/// `identity`.
fn identify(i: usize, units: &[serde_json::Value], identity: &mut [Option<u64>]) -> u64 {
    use std::hash::{Hash, Hasher};
    if let Some(id) = identity[i] {
        return id;
    }
    let unit = &units[i];
    let mut deps: Vec<u64> = dependencies(unit)
        .map(|d| identify(d, units, identity))
        .collect();
    deps.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for part in ["pkg_id", "target", "mode", "features"] {
        unit[part].to_string().hash(&mut h);
    }
    // Cargo leaves the profile's name out of a unit's hash: a test build's
    // dependencies ("test") are the dev build's.
    let mut profile = unit["profile"].clone();
    if let Some(p) = profile.as_object_mut() {
        p.remove("name");
    }
    profile.to_string().hash(&mut h);
    deps.hash(&mut h);
    let id = h.finish();
    identity[i] = Some(id);
    id
}

/// The indices, in the unit graph, of `unit`'s dependencies.
fn dependencies(unit: &serde_json::Value) -> impl Iterator<Item = usize> + '_ {
    unit["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .map(|d| d["index"].as_u64().expect("index") as usize)
}

/// The launcher's modules form layers (`run`/`lifecycle` → `launch` → the
/// backends → `contract` → `plan` → `pin`, `record`, `pins`): no module of
/// `xtask/src/experiment/` imports a module that imports it back, directly
/// or through others. Every file in the directory is read, so a new module
/// is checked as soon as it exists; test modules are left out.
#[test]
fn experiment_modules_import_nothing_that_imports_them_back() {
    let dir = workspace::root().join("xtask/src/experiment");
    let files: Vec<(String, String)> = files_with_ext(&dir, "rs")
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(&dir).unwrap().display().to_string();
            (rel, std::fs::read_to_string(&f).unwrap())
        })
        .collect();
    let graph = layering::imports(&files);
    assert!(
        graph.len() > 10 && graph.values().any(|to| !to.is_empty()),
        "the import graph of {} looks empty: {graph:?}",
        dir.display()
    );
    let cycles = layering::cycles(&graph);
    assert!(
        cycles.is_empty(),
        "modules of xtask/src/experiment/ that import a module importing them back (move what both need into a module below both):\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_layering_check_finds_cycles_through_every_kind_of_path() {
    let check = |files: &[(&str, &str)]| {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect();
        layering::cycles(&layering::imports(&files))
    };
    let base = [
        ("mod.rs", "pub mod a; pub mod b; pub mod s;"),
        ("s/mod.rs", "pub mod x; pub mod y;\nfn f() { x::go() }"),
        ("s/y.rs", "//! y\nuse crate::experiment::b::B;"),
    ];
    let with = |a: &'static str, b: &'static str, x: &'static str| {
        let mut files = base.to_vec();
        files.extend([("a.rs", a), ("b.rs", b), ("s/x.rs", x)]);
        check(&files)
    };
    // Acyclic: a → b, a → s/x (a nested path), s → s/x, s/x → s/y → b.
    assert_eq!(
        with(
            "use crate::experiment::{b::{self, B}, s::x::X};",
            "// use crate::experiment::a;\nconst S: &str = \"crate::experiment::a::A\";",
            "use super::y::Y; fn f() -> crate::experiment::record::R { todo!() }",
        ),
        Vec::<String>::new()
    );
    // A `use` back, an inline path back, `super::` back, through a parent module.
    assert_eq!(
        with(
            "use crate::experiment::b;",
            "use crate::experiment::a::A;",
            ""
        ),
        ["a → b → a"]
    );
    assert_eq!(
        with(
            "use super::b::B;",
            "fn f() { crate::experiment::a::go() }",
            ""
        ),
        ["a → b → a"]
    );
    assert_eq!(
        with("", "use crate::experiment::s;", "use crate::experiment::b;"),
        ["b → s → s/x → b"]
    );
    // Test modules are left out.
    assert_eq!(
        with(
            "use crate::experiment::b;",
            "#[cfg(test)]\nmod tests {\n    use crate::experiment::a;\n}",
            ""
        ),
        Vec::<String>::new()
    );
}

/// The module graph of a directory of Rust files, from their paths.
mod layering {
    use std::collections::{BTreeMap, BTreeSet};

    /// A module by its file: `mod.rs` is the directory's own module.
    type Module = String;

    /// For each file (path relative to the directory, and text), the
    /// modules of the same directory it names in `use` declarations and in
    /// paths (`crate::experiment::…`, `super::…`, `self::…`, and a
    /// `mod.rs`'s own submodules), outside comments, strings and test modules.
    pub fn imports(files: &[(String, String)]) -> BTreeMap<Module, BTreeSet<Module>> {
        let modules: BTreeMap<Vec<String>, Module> = files
            .iter()
            .map(|(f, _)| (segments(f), module_name(f)))
            .collect();
        let child_decl = regex::Regex::new(r"\bmod\s+(\w+)\s*;").unwrap();
        let use_decl = regex::Regex::new(r"\buse\s+([^;]+);").unwrap();
        let alias = regex::Regex::new(r"\s+as\s+\w+").unwrap();
        let inline = regex::Regex::new(r"\b(\w+)((?:\s*::\s*\w+)+)").unwrap();
        let mut graph = BTreeMap::new();
        for (file, text) in files {
            let me = segments(file);
            let code = without_tests(&code_only(text));
            let children: BTreeSet<String> = child_decl
                .captures_iter(&code)
                .map(|c| c[1].to_string())
                .collect();
            let is_mod_rs = file == "mod.rs" || file.ends_with("/mod.rs");
            let mut paths = Vec::new();
            for c in use_decl.captures_iter(&code) {
                let tree = alias
                    .replace_all(&c[1], "")
                    .replace(char::is_whitespace, "");
                expand(&tree, &mut Vec::new(), &mut paths);
            }
            let rest = use_decl.replace_all(&code, "");
            for c in inline.captures_iter(&rest) {
                let mut path = vec![c[1].to_string()];
                path.extend(
                    c[2].split("::")
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                );
                paths.push(path);
            }
            let mut to = BTreeSet::new();
            for path in paths {
                let absolute = match path.first().map(String::as_str) {
                    Some("crate") if path.get(1).map(String::as_str) == Some("experiment") => {
                        path[2..].to_vec()
                    }
                    Some("super") | Some("self") => {
                        let mut at = me.clone();
                        let mut rest = &path[..];
                        while let Some((head, tail)) = rest.split_first() {
                            match head.as_str() {
                                "super" => {
                                    at.pop();
                                }
                                "self" => {}
                                _ => break,
                            }
                            rest = tail;
                        }
                        at.extend(rest.iter().cloned());
                        at
                    }
                    Some(child) if is_mod_rs && children.contains(child) => {
                        me.iter().chain(&path).cloned().collect()
                    }
                    _ => continue,
                };
                // The longest prefix that is a module of the directory.
                let target = (0..=absolute.len())
                    .rev()
                    .find_map(|n| modules.get(&absolute[..n]));
                if let Some(target) = target.filter(|t| **t != modules[&me]) {
                    to.insert(target.clone());
                }
            }
            graph.insert(modules[&me].clone(), to);
        }
        graph
    }

    /// Every cycle, once, as `a → b → a` starting from its smallest module.
    pub fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<String> {
        let mut found = BTreeSet::new();
        for start in graph.keys() {
            // Depth-first over modules greater than `start`, so each cycle
            // is reported from its smallest module only.
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            while let Some((at, path)) = stack.pop() {
                for next in graph.get(&at).into_iter().flatten() {
                    if next == start {
                        let mut cycle = path.clone();
                        cycle.push(start.clone());
                        found.insert(cycle.join(" → "));
                    } else if next > start && !path.contains(next) {
                        let mut longer = path.clone();
                        longer.push(next.clone());
                        stack.push((next.clone(), longer));
                    }
                }
            }
        }
        found.into_iter().collect()
    }

    /// `a/b.rs` → [a, b]; `a/mod.rs` → [a]; `mod.rs` → [].
    fn segments(file: &str) -> Vec<String> {
        let mut s: Vec<String> = file
            .trim_end_matches(".rs")
            .split('/')
            .map(str::to_string)
            .collect();
        if s.last().map(String::as_str) == Some("mod") {
            s.pop();
        }
        s
    }

    /// `a/b.rs` → `a/b`; `a/mod.rs` → `a`; `mod.rs` → `mod`.
    fn module_name(file: &str) -> Module {
        let s = segments(file);
        if s.is_empty() {
            "mod".into()
        } else {
            s.join("/")
        }
    }

    /// The paths a use tree (without whitespace) names: `a::{b, c::{self, D}}`
    /// → a::b, a::c, a::c::D.
    fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        let tree = tree.trim_start_matches("::");
        let (head, group) = match tree.find('{') {
            Some(open) => (
                &tree[..open],
                Some(&tree[open + 1..tree.rfind('}').unwrap_or(tree.len())]),
            ),
            None => (tree, None),
        };
        let depth = prefix.len();
        for seg in head.split("::").filter(|s| !s.is_empty()) {
            if seg != "*" {
                prefix.push(seg.to_string());
            }
        }
        match group {
            None => out.push(prefix.clone()),
            Some(group) => {
                for item in split_top(group) {
                    if item == "self" {
                        out.push(prefix.clone());
                    } else if !item.is_empty() {
                        expand(item, prefix, out);
                    }
                }
            }
        }
        prefix.truncate(depth);
    }

    /// `a, b::{c, d}, e` → [a, b::{c, d}, e].
    fn split_top(group: &str) -> Vec<&str> {
        let (mut out, mut depth, mut from) = (Vec::new(), 0, 0);
        for (i, ch) in group.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(&group[from..i]);
                    from = i + 1;
                }
                _ => {}
            }
        }
        out.push(&group[from..]);
        out
    }

    /// The text before the first `#[cfg(test)]` test module.
    fn without_tests(code: &str) -> String {
        let test_mod =
            regex::Regex::new(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{").unwrap();
        match test_mod.find(code) {
            Some(m) => code[..m.start()].to_string(),
            None => code.to_string(),
        }
    }

    /// `text` with comments, string and character literals blanked.
    fn code_only(text: &str) -> String {
        let raw_string = regex::Regex::new(r#"^b?r(#*)""#).unwrap();
        let b = text.as_bytes();
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        while i < b.len() {
            let rest = &text[i..];
            if rest.starts_with("//") {
                i += rest.find('\n').unwrap_or(rest.len());
            } else if rest.starts_with("/*") {
                let mut depth = 0;
                while i < b.len() {
                    if text[i..].starts_with("/*") {
                        depth += 1;
                        i += 2;
                    } else if text[i..].starts_with("*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            } else if let Some(raw) = (matches!(b[i], b'r' | b'b')
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')))
                .then(|| raw_string.captures(rest))
                .flatten()
            {
                let close = format!("\"{}", &raw[1]);
                let body = raw[0].len();
                i += body
                    + rest[body..]
                        .find(&close)
                        .map_or(rest.len() - body, |n| n + close.len());
                out.push_str("\"\"");
            } else if b[i] == b'"' {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            } else if b[i] == b'\'' {
                // A character literal ('x', '\n', '\''), or a lifetime ('a).
                if rest.starts_with("'\\") && rest.len() > 3 {
                    i += 3 + rest[3..].find('\'').map_or(0, |n| n + 1);
                    out.push_str("' '");
                } else if rest.chars().nth(2) == Some('\'') {
                    i += rest.chars().take(3).map(char::len_utf8).sum::<usize>();
                    out.push_str("' '");
                } else {
                    out.push('\'');
                    i += 1;
                }
            } else {
                let ch = rest.chars().next().unwrap();
                out.push(ch);
                i += ch.len_utf8();
            }
        }
        out
    }
}
