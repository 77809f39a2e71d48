//! The fleet-wide fetch lease's pure parts: the owner token, how long a waiter waits before it
//! looks again or gives up, the early-refresh decision (XFetch), and whether a lease holder takes
//! the fleet's entry instead of fetching. Redis calls live in `store.rs`; this file must not do
//! I/O.

use std::time::Duration;

use tokio::time::Instant;

use crate::cache::{CacheEntry, Freshness};

/// A random owner token: only the sidecar that set the lease may renew or release it.
pub fn owner_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What a waiter does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStep {
    /// Wait for the fill until then, then look again (and take the lease over if it is gone).
    WaitUntil(Instant),
    /// The caller's deadline has come.
    GiveUp,
}

/// Pure: a waiter waits for the holder's fill at most until the lease runs out (plus one Redis
/// round trip, so that it does not race the expiry), and never past the caller's deadline.
/// `lease_left_ms` is Redis's `PTTL`: negative when the lease is already gone.
pub fn wait_step(
    now: Instant,
    deadline: Instant,
    lease_left_ms: i64,
    redis_timeout: Duration,
) -> WaitStep {
    if now >= deadline {
        return WaitStep::GiveUp;
    }
    let lease_left = Duration::from_millis(u64::try_from(lease_left_ms).unwrap_or(0));
    let until = (now + lease_left + redis_timeout).min(deadline);
    WaitStep::WaitUntil(until)
}

/// Pure: XFetch's probabilistic early refresh. An entry with `remaining` freshness, whose fetch
/// takes about `fetch_time`, is refreshed now with a probability that rises as expiry nears:
/// when `fetch_time * beta * -ln(random)` reaches past the expiry. `random` is uniform in
/// (0, 1]. Across a fleet, one sidecar tends to refresh a hot key first, and the lease makes sure
/// only one does.
pub fn refresh_early(remaining: Duration, fetch_time: Duration, random: f64) -> bool {
    const BETA: f64 = 1.0;
    if remaining.is_zero() {
        return true;
    }
    let random = random.clamp(f64::MIN_POSITIVE, 1.0);
    let gap = fetch_time.as_secs_f64() * BETA * -random.ln();
    gap >= remaining.as_secs_f64()
}

/// Pure: whether a fresh hit, `remaining` before its entry expires, starts an early refresh:
/// XFetch with the entry's own measured `fetch_time` as the recompute time. A fixed guess would be wrong both ways: far longer
/// than a fast fetch, it makes nearly every hit on a short-lived entry refresh it (and the fresh
/// entry is at once due again); far shorter than a slow one, callers wait at expiry. Only fresh
/// hits ask (stale-while-revalidate refreshes a stale entry).
///
/// `draw` is only called when a draw could matter: no draw (at least `f64::MIN_POSITIVE`) reaches
/// further than about 708 fetch times, so an entry with more freshness left than that, which is
/// nearly every hit, costs no random number.
pub fn early_refresh_due(
    remaining: Duration,
    fetch_time: Duration,
    draw: impl FnOnce() -> f64,
) -> bool {
    let furthest = fetch_time.as_secs_f64() * -f64::MIN_POSITIVE.ln();
    remaining.as_secs_f64() <= furthest && refresh_early(remaining, fetch_time, draw())
}

/// How far apart this host's clock may put two copies of one fetch's entry: the fleet keeps
/// wall-clock milliseconds, and each conversion reads both clocks at slightly different moments.
/// Two different fetches of a key are at least one fetch apart, and in steady state about a TTL.
pub const SAME_FETCH: Duration = Duration::from_millis(20);

