//! The U-Net segmentation model built from [`sca_spec::Model`], its AdamW
//! optimiser, one-call training step and inference, and a flat, strictly
//! checked named-tensor view of weights and optimiser state for checkpoints.
//!
//! Architecture (widths `w_l = base_width · 2^l`):
//! * encoder level `l` in `0..depth`: two (conv3x3 → BN → ReLU), kept as the
//!   skip, then 2x2 max-pool;
//! * bottom: two (conv3x3 → BN → ReLU) at width `w_depth`;
//! * decoder level `l` from `depth-1` down to 0: 2x2 stride-2 transposed conv to
//!   `w_l`, concatenation `[up, skip]` (up-sampled first), two (conv3x3 → BN → ReLU);
//! * head: 1x1 conv to one logit per pixel.
//!
//! Convolutions followed by batch norm have no bias (BN's shift replaces it);
//! without batch norm every convolution has one. `bench/unet_reference.py` is the
//! same network in PyTorch.
//!
//! The ops live in [`crate::ops`]; this module only wires them.

use dfdx::prelude::*;
use sca_spec::{Architecture, Loss};

use crate::loss::{self, LossError, LossValue};
use crate::ops::adamw::AdamWStep;
use crate::ops::{
    self, batch_norm2d_infer, batch_norm2d_train, concat_channels, conv2d, conv_transpose2x2,
    max_pool2x2, Activation, BatchStats, HostDevice, OpError, Shape4,
};

/// AdamW moments' values on the host (on a GPU, a copy; a failure there is
/// a lost device, which [`ops::host::to_host`] treats alike).
fn moments_to_host<D: HostDevice>(m: &D::Moments) -> Vec<f32> {
    D::moments_to_host(m).expect("reading AdamW's moments from the device")
}

/// A named `f32` tensor: name, shape, row-major data.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Batch-norm epsilon and running-statistics momentum (PyTorch's defaults).
pub const BN_EPS: f32 = 1e-5;
pub const BN_MOMENTUM: f32 = 0.1;

/// Name of the optimiser's step counter in [`UNet::optimizer_tensors`]. Stored as
/// an `f32` of shape `[1]`, exact up to 2^24 steps.
pub const STEP_TENSOR: &str = "adam.step";

/// Shape of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UNetConfig {
    pub in_channels: usize,
    /// Number of 2x2 down-samplings; inputs must be divisible by `2^depth`.
    pub depth: usize,
    /// Feature maps at level 0, doubling per level.
    pub base_width: usize,
    pub batch_norm: bool,
}

impl UNetConfig {
    /// The configuration of an experiment's model for `in_channels` input bands.
    pub fn from_spec(model: &sca_spec::Model, in_channels: usize) -> Result<Self, ModelError> {
        let Architecture::Unet = model.architecture;
        let cfg = UNetConfig {
            in_channels,
            depth: model.depth as usize,
            base_width: model.base_width as usize,
            batch_norm: model.batch_norm,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.in_channels == 0 {
            return bad("in_channels must be at least 1".into());
        }
        if !(1..=8).contains(&self.depth) {
            return bad(format!("depth must be in 1..=8, got {}", self.depth));
        }
        if self.base_width == 0
            || self
                .base_width
                .checked_shl(self.depth as u32)
                .is_none_or(|w| w > 1 << 16)
        {
            return bad(format!(
                "base_width {} is zero or too large for depth {}",
                self.base_width, self.depth
            ));
        }
        Ok(())
    }

    /// Feature maps at level `l`.
    pub fn width(&self, l: usize) -> usize {
        self.base_width << l
    }
}

/// AdamW hyper-parameters (PyTorch's `AdamW` semantics: the decay multiplies
/// the weights by `1 - lr·weight_decay` before the Adam update, and applies to
/// every parameter, as `AdamW(model.parameters())` does).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Model construction, input or step failures.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error(transparent)]
    Op(#[from] OpError),
    #[error(transparent)]
    Loss(#[from] LossError),
    #[error("loss is not finite ({0}); parameters and statistics were left unchanged")]
    NonFiniteLoss(f64),
    #[error("gradient of `{0}` is not finite; parameters and statistics were left unchanged")]
    NonFiniteGradient(String),
    #[error("device error: {0}")]
    Device(String),
}

/// One problem found while loading named tensors.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadIssue {
    Missing(String),
    Unexpected(String),
    Duplicate(String),
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// The data length does not match the tensor's own shape.
    Length {
        name: String,
        shape: Vec<usize>,
        len: usize,
    },
    /// The optimiser step is not a non-negative integer.
    Step(f32),
    /// The device refused the tensors (out of memory, a driver error).
    Device(String),
}

impl std::fmt::Display for LoadIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadIssue::Missing(n) => write!(f, "missing tensor `{n}`"),
            LoadIssue::Unexpected(n) => write!(f, "unexpected tensor `{n}`"),
            LoadIssue::Duplicate(n) => write!(f, "tensor `{n}` given more than once"),
            LoadIssue::Shape {
                name,
                expected,
                found,
            } => {
                write!(
                    f,
                    "tensor `{name}` has shape {found:?}, the model needs {expected:?}"
                )
            }
            LoadIssue::Length { name, shape, len } => {
                write!(f, "tensor `{name}` of shape {shape:?} has {len} values")
            }
            LoadIssue::Step(v) => write!(f, "`{STEP_TENSOR}` is {v}, not a step count"),
            LoadIssue::Device(e) => write!(f, "the device could not take them: {e}"),
        }
    }
}

/// Named tensors that do not match the model exactly; nothing was loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{} does not match the model ({} problem(s), nothing loaded):\n  {}", .what, .issues.len(),
    .issues.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("\n  "))]
pub struct LoadError {
    /// "checkpoint weights" or "optimiser state".
    pub what: &'static str,
    pub issues: Vec<LoadIssue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Train,
    Infer,
}

/// A parameter tensor: 4-D conv weights or 1-D vectors.
#[derive(Debug, Clone)]
enum PTensor<D: HostDevice> {
    W(Tensor<Shape4, f32, D>),
    V(Tensor<(usize,), f32, D>),
}

#[derive(Debug, Clone)]
struct Param<D: HostDevice> {
    name: String,
    shape: Vec<usize>,
    t: PTensor<D>,
}

