//! A launch's claim of its pins in the config bucket, which every machine
//! launching into that bucket sees: two machines launching one experiment
//! with the same pins (a shared `--image`, CI and a colleague) in the same
//! minutes, before either has a record there, would otherwise both run it.
//!
//! The claim is a lease, an object `claims/<backend>-<key>.json` beside the
//! runs: created with `If-None-Match: *`, renewed every [`Timing::renew`]
//! with `If-Match` its last ETag, deleted (`If-Match`) when the launch
//! returns. One not renewed for [`Timing::lease`] (its launcher was killed,
//! or its machine lost) is taken over with `If-Match` the ETag it was seen
//! with, so of two takers one wins; so is one whose holder ran on this
//! machine, since this boot, and is gone. Freshness is read from the
//! holder's clock (`renewed`) against the reader's: a lease of minutes
//! stands any skew of synchronised clocks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::experiment::backend::{RemoteClaim, RemoteClaimed};
use crate::experiment::sagemaker::client::{get_tagged, Clients};
use crate::experiment::sagemaker::launch::find_job;

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
    /// process start (clock ticks since boot): with `host`, they tell a
    /// holder on this machine that is gone from a live one, across pid
    /// reuse.
    boot_id: String,
    pid: u32,
    pid_start: Option<u64>,
    /// The holder's pid namespace (`/proc/self/ns/pid`): containers on one
    /// kernel share `host` (with host networking) and `boot_id`, not pids.
    #[serde(default)]
    pid_ns: String,
    /// When it was last renewed, RFC 3339, by the holder's clock.
    renewed: String,
    /// A training job its holder created (or may have) and could not
    /// record in the bucket: the lease stands for it, unrenewed, for as
    /// long as SageMaker runs the job.
    #[serde(default)]
    job: Option<String>,
}

impl Body {
    fn mine(since: &str) -> Body {
        let pid = std::process::id();
        let host = this_host();
        Body {
            holder: format!("xtask pid {pid} on {host} since {since}"),
            host,
            boot_id: boot_id(),
            pid,
            pid_start: crate::procfs::start_time(pid),
            pid_ns: pid_ns(),
            renewed: crate::experiment::record::now(),
            job: None,
        }
    }

    /// Whether it still holds at `now`: renewed within the lease (or later
    /// than `now`, by a clock ahead of this one), and not by a process of
    /// this machine (same host, boot and pid namespace) that is gone. Gone
    /// only on proof: its pid names a process started at another time, or
    /// none at all (a process `/proc` hides is alive).
    fn holds(&self, now: SystemTime, timing: Timing) -> bool {
        let Ok(renewed) = humantime::parse_rfc3339(&self.renewed) else {
            return false;
        };
        let fresh = now
            .duration_since(renewed)
            .map_or(true, |age| age < timing.lease);
        let here = self.host == this_host()
            && self.boot_id == boot_id()
            && !self.pid_ns.is_empty()
            && self.pid_ns == pid_ns();
        // (A holder that could not read its own start time cannot be told
        // from a process that reused its pid: it holds until it lapses.)
        let gone_here = here
            && self
                .pid_start
                .is_some_and(|t| match crate::procfs::start_time(self.pid) {
                    Some(now) => now != t,
                    None => {
                        use nix::sys::signal::kill;
                        use nix::unistd::Pid;
                        kill(Pid::from_raw(self.pid as i32), None) == Err(nix::errno::Errno::ESRCH)
                    }
                });
        fresh && !gone_here
    }
}

fn pid_ns() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|l| l.display().to_string())
        .unwrap_or_default()
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

/// A lease's ETag, shared by its holder and renewer.
type SharedEtag = Arc<tokio::sync::Mutex<Option<String>>>;

/// A lease this launch holds: renewed in the background until let go.
#[derive(Debug)]
pub struct Lease {
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    since: String,
    /// The ETag of the lease as last put, locked across each renewal's put
    /// (so a release never deletes with an ETag a renewal is replacing);
    /// `None` once let go, or lost.
    etag: SharedEtag,
    /// Why it was lost, if another launch took it over.
    lost: Arc<Mutex<Option<String>>>,
    renewer: tokio::task::JoinHandle<()>,
    let_go: bool,
}

