//! Every command and flag of `cargo xtask`; those the entry point runs
//! itself (`schema`, `experiment validate`) are xtask-entry's, re-exported.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
pub use xtask_entry::flags::{Format, Schema, Validate};

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
    /// Build sca-train's CUDA variant without a GPU or CUDA installation
    #[command(subcommand)]
    Cuda(Cuda),
    /// Regenerate the documentation's generated assets
    #[command(subcommand)]
    Docs(Docs),
}

#[derive(Debug, Subcommand)]
pub enum Docs {
    /// docs/report.png: three toy local runs, their `experiment report`, photographed with headless Chromium
    Screenshot(DocsScreenshot),
}

#[derive(Debug, Args)]
pub struct DocsScreenshot {
    /// Where to write the PNG (relative to the workspace root)
    #[arg(long, default_value = "docs/report.png")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Experiment {
    Validate(Validate),
    /// Validate, pin (commit, image digest, data manifest) and launch an experiment; leaves a run record
    Run(Box<Run>),
    /// Launch every point of a sweep file as its own pinned run; points with a completed run are not launched again
    Sweep(Box<Sweep>),
    /// Launch a recorded job again: the same commit, image digest, experiment bytes and data
    Rerun(Rerun),
    /// Show a job's state (refreshed from SageMaker or the engine)
    Status(Status),
    /// Print a job's log (CloudWatch Logs for SageMaker jobs)
    Logs(Logs),
    /// Stop a running job: SIGTERM, then SIGKILL after 120 s
    Stop(Stop),
    /// List the jobs launched from this checkout
    List(List),
    /// Download and unpack a job's model artifacts (model, metrics, plot)
    Fetch(Fetch),
    /// Say why two runs differ: experiment keys, code, image, data tiles, warm start, results
    Diff(Diff),
    /// Write one self-contained HTML page of every run: table, curves, overlays, pins
    Report(Report),
}

pub use crate::experiment::record::Backend;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    /// JSON: for `run`, the run record as the last line of stdout
    Json,
}

/// AWS credentials and region (the standard chain: environment, profiles,
/// SSO, instance metadata; `AWS_ENDPOINT_URL` honoured).
#[derive(Debug, Clone, Default, Args)]
pub struct AwsArgs {
    /// AWS profile
    #[arg(long)]
    pub profile: Option<String>,
    /// AWS region (default: the experiment's resolved region)
    #[arg(long)]
    pub region: Option<String>,
}

impl AwsArgs {
    /// The command's AWS session: the flags, each region's configuration loaded once.
    pub fn session(&self) -> crate::aws::Session {
        crate::aws::Session::new(self.profile.clone(), self.region.clone())
    }
}

#[derive(Debug, Args)]
pub struct Run {
    /// The experiment file
    pub file: PathBuf,
    #[arg(long, value_enum, default_value = "local")]
    pub backend: Backend,
    /// Follow a SageMaker job to its end (local and docker jobs are always followed)
    #[arg(long)]
    pub wait: bool,
    /// Run even with uncommitted changes (the record carries the dirty flag and a hash of the diff)
    #[arg(long)]
    pub allow_dirty: bool,
    /// Push to this registry instead of ECR, e.g. a local registry in tests: the ECR token only if it is an ECR host, else SCA_REGISTRY_USERNAME/SCA_REGISTRY_PASSWORD or anonymous
    #[arg(long, value_name = "HOST:PORT")]
    pub registry: Option<String>,
    /// Use this already-pushed image (REPOSITORY@sha256:...) instead of building and pushing the commit's
    #[arg(long, value_name = "REF@sha256:...")]
    pub image: Option<String>,
    /// Print the fully resolved, pinned request (for SageMaker the exact CreateTrainingJob input); launch and record nothing. On docker and sagemaker the commit's image is built (and pushed) where missing, as its digest is in the request: pass --image to use one already built
    #[arg(long)]
    pub dry_run: bool,
    /// Launch even when a completed run on this backend has the same commit, image digest, experiment and data
    #[arg(long)]
    pub force: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub build: ImageBuildArgs,
}

