//! Per-channel normalisation `(x - mean) / std` with the experiment's channel
//! groups: each group selects 1-based bands, groups are concatenated in
//! order, and the output is planar CHW `f32`.

use super::decode::RawTile;
use super::error::{DataError, Result};
use sca_spec::Channel;

/// The experiment's channel groups flattened to one entry per output channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalizer {
    /// 0-based source band of each output channel.
    bands: Vec<usize>,
    mean: Vec<f32>,
    /// `1 / std` of each output channel.
    inv_std: Vec<f32>,
}

impl Normalizer {
    /// Check and flatten the channel groups (bands >= 1, `mean` and `std` as
    /// long as `bands`, every `std` > 0 and finite).
    pub fn new(channels: &[Channel]) -> Result<Self> {
        if channels.is_empty() {
            return Err(DataError::Channels("no channel groups".into()));
        }
        let mut n = Normalizer {
            bands: Vec::new(),
            mean: Vec::new(),
            inv_std: Vec::new(),
        };
        for (g, c) in channels.iter().enumerate() {
            if c.bands.is_empty() || c.mean.len() != c.bands.len() || c.std.len() != c.bands.len() {
                return Err(DataError::Channels(format!(
                    "group {} has {} bands, {} means and {} stds (must be equal and non-zero)",
                    g + 1,
                    c.bands.len(),
                    c.mean.len(),
                    c.std.len()
                )));
            }
            for ((&b, &m), &s) in c.bands.iter().zip(&c.mean).zip(&c.std) {
                if b == 0 {
                    return Err(DataError::Channels(format!(
                        "group {}: band indices are 1-based, got 0",
                        g + 1
                    )));
                }
                if !(s > 0.0 && s.is_finite() && m.is_finite()) {
                    return Err(DataError::Channels(format!(
                        "group {}: band {b} needs a finite mean and std > 0 (mean {m}, std {s})",
                        g + 1
                    )));
                }
                n.bands.push(b as usize - 1);
                n.mean.push(m as f32);
                n.inv_std.push((1.0 / s) as f32);
            }
        }
        Ok(n)
    }

    /// Number of output channels.
    pub fn channels(&self) -> usize {
        self.bands.len()
    }

    /// Highest 1-based band index referenced: tiles need at least this many bands.
    pub fn required_bands(&self) -> usize {
        self.bands.iter().max().map_or(0, |b| b + 1)
    }

    /// Normalise `tile` into `out` (planar CHW, `channels() * w * h` values).
    pub fn apply_into(&self, tile: &RawTile, out: &mut [f32]) {
        let npix = (tile.width * tile.height) as usize;
        assert!(
            tile.bands >= self.required_bands(),
            "tile has too few bands"
        );
        assert_eq!(out.len(), self.channels() * npix);
        for (c, plane) in out.chunks_exact_mut(npix).enumerate() {
            let (m, k) = (self.mean[c], self.inv_std[c]);
            for (o, &x) in plane.iter_mut().zip(tile.band(self.bands[c])) {
                *o = (x - m) * k;
            }
        }
    }

    /// Normalise `tile` to a new planar CHW buffer.
    pub fn apply(&self, tile: &RawTile) -> Vec<f32> {
        let mut out = vec![0f32; self.channels() * (tile.width * tile.height) as usize];
        self.apply_into(tile, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(bands: &[u16], mean: &[f64], std: &[f64]) -> Channel {
        Channel {
            bands: bands.to_vec(),
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    #[test]
    fn selects_concatenates_and_scales() {
        // 2x1 tile with 4 bands: band b has values (b, 10 + b).
        let tile = RawTile {
            width: 2,
            height: 1,
            bands: 4,
            data: vec![1., 11., 2., 12., 3., 13., 4., 14.],
        };
        let n = Normalizer::new(&[
            ch(&[3, 1], &[1.0, 0.0], &[2.0, 1.0]),
            ch(&[4], &[4.0], &[0.5]),
        ])
        .unwrap();
        assert_eq!(n.channels(), 3);
        assert_eq!(n.required_bands(), 4);
        assert_eq!(n.apply(&tile), vec![1.0, 6.0, 1.0, 11.0, 0.0, 20.0]);
    }

    #[test]
    fn rejects_bad_groups() {
        assert!(Normalizer::new(&[ch(&[1, 2], &[0.0], &[1.0, 1.0])]).is_err());
        assert!(Normalizer::new(&[ch(&[0], &[0.0], &[1.0])]).is_err());
        assert!(Normalizer::new(&[ch(&[1], &[0.0], &[0.0])]).is_err());
        assert!(Normalizer::new(&[]).is_err());
    }
}
