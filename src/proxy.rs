//! The request path: route, credentials, cache, coalesced upstream fetch with budget, breaker and
//! retries, and the response. It owns the order of those steps and the cache outcome vocabulary;
//! it does no socket I/O of its own (the server feeds it requests, upstream.rs makes the only
//! outbound call).

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AGE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::Full;
use tokio::time::Instant;

use arc_swap::ArcSwap;

use crate::budget::{cool_down_for, retry_after_secs, Admission, BudgetPolicy, UpstreamBudget};
use crate::cache::{
    answered_integration, is_refresh_failure, storability, AnswerStore, CacheEntry, CacheKey,
    Freshness, PurgeScope, StaleUse, TtlPolicy,
};
use crate::coalesce::{Coalescer, Role};
use crate::credentials::{self, Credentials, FallbackToken, Partition, PartitionKey};
use crate::error::{ApiError, SDK_RETRY_AFTER_LIMIT_SECS, X_SHOULD_RETRY};
use crate::metrics::Metrics;
use crate::resilience::{backoff, health_of, is_retryable, Breaker, BreakerPolicy, Health, Pass};
use crate::routes::{self, AccountId, Lookup, ReferenceId, Route, REFERENCE_ROUTE};
use crate::server::ResponseBody;
use crate::upstream::{Upstream, UpstreamAnswer, UpstreamError};

/// RFC 9211 `Cache-Status`.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The cache's name in `Cache-Status`.
const CACHE_NAME: &str = "zt-risk-sidecar";

/// How one request was answered. The same string is used in `Cache-Status`, the log line and the
/// metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from a fresh entry.
    Hit,
    /// This request fetched from upstream.
    Miss,
    /// This request joined a fetch another request started.
    Collapsed,
    /// Served from a stale entry; the reason says why.
    Stale(StaleReason),
    /// No answer could be had and nothing stale could stand in.
    Unavailable,
    /// Passed through without the cache: the integrations list and the writes.
    Bypass,
    /// Answered by the sidecar itself (bad input), without the cache or upstream.
    Local,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Collapsed => "collapsed",
            CacheOutcome::Stale(_) => "stale",
            CacheOutcome::Unavailable => "unavailable",
            CacheOutcome::Bypass => "bypass",
            CacheOutcome::Local => "local",
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
    /// The circuit breaker considers Cloudflare down.
    UpstreamDown,
}

impl StaleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::WhileRevalidate => "stale-while-revalidate",
            StaleReason::IfError => "stale-if-error",
            StaleReason::BudgetExhausted => "stale-budget-exhausted",
            StaleReason::RateLimited => "stale-rate-limited",
            StaleReason::UpstreamDown => "stale-upstream-down",
        }
    }
}

/// Why no upstream call was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    BudgetExhausted { retry_after: Duration },
    CoolingDown { retry_after: Duration },
    UpstreamDown { retry_after: Duration },
}

impl Refusal {
    fn stale_reason(self) -> StaleReason {
        match self {
            Refusal::BudgetExhausted { .. } => StaleReason::BudgetExhausted,
            Refusal::CoolingDown { .. } => StaleReason::RateLimited,
            Refusal::UpstreamDown { .. } => StaleReason::UpstreamDown,
        }
    }

    fn to_error(self) -> ApiError {
        match self {
            Refusal::BudgetExhausted { retry_after } => ApiError::RateLimited {
                retry_after_secs: retry_after_secs(retry_after).max(1),
                reason: "budget-exhausted",
            },
            Refusal::CoolingDown { retry_after } => ApiError::RateLimited {
                retry_after_secs: retry_after_secs(retry_after).max(1),
                reason: "rate-limited",
            },
            Refusal::UpstreamDown { retry_after } => ApiError::UpstreamDown {
                retry_after_secs: retry_after_secs(retry_after).max(1),
            },
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Refusal::BudgetExhausted { .. } => "budget-exhausted",
            Refusal::CoolingDown { .. } => "rate-limited",
            Refusal::UpstreamDown { .. } => "upstream-down",
        }
    }
}

