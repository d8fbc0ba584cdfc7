//! A launch's claim of its pins in the config bucket, which every machine
//! launching into that bucket sees: two machines launching one experiment
//! with the same pins (a shared `--image`, CI and a colleague) in the same
//! minutes, before either has a record there, would otherwise both run it.
//!
//! The claim is a lease, an object `claims/<backend>-<key>.json` beside the
//! runs: created with `If-None-Match: *`, renewed every [`Timing::renew`]
//! with `If-Match` its last ETag, deleted (`If-Match`) once the job's record
//! is in the bucket. Just before its `CreateTrainingJob` the launch renews
//! it once more, naming the job, and goes ahead only if that renewal took:
//! a lease another launch took over is never launched under. One not
//! renewed for [`Timing::lease`] (its launcher was killed, or its machine
//! lost) is taken over with `If-Match` the ETag it was seen with, so of two
//! takers one wins; so is one whose holder ran on this machine (same host,
//! boot and pid namespace) and is proved gone. A lease that names a job is
//! taken over only once SageMaker says that job is not running or done, so
//! a job created without a record in the bucket (its launcher killed, its
//! answer or the record's put lost) is not launched twice; the `status`
//! that records such a job there lets its lease go ([`let_go_recorded`]).
//!
//! A lease taken over that named a job SageMaker does not have passes that
//! name on: its taker creates its job under it ([`RemoteClaim::inherited`];
//! only a taker launching in the job's region, the others are refused).
//! The former holder's create may still be on its way (its machine
//! suspended, its request delayed past the lease); under one name SageMaker
//! creates only one of the two. The taker's lease names the job from the
//! take, so it is kept, not deleted, when that launch fails before its
//! record is in the bucket: the next taker inherits the name in turn.
//!
//! A lease's age is read on S3's clock (the answer's `Date` less the
//! object's `Last-Modified`), so no machine's clock decides; the holder's
//! `renewed` is shown, and used only where S3 gives no date. Its term is
//! the one its holder wrote in it (`lease_secs`), so machines renewing on
//! other terms agree on when it lapses.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::experiment::backend::{Inherited, RemoteClaim, RemoteClaimed};
use crate::experiment::sagemaker::client::{find_job, get_object, Clients, Object};

/// How long a lease lasts unrenewed, and how often its holder renews it.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease: Duration,
    pub renew: Duration,
}

impl Timing {
    /// Five minutes, renewed every minute: a holder misses four renewals
    /// (a network outage, a suspended laptop) before it can lose it.
    pub const DEFAULT: Timing = Timing {
        lease: Duration::from_secs(300),
        renew: Duration::from_secs(60),
    };
}

/// What a lease object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Body {
    /// `xtask pid N on HOST since T`, as a refused launch reports it.
    holder: String,
    host: String,
    /// The holder's kernel boot (`/proc/sys/kernel/random/boot_id`) and
    /// process start (clock ticks since boot): with `host` and `pid_ns`,
    /// they tell a holder on this machine that is gone from a live one,
    /// across pid reuse.
    boot_id: String,
    pid: u32,
    pid_start: Option<u64>,
    /// The holder's pid namespace (`/proc/self/ns/pid`): containers on one
    /// kernel share `host` (with host networking) and `boot_id`, not pids.
    #[serde(default)]
    pid_ns: String,
    /// When it was last renewed, RFC 3339, by the holder's clock.
    renewed: String,
    /// The take it was put by (a fresh id each): a put whose answer was
    /// lost is known for this launch's own by it.
    #[serde(default)]
    take_id: String,
    /// The training job its holder creates, from just before its
    /// `CreateTrainingJob`, and the region it is created in.
    #[serde(default)]
    job: Option<String>,
    #[serde(default)]
    region: String,
    /// How long it lasts unrenewed, in seconds, as its holder renews it
    /// (absent in one written by hand or by an older launcher: the
    /// taker's term).
    #[serde(default)]
    lease_secs: Option<u64>,
    /// Where the take took over a lease that passed on its `job`'s name:
    /// that lease's holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    passed_on_by: Option<String>,
}

/// The longest term a lease is believed to have: one that says more (a
/// hand-edited lease) lapses after this.
const LONGEST_TERM: Duration = Duration::from_secs(3600);

