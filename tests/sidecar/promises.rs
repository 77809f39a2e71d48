//! Promises of README, SECURITY.md and ARCHITECTURE.md that no other test held (issue 17, point 1):
//! each test names the promise and, in its doc comment, the mutation of the code that makes it
//! fail. Real sockets and the simulated API where the promise is about traffic; the pure
//! functions where it is about a decision. It must not duplicate a promise another module tests.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use zt_risk_sidecar::config::{parse_file, resolve, Cli, Config, ConfigError};
use zt_risk_sidecar::credentials::{extract, FallbackToken, PartitionKey, Secret};

use crate::support::*;

/// How long the simulator holds the raced lookup's answer: far longer than a write through the
/// sidecar takes on a loaded machine, so the write is done while the fetch is still in flight.
/// The test checks that ordering instead of assuming it.
const RACED_FETCH_DELAY: Duration = Duration::from_secs(3);

/// ARCHITECTURE.md: "a write is visible to the next lookup: the write generation keeps a fetch
/// that began before a write from storing its answer". The lookup's fetch reaches Cloudflare, a
/// PUT through the sidecar completes while that fetch is still in flight, and the fetch then
/// answers: its answer must not be kept, so the next lookup goes to Cloudflare again.
/// Fails when `proxy/lookup.rs` stores without comparing the write generation (the fetch's
/// answer is then a hit for the next lookup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_begun_before_a_write_keeps_no_answer() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    let integration = sim.insert_integration(ACCOUNT, "ref-raced", "https://old.okta.com");
    sim.fail_next(1, Fault::Latency(RACED_FETCH_DELAY));
    let raced = {
        let (sidecar, path) = (harness.sidecar, lookup_path(ACCOUNT, "ref-raced"));
        tokio::spawn(async move { Endpoint::new(sidecar).get_as(&path, TOKEN_A).await })
    };
    wait_until("the lookup's fetch reached Cloudflare", WAIT_LIMIT, || {
        sim.requests(SimRoute::ReferenceGet) == 1
    })
    .await;

    let updated = harness
        .send_json(
            Method::PUT,
            &format!("{}/{}", collection_path(), integration.id),
            TOKEN_B,
            r#"{"active":true,"tenant_url":"https://new.okta.com","reference_id":"ref-raced"}"#,
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{:?}", updated.body);
    assert!(
        !raced.is_finished(),
        "precondition: the write completed while the lookup's fetch was still in flight"
    );

    let raced = raced.await.expect("lookup task");
    assert_eq!(raced.status, StatusCode::OK);
    assert!(
        !raced.cache_status().contains("stored"),
        "a fetch begun before the write said it stored its answer: {}",
        raced.cache_status()
    );
    let after = harness.lookup("ref-raced", TOKEN_A).await;
    assert_cache_status(&after, "zt-risk-sidecar; fwd=miss; stored; fwd-status=200");
    assert_eq!(after.json()["result"]["tenant_url"], "https://new.okta.com");
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 2);
    harness.stop().await;
}

fn resolve_text(text: &str) -> Result<Config, ConfigError> {
    let file = parse_file(text).unwrap_or_else(|error| panic!("{text}: {error}"));
    resolve(&Cli::default(), file, None)
}

fn refused_key(text: &str) -> Option<String> {
    resolve_text(text).err().map(|error| error.key)
}

/// SECURITY.md: an admin listener beyond loopback without an admin token is refused at start,
/// naming `admin_listen`; with a token, or on loopback, it is accepted. Fails when
/// `config/validate.rs` drops the `!admin_listen.ip().is_loopback() && admin_token.is_none()`
/// rule (or replaces either side with a constant).
#[test]
fn a_non_loopback_admin_listener_without_a_token_is_refused() {
    for address in ["0.0.0.0:14481", "192.0.2.10:14481", "[::]:14481"] {
        assert_eq!(
            refused_key(&format!("admin_listen = \"{address}\"")),
            Some("admin_listen".to_owned()),
            "{address} without a token"
        );
    }
    let token_file = tempdir().join("admin-token");
    std::fs::write(&token_file, "admin-token-for-the-test\n").expect("write the token file");
    let with_token = format!(
        "admin_listen = \"0.0.0.0:14481\"\nadmin_token_file = \"{}\"",
        token_file.display()
    );
    assert_eq!(refused_key(&with_token), None, "with a token");
    for address in ["127.0.0.1:14481", "127.0.0.2:14481", "[::1]:14481"] {
        assert_eq!(
            refused_key(&format!("admin_listen = \"{address}\"")),
            None,
            "{address} is loopback"
        );
    }
}

