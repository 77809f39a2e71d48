//! The store comparison: a cache hit in the sidecar's store (`LocalStore`, quick_cache) against the
//! store it replaced (moka's `future::Cache`, configured as the sidecar configured it: same bound,
//! weigher and per-entry expiry), both holding the same 10,000 entries. It owns only this
//! comparison with the peer; the naive baselines and the rest of the hit path are in
//! `benches/micro.rs` (group `cache_hit`).
//!
//! Run: `cargo bench -p zt-loadtest --features moka-peer --bench store` (moka is compiled only
//! with that feature, so `cargo test` never builds it). Figures: BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cloudflare_sim::DEV_ACCOUNT_ID;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::time::Instant;
use zt_risk_sidecar::cache::{answered_integration, AnswerStore, CacheEntry, CacheKey, LocalStore};
use zt_risk_sidecar::credentials::{self, PartitionKey};
use zt_risk_sidecar::routes::{self, Route};
use zt_risk_sidecar::upstream::UpstreamAnswer;

/// How many entries each store holds while one of them is read.
const STORE_ENTRIES: usize = 10_000;

/// A found integration as the simulator serialises it (397 bytes, like Cloudflare's).
const BODY: &str = r#"{"errors":[],"messages":[],"success":true,"result":{"id":"9eecdb99-3b35-4c2b-9a43-1a0f8e3c1d2e","account_tag":"023e105f4ecef8ad9ca31a8372d0c353","active":true,"created_at":"2026-11-28T14:12:00.117Z","integration_type":"Okta","reference_id":"3701e70b-5de4-4d9d-8972-f5aa994d9057","tenant_url":"https://dev-tenant.okta.com","well_known_url":"/.well-known/sse-configuration/9eecdb99-3b35-4c2b-9a43-1a0f8e3c1d2e/"}}"#;

/// moka's per-entry expiry, as the sidecar configured it.
struct RetainFor;

impl moka::Expiry<CacheKey, CacheEntry> for RetainFor {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        entry: &CacheEntry,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.retain_for)
    }
}

/// The keys of [`STORE_ENTRIES`] lookups by one credential, as the request path builds them.
fn keys() -> Vec<CacheKey> {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer store-bench"),
    );
    let partition = credentials::extract(&headers, None, &PartitionKey::random())
        .expect("credentials")
        .partition();
    (0..STORE_ENTRIES)
        .map(|index| {
            let path = format!(
                "/client/v4/accounts/{DEV_ACCOUNT_ID}/zt_risk_scoring/integrations/reference_id/ref-{index:07}"
            );
            match routes::route(&Method::GET, &path) {
                Ok(Route::Lookup(lookup)) => CacheKey::new(partition, &lookup),
                other => panic!("{path} is not a lookup: {other:?}"),
            }
        })
        .collect()
}

fn entry(answer: &Arc<UpstreamAnswer>) -> CacheEntry {
    CacheEntry {
        answer: Arc::clone(answer),
        stored_at: Instant::now(),
        fresh_for: Duration::from_secs(3600),
        retain_for: Duration::from_secs(7200),
        integration: answered_integration(&answer.body).map(|answered| answered.id),
        fetch_time: Duration::ZERO,
    }
}

fn store_hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_hit");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let answer = Arc::new(UpstreamAnswer {
        status: StatusCode::OK,
        headers: vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body: Bytes::from_static(BODY.as_bytes()),
    });
    let keys = keys();
    let store = LocalStore::new(1 << 30);
    let moka_store: moka::future::Cache<CacheKey, CacheEntry> = moka::future::Cache::builder()
        .max_capacity(1 << 30)
        .weigher(|key: &CacheKey, entry: &CacheEntry| entry.weight(key))
        .expire_after(RetainFor)
        .eviction_listener(|_key, _entry, _cause| {})
        .build();
    rt.block_on(async {
        for key in &keys {
            store.insert(key.clone(), entry(&answer)).await;
            moka_store.insert(key.clone(), entry(&answer)).await;
        }
        moka_store.run_pending_tasks().await;
    });
    let present = &keys[STORE_ENTRIES / 2];
    group.bench_function("LocalStore::get (quick_cache)", |b| {
        b.to_async(&rt).iter(|| store.get(black_box(present)))
    });
    group.bench_function("moka future::Cache get (the previous store)", |b| {
        b.to_async(&rt).iter(|| moka_store.get(black_box(present)))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = store;
    config = config();
    targets = store_hit
}
criterion_main!(store);
