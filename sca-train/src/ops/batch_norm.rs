//! 2-D batch normalisation with learned per-channel scale (`gamma`) and shift
//! (`beta`): training mode normalises with the batch's statistics and returns
//! them (for the running averages, which the model owns); inference mode uses
//! given running statistics. Both have forward and backward kernels.
//!
//! dfdx's `BatchNorm2D<C>` needs the channel count at compile time, while the
//! U-Net's widths come from the experiment file, hence this op.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::host::{par_init, to_host};
use super::{take_grad, HostDevice, OpError, Shape4};

/// Batch statistics of one training-mode forward pass, per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStats {
    /// Mean over batch and pixels.
    pub mean: Vec<f32>,
    /// Biased variance (divided by `count`), the one used to normalise.
    pub var: Vec<f32>,
    /// Values per channel (`N * H * W`).
    pub count: usize,
}

impl BatchStats {
    /// Unbiased variance (divided by `count - 1`), the one PyTorch folds into
    /// the running variance; equal to the biased one when `count == 1`.
    pub fn unbiased_var(&self) -> Vec<f32> {
        let f = if self.count > 1 {
            self.count as f64 / (self.count - 1) as f64
        } else {
            1.0
        };
        self.var.iter().map(|v| (*v as f64 * f) as f32).collect()
    }
}

/// A batch norm's shape, whether ReLU is fused in and the format of its
/// kept input, as the GPU kernels take it (`kernels.cu`'s `BnDims`,
/// `repr(C)`, passed by value; the emulator's tests pass it too,
/// `kernels_emu.rs`).
#[cfg(any(test, feature = "cuda"))]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BnDims {
    pub n: i32,
    pub c: i32,
    pub hw: i32,
    /// 1: ReLU fused in; 0: the normalisation alone.
    pub relu: i32,
    /// 1: the backward pass's input holds bf16 values packed two to an
    /// `f32` (`cuda_bf16.rs`'s `Saved`); 0: `f32`s.
    pub x_bf16: i32,
}

/// What follows the normalisation inside the op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
}

impl Activation {
    /// Applied as an op of its own (on dfdx's kernels, where the batch norm
    /// before it does not fuse it).
    pub(crate) fn apply<D: HostDevice, T: Tape<f32, D>>(
        self,
        y: Tensor<Shape4, f32, D, T>,
    ) -> Result<Tensor<Shape4, f32, D, T>, OpError> {
        match self {
            Activation::Identity => Ok(y),
            Activation::Relu => super::relu(y),
        }
    }
}

fn check<D: HostDevice, T>(
    op: &'static str,
    x: &Tensor<Shape4, f32, D, T>,
    params: &[(&str, usize)],
) -> Result<(usize, usize, usize), OpError> {
    let (n, c, h, w) = *x.shape();
    if [n, c, h, w].contains(&0) {
        return Err(OpError::shape(op, format!("empty input {:?}", x.shape())));
    }
    for (name, len) in params {
        if *len != c {
            return Err(OpError::shape(
                op,
                format!("{name} has {len} entries for {c} channels"),
            ));
        }
    }
    Ok((n, c, h * w))
}

/// Training-mode batch norm: `y = (x - mean_B) / sqrt(var_B + eps) * gamma + beta`
/// with the batch's per-channel mean and biased variance, which are returned.
/// With [`Activation::Relu`], ReLU follows in the same op: applied as the
/// output is written, its mask read backward off the output the op keeps.
#[allow(clippy::type_complexity)]
pub fn batch_norm2d_train<D: HostDevice, T: Tape<f32, D>>(
    x: Tensor<Shape4, f32, D, T>,
    gamma: &Tensor<(usize,), f32, D>,
    beta: &Tensor<(usize,), f32, D>,
    eps: f32,
    act: Activation,
) -> Result<(Tensor<Shape4, f32, D, T>, BatchStats), OpError> {
    const OP: &str = "batch_norm2d_train";
    let (n, c, hw) = check(
        OP,
        &x,
        &[("gamma", gamma.shape().0), ("beta", beta.shape().0)],
    )?;
    // As PyTorch refuses it: one value a channel normalises to 0 whatever
    // it is, passes no gradient, and shrinks the running variance to 0,
    // which inference then divides by.
    if n * hw < 2 {
        return Err(OpError::shape(
            OP,
            "one value per channel (a batch of one 1 x 1 map): training-mode batch norm needs at least 2",
        ));
    }
    if super::native::enabled::<D>() {
        return D::device_batch_norm2d_train(x, gamma, beta, eps, act);
    }
    let mut stats = None;
    let y = normalise(OP, x, (n, c, hw), gamma, beta, act, Mode::Batch, |xs| {
        let (mean, var) = channel_stats(xs, n, c, hw);
        let inv_std = var.iter().map(|v| 1.0 / (v + eps as f64).sqrt()).collect();
        stats = Some(BatchStats {
            mean: mean.iter().map(|m| *m as f32).collect(),
            var: var.iter().map(|v| *v as f32).collect(),
            count: n * hw,
        });
        (mean, inv_std)
    })?;
    Ok((y, stats.expect("normalise computes the statistics")))
}

