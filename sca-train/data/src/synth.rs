//! A deterministic synthetic snow dataset in exactly the real S3 layout, for
//! the quickstart and tests.
//!
//! `synth` writes `<root>/20180528_181110_1025_3B_AnalyticMS_SR_clip_tiled/<z>/<x>/<y>.tif`
//! (4-band `u16` surface reflectance x 10000, Planet band order B, G, R, NIR)
//! and `<root>/ASO_3M_SD_SYNTH_20180528_binary/<z>/<x>/<y>.tif` (1-band `u8`,
//! 0/1) for a contiguous rectangle of tiles (as square as possible, filled row
//! by row) near the original's tile `15/5470/12720`, so spatial splits have
//! neighbours. Both are plain TIFFs with GeoTIFF tags (EPSG:4326 bounds of the
//! slippy-map tile).
//!
//! Content: a smooth terrain-like elevation field (a sum of seeded sinusoids
//! in world pixel coordinates, so it is continuous across tile borders); snow
//! where elevation plus a finer "detail" field exceeds a threshold. Snow is
//! bright in the visible bands (0.6-0.9, dimmed by a smooth illumination
//! field) and darker in NIR; bare ground is dark with vegetation-like NIR.
//! Imagery blends snow and ground over a few pixels at snow edges (the mask
//! stays binary), plus per-pixel sensor noise — a per-pixel linear classifier
//! gets most pixels, edges need context. Every random draw is a function of
//! the seed and world coordinates, so the same seed gives byte-identical
//! files whatever the thread count.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tiff::encoder::colortype::ColorType;
use tiff::encoder::TiffEncoder;
use tiff::tags::{PhotometricInterpretation, SampleFormat, Tag};

use sca_spec::Dataset;

/// Imagery tile directory written by [`synth`] (the original naming scheme).
pub const IMAGERY_DIR: &str = "20180528_181110_1025_3B_AnalyticMS_SR_clip_tiled";
/// Mask tile directory written by [`synth`].
pub const MASK_DIR: &str = "ASO_3M_SD_SYNTH_20180528_binary";

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding {path}: {message}")]
    Encode { path: PathBuf, message: String },
    #[error("invalid synthetic dataset: {0}")]
    Invalid(String),
}

pub type Result<T, E = SynthError> = std::result::Result<T, E>;

/// What [`synth`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSummary {
    pub imagery_dir: PathBuf,
    pub mask_dir: PathBuf,
    pub tiles: u32,
    pub zoom: u8,
    pub tile_size: u32,
    /// Inclusive x range of the tiles.
    pub x_range: (u32, u32),
    /// Inclusive y range of the tiles.
    pub y_range: (u32, u32),
    /// Fraction of snow pixels over all masks.
    pub snow_fraction: f64,
}

/// A plain `u16` TIFF colour type with `N` samples per pixel (BlackIsZero with
/// `N - 1` unspecified extra samples, as GDAL writes multi-band rasters).
pub struct MultiU16<const N: usize>;

impl<const N: usize> ColorType for MultiU16<N> {
    type Inner = u16;
    const TIFF_VALUE: PhotometricInterpretation = PhotometricInterpretation::BlackIsZero;
    const BITS_PER_SAMPLE: &'static [u16] = &[16; N];
    const SAMPLE_FORMAT: &'static [SampleFormat] = &[SampleFormat::Uint; N];

    fn horizontal_predict(row: &[u16], result: &mut Vec<u16>) {
        let (start, rest) = row.split_at(N.min(row.len()));
        result.extend_from_slice(start);
        result.extend(row.iter().zip(rest).map(|(p, c)| c.wrapping_sub(*p)));
    }
}

/// A plain `f32` TIFF colour type with `N` samples per pixel (see [`MultiU16`]).
pub struct MultiF32<const N: usize>;

impl<const N: usize> ColorType for MultiF32<N> {
    type Inner = f32;
    const TIFF_VALUE: PhotometricInterpretation = PhotometricInterpretation::BlackIsZero;
    const BITS_PER_SAMPLE: &'static [u16] = &[32; N];
    const SAMPLE_FORMAT: &'static [SampleFormat] = &[SampleFormat::IEEEFP; N];

    fn horizontal_predict(row: &[f32], result: &mut Vec<f32>) {
        // Horizontal prediction is not defined for floats; TIFF uses predictor 3.
        result.extend_from_slice(row);
    }
}

fn encode_f32<const N: usize>(w: u32, h: u32, data: &[f32]) -> tiff::TiffResult<Vec<u8>> {
    let mut buf = Cursor::new(Vec::new());
    let mut enc = TiffEncoder::new(&mut buf)?;
    let mut img = enc.new_image::<MultiF32<N>>(w, h)?;
    geo_tags(&mut img, w, None, N - 1)?;
    img.write_data(data)?;
    Ok(buf.into_inner())
}

