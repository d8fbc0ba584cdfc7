//! Sweeps: an experiment file with a `[sweep]` table stands for one child
//! experiment per point, and this module turns it into those children as
//! data (a [`SweepPlan`]), checking every point before anything launches.
//!
//! A point sets some keys of the file: the cartesian product of `grid` (first
//! key varying slowest, values in written order), and for each grid point
//! `samples` draws from `random`. A child is the parent's own text with the
//! point's values set by `toml_edit` (comments and layout kept), `[sweep]`
//! removed and `experiment.name` set to `<parent>-<sha8>`, the first 8 hex
//! digits of the sha256 of the point's canonical JSON: the same point always
//! has the same name, which is what lets a rerun of a sweep find its finished
//! points. Identical points are one child.
//!
//! Draws are a pure function of `experiment.seed`, the grid point's values
//! and the key path (a SplitMix64 stream each), so adding a grid value or
//! more samples leaves the points already drawn as they were; floats are
//! rounded to 4 significant digits, which keeps them readable and keeps a
//! platform's last-bit difference in `ln`/`exp` from renaming a point.
//!
//! Not sweepable: `experiment.name` (the children's names are derived from
//! it), `job.max_cost_usd` (a sweep's limit is on its total), anything under
//! `sweep`, and whole top-level tables. `experiment.seed` is sweepable
//! (repeats of one configuration); random draws use the parent's seed.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::{Number, Value};
use sha2::{Digest, Sha256};
use toml_edit::{DocumentMut, Item};

use crate::defaults::{ResolvedJob, WorkspaceDefaults};
use crate::naming::MAX_EXPERIMENT_NAME;
use crate::types::{Distribution, Experiment, Objective};
use crate::validate::{did_you_mean, escape, Located, Report};

/// `-` and 8 hex digits, appended to the sweep's name for each child.
pub const CHILD_SUFFIX_LEN: usize = 9;
/// The longest name a sweep file's experiment may have: its children's must fit.
pub const MAX_SWEEP_NAME: usize = MAX_EXPERIMENT_NAME - CHILD_SUFFIX_LEN;
/// A sweep of more points than this is refused as a probable mistake.
pub const MAX_POINTS: usize = 1000;

/// A sweep file expanded into its children.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPlan {
    /// The sweep file's `experiment.name`, which prefixes every child's.
    pub name: String,
    pub objective: Option<Objective>,
    pub max_parallel: Option<u32>,
    /// In order: grid points in product order, each followed by its draws.
    pub points: Vec<Point>,
}

/// One child experiment of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// `<sweep name>-<sha8 of the point>`, the child's `experiment.name`.
    pub name: String,
    /// Key path -> value: what this point sets.
    pub values: BTreeMap<String, Value>,
    /// The child experiment file: what a run validates, hashes and uploads.
    pub bytes: Vec<u8>,
    /// The child's job settings, merged with the workspace defaults.
    pub job: ResolvedJob,
}