/// The address of `key` in `bucket`, for messages.
fn place(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

/// The key of the lease of launch key `launch_key` on backend `backend`.
pub fn key(backend: &str, launch_key: &str) -> String {
    format!(
        "claims/{backend}-{}.json",
        &launch_key[..32.min(launch_key.len())]
    )
}

/// Take the lease at `key` in `bucket`, or say who holds it. `peek` (a dry
/// run) writes nothing, and a lease it could take is `Free`.
pub async fn take(
    clients: &Clients,
    bucket: &str,
    key: &str,
    peek: bool,
    timing: Timing,
) -> Result<RemoteClaimed> {
    let since = crate::experiment::record::now();
    const TRIES: u32 = 5;
    for attempt in 0..TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << (attempt - 1))).await;
        }
        let there = get_tagged(clients, bucket, key).await?;
        let condition = match there {
            None => None,
            Some((bytes, etag)) => {
                // An unreadable object (not a lease body) holds nothing.
                if let Ok(body) = serde_json::from_slice::<Body>(&bytes) {
                    if let Some(job) = &body.job {
                        // Kept for a job not recorded in the bucket: it
                        // holds while SageMaker runs the job.
                        match find_job(&clients.sagemaker, job).await {
                            Ok(None) => {}
                            Ok(Some(state)) if state.status.is_some_and(|s| s.is_terminal()) => {}
                            Ok(Some(_)) => {
                                return Ok(RemoteClaimed::By(format!(
                                    "{}, which created training job `{job}` and could not record it in the config bucket (its claim {}): `aws sagemaker describe-training-job --training-job-name {job}` shows it",
                                    body.holder,
                                    place(bucket, key)
                                )))
                            }
                            Err(e) => {
                                return Ok(RemoteClaimed::By(format!(
                                    "{}, which may have created training job `{job}` (its claim {}; SageMaker could not say: {e:#})",
                                    body.holder,
                                    place(bucket, key)
                                )))
                            }
                        }
                    } else if body.holds(SystemTime::now(), timing) {
                        return Ok(RemoteClaimed::By(format!(
                            "{}, its claim {} renewed {}",
                            body.holder,
                            place(bucket, key),
                            body.renewed
                        )));
                    }
                }
                // Without an ETag it cannot be taken over safely.
                let Some(etag) = etag else {
                    bail!(
                        "{} answered without an ETag: the lease cannot be taken over; delete it if no launch holds it",
                        place(bucket, key)
                    );
                };
                Some(etag)
            }
        };
        if peek {
            return Ok(RemoteClaimed::Free);
        }
        let body = Body::mine(&since);
        match put(&clients.s3, bucket, key, &body, condition.as_deref()).await {
            Ok(Some(etag)) => {
                let etag = Arc::new(tokio::sync::Mutex::new(Some(etag)));
                let lost = Arc::new(Mutex::new(None));
                let renewer = tokio::spawn(renew(
                    clients.s3.clone(),
                    bucket.to_string(),
                    key.to_string(),
                    since.clone(),
                    (etag.clone(), lost.clone()),
                    timing,
                ));
                return Ok(RemoteClaimed::Held(Box::new(Lease {
                    s3: clients.s3.clone(),
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                    since,
                    etag,
                    lost,
                    renewer,
                    let_go: false,
                })));
            }
            // Another launch put first: looked at again.
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
    // Other launches keep taking it: one of them holds it.
    Ok(RemoteClaimed::By(format!(
        "another launch, which changed its claim {} under each of {TRIES} tries",
        place(bucket, key)
    )))
}

/// Put `body` at `key`: created (`condition` none: `If-None-Match: *`) or
/// replacing the ETag `condition`. Its new ETag; `None` where another put
/// came first (412, or 409 with one in flight).
async fn put(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    body: &Body,
    condition: Option<&str>,
) -> Result<Option<String>> {
    let bytes = serde_json::to_vec_pretty(body).expect("a lease serializes");
    let put = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(bytes.into())
        .content_type("application/json");
    let put = match condition {
        Some(etag) => put.if_match(etag),
        None => put.if_none_match("*"),
    };
    match put.send().await {
        Ok(out) => match out.e_tag() {
            Some(etag) => Ok(Some(etag.to_string())),
            None => bail!(
                "{} answered a put without an ETag: the lease cannot be renewed",
                place(bucket, key)
            ),
        },
        Err(e)
            if matches!(
                e.raw_response().map(|r| r.status().as_u16()),
                Some(412 | 409)
            ) =>
        {
            Ok(None)
        }
        Err(e) => bail!(
            "putting the claim {}: {}",
            place(bucket, key),
            crate::aws::error_chain(&e)
        ),
    }
}

/// Renew the lease every `timing.renew` while it is held. A renewal that
/// another launch's put came before (it took the lease over: this one
/// missed its renewals for a whole lease) ends it, recorded as lost; a
/// failed one (409: a put in flight) is tried again at the next turn.
async fn renew(
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    since: String,
    (etag, lost): (SharedEtag, Arc<Mutex<Option<String>>>),
    timing: Timing,
) {
    loop {
        tokio::time::sleep(timing.renew).await;
        let mut held = etag.lock().await;
        let Some(current) = held.clone() else {
            return;
        };
        match put(&s3, &bucket, &key, &Body::mine(&since), Some(&current)).await {
            Ok(Some(new)) => *held = Some(new),
            Ok(None) => match get_etag(&s3, &bucket, &key).await {
                // A 409 (another put in flight) that left it ours.
                Some(now) if now == current => {}
                _ => {
                    *held = None;
                    let why = format!(
                        "its claim {} was taken over by another launch after this one could not renew it",
                        place(&bucket, &key)
                    );
                    eprintln!("warning: {why}: a launch elsewhere may run these pins");
                    *lost.lock().expect("not poisoned") = Some(why);
                    return;
                }
            },
            Err(e) => eprintln!("warning: renewing the claim: {e:#}; trying again"),
        }
    }
}

