//! The answer cache: keys, what may be stored and for how long (pure functions of the answer and
//! the time), and the store behind a small trait so that a shared second tier can slot in later.
//! It never sees a raw credential: keys carry the credential partition only.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::credentials::Partition;
use crate::routes::{AccountId, IntegrationId, Lookup, ReferenceId, Subject};
use crate::upstream::UpstreamAnswer;

/// What a cached answer is filed under. Two requests share an entry only if they carry the same
/// credentials, name the same account and the same subject (decoded reference id, or id).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct CacheKey {
    pub partition: Partition,
    pub account_id: AccountId,
    pub subject: Subject,
}

impl CacheKey {
    pub fn new(partition: Partition, lookup: &Lookup) -> CacheKey {
        CacheKey {
            partition,
            account_id: lookup.account_id,
            subject: lookup.subject.clone(),
        }
    }
}

/// The integration an answer names, as far as write-through invalidation cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnsweredIntegration {
    pub id: IntegrationId,
    pub reference_id: Option<String>,
}

/// Pure: the integration a Cloudflare envelope's `result` names (`result.id` and
/// `result.reference_id`), if any.
pub fn answered_integration(body: &[u8]) -> Option<AnsweredIntegration> {
    let envelope: serde_json::Value = serde_json::from_slice(body).ok()?;
    let result = envelope.get("result")?;
    let id = IntegrationId::parse(result.get("id")?.as_str()?)?;
    let reference_id = result
        .get("reference_id")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    Some(AnsweredIntegration { id, reference_id })
}

/// A stored answer and its timing. Cloning is cheap (the answer is shared).
#[derive(Clone, Debug)]
pub struct CacheEntry {
    pub answer: Arc<UpstreamAnswer>,
    pub stored_at: Instant,
    /// How long after `stored_at` the entry may be served as fresh.
    pub fresh_for: Duration,
    /// How long after `stored_at` the entry is kept at all: freshness plus the longest stale window.
    pub retain_for: Duration,
    /// The integration the stored answer names (none for "not found"), so that a write to it can
    /// drop every entry that returned it.
    pub integration: Option<IntegrationId>,
    /// How long the upstream fetch that produced the answer took (its retries included): the
    /// recompute time XFetch weighs an early refresh against. Zero when unknown.
    pub fetch_time: Duration,
}

impl CacheEntry {
    /// The entry's standing at `now`.
    pub fn freshness(&self, now: Instant) -> Freshness {
        freshness(self.stored_at, self.fresh_for, now)
    }

    /// Whether the entry may still be served at `now` in any way (fresh or stale).
    pub fn is_retained(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored_at) < self.retain_for
    }

    /// Bytes charged against the cache bound: the body, the relayed headers, and a fixed
    /// allowance for the key, the entry and the store's own bookkeeping. The allowance is measured
    /// (BENCHMARKS.md, memory): about 730 bytes of resident memory per entry beyond its body, of
    /// which ~110 are the header and reference-id bytes counted here. It errs high (by ~13% for a
    /// typical answer), so that `cache_max_bytes` bounds real memory rather than a fraction of it.
    pub fn weight(&self, key: &CacheKey) -> u32 {
        const FIXED_OVERHEAD: usize = 768;
        let headers: usize = self
            .answer
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        let subject = match &key.subject {
            Subject::Reference(reference_id) => reference_id.as_str().len(),
            Subject::Integration(_) => 0,
        };
        let total = self.answer.body.len() + headers + subject + FIXED_OVERHEAD;
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// Fresh with time left, or stale since some time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    Fresh { remaining: Duration },
    Stale { expired_ago: Duration },
}

/// Pure: whether an entry stored at `stored_at`, fresh for `fresh_for`, is still fresh at `now`.
pub fn freshness(stored_at: Instant, fresh_for: Duration, now: Instant) -> Freshness {
    let age = now.saturating_duration_since(stored_at);
    if age < fresh_for {
        Freshness::Fresh {
            remaining: fresh_for - age,
        }
    } else {
        Freshness::Stale {
            expired_ago: age - fresh_for,
        }
    }
}

/// How long answers stay fresh, and how long past that a stale answer may still be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlPolicy {
    /// For a found integration.
    pub positive: Duration,
    /// For "not found": a 404 envelope, or a 200 whose `result` is null.
    pub negative: Duration,
    /// Past expiry, serve the stale entry at once and refresh it in the background (0: off).
    pub stale_while_revalidate: Duration,
    /// Past expiry, serve the stale entry when a refresh fails (0: off).
    pub stale_if_error: Duration,
}

