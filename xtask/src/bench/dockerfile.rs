//! `cargo xtask bench image --production`: the production Dockerfile (CUDA
//! build, `--features cuda`) built to the end, clean and after a one-line
//! change in sca-train, in a throw-away export of `HEAD`.
//!
//! None of its three base images can be pulled here, so each build argument
//! names a stand-in assembled on this machine and imported into the engine:
//! - `RUST_IMAGE`: this machine's Rust toolchain in rustup's layout
//!   (`/usr/local/rustup`, `/usr/local/cargo/bin`), as the `rust` images have it;
//! - `CUDA_DEVEL_IMAGE` and `CUDA_RUNTIME_IMAGE`: one Debian bookworm root
//!   filesystem (debootstrap: gcc, g++, libc6-dev, ca-certificates) with the CUDA
//!   13.0 toolkit of `cargo xtask cuda sdk` at `/usr/local/cuda` and the
//!   environment nvidia/cuda's devel images set (`PATH`, `LIBRARY_PATH` on the
//!   driver stub), plus this machine's CA bundle, since crates.io is reached
//!   through the sandbox's TLS proxy.
//!
//! Everything else is the real thing: the Dockerfile, the engine's classic
//! builder, crates.io, nvcc compiling dfdx's kernels. The built image must
//! then start its binary (`--help`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bollard::Docker;
use xshell::{cmd, Shell};

use super::image::{append_one_line_change, export_head};
use crate::image::build::{self, BuildOptions};
use crate::image::context::sha256_hex;
use crate::image::engine;
use crate::{cuda, services, workspace};

/// The Debian release and packages of the CUDA stand-in's root filesystem.
const SUITE: &str = "bookworm";
const PACKAGES: &str = "gcc,g++,libc6-dev,ca-certificates";
const MIRROR: &str = "http://deb.debian.org/debian";

/// Where the nvidia/cuda devel images put the toolkit, and what they set.
const CUDA_ENV: &[&str] = &[
    "ENV PATH=/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LIBRARY_PATH=/usr/local/cuda/lib64/stubs",
    "ENV LD_LIBRARY_PATH=/usr/local/cuda/lib64",
];

pub struct ProductionFigures {
    clean: f64,
    incremental: f64,
    image_mb: f64,
}

impl ProductionFigures {
    pub fn table(&self) -> String {
        format!(
            "The production Dockerfile (`--features cuda`, multi-stage) built to the end through the engine's \
             classic builder, in a fresh export of `HEAD`, on stand-ins for its base images (a Debian root \
             filesystem with the CUDA 13.0 toolkit from NVIDIA's PyPI wheels for `nvidia/cuda` devel and \
             runtime, this machine's Rust toolchain for `rust`; see xtask/src/bench/dockerfile.rs). \
             Crates come from crates.io inside the build; nvcc compiles dfdx's kernels to PTX for sm_{} \
             (the Dockerfile's default `CUDA_COMPUTE_CAP`).\n\n\
             | build | seconds |\n|---|---|\n\
             | clean (`--no-cache`) | {:.1} |\n\
             | incremental (one comment line appended to `sca-train/src/lib.rs`) | {:.1} |\n\n\
             Ratio incremental / clean: {:.3} (target at most 0.2). Image size {:.0} MB (on the stand-in runtime base).\n",
            crate::cuda::DEFAULT_COMPUTE_CAP,
            self.clean,
            self.incremental,
            self.incremental / self.clean,
            self.image_mb
        )
    }
}

