//! Segmentation losses on per-pixel logits — BCE-with-logits, binary Lovász
//! hinge and soft Dice — and their weighted sum as configured by
//! [`sca_spec::Loss`], as one differentiable dfdx op with its own backward.
//!
//! Definitions (logits `x`, targets `t` in `[0, 1]`, `p = sigmoid(x)`):
//! * **BCE**: mean over all pixels of `max(x, 0) − x·t + ln(1 + e^−|x|)`
//!   (the overflow-free form of `−t·ln p − (1−t)·ln(1−p)`).
//! * **Lovász hinge** (Berman et al., 2018), **per image**, then averaged over
//!   the batch (the reference implementation's `per_image=True` default). Targets
//!   are binarised at 0.5; errors `1 − x·(2t−1)` are sorted in decreasing order
//!   and weighted with the gradient of the Lovász extension of the Jaccard loss;
//!   the hinge is a plain ReLU. The sort permutation is treated as constant in
//!   the backward pass (the loss is piecewise linear); ties are broken by pixel
//!   index so the result is deterministic.
//! * **Soft Dice**, over the whole **batch flattened**:
//!   `1 − (2·Σ p·t + 1) / (Σ p + Σ t + 1)` (smoothing 1 keeps empty masks finite).
//!
//! Sums run in f64 over fixed-size chunks added in index order, so the value and
//! gradient are bit-reproducible whatever the thread scheduling.

use dfdx::prelude::*;
use rayon::prelude::*;
use sca_spec::{Loss, LossKind};

use crate::ops::host::{det_sum, to_host};
use crate::ops::{take_grad, HostDevice, Shape4};

/// Smoothing constant of the soft Dice loss.
pub const DICE_SMOOTH: f64 = 1.0;

/// Why a loss could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum LossError {
    #[error("logits must have exactly one channel, got shape {0:?}")]
    NotOneChannel(Shape4),
    #[error("targets have {got} values, logits have {expected}")]
    TargetLength { expected: usize, got: usize },
    #[error("target {index} is {value}; targets must be in [0, 1]")]
    InvalidTarget { index: usize, value: f32 },
    #[error("the loss has no term with a positive weight")]
    NoTerms,
    #[error("device error: {0}")]
    Device(String),
}

/// Value of a (weighted) loss and of each of its terms (unweighted).
#[derive(Debug, Clone, PartialEq)]
pub struct LossValue {
    pub total: f64,
    pub terms: Vec<(LossKind, f64)>,
}

/// BCE-with-logits, mean over pixels: returns the value and `d value / d x`.
pub fn bce_with_logits(x: &[f32], t: &[f32]) -> (f64, Vec<f32>) {
    assert_eq!(x.len(), t.len());
    let n = x.len().max(1) as f64;
    let sum = det_sum(x.len(), |i| {
        let (x, t) = (x[i] as f64, t[i] as f64);
        x.max(0.0) - x * t + (-x.abs()).exp().ln_1p()
    });
    let grad = x
        .par_iter()
        .zip(t.par_iter())
        .map(|(x, t)| ((sigmoid(*x as f64) - *t as f64) / n) as f32)
        .collect();
    (sum / n, grad)
}

/// Binary Lovász hinge, per image (`images` equal-sized images in `x`), mean
/// over images: returns the value and `d value / d x`.
pub fn lovasz_hinge(x: &[f32], t: &[f32], images: usize) -> (f64, Vec<f32>) {
    assert_eq!(x.len(), t.len());
    let mut grad = vec![0.0f32; x.len()];
    if images == 0 || x.is_empty() {
        return (0.0, grad);
    }
    assert_eq!(x.len() % images, 0);
    let px = x.len() / images;
    let scale = 1.0 / images as f64;
    let per_image: Vec<f64> = grad
        .par_chunks_mut(px)
        .zip(x.par_chunks(px).zip(t.par_chunks(px)))
        .map(|(g, (x, t))| lovasz_hinge_flat(x, t, g, scale))
        .collect();
    (per_image.iter().sum::<f64>() * scale, grad)
}