/// Encode a pixel-interleaved `f32` image with `bands` (1 to 4) samples per
/// pixel as an uncompressed TIFF (reflectance imagery, used by tests).
pub fn encode_tiff_f32(w: u32, h: u32, bands: usize, data: &[f32]) -> tiff::TiffResult<Vec<u8>> {
    match bands {
        1 => encode_f32::<1>(w, h, data),
        2 => encode_f32::<2>(w, h, data),
        3 => encode_f32::<3>(w, h, data),
        4 => encode_f32::<4>(w, h, data),
        _ => Err(unsupported_bands(bands)),
    }
}

fn unsupported_bands(bands: usize) -> tiff::TiffError {
    tiff::TiffError::IoError(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{bands} bands are not supported by this encoder"),
    ))
}

/// EPSG:4326 bounds `(west, south, east, north)` of a slippy-map tile.
pub fn tile_bounds(z: u8, x: u32, y: u32) -> (f64, f64, f64, f64) {
    let n = f64::from(1u32 << z.min(31));
    let lon = |x: f64| x / n * 360.0 - 180.0;
    let lat = |y: f64| {
        let t = std::f64::consts::PI * (1.0 - 2.0 * y / n);
        t.sinh().atan().to_degrees()
    };
    (
        lon(f64::from(x)),
        lat(f64::from(y + 1)),
        lon(f64::from(x + 1)),
        lat(f64::from(y)),
    )
}

fn geo_tags<W: std::io::Write + std::io::Seek, C: ColorType, K: tiff::encoder::TiffKind>(
    img: &mut tiff::encoder::ImageEncoder<'_, W, C, K>,
    size: u32,
    geo: Option<(u8, u32, u32)>,
    extra: usize,
) -> tiff::TiffResult<()> {
    let enc = img.encoder();
    if extra > 0 {
        enc.write_tag(Tag::ExtraSamples, &vec![0u16; extra][..])?;
    }
    if let Some((z, x, y)) = geo {
        let (w, s, e, n) = tile_bounds(z, x, y);
        let sz = f64::from(size);
        enc.write_tag(
            Tag::ModelPixelScaleTag,
            &[(e - w) / sz, (n - s) / sz, 0.0][..],
        )?;
        enc.write_tag(Tag::ModelTiepointTag, &[0.0, 0.0, 0.0, w, n, 0.0][..])?;
        // GTModelType = geographic, GTRasterType = PixelIsArea, GeographicType = 4326.
        enc.write_tag(
            Tag::GeoKeyDirectoryTag,
            &[
                1u16, 1, 0, 3, 1024, 0, 1, 2, 1025, 0, 1, 1, 2048, 0, 1, 4326,
            ][..],
        )?;
    }
    Ok(())
}

fn encode_u16<const N: usize>(
    w: u32,
    h: u32,
    data: &[u16],
    geo: Option<(u8, u32, u32)>,
) -> tiff::TiffResult<Vec<u8>> {
    let mut buf = Cursor::new(Vec::new());
    let mut enc = TiffEncoder::new(&mut buf)?;
    let mut img = enc.new_image::<MultiU16<N>>(w, h)?;
    geo_tags(&mut img, w, geo, N - 1)?;
    img.write_data(data)?;
    Ok(buf.into_inner())
}

/// Encode a pixel-interleaved `u16` image with `bands` (1 to 8) samples per
/// pixel as an uncompressed TIFF.
pub fn encode_tiff_u16(w: u32, h: u32, bands: usize, data: &[u16]) -> tiff::TiffResult<Vec<u8>> {
    encode_tiff_u16_geo(w, h, bands, data, None)
}

/// [`encode_tiff_u16`] with GeoTIFF tags for slippy-map tile `(z, x, y)` (EPSG:4326).
pub fn encode_tiff_u16_geo(
    w: u32,
    h: u32,
    bands: usize,
    data: &[u16],
    geo: Option<(u8, u32, u32)>,
) -> tiff::TiffResult<Vec<u8>> {
    match bands {
        1 => encode_u16::<1>(w, h, data, geo),
        2 => encode_u16::<2>(w, h, data, geo),
        3 => encode_u16::<3>(w, h, data, geo),
        4 => encode_u16::<4>(w, h, data, geo),
        5 => encode_u16::<5>(w, h, data, geo),
        6 => encode_u16::<6>(w, h, data, geo),
        7 => encode_u16::<7>(w, h, data, geo),
        8 => encode_u16::<8>(w, h, data, geo),
        _ => Err(unsupported_bands(bands)),
    }
}

/// Encode a 1-band `u8` image as an uncompressed TIFF.
pub fn encode_tiff_u8(w: u32, h: u32, data: &[u8]) -> tiff::TiffResult<Vec<u8>> {
    encode_tiff_u8_geo(w, h, data, None)
}

/// [`encode_tiff_u8`] with GeoTIFF tags placing it at slippy-map tile `(z, x, y)` in EPSG:4326.
pub fn encode_tiff_u8_geo(
    w: u32,
    h: u32,
    data: &[u8],
    geo: Option<(u8, u32, u32)>,
) -> tiff::TiffResult<Vec<u8>> {
    let mut buf = Cursor::new(Vec::new());
    let mut enc = TiffEncoder::new(&mut buf)?;
    let mut img = enc.new_image::<tiff::encoder::colortype::Gray8>(w, h)?;
    geo_tags(&mut img, w, geo, 0)?;
    img.write_data(data)?;
    Ok(buf.into_inner())
}

