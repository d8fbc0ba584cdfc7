//! `cargo xtask experiment sweep`: a sweep file's points, each launched as an
//! ordinary pinned run (its own record, `sweep` set, on SageMaker an
//! `sca:sweep` tag), at most N at once. Every point is validated and planned
//! before any launches. A point whose completed run has the same pins
//! (commit, image digest, experiment bytes, data manifest) is not launched
//! again, so running a sweep again resumes it: only failed, stopped and
//! missing points run.
//!
//! The sweep record, `<runs>/.sweeps/<name>/sweep.json`, ties the points
//! together (name and values); the child experiment files beside it are the
//! bytes each point's run validated and uploaded. A point's runs are found by
//! their experiment name, which is the point's (`<sweep>-<sha8>`), so the
//! sweep record never needs rewriting as runs end, and a launcher killed
//! mid-sweep loses nothing: each launched point has its own record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::experiment::launch::{self, backend, Claim, Twin};
use crate::experiment::pin;
use crate::experiment::pins::ImageRef;
use crate::experiment::plan::{ImageChoice, LaunchOptions, ManifestCache, Plan};
use crate::experiment::record::{self, Backend, RunRecord, Status};
use crate::{flags, fsx, workspace};
use sca_data::manifest::sha256_hex;
use xtask_entry::validate::render;

/// What ties a sweep's points together.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRecord {
    /// The sweep file's `experiment.name`, every point's prefix.
    pub sweep: String,
    /// The sweep file as given.
    pub file: String,
    /// sha256 of the sweep file's bytes as of the last `experiment sweep`.
    pub sha256: String,
    pub backend: Backend,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<sca_spec::Objective>,
    pub updated: String,
    pub points: Vec<PointEntry>,
    /// The commit (and diff, where dirty) the last `experiment sweep`
    /// pinned its points to: a point's run is one of this code's (absent
    /// in older sweep records: any code's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_sha256: Option<String>,
    /// The image digest the last `experiment sweep` ran its points in
    /// (docker, sagemaker): a point's run is one of this image's, as its
    /// memo is (absent for local points, and in older sweep records: any
    /// image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

impl SweepRecord {
    /// Whether `r` is a run of `point` as this sweep now has it: its
    /// experiment as the sweep file now writes it, on the sweep's backend,
    /// at the sweep's code and in its image, on the data manifest (so the
    /// warm start) its last launch planned it with. `list --sweep` and `report --sweep`
    /// show only these, never a run of another version of the file.
    pub fn is_run_of(&self, point: &PointEntry, r: &RunRecord) -> bool {
        r.experiment == point.name
            && r.backend == self.backend
            && point
                .experiment_sha256
                .as_ref()
                .is_none_or(|sha| *sha == r.pins.experiment_sha256)
            && self
                .commit
                .as_ref()
                .is_none_or(|c| *c == r.pins.commit && self.diff_sha256 == r.pins.diff_sha256)
            && point
                .data_manifest_sha256
                .as_ref()
                .is_none_or(|m| Some(m) == r.pins.data_manifest_sha256.as_ref())
            && self
                .image_digest
                .as_deref()
                .is_none_or(|d| Some(d) == r.pins.image_digest())
    }

    /// Whether `r` is a run of any of this sweep's points ([`Self::is_run_of`]).
    pub fn has_run(&self, r: &RunRecord) -> bool {
        self.points.iter().any(|p| self.is_run_of(p, r))
    }
}

/// One point: its child experiment's name and the values it sets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PointEntry {
    pub name: String,
    pub values: BTreeMap<String, serde_json::Value>,
    /// sha256 of the child experiment's bytes: a point's name says only
    /// its values, so a run of an earlier version of the sweep file (another
    /// epoch count, say) has the same name (absent in older sweep records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment_sha256: Option<String>,
    /// The data manifest (and so warm start) the last `experiment sweep`
    /// planned the point with: a completed run on earlier data is not the
    /// point's result beside points run on today's (absent in older sweep
    /// records: any data's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_manifest_sha256: Option<String>,
}

/// The directory of sweep `name`: its record and child experiment files.
pub fn sweep_dir(root: &Path, name: &str) -> PathBuf {
    record::runs_dir(root).join(".sweeps").join(name)
}

impl SweepRecord {
    const FILE: &'static str = "sweep.json";

