//! Shared helpers for the end-to-end tests in `tests/tests/`: the workspace
//! root, the built `xtask` binary, and the services the tests need.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

/// The `xtask` binary, built once per test process with the same cargo and target dir as the tests.
pub fn xtask_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root())
            .args(["build", "--quiet", "-p", "xtask"])
            .status()
            .expect("running cargo build -p xtask");
        assert!(status.success(), "cargo build -p xtask failed");
        target_dir().join("debug").join(format!("xtask{}", std::env::consts::EXE_SUFFIX))
    })
    .clone()
}

/// `cargo xtask ARGS...` as a command, run from the workspace root.
pub fn xtask<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(xtask_bin());
    cmd.current_dir(root()).args(args);
    cmd
}

/// The cargo target directory the tests were built into.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// The value of a variable that `cargo xtask test` sets; panics (a test failure, never a skip) when it is missing.
pub fn service_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: start the services with `cargo xtask test` (or `eval $(cargo xtask services up)`)"))
}
