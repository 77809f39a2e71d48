//! Hostile input and hostile neighbours: request and connection limits, slow clients, floods, the
//! open-proxy attempts, the Unix domain socket listener, the account allow-list, and TLS to the
//! upstream (verification with the right and the wrong root, through an HTTP proxy tunnel). The
//! real server and the simulated API run on real loopback sockets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zt_risk_sidecar::routes::AccountId;
use zt_risk_sidecar::server::{ListenAddr, ServerLimits, UnixSocketSettings};
use zt_risk_sidecar::upstream::{ProxyUrl, UpstreamBase};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_get_envelopes_with_the_right_status() {
    let running = AppHarness::start(|config| {
        config.request_limits.max_uri_bytes = 512;
        config.request_limits.max_request_headers = 16;
        config.request_limits.max_header_bytes = 2048;
    })
    .await;
    let long_target = lookup_path(ACCOUNT, &"a".repeat(600));
    let too_long = running.raw(&raw_get(&long_target, "")).await;
    assert_error(&too_long, StatusCode::URI_TOO_LONG, 10414);

    let many: String = (0..20).map(|i| format!("X-Filler-{i}: x\r\n")).collect();
    let too_many = running
        .raw(&raw_get(&lookup_path(ACCOUNT, "x"), &many))
        .await;
    assert_error(
        &too_many,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        10431,
    );

    let big = format!("X-Big: {}\r\n", "b".repeat(3000));
    let too_big = running
        .raw(&raw_get(&lookup_path(ACCOUNT, "x"), &big))
        .await;
    assert_error(&too_big, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, 10431);

    let with_body = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        lookup_path(ACCOUNT, "x"),
        bearer(TOKEN_A)
    );
    let body = running.raw(with_body.as_bytes()).await;
    assert_error(&body, StatusCode::BAD_REQUEST, 10400);
    let chunked = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        lookup_path(ACCOUNT, "x"),
        bearer(TOKEN_A)
    );
    assert_error(
        &running.raw(chunked.as_bytes()).await,
        StatusCode::BAD_REQUEST,
        10400,
    );
    assert_eq!(running.handle().total_requests(), 0);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn slow_and_idle_clients_are_disconnected() {
    let running = AppHarness::start(|config| {
        config.server_limits = ServerLimits {
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            ..ServerLimits::default()
        };
    })
    .await;
    // Slow-loris: half a request head, then nothing. The paused clock moves to the timeout.
    let mut slow = TcpStream::connect(running.addr).await.expect("connect");
    slow.write_all(b"GET /client/v4/accounts/")
        .await
        .expect("write");
    let started = tokio::time::Instant::now();
    read_until_closed(&mut slow, Duration::from_secs(60)).await;
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "closed at the header read timeout"
    );

    // An idle keep-alive connection after a complete exchange is closed too.
    let mut idle = TcpStream::connect(running.addr).await.expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(read_once(&mut idle).await.starts_with(b"HTTP/1.1 404"));
    let waited = tokio::time::Instant::now();
    read_until_closed(&mut idle, Duration::from_secs(60)).await;
    assert!(
        waited.elapsed() <= Duration::from_secs(30),
        "{:?}",
        waited.elapsed()
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    // The header read timeout is far longer than the idle timeout here, so that only the idle
    // timeout can be what closes the connection (with the defaults either could).
    let idle_timeout = Duration::from_secs(5);
    let running = AppHarness::start(|config| {
        config.server_limits = ServerLimits {
            header_read_timeout: Duration::from_secs(120),
            idle_timeout,
            ..ServerLimits::default()
        };
    })
    .await;
    let mut idle = TcpStream::connect(running.addr).await.expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(read_once(&mut idle).await.starts_with(b"HTTP/1.1 404"));
    let waited = tokio::time::Instant::now();
    read_until_closed(&mut idle, Duration::from_secs(60)).await;
    assert_eq!(waited.elapsed(), idle_timeout, "closed at the idle timeout");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_a_fast_503() {
    let running = AppHarness::start(|config| {
        config.server_limits.max_connections = 2;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(running.addr).await.expect("connect");
        // A complete request proves the server has taken the connection (and its permit).
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        assert!(read_once(&mut stream).await.starts_with(b"HTTP/1.1 404"));
        held.push(stream);
    }
    let refused = running.raw(&raw_get(&lookup_path(ACCOUNT, "x"), "")).await;
    assert_error(&refused, StatusCode::SERVICE_UNAVAILABLE, 10508);
    // The metrics count both sides of the limit (the admin listener's connections are not
    // counted: they are not the lookup listener's).
    let metrics = running.admin(http::Method::GET, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for line in [
        "zt_sidecar_connections_accepted_total 2",
        "zt_sidecar_connections_refused_total 1",
        "zt_sidecar_connections_open 2",
    ] {
        assert!(text.lines().any(|sample| sample == line), "{line}:\n{text}");
    }
    drop(held);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_misses_is_bounded_and_cached_lookups_are_still_served() {
    let running = AppHarness::start(|config| {
        config.request_limits.max_pending_lookups = 4;
    })
    .await;
    let sim = running.handle();
    sim.insert_integration(ACCOUNT, "cached", TENANT);
    let cached = running
        .raw(&raw_get(&lookup_path(ACCOUNT, "cached"), ""))
        .await;
    assert_eq!(cached.status, StatusCode::OK);
    let gate = sim.hold_requests();
    let addr = running.addr;
    let flood: Vec<_> = (0..4)
        .map(|index| {
            tokio::spawn(async move {
                raw_exchange(
                    addr,
                    &raw_get(&lookup_path(ACCOUNT, &format!("flood-{index}")), ""),
                )
                .await
            })
        })
        .collect();
    wait_until("the four misses are held upstream", WAIT_LIMIT, || {
        sim.held() == 4
    })
    .await;
    // The four waiting lookups fill the bound: the next miss is refused at once...
    let refused = raw_exchange(addr, &raw_get(&lookup_path(ACCOUNT, "one-more"), "")).await;
    assert_error(&refused, StatusCode::SERVICE_UNAVAILABLE, 10508);
    let metrics = running.admin(http::Method::GET, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let counted = "zt_sidecar_refusals_total{reason=\"pending-lookups\"} 1";
    assert!(text.lines().any(|sample| sample == counted), "{text}");
    // ...while a cached lookup is served as usual.
    let hit = raw_exchange(addr, &raw_get(&lookup_path(ACCOUNT, "cached"), "")).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_cache_status_contains(&hit, "hit");
    gate.release();
    for lookup in flood {
        assert_eq!(
            lookup.await.expect("flood task").status,
            StatusCode::NOT_FOUND
        );
    }
    running.stop().await;
}

/// What an attempt must lead to: a local answer (status and error code) with no upstream traffic,
/// or exactly this upstream path (the configured host, the one route, one encoded segment).
enum Expect {
    Local(u16, i64),
    Forwarded(&'static str),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_can_make_the_sidecar_an_open_proxy() {
    let running = AppHarness::start(|_| {}).await;
    let sim = running.handle();
    let prefix = format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id");
    let cases: Vec<(String, String, Expect)> = vec![
        // (request target, Host header and any extra lines, expectation)
        (
            format!("http://evil.example{prefix}/x"),
            String::new(),
            Expect::Local(404, 7000),
        ),
        (
            format!("https://evil.example:8443{prefix}/x"),
            String::new(),
            Expect::Local(404, 7000),
        ),
        (
            format!("//evil.example{prefix}/x"),
            String::new(),
            Expect::Local(404, 7000),
        ),
        (
            "evil.example:443".into(),
            String::new(),
            Expect::Local(404, 7000),
        ),
        ("*".into(), String::new(), Expect::Local(404, 7000)),
        (
            format!("{prefix}/x1"),
            "evil.example".into(),
            Expect::Forwarded("x1"),
        ),
        (
            format!("{prefix}/x2"),
            "127.0.0.1\r\nX-Forwarded-Host: evil.example\r\nForwarded: host=evil".into(),
            Expect::Forwarded("x2"),
        ),
        (
            format!("{prefix}/x3"),
            "evil.example:8443\r\nX-Forwarded-Proto: http".into(),
            Expect::Forwarded("x3"),
        ),
        (
            format!("{prefix}/a%2Fb"),
            String::new(),
            Expect::Forwarded("a%2Fb"),
        ),
        (
            format!("{prefix}/a%252Fb"),
            String::new(),
            Expect::Forwarded("a%252Fb"),
        ),
        (
            format!("{prefix}/..%2F..%2Fuser%2Ftokens"),
            String::new(),
            Expect::Forwarded("..%2F..%2Fuser%2Ftokens"),
        ),
        (
            format!("{prefix}/%2E%2E"),
            String::new(),
            Expect::Local(400, 7003),
        ),
        (
            format!("{prefix}/.."),
            String::new(),
            Expect::Local(400, 7003),
        ),
        (
            format!("{prefix}/%2e"),
            String::new(),
            Expect::Local(400, 7003),
        ),
        (
            format!("{prefix}/../../user/tokens"),
            String::new(),
            Expect::Local(404, 7000),
        ),
        (
            format!("{prefix}/x/../../../../user/tokens"),
            String::new(),
            Expect::Local(404, 7000),
        ),
        // A raw backslash is not a separator here: it becomes part of the id, encoded.
        (
            format!("{prefix}/a\\b"),
            String::new(),
            Expect::Forwarded("a%5Cb"),
        ),
        (
            format!("{prefix}/c%5Cd"),
            String::new(),
            Expect::Forwarded("c%5Cd"),
        ),
        (
            format!("{prefix}/a%00b"),
            String::new(),
            Expect::Local(400, 7003),
        ),
        (
            format!("{prefix}/%C0%AF"),
            String::new(),
            Expect::Local(400, 7003),
        ),
        (
            format!("{prefix}/%E0%80%AE%E0%80%AE"),
            String::new(),
            Expect::Local(400, 7003),
        ),
        (
            format!("{prefix}/x%3F.evil%23"),
            String::new(),
            Expect::Forwarded("x%3F.evil%23"),
        ),
        (
            format!("{prefix}/x4?../../user/tokens"),
            String::new(),
            Expect::Forwarded("x4"),
        ),
        // A fragment is not part of the path (the http crate drops it): never forwarded.
        (
            format!("{prefix}/x5#/../../user/tokens"),
            String::new(),
            Expect::Forwarded("x5"),
        ),
        (
            format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/behaviors"),
            String::new(),
            Expect::Local(404, 7000),
        ),
        (
            format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/summary"),
            String::new(),
            Expect::Local(404, 7000),
        ),
        (
            "/client/v4/user/tokens/verify".into(),
            String::new(),
            Expect::Local(404, 7000),
        ),
        (
            format!("/client/v4/accounts/{ACCOUNT}%2Fzt_risk_scoring/integrations/reference_id/x"),
            String::new(),
            Expect::Local(404, 7000),
        ),
        (
            format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id%2Fx"),
            String::new(),
            Expect::Local(400, 7003),
        ),
        (
            format!(
                "/client/v4/accounts/..%2F{ACCOUNT}/zt_risk_scoring/integrations/reference_id/x"
            ),
            String::new(),
            Expect::Local(400, 7003),
        ),
        (
            format!("/CLIENT/V4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/x"),
            String::new(),
            Expect::Local(404, 7000),
        ),
    ];
    for (target, host, expected) in cases {
        sim.reset_counters();
        let host = if host.is_empty() {
            "127.0.0.1".to_owned()
        } else {
            host
        };
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            bearer(TOKEN_A)
        );
        let reply = running.raw(request.as_bytes()).await;
        match expected {
            Expect::Local(status, code) => {
                assert_eq!(reply.status.as_u16(), status, "{target}: {:?}", reply.body);
                assert_error(&reply, reply.status, code);
                assert_eq!(sim.total_requests(), 0, "{target} reached upstream");
            }
            Expect::Forwarded(segment) => {
                assert_eq!(sim.total_requests(), 1, "{target}");
                let recorded = sim.recorded();
                let forwarded = &recorded[0];
                assert_eq!(
                    forwarded.path_and_query,
                    format!("{prefix}/{segment}"),
                    "{target}"
                );
                let host = forwarded
                    .headers
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                assert_eq!(
                    host,
                    running.sim.addr().to_string(),
                    "{target}: the configured host"
                );
                assert!(forwarded.headers.get("x-forwarded-host").is_none());
                assert!(forwarded.headers.get("forwarded").is_none());
            }
        }
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_accounts_are_refused_locally_when_an_allow_list_is_set() {
    let running = AppHarness::start(|config| {
        config.allowed_accounts = Some(vec![AccountId::parse(ACCOUNT).expect("account")]);
    })
    .await;
    let sim = running.handle();
    let allowed = running.raw(&raw_get(&lookup_path(ACCOUNT, "x"), "")).await;
    assert_eq!(allowed.status, StatusCode::NOT_FOUND);
    let other = running
        .raw(&raw_get(&lookup_path(OTHER_ACCOUNT, "x"), ""))
        .await;
    assert_error(&other, StatusCode::FORBIDDEN, 9109);
    assert_eq!(
        sim.requests(SimRoute::ReferenceGet),
        1,
        "only the allowed account went upstream"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_listener_serves_lookups_with_its_file_mode() {
    let sim = start_simulator().await;
    sim.handle().insert_integration(ACCOUNT, "uds", TENANT);
    let dir = tempdir();
    let path = dir.join("sidecar.sock");
    let mut config = test_config(&sim.base_url());
    config.listen = ListenAddr::Unix(path.clone());
    config.unix_socket = UnixSocketSettings {
        mode: 0o600,
        group: Some(nix::unistd::getgid().as_raw().to_string()),
    };
    let listener = zt_risk_sidecar::server::bind(&config.listen, &config.unix_socket)
        .await
        .expect("bind unix socket");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let serving = ServingApp::start(&config, listener).await;
    for expected in ["fwd=miss", "hit"] {
        let mut stream = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        stream
            .write_all(&raw_get(&lookup_path(ACCOUNT, "uds"), ""))
            .await
            .expect("write");
        let reply = parse_http1(&read_until_closed(&mut stream, ANSWER_LIMIT).await);
        assert_eq!(reply.status, StatusCode::OK);
        assert_cache_status_contains(&reply, expected);
    }
    serving.stop().await;
    assert!(!path.exists(), "the socket file is removed on shutdown");
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

/// A minimal HTTP CONNECT proxy on loopback that records the targets it was asked for.
async fn connect_proxy(seen: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let target = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                seen.lock()
                    .expect("lock")
                    .push(text.lines().next().unwrap_or("").to_owned());
                let Ok(target_addr) = target.parse::<SocketAddr>() else {
                    let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                    return;
                };
                assert!(
                    target_addr.ip().is_loopback(),
                    "the test proxy only reaches loopback"
                );
                let Ok(mut upstream) = TcpStream::connect(target_addr).await else {
                    return;
                };
                if client
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    addr
}

/// SECURITY.md: "TLS 1.2+ with rustls". The sidecar completes the handshake with an upstream
/// that speaks only TLS 1.2 and with one that speaks only TLS 1.3 (rustls speaks nothing older).
/// Fails when `upstream.rs` offers only TLS 1.3 (`with_protocol_versions(&[&TLS13])` instead of
/// the safe defaults) or the `tls12` feature of rustls is dropped: the TLS 1.2 front then gets
/// no handshake and the lookup is a 502 (code 10502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_upstream_speaks_tls_1_2_and_1_3() {
    let sim = start_simulator().await;
    sim.handle()
        .insert_integration(ACCOUNT, "tls-versions", TENANT);
    let pki = make_pki("versions");
    let dir = tempdir();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write");
    for (name, version) in [
        ("TLS 1.2", &rustls::version::TLS12),
        ("TLS 1.3", &rustls::version::TLS13),
    ] {
        let front = tls_front_speaking(&pki, sim.addr(), &[version]).await;
        let mut config = test_config(&sim.base_url());
        config.upstream = UpstreamBase::parse(
            &format!("https://127.0.0.1:{}/client/v4", front.port()),
            false,
        )
        .expect("https upstream");
        config.tls.extra_ca_file = Some(ca.clone());
        config.upstream_retries = 0;
        let idle = SimulatedCloudflare::start(SimConfig::default())
            .await
            .expect("idle sim");
        let harness = Harness::start_in_front_of(idle, config).await;
        let reply = harness
            .get_as(&lookup_path(ACCOUNT, "tls-versions"), TOKEN_A)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{name}: {:?}", reply.body);
        harness.stop().await;
    }
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 2);
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_upstream_verifies_against_the_configured_roots() {
    let sim = start_simulator().await;
    sim.handle().insert_integration(ACCOUNT, "tls", TENANT);
    let pki = make_pki("right");
    let front = tls_front(&pki, sim.addr()).await;
    let dir = tempdir();
    let right_ca = dir.join("right-ca.pem");
    std::fs::write(&right_ca, &pki.ca_pem).expect("write");
    let wrong_ca = dir.join("wrong-ca.pem");
    std::fs::write(&wrong_ca, make_pki("wrong").ca_pem).expect("write");
    let https_base = format!("https://127.0.0.1:{}/client/v4", front.port());

    let run = |extra_ca: Option<std::path::PathBuf>, proxy: Option<ProxyUrl>| {
        let mut config = test_config(&sim.base_url());
        config.upstream = UpstreamBase::parse(&https_base, false).expect("https upstream");
        config.tls.extra_ca_file = extra_ca;
        config.https_proxy = proxy;
        config.upstream_retries = 0;
        config
    };
    let path = lookup_path(ACCOUNT, "tls");

    // The right root: verified, answered, over TLS.
    let sim_for_right = SimulatedCloudflare::start(SimConfig::default())
        .await
        .expect("idle sim");
    let right = Harness::start_in_front_of(sim_for_right, run(Some(right_ca.clone()), None)).await;
    let reply = right.get_as(&path, TOKEN_A).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 1);
    right.stop().await;

    // A different root, or only the built-in web roots: the handshake fails, nothing is sent.
    for extra in [Some(wrong_ca.clone()), None] {
        let idle = SimulatedCloudflare::start(SimConfig::default())
            .await
            .expect("idle sim");
        let wrong = Harness::start_in_front_of(idle, run(extra.clone(), None)).await;
        let reply = wrong.get_as(&path, TOKEN_A).await;
        assert_error(&reply, StatusCode::BAD_GATEWAY, 10502);
        wrong.stop().await;
    }
    assert_eq!(
        sim.handle().requests(SimRoute::ReferenceGet),
        1,
        "no request crossed a failed handshake"
    );

    // Through an HTTP proxy: CONNECT to the upstream, then TLS inside the tunnel.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let proxy_addr = connect_proxy(Arc::clone(&seen)).await;
    let proxy = ProxyUrl::parse(&format!("http://{proxy_addr}")).expect("proxy url");
    let idle = SimulatedCloudflare::start(SimConfig::default())
        .await
        .expect("idle sim");
    let proxied = Harness::start_in_front_of(idle, run(Some(right_ca.clone()), Some(proxy))).await;
    let reply = proxied.get_as(&path, TOKEN_B).await;
    assert_eq!(reply.status, StatusCode::OK);
    let lines = seen.lock().expect("lock").clone();
    assert_eq!(
        lines,
        vec![format!("CONNECT 127.0.0.1:{} HTTP/1.1", front.port())]
    );
    proxied.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

/// README: `tls_roots = "system"` verifies Cloudflare's certificate against the operating
/// system's store (rustls-native-certs, which reads the store from `SSL_CERT_FILE` when that is
/// set, as OpenSSL does). The real binary, with its own test CA made the system's store, connects
/// and answers; with another CA as the store, and with the host's own store, the test CA is
/// unknown and the handshake is refused (502, code 10502, nothing reaches the upstream). The
/// host's store must load for the binary to start at all. Fails when `system` uses the compiled-in
/// roots instead, or when an unknown CA is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_roots_system_trusts_the_operating_systems_store_only() {
    let sim = start_simulator().await;
    sim.handle()
        .insert_integration(ACCOUNT, "tls-system", TENANT);
    let pki = make_pki("system");
    let front = tls_front(&pki, sim.addr()).await;
    let dir = tempdir();
    let right_store = dir.join("right-store.pem");
    std::fs::write(&right_store, &pki.ca_pem).expect("write");
    let wrong_store = dir.join("wrong-store.pem");
    std::fs::write(&wrong_store, make_pki("other").ca_pem).expect("write");
    let https_base = format!("https://127.0.0.1:{}/client/v4", front.port());
    let right_store = right_store.to_str().expect("utf-8");
    let wrong_store = wrong_store.to_str().expect("utf-8");
    for (store, answered) in [
        (Some(right_store), true),
        (Some(wrong_store), false),
        (None, false),
    ] {
        let env: Vec<(&str, &str)> = store
            .map(|file| vec![("SSL_CERT_FILE", file)])
            .unwrap_or_default();
        let mut running = SidecarProcess::start_in_front_of(
            &https_base,
            &["--tls-roots", "system", "--upstream-retries", "0"],
            &env,
        );
        let lookups = Endpoint::new(running.listening_addr());
        let reply = lookups
            .get_as(&lookup_path(ACCOUNT, "tls-system"), TOKEN_A)
            .await;
        if answered {
            assert_eq!(reply.status, StatusCode::OK, "{store:?}: {reply:?}");
        } else {
            assert_error(&reply, StatusCode::BAD_GATEWAY, 10502);
        }
        running.terminate().await;
    }
    assert_eq!(
        sim.handle().requests(SimRoute::ReferenceGet),
        1,
        "no request crossed a refused handshake"
    );
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

/// SECURITY.md: HTTP/2 streams per connection and the flow-control windows are "set
/// deliberately", from `http2_max_concurrent_streams`, `http2_stream_window` and
/// `http2_connection_window`. A raw cleartext HTTP/2 client reads what the server announces: its
/// SETTINGS (`MAX_CONCURRENT_STREAMS`, `INITIAL_WINDOW_SIZE`) and the connection window's
/// `WINDOW_UPDATE` past the protocol's 65,535 bytes. Fails when `server.rs` stops passing any of
/// the three to hyper (its own defaults differ from these values).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_and_windows_are_announced_as_configured() {
    const STREAMS: u32 = 7;
    const STREAM_WINDOW: u32 = 100_000;
    const CONNECTION_WINDOW: u32 = 1_000_000;
    let running = AppHarness::start(|config| {
        config.server_limits.http2_max_concurrent_streams = STREAMS;
        config.server_limits.http2_stream_window = STREAM_WINDOW;
        config.server_limits.http2_connection_window = CONNECTION_WINDOW;
    })
    .await;
    let mut stream = TcpStream::connect(running.addr).await.expect("connect");
    // The client preface and an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&hello).await.expect("preface");

    let mut settings: Option<Vec<(u16, u32)>> = None;
    let mut connection_window_increment = None;
    let mut received = Vec::new();
    let read_frames = async {
        while settings.is_none() || connection_window_increment.is_none() {
            let mut buffer = [0u8; 4096];
            let read = stream.read(&mut buffer).await.expect("read");
            assert!(
                read > 0,
                "the server closed the connection before announcing both: {settings:?}, {connection_window_increment:?}"
            );
            received.extend_from_slice(&buffer[..read]);
            // Parse every whole frame received so far: a 9-byte header, then the payload.
            while received.len() >= 9 {
                let length = usize::from(received[0]) << 16
                    | usize::from(received[1]) << 8
                    | usize::from(received[2]);
                if received.len() < 9 + length {
                    break;
                }
                let (kind, flags) = (received[3], received[4]);
                let stream_id =
                    u32::from_be_bytes([received[5], received[6], received[7], received[8]])
                        & 0x7fff_ffff;
                let payload: Vec<u8> = received.drain(..9 + length).skip(9).collect();
                match (kind, flags & 1, stream_id) {
                    // SETTINGS, not an acknowledgement: six bytes per setting.
                    (4, 0, 0) => {
                        settings = Some(
                            payload
                                .chunks_exact(6)
                                .map(|entry| {
                                    (
                                        u16::from_be_bytes([entry[0], entry[1]]),
                                        u32::from_be_bytes([
                                            entry[2], entry[3], entry[4], entry[5],
                                        ]),
                                    )
                                })
                                .collect(),
                        );
                    }
                    // WINDOW_UPDATE of the connection.
                    (8, _, 0) => {
                        connection_window_increment = Some(
                            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                                & 0x7fff_ffff,
                        );
                    }
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(WAIT_LIMIT, read_frames)
        .await
        .expect("the server's SETTINGS and connection WINDOW_UPDATE within the wait limit");
    let settings = settings.expect("SETTINGS");
    let announced = |id: u16| {
        settings
            .iter()
            .rev()
            .find(|(key, _)| *key == id)
            .map(|(_, value)| *value)
    };
    // 0x3: SETTINGS_MAX_CONCURRENT_STREAMS; 0x4: SETTINGS_INITIAL_WINDOW_SIZE (RFC 9113, 6.5.2).
    assert_eq!(announced(0x3), Some(STREAMS), "{settings:?}");
    assert_eq!(announced(0x4), Some(STREAM_WINDOW), "{settings:?}");
    assert_eq!(
        connection_window_increment,
        Some(CONNECTION_WINDOW - 65_535),
        "the connection window starts at 65,535 bytes and is raised to the configured size"
    );
    drop(stream);
    running.stop().await;
}
