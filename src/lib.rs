//! zt-risk-sidecar: a loopback caching proxy for Cloudflare's Zero Trust risk-score integration
//! lookups. The library holds everything; `main.rs` only reads the configuration, binds and calls
//! [`run`]. See ARCHITECTURE.md for the map.

pub mod budget;
pub mod cache;
pub mod coalesce;
pub mod config;
pub mod credentials;
pub mod dev;
pub mod error;
pub mod proxy;
pub mod resilience;
pub mod routes;
pub mod server;
pub mod simulator;
pub mod telemetry;
pub mod upstream;

use std::future::Future;

use tokio::net::TcpListener;

use crate::budget::LocalBudget;
use crate::cache::LocalStore;
use crate::config::Config;
use crate::credentials::FallbackToken;
use crate::proxy::{Proxy, ProxySettings};
use crate::server::DrainOutcome;
use crate::upstream::{Upstream, UpstreamSettings};

/// Builds the request handler from a validated configuration: the store, the upstream client and
/// the request-path settings.
/// The proxy as the binary runs it: in-process store and budget.
pub type LocalProxy = Proxy<LocalStore, LocalBudget>;

pub fn build_proxy(config: &Config) -> Result<LocalProxy, String> {
    let upstream = Upstream::new(&UpstreamSettings {
        base: config.upstream.clone(),
        connect_timeout: config.connect_timeout,
        request_timeout: config.request_timeout,
    })?;
    let fallback_token = config.token.as_ref().map(FallbackToken::new).transpose()?;
    let store = LocalStore::new(config.cache_max_bytes.get());
    let budget = LocalBudget::new(config.budget);
    Ok(Proxy::new(
        store,
        budget,
        upstream,
        ProxySettings {
            ttl: config.ttl,
            fallback_token,
            max_retries: config.upstream_retries,
            breaker: config.breaker,
        },
    ))
}

/// Serves lookups on `listener` until `shutdown` resolves, then drains for the configured grace
/// period. The caller owns binding and the shutdown trigger, so tests bind `127.0.0.1:0` and stop
/// the server when they like.
pub async fn run(
    listener: TcpListener,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<DrainOutcome, String> {
    let proxy = build_proxy(config)?;
    Ok(serve(listener, proxy, config.shutdown_grace, shutdown).await)
}

/// Serves an already built proxy (tests use this to look at its store).
pub async fn serve(
    listener: TcpListener,
    proxy: LocalProxy,
    grace: std::time::Duration,
    shutdown: impl Future<Output = ()>,
) -> DrainOutcome {
    let handler = move |request| {
        let proxy = proxy.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(request).await) }
    };
    server::serve(listener, handler, shutdown, grace).await
}