/// One plane wave `amp * sin(a x + b y + phase)` in world pixel coordinates.
struct Wave {
    a: f64,
    b: f64,
    phase: f64,
    amp: f32,
}

/// A sum of waves, normalised so the sum of amplitudes is 1.
struct Field(Vec<Wave>);

impl Field {
    fn new(rng: &mut ChaCha8Rng, count: usize, min_wl: f64, max_wl: f64) -> Self {
        let mut waves: Vec<Wave> = (0..count)
            .map(|_| {
                let wl = min_wl * (max_wl / min_wl).powf(rng.gen::<f64>());
                let theta = rng.gen::<f64>() * std::f64::consts::TAU;
                let k = std::f64::consts::TAU / wl;
                Wave {
                    a: k * theta.cos(),
                    b: k * theta.sin(),
                    phase: rng.gen::<f64>() * std::f64::consts::TAU,
                    // Longer waves are stronger (terrain-like red spectrum).
                    amp: wl as f32,
                }
            })
            .collect();
        let total: f32 = waves.iter().map(|w| w.amp).sum();
        for w in &mut waves {
            w.amp /= total;
        }
        Field(waves)
    }

    /// Add the field over the `n`x`n` tile whose top-left world pixel is
    /// `(gx0, gy0)` to `out` (separable: per-row and per-column sin/cos in f64).
    fn add(&self, gx0: f64, gy0: f64, n: usize, out: &mut [f32], scale: f32) {
        let (mut su, mut cu, mut sv, mut cv) =
            (vec![0f32; n], vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        for w in &self.0 {
            for i in 0..n {
                let (s, c) = (w.a * (gx0 + i as f64)).sin_cos();
                su[i] = s as f32;
                cu[i] = c as f32;
                let (s, c) = (w.b * (gy0 + i as f64) + w.phase).sin_cos();
                sv[i] = s as f32;
                cv[i] = c as f32;
            }
            let amp = w.amp * scale;
            for (y, row) in out.chunks_exact_mut(n).enumerate() {
                let (s, c) = (sv[y] * amp, cv[y] * amp);
                for ((o, &su), &cu) in row.iter_mut().zip(&su).zip(&cu) {
                    *o += su * c + cu * s;
                }
            }
        }
    }
}

/// Fields of one synthetic world.
struct World {
    seed: u64,
    elevation: Field,
    detail: Field,
    vegetation: Field,
    illumination: Field,
}

const SNOW: [f32; 4] = [0.86, 0.83, 0.79, 0.58];
const ROCK: [f32; 4] = [0.07, 0.10, 0.14, 0.24];
const VEG: [f32; 4] = [0.04, 0.07, 0.05, 0.38];
const NOISE_SIGMA: f32 = 0.012;
/// Threshold on elevation + detail for snow (fields are in [-1, 1]).
const SNOW_LINE: f32 = 0.05;
/// Half-width (in field units) of the blended edge in the imagery.
const EDGE: f32 = 0.03;

impl World {
    fn new(seed: u64, tile_size: u32) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ts = f64::from(tile_size);
        World {
            seed,
            elevation: Field::new(&mut rng, 6, 0.6 * ts, 4.0 * ts),
            detail: Field::new(&mut rng, 6, 0.04 * ts, 0.25 * ts),
            vegetation: Field::new(&mut rng, 4, 0.3 * ts, 1.5 * ts),
            illumination: Field::new(&mut rng, 4, 0.2 * ts, 1.0 * ts),
        }
    }

