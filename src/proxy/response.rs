//! Building the responses of the request path: relayed and replayed answers, `Age`, the
//! `Cache-Status` header (set from a [`CacheStatus`] in one place), and the tables of static header
//! values that let a hit allocate nothing for them. It must not decide how a request is answered:
//! the lookup and the pass-through choose, this module only writes it down.

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AGE, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;

use crate::budget::cool_down_for;
use crate::cache::{CacheEntry, Freshness};
use crate::coalesce::Role;
use crate::error::{ApiError, SDK_RETRY_AFTER_LIMIT_SECS, X_SHOULD_RETRY};
use crate::proxy::cache_status::{CacheStatus, StaleReason, CACHE_STATUS};
use crate::routes::AccountId;
use crate::server::ResponseBody;
use crate::upstream::UpstreamAnswer;

pub(super) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The facts of one answered request: the response, and what the log line and metrics say of it.
pub(super) struct Served {
    pub(super) response: Response<ResponseBody>,
    pub(super) cache: CacheStatus,
    pub(super) account_id: Option<AccountId>,
    /// The route template; `None` when the request matched no route.
    pub(super) route: Option<&'static str>,
}

impl Served {
    /// An answer of the sidecar's own, without the cache: no `Cache-Status`.
    pub(super) fn local(
        error: ApiError,
        account_id: Option<AccountId>,
        route: Option<&'static str>,
    ) -> Served {
        Served {
            response: error.to_response(),
            cache: CacheStatus::Local,
            account_id,
            route,
        }
    }

    /// An answer decided by upstream (relayed, or standing in for one), with its `Cache-Status`.
    pub(super) fn answered(mut response: Response<ResponseBody>, cache: CacheStatus) -> Served {
        set_cache_status(&mut response, &cache);
        Served {
            response,
            cache,
            account_id: None,
            route: None,
        }
    }

    /// Names the account and the route this answer was about, for the log line.
    pub(super) fn about(
        mut self,
        account_id: Option<AccountId>,
        route: Option<&'static str>,
    ) -> Served {
        self.account_id = account_id;
        self.route = route;
        self
    }

    pub(super) fn hit(entry: &CacheEntry, remaining: Duration, now: Instant) -> Served {
        let cache = CacheStatus::Hit {
            ttl: remaining.as_secs(),
        };
        Served::cached(entry, now, cache)
    }

    /// A fresh entry answering: its stored answer with `Age`, and `cache` as `Cache-Status`
    /// (a local [`CacheStatus::Hit`], or how another sidecar of the fleet stored it:
    /// [`CacheStatus::FleetHit`], [`CacheStatus::FleetCollapsed`]).
    pub(super) fn cached(entry: &CacheEntry, now: Instant, cache: CacheStatus) -> Served {
        let mut response = relay(&entry.answer, AnswerFrom::Cache);
        set_age(&mut response, entry, now);
        Served::answered(response, cache)
    }

    /// A stale entry standing in. `Cache-Status` gives a negative `ttl` (seconds past expiry) and
    /// the reason; `fwd=stale` when this request did try upstream.
    pub(super) fn stale(
        entry: &CacheEntry,
        reason: StaleReason,
        fwd_status: Option<StatusCode>,
        now: Instant,
    ) -> Served {
        let mut response = relay(&entry.answer, AnswerFrom::Cache);
        set_age(&mut response, entry, now);
        let expired_ago = match entry.freshness(now) {
            Freshness::Stale { expired_ago } => expired_ago.as_secs(),
            Freshness::Fresh { .. } => 0,
        };
        let cache = CacheStatus::Stale {
            reason,
            expired_ago,
            fwd_status,
        };
        Served::answered(response, cache)
    }
}

/// The response to a fresh hit, `remaining` before it expires: the stored answer, its `Age` and
/// `Cache-Status`. (Public for the micro benchmark.)
pub fn hit_response(
    entry: &CacheEntry,
    remaining: Duration,
    now: Instant,
) -> Response<ResponseBody> {
    Served::hit(entry, remaining, now).response
}

