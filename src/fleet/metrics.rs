//! The fleet tier's metric families: Redis calls by operation and outcome and their latency, L2
//! reads, lease waits, degraded mode, invalidations and L1 flushes. Every series exists from the
//! start (closed vocabularies below), at zero while no Redis is configured. It only counts; it
//! must not decide anything.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Every Redis operation the sidecar performs, as the `op` label. The budget side uses `budget`
/// (admission), `cool_down` and `quota`.
pub const REDIS_OPS: &[&str] = &[
    "get",
    "set",
    "lease",
    "renew",
    "release",
    "publish",
    "subscribe",
    "invalidate",
    "budget",
    "cool_down",
    "quota",
];

/// How one Redis call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    Ok,
    /// Redis answered with an error, or with a reply of the wrong shape, or the connection broke.
    Error,
    /// No answer within `redis_timeout`.
    Timeout,
    /// Not tried: the breaker is open.
    BreakerOpen,
}

impl CallOutcome {
    pub const ALL: [CallOutcome; 4] = [
        CallOutcome::Ok,
        CallOutcome::Error,
        CallOutcome::Timeout,
        CallOutcome::BreakerOpen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Error => "error",
            CallOutcome::Timeout => "timeout",
            CallOutcome::BreakerOpen => "breaker_open",
        }
    }
}

/// What an L2 read found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L2Read {
    Hit,
    Miss,
    /// A value that failed to decrypt or to decode: treated as a miss.
    Undecryptable,
    /// Redis did not answer (or is degraded): treated as a miss.
    Unavailable,
}

impl L2Read {
    pub const ALL: [L2Read; 4] = [
        L2Read::Hit,
        L2Read::Miss,
        L2Read::Undecryptable,
        L2Read::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            L2Read::Hit => "hit",
            L2Read::Miss => "miss",
            L2Read::Undecryptable => "undecryptable",
            L2Read::Unavailable => "unavailable",
        }
    }
}

/// How a wait for another sidecar's fetch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseWait {
    /// The entry arrived.
    Filled,
    /// The caller's deadline came first.
    TimedOut,
    /// The lease expired or was let go without an entry: this sidecar fetched.
    TookOver,
    /// The lease was free, but another sidecar had just stored a newer entry: this sidecar took
    /// it and let the lease go without fetching.
    Newer,
}

impl LeaseWait {
    pub const ALL: [LeaseWait; 4] = [
        LeaseWait::Filled,
        LeaseWait::TimedOut,
        LeaseWait::TookOver,
        LeaseWait::Newer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LeaseWait::Filled => "filled",
            LeaseWait::TimedOut => "timed_out",
            LeaseWait::TookOver => "took_over",
            LeaseWait::Newer => "newer",
        }
    }
}

