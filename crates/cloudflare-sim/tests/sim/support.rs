//! The test binary's support module: the one reply type, the one HTTP client and the constants the
//! simulator's API and control tests share. It talks to the simulator only over real loopback
//! sockets and must not reach into the simulator's internals.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// An account the tests' credentials are allowed on.
pub const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
/// Another well-formed account, for refusals and per-account separation.
pub const OTHER_ACCOUNT: &str = "fedcba9876543210fedcba9876543210";

/// The HTTP/1.1 client every test uses, on plain TCP.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client that pools keep-alive connections, as SDKs do.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client that opens a new connection per request. Tests that advance a paused clock need it:
/// the simulator closes idle keep-alive connections after its header-read timeout, so a pooled
/// connection would be dead after a jump in time.
pub fn client_without_keep_alive() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// Sends one request to `url` and reads the whole answer.
pub async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, hyper_util::client::legacy::Error> {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let response = client.request(request).await?;
    let (parts, body) = response.into_parts();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    })
}

/// A whole answer: status, headers and body bytes.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("{error}: {}", self.text()))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        self
    }

    /// The first Cloudflare error code of a failure envelope.
    pub fn code(&self) -> u64 {
        self.json()["errors"][0]["code"].as_u64().unwrap()
    }
}
