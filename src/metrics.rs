//! Prometheus metrics: the families, their names and labels, and the exposition in both text
//! formats (by the prometheus-client crate, not by hand). Labels are only small closed
//! vocabularies, every series of which exists from the start: never an account id, a reference id
//! or anything derived from a credential. It reads the accept loop's and the process's counters at
//! scrape time; it must not decide anything on the request path.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::server::ConnectionCounters;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    outcome: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusClassLabel {
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    features: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    // 50 µs to about 13 s: hits sit at the bottom, upstream round trips in the middle.
    Histogram::new(exponential_buckets(0.000_05, 2.5, 14))
}

fn upstream_histogram() -> Histogram {
    // 5 ms to about 20 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// Every status class, for answers whose status Cloudflare chose (`other`: outside 200–599).
const ANY_CLASS: &[&str] = &["2xx", "3xx", "4xx", "5xx", "other"];

/// The status classes each lookup outcome can answer with, and so the only series of
/// `zt_sidecar_lookups_total`: a hit or a stale answer replays a stored 200 or 404; a miss relays
/// Cloudflare's status (or answers a local 502/504); an unavailable lookup is a local 429 or 503;
/// a local answer is an error of the caller's or an overload. README documents this table.
pub const LOOKUP_SERIES: &[(&str, &[&str])] = &[
    ("hit", &["2xx", "4xx"]),
    ("stale", &["2xx", "4xx"]),
    ("miss", ANY_CLASS),
    ("collapsed", ANY_CLASS),
    ("unavailable", &["4xx", "5xx"]),
    ("local", &["4xx", "5xx"]),
];

/// The outcome of the list and the writes, which pass through without the cache. They are
/// counted apart (`zt_sidecar_pass_through_requests_total`), not as lookups.
const PASS_THROUGH: &str = "bypass";

/// What `zt_sidecar_upstream_requests_total`'s `status` may be: the statuses that matter one by
/// one, the rest by class, and the failures without an answer.
const UPSTREAM_STATUSES: &[&str] = &[
    "200", "400", "401", "403", "404", "429", "500", "502", "503", "504", "2xx", "3xx", "4xx",
    "5xx", "other",
];
const UPSTREAM_FAILURES: &[&str] = &[
    "upstream-connect-failed",
    "upstream-unreachable",
    "upstream-timeout",
    "upstream-body-too-large",
    "upstream-invalid-answer",
];

/// Why a stale entry was served (as in `Cache-Status`'s `detail`).
const STALE_REASONS: &[&str] = &[
    "stale-while-revalidate",
    "stale-if-error",
    "stale-budget-exhausted",
    "stale-rate-limited",
    "stale-quota-reserve",
    "stale-slow-upstream",
    "stale-upstream-down",
];

/// Why the sidecar answered a 429 itself.
const LOCAL_RATE_LIMIT_REASONS: &[&str] = &["budget-exhausted", "rate-limited", "quota-reserve"];

/// Why the sidecar refused a request without asking Cloudflare.
pub const REFUSAL_REASONS: &[&str] = &[
    "pending-lookups",
    "budget-exhausted",
    "rate-limited",
    "quota-reserve",
    "upstream-down",
];

const EVICTION_CAUSES: &[&str] = &["expired", "size", "replaced", "explicit"];
const RELOAD_RESULTS: &[&str] = &["applied", "rejected"];

/// The breaker states, for the state-set gauge.
pub const BREAKER_STATES: [&str; 3] = ["closed", "half-open", "open"];

/// Which text format a scraper asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0 (`application/openmetrics-text`).
    OpenMetrics,
    /// Prometheus's classic text format (`text/plain; version=0.0.4`).
    Classic,
}

