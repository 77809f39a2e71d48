//! `FleetStore`: the [`AnswerStore`] the binary runs with. L1 is this process's `LocalStore`; with
//! a fleet tier, L2 is Redis: read on an L1 miss, written after a fetch (encrypted, `PX` until the
//! entry's stale-until, refused atomically when a write to its account came after the fetch
//! began), one fleet-wide fetch lease per key, and purges that reach every sidecar. Every Redis
//! failure is a miss or a local decision, never an error to the caller. It must not decide what is
//! cacheable or call Cloudflare.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::cache::{
    AnswerStore, CacheEntry, CacheKey, FetchClaim, FetchTicket, Freshness, LocalStore, PurgeScope,
    StoreSize, Tier,
};
use crate::routes::Subject;

use super::entry::{self, epoch_ms, millis, WallTimes};
use super::invalidation::{self, INVALIDATE_SCRIPT};
use super::lease::{self, WaitStep};
use super::metrics::{L2Read, LeaseWait};
use super::Fleet;

/// How long an account's write generation lives in Redis after its last write: far longer than
/// any fetch, so a fetch never sees a generation expire back to one it began under.
pub(crate) const GENERATION_TTL_MS: u64 = 24 * 3600 * 1000;

/// The lease (`SET NX PX`) and, in the same round trip, the write generation the fetch begins
/// under. Reply: `{acquired (0/1), generation, lease ms left}`.
const CLAIM_SCRIPT: &str = r"
local acquired = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
local generation = (redis.call('GET', KEYS[2]) or '0') .. ':' .. (redis.call('GET', KEYS[3]) or '0')
if acquired then return {1, generation, tonumber(ARGV[2])} end
return {0, generation, redis.call('PTTL', KEYS[1])}
";

/// Stores an entry unless a write to its account (or a purge of everything) came after the fetch
/// began, indexes it for invalidation, lets the lease go if this fetch holds it, and wakes the
/// waiters. An empty value only lets the lease go. Reply: 1 stored, 0 not.
const STORE_SCRIPT: &str = r"
local stored = 0
local generation = (redis.call('GET', KEYS[2]) or '0') .. ':' .. (redis.call('GET', KEYS[3]) or '0')
if ARGV[1] ~= '' and generation == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  local ttl = tonumber(ARGV[2])
  for i = 5, #KEYS do
    redis.call('SADD', KEYS[i], KEYS[1])
    if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
  stored = 1
end
if redis.call('GET', KEYS[4]) == ARGV[4] then redis.call('DEL', KEYS[4]) end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return stored
";

/// Extends the lease while its owner's fetch runs.
const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// The answer store with an optional fleet tier. Cheap to clone.
#[derive(Clone)]
pub struct FleetStore {
    local: LocalStore,
    l2: Option<Arc<L2>>,
}

/// The fleet tier of the store.
pub(crate) struct L2 {
    pub(crate) fleet: Fleet,
    /// Entry hashes announced on the `filled` channel (the subscriber task sends them).
    pub(crate) filled: broadcast::Sender<Arc<str>>,
    /// Bumped before every purge this sidecar applies to L1 (its own, or one received): a copy
    /// read from Redis before a purge and put into L1 after it is taken back out.
    pub(crate) purges: AtomicU64,
    claim: redis::Script,
    store: redis::Script,
    renew: redis::Script,
    pub(crate) invalidate: redis::Script,
}

/// A leader's standing in the fleet for one fetch: the lease Redis granted it and the write
/// generation the fetch began under. Dropping it stops the lease's renewal.
#[derive(Debug)]
pub struct FleetTicket {
    lease_token: String,
    generation: String,
    renewal: Option<tokio::task::AbortHandle>,
}

impl Drop for FleetTicket {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}

/// The hashes naming an entry's Redis keys.
struct Names {
    hash: String,
    entry: String,
    lease: String,
    account_generation: String,
    all_generation: String,
}

impl FleetStore {
    /// No fleet tier: exactly the local store.
    pub fn local_only(local: LocalStore) -> FleetStore {
        FleetStore { local, l2: None }
    }

    /// L1 in front of the fleet's Redis. Starts the subscriber task (fills and invalidations), so
    /// it needs a Tokio runtime.
    pub fn with_fleet(local: LocalStore, fleet: Fleet) -> FleetStore {
        let (filled, _) = broadcast::channel(1024);
        let l2 = Arc::new(L2 {
            fleet,
            filled,
            purges: AtomicU64::new(0),
            claim: redis::Script::new(CLAIM_SCRIPT),
            store: redis::Script::new(STORE_SCRIPT),
            renew: redis::Script::new(RENEW_SCRIPT),
            invalidate: redis::Script::new(INVALIDATE_SCRIPT),
        });
        tokio::spawn(invalidation::subscribe_forever(
            Arc::downgrade(&l2),
            local.clone(),
        ));
        FleetStore {
            local,
            l2: Some(l2),
        }
    }

