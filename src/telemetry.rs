//! Logging setup: one `tracing` subscriber for the process, in a pretty or JSON format, with a
//! filter that a reload can replace, written to standard output by a dedicated thread through a
//! bounded queue. What is logged is decided at the call sites; this module only decides where and
//! how, and it must never let writing a line stall a worker that serves requests.

use std::io::{BufWriter, IsTerminal, Write};

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines waiting for the writer thread, at most. A line is formatted on the worker that logs it and
/// queued; when the queue is full the line is dropped and counted
/// (`zt_sidecar_log_lines_dropped_total`) rather than making the worker wait for the terminal, the
/// pipe or the container runtime. At a few hundred bytes a request line this holds about 10 MiB,
/// and the writer thread empties it far faster than two cores can serve hits.
pub const LOG_QUEUE_LINES: usize = 32_768;

/// The writer thread batches lines into writes of this size, so a busy sidecar makes one `write`
/// call per many lines instead of one per line (standard output alone flushes at every newline).
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// The writer thread's name, as `top -H` and a profiler show it.
const WRITER_THREAD: &str = "zt-log-writer";

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

/// The writer thread of the log. Dropping it queues a stop behind every line already queued and
/// waits (up to a second) for the thread to write and flush them, so `main` keeps it until after
/// the last line it logs.
pub struct LogWriter {
    queue: NonBlocking,
    dropped: ErrorCounter,
    _flush_on_drop: WorkerGuard,
}

impl LogWriter {
    /// Standard output in order with the log: text printed through it joins the same queue, so
    /// it appears after the lines logged before it (`--dev`'s instructions after "listening").
    pub fn plain_output(&self) -> PlainOutput {
        PlainOutput(self.queue.clone())
    }

    /// Lines dropped so far because the queue was full; cheap to clone and read at any time.
    pub fn dropped_lines(&self) -> DroppedLines {
        DroppedLines(self.dropped.clone())
    }
}

/// Standard output through the log's queue (see [`LogWriter::plain_output`]).
#[derive(Clone)]
pub struct PlainOutput(NonBlocking);

impl PlainOutput {
    /// Prints `text` and a newline, after every line already queued.
    pub fn println(&self, text: &str) {
        let mut line = String::with_capacity(text.len() + 1);
        line.push_str(text);
        line.push('\n');
        // One write is one queued message, so the text is never split by other lines. It is
        // dropped only when the queue is full, like a log line.
        let _ = self.0.clone().write_all(line.as_bytes());
    }
}

/// A reading of the count of log lines dropped because the writer's queue was full.
#[derive(Clone, Debug)]
pub struct DroppedLines(ErrorCounter);

impl DroppedLines {
    pub fn count(&self) -> u64 {
        u64::try_from(self.0.dropped_lines()).unwrap_or(u64::MAX)
    }
}

/// A queue of at most `lines` lines in front of `output`, emptied by a thread of its own. Lossy: a
/// line that finds the queue full is dropped and counted, never waited for.
fn queued_writer<W: Write + Send + 'static>(output: W, lines: usize) -> (NonBlocking, LogWriter) {
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(lines)
        .lossy(true)
        .thread_name(WRITER_THREAD)
        .finish(output);
    let dropped = writer.error_counter();
    let log_writer = LogWriter {
        queue: writer.clone(),
        dropped,
        _flush_on_drop: guard,
    };
    (writer, log_writer)
}

/// Installs the global subscriber, writing to standard output through the queue. Returns the
/// control for reloads, the writer to keep until the last line, and a warning to log when
/// `RUST_LOG` could not be parsed.
pub fn init(
    format: LogFormat,
    configured: Option<&str>,
) -> (LogControl, LogWriter, Option<String>) {
    let (filter, warning) = choose_filter(configured);
    let output = BufWriter::with_capacity(WRITE_BUFFER_BYTES, std::io::stdout());
    let (writer, log_writer) = queued_writer(output, LOG_QUEUE_LINES);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
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
    (LogControl { set_filter }, log_writer, warning)
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
        let bytes = captured
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::metrics::Metrics;

    /// An output that reports each write and then blocks until released, so the test knows the
    /// writer thread is busy and the queue is the only place left for new lines.
    struct StalledOutput {
        entered: mpsc::Sender<()>,
        release: Arc<Mutex<mpsc::Receiver<()>>>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for StalledOutput {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            if let Ok(release) = self.release.lock() {
                let _ = release.recv_timeout(Duration::from_secs(10));
            }
            if let Ok(mut written) = self.written.lock() {
                written.extend_from_slice(buf);
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_that_find_the_queue_full_are_dropped_counted_and_exported() {
        let (entered, writes_entered) = mpsc::channel();
        let (release, released) = mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let output = StalledOutput {
            entered,
            release: Arc::new(Mutex::new(released)),
            written: Arc::clone(&written),
        };
        let (mut writer, log_writer) = queued_writer(output, 1);
        let metrics = Metrics::new();
        let dropped = log_writer.dropped_lines();
        metrics.count_dropped_log_lines(move || dropped.count());

        writer.write_all(b"first\n").expect("queued");
        writes_entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer thread took the first line and is stalled on it");
        writer.write_all(b"second\n").expect("queued");
        // The queue holds one line; these two find it full and must not wait.
        writer.write_all(b"third\n").expect("dropped, not an error");
        writer
            .write_all(b"fourth\n")
            .expect("dropped, not an error");
        assert_eq!(log_writer.dropped_lines().count(), 2);
        assert!(
            metrics
                .encode(crate::metrics::Exposition::OpenMetrics)
                .contains("zt_sidecar_log_lines_dropped_total 2"),
            "{}",
            metrics.encode(crate::metrics::Exposition::OpenMetrics)
        );

        // Releasing the output and dropping the writer flushes what was queued, in order.
        for _ in 0..2 {
            let _ = release.send(());
        }
        drop(writer);
        drop(log_writer);
        let written = written.lock().expect("output").clone();
        assert_eq!(String::from_utf8_lossy(&written), "first\nsecond\n");
    }

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
        assert!(text.contains("src/telemetry.rs"), "{text}");
    }
}
