//! The upstream budget: how many calls each credential may make to Cloudflare, the cool-down a
//! credential serves after Cloudflare answered it 429, and the latest count Cloudflare's
//! `Ratelimit` header gave for it (the pacing decision itself is pure, in ratelimit.rs). All
//! belong to one credential partition. The request path sees only the small [`UpstreamBudget`]
//! trait, so a budget shared by a fleet of sidecars (Redis) can replace [`LocalBudget`] without
//! rewiring anything. It must not know about the cache.

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
use crate::ratelimit::{pace, Pace, QuotaReading, QuotaState, Reserves, Share, Work};

/// The longest cool-down honoured from a `Retry-After`, so that a bogus header cannot silence a
/// credential for days.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(3600);

/// Cloudflare blocks a user for five minutes once the limit is hit; without a `Retry-After`, the
/// sidecar assumes that.
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(300);

/// A token bucket: `requests` per `period` on average, with bursts of up to `burst`; and the
/// reserves of Cloudflare's own count that callers and background refreshes leave untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetPolicy {
    pub requests: NonZeroU32,
    pub period: Duration,
    pub burst: NonZeroU32,
    pub reserves: Reserves,
}

impl BudgetPolicy {
    fn quota(&self) -> Quota {
        quota_of(self.requests, self.period, self.burst)
    }

    /// The share of the bucket background refreshes may use: all but the refresh reserve, so
    /// that a caller with a cold key always finds tokens that refreshes could not take. `None`
    /// when that share rounds to nothing: refreshes then never call.
    fn refresh_quota(&self) -> Option<Quota> {
        let (requests, burst) = self.refresh_share()?;
        Some(quota_of(requests, self.period, burst))
    }

    /// Pure: the requests and burst of the refreshes' share of the bucket (see
    /// [`Self::refresh_quota`]); `None` when either rounds to nothing.
    pub fn refresh_share(&self) -> Option<(NonZeroU32, NonZeroU32)> {
        let without_reserve = |value: NonZeroU32| {
            let kept = self.reserves.refresh.of(u64::from(value.get()));
            let left = u64::from(value.get()).saturating_sub(kept);
            NonZeroU32::new(u32::try_from(left).unwrap_or(u32::MAX))
        };
        Some((
            without_reserve(self.requests)?,
            without_reserve(self.burst)?,
        ))
    }

    /// Pure: one sidecar's share of a budget that `fleet_size` sidecars spend together, for the
    /// time it cannot reach the others: requests and burst divided, rounded down, at least one,
    /// so that the fleet together never spends more than the budget. Period and reserves stay.
    pub fn fleet_share(&self, fleet_size: NonZeroU32) -> BudgetPolicy {
        let divide = |value: NonZeroU32| {
            NonZeroU32::new(value.get() / fleet_size).unwrap_or(NonZeroU32::MIN)
        };
        BudgetPolicy {
            requests: divide(self.requests),
            burst: divide(self.burst),
            ..*self
        }
    }
}

fn quota_of(requests: NonZeroU32, period: Duration, burst: NonZeroU32) -> Quota {
    // One token comes back every period/requests; `with_period` refuses only a zero period,
    // which config validation already rules out.
    let per_token = period / requests.get();
    Quota::with_period(per_token.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(requests))
        .allow_burst(burst)
}

/// The default reserves: callers leave 10 % of Cloudflare's quota to the user's other tools, and
/// background refreshes leave another 15 % to callers.
pub const DEFAULT_RESERVES: Reserves = Reserves {
    caller: Share::TEN_PERCENT,
    refresh: Share::TWENTY_FIVE_PERCENT,
};

/// Whether a credential may make one upstream call now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; `tokens_left` more calls are allowed right now.
    Granted { tokens_left: u32 },
    /// The credential's bucket is empty; a token comes back after `retry_after`.
    Exhausted { retry_after: Duration },
    /// Cloudflare answered this credential 429; it may call again after `retry_after`.
    CoolingDown { retry_after: Duration },
    /// Cloudflare's own count for this credential is at or below the reserve for this kind of
    /// work; the window resets after `retry_after`.
    AtReserve { retry_after: Duration },
}

/// Where the credentials stand by Cloudflare's count, for the metrics: no label per credential.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaSummary {
    /// The fewest calls left among credentials with a current reading (`None`: no reading).
    pub lowest_remaining: Option<u64>,
    /// Credentials whose callers are held at the reserve until their window resets.
    pub held_at_reserve: usize,
}

