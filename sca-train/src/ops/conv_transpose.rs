//! 2x2 transposed convolution with stride 2 (the U-Net's learned up-sampling),
//! with bias: one GEMM per image plus a pixel shuffle, forward and backward.
//!
//! With kernel size equal to the stride the output windows do not overlap, so
//! `y[co, 2i+a, 2j+b] = bias[co] + Σ_ci x[ci, i, j] · w[ci, co, a, b]`.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::host::{add_bias_grad, add_partials, par_init, to_host, with_scratch};
use super::linalg::{sgemm, MatRef};
use super::{take_grad, HostDevice, OpError, Shape4};

/// `y = conv_transpose(x, weight) + bias` with `x: (N, Cin, H, W)`,
/// `weight: (Cin, Cout, 2, 2)` (PyTorch `ConvTranspose2d` layout),
/// `bias: (Cout,)`, `y: (N, Cout, 2H, 2W)`.
pub fn conv_transpose2x2<D: HostDevice, T: Tape<f32, D>>(
    x: Tensor<Shape4, f32, D, T>,
    weight: &Tensor<Shape4, f32, D>,
    bias: &Tensor<(usize,), f32, D>,
) -> Result<Tensor<Shape4, f32, D, T>, OpError> {
    const OP: &str = "conv_transpose2x2";
    let (n, cin, h, w) = *x.shape();
    let (wcin, cout, kh, kw) = *weight.shape();
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
    if wcin != cin || (kh, kw) != (2, 2) {
        return Err(OpError::shape(
            OP,
            format!(
                "weight {:?} does not fit input with {cin} channels; expected ({cin}, Cout, 2, 2)",
                weight.shape()
            ),
        ));
    }
    if bias.shape().0 != cout {
        return Err(OpError::shape(
            OP,
            format!(
                "bias has {} entries for {cout} output channels",
                bias.shape().0
            ),
        ));
    }
    if super::native::enabled::<D>() {
        return super::native::conv_transpose2x2(x, weight, bias);
    }
    let g = Geom { n, cin, cout, h, w };
    let ws = to_host(weight);
    let bs = to_host(bias);
    let ys = forward(&g, &D::host_view(&x), &ws, &bs);

    let (x, mut tape) = x.split_tape();
    let dev = x.device().clone();
    let y = dev
        .try_tensor_from_vec(ys, (n, cout, 2 * h, 2 * w))
        .map_err(|e| OpError::device(OP, e))?;
    if T::OWNS_TAPE {
        let (x_g, w_g, b_g, y_g) = (x.ghost(), weight.ghost(), bias.ghost(), y.ghost());
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
                D::with_host_mut(grads.get_or_alloc_mut(&b_g)?, |gb| {
                    add_bias_grad(gb, gy, (g.n, g.cout, 4 * g.h * g.w))
                })?;
                Ok(())
            })?
        });
    }
    Ok(y.put_tape(tape))
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
}

/// Forward kernel: `y` is (N, Cout, 2H, 2W).
pub(crate) fn forward(g: &Geom, x: &[f32], wt: &[f32], bias: &[f32]) -> Vec<f32> {
    let (hw, cin, cout) = (g.h * g.w, g.cin, g.cout);
    assert_eq!(x.len(), g.n * cin * hw);
    assert_eq!(wt.len(), cin * cout * 4);
    par_init(g.n * cout * 4 * hw, cout * 4 * hw, |i, y_img| {
        let x_img = &x[i * cin * hw..(i + 1) * cin * hw];
        with_scratch(cout * 4 * hw, |t| {
            // t (Cout*4 x HW) = wᵀ (Cout*4 x Cin) · x (Cin x HW)
            sgemm(
                cout * 4,
                hw,
                cin,
                t,
                hw,
                false,
                MatRef::t(wt, cout * 4),
                MatRef::new(x_img, hw),
            );
            for co in 0..cout {
                let plane = &mut y_img[co * 4 * hw..(co + 1) * 4 * hw];
                for ab in 0..4 {
                    let (a, b) = (ab / 2, ab % 2);
                    let src = &t[(co * 4 + ab) * hw..(co * 4 + ab + 1) * hw];
                    for i in 0..g.h {
                        let row = &mut plane[(2 * i + a) * 2 * g.w..(2 * i + a + 1) * 2 * g.w];
                        for (j, v) in src[i * g.w..(i + 1) * g.w].iter().enumerate() {
                            row[2 * j + b] = *v + bias[co];
                        }
                    }
                }
            }
        })
    })
}

