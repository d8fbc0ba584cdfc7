//! Where tiles come from: a local directory or an `s3://bucket/prefix` root.
//!
//! Both expose the same three operations: list the tile directories directly
//! under the root, list the tiles `<dir>/<z>/<x>/<y>.(tif|tiff|png)` of some
//! directories at one zoom, and read one tile's bytes. Keys are relative to
//! the root (`<dir>/<z>/<x>/<y>.tif`); [`TileSource::uri`] gives the full path
//! or URI used in messages.
//!
//! A source can be *pinned* to the objects a data manifest recorded at launch
//! ([`TileSource::pin`]): every read is then checked against the pinned
//! object (a local file's sha256, an S3 object's ETag) and a difference is
//! [`DataError::DataChanged`], so training never silently reads other data.
//!
//! No read takes more than a cap ([`TileSource::read_max`]; tiles:
//! [`super::decode::max_tile_bytes`]): an object's size, as listed or as
//! streamed, never decides how much memory a read takes.
//!
//! S3 uses the standard AWS credential and region chain (region falls back to
//! `us-west-2`, the original buckets' region); `AWS_ENDPOINT_URL` is honoured,
//! and path-style addressing is used when an endpoint URL is configured (S3
//! emulators need it). Transient errors are retried with exponential backoff
//! by the SDK's standard retry mode; a connection takes at most
//! [`Timeouts::connect`] and a request's response [`Timeouts::operation`].
//! The SDK does not retry what fails after the response began: a body cut
//! short or stalled (no bytes for [`Timeouts::stall`]) is read again from
//! the start, [`BODY_ATTEMPTS`] times in all, with backoff. So a worker is
//! never blocked for good, and a read either returns the whole object or
//! fails: a tile is never skipped because its connection broke. The S3
//! source owns its own tokio runtime,
//! so its API is synchronous; do not call it from inside an async context.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sca_spec::ManifestObject;

use super::discover::TileId;
use super::error::{warn, DataError, Result};

/// Concurrent S3 requests when listing directories.
const S3_LIST_CONCURRENCY: usize = 16;

/// One tile file found under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileEntry {
    pub id: TileId,
    /// Tile directory (directly under the root) holding the tile.
    pub dir: String,
    /// Key relative to the root: `<dir>/<z>/<x>/<y>.<ext>`.
    pub key: String,
    /// Bytes, as listed.
    pub size: u64,
    /// The S3 ETag as listed (quotes included); `None` for local files.
    pub etag: Option<String>,
}

/// Pinned objects of one source by key (relative to the root).
pub type Pins = HashMap<String, ManifestObject>;

/// A root of tile directories.
pub enum TileSource {
    Local(LocalSource),
    S3(S3Source),
}

impl std::fmt::Debug for TileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TileSource({})", self.root())
    }
}

/// The AWS profile and region an `s3://` source uses. The default is what
/// the trainer wants in a job: the standard chain (environment, default
/// profile, instance role), region `us-west-2` when the chain names none.
/// The launcher passes its `--profile` and the experiment's region, so that
/// it lists the data with the credentials it launches with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Access {
    pub profile: Option<String>,
    pub region: Option<String>,
}

impl TileSource {
    /// Open `root`: `s3://bucket[/prefix]` (with the default [`S3Access`]),
    /// or a local directory (relative paths are taken relative to `base_dir`).
    pub fn open(root: &str, base_dir: &Path) -> Result<Self> {
        Self::open_with(root, base_dir, &S3Access::default())
    }

