//! The cache outcome of one request as a value: `CacheStatus`, whose `Display` is the RFC 9211
//! `Cache-Status` header value and whose `as_str` is the log field and metric label. It owns that
//! vocabulary and the one place it is spelled; it must not decide an outcome or build a response.

use std::fmt;

use http::header::HeaderName;
use http::StatusCode;

use crate::coalesce::Role;
use crate::proxy::upstream_call::Refusal;
use crate::upstream::UpstreamError;

/// RFC 9211 `Cache-Status`.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The cache's name in `Cache-Status`.
const CACHE_NAME: &str = "zt-risk-sidecar";

/// How one request was answered, with everything its `Cache-Status` says. `Display` writes the
/// header value; [`CacheStatus::as_str`] is the coarser outcome used as the log field and the
/// metric label, so the three never disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from a fresh entry with `ttl` seconds of freshness left.
    Hit { ttl: u64 },
    /// Served from a fresh entry another sidecar of the fleet stored (read from Redis).
    FleetHit { ttl: u64 },
    /// Served from the entry another sidecar of the fleet fetched while this one waited for it
    /// (the fleet-wide lease): a follower of a fetch in another process.
    FleetCollapsed { fwd_status: StatusCode },
    /// Served from a stale entry that expired `expired_ago` seconds ago; `fwd_status` is
    /// Cloudflare's status when this request did ask upstream and got an answer.
    Stale {
        reason: StaleReason,
        expired_ago: u64,
        fwd_status: Option<StatusCode>,
    },
    /// Cloudflare's answer, relayed: fetched by this request (a leader, which says whether it
    /// stored the answer) or by another one it joined (a follower).
    Miss {
        role: Role,
        stored: bool,
        fwd_status: StatusCode,
    },
    /// Cloudflare answered 200 or 404 with a body that is no envelope, and nothing stale could
    /// stand in: the caller gets a local 502.
    MissInvalidBody { role: Role, fwd_status: StatusCode },
    /// No answer could be had from Cloudflare, and nothing stale could stand in.
    MissFailed { role: Role, error: UpstreamError },
    /// No upstream call was allowed, and nothing stale could stand in.
    Unavailable(Refusal),
    /// Passed through without the cache: the integrations list and the writes.
    Bypass {
        forward: Forward,
        fwd_status: StatusCode,
    },
    /// Answered by the sidecar itself without the cache (bad input, a refused pass-through, an
    /// overload). Such a response carries no `Cache-Status`: the cache took no part in it.
    Local,
}

impl CacheStatus {
    /// The outcome as the log field and the metric label name it.
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheStatus::Hit { .. } | CacheStatus::FleetHit { .. } => "hit",
            CacheStatus::Stale { .. } => "stale",
            CacheStatus::FleetCollapsed { .. } => "collapsed",
            CacheStatus::Miss { role, .. }
            | CacheStatus::MissInvalidBody { role, .. }
            | CacheStatus::MissFailed { role, .. } => match role {
                Role::Leader => "miss",
                Role::Follower => "collapsed",
            },
            CacheStatus::Unavailable(_) => "unavailable",
            CacheStatus::Bypass { .. } => "bypass",
            CacheStatus::Local => "local",
        }
    }

    /// Whether this request fetched from Cloudflare (the leader) or joined another's fetch (a
    /// follower); `None` when no lookup fetch was waited for.
    pub fn fetch_role(&self) -> Option<Role> {
        match self {
            CacheStatus::Miss { role, .. }
            | CacheStatus::MissInvalidBody { role, .. }
            | CacheStatus::MissFailed { role, .. } => Some(*role),
            CacheStatus::FleetCollapsed { .. } => Some(Role::Follower),
            _ => None,
        }
    }

    /// Why a stale entry was served, if one was.
    pub fn stale_reason(&self) -> Option<StaleReason> {
        match self {
            CacheStatus::Stale { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// Cloudflare's status, when this answer came from (or was decided by) an upstream answer.
    pub fn fwd_status(&self) -> Option<StatusCode> {
        match self {
            CacheStatus::Stale { fwd_status, .. } => *fwd_status,
            CacheStatus::Miss { fwd_status, .. }
            | CacheStatus::MissInvalidBody { fwd_status, .. }
            | CacheStatus::Bypass { fwd_status, .. }
            | CacheStatus::FleetCollapsed { fwd_status } => Some(*fwd_status),
            CacheStatus::Hit { .. }
            | CacheStatus::FleetHit { .. }
            | CacheStatus::MissFailed { .. }
            | CacheStatus::Unavailable(_)
            | CacheStatus::Local => None,
        }
    }

    /// Whether the response carries this value as its `Cache-Status`.
    pub fn is_sent(&self) -> bool {
        !matches!(self, CacheStatus::Local)
    }
}

/// The `Cache-Status` header value, e.g. `zt-risk-sidecar; fwd=miss; stored; fwd-status=200`.
/// README documents these strings and callers match on them: change none without need.
impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(CACHE_NAME)?;
        match *self {
            CacheStatus::Hit { ttl } => write!(f, "; hit; ttl={ttl}"),
            CacheStatus::FleetHit { ttl } => write!(f, "; hit; ttl={ttl}; detail=fleet"),
            CacheStatus::FleetCollapsed { fwd_status } => write!(
                f,
                "; fwd=miss; collapsed; fwd-status={}; detail=fleet",
                fwd_status.as_u16()
            ),
            CacheStatus::Stale {
                reason,
                expired_ago,
                fwd_status,
            } => {
                // Only a failed refresh went upstream for this request; every other stale answer
                // was served without asking.
                let lead = match reason {
                    StaleReason::IfError => "fwd=stale",
                    _ => "hit",
                };
                write!(
                    f,
                    "; {lead}; ttl=-{expired_ago}; detail={}",
                    reason.as_str()
                )?;
                match fwd_status {
                    Some(status) => write!(f, "; fwd-status={}", status.as_u16()),
                    None => Ok(()),
                }
            }
            CacheStatus::Miss {
                role,
                stored,
                fwd_status,
            } => {
                f.write_str("; fwd=miss")?;
                match (role, stored) {
                    (Role::Follower, _) => f.write_str("; collapsed")?,
                    (Role::Leader, true) => f.write_str("; stored")?,
                    (Role::Leader, false) => {}
                }
                write!(f, "; fwd-status={}", fwd_status.as_u16())
            }
            CacheStatus::MissInvalidBody { fwd_status, .. } => write!(
                f,
                "; fwd=miss; fwd-status={}; detail=upstream-invalid-body",
                fwd_status.as_u16()
            ),
            CacheStatus::MissFailed { error, .. } => {
                write!(f, "; fwd=miss; detail={}", error.as_str())
            }
            CacheStatus::Unavailable(refusal) => write!(f, "; detail={}", refusal.as_str()),
            CacheStatus::Bypass {
                forward,
                fwd_status,
            } => write!(
                f,
                "; fwd={}; fwd-status={}",
                forward.as_str(),
                fwd_status.as_u16()
            ),
            // Never sent (see `is_sent`); the bare name is what RFC 9211 makes of no parameters.
            CacheStatus::Local => Ok(()),
        }
    }
}

