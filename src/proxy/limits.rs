//! Request-level bounds: the request head (`check_request_head`: 414, 431) and the request body
//! (`RequestBody`: whether a body is present, and its bytes up to `MAX_REQUEST_BODY_BYTES`). It
//! owns those limits as pure checks; it must not route, look at credentials or answer a request.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::error::ApiError;

/// Request-level bounds, each answered with its own envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Longest request target (path and query) in bytes: 414 beyond.
    pub max_uri_bytes: usize,
    /// Largest total of header names and values in bytes: 431 beyond.
    pub max_header_bytes: usize,
    /// Most headers: 431 beyond.
    pub max_request_headers: usize,
    /// Upstream fetches for lookups in flight at most (one per key, however many callers wait
    /// on it): a fast 503 beyond. Hits never count, so cached lookups are served through any
    /// flood of misses.
    pub max_pending_lookups: usize,
    /// Callers waiting on those fetches at most (each holds a connection or a stream): a fast
    /// 503 beyond.
    pub max_waiting_lookups: usize,
    /// Writes being read or relayed at most: a fast 503 beyond. With the 64 KiB body bound this
    /// is also the budget of request-body bytes held at once.
    pub max_pending_writes: usize,
    /// Time for a request body to arrive whole (408 beyond), however it trickles.
    pub body_read_timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_uri_bytes: 4096,
            max_header_bytes: 16 * 1024,
            max_request_headers: 64,
            max_pending_lookups: 1024,
            max_waiting_lookups: 4096,
            max_pending_writes: 64,
            body_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Pure: the first request-level bound a request head breaks, if any.
pub fn check_request_head(
    uri: &http::Uri,
    headers: &http::HeaderMap,
    limits: &RequestLimits,
) -> Result<(), ApiError> {
    let target_length = uri
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if target_length > limits.max_uri_bytes {
        return Err(ApiError::UriTooLong);
    }
    if headers.len() > limits.max_request_headers {
        return Err(ApiError::HeadersTooLarge);
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(ApiError::HeadersTooLarge);
    }
    Ok(())
}

/// Pure: RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host` (HTTP/2 carries
/// `:authority` instead, and HTTP/1.0 predates the rule).
pub fn check_host(version: http::Version, headers: &http::HeaderMap) -> Result<(), ApiError> {
    if version != http::Version::HTTP_11 {
        return Ok(());
    }
    let mut hosts = headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), None) => Ok(()),
        _ => Err(ApiError::InvalidHost),
    }
}

/// The largest request body relayed on a write.
pub const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024;

/// Why a request body could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    Broken,
}

/// A request body as the request path needs it: whether it may carry bytes (a lookup must not),
/// and its bytes up to a bound (a write relays them).
pub trait RequestBody: Send + 'static {
    fn may_have_body(&self) -> bool;
    fn collect_limited(self, limit: usize)
        -> impl Future<Output = Result<Bytes, BodyError>> + Send;
}

impl RequestBody for hyper::body::Incoming {
    fn may_have_body(&self) -> bool {
        !hyper::body::Body::is_end_stream(self)
    }

    async fn collect_limited(self, limit: usize) -> Result<Bytes, BodyError> {
        collect_limited(self, limit).await
    }
}

impl RequestBody for Full<Bytes> {
    fn may_have_body(&self) -> bool {
        !hyper::body::Body::is_end_stream(self)
    }

    async fn collect_limited(self, limit: usize) -> Result<Bytes, BodyError> {
        collect_limited(self, limit).await
    }
}

impl RequestBody for () {
    fn may_have_body(&self) -> bool {
        false
    }

    async fn collect_limited(self, _limit: usize) -> Result<Bytes, BodyError> {
        Ok(Bytes::new())
    }
}

impl RequestBody for http_body_util::Empty<Bytes> {
    fn may_have_body(&self) -> bool {
        false
    }

    async fn collect_limited(self, _limit: usize) -> Result<Bytes, BodyError> {
        Ok(Bytes::new())
    }
}

async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Broken),
    }
}

/// One place under a bound (fetches, waiting callers, writes): taken with [`Slot::take`], given
/// back when dropped.
pub(super) struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    pub(super) fn take(count: &'a AtomicUsize, bound: usize) -> Option<Slot<'a>> {
        if count.fetch_add(1, Ordering::Relaxed) >= bound {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(count))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