    /// Interleaved B,G,R,NIR `u16` imagery and the `u8` mask of one tile.
    fn tile(&self, x: u32, y: u32, n: usize) -> (Vec<u16>, Vec<u8>) {
        let (gx0, gy0) = (f64::from(x) * n as f64, f64::from(y) * n as f64);
        let npix = n * n;
        let mut score = vec![0f32; npix];
        self.elevation.add(gx0, gy0, n, &mut score, 1.0);
        self.detail.add(gx0, gy0, n, &mut score, 0.3);
        let mut veg = vec![0f32; npix];
        self.vegetation.add(gx0, gy0, n, &mut veg, 1.0);
        let mut illum = vec![0f32; npix];
        self.illumination.add(gx0, gy0, n, &mut illum, 1.0);

        let noise_key = crate::seed::mix_seed(self.seed, 0x4e4f_4953, 0, 0);
        let mut image = vec![0u16; npix * 4];
        let mut mask = vec![0u8; npix];
        for p in 0..npix {
            let s = score[p] - SNOW_LINE;
            mask[p] = (s > 0.0) as u8;
            let t = ((s + EDGE) / (2.0 * EDGE)).clamp(0.0, 1.0);
            let f = t * t * (3.0 - 2.0 * t);
            let light = 0.8 + 0.2 * illum[p];
            let v = (0.5 + 0.5 * veg[p] - 0.5 * score[p]).clamp(0.0, 1.0);
            let (px, py) = ((p % n) as u64, (p / n) as u64);
            // One SplitMix64 finaliser per pixel over a seeded key of its world position.
            let mut h = noise_key
                ^ (gx0 as u64 + px).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (gy0 as u64 + py).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
            h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            h ^= h >> 31;
            for b in 0..4 {
                let ground = (1.0 - v) * ROCK[b] + v * VEG[b];
                let refl = light * (f * SNOW[b] + (1.0 - f) * ground);
                // Two 16-bit uniforms per band from one hash: triangular noise.
                let bits = h >> (16 * b);
                let u1 = (bits & 0xff) as f32 / 255.0;
                let u2 = ((bits >> 8) & 0xff) as f32 / 255.0;
                let noise = (u1 + u2 - 1.0) * NOISE_SIGMA * 6f32.sqrt();
                image[p * 4 + b] = ((refl + noise).clamp(0.0, 1.0) * 10000.0).round() as u16;
            }
        }
        (image, mask)
    }
}

/// The tile origin used at `zoom`: the original's `15/5470/12720`, scaled.
fn origin(zoom: u8, cols: u32, rows: u32) -> Result<(u32, u32)> {
    let scale = |v: u32| -> u64 {
        if zoom >= 15 {
            u64::from(v) << (zoom - 15)
        } else {
            u64::from(v) >> (15 - zoom)
        }
    };
    let max = 1u64 << zoom;
    if u64::from(cols) > max || u64::from(rows) > max {
        return Err(SynthError::Invalid(format!(
            "{cols}x{rows} tiles do not fit zoom {zoom}"
        )));
    }
    let x0 = scale(5470).min(max - u64::from(cols));
    let y0 = scale(12720).min(max - u64::from(rows));
    Ok((x0 as u32, y0 as u32))
}

/// The encoded imagery and mask TIFFs of tile `(zoom, x, y)` of the world
/// seeded by `seed` (what [`synth`] writes for that tile), without touching disk.
pub fn synth_tile(
    seed: u64,
    tile_size: u32,
    zoom: u8,
    x: u32,
    y: u32,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let world = World::new(seed, tile_size);
    let (image, mask) = world.tile(x, y, tile_size as usize);
    let geo = Some((zoom, x, y));
    let enc = |e: tiff::TiffError| SynthError::Encode {
        path: PathBuf::from(format!("{zoom}/{x}/{y}.tif")),
        message: e.to_string(),
    };
    Ok((
        encode_tiff_u16_geo(tile_size, tile_size, 4, &image, geo).map_err(enc)?,
        encode_tiff_u8_geo(tile_size, tile_size, &mask, geo).map_err(enc)?,
    ))
}

/// Write `tiles` synthetic tiles of `tile_size` at `zoom` under `out_root`
/// (both the imagery and the mask directory); see the module docs.
pub fn synth(
    out_root: &Path,
    tiles: u32,
    seed: u64,
    tile_size: u32,
    zoom: u8,
) -> Result<SynthSummary> {
    synth_into(out_root, out_root, tiles, seed, tile_size, zoom)
}