/// Which way an invalidation went.
pub const INVALIDATION_DIRECTIONS: [&str; 2] = ["sent", "received"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// Creates the series of every outcome, so that each exists, at zero, from the start.
fn create_outcomes(
    family: &Family<OutcomeLabel, Counter>,
    outcomes: impl IntoIterator<Item = &'static str>,
) {
    for outcome in outcomes {
        drop(family.get_or_create(&OutcomeLabel { outcome }));
    }
}

fn redis_histogram() -> Histogram {
    // 50 µs to about 0.8 s: a healthy call sits at the bottom, a timeout at `redis_timeout`.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 15))
}

/// The fleet tier's metrics; cheap to clone (every family is shared).
#[derive(Clone, Debug)]
pub struct FleetMetrics {
    redis_calls: Family<CallLabels, Counter>,
    redis_duration: Family<OpLabel, Histogram, fn() -> Histogram>,
    l2_reads: Family<OutcomeLabel, Counter>,
    lease_waits: Family<OutcomeLabel, Counter>,
    degraded: Gauge,
    invalidations: Family<DirectionLabel, Counter>,
    l1_flushes: Counter,
}

impl FleetMetrics {
    /// Registers every family in `registry` (the `zt_sidecar` one) and creates every series.
    pub fn register(registry: &mut Registry) -> FleetMetrics {
        let redis_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "redis_calls",
            "Calls to the fleet's Redis, by operation and outcome (ok, error, timeout, breaker_open)",
            redis_calls.clone(),
        );
        let redis_duration: Family<OpLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(redis_histogram);
        registry.register_with_unit(
            "redis_call_duration",
            "Time of each call to the fleet's Redis that was tried, by operation",
            Unit::Seconds,
            redis_duration.clone(),
        );
        for op in REDIS_OPS {
            drop(redis_duration.get_or_create(&OpLabel { op }));
            for outcome in CallOutcome::ALL {
                let labels = CallLabels {
                    op,
                    outcome: outcome.as_str(),
                };
                drop(redis_calls.get_or_create(&labels));
            }
        }
        let l2_reads = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "fleet_l2_reads",
            "Reads of the fleet's shared cache (Redis) after a local miss, by outcome",
            l2_reads.clone(),
        );
        create_outcomes(&l2_reads, L2Read::ALL.map(L2Read::as_str));
        let lease_waits = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "fleet_lease_waits",
            "Waits for another sidecar's fetch of the same key (and fetches skipped for its newer entry), by outcome",
            lease_waits.clone(),
        );
        create_outcomes(&lease_waits, LeaseWait::ALL.map(LeaseWait::as_str));
        let degraded = Gauge::default();
        registry.register(
            "fleet_degraded",
            "1 while the fleet's Redis is unreachable or its subscription lost (local cache and local budget share only), else 0",
            degraded.clone(),
        );
        let invalidations = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "fleet_invalidations",
            "Invalidations (purges and writes) sent to the fleet and received from it",
            invalidations.clone(),
        );
        for direction in INVALIDATION_DIRECTIONS {
            drop(invalidations.get_or_create(&DirectionLabel { direction }));
        }
        let l1_flushes = Counter::default();
        registry.register(
            "fleet_l1_flushes",
            "Times the local cache was dropped because the invalidation subscription was lost",
            l1_flushes.clone(),
        );
        FleetMetrics {
            redis_calls,
            redis_duration,
            l2_reads,
            lease_waits,
            degraded,
            invalidations,
            l1_flushes,
        }
    }

    /// `op` must be one of [`REDIS_OPS`]; `elapsed` is recorded for calls that were tried.
    pub fn record_call(&self, op: &'static str, outcome: CallOutcome, elapsed: Option<Duration>) {
        let labels = CallLabels {
            op,
            outcome: outcome.as_str(),
        };
        self.redis_calls.get_or_create(&labels).inc();
        if let Some(elapsed) = elapsed {
            self.redis_duration
                .get_or_create(&OpLabel { op })
                .observe(elapsed.as_secs_f64());
        }
    }

    /// How many calls of `op` ended with `outcome` so far (reads an existing series only).
    pub fn calls(&self, op: &'static str, outcome: CallOutcome) -> u64 {
        let labels = CallLabels {
            op,
            outcome: outcome.as_str(),
        };
        if !REDIS_OPS.contains(&op) {
            return 0;
        }
        self.redis_calls.get_or_create(&labels).get()
    }

    pub fn record_l2_read(&self, read: L2Read) {
        let outcome = read.as_str();
        self.l2_reads.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn record_lease_wait(&self, wait: LeaseWait) {
        let outcome = wait.as_str();
        self.lease_waits
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn set_degraded(&self, degraded: bool) {
        self.degraded.set(i64::from(degraded));
    }

    pub fn record_invalidation_sent(&self) {
        let direction = INVALIDATION_DIRECTIONS[0];
        self.invalidations
            .get_or_create(&DirectionLabel { direction })
            .inc();
    }

    pub fn record_invalidation_received(&self) {
        let direction = INVALIDATION_DIRECTIONS[1];
        self.invalidations
            .get_or_create(&DirectionLabel { direction })
            .inc();
    }

    pub fn record_l1_flush(&self) {
        self.l1_flushes.inc();
    }
}
