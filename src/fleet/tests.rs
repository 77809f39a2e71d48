//! The fleet store against a real `redis-server` (crates/redis-fixture, on a free loopback port):
//! two `FleetStore`s stand for two sidecars sharing one Redis. It owns these tests only; the
//! multi-process promises (real binaries) are in tests/sidecar/fleet*.rs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use redis_fixture::RedisServer;
use tokio::time::Instant;

use super::keys::tests::cache_key as key;
use super::metrics::{CallOutcome, FleetMetrics};
use super::settings::{FleetKey, FleetSettings, RedisUrl};
use super::{Fleet, FleetStore};
use crate::cache::{AnswerStore, CacheEntry, CacheKey, FetchClaim, LocalStore, PurgeScope, Tier};
use crate::routes::ReferenceId;
use crate::upstream::UpstreamAnswer;

/// The longest any test here waits for something another "sidecar" does.
const PATIENCE: Duration = Duration::from_secs(10);

fn settings(server: &RedisServer, key: &[u8], lease: Duration) -> FleetSettings {
    FleetSettings {
        redis_url: RedisUrl::parse(&server.url()).expect("fixture URL"),
        redis_password: None,
        fleet_key: FleetKey::from_bytes(key).expect("long enough"),
        fleet_size: std::num::NonZeroU32::MIN,
        redis_timeout: Duration::from_millis(200),
        lease,
    }
}

/// One "sidecar": its own L1, the shared Redis, its own metrics.
fn sidecar(settings: &FleetSettings) -> (FleetStore, Fleet) {
    let mut registry = prometheus_client::registry::Registry::default();
    let fleet = Fleet::new(settings, FleetMetrics::register(&mut registry)).expect("client");
    let store = FleetStore::with_fleet(LocalStore::new(1 << 20), fleet.clone());
    (store, fleet)
}

fn entry(body: &'static str) -> CacheEntry {
    CacheEntry {
        answer: Arc::new(UpstreamAnswer {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: Bytes::from_static(body.as_bytes()),
        }),
        stored_at: Instant::now(),
        fresh_for: Duration::from_secs(60),
        retain_for: Duration::from_secs(120),
        integration: None,
        fetch_time: Duration::ZERO,
    }
}

/// Claims and stores `body` under `key` as a fetch would.
async fn fetch_and_store(store: &FleetStore, key: &CacheKey, body: &'static str) -> bool {
    fetch_and_store_entry(store, key, entry(body)).await
}

/// Claims and stores `entry` under `key` as a fetch would.
async fn fetch_and_store_entry(store: &FleetStore, key: &CacheKey, entry: CacheEntry) -> bool {
    let deadline = Instant::now() + PATIENCE;
    let FetchClaim::Fetch(ticket) = store.claim_fetch(key, deadline).await else {
        panic!("the first claim fetches");
    };
    store.store_fetched(key.clone(), Some(entry), ticket).await
}

#[tokio::test]
async fn an_entry_stored_by_one_sidecar_is_a_fleet_hit_on_another() {
    let server = RedisServer::start();
    let settings = settings(&server, &[b'a'; 32], Duration::from_secs(2));
    let (one, fleet) = sidecar(&settings);
    let (two, _) = sidecar(&settings);
    let key = key(&fleet.keys.partition_key(), "user-1");
    assert!(two.lookup(&key).await.is_none(), "cold");
    assert!(fetch_and_store(&one, &key, "answer-1").await);
    let (found, tier) = two.lookup(&key).await.expect("from Redis");
    assert_eq!(tier, Tier::Fleet);
    assert_eq!(found.answer.body, "answer-1");
    assert_eq!(found.fresh_for, Duration::from_secs(60));
    // The copy now sits in the second sidecar's L1.
    assert_eq!(
        two.lookup(&key).await.map(|(_, tier)| tier),
        Some(Tier::Local)
    );
    // No id and no body in clear anywhere in Redis.
    let mut connection = server.connection();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut connection)
        .expect("KEYS");
    assert!(!names.is_empty());
    for name in &names {
        assert!(name.starts_with("ztrs:v1:"), "{name}");
        assert!(
            !name.contains("user-1") && !name.contains("023e105f"),
            "{name}"
        );
        let kind: String = redis::cmd("TYPE")
            .arg(name)
            .query(&mut connection)
            .expect("TYPE");
        if kind == "string" {
            let value: Vec<u8> = redis::cmd("GET")
                .arg(name)
                .query(&mut connection)
                .expect("GET");
            let text = String::from_utf8_lossy(&value);
            assert!(!text.contains("answer-1"), "{name} holds the body in clear");
        }
    }
}

