//! 2-D convolution, `k x k` kernel (odd `k`), stride 1, zero "same" padding,
//! optional bias: im2col tiles + GEMM, forward and backward.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::host::{add_bias_grad, add_into, add_partials, par_init, to_host, with_scratch};
use super::linalg::{sgemm, MatRef};
use super::{take_grad, HostDevice, OpError, Shape4};

/// Output pixels per im2col tile: large enough for efficient GEMMs, small enough
/// that the tile (`cin * k * k * TILE_PIXELS` floats) stays cache-resident
/// instead of materialising the whole 9x-expanded image.
const TILE_PIXELS: usize = 4096;

/// `y = conv(x, weight) + bias` with `x: (N, Cin, H, W)`,
/// `weight: (Cout, Cin, k, k)` (PyTorch layout), `bias: (Cout,)`,
/// `y: (N, Cout, H, W)`; `k` odd, padding `k / 2`.
pub fn conv2d<D: HostDevice, T: Tape<f32, D>>(
    x: Tensor<Shape4, f32, D, T>,
    weight: &Tensor<Shape4, f32, D>,
    bias: Option<&Tensor<(usize,), f32, D>>,
) -> Result<Tensor<Shape4, f32, D, T>, OpError> {
    const OP: &str = "conv2d";
    let (n, cin, h, w) = *x.shape();
    let (cout, wcin, kh, kw) = *weight.shape();
    if [n, cin, h, w, cout].contains(&0) {
        return Err(OpError::shape(
            OP,
            format!(
                "empty tensor: input {:?}, weight {:?}",
                x.shape(),
                weight.shape()
            ),
        ));
    }
    if wcin != cin {
        return Err(OpError::shape(
            OP,
            format!("input has {cin} channels, weight expects {wcin}"),
        ));
    }
    if kh != kw || kh % 2 == 0 {
        return Err(OpError::shape(
            OP,
            format!("kernel must be square and odd, got {kh}x{kw}"),
        ));
    }
    if let Some(b) = bias {
        if b.shape().0 != cout {
            return Err(OpError::shape(
                OP,
                format!(
                    "bias has {} entries for {cout} output channels",
                    b.shape().0
                ),
            ));
        }
    }
    if super::native::enabled::<D>() {
        return super::native::conv2d(x, weight, bias);
    }
    let g = Geom {
        n,
        cin,
        cout,
        h,
        w,
        k: kh,
        tile_pixels: TILE_PIXELS,
    };
    // The input is read in place (on the CPU) and kept for the backward pass
    // by reference count; the weights are copied, being small and updated
    // in place by the optimiser.
    let ws = to_host(weight);
    let bs = bias.map(to_host);
    let ys = forward(&g, &D::host_view(&x), &ws, bs.as_deref());

    let (x, mut tape) = x.split_tape();
    let dev = x.device().clone();
    let y = dev
        .try_tensor_from_vec(ys, (n, cout, h, w))
        .map_err(|e| OpError::device(OP, e))?;
    if T::OWNS_TAPE {
        let (x_g, w_g, b_g, y_g) = (
            x.ghost(),
            weight.ghost(),
            bias.map(|b| b.ghost()),
            y.ghost(),
        );
        let x_kept = x.clone();
        tape.add_backward_op(move |grads| {
            let gy_buf = take_grad!(grads, y_g, dev);
            let xs = D::host_view(&x_kept);
            D::with_host(&gy_buf, |gy| -> Result<(), D::Err> {
                let partials = D::with_host_mut(grads.get_or_alloc_mut(&x_g)?, |gx| {
                    backward(&g, &xs, &ws, gy, gx)
                })?;
                D::with_host_mut(grads.get_or_alloc_mut(&w_g)?, |gw| {
                    add_partials(gw, &partials)
                })?;
                if let Some(b_g) = &b_g {
                    D::with_host_mut(grads.get_or_alloc_mut(b_g)?, |gb| {
                        add_bias_grad(gb, gy, (g.n, g.cout, g.h * g.w))
                    })?;
                }
                Ok(())
            })?
        });
    }
    Ok(y.put_tape(tape))
}

/// Problem geometry shared by the kernels.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub tile_pixels: usize,
}

impl Geom {
    fn hw(&self) -> usize {
        self.h * self.w
    }
    fn ckk(&self) -> usize {
        self.cin * self.k * self.k
    }
    fn tile_rows(&self) -> usize {
        (self.tile_pixels / self.w.max(1)).clamp(1, self.h.max(1))
    }
}

/// Forward kernel: returns `y` (N, Cout, H, W).
pub(crate) fn forward(g: &Geom, x: &[f32], wt: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (hw, cin, cout) = (g.hw(), g.cin, g.cout);
    assert_eq!(x.len(), g.n * cin * hw);
    assert_eq!(wt.len(), cout * g.ckk());
    par_init(g.n * cout * hw, cout * hw, |i, y_img| {
        forward_image(g, &x[i * cin * hw..(i + 1) * cin * hw], wt, bias, y_img)
    })
}

