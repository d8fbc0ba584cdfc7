//! The `predict` command: a trained model's masks for a set of tiles, written
//! as PNG (for eyes: the class in its `[[classes]]` colour on black) and
//! single-band GeoTIFF (0/1, georeferenced from the tile's z/x/y in EPSG:4326,
//! as the synthetic tiles are) in the input's `<dir>/<z>/<x>/<y>` layout.
//! The model directory's `experiment.toml` must be the one its weights were
//! trained on (the hash they record), and the model a finished one (a
//! stopped job's is refused without `--partial`). The output directory must
//! be new or empty. A tile that does not decode is skipped and listed in
//! `skipped.txt`; one that cannot be read ends the run.

use std::path::{Path, PathBuf};

use crate::checkpoint::{self, MODEL_FILE};
use crate::data::{decode_imagery, Normalizer, TileSource};
use crate::device::{Compute, DeviceError, DeviceRequest, WithDevice};
use crate::model::{AdamWConfig, UNet, UNetConfig};
use crate::ops::HostDevice;
use crate::train::TrainError;

/// What to predict.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// A model directory (`experiment fetch` output, or `/opt/ml/model`): `model.safetensors` + `experiment.toml`.
    pub model_dir: PathBuf,
    /// Imagery root: `s3://bucket/prefix` or a local directory.
    pub input: String,
    /// Regex selecting tile directories; the experiment's `imagery_regex` when unset.
    pub regex: Option<String>,
    /// Output directory: absent or empty (masks of two runs never mix).
    pub out: PathBuf,
    /// Predict with a model saved when its job stopped, before its last
    /// epoch ended (refused otherwise: its masks are not the experiment's).
    pub partial: bool,
}

/// Predict every selected tile; returns how many were written.
pub fn predict(o: &PredictOptions) -> Result<usize, TrainError> {
    let exp_path = o.model_dir.join("experiment.toml");
    let bytes = std::fs::read(&exp_path).map_err(|e| {
        TrainError::Other(format!(
            "cannot read {}: {e} (is {} a model directory?)",
            exp_path.display(),
            o.model_dir.display()
        ))
    })?;
    let report = sca_spec::validate::validate_for_training(&exp_path.display().to_string(), &bytes);
    let Some(exp) = report.experiment else {
        return Err(TrainError::Invalid(
            report
                .diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ));
    };
    let ck = checkpoint::read(&o.model_dir.join(MODEL_FILE))?;
    // The weights were trained with this file's channels (means, bands):
    // another file beside them would normalise the tiles otherwise, and
    // predict wrong masks without an error.
    // Hashed as the trainer hashed it.
    let sha = crate::data::manifest::sha256_hex(&bytes);
    let trained = &ck.position.experiment_sha256;
    if !trained.is_empty() && *trained != sha {
        return Err(TrainError::Invalid(format!(
            "{} (sha256 {sha}) is not the experiment {} was trained on (sha256 {trained}): restore the model directory's own experiment.toml (`cargo xtask experiment fetch` gives both)",
            exp_path.display(),
            o.model_dir.join(MODEL_FILE).display()
        )));
    }
    // A stopped job's model directory holds the model as trained so far,
    // under the same name as a finished one's: only its position tells.
    let (pos, epochs) = (&ck.position, exp.train.epochs);
    if !trained.is_empty() && !o.partial && (pos.epoch < epochs || pos.step != 0) {
        let at = match pos.step {
            0 => format!("after epoch {} of {epochs}", pos.epoch),
            step => format!("at step {step} of epoch {} of {epochs}", pos.epoch + 1),
        };
        return Err(TrainError::Invalid(format!(
            "{} was saved when its job stopped, {at}: its masks would not be the trained experiment's; use a completed run's model, or pass --partial to predict with this one",
            o.model_dir.join(MODEL_FILE).display()
        )));
    }
    // The device the model was trained for, unless SCA_DEVICE says otherwise.
    let compute =
        Compute::open(DeviceRequest::from_env_or(exp.train.device).map_err(DeviceError::from)?)?;
    // In the precision its validation metrics were computed in, where the
    // device has it: a bf16 model's masks on the CPU (SCA_DEVICE=cpu) are
    // fp32's, said so.
    // A device without it (the CPU, a GPU without cuDNN) predicts in fp32,
    // as it did before, and says so.
    if let Err(e) = compute.set_precision(exp.train.precision) {
        crate::progress!(
            "sca-train: predicting in fp32 ({e}); the model's validation metrics came from bf16 convolutions"
        );
    }
    compute.run(Predict {
        o,
        exp: &exp,
        weights: &ck.weights,
    })
}

