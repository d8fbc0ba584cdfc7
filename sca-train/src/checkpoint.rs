//! Checkpoints in safetensors: weights, optimiser state and the training
//! position (epoch, step within it, metric history), so a resumed run
//! continues exactly where the interrupted one stopped.
//!
//! Files are `checkpoint-e<epoch>-s<step>.safetensors` in the checkpoint
//! directory, written through a temporary file and a rename, so a SIGKILL
//! mid-write leaves the previous checkpoint intact. Only the two newest are
//! kept (files named above the one just written are left alone); a resume
//! uses the newest that reads ([`latest_readable`]), so an unreadable newest
//! one falls back to the one before it.
//!
//! A checkpoint also records which job wrote it ([`Position::job`]: job
//! name, commit, image digest, data manifest), so that a run resumes only
//! its own job's checkpoints, and the compute it was trained on
//! ([`Position::trained_on`]), so that it resumes on the same.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use sca_spec::Precision;
use serde::{Deserialize, Serialize};

use crate::metrics::{Confusion, EpochMetrics};
use crate::model::NamedTensor;
use crate::sagemaker::JobPins;

/// Tag in the metadata; a checkpoint of another format is refused, not guessed at.
pub const FORMAT: &str = "sca-train-checkpoint-1";
/// The final model's file in the model directory.
pub const MODEL_FILE: &str = sca_spec::contract::model_files::MODEL;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a readable safetensors file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} is not an sca-train checkpoint (format `{found}`, expected `{FORMAT}`)")]
    Format { path: PathBuf, found: String },
    #[error("{path} is not a model archive with `{MODEL_FILE}` at its root: {reason}")]
    Archive { path: PathBuf, reason: String },
    #[error("cannot list checkpoint directory {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where training stands, stored in the checkpoint's metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The epoch in progress (0-based); equals the epoch count when training is complete.
    pub epoch: u32,
    /// Steps of `epoch` already taken (0 at an epoch boundary).
    pub step: u32,
    /// Sum of the training losses of those steps, and their confusion matrix.
    pub partial_loss: f64,
    pub partial_confusion: Confusion,
    /// Wall-clock seconds those steps took, so a resumed epoch reports the
    /// time of all its steps (0 in a checkpoint written before it was kept).
    #[serde(default)]
    pub partial_seconds: f64,
    /// Every finished epoch's metrics.
    pub history: Vec<EpochMetrics>,
    /// Hash of the experiment file it was trained on.
    pub experiment_sha256: String,
    /// The job that wrote it (empty in a checkpoint written before jobs
    /// were recorded, or by a run without the launcher's hyperparameters).
    #[serde(default)]
    pub job: JobPins,
    /// The compute it was trained on (`None` in a checkpoint written before
    /// it was recorded): resumed on another, its model would be neither
    /// run's, so a resume refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_on: Option<TrainedOn>,
}

/// The compute a run trains on: the device kind and the convolutions'
/// number format. Not the GPU's model: a spot restart may land on another
/// card of the same kind, and that is the same compute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainedOn {
    /// `cpu` or `cuda` ([`crate::device::Compute::name`]).
    pub device: String,
    pub precision: Precision,
}

impl TrainedOn {
    /// `fp32` or `bf16`, as `train.precision` spells it.
    pub fn precision_name(&self) -> &'static str {
        match self.precision {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for TrainedOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.device, self.precision_name())
    }
}

/// A loaded checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub weights: Vec<NamedTensor>,
    pub optimizer: Vec<NamedTensor>,
    pub position: Position,
}

