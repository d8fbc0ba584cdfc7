//! Bounds-checked single-precision matrix multiply over the `gemm` crate.
//!
//! gemm 0.19 is used instead of dfdx's gemm 0.15 because it dispatches to
//! AVX-512 kernels on stable Rust (its `x86-v4` feature), roughly doubling the
//! throughput on machines that have them.

/// A row-major matrix operand: element `(i, j)` of the *logical* (possibly
/// transposed) matrix sits at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// The matrix stored row-major with leading dimension `ld`.
    pub(crate) fn new(data: &'a [f32], ld: usize) -> Self {
        MatRef {
            data,
            rs: ld,
            cs: 1,
        }
    }
    /// The transpose of the matrix stored row-major with leading dimension `ld`.
    pub(crate) fn t(data: &'a [f32], ld: usize) -> Self {
        MatRef {
            data,
            rs: 1,
            cs: ld,
        }
    }
    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "gemm {what}: {rows}x{cols} operand overruns its buffer of {}",
                self.data.len()
            );
        }
    }
}

/// `c = a · b` (or `c += a · b` when `accumulate`), where `a` is `m x k`, `b` is
/// `k x n` and `c` is `m x n`, row-major with leading dimension `ldc`.
///
/// Single-threaded: callers parallelise over images or tiles, which keeps the
/// summation order of every output element fixed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    a: MatRef<'_>,
    b: MatRef<'_>,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n, "gemm: ldc {ldc} < n {n}");
    assert!(
        (m - 1) * ldc + n <= c.len(),
        "gemm: output overruns its buffer"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return;
    }
    a.check(m, k, "lhs");
    b.check(k, n, "rhs");
    // SAFETY: the checks above keep every element gemm touches inside the three
    // slices, `c` is borrowed mutably and does not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_with_transposes() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32).sin()).collect();
        let want = |i: usize, j: usize| (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f32>();
        let mut c = vec![1.0; m * n];
        sgemm(
            m,
            n,
            k,
            &mut c,
            n,
            false,
            MatRef::new(&a, k),
            MatRef::new(&b, n),
        );
        for i in 0..m {
            for j in 0..n {
                assert!((c[i * n + j] - want(i, j)).abs() < 1e-5);
            }
        }
        // Same product from transposed storage, accumulated onto ones.
        let at: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
        let mut c2 = vec![1.0; m * n];
        sgemm(
            m,
            n,
            k,
            &mut c2,
            n,
            true,
            MatRef::t(&at, m),
            MatRef::t(&bt, k),
        );
        for i in 0..m {
            for j in 0..n {
                assert!((c2[i * n + j] - 1.0 - want(i, j)).abs() < 1e-5);
            }
        }
    }
}