/// What one upstream fetch produced, shared by every caller that waited for it.
#[derive(Clone, Debug)]
enum Fetched {
    /// An answer from Cloudflare, relayed as is. `stored`: it went into the cache. `failure`: it
    /// is a failed refresh (429, 5xx, invalid body) for which a stale entry may stand in.
    Answered {
        answer: Arc<UpstreamAnswer>,
        stored: bool,
        failure: bool,
    },
    /// Another fetch stored a fresh entry just before this one started.
    AlreadyCached(CacheEntry),
    /// No answer to relay.
    Failed(UpstreamError),
    /// No upstream call was allowed.
    Refused(Refusal),
    /// The bound of fetches in flight was reached: no call was tried.
    Overloaded,
}

/// Request-level bounds, each answered with its own envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Longest request target (path and query) in bytes: 414 beyond.
    pub max_uri_bytes: usize,
    /// Largest total of header names and values in bytes: 431 beyond.
    pub max_header_bytes: usize,
    /// Most headers: 431 beyond.
    pub max_request_headers: usize,
    /// Upstream fetches for lookups in flight at most (one per key, however many callers wait
    /// on it): a fast 503 beyond. Hits never count, so cached lookups are served through any
    /// flood of misses.
    pub max_pending_lookups: usize,
    /// Callers waiting on those fetches at most (each holds a connection or a stream): a fast
    /// 503 beyond.
    pub max_waiting_lookups: usize,
    /// Writes being read or relayed at most: a fast 503 beyond. With the 64 KiB body bound this
    /// is also the budget of request-body bytes held at once.
    pub max_pending_writes: usize,
    /// Time for a request body to arrive whole (408 beyond), however it trickles.
    pub body_read_timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_uri_bytes: 4096,
            max_header_bytes: 16 * 1024,
            max_request_headers: 64,
            max_pending_lookups: 1024,
            max_waiting_lookups: 4096,
            max_pending_writes: 64,
            body_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Pure: the first request-level bound a request head breaks, if any.
pub fn check_request_head(
    uri: &http::Uri,
    headers: &http::HeaderMap,
    limits: &RequestLimits,
) -> Result<(), ApiError> {
    let target_length = uri
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if target_length > limits.max_uri_bytes {
        return Err(ApiError::UriTooLong);
    }
    if headers.len() > limits.max_request_headers {
        return Err(ApiError::HeadersTooLarge);
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(ApiError::HeadersTooLarge);
    }
    Ok(())
}

/// Pure: RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host` (HTTP/2 carries
/// `:authority` instead, and HTTP/1.0 predates the rule).
pub fn check_host(version: http::Version, headers: &http::HeaderMap) -> Result<(), ApiError> {
    if version != http::Version::HTTP_11 {
        return Ok(());
    }
    let mut hosts = headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), None) => Ok(()),
        _ => Err(ApiError::InvalidHost),
    }
}

/// The largest request body relayed on a write.
pub const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024;

/// Why a request body could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    Broken,
}

/// A request body as the request path needs it: whether it may carry bytes (a lookup must not),
/// and its bytes up to a bound (a write relays them).
pub trait RequestBody: Send + 'static {
    fn may_have_body(&self) -> bool;
    fn collect_limited(self, limit: usize)
        -> impl Future<Output = Result<Bytes, BodyError>> + Send;
}

impl RequestBody for hyper::body::Incoming {
    fn may_have_body(&self) -> bool {
        !hyper::body::Body::is_end_stream(self)
    }

    async fn collect_limited(self, limit: usize) -> Result<Bytes, BodyError> {
        collect_limited(self, limit).await
    }
}

impl RequestBody for Full<Bytes> {
    fn may_have_body(&self) -> bool {
        !hyper::body::Body::is_end_stream(self)
    }

    async fn collect_limited(self, limit: usize) -> Result<Bytes, BodyError> {
        collect_limited(self, limit).await
    }
}

impl RequestBody for () {
    fn may_have_body(&self) -> bool {
        false
    }

    async fn collect_limited(self, _limit: usize) -> Result<Bytes, BodyError> {
        Ok(Bytes::new())
    }
}

impl RequestBody for http_body_util::Empty<Bytes> {
    fn may_have_body(&self) -> bool {
        false
    }

    async fn collect_limited(self, _limit: usize) -> Result<Bytes, BodyError> {
        Ok(Bytes::new())
    }
}