/// The budget interface of the request path.
pub trait UpstreamBudget: Send + Sync + 'static {
    /// Takes one token for `partition` to do `work`, unless it is cooling down, out of tokens, or
    /// at the reserve of Cloudflare's count for that work.
    fn admit(&self, partition: Partition, work: Work) -> impl Future<Output = Admission> + Send;
    /// Records the count Cloudflare's `Ratelimit` header gave for `partition`, and returns where
    /// all credentials now stand.
    fn observe(
        &self,
        partition: Partition,
        reading: QuotaReading,
    ) -> impl Future<Output = QuotaSummary> + Send;
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

/// The limiters of one policy, replaced together on reload.
struct Limiters {
    policy: BudgetPolicy,
    all: KeyedLimiter,
    /// Background refreshes pass this one too; `None`: they never call.
    refreshes: Option<KeyedLimiter>,
}

impl Limiters {
    fn new(policy: BudgetPolicy) -> Limiters {
        Limiters {
            policy,
            all: keyed_limiter(&policy),
            refreshes: policy.refresh_quota().map(|quota| {
                RateLimiter::dashmap_with_clock(quota, TokioClock)
                    .with_middleware::<StateInformationMiddleware>()
            }),
        }
    }
}

/// The in-process budget: governor's keyed GCRA limiters, a table of cool-downs and a table of
/// Cloudflare's counts.
pub struct LocalBudget {
    limiters: ArcSwap<Limiters>,
    cool_downs: Mutex<HashMap<Partition, Instant>>,
    quotas: Mutex<HashMap<Partition, QuotaState>>,
    calls: AtomicU64,
}

/// Forget idle credentials every this many calls, so the tables stay as small as the set of
/// credentials actually in use.
const HOUSEKEEPING_EVERY: u64 = 4096;

impl LocalBudget {
    pub fn new(policy: BudgetPolicy) -> LocalBudget {
        LocalBudget {
            limiters: ArcSwap::from_pointee(Limiters::new(policy)),
            cool_downs: Mutex::new(HashMap::new()),
            quotas: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
        }
    }

