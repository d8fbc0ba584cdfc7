//! Validation of experiment files: TOML syntax, the generated JSON schema,
//! then the rules a schema cannot express, then a sweep's key paths and
//! points (`sweep.rs`), and, across files, unique experiment names and
//! defined `experiment:<name>` warm starts. Every finding is a [`Diagnostic`] located at
//! `file:line:col` with the key path, what was expected and a fix.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::LazyLock;

use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::defaults::{ResolvedJob, WorkspaceDefaults};
use crate::instance_types::TRAINING_INSTANCE_TYPES;
use crate::naming::{JOB_SUFFIX_LEN, MAX_EXPERIMENT_NAME, MAX_JOB_NAME};
use crate::sweep::SweepPlan;
use crate::{Experiment, Split};

/// Experiment files larger than this are refused before parsing.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// One finding in one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the finding concerns the file as a whole (missing, unreadable).
    pub line: usize,
    /// 1-based, in characters; 0 when `line` is 0.
    pub column: usize,
    /// Byte range in the source, when there is a source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span: Option<Range<usize>>,
    /// Dotted key path such as `train.batch_size` or `channels[0].mean`; empty for the whole file.
    pub key: String,
    pub message: String,
    /// What would have been accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    /// `file:line:col` (or just `file` for whole-file findings).
    pub fn location(&self) -> String {
        if self.line == 0 {
            self.file.clone()
        } else {
            format!("{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.location())?;
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(e) = &self.expected {
            write!(f, " (expected {e})")?;
        }
        if let Some(h) = &self.help {
            write!(f, "; help: {h}")?;
        }
        Ok(())
    }
}

/// The outcome for one file.
#[derive(Debug, Clone)]
pub struct Report {
    /// The file's text, when it could be read as UTF-8 (for rendering snippets).
    pub source: Option<String>,
    pub diagnostics: Vec<Diagnostic>,
    /// The typed experiment when there were no diagnostics.
    pub experiment: Option<Experiment>,
    /// The merged job settings when there were no diagnostics.
    pub job: Option<ResolvedJob>,
    /// A sweep file's children, when there were no diagnostics (launcher
    /// validation only: the trainer refuses a file with `[sweep]`).
    pub sweep: Option<SweepPlan>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.diagnostics.is_empty()
    }
}

/// The compiled schema, built once per process.
static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    jsonschema::draft202012::new(&crate::schema::schema())
        .expect("the generated schema is a valid draft 2020-12 schema")
});

/// The schema as a value, for looking up allowed keys and enum values.
pub(crate) static SCHEMA: LazyLock<Value> = LazyLock::new(crate::schema::schema);

/// Read and validate the file at `path`.
pub fn validate_file(path: &Path, defaults: &WorkspaceDefaults) -> Report {
    let file = path.display().to_string();
    let whole = |message: String, help: &str| Report {
        source: None,
        diagnostics: vec![Diagnostic {
            file: file.clone(),
            line: 0,
            column: 0,
            span: None,
            key: String::new(),
            message,
            expected: None,
            help: Some(help.to_string()),
        }],
        experiment: None,
        job: None,
        sweep: None,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return whole(
                "no such file".into(),
                "check the path; experiment files live in experiments/",
            )
        }
        Err(e) => {
            return whole(
                format!("cannot read the file: {e}"),
                "check the path and its permissions",
            )
        }
    };
    if meta.is_dir() {
        return whole(
            "is a directory, not an experiment file".into(),
            "pass a .toml file, or no argument to validate every experiments/**/*.toml",
        );
    }
    if meta.len() > MAX_FILE_BYTES {
        return whole(
            format!(
                "file is {} bytes; experiment files are limited to {MAX_FILE_BYTES} bytes",
                meta.len()
            ),
            "an experiment file describes one run in a few dozen lines: is this the right file?",
        );
    }
    match std::fs::read(path) {
        Ok(bytes) => validate_bytes(&file, &bytes, defaults),
        Err(e) => whole(
            format!("cannot read the file: {e}"),
            "check the file's permissions",
        ),
    }
}

/// Validate `bytes` as the contents of `file` (a name used in diagnostics only).
pub fn validate_bytes(file: &str, bytes: &[u8], defaults: &WorkspaceDefaults) -> Report {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.valid_up_to();
            let good = String::from_utf8_lossy(&bytes[..at]).into_owned();
            let (line, column) = line_col(&good, at);
            return Report {
                source: None,
                diagnostics: vec![Diagnostic {
                    file: file.into(),
                    line,
                    column,
                    span: None,
                    key: String::new(),
                    message: format!("invalid UTF-8 at byte {at}"),
                    expected: Some("a UTF-8 text file (TOML)".into()),
                    help: Some("save the file as UTF-8".into()),
                }],
                experiment: None,
                job: None,
                sweep: None,
            };
        }
    };
    validate_str(file, text, defaults)
}

/// Validate `text` as the contents of `file`.
pub fn validate_str(file: &str, text: &str, defaults: &WorkspaceDefaults) -> Report {
    validate_text(file, text, Some(defaults))
}

/// Validate an experiment for training (inside the container): everything but
/// the launch settings of `[job]`, which need the workspace defaults and were
/// checked by the launcher. A file with `[sweep]` is refused: a run trains
/// one of its points.
pub fn validate_for_training(file: &str, bytes: &[u8]) -> Report {
    match std::str::from_utf8(bytes) {
        Ok(text) => validate_text(file, text, None),
        Err(_) => validate_bytes(file, bytes, &WorkspaceDefaults::default()),
    }
}