/// [`synth`] with separate roots for imagery and masks.
pub fn synth_into(
    imagery_root: &Path,
    mask_root: &Path,
    tiles: u32,
    seed: u64,
    tile_size: u32,
    zoom: u8,
) -> Result<SynthSummary> {
    if tiles == 0 || tile_size == 0 || zoom > 24 {
        return Err(SynthError::Invalid(format!(
            "tiles={tiles}, tile_size={tile_size}, zoom={zoom}"
        )));
    }
    let cols = (f64::from(tiles).sqrt().ceil() as u32).max(1);
    let rows = tiles.div_ceil(cols);
    let (x0, y0) = origin(zoom, cols, rows)?;
    let world = World::new(seed, tile_size);
    let imagery_dir = imagery_root.join(IMAGERY_DIR);
    let mask_dir = mask_root.join(MASK_DIR);
    let n = tile_size as usize;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let results = crate::par::par_map(tiles as usize, workers, |i| -> Result<u64> {
        let (x, y) = (x0 + i as u32 % cols, y0 + i as u32 / cols);
        let (image, mask) = world.tile(x, y, n);
        let snow = mask.iter().map(|&m| u64::from(m)).sum();
        let rel = PathBuf::from(zoom.to_string())
            .join(x.to_string())
            .join(format!("{y}.tif"));
        let geo = Some((zoom, x, y));
        let ipath = imagery_dir.join(&rel);
        let ibytes = encode_tiff_u16_geo(tile_size, tile_size, 4, &image, geo).map_err(|e| {
            SynthError::Encode {
                path: ipath.clone(),
                message: e.to_string(),
            }
        })?;
        write(&ipath, &ibytes)?;
        let mpath = mask_dir.join(&rel);
        let mbytes = encode_tiff_u8_geo(tile_size, tile_size, &mask, geo).map_err(|e| {
            SynthError::Encode {
                path: mpath.clone(),
                message: e.to_string(),
            }
        })?;
        write(&mpath, &mbytes)?;
        Ok(snow)
    });
    let mut snow = 0u64;
    for r in results {
        snow += r?;
    }
    let last = tiles - 1;
    Ok(SynthSummary {
        imagery_dir,
        mask_dir,
        tiles,
        zoom,
        tile_size,
        x_range: (x0, x0 + (cols - 1).min(last)),
        y_range: (y0, y0 + last / cols),
        snow_fraction: snow as f64 / (f64::from(tiles) * (n * n) as f64),
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, bytes).map_err(io)
}

/// Generate the dataset's synthetic tiles when `dataset.synthetic` is set, its
/// roots are local and the imagery root holds nothing yet (but hidden
/// entries and the way to the synthetic masks). Returns what was generated,
/// or `None` when nothing had to be.
///
/// One generator at a time (a lock file in each root, taken in one order),
/// and the check waits for it: launches of one experiment started together,
/// and their trainers, find the dataset whole, never half-written. The tiles
/// are made aside, in hidden directories inside the roots (the same file
/// system, even for a root that is a mount point), and moved in whole,
/// masks before imagery: a generator killed half way leaves the imagery
/// root as empty as it was, so the next one makes the dataset again
/// instead of training on part of it.
pub fn ensure_synthetic(dataset: &Dataset, base_dir: &Path) -> Result<Option<SynthSummary>> {
    let Some(s) = &dataset.synthetic else {
        return Ok(None);
    };
    if dataset.imagery.starts_with("s3://") || dataset.masks.starts_with("s3://") {
        return Err(SynthError::Invalid(
            "synthetic datasets must have local imagery and mask roots".into(),
        ));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Io { path, source }
    };
    // Resolved, so that one directory spelled two ways (`data`, `./data`,
    // a symlink, `..`) is one root.
    let resolve = |root: &str| -> Result<PathBuf> {
        let root = base_dir.join(root);
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        std::fs::canonicalize(&root).map_err(io(&root))
    };
    let (iroot, mroot) = (resolve(&dataset.imagery)?, resolve(&dataset.masks)?);
    let settings = format!(
        "tiles={} seed={} tile_size={} zoom={}",
        s.tiles, s.seed, dataset.tile_size, dataset.zoom
    );
    if populated(&iroot, &mroot) {
        return made_with(&iroot, &mroot, &settings).map(|()| None);
    }
    let mut roots = vec![&iroot, &mroot];
    roots.sort();
    roots.dedup();
    let mut locks = Vec::new();
    for root in roots {
        let path = root.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        lock.lock().map_err(io(&path))?;
        locks.push(lock);
    }
    if populated(&iroot, &mroot) {
        // Made while this waited for the lock.
        return made_with(&iroot, &mroot, &settings).map(|()| None);
    }
    // Under the lock, a staging directory left by a killed generator is
    // nobody's: it is replaced, and so is a mask directory without imagery.
    let replace = |from: Option<&Path>, to: &Path| -> Result<()> {
        match std::fs::remove_dir_all(to) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(to)(e)),
            _ => {}
        }
        match from {
            Some(from) => std::fs::rename(from, to).map_err(io(to)),
            None => std::fs::create_dir(to).map_err(io(to)),
        }
    };
    // A masks root shared with another imagery root holds that dataset's
    // masks: replaced with other settings' masks, they would be trained on
    // as its own. (Masks of this imagery root's own generator, killed
    // before its imagery was moved in, are replaced, as ever.)
    if let Some((had, owner)) = mroot
        .join(MASK_DIR)
        .exists()
        .then(|| read_made(&mroot))
        .transpose()?
        .flatten()
    {
        if had != settings && owner.as_deref() != Some(iroot.as_path()) {
            return Err(SynthError::Invalid(format!(
                "{} holds the masks of the synthetic dataset in {}, made with {had}, and this experiment asks for {} with imagery in {}: give this dataset its own dataset.masks root",
                mroot.display(),
                owner.map_or_else(|| "another imagery root".into(), |o| o.display().to_string()),
                settings,
                iroot.display()
            )));
        }
    }
    let (stage_imagery, stage_masks) = (iroot.join(STAGE_IMAGERY), mroot.join(STAGE_MASKS));
    replace(None, &stage_imagery)?;
    replace(None, &stage_masks)?;
    let mut made = synth_into(
        &stage_imagery,
        &stage_masks,
        s.tiles,
        s.seed,
        dataset.tile_size,
        dataset.zoom,
    )?;
    let (imagery_dir, mask_dir) = (iroot.join(IMAGERY_DIR), mroot.join(MASK_DIR));
    // Each root says with what, and for which imagery root, before its
    // tiles are moved in: a populated root made by this generator always
    // does.
    let stamp = |root: &Path| {
        let text = format!("{settings}\nimagery={}\n", iroot.display());
        crate::fsx::write_atomic(&root.join(MADE_FILE), text.as_bytes()).map_err(|e| {
            SynthError::Io {
                path: e.path,
                source: e.source,
            }
        })
    };
    stamp(&mroot)?;
    replace(Some(&stage_masks.join(MASK_DIR)), &mask_dir)?;
    stamp(&iroot)?;
    replace(Some(&stage_imagery.join(IMAGERY_DIR)), &imagery_dir)?;
    for stage in [&stage_masks, &stage_imagery] {
        std::fs::remove_dir(stage).map_err(io(stage))?;
    }
    drop(locks);
    made.imagery_dir = imagery_dir;
    made.mask_dir = mask_dir;
    Ok(Some(made))
}

