//! `image build`: the context (a directory, or a prebuilt `sca-train` on a
//! base image), its tag and OCI labels from git, and the build through the
//! Docker engine's API with progress and failing-step errors.
//!
//! Tags: `<commit12>` for a clean tree. A dirty tree is built, not refused,
//! and tagged `<commit12>-dirty-<ctx12>`, `ctx12` being the first 12 hex
//! digits of the SHA-256 of the (deterministic) context tar: the same dirty
//! tree gives the same tag, another one a new tag, so that an immutable
//! registry never gets two images under one name. Prebuilt-mode images add
//! `-prebuilt-<base12>` (the base image id), so they never take the tag of
//! the production image, and a build with another Dockerfile or any
//! `--build-arg` adds `-args-<recipe12>` (the hash of those), so that the
//! image found under a tag is the one the build would make. `--tag` replaces
//! all of this for `image build|push` (tests; a tree with no commit needs
//! it); a launch refuses it.
//!
//! Labels: `org.opencontainers.image.revision` (full commit),
//! `org.opencontainers.image.created` (commit time, not now: rebuilding the
//! same commit gives the same config), `org.opencontainers.image.source`
//! (`origin` without credentials), `org.opencontainers.image.version` (tag),
//! [`DIRTY_LABEL`] (built with uncommitted changes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;

use super::context::{self, BuildContext, ContextOptions};
use super::progress::Bar;
use super::{engine, secrets};
use crate::git::{self, Revision};
use crate::{flags, workspace};

/// The label saying whether the image was built from a tree with
/// uncommitted changes (`true`/`false`).
pub const DIRTY_LABEL: &str = "org.sca.dirty";

/// Where the prebuilt binary goes in the image, and the image's entrypoint.
pub const BINARY_IN_IMAGE: &str = "/usr/local/bin/sca-train";

/// Everything `ensure_built` needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The context directory (the workspace root by default).
    pub dir: PathBuf,
    /// The Dockerfile's path in the context.
    pub dockerfile: String,
    /// Prebuilt mode: copy a host-built `sca-train` into this base image.
    pub base: Option<String>,
    /// A tag instead of the git-derived one.
    pub tag: Option<String>,
    pub build_args: Vec<(String, String)>,
    pub allow_secrets: bool,
    pub size_limit: u64,
    pub no_cache: bool,
    /// Local repository name (`image_name` of `[workspace.metadata.sca]`).
    pub image_name: String,
    /// Prebuilt mode: cargo's target directory for the host build (cargo's
    /// default when unset; the image benchmark builds in a fresh one).
    pub host_target_dir: Option<PathBuf>,
}

impl BuildOptions {
    /// Defaults for the workspace: its root as context, its `image_name`.
    pub fn for_workspace() -> Result<Self> {
        let defaults = workspace::defaults()?;
        Ok(BuildOptions {
            dir: workspace::root(),
            dockerfile: "Dockerfile".into(),
            base: None,
            tag: None,
            build_args: Vec::new(),
            allow_secrets: false,
            size_limit: context::DEFAULT_SIZE_LIMIT,
            no_cache: false,
            image_name: defaults.image_name.unwrap_or_else(|| "sca-train".into()),
            host_target_dir: None,
        })
    }

    pub fn from_flags(f: &flags::ImageBuildArgs) -> Result<Self> {
        let mut o = Self::for_workspace()?;
        if let Some(dir) = &f.dir {
            o.dir = dir
                .canonicalize()
                .with_context(|| format!("context directory {}", dir.display()))?;
        }
        // As the context names it (`./Dockerfile` is `Dockerfile`).
        o.dockerfile = super::dockerignore::clean(&f.dockerfile);
        o.base = f.base.clone();
        o.tag = f.tag.clone();
        o.allow_secrets = f.allow_secrets;
        o.no_cache = f.no_cache;
        o.size_limit = context::parse_size(&f.max_context_size)
            .map_err(|e| anyhow!("--max-context-size: {e}"))?;
        for arg in &f.build_args {
            let (k, v) = arg
                .split_once('=')
                .with_context(|| format!("--build-arg {arg:?}: expected KEY=VALUE"))?;
            o.build_args.push((k.to_string(), v.to_string()));
        }
        Ok(o)
    }
}

