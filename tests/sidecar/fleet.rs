//! The fleet tier (issue 15) against real Redis: several real sidecar processes sharing one real
//! `redis-server` (started per test on a free loopback port, no persistence) in front of one
//! simulated Cloudflare API, which counts every upstream call. One upstream call per key for the
//! fleet, one budget and one cool-down per credential, invalidation that reaches every sidecar,
//! Redis killed, frozen and restarted under load, a lease holder killed mid-fetch, what Redis holds
//! (no token bytes, values bound to their keys), fleets that share a Redis but not a key, and the
//! configuration errors. Nothing here fakes Redis or the sidecar.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use redis_fixture::redis;

use crate::support::*;

/// A Redis timeout far above any Redis answer time on a loaded machine, for the tests whose subject
/// is not what a slow Redis does. With the default 50 ms, 150 connections at once on a busy 2-core
/// machine kept a debug sidecar from reading Redis's answer in time in 2 of 5 runs of the stampede
/// test: its breaker opened and it fetched on its own, as degraded mode should.
const GENEROUS_REDIS_TIMEOUT: [&str; 2] = ["--redis-timeout", "1s"];

/// A budget no test's load spends, even as a third of it while Redis is away: the tests of Redis
/// faults measure Redis's absence, not the local share of the budget (other tests do that).
const AMPLE_BUDGET: [&str; 4] = [
    "--upstream-budget-requests",
    "100000",
    "--upstream-budget-burst",
    "30000",
];

/// A simulated API seeded with the test credentials and one integration per reference.
async fn simulated_api(references: &[&str]) -> SimulatedCloudflare {
    let sim = start_simulator().await;
    for reference in references {
        sim.handle().insert_integration(ACCOUNT, reference, TENANT);
    }
    sim
}

/// Waits until every member has `connections` lookup connections open: the callers' requests have
/// reached every sidecar, so they are all in flight at once.
async fn wait_for_open_connections(fleet: &Fleet, connections: f64) {
    for member in &fleet.members {
        wait_until_async(
            "every caller is connected to its sidecar",
            WAIT_LIMIT,
            || async { member.metric("zt_sidecar_connections_open", &[]).await >= connections },
        )
        .await;
    }
}

/// Waits (bounded) until Redis serves the fleet again after an outage: a new integration fetched
/// through the first sidecar is an L2 hit on the second, and no sidecar is degraded. Recovery
/// needs traffic (the breaker's probe is a real call), so every attempt is a lookup of a new
/// integration, inserted for it.
async fn wait_for_the_fleet_to_share_again(sim: &SimulatedCloudflare, fleet: &Fleet) {
    let mut attempt = 0;
    wait_until_async(
        "the fleet shares entries through Redis again",
        WAIT_LIMIT,
        || {
            attempt += 1;
            let reference = format!("again-{attempt}");
            sim.handle().insert_integration(ACCOUNT, &reference, TENANT);
            async move {
                assert_eq!(
                    fleet.member(0).lookup(&reference, TOKEN_A).await.status,
                    StatusCode::OK
                );
                let other = fleet.member(1).lookup(&reference, TOKEN_A).await;
                assert_eq!(other.status, StatusCode::OK);
                other.cache_status().contains("detail=fleet")
            }
        },
    )
    .await;
    for member in &fleet.members {
        let mut attempt = 0;
        wait_until_async("no sidecar is degraded", WAIT_LIMIT, || {
            attempt += 1;
            let reference = format!("probe-{attempt}");
            async move {
                // A miss reads Redis, which is what lets a breaker probe close it again.
                let probe = member.lookup(&reference, TOKEN_A).await;
                assert_eq!(probe.status, StatusCode::NOT_FOUND);
                member.metric("zt_sidecar_fleet_degraded", &[]).await == 0.0
            }
        })
        .await;
    }
}

/// The 99th percentile of `latencies` (nearest rank).
fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    let rank = (latencies.len() * 99).div_ceil(100).max(1);
    latencies[rank - 1]
}

