//! The harnesses: the real sidecar, in process, in front of the simulated Cloudflare API, each on
//! an ephemeral loopback port, and the test configuration they share. [`Harness`] serves lookups
//! only and exposes the request handler; [`AppHarness`] is the whole service with its admin
//! listener and connection limits. Neither binds a fixed port.

use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zt_risk_sidecar::config::{self, Cli, Config, FileConfig};
use zt_risk_sidecar::server::{DrainOutcome, Listener};
use zt_risk_sidecar::App;

use super::client::{Endpoint, Reply};
use super::{
    SimConfig, SimHandle, SimulatedCloudflare, ACCOUNT, EMAIL, GLOBAL_KEY, OTHER_ACCOUNT, TOKEN_A,
    TOKEN_B, TOKEN_OTHER_ACCOUNT,
};

/// The default test configuration, pointed at `upstream`.
pub fn test_config(upstream: &str) -> Config {
    let mut config =
        config::resolve(&Cli::default(), FileConfig::default(), None).expect("defaults are valid");
    config.upstream =
        zt_risk_sidecar::upstream::UpstreamBase::parse(upstream, false).expect("loopback upstream");
    config.listen = zt_risk_sidecar::server::ListenAddr::Tcp("127.0.0.1:0".parse().expect("addr"));
    config.shutdown_grace = Duration::from_secs(5);
    config
}

/// Gives the simulated API the test credentials (see the constants).
pub fn seed(sim: &SimHandle) {
    sim.add_token(TOKEN_A, "user-a", &[ACCOUNT, OTHER_ACCOUNT]);
    sim.add_token(TOKEN_B, "user-b", &[ACCOUNT]);
    sim.add_token(TOKEN_OTHER_ACCOUNT, "user-c", &[OTHER_ACCOUNT]);
    sim.add_global_key(EMAIL, GLOBAL_KEY, &[ACCOUNT]);
}

/// A seeded simulated API on an ephemeral port.
pub async fn start_simulator() -> SimulatedCloudflare {
    let sim = SimulatedCloudflare::start(SimConfig::default())
        .await
        .expect("simulator starts");
    seed(&sim.handle());
    sim
}

/// The simulated API seeded with the test credentials, and the sidecar's lookup handler in front
/// of it. Requests go through the [`Endpoint`] it dereferences to.
pub struct Harness {
    sim: Option<SimulatedCloudflare>,
    sim_handle: SimHandle,
    endpoint: Endpoint,
    pub sidecar: SocketAddr,
    pub proxy: zt_risk_sidecar::LocalProxy,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<DrainOutcome>>,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Harness {
        let sim = start_simulator().await;
        let mut config = test_config(&sim.base_url());
        configure(&mut config);
        Harness::start_in_front_of(sim, config).await
    }

    pub async fn start_in_front_of(sim: SimulatedCloudflare, config: Config) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sidecar");
        let sidecar = listener.local_addr().expect("local addr");
        let proxy = zt_risk_sidecar::build_proxy(&config).expect("proxy builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(zt_risk_sidecar::serve(
            listener,
            proxy.clone(),
            config.shutdown_grace,
            async move {
                let _ = stopped.await;
            },
        ));
        Harness {
            sim_handle: sim.handle(),
            sim: Some(sim),
            endpoint: Endpoint::new(sidecar),
            sidecar,
            proxy,
            config,
            stop: Some(stop),
            server: Some(server),
        }
    }

    pub fn handle(&self) -> SimHandle {
        self.sim_handle.clone()
    }

    /// Stops the simulated API: from now on connecting to it is refused.
    pub async fn kill_upstream(&mut self) {
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
    }

    pub async fn stop(mut self) -> DrainOutcome {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let outcome = match self.server.take() {
            Some(server) => server.await.expect("server task does not panic"),
            None => DrainOutcome::Completed,
        };
        self.kill_upstream().await;
        outcome
    }
}

impl Deref for Harness {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// The whole service served by [`App::serve`] on `listener` and an ephemeral admin port, until
/// [`ServingApp::stop`].
pub struct ServingApp {
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<DrainOutcome>,
}

impl ServingApp {
    pub async fn start(
        config: &Config,
        listener: impl Into<Listener> + Send + 'static,
    ) -> ServingApp {
        let app = App::new(config).expect("app builds");
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin = admin_listener.local_addr().expect("admin addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.serve(
                listener,
                admin_listener,
                Duration::from_secs(5),
                async move {
                    let _ = stopped.await;
                },
            )
            .await
        });
        ServingApp {
            admin,
            stop: Some(stop),
            task,
        }
    }

    /// Starts the drain without waiting for it to end.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn stop(mut self) -> DrainOutcome {
        self.begin_shutdown();
        self.task.await.expect("app task does not panic")
    }
}

/// The whole service (lookup and admin listeners, with the configured server limits) in front of
/// the seeded simulated API. Lookup requests go through the [`Endpoint`] it dereferences to.
pub struct AppHarness {
    pub sim: SimulatedCloudflare,
    lookups: Endpoint,
    admin: Endpoint,
    serving: ServingApp,
}

impl AppHarness {
    pub async fn start(configure: impl FnOnce(&mut Config)) -> AppHarness {
        let sim = start_simulator().await;
        let mut config = test_config(&sim.base_url());
        configure(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let lookups = Endpoint::new(listener.local_addr().expect("addr"));
        let serving = ServingApp::start(&config, listener).await;
        AppHarness {
            sim,
            lookups,
            admin: Endpoint::new(serving.admin),
            serving,
        }
    }

    pub fn handle(&self) -> SimHandle {
        self.sim.handle()
    }

    /// A request to the admin listener.
    pub async fn admin(&self, method: http::Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.admin.send(method, path, headers).await
    }

    /// Starts the drain (readiness turns false) without waiting for it to end.
    pub fn begin_shutdown(&mut self) {
        self.serving.begin_shutdown();
    }

    pub async fn stop(self) {
        self.serving.stop().await;
        self.sim.shutdown().await;
    }
}

impl Deref for AppHarness {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.lookups
    }
}

impl Harness {
    /// The value of one series of the sidecar's metrics, named as the exposition spells it
    /// (`family_total{label="value"}`). Every series exists from the start, so one that is not
    /// there is a mistake in the test and fails it.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self
            .proxy
            .metrics()
            .encode(zt_risk_sidecar::metrics::Exposition::OpenMetrics);
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
    }
}
