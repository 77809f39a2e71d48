//! Keeping callers served when Cloudflare is slow, down or rate-limiting: stale-if-error,
//! stale-while-revalidate, the per-credential budget and 429 cool-downs, retries and the circuit
//! breaker. The real sidecar and the simulated API run on real loopback sockets in one
//! current-thread runtime with Tokio's clock paused: time moves only when every task waits on a
//! timer, so TTLs, backoffs, cool-downs and timeouts are crossed exactly, without sleeping.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::support::*;
use http::StatusCode;
use tokio::time::{advance, Instant};
use zt_risk_sidecar::config::Config;

const TTL: Duration = Duration::from_secs(60);

fn base(config: &mut Config) {
    config.ttl.positive = TTL;
    config.ttl.negative = TTL;
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_covers_every_kind_of_failed_refresh() {
    let harness = Harness::start_with(|config| {
        base(config);
        config.ttl.stale_while_revalidate = Duration::ZERO;
        config.upstream_retries = 0;
        config.breaker.failure_threshold = 0;
        // A hang is a failure here, met at the request timeout; serving stale at a soft
        // deadline before it is tests/sidecar/pacing.rs's.
        config.stale_after_slow_upstream = Duration::ZERO;
    })
    .await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-sie", TENANT);
    let original = harness.lookup("ref-sie", TOKEN_A).await;
    assert_cache_status_contains(&original, "stored");
    // A second credential with its own entry, for the 429 case (which cools its credential down).
    assert_cache_status_contains(&harness.lookup("ref-sie", TOKEN_B).await, "stored");
    let mut past_ttl = Duration::from_secs(5);
    advance(TTL + past_ttl).await;

    // (fault, the status upstream answered with, how long the failed refresh takes): every
    // failure is immediate except a hang, which ends at the request timeout and not earlier.
    let faults = [
        (
            Fault::Status(StatusCode::INTERNAL_SERVER_ERROR),
            Some(500),
            Duration::ZERO,
        ),
        (
            Fault::Status(StatusCode::SERVICE_UNAVAILABLE),
            Some(503),
            Duration::ZERO,
        ),
        (Fault::GarbageBody, Some(200), Duration::ZERO),
        (Fault::Reset, None, Duration::ZERO),
        (Fault::Hang, None, harness.config.request_timeout),
    ];
    for (fault, upstream_status, takes) in faults {
        sim.fail_next(1, fault.clone());
        let before = Instant::now();
        let stale = harness.lookup("ref-sie", TOKEN_A).await;
        assert_eq!(before.elapsed(), takes, "{fault:?}: the refresh's duration");
        past_ttl += takes;
        assert_eq!(stale.status, StatusCode::OK, "{fault:?}");
        assert_eq!(
            stale.body, original.body,
            "{fault:?}: the stored answer stands in"
        );
        let expected_status = upstream_status
            .map(|s| format!("; fwd-status={s}"))
            .unwrap_or_default();
        assert_cache_status(
            &stale,
            &format!(
                "zt-risk-sidecar; fwd=stale; ttl=-{}; detail=stale-if-error{expected_status}",
                past_ttl.as_secs()
            ),
        );
        assert_eq!(
            stale.age(),
            (TTL + past_ttl).as_secs(),
            "{fault:?}: a true Age"
        );
    }
    // Cloudflare's 429 for credential B: B's stale entry stands in too.
    sim.fail_next(1, Fault::Status(StatusCode::TOO_MANY_REQUESTS));
    let limited = harness.lookup("ref-sie", TOKEN_B).await;
    assert_eq!(limited.status, StatusCode::OK);
    assert_cache_status_contains(&limited, "detail=stale-if-error; fwd-status=429");

    // A refresh that works replaces the entry.
    let fresh = harness.lookup("ref-sie", TOKEN_A).await;
    assert_cache_status(&fresh, "zt-risk-sidecar; fwd=miss; stored; fwd-status=200");

    // Past the stale-if-error window (24 h by default) the failure reaches the caller.
    advance(TTL + Duration::from_secs(24 * 3600)).await;
    sim.fail_next(1, Fault::Status(StatusCode::SERVICE_UNAVAILABLE));
    let too_old = harness.lookup("ref-sie", TOKEN_A).await;
    assert_eq!(too_old.status, StatusCode::SERVICE_UNAVAILABLE);
    // A 401 or 403 is an answer about the credential, never papered over with stale data.
    advance(TTL).await;
    assert_cache_status_contains(&harness.lookup("ref-sie", TOKEN_A).await, "stored");
    advance(TTL + Duration::from_secs(1)).await;
    for refusal in [StatusCode::FORBIDDEN, StatusCode::UNAUTHORIZED] {
        sim.fail_next(1, Fault::Status(refusal));
        assert_error(&harness.lookup("ref-sie", TOKEN_A).await, refusal, 10000);
    }
    harness.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let harness = Harness::start_with(base).await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-swr", TENANT);
    let original = harness.lookup("ref-swr", TOKEN_A).await;
    advance(TTL + Duration::from_secs(3)).await;
    // The integration changes upstream meanwhile.
    let updated = sim.insert_integration(ACCOUNT, "ref-swr", "https://new-tenant.okta.com");
    // Hold every upstream request: if an answer waited for the refresh, it would never come.
    let gate = sim.hold_requests();
    let replies = join_all((0..5).map(|_| harness.lookup("ref-swr", TOKEN_A))).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, original.body);
        assert_cache_status(
            reply,
            "zt-risk-sidecar; hit; ttl=-3; detail=stale-while-revalidate",
        );
        assert_eq!(reply.age(), TTL.as_secs() + 3);
    }
    wait_until("the one refresh is held upstream", WAIT_LIMIT, || {
        sim.held() == 1
    })
    .await;
    assert_eq!(
        sim.requests(SimRoute::ReferenceGet),
        2,
        "five stale answers, one refresh"
    );
    gate.release();
    wait_until("the refresh has finished", WAIT_LIMIT, || {
        harness.proxy.in_flight() == (0, 0)
    })
    .await;
    let refreshed = harness.lookup("ref-swr", TOKEN_A).await;
    assert_cache_status(&refreshed, "zt-risk-sidecar; hit; ttl=60");
    assert_eq!(refreshed.json()["result"]["id"], updated.id.as_str());
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 2);
    // Past the revalidate window but inside stale-if-error, the caller waits for the refresh.
    advance(TTL + Duration::from_secs(31)).await;
    let waited = harness.lookup("ref-swr", TOKEN_A).await;
    assert_cache_status(&waited, "zt-risk-sidecar; fwd=miss; stored; fwd-status=200");
    harness.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_serves_stale_or_answers_429_locally() {
    let harness = Harness::start_with(|config| {
        base(config);
        config.ttl.stale_while_revalidate = Duration::ZERO;
        // Three calls per 300 s: one token back every 100 s.
        config.budget.requests = NonZeroU32::new(3).expect("non-zero");
        config.budget.burst = NonZeroU32::new(3).expect("non-zero");
    })
    .await;
    let sim = harness.handle();
    for reference in ["b1", "b2", "b3"] {
        assert_eq!(
            harness.lookup(reference, TOKEN_A).await.status,
            StatusCode::NOT_FOUND
        );
    }
    let refused = harness.lookup("b4", TOKEN_A).await;
    assert_error(&refused, StatusCode::TOO_MANY_REQUESTS, 971);
    assert_eq!(refused.header("retry-after"), Some("100"));
    assert_eq!(refused.header("x-should-retry"), Some("false"));
    assert_cache_status(&refused, "zt-risk-sidecar; detail=budget-exhausted");
    assert_eq!(
        sim.requests(SimRoute::ReferenceGet),
        3,
        "no upstream call without budget"
    );
    // Another credential has its own budget.
    assert_eq!(
        harness.lookup("b4", TOKEN_B).await.status,
        StatusCode::NOT_FOUND
    );
    // Expired entries stand in while the budget is empty.
    advance(TTL + Duration::from_secs(1)).await;
    let stale = harness.lookup("b1", TOKEN_A).await;
    assert_eq!(stale.status, StatusCode::NOT_FOUND);
    assert_cache_status(
        &stale,
        "zt-risk-sidecar; hit; ttl=-1; detail=stale-budget-exhausted",
    );
    // 100 s after the burst, one token is back.
    advance(Duration::from_secs(39)).await;
    assert_cache_status_contains(&harness.lookup("b4", TOKEN_A).await, "fwd=miss");
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 5);
    harness.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_429_storm_makes_one_upstream_request_per_credential_per_retry_after_window() {
    let harness = Harness::start_with(base).await;
    let sim = harness.handle();
    // Cloudflare blocks a user over its quota for 120 s.
    sim.set_rate_limit(RateLimitPolicy {
        quota: 1200,
        window: Duration::from_secs(300),
        block: Duration::from_secs(120),
    });
    for (token, user) in [(TOKEN_A, "user-a"), (TOKEN_B, "user-b")] {
        for reference in ["s1", "s2"] {
            assert_eq!(
                harness.lookup(reference, token).await.status,
                StatusCode::NOT_FOUND
            );
        }
        // The user's other tools spend the rest of the window after the sidecar's last reading
        // (1,198 left), so the sidecar's pacing cannot see the block coming.
        sim.set_usage(user, 1200);
        // The third call is Cloudflare's 429: relayed, and the credential cools down.
        let first = harness.lookup("s3", token).await;
        assert_eq!(first.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(first.header("retry-after"), Some("120"));
        assert_eq!(sim.requests_by_user(user), 3);
        // The storm: 50 more lookups of new ids, all answered locally.
        for index in 0..50 {
            let reply = harness.lookup(&format!("storm-{index}"), token).await;
            assert_error(&reply, StatusCode::TOO_MANY_REQUESTS, 971);
            assert_eq!(reply.header("retry-after"), Some("120"));
            assert_eq!(reply.header("x-should-retry"), Some("false"));
            assert_cache_status(&reply, "zt-risk-sidecar; detail=rate-limited");
        }
        assert_eq!(
            sim.requests_by_user(user),
            3,
            "no upstream call while cooling down"
        );
    }
    // Within the window, the remaining wait counts down and drops under the SDKs' 60 s limit.
    advance(Duration::from_secs(70)).await;
    let later = harness.lookup("storm-x", TOKEN_A).await;
    assert_eq!(later.header("retry-after"), Some("50"));
    assert!(later.header("x-should-retry").is_none());
    // README's metrics: Cloudflare's two 429s, and every local refusal while cooling down.
    assert_eq!(
        harness.metric("zt_sidecar_upstream_requests_total{status=\"429\"}"),
        2.0
    );
    assert_eq!(
        harness.metric("zt_sidecar_local_rate_limited_total{reason=\"rate-limited\"}"),
        101.0
    );
    // After the window, one call per credential goes upstream again.
    advance(Duration::from_secs(50)).await;
    assert_eq!(
        harness.lookup("after", TOKEN_A).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(sim.requests_by_user("user-a"), 4);
    assert_eq!(sim.requests_by_user("user-b"), 3);
    harness.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_cached_answer_stands_in_while_its_credential_cools_down_after_a_429() {
    let harness = Harness::start_with(|config| {
        base(config);
        config.ttl.stale_while_revalidate = Duration::ZERO;
    })
    .await;
    let sim = harness.handle();
    // A user over its quota is blocked for 120 s.
    sim.set_rate_limit(RateLimitPolicy {
        quota: 1200,
        window: Duration::from_secs(300),
        block: Duration::from_secs(120),
    });
    sim.insert_integration(ACCOUNT, "ref-cool", TENANT);
    let original = harness.lookup("ref-cool", TOKEN_A).await;
    assert_cache_status_contains(&original, "stored");
    // The user's other tools spend the rest of the window behind the sidecar's back.
    sim.set_usage("user-a", 1200);
    let limited = harness.lookup("other", TOKEN_A).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, 971);
    // Expired, inside the cool-down and inside stale-if-error: the stored answer stands in and
    // nothing is sent.
    advance(TTL + Duration::from_secs(1)).await;
    let stale = harness.lookup("ref-cool", TOKEN_A).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body, original.body);
    assert_cache_status(
        &stale,
        "zt-risk-sidecar; hit; ttl=-1; detail=stale-rate-limited",
    );
    assert_eq!(sim.requests_by_user("user-a"), 2);
    harness.stop().await;
}

#[tokio::test(start_paused = true)]
async fn gateway_failures_are_retried_with_backoff_and_every_retry_spends_budget() {
    let harness = Harness::start_with(|config| {
        base(config);
        config.budget.requests = NonZeroU32::new(4).expect("non-zero");
        config.budget.burst = NonZeroU32::new(4).expect("non-zero");
        config.breaker.failure_threshold = 0;
    })
    .await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "ref-retry", TENANT);
    sim.fail_next(1, Fault::Status(StatusCode::BAD_GATEWAY));
    sim.fail_next(1, Fault::Reset);
    let started = Instant::now();
    let reply = harness.lookup("ref-retry", TOKEN_A).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        sim.requests(SimRoute::ReferenceGet),
        3,
        "one call and two retries"
    );
    // README's metrics: every attempt counted by what came back, the retries apart.
    assert_eq!(harness.metric("zt_sidecar_upstream_retries_total"), 2.0);
    for (status, calls) in [("502", 1.0), ("upstream-unreachable", 1.0), ("200", 1.0)] {
        assert_eq!(
            harness.metric(&format!(
                "zt_sidecar_upstream_requests_total{{status=\"{status}\"}}"
            )),
            calls,
            "{status}"
        );
    }
    // Two jittered backoffs: 50-100 ms, then 100-200 ms.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited <= Duration::from_millis(300),
        "{waited:?}"
    );
    // A 500 and a 404 are answers about the request: never retried.
    sim.fail_next(1, Fault::Status(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(
        harness.lookup("other", TOKEN_A).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 4);
    assert_eq!(harness.metric("zt_sidecar_upstream_retries_total"), 2.0);
    // The retries spent the budget: the next new lookup is refused locally.
    let refused = harness.lookup("third", TOKEN_A).await;
    assert_error(&refused, StatusCode::TOO_MANY_REQUESTS, 971);
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 4);
    assert_eq!(
        harness.metric("zt_sidecar_local_rate_limited_total{reason=\"budget-exhausted\"}"),
        1.0
    );
    harness.stop().await;
}