/// 3 sidecars x 50 concurrent identical cold lookups: the fleet makes exactly one upstream call
/// (local coalescing, then the Redis lease; the others wait for the result). Without the lease,
/// each sidecar would make its own call (3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_with_fifty_identical_cold_lookups_each_make_one_upstream_call() {
    let sim = simulated_api(&["stampede"]).await;
    let redis = RedisServer::start();
    let fleet = Fleet::start(&sim.base_url(), &redis, 3, &GENEROUS_REDIS_TIMEOUT);
    // Cloudflare holds the first call until every caller is in flight on every sidecar.
    let gate = sim.handle().hold_requests();
    let lookups = fleet
        .members
        .iter()
        .flat_map(|member| (0..50).map(move |_| member.lookup("stampede", TOKEN_A)));
    let release = async {
        wait_until("the first call is held upstream", WAIT_LIMIT, || {
            sim.handle().held() == 1
        })
        .await;
        wait_for_open_connections(&fleet, 50.0).await;
        gate.release();
    };
    let (replies, ()) = tokio::join!(join_all(lookups), release);
    assert_eq!(replies.len(), 150);
    let body = &replies[0].body;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(&reply.body, body, "every caller gets the same answer");
    }
    let mut outcomes = std::collections::BTreeMap::new();
    for reply in &replies {
        *outcomes.entry(reply.cache_status()).or_insert(0) += 1;
    }
    assert_eq!(
        sim.handle().requests(SimRoute::ReferenceGet),
        1,
        "one upstream call for the whole fleet; the answers: {outcomes:#?}"
    );
    // The sidecars that did not fetch were answered by the one that did.
    let collapsed = replies
        .iter()
        .filter(|reply| reply.cache_status().contains("detail=fleet"))
        .count();
    assert!(
        collapsed >= 100,
        "{collapsed} answers came through the fleet"
    );
    sim.shutdown().await;
}

/// A hot key with a short TTL, looked up back to back through 3 sidecars for several TTLs, costs
/// the fleet at most about one upstream call per TTL (issue 15's target: 1.1 per key per TTL), not
/// one per sidecar, nor one per early refresh: XFetch weighs the entry's measured fetch time (a
/// fixed 1 s made nearly every hit on a 1 s entry refresh it), and a sidecar that wins the lease
/// takes the newer entry another sidecar has just stored instead of fetching again. The bound is
/// the contract's: the TTL periods the lookups spanned (measured), plus the cold fetch, the last
/// period's edge and one early refresh of room for a loaded machine. Before the fix, this made
/// hundreds of calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_costs_the_fleet_about_one_upstream_call_per_ttl() {
    const TTL: Duration = Duration::from_secs(1);
    const PERIODS: u32 = 6;
    let sim = simulated_api(&["hot"]).await;
    let redis = RedisServer::start();
    let mut args = vec!["--cache-ttl", "1s", "--redis-timeout", "1s"];
    args.extend(AMPLE_BUDGET);
    let fleet = Fleet::start(&sim.base_url(), &redis, 3, &args);
    let started = Instant::now();
    let callers = fleet.members.iter().map(|member| async move {
        let mut lookups = 0_u32;
        while started.elapsed() < TTL * PERIODS {
            let reply = member.lookup("hot", TOKEN_A).await;
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            lookups += 1;
        }
        lookups
    });
    let lookups: u32 = join_all(callers).await.into_iter().sum();
    let spanned = started.elapsed().as_secs_f64() / TTL.as_secs_f64();
    let calls = sim.handle().requests(SimRoute::ReferenceGet);
    let newer: f64 = {
        let mut taken = 0.0;
        for member in &fleet.members {
            taken += member
                .metric(
                    "zt_sidecar_fleet_lease_waits_total",
                    &[("outcome", "newer")],
                )
                .await;
        }
        taken
    };
    println!(
        "{calls} upstream calls for {lookups} lookups over {spanned:.2} TTLs; \
         {newer} refreshes took another sidecar's newer entry"
    );
    let bound = spanned.ceil() as u64 + 3;
    assert!(
        (calls as u64) <= bound,
        "{calls} upstream calls over {spanned:.2} TTLs (bound {bound}) for {lookups} lookups"
    );
    sim.shutdown().await;
}

