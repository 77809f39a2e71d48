//! The fleet benchmark (issue 15 point 9): 4 sidecars sharing a real Redis against 4 without, in
//! one run, on loopback only, bounded in time and in count. It measures upstream calls per key per
//! TTL under rolling restarts and expiring keys, what an L1 miss answered from Redis costs the
//! caller (p50/p99 next to L1 hits), and hit-path throughput with Redis configured and without
//! (alternating rounds, ratio). It runs the real sidecar binary as child processes (the one built
//! next to this tool) and its own `redis-server` (`crates/redis-fixture`); it judges nothing and
//! exits 1 only when it cannot run or a lookup fails.
//!
//!     cargo build --release -p zt-risk-sidecar -p zt-loadtest --bins
//!     target/release/fleet-bench [--seconds 20] [--keys 50] [--ttl-seconds 2] [--clients 16]
//!                                [--restart-every-seconds 2] [--hit-seconds 4] [--sidecar PATH]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudflare_sim::{RateLimitPolicy, SimConfig, SimHandle, SimRoute, SimulatedCloudflare};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use redis_fixture::RedisServer;
use zt_loadtest::{exit_with, run_on_runtime, USAGE_ERROR};

const TOOL: &str = "fleet-bench";

const USAGE: &str = "usage: fleet-bench [--seconds N] [--keys N] [--ttl-seconds N] [--clients N] \
                     [--restart-every-seconds N] [--hit-seconds N] [--sidecar PATH]";

/// How many sidecars each configuration runs, as issue 15 asks.
const SIDECARS: usize = 4;
const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const TOKEN: &str = "fleet-bench-token";
/// Cloudflare's answer time: a lookup that reaches upstream costs about this much.
const UPSTREAM_LATENCY: Duration = Duration::from_millis(20);
/// A quota no run can reach: the benchmark measures caching, not Cloudflare's limit.
const GENEROUS_LIMIT: RateLimitPolicy = RateLimitPolicy {
    quota: 10_000_000,
    window: Duration::from_secs(300),
    block: Duration::from_secs(3),
};
/// A lookup not answered by then is a failure of the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a sidecar may take to start or to stop.
const PROCESS_LIMIT: Duration = Duration::from_secs(30);

struct Options {
    seconds: u64,
    keys: usize,
    ttl_seconds: u64,
    clients: usize,
    restart_every_seconds: u64,
    hit_seconds: u64,
    sidecar: PathBuf,
}

fn parse_options() -> Result<Options, String> {
    let mut values = BTreeMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(name) = flag.strip_prefix("--") else {
            return Err(format!("unexpected argument {flag}; {USAGE}"));
        };
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        values.insert(name.to_owned(), value);
    }
    let mut number = |name: &str, default: u64, most: u64| -> Result<u64, String> {
        let value = match values.remove(name) {
            Some(text) => text
                .parse()
                .map_err(|_| format!("--{name} must be a number"))?,
            None => default,
        };
        if value == 0 || value > most {
            return Err(format!("--{name} must be between 1 and {most}"));
        }
        Ok(value)
    };
    // Bounds keep a run short and its counts small, whatever is asked.
    let seconds = number("seconds", 20, 600)?;
    let keys = usize::try_from(number("keys", 50, 10_000)?).map_err(|error| error.to_string())?;
    let ttl_seconds = number("ttl-seconds", 2, 60)?;
    let clients =
        usize::try_from(number("clients", 16, 256)?).map_err(|error| error.to_string())?;
    let restart_every_seconds = number("restart-every-seconds", 2, 600)?;
    let hit_seconds = number("hit-seconds", 4, 60)?;
    let sidecar = match values.remove("sidecar") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .map_err(|error| format!("cannot find this tool's path: {error}"))?
            .with_file_name("zt-risk-sidecar"),
    };
    if let Some(name) = values.keys().next() {
        return Err(format!("unknown flag --{name}; {USAGE}"));
    }
    if !sidecar.is_file() {
        return Err(format!(
            "no sidecar binary at {} (build it: cargo build --release -p zt-risk-sidecar, or pass \
             --sidecar PATH)",
            sidecar.display()
        ));
    }
    Ok(Options {
        seconds,
        keys,
        ttl_seconds,
        clients,
        restart_every_seconds,
        hit_seconds,
        sidecar,
    })
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => return exit_with(TOOL, &message, ExitCode::from(USAGE_ERROR)),
    };
    match run_on_runtime(bench(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => exit_with(TOOL, &message, ExitCode::FAILURE),
    }
}

