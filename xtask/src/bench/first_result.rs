//! `cargo xtask bench first-result`: what a new user waits for. From a fresh
//! clone with an empty `target/` (the cargo registry warm, as after any
//! earlier build on the machine): `experiment validate` of the quickstart,
//! then `experiment run` of it until the model is written, each with the
//! slowest crates of its build from `cargo build --timings`.
//!
//! The builds are the ones the commands run: `cargo xtask` builds the
//! package its alias names (the entry point `xtask-entry` since it exists,
//! `xtask` before), the entry point hands a local `experiment run` to a
//! launcher (`xtask-local` without features since it exists, the full
//! `xtask` before), and the local backend builds the trainer beside it. They run
//! here as explicit `cargo build --timings` steps (so their timings are
//! kept) before the commands, whose own builds are then no-ops. Rows of
//! revisions not measured again stay in BENCHMARKS.md.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{flags, git, workspace};

/// One revision's figures, seconds.
#[derive(Debug, Clone)]
struct Figures {
    rev: String,
    /// The alias's build + `experiment validate`.
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
        let text = std::fs::read_to_string(root.join("BENCHMARKS.md")).unwrap_or_default();
        let body = render(&earlier(&text, &all), &all);
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

    let entry = alias_package(&repo)?;
    let start = Instant::now();
    cargo()
        .args(["build", "--locked", "--timings", "-p", &entry])
        .run()
        .with_context(|| format!("building {entry} in the fresh clone"))?;
    let mut units = timings(&target)?;
    let cargo_xtask = target.join("debug").join(&entry);
    sh.cmd(&cargo_xtask)
        .args(["experiment", "validate", "experiments/quickstart.toml"])
        .env("CARGO_TARGET_DIR", &target)
        .run()
        .context("experiment validate in the fresh clone")?;
    let validate = start.elapsed().as_secs_f64();