/// Backward kernel: adds the input gradient into `gx`, returns per-image weight
/// gradients (summed by the caller in image order).
pub(crate) fn backward(
    g: &Geom,
    x: &[f32],
    wt: &[f32],
    gy: &[f32],
    gx: &mut [f32],
) -> Vec<Vec<f32>> {
    let (hw, cin, cout) = (g.h * g.w, g.cin, g.cout);
    assert_eq!(gy.len(), g.n * cout * 4 * hw);
    assert_eq!(gx.len(), x.len());
    gx.par_chunks_mut(cin * hw)
        .zip(x.par_chunks(cin * hw))
        .zip(gy.par_chunks(cout * 4 * hw))
        .map(|((gx_img, x_img), gy_img)| {
            let mut gw = vec![0.0f32; cin * cout * 4];
            with_scratch(cout * 4 * hw, |t| {
                // Gather gy back into the (Cout*4 x HW) layout of the forward GEMM.
                for co in 0..cout {
                    let plane = &gy_img[co * 4 * hw..(co + 1) * 4 * hw];
                    for ab in 0..4 {
                        let (a, b) = (ab / 2, ab % 2);
                        let dst = &mut t[(co * 4 + ab) * hw..(co * 4 + ab + 1) * hw];
                        for i in 0..g.h {
                            let row = &plane[(2 * i + a) * 2 * g.w..(2 * i + a + 1) * 2 * g.w];
                            for (j, d) in dst[i * g.w..(i + 1) * g.w].iter_mut().enumerate() {
                                *d = row[2 * j + b];
                            }
                        }
                    }
                }
                // gx += w (Cin x Cout*4) · t ; gw = x · tᵀ
                sgemm(
                    cin,
                    hw,
                    cout * 4,
                    gx_img,
                    hw,
                    true,
                    MatRef::new(wt, cout * 4),
                    MatRef::new(t, hw),
                );
                sgemm(
                    cin,
                    cout * 4,
                    hw,
                    &mut gw,
                    cout * 4,
                    false,
                    MatRef::new(x_img, hw),
                    MatRef::t(t, hw),
                );
            });
            gw
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    fn naive(g: &Geom, x: &[f32], wt: &[f32], b: &[f32]) -> Vec<f32> {
        let (oh, ow) = (2 * g.h, 2 * g.w);
        let mut y = vec![0.0; g.n * g.cout * oh * ow];
        for n in 0..g.n {
            for co in 0..g.cout {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (i, a, j, bb) = (oy / 2, oy % 2, ox / 2, ox % 2);
                        let mut s = b[co] as f64;
                        for ci in 0..g.cin {
                            s += x[((n * g.cin + ci) * g.h + i) * g.w + j] as f64
                                * wt[((ci * g.cout + co) * 2 + a) * 2 + bb] as f64;
                        }
                        y[((n * g.cout + co) * oh + oy) * ow + ox] = s as f32;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn forward_matches_naive() {
        let g = Geom {
            n: 2,
            cin: 3,
            cout: 4,
            h: 3,
            w: 5,
        };
        let x = rand_vec(g.n * g.cin * g.h * g.w, 1);
        let wt = rand_vec(g.cin * g.cout * 4, 2);
        let b = rand_vec(g.cout, 3);
        assert_close_f32(
            "convT",
            &forward(&g, &x, &wt, &b),
            &naive(&g, &x, &wt, &b),
            1e-5,
        );
    }

    #[test]
    fn gradients() {
        let dev: Cpu = Default::default();
        let (n, cin, cout, h, w) = (2, 3, 2, 2, 3);
        let x = rand_vec(n * cin * h * w, 11);
        let wt = rand_vec(cin * cout * 4, 12);
        let b = rand_vec(cout, 13);
        let r = rand_vec(n * cout * 4 * h * w, 14);
        let xt = dev.tensor_from_vec(x.clone(), (n, cin, h, w));
        let wtt = dev.tensor_from_vec(wt.clone(), (cin, cout, 2, 2));
        let bt = dev.tensor_from_vec(b.clone(), (cout,));
        let rt = dev.tensor_from_vec(r.clone(), (n, cout, 2 * h, 2 * w));
        let y = conv_transpose2x2(xt.leaky_trace(), &wtt, &bt).unwrap();
        let grads = (y * rt).sum::<Rank0, _>().backward();
        let f = |x: &[f32], wt: &[f32], b: &[f32]| {
            let xt = dev.tensor_from_vec(x.to_vec(), (n, cin, h, w));
            let wtt = dev.tensor_from_vec(wt.to_vec(), (cin, cout, 2, 2));
            let bt = dev.tensor_from_vec(b.to_vec(), (cout,));
            dot(&conv_transpose2x2(xt, &wtt, &bt).unwrap().as_vec(), &r)
        };
        let eps = 1e-2;
        assert_close(
            "dx",
            &grads.get(&xt).as_vec(),
            &numeric_grad(&x, eps, |v| f(v, &wt, &b)),
            1e-3,
            1e-3,
        );
        assert_close(
            "dw",
            &grads.get(&wtt).as_vec(),
            &numeric_grad(&wt, eps, |v| f(&x, v, &b)),
            1e-3,
            1e-3,
        );
        assert_close(
            "db",
            &grads.get(&bt).as_vec(),
            &numeric_grad(&b, eps, |v| f(&x, &wt, v)),
            1e-3,
            1e-3,
        );
    }

    #[test]
    fn deterministic() {
        let g = Geom {
            n: 4,
            cin: 8,
            cout: 4,
            h: 16,
            w: 16,
        };
        let x = rand_vec(g.n * g.cin * g.h * g.w, 31);
        let wt = rand_vec(g.cin * g.cout * 4, 32);
        let gy = rand_vec(g.n * g.cout * 4 * g.h * g.w, 33);
        let run = || {
            let y = forward(&g, &x, &wt, &[0.0; 4]);
            let mut gx = vec![0.0; x.len()];
            (y, backward(&g, &x, &wt, &gy, &mut gx), gx)
        };
        let a = run();
        assert!(a == run());
    }

    #[test]
    fn rejects_bad_shapes() {
        let dev: Cpu = Default::default();
        let x = dev.zeros_like(&(1, 3, 4, 4));
        let b = dev.zeros_like(&(2,));
        assert!(conv_transpose2x2(x.clone(), &dev.zeros_like(&(4, 2, 2, 2)), &b).is_err());
        assert!(conv_transpose2x2(x.clone(), &dev.zeros_like(&(3, 2, 3, 3)), &b).is_err());
        assert!(conv_transpose2x2(x.clone(), &dev.zeros_like(&(3, 3, 2, 2)), &b).is_err());
        assert!(conv_transpose2x2(x, &dev.zeros_like(&(3, 2, 2, 2)), &b).is_ok());
    }
}