/// A burst spread over three sidecars stays within ONE budget: with a burst of 6, the first
/// sidecar spends all 6 (more than its local share of 2, so the budget is the fleet's) and the two
/// others are refused locally with no upstream call. Without the fleet budget they would make 12
/// more calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_spread_over_three_sidecars_stays_within_one_budget() {
    let sim = simulated_api(&[]).await;
    let redis = RedisServer::start();
    // Six calls an hour: none comes back while the test runs.
    let budget = [
        "--upstream-budget-requests",
        "6",
        "--upstream-budget-burst",
        "6",
        "--upstream-budget-period",
        "1h",
        "--redis-timeout",
        "1s",
    ];
    let fleet = Fleet::start(&sim.base_url(), &redis, 3, &budget);
    for index in 0..6 {
        let reply = fleet
            .member(0)
            .lookup(&format!("burst-{index}"), TOKEN_A)
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
        assert_cache_status_contains(&reply, "fwd=miss");
    }
    for member in &fleet.members[1..] {
        for index in 6..11 {
            let reply = member.lookup(&format!("burst-{index}"), TOKEN_A).await;
            assert_error(&reply, StatusCode::TOO_MANY_REQUESTS, 971);
            assert_cache_status(&reply, "zt-risk-sidecar; detail=budget-exhausted");
        }
    }
    assert_eq!(sim.handle().requests_by_user("user-a"), 6);
    // Another credential has a budget of its own, in the fleet too.
    let other = fleet.member(2).lookup("burst-0", TOKEN_B).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(sim.handle().requests_by_user("user-b"), 1);
    sim.shutdown().await;
}

/// A Cloudflare 429 seen by one sidecar stops all three for that credential until `Retry-After`:
/// the others answer 429 locally with no upstream call, and one call goes upstream again only
/// after the block (a call during the block would be counted by the simulator, and refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_sidecar_stops_all_three_until_retry_after() {
    let sim = simulated_api(&[]).await;
    sim.handle().set_rate_limit(RateLimitPolicy {
        quota: 1200,
        window: Duration::from_secs(300),
        block: Duration::from_secs(3),
    });
    let redis = RedisServer::start();
    let fleet = Fleet::start(&sim.base_url(), &redis, 3, &GENEROUS_REDIS_TIMEOUT);
    assert_eq!(
        fleet.member(0).lookup("before", TOKEN_A).await.status,
        StatusCode::NOT_FOUND
    );
    // The user's other tools spend the rest of the window.
    sim.handle().set_usage("user-a", 1200);
    let blocked = fleet.member(0).lookup("blocked", TOKEN_A).await;
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(blocked.header("retry-after"), Some("3"));
    let calls = sim.handle().requests_by_user("user-a");
    assert_eq!(calls, 2);
    for member in &fleet.members {
        let reply = member.lookup("during", TOKEN_A).await;
        assert_error(&reply, StatusCode::TOO_MANY_REQUESTS, 971);
        assert_cache_status(&reply, "zt-risk-sidecar; detail=rate-limited");
    }
    assert_eq!(
        sim.handle().requests_by_user("user-a"),
        calls,
        "no sidecar calls upstream while the credential cools down"
    );
    // Another credential is not cooling down.
    assert_eq!(
        fleet.member(1).lookup("during", TOKEN_B).await.status,
        StatusCode::NOT_FOUND
    );
    // Once the block is over, the next lookup (through another sidecar) goes upstream, once.
    wait_until_async("the cool-down ends", WAIT_LIMIT, || async {
        fleet.member(2).lookup("after", TOKEN_A).await.status == StatusCode::NOT_FOUND
    })
    .await;
    assert_eq!(sim.handle().requests_by_user("user-a"), calls + 1);
    sim.shutdown().await;
}

/// A purge through one sidecar's admin API reaches every sidecar's L1 and Redis: after Cloudflare's
/// answer changed behind the fleet's back, the purge makes every sidecar answer the new one. With
/// the TTL far longer than the wait, only the invalidation can make that happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_through_one_sidecar_is_seen_by_the_others() {
    let sim = simulated_api(&["purged"]).await;
    let redis = RedisServer::start();
    let fleet = Fleet::start(
        &sim.base_url(),
        &redis,
        3,
        &["--cache-ttl", "1h", "--redis-timeout", "1s"],
    );
    for member in &fleet.members {
        assert_eq!(
            member.lookup("purged", TOKEN_A).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 1);
    // Cloudflare's answer changes without the sidecars knowing.
    sim.handle()
        .insert_integration(ACCOUNT, "purged", "https://changed.okta.com");
    let purge = format!("/cache/purge?account_id={ACCOUNT}&reference_id=purged");
    assert_eq!(
        fleet.member(0).admin(Method::POST, &purge).await.status,
        StatusCode::OK
    );
    for member in &fleet.members {
        wait_until_async("the purge reaches every sidecar", WAIT_LIMIT, || async {
            let reply = member.lookup("purged", TOKEN_A).await;
            reply.json()["result"]["tenant_url"] == "https://changed.okta.com"
        })
        .await;
    }
    sim.shutdown().await;
}