impl TtlPolicy {
    /// How long an entry fresh for `fresh_for` is worth keeping.
    pub fn retain_for(&self, fresh_for: Duration) -> Duration {
        fresh_for.saturating_add(self.stale_while_revalidate.max(self.stale_if_error))
    }

    /// Pure: what a stale entry, expired `expired_ago`, may still be used for.
    pub fn stale_use(&self, expired_ago: Duration) -> StaleUse {
        if expired_ago < self.stale_while_revalidate {
            StaleUse::ServeAndRevalidate
        } else if expired_ago < self.stale_if_error {
            StaleUse::FallbackOnError
        } else {
            StaleUse::Unusable
        }
    }
}

/// What a stale entry is good for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleUse {
    /// Serve it now; refresh in the background.
    ServeAndRevalidate,
    /// Serve it only if the refresh fails.
    FallbackOnError,
    /// Too old: a miss.
    Unusable,
}

/// Whether an upstream answer may be stored, and why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storability {
    /// A found integration, stored for the positive TTL.
    Positive,
    /// A "not found" answer, stored for the negative TTL.
    Negative,
    /// Not stored; the reason is a stable label for logs.
    No(&'static str),
}

impl Storability {
    /// How long to keep the answer fresh, or `None` when it must not be stored (including a zero
    /// TTL, which turns that kind of caching off).
    pub fn fresh_for(self, policy: &TtlPolicy) -> Option<Duration> {
        let ttl = match self {
            Storability::Positive => policy.positive,
            Storability::Negative => policy.negative,
            Storability::No(_) => return None,
        };
        (!ttl.is_zero()).then_some(ttl)
    }
}

/// The `Storability::No` reason of a body that is not a Cloudflare envelope at all.
pub const NOT_AN_ENVELOPE: &str = "not-an-envelope";

/// Pure: decides from status and body whether an answer is cacheable. Only 200 and 404 are, and
/// only with a valid Cloudflare envelope: 401, 403, 429 and 5xx depend on the moment or the
/// credential, and a body that is not an envelope is no answer to keep.
pub fn storability(status: StatusCode, body: &[u8]) -> Storability {
    if status != StatusCode::OK && status != StatusCode::NOT_FOUND {
        return Storability::No("status");
    }
    let Ok(serde_json::Value::Object(envelope)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return Storability::No(NOT_AN_ENVELOPE);
    };
    let success = envelope.get("success").and_then(serde_json::Value::as_bool);
    let lists_present = envelope
        .get("errors")
        .is_some_and(serde_json::Value::is_array)
        && envelope
            .get("messages")
            .is_some_and(serde_json::Value::is_array);
    let result = envelope.get("result");
    if !lists_present {
        return Storability::No(NOT_AN_ENVELOPE);
    }
    match (status, success, result) {
        (StatusCode::OK, Some(true), Some(serde_json::Value::Object(_))) => Storability::Positive,
        // The Python SDK types this result as Optional: a 200 with a null (or absent) result is
        // how "nothing under that reference id" can look.
        (StatusCode::OK, Some(true), None | Some(serde_json::Value::Null)) => Storability::Negative,
        (StatusCode::NOT_FOUND, Some(false), None | Some(serde_json::Value::Null)) => {
            Storability::Negative
        }
        _ => Storability::No("unexpected-envelope"),
    }
}

/// Pure: whether an upstream answer means the refresh failed, so that a stale entry may stand in
/// for it: a 429, any 5xx, or a 200/404 whose body is not a usable envelope. Other 4xx answers
/// (401, 403, 400) say something true about the credential or the request and are relayed.
pub fn is_refresh_failure(status: StatusCode, storability: Storability) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || ((status == StatusCode::OK || status == StatusCode::NOT_FOUND)
            && matches!(storability, Storability::No(_)))
}

/// Which entries a purge drops: an operator's, or the write-through invalidation after a
/// successful write. Credential partitions are never named: a purge drops entries for every
/// credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PurgeScope {
    /// The lookup of one reference id.
    Lookup {
        account_id: AccountId,
        reference_id: ReferenceId,
    },
    /// Every entry that names one integration: its lookup by id, and every lookup by reference id
    /// whose stored answer returned it.
    Integration {
        account_id: AccountId,
        integration_id: IntegrationId,
    },
    Account {
        account_id: AccountId,
    },
    /// Every entry one credential partition holds for one account: what a credential that
    /// Cloudflare refused (401, 403) must never be served again.
    Partition {
        partition: Partition,
        account_id: AccountId,
    },
    All,
}