// ---- the sidecars ----

/// One sidecar process and its lookup address.
struct Sidecar {
    child: Child,
    addr: SocketAddr,
}

impl Sidecar {
    /// Starts the binary with `args` added to its loopback listeners and JSON logs, and waits for
    /// its listening line. Its output keeps being read (and dropped) so that it never blocks.
    fn start(binary: &PathBuf, args: &[String]) -> Result<Sidecar, String> {
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(args)
            .env_remove("CLOUDFLARE_API_TOKEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", binary.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (found, listening) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("zt-risk-sidecar listening") {
                    let addr = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|json| json["listen"].as_str()?.parse::<SocketAddr>().ok());
                    let _ = found.send(addr);
                }
            }
        });
        match listening.recv_timeout(PROCESS_LIMIT) {
            Ok(Some(addr)) => Ok(Sidecar { child, addr }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err("a sidecar did not print its listening address".to_owned())
            }
        }
    }

    /// SIGTERM (a graceful drain, as a rolling restart does), then waits for the exit; killed if
    /// it outlives [`PROCESS_LIMIT`].
    fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + PROCESS_LIMIT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            // Polling the exit: std offers no wait with a timeout.
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A configuration under test: the arguments every sidecar of it gets (each phase adds its TTL).
struct Setup {
    name: &'static str,
    args: Vec<String>,
}

fn setups(upstream: &str, redis: &RedisServer) -> Result<[Setup; 2], String> {
    let key_file = redis.directory().join("fleet.key");
    let mut secret = [0u8; 32];
    rand::thread_rng().fill(&mut secret);
    let hex: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();
    std::fs::write(&key_file, hex)
        .map_err(|error| format!("cannot write the fleet key: {error}"))?;
    let common = vec![
        "--upstream".to_owned(),
        upstream.to_owned(),
        // The budget is not what is measured: far above anything the run spends.
        "--upstream-budget-requests".to_owned(),
        "1000000".to_owned(),
        "--upstream-budget-burst".to_owned(),
        "100000".to_owned(),
    ];
    let mut fleet = common.clone();
    fleet.extend([
        "--redis-url".to_owned(),
        redis.url(),
        "--fleet-key-file".to_owned(),
        key_file.display().to_string(),
        "--fleet-size".to_owned(),
        SIDECARS.to_string(),
    ]);
    Ok([
        Setup {
            name: "with Redis",
            args: fleet,
        },
        Setup {
            name: "without Redis",
            args: common,
        },
    ])
}

// ---- the callers ----

/// How a lookup was answered, from its `Cache-Status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Answered {
    /// From this sidecar's memory.
    L1Hit,
    /// An L1 miss answered from Redis.
    L2Hit,
    /// Answered by another caller's or another sidecar's fetch.
    Collapsed,
    /// Fetched from Cloudflare.
    Fetched,
    Other,
}

fn classify(cache_status: &str) -> Answered {
    let parameters: Vec<&str> = cache_status.split("; ").collect();
    let fleet = parameters.contains(&"detail=fleet");
    if parameters.contains(&"hit") {
        return if fleet {
            Answered::L2Hit
        } else {
            Answered::L1Hit
        };
    }
    if parameters.contains(&"collapsed") {
        return Answered::Collapsed;
    }
    if parameters.contains(&"fwd=miss") {
        return Answered::Fetched;
    }
    Answered::Other
}

/// What the callers saw: answers by kind, and latencies in microseconds by kind.
#[derive(Default)]
struct Tally {
    answered: BTreeMap<Answered, u64>,
    latencies_us: BTreeMap<Answered, Vec<u64>>,
    /// Lookups sent to a sidecar that had just stopped listening, sent again elsewhere.
    redirected: u64,
    failures: Vec<String>,
}