/// Indices into `UNet::params` / `UNet::bn`.
#[derive(Debug, Clone, Copy)]
struct ConvL {
    w: usize,
    b: Option<usize>,
}
#[derive(Debug, Clone, Copy)]
struct BnL {
    gamma: usize,
    beta: usize,
    state: usize,
}
#[derive(Debug, Clone, Copy)]
struct Block {
    c1: ConvL,
    n1: Option<BnL>,
    c2: ConvL,
    n2: Option<BnL>,
}
#[derive(Debug, Clone, Copy)]
struct UpL {
    w: usize,
    b: usize,
}

#[derive(Debug, Clone)]
struct Layout {
    down: Vec<Block>,
    bottom: Block,
    up: Vec<UpL>,
    dec: Vec<Block>,
    head: ConvL,
}

#[derive(Debug, Clone)]
struct BnRunning {
    name: String,
    mean: Vec<f32>,
    var: Vec<f32>,
}

/// AdamW's step count and moments, the moments where the update runs
/// ([`HostDevice::Moments`]: on a GPU, device buffers).
#[derive(Debug, Clone)]
struct AdamState<D: HostDevice> {
    step: u64,
    m: Vec<D::Moments>,
    v: Vec<D::Moments>,
}

/// Milliseconds of each phase of one training step, each ended by a device
/// synchronisation ([`UNet::train_step_phases`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StepPhases {
    /// Checking the batch and copying it to the device.
    pub input_ms: f64,
    /// The forward pass (on a GPU: its kernels, and reading back each batch
    /// norm's statistics).
    pub forward_ms: f64,
    /// The logits to the host (training metrics and the loss need them).
    pub logits_to_host_ms: f64,
    /// The loss: on the host with its gradient, or (BCE on a GPU) on the device.
    pub loss_ms: f64,
    /// The backward pass (after a host loss, its gradient's copy to the
    /// device included).
    pub backward_ms: f64,
    /// AdamW and the running statistics.
    pub update_ms: f64,
}

/// The U-Net with its parameters, batch-norm running statistics and AdamW state.
#[derive(Debug, Clone)]
pub struct UNet<D: HostDevice = Cpu> {
    dev: D,
    cfg: UNetConfig,
    opt: AdamWConfig,
    params: Vec<Param<D>>,
    bn: Vec<BnRunning>,
    layout: Layout,
    adam: AdamState<D>,
}

impl UNet<Cpu> {
    /// A CPU model with weights drawn deterministically from `seed`.
    pub fn new(cfg: UNetConfig, seed: u64, opt: AdamWConfig) -> Result<Self, ModelError> {
        Self::with_device(Cpu::default(), cfg, seed, opt)
    }
}