pub async fn production_figures(root: &Path) -> Result<ProductionFigures> {
    let docker = engine::connect().await?;
    let images = root.join("target/bench-images");
    std::fs::create_dir_all(&images)?;
    let sdk = cuda::ensure(root, &cuda::default_dir(root))?;
    let cuda_image = ensure_cuda_image(&docker, &images, &sdk).await?;
    let rust_image = ensure_rust_image(&docker, &images).await?;

    let scratch = tempfile::Builder::new()
        .prefix("bench-dockerfile-")
        .tempdir_in(root.join("target"))?;
    let src = scratch.path().join("src");
    export_head(root, &src)?;

    let mut options = BuildOptions::for_workspace()?;
    options.dir = src.clone();
    options.build_args = vec![
        ("RUST_IMAGE".into(), rust_image),
        ("CUDA_DEVEL_IMAGE".into(), cuda_image.clone()),
        ("CUDA_RUNTIME_IMAGE".into(), cuda_image),
    ];
    options.tag = Some("bench-production-clean".into());
    options.no_cache = true;
    let clean = timed_build(&docker, &options).await?;

    append_one_line_change(&src)?;
    options.tag = Some("bench-production-incremental".into());
    options.no_cache = false;
    let incremental = timed_build(&docker, &options).await?;
    let reference = format!("{}:bench-production-incremental", options.image_name);
    check_starts(&reference)?;
    let size = docker
        .inspect_image(&reference)
        .await
        .with_context(|| format!("inspecting {reference}"))?
        .size
        .unwrap_or(0);
    Ok(ProductionFigures {
        clean,
        incremental,
        image_mb: size as f64 / 1e6,
    })
}

/// Seconds of the whole `image build` (context included).
async fn timed_build(docker: &Docker, options: &BuildOptions) -> Result<f64> {
    let t = Instant::now();
    let prepared = build::prepare(docker, options).await?;
    build::build(docker, &prepared, options).await?;
    Ok(t.elapsed().as_secs_f64())
}

