//! `cargo xtask experiment report`: one self-contained HTML page of the runs
//! recorded in this checkout: a sortable table, and per run its loss and IoU
//! curves (inline SVG), the trainer's prediction overlays (PNG `data:` URIs),
//! its pins, its resolved experiment file and its diff against the previous
//! run of the same experiment. The page loads nothing: no script, font or
//! image from anywhere (its Content-Security-Policy forbids it), so it can be
//! mailed or archived as one file. `--screenshot` photographs it with
//! headless Chromium.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use xshell::cmd;

use crate::experiment::artifacts;
use crate::experiment::curves::{self, escape};
use crate::experiment::diff::{self, final_metric, short};
use crate::experiment::lifecycle;
use crate::experiment::record::{self, Backend, RunRecord};
use crate::experiment::sweep::{points_table, PointRow, SweepRecord};
use crate::{flags, fsx, workspace};

/// Overlays shown per run, and the largest one inlined: the page stays a
/// few MB even for the ported experiments' 512-pixel tiles.
const MAX_OVERLAYS: usize = 6;
const MAX_OVERLAY_BYTES: u64 = 2 << 20;

/// The tolerance of the embedded diffs (`experiment diff`'s default).
const DIFF_TOLERANCE: f64 = 1e-4;

impl flags::Report {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        if self.remote {
            import_remote(&root, self.bucket.as_deref(), &self.aws).await?;
        }
        let mut records = RunRecord::all(&root);
        let sweep = match &self.sweep {
            Some(name) => {
                // The runs the points table counts, and no others (an
                // earlier version of the file, another backend or commit).
                let sweep = SweepRecord::load(&root, name)?;
                records.retain(|r| sweep.has_run(r));
                Some(sweep)
            }
            None => None,
        };
        if let Some(e) = &self.experiment {
            records.retain(|r| &r.experiment == e);
            if records.is_empty() {
                bail!(
                    "no runs of experiment `{e}` in {}: `cargo xtask experiment list` shows the runs there are",
                    record::runs_dir(&root).display()
                );
            }
        }
        if !self.no_fetch {
            lifecycle::fetch_missing(&root, &records, &self.aws).await;
        }
        let mut html = render(&root, &records);
        if let Some(sweep) = &sweep {
            // Above the runs table: the points, best first.
            let section = sweep_section(sweep, &points_table(&root, sweep));
            let at = html.find(r#"<table class="runs""#).unwrap_or(html.len());
            html.insert_str(at, &section);
        }
        let out = self
            .out
            .clone()
            .unwrap_or_else(|| root.join("target/sca-report.html"));
        fsx::write_atomic(&out, html.as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
        if let Some(png) = &self.screenshot {
            screenshot(&out, png)?;
            eprintln!("screenshot: {}", png.display());
        }
        eprintln!("{} run(s)", records.len());
        println!("{}", out.display());
        Ok(ExitCode::SUCCESS)
    }
}

/// Copy the records and config channels of the config bucket's jobs that
/// this checkout has no record of into its runs directory, under a progress
/// bar; a job that cannot be copied is a warning, the page goes without it.
#[cfg(feature = "full")]
async fn import_remote(root: &Path, bucket: Option<&str>, aws: &flags::AwsArgs) -> Result<()> {
    use crate::experiment::sagemaker::remote::{self, Remote};
    let remote = Remote::new(bucket, &aws.session()).await?;
    let here: Vec<String> = RunRecord::all(root)
        .into_iter()
        .map(|r| r.job_name)
        .collect();
    let missing: Vec<RunRecord> = remote::records(&remote.clients, &remote.bucket)
        .await?
        .into_iter()
        .filter(|r| !here.contains(&r.job_name))
        .collect();
    let bar = indicatif::ProgressBar::new(missing.len() as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("copying records {pos}/{len} {bar:30} {msg}")
    {
        bar.set_style(style);
    }
    for r in &missing {
        bar.set_message(r.job_name.clone());
        if let Err(e) = remote.load(root, &r.job_name).await {
            bar.suspend(|| eprintln!("warning: leaving out {}: {e:#}", r.job_name));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

#[cfg(not(feature = "full"))]
async fn import_remote(_: &Path, _: Option<&str>, _: &flags::AwsArgs) -> Result<()> {
    Err(crate::needs_full("--remote"))
}

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 0 0 .4em; }
table.runs { border-collapse: collapse; font-size: 12.5px; }
table.runs th, table.runs td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; white-space: nowrap; }
table.runs th { background: #f3f3f3; cursor: pointer; user-select: none; }
table.runs th[data-order="asc"]::after { content: " ▲"; } table.runs th[data-order="desc"]::after { content: " ▼"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre, td.mono { font-family: ui-monospace, monospace; font-size: 12px; }
section.run { border-top: 2px solid #ccc; margin-top: 1.5em; padding-top: .8em; }
.Completed { color: #18794e; } .Failed { color: #c62828; } .Stopped, .Stopping { color: #a15c00; } .InProgress { color: #1f5fbf; }
dl.pins { display: grid; grid-template-columns: max-content auto; gap: 1px 12px; font-size: 12.5px; }
dl.pins dt { color: #666; } dl.pins dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
table.sweep tr.best td { font-weight: bold; background: #eef7ee; }
img.overlay { height: 128px; image-rendering: pixelated; margin: 2px; border: 1px solid #ccc; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; max-height: 30em; }
.note { color: #777; } .error { color: #c62828; }
"#;

/// Sorts the table by the clicked column: `data-sort` where a cell has one
/// (numbers, times), else its text. Marks the body when it ran, for tests.
const SCRIPT: &str = r#"
(function () {
  function key(row, i) {
    var c = row.cells[i];
    var v = c.hasAttribute('data-sort') ? c.getAttribute('data-sort') : c.textContent.trim();
    return (v !== '' && !isNaN(Number(v))) ? Number(v) : v;
  }
  document.querySelectorAll('table.runs th').forEach(function (th, i) {
    th.addEventListener('click', function () {
      var body = th.closest('table').tBodies[0];
      var asc = th.getAttribute('data-order') !== 'asc';
      th.parentNode.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-order'); });
      th.setAttribute('data-order', asc ? 'asc' : 'desc');
      Array.prototype.slice.call(body.rows).sort(function (a, b) {
        var x = key(a, i), y = key(b, i);
        var r = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
        return asc ? r : -r;
      }).forEach(function (row) { body.appendChild(row); });
    });
  });
  document.body.setAttribute('data-sortable', 'ready');
})();
"#;

/// `text`'s CSP source (`sha256-<base64>`): the page's one style sheet and
/// one script run by their hashes, and nothing else inline would (a value
/// that escaped its escaping, say).
fn csp_hash(text: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The whole page for `records` (oldest first).
pub fn render(root: &Path, records: &[RunRecord]) -> String {
    let mut s = String::new();
    let generated = humantime::format_rfc3339_seconds(SystemTime::now());
    let _ = write!(
        s,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src '{style_hash}'; script-src '{script_hash}'">
<title>sca runs</title><style>{STYLE}</style></head>
<body>
<h1>sca runs</h1>
<p class="note">{} run(s) from <code>{}</code>, generated {generated} by <code>cargo xtask experiment report</code>. Click a column to sort.</p>
"#,
        records.len(),
        escape(&record::runs_dir(root).display().to_string()),
        style_hash = csp_hash(STYLE),
        script_hash = csp_hash(SCRIPT),
    );
    s.push_str(&table(records));
    for (i, r) in records.iter().enumerate() {
        let previous = records[..i]
            .iter()
            .rev()
            .find(|p| p.experiment == r.experiment);
        s.push_str(&run_section(root, r, previous));
    }
    let _ = write!(s, "<script>{SCRIPT}</script>\n</body></html>\n");
    s
}

/// A sweep's points, best first (by its objective), with their values.
fn sweep_section(sweep: &SweepRecord, rows: &[PointRow]) -> String {
    let mut rows: Vec<&PointRow> = rows.iter().collect();
    if let Some(goal) = sweep.objective.map(|o| o.goal) {
        rows.sort_by(|a, b| match (a.objective, b.objective) {
            (Some(x), Some(y)) if goal.better(x, y) => std::cmp::Ordering::Less,
            (Some(x), Some(y)) if goal.better(y, x) => std::cmp::Ordering::Greater,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            _ => std::cmp::Ordering::Equal,
        });
    }
    let objective = sweep
        .objective
        .and_then(|o| serde_json::to_value(o.metric).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "objective".into());
    let mut s = format!(
        r#"<h2>sweep {}</h2>
<table class="sweep" id="sweep"><thead><tr><th>point</th><th>{}</th><th>state</th><th>values</th><th>run</th></tr></thead><tbody>
"#,
        escape(&sweep.sweep),
        escape(&objective)
    );
    for r in rows {
        let values = r
            .values
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let run = match &r.job {
            Some(job) => format!(r##"<a href="#{0}">{0}</a>"##, escape(job)),
            None => "-".into(),
        };
        let _ = writeln!(
            s,
            r#"<tr class="point{}" data-point="{}"><td class="mono">{}</td><td class="num">{}</td><td>{}</td><td class="mono">{}</td><td class="mono">{run}</td></tr>"#,
            if r.best { " best" } else { "" },
            escape(&r.name),
            escape(&r.name),
            r.objective
                .map(curves::metric)
                .unwrap_or_else(|| "-".into()),
            r.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "not run".into()),
            escape(&values),
        );
    }
    s.push_str("</tbody></table>\n");
    s
}

/// `(text, sort key)` of a run's duration, when it has ended.
fn duration(r: &RunRecord) -> Option<(String, u64)> {
    let start = humantime::parse_rfc3339(&r.started).ok()?;
    let end = humantime::parse_rfc3339(r.finished.as_deref()?).ok()?;
    let secs = end.duration_since(start).ok()?.as_secs();
    let text = match secs {
        s if s >= 3600 => format!("{}h {:02}m", s / 3600, s / 60 % 60),
        s if s >= 60 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    };
    Some((text, secs))
}

fn table(records: &[RunRecord]) -> String {
    let mut s = String::from(
        r#"<table class="runs" id="runs"><thead><tr><th>job</th><th>backend</th><th>state</th><th>commit</th><th>image</th><th>experiment sha256</th><th>data manifest</th><th>started</th><th>duration</th><th>cost</th><th>val IoU</th><th>val F1</th><th>val MCC</th></tr></thead><tbody>
"#,
    );
    for r in records {
        let job = escape(&r.job_name);
        let dirty = if r.pins.dirty { "+dirty" } else { "" };
        let image = r
            .pins
            .image_digest()
            .map(|d| format!("sha256:{}", short(d)))
            .unwrap_or_else(|| "-".into());
        let (dur, dur_key) = duration(r)
            .map(|(t, k)| (t, k.to_string()))
            .unwrap_or_else(|| ("-".into(), String::new()));
        // Local and docker runs use this machine; a SageMaker job's is
        // known once it has ended (billable time x the price table's rate).
        // Sorted by dollars, not by the cell's text ("$10" before "$9").
        let cost_key = r
            .cost
            .as_ref()
            .and_then(|c| c.usd)
            .map(|usd| usd.to_string())
            .unwrap_or_default();
        let cost = match (&r.cost, r.backend) {
            (Some(billed), _) => escape(&billed.describe()),
            (None, Backend::Local | Backend::Docker) => "this machine".into(),
            (None, Backend::Sagemaker) => "unknown".into(),
        };
        let _ = write!(
            s,
            r##"<tr class="run" data-job="{job}"><td class="mono"><a href="#{job}">{job}</a></td><td>{}</td><td class="{status}">{status}</td><td class="mono">{}{dirty}</td><td class="mono">{}</td><td class="mono">{}</td><td class="mono">{}</td><td>{}</td><td class="num" data-sort="{dur_key}">{dur}</td><td data-sort="{cost_key}">{cost}</td>"##,
            r.backend,
            escape(short(&r.pins.commit)),
            escape(&image),
            escape(short(&r.pins.experiment_sha256)),
            escape(r.pins.data_manifest_sha256.as_deref().map_or("-", short)),
            escape(&r.started),
            status = r.status,
        );
        for metric in ["iou", "f1", "mcc"] {
            match final_metric(r, metric) {
                Some(v) => {
                    let _ = write!(
                        s,
                        r#"<td class="num" data-sort="{v}">{}</td>"#,
                        curves::metric(v)
                    );
                }
                None => s.push_str(r#"<td class="num" data-sort="">-</td>"#),
            }
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody></table>\n");
    s
}

fn run_section(root: &Path, r: &RunRecord, previous: Option<&RunRecord>) -> String {
    let job = escape(&r.job_name);
    let mut s = format!(
        r#"<section class="run" id="{job}"><h2>{job} <span class="{status}">{status}</span></h2>
<p>experiment <b>{}</b>, {} backend, started {}{}</p>
"#,
        escape(&r.experiment),
        r.backend,
        escape(&r.started),
        r.failure_reason
            .as_deref()
            .map(|f| format!(r#" — <span class="error">{}</span>"#, escape(f)))
            .unwrap_or_default(),
        status = r.status,
    );
    let artifacts = curves::artifacts_dir(root, r);
    match curves::load(root, r) {
        Ok(Some(c)) => s.push_str(&curves::svg(&c, &r.job_name)),
        Ok(None) => {
            let _ = writeln!(
                s,
                r#"<p class="note">no metrics.csv on this machine{}</p>"#,
                if r.backend == Backend::Sagemaker {
                    format!(": <code>cargo xtask experiment fetch {job}</code> downloads it")
                } else {
                    String::new()
                }
            );
        }
        Err(e) => {
            let _ = writeln!(s, r#"<p class="error">{}</p>"#, escape(&format!("{e:#}")));
        }
    }
    if let Some(dir) = &artifacts {
        s.push_str(&overlays(dir));
    }
    s.push_str(&pins(r));
    s.push_str(&experiment_file(root, r));
    match previous {
        Some(p) => {
            let prev = escape(&p.job_name);
            let text = match diff::compare(root, p, r, DIFF_TOLERANCE) {
                Ok(d) => diff::render(&d),
                Err(e) => format!("cannot diff: {e:#}"),
            };
            let _ = writeln!(
                s,
                r##"<details class="diff"><summary>diff against the previous run, <a href="#{prev}">{prev}</a>: <code>cargo xtask experiment diff {prev} {job}</code></summary><pre>{}</pre></details>"##,
                escape(&text)
            );
        }
        None => s.push_str(r#"<p class="note">the first run of this experiment here</p>"#),
    }
    s.push_str("</section>\n");
    s
}

/// The trainer's `overlay-Z-X-Y.png` files, inlined.
fn overlays(dir: &Path) -> String {
    let mut names: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(n, _)| n.starts_with("overlay-") && artifacts::is_artifact(n))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return String::new();
    }
    names.sort();
    let total = names.len();
    let mut s = String::from(r#"<div class="overlays">"#);
    for (name, path) in names.into_iter().take(MAX_OVERLAYS) {
        let small = std::fs::metadata(&path).is_ok_and(|m| m.len() <= MAX_OVERLAY_BYTES);
        let Some(bytes) = small.then(|| std::fs::read(&path).ok()).flatten() else {
            continue;
        };
        let _ = write!(
            s,
            r#"<img class="overlay" alt="{n}" title="{n}" src="data:image/png;base64,{}">"#,
            base64::engine::general_purpose::STANDARD.encode(bytes),
            n = escape(&name),
        );
    }
    if total > MAX_OVERLAYS {
        let _ = write!(
            s,
            r#"<span class="note"> and {} more in {}</span>"#,
            total - MAX_OVERLAYS,
            escape(&dir.display().to_string())
        );
    }
    s.push_str("</div>\n");
    s
}

fn pins(r: &RunRecord) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        (
            "commit",
            format!(
                "{}{}",
                r.pins.commit,
                match (r.pins.dirty, &r.pins.diff_sha256) {
                    (false, _) => String::new(),
                    (true, Some(h)) => format!(" (dirty, diff sha256 {h})"),
                    (true, None) => " (dirty)".into(),
                }
            ),
        ),
        (
            "image",
            r.pins
                .image
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_else(|| "- (host process)".into()),
        ),
        ("experiment sha256", r.pins.experiment_sha256.clone()),
        (
            "data manifest",
            format!(
                "{} ({} objects)",
                r.pins.data_manifest_sha256.as_deref().unwrap_or("-"),
                r.data_objects
            ),
        ),
        (
            "warm start",
            r.pins
                .init_checkpoint
                .clone()
                .unwrap_or_else(|| "none".into()),
        ),
        ("instance", r.resolved_job.instance_type.clone()),
    ];
    if let Some(d) = &r.device_override {
        rows.push(("SCA_DEVICE", d.clone()));
    }
    if let Some(p) = &r.rerun_of {
        rows.push(("rerun of", p.clone()));
    }
    rows.push(("artifacts", r.artifacts.clone()));
    let mut s = String::from(r#"<dl class="pins">"#);
    for (k, v) in rows {
        let _ = write!(s, "<dt>{k}</dt><dd>{}</dd>", escape(&v));
    }
    s.push_str("</dl>\n");
    s
}

fn experiment_file(root: &Path, r: &RunRecord) -> String {
    let name = Path::new(&r.experiment_file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = r.config_dir(root).join(&name);
    match std::fs::read(&path) {
        Ok(bytes) => format!(
            "<details class=\"experiment\"><summary>experiment file <code>{}</code></summary><pre>{}</pre></details>\n",
            escape(&r.experiment_file),
            escape(&String::from_utf8_lossy(&bytes))
        ),
        Err(_) => format!(
            r#"<p class="note">the experiment file's copy is not on this machine ({})</p>"#,
            escape(&path.display().to_string())
        ),
    }
}

/// `file://` URL of an absolute path, its bytes outside the unreserved set
/// percent-encoded.
pub fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in path.display().to_string().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(b as char);
        } else {
            let _ = write!(url, "%{b:02X}");
        }
    }
    url
}

/// Photograph the page `html` into `png` with headless Chromium (Debian's
/// `chromium` package, which `cargo xtask test` installs).
pub fn screenshot(html: &Path, png: &Path) -> Result<()> {
    let chromium = workspace::which("chromium").context(
        "chromium is not installed: `apt-get install chromium` (`cargo xtask test` installs it)",
    )?;
    let html = html
        .canonicalize()
        .with_context(|| format!("reading {}", html.display()))?;
    let url = file_url(&html);
    let dir = png
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Chromium writes into a temporary file, renamed when complete.
    let tmp = tempfile::Builder::new()
        .suffix(".png")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let shot = format!("--screenshot={}", tmp.path().display());
    let profile = tempfile::tempdir().context("creating a Chromium profile directory")?;
    let user_data = format!("--user-data-dir={}", profile.path().display());
    let sh = xshell::Shell::new()?;
    // Bounded (coreutils' timeout): a Chromium hung at start is an error.
    let out = cmd!(
        sh,
        "timeout -k 10 120 {chromium} --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --disable-background-networking --force-device-scale-factor=1 --window-size=1600,1000 --timeout=30000 {user_data} {shot} {url}"
    )
    .quiet()
    .ignore_status()
    .output()
    .context("running chromium")?;
    let written = std::fs::metadata(tmp.path()).is_ok_and(|m| m.len() > 0);
    if !out.status.success() || !written {
        bail!(
            "chromium could not photograph {} ({}): {}",
            html.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // Readable like any other file written here (a temporary file is 0600).
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("writing {}", png.display()))?;
    }
    tmp.persist(png)
        .with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn file_urls_encode_odd_bytes() {
        assert_eq!(
            file_url(Path::new("/tmp/a b/r#1.html")),
            "file:///tmp/a%20b/r%231.html"
        );
    }

    /// A page of two runs of one experiment: one row and one section each,
    /// the second with a diff against the first; nothing it references
    /// leaves the page.
    #[test]
    fn page_has_a_row_and_a_section_per_run_and_no_external_reference() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut a = RunRecord::for_tests("exp-a");
        a.status = record::Status::Completed;
        a.final_metrics = serde_json::json!({"split": "val", "iou": 0.5, "f1": 0.6, "mcc": 0.4});
        let mut b = RunRecord::for_tests("exp-b");
        b.started = "2099-01-01T00:00:00Z".into();
        for r in [&a, &b] {
            let model = r.model_dir(root);
            std::fs::create_dir_all(&model).unwrap();
            std::fs::write(
                model.join("metrics.csv"),
                "epoch,split,loss,iou\n1,train,0.9,0.1\n1,val,0.8,0.2\n",
            )
            .unwrap();
            std::fs::write(model.join("overlay-1-2-3.png"), b"\x89PNG").unwrap();
            r.save(root).unwrap();
        }
        let html = render(root, &[a, b]);
        assert_eq!(html.matches(r#"<tr class="run""#).count(), 2);
        assert_eq!(html.matches(r#"<svg class="curves""#).count(), 2);
        assert_eq!(html.matches(r#"<img class="overlay""#).count(), 2);
        assert!(
            html.contains("cargo xtask experiment diff exp-a exp-b"),
            "{html}"
        );
        assert!(html.contains("0.5000"));
        for attr in ["src=\"", "href=\""] {
            for (i, _) in html.match_indices(attr) {
                let value = &html[i + attr.len()..];
                assert!(
                    value.starts_with('#') || value.starts_with("data:"),
                    "{attr}{}",
                    &value[..value.len().min(40)]
                );
            }
        }
        assert!(!html.contains("http://") && !html.contains("https://"));
        // Only the page's own style sheet and script run: the policy names
        // their hashes, and allows nothing inline besides.
        let between = |open: &str, close: &str| {
            let start = html.find(open).unwrap() + open.len();
            html[start..start + html[start..].find(close).unwrap()].to_string()
        };
        let policy = between("Content-Security-Policy\" content=\"", "\"");
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        for (open, close, directive) in [
            ("<style>", "</style>", "style-src"),
            ("<script>", "</script>", "script-src"),
        ] {
            let want = format!("{directive} '{}'", csp_hash(&between(open, close)));
            assert!(policy.contains(&want), "{want} not in {policy}");
        }
    }
}
