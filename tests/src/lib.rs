//! Shared helpers for the end-to-end tests in `tests/tests/`: the workspace
//! root, the built `xtask` binary, the services the tests need, the `docker`
//! CLI and a small test base image (busybox + the shared libraries of
//! `sca-train`), since nothing can be pulled in the test environment.

pub mod fault_proxy;
pub mod lab;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The environment variables the services provide.
pub const SERVICE_VARS: [&str; 3] = ["DOCKER_HOST", "SCA_TEST_REGISTRY", "AWS_ENDPOINT_URL"];

/// The services' environment; panics (never skips) when it is missing.
pub fn require_services() {
    let missing: Vec<&str> = SERVICE_VARS
        .iter()
        .copied()
        .filter(|v| std::env::var(v).map_or(true, |s| s.is_empty()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} not set: start the services with `cargo xtask test` (or `cargo xtask services up` and export what it prints)",
        missing.join(", ")
    );
}

/// `SCA_TEST_REGISTRY` (`127.0.0.1:PORT`).
pub fn test_registry() -> String {
    require_services();
    std::env::var("SCA_TEST_REGISTRY").unwrap()
}

/// `$CARGO` without the per-crate variables cargo set for this test process
/// (xtask's, so the two never drift: see `xtask::workspace::cargo`).
fn cargo() -> Command {
    xtask::workspace::cargo_command()
}

/// Build a binary of the workspace with cargo and return its path (what
/// escargot does): robust under `cargo test --workspace`, which does not
/// build other packages' binaries. Only `bin` is built: xtask's other
/// binary, `xtask-local`, is the entry point's to build without features.
pub fn cargo_bin(package: &str, bin: &str, release: bool) -> PathBuf {
    let mut cmd = cargo();
    cmd.current_dir(root()).args([
        "build",
        "-p",
        package,
        "--bin",
        bin,
        "--message-format=json-render-diagnostics",
    ]);
    if release {
        cmd.arg("--release");
    } else if package != "xtask" {
        // The same feature resolution as the xtask binary's build (and the
        // trainer builds of `experiment run`): one set of compiled dependencies.
        cmd.args(["-p", "xtask"]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo build");
    assert!(
        out.status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|m| {
            if m["reason"] == "compiler-artifact" && m["target"]["name"] == bin {
                m["executable"].as_str().map(PathBuf::from)
            } else {
                None
            }
        })
        .unwrap_or_else(|| panic!("cargo reported no executable for {bin}"))
}

/// The `xtask` binary, built once per test process with the same cargo and
/// target dir as the tests (its path as cargo reports it).
pub fn xtask_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| cargo_bin("xtask", "xtask", false))
        .clone()
}

/// The entry-point binary the `cargo xtask` alias runs (xtask-entry): it
/// validates itself and hands every other command to [`xtask_bin`].
pub fn entry_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| cargo_bin("xtask-entry", "xtask-entry", false))
        .clone()
}

/// The full xtask binary with ARGS, run from the workspace root (what
/// `cargo xtask ARGS...` runs for every command but validate, schema and
/// a local run or sweep, which go to `xtask-local`).
pub fn xtask<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    in_root(xtask_bin(), args)
}

/// `cargo xtask ARGS...` exactly as the alias runs it (through the entry
/// point), from the workspace root.
pub fn cargo_xtask<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    in_root(entry_bin(), args)
}

fn in_root<I, S>(bin: PathBuf, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(bin);
    cmd.current_dir(root()).args(args);
    cmd
}

