//! sca-train's CUDA kernels (`kernels.cu`) run on the CPU and checked
//! against the host kernels, in every test run, with no GPU.
//!
//! The system's C++ compiler (`c++`, or `CXX`) builds `kernels_emu.cpp`:
//! `kernels.cu` unchanged under `kernels_emu.h`, which runs a launch's
//! blocks one after another and each block's threads as OS threads
//! (barriers for `__syncthreads`, warp exchanges for `__shfl_down_sync`),
//! behind one C entry point per kernel. The tests launch them as the
//! `cuda_*.rs` modules do and compare with the host's batch norm, bias
//! gradient, BCE, AdamW and bf16 rounding. What this cannot check is the
//! GPU itself (its compiler's FMA contraction, the launch code in Rust,
//! memory): the `cuda` build's `gpu_` tests and `bench/gpu.sh` do, on the
//! GPU machine.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use dfdx::prelude::*;
use libloading::{Library, Symbol};

use super::adamw::{update_host, AdamWStep};
use super::batch_norm::BnDims;
use super::testutil::{assert_close_f32, output_and_grads, rand_vec};
use super::{batch_norm2d_train, Activation};

/// Builds and loads the emulated kernels once per test process.
fn lib() -> &'static Library {
    static LIB: OnceLock<Library> = OnceLock::new();
    LIB.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ops/kernels_emu.cpp");
        let dir = tempfile::Builder::new()
            .prefix("sca-kernels-emu")
            .tempdir()
            .expect("a temporary directory");
        let so = dir.path().join("libsca_kernels_emu.so");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let out = Command::new(&cxx)
            .args(["-std=c++20", "-O1", "-fPIC", "-shared", "-pthread"])
            .arg("-ffp-contract=off")
            .arg("-o")
            .arg(&so)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| {
                panic!("running {cxx} (a C++20 compiler runs kernels.cu on the CPU here; set CXX to another): {e}")
            });
        assert!(
            out.status.success(),
            "{cxx} could not build {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // SAFETY: our own library, whose initialisers only set up statics.
        // Loaded, it stays mapped after its file (and `dir`) are removed.
        unsafe { Library::new(&so) }.expect("loading the emulated kernels")
    })
}

/// Kernel `name`'s entry point, of type `F`.
fn kernel<F>(name: &str) -> Symbol<'static, F> {
    // SAFETY: each caller names the type kernels_emu.cpp defines `emu_NAME` with.
    unsafe { lib().get(format!("emu_{name}\0").as_bytes()) }
        .unwrap_or_else(|e| panic!("emu_{name}: {e}"))
}

/// A launch's grid `(x, y)` and threads per block. Many-threaded blocks
/// with few threads' worth of work each (grid strides, partial warps of
/// data) are what the GPU's launches look like at these sizes.
type G = (u32, u32, u32);
const BLOCK: u32 = 64;

type Stats = unsafe extern "C" fn(u32, u32, u32, *const f32, *mut f64, i32, i32, i32);
type Finalize = unsafe extern "C" fn(u32, u32, u32, *const f64, *mut f64, i32, f64, f32);
type Forward = unsafe extern "C" fn(
    u32,
    u32,
    u32,
    *const f32,
    *const f64,
    *const f32,
    *const f32,
    *mut f32,
    BnDims,
);
type GradSums = unsafe extern "C" fn(
    u32,
    u32,
    u32,
    *const f32,
    *const f32,
    *const f64,
    *const f32,
    *const f32,
    *mut f64,
    BnDims,
);
type Backward = unsafe extern "C" fn(
    u32,
    u32,
    u32,
    *const f32,
    *const f32,
    *const f64,
    *const f64,
    *const f32,
    *const f32,
    *mut f32,
    *mut f32,
    *mut f32,
    BnDims,
    f64,
);