/// A context ready to send, with the image's identity.
#[derive(Debug, Clone)]
#[allow(dead_code)] // `context_digest` and `revision` are for the launcher
pub struct Prepared {
    pub tar: Vec<u8>,
    pub dockerfile: String,
    /// SHA-256 of `tar`.
    pub context_digest: String,
    pub tag: String,
    pub labels: HashMap<String, String>,
    pub revision: Option<Revision>,
    /// `image_name:tag`.
    pub reference: String,
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// `sha256:...` image id.
    pub id: String,
    /// `image_name:tag` in the local engine.
    pub reference: String,
    pub tag: String,
}

/// Build the image (the engine's cache makes an unchanged rebuild quick).
pub async fn ensure_built(docker: &Docker, options: &BuildOptions) -> Result<BuiltImage> {
    let prepared = prepare(docker, options).await?;
    build(docker, &prepared, options).await
}

/// The context tar, tag and labels, after the credential guard.
pub async fn prepare(docker: &Docker, options: &BuildOptions) -> Result<Prepared> {
    // Read before the context is (a host build takes minutes), and again
    // after: the image is labelled with the commit its content came from.
    let revision = git::revision(&options.dir)?;
    let (ctx, dockerfile, base_id) = match &options.base {
        Some(base) => {
            let base_id = base_image_id(docker, base).await?;
            let binary = build_host_binary(&options.dir, options.host_target_dir.as_deref())?;
            let bytes =
                std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
            // By id: the base the tag names, should `base` move meanwhile.
            let dockerfile = prebuilt_dockerfile(&base_id);
            let ctx = BuildContext::in_memory(vec![
                ("Dockerfile".into(), dockerfile.into_bytes(), 0o644),
                ("sca-train".into(), bytes, 0o755),
            ]);
            (ctx, "Dockerfile".to_string(), Some(base_id))
        }
        None => {
            let copts = ContextOptions {
                dockerfile: options.dockerfile.clone(),
            };
            let mut ctx = BuildContext::from_dir(&options.dir, &copts)?;
            commit_only(
                &mut ctx,
                &options.dir,
                revision.as_ref(),
                &options.dockerfile,
            )?;
            if !ctx.entries.iter().any(|e| e.path == options.dockerfile) {
                bail!(
                    "no {} in the build context {}",
                    options.dockerfile,
                    options.dir.display()
                );
            }
            ctx.check_size(options.size_limit)?;
            ctx.load()?;
            (ctx, options.dockerfile.clone(), None)
        }
    };
    if !options.allow_secrets {
        let args = secrets::suspicious_build_args(&options.build_args);
        if !args.is_empty() {
            let list: Vec<String> = args.iter().map(|f| format!("  {f}")).collect();
            bail!(
                "refusing to build: build arguments hold credential material:\n{}\n\
                 Give the build no credentials (the job gets its own from its role); pass --allow-secrets only if they are not secrets.",
                list.join("\n")
            );
        }
        let findings = secrets::scan(&ctx);
        if !findings.is_empty() {
            let list: Vec<String> = findings.iter().map(|f| format!("  {f}")).collect();
            bail!(
                "refusing to build: the build context holds credential material:\n{}\n\
                 Exclude these files in .dockerignore (or remove them); pass --allow-secrets only if they are not secrets.",
                list.join("\n")
            );
        }
    }
    let tar = ctx.to_tar()?;
    let context_digest = context::sha256_hex(&tar);
    let now = git::revision(&options.dir)?;
    let commit = |r: &Option<Revision>| r.as_ref().map(|r| (r.commit.clone(), r.dirty));
    if commit(&now) != commit(&revision) {
        let show = |r: &Option<Revision>| match r {
            Some(r) if r.dirty => format!("{} with uncommitted changes", r.short()),
            Some(r) => r.short().to_string(),
            None => "no commit".into(),
        };
        bail!(
            "the working tree changed while the image's context was made ({} then, {} now): its label would name a commit its content may not be; build again once the tree is settled",
            show(&revision),
            show(&now)
        );
    }
    let tag = match &options.tag {
        Some(tag) => tag.clone(),
        None => {
            let rev = revision.as_ref().with_context(|| {
                format!(
                    "{} has no git commit to tag the image with: commit first, or pass --tag",
                    options.dir.display()
                )
            })?;
            derive_tag(
                rev,
                &context_digest,
                base_id.as_deref(),
                &recipe(&dockerfile, &options.build_args),
                &engine::architecture(docker).await?,
            )
        }
    };
    validate_tag(&tag)?;
    let labels = oci_labels(revision.as_ref(), &tag);
    let reference = format!("{}:{tag}", options.image_name);
    Ok(Prepared {
        tar,
        dockerfile,
        context_digest,
        tag,
        labels,
        revision,
        reference,
    })
}

