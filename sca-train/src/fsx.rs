//! Atomic file writes for everything the trainer leaves behind: the data
//! crate's (`sca_data::fsx`), which writes the split's tile lists with it too.

pub use sca_data::fsx::*;
