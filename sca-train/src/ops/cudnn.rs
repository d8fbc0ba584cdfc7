//! cuDNN's convolutions, loaded at run time: the library, the descriptors of
//! one convolution geometry, and the algorithm cuDNN found fastest for each
//! direction (forward, data gradient, filter gradient).
//!
//! dfdx's CUDA convolution writes every convolution's 9-fold patch matrix
//! (im2col) and runs GEMMs over it: on an H100 that was 28 ms of unfold
//! kernels and about 24 ms of GEMMs of a 71 ms U-Net step (BENCHMARKS.md,
//! GPU section). cuDNN's implicit-GEMM and Winograd kernels read the
//! activation in place, as PyTorch's convolutions do.
//!
//! Loaded with `dlopen` (`libcudnn.so.9`, else `.8`) rather than linked, so
//! the build needs no cuDNN and a machine without it still trains, on dfdx's
//! im2col kernels ([`status`] says which and why). `SCA_CUDNN=0` turns it off.
//! Only the legacy convolution API is used (deprecated in cuDNN 9, still
//! exported by its `libcudnn.so.9`): every symbol is looked up at load time,
//! so a library without one is refused whole, never half-used.
//!
//! Numerics: `f32` data, `f32` compute, `CUDNN_FMA_MATH` (no TF32: the same
//! arithmetic as PyTorch's fp32 reference with TF32 off); or, where the
//! thread's [`Precision`] is bf16 ([`set_precision`]), bf16 operands on the
//! tensor cores with `f32` accumulation, results widened back to `f32`. Algorithms are
//! chosen by `cudnnFind*`, which times each (like PyTorch's
//! `cudnn.benchmark`): the fastest whose workspace fits [`WORKSPACE_LIMIT`].
//! Some of those (the filter gradient's) sum with atomics, so the last bits
//! of a gradient vary from run to run, as with the fused batch norm's `f64`
//! atomics; `SCA_CUDNN=deterministic` keeps to cuDNN's deterministic
//! algorithms, which on an H200 made a U-Net step 25 ms slower (its
//! deterministic filter gradients of large planes with few channels ran
//! on a handful of blocks).

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaDevice, CudaSlice, DevicePtr, DevicePtrMut, DeviceSlice};
use dfdx::tensor::Cuda;
pub use sca_spec::Precision;

/// Largest workspace an algorithm may ask for.
pub(crate) const WORKSPACE_LIMIT: usize = 256 << 20;

// cuDNN's enums (cudnn_graph.h, cudnn_cnn.h; unchanged since cuDNN 7).
const STATUS_SUCCESS: c_int = 0;
const DATA_FLOAT: c_int = 0;
const TENSOR_NCHW: c_int = 0;
const CROSS_CORRELATION: c_int = 1;
const DATA_BFLOAT16: c_int = 9;
const TENSOR_OP_MATH: c_int = 1;
const FMA_MATH: c_int = 3;
const DETERMINISTIC: c_int = 1;
/// More than any direction has algorithms (8, 6 and 7).
const MAX_ALGOS: usize = 10;
/// Times `cudnnFind*` times each algorithm. One pass's timings are noisy: on
/// an H200 two runs of the same build chose differently for some geometries
/// and their kernels took 46.5 and 49.2 ms per step; the best of three
/// passes is steadier, for a few milliseconds more of the first step.
const FIND_PASSES: usize = 3;

type Status = c_int;
type Handle = *mut c_void;
type Desc = *mut c_void;
type Ptr = *const c_void;
type PtrMut = *mut c_void;

/// `cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t` (one layout for all three).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct AlgoPerf {
    algo: c_int,
    status: Status,
    time: f32,
    memory: usize,
    determinism: c_int,
    math_type: c_int,
    reserved: [c_int; 3],
}

type FindFn = unsafe extern "C" fn(
    Handle,
    Desc,
    Desc,
    Desc,
    Desc,
    c_int,
    *mut c_int,
    *mut AlgoPerf,
) -> Status;
type ConvFn = unsafe extern "C" fn(
    Handle,
    Ptr,
    Desc,
    Ptr,
    Desc,
    Ptr,
    Desc,
    c_int,
    PtrMut,
    usize,
    Ptr,
    Desc,
    PtrMut,
) -> Status;