/// A sidecar that wins the lease to refresh a key first re-reads Redis: when another sidecar has
/// just stored a newer entry (and let the lease go), it takes that one and lets the lease go
/// without fetching; when Redis holds the same entry as its own copy, it fetches.
#[tokio::test]
async fn a_lease_winner_takes_the_newer_entry_another_sidecar_just_stored() {
    let server = RedisServer::start();
    let settings = settings(&server, &[b'a'; 32], Duration::from_secs(2));
    let (one, fleet) = sidecar(&settings);
    let (two, _) = sidecar(&settings);
    let key = key(&fleet.keys.partition_key(), "user-1");
    let deadline = Instant::now() + PATIENCE;
    let mut older = entry("answer-1");
    older.stored_at = Instant::now() - Duration::from_secs(1);
    assert!(fetch_and_store_entry(&one, &key, older).await);
    assert_eq!(
        two.lookup(&key).await.map(|(_, tier)| tier),
        Some(Tier::Fleet)
    );
    // Redis holds what the second sidecar holds: its refresh is due, and it fetches.
    let FetchClaim::Fetch(ticket) = two.claim_fetch(&key, deadline).await else {
        panic!("the same entry as its own copy: fetch");
    };
    assert!(!two.store_fetched(key.clone(), None, ticket).await);
    // The first sidecar refreshes the key; the second one's refresh then takes its entry.
    assert!(fetch_and_store(&one, &key, "answer-2").await);
    match two.claim_fetch(&key, deadline).await {
        FetchClaim::Filled(newer) => assert_eq!(newer.answer.body, "answer-2"),
        other => panic!("expected the newer entry, got {other:?}"),
    }
    let (copy, tier) = two.lookup(&key).await.expect("kept");
    assert_eq!(copy.answer.body, "answer-2");
    assert_eq!(tier, Tier::Local);
    // And it let the lease go: the next claim fetches at once.
    let claimed = one
        .claim_fetch(&key, Instant::now() + Duration::from_millis(1))
        .await;
    assert!(matches!(claimed, FetchClaim::Fetch(_)), "{claimed:?}");
}

#[tokio::test]
async fn a_value_moved_to_another_key_or_read_by_another_fleet_is_a_miss() {
    let server = RedisServer::start();
    let settings_a = settings(&server, &[b'a'; 32], Duration::from_secs(2));
    let (one, fleet) = sidecar(&settings_a);
    let first = key(&fleet.keys.partition_key(), "user-1");
    let second = key(&fleet.keys.partition_key(), "user-2");
    assert!(fetch_and_store(&one, &first, "answer-1").await);
    let first_name = fleet.keys.key("e", &fleet.keys.entry_hash(&first));
    let second_name = fleet.keys.key("e", &fleet.keys.entry_hash(&second));
    let mut connection = server.connection();
    let value: Vec<u8> = redis::cmd("GET")
        .arg(&first_name)
        .query(&mut connection)
        .expect("GET");
    let () = redis::cmd("SET")
        .arg(&second_name)
        .arg(value)
        .query(&mut connection)
        .expect("SET");
    let (fresh_sidecar, _) = sidecar(&settings_a);
    assert!(fresh_sidecar.lookup(&second).await.is_none(), "moved value");
    // Another fleet, another key: its names differ, and nothing of the first fleet is visible.
    let (other_fleet, other) = sidecar(&settings(&server, &[b'b'; 32], Duration::from_secs(2)));
    let other_key = key(&other.keys.partition_key(), "user-1");
    assert!(other_fleet.lookup(&other_key).await.is_none());
    assert_ne!(other.keys.fleet_id(), fleet.keys.fleet_id());
}