/// What `cuda_bn.rs` computes, launched on the emulator: the output, the
/// input's, gamma's and beta's gradients for output gradient `gy`; with
/// `relu`, ReLU fused in; with `kept`, the backward pass reads that bf16
/// copy of `x` (as `cuda_bf16.rs`'s `Saved` keeps it) instead of `x`.
fn batch_norm(
    x: &[f32],
    (n, c, hw): (usize, usize, usize),
    (gamma, beta): (&[f32], &[f32]),
    gy: &[f32],
    eps: f32,
    relu: bool,
    kept: Option<&[u16]>,
) -> [Vec<f32>; 4] {
    let (ni, ci, hwi) = (n as i32, c as i32, hw as i32);
    let dims = BnDims {
        n: ni,
        c: ci,
        hw: hwi,
        relu: relu as i32,
        x_bf16: 0,
    };
    let (xb, back) = match kept {
        Some(b) => (b.as_ptr().cast::<f32>(), BnDims { x_bf16: 1, ..dims }),
        None => (x.as_ptr(), dims),
    };
    let count = (n * hw) as f64;
    let (gx_, gy_, th): G = (2, c as u32, BLOCK);
    let (mut sums, mut mv, mut gsums) = (vec![0f64; 2 * c], vec![0f64; 2 * c], vec![0f64; 2 * c]);
    let mut y = vec![f32::NAN; x.len()];
    let (mut gx, mut gg, mut gb) = (vec![0f32; x.len()], vec![0f32; c], vec![0f32; c]);
    let (xp, gp, bp, mvp) = (x.as_ptr(), gamma.as_ptr(), beta.as_ptr(), mv.as_mut_ptr());
    // SAFETY: buffers of the lengths the kernels index for (n, c, hw).
    unsafe {
        kernel::<Stats>("bn_stats")(gx_, gy_, th, xp, sums.as_mut_ptr(), ni, ci, hwi);
        kernel::<Finalize>("bn_finalize")(1, 1, 32, sums.as_ptr(), mvp, ci, count, eps);
        let fwd = kernel::<Forward>("bn_forward");
        fwd(gx_, gy_, th, xp, mvp, gp, bp, y.as_mut_ptr(), dims);
        let sums_g = kernel::<GradSums>("bn_grad_sums");
        sums_g(
            gx_,
            gy_,
            th,
            xb,
            gy.as_ptr(),
            mvp,
            gp,
            bp,
            gsums.as_mut_ptr(),
            back,
        );
        kernel::<Backward>("bn_backward")(
            gx_,
            gy_,
            th,
            xb,
            gy.as_ptr(),
            mvp,
            gsums.as_ptr(),
            gp,
            bp,
            gx.as_mut_ptr(),
            gg.as_mut_ptr(),
            gb.as_mut_ptr(),
            back,
            count,
        );
    }
    [y, gx, gg, gb]
}

#[test]
fn batch_norm_kernels_match_the_host_kernel_with_and_without_relu() {
    // 300 pixels per plane: each thread of a 2 x 64-thread channel strides
    // over two or three of them, and the last block's warps run short.
    let (n, c, h, w) = (2, 3, 12, 25);
    let hw = h * w;
    let eps = 1e-5;
    let x: Vec<f32> = rand_vec(n * c * hw, 1)
        .iter()
        .map(|v| 3.0 * v + 0.5)
        .collect();
    let (gamma, beta) = (rand_vec(c, 2), rand_vec(c, 3));
    // output_and_grads differentiates sum(r · y), r drawn from seed 99.
    let gy = rand_vec(x.len(), 99);
    for act in [Activation::Identity, Activation::Relu] {
        let (host_y, host_g) = output_and_grads(
            &Cpu::default(),
            &x,
            (n, c, h, w),
            &[gamma.clone(), beta.clone()],
            &|x, p| Ok(batch_norm2d_train(x, &p[0], &p[1], eps, act)?.0),
        );
        let relu = act == Activation::Relu;
        let [y, gx, gg, gb] = batch_norm(&x, (n, c, hw), (&gamma, &beta), &gy, eps, relu, None);
        assert_close_f32(&format!("{act:?}: y"), &y, &host_y, 1e-5);
        assert_close_f32(&format!("{act:?}: x's gradient"), &gx, &host_g[0], 1e-4);
        assert_close_f32(&format!("{act:?}: gamma's gradient"), &gg, &host_g[1], 1e-4);
        assert_close_f32(&format!("{act:?}: beta's gradient"), &gb, &host_g[2], 1e-4);
        if relu {
            // ReLU really ran: about half the outputs are 0.
            let zeros = y.iter().filter(|v| **v == 0.0).count();
            assert!(
                zeros > y.len() / 4 && zeros < 3 * y.len() / 4,
                "{zeros} zeros"
            );
        }
    }
}

