//! zt-risk-sidecar: a loopback caching proxy for Cloudflare's Zero Trust risk-score integration
//! lookups. The library holds everything; `main.rs` only reads the configuration, binds and calls
//! [`App::serve`]. See ARCHITECTURE.md for the map.
//!
//! The public surface is deliberate: [`App`], [`build_proxy`] and [`serve`] for the binary and the
//! tests; the configuration (`config`) and the listeners (`server`) for whoever embeds or tests the
//! service; and the pure deciders that the property tests, the fuzz targets and the load tools
//! exercise directly (`routes`, `credentials`, `cache`, `budget`, `resilience`, `error`, `proxy`'s
//! request limits and hit response, `upstream`'s URL types, `admin`'s purge scopes), and the metric
//! families' exposition formats (`metrics`) that tests scrape. The in-flight table (`coalesce`) is
//! internal.

pub mod admin;
pub mod budget;
pub mod cache;
mod coalesce;
pub mod config;
pub mod credentials;
#[cfg(feature = "dev")]
pub mod dev;
pub mod error;
pub mod fleet;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod resilience;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod throttle;
pub mod upstream;
pub mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin::{Admin, Readiness};
use crate::cache::LocalStore;
use crate::config::{plan_reload, Config, ConfigError, ReloadPlan};
use crate::credentials::{FallbackToken, InvalidToken, PartitionKey};
use crate::fleet::budget::{FleetBudget, FleetBudgetRedis};
use crate::fleet::{Fleet, FleetStore, RedisSetupError};
use crate::metrics::Metrics;
use crate::proxy::{LiveSettings, Proxy};
use crate::server::{DrainOutcome, Listener, ServerLimits};
use crate::telemetry::{LogControl, LogFilterError};
use crate::upstream::{ClientBuildError, Upstream, UpstreamSettings};

/// The proxy as the binary runs it: the in-process store, behind which the fleet's Redis tier
/// when `redis_url` is set, and the budget shared by the fleet through the same Redis (in-process
/// otherwise).
pub type LocalProxy = Proxy<FleetStore, FleetBudget>;

/// How long the admin listener keeps answering after the lookup listener drained.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// How often entries past their retention are swept out of the cache (a read drops one at once).
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Why the service could not be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot build the upstream client: {0}")]
    Upstream(#[from] ClientBuildError),
    #[error("the sidecar's token cannot be used: {0}")]
    Token(#[from] InvalidToken),
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
}

/// Why a reload was rejected; the running configuration stays whole.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    LogFilter(#[from] LogFilterError),
    #[error("cannot apply tls_extra_ca_file: {0}")]
    Roots(#[from] ClientBuildError),
}

/// A reload's outcome: what changed, and the configuration now in force (restart-only keys keep
/// their running values).
#[derive(Debug)]
pub struct Reloaded {
    pub plan: ReloadPlan,
    pub config: Config,
}

fn live_settings(config: &Config) -> Result<LiveSettings, BuildError> {
    Ok(LiveSettings {
        ttl: config.ttl,
        fallback_token: config.token.as_ref().map(FallbackToken::new).transpose()?,
        max_retries: config.upstream_retries,
        stale_after_slow_upstream: config.stale_after_slow_upstream,
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
pub fn build_proxy(config: &Config) -> Result<LocalProxy, BuildError> {
    let metrics = Arc::new(Metrics::new());
    let upstream = Upstream::new(&UpstreamSettings {
        base: config.upstream.clone(),
        connect_timeout: config.connect_timeout,
        request_timeout: config.request_timeout,
        max_connections: config.max_upstream_connections,
        tls: config.tls.clone(),
        proxy: config.https_proxy.clone(),
    })?;
    let evictions = Arc::clone(&metrics);
    let store =
        LocalStore::with_removal_listener(config.cache_max_bytes.get(), move |cause, count| {
            evictions.record_eviction(cause, count)
        });
    // With a fleet tier, partitions derive from the fleet key so that they match on every host;
    // alone, a random per-process key keeps them meaningless outside this process.
    let fleet = match &config.fleet {
        Some(settings) => Some(Fleet::new(settings, metrics.fleet().clone())?),
        None => None,
    };
    let partition_key = fleet
        .as_ref()
        .map_or_else(PartitionKey::random, |fleet| fleet.keys.partition_key());
    let budget = FleetBudget::new(config.budget, fleet.as_ref().map(FleetBudgetRedis::of));
    let store = match &fleet {
        Some(fleet) => FleetStore::with_fleet(store, fleet.clone()),
        None => FleetStore::local_only(store),
    };
    Ok(Proxy::new(
        store,
        budget,
        upstream,
        live_settings(config)?,
        config.breaker,
        metrics,
        partition_key,
    ))
}

/// The whole service: the lookup handler, the admin handler and the readiness they share.
#[derive(Clone)]
pub struct App {
    pub proxy: LocalProxy,
    pub admin: Admin<FleetStore, FleetBudget>,
    pub readiness: Readiness,
    limits: ServerLimits,
}

impl App {
    pub fn new(config: &Config) -> Result<App, BuildError> {
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
        let sweeper = tokio::spawn(sweep_now_and_then(self.proxy.store().local().clone()));
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
        let counters = self.proxy.metrics().connections().clone();
        let outcome =
            server::serve_counted(listener, handler, drain, grace, &self.limits, &counters).await;
        sweeper.abort();
        let _ = stop_admin.send(());
        if let Err(error) = admin_task.await {
            tracing::error!(%error, "the admin listener task failed");
        }
        outcome
    }

    /// Applies a re-read configuration: what can change live changes now, what cannot is returned
    /// for the caller to log, with the configuration now in force. `running` is the one in force
    /// until now. Nothing changes unless the whole new configuration is accepted.
    pub fn reload(
        &self,
        running: &Config,
        new: Config,
        logs: Option<&LogControl>,
    ) -> Result<Reloaded, ReloadError> {
        let plan = plan_reload(running, &new);
        let config = new.keeping_restart_values(running)?;
        let settings = live_settings(&config)?;
        // First of what can fail, so that a rejected CA file leaves everything as it was.
        if plan.applied.contains(&"tls_extra_ca_file") {
            self.proxy.upstream().reload_roots(&config.tls)?;
        }
        if plan.applied.contains(&"log_level") {
            if let Some(logs) = logs {
                logs.apply(config.log_level.as_deref())?;
            }
        }
        // A new budget policy starts every credential with a full bucket, so only a changed one
        // replaces the running budget.
        let budget = (config.budget != running.budget).then_some(config.budget);
        self.proxy.reconfigure(settings, config.breaker, budget);
        self.admin.set_token(config.admin_token.clone());
        Ok(Reloaded { plan, config })
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