/// Serialize weights (`model/…`), optimiser state (`optim/…`) and metadata.
pub fn to_bytes(
    weights: &[NamedTensor],
    optimizer: &[NamedTensor],
    position: Option<&Position>,
) -> Vec<u8> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|t| (format!("model/{}", t.0), t))
        .chain(optimizer.iter().map(|t| (format!("optim/{}", t.0), t)))
        .map(|(name, (_, shape, data))| {
            (
                name,
                shape.clone(),
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(name, shape, data)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data).expect("shape matches data"),
            )
        })
        .collect();
    let mut meta = HashMap::from([("format".to_string(), FORMAT.to_string())]);
    if let Some(p) = position {
        meta.insert(
            "position".into(),
            serde_json::to_string(p).expect("a position serializes"),
        );
    }
    safetensors::serialize(views, &Some(meta)).expect("in-memory serialization of valid views")
}

/// Parse a checkpoint or model file.
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| corrupt(e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let found = meta.get("format").cloned().unwrap_or_default();
    if found != FORMAT {
        return Err(CheckpointError::Format {
            path: path.to_path_buf(),
            found,
        });
    }
    let position = match meta.get("position") {
        Some(p) => {
            serde_json::from_str(p).map_err(|e| corrupt(format!("bad position metadata: {e}")))?
        }
        None => Position::default(),
    };
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| corrupt(e.to_string()))?;
    let (mut weights, mut optimizer) = (Vec::new(), Vec::new());
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    for name in names {
        let view = st.tensor(&name).map_err(|e| corrupt(e.to_string()))?;
        if view.dtype() != Dtype::F32 {
            return Err(corrupt(format!(
                "tensor `{name}` is {:?}, expected F32",
                view.dtype()
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let entry = (String::new(), view.shape().to_vec(), data);
        if let Some(n) = name.strip_prefix("model/") {
            weights.push((n.to_string(), entry.1, entry.2));
        } else if let Some(n) = name.strip_prefix("optim/") {
            optimizer.push((n.to_string(), entry.1, entry.2));
        } else {
            return Err(corrupt(format!("unexpected tensor `{name}`")));
        }
    }
    Ok(Checkpoint {
        weights,
        optimizer,
        position,
    })
}

pub fn read(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(path, &bytes)
}

/// A warm start from `bytes` read from `source`: a safetensors file (a final
/// `model.safetensors` or a training checkpoint), or a gzipped tar such as
/// the `model.tar.gz` SageMaker packs the model directory into, whose
/// root `model.safetensors` is used.
pub fn from_model_bytes(source: &Path, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
    if !bytes.starts_with(&GZIP_MAGIC) {
        return from_bytes(source, bytes);
    }
    let model = model_from_archive(bytes).map_err(|reason| CheckpointError::Archive {
        path: source.to_path_buf(),
        reason,
    })?;
    from_bytes(&source.join(MODEL_FILE), &model)
}

/// The root `model.safetensors` of a gzipped tar (`./model.safetensors` too).
fn model_from_archive(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    // Its entries' headers capped too: the tar reader holds them whole.
    let (stream, allowance) = crate::data::metered::metered(flate2::read::GzDecoder::new(bytes));
    let mut archive = tar::Archive::new(stream);
    let mut seen = Vec::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        allowance.entry(entry.raw_file_position(), entry.size());
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let name = path.strip_prefix(".").unwrap_or(&path);
        if name == Path::new(MODEL_FILE) && entry.header().entry_type().is_file() {
            // The header's size is untrusted (it once became the capacity,
            // and a huge one panicked); the read is bounded as well, since
            // the gzip stream decides how many bytes there really are.
            let max = crate::data::source::MAX_OBJECT_BYTES;
            let too_large = |size: u64| {
                format!("its {MODEL_FILE} is {size} bytes or more, larger than the {max} bytes a model may be")
            };
            if entry.size() > max {
                return Err(too_large(entry.size()));
            }
            let mut model = Vec::with_capacity(entry.size().min(1 << 26) as usize);
            (&mut entry)
                .take(max + 1)
                .read_to_end(&mut model)
                .map_err(|e| e.to_string())?;
            if model.len() as u64 > max {
                return Err(too_large(model.len() as u64));
            }
            return Ok(model);
        }
        if seen.len() < 8 {
            seen.push(name.display().to_string());
        }
    }
    Err(if seen.is_empty() {
        "the archive is empty".into()
    } else {
        format!("it holds {}", seen.join(", "))
    })
}

/// Write atomically (temporary file + rename in the same directory).
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    crate::fsx::write_atomic(path, bytes).map_err(|e| CheckpointError::Write {
        path: e.path,
        source: e.source,
    })
}

fn file_name(p: &Position) -> String {
    format!("checkpoint-e{:05}-s{:06}.safetensors", p.epoch, p.step)
}

/// The (epoch, step) a checkpoint's file name gives, if it is one.
fn position_of(name: &str) -> Option<(u32, u32)> {
    let rest = name
        .strip_prefix("checkpoint-e")?
        .strip_suffix(".safetensors")?;
    let (epoch, step) = rest.split_once("-s")?;
    Some((epoch.parse().ok()?, step.parse().ok()?))
}

/// Checkpoints in `dir`, oldest first: by the position in their names,
/// numerically (past 999999 steps the zero-padded names no longer sort).
/// A missing `dir` holds none; one that cannot be read (permissions, an I/O
/// error, a file) is an error, not "none": a resume would train from the
/// start without a word.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let failed = |source| CheckpointError::List {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        entries => entries.map_err(failed)?,
    };
    let mut v = Vec::new();
    for entry in entries {
        let p = entry.map_err(failed)?.path();
        if let Some(at) = p.file_name().and_then(|n| position_of(n.to_str()?)) {
            v.push((at, p));
        }
    }
    v.sort();
    Ok(v.into_iter().map(|(_, p)| p).collect())
}

