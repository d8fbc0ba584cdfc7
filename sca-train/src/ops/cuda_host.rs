//! Host-to-device copies through pinned (page-locked) memory.
//!
//! A copy from ordinary (pageable) host memory goes through the driver's own
//! staging and, in the GPU machines' VMs, ran at about 2 GB/s: a 512x512
//! batch of 8 four-band tiles (33.5 MB) took 15 ms of a 73 ms training step
//! on an H200 (BENCHMARKS.md, GPU section). Here the data is first copied,
//! in parallel, into a pinned buffer that lives as long as the process, and
//! then to the device by DMA at the bus's speed.
//!
//! The DMA is queued on the device's stream and not waited for: the kernels
//! queued after it on that stream see its data, and the host goes on
//! launching them. Two buffers take turns (a step uploads its images, then
//! its masks), each reused only once the copy out of it has finished, which
//! an event recorded after the copy tells. The copy into the buffer also
//! checks that every value is finite, so the data is read once.

use std::sync::Mutex;

use cudarc::driver::{result::DriverError, sys, CudaSlice, DevicePtrMut, DeviceSlice};
use rayon::prelude::*;

/// A pinned host buffer of `len` floats (`cuMemAllocHost`), and the event
/// recorded after the last copy out of it.
struct Pinned {
    ptr: *mut f32,
    len: usize,
    done: sys::CUevent,
}

// Only used under the mutex below.
unsafe impl Send for Pinned {}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemAllocHost and cuEventCreate, freed once,
        // after the copy out of the buffer has finished.
        unsafe {
            let _ = sys::cuEventSynchronize(self.done);
            let _ = sys::cuEventDestroy_v2(self.done);
            let _ = sys::cuMemFreeHost(self.ptr.cast());
        }
    }
}

impl Pinned {
    /// A buffer of `len` floats; the context is current on this thread.
    fn new(len: usize) -> Result<Self, DriverError> {
        let mut ptr: *mut std::ffi::c_void = std::ptr::null_mut();
        let mut done: sys::CUevent = std::ptr::null_mut();
        // SAFETY: out-pointers; the context is current on this thread.
        unsafe {
            sys::cuMemAllocHost_v2(&mut ptr, len * std::mem::size_of::<f32>()).result()?;
            if let Err(e) = sys::cuEventCreate(
                &mut done,
                sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32,
            )
            .result()
            {
                let _ = sys::cuMemFreeHost(ptr);
                return Err(e);
            }
            // Recorded once so the first wait returns at once.
            sys::cuEventRecord(done, std::ptr::null_mut()).result()?;
        }
        Ok(Pinned {
            ptr: ptr.cast(),
            len,
            done,
        })
    }
}

/// The two staging buffers, and which one the next upload takes.
struct Staging {
    slots: [Option<Pinned>; 2],
    next: usize,
}

fn staging() -> &'static Mutex<Staging> {
    static STAGING: Mutex<Staging> = Mutex::new(Staging {
        slots: [None, None],
        next: 0,
    });
    &STAGING
}

/// Why [`upload`] did not copy.
#[derive(Debug)]
pub(crate) enum UploadError {
    /// `src[i]` is not finite (only where the caller asked for the check).
    NonFinite(usize),
    Driver(DriverError),
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::NonFinite(i) => write!(f, "value {i} is not finite"),
            UploadError::Driver(e) => write!(f, "copying to the device: {e}"),
        }
    }
}

impl From<DriverError> for UploadError {
    fn from(e: DriverError) -> Self {
        UploadError::Driver(e)
    }
}

/// Floats per chunk of the parallel copy.
const CHUNK: usize = 1 << 16;

/// Queues the copy of `src` into `dst` (of the same length) on `dst`'s
/// device's stream, after the work queued there: kernels queued after it see
/// the data; the host does not wait for it. With `check_finite`, refuses
/// (copying nothing to the device) where a value is not finite.
pub(crate) fn upload(
    dst: &mut CudaSlice<f32>,
    src: &[f32],
    check_finite: bool,
) -> Result<(), UploadError> {
    assert_eq!(dst.len(), src.len(), "upload: lengths differ");
    if src.is_empty() {
        return Ok(());
    }
    let dev = dst.device();
    dev.bind_to_thread()?;
    let mut guard = staging().lock().unwrap_or_else(|p| p.into_inner());
    let k = guard.next;
    guard.next = 1 - k;
    let slot = &mut guard.slots[k];
    if slot.as_ref().is_none_or(|p| p.len < src.len()) {
        *slot = None;
        *slot = Some(Pinned::new(src.len())?);
    }
    let pinned = slot.as_mut().expect("allocated above");
    // SAFETY: the event follows the last copy out of this buffer.
    unsafe { sys::cuEventSynchronize(pinned.done) }.result()?;
    // SAFETY: `len` floats allocated above; no copy from it is in flight
    // (waited for just above).
    let host = unsafe { std::slice::from_raw_parts_mut(pinned.ptr, src.len()) };
    let bad = host
        .par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .enumerate()
        .filter_map(|(c, (d, s))| {
            d.copy_from_slice(s);
            if check_finite {
                s.iter().position(|v| !v.is_finite()).map(|i| c * CHUNK + i)
            } else {
                None
            }
        })
        .min();
    if let Some(i) = bad {
        return Err(UploadError::NonFinite(i));
    }
    let stream = *dev.cu_stream();
    // SAFETY: both buffers hold `src.len()` floats; the stream is `dst`'s
    // device's, which outlives the call; the pinned buffer is not written
    // again before `done`, recorded after the copy, has passed.
    unsafe {
        sys::cuMemcpyHtoDAsync_v2(
            *dst.device_ptr_mut(),
            pinned.ptr.cast(),
            std::mem::size_of_val(src),
            stream,
        )
        .result()?;
        sys::cuEventRecord(pinned.done, stream).result()?;
    }
    Ok(())
}