/// `docker run --rm IMAGE --help` prints sca-train's usage.
fn check_starts(reference: &str) -> Result<()> {
    let sh = workspace::shell(&workspace::root())?;
    let out = cmd!(sh, "docker run --rm {reference} --help")
        .quiet()
        .ignore_status()
        .output()
        .context("running the docker CLI (Debian package docker.io)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("train") {
        bail!(
            "{reference} did not start sca-train: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The CUDA devel/runtime stand-in, imported unless the engine has it.
async fn ensure_cuda_image(docker: &Docker, images: &Path, sdk: &cuda::Sdk) -> Result<String> {
    let ca = std::fs::read("/etc/ssl/certs/ca-certificates.crt")
        .context("reading this machine's CA bundle /etc/ssl/certs/ca-certificates.crt")?;
    let key = format!(
        "{SUITE} {PACKAGES} {} {}",
        cuda::REQUIREMENTS,
        sha256_hex(&ca)
    );
    let name = format!("sca-bench-cuda:{}", &sha256_hex(key.as_bytes())[..12]);
    if docker.inspect_image(&name).await.is_ok() {
        return Ok(name);
    }
    let rootfs = debootstrap(images)?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(images)?;
    let stage = staging.path();
    hardlink_copy(&rootfs, stage)?;
    std::fs::create_dir_all(stage.join("usr/local"))?;
    hardlink_copy(&sdk.root, &stage.join("usr/local/cuda"))?;
    // Unlink before writing: the staged file is a hard link into the cached rootfs.
    let bundle = stage.join("etc/ssl/certs/ca-certificates.crt");
    let _ = std::fs::remove_file(&bundle);
    std::fs::write(&bundle, &ca)?;
    import(stage, &name, CUDA_ENV)?;
    Ok(name)
}

/// This machine's toolchain in the `rust` images' layout, imported unless the engine has it.
async fn ensure_rust_image(docker: &Docker, images: &Path) -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let (version, sysroot) = toolchain(&rustc)?;
    let name = format!("sca-bench-rust:{}", &sha256_hex(version.as_bytes())[..12]);
    if docker.inspect_image(&name).await.is_ok() {
        return Ok(name);
    }
    let toolchain = sysroot
        .file_name()
        .context("the sysroot has no name")?
        .to_string_lossy()
        .into_owned();
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(images)?;
    let stage = staging.path();
    let dest = stage.join("usr/local/rustup/toolchains").join(&toolchain);
    std::fs::create_dir_all(&dest)?;
    for part in ["bin", "lib", "libexec"] {
        if sysroot.join(part).exists() {
            hardlink_copy(&sysroot.join(part), &dest.join(part))?;
        }
    }
    let _ = std::fs::remove_dir_all(dest.join("lib/rustlib/src"));
    let bin = stage.join("usr/local/cargo/bin");
    std::fs::create_dir_all(&bin)?;
    for tool in ["cargo", "rustc"] {
        std::os::unix::fs::symlink(
            format!("../../rustup/toolchains/{toolchain}/bin/{tool}"),
            bin.join(tool),
        )?;
    }
    import(stage, &name, &[])?;
    Ok(name)
}

/// `rustc -vV` (the toolchain's identity) and its sysroot.
fn toolchain(rustc: &str) -> Result<(String, PathBuf)> {
    let sh = Shell::new()?;
    let version = cmd!(sh, "{rustc} -vV").quiet().read()?;
    let sysroot = PathBuf::from(cmd!(sh, "{rustc} --print sysroot").quiet().read()?);
    Ok((version, sysroot))
}

/// Debian's root filesystem for the CUDA stand-in, made once by debootstrap
/// (installed first if missing) and kept in `images`.
fn debootstrap(images: &Path) -> Result<PathBuf> {
    let dir = images.join(SUITE);
    let stamp = images.join(format!("{SUITE}.packages"));
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == PACKAGES) && dir.is_dir() {
        return Ok(dir);
    }
    services::install_packages(&[("debootstrap", "debootstrap")])?;
    let work = images.join(format!(".{SUITE}-work"));
    let _ = std::fs::remove_dir_all(&work);
    eprintln!("debootstrap {SUITE} ({PACKAGES}) into {}", work.display());
    let sh = Shell::new()?;
    let include = format!("--include={PACKAGES}");
    cmd!(
        sh,
        "debootstrap --variant=minbase {include} {SUITE} {work} {MIRROR}"
    )
    .quiet()
    .ignore_stdout()
    .run()
    .with_context(|| {
        format!("debootstrap {SUITE} failed: is {MIRROR} reachable, and is this root?")
    })?;
    let _ = std::fs::remove_dir_all(work.join("var/cache/apt/archives"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&work, &dir)?;
    std::fs::write(&stamp, PACKAGES)?;
    Ok(dir)
}

/// `cp -al`: the same tree of hard links (symlinks kept), cheap on one filesystem.
fn hardlink_copy(from: &Path, to: &Path) -> Result<()> {
    let mut src = from.as_os_str().to_owned();
    src.push("/.");
    std::fs::create_dir_all(to)?;
    let sh = Shell::new()?;
    cmd!(sh, "cp -al {src} {to}").quiet().run()?;
    Ok(())
}

/// `tar -C dir -c . | docker import [--change ...] - name`, on std::process:
/// tar's stdout is docker's stdin, a pipe between two processes that xshell
/// does not make.
fn import(dir: &Path, name: &str, changes: &[&str]) -> Result<()> {
    eprintln!("importing {name} into the engine");
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["-c", "--numeric-owner", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("running tar")?;
    let mut docker = Command::new("docker");
    docker.arg("import");
    for c in changes {
        docker.args(["--change", c]);
    }
    let out = docker
        .args(["-", name])
        .stdin(tar.stdout.take().expect("piped"))
        .stdout(Stdio::null())
        .output()
        .context("running docker import")?;
    let tar_ok = tar.wait()?.success();
    if !out.status.success() || !tar_ok {
        bail!(
            "importing {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn the_toolchain_is_read_from_rustc() {
        let (version, sysroot) = toolchain("rustc").unwrap();
        assert!(version.starts_with("rustc "), "{version}");
        assert!(version.contains("\nhost: "), "{version}");
        assert!(
            sysroot.join("lib/rustlib").is_dir(),
            "{}",
            sysroot.display()
        );
        assert!(toolchain("/nonexistent/rustc").is_err());
    }

    #[test]
    fn hardlink_copy_links_the_tree_and_keeps_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("from");
        std::fs::create_dir_all(from.join("lib")).unwrap();
        std::fs::write(from.join("lib/a.so"), b"a").unwrap();
        std::os::unix::fs::symlink("a.so", from.join("lib/b.so")).unwrap();
        let to = tmp.path().join("to/nested");
        hardlink_copy(&from, &to).unwrap();
        let (a, copy) = (from.join("lib/a.so"), to.join("lib/a.so"));
        assert_eq!(std::fs::read(&copy).unwrap(), b"a");
        assert_eq!(
            std::fs::metadata(&a).unwrap().ino(),
            std::fs::metadata(&copy).unwrap().ino(),
            "a hard link, not a copy"
        );
        assert_eq!(
            std::fs::read_link(to.join("lib/b.so")).unwrap(),
            Path::new("a.so")
        );
        assert!(hardlink_copy(&tmp.path().join("missing"), &to).is_err());
    }
}