async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Broken),
    }
}

/// The request-path settings that a reload may change while requests are served.
#[derive(Clone)]
pub struct LiveSettings {
    pub ttl: TtlPolicy,
    pub fallback_token: Option<FallbackToken>,
    /// Retries after a connection failure or a 502/503/504, within the request's deadline.
    pub max_retries: u32,
    pub limits: RequestLimits,
    /// `None`: every account may be looked up.
    pub allowed_accounts: Option<Arc<HashSet<AccountId>>>,
    /// Whether a write without caller credentials goes upstream with the sidecar's token. Off by
    /// default: the token then only reads.
    pub writes_with_sidecar_token: bool,
}

/// One place under a bound (fetches, waiting callers, writes): taken with [`Slot::take`], given
/// back when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    fn take(count: &'a AtomicUsize, bound: usize) -> Option<Slot<'a>> {
        if count.fetch_add(1, AtomicOrdering::Relaxed) >= bound {
            count.fetch_sub(1, AtomicOrdering::Relaxed);
            return None;
        }
        Some(Slot(count))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, AtomicOrdering::Relaxed);
    }
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

/// The facts of one answered request, for the log line.
struct Served {
    response: Response<ResponseBody>,
    outcome: CacheOutcome,
    upstream_status: Option<StatusCode>,
    account_id: Option<AccountId>,
    /// The route template; `None` when the request matched no route.
    route: Option<&'static str>,
}

