//! The only outbound I/O of the sidecar: one pooled hyper-util client over rustls, built once,
//! that sends a lookup to Cloudflare and returns the answer it may relay. It decides nothing about
//! caching; it enforces the connect and whole-request timeouts, the body size bound and the cap on
//! requests (and so connections) in flight.

use std::error::Error as _;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::{ServerName, UnixTime};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use http::uri::{Authority, Scheme};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;

use crate::credentials::Credentials;
use crate::throttle::LogThrottle;

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

/// Why a text is not an upstream base URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamUrlError {
    #[error("not a valid URL ({0})")]
    NotAUrl(String),
    #[error("must start with https:// (or http:// for loopback)")]
    NoScheme,
    #[error("must name a host")]
    NoHost,
    #[error("must not contain user information")]
    UserInformation,
    #[error("must not have a query string")]
    QueryString,
    #[error(
        "http:// is only allowed for a loopback host (127.0.0.1, ::1, localhost); \
         set allow_insecure_upstream to override"
    )]
    InsecureHttp,
    #[error("unsupported scheme {0}")]
    UnsupportedScheme(String),
}

impl UpstreamBase {
    /// Accepts `https://` anywhere, and `http://` only for a loopback host unless
    /// `allow_insecure_http` is set: an API token must not cross a network in clear text by accident.
    pub fn parse(text: &str, allow_insecure_http: bool) -> Result<UpstreamBase, UpstreamUrlError> {
        let uri: Uri = text
            .parse()
            .map_err(|error: http::uri::InvalidUri| UpstreamUrlError::NotAUrl(error.to_string()))?;
        let scheme = uri.scheme().cloned().ok_or(UpstreamUrlError::NoScheme)?;
        let authority = uri.authority().cloned().ok_or(UpstreamUrlError::NoHost)?;
        if authority.as_str().contains('@') {
            return Err(UpstreamUrlError::UserInformation);
        }
        if uri.query().is_some() {
            return Err(UpstreamUrlError::QueryString);
        }
        if scheme == Scheme::HTTP {
            if !allow_insecure_http && !is_loopback_host(authority.host()) {
                return Err(UpstreamUrlError::InsecureHttp);
            }
        } else if scheme != Scheme::HTTPS {
            return Err(UpstreamUrlError::UnsupportedScheme(scheme.to_string()));
        }
        let path_prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(UpstreamBase {
            scheme,
            authority,
            path_prefix,
        })
    }

    /// The host without its port: what `NO_PROXY` is matched against.
    pub fn host(&self) -> &str {
        self.authority.host()
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

/// Which roots verify Cloudflare's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsRoots {
    /// Mozilla's roots, compiled in (webpki-roots): the same on every host.
    Webpki,
    /// The operating system's store (rustls-native-certs).
    System,
}

/// TLS trust for the upstream connection. rustls only, TLS 1.2 and 1.3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub roots: TlsRoots,
    /// Extra CA certificates in PEM, for example a TLS-inspecting corporate egress.
    pub extra_ca_file: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            roots: TlsRoots::Webpki,
            extra_ca_file: None,
        }
    }
}

/// Why a CA file cannot extend the roots.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not PEM ({source})", path.display())]
    NotPem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} holds no certificate", path.display())]
    Empty { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Rejected {
        path: PathBuf,
        source: rustls::Error,
    },
}

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("TLS setup failed: {0}")]
    Tls(rustls::Error),
    #[error("no usable certificate in the system's root store")]
    NoSystemRoots,
    #[error(transparent)]
    CaFile(#[from] CaFileError),
}

/// Reads every certificate of a PEM file; an empty or unreadable file is an error.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let text = std::fs::read(path).map_err(|source| CaFileError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let certificates = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CaFileError::NotPem {
            path: path.to_owned(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(CaFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// The server-certificate verifier of the upstream client, whose roots a reload can replace: the
/// token, admin token and CA files are rotated the same way (a watched file, SIGHUP or
/// `POST /reload`), and a rotated corporate egress CA must not need a restart. Each handshake
/// asks the verifier in force at its start; connections already verified stay in the pool.
#[derive(Debug)]
struct LiveRoots {
    verifier: arc_swap::ArcSwap<WebPkiServerVerifier>,
}

impl LiveRoots {
    fn new(
        tls: &TlsSettings,
        provider: &Arc<CryptoProvider>,
    ) -> Result<LiveRoots, ClientBuildError> {
        Ok(LiveRoots {
            verifier: arc_swap::ArcSwap::new(verifier(tls, provider)?),
        })
    }
}

fn verifier(
    tls: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, ClientBuildError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(tls)?), Arc::clone(provider))
        .build()
        .map_err(|error| ClientBuildError::Tls(rustls::Error::General(error.to_string())))
}

