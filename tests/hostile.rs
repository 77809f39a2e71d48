//! Hostile clients and a hostile upstream (issue 12): hard connection deadlines that a client
//! cannot extend (a connection that sends nothing, or only an HTTP/2 preface, is closed at the
//! header read timeout; an idle HTTP/2 connection whose peer never answers the GOAWAY's ping is
//! dropped), and an upstream answer that cannot be parsed. Real sockets; Tokio's paused clock
//! where time is the behaviour.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use zt_risk_sidecar::config::Config;
use zt_risk_sidecar::server::DrainOutcome;
use zt_risk_sidecar::simulator::{SimConfig, SimulatedCloudflare};
use zt_risk_sidecar::App;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3);
const IDLE_TIMEOUT: Duration = Duration::from_secs(8);

/// The whole app with short connection deadlines, on real loopback sockets.
struct Running {
    sim: SimulatedCloudflare,
    lookups: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<DrainOutcome>,
}

impl Running {
    async fn start() -> Running {
        Running::start_with(|_| {}).await
    }

    async fn start_with(configure: impl FnOnce(&mut Config)) -> Running {
        let sim = SimulatedCloudflare::start(SimConfig::default())
            .await
            .expect("sim");
        seed(&sim.handle());
        let mut config = test_config(&sim.base_url());
        config.server_limits.header_read_timeout = HEADER_READ_TIMEOUT;
        config.server_limits.idle_timeout = IDLE_TIMEOUT;
        configure(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let lookups = listener.local_addr().expect("addr");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("admin");
        let app = App::new(&config).expect("app");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.serve(listener, admin, Duration::from_secs(5), async move {
                let _ = stopped.await;
            })
            .await
        });
        Running {
            sim,
            lookups,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("app");
        self.sim.shutdown().await;
    }
}

/// Reads until the server closes the connection (EOF or reset) and says when that was. Bounded:
/// the paused clock moves to the next timer, so a server that never closes fails at the bound.
async fn closed_after(stream: &mut TcpStream, bound: Duration) -> Duration {
    let started = Instant::now();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(bound, stream.read_to_end(&mut sink)).await;
    assert!(
        read.is_ok(),
        "the connection was still open after {bound:?}"
    );
    started.elapsed()
}

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("small frame");
    let mut bytes = length.to_be_bytes()[1..].to_vec();
    bytes.push(kind);
    bytes.push(flags);
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;

/// `GET /` with authority `x`, in HPACK from the static table only: `:method GET` (2),
/// `:scheme http` (6), `:path /` (4), then `:authority` (name 1) as a literal with indexing.
const GET_ROOT_HPACK: &[u8] = &[0x82, 0x86, 0x84, 0x41, 0x01, b'x'];

/// Reads frames until one on `stream` carries END_STREAM (true), or the connection ends (false).
async fn read_until_stream_ends(peer: &mut TcpStream, stream: u32) -> bool {
    loop {
        let mut head = [0u8; 9];
        if peer.read_exact(&mut head).await.is_err() {
            return false;
        }
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; length];
        if peer.read_exact(&mut payload).await.is_err() {
            return false;
        }
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let data_or_headers = kind == 0x0 || kind == HEADERS;
        if id == stream && data_or_headers && flags & 0x1 != 0 {
            return true;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_read_timeout() {
    let running = Running::start().await;
    let mut silent = TcpStream::connect(running.lookups).await.expect("connect");
    let waited = closed_after(&mut silent, IDLE_TIMEOUT * 4).await;
    assert!(
        waited >= HEADER_READ_TIMEOUT && waited < IDLE_TIMEOUT,
        "closed after {waited:?}, not at the header read timeout"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_http2_preface_and_settings_without_a_request_is_closed_at_the_header_read_timeout() {
    let running = Running::start().await;
    let mut peer = TcpStream::connect(running.lookups).await.expect("connect");
    let mut hello = HTTP2_PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    peer.write_all(&hello).await.expect("preface");
    let waited = closed_after(&mut peer, IDLE_TIMEOUT * 4).await;
    assert!(
        waited >= HEADER_READ_TIMEOUT && waited < IDLE_TIMEOUT,
        "closed after {waited:?}, not at the header read timeout"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_http2_connection_whose_peer_never_answers_is_dropped() {
    let running = Running::start().await;
    let mut peer = TcpStream::connect(running.lookups).await.expect("connect");
    let mut hello = HTTP2_PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(frame(HEADERS, END_STREAM_AND_HEADERS, 1, GET_ROOT_HPACK));
    peer.write_all(&hello).await.expect("request");
    // The server's answer (SETTINGS, then the 404's HEADERS and DATA) arrives; this peer then
    // never writes again: no SETTINGS ack, no PING answer, no GOAWAY answer.
    let answer_end = tokio::time::timeout(IDLE_TIMEOUT, read_until_stream_ends(&mut peer, 1))
        .await
        .expect("the answer within the idle timeout");
    assert!(answer_end, "the connection closed before the answer ended");
    let answered_at = Instant::now();
    let waited = closed_after(&mut peer, IDLE_TIMEOUT * 4).await;
    let total = answered_at.elapsed().max(waited);
    // Idle from the answer, then GOAWAY; the peer that never answers is dropped after at most the
    // header read timeout more.
    assert!(
        total >= IDLE_TIMEOUT && total <= IDLE_TIMEOUT + HEADER_READ_TIMEOUT,
        "closed after {total:?}"
    );
    running.stop().await;
}

/// A plain-HTTP "Cloudflare" on loopback that answers every request with a head of `headers`
/// headers, and counts the requests it was sent.
async fn hostile_upstream(
    headers: usize,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&requests);
    let mut answer = String::from("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n");
    for index in 0..headers {
        answer.push_str(&format!("x-filler-{index}: {index}\r\n"));
    }
    answer.push_str("content-length: 2\r\n\r\n{}");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            let counted = std::sync::Arc::clone(&counted);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (format!("http://{addr}/client/v4"), requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answer_with_too_many_headers_is_a_bad_answer_and_not_retried() {
    let (base, upstream_requests) = hostile_upstream(3000).await;
    let mut config = test_config(&base);
    config.token = Some(zt_risk_sidecar::credentials::Secret::new(
        "sidecar-token".to_owned(),
    ));
    let harness = Harness::start_in_front_of(
        SimulatedCloudflare::start(SimConfig::default())
            .await
            .expect("sim"),
        config,
    )
    .await;
    let reply = harness.get(&lookup_path(ACCOUNT, "okta"), &[]).await;
    assert_eq!(reply.status, http::StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code(), 10506, "{:?}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "an envelope"
    );
    assert!(
        reply
            .cache_status()
            .contains("detail=upstream-invalid-answer"),
        "{}",
        reply.cache_status()
    );
    // One call: a bad answer is not a failure to reach Cloudflare, so it is not retried (the
    // default allows two retries).
    assert_eq!(
        upstream_requests.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // It counts for the breaker: one failure recorded.
    assert_eq!(
        harness.proxy.breaker().state(),
        zt_risk_sidecar::resilience::BreakerState::Closed {
            consecutive_failures: 1
        }
    );
    harness.stop().await;
}