/// The write-through invalidation of a DELETE through one sidecar reaches the others: none of them
/// answers the deleted integration from its cache afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_sidecar_is_seen_by_the_others() {
    let sim = start_simulator().await;
    let integration = sim.handle().insert_integration(ACCOUNT, "written", TENANT);
    let redis = RedisServer::start();
    let fleet = Fleet::start(
        &sim.base_url(),
        &redis,
        3,
        &["--cache-ttl", "1h", "--redis-timeout", "1s"],
    );
    for member in &fleet.members {
        assert_eq!(
            member.lookup("written", TOKEN_A).await.status,
            StatusCode::OK
        );
    }
    let deleted = fleet
        .member(0)
        .lookup
        .send_as(
            Method::DELETE,
            &format!("{}/{}", collection_path(), integration.id),
            TOKEN_A,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    // The writer's own cache is invalidated before it answers (as without a fleet).
    assert_eq!(
        fleet.member(0).lookup("written", TOKEN_A).await.status,
        StatusCode::NOT_FOUND
    );
    for member in &fleet.members[1..] {
        wait_until_async("the write reaches every sidecar", WAIT_LIMIT, || async {
            member.lookup("written", TOKEN_A).await.status == StatusCode::NOT_FOUND
        })
        .await;
    }
    sim.shutdown().await;
}

/// One round of lookups through every member: each member looks up every reference once, and
/// the latency of each lookup (measured at the caller, from sending the request to the end of the
/// body) is recorded. Every answer must be the integration (200): a failed lookup fails the test.
async fn lookup_round(fleet: &Fleet, references: &[String], latencies: &mut Vec<Duration>) {
    let lookups = fleet.members.iter().flat_map(|member| {
        references.iter().map(move |reference| async move {
            let started = Instant::now();
            let reply = member.lookup(reference, TOKEN_A).await;
            (started.elapsed(), reply)
        })
    });
    for (latency, reply) in join_all(lookups).await {
        assert_eq!(reply.status, StatusCode::OK, "a lookup failed: {reply:?}");
        latencies.push(latency);
    }
}

/// Three sidecars on one Redis with an ample budget and `redis_timeout`, whose `count` warm
/// references each member has looked up once, and `count` cold ones none has.
struct LoadedFleet {
    sim: SimulatedCloudflare,
    redis: RedisServer,
    fleet: Fleet,
    references: Vec<String>,
    cold: Vec<String>,
}

async fn loaded_fleet(count: usize, redis_timeout: &str) -> LoadedFleet {
    let references: Vec<String> = (0..count).map(|index| format!("warm-{index}")).collect();
    let cold: Vec<String> = (0..count).map(|index| format!("cold-{index}")).collect();
    let all: Vec<&str> = references.iter().chain(&cold).map(String::as_str).collect();
    let sim = simulated_api(&all).await;
    let redis = RedisServer::start();
    let mut args = vec!["--redis-timeout", redis_timeout];
    args.extend(AMPLE_BUDGET);
    let fleet = Fleet::start(&sim.base_url(), &redis, 3, &args);
    lookup_round(&fleet, &references, &mut Vec::new()).await;
    LoadedFleet {
        sim,
        redis,
        fleet,
        references,
        cold,
    }
}

