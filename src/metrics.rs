//! Prometheus metrics: the families, their names and labels, and the text exposition (by the
//! prometheus-client crate, not by hand). Labels are only small closed vocabularies: never an
//! account id, a reference id or anything derived from a credential.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

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
    status: String,
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

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    // 50 µs to about 13 s: hits sit at the bottom, upstream round trips in the middle.
    Histogram::new(exponential_buckets(0.000_05, 2.5, 14))
}

fn upstream_histogram() -> Histogram {
    // 5 ms to about 20 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
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

/// Every metric of the process. Cheap to share behind an `Arc`; all updates are atomic.
pub struct Metrics {
    registry: Registry,
    lookups: Family<LookupLabels, Counter>,
    request_duration: HistogramFamily<OutcomeLabel>,
    upstream_requests: Family<StatusLabel, Counter>,
    upstream_duration: Histogram,
    upstream_retries: Counter,
    coalesced_waiters: Counter,
    stale_answers: Family<ReasonLabel, Counter>,
    local_rate_limited: Family<ReasonLabel, Counter>,
    cache_entries: Gauge,
    cache_weighted_bytes: Gauge,
    cache_evictions: Family<CauseLabel, Counter>,
    budget_tokens: Gauge,
    breaker_state: Family<StateLabel, Gauge>,
    reloads: Family<ResultLabel, Counter>,
    log_lines_dropped: ReadAtScrape,
}

/// The breaker states, for the state-set gauge.
pub const BREAKER_STATES: [&str; 3] = ["closed", "half-open", "open"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("zt_sidecar");
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "lookups",
            "Lookup requests answered, by cache outcome (as in Cache-Status) and status class",
            lookups.clone(),
        );
        let request_duration: HistogramFamily<OutcomeLabel> =
            Family::new_with_constructor(request_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from request to response, by cache outcome",
            Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_requests = Family::<StatusLabel, Counter>::default();
        registry.register(
            "upstream_requests",
            "Requests sent to Cloudflare, by HTTP status or failure kind",
            upstream_requests.clone(),
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
        let local_rate_limited = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "local_rate_limited",
            "Lookups answered 429 by the sidecar itself, by reason",
            local_rate_limited.clone(),
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
        let budget_tokens = Gauge::default();
        registry.register(
            "upstream_budget_tokens",
            "Upstream budget tokens left for the credential that last called Cloudflare",
            budget_tokens.clone(),
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
            "Configuration reloads on SIGHUP, by result",
            reloads.clone(),
        );
        let log_lines_dropped = ReadAtScrape::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log writer's queue was full (the writer never makes a request wait)",
            log_lines_dropped.clone(),
        );
        let metrics = Metrics {
            registry,
            lookups,
            request_duration,
            upstream_requests,
            upstream_duration,
            upstream_retries,
            coalesced_waiters,
            stale_answers,
            local_rate_limited,
            cache_entries,
            cache_weighted_bytes,
            cache_evictions,
            budget_tokens,
            breaker_state,
            reloads,
            log_lines_dropped,
        };
        metrics.set_breaker_state("closed");
        metrics
    }

    pub fn record_lookup(
        &self,
        outcome: &'static str,
        status: http::StatusCode,
        elapsed: Duration,
    ) {
        self.lookups
            .get_or_create(&LookupLabels {
                outcome,
                status_class: status_class(status),
            })
            .inc();
        self.request_duration
            .get_or_create(&OutcomeLabel { outcome })
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_upstream(&self, status: &str, elapsed: Duration) {
        self.upstream_requests
            .get_or_create(&StatusLabel {
                status: status.to_owned(),
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

    pub fn record_eviction(&self, cause: &'static str, count: u64) {
        self.cache_evictions
            .get_or_create(&CauseLabel { cause })
            .inc_by(count);
    }

    pub fn set_budget_tokens(&self, tokens: u32) {
        self.budget_tokens.set(i64::from(tokens));
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

    /// Lookups answered with each outcome so far (for the stats endpoint).
    pub fn lookups_with_outcome(&self, outcome: &'static str) -> u64 {
        ["2xx", "3xx", "4xx", "5xx", "other"]
            .into_iter()
            .map(|status_class| {
                self.lookups
                    .get_or_create(&LookupLabels {
                        outcome,
                        status_class,
                    })
                    .get()
            })
            .sum()
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
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
        let text = metrics.encode();
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
        let text = metrics.encode();
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
}
