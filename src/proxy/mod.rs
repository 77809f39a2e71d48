//! The request path: route, credentials, cache, coalesced upstream fetch with budget, breaker and
//! retries, and the response. This file owns `Proxy`, its shared state and the order of those
//! steps (`handle`, `serve`), and writes the one log event per request; the steps themselves live
//! in the submodules. It does no socket I/O of its own (the server feeds it requests, upstream.rs
//! makes the only outbound call).
//!
//! - `limits`: request-level bounds on the head and the body.
//! - `lookup`: a cached lookup and the leader's fetch.
//! - `pass_through`: the list and the writes, and the invalidation after a write.
//! - `upstream_call`: the budget, breaker, metric and cool-down bookkeeping around every call.
//! - `response`: relayed and replayed answers, `Age`, `Cache-Status`.
//! - `cache_status`: `CacheStatus`, the outcome vocabulary of header, log and metrics.

mod cache_status;
mod limits;
mod lookup;
mod pass_through;
mod response;
mod upstream_call;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::Full;
use tokio::time::Instant;

use crate::budget::{BudgetPolicy, UpstreamBudget};
use crate::cache::{AnswerStore, CacheKey, TtlPolicy};
use crate::coalesce::{Coalescer, Role};
use crate::credentials::{self, FallbackToken, PartitionKey};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::resilience::{Breaker, BreakerPolicy};
use crate::routes::{self, AccountId, Route, REFERENCE_ROUTE};
use crate::server::ResponseBody;
use crate::upstream::Upstream;

pub use self::cache_status::{CacheStatus, Forward, StaleReason, CACHE_STATUS};
pub use self::limits::{
    check_host, check_request_head, BodyError, RequestBody, RequestLimits, MAX_REQUEST_BODY_BYTES,
};
pub use self::response::hit_response;
pub use self::upstream_call::Refusal;

use self::limits::Slot;
use self::lookup::Fetched;
use self::response::Served;

/// Cloudflare's request id, relayed on answers from upstream and named in the request event so an
/// operator can quote it to Cloudflare.
const CF_RAY: HeaderName = HeaderName::from_static("cf-ray");

/// The request-path settings that a reload may change while requests are served.
#[derive(Clone)]
pub struct LiveSettings {
    pub ttl: TtlPolicy,
    pub fallback_token: Option<FallbackToken>,
    /// Retries after a connection failure or a 502/503/504, within the request's deadline.
    pub max_retries: u32,
    /// A caller with a stale entry to fall back on waits this long for Cloudflare, then gets the
    /// entry while the fetch goes on (`0s`: waits up to the request timeout).
    pub stale_after_slow_upstream: std::time::Duration,
    pub limits: RequestLimits,
    /// `None`: every account may be looked up.
    pub allowed_accounts: Option<Arc<HashSet<AccountId>>>,
    /// Whether a write without caller credentials goes upstream with the sidecar's token. Off by
    /// default: the token then only reads.
    pub writes_with_sidecar_token: bool,
}

/// The request handler. Cloning is cheap; every clone shares the same cache, budget and client.
pub struct Proxy<S: AnswerStore, B: UpstreamBudget> {
    shared: Arc<Shared<S, B>>,
}