/// Killing Redis (`SIGKILL`) under load fails no lookup, and keeps the lookups' p99 under the
/// Redis timeout (a dead Redis refuses connections, and the breaker stops asking it); after Redis
/// restarts (empty), the fleet reconverges by itself: a key fetched by one sidecar is an L2 hit on
/// another again.
///
/// How it is measured: each lookup's latency at the caller (request sent to body read), over
/// rounds of warm and cold lookups through all three sidecars while Redis is dead. The bound is
/// the contract's (`redis_timeout`, set to 1 s here so that a loaded debug build on a shared
/// machine meets it with room; the figure is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_under_load_fails_no_lookup_and_the_fleet_reconverges_after_restart() {
    let redis_timeout = Duration::from_secs(1);
    let LoadedFleet {
        sim,
        mut redis,
        fleet,
        references,
        cold,
    } = loaded_fleet(10, "1s").await;

    redis.kill();
    let mut while_dead = Vec::new();
    for round in 0..5 {
        lookup_round(&fleet, &references, &mut while_dead).await;
        lookup_round(&fleet, &cold[round * 2..round * 2 + 2], &mut while_dead).await;
    }
    let p99_dead = p99(&mut while_dead);
    eprintln!(
        "p99 of {} lookups with Redis killed: {p99_dead:?}",
        while_dead.len()
    );
    assert!(
        p99_dead < redis_timeout,
        "p99 {p99_dead:?} with Redis killed is over the Redis timeout"
    );

    redis.restart();
    wait_for_the_fleet_to_share_again(&sim, &fleet).await;
    sim.shutdown().await;
}

/// A frozen Redis (`SIGSTOP`: connections open, nothing answered) hangs nothing: every lookup,
/// cached or not, is answered, within the contract's bound (each Redis call has its own timeout,
/// here 200 ms, and the breaker stops the asking; the bound of 5 s is generous on purpose), and
/// readiness stays up. After the thaw the fleet leaves degraded mode by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_hangs_nothing() {
    let LoadedFleet {
        sim,
        redis,
        fleet,
        references,
        cold,
    } = loaded_fleet(5, "200ms").await;

    redis.freeze();
    let mut frozen = Vec::new();
    lookup_round(&fleet, &references, &mut frozen).await;
    lookup_round(&fleet, &cold, &mut frozen).await;
    let slowest = frozen.iter().max().copied().unwrap_or_default();
    eprintln!(
        "slowest of {} lookups with Redis frozen: {slowest:?}",
        frozen.len()
    );
    assert!(slowest < Duration::from_secs(5), "{slowest:?}");
    for member in &fleet.members {
        assert_eq!(
            member.admin(Method::GET, "/readyz").await.status,
            StatusCode::OK,
            "readiness does not depend on Redis"
        );
    }

    redis.thaw();
    wait_for_the_fleet_to_share_again(&sim, &fleet).await;
    sim.shutdown().await;
}

/// A lease holder killed mid-fetch (`SIGKILL`, its lease left in Redis) delays the others by at
/// most the lease: another sidecar's lookup of the same key is answered within the lease plus a
/// generous margin for one upstream call on a loaded machine, by a fetch of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_killed_mid_fetch_delays_the_others_by_at_most_the_lease() {
    let sim = simulated_api(&["leased"]).await;
    let redis = RedisServer::start();
    let lease = Duration::from_secs(1);
    let mut fleet = Fleet::start(
        &sim.base_url(),
        &redis,
        2,
        &["--fleet-lease", "1s", "--redis-timeout", "250ms"],
    );
    let gate = sim.handle().hold_requests();
    let holder = fleet.member(0).lookup.addr;
    let orphan = tokio::spawn(async move {
        // The caller of the killed sidecar sees its connection closed; that answer is not ours
        // to check (the process is gone), so the raw exchange's outcome is ignored.
        let request = raw_get(&lookup_path(ACCOUNT, "leased"), "");
        let mut stream = tokio::net::TcpStream::connect(holder)
            .await
            .expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut stream, &request)
            .await
            .expect("write");
        read_until_closed(&mut stream, WAIT_LIMIT).await
    });
    wait_until("the holder's fetch is held upstream", WAIT_LIMIT, || {
        sim.handle().held() == 1
    })
    .await;
    fleet.kill_member(0);
    gate.release();
    assert!(orphan.await.expect("caller task").is_empty());

    // The killed holder is gone from the fleet: member 0 is now the other sidecar.
    let started = Instant::now();
    let reply = fleet.member(0).lookup("leased", TOKEN_A).await;
    let waited = started.elapsed();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 2);
    eprintln!("the lookup behind a dead lease holder took {waited:?} (lease {lease:?})");
    assert!(
        waited < lease + Duration::from_secs(3),
        "{waited:?} behind a dead holder with a lease of {lease:?}"
    );
    sim.shutdown().await;
}

