//! AdamW's per-step arithmetic, shared by the devices: the step's scalars
//! ([`AdamWStep`]) and the host update. On a GPU the same arithmetic runs in
//! `kernels.cu`'s `adamw` (`cuda_adamw.rs`), rounded the same way operation by
//! operation, so a parameter updated there is bit-identical to the host's.

use rayon::prelude::*;

/// One AdamW step's scalars (PyTorch's `AdamW` formulation: decoupled decay,
/// bias corrections folded into the step size and the denominator), all in
/// `f32` as the update uses them. `repr(C)`: passed to the GPU kernel as is.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// The first moment's decay.
    pub b1: f32,
    /// `1 - b1`, rounded once, on the host.
    pub one_minus_b1: f32,
    /// The second moment's decay.
    pub b2: f32,
    /// `1 - b2`, rounded once, on the host.
    pub one_minus_b2: f32,
    /// `lr / (1 - b1^t)`.
    pub step_size: f32,
    /// `sqrt(1 - b2^t)`.
    pub bc2_sqrt: f32,
    /// `1 - lr * weight_decay`.
    pub decay: f32,
    /// Added to the denominator.
    pub eps: f32,
}

impl AdamWStep {
    /// The scalars of step `t` (1-based), computed in `f64` and rounded once.
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, t: u64) -> Self {
        let bc1 = 1.0 - beta1.powf(t as f64);
        let bc2 = 1.0 - beta2.powf(t as f64);
        let (b1, b2) = (beta1 as f32, beta2 as f32);
        AdamWStep {
            b1,
            one_minus_b1: 1.0 - b1,
            b2,
            one_minus_b2: 1.0 - b2,
            step_size: (lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            decay: (1.0 - lr * weight_decay) as f32,
            eps: eps as f32,
        }
    }
}

/// Updates `p`, `m` and `v` in place with gradient `g` (all the same length).
/// Element-wise, so parallel chunks give identical results.
pub(crate) fn update_host(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &AdamWStep) {
    assert!(p.len() == m.len() && m.len() == v.len() && v.len() == g.len());
    p.par_chunks_mut(4096)
        .zip(m.par_chunks_mut(4096))
        .zip(v.par_chunks_mut(4096))
        .zip(g.par_chunks(4096))
        .for_each(|(((p, m), v), g)| {
            for j in 0..p.len() {
                m[j] = s.b1 * m[j] + s.one_minus_b1 * g[j];
                v[j] = s.b2 * v[j] + s.one_minus_b2 * g[j] * g[j];
                let denom = v[j].sqrt() / s.bc2_sqrt + s.eps;
                p[j] = p[j] * s.decay - s.step_size * m[j] / denom;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_step_moves_each_weight_by_about_lr_against_its_gradient() {
        // Step 1: m = (1-b1) g, v = (1-b2) g², so m̂ / sqrt(v̂) = sign(g).
        let s = AdamWStep::new(1e-3, 0.9, 0.999, 1e-8, 0.0, 1);
        let (mut p, mut m, mut v) = (vec![1.0f32, -2.0, 0.5], vec![0.0; 3], vec![0.0; 3]);
        update_host(&mut p, &mut m, &mut v, &[0.3, -4.0, 0.0], &s);
        assert!((p[0] - (1.0 - 1e-3)).abs() < 1e-6, "{p:?}");
        assert!((p[1] - (-2.0 + 1e-3)).abs() < 1e-6, "{p:?}");
        assert_eq!(p[2], 0.5, "a zero gradient leaves the weight");
    }

    #[test]
    fn decay_is_decoupled_from_the_gradient() {
        let s = AdamWStep::new(0.1, 0.9, 0.999, 1e-8, 0.5, 1);
        let (mut p, mut m, mut v) = (vec![2.0f32], vec![0.0], vec![0.0]);
        update_host(&mut p, &mut m, &mut v, &[0.0], &s);
        assert_eq!(p[0], 2.0 * (1.0 - 0.1 * 0.5) as f32);
    }
}
