//! Logging setup: one `tracing` subscriber for the process, in a pretty or JSON format, with a
//! filter that a reload can replace, written to standard output by a dedicated thread through a
//! bounded queue. What is logged is decided at the call sites; this module only decides where and
//! how, and it must never let writing a line stall a worker that serves requests.

use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

mod plain;
mod queue;
pub use plain::PlainFormat;
pub use queue::{queued_writer, DroppedLines, LogQueue, LogWriter, FLUSH_INTERVAL};

/// Bytes of log lines waiting for the writer thread, at most. A line is formatted on the worker
/// that logs it and appended; a line that does not fit is dropped and counted
/// (`zt_sidecar_log_lines_dropped_total`) rather than making the worker wait for the terminal, the
/// pipe or the container runtime. About 27,000 request lines; the writer thread takes them every
/// [`FLUSH_INTERVAL`], so only an output that stops taking lines fills it.
pub const LOG_BUFFER_BYTES: usize = 8 * 1024 * 1024;

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

/// Installs the global subscriber, writing to standard output through the buffer. Returns the
/// control for reloads, the writer to keep until the last line, and a warning to log when
/// `RUST_LOG` could not be parsed. Fails only when the writer thread cannot be started.
pub fn init(
    format: LogFormat,
    configured: Option<&str>,
) -> std::io::Result<(LogControl, LogWriter, Option<String>)> {
    let terminal = std::io::stdout().is_terminal();
    let (subscriber, log_writer, warning) =
        subscriber(format, configured, std::io::stdout(), terminal)?;
    if let Err(error) = subscriber.install() {
        eprintln!("zt-risk-sidecar: logging was already set up ({error})");
    }
    Ok((subscriber.control, log_writer, warning))
}

/// The sidecar's subscriber, not yet installed, and its reload control.
pub struct Subscriber {
    dispatch: tracing::Dispatch,
    control: LogControl,
}

impl Subscriber {
    /// The subscriber itself, e.g. for `tracing::dispatcher::with_default`.
    pub fn dispatch(&self) -> &tracing::Dispatch {
        &self.dispatch
    }

    /// Makes it the process's subscriber, and routes `log` records to it.
    fn install(&self) -> Result<(), tracing_subscriber::util::TryInitError> {
        use tracing_subscriber::util::SubscriberInitExt;
        self.dispatch.clone().try_init()
    }
}

/// The subscriber `init` installs, writing to `output` through the queue. `terminal`: the output
/// is watched by a person (colours, and tracing-subscriber's own formatting); otherwise plain
/// lines are made by [`PlainFormat`], the same text at a fraction of the cost.
pub fn subscriber<W: Write + Send + 'static>(
    format: LogFormat,
    configured: Option<&str>,
    output: W,
    terminal: bool,
) -> std::io::Result<(Subscriber, LogWriter, Option<String>)> {
    let (filter, warning) = choose_filter(configured);
    let (writer, log_writer) = queued_writer(output, LOG_BUFFER_BYTES, FLUSH_INTERVAL)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(terminal)
        .with_target(true);
    let subscriber = match format {
        LogFormat::Pretty if terminal => reloadable(builder),
        LogFormat::Pretty => reloadable(builder.event_format(PlainFormat::default())),
        LogFormat::Json => reloadable(builder.json().flatten_event(true)),
    };
    Ok((subscriber, log_writer, warning))
}

/// Finishes `builder` with a filter that [`LogControl`] can replace.
fn reloadable<N, E, W>(
    builder: tracing_subscriber::fmt::SubscriberBuilder<N, E, EnvFilter, W>,
) -> Subscriber
where
    N: for<'writer> tracing_subscriber::fmt::FormatFields<'writer> + Send + Sync + 'static,
    E: tracing_subscriber::fmt::FormatEvent<tracing_subscriber::Registry, N>
        + Send
        + Sync
        + 'static,
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    let builder = builder.with_filter_reloading();
    let handle = builder.reload_handle();
    Subscriber {
        dispatch: tracing::Dispatch::new(builder.finish()),
        control: LogControl {
            set_filter: Box::new(move |filter| Ok(handle.reload(filter)?)),
        },
    }
}

/// Logs every panic as an `error` event (its message and where it happened) through the
/// subscriber, so that a 500 (code 10500, "the cause is logged, never sent") has its cause in the
/// log, in the log's own format: the default hook's plain text on stderr would break a JSON log.
/// The caller only ever gets the envelope; the panic's payload never reaches a response.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|location| format!("{}:{}", location.file(), location.line()));
        tracing::error!(
            panic = message,
            location = location.as_deref().unwrap_or("unknown"),
            "a bug: a task panicked (its request, if any, was answered 500 with code 10500)"
        );
    }));
}

/// For tests that read what their own code logs.
#[cfg(test)]
pub(crate) mod captured {
    use std::sync::{Arc, Mutex, PoisonError};

    /// A writer for a test's own tracing subscriber: everything logged lands in one buffer.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        /// Everything written so far, as text.
        pub(crate) fn text(&self) -> String {
            let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    /// What `run` logs at any level, as a plain-text log without times.
    pub(crate) fn logged(run: impl FnOnce()) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        captured.text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README: a 500 (10500) is "a bug in the sidecar (the cause is logged, never sent)". With
    /// the hook, a panic is an `error` event holding its message and location. Fails without
    /// the hook (the default one writes to stderr, not through the subscriber).
    #[test]
    fn a_panic_is_logged_as_an_error_event_with_its_cause() {
        log_panics();
        let text = captured::logged(|| {
            let outcome = std::panic::catch_unwind(|| panic!("the cause of a 10500"));
            assert!(outcome.is_err());
        });
        let _default = std::panic::take_hook();
        assert!(text.contains("ERROR"), "{text}");
        assert!(text.contains("panic=\"the cause of a 10500\""), "{text}");
        assert!(text.contains("src/telemetry/mod.rs"), "{text}");
    }
}