impl Tally {
    fn absorb(&mut self, other: Tally) {
        for (kind, count) in other.answered {
            *self.answered.entry(kind).or_default() += count;
        }
        for (kind, latencies) in other.latencies_us {
            self.latencies_us.entry(kind).or_default().extend(latencies);
        }
        self.redirected += other.redirected;
        self.failures.extend(other.failures);
    }

    fn count(&self, kind: Answered) -> u64 {
        self.answered.get(&kind).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.answered.values().sum()
    }

    /// The `percent`th percentile (nearest rank) of the latencies of `kind`, in microseconds.
    fn percentile(&mut self, kind: Answered, percent: usize) -> Option<u64> {
        let latencies = self.latencies_us.get_mut(&kind)?;
        if latencies.is_empty() {
            return None;
        }
        latencies.sort_unstable();
        let rank = (latencies.len() * percent).div_ceil(100).max(1);
        latencies.get(rank - 1).copied()
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn lookup_uri(addr: SocketAddr, key: usize) -> Result<Uri, String> {
    format!(
        "http://{addr}/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/bench-{key:05}"
    )
    .parse()
    .map_err(|error| format!("bad lookup URI: {error}"))
}

/// One lookup; `Ok` with how it was answered and how long it took, `Err` if it failed.
async fn lookup(client: &HttpClient, uri: Uri) -> Result<(Answered, Duration), String> {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = uri;
    request.headers_mut().insert(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer fleet-bench-token"),
    );
    let started = Instant::now();
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|error| format!("transport: {error:?}"))?;
        let (parts, body) = response.into_parts();
        body.collect()
            .await
            .map_err(|error| format!("body: {error}"))?;
        if parts.status != StatusCode::OK {
            return Err(format!("status {}", parts.status));
        }
        let cache_status = parts
            .headers
            .get("cache-status")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        Ok(classify(cache_status))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(answered)) => Ok((answered, started.elapsed())),
        Ok(Err(error)) => Err(error),
        Err(_) => Err("no answer within the request timeout".to_owned()),
    }
}

/// A caller: random keys through random live sidecars until `stop`.
async fn caller(
    members: Arc<RwLock<Vec<Option<SocketAddr>>>>,
    keys: usize,
    stop: Arc<AtomicBool>,
) -> Tally {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let picked = {
            let live: Vec<SocketAddr> = members
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .flatten()
                .copied()
                .collect();
            let mut rng = rand::thread_rng();
            (!live.is_empty()).then(|| (live[rng.gen_range(0..live.len())], rng.gen_range(0..keys)))
        };
        let Some((addr, key)) = picked else {
            tokio::task::yield_now().await;
            continue;
        };
        let uri = match lookup_uri(addr, key) {
            Ok(uri) => uri,
            Err(error) => {
                tally.failures.push(error);
                break;
            }
        };
        match lookup(&client, uri).await {
            Ok((answered, latency)) => {
                *tally.answered.entry(answered).or_default() += 1;
                tally
                    .latencies_us
                    .entry(answered)
                    .or_default()
                    .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
            }
            // A sidecar being restarted closed its listener after this caller picked it: the
            // rolling restart's own race, not a failed lookup. The caller picks again.
            Err(error) if error.starts_with("transport") => tally.redirected += 1,
            Err(error) => tally.failures.push(error),
        }
    }
    tally
}

/// Runs `clients` callers over `members` for `length`, then stops them and sums what they saw.
async fn run_callers(
    options: &Options,
    members: &Arc<RwLock<Vec<Option<SocketAddr>>>>,
    length: Duration,
) -> Result<Tally, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..options.clients)
        .map(|_| tokio::spawn(caller(members.clone(), options.keys, stop.clone())))
        .collect();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for caller in callers {
        tally.absorb(
            caller
                .await
                .map_err(|error| format!("a caller failed: {error}"))?,
        );
    }
    Ok(tally)
}

// ---- the phases ----

struct ExpiringReport {
    setup: &'static str,
    upstream_calls: u64,
    per_key_per_ttl: f64,
    restarts: u64,
    tally: Tally,
}

