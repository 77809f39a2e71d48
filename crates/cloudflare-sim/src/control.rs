//! The simulator's control API: a small HTTP listener on its own loopback port through which
//! another process (the Node.js compatibility suite in `compat/`, a person with `curl`) injects
//! faults, changes the latency and the rate limit, reads the counters and the recorded requests,
//! and registers tokens and integrations. It only calls [`SimHandle`]'s methods. It is kept apart
//! from the simulated API (no route under `/client/v4`) so that the Cloudflare surface stays
//! faithful, and it must never be reachable from the proxy's request path.
//!
//! Plain JSON in and out, without Cloudflare's envelope. Every body is validated (unknown fields,
//! wrong types and out-of-range values are a 400 `{"error": "..."}`), and every request gets an
//! answer: nothing here panics on input.
//!
//! | Method | Path | Body or query | Effect |
//! |---|---|---|---|
//! | GET | `/` | | this list, as JSON |
//! | POST | `/faults` | `{"fault":"status","status":500,"count":1}`; `{"fault":"reset"\|"hang"\|"garbage","count":N}`; `{"fault":"latency","ms":M,"count":N}`; `{"fault":"oversized","bytes":B,"count":N}` | the next `count` requests (1 when absent) get the fault, after faults queued before ([`SimHandle::fail_next`]) |
//! | POST | `/faults` | the same with `"standing":true` instead of `count` | every request gets it until cleared ([`SimHandle::set_fault`]) |
//! | POST | `/faults` | `{"clear":true}` | drops every queued and standing fault |
//! | POST | `/latency` | `{"ms":M}` | latency added to every request |
//! | POST | `/rate_limit` | `{"quota":Q,"window_secs":W,"block_secs":B}` and/or `"reset":true` | the per-user policy; `reset` forgets every window and block |
//! | POST | `/usage` | `{"user":U,"used":N}` | the user's count so far in the current window, as if their other tools had spent it ([`SimHandle::set_usage`]); a count above the quota counts as the quota |
//! | GET | `/counters` | `?user=U` (repeatable) | `{"total":N,"routes":{...},"users":{...}}` |
//! | POST | `/counters/reset` | | zeroes the counters, empties the recorded requests |
//! | GET | `/requests` | `?limit=N` (default 100) | the last recorded requests: method, path, user, route (never headers: they hold credentials) |
//! | POST | `/tokens` | `{"token":T,"user":U,"accounts":[A,...]}` | registers a bearer token |
//! | POST | `/integrations` | `{"account":A,"reference_id":R,"tenant_url":U}` | stores an integration (replacing one with that reference id) and returns it |
//!
//! `users` in `/counters` names every user registered through this API, every user of a
//! recorded request, and every `user` asked for in the query.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Fault, RateLimitPolicy, SimHandle, SimRoute};
use crate::server::{self, Body};

/// The largest control request body read.
pub const CONTROL_BODY_LIMIT_BYTES: usize = 64 * 1024;

/// Most requests one fault may be queued for.
const MAX_FAULT_COUNT: u32 = 1_000_000;
/// Longest latency, added or injected, in milliseconds (10 minutes).
const MAX_LATENCY_MS: u64 = 600_000;
/// Largest injected oversized body (16 MiB).
const MAX_OVERSIZED_BYTES: usize = 16 * 1024 * 1024;
/// Longest rate-limit window or block (about ten years).
const MAX_RATE_LIMIT_SECS: u64 = 315_360_000;
/// Most recorded requests one `/requests` answer lists.
const MAX_REQUESTS_LISTED: usize = super::RECORDED_CAPACITY;
/// How long shutdown lets control requests finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A running control listener. Dropping it stops the listener in the background; call
/// [`SimControl::shutdown`] to wait for that.
pub struct SimControl {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SimControl {
    /// Binds `127.0.0.1` on an ephemeral port and serves the control API of `sim`.
    pub async fn start(sim: SimHandle) -> std::io::Result<SimControl> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        Ok(SimControl::start_on(listener, sim))
    }

