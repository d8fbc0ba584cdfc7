//! Order-preserving parallel map on scoped threads (tile validation, synthesis).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// `f(0..n)` on `workers` scoped threads (work-stealing by an atomic counter),
/// results in index order whatever the timing.
pub fn par_map<T: Send>(n: usize, workers: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    par_map_until(n, workers, f, |_| false)
        .into_iter()
        .map(|r| r.expect("every index is computed"))
        .collect()
}

/// [`par_map`], except that once a result is `fatal` no worker starts
/// another index (those in flight finish): the indices never started are
/// `None`. A run that will fail on its first unreadable tile does not read
/// thousands more (each through the SDK's retries) first.
pub fn par_map_until<T: Send>(
    n: usize,
    workers: usize,
    f: impl Fn(usize) -> T + Sync,
    fatal: impl Fn(&T) -> bool + Sync,
) -> Vec<Option<T>> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let out: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                if fatal(&r) {
                    stop.store(true, Ordering::Relaxed);
                }
                out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    out.into_inner().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_in_order_and_a_fatal_one_stops_new_work() {
        assert_eq!(
            par_map(100, 4, |i| i * 2),
            (0..100).map(|i| i * 2).collect::<Vec<_>>()
        );
        let started = AtomicUsize::new(0);
        let out = par_map_until(
            1000,
            2,
            |i| {
                started.fetch_add(1, Ordering::SeqCst);
                i
            },
            |&i| i == 3,
        );
        assert_eq!(out[3], Some(3));
        // Index 3 and whatever the other worker had in flight, never 1000.
        let ran = started.load(Ordering::SeqCst);
        assert!(
            ran <= 3 + 1 + 2,
            "{ran} indices started after a fatal result"
        );
        assert_eq!(out.iter().flatten().count(), ran);
    }
}
