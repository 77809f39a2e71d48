//! Pacing by Cloudflare's own count: the `Ratelimit` header of every answer, per credential, with
//! callers held at `upstream_reserve` and background refreshes at `upstream_refresh_reserve`. The
//! simulator plays the user's other tools (`SimHandle::set_usage`). Real loopback sockets, one
//! current-thread runtime, Tokio's clock paused: windows and TTLs are crossed exactly, without
//! sleeping.

use std::time::Duration;

use crate::support::*;
use http::StatusCode;
use tokio::time::advance;
use zt_risk_sidecar::config::Config;

const TTL: Duration = Duration::from_secs(60);

fn base(config: &mut Config) {
    config.ttl.positive = TTL;
    config.ttl.negative = TTL;
}

/// The value of an unlabelled gauge in the sidecar's exposition.
fn gauge(harness: &Harness, name: &str) -> i64 {
    let text = harness
        .proxy
        .metrics()
        .encode(zt_risk_sidecar::metrics::Exposition::OpenMetrics);
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"));
    line.split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{line:?} is not a whole number"))
}

/// The local refusals counted under `reason`.
fn refusals(harness: &Harness, reason: &str) -> u64 {
    let text = harness
        .proxy
        .metrics()
        .encode(zt_risk_sidecar::metrics::Exposition::OpenMetrics);
    let wanted = format!("zt_sidecar_local_rate_limited_total{{reason=\"{reason}\"}}");
    text.lines()
        .find_map(|line| line.strip_prefix(wanted.as_str()))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn other_tools_spending_stops_cold_lookups_at_the_reserve_and_cloudflare_never_says_429() {
    let harness = Harness::start_with(|config| {
        base(config);
        // Stale entries stand in for refused calls (not stale-while-revalidate).
        config.ttl.stale_while_revalidate = Duration::ZERO;
    })
    .await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "kept", TENANT);
    assert_eq!(
        gauge(&harness, "zt_sidecar_upstream_quota_lowest_remaining"),
        -1
    );
    assert_eq!(harness.lookup("kept", TOKEN_A).await.status, StatusCode::OK);
    assert_eq!(
        gauge(&harness, "zt_sidecar_upstream_quota_lowest_remaining"),
        1199
    );

    // The user's other tools spend 1,100 of the window's 1,200 calls.
    sim.set_usage("user-a", 1100);
    advance(TTL + Duration::from_secs(1)).await;
    // The next call learns it (99 left, under the 120 of the 10 % reserve)...
    let learned = harness.lookup("cold-0", TOKEN_A).await;
    assert_eq!(learned.status, StatusCode::NOT_FOUND);
    assert_cache_status_contains(&learned, "fwd=miss");
    assert_eq!(
        gauge(&harness, "zt_sidecar_upstream_quota_lowest_remaining"),
        99
    );
    assert_eq!(
        gauge(&harness, "zt_sidecar_upstream_quota_held_credentials"),
        1
    );
    // ...and a stream of distinct cold lookups makes no further call until the window resets:
    // 300 s after the window's first call, 61 s ago.
    for index in 1..=30 {
        let refused = harness.lookup(&format!("cold-{index}"), TOKEN_A).await;
        assert_error(&refused, StatusCode::TOO_MANY_REQUESTS, 971);
        assert_eq!(refused.header("retry-after"), Some("239"));
        assert_eq!(refused.header("x-should-retry"), Some("false"));
        assert_cache_status(&refused, "zt-risk-sidecar; detail=quota-reserve");
    }
    assert_eq!(refusals(&harness, "quota-reserve"), 30);
    // An expired entry stands in meanwhile.
    let stale = harness.lookup("kept", TOKEN_A).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_cache_status(
        &stale,
        "zt-risk-sidecar; hit; ttl=-1; detail=stale-quota-reserve",
    );
    assert_eq!(sim.requests_by_user("user-a"), 2, "held at the reserve");
    // Another credential (another user) is not held.
    assert_cache_status_contains(&harness.lookup("cold-1", TOKEN_B).await, "fwd=miss");

    // Under a minute to the reset, SDKs may wait: no `x-should-retry: false` any more.
    advance(Duration::from_secs(200)).await;
    let soon = harness.lookup("cold-31", TOKEN_A).await;
    assert_eq!(soon.header("retry-after"), Some("39"));
    assert!(soon.header("x-should-retry").is_none());
    // After the reset, calls resume, and the fresh count clears the hold.
    advance(Duration::from_secs(39)).await;
    let resumed = harness.lookup("cold-1", TOKEN_A).await;
    assert_eq!(resumed.status, StatusCode::NOT_FOUND);
    assert_cache_status_contains(&resumed, "fwd=miss");
    assert_eq!(
        gauge(&harness, "zt_sidecar_upstream_quota_held_credentials"),
        0
    );
    assert_cache_status_contains(&harness.lookup("cold-2", TOKEN_A).await, "fwd=miss");
    assert_eq!(sim.requests_by_user("user-a"), 4);
    // Cloudflare never had to refuse: no upstream answer was a 429 (every series exists from the
    // start, so the 429 count is read, not looked for).
    let exposition = harness
        .proxy
        .metrics()
        .encode(zt_risk_sidecar::metrics::Exposition::OpenMetrics);
    let count = |status: &str| -> f64 {
        let series = format!("zt_sidecar_upstream_requests_total{{status=\"{status}\"}}");
        exposition
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{exposition}"))
    };
    assert!(count("200") >= 1.0, "{exposition}");
    assert_eq!(count("429"), 0.0, "{exposition}");
    harness.stop().await;
}

