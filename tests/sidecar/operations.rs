//! Operating the sidecar: the admin listener (metrics parsed by a Prometheus text parser, health,
//! readiness during drain, cache stats and purge, its bearer token) and SIGHUP reloads of the
//! real binary. Everything runs on real loopback sockets.

use std::time::Duration;

use http::{Method, StatusCode};
use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;
use zt_risk_sidecar::credentials::Secret;
use zt_risk_sidecar::server::DrainOutcome;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic() {
    let running = AppHarness::start(|config| {
        // One token back an hour: none comes back while the test runs, however slow the
        // machine, so the budget gauge shows exactly what was spent.
        config.budget.period = Duration::from_secs(3600) * config.budget.requests.get();
    })
    .await;
    let sim = running.handle();
    for reference in ["m1", "m2"] {
        sim.insert_integration(ACCOUNT, reference, TENANT);
        assert_eq!(
            running.lookup(reference, TOKEN_A).await.status,
            StatusCode::OK
        );
    }
    for _ in 0..3 {
        assert_cache_status_contains(&running.lookup("m1", TOKEN_A).await, "hit");
    }
    assert_eq!(
        running.lookup("absent", TOKEN_A).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        running
            .get(&lookup_path("NOT-AN-ACCOUNT", "x"), &[])
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    let reply = running.admin(Method::GET, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&reply.body).to_string();
    let scrape = parse_metrics(&reply);
    let lookups = "zt_sidecar_lookups_total";
    assert_eq!(
        sample(
            &scrape,
            lookups,
            &[("outcome", "miss"), ("status_class", "2xx")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &scrape,
            lookups,
            &[("outcome", "hit"), ("status_class", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &scrape,
            lookups,
            &[("outcome", "miss"), ("status_class", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            lookups,
            &[("outcome", "local"), ("status_class", "4xx")]
        ),
        1.0
    );
    let upstream = "zt_sidecar_upstream_requests_total";
    assert_eq!(sample(&scrape, upstream, &[("status", "200")]), 2.0);
    assert_eq!(sample(&scrape, upstream, &[("status", "404")]), 1.0);
    assert_eq!(
        sample(
            &scrape,
            "zt_sidecar_upstream_request_duration_seconds_count",
            &[]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &scrape,
            "zt_sidecar_request_duration_seconds_count",
            &[("outcome", "hit")]
        ),
        3.0
    );
    assert_eq!(sample(&scrape, "zt_sidecar_cache_entries", &[]), 3.0);
    assert!(sample(&scrape, "zt_sidecar_cache_weighted_bytes", &[]) > 0.0);
    assert_eq!(
        sample(&scrape, "zt_sidecar_breaker_state", &[("state", "closed")]),
        1.0
    );
    assert_eq!(
        sample(&scrape, "zt_sidecar_breaker_state", &[("state", "open")]),
        0.0
    );
    assert_eq!(
        sample(&scrape, "zt_sidecar_upstream_budget_tokens", &[]),
        47.0,
        "50 burst, 3 spent"
    );
    // No identifier or credential is ever a label.
    for secret_or_id in [ACCOUNT, "m1", "absent", TOKEN_A, "NOT-AN-ACCOUNT"] {
        assert!(
            !text.contains(secret_or_id),
            "{secret_or_id} appears in the metrics"
        );
    }
    running.stop().await;
}

/// The sidecar's own sample lines, sorted: what a read of another endpoint must not change.
fn own_samples(reply: &Reply) -> Vec<String> {
    let text = String::from_utf8_lossy(&reply.body);
    let mut lines: Vec<String> = text
        .lines()
        .filter(|line| line.starts_with("zt_sidecar_"))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Every series is there from the first scrape, reads of other endpoints change none, scrapers
/// get the text format they ask for, and connections on the lookup listener are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_stable_negotiated_and_count_connections() {
    let running = AppHarness::start(|_| {}).await;
    let first = running.admin(Method::GET, "/metrics", &[]).await;
    let scrape = parse_metrics(&first);
    let lookups = "zt_sidecar_lookups_total";
    assert_eq!(
        sample(
            &scrape,
            lookups,
            &[("outcome", "hit"), ("status_class", "2xx")]
        ),
        0.0
    );
    assert_eq!(
        sample(&scrape, "zt_sidecar_connections_accepted_total", &[]),
        0.0
    );
    assert_eq!(
        sample(
            &scrape,
            "zt_sidecar_refusals_total",
            &[("reason", "upstream-down")]
        ),
        0.0
    );
    assert_eq!(sample(&scrape, "zt_sidecar_build_info", &[]), 1.0);
    for family in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(sample(&scrape, family, &[]) >= 0.0, "{family}");
    }
    let stats = running.admin(Method::GET, "/cache/stats", &[]).await;
    assert_eq!(stats.status, StatusCode::OK);
    let second = running.admin(Method::GET, "/metrics", &[]).await;
    assert_eq!(own_samples(&second), own_samples(&first));

    let classic = running
        .admin(
            Method::GET,
            "/metrics",
            &[("accept", "text/plain;version=0.0.4")],
        )
        .await;
    assert_eq!(classic.status, StatusCode::OK);
    assert_eq!(
        classic.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8_lossy(&classic.body);
    assert!(
        text.contains("# TYPE zt_sidecar_lookups_total counter"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");
    let open_metrics = running
        .admin(
            Method::GET,
            "/metrics",
            &[(
                "accept",
                "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3",
            )],
        )
        .await;
    parse_metrics(&open_metrics);

    running
        .handle()
        .insert_integration(ACCOUNT, "counted", TENANT);
    assert_eq!(
        running.lookup("counted", TOKEN_A).await.status,
        StatusCode::OK
    );
    let after = parse_metrics(&running.admin(Method::GET, "/metrics", &[]).await);
    assert!(sample(&after, "zt_sidecar_connections_accepted_total", &[]) >= 1.0);
    assert_eq!(
        sample(&after, "zt_sidecar_connections_refused_total", &[]),
        0.0
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_drops_entries_across_credentials_then_lookups_miss() {
    let running = AppHarness::start(|_| {}).await;
    let sim = running.handle();
    for reference in ["p1", "p2"] {
        sim.insert_integration(ACCOUNT, reference, TENANT);
        for token in [TOKEN_A, TOKEN_B] {
            assert_cache_status_contains(&running.lookup(reference, token).await, "stored");
        }
    }
    let one = format!("/cache/purge?account_id={ACCOUNT}&reference_id=p1");
    let purged = running.admin(Method::POST, &one, &[]).await;
    assert_eq!(purged.status, StatusCode::OK);
    assert_eq!(
        purged.json(),
        serde_json::json!({"purged": 2, "scope": "lookup"})
    );
    assert_cache_status_contains(&running.lookup("p1", TOKEN_A).await, "fwd=miss");
    assert_cache_status_contains(&running.lookup("p2", TOKEN_A).await, "hit");

    let stats = running.admin(Method::GET, "/cache/stats", &[]).await.json();
    assert_eq!(stats["entries"], 3);
    assert!(stats["weighted_bytes"].as_u64().expect("bytes") > 0);
    assert_eq!(stats["lookups"]["hit"], 1);
    assert_eq!(stats["lookups"]["miss"], 5);

    let account = format!("/cache/purge?account_id={ACCOUNT}");
    assert_eq!(
        running.admin(Method::POST, &account, &[]).await.json()["purged"],
        3
    );
    assert_cache_status_contains(&running.lookup("p2", TOKEN_B).await, "fwd=miss");
    assert_eq!(
        running
            .admin(Method::POST, "/cache/purge?all=true", &[])
            .await
            .json()["purged"],
        1
    );
    assert_eq!(
        running.admin(Method::GET, "/cache/stats", &[]).await.json()["entries"],
        0
    );

    let bad = running
        .admin(Method::POST, "/cache/purge?reference_id=p1", &[])
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, 1001);
    let wrong_method = running
        .admin(Method::GET, "/cache/purge?all=true", &[])
        .await;
    assert_error(&wrong_method, StatusCode::METHOD_NOT_ALLOWED, 10405);
    assert_error(
        &running.admin(Method::GET, "/nope", &[]).await,
        StatusCode::NOT_FOUND,
        7000,
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_false_while_draining() {
    let mut running = AppHarness::start(|_| {}).await;
    let sim = running.handle();
    sim.insert_integration(ACCOUNT, "drain", TENANT);
    assert_eq!(
        running.admin(Method::GET, "/healthz", &[]).await.status,
        StatusCode::OK
    );
    let ready = running.admin(Method::GET, "/readyz", &[]).await;
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (StatusCode::OK, "ready".into())
    );
    let gate = sim.hold_requests();
    let lookups = running.addr;
    let in_flight =
        tokio::spawn(async move { Endpoint::new(lookups).lookup("drain", TOKEN_A).await });
    wait_until("the lookup is held upstream", WAIT_LIMIT, || {
        sim.held() == 1
    })
    .await;
    running.begin_shutdown();
    // Draining: not ready, still alive, and the held lookup still completes.
    wait_until_async("readiness turns false", WAIT_LIMIT, || async {
        running.admin(Method::GET, "/readyz", &[]).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let readyz = running.admin(Method::GET, "/readyz", &[]).await;
    assert_eq!(
        (readyz.status, readyz.json()["status"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, "draining".into())
    );
    assert_eq!(
        running.admin(Method::GET, "/healthz", &[]).await.status,
        StatusCode::OK
    );
    gate.release();
    assert_eq!(in_flight.await.expect("lookup").status, StatusCode::OK);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_drain_ends_when_the_grace_period_runs_out() {
    let grace = Duration::from_secs(2);
    let harness = Harness::start_with(|config| config.shutdown_grace = grace).await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "stuck", TENANT);
    let _gate = sim.hold_requests();
    let mut caller = tokio::net::TcpStream::connect(harness.sidecar)
        .await
        .expect("connect");
    caller
        .write_all(&raw_get(&lookup_path(ACCOUNT, "stuck"), ""))
        .await
        .expect("write");
    wait_until("the lookup is held upstream", WAIT_LIMIT, || {
        sim.held() == 1
    })
    .await;
    let stopping = tokio::time::Instant::now();
    assert_eq!(harness.stop().await, DrainOutcome::GraceElapsed);
    assert_eq!(
        stopping.elapsed(),
        grace,
        "the drain waited the grace period, no more"
    );
    drop(caller);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_is_enforced_except_on_probes() {
    let running = AppHarness::start(|config| {
        config.admin_token = Some(Secret::new("admin-secret-123".to_owned()));
    })
    .await;
    for path in ["/metrics", "/cache/stats"] {
        let anonymous = running.admin(Method::GET, path, &[]).await;
        assert_error(&anonymous, StatusCode::UNAUTHORIZED, 10000);
        assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
        let wrong = running
            .admin(
                Method::GET,
                path,
                &[("authorization", "Bearer admin-secret-12")],
            )
            .await;
        assert_error(&wrong, StatusCode::UNAUTHORIZED, 10000);
        let right = running
            .admin(
                Method::GET,
                path,
                &[("authorization", "Bearer admin-secret-123")],
            )
            .await;
        assert_eq!(right.status, StatusCode::OK, "{path}");
    }
    let purge = running
        .admin(Method::POST, "/cache/purge?all=true", &[])
        .await;
    assert_error(&purge, StatusCode::UNAUTHORIZED, 10000);
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            running.admin(Method::GET, probe, &[]).await.status,
            StatusCode::OK,
            "{probe}"
        );
    }
    // The lookup port serves no admin routes, and the admin port no lookups.
    assert_error(
        &running.get("/metrics", &[]).await,
        StatusCode::NOT_FOUND,
        7000,
    );
    let lookup_on_admin = running
        .admin(
            Method::GET,
            &lookup_path(ACCOUNT, "x"),
            &[("authorization", "Bearer admin-secret-123")],
        )
        .await;
    assert_error(&lookup_on_admin, StatusCode::NOT_FOUND, 7000);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_ttls_and_the_token_file_and_rejects_a_broken_file() {
    let sim = start_simulator().await;
    sim.handle().insert_integration(ACCOUNT, "reload", TENANT);
    let dir = tempdir();
    let config_path = dir.join("sidecar.toml");
    let token_path = dir.join("token");
    std::fs::write(&token_path, format!("{TOKEN_A}\n")).expect("token");
    let write_config = |ttl: &str| {
        let text = format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"{}\"\nlog_format = \"json\"\ncache_ttl = \"{ttl}\"\ntoken_file = \"{}\"\n",
            sim.base_url(),
            token_path.display()
        );
        std::fs::write(&config_path, text).expect("config");
    };
    write_config("60s");
    let mut process =
        SidecarProcess::start(&["--config", config_path.to_str().expect("utf-8")], &[]);
    let addr = process.listening_addr();
    let sidecar = Endpoint::new(addr);
    let path = lookup_path(ACCOUNT, "reload");
    // No credential header: the sidecar's token from the file is used.
    assert_cache_status_contains(&sidecar.get(&path, &[]).await, "stored");
    // The real binary runs on the real clock, so its TTLs are checked against bounds, which tell
    // a 60 s TTL from an hour's on any machine, rather than as exact counts of seconds.
    assert_fresh_hit_within(&sidecar.get(&path, &[]).await, 1..=60);

    // A longer TTL and a new token: new entries use both.
    write_config("1h");
    std::fs::write(&token_path, format!("{TOKEN_B}\n")).expect("token");
    process.signal(Signal::SIGHUP);
    let reloaded = process.wait_for_line("SIGHUP: configuration reloaded");
    assert!(
        reloaded.contains("cache_ttl") && reloaded.contains("token"),
        "{reloaded}"
    );
    let miss = sidecar.get(&path, &[]).await;
    // A new token is a new partition.
    assert_cache_status_contains(&miss, "stored");
    let recorded = sim.handle().recorded();
    let last = recorded.last().expect("forwarded");
    assert_eq!(
        last.headers.get("authorization").map(|v| v.as_bytes()),
        Some(bearer(TOKEN_B).as_bytes())
    );
    assert_fresh_hit_within(&sidecar.get(&path, &[]).await, 61..=3600);

    // A broken file is rejected, naming the key, and the running configuration stays.
    std::fs::write(&config_path, "cache_ttl = \"soon\"\n").expect("config");
    process.signal(Signal::SIGHUP);
    let rejected = process.wait_for_warning("configuration rejected");
    assert!(rejected.contains("cache_ttl"), "{rejected}");
    assert_eq!(log_field(&reloaded, "level").as_deref(), Some("WARN"));
    // So is a log level typo, which would otherwise silence the process.
    std::fs::write(&config_path, "log_level = \"warning\"\n").expect("config");
    process.signal(Signal::SIGHUP);
    let rejected = process.wait_for_line("configuration rejected");
    assert!(
        rejected.contains("log_level") && rejected.contains("warning"),
        "{rejected}"
    );
    assert_fresh_hit_within(&sidecar.get(&path, &[]).await, 61..=3600);
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 2);

    // A listen address change is logged as needing a restart.
    std::fs::write(
        &config_path,
        format!(
            "listen = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"{}\"\nlog_format = \"json\"\ncache_ttl = \"1h\"\ntoken_file = \"{}\"\n",
            sim.base_url(),
            token_path.display()
        ),
    )
    .expect("config");
    process.signal(Signal::SIGHUP);
    let restart = process.wait_for_line("need a restart");
    assert!(restart.contains("listen"), "{restart}");

    process.signal(Signal::SIGTERM);
    let (code, _) = tokio::task::spawn_blocking(move || process.finish())
        .await
        .expect("join");
    assert_eq!(code, Some(0));
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

/// An outage shows in the default log: the breaker opening and closing and a 429's cool-down
/// are logged once each, at `warn`, with their cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_transitions_and_cool_downs_are_logged_at_warn() {
    let sim = start_simulator().await;
    sim.handle().insert_integration(ACCOUNT, "watched", TENANT);
    let mut process = SidecarProcess::start_in_front_of(
        &sim.base_url(),
        &[
            "--log-format",
            "json",
            "--upstream-retries",
            "0",
            "--breaker-failures",
            "2",
            "--breaker-cool-down",
            "200ms",
        ],
        &[],
    );
    let sidecar = Endpoint::new(process.listening_addr());

    sim.handle()
        .fail_next(1, Fault::Status(StatusCode::TOO_MANY_REQUESTS));
    let limited = sidecar.lookup("watched", TOKEN_A).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let cool_down = process.wait_for_warning("Cloudflare answered 429");
    assert!(
        log_field(&cool_down, "retry_after").is_some(),
        "{cool_down}"
    );
    assert!(!cool_down.contains(TOKEN_A), "{cool_down}");

    // Token B has no cool-down; two failures in a row open the shared breaker.
    sim.handle()
        .set_fault(Some(Fault::Status(StatusCode::SERVICE_UNAVAILABLE)));
    for _ in 0..2 {
        let failed = sidecar.lookup("watched", TOKEN_B).await;
        assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    process.wait_for_warning("circuit breaker opened");
    sim.handle().clear_faults();
    // The breaker lets a probe through once its cool-down is over; lookups until then are
    // refused locally. Bounded by the process limit, never ordered by a sleep.
    let deadline = std::time::Instant::now() + PROCESS_LIMIT;
    while sidecar.lookup("watched", TOKEN_B).await.status != StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "the breaker never closed"
        );
    }
    process.wait_for_warning("circuit breaker closed");

    let lines = process.terminate().await;
    let opened_lines = lines
        .iter()
        .filter(|line| line.contains("circuit breaker opened"))
        .count();
    assert_eq!(opened_lines, 1, "{lines:#?}");
    sim.shutdown().await;
}

/// With Cloudflare unreachable, the failure and its cause are logged at `warn` once per interval,
/// not once per request, and a credential running out of budget is logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_logged_rate_limited_and_a_spent_budget_once() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let upstream = format!("http://127.0.0.1:{closed_port}/client/v4");
    let mut process = SidecarProcess::start_in_front_of(
        &upstream,
        &[
            "--log-format",
            "json",
            "--upstream-retries",
            "0",
            "--breaker-failures",
            "0",
            "--upstream-budget-burst",
            "3",
            "--upstream-budget-period",
            "1h",
        ],
        &[],
    );
    let sidecar = Endpoint::new(process.listening_addr());
    for _ in 0..3 {
        assert_eq!(
            sidecar.lookup("gone", TOKEN_A).await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    // The fourth finds the budget spent and is refused without a call.
    assert_eq!(
        sidecar.lookup("gone", TOKEN_A).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let unreachable = process.wait_for_warning("cannot reach Cloudflare");
    assert!(
        log_field(&unreachable, "error").is_some_and(|error| !error.is_empty()),
        "{unreachable}"
    );
    process.wait_for_warning("spent its upstream budget");
    let lines = process.terminate().await;
    let count = |needle: &str| lines.iter().filter(|line| line.contains(needle)).count();
    assert_eq!(count("cannot reach Cloudflare"), 1, "{lines:#?}");
    assert_eq!(count("spent its upstream budget"), 1, "{lines:#?}");
    assert!(!lines.iter().any(|line| line.contains(TOKEN_A)));
}