impl<D: HostDevice> UNet<D> {
    /// A model on `dev` with He-normal weights (`std = gain / sqrt(fan_in)`,
    /// gain √2 before ReLUs and 1 for the logit head) drawn from `seed` alone,
    /// zero biases, BN scale 1 and shift 0, running mean 0 and variance 1.
    pub fn with_device(
        dev: D,
        cfg: UNetConfig,
        seed: u64,
        opt: AdamWConfig,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        let mut b = Builder {
            dev: dev.clone(),
            seed,
            params: Vec::new(),
            bn: Vec::new(),
        };
        let bn = cfg.batch_norm;
        let w = |l| cfg.width(l);
        let mut down = Vec::new();
        for l in 0..cfg.depth {
            let cin = if l == 0 { cfg.in_channels } else { w(l - 1) };
            down.push(b.block(&format!("down.{l}"), cin, w(l), bn)?);
        }
        let bottom = b.block("bottom", w(cfg.depth - 1), w(cfg.depth), bn)?;
        let mut up = Vec::new();
        let mut dec = Vec::new();
        for l in 0..cfg.depth {
            up.push(b.up(&format!("up.{l}"), w(l + 1), w(l))?);
            dec.push(b.block(&format!("dec.{l}"), 2 * w(l), w(l), bn)?);
        }
        let head = b.conv("head", w(0), 1, 1, true, 1.0)?;
        let Builder { params, bn, .. } = b;
        let zeros = |p: &Param<D>| {
            dev.moments_from_host(&vec![0.0; numel(&p.shape)])
                .map_err(|e| ModelError::Device(e.to_string()))
        };
        let adam = AdamState {
            step: 0,
            m: params.iter().map(zeros).collect::<Result<_, _>>()?,
            v: params.iter().map(zeros).collect::<Result<_, _>>()?,
        };
        Ok(UNet {
            dev,
            cfg,
            opt,
            params,
            bn,
            layout: Layout {
                down,
                bottom,
                up,
                dec,
                head,
            },
            adam,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    pub fn optimizer_config(&self) -> &AdamWConfig {
        &self.opt
    }

    /// Changes the optimiser's hyper-parameters (e.g. a learning-rate schedule);
    /// the moments are kept.
    pub fn set_optimizer_config(&mut self, opt: AdamWConfig) {
        self.opt = opt;
    }

    /// Optimiser steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.adam.step
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|p| numel(&p.shape)).sum()
    }

    /// Checks an input batch and returns it as a tensor.
    fn input(
        &self,
        images: &[f32],
        batch: usize,
        h: usize,
        w: usize,
    ) -> Result<Tensor<Shape4, f32, D>, ModelError> {
        let c = self.cfg.in_channels;
        let m = 1usize << self.cfg.depth;
        if batch == 0 || h == 0 || w == 0 || !h.is_multiple_of(m) || !w.is_multiple_of(m) {
            return Err(ModelError::Input(format!(
                "batch {batch} of {h}x{w} tiles: need a non-empty batch and sides divisible by 2^depth = {m}"
            )));
        }
        let want = batch
            .checked_mul(c)
            .and_then(|v| v.checked_mul(h))
            .and_then(|v| v.checked_mul(w));
        if want != Some(images.len()) {
            return Err(ModelError::Input(format!(
                "{} image values for a batch of {batch} x {c} x {h} x {w}",
                images.len()
            )));
        }
        self.dev
            .tensor_from_host(images, (batch, c, h, w))
            .map_err(|e| ModelError::Device(e.to_string()))?
            .map_err(|i| ModelError::Input(format!("image value {i} is {}", images[i])))
    }

    /// One optimisation step on a batch: `images` is `batch x in_channels x h x w`
    /// (NCHW), `masks` is `batch x h x w` with values in `[0, 1]`. Returns the
    /// loss before the update. On error (bad input, non-finite loss) the model is
    /// unchanged.
    pub fn train_step(
        &mut self,
        images: &[f32],
        masks: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        loss: &Loss,
    ) -> Result<f32, ModelError> {
        Ok(self
            .train_step_detailed(images, masks, batch, h, w, loss)?
            .total as f32)
    }

    /// [`Self::train_step`] returning the value of every loss term too.
    pub fn train_step_detailed(
        &mut self,
        images: &[f32],
        masks: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        loss: &Loss,
    ) -> Result<LossValue, ModelError> {
        Ok(self
            .train_step_with_logits(images, masks, batch, h, w, loss)?
            .0)
    }

    /// [`Self::train_step_detailed`] that also returns the batch's logits
    /// (before the update), so training metrics need no second forward pass.
    pub fn train_step_with_logits(
        &mut self,
        images: &[f32],
        masks: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        loss: &Loss,
    ) -> Result<(LossValue, Vec<f32>), ModelError> {
        self.step(images, masks, (batch, h, w), loss, None)
    }

    /// [`Self::train_step_with_logits`], timing its phases: each ends with the
    /// device synchronised, so the times add up to where a GPU step's wall
    /// time goes (`sca-train bench`), at the cost of the overlap a step
    /// otherwise has.
    pub fn train_step_phases(
        &mut self,
        images: &[f32],
        masks: &[f32],
        (batch, h, w): (usize, usize, usize),
        loss: &Loss,
    ) -> Result<(LossValue, StepPhases), ModelError> {
        let mut phases = StepPhases::default();
        let (value, _) = self.step(images, masks, (batch, h, w), loss, Some(&mut phases))?;
        Ok((value, phases))
    }

    fn step(
        &mut self,
        images: &[f32],
        masks: &[f32],
        (batch, h, w): (usize, usize, usize),
        loss: &Loss,
        mut phases: Option<&mut StepPhases>,
    ) -> Result<(LossValue, Vec<f32>), ModelError> {
        let dev = self.dev.clone();
        let mut clock = std::time::Instant::now();
        let mut mark = |slot: fn(&mut StepPhases) -> &mut f64| -> Result<(), ModelError> {
            if let Some(p) = phases.as_deref_mut() {
                dev.try_synchronize()
                    .map_err(|e| ModelError::Device(e.to_string()))?;
                *slot(p) = clock.elapsed().as_secs_f64() * 1e3;
                clock = std::time::Instant::now();
            }
            Ok(())
        };
        let x = self.input(images, batch, h, w)?;
        if masks.len() != batch * h * w {
            return Err(ModelError::Input(format!(
                "{} mask values for a batch of {batch} x {h} x {w}",
                masks.len()
            )));
        }
        mark(|p| &mut p.input_ms)?;
        let mut stats = Vec::new();
        let logits = self.forward(x.leaky_traced(), Mode::Train, &mut stats)?;
        mark(|p| &mut p.forward_ms)?;
        let host_logits = ops::host::to_host(&logits);
        mark(|p| &mut p.logits_to_host_ms)?;
        let (l, value) = loss::weighted_loss_on(logits, &host_logits, masks, loss)?;
        if !value.total.is_finite() {
            return Err(ModelError::NonFiniteLoss(value.total));
        }
        mark(|p| &mut p.loss_ms)?;
        let mut grads = l.backward();
        mark(|p| &mut p.backward_ms)?;
        self.adamw_update(&mut grads)?;
        for (state, s) in stats {
            self.update_running(state, &s);
        }
        mark(|p| &mut p.update_ms)?;
        Ok((value, host_logits))
    }

    /// Logits (`batch x 1 x h x w`, flattened) for `images` (`batch x in_channels
    /// x h x w`), with batch norm using its running statistics.
    pub fn predict(
        &self,
        images: &[f32],
        batch: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let x = self.input(images, batch, h, w)?;
        let y = self.forward(x, Mode::Infer, &mut Vec::new())?;
        Ok(ops::host::to_host(&y))
    }

    /// Forward pass on a traced tensor, training mode (batch statistics; they are
    /// returned so the caller decides whether to fold them into the running
    /// averages, see [`Self::apply_batch_stats`]). Lower-level than
    /// [`Self::train_step`], for custom training loops.
    #[allow(clippy::type_complexity)]
    pub fn forward_train(
        &self,
        x: Tensor<Shape4, f32, D, OwnedTape<f32, D>>,
    ) -> Result<
        (
            Tensor<Shape4, f32, D, OwnedTape<f32, D>>,
            Vec<(usize, BatchStats)>,
        ),
        ModelError,
    > {
        self.check_channels(x.shape())?;
        let mut stats = Vec::new();
        let y = self.forward(x, Mode::Train, &mut stats)?;
        Ok((y, stats))
    }

    /// Forward pass in inference mode on any tape.
    pub fn forward_infer<T: Tape<f32, D> + Merge<T>>(
        &self,
        x: Tensor<Shape4, f32, D, T>,
    ) -> Result<Tensor<Shape4, f32, D, T>, ModelError> {
        self.check_channels(x.shape())?;
        self.forward(x, Mode::Infer, &mut Vec::new())
    }

    /// Folds batch statistics from [`Self::forward_train`] into the running averages.
    pub fn apply_batch_stats(&mut self, stats: &[(usize, BatchStats)]) {
        for (state, s) in stats {
            self.update_running(*state, s);
        }
    }

    /// Applies one AdamW step with the gradients of a backward pass.
    pub fn apply_gradients(&mut self, grads: &mut Gradients<f32, D>) -> Result<(), ModelError> {
        self.adamw_update(grads)
    }

    fn check_channels(&self, s: &Shape4) -> Result<(), ModelError> {
        let m = 1usize << self.cfg.depth;
        if s.1 != self.cfg.in_channels
            || !s.2.is_multiple_of(m)
            || !s.3.is_multiple_of(m)
            || s.2 == 0
            || s.3 == 0
        {
            return Err(ModelError::Input(format!(
                "input {s:?}: need {} channels and sides divisible by {m}",
                self.cfg.in_channels
            )));
        }
        Ok(())
    }

    fn forward<T: Tape<f32, D> + Merge<T>>(
        &self,
        x: Tensor<Shape4, f32, D, T>,
        mode: Mode,
        stats: &mut Vec<(usize, BatchStats)>,
    ) -> Result<Tensor<Shape4, f32, D, T>, ModelError> {
        let l = &self.layout;
        let mut x = x;
        let mut skips = Vec::with_capacity(l.down.len());
        for blk in &l.down {
            x = self.block(x, blk, mode, stats)?;
            // Same tensor (id and data) without the tape: gradients from the
            // concat and from the pool both accumulate into it.
            skips.push(x.with_empty_tape());
            x = max_pool2x2(x)?;
        }
        x = self.block(x, &l.bottom, mode, stats)?;
        for lvl in (0..l.up.len()).rev() {
            let up = l.up[lvl];
            x = conv_transpose2x2(x, self.w4(up.w), self.v1(up.b))?;
            let skip = skips.pop().expect("one skip per level");
            x = concat_channels(x, skip)?;
            x = self.block(x, &l.dec[lvl], mode, stats)?;
        }
        Ok(self.conv(x, l.head)?)
    }

    fn block<T: Tape<f32, D>>(
        &self,
        x: Tensor<Shape4, f32, D, T>,
        b: &Block,
        mode: Mode,
        stats: &mut Vec<(usize, BatchStats)>,
    ) -> Result<Tensor<Shape4, f32, D, T>, OpError> {
        let x = self.conv_bn_relu(x, b.c1, b.n1, mode, stats)?;
        self.conv_bn_relu(x, b.c2, b.n2, mode, stats)
    }

    fn conv<T: Tape<f32, D>>(
        &self,
        x: Tensor<Shape4, f32, D, T>,
        c: ConvL,
    ) -> Result<Tensor<Shape4, f32, D, T>, OpError> {
        conv2d(x, self.w4(c.w), c.b.map(|b| self.v1(b)))
    }

    fn conv_bn_relu<T: Tape<f32, D>>(
        &self,
        x: Tensor<Shape4, f32, D, T>,
        c: ConvL,
        n: Option<BnL>,
        mode: Mode,
        stats: &mut Vec<(usize, BatchStats)>,
    ) -> Result<Tensor<Shape4, f32, D, T>, OpError> {
        let y = self.conv(x, c)?;
        // Batch norm and ReLU are one op.
        match (n, mode) {
            (None, _) => crate::ops::relu(y),
            (Some(n), Mode::Train) => {
                let (y, s) = batch_norm2d_train(
                    y,
                    self.v1(n.gamma),
                    self.v1(n.beta),
                    BN_EPS,
                    Activation::Relu,
                )?;
                stats.push((n.state, s));
                Ok(y)
            }
            (Some(n), Mode::Infer) => {
                let r = &self.bn[n.state];
                batch_norm2d_infer(
                    y,
                    self.v1(n.gamma),
                    self.v1(n.beta),
                    &r.mean,
                    &r.var,
                    BN_EPS,
                    Activation::Relu,
                )
            }
        }
    }

    fn w4(&self, i: usize) -> &Tensor<Shape4, f32, D> {
        match &self.params[i].t {
            PTensor::W(t) => t,
            PTensor::V(_) => unreachable!("parameter {} is not 4-D", self.params[i].name),
        }
    }

    fn v1(&self, i: usize) -> &Tensor<(usize,), f32, D> {
        match &self.params[i].t {
            PTensor::V(t) => t,
            PTensor::W(_) => unreachable!("parameter {} is not 1-D", self.params[i].name),
        }
    }

    fn update_running(&mut self, state: usize, s: &BatchStats) {
        let r = &mut self.bn[state];
        let m = BN_MOMENTUM;
        for (rm, bm) in r.mean.iter_mut().zip(&s.mean) {
            *rm = (1.0 - m) * *rm + m * bm;
        }
        for (rv, bv) in r.var.iter_mut().zip(s.unbiased_var()) {
            *rv = (1.0 - m) * *rv + m * bv;
        }
    }

    fn adamw_update(&mut self, grads: &mut Gradients<f32, D>) -> Result<(), ModelError> {
        let o = self.opt;
        let t = self.adam.step + 1;
        let s = AdamWStep::new(o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, t);
        let dev = self.dev.clone();
        let dev_err = |e: D::Err| ModelError::Device(e.to_string());
        // All-or-nothing: check every gradient before touching any parameter
        // (on a GPU, one kernel each and one read of all the flags).
        let mut flags = dev.nonfinite_flags(self.params.len()).map_err(dev_err)?;
        for (i, p) in self.params.iter().enumerate() {
            let g = match &p.t {
                PTensor::W(t) => grads.get_or_alloc_mut(t).map_err(dev_err)?,
                PTensor::V(t) => grads.get_or_alloc_mut(t).map_err(dev_err)?,
            };
            dev.flag_nonfinite(g, &mut flags, i).map_err(dev_err)?;
        }
        if let Some(i) = dev.first_flagged(&flags).map_err(dev_err)? {
            return Err(ModelError::NonFiniteGradient(self.params[i].name.clone()));
        }
        for (i, p) in self.params.iter_mut().enumerate() {
            let (m, v) = (&mut self.adam.m[i], &mut self.adam.v[i]);
            match &mut p.t {
                PTensor::W(t) => {
                    let g = grads.get_or_alloc_mut(t).map_err(dev_err)?;
                    dev.adamw(t, m, v, g, &s)
                }
                PTensor::V(t) => {
                    let g = grads.get_or_alloc_mut(t).map_err(dev_err)?;
                    dev.adamw(t, m, v, g, &s)
                }
            }
            .map_err(dev_err)?;
        }
        self.adam.step = t;
        Ok(())
    }

    /// Weights and batch-norm running statistics, in a fixed order, named like
    /// `down.0.conv1.weight`, `down.0.bn1.running_mean`, `up.2.bias`, `head.weight`.
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        let mut out: Vec<NamedTensor> = self
            .params
            .iter()
            .map(|p| {
                let data = match &p.t {
                    PTensor::W(t) => ops::host::to_host(t),
                    PTensor::V(t) => ops::host::to_host(t),
                };
                (p.name.clone(), p.shape.clone(), data)
            })
            .collect();
        for r in &self.bn {
            out.push((
                format!("{}.running_mean", r.name),
                vec![r.mean.len()],
                r.mean.clone(),
            ));
            out.push((
                format!("{}.running_var", r.name),
                vec![r.var.len()],
                r.var.clone(),
            ));
        }
        out
    }

