//! 2x2 max-pooling with stride 2 (the U-Net's down-sampling), forward and
//! backward; the gradient goes to the first maximum of each window (row-major
//! order), as in PyTorch.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::{take_grad, HostDevice, OpError, Shape4};

/// `y[n, c, i, j] = max(x[n, c, 2i..2i+2, 2j..2j+2])`; `H` and `W` must be even.
pub fn max_pool2x2<D: HostDevice, T: Tape<f32, D>>(
    x: Tensor<Shape4, f32, D, T>,
) -> Result<Tensor<Shape4, f32, D, T>, OpError> {
    const OP: &str = "max_pool2x2";
    let (n, c, h, w) = *x.shape();
    if h % 2 != 0 || w % 2 != 0 || h == 0 || w == 0 {
        return Err(OpError::shape(
            OP,
            format!("height and width must be even and non-zero, got {h}x{w}"),
        ));
    }
    if super::native::enabled::<D>() {
        return super::native::max_pool2x2(x).map_err(|e| OpError::device(OP, e));
    }
    let (ys, arg) = forward(&D::host_view(&x), n * c, h, w);
    let (x, mut tape) = x.split_tape();
    let dev = x.device().clone();
    let y = dev
        .try_tensor_from_vec(ys, (n, c, h / 2, w / 2))
        .map_err(|e| OpError::device(OP, e))?;
    if T::OWNS_TAPE {
        let (x_g, y_g) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let gy_buf = take_grad!(grads, y_g, dev);
            D::with_host(&gy_buf, |gy| -> Result<(), D::Err> {
                D::with_host_mut(grads.get_or_alloc_mut(&x_g)?, |gx| {
                    backward(gy, &arg, n * c, h, w, gx)
                })?;
                Ok(())
            })?
        });
    }
    Ok(y.put_tape(tape))
}

/// Returns the pooled planes and, per output, which of the four window
/// positions (0..4, row-major) held the maximum.
pub(crate) fn forward(x: &[f32], planes: usize, h: usize, w: usize) -> (Vec<f32>, Vec<u8>) {
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(x.len(), planes * h * w);
    let mut y = vec![0.0f32; planes * oh * ow];
    let mut arg = vec![0u8; planes * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(arg.par_chunks_mut(oh * ow))
        .zip(x.par_chunks(h * w))
        .for_each(|((yp, ap), xp)| {
            for i in 0..oh {
                let r0 = &xp[2 * i * w..(2 * i + 1) * w];
                let r1 = &xp[(2 * i + 1) * w..(2 * i + 2) * w];
                for j in 0..ow {
                    let cand = [r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]];
                    let (mut best, mut bi) = (cand[0], 0u8);
                    for (k, v) in cand.iter().enumerate().skip(1) {
                        // Strict `>`: ties keep the first position. NaN never wins
                        // a comparison, so a NaN only propagates from position 0.
                        if *v > best {
                            best = *v;
                            bi = k as u8;
                        }
                    }
                    yp[i * ow + j] = best;
                    ap[i * ow + j] = bi;
                }
            }
        });
    (y, arg)
}

/// Adds each output gradient to the input position that won its window.
pub(crate) fn backward(gy: &[f32], arg: &[u8], planes: usize, h: usize, w: usize, gx: &mut [f32]) {
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(gx.len(), planes * h * w);
    gx.par_chunks_mut(h * w)
        .zip(gy.par_chunks(oh * ow))
        .zip(arg.par_chunks(oh * ow))
        .for_each(|((gxp, gyp), ap)| {
            for i in 0..oh {
                for j in 0..ow {
                    let k = ap[i * ow + j] as usize;
                    gxp[(2 * i + k / 2) * w + 2 * j + k % 2] += gyp[i * ow + j];
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    #[test]
    fn forward_matches_naive_and_first_max_wins_ties() {
        let x = rand_vec(2 * 3 * 4 * 6, 1);
        let (y, _) = forward(&x, 6, 4, 6);
        for p in 0..6 {
            for i in 0..2 {
                for j in 0..3 {
                    let at = |dy: usize, dx: usize| x[p * 24 + (2 * i + dy) * 6 + 2 * j + dx];
                    let m = at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                    assert_eq!(y[p * 6 + i * 3 + j], m);
                }
            }
        }
        let (_, arg) = forward(&[1.0, 2.0, 2.0, 0.0], 1, 2, 2);
        assert_eq!(arg, [1]);
    }

    #[test]
    fn gradients() {
        let dev: Cpu = Default::default();
        let (n, c, h, w) = (2, 2, 4, 4);
        // Distinct values spaced well apart so a ±eps nudge never changes a winner.
        let mut x: Vec<f32> = (0..n * c * h * w)
            .map(|i| ((i * 37) % 64) as f32 * 0.1)
            .collect();
        let jitter = rand_vec(x.len(), 5);
        x.iter_mut().zip(jitter).for_each(|(v, r)| *v += r * 0.01);
        let r = rand_vec(n * c * h * w / 4, 6);
        let xt = dev.tensor_from_vec(x.clone(), (n, c, h, w));
        let rt = dev.tensor_from_vec(r.clone(), (n, c, h / 2, w / 2));
        let grads = (max_pool2x2(xt.leaky_trace()).unwrap() * rt)
            .sum::<Rank0, _>()
            .backward();
        let num = numeric_grad(&x, 1e-3, |v| {
            let t = dev.tensor_from_vec(v.to_vec(), (n, c, h, w));
            dot(&max_pool2x2(t).unwrap().as_vec(), &r)
        });
        assert_close("dx", &grads.get(&xt).as_vec(), &num, 1e-3, 1e-3);
    }

    #[test]
    fn rejects_odd_sizes() {
        let dev: Cpu = Default::default();
        assert!(max_pool2x2(dev.zeros_like(&(1, 1, 3, 4))).is_err());
        assert!(max_pool2x2(dev.zeros_like(&(1, 1, 4, 4))).is_ok());
    }
}