    /// Serves the control API of `sim` on a listener the caller bound.
    pub fn start_on(listener: TcpListener, sim: SimHandle) -> SimControl {
        // A bound listener always has a local address; the fallback only keeps this infallible.
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let control = Arc::new(Control {
            sim,
            users: Mutex::new(BTreeSet::new()),
        });
        let handler = move |request| handle(Arc::clone(&control), request);
        let stop = watch::Sender::new(false);
        let mut stopped = stop.subscribe();
        let shutdown = async move {
            // An error means the sender is gone, which also means the control is gone.
            let _ = stopped.wait_for(|stopped| *stopped).await;
        };
        let task = tokio::spawn(server::serve(listener, handler, shutdown, SHUTDOWN_GRACE));
        SimControl {
            addr,
            stop,
            task: Some(task),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the base of every control route.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and waits (briefly) for control requests in flight.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            if let Err(error) = task.await {
                if error.is_panic() {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
        }
    }
}

impl Drop for SimControl {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl fmt::Debug for SimControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimControl")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

struct Control {
    sim: SimHandle,
    /// Users registered through `/tokens`, listed by `/counters`.
    users: Mutex<BTreeSet<String>>,
}

impl Control {
    fn users(&self) -> BTreeSet<String> {
        self.users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn remember_user(&self, user: &str) {
        self.users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(user.to_owned());
    }
}

/// A refused control request: the status and what was wrong.
struct Refusal {
    status: StatusCode,
    message: String,
    allow: Option<&'static str>,
}

impl Refusal {
    fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            allow: None,
        }
    }
}

type Answer = Result<Value, Refusal>;

async fn handle(
    control: Arc<Control>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let Some((route, method)) = route_of(&path) else {
        return Ok(respond(
            StatusCode::NOT_FOUND,
            &json!({"error": "no such control route; GET / lists them"}),
        ));
    };
    if parts.method != method {
        return Ok(method_not_allowed(if method == Method::GET {
            "GET"
        } else {
            "POST"
        }));
    }
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(refusal) => return Ok(refuse(refusal)),
    };
    let answer = match route {
        Route::Index => Ok(index()),
        Route::Faults => parse(&body).and_then(|request| faults(&control.sim, request)),
        Route::Latency => parse(&body).and_then(|request| latency(&control.sim, request)),
        Route::RateLimit => parse(&body).and_then(|request| rate_limit(&control.sim, request)),
        Route::Usage => parse(&body).and_then(|request| usage(&control, request)),
        Route::Counters => counters(&control, &query),
        Route::CountersReset => {
            control.sim.reset_counters();
            Ok(json!({"reset": true}))
        }
        Route::Requests => requests(&control.sim, &query),
        Route::Tokens => parse(&body).and_then(|request| tokens(&control, request)),
        Route::Integrations => parse(&body).and_then(|request| integrations(&control.sim, request)),
    };
    Ok(match answer {
        Ok(value) => respond(StatusCode::OK, &value),
        Err(refusal) => refuse(refusal),
    })
}

/// The control route at `path`, and the one method it answers.
fn route_of(path: &str) -> Option<(Route, Method)> {
    Some(match path {
        "/" => (Route::Index, Method::GET),
        "/faults" => (Route::Faults, Method::POST),
        "/latency" => (Route::Latency, Method::POST),
        "/rate_limit" => (Route::RateLimit, Method::POST),
        "/usage" => (Route::Usage, Method::POST),
        "/counters" => (Route::Counters, Method::GET),
        "/counters/reset" => (Route::CountersReset, Method::POST),
        "/requests" => (Route::Requests, Method::GET),
        "/tokens" => (Route::Tokens, Method::POST),
        "/integrations" => (Route::Integrations, Method::POST),
        _ => return None,
    })
}

#[derive(Clone, Copy)]
enum Route {
    Index,
    Faults,
    Latency,
    RateLimit,
    Usage,
    Counters,
    CountersReset,
    Requests,
    Tokens,
    Integrations,
}

fn respond(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn refuse(refusal: Refusal) -> Response<Body> {
    let mut response = respond(refusal.status, &json!({"error": refusal.message}));
    if let Some(allow) = refusal.allow {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
    }
    response
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    refuse(Refusal {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("method not allowed; use {allow}"),
        allow: Some(allow),
    })
}

async fn read_body(body: Incoming) -> Result<Bytes, Refusal> {
    match Limited::new(body, CONTROL_BODY_LIMIT_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("body over {CONTROL_BODY_LIMIT_BYTES} bytes"),
            allow: None,
        }),
        Err(_) => Err(Refusal::bad_request("the request body could not be read")),
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|error| Refusal::bad_request(format!("invalid JSON body: {error}")))
}

