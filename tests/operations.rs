//! Operating the sidecar: the admin listener (metrics parsed by a Prometheus text parser, health,
//! readiness during drain, cache stats and purge, its bearer token) and SIGHUP reloads of the
//! real binary. Everything runs on real loopback sockets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use cloudflare_sim::{SimConfig, SimHandle, SimRoute, SimulatedCloudflare};
use common::*;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::Signal;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use zt_risk_sidecar::config::Config;
use zt_risk_sidecar::credentials::Secret;
use zt_risk_sidecar::App;

/// The whole app (lookup and admin listeners) in front of the simulated API.
struct Running {
    sim: SimulatedCloudflare,
    lookups: SocketAddr,
    admin: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<zt_risk_sidecar::server::DrainOutcome>,
}

impl Running {
    async fn start(configure: impl FnOnce(&mut Config)) -> Running {
        let sim = SimulatedCloudflare::start(SimConfig::default())
            .await
            .expect("simulator");
        seed(&sim.handle());
        let mut config = test_config(&sim.base_url());
        configure(&mut config);
        let app = App::new(&config).expect("app builds");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let lookups = listener.local_addr().expect("addr");
        let admin = admin_listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.serve(
                listener,
                admin_listener,
                Duration::from_secs(5),
                async move {
                    let _ = stopped.await;
                },
            )
            .await
        });
        Running {
            sim,
            lookups,
            admin,
            client: Client::builder(TokioExecutor::new()).build_http(),
            stop: Some(stop),
            task,
        }
    }

    fn sim(&self) -> SimHandle {
        self.sim.handle()
    }

    async fn lookup(&self, reference: &str, token: &str) -> Reply {
        let url = format!("http://{}{}", self.lookups, lookup_path(ACCOUNT, reference));
        send_with(
            &self.client,
            Method::GET,
            &url,
            &[("authorization", &bearer(token))],
        )
        .await
    }

    async fn admin(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        let url = format!("http://{}{path}", self.admin);
        send_with(&self.client, method, &url, headers).await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("app task");
        self.sim.shutdown().await;
    }
}

fn parse_metrics(reply: &Reply) -> prometheus_parse::Scrape {
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/openmetrics-text"),
        "{:?}",
        reply.header("content-type")
    );
    let text = String::from_utf8(reply.body.to_vec()).expect("utf-8 exposition");
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("a valid Prometheus text exposition")
}

