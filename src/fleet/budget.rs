//! The fleet's upstream budget: one bucket, one 429 cool-down and one reading of Cloudflare's
//! count per credential for every sidecar sharing a Redis, decided atomically in Redis by the Lua
//! scripts beside this file (on Redis `TIME`, so host clocks do not matter). With no Redis the
//! in-process [`LocalBudget`] decides exactly as before; while Redis cannot answer, it decides at
//! this sidecar's share of the budget (1/`fleet_size`). It must not know about the cache, and a
//! Redis failure must never fail a lookup: it only makes the decision local.

use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::Script;
use tokio::time::Instant;

use crate::budget::{
    Admission, BudgetPolicy, LocalBudget, QuotaSummary, UpstreamBudget, MAX_COOL_DOWN,
};
use crate::credentials::Partition;
use crate::fleet::{Fleet, FleetKeys, FleetRedis};
use crate::ratelimit::{QuotaReading, Reserves, Work, DEFAULT_QUOTA};

/// The admission: cool-down, Cloudflare's count, then the GCRA, in one round trip.
static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("budget.lua")));

/// A 429's cool-down for the whole fleet: extended by a longer wait, never shortened.
static COOL_DOWN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("cool_down.lua")));

/// Cloudflare's count shared with the fleet: within a window the lower count wins.
static OBSERVE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("observe.lua")));

/// What the budget needs to share its decisions with the fleet.
pub struct FleetBudgetRedis {
    pub redis: FleetRedis,
    /// The key names (the fleet id in every one, so that fleets with different fleet keys never
    /// meet).
    pub keys: Arc<FleetKeys>,
    /// How many sidecars share each credential's budget.
    pub fleet_size: NonZeroU32,
}

impl FleetBudgetRedis {
    pub fn of(fleet: &Fleet) -> FleetBudgetRedis {
        FleetBudgetRedis {
            redis: fleet.redis.clone(),
            keys: Arc::clone(&fleet.keys),
            fleet_size: fleet.settings.fleet_size,
        }
    }
}

/// The budget of the request path: [`LocalBudget`] alone, or shared through Redis.
pub struct FleetBudget {
    /// Without Redis: the whole policy. With Redis: this sidecar's share, which decides while
    /// Redis cannot; its cool-downs are also the memory that spares a cooling credential the
    /// round trip, and its readings feed the quota metrics.
    local: LocalBudget,
    fleet: Option<FleetSide>,
}

/// The Redis side of the budget.
struct FleetSide {
    redis: FleetRedis,
    keys: Arc<FleetKeys>,
    fleet_size: NonZeroU32,
    /// The whole fleet's policy, in the script's units.
    limits: ArcSwap<ScriptLimits>,
}

/// Why the fleet could not decide; the local budget then does.
#[derive(Debug)]
struct Undecided;

impl FleetBudget {
    pub fn new(policy: BudgetPolicy, redis: Option<FleetBudgetRedis>) -> FleetBudget {
        let Some(redis) = redis else {
            return FleetBudget {
                local: LocalBudget::new(policy),
                fleet: None,
            };
        };
        FleetBudget {
            local: LocalBudget::new(policy.fleet_share(redis.fleet_size)),
            fleet: Some(FleetSide {
                keys: redis.keys,
                redis: redis.redis,
                fleet_size: redis.fleet_size,
                limits: ArcSwap::from_pointee(ScriptLimits::of(&policy)),
            }),
        }
    }
}

impl FleetSide {
    fn key(&self, kind: KeyKind, partition: Partition) -> String {
        self.keys
            .key(kind.name(), &self.keys.partition_hex(partition))
    }

    async fn admit(&self, partition: Partition, work: Work) -> Result<Admission, Undecided> {
        let limits = self.limits.load();
        let mut invocation = ADMIT.prepare_invoke();
        invocation
            .key(self.key(KeyKind::CoolDown, partition))
            .key(self.key(KeyKind::Quota, partition))
            .key(self.key(KeyKind::Bucket, partition))
            .arg(limits.interval_micros)
            .arg(limits.burst)
            .arg(limits.refresh_interval_micros)
            .arg(limits.refresh_burst)
            .arg(limits.reserve_per_mille(work))
            .arg(work_name(work))
            .arg(limits.period_micros);
        let reply: Vec<i64> = self
            .redis
            .invoke("budget", &invocation)
            .await
            .map_err(|_| Undecided)?;
        admission_of(&reply).ok_or(Undecided)
    }

