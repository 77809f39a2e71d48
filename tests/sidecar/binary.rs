//! The real binary: configuration errors and exit codes, `--dev`, graceful shutdown on SIGTERM,
//! and that no credential ever reaches a log line, even at the most verbose level.

use http::StatusCode;
use nix::sys::signal::Signal;

use zt_risk_sidecar::routes::REFERENCE_ROUTE;

use crate::support::*;

fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (code, lines) = SidecarProcess::start(args, env).finish();
    (code, lines.join("\n"))
}

#[test]
fn configuration_errors_name_the_key_and_exit_non_zero() {
    let dir = tempdir();
    let unknown = dir.join("unknown.toml");
    std::fs::write(&unknown, "listen = \"127.0.0.1:0\"\ncache_tll = \"60s\"\n").expect("write");
    let (code, output) = run_to_exit(&["--config", unknown.to_str().expect("utf8")], &[]);
    assert_eq!(code, Some(2));
    assert!(
        output.contains("cache_tll") && output.contains("unknown field"),
        "{output}"
    );

    let bad_value = dir.join("bad.toml");
    std::fs::write(&bad_value, "negative_ttl = \"ten seconds\"\n").expect("write");
    let (code, output) = run_to_exit(&["--config", bad_value.to_str().expect("utf8")], &[]);
    assert_eq!(code, Some(2));
    assert!(
        output.contains("`negative_ttl`") && output.contains("not a duration"),
        "{output}"
    );

    let (code, output) = run_to_exit(&["--cache-ttl", "forever"], &[]);
    assert_eq!(code, Some(2));
    assert!(output.contains("`cache_ttl`"), "{output}");

    let (code, output) = run_to_exit(
        &[],
        &[("ZT_SIDECAR_UPSTREAM", "http://api.cloudflare.com/client/v4")],
    );
    assert_eq!(code, Some(2));
    assert!(
        output.contains("`upstream`") && output.contains("loopback"),
        "{output}"
    );

    let (code, output) = run_to_exit(&["--no-such-flag"], &[]);
    assert_eq!(code, Some(2));
    assert!(output.contains("--no-such-flag"), "{output}");

    // A token that cannot be a header value is refused without being printed.
    let (code, output) = run_to_exit(&[], &[("CLOUDFLARE_API_TOKEN", "secret-\u{7f}-value")]);
    assert_eq!(code, Some(2));
    assert!(!output.contains("secret-"), "{output}");
}

