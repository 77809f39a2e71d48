//! End-to-end lookups over real sockets: the real sidecar server in front of the simulated
//! Cloudflare API, both on ephemeral loopback ports.

use std::time::Duration;

use crate::support::*;
use http::{Method, StatusCode};

fn without_retries_or_stale(config: &mut zt_risk_sidecar::config::Config) {
    config.upstream_retries = 0;
    config.ttl.stale_if_error = Duration::ZERO;
    config.ttl.stale_while_revalidate = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_then_a_hit_makes_one_upstream_request() {
    let harness = Harness::start().await;
    let integration = harness
        .handle()
        .insert_integration(ACCOUNT, "ref-1", TENANT);
    let path = lookup_path(ACCOUNT, "ref-1");

    let before_first = std::time::Instant::now();
    let first = harness.get_as(&path, TOKEN_A).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_cache_status(&first, "zt-risk-sidecar; fwd=miss; stored; fwd-status=200");
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

    let second = harness.get_as(&path, TOKEN_A).await;
    assert_eq!(second.status, StatusCode::OK);
    assert!(
        second
            .cache_status()
            .starts_with("zt-risk-sidecar; hit; ttl="),
        "{}",
        second.cache_status()
    );
    // A true Age: no more than the whole seconds since the answer was stored, however slow the
    // machine is.
    assert!(
        second.age() <= before_first.elapsed().as_secs(),
        "Age {} is longer than the entry has existed",
        second.age()
    );
    assert_eq!(second.body, first.body, "a hit relays the same bytes");
    assert_eq!(second.header("cf-ray"), first.header("cf-ray"));
    assert!(
        second.header("ratelimit").is_none(),
        "a stored quota reading is not replayed"
    );
    // The policy, unlike the reading, still holds: it is kept and replayed.
    assert!(first.header("ratelimit-policy").is_some(), "{first:?}");
    assert_eq!(
        second.header("ratelimit-policy"),
        first.header("ratelimit-policy")
    );
    assert_eq!(harness.handle().requests(SimRoute::ReferenceGet), 1);

    // The query string is ignored: same entry, nothing forwarded.
    let with_query = harness
        .get_as(&format!("{path}?cachebuster=1"), TOKEN_A)
        .await;
    assert_cache_status_contains(&with_query, "hit");
    // Served without the /client/v4 prefix too, from the same entry.
    let unprefixed = harness
        .get(
            &format!("/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/ref-1"),
            &[("authorization", &bearer(TOKEN_A))],
        )
        .await;
    assert_cache_status_contains(&unprefixed, "hit");
    assert_eq!(harness.handle().requests(SimRoute::ReferenceGet), 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_only_credentials_accept_and_its_own_user_agent() {
    let harness = Harness::start().await;
    harness
        .handle()
        .insert_integration(ACCOUNT, "ref-headers", TENANT);
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

/// The TTL of the two expiry tests, crossed on Tokio's paused clock (freshness reads Tokio's clock).
const SHORT_TTL: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn entries_expire_after_the_ttl() {
    let harness = Harness::start_with(|config| {
        without_retries_or_stale(config);
        config.ttl.positive = SHORT_TTL;
    })
    .await;
    harness
        .handle()
        .insert_integration(ACCOUNT, "ref-ttl", TENANT);
    let path = lookup_path(ACCOUNT, "ref-ttl");
    assert_cache_status_contains(&harness.get_as(&path, TOKEN_A).await, "stored");
    assert_cache_status(
        &harness.get_as(&path, TOKEN_A).await,
        "zt-risk-sidecar; hit; ttl=60",
    );
    // A second before the TTL ends the entry still answers; a second after, it does not.
    tokio::time::advance(SHORT_TTL - Duration::from_secs(1)).await;
    assert_cache_status(
        &harness.get_as(&path, TOKEN_A).await,
        "zt-risk-sidecar; hit; ttl=1",
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    let after = harness.get_as(&path, TOKEN_A).await;
    assert_cache_status(&after, "zt-risk-sidecar; fwd=miss; stored; fwd-status=200");
    assert_eq!(harness.handle().requests(SimRoute::ReferenceGet), 2);
    harness.stop().await;
}

#[tokio::test(start_paused = true)]
async fn not_found_is_cached_for_the_negative_ttl() {
    let harness = Harness::start_with(|config| {
        without_retries_or_stale(config);
        config.ttl.negative = SHORT_TTL;
    })
    .await;
    let path = lookup_path(ACCOUNT, "missing");
    let first = harness.get_as(&path, TOKEN_A).await;
    assert_eq!(first.status, StatusCode::NOT_FOUND);
    assert_cache_status_contains(&first, "stored");
    let second = harness.get_as(&path, TOKEN_A).await;
    assert_eq!(second.status, StatusCode::NOT_FOUND);
    assert_cache_status_contains(&second, "hit");
    assert_eq!(second.body, first.body);
    assert_eq!(harness.handle().requests(SimRoute::ReferenceGet), 1);
    // Created meanwhile: until the negative TTL ends the cached 404 still answers, then the
    // lookup finds it.
    harness
        .handle()
        .insert_integration(ACCOUNT, "missing", TENANT);
    tokio::time::advance(SHORT_TTL - Duration::from_secs(1)).await;
    let still_cached = harness.get_as(&path, TOKEN_A).await;
    assert_eq!(still_cached.status, StatusCode::NOT_FOUND);
    assert_cache_status(&still_cached, "zt-risk-sidecar; hit; ttl=1");
    tokio::time::advance(Duration::from_secs(2)).await;
    let third = harness.get_as(&path, TOKEN_A).await;
    assert_eq!(third.status, StatusCode::OK);
    assert_eq!(harness.handle().requests(SimRoute::ReferenceGet), 2);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_relayed_but_never_cached() {
    // Without retries and stale windows, so that every failure reaches the caller as it came.
    let harness = Harness::start_with(without_retries_or_stale).await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-fail", TENANT);
    let path = lookup_path(ACCOUNT, "ref-fail");
    // (injected status, the code of the simulator's envelope; none for the edge's HTML page)
    let failures = [
        (StatusCode::UNAUTHORIZED, Some(10000)),
        (StatusCode::FORBIDDEN, Some(10000)),
        (StatusCode::INTERNAL_SERVER_ERROR, Some(10001)),
        (StatusCode::SERVICE_UNAVAILABLE, None),
    ];
    for (status, code) in failures {
        sim.fail_next(1, Fault::Status(status));
        let failed = harness.get_as(&path, TOKEN_A).await;
        assert_cache_status(
            &failed,
            &format!("zt-risk-sidecar; fwd=miss; fwd-status={}", status.as_u16()),
        );
        let Some(code) = code else {
            // Cloudflare's edge answers 502-504 with an HTML page: relayed as it came.
            assert_eq!(failed.status, status);
            assert!(failed
                .header("content-type")
                .unwrap_or("")
                .starts_with("text/html"));
            assert!(failed.body.starts_with(b"<"), "{:?}", failed.body);
            continue;
        };
        assert_error(&failed, status, code);
    }
    // A body that is not an envelope is no answer: a 502 (code 10506), not stored.
    sim.fail_next(1, Fault::GarbageBody);
    let garbage = harness.get_as(&path, TOKEN_A).await;
    assert_error(&garbage, StatusCode::BAD_GATEWAY, 10506);
    assert_cache_status(
        &garbage,
        "zt-risk-sidecar; fwd=miss; fwd-status=200; detail=upstream-invalid-body",
    );
    // The next lookup goes upstream and, being good, is stored.
    let good = harness.get_as(&path, TOKEN_A).await;
    assert_cache_status_contains(&good, "stored");
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 6);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_answers_are_relayed_with_retry_after_and_not_cached() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    sim.set_rate_limit(RateLimitPolicy {
        quota: 1200,
        window: Duration::from_secs(300),
        block: Duration::from_secs(300),
    });
    // Different lookups, so the cache cannot absorb them.
    for reference in ["r1", "r2"] {
        let reply = harness
            .get_as(&lookup_path(ACCOUNT, reference), TOKEN_A)
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
    }
    // The user's other tools spend the rest of the window after the sidecar's last reading
    // (1,198 left), so the sidecar's pacing cannot see the block coming.
    sim.set_usage("user-a", 1200);
    // Cloudflare's own 429 is relayed: its envelope, Retry-After and Ratelimit-Policy, plus
    // x-should-retry: false, since SDKs would otherwise retry a 300 s block within seconds.
    let limited = harness.get_as(&lookup_path(ACCOUNT, "r3"), TOKEN_A).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, 971);
    assert_eq!(limited.header("retry-after"), Some("300"));
    assert_eq!(limited.header("x-should-retry"), Some("false"));
    assert!(limited.header("ratelimit-policy").is_some());
    assert_cache_status(&limited, "zt-risk-sidecar; fwd=miss; fwd-status=429");
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 3);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_identical_lookups_make_one_upstream_request() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-hot", TENANT);
    let gate = sim.hold_requests();
    let path = lookup_path(ACCOUNT, "ref-hot");
    let mut lookups = Vec::new();
    for _ in 0..100 {
        let (sidecar, path) = (harness.sidecar, path.clone());
        lookups.push(tokio::spawn(async move {
            // A client and connection of its own for each caller.
            Endpoint::new(sidecar).get_as(&path, TOKEN_A).await
        }));
    }
    // Hold the one upstream request until the 99 others have joined it.
    wait_until("99 lookups wait on the one held fetch", WAIT_LIMIT, || {
        harness.proxy.in_flight() == (1, 99) && sim.held() == 1
    })
    .await;
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
    // README's metrics: each caller that joined the fetch is a coalesced waiter.
    assert_eq!(harness.metric("zt_sidecar_coalesced_waiters_total"), 99.0);
    assert_eq!(
        harness.metric("zt_sidecar_upstream_requests_total{status=\"200\"}"),
        1.0
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_errors_reach_every_waiter_and_are_not_cached() {
    let harness = Harness::start_with(without_retries_or_stale).await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-err", TENANT);
    sim.fail_next(1, Fault::Status(StatusCode::SERVICE_UNAVAILABLE));
    let gate = sim.hold_requests();
    let path = lookup_path(ACCOUNT, "ref-err");
    let waiters = join_all((0..10).map(|_| harness.get_as(&path, TOKEN_A)));
    let released = async {
        wait_until("9 lookups wait on the one held fetch", WAIT_LIMIT, || {
            harness.proxy.in_flight() == (1, 9) && sim.held() == 1
        })
        .await;
        gate.release();
    };
    let (replies, ()) = tokio::join!(waiters, released);
    // Every waiter gets the edge's answer as it came (an HTML page, not an envelope): the same
    // status, type and bytes, one as the fetch's leader and nine as collapsed waiters.
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            reply.header("content-type"),
            replies[0].header("content-type")
        );
        assert!(
            reply
                .header("content-type")
                .unwrap_or("")
                .starts_with("text/html"),
            "{reply:?}"
        );
        assert_eq!(reply.body, replies[0].body);
        *statuses.entry(reply.cache_status().to_owned()).or_default() += 1;
    }
    assert_eq!(
        statuses,
        std::collections::BTreeMap::from([
            (
                "zt-risk-sidecar; fwd=miss; collapsed; fwd-status=503".to_owned(),
                9
            ),
            ("zt-risk-sidecar; fwd=miss; fwd-status=503".to_owned(), 1),
        ])
    );
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 1);
    let next = harness.get_as(&path, TOKEN_A).await;
    assert_eq!(next.status, StatusCode::OK);
    assert_cache_status(&next, "zt-risk-sidecar; fwd=miss; stored; fwd-status=200");
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 2);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_credentials_never_share_an_in_flight_fetch() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-two", TENANT);
    let gate = sim.hold_requests();
    let path = lookup_path(ACCOUNT, "ref-two");
    let lookups = join_all(
        [TOKEN_A, TOKEN_B]
            .map(|token| harness.get_as(&path, token))
            .into_iter(),
    );
    let released = async {
        wait_until("both lookups are in flight", WAIT_LIMIT, || {
            let (fetches, waiters) = harness.proxy.in_flight();
            fetches + waiters == 2
        })
        .await;
        // Two fetches, each under its caller's credential; never one fetch and a waiter, which
        // would hand one credential's answer to the other.
        assert_eq!(harness.proxy.in_flight(), (2, 0));
        wait_until("both fetches are held upstream", WAIT_LIMIT, || {
            sim.held() == 2
        })
        .await;
        gate.release();
    };
    let (replies, ()) = tokio::join!(lookups, released);
    for reply in &replies {
        assert_cache_status(reply, "zt-risk-sidecar; fwd=miss; stored; fwd-status=200");
    }
    let mut users: Vec<Option<String>> = sim.recorded().into_iter().map(|r| r.user).collect();
    users.sort();
    assert_eq!(
        users,
        [Some("user-a".to_owned()), Some("user-b".to_owned())]
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_caller_disconnecting_does_not_cancel_the_others() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-cancel", TENANT);
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
    wait_until("the leader's fetch is held upstream", WAIT_LIMIT, || {
        sim.held() == 1
    })
    .await;
    let follower = {
        let (sidecar, path) = (harness.sidecar, path.clone());
        tokio::spawn(async move { Endpoint::new(sidecar).get_as(&path, TOKEN_A).await })
    };
    wait_until(
        "the follower waits on the leader's fetch",
        WAIT_LIMIT,
        || harness.proxy.in_flight() == (1, 1),
    )
    .await;
    drop(leader);
    gate.release();
    let reply = follower.await.expect("follower task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_cache_status(
        &reply,
        "zt-risk-sidecar; fwd=miss; collapsed; fwd-status=200",
    );
    // The leader's fetch was stored even though its caller left.
    let later = harness.get_as(&path, TOKEN_A).await;
    assert_cache_status_contains(&later, "hit");
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credentials_cached_answer_is_never_served_to_another() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-private", TENANT);
    let path = lookup_path(ACCOUNT, "ref-private");

    let a = harness.get_as(&path, TOKEN_A).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_cache_status_contains(&harness.get_as(&path, TOKEN_A).await, "hit");

    // An unknown token gets Cloudflare's own 403, not A's cached answer.
    let wrong = harness
        .get(&path, &[("authorization", "Bearer not-a-real-token")])
        .await;
    assert_error(&wrong, StatusCode::FORBIDDEN, 10000);
    // A valid token without access to the account gets 9109.
    let other = harness.get_as(&path, TOKEN_OTHER_ACCOUNT).await;
    assert_error(&other, StatusCode::FORBIDDEN, 9109);
    // A second valid token has its own entry: a miss, then its own hit.
    let b = harness.get_as(&path, TOKEN_B).await;
    assert_cache_status_contains(&b, "stored");

    // Email + global key: the right pair is served, a wrong key for the same email is not.
    let good_key = [("x-auth-email", EMAIL), ("x-auth-key", GLOBAL_KEY)];
    assert_eq!(harness.get(&path, &good_key).await.status, StatusCode::OK);
    assert_cache_status_contains(&harness.get(&path, &good_key).await, "hit");
    let bad_key = harness
        .get(
            &path,
            &[("x-auth-email", EMAIL), ("x-auth-key", "wrong-key")],
        )
        .await;
    assert_error(&bad_key, StatusCode::FORBIDDEN, 10000);
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
        .insert_integration(ACCOUNT, "ref-own", TENANT);
    let reply = without.get(&lookup_path(ACCOUNT, "ref-own"), &[]).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, 9106);
    assert_eq!(without.handle().total_requests(), 0);
    without.stop().await;

    let with = Harness::start_with(|config| {
        config.token = Some(zt_risk_sidecar::credentials::Secret::new(
            TOKEN_A.to_owned(),
        ));
    })
    .await;
    with.handle().insert_integration(ACCOUNT, "ref-own", TENANT);
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
    assert_error(&own, StatusCode::FORBIDDEN, 10000);
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
        let integration = sim.insert_integration(ACCOUNT, stored, TENANT);
        let reply = harness.get_as(&lookup_path(ACCOUNT, sent), TOKEN_A).await;
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
        .get_as(&lookup_path(ACCOUNT, "a%2Bb"), TOKEN_A)
        .await;
    assert_cache_status_contains(&encoded_plus, "hit");
    // A literal "%20" in an id is not the id with a space.
    let space = harness
        .get_as(&lookup_path(ACCOUNT, "literal%20"), TOKEN_A)
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
        assert_error(&reply, reply.status, code);
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
    assert_error(&repeated, StatusCode::BAD_REQUEST, 6003);
    assert_eq!(
        harness.handle().total_requests(),
        0,
        "no bad input reached upstream"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_a_fast_502() {
    // A port bound but never listened on: connecting to it is refused, and since the socket
    // stays bound for the whole test, no one else can start listening there meanwhile.
    let reserved = tokio::net::TcpSocket::new_v4().expect("socket");
    reserved
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let closed = reserved.local_addr().expect("addr");
    let harness = Harness::start().await;
    let mut config = harness.config.clone();
    config.upstream = zt_risk_sidecar::upstream::UpstreamBase::parse(
        &format!("http://{closed}/client/v4"),
        false,
    )
    .expect("loopback");
    let sim = SimulatedCloudflare::start(Default::default())
        .await
        .expect("sim");
    let down = Harness::start_in_front_of(sim, config).await;
    let started = std::time::Instant::now();
    let reply = down.get_as(&lookup_path(ACCOUNT, "x"), TOKEN_A).await;
    assert_error(&reply, StatusCode::BAD_GATEWAY, 10502);
    assert_cache_status_contains(&reply, "detail=upstream-connect-failed");
    assert!(
        started.elapsed() < down.config.connect_timeout,
        "refused connections fail without waiting"
    );
    // Every attempt is counted under its failure, the retries among them.
    let retries = down.metric("zt_sidecar_upstream_retries_total");
    assert_eq!(retries, f64::from(down.config.upstream_retries));
    assert_eq!(
        down.metric("zt_sidecar_upstream_requests_total{status=\"upstream-connect-failed\"}"),
        1.0 + retries
    );
    down.stop().await;
    drop(reserved);
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
    let reply = harness.get_as(&lookup_path(ACCOUNT, "x"), TOKEN_A).await;
    let elapsed = started.elapsed();
    assert_error(&reply, StatusCode::GATEWAY_TIMEOUT, 10504);
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    // A timeout has spent the deadline: counted once, never retried.
    assert_eq!(
        harness.metric("zt_sidecar_upstream_requests_total{status=\"upstream-timeout\"}"),
        1.0
    );
    assert_eq!(harness.metric("zt_sidecar_upstream_retries_total"), 0.0);
    harness.handle().set_fault(None);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connections_and_oversized_bodies_are_502() {
    let harness = Harness::start_with(without_retries_or_stale).await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-big", TENANT);
    let path = lookup_path(ACCOUNT, "ref-big");
    sim.fail_next(1, Fault::Reset);
    let reset = harness.get_as(&path, TOKEN_A).await;
    assert_error(&reset, StatusCode::BAD_GATEWAY, 10502);
    assert_eq!(
        harness.metric("zt_sidecar_upstream_requests_total{status=\"upstream-unreachable\"}"),
        1.0
    );
    sim.fail_next(1, Fault::OversizedBody(1024 * 1024 + 1));
    let big = harness.get_as(&path, TOKEN_A).await;
    assert_error(&big, StatusCode::BAD_GATEWAY, 10506);
    assert_eq!(
        harness.metric("zt_sidecar_upstream_requests_total{status=\"upstream-body-too-large\"}"),
        1.0
    );
    let fine = harness.get_as(&path, TOKEN_A).await;
    assert_eq!(fine.status, StatusCode::OK);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_headers_only_and_shares_the_entry() {
    let harness = Harness::start().await;
    harness
        .handle()
        .insert_integration(ACCOUNT, "ref-head", TENANT);
    let path = lookup_path(ACCOUNT, "ref-head");
    let request = format!(
        "HEAD {path} HTTP/1.1\r\nHost: s\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        bearer(TOKEN_A)
    );
    let head = harness.raw(request.as_bytes()).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty(), "HEAD has no body: {:?}", head.body);
    let get = harness.get_as(&path, TOKEN_A).await;
    assert_cache_status_contains(&get, "hit");
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str()),
        "HEAD announces the length a GET sends"
    );
    assert_eq!(harness.handle().requests(SimRoute::ReferenceGet), 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_http2_is_served() {
    let harness = Harness::start().await;
    harness
        .handle()
        .insert_integration(ACCOUNT, "ref-h2", TENANT);
    let client = http2_client();
    let url = harness.url(&lookup_path(ACCOUNT, "ref-h2"));
    let auth = bearer(TOKEN_A);
    let first = send_with(&client, Method::GET, &url, &[("authorization", &auth)]).await;
    assert_eq!(first.status, StatusCode::OK);
    let second = send_with(&client, Method::GET, &url, &[("authorization", &auth)]).await;
    assert_cache_status_contains(&second, "hit");
    harness.stop().await;
}
