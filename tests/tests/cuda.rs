//! End-to-end test of `cargo xtask cuda sdk`: the CUDA build toolkit from
//! NVIDIA's PyPI wheels (needs PyPI, as `cargo xtask test` does for the AWS
//! emulator). Building sca-train against it is `cargo xtask cuda build` and
//! the production Dockerfile's benchmark; too long for the test suite.

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
fn cuda_sdk_compiles_kernels_for_sm_90_and_links_against_its_driver_stub() {
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
    assert_eq!(var("CUDA_COMPUTE_CAP"), "90");

    // dfdx's build script: nvidia-smi's answer, and nvcc able to target it.
    let smi = output(
        "nvidia-smi",
        &["--query-gpu=compute_cap", "--format=csv"],
        &env,
    );
    assert_eq!(smi, "compute_cap\n90\n");
    let codes = output("nvcc", &["--list-gpu-code"], &env);
    assert!(codes.lines().any(|l| l == "sm_90"), "{codes}");

    // A kernel that includes cuda_fp16.h (as dfdx's do) compiles to sm_90 PTX.
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
            "--gpu-architecture=sm_90",
            "--ptx",
            "-o",
            ptx.to_str().unwrap(),
            kernel.to_str().unwrap(),
        ],
        &env,
    );
    let ptx = std::fs::read_to_string(&ptx).unwrap();
    assert!(ptx.contains(".target sm_90"), "{ptx}");
    assert!(ptx.contains(".entry half_it"), "{ptx}");

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