/// The entry points, resolved once.
struct Api {
    _lib: libloading::Library,
    version: usize,
    get_error_string: unsafe extern "C" fn(Status) -> *const c_char,
    create: unsafe extern "C" fn(*mut Handle) -> Status,
    set_stream: unsafe extern "C" fn(Handle, cudarc::driver::sys::CUstream) -> Status,
    create_tensor: unsafe extern "C" fn(*mut Desc) -> Status,
    set_tensor_4d: unsafe extern "C" fn(Desc, c_int, c_int, c_int, c_int, c_int, c_int) -> Status,
    create_filter: unsafe extern "C" fn(*mut Desc) -> Status,
    set_filter_4d: unsafe extern "C" fn(Desc, c_int, c_int, c_int, c_int, c_int, c_int) -> Status,
    create_conv: unsafe extern "C" fn(*mut Desc) -> Status,
    set_conv_2d: unsafe extern "C" fn(
        Desc,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
    ) -> Status,
    set_math_type: unsafe extern "C" fn(Desc, c_int) -> Status,
    /// (handle, xDesc, wDesc, convDesc, yDesc, ...)
    find_forward: FindFn,
    /// (handle, wDesc, dyDesc, convDesc, dxDesc, ...)
    find_backward_data: FindFn,
    /// (handle, xDesc, dyDesc, convDesc, dwDesc, ...)
    find_backward_filter: FindFn,
    /// (handle, alpha, xDesc, x, wDesc, w, convDesc, algo, ws, wsSize, beta, yDesc, y)
    forward: ConvFn,
    /// (handle, alpha, wDesc, w, dyDesc, dy, convDesc, algo, ws, wsSize, beta, dxDesc, dx)
    backward_data: ConvFn,
    /// (handle, alpha, xDesc, x, dyDesc, dy, convDesc, algo, ws, wsSize, beta, dwDesc, dw)
    backward_filter: ConvFn,
    /// (handle, alpha, aDesc, A, beta, cDesc, C): C = alpha A + beta C, A broadcast.
    add_tensor: unsafe extern "C" fn(Handle, Ptr, Desc, Ptr, Ptr, Desc, PtrMut) -> Status,
}

// The function pointers and the library handle are plain data.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

/// The function `name` of `lib`, as the function pointer type `F`.
fn sym<F: Copy>(lib: &libloading::Library, name: &str) -> Result<F, String> {
    // SAFETY: every `F` this module asks for is the symbol's C signature
    // (cudnn_graph.h, cudnn_ops.h, cudnn_cnn.h).
    unsafe { lib.get::<F>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| format!("cuDNN lacks {name}: {e}"))
}

impl Api {
    fn load() -> Result<Api, String> {
        let names = ["libcudnn.so.9", "libcudnn.so.8"];
        let mut tried = Vec::new();
        let lib = names
            .iter()
            .find_map(|name| {
                // SAFETY: cuDNN's initialisers only register its sub-libraries.
                match unsafe { libloading::Library::new(name) } {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tried.push(format!("{name}: {e}"));
                        None
                    }
                }
            })
            .ok_or_else(|| format!("cuDNN not found ({})", tried.join("; ")))?;
        let get_version: unsafe extern "C" fn() -> usize = sym(&lib, "cudnnGetVersion")?;
        Ok(Api {
            // SAFETY: no arguments, returns a number.
            version: unsafe { get_version() },
            get_error_string: sym(&lib, "cudnnGetErrorString")?,
            create: sym(&lib, "cudnnCreate")?,
            set_stream: sym(&lib, "cudnnSetStream")?,
            create_tensor: sym(&lib, "cudnnCreateTensorDescriptor")?,
            set_tensor_4d: sym(&lib, "cudnnSetTensor4dDescriptor")?,
            create_filter: sym(&lib, "cudnnCreateFilterDescriptor")?,
            set_filter_4d: sym(&lib, "cudnnSetFilter4dDescriptor")?,
            create_conv: sym(&lib, "cudnnCreateConvolutionDescriptor")?,
            set_conv_2d: sym(&lib, "cudnnSetConvolution2dDescriptor")?,
            set_math_type: sym(&lib, "cudnnSetConvolutionMathType")?,
            find_forward: sym(&lib, "cudnnFindConvolutionForwardAlgorithm")?,
            find_backward_data: sym(&lib, "cudnnFindConvolutionBackwardDataAlgorithm")?,
            find_backward_filter: sym(&lib, "cudnnFindConvolutionBackwardFilterAlgorithm")?,
            forward: sym(&lib, "cudnnConvolutionForward")?,
            backward_data: sym(&lib, "cudnnConvolutionBackwardData")?,
            backward_filter: sym(&lib, "cudnnConvolutionBackwardFilter")?,
            add_tensor: sym(&lib, "cudnnAddTensor")?,
            _lib: lib,
        })
    }

    fn check(&self, what: &str, s: Status) -> Result<(), String> {
        if s == STATUS_SUCCESS {
            return Ok(());
        }
        // SAFETY: returns a static string for any status.
        let msg = unsafe { CStr::from_ptr((self.get_error_string)(s)) };
        Err(format!("cuDNN {what}: {} ({s})", msg.to_string_lossy()))
    }
}

