//! `cargo xtask cuda sdk|build`: build `sca-train --features cuda` on a
//! machine with no GPU and no CUDA installation.
//!
//! `sdk` assembles a CUDA 13.0 build toolkit from NVIDIA's PyPI wheels (exact
//! versions, sha256-pinned): nvcc with NVVM and CCCL, the runtime, cuBLAS and
//! NVRTC headers and libraries, with the unversioned link names cudarc asks the
//! linker for. Two things no wheel carries are made here:
//! - `lib/stubs/libcuda.so` (soname `libcuda.so.1`): a link stub defining
//!   every driver-API function of cudarc's bindings. The driver on the GPU
//!   machine supplies the real library at run time.
//! - `shims/nvidia-smi`: dfdx's build script asks `nvidia-smi` for the GPU's
//!   compute capability; the stand-in answers `$CUDA_COMPUTE_CAP` (default 80:
//!   see [`DEFAULT_COMPUTE_CAP`]), which is also what dfdx compiles its PTX for.
//!
//! 13.0 is the newest toolkit the target driver (580) accepts PTX from; the
//! same layout (`bin`, `include`, `lib64`, `lib64/stubs`) is what the
//! production Dockerfile's `nvidia/cuda` devel base provides.
//!
//! `build` runs `sdk`, then `cargo build --release -p sca-train --features
//! cuda` against it into `target/cuda` (its intermediate files shared with
//! the CPU release build: [`build_dir`]) and prints the binary's path:
//! the binary carried to a GPU machine, whose CUDA libraries it loads through
//! the dynamic loader (`LD_LIBRARY_PATH`).
//!
//! `kit` runs `build` and packs what a GPU machine needs to run
//! `sca-train/bench/gpu.sh` into `target/gpu-kit` (see [`kit`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{flags, fsx, workspace};

/// The wheels, as a pip requirements file with hashes (`--require-hashes`);
/// also what an image made from the toolkit is keyed on.
pub const REQUIREMENTS: &str = "\
nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-nvrtc==13.0.88 --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvidia-cublas==13.0.2.14 --hash=sha256:0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c
";

/// Libraries cudarc links (`-l`) that the wheels ship only with a versioned name.
const LINK_NAMES: &[&str] = &["cublas", "cublasLt", "nvrtc", "cudart"];

/// The CUDA major version the wheels carry, the suffix of their sonames.
const CUDA_MAJOR: &str = "13";

/// Compute capability the build targets unless `CUDA_COMPUTE_CAP` says
/// otherwise: the oldest generation dfdx's kernels compile for with CUDA 13
/// (Ampere, 8.0). The driver JIT-compiles that PTX for every newer GPU, so one
/// build runs on every GPU validation accepts for `device = "cuda"` (A10G, L4,
/// L40S, A100, H100, ...). The Dockerfile's default is the same (a tidy test).
pub const DEFAULT_COMPUTE_CAP: u32 = sca_spec::MIN_CUDA_COMPUTE_CAPABILITY;

/// An assembled toolkit.
#[derive(Debug, Clone)]
pub struct Sdk {
    /// The CUDA root: `bin/nvcc`, `include/cuda.h`, `lib64/`, `lib64/stubs/libcuda.so`.
    pub root: PathBuf,
    /// Holds the `nvidia-smi` stand-in.
    pub shims: PathBuf,
}

impl Sdk {
    /// The environment `cargo build --features cuda` needs, `PATH` included.
    pub fn env(&self) -> Vec<(String, String)> {
        let path = std::env::var("PATH").unwrap_or_default();
        let lib = self.root.join("lib64");
        vec![
            ("CUDA_ROOT".into(), self.root.display().to_string()),
            (
                "PATH".into(),
                format!(
                    "{}:{}:{path}",
                    self.root.join("bin").display(),
                    self.shims.display()
                ),
            ),
            (
                "LIBRARY_PATH".into(),
                format!("{}:{}", lib.display(), lib.join("stubs").display()),
            ),
            (
                "CUDA_COMPUTE_CAP".into(),
                std::env::var("CUDA_COMPUTE_CAP")
                    .unwrap_or_else(|_| DEFAULT_COMPUTE_CAP.to_string()),
            ),
        ]
    }
}