#[tokio::test(start_paused = true)]
async fn refreshes_stop_at_their_reserve_while_a_cold_caller_still_gets_through() {
    // stale-while-revalidate at its default (30 s): expired entries are refreshed in the
    // background.
    let harness = Harness::start_with(base).await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "hot", TENANT);
    assert_eq!(harness.lookup("hot", TOKEN_A).await.status, StatusCode::OK);
    // Other tools leave 250 calls: under the refresh reserve (25 % of 1,200), above the callers'.
    sim.set_usage("user-a", 949);
    assert_cache_status_contains(&harness.lookup("cold-a", TOKEN_A).await, "fwd=miss");
    assert_eq!(
        gauge(&harness, "zt_sidecar_upstream_quota_lowest_remaining"),
        250
    );
    assert_eq!(sim.requests_by_user("user-a"), 2);

    advance(TTL + Duration::from_secs(1)).await;
    let stale = harness.lookup("hot", TOKEN_A).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_cache_status_contains(&stale, "detail=stale-while-revalidate");
    // The refresh it started is refused at its reserve, without a call.
    wait_until(
        "the background refresh ends",
        Duration::from_secs(5),
        || harness.proxy.in_flight() == (0, 0),
    )
    .await;
    assert_eq!(sim.requests_by_user("user-a"), 2, "no refresh call");
    // A caller with a cold key still gets through.
    let cold = harness.lookup("cold-b", TOKEN_A).await;
    assert_eq!(cold.status, StatusCode::NOT_FOUND);
    assert_cache_status_contains(&cold, "fwd=miss");
    assert_eq!(sim.requests_by_user("user-a"), 3);
    harness.stop().await;
}

