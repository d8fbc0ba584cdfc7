//! A run's learning curves from the `metrics.csv` the trainer writes: parsed
//! by header name, compared between two runs (the first validation epoch
//! where they part, for `experiment diff`) and drawn as an inline SVG (for
//! `experiment report`, which must load nothing from the network).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::experiment::record::{self, RunRecord};

/// The metrics compared between curves, in the order a divergence is looked for.
pub const METRICS: [&str; 7] = [
    "loss",
    "iou",
    "f1",
    "mcc",
    "precision",
    "recall",
    "accuracy",
];

/// One line of `metrics.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub epoch: u32,
    /// `train` or `val`.
    pub split: String,
    /// The values of [`METRICS`], in that order (NaN where the file has none).
    pub values: [f64; METRICS.len()],
}

impl Row {
    pub fn get(&self, metric: &str) -> f64 {
        METRICS
            .iter()
            .position(|m| *m == metric)
            .map_or(f64::NAN, |i| self.values[i])
    }
}

/// Every epoch of a run, as the trainer last wrote it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    /// One per epoch and split: a resumed run writes again the epochs after
    /// its checkpoint, and only the last of them counts.
    pub rows: Vec<Row>,
    /// Which of [`METRICS`] the file has a column for (a trainer older than
    /// a metric writes none; its rows hold NaN there).
    pub columns: [bool; METRICS.len()],
}

impl Curves {
    /// Parse `metrics.csv` text (columns found by header name, so a column
    /// added later does not break older readers); `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Curves> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .with_context(|| format!("{file} is empty: expected a header line"))?
            .split(',')
            .map(str::trim)
            .collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (Some(epoch), Some(split)) = (column("epoch"), column("split")) else {
            bail!(
                "{file} has no `epoch` and `split` columns (header {:?}): is it a metrics.csv the trainer wrote?",
                header.join(",")
            );
        };
        let metric_columns: Vec<Option<usize>> = METRICS.iter().map(|m| column(m)).collect();
        let mut rows = Vec::new();
        for (i, line) in lines.enumerate() {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            let cell = |c: usize| cells.get(c).copied().unwrap_or_default();
            let line_no = i + 2;
            let epoch = cell(epoch).parse().with_context(|| {
                format!("{file}:{line_no}: epoch {:?} is not a number", cell(epoch))
            })?;
            let mut values = [f64::NAN; METRICS.len()];
            for (v, c) in values.iter_mut().zip(&metric_columns) {
                if let Some(c) = c {
                    *v = cell(*c).parse().unwrap_or(f64::NAN);
                }
            }
            rows.push(Row {
                epoch,
                split: cell(split).to_string(),
                values,
            });
        }
        // The last row of each epoch and split, in the order written.
        let mut seen = std::collections::HashSet::new();
        let mut rows: Vec<Row> = rows
            .into_iter()
            .rev()
            .filter(|r| seen.insert((r.epoch, r.split.clone())))
            .collect();
        rows.reverse();
        Ok(Curves {
            rows,
            columns: std::array::from_fn(|i| metric_columns[i].is_some()),
        })
    }

    /// The rows of one split, in file order.
    pub fn split<'a>(&'a self, split: &'a str) -> impl Iterator<Item = &'a Row> + 'a {
        self.rows.iter().filter(move |r| r.split == split)
    }
}

/// Where the curves of two runs first differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    pub epoch: u32,
    pub metric: String,
    /// A value that is not finite (one side's NaN) is the string `"NaN"`,
    /// `"inf"` or `"-inf"`: JSON has no such number, and `null` would not
    /// read back.
    #[serde(with = "number_or_word")]
    pub a: f64,
    #[serde(with = "number_or_word")]
    pub b: f64,
}

/// An f64 in JSON: a number, or the word for one JSON cannot hold.
mod number_or_word {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match v.is_finite() {
            true => s.serialize_f64(*v),
            false => s.serialize_str(super::non_finite(*v)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(f64),
            Word(String),
        }
        match Either::deserialize(d)? {
            Either::Number(v) => Ok(v),
            Either::Word(w) => match w.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                _ => Err(serde::de::Error::custom(format!(
                    "{w:?} is not a number, \"NaN\", \"inf\" or \"-inf\""
                ))),
            },
        }
    }
}

