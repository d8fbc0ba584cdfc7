//! A job's lifecycle after launch, for every backend: `status`, `logs`,
//! `stop`, `list`, `fetch` and `rerun`. Local and docker jobs are read from
//! their run records and the engine; SageMaker jobs from the API, and their
//! records are refreshed as a side effect.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::experiment::launch::{self, backend};
use crate::experiment::plan::{LaunchOptions, Plan};
use crate::experiment::record::{self, Backend, RunRecord};
use crate::experiment::sweep::{points_table, print_table, SweepRecord};
use crate::{flags, workspace};

impl flags::Status {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let mut record = RunRecord::load(&root, &self.job)?;
        backend(record.backend)
            .refresh(&root, &mut record, &self.aws.session())
            .await?;
        if self.output == flags::Output::Json {
            outln!("{}", serde_json::to_string(&record)?);
        } else {
            print_status(&record)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn print_status(r: &RunRecord) -> Result<()> {
    outln!("job         {}", r.job_name);
    outln!("backend     {}", r.backend);
    outln!(
        "status      {}{}",
        r.status,
        r.secondary_status
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    );
    outln!(
        "experiment  {} (sha256 {})",
        r.experiment,
        r.pins.experiment_sha256
    );
    outln!(
        "commit      {}{}",
        r.pins.commit,
        if r.pins.dirty { " (dirty)" } else { "" }
    );
    if let Some(i) = &r.pins.image {
        outln!("image       {i}");
    }
    if let Some(m) = &r.pins.data_manifest_sha256 {
        outln!(
            "data        {} objects, manifest sha256 {m}",
            r.data_objects
        );
    }
    outln!("started     {}", r.started);
    if let Some(f) = &r.finished {
        outln!("finished    {f}");
    }
    if let Some(f) = &r.failure_reason {
        outln!("reason      {f}");
    }
    if let Some(iou) = r
        .final_metrics
        .get("iou")
        .or_else(|| r.final_metrics.get("val:iou"))
    {
        outln!("val IoU     {iou}");
    }
    if let Some(sweep) = &r.sweep {
        outln!("sweep       {sweep}");
    }
    if let Some(billed) = &r.cost {
        outln!(
            "cost        {} (training {} s, billable {} s)",
            billed.describe(),
            billed.training_secs,
            billed.billable_secs
        );
    }
    outln!("artifacts   {}", r.artifacts);
    Ok(())
}

impl flags::Logs {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let record = RunRecord::load(&root, &self.job)?;
        backend(record.backend)
            .logs(&root, &record, self.follow, &self.aws.session())
            .await?;
        Ok(ExitCode::SUCCESS)
    }
}

impl flags::Stop {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let record = RunRecord::load(&root, &self.job)?;
        if record.status.is_terminal() {
            errln!("{} has already ended: {}", record.job_name, record.status);
            return Ok(ExitCode::SUCCESS);
        }
        backend(record.backend)
            .stop(&root, &record, &self.aws.session())
            .await?;
        Ok(ExitCode::SUCCESS)
    }
}

