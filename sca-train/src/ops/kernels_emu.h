// CUDA's execution model on the CPU, for running kernels.cu in tests
// (kernels_emu.cpp, kernels_emu.rs): no GPU is needed to check what each
// kernel computes.
//
// A launch runs its blocks one after another and each block's threads as OS
// threads, so a kernel's own code runs unchanged: __syncthreads is a barrier
// of the block's threads, __shfl_down_sync an exchange among a warp's 32
// lanes (two barriers of the warp), __shared__ variables are statics (one
// block at a time uses them), atomics take a lock. Float arithmetic is the
// host's IEEE arithmetic, compiled with -ffp-contract=off: no FMA is formed
// where the source has none (NVRTC may form some; the tests allow for that).
#pragma once

#include <math.h>

#include <algorithm>
#include <array>
#include <barrier>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

// One block runs at a time: its index and shape are the launch's globals;
// each of its threads has its own threadIdx.
inline dim3 gridDim, blockDim, blockIdx;
inline thread_local dim3 threadIdx;

#define __global__
#define __device__ inline
#define __forceinline__
#define __shared__ static

struct EmuBlock {
    std::unique_ptr<std::barrier<>> all;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<std::array<unsigned char, 32 * 8>> lanes;
};
inline EmuBlock *emu_block = nullptr;
inline std::mutex emu_atomic;
inline std::mutex emu_one_launch;

inline void __syncthreads() { emu_block->all->arrive_and_wait(); }

// Lane l gets lane l + o's value; lanes past the warp's end (or the block's)
// keep their own, as on the GPU.
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned o) {
    static_assert(sizeof(T) <= 8, "at most 8-byte values");
    unsigned t = threadIdx.x, lane = t & 31u, w = t >> 5;
    unsigned char *slots = emu_block->lanes[w].data();
    std::memcpy(slots + lane * sizeof(T), &v, sizeof(T));
    emu_block->warps[w]->arrive_and_wait();
    T r = v;
    if (lane + o < 32 && t + o < blockDim.x) std::memcpy(&r, slots + (lane + o) * sizeof(T), sizeof(T));
    emu_block->warps[w]->arrive_and_wait();
    return r;
}

template <class T>
T atomicAdd(T *p, T v) {
    std::lock_guard<std::mutex> guard(emu_atomic);
    T old = *p;
    *p = old + v;
    return old;
}

inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
// Round-to-nearest single-precision operations, fused only where named so.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }

// Runs `body` (a kernel call) on a grid of `grid` blocks of `threads`
// threads (a multiple of 32, as every launch of ours uses).
template <class F>
void emu_launch(dim3 grid, unsigned threads, F body) {
    // One launch at a time in the process (tests run in parallel): the
    // grid's globals and the kernels' statics are the launch's.
    std::lock_guard<std::mutex> guard(emu_one_launch);
    gridDim = grid;
    blockDim = dim3{threads, 1, 1};
    unsigned warps = (threads + 31) / 32;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = dim3{x, y, z};
                EmuBlock b;
                b.all = std::make_unique<std::barrier<>>(threads);
                for (unsigned w = 0; w < warps; ++w)
                    b.warps.push_back(std::make_unique<std::barrier<>>(
                        static_cast<std::ptrdiff_t>(std::min(32u, threads - 32 * w))));
                b.lanes.resize(warps);
                emu_block = &b;
                std::vector<std::thread> ts;
                ts.reserve(threads);
                for (unsigned t = 0; t < threads; ++t)
                    ts.emplace_back([t, &body] {
                        threadIdx = dim3{t, 0, 0};
                        body();
                    });
                for (auto &t : ts) t.join();
                emu_block = nullptr;
            }
}
