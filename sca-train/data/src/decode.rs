//! Tile decoding with the `tiff` and `image` crates, and the checks every tile
//! must pass: size equal to `tile_size`, enough bands for the channels, finite
//! values, a complete (non-truncated) file.
//!
//! The format is detected from the file's magic bytes, not its extension.
//! Imagery sample types and their scaling to reflectance:
//! * `u16` (and `i16`): surface reflectance x 10000, divided by 10000;
//! * `f32` / `f64`: already reflectance, used as is (NaN/inf rejected);
//! * `u8` (8-bit PNG/TIFF): divided by 255.
//!
//! Both chunky (pixel-interleaved) and planar (band-separate) TIFFs, strips or
//! tiles, uncompressed, LZW or Deflate, are read. Masks may be `u8`, `u16` or
//! `f32`; the first band is used and must be binary: 0 no snow, 1 snow (255
//! too in a `u8` mask, the 0/255 convention). Any other value (a snow-depth
//! raster that was never thresholded, a class map) makes the tile bad rather
//! than silently labelled.
//!
//! A TIFF's `GDAL_NODATA` tag, and a grey or RGB PNG's tRNS colour (how
//! GDAL writes a PNG's nodata; the alpha channel the decoder makes of it is
//! no band of the file), are honoured: an imagery pixel whose every band
//! holds it, or a mask pixel that holds it, makes the tile bad (left out like
//! the original's tiling left tiles with nodata out), never trained on as
//! reflectance or as a label. A mask's nodata of 0 or 1 is a label's value
//! too (`-a_nodata 0` on a 0/1 mask) and is read as that label.
//!
//! A transparent pixel (alpha 0) of an alpha band the channels do not read
//! also makes the tile bad: a TIFF's `ExtraSamples` alpha (`gdalwarp
//! -dstalpha`) or a PNG's alpha channel, where the band holds only 0 and
//! full scale (a spectral band tagged alpha is read as a band). So does a
//! pixel a TIFF's GDAL internal mask marks nodata ([`internal_mask`]).
//!
//! Tiles are untrusted input: the size and band count a file claims are
//! checked before anything is decoded, and the decoders' memory is limited
//! to what a `tile_size` square of those bands needs ([`max_tile_bytes`]), so
//! a hostile or corrupt file (65535 bands, 100000 x 100000 pixels, a
//! decompression bomb) is a bad tile with a message, never an OOM or a panic.

use std::io::Cursor;

use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::Tag;

use super::error::{TileError, TileErrorKind};

mod internal_mask;

/// Bands a tile may have when the channels use no higher band: more is
/// refused before decoding (SamplesPerPixel is a u16 a file can set to 65535).
pub const MAX_BANDS: usize = 64;

/// Bytes per sample of the widest sample type read (`f64`).
const MAX_SAMPLE_BYTES: u64 = 8;

/// Room for a file's headers, tags and compression overhead.
const MARGIN_BYTES: u64 = 1 << 20;

/// The most bands a tile may have when the channels use band `need_bands`.
fn max_bands(need_bands: usize) -> usize {
    MAX_BANDS.max(need_bands)
}

/// The largest tile file (and decoded sample buffer) accepted for
/// `tile_size` and channels that use band `need_bands`: a tile of
/// [`MAX_BANDS`] (or `need_bands`) `f64` bands, uncompressed, plus a margin.
pub fn max_tile_bytes(tile_size: u32, need_bands: usize) -> u64 {
    let side = u64::from(tile_size);
    side * side * max_bands(need_bands) as u64 * MAX_SAMPLE_BYTES + MARGIN_BYTES
}

/// A decoded imagery tile: reflectance, band-planar (`[band][y][x]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RawTile {
    pub width: u32,
    pub height: u32,
    pub bands: usize,
    pub data: Vec<f32>,
}

impl RawTile {
    /// Plane of 0-based `band`.
    pub fn band(&self, band: usize) -> &[f32] {
        let n = (self.width * self.height) as usize;
        &self.data[band * n..(band + 1) * n]
    }
}

enum Format {
    Tiff,
    Png,
}

fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(b"II*\0")
        || bytes.starts_with(b"MM\0*")
        || bytes.starts_with(b"II+\0")
        || bytes.starts_with(b"MM\0+")
    {
        Some(Format::Tiff)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else {
        None
    }
}

/// Samples of one image before scaling, pixel-interleaved or planar.
struct Samples {
    width: u32,
    height: u32,
    bands: usize,
    planar: bool,
    data: DecodingResult,
    /// The `GDAL_NODATA` value, when the file names one.
    nodata: Option<f64>,
    /// The band (0-based) that is an alpha channel, when one is: a TIFF's
    /// `ExtraSamples` alpha (`gdalwarp -dstalpha`), a PNG's.
    alpha: Option<usize>,
    /// `nodata` as the file writes it, where the decoder scales samples (a
    /// 1-bit PNG's tRNS of 1 reads as 255): whether it is a mask's label.
    nodata_written: Option<f64>,
    /// The first pixel a TIFF's GDAL internal mask marks nodata.
    masked: Option<usize>,
}

