//! Upstream health: the circuit breaker shared by every credential, the retry rules and the backoff
//! schedule. The state machine and the schedule are pure functions of their inputs and `now`; the
//! `Breaker` only holds the state behind a mutex. It does no I/O.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::upstream::UpstreamError;

/// When the breaker opens, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker; 0 turns the breaker off.
    pub failure_threshold: u32,
    /// How long it stays open before one probe is let through.
    pub cool_down: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

impl BreakerState {
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half-open",
        }
    }
}

/// What the breaker says to one upstream call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Go ahead.
    Allowed,
    /// Go ahead as the one probe of a half-open breaker; report the result.
    Probe,
    /// Do not call upstream; it is considered down for `retry_after` more.
    Rejected { retry_after: Duration },
}

/// How one upstream call went, as far as the breaker cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Cloudflare answered (any status but 502, 503, 504): it is reachable and well.
    Healthy,
    /// Unreachable or unwell: a connect error, a timeout, 502, 503 or 504.
    Unhealthy,
    /// The call was not made after all (the probe gave up its turn).
    NotCalled,
}

/// Pure: the breaker's answer to a call at `now`, and its next state.
pub fn on_call(state: BreakerState, policy: &BreakerPolicy, now: Instant) -> (BreakerState, Pass) {
    if policy.failure_threshold == 0 {
        return (state, Pass::Allowed);
    }
    match state {
        BreakerState::Closed { .. } => (state, Pass::Allowed),
        BreakerState::Open { until } if now < until => (
            state,
            Pass::Rejected {
                retry_after: until - now,
            },
        ),
        BreakerState::Open { .. }
        | BreakerState::HalfOpen {
            probe_in_flight: false,
        } => (
            BreakerState::HalfOpen {
                probe_in_flight: true,
            },
            Pass::Probe,
        ),
        BreakerState::HalfOpen {
            probe_in_flight: true,
        } => (
            state,
            // The probe decides soon; callers meanwhile fail fast rather than pile onto it.
            Pass::Rejected {
                retry_after: Duration::from_secs(1),
            },
        ),
    }
}

/// Pure: the breaker's next state after a call that was let through as `pass` went `health`.
pub fn on_result(
    state: BreakerState,
    pass: Pass,
    health: Health,
    policy: &BreakerPolicy,
    now: Instant,
) -> BreakerState {
    if policy.failure_threshold == 0 {
        return state;
    }
    let open = BreakerState::Open {
        until: now + policy.cool_down,
    };
    match (pass, health, state) {
        (Pass::Probe, Health::Healthy, _) => BreakerState::Closed {
            consecutive_failures: 0,
        },
        (Pass::Probe, Health::Unhealthy, _) => open,
        (Pass::Probe, Health::NotCalled, BreakerState::HalfOpen { .. }) => BreakerState::HalfOpen {
            probe_in_flight: false,
        },
        (Pass::Allowed, Health::Healthy, BreakerState::Closed { .. }) => BreakerState::Closed {
            consecutive_failures: 0,
        },
        (
            Pass::Allowed,
            Health::Unhealthy,
            BreakerState::Closed {
                consecutive_failures,
            },
        ) => {
            let failures = consecutive_failures.saturating_add(1);
            if failures >= policy.failure_threshold {
                open
            } else {
                BreakerState::Closed {
                    consecutive_failures: failures,
                }
            }
        }
        // Results of calls let through before the state changed do not move it again.
        _ => state,
    }
}

/// The shared circuit breaker.
pub struct Breaker {
    policy: Mutex<BreakerPolicy>,
    state: Mutex<BreakerState>,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Breaker {
        Breaker {
            policy: Mutex::new(policy),
            state: Mutex::new(BreakerState::Closed {
                consecutive_failures: 0,
            }),
        }
    }