impl Body {
    fn mine(taken: &Taken, region: &str, job: Option<String>) -> Body {
        let pid = std::process::id();
        let host = this_host();
        Body {
            holder: format!("xtask pid {pid} on {host} since {}", taken.at),
            take_id: taken.id.clone(),
            host,
            boot_id: boot_id(),
            pid,
            pid_start: crate::procfs::start_time(pid),
            pid_ns: pid_ns(),
            renewed: crate::experiment::record::now(),
            job,
            region: region.to_string(),
            lease_secs: Some(taken.term.as_secs_f64().ceil().max(1.0) as u64),
            passed_on_by: None,
        }
    }

    /// The lease in `bytes`, if the take `id` put it.
    fn of_take(bytes: &[u8], id: &str) -> Option<Body> {
        serde_json::from_slice::<Body>(bytes)
            .ok()
            .filter(|b| !b.take_id.is_empty() && b.take_id == id)
    }

    /// Whether `bytes` are a lease this take put (whatever job it names):
    /// one whose put's answer was lost, which the SDK's retry then found
    /// taken.
    fn same_take(&self, bytes: &[u8]) -> bool {
        Body::of_take(bytes, &self.take_id).is_some()
    }

    /// Whether `bytes` are a lease (any launch's) that names `job`.
    fn names(bytes: &[u8], job: &str) -> bool {
        serde_json::from_slice::<Body>(bytes).is_ok_and(|b| b.job.as_deref() == Some(job))
    }

    /// [`Body::same_take`], naming the same job.
    fn same_launch(&self, bytes: &[u8]) -> bool {
        Body::of_take(bytes, &self.take_id).is_some_and(|b| b.job == self.job)
    }

    /// Whether it was renewed within its term (its holder's, else
    /// `timing`'s): by S3's clock where the lease's `age` is known, else by
    /// the holder's clock against `now` (a clock ahead of this one counts
    /// as fresh).
    fn fresh(&self, age: Option<Duration>, now: SystemTime, timing: Timing) -> bool {
        let term = self
            .lease_secs
            .map_or(timing.lease, |s| Duration::from_secs(s).min(LONGEST_TERM));
        match age {
            Some(age) => age < term,
            None => humantime::parse_rfc3339(&self.renewed)
                .is_ok_and(|renewed| now.duration_since(renewed).map_or(true, |age| age < term)),
        }
    }

    /// Whether its holder ran on this machine (same host, boot and pid
    /// namespace) and is gone. Gone only on proof: its pid names a process
    /// started at another time, or none at all (a process `/proc` hides is
    /// alive). A holder that could not read its own start time cannot be
    /// told from a process that reused its pid: not gone.
    fn gone_here(&self) -> bool {
        let here = self.host == this_host()
            && self.boot_id == boot_id()
            && !self.pid_ns.is_empty()
            && self.pid_ns == pid_ns();
        here && self
            .pid_start
            .is_some_and(|t| match crate::procfs::start_time(self.pid) {
                Some(now) => now != t,
                None => {
                    use nix::sys::signal::kill;
                    use nix::unistd::Pid;
                    kill(Pid::from_raw(self.pid as i32), None) == Err(nix::errno::Errno::ESRCH)
                }
            })
    }
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|b| b.trim().to_string())
        .unwrap_or_default()
}

fn pid_ns() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|l| l.display().to_string())
        .unwrap_or_default()
}

/// When, by which take and for what term, a lease was taken.
#[derive(Debug, Clone)]
struct Taken {
    /// RFC 3339, as its holder line says.
    at: String,
    id: String,
    /// How long it lasts unrenewed ([`Timing::lease`]), written in it.
    term: Duration,
}

/// What the holder and its renewer share, locked across each put (so a
/// renewal and a `confirm_for` never put over each other).
#[derive(Debug, Default)]
struct Held {
    /// The ETag of the lease as last put; `None` once let go, or lost.
    etag: Option<String>,
    /// The job it names: from the take where it passed on a job's name,
    /// else once the launch is about to create it.
    job: Option<String>,
    /// The holder of the lease that passed that name on.
    passed_on_by: Option<String>,
    /// Why it was lost, if another launch took it over.
    lost: Option<String>,
}