impl Samples {
    /// A pixel an alpha band or an internal mask marks nodata makes the
    /// tile bad; `need` bands are read by the channels.
    fn check_masks(&self, key: &str, need: usize) -> Result<(), TileError> {
        let at = |p: usize| (p as u32 % self.width, p as u32 / self.width);
        if let Some(p) = self.first_transparent(need) {
            let (x, y) = at(p);
            return Err(TileError::new(key, TileErrorKind::Transparent { x, y }));
        }
        if let Some(p) = self.masked {
            let (x, y) = at(p);
            return Err(TileError::new(key, TileErrorKind::Masked { x, y }));
        }
        Ok(())
    }

    /// The first pixel whose alpha band, where it is not one the channels
    /// read (`need` bands), is 0: transparent, nodata. Where the channels
    /// read it, it is taken for a spectral band, as before (a 4-band
    /// B, G, R, NIR tile written with RGB photometry has its NIR tagged
    /// alpha).
    ///
    /// Only a band that holds nothing but 0 and full scale (255, 65535,
    /// 1.0: what `gdalwarp -dstalpha` writes) is taken for an alpha band: a
    /// spectral band tagged alpha (a clipped NIR of 0 over water) is not.
    fn first_transparent(&self, need: usize) -> Option<usize> {
        let a = self.alpha.filter(|&a| a >= need)?;
        let npix = (self.width * self.height) as usize;
        let (bands, planar) = (self.bands, self.planar);
        let at = |p: usize| if planar { a * npix + p } else { p * bands + a };
        fn first_zero<T: Copy + PartialEq>(
            v: &[T],
            npix: usize,
            at: impl Fn(usize) -> usize,
            (zero, full): (T, T),
        ) -> Option<usize> {
            let binary = (0..npix).all(|p| v[at(p)] == zero || v[at(p)] == full);
            binary
                .then(|| (0..npix).find(|&p| v[at(p)] == zero))
                .flatten()
        }
        match &self.data {
            DecodingResult::U8(v) => first_zero(v, npix, at, (0, u8::MAX)),
            DecodingResult::U16(v) => first_zero(v, npix, at, (0, u16::MAX)),
            DecodingResult::I16(v) => first_zero(v, npix, at, (0, i16::MAX)),
            DecodingResult::F32(v) => first_zero(v, npix, at, (0.0, 1.0)),
            DecodingResult::F64(v) => first_zero(v, npix, at, (0.0, 1.0)),
            _ => None,
        }
    }
}

/// A TIFF's `GDAL_NODATA` (an ASCII number: `0`, `255`, `-9999`, `nan`).
fn gdal_nodata(dec: &mut Decoder<Cursor<&[u8]>>, key: &str) -> Result<Option<f64>, TileError> {
    let bad = |reason: String| TileError::new(key, TileErrorKind::Decode(reason));
    let Some(value) = dec
        .find_tag(Tag::GdalNodata)
        .map_err(|e| bad(e.to_string()))?
    else {
        return Ok(None);
    };
    let text = value.into_string().map_err(|e| bad(e.to_string()))?;
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    text.parse::<f64>()
        .map(Some)
        .map_err(|_| bad(format!("its GDAL_NODATA tag {text:?} is not a number")))
}

/// Whether `x` is the nodata value `nd` (NaN matching NaN).
fn is_nodata(x: f64, nd: f64) -> bool {
    x == nd || (x.is_nan() && nd.is_nan())
}

/// The first pixel (index) whose every band holds `nd`.
fn first_nodata_pixel<T: Copy + Into<f64>>(
    src: &[T],
    npix: usize,
    bands: usize,
    planar: bool,
    nd: f64,
) -> Option<usize> {
    let at = |p: usize, b: usize| {
        if planar {
            src[b * npix + p]
        } else {
            src[p * bands + b]
        }
    };
    (0..npix).find(|&p| (0..bands).all(|b| is_nodata(at(p, b).into(), nd)))
}

fn check_size(key: &str, w: u32, h: u32, tile_size: u32) -> Result<(), TileError> {
    if w != tile_size || h != tile_size {
        return Err(TileError::new(
            key,
            TileErrorKind::WrongSize {
                width: w,
                height: h,
                expected: tile_size,
            },
        ));
    }
    Ok(())
}

fn check_bands(key: &str, have: usize, need: usize) -> Result<(), TileError> {
    if have < need {
        return Err(TileError::new(
            key,
            TileErrorKind::WrongBandCount { have, need },
        ));
    }
    let max = max_bands(need);
    if have > max {
        return Err(TileError::new(
            key,
            TileErrorKind::TooManyBands { have, max },
        ));
    }
    Ok(())
}