impl<S: AnswerStore, B: UpstreamBudget> Clone for Proxy<S, B> {
    fn clone(&self) -> Self {
        Proxy {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// What every clone of a `Proxy` and every fetch task share.
struct Shared<S, B> {
    store: S,
    budget: B,
    breaker: Breaker,
    flights: Coalescer<CacheKey, Fetched>,
    upstream: Upstream,
    partition_key: PartitionKey,
    settings: ArcSwap<LiveSettings>,
    metrics: Arc<Metrics>,
    /// Upstream fetches for lookups in flight (leaders), callers waiting on them (leaders and
    /// followers), and writes being read or relayed.
    pending: AtomicUsize,
    waiting: AtomicUsize,
    pending_writes: AtomicUsize,
    /// Bumped by every successful write; a fetch that began before a write does not keep its
    /// answer in the cache.
    writes: AtomicU64,
}

impl<S: AnswerStore, B: UpstreamBudget> Proxy<S, B> {
    pub fn new(
        store: S,
        budget: B,
        upstream: Upstream,
        settings: LiveSettings,
        breaker: BreakerPolicy,
        metrics: Arc<Metrics>,
        partition_key: PartitionKey,
    ) -> Proxy<S, B> {
        Proxy {
            shared: Arc::new(Shared {
                store,
                budget,
                breaker: Breaker::new(breaker),
                flights: Coalescer::default(),
                upstream,
                partition_key,
                settings: ArcSwap::from_pointee(settings),
                metrics,
                pending: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                pending_writes: AtomicUsize::new(0),
                writes: AtomicU64::new(0),
            }),
        }
    }

    /// Applies reloaded settings; requests in flight finish under the ones they started with. A
    /// new budget policy (`Some`) starts every credential with a full bucket, so it is passed only
    /// when it changed.
    pub fn reconfigure(
        &self,
        settings: LiveSettings,
        breaker: BreakerPolicy,
        budget: Option<BudgetPolicy>,
    ) {
        self.shared.settings.store(Arc::new(settings));
        self.shared.breaker.set_policy(breaker);
        if let Some(budget) = budget {
            self.shared.budget.set_policy(budget);
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// The upstream client, whose TLS roots a reload may replace.
    pub fn upstream(&self) -> &Upstream {
        &self.shared.upstream
    }

    pub fn breaker(&self) -> &Breaker {
        &self.shared.breaker
    }

    /// Upstream fetches in flight, and callers waiting on one that another caller started.
    pub fn in_flight(&self) -> (usize, usize) {
        let flights = &self.shared.flights;
        (flights.in_flight(), flights.total_followers())
    }

    /// Answers one request. Never fails: every error becomes a Cloudflare-style envelope.
    pub async fn handle<Body: RequestBody>(
        &self,
        request: Request<Body>,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let served = self.serve(&parts, body, started).await;
        let status = served.response.status();
        let cache = served.cache;
        let stale_reason = cache.stale_reason();
        let metrics = &self.shared.metrics;
        let elapsed = started.elapsed();
        metrics.record_lookup(cache.as_str(), status, elapsed);
        if let Some(reason) = stale_reason {
            metrics.record_stale(reason.as_str());
        }
        if cache.fetch_role() == Some(Role::Follower) {
            metrics.record_coalesced();
        }
        RequestEvent {
            method: &parts.method,
            route: served.route,
            account_id: served.account_id,
            status: status.as_u16(),
            cache: cache.as_str(),
            stale_reason: stale_reason.map(StaleReason::as_str),
            upstream_status: cache.fwd_status().map(|s| s.as_u16()),
            cf_ray: served
                .response
                .headers()
                .get(CF_RAY)
                .and_then(|value| value.to_str().ok()),
            latency: elapsed,
        }
        .log();
        let mut response = served.response;
        if parts.method == Method::HEAD {
            // Same headers as GET (Content-Length included), no body.
            let length = hyper::body::Body::size_hint(response.body())
                .exact()
                .unwrap_or(0);
            response
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
            *response.body_mut() = Full::default();
        }
        response
    }

    /// The order of the steps. `received`: when the request arrived; a cache read right after it
    /// uses it as "now".
    async fn serve<Body: RequestBody>(
        &self,
        parts: &http::request::Parts,
        body: Body,
        received: Instant,
    ) -> Served {
        let shared = &self.shared;
        let settings = shared.settings.load();
        if let Err(error) = check_request_head(&parts.uri, &parts.headers, &settings.limits)
            .and_then(|()| check_host(parts.version, &parts.headers))
        {
            return Served::local(error, None, None);
        }
        // Absolute-form targets (`GET http://host/...`) are for forward proxies; this is not one.
        // (An HTTP/2 request always carries :scheme and :authority; for it they mean nothing more.)
        let absolute_form = parts.version < http::Version::HTTP_2
            && (parts.uri.scheme().is_some() || parts.uri.authority().is_some());
        if absolute_form {
            return Served::local(ApiError::NoRoute, None, None);
        }
        let route = match routes::route(&parts.method, parts.uri.path()) {
            Ok(route) => route,
            Err(ApiError::NoRoute) => return Served::local(ApiError::NoRoute, None, None),
            Err(error) => return Served::local(error, None, Some(REFERENCE_ROUTE)),
        };
        let template = Some(route.template());
        let account_id = Some(route.account_id());
        if let Some(allowed) = &settings.allowed_accounts {
            if !allowed.contains(&route.account_id()) {
                return Served::local(ApiError::AccountNotAllowed, account_id, template);
            }
        }
        // The sidecar's own token reads; it writes only where the operator said so.
        let may_use_sidecar_token = settings.writes_with_sidecar_token || !route.is_write();
        let fallback_token = settings
            .fallback_token
            .as_ref()
            .filter(|_| may_use_sidecar_token);
        let credentials =
            match credentials::extract(&parts.headers, fallback_token, &shared.partition_key) {
                Ok(credentials) => credentials,
                Err(error) => return Served::local(error, account_id, template),
            };
        let lookup = match route {
            Route::Lookup(lookup) => lookup,
            Route::List { .. } => {
                if body.may_have_body() {
                    return Served::local(ApiError::UnexpectedBody, account_id, template);
                }
                let served = self.pass_through(&route, parts, None, &credentials).await;
                return served.about(account_id, template);
            }
            Route::Create { .. } | Route::Update { .. } | Route::Delete { .. } => {
                // Bounded before a byte is read: writes in progress, each body's size, and the
                // time the whole body may take to arrive.
                let Some(_writing) =
                    Slot::take(&shared.pending_writes, settings.limits.max_pending_writes)
                else {
                    return Served::local(ApiError::Overloaded, account_id, template);
                };
                let read = body.collect_limited(MAX_REQUEST_BODY_BYTES);
                let bytes =
                    match tokio::time::timeout(settings.limits.body_read_timeout, read).await {
                        Ok(Ok(bytes)) => bytes,
                        Ok(Err(BodyError::TooLarge)) => {
                            return Served::local(ApiError::PayloadTooLarge, account_id, template)
                        }
                        Ok(Err(BodyError::Broken)) => {
                            return Served::local(ApiError::UnexpectedBody, account_id, template)
                        }
                        Err(_elapsed) => {
                            return Served::local(ApiError::BodyTimeout, account_id, template)
                        }
                    };
                let served = self
                    .pass_through(&route, parts, Some(bytes), &credentials)
                    .await;
                return served.about(account_id, template);
            }
        };
        if body.may_have_body() {
            return Served::local(ApiError::UnexpectedBody, account_id, template);
        }
        self.serve_lookup(lookup, credentials, &settings, received)
            .await
            .about(account_id, template)
    }
}

/// Formats an optional value for the log line without allocating: the value, or `-`.
/// What the access log says about one request: one `info` event, `request`, per request.
pub struct RequestEvent<'a> {
    pub method: &'a Method,
    /// The route's template, when the path matched one.
    pub route: Option<&'static str>,
    pub account_id: Option<AccountId>,
    pub status: u16,
    /// `Cache-Status`'s outcome: `hit`, `miss`, `stale`, ...
    pub cache: &'static str,
    pub stale_reason: Option<&'static str>,
    /// Cloudflare's status, when Cloudflare answered this request.
    pub upstream_status: Option<u16>,
    /// Cloudflare's `cf-ray`, borrowed from the answer.
    pub cf_ray: Option<&'a str>,
    pub latency: std::time::Duration,
}

impl RequestEvent<'_> {
    /// Logs the event. The fields are evaluated only when the filter enables it (otherwise this
    /// costs a branch), and none allocates: numbers, static strings, values written straight into
    /// the line (`%`), and the borrowed `cf-ray`. The line is made on the calling worker (by
    /// telemetry's `PlainFormat` unless the output is a terminal or JSON) and written by the log
    /// writer's thread.
    pub fn log(&self) {
        tracing::info!(
            method = %self.method,
            route = self.route.unwrap_or("unrouted"),
            account_id = %OrDash(self.account_id),
            status = self.status,
            cache = self.cache,
            stale_reason = self.stale_reason,
            upstream_status = self.upstream_status,
            cf_ray = self.cf_ray,
            latency_us = u64::try_from(self.latency.as_micros()).unwrap_or(u64::MAX),
            "request"
        );
    }
}

struct OrDash<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}
