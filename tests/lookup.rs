//! End-to-end lookups over real sockets: the real sidecar server in front of the simulated
//! Cloudflare API, both on ephemeral loopback ports.

mod common;

use std::time::Duration;

use cloudflare_sim::{Fault, SimRoute};
use common::*;
use http::{Method, StatusCode};

fn without_retries_or_stale(config: &mut zt_risk_sidecar::config::Config) {
    config.upstream_retries = 0;
    config.ttl.stale_if_error = Duration::ZERO;
    config.ttl.stale_while_revalidate = Duration::ZERO;
}

fn auth_a() -> [(&'static str, String); 1] {
    [("authorization", bearer(TOKEN_A))]
}

fn headers<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_then_a_hit_makes_one_upstream_request() {
    let harness = Harness::start().await;
    let integration =
        harness
            .handle()
            .insert_integration(ACCOUNT, "ref-1", "https://tenant.okta.com");
    let path = lookup_path(ACCOUNT, "ref-1");
    let auth = auth_a();

    let first = harness.get(&path, &headers(&auth)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.cache_status(),
        "zt-risk-sidecar; fwd=miss; stored; fwd-status=200"
    );
    assert!(first.header("age").is_none());
    assert!(first.header("cf-ray").is_some(), "cf-ray is relayed");
    assert!(
        first.header("ratelimit").is_some(),
        "Ratelimit is relayed on a miss"
    );
    assert_eq!(first.header("content-type"), Some("application/json"));
    let json = first.json();
    assert_eq!(json["success"], true);
    assert_eq!(json["result"]["id"], integration.id.as_str());
    assert_eq!(json["result"]["reference_id"], "ref-1");

    let second = harness.get(&path, &headers(&auth)).await;
    assert_eq!(second.status, StatusCode::OK);
    assert!(
        second
            .cache_status()
            .starts_with("zt-risk-sidecar; hit; ttl="),
        "{}",
        second.cache_status()
    );
    assert_eq!(second.header("age"), Some("0"));
    assert_eq!(second.body, first.body, "a hit relays the same bytes");
    assert_eq!(second.header("cf-ray"), first.header("cf-ray"));
    assert!(
        second.header("ratelimit").is_none(),
        "a stored quota reading is not replayed"
    );
    assert_eq!(harness.handle().requests(SimRoute::ReferenceGet), 1);

    // The query string is ignored: same entry, nothing forwarded.
    let with_query = harness
        .get(&format!("{path}?cachebuster=1"), &headers(&auth))
        .await;
    assert!(with_query.cache_status().contains("hit"));
    // Served without the /client/v4 prefix too, from the same entry.
    let unprefixed = harness
        .get(
            &format!("/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/ref-1"),
            &headers(&auth),
        )
        .await;
    assert!(unprefixed.cache_status().contains("hit"));
    assert_eq!(harness.handle().requests(SimRoute::ReferenceGet), 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_only_credentials_accept_and_its_own_user_agent() {
    let harness = Harness::start().await;
    harness
        .handle()
        .insert_integration(ACCOUNT, "ref-headers", "https://tenant.okta.com");
    let reply = harness
        .get(
            &format!("{}?x=1", lookup_path(ACCOUNT, "ref-headers")),
            &[
                ("authorization", &bearer(TOKEN_A)),
                ("x-stainless-retry-count", "0"),
                ("api-version", "2026-11-28"),
                ("user-agent", "Cloudflare/JS 5.2.0"),
                ("cookie", "session=abc"),
                ("x-forwarded-for", "10.1.2.3"),
                ("connection", "keep-alive, x-custom"),
                ("x-custom", "1"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let recorded = harness.handle().recorded();
    let request = recorded.last().expect("one upstream request");
    assert_eq!(
        request.path_and_query,
        format!(
            "/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/ref-headers"
        )
    );
    let names: Vec<&str> = request.headers.keys().map(|name| name.as_str()).collect();
    for forbidden in [
        "x-stainless-retry-count",
        "api-version",
        "cookie",
        "x-forwarded-for",
        "x-custom",
    ] {
        assert!(
            !names.contains(&forbidden),
            "{forbidden} was forwarded: {names:?}"
        );
    }
    let user_agent = request
        .headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(user_agent.starts_with("zt-risk-sidecar/"), "{user_agent}");
    assert_eq!(
        request.headers.get("authorization").map(|v| v.as_bytes()),
        Some(bearer(TOKEN_A).as_bytes())
    );
    assert_eq!(
        request.headers.get("accept").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_the_ttl() {
    let harness = Harness::start_with(|config| {
        without_retries_or_stale(config);
        config.ttl.positive = Duration::from_millis(300);
    })
    .await;
    harness
        .handle()
        .insert_integration(ACCOUNT, "ref-ttl", "https://tenant.okta.com");
    let path = lookup_path(ACCOUNT, "ref-ttl");
    let auth = auth_a();
    assert!(harness
        .get(&path, &headers(&auth))
        .await
        .cache_status()
        .contains("stored"));
    assert!(harness
        .get(&path, &headers(&auth))
        .await
        .cache_status()
        .contains("hit"));
    // Past the TTL by construction: the freshness check is against the real clock.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = harness.get(&path, &headers(&auth)).await;
    assert_eq!(
        after.cache_status(),
        "zt-risk-sidecar; fwd=miss; stored; fwd-status=200"
    );
    assert_eq!(harness.handle().requests(SimRoute::ReferenceGet), 2);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_is_cached_for_the_negative_ttl() {
    let harness = Harness::start_with(|config| {
        without_retries_or_stale(config);
        config.ttl.negative = Duration::from_millis(300);
    })
    .await;
    let path = lookup_path(ACCOUNT, "missing");
    let auth = auth_a();
    let first = harness.get(&path, &headers(&auth)).await;
    assert_eq!(first.status, StatusCode::NOT_FOUND);
    assert!(first.cache_status().contains("stored"));
    let second = harness.get(&path, &headers(&auth)).await;
    assert_eq!(second.status, StatusCode::NOT_FOUND);
    assert!(second.cache_status().contains("hit"));
    assert_eq!(second.body, first.body);
    assert_eq!(harness.handle().requests(SimRoute::ReferenceGet), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Created meanwhile: after the short negative TTL the lookup finds it.
    harness
        .handle()
        .insert_integration(ACCOUNT, "missing", "https://tenant.okta.com");
    let third = harness.get(&path, &headers(&auth)).await;
    assert_eq!(third.status, StatusCode::OK);
    assert_eq!(harness.handle().requests(SimRoute::ReferenceGet), 2);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_relayed_but_never_cached() {
    // Without retries and stale windows, so that every failure reaches the caller as it came.
    let harness = Harness::start_with(without_retries_or_stale).await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-fail", "https://tenant.okta.com");
    let path = lookup_path(ACCOUNT, "ref-fail");
    let auth = auth_a();
    for status in [401u16, 403, 500, 503] {
        sim.fail_next(
            1,
            Fault::Status(StatusCode::from_u16(status).expect("status")),
        );
        let failed = harness.get(&path, &headers(&auth)).await;
        assert_eq!(failed.status.as_u16(), status);
        assert_eq!(
            failed.cache_status(),
            format!("zt-risk-sidecar; fwd=miss; fwd-status={status}")
        );
        if status == 503 {
            // Cloudflare's edge answers 502-504 with an HTML page: relayed as it came.
            assert!(failed
                .header("content-type")
                .unwrap_or("")
                .starts_with("text/html"));
            assert!(failed.body.starts_with(b"<"), "{:?}", failed.body);
        } else {
            failed.error_code();
        }
    }
    // A body that is not an envelope is no answer: a 502 (code 10506), not stored.
    sim.fail_next(1, Fault::GarbageBody);
    let garbage = harness.get(&path, &headers(&auth)).await;
    assert_eq!(garbage.status, StatusCode::BAD_GATEWAY);
    assert_eq!(garbage.error_code(), 10506);
    assert_eq!(
        garbage.cache_status(),
        "zt-risk-sidecar; fwd=miss; fwd-status=200; detail=upstream-invalid-body"
    );
    // The next lookup goes upstream and, being good, is stored.
    let good = harness.get(&path, &headers(&auth)).await;
    assert!(
        good.cache_status().contains("stored"),
        "{}",
        good.cache_status()
    );
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 6);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_answers_are_relayed_with_retry_after_and_not_cached() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    sim.set_rate_limit(cloudflare_sim::RateLimitPolicy {
        quota: 2,
        window: Duration::from_secs(300),
        block: Duration::from_secs(300),
    });
    let auth = auth_a();
    // Different lookups, so the cache cannot absorb them.
    for reference in ["r1", "r2"] {
        let reply = harness
            .get(&lookup_path(ACCOUNT, reference), &headers(&auth))
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
    }
    // Cloudflare's own 429 is relayed: its envelope, Retry-After and Ratelimit-Policy, plus
    // x-should-retry: false, since SDKs would otherwise retry a 300 s block within seconds.
    let limited = harness
        .get(&lookup_path(ACCOUNT, "r3"), &headers(&auth))
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.error_code(), 971);
    assert_eq!(limited.header("retry-after"), Some("300"));
    assert_eq!(limited.header("x-should-retry"), Some("false"));
    assert!(limited.header("ratelimit-policy").is_some());
    assert_eq!(
        limited.cache_status(),
        "zt-risk-sidecar; fwd=miss; fwd-status=429"
    );
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 3);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_identical_lookups_make_one_upstream_request() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-hot", "https://tenant.okta.com");
    let gate = sim.hold_requests();
    let path = lookup_path(ACCOUNT, "ref-hot");
    let mut lookups = Vec::new();
    for _ in 0..100 {
        let url = harness.url(&path);
        lookups.push(tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            send_with(
                &client,
                Method::GET,
                &url,
                &[("authorization", &bearer(TOKEN_A))],
            )
            .await
        }));
    }
    // Hold the one upstream request until the 99 others have joined it.
    while harness.proxy.in_flight() != (1, 99) || sim.held() != 1 {
        tokio::task::yield_now().await;
    }
    gate.release();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    let mut bodies = std::collections::HashSet::new();
    for lookup in lookups {
        let reply = lookup.await.expect("lookup task");
        assert_eq!(reply.status, StatusCode::OK);
        bodies.insert(reply.body.clone());
        *statuses.entry(reply.cache_status().to_owned()).or_default() += 1;
    }
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 1);
    assert_eq!(bodies.len(), 1, "every waiter got the same answer");
    assert_eq!(
        statuses.get("zt-risk-sidecar; fwd=miss; stored; fwd-status=200"),
        Some(&1),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.get("zt-risk-sidecar; fwd=miss; collapsed; fwd-status=200"),
        Some(&99),
        "{statuses:?}"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_errors_reach_every_waiter_and_are_not_cached() {
    let harness = Harness::start_with(without_retries_or_stale).await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-err", "https://tenant.okta.com");
    sim.fail_next(1, Fault::Status(StatusCode::SERVICE_UNAVAILABLE));
    let gate = sim.hold_requests();
    let path = lookup_path(ACCOUNT, "ref-err");
    let auth = auth_a();
    let auth = headers(&auth);
    let waiters = join_all((0..10).map(|_| harness.get(&path, &auth)));
    let released = async {
        while harness.proxy.in_flight() != (1, 9) || sim.held() != 1 {
            tokio::task::yield_now().await;
        }
        gate.release();
    };
    let (replies, ()) = tokio::join!(waiters, released);
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 1);
    let next = harness.get(&path, &auth).await;
    assert_eq!(next.status, StatusCode::OK);
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 2);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_caller_disconnecting_does_not_cancel_the_others() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-cancel", "https://tenant.okta.com");
    let gate = sim.hold_requests();
    let path = lookup_path(ACCOUNT, "ref-cancel");
    // The leader: a raw connection that will go away mid-request.
    let mut leader = tokio::net::TcpStream::connect(harness.sidecar)
        .await
        .expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: sidecar\r\nAuthorization: {}\r\n\r\n",
        bearer(TOKEN_A)
    );
    tokio::io::AsyncWriteExt::write_all(&mut leader, request.as_bytes())
        .await
        .expect("write");
    while sim.held() != 1 {
        tokio::task::yield_now().await;
    }
    let follower = {
        let url = harness.url(&path);
        tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            send_with(
                &client,
                Method::GET,
                &url,
                &[("authorization", &bearer(TOKEN_A))],
            )
            .await
        })
    };
    while harness.proxy.in_flight() != (1, 1) {
        tokio::task::yield_now().await;
    }
    drop(leader);
    gate.release();
    let reply = follower.await.expect("follower task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.cache_status(),
        "zt-risk-sidecar; fwd=miss; collapsed; fwd-status=200"
    );
    // The leader's fetch was stored even though its caller left.
    let later = harness
        .get(&path, &[("authorization", &bearer(TOKEN_A))])
        .await;
    assert!(
        later.cache_status().contains("hit"),
        "{}",
        later.cache_status()
    );
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credentials_cached_answer_is_never_served_to_another() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-private", "https://tenant.okta.com");
    let path = lookup_path(ACCOUNT, "ref-private");

    let a = harness
        .get(&path, &[("authorization", &bearer(TOKEN_A))])
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(harness
        .get(&path, &[("authorization", &bearer(TOKEN_A))])
        .await
        .cache_status()
        .contains("hit"));

    // An unknown token gets Cloudflare's own 403, not A's cached answer.
    let wrong = harness
        .get(&path, &[("authorization", "Bearer not-a-real-token")])
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(wrong.error_code(), 10000);
    // A valid token without access to the account gets 9109.
    let other = harness
        .get(&path, &[("authorization", &bearer(TOKEN_OTHER_ACCOUNT))])
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    // A second valid token has its own entry: a miss, then its own hit.
    let b = harness
        .get(&path, &[("authorization", &bearer(TOKEN_B))])
        .await;
    assert!(b.cache_status().contains("stored"), "{}", b.cache_status());

    // Email + global key: the right pair is served, a wrong key for the same email is not.
    let good_key = [("x-auth-email", EMAIL), ("x-auth-key", GLOBAL_KEY)];
    assert_eq!(harness.get(&path, &good_key).await.status, StatusCode::OK);
    assert!(harness
        .get(&path, &good_key)
        .await
        .cache_status()
        .contains("hit"));
    let bad_key = harness
        .get(
            &path,
            &[("x-auth-email", EMAIL), ("x-auth-key", "wrong-key")],
        )
        .await;
    assert_eq!(bad_key.status, StatusCode::FORBIDDEN);
    // The same key sent with a bearer token added is a different credential set.
    let mixed = harness
        .get(
            &path,
            &[
                ("x-auth-email", EMAIL),
                ("x-auth-key", "wrong-key"),
                ("authorization", &bearer(TOKEN_A)),
            ],
        )
        .await;
    assert!(
        !mixed.cache_status().contains("hit"),
        "{}",
        mixed.cache_status()
    );

    assert_eq!(sim.requests(SimRoute::ReferenceGet), 7);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_credentials_use_the_sidecar_token_or_get_9106() {
    let without = Harness::start().await;
    without
        .handle()
        .insert_integration(ACCOUNT, "ref-own", "https://tenant.okta.com");
    let reply = without.get(&lookup_path(ACCOUNT, "ref-own"), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), 9106);
    assert_eq!(without.handle().total_requests(), 0);
    without.stop().await;

    let with = Harness::start_with(|config| {
        config.token = Some(zt_risk_sidecar::credentials::Secret::new(
            TOKEN_A.to_owned(),
        ));
    })
    .await;
    with.handle()
        .insert_integration(ACCOUNT, "ref-own", "https://tenant.okta.com");
    let reply = with.get(&lookup_path(ACCOUNT, "ref-own"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let recorded = with.handle().recorded();
    assert_eq!(
        recorded[0]
            .headers
            .get("authorization")
            .map(|v| v.as_bytes()),
        Some(bearer(TOKEN_A).as_bytes())
    );
    // A caller's own (bad) credential is used, never replaced by the sidecar's token.
    let own = with
        .get(
            &lookup_path(ACCOUNT, "ref-own"),
            &[("authorization", "Bearer not-a-real-token")],
        )
        .await;
    assert_eq!(own.status, StatusCode::FORBIDDEN);
    with.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_ids_round_trip_through_percent_encoding() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    let cases = [
        // (stored id, what the caller sends, what reaches upstream)
        ("with space", "with%20space", "with%20space"),
        ("a/b", "a%2Fb", "a%2Fb"),
        ("a+b", "a+b", "a+b"),
        ("literal%20", "literal%2520", "literal%2520"),
        ("café-✓", "caf%C3%A9-%E2%9C%93", "caf%C3%A9-%E2%9C%93"),
        ("!$&'()*,;=:@", "!$&'()*,;=:@", "!$&'()*,;=:@"),
    ];
    for (stored, sent, forwarded) in cases {
        let integration = sim.insert_integration(ACCOUNT, stored, "https://tenant.okta.com");
        let reply = harness
            .get(
                &lookup_path(ACCOUNT, sent),
                &[("authorization", &bearer(TOKEN_A))],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{stored}");
        assert_eq!(
            reply.json()["result"]["id"],
            integration.id.as_str(),
            "{stored}"
        );
        let recorded = sim.recorded();
        let last = recorded.last().expect("forwarded");
        assert_eq!(
            last.path_and_query,
            format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/{forwarded}")
        );
    }
    // `+` and `%2B` name the same id: one cache entry.
    let encoded_plus = harness
        .get(
            &lookup_path(ACCOUNT, "a%2Bb"),
            &[("authorization", &bearer(TOKEN_A))],
        )
        .await;
    assert!(
        encoded_plus.cache_status().contains("hit"),
        "{}",
        encoded_plus.cache_status()
    );
    // A literal "%20" in an id is not the id with a space.
    let space = harness
        .get(
            &lookup_path(ACCOUNT, "literal%20"),
            &[("authorization", &bearer(TOKEN_A))],
        )
        .await;
    assert_eq!(space.status, StatusCode::NOT_FOUND);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_locally_without_upstream_traffic() {
    let harness = Harness::start().await;
    let long = "a".repeat(1025);
    let cases: Vec<(String, String, u16, i64)> = vec![
        // (method, target, status, code)
        (
            "GET".into(),
            lookup_path("023E105F4ECEF8AD9CA31A8372D0C353", "x"),
            400,
            7003,
        ),
        ("GET".into(), lookup_path("023e105f", "x"), 400, 7003),
        ("GET".into(), lookup_path("../../../etc", "x"), 404, 7000),
        ("GET".into(), lookup_path(ACCOUNT, "%zz"), 400, 7003),
        ("GET".into(), lookup_path(ACCOUNT, "%00"), 400, 7003),
        ("GET".into(), lookup_path(ACCOUNT, "%FF%FE"), 400, 7003),
        ("GET".into(), lookup_path(ACCOUNT, "a%0D%0Ab"), 400, 7003),
        ("GET".into(), lookup_path(ACCOUNT, ".."), 400, 7003),
        ("GET".into(), lookup_path(ACCOUNT, "%2E%2E"), 400, 7003),
        ("GET".into(), lookup_path(ACCOUNT, &long), 400, 7003),
        ("GET".into(), lookup_path(ACCOUNT, "a/b"), 404, 7000),
        ("GET".into(), lookup_path(ACCOUNT, ""), 404, 7000),
        ("GET".into(), "/".into(), 404, 7000),
        (
            "GET".into(),
            "/client/v4/user/tokens/verify".into(),
            404,
            7000,
        ),
        (
            "GET".into(),
            format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/summary"),
            404,
            7000,
        ),
        ("POST".into(), lookup_path(ACCOUNT, "x"), 405, 10405),
        ("DELETE".into(), lookup_path(ACCOUNT, "x"), 405, 10405),
    ];
    for (method, target, status, code) in cases {
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: sidecar\r\nAuthorization: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            bearer(TOKEN_A)
        );
        let reply = harness.raw(request.as_bytes()).await;
        assert_eq!(reply.status.as_u16(), status, "{method} {target}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{method} {target}"
        );
        assert_eq!(reply.error_code(), code, "{method} {target}");
        if status == 405 {
            assert_eq!(reply.header("allow"), Some("GET, HEAD"));
        }
    }
    // Repeated credential headers are refused rather than guessed at.
    let repeated = harness
        .raw(
            format!(
                "GET {} HTTP/1.1\r\nHost: s\r\nAuthorization: {}\r\nAuthorization: Bearer other\r\nConnection: close\r\n\r\n",
                lookup_path(ACCOUNT, "x"),
                bearer(TOKEN_A)
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(repeated.status, StatusCode::BAD_REQUEST);
    assert_eq!(repeated.error_code(), 6003);
    assert_eq!(
        harness.handle().total_requests(),
        0,
        "no bad input reached upstream"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_a_fast_502() {
    // A port that was just free: connecting to it is refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let harness = Harness::start().await;
    let mut config = harness.config.clone();
    config.upstream = zt_risk_sidecar::upstream::UpstreamBase::parse(
        &format!("http://{closed}/client/v4"),
        false,
    )
    .expect("loopback");
    let sim = cloudflare_sim::SimulatedCloudflare::start(Default::default())
        .await
        .expect("sim");
    let down = Harness::start_in_front_of(sim, config).await;
    let started = std::time::Instant::now();
    let reply = down
        .get(
            &lookup_path(ACCOUNT, "x"),
            &[("authorization", &bearer(TOKEN_A))],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code(), 10502);
    assert!(
        reply
            .cache_status()
            .contains("detail=upstream-connect-failed"),
        "{}",
        reply.cache_status()
    );
    assert!(
        started.elapsed() < down.config.connect_timeout,
        "refused connections fail without waiting"
    );
    down.stop().await;
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_upstream_is_a_504_at_the_request_timeout() {
    let harness = Harness::start_with(|config| {
        config.request_timeout = Duration::from_millis(500);
        config.connect_timeout = Duration::from_millis(500);
    })
    .await;
    harness.handle().set_fault(Some(Fault::Hang));
    let started = std::time::Instant::now();
    let reply = harness
        .get(
            &lookup_path(ACCOUNT, "x"),
            &[("authorization", &bearer(TOKEN_A))],
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.error_code(), 10504);
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    harness.handle().set_fault(None);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connections_and_oversized_bodies_are_502() {
    let harness = Harness::start_with(without_retries_or_stale).await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-big", "https://tenant.okta.com");
    let path = lookup_path(ACCOUNT, "ref-big");
    sim.fail_next(1, Fault::Reset);
    let reset = harness
        .get(&path, &[("authorization", &bearer(TOKEN_A))])
        .await;
    assert_eq!(reset.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reset.error_code(), 10502);
    sim.fail_next(1, Fault::OversizedBody(1024 * 1024 + 1));
    let big = harness
        .get(&path, &[("authorization", &bearer(TOKEN_A))])
        .await;
    assert_eq!(big.status, StatusCode::BAD_GATEWAY);
    assert_eq!(big.error_code(), 10506);
    let fine = harness
        .get(&path, &[("authorization", &bearer(TOKEN_A))])
        .await;
    assert_eq!(fine.status, StatusCode::OK);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_headers_only_and_shares_the_entry() {
    let harness = Harness::start().await;
    harness
        .handle()
        .insert_integration(ACCOUNT, "ref-head", "https://tenant.okta.com");
    let path = lookup_path(ACCOUNT, "ref-head");
    let request = format!(
        "HEAD {path} HTTP/1.1\r\nHost: s\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        bearer(TOKEN_A)
    );
    let mut stream = tokio::net::TcpStream::connect(harness.sidecar)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut raw)
        .await
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "", "HEAD has no body");
    let get = harness
        .get(&path, &[("authorization", &bearer(TOKEN_A))])
        .await;
    assert!(get.cache_status().contains("hit"), "{}", get.cache_status());
    let length_line = format!("content-length: {}", get.body.len());
    assert!(head.to_ascii_lowercase().contains(&length_line), "{head}");
    assert_eq!(harness.handle().requests(SimRoute::ReferenceGet), 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_http2_is_served() {
    let harness = Harness::start().await;
    harness
        .handle()
        .insert_integration(ACCOUNT, "ref-h2", "https://tenant.okta.com");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let url = harness.url(&lookup_path(ACCOUNT, "ref-h2"));
    let first = send_with(
        &client,
        Method::GET,
        &url,
        &[("authorization", &bearer(TOKEN_A))],
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    let second = send_with(
        &client,
        Method::GET,
        &url,
        &[("authorization", &bearer(TOKEN_A))],
    )
    .await;
    assert!(second.cache_status().contains("hit"));
    harness.stop().await;
}