#[tokio::test]
async fn one_sidecar_fetches_while_the_other_waits_for_its_entry() {
    let server = RedisServer::start();
    let settings = settings(&server, &[b'a'; 32], Duration::from_secs(5));
    let (one, fleet) = sidecar(&settings);
    let (two, two_fleet) = sidecar(&settings);
    let key = key(&fleet.keys.partition_key(), "user-1");
    let deadline = Instant::now() + PATIENCE;
    let FetchClaim::Fetch(ticket) = one.claim_fetch(&key, deadline).await else {
        panic!("the first claim fetches");
    };
    let waiter = {
        let two = two.clone();
        let key = key.clone();
        tokio::spawn(async move { two.claim_fetch(&key, deadline).await })
    };
    // Once the waiter has asked for the lease (and been refused: one holds it), it is subscribed
    // to fills; storing then wakes it, or its re-read finds the entry.
    let asked = async {
        while two_fleet.redis.metrics().calls("lease", CallOutcome::Ok) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(PATIENCE, asked)
        .await
        .expect("the waiter asks for the lease");
    assert!(
        one.store_fetched(key.clone(), Some(entry("answer-1")), ticket)
            .await
    );
    match tokio::time::timeout(PATIENCE, waiter).await {
        Ok(Ok(FetchClaim::Filled(filled))) => assert_eq!(filled.answer.body, "answer-1"),
        other => panic!("the waiter gets the entry, not {other:?}"),
    }
}

#[tokio::test]
async fn a_lease_holder_that_dies_delays_the_others_by_at_most_the_lease() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(600);
    let settings = settings(&server, &[b'a'; 32], lease);
    let (one, fleet) = sidecar(&settings);
    let (two, _) = sidecar(&settings);
    let key = key(&fleet.keys.partition_key(), "user-1");
    let deadline = Instant::now() + PATIENCE;
    let FetchClaim::Fetch(ticket) = one.claim_fetch(&key, deadline).await else {
        panic!("the first claim fetches");
    };
    // The holder "dies": its renewal stops and it never stores or lets go.
    drop(ticket);
    let started = Instant::now();
    let claim = tokio::time::timeout(PATIENCE, two.claim_fetch(&key, deadline))
        .await
        .expect("bounded");
    assert!(matches!(claim, FetchClaim::Fetch(_)), "{claim:?}");
    // Contract bound: the lease, plus a second of slack for the re-checks on a busy machine.
    assert!(started.elapsed() <= lease + Duration::from_secs(1));
}

#[tokio::test]
async fn a_write_elsewhere_during_a_fetch_keeps_its_answer_out_and_purges_every_l1() {
    let server = RedisServer::start();
    let settings = settings(&server, &[b'a'; 32], Duration::from_secs(2));
    let (one, fleet) = sidecar(&settings);
    let (two, _) = sidecar(&settings);
    let key = key(&fleet.keys.partition_key(), "user-1");
    // Two holds an L1 copy.
    assert!(fetch_and_store(&one, &key, "old").await);
    assert!(two.lookup(&key).await.is_some());
    // One begins a fetch; two's purge (a write through it) comes before the fetch stores.
    let deadline = Instant::now() + PATIENCE;
    let FetchClaim::Fetch(ticket) = one.claim_fetch(&key, deadline).await else {
        panic!("the lease is free");
    };
    let scope = PurgeScope::Account {
        account_id: key.account_id,
    };
    two.purge(&scope).await;
    assert!(
        !one.store_fetched(key.clone(), Some(entry("racing")), ticket)
            .await
    );
    // The invalidation reaches one's L1 too (it held the first answer), and Redis holds nothing.
    eventually_gone(&one, &key).await;
    let (three, _) = sidecar(&settings);
    assert!(three.lookup(&key).await.is_none());
    // A purge through one reaches two's L1 over pub/sub.
    assert!(fetch_and_store(&one, &key, "new").await);
    assert!(two.lookup(&key).await.is_some());
    one.purge(&PurgeScope::Lookup {
        account_id: key.account_id,
        reference_id: ReferenceId::from_decoded("user-1").expect("valid"),
    })
    .await;
    eventually_gone(&two, &key).await;
}