/// Inference-mode batch norm with fixed statistics:
/// `y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta`.
/// Differentiable in `x`, `gamma` and `beta` (the statistics are constants).
/// [`Activation::Relu`] fuses ReLU in, as in [`batch_norm2d_train`].
pub fn batch_norm2d_infer<D: HostDevice, T: Tape<f32, D>>(
    x: Tensor<Shape4, f32, D, T>,
    gamma: &Tensor<(usize,), f32, D>,
    beta: &Tensor<(usize,), f32, D>,
    running_mean: &[f32],
    running_var: &[f32],
    eps: f32,
    act: Activation,
) -> Result<Tensor<Shape4, f32, D, T>, OpError> {
    const OP: &str = "batch_norm2d_infer";
    let dims = check(
        OP,
        &x,
        &[
            ("gamma", gamma.shape().0),
            ("beta", beta.shape().0),
            ("running_mean", running_mean.len()),
            ("running_var", running_var.len()),
        ],
    )?;
    if super::native::enabled::<D>() {
        let y = super::native::batch_norm2d_infer(x, gamma, beta, running_mean, running_var, eps)
            .map_err(|e| OpError::device(OP, e))?;
        return act.apply(y);
    }
    normalise(OP, x, dims, gamma, beta, act, Mode::Running, |_| {
        let mean = running_mean.iter().map(|m| *m as f64).collect();
        let inv_std = running_var
            .iter()
            .map(|v| 1.0 / (*v as f64 + eps as f64).sqrt())
            .collect();
        (mean, inv_std)
    })
}

/// Where the statistics a forward pass normalises with come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The batch's own (training): the input's gradient flows through them too.
    Batch,
    /// Given running statistics (inference): constants.
    Running,
}

/// The host computation of either mode: `y = act((x - mean) · inv_std ·
/// gamma + beta)` with the per-channel `(mean, inv_std)` that `stats`
/// computes from the input, and on a tape its backward op.
#[allow(clippy::too_many_arguments)]
fn normalise<D: HostDevice, T: Tape<f32, D>>(
    op: &'static str,
    x: Tensor<Shape4, f32, D, T>,
    (n, c, hw): (usize, usize, usize),
    gamma: &Tensor<(usize,), f32, D>,
    beta: &Tensor<(usize,), f32, D>,
    act: Activation,
    mode: Mode,
    stats: impl FnOnce(&[f32]) -> (Vec<f64>, Vec<f64>),
) -> Result<Tensor<Shape4, f32, D, T>, OpError> {
    let relu = act == Activation::Relu;
    let shape = *x.shape();
    let xs = D::host_view(&x);
    let gs = to_host(gamma);
    let bs = to_host(beta);
    let (mean, inv_std) = stats(&xs);
    let scale: Vec<f32> = (0..c)
        .map(|ch| (gs[ch] as f64 * inv_std[ch]) as f32)
        .collect();
    let shift: Vec<f32> = (0..c)
        .map(|ch| (bs[ch] as f64 - mean[ch] * gs[ch] as f64 * inv_std[ch]) as f32)
        .collect();
    let ys = affine(&xs, n, c, hw, &scale, &shift, relu);
    drop(xs);

    let (x, mut tape) = x.split_tape();
    let dev = x.device().clone();
    let y = dev
        .try_tensor_from_vec(ys, shape)
        .map_err(|e| OpError::device(op, e))?;
    if T::OWNS_TAPE {
        let (x_g, g_g, b_g, y_g) = (x.ghost(), gamma.ghost(), beta.ghost(), y.ghost());
        // Kept by reference count, not copied: the input, and the output
        // whose sign is the ReLU's mask.
        let (x_kept, y_kept) = (x.clone(), relu.then(|| y.clone()));
        tape.add_backward_op(move |grads| {
            let gy_buf = take_grad!(grads, y_g, dev);
            let xs = D::host_view(&x_kept);
            let ys = y_kept.as_ref().map(|y| D::host_view(y));
            D::with_host(&gy_buf, |gy| -> Result<(), D::Err> {
                let masked = ys.as_deref().map(|y| relu_backward(gy, y, hw));
                let gy = masked.as_deref().unwrap_or(gy);
                let (sum_gy, sum_gy_xhat) = grad_sums(&xs, gy, n, c, hw, &mean, &inv_std);
                D::with_host_mut(grads.get_or_alloc_mut(&x_g)?, |gx| match mode {
                    Mode::Batch => {
                        let m = (n * hw) as f64;
                        let a: Vec<f32> = sum_gy.iter().map(|s| (s / m) as f32).collect();
                        let b: Vec<f32> = sum_gy_xhat.iter().map(|s| (s / m) as f32).collect();
                        batch_input_grad(gx, gy, &xs, hw, &scale, (&a, &b), (&mean, &inv_std));
                    }
                    Mode::Running => gx
                        .par_chunks_mut(hw)
                        .zip(gy.par_chunks(hw))
                        .enumerate()
                        .for_each(|(p, (gxp, gyp))| {
                            let s = scale[p % c];
                            gxp.iter_mut().zip(gyp).for_each(|(d, g)| *d += s * g);
                        }),
                })?;
                D::with_host_mut(grads.get_or_alloc_mut(&g_g)?, |gg| {
                    gg.iter_mut()
                        .zip(&sum_gy_xhat)
                        .for_each(|(d, s)| *d += *s as f32)
                })?;
                D::with_host_mut(grads.get_or_alloc_mut(&b_g)?, |gb| {
                    gb.iter_mut()
                        .zip(&sum_gy)
                        .for_each(|(d, s)| *d += *s as f32)
                })?;
                Ok(())
            })?
        });
    }
    Ok(y.put_tape(tape))
}