impl Exposition {
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::Classic => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }

    /// Pure: the format an `Accept` header prefers, by its q-values. OpenMetrics wins ties and
    /// is what a scraper without a preference gets (as Prometheus itself asks for it first);
    /// the classic format is served to whoever ranks `text/plain` higher.
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        let Some(accept) = accept else {
            return Exposition::OpenMetrics;
        };
        let mut open_metrics = None::<f32>;
        let mut classic = None::<f32>;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let quality = parts
                .filter_map(|param| param.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, value)| value.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let slot = match media.as_str() {
                "application/openmetrics-text" => &mut open_metrics,
                "text/plain" => &mut classic,
                _ => continue,
            };
            *slot = Some(slot.map_or(quality, |seen| seen.max(quality)));
        }
        match (open_metrics, classic) {
            (_, None) => Exposition::OpenMetrics,
            (None, Some(q)) if q > 0.0 => Exposition::Classic,
            (Some(open), Some(text)) if text > open => Exposition::Classic,
            _ => Exposition::OpenMetrics,
        }
    }
}

/// Every metric of the process. Cheap to share behind an `Arc`; all updates are atomic.
pub struct Metrics {
    registry: Registry,
    connections: ConnectionCounters,
    lookups: Family<LookupLabels, Counter>,
    pass_through: Family<StatusClassLabel, Counter>,
    request_duration: HistogramFamily<OutcomeLabel>,
    upstream_requests: Family<StatusLabel, Counter>,
    upstream_duration: Histogram,
    upstream_retries: Counter,
    coalesced_waiters: Counter,
    stale_answers: Family<ReasonLabel, Counter>,
    local_rate_limited: Family<ReasonLabel, Counter>,
    refusals: Family<ReasonLabel, Counter>,
    cache_entries: Gauge,
    cache_weighted_bytes: Gauge,
    cache_evictions: Family<CauseLabel, Counter>,
    budget_tokens: Gauge,
    quota_lowest_remaining: Gauge,
    quota_held_credentials: Gauge,
    breaker_state: Family<StateLabel, Gauge>,
    reloads: Family<ResultLabel, Counter>,
    log_lines_dropped: ReadAtScrape,
    fleet: crate::fleet::FleetMetrics,
}

/// A counter kept elsewhere and read at scrape time: the log writer counts the lines it dropped
/// itself, and this only reports that count. It reads 0 until a source is set.
#[derive(Clone, Default)]
struct ReadAtScrape(Arc<OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>>);

impl ReadAtScrape {
    fn read(&self) -> u64 {
        self.0.get().map_or(0, |read| read())
    }
}

impl std::fmt::Debug for ReadAtScrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ReadAtScrape").field(&self.read()).finish()
    }
}