/// What Redis holds is useless without the fleet key: `SCAN` and a read of every key (as anyone
/// with Redis access could) show no token bytes, no reference id and no tenant in clear; and an
/// entry's value copied onto another entry's key does not decrypt there: the lookup is a miss
/// (answered correctly from Cloudflare, counted as undecryptable), never an error or the wrong
/// integration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_no_token_bytes_and_a_value_moved_to_another_key_does_not_decrypt() {
    let sim = simulated_api(&["secret-ref-one", "secret-ref-two"]).await;
    let redis = RedisServer::start();
    let fleet = Fleet::start(&sim.base_url(), &redis, 2, &GENEROUS_REDIS_TIMEOUT);
    let mut connection = redis.connection();
    assert_eq!(
        fleet
            .member(0)
            .lookup("secret-ref-one", TOKEN_A)
            .await
            .status,
        StatusCode::OK
    );
    let first_entries = entry_keys(&redis_keys(&mut connection));
    assert_eq!(first_entries.len(), 1, "{first_entries:?}");
    assert_eq!(
        fleet
            .member(0)
            .lookup("secret-ref-two", TOKEN_A)
            .await
            .status,
        StatusCode::OK
    );
    let second_entries: Vec<String> = entry_keys(&redis_keys(&mut connection))
        .into_iter()
        .filter(|key| !first_entries.contains(key))
        .collect();
    for token in [TOKEN_B, TOKEN_OTHER_ACCOUNT] {
        fleet.member(0).lookup("secret-ref-one", token).await;
    }

    let keys = redis_keys(&mut connection);
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(key.starts_with("ztrs:v1:"), "{key}");
        let mut readable = key.as_bytes().to_vec();
        readable.extend(readable_value(&mut connection, key));
        for secret in [
            TOKEN_A,
            TOKEN_B,
            TOKEN_OTHER_ACCOUNT,
            "secret-ref-one",
            "secret-ref-two",
            TENANT,
        ] {
            assert!(
                !readable
                    .windows(secret.len())
                    .any(|window| window == secret.as_bytes()),
                "{key} holds {secret:?} in clear"
            );
        }
    }

    // The second lookup's entry gets the first one's value.
    let [second_entry] = second_entries.as_slice() else {
        panic!("one new entry for the second reference: {second_entries:?}");
    };
    let moved: Vec<u8> = redis::cmd("GET")
        .arg(&first_entries[0])
        .query(&mut connection)
        .expect("GET");
    let _: () = redis::cmd("SET")
        .arg(second_entry)
        .arg(moved)
        .arg("KEEPTTL")
        .query(&mut connection)
        .expect("SET");
    // A sidecar that has not seen the second reference reads it from Redis.
    let reader = fleet.member(1);
    let reply = reader.lookup("secret-ref-two", TOKEN_A).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["result"]["reference_id"], "secret-ref-two");
    assert_cache_status_contains(&reply, "fwd=miss");
    // Counted (once per read of the moved value: the lookup and its fetch each read Redis).
    assert!(
        reader
            .metric(
                "zt_sidecar_fleet_l2_reads_total",
                &[("outcome", "undecryptable")]
            )
            .await
            >= 1.0
    );
    sim.shutdown().await;
}

/// Two fleets with different fleet keys on one Redis never read each other's entries: the second
/// fleet's lookup of a key the first holds goes upstream, and their keys live under two fleet ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fleets_with_different_keys_on_one_redis_never_read_each_others_entries() {
    let sim = simulated_api(&["shared-ref"]).await;
    let redis = RedisServer::start();
    let first = Fleet::start(&sim.base_url(), &redis, 1, &GENEROUS_REDIS_TIMEOUT);
    let second = Fleet::start(&sim.base_url(), &redis, 1, &GENEROUS_REDIS_TIMEOUT);
    let fetched = first.member(0).lookup("shared-ref", TOKEN_A).await;
    assert_eq!(fetched.status, StatusCode::OK);
    let other = second.member(0).lookup("shared-ref", TOKEN_A).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_cache_status_contains(&other, "fwd=miss");
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 2);
    let mut connection = redis.connection();
    let fleet_ids: std::collections::BTreeSet<String> = entry_keys(&redis_keys(&mut connection))
        .iter()
        .filter_map(|key| key.split(':').nth(2).map(str::to_owned))
        .collect();
    assert_eq!(fleet_ids.len(), 2, "{fleet_ids:?}");
    // A purge in one fleet leaves the other's cache alone.
    let purge = format!("/cache/purge?account_id={ACCOUNT}");
    first.member(0).admin(Method::POST, &purge).await;
    assert_cache_status_contains(&second.member(0).lookup("shared-ref", TOKEN_A).await, "hit");
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 2);
    sim.shutdown().await;
}