/// The input's gradient in training mode, added into `gx` plane by plane
/// (`hw` values, channel `p % c` for plane `p`):
/// `k·(gy − a − (x − mean)·inv_std·b)` with `k = gamma·inv_std` (`scale`),
/// `a = mean(gy)` and `b = mean(gy·x̂)` per channel.
fn batch_input_grad(
    gx: &mut [f32],
    gy: &[f32],
    xs: &[f32],
    hw: usize,
    scale: &[f32],
    (a, b): (&[f32], &[f32]),
    (mean, inv_std): (&[f64], &[f64]),
) {
    let c = scale.len();
    let (mean, inv_std): (Vec<f32>, Vec<f32>) = (0..c)
        .map(|ch| (mean[ch] as f32, inv_std[ch] as f32))
        .unzip();
    gx.par_chunks_mut(hw)
        .zip(gy.par_chunks(hw))
        .zip(xs.par_chunks(hw))
        .enumerate()
        .for_each(|(p, ((gxp, gyp), xp))| {
            let ch = p % c;
            let (k, a, b, mu, is) = (scale[ch], a[ch], b[ch], mean[ch], inv_std[ch]);
            // Indexed over equal-length slices, so it vectorises.
            let len = gxp.len();
            let (gyp, xp) = (&gyp[..len], &xp[..len]);
            for j in 0..len {
                gxp[j] += k * (gyp[j] - a - (xp[j] - mu) * is * b);
            }
        });
}

/// `Σ f(v)` over a slice: f32 partial sums over [`BLOCK`] values in
/// [`LANES`] interleaved lanes, added up in f64. A fixed order (so
/// deterministic), and the block loop vectorises on baseline x86-64.
fn sum_f64(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0.0f64;
    let blocks = x.chunks_exact(BLOCK);
    let rest = blocks.remainder();
    for b in blocks {
        let mut acc = [0.0f32; LANES];
        for c in b.chunks_exact(LANES) {
            for k in 0..LANES {
                acc[k] += f(c[k]);
            }
        }
        total += fold_lanes(&acc);
    }
    total + rest.iter().map(|v| f(*v) as f64).sum::<f64>()
}

/// Per-channel mean and biased variance (two-pass, f64), channels in parallel.
pub(crate) fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (n * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let plane = |i: usize| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw];
            let mean = (0..n).map(|i| sum_f64(plane(i), |v| v)).sum::<f64>() / m;
            let mu = mean as f32;
            let var = (0..n)
                .map(|i| sum_f64(plane(i), |v| (v - mu) * (v - mu)))
                .sum::<f64>()
                / m;
            (mean, var)
        })
        .unzip()
}

