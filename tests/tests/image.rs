//! End-to-end tests of `cargo xtask image ...` against the services that
//! `cargo xtask test` starts (Docker engine, registry, AWS emulator). Without
//! them these tests fail, telling how to start them; they never skip.

use std::time::Instant;

use sca_e2e::{
    docker, require_services, root, run_xtask as xtask, run_xtask_env as xtask_env,
    test_base_image, test_registry, test_registry_credentials, tree, unique,
};

/// Build a prebuilt-mode image (host-built sca-train on the test base) with a
/// unique tag; its local reference `sca-train:TAG`.
fn build_prebuilt(tag: &str) -> String {
    let base = test_base_image();
    let run = xtask(&["image", "build", "--base", base, "--tag", tag]).ok();
    let id = run.stdout.trim();
    assert!(
        id.starts_with("sha256:"),
        "image build prints the image id, got {:?}",
        run.stdout
    );
    format!("sca-train:{tag}")
}

#[test]
fn prebuilt_image_runs_sca_train_with_exec_form_entrypoint() {
    require_services();
    let image = build_prebuilt(&unique("e2e-help"));
    let run = docker(&["run", "--rm", &image, "--help"]).ok();
    assert!(
        run.stdout.contains("sca-train") || run.stderr.contains("sca-train"),
        "{run:?}"
    );
    let entrypoint = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}}",
        &image,
    ])
    .ok();
    assert_eq!(entrypoint.stdout.trim(), r#"["/usr/local/bin/sca-train"]"#);
    let version = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"org.opencontainers.image.version\"}}",
        &image,
    ])
    .ok();
    assert_eq!(format!("sca-train:{}", version.stdout.trim()), image);
}

/// `services up` reuses an engine it did not start only where that engine
/// logs in to the test registry: a CI job container's host engine, in
/// another network namespace, cannot reach this loopback.
#[test]
fn an_engine_reaching_the_test_registry_is_told_apart() {
    require_services();
    let host = std::env::var("DOCKER_HOST").unwrap();
    let (registry, password) = (test_registry(), sca_e2e::ecr_password());
    assert!(xtask::services::docker_logs_in(&host, &registry, &password));
    assert!(!xtask::services::docker_logs_in(&host, &registry, "wrong"));
    // Nothing listens there: as the test registry is, seen from another
    // network namespace.
    assert!(!xtask::services::docker_logs_in(
        &host,
        "127.0.0.1:9",
        &password
    ));
}

#[test]
fn push_to_registry_then_pull_by_digest_and_second_push_is_a_no_op() {
    let registry = test_registry();
    let base = test_base_image();
    let repository = unique("e2e-push");
    let tag = unique("t");
    let args = [
        "image",
        "push",
        "--base",
        base,
        "--tag",
        &tag,
        "--registry",
        &registry,
        "--repository",
        &repository,
        "--output",
        "json",
    ];
    let password = test_registry_credentials();
    let env = [
        ("SCA_REGISTRY_USERNAME", "AWS"),
        ("SCA_REGISTRY_PASSWORD", password.as_str()),
    ];
    // Not an ECR host: without its own credentials the push is anonymous,
    // and the registry (basic auth) refuses it; the ECR token is never sent.
    let anonymous = xtask(&args);
    assert!(!anonymous.success(), "{anonymous:?}");
    let first = xtask_env(&args, &env).ok();
    let pushed: serde_json::Value = serde_json::from_str(first.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {:?}", first.stdout));
    let digest = pushed["digest"].as_str().unwrap().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{pushed}"
    );
    assert_eq!(
        pushed["reference"],
        format!("{registry}/{repository}@{digest}")
    );
    assert_eq!(pushed["pushed"], true);

    // The registry serves exactly that digest: pull it with the ECR token.
    let config = sca_e2e::registry_login();
    let cfg = config.path().to_str().unwrap();
    let reference = format!("{registry}/{repository}@{digest}");
    let pull = docker(&["--config", cfg, "pull", &reference]).ok();
    assert!(pull.stdout.contains(&digest), "{pull:?}");
    let repo_digests = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &reference,
    ])
    .ok();
    assert!(repo_digests.stdout.contains(&reference), "{repo_digests:?}");

    // Pushing the same image again does nothing and gives the same digest.
    let start = Instant::now();
    let second = xtask_env(&args, &env).ok();
    let again: serde_json::Value = serde_json::from_str(second.stdout.trim()).unwrap();
    eprintln!("second push of an unchanged image: {:.2?}", start.elapsed());
    assert_eq!(again["pushed"], false, "{second:?}");
    assert_eq!(again["digest"], digest.as_str());
    assert!(
        second.stderr.contains("already in the registry"),
        "{second:?}"
    );

    // Text output: just the reference.
    let text = xtask_env(&args[..args.len() - 2], &env).ok();
    assert_eq!(text.stdout.trim(), reference);
}