/// Which algorithms [`Plan::find`] may choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// The fastest (the default).
    Fastest,
    /// The fastest of cuDNN's deterministic ones (`SCA_CUDNN=deterministic`).
    Deterministic,
}

/// `SCA_CUDNN`: unset, `1` or `on` (cuDNN where it loads), `deterministic`,
/// or `0` / `off` (dfdx's im2col convolutions).
fn setting() -> Result<Choice, String> {
    match std::env::var("SCA_CUDNN").as_deref().map(str::trim) {
        Err(_) | Ok("" | "1" | "on") => Ok(Choice::Fastest),
        Ok("deterministic") => Ok(Choice::Deterministic),
        Ok("0" | "off") => Err("turned off by SCA_CUDNN".into()),
        Ok(other) => Err(format!(
            "SCA_CUDNN={other:?} is not one of 1, on, deterministic, 0, off"
        )),
    }
}

thread_local! {
    static PRECISION: std::cell::Cell<Precision> = const { std::cell::Cell::new(Precision::Fp32) };
}

/// Sets the number format of the convolutions this thread runs from now on
/// (per thread, like [`super::with_dfdx_ops`]: the training loop's thread
/// sets it once) and returns the previous one. [`Precision::Bf16`]: each
/// convolution's operands are rounded to bf16 (`to_bf16` in `kernels.cu`),
/// cuDNN multiplies them on the tensor cores accumulating in `f32` (its
/// `PSEUDO_BFLOAT16` configuration), and the bf16 result is widened into the
/// `f32` output, as PyTorch's autocast does around its convolutions.
pub fn set_precision(p: Precision) -> Precision {
    PRECISION.with(|c| c.replace(p))
}

/// This thread's convolution number format ([`set_precision`]).
pub fn precision() -> Precision {
    PRECISION.with(std::cell::Cell::get)
}

fn api() -> &'static Result<(Api, Choice), String> {
    static API: OnceLock<Result<(Api, Choice), String>> = OnceLock::new();
    API.get_or_init(|| {
        let choice = setting()?;
        Ok((Api::load()?, choice))
    })
}

/// Why cuDNN was turned off after it loaded ([`disable`]).
fn disabled() -> &'static OnceLock<String> {
    static WHY: OnceLock<String> = OnceLock::new();
    &WHY
}

/// Turns cuDNN off for the rest of the process: the device probe does this
/// when cuDNN loaded but failed the first training step, which then runs
/// again on dfdx's kernels. Takes effect for ops started afterwards.
pub fn disable(why: String) {
    let _ = disabled().set(why);
}

/// Which convolutions the GPU runs: `Ok("cuDNN 9.x.y")`, or why dfdx's
/// im2col kernels run instead. Loads the library on first use.
pub fn status() -> Result<String, String> {
    if let Some(why) = disabled().get() {
        return Err(why.clone());
    }
    api()
        .as_ref()
        .map(|(a, choice)| {
            let v = a.version;
            // 8.x: MMmmpp (8907); 9.x: MMmmmpp (90100).
            let (major, minor, patch) = if v >= 90000 {
                (v / 10000, v % 10000 / 100, v % 100)
            } else {
                (v / 1000, v % 1000 / 100, v % 100)
            };
            match choice {
                Choice::Fastest => format!("cuDNN {major}.{minor}.{patch}"),
                Choice::Deterministic => format!("cuDNN {major}.{minor}.{patch} (deterministic)"),
            }
        })
        .map_err(Clone::clone)
}

