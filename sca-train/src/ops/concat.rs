//! Channel concatenation of two NCHW tensors (the U-Net's skip connections):
//! a shape-checked wrapper over dfdx's stable `concat_along(Axis::<1>)`, which
//! would panic rather than report mismatched batch or spatial sizes.

use dfdx::prelude::*;

use super::{OpError, Shape4};

/// `[a, b]` along the channel axis: `(N, Ca, H, W) ++ (N, Cb, H, W) -> (N, Ca+Cb, H, W)`.
///
/// As with any dfdx binary op, the two tapes are merged; to reuse a traced
/// tensor both here and elsewhere, pass a `with_empty_tape()` copy of it here.
pub fn concat_channels<D, T1, T2>(
    a: Tensor<Shape4, f32, D, T1>,
    b: Tensor<Shape4, f32, D, T2>,
) -> Result<Tensor<Shape4, f32, D, T1>, OpError>
where
    D: super::HostDevice,
    T1: Tape<f32, D> + Merge<T2>,
    T2: Tape<f32, D>,
{
    let (sa, sb) = (*a.shape(), *b.shape());
    if (sa.0, sa.2, sa.3) != (sb.0, sb.2, sb.3) {
        return Err(OpError::shape(
            "concat_channels",
            format!("batch and spatial sizes differ: {sa:?} vs {sb:?}"),
        ));
    }
    (a, b)
        .try_concat_along(Axis::<1>)
        .map_err(|e| OpError::device("concat_channels", e))
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
    }

    #[test]
    fn rejects_mismatched_sizes() {
        let dev: Cpu = Default::default();
        let a = dev.zeros_like(&(1, 2, 4, 4));
        assert!(concat_channels(a.clone(), dev.zeros_like(&(1, 2, 4, 2))).is_err());
        assert!(concat_channels(a, dev.zeros_like(&(2, 2, 4, 4))).is_err());
    }
}