/// Per-channel `Σ gy` and `Σ gy · (x - mean) · inv_std`.
fn grad_sums(
    x: &[f32],
    gy: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    mean: &[f64],
    inv_std: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut sg, mut sgx) = (0.0, 0.0);
            for i in 0..n {
                let o = (i * c + ch) * hw;
                let (a, b) = plane_sums(&x[o..o + hw], &gy[o..o + hw], mean[ch]);
                sg += a;
                sgx += b;
            }
            (sg, sgx * inv_std[ch])
        })
        .unzip()
}

/// ReLU's backward: `gy` where the ReLU's output `y` is positive, else 0,
/// planes of `hw` in parallel. A pass of its own (the buffer is one
/// activation, freed after the op's backward) so that the sums and the
/// gradient loop after it have no per-element select, which the compiler
/// left scalar and branchy in the sums.
fn relu_backward(gy: &[f32], y: &[f32], hw: usize) -> Vec<f32> {
    par_init(gy.len(), hw, |p, m| {
        let o = p * hw;
        let (g, y) = (&gy[o..o + m.len()], &y[o..o + m.len()]);
        for j in 0..m.len() {
            m[j] = relu_mask(g[j], y[j]);
        }
    })
}

/// Lanes of the partial sums in [`sum_f64`] and [`plane_sums`], and the
/// values each f32 partial sum covers before it is added in f64: fixed (so is
/// the summation order), the lanes a multiple of any SIMD width, the blocks
/// short enough that f32 partial sums lose nothing that matters.
const LANES: usize = 16;
const BLOCK: usize = 256;

/// `(Σ g, Σ g · (x - mean))` over one plane, summed as in [`sum_f64`].
fn plane_sums(x: &[f32], g: &[f32], mean: f64) -> (f64, f64) {
    let mu = mean as f32;
    let g = &g[..x.len()];
    let (xb, gb) = (x.chunks_exact(BLOCK), g.chunks_exact(BLOCK));
    let (xr, gr) = (xb.remainder(), gb.remainder());
    let (mut sg, mut sgx) = (0.0f64, 0.0f64);
    for (xs, gs) in xb.zip(gb) {
        let (mut a, mut b) = ([0.0f32; LANES], [0.0f32; LANES]);
        for (xc, gc) in xs.chunks_exact(LANES).zip(gs.chunks_exact(LANES)) {
            for k in 0..LANES {
                a[k] += gc[k];
                b[k] += gc[k] * (xc[k] - mu);
            }
        }
        sg += fold_lanes(&a);
        sgx += fold_lanes(&b);
    }
    for (xv, gv) in xr.iter().zip(gr) {
        sg += *gv as f64;
        sgx += (*gv * (*xv - mu)) as f64;
    }
    (sg, sgx)
}

/// `g` where the ReLU's output `y` is positive, else 0: ReLU's backward.
/// A bit mask rather than a branch (baseline x86-64 has no blend).
#[inline(always)]
fn relu_mask(g: f32, y: f32) -> f32 {
    f32::from_bits(g.to_bits() & ((y > 0.0) as u32).wrapping_neg())
}

/// The lanes' sum in f64, pairwise in a fixed order.
fn fold_lanes(acc: &[f32; LANES]) -> f64 {
    let mut v = acc.map(|a| a as f64);
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for k in 0..w {
            v[k] += v[k + w];
        }
    }
    v[0]
}