#[test]
fn batch_norm_reads_a_kept_bf16_copy_as_its_values() {
    // On bf16 values (a bf16 convolution's outputs), the backward pass
    // reading the bf16 copy computes what it computes from the f32s, bit
    // for bit, fused ReLU or not.
    let (n, c, hw) = (2, 3, 301);
    let x: Vec<f32> = rand_vec(n * c * hw, 21)
        .iter()
        .map(|v| f32::from_bits((2.0 * v - 0.3).to_bits() & 0xffff_0000))
        .collect();
    let kept: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
    let (gamma, beta, gy) = (rand_vec(c, 22), rand_vec(c, 23), rand_vec(x.len(), 24));
    for relu in [false, true] {
        let p = (&gamma[..], &beta[..]);
        let f32s = batch_norm(&x, (n, c, hw), p, &gy, 1e-5, relu, None);
        let bf16 = batch_norm(&x, (n, c, hw), p, &gy, 1e-5, relu, Some(&kept));
        for (what, (a, b)) in ["y", "gx", "ggamma", "gbeta"]
            .iter()
            .zip(f32s.iter().zip(&bf16))
        {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(a), bits(b), "{what}, relu {relu}");
        }
    }
    // And it does read the copy: a different copy, different gradients.
    let other: Vec<u16> = kept.iter().map(|h| h ^ 1).collect();
    let p = (&gamma[..], &beta[..]);
    let [_, gx, ..] = batch_norm(&x, (n, c, hw), p, &gy, 1e-5, false, None);
    let [_, gx2, ..] = batch_norm(&x, (n, c, hw), p, &gy, 1e-5, false, Some(&other));
    assert_ne!(gx, gx2);
}

#[test]
fn the_bias_gradient_is_each_channels_sum() {
    type Add = unsafe extern "C" fn(u32, u32, u32, *const f64, *mut f32, i32);
    let (n, c, hw) = (3, 4, 200);
    let gy = rand_vec(n * c * hw, 5);
    let mut sums = vec![0f64; 2 * c];
    let mut gb = vec![1.0f32; c];
    // SAFETY: lengths as the kernels index them.
    unsafe {
        kernel::<Stats>("bn_stats")(
            2,
            c as u32,
            BLOCK,
            gy.as_ptr(),
            sums.as_mut_ptr(),
            3,
            4,
            200,
        );
        kernel::<Add>("channel_sums_add")(1, 1, 32, sums.as_ptr(), gb.as_mut_ptr(), 4);
    }
    let want: Vec<f32> = (0..c)
        .map(|ch| {
            let s: f64 = (0..n)
                .flat_map(|i| &gy[(i * c + ch) * hw..(i * c + ch + 1) * hw])
                .map(|v| *v as f64)
                .sum();
            1.0 + s as f32
        })
        .collect();
    assert_close_f32("bias gradient (added to 1)", &gb, &want, 1e-6);
}

