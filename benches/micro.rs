//! Micro benchmarks of the hit path, piece by piece, each beside a naive baseline in the same
//! group: routing and identifier decoding, the credential partition hash, cache-key building, a
//! cache hit, response building, and the whole hit path of `Proxy::handle` on a warmed proxy
//! (no socket). The baselines are what a reasonable engineer might have written first: a
//! `split().collect()` router with owned strings, std's `DefaultHasher`, a `String` key in a
//! `Mutex<HashMap>`, and a body re-serialised with `serde_json` on every hit.
//!
//! Run: `cargo bench --bench micro` (about 2 minutes; 1 s warm-up and 3 s of measurement per
//! benchmark unless `--warm-up-time` / `--measurement-time` say otherwise). Figures and how to read
//! them: BENCHMARKS.md.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::hint::black_box;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use cloudflare_sim::{SimConfig, SimulatedCloudflare, DEV_ACCOUNT_ID, DEV_TOKEN};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderName, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use percent_encoding::percent_decode_str;
use tokio::runtime::Runtime;
use tokio::time::Instant;
use zt_risk_sidecar::cache::{
    answered_integration, AnswerStore, CacheEntry, CacheKey, Freshness, LocalStore,
};
use zt_risk_sidecar::config::{self, Cli, FileConfig};
use zt_risk_sidecar::credentials::{self, PartitionKey};
use zt_risk_sidecar::proxy::{hit_response, CACHE_STATUS};
use zt_risk_sidecar::routes::{self, Lookup, Route};
use zt_risk_sidecar::upstream::{UpstreamAnswer, UpstreamBase};

const UUID_REFERENCE: &str = "3701e70b-5de4-4d9d-8972-f5aa994d9057";
/// `team a/okta+eu`, as a caller sends it: the decoding has work to do.
const ESCAPED_REFERENCE: &str = "team%20a%2Fokta%2Beu";

/// How many entries the stores hold while one of them is read.
const STORE_ENTRIES: usize = 10_000;

/// A found integration as the simulator serialises it (397 bytes, like Cloudflare's).
const BODY: &str = r#"{"errors":[],"messages":[],"success":true,"result":{"id":"9eecdb99-3b35-4c2b-9a43-1a0f8e3c1d2e","account_tag":"023e105f4ecef8ad9ca31a8372d0c353","active":true,"created_at":"2026-11-28T14:12:00.117Z","integration_type":"Okta","reference_id":"3701e70b-5de4-4d9d-8972-f5aa994d9057","tenant_url":"https://dev-tenant.okta.com","well_known_url":"/.well-known/sse-configuration/9eecdb99-3b35-4c2b-9a43-1a0f8e3c1d2e/"}}"#;

/// The lookup a path names (the path must be a lookup route).
fn lookup_of(path: &str) -> Lookup {
    match routes::route(&Method::GET, path) {
        Ok(Route::Lookup(lookup)) => lookup,
        other => panic!("{path} is not a lookup: {other:?}"),
    }
}

fn lookup_path(reference: &str) -> String {
    format!(
        "/client/v4/accounts/{DEV_ACCOUNT_ID}/zt_risk_scoring/integrations/reference_id/{reference}"
    )
}