/// Where an answer being sent comes from, which decides whether its quota reading is current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AnswerFrom {
    /// Just received from Cloudflare: every relayed header is current.
    Upstream,
    /// Replayed from the cache: `Ratelimit` is left out.
    Cache,
}

/// Status, relayed headers and body bytes exactly as Cloudflare sent them. A stored answer is
/// replayed without `Ratelimit`: the quota it reported is no longer current, and a hit spent none.
/// A relayed 429 that asks for more than SDKs honour also gets `x-should-retry: false`.
pub(super) fn relay(answer: &UpstreamAnswer, from: AnswerFrom) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(answer.body.clone()));
    *response.status_mut() = answer.status;
    // Room for the relayed headers and the two this cache adds (`Age`, `Cache-Status`).
    *response.headers_mut() = HeaderMap::with_capacity(answer.headers.len() + 2);
    let headers = response.headers_mut();
    for (name, value) in &answer.headers {
        if from == AnswerFrom::Cache && name == RATELIMIT {
            continue;
        }
        headers.insert(name.clone(), value.clone());
    }
    if answer.status == StatusCode::TOO_MANY_REQUESTS {
        let wait = headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(|text| cool_down_for(Some(text)).as_secs());
        if wait.unwrap_or(u64::MAX) > SDK_RETRY_AFTER_LIMIT_SECS {
            headers.insert(X_SHOULD_RETRY, HeaderValue::from_static("false"));
        }
    }
    response
}

fn set_age(response: &mut Response<ResponseBody>, entry: &CacheEntry, now: Instant) {
    let age = now.saturating_duration_since(entry.stored_at).as_secs();
    if let Some(value) = AGE_VALUES.get(age, || age.to_string()) {
        response.headers_mut().insert(AGE, value);
    }
}

/// The one place a [`CacheStatus`] becomes the `Cache-Status` header. A fresh hit's value comes
/// from a table filled once per count of seconds, so a hit allocates nothing for it; so does a
/// collapsed answer's, from a table by upstream status, because up to `max_waiting_lookups`
/// waiters get the same one at the same moment (the answer itself is built once, by the leader's
/// fetch, and every waiter shares its body bytes and header values). The rarer outcomes are
/// written out per response.
fn set_cache_status(response: &mut Response<ResponseBody>, cache: &CacheStatus) {
    if !cache.is_sent() {
        return;
    }
    let value = match *cache {
        CacheStatus::Hit { ttl } => HIT_CACHE_STATUS.get(ttl, || cache.to_string()),
        CacheStatus::Miss {
            role: Role::Follower,
            fwd_status,
            ..
        } => COLLAPSED_CACHE_STATUS.get(u64::from(fwd_status.as_u16()), || cache.to_string()),
        _ => HeaderValue::try_from(cache.to_string()).ok(),
    };
    if let Some(value) = value {
        response.headers_mut().insert(CACHE_STATUS, value);
    }
}

/// Header values that depend only on a small count (seconds, or a status code), made once and then
/// shared. Their bytes
/// are static (leaked once: at most [`TABLED_SECONDS`] short strings per table), so a hit's clone
/// is a plain copy: no allocation, and no reference count that every core would write to. Counts
/// from [`TABLED_SECONDS`] up are made per use.
struct SecondsTable(Box<[OnceLock<Option<HeaderValue>>]>);

/// Covers the default TTLs and stale windows; a table is 1,024 empty slots (48 KiB) until used.
const TABLED_SECONDS: u64 = 1024;

impl SecondsTable {
    fn new() -> SecondsTable {
        SecondsTable((0..TABLED_SECONDS).map(|_| OnceLock::new()).collect())
    }

    fn get(&self, seconds: u64, text: impl FnOnce() -> String) -> Option<HeaderValue> {
        let Some(slot) = usize::try_from(seconds).ok().and_then(|i| self.0.get(i)) else {
            return HeaderValue::try_from(text()).ok();
        };
        slot.get_or_init(|| {
            let text: &'static str = Box::leak(text().into_boxed_str());
            HeaderValue::from_maybe_shared(Bytes::from_static(text.as_bytes())).ok()
        })
        .clone()
    }
}