#[tokio::test(start_paused = true)]
async fn retries_stop_after_two_and_within_the_deadline() {
    let harness = Harness::start_with(|config| {
        base(config);
        config.breaker.failure_threshold = 0;
        config.request_timeout = Duration::from_secs(2);
        config.connect_timeout = Duration::from_secs(1);
    })
    .await;
    let sim = harness.handle();
    sim.set_fault(Some(Fault::Status(StatusCode::SERVICE_UNAVAILABLE)));
    let reply = harness.lookup("down", TOKEN_A).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 3);
    // An upstream that takes 1.5 s per answer: the first 503 arrives at 1.5 s, the retry starts
    // after its backoff and is cut off by the 2 s deadline, which bounds the whole request.
    sim.set_fault(None);
    sim.set_latency(Duration::from_millis(1500));
    sim.fail_next(3, Fault::Status(StatusCode::SERVICE_UNAVAILABLE));
    sim.reset_counters();
    let started = Instant::now();
    let slow = harness.lookup("slow", TOKEN_A).await;
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 2);
    sim.set_fault(None);
    harness.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_fails_fast_and_half_opens() {
    let harness = Harness::start_with(|config| {
        base(config);
        config.ttl.stale_while_revalidate = Duration::ZERO;
        config.upstream_retries = 0;
        config.breaker.failure_threshold = 5;
        config.breaker.cool_down = Duration::from_secs(10);
    })
    .await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "cached", TENANT);
    assert_eq!(
        harness.lookup("cached", TOKEN_A).await.status,
        StatusCode::OK
    );
    advance(TTL + Duration::from_secs(1)).await;
    sim.set_fault(Some(Fault::Status(StatusCode::BAD_GATEWAY)));
    for index in 0..5 {
        let reply = harness.lookup(&format!("new-{index}"), TOKEN_A).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_GATEWAY,
            "relayed while closed"
        );
    }
    assert_eq!(harness.proxy.breaker().state().as_str(), "open");
    let upstream_before = sim.requests(SimRoute::ReferenceGet);
    // Open: uncached lookups fail fast (any credential), cached ones are served stale.
    let fast = harness.lookup("new-x", TOKEN_B).await;
    assert_error(&fast, StatusCode::SERVICE_UNAVAILABLE, 10503);
    assert_eq!(fast.header("retry-after"), Some("10"));
    assert_cache_status(&fast, "zt-risk-sidecar; detail=upstream-down");
    let stale = harness.lookup("cached", TOKEN_A).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_cache_status_contains(&stale, "detail=stale-upstream-down");
    assert_eq!(
        sim.requests(SimRoute::ReferenceGet),
        upstream_before,
        "nothing sent while open"
    );
    // After the cool-down one probe goes through; it fails, so the breaker opens again.
    advance(Duration::from_secs(10)).await;
    assert_eq!(
        harness.lookup("probe-1", TOKEN_A).await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(sim.requests(SimRoute::ReferenceGet), upstream_before + 1);
    assert_eq!(harness.proxy.breaker().state().as_str(), "open");
    assert_eq!(
        harness.lookup("probe-2", TOKEN_A).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Cloudflare recovers: the next probe closes the breaker.
    sim.set_fault(None);
    advance(Duration::from_secs(10)).await;
    assert_eq!(
        harness.lookup("probe-3", TOKEN_A).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(harness.proxy.breaker().state().as_str(), "closed");
    assert_cache_status_contains(&harness.lookup("cached", TOKEN_A).await, "stored");
    harness.stop().await;
}

#[tokio::test(start_paused = true)]
async fn with_upstream_killed_cached_keys_are_served_and_uncached_ones_fail_fast() {
    let mut harness = Harness::start_with(|config| {
        base(config);
        config.ttl.stale_while_revalidate = Duration::ZERO;
    })
    .await;
    let sim = harness.handle();
    for reference in ["k1", "k2"] {
        sim.insert_integration(ACCOUNT, reference, TENANT);
        assert_eq!(
            harness.lookup(reference, TOKEN_A).await.status,
            StatusCode::OK
        );
    }
    harness.kill_upstream().await;
    advance(TTL + Duration::from_secs(1)).await;
    // Each refresh fails to connect (and is retried); the stale entry answers.
    for reference in ["k1", "k2"] {
        let reply = harness.lookup(reference, TOKEN_A).await;
        assert_eq!(reply.status, StatusCode::OK, "{reference}");
        assert_cache_status_contains(&reply, "detail=stale-if-error");
    }
    // Six failed connects so far (two lookups, three attempts each): the breaker is open, so an
    // uncached lookup fails fast and cached ones keep being served.
    assert_eq!(harness.proxy.breaker().state().as_str(), "open");
    let started = Instant::now();
    let uncached = harness.lookup("k3", TOKEN_A).await;
    assert_error(&uncached, StatusCode::SERVICE_UNAVAILABLE, 10503);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no connect attempt, no backoff"
    );
    let cached = harness.lookup("k1", TOKEN_A).await;
    assert_eq!(cached.status, StatusCode::OK);
    assert_cache_status_contains(&cached, "detail=stale-upstream-down");
    harness.stop().await;
}