    /// [`TileSource::open`], an `s3://` root with `access`.
    pub fn open_with(root: &str, base_dir: &Path, access: &S3Access) -> Result<Self> {
        if let Some(rest) = root.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.len() < 3 {
                return Err(DataError::BadUri { uri: root.into() });
            }
            Ok(TileSource::S3(S3Source::new(
                bucket,
                prefix.trim_matches('/'),
                access,
            )?))
        } else {
            Ok(TileSource::Local(LocalSource {
                root: base_dir.join(root),
                written: root.to_string(),
                pins: None,
            }))
        }
    }

    /// How a data manifest names `key`: its `s3://` URI, or for a local root
    /// the root as written in the experiment joined with the key, so that the
    /// name does not depend on where the experiment's directory is.
    pub fn object_uri(&self, key: &str) -> String {
        match self {
            TileSource::Local(l) => match l.written.trim_end_matches('/') {
                "" | "." => key.to_string(),
                root => format!("{root}/{key}"),
            },
            TileSource::S3(_) => self.uri(key),
        }
    }

    /// Check every later [`TileSource::read`] against `pins`: a key that is
    /// not pinned, is missing, or whose sha256 (local) or ETag (S3) differs is
    /// [`DataError::DataChanged`].
    pub fn pin(&mut self, pins: Pins) {
        match self {
            TileSource::Local(l) => l.pins = Some(pins),
            TileSource::S3(s) => s.pins = Some(pins),
        }
    }

    fn pinned(&self, key: &str) -> Result<Option<&ManifestObject>> {
        let pins = match self {
            TileSource::Local(l) => &l.pins,
            TileSource::S3(s) => &s.pins,
        };
        match pins {
            None => Ok(None),
            Some(p) => p.get(key).map(Some).ok_or_else(|| DataError::DataChanged {
                uri: self.object_uri(key),
                reason: "not present at launch".into(),
            }),
        }
    }

    /// The root as given to the user: a path or `s3://bucket/prefix`.
    pub fn root(&self) -> String {
        match self {
            TileSource::Local(l) => l.root.display().to_string(),
            TileSource::S3(s) => match s.prefix.as_str() {
                "" => format!("s3://{}", s.bucket),
                p => format!("s3://{}/{}", s.bucket, p),
            },
        }
    }

    /// Full path or URI of a key, for messages.
    pub fn uri(&self, key: &str) -> String {
        match self {
            TileSource::Local(l) => l.root.join(key).display().to_string(),
            TileSource::S3(s) => format!("s3://{}/{}", s.bucket, s.full_key(key)),
        }
    }

    /// Whether reads go over the network (the loader then uses more threads).
    pub fn is_remote(&self) -> bool {
        matches!(self, TileSource::S3(_))
    }

    /// Names of the directories directly under the root, sorted. (A local
    /// root's entries that cannot be stat'ed are listed too: `list_tiles`
    /// fails on those it is given, never leaving their tiles out unseen.)
    pub fn list_dirs(&self) -> Result<Vec<String>> {
        let mut dirs = match self {
            TileSource::Local(l) => l.list_dirs()?,
            TileSource::S3(s) => s.list_dirs()?,
        };
        dirs.sort();
        dirs.dedup();
        Ok(dirs)
    }

    /// All tiles at `zoom` in `dirs`, sorted by (dir, z, x, y, key). Files
    /// whose key is not `<dir>/<z>/<x>/<y>.(tif|tiff|png)` are ignored; under
    /// a local root, a directory of `dirs` or an entry on a tile's path that
    /// cannot be stat'ed (a symlink to nothing, permissions, EIO) is an
    /// error naming it.
    pub fn list_tiles(&self, dirs: &[String], zoom: u8) -> Result<Vec<TileEntry>> {
        let mut tiles = match self {
            TileSource::Local(l) => l.list_tiles(dirs, zoom)?,
            TileSource::S3(s) => s.list_tiles(dirs, zoom)?,
        };
        // The key last: files of one tile in one directory (`5.tif` and
        // `05.tif`, or `5.TIF`) come in `read_dir` order, which differs
        // between machines, and the join keeps the first.
        tiles.sort_by(|a, b| (&a.dir, a.id, &a.key).cmp(&(&b.dir, b.id, &b.key)));
        Ok(tiles)
    }

    /// Size and (S3) ETag of one object, without reading it.
    pub fn head(&self, key: &str) -> Result<(u64, Option<String>)> {
        match self {
            TileSource::Local(l) => {
                let path = l.root.join(key);
                let meta =
                    std::fs::metadata(&path).map_err(|source| DataError::Io { path, source })?;
                Ok((meta.len(), None))
            }
            TileSource::S3(s) => s.head(key),
        }
    }

    /// The bytes of one object of at most [`MAX_OBJECT_BYTES`], checked
    /// against its pin when the source is pinned.
    pub fn read(&self, key: &str) -> Result<Vec<u8>> {
        self.read_max(key, MAX_OBJECT_BYTES)
    }

    /// [`TileSource::read`] of an object of at most `max` bytes: a larger one
    /// is [`DataError::TooLarge`], found before (or, when it grows, while) it
    /// is read, so an object's size never decides how much memory is used.
    pub fn read_max(&self, key: &str, max: u64) -> Result<Vec<u8>> {
        let pinned = self.pinned(key)?;
        let changed = |reason: String| DataError::DataChanged {
            uri: self.object_uri(key),
            reason,
        };
        // A pinned object that grew past the cap changed since launch: that
        // is fatal, never a bad tile dropped within `max_bad_fraction`. One
        // of its pinned size was as large at launch: a bad tile, as ever.
        let too_large = |size: u64| match pinned {
            Some(pin) if size != pin.size => {
                changed(format!("{size} bytes now, {} when pinned", pin.size))
            }
            _ => DataError::TooLarge {
                uri: self.uri(key),
                size,
                max,
            },
        };
        let (bytes, etag) = match self {
            TileSource::Local(l) => {
                let path = l.root.join(key);
                match read_file_max(&path, max) {
                    Ok(Ok(bytes)) => (bytes, None),
                    Ok(Err(size)) => return Err(too_large(size)),
                    Err(e) if pinned.is_some() && e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(changed("missing now".into()))
                    }
                    Err(source) => return Err(DataError::Io { path, source }),
                }
            }
            TileSource::S3(s) => match s.read(key, max) {
                Err(S3Read::NotFound(_)) if pinned.is_some() => {
                    return Err(changed("missing now".into()))
                }
                Err(S3Read::Other(DataError::TooLarge { size, .. })) => {
                    return Err(too_large(size))
                }
                Err(S3Read::NotFound(e) | S3Read::Other(e) | S3Read::Body(e)) => return Err(e),
                Ok(read) => read,
            },
        };
        if let Some(pin) = pinned {
            let now = ManifestObject {
                uri: pin.uri.clone(),
                size: bytes.len() as u64,
                etag,
                // Hash only what the pin can be compared with (local files).
                sha256: pin
                    .sha256
                    .as_ref()
                    .map(|_| super::manifest::sha256_hex(&bytes)),
            };
            if let Some(reason) = pin.difference(&now) {
                return Err(changed(reason));
            }
            // `difference` compares ETags only where both have one; a read
            // without one would be checked by size alone, which a same-size
            // replacement (every uncompressed tile of a dataset) passes.
            if let (Some(etag), None) = (&pin.etag, &now.etag) {
                return Err(changed(format!(
                    "the read returned no ETag to check against the pinned {etag}"
                )));
            }
        }
        Ok(bytes)
    }
}

