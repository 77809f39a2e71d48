//! The accept loop: owns listening sockets, HTTP/1.1 and cleartext HTTP/2 connection handling, and
//! the graceful drain on shutdown. It knows nothing about routes, caching or Cloudflare; it hands
//! every request to a handler function and writes back whatever response the handler returns.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// Every response this crate writes has a complete, in-memory body: lookups are small JSON
/// documents, so streaming would only add cost.
pub type ResponseBody = Full<Bytes>;

/// What happened when the server stopped, for the caller to log and to decide the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every in-flight connection finished within the grace period.
    Completed,
    /// The grace period ran out and the remaining connections were dropped.
    GraceElapsed,
}

/// Accepts connections on `listener` until `shutdown` resolves, then stops accepting and waits up
/// to `grace` for in-flight requests to finish.
///
/// A handler that returns `Err` makes hyper abort the connection without a response. The sidecar's
/// own handler is infallible; the simulated Cloudflare API uses this to inject connection resets.
pub async fn serve<H, Fut, E>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> DrainOutcome
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Running out of file descriptors must not turn the accept loop into a busy spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let connection = builder
            .serve_connection(TokioIo::new(stream), service_fn(handler))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    }
    drop(listener);

    tokio::select! {
        () = graceful.shutdown() => DrainOutcome::Completed,
        () = tokio::time::sleep(grace) => DrainOutcome::GraceElapsed,
    }
}

/// Adapts an infallible handler error type for [`serve`].
pub type NeverFails = Infallible;
