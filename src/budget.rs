//! The upstream budget: how many calls each credential may make to Cloudflare, and the cool-down a
//! credential serves after Cloudflare answered it 429. Both belong to one credential partition. The
//! request path sees only the small [`UpstreamBudget`] trait, so a budget shared by a fleet of
//! sidecars (Redis) can replace [`LocalBudget`] without rewiring anything.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::credentials::Partition;

/// The longest cool-down honoured from a `Retry-After`, so that a bogus header cannot silence a
/// credential for days.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(3600);

/// Cloudflare blocks a user for five minutes once the limit is hit; without a `Retry-After`, the
/// sidecar assumes that.
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(300);

/// A token bucket: `requests` per `period` on average, with bursts of up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetPolicy {
    pub requests: NonZeroU32,
    pub period: Duration,
    pub burst: NonZeroU32,
}

impl BudgetPolicy {
    fn quota(&self) -> Quota {
        // One token comes back every period/requests; `with_period` refuses only a zero period,
        // which config validation already rules out.
        let per_token = self.period / self.requests.get();
        Quota::with_period(per_token.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(self.requests))
            .allow_burst(self.burst)
    }
}

/// Whether a credential may make one upstream call now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; `tokens_left` more calls are allowed right now.
    Granted { tokens_left: u32 },
    /// The credential's bucket is empty; a token comes back after `retry_after`.
    Exhausted { retry_after: Duration },
    /// Cloudflare answered this credential 429; it may call again after `retry_after`.
    CoolingDown { retry_after: Duration },
}

/// The budget interface of the request path.
pub trait UpstreamBudget: Send + Sync + 'static {
    /// Takes one token for `partition`, unless it is cooling down or out of tokens.
    fn admit(&self, partition: Partition) -> impl Future<Output = Admission> + Send;
    /// Records that Cloudflare answered `partition` 429 and asked it to wait `wait`.
    fn cool_down(&self, partition: Partition, wait: Duration) -> impl Future<Output = ()> + Send;
    /// Applies a new policy (on reload). Cool-downs are kept.
    fn set_policy(&self, policy: BudgetPolicy);
}

/// Tokio's clock for governor, so that the budget follows a paused test clock like every other
/// timer of the sidecar.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

/// A reading of [`TokioClock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(Instant);

impl Add<Nanos> for TokioInstant {
    type Output = TokioInstant;