impl<S: AnswerStore, B: UpstreamBudget> Proxy<S, B> {
    pub fn new(
        store: S,
        budget: B,
        upstream: Upstream,
        settings: LiveSettings,
        breaker: BreakerPolicy,
        metrics: Arc<Metrics>,
    ) -> Proxy<S, B> {
        Proxy {
            shared: Arc::new(Shared {
                store,
                budget,
                breaker: Breaker::new(breaker),
                flights: Coalescer::default(),
                upstream,
                partition_key: PartitionKey::random(),
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
        let stale_reason = match served.outcome {
            CacheOutcome::Stale(reason) => Some(reason.as_str()),
            _ => None,
        };
        let metrics = &self.shared.metrics;
        let elapsed = started.elapsed();
        metrics.record_lookup(served.outcome.as_str(), status, elapsed);
        match served.outcome {
            CacheOutcome::Stale(reason) => metrics.record_stale(reason.as_str()),
            CacheOutcome::Collapsed => metrics.record_coalesced(),
            _ => {}
        }
        tracing::info!(
            method = %parts.method,
            route = served.route.unwrap_or("unrouted"),
            account_id = %OrDash(served.account_id),
            status = status.as_u16(),
            cache = served.outcome.as_str(),
            stale_reason,
            upstream_status = served.upstream_status.map(|s| s.as_u16()),
            latency_us = elapsed.as_micros() as u64,
            "request"
        );
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

    /// `received`: when the request arrived; a cache read right after it uses it as "now".
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

    /// A cached lookup: the cache, stale serving, coalescing, the upstream fetch.
    async fn serve_lookup(
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
        if let Some(entry) = shared.store.get(&key).await {
            // The read took well under a microsecond: the arrival time stands for now.
            let now = received;
            match entry.freshness(now) {
                Freshness::Fresh { remaining } => {
                    return Served::hit(&entry, remaining, now);
                }
                Freshness::Stale { expired_ago } => match settings.ttl.stale_use(expired_ago) {
                    StaleUse::ServeAndRevalidate => {
                        self.refresh_in_background(key, lookup, credentials);
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
            return Served::local(ApiError::Overloaded, None, None);
        };
        let fetch = {
            let shared = Arc::clone(&self.shared);
            let key = key.clone();
            move || async move { shared.fetch(key, lookup, credentials).await }
        };
        let (role, fetched) = shared.flights.run(key, fetch).await;
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(_abandoned) => {
                tracing::error!("an upstream fetch task ended without an outcome");
                return Served::local(ApiError::Internal, None, None);
            }
        };
        let outcome = match role {
            Role::Leader => CacheOutcome::Miss,
            Role::Follower => CacheOutcome::Collapsed,
        };
        let now = Instant::now();
        match (fetched, fallback) {
            (Fetched::Overloaded, _) => Served::local(ApiError::Overloaded, None, None),
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
                let mut response = ApiError::UpstreamInvalidResponse.to_response();
                let cache_status = format!(
                    "{CACHE_NAME}; fwd=miss; fwd-status={}; detail=upstream-invalid-body",
                    answer.status.as_u16()
                );
                set_cache_status(&mut response, &cache_status);
                Served::answered(response, outcome, Some(answer.status))
            }
            (Fetched::Answered { answer, stored, .. }, _) => {
                let mut response = relay(&answer, false);
                let mut cache_status = format!("{CACHE_NAME}; fwd=miss");
                match (role, stored) {
                    (Role::Follower, _) => cache_status.push_str("; collapsed"),
                    (Role::Leader, true) => cache_status.push_str("; stored"),
                    (Role::Leader, false) => {}
                }
                cache_status.push_str(&format!("; fwd-status={}", answer.status.as_u16()));
                set_cache_status(&mut response, &cache_status);
                Served::answered(response, outcome, Some(answer.status))
            }
            (Fetched::Failed(_), Some(entry)) => {
                Served::stale(&entry, StaleReason::IfError, None, now)
            }
            (Fetched::Failed(error), None) => {
                let mut response = upstream_error(error).to_response();
                let cache_status = format!("{CACHE_NAME}; fwd=miss; detail={}", error.as_str());
                set_cache_status(&mut response, &cache_status);
                Served::answered(response, outcome, None)
            }
            (Fetched::Refused(refusal), Some(entry)) => {
                Served::stale(&entry, refusal.stale_reason(), None, now)
            }
            (Fetched::Refused(refusal), None) => {
                if let Refusal::BudgetExhausted { .. } | Refusal::CoolingDown { .. } = refusal {
                    shared.metrics.record_local_rate_limited(refusal.detail());
                }
                let mut response = refusal.to_error().to_response();
                set_cache_status(
                    &mut response,
                    &format!("{CACHE_NAME}; detail={}", refusal.detail()),
                );
                Served::answered(response, CacheOutcome::Unavailable, None)
            }
        }
    }

    /// The rest of the integrations family: one upstream call with the caller's credentials,
    /// never cached, coalesced or retried; it still spends budget and respects the breaker. A
    /// successful write then drops every cached lookup it made stale.
    async fn pass_through(
        &self,
        route: &Route,
        parts: &http::request::Parts,
        body: Option<Bytes>,
        credentials: &Credentials,
    ) -> Served {
        let shared = &self.shared;
        let pass = shared.breaker.call();
        if let Pass::Rejected { retry_after } = pass {
            return Served::local(Refusal::UpstreamDown { retry_after }.to_error(), None, None);
        }
        let partition = credentials.partition();
        if let Some(refusal) = shared.admit(partition).await {
            shared.breaker.record(pass, Health::NotCalled);
            shared.metrics.record_local_rate_limited(refusal.detail());
            return Served::local(refusal.to_error(), None, None);
        }
        let is_write = route.is_write();
        // A HEAD of the collection is asked upstream as GET; the body is dropped on the way back.
        let (method, mut path) = if is_write {
            (parts.method.clone(), route.upstream_path())
        } else {
            (Method::GET, route.upstream_path())
        };
        if !is_write {
            // The list takes paging parameters; they pass through as they came.
            if let Some(query) = parts.uri.query() {
                path.push('?');
                path.push_str(query);
            }
        }
        let content_type = parts.headers.get(http::header::CONTENT_TYPE).cloned();
        let body = body.map(|bytes| (bytes, content_type));
        let started = Instant::now();
        let deadline = started + shared.upstream.request_timeout();
        let result = shared
            .upstream
            .send(method, &path, credentials, body, deadline)
            .await;
        // The summary it returns is read off `result` itself below.
        let _summary = shared
            .settle(pass, partition, route.account_id(), started, &result)
            .await;
        let answer = match result {
            Ok(answer) => answer,
            Err(error) => return Served::local(upstream_error(error), None, None),
        };
        if is_write && answer.status.is_success() {
            shared.invalidate_after_write(route, &answer).await;
        }
        let mut response = relay(&answer, false);
        let forward = if is_write { "method" } else { "bypass" };
        set_cache_status(
            &mut response,
            &format!(
                "{CACHE_NAME}; fwd={forward}; fwd-status={}",
                answer.status.as_u16()
            ),
        );
        Served::answered(response, CacheOutcome::Bypass, Some(answer.status))
    }

    /// Starts one refresh of `key` unless one is already in flight; nobody waits for it.
    fn refresh_in_background(&self, key: CacheKey, lookup: Lookup, credentials: Credentials) {
        let shared = Arc::clone(&self.shared);
        let task_key = key.clone();
        self.shared.flights.start_if_idle(key, move || async move {
            shared.fetch(task_key, lookup, credentials).await
        });
    }
}

impl<S: AnswerStore, B: UpstreamBudget> Shared<S, B> {
    /// Asks the budget for one upstream call by `partition`: `None` when it may go ahead.
    async fn admit(&self, partition: Partition) -> Option<Refusal> {
        match self.budget.admit(partition).await {
            Admission::Granted { tokens_left } => {
                self.metrics.set_budget_tokens(tokens_left);
                None
            }
            Admission::CoolingDown { retry_after } => Some(Refusal::CoolingDown { retry_after }),
            Admission::Exhausted { retry_after } => Some(Refusal::BudgetExhausted { retry_after }),
        }
    }

    /// The bookkeeping after every upstream call, lookup or pass-through alike: its duration under
    /// its status (or failure kind), its health for the breaker, and after a 429 a cool-down for
    /// the credential. Returns the call's status or failure.
    async fn settle(
        &self,
        pass: Pass,
        partition: Partition,
        account_id: AccountId,
        started: Instant,
        result: &Result<UpstreamAnswer, UpstreamError>,
    ) -> Result<StatusCode, UpstreamError> {
        let summary = result
            .as_ref()
            .map(|answer| answer.status)
            .map_err(|error| *error);
        let label = match &summary {
            Ok(status) => status.as_str(),
            Err(error) => error.as_str(),
        };
        self.metrics.record_upstream(label, started.elapsed());
        self.breaker.record(pass, health_of(&summary));
        if let Ok(answer) = result {
            if is_credential_refusal(answer.status) {
                // Cloudflare refused this credential: nothing it had cached for the account may
                // stand in for an answer any more (stale-if-error, a spent budget, a cool-down,
                // the breaker), until Cloudflare answers it with a success again.
                let scope = PurgeScope::Partition {
                    partition,
                    account_id,
                };
                let purged = self.store.purge(&scope).await;
                tracing::debug!(
                    purged,
                    status = answer.status.as_u16(),
                    "credential refused: its entries for the account were dropped"
                );
            }
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                let retry_after = answer
                    .headers
                    .iter()
                    .find(|(name, _)| name == RETRY_AFTER)
                    .and_then(|(_, value)| value.to_str().ok());
                self.budget
                    .cool_down(partition, cool_down_for(retry_after))
                    .await;
            }
        }
        summary
    }

    /// After a successful write: no fetch that began before it may store its answer, no lookup
    /// after it may join such a fetch, and every cached lookup it made stale goes, in every
    /// credential partition: those that returned the written integration (by id or by reference
    /// id, so an update's old reference id too), and those of the reference id it now has (a
    /// cached "not found" of a created integration, or the new reference id of an update).
    async fn invalidate_after_write(&self, route: &Route, answer: &UpstreamAnswer) {
        let account_id = route.account_id();
        self.writes.fetch_add(1, AtomicOrdering::SeqCst);
        self.flights.detach_if(|key| key.account_id == account_id);
        let answered = answered_integration(&answer.body);
        let mut scopes = Vec::new();
        match route {
            Route::Update { integration_id, .. } | Route::Delete { integration_id, .. } => {
                scopes.push(PurgeScope::Integration {
                    account_id,
                    integration_id: *integration_id,
                });
            }
            _ => {}
        }
        if let Some(answered) = answered {
            if matches!(route, Route::Create { .. }) {
                scopes.push(PurgeScope::Integration {
                    account_id,
                    integration_id: answered.id,
                });
            }
            if let Some(reference_id) = answered
                .reference_id
                .as_deref()
                .and_then(ReferenceId::from_decoded)
            {
                scopes.push(PurgeScope::Lookup {
                    account_id,
                    reference_id,
                });
            }
        }
        let mut purged = 0;
        for scope in &scopes {
            purged += self.store.purge(scope).await;
        }
        tracing::debug!(purged, "write-through invalidation");
    }

    /// The leader's work, in its own task: upstream calls within the budget, the breaker and the
    /// request's deadline, retried on connection failures and 502/503/504, and the answer stored
    /// when cacheable.
    async fn fetch(&self, key: CacheKey, lookup: Lookup, credentials: Credentials) -> Fetched {
        // A fetch for this key may have completed between this caller's cache read and its
        // joining the in-flight table; its entry is then already here.
        if let Some(entry) = self.store.get(&key).await {
            if matches!(entry.freshness(Instant::now()), Freshness::Fresh { .. }) {
                return Fetched::AlreadyCached(entry);
            }
        }
        let settings = self.settings.load_full();
        // One place per fetch, however many callers wait on it.
        let Some(_pending) = Slot::take(&self.pending, settings.limits.max_pending_lookups) else {
            return Fetched::Overloaded;
        };
        let writes_before = self.writes.load(AtomicOrdering::SeqCst);
        let deadline = Instant::now() + self.upstream.request_timeout();
        let path = lookup.upstream_path();
        let partition = credentials.partition();
        let mut retries = 0;
        let mut last: Option<Result<UpstreamAnswer, UpstreamError>> = None;
        let result = loop {
            // A retry that the breaker or the budget refuses ends with the last attempt's result.
            let pass = self.breaker.call();
            if let Pass::Rejected { retry_after } = pass {
                match last {
                    Some(result) => break result,
                    None => return Fetched::Refused(Refusal::UpstreamDown { retry_after }),
                }
            }
            if let Some(refusal) = self.admit(partition).await {
                self.breaker.record(pass, Health::NotCalled);
                match last {
                    Some(result) => break result,
                    None => return Fetched::Refused(refusal),
                }
            }
            let attempt_started = Instant::now();
            let result = self.upstream.get(&path, &credentials, deadline).await;
            let summary = self
                .settle(pass, partition, key.account_id, attempt_started, &result)
                .await;
            if !is_retryable(&summary) || retries >= settings.max_retries {
                break result;
            }
            let delay = backoff(retries, rand::random::<f64>());
            if Instant::now() + delay >= deadline {
                break result;
            }
            tracing::debug!(
                retry = retries + 1,
                delay_ms = delay.as_millis() as u64,
                "retrying upstream"
            );
            tokio::time::sleep(delay).await;
            self.metrics.record_retry();
            retries += 1;
            last = Some(result);
        };
        let answer = match result {
            Ok(answer) => Arc::new(answer),
            Err(error) => return Fetched::Failed(error),
        };
        let decision = storability(answer.status, &answer.body);
        let failure = is_refresh_failure(answer.status, decision);
        let ttl = &settings.ttl;
        let Some(fresh_for) = decision.fresh_for(ttl) else {
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
        };
        self.store.insert(key.clone(), entry).await;
        // A write that completed while this fetch ran may have made its answer stale; its purge
        // ran either after this insert (and took it) or before it (and then this takes it back).
        let stored = self.writes.load(AtomicOrdering::SeqCst) == writes_before;
        if !stored {
            self.store.remove(&key).await;
        }
        Fetched::Answered {
            answer,
            stored,
            failure,
        }
    }
}

impl Served {
    fn local(
        error: ApiError,
        account_id: Option<AccountId>,
        route: Option<&'static str>,
    ) -> Served {
        Served {
            response: error.to_response(),
            outcome: CacheOutcome::Local,
            upstream_status: None,
            account_id,
            route,
        }
    }

    /// An answer from upstream (relayed, or standing in for one).
    fn answered(
        response: Response<ResponseBody>,
        outcome: CacheOutcome,
        upstream_status: Option<StatusCode>,
    ) -> Served {
        Served {
            response,
            outcome,
            upstream_status,
            account_id: None,
            route: None,
        }
    }

    /// Names the account and the route this answer was about, for the log line.
    fn about(mut self, account_id: Option<AccountId>, route: Option<&'static str>) -> Served {
        self.account_id = account_id;
        self.route = route;
        self
    }

    fn hit(entry: &CacheEntry, remaining: Duration, now: Instant) -> Served {
        let response = hit_response(entry, remaining, now);
        Served::answered(response, CacheOutcome::Hit, None)
    }

    /// A stale entry standing in. `Cache-Status` gives a negative `ttl` (seconds past expiry) and
    /// the reason; `fwd=stale` when this request did try upstream.
    fn stale(
        entry: &CacheEntry,
        reason: StaleReason,
        upstream_status: Option<StatusCode>,
        now: Instant,
    ) -> Served {
        let mut response = relay(&entry.answer, true);
        set_age(&mut response, entry, now);
        let expired_ago = match entry.freshness(now) {
            Freshness::Stale { expired_ago } => expired_ago.as_secs(),
            Freshness::Fresh { .. } => 0,
        };
        let lead = if reason == StaleReason::IfError {
            "fwd=stale"
        } else {
            "hit"
        };
        let mut cache_status = format!(
            "{CACHE_NAME}; {lead}; ttl=-{expired_ago}; detail={}",
            reason.as_str()
        );
        if let Some(status) = upstream_status {
            cache_status.push_str(&format!("; fwd-status={}", status.as_u16()));
        }
        set_cache_status(&mut response, &cache_status);
        Served::answered(response, CacheOutcome::Stale(reason), upstream_status)
    }
}

/// The response to a fresh hit, `remaining` before it expires: the stored answer, its `Age` and
/// `Cache-Status`. (Public for the micro benchmark.)
pub fn hit_response(
    entry: &CacheEntry,
    remaining: Duration,
    now: Instant,
) -> Response<ResponseBody> {
    let mut response = relay(&entry.answer, true);
    set_age(&mut response, entry, now);
    let ttl = remaining.as_secs();
    let cache_status = HIT_CACHE_STATUS.get(ttl, || format!("{CACHE_NAME}; hit; ttl={ttl}"));
    if let Some(cache_status) = cache_status {
        response.headers_mut().insert(CACHE_STATUS, cache_status);
    }
    response
}

/// Status, relayed headers and body bytes exactly as Cloudflare sent them. A stored answer is
/// replayed without `Ratelimit`: the quota it reported is no longer current, and a hit spent none.
/// A relayed 429 that asks for more than SDKs honour also gets `x-should-retry: false`.
fn relay(answer: &UpstreamAnswer, replay: bool) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(answer.body.clone()));
    *response.status_mut() = answer.status;
    // Room for the relayed headers and the two this cache adds (`Age`, `Cache-Status`).
    *response.headers_mut() = HeaderMap::with_capacity(answer.headers.len() + 2);
    let headers = response.headers_mut();
    for (name, value) in &answer.headers {
        if replay && name == RATELIMIT {
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

/// Formats an optional value for the log line without allocating: the value, or `-`.
struct OrDash<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

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

/// The local answer when no upstream answer could be had.
/// Pure: whether Cloudflare's answer refuses the credential itself (401, 403).
fn is_credential_refusal(status: StatusCode) -> bool {
    matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
}

fn upstream_error(error: UpstreamError) -> ApiError {
    match error {
        UpstreamError::Connect | UpstreamError::Unreachable => ApiError::UpstreamUnreachable,
        UpstreamError::Timeout => ApiError::UpstreamTimeout,
        UpstreamError::BodyTooLarge | UpstreamError::InvalidAnswer => {
            ApiError::UpstreamInvalidResponse
        }
    }
}

fn set_age(response: &mut Response<ResponseBody>, entry: &CacheEntry, now: Instant) {
    let age = now.saturating_duration_since(entry.stored_at).as_secs();
    if let Some(value) = AGE_VALUES.get(age, || age.to_string()) {
        response.headers_mut().insert(AGE, value);
    }
}

/// Header values that depend only on a count of seconds, made once and then shared. Their bytes
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

fn set_cache_status(response: &mut Response<ResponseBody>, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(CACHE_STATUS, value);
    }
}

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
            let text = format!("{CACHE_NAME}; hit; ttl={seconds}");
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
}
