//! The batch loader: a seeded epoch order, background reader threads that
//! decode, normalise and augment tiles ahead of the trainer, and a reorder
//! stage so batches are identical whatever the thread timing.
//!
//! Worker threads claim positions of the epoch order from a shared counter,
//! but never more than `(1 + prefetch_batches) * batch_size` positions ahead
//! of the batch being consumed, so memory is bounded. Finished samples come
//! back over a channel tagged with their position; the iterator assembles
//! batch `b` from positions `b * batch_size ..` in order. A tile that fails
//! to load, or whose load panics, surfaces as an `Err` at its batch (after
//! every earlier batch), and the iterator then ends. Dropping the iterator
//! stops and joins the workers, unless its interrupt flag is raised before
//! or during that wait ([`BatchIter::interrupt_on`]). For S3 roots more
//! threads (16 by default) overlap request latency.
//!
//! A pass can start at a batch of the epoch's order
//! ([`Loader::batches_from`]): a run resumed mid-epoch never reads the tiles
//! of the batches it already trained on, so a fault there cannot cut its
//! epoch short.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::augment::{augment_params, AugmentParams};
use super::discover::{default_workers, TileId, TileIndex};
use super::error::{panic_message, DataError, Result, TileError};
use super::normalize::Normalizer;
use sca_spec::Augmentation;

const TAG_SHUFFLE: u64 = 0x5348_5546_0000_0001;

/// Batching and prefetch settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Reader threads; `None`: one per CPU for local roots, 16 for S3.
    pub workers: Option<usize>,
    /// Batches prepared ahead of the one being consumed.
    pub prefetch_batches: usize,
    /// Drop the last, incomplete batch.
    pub drop_last: bool,
}

impl LoaderConfig {
    /// `batch_size` with default prefetching (4 batches ahead, last batch kept).
    pub fn new(batch_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            workers: None,
            prefetch_batches: 4,
            drop_last: false,
        }
    }
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig::new(8)
    }
}

/// What one pass over a split looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochPlan {
    pub epoch: u32,
    /// The experiment seed.
    pub seed: u64,
    /// Shuffle the order (seeded by `(seed, epoch)`); otherwise index order.
    pub shuffle: bool,
    /// Augment (training only).
    pub augmentation: Option<Augmentation>,
}

/// One loaded tile.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Index into [`TileIndex::pairs`].
    pub tile: usize,
    pub id: TileId,
    /// Normalised CHW image.
    pub image: Vec<f32>,
    /// HW mask, 0.0 or 1.0.
    pub mask: Vec<f32>,
}

/// A batch: `images` is NCHW, `masks` is N x 1 x H x W, both `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub tiles: Vec<usize>,
    pub ids: Vec<TileId>,
    pub images: Vec<f32>,
    pub masks: Vec<f32>,
    pub channels: usize,
    /// Tile edge (H = W).
    pub size: usize,
}

impl Batch {
    /// Number of tiles.
    pub fn len(&self) -> usize {
        self.tiles.len()
    }

    /// Whether the batch holds no tile.
    pub fn is_empty(&self) -> bool {
        self.tiles.is_empty()
    }

    /// `[N, C, H, W]` of `images`.
    pub fn image_shape(&self) -> [usize; 4] {
        [self.len(), self.channels, self.size, self.size]
    }

    /// `[N, 1, H, W]` of `masks`.
    pub fn mask_shape(&self) -> [usize; 4] {
        [self.len(), 1, self.size, self.size]
    }
}

struct Shared {
    index: Arc<TileIndex>,
    normalizer: Normalizer,
    tile_size: u32,
}

impl Shared {
    fn load(&self, tile: usize, aug: Option<AugmentParams>) -> Result<Sample, TileError> {
        let (raw, mask) =
            self.index
                .load_pair(tile, self.tile_size, self.normalizer.required_bands())?;
        let mut image = self.normalizer.apply(&raw);
        let mut mask: Vec<f32> = mask.into_iter().map(f32::from).collect();
        if let Some(p) = aug {
            p.apply_pair(&mut image, &mut mask, self.tile_size as usize);
        }
        Ok(Sample {
            tile,
            id: self.index.pairs[tile].id,
            image,
            mask,
        })
    }
}