/// [`keep_committed`] for a clean revision, saying what it left out; the
/// Dockerfile (its path in the context) must be the commit's.
pub(crate) fn commit_only(
    ctx: &mut BuildContext,
    dir: &Path,
    rev: Option<&Revision>,
    dockerfile: &str,
) -> Result<()> {
    let Some(rev) = rev.filter(|r| !r.dirty) else {
        return Ok(());
    };
    let left = keep_committed(ctx, dir)?;
    let dockerfile = super::dockerignore::clean(dockerfile);
    if left.contains(&dockerfile) {
        bail!(
            "{dockerfile} is not in commit {} (git ignores it): an image of a clean commit is built by the commit's own Dockerfile; commit it, or build from a dirty tree, whose tag names its context",
            rev.short()
        );
    }
    if !left.is_empty() {
        let shown: Vec<&str> = left.iter().take(10).map(String::as_str).collect();
        eprintln!(
            "left out of the build context {} file(s) commit {} does not hold (git ignores them; .dockerignore does not): {}{}",
            left.len(),
            rev.short(),
            shown.join(", "),
            if left.len() > shown.len() { ", ..." } else { "" }
        );
    }
    Ok(())
}

/// A clean commit's context holds that commit only: the files git ignores
/// and `.dockerignore` does not (a local config, editor and OS litter, a
/// data file) are left out, and returned. Its image is tagged and labelled
/// as the commit, and the registry's tag, immutable, hands it to every later
/// launch of that commit. (A dirty tree's tag carries the context's digest.)
/// The repository itself, where `.dockerignore` sends it, stays.
fn keep_committed(ctx: &mut BuildContext, dir: &Path) -> Result<Vec<String>> {
    let tracked: std::collections::HashSet<String> = git::tracked_files(dir)?
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let keep = |e: &context::Entry| {
        matches!(e.kind, context::Kind::Dir)
            || tracked.contains(&e.path)
            || e.path == ".git"
            || e.path.starts_with(".git/")
    };
    let (mut kept, left): (Vec<_>, Vec<_>) = std::mem::take(&mut ctx.entries)
        .into_iter()
        .partition(|e| keep(e));
    // A hard link to a file left out: its first kept name becomes the file,
    // the names after it link to that one (else the tar links to nothing).
    let mut rehomed: std::collections::HashMap<String, String> = Default::default();
    for e in &mut kept {
        let context::Kind::HardLink { target } = &e.kind else {
            continue;
        };
        if let Some(first) = rehomed.get(target) {
            e.kind = context::Kind::HardLink {
                target: first.clone(),
            };
        } else if let Some(dropped) = left.iter().find(|d| &d.path == target) {
            rehomed.insert(target.clone(), e.path.clone());
            e.kind = dropped.kind.clone();
            e.source = dropped.source.clone();
            e.mode = dropped.mode;
        }
    }
    // A directory with no file kept under it goes too (`.idea/`): git holds
    // no empty directory.
    let is_dir = |e: &context::Entry| matches!(e.kind, context::Kind::Dir);
    let files: Vec<&str> = kept
        .iter()
        .filter(|e| !is_dir(e))
        .map(|e| e.path.as_str())
        .collect();
    let holds = |d: &str| {
        files
            .iter()
            .any(|p| p.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
    };
    let empty: std::collections::HashSet<String> = kept
        .iter()
        .filter(|e| is_dir(e) && !holds(&e.path))
        .map(|e| e.path.clone())
        .collect();
    kept.retain(|e| !empty.contains(&e.path));
    ctx.entries = kept;
    Ok(left.into_iter().map(|e| e.path).collect())
}

/// The first 12 hex digits of the SHA-256 of a build's recipe beyond its
/// context: the Dockerfile's path and the build arguments (sorted), or
/// `None` for the default recipe (`Dockerfile`, no arguments).
pub fn recipe(dockerfile: &str, build_args: &[(String, String)]) -> Option<String> {
    if dockerfile == "Dockerfile" && build_args.is_empty() {
        return None;
    }
    let mut args: Vec<&(String, String)> = build_args.iter().collect();
    args.sort();
    let mut text = format!("{dockerfile}\0");
    for (k, v) in args {
        text.push_str(&format!("{k}={v}\0"));
    }
    Some(context::sha256_hex(text.as_bytes())[..12].to_string())
}

/// `<commit12>[-dirty-<ctx12>][-prebuilt-<base12>][-args-<recipe12>][-<arch>]`:
/// everything that makes two builds of one commit differ, so that an image
/// already in the registry under the tag is the one this build would make
/// (`--build-arg CUDA_COMPUTE_CAP=90` is not the default build's image, nor
/// is an arm64 engine's build, which SageMaker's x86 instances cannot run,
/// the amd64 one's). `arch` is the engine's, amd64 adding nothing.
pub fn derive_tag(
    rev: &Revision,
    context_digest: &str,
    base_id: Option<&str>,
    recipe: &Option<String>,
    arch: &str,
) -> String {
    let mut tag = rev.short().to_string();
    if rev.dirty {
        tag.push_str("-dirty-");
        tag.push_str(&context_digest[..12]);
    }
    if let Some(id) = base_id {
        let hex = id.trim_start_matches("sha256:");
        tag.push_str("-prebuilt-");
        tag.push_str(&hex[..12.min(hex.len())]);
    }
    if let Some(recipe) = recipe {
        tag.push_str("-args-");
        tag.push_str(recipe);
    }
    // (An engine that does not say is taken at its word: nothing.)
    let arch: String = arch.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    if !arch.is_empty() && arch != "amd64" {
        tag.push('-');
        tag.push_str(&arch);
    }
    tag
}

/// Docker's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        bail!("invalid image tag {tag:?}: letters, digits, `_`, `.`, `-`, at most 128, not starting with `.` or `-`");
    }
    Ok(())
}