impl PurgeScope {
    /// Pure: whether the entry `entry` under `key` is in scope.
    pub fn matches(&self, key: &CacheKey, entry: &CacheEntry) -> bool {
        match self {
            PurgeScope::Lookup {
                account_id,
                reference_id,
            } => {
                key.account_id == *account_id
                    && key.subject == Subject::Reference(reference_id.clone())
            }
            PurgeScope::Integration {
                account_id,
                integration_id,
            } => {
                key.account_id == *account_id
                    && (key.subject == Subject::Integration(*integration_id)
                        || entry.integration == Some(*integration_id))
            }
            PurgeScope::Account { account_id } => key.account_id == *account_id,
            PurgeScope::Partition {
                partition,
                account_id,
            } => key.partition == *partition && key.account_id == *account_id,
            PurgeScope::All => true,
        }
    }
}

/// How full a store is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreSize {
    pub entries: u64,
    pub weighted_bytes: u64,
    pub max_bytes: u64,
}

/// Which tier an entry was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// This process's own store.
    Local,
    /// The fleet's shared store (Redis): another sidecar fetched it.
    Fleet,
}

/// What a shared tier says about the fetch a local leader is about to make.
#[derive(Debug)]
pub enum FetchClaim {
    /// Fetch, and hand the ticket back with the answer to [`AnswerStore::store_fetched`].
    Fetch(FetchTicket),
    /// Another sidecar fetched it while this one waited: its entry.
    Filled(CacheEntry),
    /// Another sidecar was still fetching when the caller's deadline came.
    TimedOut,
}

/// What a shared tier needs to store a fetch's answer safely: the fleet lease this sidecar holds
/// for the key, and the write generation the fetch began under. Empty for a local store.
#[derive(Debug, Default)]
pub struct FetchTicket {
    pub(crate) fleet: Option<crate::fleet::FleetTicket>,
}

/// The cache interface of the request path and the admin listener. The in-process store
/// implements it; the fleet's store (`fleet::FleetStore`) implements it too, wrapping the local
/// store as its first level. The provided methods are what a store without a shared tier does.
pub trait AnswerStore: Send + Sync + 'static {
    /// The entry under `key`, unless there is none or it is past its retention
    /// ([`CacheEntry::is_retained`]).
    fn get(&self, key: &CacheKey) -> impl Future<Output = Option<CacheEntry>> + Send;
    /// As [`AnswerStore::get`], and which tier answered.
    fn lookup(&self, key: &CacheKey) -> impl Future<Output = Option<(CacheEntry, Tier)>> + Send {
        async move { self.get(key).await.map(|entry| (entry, Tier::Local)) }
    }
    /// Called by the leader of a local fetch before it spends budget: a shared tier makes sure
    /// one sidecar of the fleet fetches (the others wait for its entry, at most until
    /// `deadline`).
    fn claim_fetch(
        &self,
        _key: &CacheKey,
        _deadline: Instant,
    ) -> impl Future<Output = FetchClaim> + Send {
        async { FetchClaim::Fetch(FetchTicket::default()) }
    }
    /// Stores a fetched entry (`None`: nothing to store, the claim is let go) and says whether
    /// it was stored: a shared tier refuses one whose fetch began before a write to its account.
    fn store_fetched(
        &self,
        key: CacheKey,
        entry: Option<CacheEntry>,
        _ticket: FetchTicket,
    ) -> impl Future<Output = bool> + Send {
        async move {
            match entry {
                Some(entry) => {
                    self.insert(key, entry).await;
                    true
                }
                None => false,
            }
        }
    }
    /// Whether entries are shared with other sidecars (early refresh is then worth deciding).
    fn is_shared(&self) -> bool {
        false
    }
    fn insert(&self, key: CacheKey, entry: CacheEntry) -> impl Future<Output = ()> + Send;
    /// Drops one entry, if present.
    fn remove(&self, key: &CacheKey) -> impl Future<Output = ()> + Send;
    /// Drops every entry in `scope` and says how many went.
    fn purge(&self, scope: &PurgeScope) -> impl Future<Output = u64> + Send;
    fn size(&self) -> impl Future<Output = StoreSize> + Send;
}

