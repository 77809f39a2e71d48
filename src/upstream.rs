//! The only outbound I/O of the sidecar: one pooled hyper-util client over rustls, built once,
//! that sends a lookup to Cloudflare and returns the answer it may relay. It decides nothing about
//! caching; it enforces the connect and whole-request timeouts and the body size bound.

use std::error::Error as _;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use http::uri::{Authority, Scheme};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::credentials::Credentials;

/// Cloudflare's API base, used when no upstream is configured.
pub const DEFAULT_UPSTREAM: &str = "https://api.cloudflare.com/client/v4";

/// The largest upstream body relayed. Integration records are well under 1 KiB; anything near this
/// bound is not an answer to this lookup.
pub const MAX_UPSTREAM_BODY_BYTES: usize = 1024 * 1024;

/// Response headers relayed from Cloudflare to the caller, besides status and body.
pub const RELAYED_HEADERS: [HeaderName; 5] = [
    CONTENT_TYPE,
    HeaderName::from_static("ratelimit"),
    HeaderName::from_static("ratelimit-policy"),
    HeaderName::from_static("retry-after"),
    HeaderName::from_static("cf-ray"),
];

/// A validated upstream base URL: scheme, authority and the path prefix (e.g. `/client/v4`).
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamBase {
    scheme: Scheme,
    authority: Authority,
    path_prefix: String,
}

impl UpstreamBase {
    /// Accepts `https://` anywhere, and `http://` only for a loopback host unless
    /// `allow_insecure_http` is set: an API token must not cross a network in clear text by accident.
    pub fn parse(text: &str, allow_insecure_http: bool) -> Result<UpstreamBase, String> {
        let uri: Uri = text
            .parse()
            .map_err(|error| format!("not a valid URL ({error})"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| "must start with https:// (or http:// for loopback)".to_owned())?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| "must name a host".to_owned())?;
        if authority.as_str().contains('@') {
            return Err("must not contain user information".to_owned());
        }
        if uri.query().is_some() {
            return Err("must not have a query string".to_owned());
        }
        if scheme == Scheme::HTTP {
            if !allow_insecure_http && !is_loopback_host(authority.host()) {
                return Err(
                    "http:// is only allowed for a loopback host (127.0.0.1, ::1, localhost); \
                     set allow_insecure_upstream to override"
                        .to_owned(),
                );
            }
        } else if scheme != Scheme::HTTPS {
            return Err(format!("unsupported scheme {scheme}"));
        }
        let path_prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(UpstreamBase {
            scheme,
            authority,
            path_prefix,
        })
    }

    fn uri_for(&self, path_below_base: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{}", self.path_prefix, path_below_base))
            .build()
    }
}

impl fmt::Display for UpstreamBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme, self.authority, self.path_prefix
        )
    }
}

impl fmt::Debug for UpstreamBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UpstreamBase({self})")
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Settings the client is built from.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub base: UpstreamBase,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

/// An answer from Cloudflare, as it will be relayed: status and body bytes unchanged, and the
/// relayed headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamAnswer {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// Why no answer could be relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, TLS handshake failed).
    Connect,
    /// The connection was reset or closed early, or the exchange broke the protocol.
    Unreachable,
    /// No complete answer within the connect or request timeout.
    Timeout,
    /// The body was larger than [`MAX_UPSTREAM_BODY_BYTES`].
    BodyTooLarge,
}

impl UpstreamError {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "upstream-connect-failed",
            UpstreamError::Unreachable => "upstream-unreachable",
            UpstreamError::Timeout => "upstream-timeout",
            UpstreamError::BodyTooLarge => "upstream-body-too-large",
        }
    }
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The upstream client: cheap to clone, one connection pool for the whole process.
#[derive(Clone)]
pub struct Upstream {
    client: HttpsClient,
    base: Arc<UpstreamBase>,
    request_timeout: Duration,
    user_agent: HeaderValue,
}