    /// The first level (the sweeper walks it).
    pub fn local(&self) -> &LocalStore {
        &self.local
    }

    /// Puts a copy of an entry read from Redis into L1. The copy keeps the Redis entry's own
    /// times, so it never outlives it; and if a purge was applied since the read began, the copy
    /// may be what it purged, so it is taken back out (the purge bumps the count before it runs,
    /// so either it sees the copy or this sees the count).
    async fn keep_copy(&self, l2: &L2, key: &CacheKey, entry: &CacheEntry, purges_before: u64) {
        self.local.insert(key.clone(), entry.clone()).await;
        if l2.purges.load(Ordering::SeqCst) != purges_before {
            self.local.remove(key).await;
        }
    }

    /// The fleet tier, when configured.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.l2.as_ref().map(|l2| &l2.fleet)
    }
}

impl L2 {
    fn names(&self, key: &CacheKey) -> Names {
        let keys = &self.fleet.keys;
        let hash = keys.entry_hash(key);
        Names {
            entry: keys.key("e", &hash),
            lease: keys.key("l", &hash),
            account_generation: keys.key("g", &keys.account_hash(&key.account_id)),
            all_generation: keys.key("g", "all"),
            hash,
        }
    }

    /// The index sets an entry joins, so that every purge scope finds it in every partition:
    /// its account, its subject, the integration its answer names, its partition's account.
    fn indexes(&self, key: &CacheKey, entry: &CacheEntry) -> Vec<String> {
        let keys = &self.fleet.keys;
        let mut sets = vec![
            keys.key("x", &keys.account_hash(&key.account_id)),
            keys.key("x", &keys.subject_hash(&key.account_id, &key.subject)),
            keys.key(
                "x",
                &keys.partition_account_hash(key.partition, &key.account_id),
            ),
        ];
        if let Some(id) = entry.integration {
            let named = Subject::Integration(id);
            if named != key.subject {
                sets.push(keys.key("x", &keys.subject_hash(&key.account_id, &named)));
            }
        }
        sets
    }

    /// Reads and opens the entry under `key`; every failure is a kind of miss.
    async fn read(&self, key: &CacheKey) -> (Option<CacheEntry>, L2Read) {
        let names = self.names(key);
        let redis = &self.fleet.redis;
        let command = redis::cmd("GET").arg(&names.entry).clone();
        let sealed: Option<Vec<u8>> = match redis.query("get", &command).await {
            Ok(sealed) => sealed,
            Err(_down) => return (None, L2Read::Unavailable),
        };
        let Some(sealed) = sealed else {
            return (None, L2Read::Miss);
        };
        let decoded = self
            .fleet
            .keys
            .open(&names.entry, &sealed)
            .and_then(|plain| entry::decode(&plain));
        let Some(decoded) = decoded else {
            return (None, L2Read::Undecryptable);
        };
        let entry = decoded.into_entry(Instant::now(), epoch_ms(SystemTime::now()));
        if !entry.is_retained(Instant::now()) {
            return (None, L2Read::Miss);
        }
        (Some(entry), L2Read::Hit)
    }

    /// Claims the fleet-wide fetch of `key`, or waits for the sidecar that holds it.
    async fn claim(&self, key: &CacheKey, deadline: Instant) -> ClaimOutcome {
        let names = self.names(key);
        let lease_ms = millis(self.fleet.settings.lease);
        let mut waited = false;
        loop {
            // Subscribe before reading, so that a fill between the read and the wait is seen.
            let mut fills = self.filled.subscribe();
            let token = lease::owner_token();
            let mut invocation = self.claim.prepare_invoke();
            invocation
                .key(&names.lease)
                .key(&names.account_generation)
                .key(&names.all_generation)
                .arg(&token)
                .arg(lease_ms);
            let reply: (i64, String, i64) =
                match self.fleet.redis.invoke("lease", &invocation).await {
                    Ok(reply) => reply,
                    // Redis is not there: fetch as a lone sidecar would (no lease, no L2 write).
                    Err(_down) => return ClaimOutcome::Alone,
                };
            let (acquired, generation, lease_left_ms) = reply;
            if acquired == 1 {
                if waited {
                    self.fleet
                        .redis
                        .metrics()
                        .record_lease_wait(LeaseWait::TookOver);
                }
                return ClaimOutcome::Leased { token, generation };
            }
            waited = true;
            // Someone else fetches. Its entry may already be there.
            if let Some((entry, purges_before)) = self.filled_entry(key).await {
                return ClaimOutcome::Filled {
                    entry,
                    purges_before,
                };
            }
            let now = Instant::now();
            let step = lease::wait_step(now, deadline, lease_left_ms, self.fleet.redis.timeout());
            let until = match step {
                WaitStep::GiveUp => {
                    self.fleet
                        .redis
                        .metrics()
                        .record_lease_wait(LeaseWait::TimedOut);
                    return ClaimOutcome::TimedOut;
                }
                WaitStep::WaitUntil(until) => until,
            };
            let hash: &str = &names.hash;
            let woken = tokio::time::timeout_at(until, async {
                loop {
                    match fills.recv().await {
                        Ok(filled) if &*filled == hash => return,
                        Ok(_) => continue,
                        // Missed announcements may include this one; a closed channel means the
                        // subscriber is gone. Either way, look again.
                        Err(_) => return,
                    }
                }
            })
            .await;
            if woken.is_ok() {
                if let Some((entry, purges_before)) = self.filled_entry(key).await {
                    return ClaimOutcome::Filled {
                        entry,
                        purges_before,
                    };
                }
            }
            // The lease expired or was let go without an entry: try to take it over.
        }
    }