impl Point {
    /// `model.depth = 3, train.learning_rate = 0.001`, for listings and messages.
    pub fn describe(&self) -> String {
        self.values
            .iter()
            .map(|(k, v)| format!("{k} = {}", canonical(v)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Validate `bytes` as the sweep file `file` and expand it. Every error (the
/// file's own, and each point's, located at the point's value in `[sweep]`)
/// comes back in the report; a file without `[sweep]` is an error too.
pub fn expand(
    file: &str,
    bytes: &[u8],
    defaults: &WorkspaceDefaults,
) -> Result<SweepPlan, Box<Report>> {
    let mut report = crate::validate::validate_bytes(file, bytes, defaults);
    if let Some(plan) = report.sweep.take() {
        return Ok(plan);
    }
    if report.is_valid() {
        report.diagnostics.push(crate::validate::Diagnostic {
            file: file.into(),
            line: 0,
            column: 0,
            span: None,
            key: "sweep".into(),
            message: "no [sweep] table: the file is one experiment, not a sweep".into(),
            expected: Some("a [sweep] table with `grid` or `random`".into()),
            help: Some("run it with `cargo xtask experiment run`, or add a [sweep] table".into()),
        });
        report.experiment = None;
        report.job = None;
    }
    // Boxed: a report holds the whole typed experiment.
    Err(Box::new(report))
}

/// The swept keys of one table of `[sweep]`, in the file's order.
struct Axis {
    path: String,
    /// JSON pointer of the key in the file, for locating findings.
    pointer: String,
    values: Values,
}

enum Values {
    /// The written values, as written.
    Grid(Vec<toml_edit::Value>),
    /// The distribution, and for `choice` its written values.
    Random(Distribution, Vec<toml_edit::Value>),
}

/// One value of a point and where in `[sweep]` it comes from.
#[derive(Clone)]
struct Setting {
    axis: usize,
    value: toml_edit::Value,
    /// JSON pointer of the grid value or of the distribution.
    source: String,
}

/// Check and expand the sweep of the valid-so-far experiment `exp`, pushing
/// findings to `out`; the plan when there were none, then or before.
pub(crate) fn check(
    exp: &Experiment,
    defaults: &WorkspaceDefaults,
    out: &mut Located,
) -> Option<SweepPlan> {
    let sweep = exp.sweep.as_ref()?;
    let mut doc: DocumentMut = out.text.parse().ok()?;
    let axes = axes(&doc, sweep);

    if exp.experiment.name.len() > MAX_SWEEP_NAME {
        out.push(
            "/experiment/name",
            format!(
                "a sweep's name is at most {MAX_SWEEP_NAME} characters; `{}` has {}",
                exp.experiment.name,
                exp.experiment.name.len()
            ),
            Some(format!("at most {MAX_SWEEP_NAME} characters")),
            Some(format!(
                "each point is named `<name>-<8 hex digits>`, at most {MAX_EXPERIMENT_NAME} characters: shorten the name"
            )),
        );
    }
    if axes.is_empty() {
        out.push_at(
            out.span_of("/sweep", true),
            "sweep",
            "the sweep has no keys to vary".into(),
            Some("`grid` or `random` with at least one key path".into()),
            Some(
                "add e.g. grid = { \"train.learning_rate\" = [1e-3, 3e-3] }, or remove [sweep]"
                    .into(),
            ),
        );
    }
    let has_random = axes.iter().any(|a| matches!(a.values, Values::Random(..)));
    match (has_random, sweep.samples) {
        (true, None) => out.push(
            "/sweep/random",
            "`random` without `samples`".into(),
            Some("samples = N, the number of draws".into()),
            Some("add `samples` under [sweep]".into()),
        ),
        (false, Some(_)) => out.push(
            "/sweep/samples",
            "`samples` without `random`: there is nothing to draw".into(),
            None,
            Some("remove `samples`, or add `random` distributions".into()),
        ),
        _ => {}
    }
    let grid_points = axes
        .iter()
        .filter_map(|a| match &a.values {
            Values::Grid(v) => Some(v.len()),
            Values::Random(..) => None,
        })
        .try_fold(1usize, usize::checked_mul);
    let samples = match (has_random, sweep.samples) {
        (true, Some(n)) => n as usize,
        _ => 1,
    };
    let count = grid_points.and_then(|g| g.checked_mul(samples));
    // Draws of each random axis: `samples` per grid point, each grid point
    // drawing from a stream of its own (one sample under a grid of two
    // points is two draws): the point count.
    let draws = match (has_random, sweep.samples) {
        (true, Some(_)) => count.unwrap_or(usize::MAX),
        _ => 0,
    };
    // (Synthetic in the file, or made so by the sweep.)
    let synthetic = exp.dataset.synthetic.is_some()
        || axes.iter().any(|a| a.path.starts_with("dataset.synthetic"));
    for (i, axis) in axes.iter().enumerate() {
        check_axis(axis, &axes[..i], &doc, out);
        if synthetic {
            check_synthetic_axis(axis, draws, out);
        }
    }
    if count.is_none_or(|c| c > MAX_POINTS) {
        out.push_at(
            out.span_of("/sweep", true),
            "sweep",
            format!(
                "the sweep has {} points; at most {MAX_POINTS}",
                count.map_or("too many".to_string(), |c| c.to_string())
            ),
            None,
            Some("sweep fewer values or fewer samples, or split the sweep into files".into()),
        );
    }
    if !out.diagnostics.is_empty() {
        return None;
    }

    let points = points(exp.experiment.seed, samples, &axes);
    doc.remove("sweep");
    let n = points.len();
    let mut plan = SweepPlan {
        name: exp.experiment.name.clone(),
        objective: sweep.objective,
        max_parallel: sweep.max_parallel,
        points: Vec::with_capacity(n),
    };
    // A bad value fails every point that has it: report it once, at the
    // value, naming the first point it fails.
    struct Failure {
        span: std::ops::Range<usize>,
        point: usize,
        settings: String,
        more: usize,
        diagnostic: crate::validate::Diagnostic,
    }
    let mut failures: Vec<Failure> = Vec::new();
    for (index, settings) in points.into_iter().enumerate() {
        let values: BTreeMap<String, Value> = settings
            .iter()
            .map(|s| (axes[s.axis].path.clone(), to_json(&s.value)))
            .collect();
        let name = format!(
            "{}-{}",
            exp.experiment.name,
            &hex_sha256(canonical(&Value::Object(values.clone().into_iter().collect())).as_bytes())
                [..8]
        );
        let mut child = doc.clone();
        set(
            child.as_item_mut(),
            &["experiment", "name"],
            toml_edit::Value::from(name.as_str()),
        )
        .expect("a valid file has [experiment] as a table");
        for s in &settings {
            let path: Vec<&str> = axes[s.axis].path.split('.').collect();
            set(child.as_item_mut(), &path, s.value.clone()).expect("paths were checked");
        }
        let bytes = child.to_string().into_bytes();
        // Validated without the sweep's cost limit, which is on the total of
        // its points (checked below): as a job's own limit it would refuse a
        // point over it, or in a region without prices, and the refusal,
        // left out here, would leave the point out of the plan unsaid.
        let mut probe = child.clone();
        if let Some(job) = probe.get_mut("job").and_then(Item::as_table_like_mut) {
            job.remove("max_cost_usd");
        }
        let report = crate::validate::validate_bytes(&name, probe.to_string().as_bytes(), defaults);
        let findings = report.diagnostics;
        if findings.is_empty() {
            match report.job {
                Some(job) => plan.points.push(Point {
                    name,
                    values,
                    bytes,
                    job,
                }),
                // (Validation resolves the job of every file it accepts.)
                None => out.push(
                    "/sweep",
                    format!("sweep point {name}: its job could not be resolved"),
                    None,
                    None,
                ),
            }
            continue;
        }
        for d in findings {
            let span = out.span_of(&blame(&d.key, &settings, &axes).source, false);
            let same = |f: &&mut Failure| {
                f.span == span && f.diagnostic.key == d.key && f.diagnostic.message == d.message
            };
            match failures.iter_mut().find(same) {
                Some(f) => f.more += 1,
                None => failures.push(Failure {
                    span,
                    point: index + 1,
                    settings: settings
                        .iter()
                        .map(|s| format!("{} = {}", axes[s.axis].path, shown(&s.value)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    more: 0,
                    diagnostic: d,
                }),
            }
        }
    }
    for f in failures {
        let more = match f.more {
            0 => String::new(),
            1 => "; 1 more point fails the same way".into(),
            m => format!("; {m} more points fail the same way"),
        };
        let d = f.diagnostic;
        out.push_at(
            f.span,
            &d.key,
            format!(
                "sweep point {} (point {} of {n}{more}): {}",
                f.settings, f.point, d.message
            ),
            d.expected,
            d.help,
        );
    }
    if let Some((a, b)) = same_name(&plan.points) {
        out.push(
            "/sweep",
            format!(
                "sweep points {} and {} are both named {}: the 8 hex digits of their settings' hashes agree, and each point's file and runs go by its name",
                shown_values(&plan.points[a]),
                shown_values(&plan.points[b]),
                plan.points[a].name
            ),
            None,
            Some("change one of their values slightly, or the seed of a random sweep".into()),
        );
    }
    if !out.diagnostics.is_empty() {
        return None;
    }
    if let Err(e) = crate::prices::check_sweep_max_cost(exp.job.max_cost_usd, &plan) {
        out.push("/job/max_cost_usd", e.message, None, Some(e.help));
        return None;
    }
    Some(plan)
}

/// Whether `run` is the name of a point of the sweep `sweep`, as
/// [`check`] names them: `<sweep>-<8 hex digits>`.
pub(crate) fn is_point_of(run: &str, sweep: &str) -> bool {
    run.strip_prefix(sweep)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|h| {
            h.len() == CHILD_SUFFIX_LEN - 1
                && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// The first two points of one name: distinct settings whose hashes share
/// their first 8 hex digits (about 1 sweep in 10,000 of 1,000 points).
fn same_name(points: &[Point]) -> Option<(usize, usize)> {
    let mut seen = std::collections::HashMap::new();
    points
        .iter()
        .enumerate()
        .find_map(|(i, p)| seen.insert(p.name.as_str(), i).map(|first| (first, i)))
}

fn shown_values(p: &Point) -> String {
    let v: Vec<String> = p.values.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!("({})", v.join(", "))
}

/// The swept keys, in the file's order (the typed `Sweep` has them sorted).
fn axes(doc: &DocumentMut, sweep: &crate::types::Sweep) -> Vec<Axis> {
    let mut axes = Vec::new();
    let table = |name: &str| {
        doc.get("sweep")
            .and_then(|s| s.get(name))
            .and_then(Item::as_table_like)
            .map(|t| {
                t.iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    for (key, item) in table("grid") {
        axes.push(Axis {
            pointer: format!("/sweep/grid/{}", escape(&key)),
            values: Values::Grid(written_values(&item)),
            path: key,
        });
    }
    for (key, item) in table("random") {
        let Some(dist) = sweep.random.get(&key) else {
            continue;
        };
        let choices = item.get("choice").map(written_values).unwrap_or_default();
        axes.push(Axis {
            pointer: format!("/sweep/random/{}", escape(&key)),
            path: key,
            values: Values::Random(dist.clone(), choices),
        });
    }
    axes
}

/// The values of an array as written: inline, or `[[sweep.grid."model.loss"]]`
/// / `[[sweep.random."model.loss".choice]]` tables, as inline tables; empty
/// for anything else (the schema has already refused it).
fn written_values(item: &Item) -> Vec<toml_edit::Value> {
    match item {
        Item::Value(toml_edit::Value::Array(a)) => a.iter().map(bare).collect(),
        Item::ArrayOfTables(a) => a
            .iter()
            .map(|t| toml_edit::Value::InlineTable(t.clone().into_inline_table()))
            .map(|v| bare(&v))
            .collect(),
        _ => Vec::new(),
    }
}

/// A value without the spaces and comments around it in its array.
fn bare(v: &toml_edit::Value) -> toml_edit::Value {
    let mut v = v.clone();
    v.decor_mut().clear();
    v
}

/// On a synthetic dataset, an axis that varies how its tiles are made:
/// they are made once per root (`dataset.imagery`, `dataset.masks`), so
/// every point after the first would be refused at its launch, the sweep
/// half launched. One value is no variation, and neither is one draw
/// (`draws`: of each random axis, over the whole sweep).
fn check_synthetic_axis(axis: &Axis, draws: usize, out: &mut Located) {
    let path = axis.path.as_str();
    let makes_tiles = path == "dataset.synthetic"
        || path.starts_with("dataset.synthetic.")
        || path == "dataset.tile_size"
        || path == "dataset.zoom";
    // Compared as values, not as written (`{tiles=10}`, `{ tiles = 10 }`).
    let distinct = |values: &[toml_edit::Value]| {
        let set: std::collections::BTreeSet<String> =
            values.iter().map(|v| canonical(&to_json(v))).collect();
        set.len()
    };
    let varies = match &axis.values {
        Values::Grid(values) => distinct(values) > 1,
        // Bounds check_axis refuses are not this check's to report.
        Values::Random(dist, choices) => {
            draws > 1
                && match dist {
                    Distribution::IntUniform([lo, hi]) => lo < hi,
                    Distribution::Choice(_) => distinct(choices) > 1,
                    Distribution::Uniform(_) | Distribution::LogUniform(_) => true,
                }
        }
    };
    if makes_tiles && varies {
        out.push_at(
            out.span_of(&axis.pointer, true),
            path,
            format!(
                "`{path}` varies how the synthetic tiles are made, but a dataset root's tiles are made once: every point after the first would find the first one's tiles and be refused"
            ),
            None,
            Some(
                "sweep it on a real dataset, or write one experiment file per setting with its own dataset.imagery and dataset.masks roots".into(),
            ),
        );
    }
}

fn check_axis(axis: &Axis, before: &[Axis], doc: &DocumentMut, out: &mut Located) {
    let key_span = out.span_of(&axis.pointer, true);
    let path = axis.path.as_str();
    let mut refuse = |message: String, expected: Option<String>, help: String| {
        out.push_at(key_span.clone(), path, message, expected, Some(help));
    };
    let segments: Vec<&str> = path.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return refuse(
            format!("`{path}` is not a key path"),
            Some("dotted keys such as \"train.learning_rate\"".into()),
            "write the table and key joined by dots".into(),
        );
    }
    if path == "sweep" || path.starts_with("sweep.") {
        return refuse(
            format!("`{path}` cannot be swept: a sweep does not vary itself"),
            None,
            "remove the key".into(),
        );
    }
    if path == "experiment.name" {
        return refuse(
            "`experiment.name` cannot be swept: each point is named `<experiment.name>-<8 hex digits of the point>`".into(),
            None,
            "remove the key; the children are named for you".into(),
        );
    }
    if path == "job.max_cost_usd" {
        return refuse(
            "`job.max_cost_usd` cannot be swept: a sweep's limit is on the total of its points"
                .into(),
            None,
            "set job.max_cost_usd once, in [job]".into(),
        );
    }
    if !KNOWN_PATHS.iter().any(|k| k == path) {
        if segments.len() == 1 && KNOWN_TABLES.contains(&path) {
            return refuse(
                format!("`{path}` is a whole table; a sweep sets keys"),
                example_in(path).map(|e| format!("a key path inside it, such as \"{e}\"")),
                "sweep the keys that differ".into(),
            );
        }
        let help = match did_you_mean(path, KNOWN_PATHS.iter().map(String::as_str)) {
            Some(s) => format!("did you mean `{s}`?"),
            None => "key paths are dotted keys of the experiment file, as in schema/experiment.schema.json".into(),
        };
        return refuse(
            format!("unknown key path `{path}`"),
            Some(
                "a key of the experiment file such as \"train.learning_rate\" or \"model.loss\""
                    .into(),
            ),
            help,
        );
    }
    if let Some(other) = before.iter().find(|b| {
        b.path == path
            || path.starts_with(&format!("{}.", b.path))
            || b.path.starts_with(&format!("{path}."))
    }) {
        return refuse(
            if other.path == path {
                format!("`{path}` is swept twice")
            } else {
                format!("`{path}` overlaps `{}`, which is also swept", other.path)
            },
            None,
            "sweep each key once, in `grid` or in `random`".into(),
        );
    }
    // Every table on the way must be a table in this file (`model.loss.bce`
    // cannot set a weight of `loss = "bce"`).
    let mut item = doc.as_item();
    for (i, segment) in segments[..segments.len() - 1].iter().enumerate() {
        match item.get(segment) {
            None => break,
            Some(next) if next.is_table_like() => item = next,
            Some(_) => {
                let parent = segments[..=i].join(".");
                return refuse(
                    format!("`{path}` is inside `{parent}`, which this file sets to a value, not a table"),
                    None,
                    format!("sweep `{parent}` itself, or write `{parent}` as a table"),
                );
            }
        }
    }
    if let Values::Random(dist, choices) = &axis.values {
        let bad = match dist {
            Distribution::Uniform([lo, hi]) => (!(lo.is_finite() && hi.is_finite() && lo < hi))
                .then_some("uniform = [lo, hi] with finite lo < hi"),
            Distribution::LogUniform([lo, hi]) => {
                (!(lo.is_finite() && hi.is_finite() && 0.0 < *lo && lo < hi))
                    .then_some("log_uniform = [lo, hi] with 0 < lo < hi")
            }
            Distribution::IntUniform([lo, hi]) => {
                (lo > hi).then_some("int_uniform = [lo, hi] with lo <= hi")
            }
            // The schema refuses `choice = []`; this also covers a written
            // form the choices were not read from, which a draw would index.
            Distribution::Choice(_) => choices
                .is_empty()
                .then_some("choice = [values], at least one"),
        };
        if let Some(expected) = bad {
            let span = out.span_of(&axis.pointer, false);
            let help = match dist {
                Distribution::Choice(_) => "write the values as `choice = [a, b]`",
                _ => "swap or fix the bounds",
            };
            out.push_at(
                span,
                path,
                format!("the distribution of `{path}` is empty or unbounded"),
                Some(expected.into()),
                Some(help.into()),
            );
        }
    }
}

/// Every point: grid points in product order, each with its draws; duplicates dropped.
fn points(seed: u64, samples: usize, axes: &[Axis]) -> Vec<Vec<Setting>> {
    let grid: Vec<usize> = (0..axes.len())
        .filter(|&i| matches!(axes[i].values, Values::Grid(_)))
        .collect();
    let random: Vec<usize> = (0..axes.len())
        .filter(|&i| matches!(axes[i].values, Values::Random(..)))
        .collect();
    let mut grid_points: Vec<Vec<Setting>> = vec![Vec::new()];
    for &i in &grid {
        let Values::Grid(values) = &axes[i].values else {
            unreachable!()
        };
        grid_points = grid_points
            .into_iter()
            .flat_map(|p| {
                values.iter().enumerate().map(move |(j, v)| {
                    let mut p = p.clone();
                    p.push(Setting {
                        axis: i,
                        value: v.clone(),
                        source: format!("{}/{j}", axes[i].pointer),
                    });
                    p
                })
            })
            .collect();
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for g in grid_points {
        let draws: Vec<Vec<Setting>> = if random.is_empty() {
            vec![g]
        } else {
            let at: BTreeMap<String, Value> = g
                .iter()
                .map(|s| (axes[s.axis].path.clone(), to_json(&s.value)))
                .collect();
            let at = canonical(&Value::Object(at.into_iter().collect()));
            let mut streams: Vec<(usize, SplitMix64)> = random
                .iter()
                .map(|&i| (i, SplitMix64::new(seed, &at, &axes[i].path)))
                .collect();
            (0..samples)
                .map(|_| {
                    let mut p = g.clone();
                    for (i, rng) in &mut streams {
                        let Values::Random(dist, choices) = &axes[*i].values else {
                            unreachable!()
                        };
                        p.push(Setting {
                            axis: *i,
                            value: draw(dist, choices, rng),
                            source: axes[*i].pointer.clone(),
                        });
                    }
                    p
                })
                .collect()
        };
        for p in draws {
            let key: Vec<String> = p
                .iter()
                .map(|s| canonical(&same_number(to_json(&s.value))))
                .collect();
            if seen.insert(key) {
                out.push(p);
            }
        }
    }
    out
}

/// The setting of a point that a child's finding at `key` is about: the
/// swept key that is, contains or lies inside it (the most specific one), or
/// else the point's first (a rule between keys, such as tile size and depth).
fn blame<'s>(key: &str, settings: &'s [Setting], axes: &[Axis]) -> &'s Setting {
    let related = |path: &str| {
        key == path
            || key.starts_with(&format!("{path}."))
            || key.starts_with(&format!("{path}["))
            || path.starts_with(&format!("{key}."))
    };
    settings
        .iter()
        .filter(|s| related(&axes[s.axis].path))
        .max_by_key(|s| axes[s.axis].path.len())
        .unwrap_or(&settings[0])
}

/// One draw from `dist` (`choices`: the written values of a `choice`).
fn draw(
    dist: &Distribution,
    choices: &[toml_edit::Value],
    rng: &mut SplitMix64,
) -> toml_edit::Value {
    let float = |x: f64, lo: f64, hi: f64| toml_edit::Value::from(round4(x).clamp(lo, hi));
    match dist {
        Distribution::Uniform([lo, hi]) => float(lo + rng.unit() * (hi - lo), *lo, *hi),
        Distribution::LogUniform([lo, hi]) => {
            let (a, b) = (lo.ln(), hi.ln());
            float((a + rng.unit() * (b - a)).exp(), *lo, *hi)
        }
        Distribution::IntUniform([lo, hi]) => {
            let span = (i128::from(*hi) - i128::from(*lo) + 1) as u128;
            toml_edit::Value::from((i128::from(*lo) + rng.below(span) as i128) as i64)
        }
        Distribution::Choice(_) => choices[rng.below(choices.len() as u128) as usize].clone(),
    }
}

/// `x` to 4 significant digits, by Rust's own (platform-independent) formatting.
fn round4(x: f64) -> f64 {
    format!("{x:.3e}").parse().unwrap_or(x)
}

/// SplitMix64 (Steele, Lea and Flood 2014): tiny, and the same on every machine.
struct SplitMix64(u64);

impl SplitMix64 {
    /// The stream of `path` at the grid point `at` (canonical JSON) under `seed`.
    fn new(seed: u64, at: &str, path: &str) -> Self {
        let h = Sha256::digest(format!("{seed}\n{at}\n{path}").as_bytes());
        SplitMix64(u64::from_le_bytes(h[..8].try_into().expect("8 bytes")))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n, for 1 <= n <= 2^64 (Lemire's multiply, without the
    /// rejection step: its bias is below 2^-40 for any n here).
    fn below(&mut self, n: u128) -> u128 {
        (u128::from(self.next()) * n) >> 64
    }
}

/// Set `path` under `item` to `value`, keeping the old value's spaces and
/// comment; missing tables on the way are created.
fn set(item: &mut Item, path: &[&str], mut value: toml_edit::Value) -> Result<(), String> {
    let (first, rest) = path.split_first().ok_or("empty path")?;
    let inline = !matches!(item, Item::Table(_));
    let table = item
        .as_table_like_mut()
        .ok_or_else(|| format!("`{first}` is under a value, not a table"))?;
    if rest.is_empty() {
        match table.get_mut(first) {
            Some(Item::Value(old)) => {
                *value.decor_mut() = old.decor().clone();
                *old = value;
            }
            Some(other) => *other = Item::Value(value),
            None => {
                table.insert(first, Item::Value(value));
            }
        }
        return Ok(());
    }
    if table.get(first).is_none() {
        let new = if inline {
            Item::Value(toml_edit::Value::InlineTable(Default::default()))
        } else {
            Item::Table(toml_edit::Table::new())
        };
        table.insert(first, new);
    }
    set(table.get_mut(first).expect("just inserted"), rest, value)
}

/// A TOML value as JSON (datetimes as their text, as validation reads them).
fn to_json(v: &toml_edit::Value) -> Value {
    use toml_edit::Value as T;
    match v {
        T::String(s) => Value::String(s.value().clone()),
        T::Integer(i) => Value::Number((*i.value()).into()),
        T::Float(f) => Number::from_f64(*f.value())
            .map_or_else(|| Value::String(f.value().to_string()), Value::Number),
        T::Boolean(b) => Value::Bool(*b.value()),
        T::Datetime(d) => Value::String(d.value().to_string()),
        T::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        T::InlineTable(t) => {
            Value::Object(t.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect())
        }
    }
}

/// `v` with every integral float that is exactly an integer written as
/// that integer: `1.0` and `1` are one value (for `train.learning_rate`
/// the one setting), so one point, whatever the file wrote.
fn same_number(v: Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 2f64.powi(53) => {
                Value::Number((f as i64).into())
            }
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(same_number).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, same_number(v))).collect())
        }
        other => other,
    }
}

/// Compact JSON with every object's keys sorted, whatever serde_json's map
/// keeps: what a point's name hashes.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, &Value> = m.iter().collect();
            let fields: Vec<String> = sorted
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// A value as the file writes it, for messages.
fn shown(v: &toml_edit::Value) -> String {
    v.to_string().trim().to_string()
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every key path of the experiment format except `sweep`'s, from the
/// generated schema (tables and the keys in them, not into arrays).
static KNOWN_PATHS: LazyLock<Vec<String>> = LazyLock::new(|| {
    fn walk(node: &Value, prefix: &str, out: &mut Vec<String>) {
        let node = crate::validate::resolve_object(crate::validate::deref(node));
        let Some(props) = node.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (key, child) in props {
            if prefix.is_empty() && key == "sweep" {
                continue;
            }
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if !prefix.is_empty() {
                out.push(path.clone());
            }
            walk(child, &path, out);
        }
    }
    let mut out = Vec::new();
    walk(&crate::validate::SCHEMA, "", &mut out);
    out
});

/// The top-level tables, which are not sweepable whole.
const KNOWN_TABLES: &[&str] = &[
    "experiment",
    "dataset",
    "channels",
    "classes",
    "model",
    "train",
    "job",
];

/// A key path inside `table`, for messages.
fn example_in(table: &str) -> Option<&'static str> {
    KNOWN_PATHS
        .iter()
        .find(|p| p.starts_with(&format!("{table}.")))
        .map(String::as_str)
}

#[cfg(test)]
mod tests;