/// The result of a command, with text output.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panic with both streams unless the command succeeded.
    pub fn ok(self) -> Self {
        assert!(
            self.success(),
            "command failed ({:?})\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// stderr with miette's wrapping undone: each report's continuation
    /// lines (`│ ...`) joined back to the line before (without a space after
    /// a hyphen the wrap broke at), so a test can look for whole sentences
    /// however wide the terminal and whatever the line breaker.
    pub fn stderr_unwrapped(&self) -> String {
        let mut out = String::new();
        for line in self.stderr.lines() {
            match line.trim_start().strip_prefix('│') {
                Some(rest) if !out.is_empty() => {
                    if !out.ends_with('-') {
                        out.push(' ');
                    }
                    out.push_str(rest.trim());
                }
                _ => {
                    out.push('\n');
                    out.push_str(line.trim());
                }
            }
        }
        out
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Run `cargo xtask ARGS` with extra environment; its exit code and output.
pub fn run_xtask_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = xtask(args);
    cmd.stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running xtask").into()
}

/// Run `cargo xtask ARGS`; its exit code and output.
pub fn run_xtask(args: &[&str]) -> Run {
    run_xtask_env(args, &[])
}

/// `docker ARGS` (the CLI, for checks only), with `stdin` fed when given.
pub fn docker_with_input(args: &[&str], stdin: Option<&[u8]>) -> Run {
    require_services();
    let mut cmd = Command::new("docker");
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .expect("running the docker CLI (installed by `cargo xtask services up`)");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || pipe.write_all(&input));
    }
    child.wait_with_output().expect("waiting for docker").into()
}

pub fn docker(args: &[&str]) -> Run {
    docker_with_input(args, None)
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    unique_of(prefix, std::process::id(), nanos)
}

/// `prefix`, the process id and the time in base 36: short enough for an
/// experiment name (39 characters) with a 20-character prefix even where
/// pids run to 4194304 (systemd's pid_max), as decimal ones did not.
fn unique_of(prefix: &str, pid: u32, nanos: u128) -> String {
    fn base36(mut n: u128) -> String {
        let mut digits = Vec::new();
        loop {
            digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
            n /= 36;
            if n == 0 {
                break;
            }
        }
        digits.reverse();
        String::from_utf8(digits).expect("ascii")
    }
    format!(
        "{prefix}-{}-{}",
        base36(u128::from(pid)),
        base36(nanos % 1_000_000_000_000)
    )
}

/// Write `files` (path, contents) under a new temporary directory.
pub fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

/// The shared libraries `ldd` lists for `binary` (with the loader).
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .expect("running ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .last()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs
}

/// A tiny base image in the engine: busybox (sh, find, ...) and the shared
/// libraries of the release `sca-train` binary, made with `docker import`
/// (nothing can be pulled here). Named by a hash of its contents, so it is
/// imported once per engine.
pub fn test_base_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        require_services();
        let binary = cargo_bin("sca-train", "sca-train", true);
        let busybox = which("busybox").expect("busybox (installed by `cargo xtask services up`)");
        let rootfs = tempfile::tempdir().unwrap();
        let root = rootfs.path();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "find", "ls", "cat", "echo", "env", "sleep", "true", "false", "test",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let mut libs = shared_libraries(&binary);
        libs.extend(shared_libraries(&busybox));
        libs.sort();
        libs.dedup();
        for lib in &libs {
            let dest = root.join(lib.strip_prefix("/").unwrap());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(lib, &dest).unwrap_or_else(|e| panic!("copying {}: {e}", lib.display()));
        }
        // A deterministic tar of the root fs: its hash names the image.
        let out = Command::new("tar")
            .args([
                "--sort=name",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-C",
            ])
            .arg(root)
            .args(["-cf", "-", "."])
            .output()
            .expect("running tar");
        assert!(
            out.status.success(),
            "tar failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut hasher = Fnv64::default();
        hasher.update(&out.stdout);
        let name = format!("sca-e2e-base:{}", hasher.hex());
        if !docker(&["image", "inspect", &name]).success() {
            docker_with_input(&["import", "-", &name], Some(&out.stdout)).ok();
        }
        name
    })
}

/// The path of `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

/// A content hash good enough to name a test image (FNV-1a, 64 bit, hex).
#[derive(Default)]
struct Fnv64 {
    state: Option<u64>,
}

impl Fnv64 {
    fn update(&mut self, bytes: &[u8]) {
        let mut h = self.state.unwrap_or(0xcbf2_9ce4_8422_2325);
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.state = Some(h);
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.state.unwrap_or(0))
    }
}

/// The password of the ECR token the AWS emulator hands out (the test
/// registry's password for user `AWS`), from ECR `GetAuthorizationToken`.
/// The test registry's own credentials for a `--registry` push (it is not
/// an ECR host, so xtask sends it these and never the ECR token; the
/// services gave it the emulator's ECR password).
pub fn test_registry_credentials() -> String {
    ecr_password()
}