fn index() -> Value {
    json!({
        "routes": [
            "POST /faults",
            "POST /latency",
            "POST /rate_limit",
            "POST /usage",
            "GET /counters",
            "POST /counters/reset",
            "GET /requests",
            "POST /tokens",
            "POST /integrations",
        ]
    })
}

// ---- faults and latency ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    fault: Option<String>,
    status: Option<u16>,
    ms: Option<u64>,
    bytes: Option<usize>,
    count: Option<u32>,
    standing: Option<bool>,
    clear: Option<bool>,
}

fn faults(sim: &SimHandle, request: FaultRequest) -> Answer {
    if let Some(clear) = request.clear {
        let alone = request.fault.is_none()
            && request.status.is_none()
            && request.ms.is_none()
            && request.bytes.is_none()
            && request.count.is_none()
            && request.standing.is_none();
        if !clear || !alone {
            return Err(Refusal::bad_request(
                "\"clear\" must be true and come alone",
            ));
        }
        sim.clear_faults();
        return Ok(json!({"cleared": true}));
    }
    let (fault, echo) = to_fault(&request)?;
    let standing = request.standing.unwrap_or(false);
    match (standing, request.count) {
        (true, Some(_)) => Err(Refusal::bad_request(
            "give either \"count\" or \"standing\", not both",
        )),
        (true, None) => {
            sim.set_fault(Some(fault));
            Ok(json!({"standing": echo}))
        }
        (false, count) => {
            let count = count.unwrap_or(1);
            if !(1..=MAX_FAULT_COUNT).contains(&count) {
                return Err(Refusal::bad_request(format!(
                    "\"count\" must be between 1 and {MAX_FAULT_COUNT}"
                )));
            }
            sim.fail_next(count, fault);
            Ok(json!({"queued": echo, "count": count}))
        }
    }
}

