//! The local services the tests need, started and stopped by
//! `cargo xtask services up|down` and around `cargo xtask test`:
//! the AWS API emulator (`moto_server`), a Docker engine (`dockerd`) and an
//! OCI registry (`docker-registry`, the CNCF distribution registry). It also
//! installs headless Chromium (Debian's `chromium`), which is no service:
//! the report tests start it themselves.
//!
//! `up` is idempotent: it installs what is missing (pip, apt-get), reuses a
//! service that is already answering, and records the processes it started in
//! `target/services/`. `services down` stops every one recorded there;
//! `cargo xtask test` and the benchmarks stop only what their own `up`
//! started, so a `services up` in the developer's shell outlives them, and
//! two of them (two test runs, a run and a benchmark) of one checkout share
//! what the first started, the last out stopping it ([`up_shared`]).
//!
//! The daemons are started with std::process rather than xshell: they are
//! spawned, left running and stopped by pid, which xshell's run-to-completion
//! commands do not model, and signalled with nix (SIGTERM, then SIGKILL).
//! The one-shot calls beside them (apt-get, pip) go through xshell.
//!
//! Docker engine: an engine that already answers (`DOCKER_HOST`, then
//! `/var/run/docker.sock`) and logs in to the test registry is reused,
//! because a second daemon on the same host would fight the first over the
//! `docker0` bridge and iptables (one that cannot reach the registry, a CI
//! container's host engine, is not).
//! Otherwise `dockerd` is started directly (no systemd) with its own socket
//! (`target/services/docker.sock`), data root (`target/services/docker/`,
//! kept between runs so the test images and build cache survive), exec root
//! and pidfile.
//!
//! Registry: listens on 127.0.0.1:5124 (plain HTTP: the engine treats
//! 127.0.0.0/8 as an insecure registry), storage and config under
//! `target/services/registry/`, htpasswd (bcrypt) auth for user `AWS` with the
//! password that the emulator's ECR `GetAuthorizationToken` returns, so that
//! `image push --registry` logs in with the ECR token exactly as against ECR.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::workspace::which;
use crate::{flags, workspace};

/// Where the AWS emulator listens.
pub const MOTO_ADDR: &str = "127.0.0.1:5123";

/// Where the test registry listens.
pub const REGISTRY_ADDR: &str = "127.0.0.1:5124";

/// The engine most hosts run.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Environment variables the tests need to reach the services, and which
/// services this `up` started (not those it found running).
#[derive(Debug, Clone, Default)]
pub struct ServiceEnv {
    pub vars: Vec<(String, String)>,
    pub started: Vec<Service>,
}

/// A daemon `up` may start: its pid file's name and its program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Moto,
    Dockerd,
    Registry,
}

impl Service {
    /// Newest first: the order to stop them in.
    const ALL: [Service; 3] = [Service::Registry, Service::Dockerd, Service::Moto];

    fn name(self) -> &'static str {
        match self {
            Service::Moto => "moto",
            Service::Dockerd => "dockerd",
            Service::Registry => "registry",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Service::Moto => "moto_server",
            Service::Dockerd => "dockerd",
            Service::Registry => "docker-registry",
        }
    }
}