fn read_tiff(bytes: &[u8], key: &str, tile_size: u32, need: usize) -> Result<Samples, TileError> {
    let derr = |e: tiff::TiffError| TileError::new(key, TileErrorKind::Decode(e.to_string()));
    // The default limits (1 MiB per tag value) hold while the directory is read.
    let mut dec = Decoder::new(Cursor::new(bytes)).map_err(derr)?;
    let (w, h) = dec.dimensions().map_err(derr)?;
    check_size(key, w, h, tile_size)?;
    let bands = dec
        .find_tag_unsigned::<u16>(Tag::SamplesPerPixel)
        .map_err(derr)?
        .unwrap_or(1) as usize;
    check_bands(key, bands, need)?;
    let bits = dec
        .find_tag_unsigned_vec::<u16>(Tag::BitsPerSample)
        .map_err(derr)?
        .and_then(|v| v.first().copied())
        .unwrap_or(1);
    // Packed samples (a 1-bit mask, `NBITS=1`; 12-bit imagery) come back
    // from the decoder as packed bytes, which would read as a short image.
    if bits % 8 != 0 {
        return Err(sample_type(
            key,
            &format!("of {bits} bits (packed): convert it to whole bytes, e.g. `gdal_translate -ot Byte -co NBITS=8` for a mask, `-ot UInt16` for imagery"),
        ));
    }
    // ExtraSamples 1 and 2: associated and unassociated alpha, the last
    // samples of a pixel.
    let extra = dec
        .find_tag_unsigned_vec::<u16>(Tag::ExtraSamples)
        .map_err(derr)?
        .unwrap_or_default();
    let alpha = extra
        .iter()
        .position(|&e| e == 1 || e == 2)
        .filter(|_| extra.len() <= bands)
        .map(|i| bands - extra.len() + i);
    // What the image needs, so a file cannot make the decoder allocate more.
    let image_bytes = u64::from(w) * u64::from(h) * bands as u64 * u64::from(bits.div_ceil(8));
    let mut limits = Limits::default();
    limits.decoding_buffer_size = usize::try_from(image_bytes + MARGIN_BYTES).unwrap_or(usize::MAX);
    limits.intermediate_buffer_size = limits.decoding_buffer_size;
    let mut dec = dec.with_limits(limits);
    let planar = dec
        .find_tag_unsigned::<u16>(Tag::PlanarConfiguration)
        .map_err(derr)?
        .unwrap_or(1)
        == 2;
    let nodata = gdal_nodata(&mut dec, key)?;
    let mut data = DecodingResult::U8(Vec::new());
    dec.read_image_to_buffer(&mut data).map_err(derr)?;
    let masked = internal_mask::first_masked(bytes, &mut dec, key, (w, h))?;
    // Compared in the samples' own type, as GDAL does: `-9999.9` names the
    // f32 nearest it, which no f64 comparison with -9999.9 would match.
    let nodata = match &data {
        DecodingResult::F32(_) => nodata.map(|nd| f64::from(nd as f32)),
        _ => nodata,
    };
    let samples = match &data {
        DecodingResult::U8(v) => v.len(),
        DecodingResult::U16(v) => v.len(),
        DecodingResult::I16(v) => v.len(),
        DecodingResult::F32(v) => v.len(),
        DecodingResult::F64(v) => v.len(),
        DecodingResult::U32(_) => return Err(sample_type(key, "u32")),
        DecodingResult::U64(_) => return Err(sample_type(key, "u64")),
        DecodingResult::I8(_) => return Err(sample_type(key, "i8")),
        DecodingResult::I32(_) => return Err(sample_type(key, "i32")),
        DecodingResult::I64(_) => return Err(sample_type(key, "i64")),
        _ => return Err(sample_type(key, "other")),
    };
    let expect = (w * h) as usize * bands;
    if samples < expect {
        return Err(TileError::new(
            key,
            TileErrorKind::Decode(format!("{samples} samples decoded, expected {expect}")),
        ));
    }
    Ok(Samples {
        width: w,
        height: h,
        bands,
        planar,
        data,
        nodata,
        nodata_written: nodata,
        alpha,
        masked,
    })
}

fn sample_type(key: &str, t: &str) -> TileError {
    TileError::new(key, TileErrorKind::SampleType(t.into()))
}

/// The width and height in a PNG's header (IHDR, which must come first).
fn png_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let ihdr = bytes.get(8..24)?;
    if &ihdr[4..8] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&ihdr[8..12]), be(&ihdr[12..16])))
}

fn read_png(bytes: &[u8], key: &str, tile_size: u32, need: usize) -> Result<Samples, TileError> {
    use image::DynamicImage as D;
    let derr = |e: image::ImageError| TileError::new(key, TileErrorKind::Decode(e.to_string()));
    // The size is checked before anything is decompressed.
    let (w, h) = png_dimensions(bytes)
        .ok_or_else(|| TileError::new(key, TileErrorKind::Decode("no PNG header (IHDR)".into())))?;
    check_size(key, w, h, tile_size)?;
    // At most four 32-bit channels; text chunks count towards it too.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(tile_size);
    limits.max_image_height = Some(tile_size);
    limits.max_alloc = Some(u64::from(w) * u64::from(h) * 16 + MARGIN_BYTES);
    let dec =
        image::codecs::png::PngDecoder::with_limits(Cursor::new(bytes), limits).map_err(derr)?;
    let img = D::from_decoder(dec).map_err(derr)?;
    let decoded_bands = img.color().channel_count() as usize;
    // GDAL writes a grey or RGB PNG's nodata as a tRNS colour, which the
    // decoder turns into an alpha channel. That channel is no band of the
    // file: it is dropped, and the colour is the nodata value, as a TIFF's
    // GDAL_NODATA is (`-a_nodata 0` on a 0/1 mask is a label there too).
    let (nodata, nodata_written) = match bytes.get(25) {
        Some(0 | 2) => png_trns(bytes, key)?.unzip(),
        _ => (None, None),
    };
    let trns_alpha = nodata.is_some() && img.color().has_alpha();
    let bands = decoded_bands - usize::from(trns_alpha);
    check_bands(key, bands, need)?;
    // A real alpha channel (IHDR colour type 4 or 6).
    let alpha = matches!(bytes.get(25), Some(4 | 6)).then(|| bands - 1);
    let mut data = match img {
        D::ImageLuma8(b) => DecodingResult::U8(b.into_raw()),
        D::ImageLumaA8(b) => DecodingResult::U8(b.into_raw()),
        D::ImageRgb8(b) => DecodingResult::U8(b.into_raw()),
        D::ImageRgba8(b) => DecodingResult::U8(b.into_raw()),
        D::ImageLuma16(b) => DecodingResult::U16(b.into_raw()),
        D::ImageLumaA16(b) => DecodingResult::U16(b.into_raw()),
        D::ImageRgb16(b) => DecodingResult::U16(b.into_raw()),
        D::ImageRgba16(b) => DecodingResult::U16(b.into_raw()),
        D::ImageRgb32F(b) => DecodingResult::F32(b.into_raw()),
        D::ImageRgba32F(b) => DecodingResult::F32(b.into_raw()),
        other => return Err(sample_type(key, &format!("{:?}", other.color()))),
    };
    match &mut data {
        DecodingResult::U8(v) if trns_alpha => drop_last_band(v, decoded_bands),
        DecodingResult::U16(v) if trns_alpha => drop_last_band(v, decoded_bands),
        _ => {}
    }
    Ok(Samples {
        width: w,
        height: h,
        bands,
        planar: false,
        data,
        nodata,
        nodata_written,
        alpha,
        masked: None,
    })
}

