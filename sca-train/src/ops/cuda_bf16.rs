//! bf16 on the GPU ([`cudnn::Precision::Bf16`]): `f32` buffers rounded to bf16 and
//! widened back (`to_bf16` and `from_bf16` in `kernels.cu`) for cuDNN's
//! bf16 convolutions ([`super::cudnn`]), and the activations ops keep for
//! their backward pass ([`Saved`]).
//!
//! An op that keeps its input for the backward pass (a convolution for its
//! filter gradient, batch norm for its input gradient) keeps it as is in an
//! `f32` step. In a bf16 step with bf16 saved activations
//! ([`SavedFormat::Bf16`], `SCA_BF16_SAVED=bf16`), it keeps a bf16 copy in
//! its place where it is the input's only holder, and the input's buffer is
//! released: half the memory. Nothing is lost where the U-Net does this: a
//! convolution rounds its input to bf16 for its filter gradient anyway, and
//! batch norm's input is a bias-free bf16 convolution's output, bf16 values
//! widened, which round back to themselves. An input another op also holds
//! (the input a max-pool keeps, or a skip connection) stays as it is: a
//! copy beside it would add memory, not save it. So that a batch norm's
//! ReLU keeps no fp32 output beside the next convolution's copy, batch
//! norm fuses it in, its mask recomputed from the input it keeps.
//!
//! Off by default until a GPU run has measured it (BENCHMARKS.md, GPU issue
//! 21); the `gpu_bf16_saved_*` tests in `cuda_conv.rs` check it on the GPU
//! machine, `kernels_emu.rs` the batch norm kernels on the CPU.

use std::cell::Cell;

use cudarc::driver::{CudaSlice, DeviceSlice, LaunchAsync, LaunchConfig};
use dfdx::prelude::*;

use super::cudnn::{self, Write};
use super::Shape4;

/// What a bf16 step's ops keep of the activations they save for the
/// backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavedFormat {
    /// The activations themselves (the default).
    F32,
    /// bf16 copies, where an op is its input's only holder.
    Bf16,
}

impl SavedFormat {
    /// What a device description adds for it: nothing for the default.
    pub fn describe(self) -> &'static str {
        match self {
            SavedFormat::F32 => "",
            SavedFormat::Bf16 => ", bf16 saved activations",
        }
    }
}

/// `SCA_BF16_SAVED`: unset or `fp32` ([`SavedFormat::F32`]), or `bf16`.
pub fn saved_setting() -> Result<SavedFormat, String> {
    match std::env::var("SCA_BF16_SAVED").as_deref().map(str::trim) {
        Err(_) | Ok("" | "fp32") => Ok(SavedFormat::F32),
        Ok("bf16") => Ok(SavedFormat::Bf16),
        Ok(other) => Err(format!(
            "SCA_BF16_SAVED={other:?} is not one of fp32, bf16 (what a bf16 step keeps of the activations its backward pass reads)"
        )),
    }
}

thread_local! {
    static SAVED: Cell<SavedFormat> = const { Cell::new(SavedFormat::F32) };
}

/// Sets what this thread's bf16 steps keep for their backward passes (per
/// thread, like [`cudnn::set_precision`]) and returns the previous setting.
pub fn set_saved(f: SavedFormat) -> SavedFormat {
    SAVED.with(|c| c.replace(f))
}

/// This thread's [`set_saved`] setting.
pub fn saved() -> SavedFormat {
    SAVED.with(Cell::get)
}

/// Whether this thread's steps keep bf16 copies: a bf16 step
/// ([`cudnn::precision`]) with [`SavedFormat::Bf16`]. Batch norm then also
/// fuses the ReLU after it (`cuda_bn.rs`), whose output dfdx's ReLU would
/// keep in fp32 beside the next layer's bf16 copy.
pub(crate) fn bf16_saved() -> bool {
    cudnn::precision() == cudnn::Precision::Bf16 && saved() == SavedFormat::Bf16
}

/// Blocks of 256 threads for an element-wise pass over `n` values.
fn elementwise(n: usize) -> LaunchConfig {
    super::cuda_kernels::grid_1d(n, 4, 4096)
}

/// The first `x.len()` bf16 values of `y` (packed two to an `f32`, as
/// [`packed`] makes room for) = `x` rounded to the nearest bf16, ties to even.
pub(crate) fn round(x: &CudaSlice<f32>, y: &mut CudaSlice<f32>) -> Result<(), String> {
    let n = x.len();
    if 2 * y.len() < n {
        return Err(format!(
            "rounding {n} values to bf16 into room for {}",
            2 * y.len()
        ));
    }
    let dev = x.device();
    super::cuda_kernels::load(&dev)?;
    // SAFETY: `x` holds `n` floats, `y` room for at least `n` halves.
    unsafe { super::cuda_kernels::func(&dev, "to_bf16").launch(elementwise(n), (x, y, n as i64)) }
        .map_err(|e| format!("rounding to bf16: {e}"))
}

