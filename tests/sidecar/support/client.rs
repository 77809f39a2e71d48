//! The one HTTP client and the one reply type of the tests: requests over real sockets, through
//! hyper's client or as raw bytes, each answer bounded in time and read whole. It starts no server.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any one answer may take before the test fails instead of hanging.
pub const ANSWER_LIMIT: Duration = Duration::from_secs(30);

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }

    /// The Age header in seconds; fails the test when it is missing or not a number.
    pub fn age(&self) -> u64 {
        self.header("age")
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no numeric Age header: {self:?}"))
    }

    /// The `ttl=` parameter of Cache-Status in seconds (negative once stale); fails the test when
    /// it is missing.
    pub fn cache_ttl(&self) -> i64 {
        self.cache_status()
            .split("; ")
            .find_map(|parameter| parameter.strip_prefix("ttl="))
            .and_then(|ttl| ttl.parse().ok())
            .unwrap_or_else(|| panic!("no ttl in Cache-Status: {self:?}"))
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// The HTTP/1.1 client every test uses. It keeps no idle connections: tests that move a paused
/// clock far ahead, or stop a server, would otherwise find a pooled connection closed under them.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// The same client speaking cleartext HTTP/2 only (prior knowledge).
pub fn http2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .http2_only(true)
        .build_http()
}

/// Sends a request with the given headers and no body.
pub async fn send_with(
    client: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Reply {
    send_with_body(client, method, url, headers, Bytes::new()).await
}

/// Sends a request with the given headers and body.
pub async fn send_with_body(
    client: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body)).expect("valid request");
    let exchange = async {
        let response = client.request(request).await.expect("request succeeds");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(ANSWER_LIMIT, exchange)
        .await
        .expect("answer within the limit")
}

/// Sends bytes as they are over a fresh connection and parses the HTTP/1.1 answer, for request
/// targets a URI type would refuse or normalise. The request should say `Connection: close`.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(ANSWER_LIMIT, stream.read_to_end(&mut bytes))
        .await
        .expect("answer within the limit")
        .expect("read");
    parse_http1(&bytes)
}

/// Reads until the peer closes `stream` (a reset counts as closed) and returns what came; fails
/// the test if that takes longer than `within`. The bound is on Tokio's clock, so under a paused
/// clock the test fails at the bound instead of hanging.
pub async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> Vec<u8> {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut bytes)).await;
    assert!(read.is_ok(), "the stream was not closed within {within:?}");
    bytes
}

/// Reads what `stream` has ready (at least one byte), within [`ANSWER_LIMIT`].
pub async fn read_once(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut buffer = vec![0u8; 4096];
    let read = tokio::time::timeout(ANSWER_LIMIT, stream.read(&mut buffer))
        .await
        .expect("an answer within the limit")
        .expect("read");
    buffer.truncate(read);
    buffer
}

/// Parses one HTTP/1.1 response (Content-Length framing, as the sidecar always sends).
pub fn parse_http1(bytes: &[u8]) -> Reply {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let status = response.parse(bytes).expect("valid HTTP/1.1 response");
    let httparse::Status::Complete(head_length) = status else {
        panic!("incomplete response: {:?}", String::from_utf8_lossy(bytes));
    };
    let mut map = HeaderMap::new();
    for header in response.headers.iter() {
        map.append(
            http::header::HeaderName::from_bytes(header.name.as_bytes()).expect("name"),
            http::header::HeaderValue::from_bytes(header.value).expect("value"),
        );
    }
    let length: usize = map
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(bytes.len() - head_length);
    Reply {
        status: StatusCode::from_u16(response.code.expect("status")).expect("status"),
        headers: map,
        body: Bytes::copy_from_slice(&bytes[head_length..(head_length + length).min(bytes.len())]),
    }
}

/// A GET request head for `target` with [`TOKEN_A`](super::TOKEN_A)'s credential, any
/// `extra_headers` (each ending in CRLF) and `Connection: close`, for [`raw_exchange`].
pub fn raw_get(target: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\n{extra_headers}Connection: close\r\n\r\n",
        super::bearer(super::TOKEN_A)
    )
    .into_bytes()
}

/// One listener of the sidecar and the client that talks to it: every request a test sends to a
/// lookup or admin port goes through here.
pub struct Endpoint {
    pub addr: SocketAddr,
    client: TestClient,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            client: client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        send_with(&self.client, method, &self.url(path), headers).await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers).await
    }

    /// A request with `token` as the bearer credential and no body.
    pub async fn send_as(&self, method: Method, path: &str, token: &str) -> Reply {
        self.send(method, path, &[("authorization", &super::bearer(token))])
            .await
    }

    /// A GET of `path` with `token` as the bearer credential.
    pub async fn get_as(&self, path: &str, token: &str) -> Reply {
        self.send_as(Method::GET, path, token).await
    }

    /// A lookup of `reference` in [`ACCOUNT`](super::ACCOUNT) with `token` as the credential.
    pub async fn lookup(&self, reference: &str, token: &str) -> Reply {
        self.get_as(&super::lookup_path(super::ACCOUNT, reference), token)
            .await
    }

    /// A request with a JSON body and `token` as the bearer credential.
    pub async fn send_json(&self, method: Method, path: &str, token: &str, body: &str) -> Reply {
        send_with_body(
            &self.client,
            method,
            &self.url(path),
            &[
                ("authorization", &super::bearer(token)),
                ("content-type", "application/json"),
            ],
            Bytes::from(body.to_owned()),
        )
        .await
    }

    /// Sends bytes as they are over a fresh connection; see [`raw_exchange`].
    pub async fn raw(&self, request: &[u8]) -> Reply {
        raw_exchange(self.addr, request).await
    }
}
