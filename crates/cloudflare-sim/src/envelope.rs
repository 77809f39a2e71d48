//! Every answer the simulator writes: Cloudflare's success and failure envelopes, its edge HTML
//! error pages, the injected garbage body, and the headers every answer carries (`cf-ray`,
//! `server`, `content-type`). The catalogue of codes and messages lives here and nowhere else.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER, SERVER};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use super::rate_limit::ceil_seconds;
use super::routes::RouteError;
use super::{Integration, BODY_LIMIT_BYTES};
use crate::server::Body;

/// The numeric codes the simulator answers with. Cloudflare publishes no catalogue: the codes
/// marked "observed" come from public reports (see the facts file); the others are this
/// simulator's choices.
pub mod codes {
    /// Integration not found by reference id or id (choice; Cloudflare's code is unknown).
    pub const NOT_FOUND: u32 = 1000;
    /// Bad create or update body, or a body over the limit (choice).
    pub const INVALID_BODY: u32 = 1001;
    /// The reference id is already used in the account (choice).
    pub const REFERENCE_CONFLICT: u32 = 1002;
    /// "Invalid request headers", with an `error_chain` naming the header (observed).
    pub const INVALID_REQUEST_HEADERS: u32 = 6003;
    /// Chain code: "Invalid format for X-Auth-Email header" (inferred from 6103).
    pub const INVALID_AUTH_EMAIL_FORMAT: u32 = 6102;
    /// Chain code: "Invalid format for X-Auth-Key header" (observed).
    pub const INVALID_AUTH_KEY_FORMAT: u32 = 6103;
    /// Chain code: "Invalid format for Authorization header" (observed).
    pub const INVALID_AUTHORIZATION_FORMAT: u32 = 6111;
    /// "No route for that URI" (observed, HTTP 400).
    pub const NO_ROUTE: u32 = 7000;
    /// "Could not route to ..., perhaps your object identifier is invalid?" (observed, HTTP 400).
    pub const INVALID_IDENTIFIER: u32 = 7003;
    /// "Missing X-Auth-Key, X-Auth-Email or Authorization headers" (observed, HTTP 400).
    pub const MISSING_CREDENTIALS: u32 = 9106;
    /// "Unauthorized to access requested resource" (observed, HTTP 403).
    pub const UNAUTHORIZED_RESOURCE: u32 = 9109;
    /// "Please wait and consider throttling your request speed" (observed, HTTP 429).
    pub const RATE_LIMITED: u32 = 971;
    /// "Authentication error" (observed, HTTP 403).
    pub const AUTHENTICATION_ERROR: u32 = 10000;
    /// Injected 5xx other than 502/503/504 (choice).
    pub const INTERNAL_ERROR: u32 = 10001;
    /// "Method not allowed" (choice).
    pub const METHOD_NOT_ALLOWED: u32 = 10405;
}

pub(crate) const CF_RAY: HeaderName = HeaderName::from_static("cf-ray");
const APPLICATION_JSON: &str = "application/json";
const TEXT_HTML: &str = "text/html; charset=UTF-8";

/// One entry of `errors` (or of an `error_chain`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ApiError {
    code: u32,
    message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    error_chain: Vec<ApiError>,
}

impl ApiError {
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            error_chain: Vec::new(),
        }
    }

    fn chained(mut self, cause: ApiError) -> Self {
        self.error_chain.push(cause);
        self
    }
}

#[derive(Serialize)]
struct SuccessEnvelope<'a, T: Serialize> {
    errors: &'a [ApiError],
    messages: &'a [ApiError],
    success: bool,
    result: T,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_info: Option<ResultInfo>,
}

#[derive(Serialize)]
struct ResultInfo {
    page: u64,
    per_page: u64,
    count: u64,
    total_count: u64,
}

#[derive(Serialize)]
struct FailureEnvelope<'a> {
    success: bool,
    errors: &'a [ApiError],
    messages: &'a [ApiError],
    result: Option<()>,
}

/// A response with the headers every Cloudflare answer has.
fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(SERVER, HeaderValue::from_static("cloudflare"));
    headers.insert(CF_RAY, cf_ray());
    response
}

/// 16 random hex digits and a colo, like `8f3a0c1d2e4b5a69-SJC`.
fn cf_ray() -> HeaderValue {
    let ray = format!("{:016x}-SJC", rand::random::<u64>());
    HeaderValue::try_from(ray).unwrap_or_else(|_| HeaderValue::from_static("0000000000000000-SJC"))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(status, APPLICATION_JSON, Bytes::from(body)),
        // Serialising these plain structs cannot fail; answer like an internal error if it does,
        // with a fixed body so that this path cannot recurse.
        Err(_) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            APPLICATION_JSON,
            Bytes::from_static(
                br#"{"success":false,"errors":[{"code":10001,"message":"Internal Server Error"}],"messages":[],"result":null}"#,
            ),
        ),
    }
}