/// The in-process store: a `quick_cache` map bounded by weighted bytes. An entry past its
/// retention (freshness plus the longest stale window) is never returned: a read that finds one
/// drops it, and [`LocalStore::sweep_expired`] drops the rest.
///
/// Why `quick_cache` and not moka: on the hit path moka's `get` cost 7–8× as much (its read log,
/// frequency sketch and inline housekeeping run on every read) and its index ~300 bytes more per
/// entry (BENCHMARKS.md, "The store"). Freshness never depended on moka's expiry anyway.
#[derive(Clone)]
pub struct LocalStore {
    cache: Arc<EntryCache>,
    max_bytes: u64,
    on_removal: Arc<dyn Fn(&'static str, u64) + Send + Sync>,
}

type EntryCache = quick_cache::sync::Cache<
    CacheKey,
    CacheEntry,
    ByWeight,
    quick_cache::DefaultHashBuilder,
    CollectEvicted,
>;

/// Charges each entry [`CacheEntry::weight`].
#[derive(Clone, Copy)]
struct ByWeight;

impl quick_cache::Weighter<CacheKey, CacheEntry> for ByWeight {
    fn weight(&self, key: &CacheKey, entry: &CacheEntry) -> u64 {
        u64::from(entry.weight(key))
    }
}

/// Hands what an insert pushed out back to the inserter, to be told apart and counted (and dropped
/// outside the shard's lock).
#[derive(Clone, Copy)]
struct CollectEvicted;

impl quick_cache::Lifecycle<CacheKey, CacheEntry> for CollectEvicted {
    type RequestState = Vec<(CacheKey, CacheEntry)>;

    fn begin_request(&self) -> Self::RequestState {
        Vec::new()
    }

    fn on_evict(&self, state: &mut Self::RequestState, key: CacheKey, entry: CacheEntry) {
        state.push((key, entry));
    }
}

/// Each shard must hold the largest answer (1 MiB and its overhead) with room to spare, since the
/// byte bound is enforced per shard; within that, up to 16 shards keep writers apart.
const MIN_SHARD_BYTES: u64 = 8 * 1024 * 1024;
const MAX_SHARDS: u64 = 16;
/// A typical entry's weight, to size the index up front.
const TYPICAL_ENTRY_BYTES: u64 = 2048;

impl LocalStore {
    pub fn new(max_bytes: u64) -> LocalStore {
        LocalStore::with_removal_listener(max_bytes, |_, _| {})
    }

    /// `on_removal` hears the cause (`expired`, `explicit`, `replaced`, `size`) and count of every
    /// removal (for the eviction metrics).
    pub fn with_removal_listener(
        max_bytes: u64,
        on_removal: impl Fn(&'static str, u64) + Send + Sync + 'static,
    ) -> LocalStore {
        let max_bytes = max_bytes.max(1);
        let shards = (max_bytes / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS);
        let estimated_items = (max_bytes / TYPICAL_ENTRY_BYTES).clamp(16, 1 << 24);
        let options = quick_cache::OptionsBuilder::new()
            .shards(usize::try_from(shards).unwrap_or(1))
            .estimated_items_capacity(usize::try_from(estimated_items).unwrap_or(1 << 16))
            .weight_capacity(max_bytes)
            .build()
            // `build` fails only when one of the two capacities is missing; both are set above.
            .expect("both capacities are set");
        let cache = EntryCache::with_options(
            options,
            ByWeight,
            quick_cache::DefaultHashBuilder::default(),
            CollectEvicted,
        );
        LocalStore {
            cache: Arc::new(cache),
            max_bytes,
            on_removal: Arc::new(on_removal),
        }
    }

    /// Drops every entry past its retention and says how many went. Walks the whole cache, one
    /// shard at a time under its write lock: run it off the request path, now and then.
    pub fn sweep_expired(&self) -> u64 {
        let now = Instant::now();
        let swept = self.remove_where(|_, entry| !entry.is_retained(now));
        if swept > 0 {
            (self.on_removal)("expired", swept);
        }
        swept
    }

    /// Removes the entries `doomed` picks; counts them exactly (each shard is locked while it is
    /// walked).
    fn remove_where(&self, doomed: impl Fn(&CacheKey, &CacheEntry) -> bool) -> u64 {
        let removed = std::cell::Cell::new(0u64);
        self.cache.retain(|key, entry| {
            let remove = doomed(key, entry);
            removed.set(removed.get() + u64::from(remove));
            !remove
        });
        removed.get()
    }
}

impl AnswerStore for LocalStore {
    async fn get(&self, key: &CacheKey) -> Option<CacheEntry> {
        let entry = self.cache.get(key)?;
        let now = Instant::now();
        if entry.is_retained(now) {
            return Some(entry);
        }
        if self
            .cache
            .remove_if(key, |entry| !entry.is_retained(now))
            .is_some()
        {
            (self.on_removal)("expired", 1);
        }
        None
    }

    async fn insert(&self, key: CacheKey, entry: CacheEntry) {
        let answer = Arc::clone(&entry.answer);
        let evicted = self.cache.insert_with_lifecycle(key.clone(), entry);
        for (evicted_key, evicted_entry) in &evicted {
            // The new entry itself comes back when it is too large for a shard.
            let cause = if evicted_key == &key && !Arc::ptr_eq(&evicted_entry.answer, &answer) {
                "replaced"
            } else {
                "size"
            };
            (self.on_removal)(cause, 1);
        }
    }