    /// Returns the cool-down now in force for the fleet (a longer one may already be).
    async fn cool_down(&self, partition: Partition, wait: Duration) -> Result<Duration, Undecided> {
        let mut invocation = COOL_DOWN.prepare_invoke();
        invocation
            .key(self.key(KeyKind::CoolDown, partition))
            .arg(whole_millis(wait));
        let in_force: i64 = self
            .redis
            .invoke("cool_down", &invocation)
            .await
            .map_err(|_| Undecided)?;
        let millis = u64::try_from(in_force).map_err(|_| Undecided)?;
        Ok(Duration::from_millis(millis).min(MAX_COOL_DOWN))
    }

    async fn observe(&self, partition: Partition, reading: QuotaReading) -> Result<(), Undecided> {
        if reading.reset_after.is_zero() {
            // The window resets now: there is nothing to share about it.
            return Ok(());
        }
        let mut invocation = OBSERVE.prepare_invoke();
        invocation
            .key(self.key(KeyKind::Quota, partition))
            .arg(reading.remaining.min(MAX_SHARED_COUNT))
            .arg(reading.quota.unwrap_or(DEFAULT_QUOTA).min(MAX_SHARED_COUNT))
            .arg(whole_millis(reading.reset_after));
        let _shared: i64 = self
            .redis
            .invoke("quota", &invocation)
            .await
            .map_err(|_| Undecided)?;
        Ok(())
    }
}

/// Counts above this are shared as this: Lua holds integers exactly only up to 2^53, and no
/// Cloudflare plan comes near it.
const MAX_SHARED_COUNT: u64 = 1 << 40;

impl UpstreamBudget for FleetBudget {
    async fn admit(&self, partition: Partition, work: Work) -> Admission {
        let Some(fleet) = &self.fleet else {
            return self.local.admit_now(partition, work);
        };
        // A cool-down this sidecar already knows of costs no round trip; nor does Cloudflare's
        // count as this sidecar last read it, when that already holds the credential (the fleet's
        // shared count is never higher, unless sharing it failed: the stricter one wins).
        if let Some(refusal) = self.local.known_refusal(partition, work, Instant::now()) {
            return refusal;
        }
        match fleet.admit(partition, work).await {
            Ok(admission) => {
                if let Admission::CoolingDown { retry_after } = admission {
                    // Learned from another sidecar's 429: remembered, so that the next lookups
                    // of this credential are refused here without asking Redis.
                    self.local.cool_down_now(partition, retry_after);
                }
                admission
            }
            Err(Undecided) => {
                tracing::debug!(
                    ?partition,
                    "Redis cannot decide the fleet budget: this sidecar's share decides"
                );
                self.local.admit_now(partition, work)
            }
        }
    }

    async fn observe(&self, partition: Partition, reading: QuotaReading) -> QuotaSummary {
        let summary = self.local.observe_now(partition, reading);
        if let Some(fleet) = &self.fleet {
            // Best effort: a reading Redis did not take is shared by the next answer.
            let _ = fleet.observe(partition, reading).await;
        }
        summary
    }

    async fn cool_down(&self, partition: Partition, wait: Duration) {
        self.local.cool_down_now(partition, wait);
        let Some(fleet) = &self.fleet else {
            return;
        };
        if let Ok(in_force) = fleet.cool_down(partition, wait.min(MAX_COOL_DOWN)).await {
            // Another sidecar may have set a longer one: this sidecar keeps to it too.
            self.local.cool_down_now(partition, in_force);
        }
    }

    fn set_policy(&self, policy: BudgetPolicy) {
        match &self.fleet {
            None => self.local.set_policy(policy),
            Some(fleet) => {
                self.local.set_policy(policy.fleet_share(fleet.fleet_size));
                fleet.limits.store(Arc::new(ScriptLimits::of(&policy)));
            }
        }
    }
}

/// The keys the budget owns for one credential (`{p}` is the hex of its partition, itself a keyed
/// hash, so no token byte reaches Redis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    /// `c:{p}`: present while the credential cools down after a 429.
    CoolDown,
    /// `q:{p}`: Cloudflare's count, until its window resets.
    Quota,
    /// `b:{p}`: the GCRA's theoretical arrival times, until the bucket is full again.
    Bucket,
}

impl KeyKind {
    fn name(self) -> &'static str {
        match self {
            KeyKind::CoolDown => "c",
            KeyKind::Quota => "q",
            KeyKind::Bucket => "b",
        }
    }
}

fn work_name(work: Work) -> &'static str {
    match work {
        Work::Caller => "caller",
        Work::Refresh => "refresh",
    }
}

/// Pure: a wait in whole milliseconds, rounded up and at least one (Redis refuses `PX 0`).
fn whole_millis(wait: Duration) -> u64 {
    let millis = u64::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
    millis.max(1)
}

/// A policy in the admission script's units: microseconds of Redis `TIME` per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ScriptLimits {
    interval_micros: u64,
    burst: u32,
    /// 0: refreshes never call.
    refresh_interval_micros: u64,
    refresh_burst: u32,
    period_micros: u64,
    /// What callers and refreshes leave of Cloudflare's count, as the local pacing keeps it.
    reserves: Reserves,
}