/// The tree of the context-listing comparisons: nested dirs, dotfiles, a
/// symlink, names with pattern characters.
const TREE: &[(&str, &str)] = &[
    ("README.md", "r"),
    ("NOTES.md", "n"),
    ("docs/keep.txt", "k"),
    ("docs/drop.txt", "d"),
    ("docs/sub/deep.md", "m"),
    ("src/main.rs", "fn main() {}"),
    ("src/gen/x.tmp", "t"),
    ("src/gen/y.rs", "y"),
    ("logs/a.log", "a"),
    ("important/b.log", "b"),
    ("abs", "abs"),
    ("dot", "dot"),
    ("abc", "abc"),
    ("bcd", "bcd"),
    ("*star", "star"),
    ("dir/a/x", "x"),
    ("dir/b/y", "y"),
    ("dir/c/d/x", "x"),
    (".hidden/f", "f"),
    ("a/b", "b"),
    ("a/c", "c"),
];

/// `.dockerignore` files whose result the Docker CLI + engine must agree on.
const DOCKERIGNORES: &[&str] = &[
    "",
    "*.md\n!README.md\n",
    "docs\n!docs/keep.txt\n",
    "docs\n!*/keep.txt\n",
    "**/*.log\n!important/**\n",
    "dir/*/x\n",
    "*\n!Dockerfile\n!src\nsrc/**/*.tmp\n",
    "# a comment\n  # not a comment\n/abs\n./dot\n",
    "a?c\n[b-c]*\n\\*star\n",
    ".*\n!.dockerignore\n",
    "**\n!src/main.rs\n!Dockerfile\n!.dockerignore\n",
    "*\n!a/c\na\n!Dockerfile\n",
    "dir/**/x\nlink\n",
];