/// A level typo (`warning`, `debug2`) is no target name here: it stops the start, naming where
/// it came from and the directive, instead of silencing every log line, the fatal ones included.
#[test]
fn a_log_filter_typo_is_a_startup_error_naming_the_key_and_directive() {
    let (code, output) = run_to_exit(&[], &[("ZT_SIDECAR_LOG_LEVEL", "warning")]);
    assert_eq!(code, Some(2));
    assert!(
        output.contains("`log_level`")
            && output.contains("\"warning\"")
            && output.contains("ZT_SIDECAR_LOG_LEVEL"),
        "{output}"
    );
    let (code, output) = run_to_exit(&["--log-level", "info,hyper=loud"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        output.contains("`log_level`") && output.contains("\"hyper=loud\""),
        "{output}"
    );
    let dir = tempdir();
    let file = dir.join("sidecar.toml");
    std::fs::write(&file, "log_level = \"debug2\"\n").expect("write");
    let (code, output) = run_to_exit(&["--config", file.to_str().expect("utf8")], &[]);
    assert_eq!(code, Some(2));
    assert!(
        output.contains("`log_level`")
            && output.contains("\"debug2\"")
            && output.contains("line 1"),
        "{output}"
    );
    let (code, output) = run_to_exit(&[], &[("RUST_LOG", "warning")]);
    assert_eq!(code, Some(2));
    assert!(
        output.contains("`RUST_LOG`") && output.contains("\"warning\""),
        "{output}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fatal error after logging is set up still reaches the operator when the filter drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_start_up_error_is_printed_even_with_logging_off() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = taken.local_addr().expect("addr").to_string();
    let (code, output) = tokio::task::spawn_blocking(move || {
        run_to_exit(&["--listen", &address, "--log-level", "off"], &[])
    })
    .await
    .expect("join");
    assert_eq!(code, Some(1));
    assert!(output.contains("cannot listen on"), "{output}");
    drop(taken);
}

#[test]
fn flags_win_over_environment_and_environment_over_file() {
    let dir = tempdir();
    let file = dir.join("precedence.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:1\"\nlog_format = \"pretty\"\n").expect("write");
    // The file says port 1, the environment port 2 and the flag port 0: an ephemeral port shows
    // the flag won over both. The file says pretty and the environment json: a JSON log line shows
    // the environment won over the file.
    let mut running = SidecarProcess::start(
        &[
            "--config",
            file.to_str().expect("utf8"),
            "--listen",
            "127.0.0.1:0",
        ],
        &[
            ("ZT_SIDECAR_LOG_FORMAT", "json"),
            ("ZT_SIDECAR_LISTEN", "127.0.0.1:2"),
        ],
    );
    let line = running.wait_for_line("zt-risk-sidecar listening");
    assert!(
        serde_json::from_str::<serde_json::Value>(&line).is_ok(),
        "the environment's json log format beats the file's pretty: {line}"
    );
    let addr: std::net::SocketAddr = log_field(&line, "listen")
        .and_then(|listen| listen.parse().ok())
        .unwrap_or_else(|| panic!("no listen address in {line}"));
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 1);
    assert_ne!(addr.port(), 2);
    running.signal(Signal::SIGTERM);
    let (code, _) = running.finish();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_a_miss_then_a_hit_with_no_token() {
    let mut running = SidecarProcess::start(
        &["--dev", "--listen", "127.0.0.1:0", "--log-format", "json"],
        &[],
    );
    let addr = running.listening_addr();
    let base_line = running.find_line("export CLOUDFLARE_BASE_URL=");
    assert!(
        base_line.contains(&format!("http://{addr}/client/v4")),
        "{base_line}"
    );
    let curl = running.find_line("curl -i http");
    let url = curl.trim().trim_start_matches("curl -i ").to_owned();
    let client = client();
    let first = send_with(&client, http::Method::GET, &url, &[]).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_cache_status_contains(&first, "fwd=miss");
    let second = send_with(&client, http::Method::GET, &url, &[]).await;
    assert_cache_status_contains(&second, "hit");
    running.signal(Signal::SIGINT);
    let (code, _) = running.finish();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let sim = start_simulator().await;
    sim.handle()
        .insert_integration(ACCOUNT, "ref-drain", TENANT);
    let upstream = sim.base_url();
    let mut running = SidecarProcess::start_in_front_of(&upstream, &["--log-format", "json"], &[]);
    let addr = running.listening_addr();
    let gate = sim.handle().hold_requests();
    let in_flight =
        tokio::spawn(async move { Endpoint::new(addr).lookup("ref-drain", TOKEN_A).await });
    wait_until("the lookup is held upstream", WAIT_LIMIT, || {
        sim.handle().held() == 1
    })
    .await;
    running.signal(Signal::SIGTERM);
    running.wait_for_line("SIGTERM: draining");
    // The listener is closed while the in-flight request is still held upstream. The log line
    // comes first, so the test waits (bounded) for the close instead of counting attempts.
    wait_until_async(
        "new connections are refused while draining",
        WAIT_LIMIT,
        || async { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
    assert_eq!(sim.handle().held(), 1, "the lookup is still held upstream");
    gate.release();
    let reply = in_flight.await.expect("request task");
    assert_eq!(reply.status, StatusCode::OK);
    let (code, _) = tokio::task::spawn_blocking(move || running.finish())
        .await
        .expect("join");
    assert_eq!(code, Some(0));
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_once_the_grace_period_runs_out_on_a_stuck_request() {
    let sim = start_simulator().await;
    sim.handle()
        .insert_integration(ACCOUNT, "ref-stuck", TENANT);
    let upstream = sim.base_url();
    let grace = std::time::Duration::from_secs(1);
    let mut running =
        SidecarProcess::start_in_front_of(&upstream, &["--shutdown-grace", "1s"], &[]);
    let addr = running.listening_addr();
    // Held until the end of the test: the request can only end by the grace period running out.
    let _gate = sim.handle().hold_requests();
    let stuck = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(
            &mut stream,
            &raw_get(&lookup_path(ACCOUNT, "ref-stuck"), ""),
        )
        .await
        .expect("write");
        read_until_closed(&mut stream, WAIT_LIMIT).await
    });
    wait_until("the lookup is held upstream", WAIT_LIMIT, || {
        sim.handle().held() == 1
    })
    .await;
    let signalled = std::time::Instant::now();
    running.signal(Signal::SIGTERM);
    let (code, _) = tokio::task::spawn_blocking(move || running.finish())
        .await
        .expect("join");
    assert_eq!(code, Some(0));
    assert!(
        signalled.elapsed() >= grace,
        "exited after {:?}, before the grace period ran out",
        signalled.elapsed()
    );
    // The process is gone, so its connection is too, with no answer.
    let answer = stuck.await.expect("caller task");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    sim.shutdown().await;
}

/// Sends SIGTERM at once, waits for the exit (bounded), checks it is 0, and returns every line
/// the process wrote.
async fn stop_with_sigterm(running: SidecarProcess) -> Vec<String> {
    running.signal(Signal::SIGTERM);
    let (code, lines) = tokio::task::spawn_blocking(move || running.finish())
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{lines:#?}");
    lines
}

/// A simulated Cloudflare API with one integration, `reference`, in [`ACCOUNT`].
async fn simulator_with(reference: &str) -> SimulatedCloudflare {
    let sim = start_simulator().await;
    sim.handle().insert_integration(ACCOUNT, reference, TENANT);
    sim
}

/// The request events among a process's output lines (either format): the only lines with a
/// latency.
fn request_events(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|line| line.contains("latency_us"))
        .collect()
}

/// At the default level (no `RUST_LOG`, no `log_level`), through the log writer's queue, each
/// request is one event with every field an operator reads and Cloudflare's `cf-ray`, and no
/// credential: in JSON one object per line, in the pretty format one readable line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_event_at_the_default_level_names_its_fields_and_no_secret() {
    let sim = simulator_with("ref-event").await;
    let upstream = sim.base_url();
    for format in ["json", "pretty"] {
        let mut running =
            SidecarProcess::start_in_front_of(&upstream, &["--log-format", format], &[]);
        let lookups = Endpoint::new(running.listening_addr());
        let miss = lookups.lookup("ref-event", TOKEN_A).await;
        assert_eq!(miss.status, StatusCode::OK, "{miss:?}");
        let ray = miss
            .header("cf-ray")
            .expect("the simulator sends a cf-ray")
            .to_owned();
        let hit = lookups.lookup("ref-event", TOKEN_A).await;
        assert_cache_status_contains(&hit, "hit");
        let lines = stop_with_sigterm(running).await;
        let events = request_events(&lines);
        assert_eq!(events.len(), 2, "one event per request: {lines:#?}");
        for line in &lines {
            assert!(!line.contains(TOKEN_A), "a credential in: {line}");
        }
        for (event, cache) in events.iter().zip(["miss", "hit"]) {
            if format == "json" {
                let event: serde_json::Value = serde_json::from_str(event)
                    .unwrap_or_else(|error| panic!("not one JSON object ({error}): {event}"));
                assert_eq!(event["level"], "INFO", "{event}");
                assert_eq!(event["message"], "request", "{event}");
                assert_eq!(event["method"], "GET", "{event}");
                assert_eq!(event["route"], REFERENCE_ROUTE, "{event}");
                assert_eq!(event["account_id"], ACCOUNT, "{event}");
                assert_eq!(event["status"], 200, "{event}");
                assert_eq!(event["cache"], cache, "{event}");
                assert_eq!(event["cf_ray"], ray.as_str(), "{event}");
                assert!(event["latency_us"].is_u64(), "{event}");
                let upstream_status = if cache == "miss" {
                    serde_json::json!(200)
                } else {
                    serde_json::Value::Null
                };
                assert_eq!(event["upstream_status"], upstream_status, "{event}");
            } else {
                // The whole line, as tracing-subscriber's `Full` format writes it (the sidecar's
                // own formatter for files and pipes must not change a byte of it).
                let (time, rest) = event.split_at(27);
                assert!(
                    time.len() == 27
                        && time.ends_with('Z')
                        && humantime::parse_rfc3339(time).is_ok(),
                    "no RFC 3339 time to the microsecond in: {event}"
                );
                let (line, latency) = rest.rsplit_once(" latency_us=").expect("latency last");
                assert!(latency.parse::<u64>().is_ok(), "{event}");
                let upstream_status = if cache == "miss" {
                    " upstream_status=200"
                } else {
                    ""
                };
                assert_eq!(
                    line,
                    format!(
                        "  INFO zt_risk_sidecar::proxy: request method=GET route=\"{REFERENCE_ROUTE}\" \
                         account_id={ACCOUNT} status=200 cache=\"{cache}\"{upstream_status} \
                         cf_ray=\"{ray}\""
                    )
                );
                for field in [
                    " INFO ".to_owned(),
                    "method=GET".to_owned(),
                    format!("account_id={ACCOUNT}"),
                    "status=200".to_owned(),
                    format!("cache=\"{cache}\""),
                    format!("cf_ray=\"{ray}\""),
                    "latency_us=".to_owned(),
                ] {
                    assert!(event.contains(&field), "no {field:?} in: {event}");
                }
            }
        }
    }
    sim.shutdown().await;
}

/// Request events still queued for the log writer when SIGTERM arrives are written before the
/// process exits: every one of many requests answered just before the signal has its line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_event_before_sigterm_reaches_the_output() {
    const REQUESTS: usize = 2_000;
    const AT_ONCE: usize = 50;
    let sim = simulator_with("ref-last").await;
    let upstream = sim.base_url();
    for format in ["json", "pretty"] {
        let mut running =
            SidecarProcess::start_in_front_of(&upstream, &["--log-format", format], &[]);
        let lookups = Endpoint::new(running.listening_addr());
        for _ in 0..REQUESTS / AT_ONCE {
            let replies = join_all((0..AT_ONCE).map(|_| lookups.lookup("ref-last", TOKEN_A))).await;
            for reply in replies {
                assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            }
        }
        // No wait for the log: the signal follows the last answer at once, well within the
        // writer's 10 ms between writes.
        let lines = stop_with_sigterm(running).await;
        let events = request_events(&lines);
        assert_eq!(events.len(), REQUESTS, "{format}: lines lost at exit");
        assert!(
            lines.last().is_some_and(|line| line.contains("stopped")),
            "{format}: \"stopped\" is the last line: {:?}",
            lines.last()
        );
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_log_line_at_trace_level() {
    let sim = start_simulator().await;
    const SIDECAR_TOKEN: &str = "sidecar-own-token-4d3c2b1a";
    sim.handle().add_token(SIDECAR_TOKEN, "sidecar", &[ACCOUNT]);
    sim.handle().insert_integration(ACCOUNT, "ref-log", TENANT);
    let upstream = sim.base_url();
    const ADMIN_TOKEN: &str = "admin-secret-6f5e4d3c";
    let admin_token_file = tempdir().join("admin-token");
    std::fs::write(&admin_token_file, ADMIN_TOKEN).expect("admin token");
    let admin_token_path = admin_token_file.to_str().expect("utf-8").to_owned();
    for format in ["json", "pretty"] {
        // The admin listener of this process only (the harness adds an ephemeral one first).
        let mut running = SidecarProcess::start_in_front_of(
            &upstream,
            &["--admin-token-file", &admin_token_path],
            &[
                ("RUST_LOG", "trace"),
                ("CLOUDFLARE_API_TOKEN", SIDECAR_TOKEN),
                ("ZT_SIDECAR_LOG_FORMAT", format),
            ],
        );
        let (addr, admin) = running.listening_addrs();
        let lookups = Endpoint::new(addr);
        let admin = Endpoint::new(admin);
        let h2 = http2_client();
        let url = lookups.url(&lookup_path(ACCOUNT, "ref-log"));
        // (credential headers, the answer's status, its error code when it is an error, the
        // Cache-Status each answer starts with), each sent over HTTP/1.1 and then over HTTP/2:
        // the scan only means something if every request really took the path it stands for.
        // Each credential's first lookup is stored and later ones are hits; refused credentials
        // are forwarded each time and never stored.
        let stored = "zt-risk-sidecar; fwd=miss; stored; fwd-status=200";
        let hit = "zt-risk-sidecar; hit; ttl=";
        let refused = "zt-risk-sidecar; fwd=miss; fwd-status=403";
        type Case<'a> = (
            Vec<(&'a str, String)>,
            StatusCode,
            Option<i64>,
            [&'a str; 2],
        );
        let scenario: Vec<Case> = vec![
            (
                vec![("authorization", bearer(TOKEN_A))],
                StatusCode::OK,
                None,
                [stored, hit],
            ),
            (
                vec![("authorization", bearer(TOKEN_A))],
                StatusCode::OK,
                None,
                [hit, hit],
            ),
            (
                vec![("authorization", "Bearer wrong-secret-token-99".to_owned())],
                StatusCode::FORBIDDEN,
                Some(10000),
                [refused, refused],
            ),
            (
                vec![
                    ("x-auth-email", EMAIL.to_owned()),
                    ("x-auth-key", GLOBAL_KEY.to_owned()),
                ],
                StatusCode::OK,
                None,
                [stored, hit],
            ),
            (
                vec![(
                    "x-auth-user-service-key",
                    "service-key-secret-77".to_owned(),
                )],
                StatusCode::FORBIDDEN,
                Some(10000),
                [refused, refused],
            ),
            (vec![], StatusCode::OK, None, [stored, hit]),
        ];
        for (headers, status, code, outcomes) in &scenario {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let replies = [
                lookups
                    .get(&lookup_path(ACCOUNT, "ref-log"), &headers)
                    .await,
                send_with(&h2, http::Method::GET, &url, &headers).await,
            ];
            for (reply, outcome) in replies.iter().zip(outcomes) {
                match code {
                    Some(code) => assert_error(reply, *status, *code),
                    None => assert_eq!(reply.status, *status, "{reply:?}"),
                }
                assert!(
                    reply.cache_status().starts_with(outcome),
                    "{headers:?}: {reply:?}"
                );
            }
        }
        // The admin listener with the right and a wrong token.
        for (token, status, code) in [
            (ADMIN_TOKEN, StatusCode::OK, None),
            (
                "admin-wrong-secret-1234",
                StatusCode::UNAUTHORIZED,
                Some(10000),
            ),
        ] {
            let auth = bearer(token);
            for reply in [
                admin.get("/metrics", &[("authorization", &auth)]).await,
                admin
                    .send(
                        http::Method::POST,
                        "/cache/purge?all=true",
                        &[("authorization", &auth)],
                    )
                    .await,
            ] {
                match code {
                    Some(code) => assert_error(&reply, status, code),
                    None => assert_eq!(reply.status, status, "{reply:?}"),
                }
            }
        }
        // A write, relayed: the simulator has no such integration.
        let deleted = lookups
            .send_as(
                http::Method::DELETE,
                &format!("{}/182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e", collection_path()),
                TOKEN_A,
            )
            .await;
        assert_error(&deleted, StatusCode::NOT_FOUND, 1000);
        assert_cache_status(&deleted, "zt-risk-sidecar; fwd=method; fwd-status=404");
        running.signal(Signal::SIGHUP);
        running.wait_for_line("SIGHUP");
        // A failing upstream exercises the error paths' logging too: the reset is retried.
        sim.handle().fail_next(1, Fault::Reset);
        let retried = lookups.lookup("other", TOKEN_B).await;
        assert_error(&retried, StatusCode::NOT_FOUND, 1000);
        assert_eq!(
            sim.handle().requests_by_user("user-b"),
            if format == "json" { 2 } else { 4 },
            "one reset and one retry for each format"
        );
        let lines = stop_with_sigterm(running).await;
        assert!(
            lines.len() > 20,
            "trace logging produced output: {}",
            lines.len()
        );
        assert!(
            lines.iter().any(|line| line.contains("\"cache\":\"hit\"")
                || line.contains("cache=\"hit\"")
                || line.contains("cache=hit")),
            "the request log line names the cache outcome"
        );
        for secret in [
            ADMIN_TOKEN,
            "admin-wrong-secret-1234",
            TOKEN_A,
            TOKEN_B,
            "wrong-secret-token-99",
            GLOBAL_KEY,
            "service-key-secret-77",
            SIDECAR_TOKEN,
        ] {
            for line in &lines {
                assert!(
                    !line.contains(secret),
                    "secret {secret:?} in log line: {line}"
                );
            }
        }
    }
    sim.shutdown().await;
}