/// Pure: whether a sidecar that has just won the lease for a fetch takes the fleet's entry
/// instead: it is fresh, and this sidecar's own copy is missing, no longer fresh, or older (from
/// an earlier fetch). That is the case when another sidecar refreshed the key a moment ago and
/// let the lease go: fetching again would only repeat its upstream call.
pub fn takes_shared(own: Option<&CacheEntry>, shared: Option<&CacheEntry>, now: Instant) -> bool {
    let Some(shared) = shared else {
        return false;
    };
    if !matches!(shared.freshness(now), Freshness::Fresh { .. }) {
        return false;
    }
    match own {
        Some(own) if matches!(own.freshness(now), Freshness::Fresh { .. }) => {
            shared.stored_at > own.stored_at + SAME_FETCH
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::upstream::UpstreamAnswer;

    fn entry(stored_at: Instant, fresh_for: Duration, fetch_time: Duration) -> CacheEntry {
        CacheEntry {
            answer: Arc::new(UpstreamAnswer {
                status: http::StatusCode::OK,
                headers: Vec::new(),
                body: bytes::Bytes::from_static(b"{}"),
            }),
            stored_at,
            fresh_for,
            retain_for: fresh_for * 2,
            integration: None,
            fetch_time,
        }
    }

    /// How many of `draws` evenly spread draws start an early refresh of `entry` at `now`.
    /// What the lookup asks on a fresh hit at `now` (a test entry here is always fresh).
    fn due(entry: &CacheEntry, now: Instant, draw: impl FnOnce() -> f64) -> bool {
        match entry.freshness(now) {
            Freshness::Fresh { remaining } => early_refresh_due(remaining, entry.fetch_time, draw),
            Freshness::Stale { .. } => panic!("early refresh is asked only on a fresh hit"),
        }
    }

    fn refreshes(entry: &CacheEntry, now: Instant, draws: u32) -> usize {
        (1..=draws)
            .filter(|i| due(entry, now, || f64::from(*i) / f64::from(draws)))
            .count()
    }

    #[test]
    fn early_refresh_weighs_the_entry_s_measured_fetch_time() {
        let now = Instant::now();
        let ttl = Duration::from_secs(2);
        // A 2 s entry fetched in 5 ms: just stored, or half-way, no draw refreshes it (it would
        // take a draw below e^-200); 5 ms from expiry, about e^-1 of them do.
        let fast = entry(now, ttl, Duration::from_millis(5));
        assert_eq!(refreshes(&fast, now, 10_000), 0);
        assert_eq!(refreshes(&fast, now + Duration::from_secs(1), 10_000), 0);
        let near = refreshes(&fast, now + ttl - Duration::from_millis(5), 10_000);
        assert!((3_500..3_900).contains(&near), "{near}");
        // The same entry fetched in 1 s: refreshed earlier and more often, so that a slow fetch
        // still ends before expiry (half-way: e^-1 of the draws).
        let slow = entry(now, ttl, Duration::from_secs(1));
        let half_way = refreshes(&slow, now + Duration::from_secs(1), 10_000);
        assert!((3_500..3_900).contains(&half_way), "{half_way}");
        // Expired: stale-while-revalidate's, not XFetch's.
        // Further from expiry than any draw reaches (708 fetch times of 1 ms): no draw is made at
        // all, and none is needed to say no; within reach, the smallest draw says yes.
        let quick = entry(now, ttl, Duration::from_millis(1));
        assert!(!due(&quick, now, || panic!("a draw that cannot matter")));
        let within = now + ttl - Duration::from_millis(700);
        assert!(due(&quick, within, || f64::MIN_POSITIVE));
    }

    #[test]
    fn a_lease_holder_takes_a_newer_fleet_entry_instead_of_fetching() {
        let now = Instant::now();
        let ttl = Duration::from_secs(2);
        let fetch = Duration::from_millis(5);
        let own = entry(now - Duration::from_millis(1_990), ttl, fetch);
        // Another sidecar refreshed the key 30 ms ago.
        let newer = entry(now - Duration::from_millis(30), ttl, fetch);
        assert!(takes_shared(Some(&own), Some(&newer), now));
        // This sidecar's copy expired, or it has none: any fresh entry of the fleet will do.
        let expired = entry(now - Duration::from_secs(3), ttl, fetch);
        assert!(takes_shared(Some(&expired), Some(&own), now));
        assert!(takes_shared(None, Some(&own), now));
        // The same fetch read back (a few ms apart on this clock) is what is due: fetch.
        let same = entry(own.stored_at + Duration::from_millis(3), ttl, fetch);
        assert!(!takes_shared(Some(&own), Some(&same), now));
        assert!(!takes_shared(Some(&newer), Some(&own), now), "older");
        // Nothing fresh in the fleet: fetch.
        assert!(!takes_shared(Some(&own), None, now));
        assert!(!takes_shared(None, Some(&expired), now));
        // Exactly `SAME_FETCH` apart still counts as the same fetch.
        let edge = entry(own.stored_at + SAME_FETCH, ttl, fetch);
        assert!(!takes_shared(Some(&own), Some(&edge), now));
        // An own copy that is no longer fresh yields to a fresh fleet entry however close their
        // fetches were (here the fleet's was stored with a longer freshness, 10 ms later).
        let short = entry(
            now - Duration::from_millis(1_500),
            Duration::from_secs(1),
            fetch,
        );
        let longer = entry(short.stored_at + Duration::from_millis(10), ttl, fetch);
        assert!(takes_shared(Some(&short), Some(&longer), now));
    }

    #[test]
    fn a_waiter_waits_for_the_lease_but_never_past_its_deadline() {
        let now = Instant::now();
        let timeout = Duration::from_millis(50);
        let deadline = now + Duration::from_secs(15);
        assert_eq!(
            wait_step(now, deadline, 2_000, timeout),
            WaitStep::WaitUntil(now + Duration::from_millis(2_050))
        );
        let soon = now + Duration::from_millis(500);
        assert_eq!(
            wait_step(now, soon, 2_000, timeout),
            WaitStep::WaitUntil(soon)
        );
        assert_eq!(
            wait_step(now, deadline, -2, timeout),
            WaitStep::WaitUntil(now + timeout),
            "a lease without TTL or gone: look again after one round trip"
        );
        assert_eq!(
            wait_step(deadline, deadline, 2_000, timeout),
            WaitStep::GiveUp
        );
    }

    #[test]
    fn early_refresh_grows_likelier_towards_expiry() {
        let fetch = Duration::from_millis(200);
        assert!(!refresh_early(Duration::from_secs(60), fetch, 0.5));
        assert!(refresh_early(Duration::ZERO, fetch, 0.5));
        // -ln(0.5) * 0.2 s = 0.139 s.
        assert!(refresh_early(Duration::from_millis(100), fetch, 0.5));
        assert!(!refresh_early(Duration::from_millis(200), fetch, 0.5));
        // Over many draws, a key 0.2 s from expiry refreshes in about e^-1 = 37% of them.
        let draws = 10_000;
        let refreshed = (1..=draws)
            .filter(|i| {
                refresh_early(
                    Duration::from_millis(200),
                    fetch,
                    f64::from(*i) / f64::from(draws),
                )
            })
            .count();
        assert!((3_500..3_900).contains(&refreshed), "{refreshed}");
        assert!(owner_token() != owner_token());
        assert_eq!(owner_token().len(), 32);
    }
}