/// SECURITY.md: the admin listener is "never the lookup port". The same address for both is
/// refused, naming `admin_listen`; another port on the same host is accepted. Fails when
/// `config/validate.rs` drops the `settings.listen == ListenAddr::Tcp(admin_listen)` rule.
#[test]
fn an_admin_port_equal_to_the_lookup_port_is_refused() {
    assert_eq!(
        refused_key("listen = \"127.0.0.1:14481\"\nadmin_listen = \"127.0.0.1:14481\""),
        Some("admin_listen".to_owned())
    );
    assert_eq!(
        refused_key("listen = \"127.0.0.1:14480\"\nadmin_listen = \"127.0.0.1:14481\""),
        None
    );
}

/// SECURITY.md: forwarded credential headers are marked sensitive (so that hyper's HTTP/2 encoder
/// never puts them in its compression table), for every kind of credential and for the sidecar's
/// own token. Fails when either `set_sensitive(true)` in `credentials.rs` is removed. (The
/// `credentials_model_holds` property checks the same on generated header sets.)
#[test]
fn forwarded_credential_headers_are_marked_sensitive() {
    let key = PartitionKey::random();
    let mut every_kind = HeaderMap::new();
    for (name, value) in [
        ("authorization", "Bearer token-for-the-test"),
        ("x-auth-email", "someone@example.com"),
        ("x-auth-key", "global-key-for-the-test"),
        ("x-auth-user-service-key", "v1.0-service-key-for-the-test"),
    ] {
        every_kind.insert(name, HeaderValue::from_static(value));
    }
    let credentials = extract(&every_kind, None, &key).expect("four credential headers");
    assert_eq!(credentials.headers().len(), 4);
    for (name, value) in credentials.headers() {
        assert!(value.is_sensitive(), "{name} is not marked sensitive");
    }

    let fallback = FallbackToken::new(&Secret::new("the-sidecars-own-token".to_owned()))
        .expect("a valid token");
    let credentials = extract(&HeaderMap::new(), Some(&fallback), &key).expect("the fallback");
    let [(name, value)] = credentials.headers() else {
        panic!(
            "the fallback is one header: {:?}",
            credentials.headers().len()
        );
    };
    assert_eq!(name, http::header::AUTHORIZATION);
    assert!(
        value.is_sensitive(),
        "the sidecar's own token is not marked sensitive"
    );
}

/// README: `unix_socket_group` sets the group of the Unix socket (name or number). As root (CI)
/// the test uses gid 65534, a group the process is not in, so the `chown` must really happen;
/// as another user only the process's own group can be given, which shows less. Fails as root
/// when `server.rs` skips the `chown` of the socket file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_gets_its_configured_group() {
    use std::os::unix::fs::MetadataExt;
    use zt_risk_sidecar::server::{bind, ListenAddr, UnixSocketSettings};

    let gid = if nix::unistd::geteuid().is_root() {
        65_534
    } else {
        nix::unistd::getegid().as_raw()
    };
    let dir = tempdir();
    let path = dir.join("grouped.sock");
    let settings = UnixSocketSettings {
        mode: 0o660,
        group: Some(gid.to_string()),
    };
    let listener = bind(&ListenAddr::Unix(path.clone()), &settings)
        .await
        .expect("bind the unix socket");
    let metadata = std::fs::metadata(&path).expect("the socket file");
    assert_eq!(metadata.gid(), gid);
    assert_eq!(metadata.mode() & 0o777, 0o660);
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The series of `zt_sidecar_cache_evictions_total` for each cause, in [`EVICTION_CAUSES`] order.
fn evictions(harness: &Harness) -> [f64; 4] {
    EVICTION_CAUSES.map(|cause| {
        harness.metric(&format!(
            "zt_sidecar_cache_evictions_total{{cause=\"{cause}\"}}"
        ))
    })
}

