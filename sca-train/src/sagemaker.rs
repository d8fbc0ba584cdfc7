//! The trainer's side of SageMaker's container contract: the contract itself
//! (the `/opt/ml` layout, the hyperparameters, the job pins) is
//! [`sca_spec::contract`], shared with the launcher; here is what only the
//! trainer does with it.

use std::sync::atomic::{AtomicBool, Ordering};

pub use sca_spec::contract::*;

/// Make any later panic write `ml`'s failure file before the usual report,
/// so that a bug that panics still leaves SageMaker (and the launcher) a
/// reason instead of a bare exit code. Only the first panic's: the panics
/// it causes (a scope's "a scoped thread panicked", a poisoned lock) come
/// later and name less. (The run's own error, when it ends with one, is
/// written over it: that names the tile or file.)
///
/// It writes [`PANIC_EXIT_CODE`] as the exit code too: a panic that ends
/// the process skips `main`'s write of it, and a launcher that was gone
/// meanwhile would read "no exit code" as a stop it asked for. A panic the
/// data pipeline catches ([`crate::data::error::catch`]) writes none: it
/// becomes the run's error, and `main` writes the code the run ends with.
pub fn install_panic_hook(ml: &OptMl) {
    let first = FirstPanic::new(ml.clone());
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        first.record(&format!("sca-train: internal error (a bug): {info}"));
        report(info);
    }));
}

/// The status of a process that a panic ends (Rust's, unwinding out of `main`).
pub const PANIC_EXIT_CODE: u8 = 101;

/// Writes the exit code and failure file for the first reason it is given only.
struct FirstPanic {
    ml: OptMl,
    written: AtomicBool,
}

impl FirstPanic {
    fn new(ml: OptMl) -> Self {
        FirstPanic {
            ml,
            written: AtomicBool::new(false),
        }
    }

    fn record(&self, reason: &str) {
        if !self.written.swap(true, Ordering::SeqCst) {
            // The code first: cut off between the two (a SIGKILL), the
            // launcher still records a failure, not a requested stop. A
            // panic the data pipeline catches (a decoder bug, turned into
            // the run's error) writes none: the run may yet be stopped or
            // killed before `main` writes over a 101. Any other, on any
            // thread (a rayon worker's, raised again on main), ends it.
            if !crate::data::error::panic_is_caught() {
                self.ml.write_exit_code(PANIC_EXIT_CODE);
            }
            self.ml.write_failure(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second panic (the scope that joins a panicked worker) does not
    /// write over the first's reason, which names the fault.
    #[test]
    fn only_the_first_panic_is_the_failure_reason() {
        let dir = tempfile::tempdir().unwrap();
        let ml = OptMl::at(dir.path());
        let first = FirstPanic::new(ml.clone());
        first.record("panicked at decode.rs: tile 15/3/4 has 0 strips");
        first.record("panicked at par.rs: a scoped thread panicked");
        let failure = std::fs::read_to_string(ml.failure_file()).unwrap();
        assert_eq!(failure, "panicked at decode.rs: tile 15/3/4 has 0 strips\n");
    }

    /// A panic that ends the process skips `main`'s write of the exit code:
    /// without one, a launcher gone meanwhile recorded a crash after a stop
    /// request as the stop ("stopped on request"). The hook writes 101, a
    /// panic's status; `main` writes over it when the run ends after all.
    #[test]
    fn a_panic_writes_its_exit_code_and_main_writes_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let ml = OptMl::at(dir.path());
        // A panic the data pipeline catches (the run's error) leaves none.
        let caught = FirstPanic::new(ml.clone());
        let _ = crate::data::error::catch(|| caught.record("panicked at decode.rs: a bad strip"));
        assert_eq!(ml.read_exit_code(), None);
        assert!(ml.failure_file().is_file());
        // Any other, on any thread (a rayon worker's): 101; a later one
        // (the scope joining it) changes nothing.
        let first = FirstPanic::new(ml.clone());
        std::thread::scope(|s| {
            s.spawn(|| first.record("panicked at conv2d.rs: index out of bounds"));
        });
        assert_eq!(ml.read_exit_code(), Some(101));
        ml.write_exit_code(1);
        first.record("panicked at par.rs: a scoped thread panicked");
        assert_eq!(ml.read_exit_code(), Some(1));
    }
}
