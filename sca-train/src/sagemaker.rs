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
pub fn install_panic_hook(ml: &OptMl) {
    let first = FirstPanic::new(ml.clone());
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        first.record(&format!("sca-train: internal error (a bug): {info}"));
        report(info);
    }));
}

/// Writes the failure file for the first reason it is given only.
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
}
