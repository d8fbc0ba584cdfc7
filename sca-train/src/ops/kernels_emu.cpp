// kernels.cu's kernels behind C entry points that launch them on the CPU
// (kernels_emu.h), for the tests in kernels_emu.rs: `emu_NAME(gx, gy,
// threads, the kernel's arguments...)` runs kernel NAME on a (gx, gy) grid
// of `threads`-thread blocks.
#include "kernels_emu.h"

#include "kernels.cu"

#define EMU_UNPAREN(...) __VA_ARGS__
#define EMU(name, params, args)                                                        \
    extern "C" void emu_##name(unsigned emu_gx, unsigned emu_gy, unsigned emu_threads, \
                               EMU_UNPAREN params) {                                   \
        emu_launch(dim3{emu_gx, emu_gy, 1}, emu_threads, [&] { name args; });          \
    }

EMU(bn_stats, (const float *x, double *sums, int n, int c, int hw), (x, sums, n, c, hw))
EMU(bn_finalize, (const double *sums, double *mv, int c, double count, float eps),
    (sums, mv, c, count, eps))
EMU(bn_forward,
    (const float *x, const double *mv, const float *gamma, const float *beta, float *y, BnDims d),
    (x, mv, gamma, beta, y, d))
EMU(bn_grad_sums,
    (const float *x, const float *gy, const double *mv, const float *gamma, const float *beta,
     double *gsums, BnDims d),
    (x, gy, mv, gamma, beta, gsums, d))
EMU(bn_backward,
    (const float *x, const float *gy, const double *mv, const double *gsums, const float *gamma,
     const float *beta, float *gx, float *ggamma, float *gbeta, BnDims d, double count),
    (x, gy, mv, gsums, gamma, beta, gx, ggamma, gbeta, d, count))
EMU(channel_sums_add, (const double *sums, float *gb, int c), (sums, gb, c))
EMU(bce_sum, (const float *x, const float *t, double *sum, long long n), (x, t, sum, n))
EMU(bce_grad,
    (const float *x, const float *t, const float *gy, float *gx, long long n, double count,
     float w),
    (x, t, gy, gx, n, count, w))
EMU(adamw,
    (const float *p, float *out, float *m, float *v, const float *g, long long n, AdamWStep s),
    (p, out, m, v, g, n, s))
EMU(flag_nonfinite, (const float *g, long long n, int *flags, int i), (g, n, flags, i))
EMU(to_bf16, (const float *x, unsigned short *y, long long n), (x, y, n))
EMU(from_bf16, (const unsigned short *x, float *y, long long n, int accumulate),
    (x, y, n, accumulate))