/// `{"errors":[],"messages":[],"success":true,"result":...}`.
pub(crate) fn success<T: Serialize>(result: T) -> Response<Body> {
    json(
        StatusCode::OK,
        &SuccessEnvelope {
            errors: &[],
            messages: &[],
            success: true,
            result,
            result_info: None,
        },
    )
}

/// The list answer: every integration in one page.
pub(crate) fn success_list(integrations: &[Integration]) -> Response<Body> {
    let count = integrations.len() as u64;
    json(
        StatusCode::OK,
        &SuccessEnvelope {
            errors: &[],
            messages: &[],
            success: true,
            result: integrations,
            result_info: Some(ResultInfo {
                page: 1,
                per_page: count,
                count,
                total_count: count,
            }),
        },
    )
}

/// `{"success":false,"errors":[...],"messages":[],"result":null}`.
pub(crate) fn failure(status: StatusCode, errors: &[ApiError]) -> Response<Body> {
    json(
        status,
        &FailureEnvelope {
            success: false,
            errors,
            messages: &[],
            result: None,
        },
    )
}

fn single_failure(status: StatusCode, code: u32, message: impl Into<String>) -> Response<Body> {
    failure(status, &[ApiError::new(code, message)])
}

pub(crate) fn route_error(error: &RouteError, path: &str) -> Response<Body> {
    match error {
        RouteError::NoRoute => no_route(),
        RouteError::MethodNotAllowed { allow } => {
            let mut response = single_failure(
                StatusCode::METHOD_NOT_ALLOWED,
                codes::METHOD_NOT_ALLOWED,
                "Method not allowed",
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
            response
        }
        RouteError::InvalidIdentifier => failure(
            StatusCode::BAD_REQUEST,
            &[
                ApiError::new(
                    codes::INVALID_IDENTIFIER,
                    format!(
                        "Could not route to {path}, perhaps your object identifier is invalid?"
                    ),
                ),
                ApiError::new(codes::NO_ROUTE, "No route for that URI"),
            ],
        ),
    }
}

pub(crate) fn no_route() -> Response<Body> {
    single_failure(
        StatusCode::BAD_REQUEST,
        codes::NO_ROUTE,
        "No route for that URI",
    )
}

pub(crate) fn missing_credentials() -> Response<Body> {
    single_failure(
        StatusCode::BAD_REQUEST,
        codes::MISSING_CREDENTIALS,
        "Missing X-Auth-Key, X-Auth-Email or Authorization headers",
    )
}

/// 6003 with the malformed header named in `error_chain`.
pub(crate) fn invalid_header(header: super::auth::MalformedHeader) -> Response<Body> {
    use super::auth::MalformedHeader;
    let cause = match header {
        MalformedHeader::Authorization => ApiError::new(
            codes::INVALID_AUTHORIZATION_FORMAT,
            "Invalid format for Authorization header",
        ),
        MalformedHeader::AuthEmail => ApiError::new(
            codes::INVALID_AUTH_EMAIL_FORMAT,
            "Invalid format for X-Auth-Email header",
        ),
        MalformedHeader::AuthKey => ApiError::new(
            codes::INVALID_AUTH_KEY_FORMAT,
            "Invalid format for X-Auth-Key header",
        ),
    };
    failure(
        StatusCode::BAD_REQUEST,
        &[ApiError::new(codes::INVALID_REQUEST_HEADERS, "Invalid request headers").chained(cause)],
    )
}

pub(crate) fn authentication_error(status: StatusCode) -> Response<Body> {
    single_failure(status, codes::AUTHENTICATION_ERROR, "Authentication error")
}

pub(crate) fn unauthorized_account() -> Response<Body> {
    single_failure(
        StatusCode::FORBIDDEN,
        codes::UNAUTHORIZED_RESOURCE,
        "Unauthorized to access requested resource",
    )
}

/// The 429 body; the caller adds the rate-limit headers.
pub(crate) fn rate_limited() -> Response<Body> {
    single_failure(
        StatusCode::TOO_MANY_REQUESTS,
        codes::RATE_LIMITED,
        "Please wait and consider throttling your request speed",
    )
}

pub(crate) fn not_found() -> Response<Body> {
    single_failure(
        StatusCode::NOT_FOUND,
        codes::NOT_FOUND,
        "Integration not found",
    )
}

pub(crate) fn invalid_body(detail: &str) -> Response<Body> {
    single_failure(
        StatusCode::BAD_REQUEST,
        codes::INVALID_BODY,
        format!("Invalid request body: {detail}"),
    )
}

pub(crate) fn reference_conflict() -> Response<Body> {
    single_failure(
        StatusCode::CONFLICT,
        codes::REFERENCE_CONFLICT,
        "An integration with that reference_id already exists",
    )
}

pub(crate) fn body_too_large() -> Response<Body> {
    single_failure(
        StatusCode::PAYLOAD_TOO_LARGE,
        codes::INVALID_BODY,
        format!("Request body too large: the limit is {BODY_LIMIT_BYTES} bytes"),
    )
}

/// The answer for `Fault::Status`; see its documentation for the mapping.
pub(crate) fn injected_status(status: StatusCode, block: Duration) -> Response<Body> {
    let reason = status.canonical_reason().unwrap_or("Error");
    match status.as_u16() {
        200..=299 => {
            let mut response = success(Option::<()>::None);
            *response.status_mut() = status;
            response
        }
        401 | 403 => authentication_error(status),
        404 => not_found(),
        405 => single_failure(status, codes::METHOD_NOT_ALLOWED, "Method not allowed"),
        429 => {
            let mut response = rate_limited();
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(ceil_seconds(block)));
            response
        }
        502..=504 => edge_error_page(status),
        500..=599 => single_failure(status, codes::INTERNAL_ERROR, reason),
        _ => single_failure(status, codes::INVALID_BODY, reason),
    }
}