    async fn remove(&self, key: &CacheKey) {
        if self.cache.remove(key).is_some() {
            (self.on_removal)("explicit", 1);
        }
    }

    async fn purge(&self, scope: &PurgeScope) -> u64 {
        let purged = self.remove_where(|key, entry| scope.matches(key, entry));
        if purged > 0 {
            (self.on_removal)("explicit", purged);
        }
        purged
    }

    async fn size(&self) -> StoreSize {
        StoreSize {
            entries: u64::try_from(self.cache.len()).unwrap_or(u64::MAX),
            weighted_bytes: self.cache.weight(),
            max_bytes: self.max_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, body: &str, expected: Storability) {
        let status = StatusCode::from_u16(status).expect("valid status");
        assert_eq!(
            storability(status, body.as_bytes()),
            expected,
            "{status} {body}"
        );
    }

    const FOUND: &str = r#"{"errors":[],"messages":[],"success":true,"result":{"id":"182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e","reference_id":"r"}}"#;
    const NOT_FOUND: &str = r#"{"success":false,"errors":[{"code":1000,"message":"not found"}],"messages":[],"result":null}"#;

    #[test]
    fn storability_table() {
        check(200, FOUND, Storability::Positive);
        check(
            200,
            r#"{"errors":[],"messages":[],"success":true,"result":null}"#,
            Storability::Negative,
        );
        check(
            200,
            r#"{"errors":[],"messages":[],"success":true}"#,
            Storability::Negative,
        );
        check(404, NOT_FOUND, Storability::Negative);
        check(
            404,
            r#"{"success":false,"errors":[{"code":7000,"message":"x"}],"messages":[]}"#,
            Storability::Negative,
        );
        for status in [400, 401, 403, 405, 409, 429, 500, 502, 503, 504] {
            check(status, NOT_FOUND, Storability::No("status"));
        }
        check(200, "", Storability::No("not-an-envelope"));
        check(
            200,
            "<html>bad gateway</html>",
            Storability::No("not-an-envelope"),
        );
        check(
            200,
            r#"{"errors":[],"messages":[],"success":true,"result":{"id":"#,
            Storability::No("not-an-envelope"),
        );
        check(200, r#"[1,2,3]"#, Storability::No("not-an-envelope"));
        check(
            200,
            r#"{"success":true,"result":{}}"#,
            Storability::No("not-an-envelope"),
        );
        check(
            200,
            r#"{"errors":{},"messages":[],"success":true,"result":{}}"#,
            Storability::No("not-an-envelope"),
        );
        check(
            200,
            r#"{"errors":[],"messages":[],"success":false,"result":{}}"#,
            Storability::No("unexpected-envelope"),
        );
        check(
            200,
            r#"{"errors":[],"messages":[],"success":true,"result":[1]}"#,
            Storability::No("unexpected-envelope"),
        );
        check(
            200,
            r#"{"errors":[],"messages":[],"success":"true","result":{}}"#,
            Storability::No("unexpected-envelope"),
        );
        check(
            404,
            r#"{"errors":[],"messages":[],"success":true,"result":{}}"#,
            Storability::No("unexpected-envelope"),
        );
    }

    const POLICY: TtlPolicy = TtlPolicy {
        positive: Duration::from_secs(60),
        negative: Duration::from_secs(10),
        stale_while_revalidate: Duration::from_secs(30),
        stale_if_error: Duration::from_secs(86_400),
    };

    fn entry(body: &'static str, fresh_secs: u64) -> CacheEntry {
        CacheEntry {
            answer: Arc::new(UpstreamAnswer {
                status: StatusCode::OK,
                headers: Vec::new(),
                body: bytes::Bytes::from_static(body.as_bytes()),
            }),
            stored_at: Instant::now(),
            fresh_for: Duration::from_secs(fresh_secs),
            retain_for: Duration::from_secs(fresh_secs),
            integration: answered_integration(body.as_bytes()).map(|answered| answered.id),
            fetch_time: Duration::ZERO,
        }
    }

    fn key(partition_seed: &str, account: &str, reference: &str) -> CacheKey {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "authorization",
            http::HeaderValue::from_str(&format!("Bearer {partition_seed}")).expect("header"),
        );
        thread_local!(static PARTITION_KEY: crate::credentials::PartitionKey = crate::credentials::PartitionKey::random());
        let partition = PARTITION_KEY.with(|k| {
            crate::credentials::extract(&headers, None, k)
                .expect("credentials")
                .partition()
        });
        CacheKey {
            partition,
            account_id: AccountId::parse(account).expect("account"),
            subject: Subject::Reference(ReferenceId::decode(reference).expect("reference")),
        }
    }

    const A1: &str = "023e105f4ecef8ad9ca31a8372d0c353";
    const A2: &str = "9a7806061c88ada191ed06f989cc3dac";

    #[tokio::test]
    async fn purges_by_lookup_account_or_everything_across_partitions() {
        let store = LocalStore::new(1 << 20);
        for partition in ["t1", "t2"] {
            for (account, reference) in [(A1, "r1"), (A1, "r2"), (A2, "r1")] {
                store
                    .insert(key(partition, account, reference), entry("{}", 60))
                    .await;
            }
        }
        let lookup = PurgeScope::Lookup {
            account_id: AccountId::parse(A1).expect("account"),
            reference_id: ReferenceId::decode("r1").expect("reference"),
        };
        assert_eq!(store.purge(&lookup).await, 2, "both credentials' copies");
        assert!(store.get(&key("t1", A1, "r1")).await.is_none());
        assert!(store.get(&key("t1", A1, "r2")).await.is_some());
        let account = PurgeScope::Account {
            account_id: AccountId::parse(A1).expect("account"),
        };
        assert_eq!(store.purge(&account).await, 2);
        assert_eq!(store.size().await.entries, 2);
        assert_eq!(store.purge(&PurgeScope::All).await, 2);
        assert_eq!(store.size().await.entries, 0);
    }

    #[tokio::test]
    async fn an_integration_purge_drops_every_entry_that_named_it() {
        let store = LocalStore::new(1 << 20);
        const X: &str = "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e";
        let names_x: &'static str = r#"{"errors":[],"messages":[],"success":true,"result":{"id":"182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e","reference_id":"old"}}"#;
        let other: &'static str = r#"{"errors":[],"messages":[],"success":true,"result":{"id":"00000000-0000-4000-8000-000000000000","reference_id":"r2"}}"#;
        let x = IntegrationId::parse(X).expect("id");
        let by_id = |partition: &str| CacheKey {
            subject: Subject::Integration(x),
            ..key(partition, A1, "unused")
        };
        for partition in ["t1", "t2"] {
            store
                .insert(key(partition, A1, "old"), entry(names_x, 60))
                .await;
            store
                .insert(key(partition, A1, "r2"), entry(other, 60))
                .await;
            store.insert(by_id(partition), entry(names_x, 60)).await;
        }
        store.insert(key("t1", A2, "old"), entry(names_x, 60)).await;
        let scope = PurgeScope::Integration {
            account_id: AccountId::parse(A1).expect("account"),
            integration_id: x,
        };
        assert_eq!(
            store.purge(&scope).await,
            4,
            "by reference and by id, both credentials"
        );
        assert!(store.get(&key("t2", A1, "r2")).await.is_some());
        assert!(
            store.get(&key("t1", A2, "old")).await.is_some(),
            "another account is untouched"
        );
    }

    #[test]
    fn answered_integrations() {
        assert_eq!(
            answered_integration(FOUND.as_bytes()),
            Some(AnsweredIntegration {
                id: IntegrationId::parse("182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e").expect("id"),
                reference_id: Some("r".to_owned()),
            })
        );
        assert_eq!(answered_integration(NOT_FOUND.as_bytes()), None);
        assert_eq!(answered_integration(b"garbage"), None);
        assert_eq!(
            answered_integration(br#"{"result":{"id":"not-a-uuid"}}"#),
            None
        );
    }

    /// The bytes charged against the cache bound, term by term: the body, each relayed header's
    /// name and value, the reference id (a lookup by integration id adds nothing), and the fixed
    /// allowance. Pins the arithmetic of `CacheEntry::weight`, which the byte-bound tests only
    /// see through the store.
    #[test]
    fn an_entrys_weight_is_its_body_headers_reference_and_allowance() {
        let mut weighed = entry("0123456789", 60);
        weighed.answer = Arc::new(UpstreamAnswer {
            status: StatusCode::OK,
            headers: vec![
                (
                    http::HeaderName::from_static("cf-ray"),
                    http::HeaderValue::from_static("abc"),
                ),
                (
                    http::HeaderName::from_static("ratelimit-policy"),
                    http::HeaderValue::from_static("q=1"),
                ),
            ],
            body: bytes::Bytes::from_static(b"0123456789"),
        });
        let by_reference = key("t", A1, "reference-12");
        let (body, headers, reference, allowance) = (10, 6 + 3 + 16 + 3, 12, 768);
        assert_eq!(
            weighed.weight(&by_reference),
            body + headers + reference + allowance
        );
        let by_id = CacheKey {
            subject: Subject::Integration(
                IntegrationId::parse("182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e").expect("id"),
            ),
            ..by_reference
        };
        assert_eq!(weighed.weight(&by_id), body + headers + allowance);
    }

    /// A credential's 401 or 403 drops that credential's entries for the account, and nothing else.
    #[test]
    fn a_partition_scope_matches_one_credentials_entries_in_one_account() {
        let scope = PurgeScope::Partition {
            partition: key("t1", A1, "r").partition,
            account_id: AccountId::parse(A1).expect("account"),
        };
        let stored = entry("{}", 60);
        assert!(scope.matches(&key("t1", A1, "r"), &stored));
        assert!(scope.matches(&key("t1", A1, "other"), &stored));
        assert!(
            !scope.matches(&key("t2", A1, "r"), &stored),
            "another credential"
        );
        assert!(
            !scope.matches(&key("t1", A2, "r"), &stored),
            "another account"
        );
    }

    /// The byte bound is enforced per shard, so every shard must hold the largest answer
    /// Cloudflare may send (1 MiB) with its allowance: a store of 16 MiB keeps one, and so does one
    /// of a size that is not a multiple of the shard size. Fails when the shards are sized smaller
    /// than that (the answer is then evicted as it is inserted).
    #[tokio::test]
    async fn the_largest_answer_fits_in_a_store_of_a_few_shards() {
        let body: &'static str = Box::leak(
            "x".repeat(crate::upstream::MAX_UPSTREAM_BODY_BYTES)
                .into_boxed_str(),
        );
        for max_bytes in [16 << 20, (8 << 20) + 16] {
            let store = LocalStore::new(max_bytes);
            let largest = key("t", A1, "largest");
            store.insert(largest.clone(), entry(body, 60)).await;
            assert!(store.get(&largest).await.is_some(), "{max_bytes}");
        }
    }

    #[tokio::test]
    async fn the_byte_bound_evicts_and_reports_the_cause() {
        let causes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let heard = Arc::clone(&causes);
        // Room for about four 1 KiB entries.
        let store = LocalStore::with_removal_listener(4 * 1400, move |cause, count| {
            for _ in 0..count {
                heard.lock().expect("lock").push(cause);
            }
        });
        let body: &'static str = Box::leak("x".repeat(1024).into_boxed_str());
        for index in 0..20 {
            store
                .insert(key("t", A1, &format!("r{index}")), entry(body, 60))
                .await;
        }
        let size = store.size().await;
        assert!(size.entries <= 4 && size.entries >= 1, "{size:?}");
        assert!(size.weighted_bytes <= 4 * 1400, "{size:?}");
        assert!(causes.lock().expect("lock").contains(&"size"));
    }

    fn recording_store(max_bytes: u64) -> (LocalStore, Arc<std::sync::Mutex<Vec<&'static str>>>) {
        let causes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let heard = Arc::clone(&causes);
        let store = LocalStore::with_removal_listener(max_bytes, move |cause, count| {
            for _ in 0..count {
                heard.lock().expect("lock").push(cause);
            }
        });
        (store, causes)
    }

    #[tokio::test(start_paused = true)]
    async fn entries_past_retention_are_never_returned_and_are_swept() {
        let (store, causes) = recording_store(1 << 20);
        store.insert(key("t", A1, "short"), entry("{}", 10)).await;
        store.insert(key("t", A1, "read"), entry("{}", 10)).await;
        store.insert(key("t", A1, "long"), entry("{}", 60)).await;
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(
            store.get(&key("t", A1, "read")).await.is_some(),
            "still retained"
        );
        assert_eq!(store.sweep_expired(), 0);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            store.get(&key("t", A1, "read")).await.is_none(),
            "retention ends at retain_for exactly"
        );
        assert_eq!(
            *causes.lock().expect("lock"),
            ["expired"],
            "the read dropped it"
        );
        assert_eq!(store.size().await.entries, 2);
        assert_eq!(store.sweep_expired(), 1, "the other short entry");
        assert_eq!(store.size().await.entries, 1);
        assert!(store.get(&key("t", A1, "long")).await.is_some());
        assert_eq!(*causes.lock().expect("lock"), ["expired", "expired"]);
    }

