//! The simulator's own accept loop: accepts loopback connections, serves HTTP/1.1 and cleartext
//! HTTP/2 with hyper-util, and drains gracefully on shutdown. It knows nothing about routes or
//! Cloudflare, and it must share no code with the sidecar it stands in for, so that a bug in the
//! sidecar's accept loop cannot hide on both sides of a test.

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

/// Every answer the simulator writes has a complete, in-memory body: Cloudflare's envelopes are
/// small JSON documents, and the largest injected body is bounded.
pub(crate) type Body = Full<Bytes>;

/// How long a client may take to send a request head before its connection is closed, so that a
/// test client that stalls cannot hold a connection open forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the loop waits after a failed `accept` (usually: out of file descriptors), so that it
/// does not turn into a busy spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until `shutdown` resolves, then stops accepting, asks every
/// connection to finish its in-flight requests and close, and waits up to `grace` for them.
///
/// A handler that returns `Err` makes hyper abort the connection without a response; that is how
/// the simulator injects connection resets and ends hanging requests.
pub(crate) async fn serve<H, Fut, E>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Ok((stream, _peer)) = accepted else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let connection = builder
            .serve_connection(TokioIo::new(stream), service_fn(handler.clone()))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A connection that ends with an error (a reset the simulator injected, a client that
            // went away) is nothing the simulator needs to report.
            let _ = connection.await;
        });
    }
    drop(listener);
    // Whether every connection finished within the grace period or not, the server is done: the
    // remaining connection tasks end with the runtime or when their handlers see the shutdown.
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}