    /// Replaces all weights and running statistics. Strict: fails, loading
    /// nothing, on any missing, unexpected, duplicated or mis-shaped tensor.
    pub fn load_named(&mut self, tensors: &[NamedTensor]) -> Result<(), LoadError> {
        let expected: Vec<(String, Vec<usize>)> = self
            .named_tensors()
            .into_iter()
            .map(|(n, s, _)| (n, s))
            .collect();
        let by_name = match_strict("checkpoint weights", &expected, tensors)?;
        for (i, p) in self.params.iter_mut().enumerate() {
            let data = &tensors[by_name[i]].2;
            match &mut p.t {
                PTensor::W(t) => t.copy_from(data),
                PTensor::V(t) => t.copy_from(data),
            }
        }
        let np = self.params.len();
        for (j, r) in self.bn.iter_mut().enumerate() {
            r.mean.copy_from_slice(&tensors[by_name[np + 2 * j]].2);
            r.var.copy_from_slice(&tensors[by_name[np + 2 * j + 1]].2);
        }
        Ok(())
    }

    /// AdamW state: [`STEP_TENSOR`] plus `adam.m.<param>` and `adam.v.<param>`
    /// (first and second moments) for every parameter of [`Self::named_tensors`].
    ///
    /// The step is an f32, exact up to 2^24; past it, it is saved as 2^24
    /// where that gives the same update (the bias corrections `1 - beta^t`
    /// are 1 in f64 long before, for the betas the trainer uses), so a long
    /// run's checkpoint still resumes bit-exactly.
    pub fn optimizer_tensors(&self) -> Vec<NamedTensor> {
        const EXACT: u64 = 1 << 24;
        let o = self.opt;
        let update = |t: u64| AdamWStep::new(o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, t);
        let step = match self.adam.step {
            t if t > EXACT && update(t + 1) == update(EXACT + 1) => EXACT,
            t => t,
        };
        let mut out = vec![(STEP_TENSOR.to_string(), vec![1], vec![step as f32])];
        for (i, p) in self.params.iter().enumerate() {
            out.push((
                format!("adam.m.{}", p.name),
                p.shape.clone(),
                moments_to_host::<D>(&self.adam.m[i]),
            ));
        }
        for (i, p) in self.params.iter().enumerate() {
            out.push((
                format!("adam.v.{}", p.name),
                p.shape.clone(),
                moments_to_host::<D>(&self.adam.v[i]),
            ));
        }
        out
    }