/// The ETag of `key` now, if it can be read.
async fn get_etag(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<String> {
    let out = s3.head_object().bucket(bucket).key(key).send().await.ok()?;
    out.e_tag().map(str::to_string)
}

/// How a lease is let go.
enum LetGo {
    /// Deleted, unless another launch has taken it over.
    Release,
    /// Left, unrenewed, standing for this job.
    Keep(String),
}

impl Lease {
    /// Let go of it: the renewer stopped once no renewal is in flight,
    /// then `how`.
    fn let_go(&mut self, how: LetGo) -> BoxFuture<'static, ()> {
        self.let_go = true;
        let (s3, bucket, key, since) = (
            self.s3.clone(),
            self.bucket.clone(),
            self.key.clone(),
            self.since.clone(),
        );
        let (etag, renewer) = (self.etag.clone(), self.renewer.abort_handle());
        Box::pin(async move {
            let held = etag.lock().await.take();
            renewer.abort();
            let Some(held) = held else { return };
            let done = match how {
                LetGo::Release => s3
                    .delete_object()
                    .bucket(&bucket)
                    .key(&key)
                    .if_match(held)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.raw_response().map(|r| r.status().as_u16()),
                            crate::aws::error_chain(&e),
                        )
                    }),
                LetGo::Keep(job) => {
                    let body = Body {
                        job: Some(job),
                        ..Body::mine(&since)
                    };
                    put(&s3, &bucket, &key, &body, Some(&held))
                        .await
                        .map(|_| ())
                        .map_err(|e| (None, format!("{e:#}")))
                }
            };
            match done {
                // 412: taken over; 404: gone. Neither is ours to delete.
                Ok(()) | Err((Some(412 | 404), _)) => {}
                Err((_, e)) => eprintln!(
                    "warning: letting go of the claim {}: {e} (it lapses unrenewed)",
                    place(&bucket, &key)
                ),
            }
        })
    }
}

impl RemoteClaim for Lease {
    fn release(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        self.let_go(LetGo::Release)
    }

    fn keep_for(mut self: Box<Self>, job: String) -> BoxFuture<'static, ()> {
        self.let_go(LetGo::Keep(job))
    }

    fn lost(&self) -> Option<String> {
        self.lost.lock().expect("not poisoned").clone()
    }
}

impl Drop for Lease {
    /// A lease dropped without being let go (an error, `?`) is released
    /// here: on a multi-threaded runtime at once, else by a task of the
    /// runtime (which may not run before the process exits; the lease
    /// then lapses).
    fn drop(&mut self) {
        if self.let_go {
            return;
        }
        let release = self.let_go(LetGo::Release);
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
            ..Body::mine("2026-12-07T12:00:00Z")
        }
    }

    /// A lease holds while renewed within its time, whatever a clock ahead
    /// says; not once it lapses, nor when its holder here is gone.
    #[test]
    fn a_lease_holds_while_renewed_and_its_holder_lives() {
        let now = SystemTime::now();
        let timing = Timing::DEFAULT;
        let minute = Duration::from_secs(60);
        assert!(body(now).holds(now, timing));
        assert!(body(now - 4 * minute).holds(now, timing));
        assert!(body(now + minute).holds(now, timing), "a clock ahead");
        assert!(!body(now - 6 * minute).holds(now, timing));
        let garbled = Body {
            renewed: "yesterday".into(),
            ..body(now)
        };
        assert!(!garbled.holds(now, timing));

        // Held by a process of this machine's boot: while it lives.
        let mine = body(now);
        assert!(mine.pid_start.is_some());
        let gone = Body {
            pid_start: mine.pid_start.map(|t| t + 1),
            ..mine.clone()
        };
        assert!(!gone.holds(now, timing), "pid reused by another process");
        let elsewhere = Body {
            host: "another-host".into(),
            ..gone.clone()
        };
        assert!(elsewhere.holds(now, timing), "not judged from here");
        let rebooted = Body {
            boot_id: "another-boot".into(),
            ..gone.clone()
        };
        assert!(rebooted.holds(now, timing), "another boot's pids");
        let container = Body {
            pid_ns: "pid:[1]".into(),
            ..gone
        };
        assert!(container.holds(now, timing), "another pid namespace's");
        // A pid that names no process at all (past any pid_max).
        let dead = Body {
            pid: u32::MAX / 2,
            ..mine.clone()
        };
        assert!(!dead.holds(now, timing), "no such process");
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