type Shared = Arc<tokio::sync::Mutex<Held>>;

/// A lease this launch holds: renewed in the background until let go.
#[derive(Debug)]
pub struct Lease {
    s3: aws_sdk_s3::Client,
    place: Place,
    taken: Taken,
    region: String,
    held: Shared,
    renewer: tokio::task::JoinHandle<()>,
    let_go: bool,
    /// The job name passed on by the lease it took over, if any.
    inherited: Option<Inherited>,
}

/// Where a lease is.
#[derive(Debug, Clone)]
struct Place {
    bucket: String,
    key: String,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// The key of the lease of launch key `launch_key` on backend `backend`.
pub fn key(backend: &str, launch_key: &str) -> String {
    format!(
        "claims/{backend}-{}.json",
        &launch_key[..32.min(launch_key.len())]
    )
}

/// The lease at `place`, if there is one.
async fn read(s3: &aws_sdk_s3::Client, place: &Place) -> Result<Option<Object>> {
    get_object(s3, &place.bucket, &place.key).await
}

/// What a look at a lease another launch put found.
enum Look {
    /// It holds: by whom, and where.
    Held(String),
    /// It can be taken over; passing on the name of the job its holder was
    /// about to create in this launch's region, which SageMaker does not
    /// have (yet).
    Lapsed(Option<Inherited>),
}

/// Whether a lease another launch put holds, for a launch in `ours` (its
/// region). `aws`: to ask SageMaker of a job it names, where it was created.
async fn look_at(
    body: &Body,
    age: Option<Duration>,
    place: &Place,
    (clients, aws): (&Clients, &crate::aws::Session),
    ours: &str,
    timing: Timing,
) -> Look {
    let fresh = body.fresh(age, SystemTime::now(), timing);
    if fresh && !body.gone_here() {
        return Look::Held(format!(
            "{}, its claim {place} renewed {}",
            body.holder, body.renewed
        ));
    }
    // Lapsed, or its holder is gone: taken over, unless the job it was
    // creating runs (or ran, unrecorded) on SageMaker.
    let Some(job) = body.job.as_deref() else {
        return Look::Lapsed(None);
    };
    let region = &body.region;
    // A job and region are shown in commands to copy: only SageMaker's
    // characters (a lease edited by hand may hold anything).
    let plain = |s: &str| s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if job.is_empty() || !plain(job) || !plain(region) {
        return Look::Held(format!(
            "a claim {place} that names {job:?} in {region:?}, not a training job and region: delete it if no launch holds it"
        ));
    }
    // Asked where the job was created, whatever `--region` this launch has.
    let asked = match region.is_empty() {
        true => find_job(&clients.sagemaker, job).await,
        false => match aws.config(Some(region)).await {
            Ok(config) => {
                let there = aws_sdk_sagemaker::config::Builder::from(&config)
                    .region(aws_sdk_sagemaker::config::Region::new(region.clone()))
                    .build();
                find_job(&aws_sdk_sagemaker::Client::from_conf(there), job).await
            }
            Err(e) => Err(e),
        },
    };
    let look = format!(
        "`aws sagemaker describe-training-job --training-job-name {job}{}` shows it",
        match region.is_empty() {
            true => String::new(),
            false => format!(" --region {region}"),
        }
    );
    // (A holder that took over a lease naming the job names who named it.)
    let by = &match &body.passed_on_by {
        Some(from) => format!("{} (which took over the claim of {from})", body.holder),
        None => body.holder.clone(),
    };
    let held = match asked {
        Ok(Some(state)) => match state.status {
            // (Its name is that job's now: nothing is passed on.)
            Some(s) if s.is_terminal() && s != crate::experiment::record::Status::Completed => {
                return Look::Lapsed(None)
            }
            Some(crate::experiment::record::Status::Completed) => format!(
                "{by}, which created training job `{job}`: it completed and has no record in the config bucket ({look}; `cargo xtask experiment status {job}` records it on the machine that launched it, where that launch saved its record; a launch killed while creating the job saved none: then delete {place} to launch these pins again, which trains them a second time)"
            ),
            _ => format!(
                "{by}, which created training job `{job}` and has not recorded it in the config bucket: it runs these pins ({look}; its claim {place})"
            ),
        },
        // Not listed (yet: a listing lags a create by seconds): a lease
        // that lapsed by the clock has not got its job, though its create
        // may still come (a suspended machine): its taker creates the job
        // under this name, so that SageMaker creates one of the two. A
        // launch in another region cannot (names are per region): it is
        // refused, as is every launch where the lease names no region (by
        // hand): not listed here, the job may be created elsewhere.
        Ok(None) if !fresh && region == ours => {
            // (Named by whoever named the job first, not by each taker.)
            return Look::Lapsed(Some(Inherited {
                job: job.to_string(),
                from: body.passed_on_by.clone().unwrap_or_else(|| body.holder.clone()),
            }));
        }
        Ok(None) if !fresh && region.is_empty() => format!(
            "{by}, which was creating training job `{job}` in a region its claim {place} does not name, and let the claim lapse; SageMaker here ({ours}) does not list the job, but its create may still come elsewhere: delete the claim if that launch is gone for good"
        ),
        Ok(None) if !fresh => format!(
            "{by}, which was creating training job `{job}` in {region} and let its claim {place} lapse; SageMaker does not list the job, but its create may still come: launch these pins in {region} (`--region {region}`), which takes the claim over and creates the job under its name, or delete the claim if that launch is gone for good"
        ),
        Ok(None) => format!(
            "{by}, which was creating training job `{job}` (SageMaker does not list it yet; its claim {place}): try again in a few minutes"
        ),
        Err(e) => format!(
            "{by}, which may have created training job `{job}` (SageMaker could not say: {e:#}; {look}; delete {place} if it is not running)"
        ),
    };
    Look::Held(held)
}

/// Let go of a lease kept for `record`'s job ([`RemoteClaim::keep_for`])
/// once its record is in the config bucket, where the record decides:
/// deleted if it names that job (`If-Match` the ETag it was read with),
/// else left. Best effort: one left is clutter, which a launch's twin
/// check outranks.
pub async fn let_go_recorded(clients: &Clients, record: &crate::experiment::record::RunRecord) {
    let Some(launch_key) = record.pins.launch_key() else {
        return;
    };
    let Ok((bucket, _)) = crate::experiment::sagemaker::client::split_s3(&record.config_uri) else {
        return;
    };
    let place = Place {
        bucket: bucket.to_string(),
        key: key(&record.backend.to_string(), &launch_key),
    };
    let Ok(Some(seen)) = read(&clients.s3, &place).await else {
        return;
    };
    let names_it = Body::names(&seen.bytes, &record.job_name);
    if let (true, Some(etag)) = (names_it, seen.etag) {
        let _ = delete(&clients.s3, &place, etag).await;
    }
}

/// Take the lease at `key` in `bucket` for a launch in `region`, or say
/// who holds it. `peek` (a dry run) writes nothing, and a lease it could
/// take is `Free`.
#[allow(clippy::too_many_arguments)]
pub async fn take(
    aws: &crate::aws::Session,
    clients: &Clients,
    bucket: &str,
    key: &str,
    region: &str,
    peek: bool,
    timing: Timing,
) -> Result<RemoteClaimed> {
    let place = Place {
        bucket: bucket.to_string(),
        key: key.to_string(),
    };
    let taken = Taken {
        at: crate::experiment::record::now(),
        id: uuid::Uuid::new_v4().simple().to_string(),
        term: timing.lease,
    };
    // This take's own put, whose answer was lost (with the name it passed
    // on, if it took over one that did), is held.
    let own = |seen: &Object| -> Option<(Option<String>, Option<Inherited>)> {
        let etag = seen.etag.clone()?;
        let body = Body::of_take(&seen.bytes, &taken.id)?;
        let inherited = match (body.job, body.passed_on_by) {
            (Some(job), Some(from)) => Some(Inherited { job, from }),
            _ => None,
        };
        Some((Some(etag), inherited))
    };
    // Held, as put with an ETag, passing on a name or not.
    let held = |(etag, inherited)| {
        RemoteClaimed::Held(hold(
            clients,
            &place,
            (&taken, region),
            etag,
            inherited,
            timing,
        ))
    };
    const TRIES: u32 = 5;
    for attempt in 0..TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << (attempt - 1))).await;
        }
        let (condition, inherited) = match read(&clients.s3, &place).await? {
            None => (None, None),
            Some(seen) if !peek && own(&seen).is_some() => {
                return Ok(held(own(&seen).expect("checked")));
            }
            Some(seen) => {
                // An unreadable object (not a lease body) holds nothing.
                let inherited = match serde_json::from_slice::<Body>(&seen.bytes) {
                    Ok(body) => {
                        match look_at(&body, seen.age, &place, (clients, aws), region, timing).await
                        {
                            Look::Held(by) => return Ok(RemoteClaimed::By(by)),
                            Look::Lapsed(inherited) => inherited,
                        }
                    }
                    Err(_) => None,
                };
                // Without an ETag it cannot be taken over safely.
                let Some(etag) = seen.etag else {
                    bail!("{place} answered without an ETag: the lease cannot be taken over; delete it if no launch holds it");
                };
                (Some(etag), inherited)
            }
        };
        if peek {
            return Ok(RemoteClaimed::Free);
        }
        let mine = Body {
            passed_on_by: inherited.as_ref().map(|i| i.from.clone()),
            ..Body::mine(&taken, region, inherited.as_ref().map(|i| i.job.clone()))
        };
        if let Some(etag) = put(&clients.s3, &place, &mine, condition.as_deref()).await? {
            return Ok(held((Some(etag), inherited)));
        }
        // Another launch put first: looked at again.
    }
    // The last put's answer may have been lost: this take's own, then.
    if let Some(own) = read(&clients.s3, &place).await?.as_ref().and_then(own) {
        return Ok(held(own));
    }
    // Other launches keep taking it: one of them holds it.
    Ok(RemoteClaimed::By(format!(
        "another launch, which changed its claim {place} under each of {TRIES} tries"
    )))
}

