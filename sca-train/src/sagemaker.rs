//! The trainer's side of SageMaker's container contract: the contract itself
//! (the `/opt/ml` layout, the hyperparameters, the job pins) is
//! [`sca_spec::contract`], shared with the launcher; here is what only the
//! trainer does with it.

pub use sca_spec::contract::*;

/// Make any later panic write `ml`'s failure file before the usual report,
/// so that a bug that panics still leaves SageMaker (and the launcher) a
/// reason instead of a bare exit code.
pub fn install_panic_hook(ml: &OptMl) {
    let ml = ml.clone();
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        ml.write_failure(&format!("sca-train: internal error (a bug): {info}"));
        report(info);
    }));
}