pub fn oci_labels(rev: Option<&Revision>, tag: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    labels.insert("org.opencontainers.image.version".into(), tag.to_string());
    if let Some(rev) = rev {
        labels.insert(
            "org.opencontainers.image.revision".into(),
            rev.commit.clone(),
        );
        labels.insert(
            "org.opencontainers.image.created".into(),
            rev.commit_time.clone(),
        );
        // Whether the tree had uncommitted changes: the tag says so only
        // when derived (`--tag` replaces it), and `--image` is checked by it.
        labels.insert(DIRTY_LABEL.into(), rev.dirty.to_string());
        if let Some(source) = &rev.source {
            labels.insert("org.opencontainers.image.source".into(), source.clone());
        }
    }
    labels
}

/// The Dockerfile of prebuilt mode.
pub fn prebuilt_dockerfile(base: &str) -> String {
    format!("FROM {base}\nCOPY sca-train {BINARY_IN_IMAGE}\nENTRYPOINT [\"{BINARY_IN_IMAGE}\"]\n")
}

/// The id of `base`, which must already be in the engine.
async fn base_image_id(docker: &Docker, base: &str) -> Result<String> {
    match docker.inspect_image(base).await {
        Ok(image) => image.id.with_context(|| format!("the engine returned no id for {base}")),
        Err(e) if engine::is_not_found(&e) => bail!(
            "base image {base:?} is not in the Docker engine at {}: --base never pulls; pull, build or `docker import` it first",
            engine::engine_host()
        ),
        Err(e) => Err(e).with_context(|| format!("inspecting base image {base}")),
    }
}