/// Save a checkpoint into `dir` and prune all but the two newest, and the
/// temporary files of writes a kill cut short (a sync to S3 would carry them).
/// Only those named below the one written are pruned: one named above it
/// (an unreadable one a resume could not move aside) is not judged here.
pub fn save(
    dir: &Path,
    weights: &[NamedTensor],
    optimizer: &[NamedTensor],
    position: &Position,
) -> Result<PathBuf, CheckpointError> {
    let path = dir.join(file_name(position));
    write(&path, &to_bytes(weights, optimizer, Some(position)))?;
    // The checkpoint is whole and in place: a directory that cannot be
    // listed now (write but no read permission) only keeps the old ones,
    // said so; failing here would lose a stop's, or a run's, good checkpoint.
    let all = list(dir).unwrap_or_else(|e| {
        crate::warn!("sca-train: warning: older checkpoints not pruned: {e}");
        Vec::new()
    });
    // Counted from the one written, not from the top: files named above it
    // once took the two places, and the new checkpoint was pruned.
    if let Some(at) = all.iter().position(|p| p.file_name() == path.file_name()) {
        for old in &all[..at.saturating_sub(1)] {
            let _ = std::fs::remove_file(old);
        }
    }
    // This process's own write is renamed into place above: any left is stale.
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".checkpoint-e") && name.contains(".safetensors.tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(path)
}

/// The newest checkpoint in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    Ok(list(dir)?.pop())
}

/// What [`latest_readable`] found: the newest checkpoint that reads, if
/// any, and why each newer one did not (newest first).
pub type Readable = (Option<(PathBuf, Checkpoint)>, Vec<CheckpointError>);

/// The newest checkpoint in `dir` that reads, and why each newer one did
/// not: a truncated or unreadable newest checkpoint falls back to the one
/// kept before it. Fails when `dir` cannot be listed.
pub fn latest_readable(dir: &Path) -> Result<Readable, CheckpointError> {
    let mut unreadable = Vec::new();
    for path in list(dir)?.into_iter().rev() {
        match read(&path) {
            Ok(ck) => return Ok((Some((path, ck)), unreadable)),
            Err(e) => unreadable.push(e),
        }
    }
    Ok((None, unreadable))
}