fn validate_text(file: &str, text: &str, defaults: Option<&WorkspaceDefaults>) -> Report {
    let mut out = Located {
        file,
        text,
        spans: HashMap::new(),
        diagnostics: Vec::new(),
    };
    let finish = |out: Located, experiment, job, sweep| Report {
        source: Some(text.to_string()),
        diagnostics: out.diagnostics,
        experiment,
        job,
        sweep,
    };
    if text.trim().is_empty() {
        out.push_at(
            0..0,
            "",
            "file is empty".into(),
            Some(
                "an experiment with at least [experiment], [dataset], [[channels]] and [[classes]]"
                    .into(),
            ),
            Some("start from experiments/quickstart.toml".into()),
        );
        return finish(out, None, None, None);
    }
    let doc = match toml_edit::Document::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            out.push_at(
                span,
                "",
                format!("invalid TOML: {}", e.message().trim()),
                None,
                Some("see https://toml.io for the syntax".into()),
            );
            return finish(out, None, None, None);
        }
    };
    let instance = out.convert_table(doc.as_table(), "");

    let schema_errors: Vec<_> = VALIDATOR
        .iter_errors(&instance)
        .map(|e| e.to_owned())
        .collect();
    for error in &schema_errors {
        out.schema_error(error, &instance);
    }
    if !out.diagnostics.is_empty() {
        return finish(out, None, None, None);
    }

    let experiment: Experiment = match toml::from_str(text) {
        Ok(e) => e,
        Err(e) => {
            // The schema mirrors the types, so this means they disagree: still say where.
            let span = e.span().unwrap_or(0..0);
            out.push_at(span, "", e.message().to_string(), None, None);
            return finish(out, None, None, None);
        }
    };
    let job = semantic_checks(&experiment, defaults, &mut out);
    let sweep = match (&experiment.sweep, defaults) {
        (None, _) => None,
        // A sweep file never runs as itself, its points do: its own values'
        // findings (`device = "cuda"` beside a CPU instance type the sweep
        // replaces with GPU ones) stand only if a point has them too. Each
        // point is validated whole, so every point valid answers that.
        (Some(_), Some(defaults)) if job.is_some() && !out.diagnostics.is_empty() => {
            let parent = std::mem::take(&mut out.diagnostics);
            match crate::sweep::check(&experiment, defaults, &mut out) {
                Some(plan) if out.diagnostics.is_empty() => Some(plan),
                // As without the try: the file's own findings, then what
                // the sweep's checks find beside them.
                _ => {
                    out.diagnostics = parent;
                    crate::sweep::check(&experiment, defaults, &mut out)
                }
            }
        }
        (Some(_), Some(defaults)) => crate::sweep::check(&experiment, defaults, &mut out),
        (Some(_), None) => {
            out.push_at(
                out.span_of("/sweep", true),
                "sweep",
                "the file still has a [sweep] table: it stands for several experiments, and a training run is one".into(),
                Some("one experiment: a point of the sweep, without [sweep]".into()),
                Some("launch it with `cargo xtask experiment sweep FILE`, which gives each run one point".into()),
            );
            None
        }
    };
    if out.diagnostics.is_empty() {
        finish(out, Some(experiment), job, sweep)
    } else {
        finish(out, None, None, None)
    }
}

/// `[experiment] name` of an experiment file's text, valid or not, and
/// whether the file is a sweep (for [`check_across`]'s `elsewhere`).
pub fn experiment_name(text: &str) -> Option<(String, bool)> {
    let doc: toml::Table = toml::from_str(text).ok()?;
    let name = doc.get("experiment")?.get("name")?.as_str()?.to_string();
    Some((name, doc.contains_key("sweep")))
}