    /// The fresh entry another sidecar's fetch stored, counted as a filled wait, with the purge
    /// count from before it was read.
    async fn filled_entry(&self, key: &CacheKey) -> Option<(CacheEntry, u64)> {
        let purges_before = self.purges.load(Ordering::SeqCst);
        let (entry, _) = self.read(key).await;
        let entry = entry.filter(is_fresh)?;
        let metrics = self.fleet.redis.metrics();
        metrics.record_lease_wait(LeaseWait::Filled);
        Some((entry, purges_before))
    }

    /// Renews the lease every third of its time to live until the ticket is dropped.
    fn start_renewal(self: &Arc<Self>, key: &CacheKey, token: &str) -> tokio::task::AbortHandle {
        let l2 = Arc::clone(self);
        let lease_key = self.names(key).lease;
        let token = token.to_owned();
        let lease = self.fleet.settings.lease;
        let task = tokio::spawn(async move {
            // A third of the lease leaves two renewals' worth of slack; never a zero period.
            let mut ticks = tokio::time::interval((lease / 3).max(Duration::from_millis(1)));
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let mut invocation = l2.renew.prepare_invoke();
                invocation.key(&lease_key).arg(&token).arg(millis(lease));
                let _: Result<i64, _> = l2.fleet.redis.invoke("renew", &invocation).await;
            }
        });
        task.abort_handle()
    }

    /// Writes (or, with no entry, only lets the lease go) and says how it went.
    async fn store(
        &self,
        key: &CacheKey,
        entry: Option<&CacheEntry>,
        ticket: &FleetTicket,
    ) -> L2Write {
        let names = self.names(key);
        let now_ms = epoch_ms(SystemTime::now());
        let (sealed, ttl_ms, indexes) = match entry {
            Some(entry) => {
                let times = WallTimes::of(entry, Instant::now(), now_ms);
                let plain = entry::encode(entry, times);
                let sealed = self.fleet.keys.seal(&names.entry, &plain);
                (sealed, times.redis_ttl_ms(now_ms), self.indexes(key, entry))
            }
            None => (Vec::new(), 1, Vec::new()),
        };
        let mut invocation = self.store.prepare_invoke();
        invocation
            .key(&names.entry)
            .key(&names.account_generation)
            .key(&names.all_generation)
            .key(&names.lease);
        for index in &indexes {
            invocation.key(index);
        }
        invocation
            .arg(sealed)
            .arg(ttl_ms)
            .arg(&ticket.generation)
            .arg(&ticket.lease_token)
            .arg(self.fleet.keys.filled_channel())
            .arg(&names.hash);
        match self.fleet.redis.invoke::<i64>("set", &invocation).await {
            Ok(1) => L2Write::Stored,
            Ok(_) => L2Write::Refused,
            Err(_down) => L2Write::Unavailable,
        }
    }
}

/// How an L2 write went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L2Write {
    Stored,
    /// A write to the account (or a purge of everything) came after the fetch began.
    Refused,
    /// Redis did not answer: this sidecar keeps the entry for itself, as a lone one would.
    Unavailable,
}

/// How a claim ended.
enum ClaimOutcome {
    Leased {
        token: String,
        generation: String,
    },
    Filled {
        entry: CacheEntry,
        purges_before: u64,
    },
    TimedOut,
    /// Redis did not answer: fetch without the fleet.
    Alone,
}

fn is_fresh(entry: &CacheEntry) -> bool {
    matches!(entry.freshness(Instant::now()), Freshness::Fresh { .. })
}

