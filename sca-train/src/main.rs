//! The `sca-train` binary (being written).

fn main() {}