/// The first validation epoch (and the first of [`METRICS`] in it) where
/// `a` and `b` differ by more than `tolerance`; `None` when they agree on
/// every epoch both have, in every metric both files have a column for. A
/// value missing (NaN) on one side only differs.
pub fn first_divergence(a: &Curves, b: &Curves, tolerance: f64) -> Option<Divergence> {
    let b_val: Vec<&Row> = b.split("val").collect();
    for ra in a.split("val") {
        let Some(rb) = b_val.iter().find(|r| r.epoch == ra.epoch) else {
            continue;
        };
        for (i, metric) in METRICS.iter().enumerate() {
            // A metric one trainer did not write is not a difference in the runs.
            if !(a.columns[i] && b.columns[i]) {
                continue;
            }
            let (x, y) = (ra.values[i], rb.values[i]);
            let differs = match (x.is_nan(), y.is_nan()) {
                (true, true) => false,
                (false, false) => (x - y).abs() > tolerance,
                _ => true,
            };
            if differs {
                return Some(Divergence {
                    epoch: ra.epoch,
                    metric: (*metric).to_string(),
                    a: x,
                    b: y,
                });
            }
        }
    }
    None
}

/// How many validation epochs both have.
pub fn common_val_epochs(a: &Curves, b: &Curves) -> usize {
    let b_epochs: Vec<u32> = b.split("val").map(|r| r.epoch).collect();
    a.split("val")
        .filter(|r| b_epochs.contains(&r.epoch))
        .count()
}

/// The directory holding a run's model files on this machine: the local or
/// docker run's `/opt/ml/model`, else what `experiment fetch` unpacked.
pub fn artifacts_dir(root: &Path, r: &RunRecord) -> Option<PathBuf> {
    [
        r.model_dir(root),
        record::run_dir(root, &r.job_name).join("fetched"),
    ]
    .into_iter()
    .find(|d| d.join("metrics.csv").is_file())
}

/// A run's curves, if its `metrics.csv` is on this machine.
pub fn load(root: &Path, r: &RunRecord) -> Result<Option<Curves>> {
    let Some(dir) = artifacts_dir(root, r) else {
        return Ok(None);
    };
    let path = dir.join("metrics.csv");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Curves::parse(&text, &path.display().to_string()).map(Some)
}

const PANEL_W: f64 = 320.0;
const PANEL_H: f64 = 200.0;
const MARGIN: (f64, f64, f64, f64) = (46.0, 12.0, 26.0, 30.0); // left, right, top, bottom
const TRAIN_COLOUR: &str = "#1f77b4";
const VAL_COLOUR: &str = "#e6550d";

/// One SVG with two panels, loss and IoU per epoch, train and validation
/// lines each: `<svg class="curves" data-job="JOB">`.
pub fn svg(curves: &Curves, job: &str) -> String {
    let mut s = format!(
        r#"<svg class="curves" data-job="{}" width="{}" height="{}" viewBox="0 0 {} {}" role="img" aria-label="loss and IoU per epoch of {}">"#,
        escape(job),
        2.0 * PANEL_W,
        PANEL_H,
        2.0 * PANEL_W,
        PANEL_H,
        escape(job),
    );
    panel(&mut s, curves, "loss", "loss", 0.0);
    panel(&mut s, curves, "iou", "IoU", PANEL_W);
    s.push_str("</svg>");
    s
}

/// How a value that is not finite is shown.
fn non_finite(v: f64) -> &'static str {
    match v {
        v if v.is_nan() => "NaN",
        v if v > 0.0 => "inf",
        _ => "-inf",
    }
}