/// The geometry of one plain convolution (cross-correlation), NCHW:
/// input `(n, c, h, w)`, filter `(k, c, r, r)`, zero padding `pad`, stride
/// `stride`; the output is `(n, k, out_h, out_w)`. A transposed convolution
/// is the data gradient of the convolution whose output is its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Geometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub r: usize,
    pub pad: usize,
    pub stride: usize,
}

impl Geometry {
    pub fn out_hw(&self) -> (usize, usize) {
        let o = |i: usize| (i + 2 * self.pad - self.r) / self.stride + 1;
        (o(self.h), o(self.w))
    }
    pub fn input_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn output_len(&self) -> usize {
        let (oh, ow) = self.out_hw();
        self.n * self.k * oh * ow
    }
}

/// Which of a convolution's three computations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    BackwardData,
    BackwardFilter,
}

impl Direction {
    /// The descriptors of its two operands and its result, in the order
    /// cuDNN's find and compute functions take them.
    fn descs(self, p: &Plan) -> (Desc, Desc, Desc) {
        match self {
            Direction::Forward => (p.x, p.w, p.y),
            Direction::BackwardData => (p.w, p.y, p.x),
            Direction::BackwardFilter => (p.x, p.y, p.w),
        }
    }
    /// The lengths of those three buffers.
    fn lens(self, g: Geometry) -> [usize; 3] {
        let filter = g.k * g.c * g.r * g.r;
        match self {
            Direction::Forward => [g.input_len(), filter, g.output_len()],
            Direction::BackwardData => [filter, g.output_len(), g.input_len()],
            Direction::BackwardFilter => [g.input_len(), g.output_len(), filter],
        }
    }
    fn what(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::BackwardData => "data gradient",
            Direction::BackwardFilter => "filter gradient",
        }
    }
    fn find_fn(self, api: &Api) -> FindFn {
        match self {
            Direction::Forward => api.find_forward,
            Direction::BackwardData => api.find_backward_data,
            Direction::BackwardFilter => api.find_backward_filter,
        }
    }
    fn compute_fn(self, api: &Api) -> ConvFn {
        match self {
            Direction::Forward => api.forward,
            Direction::BackwardData => api.backward_data,
            Direction::BackwardFilter => api.backward_filter,
        }
    }
}

/// An algorithm and its workspace.
#[derive(Debug, Clone, Copy)]
struct Algo {
    algo: c_int,
    workspace: usize,
}

/// Descriptors of one geometry, and the algorithms found for it.
struct Plan {
    geometry: Geometry,
    x: Desc,
    w: Desc,
    y: Desc,
    conv: Desc,
    /// `(1, k, 1, 1)` and `(1, c, 1, 1)`: the biases of the convolution and
    /// of its transpose.
    bias_k: Desc,
    bias_c: Desc,
    algos: [Option<Algo>; 3],
}

/// One cuDNN handle on one device's stream, its plans and workspace.
struct Context {
    ordinal: usize,
    choice: Choice,
    handle: Handle,
    plans: HashMap<(Geometry, Precision), Plan>,
    workspace: Option<CudaSlice<u8>>,
}

// Descriptors and the handle are used under the mutex only.
unsafe impl Send for Context {}

fn context() -> &'static Mutex<Option<Context>> {
    static CTX: OnceLock<Mutex<Option<Context>>> = OnceLock::new();
    CTX.get_or_init(|| Mutex::new(None))
}

/// Runs `f` with cuDNN bound to `dev`'s stream (all of dfdx's work is on it,
/// so cuDNN's kernels are ordered with dfdx's).
fn with_context<R>(
    dev: &Arc<CudaDevice>,
    f: impl FnOnce(&Api, &mut Context) -> Result<R, String>,
) -> Result<R, String> {
    let (api, choice) = api().as_ref().map_err(Clone::clone)?;
    let mut guard = context().lock().unwrap_or_else(|p| p.into_inner());
    dev.bind_to_thread().map_err(|e| format!("{e:?}"))?;
    if guard.as_ref().is_some_and(|c| c.ordinal != dev.ordinal()) {
        return Err("cuDNN is bound to another GPU of this process".into());
    }
    if guard.is_none() {
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: out-pointer to a handle; the device's context is current.
        api.check("create", unsafe { (api.create)(&mut handle) })?;
        // SAFETY: a stream of the current context, alive as long as `dev`,
        // which dfdx keeps for the process.
        api.check("set stream", unsafe {
            (api.set_stream)(handle, *dev.cu_stream())
        })?;
        *guard = Some(Context {
            ordinal: dev.ordinal(),
            choice: *choice,
            handle,
            plans: HashMap::new(),
            workspace: None,
        });
    }
    f(api, guard.as_mut().expect("set above"))
}