    fn housekeeping(&self, now: Instant) {
        let limiters = self.limiters.load();
        for limiter in std::iter::once(&limiters.all).chain(limiters.refreshes.as_ref()) {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.cool_downs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, until| *until > now);
        self.quotas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, state| state.is_current(now));
    }

    /// Cloudflare's count: whether `work` is held at its reserve.
    fn pace_now(&self, partition: Partition, work: Work, now: Instant) -> Option<Admission> {
        let reserves = self.limiters.load().policy.reserves;
        let quotas = self.quotas.lock().unwrap_or_else(PoisonError::into_inner);
        match pace(quotas.get(&partition), reserves, work, now) {
            Pace::Hold { retry_after } => Some(Admission::AtReserve { retry_after }),
            Pace::Go => None,
        }
    }

    /// What this process already knows refuses `partition` for `work` at `now`, without spending
    /// a token: a cool-down after a 429, or Cloudflare's count at the reserve for that work.
    pub fn known_refusal(
        &self,
        partition: Partition,
        work: Work,
        now: Instant,
    ) -> Option<Admission> {
        if let Some(retry_after) = self.cooling(partition, now) {
            return Some(Admission::CoolingDown { retry_after });
        }
        self.pace_now(partition, work, now)
    }

    /// The cool-down `partition` is serving now, if any: what is left of it.
    fn cooling(&self, partition: Partition, now: Instant) -> Option<Duration> {
        let until = self
            .cool_downs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&partition)
            .copied()?;
        (until > now).then(|| until - now)
    }

    /// Counts an admitted call against Cloudflare's count before its answer arrives, so that calls
    /// admitted together cannot overshoot the reserve together.
    fn count_call(&self, partition: Partition) {
        let mut quotas = self.quotas.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = quotas.get_mut(&partition) {
            state.remaining = state.remaining.saturating_sub(1);
        }
    }

    /// The admission decision, synchronous: the local tables never wait. The stricter of the
    /// configured bucket and Cloudflare's count decides.
    pub fn admit_now(&self, partition: Partition, work: Work) -> Admission {
        let now = Instant::now();
        if self.calls.fetch_add(1, Ordering::Relaxed) % HOUSEKEEPING_EVERY == HOUSEKEEPING_EVERY - 1
        {
            self.housekeeping(now);
        }
        // A cool-down, then Cloudflare's count: a held credential spends no token of either bucket.
        if let Some(refusal) = self.known_refusal(partition, work, now) {
            return refusal;
        }
        let limiters = self.limiters.load();
        if work == Work::Refresh {
            let Some(refreshes) = &limiters.refreshes else {
                return Admission::Exhausted {
                    retry_after: limiters.policy.period,
                };
            };
            if let Err(not_until) = refreshes.check_key(&partition) {
                return Admission::Exhausted {
                    retry_after: not_until.wait_time_from(TokioInstant(now)),
                };
            }
        }
        match limiters.all.check_key(&partition) {
            Ok(snapshot) => {
                self.count_call(partition);
                Admission::Granted {
                    tokens_left: snapshot.remaining_burst_capacity(),
                }
            }
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

    pub fn observe_now(&self, partition: Partition, reading: QuotaReading) -> QuotaSummary {
        let now = Instant::now();
        let reserves = self.limiters.load().policy.reserves;
        let mut quotas = self.quotas.lock().unwrap_or_else(PoisonError::into_inner);
        let state = match quotas.get(&partition) {
            Some(old) => old.merge(reading, now),
            None => QuotaState::from_reading(reading, now),
        };
        quotas.insert(partition, state);
        // The table holds only credentials in use (housekeeping drops past windows), so a scan
        // per answer is cheap, and it keeps the metrics free of any label per credential.
        let current = quotas.values().filter(|state| state.is_current(now));
        let mut summary = QuotaSummary::default();
        for state in current {
            summary.lowest_remaining = Some(
                summary
                    .lowest_remaining
                    .map_or(state.remaining, |lowest| lowest.min(state.remaining)),
            );
            if pace(Some(state), reserves, Work::Caller, now) != Pace::Go {
                summary.held_at_reserve += 1;
            }
        }
        summary
    }
}

impl UpstreamBudget for LocalBudget {
    async fn admit(&self, partition: Partition, work: Work) -> Admission {
        self.admit_now(partition, work)
    }

    async fn observe(&self, partition: Partition, reading: QuotaReading) -> QuotaSummary {
        self.observe_now(partition, reading)
    }

    async fn cool_down(&self, partition: Partition, wait: Duration) {
        self.cool_down_now(partition, wait);
    }

    /// New limiters replace the old ones: every credential starts with a full bucket under the
    /// new policy. Reloads are rare operator actions; carrying fractional state across quotas
    /// would add nothing worth its complexity. Cloudflare's counts are kept: they are facts, not
    /// policy.
    fn set_policy(&self, policy: BudgetPolicy) {
        self.limiters.store(Arc::new(Limiters::new(policy)));
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
pub(crate) mod tests {
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

    /// A policy of `requests` per `period_secs` with bursts of `burst` and the default reserves.
    pub(crate) fn policy(requests: u32, period_secs: u64, burst: u32) -> BudgetPolicy {
        BudgetPolicy {
            requests: NonZeroU32::new(requests).expect("non-zero"),
            period: Duration::from_secs(period_secs),
            burst: NonZeroU32::new(burst).expect("non-zero"),
            reserves: DEFAULT_RESERVES,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_token_per_interval_per_credential() {
        // 10 per 10 s: one token per second, bursts of 3.
        let budget = LocalBudget::new(policy(10, 10, 3));
        let a = partition("a");
        for tokens_left in [2, 1, 0] {
            assert_eq!(
                budget.admit(a, Work::Caller).await,
                Admission::Granted { tokens_left }
            );
        }
        let Admission::Exhausted { retry_after } = budget.admit(a, Work::Caller).await else {
            panic!("the burst is spent");
        };
        assert!(
            retry_after <= Duration::from_secs(1) && retry_after > Duration::ZERO,
            "{retry_after:?}"
        );
        // Another credential has its own bucket.
        assert_eq!(
            budget.admit(partition("b"), Work::Caller).await,
            Admission::Granted { tokens_left: 2 }
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            budget.admit(a, Work::Caller).await,
            Admission::Granted { tokens_left: 0 }
        );
        assert!(matches!(
            budget.admit(a, Work::Caller).await,
            Admission::Exhausted { .. }
        ));
        // A new policy applies at once.
        budget.set_policy(policy(10, 10, 5));
        assert_eq!(
            budget.admit(a, Work::Caller).await,
            Admission::Granted { tokens_left: 4 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cool_down_blocks_one_credential_until_it_ends() {
        let budget = LocalBudget::new(policy(1000, 300, 50));
        let a = partition("a");
        budget.cool_down(a, Duration::from_secs(120)).await;
        assert_eq!(
            budget.admit(a, Work::Caller).await,
            Admission::CoolingDown {
                retry_after: Duration::from_secs(120)
            }
        );
        assert!(matches!(
            budget.admit(partition("b"), Work::Caller).await,
            Admission::Granted { .. }
        ));
        // A shorter, later 429 does not shorten it.
        budget.cool_down(a, Duration::from_secs(5)).await;
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(
            budget.admit(a, Work::Caller).await,
            Admission::CoolingDown {
                retry_after: Duration::from_secs(20)
            }
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(matches!(
            budget.admit(a, Work::Caller).await,
            Admission::Granted { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn housekeeping_forgets_idle_credentials() {
        let budget = LocalBudget::new(policy(10, 10, 1));
        for index in 0..100 {
            budget
                .admit(partition(&format!("t{index}")), Work::Caller)
                .await;
        }
        budget
            .cool_down(partition("t0"), Duration::from_secs(1))
            .await;
        tokio::time::advance(Duration::from_secs(5)).await;
        budget.housekeeping(Instant::now());
        assert_eq!(budget.limiters.load().all.len(), 0);
        assert!(budget.quotas.lock().expect("lock").is_empty());
        assert!(budget.cool_downs.lock().expect("lock").is_empty());
    }

    /// Housekeeping drops only what is over: a cool-down still in force survives it (and still
    /// refuses), and one that ends exactly now is gone.
    #[tokio::test(start_paused = true)]
    async fn housekeeping_keeps_cool_downs_in_force_and_drops_those_just_ended() {
        let budget = LocalBudget::new(policy(1000, 300, 50));
        let (short, long) = (partition("short"), partition("long"));
        budget.cool_down(short, Duration::from_secs(1)).await;
        budget.cool_down(long, Duration::from_secs(10)).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        budget.housekeeping(Instant::now());
        let kept: Vec<Partition> = budget
            .cool_downs
            .lock()
            .expect("lock")
            .keys()
            .copied()
            .collect();
        assert_eq!(kept, [long]);
        assert_eq!(
            budget.admit(long, Work::Caller).await,
            Admission::CoolingDown {
                retry_after: Duration::from_secs(9)
            }
        );
    }

    /// The schedule, not just the sweep: the tables are trimmed on every `HOUSEKEEPING_EVERY`th
    /// admission, and not before. A schedule that never runs (or runs on every call but that one)
    /// fails here.
    #[tokio::test(start_paused = true)]
    async fn the_tables_are_trimmed_every_housekeeping_interval_of_admissions() {
        let budget = LocalBudget::new(policy(10, 10, 1));
        let (idle, busy) = (partition("idle"), partition("busy"));
        let cool_downs = |budget: &LocalBudget| budget.cool_downs.lock().expect("lock").len();
        let quotas = |budget: &LocalBudget| budget.quotas.lock().expect("lock").len();
        for round in 0..2 {
            // An idle credential's cool-down and Cloudflare count both end; only a sweep drops them.
            budget.cool_down(idle, Duration::from_secs(1)).await;
            budget.observe(idle, reading(500, 1)).await;
            tokio::time::advance(Duration::from_secs(2)).await;
            for call in 1..HOUSEKEEPING_EVERY {
                budget.admit(busy, Work::Caller).await;
                assert_eq!(
                    (cool_downs(&budget), quotas(&budget)),
                    (1, 1),
                    "round {round}: trimmed early, after {call} calls"
                );
            }
            budget.admit(busy, Work::Caller).await;
            assert_eq!(
                (cool_downs(&budget), quotas(&budget)),
                (0, 0),
                "round {round}: not trimmed after {HOUSEKEEPING_EVERY} calls"
            );
        }
    }

    /// A later, longer 429 extends the cool-down in force (and, in the test above, a shorter one
    /// does not shorten it).
    #[tokio::test(start_paused = true)]
    async fn a_later_longer_429_extends_the_cool_down() {
        let budget = LocalBudget::new(policy(1000, 300, 50));
        let a = partition("a");
        budget.cool_down(a, Duration::from_secs(10)).await;
        tokio::time::advance(Duration::from_secs(4)).await;
        budget.cool_down(a, Duration::from_secs(30)).await;
        assert_eq!(
            budget.admit(a, Work::Caller).await,
            Admission::CoolingDown {
                retry_after: Duration::from_secs(30)
            }
        );
        // An equally long one changes nothing either.
        budget.cool_down(a, Duration::from_secs(30)).await;
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(
            budget.admit(a, Work::Caller).await,
            Admission::CoolingDown {
                retry_after: Duration::from_secs(1)
            }
        );
        // A wait past the maximum is capped.
        budget.cool_down(a, Duration::from_secs(86_400)).await;
        assert_eq!(
            budget.admit(a, Work::Caller).await,
            Admission::CoolingDown {
                retry_after: MAX_COOL_DOWN
            }
        );
    }

    /// Cloudflare's count: `remaining` of 1200 until a reset `reset_secs` from now.
    pub(crate) fn reading(remaining: u64, reset_secs: u64) -> QuotaReading {
        QuotaReading {
            remaining,
            reset_after: Duration::from_secs(reset_secs),
            quota: Some(1200),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cloudflares_count_holds_a_credential_at_the_reserve_until_the_reset() {
        let budget = LocalBudget::new(policy(1000, 300, 50));
        let (a, b) = (partition("a"), partition("b"));
        let summary = budget.observe(a, reading(122, 60)).await;
        assert_eq!(
            summary,
            QuotaSummary {
                lowest_remaining: Some(122),
                held_at_reserve: 0
            }
        );
        // Two calls admitted before any answer count down to the reserve (120 of 1200).
        assert!(matches!(
            budget.admit(a, Work::Caller).await,
            Admission::Granted { .. }
        ));
        assert!(matches!(
            budget.admit(a, Work::Caller).await,
            Admission::Granted { .. }
        ));
        assert_eq!(
            budget.admit(a, Work::Caller).await,
            Admission::AtReserve {
                retry_after: Duration::from_secs(60)
            }
        );
        // Another credential is not held.
        assert!(matches!(
            budget.admit(b, Work::Caller).await,
            Admission::Granted { .. }
        ));
        let summary = budget.observe(b, reading(700, 120)).await;
        assert_eq!(
            summary,
            QuotaSummary {
                lowest_remaining: Some(120),
                held_at_reserve: 1
            }
        );
        // The window resets: calls resume, and a fresh answer replaces the old count.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(matches!(
            budget.admit(a, Work::Caller).await,
            Admission::Granted { .. }
        ));
        let summary = budget.observe(a, reading(1199, 300)).await;
        assert_eq!(summary.held_at_reserve, 0);
        assert_eq!(summary.lowest_remaining, Some(700));
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_stop_at_their_reserve_and_callers_still_get_through() {
        // Cloudflare's count: 250 of 1200 left is under the refresh reserve (25 %), above the
        // caller's (10 %).
        let budget = LocalBudget::new(policy(1000, 300, 50));
        let a = partition("a");
        budget.observe(a, reading(250, 60)).await;
        assert!(matches!(
            budget.admit(a, Work::Refresh).await,
            Admission::AtReserve { .. }
        ));
        assert!(matches!(
            budget.admit(a, Work::Caller).await,
            Admission::Granted { .. }
        ));
        // The configured bucket: refreshes may take 75 % of the burst, the rest is callers'.
        let budget = LocalBudget::new(policy(1000, 300, 8));
        let mut refreshed = 0;
        while let Admission::Granted { .. } = budget.admit(a, Work::Refresh).await {
            refreshed += 1;
        }
        assert_eq!(refreshed, 6);
        for tokens_left in [1, 0] {
            assert_eq!(
                budget.admit(a, Work::Caller).await,
                Admission::Granted { tokens_left }
            );
        }
        // A refresh reserve of 100 % leaves refreshes nothing.
        let mut everything = policy(1000, 300, 8);
        everything.reserves.refresh = Share::per_mille(1000).expect("100%");
        let budget = LocalBudget::new(everything);
        assert!(matches!(
            budget.admit(a, Work::Refresh).await,
            Admission::Exhausted { .. }
        ));
        assert!(matches!(
            budget.admit(a, Work::Caller).await,
            Admission::Granted { .. }
        ));
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