/// The lease at `place`, put with `etag` as `taken` for a launch in
/// `region`, naming the job `inherited` passes on: held, its renewer
/// started.
fn hold(
    clients: &Clients,
    place: &Place,
    (taken, region): (&Taken, &str),
    etag: Option<String>,
    inherited: Option<Inherited>,
    timing: Timing,
) -> Box<Lease> {
    let held = Arc::new(tokio::sync::Mutex::new(Held {
        etag,
        job: inherited.as_ref().map(|i| i.job.clone()),
        passed_on_by: inherited.as_ref().map(|i| i.from.clone()),
        ..Held::default()
    }));
    let renewer = tokio::spawn(renew(
        clients.s3.clone(),
        place.clone(),
        (taken.clone(), region.to_string()),
        held.clone(),
        timing,
    ));
    Box::new(Lease {
        s3: clients.s3.clone(),
        place: place.clone(),
        taken: taken.clone(),
        region: region.to_string(),
        held,
        renewer,
        let_go: false,
        inherited,
    })
}

/// Put `body` at `place`: created (`condition` none: `If-None-Match: *`) or
/// replacing the ETag `condition`. Its new ETag; `None` where the condition
/// failed (412: another put came first, or this one's own, its answer lost
/// and the SDK's retry refused; 404: the lease was deleted). A 409 (another
/// put in flight) is tried again: only a put that took counts.
async fn put(
    s3: &aws_sdk_s3::Client,
    place: &Place,
    body: &Body,
    condition: Option<&str>,
) -> Result<Option<String>> {
    let bytes = serde_json::to_vec_pretty(body).expect("a lease serializes");
    const TRIES: u32 = 5;
    for attempt in 0..TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << (attempt - 1))).await;
        }
        let put = s3
            .put_object()
            .bucket(&place.bucket)
            .key(&place.key)
            .body(bytes.clone().into())
            .content_type("application/json");
        let put = match condition {
            Some(etag) => put.if_match(etag),
            None => put.if_none_match("*"),
        };
        match put.send().await {
            Ok(out) => {
                return match out.e_tag() {
                    Some(etag) => Ok(Some(etag.to_string())),
                    None => {
                        bail!("{place} answered a put without an ETag: the lease cannot be renewed")
                    }
                }
            }
            Err(e) => match e.raw_response().map(|r| r.status().as_u16()) {
                // (404: an `If-Match` on a lease someone deleted.)
                Some(412 | 404) => return Ok(None),
                Some(409) => {}
                _ => bail!("putting the claim {place}: {}", crate::aws::error_chain(&e)),
            },
        }
    }
    bail!("putting the claim {place}: another put was in flight under each of {TRIES} tries")
}