impl Context {
    fn plan(&mut self, api: &Api, g: Geometry, prec: Precision) -> Result<&mut Plan, String> {
        match self.plans.entry((g, prec)) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => Ok(e.insert(Plan::new(api, g, prec)?)),
        }
    }

    /// The chosen algorithm of `dir` for `g` (found on first use), and a
    /// workspace pointer at least as large as it needs.
    fn algo(
        &mut self,
        api: &Api,
        dev: &Arc<CudaDevice>,
        g: Geometry,
        prec: Precision,
        dir: Direction,
    ) -> Result<(c_int, PtrMut, usize), String> {
        let (handle, choice) = (self.handle, self.choice);
        let plan = self.plan(api, g, prec)?;
        let slot = dir as usize;
        let algo = match plan.algos[slot] {
            Some(a) => a,
            None => {
                let a = plan.find(api, handle, dir, choice)?;
                plan.algos[slot] = Some(a);
                a
            }
        };
        let ws = self.workspace(dev, algo.workspace)?;
        Ok((algo.algo, ws, algo.workspace))
    }

    fn workspace(&mut self, dev: &Arc<CudaDevice>, len: usize) -> Result<PtrMut, String> {
        if len == 0 {
            return Ok(std::ptr::null_mut());
        }
        if self.workspace.as_ref().is_none_or(|w| w.len() < len) {
            // Stream-ordered: the old one is freed after the work queued on it.
            self.workspace = None;
            // SAFETY: a workspace is scratch, never read before cuDNN writes it.
            let ws = unsafe { dev.alloc::<u8>(len) }
                .map_err(|e| format!("allocating a {len}-byte cuDNN workspace: {e:?}"))?;
            self.workspace = Some(ws);
        }
        let ws = self.workspace.as_mut().expect("set above");
        Ok(*ws.device_ptr_mut() as PtrMut)
    }
}

impl Plan {
    /// Descriptors of `g` with operands in `prec`'s format (`f32`
    /// accumulation either way).
    fn new(api: &Api, g: Geometry, prec: Precision) -> Result<Plan, String> {
        let (data, math) = match prec {
            Precision::Fp32 => (DATA_FLOAT, FMA_MATH),
            Precision::Bf16 => (DATA_BFLOAT16, TENSOR_OP_MATH),
        };
        let i = |v: usize| -> Result<c_int, String> {
            c_int::try_from(v).map_err(|_| format!("cuDNN: dimension {v} is too large"))
        };
        let (oh, ow) = g.out_hw();
        let mut descs = [std::ptr::null_mut(); 6];
        // SAFETY: out-pointers to descriptors, then setters on them with
        // cuDNN's argument order; descriptors live as long as the process.
        unsafe {
            for (n, d) in descs.iter_mut().enumerate() {
                match n {
                    1 => api.check("create filter", (api.create_filter)(d))?,
                    3 => api.check("create convolution", (api.create_conv)(d))?,
                    _ => api.check("create tensor", (api.create_tensor)(d))?,
                }
            }
            let [x, w, y, conv, bias_k, bias_c] = descs;
            let t4 = |d, ty, n, c, h, w| -> Result<(), String> {
                api.check(
                    "tensor descriptor",
                    (api.set_tensor_4d)(d, TENSOR_NCHW, ty, i(n)?, i(c)?, i(h)?, i(w)?),
                )
            };
            t4(x, data, g.n, g.c, g.h, g.w)?;
            t4(y, data, g.n, g.k, oh, ow)?;
            // Biases are added to the f32 results (`add_bias`, fp32 plans only).
            t4(bias_k, DATA_FLOAT, 1, g.k, 1, 1)?;
            t4(bias_c, DATA_FLOAT, 1, g.c, 1, 1)?;
            api.check(
                "filter descriptor",
                (api.set_filter_4d)(w, data, TENSOR_NCHW, i(g.k)?, i(g.c)?, i(g.r)?, i(g.r)?),
            )?;
            let (p, s) = (i(g.pad)?, i(g.stride)?);
            api.check(
                "convolution descriptor",
                (api.set_conv_2d)(conv, p, p, s, s, 1, 1, CROSS_CORRELATION, DATA_FLOAT),
            )?;
            api.check("math type", (api.set_math_type)(conv, math))?;
            Ok(Plan {
                geometry: g,
                x,
                w,
                y,
                conv,
                bias_k,
                bias_c,
                algos: [None; 3],
            })
        }
    }

