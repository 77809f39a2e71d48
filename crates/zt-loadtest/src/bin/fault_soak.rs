//! The fault soak: owns one bounded run of the real sidecar in front of the simulated Cloudflare API
//! while the simulator cycles through healthy, slow, down, hanging, flapping, rate-limiting and
//! garbage-answering phases; it reports what callers saw and fails (exit 1) on a cross-credential
//! answer, an answer past its deadline, a hang, a transport error or a sidecar 500. It touches no
//! sidecar internals: everything it knows comes from HTTP answers and the simulator's observations.
//!
//! Run it with `cargo run --release -p zt-loadtest --bin fault-soak` (90 s of phases after a
//! warm-up sweep of about 10 s), `... --bin fault-soak -- --quick` (20 s of phases at half
//! length), or `-- --seconds N`. The figures go to stdout and, as JSON, to
//! `target/fault-soak.json`. See RELIABILITY.md.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cloudflare_sim::{Fault, RateLimitPolicy, SimConfig, SimHandle, SimRoute, SimulatedCloudflare};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zt_loadtest::{bind_loopback, exit_with, run_on_runtime};
use zt_risk_sidecar::config::{self, Cli, Config, FileConfig};
use zt_risk_sidecar::upstream::UpstreamBase;

const TOOL: &str = "fault-soak";

// ---- what the soak runs against ----

const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const OTHER_ACCOUNT: &str = "9a7806061c88ada191ed06f989cc3dac";

/// Reference ids looked up; every tenth one does not exist (a 404, negatively cached).
const KEYS: usize = 200;

/// The sidecar's whole-request timeout in this soak; every answer must come within it plus
/// [`DEADLINE_ALLOWANCE`].
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Scheduling slack on a small shared machine. Retries and their backoff are not added: the
/// sidecar starts a fetch's deadline once and checks every backoff against it (proxy.rs), so a
/// whole fetch, retries included, ends by `request_timeout`.
const DEADLINE_ALLOWANCE: Duration = Duration::from_millis(500);

/// A client gives up after this long; an answer that never comes counts as a hang.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Each client pauses this long (uniformly, in milliseconds) between lookups.
const THINK_TIME_MS: std::ops::RangeInclusive<u64> = 5..=25;

/// Outside the 429 phase Cloudflare's own limit must not interfere: the soak's budget would
/// otherwise reach Cloudflare's 1200 per 5 minutes within a minute and block every user for 5.
const GENEROUS_LIMIT: RateLimitPolicy = RateLimitPolicy {
    quota: 1_000_000,
    window: Duration::from_secs(300),
    block: Duration::from_secs(3),
};

/// The 429 phase: each user may make 10 calls per 2 s, then is blocked for 3 s.
const TIGHT_LIMIT: RateLimitPolicy = RateLimitPolicy {
    quota: 10,
    window: Duration::from_secs(2),
    block: Duration::from_secs(3),
};

/// How many violation messages are kept for the report (all are counted).
const SAMPLES_KEPT: usize = 20;

// ---- arguments ----

struct Options {
    seconds: u64,
    /// The warm-up sweep stops here even if some keys are still uncached.
    warm_up_limit: Duration,
    /// Phase lengths are multiplied by this (0.5 for `--quick`).
    phase_scale: f64,
    clients: usize,
    seed: u64,
    json_path: PathBuf,
}