/// What an SDK does with an answer: retries a 429 or a 5xx up to twice (three attempts, as
/// Cloudflare's SDKs do), unless the answer says `x-should-retry: false`.
async fn sdk_get(harness: &Harness, reference: &str) -> (Reply, u32) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let reply = harness.lookup(reference, TOKEN_A).await;
        let retryable =
            reply.status == StatusCode::TOO_MANY_REQUESTS || reply.status.is_server_error();
        if !retryable || reply.header("x-should-retry") == Some("false") || attempts == 3 {
            return (reply, attempts);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_relayed_503_tells_sdks_not_to_retry_on_top_of_the_sidecars_own_retries() {
    let harness = Harness::start_with(|config| {
        base(config);
        config.breaker.failure_threshold = 0;
    })
    .await;
    let sim = harness.handle();
    sim.set_fault(Some(Fault::Status(StatusCode::SERVICE_UNAVAILABLE)));
    let (reply, attempts) = sdk_get(&harness, "down").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("x-should-retry"), Some("false"));
    assert_cache_status(&reply, "zt-risk-sidecar; fwd=miss; fwd-status=503");
    assert_eq!(attempts, 1, "the SDK stops at the sidecar's answer");
    // The sidecar's own attempts only: one call and two retries, not nine calls.
    assert_eq!(
        sim.requests(SimRoute::ReferenceGet),
        1 + u64::from(harness.config.upstream_retries)
    );
    // An answer that is not a gateway failure keeps SDKs' own rules.
    sim.set_fault(None);
    let (found, _) = sdk_get(&harness, "down").await;
    assert_eq!(found.status, StatusCode::NOT_FOUND);
    assert!(found.header("x-should-retry").is_none());
    harness.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_200_that_is_not_an_envelope_counts_as_a_failure_for_the_breaker() {
    let harness = Harness::start_with(|config| {
        base(config);
        config.upstream_retries = 0;
        config.breaker.failure_threshold = 2;
    })
    .await;
    let sim = harness.handle();
    sim.set_fault(Some(Fault::GarbageBody));
    for reference in ["g1", "g2"] {
        let reply = harness.lookup(reference, TOKEN_A).await;
        assert_error(&reply, StatusCode::BAD_GATEWAY, 10506);
    }
    assert_eq!(harness.proxy.breaker().state().as_str(), "open");
    let fast = harness.lookup("g3", TOKEN_A).await;
    assert_cache_status(&fast, "zt-risk-sidecar; detail=upstream-down");
    assert_eq!(
        sim.requests(SimRoute::ReferenceGet),
        2,
        "nothing sent while open"
    );
    harness.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_refresh_serves_stale_at_the_soft_deadline_and_refreshes_the_entry_afterwards() {
    let harness = Harness::start_with(|config| {
        base(config);
        config.ttl.stale_while_revalidate = Duration::ZERO;
        config.stale_after_slow_upstream = Duration::from_secs(1);
    })
    .await;
    let sim = harness.handle();
    sim.insert_integration(ACCOUNT, "slow", TENANT);
    let original = harness.lookup("slow", TOKEN_A).await;
    assert_eq!(original.status, StatusCode::OK);
    let updated = sim.insert_integration(ACCOUNT, "slow", "https://new-tenant.okta.com");
    advance(TTL + Duration::from_secs(1)).await;
    // Cloudflare now takes 5 s to answer.
    sim.set_latency(Duration::from_secs(5));
    let asked = tokio::time::Instant::now();
    let stale = harness.lookup("slow", TOKEN_A).await;
    assert_eq!(
        asked.elapsed(),
        Duration::from_secs(1),
        "answered at the soft deadline"
    );
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body, original.body);
    assert_cache_status_contains(&stale, "detail=stale-slow-upstream");
    // The fetch goes on and refreshes the entry when Cloudflare answers, 4 s later.
    advance(Duration::from_secs(4)).await;
    wait_until("the refresh completes", Duration::from_secs(30), || {
        harness.proxy.in_flight() == (0, 0)
    })
    .await;
    assert_eq!(asked.elapsed(), Duration::from_secs(5));
    let fresh = harness.lookup("slow", TOKEN_A).await;
    assert_cache_status_contains(&fresh, "hit");
    assert_eq!(
        fresh.json()["result"]["tenant_url"],
        updated.tenant_url.as_str()
    );
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 2);
    // A caller with nothing stale still waits for Cloudflare.
    let asked = tokio::time::Instant::now();
    let cold = harness.lookup("cold", TOKEN_A).await;
    assert_eq!(cold.status, StatusCode::NOT_FOUND);
    assert_eq!(asked.elapsed(), Duration::from_secs(5));
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_misses_queues_for_the_capped_upstream_connections() {
    let harness = Harness::start_with(|config| {
        config.max_upstream_connections = std::num::NonZeroUsize::new(2).expect("non-zero");
    })
    .await;
    let sim = harness.handle();
    let gate = sim.hold_requests();
    let mut lookups = Vec::new();
    for index in 0..6 {
        let sidecar = harness.sidecar;
        lookups.push(tokio::spawn(async move {
            let path = lookup_path(ACCOUNT, &format!("burst-{index}"));
            Endpoint::new(sidecar).get_as(&path, TOKEN_A).await
        }));
    }
    // Six fetches are in flight, but only two requests reach Cloudflare.
    wait_until("six fetches, two upstream requests", WAIT_LIMIT, || {
        harness.proxy.in_flight() == (6, 0) && sim.held() == 2
    })
    .await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(sim.held(), 2, "the cap holds");
    // Released, the queued ones follow within their deadlines.
    gate.release();
    for lookup in lookups {
        let reply = lookup.await.expect("lookup task");
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 6);
    harness.stop().await;
}
