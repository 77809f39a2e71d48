//! A cached lookup: the cache read, stale serving, the pending-lookups bound, coalescing, and the
//! leader's fetch (budget, breaker, retries within the deadline, storing the answer). It owns what
//! a lookup's outcome is; it must not touch the pass-through routes, and it leaves the response's
//! bytes to response.rs and the network to upstream.rs.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::StatusCode;
use tokio::time::Instant;

use crate::budget::UpstreamBudget;
use crate::cache::{
    answered_integration, is_refresh_failure, storability, AnswerStore, CacheEntry, CacheKey,
    FetchClaim, Freshness, StaleUse, Storability, Tier, NOT_AN_ENVELOPE,
};
use crate::credentials::Credentials;
use crate::error::ApiError;
use crate::error::X_SHOULD_RETRY;
use crate::fleet::lease::early_refresh_due;
use crate::proxy::cache_status::{CacheStatus, StaleReason};
use crate::proxy::limits::Slot;
use crate::proxy::response::{relay, AnswerFrom, Served, RATELIMIT};
use crate::proxy::upstream_call::{status_of, upstream_error, Refusal};
use crate::proxy::{LiveSettings, Proxy, Shared};
use crate::ratelimit::Work;
use crate::resilience::{backoff, health_of, is_gateway_failure, is_retryable, Health, Pass};
use crate::routes::Lookup;
use crate::upstream::{UpstreamAnswer, UpstreamError};

/// What one upstream fetch produced, shared by every caller that waited for it.
#[derive(Clone, Debug)]
pub(super) enum Fetched {
    /// An answer from Cloudflare, relayed as is. `stored`: it went into the cache. `failure`: it
    /// is a failed refresh (429, 5xx, invalid body) for which a stale entry may stand in.
    Answered {
        answer: Arc<UpstreamAnswer>,
        stored: bool,
        failure: bool,
    },
    /// Another fetch stored a fresh entry just before this one started.
    AlreadyCached(CacheEntry),
    /// Another sidecar of the fleet fetched it while this one waited on its lease.
    FleetFilled(CacheEntry),
    /// No answer to relay.
    Failed(UpstreamError),
    /// No upstream call was allowed.
    Refused(Refusal),
    /// The bound of fetches in flight was reached: no call was tried.
    Overloaded,
}