impl AnswerStore for FleetStore {
    async fn get(&self, key: &CacheKey) -> Option<CacheEntry> {
        self.lookup(key).await.map(|(entry, _)| entry)
    }

    async fn lookup(&self, key: &CacheKey) -> Option<(CacheEntry, Tier)> {
        if let Some(entry) = self.local.get(key).await {
            return Some((entry, Tier::Local));
        }
        let l2 = self.l2.as_ref()?;
        let purges_before = l2.purges.load(Ordering::SeqCst);
        let (entry, read) = l2.read(key).await;
        l2.fleet.redis.metrics().record_l2_read(read);
        let entry = entry?;
        self.keep_copy(l2, key, &entry, purges_before).await;
        Some((entry, Tier::Fleet))
    }

    async fn insert(&self, key: CacheKey, entry: CacheEntry) {
        self.local.insert(key, entry).await;
    }

    async fn remove(&self, key: &CacheKey) {
        self.local.remove(key).await;
        if let Some(l2) = &self.l2 {
            let command = redis::cmd("DEL").arg(l2.names(key).entry).clone();
            let _: Result<i64, _> = l2.fleet.redis.query("invalidate", &command).await;
        }
    }

    async fn purge(&self, scope: &PurgeScope) -> u64 {
        if let Some(l2) = &self.l2 {
            l2.purges.fetch_add(1, Ordering::SeqCst);
        }
        let purged = self.local.purge(scope).await;
        let Some(l2) = &self.l2 else {
            return purged;
        };
        let shared = invalidation::invalidate(l2, scope).await;
        purged.max(shared)
    }

    async fn size(&self) -> StoreSize {
        self.local.size().await
    }

    async fn claim_fetch(&self, key: &CacheKey, deadline: Instant) -> FetchClaim {
        let Some(l2) = &self.l2 else {
            return FetchClaim::Fetch(FetchTicket::default());
        };
        match l2.claim(key, deadline).await {
            ClaimOutcome::Leased { token, generation } => {
                let mut ticket = FleetTicket {
                    lease_token: token,
                    generation,
                    renewal: None,
                };
                // Another sidecar may have refreshed the key a moment ago and let the lease go:
                // its newer entry is then taken instead of a second upstream call.
                let purges_before = l2.purges.load(Ordering::SeqCst);
                let own = self.local.get(key).await;
                let (shared, _) = l2.read(key).await;
                if let Some(shared) = shared.filter(|shared| {
                    lease::takes_shared(own.as_ref(), Some(shared), Instant::now())
                }) {
                    l2.store(key, None, &ticket).await;
                    l2.fleet.redis.metrics().record_lease_wait(LeaseWait::Newer);
                    self.keep_copy(l2, key, &shared, purges_before).await;
                    return FetchClaim::Filled(shared);
                }
                // Renewed from here on, while the fetch runs.
                ticket.renewal = Some(l2.start_renewal(key, &ticket.lease_token));
                FetchClaim::Fetch(FetchTicket {
                    fleet: Some(ticket),
                })
            }
            ClaimOutcome::Filled {
                entry,
                purges_before,
            } => {
                self.keep_copy(l2, key, &entry, purges_before).await;
                FetchClaim::Filled(entry)
            }
            ClaimOutcome::TimedOut => FetchClaim::TimedOut,
            ClaimOutcome::Alone => FetchClaim::Fetch(FetchTicket::default()),
        }
    }

    async fn store_fetched(
        &self,
        key: CacheKey,
        entry: Option<CacheEntry>,
        ticket: FetchTicket,
    ) -> bool {
        let fleet_ticket = match (&self.l2, ticket.fleet) {
            (Some(l2), Some(fleet_ticket)) => (l2, fleet_ticket),
            // No fleet, or Redis was not there when the fetch began: this sidecar alone.
            (_, None) | (None, Some(_)) => {
                return match entry {
                    Some(entry) => {
                        self.local.insert(key, entry).await;
                        true
                    }
                    None => false,
                };
            }
        };
        let (l2, fleet_ticket) = fleet_ticket;
        let written = l2.store(&key, entry.as_ref(), &fleet_ticket).await;
        drop(fleet_ticket);
        match (entry, written) {
            // Refused by Redis because of a write that came after the fetch began: this
            // sidecar's copy would be as stale as the one Redis refused.
            (Some(_), L2Write::Refused) | (None, _) => false,
            (Some(entry), L2Write::Stored | L2Write::Unavailable) => {
                self.local.insert(key, entry).await;
                true
            }
        }
    }

    fn is_shared(&self) -> bool {
        self.l2.is_some()
    }
}