/// The fault a request names, and its normalised description for the answer. Each kind takes
/// exactly the parameter it needs.
fn to_fault(request: &FaultRequest) -> Result<(Fault, Value), Refusal> {
    let Some(kind) = request.fault.as_deref() else {
        return Err(Refusal::bad_request(
            "\"fault\" is required (status, reset, hang, garbage, latency, oversized), or \"clear\": true",
        ));
    };
    let unexpected = |name: &str, given: bool| {
        if given {
            Err(Refusal::bad_request(format!(
                "\"{name}\" does not apply to the {kind} fault"
            )))
        } else {
            Ok(())
        }
    };
    let (status, ms, bytes) = (request.status, request.ms, request.bytes);
    match kind {
        "status" => {
            unexpected("ms", ms.is_some())?;
            unexpected("bytes", bytes.is_some())?;
            let Some(code) = status else {
                return Err(Refusal::bad_request(
                    "the status fault needs \"status\" (200-599)",
                ));
            };
            let status = StatusCode::from_u16(code)
                .ok()
                .filter(|status| (200..=599).contains(&status.as_u16()))
                .ok_or_else(|| Refusal::bad_request("\"status\" must be between 200 and 599"))?;
            Ok((
                Fault::Status(status),
                json!({"fault": "status", "status": code}),
            ))
        }
        "reset" | "hang" | "garbage" => {
            unexpected("status", status.is_some())?;
            unexpected("ms", ms.is_some())?;
            unexpected("bytes", bytes.is_some())?;
            let fault = match kind {
                "reset" => Fault::Reset,
                "hang" => Fault::Hang,
                _ => Fault::GarbageBody,
            };
            Ok((fault, json!({"fault": kind})))
        }
        "latency" => {
            unexpected("status", status.is_some())?;
            unexpected("bytes", bytes.is_some())?;
            let ms = ms.filter(|ms| *ms <= MAX_LATENCY_MS).ok_or_else(|| {
                Refusal::bad_request(format!(
                    "the latency fault needs \"ms\" (0-{MAX_LATENCY_MS})"
                ))
            })?;
            Ok((
                Fault::Latency(Duration::from_millis(ms)),
                json!({"fault": "latency", "ms": ms}),
            ))
        }
        "oversized" => {
            unexpected("status", status.is_some())?;
            unexpected("ms", ms.is_some())?;
            let bytes = bytes
                .filter(|bytes| *bytes <= MAX_OVERSIZED_BYTES)
                .ok_or_else(|| {
                    Refusal::bad_request(format!(
                        "the oversized fault needs \"bytes\" (0-{MAX_OVERSIZED_BYTES})"
                    ))
                })?;
            Ok((
                Fault::OversizedBody(bytes),
                json!({"fault": "oversized", "bytes": bytes}),
            ))
        }
        other => Err(Refusal::bad_request(format!(
            "unknown fault {other:?}; use status, reset, hang, garbage, latency or oversized"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyRequest {
    ms: u64,
}

fn latency(sim: &SimHandle, request: LatencyRequest) -> Answer {
    if request.ms > MAX_LATENCY_MS {
        return Err(Refusal::bad_request(format!(
            "\"ms\" must be at most {MAX_LATENCY_MS}"
        )));
    }
    sim.set_latency(Duration::from_millis(request.ms));
    Ok(json!({"latency_ms": request.ms}))
}

// ---- rate limit ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitRequest {
    quota: Option<u32>,
    window_secs: Option<u64>,
    block_secs: Option<u64>,
    reset: Option<bool>,
}

fn rate_limit(sim: &SimHandle, request: RateLimitRequest) -> Answer {
    let policy = match (request.quota, request.window_secs, request.block_secs) {
        (None, None, None) => None,
        (Some(quota), Some(window), Some(block)) => {
            if !(1..=MAX_RATE_LIMIT_SECS).contains(&window) {
                return Err(Refusal::bad_request(format!(
                    "\"window_secs\" must be between 1 and {MAX_RATE_LIMIT_SECS}"
                )));
            }
            if block > MAX_RATE_LIMIT_SECS {
                return Err(Refusal::bad_request(format!(
                    "\"block_secs\" must be at most {MAX_RATE_LIMIT_SECS}"
                )));
            }
            Some(RateLimitPolicy {
                quota,
                window: Duration::from_secs(window),
                block: Duration::from_secs(block),
            })
        }
        _ => {
            return Err(Refusal::bad_request(
                "a policy needs \"quota\", \"window_secs\" and \"block_secs\" together",
            ))
        }
    };
    let reset = match request.reset {
        None => false,
        Some(true) => true,
        Some(false) => return Err(Refusal::bad_request("\"reset\" can only be true")),
    };
    if policy.is_none() && !reset {
        return Err(Refusal::bad_request(
            "give a policy (\"quota\", \"window_secs\", \"block_secs\"), \"reset\": true, or both",
        ));
    }
    let mut answer = serde_json::Map::new();
    if let Some(policy) = policy {
        sim.set_rate_limit(policy);
        answer.insert(
            "policy".to_owned(),
            json!({
                "quota": policy.quota,
                "window_secs": policy.window.as_secs(),
                "block_secs": policy.block.as_secs(),
            }),
        );
    }
    if reset {
        sim.reset_rate_limits();
        answer.insert("reset".to_owned(), Value::Bool(true));
    }
    Ok(Value::Object(answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageRequest {
    user: String,
    used: u32,
}

fn usage(control: &Control, request: UsageRequest) -> Answer {
    if request.user.is_empty() {
        return Err(Refusal::bad_request("\"user\" must not be empty"));
    }
    control.sim.set_usage(&request.user, request.used);
    control.remember_user(&request.user);
    Ok(json!({"user": request.user, "used": request.used}))
}

// ---- observation ----

/// The decoded `name=value` pairs of a query string (`+` is a space, as in forms).
fn query_pairs(query: &str) -> Result<Vec<(String, String)>, Refusal> {
    let decode = |text: &str| {
        let spaced = text.replace('+', " ");
        percent_decode_str(&spaced)
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| Refusal::bad_request("the query string is not UTF-8"))
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

fn counters(control: &Control, query: &str) -> Answer {
    let mut users = control.users();
    for (name, value) in query_pairs(query)? {
        match name.as_str() {
            "user" if !value.is_empty() => {
                users.insert(value);
            }
            _ => {
                return Err(Refusal::bad_request(
                    "the only query parameter is a non-empty \"user\"",
                ))
            }
        }
    }
    let sim = &control.sim;
    users.extend(
        sim.recorded()
            .into_iter()
            .filter_map(|request| request.user),
    );
    let routes: BTreeMap<&str, u64> = SimRoute::ALL
        .iter()
        .map(|route| (route.as_str(), sim.requests(*route)))
        .collect();
    let by_user: BTreeMap<String, u64> = users
        .into_iter()
        .map(|user| {
            let count = sim.requests_by_user(&user);
            (user, count)
        })
        .collect();
    Ok(json!({
        "total": sim.total_requests(),
        "routes": routes,
        "users": by_user,
    }))
}

fn requests(sim: &SimHandle, query: &str) -> Answer {
    let mut limit = 100;
    for (name, value) in query_pairs(query)? {
        match (name.as_str(), value.parse::<usize>()) {
            ("limit", Ok(parsed)) if (1..=MAX_REQUESTS_LISTED).contains(&parsed) => limit = parsed,
            _ => {
                return Err(Refusal::bad_request(format!(
                    "the only query parameter is \"limit\" (1-{MAX_REQUESTS_LISTED})"
                )))
            }
        }
    }
    let recorded = sim.recorded();
    let skip = recorded.len().saturating_sub(limit);
    let listed: Vec<Value> = recorded
        .into_iter()
        .skip(skip)
        .map(|request| {
            json!({
                "method": request.method.as_str(),
                "path": request.path_and_query,
                "user": request.user,
                "route": request.route.as_str(),
            })
        })
        .collect();
    Ok(json!({"requests": listed}))
}

// ---- seeding ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    token: String,
    user: String,
    accounts: Vec<String>,
}

fn tokens(control: &Control, request: TokenRequest) -> Answer {
    let token = &request.token;
    if token.is_empty() || token.len() > 1024 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal::bad_request(
            "\"token\" must be 1-1024 visible ASCII characters",
        ));
    }
    check_text("user", &request.user, 256)?;
    if request.accounts.len() > 100 {
        return Err(Refusal::bad_request("at most 100 \"accounts\""));
    }
    for account in &request.accounts {
        check_account(account)?;
    }
    let accounts: Vec<&str> = request.accounts.iter().map(String::as_str).collect();
    control.sim.add_token(token, &request.user, &accounts);
    control.remember_user(&request.user);
    Ok(json!({"user": request.user, "accounts": request.accounts}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntegrationRequest {
    account: String,
    reference_id: String,
    tenant_url: String,
}

fn integrations(sim: &SimHandle, request: IntegrationRequest) -> Answer {
    check_account(&request.account)?;
    check_text("reference_id", &request.reference_id, 1024)?;
    let is_http_url = request
        .tenant_url
        .parse::<http::Uri>()
        .ok()
        .filter(|uri| matches!(uri.scheme_str(), Some("https" | "http")))
        .is_some_and(|uri| uri.host().is_some_and(|host| !host.is_empty()));
    if !is_http_url {
        return Err(Refusal::bad_request(
            "\"tenant_url\" must be an absolute http(s) URL",
        ));
    }
    let integration =
        sim.insert_integration(&request.account, &request.reference_id, &request.tenant_url);
    serde_json::to_value(&integration)
        .map_err(|error| Refusal::bad_request(format!("cannot serialise: {error}")))
}

/// An account id as Cloudflare writes it: 32 lowercase hex characters.
fn check_account(account: &str) -> Result<(), Refusal> {
    let valid = account.len() == 32
        && account
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if valid {
        Ok(())
    } else {
        Err(Refusal::bad_request(format!(
            "account {account:?} is not 32 lowercase hex characters"
        )))
    }
}

/// Non-empty, at most `max_bytes`, no control characters.
fn check_text(name: &str, text: &str, max_bytes: usize) -> Result<(), Refusal> {
    if text.is_empty() || text.len() > max_bytes || text.chars().any(char::is_control) {
        return Err(Refusal::bad_request(format!(
            "\"{name}\" must be 1-{max_bytes} bytes without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_decode_percent_and_plus() {
        let pairs = query_pairs("user=a%40b.com&user=c+d&&flag").unwrap_or_default();
        assert_eq!(
            pairs,
            vec![
                ("user".to_owned(), "a@b.com".to_owned()),
                ("user".to_owned(), "c d".to_owned()),
                ("flag".to_owned(), String::new()),
            ]
        );
        assert!(query_pairs("user=%ff").is_err());
    }

    #[test]
    fn accounts_must_be_lowercase_hex() {
        fn check(account: &str, ok: bool) {
            assert_eq!(check_account(account).is_ok(), ok, "{account}");
        }
        check("023e105f4ecef8ad9ca31a8372d0c353", true);
        check("023E105F4ECEF8AD9CA31A8372D0C353", false);
        check("023e105f4ecef8ad9ca31a8372d0c35", false);
        check("023e105f4ecef8ad9ca31a8372d0c35g", false);
        check("", false);
    }
}