    #[tokio::test]
    async fn removals_are_reported_by_cause_and_the_weight_follows() {
        let (store, causes) = recording_store(1 << 20);
        let k = key("t", A1, "r");
        store.insert(k.clone(), entry("{}", 60)).await;
        let one = store.size().await;
        assert_eq!(one.entries, 1);
        assert_eq!(
            one.weighted_bytes,
            u64::from(entry("{}", 60).weight(&k)),
            "{one:?}"
        );
        store.insert(k.clone(), entry("{}", 60)).await;
        assert_eq!(store.size().await, one, "a replacement is not an addition");
        store.remove(&k).await;
        store.remove(&k).await;
        assert_eq!(store.size().await.weighted_bytes, 0);
        for reference in ["a", "b", "c"] {
            store.insert(key("t", A2, reference), entry("{}", 60)).await;
        }
        let scope = PurgeScope::Account {
            account_id: AccountId::parse(A2).expect("account"),
        };
        assert_eq!(store.purge(&scope).await, 3);
        assert_eq!(
            *causes.lock().expect("lock"),
            ["replaced", "explicit", "explicit", "explicit", "explicit"]
        );
    }

    #[tokio::test]
    async fn an_answer_too_large_for_the_bound_is_not_kept() {
        let (store, causes) = recording_store(4 * 1400);
        let body: &'static str = Box::leak("x".repeat(8 * 1024).into_boxed_str());
        store.insert(key("t", A1, "big"), entry(body, 60)).await;
        assert!(store.get(&key("t", A1, "big")).await.is_none());
        assert_eq!(store.size().await.weighted_bytes, 0);
        assert_eq!(*causes.lock().expect("lock"), ["size"]);
    }