fn forward_image(g: &Geom, x_img: &[f32], wt: &[f32], bias: Option<&[f32]>, y_img: &mut [f32]) {
    let (hw, w, ckk) = (g.hw(), g.w, g.ckk());
    for (co, plane) in y_img.chunks_mut(hw).enumerate() {
        plane.fill(bias.map_or(0.0, |b| b[co]));
    }
    if g.k == 1 {
        // A 1x1 convolution is a plain GEMM over the image itself.
        sgemm(
            g.cout,
            hw,
            g.cin,
            y_img,
            hw,
            true,
            MatRef::new(wt, g.cin),
            MatRef::new(x_img, hw),
        );
        return;
    }
    let rows = g.tile_rows();
    with_scratch(ckk * rows * w, |col| {
        for y0 in (0..g.h).step_by(rows) {
            let r = rows.min(g.h - y0);
            let l = r * w;
            let col = &mut col[..ckk * l];
            im2col(g, x_img, y0, r, col);
            sgemm(
                g.cout,
                l,
                ckk,
                &mut y_img[y0 * w..],
                hw,
                true,
                MatRef::new(wt, ckk),
                MatRef::new(col, l),
            );
        }
    });
}

/// Backward kernel: adds the input gradient into `gx` and returns the weight
/// gradient of each image (summed by the caller in image order).
pub(crate) fn backward(
    g: &Geom,
    x: &[f32],
    wt: &[f32],
    gy: &[f32],
    gx: &mut [f32],
) -> Vec<Vec<f32>> {
    let (hw, cin, cout) = (g.hw(), g.cin, g.cout);
    assert_eq!(gy.len(), g.n * cout * hw);
    assert_eq!(gx.len(), x.len());
    gx.par_chunks_mut(cin * hw)
        .zip(x.par_chunks(cin * hw))
        .zip(gy.par_chunks(cout * hw))
        .map(|((gx_img, x_img), gy_img)| {
            let mut gw = vec![0.0f32; cout * g.ckk()];
            backward_image(g, x_img, wt, gy_img, gx_img, &mut gw);
            gw
        })
        .collect()
}

fn backward_image(
    g: &Geom,
    x_img: &[f32],
    wt: &[f32],
    gy_img: &[f32],
    gx_img: &mut [f32],
    gw: &mut [f32],
) {
    let (hw, w, ckk, cin, cout) = (g.hw(), g.w, g.ckk(), g.cin, g.cout);
    if g.k == 1 {
        // gw = gy · xᵀ ; gx += wᵀ · gy
        sgemm(
            cout,
            cin,
            hw,
            gw,
            cin,
            false,
            MatRef::new(gy_img, hw),
            MatRef::t(x_img, hw),
        );
        sgemm(
            cin,
            hw,
            cout,
            gx_img,
            hw,
            true,
            MatRef::t(wt, cin),
            MatRef::new(gy_img, hw),
        );
        return;
    }
    let rows = g.tile_rows();
    let tile = ckk * rows * w;
    let mut gwt = vec![0.0f32; ckk * cout];
    let gwt = &mut gwt[..];
    with_scratch(2 * tile, |buf| {
        let (col, dcol) = buf.split_at_mut(tile);
        for y0 in (0..g.h).step_by(rows) {
            let r = rows.min(g.h - y0);
            let l = r * w;
            let (col, dcol) = (&mut col[..ckk * l], &mut dcol[..ckk * l]);
            im2col(g, x_img, y0, r, col);
            let gy_tile = MatRef::new(&gy_img[y0 * w..], hw);
            // gwᵀ += col · gy_tileᵀ, tiles in row order. Transposed so that
            // the GEMM packs the gradient tile (Cout rows) rather than the
            // column tile (Cin*k*k rows, a transposing gather).
            sgemm(
                ckk,
                cout,
                l,
                gwt,
                cout,
                y0 > 0,
                MatRef::new(col, l),
                MatRef::t(&gy_img[y0 * w..], hw),
            );
            // dcol = wᵀ · gy_tile, then scatter-add back onto the input rows.
            sgemm(ckk, l, cout, dcol, l, false, MatRef::t(wt, ckk), gy_tile);
            col2im_add(g, dcol, y0, r, gx_img);
        }
    });
    for co in 0..cout {
        for p in 0..ckk {
            gw[co * ckk + p] = gwt[p * cout + co];
        }
    }
}

