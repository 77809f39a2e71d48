//! The accept loop: owns listening sockets (TCP or a Unix domain socket), HTTP/1.1 and cleartext
//! HTTP/2 connection handling, the connection-level limits (connection count, header read time,
//! idle time, header size and count) and the graceful drain on shutdown. It knows nothing about
//! routes, caching or Cloudflare; it hands every request to a handler function and writes back
//! whatever response the handler returns.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

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

/// Connection-level limits. Request-level limits (URI length, bodies, requests waiting on
/// upstream) belong to the handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Open connections at most; one more is answered with a canned 503 and closed.
    pub max_connections: usize,
    /// Time allowed to receive a request head (slow-loris). On HTTP/1.1 hyper starts this timer
    /// when it waits for the next request, so it also closes idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// A connection with no bytes read or written for this long is shut down gracefully.
    pub idle_timeout: Duration,
    /// Largest request head hyper buffers, in bytes (at least 8192). A backstop: the handler
    /// enforces the real, smaller limits with Cloudflare-style envelopes; beyond this one hyper
    /// answers 414 or 431 without a body.
    pub max_head_bytes: usize,
    /// Most headers hyper parses in one HTTP/1.1 request (431 beyond). A backstop as above.
    pub max_headers: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_head_bytes: 64 * 1024,
            max_headers: 128,
        }
    }
}

/// Where the lookup listener listens: a TCP address, or a Unix domain socket (`unix:/path`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Why a text is not a listen address; it holds the text as given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListenAddrError {
    #[error("{0:?}: the socket path must be absolute")]
    RelativeSocketPath(String),
    #[error("{0:?} is not an IP address and port (e.g. 127.0.0.1:8080) or unix:/path")]
    NotAnAddress(String),
}

impl ListenAddr {
    /// Pure: `127.0.0.1:8080`, `[::1]:8080` or `unix:/run/zt/sidecar.sock`.
    pub fn parse(text: &str) -> Result<ListenAddr, ListenAddrError> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(ListenAddrError::RelativeSocketPath(text.to_owned()));
            }
            return Ok(ListenAddr::Unix(path));
        }
        text.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| ListenAddrError::NotAnAddress(text.to_owned()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// File mode and group of the lookup listener's Unix domain socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixSocketSettings {
    pub mode: u32,
    pub group: Option<String>,
}

/// Binds the lookup listener. A Unix domain socket gets `settings.mode` and, when named,
/// `settings.group`; a stale socket file from an earlier run is replaced, any other file is not.
pub async fn bind(addr: &ListenAddr, settings: &UnixSocketSettings) -> io::Result<Listener> {
    match addr {
        ListenAddr::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
        ListenAddr::Unix(path) => {
            if let Ok(metadata) = std::fs::symlink_metadata(path) {
                if !metadata.file_type().is_socket() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists and is not a socket", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            let listener = UnixListener::bind(path)?;
            // From here on the file is removed when the listener is dropped, errors included.
            let listener = Listener::Unix {
                listener,
                path: path.clone(),
            };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(settings.mode))?;
            if let Some(group) = &settings.group {
                let gid = match group.parse::<u32>() {
                    Ok(gid) => nix::unistd::Gid::from_raw(gid),
                    Err(_) => {
                        nix::unistd::Group::from_name(group)
                            .map_err(io::Error::from)?
                            .ok_or_else(|| {
                                io::Error::new(
                                    io::ErrorKind::NotFound,
                                    format!("no group {group:?}"),
                                )
                            })?
                            .gid
                    }
                };
                nix::unistd::chown(path.as_path(), None, Some(gid)).map_err(io::Error::from)?;
            }
            Ok(listener)
        }
    }
}

/// A listening socket: TCP, or a Unix domain socket whose file is removed when the listener goes.
pub enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Listener {
        Listener::Tcp(listener)
    }
}

impl Listener {
    async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok((Stream::Tcp(stream), peer.to_string()))
            }
            Listener::Unix { listener, path } => {
                let (stream, _) = listener.accept().await?;
                Ok((Stream::Unix(stream), path.display().to_string()))
            }
        }
    }

    /// Where it listens, for the log.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(listener) => listener
                .local_addr()
                .map_or_else(|_| "tcp:?".to_owned(), |addr| addr.to_string()),
            Listener::Unix { path, .. } => format!("unix:{}", path.display()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// An accepted connection of either kind.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Unix(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// The time of the last byte read or written on a connection, in milliseconds since it opened.
struct Activity {
    opened: Instant,
    last_millis: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let millis = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(millis, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_millis.load(Ordering::Relaxed))
    }
}