/// Expiring keys under rolling restarts: 4 sidecars of `setup`, callers spreading random keys
/// over the live ones, one sidecar restarted (SIGTERM, then a new process) every
/// `restart_every_seconds`, for `seconds`.
async fn expiring_keys(
    options: &Options,
    sim: &SimHandle,
    setup: &Setup,
) -> Result<ExpiringReport, String> {
    let mut args = setup.args.clone();
    args.extend([
        "--cache-ttl".to_owned(),
        format!("{}s", options.ttl_seconds),
    ]);
    let mut sidecars = Vec::new();
    for _ in 0..SIDECARS {
        sidecars.push(Some(Sidecar::start(&options.sidecar, &args)?));
    }
    let members = Arc::new(RwLock::new(
        sidecars
            .iter()
            .map(|sidecar| sidecar.as_ref().map(|sidecar| sidecar.addr))
            .collect::<Vec<_>>(),
    ));
    let sidecars = Arc::new(Mutex::new(sidecars));
    sim.reset_counters();
    let stop = Arc::new(AtomicBool::new(false));
    let restarts = Arc::new(AtomicU64::new(0));
    let restarter = {
        let (members, sidecars, stop, restarts) = (
            members.clone(),
            sidecars.clone(),
            stop.clone(),
            restarts.clone(),
        );
        let binary = options.sidecar.clone();
        let every = Duration::from_secs(options.restart_every_seconds);
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut next = 0;
            let mut due = Instant::now() + every;
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() < due {
                    // The restart schedule is the workload itself: a tick, not an ordering.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                members.write().unwrap_or_else(PoisonError::into_inner)[next] = None;
                let old = sidecars.lock().unwrap_or_else(PoisonError::into_inner)[next].take();
                if let Some(old) = old {
                    old.stop();
                }
                let new = Sidecar::start(&binary, &args)?;
                members.write().unwrap_or_else(PoisonError::into_inner)[next] = Some(new.addr);
                sidecars.lock().unwrap_or_else(PoisonError::into_inner)[next] = Some(new);
                restarts.fetch_add(1, Ordering::Relaxed);
                next = (next + 1) % SIDECARS;
                due += every;
            }
            Ok(())
        })
    };
    let tally = run_callers(options, &members, Duration::from_secs(options.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = tally?;
    restarter
        .await
        .map_err(|error| format!("the restarter failed: {error}"))??;
    let upstream_calls = sim.requests(SimRoute::ReferenceGet);
    let left: Vec<Sidecar> = sidecars
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter_mut()
        .filter_map(Option::take)
        .collect();
    tokio::task::spawn_blocking(move || left.into_iter().for_each(Sidecar::stop))
        .await
        .map_err(|error| format!("stopping the sidecars failed: {error}"))?;
    let periods = options.seconds as f64 / options.ttl_seconds as f64;
    Ok(ExpiringReport {
        setup: setup.name,
        upstream_calls,
        per_key_per_ttl: upstream_calls as f64 / (options.keys as f64 * periods),
        restarts: restarts.load(Ordering::Relaxed),
        tally,
    })
}

/// Hit-path throughput of one sidecar of `setup`: every key fetched once (a TTL longer than the
/// round), then `clients` callers in a closed loop for `hit_seconds`. Answers per second.
async fn hit_throughput(
    options: &Options,
    setup: &Setup,
    redis: &RedisServer,
) -> Result<(f64, u64), String> {
    // An empty Redis: the keys are this sidecar's own fetches, held for the round, not entries
    // left by the expiring phase (an L1 copy never outlives the Redis entry it came from).
    let _: () = redis_fixture::redis::cmd("FLUSHALL")
        .query(&mut redis.connection())
        .map_err(|error| format!("FLUSHALL: {error}"))?;
    let mut args = setup.args.clone();
    args.extend(["--cache-ttl".to_owned(), "1h".to_owned()]);
    let sidecar = Sidecar::start(&options.sidecar, &args)?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    for key in 0..options.keys {
        lookup(&client, lookup_uri(sidecar.addr, key)?).await?;
    }
    let members = Arc::new(RwLock::new(vec![Some(sidecar.addr)]));
    let started = Instant::now();
    let tally = run_callers(options, &members, Duration::from_secs(options.hit_seconds)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    tokio::task::spawn_blocking(move || sidecar.stop())
        .await
        .map_err(|error| format!("stopping the sidecar failed: {error}"))?;
    if let Some(failure) = tally.failures.first() {
        return Err(format!("a hit-path lookup failed: {failure}"));
    }
    Ok((
        tally.count(Answered::L1Hit) as f64 / elapsed,
        tally.total() - tally.count(Answered::L1Hit),
    ))
}

fn milliseconds(microseconds: Option<u64>) -> String {
    microseconds.map_or("-".to_owned(), |us| format!("{:.2}", us as f64 / 1000.0))
}

async fn bench(options: Options) -> Result<(), String> {
    let sim = SimulatedCloudflare::start(SimConfig {
        latency: UPSTREAM_LATENCY,
        rate_limit: GENEROUS_LIMIT,
    })
    .await
    .map_err(|error| format!("the simulator did not start: {error}"))?;
    let handle = sim.handle();
    handle.add_token(TOKEN, "bench-user", &[ACCOUNT]);
    for key in 0..options.keys {
        handle.insert_integration(
            ACCOUNT,
            &format!("bench-{key:05}"),
            "https://bench.okta.com",
        );
    }
    let redis = RedisServer::start();
    let setups = setups(&sim.base_url(), &redis)?;
    println!(
        "fleet-bench: {SIDECARS} sidecars per setup, {} keys, TTL {} s, {} s per setup, {} callers, \
         a rolling restart every {} s, upstream latency {:?}",
        options.keys,
        options.ttl_seconds,
        options.seconds,
        options.clients,
        options.restart_every_seconds,
        UPSTREAM_LATENCY
    );

    println!("\n## Expiring keys under rolling restarts");
    println!(
        "| setup | upstream calls | per key per TTL | restarts | lookups | L1 hits | L2 hits | collapsed | fetched | redirected | failed |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut reports = Vec::new();
    for setup in &setups {
        let report = expiring_keys(&options, &handle, setup).await?;
        let tally = &report.tally;
        println!(
            "| {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} |",
            report.setup,
            report.upstream_calls,
            report.per_key_per_ttl,
            report.restarts,
            tally.total(),
            tally.count(Answered::L1Hit),
            tally.count(Answered::L2Hit),
            tally.count(Answered::Collapsed),
            tally.count(Answered::Fetched),
            tally.redirected,
            tally.failures.len()
        );
        reports.push(report);
    }

    println!("\n## Latency at the caller by how the lookup was answered (ms)");
    println!(
        "| setup | L1 hit p50 | L1 hit p99 | L2 hit p50 | L2 hit p99 | fetched p50 | fetched p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for report in &mut reports {
        let tally = &mut report.tally;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            report.setup,
            milliseconds(tally.percentile(Answered::L1Hit, 50)),
            milliseconds(tally.percentile(Answered::L1Hit, 99)),
            milliseconds(tally.percentile(Answered::L2Hit, 50)),
            milliseconds(tally.percentile(Answered::L2Hit, 99)),
            milliseconds(tally.percentile(Answered::Fetched, 50)),
            milliseconds(tally.percentile(Answered::Fetched, 99)),
        );
    }

    println!("\n## Hit path: one sidecar, every key cached, closed loop (answers/s)");
    println!("| round | with Redis | without Redis | ratio |");
    println!("|---|---:|---:|---:|");
    let mut ratios = Vec::new();
    for round in 1..=3 {
        // Alternating, so that a change in the machine's load hits both setups alike.
        let (with, with_misses) = hit_throughput(&options, &setups[0], &redis).await?;
        let (without, without_misses) = hit_throughput(&options, &setups[1], &redis).await?;
        let ratio = with / without;
        ratios.push(ratio);
        println!(
            "| {round} | {with:.0} | {without:.0} | {ratio:.3} |{}",
            if with_misses + without_misses > 0 {
                format!(" ({with_misses} and {without_misses} answers were not L1 hits)")
            } else {
                String::new()
            }
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("median ratio (with Redis / without): {:.3}", ratios[1]);

    let failures: usize = reports
        .iter()
        .map(|report| report.tally.failures.len())
        .sum();
    sim.shutdown().await;
    if failures > 0 {
        let first = reports
            .iter()
            .flat_map(|report| report.tally.failures.first())
            .next()
            .cloned()
            .unwrap_or_default();
        return Err(format!("{failures} lookups failed; the first: {first}"));
    }
    Ok(())
}