/// `cargo build --release -p sca-train` in the workspace `root` (into
/// `target_dir` when given); the binary's path.
pub fn build_host_binary(root: &Path, target_dir: Option<&Path>) -> Result<PathBuf> {
    build_sca_train_release(root, target_dir, &["--bin", "sca-train"], &[], "sca-train")
}

/// `cargo build --release --locked -p sca-train ARGS...` (e.g. `--bin
/// sca-train`, `--bin sca-train`, `--features cuda`) in the workspace
/// `root` with `env` added, into `target_dir` when given; the path of the
/// executable `name`, as cargo reports it.
pub fn build_sca_train_release(
    root: &Path,
    target_dir: Option<&Path>,
    args: &[&str],
    env: &[(String, String)],
    name: &str,
) -> Result<PathBuf> {
    let shown = format!(
        "cargo build --release --locked -p sca-train {}",
        args.join(" ")
    );
    eprintln!("building on the host: {shown} in {}", root.display());
    let sh = workspace::shell(root)?;
    let mut cmd = workspace::cargo(&sh);
    if let Some(dir) = target_dir {
        cmd = cmd.env("CARGO_TARGET_DIR", dir);
    }
    // Messages on stdout; cargo's diagnostics go to our stderr.
    let stdout = cmd
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["build", "--release", "--locked", "-p", "sca-train"])
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .read()
        .with_context(|| format!("{shown} failed (see above)"))?;
    executable_from_messages(stdout.as_bytes(), name)
        .with_context(|| format!("cargo build reported no {name} executable"))
}

pub(crate) fn executable_from_messages(stdout: &[u8], target: &str) -> Option<PathBuf> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|m| {
            (m["reason"] == "compiler-artifact" && m["target"]["name"] == target)
                .then(|| m["executable"].as_str().map(PathBuf::from))
                .flatten()
        })
}

/// Send the prepared context and follow the build.
pub async fn build(
    docker: &Docker,
    prepared: &Prepared,
    options: &BuildOptions,
) -> Result<BuiltImage> {
    let build_args: HashMap<String, String> = options.build_args.iter().cloned().collect();
    let build_options = BuildImageOptionsBuilder::default()
        .dockerfile(&prepared.dockerfile)
        .t(&prepared.reference)
        .rm(true)
        .forcerm(true)
        .nocache(options.no_cache)
        .labels(&prepared.labels)
        .buildargs(&build_args)
        .build();
    let total = prepared.tar.len() as u64;
    let upload = Bar::bytes("context", total);
    let body = upload_stream(Bytes::from(prepared.tar.clone()), upload.clone());
    let mut stream = docker.build_image(build_options, None, Some(bollard::body_stream(body)));

    let mut step: Option<String> = None;
    let mut image_id: Option<String> = None;
    let mut built_short: Option<String> = None;
    let mut log_tail: Vec<String> = Vec::new();
    let mut lines = StreamLines::default();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(e) => {
                upload.abandon();
                log_tail.extend(lines.finish());
                return Err(build_error(e, step.as_deref(), &log_tail));
            }
        };
        if let Some(text) = &info.stream {
            for line in lines.push(text) {
                if line.starts_with("Step ") {
                    step = Some(line.to_string());
                }
                if let Some(short) = successfully_built(&line) {
                    built_short = Some(short.to_string());
                }
                if log_tail.len() == 20 {
                    log_tail.remove(0);
                }
                upload.println(&line);
                log_tail.push(line);
            }
        }
        if let Some(detail) = &info.error_detail {
            upload.abandon();
            // A failing step's last output may lack its newline: keep it.
            log_tail.extend(lines.finish());
            let msg = detail.message.clone().unwrap_or_default();
            return Err(build_error(
                bollard::errors::Error::DockerStreamError { error: msg },
                step.as_deref(),
                &log_tail,
            ));
        }
        if let Some(status) = &info.status {
            upload.println(status);
        }
        if let Some(aux) = &info.aux {
            if let Some(id) = &aux.id {
                image_id = Some(id.clone());
            }
        }
    }
    if let Some(line) = lines.finish() {
        upload.println(&line);
    }
    // The id the stream names, never the tag's: another build may have
    // moved the tag since.
    let id = match (image_id, built_short) {
        (Some(id), _) => id,
        (None, Some(short)) => docker
            .inspect_image(&short)
            .await
            .with_context(|| format!("the build finished but image {short} is not in the engine"))?
            .id
            .filter(|id| id.strip_prefix("sha256:").is_some_and(|h| h.starts_with(&short)))
            .with_context(|| format!("the engine returned no image id for {short}"))?,
        (None, None) => bail!(
            "the build of {} finished without naming the image it built (no aux ID, no \"Successfully built\" line): not taking the tag's image for it",
            prepared.reference
        ),
    };
    eprintln!("built {} ({id})", prepared.reference);
    Ok(BuiltImage {
        id,
        reference: prepared.reference.clone(),
        tag: prepared.tag.clone(),
    })
}

