//! The load benchmark's own client, for the two jobs wrk cannot do well: filling a cache with
//! many distinct keys as fast as the server allows (`get-range`), and the coalescing test, where
//! many connections, all open and idle, send the same first lookup at the same moment and each
//! waiter's latency is taken (`coalesce`). Each prints one JSON line with what it saw; the
//! request counting on the upstream side is the simulator's (`load-upstream`).
//!
//!     cargo run --release -p zt-loadtest --bin load-driver -- get-range --url-prefix http://127.0.0.1:P/client/v4/accounts/A/zt_risk_scoring/integrations/reference_id/ \
//!         --token T --from 0 --count 10000 --concurrency 64
//!     cargo run --release -p zt-loadtest --bin load-driver -- coalesce --url http://127.0.0.1:P/…/ref-0010000 --token T --clients 1000

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{handshake, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::time::Instant;
use zt_loadtest::{exit_with, run_on_runtime};

const TOOL: &str = "load-driver";

const USAGE: &str = "usage: load-driver get-range --url-prefix URL --token T --from N --count N \
                     --concurrency C | coalesce --url URL --token T --clients N";

/// A request that has not finished by then is an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers naming a cache outcome, one per system: the sidecar's RFC 9211 `Cache-Status`, the
/// `X-Cache-Status` the nginx configuration adds, the `X-Cache` the VCL adds.
const OUTCOME_HEADERS: [&str; 3] = ["cache-status", "x-cache-status", "x-cache"];

#[derive(Default)]
struct Flags {
    values: BTreeMap<String, String>,
}

impl Flags {
    fn parse(args: impl Iterator<Item = String>) -> Result<Flags, String> {
        let mut flags = Flags::default();
        let mut args = args;
        while let Some(flag) = args.next() {
            let Some(name) = flag.strip_prefix("--") else {
                return Err(format!("unexpected argument {flag}; {USAGE}"));
            };
            let value = args.next().ok_or(format!("{flag} needs a value"))?;
            flags.values.insert(name.to_owned(), value);
        }
        Ok(flags)
    }

    fn text(&self, name: &str) -> Result<String, String> {
        self.values
            .get(name)
            .cloned()
            .ok_or(format!("--{name} is required; {USAGE}"))
    }

    fn number(&self, name: &str) -> Result<usize, String> {
        self.text(name)?
            .parse()
            .map_err(|_| format!("--{name} must be a number"))
    }
}

/// Where to connect and what to put in the request line.
struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn target(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|_| format!("{url} is not a URL"))?;
    let authority = uri.authority().ok_or(format!("{url} has no host"))?;
    let addr: SocketAddr = authority
        .as_str()
        .parse()
        .map_err(|_| format!("{url}: use an IP address and port"))?;
    Ok(Target {
        addr,
        host: authority.as_str().to_owned(),
        path: uri.path().to_owned(),
    })
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|error| format!("connect {addr}: {error}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("handshake: {error}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One answer as the driver saw it.
struct Seen {
    status: u16,
    outcome: Option<String>,
}

async fn get(
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
    authorization: &str,
) -> Result<Seen, String> {
    let request = Request::get(path)
        .header(HOST, host)
        .header(AUTHORIZATION, authorization)
        .body(Empty::new())
        .map_err(|error| error.to_string())?;
    let exchange = async {
        sender
            .ready()
            .await
            .map_err(|error| format!("not ready: {error}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("request: {error}"))?;
        let status = response.status().as_u16();
        let outcome = OUTCOME_HEADERS.iter().find_map(|name| {
            response
                .headers()
                .get(*name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        });
        response
            .into_body()
            .collect()
            .await
            .map_err(|error| format!("body: {error}"))?;
        Ok::<_, String>(Seen { status, outcome })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

#[derive(Default)]
struct Tally {
    statuses: BTreeMap<u16, u64>,
    outcomes: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, seen: Result<Seen, String>) {
        match seen {
            Ok(seen) => {
                *self.statuses.entry(seen.status).or_default() += 1;
                // The outcome without its varying numbers (`ttl=59`), so that the counts group.
                if let Some(outcome) = seen.outcome {
                    let label: String = outcome
                        .split(';')
                        .map(str::trim)
                        .filter(|part| !part.starts_with("ttl="))
                        .collect::<Vec<_>>()
                        .join("; ");
                    *self.outcomes.entry(label).or_default() += 1;
                }
            }
            Err(error) => *self.errors.entry(error).or_default() += 1,
        }
    }

    fn json(&self) -> String {
        let map = |entries: Vec<(String, u64)>| {
            let parts: Vec<String> = entries
                .into_iter()
                .map(|(key, count)| format!("{}:{count}", json_string(&key)))
                .collect();
            format!("{{{}}}", parts.join(","))
        };
        format!(
            "\"statuses\":{},\"outcomes\":{},\"errors\":{}",
            map(self
                .statuses
                .iter()
                .map(|(status, count)| (status.to_string(), *count))
                .collect()),
            map(self
                .outcomes
                .iter()
                .map(|(label, count)| (label.clone(), *count))
                .collect()),
            map(self
                .errors
                .iter()
                .map(|(error, count)| (error.clone(), *count))
                .collect()),
        )
    }
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"?\"".to_owned())
}

/// GETs `prefix + ref-NNNNNNN` for `count` consecutive indexes over `concurrency` keep-alive
/// connections.
async fn get_range(flags: &Flags) -> Result<String, String> {
    let prefix = target(&flags.text("url-prefix")?)?;
    let authorization = format!("Bearer {}", flags.text("token")?);
    let from = flags.number("from")?;
    let count = flags.number("count")?;
    let concurrency = flags.number("concurrency")?.max(1);
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let prefix = Arc::new(prefix);
    let authorization = Arc::new(authorization);
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (next, tally, prefix, authorization) = (
            Arc::clone(&next),
            Arc::clone(&tally),
            Arc::clone(&prefix),
            Arc::clone(&authorization),
        );
        workers.push(tokio::spawn(async move {
            let mut sender = None;
            let mut local = Tally::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                if sender.is_none() {
                    match connect(prefix.addr).await {
                        Ok(connected) => sender = Some(connected),
                        Err(error) => {
                            local.record(Err(error));
                            continue;
                        }
                    }
                }
                let Some(connection) = sender.as_mut() else {
                    continue;
                };
                let path = format!("{}ref-{:07}", prefix.path, from + index);
                let seen = get(connection, &prefix.host, &path, &authorization).await;
                if seen.is_err() {
                    sender = None;
                }
                local.record(seen);
            }
            let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
            for (status, count) in local.statuses {
                *tally.statuses.entry(status).or_default() += count;
            }
            for (outcome, count) in local.outcomes {
                *tally.outcomes.entry(outcome).or_default() += count;
            }
            for (error, count) in local.errors {
                *tally.errors.entry(error).or_default() += count;
            }
        }));
    }
    for worker in workers {
        worker
            .await
            .map_err(|error| format!("a worker failed: {error}"))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(format!(
        "{{\"mode\":\"get-range\",\"requests\":{count},\"seconds\":{seconds:.3},\"rps\":{:.0},{}}}",
        count as f64 / seconds.max(1e-9),
        tally.json()
    ))
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Opens `clients` connections, waits until every one is ready, then has each send the same GET
/// at once; reports each waiter's latency from its own send to its complete answer.
async fn coalesce(flags: &Flags) -> Result<String, String> {
    let target = Arc::new(target(&flags.text("url")?)?);
    let authorization = Arc::new(format!("Bearer {}", flags.text("token")?));
    let clients = flags.number("clients")?.max(1);
    let mut senders = Vec::with_capacity(clients);
    for _ in 0..clients {
        senders.push(connect(target.addr).await?);
    }
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for mut sender in senders {
        let (barrier, target, authorization) = (
            Arc::clone(&barrier),
            Arc::clone(&target),
            Arc::clone(&authorization),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let sent = Instant::now();
            let seen = get(&mut sender, &target.host, &target.path, &authorization).await;
            let done = Instant::now();
            (seen, sent, done)
        }));
    }
    barrier.wait().await;
    let released = Instant::now();
    let mut tally = Tally::default();
    let mut latencies = Vec::with_capacity(clients);
    let mut first_sent = None::<Instant>;
    let mut last_sent = None::<Instant>;
    let mut last_done = released;
    for task in tasks {
        let (seen, sent, done) = task
            .await
            .map_err(|error| format!("a client failed: {error}"))?;
        if seen.is_ok() {
            latencies.push((done - sent).as_secs_f64() * 1000.0);
        }
        first_sent = Some(first_sent.map_or(sent, |first| first.min(sent)));
        last_sent = Some(last_sent.map_or(sent, |last| last.max(sent)));
        last_done = last_done.max(done);
        tally.record(seen);
    }
    latencies.sort_by(f64::total_cmp);
    let spread = match (first_sent, last_sent) {
        (Some(first), Some(last)) => (last - first).as_secs_f64() * 1000.0,
        _ => 0.0,
    };
    Ok(format!(
        "{{\"mode\":\"coalesce\",\"clients\":{clients},\"answered\":{},\"latency_ms\":{{\"min\":{:.2},\"p50\":{:.2},\"p99\":{:.2},\"max\":{:.2}}},\"send_spread_ms\":{spread:.2},\"first_send_to_last_answer_ms\":{:.2},{}}}",
        latencies.len(),
        percentile(&latencies, 0.0),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        first_sent.map_or(0.0, |first| (last_done - first).as_secs_f64() * 1000.0),
        tally.json()
    ))
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let usage_error = ExitCode::from(zt_loadtest::USAGE_ERROR);
    let Some(mode) = args.next() else {
        return exit_with(TOOL, USAGE, usage_error);
    };
    let flags = match Flags::parse(args) {
        Ok(flags) => flags,
        Err(message) => return exit_with(TOOL, &message, usage_error),
    };
    let result = run_on_runtime(async {
        match mode.as_str() {
            "get-range" => get_range(&flags).await,
            "coalesce" => coalesce(&flags).await,
            other => Err(format!("unknown mode {other}; {USAGE}")),
        }
    });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(message) => exit_with(TOOL, &message, ExitCode::FAILURE),
    }
}