/// Checks across experiment files, on `(file, report)` pairs: an experiment
/// name is defined by one file only (runs, `experiment list` and
/// `experiment:<name>` warm starts find an experiment by its name), and a
/// warm start `experiment:<name>` names an experiment that runs: a file's,
/// or a sweep's point (a sweep itself never runs). `elsewhere` lists `(name,
/// file, is a sweep)` of the repository's other experiment files, which
/// the reports may refer to and must not redefine (their sweeps' points are
/// not expanded: any `<sweep>-<8 hex digits>` is taken for one). Only valid
/// reports are checked; a finding makes its report invalid.
pub fn check_across(reports: &mut [(String, Report)], elsewhere: &[(String, String, bool)]) {
    let defined: Vec<(String, String, bool)> = reports
        .iter()
        .filter_map(|(file, r)| {
            r.experiment
                .as_ref()
                .map(|e| (e.experiment.name.clone(), file.clone(), r.sweep.is_some()))
        })
        .chain(elsewhere.iter().cloned())
        .collect();
    let points: Vec<String> = reports
        .iter()
        .filter_map(|(_, r)| r.sweep.as_ref())
        .flat_map(|plan| plan.points.iter().map(|p| p.name.clone()))
        .collect();
    let runs = |from: &str| {
        points.iter().any(|p| p == from)
            || defined.iter().any(|(n, file, sweep)| {
                (!sweep && n == from)
                    || (*sweep
                        && crate::sweep::is_point_of(from, n)
                        && elsewhere.iter().any(|e| &e.1 == file))
            })
    };
    for (file, report) in reports.iter_mut() {
        let (Some(exp), Some(text)) = (&report.experiment, &report.source) else {
            continue;
        };
        // (pointer, message, expected, help)
        let mut findings: Vec<(&str, String, String, String)> = Vec::new();
        let name = &exp.experiment.name;
        if let Some((_, other, _)) = defined.iter().find(|(n, f, _)| n == name && f != file) {
            findings.push((
                "/experiment/name",
                format!("experiment `{name}` is also defined in {other}"),
                "a name no other experiment file uses".into(),
                "runs, `experiment list` and `experiment:<name>` warm starts find an experiment by its name: rename one of them".into(),
            ));
        }
        if let Some(from) = exp
            .model
            .init_checkpoint
            .as_deref()
            .and_then(|i| i.strip_prefix("experiment:"))
        {
            if let Some((_, sweep_file, _)) =
                defined.iter().find(|(n, _, sweep)| *sweep && n == from)
            {
                findings.push((
                    "/model/init_checkpoint",
                    format!("warm start from `{from}`, the sweep in {sweep_file}: a sweep never runs as itself, its points do"),
                    format!("`experiment:{from}-<8 hex digits>`, one of its points"),
                    format!("name the point to start from (`cargo xtask experiment list --sweep {sweep_file}` lists them with their results)"),
                ));
            } else if !runs(from) {
                findings.push((
                    "/model/init_checkpoint",
                    format!("warm start from experiment `{from}`, which no experiment file defines"),
                    "`experiment:<name>` with the name of an experiment file's [experiment], or of a sweep's point".into(),
                    match did_you_mean(
                        from,
                        defined
                            .iter()
                            .filter(|d| !d.2)
                            .map(|(n, _, _)| n.as_str())
                            .chain(points.iter().map(String::as_str)),
                    ) {
                        Some(s) => format!("did you mean `experiment:{s}`?"),
                        None => "warm-start from an experiment defined in experiments/, or give the model's path or s3:// URI".into(),
                    },
                ));
            }
        }
        if findings.is_empty() {
            continue;
        }
        // Locate the keys only for a file with findings: parsing again is
        // the cost of keeping `Report` free of spans.
        let mut out = Located {
            file,
            text,
            spans: HashMap::new(),
            diagnostics: Vec::new(),
        };
        if let Ok(doc) = toml_edit::Document::parse(text.as_str()) {
            out.convert_table(doc.as_table(), "");
        }
        for (pointer, message, expected, help) in findings {
            out.push(pointer, message, Some(expected), Some(help));
        }
        report.diagnostics.append(&mut out.diagnostics);
        report.experiment = None;
        report.job = None;
        report.sweep = None;
    }
}

/// Spans of one key: the key itself and its value.
#[derive(Debug, Clone, Default)]
struct Spans {
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
}

