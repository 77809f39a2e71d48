//! Logging setup: one `tracing` subscriber for the process, filtered by `RUST_LOG` (default
//! `info`), in a pretty or JSON format, written to standard output. What is logged is decided at
//! the call sites; this module only decides where and how.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Returns a warning to log when `RUST_LOG` could not be parsed.
pub fn init(format: LogFormat) -> Option<String> {
    let (filter, warning) = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => match EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(error) => (
                EnvFilter::new("info"),
                Some(format!("RUST_LOG is invalid ({error}); using \"info\"")),
            ),
        },
        _ => (EnvFilter::new("info"), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(true);
    let installed = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(error) = installed {
        eprintln!("zt-risk-sidecar: logging was already set up ({error})");
    }
    warning
}
