//! Hostile clients and a hostile upstream (issue 12): hard connection deadlines that a client
//! cannot extend (a connection that sends nothing, or only an HTTP/2 preface, is closed at the
//! header read timeout; an idle HTTP/2 connection whose peer never answers the GOAWAY's ping is
//! dropped), and an upstream answer that cannot be parsed. Real sockets; Tokio's paused clock
//! where time is the behaviour.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use zt_risk_sidecar::config::Config;

use crate::support::*;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3);
const IDLE_TIMEOUT: Duration = Duration::from_secs(8);

/// The whole app with short connection deadlines, on real loopback sockets.
async fn start_app(configure: impl FnOnce(&mut Config)) -> AppHarness {
    AppHarness::start(|config| {
        config.server_limits.header_read_timeout = HEADER_READ_TIMEOUT;
        config.server_limits.idle_timeout = IDLE_TIMEOUT;
        configure(config);
    })
    .await
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
    let running = start_app(|_| {}).await;
    let mut silent = TcpStream::connect(running.addr).await.expect("connect");
    let waited = closed_after(&mut silent, IDLE_TIMEOUT * 4).await;
    assert!(
        waited >= HEADER_READ_TIMEOUT && waited < IDLE_TIMEOUT,
        "closed after {waited:?}, not at the header read timeout"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_http2_preface_and_settings_without_a_request_is_closed_at_the_header_read_timeout() {
    let running = start_app(|_| {}).await;
    let mut peer = TcpStream::connect(running.addr).await.expect("connect");
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
    let running = start_app(|_| {}).await;
    let mut peer = TcpStream::connect(running.addr).await.expect("connect");
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

/// Sends a request with a body (and no credentials unless `headers` has them).
async fn send_body_to(
    harness: &Harness,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let url = harness.url(path);
    send_with_body(
        &client(),
        method,
        &url,
        headers,
        Bytes::from(body.to_owned()),
    )
    .await
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
    assert_error(&reply, http::StatusCode::BAD_GATEWAY, 10506);
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
    assert_eq!(
        harness.metric("zt_sidecar_upstream_requests_total{status=\"upstream-invalid-answer\"}"),
        1.0
    );
    assert_eq!(harness.metric("zt_sidecar_upstream_retries_total"), 0.0);
    // It counts for the breaker: one failure recorded.
    assert_eq!(
        harness.proxy.breaker().state(),
        zt_risk_sidecar::resilience::BreakerState::Closed {
            consecutive_failures: 1
        }
    );
    harness.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Stalled request bodies: a whole-body deadline, not a per-byte one.

const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A write's head as raw HTTP/1.1, with the caller's token and the given framing headers.
fn write_head(framing: &str) -> Vec<u8> {
    format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\n{framing}\r\n",
        collection_path(),
        bearer(TOKEN_A)
    )
    .into_bytes()
}

/// Reads one HTTP/1.1 answer and then the connection's end; returns the answer and when the
/// connection closed, measured from `since`. Bounded by `bound` of the (paused) clock.
async fn answer_then_close(
    stream: &mut TcpStream,
    since: Instant,
    bound: Duration,
) -> (Reply, Duration) {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(bound, stream.read_to_end(&mut bytes)).await;
    assert!(read.is_ok(), "still open after {bound:?}");
    (parse_http1(&bytes), since.elapsed())
}

#[tokio::test(start_paused = true)]
async fn stalled_request_bodies_get_a_408_at_the_body_read_timeout_and_the_connection_closes() {
    let running = start_app(|config| {
        config.request_limits.body_read_timeout = BODY_READ_TIMEOUT;
    })
    .await;
    // A head that promises 100 bytes, then nothing; a chunked body that stops after one chunk; a
    // body dripped one byte every 2 s (each byte well within any per-read timeout).
    let cases: [(&str, &str, Option<Duration>); 3] = [
        ("content-length, no body", "Content-Length: 100\r\n", None),
        (
            "one chunk, then nothing",
            "Transfer-Encoding: chunked\r\n",
            None,
        ),
        (
            "one byte every 2 s",
            "Content-Length: 100\r\n",
            Some(Duration::from_secs(2)),
        ),
    ];
    for (name, framing, drip) in cases {
        let mut stream = TcpStream::connect(running.addr).await.expect("connect");
        stream.write_all(&write_head(framing)).await.expect("head");
        if framing.contains("chunked") {
            stream.write_all(b"5\r\n{\"a\":\r\n").await.expect("chunk");
        }
        let started = Instant::now();
        if let Some(every) = drip {
            // Drip from another task so the reader below sees the answer when it comes.
            let (mut reader, mut writer) = stream.into_split();
            let dripper = tokio::spawn(async move {
                for _ in 0..100 {
                    tokio::time::sleep(every).await;
                    if writer.write_all(b" ").await.is_err() {
                        return;
                    }
                }
            });
            let mut bytes = Vec::new();
            let read = tokio::time::timeout(IDLE_TIMEOUT * 4, reader.read_to_end(&mut bytes)).await;
            assert!(read.is_ok(), "{name}: still open");
            let waited = started.elapsed();
            dripper.abort();
            let reply = parse_http1(&bytes);
            assert_error(&reply, http::StatusCode::REQUEST_TIMEOUT, 10408);
            assert!(
                waited >= BODY_READ_TIMEOUT && waited <= BODY_READ_TIMEOUT + Duration::from_secs(1),
                "{name}: answered after {waited:?}, not at the whole-body deadline"
            );
            continue;
        }
        let (reply, waited) = answer_then_close(&mut stream, started, IDLE_TIMEOUT * 4).await;
        assert_error(&reply, http::StatusCode::REQUEST_TIMEOUT, 10408);
        assert!(
            waited >= BODY_READ_TIMEOUT && waited <= BODY_READ_TIMEOUT + Duration::from_secs(1),
            "{name}: closed after {waited:?}"
        );
    }
    assert_eq!(
        running.handle().total_requests(),
        0,
        "nothing went upstream"
    );
    running.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Credentials: a refusal is never papered over; the sidecar's token never writes by default.

#[tokio::test(start_paused = true)]
async fn after_cloudflare_refuses_a_credential_none_of_its_stale_answers_come_back() {
    for refusal in [http::StatusCode::UNAUTHORIZED, http::StatusCode::FORBIDDEN] {
        let harness = Harness::start_with(|config| {
            config.ttl.positive = Duration::from_secs(60);
            // Past expiry the refresh is in the caller's request, not in the background.
            config.ttl.stale_while_revalidate = Duration::ZERO;
            config.upstream_retries = 0;
            config.breaker.failure_threshold = 0;
        })
        .await;
        let sim = harness.handle();
        for reference in ["revoked-1", "revoked-2"] {
            sim.insert_integration(ACCOUNT, reference, "https://tenant.okta.com");
        }
        let token_a = [("authorization", bearer(TOKEN_A))];
        let token_b = [("authorization", bearer(TOKEN_B))];
        let as_a: Vec<(&str, &str)> = token_a.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let as_b: Vec<(&str, &str)> = token_b.iter().map(|(n, v)| (*n, v.as_str())).collect();
        for reference in ["revoked-1", "revoked-2"] {
            let stored = harness.get(&lookup_path(ACCOUNT, reference), &as_a).await;
            assert_eq!(stored.status, http::StatusCode::OK);
        }
        let other = harness.get(&lookup_path(ACCOUNT, "revoked-1"), &as_b).await;
        assert_eq!(other.status, http::StatusCode::OK);
        tokio::time::advance(Duration::from_secs(61)).await;

        // Cloudflare refuses credential A for one key.
        sim.fail_next(1, Fault::Status(refusal));
        let refused = harness.get(&lookup_path(ACCOUNT, "revoked-1"), &as_a).await;
        assert_eq!(refused.status, refusal);

        // Cloudflare goes down: neither of A's expired answers stands in, for either key, while
        // B (never refused) still gets its stale answer.
        sim.set_fault(Some(Fault::Reset));
        for reference in ["revoked-1", "revoked-2"] {
            let reply = harness.get(&lookup_path(ACCOUNT, reference), &as_a).await;
            assert_ne!(
                reply.status,
                http::StatusCode::OK,
                "{refusal}: {reference} served stale to a refused credential: {}",
                reply.cache_status()
            );
            assert_error(&reply, http::StatusCode::BAD_GATEWAY, 10502);
        }
        let still_b = harness.get(&lookup_path(ACCOUNT, "revoked-1"), &as_b).await;
        assert_eq!(still_b.status, http::StatusCode::OK);
        assert!(
            still_b.cache_status().contains("stale"),
            "{}",
            still_b.cache_status()
        );

        // Once Cloudflare answers A with a success again, A is cached and served as before.
        sim.set_fault(None);
        let again = harness.get(&lookup_path(ACCOUNT, "revoked-1"), &as_a).await;
        assert_eq!(again.status, http::StatusCode::OK);
        assert!(
            again.cache_status().contains("stored"),
            "{}",
            again.cache_status()
        );
        harness.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_caller_credentials_never_use_the_sidecar_token() {
    let harness = Harness::start_with(|config| {
        config.token = Some(zt_risk_sidecar::credentials::Secret::new(
            TOKEN_A.to_owned(),
        ));
    })
    .await;
    let sim = harness.handle();
    let created = sim.insert_integration(ACCOUNT, "anonymous", "https://tenant.okta.com");
    let item = format!("{}/{}", collection_path(), created.id);
    let body = r#"{"integration_type":"Okta","tenant_url":"https://attacker.example","reference_id":"anonymous"}"#;
    for (method, path) in [
        (http::Method::POST, collection_path()),
        (http::Method::PUT, item.clone()),
        (http::Method::DELETE, item.clone()),
    ] {
        let reply = send_body_to(
            &harness,
            method.clone(),
            &path,
            &[("content-type", "application/json")],
            body,
        )
        .await;
        assert_error(&reply, http::StatusCode::BAD_REQUEST, 9106);
    }
    assert_eq!(sim.total_requests(), 0, "no write went upstream");
    // Reads still go with the sidecar's token.
    let read = harness.get(&lookup_path(ACCOUNT, "anonymous"), &[]).await;
    assert_eq!(read.status, http::StatusCode::OK);
    harness.stop().await;

    // An operator who enables it explicitly gets writes with the sidecar's token.
    let harness = Harness::start_with(|config| {
        config.token = Some(zt_risk_sidecar::credentials::Secret::new(
            TOKEN_A.to_owned(),
        ));
        config.writes_with_sidecar_token = true;
    })
    .await;
    let sim = harness.handle();
    let created = sim.insert_integration(ACCOUNT, "enabled", "https://tenant.okta.com");
    let item = format!("{}/{}", collection_path(), created.id);
    let deleted = send_body_to(&harness, http::Method::DELETE, &item, &[], "").await;
    assert_eq!(deleted.status, http::StatusCode::OK, "{:?}", deleted.body);
    assert_eq!(sim.total_requests(), 1);
    harness.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Lesser ones: Host, and the pending bound counting fetches rather than their waiters.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_need_exactly_one_host_header() {
    let running = start_app(|_| {}).await;
    let path = lookup_path(ACCOUNT, "okta");
    let auth = bearer(TOKEN_A);
    let no_host =
        format!("GET {path} HTTP/1.1\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n");
    let two_hosts = format!(
        "GET {path} HTTP/1.1\r\nHost: a\r\nHost: b\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    for request in [no_host, two_hosts] {
        let reply = raw_exchange(running.addr, request.as_bytes()).await;
        assert_error(&reply, http::StatusCode::BAD_REQUEST, 6003);
    }
    // HTTP/1.0 has no such rule, and one Host is fine (another key: the first's 404 is cached).
    let old = format!("GET {path} HTTP/1.0\r\nAuthorization: {auth}\r\n\r\n");
    assert_eq!(
        raw_exchange(running.addr, old.as_bytes()).await.status,
        http::StatusCode::NOT_FOUND
    );
    let other = lookup_path(ACCOUNT, "okta-2");
    let one = format!(
        "GET {other} HTTP/1.1\r\nHost: a\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        raw_exchange(running.addr, one.as_bytes()).await.status,
        http::StatusCode::NOT_FOUND
    );
    assert_eq!(
        running.handle().total_requests(),
        2,
        "only the valid requests went upstream"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_on_one_fetch_do_not_count_against_the_pending_fetch_bound() {
    let harness = Harness::start_with(|config| {
        config.request_limits.max_pending_lookups = 20;
    })
    .await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "crowded", "https://tenant.okta.com");
    let gate = sim.hold_requests();
    let harness = std::sync::Arc::new(harness);
    let callers: Vec<_> = (0..60)
        .map(|_| {
            let harness = std::sync::Arc::clone(&harness);
            tokio::spawn(async move {
                let auth = bearer(TOKEN_A);
                harness
                    .get(
                        &lookup_path(ACCOUNT, "crowded"),
                        &[("authorization", auth.as_str())],
                    )
                    .await
            })
        })
        .collect();
    // Every caller is either the fetch's leader or waiting on it before the answer is released.
    let deadline = Instant::now() + Duration::from_secs(30);
    while harness.proxy.in_flight() != (1, 59) {
        assert!(
            Instant::now() < deadline,
            "in flight: {:?}",
            harness.proxy.in_flight()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gate.release();
    for caller in callers {
        let reply = caller.await.expect("caller");
        assert_eq!(reply.status, http::StatusCode::OK, "{:?}", reply.body);
    }
    assert_eq!(sim.total_requests(), 1);
    match std::sync::Arc::try_unwrap(harness) {
        Ok(harness) => {
            harness.stop().await;
        }
        Err(_) => panic!("callers still hold the harness"),
    }
}

// ---------------------------------------------------------------------------------------------
// Memory held for clients: unfinished HTTP/2 request bodies on many streams.

/// A request body that sends `sent` bytes of the `declared` it promises, then never ends.
struct StalledBody {
    sent: Option<bytes::Bytes>,
    declared: u64,
}

impl hyper::body::Body for StalledBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.sent.take() {
            Some(bytes) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes)))),
            None => std::task::Poll::Pending,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.declared)
    }
}

/// The kernel's figure for the process, in KiB (`VmRSS`, `VmHWM` for the peak).
fn process_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_http2_bodies_on_thousands_of_streams_hold_bounded_memory() {
    const CONNECTIONS: usize = 20;
    const STREAMS: usize = 256;
    let sim = SimulatedCloudflare::start(SimConfig::default())
        .await
        .expect("sim");
    seed(&sim.handle());
    let upstream = sim.base_url();
    let mut sidecar = SidecarProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--body-read-timeout",
            "3s",
        ],
        &[],
    );
    let addr = sidecar.listening_addr();
    let pid = sidecar.pid();
    let baseline = process_kib(pid, "VmRSS");

    let mut connections = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..CONNECTIONS {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake::<_, StalledBody>(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("h2c handshake");
        connections.push(tokio::spawn(connection));
        for _ in 0..STREAMS {
            let mut sender = sender.clone();
            let request = http::Request::post(format!("http://{addr}{}", collection_path()))
                .header("authorization", bearer(TOKEN_A))
                .header("content-type", "application/json")
                .body(StalledBody {
                    sent: Some(bytes::Bytes::from(vec![b' '; 60_000])),
                    declared: 65_000,
                })
                .expect("request");
            answers.push(tokio::spawn(async move {
                sender.ready().await.ok()?;
                let response = sender.send_request(request).await.ok()?;
                Some(response.status())
            }));
        }
    }
    // Every stream is answered: refused at once (503) past the writes' bounds, or 408 at the body
    // read timeout. Bounded: the answers' task set is awaited within a minute.
    let statuses = tokio::time::timeout(Duration::from_secs(60), async {
        let mut statuses = Vec::new();
        for answer in answers {
            statuses.push(answer.await.expect("stream task"));
        }
        statuses
    })
    .await
    .expect("every stream answered within a minute");
    let peak = process_kib(pid, "VmHWM");
    // A stream is refused (503), answered 408 at the body read timeout, or reset with its
    // connection (hyper sends GOAWAY to a peer that makes it reset too many streams): never
    // anything else, and never a success.
    let count =
        |status: Option<http::StatusCode>| statuses.iter().filter(|s| **s == status).count();
    let refused = count(Some(http::StatusCode::SERVICE_UNAVAILABLE));
    let timed_out = count(Some(http::StatusCode::REQUEST_TIMEOUT));
    let reset = count(None);
    assert_eq!(
        refused + timed_out + reset,
        CONNECTIONS * STREAMS,
        "refused {refused}, timed out {timed_out}, reset {reset}: other answers came"
    );
    assert!(
        refused > 0 && timed_out > 0,
        "refused {refused}, timed out {timed_out}, reset {reset}"
    );
    eprintln!("streams: refused {refused}, timed out {timed_out}, reset {reset}; RSS {baseline} KiB before, peak {peak} KiB");
    assert!(
        peak.saturating_sub(baseline) <= 64 * 1024,
        "resident size grew from {baseline} KiB to a peak of {peak} KiB"
    );
    for connection in connections {
        connection.abort();
    }
    // The memory held for those clients is given back once their connections close.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        let now = process_kib(pid, "VmRSS");
        if now <= baseline + 16 * 1024 || std::time::Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        after <= baseline + 16 * 1024,
        "resident size {after} KiB after the connections closed, {baseline} KiB before"
    );
    assert_eq!(
        sim.handle().total_requests(),
        0,
        "no unfinished body went upstream"
    );
    sidecar.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, _) = sidecar.finish();
    assert_eq!(code, Some(0));
}

/// An HPACK "literal header field without indexing, new name" (RFC 7541 §6.2.2), for names and
/// values shorter than 127 bytes.
fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127, "short fields only");
    let mut bytes = vec![0x00, name.len() as u8];
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(value.len() as u8);
    bytes.extend_from_slice(value.as_bytes());
    bytes
}