pub(crate) struct Located<'a> {
    file: &'a str,
    pub(crate) text: &'a str,
    /// JSON pointer (`/train/batch_size`) to spans in `text`.
    spans: HashMap<String, Spans>,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl Located<'_> {
    pub(crate) fn push_at(
        &mut self,
        span: Range<usize>,
        key: &str,
        message: String,
        expected: Option<String>,
        help: Option<String>,
    ) {
        let (line, column) = line_col(self.text, span.start);
        self.diagnostics.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            span: Some(span),
            key: key.to_string(),
            message,
            expected,
            help,
        });
    }

    /// Report at the value of `pointer` (or its key, or its nearest located ancestor).
    pub(crate) fn push(
        &mut self,
        pointer: &str,
        message: String,
        expected: Option<String>,
        help: Option<String>,
    ) {
        let span = self.span_of(pointer, false);
        self.push_at(span, &dotted(pointer), message, expected, help);
    }

    /// A value outside an enum, with the allowed values and the closest one as a suggestion.
    fn push_enum(&mut self, pointer: &str, found: &Value, options: &[String]) {
        let help = found
            .as_str()
            .and_then(|f| did_you_mean(f, options.iter().map(String::as_str)))
            .map(|s| format!("did you mean `{s}`?"));
        self.push(
            pointer,
            format!("{found} is not allowed here"),
            Some(format!("one of: {}", options.join(", "))),
            help,
        );
    }

    /// The span of `pointer`'s key or value (whichever is preferred and
    /// known), or of its nearest located ancestor.
    pub(crate) fn span_of(&self, pointer: &str, prefer_key: bool) -> Range<usize> {
        let mut p = pointer;
        loop {
            if let Some(s) = self.spans.get(p) {
                let first = if prefer_key { &s.key } else { &s.value };
                let second = if prefer_key { &s.value } else { &s.key };
                if let Some(r) = first.clone().or_else(|| second.clone()) {
                    return r;
                }
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return 0..0,
            }
        }
    }

    fn convert_table<'t>(&mut self, table: impl TableLike<'t>, pointer: &str) -> Value {
        let mut map = Map::new();
        for (key, key_span, item) in table.entries() {
            let child = format!("{pointer}/{}", escape(key));
            let value = self.convert_item(item, &child);
            let spans = self.spans.entry(child).or_default();
            spans.key = spans.key.clone().or(key_span);
            if spans.value.is_none() {
                spans.value = item.span();
            }
            if let Some(v) = value {
                map.insert(key.to_string(), v);
            }
        }
        Value::Object(map)
    }

    fn convert_item(&mut self, item: &toml_edit::Item, pointer: &str) -> Option<Value> {
        use toml_edit::Item;
        match item {
            Item::None => None,
            Item::Value(v) => Some(self.convert_value(v, pointer)),
            Item::Table(t) => Some(self.convert_table(t, pointer)),
            Item::ArrayOfTables(a) => Some(Value::Array(
                a.iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let child = format!("{pointer}/{i}");
                        self.spans.entry(child.clone()).or_default().value = t.span();
                        self.convert_table(t, &child)
                    })
                    .collect(),
            )),
        }
    }

    fn convert_value(&mut self, value: &toml_edit::Value, pointer: &str) -> Value {
        use toml_edit::Value as T;
        match value {
            T::String(s) => Value::String(s.value().clone()),
            T::Integer(i) => Value::Number((*i.value()).into()),
            // JSON has no NaN or infinity: keep them as text so the schema rejects them as "not a number".
            T::Float(f) => Number::from_f64(*f.value())
                .map_or_else(|| Value::String(f.value().to_string()), Value::Number),
            T::Boolean(b) => Value::Bool(*b.value()),
            T::Datetime(d) => Value::String(d.value().to_string()),
            T::Array(a) => Value::Array(
                a.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let child = format!("{pointer}/{i}");
                        self.spans.entry(child.clone()).or_default().value = v.span();
                        self.convert_value(v, &child)
                    })
                    .collect(),
            ),
            T::InlineTable(t) => self.convert_table(t, pointer),
        }
    }

    fn schema_error(&mut self, error: &jsonschema::ValidationError<'static>, instance: &Value) {
        use jsonschema::error::ValidationErrorKind as K;
        let pointer = error.instance_path().to_string();
        let found = error.instance();
        match error.kind() {
            K::AdditionalProperties { unexpected } => {
                let allowed = allowed_keys(&pointer);
                let table = if pointer.is_empty() {
                    "the top level".to_string()
                } else {
                    format!("[{}]", dotted(&pointer))
                };
                for key in unexpected {
                    let child = format!("{pointer}/{}", escape(key));
                    let span = self.span_of(&child, true);
                    let help = match did_you_mean(key, allowed.iter().map(String::as_str)) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "remove it; every key of the format is listed in schema/experiment.schema.json".into(),
                    };
                    self.push_at(
                        span,
                        &dotted(&child),
                        format!("unknown key `{key}` in {table}"),
                        Some(format!("one of: {}", allowed.join(", "))),
                        Some(help),
                    );
                }
            }
            K::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                let where_ = if pointer.is_empty() {
                    "the file".to_string()
                } else {
                    format!("[{}]", dotted(&pointer))
                };
                let child = format!("{pointer}/{}", escape(name));
                self.push(
                    &pointer,
                    format!("missing required key `{name}` in {where_}"),
                    None,
                    Some(format!("add `{}`", dotted(&child))),
                );
            }
            K::Enum { options } => {
                let options: Vec<String> = options
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o.as_str().map(String::from))
                    .collect();
                self.push_enum(&pointer, found, &options);
            }
            K::OneOfNotValid { .. } | K::AnyOf { .. }
                if !enum_options(&pointer).is_empty() && pointer != "/model/loss" =>
            {
                let options = enum_options(&pointer);
                self.push_enum(&pointer, found, &options);
            }
            K::AnyOf { .. } if pointer == "/model/loss" => {
                let help = found
                    .as_str()
                    .and_then(|f| did_you_mean(f, ["bce", "lovasz", "dice"]))
                    .map(|s| format!("did you mean `{s}`?"));
                self.push(
                    &pointer,
                    format!("{found} is not a loss"),
                    Some("`bce`, `lovasz`, `dice`, or a table of non-negative weights such as { bce = 0.5, dice = 0.5 }".into()),
                    help.or(Some("use one loss name or a weights table".into())),
                );
            }
            K::MaxLength { .. } if pointer == "/experiment/name" => {
                self.push(
                    &pointer,
                    format!("name is {} characters long", found.as_str().map_or(0, str::len)),
                    Some(format!("at most {MAX_EXPERIMENT_NAME} characters")),
                    Some(format!("the SageMaker job name appends `-<commit>-<yyyymmdd>-<hhmmss>` ({JOB_SUFFIX_LEN} characters) and may not exceed {MAX_JOB_NAME}: shorten the name")),
                );
            }
            K::Type { .. } => {
                let expected = error.to_string();
                let expected = expected
                    .rsplit_once(" is not of type ")
                    .map(|(_, t)| t.replace('"', ""))
                    .unwrap_or(expected);
                self.push(
                    &pointer,
                    format!("{} has the wrong type", describe(found)),
                    Some(expected),
                    unquoted_sweep_key(&pointer, found),
                );
            }
            _ => {
                let _ = instance;
                self.push(&pointer, error.to_string(), None, None);
            }
        }
    }
}

/// The fix for a swept key path written unquoted (`train.learning_rate =
/// [...]` under `[sweep.grid]`), which TOML reads as a table `train`: the
/// path, down to its values, quoted as one key. None where the key was
/// quoted (it holds a dot) and only its value is wrong.
fn unquoted_sweep_key(pointer: &str, found: &Value) -> Option<String> {
    let head = pointer
        .strip_prefix("/sweep/grid/")?
        .replace("~1", "/")
        .replace("~0", "~");
    if head.contains('.') {
        return None;
    }
    let mut path = vec![head.clone()];
    let mut at = found;
    while let Value::Object(inner) = at {
        let (key, value) = inner.iter().next()?;
        path.push(key.clone());
        at = value;
    }
    if path.len() < 2 {
        return None;
    }
    let path = path.join(".");
    Some(format!(
        "a swept key path is one quoted key: `\"{path}\" = [...]`; unquoted, `{path}` is a table `{head}` holding the rest"
    ))
}

