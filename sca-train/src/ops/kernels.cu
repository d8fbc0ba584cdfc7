// sca-train's own CUDA kernels, one NVRTC module (cuda_kernels.rs). No
// #include: NVRTC compiles it on the GPU machine without CUDA's headers.
//
// Training-mode batch norm for NCHW f32 tensors and a bias's gradient, the
// kernels of cuda_bn.rs (which says what they compute). Each channel's pixels
// of one image are contiguous (`hw` floats at `(i * c + ch) * hw`); a block
// `(bx, ch)` strides over them for every image, so one channel is spread over
// gridDim.x blocks.
__device__ double block_sum(double v) {
    __shared__ double part[32];
    __syncthreads();  // part[] may still be read by a previous call
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    v = threadIdx.x < warps ? part[lane] : 0.0;
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;  // the block's sum, in thread 0
}

// sums[2ch] += sum of x, sums[2ch+1] += sum of x^2 over the channel's pixels.
extern "C" __global__ void bn_stats(const float *x, double *sums, int n, int c, int hw) {
    int ch = blockIdx.y;
    double s = 0.0, s2 = 0.0;
    for (int i = 0; i < n; ++i) {
        const float *p = x + ((size_t)i * c + ch) * hw;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < hw; j += gridDim.x * blockDim.x) {
            double v = p[j];
            s += v;
            s2 += v * v;
        }
    }
    s = block_sum(s);
    s2 = block_sum(s2);
    if (threadIdx.x == 0) {
        atomicAdd(&sums[2 * ch], s);
        atomicAdd(&sums[2 * ch + 1], s2);
    }
}

// mv[2ch] = mean, mv[2ch+1] = 1 / sqrt(biased var + eps), from the sums.
extern "C" __global__ void bn_finalize(const double *sums, double *mv, int c, double count,
                                       float eps) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double m = sums[2 * ch] / count;
    double var = sums[2 * ch + 1] / count - m * m;
    if (var < 0.0) var = 0.0;
    mv[2 * ch] = m;
    mv[2 * ch + 1] = 1.0 / sqrt(var + (double)eps);
}

// A batch norm's shape, whether ReLU is fused in, and whether the backward
// pass's x holds bf16 values packed two to a float (cuda_bf16.rs's Saved)
// rather than floats (batch_norm.rs's BnDims, repr(C)).
struct BnDims {
    int n, c, hw, relu, x_bf16;
};

// x[i] of the backward pass's input, in either of BnDims's formats.
__device__ float bn_x(const float *x, size_t i, int x_bf16) {
    return x_bf16 ? __uint_as_float(((unsigned int)((const unsigned short *)x)[i]) << 16) : x[i];
}

// Channel ch's `y = x * scale + shift`: scale = gamma inv_std, shift =
// beta - mean gamma inv_std.
struct Affine {
    float scale, shift;
};
__device__ Affine bn_affine(const double *mv, const float *gamma, const float *beta, int ch) {
    double mean = mv[2 * ch], inv_std = mv[2 * ch + 1];
    return Affine{(float)((double)gamma[ch] * inv_std),
                  (float)((double)beta[ch] - mean * (double)gamma[ch] * inv_std)};
}

// The op's output before ReLU, as one fused multiply-add (NVRTC would fuse
// it anyway; spelled out, the backward pass's mask rounds exactly alike).
__device__ float bn_out(float x, Affine t) { return __fmaf_rn(x, t.scale, t.shift); }

// y = the normalised x, then max(y, 0) where relu is set (ReLU fused in:
// fmaxf takes 0 over NaN, as the host's f32::max does).
extern "C" __global__ void bn_forward(const float *x, const double *mv, const float *gamma,
                                      const float *beta, float *y, BnDims d) {
    int ch = blockIdx.y, n = d.n, c = d.c, hw = d.hw, relu = d.relu;
    Affine t = bn_affine(mv, gamma, beta, ch);
    for (int i = 0; i < n; ++i) {
        size_t o = ((size_t)i * c + ch) * hw;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < hw; j += gridDim.x * blockDim.x) {
            float v = bn_out(x[o + j], t);
            y[o + j] = relu ? fmaxf(v, 0.0f) : v;
        }
    }
}

// The gradient reaching the normalisation: gy, or with ReLU fused in, gy
// where the output (recomputed from x) is positive, else 0.
__device__ float bn_masked(float gy, float x, Affine t, int relu) {
    return relu && !(bn_out(x, t) > 0.0f) ? 0.0f : gy;
}

// gsums[2ch] += sum of g, gsums[2ch+1] += sum of g * x_hat (g: bn_masked).
extern "C" __global__ void bn_grad_sums(const float *x, const float *gy, const double *mv,
                                        const float *gamma, const float *beta, double *gsums,
                                        BnDims d) {
    int ch = blockIdx.y, n = d.n, c = d.c, hw = d.hw, relu = d.relu;
    double mean = mv[2 * ch], inv_std = mv[2 * ch + 1];
    Affine t = bn_affine(mv, gamma, beta, ch);
    double s = 0.0, sx = 0.0;
    for (int i = 0; i < n; ++i) {
        size_t o = ((size_t)i * c + ch) * hw;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < hw; j += gridDim.x * blockDim.x) {
            float xv = bn_x(x, o + j, d.x_bf16);
            double g = bn_masked(gy[o + j], xv, t, relu);
            s += g;
            sx += g * (((double)xv - mean) * inv_std);
        }
    }
    s = block_sum(s);
    sx = block_sum(sx);
    if (threadIdx.x == 0) {
        atomicAdd(&gsums[2 * ch], s);
        atomicAdd(&gsums[2 * ch + 1], sx);
    }
}

