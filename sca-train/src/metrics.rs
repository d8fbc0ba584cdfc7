//! Segmentation metrics, the per-epoch metric record and its outputs: one
//! `key=value` log line per epoch and split (for SageMaker metric regexes),
//! `metrics.json` / `metrics.csv` (written atomically), a PNG of the loss and
//! IoU curves, and prediction-vs-mask overlay PNGs.
//!
//! # Confusion matrix and formulas
//!
//! A pixel is predicted snow when its logit is `> 0` (probability > 0.5; a NaN
//! logit counts as "not snow") and is snow when its mask value is `> 0.5`.
//!
//! | metric    | formula                                                   | zero denominator |
//! |-----------|-----------------------------------------------------------|------------------|
//! | IoU       | tp / (tp + fp + fn)                                        | 1 |
//! | precision | tp / (tp + fp)                                             | 1 if fn = 0, else 0 |
//! | recall    | tp / (tp + fn)                                             | 1 if fp = 0, else 0 |
//! | F1        | 2 tp / (2 tp + fp + fn)                                    | 1 |
//! | MCC       | (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn))       | 1 if fp = fn = 0, else 0 |
//! | accuracy  | (tp + tn) / (tp + fp + tn + fn)                            | 1 |
//!
//! The rule behind the zero-denominator values: a metric is 1 when prediction
//! and truth agree perfectly (e.g. no snow predicted on a tile without snow),
//! and 0 otherwise. Everything is computed in `f64` from `u64` counts.
//!
//! # Log line
//!
//! [`EpochMetrics::log_line`] is exactly
//!
//! ```text
//! epoch=<u32> split=<train|val> loss=<f> iou=<f> precision=<f> recall=<f> f1=<f> mcc=<f> accuracy=<f> seconds=<f>
//! ```
//!
//! with keys always in this order, single spaces, and values printed with 6
//! decimals (`{:.6}`; `seconds` with 3), so a regex such as
//! `split=val .*iou=([0-9.eE+-]+)` reads it; [`metric_definitions`] lists one
//! per split and metric.

use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::RawTile;

/// Errors writing metric files and images.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plotting {path}: {message}")]
    Plot { path: PathBuf, message: String },
    #[error("encoding {path}: {message}")]
    Encode { path: PathBuf, message: String },
    #[error("overlay: {0}")]
    Shape(String),
}

pub type Result<T, E = MetricsError> = std::result::Result<T, E>;

/// Binary confusion matrix in pixels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

fn ratio(num: u64, den: u64, if_zero: f64) -> f64 {
    if den == 0 {
        if_zero
    } else {
        num as f64 / den as f64
    }
}

impl Confusion {
    /// The matrix of `logits` (threshold 0) against `masks` (threshold 0.5).
    pub fn from_logits(logits: &[f32], masks: &[f32]) -> Self {
        let mut c = Confusion::default();
        c.update(logits, masks);
        c
    }

    /// Add the pixels of `logits` against `masks` (same length).
    pub fn update(&mut self, logits: &[f32], masks: &[f32]) {
        assert_eq!(
            logits.len(),
            masks.len(),
            "logits and masks differ in length"
        );
        let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
        for (&l, &m) in logits.iter().zip(masks) {
            let (p, t) = (l > 0.0, m > 0.5);
            tp += (p && t) as u64;
            fp += (p && !t) as u64;
            fn_ += (!p && t) as u64;
        }
        self.tp += tp;
        self.fp += fp;
        self.fn_ += fn_;
        self.tn += logits.len() as u64 - tp - fp - fn_;
    }

    /// Add another matrix.
    pub fn merge(&mut self, other: &Confusion) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.tn += other.tn;
        self.fn_ += other.fn_;
    }

    /// Number of pixels.
    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    fn perfect(&self) -> f64 {
        if self.fp == 0 && self.fn_ == 0 {
            1.0
        } else {
            0.0
        }
    }

    /// tp / (tp + fp + fn); 1 when there is no positive at all.
    pub fn iou(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp + self.fn_, 1.0)
    }

    /// tp / (tp + fp); with nothing predicted, 1 if nothing was missed, else 0.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp, self.perfect())
    }

    /// tp / (tp + fn); with no true positive pixel, 1 if nothing was falsely predicted, else 0.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_, self.perfect())
    }

    /// 2 tp / (2 tp + fp + fn) (the harmonic mean of precision and recall); 1 when there is no positive.
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_, 1.0)
    }

    /// Matthews correlation coefficient in [-1, 1]; when a marginal is empty, 1 if perfect, else 0.
    pub fn mcc(&self) -> f64 {
        let (tp, fp, tn, fn_) = (
            self.tp as f64,
            self.fp as f64,
            self.tn as f64,
            self.fn_ as f64,
        );
        let den = (tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_);
        if den == 0.0 {
            self.perfect()
        } else {
            (tp * tn - fp * fn_) / den.sqrt()
        }
    }

    /// (tp + tn) / total; 1 for an empty matrix.
    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.total(), 1.0)
    }
}