/// Why a stale entry was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleReason {
    /// Within stale-while-revalidate: served at once, refreshed in the background.
    WhileRevalidate,
    /// The refresh failed (connect error, timeout, 5xx, 429, invalid body).
    IfError,
    /// This credential's upstream budget is spent.
    BudgetExhausted,
    /// This credential is cooling down after Cloudflare's 429.
    RateLimited,
    /// Cloudflare's own count for this credential is at the reserve until its window resets.
    QuotaReserve,
    /// The refresh took longer than `stale_after_slow_upstream`; it goes on in the background.
    SlowUpstream,
    /// The circuit breaker considers Cloudflare down.
    UpstreamDown,
}

impl StaleReason {
    /// The `detail` of `Cache-Status`, the log field and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::WhileRevalidate => "stale-while-revalidate",
            StaleReason::IfError => "stale-if-error",
            StaleReason::BudgetExhausted => "stale-budget-exhausted",
            StaleReason::RateLimited => "stale-rate-limited",
            StaleReason::QuotaReserve => "stale-quota-reserve",
            StaleReason::SlowUpstream => "stale-slow-upstream",
            StaleReason::UpstreamDown => "stale-upstream-down",
        }
    }
}

/// Why a request that bypassed the cache went upstream (RFC 9211 `fwd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// The list: not cacheable by this sidecar.
    Bypass,
    /// A write (create, update, delete): its method is never served from a cache.
    Method,
}

