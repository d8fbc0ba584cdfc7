//! The benchmarks' Python virtualenvs under `target/`: created with
//! `python3 -m venv` and filled with pip on first use, through xshell.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::cmd;

use crate::workspace;

/// A virtualenv `dir` whose python imports `modules` (`"torch, numpy"`);
/// `install` fills it when it does not yet: it gets the venv's python and
/// says whether pip succeeded.
pub(super) fn ensure(
    dir: &Path,
    modules: &str,
    what: &str,
    install: impl FnOnce(&Path) -> Result<bool>,
) -> Result<PathBuf> {
    let sh = workspace::shell(&workspace::root())?;
    let python = dir.join("bin/python");
    let script = format!("import {modules}");
    let ready = || {
        python.is_file()
            && cmd!(sh, "{python} -c {script}")
                .quiet()
                .ignore_stderr()
                .run()
                .is_ok()
    };
    if ready() {
        return Ok(python);
    }
    eprintln!("installing {what} into {}", dir.display());
    if !python.is_file() {
        cmd!(sh, "python3 -m venv {dir}")
            .quiet()
            .run()
            .with_context(|| format!("could not create the virtualenv {}", dir.display()))?;
    }
    if !install(&python)? || !ready() {
        bail!(
            "could not install {what} into {} (`{} -m pip install ...` failed; is there disk space and access to PyPI?)",
            dir.display(),
            python.display()
        );
    }
    Ok(python)
}

/// `python -m pip install --quiet ARGS`, its output shown; whether it
/// succeeded (a failure is printed, and the caller names the fix).
pub(super) fn pip_install(python: &Path, args: &[&str]) -> Result<bool> {
    let sh = workspace::shell(&workspace::root())?;
    let installed = cmd!(sh, "{python} -m pip install --quiet {args...}")
        .quiet()
        .run()
        .inspect_err(|e| eprintln!("{e}"))
        .is_ok();
    Ok(installed)
}