/// Loads batches of an index's tiles. Cheap to clone.
#[derive(Clone)]
pub struct Loader {
    shared: Arc<Shared>,
}

impl Loader {
    pub fn new(index: Arc<TileIndex>, normalizer: Normalizer, tile_size: u32) -> Self {
        Loader {
            shared: Arc::new(Shared {
                index,
                normalizer,
                tile_size,
            }),
        }
    }

    /// The index being loaded.
    pub fn index(&self) -> &Arc<TileIndex> {
        &self.shared.index
    }

    /// Model input channels.
    pub fn channels(&self) -> usize {
        self.shared.normalizer.channels()
    }

    /// Load one tile synchronously, optionally augmented.
    pub fn load_sample(
        &self,
        tile: usize,
        aug: Option<AugmentParams>,
    ) -> Result<Sample, TileError> {
        self.shared.load(tile, aug)
    }

    /// The order in which `plan` visits `tiles`.
    pub fn order(&self, tiles: &[usize], plan: &EpochPlan) -> Vec<usize> {
        let mut order = tiles.to_vec();
        if plan.shuffle {
            let seed = crate::seed::mix_seed(plan.seed, TAG_SHUFFLE, plan.epoch as u64, 0);
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        order
    }

    /// Number of batches `batches` yields for `n` tiles.
    pub fn num_batches(n: usize, cfg: &LoaderConfig) -> usize {
        let bs = cfg.batch_size.max(1);
        if cfg.drop_last {
            n / bs
        } else {
            n.div_ceil(bs)
        }
    }

    /// Batches of `tiles` (indices into the index) for one pass, prefetched by
    /// background threads.
    pub fn batches(&self, tiles: &[usize], plan: &EpochPlan, cfg: &LoaderConfig) -> BatchIter {
        self.batches_from(tiles, plan, cfg, 0)
    }

    /// [`Loader::batches`] from batch `first` of the pass on: the same
    /// batches as the full pass's from `first`, and the tiles of the batches
    /// before it are never read.
    pub fn batches_from(
        &self,
        tiles: &[usize],
        plan: &EpochPlan,
        cfg: &LoaderConfig,
        first: usize,
    ) -> BatchIter {
        let bs = cfg.batch_size.max(1);
        let order = Arc::new(self.order(tiles, plan));
        let n_batches = Self::num_batches(order.len(), cfg);
        let total = (n_batches * bs).min(order.len());
        let first = first.min(n_batches);
        let start = (first * bs).min(total);
        let window = bs * (1 + cfg.prefetch_batches);
        let ctrl = Arc::new((
            Mutex::new(Ctrl {
                next_pos: start,
                limit: (start + window).min(total),
                stop: false,
                running: 0,
            }),
            Condvar::new(),
        ));
        let (tx, rx) = mpsc::channel();
        let n_workers = cfg
            .workers
            .unwrap_or_else(|| default_workers(&self.shared.index))
            .clamp(1, window.max(1))
            .min((total - start).max(1));
        let mut workers = Vec::new();
        for w in 0..n_workers {
            let shared = self.shared.clone();
            let ctrl = ctrl.clone();
            let order = order.clone();
            let tx = tx.clone();
            let plan = plan.clone();
            // Counted in before it starts: a stop never misses a reader.
            ctrl.0.lock().unwrap_or_else(|e| e.into_inner()).running += 1;
            let counted = ctrl.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("sca-loader-{w}"))
                .spawn(move || {
                    let _running = Running(&ctrl);
                    worker(&shared, &ctrl, &order, total, &plan, &tx)
                });
            if spawned.is_err() {
                counted.0.lock().unwrap_or_else(|e| e.into_inner()).running -= 1;
            }
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) if workers.is_empty() => {
                    return BatchIter::failed(DataError::Loader(format!(
                        "cannot start a reader thread: {e}"
                    )));
                }
                Err(_) => break,
            }
        }
        BatchIter {
            order,
            batch_size: bs,
            n_batches,
            total,
            window,
            next_batch: first,
            ctrl,
            rx: Some(rx),
            pending: BTreeMap::new(),
            workers,
            failed: None,
            done: false,
            channels: self.channels(),
            size: self.shared.tile_size as usize,
            interrupt: None,
        }
    }
}