// gx += k (g - a - (x - mean) inv_std b), g = bn_masked(gy), k = gamma
// inv_std, a = mean(g), b = mean(g x_hat); block (0, ch) adds the parameter
// gradients.
extern "C" __global__ void bn_backward(const float *x, const float *gy, const double *mv,
                                       const double *gsums, const float *gamma,
                                       const float *beta, float *gx, float *ggamma,
                                       float *gbeta, BnDims d, double count) {
    int ch = blockIdx.y, n = d.n, c = d.c, hw = d.hw, relu = d.relu;
    double inv_std = mv[2 * ch + 1];
    Affine t = bn_affine(mv, gamma, beta, ch);
    float k = t.scale;
    float a = (float)(gsums[2 * ch] / count);
    float b = (float)(gsums[2 * ch + 1] / count);
    float mu = (float)mv[2 * ch], is = (float)inv_std;
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        ggamma[ch] += (float)gsums[2 * ch + 1];
        gbeta[ch] += (float)gsums[2 * ch];
    }
    for (int i = 0; i < n; ++i) {
        size_t o = ((size_t)i * c + ch) * hw;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < hw; j += gridDim.x * blockDim.x) {
            float xv = bn_x(x, o + j, d.x_bf16);
            gx[o + j] += k * (bn_masked(gy[o + j], xv, t, relu) - a - (xv - mu) * is * b);
        }
    }
}

// gb[ch] += sums[2ch]: a convolution bias's gradient, from bn_stats over the
// gradient of its output (the sum of squares beside it goes unused).
extern "C" __global__ void channel_sums_add(const double *sums, float *gb, int c) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch < c) gb[ch] += (float)sums[2 * ch];
}

// BCE-with-logits, the kernels of cuda_loss.rs, as loss.rs computes it on the
// host: sum[0] += the sum over i of max(x, 0) - x t + log1p(exp(-|x|)).
extern "C" __global__ void bce_sum(const float *x, const float *t, double *sum, long long n) {
    double s = 0.0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        double xv = x[i], tv = t[i];
        s += fmax(xv, 0.0) - xv * tv + log1p(exp(-fabs(xv)));
    }
    s = block_sum(s);
    if (threadIdx.x == 0) atomicAdd(sum, s);
}

// gx[i] += gy[0] * (w * (sigmoid(x) - t) / n), gy the loss's own gradient
// (on the device: no copy to the host).
extern "C" __global__ void bce_grad(const float *x, const float *t, const float *gy, float *gx,
                                    long long n, double count, float w) {
    float g0 = gy[0];
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        double xv = x[i];
        double sig = xv >= 0.0 ? 1.0 / (1.0 + exp(-xv)) : exp(xv) / (1.0 + exp(xv));
        float g = (float)((sig - (double)t[i]) / count);
        gx[i] += g0 * (w * g);
    }
}

// AdamW (cuda_adamw.rs), rounded as adamw.rs's host update rounds: every
// operation spelled with an _rn intrinsic so NVRTC contracts none into an
// FMA, which makes the result bit-identical to the host's. The hyper
// parameters arrive as adamw.rs's AdamWStep, a repr(C) struct.
struct AdamWStep {
    float b1, one_minus_b1, b2, one_minus_b2, step_size, bc2_sqrt, decay, eps;
};

// out = p updated, m and v in place, with gradient g.
extern "C" __global__ void adamw(const float *p, float *out, float *m, float *v, const float *g,
                                 long long n, AdamWStep s) {
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < n;
         j += (long long)gridDim.x * blockDim.x) {
        float gj = g[j];
        float mj = __fadd_rn(__fmul_rn(s.b1, m[j]), __fmul_rn(s.one_minus_b1, gj));
        float vj = __fadd_rn(__fmul_rn(s.b2, v[j]), __fmul_rn(__fmul_rn(s.one_minus_b2, gj), gj));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vj), s.bc2_sqrt), s.eps);
        out[j] = __fsub_rn(__fmul_rn(p[j], s.decay), __fdiv_rn(__fmul_rn(s.step_size, mj), denom));
        m[j] = mj;
        v[j] = vj;
    }
}

// flags[i] = 1 where g holds an infinity or a NaN (all exponent bits set).
extern "C" __global__ void flag_nonfinite(const float *g, long long n, int *flags, int i) {
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < n;
         j += (long long)gridDim.x * blockDim.x) {
        if ((__float_as_uint(g[j]) & 0x7f800000u) == 0x7f800000u) {
            flags[i] = 1;
            return;
        }
    }
}

// bfloat16 operands of cudnn.rs's bf16 convolutions: y = x rounded to the
// nearest bf16, ties to even (NaN stays NaN), as PyTorch's autocast rounds.
extern "C" __global__ void to_bf16(const float *x, unsigned short *y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        unsigned int u = __float_as_uint(x[i]);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            y[i] = (unsigned short)((u >> 16) | 0x40u);
        } else {
            y[i] = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
    }
}

// y (=|+=) x widened to f32 (exact): accumulate 0 overwrites, 1 adds.
extern "C" __global__ void from_bf16(const unsigned short *x, float *y, long long n, int accumulate) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float v = __uint_as_float(((unsigned int)x[i]) << 16);
        y[i] = accumulate ? y[i] + v : v;
    }
}