impl ServerCertVerifier for LiveRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier.load().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.load().supported_verify_schemes()
    }
}

fn root_store(tls: &TlsSettings) -> Result<RootCertStore, ClientBuildError> {
    let mut store = match tls.roots {
        TlsRoots::Webpki => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        TlsRoots::System => {
            let loaded = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(ClientBuildError::NoSystemRoots);
            }
            store
        }
    };
    if let Some(path) = &tls.extra_ca_file {
        for certificate in read_ca_file(path)? {
            store
                .add(certificate)
                .map_err(|source| CaFileError::Rejected {
                    path: path.clone(),
                    source,
                })?;
        }
    }
    Ok(store)
}

/// An HTTP proxy for tunnelling (CONNECT) to Cloudflare, with optional basic credentials that
/// are never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    uri: Uri,
    authorization: Option<HeaderValue>,
}

/// Why a text is not a proxy URL. It never holds the text, which may carry credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    #[error("not a valid URL (expected http://host:port)")]
    NotAUrl,
    #[error("must be an http:// proxy URL (the tunnel to Cloudflare is TLS inside it)")]
    NotHttp,
    #[error("must name a host")]
    NoHost,
    #[error("not a valid proxy host")]
    BadHost,
    #[error("proxy credentials cannot be sent in a header")]
    BadCredentials,
}

impl ProxyUrl {
    /// Pure: `http://host:port` or `http://user:password@host:port`; without a scheme
    /// (`proxy.corp:3128`, as curl and most tools accept in `HTTPS_PROXY`) it is `http://`.
    pub fn parse(text: &str) -> Result<ProxyUrl, ProxyUrlError> {
        let with_scheme;
        let text = if text.contains("://") {
            text
        } else {
            with_scheme = format!("http://{text}");
            &with_scheme
        };
        let uri: Uri = text.parse().map_err(|_| ProxyUrlError::NotAUrl)?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(ProxyUrlError::NotHttp);
        }
        let authority = uri.authority().ok_or(ProxyUrlError::NoHost)?;
        let (credentials, host_port) = match authority.as_str().rsplit_once('@') {
            Some((credentials, host_port)) => (Some(credentials), host_port),
            None => (None, authority.as_str()),
        };
        let clean: Uri = format!("http://{host_port}")
            .parse()
            .map_err(|_| ProxyUrlError::BadHost)?;
        let authorization = match credentials {
            None => None,
            Some(credentials) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
                let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
                    .map_err(|_| ProxyUrlError::BadCredentials)?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(ProxyUrl {
            uri: clean,
            authorization,
        })
    }
}

impl ProxyUrl {
    /// The proxy's address without its credentials (`http://host:port`): what `check` prints.
    pub fn address(&self) -> String {
        self.uri.to_string().trim_end_matches('/').to_owned()
    }

    /// Whether the URL carried `user:password@`.
    pub fn has_credentials(&self) -> bool {
        self.authorization.is_some()
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credentials = if self.authorization.is_some() {
            " (with credentials)"
        } else {
            ""
        };
        write!(f, "ProxyUrl({}{credentials})", self.uri)
    }
}

/// Settings the client is built from.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub base: UpstreamBase,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Requests in flight at most: over HTTP/1.1, each holds a connection of its own, so this
    /// also bounds the connections a burst of expiries opens.
    pub max_connections: NonZeroUsize,
    pub tls: TlsSettings,
    /// Used for `https://` upstreams only.
    pub proxy: Option<ProxyUrl>,
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
    /// An answer came but could not be parsed as HTTP (too many or too large headers, a malformed
    /// status line): a bad answer, not a failure to reach Cloudflare, so it is not retried.
    InvalidAnswer,
}

