//! Seeded augmentation of training tiles: a horizontal and (independently) a
//! vertical flip, each with probability `flip`, then a rotation by 90, 180 or
//! 270 degrees (uniformly) with probability `rotate`. The draw depends only on
//! `(seed, epoch, tile index)`, and the same transform is applied to every
//! image plane and to the mask.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use sca_spec::Augmentation;

const TAG_AUGMENT: u64 = 0x4155_474d_0000_0001;

/// One tile's transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AugmentParams {
    /// Mirror left-right.
    pub hflip: bool,
    /// Mirror top-bottom.
    pub vflip: bool,
    /// Quarter turns clockwise after the flips (0..=3).
    pub rot90: u8,
}

/// The transform of tile `tile` (its index in the [`super::TileIndex`]) in `epoch`.
pub fn augment_params(aug: &Augmentation, seed: u64, epoch: u32, tile: usize) -> AugmentParams {
    let mut rng = ChaCha8Rng::seed_from_u64(crate::seed::mix_seed(
        seed,
        TAG_AUGMENT,
        epoch as u64,
        tile as u64,
    ));
    let p = |x: f64| x.clamp(0.0, 1.0);
    let hflip = rng.gen_bool(p(aug.flip));
    let vflip = rng.gen_bool(p(aug.flip));
    let rotate = rng.gen_bool(p(aug.rotate));
    let turns = rng.gen_range(1..=3u8);
    AugmentParams {
        hflip,
        vflip,
        rot90: if rotate { turns } else { 0 },
    }
}

impl AugmentParams {
    /// Whether the transform leaves tiles unchanged.
    pub fn is_identity(&self) -> bool {
        !self.hflip && !self.vflip && self.rot90 == 0
    }

    /// For each destination pixel of an `n`x`n` plane, its source pixel.
    fn source_map(&self, n: usize) -> Vec<u32> {
        let mut map = Vec::with_capacity(n * n);
        for y in 0..n {
            for x in 0..n {
                // Undo the rotation (clockwise quarter turns): a clockwise turn
                // maps source (sy, sx) to (sx, n-1-sy).
                let (mut sy, mut sx) = (y, x);
                for _ in 0..self.rot90 {
                    (sy, sx) = (n - 1 - sx, sy);
                }
                // Then undo the flips.
                if self.vflip {
                    sy = n - 1 - sy;
                }
                if self.hflip {
                    sx = n - 1 - sx;
                }
                map.push((sy * n + sx) as u32);
            }
        }
        map
    }

    /// Transform every `n`x`n` plane of `planes` (CHW or HW) in place.
    pub fn apply(&self, planes: &mut [f32], n: usize) {
        if self.is_identity() {
            return;
        }
        let map = self.source_map(n);
        self.apply_with(&map, planes, n);
    }

    /// Transform image planes and the mask with one shared index map.
    pub fn apply_pair(&self, image: &mut [f32], mask: &mut [f32], n: usize) {
        if self.is_identity() {
            return;
        }
        let map = self.source_map(n);
        self.apply_with(&map, image, n);
        self.apply_with(&map, mask, n);
    }

    fn apply_with(&self, map: &[u32], planes: &mut [f32], n: usize) {
        let mut tmp = vec![0f32; n * n];
        for plane in planes.chunks_exact_mut(n * n) {
            for (t, &s) in tmp.iter_mut().zip(map) {
                *t = plane[s as usize];
            }
            plane.copy_from_slice(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aug(flip: f64, rotate: f64) -> Augmentation {
        Augmentation { flip, rotate }
    }

    #[test]
    fn elementary_transforms() {
        // 2x2 plane: [a b; c d] = [0 1; 2 3]
        let base = vec![0., 1., 2., 3.];
        let t = |p: AugmentParams| {
            let mut v = base.clone();
            p.apply(&mut v, 2);
            v
        };
        let h = AugmentParams {
            hflip: true,
            ..Default::default()
        };
        let v = AugmentParams {
            vflip: true,
            ..Default::default()
        };
        let r = AugmentParams {
            rot90: 1,
            ..Default::default()
        };
        assert_eq!(t(h), vec![1., 0., 3., 2.]);
        assert_eq!(t(v), vec![2., 3., 0., 1.]);
        // Clockwise: [c a; d b]
        assert_eq!(t(r), vec![2., 0., 3., 1.]);
        assert_eq!(
            t(AugmentParams {
                rot90: 2,
                ..Default::default()
            }),
            vec![3., 2., 1., 0.]
        );
    }

    #[test]
    fn image_and_mask_get_the_same_transform() {
        let n = 8;
        for tile in 0..50 {
            let p = augment_params(&aug(0.5, 0.5), 3, 1, tile);
            // The mask equals image channel 1; after augmenting they must still match.
            let ch0: Vec<f32> = (0..n * n).map(|i| (i * 7 % 13) as f32).collect();
            let ch1: Vec<f32> = (0..n * n).map(|i| (i % 5 == 0) as u8 as f32).collect();
            let mut image: Vec<f32> = ch0.iter().chain(&ch1).copied().collect();
            let mut mask = ch1.clone();
            p.apply_pair(&mut image, &mut mask, n);
            assert_eq!(&image[n * n..], &mask[..], "tile {tile}: {p:?}");
            let mut c0 = ch0.clone();
            p.apply(&mut c0, n);
            assert_eq!(&image[..n * n], &c0[..]);
        }
    }

    #[test]
    fn deterministic_and_probabilities_respected() {
        let a = aug(0.5, 0.5);
        for t in 0..20 {
            assert_eq!(augment_params(&a, 1, 2, t), augment_params(&a, 1, 2, t));
        }
        let all: Vec<_> = (0..200).map(|t| augment_params(&a, 1, 2, t)).collect();
        let other: Vec<_> = (0..200).map(|t| augment_params(&a, 1, 3, t)).collect();
        assert_ne!(all, other, "epochs differ");
        assert!(all.iter().any(|p| p.rot90 == 3) && all.iter().any(|p| p.hflip));
        assert!((0..50).all(|t| augment_params(&aug(0.0, 0.0), 1, 2, t).is_identity()));
        assert!((0..50).all(|t| {
            let p = augment_params(&aug(1.0, 1.0), 1, 2, t);
            p.hflip && p.vflip && p.rot90 > 0
        }));
    }
}