/// The headers an SDK call carries: the credential among the usual others.
fn sdk_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    let pairs = [
        ("host", "127.0.0.1:14480"),
        ("user-agent", "Cloudflare/Python 4.3.1"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("x-stainless-lang", "python"),
        ("x-stainless-retry-count", "0"),
        (
            "authorization",
            "Bearer zt-risk-sidecar-simulated-dev-token-0001",
        ),
    ];
    for (name, value) in pairs {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

fn answer() -> Arc<UpstreamAnswer> {
    Arc::new(UpstreamAnswer {
        status: StatusCode::OK,
        headers: vec![
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (
                HeaderName::from_static("ratelimit"),
                HeaderValue::from_static("\"default\";r=1199;t=300"),
            ),
            (
                HeaderName::from_static("ratelimit-policy"),
                HeaderValue::from_static("\"default\";q=1200;w=300"),
            ),
            (
                HeaderName::from_static("cf-ray"),
                HeaderValue::from_static("f6f4e0775dc84dee-SJC"),
            ),
        ],
        body: Bytes::from_static(BODY.as_bytes()),
    })
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

// ---- the naive baselines ----

/// A first-draft router: split into owned pieces, compare, decode into a `String`.
#[derive(Clone)]
struct NaiveLookup {
    account_id: String,
    reference_id: String,
}

fn naive_route(method: &Method, path: &str) -> Option<NaiveLookup> {
    let path = path.strip_prefix("/client/v4").unwrap_or(path);
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() != 7
        || !parts[0].is_empty()
        || parts[1] != "accounts"
        || parts[3] != "zt_risk_scoring"
        || parts[4] != "integrations"
        || parts[5] != "reference_id"
    {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let account = parts[2];
    if account.len() != 32
        || !account
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let reference = percent_decode_str(parts[6])
        .decode_utf8()
        .ok()?
        .into_owned();
    if reference.is_empty() || reference.chars().any(char::is_control) {
        return None;
    }
    Some(NaiveLookup {
        account_id: account.to_owned(),
        reference_id: reference,
    })
}

/// std's SipHash over the credential headers: fast, but 64 bits and not keyed with a secret, so
/// not a usable partition (a collision would cross-serve answers). A speed reference only.
fn naive_partition(headers: &HeaderMap) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    let mut found = false;
    for name in [
        "authorization",
        "x-auth-email",
        "x-auth-key",
        "x-auth-user-service-key",
    ] {
        if let Some(value) = headers.get(name) {
            name.hash(&mut hasher);
            value.to_str().ok()?.to_owned().hash(&mut hasher);
            found = true;
        }
    }
    found.then(|| hasher.finish())
}

fn naive_key(partition: u64, lookup: &NaiveLookup) -> String {
    format!(
        "{partition:016x}:{}:{}",
        lookup.account_id, lookup.reference_id
    )
}

/// What a first draft keeps: the parsed JSON and the headers as strings.
struct NaiveEntry {
    value: serde_json::Value,
    headers: Vec<(String, String)>,
    stored_at: std::time::Instant,
    fresh_for: Duration,
}

fn naive_response(entry: &NaiveEntry) -> Option<Response<Full<Bytes>>> {
    let age = entry.stored_at.elapsed();
    let body = serde_json::to_vec(&entry.value).ok()?;
    let mut builder = Response::builder().status(StatusCode::OK);
    for (name, value) in &entry.headers {
        if name == "ratelimit" {
            continue;
        }
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .header("age", age.as_secs().to_string())
        .header(
            "cache-status",
            format!(
                "zt-risk-sidecar; hit; ttl={}",
                entry.fresh_for.saturating_sub(age).as_secs()
            ),
        )
        .body(Full::new(Bytes::from(body)))
        .ok()
}

type NaiveStore = Mutex<HashMap<String, NaiveEntry>>;

fn naive_entry() -> NaiveEntry {
    let answer = answer();
    NaiveEntry {
        value: serde_json::from_slice(&answer.body).expect("valid JSON"),
        headers: answer
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    value.to_str().expect("ASCII").to_owned(),
                )
            })
            .collect(),
        stored_at: std::time::Instant::now(),
        fresh_for: Duration::from_secs(3600),
    }
}

/// The whole naive hit path: route, hash, key, locked map, re-serialised response.
fn naive_handle(store: &NaiveStore, request: &Request<()>) -> Option<Response<Full<Bytes>>> {
    let lookup = naive_route(request.method(), request.uri().path())?;
    let partition = naive_partition(request.headers())?;
    let key = naive_key(partition, &lookup);
    let map = store.lock().unwrap_or_else(PoisonError::into_inner);
    naive_response(map.get(&key)?)
}

/// The sidecar's own response to a hit (`proxy::hit_response`), at `now`.
fn sidecar_response(entry: &CacheEntry, now: Instant) -> Response<Full<Bytes>> {
    let remaining = match entry.freshness(now) {
        Freshness::Fresh { remaining } => remaining,
        Freshness::Stale { .. } => Duration::ZERO,
    };
    hit_response(entry, remaining, now)
}

// ---- the groups ----

fn route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for (name, reference) in [("uuid", UUID_REFERENCE), ("escaped", ESCAPED_REFERENCE)] {
        let path = lookup_path(reference);
        group.bench_function(format!("routes::route/{name}"), |b| {
            b.iter(|| routes::route(black_box(&Method::GET), black_box(&path)).is_ok())
        });
        group.bench_function(format!("naive split+collect/{name}"), |b| {
            b.iter(|| naive_route(black_box(&Method::GET), black_box(&path)).is_some())
        });
    }
    group.finish();
}

fn partition(c: &mut Criterion) {
    let mut group = c.benchmark_group("partition");
    let headers = sdk_headers();
    let key = PartitionKey::random();
    group.bench_function("credentials::extract (blake3 keyed)", |b| {
        b.iter(|| {
            credentials::extract(black_box(&headers), None, &key)
                .map(|credentials| credentials.partition())
                .is_ok()
        })
    });
    // The hash alone, without the header lookups and copies `extract` does around it.
    let secret: [u8; 32] = rand::random();
    let token = b"Bearer zt-risk-sidecar-simulated-dev-token-0001";
    group.bench_function("blake3 keyed hash only", |b| {
        b.iter(|| {
            let mut hasher = blake3::Hasher::new_keyed(&secret);
            hasher.update(&13u64.to_le_bytes());
            hasher.update(b"authorization");
            hasher.update(&(token.len() as u64).to_le_bytes());
            hasher.update(black_box(token));
            hasher.finalize()
        })
    });
    group.bench_function("naive DefaultHasher (SipHash-1-3, 64-bit)", |b| {
        b.iter(|| naive_partition(black_box(&headers)))
    });
    group.finish();
}