impl UpstreamError {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "upstream-connect-failed",
            UpstreamError::Unreachable => "upstream-unreachable",
            UpstreamError::Timeout => "upstream-timeout",
            UpstreamError::BodyTooLarge => "upstream-body-too-large",
            UpstreamError::InvalidAnswer => "upstream-invalid-answer",
        }
    }
}

/// Request bodies are small and complete (the write pass-through of the integrations family).
pub type RequestBody = Full<Bytes>;

/// The pooled client, directly or through an HTTP proxy tunnel.
#[derive(Clone)]
enum HttpsClient {
    Direct(Client<HttpsConnector<HttpConnector>, RequestBody>),
    Proxied(Client<HttpsConnector<Tunnel<HttpConnector>>, RequestBody>),
}

impl HttpsClient {
    fn request(&self, request: Request<RequestBody>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            HttpsClient::Direct(client) => client.request(request),
            HttpsClient::Proxied(client) => client.request(request),
        }
    }
}

/// The upstream client: cheap to clone, one connection pool for the whole process.
#[derive(Clone)]
pub struct Upstream {
    client: HttpsClient,
    base: Arc<UpstreamBase>,
    request_timeout: Duration,
    user_agent: HeaderValue,
    failure_log: Arc<LogThrottle>,
    /// One permit per request in flight. hyper-util's pool caps idle connections, not open ones.
    in_flight: Arc<Semaphore>,
    roots: Arc<LiveRoots>,
    provider: Arc<CryptoProvider>,
}

/// How often a failure to reach Cloudflare is logged at `warn` during an outage.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);