#[tokio::test(start_paused = true)]
async fn an_http2_peer_that_stops_answering_pings_is_closed_while_its_request_waits() {
    let running = start_app(|config| {
        // Longer than anything else here: only the keep-alive ping can end this connection.
        config.request_timeout = Duration::from_secs(600);
        config.server_limits.idle_timeout = Duration::from_secs(600);
    })
    .await;
    let sim = running.handle();
    let gate = sim.hold_requests();
    let mut peer = TcpStream::connect(running.addr).await.expect("connect");
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    block.extend(hpack_literal(":path", &lookup_path(ACCOUNT, "held")));
    block.extend(hpack_literal(":authority", "x"));
    block.extend(hpack_literal("authorization", &bearer(TOKEN_A)));
    let mut hello = HTTP2_PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(frame(HEADERS, END_STREAM_AND_HEADERS, 1, &block));
    peer.write_all(&hello).await.expect("request");
    // The lookup waits on the held upstream; this peer answers nothing from now on.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.held() == 0 {
        assert!(
            Instant::now() < deadline,
            "the lookup never reached the upstream"
        );
        tokio::task::yield_now().await;
    }
    let waited = closed_after(&mut peer, Duration::from_secs(120)).await;
    // Pinged after 20 s without a frame, closed 10 s later without an answer.
    assert!(
        waited >= Duration::from_secs(20) && waited <= Duration::from_secs(31),
        "closed after {waited:?}"
    );
    gate.release();
    running.stop().await;
}