fn cache_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("cache_key");
    let headers = sdk_headers();
    let key = PartitionKey::random();
    let partition = credentials::extract(&headers, None, &key)
        .expect("credentials")
        .partition();
    let lookup = lookup_of(&lookup_path(UUID_REFERENCE));
    let naive_lookup = naive_route(&Method::GET, &lookup_path(UUID_REFERENCE)).expect("a lookup");
    let naive_partition = naive_partition(&headers).expect("a partition");
    group.bench_function("CacheKey::new", |b| {
        b.iter(|| CacheKey::new(black_box(partition), black_box(&lookup)))
    });
    group.bench_function("naive format! String key", |b| {
        b.iter(|| naive_key(black_box(naive_partition), black_box(&naive_lookup)))
    });
    group.finish();
}

fn cache_hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("cache_hit");
    let rt = runtime();
    let partition_key = PartitionKey::random();
    let partition = credentials::extract(&sdk_headers(), None, &partition_key)
        .expect("credentials")
        .partition();
    let answer = answer();
    let keys: Vec<(CacheKey, String)> = (0..STORE_ENTRIES)
        .map(|index| {
            let reference = format!("ref-{index:07}");
            let lookup = lookup_of(&lookup_path(&reference));
            let naive = naive_route(&Method::GET, &lookup_path(&reference)).expect("a lookup");
            (CacheKey::new(partition, &lookup), naive_key(7, &naive))
        })
        .collect();
    // The peer the choice of quick_cache was measured against, moka, is compared in the tooling
    // crate (`cargo bench -p zt-loadtest --features moka-peer --bench store`), so that the root
    // package's tests never compile moka.
    let store = LocalStore::new(1 << 30);
    let typed_map: Mutex<HashMap<CacheKey, CacheEntry>> = Mutex::new(HashMap::new());
    let naive_map: NaiveStore = Mutex::new(HashMap::new());
    rt.block_on(async {
        for (key, naive) in &keys {
            store.insert(key.clone(), entry(&answer)).await;
            typed_map
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key.clone(), entry(&answer));
            naive_map
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(naive.clone(), naive_entry());
        }
    });
    let (present, present_naive) = &keys[STORE_ENTRIES / 2];
    group.bench_function("LocalStore::get (quick_cache)", |b| {
        b.to_async(&rt).iter(|| store.get(black_box(present)))
    });
    group.bench_function("Mutex<HashMap<CacheKey>> get+clone", |b| {
        b.to_async(&rt).iter(|| async {
            typed_map
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(black_box(present))
                .cloned()
        })
    });
    group.bench_function("naive Mutex<HashMap<String>> get", |b| {
        b.to_async(&rt).iter(|| async {
            naive_map
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(black_box(present_naive.as_str()))
                .map(|entry| entry.fresh_for)
        })
    });
    group.finish();
}

fn response(c: &mut Criterion) {
    let mut group = c.benchmark_group("response");
    let answer = answer();
    let cached = entry(&answer);
    let naive = naive_entry();
    let ceiling_headers = sidecar_response(&cached, Instant::now()).headers().clone();
    group.bench_function(
        "proxy::hit_response (shared body, header map, tabled values)",
        |b| b.iter(|| sidecar_response(black_box(&cached), Instant::now())),
    );
    group.bench_function("naive serde_json re-serialise + builder", |b| {
        b.iter(|| naive_response(black_box(&naive)))
    });
    group.bench_function("ceiling (prebuilt HeaderMap clone)", |b| {
        b.iter(|| {
            let mut response = Response::new(Full::new(answer.body.clone()));
            *response.headers_mut() = black_box(&ceiling_headers).clone();
            response
        })
    });
    group.finish();
}

fn request(path: &str) -> Request<()> {
    Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("host", "127.0.0.1:14480")
        .header("user-agent", "Cloudflare/Python 4.3.1")
        .header("accept", "application/json")
        .header(AUTHORIZATION, format!("Bearer {DEV_TOKEN}"))
        .body(())
        .expect("a valid request")
}

