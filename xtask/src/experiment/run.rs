//! `cargo xtask experiment run`: validate, pin (commit, image digest, data
//! manifest), launch on a backend, follow, and record; or, when a completed
//! run has the same pins, print it and launch nothing (memoized), and when
//! one runs or is being launched, refuse.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::experiment::launch::{self, Claim, Twin};
use crate::experiment::plan::{ImageChoice, LaunchOptions, Plan};
use crate::{flags, workspace};

impl flags::Run {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let opts = LaunchOptions {
            backend: self.backend,
            wait: self.wait,
            dry_run: self.dry_run,
            json: self.output == flags::Output::Json,
            registry: self.registry.clone(),
            aws: self.aws.session(),
        };
        let plan = Plan::fresh(
            &root,
            &self.file,
            self.allow_dirty,
            &opts,
            &self.build,
            ImageChoice::from_flag(self.image.as_deref()),
            async |name: &str, job: &sca_spec::ResolvedJob| {
                launch::latest_model(&root, opts.backend, name, job, &opts.aws, !opts.dry_run).await
            },
        )
        .await?;
        let claim = if opts.dry_run && self.force {
            Claim::none()
        } else if self.force {
            Claim::if_free(&root, &plan, &opts.aws).await?
        } else {
            match launch::claim(&root, &plan, &opts.aws, !opts.dry_run).await? {
                Ok(claim) => claim,
                Err(Twin::Completed(done)) => {
                    eprintln!(
                        "{}: {} already ran it, completed{}: same commit, image, experiment and data on the {} backend; nothing launched (--force launches it again)",
                        self.file.display(),
                        done.job_name,
                        done.finished.as_deref().map(|f| format!(" {f}")).unwrap_or_default(),
                        done.backend
                    );
                    return Ok(launch::report(&root, &done, opts.json));
                }
                Err(Twin::Running(running, unsure)) => bail!(
                    "{}: {} is running it now (started {}{}): same commit, image, experiment and data on the {} backend; nothing launched. `cargo xtask experiment logs --follow {job}` follows it to its end, `experiment status {job}` looks again; --force launches a second run",
                    self.file.display(),
                    running.job_name,
                    running.started,
                    unsure.map(|why| format!("; {why}")).unwrap_or_default(),
                    running.backend,
                    job = running.job_name
                ),
                Err(Twin::Preparing(holder, _)) => bail!(
                    "{}: another launch of it is being prepared now ({holder}): same commit, image, experiment and data on the {} backend; nothing launched. Its run shows in `cargo xtask experiment list` once it starts; --force launches a second run",
                    self.file.display(),
                    plan.backend
                ),
            }
        };
        let (_, code) = launch::execute(&root, plan, &opts, claim).await?;
        Ok(code)
    }
}
