//! Every command and flag of `cargo xtask`, declared in one place.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    about = "Reproducible snow-cover experiments: validate, build, push, run"
)]
pub struct Xtask {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write schema/experiment.schema.json from the Rust types
    Schema(Schema),
    /// Work with experiment files
    #[command(subcommand)]
    Experiment(Experiment),
    /// Build, inspect and push the training image
    #[command(subcommand)]
    Image(Image),
    /// Start or stop the local services the tests need (Docker engine, registry, AWS emulator)
    #[command(subcommand)]
    Services(Services),
    /// Run every test of the workspace with the services they need, then stop those services
    Test(Test),
    /// Benchmarks that write their figures into BENCHMARKS.md
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Debug, Args)]
pub struct Schema {
    /// Exit non-zero if the checked-in schema is stale instead of writing it
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Subcommand)]
pub enum Experiment {
    /// Check experiment files against the schema and the rules a schema cannot express
    Validate(Validate),
    /// Validate, pin to the commit, and run an experiment; leaves a run record
    Run(Run),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// `sca-train train` as a host process against an /opt/ml tree in target/sca-runs/ (no Docker, no AWS)
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    /// Print the run record as the last line of stdout
    Json,
}

#[derive(Debug, Args)]
pub struct Run {
    /// The experiment file
    pub file: PathBuf,
    #[arg(long, value_enum, default_value = "local")]
    pub backend: Backend,
    /// Run even with uncommitted changes (the record carries the dirty flag and a hash of the diff)
    #[arg(long)]
    pub allow_dirty: bool,
    /// Print what would run and change nothing
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Annotated source snippets for people
    Human,
    /// One JSON document with every diagnostic, for CI
    Json,
}

#[derive(Debug, Args)]
pub struct Validate {
    /// Experiment files (default: every experiments/**/*.toml)
    pub files: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum Image {
    /// Show what would be sent to the Docker engine as the build context
    Context(ImageContext),
    /// Build the training image through the Docker engine, tagged with the git commit
    Build(Box<ImageBuild>),
    /// Push the image to ECR (building it if needed) and print `REPO@sha256:...`
    Push(Box<ImagePush>),
}

#[derive(Debug, Args)]
pub struct ImageContext {
    /// Print one path per line
    #[arg(long)]
    pub list: bool,
    /// Context directory (default: the workspace root)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The Dockerfile's path in the context (always sent, like .dockerignore)
    #[arg(long, default_value = "Dockerfile")]
    pub dockerfile: String,
    /// Also write the context's deterministic tar (exactly what the engine receives) to this file
    #[arg(long, value_name = "FILE")]
    pub tar: Option<PathBuf>,
}

/// How the image is built; shared by `image build` and `image push`.
#[derive(Debug, Clone, Args)]
pub struct ImageBuildArgs {
    /// Context directory (default: the workspace root)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The Dockerfile's path in the context
    #[arg(long, default_value = "Dockerfile")]
    pub dockerfile: String,
    /// Prebuilt mode: build sca-train on the host (release profile) and copy it
    /// into an image FROM this base, which must already exist in the engine
    #[arg(long, value_name = "IMAGE")]
    pub base: Option<String>,
    /// Use this tag instead of the one derived from the git commit
    #[arg(long)]
    pub tag: Option<String>,
    /// Build argument for the Dockerfile (e.g. CUDA_DEVEL_IMAGE=nvidia/cuda:12.4.1-devel-ubuntu22.04)
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Build even if the context holds credential-like files (keys, .aws/, .env, ...)
    #[arg(long)]
    pub allow_secrets: bool,
    /// Refuse a build context larger than this (e.g. 2GiB, 500MiB)
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    pub max_context_size: String,
    /// Do not use the engine's build cache
    #[arg(long)]
    pub no_cache: bool,
}

#[derive(Debug, Args)]
pub struct ImageBuild {
    #[command(flatten)]
    pub build: ImageBuildArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageOutput {
    /// `REPO@sha256:...` on one line
    Text,
    /// One JSON object: repository, tag, digest, reference, pushed
    Json,
}

#[derive(Debug, Args)]
pub struct ImagePush {
    #[command(flatten)]
    pub build: ImageBuildArgs,
    /// Push to this registry instead of the ECR registry (still authenticating
    /// with the ECR token), e.g. a local registry in tests
    #[arg(long, value_name = "HOST:PORT")]
    pub registry: Option<String>,
    /// ECR repository (default: ecr_repository of [workspace.metadata.sca])
    #[arg(long)]
    pub repository: Option<String>,
    /// AWS profile (default: the standard credential chain)
    #[arg(long)]
    pub profile: Option<String>,
    /// AWS region (default: region of [workspace.metadata.sca], then AWS_REGION / the profile's)
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub output: ImageOutput,
}

#[derive(Debug, Subcommand)]
pub enum Services {
    /// Install (if needed) and start the services; prints the environment the tests need
    Up,
    /// Stop the services that `up` started
    Down,
}

#[derive(Debug, Args)]
pub struct Test {
    /// Extra arguments for `cargo test`
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Validation throughput on generated experiment files
    Validate(BenchValidate),
}

#[derive(Debug, Args)]
pub struct BenchValidate {
    /// Number of experiment files to generate and validate
    #[arg(long, default_value_t = 1000)]
    pub files: usize,
    /// Do not write the figures into BENCHMARKS.md
    #[arg(long)]
    pub no_record: bool,
}