    fn add(self, other: Nanos) -> TokioInstant {
        TokioInstant(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        self.0
            .checked_sub(Duration::from(duration))
            .map_or(*self, TokioInstant)
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

type KeyedLimiter =
    RateLimiter<Partition, DashMapStateStore<Partition>, TokioClock, StateInformationMiddleware>;

fn keyed_limiter(policy: &BudgetPolicy) -> KeyedLimiter {
    RateLimiter::dashmap_with_clock(policy.quota(), TokioClock)
        .with_middleware::<StateInformationMiddleware>()
}

/// The in-process budget: governor's keyed GCRA limiter plus a table of cool-downs.
pub struct LocalBudget {
    limiter: ArcSwap<KeyedLimiter>,
    cool_downs: Mutex<HashMap<Partition, Instant>>,
    calls: AtomicU64,
}

/// Forget idle credentials every this many calls, so the tables stay as small as the set of
/// credentials actually in use.
const HOUSEKEEPING_EVERY: u64 = 4096;

impl LocalBudget {
    pub fn new(policy: BudgetPolicy) -> LocalBudget {
        LocalBudget {
            limiter: ArcSwap::from_pointee(keyed_limiter(&policy)),
            cool_downs: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
        }
    }

    fn housekeeping(&self, now: Instant) {
        let limiter = self.limiter.load();
        limiter.retain_recent();
        limiter.shrink_to_fit();
        self.cool_downs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, until| *until > now);
    }

    /// The admission decision, synchronous: the local tables never wait.
    pub fn admit_now(&self, partition: Partition) -> Admission {
        let now = Instant::now();
        if self.calls.fetch_add(1, Ordering::Relaxed) % HOUSEKEEPING_EVERY == HOUSEKEEPING_EVERY - 1
        {
            self.housekeeping(now);
        }
        let cooling_until = self
            .cool_downs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&partition)
            .copied();
        if let Some(until) = cooling_until {
            if until > now {
                return Admission::CoolingDown {
                    retry_after: until - now,
                };
            }
        }
        match self.limiter.load().check_key(&partition) {
            Ok(snapshot) => Admission::Granted {
                tokens_left: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Admission::Exhausted {
                retry_after: not_until.wait_time_from(TokioInstant(now)),
            },
        }
    }

    pub fn cool_down_now(&self, partition: Partition, wait: Duration) {
        let until = Instant::now() + wait.min(MAX_COOL_DOWN);
        let mut cool_downs = self
            .cool_downs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = cool_downs.entry(partition).or_insert(until);
        // A later 429 never shortens a cool-down already in force.
        if *entry < until {
            *entry = until;
        }
    }
}

impl UpstreamBudget for LocalBudget {
    async fn admit(&self, partition: Partition) -> Admission {
        self.admit_now(partition)
    }

    async fn cool_down(&self, partition: Partition, wait: Duration) {
        self.cool_down_now(partition, wait);
    }

    /// A new limiter replaces the old one: every credential starts with a full bucket under the
    /// new policy. Reloads are rare operator actions; carrying fractional state across quotas
    /// would add nothing worth its complexity.
    fn set_policy(&self, policy: BudgetPolicy) {
        self.limiter.store(Arc::new(keyed_limiter(&policy)));
    }
}

/// Pure: the wait a 429 asks for. `Retry-After` in seconds (Cloudflare's form) or absent.
pub fn cool_down_for(retry_after: Option<&str>) -> Duration {
    retry_after
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map_or(DEFAULT_COOL_DOWN, Duration::from_secs)
        .min(MAX_COOL_DOWN)
}

/// Pure: a wait in whole seconds for `Retry-After`, rounded up (never 0 while there is a wait).
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs();
    if wait.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{extract, PartitionKey};
    use http::{HeaderMap, HeaderValue};

    fn partition(token: &str) -> Partition {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        thread_local!(static KEY: PartitionKey = PartitionKey::random());
        KEY.with(|key| {
            extract(&headers, None, key)
                .expect("credentials")
                .partition()
        })
    }

    fn policy(requests: u32, period_secs: u64, burst: u32) -> BudgetPolicy {
        BudgetPolicy {
            requests: NonZeroU32::new(requests).expect("non-zero"),
            period: Duration::from_secs(period_secs),
            burst: NonZeroU32::new(burst).expect("non-zero"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_token_per_interval_per_credential() {
        // 10 per 10 s: one token per second, bursts of 3.
        let budget = LocalBudget::new(policy(10, 10, 3));
        let a = partition("a");
        for tokens_left in [2, 1, 0] {
            assert_eq!(budget.admit(a).await, Admission::Granted { tokens_left });
        }
        let Admission::Exhausted { retry_after } = budget.admit(a).await else {
            panic!("the burst is spent");
        };
        assert!(
            retry_after <= Duration::from_secs(1) && retry_after > Duration::ZERO,
            "{retry_after:?}"
        );
        // Another credential has its own bucket.
        assert_eq!(
            budget.admit(partition("b")).await,
            Admission::Granted { tokens_left: 2 }
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(budget.admit(a).await, Admission::Granted { tokens_left: 0 });
        assert!(matches!(budget.admit(a).await, Admission::Exhausted { .. }));
        // A new policy applies at once.
        budget.set_policy(policy(10, 10, 5));
        assert_eq!(budget.admit(a).await, Admission::Granted { tokens_left: 4 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_cool_down_blocks_one_credential_until_it_ends() {
        let budget = LocalBudget::new(policy(1000, 300, 50));
        let a = partition("a");
        budget.cool_down(a, Duration::from_secs(120)).await;
        assert_eq!(
            budget.admit(a).await,
            Admission::CoolingDown {
                retry_after: Duration::from_secs(120)
            }
        );
        assert!(matches!(
            budget.admit(partition("b")).await,
            Admission::Granted { .. }
        ));
        // A shorter, later 429 does not shorten it.
        budget.cool_down(a, Duration::from_secs(5)).await;
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(
            budget.admit(a).await,
            Admission::CoolingDown {
                retry_after: Duration::from_secs(20)
            }
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(matches!(budget.admit(a).await, Admission::Granted { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn housekeeping_forgets_idle_credentials() {
        let budget = LocalBudget::new(policy(10, 10, 1));
        for index in 0..100 {
            budget.admit(partition(&format!("t{index}"))).await;
        }
        budget
            .cool_down(partition("t0"), Duration::from_secs(1))
            .await;
        tokio::time::advance(Duration::from_secs(5)).await;
        budget.housekeeping(Instant::now());
        assert_eq!(budget.limiter.load().len(), 0);
        assert!(budget.cool_downs.lock().expect("lock").is_empty());
    }

    #[test]
    fn cool_down_and_retry_after_rules() {
        assert_eq!(cool_down_for(Some("30")), Duration::from_secs(30));
        assert_eq!(cool_down_for(Some(" 7 ")), Duration::from_secs(7));
        assert_eq!(cool_down_for(None), DEFAULT_COOL_DOWN);
        assert_eq!(cool_down_for(Some("soon")), DEFAULT_COOL_DOWN);
        assert_eq!(cool_down_for(Some("-5")), DEFAULT_COOL_DOWN);
        assert_eq!(cool_down_for(Some("999999")), MAX_COOL_DOWN);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 0);
    }

    #[test]
    fn quota_matches_the_policy() {
        let quota = policy(1000, 300, 50).quota();
        assert_eq!(quota.burst_size().get(), 50);
        assert_eq!(quota.replenish_interval(), Duration::from_millis(300));
    }
}