    /// Restores [`Self::optimizer_tensors`], strictly (as [`Self::load_named`]).
    pub fn load_optimizer(&mut self, tensors: &[NamedTensor]) -> Result<(), LoadError> {
        let expected: Vec<(String, Vec<usize>)> = self
            .optimizer_tensors()
            .into_iter()
            .map(|(n, s, _)| (n, s))
            .collect();
        let by_name = match_strict("optimiser state", &expected, tensors)?;
        let step = tensors[by_name[0]].2[0];
        if !(step >= 0.0 && step.fract() == 0.0 && step <= (1u32 << 24) as f32) {
            return Err(LoadError {
                what: "optimiser state",
                issues: vec![LoadIssue::Step(step)],
            });
        }
        let np = self.params.len();
        let moments = |first: usize| {
            (first..first + np)
                .map(|k| self.dev.moments_from_host(&tensors[by_name[k]].2))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| LoadError {
                    what: "optimiser state",
                    issues: vec![LoadIssue::Device(e.to_string())],
                })
        };
        let (m, v) = (moments(1)?, moments(1 + np)?);
        self.adam.m = m;
        self.adam.v = v;
        self.adam.step = step as u64;
        Ok(())
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// For each expected `(name, shape)`, the index of the given tensor with that
/// name; or every discrepancy at once.
fn match_strict(
    what: &'static str,
    expected: &[(String, Vec<usize>)],
    given: &[NamedTensor],
) -> Result<Vec<usize>, LoadError> {
    use std::collections::HashMap;
    let mut issues = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, (name, shape, data)) in given.iter().enumerate() {
        if index.insert(name.as_str(), i).is_some() {
            issues.push(LoadIssue::Duplicate(name.clone()));
        }
        if numel(shape) != data.len() {
            issues.push(LoadIssue::Length {
                name: name.clone(),
                shape: shape.clone(),
                len: data.len(),
            });
        }
    }
    let mut out = Vec::with_capacity(expected.len());
    for (name, shape) in expected {
        match index.get(name.as_str()) {
            None => issues.push(LoadIssue::Missing(name.clone())),
            Some(&i) => {
                if &given[i].1 != shape {
                    issues.push(LoadIssue::Shape {
                        name: name.clone(),
                        expected: shape.clone(),
                        found: given[i].1.clone(),
                    });
                }
                out.push(i);
            }
        }
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    for (name, _, _) in given {
        if !known.contains(name.as_str()) {
            issues.push(LoadIssue::Unexpected(name.clone()));
        }
    }
    if issues.is_empty() {
        Ok(out)
    } else {
        Err(LoadError { what, issues })
    }
}

/// Creates parameters in a fixed order with per-parameter random streams.
struct Builder<D: HostDevice> {
    dev: D,
    seed: u64,
    params: Vec<Param<D>>,
    bn: Vec<BnRunning>,
}

impl<D: HostDevice> Builder<D> {
    fn push(
        &mut self,
        name: String,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> Result<usize, ModelError> {
        let err = |e: D::Err| ModelError::Device(e.to_string());
        let t = match shape[..] {
            [a, b, c, d] => PTensor::W(
                self.dev
                    .try_tensor_from_vec(data, (a, b, c, d))
                    .map_err(err)?,
            ),
            [a] => PTensor::V(self.dev.try_tensor_from_vec(data, (a,)).map_err(err)?),
            _ => unreachable!("parameters are 1-D or 4-D"),
        };
        self.params.push(Param { name, shape, t });
        Ok(self.params.len() - 1)
    }

    /// He-normal weights with `std = gain / sqrt(fan_in)`.
    fn normal(
        &mut self,
        name: String,
        shape: Vec<usize>,
        fan_in: usize,
        gain: f64,
    ) -> Result<usize, ModelError> {
        let std = gain / (fan_in as f64).sqrt();
        let mut rng = SplitMix64::new(
            self.seed ^ (self.params.len() as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F),
        );
        let data = (0..numel(&shape))
            .map(|_| (rng.normal() * std) as f32)
            .collect();
        self.push(name, shape, data)
    }

    fn conv(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        bias: bool,
        gain: f64,
    ) -> Result<ConvL, ModelError> {
        let w = self.normal(
            format!("{name}.weight"),
            vec![cout, cin, k, k],
            cin * k * k,
            gain,
        )?;
        let b = if bias {
            Some(self.push(format!("{name}.bias"), vec![cout], vec![0.0; cout])?)
        } else {
            None
        };
        Ok(ConvL { w, b })
    }

    fn bn(&mut self, name: &str, c: usize) -> Result<BnL, ModelError> {
        let gamma = self.push(format!("{name}.weight"), vec![c], vec![1.0; c])?;
        let beta = self.push(format!("{name}.bias"), vec![c], vec![0.0; c])?;
        self.bn.push(BnRunning {
            name: name.to_string(),
            mean: vec![0.0; c],
            var: vec![1.0; c],
        });
        Ok(BnL {
            gamma,
            beta,
            state: self.bn.len() - 1,
        })
    }

    fn block(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        bn: bool,
    ) -> Result<Block, ModelError> {
        let relu_gain = std::f64::consts::SQRT_2;
        let c1 = self.conv(&format!("{name}.conv1"), cin, cout, 3, !bn, relu_gain)?;
        let n1 = if bn {
            Some(self.bn(&format!("{name}.bn1"), cout)?)
        } else {
            None
        };
        let c2 = self.conv(&format!("{name}.conv2"), cout, cout, 3, !bn, relu_gain)?;
        let n2 = if bn {
            Some(self.bn(&format!("{name}.bn2"), cout)?)
        } else {
            None
        };
        Ok(Block { c1, n1, c2, n2 })
    }

    fn up(&mut self, name: &str, cin: usize, cout: usize) -> Result<UpL, ModelError> {
        // Each output pixel sees `cin` inputs (one kernel tap per input channel).
        let w = self.normal(format!("{name}.weight"), vec![cin, cout, 2, 2], cin, 1.0)?;
        let b = self.push(format!("{name}.bias"), vec![cout], vec![0.0; cout])?;
        Ok(UpL { w, b })
    }
}

/// Small, portable PRNG (SplitMix64), so initial weights depend on the seed
/// only, never on a dependency's version.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1].
    pub(crate) fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller, one value per call).
    pub(crate) fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sca_spec::{LossKind, LossWeights};

