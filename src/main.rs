//! The binary: reads the configuration, sets up logging, binds the listeners and runs the library
//! until SIGTERM or SIGINT, re-reading the configuration on SIGHUP. Everything else lives in the
//! library.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use zt_risk_sidecar::config::{self, Cli, Config, TOKEN_ENV};
#[cfg(feature = "dev")]
use zt_risk_sidecar::dev::DevMode;
use zt_risk_sidecar::server::{self, DrainOutcome, ListenAddr, Listener};
use zt_risk_sidecar::telemetry::{self, LogControl};
use zt_risk_sidecar::{App, Reloaded};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let token_env = std::env::var(TOKEN_ENV).ok();
    let config = match config::load(&cli, token_env.clone()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("zt-risk-sidecar: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("zt-risk-sidecar: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let rust_log = std::env::var(config::RUST_LOG).ok();
    let log_filter =
        match config::effective_log_filter(config.log_level.as_deref(), rust_log.as_deref()) {
            Ok(filter) => filter,
            Err(error) => {
                eprintln!("zt-risk-sidecar: {error}");
                return ExitCode::from(2);
            }
        };
    let (logs, log_writer, warning) = telemetry::init(config.log_format, log_filter.as_deref());
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    let dropped_lines = log_writer.dropped_lines();
    #[cfg(feature = "dev")]
    let stdout = log_writer.plain_output();
    let code = runtime.block_on(async move {
        // Without the `dev` feature there is no simulator to start and `config.dev` is never set;
        // with it, dev mode rewrites the upstream and the token to point at the simulator.
        #[cfg(feature = "dev")]
        let mut config = config;
        #[cfg(feature = "dev")]
        let dev = if config.dev {
            match DevMode::start(&mut config).await {
                Ok(dev) => Some(dev),
                Err(error) => return fatal(&error),
            }
        } else {
            None
        };
        let signals = match Signals::install() {
            Ok(signals) => signals,
            Err(error) => return fatal(&format!("cannot install signal handlers: {error}")),
        };
        let (listener, admin_listener) = match bind(&config).await {
            Ok(listeners) => listeners,
            Err(error) => return fatal(&error),
        };
        let app = match App::new(&config) {
            Ok(app) => app,
            Err(error) => return fatal(&error),
        };
        app.proxy
            .metrics()
            .count_dropped_log_lines(move || dropped_lines.count());
        let local = listener.describe();
        let admin_local = admin_listener.local_addr().unwrap_or(config.admin_listen);
        tracing::info!(listen = %local, admin_listen = %admin_local, upstream = %config.upstream, "zt-risk-sidecar listening");
        if let Listener::Tcp(tcp) = &listener {
            if tcp.local_addr().is_ok_and(|addr| !addr.ip().is_loopback()) {
                tracing::warn!(listen = %local, "the lookup listener is reachable beyond this host: whoever reaches it is served from the cache with their own credentials, and with the sidecar's token when they send none");
            }
        }
        #[cfg(feature = "dev")]
        if let Some(dev) = &dev {
            stdout.println(&dev.instructions(&local));
        }
        let Signals { terminate, interrupt, hangup } = signals;
        let reloads = tokio::spawn(reload_on_hangup(hangup, app.clone(), cli, token_env, config.clone(), logs));
        let outcome = app
            .serve(listener, admin_listener, config.shutdown_grace, shutdown_on(terminate, interrupt))
            .await;
        reloads.abort();
        #[cfg(feature = "dev")]
        if let Some(dev) = dev {
            dev.shutdown().await;
        }
        match outcome {
            DrainOutcome::Completed => tracing::info!("stopped"),
            DrainOutcome::GraceElapsed => {
                tracing::warn!("stopped: the shutdown grace period ended with requests in flight")
            }
        }
        ExitCode::SUCCESS
    });
    // Tasks still on the runtime may log as they are dropped; only then is the writer stopped,
    // which writes and flushes every queued line (the last requests and "stopped") before exit.
    drop(runtime);
    drop(log_writer);
    code
}

/// Ends start-up with an error that always reaches the operator: logged, and also written to
/// standard error when the log filter would drop it (`log_level = "off"`), since a service that
/// exits without a word is the worst way to fail.
fn fatal(error: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!("{error}");
    if !tracing::enabled!(tracing::Level::ERROR) {
        eprintln!("zt-risk-sidecar: {error}");
    }
    ExitCode::FAILURE
}

/// Which listener could not be bound, and why.
#[derive(Debug, thiserror::Error)]
enum BindError {
    #[error("cannot listen on {address}: {source}")]
    Lookup {
        address: ListenAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {address} (admin_listen): {source}")]
    Admin {
        address: SocketAddr,
        source: std::io::Error,
    },
}

async fn bind(config: &Config) -> Result<(Listener, TcpListener), BindError> {
    let listener = server::bind(&config.listen, &config.unix_socket)
        .await
        .map_err(|source| BindError::Lookup {
            address: config.listen.clone(),
            source,
        })?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| BindError::Admin {
            address: config.admin_listen,
            source,
        })?;
    Ok((listener, admin))
}

/// The signal streams, installed before anything listens so that a signal arriving right after
/// start-up is handled rather than ending the process abruptly.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_on(mut terminate: Signal, mut interrupt: Signal) {
    tokio::select! {
        _ = interrupt.recv() => tracing::info!("SIGINT: draining"),
        _ = terminate.recv() => tracing::info!("SIGTERM: draining"),
    }
}

/// On each SIGHUP: re-read the configuration file and the token files with the same flags and
/// environment, apply what can change live, log what needs a restart, and keep the running
/// configuration when the new one is invalid.
async fn reload_on_hangup(
    mut hangup: Signal,
    app: App,
    cli: Cli,
    token_env: Option<String>,
    mut running: Config,
    logs: LogControl,
) {
    while hangup.recv().await.is_some() {
        let metrics = app.proxy.metrics();
        let mut new = match config::load(&cli, token_env.clone()) {
            Ok(new) => new,
            Err(error) => {
                metrics.record_reload("rejected");
                tracing::warn!(%error, "SIGHUP: configuration rejected; the running one stays");
                continue;
            }
        };
        if running.dev {
            // --dev points the sidecar at its own simulator; a reload keeps that.
            new.replace_upstream(running.upstream.clone(), running.token.clone());
        }
        match app.reload(&running, new, Some(&logs)) {
            Ok(Reloaded { plan, config }) => {
                metrics.record_reload("applied");
                if !plan.needs_restart.is_empty() {
                    tracing::warn!(keys = ?plan.needs_restart, "SIGHUP: these changes need a restart and were not applied");
                }
                // At warn, like every operational event: a changed configuration is something an
                // operator reading only warnings must still see.
                tracing::warn!(applied = ?plan.applied, "SIGHUP: configuration reloaded");
                running = config;
            }
            Err(error) => {
                metrics.record_reload("rejected");
                tracing::warn!(%error, "SIGHUP: configuration rejected; the running one stays");
            }
        }
    }
}
