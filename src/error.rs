//! The sidecar's own error answers: the one place that knows Cloudflare's JSON failure envelope,
//! which HTTP status and numeric code each failure gets, and how it becomes a response.
//! Answers relayed from Cloudflare never pass through here: their status and bytes are untouched.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::server::ResponseBody;

/// Every failure the request path can produce by itself. Each variant knows its HTTP status and its
/// Cloudflare-style numeric code. Codes Cloudflare is seen to use (7000, 7003, 9106, 6003, 971) are
/// reused with their meaning; failures that only a proxy can have use the 10500 range, which no public
/// Cloudflare report shows in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The path is not a route this sidecar serves.
    NoRoute,
    /// The path is a served route, the method is not one of `allow`.
    MethodNotAllowed { allow: &'static str },
    /// The account id is not Cloudflare's identifier format. `path` is the request path as received.
    InvalidAccountId { path: String },
    /// The reference id failed decoding or validation; `reason` says which rule.
    InvalidReferenceId { reason: &'static str },
    /// No credential header and no sidecar token to fall back on.
    MissingCredentials,
    /// A credential header was repeated or unusable.
    InvalidCredentialHeaders { header: &'static str },
    /// Cloudflare could not be reached (connection refused or reset, TLS failure, protocol error).
    UpstreamUnreachable,
    /// Cloudflare did not answer within the configured time.
    UpstreamTimeout,
    /// Cloudflare answered with something the sidecar must not relay: a body over the size bound,
    /// or a lookup answer that is not a Cloudflare envelope.
    UpstreamInvalidResponse,
    /// This credential may not call Cloudflare now (its budget is spent, or Cloudflare answered it
    /// 429 and the cool-down runs), and nothing stale can stand in. `reason` is a stable label.
    RateLimited {
        retry_after_secs: u64,
        reason: &'static str,
    },
    /// Cloudflare is considered down (the circuit breaker is open), and nothing stale can stand in.
    UpstreamDown { retry_after_secs: u64 },
    /// The request target is longer than the configured bound.
    UriTooLong,
    /// The request headers are more, or larger, than the configured bounds.
    HeadersTooLarge,
    /// A lookup carried a request body.
    UnexpectedBody,
    /// A write's request body is larger than the bound.
    PayloadTooLarge,
    /// A request body did not arrive whole within the body read timeout.
    BodyTimeout,
    /// An HTTP/1.1 request without exactly one `Host` header (RFC 9112 §3.2).
    InvalidHost,
    /// The account is not on the configured allow-list.
    AccountNotAllowed,
    /// Too many lookups are already waiting on Cloudflare.
    Overloaded,
    /// The admin listener wants its bearer token and did not get it.
    AdminUnauthorized,
    /// An admin request the sidecar cannot act on; `reason` says how to form it.
    BadAdminRequest { reason: &'static str },
    /// `POST /reload` re-read a configuration that is not valid; the running one stays. `reason`
    /// is the configuration error, which names the key and never holds a secret.
    ReloadRejected { reason: String },
    /// A bug in the sidecar. The cause is logged where it happens, never sent to the caller.
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::InvalidAccountId { .. }
            | ApiError::InvalidReferenceId { .. }
            | ApiError::MissingCredentials
            | ApiError::InvalidCredentialHeaders { .. }
            | ApiError::BadAdminRequest { .. }
            | ApiError::InvalidHost
            | ApiError::UnexpectedBody => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::UriTooLong => StatusCode::URI_TOO_LONG,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::AccountNotAllowed => StatusCode::FORBIDDEN,
            ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::UpstreamUnreachable | ApiError::UpstreamInvalidResponse => {
                StatusCode::BAD_GATEWAY
            }
            ApiError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UpstreamDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::ReloadRejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> u32 {
        match self {
            ApiError::NoRoute => 7000,
            ApiError::MethodNotAllowed { .. } => 10405,
            ApiError::InvalidAccountId { .. } | ApiError::InvalidReferenceId { .. } => 7003,
            ApiError::MissingCredentials => 9106,
            ApiError::InvalidCredentialHeaders { .. } | ApiError::InvalidHost => 6003,
            ApiError::BodyTimeout => 10408,
            ApiError::UpstreamUnreachable => 10502,
            ApiError::UpstreamTimeout => 10504,
            ApiError::UpstreamInvalidResponse => 10506,
            ApiError::RateLimited { .. } => 971,
            ApiError::UpstreamDown { .. } => 10503,
            ApiError::UriTooLong => 10414,
            ApiError::PayloadTooLarge => 10413,
            ApiError::HeadersTooLarge => 10431,
            ApiError::UnexpectedBody => 10400,
            ApiError::AccountNotAllowed => 9109,
            ApiError::Overloaded => 10508,
            ApiError::AdminUnauthorized => 10000,
            ApiError::BadAdminRequest { .. } => 1001,
            ApiError::ReloadRejected { .. } => 10422,
            ApiError::Internal => 10500,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::NoRoute => "No route for that URI".to_owned(),
            ApiError::MethodNotAllowed { .. } => "Method not allowed".to_owned(),
            ApiError::InvalidAccountId { path } => {
                format!("Could not route to {path}, perhaps your object identifier is invalid?")
            }
            ApiError::InvalidReferenceId { reason } => format!("Invalid reference_id: {reason}"),
            ApiError::MissingCredentials => {
                "Missing X-Auth-Key, X-Auth-Email or Authorization headers".to_owned()
            }
            ApiError::InvalidCredentialHeaders { header } => {
                format!("Invalid request headers: {header} must appear at most once")
            }
            ApiError::UpstreamUnreachable => {
                "zt-risk-sidecar could not reach the Cloudflare API".to_owned()
            }
            ApiError::UpstreamTimeout => {
                "zt-risk-sidecar timed out waiting for the Cloudflare API".to_owned()
            }
            ApiError::UpstreamInvalidResponse => {
                "zt-risk-sidecar received an unusable answer from the Cloudflare API".to_owned()
            }
            ApiError::RateLimited { .. } => {
                "Please wait and consider throttling your request speed".to_owned()
            }
            ApiError::UpstreamDown { .. } => {
                "zt-risk-sidecar considers the Cloudflare API unavailable; retry later".to_owned()
            }
            ApiError::UriTooLong => "Request URI too long".to_owned(),
            ApiError::PayloadTooLarge => "Request body too large (at most 64 KiB)".to_owned(),
            ApiError::BodyTimeout => {
                "Request timeout: the request body did not arrive in time".to_owned()
            }
            ApiError::InvalidHost => {
                "Invalid request headers: an HTTP/1.1 request needs exactly one Host".to_owned()
            }
            ApiError::HeadersTooLarge => "Request headers too large".to_owned(),
            ApiError::UnexpectedBody => {
                "Invalid request: a lookup takes no request body".to_owned()
            }
            ApiError::AccountNotAllowed => "Unauthorized to access requested resource".to_owned(),
            ApiError::Overloaded => "zt-risk-sidecar is overloaded; retry later".to_owned(),
            ApiError::AdminUnauthorized => "Authentication error".to_owned(),
            ApiError::BadAdminRequest { reason } => format!("Invalid request: {reason}"),
            ApiError::ReloadRejected { reason } => {
                format!("Configuration rejected; the running one stays: {reason}")
            }
            ApiError::Internal => "zt-risk-sidecar internal error".to_owned(),
        }
    }

    /// The one conversion from an error to what the caller sees.
    pub fn to_response(&self) -> Response<ResponseBody> {
        let body = envelope_bytes(self.code(), &self.message());
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = self.status();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            ApiError::MethodNotAllowed { allow } => {
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::RateLimited {
                retry_after_secs, ..
            }
            | ApiError::UpstreamDown { retry_after_secs } => {
                set_retry_after(response.headers_mut(), *retry_after_secs);
            }
            ApiError::Overloaded => set_retry_after(response.headers_mut(), 1),
            // The rest of the body may still be on its way: the connection cannot be reused.
            ApiError::BodyTimeout => {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// SDK retries honour `Retry-After` only up to 60 s (Python) and otherwise retry within seconds,
/// which would extend a Cloudflare block; past 60 s the sidecar tells them not to retry at all.
pub const SDK_RETRY_AFTER_LIMIT_SECS: u64 = 60;

/// `x-should-retry`, read first by Cloudflare's (Stainless-generated) SDKs.
pub const X_SHOULD_RETRY: http::header::HeaderName =
    http::header::HeaderName::from_static("x-should-retry");

/// Sets `Retry-After`, and `x-should-retry: false` when the wait is longer than SDKs honour.
pub fn set_retry_after(headers: &mut http::HeaderMap, retry_after_secs: u64) {
    headers.insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs),
    );
    if retry_after_secs > SDK_RETRY_AFTER_LIMIT_SECS {
        headers.insert(X_SHOULD_RETRY, HeaderValue::from_static("false"));
    }
}

/// Serialises Cloudflare's failure envelope:
/// `{"success":false,"errors":[{"code":N,"message":"..."}],"messages":[],"result":null}`.
pub fn envelope_bytes(code: u32, message: &str) -> Bytes {
    // A struct rather than `json!`, so the keys keep Cloudflare's order.
    #[derive(serde::Serialize)]
    struct Failure<'a> {
        success: bool,
        errors: [Message<'a>; 1],
        messages: [Message<'a>; 0],
        result: Option<()>,
    }
    #[derive(serde::Serialize)]
    struct Message<'a> {
        code: u32,
        message: &'a str,
    }
    let envelope = Failure {
        success: false,
        errors: [Message { code, message }],
        messages: [],
        result: None,
    };
    match serde_json::to_vec(&envelope) {
        Ok(bytes) => Bytes::from(bytes),
        // Serialising plain strings and numbers cannot fail; keep a valid envelope regardless.
        Err(_) => Bytes::from_static(
            br#"{"success":false,"errors":[{"code":10500,"message":"internal error"}],"messages":[],"result":null}"#,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(error: ApiError, status: u16, code: u32) {
        let response = error.to_response();
        assert_eq!(response.status().as_u16(), status, "{error:?}");
        assert_eq!(
            response
                .headers()
                .get(CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
            Some(&b"application/json"[..])
        );
        let body = envelope_bytes(error.code(), &error.message());
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("valid json");
        assert_eq!(parsed["success"], false);
        assert_eq!(parsed["result"], serde_json::Value::Null);
        assert_eq!(parsed["messages"], serde_json::json!([]));
        assert_eq!(parsed["errors"][0]["code"], code);
    }

    #[test]
    fn every_error_has_its_status_and_code() {
        check(ApiError::NoRoute, 404, 7000);
        check(
            ApiError::MethodNotAllowed { allow: "GET, HEAD" },
            405,
            10405,
        );
        check(ApiError::InvalidAccountId { path: "/x".into() }, 400, 7003);
        check(ApiError::InvalidReferenceId { reason: "empty" }, 400, 7003);
        check(ApiError::MissingCredentials, 400, 9106);
        check(
            ApiError::InvalidCredentialHeaders {
                header: "Authorization",
            },
            400,
            6003,
        );
        check(ApiError::UpstreamUnreachable, 502, 10502);
        check(ApiError::UpstreamTimeout, 504, 10504);
        check(ApiError::UpstreamInvalidResponse, 502, 10506);
        check(
            ApiError::RateLimited {
                retry_after_secs: 5,
                reason: "budget-exhausted",
            },
            429,
            971,
        );
        check(
            ApiError::UpstreamDown {
                retry_after_secs: 5,
            },
            503,
            10503,
        );
        check(ApiError::UriTooLong, 414, 10414);
        check(ApiError::PayloadTooLarge, 413, 10413);
        check(ApiError::BodyTimeout, 408, 10408);
        check(ApiError::InvalidHost, 400, 6003);
        check(ApiError::HeadersTooLarge, 431, 10431);
        check(ApiError::UnexpectedBody, 400, 10400);
        check(ApiError::AccountNotAllowed, 403, 9109);
        check(ApiError::Overloaded, 503, 10508);
        check(ApiError::AdminUnauthorized, 401, 10000);
        check(ApiError::BadAdminRequest { reason: "x" }, 400, 1001);
        check(ApiError::ReloadRejected { reason: "x".into() }, 422, 10422);
        check(ApiError::Internal, 500, 10500);
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let response = ApiError::MethodNotAllowed { allow: "GET, HEAD" }.to_response();
        assert_eq!(
            response.headers().get(ALLOW).map(HeaderValue::as_bytes),
            Some(&b"GET, HEAD"[..])
        );
    }

    #[test]
    fn long_waits_tell_sdks_not_to_retry() {
        let short = ApiError::RateLimited {
            retry_after_secs: 60,
            reason: "rate-limited",
        }
        .to_response();
        assert_eq!(
            short
                .headers()
                .get("retry-after")
                .map(HeaderValue::as_bytes),
            Some(&b"60"[..])
        );
        assert!(short.headers().get(X_SHOULD_RETRY).is_none());
        let long = ApiError::RateLimited {
            retry_after_secs: 61,
            reason: "rate-limited",
        }
        .to_response();
        assert_eq!(
            long.headers()
                .get(X_SHOULD_RETRY)
                .map(HeaderValue::as_bytes),
            Some(&b"false"[..])
        );
        let down = ApiError::UpstreamDown {
            retry_after_secs: 9,
        }
        .to_response();
        assert_eq!(
            down.headers().get("retry-after").map(HeaderValue::as_bytes),
            Some(&b"9"[..])
        );
    }

    #[test]
    fn envelope_keys_are_in_cloudflares_order() {
        assert_eq!(
            envelope_bytes(7000, "No route for that URI"),
            Bytes::from_static(
                br#"{"success":false,"errors":[{"code":7000,"message":"No route for that URI"}],"messages":[],"result":null}"#
            )
        );
    }

    #[test]
    fn messages_with_quotes_stay_valid_json() {
        let body = envelope_bytes(7003, "Could not route to /a\"b\\c, perhaps");
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("valid json");
        assert_eq!(
            parsed["errors"][0]["message"],
            "Could not route to /a\"b\\c, perhaps"
        );
    }
}