/// Entries of a TOML table, whichever kind it is.
trait TableLike<'t> {
    fn entries(self) -> Vec<(&'t str, Option<Range<usize>>, &'t toml_edit::Item)>;
}

impl<'t> TableLike<'t> for &'t toml_edit::Table {
    fn entries(self) -> Vec<(&'t str, Option<Range<usize>>, &'t toml_edit::Item)> {
        self.iter()
            .map(|(k, v)| (k, self.key(k).and_then(|k| k.span()), v))
            .collect()
    }
}

impl<'t> TableLike<'t> for &'t toml_edit::InlineTable {
    fn entries(self) -> Vec<(&'t str, Option<Range<usize>>, &'t toml_edit::Item)> {
        self.iter()
            .filter_map(|(k, _)| {
                self.get_key_value(k)
                    .map(|(key, item)| (k, key.span(), item))
            })
            .collect()
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {:?}", s),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "a table".into(),
        other => other.to_string(),
    }
}

/// The rules the schema cannot express; returns the merged job settings.
fn semantic_checks(
    exp: &Experiment,
    defaults: Option<&WorkspaceDefaults>,
    out: &mut Located,
) -> Option<ResolvedJob> {
    // Channels: lengths agree, std positive, bands used once.
    let mut seen_bands = HashMap::new();
    for (i, ch) in exp.channels.iter().enumerate() {
        for (field, len) in [("mean", ch.mean.len()), ("std", ch.std.len())] {
            if len != ch.bands.len() {
                out.push(
                    &format!("/channels/{i}/{field}"),
                    format!(
                        "`{field}` has {len} values but `bands` has {}",
                        ch.bands.len()
                    ),
                    Some(format!("{} values, one per band", ch.bands.len())),
                    Some(format!(
                        "give one {field} per entry of bands = {:?}",
                        ch.bands
                    )),
                );
            }
        }
        for (j, s) in ch.std.iter().enumerate() {
            if *s <= 0.0 {
                out.push(
                    &format!("/channels/{i}/std/{j}"),
                    format!("std {s} would divide by zero or flip the sign"),
                    Some("a positive number".into()),
                    None,
                );
            }
        }
        for (j, b) in ch.bands.iter().enumerate() {
            if let Some(prev) = seen_bands.insert(*b, (i, j)) {
                out.push(
                    &format!("/channels/{i}/bands/{j}"),
                    format!(
                        "band {b} is already used at channels[{}].bands[{}]",
                        prev.0, prev.1
                    ),
                    Some("each band at most once".into()),
                    Some("remove the duplicate".into()),
                );
            }
        }
    }

    // Tiles: divisible by 32 and by the U-Net's total down-sampling.
    let ds = &exp.dataset;
    let factor = 1u32 << exp.model.depth;
    if !ds.tile_size.is_multiple_of(32) || !ds.tile_size.is_multiple_of(factor) {
        out.push(
            "/dataset/tile_size",
            format!(
                "tile size {} is not divisible by {}",
                ds.tile_size,
                factor.max(32)
            ),
            Some(format!("a multiple of 32 and of 2^depth = {factor}")),
            Some(format!(
                "use {}",
                ds.tile_size.next_multiple_of(factor.max(32))
            )),
        );
    }
    // A 1 x 1 bottom: batch norm there normalises each channel over the
    // batch alone, and a batch of one tile (batch_size = 1, or a short last
    // batch) has one value a channel, which the trainer refuses mid-run.
    if ds.tile_size == factor && exp.model.batch_norm {
        out.push(
            "/model/depth",
            format!(
                "with depth {} a {}-pixel tile is 1 x 1 pixel at the U-Net's bottom, where batch norm over a batch of one tile has one value a channel",
                exp.model.depth, ds.tile_size
            ),
            Some(format!("2^depth at most half of tile_size ({})", ds.tile_size / 2)),
            Some(format!(
                "lower model.depth to {}, or use tiles of {} pixels",
                exp.model.depth - 1,
                ds.tile_size * 2
            )),
        );
    }
    if ds.split == Split::Spatial && ds.block_zoom >= ds.zoom {
        out.push(
            "/dataset/block_zoom",
            format!(
                "block_zoom {} is not coarser than the tile zoom {}",
                ds.block_zoom, ds.zoom
            ),
            Some(format!("a zoom below {}", ds.zoom)),
            Some("blocks are parent tiles at a coarser zoom, e.g. zoom - 3".into()),
        );
    }
    for (key, re) in [
        ("imagery_regex", &ds.imagery_regex),
        ("mask_regex", &ds.mask_regex),
    ] {
        // Parsing is ~50x cheaper than compiling, which keeps validation of
        // many files fast; a large counted repetition (`\w{1000}`) or a very
        // long pattern can still pass it and exceed the compiled size limit
        // that the data listing's `Regex::new` enforces, so such a pattern
        // is compiled too.
        let failed = match regex_syntax::Parser::new().parse(re) {
            Err(e) => Some(e.to_string()),
            Ok(hir) if re.len() > 1000 || repeats(&hir) > 100 => {
                regex::Regex::new(re).err().map(|e| e.to_string())
            }
            Ok(_) => None,
        };
        if let Some(msg) = failed {
            let last = msg.lines().last().unwrap_or("").trim().to_string();
            out.push(
                &format!("/dataset/{key}"),
                format!("regex does not compile: {last}"),
                Some("a Rust `regex` pattern".into()),
                Some(
                    "escape literal dots and brackets with a backslash; keep counted repetitions small"
                        .into(),
                ),
            );
        }
    }
    for key in ["imagery", "masks"] {
        let value = if key == "imagery" {
            &ds.imagery
        } else {
            &ds.masks
        };
        check_location(out, &format!("/dataset/{key}"), value, true);
    }
    if ds.synthetic.is_some() && (ds.imagery.starts_with("s3://") || ds.masks.starts_with("s3://"))
    {
        out.push(
            "/dataset/synthetic",
            "a synthetic dataset is generated locally, but the dataset points at S3".into(),
            Some("local imagery and masks directories".into()),
            None,
        );
    }

    // Model.
    if let crate::Loss::Weighted(_) = &exp.model.loss {
        if exp.model.loss.terms().is_empty() {
            out.push(
                "/model/loss",
                "every loss weight is zero".into(),
                Some("at least one positive weight".into()),
                None,
            );
        }
    }
    if let Some(init) = &exp.model.init_checkpoint {
        if init.starts_with("s3://") {
            check_s3(out, "/model/init_checkpoint", init, true);
        }
    }

    // Classes.
    for (i, class) in exp.classes.iter().enumerate() {
        if !is_color(&class.color) {
            out.push(
                &format!("/classes/{i}/color"),
                format!("`{}` is not a colour", class.color),
                Some("a CSS colour name or #rrggbb".into()),
                did_you_mean(&class.color, CSS_COLORS.iter().map(|(name, _)| *name))
                    .map(|c| format!("did you mean `{c}`?")),
            );
        }
    }

    // Job.
    let job = &exp.job;
    if !TRAINING_INSTANCE_TYPES.contains(&job.instance_type.as_str()) {
        out.push(
            "/job/instance_type",
            format!(
                "`{}` is not a SageMaker training instance type",
                job.instance_type
            ),
            Some("a type such as ml.p3.2xlarge, ml.g5.xlarge or ml.m5.xlarge".into()),
            Some(
                match did_you_mean(&job.instance_type, TRAINING_INSTANCE_TYPES.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "see the list in sca-train/spec/src/instance_types.rs".into(),
                },
            ),
        );
    }
    if exp.train.precision == crate::types::Precision::Bf16
        && exp.train.device != crate::types::Device::Cuda
    {
        out.push(
            "/train/precision",
            format!(
                "precision = \"bf16\" but device = \"{}\": bf16 convolutions run on a GPU only",
                serde_json::to_value(exp.train.device)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
            Some("device = \"cuda\" on a GPU instance type (compute capability 8.0 or newer)".into()),
            Some("set train.device = \"cuda\" (and a GPU job.instance_type), or remove precision (fp32)".into()),
        );
    }
    if exp.train.device == crate::types::Device::Cuda
        && TRAINING_INSTANCE_TYPES.contains(&job.instance_type.as_str())
    {
        let expected = Some(format!(
            "a GPU instance type with compute capability {} or newer ({})",
            crate::compute_capability_text(crate::MIN_CUDA_COMPUTE_CAPABILITY),
            crate::cuda_capable_families()
        ));
        match crate::gpu_of(&job.instance_type) {
            None => out.push(
                "/train/device",
                format!("device = \"cuda\" but `{}` has no GPU", job.instance_type),
                expected,
                Some("set job.instance_type to a GPU type, or device = \"cpu\" (or \"auto\", which uses a GPU when there is one)".into()),
            ),
            Some(gpu) if gpu.compute_capability < crate::MIN_CUDA_COMPUTE_CAPABILITY => out.push(
                "/train/device",
                format!(
                    "device = \"cuda\" but the {} GPUs of `{}` (compute capability {}) are older than the image's GPU kernels can be built for ({} and newer)",
                    gpu.name,
                    job.instance_type,
                    crate::compute_capability_text(gpu.compute_capability),
                    crate::compute_capability_text(crate::MIN_CUDA_COMPUTE_CAPABILITY)
                ),
                expected,
                Some("set job.instance_type to a newer GPU type, or device = \"cpu\" (or \"auto\", which falls back to the CPU)".into()),
            ),
            Some(_) => {}
        }
    }
    for (k, v) in &job.tags {
        let pointer = format!("/job/tags/{}", escape(k));
        if k.starts_with("aws:") || k.starts_with("sca:") {
            out.push(
                &pointer,
                format!("tag key `{k}` uses a reserved prefix"),
                Some("a key not starting with aws: or sca:".into()),
                Some("sca: tags (commit, image, experiment hash) are added by the launcher".into()),
            );
        }
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            out.push(
                &pointer,
                "tag too long".into(),
                Some("key of 1-128 and value of at most 256 characters".into()),
                None,
            );
        }
        // SageMaker's (and AWS's) tag pattern `[\p{L}\p{Z}\p{N}_.:/=+\-@]*`:
        // CreateTrainingJob refuses anything else, after the image push.
        let allowed = |c: char| {
            c.is_alphanumeric() || (c.is_whitespace() && !c.is_control()) || "_.:/=+-@".contains(c)
        };
        if let Some(c) = k.chars().chain(v.chars()).find(|&c| !allowed(c)) {
            out.push(
                &pointer,
                format!("tag `{k}` holds {c:?}, which SageMaker does not allow in tags"),
                Some("letters, digits, spaces and _ . : / = + - @".into()),
                Some("replace the character, e.g. with - or _".into()),
            );
        }
    }
    let defaults = defaults?;
    match ResolvedJob::resolve(exp, defaults) {
        Err(errors) => {
            for (key, message, help) in errors {
                out.push(
                    &format!("/{}", key.replace('.', "/")),
                    message,
                    None,
                    Some(help),
                );
            }
            None
        }
        Ok(resolved) => {
            let origin = |own: &Option<String>| {
                if own.is_some() {
                    ""
                } else {
                    " (from [workspace.metadata.sca] in Cargo.toml)"
                }
            };
            if !ROLE_ARN.is_match(&resolved.role_arn) {
                out.push(
                    "/job/role_arn",
                    format!(
                        "`{}`{} is not an IAM role ARN",
                        resolved.role_arn,
                        origin(&job.role_arn)
                    ),
                    Some("arn:aws:iam::<12-digit account>:role/<name>".into()),
                    None,
                );
            }
            check_s3(out, "/job/output", &resolved.output, false);
            if let Some(c) = &resolved.checkpoint_s3 {
                check_s3(out, "/job/checkpoint_s3", c, false);
            }
            if !BUCKET.is_match(&resolved.config_bucket) {
                out.push(
                    "/job/config_bucket",
                    format!(
                        "`{}`{} is not a valid S3 bucket name",
                        resolved.config_bucket,
                        origin(&job.config_bucket)
                    ),
                    Some("3-63 lowercase letters, digits, dots and hyphens".into()),
                    None,
                );
            }
            if !REGION.is_match(&resolved.region) {
                out.push(
                    "/job/region",
                    format!(
                        "`{}`{} is not an AWS region",
                        resolved.region,
                        origin(&job.region)
                    ),
                    Some("a region such as us-west-2".into()),
                    None,
                );
            }
            const MAX_RUNTIME: u64 = 28 * 24 * 3600;
            if resolved.max_runtime_secs == 0 || resolved.max_runtime_secs > MAX_RUNTIME {
                out.push(
                    "/job/max_runtime",
                    format!(
                        "max_runtime of {} s is outside SageMaker's limits",
                        resolved.max_runtime_secs
                    ),
                    Some("between 1 second and 28 days".into()),
                    None,
                );
            }
            if let Some(wait) = resolved.max_wait_secs {
                // The API's field is a 32-bit integer: a longer wait would wrap.
                if wait > i32::MAX as u64 {
                    out.push(
                        "/job/spot/max_wait",
                        format!("max_wait of {wait} s is outside SageMaker's limits"),
                        Some("at most 68 years (2^31 - 1 seconds); a few days is usual".into()),
                        None,
                    );
                }
                if wait < resolved.max_runtime_secs {
                    out.push(
                        "/job/spot/max_wait",
                        format!(
                            "max_wait ({wait} s) is shorter than max_runtime ({} s)",
                            resolved.max_runtime_secs
                        ),
                        Some("max_wait >= max_runtime, as SageMaker requires".into()),
                        None,
                    );
                }
                if resolved.checkpoint_s3.is_none() {
                    out.push("/job/spot", "managed spot training without `checkpoint_s3` restarts from scratch whenever the instance is reclaimed".into(), Some("job.checkpoint_s3 = \"s3://bucket/prefix\"".into()), Some("add checkpoint_s3 under [job]".into()));
                }
            }
            // A sweep's limit is on the total of its points, checked with them.
            if exp.sweep.is_none() && out.diagnostics.is_empty() {
                if let Err(e) = crate::prices::check_max_cost(job.max_cost_usd, &resolved) {
                    out.push("/job/max_cost_usd", e.message, None, Some(e.help));
                }
            }
            Some(resolved)
        }
    }
}