impl<S: AnswerStore, B: UpstreamBudget> Proxy<S, B> {
    /// A cached lookup: the cache, stale serving, coalescing, the upstream fetch.
    pub(super) async fn serve_lookup(
        &self,
        lookup: Lookup,
        credentials: Credentials,
        settings: &LiveSettings,
        received: Instant,
    ) -> Served {
        let shared = &self.shared;
        let key = CacheKey::new(credentials.partition(), &lookup);

        // A fresh entry is a hit; a recently expired one is served at once while one background
        // refresh runs; an older one may stand in if the refresh fails.
        let mut fallback = None;
        if let Some((entry, tier)) = shared.store.lookup(&key).await {
            // The read took well under a microsecond: the arrival time stands for now. (An L2
            // read takes longer; its entry's age is measured from the same instant, which errs
            // by that read's time at most, and only in the entry's favour by less than 1 s.)
            let now = received;
            match entry.freshness(now) {
                Freshness::Fresh { remaining } => {
                    // In a fleet, a hot key is refreshed shortly before it expires by one
                    // sidecar (XFetch on the entry's measured fetch time; the lease picks the
                    // one), not by all of them at expiry.
                    if shared.store.is_shared()
                        && early_refresh_due(remaining, entry.fetch_time, rand::random)
                    {
                        self.refresh_in_background(key, lookup, credentials, Recheck::Skip);
                    }
                    return match tier {
                        Tier::Local => Served::hit(&entry, remaining, now),
                        Tier::Fleet => {
                            let cache = CacheStatus::FleetHit {
                                ttl: remaining.as_secs(),
                            };
                            Served::cached(&entry, now, cache)
                        }
                    };
                }
                Freshness::Stale { expired_ago } => match settings.ttl.stale_use(expired_ago) {
                    StaleUse::ServeAndRevalidate => {
                        self.refresh_in_background(key, lookup, credentials, Recheck::Store);
                        let detail = StaleReason::WhileRevalidate;
                        return Served::stale(&entry, detail, None, now);
                    }
                    StaleUse::FallbackOnError => fallback = Some(entry),
                    StaleUse::Unusable => {}
                },
            }
        }

        // Everything below waits on Cloudflare (or on another request that does): bounded, by the
        // callers waiting here and (in `fetch`) by the fetches they wait on.
        let Some(_waiting) = Slot::take(&shared.waiting, settings.limits.max_waiting_lookups)
        else {
            shared.metrics.record_refusal("pending-lookups");
            return Served::local(ApiError::Overloaded, None, None);
        };
        let fetch = {
            let shared = Arc::clone(&self.shared);
            let key = key.clone();
            move || async move {
                shared
                    .fetch(key, lookup, credentials, Work::Caller, Recheck::Store)
                    .await
            }
        };
        let flight = shared.flights.run(key, fetch);
        let soft_deadline = settings.stale_after_slow_upstream;
        let (role, fetched) = match &fallback {
            Some(entry) if !soft_deadline.is_zero() => {
                // A slow Cloudflare is not a failing one, so stale-if-error alone would keep this
                // caller waiting up to the request timeout. At the soft deadline the entry
                // answers; the fetch is a task of its own and goes on to refresh the entry.
                match tokio::time::timeout_at(received + soft_deadline, flight).await {
                    Ok(finished) => finished,
                    Err(_slow) => {
                        let reason = StaleReason::SlowUpstream;
                        return Served::stale(entry, reason, None, Instant::now());
                    }
                }
            }
            _ => flight.await,
        };
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(_abandoned) => {
                tracing::error!("an upstream fetch task ended without an outcome");
                return Served::local(ApiError::Internal, None, None);
            }
        };
        let now = Instant::now();
        match (fetched, fallback) {
            (Fetched::Overloaded, _) => {
                shared.metrics.record_refusal("pending-lookups");
                Served::local(ApiError::Overloaded, None, None)
            }
            (Fetched::FleetFilled(entry), _) => {
                let fwd_status = entry.answer.status;
                let cache = CacheStatus::FleetCollapsed { fwd_status };
                Served::cached(&entry, now, cache)
            }
            (Fetched::AlreadyCached(entry), _) => {
                let remaining = match entry.freshness(now) {
                    Freshness::Fresh { remaining } => remaining,
                    Freshness::Stale { .. } => Duration::ZERO,
                };
                Served::hit(&entry, remaining, now)
            }
            (
                Fetched::Answered {
                    answer,
                    failure: true,
                    ..
                },
                Some(entry),
            ) => {
                let status = Some(answer.status);
                Served::stale(&entry, StaleReason::IfError, status, now)
            }
            // A 200 or 404 whose body is not an envelope is no answer an SDK can read: with nothing
            // stale to stand in, it becomes a 502 rather than a success with a broken body.
            (
                Fetched::Answered {
                    answer,
                    failure: true,
                    ..
                },
                None,
            ) if !answer.status.is_server_error()
                && answer.status != StatusCode::TOO_MANY_REQUESTS =>
            {
                let response = ApiError::UpstreamInvalidResponse.to_response();
                let cache = CacheStatus::MissInvalidBody {
                    role,
                    fwd_status: answer.status,
                };
                Served::answered(response, cache)
            }
            (Fetched::Answered { answer, stored, .. }, _) => {
                let mut response = relay(&answer, AnswerFrom::Upstream);
                if is_gateway_failure(answer.status) {
                    // The sidecar has already retried this within the request's deadline: an
                    // SDK's own attempts on top would multiply the calls to a struggling
                    // Cloudflare (three attempts each making three calls) for nothing.
                    response
                        .headers_mut()
                        .insert(X_SHOULD_RETRY, HeaderValue::from_static("false"));
                }
                let cache = CacheStatus::Miss {
                    role,
                    stored,
                    fwd_status: answer.status,
                };
                Served::answered(response, cache)
            }
            (Fetched::Failed(_), Some(entry)) => {
                Served::stale(&entry, StaleReason::IfError, None, now)
            }
            (Fetched::Failed(error), None) => {
                let response = upstream_error(error).to_response();
                Served::answered(response, CacheStatus::MissFailed { role, error })
            }
            (Fetched::Refused(refusal), Some(entry)) => {
                Served::stale(&entry, refusal.stale_reason(), None, now)
            }
            (Fetched::Refused(refusal), None) => {
                shared.metrics.record_refusal(refusal.as_str());
                if let Refusal::BudgetExhausted { .. }
                | Refusal::CoolingDown { .. }
                | Refusal::QuotaReserve { .. } = refusal
                {
                    shared.metrics.record_local_rate_limited(refusal.as_str());
                }
                let response = refusal.to_error().to_response();
                Served::answered(response, CacheStatus::Unavailable(refusal))
            }
        }
    }

    /// Starts one refresh of `key` unless one is already in flight; nobody waits for it.
    /// `recheck`: an early refresh replaces an entry that is still fresh (`Recheck::Skip`).
    fn refresh_in_background(
        &self,
        key: CacheKey,
        lookup: Lookup,
        credentials: Credentials,
        recheck: Recheck,
    ) {
        let shared = Arc::clone(&self.shared);
        let task_key = key.clone();
        self.shared.flights.start_if_idle(key, move || async move {
            shared
                .fetch(task_key, lookup, credentials, Work::Refresh, recheck)
                .await
        });
    }
}