    /// Times every algorithm of `dir` [`FIND_PASSES`] times (cuDNN
    /// allocates its own buffers) and keeps the one `choice` allows within
    /// the workspace limit whose best time is the shortest.
    fn find(
        &self,
        api: &Api,
        handle: Handle,
        dir: Direction,
        choice: Choice,
    ) -> Result<Algo, String> {
        let (f, what) = (dir.find_fn(api), dir.what());
        let (a, b, d) = dir.descs(self);
        let mut best: Vec<AlgoPerf> = Vec::new();
        for _ in 0..FIND_PASSES {
            let mut perf = [AlgoPerf::default(); MAX_ALGOS];
            let mut count: c_int = 0;
            // SAFETY: descriptors of this plan in the order `f` takes them;
            // the results array holds MAX_ALGOS entries.
            api.check(&format!("finding the {what} algorithm"), unsafe {
                f(
                    handle,
                    a,
                    b,
                    self.conv,
                    d,
                    MAX_ALGOS as c_int,
                    &mut count,
                    perf.as_mut_ptr(),
                )
            })?;
            let found = &perf[..(count.max(0) as usize).min(MAX_ALGOS)];
            for p in found.iter().filter(|p| {
                p.status == STATUS_SUCCESS
                    && p.memory <= WORKSPACE_LIMIT
                    && (choice == Choice::Fastest || p.determinism == DETERMINISTIC)
            }) {
                match best.iter_mut().find(|b| b.algo == p.algo) {
                    Some(b) if p.time < b.time => *b = *p,
                    Some(_) => {}
                    None => best.push(*p),
                }
            }
        }
        best.iter()
            .min_by(|x, y| x.time.total_cmp(&y.time))
            .map(|p| Algo {
                algo: p.algo,
                workspace: p.memory,
            })
            .ok_or_else(|| format!("cuDNN has no {choice:?} {what} algorithm for {self:?}"))
    }
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.geometry.fmt(f)
    }
}

const ONE: f32 = 1.0;
const ZERO: f32 = 0.0;

fn ptr(s: &CudaSlice<f32>) -> Ptr {
    *s.device_ptr() as Ptr
}
fn ptr_mut(s: &mut CudaSlice<f32>) -> PtrMut {
    *s.device_ptr_mut() as PtrMut
}

/// Whether to overwrite the output or add to it (gradients accumulate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    Overwrite,
    Accumulate,
}

impl Write {
    fn beta(self) -> Ptr {
        match self {
            Write::Overwrite => &ZERO as *const f32 as Ptr,
            Write::Accumulate => &ONE as *const f32 as Ptr,
        }
    }
}

fn check_len(what: &str, s: &CudaSlice<f32>, want: usize) -> Result<(), String> {
    if s.len() == want {
        Ok(())
    } else {
        Err(format!(
            "cuDNN {what}: buffer of {} elements, {want} expected",
            s.len()
        ))
    }
}

/// Bytes of the one buffer cuDNN's calls keep from call to call, the
/// workspace (0 before any convolution).
#[cfg(test)]
pub(crate) fn workspace_bytes() -> usize {
    let guard = context().lock().unwrap_or_else(|p| p.into_inner());
    guard
        .as_ref()
        .and_then(|c| c.workspace.as_ref())
        .map_or(0, |w| w.len())
}

