//! `cargo xtask bench image`: the three costs issue 4 names, each beside a peer
//! in the same run.
//!
//! - Build context of this repository (walk, `.dockerignore`, read, tar), beside
//!   GNU tar archiving the same file list into a pipe.
//! - A clean build vs an incremental rebuild after a one-line change in
//!   sca-train, by the prebuilt route (`image build --base`: host `cargo build
//!   --release -p sca-train`, then the engine's build onto a minimal base), in a
//!   throw-away export of `HEAD` with its own cargo target directory, so the
//!   working tree and `target/` are not touched. `--production` measures the
//!   production Dockerfile instead (see [`super::dockerfile`]).
//! - `image push` of an image the registry already has, and the registry
//!   round-trips inside it, beside `docker push` of the same tag.
//!
//! Services (engine, registry, AWS emulator) are started and stopped as for
//! `bench train`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use xshell::{cmd, Shell};

use super::{median, record, with_services};
use crate::image::build::{self, BuildOptions};
use crate::image::context::{human_bytes, BuildContext, ContextOptions};
use crate::image::{engine, push};
use crate::{flags, workspace};

/// The line the incremental build appends to sca-train.
const ONE_LINE_CHANGE: &str = "// bench image: a one-line change\n";

impl flags::BenchImage {
    pub fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        if self.production {
            let figures = with_services(&root, |_| {
                tokio::runtime::Runtime::new()?
                    .block_on(super::dockerfile::production_figures(&root))
            })?;
            let body = format!(
                "`cargo xtask bench image --production`\n\n{}",
                figures.table()
            );
            println!("{body}");
            if !self.no_record {
                record(&root, "image-production", &body)?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        let rounds = self.rounds as usize;
        let ctx = context_figures(&root, rounds)?;
        let (builds, pushes) = with_services(&root, |env| {
            let registry = env
                .iter()
                .find(|(k, _)| k == "SCA_TEST_REGISTRY")
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var("SCA_TEST_REGISTRY").ok())
                .context(
                    "no test registry: run `cargo xtask services up` and export what it prints",
                )?;
            tokio::runtime::Runtime::new()?.block_on(engine_figures(&root, &registry, rounds))
        })?;

        let body = format!(
            "`cargo xtask bench image --rounds {rounds}`\n\n{}\n{}\n{}",
            ctx.table(),
            builds.table(),
            pushes.table()
        );
        println!("{body}");
        if !self.no_record {
            record(&root, "image", &body)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

struct ContextFigures {
    files: usize,
    bytes: u64,
    ours: f64,
    tar: f64,
}

impl ContextFigures {
    fn table(&self) -> String {
        let mb = self.bytes as f64 / 1e6;
        format!(
            "Build context of this repository ({} files, {}), median of the rounds, page cache warm:\n\n\
             | | seconds | files/s | MB/s |\n|---|---|---|---|\n\
             | `image build` context (walk, `.dockerignore`, read, deterministic tar) | {:.4} | {:.0} | {:.1} |\n\
             | GNU tar of the same file list into a pipe | {:.4} | {:.0} | {:.1} |\n\n\
             Ratio (GNU tar time / ours): {:.2}x.\n",
            self.files,
            human_bytes(self.bytes),
            self.ours,
            self.files as f64 / self.ours,
            mb / self.ours,
            self.tar,
            self.files as f64 / self.tar,
            mb / self.tar,
            self.tar / self.ours
        )
    }
}

/// The workspace's build context, made `rounds` times, alternating with GNU tar.
fn context_figures(root: &Path, rounds: usize) -> Result<ContextFigures> {
    let (mut ours, mut tar) = (Vec::new(), Vec::new());
    let (mut files, mut bytes) = (0, 0);
    for _ in 0..rounds {
        let t = Instant::now();
        let mut ctx = BuildContext::from_dir(root, &ContextOptions::default())?;
        ctx.load()?;
        let archive = ctx.to_tar()?;
        ours.push(t.elapsed().as_secs_f64());
        let list = ctx.files();
        (files, bytes) = (list.len(), ctx.total_size());

        let t = Instant::now();
        let n = gnu_tar(root, &list)?;
        tar.push(t.elapsed().as_secs_f64());
        if n < bytes || archive.len() as u64 <= bytes {
            bail!("an archive is smaller than its files ({n} and {} bytes for {bytes}): the benchmark is broken", archive.len());
        }
    }
    Ok(ContextFigures {
        files,
        bytes,
        ours: median(&mut ours),
        tar: median(&mut tar),
    })
}

/// Bytes GNU tar writes for `files` (relative to `root`) into a pipe.
fn gnu_tar(root: &Path, files: &[&str]) -> Result<u64> {
    let mut child = Command::new("tar")
        .args(["--no-recursion", "-C"])
        .arg(root)
        .args(["-cf", "-", "-T", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running GNU tar (the peer)")?;
    let mut stdin = child.stdin.take().context("tar's stdin")?;
    let list = files.join("\n");
    let writer = std::thread::spawn(move || stdin.write_all(list.as_bytes()));
    let mut n = 0u64;
    let mut out = child.stdout.take().context("tar's stdout")?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = out.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    writer.join().expect("writer thread")?;
    if !child.wait()?.success() {
        bail!("GNU tar failed on the context's file list");
    }
    Ok(n)
}

struct Build {
    cargo: f64,
    engine: f64,
}

struct BuildFigures {
    clean: Build,
    incremental: Build,
}

impl BuildFigures {
    fn table(&self) -> String {
        let (c, i) = (&self.clean, &self.incremental);
        let (ct, it) = (c.cargo + c.engine, i.cargo + i.engine);
        format!(
            "Image build by the prebuilt route (`image build --base`) in a fresh export of `HEAD` with its own target directory; \
             incremental = after appending one comment line to `sca-train/src/lib.rs`:\n\n\
             | build | host `cargo build --release -p sca-train` | engine build | total |\n|---|---|---|---|\n\
             | clean (empty target dir, `--no-cache`) | {:.1} s | {:.2} s | {ct:.1} s |\n\
             | incremental (one-line change) | {:.1} s | {:.2} s | {it:.1} s |\n\n\
             Ratio incremental / clean: {:.3} (target at most 0.2). The production Dockerfile's \
             figures: `bench image --production`.\n",
            c.cargo,
            c.engine,
            i.cargo,
            i.engine,
            it / ct
        )
    }
}

struct PushFigures {
    command: f64,
    round_trips: f64,
    docker_cli: f64,
    first: f64,
}

impl PushFigures {
    fn table(&self) -> String {
        format!(
            "Push of an image the registry already has (the test registry on 127.0.0.1 with the emulator's ECR token), median of the rounds:\n\n\
             | | seconds |\n|---|---|\n\
             | `image push` (prebuilt route: includes cargo's up-to-date check and the context) | {:.3} |\n\
             | its registry round-trips (ECR token, repository check, manifest HEAD) | {:.3} |\n\
             | `docker push` of the same tag (CLI, logged in beforehand) | {:.3} |\n\
             | first push of the image, for scale | {:.2} |\n\n\
             Ratio (`docker push` / our round-trips): {:.1}x.\n",
            self.command,
            self.round_trips,
            self.docker_cli,
            self.first,
            self.docker_cli / self.round_trips
        )
    }
}

async fn engine_figures(
    root: &Path,
    registry: &str,
    rounds: usize,
) -> Result<(BuildFigures, PushFigures)> {
    let docker = engine::connect().await?;
    let scratch = tempfile::Builder::new()
        .prefix("bench-image-")
        .tempdir_in(root.join("target"))?;
    let src = scratch.path().join("src");
    export_head(root, &src)?;
    let target_dir = scratch.path().join("target");

    // The base needs the binary's shared libraries, so build once first: that
    // build is the clean one.
    let t = Instant::now();
    let binary = build::build_host_binary(&src, Some(&target_dir))?;
    let clean_cargo = t.elapsed().as_secs_f64();
    let base = ensure_base(&docker, &binary).await?;

    let mut options = BuildOptions::for_workspace()?;
    options.dir = src.clone();
    options.base = Some(base);
    options.host_target_dir = Some(target_dir);
    options.tag = Some("bench-clean".into());
    options.no_cache = true;
    let clean = Build {
        cargo: clean_cargo,
        engine: timed_engine_build(&docker, &options).await?,
    };

    append_one_line_change(&src)?;
    let t = Instant::now();
    build::build_host_binary(&src, options.host_target_dir.as_deref())?;
    let cargo = t.elapsed().as_secs_f64();
    options.tag = Some("bench-incremental".into());
    options.no_cache = false;
    let incremental = Build {
        cargo,
        engine: timed_engine_build(&docker, &options).await?,
    };

    let pushes = push_figures(&docker, options, registry, rounds).await?;
    Ok((BuildFigures { clean, incremental }, pushes))
}

/// Seconds of the engine build alone; `prepare` (context, and a cargo build
/// that is a no-op by now) runs first, untimed.
async fn timed_engine_build(docker: &Docker, options: &BuildOptions) -> Result<f64> {
    let prepared = build::prepare(docker, options).await?;
    let t = Instant::now();
    build::build(docker, &prepared, options).await?;
    Ok(t.elapsed().as_secs_f64())
}

async fn push_figures(
    docker: &Docker,
    build: BuildOptions,
    registry: &str,
    rounds: usize,
) -> Result<PushFigures> {
    let options = push::PushOptions {
        build,
        registry: Some(registry.to_string()),
        repository: "sca-bench".into(),
        aws: crate::aws::Session::default(),
        region: None,
        pull: false,
    };
    let t = Instant::now();
    let first = push::ensure_pushed(docker, &options).await?;
    let first_s = t.elapsed().as_secs_f64();
    let target = format!("{}:{}", first.repository, first.tag);

    let config = options.aws.config(None).await?;
    let ecr = aws_sdk_ecr::Client::new(&config);
    // The CLI peer logs in once, into a throw-away config directory.
    let docker_config = tempfile::tempdir()?;
    let login = push::ecr_login(&ecr).await?;
    let password = login.credentials(registry).password.unwrap_or_default();
    cli(
        docker_config.path(),
        &["login", "-u", &login.username, "--password-stdin", registry],
        Some(password.as_bytes()),
    )?;

    let (mut command, mut trips, mut peer) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let again = push::ensure_pushed(docker, &options).await?;
        command.push(t.elapsed().as_secs_f64());
        if again.pushed || again.digest != first.digest {
            bail!("the second push of {target} was not a no-op: the benchmark is broken");
        }

        let t = Instant::now();
        let login = push::ecr_login(&ecr).await?;
        push::ensure_repository(&ecr, &options.repository).await?;
        let digest = push::registry_digest(docker, &target, &login.credentials(registry)).await?;
        trips.push(t.elapsed().as_secs_f64());
        if digest.as_deref() != Some(first.digest.as_str()) {
            bail!(
                "the registry answered {digest:?} for {target}, pushed as {}",
                first.digest
            );
        }

        let t = Instant::now();
        cli(docker_config.path(), &["push", "--quiet", &target], None)?;
        peer.push(t.elapsed().as_secs_f64());
    }
    Ok(PushFigures {
        command: median(&mut command),
        round_trips: median(&mut trips),
        docker_cli: median(&mut peer),
        first: first_s,
    })
}

/// Runs the docker CLI (the engine `DOCKER_HOST` names) with its own config directory.
fn cli(config: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<()> {
    let sh = workspace::shell(&workspace::root())?;
    let mut cmd = cmd!(sh, "docker --config {config} {args...}")
        .quiet()
        .ignore_stdout()
        .ignore_status();
    if let Some(bytes) = stdin {
        cmd = cmd.stdin(bytes);
    }
    let out = cmd
        .output()
        .context("running the docker CLI (Debian package docker.io)")?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The incremental builds' change: one comment line appended to sca-train's lib.rs.
pub(super) fn append_one_line_change(src: &Path) -> Result<()> {
    let lib = src.join("sca-train/src/lib.rs");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&lib)
        .and_then(|mut f| f.write_all(ONE_LINE_CHANGE.as_bytes()))
        .with_context(|| format!("appending a line to {}", lib.display()))
}

/// `git archive HEAD` of `root`, unpacked into `dest`: the committed tree only.
pub(super) fn export_head(root: &Path, dest: &Path) -> Result<()> {
    let tar = crate::git::archive_head(root)?;
    tar::Archive::new(&tar[..])
        .unpack(dest)
        .with_context(|| format!("unpacking HEAD into {}", dest.display()))
}

/// A base image holding only `binary`'s shared libraries, imported into the
/// engine (nothing can be pulled here) under a name derived from its bytes.
async fn ensure_base(docker: &Docker, binary: &Path) -> Result<String> {
    let mut tar = tar::Builder::new(Vec::new());
    for lib in shared_libraries(binary)? {
        let data = std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_mtime(0);
        header.set_cksum();
        let path = lib.strip_prefix("/").unwrap_or(&lib);
        tar.append_data(&mut header, path, &data[..])?;
    }
    let bytes = tar.into_inner()?;
    let name = format!(
        "sca-bench-base:{}",
        &crate::image::context::sha256_hex(&bytes)[..12]
    );
    if docker.inspect_image(&name).await.is_ok() {
        return Ok(name);
    }
    let (repo, tag) = name.split_once(':').expect("name:tag");
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .build();
    let stream = docker.create_image(Some(options), Some(bollard::body_full(bytes.into())), None);
    engine::created(stream, &format!("importing the base image {name}")).await?;
    Ok(name)
}

/// The absolute paths `ldd` lists for `binary`, the dynamic loader included.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let sh = Shell::new()?;
    let out = cmd!(sh, "ldd {binary}")
        .quiet()
        .ignore_status()
        .ignore_stderr()
        .read()
        .context("running ldd")?;
    let mut libs: Vec<PathBuf> = out
        .lines()
        .filter_map(|l| {
            l.split("=>")
                .last()?
                .split_whitespace()
                .next()
                .map(PathBuf::from)
        })
        .filter(|p| p.is_absolute())
        .collect();
    libs.sort();
    libs.dedup();
    if libs.is_empty() {
        bail!("ldd listed no shared libraries for {}", binary.display());
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_libraries_lists_the_loader_and_libc_of_a_dynamic_binary() {
        // This test binary is dynamically linked against glibc.
        let libs = shared_libraries(&std::env::current_exe().unwrap()).unwrap();
        assert!(
            libs.iter().all(|p| p.is_absolute() && p.exists()),
            "{libs:?}"
        );
        let named = |prefix: &str| {
            libs.iter().any(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
        };
        assert!(named("libc.so"), "{libs:?}");
        assert!(named("ld-linux"), "the dynamic loader: {libs:?}");
        // A file that is no binary has none, and says so.
        let err = shared_libraries(Path::new("Cargo.toml")).unwrap_err();
        assert!(err.to_string().contains("no shared libraries"), "{err}");
    }
}
