//! Seed mixing: independent, reproducible random streams from one experiment seed.

/// Mix a seed with a domain tag and up to two counters into one well-spread
/// `u64` (SplitMix64 finaliser), so independent random streams (split,
/// shuffle, augmentation) never share state.
pub fn mix_seed(seed: u64, tag: u64, a: u64, b: u64) -> u64 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    splitmix(splitmix(splitmix(splitmix(seed) ^ tag) ^ a) ^ b)
}
