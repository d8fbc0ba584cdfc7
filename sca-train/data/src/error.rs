//! Typed errors of the data pipeline.

use std::path::PathBuf;

/// Write a warning line to stderr, ignoring a failed write: `eprintln!`
/// panics when stderr is a closed pipe (the launcher reading it was killed),
/// and a warning must not end a run, least of all from a loader thread.
pub(crate) fn warn(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// The message a panic was raised with (`panic!`'s payload).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

thread_local! {
    /// Whether this thread is inside [`catch`] (a panic it raises now is
    /// caught and becomes an error).
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `f`, a panic in it caught (`catch_unwind`), with this thread marked as
/// catching meanwhile: the trainer's panic hook ([`panic_is_caught`]) tells
/// a panic the run turns into an error from one that ends the process.
pub fn catch<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    let was = CATCHING.with(|c| c.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    r
}

/// Whether a panic on this thread now is caught by [`catch`].
pub fn panic_is_caught() -> bool {
    CATCHING.with(std::cell::Cell::get)
}

/// Result of the data pipeline.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// What went wrong while finding, reading or splitting the dataset.
///
/// (Strings of the larger variants are `Box<str>` to keep the error small.)
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("invalid {field} regex {regex:?}: {source}")]
    BadRegex {
        field: &'static str,
        regex: String,
        #[source]
        source: regex::Error,
    },
    #[error("invalid S3 URI {uri:?}: expected s3://bucket[/prefix] with a bucket of at least 3 characters")]
    BadUri { uri: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{uri} is {size} bytes or more, larger than the {max} bytes sca-train reads of one \
         object (a warm-start model is far smaller): check that it names the right object"
    )]
    TooLarge { uri: String, size: u64, max: u64 },
    #[error("S3 {op} {uri}: {message}")]
    S3 {
        op: &'static str,
        uri: String,
        message: String,
    },
    #[error(
        "empty dataset: imagery_regex {imagery_regex:?} selected {imagery_dirs} tile directories \
         ({imagery_tiles} tiles at zoom {zoom}) under {imagery_root}, and mask_regex {mask_regex:?} \
         selected {mask_dirs} ({mask_tiles} tiles at zoom {zoom}) under {mask_root}"
    )]
    EmptyDataset {
        imagery_root: Box<str>,
        imagery_regex: Box<str>,
        imagery_dirs: usize,
        imagery_tiles: usize,
        mask_root: Box<str>,
        mask_regex: Box<str>,
        mask_dirs: usize,
        mask_tiles: usize,
        zoom: u8,
    },
    #[error(
        "no tile has both imagery and a mask: {imagery_tiles} imagery tiles (e.g. {imagery_examples}) \
         under {imagery_root} and {mask_tiles} mask tiles (e.g. {mask_examples}) under {mask_root} \
         share no z/x/y"
    )]
    NothingJoined {
        imagery_root: Box<str>,
        imagery_tiles: usize,
        imagery_examples: Box<str>,
        mask_root: Box<str>,
        mask_tiles: usize,
        mask_examples: Box<str>,
    },
    #[error(
        "{bad} of {total} tiles are unreadable ({:.2}% > max_bad_fraction {:.2}%); first: {examples}",
        100.0 * *bad as f64 / *total as f64,
        100.0 * max_bad_fraction
    )]
    TooManyBad {
        bad: usize,
        total: usize,
        max_bad_fraction: f64,
        examples: String,
    },
    #[error("invalid channels: {0}")]
    Channels(String),
    #[error("cannot split: {0}")]
    Split(String),
    /// A tile is not what the data manifest pinned at launch.
    #[error(
        "data changed since launch: {uri}: {reason}; launch again to train on the current data, \
         or restore the data as it was at launch"
    )]
    DataChanged { uri: String, reason: String },
    /// The data manifest cannot be used for this experiment.
    #[error("data manifest: {0}")]
    Manifest(String),
    #[error(transparent)]
    Synth(#[from] crate::synth::SynthError),
    #[error(transparent)]
    Tile(TileError),
    #[error("loader: {0}")]
    Loader(String),
    /// The wait for a batch was interrupted (SIGTERM); not a data fault.
    #[error("interrupted while waiting for tiles")]
    Interrupted,
}