/// The nginx-style page Cloudflare's edge serves when the API behind it fails.
pub(crate) fn edge_error_page(status: StatusCode) -> Response<Body> {
    let title = match status.as_u16() {
        502 => "502 Bad Gateway".to_owned(),
        503 => "503 Service Temporarily Unavailable".to_owned(),
        504 => "504 Gateway Time-out".to_owned(),
        other => format!("{other} {}", status.canonical_reason().unwrap_or("Error")),
    };
    let page = format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n\
         <hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
    );
    respond(status, TEXT_HTML, Bytes::from(page))
}

/// A 200 that claims JSON but stops in the middle of the result.
pub(crate) fn garbage_body() -> Response<Body> {
    respond(
        StatusCode::OK,
        APPLICATION_JSON,
        Bytes::from_static(
            br#"{"errors":[],"messages":[],"success":true,"result":{"id":"182bd5e5-6e1a-"#,
        ),
    )
}

/// A 200 whose body is exactly `size` bytes: the empty success envelope padded with trailing
/// spaces (still valid JSON), or cut short when `size` is smaller than the envelope.
pub(crate) fn oversized_body(size: usize) -> Response<Body> {
    const ENVELOPE: &[u8] = br#"{"errors":[],"messages":[],"success":true,"result":null}"#;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(&ENVELOPE[..size.min(ENVELOPE.len())]);
    body.resize(size, b' ');
    respond(StatusCode::OK, APPLICATION_JSON, Bytes::from(body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn body_text(response: Response<Body>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn envelopes_have_cloudflare_field_order() {
        let response = success(serde_json::json!({"a": 1}));
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            body_text(response).await,
            r#"{"errors":[],"messages":[],"success":true,"result":{"a":1}}"#
        );
        assert_eq!(
            body_text(missing_credentials()).await,
            r#"{"success":false,"errors":[{"code":9106,"message":"Missing X-Auth-Key, X-Auth-Email or Authorization headers"}],"messages":[],"result":null}"#
        );
        assert_eq!(
            body_text(success_list(&[])).await,
            r#"{"errors":[],"messages":[],"success":true,"result":[],"result_info":{"page":1,"per_page":0,"count":0,"total_count":0}}"#
        );
    }

    #[tokio::test]
    async fn oversized_bodies_have_the_exact_size() {
        for size in [0, 10, 56, 57, 1024 * 1024 + 1] {
            let body = body_text(oversized_body(size)).await;
            assert_eq!(body.len(), size);
            if size >= 56 {
                serde_json::from_str::<serde_json::Value>(&body).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn every_answer_has_a_cf_ray() {
        for response in [
            no_route(),
            edge_error_page(StatusCode::BAD_GATEWAY),
            garbage_body(),
        ] {
            let ray = response.headers()[CF_RAY].to_str().unwrap().to_owned();
            let (hex, colo) = ray.split_once('-').unwrap();
            assert_eq!(colo, "SJC");
            assert_eq!(hex.len(), 16);
            assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{ray}");
        }
    }

    #[tokio::test]
    async fn injected_statuses_map_to_codes() {
        async fn check(status: u16, expected_code: u32) {
            let status = StatusCode::from_u16(status).unwrap();
            let response = injected_status(status, Duration::from_secs(300));
            assert_eq!(response.status(), status);
            let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
            assert_eq!(body["success"], false, "{status}");
            assert_eq!(body["errors"][0]["code"], expected_code, "{status}");
        }
        check(400, codes::INVALID_BODY).await;
        check(401, codes::AUTHENTICATION_ERROR).await;
        check(403, codes::AUTHENTICATION_ERROR).await;
        check(404, codes::NOT_FOUND).await;
        check(429, codes::RATE_LIMITED).await;
        check(500, codes::INTERNAL_ERROR).await;
        check(501, codes::INTERNAL_ERROR).await;

        let edge = injected_status(StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO);
        assert_eq!(edge.headers()[CONTENT_TYPE], TEXT_HTML);
        assert!(body_text(edge)
            .await
            .contains("<center>cloudflare</center>"));

        let empty = injected_status(StatusCode::OK, Duration::ZERO);
        assert_eq!(
            body_text(empty).await,
            r#"{"errors":[],"messages":[],"success":true,"result":null}"#
        );
    }
}