struct Predict<'a> {
    o: &'a PredictOptions,
    exp: &'a sca_spec::Experiment,
    weights: &'a [crate::model::NamedTensor],
}

impl WithDevice for Predict<'_> {
    type Output = Result<usize, TrainError>;

    fn run<D: HostDevice>(self, dev: D) -> Result<usize, TrainError> {
        let Predict { o, exp, weights } = self;
        predict_on(dev, o, exp, weights)
    }
}

fn predict_on<D: HostDevice>(
    dev: D,
    o: &PredictOptions,
    exp: &sca_spec::Experiment,
    weights: &[crate::model::NamedTensor],
) -> Result<usize, TrainError> {
    let mut model = UNet::with_device(
        dev,
        UNetConfig::from_spec(&exp.model, exp.input_channels())?,
        0,
        AdamWConfig::default(),
    )?;
    model.load_named(weights).map_err(|e| {
        TrainError::Invalid(format!(
            "{}: {e}: its experiment.toml is not the one it was trained with",
            o.model_dir.join(MODEL_FILE).display()
        ))
    })?;

    let pattern = o
        .regex
        .clone()
        .unwrap_or_else(|| exp.dataset.imagery_regex.clone());
    let re = regex::Regex::new(&pattern)
        .map_err(|e| TrainError::Invalid(format!("regex `{pattern}`: {e}")))?;
    // The GeoTIFF outputs take the inputs' names: written into the input
    // tree they would replace the imagery.
    let local_input = std::fs::canonicalize(&o.input).ok();
    if local_input.is_some() && local_input == std::fs::canonicalize(&o.out).ok() {
        return Err(TrainError::Invalid(format!(
            "the output directory {} is the input {}: its masks would replace the imagery; write them elsewhere",
            o.out.display(),
            o.input
        )));
    }
    let source = TileSource::open(&o.input, Path::new("."))?;
    let dirs: Vec<String> = source
        .list_dirs()?
        .into_iter()
        .filter(|d| re.is_match(d))
        .collect();
    // Each names a directory of the output: an S3 "directory" `..` (a key
    // `imagery/../15/1/2.tif` is legal) would write beside it.
    if let Some(odd) = dirs.iter().find(|d| !is_plain_dir_name(d)) {
        return Err(TrainError::Invalid(format!(
            "{} holds a directory named `{odd}`, which cannot name a directory of the output {}: rename its objects, or pick the others with --regex",
            o.input,
            o.out.display()
        )));
    }
    let tiles = source.list_tiles(&dirs, exp.dataset.zoom)?;
    if tiles.is_empty() {
        return Err(TrainError::Invalid(format!(
            "no tiles at zoom {} under {} in directories matching `{pattern}`",
            exp.dataset.zoom, o.input
        )));
    }
    let normalizer = Normalizer::new(&exp.channels)?;
    let size = exp.dataset.tile_size;
    // Validation accepted the colour, so it has a value; white otherwise.
    let color = exp
        .classes
        .first()
        .and_then(|c| sca_spec::validate::color_rgb(&c.color))
        .unwrap_or([255; 3]);
    // One output per tile id: `5.tif` and `05.tif` (or `5.png`) of one
    // directory would write the same files.
    let stem = |t: &crate::data::source::TileEntry| {
        o.out
            .join(&t.dir)
            .join(t.id.z.to_string())
            .join(t.id.x.to_string())
            .join(t.id.y.to_string())
    };
    let mut seen = std::collections::HashMap::new();
    for t in &tiles {
        if let Some(other) = seen.insert(stem(t), &t.key) {
            return Err(TrainError::Invalid(format!(
                "{other} and {} are one tile ({}): keep one of them",
                t.key, t.id
            )));
        }
    }
    // Into an empty directory: an earlier run's masks (a tile skipped now,
    // another model's) would pass for this run's.
    if std::fs::read_dir(&o.out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(TrainError::Invalid(format!(
            "the output directory {} is not empty: masks of two runs would mix; choose a new or empty --out, or empty it first",
            o.out.display()
        )));
    }
    // A tile that does not decode (nodata pixels, another size) is left out
    // and listed, as training leaves it out; one that cannot be read ends
    // the run.
    let mut skipped = Vec::new();
    for t in &tiles {
        let raw = match decode_imagery(
            &source.read(&t.key)?,
            &t.key,
            size,
            normalizer.required_bands(),
        ) {
            Ok(raw) => raw,
            Err(e) => {
                crate::warn!("sca-train: warning: skipping {e}");
                skipped.push(format!("{e}\n"));
                continue;
            }
        };
        let logits = model.predict(&normalizer.apply(&raw), 1, size as usize, size as usize)?;
        let mask: Vec<u8> = logits.iter().map(|&l| u8::from(l > 0.0)).collect();
        let stem = stem(t);
        let png: Vec<u8> = mask
            .iter()
            .flat_map(|&m| if m == 1 { color } else { [0; 3] })
            .collect();
        let img = image::RgbImage::from_raw(size, size, png).expect("size x size pixels");
        let mut encoded = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut encoded),
            image::ImageFormat::Png,
        )
        .map_err(|e| TrainError::Other(e.to_string()))?;
        crate::metrics::write_atomic(&stem.with_extension("png"), &encoded)?;
        let tif =
            crate::synth::encode_tiff_u8_geo(size, size, &mask, Some((t.id.z, t.id.x, t.id.y)))
                .map_err(|e| TrainError::Other(e.to_string()))?;
        crate::metrics::write_atomic(&stem.with_extension("tif"), &tif)?;
    }
    let written = tiles.len() - skipped.len();
    crate::metrics::write_atomic(&o.out.join(SKIPPED_FILE), skipped.concat().as_bytes())?;
    if written == 0 {
        return Err(TrainError::Invalid(format!(
            "none of the {} tiles could be predicted (see {})",
            tiles.len(),
            o.out.join(SKIPPED_FILE).display()
        )));
    }
    crate::progress!(
        "sca-train: predicted {written} tiles into {}{}",
        o.out.display(),
        match skipped.len() {
            0 => String::new(),
            n => format!(" ({n} skipped, listed in {SKIPPED_FILE})"),
        }
    );
    Ok(written)
}

/// In the output directory: one line per tile that did not decode (empty
/// when none), each naming the file and why.
pub const SKIPPED_FILE: &str = "skipped.txt";

/// Whether `name` is one plain path component (not empty, `.`, `..`, nor
/// holding a `/`): what an output directory may be named after.
fn is_plain_dir_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    ) && !name.contains('/')
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_plain_names_name_output_directories() {
        for plain in [
            "20180528_181110_1025_3B_AnalyticMS_SR_clip_tiled",
            "a",
            "a.b",
            "..a",
        ] {
            assert!(super::is_plain_dir_name(plain), "{plain}");
        }
        for odd in ["", ".", "..", "a/b", "/a", "a/", "../a", "./a"] {
            assert!(!super::is_plain_dir_name(odd), "{odd}");
        }
    }
}