#[test]
fn context_list_matches_what_the_docker_engine_receives() {
    require_services();
    let base = test_base_image();
    let mut mismatches = Vec::new();
    for ignore in DOCKERIGNORES {
        let dockerfile = format!("FROM {base}\nCOPY . /ctx\nRUN find /ctx ! -type d | sort\n");
        let mut files: Vec<(&str, &str)> = TREE.to_vec();
        files.push(("Dockerfile", &dockerfile));
        if !ignore.is_empty() {
            files.push((".dockerignore", ignore));
        }
        let dir = tree(&files);
        std::os::unix::fs::symlink("src", dir.path().join("link")).unwrap();
        let path = dir.path().to_str().unwrap();

        let ours = xtask(&["image", "context", "--list", "--dir", path]).ok();
        let mut ours: Vec<String> = ours.stdout.lines().map(String::from).collect();

        // The reference: the Docker CLI builds its own context (moby's
        // patternmatcher) and the engine lists what it received.
        let build = std::process::Command::new("docker")
            .args(["build", "--no-cache", "--rm", path])
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .expect("running docker build");
        let stdout = String::from_utf8_lossy(&build.stdout);
        assert!(
            build.status.success(),
            "docker build failed for {ignore:?}: {stdout}\n{}",
            String::from_utf8_lossy(&build.stderr)
        );
        let mut engine: Vec<String> = stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix("/ctx/"))
            .map(String::from)
            .collect();
        // The engine's classic builder drops .dockerignore and the Dockerfile
        // when the patterns exclude them; both are always sent, though.
        for always in [".dockerignore", "Dockerfile"] {
            if ours.iter().any(|p| p == always) && !engine.iter().any(|p| p == always) {
                engine.push(always.to_string());
            }
        }
        ours.sort();
        engine.sort();
        if ours != engine {
            mismatches.push(format!(
                ".dockerignore {ignore:?}:\n  xtask:  {ours:?}\n  engine: {engine:?}"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "image context --list disagrees with the Docker engine:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn context_reports_credential_files_and_exits_non_zero() {
    // What `image build` refuses, a reviewer sees from `image context`
    // (issue 17, defect 9: these names and this content passed the guard).
    let pem = format!("-----BEGIN {}-----\nMIIE\n", "OPENSSH PRIVATE KEY");
    let dir = tree(&[
        ("Dockerfile", "FROM scratch\n"),
        ("src/main.rs", "fn main() {}"),
        (".netrc", "machine example.com login a password b"),
        ("home/.docker/config.json", "{\"auths\": {}}"),
        ("deploy/notes.txt", &pem),
    ]);
    let run = xtask(&[
        "image",
        "context",
        "--list",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    // The list is still printed, the findings go to stderr.
    assert!(run.stdout.lines().any(|l| l == "src/main.rs"), "{run:?}");
    for (path, why) in [
        (".netrc", "a .netrc file"),
        ("home/.docker/config.json", "a Docker client config"),
        ("deploy/notes.txt", "contains a PEM private key"),
    ] {
        assert!(
            run.stderr.contains(&format!("{path}: {why}")),
            "{path} not reported: {run:?}"
        );
    }
    assert!(!run.stderr.contains("src/main.rs"), "{run:?}");
    // Excluded in .dockerignore, they are no longer in the context.
    std::fs::write(dir.path().join(".dockerignore"), ".netrc\nhome\ndeploy\n").unwrap();
    xtask(&["image", "context", "--dir", dir.path().to_str().unwrap()]).ok();
}

/// A context larger than `image build` takes is listed but not read (its
/// tar, its credential scan): a forgotten data directory of tens of GiB
/// was read whole into memory by a command that lists files.
#[test]
fn a_context_past_the_size_limit_is_listed_not_read() {
    let big = "x".repeat(4096);
    let dir = tree(&[("Dockerfile", "FROM scratch\n"), ("data/tiles.bin", &big)]);
    let path = dir.path().to_str().unwrap();
    let tar = dir.path().join("ctx.tar");
    let limit = ["--max-context-size", "1KiB"];
    let run = xtask(&[&["image", "context", "--list", "--dir", path][..], &limit].concat());
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.lines().any(|l| l == "data/tiles.bin"), "{run:?}");
    assert!(run.stderr.contains("not read"), "{run:?}");
    let tar_arg = tar.to_str().unwrap();
    let run = xtask(
        &[
            &["image", "context", "--dir", path, "--tar", tar_arg][..],
            &limit,
        ]
        .concat(),
    );
    assert!(
        !run.success() && run.stderr.contains("no tar written"),
        "{run:?}"
    );
    assert!(!tar.exists());
    xtask(&["image", "context", "--dir", path, "--tar", tar_arg]).ok();
    assert!(tar.is_file());
}

/// A credential passed as a build argument would sit in the image's
/// history: the build is refused before the engine sees it, and the
/// message names the argument, not its value.
#[test]
fn a_build_argument_holding_a_secret_is_refused() {
    require_services();
    let dir = tree(&[("Dockerfile", "FROM scratch\nARG AWS_SECRET_ACCESS_KEY\n")]);
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let tag = unique("secret-arg").to_lowercase();
    let run = xtask(&[
        "image",
        "build",
        "--dir",
        dir.path().to_str().unwrap(),
        "--tag",
        &tag,
        "--build-arg",
        &format!("AWS_SECRET_ACCESS_KEY={secret}"),
    ]);
    assert!(!run.success(), "{run:?}");
    assert!(
        run.stderr.contains("--build-arg AWS_SECRET_ACCESS_KEY")
            && run.stderr.contains("image's history"),
        "{run:?}"
    );
    assert!(!run.stderr.contains(secret) && !run.stdout.contains(secret));
    assert!(
        !docker(&["image", "inspect", &format!("sca-train:{tag}")]).success(),
        "an image was built"
    );
}

#[test]
fn context_list_of_the_workspace_leaves_out_build_outputs_and_git() {
    let run = xtask(&["image", "context", "--list"]).ok();
    let files: Vec<&str> = run.stdout.lines().collect();
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "Dockerfile",
        ".dockerignore",
        "sca-train/Cargo.toml",
        "sca-train/src/main.rs",
        "vendor/dfdx/Cargo.toml",
    ] {
        assert!(files.contains(&needed), "{needed} missing from {files:?}");
    }
    // Cargo needs every workspace member's manifest, even to build one.
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    assert!(members.len() >= 6, "{members:?}");
    for member in members {
        let needed = format!("{}/Cargo.toml", member.as_str().unwrap());
        assert!(
            files.contains(&needed.as_str()),
            "{needed} missing from {files:?}"
        );
    }
    for f in &files {
        assert!(
            !f.starts_with("target/")
                && !f.starts_with(".git/")
                && !f.starts_with("xtask/src/")
                && !f.starts_with("xtask/entry/src/"),
            "{f} must not be sent"
        );
    }
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted, "the list is sorted");
    assert!(root().join("Dockerfile").is_file());
}

#[test]
fn credential_guard_refuses_and_names_each_file() {
    require_services();
    let base = test_base_image();
    let key = format!("{}{}", "AKIA", "Z7ZZZZZZZZZZZZZZ");
    let dockerfile = format!("FROM {base}\nCOPY . /ctx\n");
    let config = format!("[aws]\nkey = \"{key}\"\n");
    let dir = tree(&[
        ("Dockerfile", &dockerfile),
        (".aws/credentials", "[default]"),
        ("certs/server.pem", "-----"),
        ("src/config.toml", &config),
        ("src/ok.rs", ""),
    ]);
    let path = dir.path().to_str().unwrap();
    let tag = unique("e2e-secrets");
    let run = xtask(&["image", "build", "--dir", path, "--tag", &tag]);
    assert!(!run.success(), "{run:?}");
    for file in [".aws/credentials", "certs/server.pem", "src/config.toml"] {
        assert!(
            run.stderr.contains(file),
            "{file} not named in {}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("src/ok.rs"), "{}", run.stderr);
    assert!(
        !run.stderr.contains(&key),
        "the guard must not print the key itself"
    );
    xtask(&[
        "image",
        "build",
        "--dir",
        path,
        "--tag",
        &tag,
        "--allow-secrets",
    ])
    .ok();
}

#[test]
fn dockerfile_syntax_error_is_reported() {
    require_services();
    let dockerfile = format!("FROM {}\nFORM nothing\n", test_base_image());
    let dir = tree(&[("Dockerfile", &dockerfile)]);
    let run = xtask(&[
        "image",
        "build",
        "--dir",
        dir.path().to_str().unwrap(),
        "--tag",
        &unique("e2e-syntax"),
    ]);
    assert!(!run.success(), "{run:?}");
    assert!(
        run.stderr.to_lowercase().contains("unknown instruction"),
        "{}",
        run.stderr
    );
}

#[test]
fn failing_run_step_is_reported_with_the_step() {
    require_services();
    let dockerfile = format!(
        "FROM {}\nRUN echo before\nRUN echo failing-now && exit 3\n",
        test_base_image()
    );
    let dir = tree(&[("Dockerfile", &dockerfile)]);
    let run = xtask(&[
        "image",
        "build",
        "--dir",
        dir.path().to_str().unwrap(),
        "--tag",
        &unique("e2e-fail"),
    ]);
    assert!(!run.success(), "{run:?}");
    assert!(
        run.stderr.contains("failed at Step 3/")
            && run.stderr.contains("RUN echo failing-now && exit 3"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("non-zero code: 3"), "{}", run.stderr);
    assert!(
        run.stderr.contains("failing-now"),
        "the step's output is shown: {}",
        run.stderr
    );
}

/// The production Dockerfile goes through the engine's classic builder (no
/// BuildKit-only syntax) and takes all its bases from build arguments: with the
/// busybox test base as each, it stops, named, where the builder stage copies
/// the Rust toolchain out of `RUST_IMAGE`. Built to the end (on stand-ins for
/// the CUDA and Rust images) by `cargo xtask bench image --production`, which
/// takes too long for the test suite.
#[test]
fn production_dockerfile_parses_and_takes_its_bases_from_build_args() {
    require_services();
    let base = test_base_image();
    let mut args = vec![
        "image".to_string(),
        "build".into(),
        "--tag".into(),
        unique("e2e-prod"),
    ];
    for arg in ["RUST_IMAGE", "CUDA_DEVEL_IMAGE", "CUDA_RUNTIME_IMAGE"] {
        args.push("--build-arg".into());
        args.push(format!("{arg}={base}"));
    }
    let run = xtask(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!run.success(), "{run:?}");
    assert!(
        run.stderr.contains("failed at Step")
            && run.stderr.contains("COPY --from=rust /usr/local/rustup"),
        "{}",
        run.stderr
    );
}

#[test]
fn unreachable_engine_is_reported() {
    let dir = tree(&[("Dockerfile", "FROM scratch\n")]);
    let run = xtask_env(
        &[
            "image",
            "build",
            "--dir",
            dir.path().to_str().unwrap(),
            "--tag",
            "x",
        ],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    assert!(!run.success());
    assert!(
        run.stderr
            .contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("cargo xtask services up"),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_base_image_is_reported() {
    require_services();
    let run = xtask(&[
        "image",
        "build",
        "--base",
        "sca-e2e-missing:nope",
        "--tag",
        "x",
    ]);
    assert!(!run.success());
    assert!(
        run.stderr
            .contains("\"sca-e2e-missing:nope\" is not in the Docker engine"),
        "{}",
        run.stderr
    );
}

#[test]
fn oversized_context_is_refused_naming_the_biggest_directory() {
    require_services();
    let blob = "x".repeat(64 * 1024);
    let dir = tree(&[
        ("Dockerfile", "FROM scratch\n"),
        ("data/big/blob", &blob),
        ("src/a", "a"),
    ]);
    let run = xtask(&[
        "image",
        "build",
        "--dir",
        dir.path().to_str().unwrap(),
        "--tag",
        "x",
        "--max-context-size",
        "16KiB",
    ]);
    assert!(!run.success());
    assert!(
        run.stderr.contains("data/ (64.0 KiB)") && run.stderr.contains("--max-context-size"),
        "{}",
        run.stderr
    );
}