struct Ctrl {
    next_pos: usize,
    /// Positions below this may be claimed.
    limit: usize,
    stop: bool,
    /// Reader threads not yet ended: a stop waits on this (and the condvar)
    /// rather than on a join, so that it can give up on a SIGTERM.
    running: usize,
}

/// Counts its reader out of [`Ctrl::running`] when the reader ends, by
/// return or by panic.
struct Running<'a>(&'a (Mutex<Ctrl>, Condvar));

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let (m, cv) = self.0;
        m.lock().unwrap_or_else(|e| e.into_inner()).running -= 1;
        cv.notify_all();
    }
}

type Msg = (usize, Result<Sample>);

fn worker(
    shared: &Shared,
    ctrl: &(Mutex<Ctrl>, Condvar),
    order: &[usize],
    total: usize,
    plan: &EpochPlan,
    tx: &mpsc::Sender<Msg>,
) {
    loop {
        let pos = {
            let (m, cv) = ctrl;
            let mut c = m.lock().unwrap_or_else(|e| e.into_inner());
            while !c.stop && c.next_pos < total && c.next_pos >= c.limit {
                c = cv.wait(c).unwrap_or_else(|e| e.into_inner());
            }
            if c.stop || c.next_pos >= total {
                return;
            }
            c.next_pos += 1;
            c.next_pos - 1
        };
        let tile = order[pos];
        let load = || {
            let aug = plan
                .augmentation
                .as_ref()
                .map(|a| augment_params(a, plan.seed, plan.epoch, tile));
            shared.load(tile, aug)
        };
        // A panic here (a decoder bug) would end this thread holding `pos`
        // while the others keep the channel open: the consumer would wait
        // for `pos` for ever. It becomes the error at `pos`'s batch instead.
        let r = match crate::error::catch(load) {
            Ok(r) => r.map_err(DataError::from),
            Err(panic) => Err(panicked(shared, tile, &*panic)),
        };
        if tx.send((pos, r)).is_err() {
            return;
        }
    }
}

/// The error for a load of `tile` that panicked with `panic`: the tile and
/// the message, since the run ends on it.
fn panicked(shared: &Shared, tile: usize, panic: &(dyn Any + Send)) -> DataError {
    let why = panic_message(panic);
    let tile = match shared.index.pairs.get(tile) {
        Some(pair) => format!("{} ({})", pair.id, shared.index.imagery.uri(&pair.imagery)),
        None => format!("{tile} of {} (no such tile)", shared.index.pairs.len()),
    };
    DataError::Loader(format!("reading tile {tile} panicked (a bug): {why}"))
}

/// How often a wait for a batch looks at its interrupt flag.
pub const INTERRUPT_POLL: Duration = Duration::from_millis(100);

/// Iterator over one pass's batches; see the module docs.
pub struct BatchIter {
    order: Arc<Vec<usize>>,
    batch_size: usize,
    n_batches: usize,
    total: usize,
    window: usize,
    next_batch: usize,
    ctrl: Arc<(Mutex<Ctrl>, Condvar)>,
    rx: Option<mpsc::Receiver<Msg>>,
    pending: BTreeMap<usize, Result<Sample>>,
    workers: Vec<JoinHandle<()>>,
    failed: Option<DataError>,
    done: bool,
    channels: usize,
    size: usize,
    /// Raised (SIGTERM) while a batch is awaited: [`DataError::Interrupted`].
    interrupt: Option<Arc<AtomicBool>>,
}

impl BatchIter {
    /// Stop waiting for a batch once `flag` is raised: the wait ends with
    /// [`DataError::Interrupted`] within [`INTERRUPT_POLL`], and readers
    /// still inside a read (an S3 body stalled until its timeouts) are left
    /// to end on their own instead of being waited for, so a SIGTERM is
    /// answered within SageMaker's grace period whatever S3 does.
    pub fn interrupt_on(mut self, flag: Arc<AtomicBool>) -> Self {
        self.interrupt = Some(flag);
        self
    }