/// The short id of the classic builder's last line, `Successfully built
/// 0123456789ab`.
fn successfully_built(line: &str) -> Option<&str> {
    let short = line.strip_prefix("Successfully built ")?.trim();
    (short.len() >= 12 && short.bytes().all(|b| b.is_ascii_hexdigit())).then_some(short)
}

/// Whole lines out of the build stream's `stream` fragments. The classic
/// builder sends a RUN step's output in arbitrary pieces (a compiler's
/// "Compiling" and the crate name can arrive apart) and wraps stderr pieces in
/// colour codes (`ESC[91m` ... `ESC[0m`), which are dropped here.
#[derive(Default)]
struct StreamLines {
    partial: String,
}

impl StreamLines {
    /// The lines `fragment` completes, without colour codes or empty lines.
    fn push(&mut self, fragment: &str) -> Vec<String> {
        let mut rest = fragment;
        while let Some(start) = rest.find("\x1b[") {
            self.partial.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find(|c: char| !(c.is_ascii_digit() || c == ';')) {
                Some(end) if after[end..].starts_with('m') => rest = &after[end + 1..],
                _ => {
                    self.partial.push('\x1b');
                    rest = &rest[start + 1..];
                }
            }
        }
        self.partial.push_str(rest);
        let Some(last) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let done: String = self.partial.drain(..=last).collect();
        done.lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// What is left after the stream ended without a final newline.
    fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.partial);
        let rest = rest.trim_end();
        (!rest.is_empty()).then(|| rest.to_string())
    }
}

/// The tar in 256 KiB chunks, advancing the upload bar as the engine reads them.
fn upload_stream(tar: Bytes, bar: Bar) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
    const CHUNK: usize = 256 << 10;
    let total = tar.len();
    let chunks: Vec<Bytes> = (0..total)
        .step_by(CHUNK)
        .map(|start| tar.slice(start..(start + CHUNK).min(total)))
        .collect();
    let mut sent = 0u64;
    futures_util::stream::iter(chunks).map(move |chunk| {
        sent += chunk.len() as u64;
        bar.set_position(sent);
        if sent == total as u64 {
            bar.finish(&format!("sent {}", context::human_bytes(sent)));
        }
        chunk
    })
}

