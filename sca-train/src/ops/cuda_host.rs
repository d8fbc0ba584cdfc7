//! Host-to-device copies through pinned (page-locked) memory.
//!
//! A copy from ordinary (pageable) host memory goes through the driver's own
//! staging and, in the GPU machines' VMs, ran at about 2 GB/s: a 512x512
//! batch of 8 four-band tiles (33.5 MB) took 15 ms of a 73 ms training step
//! on an H200 (BENCHMARKS.md, GPU section). Here the data is first copied,
//! in parallel, into one pinned buffer that lives as long as the process,
//! and then to the device by DMA at the bus's speed.

use std::sync::Mutex;

use cudarc::driver::{result::DriverError, sys, CudaSlice, DevicePtrMut, DeviceSlice};
use rayon::prelude::*;

/// A pinned host buffer of `len` floats (`cuMemAllocHost`).
struct Pinned {
    ptr: *mut f32,
    len: usize,
}

// Only used under the mutex below.
unsafe impl Send for Pinned {}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemAllocHost, freed once.
        unsafe {
            let _ = sys::cuMemFreeHost(self.ptr.cast());
        }
    }
}

fn staging() -> &'static Mutex<Option<Pinned>> {
    static STAGING: Mutex<Option<Pinned>> = Mutex::new(None);
    &STAGING
}

/// Copies `src` into `dst` (of the same length), synchronously with `dst`'s
/// device's stream: when it returns, the copy and all work queued before it
/// have finished.
pub(crate) fn upload(dst: &mut CudaSlice<f32>, src: &[f32]) -> Result<(), DriverError> {
    assert_eq!(dst.len(), src.len(), "upload: lengths differ");
    if src.is_empty() {
        return Ok(());
    }
    let dev = dst.device();
    dev.bind_to_thread()?;
    let mut guard = staging().lock().unwrap_or_else(|p| p.into_inner());
    if guard.as_ref().is_none_or(|p| p.len < src.len()) {
        *guard = None;
        let mut ptr: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: an out-pointer; the context is current on this thread.
        unsafe { sys::cuMemAllocHost_v2(&mut ptr, std::mem::size_of_val(src)) }.result()?;
        *guard = Some(Pinned {
            ptr: ptr.cast(),
            len: src.len(),
        });
    }
    let pinned = guard.as_mut().expect("allocated above");
    // SAFETY: `len` floats allocated above; no copy from it is in flight
    // (each upload waits for its own before returning).
    let host = unsafe { std::slice::from_raw_parts_mut(pinned.ptr, src.len()) };
    host.par_chunks_mut(1 << 16)
        .zip(src.par_chunks(1 << 16))
        .for_each(|(d, s)| d.copy_from_slice(s));
    let stream = *dev.cu_stream();
    // SAFETY: both buffers hold `src.len()` floats; the stream is `dst`'s
    // device's, which outlives the call.
    unsafe {
        sys::cuMemcpyHtoDAsync_v2(
            *dst.device_ptr_mut(),
            pinned.ptr.cast(),
            std::mem::size_of_val(src),
            stream,
        )
        .result()?;
        sys::cuStreamSynchronize(stream).result()
    }
}