#[test]
fn bce_kernels_match_the_host_loss() {
    type Sum = unsafe extern "C" fn(u32, u32, u32, *const f32, *const f32, *mut f64, i64);
    type Grad = unsafe extern "C" fn(
        u32,
        u32,
        u32,
        *const f32,
        *const f32,
        *const f32,
        *mut f32,
        i64,
        f64,
        f32,
    );
    let n = 1000;
    let x: Vec<f32> = rand_vec(n, 7).iter().map(|v| 8.0 * v).collect();
    let t: Vec<f32> = rand_vec(n, 8)
        .iter()
        .map(|v| (*v > 0.0) as u8 as f32)
        .collect();
    let (value, grad) = crate::loss::bce_with_logits(&x, &t);
    let (g0, w) = (0.75f32, 0.5f32);
    let mut sum = 0f64;
    let mut gx = vec![0.25f32; n];
    // SAFETY: `n` values each.
    unsafe {
        kernel::<Sum>("bce_sum")(3, 1, BLOCK, x.as_ptr(), t.as_ptr(), &mut sum, n as i64);
        kernel::<Grad>("bce_grad")(
            3,
            1,
            BLOCK,
            x.as_ptr(),
            t.as_ptr(),
            &g0,
            gx.as_mut_ptr(),
            n as i64,
            n as f64,
            w,
        );
    }
    assert!(
        (sum / n as f64 - value).abs() <= 1e-12 * value.abs(),
        "{} vs {value}",
        sum / n as f64
    );
    let want: Vec<f32> = grad.iter().map(|g| 0.25 + g0 * (w * g)).collect();
    assert_close_f32("gradient (added to 0.25)", &gx, &want, 1e-6);
}

#[test]
fn adamw_kernel_is_bit_identical_to_the_host_update() {
    type Adamw = unsafe extern "C" fn(
        u32,
        u32,
        u32,
        *const f32,
        *mut f32,
        *mut f32,
        *mut f32,
        *const f32,
        i64,
        AdamWStep,
    );
    let n = 777;
    let p = rand_vec(n, 11);
    let m: Vec<f32> = rand_vec(n, 12).iter().map(|v| 0.1 * v).collect();
    let v: Vec<f32> = rand_vec(n, 13).iter().map(|v| 0.01 * v * v).collect();
    let g = rand_vec(n, 14);
    let s = AdamWStep::new(1e-3, 0.9, 0.999, 1e-8, 1e-2, 7);
    let (mut hp, mut hm, mut hv) = (p.clone(), m.clone(), v.clone());
    update_host(&mut hp, &mut hm, &mut hv, &g, &s);
    let (mut out, mut km, mut kv) = (vec![0f32; n], m.clone(), v.clone());
    // SAFETY: `n` values each; `s` is the repr(C) struct the kernel takes.
    unsafe {
        kernel::<Adamw>("adamw")(
            2,
            1,
            BLOCK,
            p.as_ptr(),
            out.as_mut_ptr(),
            km.as_mut_ptr(),
            kv.as_mut_ptr(),
            g.as_ptr(),
            n as i64,
            s,
        )
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&out), bits(&hp), "parameters");
    assert_eq!(bits(&km), bits(&hm), "first moments");
    assert_eq!(bits(&kv), bits(&hv), "second moments");
}

#[test]
fn a_non_finite_gradient_sets_its_flag() {
    type Flag = unsafe extern "C" fn(u32, u32, u32, *const f32, i64, *mut i32, i32);
    let flags_of = |g: &[f32]| {
        let mut flags = [0i32; 3];
        // SAFETY: `g.len()` values; flag 1 of 3.
        unsafe {
            kernel::<Flag>("flag_nonfinite")(
                2,
                1,
                BLOCK,
                g.as_ptr(),
                g.len() as i64,
                flags.as_mut_ptr(),
                1,
            )
        };
        flags
    };
    let mut g = rand_vec(500, 15);
    g[3] = f32::MAX;
    assert_eq!(flags_of(&g), [0, 0, 0]);
    for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        g[421] = bad;
        assert_eq!(flags_of(&g), [0, 1, 0], "{bad}");
    }
}