impl Upstream {
    pub fn new(settings: &UpstreamSettings) -> Result<Upstream, ClientBuildError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(LiveRoots::new(&settings.tls, &provider)?);
        // Safe default protocol versions are TLS 1.2 and 1.3. The verifier is webpki's, over the
        // configured roots; "dangerous" is only rustls's name for supplying one's own.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(ClientBuildError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(&roots) as Arc<dyn ServerCertVerifier>)
            .with_no_client_auth();
        // ALPN offers h2, then http/1.1.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions();
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(settings.max_connections.get());
        let client = match &settings.proxy {
            Some(proxy) if settings.base.scheme == Scheme::HTTPS => {
                let mut tunnel = Tunnel::new(proxy.uri.clone(), http);
                if let Some(authorization) = &proxy.authorization {
                    tunnel = tunnel.with_auth(authorization.clone());
                }
                HttpsClient::Proxied(builder.build(https.wrap_connector(tunnel)))
            }
            _ => HttpsClient::Direct(builder.build(https.wrap_connector(http))),
        };
        let user_agent =
            HeaderValue::from_static(concat!("zt-risk-sidecar/", env!("CARGO_PKG_VERSION")));
        Ok(Upstream {
            client,
            base: Arc::new(settings.base.clone()),
            request_timeout: settings.request_timeout,
            user_agent,
            failure_log: Arc::new(LogThrottle::new(FAILURE_LOG_EVERY)),
            in_flight: Arc::new(Semaphore::new(settings.max_connections.get())),
            roots,
            provider,
        })
    }

    /// Verifies new connections against `tls`'s roots from now on (a reload of the extra CA
    /// file). On error the roots in force stay.
    pub fn reload_roots(&self, tls: &TlsSettings) -> Result<(), ClientBuildError> {
        self.roots.verifier.store(verifier(tls, &self.provider)?);
        Ok(())
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
        self.send(Method::GET, path_below_base, credentials, None, deadline)
            .await
    }

    /// Sends `{method} {base}{path_and_query_below_base}` with the caller's credentials and, for
    /// a write, its body and content type, unchanged. Forwarded headers: the credentials,
    /// `Accept`, the sidecar's `User-Agent` and, with a body, `Content-Type`; nothing else.
    pub async fn send(
        &self,
        method: Method,
        path_and_query_below_base: &str,
        credentials: &Credentials,
        body: Option<(Bytes, Option<HeaderValue>)>,
        deadline: tokio::time::Instant,
    ) -> Result<UpstreamAnswer, UpstreamError> {
        let uri = self
            .base
            .uri_for(path_and_query_below_base)
            .map_err(|error| {
                // The path comes from routes.rs and is always valid; this is a bug if it happens.
                tracing::error!(%error, "could not build the upstream URI");
                UpstreamError::Unreachable
            })?;
        let (bytes, content_type) = body.unwrap_or_default();
        let mut request = Request::new(RequestBody::new(bytes));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, self.user_agent.clone());
        if let Some(content_type) = content_type {
            headers.insert(CONTENT_TYPE, content_type);
        }
        for (name, value) in credentials.headers() {
            headers.insert(name.clone(), value.clone());
        }
        // Queued for a permit within the same deadline: a request that waited its whole deadline
        // for a connection times out like one that waited for Cloudflare.
        let bounded = async {
            let Ok(_permit) = self.in_flight.acquire().await else {
                // The semaphore is never closed; this is a bug if it happens.
                return Err(UpstreamError::Unreachable);
            };
            self.exchange(request).await
        };
        match tokio::time::timeout_at(deadline, bounded).await {
            Ok(result) => result,
            Err(_elapsed) => Err(UpstreamError::Timeout),
        }
    }

    async fn exchange(
        &self,
        request: Request<RequestBody>,
    ) -> Result<UpstreamAnswer, UpstreamError> {
        let response = self.client.request(request).await.map_err(|error| {
            let kind = classify_client_error(&error);
            tracing::debug!(error = %error_chain(&error), kind = kind.as_str(), "upstream request failed");
            if let (UpstreamError::Connect | UpstreamError::Unreachable, Some(held_back)) =
                (kind, self.failure_log.admit())
            {
                tracing::warn!(error = %error_chain(&error), kind = kind.as_str(), similar_failures_not_logged = held_back, "cannot reach Cloudflare (connection or TLS failure)");
            }
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
        Ok(owned_answer(
            parts.status,
            &parts.headers,
            &collected.to_bytes(),
        ))
    }
}

/// The answer as it will be relayed and cached, in memory of its own. hyper hands out the body and
/// header values as slices of its connection's read buffers (8 KiB and more): kept as they are,
/// every cached answer would pin a whole buffer. So the body and the relayed header values are
/// copied into one allocation, and each is a slice of it: one allocation and one reference count
/// per answer, which a hit touches once for all of them. Only misses pay for the copy.
pub fn owned_answer(status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> UpstreamAnswer {
    // Nearly every answer says exactly this: a static value costs nothing.
    const JSON: &[u8] = b"application/json";
    let names = RELAYED_HEADERS;
    let relayed: Vec<(&HeaderName, &HeaderValue)> = names
        .iter()
        .filter_map(|name| Some((name, headers.get(name)?)))
        .collect();
    let copied: usize = relayed
        .iter()
        .filter(|(_, value)| value.as_bytes() != JSON)
        .map(|(_, value)| value.len())
        .sum();
    let mut blob = BytesMut::with_capacity(body.len() + copied);
    blob.extend_from_slice(body);
    let spans: Vec<(&HeaderName, Option<std::ops::Range<usize>>)> = relayed
        .into_iter()
        .map(|(name, value)| {
            if value.as_bytes() == JSON {
                return (name, None);
            }
            let start = blob.len();
            blob.extend_from_slice(value.as_bytes());
            (name, Some(start..blob.len()))
        })
        .collect();
    let blob = blob.freeze();
    let headers = spans
        .into_iter()
        .filter_map(|(name, span)| {
            let value = match span {
                None => HeaderValue::from_static("application/json"),
                Some(span) => HeaderValue::from_maybe_shared(blob.slice(span)).ok()?,
            };
            Some((name.clone(), value))
        })
        .collect();
    UpstreamAnswer {
        status,
        headers,
        body: blob.slice(..body.len()),
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

/// A connect that timed out is a timeout (504); an answer hyper could not parse is an invalid
/// answer (502, code 10506); every other failure to get an answer is a 502, told apart by whether a
/// connection was ever made.
fn classify_client_error(error: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return UpstreamError::Timeout;
            }
        }
        if cause
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
        {
            return UpstreamError::InvalidAnswer;
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

    #[test]
    fn an_owned_answer_copies_the_relayed_parts_into_one_allocation() {
        // As hyper hands them out: the body and every header value slices of one read buffer.
        let body = r#"{"success":true,"errors":[],"messages":[],"result":null}"#;
        let texts = [
            "application/json",
            "8f1e2d3c4b5a6978-SJC",
            "\"default\";r=1199;t=300",
            "not=relayed",
            body,
        ];
        let mut read_buffer = BytesMut::with_capacity(8192);
        let mut spans = Vec::new();
        for text in texts {
            let start = read_buffer.len();
            read_buffer.extend_from_slice(text.as_bytes());
            spans.push(start..read_buffer.len());
        }
        read_buffer.resize(8192, b' ');
        let read_buffer = read_buffer.freeze();
        let slice = |i: usize| read_buffer.slice(spans[i].clone());
        let value = |i: usize| HeaderValue::from_maybe_shared(slice(i)).expect("valid");
        let mut headers = http::HeaderMap::new();
        headers.insert(CONTENT_TYPE, value(0));
        headers.insert("cf-ray", value(1));
        headers.insert("ratelimit", value(2));
        headers.insert("set-cookie", value(3));
        let answer = owned_answer(StatusCode::OK, &headers, &slice(4));

        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(&answer.body[..], body.as_bytes());
        let names: Vec<&str> = answer
            .headers
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(
            names,
            ["content-type", "ratelimit", "cf-ray"],
            "relayed only, in order"
        );
        assert_eq!(answer.headers[1].1, texts[2]);
        assert_eq!(answer.headers[2].1, texts[1]);
        // One allocation holds the body and the copied values, one after another, and nothing
        // points into the read buffer any more.
        let start = answer.body.as_ptr() as usize;
        let end = start + body.len() + texts[1].len() + texts[2].len();
        let read = read_buffer.as_ptr() as usize..read_buffer.as_ptr() as usize + 8192;
        assert!(!read.contains(&start));
        for (name, value) in &answer.headers[1..] {
            let at = value.as_bytes().as_ptr() as usize;
            assert!(at >= start + body.len() && at < end, "{name}");
        }
    }

    fn check(text: &str, insecure: bool, expected: Result<&str, &str>) {
        let actual = UpstreamBase::parse(text, insecure).map(|base| base.to_string());
        match expected {
            Ok(display) => assert_eq!(actual.as_deref(), Ok(display), "{text}"),
            Err(fragment) => {
                let error = actual.expect_err(text).to_string();
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
    fn proxy_urls() {
        let plain = ProxyUrl::parse("http://127.0.0.1:3128").expect("valid");
        assert_eq!(plain.uri.to_string(), "http://127.0.0.1:3128/");
        assert!(plain.authorization.is_none());
        let with_credentials =
            ProxyUrl::parse("http://user:s3cret@proxy.internal:3128").expect("valid");
        assert_eq!(
            with_credentials.uri.to_string(),
            "http://proxy.internal:3128/"
        );
        assert_eq!(
            with_credentials
                .authorization
                .as_ref()
                .map(HeaderValue::as_bytes),
            Some(&b"Basic dXNlcjpzM2NyZXQ="[..])
        );
        assert!(!format!("{with_credentials:?}").contains("s3cret"));
        assert!(ProxyUrl::parse("https://proxy:8443").is_err());
        assert!(ProxyUrl::parse("socks5://proxy:1080").is_err());
        // Without a scheme, as curl accepts it: an http:// proxy, credentials and all.
        let bare = ProxyUrl::parse("user:pw@proxy.corp:3128").expect("valid");
        assert_eq!(bare.uri.to_string(), "http://proxy.corp:3128/");
        assert!(bare.authorization.is_some());
        assert!(ProxyUrl::parse("proxy:3128").is_ok());
        assert!(ProxyUrl::parse("not a host:3128").is_err());
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("zt-sidecar-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        assert!(read_ca_file(&empty)
            .expect_err("empty")
            .to_string()
            .contains("no certificate"));
        assert!(read_ca_file(&dir.join("missing.pem"))
            .expect_err("missing")
            .to_string()
            .contains("cannot read"));
        let _ = std::fs::remove_dir_all(&dir);
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