impl ScriptLimits {
    /// Pure: the same bucket as [`LocalBudget`]'s for `policy`: one token back every
    /// period/requests, bursts of `burst`, and the refreshes' share without their reserve.
    fn of(policy: &BudgetPolicy) -> ScriptLimits {
        let interval = |requests: NonZeroU32| {
            let micros = policy.period.as_micros() / u128::from(requests.get());
            u64::try_from(micros).unwrap_or(u64::MAX).max(1)
        };
        let refresh = policy.refresh_share();
        ScriptLimits {
            interval_micros: interval(policy.requests),
            burst: policy.burst.get(),
            refresh_interval_micros: refresh.map_or(0, |(requests, _)| interval(requests)),
            refresh_burst: refresh.map_or(0, |(_, burst)| burst.get()),
            period_micros: u64::try_from(policy.period.as_micros()).unwrap_or(u64::MAX),
            reserves: policy.reserves,
        }
    }

    fn reserve_per_mille(&self, work: Work) -> u16 {
        self.reserves.share_for(work).as_per_mille()
    }
}

/// Pure: the admission script's reply, `{outcome, wait in microseconds, tokens left}`; `None` for
/// anything else, which the caller treats as Redis failing to decide. Waits are bounded like a
/// local cool-down, so that a key someone else wrote cannot silence a credential for days.
fn admission_of(reply: &[i64]) -> Option<Admission> {
    let [outcome, wait_micros, tokens_left] = *reply else {
        return None;
    };
    let retry_after = Duration::from_micros(u64::try_from(wait_micros).ok()?).min(MAX_COOL_DOWN);
    match outcome {
        0 => Some(Admission::Granted {
            tokens_left: u32::try_from(tokens_left).ok()?,
        }),
        1 => Some(Admission::CoolingDown { retry_after }),
        2 => Some(Admission::AtReserve { retry_after }),
        3 => Some(Admission::Exhausted { retry_after }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::tests::{policy, reading};
    use crate::budget::DEFAULT_RESERVES;
    use crate::ratelimit::Share;

    #[test]
    fn a_sidecars_share_is_the_budget_divided_rounded_down_and_never_nothing() {
        let check = |requests, burst, fleet_size, expected: (u32, u32)| {
            let size = NonZeroU32::new(fleet_size).expect("non-zero");
            let share = policy(requests, 300, burst).fleet_share(size);
            assert_eq!(
                (share.requests.get(), share.burst.get()),
                expected,
                "{requests}/{burst} over {fleet_size}"
            );
            assert_eq!(share.period, Duration::from_secs(300));
            assert_eq!(share.reserves, DEFAULT_RESERVES);
        };
        check(1000, 50, 1, (1000, 50));
        check(1000, 50, 3, (333, 16));
        check(1000, 50, 4, (250, 12));
        // Never more than the budget together, but at least one call each.
        check(1000, 50, 64, (15, 1));
        check(1000, 50, 5000, (1, 1));
        check(1, 1, 2, (1, 1));
    }

    #[test]
    fn the_script_gets_the_same_bucket_as_the_local_budget() {
        let limits = ScriptLimits::of(&policy(1000, 300, 8));
        assert_eq!(
            limits,
            ScriptLimits {
                interval_micros: 300_000,
                burst: 8,
                // Refreshes: 1000 - 250 requests, 8 - 2 burst.
                refresh_interval_micros: 400_000,
                refresh_burst: 6,
                period_micros: 300_000_000,
                reserves: policy(1000, 300, 8).reserves,
            }
        );
        assert_eq!(limits.reserve_per_mille(Work::Caller), 100);
        assert_eq!(limits.reserve_per_mille(Work::Refresh), 250);
        // A refresh reserve of 100 % leaves refreshes nothing.
        let mut everything = policy(1000, 300, 8);
        everything.reserves.refresh = Share::per_mille(1000).expect("100%");
        let limits = ScriptLimits::of(&everything);
        assert_eq!(
            (limits.refresh_interval_micros, limits.refresh_burst),
            (0, 0)
        );
        // A refresh reserve below the caller's is raised to it, as the local pacing does.
        let mut odd = policy(1000, 300, 8);
        odd.reserves.refresh = Share::ZERO;
        assert_eq!(ScriptLimits::of(&odd).reserve_per_mille(Work::Refresh), 100);
        // More requests than microseconds in the period: one token per microsecond.
        let limits = ScriptLimits::of(&BudgetPolicy {
            period: Duration::from_micros(10),
            ..policy(1000, 1, 1)
        });
        assert_eq!(limits.interval_micros, 1);
    }

    #[test]
    fn the_scripts_reply_is_read_or_refused() {
        let check = |reply: &[i64], expected: Option<Admission>| {
            assert_eq!(admission_of(reply), expected, "{reply:?}");
        };
        check(&[0, 0, 7], Some(Admission::Granted { tokens_left: 7 }));
        check(
            &[1, 1_500_000, 0],
            Some(Admission::CoolingDown {
                retry_after: Duration::from_millis(1500),
            }),
        );
        check(
            &[2, 60_000_000, 0],
            Some(Admission::AtReserve {
                retry_after: Duration::from_secs(60),
            }),
        );
        check(
            &[3, 250, 0],
            Some(Admission::Exhausted {
                retry_after: Duration::from_micros(250),
            }),
        );
        // A wait longer than any honoured cool-down is bounded.
        check(
            &[1, i64::MAX, 0],
            Some(Admission::CoolingDown {
                retry_after: MAX_COOL_DOWN,
            }),
        );
        // Garbage: Redis did not decide.
        check(&[], None);
        check(&[0, 0], None);
        check(&[0, 0, 1, 1], None);
        check(&[4, 0, 0], None);
        check(&[-1, 0, 0], None);
        check(&[1, -5, 0], None);
        check(&[0, 0, -1], None);
        check(&[0, 0, i64::MAX], None);
    }

    #[test]
    fn waits_are_whole_milliseconds_rounded_up() {
        assert_eq!(whole_millis(Duration::ZERO), 1);
        assert_eq!(whole_millis(Duration::from_micros(1)), 1);
        assert_eq!(whole_millis(Duration::from_millis(1500)), 1500);
        assert_eq!(whole_millis(Duration::from_micros(1_500_001)), 1501);
        assert_eq!(whole_millis(Duration::MAX), u64::MAX);
    }

    // Against a real Redis (redis-fixture). Redis `TIME` cannot follow a paused Tokio clock, so
    // these tests run on real time: waits are short real windows (a 1 s `Retry-After`) and every
    // wait is bounded; what they assert are contract bounds, never durations measured here.

    use crate::credentials::extract;
    use crate::fleet::{FleetKey, FleetSettings, RedisUrl};
    use crate::metrics::{Exposition, Metrics};
    use http::{HeaderMap, HeaderValue};
    use redis::Commands;
    use redis_fixture::RedisServer;

    const FLEET_KEY: &[u8] = b"one fleet's secret, 32 bytes or more";

    fn keys() -> FleetKeys {
        FleetKeys::derive(&FleetKey::from_bytes(FLEET_KEY).expect("long enough"))
    }

    /// The partition of a credential, as every sidecar of the fleet derives it.
    fn partition(token: &str) -> Partition {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        extract(&headers, None, &keys().partition_key())
            .expect("credentials")
            .partition()
    }

    /// One "sidecar"'s budget on `server`, in the fleet of `fleet_key` of `fleet_size`, built as
    /// the sidecar builds it.
    async fn sidecar_in(
        server: &RedisServer,
        fleet_key: &[u8],
        policy: BudgetPolicy,
        fleet_size: u32,
    ) -> FleetBudget {
        sidecar_counted(server, fleet_key, policy, fleet_size, &Metrics::new()).await
    }

    /// [`sidecar_in`], counted in `metrics`.
    async fn sidecar_counted(
        server: &RedisServer,
        fleet_key: &[u8],
        policy: BudgetPolicy,
        fleet_size: u32,
        metrics: &Metrics,
    ) -> FleetBudget {
        // Generous: a shared, busy test machine must not turn these tests into degraded ones.
        let redis_timeout = Duration::from_secs(2);
        sidecar_timed(
            server,
            fleet_key,
            policy,
            fleet_size,
            metrics,
            redis_timeout,
        )
        .await
    }

    /// [`sidecar_counted`] with its own `redis_timeout`.
    async fn sidecar_timed(
        server: &RedisServer,
        fleet_key: &[u8],
        policy: BudgetPolicy,
        fleet_size: u32,
        metrics: &Metrics,
        redis_timeout: Duration,
    ) -> FleetBudget {
        let settings = FleetSettings {
            redis_url: RedisUrl::parse(&server.url()).expect("url"),
            redis_password: None,
            fleet_key: FleetKey::from_bytes(fleet_key).expect("long enough"),
            fleet_size: NonZeroU32::new(fleet_size).expect("non-zero"),
            redis_timeout,
            lease: Duration::from_secs(5),
        };
        let fleet = Fleet::new(&settings, metrics.fleet().clone()).expect("fleet");
        FleetBudget::new(policy, Some(FleetBudgetRedis::of(&fleet)))
    }

    async fn sidecar(server: &RedisServer, policy: BudgetPolicy, fleet_size: u32) -> FleetBudget {
        sidecar_in(server, FLEET_KEY, policy, fleet_size).await
    }

    fn key(kind: KeyKind, partition: Partition) -> String {
        let keys = keys();
        keys.key(kind.name(), &keys.partition_hex(partition))
    }

    /// Asks until `budget` answers `expected` for `partition`, for at most `limit`.
    async fn decided_within(
        budget: &FleetBudget,
        partition: Partition,
        limit: Duration,
        expected: Admission,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let admission = budget.admit(partition, Work::Caller).await;
            if admission == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not {expected:?} within {limit:?}: {admission:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks until `budget` admits `partition`, for at most `limit`; returns what it admitted.
    async fn admitted_within(
        budget: &FleetBudget,
        partition: Partition,
        limit: Duration,
    ) -> Admission {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let admission = budget.admit(partition, Work::Caller).await;
            if let Admission::Granted { .. } = admission {
                return admission;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not admitted within {limit:?}: {admission:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn two_sidecars_spend_one_budget() {
        let server = RedisServer::start();
        // A burst of 5 and one token per minute: nothing comes back during the test.
        let policy = policy(5, 300, 5);
        let (a, b) = (
            sidecar(&server, policy, 2).await,
            sidecar(&server, policy, 2).await,
        );
        let credential = partition("shared");
        let mut granted = Vec::new();
        for budget in [&a, &b, &a, &b, &a, &b] {
            granted.push(budget.admit(credential, Work::Caller).await);
        }
        let expected: Vec<Admission> = (0..5)
            .rev()
            .map(|tokens_left| Admission::Granted { tokens_left })
            .collect();
        assert_eq!(granted[..5], expected[..]);
        let Admission::Exhausted { retry_after } = granted[5] else {
            panic!("the fleet's burst is spent: {:?}", granted[5]);
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(60));
        // Another credential has a bucket of its own; another fleet shares nothing.
        assert_eq!(
            a.admit(partition("other"), Work::Caller).await,
            Admission::Granted { tokens_left: 4 }
        );
        let stranger =
            sidecar_in(&server, b"another fleet's secret, also 32 bytes", policy, 2).await;
        assert_eq!(
            stranger.admit(credential, Work::Caller).await,
            Admission::Granted { tokens_left: 4 }
        );
    }

    #[tokio::test]
    async fn a_cool_down_seen_by_one_refuses_every_sidecar_until_it_ends() {
        let server = RedisServer::start();
        let policy = policy(1000, 300, 50);
        let (a, b) = (
            sidecar(&server, policy, 2).await,
            sidecar(&server, policy, 2).await,
        );
        let credential = partition("cooling");
        a.cool_down(credential, Duration::from_secs(1)).await;
        let Admission::CoolingDown { retry_after } = b.admit(credential, Work::Caller).await else {
            panic!("the other sidecar learns of the 429");
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
        // The other sidecar remembers it: with the key gone from Redis it still refuses, without
        // asking Redis (which would now grant).
        let mut connection = server.connection();
        let removed: u32 = connection
            .del(key(KeyKind::CoolDown, credential))
            .expect("del");
        assert_eq!(removed, 1);
        assert!(matches!(
            b.admit(credential, Work::Caller).await,
            Admission::CoolingDown { .. }
        ));
        // When the cool-down ends, calls resume.
        admitted_within(&b, credential, Duration::from_secs(5)).await;
        admitted_within(&a, credential, Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_longer_429_extends_the_cool_down_and_a_shorter_one_never_shortens_it() {
        let server = RedisServer::start();
        let policy = policy(1000, 300, 50);
        let (a, b) = (
            sidecar(&server, policy, 3).await,
            sidecar(&server, policy, 3).await,
        );
        let credential = partition("extended");
        let mut connection = server.connection();
        let mut left = || -> i64 {
            connection
                .pttl(key(KeyKind::CoolDown, credential))
                .expect("pttl")
        };
        a.cool_down(credential, Duration::from_secs(20)).await;
        b.cool_down(credential, Duration::from_secs(1)).await;
        assert!(left() > 1000, "a shorter 429 shortened the cool-down");
        // The shorter one's sidecar keeps to the fleet's longer cool-down too.
        let Admission::CoolingDown { retry_after } = b.admit(credential, Work::Caller).await else {
            panic!("cooling down");
        };
        assert!(retry_after > Duration::from_secs(1) && retry_after <= Duration::from_secs(20));
        b.cool_down(credential, Duration::from_secs(60)).await;
        assert!(left() > 20_000, "a longer 429 did not extend the cool-down");
        // A third sidecar, which saw no 429 itself, reports the longest wait in its refusal.
        let c = sidecar(&server, policy, 3).await;
        let Admission::CoolingDown { retry_after } = c.admit(credential, Work::Caller).await else {
            panic!("cooling down");
        };
        assert!(retry_after > Duration::from_secs(20) && retry_after <= Duration::from_secs(60));
    }

    #[tokio::test]
    async fn cloudflares_count_seen_by_one_holds_every_sidecar_at_the_reserve() {
        let server = RedisServer::start();
        let policy = policy(1000, 300, 50);
        let (a, b) = (
            sidecar(&server, policy, 2).await,
            sidecar(&server, policy, 2).await,
        );
        let credential = partition("counted");
        a.observe(credential, reading(122, 60)).await;
        // Two calls admitted anywhere count down to the caller's reserve (120 of 1200).
        assert!(matches!(
            b.admit(credential, Work::Caller).await,
            Admission::Granted { .. }
        ));
        assert!(matches!(
            a.admit(credential, Work::Caller).await,
            Admission::Granted { .. }
        ));
        let Admission::AtReserve { retry_after } = b.admit(credential, Work::Caller).await else {
            panic!("held at the reserve");
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(60));
        // A higher count within the window does not lift the hold; the lower one stands.
        b.observe(credential, reading(900, 50)).await;
        assert!(matches!(
            a.admit(credential, Work::Caller).await,
            Admission::AtReserve { .. }
        ));
        // Refreshes stop at their larger reserve while callers still go.
        let other = partition("refreshing");
        a.observe(other, reading(250, 60)).await;
        assert!(matches!(
            b.admit(other, Work::Refresh).await,
            Admission::AtReserve { .. }
        ));
        assert!(matches!(
            b.admit(other, Work::Caller).await,
            Admission::Granted { .. }
        ));
        // Where sharing the count failed (here: the shared count is gone), the sidecar that read
        // it still holds to it, with no round trip; the other, which never read it, does not.
        let mut connection = server.connection();
        let _: u32 = connection.del(key(KeyKind::Quota, other)).expect("del");
        assert!(matches!(
            a.admit(other, Work::Refresh).await,
            Admission::AtReserve { .. }
        ));
        assert!(matches!(
            b.admit(other, Work::Refresh).await,
            Admission::Granted { .. }
        ));
    }

    #[tokio::test]
    async fn refreshes_leave_the_callers_share_of_the_fleets_bucket() {
        let server = RedisServer::start();
        let (a, b) = (
            sidecar(&server, policy(1000, 300, 8), 2).await,
            sidecar(&server, policy(1000, 300, 8), 2).await,
        );
        let credential = partition("refreshes");
        let mut refreshed = 0;
        for budget in [&a, &b].into_iter().cycle().take(10) {
            if let Admission::Granted { .. } = budget.admit(credential, Work::Refresh).await {
                refreshed += 1;
            }
        }
        assert_eq!(refreshed, 6);
        for tokens_left in [1, 0] {
            assert_eq!(
                b.admit(credential, Work::Caller).await,
                Admission::Granted { tokens_left }
            );
        }
    }

    #[tokio::test]
    async fn redis_down_means_this_sidecars_share_until_redis_is_back() {
        let mut server = RedisServer::start();
        // A fleet of 2 sharing a burst of 4: each may spend 2 alone.
        let metrics = Metrics::new();
        let budget = sidecar_counted(&server, FLEET_KEY, policy(4, 300, 4), 2, &metrics).await;
        let sample = |name: &str| -> Option<String> {
            let text = metrics.encode(Exposition::Classic);
            text.lines()
                .find(|line| line.starts_with(name))
                .map(|line| line[name.len()..].trim().to_owned())
        };
        let credential = partition("degraded");
        assert_eq!(
            budget.admit(credential, Work::Caller).await,
            Admission::Granted { tokens_left: 3 }
        );
        server.kill();
        for tokens_left in [1, 0] {
            assert_eq!(
                budget.admit(credential, Work::Caller).await,
                Admission::Granted { tokens_left }
            );
        }
        assert!(matches!(
            budget.admit(credential, Work::Caller).await,
            Admission::Exhausted { .. }
        ));
        // Each of those was a failed Redis call; three in a row open the breaker: degraded.
        assert_eq!(
            sample(r#"zt_sidecar_redis_calls_total{op="budget",outcome="error"}"#).as_deref(),
            Some("3")
        );
        assert_eq!(sample("zt_sidecar_fleet_degraded").as_deref(), Some("1"));
        // A cool-down is still honoured, locally.
        budget
            .cool_down(partition("cooling"), Duration::from_secs(60))
            .await;
        assert!(matches!(
            budget.admit(partition("cooling"), Work::Caller).await,
            Admission::CoolingDown { .. }
        ));
        // Redis is back (empty): the fleet's bucket decides again, by itself.
        server.restart();
        assert_eq!(
            admitted_within(&budget, credential, Duration::from_secs(10)).await,
            Admission::Granted { tokens_left: 3 }
        );
        assert_eq!(sample("zt_sidecar_fleet_degraded").as_deref(), Some("0"));
    }

    #[tokio::test]
    async fn garbage_in_the_budgets_keys_is_dropped_never_a_panic_nor_kept_forever() {
        let server = RedisServer::start();
        let budget = sidecar(&server, policy(1000, 300, 5), 1).await;
        let mut connection = server.connection();
        let credential = partition("garbage");
        let (cool, quota, bucket) = (
            key(KeyKind::CoolDown, credential),
            key(KeyKind::Quota, credential),
            key(KeyKind::Bucket, credential),
        );
        // A key holding something the script cannot read, as someone with Redis access (or an
        // older schema) might leave it.
        enum Garbage {
            Text(&'static str),
            Fields(&'static [(&'static str, &'static str)]),
        }
        let cases = [
            (&bucket, Garbage::Text("garbage"), "a string for the bucket"),
            (
                &bucket,
                Garbage::Fields(&[("all", "nan"), ("refresh", "x")]),
                "NaN",
            ),
            (
                &bucket,
                Garbage::Fields(&[("all", "1e300")]),
                "a time far ahead",
            ),
            (
                &bucket,
                Garbage::Fields(&[("all", "-5")]),
                "a time long past",
            ),
            (&quota, Garbage::Text("junk"), "a string for the count"),
            (
                &quota,
                Garbage::Fields(&[("remaining", "5.5"), ("quota", "1200")]),
                "a fraction",
            ),
            (
                &quota,
                Garbage::Fields(&[("remaining", "lots")]),
                "no number",
            ),
            (
                &cool,
                Garbage::Text("forever"),
                "a cool-down without an expiry",
            ),
        ];
        for (name, garbage, what) in cases {
            let _: () = redis::cmd("FLUSHALL")
                .query(&mut connection)
                .expect("flush");
            let _: () = match garbage {
                Garbage::Text(text) => connection.set(name, text),
                Garbage::Fields(fields) => connection.hset_multiple(name, fields),
            }
            .expect("write garbage");
            // The bucket starts full, as if the key had never been there.
            assert_eq!(
                budget.admit(credential, Work::Caller).await,
                Admission::Granted { tokens_left: 4 },
                "{what}"
            );
            // Everything the script left has an expiry.
            for key in [&cool, &quota, &bucket] {
                let left: i64 = connection.pttl(key).expect("pttl");
                assert!(left == -2 || left > 0, "{what}: {key} has PTTL {left}");
            }
        }
        let stored: i64 = connection.pttl(&cool).expect("pttl");
        assert_eq!(stored, -2, "the endless cool-down was dropped");
    }

    #[tokio::test]
    async fn every_key_the_budget_writes_expires_and_names_no_token() {
        let server = RedisServer::start();
        let budget = sidecar(&server, policy(1000, 300, 50), 2).await;
        let credential = partition("secret-token-value");
        budget.admit(credential, Work::Caller).await;
        budget.admit(credential, Work::Refresh).await;
        budget.observe(credential, reading(900, 60)).await;
        budget.cool_down(credential, Duration::from_secs(30)).await;
        let mut connection = server.connection();
        let mut names: Vec<String> = connection
            .scan::<String>()
            .expect("scan")
            .collect::<Result<_, _>>()
            .expect("scan keys");
        names.sort();
        let mut expected = vec![
            key(KeyKind::Bucket, credential),
            key(KeyKind::CoolDown, credential),
            key(KeyKind::Quota, credential),
        ];
        expected.sort();
        assert_eq!(names, expected);
        // Each lives no longer than what it describes: the bucket until it is full again
        // (50 tokens at 0.3 s), the count until its reset, the cool-down until Retry-After.
        for (kind, longest) in [
            (KeyKind::Bucket, 15_000),
            (KeyKind::Quota, 60_000),
            (KeyKind::CoolDown, 30_000),
        ] {
            let left: i64 = connection.pttl(key(kind, credential)).expect("pttl");
            assert!(left > 0 && left <= longest, "{kind:?}: {left} ms");
        }
        for name in &names {
            assert!(!name.contains("secret-token-value"), "{name}");
            let value: Vec<u8> = redis::cmd("DUMP")
                .arg(name)
                .query(&mut connection)
                .expect("dump");
            assert!(
                !value
                    .windows(b"secret-token-value".len())
                    .any(|window| window == b"secret-token-value"),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn a_frozen_redis_hangs_no_admission_and_a_reload_reaches_both_budgets() {
        let server = RedisServer::start();
        let metrics = Metrics::new();
        let redis_timeout = Duration::from_millis(100);
        let budget = sidecar_timed(
            &server,
            FLEET_KEY,
            policy(10, 300, 10),
            2,
            &metrics,
            redis_timeout,
        )
        .await;
        let credential = partition("frozen");
        assert_eq!(
            budget.admit(credential, Work::Caller).await,
            Admission::Granted { tokens_left: 9 }
        );
        server.freeze();
        // Every admission ends (bounded here far above the contract, `redis_timeout` per call,
        // so that a busy machine cannot fail it) with the local share's answer: half of 10.
        for tokens_left in (0..5).rev() {
            let admission = tokio::time::timeout(
                Duration::from_secs(10),
                budget.admit(credential, Work::Caller),
            )
            .await
            .expect("an admission never hangs on a frozen Redis");
            assert_eq!(admission, Admission::Granted { tokens_left });
        }
        // A reload applies to the local share at once (a new policy starts full).
        budget.set_policy(policy(10, 300, 20));
        assert_eq!(
            budget.admit(credential, Work::Caller).await,
            Admission::Granted { tokens_left: 9 }
        );
        server.thaw();
        // And to the fleet's bucket once Redis answers (the breaker probes it again after a
        // while; until then the local share decides, 10 tokens). This credential's fleet bucket
        // is no witness: the calls that timed out waited in Redis's socket and were spent when
        // it thawed (conservative: never fewer calls counted than made). A fresh credential
        // is: the fleet's bucket of 20 answers 19.
        let fleet_decides = Admission::Granted { tokens_left: 19 };
        let fresh = partition("after the thaw");
        decided_within(&budget, fresh, Duration::from_secs(10), fleet_decides).await;
    }

    #[tokio::test]
    async fn the_least_privilege_redis_user_may_run_every_budget_script() {
        // The deployment's ACL line (deploy/redis/users.acl), with a password of the test's own:
        // Redis checks a script's every command against it, so a missing one would silently
        // make every sidecar decide alone.
        let line = include_str!("../../deploy/redis/users.acl")
            .lines()
            .find(|line| line.starts_with("user "))
            .expect("a user line");
        let mut rules: Vec<&str> = line.split_whitespace().skip(1).collect();
        let user = rules.remove(0);
        for rule in &mut rules {
            if rule.starts_with('>') {
                *rule = ">a-test-password";
            }
        }
        let server = RedisServer::start();
        let mut connection = server.connection();
        // Rule by rule, because an older Redis knows fewer commands (7.0 has no
        // `client|setinfo`): a rule it refuses names a command this server cannot run anyway.
        let mut refused = Vec::new();
        for rule in &rules {
            let applied: redis::RedisResult<()> = redis::cmd("ACL")
                .arg("SETUSER")
                .arg(user)
                .arg(rule)
                .query(&mut connection);
            if applied.is_err() {
                refused.push(*rule);
            }
        }
        let settings = FleetSettings {
            redis_url: RedisUrl::parse(&format!(
                "redis://{user}:a-test-password@127.0.0.1:{}",
                server.port()
            ))
            .expect("url"),
            redis_password: None,
            fleet_key: FleetKey::from_bytes(FLEET_KEY).expect("long enough"),
            fleet_size: NonZeroU32::MIN,
            redis_timeout: Duration::from_secs(2),
            lease: Duration::from_secs(5),
        };
        let metrics = Metrics::new();
        let fleet = Fleet::new(&settings, metrics.fleet().clone()).expect("fleet");
        let budget = FleetBudget::new(policy(10, 300, 5), Some(FleetBudgetRedis::of(&fleet)));
        let credential = partition("least privilege");
        budget.observe(credential, reading(900, 60)).await;
        assert_eq!(
            budget.admit(credential, Work::Caller).await,
            Admission::Granted { tokens_left: 4 }
        );
        budget.cool_down(credential, Duration::from_secs(1)).await;
        let text = metrics.encode(Exposition::Classic);
        for op in ["budget", "cool_down", "quota"] {
            let ok = format!(r#"zt_sidecar_redis_calls_total{{op="{op}",outcome="ok"}} 1"#);
            assert!(
                text.lines().any(|line| line == ok),
                "{op} was refused (rules this Redis refused: {refused:?}):\n{text}"
            );
        }
        // And what it wrote is there. The script reads the count with `pcall` (an unreadable
        // count is dropped, not an error), so a command the user may not run would show here: the
        // count was read, and the admission spent one of it.
        let left: i64 = connection
            .pttl(key(KeyKind::CoolDown, credential))
            .expect("pttl");
        assert!(left > 0 && left <= 1000, "{left}");
        let remaining: Option<String> = connection
            .hget(key(KeyKind::Quota, credential), "remaining")
            .expect("hget");
        assert_eq!(
            remaining.as_deref(),
            Some("899"),
            "rules this Redis refused: {refused:?}"
        );
    }
}