/// Fills `col` (`Cin*k*k` rows of `rows*W` pixels) with the zero-padded input
/// patches for output rows `y0..y0+rows`.
fn im2col(g: &Geom, x_img: &[f32], y0: usize, rows: usize, col: &mut [f32]) {
    let (h, w, k) = (g.h, g.w, g.k);
    let p = (k / 2) as isize;
    let l = rows * w;
    for ci in 0..g.cin {
        let plane = &x_img[ci * h * w..(ci + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let r = (ci * k + ky) * k + kx;
                let dst = &mut col[r * l..(r + 1) * l];
                let dx = kx as isize - p;
                for (yy, d) in dst.chunks_mut(w).enumerate() {
                    let sy = (y0 + yy + ky) as isize - p;
                    if sy < 0 || sy >= h as isize {
                        d.fill(0.0);
                    } else {
                        let s = &plane[sy as usize * w..(sy as usize + 1) * w];
                        shift_copy(d, s, dx);
                    }
                }
            }
        }
    }
}

/// `d[x] = s[x + dx]` where that is inside the row, else 0.
fn shift_copy(d: &mut [f32], s: &[f32], dx: isize) {
    let w = d.len();
    let a = dx.unsigned_abs();
    if a >= w {
        d.fill(0.0);
    } else if dx >= 0 {
        d[..w - a].copy_from_slice(&s[a..]);
        d[w - a..].fill(0.0);
    } else {
        d[..a].fill(0.0);
        d[a..].copy_from_slice(&s[..w - a]);
    }
}

