//! A TIFF's GDAL internal mask: nodata given as a mask beside the image
//! (`GDAL_TIFF_INTERNAL_MASK=YES`, `gdal_translate -mask`, rio-cogeo's
//! `--add-mask`) rather than as a `GDAL_NODATA` value. It is a directory
//! after the image's, flagged a mask (`NewSubfileType` bit 4, not bit 1, a
//! reduced-resolution one's), of the image's size, one band of 1 bit (GDAL's
//! default) or 8 bits; 0 marks a nodata pixel.
//!
//! The `tiff` crate reads the directory but will not decode the
//! transparency-mask photometric. A copy of the file with that one tag value
//! set to grey (`BlackIsZero`) decodes as what the mask is, a grey image;
//! the copy is made only for a file that has a mask.

use std::io::Cursor;

use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::ByteOrder;
use tiff::tags::Tag;

use crate::error::{TileError, TileErrorKind};

/// Directories looked at after the image's: GDAL writes the mask right
/// after it, overviews and their masks after that.
const MAX_DIRECTORIES: usize = 16;

/// `NewSubfileType` bits: a reduced-resolution image (an overview), a mask.
const REDUCED: u32 = 1;
const MASK: u32 = 4;

/// `PhotometricInterpretation` values.
const BLACK_IS_ZERO: u16 = 1;
const TRANSPARENCY_MASK: u16 = 4;

/// The first pixel (index) the file's internal mask marks nodata; `None`
/// when it has no mask or the mask keeps every pixel. `dec` has read the
/// image (`width` x `height`), the file's first directory.
pub(super) fn first_masked(
    bytes: &[u8],
    dec: &mut Decoder<Cursor<&[u8]>>,
    key: &str,
    (width, height): (u32, u32),
) -> Result<Option<usize>, TileError> {
    let bad = |reason: String| TileError::new(key, TileErrorKind::Decode(reason));
    let derr = |e: tiff::TiffError| bad(format!("reading its directories: {e}"));
    // The chain is walked directory by directory, not image by image: a
    // directory of a kind the decoder will not make an image of (an
    // old-JPEG thumbnail) neither ends the walk before a mask after it nor
    // hides a mask that is such a directory itself.
    let Some(first) = dec.ifd_pointer() else {
        return Ok(None);
    };
    let mut next = dec.read_directory(first).map_err(derr)?.next();
    let mut index = 0;
    let found = loop {
        let Some(at) = next else {
            return Ok(None);
        };
        if index == MAX_DIRECTORIES {
            return Ok(None);
        }
        let dir = dec.read_directory(at).map_err(derr)?;
        index += 1;
        let kind = dec
            .read_directory_tags(&dir)
            .find_tag_unsigned::<u32>(Tag::NewSubfileType)
            .map_err(derr)?
            .unwrap_or(0);
        if kind & MASK != 0 && kind & REDUCED == 0 {
            break index;
        }
        next = dir.next();
    };
    dec.seek_to_image(found).map_err(|e| match e {
        tiff::TiffError::UnsupportedError(why) => bad(format!(
            "its internal mask is of a kind this reader does not support ({why}); \
             rewrite it as GDAL does, one band of 1 or 8 bits"
        )),
        e => derr(e),
    })?;
    let dims = dec.dimensions().map_err(derr)?;
    if dims != (width, height) {
        return Err(bad(format!(
            "its internal mask is {} x {} pixels, the image {width} x {height}",
            dims.0, dims.1
        )));
    }
    let samples = dec
        .find_tag_unsigned::<u16>(Tag::SamplesPerPixel)
        .map_err(derr)?
        .unwrap_or(1);
    let bits = dec
        .find_tag_unsigned::<u16>(Tag::BitsPerSample)
        .map_err(derr)?
        .unwrap_or(1);
    if samples != 1 || !matches!(bits, 1 | 8) {
        return Err(bad(format!(
            "its internal mask has {samples} band(s) of {bits} bits; a GDAL mask is one band of 1 or 8 bits"
        )));
    }
    let ifd = dec
        .ifd_pointer()
        .ok_or_else(|| bad("its internal mask's directory has no offset".into()))?;
    let order = dec.byte_order();
    let mut grey = bytes.to_vec();
    as_grey(&mut grey, ifd.0, order).map_err(|why| bad(format!("its internal mask {why}")))?;

    let mut dec = Decoder::new(Cursor::new(&grey[..])).map_err(derr)?;
    dec.seek_to_image(found).map_err(derr)?;
    let row_bytes = if bits == 1 {
        width.div_ceil(8) as usize
    } else {
        width as usize
    };
    let mask_bytes = row_bytes * height as usize;
    let mut limits = Limits::default();
    limits.decoding_buffer_size = mask_bytes + (1 << 20);
    limits.intermediate_buffer_size = limits.decoding_buffer_size;
    let mut dec = dec.with_limits(limits);
    let DecodingResult::U8(mask) = dec.read_image().map_err(derr)? else {
        return Err(bad(
            "its internal mask is not of whole or single bits".into()
        ));
    };
    if mask.len() < mask_bytes {
        return Err(bad(format!(
            "its internal mask decoded to {} bytes, expected {mask_bytes}",
            mask.len()
        )));
    }
    let npix = width as usize * height as usize;
    let w = width as usize;
    Ok((0..npix).find(|&p| {
        let (x, y) = (p % w, p / w);
        if bits == 1 {
            // FillOrder 1 (GDAL's): the first pixel is the byte's high bit.
            mask[y * row_bytes + x / 8] & (0x80 >> (x % 8)) == 0
        } else {
            mask[y * row_bytes + x] == 0
        }
    }))
}

