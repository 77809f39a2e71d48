//! The binary: reads the configuration, sets up logging, binds the listeners and runs the library
//! until SIGTERM or SIGINT, re-reading the configuration on SIGHUP (and when the library's reload
//! task sees a secret file change or `POST /reload`); or, as `check`, validates the configuration
//! the same way and prints it. Everything else lives in the library.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use zt_risk_sidecar::config::{self, Cli, CliCommand, Config, TOKEN_ENV};
#[cfg(feature = "dev")]
use zt_risk_sidecar::dev::DevMode;
use zt_risk_sidecar::reload::{Loader, ReloadHandle, Reloader, Trigger};
use zt_risk_sidecar::server::{self, DrainOutcome, ListenAddr, Listener};
use zt_risk_sidecar::telemetry;
use zt_risk_sidecar::App;

/// The exit code of a configuration that is not valid, at start-up and from `check`.
const INVALID_CONFIGURATION: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(CliCommand::Check) => check(&cli),
        None => run(cli),
    }
}

/// `check`: every step of start-up that can refuse a configuration, in the same order and with
/// the same messages (flags, environment and file; the token, admin token and CA files; the log
/// filter; the upstream client and the token's use in a header), without binding anything or
/// starting dev mode's simulator. Prints the effective configuration and exits 0, or prints the
/// error and exits 2.
fn check(cli: &Cli) -> ExitCode {
    let invalid = |error: &dyn std::fmt::Display| {
        eprintln!("zt-risk-sidecar: {error}");
        ExitCode::from(INVALID_CONFIGURATION)
    };
    let (config, file) = match config::load_with_file(cli, std::env::var(TOKEN_ENV).ok()) {
        Ok(loaded) => loaded,
        Err(error) => return invalid(&error),
    };
    let rust_log = std::env::var(config::RUST_LOG).ok();
    if let Err(error) =
        config::effective_log_filter(config.log_level.as_deref(), rust_log.as_deref())
    {
        return invalid(&error);
    }
    // The service is built inside a runtime, as at start-up, and dropped unused.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return invalid(&format!("cannot start the async runtime: {error}")),
    };
    if let Err(error) = runtime.block_on(async { App::new(&config).map(drop) }) {
        return invalid(&error);
    }
    print!("{}", config::describe(cli, &file, &config));
    ExitCode::SUCCESS
}

/// Runs the service until SIGTERM or SIGINT.
fn run(cli: Cli) -> ExitCode {
    let token_env = std::env::var(TOKEN_ENV).ok();
    let config = match config::load(&cli, token_env.clone()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("zt-risk-sidecar: {error}");
            return ExitCode::from(INVALID_CONFIGURATION);
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
                return ExitCode::from(INVALID_CONFIGURATION);
            }
        };
    let (logs, log_writer, warning) =
        match telemetry::init(config.log_format, log_filter.as_deref()) {
            Ok(logging) => logging,
            Err(error) => {
                eprintln!("zt-risk-sidecar: cannot start the log writer thread: {error}");
                return ExitCode::FAILURE;
            }
        };
    telemetry::log_panics();
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    let dropped_lines = log_writer.dropped_lines();
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
        // Reloads re-read with the same flags and environment as this start. The file watch
        // starts here, before "listening" is logged: a change after that line is always seen.
        let load: Loader = Box::new(move || config::load(&cli, token_env.clone()));
        let (reload, reloads) = Reloader::new(app.clone(), load, config.clone(), Some(logs)).start();
        let local = listener.describe();
        let admin_local = admin_listener.local_addr().unwrap_or(config.admin_listen);
        tracing::info!(listen = %local, admin_listen = %admin_local, upstream = %config.upstream, "zt-risk-sidecar listening");
        if let Listener::Tcp(tcp) = &listener {
            if tcp.local_addr().is_ok_and(|addr| !addr.ip().is_loopback()) {
                tracing::warn!(listen = %local, "the lookup listener is reachable beyond this host: whoever reaches it is served from the cache with their own credentials, and with the sidecar's token when they send none");
            }
        }
        // The banner is for the person at the terminal, so it goes to standard error: standard
        // output carries only log lines, which with `--log-format json` must all be JSON.
        #[cfg(feature = "dev")]
        if let Some(dev) = &dev {
            eprintln!("{}", dev.instructions(&local));
        }
        let Signals { terminate, interrupt, hangup } = signals;
        let hangups = tokio::spawn(reload_on_hangup(hangup, reload));
        let outcome = app
            .serve(listener, admin_listener, config.shutdown_grace, shutdown_on(terminate, interrupt))
            .await;
        hangups.abort();
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

/// On each SIGHUP, asks the reload task to re-read the configuration file and the token files
/// with the same flags and environment; it applies what can change live, logs what needs a
/// restart, and keeps the running configuration when the new one is invalid.
async fn reload_on_hangup(mut hangup: Signal, reload: ReloadHandle) {
    while hangup.recv().await.is_some() {
        reload.request(Trigger::Hangup);
    }
}