/// In each synthetic root: the generators' lock, and their staging.
const LOCK_FILE: &str = ".synthetic.lock";
const STAGE_IMAGERY: &str = ".synthetic-imagery";
const STAGE_MASKS: &str = ".synthetic-masks";

/// In each root: the settings its synthetic tiles were made with.
const MADE_FILE: &str = ".synthetic-made";

/// Whether the synthetic tiles in the dataset's roots `iroot` and `mroot`
/// were made with `settings` (the `dataset.synthetic` and tile geometry
/// asked for now): tiles made with others (an earlier `tiles` or `seed`,
/// another sweep point's, another dataset's masks in a shared masks root)
/// are refused, never trained on as these. A root without the file (tiles
/// made before it was kept, or one's own) is taken as it is.
fn made_with(iroot: &Path, mroot: &Path, settings: &str) -> Result<()> {
    for root in [iroot, mroot] {
        let Some((had, _)) = read_made(root)? else {
            continue;
        };
        if had == settings {
            continue;
        }
        let both = if iroot == mroot {
            iroot.display().to_string()
        } else {
            format!("{} and {}", iroot.display(), mroot.display())
        };
        return Err(SynthError::Invalid(format!(
            "{} holds synthetic tiles made with {had}, and the experiment asks for {}: a root's tiles are made once, so give these settings their own dataset.imagery and dataset.masks roots, or delete {both} to make them again",
            root.display(),
            settings
        )));
    }
    Ok(())
}

/// `root`'s [`MADE_FILE`]: the settings its tiles were made with (its first
/// line) and the imagery root they were made for; none without the file.
fn read_made(root: &Path) -> Result<Option<(String, Option<PathBuf>)>> {
    let path = root.join(MADE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SynthError::Io { path, source }),
    };
    let mut lines = text.lines();
    let settings = lines.next().unwrap_or_default().to_string();
    let imagery = lines
        .find_map(|l| l.strip_prefix("imagery="))
        .map(PathBuf::from);
    Ok(Some((settings, imagery)))
}

/// Whether the imagery root `iroot` holds anything but hidden entries and
/// the way to the synthetic masks (`MASK_DIR` when both roots are one, the
/// first directory of the path to a mask root inside it).
fn populated(iroot: &Path, mroot: &Path) -> bool {
    let masks = match mroot.strip_prefix(iroot) {
        Ok(rel) if rel.as_os_str().is_empty() => Some(std::ffi::OsString::from(MASK_DIR)),
        Ok(rel) => rel.components().next().map(|c| c.as_os_str().to_owned()),
        Err(_) => None,
    };
    std::fs::read_dir(iroot).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            !name.to_string_lossy().starts_with('.') && Some(&name) != masks.as_ref()
        })
    })
}