fn hit_path(c: &mut Criterion) {
    let rt = runtime();
    let sim = rt
        .block_on(SimulatedCloudflare::start(SimConfig::default()))
        .expect("the simulator starts");
    sim.seed_dev();
    let mut config =
        config::resolve(&Cli::default(), FileConfig::default(), None).expect("default config");
    config.upstream = UpstreamBase::parse(&sim.base_url(), false).expect("loopback upstream");
    // Fresh for the whole run, so every measured call is a plain hit.
    config.ttl.positive = Duration::from_secs(3600);
    let proxy = zt_risk_sidecar::build_proxy(&config).expect("a proxy");
    let path = lookup_path(UUID_REFERENCE);
    for expected in ["stored", "hit"] {
        let response = rt.block_on(proxy.handle(request(&path)));
        let status = response.headers()[CACHE_STATUS].to_str().unwrap_or("");
        assert!(status.contains(expected), "warm-up: {status}");
    }

    let naive_store: NaiveStore = Mutex::new(HashMap::new());
    let naive_lookup = naive_route(&Method::GET, &path).expect("a lookup");
    let naive_partition = naive_partition(request(&path).headers()).expect("a partition");
    naive_store
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(naive_key(naive_partition, &naive_lookup), naive_entry());

    let mut group = c.benchmark_group("hit_path");
    group.bench_function("Proxy::handle (no subscriber)", |b| {
        b.to_async(&rt).iter_batched(
            || request(&path),
            |request| proxy.handle(request),
            BatchSize::SmallInput,
        )
    });
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        group.bench_function("Proxy::handle (info-level fmt subscriber to sink)", |b| {
            b.to_async(&rt).iter_batched(
                || request(&path),
                |request| proxy.handle(request),
                BatchSize::SmallInput,
            )
        });
    });
    let naive_store = &naive_store;
    group.bench_function(
        "naive handler (split, SipHash, String key, Mutex, serde_json)",
        |b| {
            b.to_async(&rt).iter_batched(
                || request(&path),
                |request| async move { naive_handle(naive_store, &request) },
                BatchSize::SmallInput,
            )
        },
    );
    group.finish();
    drop(sim);
}

/// The access log's request event (issue 13), as `Proxy::handle` logs it: made by telemetry's
/// `PlainFormat` (the default when standard output is not a terminal) beside tracing-subscriber's
/// own `Full` format (what a terminal gets, and what every line used before), each queued to the
/// log writer's thread as the sidecar queues it (that thread writes to `io::sink`); the same
/// without the queue (formatting alone); and the event when the filter is at `warn`.
fn access_log(c: &mut Criterion) {
    use tracing_subscriber::fmt::format::Format;
    use zt_risk_sidecar::config::LogFormat;
    use zt_risk_sidecar::proxy::RequestEvent;
    use zt_risk_sidecar::telemetry::{
        self, queued_writer, PlainFormat, FLUSH_INTERVAL, LOG_BUFFER_BYTES,
    };

    let mut group = c.benchmark_group("access_log");
    let method = Method::GET;
    let account_id = routes::AccountId::parse(DEV_ACCOUNT_ID);
    let event = RequestEvent {
        method: &method,
        route: Some(routes::REFERENCE_ROUTE),
        account_id,
        status: 200,
        cache: "hit",
        stale_reason: None,
        upstream_status: None,
        cf_ray: Some("8a1b2c3d4e5f6a7b-SJC"),
        latency: Duration::from_micros(187),
    };
    // The sidecar's own subscriber, as `main` builds it for a file or a pipe (reloadable filter,
    // PlainFormat, the log buffer and its thread).
    let sidecar = |filter| {
        telemetry::subscriber(LogFormat::Pretty, Some(filter), std::io::sink(), false)
            .expect("the log writer thread starts")
    };
    let (plain, _plain_writer, _) = sidecar("info");
    let (off, _off_writer, _) = sidecar("warn");
    let (queue, _stock_writer) = queued_writer(std::io::sink(), LOG_BUFFER_BYTES, FLUSH_INTERVAL)
        .expect("the log writer thread starts");
    let stock = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_writer(queue)
            .with_ansi(false)
            .event_format(Format::default().with_target(true))
            .finish(),
    );
    let unqueued = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_writer(std::io::sink)
            .with_ansi(false)
            .event_format(PlainFormat::default())
            .finish(),
    );
    for (name, dispatch) in [
        ("PlainFormat, queued (the default)", plain.dispatch()),
        ("tracing-subscriber Full format, queued", &stock),
        ("PlainFormat, no queue (formatting only)", &unqueued),
        ("filtered out (--log-level warn)", off.dispatch()),
    ] {
        tracing::dispatcher::with_default(dispatch, || {
            group.bench_function(name, |b| b.iter(|| black_box(&event).log()));
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = micro;
    config = config();
    targets = route, partition, cache_key, cache_hit, response, hit_path, access_log
}
criterion_main!(micro);