/// A stream that records when bytes last moved, for the idle timeout.
struct Tracked {
    stream: Stream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            this.activity.touch();
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Resolves once the connection has seen no traffic for `timeout`.
async fn idle_for(activity: &Activity, timeout: Duration) {
    loop {
        let deadline = activity.last() + timeout;
        tokio::time::sleep_until(deadline).await;
        if activity.last() + timeout <= Instant::now() {
            return;
        }
    }
}

/// The answer for a connection over the limit: written raw, without hyper, so that refusing costs
/// almost nothing.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 126\r\n\r\n{\"success\":false,\"errors\":[{\"code\":10508,\"message\":\"zt-risk-sidecar is at its connection limit\"}],\"messages\":[],\"result\":null}";

/// Refusals written at once at most; beyond, over-limit connections are simply closed.
const MAX_CONCURRENT_REFUSALS: usize = 64;

/// Accepts connections on `listener` until `shutdown` resolves, with default limits. See
/// [`serve_with`].
pub async fn serve<H, Fut, E>(
    listener: impl Into<Listener>,
    handler: H,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> DrainOutcome
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    serve_with(listener, handler, shutdown, grace, &ServerLimits::default()).await
}

/// Accepts connections on `listener` until `shutdown` resolves, then stops accepting, asks every
/// connection to finish its in-flight requests and close, and waits up to `grace` for them.
///
/// A handler that returns `Err` makes hyper abort the connection without a response. The sidecar's
/// own handler is infallible; the simulated Cloudflare API uses this to inject connection resets.
pub async fn serve_with<H, Fut, E>(
    listener: impl Into<Listener>,
    handler: H,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: &ServerLimits,
) -> DrainOutcome
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let listener = listener.into();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let refusals = Arc::new(Semaphore::new(MAX_CONCURRENT_REFUSALS));
    // Every connection task holds a sender; the drain is over when all are dropped.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let (draining, drain_signal) = watch::channel(false);
    let idle_timeout = limits.idle_timeout;
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
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            refuse(stream, &refusals);
            continue;
        };
        let activity = Arc::new(Activity {
            opened: Instant::now(),
            last_millis: AtomicU64::new(0),
        });
        let io = TokioIo::new(Tracked {
            stream,
            activity: Arc::clone(&activity),
        });
        let handler = handler.clone();
        let builder = Arc::clone(&builder);
        let alive = alive.clone();
        let mut drain_signal = drain_signal.clone();
        tokio::spawn(async move {
            let connection = builder.serve_connection(io, service_fn(handler));
            tokio::pin!(connection);
            let mut closing = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%peer, error = %error, "connection ended with an error");
                        }
                        break;
                    }
                    () = idle_for(&activity, idle_timeout), if !closing => {
                        tracing::debug!(%peer, "closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    changed = drain_signal.changed(), if !closing => {
                        if changed.is_err() || *drain_signal.borrow() {
                            connection.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                }
            }
            drop(permit);
            drop(alive);
        });
    }
    drop(listener);
    drop(alive);
    let _ = draining.send(true);

    tokio::select! {
        _ = all_closed.recv() => DrainOutcome::Completed,
        () = tokio::time::sleep(grace) => DrainOutcome::GraceElapsed,
    }
}

/// Answers a connection over the limit with a canned 503 and closes it, spending at most a second
/// on it, and never more than [`MAX_CONCURRENT_REFUSALS`] at once.
fn refuse(mut stream: Stream, refusals: &Arc<Semaphore>) {
    let Ok(permit) = Arc::clone(refusals).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let write = async {
            stream.write_all(OVER_CAPACITY).await?;
            stream.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
        drop(permit);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unix_sockets_get_their_mode_and_replace_only_stale_sockets() {
        let dir = std::env::temp_dir().join(format!("zt-sidecar-uds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("sidecar.sock");
        let settings = UnixSocketSettings {
            mode: 0o600,
            group: None,
        };
        let listener = bind(&ListenAddr::Unix(path.clone()), &settings)
            .await
            .expect("bind");
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // A socket left behind by a crash is replaced.
        std::mem::forget(listener);
        let again = bind(&ListenAddr::Unix(path.clone()), &settings)
            .await
            .expect("rebind");
        drop(again);
        assert!(!path.exists(), "the socket file goes with the listener");
        // A regular file is never clobbered.
        std::fs::write(&path, "not a socket").expect("write");
        let refused = bind(&ListenAddr::Unix(path.clone()), &settings).await;
        assert!(refused.is_err());
        assert_eq!(
            std::fs::read_to_string(&path).expect("kept"),
            "not a socket"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_canned_refusal_is_a_valid_response_with_a_cloudflare_envelope() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = response.parse(OVER_CAPACITY).expect("parses")
        else {
            panic!("incomplete");
        };
        assert_eq!(response.code, Some(503));
        let length: usize = response
            .headers
            .iter()
            .find(|h| h.name == "content-length")
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        let body = &OVER_CAPACITY[head..];
        assert_eq!(body.len(), length);
        let json: serde_json::Value = serde_json::from_slice(body).expect("json");
        assert_eq!(json["errors"][0]["code"], 10508);
        assert_eq!(json["success"], false);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_for_waits_for_the_last_activity_plus_the_timeout() {
        let activity = Activity {
            opened: Instant::now(),
            last_millis: AtomicU64::new(0),
        };
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.touch();
        let started = Instant::now();
        idle_for(&activity, Duration::from_secs(10)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