    // What `experiment run` builds on a local backend: since xtask-local
    // exists, that binary without features and the trainer beside it;
    // before, the full xtask (when an entry point handed over) and the
    // trainer beside that.
    let (launcher, trainer): (Vec<&str>, Vec<&str>) =
        if repo.join("xtask/src/bin/xtask-local.rs").is_file() {
            let local = ["--bin", "xtask-local", "--no-default-features"];
            (
                [&["-p", "xtask"][..], &local].concat(),
                [
                    &["-p", "xtask", "-p", "sca-train", "--bin", "sca-train"][..],
                    &local,
                ]
                .concat(),
            )
        } else {
            (vec!["-p", "xtask"], vec!["-p", "xtask", "-p", "sca-train"])
        };
    if entry != "xtask" {
        cargo()
            .args(["build", "--locked", "--timings"])
            .args(&launcher)
            .run()
            .context("building the launcher in the fresh clone")?;
        units.extend(timings(&target)?);
    }
    cargo()
        .args(["build", "--locked", "--timings"])
        .args(&trainer)
        .run()
        .context("building the trainer in the fresh clone")?;
    units.extend(timings(&target)?);
    // The clone's own runs directory: a completed quickstart of this commit
    // in the caller's (`SCA_RUNS_DIR`) would be its twin, printed, not run.
    sh.cmd(&cargo_xtask)
        .args(["experiment", "run", "experiments/quickstart.toml"])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("SCA_RUNS_DIR")
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

/// The package the clone's `cargo xtask` alias runs (`run --package NAME --`
/// in .cargo/config.toml).
fn alias_package(repo: &Path) -> Result<String> {
    let path = repo.join(".cargo/config.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let alias = config
        .get("alias")
        .and_then(|a| a.get("xtask"))
        .and_then(|a| a.as_str())
        .with_context(|| format!("no string alias.xtask in {}", path.display()))?;
    package_of(alias).with_context(|| format!("alias.xtask = {alias:?} names no --package"))
}

/// `NAME` of `... --package NAME ...` or `... -p NAME ...`.
fn package_of(alias: &str) -> Option<String> {
    let words: Vec<&str> = alias.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "--package" || w[0] == "-p")
        .map(|w| w[1].to_string())
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

/// A revision's rows recorded by an earlier run of this benchmark.
#[derive(Debug, PartialEq)]
struct Earlier {
    /// The table row, with its recorded date.
    row: String,
    /// The "Slowest crates at" paragraph, when there is one.
    slowest: Option<String>,
}

/// The revisions in BENCHMARKS.md's first-result section (`text` is the
/// whole file) that `now` does not measure again: kept, so a table of
/// before and after grows one run at a time.
fn earlier(text: &str, now: &[Figures]) -> Vec<Earlier> {
    let open = "<!-- bench:first-result -->";
    let close = "<!-- /bench:first-result -->";
    let Some(section) = text
        .find(open)
        .and_then(|a| Some(&text[a..a + text[a..].find(close)?]))
    else {
        return Vec::new();
    };
    let recorded = section
        .split("Recorded ")
        .nth(1)
        .map(|r| r.chars().take(10).collect::<String>())
        .unwrap_or_else(|| "?".into());
    // Rows from before the machine column ran on the section's machine.
    let machine = section
        .split("Machine: ")
        .nth(1)
        .and_then(|m| m.split(". Recorded").next())
        .unwrap_or("?")
        .to_string();
    let lines: Vec<&str> = section.lines().collect();
    let mut out = Vec::new();
    for line in &lines {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let rev = cells[0];
        if !line.starts_with("| ") || rev == "revision" || rev.starts_with("---") {
            continue;
        }
        if now.iter().any(|f| f.rev == rev) {
            continue;
        }
        let mut cells: Vec<String> = cells.iter().map(|c| c.to_string()).collect();
        if cells.len() == 4 {
            cells.push(recorded.clone());
        }
        if cells.len() == 5 {
            cells.insert(4, machine.clone());
        }
        let heading = format!("Slowest crates at {rev} ");
        let slowest = lines
            .iter()
            .position(|l| l.starts_with(&heading))
            .and_then(|at| {
                let list = lines[at + 1..].iter().find(|l| !l.trim().is_empty())?;
                Some(format!("{}\n\n{list}\n", lines[at]))
            });
        out.push(Earlier {
            row: format!("| {} |\n", cells.join(" | ")),
            slowest,
        });
    }
    out
}

fn render(earlier: &[Earlier], all: &[Figures]) -> String {
    let mut s = String::from(
        "`cargo xtask bench first-result` (a fresh clone, empty `target/`, warm registry; the README's first command on the quickstart):\n\n\
         | revision | `experiment validate` | `experiment run` to the first model | crates compiled | machine | recorded |\n|---|---|---|---|---|---|\n",
    );
    // Figures of different machines differ twofold here: each row says its own.
    let machine = super::machine();
    for e in earlier {
        s += &e.row;
    }
    let today = super::date().chars().take(10).collect::<String>();
    for f in all {
        s += &format!(
            "| {} | {:.1} min | {:.1} min | {} | {machine} | {today} |\n",
            f.rev,
            f.validate / 60.0,
            f.first_result / 60.0,
            f.crates
        );
    }
    for slowest in earlier.iter().filter_map(|e| e.slowest.as_ref()) {
        s += "\n";
        s += slowest;
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

    #[test]
    fn earlier_revisions_stay_and_measured_ones_are_replaced() {
        let text = "intro\n<!-- bench:first-result -->\nheader\n\n\
            | revision | `experiment validate` | `experiment run` to the first model | crates compiled |\n|---|---|---|---|\n\
            | aaa | 20.8 min | 22.2 min | 722 |\n| bbb | 14.1 min | 23.7 min | 692 |\n\n\
            Slowest crates at aaa (`cargo build --timings`, ...):\n\nsyn 67 s, jsonschema 95 s\n\n\
            Slowest crates at bbb (`cargo build --timings`, ...):\n\nring 9 s\n\n\
            Machine: 2 cores. Recorded 2026-12-06T00:55:33Z.\n<!-- /bench:first-result -->\nafter\n";
        let now = super::Figures {
            rev: "bbb".into(),
            validate: 120.0,
            first_result: 600.0,
            top: vec![("sca-train".into(), 70.0)],
            crates: 300,
        };
        let kept = super::earlier(text, std::slice::from_ref(&now));
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(
            kept[0].row,
            "| aaa | 20.8 min | 22.2 min | 722 | 2 cores | 2026-12-06 |\n"
        );
        assert!(kept[0]
            .slowest
            .as_ref()
            .unwrap()
            .ends_with("\n\nsyn 67 s, jsonschema 95 s\n"));
        let body = super::render(&kept, &[now]);
        let rows: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("| aaa") || l.starts_with("| bbb"))
            .collect();
        assert_eq!(rows.len(), 2, "{body}");
        assert!(
            rows[1].starts_with("| bbb | 2.0 min | 10.0 min | 300 |"),
            "{body}"
        );
        assert_eq!(body.matches("Slowest crates at").count(), 2, "{body}");
        assert!(!body.contains("ring 9 s"), "{body}");
        // Its own output reads back the same.
        let again = format!("<!-- bench:first-result -->\n{body}\nMachine: x. Recorded 2026-12-07T00:00:00Z.\n<!-- /bench:first-result -->");
        let read = super::earlier(&again, &[]);
        assert_eq!(read.len(), 2);
        assert_eq!(
            read[0].row, kept[0].row,
            "a row with its machine is kept as it is"
        );
    }

    #[test]
    fn the_alias_names_its_package() {
        assert_eq!(
            super::package_of("run --package xtask-entry --").as_deref(),
            Some("xtask-entry")
        );
        assert_eq!(
            super::package_of("run -p xtask --").as_deref(),
            Some("xtask")
        );
        assert_eq!(super::package_of("run --release"), None);
    }
}