/// The value of the sample `name` whose labels include every pair of `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a plain number"),
        })
        .collect();
    assert_eq!(matching.len(), 1, "exactly one sample {name}{labels:?}");
    matching[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic() {
    let running = Running::start(|_| {}).await;
    let sim = running.sim();
    for reference in ["m1", "m2"] {
        sim.insert_integration(ACCOUNT, reference, "https://tenant.okta.com");
        assert_eq!(
            running.lookup(reference, TOKEN_A).await.status,
            StatusCode::OK
        );
    }
    for _ in 0..3 {
        assert!(running
            .lookup("m1", TOKEN_A)
            .await
            .cache_status()
            .contains("hit"));
    }
    assert_eq!(
        running.lookup("absent", TOKEN_A).await.status,
        StatusCode::NOT_FOUND
    );
    let bad = format!(
        "http://{}{}",
        running.lookups,
        lookup_path("NOT-AN-ACCOUNT", "x")
    );
    assert_eq!(
        send_with(&running.client, Method::GET, &bad, &[])
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_drops_entries_across_credentials_then_lookups_miss() {
    let running = Running::start(|_| {}).await;
    let sim = running.sim();
    for reference in ["p1", "p2"] {
        sim.insert_integration(ACCOUNT, reference, "https://tenant.okta.com");
        for token in [TOKEN_A, TOKEN_B] {
            assert!(running
                .lookup(reference, token)
                .await
                .cache_status()
                .contains("stored"));
        }
    }
    let one = format!("/cache/purge?account_id={ACCOUNT}&reference_id=p1");
    let purged = running.admin(Method::POST, &one, &[]).await;
    assert_eq!(purged.status, StatusCode::OK);
    assert_eq!(
        purged.json(),
        serde_json::json!({"purged": 2, "scope": "lookup"})
    );
    assert!(running
        .lookup("p1", TOKEN_A)
        .await
        .cache_status()
        .contains("fwd=miss"));
    assert!(running
        .lookup("p2", TOKEN_A)
        .await
        .cache_status()
        .contains("hit"));

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
    assert!(running
        .lookup("p2", TOKEN_B)
        .await
        .cache_status()
        .contains("fwd=miss"));
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
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_code(), 1001);
    let wrong_method = running
        .admin(Method::GET, "/cache/purge?all=true", &[])
        .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        running.admin(Method::GET, "/nope", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_false_while_draining() {
    let mut running = Running::start(|_| {}).await;
    let sim = running.sim();
    sim.insert_integration(ACCOUNT, "drain", "https://tenant.okta.com");
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
    let url = format!(
        "http://{}{}",
        running.lookups,
        lookup_path(ACCOUNT, "drain")
    );
    let in_flight = tokio::spawn(async move {
        let client = Client::builder(TokioExecutor::new()).build_http();
        send_with(
            &client,
            Method::GET,
            &url,
            &[("authorization", &bearer(TOKEN_A))],
        )
        .await
    });
    while sim.held() != 1 {
        tokio::task::yield_now().await;
    }
    if let Some(stop) = running.stop.take() {
        let _ = stop.send(());
    }
    // Draining: not ready, still alive, and the held lookup still completes.
    loop {
        let readyz = running.admin(Method::GET, "/readyz", &[]).await;
        if readyz.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(readyz.json()["status"], "draining");
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        running.admin(Method::GET, "/healthz", &[]).await.status,
        StatusCode::OK
    );
    gate.release();
    assert_eq!(in_flight.await.expect("lookup").status, StatusCode::OK);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_is_enforced_except_on_probes() {
    let running = Running::start(|config| {
        config.admin_token = Some(Secret::new("admin-secret-123".to_owned()));
    })
    .await;
    for path in ["/metrics", "/cache/stats"] {
        let anonymous = running.admin(Method::GET, path, &[]).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
        assert_eq!(anonymous.error_code(), 10000);
        let wrong = running
            .admin(
                Method::GET,
                path,
                &[("authorization", "Bearer admin-secret-12")],
            )
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{path}");
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
    assert_eq!(purge.status, StatusCode::UNAUTHORIZED);
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            running.admin(Method::GET, probe, &[]).await.status,
            StatusCode::OK,
            "{probe}"
        );
    }
    // The lookup port serves no admin routes, and the admin port no lookups.
    let on_lookup_port = format!("http://{}/metrics", running.lookups);
    assert_eq!(
        send_with(&running.client, Method::GET, &on_lookup_port, &[])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let lookup_on_admin = running
        .admin(
            Method::GET,
            &lookup_path(ACCOUNT, "x"),
            &[("authorization", "Bearer admin-secret-123")],
        )
        .await;
    assert_eq!(lookup_on_admin.status, StatusCode::NOT_FOUND);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_ttls_and_the_token_file_and_rejects_a_broken_file() {
    let sim = SimulatedCloudflare::start(SimConfig::default())
        .await
        .expect("sim");
    seed(&sim.handle());
    sim.handle()
        .insert_integration(ACCOUNT, "reload", "https://tenant.okta.com");
    let dir = std::env::temp_dir().join(format!("zt-sidecar-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
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
    let client = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{addr}{}", lookup_path(ACCOUNT, "reload"));
    // No credential header: the sidecar's token from the file is used.
    assert!(send_with(&client, Method::GET, &url, &[])
        .await
        .cache_status()
        .contains("stored"));
    assert_eq!(
        send_with(&client, Method::GET, &url, &[])
            .await
            .cache_status(),
        "zt-risk-sidecar; hit; ttl=59"
    );

    // A longer TTL and a new token: new entries use both.
    write_config("1h");
    std::fs::write(&token_path, format!("{TOKEN_B}\n")).expect("token");
    process.signal(Signal::SIGHUP);
    let reloaded = process.wait_for_line("SIGHUP: configuration reloaded");
    assert!(
        reloaded.contains("cache_ttl") && reloaded.contains("token"),
        "{reloaded}"
    );
    let miss = send_with(&client, Method::GET, &url, &[]).await;
    assert!(
        miss.cache_status().contains("stored"),
        "a new token is a new partition: {}",
        miss.cache_status()
    );
    let recorded = sim.handle().recorded();
    let last = recorded.last().expect("forwarded");
    assert_eq!(
        last.headers.get("authorization").map(|v| v.as_bytes()),
        Some(bearer(TOKEN_B).as_bytes())
    );
    assert_eq!(
        send_with(&client, Method::GET, &url, &[])
            .await
            .cache_status(),
        "zt-risk-sidecar; hit; ttl=3599"
    );

    // A broken file is rejected, naming the key, and the running configuration stays.
    std::fs::write(&config_path, "cache_ttl = \"soon\"\n").expect("config");
    process.signal(Signal::SIGHUP);
    let rejected = process.wait_for_line("configuration rejected");
    assert!(rejected.contains("cache_ttl"), "{rejected}");
    assert_eq!(
        send_with(&client, Method::GET, &url, &[])
            .await
            .cache_status(),
        "zt-risk-sidecar; hit; ttl=3599"
    );
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