/// Renew `held` (its ETag, naming its job) once. `Err` where it is no
/// longer this launch's: let go, deleted, or taken over by another launch.
async fn renew_once(
    s3: &aws_sdk_s3::Client,
    place: &Place,
    (taken, region): (&Taken, &str),
    held: &mut Held,
) -> Result<std::result::Result<(), String>> {
    let Some(mut current) = held.etag.clone() else {
        return Ok(Err(held
            .lost
            .clone()
            .unwrap_or_else(|| format!("its claim {place} was let go"))));
    };
    let body = Body {
        passed_on_by: held.passed_on_by.clone(),
        ..Body::mine(taken, region, held.job.clone())
    };
    // (Twice at most: once more after finding this take's own put, whose
    // answer was lost, where it named another job.)
    for _ in 0..2 {
        if let Some(new) = put(s3, place, &body, Some(&current)).await? {
            held.etag = Some(new);
            return Ok(Ok(()));
        }
        // The condition failed: another launch's put replaced it, or this
        // take's own did (its answer lost, the SDK's retry refused).
        let why = match read(s3, place).await? {
            Some(seen) if body.same_take(&seen.bytes) && seen.etag.is_some() => {
                current = seen.etag.clone().expect("checked");
                held.etag = seen.etag;
                if body.same_launch(&seen.bytes) {
                    return Ok(Ok(()));
                }
                continue;
            }
            None => format!("its claim {place} was deleted"),
            Some(_) => format!(
                "its claim {place} was taken over by another launch after this one could not renew it"
            ),
        };
        held.etag = None;
        held.lost = Some(why.clone());
        return Ok(Err(why));
    }
    bail!("{place} changed under each renewal of this launch's own")
}