const EVICTION_CAUSES: [&str; 4] = ["expired", "replaced", "explicit", "size"];

/// README's metrics: `zt_sidecar_cache_evictions_total` counts each removal under its cause: an
/// entry refreshed over its stale self is `replaced`, one read past its retention `expired`, one
/// dropped by a write through the sidecar `explicit`, and entries pushed out by the byte bound
/// `size`. The store's own tests check the causes it reports; this checks that they reach the
/// metric (fails when `build_proxy` drops the store's removal listener or mislabels a cause).
#[tokio::test(start_paused = true)]
async fn cache_evictions_are_counted_by_cause() {
    const TTL: Duration = Duration::from_secs(60);
    const STALE_IF_ERROR: Duration = Duration::from_secs(300);
    let harness = Harness::start_with(|config| {
        config.ttl.positive = TTL;
        config.ttl.negative = TTL;
        config.ttl.stale_while_revalidate = Duration::ZERO;
        config.ttl.stale_if_error = STALE_IF_ERROR;
    })
    .await;
    let sim = harness.handle();
    let integration = sim.insert_integration(ACCOUNT, "ref-evicted", TENANT);
    assert_cache_status_contains(&harness.lookup("ref-evicted", TOKEN_A).await, "stored");
    assert_eq!(evictions(&harness), [0.0; 4]);

    // Stale but kept: its refresh replaces it.
    tokio::time::advance(TTL + Duration::from_secs(1)).await;
    assert_cache_status_contains(&harness.lookup("ref-evicted", TOKEN_A).await, "stored");
    assert_eq!(evictions(&harness), [0.0, 1.0, 0.0, 0.0]);

    // Past its retention: the read drops it (or the sweep did, just before), then it is stored
    // afresh, replacing nothing.
    tokio::time::advance(TTL + STALE_IF_ERROR + Duration::from_secs(1)).await;
    assert_cache_status_contains(&harness.lookup("ref-evicted", TOKEN_A).await, "stored");
    wait_until("the expired entry is counted", WAIT_LIMIT, || {
        evictions(&harness) == [1.0, 1.0, 0.0, 0.0]
    })
    .await;

    // A write through the sidecar drops the entry that names the integration.
    let updated = harness
        .send_json(
            Method::PUT,
            &format!("{}/{}", collection_path(), integration.id),
            TOKEN_A,
            r#"{"active":true,"tenant_url":"https://new.okta.com","reference_id":"ref-evicted"}"#,
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{:?}", updated.body);
    assert_eq!(evictions(&harness), [1.0, 1.0, 1.0, 0.0]);
    harness.stop().await;

    // A cache of a few entries' bytes: storing many pushes earlier ones out.
    let small = Harness::start_with(|config| {
        config.cache_max_bytes = std::num::NonZeroU64::new(4096).expect("non-zero");
    })
    .await;
    for index in 0..20 {
        let reply = small.lookup(&format!("absent-{index}"), TOKEN_A).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
    }
    let [expired, replaced, explicit, size] = evictions(&small);
    assert!(size > 0.0, "nothing counted as evicted for size");
    assert_eq!((expired, replaced, explicit), (0.0, 0.0, 0.0));
    small.stop().await;
}

/// SECURITY.md: the log holds "never a reference id, a credential value or a request body". The
/// real binary logs every event of its own code (`zt_risk_sidecar=trace`) in JSON while it
/// serves a miss, a hit, a 404, a refused lookup, a write with a body and a retried failure; no
/// line may hold a reference id, the integration's id, a body sent or a body answered. Fails
/// when an event of the sidecar adds the path, the reference id or a body as a field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reference_id_or_body_reaches_the_log() {
    const REFERENCE: &str = "ref-marker-5a1c";
    const ABSENT: &str = "absent-marker-3e9d";
    const WRITTEN: &str = "written-marker-9d4b";
    const STORED_TENANT: &str = "https://stored-body-marker-7c2a.okta.com";
    const SENT_TENANT: &str = "https://sent-body-marker-1f6e.okta.com";
    let sim = start_simulator().await;
    let integration = sim
        .handle()
        .insert_integration(ACCOUNT, REFERENCE, STORED_TENANT);
    let mut running = SidecarProcess::start_in_front_of(
        &sim.base_url(),
        &["--log-format", "json"],
        &[("RUST_LOG", "info,zt_risk_sidecar=trace")],
    );
    let lookups = Endpoint::new(running.listening_addr());

    assert_cache_status_contains(&lookups.lookup(REFERENCE, TOKEN_A).await, "stored");
    assert_cache_status_contains(&lookups.lookup(REFERENCE, TOKEN_A).await, "hit");
    assert_error(
        &lookups.lookup(ABSENT, TOKEN_A).await,
        StatusCode::NOT_FOUND,
        1000,
    );
    // A credential Cloudflare refuses for the account.
    assert_error(
        &lookups.lookup(REFERENCE, TOKEN_OTHER_ACCOUNT).await,
        StatusCode::FORBIDDEN,
        9109,
    );
    let body = format!(
        r#"{{"integration_type":"Okta","tenant_url":"{SENT_TENANT}","reference_id":"{WRITTEN}"}}"#
    );
    let created = lookups
        .send_json(Method::POST, &collection_path(), TOKEN_A, &body)
        .await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    let created_id = created.json()["result"]["id"]
        .as_str()
        .expect("the new integration's id")
        .to_owned();
    sim.handle().fail_next(1, Fault::Reset);
    assert_cache_status_contains(&lookups.lookup(WRITTEN, TOKEN_B).await, "stored");

    let lines = running.terminate().await;
    let events = lines.iter().filter(|line| line.contains("latency_us"));
    assert_eq!(events.count(), 6, "one event per request: {lines:#?}");
    for marker in [
        REFERENCE,
        ABSENT,
        WRITTEN,
        STORED_TENANT,
        SENT_TENANT,
        integration.id.as_str(),
        created_id.as_str(),
    ] {
        for line in &lines {
            assert!(!line.contains(marker), "{marker:?} in log line: {line}");
        }
    }
    sim.shutdown().await;
}

