//! The `sca-train` binary: `train` (SageMaker's entrypoint), `predict`, `synth`,
//! `manifest` and `bench`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sca_train::sagemaker::OptMl;
use sca_train::train::{train, Outcome};

/// See `sca_train::alloc` for why not the system allocator.
#[global_allocator]
static ALLOC: sca_train::alloc::Allocator = sca_train::alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "sca-train",
    version,
    about = "Snow-covered-area U-Net training (SageMaker container contract)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the experiment in /opt/ml/input/data/config/ (root overridable with SCA_OPT_ML)
    Train,
    /// Write predicted masks for a set of tiles: PNG (the class in its colour on black) and GeoTIFF (0/1)
    Predict {
        /// Model directory holding model.safetensors and experiment.toml
        #[arg(long)]
        model_dir: PathBuf,
        /// Imagery root: s3://bucket/prefix or a local directory
        #[arg(long)]
        input: String,
        /// Regex selecting tile directories (default: the experiment's imagery_regex)
        #[arg(long)]
        regex: Option<String>,
        /// Output directory (new or empty)
        #[arg(long)]
        out: PathBuf,
        /// Predict with a model saved when its job stopped before its last epoch ended
        #[arg(long)]
        partial: bool,
    },
    /// Write a deterministic synthetic dataset in the real tile layout
    Synth {
        /// Output root (imagery and mask directories are created inside)
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 64)]
        tiles: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 512)]
        tile_size: u32,
        #[arg(long, default_value_t = 15)]
        zoom: u8,
    },
    /// Print the data manifest of an experiment's dataset (canonical JSON, as a launch pins it)
    Manifest {
        /// The experiment file
        experiment: PathBuf,
        /// Directory local dataset roots are relative to (default: the experiment file's)
        #[arg(long)]
        base_dir: Option<PathBuf>,
    },
    /// Time training steps of the U-Net on random tiles and trace per-step losses (one JSON line)
    Bench {
        /// cpu, cuda or auto (default: $SCA_DEVICE, else cpu)
        #[arg(long)]
        device: Option<String>,
        #[command(flatten)]
        spec: sca_train::bench::BenchSpec,
        /// Run the ops on dfdx's own kernels on the CPU too, as they are on the GPU
        #[arg(long)]
        dfdx_ops: bool,
    },
}

fn main() -> ExitCode {
    sca_train::alloc::keep_freed_memory();
    // `--version` says which devices the build computes on; once per process.
    let long_version: &'static str = Box::leak(
        format!(
            "{}\n{}",
            env!("CARGO_PKG_VERSION"),
            sca_train::device::build_description()
        )
        .into_boxed_str(),
    );
    let matches = Cli::command().long_version(long_version).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Train => {
            let ml = OptMl::from_env();
            // An earlier process's, in a reused tree: the launcher would
            // take them for this run's (a stop for a failure, its reason).
            ml.clear_exit_code();
            ml.clear_failure();
            sca_train::sagemaker::install_panic_hook(&ml);
            let stop = Arc::new(AtomicBool::new(false));
            // SageMaker stops a job (and reclaims a spot instance) with SIGTERM, then SIGKILL after 120 s.
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
                    sca_train::warn!("sca-train: cannot handle signal {signal}: {e}");
                }
            }
            let code = match train(&ml, &stop) {
                Ok(Outcome::Completed { .. }) => 0,
                // Not a failure: no failure file; 143 = 128 + SIGTERM, as if the signal had ended the process.
                Ok(Outcome::Stopped { .. } | Outcome::StoppedBeforeTraining) => 143,
                Err(e) => {
                    // The failure file first, and stderr without panicking:
                    // when the launcher was killed stderr is a closed pipe,
                    // and the reason must still reach SageMaker.
                    ml.write_failure(&e.to_string());
                    sca_train::warn!("sca-train: error: {e}");
                    1
                }
            };
            // For a launcher that is gone by now (`experiment status`).
            ml.write_exit_code(code);
            ExitCode::from(code)
        }
        Command::Predict {
            model_dir,
            input,
            regex,
            out,
            partial,
        } => {
            let o = sca_train::predict::PredictOptions {
                model_dir,
                input,
                regex,
                out,
                partial,
            };
            report(sca_train::predict::predict(&o).map(|_| ()))
        }
        Command::Synth {
            out,
            tiles,
            seed,
            tile_size,
            zoom,
        } => report(
            sca_train::synth::synth(&out, tiles, seed, tile_size, zoom)
                .map(|s| println!("{s:?}"))
                .map_err(Into::into),
        ),
        Command::Manifest {
            experiment,
            base_dir,
        } => report(manifest(&experiment, base_dir)),
        Command::Bench {
            device,
            spec,
            dfdx_ops,
        } => report(bench(device.as_deref(), spec, dfdx_ops)),
    }
}