/// `Age` of a hit or stale answer.
static AGE_VALUES: LazyLock<SecondsTable> = LazyLock::new(SecondsTable::new);
/// `Cache-Status` of a fresh hit, by seconds of freshness left.
static HIT_CACHE_STATUS: LazyLock<SecondsTable> = LazyLock::new(SecondsTable::new);
/// `Cache-Status` of a collapsed answer (a waiter on another lookup's fetch), by upstream status
/// (every status code is below [`TABLED_SECONDS`]).
static COLLAPSED_CACHE_STATUS: LazyLock<SecondsTable> = LazyLock::new(SecondsTable::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_tables_give_the_same_values_inside_and_past_the_table() {
        let table = SecondsTable::new();
        for seconds in [
            0,
            1,
            59,
            TABLED_SECONDS - 1,
            TABLED_SECONDS,
            86_400,
            u64::MAX,
        ] {
            let text = CacheStatus::Hit { ttl: seconds }.to_string();
            for _ in 0..2 {
                let value = table.get(seconds, || text.clone()).expect("a valid value");
                assert_eq!(value.to_str().ok(), Some(text.as_str()), "{seconds}");
            }
        }
        let kept = table.get(7, || "first".to_owned());
        let again = table.get(7, || "second".to_owned());
        assert_eq!(kept, again, "a tabled value is made once");
        assert_eq!(table.get(8, || "bad\nvalue".to_owned()), None);
    }

    /// A hit's `Cache-Status` comes from `CacheStatus`'s `Display` once, then from the same
    /// static bytes for every later hit with as many seconds left: the hit path allocates nothing
    /// for it.
    #[test]
    fn a_hits_cache_status_is_written_once_per_count_of_seconds() {
        let hit = CacheStatus::Hit { ttl: 42 };
        let written: Vec<HeaderValue> = (0..2)
            .map(|_| {
                let mut response = Response::new(Full::default());
                set_cache_status(&mut response, &hit);
                response.headers()[CACHE_STATUS].clone()
            })
            .collect();
        assert_eq!(written[0], "zt-risk-sidecar; hit; ttl=42");
        assert_eq!(
            written[0].as_bytes().as_ptr(),
            written[1].as_bytes().as_ptr()
        );
    }

    /// Every waiter on one fetch gets the same `Cache-Status`, written once per upstream status
    /// and then shared, whether the leader stored the answer or not.
    #[test]
    fn a_collapsed_answers_cache_status_is_written_once_per_upstream_status() {
        let written: Vec<HeaderValue> = [true, false]
            .into_iter()
            .map(|stored| {
                let mut response = Response::new(Full::default());
                let collapsed = CacheStatus::Miss {
                    role: Role::Follower,
                    stored,
                    fwd_status: StatusCode::NOT_FOUND,
                };
                set_cache_status(&mut response, &collapsed);
                response.headers()[CACHE_STATUS].clone()
            })
            .collect();
        assert_eq!(
            written[0],
            "zt-risk-sidecar; fwd=miss; collapsed; fwd-status=404"
        );
        assert_eq!(
            written[0].as_bytes().as_ptr(),
            written[1].as_bytes().as_ptr()
        );
        let mut leader = Response::new(Full::default());
        let stored = CacheStatus::Miss {
            role: Role::Leader,
            stored: true,
            fwd_status: StatusCode::NOT_FOUND,
        };
        set_cache_status(&mut leader, &stored);
        assert_eq!(
            leader.headers()[CACHE_STATUS],
            "zt-risk-sidecar; fwd=miss; stored; fwd-status=404"
        );
    }

    #[test]
    fn a_local_answer_gets_no_cache_status() {
        let mut response = Response::new(Full::default());
        set_cache_status(&mut response, &CacheStatus::Local);
        assert!(response.headers().get(CACHE_STATUS).is_none());
    }
}
