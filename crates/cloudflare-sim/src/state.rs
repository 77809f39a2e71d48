//! The simulator's shared state: credentials, stored integrations, the fault plan, rate-limit
//! windows, the counters and the recorded requests. It owns every lock, and no method here holds a
//! lock across an `.await`.

use std::any::Any;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::auth::Credential;
use super::rate_limit::{self, Decision, UserWindow};
use super::rays::RayOwners;
use super::store::{ReferenceTaken, Store, UpdateError};
use super::{
    Fault, Integration, RateLimitPolicy, RecordedRequest, SimConfig, SimRoute, RAY_OWNERS_CAPACITY,
    RECORDED_CAPACITY,
};

/// Who a credential belongs to and where it may be used.
#[derive(Debug)]
pub(crate) struct Principal {
    pub user: String,
    pub accounts: HashSet<String>,
}

/// What to do to one request before serving it.
pub(crate) struct Plan {
    pub latency: Duration,
    pub fault: Option<Fault>,
    pub policy: RateLimitPolicy,
}

struct Control {
    latency: Duration,
    standing_fault: Option<Fault>,
    queued_faults: VecDeque<(u32, Fault)>,
    policy: RateLimitPolicy,
}

pub(crate) struct Shared {
    total: AtomicU64,
    by_route: [AtomicU64; SimRoute::ALL.len()],
    by_user: Mutex<HashMap<String, u64>>,
    recorded: Mutex<VecDeque<RecordedRequest>>,
    rays: Mutex<RayOwners>,
    arrivals: Notify,
    control: Mutex<Control>,
    principals: Mutex<HashMap<Credential, Arc<Principal>>>,
    store: Mutex<Store>,
    windows: Mutex<HashMap<String, UserWindow>>,
    shutdown: watch::Sender<bool>,
    /// How many `RequestGate`s are alive; requests wait while this is above zero.
    gates: watch::Sender<u64>,
    held: AtomicU64,
    handler_panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// Counts one held request for as long as it lives, so `held` stays right even if the waiting
/// future is dropped.
struct Holding<'a>(&'a AtomicU64);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A poisoned lock only means a handler panicked while holding it; that panic is re-raised on
/// shutdown, and the data (plain maps and counters) is still usable meanwhile.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new(config: SimConfig) -> Self {
        Shared {
            total: AtomicU64::new(0),
            by_route: Default::default(),
            by_user: Mutex::new(HashMap::new()),
            recorded: Mutex::new(VecDeque::with_capacity(RECORDED_CAPACITY)),
            rays: Mutex::new(RayOwners::with_capacity(RAY_OWNERS_CAPACITY)),
            arrivals: Notify::new(),
            control: Mutex::new(Control {
                latency: config.latency,
                standing_fault: None,
                queued_faults: VecDeque::new(),
                policy: config.rate_limit,
            }),
            principals: Mutex::new(HashMap::new()),
            store: Mutex::new(Store::default()),
            windows: Mutex::new(HashMap::new()),
            shutdown: watch::Sender::new(false),
            gates: watch::Sender::new(0),
            held: AtomicU64::new(0),
            handler_panic: Mutex::new(None),
        }
    }

    // ---- lifecycle ----

    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.shutdown.subscribe();
        async move {
            // An error means the sender is gone, which also means the simulator is gone.
            let _ = receiver.wait_for(|stopped| *stopped).await;
        }
    }

    /// Sleeps for `duration`, or returns `false` early if shutdown begins first.
    pub async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = self.stopped() => false,
        }
    }

    pub fn keep_handler_panic(&self, payload: Box<dyn Any + Send>) {
        let mut slot = lock(&self.handler_panic);
        if slot.is_none() {
            *slot = Some(payload);
        }
    }

    pub fn take_handler_panic(&self) -> Option<Box<dyn Any + Send>> {
        lock(&self.handler_panic).take()
    }

    // ---- holding requests ----

    pub fn hold(&self) {
        self.gates.send_modify(|gates| *gates += 1);
    }

    pub fn unhold(&self) {
        self.gates
            .send_modify(|gates| *gates = gates.saturating_sub(1));
    }

    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    /// Waits while a gate is alive. Returns `false` if shutdown began first.
    pub async fn pass_gate(&self) -> bool {
        if *self.gates.borrow() == 0 {
            return true;
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        let _holding = Holding(&self.held);
        let mut gates = self.gates.subscribe();
        tokio::select! {
            // An error means the sender is gone, which cannot happen while `self` lives.
            _ = gates.wait_for(|gates| *gates == 0) => true,
            () = self.stopped() => false,
        }
    }

    // ---- observation ----

    pub fn observe(&self, request: RecordedRequest) {
        if let Some(user) = &request.user {
            *lock(&self.by_user).entry(user.clone()).or_insert(0) += 1;
        }
        self.by_route[request.route.index()].fetch_add(1, Ordering::SeqCst);
        {
            let mut recorded = lock(&self.recorded);
            if recorded.len() >= RECORDED_CAPACITY {
                recorded.pop_front();
            }
            recorded.push_back(request);
        }
        // The total goes last so that a waiter woken by it sees the other observations too.
        self.total.fetch_add(1, Ordering::SeqCst);
        self.arrivals.notify_waiters();
    }

    pub fn requests(&self, route: SimRoute) -> u64 {
        self.by_route[route.index()].load(Ordering::SeqCst)
    }

    pub fn total_requests(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    pub fn requests_by_user(&self, user: &str) -> u64 {
        lock(&self.by_user).get(user).copied().unwrap_or(0)
    }

    pub fn recorded(&self) -> Vec<RecordedRequest> {
        lock(&self.recorded).iter().cloned().collect()
    }

    /// Notes that the answer carrying `ray` was made for a request of `user`.
    pub fn note_ray(&self, ray: &str, user: &str) {
        lock(&self.rays).note(ray, user);
    }

    pub fn ray_owner(&self, ray: &str) -> Option<String> {
        lock(&self.rays).owner(ray)
    }

    /// Ray owners are kept: answers cached downstream keep carrying their rays.
    pub fn reset_counters(&self) {
        self.total.store(0, Ordering::SeqCst);
        for counter in &self.by_route {
            counter.store(0, Ordering::SeqCst);
        }
        lock(&self.by_user).clear();
        lock(&self.recorded).clear();
    }

    pub async fn wait_for_requests(&self, n: u64) {
        loop {
            let arrival = self.arrivals.notified();
            tokio::pin!(arrival);
            // Registering before checking closes the gap where an arrival could be missed.
            arrival.as_mut().enable();
            if self.total_requests() >= n {
                return;
            }
            arrival.await;
        }
    }

    // ---- control ----

    pub fn set_latency(&self, latency: Duration) {
        lock(&self.control).latency = latency;
    }

    pub fn set_standing_fault(&self, fault: Option<Fault>) {
        lock(&self.control).standing_fault = fault;
    }

    pub fn queue_fault(&self, n: u32, fault: Fault) {
        if n > 0 {
            lock(&self.control).queued_faults.push_back((n, fault));
        }
    }

    pub fn clear_faults(&self) {
        let mut control = lock(&self.control);
        control.standing_fault = None;
        control.queued_faults.clear();
    }

    pub fn set_rate_limit(&self, policy: RateLimitPolicy) {
        lock(&self.control).policy = policy;
    }

    pub fn rate_limit(&self) -> RateLimitPolicy {
        lock(&self.control).policy
    }

    /// Takes this request's latency and fault: a queued fault first (using it up), else the
    /// standing one.
    pub fn take_plan(&self) -> Plan {
        let mut control = lock(&self.control);
        let queued = match control.queued_faults.front_mut() {
            Some((remaining, fault)) => {
                let fault = fault.clone();
                *remaining -= 1;
                if *remaining == 0 {
                    control.queued_faults.pop_front();
                }
                Some(fault)
            }
            None => None,
        };
        Plan {
            latency: control.latency,
            fault: queued.or_else(|| control.standing_fault.clone()),
            policy: control.policy,
        }
    }

    // ---- credentials and rate limits ----

    pub fn add_credential(&self, credential: Credential, user: &str, accounts: &[&str]) {
        let principal = Principal {
            user: user.to_owned(),
            accounts: accounts
                .iter()
                .map(|account| (*account).to_owned())
                .collect(),
        };
        lock(&self.principals).insert(credential, Arc::new(principal));
    }

    pub fn principal(&self, credential: &Credential) -> Option<Arc<Principal>> {
        lock(&self.principals).get(credential).cloned()
    }

    /// Counts one request of `user` against the current policy.
    pub fn admit(&self, user: &str, now: Instant) -> (RateLimitPolicy, Decision) {
        let policy = self.rate_limit();
        let mut windows = lock(&self.windows);
        let window = windows
            .entry(user.to_owned())
            .or_insert_with(|| UserWindow::starting(now));
        (policy, rate_limit::admit(window, &policy, now))
    }

    pub fn reset_rate_limits(&self) {
        lock(&self.windows).clear();
    }

    /// Sets `user`'s count so far in the current window, as if their other tools had spent it.
    pub fn set_usage(&self, user: &str, used: u32, now: Instant) {
        let policy = self.rate_limit();
        let mut windows = lock(&self.windows);
        let window = windows
            .entry(user.to_owned())
            .or_insert_with(|| UserWindow::starting(now));
        rate_limit::set_used(window, &policy, used, now);
    }

    // ---- integrations ----

    pub fn upsert_integration(&self, integration: Integration) -> Integration {
        lock(&self.store).upsert_by_reference(integration)
    }

    pub fn insert_integration(
        &self,
        integration: Integration,
    ) -> Result<Integration, ReferenceTaken> {
        lock(&self.store).insert(integration)
    }

    pub fn integration_by_reference(
        &self,
        account_id: &str,
        reference_id: &str,
    ) -> Option<Integration> {
        lock(&self.store)
            .by_reference(account_id, reference_id)
            .cloned()
    }

    pub fn integration_by_id(&self, account_id: &str, integration_id: &str) -> Option<Integration> {
        lock(&self.store).by_id(account_id, integration_id).cloned()
    }

    pub fn integrations(&self, account_id: &str) -> Vec<Integration> {
        lock(&self.store).list(account_id)
    }

    pub fn update_integration(
        &self,
        account_id: &str,
        integration_id: &str,
        active: bool,
        tenant_url: String,
        reference_id: Option<String>,
    ) -> Result<Integration, UpdateError> {
        lock(&self.store).update(account_id, integration_id, active, tenant_url, reference_id)
    }

    pub fn delete_integration(
        &self,
        account_id: &str,
        integration_id: &str,
    ) -> Option<Integration> {
        lock(&self.store).delete(account_id, integration_id)
    }
}
