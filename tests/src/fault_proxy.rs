//! A small HTTP/1.1 fault proxy for the fault-injection tests
//! (`tests/faults.rs`): it sits between a client (the AWS SDK in `xtask` and
//! `sca-train`) and an upstream (moto), forwards each request on a fresh
//! upstream connection (`Connection: close`, so a response ends where the
//! upstream closes) and, for the requests a [`Rule`] selects, injects one
//! fault into the answer. Threads, not an async runtime: a test proxies a
//! few hundred small requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What to do to a selected request's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward the response's head and half its body, then close the
    /// connection: the body ends short of its Content-Length.
    CutMidBody,
    /// Forward the head and half the body, then send nothing for this long
    /// (and close).
    Stall(Duration),
    /// Forward the request (the upstream acts on it), then close the
    /// connection without an answer.
    DropResponse,
    /// Answer 403 AccessDenied (S3's XML error) without forwarding.
    AccessDenied,
    /// Answer 301 PermanentRedirect without forwarding, as S3 answers a
    /// request for a bucket in another region (this one, in
    /// `x-amz-bucket-region`).
    BucketElsewhere(&'static str),
    /// Answer 400 ResourceLimitExceeded without forwarding, in SageMaker's
    /// words for an instance quota of `limit` with `in_use` of it in use and
    /// one instance asked for.
    ResourceLimitExceeded { limit: u32, in_use: u32 },
    /// Answer 400 ThrottlingException (a JSON API's "slow down", which the
    /// SDK retries) without forwarding.
    Throttling,
    /// Forward, and add these members (`"Key": value, ...`) to the JSON
    /// object the upstream answered: what the emulator leaves out (e.g.
    /// SageMaker's billed seconds).
    AddJsonMembers(&'static str),
    /// Forward, less this response header (e.g. `ETag`: what an
    /// S3-compatible store may leave out).
    DropHeader(&'static str),
    /// Hold the request until the test raises this flag (at most two
    /// minutes), then forward it: a slow writer another one overtakes.
    HoldUntil(Gate),
    /// Forward, with the first `from` in the answer's body replaced by `to`
    /// (a state the emulator never reports, e.g. a job still running).
    Replace(&'static str, &'static str),
}

/// A flag a test raises to release held requests (the same flag is the
/// same gate).
#[derive(Debug, Clone, Copy)]
pub struct Gate(pub &'static AtomicBool);

impl PartialEq for Gate {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for Gate {}

/// Which requests get the fault: those whose head (request line and headers)
/// contains `needle` (e.g. `GET /bucket/data/` for object reads, or
/// `SageMaker.CreateTrainingJob` for a JSON API's target), every `every`-th of them
/// (1: all), at most `limit` times (`usize::MAX`: no limit).
#[derive(Debug, Clone)]
pub struct Rule {
    pub needle: String,
    pub every: usize,
    pub limit: usize,
    pub fault: Fault,
}

impl Rule {
    /// `fault` on every request whose head contains `needle`.
    pub fn always(needle: impl Into<String>, fault: Fault) -> Rule {
        Rule {
            needle: needle.into(),
            every: 1,
            limit: usize::MAX,
            fault,
        }
    }
}

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    state: Arc<State>,
}

struct State {
    upstream: SocketAddr,
    rules: Vec<Rule>,
    /// Per rule: requests matched, faults injected.
    matched: Vec<AtomicUsize>,
    injected: Vec<AtomicUsize>,
    /// Request lines forwarded (for a test's diagnostics).
    log: Mutex<Vec<String>>,
    /// The training job names created through this proxy, where it keeps
    /// SageMaker's rule that a name is created once (see
    /// [`FaultProxy::with_unique_job_names`]).
    job_names: Option<Mutex<std::collections::HashSet<String>>>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`
    /// (`http://host:port` or `host:port`).
    pub fn start(upstream: &str, rules: Vec<Rule>) -> FaultProxy {
        Self::start_with(upstream, rules, false)
    }

    /// [`FaultProxy::start`], answering a `CreateTrainingJob` of a name it
    /// forwarded before as SageMaker does (400 `ResourceInUse`), without
    /// forwarding it: the emulator lets a create replace a job. A held
    /// request is judged when it is forwarded.
    pub fn with_unique_job_names(upstream: &str, rules: Vec<Rule>) -> FaultProxy {
        Self::start_with(upstream, rules, true)
    }

    fn start_with(upstream: &str, rules: Vec<Rule>, unique_job_names: bool) -> FaultProxy {
        let hostport = upstream.trim_start_matches("http://").trim_end_matches('/');
        let upstream: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
            .unwrap_or_else(|e| panic!("fault proxy upstream {hostport}: {e}"))
            .next()
            .expect("an upstream address");
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fault proxy");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(State {
            upstream,
            matched: rules.iter().map(|_| AtomicUsize::new(0)).collect(),
            injected: rules.iter().map(|_| AtomicUsize::new(0)).collect(),
            rules,
            log: Mutex::new(Vec::new()),
            job_names: unique_job_names.then(Default::default),
        });
        let (stop2, state2) = (stop.clone(), state.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let state = state2.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &state);
                });
            }
        });
        FaultProxy { addr, stop, state }
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Faults injected by rule `i` so far.
    pub fn injected(&self, i: usize) -> usize {
        self.state.injected[i].load(Ordering::SeqCst)
    }

    /// Requests rule `i` matched so far.
    pub fn matched(&self, i: usize) -> usize {
        self.state.matched[i].load(Ordering::SeqCst)
    }

    /// Wait (at most two minutes, else panic) until rule `i` has matched a
    /// request: one it holds, say.
    pub fn wait_matched(&self, i: usize) {
        let start = std::time::Instant::now();
        while self.matched(i) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{:?}",
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The request lines seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// One client connection: requests until the client closes it.
fn serve(client: TcpStream, state: &State) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        let Some((head, body)) = read_request(&mut reader)? else {
            return Ok(());
        };
        let line = head.lines().next().unwrap_or("").to_string();
        state.log.lock().unwrap().push(line.clone());
        let fault = state.rules.iter().enumerate().find_map(|(i, r)| {
            if !head.contains(&r.needle) {
                return None;
            }
            let n = state.matched[i].fetch_add(1, Ordering::SeqCst) + 1;
            let due = n.is_multiple_of(r.every.max(1))
                && state.injected[i].load(Ordering::SeqCst) < r.limit;
            due.then(|| {
                state.injected[i].fetch_add(1, Ordering::SeqCst);
                r.fault
            })
        });
        if fault == Some(Fault::AccessDenied) {
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied (fault proxy)</Message><RequestId>fault</RequestId></Error>";
            write!(
                client,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{xml}",
                xml.len()
            )?;
            continue;
        }
        if let Some(Fault::BucketElsewhere(region)) = fault {
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be addressed using the specified endpoint. (fault proxy)</Message><RequestId>fault</RequestId></Error>";
            write!(
                client,
                "HTTP/1.1 301 Moved Permanently\r\nx-amz-bucket-region: {region}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{xml}",
                xml.len()
            )?;
            continue;
        }
        let json_error = match fault {
            Some(Fault::ResourceLimitExceeded { limit, in_use }) => Some((
                "ResourceLimitExceeded",
                format!("The account-level service limit 'ml.m5.xlarge for training job usage' is {limit} Instances, with current utilization of {in_use} Instances and a request delta of 1 Instances. Please use AWS Service Quotas to request an increase for this quota. (fault proxy)"),
            )),
            Some(Fault::Throttling) => Some(("ThrottlingException", "Rate exceeded (fault proxy)".to_string())),
            _ => None,
        };
        if let Some((code, message)) = json_error {
            json_error_answer(&mut client, code, &message)?;
            continue;
        }
        if let Some(Fault::HoldUntil(Gate(release))) = fault {
            let start = std::time::Instant::now();
            while !release.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // A create is judged and forwarded under the names' lock, so two at
        // once are one after the other; a name counts once the emulator
        // answered its create 2xx.
        let create = state.job_names.is_some() && head.contains("SageMaker.CreateTrainingJob");
        let name = create
            .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
            .flatten()
            .and_then(|v| v["TrainingJobName"].as_str().map(str::to_string));
        let response = match (&state.job_names, name) {
            (Some(names), Some(name)) => {
                let mut names = names.lock().unwrap();
                if names.contains(&name) {
                    let message = format!("Training job names must be unique within an AWS account and region, and a training job with this name already exists ({name}) (fault proxy)");
                    json_error_answer(&mut client, "ResourceInUse", &message)?;
                    continue;
                }
                let response = forward(state.upstream, &head, &body)?;
                if response.starts_with(b"HTTP/1.1 2") || response.starts_with(b"HTTP/1.0 2") {
                    names.insert(name);
                }
                response
            }
            _ => forward(state.upstream, &head, &body)?,
        };
        let split = find(&response, b"\r\n\r\n").map_or(response.len(), |i| i + 4);
        let (resp_head, resp_body) = response.split_at(split);
        // The answer with its body rewritten, and its length with it.
        let rewritten = |body: String| -> Vec<u8> {
            let head = String::from_utf8_lossy(resp_head);
            let head: String = head
                .split_inclusive("\r\n")
                .map(|l| match l.split_once(':') {
                    Some((k, _)) if k.trim().eq_ignore_ascii_case("content-length") => {
                        format!("Content-Length: {}\r\n", body.len())
                    }
                    _ => l.to_string(),
                })
                .collect();
            [head.into_bytes(), body.into_bytes()].concat()
        };
        match fault {
            None | Some(Fault::HoldUntil(_)) => client.write_all(&response)?,
            Some(Fault::AddJsonMembers(members)) => {
                let body = String::from_utf8_lossy(resp_body);
                let body = match body.trim_start().strip_prefix('{') {
                    Some(rest) if rest.trim_start().starts_with('}') => {
                        format!("{{{members}{rest}")
                    }
                    Some(rest) => format!("{{{members},{rest}"),
                    None => body.into_owned(),
                };
                client.write_all(&rewritten(body))?;
            }
            Some(Fault::Replace(from, to)) => {
                let body = String::from_utf8_lossy(resp_body).replacen(from, to, 1);
                client.write_all(&rewritten(body))?;
            }
            Some(Fault::DropHeader(name)) => {
                let head = String::from_utf8_lossy(resp_head);
                let head: String = head
                    .split_inclusive("\r\n")
                    .filter(|l| {
                        l.split_once(':')
                            .is_none_or(|(k, _)| !k.trim().eq_ignore_ascii_case(name))
                    })
                    .collect();
                client.write_all(head.as_bytes())?;
                client.write_all(resp_body)?;
            }
            Some(Fault::DropResponse) => {
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Fault::CutMidBody) => {
                client.write_all(resp_head)?;
                client.write_all(&resp_body[..resp_body.len() / 2])?;
                client.flush()?;
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Fault::Stall(d)) => {
                client.write_all(resp_head)?;
                client.write_all(&resp_body[..resp_body.len() / 2])?;
                client.flush()?;
                std::thread::sleep(d);
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(
                Fault::AccessDenied
                | Fault::BucketElsewhere(_)
                | Fault::ResourceLimitExceeded { .. }
                | Fault::Throttling,
            ) => {
                unreachable!("answered above")
            }
        }
    }
}

/// Answer 400 with a JSON API's error `code` and `message`, as SageMaker does.
fn json_error_answer(client: &mut TcpStream, code: &str, message: &str) -> std::io::Result<()> {
    let json = serde_json::json!({ "__type": code, "Message": message }).to_string();
    write!(
        client,
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-ErrorType: {code}\r\nx-amzn-RequestId: fault\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    )
}

/// The request's head (request line and headers) and body, or `None` when
/// the client closed the connection.
fn read_request(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let len = header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Some((head, body)))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Sends the request upstream with `Connection: close` and returns the
/// whole response.
fn forward(upstream: SocketAddr, head: &str, body: &[u8]) -> std::io::Result<Vec<u8>> {
    // Bounded: an emulator that stops answering fails the request (and
    // the test), not the whole run at CI's limit.
    let mut up = TcpStream::connect_timeout(&upstream, Duration::from_secs(30))?;
    up.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut lines = head.lines();
    let mut out = format!("{}\r\n", lines.next().unwrap_or(""));
    for l in lines.filter(|l| !l.is_empty()) {
        let is_conn = l
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"));
        if !is_conn {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(body)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    Ok(response)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