static ROLE_ARN: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9_+=,.@/-]+$").unwrap()
});
static BUCKET: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$").unwrap());
static REGION: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$").unwrap());

/// A dataset root: `s3://bucket/prefix` or a local path, nothing else.
fn check_location(out: &mut Located, pointer: &str, value: &str, allow_local: bool) {
    if value.starts_with("s3://") {
        check_s3(out, pointer, value, false);
    } else if let Some((scheme, _)) = value.split_once("://") {
        out.push(
            pointer,
            format!("`{scheme}://` locations are not supported"),
            Some("s3://bucket/prefix or a local directory".into()),
            None,
        );
    } else if !allow_local {
        out.push(
            pointer,
            "not an S3 URI".into(),
            Some("s3://bucket/prefix".into()),
            None,
        );
    }
}

/// `s3://bucket[/key]`, with a valid bucket name; `need_key` when an object is meant.
fn check_s3(out: &mut Located, pointer: &str, uri: &str, need_key: bool) {
    let Some(rest) = uri.strip_prefix("s3://") else {
        out.push(
            pointer,
            format!("`{uri}` is not an S3 URI"),
            Some("s3://bucket/prefix".into()),
            None,
        );
        return;
    };
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if !BUCKET.is_match(bucket) || bucket.contains("..") {
        out.push(
            pointer,
            format!("`{bucket}` is not a valid S3 bucket name"),
            Some("3-63 lowercase letters, digits, dots and hyphens".into()),
            None,
        );
    } else if need_key && key.is_empty() {
        out.push(
            pointer,
            format!("`{uri}` names a bucket, not an object"),
            Some("s3://bucket/path/to/model.safetensors".into()),
            None,
        );
    } else if key.contains("//") {
        out.push(
            pointer,
            format!("`{uri}` has an empty path segment"),
            Some("no `//` after the bucket".into()),
            None,
        );
    }
}

