//! `cargo xtask experiment run`: validate, pin (commit, image digest, data
//! manifest), launch on a backend, follow, and record.

use std::process::ExitCode;

use anyhow::Result;

use crate::experiment::launch::{self, backend};
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
        let (_, code) = launch::execute(&root, plan, &opts).await?;
        Ok(code)
    }
}