/// The bf16 nearest to `x` (not a NaN), ties to even, by distance (not by
/// the kernel's bit trick): of the two bf16 values around `x` (the one
/// beyond the largest finite counts as 2^128, which IEEE rounding turns
/// into infinity), the nearer, or the one with an even last bit.
fn nearest_bf16(x: f32) -> u16 {
    if x.is_infinite() {
        return (x.to_bits() >> 16) as u16;
    }
    let lo = (x.to_bits() >> 16) as u16;
    let hi = lo + 1;
    let value = |b: u16| {
        if b & 0x7fff == 0x7f80 {
            let inf = 2f64.powi(128);
            if b & 0x8000 != 0 {
                -inf
            } else {
                inf
            }
        } else {
            f32::from_bits((b as u32) << 16) as f64
        }
    };
    let (dl, dh) = ((x as f64 - value(lo)).abs(), (x as f64 - value(hi)).abs());
    if dl < dh || (dl == dh && lo & 1 == 0) {
        lo
    } else {
        hi
    }
}

#[test]
fn bf16_casts_round_to_nearest_even_and_widen_exactly() {
    type Round = unsafe extern "C" fn(u32, u32, u32, *const f32, *mut u16, i64);
    type Widen = unsafe extern "C" fn(u32, u32, u32, *const u16, *mut f32, i64, i32);
    // Random bit patterns over the whole range, and the edges: ties with an
    // even and an odd last kept bit, just either side of a tie, the largest
    // finite value (rounds to infinity), subnormals, zeros, infinities, NaNs.
    let mut x: Vec<f32> = rand_vec(4000, 16)
        .iter()
        .map(|v| f32::from_bits((v.to_bits().wrapping_mul(2_654_435_761)) ^ 0x5bd1_e995))
        .filter(|v| !v.is_nan())
        .collect();
    for b in [
        0x3f80_8000u32,
        0x3f81_8000,
        0x3f80_7fff,
        0x3f80_8001,
        0x7f7f_ffff,
        0x7f7f_7fff,
        0x0000_8000,
        0x0001_8000,
        0x0000_0001,
        0x8000_0000,
        0x0000_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0x7f80_0001,
        0xffc1_2345,
    ] {
        x.push(f32::from_bits(b));
    }
    let n = x.len();
    let mut b = vec![0u16; n];
    // SAFETY: `n` values each.
    unsafe { kernel::<Round>("to_bf16")(3, 1, BLOCK, x.as_ptr(), b.as_mut_ptr(), n as i64) };
    for (i, (v, got)) in x.iter().zip(&b).enumerate() {
        if v.is_nan() {
            let w = f32::from_bits((*got as u32) << 16);
            assert!(
                w.is_nan() && w.is_sign_negative() == v.is_sign_negative(),
                "[{i}] NaN {v:?} -> {got:#06x}"
            );
        } else {
            assert_eq!(
                *got,
                nearest_bf16(*v),
                "[{i}] {v:e} ({:#010x})",
                v.to_bits()
            );
        }
    }
    // Widening: exact, overwriting or adding.
    let mut y = vec![1.0f32; n];
    let finite: Vec<u16> = b
        .iter()
        .map(|h| if h & 0x7f80 == 0x7f80 { 0 } else { *h })
        .collect();
    // SAFETY: as above.
    unsafe {
        kernel::<Widen>("from_bf16")(3, 1, BLOCK, finite.as_ptr(), y.as_mut_ptr(), n as i64, 1)
    };
    for (h, v) in finite.iter().zip(&y) {
        assert_eq!(*v, 1.0 + f32::from_bits((*h as u32) << 16));
    }
    unsafe {
        kernel::<Widen>("from_bf16")(3, 1, BLOCK, finite.as_ptr(), y.as_mut_ptr(), n as i64, 0)
    };
    for (h, v) in finite.iter().zip(&y) {
        assert_eq!(v.to_bits(), (*h as u32) << 16);
    }
}