fn panel(s: &mut String, curves: &Curves, metric: &str, title: &str, x0: f64) {
    let (ml, mr, mt, mb) = MARGIN;
    let (left, right, top, bottom) = (x0 + ml, x0 + PANEL_W - mr, mt, PANEL_H - mb);
    let points: Vec<(u32, f64)> = curves
        .rows
        .iter()
        .map(|r| (r.epoch, r.get(metric)))
        .filter(|(_, v)| v.is_finite())
        .collect();
    // Every epoch with a row for the metric, finite or not: a loss gone
    // NaN at epoch 4 of 10 shows ten epochs, not a healthy shorter run.
    let has_column = METRICS
        .iter()
        .position(|m| *m == metric)
        .is_some_and(|i| curves.columns[i]);
    let epochs: Vec<u32> = match has_column {
        true => curves.rows.iter().map(|r| r.epoch).collect(),
        false => Vec::new(),
    };
    let (e_min, e_max) = epochs
        .iter()
        .fold((u32::MAX, 0), |(lo, hi), e| (lo.min(*e), hi.max(*e)));
    let (mut v_min, mut v_max) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| {
            (lo.min(*v), hi.max(*v))
        });
    if points.is_empty() {
        (v_min, v_max) = (0.0, 1.0);
    }
    // A flat curve gets a range around it, wide enough to show at its
    // magnitude (±0.5 vanishes beside 1e17: a zero span, NaN coordinates).
    let magnitude = v_min.abs().max(v_max.abs());
    if v_max - v_min <= magnitude * 1e-9 {
        let pad = (magnitude * 1e-3).max(0.5);
        (v_min, v_max) = (v_min - pad, v_max + pad);
    }
    let e_span = f64::from(e_max.saturating_sub(e_min).max(1));
    let x = |e: u32| left + (right - left) * f64::from(e.saturating_sub(e_min)) / e_span;
    // In halves: a span near f64's limit would overflow to infinity.
    let y = |v: f64| {
        let share = (v / 2.0 - v_min / 2.0) / (v_max / 2.0 - v_min / 2.0);
        bottom - (bottom - top) * share
    };
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="16" font-size="12" font-weight="bold">{title}</text><rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#bbb"/>"##,
        left,
        right - left,
        bottom - top
    );
    // Axis labels: the value range and the epoch range.
    let _ = write!(
        s,
        r##"<g font-size="10" fill="#555"><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><text x="{left:.1}" y="{:.1}">epoch {}</text><text x="{right:.1}" y="{:.1}" text-anchor="end">{}</text></g>"##,
        left - 4.0,
        top + 8.0,
        short_number(v_max),
        left - 4.0,
        bottom,
        short_number(v_min),
        bottom + 14.0,
        if epochs.is_empty() { 0 } else { e_min },
        bottom + 14.0,
        if epochs.is_empty() { 0 } else { e_max },
    );
    let mut notes = 0;
    for (split, colour) in [("train", TRAIN_COLOUR), ("val", VAL_COLOUR)] {
        // A line breaks where a value is not finite (NaN, inf, a cell that
        // did not parse), never bridged as if the epochs between were fine;
        // each such epoch is marked on the axis, the first named.
        let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        let mut lost: Vec<(u32, f64)> = Vec::new();
        if has_column {
            for (e, v) in curves.split(split).map(|r| (r.epoch, r.get(metric))) {
                if v.is_finite() {
                    segments.last_mut().expect("one").push((x(e), y(v)));
                } else {
                    lost.push((e, v));
                    segments.push(Vec::new());
                }
            }
        }
        for pts in segments.iter().filter(|p| !p.is_empty()) {
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = write!(
                s,
                r#"<polyline class="{split}" fill="none" stroke="{colour}" stroke-width="1.8" points="{}"/>"#,
                path.join(" ")
            );
            for (px, py) in pts {
                let _ = write!(
                    s,
                    r#"<circle cx="{px:.1}" cy="{py:.1}" r="2" fill="{colour}"/>"#
                );
            }
        }
        for (e, v) in &lost {
            let _ = write!(
                s,
                r#"<text class="nonfinite {split}" data-epoch="{e}" x="{:.1}" y="{:.1}" font-size="11" fill="{colour}" text-anchor="middle">×<title>{split} {metric} {} at epoch {e}</title></text>"#,
                x(*e),
                bottom - 3.0,
                non_finite(*v)
            );
        }
        if let Some((first, v)) = lost.first() {
            notes += 1;
            let _ = write!(
                s,
                r#"<text class="nonfinite-note" x="{:.1}" y="{:.1}" font-size="10" fill="{colour}">{split}: not finite at {} epoch(s), first {} at epoch {first}</text>"#,
                left + 4.0,
                top + 12.0 * f64::from(notes),
                lost.len(),
                non_finite(*v),
            );
        }
    }
    // Legend, top right inside the panel.
    let _ = write!(
        s,
        r#"<g font-size="10"><text x="{:.1}" y="{:.1}" fill="{TRAIN_COLOUR}" text-anchor="end">train</text><text x="{:.1}" y="{:.1}" fill="{VAL_COLOUR}" text-anchor="end">val</text></g>"#,
        right - 4.0,
        top + 12.0,
        right - 4.0,
        top + 24.0,
    );
}