/// Remove the last of every `bands` interleaved samples, in place.
fn drop_last_band<T: Copy>(v: &mut Vec<T>, bands: usize) {
    let keep = bands - 1;
    for p in 0..v.len() / bands {
        for b in 0..keep {
            v[p * keep + b] = v[p * bands + b];
        }
    }
    v.truncate(v.len() / bands * keep);
}

/// A grey or RGB PNG's tRNS colour as one nodata value: GDAL writes each
/// band's nodata there, one value for all (an RGB colour of different
/// values is a per-band nodata, which is refused). As the decoder reads
/// it, and as written.
fn png_trns(bytes: &[u8], key: &str) -> Result<Option<(f64, f64)>, TileError> {
    let bad = |reason: String| TileError::new(key, TileErrorKind::Decode(reason));
    let reader = png::Decoder::new(Cursor::new(bytes))
        .read_info()
        .map_err(|e| bad(e.to_string()))?;
    let info = reader.info();
    let Some(trns) = info.trns.as_deref() else {
        return Ok(None);
    };
    // The codec keeps a 16-bit image's samples as two bytes, big-endian,
    // others as one, in the file's bit depth, which the decoder scales to
    // 8 bits (a 1-bit sample's 1 is 255).
    let (values, scale): (Vec<u16>, u16) = match info.bit_depth {
        png::BitDepth::Sixteen => (
            trns.chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect(),
            1,
        ),
        depth => (
            trns.iter().map(|&v| u16::from(v)).collect(),
            255 / ((1u16 << depth as u8) - 1),
        ),
    };
    match values.as_slice() {
        [v] | [v, ..] if values.iter().all(|x| x == v) => {
            Ok(Some((f64::from(*v * scale), f64::from(*v))))
        }
        _ => Err(bad(format!(
            "its tRNS nodata colour {values:?} differs between bands: write one nodata value for every band (`gdal_translate -a_nodata`)"
        ))),
    }
}

fn read_any(bytes: &[u8], key: &str, tile_size: u32, need: usize) -> Result<Samples, TileError> {
    match sniff(bytes) {
        Some(Format::Tiff) => read_tiff(bytes, key, tile_size, need),
        Some(Format::Png) => read_png(bytes, key, tile_size, need),
        None if bytes.is_empty() => Err(TileError::new(
            key,
            TileErrorKind::Decode("empty file".into()),
        )),
        None => Err(TileError::new(key, TileErrorKind::UnknownFormat)),
    }
}

/// Copy bands `0..nb` of `src` into band-planar `dst`, converting each sample.
fn deinterleave<T: Copy>(
    src: &[T],
    npix: usize,
    bands: usize,
    planar: bool,
    nb: usize,
    dst: &mut [f32],
    f: impl Fn(T) -> f32,
) {
    if planar {
        for (d, s) in dst[..nb * npix].iter_mut().zip(&src[..nb * npix]) {
            *d = f(*s);
        }
    } else {
        for b in 0..nb {
            let plane = &mut dst[b * npix..(b + 1) * npix];
            for (p, d) in plane.iter_mut().enumerate() {
                *d = f(src[p * bands + b]);
            }
        }
    }
}

