//! The request path: route, credentials, cache, coalesced upstream fetch, response. It owns the
//! order of those steps and the cache outcome vocabulary; it does no socket I/O of its own (the
//! server feeds it requests, upstream.rs makes the only outbound call).

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, AGE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;

use crate::cache::{storability, AnswerStore, CacheEntry, CacheKey, Freshness, TtlPolicy};
use crate::coalesce::{Coalescer, Role};
use crate::credentials::{self, FallbackToken, PartitionKey};
use crate::error::ApiError;
use crate::routes::{self, Lookup, REFERENCE_ROUTE};
use crate::server::ResponseBody;
use crate::upstream::{Upstream, UpstreamAnswer, UpstreamError};

/// RFC 9211 `Cache-Status`.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The cache's name in `Cache-Status`.
const CACHE_NAME: &str = "zt-risk-sidecar";

/// How one request was answered. The same string is used in `Cache-Status`, the log line and
/// (later) the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from a fresh entry.
    Hit,
    /// This request fetched from upstream.
    Miss,
    /// This request joined a fetch another request started.
    Collapsed,
    /// Answered by the sidecar itself (bad input), without the cache or upstream.
    Local,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Collapsed => "collapsed",
            CacheOutcome::Local => "local",
        }
    }
}

/// What one upstream fetch produced, shared by every caller that waited for it.
#[derive(Clone, Debug)]
enum Fetched {
    /// An answer from Cloudflare, relayed as is; `stored` says whether it went into the cache.
    Answered {
        answer: Arc<UpstreamAnswer>,
        stored: bool,
    },
    /// Another fetch stored a fresh entry just before this one started.
    AlreadyCached(CacheEntry),
    /// No answer to relay.
    Failed(UpstreamError),
}

/// Everything the request path needs, as cheap handles.
pub struct ProxySettings {
    pub ttl: TtlPolicy,
    pub fallback_token: Option<FallbackToken>,
}

/// The request handler. Cloning is cheap; every clone shares the same cache and client.
pub struct Proxy<S: AnswerStore> {
    shared: Arc<Shared<S>>,
}

impl<S: AnswerStore> Clone for Proxy<S> {
    fn clone(&self) -> Self {
        Proxy {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<S> {
    store: S,
    flights: Coalescer<CacheKey, Fetched>,
    upstream: Upstream,
    partition_key: PartitionKey,
    settings: ProxySettings,
}

/// The facts of one answered request, for the log line.
struct Served {
    response: Response<ResponseBody>,
    outcome: CacheOutcome,
    upstream_status: Option<StatusCode>,
    account_id: Option<String>,
}

impl<S: AnswerStore> Proxy<S> {
    pub fn new(store: S, upstream: Upstream, settings: ProxySettings) -> Proxy<S> {
        Proxy {
            shared: Arc::new(Shared {
                store,
                flights: Coalescer::default(),
                upstream,
                partition_key: PartitionKey::random(),
                settings,
            }),
        }
    }

    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// Upstream fetches in flight, and callers waiting on one that another caller started.
    pub fn in_flight(&self) -> (usize, usize) {
        let flights = &self.shared.flights;
        (flights.in_flight(), flights.total_followers())
    }

    /// Answers one request. Never fails: every error becomes a Cloudflare-style envelope.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ResponseBody> {
        let started = Instant::now();
        let method = request.method().clone();
        let served = self.serve(&request).await;
        let status = served.response.status();
        tracing::info!(
            method = %method,
            route = if served.outcome == CacheOutcome::Local && status == StatusCode::NOT_FOUND { "unrouted" } else { REFERENCE_ROUTE },
            account_id = served.account_id.as_deref().unwrap_or("-"),
            status = status.as_u16(),
            cache = served.outcome.as_str(),
            upstream_status = served.upstream_status.map(|s| s.as_u16()),
            latency_us = started.elapsed().as_micros() as u64,
            "request"
        );
        let mut response = served.response;
        if method == Method::HEAD {
            // Same headers as GET (Content-Length included), no body.
            let length = HeaderValue::from(response.body().size_hint_exact());
            response
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, length);
            *response.body_mut() = Full::default();
        }
        response
    }

    async fn serve<B>(&self, request: &Request<B>) -> Served {
        let lookup = match routes::route(request.method(), request.uri().path()) {
            Ok(lookup) => lookup,
            Err(error) => return Served::local(error, None),
        };
        let account_id = Some(lookup.account_id.to_string());
        let shared = &self.shared;
        let credentials = match credentials::extract(
            request.headers(),
            shared.settings.fallback_token.as_ref(),
            &shared.partition_key,
        ) {
            Ok(credentials) => credentials,
            Err(error) => return Served::local(error, account_id),
        };
        let key = CacheKey::new(credentials.partition(), &lookup);

        if let Some(entry) = shared.store.get(&key).await {
            let now = Instant::now();
            if let Freshness::Fresh { remaining } = entry.freshness(now) {
                return Served::hit(&entry, remaining, now, account_id);
            }
        }

        let fetch = {
            let shared = Arc::clone(&self.shared);
            let key = key.clone();
            move || async move { shared.fetch_and_store(key, lookup, credentials).await }
        };
        let (role, fetched) = shared.flights.run(key, fetch).await;
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(_abandoned) => {
                tracing::error!("an upstream fetch task ended without an outcome");
                return Served::local(ApiError::Internal, account_id);
            }
        };
        match fetched {
            Fetched::AlreadyCached(entry) => {
                let now = Instant::now();
                let remaining = match entry.freshness(now) {
                    Freshness::Fresh { remaining } => remaining,
                    Freshness::Stale { .. } => Duration::ZERO,
                };
                Served::hit(&entry, remaining, now, account_id)
            }
            Fetched::Answered { answer, stored } => {
                let outcome = match role {
                    Role::Leader => CacheOutcome::Miss,
                    Role::Follower => CacheOutcome::Collapsed,
                };
                let mut response = relay(&answer, false);
                let mut cache_status = format!("{CACHE_NAME}; fwd=miss");
                match (role, stored) {
                    (Role::Follower, _) => cache_status.push_str("; collapsed"),
                    (Role::Leader, true) => cache_status.push_str("; stored"),
                    (Role::Leader, false) => {}
                }
                cache_status.push_str(&format!("; fwd-status={}", answer.status.as_u16()));
                set_cache_status(&mut response, &cache_status);
                Served {
                    response,
                    outcome,
                    upstream_status: Some(answer.status),
                    account_id,
                }
            }
            Fetched::Failed(error) => {
                let api_error = match error {
                    UpstreamError::Unreachable => ApiError::UpstreamUnreachable,
                    UpstreamError::Timeout => ApiError::UpstreamTimeout,
                    UpstreamError::BodyTooLarge => ApiError::UpstreamInvalidResponse,
                };
                let mut response = api_error.to_response();
                let outcome = match role {
                    Role::Leader => CacheOutcome::Miss,
                    Role::Follower => CacheOutcome::Collapsed,
                };
                let cache_status = format!("{CACHE_NAME}; fwd=miss; detail={}", error.as_str());
                set_cache_status(&mut response, &cache_status);
                Served {
                    response,
                    outcome,
                    upstream_status: None,
                    account_id,
                }
            }
        }
    }
}