fn parse_options() -> Result<Options, String> {
    let mut seconds = None;
    let mut quick = false;
    let mut clients = 32;
    let mut seed = 1;
    let mut json_path = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => quick = true,
            "--seconds" => seconds = Some(parse_number(&value("--seconds")?, "--seconds")?),
            "--clients" => clients = parse_number(&value("--clients")?, "--clients")? as usize,
            "--seed" => seed = parse_number(&value("--seed")?, "--seed")?,
            "--json" => json_path = Some(PathBuf::from(value("--json")?)),
            "--help" | "-h" => {
                return Err(
                    "usage: fault-soak [--quick] [--seconds N] [--clients N] [--seed N] \
                            [--json PATH]"
                        .to_owned(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    let seconds = seconds.unwrap_or(if quick { 20 } else { 90 });
    if !(1..=3600).contains(&seconds) {
        return Err("--seconds must be between 1 and 3600".to_owned());
    }
    if !(1..=1024).contains(&clients) {
        return Err("--clients must be between 1 and 1024".to_owned());
    }
    let json_path = json_path.unwrap_or_else(|| {
        // The workspace's target directory: the root's, two levels above this crate's manifest.
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest.ancestors().nth(2).unwrap_or(manifest);
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("fault-soak.json")
    });
    Ok(Options {
        seconds,
        warm_up_limit: Duration::from_secs(25),
        phase_scale: if quick { 0.5 } else { 1.0 },
        clients,
        seed,
        json_path,
    })
}

fn parse_number(text: &str, name: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{name}: {text:?} is not a whole number"))
}

// ---- credentials and keys ----

/// One caller identity of the soak. Each valid one belongs to a user of its own, so "the user
/// whose request produced this ray" identifies the credential.
struct Credential {
    label: &'static str,
    token: &'static str,
    /// The simulator's user of this token; `None` for a token the simulator does not know.
    user: Option<&'static str>,
    /// Whether Cloudflare lets it read `ACCOUNT`.
    may_read: bool,
    /// Share of lookups, in percent.
    weight: u32,
}

const CREDENTIALS: [Credential; 7] = [
    valid("user-1", "soak-token-user-1-4c1d"),
    valid("user-2", "soak-token-user-2-8e2a"),
    valid("user-3", "soak-token-user-3-1f7b"),
    valid("user-4", "soak-token-user-4-9a3c"),
    valid("user-5", "soak-token-user-5-6d0e"),
    Credential {
        label: "other-account",
        token: "soak-token-other-account-only",
        user: Some("user-other"),
        may_read: false,
        weight: 10,
    },
    Credential {
        label: "unknown-token",
        token: "soak-token-nobody-knows",
        user: None,
        may_read: false,
        weight: 10,
    },
];

const fn valid(user: &'static str, token: &'static str) -> Credential {
    Credential {
        label: user,
        token,
        user: Some(user),
        may_read: true,
        weight: 16,
    }
}

fn pick_credential(rng: &mut StdRng) -> usize {
    let total: u32 = CREDENTIALS.iter().map(|c| c.weight).sum();
    let mut point = rng.gen_range(0..total);
    for (index, credential) in CREDENTIALS.iter().enumerate() {
        if point < credential.weight {
            return index;
        }
        point -= credential.weight;
    }
    CREDENTIALS.len() - 1
}

/// A reference id and the path segment that names it. Every twentieth id needs percent-encoding
/// (a space, a slash, a plus), so the soak also crosses the decoding path.
struct Key {
    reference_id: String,
    exists: bool,
    uri: Uri,
}

fn keys(sidecar: std::net::SocketAddr) -> Vec<Key> {
    (0..KEYS)
        .map(|index| {
            let (reference_id, segment) = if index % 20 == 7 {
                (
                    format!("soak team/{index:03}+eu"),
                    format!("soak%20team%2F{index:03}%2Beu"),
                )
            } else {
                let id = format!("soak-{index:03}");
                (id.clone(), id)
            };
            let uri = format!(
                "http://{sidecar}/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/{segment}"
            )
            .parse()
            .expect("the soak's lookup URIs are valid");
            Key {
                reference_id,
                exists: index % 10 != 9,
                uri,
            }
        })
        .collect()
}

/// Hot keys first: the index of `u²·KEYS` for a uniform `u`, so a few keys are asked for often and
/// the rest rarely, as a fleet of apps asks for its integrations.
fn pick_key(rng: &mut StdRng) -> usize {
    let u: f64 = rng.gen();
    ((u * u * KEYS as f64) as usize).min(KEYS - 1)
}

// ---- phases ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    WarmUp,
    Healthy,
    Slow,
    DownReset,
    DownHang,
    Flapping,
    RateLimited,
    Garbage,
}

impl Phase {
    const ALL: [Phase; 8] = [
        Phase::WarmUp,
        Phase::Healthy,
        Phase::Slow,
        Phase::DownReset,
        Phase::DownHang,
        Phase::Flapping,
        Phase::RateLimited,
        Phase::Garbage,
    ];

    /// One cycle, repeated until the time is up.
    const CYCLE: [Phase; 7] = [
        Phase::Healthy,
        Phase::Slow,
        Phase::DownReset,
        Phase::DownHang,
        Phase::Flapping,
        Phase::RateLimited,
        Phase::Garbage,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Phase::WarmUp => "warm-up",
            Phase::Healthy => "healthy",
            Phase::Slow => "slow",
            Phase::DownReset => "down-reset",
            Phase::DownHang => "down-hang",
            Phase::Flapping => "flapping",
            Phase::RateLimited => "rate-limited",
            Phase::Garbage => "garbage",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Phase::WarmUp => "healthy; each valid credential looks up every key once",
            Phase::Healthy => "no fault",
            Phase::Slow => "latency 300 ms, 800 ms, 1.5 s, then 2.5 s (past the 2 s timeout)",
            Phase::DownReset => "every connection reset without an answer",
            Phase::DownHang => "every request hangs (the sidecar's 2 s timeout ends it)",
            Phase::Flapping => "standing 503 (edge HTML page) on for 300 ms, off for 300 ms",
            Phase::RateLimited => {
                "Cloudflare's limit cut to 10 per 2 s (block 3 s), then Fault::Status(429)"
            }
            Phase::Garbage => "every answer a 200 with truncated JSON",
        }
    }

    fn seconds(self) -> f64 {
        match self {
            Phase::WarmUp => 0.0,
            Phase::Healthy => 5.0,
            Phase::Slow => 8.0,
            Phase::DownReset => 6.0,
            Phase::DownHang => 4.0,
            Phase::Flapping => 6.0,
            Phase::RateLimited => 6.0,
            Phase::Garbage => 5.0,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn is_outage(self) -> bool {
        !matches!(self, Phase::WarmUp | Phase::Healthy)
    }
}

/// Puts the simulator back to healthy, then applies the phase's standing settings.
fn enter(sim: &SimHandle, phase: Phase) {
    sim.clear_faults();
    sim.set_latency(Duration::ZERO);
    sim.set_rate_limit(GENEROUS_LIMIT);
    match phase {
        Phase::WarmUp | Phase::Healthy | Phase::Slow | Phase::Flapping => {}
        Phase::DownReset => sim.set_fault(Some(Fault::Reset)),
        Phase::DownHang => sim.set_fault(Some(Fault::Hang)),
        Phase::RateLimited => sim.set_rate_limit(TIGHT_LIMIT),
        Phase::Garbage => sim.set_fault(Some(Fault::GarbageBody)),
    }
}

/// Runs one phase for `length`, changing the simulator along the way where the phase is dynamic.
async fn run_phase(sim: &SimHandle, phase: Phase, length: Duration, stop: Instant) {
    enter(sim, phase);
    let started = Instant::now();
    let end = (started + length).min(stop);
    match phase {
        Phase::Slow => {
            let steps = [300, 800, 1500, 2500].map(Duration::from_millis);
            for (index, latency) in steps.iter().enumerate() {
                sim.set_latency(*latency);
                let step_end = started + length.mul_f64((index + 1) as f64 / steps.len() as f64);
                tokio::time::sleep_until(step_end.min(end)).await;
            }
        }
        Phase::Flapping => {
            let mut failing = false;
            while Instant::now() < end {
                failing = !failing;
                let fault = failing.then_some(Fault::Status(StatusCode::SERVICE_UNAVAILABLE));
                sim.set_fault(fault);
                tokio::time::sleep_until((Instant::now() + Duration::from_millis(300)).min(end))
                    .await;
            }
        }
        Phase::RateLimited => {
            // First Cloudflare's real per-user limit, then a 429 for everyone (its Retry-After is
            // the tight policy's 3 s block).
            tokio::time::sleep_until((started + length / 2).min(end)).await;
            sim.set_fault(Some(Fault::Status(StatusCode::TOO_MANY_REQUESTS)));
        }
        _ => {}
    }
    tokio::time::sleep_until(end).await;
}

/// Upstream requests seen while each phase kind ran, and for how long each ran.
#[derive(Default)]
struct PhaseLog {
    seconds: [f64; Phase::ALL.len()],
    runs: [u32; Phase::ALL.len()],
    upstream: [u64; Phase::ALL.len()],
    upstream_by_credential: [[u64; CREDENTIALS.len()]; Phase::ALL.len()],
    /// In order: each phase run, its start (seconds since the measured phases began) and length.
    timeline: Vec<(Phase, f64, f64)>,
}

struct UpstreamSnapshot {
    total: u64,
    by_credential: [u64; CREDENTIALS.len()],
}

/// Upstream requests so far. The unknown token has no user, so its share is the lookup total minus
/// every known user's.
fn snapshot(sim: &SimHandle) -> UpstreamSnapshot {
    let total = sim.requests(SimRoute::ReferenceGet);
    let mut by_credential = [0; CREDENTIALS.len()];
    let mut known = 0;
    for (slot, credential) in by_credential.iter_mut().zip(CREDENTIALS.iter()) {
        if let Some(user) = credential.user {
            *slot = sim.requests_by_user(user);
            known += *slot;
        }
    }
    if let Some(slot) = CREDENTIALS
        .iter()
        .position(|c| c.user.is_none())
        .and_then(|index| by_credential.get_mut(index))
    {
        *slot = total.saturating_sub(known);
    }
    UpstreamSnapshot {
        total,
        by_credential,
    }
}

/// Cycles the simulator through the phases for `measured`, adding to `log`; timeline offsets count
/// from `began` (the start of the warm-up).
async fn drive_phases(
    sim: SimHandle,
    current: Arc<AtomicUsize>,
    measured: Duration,
    scale: f64,
    began: Instant,
    log: &mut PhaseLog,
) {
    let stop = Instant::now() + measured;
    let mut schedule = Phase::CYCLE
        .iter()
        .cycle()
        .map(|phase| (*phase, Duration::from_secs_f64(phase.seconds() * scale)));
    let mut before = snapshot(&sim);
    while Instant::now() < stop {
        let Some((phase, length)) = schedule.next() else {
            break;
        };
        current.store(phase.index(), Ordering::SeqCst);
        let phase_started = Instant::now();
        run_phase(&sim, phase, length, stop).await;
        let ran_for = phase_started.elapsed().as_secs_f64();
        let after = snapshot(&sim);
        let slot = phase.index();
        log.seconds[slot] += ran_for;
        log.runs[slot] += 1;
        log.upstream[slot] += after.total.saturating_sub(before.total);
        for (sum, (now, then)) in log.upstream_by_credential[slot]
            .iter_mut()
            .zip(after.by_credential.iter().zip(before.by_credential.iter()))
        {
            *sum += now.saturating_sub(*then);
        }
        let offset = phase_started.saturating_duration_since(began).as_secs_f64();
        log.timeline.push((phase, offset, ran_for));
        before = after;
    }
    enter(&sim, Phase::Healthy);
}

// ---- what the clients saw ----

/// How the sidecar described an answer in `Cache-Status`, as a stable label.
fn cache_kind(status: StatusCode, cache_status: Option<&str>) -> String {
    let Some(header) = cache_status else {
        return format!("none/{}", status.as_u16());
    };
    let params: Vec<&str> = header.split(';').map(str::trim).skip(1).collect();
    let has = |name: &str| params.contains(&name);
    let detail = params.iter().find_map(|p| p.strip_prefix("detail="));
    match detail {
        Some(detail) if detail.starts_with("stale-") => format!("stale/{detail}"),
        Some(detail) if has("fwd=miss") => format!("miss-failed/{detail}"),
        Some(detail) => format!("local-{}/{detail}", status.as_u16()),
        None if has("hit") => "hit".to_owned(),
        None if has("collapsed") => "collapsed".to_owned(),
        None if has("stored") => "miss/stored".to_owned(),
        None if has("fwd=miss") => "miss/not-stored".to_owned(),
        None => format!("other/{header}"),
    }
}

/// Figures for one slice of the run (all of it, one phase kind, or one credential).
#[derive(Default)]
struct Stats {
    requests: u64,
    by_status: BTreeMap<u16, u64>,
    by_cache: BTreeMap<String, u64>,
    stale: u64,
    /// Lookups of an existing key by a credential that may read it, and how many got a 200 with
    /// the integration.
    readable_lookups: u64,
    readable_ok: u64,
    /// Those readable lookups answered stale.
    readable_stale: u64,
    /// The oldest stale answer's `Age`, in seconds.
    max_stale_age_s: u64,
    latencies_us: Vec<u64>,
}

impl Stats {
    fn absorb(&mut self, other: Stats) {
        self.requests += other.requests;
        for (status, count) in other.by_status {
            *self.by_status.entry(status).or_default() += count;
        }
        for (kind, count) in other.by_cache {
            *self.by_cache.entry(kind).or_default() += count;
        }
        self.stale += other.stale;
        self.readable_lookups += other.readable_lookups;
        self.readable_ok += other.readable_ok;
        self.readable_stale += other.readable_stale;
        self.max_stale_age_s = self.max_stale_age_s.max(other.max_stale_age_s);
        self.latencies_us.extend(other.latencies_us);
    }

    fn class(&self, class: u16) -> u64 {
        self.by_status
            .iter()
            .filter(|(status, _)| **status / 100 == class)
            .map(|(_, count)| count)
            .sum()
    }

    fn kind(&self, prefix: &str) -> u64 {
        self.by_cache
            .iter()
            .filter(|(kind, _)| kind.starts_with(prefix))
            .map(|(_, count)| count)
            .sum()
    }
}

/// The rules a run must keep, each counted with a few samples.
#[derive(Default)]
struct Violations {
    counts: BTreeMap<&'static str, u64>,
    samples: Vec<String>,
}

const RULE_FOREIGN_RAY: &str = "(a) answer produced by another credential's upstream request";
const RULE_FORBIDDEN_200: &str = "(a) integration served to a credential that may not read it";
const RULE_WRONG_KEY: &str = "(a) integration of another account or reference id";
const RULE_OVER_DEADLINE: &str = "(b) answer later than request_timeout + 500 ms";
const RULE_HANG: &str = "(b) no answer within the client's 10 s timeout";
const RULE_TRANSPORT: &str = "(c) transport error between client and sidecar";
const RULE_INTERNAL: &str = "(d) sidecar answered 500 (code 10500: a bug by definition)";

impl Violations {
    fn note(&mut self, rule: &'static str, detail: String) {
        *self.counts.entry(rule).or_default() += 1;
        if self.samples.len() < SAMPLES_KEPT {
            self.samples.push(format!("{rule}: {detail}"));
        }
    }

    fn absorb(&mut self, other: Violations) {
        for (rule, count) in other.counts {
            *self.counts.entry(rule).or_default() += count;
        }
        for sample in other.samples {
            if self.samples.len() < SAMPLES_KEPT {
                self.samples.push(sample);
            }
        }
    }

    fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Everything one client task saw.
struct ClientReport {
    overall: Stats,
    per_phase: Vec<Stats>,
    per_credential: Vec<Stats>,
    violations: Violations,
    ray_checks: u64,
    /// 200s that were not a Cloudflare envelope (relayed garbage), by credential kind.
    garbage_200_readable: u64,
    garbage_200_unreadable: u64,
}

impl ClientReport {
    fn new() -> ClientReport {
        ClientReport {
            overall: Stats::default(),
            per_phase: Phase::ALL.iter().map(|_| Stats::default()).collect(),
            per_credential: CREDENTIALS.iter().map(|_| Stats::default()).collect(),
            violations: Violations::default(),
            ray_checks: 0,
            garbage_200_readable: 0,
            garbage_200_unreadable: 0,
        }
    }

    fn absorb(&mut self, other: ClientReport) {
        self.overall.absorb(other.overall);
        for (mine, theirs) in self.per_phase.iter_mut().zip(other.per_phase) {
            mine.absorb(theirs);
        }
        for (mine, theirs) in self.per_credential.iter_mut().zip(other.per_credential) {
            mine.absorb(theirs);
        }
        self.violations.absorb(other.violations);
        self.ray_checks += other.ray_checks;
        self.garbage_200_readable += other.garbage_200_readable;
        self.garbage_200_unreadable += other.garbage_200_unreadable;
    }
}

struct Answer {
    status: StatusCode,
    cache_status: Option<String>,
    ray: Option<String>,
    /// `Age` and `Retry-After`, in seconds, when present and numeric.
    age: Option<u64>,
    retry_after: Option<u64>,
    body: Bytes,
}

enum Failure {
    Transport(String),
    Hang,
}

async fn lookup(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: &Uri,
    authorization: &HeaderValue,
) -> Result<Answer, Failure> {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = uri.clone();
    request
        .headers_mut()
        .insert(AUTHORIZATION, authorization.clone());
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|error| Failure::Transport(format!("{error:?}")))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|error| Failure::Transport(format!("body: {error}")))?
            .to_bytes();
        let text = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Answer {
            status: parts.status,
            cache_status: text("cache-status"),
            ray: text("cf-ray"),
            age: text("age").and_then(|value| value.parse().ok()),
            retry_after: text("retry-after").and_then(|value| value.parse().ok()),
            body,
        })
    };
    match tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_elapsed) => Err(Failure::Hang),
    }
}