/// Move an unreadable checkpoint aside (`<name>.unreadable`, which
/// [`list`] ignores), so that it no longer shadows the readable ones, nor
/// counts as one of the two kept; the bytes stay for inspection.
pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".unreadable");
    let to = path.with_file_name(name);
    std::fs::rename(path, &to)?;
    Ok(to)
}

impl CheckpointError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            CheckpointError::Read { path, .. }
            | CheckpointError::Write { path, .. }
            | CheckpointError::Corrupt { path, .. }
            | CheckpointError::Format { path, .. }
            | CheckpointError::Archive { path, .. }
            | CheckpointError::List { path, .. } => path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file names [`list`] gives for `dir`, in its order.
    fn listed_names(dir: &Path) -> Vec<String> {
        list(dir)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    fn tensors() -> Vec<NamedTensor> {
        vec![
            (
                "enc0.conv.weight".into(),
                vec![2, 1, 3, 3],
                (0..18).map(|i| i as f32 * 0.5).collect(),
            ),
            ("bias".into(), vec![2], vec![f32::MIN_POSITIVE, -0.0]),
        ]
    }

    #[test]
    fn round_trip_keeps_every_bit_and_the_position() {
        let pos = Position {
            epoch: 3,
            step: 7,
            partial_loss: 0.25,
            experiment_sha256: "ab".into(),
            job: JobPins {
                job_name: Some("exp-0123456-20261126-120000".into()),
                commit: Some("0123".into()),
                image_digest: Some("sha256:ff".into()),
                data_manifest_sha256: Some("m1".into()),
            },
            ..Default::default()
        };
        let bytes = to_bytes(&tensors(), &tensors()[1..], Some(&pos));
        let ck = from_bytes(Path::new("x"), &bytes).unwrap();
        let mut want = tensors();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(ck.weights.len(), 2);
        for (a, b) in ck.weights.iter().zip(&want) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1, b.1);
            assert_eq!(
                a.2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
        assert_eq!(ck.optimizer[0].0, "bias");
        assert_eq!(ck.position, pos);
        // A position written before checkpoints recorded their job reads,
        // as a checkpoint of no job in particular.
        let mut old = serde_json::to_value(&pos).unwrap();
        old.as_object_mut().unwrap().remove("job");
        let old: Position = serde_json::from_value(old).unwrap();
        assert_eq!(old.job, JobPins::default());
        assert_eq!(old.epoch, 3);
    }

    #[test]
    fn garbage_and_foreign_files_are_refused_with_the_path() {
        let err = from_bytes(Path::new("ck.safetensors"), b"not a checkpoint")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ck.safetensors") && err.contains("not a readable safetensors"),
            "{err}"
        );
        let data = [0u8; 8];
        let foreign = safetensors::serialize(
            [("w", TensorView::new(Dtype::F32, vec![2], &data).unwrap())],
            &None,
        )
        .unwrap();
        let err = from_bytes(Path::new("other.safetensors"), &foreign)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an sca-train checkpoint"), "{err}");
    }

    #[test]
    fn save_keeps_the_two_newest() {
        let dir = tempfile::tempdir().unwrap();
        for epoch in 0..4 {
            save(
                dir.path(),
                &tensors(),
                &[],
                &Position {
                    epoch,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        let names = listed_names(dir.path());
        assert_eq!(
            names,
            [
                "checkpoint-e00002-s000000.safetensors",
                "checkpoint-e00003-s000000.safetensors"
            ]
        );
        assert_eq!(
            latest(dir.path()).unwrap().unwrap().file_name().unwrap(),
            "checkpoint-e00003-s000000.safetensors"
        );
    }

    /// Past a million steps in an epoch the padded names stop sorting; the
    /// newest must still be the one kept and resumed from. A temporary file
    /// a kill left behind is swept by the next save.
    #[test]
    fn order_is_numeric_and_stale_temporaries_go() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir
            .path()
            .join(".checkpoint-e00000-s000009.safetensors.tmp4242");
        std::fs::write(&stale, b"half").unwrap();
        for step in [999_998, 999_999, 1_000_000] {
            let pos = Position {
                step,
                ..Default::default()
            };
            save(dir.path(), &tensors(), &[], &pos).unwrap();
        }
        let names = listed_names(dir.path());
        assert_eq!(
            names,
            [
                "checkpoint-e00000-s999999.safetensors",
                "checkpoint-e00000-s1000000.safetensors"
            ]
        );
        let (newest, _) = latest_readable(dir.path()).unwrap();
        assert_eq!(newest.unwrap().1.position.step, 1_000_000);
        assert!(!stale.exists(), "a stale temporary file is left");
    }

    /// The position's `partial_seconds` is new: older checkpoints read as 0.
    #[test]
    fn a_position_without_partial_seconds_reads() {
        let pos = Position {
            partial_seconds: 12.5,
            ..Default::default()
        };
        let mut v = serde_json::to_value(&pos).unwrap();
        assert_eq!(v["partial_seconds"], 12.5);
        v.as_object_mut().unwrap().remove("partial_seconds");
        let old: Position = serde_json::from_value(v).unwrap();
        assert_eq!(old.partial_seconds, 0.0);
    }

    /// The compute a checkpoint was trained on is new: older checkpoints
    /// (no `trained_on`) read as not saying, and a position that does not
    /// say writes none.
    #[test]
    fn a_position_without_trained_on_reads() {
        let pos = Position {
            trained_on: Some(TrainedOn {
                device: "cuda".into(),
                precision: Precision::Bf16,
            }),
            ..Default::default()
        };
        let mut v = serde_json::to_value(&pos).unwrap();
        assert_eq!(
            v["trained_on"],
            serde_json::json!({"device": "cuda", "precision": "bf16"})
        );
        assert_eq!(serde_json::from_value::<Position>(v.clone()).unwrap(), pos);
        v.as_object_mut().unwrap().remove("trained_on");
        let old: Position = serde_json::from_value(v).unwrap();
        assert_eq!(old.trained_on, None);
        let v = serde_json::to_value(&old).unwrap();
        assert!(v.get("trained_on").is_none(), "{v}");
        assert_eq!(pos.trained_on.unwrap().to_string(), "cuda (bf16)");
    }

    /// Unreadable files named like newer checkpoints (a resume could not
    /// move them aside) once took the two places kept, and a save pruned
    /// the checkpoint it had just written (and a stop reported it): they
    /// are left alone, and only those below the one written are pruned.
    #[test]
    fn save_never_prunes_what_it_wrote_nor_files_named_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let at = |epoch| Position {
            epoch,
            ..Default::default()
        };
        let garbage: Vec<PathBuf> = [9, 8]
            .into_iter()
            .map(|epoch| dir.path().join(file_name(&at(epoch))))
            .collect();
        for g in &garbage {
            std::fs::write(g, b"garbage").unwrap();
        }
        save(dir.path(), &tensors(), &[], &at(0)).unwrap();
        let path = save(dir.path(), &tensors(), &[], &at(1)).unwrap();
        assert!(path.is_file(), "{} was pruned", path.display());
        assert_eq!(read(&path).unwrap().position, at(1));
        for g in &garbage {
            assert_eq!(std::fs::read(g).unwrap(), b"garbage", "{}", g.display());
        }
        // The older ones still go: the two up to the one written stay.
        save(dir.path(), &tensors(), &[], &at(2)).unwrap();
        let names = listed_names(dir.path());
        assert_eq!(
            names,
            [
                "checkpoint-e00001-s000000.safetensors",
                "checkpoint-e00002-s000000.safetensors",
                "checkpoint-e00008-s000000.safetensors",
                "checkpoint-e00009-s000000.safetensors"
            ]
        );
    }

    #[test]
    fn an_unreadable_newest_checkpoint_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let at = |epoch, step| Position {
            epoch,
            step,
            ..Default::default()
        };
        assert!(matches!(latest_readable(dir.path()), Ok((None, v)) if v.is_empty()));
        save(dir.path(), &tensors(), &[], &at(1, 0)).unwrap();
        let newest = save(dir.path(), &tensors(), &[], &at(1, 3)).unwrap();
        // Truncated, as by a crash before the data reached the disk.
        let bytes = std::fs::read(&newest).unwrap();
        std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();

        let (found, unreadable) = latest_readable(dir.path()).unwrap();
        let (path, ck) = found.expect("the previous checkpoint");
        assert!(path.ends_with("checkpoint-e00001-s000000.safetensors"));
        assert_eq!(ck.position, at(1, 0));
        assert_eq!(unreadable.len(), 1);
        assert_eq!(unreadable[0].path(), newest);
        let why = unreadable[0].to_string();
        assert!(
            why.contains("checkpoint-e00001-s000003") && why.contains("not a readable"),
            "{why}"
        );

        let aside = set_aside(&newest).unwrap();
        assert!(aside.ends_with("checkpoint-e00001-s000003.safetensors.unreadable"));
        assert_eq!(latest(dir.path()).unwrap().unwrap(), path);
        // Nothing readable at all: no checkpoint, and every reason.
        std::fs::write(&path, b"garbage").unwrap();
        let (found, unreadable) = latest_readable(dir.path()).unwrap();
        assert!(found.is_none());
        assert_eq!(unreadable.len(), 1);
    }

    /// A gzipped tar of `(path, bytes)` files, as `tar czf` writes one.
    fn targz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, bytes) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, *bytes).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn warm_start_reads_a_model_file_or_sagemakers_model_archive() {
        let model = to_bytes(&tensors(), &[], None);
        let direct = from_model_bytes(Path::new("model.safetensors"), &model).unwrap();
        // SageMaker packs the model directory's files at the archive root;
        // `tar czf model.tar.gz .` names them `./...`.
        for name in ["model.safetensors", "./model.safetensors"] {
            let archive = targz(&[("metrics.json", b"[]"), (name, &model)]);
            let ck =
                from_model_bytes(Path::new("s3://b/job/output/model.tar.gz"), &archive).unwrap();
            assert_eq!(ck.weights, direct.weights, "{name}");
        }
    }

    /// A long name is read whole before its entry is seen: one of more
    /// than a megabyte is refused as it is read; usual long names pass.
    #[test]
    fn a_huge_long_name_in_a_warm_start_archive_is_refused() {
        let model = to_bytes(&tensors(), &[], None);
        let huge = "x".repeat(2 << 20);
        let archive = targz(&[(huge.as_str(), b"[]"), ("model.safetensors", &model)]);
        let e = from_model_bytes(Path::new("m.tar.gz"), &archive)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceed 1048576 bytes"), "{e}");
        let long = "d/".repeat(150) + "metrics.json";
        let archive = targz(&[(long.as_str(), b"[]"), ("model.safetensors", &model)]);
        assert!(from_model_bytes(Path::new("m.tar.gz"), &archive).is_ok());
    }

    #[test]
    fn an_archive_without_the_model_says_what_it_holds() {
        let archive = targz(&[("metrics.json", b"[]"), ("sub/model.safetensors", b"x")]);
        let e = from_model_bytes(Path::new("m.tar.gz"), &archive)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.tar.gz")
                && e.contains("`model.safetensors` at its root")
                && e.contains("metrics.json, sub/model.safetensors"),
            "{e}"
        );
        let broken = &targz(&[("model.safetensors", &to_bytes(&tensors(), &[], None))])[..40];
        assert!(matches!(
            from_model_bytes(Path::new("m.tar.gz"), broken),
            Err(CheckpointError::Archive { .. })
        ));
    }
}