/// README's metrics: `zt_sidecar_config_reloads_total` counts SIGHUP reloads by result, on the
/// real binary: one applied, then one rejected (a broken file), and nothing else moves them.
/// Fails when `main.rs` stops recording either result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reloads_are_counted_by_result() {
    let sim = start_simulator().await;
    let dir = tempdir();
    let config_path = dir.join("sidecar.toml");
    let config_text = |ttl: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"{}\"\nlog_format = \"json\"\ncache_ttl = \"{ttl}\"\n",
            sim.base_url()
        )
    };
    std::fs::write(&config_path, config_text("60s")).expect("config");
    let mut process =
        SidecarProcess::start(&["--config", config_path.to_str().expect("utf-8")], &[]);
    let (_, admin) = process.listening_addrs();
    let admin = Endpoint::new(admin);
    let reloads = |text: &str| -> [String; 2] {
        ["applied", "rejected"].map(|result| {
            let series = format!("zt_sidecar_config_reloads_total{{result=\"{result}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(series.as_str()))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
                .to_owned()
        })
    };
    let scrape =
        || async { String::from_utf8_lossy(&admin.get("/metrics", &[]).await.body).into_owned() };
    assert_eq!(reloads(&scrape().await), ["0", "0"]);

    std::fs::write(&config_path, config_text("1h")).expect("config");
    process.signal(nix::sys::signal::Signal::SIGHUP);
    process.wait_for_line("SIGHUP: configuration reloaded");
    assert_eq!(reloads(&scrape().await), ["1", "0"]);

    std::fs::write(&config_path, "cache_ttl = \"soon\"\n").expect("config");
    process.signal(nix::sys::signal::Signal::SIGHUP);
    process.wait_for_line("configuration rejected");
    assert_eq!(reloads(&scrape().await), ["1", "1"]);

    process.terminate().await;
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

/// README: `max_waiting_lookups` bounds the callers waiting on fetches in flight, however few the
/// fetches: beyond it, a fast 503 (code 10508) counted as a `pending-lookups` refusal, for the key
/// in flight and any other, while a cached lookup is still served. Fails when `proxy/lookup.rs`
/// stops taking a waiting slot (the fourth caller then joins the held fetch and waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_on_fetches_are_bounded() {
    let harness = Harness::start_with(|config| {
        config.request_limits.max_waiting_lookups = 3;
    })
    .await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "cached", TENANT);
    sim.insert_integration(ACCOUNT, "hot", TENANT);
    assert_cache_status_contains(&harness.lookup("cached", TOKEN_A).await, "stored");
    let gate = sim.hold_requests();
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let (sidecar, path) = (harness.sidecar, lookup_path(ACCOUNT, "hot"));
            tokio::spawn(async move { Endpoint::new(sidecar).get_as(&path, TOKEN_A).await })
        })
        .collect();
    wait_until(
        "three callers wait on the one held fetch",
        WAIT_LIMIT,
        || harness.proxy.in_flight() == (1, 2) && sim.held() == 1,
    )
    .await;
    for reference in ["hot", "cold"] {
        let refused = harness.lookup(reference, TOKEN_A).await;
        assert_error(&refused, StatusCode::SERVICE_UNAVAILABLE, 10508);
    }
    assert_eq!(
        harness.metric("zt_sidecar_refusals_total{reason=\"pending-lookups\"}"),
        2.0
    );
    assert_cache_status_contains(&harness.lookup("cached", TOKEN_A).await, "hit");
    gate.release();
    for lookup in waiting {
        assert_eq!(lookup.await.expect("lookup task").status, StatusCode::OK);
    }
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 2);
    harness.stop().await;
}