impl From<TileError> for DataError {
    /// A tile that changed since launch is never just a bad tile.
    fn from(e: TileError) -> Self {
        match e.kind {
            TileErrorKind::Changed(reason) => DataError::DataChanged { uri: e.key, reason },
            _ => DataError::Tile(e),
        }
    }
}

/// A tile that cannot be used, with the key (path or `s3://` URI) naming it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {kind}")]
pub struct TileError {
    pub key: String,
    pub kind: TileErrorKind,
}

/// Why a tile cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TileErrorKind {
    /// An I/O or S3 error (fatal in validation: a fault, not a bad tile).
    #[error("cannot read: {0}")]
    Read(String),
    /// Differs from the data manifest pinned at launch (fatal, never skipped).
    #[error("changed since launch: {0}")]
    Changed(String),
    #[error("cannot decode (truncated or corrupt?): {0}")]
    Decode(String),
    #[error("not a TIFF or PNG file")]
    UnknownFormat,
    #[error("unsupported sample type {0}")]
    SampleType(String),
    #[error("is {width}x{height}, expected {expected}x{expected} (dataset.tile_size)")]
    WrongSize {
        width: u32,
        height: u32,
        expected: u32,
    },
    #[error("has {have} bands, the channels use band {need}")]
    WrongBandCount { have: usize, need: usize },
    #[error("claims {have} bands, more than the {max} a tile may have")]
    TooManyBands { have: usize, max: usize },
    /// The file is larger than any tile of the dataset's size can be.
    #[error("is {size} bytes or more, larger than the {max} bytes a tile_size tile of at most {bands} bands can be")]
    TooLarge { size: u64, max: u64, bands: usize },
    #[error(
        "has nodata (GDAL_NODATA {value}) at pixel ({x}, {y}): a tile with nodata pixels \
         is left out, never trained on"
    )]
    NoData { x: u32, y: u32, value: f64 },
    /// Reading or decoding the pair panicked (a bug): fatal in validation,
    /// as in the loader, never a bad tile dropped.
    #[error("reading it or its mask {mask} panicked (a bug): {message}")]
    Panicked { mask: String, message: String },
    #[error(
        "is transparent (alpha 0) at pixel ({x}, {y}): a tile with nodata pixels is left \
         out, never trained on"
    )]
    Transparent { x: u32, y: u32 },
    #[error(
        "is nodata in its internal mask (0) at pixel ({x}, {y}): a tile with nodata pixels \
         is left out, never trained on"
    )]
    Masked { x: u32, y: u32 },
    #[error(
        "mask value {value} at pixel ({x}, {y}) is not a label: masks are binary, 0 no snow \
         and 1 (or 255 in an 8-bit mask) snow; threshold a snow-depth raster first (the \
         original's masks: depth >= 0.1 m), or name the nodata value in GDAL_NODATA"
    )]
    MaskValue { x: u32, y: u32, value: f64 },
    #[error("band {band} has a non-finite value ({value}) at pixel ({x}, {y})")]
    NonFinite {
        band: usize,
        x: u32,
        y: u32,
        value: f32,
    },
}

impl TileError {
    pub(crate) fn new(key: impl Into<String>, kind: TileErrorKind) -> Self {
        TileError {
            key: key.into(),
            kind,
        }
    }

    /// A failed read of `key` (of a tile of at most `bands` bands); data that
    /// changed since launch keeps the manifest's name for the object and
    /// stays recognisable, and a file too large for a tile is a bad tile.
    pub(crate) fn read(key: &str, bands: usize, e: DataError) -> Self {
        match e {
            DataError::DataChanged { uri, reason } => {
                TileError::new(uri, TileErrorKind::Changed(reason))
            }
            DataError::TooLarge { size, max, .. } => {
                TileError::new(key, TileErrorKind::TooLarge { size, max, bands })
            }
            e => TileError::new(key, TileErrorKind::Read(e.to_string())),
        }
    }
}
