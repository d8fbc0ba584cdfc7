//! `cargo xtask bench first-result`: what a new user waits for. From a fresh
//! clone with an empty `target/` (the cargo registry warm, as after any
//! earlier build on the machine): `experiment validate` of the quickstart,
//! then `experiment run` of it until the model is written, each with the
//! slowest crates of its build from `cargo build --timings`.
//!
//! The two builds are the ones the commands run: `cargo xtask` builds the
//! xtask binary, and the local backend builds `-p xtask -p sca-train`. They
//! run here as explicit `cargo build --timings` steps (so their timings are
//! kept) before the commands, whose own builds are then no-ops.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{flags, git, workspace};

/// One revision's figures, seconds.
#[derive(Debug, Clone)]
struct Figures {
    rev: String,
    /// `cargo build -p xtask` + `experiment validate`.
    validate: f64,
    /// The above, then the trainer's build and `experiment run`.
    first_result: f64,
    /// The crates that took longest, over both builds: (name, seconds).
    top: Vec<(String, f64)>,
    crates: usize,
}

impl flags::BenchFirstResult {
    pub fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let revs = if self.rev.is_empty() {
            vec!["HEAD".to_string()]
        } else {
            self.rev.clone()
        };
        let mut all = Vec::new();
        for rev in &revs {
            let figures = measure(&root, rev, self.top)?;
            println!(
                "{rev}: validate {:.0} s, first result {:.0} s",
                figures.validate, figures.first_result
            );
            all.push(figures);
        }
        let body = render(&all);
        println!("{body}");
        if !self.no_record {
            super::record(&root, "first-result", &body)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn measure(root: &Path, rev: &str, top: usize) -> Result<Figures> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    git::clone_at(root, &repo, rev)?;
    let short = git::revision(&repo)?
        .map(|r| r.short().to_string())
        .unwrap_or_else(|| rev.to_string());
    let target = repo.join("target");
    let sh = workspace::shell(&repo)?;
    let cargo = || workspace::cargo(&sh).env("CARGO_TARGET_DIR", &target);
    // The registry warm, as the goal says; not timed.
    cargo()
        .args(["fetch", "--locked"])
        .run()
        .context("cargo fetch in the fresh clone")?;

    let start = Instant::now();
    cargo()
        .args(["build", "--locked", "--timings", "-p", "xtask"])
        .run()
        .context("building xtask in the fresh clone")?;
    let mut units = timings(&target)?;
    let xtask = target.join("debug/xtask");
    sh.cmd(&xtask)
        .args(["experiment", "validate", "experiments/quickstart.toml"])
        .env("CARGO_TARGET_DIR", &target)
        .run()
        .context("experiment validate in the fresh clone")?;
    let validate = start.elapsed().as_secs_f64();

    cargo()
        .args([
            "build",
            "--locked",
            "--timings",
            "-p",
            "xtask",
            "-p",
            "sca-train",
        ])
        .run()
        .context("building the trainer in the fresh clone")?;
    units.extend(timings(&target)?);
    sh.cmd(&xtask)
        .args(["experiment", "run", "experiments/quickstart.toml"])
        .env("CARGO_TARGET_DIR", &target)
        .run()
        .context("experiment run in the fresh clone")?;
    let first_result = start.elapsed().as_secs_f64();

    let crates = units.len();
    units.sort_by(|a, b| b.1.total_cmp(&a.1));
    units.truncate(top);
    Ok(Figures {
        rev: short,
        validate,
        first_result,
        top: units,
        crates,
    })
}

/// The newest `cargo-timing.html` under `target`: seconds per crate (its
/// build script and library summed).
fn timings(target: &Path) -> Result<Vec<(String, f64)>> {
    let dir = target.join("cargo-timings");
    let newest = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("cargo-timing-") && n.ends_with(".html"))
        })
        .max()
        .with_context(|| format!("no cargo-timing-*.html in {}", dir.display()))?;
    let html = std::fs::read_to_string(&newest)?;
    parse_unit_data(&html).with_context(|| format!("reading {}", newest.display()))
}

/// The `UNIT_DATA` array cargo embeds in its timings page, summed per crate.
fn parse_unit_data(html: &str) -> Result<Vec<(String, f64)>> {
    let start = html
        .find("const UNIT_DATA = ")
        .context("no UNIT_DATA in the timings page (has cargo's format changed?)")?
        + "const UNIT_DATA = ".len();
    let mut stream = serde_json::Deserializer::from_str(&html[start..]).into_iter();
    let units: Vec<serde_json::Value> = match stream.next() {
        Some(v) => serde_json::from_value(v?)?,
        None => bail!("UNIT_DATA is empty"),
    };
    let mut by_crate: std::collections::BTreeMap<String, f64> = Default::default();
    for u in units {
        let name = u["name"].as_str().context("a unit without a name")?;
        let secs = u["duration"]
            .as_f64()
            .context("a unit without a duration")?;
        *by_crate.entry(name.to_string()).or_default() += secs;
    }
    Ok(by_crate.into_iter().collect())
}

fn render(all: &[Figures]) -> String {
    let mut s = String::from(
        "`cargo xtask bench first-result` (a fresh clone, empty `target/`, warm registry; the README's first command on the quickstart):\n\n\
         | revision | `experiment validate` | `experiment run` to the first model | crates compiled |\n|---|---|---|---|\n",
    );
    for f in all {
        s += &format!(
            "| {} | {:.1} min | {:.1} min | {} |\n",
            f.rev,
            f.validate / 60.0,
            f.first_result / 60.0,
            f.crates
        );
    }
    for f in all {
        s += &format!("\nSlowest crates at {} (`cargo build --timings`, seconds of one core's build, overlapping on 2 cores):\n\n", f.rev);
        s += &f
            .top
            .iter()
            .map(|(n, t)| format!("{n} {t:.0} s"))
            .collect::<Vec<_>>()
            .join(", ");
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_data_is_summed_per_crate() {
        let html = r#"<script>
const UNIT_DATA = [{"i":0,"name":"ring","version":"0.17","mode":"run-custom-build","target":"","start":0.1,"duration":3.5},
{"i":1,"name":"ring","version":"0.17","mode":"todo","target":"","start":4.0,"duration":10.25},
{"i":2,"name":"xtask","version":"0.1.0","mode":"todo","target":" bin \"xtask\"","start":20.0,"duration":30.0}];
const CONCURRENCY_DATA = [];
</script>"#;
        let got = super::parse_unit_data(html).unwrap();
        assert_eq!(
            got,
            vec![("ring".to_string(), 13.75), ("xtask".to_string(), 30.0)]
        );
        assert!(super::parse_unit_data("<html></html>").is_err());
    }
}