impl TypedMetric for ReadAtScrape {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ReadAtScrape {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        ConstCounter::new(self.read()).encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Creates every series of a labelled family, so that each exists, at zero, from the start.
fn create_all<L, M, C>(family: &Family<L, M, C>, labels: impl IntoIterator<Item = L>)
where
    L: Clone + std::hash::Hash + Eq,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    for label in labels {
        drop(family.get_or_create(&label));
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        // The process metrics keep their conventional unprefixed names, which dashboards expect.
        root.register_collector(Box::new(ProcessCollector {
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }));
        let connections = ConnectionCounters::default();
        let registry = root.sub_registry_with_prefix("zt_sidecar");
        registry.register(
            "build",
            "The sidecar's version and the Cargo features it was built with (always 1)",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                features: if cfg!(feature = "dev") { "dev" } else { "" },
            }),
        );
        registry.register_collector(Box::new(ConnectionCollector(connections.clone())));
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "lookups",
            "Requests on the lookup listener other than the pass-through list and writes, by cache outcome (as in Cache-Status) and status class",
            lookups.clone(),
        );
        create_all(
            &lookups,
            LOOKUP_SERIES.iter().flat_map(|(outcome, classes)| {
                classes.iter().map(|status_class| LookupLabels {
                    outcome,
                    status_class,
                })
            }),
        );
        let pass_through = Family::<StatusClassLabel, Counter>::default();
        registry.register(
            "pass_through_requests",
            "The integrations list and writes, relayed to Cloudflare without the cache, by status class",
            pass_through.clone(),
        );
        create_all(
            &pass_through,
            ANY_CLASS
                .iter()
                .map(|status_class| StatusClassLabel { status_class }),
        );
        let request_duration: HistogramFamily<OutcomeLabel> =
            Family::new_with_constructor(request_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from request to response, by cache outcome (bypass: the pass-through routes)",
            Unit::Seconds,
            request_duration.clone(),
        );
        create_all(
            &request_duration,
            LOOKUP_SERIES
                .iter()
                .map(|(outcome, _)| *outcome)
                .chain([PASS_THROUGH])
                .map(|outcome| OutcomeLabel { outcome }),
        );
        let upstream_requests = Family::<StatusLabel, Counter>::default();
        registry.register(
            "upstream_requests",
            "Requests sent to Cloudflare, by HTTP status (the common ones one by one, the rest by class) or failure kind",
            upstream_requests.clone(),
        );
        create_all(
            &upstream_requests,
            UPSTREAM_STATUSES
                .iter()
                .chain(UPSTREAM_FAILURES)
                .map(|status| StatusLabel { status }),
        );
        let upstream_duration = upstream_histogram();
        registry.register_with_unit(
            "upstream_request_duration",
            "Time of each request to Cloudflare, body included",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let upstream_retries = Counter::default();
        registry.register(
            "upstream_retries",
            "Retries of upstream requests after a connection failure or a 502/503/504",
            upstream_retries.clone(),
        );
        let coalesced_waiters = Counter::default();
        registry.register(
            "coalesced_waiters",
            "Lookups that joined an upstream fetch another lookup had started",
            coalesced_waiters.clone(),
        );
        let stale_answers = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "stale_answers",
            "Lookups answered from a stale entry, by reason",
            stale_answers.clone(),
        );
        create_all(
            &stale_answers,
            STALE_REASONS.iter().map(|reason| ReasonLabel { reason }),
        );
        let local_rate_limited = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "local_rate_limited",
            "Requests answered 429 by the sidecar itself, by reason",
            local_rate_limited.clone(),
        );
        create_all(
            &local_rate_limited,
            LOCAL_RATE_LIMIT_REASONS
                .iter()
                .map(|reason| ReasonLabel { reason }),
        );
        let refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "refusals",
            "Requests the sidecar refused without asking Cloudflare and with nothing stale to serve, by reason",
            refusals.clone(),
        );
        create_all(
            &refusals,
            REFUSAL_REASONS.iter().map(|reason| ReasonLabel { reason }),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Entries in the cache",
            cache_entries.clone(),
        );
        let cache_weighted_bytes = Gauge::default();
        registry.register_with_unit(
            "cache_weighted",
            "Bytes the cache charges against its bound",
            Unit::Bytes,
            cache_weighted_bytes.clone(),
        );
        let cache_evictions = Family::<CauseLabel, Counter>::default();
        registry.register(
            "cache_evictions",
            "Entries removed from the cache, by cause (expired, size, replaced, explicit)",
            cache_evictions.clone(),
        );
        create_all(
            &cache_evictions,
            EVICTION_CAUSES.iter().map(|cause| CauseLabel { cause }),
        );
        let budget_tokens = Gauge::default();
        registry.register(
            "upstream_budget_tokens",
            "Upstream budget tokens left for the credential that last called Cloudflare",
            budget_tokens.clone(),
        );
        // Cloudflare's own count (`Ratelimit`), summarised over credentials: a label per
        // credential would be unbounded.
        let quota_lowest_remaining = Gauge::default();
        registry.register(
            "upstream_quota_lowest_remaining",
            "Fewest calls left in Cloudflare's current window among credentials (its Ratelimit header); -1 before any reading",
            quota_lowest_remaining.clone(),
        );
        quota_lowest_remaining.set(-1);
        let quota_held_credentials = Gauge::default();
        registry.register(
            "upstream_quota_held_credentials",
            "Credentials held at the upstream_reserve of Cloudflare's count until their window resets",
            quota_held_credentials.clone(),
        );
        let breaker_state = Family::<StateLabel, Gauge>::default();
        registry.register(
            "breaker_state",
            "1 for the circuit breaker's current state, 0 for the others",
            breaker_state.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP, a watched secret file changing, POST /reload), by result",
            reloads.clone(),
        );
        create_all(
            &reloads,
            RELOAD_RESULTS.iter().map(|result| ResultLabel { result }),
        );
        let log_lines_dropped = ReadAtScrape::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log writer's queue was full (the writer never makes a request wait)",
            log_lines_dropped.clone(),
        );
        let fleet = crate::fleet::FleetMetrics::register(registry);
        let metrics = Metrics {
            registry: root,
            connections,
            lookups,
            pass_through,
            request_duration,
            upstream_requests,
            upstream_duration,
            upstream_retries,
            coalesced_waiters,
            stale_answers,
            local_rate_limited,
            refusals,
            cache_entries,
            cache_weighted_bytes,
            cache_evictions,
            budget_tokens,
            quota_lowest_remaining,
            quota_held_credentials,
            breaker_state,
            reloads,
            log_lines_dropped,
            fleet,
        };
        metrics.set_breaker_state("closed");
        metrics
    }

    /// The fleet tier's families (Redis calls, L2 reads, lease waits, degraded mode).
    pub fn fleet(&self) -> &crate::fleet::FleetMetrics {
        &self.fleet
    }

    /// The counters the lookup listener's accept loop keeps, read at each scrape.
    pub fn connections(&self) -> &ConnectionCounters {
        &self.connections
    }

    pub fn record_lookup(
        &self,
        outcome: &'static str,
        status: http::StatusCode,
        elapsed: Duration,
    ) {
        let status_class = status_class(status);
        if outcome == PASS_THROUGH {
            self.pass_through
                .get_or_create(&StatusClassLabel { status_class })
                .inc();
        } else {
            self.lookups
                .get_or_create(&LookupLabels {
                    outcome,
                    status_class,
                })
                .inc();
        }
        self.request_duration
            .get_or_create(&OutcomeLabel { outcome })
            .observe(elapsed.as_secs_f64());
    }

    /// `status`: Cloudflare's status code, or the failure kind when there was no answer.
    pub fn record_upstream(&self, status: &str, elapsed: Duration) {
        self.upstream_requests
            .get_or_create(&StatusLabel {
                status: upstream_status_label(status),
            })
            .inc();
        self.upstream_duration.observe(elapsed.as_secs_f64());
    }

    pub fn record_retry(&self) {
        self.upstream_retries.inc();
    }

    pub fn record_coalesced(&self) {
        self.coalesced_waiters.inc();
    }

    pub fn record_stale(&self, reason: &'static str) {
        self.stale_answers
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn record_local_rate_limited(&self, reason: &'static str) {
        self.local_rate_limited
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A request refused without an upstream call; `reason` is one of [`REFUSAL_REASONS`].
    pub fn record_refusal(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn record_eviction(&self, cause: &'static str, count: u64) {
        self.cache_evictions
            .get_or_create(&CauseLabel { cause })
            .inc_by(count);
    }

    pub fn set_budget_tokens(&self, tokens: u32) {
        self.budget_tokens.set(i64::from(tokens));
    }

    /// Where credentials stand by Cloudflare's count: the fewest calls left (`None`: no current
    /// reading) and how many are held at the reserve.
    pub fn set_upstream_quota(&self, lowest_remaining: Option<u64>, held: usize) {
        let lowest = lowest_remaining.map_or(-1, |calls| i64::try_from(calls).unwrap_or(i64::MAX));
        self.quota_lowest_remaining.set(lowest);
        self.quota_held_credentials
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    pub fn record_reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn set_breaker_state(&self, current: &'static str) {
        for state in BREAKER_STATES {
            self.breaker_state
                .get_or_create(&StateLabel { state })
                .set(i64::from(state == current));
        }
    }

    pub fn set_cache_size(&self, entries: u64, weighted_bytes: u64) {
        self.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.cache_weighted_bytes
            .set(i64::try_from(weighted_bytes).unwrap_or(i64::MAX));
    }

    /// Reads the count of dropped log lines from `read` at every scrape. Only the first source set
    /// counts: there is one log writer per process.
    pub fn count_dropped_log_lines(&self, read: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.log_lines_dropped.0.set(Box::new(read));
    }

    /// Lookups answered with each outcome so far (for the stats endpoint). Reads only: it
    /// creates no series.
    pub fn lookups_with_outcome(&self, outcome: &'static str) -> u64 {
        LOOKUP_SERIES
            .iter()
            .filter(|(name, _)| *name == outcome)
            .flat_map(|(_, classes)| classes.iter())
            .filter_map(|status_class| {
                self.lookups
                    .get(&LookupLabels {
                        outcome,
                        status_class,
                    })
                    .map(|counter| counter.get())
            })
            .sum()
    }

    /// The exposition in the text format asked for.
    pub fn encode(&self, format: Exposition) -> String {
        let mut text = String::new();
        let encoded = match format {
            Exposition::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut text, &self.registry)
            }
            Exposition::Classic => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            }
        };
        if let Err(error) = encoded {
            tracing::error!(%error, "could not encode metrics");
        }
        text
    }
}