/// The most bytes [`TileSource::read`] reads of one object (a warm-start
/// model; tiles are read with the tighter [`super::decode::max_tile_bytes`]).
pub const MAX_OBJECT_BYTES: u64 = 2 << 30;

/// The file's bytes, or `Err(size)` (at least) when it has more than `max`.
fn read_file_max(path: &Path, max: u64) -> std::io::Result<std::result::Result<Vec<u8>, u64>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > max {
        return Ok(Err(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // One byte more than allowed tells a file that grew since the stat.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Ok(Err(bytes.len() as u64));
    }
    Ok(Ok(bytes))
}

/// Why an S3 read failed: a missing key is told apart so that a pinned
/// source can report it as data that changed.
enum S3Read {
    NotFound(DataError),
    Other(DataError),
    /// The response began and then broke or stalled: worth reading again.
    Body(DataError),
}

/// How long S3 requests may take; `SCA_S3_CONNECT_TIMEOUT_S`,
/// `SCA_S3_OPERATION_TIMEOUT_S` and `SCA_S3_STALL_TIMEOUT_S` (seconds)
/// override the defaults (tests shorten them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// To open a connection.
    pub connect: Duration,
    /// For one attempt of a request, until its response's headers.
    pub operation: Duration,
    /// Without a byte of a response body.
    pub stall: Duration,
}

impl Timeouts {
    fn from_env() -> Self {
        let secs = |var: &str, default: u64| timeout(std::env::var(var).ok().as_deref(), default);
        Timeouts {
            connect: secs("SCA_S3_CONNECT_TIMEOUT_S", 10),
            operation: secs("SCA_S3_OPERATION_TIMEOUT_S", 60),
            stall: secs("SCA_S3_STALL_TIMEOUT_S", 30),
        }
    }
}

/// A timeout of `value` seconds; `default` seconds when unset or not a
/// positive number a `Duration` holds (`1e20` once panicked in
/// `Duration::from_secs_f64`).
fn timeout(value: Option<&str>, default: u64) -> Duration {
    value
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .unwrap_or(Duration::from_secs(default))
}

/// Reads of an object whose body broke or stalled, the first included.
pub const BODY_ATTEMPTS: u32 = 5;

/// The wait before attempt `n` (2, 3, ...) of a body read: 200 ms doubling,
/// at most 5 s.
fn body_backoff(n: u32) -> Duration {
    Duration::from_millis(200u64 << (n.saturating_sub(2)).min(5)).min(Duration::from_secs(5))
}

/// Parse `<x>/<y>.<ext>` (the part of a key after `<dir>/<z>/`).
pub(crate) fn parse_xy(rest: &str) -> Option<(u32, u32)> {
    let (x, file) = rest.split_once('/')?;
    let (y, ext) = file.rsplit_once('.')?;
    if !matches!(ext.to_ascii_lowercase().as_str(), "tif" | "tiff" | "png") {
        return None;
    }
    Some((tile_number(x)?, tile_number(y)?))
}

/// A tile key's `x` or `y`: decimal digits only.
fn tile_number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A local root directory.
pub struct LocalSource {
    pub root: PathBuf,
    /// The root as written in the experiment (for [`TileSource::object_uri`]).
    written: String,
    pins: Option<Pins>,
}

