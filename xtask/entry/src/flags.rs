//! The flags of the commands the entry point runs itself; the full xtask's
//! command line (xtask/src/flags.rs) embeds these same types.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Write schema/experiment.schema.json from the Rust types
#[derive(Debug, Args)]
pub struct Schema {
    /// Exit non-zero if the checked-in schema is stale instead of writing it
    #[arg(long)]
    pub check: bool,
}

/// Check experiment files against the schema and the rules a schema cannot express
#[derive(Debug, Args)]
pub struct Validate {
    /// Experiment files (default: every experiments/**/*.toml)
    pub files: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Annotated source snippets for people
    Human,
    /// One JSON document with every diagnostic, for CI
    Json,
}
