use crate::tensor_ops::cpu_kernels::UnaryDerivative;

impl<F: num_traits::Float> UnaryDerivative<F> for super::ReLUKernelOp {
    // sca patch: the derivative from the output (x > 0 exactly where max(x, 0) > 0),
    // so the input is not kept for the backward pass and the forward runs in place.
    const DF_USES_FX: bool = true;
    const HAS_CONST_DF: bool = false;
    #[inline(always)]
    fn f(&self, x: &F) -> F {
        x.max(F::zero())
    }
    #[inline(always)]
    fn df(&self, x: &F) -> F {
        if x > &F::zero() {
            F::one()
        } else {
            F::zero()
        }
    }
}
