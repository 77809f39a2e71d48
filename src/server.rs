//! The accept loop: owns listening sockets (TCP or a Unix domain socket), HTTP/1.1 and cleartext
//! HTTP/2 connection handling, the connection-level limits (connection count, header read time,
//! idle time, header size and count, HTTP/2 streams, windows and keep-alive pings), the hard
//! deadlines that close a connection whatever its peer does, and the graceful drain on shutdown.
//! It knows nothing about routes, caching or Cloudflare; it hands every request to a handler
//! function and writes back whatever response the handler returns. Request bodies are the
//! handler's: it reads them under its own deadline and byte bounds.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// Connection-level limits. Request-level limits (URI length, bodies and their read deadline,
/// requests waiting on upstream) belong to the handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Open connections at most; one more is answered with a canned 503 and closed.
    pub max_connections: usize,
    /// Time allowed to receive a request head (slow-loris), counted from the accept for the first
    /// request of a connection (HTTP/1.1 or HTTP/2 alike, so a peer that sends nothing, or only an
    /// HTTP/2 preface, is closed then) and by hyper for each later HTTP/1.1 head. It is also how
    /// long a connection that was asked to close may take to do so before it is dropped.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY first).
    /// Bytes that trickle in without completing a request do not extend it.
    pub idle_timeout: Duration,
    /// Largest request head hyper buffers, in bytes (at least 8192). A backstop: the handler
    /// enforces the real, smaller limits with Cloudflare-style envelopes; beyond this one hyper
    /// answers 414 or 431 without a body.
    pub max_head_bytes: usize,
    /// Most headers hyper parses in one HTTP/1.1 request (431 beyond). A backstop as above.
    pub max_headers: usize,
    /// Streams one HTTP/2 connection may have open at once (more are refused by the protocol).
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 flow-control window per stream and per connection, in bytes: how much request body
    /// a peer may send before the handler reads it, so the most a connection's buffers hold.
    pub http2_stream_window: u32,
    pub http2_connection_window: u32,
}

/// How often an HTTP/2 connection is pinged, and how long the peer has to answer before the
/// connection is closed as dead. Deliberately fixed: they only bound how long a vanished peer is
/// kept, which the idle timeout also does.
const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Response bytes buffered per HTTP/2 stream before the stream waits for its peer to read (hyper's
/// default is 400 KiB). Answers are small JSON documents; a peer that does not read holds at most
/// this much per stream.
const HTTP2_MAX_SEND_BUFFER: usize = 64 * 1024;

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_head_bytes: 64 * 1024,
            max_headers: 128,
            http2_max_concurrent_streams: 64,
            // The protocol's own initial windows (RFC 9113 §6.9.2): hyper's default is 1 MiB each.
            http2_stream_window: 65_535,
            http2_connection_window: 65_535,
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
    #[error("{0:?} is not an IP address and port (e.g. 127.0.0.1:14480) or unix:/path")]
    NotAnAddress(String),
}

impl ListenAddr {
    /// Pure: `127.0.0.1:14480`, `[::1]:14480` or `unix:/run/zt/sidecar.sock`.
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

/// What a connection's deadlines need to know of its requests: whether one ever started, how many
/// are in flight, and when the last one ended. Updated by [`InFlightGuard`] around each call of
/// the handler; read by the connection task only when one of its timers fires, so a request pays
/// two atomic updates and one clock read for it, and wakes nothing.
struct Requests {
    opened: Instant,
    in_flight: AtomicUsize,
    started: AtomicBool,
    /// When the last request ended, in milliseconds since the connection opened.
    last_end_millis: AtomicU64,
}

impl Requests {
    fn new(opened: Instant) -> Requests {
        Requests {
            opened,
            in_flight: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            last_end_millis: AtomicU64::new(0),
        }
    }

    fn start(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.store(true, Ordering::Relaxed);
        InFlightGuard(Arc::clone(self))
    }

    fn last_end(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_end_millis.load(Ordering::Relaxed))
    }
}