/// What a 200's body says, for the isolation checks.
enum Body200 {
    /// A success envelope with an integration: its account and reference id.
    Integration {
        account_tag: String,
        reference_id: String,
    },
    /// A success envelope whose result is null.
    NullResult,
    /// Not a Cloudflare envelope (the garbage phase relayed).
    NotEnvelope,
}

fn read_200(body: &[u8]) -> Body200 {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return Body200::NotEnvelope;
    };
    if json.get("success") != Some(&Value::Bool(true)) {
        return Body200::NotEnvelope;
    }
    match json.get("result") {
        Some(Value::Null) | None => Body200::NullResult,
        Some(result) => {
            let field = |name: &str| {
                result
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            Body200::Integration {
                account_tag: field("account_tag"),
                reference_id: field("reference_id"),
            }
        }
    }
}

struct ClientSetup {
    sim: SimHandle,
    keys: Arc<Vec<Key>>,
    authorizations: Arc<Vec<HeaderValue>>,
    phase: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    seed: u64,
}

async fn run_client(setup: ClientSetup) -> ClientReport {
    let mut rng = StdRng::seed_from_u64(setup.seed);
    // One keep-alive client per task, like one app with its own connection pool.
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut report = ClientReport::new();
    while !setup.stopping.load(Ordering::SeqCst) {
        let credential_index = pick_credential(&mut rng);
        let key = &setup.keys[pick_key(&mut rng)];
        let phase = Phase::ALL
            .get(setup.phase.load(Ordering::SeqCst))
            .copied()
            .unwrap_or(Phase::Healthy);
        let started = Instant::now();
        let result = lookup(&client, &key.uri, &setup.authorizations[credential_index]).await;
        let latency = started.elapsed();
        report.observe(&setup.sim, credential_index, key, phase, result, latency);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(THINK_TIME_MS))).await;
    }
    report
}