/// Renew the lease every `timing.renew` until it is let go or lost (a
/// warning); a renewal that fails is tried again at the next turn.
async fn renew(
    s3: aws_sdk_s3::Client,
    place: Place,
    (taken, region): (Taken, String),
    held: Shared,
    timing: Timing,
) {
    loop {
        tokio::time::sleep(timing.renew).await;
        let mut held = held.lock().await;
        if held.etag.is_none() {
            return;
        }
        match renew_once(&s3, &place, (&taken, &region), &mut held).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                errln!("warning: {why}: a launch elsewhere may run these pins");
                return;
            }
            Err(e) => errln!("warning: renewing the claim: {e:#}; trying again"),
        }
    }
}

/// How a lease is let go.
enum LetGo {
    /// Deleted, unless another launch has taken it over.
    Release,
    /// Deleted, the job it names being recorded in the bucket: so is
    /// another launch's that took it over and names that job (one that
    /// inherited the name, and found the job created after all).
    Recorded,
    /// Left, unrenewed, naming this job (see [`RemoteClaim::keep_for`]).
    Keep(String),
}

impl Lease {
    /// Let go of it: the renewer stopped, then `how`. (A drop so waits for
    /// `how`'s requests.)
    fn let_go(&mut self, how: LetGo) -> BoxFuture<'static, ()> {
        self.let_go = true;
        // Stopped at once, even mid-put: a put that landed unseen leaves
        // this take's own lease, which the release below recognises.
        self.renewer.abort();
        let (s3, place) = (self.s3.clone(), self.place.clone());
        let (taken, region) = (self.taken.clone(), self.region.clone());
        let held = self.held.clone();
        Box::pin(async move {
            let mut held = held.lock().await;
            let done = match how {
                LetGo::Release | LetGo::Recorded => {
                    let recorded = match how {
                        LetGo::Recorded => held.job.clone(),
                        _ => None,
                    };
                    let first = match held.etag.take() {
                        Some(etag) => delete(&s3, &place, etag).await,
                        // Lost: another launch's now, looked at below.
                        None if recorded.is_some() => Err((Some(412), String::new())),
                        None => return,
                    };
                    let mine = Body::mine(&taken, &region, None);
                    let names_recorded = |bytes: &[u8]| {
                        recorded
                            .as_deref()
                            .is_some_and(|job| Body::names(bytes, job))
                    };
                    // Replaced: by another launch (not ours to delete, unless
                    // it names this recorded job: looked at again while it
                    // renews under the delete), or by this take's own put,
                    // its answer lost.
                    let mut done = first;
                    for _ in 0..3 {
                        let Err((Some(412), _)) = done else { break };
                        done = match read(&s3, &place).await {
                            Ok(Some(seen))
                                if mine.same_take(&seen.bytes) || names_recorded(&seen.bytes) =>
                            {
                                match seen.etag {
                                    Some(etag) => delete(&s3, &place, etag).await,
                                    None => Ok(()),
                                }
                            }
                            _ => Ok(()),
                        };
                    }
                    done
                }
                // Named already (just before the create): left as it is.
                LetGo::Keep(job) if held.job.as_deref() == Some(&job) => Ok(()),
                LetGo::Keep(job) => {
                    held.job = Some(job);
                    match renew_once(&s3, &place, (&taken, &region), &mut held).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(why)) => Err((None, why)),
                        Err(e) => Err((None, format!("{e:#}"))),
                    }
                }
            };
            held.etag = None;
            match done {
                // 412: taken over; 404: gone. Neither is ours to delete.
                Ok(()) | Err((Some(412 | 404), _)) => {}
                Err((_, e)) => errln!("warning: letting go of the claim {place}: {e}"),
            }
        })
    }
}