impl flags::Services {
    pub fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        match self {
            flags::Services::Up => {
                let env = up(&root)?;
                for (k, v) in &env.vars {
                    println!("export {k}={}", shell_quote(v));
                }
            }
            flags::Services::Down => down(&root)?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `value` as one single-quoted shell word: `eval "$(cargo xtask services
/// up)"` must read a path with spaces or `$(...)` in it as data.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn state_dir(root: &Path) -> PathBuf {
    root.join("target/services")
}

/// Install and start every service; return the environment for the tests
/// and what was started. On an error, what this call started is stopped.
pub fn up(root: &Path) -> Result<ServiceEnv> {
    let dir = state_dir(root);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut started = Vec::new();
    // One `up` at a time on this machine (the ports are the machine's):
    // two started together would both find a port free, both start a
    // daemon, and one's would die on the taken port while the other's
    // answers for it.
    let _lock = machine_lock()?;
    match start_all(&dir, &mut started) {
        Ok(vars) => Ok(ServiceEnv { vars, started }),
        // Stopped while the lock is held: another `up` waiting for it must
        // not find these answering and take them for its own to use.
        Err(e) => {
            if let Err(left) = stop(root, &started, STOP_GRACE) {
                eprintln!("{left:#}");
            }
            Err(e)
        }
    }
}

/// The machine's lock on starting services, held while the returned file
/// is open: `/tmp/sca-services-up.lock`, shared by every user (made
/// world-writable, opened read-only where another user made it, which
/// `flock` allows, and never truncated: a file of another's in a sticky
/// directory is not opened for writing).
fn machine_lock() -> Result<std::fs::File> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join("sca-services-up.lock");
    let file = loop {
        match std::fs::File::open(&path) {
            Ok(file) => break file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => {
                let _ = file.set_permissions(std::fs::Permissions::from_mode(0o666));
                break file;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    };
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// [`up`]'s work; each service it starts is pushed onto `started` at once.
fn start_all(dir: &Path, started: &mut Vec<Service>) -> Result<Vec<(String, String)>> {
    install_packages(&[
        ("dockerd", "docker.io"),
        ("docker", "docker.io"),
        ("docker-registry", "docker-registry"),
        ("busybox", "busybox-static"),
        // The report tests open `experiment report`'s page in it.
        ("chromium", "chromium"),
    ])?;
    let python = start_moto(dir, started)?;
    let password = ecr_password()?;
    start_registry(dir, &password, started)?;
    let docker_host = start_docker(dir, &password, started)?;
    let mut vars = vec![
        ("AWS_ENDPOINT_URL", format!("http://{MOTO_ADDR}")),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("DOCKER_HOST", docker_host),
        ("SCA_TEST_REGISTRY", REGISTRY_ADDR.into()),
    ];
    // The tests read what our code sent with boto3, which came with moto.
    if let Some(python) = python {
        vars.push(("SCA_TEST_PYTHON", python.display().to_string()));
    }
    Ok(vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// `services down`: stop every service an `up` of this checkout started
/// (each has its pid file), newest first.
pub fn down(root: &Path) -> Result<()> {
    stop(root, &Service::ALL, STOP_GRACE)?;
    // Nothing is left for a last run out to stop.
    for (list, _) in left_lists(&state_dir(root)) {
        let _ = std::fs::remove_file(list);
    }
    Ok(())
}

/// Stop what `env`'s `up` started, and only that: a service it found
/// running (a `services up` in the developer's shell, another run's) is
/// left running.
pub fn down_started(root: &Path, env: &ServiceEnv) -> Result<()> {
    stop(root, &env.started, STOP_GRACE)
}

/// The services of a test run or benchmark, shared with the others of this
/// checkout: [`up`] under a shared lock on `target/services/in-use.lock`,
/// held until [`Shared::release`]. Two `cargo xtask test` runs (or a run and
/// a benchmark) share what the first started, which must outlive the first
/// one's end: the last out stops it.
pub struct Shared {
    pub env: ServiceEnv,
    _lock: std::fs::File,
}

/// [`up`], sharing the services (see [`Shared`]). What this call started is
/// listed at once in `left-…` (each service with its pid file's text),
/// while the share is held: the last out stops it even if this run never
/// gets to release it (killed), and only while its pid file still names
/// that process (not one a `services up` by hand started since).
pub fn up_shared(root: &Path) -> Result<Shared> {
    let dir = state_dir(root);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("in-use.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock_shared() {
        eprintln!("waiting for another test run of this checkout to stop its services");
        lock.lock_shared()
            .with_context(|| format!("locking {}", path.display()))?;
    }
    let env = up(root)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let list = dir.join(format!("left-{}-{stamp}", std::process::id()));
    if let Err(e) = crate::fsx::write_atomic(&list, left_list(&dir, &env.started).as_bytes()) {
        let _ = stop(root, &env.started, STOP_GRACE);
        return Err(e).with_context(|| format!("writing {}", list.display()));
    }
    Ok(Shared { env, _lock: lock })
}

impl Shared {
    /// End this use of the services: if no other run or benchmark of this
    /// checkout uses them, stop every service the lists name (this one's
    /// and those left to it); else leave them to the last out.
    pub fn release(self, root: &Path) -> Result<()> {
        let dir = state_dir(root);
        drop(self._lock);
        let path = dir.join("in-use.lock");
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                if !self.env.started.is_empty() {
                    let names: Vec<&str> = self.env.started.iter().map(|s| s.name()).collect();
                    eprintln!(
                        "left {} running: another test run or benchmark of this checkout uses them, and stops them when it ends",
                        names.join(", ")
                    );
                }
                return Ok(());
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        // The last out: every list, this one's included.
        let mut services = Vec::new();
        for (list, text) in left_lists(&dir) {
            for line in text.lines() {
                let Some((name, pid)) = line.split_once(' ') else {
                    continue;
                };
                let Some(service) = Service::ALL.into_iter().find(|s| s.name() == name) else {
                    continue;
                };
                let now =
                    std::fs::read_to_string(dir.join(format!("{name}.pid"))).unwrap_or_default();
                if now.trim() == pid && !services.contains(&service) {
                    services.push(service);
                }
            }
            let _ = std::fs::remove_file(list);
        }
        stop(root, &services, STOP_GRACE)
    }
}

/// The `left-…` list of `started`: each service's name and its pid file's
/// text (pid and start time), a line each.
fn left_list(dir: &Path, started: &[Service]) -> String {
    started
        .iter()
        .filter_map(|s| {
            let pid = std::fs::read_to_string(dir.join(format!("{}.pid", s.name()))).ok()?;
            Some(format!("{} {}\n", s.name(), pid.trim()))
        })
        .collect()
}

/// The `left-…` lists in `dir` and their text.
fn left_lists(dir: &Path) -> Vec<(PathBuf, String)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("left-"))
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            (e.path(), text)
        })
        .collect()
}

/// How long a service has to stop after SIGTERM before SIGKILL: dockerd
/// stops its containers (15 s each at most) and containerd first.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Stop `services` (those of them with a live pid file), newest first:
/// SIGTERM, then SIGKILL after `grace`. A pid file is removed only once its
/// process is gone; one that outlives both signals is an error naming it
/// (its file kept, so a later `services down` still finds it).
fn stop(root: &Path, services: &[Service], grace: Duration) -> Result<()> {
    let dir = state_dir(root);
    let mut left = Vec::new();
    for service in Service::ALL.into_iter().filter(|s| services.contains(s)) {
        let (name, program) = (service.name(), service.program());
        let pid_file = dir.join(format!("{name}.pid"));
        let Some(pid) = ours(&pid_file, program) else {
            let _ = std::fs::remove_file(&pid_file);
            continue;
        };
        let gone = |within: Duration| {
            let start = Instant::now();
            while ours(&pid_file, program).is_some() {
                if start.elapsed() > within {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            true
        };
        signal(&pid, nix::sys::signal::Signal::SIGTERM);
        if !gone(grace) {
            eprintln!("{name} (pid {pid}) did not stop within {grace:?} of SIGTERM: SIGKILL");
            signal(&pid, nix::sys::signal::Signal::SIGKILL);
            if !gone(Duration::from_secs(10)) {
                left.push(format!("{name} (pid {pid})"));
                continue;
            }
        }
        eprintln!("stopped {name} (pid {pid})");
        let _ = std::fs::remove_file(&pid_file);
    }
    if !left.is_empty() {
        bail!(
            "{} still running after SIGKILL: stop it by hand (its pid file is kept in {})",
            left.join(", "),
            dir.display()
        );
    }
    Ok(())
}

/// Write `pid_file` for the daemon `pid` just started: its pid and start
/// time, so that a stale file (the daemon gone, its pid reused by another
/// process) never names someone else's process.
fn record_pid(pid_file: &Path, pid: u32) -> Result<()> {
    let start = crate::procfs::start_time(pid).unwrap_or_default();
    std::fs::write(pid_file, format!("{pid} {start}\n"))
        .with_context(|| format!("writing {}", pid_file.display()))
}

/// The pid in `pid_file`, if that process is still the daemon we started:
/// alive, running `program`, and started when the file says (a file
/// without a start time, from before it was recorded: by name only).
fn ours(pid_file: &Path, program: &str) -> Option<String> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let mut fields = text.split_whitespace();
    let pid = fields.next()?.to_string();
    let recorded: Option<u64> = fields.next().and_then(|s| s.parse().ok());
    let started = pid.parse().ok().and_then(crate::procfs::start_time);
    let same_start = recorded.is_none_or(|t| t == 0 || started == Some(t));
    (same_start && is_running(&pid, program)).then_some(pid)
}

/// Send `sig` to the daemon `pid` we started; whether it stopped is read
/// back from /proc by the caller (a process already gone is no error).
fn signal(pid: &str, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = pid.parse() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Whether process `pid` is alive and runs `program` (not a recycled pid).
fn is_running(pid: &str, program: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let zombie = pid
        .parse()
        .ok()
        .and_then(crate::procfs::stat)
        .is_some_and(|(state, _)| matches!(state, 'Z' | 'X'));
    !zombie && String::from_utf8_lossy(&cmdline).contains(program)
}

/// `apt-get install` the packages whose program is missing (one update,
/// one install); a package named with no program (`""`) is installed.
pub fn install_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing_program = |program: &str| !program.is_empty() && which(program).is_none();
    let mut missing: Vec<&str> = wanted
        .iter()
        .filter(|(program, _)| program.is_empty() || which(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {} with apt-get", missing.join(" "));
    let hint = || {
        format!("could not install {0}: run `apt-get update && apt-get install -y {0}` as root and retry", missing.join(" "))
    };
    let sh = Shell::new()?;
    // Their output goes to stderr, never stdout: `eval "$(cargo xtask
    // services up)"` reads stdout as shell (dpkg's "Setting up x (1.0) ..."
    // is a syntax error there).
    // A fresh machine's own apt run (cloud-init, unattended upgrades) may
    // hold dpkg's lock: waited for, not a failure; a mirror's hiccup retried.
    let (wait, retries) = ("DPkg::Lock::Timeout=600", "Acquire::Retries=3");
    // `update` takes the lists' lock without waiting: tried again, as
    // root (anyone else is told at once to run it as root).
    let root = nix::unistd::geteuid().is_root();
    for attempt in 1.. {
        match cmd!(sh, "apt-get -o {wait} -o {retries} update -qq")
            .quiet()
            .ignore_stdout()
            .run()
        {
            Ok(()) => break,
            Err(e) if root && attempt < 4 => {
                eprintln!(
                    "apt-get update failed ({e}): trying again in {} s",
                    15 * attempt
                );
                std::thread::sleep(Duration::from_secs(15 * attempt));
            }
            Err(e) => return Err(e).with_context(hint),
        }
    }
    let packages = missing.iter();
    cmd!(
        sh,
        "apt-get -o {wait} -o {retries} install -y -qq --no-install-recommends {packages...}"
    )
    .quiet()
    .ignore_stdout()
    .env("DEBIAN_FRONTEND", "noninteractive")
    .run()
    .with_context(hint)?;
    if wanted.iter().any(|(program, _)| missing_program(program)) {
        bail!(hint());
    }
    Ok(())
}

/// The moto release the tests are written against, installed where none is.
const MOTO: &str = "moto[server]==5.2.1";

/// Its dependencies' versions, as pip constraints: pinned, so that a new
/// release of one (werkzeug, flask, boto3) cannot change or break CI.
const MOTO_CONSTRAINTS: &str = include_str!("moto-constraints.txt");

/// Start the AWS emulator unless one answers; the Python whose boto3 the
/// tests must use, where it is not the `python3` on PATH (moto installed
/// in a virtualenv of ours).
fn start_moto(dir: &Path, started: &mut Vec<Service>) -> Result<Option<PathBuf>> {
    let addr: SocketAddr = MOTO_ADDR.parse().expect("a valid address");
    let venv = dir.join("moto-venv");
    if answers(addr) {
        return Ok(installed_moto(&venv).and_then(|(_, python)| python));
    }
    let (program, python) = install_moto(&venv)?;
    let log_path = dir.join("moto.log");
    let child = daemon(&program, &log_path)?
        .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
        .spawn()
        .context("starting moto_server")?;
    let mut child = recorded(child, &dir.join("moto.pid"), Service::Moto, started)?;
    wait_answering(addr, Duration::from_secs(60), &mut child, &log_path)?;
    eprintln!("started moto_server on {addr} (pid {})", child.id());
    Ok(python)
}

/// [`install_moto`]'s answer where moto is installed already: the
/// `moto_server` on PATH, else the one in the virtualenv `venv`.
fn installed_moto(venv: &Path) -> Option<(PathBuf, Option<PathBuf>)> {
    let in_venv = venv.join("bin/moto_server");
    which("moto_server").map(|found| (found, None)).or_else(|| {
        in_venv
            .exists()
            .then(|| (in_venv, Some(venv.join("bin/python3"))))
    })
}

/// `moto_server` and, where it lives in the virtualenv `venv`, its Python:
/// the one on PATH, else installed with that Python's pip, else (Debian's
/// own Python has no pip and refuses one, PEP 668) into `venv`.
fn install_moto(venv: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    if let Some(installed) = installed_moto(venv) {
        return Ok(installed);
    }
    let (in_venv, python) = (venv.join("bin/moto_server"), venv.join("bin/python3"));
    install_packages(&[("python3", "python3")])?;
    let sh = Shell::new()?;
    let constraints = venv.with_file_name("moto-constraints.txt");
    crate::fsx::write_atomic(&constraints, MOTO_CONSTRAINTS.as_bytes())?;
    eprintln!("installing {MOTO} from PyPI");
    let pip = cmd!(sh, "python3 -m pip install --quiet -c {constraints} {MOTO}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run();
    if let (Ok(()), Some(found)) = (pip, which("moto_server")) {
        return Ok((found, None));
    }
    eprintln!("installing {MOTO} into {}", venv.display());
    let make = || {
        cmd!(sh, "python3 -m venv {venv}")
            .quiet()
            .ignore_stdout()
            .run()
    };
    if make().is_err() {
        // Debian ships venv's pip apart.
        install_packages(&[("", "python3-venv")])?;
        make().with_context(|| format!("making a virtualenv in {}", venv.display()))?;
    }
    let venv_pip = venv.join("bin/pip");
    cmd!(sh, "{venv_pip} install --quiet -c {constraints} {MOTO}")
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| {
            format!(
                "could not install {MOTO}: run `python3 -m pip install -c {} '{MOTO}'` and retry",
                constraints.display()
            )
        })?;
    Ok((in_venv, Some(python)))
}

/// `program` as one of our daemons: no stdin, its output in `log`, and a
/// process group of its own, not the terminal's (a Ctrl-C stops the tests
/// first, then these as the run ends, not all at once).
fn daemon(program: impl AsRef<std::ffi::OsStr>, log: &Path) -> Result<Command> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    Ok(cmd)
}

/// `child`, just started as `service`, recorded in `pid_file` and pushed
/// onto `started`; killed where it cannot be recorded (nothing would ever
/// stop it).
fn recorded(
    mut child: std::process::Child,
    pid_file: &Path,
    service: Service,
    started: &mut Vec<Service>,
) -> Result<std::process::Child> {
    if let Err(e) = record_pid(pid_file, child.id()) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    started.push(service);
    Ok(child)
}

/// Wait until something answers on `addr`, while `child` (the daemon that
/// should) lives: one that exits (the port taken by another, a bad config)
/// is an error with its log's end, not a wait that another process's
/// answer ends.
fn wait_answering(
    addr: SocketAddr,
    timeout: Duration,
    child: &mut std::process::Child,
    log: &Path,
) -> Result<()> {
    wait_ready(&addr.to_string(), || answers(addr), timeout, child, log)
}

/// Wait until `ready` (the daemon `child` answers at `at`), while `child`
/// lives: one that exits first is an error with the end of its `log`.
fn wait_ready(
    at: &str,
    ready: impl Fn() -> bool,
    timeout: Duration,
    child: &mut std::process::Child,
    log: &Path,
) -> Result<()> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "{} exited ({status}) before it answered on {at}; see {}:\n{}",
                log.file_stem().unwrap_or_default().to_string_lossy(),
                log.display(),
                tail(log, 15)
            );
        }
        if ready() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "nothing answered on {at} within {timeout:?}; see {}:\n{}",
                log.display(),
                tail(log, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A Docker engine that answers and reaches the test registry; its
/// `DOCKER_HOST`. `password` is the registry's.
fn start_docker(dir: &Path, password: &str, started: &mut Vec<Service>) -> Result<String> {
    let own_socket = docker_socket_path(dir);
    let own_host = format!("unix://{}", own_socket.display());
    if docker_ping(&own_host) {
        return Ok(own_host);
    }
    // Another engine serves only where it can log in to the registry on
    // this machine's loopback: a CI job container is handed its host's
    // socket, whose engine is in another network namespace (and sees
    // other paths), and pushes and mounts would fail there.
    let usable = |host: &str, what: &str| {
        if !docker_ping(host) {
            return false;
        }
        if !docker_logs_in(host, REGISTRY_ADDR, password) {
            eprintln!(
                "the Docker engine at {host} ({what}) cannot reach the test registry on {REGISTRY_ADDR} (another network namespace, as a CI container's host engine): starting one of our own"
            );
            return false;
        }
        eprintln!("using the Docker engine at {host} ({what})");
        true
    };
    if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
        if usable(&host, "DOCKER_HOST") {
            return Ok(host);
        }
    }
    let default_host = format!("unix://{DEFAULT_DOCKER_SOCKET}");
    if usable(&default_host, "the host's") {
        return Ok(default_host);
    }
    let exec_root = short_runtime_dir(dir).join("exec");
    let data_root = dir.join("docker");
    for d in [&exec_root, &data_root] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let _ = std::fs::remove_file(&own_socket);
    // dockerd refuses to start while its own pidfile names a live process:
    // one left by a dockerd of ours that was killed is removed (the pid may
    // since belong to anything).
    let daemon_pid = dir.join("dockerd.daemon.pid");
    if ours(&dir.join("dockerd.pid"), "dockerd").is_none() {
        let _ = std::fs::remove_file(&daemon_pid);
    }
    let log_path = dir.join("dockerd.log");
    let child = daemon("dockerd", &log_path)?
        .arg("--host")
        .arg(&own_host)
        .arg("--data-root")
        .arg(&data_root)
        .arg("--exec-root")
        .arg(&exec_root)
        .arg("--pidfile")
        .arg(&daemon_pid)
        .spawn()
        .context("starting dockerd")?;
    let mut child = recorded(child, &dir.join("dockerd.pid"), Service::Dockerd, started)?;
    let ready = || docker_ping(&own_host);
    wait_ready(
        &own_host,
        ready,
        Duration::from_secs(90),
        &mut child,
        &log_path,
    )?;
    eprintln!("started dockerd on {own_host} (pid {})", child.id());
    Ok(own_host)
}

/// `target/services/docker.sock`, or a short path under /tmp when the
/// workspace path is too long for a unix socket (108 bytes).
fn docker_socket_path(dir: &Path) -> PathBuf {
    let socket = dir.join("docker.sock");
    if socket.as_os_str().len() < 90 {
        socket
    } else {
        short_runtime_dir(dir).join("docker.sock")
    }
}

/// `/tmp/sca-docker-<hash of the workspace>`: containerd's sockets live in the
/// exec root, whose path must stay short.
fn short_runtime_dir(dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let hash = hex::encode(Sha256::digest(dir.as_os_str().as_encoded_bytes()));
    PathBuf::from(format!("/tmp/sca-docker-{}", &hash[..10]))
}

/// Whether the engine at `host` (`unix://PATH` or `tcp://HOST:PORT`) answers `GET /_ping`.
pub fn docker_ping(host: &str) -> bool {
    let request = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n";
    docker_exchange(host, request, Duration::from_secs(5))
        .is_some_and(|r| r.starts_with("HTTP/1.") && r.contains(" 200 ") && r.ends_with("OK"))
}

/// Whether the engine at `host` logs in to the registry at `registry` as
/// `AWS` with `password` (`POST /auth`, which the engine checks against the
/// registry itself): for the test registry, that it reaches this machine's
/// loopback.
pub fn docker_logs_in(host: &str, registry: &str, password: &str) -> bool {
    let body = serde_json::json!({
        "username": "AWS",
        "password": password,
        "serveraddress": registry,
    })
    .to_string();
    let request = format!(
        "POST /auth HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    docker_exchange(host, request.as_bytes(), Duration::from_secs(30))
        .is_some_and(|r| r.starts_with("HTTP/1.") && r.contains(" 200 "))
}

/// One HTTP/1.0 exchange with the engine at `host`; its whole answer.
fn docker_exchange(host: &str, request: &[u8], timeout: Duration) -> Option<String> {
    if let Some(path) = host.strip_prefix("unix://") {
        let mut s = UnixStream::connect(path).ok()?;
        let _ = s.set_read_timeout(Some(timeout));
        exchange(&mut s, request)
    } else if let Some(addr) = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
    {
        let mut s = TcpStream::connect(addr).ok()?;
        let _ = s.set_read_timeout(Some(timeout));
        exchange(&mut s, request)
    } else {
        None
    }
}

fn exchange(stream: &mut (impl Read + Write), request: &[u8]) -> Option<String> {
    stream.write_all(request).ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The password of moto's ECR `GetAuthorizationToken`, which the registry's
/// htpasswd accepts for user `AWS`.
fn ecr_password() -> Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(format!("http://{MOTO_ADDR}"))
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ecr::config::Credentials::new(
                "test", "test", None, None, "services",
            ))
            .load()
            .await;
        let out = aws_sdk_ecr::Client::new(&config)
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "moto ECR GetAuthorizationToken: {}",
                    aws_sdk_ecr::error::DisplayErrorContext(e)
                )
            })?;
        let token = out
            .authorization_data()
            .first()
            .and_then(|d| d.authorization_token())
            .context("moto returned no ECR token")?;
        use base64::Engine as _;
        let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(token)?)?;
        let (_, password) = decoded
            .split_once(':')
            .context("the ECR token is not AWS:PASSWORD")?;
        Ok(password.to_string())
    })
}