/// A docker CLI configuration directory logged in to the test registry
/// with the ECR token: pass it as `docker --config DIR`.
pub fn registry_login() -> tempfile::TempDir {
    let config = tempfile::tempdir().unwrap();
    docker_with_input(
        &[
            "--config",
            config.path().to_str().unwrap(),
            "login",
            "--username",
            "AWS",
            "--password-stdin",
            &test_registry(),
        ],
        Some(ecr_password().as_bytes()),
    )
    .ok();
    config
}

pub fn ecr_password() -> String {
    require_services();
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    // Bounded, as every test's wait for a service is.
    let socket: std::net::SocketAddr = addr.parse().expect("AWS_ENDPOINT_URL is http://IP:PORT");
    let mut stream =
        std::net::TcpStream::connect_timeout(&socket, std::time::Duration::from_secs(30))
            .expect("connecting to the AWS emulator");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let body = "{}";
    let request = format!(
        "POST / HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/x-amz-json-1.1\r\n\
         X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/ecr/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let json = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("ECR answer {response:?}: {e}"));
    let token = value["authorizationData"][0]["authorizationToken"]
        .as_str()
        .expect("an authorization token")
        .to_string();
    let decoded = base64_decode(&token);
    decoded.split_once(':').expect("AWS:PASSWORD").1.to_string()
}

fn base64_decode(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    String::from_utf8(out).expect("UTF-8")
}

/// Run a Python script with boto3 against the AWS emulator (boto3 comes with
/// moto): an independent reader of what our code sent. The script gets a
/// `client(name)` function and its arguments in `sys.argv[1:]`.
pub fn boto3(script: &str, args: &[&str]) -> Run {
    require_services();
    const PRELUDE: &str = "import boto3, os\n\
def client(name):\n    return boto3.client(name, endpoint_url=os.environ['AWS_ENDPOINT_URL'], region_name='us-west-2', aws_access_key_id='test', aws_secret_access_key='test')\n";
    // `cargo xtask services up` names the Python it installed moto into,
    // where that is not the one on PATH.
    let python = std::env::var("SCA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    Command::new(python)
        .arg("-c")
        .arg(format!("{PRELUDE}{script}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running python3 (boto3 is installed with moto by `cargo xtask services up`)")
        .into()
}

/// Merge `fields` (a JSON object) into the JSON object at `s3://bucket/key`
/// and put it back, as a hand edit or another machine would; the object as
/// put.
pub fn update_json_object(bucket: &str, key: &str, fields: serde_json::Value) -> serde_json::Value {
    let out = boto3(
        r#"
import sys, json
bucket, key, fields = sys.argv[1:]
s3 = client("s3")
body = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
body.update(json.loads(fields))
s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode())
print(json.dumps(body))
"#,
        &[bucket, key, &fields.to_string()],
    )
    .ok();
    serde_json::from_str(out.stdout.trim()).expect("the object as put")
}

#[cfg(test)]
mod tests {
    /// The longest prefix the tests use, at the largest pid and time.
    #[test]
    fn unique_names_fit_an_experiment_name() {
        let name = super::unique_of("e2e-throttled-create", 4_194_304, 999_999_999_999);
        assert!(name.len() <= 39, "{name}: {}", name.len());
        assert_eq!(super::unique_of("p", 35, 36), "p-z-10");
    }

    #[test]
    fn miettes_wrapping_is_undone() {
        let run = super::Run {
            code: Some(1),
            stdout: String::new(),
            stderr: "  × f.toml:38:16: `job.max_cost_usd`: the sweep's worst-\n  │ case cost $0.92 (4 points) is above\n  │ $0.50\n    ╭─[f.toml:38:16]\n 38 │ max_cost_usd = 0.5\n\nerror: f.toml is invalid\n".into(),
        };
        let text = run.stderr_unwrapped();
        assert!(
            text.contains("the sweep's worst-case cost $0.92 (4 points) is above $0.50\n"),
            "{text}"
        );
        assert!(text.contains("\nerror: f.toml is invalid"), "{text}");
    }
}