/// Delete the lease at `place` if its ETag is still `etag`; the status and
/// words of a failure.
async fn delete(
    s3: &aws_sdk_s3::Client,
    place: &Place,
    etag: String,
) -> std::result::Result<(), (Option<u16>, String)> {
    s3.delete_object()
        .bucket(&place.bucket)
        .key(&place.key)
        .if_match(etag)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| {
            (
                e.raw_response().map(|r| r.status().as_u16()),
                crate::aws::error_chain(&e),
            )
        })
}

impl Lease {
    /// How it is let go where its launch returns without a record in the
    /// bucket: deleted, unless it passed on a job's name, which the former
    /// holder may yet create: kept naming it, for the next taker.
    fn unrecorded(&self) -> LetGo {
        match &self.inherited {
            Some(i) => LetGo::Keep(i.job.clone()),
            None => LetGo::Release,
        }
    }
}

impl RemoteClaim for Lease {
    fn release(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        let how = self.unrecorded();
        self.let_go(how)
    }

    fn recorded(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        self.let_go(LetGo::Recorded)
    }

    fn inherited(&self) -> Option<&Inherited> {
        self.inherited.as_ref()
    }

    fn keep_for(mut self: Box<Self>, job: String) -> BoxFuture<'static, ()> {
        self.let_go(LetGo::Keep(job))
    }

    fn confirm_for(&self, job: String) -> BoxFuture<'_, std::result::Result<(), String>> {
        Box::pin(async move {
            let mut held = self.held.lock().await;
            held.job = Some(job);
            match renew_once(
                &self.s3,
                &self.place,
                (&self.taken, &self.region),
                &mut held,
            )
            .await
            {
                Ok(done) => done,
                Err(e) => Err(format!("its claim cannot be renewed: {e:#}")),
            }
        })
    }
}