/// `y = x · scale[ch] + shift[ch]`, then `max(y, 0)` when `relu`, planes
/// in parallel.
fn affine(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    scale: &[f32],
    shift: &[f32],
    relu: bool,
) -> Vec<f32> {
    par_init(n * c * hw, hw, |p, yp| {
        let (s, t) = (scale[p % c], shift[p % c]);
        let xp = &x[p * hw..(p + 1) * hw];
        if relu {
            yp.iter_mut()
                .zip(xp)
                .for_each(|(y, x)| *y = (x * s + t).max(0.0));
        } else {
            yp.iter_mut().zip(xp).for_each(|(y, x)| *y = x * s + t);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    const EPS: f32 = 1e-5;

    #[test]
    fn one_value_per_channel_is_refused() {
        let dev: Cpu = Default::default();
        let g = dev.tensor_from_vec(vec![1.0], (1,));
        let b = dev.tensor_from_vec(vec![0.0], (1,));
        let x = dev.tensor_from_vec(vec![3.0], (1, 1, 1, 1));
        let e = batch_norm2d_train(x, &g, &b, EPS, Activation::Identity).unwrap_err();
        assert!(e.to_string().contains("one value per channel"), "{e}");
        // Two tiles of 1 x 1, or one of 1 x 2: fine.
        for shape in [(2, 1, 1, 1), (1, 1, 1, 2)] {
            let x = dev.tensor_from_vec(vec![3.0, 5.0], shape);
            assert!(batch_norm2d_train(x, &g, &b, EPS, Activation::Identity).is_ok());
        }
    }

    #[test]
    fn train_forward_normalises_per_channel() {
        let dev: Cpu = Default::default();
        let (n, c, h, w) = (3, 2, 2, 3);
        let x: Vec<f32> = rand_vec(n * c * h * w, 1)
            .iter()
            .map(|v| v * 3.0 + 1.0)
            .collect();
        let g = dev.tensor_from_vec(vec![2.0, 0.5], (c,));
        let b = dev.tensor_from_vec(vec![0.1, -1.0], (c,));
        let (y, stats) = batch_norm2d_train(
            dev.tensor_from_vec(x.clone(), (n, c, h, w)),
            &g,
            &b,
            EPS,
            Activation::Identity,
        )
        .unwrap();
        let y = y.as_vec();
        for ch in 0..c {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| x[(i * c + ch) * 6..(i * c + ch + 1) * 6].to_vec())
                .map(|v| v as f64)
                .collect();
            let mean = vals.iter().sum::<f64>() / 18.0;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 18.0;
            assert!((stats.mean[ch] as f64 - mean).abs() < 1e-5);
            assert!((stats.var[ch] as f64 - var).abs() < 1e-5);
            assert!((stats.unbiased_var()[ch] as f64 - var * 18.0 / 17.0).abs() < 1e-5);
            let (gm, bt) = ([2.0, 0.5][ch], [0.1, -1.0][ch]);
            for i in 0..n {
                for p in 0..6 {
                    let o = (i * c + ch) * 6 + p;
                    let want = (x[o] as f64 - mean) / (var + EPS as f64).sqrt() * gm + bt;
                    assert!((y[o] as f64 - want).abs() < 1e-5, "{} vs {want}", y[o]);
                }
            }
        }
    }

    #[test]
    fn infer_uses_running_stats() {
        let dev: Cpu = Default::default();
        let g = dev.tensor_from_vec(vec![2.0], (1,));
        let b = dev.tensor_from_vec(vec![1.0], (1,));
        let x = dev.tensor_from_vec(vec![0.0, 1.0, 3.0, 5.0], (1, 1, 2, 2));
        let y = batch_norm2d_infer(x, &g, &b, &[1.0], &[4.0 - EPS], EPS, Activation::Identity)
            .unwrap()
            .as_vec();
        assert_close_f32("infer", &y, &[0.0, 1.0, 3.0, 5.0], 1e-6);
    }

    /// Batch norm in training mode (`train`) or in inference mode with the
    /// running statistics `rs`.
    fn bn<T: Tape<f32, Cpu>>(
        train: bool,
        x: Tensor<Shape4, f32, Cpu, T>,
        g: &Tensor<(usize,), f32, Cpu>,
        b: &Tensor<(usize,), f32, Cpu>,
        (rm, rv): (&[f32], &[f32]),
        act: Activation,
    ) -> Tensor<Shape4, f32, Cpu, T> {
        if train {
            batch_norm2d_train(x, g, b, EPS, act).unwrap().0
        } else {
            batch_norm2d_infer(x, g, b, rm, rv, EPS, act).unwrap()
        }
    }

    fn check_grads(train: bool, (h, w): (usize, usize)) {
        let dev: Cpu = Default::default();
        let (n, c) = (2, 3);
        let x: Vec<f32> = rand_vec(n * c * h * w, 11);
        let g: Vec<f32> = rand_vec(c, 12).iter().map(|v| v + 1.5).collect();
        let b = rand_vec(c, 13);
        let r = rand_vec(n * c * h * w, 14);
        let (rm, rv) = (vec![0.1, -0.2, 0.3], vec![0.5, 1.5, 0.8]);
        let run = |x: &[f32], g: &[f32], b: &[f32], trace: bool| {
            let xt = dev.tensor_from_vec(x.to_vec(), (n, c, h, w));
            let gt = dev.tensor_from_vec(g.to_vec(), (c,));
            let bt = dev.tensor_from_vec(b.to_vec(), (c,));
            let rt = dev.tensor_from_vec(r.clone(), (n, c, h, w));
            if trace {
                let y = bn(
                    train,
                    xt.leaky_trace(),
                    &gt,
                    &bt,
                    (&rm, &rv),
                    Activation::Identity,
                );
                let grads = (y * rt).sum::<Rank0, _>().backward();
                (
                    0.0,
                    [
                        grads.get(&xt).as_vec(),
                        grads.get(&gt).as_vec(),
                        grads.get(&bt).as_vec(),
                    ],
                )
            } else {
                let y = bn(train, xt, &gt, &bt, (&rm, &rv), Activation::Identity);
                (dot(&y.as_vec(), &r), Default::default())
            }
        };
        let [gx, gg, gb] = run(&x, &g, &b, true).1;
        let eps = 1e-3;
        let (rt, at) = (2e-2, 2e-3);
        assert_close(
            "dx",
            &gx,
            &numeric_grad(&x, eps, |v| run(v, &g, &b, false).0),
            rt,
            at,
        );
        assert_close(
            "dgamma",
            &gg,
            &numeric_grad(&g, eps, |v| run(&x, v, &b, false).0),
            rt,
            at,
        );
        assert_close(
            "dbeta",
            &gb,
            &numeric_grad(&b, eps, |v| run(&x, &g, v, false).0),
            rt,
            at,
        );
    }

    #[test]
    fn train_gradients() {
        check_grads(true, (2, 2));
        // Planes longer than one block of the blocked sums, with a remainder.
        check_grads(true, (16, 20));
    }

    #[test]
    fn infer_gradients() {
        check_grads(false, (2, 2));
    }

    /// The fused ops equal batch norm followed by dfdx's ReLU: outputs and
    /// every gradient (a numeric check would straddle ReLU's kink).
    #[test]
    fn fused_relu_matches_batch_norm_then_relu() {
        let dev: Cpu = Default::default();
        let (n, c, h, w) = (2, 3, 16, 20);
        let x = rand_vec(n * c * h * w, 21);
        let g: Vec<f32> = rand_vec(c, 22).iter().map(|v| v + 1.5).collect();
        let b = rand_vec(c, 23);
        let r = rand_vec(n * c * h * w, 24);
        let (rm, rv) = (vec![0.1, -0.2, 0.3], vec![0.5, 1.5, 0.8]);
        for train in [true, false] {
            let run = |fused: bool| {
                let xt = dev.tensor_from_vec(x.clone(), (n, c, h, w));
                let gt = dev.tensor_from_vec(g.clone(), (c,));
                let bt = dev.tensor_from_vec(b.clone(), (c,));
                let rt = dev.tensor_from_vec(r.clone(), (n, c, h, w));
                let act = if fused {
                    Activation::Relu
                } else {
                    Activation::Identity
                };
                let y = bn(train, xt.leaky_trace(), &gt, &bt, (&rm, &rv), act);
                // Unfused: dfdx's own ReLU after the batch norm.
                let y = if fused { y } else { y.relu() };
                let out = y.as_vec();
                let grads = (y * rt).sum::<Rank0, _>().backward();
                let gs = [
                    grads.get(&xt).as_vec(),
                    grads.get(&gt).as_vec(),
                    grads.get(&bt).as_vec(),
                ];
                (out, gs)
            };
            let ((y1, g1), (y0, g0)) = (run(true), run(false));
            assert!(y1.contains(&0.0) && y1.iter().any(|v| *v > 0.0));
            assert_close_f32("y", &y1, &y0, 1e-6);
            for (i, name) in ["dx", "dgamma", "dbeta"].iter().enumerate() {
                assert_close_f32(name, &g1[i], &g0[i], 1e-5);
            }
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let dev: Cpu = Default::default();
        let x = dev.zeros_like(&(1, 2, 2, 2));
        let (g2, g3) = (dev.zeros_like(&(2,)), dev.zeros_like(&(3,)));
        assert!(batch_norm2d_train(x.clone(), &g3, &g2, EPS, Activation::Identity).is_err());
        assert!(batch_norm2d_infer(
            x.clone(),
            &g2,
            &g2,
            &[0.0],
            &[1.0, 1.0],
            EPS,
            Activation::Relu
        )
        .is_err());
        assert!(batch_norm2d_train(x, &g2, &g2, EPS, Activation::Relu).is_ok());
    }
}