/// Set the `PhotometricInterpretation` of the directory at `ifd` in `file`
/// from transparency mask to grey, in place.
fn as_grey(file: &mut [u8], ifd: u64, order: ByteOrder) -> Result<(), String> {
    let big = file.get(2..4).is_some_and(|m| {
        matches!(order, ByteOrder::LittleEndian) && m == [43, 0]
            || matches!(order, ByteOrder::BigEndian) && m == [0, 43]
    });
    let read = |b: &[u8]| -> u64 {
        let mut x = [0u8; 8];
        match order {
            ByteOrder::LittleEndian => {
                x[..b.len()].copy_from_slice(b);
                u64::from_le_bytes(x)
            }
            ByteOrder::BigEndian => {
                x[8 - b.len()..].copy_from_slice(b);
                u64::from_be_bytes(x)
            }
        }
    };
    let short = |v: u16| match order {
        ByteOrder::LittleEndian => v.to_le_bytes(),
        ByteOrder::BigEndian => v.to_be_bytes(),
    };
    let (count_len, entry_len, value_at) = if big { (8, 20, 12) } else { (2, 12, 8) };
    let past_end = "directory is past the file's end";
    let start = usize::try_from(ifd).map_err(|_| past_end)?;
    let count = file
        .get(start..start.saturating_add(count_len))
        .map(read)
        .ok_or(past_end)?;
    let count = usize::try_from(count).map_err(|_| past_end)?;
    for i in 0..count {
        let at = start + count_len + i * entry_len;
        let entry = file
            .get_mut(at..at + entry_len)
            .ok_or("directory is cut short")?;
        let entry: &mut [u8] = entry;
        if read(&entry[..2]) != u64::from(Tag::PhotometricInterpretation.to_u16()) {
            continue;
        }
        // Type 3, SHORT: the value sits in the entry.
        if read(&entry[2..4]) != 3 {
            return Err("has a PhotometricInterpretation that is not a SHORT".into());
        }
        return match read(&entry[value_at..value_at + 2]) as u16 {
            BLACK_IS_ZERO => Ok(()),
            TRANSPARENCY_MASK => {
                entry[value_at..value_at + 2].copy_from_slice(&short(BLACK_IS_ZERO));
                Ok(())
            }
            other => Err(format!(
                "has PhotometricInterpretation {other}, not a mask's (4)"
            )),
        };
    }
    Err("has no PhotometricInterpretation".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode_imagery, decode_mask};

    /// Bytes of one of [`tiff_with_mask`]'s directories (10 entries).
    const IFD_LEN: u32 = 2 + 12 * 10 + 4;

    /// A little-endian classic TIFF, uncompressed, one strip per image:
    /// `image` (u8 samples, `bands` per pixel), then, when given, a mask
    /// directory: (bits, NewSubfileType, PhotometricInterpretation, data).
    fn tiff_with_mask(
        dims: (u32, u32),
        bands: u16,
        image: &[u8],
        mask: Option<(u16, u32, u16, &[u8])>,
    ) -> Vec<u8> {
        tiff_with_directories(dims, bands, image, mask.as_slice())
    }

    /// [`tiff_with_mask`] with any number of directories after the image's.
    fn tiff_with_directories(
        (w, h): (u32, u32),
        bands: u16,
        image: &[u8],
        after: &[(u16, u32, u16, &[u8])],
    ) -> Vec<u8> {
        // (tag, type 3 SHORT or 4 LONG, value), sorted by tag.
        let entries =
            |kind: u32, bits: u16, samples: u16, photometric: u16, at: u32, len: usize| {
                [
                    (254, 4, kind),
                    (256, 4, w),
                    (257, 4, h),
                    (258, 3, u32::from(bits)),
                    (259, 3, 1),
                    (262, 3, u32::from(photometric)),
                    (273, 4, at),
                    (277, 3, u32::from(samples)),
                    (278, 4, h),
                    (279, 4, len as u32),
                ]
            };
        fn ifd(out: &mut Vec<u8>, entries: &[(u16, u16, u32)], next: u32) {
            out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
            for &(tag, ty, value) in entries {
                out.extend_from_slice(&tag.to_le_bytes());
                out.extend_from_slice(&ty.to_le_bytes());
                out.extend_from_slice(&1u32.to_le_bytes());
                if ty == 3 {
                    out.extend_from_slice(&(value as u16).to_le_bytes());
                    out.extend_from_slice(&[0, 0]);
                } else {
                    out.extend_from_slice(&value.to_le_bytes());
                }
            }
            out.extend_from_slice(&next.to_le_bytes());
        }
        let mut out = b"II*\0".to_vec();
        out.extend_from_slice(&8u32.to_le_bytes());
        let image_at = 8 + IFD_LEN;
        let mut next = image_at + image.len() as u32;
        let image_entries = entries(0, 8, bands, BLACK_IS_ZERO, image_at, image.len());
        let link = |next: u32, more: bool| if more { next } else { 0 };
        ifd(&mut out, &image_entries, link(next, !after.is_empty()));
        out.extend_from_slice(image);
        for (i, &(bits, kind, photometric, data)) in after.iter().enumerate() {
            let at = next + IFD_LEN;
            next = at + data.len() as u32;
            let entries = entries(kind, bits, 1, photometric, at, data.len());
            ifd(&mut out, &entries, link(next, i + 1 < after.len()));
            out.extend_from_slice(data);
        }
        out
    }

    fn first(file: &[u8], dims: (u32, u32)) -> Result<Option<usize>, TileError> {
        let mut dec = Decoder::new(Cursor::new(file)).unwrap();
        assert_eq!(dec.dimensions().unwrap(), dims);
        first_masked(file, &mut dec, "t.tif", dims)
    }

    #[test]
    fn a_one_bit_mask_is_read_high_bit_first_with_rows_padded_to_bytes() {
        // 12 x 2: two bytes a row, the last 4 bits padding.
        let image = vec![7u8; 24];
        let mut mask = vec![0xff, 0xf0, 0xff, 0xf0];
        let file = tiff_with_mask((12, 2), 1, &image, Some((1, MASK, 4, &mask)));
        assert_eq!(
            first(&file, (12, 2)).unwrap(),
            None,
            "padding is not a pixel"
        );
        // Pixel (10, 1): row 1's second byte, the third bit from the top.
        mask[3] = 0xd0;
        let file = tiff_with_mask((12, 2), 1, &image, Some((1, MASK, 4, &mask)));
        assert_eq!(first(&file, (12, 2)).unwrap(), Some(12 + 10));
        // A mask written as grey (photometric 1) reads alike.
        let file = tiff_with_mask((12, 2), 1, &image, Some((1, MASK, 1, &mask)));
        assert_eq!(first(&file, (12, 2)).unwrap(), Some(12 + 10));
    }

    #[test]
    fn an_eight_bit_mask_marks_zero_as_nodata() {
        let image = vec![7u8; 16];
        let mut mask = vec![255u8; 16];
        assert_eq!(
            first(
                &tiff_with_mask((4, 4), 1, &image, Some((8, MASK, 4, &mask))),
                (4, 4)
            )
            .unwrap(),
            None
        );
        mask[9] = 0;
        assert_eq!(
            first(
                &tiff_with_mask((4, 4), 1, &image, Some((8, MASK, 4, &mask))),
                (4, 4)
            )
            .unwrap(),
            Some(9)
        );
    }

    #[test]
    fn only_a_full_resolution_mask_counts() {
        let image = vec![7u8; 16];
        let mask = vec![0u8; 16];
        // An overview (bit 1), an overview's mask (bits 1 and 4), no mask.
        for kind in [REDUCED, REDUCED | MASK] {
            let file = tiff_with_mask((4, 4), 1, &image, Some((8, kind, 1, &mask)));
            assert_eq!(first(&file, (4, 4)).unwrap(), None, "{kind}");
        }
        let file = tiff_with_mask((4, 4), 1, &image, None);
        assert_eq!(first(&file, (4, 4)).unwrap(), None);
    }

    #[test]
    fn a_directory_that_is_no_mask_is_a_decode_error_naming_why() {
        let image = vec![7u8; 16];
        let mask = vec![0u8; 16];
        let file = tiff_with_mask((4, 4), 1, &image, Some((8, MASK, 2, &mask)));
        let e = first(&file, (4, 4)).unwrap_err().to_string();
        assert!(
            e.contains("t.tif") && e.contains("PhotometricInterpretation 2"),
            "{e}"
        );
        let file = tiff_with_mask((4, 4), 1, &image, Some((16, MASK, 4, &[0; 32])));
        let e = first(&file, (4, 4)).unwrap_err().to_string();
        assert!(e.contains("1 band(s) of 16 bits"), "{e}");
        // A later directory of a kind the decoder does not support (here
        // an unknown photometric interpretation): no mask, the image as
        // before. A mask that is broken (no ImageWidth) is a broken file, and
        // so is any directory cut short.
        let second = 8 + IFD_LEN as usize + image.len();
        let entry = |i: usize| second + 2 + 12 * i;
        let mut file = tiff_with_mask((4, 4), 1, &image, Some((8, REDUCED, 1, &mask)));
        let photometric = entry(5);
        assert_eq!(&file[photometric..photometric + 2], &262u16.to_le_bytes());
        file[photometric + 8..photometric + 10].copy_from_slice(&77u16.to_le_bytes());
        assert_eq!(first(&file, (4, 4)).unwrap(), None);
        let mut file = tiff_with_mask((4, 4), 1, &image, Some((8, MASK, 1, &mask)));
        let width = entry(1);
        assert_eq!(&file[width..width + 2], &256u16.to_le_bytes());
        file[width..width + 2].copy_from_slice(&255u16.to_le_bytes());
        assert!(first(&file, (4, 4)).is_err());
        let mut file = tiff_with_mask((4, 4), 1, &image, Some((8, REDUCED, 1, &mask)));
        file.truncate(entry(3));
        assert!(first(&file, (4, 4)).is_err());
        // A mask after such a directory is still found, and a mask the
        // decoder does not support is an error, not "no mask".
        let thumbnail = (8, REDUCED, 77, &mask[..]);
        let masked = (8, MASK, 4, &mask[..]);
        let file = tiff_with_directories((4, 4), 1, &image, &[thumbnail, masked]);
        assert_eq!(first(&file, (4, 4)).unwrap(), Some(0));
        let file = tiff_with_directories((4, 4), 1, &image, &[(8, MASK, 77, &mask[..])]);
        let e = first(&file, (4, 4)).unwrap_err().to_string();
        assert!(e.contains("t.tif") && e.contains("does not support"), "{e}");
        // Cut short: the mask's data is gone.
        let mut file = tiff_with_mask((4, 4), 1, &image, Some((8, MASK, 4, &mask)));
        file.truncate(file.len() - 8);
        assert!(first(&file, (4, 4)).is_err());
    }

    /// Files real GDAL wrote (`testdata/make-nodata-fixtures.sh`): strips and
    /// 16 x 16 tiles of a 36-pixel-wide image (rows of 1-bit samples padded
    /// to bytes, a partial last tile column), Deflate.
    #[test]
    fn gdal_written_masks_are_read_where_gdal_put_them() {
        let tiles: [(&str, &[u8]); 4] = [
            (
                "imagery_masked.tif",
                include_bytes!("../../testdata/imagery_masked.tif"),
            ),
            (
                "imagery_masked_tiled.tif",
                include_bytes!("../../testdata/imagery_masked_tiled.tif"),
            ),
            (
                "label_masked.tif",
                include_bytes!("../../testdata/label_masked.tif"),
            ),
            (
                "imagery_masked_valid.tif",
                include_bytes!("../../testdata/imagery_masked_valid.tif"),
            ),
        ];
        for (name, file) in tiles {
            let e = if name.starts_with("label") {
                decode_mask(file, name, 36).map(|_| ())
            } else {
                decode_imagery(file, name, 36, 4).map(|_| ())
            };
            if name.ends_with("_valid.tif") {
                assert!(e.is_ok(), "{name}: {e:?}");
            } else {
                let e = e.unwrap_err();
                assert!(
                    matches!(e.kind, TileErrorKind::Masked { x: 13, y: 14 }),
                    "{name}: {e}"
                );
            }
        }
        // The pixels GDAL kept are still read as they are.
        let tile = decode_imagery(tiles[3].1, "valid", 36, 4).unwrap();
        assert_eq!(tile.band(3)[0], 400.0 * 1e-4);
    }

    /// The decoders leave a tile with a masked-out pixel out, imagery and
    /// labels alike, and keep one whose mask keeps every pixel.
    #[test]
    fn a_masked_pixel_makes_the_tile_bad() {
        let (imagery, labels) = (vec![7u8; 4 * 16], vec![1u8; 16]);
        let mut mask = vec![0xf0, 0xf0, 0xf0, 0xf0];
        let tile = |data: &[u8], bands, mask: &[u8]| {
            tiff_with_mask((4, 4), bands, data, Some((1, MASK, 4, mask)))
        };
        assert!(decode_imagery(&tile(&imagery, 4, &mask), "i.tif", 4, 4).is_ok());
        assert!(decode_mask(&tile(&labels, 1, &mask), "m.tif", 4).is_ok());
        mask[2] = 0xb0;
        for e in [
            decode_imagery(&tile(&imagery, 4, &mask), "i.tif", 4, 4).unwrap_err(),
            decode_mask(&tile(&labels, 1, &mask), "m.tif", 4).unwrap_err(),
        ] {
            assert!(
                matches!(e.kind, TileErrorKind::Masked { x: 1, y: 2 }),
                "{e}"
            );
            assert!(e.to_string().contains("internal mask"), "{e}");
        }
    }
}