/// Which split a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitName {
    Train,
    Val,
}

impl fmt::Display for SplitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SplitName::Train => "train",
            SplitName::Val => "val",
        })
    }
}

/// One epoch's metrics on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: u32,
    pub split: SplitName,
    /// Mean loss: on train, over the epoch's steps (each batch's mean); on
    /// val, over the tiles (each batch's mean weighted by its tiles; the
    /// Dice and Lovász terms are still pooled per batch).
    pub loss: f64,
    pub iou: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub mcc: f64,
    pub accuracy: f64,
    /// Wall-clock seconds of the pass.
    pub seconds: f64,
    pub confusion: Confusion,
}

pub use sca_spec::contract::{metric_definitions, LOG_KEYS};

impl EpochMetrics {
    /// A record from the pass's mean loss, confusion matrix and duration.
    pub fn new(epoch: u32, split: SplitName, loss: f64, c: &Confusion, seconds: f64) -> Self {
        EpochMetrics {
            epoch,
            split,
            loss,
            iou: c.iou(),
            precision: c.precision(),
            recall: c.recall(),
            f1: c.f1(),
            mcc: c.mcc(),
            accuracy: c.accuracy(),
            seconds,
            confusion: *c,
        }
    }

    /// The fixed one-line `key=value` form (see the module docs).
    pub fn log_line(&self) -> String {
        format!(
            "epoch={} split={} loss={:.6} iou={:.6} precision={:.6} recall={:.6} f1={:.6} mcc={:.6} accuracy={:.6} seconds={:.3}",
            self.epoch,
            self.split,
            self.loss,
            self.iou,
            self.precision,
            self.recall,
            self.f1,
            self.mcc,
            self.accuracy,
            self.seconds
        )
    }
}

/// A pass's mean loss over tiles, from each batch's mean: a short last
/// batch counts for the tiles it holds, not as a whole batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct TileMean {
    sum: f64,
    tiles: usize,
}

impl TileMean {
    /// Add a batch's mean loss over its `tiles` tiles. A non-finite one is
    /// refused (and returned): it would reach the checkpoints' position as
    /// JSON `null`, which no later run could read back.
    pub fn add(&mut self, batch_mean: f64, tiles: usize) -> std::result::Result<(), f64> {
        if !batch_mean.is_finite() {
            return Err(batch_mean);
        }
        self.sum += batch_mean * tiles as f64;
        self.tiles += tiles;
        Ok(())
    }

    /// The mean over every tile added (0 when none was).
    pub fn mean(&self) -> f64 {
        self.sum / self.tiles.max(1) as f64
    }
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory,
/// then a rename. Creates the parent directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fsx::write_atomic(path, bytes).map_err(|e| MetricsError::Io {
        path: e.path,
        source: e.source,
    })
}

/// Write all records as a JSON array (atomically).
pub fn write_metrics_json(path: &Path, records: &[EpochMetrics]) -> Result<()> {
    let text = serde_json::to_string_pretty(records).expect("metrics serialize");
    write_atomic(path, format!("{text}\n").as_bytes())
}

/// The CSV header of [`write_metrics_csv`].
pub const CSV_HEADER: &str =
    "epoch,split,loss,iou,precision,recall,f1,mcc,accuracy,seconds,tp,fp,tn,fn";

/// Write all records as CSV with [`CSV_HEADER`] (atomically).
pub fn write_metrics_csv(path: &Path, records: &[EpochMetrics]) -> Result<()> {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in records {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.epoch,
            r.split,
            r.loss,
            r.iou,
            r.precision,
            r.recall,
            r.f1,
            r.mcc,
            r.accuracy,
            r.seconds,
            r.confusion.tp,
            r.confusion.fp,
            r.confusion.tn,
            r.confusion.fn_
        ));
    }
    write_atomic(path, s.as_bytes())
}