impl Forward {
    pub fn as_str(self) -> &'static str {
        match self {
            Forward::Bypass => "bypass",
            Forward::Method => "method",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn check(status: CacheStatus, header: &str, label: &str) {
        assert_eq!(status.to_string(), header, "{status:?}");
        assert_eq!(status.as_str(), label, "{status:?}");
    }

    #[test]
    fn every_variant_displays_the_documented_header_value_and_its_label() {
        let ok = StatusCode::OK;
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        let wait = Duration::from_secs(3);
        let cases = [
            (
                CacheStatus::Hit { ttl: 59 },
                "zt-risk-sidecar; hit; ttl=59",
                "hit",
            ),
            (
                CacheStatus::Hit { ttl: 0 },
                "zt-risk-sidecar; hit; ttl=0",
                "hit",
            ),
            (
                CacheStatus::FleetHit { ttl: 42 },
                "zt-risk-sidecar; hit; ttl=42; detail=fleet",
                "hit",
            ),
            (
                CacheStatus::FleetCollapsed { fwd_status: ok },
                "zt-risk-sidecar; fwd=miss; collapsed; fwd-status=200; detail=fleet",
                "collapsed",
            ),
            (
                CacheStatus::Stale {
                    reason: StaleReason::WhileRevalidate,
                    expired_ago: 3,
                    fwd_status: None,
                },
                "zt-risk-sidecar; hit; ttl=-3; detail=stale-while-revalidate",
                "stale",
            ),
            (
                CacheStatus::Stale {
                    reason: StaleReason::IfError,
                    expired_ago: 42,
                    fwd_status: Some(unavailable),
                },
                "zt-risk-sidecar; fwd=stale; ttl=-42; detail=stale-if-error; fwd-status=503",
                "stale",
            ),
            (
                CacheStatus::Stale {
                    reason: StaleReason::IfError,
                    expired_ago: 42,
                    fwd_status: None,
                },
                "zt-risk-sidecar; fwd=stale; ttl=-42; detail=stale-if-error",
                "stale",
            ),
            (
                CacheStatus::Stale {
                    reason: StaleReason::BudgetExhausted,
                    expired_ago: 42,
                    fwd_status: None,
                },
                "zt-risk-sidecar; hit; ttl=-42; detail=stale-budget-exhausted",
                "stale",
            ),
            (
                CacheStatus::Stale {
                    reason: StaleReason::RateLimited,
                    expired_ago: 0,
                    fwd_status: None,
                },
                "zt-risk-sidecar; hit; ttl=-0; detail=stale-rate-limited",
                "stale",
            ),
            (
                CacheStatus::Stale {
                    reason: StaleReason::UpstreamDown,
                    expired_ago: 7,
                    fwd_status: None,
                },
                "zt-risk-sidecar; hit; ttl=-7; detail=stale-upstream-down",
                "stale",
            ),
            (
                CacheStatus::Miss {
                    role: Role::Leader,
                    stored: true,
                    fwd_status: ok,
                },
                "zt-risk-sidecar; fwd=miss; stored; fwd-status=200",
                "miss",
            ),
            (
                CacheStatus::Miss {
                    role: Role::Leader,
                    stored: false,
                    fwd_status: StatusCode::FORBIDDEN,
                },
                "zt-risk-sidecar; fwd=miss; fwd-status=403",
                "miss",
            ),
            (
                CacheStatus::Miss {
                    role: Role::Follower,
                    stored: true,
                    fwd_status: ok,
                },
                "zt-risk-sidecar; fwd=miss; collapsed; fwd-status=200",
                "collapsed",
            ),
            (
                CacheStatus::Miss {
                    role: Role::Follower,
                    stored: false,
                    fwd_status: StatusCode::TOO_MANY_REQUESTS,
                },
                "zt-risk-sidecar; fwd=miss; collapsed; fwd-status=429",
                "collapsed",
            ),
            (
                CacheStatus::MissInvalidBody {
                    role: Role::Leader,
                    fwd_status: ok,
                },
                "zt-risk-sidecar; fwd=miss; fwd-status=200; detail=upstream-invalid-body",
                "miss",
            ),
            (
                CacheStatus::MissInvalidBody {
                    role: Role::Follower,
                    fwd_status: StatusCode::NOT_FOUND,
                },
                "zt-risk-sidecar; fwd=miss; fwd-status=404; detail=upstream-invalid-body",
                "collapsed",
            ),
            (
                CacheStatus::MissFailed {
                    role: Role::Leader,
                    error: UpstreamError::Timeout,
                },
                "zt-risk-sidecar; fwd=miss; detail=upstream-timeout",
                "miss",
            ),
            (
                CacheStatus::MissFailed {
                    role: Role::Follower,
                    error: UpstreamError::Connect,
                },
                "zt-risk-sidecar; fwd=miss; detail=upstream-connect-failed",
                "collapsed",
            ),
            (
                CacheStatus::Unavailable(Refusal::BudgetExhausted { retry_after: wait }),
                "zt-risk-sidecar; detail=budget-exhausted",
                "unavailable",
            ),
            (
                CacheStatus::Unavailable(Refusal::CoolingDown { retry_after: wait }),
                "zt-risk-sidecar; detail=rate-limited",
                "unavailable",
            ),
            (
                CacheStatus::Unavailable(Refusal::UpstreamDown { retry_after: wait }),
                "zt-risk-sidecar; detail=upstream-down",
                "unavailable",
            ),
            (
                CacheStatus::Bypass {
                    forward: Forward::Bypass,
                    fwd_status: ok,
                },
                "zt-risk-sidecar; fwd=bypass; fwd-status=200",
                "bypass",
            ),
            (
                CacheStatus::Bypass {
                    forward: Forward::Method,
                    fwd_status: StatusCode::CREATED,
                },
                "zt-risk-sidecar; fwd=method; fwd-status=201",
                "bypass",
            ),
            (CacheStatus::Local, "zt-risk-sidecar", "local"),
        ];
        for (status, header, label) in cases {
            check(status, header, label);
        }
    }

    #[test]
    fn the_upstream_status_and_stale_reason_come_from_the_same_value() {
        let stale = CacheStatus::Stale {
            reason: StaleReason::IfError,
            expired_ago: 1,
            fwd_status: Some(StatusCode::BAD_GATEWAY),
        };
        assert_eq!(stale.fwd_status(), Some(StatusCode::BAD_GATEWAY));
        assert_eq!(stale.stale_reason(), Some(StaleReason::IfError));
        let hit = CacheStatus::Hit { ttl: 5 };
        assert_eq!(hit.fwd_status(), None);
        assert_eq!(hit.stale_reason(), None);
    }
}