/// Waits, at most [`PATIENCE`], for an invalidation to reach `store`'s L1.
async fn eventually_gone(store: &FleetStore, key: &CacheKey) {
    let gone = async {
        while store.local().get(key).await.is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(PATIENCE, gone)
        .await
        .expect("the L1 copy is invalidated");
}

#[tokio::test]
async fn with_redis_gone_lookups_miss_and_fetches_go_alone() {
    let mut server = RedisServer::start();
    let settings = settings(&server, &[b'a'; 32], Duration::from_secs(2));
    let (one, fleet) = sidecar(&settings);
    let key = key(&fleet.keys.partition_key(), "user-1");
    server.kill();
    for _ in 0..5 {
        assert!(one.lookup(&key).await.is_none());
    }
    let claim = one.claim_fetch(&key, Instant::now() + PATIENCE).await;
    let FetchClaim::Fetch(ticket) = claim else {
        panic!("fetches alone, not {claim:?}");
    };
    assert!(
        one.store_fetched(key.clone(), Some(entry("alone")), ticket)
            .await
    );
    assert_eq!(
        one.lookup(&key)
            .await
            .map(|(entry, _)| entry.answer.body.clone()),
        Some(Bytes::from_static(b"alone")),
        "kept in L1"
    );
    assert!(fleet.redis.degraded());
}

#[tokio::test]
async fn a_frozen_redis_hangs_nothing_and_a_restarted_one_is_used_again() {
    let mut server = RedisServer::start();
    let settings = settings(&server, &[b'a'; 32], Duration::from_secs(2));
    let (one, fleet) = sidecar(&settings);
    let (two, _) = sidecar(&settings);
    let key = key(&fleet.keys.partition_key(), "user-1");
    server.freeze();
    // Every call is bounded by redis_timeout; PATIENCE only keeps a regression from hanging CI.
    let lookup = tokio::time::timeout(PATIENCE, one.lookup(&key)).await;
    assert!(matches!(lookup, Ok(None)));
    let claim = tokio::time::timeout(PATIENCE, one.claim_fetch(&key, Instant::now() + PATIENCE))
        .await
        .expect("bounded");
    assert!(matches!(claim, FetchClaim::Fetch(_)), "{claim:?}");
    server.thaw();
    server.restart();
    // The fleet reconverges by itself: the breaker probes, the manager reconnects.
    let converged = async {
        loop {
            if fetch_and_store_quietly(&one, &key).await && two.lookup(&key).await.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, converged)
        .await
        .expect("the fleet tier recovers after Redis restarts");
}

/// As [`fetch_and_store`], but a claim that waits or fails is no panic: `false`.
async fn fetch_and_store_quietly(store: &FleetStore, key: &CacheKey) -> bool {
    let deadline = Instant::now() + Duration::from_millis(500);
    match store.claim_fetch(key, deadline).await {
        FetchClaim::Fetch(ticket) => {
            store
                .store_fetched(key.clone(), Some(entry("again")), ticket)
                .await
        }
        FetchClaim::Filled(_) | FetchClaim::TimedOut => false,
    }
}