impl LocalSource {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
        move |source| DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The tile directories' names, and the names of entries that cannot be
    /// stat'ed (a dangling symlink, EIO): [`LocalSource::list_tiles`] reports
    /// those if the regex selects them, so that one that cannot be read
    /// fails the listing instead of leaving its tiles out unseen.
    fn list_dirs(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(Self::io(&self.root))? {
            let entry = entry.map_err(Self::io(&self.root))?;
            let path = entry.path();
            // Follows symlinks, like the listing of the directory does.
            let candidate = std::fs::metadata(&path).map_or(true, |m| m.is_dir());
            if !candidate {
                continue;
            }
            match entry.file_name().into_string() {
                Ok(name) => out.push(name),
                // No regex can be matched against it, nor can a data
                // manifest record its tiles: never left out unseen.
                Err(_) => {
                    return Err(DataError::Io {
                        path,
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "the directory's name is not UTF-8, so imagery_regex and \
                             mask_regex cannot select it: rename it, or move it out of the root",
                        ),
                    })
                }
            }
        }
        Ok(out)
    }

    fn list_tiles(&self, dirs: &[String], zoom: u8) -> Result<Vec<TileEntry>> {
        let mut out = Vec::new();
        for dir in dirs {
            // Listed, so it is there: any error (a dangling symlink too) is
            // a directory whose tiles would be left out.
            let tdir = self.root.join(dir);
            stat(&tdir)?.ok_or_else(|| unlistable(&tdir, not_found()))?;
            // Only a missing zoom directory (or a file of its name, not a
            // tile tree) means no tiles at this zoom.
            let zdir = tdir.join(zoom.to_string());
            if !stat(&zdir)?.is_some_and(|m| m.is_dir()) {
                continue;
            }
            for xe in std::fs::read_dir(&zdir).map_err(Self::io(&zdir))? {
                let xe = xe.map_err(Self::io(&zdir))?;
                // A name that is not a number (non-UTF-8 ones included) is
                // not part of a tile key: ignored, like any other file.
                let Some(xname) = xe.file_name().to_str().map(String::from) else {
                    continue;
                };
                if tile_number(&xname).is_none() {
                    continue;
                }
                let xpath = xe.path();
                if !stat(&xpath)?.is_some_and(|m| m.is_dir()) {
                    continue;
                }
                for ye in std::fs::read_dir(&xpath).map_err(Self::io(&xpath))? {
                    let ye = ye.map_err(Self::io(&xpath))?;
                    let Some(yname) = ye.file_name().to_str().map(String::from) else {
                        continue;
                    };
                    let rest = format!("{xname}/{yname}");
                    if let Some((x, y)) = parse_xy(&rest) {
                        // Follows symlinks, like the read does; a tile that
                        // cannot be stat'ed is an error, never left out.
                        match stat(&ye.path())? {
                            Some(m) if m.is_file() => out.push(TileEntry {
                                id: TileId { z: zoom, x, y },
                                dir: dir.clone(),
                                key: format!("{dir}/{zoom}/{rest}"),
                                size: m.len(),
                                etag: None,
                            }),
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

fn not_found() -> std::io::Error {
    std::io::ErrorKind::NotFound.into()
}

/// `path`'s metadata, following symlinks; `None` when nothing is there. A
/// symlink to nothing, or an entry that cannot be stat'ed (permissions,
/// EIO), is an error naming it: skipped, its tiles would be left out of the
/// dataset without a word.
fn stat(path: &Path) -> Result<Option<std::fs::Metadata>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::symlink_metadata(path)
        {
            Ok(_) => Err(unlistable(path, e)),
            Err(_) => Ok(None),
        },
        Err(e) => Err(unlistable(path, e)),
    }
}

/// The error for an entry of the tile tree that cannot be stat'ed.
fn unlistable(path: &Path, e: std::io::Error) -> DataError {
    let why = match std::fs::read_link(path) {
        Ok(target) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("a symlink to {}, which does not exist", target.display())
        }
        _ => e.to_string(),
    };
    DataError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            e.kind(),
            format!(
                "cannot be listed ({why}), and leaving it out would train on part of the \
                 dataset: make it readable, or remove it"
            ),
        ),
    }
}

/// An `s3://bucket/prefix` root with its own client and tokio runtime.
pub struct S3Source {
    bucket: String,
    prefix: String,
    client: aws_sdk_s3::Client,
    timeouts: Timeouts,
    rt: Option<tokio::runtime::Runtime>,
    /// Keys per ListObjectsV2 page (`None`: the service default, 1000).
    page_size: Option<i32>,
    pins: Option<Pins>,
}

impl Drop for S3Source {
    fn drop(&mut self) {
        // Dropping a runtime inside another runtime's context panics; shutting it
        // down in the background never does.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What to do when the credential chain found nothing.
const NO_CREDENTIALS: &str = "no AWS credentials found: configure them (`aws configure`, or `aws sso login --profile NAME` and AWS_PROFILE=NAME), or run where an instance role can read the bucket";

/// [`s3_err`] of an S3 call's error. A bucket in another region than the
/// client's (S3's 301 PermanentRedirect, or a 400 AuthorizationHeaderMalformed
/// naming the region) is said with that region and the fix: the Rust SDK,
/// unlike boto3, does not follow it.
fn s3_call_err<E>(
    op: &'static str,
    uri: String,
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> DataError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = e.as_service_error().and_then(|s| s.code());
    if let Some(region) = bucket_elsewhere(e.raw_response(), code) {
        return DataError::S3 {
            op,
            uri,
            message: format!(
                "the bucket is in region {region}, not the job's: give the job region {region} (`region` under [job], or `--region {region}`), or copy the data to the job's region"
            ),
        };
    }
    s3_err(op, uri, e)
}

/// The region S3 says a bucket is in, where its answer `raw` (with error
/// `code`) says the request went to another region.
fn bucket_elsewhere(
    raw: Option<&aws_sdk_s3::config::http::HttpResponse>,
    code: Option<&str>,
) -> Option<String> {
    let raw = raw?;
    let region = raw.headers().get("x-amz-bucket-region")?;
    let elsewhere = match raw.status().as_u16() {
        301 => true,
        400 => code == Some("AuthorizationHeaderMalformed"),
        _ => false,
    };
    elsewhere.then(|| region.to_string())
}

fn s3_err(op: &'static str, uri: String, e: impl std::error::Error + 'static) -> DataError {
    // Missing credentials, deep in a dispatch failure, get one line and the
    // fix instead of the SDK's whole provider chain.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
        {
            return DataError::S3 {
                op,
                uri,
                message: format!("{NO_CREDENTIALS} ({c})"),
            };
        }
        source = s.source();
    }
    DataError::S3 {
        op,
        uri,
        message: aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
    }
}

impl S3Source {
    /// Build a client from the standard AWS configuration chain, with
    /// `access`'s profile and region when it names them.
    pub fn new(bucket: &str, prefix: &str, access: &S3Access) -> Result<Self> {
        use aws_config::meta::region::RegionProviderChain;
        use aws_config::retry::RetryConfig;
        use aws_config::Region;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sca-s3")
            .enable_all()
            .build()
            .map_err(|source| DataError::Io {
                path: PathBuf::from("<tokio runtime>"),
                source,
            })?;
        let region = RegionProviderChain::first_try(access.region.clone().map(Region::new))
            .or_default_provider()
            .or_else("us-west-2");
        let timeouts = Timeouts::from_env();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(region)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(8)
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(timeouts.connect)
                    .operation_attempt_timeout(timeouts.operation)
                    .build(),
            );
        if let Some(profile) = &access.profile {
            loader = loader.profile_name(profile);
        }
        let sdk = rt.block_on(loader.load());
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk);
        if sdk.endpoint_url().is_some() {
            conf = conf.force_path_style(true);
        }
        let client = aws_sdk_s3::Client::from_conf(conf.build());
        Ok(S3Source {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            client,
            timeouts,
            rt: Some(rt),
            page_size: None,
            pins: None,
        })
    }

    /// Request at most `n` keys per listing page (tests use it to exercise pagination).
    pub fn set_page_size(&mut self, n: i32) {
        self.page_size = Some(n);
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime lives until drop")
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", self.prefix, key)
        }
    }

    fn dir_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    fn list_dirs(&self) -> Result<Vec<String>> {
        let base = self.dir_prefix();
        let uri = format!("s3://{}/{}", self.bucket, base);
        self.rt().block_on(async {
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&base)
                .delimiter("/")
                .set_max_keys(self.page_size)
                .into_paginator()
                .send();
            let mut out = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| s3_call_err("ListObjectsV2", uri.clone(), e))?;
                for cp in page.common_prefixes() {
                    if let Some(name) = cp
                        .prefix()
                        .and_then(|p| p.strip_prefix(base.as_str()))
                        .map(|p| p.trim_end_matches('/'))
                        .filter(|p| !p.is_empty())
                    {
                        out.push(name.to_string());
                    }
                }
            }
            Ok(out)
        })
    }

    fn list_tiles(&self, dirs: &[String], zoom: u8) -> Result<Vec<TileEntry>> {
        let sem = Arc::new(tokio::sync::Semaphore::new(S3_LIST_CONCURRENCY));
        let base = self.dir_prefix();
        self.rt().block_on(async {
            let mut tasks = Vec::new();
            for dir in dirs {
                let client = self.client.clone();
                let bucket = self.bucket.clone();
                let sem = sem.clone();
                let dir = dir.clone();
                let page_size = self.page_size;
                let prefix = format!("{base}{dir}/{zoom}/");
                tasks.push(tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await.expect("semaphore open");
                    let uri = format!("s3://{bucket}/{prefix}");
                    let mut pages = client
                        .list_objects_v2()
                        .bucket(&bucket)
                        .prefix(&prefix)
                        .set_max_keys(page_size)
                        .into_paginator()
                        .send();
                    let mut out = Vec::new();
                    while let Some(page) = pages.next().await {
                        let page =
                            page.map_err(|e| s3_call_err("ListObjectsV2", uri.clone(), e))?;
                        for obj in page.contents() {
                            let Some(rest) = obj.key().and_then(|k| k.strip_prefix(&prefix)) else {
                                continue;
                            };
                            if let Some((x, y)) = parse_xy(rest) {
                                out.push(TileEntry {
                                    id: TileId { z: zoom, x, y },
                                    dir: dir.clone(),
                                    key: format!("{dir}/{zoom}/{rest}"),
                                    size: obj.size().map_or(0, |s| s.max(0) as u64),
                                    etag: obj.e_tag().map(String::from),
                                });
                            }
                        }
                    }
                    Ok::<_, DataError>(out)
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                let tiles = t.await.map_err(|e| DataError::S3 {
                    op: "ListObjectsV2",
                    uri: format!("s3://{}/{}", self.bucket, base),
                    message: format!("listing task failed: {e}"),
                })??;
                out.extend(tiles);
            }
            Ok(out)
        })
    }

    /// The object's size and ETag (HeadObject).
    fn head(&self, key: &str) -> Result<(u64, Option<String>)> {
        let full = self.full_key(key);
        let uri = format!("s3://{}/{}", self.bucket, full);
        self.rt().block_on(async {
            let resp = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| s3_call_err("HeadObject", uri, e))?;
            Ok((
                resp.content_length().map_or(0, |n| n.max(0) as u64),
                resp.e_tag().map(String::from),
            ))
        })
    }

    /// The object's bytes and ETag; more than `max` bytes is [`DataError::TooLarge`].
    /// A body that breaks or stalls is read again ([`BODY_ATTEMPTS`]).
    fn read(&self, key: &str, max: u64) -> Result<(Vec<u8>, Option<String>), S3Read> {
        let mut attempt = 1;
        loop {
            match self.read_once(key, max) {
                Err(S3Read::Body(e)) if attempt < BODY_ATTEMPTS => {
                    attempt += 1;
                    // In a loader thread: a closed stderr must not panic it.
                    warn(format_args!(
                        "sca-train: {e}; reading it again (attempt {attempt} of {BODY_ATTEMPTS})"
                    ));
                    std::thread::sleep(body_backoff(attempt));
                }
                Err(S3Read::Body(e)) => {
                    let gave_up = format!("{BODY_ATTEMPTS} attempts; the network or the bucket is failing: try again later");
                    return Err(S3Read::Other(match e {
                        DataError::S3 { op, uri, message } => DataError::S3 {
                            op,
                            uri,
                            message: format!("{message} ({gave_up})"),
                        },
                        other => DataError::S3 {
                            op: "GetObject",
                            uri: self.object_uri_of(key),
                            message: format!("{other} ({gave_up})"),
                        },
                    }));
                }
                other => return other,
            }
        }
    }

    fn object_uri_of(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full_key(key))
    }

    fn read_once(&self, key: &str, max: u64) -> Result<(Vec<u8>, Option<String>), S3Read> {
        let full = self.full_key(key);
        let uri = format!("s3://{}/{}", self.bucket, full);
        let stall = self.timeouts.stall;
        self.rt().block_on(async {
            let resp = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| {
                    let missing = e.as_service_error().is_some_and(|s| s.is_no_such_key());
                    let e = s3_call_err("GetObject", uri.clone(), e);
                    if missing {
                        S3Read::NotFound(e)
                    } else {
                        S3Read::Other(e)
                    }
                })?;
            let etag = resp.e_tag().map(String::from);
            let too_large = |size: u64| {
                S3Read::Other(DataError::TooLarge {
                    uri: uri.clone(),
                    size,
                    max,
                })
            };
            let resp_length_known = resp.content_length().is_some();
            let length = resp.content_length().map_or(0, |n| n.max(0) as u64);
            if length > max {
                return Err(too_large(length));
            }
            // Streamed and counted: the body may be longer than announced.
            let mut body = resp.body;
            // The announced length is a hint, not a promise: reserve a bounded part.
            let mut bytes = Vec::with_capacity(length.min(1 << 26) as usize);
            loop {
                let next = tokio::time::timeout(stall, body.next())
                    .await
                    .map_err(|_| {
                        S3Read::Body(DataError::S3 {
                            op: "GetObject",
                            uri: uri.clone(),
                            message: format!(
                                "the body stalled: no bytes for {:.1} s after {} of them",
                                stall.as_secs_f64(),
                                bytes.len()
                            ),
                        })
                    })?;
                let Some(chunk) = next else { break };
                let chunk = chunk.map_err(|e| S3Read::Body(s3_err("GetObject", uri.clone(), e)))?;
                if (bytes.len() + chunk.len()) as u64 > max {
                    return Err(too_large((bytes.len() + chunk.len()) as u64));
                }
                bytes.extend_from_slice(&chunk);
            }
            if resp_length_known && (bytes.len() as u64) < length {
                return Err(S3Read::Body(DataError::S3 {
                    op: "GetObject",
                    uri: uri.clone(),
                    message: format!("the body ended after {} of {length} bytes", bytes.len()),
                }));
            }
            Ok((bytes, etag))
        })
    }

    /// Upload `bytes` to `key` (relative to the prefix); used by tests and
    /// tools that stage datasets.
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let full = self.full_key(key);
        let uri = format!("s3://{}/{}", self.bucket, full);
        self.rt().block_on(async {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .body(bytes.into())
                .send()
                .await
                .map_err(|e| s3_err("PutObject", uri, e))?;
            Ok(())
        })
    }

    /// Delete `key` (relative to the prefix); used by tests.
    pub fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key);
        let uri = format!("s3://{}/{}", self.bucket, full);
        self.rt().block_on(async {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| s3_err("DeleteObject", uri, e))?;
            Ok(())
        })
    }

    /// Create the bucket if it does not exist (tests against an emulator).
    pub fn ensure_bucket(&self) -> Result<()> {
        let uri = format!("s3://{}", self.bucket);
        self.rt().block_on(async {
            if self
                .client
                .head_bucket()
                .bucket(&self.bucket)
                .send()
                .await
                .is_ok()
            {
                return Ok(());
            }
            self.client
                .create_bucket()
                .bucket(&self.bucket)
                .send()
                .await
                .map_err(|e| s3_err("CreateBucket", uri, e))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_credentials_are_one_line_with_the_fix() {
        /// A dispatch failure wrapping a credentials error, as the SDK nests it.
        #[derive(Debug)]
        struct Dispatch(aws_credential_types::provider::error::CredentialsError);
        impl std::fmt::Display for Dispatch {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("dispatch failure")
            }
        }
        impl std::error::Error for Dispatch {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Dispatch(
            aws_credential_types::provider::error::CredentialsError::not_loaded(
                "no providers in chain provided credentials",
            ),
        );
        let text = s3_err("ListObjectsV2", "s3://bucket/data/".into(), e).to_string();
        assert!(
            text.starts_with("S3 ListObjectsV2 s3://bucket/data/: no AWS credentials found"),
            "{text}"
        );
        assert!(
            text.contains("aws configure") && !text.contains('\n'),
            "{text}"
        );

        let other = s3_err(
            "GetObject",
            "s3://b/k".into(),
            std::io::Error::other("timed out"),
        );
        let other = other.to_string();
        assert!(
            other.starts_with("S3 GetObject s3://b/k: timed out"),
            "{other}"
        );
        assert!(!other.contains("no AWS credentials"), "{other}");
    }

    /// A bucket in another region is named with its region (S3's 301, or
    /// its 400 AuthorizationHeaderMalformed), nothing else is.
    #[test]
    fn a_bucket_in_another_region_is_named_with_it() {
        use aws_sdk_s3::config::http::HttpResponse;
        use aws_sdk_s3::primitives::SdkBody;
        let answer = |status: u16, region: Option<&'static str>| {
            let mut r = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
            if let Some(region) = region {
                r.headers_mut().insert("x-amz-bucket-region", region);
            }
            r
        };
        let moved = answer(301, Some("us-west-2"));
        assert_eq!(
            bucket_elsewhere(Some(&moved), None).as_deref(),
            Some("us-west-2")
        );
        let malformed = answer(400, Some("eu-central-1"));
        assert_eq!(
            bucket_elsewhere(Some(&malformed), Some("AuthorizationHeaderMalformed")).as_deref(),
            Some("eu-central-1")
        );
        assert_eq!(
            bucket_elsewhere(Some(&malformed), Some("InvalidArgument")),
            None
        );
        assert_eq!(
            bucket_elsewhere(Some(&answer(403, Some("us-west-2"))), None),
            None
        );
        assert_eq!(bucket_elsewhere(Some(&answer(301, None)), None), None);
        assert_eq!(bucket_elsewhere(None, None), None);
    }

    #[test]
    fn body_reads_back_off_200_ms_doubling_to_at_most_5_s() {
        let waits: Vec<u64> = (2..=8)
            .map(|n| body_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    /// A timeout too large for a `Duration` falls back to the default, as
    /// any other unusable value does, instead of panicking.
    #[test]
    fn an_unusable_timeout_is_the_default() {
        let d = Duration::from_secs(30);
        assert_eq!(timeout(Some(" 2.5 "), 30), Duration::from_millis(2500));
        for v in [
            None,
            Some("1e20"),
            Some("inf"),
            Some("NaN"),
            Some("0"),
            Some("-1"),
            Some("x"),
        ] {
            assert_eq!(timeout(v, 30), d, "{v:?}");
        }
    }

    #[test]
    fn parses_tile_keys() {
        assert_eq!(parse_xy("5470/12720.tif"), Some((5470, 12720)));
        assert_eq!(parse_xy("5470/12720.TIFF"), Some((5470, 12720)));
        assert_eq!(parse_xy("1/2.png"), Some((1, 2)));
        assert_eq!(parse_xy("1/2.jpg"), None);
        assert_eq!(parse_xy("1/2.tif.aux.xml"), None);
        assert_eq!(parse_xy("a/2.tif"), None);
        assert_eq!(parse_xy("1/2/3.tif"), None);
        assert_eq!(parse_xy("1/-2.tif"), None);
        assert_eq!(parse_xy("1/.tif"), None);
    }

    /// Files of one tile in one directory: the listing puts the smallest key
    /// first (the one the join keeps) whatever order they were written in,
    /// which is the order `read_dir` gives on some file systems.
    #[test]
    fn one_tiles_files_in_one_directory_are_listed_by_name() {
        let groups: [&[&str]; 3] = [
            &["5.tif", "05.tif"],
            &["6.tif", "6.TIF"],
            &["7.tif", "007.png", "7.TIFF", "07.tif", "7.png", "0007.tiff"],
        ];
        for reversed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let x = dir.path().join("d/15/3");
            std::fs::create_dir_all(&x).unwrap();
            for names in groups {
                let mut names = names.to_vec();
                if reversed {
                    names.reverse();
                }
                for name in names {
                    std::fs::write(x.join(name), name).unwrap();
                }
            }
            let src = TileSource::open(dir.path().to_str().unwrap(), Path::new(".")).unwrap();
            let keys: Vec<String> = src
                .list_tiles(&["d".into()], 15)
                .unwrap()
                .into_iter()
                .map(|t| t.key)
                .collect();
            let mut want: Vec<String> = Vec::new();
            for names in groups {
                let mut names: Vec<String> = names.iter().map(|n| format!("d/15/3/{n}")).collect();
                names.sort();
                want.extend(names);
            }
            assert_eq!(keys, want, "written reversed: {reversed}");
        }
    }

    /// A pinned tile that grew past the read cap changed since launch:
    /// fatal, not a bad tile to drop; unpinned, it is too large.
    #[test]
    fn a_pinned_object_that_grew_past_the_cap_changed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.tif"), [0u8; 10]).unwrap();
        let mut src = TileSource::open(dir.path().to_str().unwrap(), Path::new(".")).unwrap();
        let pin = ManifestObject {
            uri: "t.tif".into(),
            size: 10,
            etag: None,
            sha256: Some(super::super::manifest::sha256_hex(&[0u8; 10])),
        };
        assert!(src.read_max("t.tif", 20).is_ok());
        std::fs::write(dir.path().join("t.tif"), [0u8; 30]).unwrap();
        assert!(matches!(
            src.read_max("t.tif", 20),
            Err(DataError::TooLarge { size: 30, .. })
        ));
        src.pin(Pins::from([("t.tif".to_string(), pin.clone())]));
        match src.read_max("t.tif", 20) {
            Err(DataError::DataChanged { reason, .. }) => {
                assert_eq!(reason, "30 bytes now, 10 when pinned")
            }
            other => panic!("{other:?}"),
        }
        // As large when pinned: too large, as it was at launch.
        src.pin(Pins::from([(
            "t.tif".to_string(),
            ManifestObject { size: 30, ..pin },
        )]));
        assert!(matches!(
            src.read_max("t.tif", 20),
            Err(DataError::TooLarge { size: 30, .. })
        ));
    }

    /// A dataset of 4 synthetic tiles under `root`, its regexes selecting
    /// the synthetic directories.
    fn synthetic_dataset(root: &Path) -> sca_spec::Dataset {
        crate::synth::small_dataset(root)
    }

    /// The error of building `dataset`'s data manifest under `root`.
    fn manifest_error(dataset: &sca_spec::Dataset, root: &Path) -> String {
        match super::super::manifest::build(dataset, root, &S3Access::default()) {
            Ok(m) => panic!("built a manifest of {} objects", m.objects.len()),
            Err(e) => e.to_string(),
        }
    }

    /// A tile that is a symlink to nothing fails the listing, naming it: it
    /// was once left out unseen, and a launch pinned (and trained on) a
    /// smaller dataset than the one on disk.
    #[test]
    fn a_dangling_symlink_tile_fails_the_listing_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dataset = synthetic_dataset(tmp.path());
        // The root as the dataset names it, so that paths read the same.
        let src = TileSource::open(".", tmp.path()).unwrap();
        let dirs = src.list_dirs().unwrap();
        let tiles = src.list_tiles(&dirs, 15).unwrap();
        let victim = src.uri(&tiles[1].key);
        std::fs::remove_file(&victim).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("gone.tif"), &victim).unwrap();
        let e = src.list_tiles(&dirs, 15).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{victim}: cannot be listed (a symlink to "))
                && e.contains("gone.tif, which does not exist")
                && e.contains("make it readable, or remove it"),
            "{e}"
        );
        let e = manifest_error(&dataset, tmp.path());
        assert!(e.starts_with(&format!("{victim}: cannot be listed")), "{e}");
    }

    /// A tile directory or zoom directory that is a symlink to nothing fails
    /// the listing when the regex selects it; one it does not select, and a
    /// directory without the zoom, are no error.
    #[test]
    fn a_dangling_symlink_directory_fails_the_listing_when_selected() {
        let tmp = tempfile::tempdir().unwrap();
        let dataset = synthetic_dataset(tmp.path());
        // The root as the dataset names it, so that paths read the same.
        let root = &tmp.path().join(".");
        std::fs::create_dir_all(root.join("other_binary/14")).unwrap();
        std::os::unix::fs::symlink(root.join("nowhere"), root.join("unrelated")).unwrap();
        assert!(super::super::manifest::build(&dataset, tmp.path(), &S3Access::default()).is_ok());

        let linked = root.join("late_binary");
        std::os::unix::fs::symlink(root.join("nowhere"), &linked).unwrap();
        let e = manifest_error(&dataset, tmp.path());
        assert!(
            e.starts_with(&format!(
                "{}: cannot be listed (a symlink to ",
                linked.display()
            )),
            "{e}"
        );
        std::fs::remove_file(&linked).unwrap();

        let zoom = root.join("other_binary/15");
        std::os::unix::fs::symlink(root.join("nowhere"), &zoom).unwrap();
        let e = manifest_error(&dataset, tmp.path());
        assert!(
            e.starts_with(&format!(
                "{}: cannot be listed (a symlink to ",
                zoom.display()
            )),
            "{e}"
        );
    }

    /// A tile directory that cannot be read fails the listing, naming it.
    /// (Root reads a mode-000 directory: the test then checks nothing.)
    #[test]
    fn an_unreadable_tile_directory_fails_the_listing() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dataset = synthetic_dataset(tmp.path());
        let src = TileSource::open(".", tmp.path()).unwrap();
        let dir = src
            .list_dirs()
            .unwrap()
            .into_iter()
            .find(|d| d.ends_with("_binary"))
            .unwrap();
        let path = tmp.path().join(".").join(&dir);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        let denied = std::fs::read_dir(&path).is_err();
        let result = super::super::manifest::build(&dataset, tmp.path(), &S3Access::default());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        if denied {
            let e = result.unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "{}/15: cannot be listed (Permission denied",
                    path.display()
                )),
                "{e}"
            );
        }
    }

    /// A directory under the root whose name is not UTF-8 cannot be matched
    /// by a regex: an error naming it, not a directory left out unseen.
    #[test]
    fn a_non_utf8_directory_name_fails_the_listing() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().unwrap();
        let dataset = synthetic_dataset(tmp.path());
        let odd = tmp
            .path()
            .join(std::ffi::OsStr::from_bytes(b"tiles_\xff_binary"));
        std::fs::create_dir_all(&odd).unwrap();
        let e = manifest_error(&dataset, tmp.path());
        assert!(
            e.contains("_binary: the directory's name is not UTF-8") && e.contains("rename it"),
            "{e}"
        );
    }

    #[test]
    fn rejects_short_bucket() {
        assert!(matches!(
            TileSource::open("s3://ab/x", Path::new(".")),
            Err(DataError::BadUri { .. })
        ));
    }
}
