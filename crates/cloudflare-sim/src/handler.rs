//! The simulator's request pipeline: observe, wait at a gate, delay, inject the planned fault,
//! then read the body, route, authenticate, rate-limit, authorize and serve. It answers every
//! input with a response or a deliberate abort; a panic is caught, kept for `shutdown` to
//! re-raise, and aborts only its own connection.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::time::Instant;

use super::auth::{self, Presented};
use super::envelope;
use super::rate_limit::{self, Decision};
use super::routes::{self, Endpoint};
use super::state::Shared;
use super::store::{self, UpdateError, INTEGRATION_TYPE_OKTA};
use super::{Fault, RecordedRequest, BODY_LIMIT_BYTES};
use crate::server::Body;

/// Why the simulator dropped a connection instead of answering. Returning it from the handler
/// makes hyper close the connection without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SimulatedAbort {
    /// `Fault::Reset`.
    InjectedReset,
    /// The simulator is shutting down while the request waited (a hang or a delay).
    ShuttingDown,
    /// The client went away while sending its body.
    BodyInterrupted,
    /// The handler panicked; the panic is re-raised by `SimulatedCloudflare::shutdown`.
    HandlerPanicked,
}

impl fmt::Display for SimulatedAbort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            SimulatedAbort::InjectedReset => "simulated connection reset",
            SimulatedAbort::ShuttingDown => "simulator shutting down",
            SimulatedAbort::BodyInterrupted => "request body interrupted",
            SimulatedAbort::HandlerPanicked => "simulator handler panicked",
        };
        f.write_str(text)
    }
}

impl std::error::Error for SimulatedAbort {}

/// Runs [`handle`] in its own task so that a panic is caught and kept instead of silently killing
/// one connection.
pub(crate) async fn handle_catching_panics(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, SimulatedAbort> {
    let owner = owner_of(&shared, request.headers());
    let result = match tokio::spawn(handle(Arc::clone(&shared), request)).await {
        Ok(result) => result,
        Err(error) => {
            if error.is_panic() {
                shared.keep_handler_panic(error.into_panic());
            }
            Err(SimulatedAbort::HandlerPanicked)
        }
    };
    // Noted before the answer leaves, so that whoever receives it can already look its ray up.
    if let (Ok(response), Some(owner)) = (&result, owner) {
        if let Some(ray) = response
            .headers()
            .get(envelope::CF_RAY)
            .and_then(|value| value.to_str().ok())
        {
            shared.note_ray(ray, &owner);
        }
    }
    result
}

/// The user of the known credential a request carries, as [`handle`] will find it. Looked up here
/// as well so that every answer's ray can be attributed without threading the user through each
/// of `handle`'s early returns.
fn owner_of(shared: &Shared, headers: &HeaderMap) -> Option<String> {
    match auth::extract(headers) {
        Presented::Credential(credential) => shared
            .principal(&credential)
            .map(|principal| principal.user.clone()),
        _ => None,
    }
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, SimulatedAbort> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let routed = routes::route(&parts.method, &path);
    let presented = auth::extract(&parts.headers);
    let principal = match &presented {
        Presented::Credential(credential) => shared.principal(credential),
        _ => None,
    };

    // The fault is chosen on arrival, before the request is counted: once a test sees the count,
    // the request's fault is settled, and among held requests the first to arrive gets it.
    let plan = shared.take_plan();
    shared.observe(record(
        &parts,
        routed.route,
        principal.as_ref().map(|p| p.user.clone()),
    ));
    if !shared.pass_gate().await {
        return Err(SimulatedAbort::ShuttingDown);
    }
    let extra_latency = match &plan.fault {
        Some(Fault::Latency(extra)) => *extra,
        _ => Duration::ZERO,
    };
    let delay = plan.latency.saturating_add(extra_latency);
    if !delay.is_zero() && !shared.pause(delay).await {
        return Err(SimulatedAbort::ShuttingDown);
    }
    match plan.fault {
        None | Some(Fault::Latency(_)) => {}
        Some(Fault::Hang) => {
            shared.stopped().await;
            return Err(SimulatedAbort::ShuttingDown);
        }
        Some(Fault::Reset) => return Err(SimulatedAbort::InjectedReset),
        Some(Fault::GarbageBody) => return Ok(envelope::garbage_body()),
        Some(Fault::OversizedBody(size)) => return Ok(envelope::oversized_body(size)),
        Some(Fault::Status(status)) => {
            return Ok(envelope::injected_status(status, plan.policy.block))
        }
    }

    let body = match read_body(&shared, &parts.headers, body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return Ok(envelope::body_too_large()),
        Err(BodyError::Interrupted) => return Err(SimulatedAbort::BodyInterrupted),
    };

    let (account_id, endpoint) = match routed.outcome {
        Ok(found) => found,
        Err(error) => return Ok(envelope::route_error(&error, &path)),
    };

    let principal = match (presented, principal) {
        (Presented::Missing, _) => return Ok(envelope::missing_credentials()),
        (Presented::Malformed(header), _) => return Ok(envelope::invalid_header(header)),
        (Presented::Unrecognised | Presented::Credential(_), None) => {
            return Ok(envelope::authentication_error(StatusCode::FORBIDDEN))
        }
        (Presented::Unrecognised | Presented::Credential(_), Some(principal)) => principal,
    };

    let (policy, decision) = shared.admit(&principal.user, Instant::now());
    let mut response = match decision {
        Decision::Blocked { .. } => envelope::rate_limited(),
        Decision::Allowed { .. } if !principal.accounts.contains(&account_id) => {
            envelope::unauthorized_account()
        }
        Decision::Allowed { .. } => serve(&shared, &account_id, endpoint, &body),
    };
    rate_limit::apply_headers(response.headers_mut(), &policy, &decision);
    Ok(response)
}

fn record(parts: &Parts, route: super::SimRoute, user: Option<String>) -> RecordedRequest {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    RecordedRequest {
        method: parts.method.clone(),
        path_and_query,
        headers: parts.headers.clone(),
        user,
        route,
    }
}

enum BodyError {
    TooLarge,
    Interrupted,
}

/// Reads at most [`BODY_LIMIT_BYTES`]; a declared or actual larger body is refused without
/// reading the rest.
async fn read_body(
    shared: &Shared,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > BODY_LIMIT_BYTES as u64) {
        return Err(BodyError::TooLarge);
    }
    tokio::select! {
        collected = Limited::new(body, BODY_LIMIT_BYTES).collect() => match collected {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
                Err(BodyError::TooLarge)
            }
            Err(_) => Err(BodyError::Interrupted),
        },
        () = shared.stopped() => Err(BodyError::Interrupted),
    }
}