fn start_registry(dir: &Path, password: &str, started: &mut Vec<Service>) -> Result<()> {
    let addr: SocketAddr = REGISTRY_ADDR.parse().expect("a valid address");
    let reg_dir = dir.join("registry");
    std::fs::create_dir_all(reg_dir.join("data"))?;
    let htpasswd = reg_dir.join("htpasswd");
    let current = std::fs::read_to_string(&htpasswd).unwrap_or_default();
    let valid = current
        .trim()
        .strip_prefix("AWS:")
        .is_some_and(|hash| bcrypt::verify(password, hash).unwrap_or(false));
    if !valid {
        // Cost 6: the registry checks the password on every request of a push.
        let hash = bcrypt::hash(password, 6).context("hashing the registry password")?;
        // The password's hash: for the registry alone, unlike what else is written here.
        crate::fsx::write_atomic_mode(&htpasswd, format!("AWS:{hash}\n").as_bytes(), 0o600)?;
    }
    let pid_file = dir.join("registry.pid");
    if answers(addr) {
        if registry_accepts(addr, password) {
            return Ok(());
        }
        // Ours, started with an older password: restart it.
        let Some(pid) = ours(&pid_file, "docker-registry") else {
            bail!("something that is not our test registry listens on {addr}: stop it and retry");
        };
        signal(&pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while answers(addr) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let config = reg_dir.join("config.yml");
    let yaml = format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: sca-test-registry\nauth:\n  htpasswd:\n    realm: sca-test-registry\n    path: {htpasswd}\n",
        data = reg_dir.join("data").display(),
        htpasswd = htpasswd.display(),
    );
    crate::fsx::write_atomic(&config, yaml.as_bytes())?;
    let log_path = dir.join("registry.log");
    let child = daemon("docker-registry", &log_path)?
        .arg("serve")
        .arg(&config)
        .spawn()
        .context("starting docker-registry")?;
    let mut child = recorded(child, &pid_file, Service::Registry, started)?;
    wait_answering(addr, Duration::from_secs(30), &mut child, &log_path)?;
    if !registry_accepts(addr, password) {
        bail!(
            "the registry on {addr} refuses the ECR token; see {}",
            log_path.display()
        );
    }
    eprintln!("started docker-registry on {addr} (pid {})", child.id());
    Ok(())
}

/// Whether the registry at `addr` accepts `AWS:password` on `GET /v2/`.
fn registry_accepts(addr: SocketAddr, password: &str) -> bool {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let request =
        format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\n\r\n");
    exchange(&mut s, request.as_bytes())
        .is_some_and(|r| r.starts_with("HTTP/1.") && r.contains(" 200 "))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether something accepts TCP connections on `addr`.
pub fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process whose command line names `program`, as a service of ours
    /// would, with its pid file under `root`.
    fn fake(root: &Path, service: Service) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let child = Command::new("sleep")
            .arg0(service.program())
            .arg("60")
            .spawn()
            .unwrap();
        // Until its exec is through, its command line reads empty.
        let pid = child.id().to_string();
        let start = Instant::now();
        while !is_running(&pid, service.program()) {
            assert!(start.elapsed() < Duration::from_secs(10), "{pid} never ran");
            std::thread::sleep(Duration::from_millis(10));
        }
        let dir = state_dir(root);
        std::fs::create_dir_all(&dir).unwrap();
        record_pid(&dir.join(format!("{}.pid", service.name())), child.id()).unwrap();
        child
    }

    /// Two test runs of one checkout: the first to end leaves the services
    /// it started to the other, still testing against them; the last out
    /// stops them, and only while their pid files name the processes listed.
    #[test]
    fn the_last_test_run_out_stops_what_the_first_started() {
        let root = tempfile::tempdir().unwrap();
        let dir = state_dir(root.path());
        let mut registry = fake(root.path(), Service::Registry);
        let mut moto = fake(root.path(), Service::Moto);
        let lock = || {
            let path = dir.join("in-use.lock");
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .unwrap();
            f.lock_shared().unwrap();
            f
        };
        let shared = |started: Vec<Service>| {
            let lock = lock();
            let text = left_list(&dir, &started);
            let n = std::fs::read_dir(&dir).unwrap().count();
            std::fs::write(dir.join(format!("left-test-{n}")), text).unwrap();
            Shared {
                env: ServiceEnv {
                    vars: Vec::new(),
                    started,
                },
                _lock: lock,
            }
        };
        let first = shared(vec![Service::Registry, Service::Moto]);
        let second = shared(Vec::new());
        first.release(root.path()).unwrap();
        assert!(
            registry.try_wait().unwrap().is_none(),
            "stopped under the second run"
        );
        // moto restarted by hand since: its pid file names another process.
        std::fs::write(dir.join("moto.pid"), "1 1\n").unwrap();
        second.release(root.path()).unwrap();
        assert!(
            !registry.wait().unwrap().success(),
            "left running after both"
        );
        assert!(
            moto.try_wait().unwrap().is_none(),
            "a process no list names was stopped"
        );
        let _ = moto.kill();
        assert!(left_lists(&dir).is_empty());
    }

    /// `cargo xtask test` stops what its own `up` started and leaves a
    /// service it found running (a `services up` in the developer's shell).
    #[test]
    fn only_the_services_an_up_started_are_stopped() {
        let root = tempfile::tempdir().unwrap();
        let mut moto = fake(root.path(), Service::Moto);
        let mut registry = fake(root.path(), Service::Registry);
        let env = ServiceEnv {
            vars: Vec::new(),
            started: vec![Service::Registry],
        };
        down_started(root.path(), &env).unwrap();
        let ended = registry.wait().unwrap();
        assert!(!ended.success(), "the registry was stopped by a signal");
        assert!(moto.try_wait().unwrap().is_none(), "moto was stopped too");
        // `services down` stops every recorded one.
        down(root.path()).unwrap();
        assert!(!moto.wait().unwrap().success());
        assert!(!state_dir(root.path()).join("moto.pid").exists());
    }

    /// A service that ignores SIGTERM is killed after the grace, and only
    /// then reported stopped and its pid file removed.
    #[test]
    fn a_service_deaf_to_sigterm_is_killed_after_the_grace() {
        use std::os::unix::process::CommandExt;
        let root = tempfile::tempdir().unwrap();
        // bash execs `sleep` with SIGTERM ignored, under moto's name.
        let mut deaf = Command::new("bash")
            .args(["-c", "trap '' TERM; exec -a moto_server sleep 60"])
            .arg0("bash")
            .spawn()
            .unwrap();
        // Until the exec, after the trap: bash's own command line holds
        // the name too, so only the program's name (argv[0]) tells.
        let argv0 = format!("/proc/{}/cmdline", deaf.id());
        let start = Instant::now();
        while std::fs::read(&argv0).map_or(true, |c| !c.starts_with(b"moto_server\0")) {
            assert!(start.elapsed() < Duration::from_secs(10), "never exec'd");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid_file = state_dir(root.path()).join("moto.pid");
        std::fs::create_dir_all(pid_file.parent().unwrap()).unwrap();
        record_pid(&pid_file, deaf.id()).unwrap();
        stop(root.path(), &[Service::Moto], Duration::from_millis(500)).unwrap();
        let ended = deaf.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(ended.signal(), Some(9), "{ended:?}");
        assert!(!pid_file.exists());
    }

    /// `services up` prints values `eval` reads back as they are.
    #[test]
    fn exported_values_survive_eval() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("x");
        let value = format!("unix:///a b/it's $(touch {}) `true`;", marker.display());
        let script = format!("export V={}; printf %s \"$V\"", shell_quote(&value));
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), value);
        assert!(!marker.exists(), "the value ran as a command");
    }

    /// A stale pid file whose pid now belongs to another process (started
    /// at another time) names nothing of ours: that process is left alone.
    #[test]
    fn a_reused_pid_is_not_signalled() {
        let root = tempfile::tempdir().unwrap();
        let mut other = fake(root.path(), Service::Dockerd);
        let pid_file = state_dir(root.path()).join("dockerd.pid");
        let pid = other.id();
        let start = crate::procfs::start_time(pid).unwrap();
        assert!(ours(&pid_file, "dockerd").is_some());
        std::fs::write(&pid_file, format!("{pid} {}\n", start + 1)).unwrap();
        down(root.path()).unwrap();
        assert!(
            other.try_wait().unwrap().is_none(),
            "another process was stopped"
        );
        assert!(!pid_file.exists(), "the stale file is cleared");
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