/// The warm-up: one valid credential looks up every key once, in order, waiting out its own
/// budget when the sidecar answers a local 429, so that every key it will ask for has an entry.
/// A long-running sidecar has its working set cached; without this the soak would mostly measure
/// first fetches of cold keys.
async fn warm_up_credential(
    sim: SimHandle,
    keys: Arc<Vec<Key>>,
    credential_index: usize,
    authorization: HeaderValue,
    give_up_at: Instant,
) -> ClientReport {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut report = ClientReport::new();
    for key in keys.iter() {
        while Instant::now() < give_up_at {
            let started = Instant::now();
            let result = lookup(&client, &key.uri, &authorization).await;
            let latency = started.elapsed();
            let wait = match &result {
                Ok(answer) if answer.status == StatusCode::TOO_MANY_REQUESTS => Some(
                    Duration::from_secs(answer.retry_after.unwrap_or(1).clamp(1, 10)),
                ),
                _ => None,
            };
            report.observe(&sim, credential_index, key, Phase::WarmUp, result, latency);
            match wait {
                Some(wait) => {
                    tokio::time::sleep(
                        wait.min(give_up_at.saturating_duration_since(Instant::now())),
                    )
                    .await;
                }
                None => break,
            }
        }
    }
    report
}

impl ClientReport {
    /// Checks one exchange against the rules and adds it to the figures.
    fn observe(
        &mut self,
        sim: &SimHandle,
        credential_index: usize,
        key: &Key,
        phase: Phase,
        result: Result<Answer, Failure>,
        latency: Duration,
    ) {
        let credential = &CREDENTIALS[credential_index];
        let context = || {
            format!(
                "{} asked for {:?} in phase {} ({} ms)",
                credential.label,
                key.reference_id,
                phase.as_str(),
                latency.as_millis()
            )
        };
        let answer = match result {
            Ok(answer) => answer,
            Err(Failure::Transport(error)) => {
                self.violations
                    .note(RULE_TRANSPORT, format!("{}: {error}", context()));
                return;
            }
            Err(Failure::Hang) => {
                self.violations.note(RULE_HANG, context());
                return;
            }
        };
        if latency > REQUEST_TIMEOUT + DEADLINE_ALLOWANCE {
            self.violations.note(
                RULE_OVER_DEADLINE,
                format!("{}: {:?}", context(), answer.cache_status),
            );
        }
        let kind = cache_kind(answer.status, answer.cache_status.as_deref());
        let stale = kind.starts_with("stale/");

        // (a) Every answer that carries a ray must come from an upstream request made with this
        // very credential (hits and stale answers replay the ray they were fetched with).
        if let Some(ray) = &answer.ray {
            self.ray_checks += 1;
            let owner = sim.ray_owner(ray);
            if owner.as_deref() != credential.user {
                self.violations.note(
                    RULE_FOREIGN_RAY,
                    format!(
                        "{}: ray {ray} belongs to {owner:?}, status {}, {kind}",
                        context(),
                        answer.status
                    ),
                );
            }
        }
        let mut readable_ok = false;
        if answer.status == StatusCode::OK {
            match read_200(&answer.body) {
                Body200::Integration {
                    account_tag,
                    reference_id,
                } => {
                    if !credential.may_read {
                        self.violations
                            .note(RULE_FORBIDDEN_200, format!("{}: {kind}", context()));
                    } else if account_tag != ACCOUNT || reference_id != key.reference_id {
                        self.violations.note(
                            RULE_WRONG_KEY,
                            format!("{}: got {account_tag}/{reference_id:?}", context()),
                        );
                    } else {
                        readable_ok = key.exists;
                    }
                }
                Body200::NullResult => {}
                Body200::NotEnvelope if credential.may_read => self.garbage_200_readable += 1,
                Body200::NotEnvelope => self.garbage_200_unreadable += 1,
            }
        }
        if answer.status == StatusCode::INTERNAL_SERVER_ERROR && answer.ray.is_none() {
            self.violations.note(RULE_INTERNAL, context());
        }

        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let readable = credential.may_read && key.exists;
        let stale_age = if stale { answer.age } else { None };
        for stats in [
            &mut self.overall,
            &mut self.per_phase[phase.index()],
            &mut self.per_credential[credential_index],
        ] {
            stats.requests += 1;
            *stats.by_status.entry(answer.status.as_u16()).or_default() += 1;
            *stats.by_cache.entry(kind.clone()).or_default() += 1;
            stats.stale += u64::from(stale);
            stats.readable_lookups += u64::from(readable);
            stats.readable_ok += u64::from(readable && readable_ok);
            stats.readable_stale += u64::from(readable && stale);
            stats.max_stale_age_s = stats.max_stale_age_s.max(stale_age.unwrap_or(0));
            stats.latencies_us.push(latency_us);
        }
    }
}