    fn failed(e: DataError) -> Self {
        BatchIter {
            order: Arc::new(Vec::new()),
            batch_size: 1,
            n_batches: 0,
            total: 0,
            window: 0,
            next_batch: 0,
            ctrl: Arc::new((
                Mutex::new(Ctrl {
                    next_pos: 0,
                    limit: 0,
                    stop: true,
                    running: 0,
                }),
                Condvar::new(),
            )),
            rx: None,
            pending: BTreeMap::new(),
            workers: Vec::new(),
            failed: Some(e),
            done: false,
            channels: 0,
            size: 0,
            interrupt: None,
        }
    }

    /// The tile indices in visiting order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Batches left to yield.
    pub fn remaining(&self) -> usize {
        self.n_batches.saturating_sub(self.next_batch)
    }

    /// Stop the readers without waiting for them: one inside a read ends
    /// with it, finds the channel gone and exits.
    fn abandon(&mut self) {
        {
            let (m, cv) = &*self.ctrl;
            m.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
            cv.notify_all();
        }
        self.rx = None;
        self.workers.clear();
    }

    /// Whether the pass's interrupt flag is raised (a SIGTERM).
    fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Stop the readers and wait for them, unless the pass is interrupted,
    /// before or during the wait: then they are let go
    /// ([`abandon`](Self::abandon)), as one inside a stalled read would
    /// hold the caller (a pass dropped at `steps_per_epoch`, a stop during
    /// validation) past SageMaker's grace period, losing the steps since
    /// the last checkpoint to its SIGKILL.
    fn stop(&mut self) {
        if self.interrupted() {
            self.abandon();
            return;
        }
        {
            let (m, cv) = &*self.ctrl;
            let mut c = m.lock().unwrap_or_else(|e| e.into_inner());
            c.stop = true;
            cv.notify_all();
            // Readers inside a read end with it (finding the channel gone):
            // waited for, looking at the flag, never joined unbounded.
            self.rx = None;
            while c.running > 0 && self.interrupt.is_some() {
                if self.interrupted() {
                    drop(c);
                    self.abandon();
                    return;
                }
                c = cv
                    .wait_timeout(c, INTERRUPT_POLL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        // Every reader has ended (or no flag can end the wait): the joins
        // are only their exits.
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }

    fn next_batch(&mut self) -> Result<Batch> {
        let start = self.next_batch * self.batch_size;
        let end = (start + self.batch_size).min(self.total);
        let rx = self
            .rx
            .as_ref()
            .ok_or_else(|| DataError::Loader("loader stopped".into()))?;
        while (start..end).any(|p| !self.pending.contains_key(&p)) {
            match rx.recv_timeout(INTERRUPT_POLL) {
                Ok((pos, r)) => {
                    self.pending.insert(pos, r);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.interrupted() {
                        self.abandon();
                        return Err(DataError::Interrupted);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(DataError::Loader(
                        "reader threads exited before the batch was complete (a reader panicked?)"
                            .into(),
                    ))
                }
            }
        }
        let npix = self.size * self.size;
        let n = end - start;
        let mut batch = Batch {
            tiles: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            images: Vec::with_capacity(n * self.channels * npix),
            masks: Vec::with_capacity(n * npix),
            channels: self.channels,
            size: self.size,
        };
        for p in start..end {
            let s = self.pending.remove(&p).expect("present")?;
            batch.tiles.push(s.tile);
            batch.ids.push(s.id);
            batch.images.extend_from_slice(&s.image);
            batch.masks.extend_from_slice(&s.mask);
        }
        self.next_batch += 1;
        let (m, cv) = &*self.ctrl;
        m.lock().unwrap_or_else(|e| e.into_inner()).limit = (end + self.window).min(self.total);
        cv.notify_all();
        Ok(batch)
    }
}

impl Iterator for BatchIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            self.done = true;
            return Some(Err(e));
        }
        if self.done || self.next_batch >= self.n_batches {
            if !self.done {
                self.done = true;
                self.stop();
            }
            return None;
        }
        let r = self.next_batch();
        if r.is_err() {
            self.done = true;
            self.stop();
        }
        Some(r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = if self.done { 0 } else { self.remaining() };
        (0, Some(n + usize::from(self.failed.is_some())))
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sca_spec::Channel;
    use std::time::Duration;

    /// The index of 4 synthetic 32-pixel tile pairs made under `dir`.
    fn synthetic_index(dir: &std::path::Path) -> Arc<TileIndex> {
        let dataset = crate::synth::small_dataset(dir);
        Arc::new(crate::discover(&dataset, dir).unwrap())
    }

    /// A loader of band 1 of `index`'s tiles.
    fn one_band_loader(index: Arc<TileIndex>) -> Loader {
        let channels = [Channel {
            bands: vec![1],
            mean: vec![0.3],
            std: vec![0.3],
        }];
        Loader::new(index, Normalizer::new(&channels).unwrap(), 32)
    }

    /// A pass in the order given, unaugmented.
    const IN_ORDER: EpochPlan = EpochPlan {
        epoch: 0,
        seed: 0,
        shuffle: false,
        augmentation: None,
    };

    /// Tile `tile`'s imagery replaced by a FIFO with no writer: a read that
    /// never ends (until a writer opens it); its path.
    fn stall_imagery(index: &TileIndex, tile: usize) -> std::path::PathBuf {
        let stalled = std::path::PathBuf::from(index.imagery.uri(&index.pairs[tile].imagery));
        std::fs::remove_file(&stalled).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&stalled)
            .status()
            .unwrap();
        assert!(made.success());
        stalled
    }

    /// A SIGTERM while a batch waits on a read that does not end (here a
    /// FIFO with no writer; an S3 body stalled until its timeouts on
    /// SageMaker) ends the wait within the poll, and dropping the pass does
    /// not wait for the stuck reader.
    #[test]
    fn an_interrupt_ends_the_wait_for_a_stalled_read() {
        let tmp = tempfile::tempdir().unwrap();
        let index = synthetic_index(tmp.path());
        // After discovery: tile 0's imagery becomes a read that never ends.
        let stalled = stall_imagery(&index, 0);
        let loader = one_band_loader(index);
        let flag = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        {
            let flag = flag.clone();
            std::thread::spawn(move || {
                let mut pass = loader
                    .batches(&[0, 1], &IN_ORDER, &LoaderConfig::new(2))
                    .interrupt_on(flag);
                let first = pass.next().map(|b| b.map(|b| b.len()));
                drop(pass);
                let _ = tx.send(first);
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        flag.store(true, Ordering::SeqCst);
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the interrupted pass still waits on the stalled read");
        assert!(
            matches!(first, Some(Err(DataError::Interrupted))),
            "{first:?}"
        );
        // Let the abandoned reader end: a writer opens and closes the FIFO.
        drop(std::fs::OpenOptions::new().write(true).open(&stalled));
    }

    /// Let a reader stalled on the FIFO `stalled` end: opened read-write,
    /// which never blocks on a FIFO, and closed.
    fn release(stalled: &std::path::Path) {
        drop(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(stalled),
        );
    }

    /// A pass dropped once interrupted (a stop during validation, with the
    /// next batch already read) lets its readers go: one stalled in a read
    /// of a later tile is not waited for.
    #[test]
    fn a_pass_dropped_once_interrupted_does_not_wait_for_a_stalled_read() {
        let tmp = tempfile::tempdir().unwrap();
        let index = synthetic_index(tmp.path());
        let stalled = stall_imagery(&index, 2);
        let loader = one_band_loader(index);
        let flag = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        {
            let flag = flag.clone();
            std::thread::spawn(move || {
                let mut pass = loader
                    .batches(&[0, 1, 2, 3], &IN_ORDER, &LoaderConfig::new(1))
                    .interrupt_on(flag.clone());
                let first = pass.next().map(|b| b.map(|b| b.len()));
                // The stop comes while the window reads ahead, stalled at tile 2.
                std::thread::sleep(Duration::from_millis(300));
                flag.store(true, Ordering::SeqCst);
                drop(pass);
                let _ = tx.send(first);
            });
        }
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the interrupted pass, dropped, waits on the stalled read");
        assert!(matches!(first, Some(Ok(1))), "{first:?}");
        release(&stalled);
    }

    /// A SIGTERM that comes while a pass is dropped (at `steps_per_epoch`,
    /// or at the end of validation) with a reader stalled in a read lets it
    /// go: the drop once joined it without bound, and a stalled S3 read held
    /// the stop past SageMaker's SIGKILL, losing the steps since the last
    /// checkpoint.
    #[test]
    fn a_sigterm_while_a_pass_is_dropped_does_not_wait_for_a_stalled_read() {
        let tmp = tempfile::tempdir().unwrap();
        let index = synthetic_index(tmp.path());
        let stalled = stall_imagery(&index, 2);
        let loader = one_band_loader(index);
        let flag = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        {
            let flag = flag.clone();
            std::thread::spawn(move || {
                let mut pass = loader
                    .batches(&[0, 1, 2, 3], &IN_ORDER, &LoaderConfig::new(1))
                    .interrupt_on(flag);
                let first = pass.next().map(|b| b.map(|b| b.len()));
                // Dropped before the stop, once the window has read ahead
                // to tile 2 and stalled there.
                std::thread::sleep(Duration::from_millis(300));
                let _ = tx.send(first);
                drop(pass);
                let _ = tx.send(None);
            });
        }
        let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert!(matches!(first, Some(Ok(1))), "{first:?}");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            rx.try_recv().is_err(),
            "the drop did not wait for the stalled read: the test stalls nothing"
        );
        flag.store(true, Ordering::SeqCst);
        let dropped = rx.recv_timeout(Duration::from_secs(5));
        release(&stalled);
        assert!(
            dropped.is_ok(),
            "the pass, dropped and then interrupted, still waits on the stalled read"
        );
    }

    /// Without a SIGTERM, a dropped pass waits for its readers: none is
    /// left reading once the drop returns.
    #[test]
    fn a_dropped_pass_waits_for_its_readers() {
        let tmp = tempfile::tempdir().unwrap();
        let index = synthetic_index(tmp.path());
        let loader = one_band_loader(index);
        let flag = Arc::new(AtomicBool::new(false));
        let mut pass = loader
            .batches(&[0, 1, 2, 3], &IN_ORDER, &LoaderConfig::new(1))
            .interrupt_on(flag);
        assert!(matches!(pass.next(), Some(Ok(_))));
        let ctrl = pass.ctrl.clone();
        drop(pass);
        assert_eq!(ctrl.0.lock().unwrap().running, 0);
    }

    /// A reader that panics (here on a tile index past the end, as a
    /// caller's bug would pass) fails its batch, naming the tile and the
    /// panic. The other readers, waiting for the window to move, keep the
    /// channel open: the pass once waited for the lost position for ever.
    #[test]
    fn a_reader_that_panics_fails_the_pass_instead_of_hanging() {
        let tmp = tempfile::tempdir().unwrap();
        let index = synthetic_index(tmp.path());
        let loader = one_band_loader(index);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // No prefetch: a window of one batch, so readers wait for it to move.
            let cfg = LoaderConfig {
                workers: Some(2),
                prefetch_batches: 0,
                ..LoaderConfig::new(2)
            };
            let out: Vec<Result<usize>> = loader
                .batches(&[0, 1, 2, 99, 3, 0], &IN_ORDER, &cfg)
                .map(|b| b.map(|b| b.len()))
                .collect();
            let _ = tx.send(out);
        });
        let out = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the pass hung on the panicked reader's position");
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].as_ref().ok(), Some(&2));
        let e = out[1].as_ref().unwrap_err().to_string();
        assert!(
            e.contains("reading tile 99 of 4 (no such tile) panicked (a bug)")
                && e.contains("index out of bounds"),
            "{e}"
        );
    }
}