fn encode_png(path: &Path, img: &image::RgbImage) -> Result<()> {
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| MetricsError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_atomic(path, &png)
}

/// The font bundled for plots (DejaVu Sans, printable ASCII subset), so no
/// system fonts are needed.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-ascii.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is embedded and known to parse; a failure would only drop text.
        let _ =
            plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT);
    });
}

/// Plot loss and IoU per epoch for train and val, side by side, as a PNG
/// (atomically). Non-finite values are skipped.
pub fn plot_curves(path: &Path, records: &[EpochMetrics]) -> Result<()> {
    use plotters::prelude::*;
    register_font();
    let (w, h) = (1200u32, 480u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let perr = |e: &dyn fmt::Display| MetricsError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(&e))?;
        let (left, right) = root.split_horizontally(w / 2);
        type Getter = fn(&EpochMetrics) -> f64;
        let panels: [(_, &str, Getter); 2] =
            [(left, "loss", |m| m.loss), (right, "IoU", |m| m.iou)];
        for (area, title, get) in panels {
            let pts = |s: SplitName| -> Vec<(f64, f64)> {
                records
                    .iter()
                    .filter(|m| m.split == s && get(m).is_finite())
                    .map(|m| (f64::from(m.epoch), get(m)))
                    .collect()
            };
            let all: Vec<(f64, f64)> = [SplitName::Train, SplitName::Val]
                .into_iter()
                .flat_map(pts)
                .collect();
            let (mut x0, mut x1) = all
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                    (a.min(p.0), b.max(p.0))
                });
            let (mut y0, mut y1) = all
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                    (a.min(p.1), b.max(p.1))
                });
            if !x0.is_finite() {
                (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
            }
            if x1 - x0 < 1.0 {
                x1 = x0 + 1.0;
            }
            let pad = ((y1 - y0) * 0.05).max(1e-3);
            (y0, y1) = (y0 - pad, y1 + pad);
            let mut chart = ChartBuilder::on(&area)
                .caption(title, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(60)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| perr(&e))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(|e| perr(&e))?;
            for (split, color) in [(SplitName::Train, BLUE), (SplitName::Val, RED)] {
                let p = pts(split);
                if p.is_empty() {
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(p.clone(), color.stroke_width(2)))
                    .map_err(|e| perr(&e))?
                    .label(split.to_string())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(p.into_iter().map(|xy| Circle::new(xy, 3, color.filled())))
                    .map_err(|e| perr(&e))?;
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 14))
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .draw()
                .map_err(|e| perr(&e))?;
        }
        root.present().map_err(|e| perr(&e))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer size matches");
    encode_png(path, &img)
}

/// Overlay colours: true positive, false positive, false negative.
pub const OVERLAY_TP: [u8; 3] = [0, 200, 255];
pub const OVERLAY_FP: [u8; 3] = [255, 40, 40];
pub const OVERLAY_FN: [u8; 3] = [255, 210, 0];

/// A side-by-side image of `tile` in true colour (1-based `rgb_bands`, e.g.
/// `[3, 2, 1]` for Planet's B, G, R, NIR; stretched to the 98th percentile)
/// and the same with prediction (`logits > 0`) vs `mask` coloured: true
/// positives cyan, false positives red, false negatives yellow.
pub fn overlay_image(
    tile: &RawTile,
    rgb_bands: [usize; 3],
    logits: &[f32],
    mask: &[f32],
) -> Result<image::RgbImage> {
    let (w, h) = (tile.width, tile.height);
    let npix = (w * h) as usize;
    if logits.len() != npix || mask.len() != npix {
        return Err(MetricsError::Shape(format!(
            "tile is {w}x{h} but logits have {} and mask {} values",
            logits.len(),
            mask.len()
        )));
    }
    if let Some(b) = rgb_bands.iter().find(|&&b| b == 0 || b > tile.bands) {
        return Err(MetricsError::Shape(format!(
            "band {b} requested, tile has {}",
            tile.bands
        )));
    }
    let planes: Vec<&[f32]> = rgb_bands.iter().map(|&b| tile.band(b - 1)).collect();
    let mut sample: Vec<f32> = planes
        .iter()
        .flat_map(|p| p.iter().step_by(7))
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let hi = if sample.is_empty() {
        1.0
    } else {
        let k = (sample.len() as f64 * 0.98) as usize;
        let k = k.min(sample.len() - 1);
        *sample.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
    }
    .max(1e-3);
    let mut img = image::RgbImage::new(2 * w, h);
    for p in 0..npix {
        let (x, y) = (p as u32 % w, p as u32 / w);
        let rgb: [u8; 3] =
            std::array::from_fn(|c| ((planes[c][p] / hi).clamp(0.0, 1.0) * 255.0).round() as u8);
        img.put_pixel(x, y, image::Rgb(rgb));
        let (pred, truth) = (logits[p] > 0.0, mask[p] > 0.5);
        let color = match (pred, truth) {
            (true, true) => Some(OVERLAY_TP),
            (true, false) => Some(OVERLAY_FP),
            (false, true) => Some(OVERLAY_FN),
            (false, false) => None,
        };
        let out = match color {
            Some(c) => {
                std::array::from_fn(|i| (0.45 * rgb[i] as f32 + 0.55 * c[i] as f32).round() as u8)
            }
            None => rgb,
        };
        img.put_pixel(w + x, y, image::Rgb(out));
    }
    Ok(img)
}