/// For the crate's tests: 4 synthetic 32-pixel tile pairs written under
/// `root`, and the dataset that selects them (no bad tile allowed).
#[cfg(test)]
pub(crate) fn small_dataset(root: &Path) -> sca_spec::Dataset {
    synth(root, 4, 1, 32, 15).unwrap();
    sca_spec::Dataset {
        imagery: ".".into(),
        masks: ".".into(),
        imagery_regex: "AnalyticMS_SR".into(),
        mask_regex: "_binary$".into(),
        zoom: 15,
        tile_size: 32,
        train_fraction: 0.5,
        split: sca_spec::Split::Random,
        block_zoom: 14,
        max_bad_fraction: 0.0,
        synthetic: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                // The generators' lock and staging, not the dataset.
                if p.file_name().unwrap().to_string_lossy().starts_with('.') {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((
                        p.strip_prefix(root).unwrap().to_path_buf(),
                        std::fs::read(&p).unwrap(),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    fn synthetic(imagery: &str, masks: &str) -> Dataset {
        Dataset {
            imagery: imagery.into(),
            masks: masks.into(),
            imagery_regex: "AnalyticMS_SR".into(),
            mask_regex: "_binary$".into(),
            zoom: 15,
            tile_size: 16,
            train_fraction: 0.7,
            split: sca_spec::Split::Spatial,
            block_zoom: 14,
            max_bad_fraction: 0.0,
            synthetic: Some(sca_spec::Synthetic { tiles: 12, seed: 4 }),
        }
    }

    /// Launches started together all find the dataset whole: the one that
    /// makes it holds the others until it is in place.
    #[test]
    fn concurrent_callers_never_see_a_half_made_dataset() {
        let (want, tmp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        synth(want.path(), 12, 4, 16, 15).unwrap();
        let want = read_tree(want.path());
        let dataset = synthetic("data", "./data");
        let made: Vec<bool> = std::thread::scope(|s| {
            let callers: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        let made = ensure_synthetic(&dataset, tmp.path()).unwrap();
                        assert_eq!(read_tree(&tmp.path().join("data")), want);
                        made.is_some()
                    })
                })
                .collect();
            callers.into_iter().map(|c| c.join().unwrap()).collect()
        });
        assert_eq!(made.iter().filter(|m| **m).count(), 1, "{made:?}");
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["data"], "nothing is left beside the root");
    }

    /// What a killed generator left (a staging directory, masks without
    /// imagery) is made again whole: with separate roots, one root, and a
    /// mask root inside the imagery root.
    #[test]
    fn a_killed_generators_remains_are_made_again() {
        let want = tempfile::tempdir().unwrap();
        synth(want.path(), 12, 4, 16, 15).unwrap();
        let want = read_tree(want.path());
        for (imagery, masks) in [
            ("imagery", "masks"),
            ("data", "data"),
            ("data", "data/masks"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path();
            let partial = root.join(masks).join(MASK_DIR).join("15/1");
            std::fs::create_dir_all(&partial).unwrap();
            std::fs::write(partial.join("2.tif"), b"").unwrap();
            std::fs::create_dir_all(root.join(imagery).join(STAGE_IMAGERY).join("x")).unwrap();
            let made = ensure_synthetic(&synthetic(imagery, masks), root)
                .unwrap()
                .unwrap_or_else(|| panic!("{imagery}, {masks}: made again"));
            let root = root.canonicalize().unwrap();
            assert_eq!(made.imagery_dir, root.join(imagery).join(IMAGERY_DIR));
            assert_eq!(made.mask_dir, root.join(masks).join(MASK_DIR));
            let mut got = read_tree(&made.imagery_dir.parent().unwrap().join(IMAGERY_DIR));
            got.extend(read_tree(&made.mask_dir));
            let mut expect: Vec<_> = want
                .iter()
                .map(|(p, b)| (p.iter().skip(1).collect::<PathBuf>(), b.clone()))
                .collect();
            expect.sort();
            got.sort();
            assert_eq!(got, expect, "{imagery}, {masks}");
            // Nothing but the dataset and the lock is left.
            let mut all = read_tree(&root.join(imagery));
            if !masks.starts_with(imagery) {
                all.extend(read_tree(&root.join(masks)));
            }
            assert_eq!(all.len(), want.len(), "{imagery}, {masks}");
            for dir in [root.join(imagery), root.join(masks)] {
                let mut hidden: Vec<_> = std::fs::read_dir(&dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .filter(|n| n.to_string_lossy().starts_with('.'))
                    .collect();
                hidden.sort();
                assert_eq!(hidden, [MADE_FILE, LOCK_FILE], "{}", dir.display());
            }
            // Made: the next call finds it, and leaves it.
            assert!(ensure_synthetic(&synthetic(imagery, masks), &root)
                .unwrap()
                .is_none());
        }
    }

    /// Tiles made with other settings (another sweep point's `tiles`, an
    /// earlier seed or tile size) are refused, naming both and the roots,
    /// never trained on; the same settings find them made.
    #[test]
    fn tiles_made_with_other_settings_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let made = synthetic("imagery", "masks");
        assert!(ensure_synthetic(&made, tmp.path()).unwrap().is_some());
        assert!(ensure_synthetic(&made, tmp.path()).unwrap().is_none());
        let more = Dataset {
            synthetic: Some(sca_spec::Synthetic { tiles: 20, seed: 4 }),
            ..made.clone()
        };
        let larger = Dataset {
            tile_size: 32,
            ..made.clone()
        };
        for other in [more, larger] {
            let e = ensure_synthetic(&other, tmp.path())
                .unwrap_err()
                .to_string();
            for part in [
                "made with tiles=12 seed=4 tile_size=16 zoom=15",
                "dataset.imagery",
                "masks",
            ] {
                assert!(e.contains(part), "{part} not in: {e}");
            }
        }
        // Another imagery root beside the same masks root, with other
        // settings, would replace the first dataset's masks: refused.
        let beside = Dataset {
            imagery: "imagery2".into(),
            synthetic: Some(sca_spec::Synthetic { tiles: 20, seed: 4 }),
            ..made.clone()
        };
        let e = ensure_synthetic(&beside, tmp.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("masks holds the masks of the synthetic dataset in")
                && e.contains("made with tiles=12")
                && e.contains("its own dataset.masks"),
            "{e}"
        );
        assert!(ensure_synthetic(&made, tmp.path()).unwrap().is_none());
        // Masks left by this imagery root's own generator, killed before
        // its imagery moved in, are made again with the settings asked for.
        let killed = tempfile::tempdir().unwrap();
        assert!(ensure_synthetic(&made, killed.path()).unwrap().is_some());
        std::fs::remove_dir_all(killed.path().join("imagery").join(IMAGERY_DIR)).unwrap();
        let other = Dataset {
            synthetic: Some(sca_spec::Synthetic { tiles: 20, seed: 4 }),
            ..made.clone()
        };
        assert_eq!(
            ensure_synthetic(&other, killed.path())
                .unwrap()
                .unwrap()
                .tiles,
            20
        );
        // A root made before the settings were kept is taken as it is.
        for root in ["imagery", "masks"] {
            std::fs::remove_file(tmp.path().join(root).join(MADE_FILE)).unwrap();
        }
        let more = Dataset {
            synthetic: Some(sca_spec::Synthetic { tiles: 20, seed: 4 }),
            ..made
        };
        assert!(ensure_synthetic(&more, tmp.path()).unwrap().is_none());
    }

    /// One directory named two ways is one root (the masks are not moved
    /// into the imagery root the imagery then cannot replace).
    #[test]
    fn one_root_spelled_two_ways_is_one_root() {
        let tmp = tempfile::tempdir().unwrap();
        let name = tmp
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let aliased = format!("../{name}/data");
        let made = ensure_synthetic(&synthetic("data", &aliased), tmp.path())
            .unwrap()
            .unwrap();
        assert_eq!(made.imagery_dir.parent(), made.mask_dir.parent());
        let want = tempfile::tempdir().unwrap();
        synth(want.path(), 12, 4, 16, 15).unwrap();
        assert_eq!(read_tree(&tmp.path().join("data")), read_tree(want.path()));
    }

    #[test]
    fn deterministic_per_seed() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let sa = synth(a.path(), 5, 42, 32, 15).unwrap();
        synth(b.path(), 5, 42, 32, 15).unwrap();
        synth(c.path(), 5, 43, 32, 15).unwrap();
        let (ta, tb, tc) = (
            read_tree(a.path()),
            read_tree(b.path()),
            read_tree(c.path()),
        );
        assert_eq!(ta.len(), 10);
        assert_eq!(ta, tb);
        assert_eq!(
            ta.iter().map(|t| &t.0).collect::<Vec<_>>(),
            tc.iter().map(|t| &t.0).collect::<Vec<_>>()
        );
        assert_ne!(ta, tc);
        assert_eq!(sa.x_range, (5470, 5472));
        assert_eq!(sa.y_range, (12720, 12721));
        assert!(a
            .path()
            .join(IMAGERY_DIR)
            .join("15/5470/12720.tif")
            .is_file());
        assert!(a.path().join(MASK_DIR).join("15/5471/12721.tif").is_file());
        assert!(!a.path().join(MASK_DIR).join("15/5472/12721.tif").exists());
    }

    #[test]
    fn content_is_learnable_and_continuous() {
        let n = 64;
        let w = World::new(7, n as u32);
        let mut snow = 0usize;
        let mut correct = 0usize;
        let total = 16 * n * n;
        for t in 0..16u32 {
            let (img, mask) = w.tile(5470 + t % 4, 12720 + t / 4, n);
            for p in 0..n * n {
                let (b, nir) = (img[p * 4] as f32, img[p * 4 + 3] as f32);
                // A per-pixel rule: bright blue means snow.
                let pred = b > 3000.0;
                correct += (pred == (mask[p] == 1)) as usize;
                snow += mask[p] as usize;
                if mask[p] == 1 && b > 6000.0 {
                    assert!(nir < b, "snow NIR below visible");
                }
            }
        }
        let frac = snow as f64 / total as f64;
        assert!((0.15..0.85).contains(&frac), "snow fraction {frac}");
        assert!(correct as f64 / total as f64 > 0.9);
        // Continuity: the last column of a tile is close to the first of its right neighbour.
        let (a, _) = w.tile(5470, 12720, n);
        let (b, _) = w.tile(5471, 12720, n);
        let mut diff = 0f64;
        for y in 0..n {
            diff += (a[(y * n + n - 1) * 4] as f64 - b[(y * n) * 4] as f64).abs();
        }
        assert!(diff / (n as f64) < 1500.0, "mean jump {}", diff / n as f64);
    }

    #[test]
    fn decodes_back() {
        let d = tempfile::tempdir().unwrap();
        synth(d.path(), 1, 1, 64, 12).unwrap();
        let p = d.path().join(IMAGERY_DIR).join("12/683/1590.tif");
        let t = crate::decode::decode_imagery(&std::fs::read(&p).unwrap(), "k", 64, 4).unwrap();
        assert_eq!(t.bands, 4);
        assert!(t.data.iter().all(|v| (0.0..=1.0).contains(v)));
        let m = d.path().join(MASK_DIR).join("12/683/1590.tif");
        crate::decode::decode_mask(&std::fs::read(&m).unwrap(), "m", 64).unwrap();
    }
}