/// A convolution operand: `f32`, or already rounded to bf16 (an activation
/// an op kept in bf16, [`super::cuda_bf16::Saved`]: `len` values packed two
/// to an `f32` of `words`; bf16 steps only).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Operand<'a> {
    F32(&'a CudaSlice<f32>),
    Bf16 {
        words: &'a CudaSlice<f32>,
        len: usize,
    },
}

impl<'a> From<&'a CudaSlice<f32>> for Operand<'a> {
    fn from(s: &'a CudaSlice<f32>) -> Self {
        Operand::F32(s)
    }
}

impl Operand<'_> {
    fn len(&self) -> usize {
        match self {
            Operand::F32(s) => s.len(),
            Operand::Bf16 { len, .. } => *len,
        }
    }
}

/// `y (=|+=) conv(x, w)`.
pub(crate) fn forward<'a>(
    dev: &Cuda,
    g: Geometry,
    x: impl Into<Operand<'a>>,
    w: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    write: Write,
) -> Result<(), String> {
    run(dev, g, Direction::Forward, x.into(), w.into(), y, write)
}

/// `dx (=|+=)` the data gradient of `conv(x, w)` for output gradient `dy`.
pub(crate) fn backward_data<'a>(
    dev: &Cuda,
    g: Geometry,
    w: &CudaSlice<f32>,
    dy: impl Into<Operand<'a>>,
    dx: &mut CudaSlice<f32>,
    write: Write,
) -> Result<(), String> {
    run(
        dev,
        g,
        Direction::BackwardData,
        w.into(),
        dy.into(),
        dx,
        write,
    )
}

/// `dw +=` the filter gradient of `conv(x, w)` for output gradient `dy`.
pub(crate) fn backward_filter<'a, 'b>(
    dev: &Cuda,
    g: Geometry,
    x: impl Into<Operand<'a>>,
    dy: impl Into<Operand<'b>>,
    dw: &mut CudaSlice<f32>,
) -> Result<(), String> {
    run(
        dev,
        g,
        Direction::BackwardFilter,
        x.into(),
        dy.into(),
        dw,
        Write::Accumulate,
    )
}

/// `out (=|+=) dir(a, b)` for `g`, in this thread's [`Precision`]: in `f32`
/// directly; in bf16 through buffers from dfdx's cache, each `f32` operand
/// rounded into one (a bf16 operand is read in place), the result widened
/// from another, all back to the cache after the call. Not kept from call
/// to call: three buffers as large as the largest operands would stay
/// allocated beside the activations (320 MiB for the quickstart U-Net at
/// 512x512, batch 8), where these, packed two bf16 values to an `f32`
/// ([`super::cuda_bf16::packed`]), have the activations' sizes and are
/// shared with them.
fn run(
    dev: &Cuda,
    g: Geometry,
    dir: Direction,
    a: Operand<'_>,
    b: Operand<'_>,
    out: &mut CudaSlice<f32>,
    write: Write,
) -> Result<(), String> {
    let what = dir.what();
    let lens = dir.lens(g);
    for (op, want) in [(a, lens[0]), (b, lens[1])] {
        if op.len() != want {
            return Err(format!(
                "cuDNN {what} operand: buffer of {} elements, {want} expected",
                op.len()
            ));
        }
    }
    check_len(&format!("{what} result"), out, lens[2])?;
    let prec = precision();
    let cu = out.device();
    with_context(&cu, |api, ctx| {
        let (algo, ws, ws_len) = ctx.algo(api, &cu, g, prec, dir)?;
        let (handle, compute) = (ctx.handle, dir.compute_fn(api));
        let plan = &ctx.plans[&(g, prec)];
        let ((ad, bd, od), conv) = (dir.descs(plan), plan.conv);
        // SAFETY: buffers of the lengths the descriptors describe (checked
        // above, or allocated so below), on the handle's device; alpha and
        // beta point to f32 (FLOAT compute, in either precision).
        let call = |ap: Ptr, bp: Ptr, op: PtrMut, beta: Ptr| {
            api.check(what, unsafe {
                compute(
                    handle,
                    &ONE as *const f32 as Ptr,
                    ad,
                    ap,
                    bd,
                    bp,
                    conv,
                    algo,
                    ws,
                    ws_len,
                    beta,
                    od,
                    op,
                )
            })
        };
        if prec == Precision::Fp32 {
            return match (a, b) {
                (Operand::F32(a), Operand::F32(b)) => {
                    call(ptr(a), ptr(b), ptr_mut(out), write.beta())
                }
                _ => Err(format!(
                    "cuDNN {what}: a bf16 operand in an fp32 convolution"
                )),
            };
        }
        let bf16 = |e: String| format!("cuDNN bf16 {what}: {e}");
        // Each operand in bf16: its own buffer, or the one it is rounded
        // into (held until cuDNN has been queued).
        let in_bf16 = |op: Operand<'_>| match op {
            Operand::Bf16 { words, len } if 2 * words.len() >= len => {
                Ok((*words.device_ptr() as Ptr, None))
            }
            Operand::Bf16 { words, len } => {
                Err(bf16(format!("{len} bf16 values in {} f32s", words.len())))
            }
            Operand::F32(s) => {
                let r = super::cuda_bf16::rounded(dev, s).map_err(bf16)?;
                let p = *r
                    .contiguous_cuda_slice()
                    .expect("made contiguous")
                    .device_ptr() as Ptr;
                Ok((p, Some(r)))
            }
        };
        let ((ap, _a), (bp, _b)) = (in_bf16(a)?, in_bf16(b)?);
        // SAFETY: cuDNN writes every value of the result (beta 0) before
        // `widen` reads them.
        let mut ob = unsafe { super::cuda_bf16::packed(dev, lens[2]) }.map_err(bf16)?;
        let result = call(
            ap,
            bp,
            *ob.device_ptr_mut() as PtrMut,
            Write::Overwrite.beta(),
        )
        .and_then(|()| super::cuda_bf16::widen(&ob, out, write).map_err(bf16));
        // Back to dfdx's cache (a bare buffer would go back to the driver).
        drop(dev.tensor_from_cuda_slice((ob.len(),), ob));
        result
    })
}