impl<S: AnswerStore, B: UpstreamBudget> Shared<S, B> {
    /// The leader's work, in its own task: upstream calls within the budget, the breaker and the
    /// request's deadline, retried on connection failures and 502/503/504, and the answer stored
    /// when cacheable. `work`: a background refresh stops at its own, larger reserve.
    async fn fetch(
        &self,
        key: CacheKey,
        lookup: Lookup,
        credentials: Credentials,
        work: Work,
        recheck: Recheck,
    ) -> Fetched {
        // A fetch for this key may have completed between this caller's cache read and its
        // joining the in-flight table; its entry is then already here.
        if recheck == Recheck::Store {
            if let Some(entry) = self.store.get(&key).await {
                if matches!(entry.freshness(Instant::now()), Freshness::Fresh { .. }) {
                    return Fetched::AlreadyCached(entry);
                }
            }
        }
        let settings = self.settings.load_full();
        // One place per fetch, however many callers wait on it.
        let Some(_pending) = Slot::take(&self.pending, settings.limits.max_pending_lookups) else {
            return Fetched::Overloaded;
        };
        let writes_before = self.writes.load(AtomicOrdering::SeqCst);
        let deadline = Instant::now() + self.upstream.request_timeout();
        // In a fleet, one sidecar fetches each key; the others wait for its entry. Only the one
        // that fetches spends budget.
        let ticket = match self.store.claim_fetch(&key, deadline).await {
            FetchClaim::Fetch(ticket) => ticket,
            FetchClaim::Filled(entry) => return Fetched::FleetFilled(entry),
            FetchClaim::TimedOut => return Fetched::Failed(UpstreamError::Timeout),
        };
        // The fetch's own time, without the wait for the lease: XFetch's recompute time.
        let fetch_started = Instant::now();
        let (answer, decision) = match self
            .fetch_upstream(&key, &lookup, &credentials, work, deadline, &settings)
            .await
        {
            Ok(fetched) => fetched,
            Err(fetched) => {
                self.store.store_fetched(key, None, ticket).await;
                return fetched;
            }
        };
        let failure = is_refresh_failure(answer.status, decision);
        let ttl = &settings.ttl;
        let Some(fresh_for) = decision.fresh_for(ttl) else {
            self.store.store_fetched(key, None, ticket).await;
            return Fetched::Answered {
                answer,
                stored: false,
                failure,
            };
        };
        let entry = CacheEntry {
            answer: Arc::new(for_storage(&answer)),
            stored_at: Instant::now(),
            fresh_for,
            retain_for: ttl.retain_for(fresh_for),
            integration: answered_integration(&answer.body).map(|answered| answered.id),
            fetch_time: fetch_started.elapsed(),
        };
        let accepted = self
            .store
            .store_fetched(key.clone(), Some(entry), ticket)
            .await;
        // A write that completed while this fetch ran may have made its answer stale; its purge
        // ran either after this insert (and took it) or before it (and then this takes it back).
        let stored = accepted && self.writes.load(AtomicOrdering::SeqCst) == writes_before;
        if accepted && !stored {
            self.store.remove(&key).await;
        }
        Fetched::Answered {
            answer,
            stored,
            failure,
        }
    }

