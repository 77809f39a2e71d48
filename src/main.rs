//! The binary: reads the configuration, sets up logging, binds the listener and runs the library
//! until SIGTERM or SIGINT. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use zt_risk_sidecar::config::{self, Cli, TOKEN_ENV};
use zt_risk_sidecar::dev::DevMode;
use zt_risk_sidecar::server::DrainOutcome;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match config::load(&cli, std::env::var(TOKEN_ENV).ok()) {
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
    if let Some(warning) = zt_risk_sidecar::telemetry::init(config.log_format) {
        tracing::warn!("{warning}");
    }
    runtime.block_on(async move {
        let dev = if config.dev {
            match DevMode::start(&mut config).await {
                Ok(dev) => Some(dev),
                Err(error) => {
                    tracing::error!("{error}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        let shutdown = match shutdown_signal() {
            Ok(shutdown) => shutdown,
            Err(error) => {
                tracing::error!(%error, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let listener = match TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(listen = %config.listen, %error, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        let local = listener.local_addr().unwrap_or(config.listen);
        tracing::info!(listen = %local, upstream = %config.upstream, "zt-risk-sidecar listening");
        if let Some(dev) = &dev {
            println!("{}", dev.instructions(local));
        }
        let outcome = zt_risk_sidecar::run(listener, &config, shutdown).await;
        if let Some(dev) = dev {
            dev.shutdown().await;
        }
        match outcome {
            Ok(DrainOutcome::Completed) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Ok(DrainOutcome::GraceElapsed) => {
                tracing::warn!("stopped: the shutdown grace period ended with requests in flight");
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!("{error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Installs the SIGTERM and SIGINT handlers now, so that a signal arriving right after start-up
/// is a graceful stop rather than the default abrupt exit, and returns a future that resolves on
/// the first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT: draining"),
            _ = terminate.recv() => tracing::info!("SIGTERM: draining"),
        }
    })
}