/// README: `max_pending_writes` bounds the writes being read or relayed: beyond it, a fast 503
/// (code 10508) before a byte of the body is read, and nothing is sent upstream. Fails when
/// `proxy/mod.rs` stops taking a write slot (the second write then reaches Cloudflare).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_progress_are_bounded() {
    let harness = Harness::start_with(|config| {
        config.request_limits.max_pending_writes = 1;
    })
    .await;
    let sim = harness.handle();
    let gate = sim.hold_requests();
    let body = |reference: &str| {
        format!(
            r#"{{"integration_type":"Okta","tenant_url":"https://tenant.okta.com","reference_id":"{reference}"}}"#
        )
    };
    let first = {
        let (sidecar, body) = (harness.sidecar, body("first-write"));
        tokio::spawn(async move {
            Endpoint::new(sidecar)
                .send_json(Method::POST, &collection_path(), TOKEN_A, &body)
                .await
        })
    };
    wait_until("the first write is held upstream", WAIT_LIMIT, || {
        sim.held() == 1
    })
    .await;
    let refused = harness
        .send_json(
            Method::POST,
            &collection_path(),
            TOKEN_A,
            &body("second-write"),
        )
        .await;
    assert_error(&refused, StatusCode::SERVICE_UNAVAILABLE, 10508);
    assert_eq!(sim.requests(SimRoute::IntegrationCreate), 1);
    gate.release();
    let first = first.await.expect("write task");
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    // The slot is given back: the next write goes through.
    let next = harness
        .send_json(
            Method::POST,
            &collection_path(),
            TOKEN_A,
            &body("third-write"),
        )
        .await;
    assert_eq!(next.status, StatusCode::OK, "{:?}", next.body);
    assert_eq!(sim.requests(SimRoute::IntegrationCreate), 2);
    harness.stop().await;
}
