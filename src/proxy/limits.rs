//! Request-level bounds: the request head (`check_request_head`: 414, 431) and the request body
//! (`RequestBody`: whether a body is present, and its bytes up to `MAX_REQUEST_BODY_BYTES`). It
//! owns those limits as pure checks; it must not route, look at credentials or answer a request.

use std::future::Future;

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
    /// Lookups waiting on Cloudflare (leaders and followers) at most: a fast 503 beyond. Hits
    /// never count, so cached lookups are served through any flood of misses.
    pub max_pending_lookups: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_uri_bytes: 4096,
            max_header_bytes: 16 * 1024,
            max_request_headers: 64,
            max_pending_lookups: 1024,
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
