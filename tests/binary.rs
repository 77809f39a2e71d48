//! The real binary: configuration errors and exit codes, `--dev`, graceful shutdown on SIGTERM,
//! and that no credential ever reaches a log line, even at the most verbose level.

mod common;

use cloudflare_sim::{SimConfig, SimRoute, SimulatedCloudflare};
use common::*;
use http::StatusCode;
use nix::sys::signal::Signal;

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

#[test]
fn flags_win_over_environment_and_environment_over_file() {
    let dir = tempdir();
    let file = dir.join("precedence.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:1\"\nlog_format = \"pretty\"\n").expect("write");
    // File says port 1 (cannot bind as non-root... or can as root), env says 0, the flag says 0 too:
    // what matters is that the log format from the environment beats the file's.
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
    let addr = running.listening_addr();
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
    let base_line = running.wait_for_line("export CLOUDFLARE_BASE_URL=");
    assert!(
        base_line.contains(&format!("http://{addr}/client/v4")),
        "{base_line}"
    );
    let curl = running.wait_for_line("curl -i http");
    let url = curl.trim().trim_start_matches("curl -i ").to_owned();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let first = send_with(&client, http::Method::GET, &url, &[]).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert!(
        first.cache_status().contains("fwd=miss"),
        "{}",
        first.cache_status()
    );
    let second = send_with(&client, http::Method::GET, &url, &[]).await;
    assert!(
        second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    running.signal(Signal::SIGINT);
    let (code, _) = running.finish();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let sim = SimulatedCloudflare::start(SimConfig::default())
        .await
        .expect("sim");
    seed(&sim.handle());
    sim.handle()
        .insert_integration(ACCOUNT, "ref-drain", "https://tenant.okta.com");
    let upstream = sim.base_url();
    let mut running = SidecarProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--log-format",
            "json",
        ],
        &[],
    );
    let addr = running.listening_addr();
    let gate = sim.handle().hold_requests();
    let url = format!("http://{addr}{}", lookup_path(ACCOUNT, "ref-drain"));
    let in_flight = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        send_with(
            &client,
            http::Method::GET,
            &url,
            &[("authorization", &bearer(TOKEN_A))],
        )
        .await
    });
    while sim.handle().held() != 1 {
        tokio::task::yield_now().await;
    }
    running.signal(Signal::SIGTERM);
    running.wait_for_line("SIGTERM: draining");
    // The listener is closed while the in-flight request is still held upstream.
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "new connections are refused while draining");
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
async fn no_secret_reaches_any_log_line_at_trace_level() {
    let sim = SimulatedCloudflare::start(SimConfig::default())
        .await
        .expect("sim");
    seed(&sim.handle());
    const SIDECAR_TOKEN: &str = "sidecar-own-token-4d3c2b1a";
    sim.handle().add_token(SIDECAR_TOKEN, "sidecar", &[ACCOUNT]);
    sim.handle()
        .insert_integration(ACCOUNT, "ref-log", "https://tenant.okta.com");
    let upstream = sim.base_url();
    const ADMIN_TOKEN: &str = "admin-secret-6f5e4d3c";
    let admin_token_file = tempdir().join("admin-token");
    std::fs::write(&admin_token_file, ADMIN_TOKEN).expect("admin token");
    let admin_token_path = admin_token_file.to_str().expect("utf-8").to_owned();
    for format in ["json", "pretty"] {
        // The admin listener of this process only (the harness adds an ephemeral one first).
        let mut running = SidecarProcess::start(
            &[
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                &upstream,
                "--admin-token-file",
                &admin_token_path,
            ],
            &[
                ("RUST_LOG", "trace"),
                ("CLOUDFLARE_API_TOKEN", SIDECAR_TOKEN),
                ("ZT_SIDECAR_LOG_FORMAT", format),
            ],
        );
        let (addr, admin) = running.listening_addrs();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let path = lookup_path(ACCOUNT, "ref-log");
        let url = format!("http://{addr}{path}");
        let scenario: Vec<Vec<(&str, String)>> = vec![
            vec![("authorization", bearer(TOKEN_A))],
            vec![("authorization", bearer(TOKEN_A))],
            vec![("authorization", "Bearer wrong-secret-token-99".to_owned())],
            vec![
                ("x-auth-email", EMAIL.to_owned()),
                ("x-auth-key", GLOBAL_KEY.to_owned()),
            ],
            vec![(
                "x-auth-user-service-key",
                "service-key-secret-77".to_owned(),
            )],
            vec![],
        ];
        for headers in &scenario {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            send_with(&client, http::Method::GET, &url, &headers).await;
            send_with(&h2, http::Method::GET, &url, &headers).await;
        }
        // The admin listener with the right and a wrong token, a write with a body, a reload.
        for token in [ADMIN_TOKEN, "admin-wrong-secret-1234"] {
            let auth = bearer(token);
            send_with(
                &client,
                http::Method::GET,
                &format!("http://{admin}/metrics"),
                &[("authorization", &auth)],
            )
            .await;
            send_with(
                &client,
                http::Method::POST,
                &format!("http://{admin}/cache/purge?all=true"),
                &[("authorization", &auth)],
            )
            .await;
        }
        send_with(
            &client,
            http::Method::DELETE,
            &format!("http://{addr}/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e"),
            &[("authorization", &bearer(TOKEN_A))],
        )
        .await;
        running.signal(Signal::SIGHUP);
        running.wait_for_line("SIGHUP");
        // A failing upstream exercises the error paths' logging too.
        sim.handle().fail_next(1, cloudflare_sim::Fault::Reset);
        send_with(
            &client,
            http::Method::GET,
            &format!("http://{addr}{}", lookup_path(ACCOUNT, "other")),
            &[("authorization", &bearer(TOKEN_B))],
        )
        .await;
        running.signal(Signal::SIGTERM);
        let (code, lines) = tokio::task::spawn_blocking(move || running.finish())
            .await
            .expect("join");
        assert_eq!(code, Some(0));
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

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "zt-sidecar-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}
