//! `cargo xtask` (the alias in .cargo/config.toml): run the command here if
//! it is one of ours, else hand it to a launcher binary
//! (`xtask-local` for a local run or sweep, else `xtask`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match xtask_entry::Quick::claims(&args) {
        Some(quick) => xtask_entry::run(quick),
        None => xtask_entry::hand_over(&args),
    }
}