impl Upstream {
    pub fn new(settings: &UpstreamSettings) -> Result<Upstream, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let provider = rustls::crypto::ring::default_provider();
        // Safe default protocol versions are TLS 1.2 and 1.3; ALPN offers h2 then http/1.1.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|error| format!("TLS setup failed: {error}"))?
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let user_agent =
            HeaderValue::from_static(concat!("zt-risk-sidecar/", env!("CARGO_PKG_VERSION")));
        Ok(Upstream {
            client,
            base: Arc::new(settings.base.clone()),
            request_timeout: settings.request_timeout,
            user_agent,
        })
    }

    pub fn base(&self) -> &UpstreamBase {
        &self.base
    }

    /// The configured whole-request timeout; callers derive their deadline from it.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends `GET {base}{path_below_base}` with the caller's credentials and returns the answer.
    /// The whole exchange, body included, must end by `deadline`.
    pub async fn get(
        &self,
        path_below_base: &str,
        credentials: &Credentials,
        deadline: tokio::time::Instant,
    ) -> Result<UpstreamAnswer, UpstreamError> {
        let uri = self.base.uri_for(path_below_base).map_err(|error| {
            // The path comes from routes.rs and is always valid; this is a bug if it happens.
            tracing::error!(%error, "could not build the upstream URI");
            UpstreamError::Unreachable
        })?;
        let mut request = Request::new(Empty::new());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, self.user_agent.clone());
        for (name, value) in credentials.headers() {
            headers.insert(name.clone(), value.clone());
        }
        match tokio::time::timeout_at(deadline, self.exchange(request)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(UpstreamError::Timeout),
        }
    }

    async fn exchange(
        &self,
        request: Request<Empty<Bytes>>,
    ) -> Result<UpstreamAnswer, UpstreamError> {
        let response = self.client.request(request).await.map_err(|error| {
            let kind = classify_client_error(&error);
            tracing::debug!(error = %error_chain(&error), kind = kind.as_str(), "upstream request failed");
            kind
        })?;
        let declared_length = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<u64>().ok());
        if declared_length.is_some_and(|length| length > MAX_UPSTREAM_BODY_BYTES as u64) {
            return Err(UpstreamError::BodyTooLarge);
        }
        let (parts, body) = response.into_parts();
        let collected = Limited::new(body, MAX_UPSTREAM_BODY_BYTES)
            .collect()
            .await
            .map_err(|error| {
                if error.is::<http_body_util::LengthLimitError>() {
                    UpstreamError::BodyTooLarge
                } else {
                    tracing::debug!(%error, "upstream body failed");
                    UpstreamError::Unreachable
                }
            })?;
        let headers = RELAYED_HEADERS
            .iter()
            .filter_map(|name| {
                parts
                    .headers
                    .get(name)
                    .map(|value| (name.clone(), value.clone()))
            })
            .collect();
        Ok(UpstreamAnswer {
            status: parts.status,
            headers,
            body: collected.to_bytes(),
        })
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// A connect that timed out is a timeout (504); every other failure to get an answer is a 502,
/// told apart by whether a connection was ever made.
fn classify_client_error(error: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return UpstreamError::Timeout;
            }
        }
        source = cause.source();
    }
    if error.is_connect() {
        UpstreamError::Connect
    } else {
        UpstreamError::Unreachable
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, insecure: bool, expected: Result<&str, &str>) {
        let actual = UpstreamBase::parse(text, insecure).map(|base| base.to_string());
        match expected {
            Ok(display) => assert_eq!(actual.as_deref(), Ok(display), "{text}"),
            Err(fragment) => {
                let error = actual.expect_err(text);
                assert!(error.contains(fragment), "{text}: {error}");
            }
        }
    }

    #[test]
    fn upstream_base_rules() {
        check(
            DEFAULT_UPSTREAM,
            false,
            Ok("https://api.cloudflare.com/client/v4"),
        );
        check(
            "https://api.cloudflare.com/client/v4/",
            false,
            Ok("https://api.cloudflare.com/client/v4"),
        );
        check(
            "http://127.0.0.1:9000/client/v4",
            false,
            Ok("http://127.0.0.1:9000/client/v4"),
        );
        check("http://127.8.9.1:9000", false, Ok("http://127.8.9.1:9000"));
        check(
            "http://[::1]:9000/client/v4",
            false,
            Ok("http://[::1]:9000/client/v4"),
        );
        check(
            "http://localhost:9000/client/v4",
            false,
            Ok("http://localhost:9000/client/v4"),
        );
        check(
            "http://api.cloudflare.com/client/v4",
            false,
            Err("only allowed for a loopback"),
        );
        check(
            "http://10.0.0.1/client/v4",
            false,
            Err("only allowed for a loopback"),
        );
        check(
            "http://api.example.com/client/v4",
            true,
            Ok("http://api.example.com/client/v4"),
        );
        check("ftp://api.cloudflare.com", false, Err("unsupported scheme"));
        check(
            "api.cloudflare.com/client/v4",
            false,
            Err("not a valid URL"),
        );
        check(
            "//api.cloudflare.com/client/v4",
            false,
            Err("must start with"),
        );
        check(
            "https://user:pw@api.cloudflare.com/",
            false,
            Err("user information"),
        );
        check(
            "https://api.cloudflare.com/client/v4?x=1",
            false,
            Err("query"),
        );
        check("not a url", false, Err("not a valid URL"));
    }

    #[test]
    fn uri_joins_prefix_and_path() {
        let base =
            UpstreamBase::parse("https://api.cloudflare.com/client/v4/", false).expect("valid");
        assert_eq!(
            base.uri_for("/accounts/a/x").expect("valid").to_string(),
            "https://api.cloudflare.com/client/v4/accounts/a/x"
        );
    }
}