/// Decode an imagery tile to reflectance, checking its size (`tile_size`
/// square), band count (at least `need_bands`) and values (finite). `key`
/// names the file in errors.
pub fn decode_imagery(
    bytes: &[u8],
    key: &str,
    tile_size: u32,
    need_bands: usize,
) -> Result<RawTile, TileError> {
    let s = read_any(bytes, key, tile_size, need_bands)?;
    let npix = (s.width * s.height) as usize;
    let nb = s.bands;
    s.check_masks(key, need_bands)?;
    if let Some(nd) = s.nodata {
        let first = match &s.data {
            DecodingResult::U8(v) => first_nodata_pixel(v, npix, nb, s.planar, nd),
            DecodingResult::U16(v) => first_nodata_pixel(v, npix, nb, s.planar, nd),
            DecodingResult::I16(v) => first_nodata_pixel(v, npix, nb, s.planar, nd),
            DecodingResult::F32(v) => first_nodata_pixel(v, npix, nb, s.planar, nd),
            DecodingResult::F64(v) => first_nodata_pixel(v, npix, nb, s.planar, nd),
            _ => None,
        };
        if let Some(p) = first {
            return Err(nodata_at(key, p, s.width, nd));
        }
    }
    let mut data = vec![0f32; nb * npix];
    match &s.data {
        DecodingResult::U8(v) => {
            deinterleave(v, npix, nb, s.planar, nb, &mut data, |x| x as f32 / 255.0)
        }
        DecodingResult::U16(v) => {
            deinterleave(v, npix, nb, s.planar, nb, &mut data, |x| x as f32 * 1e-4)
        }
        DecodingResult::I16(v) => {
            deinterleave(v, npix, nb, s.planar, nb, &mut data, |x| x as f32 * 1e-4)
        }
        DecodingResult::F32(v) => deinterleave(v, npix, nb, s.planar, nb, &mut data, |x| x),
        DecodingResult::F64(v) => deinterleave(v, npix, nb, s.planar, nb, &mut data, |x| x as f32),
        _ => return Err(sample_type(key, "other")),
    }
    if matches!(s.data, DecodingResult::F32(_) | DecodingResult::F64(_)) {
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            let (band, p) = (i / npix, i % npix);
            return Err(TileError::new(
                key,
                TileErrorKind::NonFinite {
                    band: band + 1,
                    x: p as u32 % s.width,
                    y: p as u32 / s.width,
                    value: data[i],
                },
            ));
        }
    }
    Ok(RawTile {
        width: s.width,
        height: s.height,
        bands: nb,
        data,
    })
}

fn nodata_at(key: &str, p: usize, width: u32, value: f64) -> TileError {
    TileError::new(
        key,
        TileErrorKind::NoData {
            x: p as u32 % width,
            y: p as u32 / width,
            value,
        },
    )
}