/// [`overlay_image`] written as a PNG (atomically).
pub fn write_overlay_png(
    path: &Path,
    tile: &RawTile,
    rgb_bands: [usize; 3],
    logits: &[f32],
    mask: &[f32],
) -> Result<()> {
    let img = overlay_image(tile, rgb_bands, logits, mask)?;
    encode_png(path, &img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_mean_weights_batches_by_their_tiles() {
        // Eight tiles at 0.2 and a last batch of one at 1.0: 2.6 / 9, not 0.6.
        let mut m = TileMean::default();
        m.add(0.2, 8).unwrap();
        m.add(1.0, 1).unwrap();
        assert!((m.mean() - 2.6 / 9.0).abs() < 1e-12, "{}", m.mean());
        assert_eq!(
            m.add(f64::NAN, 1).unwrap_err().to_bits(),
            f64::NAN.to_bits()
        );
        assert_eq!(m.add(f64::INFINITY, 1), Err(f64::INFINITY));
        assert!(
            (m.mean() - 2.6 / 9.0).abs() < 1e-12,
            "refused values are not added"
        );
        assert_eq!(TileMean::default().mean(), 0.0);
    }

    fn cm(tp: u64, fp: u64, tn: u64, fn_: u64) -> Confusion {
        Confusion { tp, fp, tn, fn_ }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn formulas_on_a_hand_computed_matrix() {
        // tp=6, fp=2, tn=10, fn=4 (22 pixels)
        let c = cm(6, 2, 10, 4);
        close(c.iou(), 6.0 / 12.0);
        close(c.precision(), 6.0 / 8.0); // tp / (tp + fp), not tp / (tp + fn)
        close(c.recall(), 6.0 / 10.0); // tp / (tp + fn)
        close(c.f1(), 12.0 / 18.0);
        let p = 0.75;
        let r = 0.6;
        close(c.f1(), 2.0 * p * r / (p + r));
        close(c.accuracy(), 16.0 / 22.0);
        close(c.mcc(), (60.0 - 8.0) / (8.0f64 * 10.0 * 12.0 * 14.0).sqrt());
        // Precision and recall are not interchangeable.
        let d = cm(1, 9, 0, 0);
        close(d.precision(), 0.1);
        close(d.recall(), 1.0);
        // Inverse prediction: MCC -1.
        close(cm(0, 5, 0, 5).mcc(), -1.0);
        close(cm(5, 0, 5, 0).mcc(), 1.0);
    }

    #[test]
    fn zero_denominators() {
        let empty = Confusion::default();
        for v in [
            empty.iou(),
            empty.precision(),
            empty.recall(),
            empty.f1(),
            empty.mcc(),
            empty.accuracy(),
        ] {
            close(v, 1.0);
        }
        // All negative, predicted all negative: perfect.
        let neg = cm(0, 0, 10, 0);
        for v in [
            neg.iou(),
            neg.precision(),
            neg.recall(),
            neg.f1(),
            neg.mcc(),
            neg.accuracy(),
        ] {
            close(v, 1.0);
        }
        // Nothing predicted but snow exists.
        let missed = cm(0, 0, 5, 5);
        close(missed.precision(), 0.0);
        close(missed.recall(), 0.0);
        close(missed.iou(), 0.0);
        close(missed.mcc(), 0.0);
        // Snow predicted where there is none.
        let false_alarm = cm(0, 3, 7, 0);
        close(false_alarm.precision(), 0.0);
        close(false_alarm.recall(), 0.0);
    }

    #[test]
    fn from_logits_thresholds() {
        let logits = [1.0, -1.0, 0.0, 2.0, f32::NAN, -3.0];
        let masks = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0];
        let c = Confusion::from_logits(&logits, &masks);
        assert_eq!(c, cm(1, 1, 1, 3));
        let mut d = c;
        d.merge(&c);
        assert_eq!(d.total(), 12);
    }

    #[test]
    fn log_line_is_stable_and_parseable() {
        let m = EpochMetrics::new(3, SplitName::Val, 0.1234, &cm(6, 2, 10, 4), 12.5);
        let line = m.log_line();
        assert_eq!(
            line,
            "epoch=3 split=val loss=0.123400 iou=0.500000 precision=0.750000 recall=0.600000 \
             f1=0.666667 mcc=0.448543 accuracy=0.727273 seconds=12.500"
        );
        for (name, re) in metric_definitions() {
            let re = regex::Regex::new(&re).unwrap();
            let hit = re.captures(&line);
            assert_eq!(hit.is_some(), name.starts_with("val:"), "{name}");
            if let Some(c) = hit {
                let v: f64 = c[1].parse().unwrap();
                let key = name.split(':').nth(1).unwrap();
                let field = line
                    .split(' ')
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                    .unwrap();
                assert_eq!(v, field.parse::<f64>().unwrap(), "{name}");
            }
        }
    }

    #[test]
    fn writes_json_csv_plot_and_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<EpochMetrics> = (0..4)
            .flat_map(|e| {
                [
                    EpochMetrics::new(
                        e,
                        SplitName::Train,
                        1.0 / (e + 1) as f64,
                        &cm(5 + e as u64, 2, 9, 3),
                        1.0,
                    ),
                    EpochMetrics::new(
                        e,
                        SplitName::Val,
                        1.2 / (e + 1) as f64,
                        &cm(4 + e as u64, 3, 9, 3),
                        0.5,
                    ),
                ]
            })
            .collect();
        write_metrics_json(&dir.path().join("metrics.json"), &recs).unwrap();
        let back: Vec<EpochMetrics> =
            serde_json::from_slice(&std::fs::read(dir.path().join("metrics.json")).unwrap())
                .unwrap();
        assert_eq!(back, recs);
        write_metrics_csv(&dir.path().join("metrics.csv"), &recs).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
        assert_eq!(csv.lines().next(), Some(CSV_HEADER));
        assert_eq!(csv.lines().count(), 9);
        assert!(csv.lines().nth(2).unwrap().starts_with("0,val,1.2,"));

        let png = dir.path().join("plots/curves.png");
        plot_curves(&png, &recs).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (1200, 480));
        // Something besides white was drawn, including red and blue lines.
        assert!(img.pixels().any(|p| p.0 == [255, 0, 0]));
        assert!(img.pixels().any(|p| p.0 == [0, 0, 255]));
        plot_curves(&dir.path().join("one.png"), &recs[..1]).unwrap();
        plot_curves(&dir.path().join("none.png"), &[]).unwrap();

        let tile = RawTile {
            width: 4,
            height: 2,
            bands: 4,
            data: (0..32).map(|i| i as f32 / 32.0).collect(),
        };
        let logits = [1., 1., -1., -1., 1., -1., 1., -1.];
        let mask = [1., 0., 1., 0., 1., 1., 0., 0.];
        let img = overlay_image(&tile, [3, 2, 1], &logits, &mask).unwrap();
        assert_eq!(img.dimensions(), (8, 2));
        let blend = |rgb: [u8; 3], c: [u8; 3]| -> [u8; 3] {
            std::array::from_fn(|i| (0.45 * rgb[i] as f32 + 0.55 * c[i] as f32).round() as u8)
        };
        let px = |x, y| img.get_pixel(x, y).0;
        assert_eq!(px(4, 0), blend(px(0, 0), OVERLAY_TP));
        assert_eq!(px(5, 0), blend(px(1, 0), OVERLAY_FP));
        assert_eq!(px(6, 0), blend(px(2, 0), OVERLAY_FN));
        assert_eq!(px(7, 0), px(3, 0));
        write_overlay_png(
            &dir.path().join("overlay/0.png"),
            &tile,
            [3, 2, 1],
            &logits,
            &mask,
        )
        .unwrap();
        assert!(overlay_image(&tile, [5, 2, 1], &logits, &mask).is_err());
        // No temporary files are left behind.
        assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with('.')));
    }
}