fn build_error(
    e: bollard::errors::Error,
    step: Option<&str>,
    log_tail: &[String],
) -> anyhow::Error {
    use bollard::errors::Error as E;
    match e {
        E::DockerStreamError { error } => match step {
            Some(step) => {
                let tail: Vec<&String> = log_tail
                    .iter()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                anyhow!(
                    "image build failed at {step}\n  {}\nlast build output:\n{}",
                    error.trim(),
                    tail.iter()
                        .map(|l| format!("  | {l}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            }
            None => anyhow!("image build failed: {}", error.trim()),
        },
        E::DockerResponseServerError {
            status_code,
            message,
        } => {
            anyhow!(
                "the Docker engine rejected the build (HTTP {status_code}): {}",
                message.trim()
            )
        }
        other => anyhow!("image build failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(dirty: bool) -> Revision {
        Revision {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            commit_time: "2024-01-02T03:04:05Z".into(),
            dirty,
            source: None,
        }
    }

    /// A clean commit's context holds only what the commit does: files git
    /// ignores and .dockerignore does not are left out, by name; a dirty
    /// tree's context is left as it is (its tag carries its digest).
    #[test]
    fn a_clean_commits_context_leaves_out_what_git_ignores() {
        let repo = crate::git::testing::Repo::new();
        repo.commit("Dockerfile", "FROM scratch\n");
        repo.commit(".gitignore", "local.toml\n.idea/\n");
        repo.commit("src/main.rs", "fn main() {}\n");
        let dir = repo.path();
        repo.write("local.toml", "secret_sauce = 1\n");
        repo.write("src/local.toml", "x\n");
        repo.write(".idea/workspace.xml", "<x/>\n");
        assert!(!git::revision(dir).unwrap().unwrap().dirty);
        let mut ctx = BuildContext::from_dir(dir, &ContextOptions::default()).unwrap();
        let left = keep_committed(&mut ctx, dir).unwrap();
        assert_eq!(
            left,
            [".idea/workspace.xml", "local.toml", "src/local.toml"]
        );
        let paths: Vec<&str> = ctx.entries.iter().map(|e| e.path.as_str()).collect();
        assert!(
            !paths
                .iter()
                .any(|p| p.contains("local.toml") || p.starts_with(".idea")),
            "{paths:?}"
        );
        for p in ["Dockerfile", "src", "src/main.rs", ".gitignore"] {
            assert!(paths.contains(&p), "{p} in {paths:?}");
        }
        // A tracked hard link to an ignored file: the tracked name holds the
        // bytes, and the tar has no link to a member it lacks.
        std::fs::remove_file(dir.join("src/main.rs")).unwrap();
        std::fs::hard_link(dir.join("local.toml"), dir.join("src/main.rs")).unwrap();
        repo.git(&["add", "src/main.rs"]);
        repo.git(&["commit", "-q", "-m", "linked"]);
        assert!(!git::revision(dir).unwrap().unwrap().dirty);
        let mut ctx = BuildContext::from_dir(dir, &ContextOptions::default()).unwrap();
        keep_committed(&mut ctx, dir).unwrap();
        ctx.load().unwrap();
        let tar = ctx.to_tar().unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let main = archive
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path().unwrap().to_str() == Some("src/main.rs"))
            .expect("src/main.rs in the tar");
        assert!(
            main.header().entry_type().is_file(),
            "{:?}",
            main.header().entry_type()
        );
    }

    /// A Dockerfile git ignores is not the commit's: said so, not "no
    /// Dockerfile in the build context" for a file that is there.
    #[test]
    fn a_clean_commits_build_by_an_ignored_dockerfile_says_so() {
        let repo = crate::git::testing::Repo::new();
        repo.commit("Dockerfile", "FROM scratch\n");
        repo.commit(".gitignore", "Dockerfile.local\n");
        let dir = repo.path();
        repo.write("Dockerfile.local", "FROM scratch\n");
        let rev = git::revision(dir).unwrap();
        let opts = ContextOptions {
            dockerfile: "Dockerfile.local".into(),
        };
        let mut ctx = BuildContext::from_dir(dir, &opts).unwrap();
        let e = commit_only(&mut ctx, dir, rev.as_ref(), "./Dockerfile.local")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Dockerfile.local is not in commit") && e.contains("git ignores it"),
            "{e}"
        );
        let mut ctx = BuildContext::from_dir(dir, &ContextOptions::default()).unwrap();
        commit_only(&mut ctx, dir, rev.as_ref(), "Dockerfile").unwrap();
    }

    #[test]
    fn stream_fragments_become_whole_lines_without_colour_codes() {
        let mut lines = StreamLines::default();
        assert!(lines.push("\x1b[91m   Compiling\x1b[0m").is_empty());
        assert_eq!(
            lines.push("\x1b[91m serde v1.0\n\x1b[0m"),
            ["   Compiling serde v1.0"]
        );
        assert_eq!(
            lines.push("Step 2/3 : RUN x\n\n ---> Running in 1\nhalf"),
            ["Step 2/3 : RUN x", " ---> Running in 1"]
        );
        assert_eq!(lines.push(" \x1b[1;2mline\n"), ["half line"]);
        assert_eq!(lines.push("a \x1b[K b"), Vec::<String>::new());
        assert_eq!(lines.finish().as_deref(), Some("a \x1b[K b"));
        assert_eq!(lines.finish(), None);
    }

    #[test]
    fn tags() {
        let digest = "aa".repeat(32);
        let default = recipe("Dockerfile", &[]);
        assert_eq!(
            derive_tag(&rev(false), &digest, None, &default, "amd64"),
            "0123456789ab"
        );
        assert_eq!(
            derive_tag(&rev(true), &digest, None, &default, "amd64"),
            "0123456789ab-dirty-aaaaaaaaaaaa"
        );
        assert_eq!(
            derive_tag(
                &rev(false),
                &digest,
                Some("sha256:ffffffffffff00"),
                &default,
                "amd64"
            ),
            "0123456789ab-prebuilt-ffffffffffff"
        );
        // Another engine architecture is another image.
        assert_eq!(
            derive_tag(&rev(false), &digest, None, &default, "arm64"),
            "0123456789ab-arm64"
        );
        assert_eq!(
            derive_tag(&rev(false), &digest, None, &default, ""),
            "0123456789ab"
        );
        // Another Dockerfile or build argument is another image, whatever
        // the order the arguments came in.
        let arg = |k: &str, v: &str| (k.to_string(), v.to_string());
        let cap90 = recipe(
            "Dockerfile",
            &[arg("CUDA_COMPUTE_CAP", "90"), arg("X", "1")],
        );
        let tag = derive_tag(&rev(false), &digest, None, &cap90, "amd64");
        assert!(
            tag.starts_with("0123456789ab-args-") && tag.len() == 12 + 6 + 12,
            "{tag}"
        );
        assert_eq!(
            cap90,
            recipe(
                "Dockerfile",
                &[arg("X", "1"), arg("CUDA_COMPUTE_CAP", "90")]
            )
        );
        assert_ne!(
            cap90,
            recipe(
                "Dockerfile",
                &[arg("CUDA_COMPUTE_CAP", "80"), arg("X", "1")]
            )
        );
        assert_ne!(recipe("gpu.Dockerfile", &[]), None);
        assert_ne!(recipe("gpu.Dockerfile", &[]), recipe("cpu.Dockerfile", &[]));
        for bad in ["", "-x", ".x", "a:b", "a/b", &"x".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
        validate_tag("e2e-123_x.y").unwrap();
    }

    #[test]
    fn labels_use_commit_time() {
        let labels = oci_labels(Some(&rev(false)), "t");
        assert_eq!(
            labels["org.opencontainers.image.created"],
            "2024-01-02T03:04:05Z"
        );
        assert_eq!(
            labels["org.opencontainers.image.revision"],
            rev(false).commit
        );
        assert!(!labels.contains_key("org.opencontainers.image.source"));
    }

    #[test]
    fn the_builders_last_line_names_the_image() {
        assert_eq!(
            successfully_built("Successfully built 03b64af46fb5"),
            Some("03b64af46fb5")
        );
        for other in [
            "Successfully tagged sca-train:x",
            "Successfully built ",
            "Successfully built 03b64af4",
            "Step 1/7 : FROM x",
        ] {
            assert_eq!(successfully_built(other), None, "{other}");
        }
    }

    #[test]
    fn prebuilt_dockerfile_uses_exec_form_entrypoint() {
        let d = prebuilt_dockerfile("base:1");
        assert!(d.starts_with("FROM base:1\n"));
        assert!(d.contains("ENTRYPOINT [\"/usr/local/bin/sca-train\"]"));
    }
}
