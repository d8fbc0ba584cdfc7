//! `cargo xtask experiment validate`: report every problem of every file,
//! as annotated snippets for people or one JSON document for CI.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use miette::{LabeledSpan, MietteDiagnostic, NamedSource};
use sca_spec::{Diagnostic, Report};
use serde::Serialize;

use crate::flags::{self, Format};
use crate::workspace;

impl flags::Validate {
    pub fn run(self) -> Result<ExitCode> {
        let repository = default_files()?;
        let files = if self.files.is_empty() {
            repository.clone()
        } else {
            self.files
        };
        let defaults = workspace::defaults()?;
        let mut reports: Vec<(String, Report)> = files
            .iter()
            .map(|f| {
                (
                    f.display().to_string(),
                    sca_spec::validate_file(f, &defaults),
                )
            })
            .collect();
        sca_spec::check_across(&mut reports, &elsewhere(&repository, &files));
        let invalid = reports.iter().filter(|(_, r)| !r.is_valid()).count();
        match self.format {
            Format::Json => {
                let doc = JsonReport {
                    files: reports.len(),
                    invalid_files: invalid,
                    diagnostics: reports
                        .iter()
                        .flat_map(|(_, r)| r.diagnostics.iter())
                        .collect(),
                };
                out(format_args!("{}", serde_json::to_string_pretty(&doc)?))?;
            }
            // Written, not printed: a closed pipe is no panic (stdout's
            // other failures are the error, see `out`).
            Format::Human => {
                for (_, report) in &reports {
                    for d in &report.diagnostics {
                        let _ =
                            writeln!(std::io::stderr(), "{}", render(d, report.source.as_deref()));
                    }
                }
                let errors: usize = reports.iter().map(|(_, r)| r.diagnostics.len()).sum();
                if invalid == 0 {
                    out(format_args!("{} experiment file(s) valid", reports.len()))?;
                } else {
                    let _ = writeln!(
                        std::io::stderr(),
                        "{errors} error(s) in {invalid} of {} experiment file(s)",
                        reports.len()
                    );
                }
            }
        }
        Ok(if invalid == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    files: usize,
    invalid_files: usize,
    diagnostics: Vec<&'a Diagnostic>,
}

/// `(experiment name, file, is a sweep)` of the repository's experiment
/// files that are not among `files`: what those may warm-start from (a
/// sweep's points), and must not redefine.
fn elsewhere(repository: &[PathBuf], files: &[PathBuf]) -> Vec<(String, String, bool)> {
    let given: Vec<PathBuf> = files.iter().filter_map(|f| f.canonicalize().ok()).collect();
    repository
        .iter()
        .filter(|f| f.canonicalize().is_ok_and(|c| !given.contains(&c)))
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).ok()?;
            let (name, sweep) = sca_spec::experiment_name(&text)?;
            Some((name, f.display().to_string(), sweep))
        })
        .collect()
}

/// Every `experiments/**/*.toml`, sorted, relative to the current directory when possible.
fn default_files() -> Result<Vec<PathBuf>> {
    let root = workspace::root();
    let dir = root.join("experiments");
    let mut files = Vec::new();
    collect_toml(&dir, &mut files).with_context(|| format!("listing {}", dir.display()))?;
    files.sort();
    let cwd = std::env::current_dir().unwrap_or_default();
    Ok(files
        .into_iter()
        .map(|f| f.strip_prefix(&cwd).map(Path::to_path_buf).unwrap_or(f))
        .collect())
}

fn collect_toml(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_toml(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
    Ok(())
}

/// One diagnostic as a located, annotated snippet.
pub fn render(d: &Diagnostic, source: Option<&str>) -> String {
    let mut diag = MietteDiagnostic::new(match d.key.as_str() {
        "" => format!("{}: {}", d.location(), d.message),
        key => format!("{}: `{key}`: {}", d.location(), d.message),
    });
    if let Some(help) = &d.help {
        diag = diag.with_help(help.clone());
    }
    let label = d.expected.as_ref().map(|e| format!("expected {e}"));
    match (source, &d.span) {
        (Some(src), Some(span)) => {
            diag = diag.with_label(LabeledSpan::new(label, span.start, span.len()));
            let report = miette::Report::new(diag)
                .with_source_code(NamedSource::new(&d.file, src.to_string()));
            format!("{report:?}")
        }
        _ => {
            if let Some(l) = label {
                diag = diag.with_help(match &d.help {
                    Some(h) => format!("{l}; {h}"),
                    None => l,
                });
            }
            format!("{:?}", miette::Report::new(diag))
        }
    }
}

/// A line on stdout: dropped once its reader is gone (`| head`), where
/// `println!` would panic; any other failure (a full disk) is the error.
fn out(args: std::fmt::Arguments<'_>) -> Result<()> {
    match writeln!(std::io::stdout(), "{args}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
