//! `cargo xtask bench ...`: benchmarks that record their figures, with the
//! machine and date, between markers in BENCHMARKS.md.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::cmd;

use crate::{flags, fsx, services, workspace};

mod dockerfile;
mod faults;
mod first_result;
mod gpu;
mod image;
mod launch;
mod train;
mod venv;

impl flags::Bench {
    pub fn run(self) -> Result<ExitCode> {
        match self {
            flags::Bench::Validate(cmd) => cmd.run(),
            flags::Bench::Launch(cmd) => cmd.run(),
            flags::Bench::Train(cmd) => cmd.run(),
            flags::Bench::Image(cmd) => cmd.run(),
            flags::Bench::Gpu(cmd) => cmd.run(),
            flags::Bench::Faults(cmd) => cmd.run(),
            flags::Bench::FirstResult(cmd) => cmd.run(),
        }
    }
}

impl flags::BenchValidate {
    /// Validate `files` generated experiment files in-process (as `experiment
    /// validate` does, the workspace defaults read from Cargo.toml included), and the same files with
    /// Python's `jsonschema` (schema only, a lower bar) as the peer.
    pub fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let dir = tempfile::tempdir()?;
        let template = std::fs::read_to_string(root.join("experiments/quickstart.toml"))?;
        let mut files = Vec::with_capacity(self.files);
        for i in 0..self.files {
            let f = dir.path().join(format!("exp-{i:05}.toml"));
            let text = template
                .replace("name = \"quickstart\"", &format!("name = \"bench-{i}\""))
                .replace("seed = 7", &format!("seed = {i}"))
                .replace("../target/", &format!("{}/target/", root.display()));
            std::fs::write(&f, text)?;
            files.push(f);
        }

        let start = Instant::now();
        let defaults = workspace::defaults()?;
        let mut invalid = 0;
        for f in &files {
            invalid += usize::from(!sca_spec::validate_file(f, &defaults).is_valid());
        }
        let ours = start.elapsed().as_secs_f64();
        if invalid > 0 {
            bail!("{invalid} generated files were invalid: the benchmark is broken");
        }

        let peer = python_peer(&root.join(sca_spec::SCHEMA_PATH), dir.path())?;
        let n = self.files;
        let rows = format!(
            "| files | sca-spec (schema + semantic checks) | Python jsonschema (schema only) | ratio |\n|---|---|---|---|\n| {n} | {:.3} s ({:.0} files/s) | {:.3} s ({:.0} files/s) | {:.1}x |\n",
            ours,
            n as f64 / ours,
            peer,
            n as f64 / peer,
            peer / ours
        );
        println!("{rows}");
        if !self.no_record {
            record(&root, "validate", &format!("`cargo xtask bench validate --files {n}` (dev profile, as `cargo xtask` runs)\n\n{rows}"))?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Seconds Python's `jsonschema` takes to validate every `*.toml` in `dir`.
fn python_peer(schema: &Path, dir: &Path) -> Result<f64> {
    let script = r#"
import json, pathlib, sys, time, tomllib
import jsonschema
t = time.perf_counter()
v = jsonschema.Draft202012Validator(json.loads(pathlib.Path(sys.argv[1]).read_text()))
bad = sum(1 for f in sorted(pathlib.Path(sys.argv[2]).glob("*.toml")) if not v.is_valid(tomllib.loads(f.read_text())))
print(json.dumps({"seconds": time.perf_counter() - t, "invalid": bad}))
"#;
    let sh = workspace::shell(&workspace::root())?;
    let out = cmd!(sh, "python3 -c {script} {schema} {dir}")
        .quiet()
        .ignore_status()
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!(
            "the Python peer failed (is `jsonschema` installed? `pip install jsonschema`): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    // A peer that refuses the files stops at their first error: faster, and
    // no longer the same work.
    match v["invalid"].as_u64() {
        Some(0) => {}
        Some(n) => {
            bail!("the Python peer found {n} of the files invalid: it measured something else")
        }
        None => bail!("the Python peer printed no count of invalid files"),
    }
    v["seconds"]
        .as_f64()
        .context("the Python peer printed no timing")
}

/// Replace the section `name` of BENCHMARKS.md (between `<!-- bench:NAME -->`
/// and `<!-- /bench:NAME -->`, appended when absent) with `body`, stamped with
/// this machine and the date.
pub fn record(root: &Path, name: &str, body: &str) -> Result<()> {
    record_on(root, name, body, &machine())
}

/// [`record`] for figures measured on another machine, described by `machine`.
pub fn record_on(root: &Path, name: &str, body: &str, machine: &str) -> Result<()> {
    let path = root.join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n\nWritten by `cargo xtask bench ...`; each section is replaced when its benchmark runs again.\n".into());
    let (open, close) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let section = format!(
        "{open}\n{body}\nMachine: {machine}. Recorded {}.\n{close}",
        date()
    );
    let new = match (text.find(&open), text.find(&close)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{section}{}", &text[..a], &text[b + close.len()..])
        }
        _ => format!("{}\n{section}\n", text.trim_end()),
    };
    fsx::write_atomic(&path, new.as_bytes())?;
    println!("recorded in BENCHMARKS.md");
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cores} cores of {cpu}")
}

pub(crate) fn date() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Run `f` with the test services (`AWS_ENDPOINT_URL` set: the caller's;
/// otherwise started here, with the Docker engine and registry, and stopped
/// afterwards), whose environment is then also set in this process for
/// in-process clients (S3 reads, the engine, ECR).
pub(crate) fn with_services<T>(
    root: &Path,
    f: impl FnOnce(&[(String, String)]) -> Result<T>,
) -> Result<T> {
    if std::env::var_os("AWS_ENDPOINT_URL").is_some() {
        return f(&[]);
    }
    let services = services::up_shared(root)?;
    // Only this thread runs here; the loader's S3 client reads these.
    for (k, v) in &services.env.vars {
        std::env::set_var(k, v);
    }
    let result = f(&services.env.vars);
    services.release(root)?;
    result
}

/// Sorts `v`; its median (of an even count, the mean of the middle two:
/// two rounds give their mean, not the better one).
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n.is_multiple_of(2) && n > 0 {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(super::median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&mut [1.61, 123.13]), (1.61 + 123.13) / 2.0);
        assert_eq!(super::median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