#[derive(Debug, Args)]
pub struct Sweep {
    /// The sweep file: an experiment file with a [sweep] table
    pub file: PathBuf,
    #[arg(long, value_enum, default_value = "local")]
    pub backend: Backend,
    /// Most points running at once (default: [sweep].max_parallel, else 1 on local and docker, every point on sagemaker)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parallel: Option<u32>,
    /// Run even with uncommitted changes (each record carries the dirty flag and a hash of the diff)
    #[arg(long)]
    pub allow_dirty: bool,
    /// Push to this registry instead of ECR (see `run --registry`)
    #[arg(long, value_name = "HOST:PORT")]
    pub registry: Option<String>,
    /// Use this already-pushed image (REPOSITORY@sha256:...) for every point
    #[arg(long, value_name = "REF@sha256:...")]
    pub image: Option<String>,
    /// List the points, what each would do (launch, or its completed run) and the worst-case cost; launch nothing (the commit's image is built and pushed where missing, as for `run --dry-run`)
    #[arg(long)]
    pub dry_run: bool,
    /// Launch every point, even those with a completed run
    #[arg(long)]
    pub force: bool,
    /// JSON: the sweep's points and their runs, as the last line of stdout
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub build: ImageBuildArgs,
}

#[derive(Debug, Args)]
pub struct Rerun {
    /// The job to run again
    pub job: String,
    /// Follow a SageMaker job to its end
    #[arg(long)]
    pub wait: bool,
    /// Print what would be launched and change nothing
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args)]
pub struct Status {
    pub job: String,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args)]
pub struct Logs {
    pub job: String,
    /// Keep printing new lines until the job ends
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args)]
pub struct Stop {
    pub job: String,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args)]
pub struct List {
    /// Only this experiment's jobs
    #[arg(long)]
    pub experiment: Option<String>,
    /// The points of this sweep (its experiment name): values, state, objective, the best marked
    #[arg(long, conflicts_with_all = ["experiment", "commit", "remote"])]
    pub sweep: Option<String>,
    /// Only jobs of commits starting with this
    #[arg(long)]
    pub commit: Option<String>,
    /// Also read the SageMaker jobs' records from the config bucket (jobs launched from other machines)
    #[arg(long)]
    pub remote: bool,
    /// The config bucket for --remote (default: config_bucket of [workspace.metadata.sca])
    #[arg(long, requires = "remote")]
    pub bucket: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args)]
pub struct Fetch {
    pub job: String,
    /// Where to unpack (default: the job's directory in the runs directory, `fetched/`)
    #[arg(long)]
    pub to: Option<PathBuf>,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args)]
pub struct Diff {
    /// The first job (A)
    pub a: String,
    /// The second job (B)
    pub b: String,
    /// Largest difference between two validation curves' values still counted as equal
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    /// Read a job not recorded here from the config bucket (record, config channel, artifacts)
    #[arg(long)]
    pub remote: bool,
    /// The config bucket for --remote (default: config_bucket of [workspace.metadata.sca])
    #[arg(long, requires = "remote")]
    pub bucket: Option<String>,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args)]