/// Which side of a geometry a per-channel bias belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The convolution's output `(n, k, ...)`.
    Output,
    /// Its input `(n, c, ...)`: the output of the transposed convolution.
    Input,
}

impl Side {
    fn descs(self, p: &Plan) -> (Desc, Desc) {
        match self {
            Side::Output => (p.bias_k, p.y),
            Side::Input => (p.bias_c, p.x),
        }
    }
    fn lens(self, g: Geometry) -> (usize, usize) {
        match self {
            Side::Output => (g.k, g.output_len()),
            Side::Input => (g.c, g.input_len()),
        }
    }
}

/// `t += bias` broadcast over the images and pixels of `side`.
pub(crate) fn add_bias(
    g: Geometry,
    side: Side,
    bias: &CudaSlice<f32>,
    t: &mut CudaSlice<f32>,
) -> Result<(), String> {
    let (channels, len) = side.lens(g);
    check_len("bias", bias, channels)?;
    check_len("biased tensor", t, len)?;
    let dev = t.device();
    with_context(&dev, |api, ctx| {
        let p = ctx.plan(api, g, Precision::Fp32)?;
        let (b, td) = side.descs(p);
        // SAFETY: as in `forward`.
        api.check("bias", unsafe {
            (api.add_tensor)(
                ctx.handle,
                &ONE as *const f32 as Ptr,
                b,
                ptr(bias),
                &ONE as *const f32 as Ptr,
                td,
                ptr_mut(t),
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_output_sizes() {
        let same = Geometry {
            n: 2,
            c: 3,
            h: 8,
            w: 6,
            k: 5,
            r: 3,
            pad: 1,
            stride: 1,
        };
        assert_eq!(same.out_hw(), (8, 6));
        assert_eq!(same.output_len(), 2 * 5 * 8 * 6);
        // The convolution whose data gradient is a 2x2 stride-2 transposed
        // convolution from (2, 5, 4, 3) to (2, 3, 8, 6).
        let up = Geometry {
            r: 2,
            pad: 0,
            stride: 2,
            ..same
        };
        assert_eq!(up.out_hw(), (4, 3));
        assert_eq!(up.input_len(), 2 * 3 * 8 * 6);
    }

    #[test]
    fn perf_struct_has_cudnns_layout() {
        // int algo, status; float time; size_t memory; int determinism,
        // mathType, reserved[3]: 48 bytes on x86-64 (cudarc's bindgen test).
        assert_eq!(std::mem::size_of::<AlgoPerf>(), 48);
    }
}