/// A new replica (or a restarted one) answers what the fleet already holds from Redis, with no
/// upstream call, with the fetching host's freshness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_answers_what_the_fleet_holds_without_an_upstream_call() {
    let sim = simulated_api(&["warm"]).await;
    let redis = RedisServer::start();
    let mut fleet = Fleet::start(
        &sim.base_url(),
        &redis,
        1,
        &["--cache-ttl", "1h", "--redis-timeout", "1s"],
    );
    let fetched = fleet.member(0).lookup("warm", TOKEN_A).await;
    assert_cache_status(
        &fetched,
        "zt-risk-sidecar; fwd=miss; stored; fwd-status=200",
    );
    fleet.kill_member(0);
    let replica = fleet.add_member();
    let warm = fleet.member(replica).lookup("warm", TOKEN_A).await;
    assert_eq!(warm.status, StatusCode::OK);
    assert_eq!(warm.body, fetched.body);
    assert_cache_status_contains(&warm, "detail=fleet");
    assert!(warm.cache_ttl() <= 3600, "{warm:?}");
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 1);
    sim.shutdown().await;
}

/// The least-privilege Redis user of `deploy/redis/users.acl` (only `ztrs:v1:*` keys and channels,
/// only the commands the sidecar uses) is enough for everything the fleet does: shared entries,
/// the lease, the budget and a 429 cool-down, purge and write invalidation. The sidecars log in as
/// that user with the password from a file, as the Kubernetes example does, and Redis's `ACL LOG`
/// records no denied command or key. Catches a command added to the sidecar but not to the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_redis_acl_user_is_enough_for_everything_the_fleet_does() {
    let sim = start_simulator().await;
    let integration = sim.handle().insert_integration(ACCOUNT, "acl-ref", TENANT);
    sim.handle().set_rate_limit(RateLimitPolicy {
        quota: 1200,
        window: Duration::from_secs(300),
        block: Duration::from_secs(1),
    });
    let password = "acl-test-password-5d1c";
    let documented = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/redis/users.acl"),
    )
    .expect("deploy/redis/users.acl");
    let user_line = documented.trim().replace(
        ">PLACEHOLDER-replace-with-a-long-random-password",
        &format!(">{password}"),
    );
    assert!(user_line.contains(password), "{user_line}");
    let acl_dir = tempdir();
    let acl_file = acl_dir.join("users.acl");
    // The default user stays open for the test's own inspection; the sidecars never use it.
    std::fs::write(
        &acl_file,
        format!("user default on nopass ~* &* +@all\n{user_line}\n"),
    )
    .expect("write the ACL file");
    let redis = RedisServer::start_with_args(&["--aclfile", acl_file.to_str().expect("utf8")]);
    let password_file = acl_dir.join("redis-password");
    std::fs::write(&password_file, format!("{password}\n")).expect("write the password file");
    let url = format!("redis://zt-risk-sidecar@127.0.0.1:{}", redis.port());
    let fleet = Fleet::start_with_key(
        &sim.base_url(),
        &url,
        &write_fleet_key(),
        2,
        &[
            "--redis-password-file",
            password_file.to_str().expect("utf8"),
            "--redis-timeout",
            "1s",
        ],
    );
    // Shared entries and the lease: one fetch, an L2 hit on the other.
    assert_eq!(
        fleet.member(0).lookup("acl-ref", TOKEN_A).await.status,
        StatusCode::OK
    );
    assert_cache_status_contains(
        &fleet.member(1).lookup("acl-ref", TOKEN_A).await,
        "detail=fleet",
    );
    // Purge and write invalidation.
    let purge = format!("/cache/purge?account_id={ACCOUNT}&reference_id=acl-ref");
    assert_eq!(
        fleet.member(0).admin(Method::POST, &purge).await.status,
        StatusCode::OK
    );
    let deleted = fleet
        .member(1)
        .lookup
        .send_as(
            Method::DELETE,
            &format!("{}/{}", collection_path(), integration.id),
            TOKEN_A,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    // The budget, Cloudflare's count and a fleet-wide cool-down.
    sim.handle().set_usage("user-a", 1200);
    assert_eq!(
        fleet.member(0).lookup("acl-blocked", TOKEN_A).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_cache_status(
        &fleet.member(1).lookup("acl-blocked", TOKEN_A).await,
        "zt-risk-sidecar; detail=rate-limited",
    );
    let mut connection = redis.connection();
    let denied: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query(&mut connection)
        .expect("ACL LOG");
    assert!(
        denied.is_empty(),
        "Redis denied the sidecar's user: {denied:?}"
    );
    for member in &fleet.members {
        assert_eq!(member.metric("zt_sidecar_fleet_degraded", &[]).await, 0.0);
    }
    sim.shutdown().await;
}

/// Runs the binary with `args` until it exits and returns its exit code and output.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let (code, lines) = SidecarProcess::start(args, &[]).finish();
    (code, lines.join("\n"))
}

