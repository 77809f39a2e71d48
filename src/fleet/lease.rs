//! The fleet-wide fetch lease's pure parts: the owner token, how long a waiter waits before it
//! looks again or gives up, and the early-refresh decision (XFetch). Redis calls live in
//! `store.rs`; this file must not do I/O.

use std::time::Duration;

use tokio::time::Instant;

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

#[cfg(test)]
mod tests {
    use super::*;

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
