//! The simulator's per-user fixed-window rate limiter and its `Ratelimit`, `Ratelimit-Policy` and
//! `Retry-After` headers. Pure: the time is a parameter, and the caller owns the map of windows.

use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use super::RateLimitPolicy;

pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// One user's current window, and the end of their block if they are blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UserWindow {
    started: Instant,
    used: u32,
    blocked_until: Option<Instant>,
}

impl UserWindow {
    pub fn starting(now: Instant) -> Self {
        UserWindow {
            started: now,
            used: 0,
            blocked_until: None,
        }
    }
}

/// Sets how many requests the user has made in the current window (what their other tools
/// spent): a window past its end starts afresh now, a block is kept, and the count is bounded by
/// the quota, so that the next request over it is the one that starts the block.
pub(crate) fn set_used(window: &mut UserWindow, policy: &RateLimitPolicy, used: u32, now: Instant) {
    if now.saturating_duration_since(window.started) >= policy.window {
        let blocked_until = window.blocked_until.filter(|until| *until > now);
        *window = UserWindow::starting(now);
        window.blocked_until = blocked_until;
    }
    window.used = used.min(policy.quota);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Allowed { remaining: u32, reset_in: Duration },
    Blocked { retry_after: Duration },
}

/// Counts one request. A blocked user stays blocked until the block ends, then starts a fresh
/// window; the request that goes over the quota starts the block.
pub(crate) fn admit(window: &mut UserWindow, policy: &RateLimitPolicy, now: Instant) -> Decision {
    if let Some(blocked_until) = window.blocked_until {
        if now < blocked_until {
            return Decision::Blocked {
                retry_after: blocked_until - now,
            };
        }
        *window = UserWindow::starting(now);
    }
    if now.saturating_duration_since(window.started) >= policy.window {
        *window = UserWindow::starting(now);
    }
    if window.used >= policy.quota {
        // A block too long to represent lasts for as long as the simulator runs.
        window.blocked_until = Some(
            now.checked_add(policy.block)
                .unwrap_or_else(|| far_future(now)),
        );
        return Decision::Blocked {
            retry_after: policy.block,
        };
    }
    window.used += 1;
    let reset_in = match window.started.checked_add(policy.window) {
        Some(reset_at) => reset_at.saturating_duration_since(now),
        None => policy.window,
    };
    Decision::Allowed {
        remaining: policy.quota - window.used,
        reset_in,
    }
}

/// About thirty years from `now`, which any test or dev session ends before.
fn far_future(now: Instant) -> Instant {
    let thirty_years = Duration::from_secs(30 * 365 * 86_400);
    now.checked_add(thirty_years).unwrap_or(now)
}

/// Whole seconds, rounded up, as Cloudflare reports waits.
pub(crate) fn ceil_seconds(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0))
}