/// `y (=|+=)` the first `y.len()` bf16 values of `x` (as in [`round`])
/// widened to `f32` (exactly).
pub(crate) fn widen(
    x: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    write: Write,
) -> Result<(), String> {
    let n = y.len();
    if 2 * x.len() < n {
        return Err(format!(
            "widening {} bf16 values into {n} elements",
            2 * x.len()
        ));
    }
    let dev = y.device();
    super::cuda_kernels::load(&dev)?;
    let accumulate = i32::from(write == Write::Accumulate);
    // SAFETY: `x` holds at least `n` halves, `y` `n` floats.
    unsafe {
        super::cuda_kernels::func(&dev, "from_bf16")
            .launch(elementwise(n), (x, y, n as i64, accumulate))
    }
    .map_err(|e| format!("widening from bf16: {e}"))
}

/// Room for `len` bf16 values from dfdx's buffer cache, packed two to an
/// `f32` (see [`Saved::Bf16`]): a buffer of one of the activations' sizes.
/// Made a tensor ([`Cuda::tensor_from_cuda_slice`]), it goes back to the
/// cache when dropped; stream-ordered, like every buffer there, so its next
/// user writes it after this one's work has read it.
///
/// # Safety
/// The caller writes the values before reading them.
pub(crate) unsafe fn packed(dev: &Cuda, len: usize) -> Result<CudaSlice<f32>, String> {
    dev.alloc_uninit::<f32>(len.div_ceil(2))
        .map_err(|e| format!("room for {len} bf16 values: {e}"))
}

/// `x` rounded to bf16 into a [`packed`] buffer, as a tensor (so back to
/// dfdx's cache when dropped).
pub(crate) fn rounded(
    dev: &Cuda,
    x: &CudaSlice<f32>,
) -> Result<Tensor<(usize,), f32, Cuda>, String> {
    // SAFETY: `round` writes every value (a last half of an odd count stays
    // unwritten and is never read).
    let mut b = unsafe { packed(dev, x.len()) }?;
    round(x, &mut b)?;
    Ok(dev.tensor_from_cuda_slice((b.len(),), b))
}

/// An op's input as it keeps it for its backward pass ([`Saved::keep`]).
pub(crate) enum Saved {
    /// The input itself.
    F32(Tensor<Shape4, f32, Cuda>),
    /// A bf16 copy of its `len` values, packed two to an `f32` of a dfdx
    /// buffer: dfdx's cache reuses buffers of one element type and length
    /// only, and as `f32`s the copies share the activations' sizes (one
    /// U-Net level's bf16 copy is the next level's `f32` activation) instead
    /// of adding sizes of their own. The input's buffer went back to the cache.
    Bf16 {
        words: Tensor<(usize,), f32, Cuda>,
        len: usize,
    },
}

impl Saved {
    /// Keeps `x` (contiguous: the ops check) for a backward pass: as a bf16
    /// copy in a bf16 step with bf16 saved activations where `x` is its
    /// buffer's only holder and there is a backward pass (`traced`), else
    /// as it is.
    pub fn keep(x: Tensor<Shape4, f32, Cuda>, traced: bool) -> Result<Self, String> {
        let xs = match x.contiguous_cuda_slice() {
            Some(xs) if traced && bf16_saved() && x.data_is_unique() => xs,
            _ => return Ok(Saved::F32(x)),
        };
        let words = rounded(x.device(), xs)?;
        // `x` drops here: queued after the rounding on the one stream, its
        // buffer's next user in dfdx's cache writes it after it was read.
        Ok(Saved::Bf16 {
            words,
            len: xs.len(),
        })
    }

    /// The kept values as a convolution operand.
    pub fn operand(&self) -> cudnn::Operand<'_> {
        match self {
            // Contiguous: checked by the op before it kept it.
            Saved::F32(x) => x.contiguous_cuda_slice().expect("kept contiguous").into(),
            Saved::Bf16 { words, len } => cudnn::Operand::Bf16 {
                words: words.contiguous_cuda_slice().expect("made contiguous"),
                len: *len,
            },
        }
    }

    /// The kept values for a kernel that reads either format: the buffer,
    /// and whether it holds packed bf16 values (else `f32`s).
    pub fn raw(&self) -> (&CudaSlice<f32>, bool) {
        match self {
            Saved::F32(x) => (x.contiguous_cuda_slice().expect("kept contiguous"), false),
            Saved::Bf16 { words, .. } => (
                words.contiguous_cuda_slice().expect("made contiguous"),
                true,
            ),
        }
    }
}
