//! `cargo xtask experiment run`: validate, pin (commit, image digest, data
//! manifest), launch on a backend, follow, and record; or, when a completed
//! run has the same pins, print it and launch nothing (memoized).

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::experiment::launch::{self, backend, Twin};
use crate::experiment::plan::{LaunchOptions, Plan};
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
            self.image.as_deref(),
            async |name: &str, job: &sca_spec::ResolvedJob| {
                backend(opts.backend)
                    .latest_model(&root, name, job, &opts.aws)
                    .await
            },
        )
        .await?;
        if !self.force {
            match launch::twin(&root, &plan, &opts.aws, !opts.dry_run).await {
                Some(Twin::Completed(done)) => {
                    eprintln!(
                        "{}: {} already ran it, completed{}: same commit, image, experiment and data on the {} backend; nothing launched (--force launches it again)",
                        self.file.display(),
                        done.job_name,
                        done.finished.as_deref().map(|f| format!(" {f}")).unwrap_or_default(),
                        done.backend
                    );
                    return Ok(launch::report(&root, &done, opts.json));
                }
                Some(Twin::Running(running, unsure)) => bail!(
                    "{}: {} is running it now (started {}{}): same commit, image, experiment and data on the {} backend; nothing launched. `cargo xtask experiment logs --follow {job}` follows it to its end, `experiment status {job}` looks again; --force launches a second run",
                    self.file.display(),
                    running.job_name,
                    running.started,
                    unsure.map(|why| format!("; {why}")).unwrap_or_default(),
                    running.backend,
                    job = running.job_name
                ),
                None => {}
            }
        }
        let (_, code) = launch::execute(&root, plan, &opts).await?;
        Ok(code)
    }
}