impl Drop for Lease {
    /// A lease dropped without being let go (an error, `?`) is released
    /// here (see [`RemoteClaim::release`]): on a multi-threaded runtime at
    /// once, else by a task of the runtime (which may not run before the
    /// process exits; the lease then lapses).
    fn drop(&mut self) {
        if self.let_go {
            return;
        }
        let how = self.unrecorded();
        let release = self.let_go(how);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.renewer.abort();
            return;
        };
        match handle.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| handle.block_on(release))
            }
            _ => drop(handle.spawn(release)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(renewed: SystemTime) -> Body {
        Body {
            renewed: humantime::format_rfc3339_seconds(renewed).to_string(),
            ..Body::mine(
                &Taken {
                    at: "2026-12-07T12:00:00Z".into(),
                    id: "1".into(),
                    term: Timing::DEFAULT.lease,
                },
                "us-west-2",
                None,
            )
        }
    }

    /// A lease is fresh while renewed within its time: by S3's clock where
    /// its age is known, whatever the holder's says; else by the holder's
    /// (one ahead counts as fresh).
    #[test]
    fn a_lease_is_fresh_while_renewed_within_its_time() {
        let now = SystemTime::now();
        let timing = Timing::DEFAULT;
        let minute = Duration::from_secs(60);
        let fresh = |b: &Body, age: Option<Duration>| b.fresh(age, now, timing);
        assert!(fresh(&body(now), None));
        assert!(fresh(&body(now - 4 * minute), None));
        assert!(fresh(&body(now + minute), None), "a clock ahead");
        assert!(!fresh(&body(now - 6 * minute), None));
        // S3's clock decides where it is known.
        assert!(fresh(&body(now - 60 * minute), Some(4 * minute)));
        assert!(!fresh(&body(now), Some(6 * minute)));
        let garbled = Body {
            renewed: "yesterday".into(),
            ..body(now)
        };
        assert!(!fresh(&garbled, None));
        // The term is the holder's, where it wrote one (at most an hour);
        // else this taker's.
        let short = Body {
            lease_secs: Some(10),
            ..body(now)
        };
        assert!(fresh(&short, Some(Duration::from_secs(9))));
        assert!(!fresh(&short, Some(Duration::from_secs(11))));
        let stale = Body {
            lease_secs: Some(10),
            ..body(now - Duration::from_secs(11))
        };
        assert!(!fresh(&stale, None), "by the holder's clock too");
        let long = Body {
            lease_secs: Some(u64::MAX),
            ..body(now)
        };
        assert!(fresh(&long, Some(59 * minute)));
        assert!(!fresh(&long, Some(61 * minute)), "an hour at most");
        let unwritten = Body {
            lease_secs: None,
            ..body(now)
        };
        assert!(fresh(&unwritten, Some(4 * minute)));
        assert!(!fresh(&unwritten, Some(6 * minute)));
    }

    /// A holder is gone only if it ran here and is proved gone.
    #[test]
    fn a_holder_is_gone_only_on_proof() {
        let mine = body(SystemTime::now());
        assert!(mine.pid_start.is_some());
        assert!(!mine.gone_here(), "this process");
        let gone = Body {
            pid_start: mine.pid_start.map(|t| t + 1),
            ..mine.clone()
        };
        assert!(gone.gone_here(), "pid reused by another process");
        for (what, other) in [
            (
                "another host's",
                Body {
                    host: "another-host".into(),
                    ..gone.clone()
                },
            ),
            (
                "another boot's",
                Body {
                    boot_id: "another-boot".into(),
                    ..gone.clone()
                },
            ),
            (
                "another pid namespace's",
                Body {
                    pid_ns: "pid:[1]".into(),
                    ..gone.clone()
                },
            ),
            (
                "an unknown start's",
                Body {
                    pid_start: None,
                    ..gone.clone()
                },
            ),
        ] {
            assert!(!other.gone_here(), "{what}");
        }
        // A pid that names no process at all (past any pid_max).
        let dead = Body {
            pid: u32::MAX / 2,
            ..mine
        };
        assert!(dead.gone_here(), "no such process");
    }

    /// A put whose answer was lost is known by its take, and only by it:
    /// another take in this process (a second launch) is not this one.
    #[test]
    fn a_lease_is_this_takes_by_its_id_and_job() {
        let mine = body(SystemTime::now());
        let bytes = |b: &Body| serde_json::to_vec(b).unwrap();
        assert!(mine.same_launch(&bytes(&mine)));
        let other_take = Body {
            take_id: "2".into(),
            ..mine.clone()
        };
        assert!(!mine.same_launch(&bytes(&other_take)));
        let named = Body {
            job: Some("j".into()),
            ..mine.clone()
        };
        assert!(!mine.same_launch(&bytes(&named)));
        assert!(!mine.same_launch(b"not a lease"));
    }

    #[test]
    fn keys_name_the_backend_and_the_launch() {
        let launch = "ab".repeat(32);
        assert_eq!(
            key("sagemaker", &launch),
            format!("claims/sagemaker-{}.json", &launch[..32])
        );
    }
}