/// Adjoint of [`im2col`]: adds `dcol` back onto the input pixels it came from.
fn col2im_add(g: &Geom, dcol: &[f32], y0: usize, rows: usize, gx_img: &mut [f32]) {
    let (h, w, k) = (g.h, g.w, g.k);
    let p = (k / 2) as isize;
    let l = rows * w;
    for ci in 0..g.cin {
        let plane = &mut gx_img[ci * h * w..(ci + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let r = (ci * k + ky) * k + kx;
                let src = &dcol[r * l..(r + 1) * l];
                let dx = kx as isize - p;
                let a = dx.unsigned_abs();
                if a >= w {
                    continue;
                }
                for (yy, d) in src.chunks(w).enumerate() {
                    let sy = (y0 + yy + ky) as isize - p;
                    if sy < 0 || sy >= h as isize {
                        continue;
                    }
                    let row = &mut plane[sy as usize * w..(sy as usize + 1) * w];
                    if dx >= 0 {
                        add_into(&mut row[a..], &d[..w - a]);
                    } else {
                        add_into(&mut row[..w - a], &d[a..]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    /// Direct six-loop convolution.
    fn naive(g: &Geom, x: &[f32], wt: &[f32], b: Option<&[f32]>) -> Vec<f32> {
        let (h, w, k) = (g.h as isize, g.w as isize, g.k as isize);
        let p = k / 2;
        let mut y = vec![0.0; g.n * g.cout * g.hw()];
        for n in 0..g.n {
            for co in 0..g.cout {
                for oy in 0..h {
                    for ox in 0..w {
                        let mut s = b.map_or(0.0, |b| b[co]) as f64;
                        for ci in 0..g.cin {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = (oy + ky - p, ox + kx - p);
                                    if iy < 0 || iy >= h || ix < 0 || ix >= w {
                                        continue;
                                    }
                                    let xv = x[((n * g.cin + ci) * g.h + iy as usize) * g.w
                                        + ix as usize];
                                    let wv = wt[((co * g.cin + ci) * g.k + ky as usize) * g.k
                                        + kx as usize];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((n * g.cout + co) * g.h + oy as usize) * g.w + ox as usize] = s as f32;
                    }
                }
            }
        }
        y
    }

    fn geom(n: usize, cin: usize, cout: usize, h: usize, w: usize, k: usize, tile: usize) -> Geom {
        Geom {
            n,
            cin,
            cout,
            h,
            w,
            k,
            tile_pixels: tile,
        }
    }

    #[test]
    fn forward_matches_naive() {
        for (k, tile, bias) in [
            (3, 4096, true),
            (3, 7, false),
            (1, 4096, true),
            (5, 12, true),
            (3, 1, true),
        ] {
            let g = geom(2, 3, 4, 5, 6, k, tile);
            let x = rand_vec(g.n * g.cin * g.hw(), 1);
            let wt = rand_vec(g.cout * g.ckk(), 2);
            let b = rand_vec(g.cout, 3);
            let b = bias.then_some(&b[..]);
            assert_close_f32(
                &format!("k{k} tile{tile}"),
                &forward(&g, &x, &wt, b),
                &naive(&g, &x, &wt, b),
                1e-5,
            );
        }
    }

    #[test]
    fn tiny_images_pad_correctly() {
        // 1-pixel-wide rows: every horizontal tap but the centre falls outside.
        for (h, w) in [(1, 1), (3, 1), (1, 4)] {
            let g = geom(1, 2, 3, h, w, 3, 4096);
            let x = rand_vec(g.n * g.cin * g.hw(), 4);
            let wt = rand_vec(g.cout * g.ckk(), 5);
            assert_close_f32(
                "tiny",
                &forward(&g, &x, &wt, None),
                &naive(&g, &x, &wt, None),
                1e-5,
            );
        }
    }

    /// Gradients of `sum(r * conv(x, w) + b)` against central differences.
    fn check_grads(k: usize, h: usize, w: usize) {
        let dev: Cpu = Default::default();
        let (n, cin, cout) = (2, 3, 2);
        let x = rand_vec(n * cin * h * w, 11);
        let wt = rand_vec(cout * cin * k * k, 12);
        let b = rand_vec(cout, 13);
        let r = rand_vec(n * cout * h * w, 14);
        let xt = dev.tensor_from_vec(x.clone(), (n, cin, h, w));
        let wtt = dev.tensor_from_vec(wt.clone(), (cout, cin, k, k));
        let bt = dev.tensor_from_vec(b.clone(), (cout,));
        let rt = dev.tensor_from_vec(r.clone(), (n, cout, h, w));
        let y = conv2d(xt.leaky_trace(), &wtt, Some(&bt)).unwrap();
        let grads = (y * rt).sum::<Rank0, _>().backward();
        let f = |x: &[f32], wt: &[f32], b: &[f32]| {
            let xt = dev.tensor_from_vec(x.to_vec(), (n, cin, h, w));
            let wtt = dev.tensor_from_vec(wt.to_vec(), (cout, cin, k, k));
            let bt = dev.tensor_from_vec(b.to_vec(), (cout,));
            dot(&conv2d(xt, &wtt, Some(&bt)).unwrap().as_vec(), &r)
        };
        let eps = 1e-2;
        let nx = numeric_grad(&x, eps, |v| f(v, &wt, &b));
        let nw = numeric_grad(&wt, eps, |v| f(&x, v, &b));
        let nb = numeric_grad(&b, eps, |v| f(&x, &wt, v));
        assert_close("dx", &grads.get(&xt).as_vec(), &nx, 1e-3, 1e-3);
        assert_close("dw", &grads.get(&wtt).as_vec(), &nw, 1e-3, 1e-3);
        assert_close("db", &grads.get(&bt).as_vec(), &nb, 1e-3, 1e-3);
    }

    #[test]
    fn gradients_3x3() {
        check_grads(3, 4, 5);
    }

    #[test]
    fn gradients_5x5() {
        // Padding wider than one pixel.
        check_grads(5, 6, 7);
    }

    #[test]
    fn gradients_1x1() {
        check_grads(1, 3, 4);
    }

    #[test]
    fn backward_tiling_matches_untiled() {
        let mk = |tile| geom(2, 3, 4, 9, 5, 3, tile);
        let (g1, g2) = (mk(4096), mk(10));
        let x = rand_vec(g1.n * g1.cin * g1.hw(), 21);
        let wt = rand_vec(g1.cout * g1.ckk(), 22);
        let gy = rand_vec(g1.n * g1.cout * g1.hw(), 23);
        let (mut gx1, mut gx2) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        let p1 = backward(&g1, &x, &wt, &gy, &mut gx1);
        let p2 = backward(&g2, &x, &wt, &gy, &mut gx2);
        assert_close_f32("gx", &gx2, &gx1, 1e-5);
        for (a, b) in p2.iter().zip(&p1) {
            assert_close_f32("gw", a, b, 1e-5);
        }
    }

    #[test]
    fn deterministic() {
        let g = geom(4, 8, 8, 32, 32, 3, 256);
        let x = rand_vec(g.n * g.cin * g.hw(), 31);
        let wt = rand_vec(g.cout * g.ckk(), 32);
        let gy = rand_vec(g.n * g.cout * g.hw(), 33);
        let run = || {
            let y = forward(&g, &x, &wt, None);
            let mut gx = vec![0.0; x.len()];
            let gw = backward(&g, &x, &wt, &gy, &mut gx);
            (y, gx, gw)
        };
        let a = run();
        for _ in 0..3 {
            assert!(a == run(), "conv2d is not bit-reproducible");
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let dev: Cpu = Default::default();
        let x = dev.zeros_like(&(1, 3, 4, 4));
        let w_bad_c = dev.zeros_like(&(2, 4, 3, 3));
        let w_even = dev.zeros_like(&(2, 3, 2, 2));
        let w = dev.zeros_like(&(2, 3, 3, 3));
        let b_bad = dev.zeros_like(&(3,));
        assert!(conv2d(x.clone(), &w_bad_c, None).is_err());
        assert!(conv2d(x.clone(), &w_even, None).is_err());
        assert!(conv2d(x.clone(), &w, Some(&b_bad)).is_err());
        assert!(conv2d(x, &w, None).is_ok());
    }
}