    #[test]
    fn refresh_failures() {
        let check = |status: u16, body: &str, expected: bool| {
            let status = StatusCode::from_u16(status).expect("status");
            let decision = storability(status, body.as_bytes());
            assert_eq!(
                is_refresh_failure(status, decision),
                expected,
                "{status} {body}"
            );
        };
        check(200, FOUND, false);
        check(404, NOT_FOUND, false);
        check(200, "<html>", true);
        check(
            200,
            r#"{"errors":[],"messages":[],"success":false,"result":{}}"#,
            true,
        );
        check(404, "not json", true);
        for status in [429, 500, 502, 503, 504] {
            check(status, NOT_FOUND, true);
        }
        for status in [400, 401, 403, 405, 409] {
            check(status, NOT_FOUND, false);
        }
    }

    #[test]
    fn stale_use_table() {
        let check = |policy: &TtlPolicy, secs: u64, expected| {
            assert_eq!(
                policy.stale_use(Duration::from_secs(secs)),
                expected,
                "{secs}s past expiry"
            );
        };
        check(&POLICY, 0, StaleUse::ServeAndRevalidate);
        check(&POLICY, 29, StaleUse::ServeAndRevalidate);
        check(&POLICY, 30, StaleUse::FallbackOnError);
        check(&POLICY, 86_399, StaleUse::FallbackOnError);
        check(&POLICY, 86_400, StaleUse::Unusable);
        let both_off = TtlPolicy {
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            ..POLICY
        };
        check(&both_off, 0, StaleUse::Unusable);
        let swr_longer = TtlPolicy {
            stale_while_revalidate: Duration::from_secs(60),
            stale_if_error: Duration::from_secs(10),
            ..POLICY
        };
        check(&swr_longer, 59, StaleUse::ServeAndRevalidate);
        check(&swr_longer, 60, StaleUse::Unusable);
        assert_eq!(
            POLICY.retain_for(Duration::from_secs(60)),
            Duration::from_secs(86_460)
        );
        assert_eq!(
            both_off.retain_for(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn fresh_for_follows_the_policy() {
        let policy = POLICY;
        assert_eq!(
            Storability::Positive.fresh_for(&policy),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            Storability::Negative.fresh_for(&policy),
            Some(Duration::from_secs(10))
        );
        assert_eq!(Storability::No("status").fresh_for(&policy), None);
        let no_negative = TtlPolicy {
            negative: Duration::ZERO,
            ..policy
        };
        assert_eq!(Storability::Negative.fresh_for(&no_negative), None);
    }

    #[test]
    fn freshness_table() {
        let stored = Instant::now();
        let ttl = Duration::from_secs(60);
        let at = |secs: u64| stored + Duration::from_secs(secs);
        assert_eq!(
            freshness(stored, ttl, at(0)),
            Freshness::Fresh { remaining: ttl }
        );
        assert_eq!(
            freshness(stored, ttl, at(59)),
            Freshness::Fresh {
                remaining: Duration::from_secs(1)
            }
        );
        assert_eq!(
            freshness(stored, ttl, at(60)),
            Freshness::Stale {
                expired_ago: Duration::ZERO
            }
        );
        assert_eq!(
            freshness(stored, ttl, at(95)),
            Freshness::Stale {
                expired_ago: Duration::from_secs(35)
            }
        );
        // A clock reading before the store (should not happen) counts as age zero.
        assert_eq!(
            freshness(at(10), ttl, stored),
            Freshness::Fresh { remaining: ttl }
        );
    }
}