    /// The upstream calls of one fetch: within the budget, the breaker and the deadline,
    /// retried on connection failures and 502/503/504. `Ok`: the answer and whether it may be
    /// stored (its body parsed once, for the breaker and the store alike); `Err`: what the
    /// waiters get instead of an answer.
    async fn fetch_upstream(
        &self,
        key: &CacheKey,
        lookup: &Lookup,
        credentials: &Credentials,
        work: Work,
        deadline: Instant,
        settings: &LiveSettings,
    ) -> Result<(Arc<UpstreamAnswer>, Storability), Fetched> {
        let path = lookup.upstream_path();
        let partition = credentials.partition();
        let mut retries = 0;
        let mut last: Option<Attempt> = None;
        let attempt = loop {
            // A retry that the breaker or the budget refuses ends with the last attempt's result.
            let pass = self.breaker.call();
            if let Pass::Rejected { retry_after } = pass {
                match last {
                    Some(attempt) => break attempt,
                    None => return Err(Fetched::Refused(Refusal::UpstreamDown { retry_after })),
                }
            }
            if let Some(refusal) = self.admit_for(partition, work).await {
                self.breaker.record(pass, Health::NotCalled);
                match last {
                    Some(attempt) => break attempt,
                    None => return Err(Fetched::Refused(refusal)),
                }
            }
            let attempt_started = Instant::now();
            let result = self.upstream.get(&path, credentials, deadline).await;
            let decision = result
                .as_ref()
                .ok()
                .map(|answer| storability(answer.status, &answer.body));
            let health = lookup_health(&result, decision);
            let summary = self
                .settle_with_health(
                    pass,
                    partition,
                    key.account_id,
                    attempt_started,
                    &result,
                    health,
                )
                .await;
            if !is_retryable(&summary) || retries >= settings.max_retries {
                break (result, decision);
            }
            let delay = backoff(retries, rand::random::<f64>());
            if Instant::now() + delay >= deadline {
                break (result, decision);
            }
            tracing::debug!(
                retry = retries + 1,
                delay_ms = delay.as_millis() as u64,
                "retrying upstream"
            );
            tokio::time::sleep(delay).await;
            self.metrics.record_retry();
            retries += 1;
            last = Some((result, decision));
        };
        match attempt {
            (Ok(answer), decision) => {
                // Every answer's decision is made with it, above; this never parses again.
                let decision = decision.unwrap_or_else(|| storability(answer.status, &answer.body));
                Ok((Arc::new(answer), decision))
            }
            (Err(error), _) => Err(Fetched::Failed(error)),
        }
    }
}

/// Whether a fetch first looks for an entry another fetch stored meanwhile (an early refresh
/// replaces an entry that is still fresh, so it must not stop at it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recheck {
    Store,
    Skip,
}

/// Pure: how a lookup's upstream call went for the breaker. As for any call, plus: a 200 or 404
/// whose body is not a Cloudflare envelope (an HTML error page, a captive portal, garbage) is no
/// healthy answer, even though its status looks like one.
fn lookup_health(
    result: &Result<UpstreamAnswer, UpstreamError>,
    decision: Option<Storability>,
) -> Health {
    if decision == Some(Storability::No(NOT_AN_ENVELOPE)) {
        return Health::Unhealthy;
    }
    health_of(&status_of(result))
}

/// One upstream attempt: its result, and for an answer whether it may be stored.
type Attempt = (Result<UpstreamAnswer, UpstreamError>, Option<Storability>);

/// The answer as the cache keeps it: the body (shared, not copied) and only the headers a replay
/// sends. `Ratelimit` is never replayed and `Retry-After` never comes with a cacheable answer, so
/// neither is kept: at a million entries every header is tens of megabytes.
fn for_storage(answer: &UpstreamAnswer) -> UpstreamAnswer {
    let mut headers: Vec<(HeaderName, HeaderValue)> = answer
        .headers
        .iter()
        .filter(|(name, _)| name != RATELIMIT && name != RETRY_AFTER)
        .cloned()
        .collect();
    headers.shrink_to_fit();
    UpstreamAnswer {
        status: answer.status,
        headers,
        body: answer.body.clone(),
    }
}