fn status_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Pure: the `status` label of an upstream call: the common statuses as themselves, the rest by
/// class, a failure kind as itself.
fn upstream_status_label(status: &str) -> &'static str {
    if let Some(failure) = UPSTREAM_FAILURES.iter().find(|kind| **kind == status) {
        return failure;
    }
    let Ok(code) = http::StatusCode::from_bytes(status.as_bytes()) else {
        return "other";
    };
    UPSTREAM_STATUSES
        .iter()
        .find(|known| **known == code.as_str())
        .copied()
        .unwrap_or_else(|| status_class(code))
}

/// The lookup listener's connection counters, as metrics.
#[derive(Debug)]
struct ConnectionCollector(ConnectionCounters);

impl Collector for ConnectionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = &self.0;
        for (name, help, value) in [
            (
                "connections_accepted",
                "Connections the lookup listener accepted and served",
                counts.accepted(),
            ),
            (
                "connections_refused",
                "Connections the lookup listener refused at its connection limit (max_connections)",
                counts.refused(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let open = ConstGauge::new(i64::try_from(counts.open()).unwrap_or(i64::MAX));
        open.encode(encoder.encode_descriptor(
            "connections_open",
            "Connections open on the lookup listener",
            None,
            open.metric_type(),
        )?)
    }
}

/// The conventional process metrics, read from `/proc/self` at each scrape (Linux only; a
/// figure that cannot be read is left out rather than reported as zero).
#[derive(Debug)]
struct ProcessCollector {
    started: Duration,
}

/// Clock ticks per second of `/proc/self/stat`'s CPU times: `USER_HZ`, which Linux fixes at 100
/// for user space on every architecture we build for.
const USER_HZ: f64 = 100.0;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let start = ConstGauge::new(self.started.as_secs_f64());
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            None,
            start.metric_type(),
        )?)?;
        if let Some(seconds) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| cpu_seconds(&stat))
        {
            let cpu = ConstCounter::new(seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time the process spent, in seconds",
                None,
                cpu.metric_type(),
            )?)?;
        }
        if let Some(bytes) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| resident_bytes(&status))
        {
            let rss = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
            rss.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size of the process, in bytes",
                None,
                rss.metric_type(),
            )?)?;
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            let open = ConstGauge::new(i64::try_from(entries.count()).unwrap_or(i64::MAX));
            open.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors of the process",
                None,
                open.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Pure: user plus system CPU seconds from `/proc/self/stat` (fields 14 and 15, counted after
/// the command name, which may itself hold spaces and parentheses).
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / USER_HZ)
}