/// The colour names a class may use, with their CSS values.
const CSS_COLORS: &[(&str, [u8; 3])] = &[
    ("black", [0, 0, 0]),
    ("white", [255, 255, 255]),
    ("red", [255, 0, 0]),
    ("green", [0, 128, 0]),
    ("blue", [0, 0, 255]),
    ("yellow", [255, 255, 0]),
    ("cyan", [0, 255, 255]),
    ("magenta", [255, 0, 255]),
    ("pink", [255, 192, 203]),
    ("orange", [255, 165, 0]),
    ("purple", [128, 0, 128]),
    ("brown", [165, 42, 42]),
    ("gray", [128, 128, 128]),
    ("grey", [128, 128, 128]),
    ("lime", [0, 255, 0]),
    ("navy", [0, 0, 128]),
    ("teal", [0, 128, 128]),
    ("olive", [128, 128, 0]),
    ("maroon", [128, 0, 0]),
    ("silver", [192, 192, 192]),
    ("gold", [255, 215, 0]),
    ("violet", [238, 130, 238]),
    ("indigo", [75, 0, 130]),
    ("turquoise", [64, 224, 208]),
    ("salmon", [250, 128, 114]),
    ("coral", [255, 127, 80]),
    ("crimson", [220, 20, 60]),
    ("skyblue", [135, 206, 235]),
    ("lightblue", [173, 216, 230]),
    ("hotpink", [255, 105, 180]),
];