impl<S: AnswerStore> Shared<S> {
    /// The leader's work: one upstream request, stored when cacheable. Runs in its own task.
    async fn fetch_and_store(
        &self,
        key: CacheKey,
        lookup: Lookup,
        credentials: credentials::Credentials,
    ) -> Fetched {
        // A fetch for this key may have completed between this caller's cache read and its
        // joining the in-flight table; its entry is then already here.
        if let Some(entry) = self.store.get(&key).await {
            if matches!(entry.freshness(Instant::now()), Freshness::Fresh { .. }) {
                return Fetched::AlreadyCached(entry);
            }
        }
        let answer = match self
            .upstream
            .get(&lookup.upstream_path(), &credentials)
            .await
        {
            Ok(answer) => Arc::new(answer),
            Err(error) => return Fetched::Failed(error),
        };
        let decision = storability(answer.status, &answer.body);
        let Some(fresh_for) = decision.fresh_for(&self.settings.ttl) else {
            return Fetched::Answered {
                answer,
                stored: false,
            };
        };
        let entry = CacheEntry {
            answer: Arc::clone(&answer),
            stored_at: Instant::now(),
            fresh_for,
        };
        self.store.insert(key, entry).await;
        Fetched::Answered {
            answer,
            stored: true,
        }
    }
}

impl Served {
    fn local(error: ApiError, account_id: Option<String>) -> Served {
        Served {
            response: error.to_response(),
            outcome: CacheOutcome::Local,
            upstream_status: None,
            account_id,
        }
    }

    fn hit(
        entry: &CacheEntry,
        remaining: Duration,
        now: Instant,
        account_id: Option<String>,
    ) -> Served {
        let mut response = relay(&entry.answer, true);
        let age = now.saturating_duration_since(entry.stored_at).as_secs();
        response.headers_mut().insert(AGE, HeaderValue::from(age));
        let cache_status = format!("{CACHE_NAME}; hit; ttl={}", remaining.as_secs());
        set_cache_status(&mut response, &cache_status);
        Served {
            response,
            outcome: CacheOutcome::Hit,
            upstream_status: None,
            account_id,
        }
    }
}

/// Status, relayed headers and body bytes exactly as Cloudflare sent them. A stored answer is
/// replayed without `Ratelimit`: the quota it reported is no longer current, and a hit spent none.
fn relay(answer: &UpstreamAnswer, replay: bool) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(answer.body.clone()));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    for (name, value) in &answer.headers {
        if replay && name == RATELIMIT {
            continue;
        }
        headers.insert(name.clone(), value.clone());
    }
    response
}

fn set_cache_status(response: &mut Response<ResponseBody>, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(CACHE_STATUS, value);
    }
}

trait ExactSize {
    fn size_hint_exact(&self) -> u64;
}

impl ExactSize for ResponseBody {
    fn size_hint_exact(&self) -> u64 {
        hyper::body::Body::size_hint(self).exact().unwrap_or(0)
    }
}