/// A metric's value in a table: 4 decimals, or 4 significant digits below
/// 1e-3 (a sweep's `val_loss` points 0.00012 and 0.00014 are not both
/// `0.0001`, one of them in bold).
pub fn metric(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

fn short_number(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{v:.2e}")
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// `s` with HTML's special characters escaped (text and attribute values).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trainer's header (sca-train `metrics::CSV_HEADER`).
    const HEADER: &str =
        "epoch,split,loss,iou,precision,recall,f1,mcc,accuracy,seconds,tp,fp,tn,fn";

    fn csv(rows: &[(u32, &str, f64, f64)]) -> Curves {
        let mut text = format!("{HEADER}\n");
        for (epoch, split, loss, iou) in rows {
            text.push_str(&format!(
                "{epoch},{split},{loss},{iou},0.5,0.5,0.5,0.1,0.9,1.5,1,2,3,4\n"
            ));
        }
        Curves::parse(&text, "metrics.csv").unwrap()
    }

    #[test]
    fn parses_the_trainers_header_by_name() {
        let c = csv(&[(1, "train", 0.7, 0.3), (1, "val", 0.6, 0.4)]);
        assert_eq!(c.rows.len(), 2);
        assert_eq!(c.rows[1].split, "val");
        assert_eq!(c.rows[1].get("loss"), 0.6);
        assert_eq!(c.rows[1].get("iou"), 0.4);
        assert_eq!(c.rows[1].get("mcc"), 0.1);
        // Reordered and missing columns.
        let c = Curves::parse("split,iou,epoch\nval,0.5,3\n", "m.csv").unwrap();
        assert_eq!(c.rows[0].epoch, 3);
        assert_eq!(c.rows[0].get("iou"), 0.5);
        assert!(c.rows[0].get("loss").is_nan());
    }

    #[test]
    fn bad_files_are_named() {
        let e = Curves::parse("", "runs/x/metrics.csv").unwrap_err();
        assert!(e.to_string().contains("runs/x/metrics.csv is empty"), "{e}");
        let e = Curves::parse("a,b\n1,2\n", "m.csv").unwrap_err();
        assert!(e.to_string().contains("no `epoch` and `split`"), "{e}");
        let e = Curves::parse("epoch,split\nx,val\n", "m.csv").unwrap_err();
        assert!(e.to_string().contains("m.csv:2"), "{e}");
    }

    #[test]
    fn divergence_is_the_first_validation_epoch_beyond_the_tolerance() {
        let a = csv(&[
            (1, "train", 0.9, 0.1),
            (1, "val", 0.8, 0.2),
            (2, "val", 0.7, 0.3),
            (3, "val", 0.6, 0.4),
        ]);
        // Train rows differ at once; validation from epoch 2, in IoU only.
        let b = csv(&[
            (1, "train", 0.5, 0.5),
            (1, "val", 0.8, 0.20000001),
            (2, "val", 0.7, 0.35),
            (3, "val", 0.6, 0.5),
        ]);
        assert_eq!(
            first_divergence(&a, &b, 1e-4),
            Some(Divergence {
                epoch: 2,
                metric: "iou".into(),
                a: 0.3,
                b: 0.35
            })
        );
        assert_eq!(first_divergence(&a, &a, 0.0), None);
        assert_eq!(first_divergence(&a, &b, 1.0), None);
        assert_eq!(common_val_epochs(&a, &b), 3);
        // A shorter run agrees on the epochs it has.
        let short = csv(&[(1, "val", 0.8, 0.2)]);
        assert_eq!(first_divergence(&a, &short, 1e-9), None);
        assert_eq!(common_val_epochs(&a, &short), 1);
    }

    /// Flat curves of any magnitude, and spans near f64's limit, draw at
    /// finite coordinates.
    #[test]
    fn extreme_values_draw_at_finite_coordinates() {
        for csv in [
            "epoch,split,loss\n1,train,1e17\n",
            "epoch,split,loss\n1,train,0.25\n2,train,0.25\n",
            "epoch,split,loss\n1,train,-1.7e308\n2,train,1.7e308\n",
        ] {
            let svg = svg(&Curves::parse(csv, "m").unwrap(), "j");
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{csv}: {svg}");
            assert!(svg.len() < 4000, "{csv}: labels of 300 digits? {svg}");
        }
    }

    #[test]
    fn small_metrics_keep_their_digits() {
        assert_eq!(metric(0.5), "0.5000");
        assert_eq!(metric(0.0), "0.0000");
        assert_eq!(metric(0.00012), "1.200e-4");
        assert_ne!(metric(0.00012), metric(0.00014));
    }

    #[test]
    fn nan_on_one_side_only_differs() {
        let a = Curves::parse("epoch,split,loss\n1,val,0.5\n", "a").unwrap();
        let b = Curves::parse("epoch,split,loss\n1,val,NaN\n", "b").unwrap();
        let d = first_divergence(&a, &b, 1.0).unwrap();
        assert_eq!((d.epoch, d.metric.as_str()), (1, "loss"));
        assert_eq!(first_divergence(&b, &b, 0.0), None);
    }

    /// A metric column that only one run's trainer wrote is not compared.
    #[test]
    fn a_column_on_one_side_only_is_no_divergence() {
        let a = Curves::parse("epoch,split,loss\n1,val,0.5\n", "a").unwrap();
        let b = Curves::parse("epoch,split,loss,mcc\n1,val,0.5,0.1\n", "b").unwrap();
        assert_eq!(first_divergence(&a, &b, 0.0), None);
        assert_eq!(first_divergence(&b, &a, 0.0), None);
        let c = Curves::parse("epoch,split,loss,mcc\n1,val,0.6,0.1\n", "c").unwrap();
        let d = first_divergence(&a, &c, 0.0).unwrap();
        assert_eq!((d.epoch, d.metric.as_str()), (1, "loss"));
    }

    /// A resumed run writes the epochs after its checkpoint again: the last
    /// row of an epoch and split is the one that counts.
    #[test]
    fn a_repeated_epoch_counts_once_as_last_written() {
        let resumed = csv(&[
            (1, "val", 0.8, 0.2),
            (2, "train", 0.9, 0.1),
            (2, "val", 0.7, 0.9),
            (2, "train", 0.6, 0.3),
            (2, "val", 0.7, 0.3),
            (3, "val", 0.6, 0.4),
        ]);
        let once = csv(&[
            (1, "val", 0.8, 0.2),
            (2, "train", 0.6, 0.3),
            (2, "val", 0.7, 0.3),
            (3, "val", 0.6, 0.4),
        ]);
        assert_eq!(resumed, once);
        assert_eq!(common_val_epochs(&resumed, &once), 3);
        assert_eq!(first_divergence(&resumed, &once, 0.0), None);
        assert_eq!(first_divergence(&once, &resumed, 0.0), None);
    }

    #[test]
    fn svg_has_both_panels_and_both_splits() {
        let c = csv(&[
            (1, "train", 0.9, 0.1),
            (1, "val", 0.8, 0.2),
            (2, "train", 0.5, 0.5),
            (2, "val", 0.6, 0.4),
        ]);
        let s = svg(&c, "job<1>");
        assert!(
            s.starts_with(r#"<svg class="curves" data-job="job&lt;1&gt;""#),
            "{s}"
        );
        assert_eq!(s.matches("<polyline").count(), 4, "{s}");
        assert!(s.contains(">loss<") && s.contains(">IoU<"));
        assert!(s.ends_with("</svg>"));
        // A value gone NaN breaks its line there, is marked, and the epoch
        // axis still runs to the last epoch.
        let nan = csv(&[
            (1, "val", 0.8, 0.2),
            (2, "val", f64::NAN, 0.3),
            (3, "val", 0.6, 0.4),
            (4, "val", f64::INFINITY, 0.5),
            (5, "val", f64::NAN, 0.5),
        ]);
        let s = svg(&nan, "j");
        let loss = &s[..s.find(">IoU<").unwrap()];
        assert_eq!(loss.matches(r#"<polyline class="val""#).count(), 2, "{s}");
        assert_eq!(loss.matches(r#"class="nonfinite val""#).count(), 3, "{s}");
        assert!(
            loss.contains(">val: not finite at 3 epoch(s), first NaN at epoch 2<"),
            "{s}"
        );
        assert!(loss.contains(">epoch 1<") && loss.contains(">5<"), "{s}");
        assert!(loss.contains("val loss inf at epoch 4"), "{s}");
        // A NaN divergence reads back from JSON.
        let d = Divergence {
            epoch: 2,
            metric: "loss".into(),
            a: 0.5,
            b: f64::NAN,
        };
        let text = serde_json::to_string(&d).unwrap();
        assert!(text.contains(r#""b":"NaN""#), "{text}");
        let back: Divergence = serde_json::from_str(&text).unwrap();
        assert!(back.a == 0.5 && back.b.is_nan() && back.epoch == 2);
        // Nothing to draw still makes a valid, empty chart.
        let empty = svg(&Curves::default(), "j");
        assert_eq!(empty.matches("<polyline").count(), 0);
        assert!(!empty.contains("NaN") && !empty.contains("inf"), "{empty}");
    }
}