/// `sca-train bench`: the report as one JSON line on stdout.
fn bench(
    device: Option<&str>,
    spec: sca_train::bench::BenchSpec,
    dfdx_ops: bool,
) -> Result<(), sca_train::train::TrainError> {
    use sca_train::device::{Compute, DeviceError, DeviceRequest};
    let req = DeviceRequest::from_override_or(
        device.or(sca_train::device::env_override().as_deref()),
        sca_train::spec::Device::Cpu,
    )
    .map_err(DeviceError::from)?;
    let compute = Compute::open(req)?;
    compute.set_precision(spec.precision)?;
    let r = sca_train::bench::run(spec, compute, dfdx_ops)?;
    println!(
        "{}",
        serde_json::to_string(&r).expect("a bench report serialises")
    );
    Ok(())
}

/// `sca-train manifest`: the canonical bytes on stdout (so they hash to the
/// manifest's sha256), the summary on stderr.
fn manifest(
    experiment: &std::path::Path,
    base_dir: Option<PathBuf>,
) -> Result<(), sca_train::train::TrainError> {
    use sca_train::train::TrainError;
    use std::io::Write;
    let bytes = std::fs::read(experiment)
        .map_err(|e| TrainError::Other(format!("cannot read {}: {e}", experiment.display())))?;
    let report =
        sca_train::spec::validate::validate_for_training(&experiment.display().to_string(), &bytes);
    let Some(exp) = report.experiment else {
        let msgs: Vec<String> = report.diagnostics.iter().map(ToString::to_string).collect();
        return Err(TrainError::Invalid(msgs.join("; ")));
    };
    let base_dir = base_dir.unwrap_or_else(|| {
        experiment
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf()
    });
    let mut m = sca_train::data::manifest::build(&exp.dataset, &base_dir, &Default::default())?;
    // The warm-start model, pinned as a launch pins it (the s3:// URI, or
    // a path made absolute from the experiment file's own directory, not
    // `--base-dir`'s, which is the dataset's), so that the sha256 printed
    // is the launch's.
    match exp.model.init_checkpoint.as_deref() {
        None => {}
        Some(init) if init.starts_with("experiment:") => eprintln!(
            "sca-train: warning: init_checkpoint = \"{init}\" is left out: a launch resolves it to that experiment's latest model and pins that, so its manifest sha256 differs from this one"
        ),
        Some(init) => {
            let location = match init.starts_with("s3://") {
                true => init.to_string(),
                false => std::fs::canonicalize(experiment)
                    .map_err(|e| {
                        TrainError::Other(format!("cannot resolve {}: {e}", experiment.display()))
                    })?
                    .parent()
                    .unwrap_or(std::path::Path::new("/"))
                    .join(init)
                    .display()
                    .to_string(),
            };
            m.init_checkpoint = Some(sca_train::data::manifest::pin_object(
                &location,
                std::path::Path::new("/"),
                &Default::default(),
            )?);
        }
    }
    std::io::stdout()
        .write_all(&m.to_bytes())
        .and_then(|()| std::io::stdout().flush())
        .map_err(|e| TrainError::Other(format!("cannot write the manifest: {e}")))?;
    eprintln!(
        "sca-train: manifest sha256 {} ({} objects)",
        m.sha256(),
        m.objects.len()
    );
    Ok(())
}

fn report(r: Result<(), sca_train::train::TrainError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sca-train: error: {e}");
            ExitCode::FAILURE
        }
    }
}
