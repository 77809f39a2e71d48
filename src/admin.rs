//! The admin listener's requests: liveness, readiness, Prometheus metrics, cache stats, purge and
//! reload, optionally behind a bearer token of its own. It serves operators, never lookups, and it is
//! bound to its own address, never the lookup port.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::budget::UpstreamBudget;
use crate::cache::{AnswerStore, PurgeScope};
use crate::credentials::Secret;
use crate::error::ApiError;
use crate::metrics::Exposition;
use crate::proxy::Proxy;
use crate::reload::{ReloadHandle, ReloadOutcome, Trigger};
use crate::routes::{AccountId, ReferenceId};
use crate::server::ResponseBody;

/// Whether the process should get traffic: not before it listens, not while it drains.
#[derive(Clone)]
pub struct Readiness(Arc<AtomicU8>);

impl Default for Readiness {
    fn default() -> Self {
        Readiness(Arc::new(AtomicU8::new(STARTING)))
    }
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(READY, Ordering::SeqCst);
    }

    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::SeqCst);
    }

    pub fn as_str(&self) -> &'static str {
        match self.0.load(Ordering::SeqCst) {
            READY => "ready",
            DRAINING => "draining",
            _ => "starting",
        }
    }
}

/// The admin request handler. Cheap to clone.
pub struct Admin<S: AnswerStore, B: UpstreamBudget> {
    proxy: Proxy<S, B>,
    readiness: Readiness,
    token: Arc<ArcSwapOption<Secret>>,
    /// Set once the reload task runs; until then (and in tests that run none) `POST /reload`
    /// is no route.
    reload: Arc<OnceLock<ReloadHandle>>,
}

impl<S: AnswerStore, B: UpstreamBudget> Clone for Admin<S, B> {
    fn clone(&self) -> Self {
        Admin {
            proxy: self.proxy.clone(),
            readiness: self.readiness.clone(),
            token: Arc::clone(&self.token),
            reload: Arc::clone(&self.reload),
        }
    }
}

impl<S: AnswerStore, B: UpstreamBudget> Admin<S, B> {
    pub fn new(proxy: Proxy<S, B>, readiness: Readiness, token: Option<Secret>) -> Admin<S, B> {
        Admin {
            proxy,
            readiness,
            token: Arc::new(ArcSwapOption::from(token.map(Arc::new))),
            reload: Arc::new(OnceLock::new()),
        }
    }

    /// Connects `POST /reload` to the reload task; only the first handle counts.
    pub fn set_reload_handle(&self, handle: ReloadHandle) {
        let _ = self.reload.set(handle);
    }

    /// Replaces the admin token (on reload).
    pub fn set_token(&self, token: Option<Secret>) {
        self.token.store(token.map(Arc::new));
    }

