//! zt-risk-sidecar: a loopback caching proxy for Cloudflare's Zero Trust risk-score integration
//! lookups. The library holds everything; `main.rs` only reads the configuration, binds and calls
//! [`App::serve`]. See ARCHITECTURE.md for the map.

pub mod admin;
pub mod budget;
pub mod cache;
pub mod coalesce;
pub mod config;
pub mod credentials;
pub mod dev;
pub mod error;
pub mod metrics;
pub mod proxy;
pub mod resilience;
pub mod routes;
pub mod server;
pub mod simulator;
pub mod telemetry;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin::{Admin, Readiness};
use crate::budget::LocalBudget;
use crate::cache::LocalStore;
use crate::config::{plan_reload, Config, ReloadPlan};
use crate::credentials::FallbackToken;
use crate::metrics::Metrics;
use crate::proxy::{LiveSettings, Proxy};
use crate::server::{DrainOutcome, Listener, ServerLimits};
use crate::telemetry::LogControl;
use crate::upstream::{Upstream, UpstreamSettings};

/// The proxy as the binary runs it: in-process store and budget.
pub type LocalProxy = Proxy<LocalStore, LocalBudget>;

/// How long the admin listener keeps answering after the lookup listener drained.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// How often entries past their retention are swept out of the cache (a read drops one at once).
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

fn live_settings(config: &Config) -> Result<LiveSettings, String> {
    Ok(LiveSettings {
        ttl: config.ttl,
        fallback_token: config.token.as_ref().map(FallbackToken::new).transpose()?,
        max_retries: config.upstream_retries,
        limits: config.request_limits,
        writes_with_sidecar_token: config.writes_with_sidecar_token,
        allowed_accounts: config
            .allowed_accounts
            .as_ref()
            .map(|accounts| Arc::new(accounts.iter().copied().collect())),
    })
}

/// Builds the request handler from a validated configuration: metrics, the store, the budget, the
/// upstream client and the request-path settings.
pub fn build_proxy(config: &Config) -> Result<LocalProxy, String> {
    let metrics = Arc::new(Metrics::new());
    let upstream = Upstream::new(&UpstreamSettings {
        base: config.upstream.clone(),
        connect_timeout: config.connect_timeout,
        request_timeout: config.request_timeout,
        tls: config.tls.clone(),
        proxy: config.https_proxy.clone(),
    })?;
    let evictions = Arc::clone(&metrics);
    let store =
        LocalStore::with_removal_listener(config.cache_max_bytes.get(), move |cause, count| {
            evictions.record_eviction(cause, count)
        });
    let budget = LocalBudget::new(config.budget);
    Ok(Proxy::new(
        store,
        budget,
        upstream,
        live_settings(config)?,
        config.breaker,
        metrics,
    ))
}

/// The whole service: the lookup handler, the admin handler and the readiness they share.
#[derive(Clone)]
pub struct App {
    pub proxy: LocalProxy,
    pub admin: Admin<LocalStore, LocalBudget>,
    pub readiness: Readiness,
    limits: ServerLimits,
}

impl App {
    pub fn new(config: &Config) -> Result<App, String> {
        let proxy = build_proxy(config)?;
        let readiness = Readiness::default();
        let admin = Admin::new(proxy.clone(), readiness.clone(), config.admin_token.clone());
        Ok(App {
            proxy,
            admin,
            readiness,
            limits: config.server_limits.clone(),
        })
    }

    /// Serves lookups on `listener` and operators on `admin_listener` until `shutdown` resolves;
    /// then readiness turns false, the lookup listener drains for `grace`, and the admin listener
    /// stops last.
    pub async fn serve(
        &self,
        listener: impl Into<Listener>,
        admin_listener: TcpListener,
        grace: Duration,
        shutdown: impl Future<Output = ()>,
    ) -> DrainOutcome {
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = self.admin.clone();
        let admin_task = tokio::spawn(server::serve(
            admin_listener,
            move |request| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(admin.handle(request).await) }
            },
            async move {
                let _ = admin_stopped.await;
            },
            ADMIN_GRACE,
        ));
        let sweeper = tokio::spawn(sweep_now_and_then(self.proxy.store().clone()));
        self.readiness.set_ready();
        let readiness = self.readiness.clone();
        let proxy = self.proxy.clone();
        let handler = move |request| {
            let proxy = proxy.clone();
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(request).await) }
        };
        let drain = async move {
            shutdown.await;
            readiness.set_draining();
        };
        let outcome = server::serve_with(listener, handler, drain, grace, &self.limits).await;
        sweeper.abort();
        let _ = stop_admin.send(());
        if let Err(error) = admin_task.await {
            tracing::error!(%error, "the admin listener task failed");
        }
        outcome
    }

    /// Applies a re-read configuration: what can change live changes now, what cannot is returned
    /// for the caller to log. `running` is the configuration in force.
    pub fn reload(
        &self,
        running: &Config,
        new: &Config,
        logs: Option<&LogControl>,
    ) -> Result<ReloadPlan, String> {
        let plan = plan_reload(running, new);
        let settings = live_settings(new)?;
        if plan.applied.contains(&"log_level") {
            if let Some(logs) = logs {
                logs.apply(new.log_level.as_deref())?;
            }
        }
        let budget = plan
            .applied
            .contains(&"upstream_budget")
            .then_some(new.budget);
        self.proxy.reconfigure(settings, new.breaker, budget);
        self.admin.set_token(new.admin_token.clone());
        Ok(plan)
    }
}

/// Every [`SWEEP_EVERY`], drops the cache entries past their retention, on a blocking thread: a
/// sweep walks every entry.
async fn sweep_now_and_then(store: LocalStore) {
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.sweep_expired()).await {
            Ok(swept) => tracing::debug!(swept, "swept expired cache entries"),
            Err(error) => tracing::error!(%error, "the cache sweep failed"),
        }
    }
}

/// Serves lookups only (no admin listener) until `shutdown` resolves, then drains for `grace`.
pub async fn serve(
    listener: TcpListener,
    proxy: LocalProxy,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> DrainOutcome {
    let handler = move |request| {
        let proxy = proxy.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(request).await) }
    };
    server::serve(listener, handler, shutdown, grace).await
}
