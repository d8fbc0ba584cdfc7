//! Channel concatenation of two NCHW tensors (the U-Net's skip connections),
//! forward and backward in parallel over images on the host (dfdx's
//! `concat_along` copies element by element on one thread); on a device
//! with [`HostDevice::DFDX_KERNELS`] set, dfdx's own `concat_along`.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::host::{add_into, par_init};
use super::{take_grad, HostDevice, OpError, Shape4};

/// `[a, b]` along the channel axis: `(N, Ca, H, W) ++ (N, Cb, H, W) -> (N, Ca+Cb, H, W)`.
///
/// As with any dfdx binary op, the two tapes are merged; to reuse a traced
/// tensor both here and elsewhere, pass a `with_empty_tape()` copy of it here.
pub fn concat_channels<D, T1, T2>(
    a: Tensor<Shape4, f32, D, T1>,
    b: Tensor<Shape4, f32, D, T2>,
) -> Result<Tensor<Shape4, f32, D, T1>, OpError>
where
    D: HostDevice,
    T1: Tape<f32, D> + Merge<T2>,
    T2: Tape<f32, D>,
{
    const OP: &str = "concat_channels";
    let (sa, sb) = (*a.shape(), *b.shape());
    if (sa.0, sa.2, sa.3) != (sb.0, sb.2, sb.3) {
        return Err(OpError::shape(
            OP,
            format!("batch and spatial sizes differ: {sa:?} vs {sb:?}"),
        ));
    }
    if super::native::enabled::<D>() {
        return super::freeing_output_grad(a, |a| (a, b).try_concat_along(Axis::<1>))
            .map_err(|e| OpError::device(OP, e));
    }
    let (n, ca, h, w) = sa;
    let cb = sb.1;
    let hw = h * w;
    let (la, lb) = (ca * hw, cb * hw);
    let ys = {
        let (av, bv) = (D::host_view(&a), D::host_view(&b));
        par_init(n * (la + lb), la + lb, |i, y| {
            y[..la].copy_from_slice(&av[i * la..(i + 1) * la]);
            y[la..].copy_from_slice(&bv[i * lb..(i + 1) * lb]);
        })
    };
    let (a, ta) = a.split_tape();
    let (b, tb) = b.split_tape();
    let mut tape = ta.merge(tb);
    let dev = a.device().clone();
    let y = dev
        .try_tensor_from_vec(ys, (n, ca + cb, h, w))
        .map_err(|e| OpError::device(OP, e))?;
    if T1::OWNS_TAPE {
        let (a_g, b_g, y_g) = (a.ghost(), b.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let gy_buf = take_grad!(grads, y_g, dev);
            D::with_host(&gy_buf, |gy| -> Result<(), D::Err> {
                D::with_host_mut(grads.get_or_alloc_mut(&a_g)?, |ga| {
                    ga.par_chunks_mut(la)
                        .zip(gy.par_chunks(la + lb))
                        .for_each(|(g, y)| add_into(g, &y[..la]))
                })?;
                D::with_host_mut(grads.get_or_alloc_mut(&b_g)?, |gb| {
                    gb.par_chunks_mut(lb)
                        .zip(gy.par_chunks(la + lb))
                        .for_each(|(g, y)| add_into(g, &y[la..]))
                })?;
                Ok(())
            })?
        });
    }
    Ok(y.put_tape(tape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    #[test]
    fn concatenates_and_routes_gradients() {
        let dev: Cpu = Default::default();
        let a = rand_vec(2 * 2 * 3, 1);
        let b = rand_vec(2 * 3 * 3, 2);
        let at = dev.tensor_from_vec(a.clone(), (2, 2, 3, 1));
        let bt = dev.tensor_from_vec(b.clone(), (2, 3, 3, 1));
        let y = concat_channels(at.leaky_trace(), bt.clone()).unwrap();
        assert_eq!(*y.shape(), (2, 5, 3, 1));
        let yv = y.as_vec();
        // Image 0: a's 2 channels then b's 3; image 1 likewise.
        assert_eq!(&yv[..6], &a[..6]);
        assert_eq!(&yv[6..15], &b[..9]);
        assert_eq!(&yv[15..21], &a[6..]);
        let r = rand_vec(30, 3);
        let rt = dev.tensor_from_vec(r.clone(), (2, 5, 3, 1));
        let grads = (y * rt).sum::<Rank0, _>().backward();
        let ga = grads.get(&at).as_vec();
        assert_eq!(&ga[..6], &r[..6]);
        assert_eq!(&ga[6..], &r[15..21]);
        // Both inputs traced (the tapes merged): b's gradient too.
        let y = concat_channels(at.leaky_trace(), bt.leaky_trace()).unwrap();
        let rt = dev.tensor_from_vec(r.clone(), (2, 5, 3, 1));
        let grads = (y * rt).sum::<Rank0, _>().backward();
        let gb = grads.get(&bt).as_vec();
        assert_eq!(&gb[..9], &r[6..15]);
        assert_eq!(&gb[9..], &r[21..]);
    }

    #[test]
    fn rejects_mismatched_sizes() {
        let dev: Cpu = Default::default();
        let a = dev.zeros_like(&(1, 2, 4, 4));
        assert!(concat_channels(a.clone(), dev.zeros_like(&(1, 2, 4, 2))).is_err());
        assert!(concat_channels(a, dev.zeros_like(&(2, 2, 4, 4))).is_err());
    }
}