/// Pure: the resident set size from `/proc/self/status`'s `VmRSS: N kB` line, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_follow_prometheus_conventions() {
        let metrics = Metrics::new();
        metrics.record_lookup("hit", http::StatusCode::OK, Duration::from_micros(80));
        metrics.record_upstream("200", Duration::from_millis(40));
        metrics.record_stale("stale-if-error");
        metrics.set_cache_size(3, 2048);
        let text = metrics.encode(Exposition::OpenMetrics);
        for line in [
            "zt_sidecar_lookups_total{outcome=\"hit\",status_class=\"2xx\"} 1",
            "zt_sidecar_upstream_requests_total{status=\"200\"} 1",
            "zt_sidecar_stale_answers_total{reason=\"stale-if-error\"} 1",
            "zt_sidecar_cache_entries 3",
            "zt_sidecar_cache_weighted_bytes 2048",
            "zt_sidecar_breaker_state{state=\"closed\"} 1",
            "zt_sidecar_breaker_state{state=\"open\"} 0",
            "zt_sidecar_request_duration_seconds_count{outcome=\"hit\"} 1",
            "zt_sidecar_upstream_request_duration_seconds_count 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert_eq!(metrics.lookups_with_outcome("hit"), 1);
    }

    /// Each outcome and status class is its own series, and durations are kept per outcome.
    #[test]
    fn hits_of_each_status_class_are_counted_in_their_series() {
        let metrics = Metrics::new();
        let elapsed = Duration::from_micros(80);
        metrics.record_lookup("hit", http::StatusCode::OK, elapsed);
        metrics.record_lookup("hit", http::StatusCode::OK, elapsed);
        metrics.record_lookup("hit", http::StatusCode::NOT_FOUND, elapsed);
        metrics.record_lookup("miss", http::StatusCode::OK, elapsed);
        let text = metrics.encode(Exposition::OpenMetrics);
        for line in [
            "zt_sidecar_lookups_total{outcome=\"hit\",status_class=\"2xx\"} 2",
            "zt_sidecar_lookups_total{outcome=\"hit\",status_class=\"4xx\"} 1",
            "zt_sidecar_lookups_total{outcome=\"miss\",status_class=\"2xx\"} 1",
            "zt_sidecar_request_duration_seconds_count{outcome=\"hit\"} 3",
            "zt_sidecar_request_duration_seconds_count{outcome=\"miss\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert_eq!(metrics.lookups_with_outcome("hit"), 3);
    }

    /// Every series exists, at zero and with its help text, before anything happened, and no
    /// read of the stats creates one.
    #[test]
    fn every_series_exists_from_the_start_and_reads_create_none() {
        let metrics = Metrics::new();
        let before = metrics.encode(Exposition::OpenMetrics);
        for line in [
            "zt_sidecar_lookups_total{outcome=\"hit\",status_class=\"2xx\"} 0",
            "zt_sidecar_lookups_total{outcome=\"collapsed\",status_class=\"5xx\"} 0",
            "zt_sidecar_pass_through_requests_total{status_class=\"2xx\"} 0",
            "zt_sidecar_upstream_requests_total{status=\"429\"} 0",
            "zt_sidecar_upstream_requests_total{status=\"upstream-connect-failed\"} 0",
            "zt_sidecar_refusals_total{reason=\"pending-lookups\"} 0",
            "zt_sidecar_stale_answers_total{reason=\"stale-if-error\"} 0",
            "zt_sidecar_config_reloads_total{result=\"rejected\"} 0",
            "zt_sidecar_request_duration_seconds_count{outcome=\"bypass\"} 0",
            "zt_sidecar_connections_accepted_total 0",
            "zt_sidecar_connections_refused_total 0",
            "zt_sidecar_connections_open 0",
            "# HELP zt_sidecar_lookups Requests on the lookup listener",
        ] {
            assert!(before.contains(line), "missing {line:?} in:\n{before}");
        }
        assert!(
            before.contains("zt_sidecar_build_info{version=\""),
            "{before}"
        );
        for impossible in [
            "outcome=\"hit\",status_class=\"other\"",
            "outcome=\"bypass\",status",
        ] {
            assert!(!before.contains(impossible), "{impossible} in:\n{before}");
        }
        for (outcome, _) in LOOKUP_SERIES {
            assert_eq!(metrics.lookups_with_outcome(outcome), 0);
        }
        assert_eq!(metrics.lookups_with_outcome("no-such-outcome"), 0);
        // The process figures move by themselves; the sidecar's own series must not.
        let own_series = |text: &str| -> Vec<String> {
            let mut lines: Vec<String> = text
                .lines()
                .filter(|line| line.contains("zt_sidecar_"))
                .map(str::to_owned)
                .collect();
            lines.sort();
            lines
        };
        assert_eq!(
            own_series(&metrics.encode(Exposition::OpenMetrics)),
            own_series(&before)
        );
    }

    /// Writes and lists are not lookups: they are counted on their own.
    #[test]
    fn pass_through_requests_are_counted_apart_from_lookups() {
        let metrics = Metrics::new();
        metrics.record_lookup(
            "bypass",
            http::StatusCode::CREATED,
            Duration::from_millis(3),
        );
        let text = metrics.encode(Exposition::OpenMetrics);
        assert!(
            text.contains("zt_sidecar_pass_through_requests_total{status_class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(!text.contains("outcome=\"bypass\",status_class"), "{text}");
    }

    #[test]
    fn upstream_statuses_are_a_closed_vocabulary() {
        for (given, label) in [
            ("200", "200"),
            ("429", "429"),
            ("201", "2xx"),
            ("418", "4xx"),
            ("599", "5xx"),
            ("302", "3xx"),
            ("799", "other"),
            ("upstream-timeout", "upstream-timeout"),
            ("nonsense", "other"),
        ] {
            assert_eq!(upstream_status_label(given), label, "{given}");
        }
    }

    #[test]
    fn the_accept_header_chooses_the_text_format() {
        for (accept, expected) in [
            (None, Exposition::OpenMetrics),
            (Some("*/*"), Exposition::OpenMetrics),
            (Some("text/plain;version=0.0.4"), Exposition::Classic),
            (Some("text/plain; version=0.0.4; charset=utf-8"), Exposition::Classic),
            (Some("application/openmetrics-text; version=1.0.0"), Exposition::OpenMetrics),
            // Prometheus 2's default: OpenMetrics first.
            (
                Some("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"),
                Exposition::OpenMetrics,
            ),
            // Prometheus with the classic format preferred (`scrape_protocols`).
            (
                Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5"),
                Exposition::Classic,
            ),
            (Some("text/plain;q=0"), Exposition::OpenMetrics),
        ] {
            assert_eq!(Exposition::negotiate(accept), expected, "{accept:?}");
        }
    }

    #[test]
    fn the_classic_format_names_counters_by_their_samples_and_has_no_eof() {
        let metrics = Metrics::new();
        let text = metrics.encode(Exposition::Classic);
        assert!(
            text.contains("# TYPE zt_sidecar_lookups_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE zt_sidecar_build_info gauge"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        let open_metrics = metrics.encode(Exposition::OpenMetrics);
        assert!(open_metrics.ends_with("# EOF\n"), "{open_metrics}");
    }

    #[test]
    fn process_figures_are_read_from_proc_self() {
        let stat =
            "4242 (zt risk (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 5 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        assert_eq!(cpu_seconds("garbage"), None);
        let status = "Name:\tzt-risk-sidecar\nVmRSS:\t   12345 kB\nThreads:\t9\n";
        assert_eq!(resident_bytes(status), Some(12345 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
        let text = Metrics::new().encode(Exposition::Classic);
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}:\n{text}"
            );
        }
    }
}