/// The create body of Cloudflare's API. Unknown fields are ignored, as Cloudflare does.
#[derive(Deserialize)]
struct CreateBody {
    integration_type: String,
    tenant_url: String,
    #[serde(default)]
    reference_id: Option<String>,
}

/// The update body: `active` and `tenant_url` are overwritten, `reference_id` only when given.
#[derive(Deserialize)]
struct UpdateBody {
    active: bool,
    tenant_url: String,
    #[serde(default)]
    reference_id: Option<String>,
}

fn serve(shared: &Shared, account_id: &str, endpoint: Endpoint, body: &[u8]) -> Response<Body> {
    match endpoint {
        Endpoint::ReferenceGet { reference_id } => {
            match shared.integration_by_reference(account_id, &reference_id) {
                Some(integration) => envelope::success(&integration),
                None => envelope::not_found(),
            }
        }
        Endpoint::IntegrationGet { integration_id } => {
            match shared.integration_by_id(account_id, &integration_id) {
                Some(integration) => envelope::success(&integration),
                None => envelope::not_found(),
            }
        }
        Endpoint::IntegrationList => envelope::success_list(&shared.integrations(account_id)),
        Endpoint::IntegrationCreate => create(shared, account_id, body),
        Endpoint::IntegrationUpdate { integration_id } => {
            update(shared, account_id, &integration_id, body)
        }
        Endpoint::IntegrationDelete { integration_id } => {
            match shared.delete_integration(account_id, &integration_id) {
                Some(_) => envelope::success(Option::<()>::None),
                None => envelope::not_found(),
            }
        }
    }
}

fn create(shared: &Shared, account_id: &str, body: &[u8]) -> Response<Body> {
    let request: CreateBody = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => return envelope::invalid_body(&error.to_string()),
    };
    if request.integration_type != INTEGRATION_TYPE_OKTA {
        return envelope::invalid_body("integration_type must be \"Okta\"");
    }
    if let Err(detail) = check_fields(&request.tenant_url, request.reference_id.as_deref()) {
        return envelope::invalid_body(detail);
    }
    let integration = store::new_integration(
        account_id,
        request.reference_id.as_deref(),
        &request.tenant_url,
        SystemTime::now(),
        &mut rand::thread_rng(),
    );
    match shared.insert_integration(integration) {
        Ok(integration) => envelope::success(&integration),
        Err(store::ReferenceTaken) => envelope::reference_conflict(),
    }
}

fn update(shared: &Shared, account_id: &str, integration_id: &str, body: &[u8]) -> Response<Body> {
    let request: UpdateBody = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => return envelope::invalid_body(&error.to_string()),
    };
    if let Err(detail) = check_fields(&request.tenant_url, request.reference_id.as_deref()) {
        return envelope::invalid_body(detail);
    }
    match shared.update_integration(
        account_id,
        integration_id,
        request.active,
        request.tenant_url,
        request.reference_id,
    ) {
        Ok(integration) => envelope::success(&integration),
        Err(UpdateError::NotFound) => envelope::not_found(),
        Err(UpdateError::ReferenceTaken) => envelope::reference_conflict(),
    }
}

/// `tenant_url` must be an absolute http(s) URL (the schema says `uri`); a given `reference_id`
/// must not be empty.
fn check_fields(tenant_url: &str, reference_id: Option<&str>) -> Result<(), &'static str> {
    let is_http_url = tenant_url
        .parse::<http::Uri>()
        .ok()
        .filter(|uri| matches!(uri.scheme_str(), Some("https" | "http")))
        .is_some_and(|uri| uri.host().is_some_and(|host| !host.is_empty()));
    if !is_http_url {
        return Err("tenant_url must be an absolute http(s) URL");
    }
    if reference_id.is_some_and(str::is_empty) {
        return Err("reference_id must not be empty");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_tenant_url_and_reference_id() {
        fn check(tenant_url: &str, reference_id: Option<&str>, ok: bool) {
            assert_eq!(
                check_fields(tenant_url, reference_id).is_ok(),
                ok,
                "{tenant_url} {reference_id:?}"
            );
        }
        check("https://tenant.okta.com", None, true);
        check("http://tenant.okta.com:8443/path", Some("r"), true);
        check("tenant.okta.com", None, false);
        check("ftp://tenant.okta.com", None, false);
        check("", None, false);
        check("https://tenant.okta.com", Some(""), false);
    }
}
