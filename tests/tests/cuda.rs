//! End-to-end tests of `cargo xtask cuda sdk` and `cuda kit`: the CUDA build
//! toolkit from NVIDIA's PyPI wheels (needs PyPI, as `cargo xtask test` does
//! for the AWS emulator), and `sca-train --features cuda` built against it.
//! There is no GPU here: what can be checked is that the `cuda` build
//! compiles, links the CUDA libraries, starts through the image's entrypoint
//! on the toolkit's driver stub, falls back to the CPU on `auto` and refuses
//! `cuda` with a message saying why.

use std::path::Path;
use std::process::Command;

use sca_e2e::{root, run_xtask as xtask};

fn output(program: impl AsRef<std::ffi::OsStr>, args: &[&str], env: &[(String, String)]) -> String {
    let out = Command::new(program.as_ref())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("running {:?}: {e}", program.as_ref()));
    assert!(
        out.status.success(),
        "{:?} {args:?}: {}",
        program.as_ref(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `export K='V'` lines as pairs.
fn exports(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

#[test]
fn cuda_sdk_compiles_kernels_for_sm_80_and_links_against_its_driver_stub() {
    let run = xtask(&["cuda", "sdk"]).ok();
    let env = exports(&run.stdout);
    let var = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .unwrap_or_else(|| panic!("{k} not exported: {}", run.stdout))
            .1
            .clone()
    };
    let cuda = Path::new(&var("CUDA_ROOT")).to_path_buf();
    assert!(cuda.starts_with(root().join("target")), "{cuda:?}");
    assert!(cuda.join("include/cuda.h").is_file());
    // The build targets the oldest GPU generation validation accepts.
    assert_eq!(
        var("CUDA_COMPUTE_CAP"),
        sca_spec::MIN_CUDA_COMPUTE_CAPABILITY.to_string()
    );

    // dfdx's build script: nvidia-smi's answer, and nvcc able to target it.
    let smi = output(
        "nvidia-smi",
        &["--query-gpu=compute_cap", "--format=csv"],
        &env,
    );
    assert_eq!(smi, "compute_cap\n80\n");
    let codes = output("nvcc", &["--list-gpu-code"], &env);
    assert!(codes.lines().any(|l| l == "sm_80"), "{codes}");

    // A kernel that includes cuda_fp16.h (as dfdx's do) compiles to sm_80 PTX.
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("k.cu");
    std::fs::write(
        &kernel,
        "#include \"cuda_fp16.h\"\n\
         extern \"C\" __global__ void half_it(const float *x, __half *y, int n) {\n\
           int i = blockIdx.x * blockDim.x + threadIdx.x;\n\
           if (i < n) y[i] = __float2half(x[i] * 0.5f);\n\
         }\n",
    )
    .unwrap();
    let ptx = dir.path().join("k.ptx");
    output(
        "nvcc",
        &[
            "--gpu-architecture=sm_80",
            "--ptx",
            "-o",
            ptx.to_str().unwrap(),
            kernel.to_str().unwrap(),
        ],
        &env,
    );
    let ptx = std::fs::read_to_string(&ptx).unwrap();
    assert!(ptx.contains(".target sm_80"), "{ptx}");
    assert!(ptx.contains(".entry half_it"), "{ptx}");

    // dfdx's kernels compile for the oldest GPU generation validation lets
    // `device = "cuda"` run on (sca_spec::MIN_CUDA_COMPUTE_CAPABILITY, 8.0),
    // and not for the one before it (7.5): that bound is this toolkit's fact.
    let dfdx_includes: Vec<String> = ["tensor_ops/utilities", "tensor_ops/relu"]
        .iter()
        .map(|d| format!("-I{}", root().join("vendor/dfdx/src").join(d).display()))
        .collect();
    let relu = root().join("vendor/dfdx/src/tensor_ops/relu/relu.cu");
    let nvcc_relu = |cap: &str| {
        Command::new("nvcc")
            .args([&format!("--gpu-architecture=sm_{cap}"), "--ptx", "-o"])
            .arg(dir.path().join(format!("relu_{cap}.ptx")))
            .args(&dfdx_includes)
            .arg(&relu)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("running nvcc")
    };
    let min = sca_spec::MIN_CUDA_COMPUTE_CAPABILITY.to_string();
    let ok = nvcc_relu(&min);
    assert!(
        ok.status.success(),
        "sm_{min}: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let older = nvcc_relu("75");
    assert!(
        !older.status.success(),
        "dfdx's kernels now compile for sm_75: lower MIN_CUDA_COMPUTE_CAPABILITY"
    );

    // sca-train's own kernels (kernels.cu, which NVRTC compiles on the GPU
    // machine at first use) compile for that generation too, and the module
    // loads every one of them (cuda_kernels.rs's list).
    let ops = root().join("sca-train/src/ops");
    let kernels_ptx = dir.path().join("kernels.ptx");
    output(
        "nvcc",
        &[
            &format!("--gpu-architecture=compute_{min}"),
            "--ptx",
            "-o",
            kernels_ptx.to_str().unwrap(),
            ops.join("kernels.cu").to_str().unwrap(),
        ],
        &env,
    );
    let ptx = std::fs::read_to_string(&kernels_ptx).unwrap();
    let source = std::fs::read_to_string(ops.join("kernels.cu")).unwrap();
    let loader = std::fs::read_to_string(ops.join("cuda_kernels.rs")).unwrap();
    let names: Vec<&str> = source
        .split("extern \"C\" __global__ void ")
        .skip(1)
        .map(|rest| rest.split('(').next().unwrap().trim())
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    for f in names {
        assert!(ptx.contains(&format!(".entry {f}(")), "no {f} in\n{ptx}");
        assert!(
            loader.contains(&format!("\"{f}\"")),
            "cuda_kernels.rs does not load {f}"
        );
    }

    // A program calling the driver API links with -lcuda from LIBRARY_PATH
    // (the stub, soname libcuda.so.1) and -lcublas from lib64.
    let main = dir.path().join("main.c");
    std::fs::write(
        &main,
        "int cuInit(unsigned); int cublasCreate_v2(void **);\n\
         int main(void) { void *h; return cuInit(0) == 0 && cublasCreate_v2(&h) == 0; }\n",
    )
    .unwrap();
    let exe = dir.path().join("main");
    output(
        "cc",
        &[
            main.to_str().unwrap(),
            "-o",
            exe.to_str().unwrap(),
            "-lcuda",
            "-lcublas",
        ],
        &env,
    );
    let needed = output("readelf", &["-d", exe.to_str().unwrap()], &[]);
    assert!(needed.contains("[libcuda.so.1]"), "{needed}");
    assert!(needed.contains("[libcublas.so.13]"), "{needed}");

    // A second run reuses the toolkit.
    let again = xtask(&["cuda", "sdk"]).ok();
    assert_eq!(exports(&again.stdout), env);
    assert!(!again.stderr.contains("installing"), "{}", again.stderr);
}

/// Runs the kit's binary through the image's entrypoint script.
fn entrypoint(bin: &Path, stub_dir: &Path, lib64: &Path, args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .arg(root().join("sca-train/docker-entrypoint.sh"))
        .args(args)
        .env("SCA_TRAIN_BIN", bin)
        .env("SCA_CUDA_STUB_DIR", stub_dir)
        // cuBLAS and NVRTC, which the runtime image has in the loader's cache.
        .env("LD_LIBRARY_PATH", lib64)
        .env_remove("SCA_DEVICE")
        .output()
        .expect("running sh")
}

#[test]
fn cuda_kit_binary_links_cuda_and_starts_on_the_driver_stub_without_a_gpu() {
    let sdk = exports(&xtask(&["cuda", "sdk"]).ok().stdout);
    let cuda = Path::new(&sdk.iter().find(|(k, _)| k == "CUDA_ROOT").unwrap().1).to_path_buf();
    let run = xtask(&["cuda", "kit"]).ok();
    let kit = Path::new(run.stdout.trim()).to_path_buf();
    assert_eq!(kit, root().join("target/gpu-kit"));
    let bin = kit.join("sca-train");
    let include = std::fs::read_to_string(kit.join("cuda-include-dir")).unwrap();
    assert!(
        Path::new(include.trim()).join("cuda_fp16.h").is_file(),
        "{include}"
    );
    // dfdx's own NVRTC headers, and the build path they are included from.
    let dfdx_dir = std::fs::read_to_string(kit.join("dfdx-include-dir")).unwrap();
    let dfdx_dir = dfdx_dir.trim();
    assert!(dfdx_dir.ends_with("/out"), "{dfdx_dir}");
    assert!(kit.join("dfdx-include/cuda_utils.cuh").is_file());
    let raw = std::fs::read(&bin).unwrap();
    assert!(
        raw.windows(dfdx_dir.len())
            .any(|w| w == dfdx_dir.as_bytes()),
        "{dfdx_dir} is not the path compiled into the binary"
    );
    // dfdx's layer kernels, which the vendored patch compiles on stable, are
    // in it: their PTX and module names (upstream they need nightly).
    for name in [
        ".entry unfold_input_into_patches_f32",
        ".entry pool2d_fwd_f32",
        "conv2d_f32",
        "convtrans2d_f32",
    ] {
        assert!(
            raw.windows(name.len()).any(|w| w == name.as_bytes()),
            "dfdx's `{name}` is not in the binary"
        );
    }

    // dfdx's CUDA device is really in the binary now, not dropped by the linker.
    let needed = output("readelf", &["-d", bin.to_str().unwrap()], &[]);
    for lib in ["libcuda.so.1", "libcublas.so.13", "libnvrtc.so.13"] {
        assert!(
            needed.contains(&format!("[{lib}]")),
            "{lib} not NEEDED: {needed}"
        );
    }

    let stubs = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        cuda.join("lib64/stubs/libcuda.so"),
        stubs.path().join("libcuda.so.1"),
    )
    .unwrap();
    let lib64 = cuda.join("lib64");
    let tiny = [
        "bench",
        "--depth",
        "1",
        "--base-width",
        "2",
        "--size",
        "8",
        "--batch",
        "2",
        "--steps",
        "1",
    ];

    // Without a driver and without the stub, the loader refuses to start it.
    let none = entrypoint(&bin, Path::new("/nonexistent"), &lib64, &["--help"]);
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("libcuda.so.1"),
        "{none:?}"
    );

    // With the stub it starts, and says what its kernels were compiled for
    // (the runtime check against the GPU's generation reads the same value).
    let version = entrypoint(&bin, stubs.path(), &lib64, &["--version"]);
    let out = String::from_utf8_lossy(&version.stdout);
    assert!(version.status.success(), "{version:?}");
    assert!(
        out.contains("devices: cpu, cuda (kernels compiled for compute capability 8.0 and newer)"),
        "{out}"
    );

    // Auto falls back to the CPU and says why.
    let auto = entrypoint(
        &bin,
        stubs.path(),
        &lib64,
        &[&tiny[..], &["--device", "auto"]].concat(),
    );
    let (out, err) = (
        String::from_utf8_lossy(&auto.stdout),
        String::from_utf8_lossy(&auto.stderr),
    );
    assert!(auto.status.success(), "{out}{err}");
    assert!(
        err.contains("device auto: no GPU could be opened") && err.contains("using the CPU"),
        "{err}"
    );
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["device"], "cpu");
    assert!(report["tiles_per_s"].as_f64().unwrap() > 0.0);

    // Asking for the GPU where there is none is an error that names the fix.
    let cuda_run = entrypoint(
        &bin,
        stubs.path(),
        &lib64,
        &[&tiny[..], &["--device", "cuda"]].concat(),
    );
    let err = String::from_utf8_lossy(&cuda_run.stderr);
    assert!(!cuda_run.status.success());
    assert!(
        err.contains("no GPU could be opened") && err.contains("--gpus"),
        "{err}"
    );
}