/// Counts one request in flight until the handler's future completes or is dropped.
struct InFlightGuard(Arc<Requests>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let requests = &self.0;
        let millis = u64::try_from(requests.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        requests.last_end_millis.store(millis, Ordering::Relaxed);
        requests.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once the connection has had no request in flight for `timeout`. While requests are in
/// flight it looks again every `timeout`: the handler bounds each request with its own deadlines.
async fn idle_for(requests: &Requests, timeout: Duration) {
    loop {
        if requests.in_flight.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(timeout).await;
            continue;
        }
        let deadline = requests.last_end() + timeout;
        tokio::time::sleep_until(deadline).await;
        if requests.in_flight.load(Ordering::Relaxed) == 0
            && requests.last_end() + timeout <= Instant::now()
        {
            return;
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The answer for a connection over the limit: written raw, without hyper, so that refusing costs
/// almost nothing.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 126\r\n\r\n{\"success\":false,\"errors\":[{\"code\":10508,\"message\":\"zt-risk-sidecar is at its connection limit\"}],\"messages\":[],\"result\":null}";

/// The connection counts of one accept loop: plain atomics that the loop bumps and a reader (the
/// metrics, at scrape time) loads, so the loop knows nothing of metrics. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ConnectionCounters(Arc<ConnectionCounts>);

#[derive(Debug, Default)]
struct ConnectionCounts {
    accepted: AtomicU64,
    refused: AtomicU64,
    open: AtomicU64,
}

impl ConnectionCounters {
    /// Connections accepted and served (each within the connection limit).
    pub fn accepted(&self) -> u64 {
        self.0.accepted.load(Ordering::Relaxed)
    }

    /// Connections refused at the connection limit.
    pub fn refused(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.0.open.load(Ordering::Relaxed)
    }

    fn opened(&self) -> OpenConnection {
        self.0.accepted.fetch_add(1, Ordering::Relaxed);
        self.0.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }
}

/// Counts one connection as open until dropped, however its task ends.
struct OpenConnection(ConnectionCounters);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0 .0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

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
    let counters = ConnectionCounters::default();
    serve_counted(listener, handler, shutdown, grace, limits, &counters).await
}

/// [`serve_with`], counting the connections it accepts, refuses and holds open in `counters`.
pub async fn serve_counted<H, Fut, E>(
    listener: impl Into<Listener>,
    handler: H,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: &ServerLimits,
    counters: &ConnectionCounters,
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
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .initial_stream_window_size(limits.http2_stream_window)
        .initial_connection_window_size(limits.http2_connection_window)
        .adaptive_window(false)
        .max_send_buf_size(HTTP2_MAX_SEND_BUFFER)
        .keep_alive_interval(HTTP2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEP_ALIVE_TIMEOUT);
    let builder = Arc::new(builder);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let refusals = Arc::new(Semaphore::new(MAX_CONCURRENT_REFUSALS));
    // Every connection task holds a sender; the drain is over when all are dropped.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let (draining, drain_signal) = watch::channel(false);
    let limits = Arc::new(limits.clone());
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
            counters.0.refused.fetch_add(1, Ordering::Relaxed);
            refuse(stream, &refusals);
            continue;
        };
        let open = counters.opened();
        let requests = Arc::new(Requests::new(Instant::now()));
        let io = TokioIo::new(stream);
        let service = {
            let requests = Arc::clone(&requests);
            let handler = handler.clone();
            service_fn(move |request| {
                let in_flight = requests.start();
                let response = handler(request);
                async move {
                    let response = response.await;
                    drop(in_flight);
                    response
                }
            })
        };
        let builder = Arc::clone(&builder);
        let alive = alive.clone();
        let mut drain_signal = drain_signal.clone();
        let limits = Arc::clone(&limits);
        tokio::spawn(async move {
            let connection = builder.serve_connection(io, service);
            tokio::pin!(connection);
            // Hard deadlines, whatever the peer does: the first request within the header read
            // timeout of the accept; a connection with nothing in flight for the idle timeout is
            // asked to close (HTTP/1.1: now, as no exchange is under way; HTTP/2: GOAWAY), and so
            // is every connection when the drain starts; one asked to close that has not finished
            // within its allowance is dropped, which closes the socket whatever is unread or
            // unwritten (an HTTP/2 peer that never answers the GOAWAY's ping, a reader that never
            // reads).
            let first_request_by = requests.opened + limits.header_read_timeout;
            let mut awaiting_first = true;
            let mut close_by: Option<Instant> = None;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%peer, error = %error, "connection ended with an error");
                        }
                        break;
                    }
                    () = tokio::time::sleep_until(first_request_by), if awaiting_first && close_by.is_none() => {
                        if !requests.started.load(Ordering::Relaxed) {
                            tracing::debug!(%peer, "closing a connection that sent no request in time");
                            break;
                        }
                        awaiting_first = false;
                    }
                    () = idle_for(&requests, limits.idle_timeout), if close_by.is_none() => {
                        tracing::debug!(%peer, "closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        close_by = Some(Instant::now() + limits.header_read_timeout);
                    }
                    changed = drain_signal.changed(), if close_by.is_none() => {
                        if changed.is_err() || *drain_signal.borrow() {
                            connection.as_mut().graceful_shutdown();
                            close_by = Some(Instant::now() + grace);
                        }
                    }
                    () = sleep_until_some(close_by), if close_by.is_some() => {
                        tracing::debug!(%peer, "dropping a connection that did not close in time");
                        break;
                    }
                }
            }
            drop(permit);
            drop(open);
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
    async fn idle_means_nothing_in_flight_for_the_whole_timeout() {
        let requests = Arc::new(Requests::new(Instant::now()));
        tokio::time::advance(Duration::from_secs(5)).await;
        // A request in flight for 25 s: the connection is not idle while it runs, however long.
        let in_flight = requests.start();
        let idle = tokio::spawn({
            let requests = Arc::clone(&requests);
            async move {
                idle_for(&requests, Duration::from_secs(10)).await;
                Instant::now()
            }
        });
        tokio::time::advance(Duration::from_secs(25)).await;
        assert!(!idle.is_finished(), "idle while a request was in flight");
        let ended = Instant::now();
        drop(in_flight);
        let idle_at = idle.await.expect("idle task");
        // Idle from the end of the request: within one look (every 10 s while busy) past
        // end + timeout, and never before it.
        assert!(
            idle_at >= ended + Duration::from_secs(10),
            "{:?}",
            idle_at - ended
        );
        assert!(
            idle_at <= ended + Duration::from_secs(20),
            "{:?}",
            idle_at - ended
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_is_idle_from_its_opening() {
        let opened = Instant::now();
        let requests = Requests::new(opened);
        idle_for(&requests, Duration::from_secs(10)).await;
        assert_eq!(opened.elapsed(), Duration::from_secs(10));
    }
}