    pub fn load(root: &Path, name: &str) -> Result<Self> {
        let path = sweep_dir(root, name).join(Self::FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let known = known_sweeps(root);
                bail!(
                    "no sweep `{name}` in {}: {}",
                    record::runs_dir(root).display(),
                    if known.is_empty() {
                        "no sweep has run from this checkout (`cargo xtask experiment sweep FILE` runs one)".to_string()
                    } else {
                        format!("the sweeps are {}", known.join(", "))
                    }
                )
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a sweep record", path.display()))
    }

    fn save(&self, root: &Path) -> Result<()> {
        let path = sweep_dir(root, &self.sweep).join(Self::FILE);
        fsx::write_atomic(&path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

fn known_sweeps(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(record::runs_dir(root).join(".sweeps"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(SweepRecord::FILE).is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

impl flags::Sweep {
    pub async fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let defaults = workspace::defaults()?;
        let label = self.file.display().to_string();
        let Some(bytes) = pin::read_experiment(&self.file) else {
            let report = sca_spec::validate_file(&self.file, &defaults);
            for d in &report.diagnostics {
                errln!("{}", render(d, report.source.as_deref()));
            }
            bail!("{label} could not be read: no point was launched");
        };
        // Every point is checked before any launches.
        let sweep = match sca_spec::expand(&label, &bytes, &defaults) {
            Ok(plan) => plan,
            Err(report) => {
                for d in &report.diagnostics {
                    errln!("{}", render(d, report.source.as_deref()));
                }
                bail!(
                    "{label} is invalid ({} problem(s) above): no point was launched",
                    report.diagnostics.len()
                );
            }
        };
        let base_dir = std::fs::canonicalize(&self.file)
            .with_context(|| format!("resolving {label}"))?
            .parent()
            .context("a file has a parent directory")?
            .to_path_buf();
        let limit = sca_spec::validate_bytes(&label, &bytes, &defaults)
            .experiment
            .and_then(|e| e.job.max_cost_usd);
        // Priced where the jobs are created: `--region` over the file's.
        let aws = self.aws.session();
        let mut priced = sweep.clone();
        for point in &mut priced.points {
            point.job.region = aws.region_or(&point.job.region);
        }
        let total_cost = match self.backend {
            Backend::Sagemaker => match sca_spec::check_sweep_max_cost(limit, &priced) {
                Ok(total) => total,
                Err(over) => bail!("{label}: {over}: no point was launched"),
            },
            // This machine's time: nothing is billed per job.
            Backend::Local | Backend::Docker => None,
        };
        if let Some(total) = total_cost {
            errln!(
                "{}: {} point(s), worst-case cost ${total:.2} in all",
                sweep.name,
                sweep.points.len()
            );
        }

        // Before anything is built or listed: with the sweep's earlier runs,
        // the points that will launch whatever the image turns out to be
        // (no completed or running run of their bytes) may already be over
        // the limit. The full check follows the planning. Both count
        // another machine's runs of the points at this commit (the config
        // bucket's records): what they cost, and that a point one of them
        // completed is memoized here, not launched.
        let mut remote: Vec<RunRecord> = Vec::new();
        if let (Backend::Sagemaker, Some(limit)) = (self.backend, limit) {
            if let Some(commit) = crate::git::revision(&root)?.map(|r| r.commit) {
                for point in &sweep.points {
                    match backend(self.backend)
                        .remote_runs(&root, &point.name, &commit, &point.job, &aws)
                        .await
                    {
                        Ok(runs) => remote.extend(runs),
                        Err(e) => {
                            // Then no twin of theirs is seen either: the
                            // points launch, and are counted so.
                            errln!(
                                "warning: {label}: the config bucket's runs of its points cannot be read ({e:#}): only this machine's count"
                            );
                            remote.clear();
                            break;
                        }
                    }
                }
            }
            let known = with_remote(RunRecord::all(&root), &remote);
            budget(
                &known,
                &sweep.name,
                &surely_launched(&known, &priced),
                limit,
            )
            .map_err(|over| anyhow::anyhow!("{label}: {over}; no point was launched"))?;
        }

        let dir = sweep_dir(&root, &sweep.name);
        let opts = LaunchOptions {
            backend: self.backend,
            // A point in flight is followed to its end: that is what bounds
            // how many run at once.
            wait: true,
            dry_run: false,
            json: false,
            registry: self.registry.clone(),
            aws,
        };
        // Plan every point: pins, data manifest (listed once per dataset),
        // image (built once: every point runs the same commit).
        let manifests = ManifestCache::default();
        // The first point's image (given, and checked; or built), for the rest.
        let mut image: Option<ImageRef> = None;
        let mut to_launch = Vec::new();
        let mut rows = Vec::new();
        let mut running = 0usize;
        // Points another launch is preparing (no record yet).
        let mut elsewhere: Vec<Elsewhere> = Vec::new();
        // Twins only in the config bucket, for the final table.
        let mut beyond: Vec<RunRecord> = Vec::new();
        // Every point runs one code: the first point's pin. The image built
        // for it is reused by the rest, so a commit or edit while the points
        // are planned would otherwise give later points a record naming
        // code their image does not hold.
        let mut code: Option<Code> = None;
        // Each point's data manifest as planned, for the sweep record.
        let mut data: BTreeMap<String, Option<String>> = BTreeMap::new();
        for point in &sweep.points {
            // (A dry run does not write it; the path is what a run uses.)
            let file = dir.join(format!("{}.toml", point.name));
            let pinned = pin::pin_child(
                &root,
                &file,
                point.bytes.clone(),
                base_dir.clone(),
                self.allow_dirty,
            )?;
            let this = (
                pinned.commit.clone(),
                pinned.dirty,
                pinned.diff_sha256.clone(),
            );
            same_code(&mut code, this, &point.name).map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
            let mut plan = Plan::from_pinned(
                pinned,
                &opts,
                &self.build,
                match &image {
                    Some(built) => ImageChoice::Built(built),
                    None => ImageChoice::from_flag(self.image.as_deref()),
                },
                Some(&manifests),
                async |name: &str, job: &sca_spec::ResolvedJob| {
                    launch::latest_model(&root, opts.backend, name, job, &opts.aws, !self.dry_run)
                        .await
                },
            )
            .await
            .with_context(|| format!("planning point {} ({})", point.name, point.describe()))?;
            plan.sweep = Some(sweep.name.clone());
            data.insert(point.name.clone(), plan.pins.data_manifest_sha256.clone());
            if image.is_none() {
                image = plan.pins.image.clone();
            }
            // A point already completed is its result; one running now
            // (a sweep started again while its points run) is left to it.
            // A point to launch is claimed until its launch ends.
            let twin = match (self.force, self.dry_run) {
                (true, true) => Ok(Claim::none()),
                (true, false) => Ok(Claim::if_free(&root, &plan, &opts.aws).await?),
                (false, _) => launch::claim(&root, &plan, &opts.aws, !self.dry_run).await?,
            };
            let action = match &twin {
                Ok(_) => "launch".to_string(),
                Err(Twin::Completed(t)) => format!("completed: {}", t.job_name),
                Err(Twin::Running(t, None)) => format!("running: {}", t.job_name),
                Err(Twin::Running(t, Some(why))) => format!("running: {} ({why})", t.job_name),
                Err(Twin::Preparing(holder, _)) => format!("being launched by {holder}"),
            };
            let done = match &twin {
                Err(Twin::Completed(t)) => Some(t.job_name.clone()),
                _ => None,
            };
            // A twin read in the config bucket and not copied here (it
            // could not be) is still the point's run in the final table.
            if let Err(Twin::Completed(t) | Twin::Running(t, _)) = &twin {
                if !record::record_path(&root, &t.job_name).is_file() {
                    beyond.push(t.clone());
                }
            }
            rows.push((point.name.clone(), point.describe(), done, action));
            match twin {
                Ok(claim) => to_launch.push((plan, claim)),
                Err(Twin::Running(..)) => running += 1,
                // Another invocation's, with no record yet: its cost counts
                // here too, as that invocation counts this one's points.
                Err(Twin::Preparing(_, before)) => {
                    running += 1;
                    elsewhere.push(Elsewhere { plan, before });
                }
                Err(Twin::Completed(_)) => {}
            }
        }
        errln!(
            "{}: {} point(s): {} to launch, {} with a completed run, {running} running now",
            sweep.name,
            sweep.points.len(),
            to_launch.len(),
            sweep.points.len() - to_launch.len() - running
        );
        if let (Backend::Sagemaker, Some(limit)) = (self.backend, limit) {
            // (The remote runs that planning copied here are here once.)
            let earlier = with_remote(RunRecord::all(&root), &remote);
            let launching: Vec<&sca_spec::ResolvedJob> = to_launch
                .iter()
                .map(|(p, _)| &p.resolved)
                // Unless its record is here by now (counted with the
                // earlier runs).
                .chain(
                    elsewhere
                        .iter()
                        .filter(|e| !e.has_run(&earlier))
                        .map(|e| &e.plan.resolved),
                )
                .collect();
            let total = budget(&earlier, &sweep.name, &launching, limit)
                .map_err(|over| anyhow::anyhow!("{label}: {over}; no point was launched"))?;
            errln!(
                "{}: ${total:.2} at most with its earlier runs, within job.max_cost_usd = ${limit:.2}",
                sweep.name
            );
        }
        let parallel = slots(
            self.max_parallel.or(sweep.max_parallel),
            self.backend,
            running,
            to_launch.len(),
        );
        if self.dry_run {
            if let Err(e) = &parallel {
                errln!("{label}: a launch now would launch nothing: {e}");
                for row in &mut rows {
                    if row.3 == "launch" {
                        row.3 = "launch (once max_parallel allows)".into();
                    }
                }
            }
            if self.output == flags::Output::Json {
                let json: Vec<_> = rows
                    .iter()
                    .map(|(name, values, done, action)| {
                        serde_json::json!({ "name": name, "values": values, "completed_run": done, "action": action })
                    })
                    .collect();
                outln!("{}", serde_json::to_string(&json)?);
            } else {
                for (name, values, _, action) in &rows {
                    outln!("{name}  {action:<70}  {values}");
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        let parallel =
            parallel.map_err(|e| anyhow::anyhow!("{label}: {e}; nothing was launched"))?;
        // Written once every point is planned and within the limit: a
        // sweep refused before it launches anything (a dirty tree, another
        // backend, the budget) leaves its record as the last launch wrote
        // it, which `list --sweep` and `report --sweep` read. Its code is
        // every point's (`same_code`).
        let entries = SweepRecord {
            sweep: sweep.name.clone(),
            file: label.clone(),
            sha256: sha256_hex(&bytes),
            backend: self.backend,
            objective: sweep.objective,
            updated: record::now(),
            points: sweep
                .points
                .iter()
                .map(|p| PointEntry {
                    name: p.name.clone(),
                    values: p.values.clone(),
                    experiment_sha256: Some(sha256_hex(&p.bytes)),
                    data_manifest_sha256: data.get(&p.name).cloned().flatten(),
                })
                .collect(),
            commit: code.as_ref().map(|(commit, _, _)| commit.clone()),
            diff_sha256: code.as_ref().and_then(|(_, _, diff)| diff.clone()),
            // Every point's: the first point's, given to the rest.
            image_digest: image.as_ref().map(|i| i.digest.clone()),
        };
        for p in &sweep.points {
            let file = dir.join(format!("{}.toml", p.name));
            fsx::write_atomic(&file, &p.bytes)
                .with_context(|| format!("writing {}", file.display()))?;
        }
        entries.save(&root)?;

        // Ctrl-C or SIGTERM: the points in flight stop (each launch
        // handles it as `run` does) and no further point starts.
        let (interrupted, _) = super::contract::catch_interrupts();
        let results: Vec<(String, Option<Result<RunRecord>>)> =
            futures_util::stream::iter(to_launch)
                .map(|(plan, claim)| {
                    let (root, opts) = (&root, &opts);
                    async move {
                        let name = plan.experiment.experiment.name.clone();
                        if interrupted.load(Ordering::SeqCst) {
                            return (name, None);
                        }
                        let launched = launch::execute(root, plan, opts, claim)
                            .await
                            .map(|(r, _)| r);
                        (name, Some(launched))
                    }
                })
                .buffer_unordered(parallel)
                .collect()
                .await;

        let mut ok = true;
        // A point left to a launch beside this one that then gave up (a
        // refusal, Ctrl-C) has no run: said, not passed over.
        for e in &elsewhere {
            let name = &e.plan.experiment.experiment.name;
            if e.has_run(&RunRecord::all(&root)) {
                continue;
            }
            match Claim::holder(&root, &e.plan, &opts.aws).await? {
                // Alive as of its claim's last renewal: one that died since
                // is told only by its claim's lapse, so the point is its.
                Some(holder) => errln!(
                    "{name}: left to {holder}, which launches it (should that launch give up or die, run the sweep again once its claim is gone)"
                ),
                // Its record may have come as its claim was let go, here or
                // (another machine's launch) in the config bucket.
                None if e.has_run(&RunRecord::all(&root)) => {}
                None if e.has_run(
                    &backend(self.backend)
                        .remote_twins(&root, &e.plan, &opts.aws, false)
                        .await
                        .unwrap_or_default(),
                ) =>
                {
                    errln!("{name}: launched from another machine");
                }
                None => {
                    ok = false;
                    errln!(
                        "{name}: not launched: another launch was preparing it and gave up; run the sweep again"
                    );
                }
            }
        }
        for (name, result) in &results {
            match result {
                None => {
                    ok = false;
                    errln!("{name}: not launched (interrupted)");
                }
                Some(Err(e)) => {
                    ok = false;
                    errln!("error: {name}: {e:#}");
                }
                Some(Ok(r)) if r.status != Status::Completed => ok = false,
                Some(Ok(_)) => {}
            }
        }
        let table = points_table_with(&root, &entries, &beyond);
        print_table(&entries, &table, self.output == flags::Output::Json)?;
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// How many points to launch at once: `cap` (`--max-parallel`, else the
/// sweep's `max_parallel`) less the sweep's points `running` already (an
/// earlier launch of the sweep's, or one beside this one), so that no more
/// than `cap` run at once; without a cap, one at a time on the local
/// and docker backends, all at once on SageMaker. Refused when the cap is
/// taken up and there are points to launch.
fn slots(
    cap: Option<u32>,
    backend: Backend,
    running: usize,
    to_launch: usize,
) -> std::result::Result<usize, String> {
    let Some(cap) = cap.map(|c| (c as usize).max(1)) else {
        return Ok(match backend {
            Backend::Sagemaker => to_launch,
            Backend::Local | Backend::Docker => 1,
        }
        .max(1));
    };
    if running >= cap && to_launch > 0 {
        return Err(format!(
            "{running} of its points are running now, and at most {cap} may run at once (max_parallel): none of the {to_launch} left can start. Run the sweep again once some end, or pass --max-parallel with a higher number"
        ));
    }
    Ok(cap - running.min(cap - 1))
}

/// A point as `list --sweep` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PointRow {
    pub name: String,
    pub values: BTreeMap<String, serde_json::Value>,
    /// The point's newest completed run, else its newest run.
    pub job: Option<String>,
    pub status: Option<Status>,
    /// The objective's final value in that run.
    pub objective: Option<f64>,
    /// Whether this point is the best of the completed ones.
    pub best: bool,
    /// What the run was billed (SageMaker).
    pub cost_usd: Option<f64>,
}

/// Each point of `sweep` with its run, objective, and the best marked. A
/// point's runs are those [`SweepRecord::is_run_of`] it: never a result of
/// another version of the file, nor one on earlier data.
pub fn points_table(root: &Path, sweep: &SweepRecord) -> Vec<PointRow> {
    points_table_with(root, sweep, &[])
}

/// [`points_table`], with `beyond` (runs read in the config bucket and not
/// copied here) beside this runs directory's.
fn points_table_with(root: &Path, sweep: &SweepRecord, beyond: &[RunRecord]) -> Vec<PointRow> {
    let mut all = with_remote(RunRecord::all(root), beyond);
    all.sort_by(|a, b| (&a.started, &a.job_name).cmp(&(&b.started, &b.job_name)));
    let mut rows: Vec<PointRow> = sweep
        .points
        .iter()
        .map(|p| {
            let runs: Vec<&RunRecord> = all.iter().filter(|r| sweep.is_run_of(p, r)).collect();
            // Oldest first: the newest completed one, else the newest.
            let run = runs
                .iter()
                .rev()
                .find(|r| r.status == Status::Completed)
                .or(runs.last())
                .copied();
            PointRow {
                name: p.name.clone(),
                values: p.values.clone(),
                job: run.map(|r| r.job_name.clone()),
                status: run.map(|r| r.status),
                objective: run
                    .filter(|r| r.status == Status::Completed)
                    .zip(sweep.objective)
                    .and_then(|(r, o)| objective_value(root, r, o.metric)),
                best: false,
                cost_usd: run.and_then(|r| r.cost.as_ref()).and_then(|c| c.usd),
            }
        })
        .collect();
    if let Some(goal) = sweep.objective.map(|o| o.goal) {
        let best = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.objective.map(|v| (i, v)))
            .reduce(|a, b| if goal.better(b.1, a.1) { b } else { a });
        if let Some((i, _)) = best {
            rows[i].best = true;
        }
    }
    rows
}

/// `metric`'s value in run `r`'s last epoch: validation metrics from the
/// record, training metrics from the model directory's `metrics.json`
/// where it is here, else from a SageMaker record's `train:` metrics
/// (which its log regex fills with the last finite value: a loss gone NaN
/// is `null` in `metrics.json`, so no objective, never a stale one).
fn objective_value(root: &Path, r: &RunRecord, metric: sca_spec::Metric) -> Option<f64> {
    let (split, key) = metric.split_and_key();
    let recorded = || {
        r.final_metrics
            .get(key)
            .filter(|_| split == "val")
            .or_else(|| r.final_metrics.get(format!("{split}:{key}")))
            .and_then(|v| v.as_f64())
    };
    let last = match split {
        "val" => return recorded(),
        _ => {
            let Some(dir) = crate::experiment::curves::artifacts_dir(root, r) else {
                return recorded();
            };
            let all: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).ok()?).ok()?;
            let list = all
                .as_array()
                .cloned()
                .or_else(|| all.get("epochs").and_then(|e| e.as_array()).cloned())?;
            list.into_iter().rev().find(|m| m["split"] == split)?
        }
    };
    last.get(key)
        .or_else(|| last.get(format!("{split}:{key}")))
        .and_then(|v| v.as_f64())
}

/// Print `rows`: a table with the best point marked, or one JSON line.
pub fn print_table(sweep: &SweepRecord, rows: &[PointRow], json: bool) -> Result<()> {
    if json {
        outln!(
            "{}",
            serde_json::to_string(&serde_json::json!({
                "sweep": sweep.sweep,
                "objective": sweep.objective,
                "points": rows,
            }))?
        );
        return Ok(());
    }
    let objective = sweep
        .objective
        .map(|o| {
            format!(
                "{} ({})",
                serde_json::to_value(o.metric)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                serde_json::to_value(o.goal)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )
        })
        .unwrap_or_else(|| "objective".into());
    outln!(
        "  {:<40}  {:<10}  {:<16}  {:<63}  VALUES",
        "POINT",
        "STATUS",
        objective,
        "JOB"
    );
    for r in rows {
        outln!(
            "{} {:<40}  {:<10}  {:<16}  {:<63}  {}",
            if r.best { "*" } else { " " },
            r.name,
            r.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            r.objective
                .map(crate::experiment::curves::metric)
                .unwrap_or_else(|| "-".into()),
            r.job.as_deref().unwrap_or("-"),
            r.values
                .iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let billed: Vec<f64> = rows.iter().filter_map(|r| r.cost_usd).collect();
    if !billed.is_empty() {
        // The rows' runs only: a point's earlier failed runs were billed
        // too, and the budget counts them (`experiment status JOB`).
        outln!(
            "billed for the runs shown: ${:.2} over {} job(s)",
            billed.iter().sum::<f64>(),
            billed.len()
        );
    }
    Ok(())
}

/// The code a sweep's points pin: commit, dirty flag, diff hash.
type Code = (String, bool, Option<String>);

/// Record the first point's `code`, or refuse a later point's that differs.
fn same_code(first: &mut Option<Code>, this: Code, point: &str) -> std::result::Result<(), String> {
    let shown = |c: &Code| {
        let changes = if c.1 { " with changes" } else { "" };
        format!("{}{changes}", &c.0[..c.0.len().min(12)])
    };
    match first {
        None => *first = Some(this),
        Some(f) if *f != this => {
            return Err(format!(
                "the working tree moved while the sweep was planned (point {point} pins commit {}, the first point {}): no point was launched; launch the sweep again",
                shown(&this),
                shown(f)
            ))
        }
        Some(_) => {}
    }
    Ok(())
}

/// `local` and the runs of `remote` it does not have.
fn with_remote(mut local: Vec<RunRecord>, remote: &[RunRecord]) -> Vec<RunRecord> {
    let new: Vec<RunRecord> = remote
        .iter()
        .filter(|r| !local.iter().any(|l| l.job_name == r.job_name))
        .cloned()
        .collect();
    local.extend(new);
    local
}

/// A point another launch was preparing when this sweep planned it.
struct Elsewhere {
    plan: Plan,
    /// The jobs of its pins recorded then (not the one being prepared).
    before: Vec<String>,
}

impl Elsewhere {
    /// Whether `records` hold the run that launch was preparing.
    fn has_run(&self, records: &[RunRecord]) -> bool {
        records.iter().any(|r| {
            r.is_launch_of(self.plan.backend, &self.plan.pins) && !self.before.contains(&r.job_name)
        })
    }
}

/// The jobs of `sweep`'s points that launch whatever their pins turn out to
/// be: those with no SageMaker run of their bytes that completed or has not
/// ended (a failed or stopped one is launched again).
fn surely_launched<'a>(
    records: &[RunRecord],
    sweep: &'a sca_spec::SweepPlan,
) -> Vec<&'a sca_spec::ResolvedJob> {
    sweep
        .points
        .iter()
        .filter(|p| {
            let sha = sha256_hex(&p.bytes);
            !records.iter().any(|r| {
                r.backend == Backend::Sagemaker
                    && r.pins.experiment_sha256 == sha
                    && (r.status == Status::Completed || !r.status.is_terminal())
            })
        })
        .map(|p| &p.job)
        .collect()
}

/// A rerun of one of a sweep's points on SageMaker is one more launch of
/// the sweep: within the sweep's limit (its point's `job.max_cost_usd`)
/// with the sweep's runs on this machine, or refused.
pub fn check_rerun(root: &Path, plan: &Plan) -> Result<()> {
    let (Backend::Sagemaker, Some(sweep), Some(limit)) = (
        plan.backend,
        plan.sweep.as_deref(),
        plan.experiment.job.max_cost_usd,
    ) else {
        return Ok(());
    };
    budget(&RunRecord::all(root), sweep, &[&plan.resolved], limit).map_err(|over| {
        anyhow::anyhow!(
            "{} is a point of sweep `{sweep}`: {over} (counting the sweep's runs on this machine; a rerun keeps its point's file as launched, so a raised limit takes a new launch of the sweep); nothing was launched",
            plan.rerun_of.as_deref().unwrap_or(&plan.job_name)
        )
    })?;
    Ok(())
}

/// What sweep `name` may cost with the `launching` points, against its
/// `limit`, which holds over every invocation: each earlier SageMaker run of
/// the sweep at what it was billed (at its worst case while running or not
/// yet billed, at nothing when no job was created), plus the worst case of
/// each point to launch. The total, or why it is over the limit (or cannot
/// be priced). `launching` includes the points another invocation is
/// launching now (their records not yet written).
fn budget(
    records: &[RunRecord],
    name: &str,
    launching: &[&sca_spec::ResolvedJob],
    limit: f64,
) -> std::result::Result<f64, String> {
    let worst = |job: &sca_spec::ResolvedJob| {
        sca_spec::limited_worst_usd(limit, job).map_err(|e| e.to_string())
    };
    let (mut spent, mut earlier, mut unbilled) = (0.0, 0usize, 0usize);
    for r in records
        .iter()
        .filter(|r| r.backend == Backend::Sagemaker && r.sweep.as_deref() == Some(name))
    {
        if r.training_job_arn.is_none() && r.status.is_terminal() {
            continue; // never created: nothing billed
        }
        earlier += 1;
        spent += match r.cost.as_ref().and_then(|c| c.usd) {
            Some(usd) => usd,
            None => {
                unbilled += 1;
                worst(&r.resolved_job)?
            }
        };
    }
    let to_come = launching
        .iter()
        .map(|j| worst(j))
        .sum::<std::result::Result<f64, _>>()?;
    let total = spent + to_come;
    if sca_spec::within(total, limit) {
        return Ok(total);
    }
    let unbilled = match unbilled {
        0 => String::new(),
        n => format!(
            ", {n} of them not billed yet and counted at their worst case (`experiment status JOB` records what one was billed)"
        ),
    };
    Err(format!(
        "the sweep's {earlier} earlier SageMaker run(s) cost ${spent:.2}{unbilled}, and the {} point(s) launching now (here, or by a launch of the sweep running beside this one) could cost ${to_come:.2} more: ${total:.2} is above job.max_cost_usd = ${limit:.2}, which holds over every launch of the sweep. Raise it, or sweep fewer points",
        launching.len()
    ))
}

#[cfg(test)]
mod tests {
    /// The cap holds over the points already running: a sweep started
    /// again while 2 of its points run, with max_parallel = 3, launches one
    /// at a time; with 2 it launches none.
    #[test]
    fn points_running_count_against_max_parallel() {
        use super::slots;
        use crate::experiment::record::Backend::{Docker, Local, Sagemaker};
        assert_eq!(slots(Some(3), Sagemaker, 0, 10), Ok(3));
        assert_eq!(slots(Some(3), Sagemaker, 2, 10), Ok(1));
        let e = slots(Some(2), Sagemaker, 2, 10).unwrap_err();
        assert!(
            e.contains("2 of its points are running now") && e.contains("--max-parallel"),
            "{e}"
        );
        // Nothing left to launch: nothing to refuse.
        assert_eq!(slots(Some(2), Local, 2, 0), Ok(1));
        assert_eq!(slots(Some(0), Local, 0, 4), Ok(1));
        // No cap: all at once on SageMaker, one at a time here.
        assert_eq!(slots(None, Sagemaker, 5, 4), Ok(4));
        assert_eq!(slots(None, Docker, 0, 4), Ok(1));
    }

    use super::*;

    #[test]
    fn every_point_must_pin_the_first_points_code() {
        let code = |commit: &str, dirty: bool, diff: Option<&str>| {
            (commit.to_string(), dirty, diff.map(String::from))
        };
        let mut first = None;
        same_code(&mut first, code("a1", false, None), "p1").unwrap();
        same_code(&mut first, code("a1", false, None), "p2").unwrap();
        let e = same_code(&mut first, code("b2", false, None), "p3").unwrap_err();
        assert!(
            e.contains("point p3 pins commit b2, the first point a1"),
            "{e}"
        );
        let e = same_code(&mut first, code("a1", true, Some("d")), "p4").unwrap_err();
        assert!(e.contains("a1 with changes"), "{e}");
    }

    /// The limit holds over invocations: a sweep started again pays for
    /// what its failed points already cost.
    #[test]
    fn a_sweep_started_again_counts_what_its_runs_cost() {
        let job = |region: &str| {
            let mut r = RunRecord::for_tests("s-1a2b3c4d-0123456-20261126-120000");
            r.backend = Backend::Sagemaker;
            r.sweep = Some("s".into());
            r.resolved_job.region = region.into();
            r.resolved_job.max_runtime_secs = 3600;
            r
        };
        let point = job("us-west-2").resolved_job;
        let hourly = sca_spec::worst_case(&point).unwrap().worst_usd();
        // Two earlier runs: one billed half an hour, one still running (its
        // worst case); and one never created, which cost nothing.
        let mut billed = job("us-west-2");
        billed.training_job_arn = Some("arn:1".into());
        billed.status = Status::Failed;
        billed.cost = Some(record::Billed::new(&point, 1800, 1800));
        let mut running = job("us-west-2");
        running.training_job_arn = Some("arn:2".into());
        let mut refused = job("us-west-2");
        refused.status = Status::Failed;
        let mut elsewhere = billed.clone();
        elsewhere.sweep = Some("other".into());
        let records = [billed, running, refused, elsewhere];
        let total = budget(&records, "s", &[&point], 10.0 * hourly).unwrap();
        assert!((total - 2.5 * hourly).abs() < 1e-9, "{total}");
        let e = budget(&records, "s", &[&point, &point], 3.0 * hourly).unwrap_err();
        assert!(
            e.contains("2 earlier SageMaker run(s)") && e.contains("1 of them not billed yet"),
            "{e}"
        );
        // A point where no price is known cannot be checked.
        let unpriced = job("mars-north-1").resolved_job;
        assert!(budget(&[], "s", &[&unpriced], 1e9)
            .unwrap_err()
            .contains("no price"));
    }

    /// Before the image is built, only points with no completed or running
    /// SageMaker run of their bytes are sure to launch.
    #[test]
    fn points_without_a_live_or_completed_run_are_sure_to_launch() {
        let defaults = crate::workspace::defaults().unwrap();
        let text = "[experiment]\nname = \"s\"\n[dataset]\nimagery = \"s3://bkt/i\"\nmasks = \"s3://bkt/m\"\nimagery_regex = \"_AnalyticMS$\"\nmask_regex = \"_binary$\"\n[[channels]]\nbands = [1, 2, 3, 4]\nmean = [0.3, 0.3, 0.3, 0.3]\nstd = [0.1, 0.1, 0.1, 0.1]\n[[classes]]\nname = \"snow\"\ncolor = \"white\"\n[sweep]\ngrid = { \"train.learning_rate\" = [0.01, 0.02, 0.03, 0.04] }\n";
        let sweep = sca_spec::expand("s.toml", text.as_bytes(), &defaults)
            .unwrap_or_else(|r| panic!("{:?}", r.diagnostics));
        let sha = |i: usize| sha256_hex(&sweep.points[i].bytes);
        let run = |i: usize, backend: Backend, status: Status| {
            let mut r = RunRecord::for_tests("s-0-0123456-20261207-120000");
            r.pins.experiment_sha256 = sha(i);
            r.backend = backend;
            r.status = status;
            r
        };
        let records = [
            run(0, Backend::Sagemaker, Status::Completed),
            run(1, Backend::Sagemaker, Status::InProgress),
            run(2, Backend::Sagemaker, Status::Failed),
            run(3, Backend::Local, Status::Completed),
        ];
        let sure = surely_launched(&records, &sweep);
        assert_eq!(sure.len(), 2);
        assert!(std::ptr::eq(sure[0], &sweep.points[2].job));
        assert!(std::ptr::eq(sure[1], &sweep.points[3].job));
    }

    /// A training objective is read from the record where SageMaker's
    /// final metrics have it and no artifacts are here; from the artifacts
    /// where they are, whose NaN (`null`) is no objective, never the last
    /// finite value the record's log regex kept.
    #[test]
    fn a_train_objective_is_read_from_the_artifacts_else_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = RunRecord::for_tests("exp-0123456-20261126-120000");
        r.final_metrics = serde_json::json!({"train:loss": 0.25, "val:iou": 0.5});
        let value = |r: &RunRecord, m| objective_value(dir.path(), r, m);
        assert_eq!(value(&r, sca_spec::Metric::TrainLoss), Some(0.25));
        assert_eq!(value(&r, sca_spec::Metric::ValIou), Some(0.5));
        assert_eq!(value(&r, sca_spec::Metric::TrainIou), None);
        let model = r.model_dir(dir.path());
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("metrics.csv"), "epoch,split,loss\n").unwrap();
        std::fs::write(
            model.join("metrics.json"),
            r#"[{"split":"train","epoch":1,"loss":0.5},{"split":"train","epoch":2,"loss":null}]"#,
        )
        .unwrap();
        assert_eq!(value(&r, sca_spec::Metric::TrainLoss), None);
        r.final_metrics = serde_json::json!({});
        std::fs::write(
            model.join("metrics.json"),
            r#"[{"split":"train","epoch":1,"loss":0.5}]"#,
        )
        .unwrap();
        assert_eq!(value(&r, sca_spec::Metric::TrainLoss), Some(0.5));
    }

    /// A point's row shows a run of the sweep file as it is now, on the
    /// sweep's backend: not the completed run of an earlier version of the
    /// file (same point name, other bytes) nor one on another backend.
    #[test]
    fn a_point_shows_only_runs_of_its_current_bytes_on_the_sweeps_backend() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let run = |job: &str, sha: &str, backend: Backend, status: Status, started: &str| {
            let mut r = RunRecord::for_tests(job);
            r.experiment = "s-1a2b3c4d".into();
            r.pins.experiment_sha256 = sha.into();
            r.backend = backend;
            r.status = status;
            r.started = started.into();
            r.save(root).unwrap();
        };
        run(
            "old",
            "a1",
            Backend::Local,
            Status::Completed,
            "2026-01-01T00:00:01Z",
        );
        run(
            "new",
            "a2",
            Backend::Local,
            Status::Failed,
            "2026-01-01T00:00:02Z",
        );
        run(
            "other",
            "a2",
            Backend::Docker,
            Status::Completed,
            "2026-01-01T00:00:03Z",
        );
        let sweep = |sha: Option<&str>| SweepRecord {
            sweep: "s".into(),
            file: "s.toml".into(),
            sha256: "0".into(),
            backend: Backend::Local,
            objective: None,
            updated: record::now(),
            points: vec![PointEntry {
                name: "s-1a2b3c4d".into(),
                values: BTreeMap::new(),
                experiment_sha256: sha.map(str::to_string),
                data_manifest_sha256: None,
            }],
            commit: None,
            diff_sha256: None,
            image_digest: None,
        };
        let rows = points_table(root, &sweep(Some("a2")));
        assert_eq!(rows[0].job.as_deref(), Some("new"));
        assert_eq!(rows[0].status, Some(Status::Failed));
        let rows = points_table(root, &sweep(Some("a3")));
        assert_eq!(rows[0].job, None);
        // A sweep record from before the hash was kept: any version.
        let rows = points_table(root, &sweep(None));
        assert_eq!(rows[0].job.as_deref(), Some("old"));

        // A completed run read in the config bucket, not copied here, is
        // the point's run where the sweep has it.
        let mut there = RunRecord::for_tests("there");
        there.experiment = "s-1a2b3c4d".into();
        there.pins.experiment_sha256 = "a2".into();
        there.status = Status::Completed;
        there.started = "2026-01-01T00:00:00Z".into();
        let rows = points_table_with(root, &sweep(Some("a2")), &[there]);
        assert_eq!(rows[0].job.as_deref(), Some("there"));
        assert_eq!(rows[0].status, Some(Status::Completed));

        // A newer completed run of the same bytes at another commit is not
        // the result of a sweep pinned to this one (its run failed).
        let mut moved = RunRecord::for_tests("moved");
        moved.experiment = "s-1a2b3c4d".into();
        moved.pins.experiment_sha256 = "a2".into();
        moved.pins.commit = "f".repeat(40);
        moved.status = Status::Completed;
        moved.started = "2026-01-01T00:00:04Z".into();
        moved.save(root).unwrap();
        let pinned = SweepRecord {
            commit: Some(RunRecord::for_tests("x").pins.commit),
            ..sweep(Some("a2"))
        };
        let rows = points_table(root, &pinned);
        assert_eq!(rows[0].job.as_deref(), Some("new"));
        assert_eq!(rows[0].status, Some(Status::Failed));
        // A sweep record from before the commit was kept: any commit's.
        let rows = points_table(root, &sweep(Some("a2")));
        assert_eq!(rows[0].job.as_deref(), Some("moved"));

        // A completed run on earlier data is not the result of a point the
        // sweep last planned on today's: the newer failed run on today's is.
        let mut today = pinned.clone();
        today.points[0].data_manifest_sha256 = Some("e2".repeat(32));
        let rows = points_table(root, &today);
        assert_eq!(rows[0].job, None, "no run pins today's manifest yet");
        let mut retried = RunRecord::for_tests("retried");
        retried.experiment = "s-1a2b3c4d".into();
        retried.pins.experiment_sha256 = "a2".into();
        retried.pins.data_manifest_sha256 = Some("e2".repeat(32));
        retried.status = Status::Failed;
        retried.started = "2026-01-01T00:00:05Z".into();
        retried.save(root).unwrap();
        let rows = points_table(root, &today);
        assert_eq!(rows[0].job.as_deref(), Some("retried"));
        assert_eq!(rows[0].objective, None);

        // `report --sweep` shows exactly the runs the table chooses from:
        // not the earlier version's, another backend's or commit's.
        let shown: Vec<String> = RunRecord::all(root)
            .into_iter()
            .filter(|r| pinned.has_run(r) && r.job_name != "retried")
            .map(|r| r.job_name)
            .collect();
        assert_eq!(shown, ["new"]);

        // A sweep run in another image (`--image`, same commit) relaunched
        // every point: a completed run in the earlier image is not the
        // result of a point whose run in this one failed.
        let digest = |d: char| format!("sha256:{}", d.to_string().repeat(64));
        let in_image = |job: &str, d: char, status: Status, started: &str| {
            let mut r = RunRecord::for_tests(job);
            r.experiment = "s-1a2b3c4d".into();
            r.pins.experiment_sha256 = "a2".into();
            r.pins.image = Some(ImageRef::engine_id(&digest(d)).unwrap());
            r.backend = Backend::Docker;
            r.status = status;
            r.started = started.into();
            r.save(root).unwrap();
        };
        in_image("in-i1", 'a', Status::Completed, "2026-01-01T00:00:06Z");
        in_image("in-i2", 'b', Status::Failed, "2026-01-01T00:00:07Z");
        let docker = |image: Option<char>| SweepRecord {
            backend: Backend::Docker,
            image_digest: image.map(digest),
            ..pinned.clone()
        };
        let rows = points_table(root, &docker(Some('b')));
        assert_eq!(rows[0].job.as_deref(), Some("in-i2"));
        assert_eq!(rows[0].status, Some(Status::Failed));
        // A sweep record from before the image was kept: any image's.
        let rows = points_table(root, &docker(None));
        assert_eq!(rows[0].job.as_deref(), Some("in-i1"));
    }
}
