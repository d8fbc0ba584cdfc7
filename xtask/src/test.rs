//! `cargo xtask test`: the README's test command. Starts the services the
//! tests need, runs every test of the workspace against them, and stops what
//! it started, whatever the outcome. It reports the free disk before and
//! after: a full disk breaks builds and image layers in ways that name no
//! test.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::{flags, services, workspace};

impl flags::Test {
    pub fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let before = free_bytes(&root);
        if let Some(free) = before {
            eprintln!("disk: {} free under {}", gb(free), root.display());
            if free < NEEDS_BYTES {
                eprintln!(
                    "warning: a test run from a clean clone needs up to {} (target/ and the Docker engine's data): free some, or expect 'no space left on device' failures",
                    gb(NEEDS_BYTES)
                );
            }
        }
        let env = services::up(&root)?;
        let sh = workspace::shell(&root)?;
        // Every test target runs even after one fails: a CI report names
        // all the failures, not the first target's.
        let mut test = workspace::cargo(&sh);
        // The developer's own AWS, Docker and registry settings never reach
        // the tests: they would send real credentials to the emulators (or
        // pass an anonymous-push check with them), or point at another engine.
        for name in LEAKY_VARS {
            test = test.env_remove(name);
        }
        let passed = test
            .args(["test", "--workspace", "--locked", "--no-fail-fast"])
            .args(&self.cargo_args)
            .envs(env.vars.iter().map(|(k, v)| (k, v)))
            .run()
            .inspect_err(|e| eprintln!("cargo test failed: {e}"))
            .is_ok();
        services::down_started(&root, &env)?;
        if let (Some(before), Some(after)) = (before, free_bytes(&root)) {
            eprintln!(
                "disk: {} free under {} ({} less than at the start)",
                gb(after),
                root.display(),
                gb(before.saturating_sub(after))
            );
        }
        Ok(if passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// Variables of the developer's shell that the tests must not inherit
/// (the services' own, such as `DOCKER_HOST`, are set over them).
const LEAKY_VARS: [&str; 9] = [
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_DEFAULT_REGION",
    "DOCKER_CONFIG",
    "DOCKER_CONTEXT",
    "SCA_REGISTRY_USERNAME",
    "SCA_REGISTRY_PASSWORD",
];

/// Below this much free disk the run warns: `.ci/run` from a clean clone
/// peaked at 7.7 GiB (target/ and the Docker engine's data; 2026-11-27), plus
/// the crates and wheels a clean machine downloads.
const NEEDS_BYTES: u64 = 10 << 30;

/// Bytes available to this user on the file system holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    #[allow(clippy::useless_conversion)] // the field widths differ by platform
    Some(u64::from(stat.blocks_available()) * u64::from(stat.fragment_size()))
}

fn gb(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}