/// The most copies of one piece that `hir`'s counted repetitions make
/// (nested counts multiplied, saturating: three nested `{10000000}` must
/// not wrap to a small count; `{n,}` counts `n`).
fn repeats(hir: &regex_syntax::hir::Hir) -> u64 {
    use regex_syntax::hir::HirKind;
    match hir.kind() {
        HirKind::Repetition(r) => u64::from(r.max.unwrap_or(r.min))
            .max(1)
            .saturating_mul(repeats(&r.sub)),
        HirKind::Capture(c) => repeats(&c.sub),
        HirKind::Concat(hs) | HirKind::Alternation(hs) => hs.iter().map(repeats).max().unwrap_or(1),
        _ => 1,
    }
}

fn is_color(c: &str) -> bool {
    color_rgb(c).is_some()
}

/// A class colour's RGB value: one of the CSS names validation accepts, or
/// `#rrggbb`.
pub fn color_rgb(c: &str) -> Option<[u8; 3]> {
    if let Some((_, rgb)) = CSS_COLORS.iter().find(|(name, _)| *name == c) {
        return Some(*rgb);
    }
    // (from_str_radix would take a sign: `#+f+f+f`.)
    let hex = c
        .strip_prefix('#')
        .filter(|h| h.len() == 6 && h.bytes().all(|b| b.is_ascii_hexdigit()))?;
    let byte = |i: usize| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

/// The closest candidate to `word`, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&word.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The property names the schema allows at the object `pointer` points to.
fn allowed_keys(pointer: &str) -> Vec<String> {
    let node = resolve_object(schema_at(pointer));
    node.get("properties")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// The constant values a string enum at `pointer` allows (`oneOf` of `const`s, or `enum`).
fn enum_options(pointer: &str) -> Vec<String> {
    let node = schema_at(pointer);
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
    }
    ["oneOf", "anyOf"]
        .iter()
        .filter_map(|k| node.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(|b| {
            deref(b)
                .get("const")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .collect()
}

/// The (dereferenced) subschema for the instance at `pointer`.
fn schema_at(pointer: &str) -> &'static Value {
    let mut node = &*SCHEMA;
    for segment in pointer.split('/').skip(1) {
        node = resolve_object(deref(node));
        node = if let Some(p) = node
            .get("properties")
            .and_then(|p| p.get(unescape(segment).as_str()))
        {
            p
        } else if let Some(items) = node.get("items") {
            items
        } else if let Some(extra) = node.get("additionalProperties").filter(|a| a.is_object()) {
            extra
        } else {
            return &Value::Null;
        };
    }
    deref(node)
}

/// Follow `$ref` into `$defs`.
pub(crate) fn deref(node: &Value) -> &Value {
    match node
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        Some(name) => SCHEMA
            .get("$defs")
            .and_then(|d| d.get(name))
            .unwrap_or(node),
        None => node,
    }
}

/// For `anyOf`/`oneOf` (as for an optional table), the branch that is an object.
pub(crate) fn resolve_object(node: &Value) -> &Value {
    if node.get("properties").is_some() {
        return node;
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(branches) = node.get(key).and_then(Value::as_array) {
            for b in branches {
                let b = deref(b);
                if b.get("properties").is_some() {
                    return b;
                }
            }
        }
    }
    node
}

pub(crate) fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// `/channels/0/mean` -> `channels[0].mean`.
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        if segment.chars().all(|c| c.is_ascii_digit()) && !segment.is_empty() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&unescape(segment));
        }
    }
    out
}

/// 1-based line and character column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