    fn cfg(depth: usize, width: usize, bn: bool) -> UNetConfig {
        UNetConfig {
            in_channels: 3,
            depth,
            base_width: width,
            batch_norm: bn,
        }
    }

    fn data(batch: usize, c: usize, h: usize, w: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut r = SplitMix64::new(seed);
        let images: Vec<f32> = (0..batch * c * h * w).map(|_| r.normal() as f32).collect();
        // A learnable mask: foreground where the first band is positive.
        let masks = (0..batch * h * w)
            .map(|i| {
                let (b, p) = (i / (h * w), i % (h * w));
                (images[b * c * h * w + p] > 0.0) as u8 as f32
            })
            .collect();
        (images, masks)
    }

    #[test]
    fn shapes_names_and_parameter_count() {
        let m = UNet::new(cfg(2, 4, true), 0, AdamWConfig::default()).unwrap();
        let named = m.named_tensors();
        let names: Vec<&str> = named.iter().map(|t| t.0.as_str()).collect();
        for n in [
            "down.0.conv1.weight",
            "down.0.bn1.weight",
            "down.0.bn1.running_var",
            "down.1.conv2.weight",
            "bottom.conv1.weight",
            "up.1.weight",
            "up.0.bias",
            "dec.0.conv1.weight",
            "head.weight",
            "head.bias",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        assert!(
            !names.contains(&"down.0.conv1.bias"),
            "no conv bias before BN"
        );
        let find = |n: &str| named.iter().find(|t| t.0 == n).unwrap().1.clone();
        assert_eq!(find("down.0.conv1.weight"), [4, 3, 3, 3]);
        assert_eq!(find("bottom.conv2.weight"), [16, 16, 3, 3]);
        assert_eq!(find("up.1.weight"), [16, 8, 2, 2]);
        assert_eq!(find("dec.1.conv1.weight"), [8, 16, 3, 3]);
        assert_eq!(find("head.weight"), [1, 4, 1, 1]);
        // Matches torch's sum(p.numel() for p in UNet(3, 2, 4, True).parameters()).
        let conv = |ci: usize, co: usize| ci * co * 9 + 2 * co;
        let want = conv(3, 4)
            + conv(4, 4)
            + conv(4, 8)
            + conv(8, 8)
            + conv(8, 16)
            + conv(16, 16)
            + (16 * 8 * 4 + 8)
            + conv(16, 8)
            + conv(8, 8)
            + (8 * 4 * 4 + 4)
            + conv(8, 4)
            + conv(4, 4)
            + 5;
        assert_eq!(m.num_parameters(), want);

        let (x, _) = data(2, 3, 8, 8, 1);
        let y = m.predict(&x, 2, 8, 8).unwrap();
        assert_eq!(y.len(), 2 * 8 * 8);
        assert!(y.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn initialisation_is_seeded() {
        let a = UNet::new(cfg(1, 2, true), 7, AdamWConfig::default())
            .unwrap()
            .named_tensors();
        let b = UNet::new(cfg(1, 2, true), 7, AdamWConfig::default())
            .unwrap()
            .named_tensors();
        let c = UNet::new(cfg(1, 2, true), 8, AdamWConfig::default())
            .unwrap()
            .named_tensors();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // He-normal scale: std ≈ sqrt(2 / fan_in) on the largest conv.
        let w = &a.iter().find(|t| t.0 == "dec.0.conv1.weight").unwrap().2;
        let std = (w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        let want = (2.0f64 / (4.0 * 9.0)).sqrt();
        assert!((std / want - 1.0).abs() < 0.35, "{std} vs {want}");
    }

    #[test]
    fn training_reduces_loss_and_is_reproducible() {
        for bn in [true, false] {
            let run = || {
                let opt = AdamWConfig {
                    lr: 1e-2,
                    ..Default::default()
                };
                let mut m = UNet::new(cfg(2, 4, bn), 3, opt).unwrap();
                let (x, y) = data(2, 3, 16, 16, 5);
                let spec = Loss::Single(LossKind::Bce);
                let losses: Vec<f32> = (0..15)
                    .map(|_| m.train_step(&x, &y, 2, 16, 16, &spec).unwrap())
                    .collect();
                (losses, m.named_tensors(), m.optimizer_tensors())
            };
            let (losses, weights, opt) = run();
            assert!(losses[14] < losses[0] * 0.8, "bn={bn}: {losses:?}");
            let again = run();
            assert!(
                again.0 == losses && again.1 == weights && again.2 == opt,
                "bn={bn}: not bit-reproducible"
            );
        }
    }

    /// The GPU's computation (the ops on dfdx's own kernels), rehearsed on the
    /// CPU, trains the same network as the host kernels: the gradient of every
    /// parameter and the input agree to rounding, and so do the losses of
    /// several AdamW steps and inference. (Weights are not compared after
    /// steps: Adam scales the rounding noise of near-zero gradients up to the
    /// learning rate.)
    #[test]
    fn dfdx_ops_train_like_the_host_kernels() {
        use crate::ops::testutil::assert_close_f32;
        for bn in [true, false] {
            let run = |dfdx: bool| {
                let go = || {
                    let opt = AdamWConfig {
                        lr: 1e-3,
                        ..Default::default()
                    };
                    let mut m = UNet::new(cfg(2, 4, bn), 3, opt).unwrap();
                    let (x, y) = data(2, 3, 16, 16, 5);
                    let spec = Loss::Single(LossKind::Bce);
                    let xt = m.input(&x, 2, 16, 16).unwrap();
                    let (logits, _) = m.forward_train(xt.leaky_trace()).unwrap();
                    let (l, _) = loss::weighted_loss(logits, &y, &spec).unwrap();
                    let g = l.backward();
                    let mut grads = vec![("input".to_string(), g.get(&xt).as_vec())];
                    for p in &m.params {
                        let v = match &p.t {
                            PTensor::W(t) => g.get(t).as_vec(),
                            PTensor::V(t) => g.get(t).as_vec(),
                        };
                        grads.push((p.name.clone(), v));
                    }
                    let losses: Vec<f32> = (0..6)
                        .map(|_| m.train_step(&x, &y, 2, 16, 16, &spec).unwrap())
                        .collect();
                    (grads, losses, m.predict(&x, 2, 16, 16).unwrap())
                };
                if dfdx {
                    crate::ops::with_dfdx_ops(go)
                } else {
                    go()
                }
            };
            let (host, nat) = (run(false), run(true));
            for ((name, a), (_, b)) in nat.0.iter().zip(&host.0) {
                assert_close_f32(&format!("bn={bn} grad {name}"), a, b, 1e-4);
            }
            assert_close_f32(&format!("bn={bn} losses"), &nat.1, &host.1, 1e-4);
            assert_close_f32(&format!("bn={bn} predict"), &nat.2, &host.2, 1e-2);
        }
    }

    /// Reductions are chunked by data layout, not by thread, so the thread
    /// count must not change a single bit.
    #[test]
    fn results_do_not_depend_on_thread_count() {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut m = UNet::new(cfg(2, 4, true), 11, AdamWConfig::default()).unwrap();
                let (x, y) = data(3, 3, 16, 16, 12);
                let spec = Loss::Weighted(LossWeights {
                    bce: Some(1.0),
                    lovasz: Some(1.0),
                    dice: Some(1.0),
                });
                let losses: Vec<f32> = (0..3)
                    .map(|_| m.train_step(&x, &y, 3, 16, 16, &spec).unwrap())
                    .collect();
                (losses, m.named_tensors(), m.predict(&x, 3, 16, 16).unwrap())
            })
        };
        let one = run(1);
        assert!(one == run(2) && one == run(3));
    }

    #[test]
    fn all_losses_train() {
        let spec = Loss::Weighted(LossWeights {
            bce: Some(0.5),
            lovasz: Some(0.5),
            dice: Some(0.5),
        });
        let mut m = UNet::new(
            cfg(1, 4, true),
            1,
            AdamWConfig {
                lr: 1e-2,
                ..Default::default()
            },
        )
        .unwrap();
        let (x, y) = data(2, 3, 8, 8, 9);
        let v = m.train_step_detailed(&x, &y, 2, 8, 8, &spec).unwrap();
        assert_eq!(v.terms.len(), 3);
        assert_eq!(m.step_count(), 1);
    }

    /// The whole network's gradient against central differences, on a tiny net
    /// without batch norm (its batch statistics make single-pixel nudges very
    /// non-linear at this size) — the per-op tests cover BN. A small step keeps
    /// the nudges from crossing ReLU / max-pool kinks.
    #[test]
    fn network_gradient_matches_numeric() {
        let m = UNet::new(cfg(1, 2, false), 4, AdamWConfig::default()).unwrap();
        let (x, y) = data(1, 3, 4, 4, 2);
        let spec = Loss::Single(LossKind::Bce);
        let xt = m.dev.tensor_from_vec(x.clone(), (1, 3, 4, 4));
        let (logits, _) = m.forward_train(xt.leaky_trace()).unwrap();
        let (l, _) = loss::weighted_loss(logits, &y, &spec).unwrap();
        let grads = l.backward();
        let base = m.named_tensors();
        for name in [
            "down.0.conv1.weight",
            "up.0.weight",
            "dec.0.conv1.weight",
            "head.weight",
            "head.bias",
        ] {
            let wi = base.iter().position(|t| t.0 == name).unwrap();
            let analytic = match &m.params[wi].t {
                PTensor::W(t) => grads.get(t).as_vec(),
                PTensor::V(t) => grads.get(t).as_vec(),
            };
            let f = |v: &[f32]| {
                let mut mm = m.clone();
                let mut t = base.clone();
                t[wi].2 = v.to_vec();
                mm.load_named(&t).unwrap();
                let logits = mm.predict(&x, 1, 4, 4).unwrap();
                loss::evaluate(&logits, &y, 1, &spec).unwrap().0.total
            };
            let num = crate::ops::testutil::numeric_grad(&base[wi].2, 1e-3, f);
            crate::ops::testutil::assert_close(name, &analytic, &num, 1e-2, 5e-5);
        }
    }

    /// Past 2^24 steps (the f32 step's exact range) a checkpoint still
    /// resumes, and its next step is the same update.
    #[test]
    fn a_step_count_past_f32s_exact_range_resumes() {
        let mut a = UNet::new(cfg(1, 2, true), 1, AdamWConfig::default()).unwrap();
        let (x, y) = data(2, 3, 4, 4, 3);
        a.train_step(&x, &y, 2, 4, 4, &Loss::default()).unwrap();
        a.adam.step = (1 << 24) + 3;
        let mut b = UNet::new(cfg(1, 2, true), 2, AdamWConfig::default()).unwrap();
        b.load_named(&a.named_tensors()).unwrap();
        b.load_optimizer(&a.optimizer_tensors()).unwrap();
        assert_eq!(
            a.train_step(&x, &y, 2, 4, 4, &Loss::default()).unwrap(),
            b.train_step(&x, &y, 2, 4, 4, &Loss::default()).unwrap()
        );
        assert_eq!(a.named_tensors(), b.named_tensors());
    }

    #[test]
    fn named_round_trip_and_strict_loading() {
        let mut a = UNet::new(cfg(1, 2, true), 1, AdamWConfig::default()).unwrap();
        let (x, y) = data(2, 3, 4, 4, 3);
        a.train_step(&x, &y, 2, 4, 4, &Loss::default()).unwrap();
        let mut b = UNet::new(cfg(1, 2, true), 2, AdamWConfig::default()).unwrap();
        b.load_named(&a.named_tensors()).unwrap();
        b.load_optimizer(&a.optimizer_tensors()).unwrap();
        assert_eq!(a.named_tensors(), b.named_tensors());
        assert_eq!(b.step_count(), 1);
        assert_eq!(
            a.predict(&x, 2, 4, 4).unwrap(),
            b.predict(&x, 2, 4, 4).unwrap()
        );
        // The next step is identical too (moments and step count restored).
        assert_eq!(
            a.train_step(&x, &y, 2, 4, 4, &Loss::default()).unwrap(),
            b.train_step(&x, &y, 2, 4, 4, &Loss::default()).unwrap()
        );
        assert_eq!(a.named_tensors(), b.named_tensors());

        let good = a.named_tensors();
        let before = b.named_tensors();
        let mut t = good.clone();
        t.retain(|x| x.0 != "head.bias");
        t.push(("extra".into(), vec![1], vec![0.0]));
        let i = t.iter().position(|x| x.0 == "head.weight").unwrap();
        t[i].1 = vec![1, 1, 2, 1];
        let err = b.load_named(&t).unwrap_err();
        assert!(err.issues.contains(&LoadIssue::Missing("head.bias".into())));
        assert!(err.issues.contains(&LoadIssue::Unexpected("extra".into())));
        assert!(err
            .issues
            .iter()
            .any(|i| matches!(i, LoadIssue::Shape { name, .. } if name == "head.weight")));
        let msg = err.to_string();
        assert!(
            msg.contains("missing tensor `head.bias`") && msg.contains("unexpected tensor `extra`"),
            "{msg}"
        );
        assert_eq!(
            b.named_tensors(),
            before,
            "a failed load must not change the model"
        );

        let mut t = good.clone();
        t[0].2.pop();
        assert!(matches!(
            b.load_named(&t).unwrap_err().issues[0],
            LoadIssue::Length { .. }
        ));
        let mut t = good.clone();
        t.push(t[0].clone());
        assert!(b
            .load_named(&t)
            .unwrap_err()
            .issues
            .contains(&LoadIssue::Duplicate(good[0].0.clone())));
        let mut o = a.optimizer_tensors();
        o[0].2[0] = 1.5;
        assert!(b.load_optimizer(&o).is_err());
        // Weights of a model with another width do not load.
        let c = UNet::new(cfg(1, 4, true), 1, AdamWConfig::default()).unwrap();
        assert!(b.load_named(&c.named_tensors()).is_err());
    }

    #[test]
    fn rejects_bad_inputs_and_configs() {
        let mut m = UNet::new(cfg(2, 2, true), 0, AdamWConfig::default()).unwrap();
        let spec = Loss::default();
        assert!(
            m.predict(&[0.0; 3 * 6 * 8], 1, 6, 8).is_err(),
            "6 not divisible by 4"
        );
        assert!(m.predict(&[0.0; 10], 1, 8, 8).is_err());
        assert!(m.predict(&[], 0, 8, 8).is_err());
        assert!(m
            .train_step(&[0.0; 3 * 64], &[0.0; 63], 1, 8, 8, &spec)
            .is_err());
        assert!(m
            .train_step(&[0.0; 3 * 64], &[2.0; 64], 1, 8, 8, &spec)
            .is_err());
        let mut nan = vec![0.0; 3 * 64];
        nan[0] = f32::NAN;
        let before = m.named_tensors();
        assert!(matches!(
            m.train_step(&nan, &[0.0; 64], 1, 8, 8, &spec),
            Err(ModelError::Input(_))
        ));
        assert_eq!(m.named_tensors(), before);
        assert!(UNet::new(cfg(0, 2, true), 0, AdamWConfig::default()).is_err());
        assert!(UNet::new(cfg(2, 0, true), 0, AdamWConfig::default()).is_err());
        let spec_model = sca_spec::Model::default();
        let c = UNetConfig::from_spec(&spec_model, 4).unwrap();
        assert_eq!(
            (c.depth, c.base_width, c.batch_norm, c.in_channels),
            (4, 32, true, 4)
        );
    }
}