impl flags::Cuda {
    pub fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        match self {
            flags::Cuda::Sdk(a) => {
                let sdk = ensure(&root, &a.dir.unwrap_or_else(|| default_dir(&root)))?;
                for (k, v) in sdk.env() {
                    println!("export {k}={}", shell_quote(&v));
                }
            }
            flags::Cuda::Build(a) => {
                let sdk = ensure(&root, &a.dir.unwrap_or_else(|| default_dir(&root)))?;
                let binary = build(&root, &sdk, &root.join("target/cuda"))?;
                println!("{}", binary.display());
            }
            flags::Cuda::Kit(a) => {
                let sdk = ensure(&root, &a.cuda.dir.unwrap_or_else(|| default_dir(&root)))?;
                let binary = build(&root, &sdk, &root.join("target/cuda"))?;
                let tests = if a.tests {
                    Some(build_tests(&root, &sdk, &root.join("target/cuda"))?)
                } else {
                    None
                };
                let kit = kit(&root, &sdk, &binary, tests.as_deref())?;
                eprintln!(
                    "GPU kit ready in {}; on the GPU machine, from the repository root (carry target/gpu-kit):\n  bash sca-train/bench/gpu.sh target/gpu-kit \"$OUT\"\nthen here: cargo xtask bench gpu DIR-WITH-ITS-OUTPUT",
                    kit.display()
                );
                println!("{}", kit.display());
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `target/cuda-sdk` of the workspace.
pub fn default_dir(root: &Path) -> PathBuf {
    root.join("target/cuda-sdk")
}

/// The toolkit in `dir`, assembled first unless a complete one for the same
/// wheels is already there. A failed assembly leaves no partial toolkit: it is
/// made in a sibling directory and renamed into place.
pub fn ensure(root: &Path, dir: &Path) -> Result<Sdk> {
    let sdk = Sdk {
        root: dir.join("cuda"),
        shims: dir.join("shims"),
    };
    let stamp = dir.join("requirements.txt");
    // One assembly at a time: a second caller (parallel tests, two
    // terminals) waits and then finds the toolkit, instead of replacing it
    // under the first one's feet.
    let lock = dir.with_file_name(format!(
        ".{}.lock",
        dir.file_name()
            .map_or("cuda-sdk".into(), |n| n.to_string_lossy())
    ));
    fsx::locked(&lock, || {
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s == REQUIREMENTS) {
            return Ok(());
        }
        fsx::replace_dir(dir, |work| assemble(root, work))?;
        eprintln!("CUDA build toolkit ready in {}", dir.display());
        Ok(())
    })?;
    Ok(sdk)
}

fn assemble(root: &Path, out: &Path) -> Result<()> {
    let reqs = out.join("requirements.txt.pending");
    std::fs::write(&reqs, REQUIREMENTS)?;
    let wheels = out.join("wheels");
    eprintln!(
        "installing NVIDIA's CUDA 13.0 wheels (PyPI) into {}",
        wheels.display()
    );
    let sh = Shell::new()?;
    // Debian's python3 comes without pip (its own package, python3-pip);
    // an install `--target` a directory is not what PEP 668 guards.
    let pip = || {
        cmd!(sh, "python3 -m pip --version")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
    };
    if pip().is_err() {
        crate::services::install_packages(&[("python3", "python3"), ("", "python3-pip")])?;
    }
    cmd!(
        sh,
        "python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore
            --no-deps --only-binary=:all: --require-hashes --target {wheels} -r {reqs}"
    )
    .quiet()
    .run()
    .context(
        "pip could not install the CUDA wheels listed in xtask/src/cuda.rs: is PyPI reachable, and python3 with pip installed?",
    )?;
    let cuda = out.join("cuda");
    std::fs::rename(wheels.join("nvidia").join(format!("cu{CUDA_MAJOR}")), &cuda)
        .context("the wheels did not unpack to nvidia/cu13: has their layout changed?")?;
    std::fs::remove_dir_all(&wheels)?;
    std::os::unix::fs::symlink("lib", cuda.join("lib64"))?;
    let lib = cuda.join("lib");
    for name in LINK_NAMES {
        let versioned = format!("lib{name}.so.{CUDA_MAJOR}");
        if !lib.join(&versioned).is_file() {
            bail!("the wheels carry no {versioned}");
        }
        std::os::unix::fs::symlink(&versioned, lib.join(format!("lib{name}.so")))?;
    }
    driver_stub(root, &lib.join("stubs"))?;

    let shims = out.join("shims");
    std::fs::create_dir_all(&shims)?;
    let smi = shims.join("nvidia-smi");
    std::fs::write(&smi, nvidia_smi_shim())?;
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&reqs, out.join("requirements.txt"))?;
    Ok(())
}

/// What dfdx's build script reads from `nvidia-smi --query-gpu=compute_cap --format=csv`.
fn nvidia_smi_shim() -> String {
    format!(
        "#!/bin/sh\n\
         # Stand-in for a build machine without a GPU: dfdx's build script asks for the\n\
         # compute capability; answer the one the build targets.\n\
         echo compute_cap\n\
         echo \"${{CUDA_COMPUTE_CAP:-{DEFAULT_COMPUTE_CAP}}}\"\n"
    )
}

/// Writes and compiles `dir/libcuda.so` (soname `libcuda.so.1`): one function
/// for every driver-API symbol cudarc declares, each returning
/// `CUDA_ERROR_UNKNOWN`, so that a binary which somehow loads the stub fails
/// cleanly instead of crashing.
fn driver_stub(root: &Path, dir: &Path) -> Result<()> {
    let bindings = cudarc_dir(root)?.join("src/driver/sys.rs");
    let text = std::fs::read_to_string(&bindings)
        .with_context(|| format!("reading cudarc's driver bindings {}", bindings.display()))?;
    let symbols = driver_symbols(&text);
    if symbols.len() < 100 {
        bail!(
            "found only {} driver functions in {}: has cudarc's layout changed?",
            symbols.len(),
            bindings.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    let mut c =
        String::from("/* Link stub for libcuda.so.1, generated by `cargo xtask cuda sdk`. */\n");
    for s in &symbols {
        c.push_str(&format!("int {s}(void) {{ return 999; }}\n"));
    }
    let source = dir.join("libcuda_stub.c");
    fsx::write_atomic(&source, c.as_bytes())?;
    let sh = Shell::new()?;
    let lib = dir.join("libcuda.so");
    let out = cmd!(
        sh,
        "cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o {lib} {source}"
    )
    .quiet()
    .ignore_status()
    .output()
    .context("running cc (a C compiler is needed for the libcuda link stub)")?;
    if !out.status.success() {
        bail!(
            "compiling the libcuda link stub failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The driver functions (`pub fn cu...(`) declared in cudarc's bindings, sorted, once each.
fn driver_symbols(bindings: &str) -> Vec<String> {
    let mut names: Vec<String> = bindings
        .split("pub fn ")
        .skip(1)
        .filter_map(|rest| {
            let name = &rest[..rest.find('(')?];
            (name.starts_with("cu") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .then(|| name.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The source directory of the cudarc crate the workspace resolves.
fn cudarc_dir(root: &Path) -> Result<PathBuf> {
    let sh = workspace::shell(root)?;
    let out = workspace::cargo(&sh)
        .args(["metadata", "--format-version", "1", "--locked"])
        .read()
        .context("cargo metadata failed (see above)")?;
    let meta: serde_json::Value = serde_json::from_str(&out)?;
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "cudarc")
        .and_then(|p| p["manifest_path"].as_str())
        .and_then(|m| Path::new(m).parent().map(Path::to_path_buf))
        .context("the workspace resolves no cudarc crate (dfdx's `cuda` feature)")
}

/// Where the `cuda` builds keep their intermediate files:
/// `CARGO_BUILD_BUILD_DIR` if set, else the workspace's target directory,
/// whose `release/` the CPU binary's build (`image build`, the docker
/// backend) uses. The two release builds then compile their ~450 common
/// dependencies once (only cudarc, dfdx and sca-train differ, by
/// features: 84 s after a CPU build instead of 15 min), and each binary
/// still has its own place (`target/cuda/release/` beside `target/release/`).
pub fn build_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_BUILD_BUILD_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| root.join(d))
        .unwrap_or_else(|| workspace::target_dir(root))
}

/// `sdk`'s environment, and the shared [`build_dir`].
fn build_env(root: &Path, sdk: &Sdk) -> Vec<(String, String)> {
    let mut env = sdk.env();
    env.push((
        "CARGO_BUILD_BUILD_DIR".into(),
        build_dir(root).display().to_string(),
    ));
    env
}

/// Builds `sca-train --features cuda` against `sdk` in `target_dir`; returns the binary.
pub fn build(root: &Path, sdk: &Sdk, target_dir: &Path) -> Result<PathBuf> {
    crate::image::build::build_sca_train_release(
        root,
        Some(target_dir),
        &["--bin", "sca-train", "--features", "cuda"],
        &build_env(root, sdk),
        "sca-train",
    )
}

/// Builds sca-train's unit tests with `--features cuda` against `sdk` in
/// `target_dir` (the release profile, so dependencies are the binary's);
/// returns the test executable.
pub fn build_tests(root: &Path, sdk: &Sdk, target_dir: &Path) -> Result<PathBuf> {
    let shown = "cargo test --release --locked -p sca-train --features cuda --lib --no-run";
    eprintln!("building on the host: {shown}");
    let sh = workspace::shell(root)?;
    let out = workspace::cargo(&sh)
        .env("CARGO_TARGET_DIR", target_dir)
        .envs(build_env(root, sdk))
        .args(["test", "--release", "--locked", "-p", "sca-train"])
        .args(["--features", "cuda", "--lib", "--no-run"])
        .arg("--message-format=json-render-diagnostics")
        .read()
        .with_context(|| format!("{shown} failed (see above)"))?;
    crate::image::build::executable_from_messages(out.as_bytes(), "sca_train")
        .context("cargo test reported no sca_train test executable")
}

/// Largest kit the device tool carries (64 MiB per call, with the working tree).
const KIT_LIMIT: u64 = 48 << 20;

/// `target/gpu-kit`: the CUDA binary without debug information (and, with
/// `tests`, the unit tests' executable, gzipped, as `sca-train-tests.gz`), the two
/// include paths compiled into it (`cuda-include-dir`, `dfdx-include-dir`) and
/// dfdx's headers (`dfdx-include/`); gpu.sh makes both paths exist on the GPU
/// machine. Replaced whole (made beside it, then renamed).
pub fn kit(root: &Path, sdk: &Sdk, binary: &Path, tests: Option<&Path>) -> Result<PathBuf> {
    let dir = root.join("target/gpu-kit");
    let build_dir = build_dir(root);
    fsx::replace_dir(&dir, |work| fill_kit(work, sdk, binary, tests, &build_dir))?;
    Ok(dir)
}

/// Copies `from` to `to` without debug information: the release profile's
/// line tables make the binary ~190 MB, more than a GPU machine call carries.
fn strip_into(from: &Path, to: &Path) -> Result<u64> {
    let sh = Shell::new()?;
    cmd!(sh, "strip --strip-debug -o {to} {from}")
        .quiet()
        .run()
        .with_context(|| format!("strip --strip-debug {} (binutils) failed", from.display()))?;
    Ok(std::fs::metadata(to)?.len())
}

fn fill_kit(
    work: &Path,
    sdk: &Sdk,
    binary: &Path,
    tests: Option<&Path>,
    build_dir: &Path,
) -> Result<()> {
    let mut size = strip_into(binary, &work.join("sca-train"))?;
    if let Some(tests) = tests {
        // Compressed (gpu.sh unpacks it): two stripped binaries are more
        // than a call carries.
        let stripped = work.join("sca-train-tests");
        strip_into(tests, &stripped)?;
        let packed = work.join("sca-train-tests.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&packed)?,
            flate2::Compression::default(),
        );
        std::io::copy(&mut std::fs::File::open(&stripped)?, &mut gz)?;
        gz.finish()?.sync_all()?;
        std::fs::remove_file(&stripped)?;
        size += std::fs::metadata(&packed)?.len();
    }
    if size > KIT_LIMIT {
        bail!(
            "the kit's executables are {} MiB without debug information, more than the {} MiB a GPU machine call can carry",
            size >> 20,
            KIT_LIMIT >> 20
        );
    }
    std::fs::write(
        work.join("cuda-include-dir"),
        format!("{}\n", sdk.root.join("include").display()),
    )?;
    // dfdx's NVRTC kernels also include its own headers (`cuda_utils.cuh`)
    // from its build script's OUT_DIR, by the absolute path compiled in.
    let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let out_dir = dfdx_out_dir(&bytes, build_dir).with_context(|| {
        format!(
            "{} names no dfdx build directory (…/build/dfdx-*/out): was it built with --features cuda?",
            binary.display()
        )
    })?;
    let headers = work.join("dfdx-include");
    std::fs::create_dir(&headers)?;
    for entry in std::fs::read_dir(&out_dir).with_context(|| format!("reading {out_dir}"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "cuh") {
            std::fs::copy(&path, headers.join(path.file_name().expect("a file")))?;
        }
    }
    if !headers.join("cuda_utils.cuh").is_file() {
        bail!("{out_dir} has no cuda_utils.cuh");
    }
    std::fs::write(work.join("dfdx-include-dir"), format!("{out_dir}\n"))?;
    Ok(())
}

/// The `<build_dir>/release/build/dfdx-<hash>/out` path embedded in a `cuda`
/// binary whose build kept its intermediate files in `build_dir` (found by
/// that prefix: the binary's strings are packed without separators).
fn dfdx_out_dir(binary: &[u8], build_dir: &Path) -> Option<String> {
    let prefix = format!("{}/release/build/dfdx-", build_dir.display());
    let at = binary
        .windows(prefix.len())
        .position(|w| w == prefix.as_bytes())?;
    let hash = &binary[at + prefix.len()..];
    let len = hash.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if len == 0 || !hash[len..].starts_with(b"/out") {
        return None;
    }
    Some(format!(
        "{prefix}{}/out",
        std::str::from_utf8(&hash[..len]).ok()?
    ))
}

/// Single-quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dfdx_out_dir_is_found_among_neighbouring_strings() {
        // As in the binary: strings packed without separators.
        let bin = b"\x00$Tsm_90/w/target/cuda-sdk/cuda/include/w/target/cuda/release/build/dfdx-f77b1763e1be8443/outreshape_bwd\x00";
        let target = Path::new("/w/target/cuda");
        assert_eq!(
            dfdx_out_dir(bin, target).as_deref(),
            Some("/w/target/cuda/release/build/dfdx-f77b1763e1be8443/out")
        );
        assert_eq!(dfdx_out_dir(bin, Path::new("/elsewhere")), None);
        assert_eq!(
            dfdx_out_dir(b"/w/target/cuda/release/build/dfdx-/out", target),
            None
        );
    }

    #[test]
    fn driver_symbols_are_the_declared_cu_functions() {
        let text = "extern \"C\" {\n    pub fn cuInit(Flags: c_uint) -> CUresult;\n    \
                    pub fn cuMemAlloc_v2(p: *mut u64, n: usize) -> CUresult;\n    \
                    pub fn cuInit(Flags: c_uint) -> CUresult;\n}\npub fn helper() {}\n\
                    pub fn not_cuda(x: u8) {}\n";
        assert_eq!(driver_symbols(text), ["cuInit", "cuMemAlloc_v2"]);
    }

    #[test]
    fn requirements_pin_every_wheel_by_hash() {
        for line in REQUIREMENTS.lines() {
            let (spec, hash) = line.split_once(" --hash=sha256:").expect(line);
            assert!(spec.contains("=="), "{line}");
            assert_eq!(hash.len(), 64, "{line}");
        }
    }

    #[test]
    fn nvidia_smi_shim_defaults_to_the_default_compute_capability() {
        let shim = nvidia_smi_shim();
        assert!(shim.starts_with("#!/bin/sh\n# Stand-in"), "{shim}");
        assert!(
            shim.ends_with("echo compute_cap\necho \"${CUDA_COMPUTE_CAP:-80}\"\n"),
            "{shim}"
        );
    }

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("a'b c"), r"'a'\''b c'");
    }
}