pub struct Report {
    /// The HTML file to write (default: target/sca-report.html)
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Only this experiment's runs
    #[arg(long)]
    pub experiment: Option<String>,
    /// Only this sweep's runs, with its points ranked by the objective, best first
    #[arg(long, conflicts_with = "experiment")]
    pub sweep: Option<String>,
    /// Also save a PNG screenshot of the page, taken with headless Chromium
    #[arg(long, value_name = "PNG")]
    pub screenshot: Option<PathBuf>,
    /// Do not download SageMaker jobs' missing artifacts (metrics, overlays)
    #[arg(long)]
    pub no_fetch: bool,
    /// Also show the SageMaker jobs recorded in the config bucket and not here (launched from other machines)
    #[arg(long)]
    pub remote: bool,
    /// The config bucket for --remote (default: config_bucket of [workspace.metadata.sca])
    #[arg(long, requires = "remote")]
    pub bucket: Option<String>,
    #[command(flatten)]
    pub aws: AwsArgs,
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
    /// Context directory (default: the workspace root); with --base, the
    /// workspace whose sca-train is built
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The Dockerfile's path in the context (always sent, like .dockerignore)
    #[arg(long, default_value = "Dockerfile")]
    pub dockerfile: String,
    /// Also write the context's deterministic tar (exactly what the engine receives) to this file
    #[arg(long, value_name = "FILE")]
    pub tar: Option<PathBuf>,
    /// The context size `image build` refuses above (e.g. 2GiB, 500MiB): a larger context is listed, not read
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    pub max_context_size: String,
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
    /// Build argument for the Dockerfile (e.g. CUDA_DEVEL_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu24.04)
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
    /// Push to this registry instead of the ECR registry, e.g. a local
    /// registry in tests: the ECR token only if it is an ECR host, else
    /// SCA_REGISTRY_USERNAME/SCA_REGISTRY_PASSWORD or anonymous
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

#[derive(Debug, Subcommand)]
pub enum Cuda {
    /// Assemble a CUDA 13.0 build toolkit from NVIDIA's PyPI wheels; prints the environment to build with
    Sdk(CudaArgs),
    /// `sdk`, then `cargo build --release -p sca-train --features cuda` (into target/cuda, dependencies shared with the CPU release build); prints the binary's path
    Build(CudaArgs),
    /// `build`, then target/gpu-kit: what a GPU machine needs to run sca-train/bench/gpu.sh
    Kit(KitArgs),
}

#[derive(Debug, Args)]
pub struct KitArgs {
    #[command(flatten)]
    pub cuda: CudaArgs,
    /// Also the `cuda` build's unit tests (`sca-train-tests`), which gpu.sh
    /// runs on the GPU machine (the `gpu_` tests need a GPU and cuDNN)
    #[arg(long)]
    pub tests: bool,
}

#[derive(Debug, Args)]
pub struct CudaArgs {
    /// Where the toolkit is assembled (default: target/cuda-sdk)
    #[arg(long)]
    pub dir: Option<PathBuf>,
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
    /// SageMaker launch latency against the AWS emulator, beside the SageMaker Python SDK
    Launch(BenchLaunch),
    /// Training throughput of the quickstart U-Net beside PyTorch, and loader throughput from disk and S3
    Train(BenchTrain),
    /// Build-context creation beside GNU tar, clean vs incremental image build, no-op push beside `docker push`
    Image(BenchImage),
    /// Record what `sca-train/bench/gpu.sh` measured on a GPU machine (or rehearse it here on the CPU)
    Gpu(BenchGpu),
    /// Run every fault-injection test against the services and record the Reliability table
    Faults(BenchFaults),
    /// Time a new user's first result from a fresh clone: validate, then run the quickstart
    FirstResult(BenchFirstResult),
}

#[derive(Debug, Args)]
pub struct BenchFirstResult {
    /// Revisions to measure, each from its own fresh clone (default: HEAD)
    #[arg(long)]
    pub rev: Vec<String>,
    /// How many of the slowest crates to list
    #[arg(long, default_value_t = 12)]
    pub top: usize,
    /// Do not write the figures into BENCHMARKS.md
    #[arg(long)]
    pub no_record: bool,
}

#[derive(Debug, Args)]
pub struct BenchFaults {
    /// Do not write the table into BENCHMARKS.md
    #[arg(long)]
    pub no_record: bool,
}

#[derive(Debug, Args)]
pub struct BenchGpu {
    /// The directory gpu.sh wrote (its OUT argument): gpu.jsonl and env.txt
    #[arg(required_unless_present = "dry_run")]
    pub dir: Option<PathBuf>,
    /// Run gpu.sh here on the CPU at toy sizes and print the section (records nothing)
    #[arg(long, conflicts_with = "dir")]
    pub dry_run: bool,
    /// Do not write the figures into BENCHMARKS.md
    #[arg(long)]
    pub no_record: bool,
}

#[derive(Debug, Args)]
pub struct BenchImage {
    /// Rounds of the context and no-op push measurements (the median is reported)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Instead: clean vs incremental build of the production (CUDA) Dockerfile, on stand-in base images
    #[arg(long)]
    pub production: bool,
    /// Do not write the figures into BENCHMARKS.md
    #[arg(long)]
    pub no_record: bool,
}

#[derive(Debug, Args)]
pub struct BenchTrain {
    /// Instead: the ported experiments' size (depth 5, base width 32, 512x512, batch 7), training only
    #[arg(long)]
    pub ported: bool,
    /// Timed training steps per process (after one warm-up step)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: u32,
    /// Processes per side, alternating (the median is reported)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Do not write the figures into BENCHMARKS.md
    #[arg(long)]
    pub no_record: bool,
}

#[derive(Debug, Args)]
pub struct BenchLaunch {
    /// Launches per side (the median is reported)
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Also time a sweep of this many points (`experiment sweep`) against the
    /// SDK launching the same points in a loop, per point
    #[arg(long, value_name = "POINTS", default_value_t = 8)]
    pub sweep: usize,
    /// Do not write the figures into BENCHMARKS.md
    #[arg(long)]
    pub no_record: bool,
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