// ---- the run ----

fn soak_config(upstream: &str) -> Result<Config, String> {
    let mut config = config::resolve(&Cli::default(), FileConfig::default(), None)
        .map_err(|error| error.to_string())?;
    config.upstream = UpstreamBase::parse(upstream, false).map_err(|error| error.to_string())?;
    config.ttl.positive = Duration::from_secs(2);
    config.ttl.negative = Duration::from_secs(1);
    config.ttl.stale_while_revalidate = Duration::from_secs(1);
    config.ttl.stale_if_error = Duration::from_secs(3600);
    config.request_timeout = REQUEST_TIMEOUT;
    config.connect_timeout = Duration::from_secs(1);
    config.breaker.failure_threshold = 5;
    config.breaker.cool_down = Duration::from_secs(2);
    config.budget.requests = NonZeroU32::new(200).ok_or("budget requests")?;
    config.budget.period = Duration::from_secs(10);
    config.budget.burst = NonZeroU32::new(20).ok_or("budget burst")?;
    config.shutdown_grace = Duration::from_secs(5);
    Ok(config)
}

fn seed_simulator(sim: &SimHandle) {
    for credential in &CREDENTIALS {
        match (credential.user, credential.may_read) {
            (Some(user), true) => sim.add_token(credential.token, user, &[ACCOUNT]),
            (Some(user), false) => sim.add_token(credential.token, user, &[OTHER_ACCOUNT]),
            (None, _) => {}
        }
    }
}