    fn policy(&self) -> BreakerPolicy {
        *self.policy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a new policy (on reload); the current state is kept.
    pub fn set_policy(&self, policy: BreakerPolicy) {
        *self.policy.lock().unwrap_or_else(PoisonError::into_inner) = policy;
    }

    pub fn call(&self) -> Pass {
        let policy = self.policy();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (next, pass) = on_call(*state, &policy, Instant::now());
        *state = next;
        pass
    }

    pub fn record(&self, pass: Pass, health: Health) {
        let policy = self.policy();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let before = *state;
        *state = on_result(before, pass, health, &policy, Instant::now());
        log_transition(before, *state, &policy);
    }

    pub fn state(&self) -> BreakerState {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Logs the breaker opening and closing, once each, at `warn`: they are what an operator reading
/// only warnings must see of an outage. A probe that fails re-opens a breaker that was already
/// open to callers, and is logged at `info`.
fn log_transition(before: BreakerState, after: BreakerState, policy: &BreakerPolicy) {
    match (before, after) {
        (BreakerState::Closed { .. }, BreakerState::Open { .. }) => tracing::warn!(
            consecutive_failures = policy.failure_threshold,
            cool_down_secs = policy.cool_down.as_secs(),
            "circuit breaker opened: Cloudflare failed repeatedly (5xx, timeouts or connection failures); lookups are served stale or refused with 503 until a probe succeeds"
        ),
        (BreakerState::HalfOpen { .. }, BreakerState::Open { .. }) => tracing::info!(
            cool_down_secs = policy.cool_down.as_secs(),
            "circuit breaker probe failed: it stays open"
        ),
        (BreakerState::HalfOpen { .. } | BreakerState::Open { .. }, BreakerState::Closed { .. }) => {
            tracing::warn!("circuit breaker closed: Cloudflare answered the probe")
        }
        _ => {}
    }
}

/// Pure: how an upstream call went for the breaker.
pub fn health_of(result: &Result<StatusCode, UpstreamError>) -> Health {
    match result {
        Ok(status) if is_gateway_failure(*status) => Health::Unhealthy,
        Ok(_) => Health::Healthy,
        Err(
            UpstreamError::Connect
            | UpstreamError::Unreachable
            | UpstreamError::Timeout
            | UpstreamError::InvalidAnswer,
        ) => Health::Unhealthy,
        Err(UpstreamError::BodyTooLarge) => Health::Healthy,
    }
}

/// Pure: 502, 503 or 504, the answers of a gateway in trouble.
pub fn is_gateway_failure(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

/// Pure: whether a failed call is worth another try. Connection failures and 502/503/504 are; a
/// timeout has spent the deadline, and a 4xx or 500 is an answer about this request.
pub fn is_retryable(result: &Result<StatusCode, UpstreamError>) -> bool {
    match result {
        Ok(status) => is_gateway_failure(*status),
        Err(UpstreamError::Connect | UpstreamError::Unreachable) => true,
        Err(
            UpstreamError::Timeout | UpstreamError::BodyTooLarge | UpstreamError::InvalidAnswer,
        ) => false,
    }
}

/// The first retry waits about this long; each further one twice as long.
pub const RETRY_BASE_DELAY: Duration = Duration::from_millis(100);

/// Pure: the wait before retry number `retry` (0 for the first), given `jitter` in [0, 1): a
/// random point between half and all of `RETRY_BASE_DELAY * 2^retry`, so that many sidecars
/// retrying at once spread out.
pub fn backoff(retry: u32, jitter: f64) -> Duration {
    let full = RETRY_BASE_DELAY.saturating_mul(1u32 << retry.min(16));
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BreakerPolicy = BreakerPolicy {
        failure_threshold: 3,
        cool_down: Duration::from_secs(10),
    };

    fn closed(failures: u32) -> BreakerState {
        BreakerState::Closed {
            consecutive_failures: failures,
        }
    }

    #[test]
    fn breaker_transitions() {
        let now = Instant::now();
        let open_until = now + Duration::from_secs(10);
        let check = |state, pass, health, expected| {
            assert_eq!(
                on_result(state, pass, health, &POLICY, now),
                expected,
                "{state:?} {pass:?} {health:?}"
            );
        };
        check(closed(0), Pass::Allowed, Health::Unhealthy, closed(1));
        check(closed(1), Pass::Allowed, Health::Unhealthy, closed(2));
        check(
            closed(2),
            Pass::Allowed,
            Health::Unhealthy,
            BreakerState::Open { until: open_until },
        );
        check(closed(2), Pass::Allowed, Health::Healthy, closed(0));
        let probing = BreakerState::HalfOpen {
            probe_in_flight: true,
        };
        check(probing, Pass::Probe, Health::Healthy, closed(0));
        check(
            probing,
            Pass::Probe,
            Health::Unhealthy,
            BreakerState::Open { until: open_until },
        );
        check(
            probing,
            Pass::Probe,
            Health::NotCalled,
            BreakerState::HalfOpen {
                probe_in_flight: false,
            },
        );
        // A late result from before the breaker opened does not close it.
        let open = BreakerState::Open { until: open_until };
        check(open, Pass::Allowed, Health::Healthy, open);
        check(open, Pass::Allowed, Health::Unhealthy, open);
    }

    #[test]
    fn breaker_calls() {
        let now = Instant::now();
        let check = |state, expected_state, expected_pass| {
            assert_eq!(
                on_call(state, &POLICY, now),
                (expected_state, expected_pass),
                "{state:?}"
            );
        };
        check(closed(2), closed(2), Pass::Allowed);
        let open = BreakerState::Open {
            until: now + Duration::from_secs(4),
        };
        check(
            open,
            open,
            Pass::Rejected {
                retry_after: Duration::from_secs(4),
            },
        );
        let elapsed = BreakerState::Open { until: now };
        let probing = BreakerState::HalfOpen {
            probe_in_flight: true,
        };
        check(elapsed, probing, Pass::Probe);
        check(
            BreakerState::HalfOpen {
                probe_in_flight: false,
            },
            probing,
            Pass::Probe,
        );
        check(
            probing,
            probing,
            Pass::Rejected {
                retry_after: Duration::from_secs(1),
            },
        );
    }

    #[test]
    fn a_zero_threshold_turns_the_breaker_off() {
        let off = BreakerPolicy {
            failure_threshold: 0,
            ..POLICY
        };
        let now = Instant::now();
        assert_eq!(on_call(closed(0), &off, now), (closed(0), Pass::Allowed));
        assert_eq!(
            on_result(closed(0), Pass::Allowed, Health::Unhealthy, &off, now),
            closed(0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_then_lets_one_probe_through_after_its_cool_down() {
        let breaker = Breaker::new(POLICY);
        for _ in 0..3 {
            let pass = breaker.call();
            assert_eq!(pass, Pass::Allowed);
            breaker.record(pass, Health::Unhealthy);
        }
        assert_eq!(breaker.state().as_str(), "open");
        assert_eq!(
            breaker.call(),
            Pass::Rejected {
                retry_after: Duration::from_secs(10)
            }
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = breaker.call();
        assert_eq!(probe, Pass::Probe);
        assert!(
            matches!(breaker.call(), Pass::Rejected { .. }),
            "one probe at a time"
        );
        breaker.record(probe, Health::Healthy);
        assert_eq!(breaker.state(), closed(0));
        assert_eq!(breaker.call(), Pass::Allowed);
    }

    /// A reloaded policy takes effect on the next call and result, and the state is kept: a
    /// `set_policy` that did nothing fails here.
    #[tokio::test(start_paused = true)]
    async fn a_new_breaker_policy_takes_effect_and_keeps_the_state() {
        let breaker = Breaker::new(POLICY);
        let pass = breaker.call();
        breaker.record(pass, Health::Unhealthy);
        assert_eq!(breaker.state(), closed(1));
        // A threshold of 2 now opens it on the second consecutive failure (the old one needed 3),
        // for the new cool-down.
        breaker.set_policy(BreakerPolicy {
            failure_threshold: 2,
            cool_down: Duration::from_secs(40),
        });
        let pass = breaker.call();
        breaker.record(pass, Health::Unhealthy);
        assert_eq!(breaker.state().as_str(), "open");
        assert_eq!(
            breaker.call(),
            Pass::Rejected {
                retry_after: Duration::from_secs(40)
            }
        );
        // Turning the breaker off lets every call through, even while it was open.
        breaker.set_policy(BreakerPolicy {
            failure_threshold: 0,
            ..POLICY
        });
        assert_eq!(breaker.call(), Pass::Allowed);
    }

    /// What `log_transition` writes for one transition, as a plain-text log.
    fn logged(before: BreakerState, after: BreakerState) -> String {
        crate::telemetry::captured::logged(|| log_transition(before, after, &POLICY))
    }

    /// ARCHITECTURE.md: the breaker opening and closing are logged once each at `warn` (an
    /// operator reading only warnings sees the outage), a failed probe at `info`, and nothing
    /// else. The log lines of the real binary are checked in `operations.rs`; this pins each
    /// arm of the transition table.
    #[test]
    fn breaker_transitions_are_logged_at_their_levels() {
        let open = BreakerState::Open {
            until: Instant::now(),
        };
        let probing = BreakerState::HalfOpen {
            probe_in_flight: true,
        };
        for (before, after, expected) in [
            (closed(4), open, Some(" WARN ")),
            (probing, open, Some(" INFO ")),
            (probing, closed(0), Some(" WARN ")),
            (open, closed(0), Some(" WARN ")),
            (closed(0), closed(1), None),
            (open, probing, None),
        ] {
            let text = logged(before, after);
            let message = match after {
                BreakerState::Open { .. } if before.as_str() == "closed" => {
                    "circuit breaker opened"
                }
                BreakerState::Open { .. } => "circuit breaker probe failed",
                _ => "circuit breaker closed",
            };
            match expected {
                Some(level) => assert!(
                    text.lines().count() == 1 && text.contains(level) && text.contains(message),
                    "{before:?} -> {after:?}: {text:?}"
                ),
                None => assert_eq!(text, "", "{before:?} -> {after:?}"),
            }
        }
    }

    #[test]
    fn what_counts_and_what_is_retried() {
        let status = |code: u16| Ok(StatusCode::from_u16(code).expect("status"));
        for code in [200u16, 404, 401, 403, 429, 500] {
            assert_eq!(health_of(&status(code)), Health::Healthy, "{code}");
            assert!(!is_retryable(&status(code)), "{code}");
        }
        for code in [502u16, 503, 504] {
            assert_eq!(health_of(&status(code)), Health::Unhealthy, "{code}");
            assert!(is_retryable(&status(code)), "{code}");
        }
        for error in [UpstreamError::Connect, UpstreamError::Unreachable] {
            assert_eq!(health_of(&Err(error)), Health::Unhealthy);
            assert!(is_retryable(&Err(error)));
        }
        assert_eq!(health_of(&Err(UpstreamError::Timeout)), Health::Unhealthy);
        // An answer that cannot be parsed counts against the breaker but is not retried.
        assert_eq!(
            health_of(&Err(UpstreamError::InvalidAnswer)),
            Health::Unhealthy
        );
        assert!(!is_retryable(&Err(UpstreamError::InvalidAnswer)));
        assert!(!is_retryable(&Err(UpstreamError::Timeout)));
        assert_eq!(
            health_of(&Err(UpstreamError::BodyTooLarge)),
            Health::Healthy
        );
        assert!(!is_retryable(&Err(UpstreamError::BodyTooLarge)));
    }

    #[test]
    fn backoff_grows_and_stays_within_its_jitter_band() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(2, 0.5), Duration::from_millis(300));
        assert_eq!(
            backoff(0, 7.0),
            Duration::from_millis(100),
            "jitter is clamped"
        );
    }
}
