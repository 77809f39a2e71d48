//! Logging setup: one `tracing` subscriber for the process, in a pretty or JSON format, written to
//! standard output, with a filter that a reload can replace. What is logged is decided at the call
//! sites; this module only decides where and how.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), LogFilterError> + Send + Sync>;

/// The running subscriber refused a new filter (it is gone, or was never ours).
#[derive(Debug, thiserror::Error)]
#[error("cannot change the log filter: {0}")]
pub struct LogFilterError(#[from] tracing_subscriber::reload::Error);

/// Changes the log filter of the running process.
pub struct LogControl {
    set_filter: SetFilter,
}

impl LogControl {
    /// Applies the configured filter, or `RUST_LOG` (else `info`) when none is configured.
    pub fn apply(&self, configured: Option<&str>) -> Result<(), LogFilterError> {
        let (filter, _) = choose_filter(configured);
        (self.set_filter)(filter)
    }
}

/// The filter: the configured one, else `RUST_LOG`, else `info`; and a warning when `RUST_LOG`
/// could not be parsed. A configured filter was validated with the rest of the configuration.
fn choose_filter(configured: Option<&str>) -> (EnvFilter, Option<String>) {
    if let Some(filter) = configured.and_then(|text| EnvFilter::try_new(text).ok()) {
        return (filter, None);
    }
    match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => match EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(error) => (
                EnvFilter::new("info"),
                Some(format!("RUST_LOG is invalid ({error}); using \"info\"")),
            ),
        },
        _ => (EnvFilter::new("info"), None),
    }
}

/// Installs the global subscriber. Returns the control for reloads and a warning to log when
/// `RUST_LOG` could not be parsed.
pub fn init(format: LogFormat, configured: Option<&str>) -> (LogControl, Option<String>) {
    let (filter, warning) = choose_filter(configured);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(true);
    let (set_filter, installed): (SetFilter, _) = match format {
        LogFormat::Pretty => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            (
                Box::new(move |filter| Ok(handle.reload(filter)?)),
                builder.try_init(),
            )
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            (
                Box::new(move |filter| Ok(handle.reload(filter)?)),
                builder.try_init(),
            )
        }
    };
    if let Err(error) = installed {
        eprintln!("zt-risk-sidecar: logging was already set up ({error})");
    }
    (LogControl { set_filter }, warning)
}