/// The entrypoint adds the stub only where no driver library is found, so it
/// can never shadow a real driver (`env` stands in for sca-train and prints
/// the environment it was given).
#[test]
fn entrypoint_adds_the_driver_stub_only_without_a_driver() {
    let ld_path_seen = |ld_path: &str| {
        let out = Command::new("sh")
            .arg(root().join("sca-train/docker-entrypoint.sh"))
            .env("SCA_TRAIN_BIN", "/usr/bin/env")
            .env("SCA_CUDA_STUB_DIR", "/stub")
            .env("LD_LIBRARY_PATH", ld_path)
            .output()
            .expect("running sh");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("LD_LIBRARY_PATH=").map(str::to_string))
            .unwrap_or_default()
    };
    // No driver anywhere here (this machine has no GPU): the stub goes last.
    assert_eq!(ld_path_seen("/a:/b"), "/a:/b:/stub");
    assert_eq!(ld_path_seen(""), "/stub");
    // A driver library on LD_LIBRARY_PATH (as some GPU runtimes mount it): untouched.
    let driver = tempfile::tempdir().unwrap();
    std::fs::write(driver.path().join("libcuda.so.1"), b"").unwrap();
    let with_driver = format!("/a:{}", driver.path().display());
    assert_eq!(ld_path_seen(&with_driver), with_driver);
}
