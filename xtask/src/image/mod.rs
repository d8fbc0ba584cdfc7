//! `cargo xtask image ...`: the training image's build context, build and push.
//!
//! For the launcher: [`BuildOptions::for_workspace`], [`ensure_built`],
//! [`PushOptions`], [`ensure_pushed`] (returns the registry digest),
//! [`engine::connect`], [`provenance::commit_of`] (the commit a given image
//! holds).

pub mod build;
pub mod context;
pub mod dockerignore;
pub mod engine;
pub mod progress;
pub mod provenance;
pub mod push;
pub mod secrets;

use std::process::ExitCode;

use anyhow::{Context, Result};

#[allow(unused_imports)] // the launcher's entry points
pub use build::{ensure_built, BuildOptions, BuiltImage};
#[allow(unused_imports)]
pub use push::{ensure_pushed, PushOptions, Pushed};

use crate::{flags, workspace};

impl flags::Image {
    pub fn run(self) -> Result<ExitCode> {
        match self {
            flags::Image::Context(cmd) => cmd.run(),
            flags::Image::Build(cmd) => runtime()?.block_on(cmd.run()),
            flags::Image::Push(cmd) => runtime()?.block_on(cmd.run()),
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

impl flags::ImageContext {
    fn run(self) -> Result<ExitCode> {
        let dir = self.dir.unwrap_or_else(workspace::root);
        let start = std::time::Instant::now();
        let mut ctx = context::BuildContext::from_dir(
            &dir,
            &context::ContextOptions {
                dockerfile: self.dockerfile.clone(),
            },
        )?;
        // As `image build` sends it: a clean commit's files only.
        build::commit_only(
            &mut ctx,
            &dir,
            crate::git::revision(&dir)?.as_ref(),
            &self.dockerfile,
        )?;
        // What `image build` refuses is not read (a forgotten data
        // directory of tens of GiB would be, whole, by the tar or the scan).
        let limit = context::parse_size(&self.max_context_size)
            .map_err(|e| anyhow::anyhow!("--max-context-size: {e}"))?;
        let too_large = ctx.check_size(limit).err();
        if let (Some(e), Some(_)) = (&too_large, &self.tar) {
            return Err(anyhow::anyhow!("{e}: no tar written"));
        }
        if let Some(path) = &self.tar {
            ctx.load()?;
            let tar = ctx.to_tar()?;
            crate::fsx::write_atomic(path, &tar)
                .with_context(|| format!("writing {}", path.display()))?;
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "wrote {} ({} files, {}, sha256 {}) in {secs:.3} s: {:.0} files/s, {:.1} MB/s",
                path.display(),
                ctx.files().len(),
                context::human_bytes(tar.len() as u64),
                context::sha256_hex(&tar),
                ctx.files().len() as f64 / secs,
                tar.len() as f64 / 1e6 / secs
            );
        }
        if self.list {
            let mut out = String::new();
            for path in ctx.files() {
                out.push_str(path);
                out.push('\n');
            }
            print!("{out}");
        } else if self.tar.is_none() {
            let files = ctx.files().len();
            println!(
                "{files} files, {} ({})",
                context::human_bytes(ctx.total_size()),
                dir.display()
            );
            println!("use --list to print them");
        }
        if let Some(e) = too_large {
            eprintln!(
                "error: {e} (`image build` refuses it; its files were not read for credentials)"
            );
            return Ok(ExitCode::FAILURE);
        }
        // What `image build` would refuse, shown without building.
        let findings = secrets::scan(&ctx);
        if findings.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("error: the build context holds credential material (`image build` refuses it):");
        for f in &findings {
            eprintln!("  {f}");
        }
        eprintln!("Exclude these files in .dockerignore (or remove them).");
        Ok(ExitCode::FAILURE)
    }
}

impl flags::ImageBuild {
    async fn run(self) -> Result<ExitCode> {
        let options = BuildOptions::from_flags(&self.build)?;
        let docker = engine::connect().await?;
        let built = ensure_built(&docker, &options).await?;
        println!("{}", built.id);
        Ok(ExitCode::SUCCESS)
    }
}

impl flags::ImagePush {
    async fn run(self) -> Result<ExitCode> {
        let defaults = workspace::defaults()?;
        let options = PushOptions {
            build: BuildOptions::from_flags(&self.build)?,
            registry: self.registry,
            repository: self
                .repository
                .or(defaults.ecr_repository)
                .unwrap_or_else(|| "sca-train".into()),
            aws: crate::aws::Session::new(self.profile, self.region),
            region: defaults.region,
            pull: false,
        };
        let docker = engine::connect().await?;
        let pushed = ensure_pushed(&docker, &options).await?;
        match self.output {
            flags::ImageOutput::Text => println!("{}", pushed.reference),
            flags::ImageOutput::Json => println!("{}", serde_json::to_string(&pushed)?),
        }
        Ok(ExitCode::SUCCESS)
    }
}