/// Decode a mask tile to 0/1 per pixel (first band; see the module docs for
/// the values a mask may hold), checking its size.
pub fn decode_mask(bytes: &[u8], key: &str, tile_size: u32) -> Result<Vec<u8>, TileError> {
    let s = read_any(bytes, key, tile_size, 1)?;
    let npix = (s.width * s.height) as usize;
    s.check_masks(key, 1)?;
    // A nodata value that is also a label (`gdal_translate -a_nodata 0` on a
    // 0/1 mask, a common habit) says nothing the label does not: those
    // pixels are that label, not a reason to drop every tile.
    let nodata = s
        .nodata
        .filter(|_| s.nodata_written.is_some_and(|nd| nd != 0.0 && nd != 1.0));
    let (bands, planar, width) = (s.bands, s.planar, s.width);
    // First band of pixel `p`, as 0/1, or why it is not a label.
    let label = |src: &dyn Fn(usize) -> f64, snow: &[f64]| -> Result<Vec<u8>, TileError> {
        (0..npix)
            .map(|p| {
                let x = src(if planar { p } else { p * bands });
                if nodata.is_some_and(|nd| is_nodata(x, nd)) {
                    Err(nodata_at(key, p, width, x))
                } else if x == 0.0 {
                    Ok(0)
                } else if snow.contains(&x) {
                    Ok(1)
                } else {
                    let (x0, y) = (p as u32 % width, p as u32 / width);
                    Err(TileError::new(
                        key,
                        TileErrorKind::MaskValue { x: x0, y, value: x },
                    ))
                }
            })
            .collect()
    };
    match &s.data {
        DecodingResult::U8(v) => label(&|i| f64::from(v[i]), &[1.0, 255.0]),
        DecodingResult::U16(v) => label(&|i| f64::from(v[i]), &[1.0]),
        DecodingResult::F32(v) => label(&|i| f64::from(v[i]), &[1.0]),
        DecodingResult::I16(_) => Err(sample_type(key, "i16 (mask)")),
        _ => Err(sample_type(key, "mask must be u8, u16 or f32")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{encode_tiff_u16, encode_tiff_u8};

    fn tiff_f32(w: u32, h: u32, data: &[f32]) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new(&mut buf).unwrap();
        enc.write_image::<tiff::encoder::colortype::Gray32Float>(w, h, data)
            .unwrap();
        buf.into_inner()
    }

    /// A 1-band TIFF of `data` with a `GDAL_NODATA` tag.
    fn tiff_with_nodata<C>(w: u32, h: u32, data: &[C::Inner], nodata: &str) -> Vec<u8>
    where
        C: tiff::encoder::colortype::ColorType,
        [C::Inner]: tiff::encoder::TiffValue,
    {
        let mut buf = Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new(&mut buf).unwrap();
        let mut image = enc.new_image::<C>(w, h).unwrap();
        image.encoder().write_tag(Tag::GdalNodata, nodata).unwrap();
        image.write_data(data).unwrap();
        buf.into_inner()
    }

    /// A depth raster, a class map or nodata is never read as snow.
    #[test]
    fn a_mask_value_that_is_not_a_label_makes_the_tile_bad() {
        use tiff::encoder::colortype::{Gray16, Gray32Float, Gray8};
        let kind = |r: Result<Vec<u8>, TileError>| r.unwrap_err().kind;
        let mut m = vec![0u8; 32 * 32];
        m[3 * 32 + 5] = 2;
        assert!(matches!(
            kind(decode_mask(&encode_tiff_u8(32, 32, &m).unwrap(), "m", 32)),
            TileErrorKind::MaskValue { x: 5, y: 3, value } if value == 2.0
        ));
        // 255 is snow, unless the file names it nodata.
        m[3 * 32 + 5] = 255;
        assert_eq!(
            decode_mask(&encode_tiff_u8(32, 32, &m).unwrap(), "m", 32).unwrap()[3 * 32 + 5],
            1
        );
        let e =
            decode_mask(&tiff_with_nodata::<Gray8>(32, 32, &m, "255"), "m.tif", 32).unwrap_err();
        assert!(
            matches!(e.kind, TileErrorKind::NoData { x: 5, y: 3, .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("m.tif") && e.to_string().contains("nodata"),
            "{e}"
        );
        // A u16 depth in centimetres, a float depth in metres, a NaN.
        let cm: Vec<u16> = (0..32 * 32).map(|i| (i % 40) as u16).collect();
        let e =
            decode_mask(&tiff_with_nodata::<Gray16>(32, 32, &cm, "65535"), "d", 32).unwrap_err();
        assert!(
            matches!(e.kind, TileErrorKind::MaskValue { value, .. } if value == 2.0),
            "{e}"
        );
        assert!(e.to_string().contains("threshold"), "{e}");
        let mut depth = vec![0f32; 32 * 32];
        depth[7] = 0.05;
        assert!(matches!(
            kind(decode_mask(&tiff_f32(32, 32, &depth), "m", 32)),
            TileErrorKind::MaskValue { x: 7, y: 0, .. }
        ));
        depth[7] = f32::NAN;
        assert!(matches!(
            kind(decode_mask(
                &tiff_with_nodata::<Gray32Float>(32, 32, &depth, "nan"),
                "m",
                32
            )),
            TileErrorKind::NoData { x: 7, y: 0, .. }
        ));
        depth[7] = 1.0;
        assert_eq!(
            decode_mask(&tiff_f32(32, 32, &depth), "m", 32).unwrap()[7],
            1
        );
        // A nodata that is a label's value (`-a_nodata 0`) is that label.
        let m01: Vec<u8> = (0..32 * 32).map(|i| (i % 2) as u8).collect();
        assert_eq!(
            decode_mask(&tiff_with_nodata::<Gray8>(32, 32, &m01, "0"), "m", 32).unwrap(),
            m01
        );
        // A tag that is not a number is a bad file, not a silently ignored one.
        let e = decode_mask(
            &tiff_with_nodata::<Gray8>(32, 32, &[0; 1024], "none"),
            "m",
            32,
        )
        .unwrap_err();
        assert!(e.to_string().contains("GDAL_NODATA"), "{e}");
    }

    /// A float tile's nodata is the f32 its tag's number rounds to (GDAL's
    /// reading): `-9999.9` is never trained on as reflectance, nor refused
    /// as a mask value its tag already names.
    #[test]
    fn float_nodata_is_matched_as_f32() {
        use tiff::encoder::colortype::Gray32Float;
        let mut d = vec![0.25f32; 32 * 32];
        d[7] = -9999.9;
        let bytes = tiff_with_nodata::<Gray32Float>(32, 32, &d, "-9999.9");
        let e = decode_imagery(&bytes, "i.tif", 32, 1).unwrap_err();
        assert!(
            matches!(e.kind, TileErrorKind::NoData { x: 7, y: 0, .. }),
            "{e}"
        );
        let mut m = vec![0.0f32; 32 * 32];
        m[7] = -9999.9;
        let e = decode_mask(
            &tiff_with_nodata::<Gray32Float>(32, 32, &m, "-9999.9"),
            "m",
            32,
        )
        .unwrap_err();
        assert!(
            matches!(e.kind, TileErrorKind::NoData { x: 7, y: 0, .. }),
            "{e}"
        );
    }

    /// A square `w` TIFF of four u16 bands and an unassociated alpha
    /// (`gdalwarp -dstalpha`'s), of the pixel-interleaved samples `px`.
    fn with_alpha(w: u32, px: &[u16]) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new(&mut buf).unwrap();
        let mut img = enc.new_image::<crate::synth::MultiU16<4>>(w, w).unwrap();
        img.extra_samples(&[tiff::tags::ExtraSamples::UnassociatedAlpha])
            .unwrap();
        img.write_data(px).unwrap();
        buf.into_inner()
    }

    /// A transparent pixel of an alpha band the channels do not read
    /// (`gdalwarp -dstalpha`'s fifth band, a PNG's alpha) is nodata: the
    /// tile is bad. An alpha band the channels read is a band, as before.
    #[test]
    fn transparent_pixels_are_nodata() {
        use tiff::encoder::colortype::RGBA8;
        // Four bands of reflectance and an alpha, pixel 5 transparent.
        let (w, n) = (32u32, 32 * 32);
        let mut px = vec![1200u16; n * 5];
        for p in 0..n {
            px[p * 5 + 4] = if p == 5 { 0 } else { 65535 };
        }
        let five = with_alpha(w, &px);
        let e = decode_imagery(&five, "i.tif", 32, 4).unwrap_err();
        assert!(
            matches!(e.kind, TileErrorKind::Transparent { x: 5, y: 0 }),
            "{e}"
        );
        assert!(e.to_string().contains("transparent"), "{e}");
        // Channels that read the alpha band read it as a band.
        assert!(decode_imagery(&five, "i.tif", 32, 5).is_ok());

        // A PNG mask with alpha (LA): a transparent pixel is nodata too.
        let mut la = image::GrayAlphaImage::new(32, 32);
        for (i, p) in la.pixels_mut().enumerate() {
            *p = image::LumaA([0, if i == 40 { 0 } else { 255 }]);
        }
        let mut png = Vec::new();
        la.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let e = decode_mask(&png, "m.png", 32).unwrap_err();
        assert!(
            matches!(e.kind, TileErrorKind::Transparent { x: 8, y: 1 }),
            "{e}"
        );
        // An opaque RGBA tile decodes.
        let opaque = tiff_with_nodata::<RGBA8>(32, 32, &[9; 32 * 32 * 4], "-1");
        assert!(decode_imagery(&opaque, "i", 32, 3).is_ok());
        // A band tagged alpha that is not 0 and full scale is spectral (a
        // NIR of 0 over water in an RGB-photometry tile).
        for p in 0..n {
            px[p * 5 + 4] = if p == 5 { 0 } else { 3000 };
        }
        assert!(decode_imagery(&with_alpha(w, &px), "i.tif", 32, 4).is_ok());
        // A grey PNG mask whose 0 GDAL wrote as tRNS nodata (the decoder
        // gives it an alpha channel): 0 is a label.
        let mut gray = image::GrayImage::new(32, 32);
        gray.put_pixel(3, 0, image::Luma([1]));
        let trns = grey_png_with_trns(32, png::BitDepth::Eight, 0, gray.as_raw());
        let m = decode_mask(&trns, "m.png", 32).unwrap();
        assert_eq!((m[0], m[3]), (0, 1));
    }

    /// A `side` x `side` grey PNG of `depth` whose tRNS names `nodata`, its
    /// rows (packed, for depths below 8) `data`.
    fn grey_png_with_trns(side: u32, depth: png::BitDepth, nodata: u8, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, side, side);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(depth);
        enc.set_trns(vec![0u8, nodata]);
        enc.write_header().unwrap().write_image_data(data).unwrap();
        out
    }

    /// GDAL's PNG nodata, a tRNS colour (`testdata/make-nodata-fixtures.sh`):
    /// the alpha channel the decoder makes of it is no band, and a pixel of
    /// that colour is nodata, as GDAL_NODATA's is in a TIFF.
    #[test]
    fn png_trns_nodata_is_nodata_and_no_band() {
        let rgb = include_bytes!("../testdata/rgb_nodata.png");
        let e = decode_imagery(rgb, "rgb.png", 36, 3).unwrap_err();
        assert!(
            matches!(e.kind, TileErrorKind::NoData { x: 13, y: 14, value } if value == 0.0),
            "{e}"
        );
        // Once read as a fourth band (255 where opaque).
        let e = decode_imagery(rgb, "rgb.png", 36, 4).unwrap_err();
        assert!(
            matches!(e.kind, TileErrorKind::WrongBandCount { have: 3, need: 4 }),
            "{e}"
        );
        // 255 on a 0/1 label is nodata, not snow.
        let label = include_bytes!("../testdata/label_nodata.png");
        let e = decode_mask(label, "label.png", 36).unwrap_err();
        assert!(
            matches!(e.kind, TileErrorKind::NoData { x: 13, y: 14, value } if value == 255.0),
            "{e}"
        );
        // A 1-bit grey PNG's tRNS of 1 is 255 once decoded: every pixel set.
        let mut rows = [0u8; 8];
        rows[2] = 0b0010_0000;
        let one_bit = grey_png_with_trns(8, png::BitDepth::One, 1, &rows);
        let e = decode_imagery(&one_bit, "b.png", 8, 1).unwrap_err();
        assert!(
            matches!(e.kind, TileErrorKind::NoData { x: 2, y: 2, value } if value == 255.0),
            "{e}"
        );
        // As a mask, that 1 is a label: snow, as written.
        let m = decode_mask(&one_bit, "b.png", 8).unwrap();
        assert_eq!((m[2 * 8 + 2], m[0]), (1, 0));
    }

    /// Packed samples (a 1-bit mask) are refused saying how to convert
    /// them, not as a truncated file.
    #[test]
    fn packed_samples_are_refused_with_the_conversion() {
        // A 32x32 1-bit image: a strip of 4 bytes per row.
        let mut out = Cursor::new(Vec::new());
        let mut t = tiff::encoder::TiffEncoder::new(&mut out).unwrap();
        let mut dir = t.image_directory().unwrap();
        dir.write_tag(Tag::ImageWidth, 32u32).unwrap();
        dir.write_tag(Tag::ImageLength, 32u32).unwrap();
        dir.write_tag(Tag::BitsPerSample, 1u16).unwrap();
        dir.write_tag(Tag::SamplesPerPixel, 1u16).unwrap();
        dir.write_tag(Tag::PhotometricInterpretation, 1u16).unwrap();
        dir.write_tag(Tag::RowsPerStrip, 32u32).unwrap();
        let offset = dir.write_data(&[0u8; 4 * 32][..]).unwrap();
        dir.write_tag(Tag::StripOffsets, offset as u32).unwrap();
        dir.write_tag(Tag::StripByteCounts, 128u32).unwrap();
        dir.finish().unwrap();
        let bytes = out.into_inner();
        let e = decode_mask(&bytes, "m.tif", 32).unwrap_err();
        assert!(matches!(e.kind, TileErrorKind::SampleType(_)), "{e}");
        assert!(
            e.to_string().contains("1 bits") && e.to_string().contains("NBITS=8"),
            "{e}"
        );
    }

    /// Imagery nodata (Planet's 0 in every band) is a bad tile; a 0 in one
    /// band only is a dark pixel, and kept.
    #[test]
    fn imagery_nodata_pixels_make_the_tile_bad() {
        use tiff::encoder::colortype::RGBA16;
        let mut px = vec![1200u16; 32 * 32 * 4];
        px[10 * 4] = 0; // one band of pixel 10
        let ok = tiff_with_nodata::<RGBA16>(32, 32, &px, "0");
        assert_eq!(decode_imagery(&ok, "i", 32, 4).unwrap().band(0)[10], 0.0);
        px[(32 + 2) * 4..(32 + 3) * 4].fill(0); // every band of pixel (2, 1)
        let e = decode_imagery(
            &tiff_with_nodata::<RGBA16>(32, 32, &px, "0"),
            "i.tif",
            32,
            4,
        )
        .unwrap_err();
        assert!(
            matches!(e.kind, TileErrorKind::NoData { x: 2, y: 1, .. }),
            "{e}"
        );
        // Without the tag, zeros are reflectance, as before.
        assert!(decode_imagery(&encode_tiff_u16(32, 32, 4, &px).unwrap(), "i", 32, 4).is_ok());
    }

    #[test]
    fn decodes_u16_multiband_as_reflectance() {
        let (w, bands) = (32u32, 4usize);
        let interleaved: Vec<u16> = (0..(w * w) as usize * bands)
            .map(|i| (i % 10000) as u16)
            .collect();
        let bytes = encode_tiff_u16(w, w, bands, &interleaved).unwrap();
        let t = decode_imagery(&bytes, "k", w, 4).unwrap();
        assert_eq!((t.width, t.height, t.bands), (w, w, 4));
        // pixel 5, band 2 (0-based) = interleaved[5 * 4 + 2]
        let npix = (w * w) as usize;
        assert!((t.data[2 * npix + 5] - interleaved[5 * 4 + 2] as f32 / 1e4).abs() < 1e-7);
    }

    #[test]
    fn checks_size_bands_nan_and_truncation() {
        let bytes = encode_tiff_u16(32, 32, 4, &vec![1; 32 * 32 * 4]).unwrap();
        let e = decode_imagery(&bytes, "a.tif", 64, 4).unwrap_err();
        assert!(matches!(e.kind, TileErrorKind::WrongSize { width: 32, .. }));
        assert!(e.to_string().starts_with("a.tif: is 32x32, expected 64x64"));

        let e = decode_imagery(&bytes, "a.tif", 32, 5).unwrap_err();
        assert_eq!(e.kind, TileErrorKind::WrongBandCount { have: 4, need: 5 });

        let mut d = vec![0.5f32; 32 * 32];
        d[33] = f32::NAN;
        let e = decode_imagery(&tiff_f32(32, 32, &d), "n.tif", 32, 1).unwrap_err();
        assert!(matches!(
            e.kind,
            TileErrorKind::NonFinite {
                band: 1,
                x: 1,
                y: 1,
                ..
            }
        ));

        let e = decode_imagery(&bytes[..bytes.len() / 2], "t.tif", 32, 4).unwrap_err();
        assert!(matches!(e.kind, TileErrorKind::Decode(_)), "{e}");
        let e = decode_imagery(b"hello", "x.tif", 32, 4).unwrap_err();
        assert_eq!(e.kind, TileErrorKind::UnknownFormat);
    }

    #[test]
    fn masks_are_binary_and_png_works() {
        let m: Vec<u8> = (0..32 * 32).map(|i| [0, 1, 255][i % 3]).collect();
        let bytes = encode_tiff_u8(32, 32, &m).unwrap();
        let out = decode_mask(&bytes, "m", 32).unwrap();
        assert_eq!(out, m.iter().map(|&v| (v > 0) as u8).collect::<Vec<_>>());

        let img = image::GrayImage::from_raw(32, 32, m.clone()).unwrap();
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(decode_mask(&png, "m.png", 32).unwrap(), out);
        let rgba = image::RgbaImage::from_pixel(32, 32, image::Rgba([255, 0, 0, 255]));
        let mut png = Vec::new();
        rgba.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let t = decode_imagery(&png, "i.png", 32, 4).unwrap();
        assert_eq!(t.bands, 4);
        assert_eq!(t.band(0)[0], 1.0);
        assert_eq!(t.band(1)[0], 0.0);
    }
}