impl flags::List {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        if let Some(name) = &self.sweep {
            let sweep = SweepRecord::load(&root, name)?;
            let rows = points_table(&root, &sweep);
            print_table(&sweep, &rows, self.output == flags::Output::Json)?;
            return Ok(ExitCode::SUCCESS);
        }
        let mut all = RunRecord::all(&root);
        if self.remote {
            let remote = remote_records(self.bucket.as_deref(), &self.aws).await?;
            all = RunRecord::merge_remote(all, remote);
            all.sort_by(|a, b| (&a.started, &a.job_name).cmp(&(&b.started, &b.job_name)));
        }
        let records: Vec<RunRecord> = all
            .into_iter()
            .filter(|r| self.experiment.as_ref().is_none_or(|e| &r.experiment == e))
            .filter(|r| {
                self.commit
                    .as_ref()
                    .is_none_or(|c| r.pins.commit.starts_with(c.as_str()))
            })
            .collect();
        if self.output == flags::Output::Json {
            outln!("{}", serde_json::to_string(&records)?);
            return Ok(ExitCode::SUCCESS);
        }
        if records.is_empty() {
            errln!("no runs in {}", record::runs_dir(&root).display());
            return Ok(ExitCode::SUCCESS);
        }
        outln!(
            "{:<63}  {:<9}  {:<10}  {:<7}  {:<20}  {:<7}  COST",
            "JOB",
            "BACKEND",
            "STATUS",
            "COMMIT",
            "STARTED",
            "val IoU"
        );
        for r in &records {
            let iou = r
                .final_metrics
                .get("iou")
                .or_else(|| r.final_metrics.get("val:iou"))
                .and_then(|v| v.as_f64())
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "-".into());
            let cost = match (&r.cost, r.backend) {
                (Some(billed), _) => billed.describe(),
                (None, Backend::Sagemaker) => "-".into(),
                (None, _) => "this machine".into(),
            };
            outln!(
                "{:<63}  {:<9}  {:<10}  {:<7}  {:<20}  {iou:<7}  {cost}",
                r.job_name,
                r.backend.to_string(),
                r.status.to_string(),
                &r.pins.commit[..r.pins.commit.len().min(7)],
                r.started
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl flags::Fetch {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let record = RunRecord::load(&root, &self.job)?;
        let dir = self
            .to
            .clone()
            .unwrap_or_else(|| fetched_dir(&root, &record));
        for f in fetch(&root, &record, &dir, &self.aws.session()).await? {
            outln!("{}", dir.join(f).display());
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Where `experiment fetch` unpacks a job's artifacts by default.
fn fetched_dir(root: &Path, record: &RunRecord) -> std::path::PathBuf {
    record::run_dir(root, &record.job_name).join("fetched")
}

/// `record`'s artifacts unpacked into `dir`: the files unpacked; what was
/// skipped is a warning.
async fn fetch(
    root: &Path,
    record: &RunRecord,
    dir: &Path,
    aws: &crate::aws::Session,
) -> Result<Vec<String>> {
    let unpacked = backend(record.backend)
        .fetch(root, record, dir, aws)
        .await?;
    for s in &unpacked.skipped {
        errln!(
            "warning: skipped `{s}` of {}: not a file the trainer writes at the model's root",
            record.job_name
        );
    }
    Ok(unpacked.files)
}

impl flags::Rerun {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let old = RunRecord::load(&root, &self.job)?;
        // A newer xtask's record may pin what this one does not know: a
        // rerun by this one would not be the same run, yet say so.
        if old.record_version > record::RECORD_VERSION {
            anyhow::bail!(
                "{} is a version {} run record, newer than the version {} this xtask knows: a rerun here could leave out what it pins and still call itself the same run; update the checkout (`git pull`) and rerun it",
                record::record_path(&root, &old.job_name).display(),
                old.record_version,
                record::RECORD_VERSION
            );
        }
        let opts = LaunchOptions {
            backend: old.backend,
            wait: self.wait,
            dry_run: self.dry_run,
            json: self.output == flags::Output::Json,
            registry: None,
            aws: self.aws.session(),
        };
        let plan = Plan::again(&root, &old, &opts.aws).await?;
        crate::experiment::sweep::check_rerun(&root, &plan)?;
        errln!(
            "rerunning {}: commit {}, experiment sha256 {}, {}data manifest {}",
            old.job_name,
            old.pins.short_commit(),
            // Hex (checked when the record was read): any cut is a char boundary.
            &old.pins.experiment_sha256[..old.pins.experiment_sha256.len().min(12)],
            old.pins
                .image
                .as_ref()
                .map(|i| format!("image {i}, "))
                .unwrap_or_default(),
            &plan.manifest.sha256()[..12]
        );
        let claim = match opts.dry_run {
            true => launch::Claim::none(),
            false => launch::Claim::if_free(&root, &plan, &opts.aws).await?,
        };
        let (_, code) = launch::execute(&root, plan, &opts, claim).await?;
        Ok(code)
    }
}

/// Download the artifacts of completed SageMaker jobs that have none here
/// (local and docker runs have theirs on disk), with `experiment fetch`,
/// under a progress bar; a failure is a warning: the report or diff says
/// what is missing.
pub async fn fetch_missing(root: &Path, records: &[RunRecord], aws: &flags::AwsArgs) {
    let missing: Vec<&RunRecord> = records
        .iter()
        .filter(|r| r.backend == Backend::Sagemaker && r.status == record::Status::Completed)
        .filter(|r| crate::experiment::curves::artifacts_dir(root, r).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let bar = indicatif::ProgressBar::new(missing.len() as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("fetching {pos}/{len} {bar:30} {msg}")
    {
        bar.set_style(style);
    }
    let session = aws.session();
    for r in missing {
        bar.set_message(r.job_name.clone());
        if let Err(e) = fetch(root, r, &fetched_dir(root, r), &session).await {
            bar.suspend(|| {
                errln!(
                    "warning: could not fetch {}'s artifacts ({e:#}); going on without them (`cargo xtask experiment fetch {}` to retry)",
                    r.job_name, r.job_name
                )
            });
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
}

/// The records of the config bucket's jobs (`list --remote`).
#[cfg(feature = "full")]
async fn remote_records(bucket: Option<&str>, aws: &flags::AwsArgs) -> Result<Vec<RunRecord>> {
    use crate::experiment::sagemaker::remote;
    let bucket = remote::bucket(bucket)?;
    let clients = remote::clients(&aws.session()).await?;
    remote::records(&clients, &bucket).await
}

#[cfg(not(feature = "full"))]
async fn remote_records(_: Option<&str>, _: &flags::AwsArgs) -> Result<Vec<RunRecord>> {
    Err(crate::needs_full("--remote"))
}