/// Redis without a fleet key, or with a key file too short, is a startup error (exit 2) naming
/// the setting, and prints neither the key nor the Redis password.
#[test]
fn redis_without_a_fleet_key_or_with_a_short_one_exits_2_naming_it_and_no_secret() {
    let url = "redis://:redis-password-4f1e@127.0.0.1:1";
    let (code, output) = run_to_exit(&["--redis-url", url]);
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("fleet_key_file"), "{output}");
    assert!(!output.contains("redis-password-4f1e"), "{output}");

    let short = tempdir().join("short.key");
    std::fs::write(&short, "short-fleet-key-0123456789\n").expect("write");
    let short_path = short.to_str().expect("utf8");
    let (code, output) = run_to_exit(&["--redis-url", url, "--fleet-key-file", short_path]);
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("fleet_key_file"), "{output}");
    assert!(!output.contains("short-fleet-key"), "{output}");
    assert!(!output.contains("redis-password-4f1e"), "{output}");

    let missing = tempdir().join("absent.key");
    let (code, output) = run_to_exit(&[
        "--redis-url",
        url,
        "--fleet-key-file",
        missing.to_str().expect("utf8"),
    ]);
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("fleet_key_file"), "{output}");
}

/// With no Redis configured nothing changes: two sidecars are two independent caches (each makes
/// its own upstream call), no answer says `detail=fleet`, and no Redis call is ever counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_redis_configured_nothing_changes() {
    let sim = simulated_api(&["alone"]).await;
    let upstream = sim.base_url();
    let sidecars = [
        FleetMember::start(&upstream, &[]),
        FleetMember::start(&upstream, &[]),
    ];
    for sidecar in &sidecars {
        let miss = sidecar.lookup("alone", TOKEN_A).await;
        assert_cache_status(&miss, "zt-risk-sidecar; fwd=miss; stored; fwd-status=200");
        let hit = sidecar.lookup("alone", TOKEN_A).await;
        assert_cache_status_contains(&hit, "hit");
        assert!(!hit.cache_status().contains("fleet"), "{hit:?}");
        let metrics = sidecar
            .admin
            .get("/metrics", &[("accept", "application/openmetrics-text")])
            .await;
        let scrape = parse_metrics(&metrics);
        let redis_calls: f64 = scrape
            .samples
            .iter()
            .filter(|sample| sample.metric == "zt_sidecar_redis_calls_total")
            .map(|sample| match sample.value {
                prometheus_parse::Value::Counter(value)
                | prometheus_parse::Value::Untyped(value) => value,
                _ => panic!("zt_sidecar_redis_calls_total is a counter"),
            })
            .sum();
        assert_eq!(redis_calls, 0.0);
        assert_eq!(sample(&scrape, "zt_sidecar_fleet_degraded", &[]), 0.0);
    }
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 2);
    sim.shutdown().await;
}