struct RunResult {
    options_seconds: u64,
    warm_up: Duration,
    wall: Duration,
    clients: usize,
    seed: u64,
    report: ClientReport,
    phases: PhaseLog,
    upstream_final: UpstreamSnapshot,
    breaker_state_at_end: String,
    drain: String,
}

async fn soak(options: &Options) -> Result<RunResult, String> {
    let sim = SimulatedCloudflare::start(SimConfig {
        latency: Duration::ZERO,
        rate_limit: GENEROUS_LIMIT,
    })
    .await
    .map_err(|error| format!("the simulator did not start: {error}"))?;
    let handle = sim.handle();
    seed_simulator(&handle);
    let config = soak_config(&sim.base_url())?;

    // The soak binds its own ephemeral port; `config.listen` is the binary's concern.
    let (listener, sidecar) = bind_loopback(0)
        .await
        .map_err(|error| format!("cannot bind the sidecar: {error}"))?;
    let keys = keys(sidecar);
    for key in keys.iter().filter(|key| key.exists) {
        handle.insert_integration(ACCOUNT, &key.reference_id, "https://soak-tenant.okta.com");
    }
    let proxy = zt_risk_sidecar::build_proxy(&config).map_err(|error| error.to_string())?;
    let (stop_sidecar, sidecar_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(zt_risk_sidecar::serve(
        listener,
        proxy.clone(),
        config.shutdown_grace,
        async move {
            let _ = sidecar_stopped.await;
        },
    ));

    let authorizations = CREDENTIALS
        .iter()
        .map(|credential| {
            HeaderValue::from_str(&format!("Bearer {}", credential.token))
                .map_err(|error| format!("bad soak token: {error}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let keys = Arc::new(keys);
    let authorizations = Arc::new(authorizations);
    let phase = Arc::new(AtomicUsize::new(Phase::WarmUp.index()));
    let stopping = Arc::new(AtomicBool::new(false));

    let began = Instant::now();
    let mut report = ClientReport::new();
    let mut phases = PhaseLog::default();
    let before_warm_up = snapshot(&handle);
    let sweeps: Vec<_> = CREDENTIALS
        .iter()
        .enumerate()
        .filter(|(_, credential)| credential.may_read)
        .map(|(index, _)| {
            tokio::spawn(warm_up_credential(
                handle.clone(),
                Arc::clone(&keys),
                index,
                authorizations[index].clone(),
                began + options.warm_up_limit,
            ))
        })
        .collect();
    for sweep in sweeps {
        report.absorb(join_reporting(sweep).await?);
    }
    let warm_up = began.elapsed();
    let after_warm_up = snapshot(&handle);
    let slot = Phase::WarmUp.index();
    phases.seconds[slot] = warm_up.as_secs_f64();
    phases.runs[slot] = 1;
    phases.upstream[slot] = after_warm_up.total.saturating_sub(before_warm_up.total);
    for ((sum, now), then) in phases.upstream_by_credential[slot]
        .iter_mut()
        .zip(after_warm_up.by_credential.iter())
        .zip(before_warm_up.by_credential.iter())
    {
        *sum = now.saturating_sub(*then);
    }
    phases
        .timeline
        .push((Phase::WarmUp, 0.0, warm_up.as_secs_f64()));

    let clients: Vec<_> = (0..options.clients)
        .map(|index| {
            tokio::spawn(run_client(ClientSetup {
                sim: handle.clone(),
                keys: Arc::clone(&keys),
                authorizations: Arc::clone(&authorizations),
                phase: Arc::clone(&phase),
                stopping: Arc::clone(&stopping),
                seed: options.seed.wrapping_mul(1000).wrapping_add(index as u64),
            }))
        })
        .collect();
    drive_phases(
        handle.clone(),
        Arc::clone(&phase),
        Duration::from_secs(options.seconds),
        options.phase_scale,
        began,
        &mut phases,
    )
    .await;
    stopping.store(true, Ordering::SeqCst);
    for client in clients {
        report.absorb(join_reporting(client).await?);
    }
    let wall = began.elapsed();
    let upstream_final = snapshot(&handle);
    let breaker_state_at_end = proxy.breaker().state().as_str().to_owned();

    let _ = stop_sidecar.send(());
    let drain = match server.await {
        Ok(outcome) => format!("{outcome:?}"),
        Err(error) => return Err(format!("the sidecar's server task failed: {error}")),
    };
    sim.shutdown().await;
    Ok(RunResult {
        options_seconds: options.seconds,
        warm_up,
        wall,
        clients: options.clients,
        seed: options.seed,
        report,
        phases,
        upstream_final,
        breaker_state_at_end,
        drain,
    })
}

/// Joins a client task, re-raising its panic.
async fn join_reporting(task: JoinHandle<ClientReport>) -> Result<ClientReport, String> {
    match task.await {
        Ok(report) => Ok(report),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(format!("a client task ended abnormally: {error}")),
    }
}

// ---- the report ----

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn latency_of(stats: &mut Stats) -> Latency {
    stats.latencies_us.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        p50_ms: ms(percentile(&stats.latencies_us, 0.50)),
        p99_ms: ms(percentile(&stats.latencies_us, 0.99)),
        max_ms: ms(stats.latencies_us.last().copied().unwrap_or(0)),
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn print_report(run: &mut RunResult) -> Value {
    let report = &mut run.report;
    let measured_seconds = run.wall.saturating_sub(run.warm_up).as_secs_f64();
    let overall_latency = latency_of(&mut report.overall);
    let overall = &report.overall;
    println!();
    println!("== fault soak");
    println!(
        "phases {} s after a {:.1} s warm-up sweep (wall {:.1} s), {} clients, seed {}, request_timeout {} ms, deadline {} ms",
        run.options_seconds,
        run.warm_up.as_secs_f64(),
        run.wall.as_secs_f64(),
        run.clients,
        run.seed,
        REQUEST_TIMEOUT.as_millis(),
        (REQUEST_TIMEOUT + DEADLINE_ALLOWANCE).as_millis()
    );
    println!(
        "requests answered {:>9}   ({:.0}/s over the whole wall time)",
        overall.requests,
        overall.requests as f64 / run.wall.as_secs_f64().max(0.001)
    );
    println!(
        "by class           2xx {}   4xx {}   5xx {}",
        overall.class(2),
        overall.class(4),
        overall.class(5)
    );
    println!(
        "latency (client)   p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        overall_latency.p50_ms, overall_latency.p99_ms, overall_latency.max_ms
    );
    println!(
        "stale answers      {} ({:.1} %), the oldest {} s past its store time (Age)",
        overall.stale,
        share(overall.stale, overall.requests),
        overall.max_stale_age_s
    );
    println!(
        "upstream lookups   {} (sidecar answers per upstream request: {:.1})",
        run.upstream_final.total,
        overall.requests as f64 / run.upstream_final.total.max(1) as f64
    );
    println!(
        "ray checks         {} answers carried a cf-ray; each was checked against the simulator's owner",
        report.ray_checks
    );
    println!(
        "relayed garbage    {} 200s that were not an envelope to readers, {} to non-readers",
        report.garbage_200_readable, report.garbage_200_unreadable
    );
    println!(
        "breaker at end     {}; sidecar drain: {}",
        run.breaker_state_at_end, run.drain
    );

    println!();
    println!("-- answers by status");
    for (status, count) in &overall.by_status {
        println!(
            "  {status:>3}  {count:>9}  {:>5.1} %",
            share(*count, overall.requests)
        );
    }
    println!();
    println!("-- answers by Cache-Status");
    for (kind, count) in &overall.by_cache {
        println!(
            "  {kind:<40} {count:>9}  {:>5.1} %",
            share(*count, overall.requests)
        );
    }

    println!();
    println!("-- per phase kind (all runs of a kind together)");
    println!(
        "  {:<13} {:>4} {:>6} {:>8} {:>6} {:>6} {:>6} {:>7} {:>7} {:>6} {:>6} {:>6} {:>9} {:>8} {:>8} {:>8}",
        "phase", "runs", "secs", "answers", "2xx", "4xx", "5xx", "stale", "stale%", "maxAge", "l429",
        "l503", "upstream", "p50 ms", "p99 ms", "max ms"
    );
    let mut phase_json = Vec::new();
    for phase in Phase::ALL {
        let slot = phase.index();
        let stats = &mut report.per_phase[slot];
        let latency = latency_of(stats);
        let local_429 = stats.kind("local-429/");
        let local_503 = stats.kind("local-503/");
        println!(
            "  {:<13} {:>4} {:>6.1} {:>8} {:>6} {:>6} {:>6} {:>7} {:>7.1} {:>6} {:>6} {:>6} {:>9} {:>8.2} {:>8.2} {:>8.2}",
            phase.as_str(),
            run.phases.runs[slot],
            run.phases.seconds[slot],
            stats.requests,
            stats.class(2),
            stats.class(4),
            stats.class(5),
            stats.stale,
            share(stats.stale, stats.requests),
            stats.max_stale_age_s,
            local_429,
            local_503,
            run.phases.upstream[slot],
            latency.p50_ms,
            latency.p99_ms,
            latency.max_ms
        );
        let upstream_by_credential: BTreeMap<&str, u64> = CREDENTIALS
            .iter()
            .zip(run.phases.upstream_by_credential[slot].iter())
            .map(|(credential, count)| (credential.label, *count))
            .collect();
        phase_json.push(json!({
            "phase": phase.as_str(),
            "what": phase.describe(),
            "runs": run.phases.runs[slot],
            "seconds": run.phases.seconds[slot],
            "answers": stats.requests,
            "class": {"2xx": stats.class(2), "4xx": stats.class(4), "5xx": stats.class(5)},
            "by_status": stats.by_status,
            "by_cache_status": stats.by_cache,
            "stale": stats.stale,
            "stale_share_percent": share(stats.stale, stats.requests),
            "max_stale_age_seconds": stats.max_stale_age_s,
            "readable_lookups": stats.readable_lookups,
            "readable_answered_200_percent": share(stats.readable_ok, stats.readable_lookups),
            "readable_stale_percent": share(stats.readable_stale, stats.readable_lookups),
            "upstream_requests": run.phases.upstream[slot],
            "upstream_requests_by_credential": upstream_by_credential,
            "latency_ms": {"p50": latency.p50_ms, "p99": latency.p99_ms, "max": latency.max_ms},
        }));
    }

    println!();
    println!("-- readers' lookups of existing integrations (5 valid users, keys that exist)");
    println!(
        "  {:<13} {:>8} {:>12} {:>10}",
        "phase", "lookups", "got it (200)", "of which stale"
    );
    let mut outage = Stats::default();
    for phase in Phase::ALL {
        let stats = &report.per_phase[phase.index()];
        if phase.is_outage() {
            outage.readable_lookups += stats.readable_lookups;
            outage.readable_ok += stats.readable_ok;
            outage.readable_stale += stats.readable_stale;
            outage.requests += stats.requests;
            outage.stale += stats.stale;
        }
        println!(
            "  {:<13} {:>8} {:>11.1}% {:>13.1}%",
            phase.as_str(),
            stats.readable_lookups,
            share(stats.readable_ok, stats.readable_lookups),
            share(stats.readable_stale, stats.readable_lookups)
        );
    }
    println!(
        "  outage phases together: {:.1} % of readers' lookups got the integration, {:.1} % were stale; \
         stale share of all outage answers {:.1} %",
        share(outage.readable_ok, outage.readable_lookups),
        share(outage.readable_stale, outage.readable_lookups),
        share(outage.stale, outage.requests)
    );

    println!();
    println!("-- per credential");
    println!(
        "  {:<14} {:<11} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9}",
        "credential", "user", "answers", "200", "403", "404", "429", "other", "upstream"
    );
    let mut credential_json = Vec::new();
    for (index, credential) in CREDENTIALS.iter().enumerate() {
        let stats = &report.per_credential[index];
        let status = |code: u16| stats.by_status.get(&code).copied().unwrap_or(0);
        let named: u64 = [200, 403, 404, 429].iter().map(|code| status(*code)).sum();
        let upstream = run.upstream_final.by_credential[index];
        println!(
            "  {:<14} {:<11} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9}",
            credential.label,
            credential.user.unwrap_or("-"),
            stats.requests,
            status(200),
            status(403),
            status(404),
            status(429),
            stats.requests - named,
            upstream
        );
        credential_json.push(json!({
            "credential": credential.label,
            "user": credential.user,
            "may_read_account": credential.may_read,
            "answers": stats.requests,
            "by_status": stats.by_status,
            "by_cache_status": stats.by_cache,
            "upstream_requests": upstream,
        }));
    }

    println!();
    println!("-- timeline (phase@start+length, seconds from the start of the warm-up)");
    let timeline: Vec<String> = run
        .phases
        .timeline
        .iter()
        .map(|(phase, start, length)| format!("{}@{start:.1}+{length:.1}", phase.as_str()))
        .collect();
    for line in timeline.chunks(6) {
        println!("  {}", line.join("  "));
    }

    println!();
    println!("-- checks");
    let violations = &report.violations;
    for rule in [
        RULE_FOREIGN_RAY,
        RULE_FORBIDDEN_200,
        RULE_WRONG_KEY,
        RULE_OVER_DEADLINE,
        RULE_HANG,
        RULE_TRANSPORT,
        RULE_INTERNAL,
    ] {
        let count = violations.counts.get(rule).copied().unwrap_or(0);
        let verdict = if count == 0 { "ok  " } else { "FAIL" };
        println!("  {verdict} {count:>6}  {rule}");
    }
    for sample in &violations.samples {
        println!("    e.g. {sample}");
    }

    json!({
        "options": {
            "seconds": run.options_seconds,
            "warm_up_seconds": run.warm_up.as_secs_f64(),
            "clients": run.clients,
            "seed": run.seed,
            "keys": KEYS,
            "request_timeout_ms": REQUEST_TIMEOUT.as_millis() as u64,
            "deadline_ms": (REQUEST_TIMEOUT + DEADLINE_ALLOWANCE).as_millis() as u64,
            "client_timeout_ms": CLIENT_TIMEOUT.as_millis() as u64,
        },
        "wall_seconds": run.wall.as_secs_f64(),
        "measured_seconds": measured_seconds,
        "answers": overall.requests,
        "class": {"2xx": overall.class(2), "4xx": overall.class(4), "5xx": overall.class(5)},
        "by_status": overall.by_status,
        "by_cache_status": overall.by_cache,
        "stale": overall.stale,
        "max_stale_age_seconds": overall.max_stale_age_s,
        "latency_ms": {
            "p50": overall_latency.p50_ms,
            "p99": overall_latency.p99_ms,
            "max": overall_latency.max_ms,
        },
        "upstream_requests": run.upstream_final.total,
        "ray_checks": report.ray_checks,
        "relayed_garbage_200": {
            "to_readers": report.garbage_200_readable,
            "to_non_readers": report.garbage_200_unreadable,
        },
        "outage": {
            "stale_share_percent": share(outage.stale, outage.requests),
            "readable_answered_200_percent": share(outage.readable_ok, outage.readable_lookups),
            "readable_stale_percent": share(outage.readable_stale, outage.readable_lookups),
        },
        "breaker_at_end": run.breaker_state_at_end,
        "drain": run.drain,
        "phases": phase_json,
        "credentials": credential_json,
        "timeline": run.phases.timeline.iter().map(|(phase, start, length)| json!({
            "phase": phase.as_str(), "start_s": start, "length_s": length,
        })).collect::<Vec<_>>(),
        "violations": {
            "total": violations.total(),
            "by_rule": violations.counts,
            "samples": violations.samples,
        },
    })
}

fn main() -> ExitCode {
    let usage_error = ExitCode::from(zt_loadtest::USAGE_ERROR);
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => return exit_with(TOOL, &message, usage_error),
    };
    let mut run = match run_on_runtime(soak(&options)) {
        Ok(run) => run,
        Err(message) => {
            let message = format!("the soak could not run: {message}");
            return exit_with(TOOL, &message, usage_error);
        }
    };
    let figures = print_report(&mut run);
    let written = options
        .json_path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            let text = serde_json::to_string_pretty(&figures).map_err(std::io::Error::other)?;
            std::fs::write(&options.json_path, text + "\n")
        });
    match written {
        Ok(()) => println!("\nfigures written to {}", options.json_path.display()),
        Err(error) => eprintln!(
            "fault-soak: could not write {}: {error}",
            options.json_path.display()
        ),
    }
    let failures = run.report.violations.total();
    if failures > 0 {
        eprintln!(
            "fault-soak: FAILED: {failures} violation(s) of the soak's rules; see the checks above"
        );
        return ExitCode::FAILURE;
    }
    println!("fault-soak: PASSED: every answer came from its own credential, within its deadline, without a transport error");
    ExitCode::SUCCESS
}