/// Lovász hinge of one image; writes `scale · d loss / d x` into `grad`.
fn lovasz_hinge_flat(x: &[f32], t: &[f32], grad: &mut [f32], scale: f64) -> f64 {
    let sign = |i: usize| if t[i] > 0.5 { 1.0f64 } else { -1.0 };
    let err: Vec<f64> = (0..x.len()).map(|i| 1.0 - x[i] as f64 * sign(i)).collect();
    // A NaN logit is no hinge the sort below can place (and `err > 0` is
    // false for it): the loss is NaN, as BCE's and Dice's are, so the
    // non-finite checks catch it rather than a finite, even perfect, score.
    if err.iter().any(|e| e.is_nan()) {
        grad.fill(f32::NAN);
        return f64::NAN;
    }
    let mut order: Vec<usize> = (0..x.len()).collect();
    // Decreasing error; stable sort so equal errors keep pixel order.
    order.sort_by(|&a, &b| err[b].total_cmp(&err[a]));
    let gts = (0..x.len()).filter(|&i| t[i] > 0.5).count() as f64;
    let (mut cum_gt, mut cum_bg, mut prev_jacc, mut loss) = (0.0, 0.0, 0.0, 0.0);
    for &i in &order {
        if t[i] > 0.5 {
            cum_gt += 1.0;
        } else {
            cum_bg += 1.0;
        }
        // The union is >= 1 from the first pixel on, so this never divides by 0.
        let jacc = 1.0 - (gts - cum_gt) / (gts + cum_bg);
        let w = jacc - prev_jacc;
        prev_jacc = jacc;
        if err[i] > 0.0 {
            loss += err[i] * w;
            grad[i] = (-sign(i) * w * scale) as f32;
        }
    }
    loss
}