    /// Answers one admin request. Never fails.
    pub async fn handle<Body>(&self, request: Request<Body>) -> Response<ResponseBody> {
        let path = request.uri().path();
        let method = request.method();
        // Probes stay open so that an orchestrator needs no secret to ask them.
        match path {
            "/healthz" => {
                return only_get(method)
                    .unwrap_or_else(|| json(StatusCode::OK, r#"{"status":"alive"}"#.into()))
            }
            "/readyz" => {
                return only_get(method).unwrap_or_else(|| self.readiness());
            }
            _ => {}
        }
        if !self.authorized(&request) {
            let mut response = ApiError::AdminUnauthorized.to_response();
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        match path {
            "/metrics" => match only_get(method) {
                Some(response) => response,
                None => {
                    let accept = request
                        .headers()
                        .get(ACCEPT)
                        .and_then(|value| value.to_str().ok());
                    let format = Exposition::negotiate(accept);
                    let text = self.metrics_text(format).await;
                    let mut response = Response::new(Full::new(Bytes::from(text)));
                    response.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static(format.content_type()),
                    );
                    response
                }
            },
            "/cache/stats" => match only_get(method) {
                Some(response) => response,
                None => self.stats().await,
            },
            "/cache/purge" => {
                if method != Method::POST {
                    return ApiError::MethodNotAllowed { allow: "POST" }.to_response();
                }
                match purge_scope(request.uri().query().unwrap_or("")) {
                    Ok(scope) => self.purge(&scope).await,
                    Err(reason) => ApiError::BadAdminRequest { reason }.to_response(),
                }
            }
            "/reload" => {
                if method != Method::POST {
                    return ApiError::MethodNotAllowed { allow: "POST" }.to_response();
                }
                self.reload().await
            }
            _ => ApiError::NoRoute.to_response(),
        }
    }

    /// Does what SIGHUP does and answers how it went: 200 with the applied keys and those that
    /// need a restart, or 422 with the configuration error in Cloudflare's envelope.
    async fn reload(&self) -> Response<ResponseBody> {
        let Some(handle) = self.reload.get() else {
            return ApiError::NoRoute.to_response();
        };
        match handle.reload(Trigger::AdminRequest).await {
            Some(ReloadOutcome::Applied {
                applied,
                needs_restart,
            }) => {
                let body = serde_json::json!({
                    "outcome": "applied",
                    "applied": applied,
                    "needs_restart": needs_restart,
                });
                json(StatusCode::OK, body.to_string())
            }
            Some(ReloadOutcome::Rejected { reason }) => {
                ApiError::ReloadRejected { reason }.to_response()
            }
            // The reload task ends only when the process stops.
            None => ApiError::Overloaded.to_response(),
        }
    }

    fn authorized<Body>(&self, request: &Request<Body>) -> bool {
        let Some(token) = self.token.load_full() else {
            return true;
        };
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .and_then(bearer_credentials)
            .unwrap_or_default();
        // blake3::Hash compares in constant time, so the comparison leaks nothing of the token.
        blake3::hash(presented) == blake3::hash(token.expose().as_bytes())
    }

    fn readiness(&self) -> Response<ResponseBody> {
        let state = self.readiness.as_str();
        let status = if state == "ready" {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(status, format!(r#"{{"status":"{state}"}}"#))
    }

    /// Refreshes the gauges that are read rather than counted.
    pub async fn refresh_gauges(&self) {
        let size = self.proxy.store().size().await;
        let metrics = self.proxy.metrics();
        metrics.set_cache_size(size.entries, size.weighted_bytes);
        metrics.set_breaker_state(self.proxy.breaker().state().as_str());
    }

    /// The metrics exposition in `format`, with the cache gauges current.
    pub async fn metrics_text(&self, format: Exposition) -> String {
        self.refresh_gauges().await;
        self.proxy.metrics().encode(format)
    }

    async fn stats(&self) -> Response<ResponseBody> {
        self.refresh_gauges().await;
        let size = self.proxy.store().size().await;
        let metrics = self.proxy.metrics();
        let outcomes = ["hit", "miss", "collapsed", "stale", "unavailable", "local"];
        let counts: serde_json::Map<String, serde_json::Value> = outcomes
            .iter()
            .map(|outcome| {
                (
                    (*outcome).to_owned(),
                    metrics.lookups_with_outcome(outcome).into(),
                )
            })
            .collect();
        let served_from_cache =
            metrics.lookups_with_outcome("hit") + metrics.lookups_with_outcome("stale");
        let cache_lookups = served_from_cache
            + metrics.lookups_with_outcome("miss")
            + metrics.lookups_with_outcome("collapsed");
        let hit_ratio = if cache_lookups == 0 {
            0.0
        } else {
            served_from_cache as f64 / cache_lookups as f64
        };
        let body = serde_json::json!({
            "entries": size.entries,
            "weighted_bytes": size.weighted_bytes,
            "max_bytes": size.max_bytes,
            "lookups": counts,
            "hit_ratio": hit_ratio,
            "breaker": self.proxy.breaker().state().as_str(),
        });
        json(StatusCode::OK, body.to_string())
    }

    async fn purge(&self, scope: &PurgeScope) -> Response<ResponseBody> {
        let purged = self.proxy.store().purge(scope).await;
        let scope_name = match scope {
            PurgeScope::Lookup { .. } => "lookup",
            PurgeScope::Integration { .. } => "integration",
            PurgeScope::Account { .. } => "account",
            PurgeScope::Partition { .. } => "partition",
            PurgeScope::All => "all",
        };
        tracing::info!(scope = scope_name, purged, "cache purged");
        json(
            StatusCode::OK,
            format!(r#"{{"purged":{purged},"scope":"{scope_name}"}}"#),
        )
    }
}

/// Pure: the credentials of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 9110, section 11.1), so `bearer` and `BEARER` are the same; the token is
/// taken as sent, after the spaces that separate it from the scheme.
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let scheme = value.get(..SCHEME.len())?;
    let rest = value.get(SCHEME.len()..)?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || rest.first() != Some(&b' ') {
        return None;
    }
    let start = rest.iter().position(|byte| *byte != b' ')?;
    rest.get(start..)
}

/// `Some(405)` for anything but GET and HEAD.
fn only_get(method: &Method) -> Option<Response<ResponseBody>> {
    (method != Method::GET && method != Method::HEAD)
        .then(|| ApiError::MethodNotAllowed { allow: "GET, HEAD" }.to_response())
}

fn json(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Pure: the purge scope from a query string: `account_id=A&reference_id=R` (one lookup, every
/// credential), `account_id=A` (every lookup of an account) or `all=true`. Values are decoded
/// as a form (`application/x-www-form-urlencoded`, what `curl --data-urlencode -G` and every
/// HTML form send): `+` is a space and each `%XX` escape is decoded exactly once; a `%` that
/// starts no escape is refused rather than guessed at.
pub fn purge_scope(query: &str) -> Result<PurgeScope, &'static str> {
    let mut account = None;
    let mut reference = None;
    let mut all = false;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "account_id" if account.is_none() => account = Some(value),
            "reference_id" if reference.is_none() => reference = Some(value),
            "all" if value == "true" => all = true,
            _ => return Err("use account_id=…[&reference_id=…] or all=true, each once"),
        }
    }
    match (all, account, reference) {
        (true, None, None) => Ok(PurgeScope::All),
        (false, Some(account), reference) => {
            let account_id = AccountId::parse(account)
                .ok_or("account_id must be 32 lowercase hex characters")?;
            match reference {
                None => Ok(PurgeScope::Account { account_id }),
                Some(raw) => {
                    // In a form, `+` is a space; written as `%20` it is decoded with the rest.
                    let reference_id = ReferenceId::decode(&raw.replace('+', "%20"))
                        .map_err(|_| "reference_id is not a valid id")?;
                    Ok(PurgeScope::Lookup {
                        account_id,
                        reference_id,
                    })
                }
            }
        }
        _ => Err("use account_id=…[&reference_id=…] or all=true, each once"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";

    #[test]
    fn purge_scopes() {
        let account = AccountId::parse(ACCOUNT).expect("account");
        assert_eq!(purge_scope("all=true"), Ok(PurgeScope::All));
        assert_eq!(
            purge_scope(&format!("account_id={ACCOUNT}")),
            Ok(PurgeScope::Account {
                account_id: account
            })
        );
        assert_eq!(
            purge_scope(&format!("account_id={ACCOUNT}&reference_id=a%2Fb")),
            Ok(PurgeScope::Lookup {
                account_id: account,
                reference_id: ReferenceId::decode("a%2Fb").expect("id"),
            })
        );
        // Form encoding: `+` is a space, `%2B` a plus, `%2F` a slash.
        assert_eq!(
            purge_scope(&format!("account_id={ACCOUNT}&reference_id=team+a%2Fokta")),
            Ok(PurgeScope::Lookup {
                account_id: account,
                reference_id: ReferenceId::from_decoded("team a/okta").expect("id"),
            })
        );
        assert_eq!(
            purge_scope(&format!("account_id={ACCOUNT}&reference_id=a%2Bb")),
            Ok(PurgeScope::Lookup {
                account_id: account,
                reference_id: ReferenceId::from_decoded("a+b").expect("id"),
            })
        );
        for bad in [
            "",
            "all=false",
            "all=true&account_id=023e105f4ecef8ad9ca31a8372d0c353",
            "reference_id=x",
            "account_id=nope",
            "account_id=023e105f4ecef8ad9ca31a8372d0c353&reference_id=%zz",
            "account_id=023e105f4ecef8ad9ca31a8372d0c353&account_id=023e105f4ecef8ad9ca31a8372d0c353",
            "colour=blue",
        ] {
            assert!(purge_scope(bad).is_err(), "{bad}");
        }
    }

    /// The scheme is case-insensitive; the token is exact and must follow a space.
    #[test]
    fn bearer_credentials_take_any_case_of_the_scheme() {
        for (value, token) in [
            (&b"Bearer abc"[..], Some(&b"abc"[..])),
            (b"bearer abc", Some(b"abc")),
            (b"BEARER  abc", Some(b"abc")),
            (b"BeArEr abc def", Some(b"abc def")),
            (b"Bearerabc", None),
            (b"Bearer", None),
            (b"Bearer   ", None),
            (b"Basic abc", None),
            (b"", None),
        ] {
            assert_eq!(
                bearer_credentials(value),
                token,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn readiness_moves_from_starting_to_ready_to_draining() {
        let readiness = Readiness::default();
        assert_eq!(readiness.as_str(), "starting");
        readiness.set_ready();
        assert_eq!(readiness.as_str(), "ready");
        readiness.set_draining();
        assert_eq!(readiness.as_str(), "draining");
    }
}