/// `Ratelimit` and `Ratelimit-Policy` on every authenticated answer, plus `Retry-After` when
/// blocked. While blocked, `t` is the time until the block ends.
pub(crate) fn apply_headers(
    headers: &mut HeaderMap,
    policy: &RateLimitPolicy,
    decision: &Decision,
) {
    let (remaining, reset_in) = match *decision {
        Decision::Allowed {
            remaining,
            reset_in,
        } => (remaining, reset_in),
        Decision::Blocked { retry_after } => {
            headers.insert(RETRY_AFTER, HeaderValue::from(ceil_seconds(retry_after)));
            (0, retry_after)
        }
    };
    let ratelimit = format!("\"default\";r={remaining};t={}", ceil_seconds(reset_in));
    let policy_value = format!(
        "\"default\";q={};w={}",
        policy.quota,
        ceil_seconds(policy.window)
    );
    // Both values are plain ASCII built here, so the conversions cannot fail.
    if let Ok(value) = HeaderValue::try_from(ratelimit) {
        headers.insert(RATELIMIT, value);
    }
    if let Ok(value) = HeaderValue::try_from(policy_value) {
        headers.insert(RATELIMIT_POLICY, value);
    }
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn other_tools_spending_counts_in_the_current_window() {
        let policy = RateLimitPolicy {
            quota: 1200,
            window: Duration::from_secs(300),
            block: Duration::from_secs(300),
        };
        let start = Instant::now();
        let mut window = UserWindow::starting(start);
        tokio::time::advance(Duration::from_secs(100)).await;
        let now = Instant::now();
        set_used(&mut window, &policy, 1100, now);
        assert_eq!(
            admit(&mut window, &policy, now),
            Decision::Allowed {
                remaining: 99,
                reset_in: Duration::from_secs(200)
            }
        );
        // More than the quota counts as the quota: the next request is blocked.
        set_used(&mut window, &policy, 5000, now);
        assert!(matches!(
            admit(&mut window, &policy, now),
            Decision::Blocked { .. }
        ));
        // A window past its end starts afresh from the time of the change.
        let mut old = UserWindow::starting(start);
        tokio::time::advance(Duration::from_secs(300)).await;
        let now = Instant::now();
        set_used(&mut old, &policy, 10, now);
        assert_eq!(
            admit(&mut old, &policy, now),
            Decision::Allowed {
                remaining: 1189,
                reset_in: Duration::from_secs(300)
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RateLimitPolicy = RateLimitPolicy {
        quota: 3,
        window: Duration::from_secs(300),
        block: Duration::from_secs(600),
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn allowed(remaining: u32, reset_in: u64) -> Decision {
        Decision::Allowed {
            remaining,
            reset_in: secs(reset_in),
        }
    }

    fn blocked(retry_after: u64) -> Decision {
        Decision::Blocked {
            retry_after: secs(retry_after),
        }
    }

    /// Replays `(seconds since start, expected decision)` against one user's window.
    fn check(policy: RateLimitPolicy, steps: &[(u64, Decision)]) {
        let start = Instant::now();
        let mut window = UserWindow::starting(start);
        for (at, expected) in steps {
            let decision = admit(&mut window, &policy, start + secs(*at));
            assert_eq!(decision, *expected, "at {at} s");
        }
    }

    #[test]
    fn counts_down_then_blocks_for_the_block_duration() {
        check(
            POLICY,
            &[
                (0, allowed(2, 300)),
                (10, allowed(1, 290)),
                (20, allowed(0, 280)),
                (30, blocked(600)),
                (40, blocked(590)),
                // The block outlives the window: still blocked at the window's end.
                (300, blocked(330)),
                (629, blocked(1)),
                // The block is over: a fresh window starts now.
                (630, allowed(2, 300)),
            ],
        );
    }

    #[test]
    fn a_new_window_restores_the_quota() {
        check(
            POLICY,
            &[
                (0, allowed(2, 300)),
                (1, allowed(1, 299)),
                (2, allowed(0, 298)),
                (300, allowed(2, 300)),
                (301, allowed(1, 299)),
            ],
        );
    }

    #[test]
    fn zero_quota_blocks_immediately() {
        let policy = RateLimitPolicy { quota: 0, ..POLICY };
        check(policy, &[(0, blocked(600)), (600, blocked(600))]);
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let policy = RateLimitPolicy {
            quota: 1,
            window: Duration::MAX,
            block: Duration::MAX,
        };
        let start = Instant::now();
        let mut window = UserWindow::starting(start);
        assert_eq!(
            admit(&mut window, &policy, start),
            Decision::Allowed {
                remaining: 0,
                reset_in: Duration::MAX
            }
        );
        assert_eq!(
            admit(&mut window, &policy, start + secs(1)),
            Decision::Blocked {
                retry_after: Duration::MAX
            }
        );
        assert!(matches!(
            admit(&mut window, &policy, start + secs(2)),
            Decision::Blocked { .. }
        ));
        let mut headers = HeaderMap::new();
        apply_headers(
            &mut headers,
            &policy,
            &Decision::Blocked {
                retry_after: Duration::MAX,
            },
        );
        assert_eq!(headers[RETRY_AFTER], u64::MAX.to_string().as_str());
    }

    #[test]
    fn rounds_seconds_up() {
        assert_eq!(ceil_seconds(Duration::ZERO), 0);
        assert_eq!(ceil_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ceil_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_seconds(Duration::from_millis(299_001)), 300);
    }

    #[test]
    fn headers_follow_cloudflare_format() {
        let mut headers = HeaderMap::new();
        apply_headers(&mut headers, &POLICY, &allowed(7, 30));
        assert_eq!(headers[RATELIMIT], "\"default\";r=7;t=30");
        assert_eq!(headers[RATELIMIT_POLICY], "\"default\";q=3;w=300");
        assert!(headers.get(RETRY_AFTER).is_none());

        let mut headers = HeaderMap::new();
        let decision = Decision::Blocked {
            retry_after: Duration::from_millis(299_500),
        };
        apply_headers(&mut headers, &POLICY, &decision);
        assert_eq!(headers[RETRY_AFTER], "300");
        assert_eq!(headers[RATELIMIT], "\"default\";r=0;t=300");
    }
}