/// Soft Dice over the whole batch: returns the value and `d value / d x`.
pub fn soft_dice(x: &[f32], t: &[f32]) -> (f64, Vec<f32>) {
    assert_eq!(x.len(), t.len());
    let inter = det_sum(x.len(), |i| sigmoid(x[i] as f64) * t[i] as f64);
    let sum_p = det_sum(x.len(), |i| sigmoid(x[i] as f64));
    let sum_t = det_sum(x.len(), |i| t[i] as f64);
    let num = 2.0 * inter + DICE_SMOOTH;
    let den = sum_p + sum_t + DICE_SMOOTH;
    let grad = x
        .par_iter()
        .zip(t.par_iter())
        .map(|(x, t)| {
            let p = sigmoid(*x as f64);
            // d/dp of −num/den, times dp/dx = p(1−p).
            let dp = -(2.0 * *t as f64 * den - num) / (den * den);
            (dp * p * (1.0 - p)) as f32
        })
        .collect();
    (1.0 - num / den, grad)
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Targets: one per logit, each in `[0, 1]`.
fn check_targets(logits: usize, targets: &[f32]) -> Result<(), LossError> {
    if logits != targets.len() {
        return Err(LossError::TargetLength {
            expected: logits,
            got: targets.len(),
        });
    }
    if let Some(index) = targets
        .par_iter()
        .position_first(|v| !(0.0..=1.0).contains(v))
    {
        return Err(LossError::InvalidTarget {
            index,
            value: targets[index],
        });
    }
    Ok(())
}

/// The weighted loss on host buffers: logits and targets of `images` images.
/// Returns the value and `d total / d logits`.
pub fn evaluate(
    logits: &[f32],
    targets: &[f32],
    images: usize,
    loss: &Loss,
) -> Result<(LossValue, Vec<f32>), LossError> {
    check_targets(logits.len(), targets)?;
    let terms = loss.terms();
    if terms.is_empty() {
        return Err(LossError::NoTerms);
    }
    let mut total = 0.0;
    let mut grad = vec![0.0f32; logits.len()];
    let mut values = Vec::with_capacity(terms.len());
    for (kind, weight) in terms {
        let (v, g) = match kind {
            LossKind::Bce => bce_with_logits(logits, targets),
            LossKind::Lovasz => lovasz_hinge(logits, targets, images),
            LossKind::Dice => soft_dice(logits, targets),
        };
        total += weight * v;
        let w = weight as f32;
        grad.par_iter_mut()
            .zip(g.par_iter())
            .for_each(|(d, g)| *d += w * g);
        values.push((kind, v));
    }
    Ok((
        LossValue {
            total,
            terms: values,
        },
        grad,
    ))
}

/// The weighted loss of `logits` `(N, 1, H, W)` against `targets` (`N·H·W`
/// values in `[0, 1]`) as a scalar dfdx tensor that carries the logits' tape,
/// plus the per-term values for logging.
#[allow(clippy::type_complexity)]
pub fn weighted_loss<D: HostDevice, T: Tape<f32, D>>(
    logits: Tensor<Shape4, f32, D, T>,
    targets: &[f32],
    loss: &Loss,
) -> Result<(Tensor<(), f32, D, T>, LossValue), LossError> {
    let xs = to_host(&logits);
    weighted_loss_on(logits, &xs, targets, loss)
}

/// [`weighted_loss`] for a caller that already holds the logits' values on
/// the host (`host_logits`, as [`to_host`] copies them): on a GPU that saves
/// a second copy of them across the bus.
#[allow(clippy::type_complexity)]
pub fn weighted_loss_on<D: HostDevice, T: Tape<f32, D>>(
    logits: Tensor<Shape4, f32, D, T>,
    host_logits: &[f32],
    targets: &[f32],
    loss: &Loss,
) -> Result<(Tensor<(), f32, D, T>, LossValue), LossError> {
    let shape = *logits.shape();
    if shape.1 != 1 {
        return Err(LossError::NotOneChannel(shape));
    }
    assert_eq!(
        host_logits.len(),
        shape.0 * shape.2 * shape.3,
        "host_logits are not the logits' values"
    );
    // BCE alone runs where the logits are, on a device with a kernel for it.
    if let [(LossKind::Bce, w)] = *loss.terms().as_slice() {
        if D::DEVICE_BCE {
            check_targets(host_logits.len(), targets)?;
            let (out, v) = D::device_bce(logits, targets, w as f32).map_err(LossError::Device)?;
            let value = LossValue {
                total: w * v,
                terms: vec![(LossKind::Bce, v)],
            };
            return Ok((out, value));
        }
    }
    let (value, grad) = evaluate(host_logits, targets, shape.0, loss)?;
    let (logits, mut tape) = logits.split_tape();
    let dev = logits.device().clone();
    let out = dev
        .try_tensor_from_vec(vec![value.total as f32], ())
        .map_err(|e| LossError::Device(e.to_string()))?;
    if T::OWNS_TAPE {
        let (x_g, y_g) = (logits.ghost(), out.ghost());
        tape.add_backward_op(move |grads| {
            let gy_buf = take_grad!(grads, y_g, dev);
            let gy = D::with_host(&gy_buf, |g| g[0])?;
            D::with_host_mut(grads.get_or_alloc_mut(&x_g)?, |gx| {
                gx.par_iter_mut()
                    .zip(grad.par_iter())
                    .for_each(|(d, g)| *d += gy * g)
            })?;
            Ok(())
        });
    }
    Ok((out.put_tape(tape), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;
    use sca_spec::LossWeights;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }

    #[test]
    fn bce_hand_values() {
        // ln 2 and 2 + ln(1 + e^-2)
        let (v, g) = bce_with_logits(&[0.0, 2.0], &[1.0, 0.0]);
        close(
            v,
            (std::f64::consts::LN_2 + 2.0 + (-2.0f64).exp().ln_1p()) / 2.0,
        );
        close(g[0] as f64, (0.5 - 1.0) / 2.0);
        close(g[1] as f64, sigmoid(2.0) / 2.0);
        // Huge logits stay finite.
        let (v, _) = bce_with_logits(&[1e4, -1e4], &[0.0, 1.0]);
        close(v, 1e4);
    }

    #[test]
    fn a_nan_logit_makes_the_lovasz_loss_nan() {
        let (loss, grad) = lovasz_hinge(&[f32::NAN, 0.0], &[1.0, 0.0], 1);
        assert!(loss.is_nan(), "{loss}");
        assert!(grad.iter().all(|g| g.is_nan()));
        // Only the image with it.
        let (loss, _) = lovasz_hinge(&[f32::NAN, 0.0, 2.0, -2.0], &[1.0, 0.0, 1.0, 0.0], 2);
        assert!(loss.is_nan(), "{loss}");
    }

    #[test]
    fn lovasz_hand_values() {
        // errors [0, 0.5, 1.2]; sorted: px2 (bg), px1 (bg), px0 (fg);
        // Jaccard weights 1/2, 1/6, 1/3 -> 1.2/2 + 0.5/6.
        let (v, g) = lovasz_hinge(&[1.0, -0.5, 0.2], &[1.0, 0.0, 0.0], 1);
        close(v, 0.6 + 0.5 / 6.0);
        close(g[2] as f64, 0.5);
        close(g[1] as f64, 1.0 / 6.0);
        close(g[0] as f64, 0.0);
        // All-zero logits: hinge 1 everywhere -> loss 1.
        close(lovasz_hinge(&[0.0, 0.0], &[1.0, 0.0], 1).0, 1.0);
        // Per image: the mean of the two images' losses.
        let (v2, _) = lovasz_hinge(
            &[1.0, -0.5, 0.2, 0.0, 0.0, 0.0],
            &[1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
            2,
        );
        let other = lovasz_hinge(&[0.0, 0.0, 0.0], &[1.0, 0.0, 0.0], 1).0;
        close(v2, (0.6 + 0.5 / 6.0 + other) / 2.0);
        // An image without foreground is still finite.
        assert!(lovasz_hinge(&[0.3, -2.0], &[0.0, 0.0], 1).0.is_finite());
    }

    #[test]
    fn dice_hand_values() {
        // p = 1/2: 1 - (2·0.5 + 1) / (1 + 1 + 1) = 1/3
        close(soft_dice(&[0.0, 0.0], &[1.0, 0.0]).0, 1.0 / 3.0);
        // Confident and right -> close to 0.
        assert!(soft_dice(&[20.0, -20.0], &[1.0, 0.0]).0 < 1e-6);
    }

    fn check(f: impl Fn(&[f32]) -> (f64, Vec<f32>), x: &[f32]) {
        let (_, g) = f(x);
        let num = numeric_grad(x, 1e-3, |v| f(v).0);
        assert_close("grad", &g, &num, 1e-2, 1e-4);
    }

    #[test]
    fn numeric_gradients() {
        let x: Vec<f32> = rand_vec(2 * 12, 1).iter().map(|v| v * 3.0).collect();
        let t: Vec<f32> = rand_vec(x.len(), 2)
            .iter()
            .map(|v| if *v > 0.0 { 1.0 } else { 0.0 })
            .collect();
        check(|x| bce_with_logits(x, &t), &x);
        check(|x| soft_dice(x, &t), &x);
        check(|x| lovasz_hinge(x, &t, 2), &x);
    }

    #[test]
    fn weighted_sum_and_dfdx_op() {
        let dev: Cpu = Default::default();
        let x: Vec<f32> = rand_vec(2 * 3 * 4, 3).iter().map(|v| v * 2.0).collect();
        let t: Vec<f32> = rand_vec(x.len(), 4)
            .iter()
            .map(|v| if *v > 0.0 { 1.0 } else { 0.0 })
            .collect();
        let spec = Loss::Weighted(LossWeights {
            bce: Some(0.5),
            lovasz: Some(0.25),
            dice: Some(2.0),
        });
        let xt = dev.tensor_from_vec(x.clone(), (2, 1, 3, 4));
        let (l, value) = weighted_loss(xt.leaky_trace(), &t, &spec).unwrap();
        let want = 0.5 * bce_with_logits(&x, &t).0
            + 0.25 * lovasz_hinge(&x, &t, 2).0
            + 2.0 * soft_dice(&x, &t).0;
        close(value.total, want);
        assert!((l.array() as f64 - want).abs() < 1e-5);
        assert_eq!(value.terms.len(), 3);
        let g = (l * 3.0).backward().get(&xt).as_vec();
        let num = numeric_grad(&x, 1e-3, |v| {
            3.0 * evaluate(v, &t, 2, &spec).unwrap().0.total
        });
        assert_close("weighted", &g, &num, 1e-2, 1e-4);
        // Zero-weight terms are dropped.
        let only_dice = Loss::Weighted(LossWeights {
            bce: Some(0.0),
            lovasz: None,
            dice: Some(1.0),
        });
        let (v, _) = evaluate(&x, &t, 2, &only_dice).unwrap();
        assert_eq!(v.terms.len(), 1);
    }

    #[test]
    fn rejects_bad_input() {
        let dev: Cpu = Default::default();
        let spec = Loss::Single(LossKind::Bce);
        let two_ch = dev.zeros_like(&(1, 2, 2, 2));
        assert!(matches!(
            weighted_loss(two_ch, &[0.0; 8], &spec),
            Err(LossError::NotOneChannel(_))
        ));
        let x = dev.zeros_like(&(1, 1, 2, 2));
        assert!(matches!(
            weighted_loss(x.clone(), &[0.0; 3], &spec),
            Err(LossError::TargetLength { .. })
        ));
        assert!(matches!(
            weighted_loss(x.clone(), &[0.0, 2.0, 0.0, 0.0], &spec),
            Err(LossError::InvalidTarget { index: 1, .. })
        ));
        assert!(matches!(
            weighted_loss(x.clone(), &[0.0, f32::NAN, 0.0, 0.0], &spec),
            Err(LossError::InvalidTarget { .. })
        ));
        let none = Loss::Weighted(LossWeights {
            bce: None,
            lovasz: None,
            dice: Some(0.0),
        });
        assert!(matches!(
            weighted_loss(x, &[0.0; 4], &none),
            Err(LossError::NoTerms)
        ));
    }

    #[test]
    fn deterministic() {
        let x = rand_vec(3 * 100_000, 5);
        let t: Vec<f32> = rand_vec(x.len(), 6)
            .iter()
            .map(|v| (v + 1.0) / 2.0)
            .collect();
        let spec = Loss::Weighted(LossWeights {
            bce: Some(1.0),
            lovasz: Some(1.0),
            dice: Some(1.0),
        });
        let a = evaluate(&x, &t, 3, &spec).unwrap();
        assert!(a == evaluate(&x, &t, 3, &spec).unwrap());
    }
}
