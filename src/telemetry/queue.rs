//! The log's writer thread and the bounded buffer in front of it.
//!
//! A worker that logs a line appends it to one shared byte buffer (a mutex held for a copy of a few
//! hundred bytes) and goes on; a thread of its own swaps the buffer for an empty one, writes the
//! batch to the output and flushes, then sleeps for [`FLUSH_INTERVAL`] while the next batch
//! gathers. This is how Envoy's access log works (a buffer behind a lock, a flush thread, a flush
//! interval). It replaced `tracing-appender`'s non-blocking writer, measured in BENCHMARKS.md:
//! that writer copies every line into a new allocation that another thread frees (glibc's
//! allocator then contends on its arena lock), clones a channel sender per line, and its thread
//! was woken per line when not saturated. Here a line costs no allocation, the buffers are reused,
//! and the thread is woken at most once per interval, by the first line after an idle spell.
//!
//! Bounded: a line that would take the buffer past its capacity is dropped and counted
//! (`zt_sidecar_log_lines_dropped_total`), never waited for, so a stalled output (a full pipe, a
//! stuck container runtime) cannot stall a request. Memory: at most twice the capacity (the buffer
//! filling and the batch being written). Dropping the [`LogWriter`] writes and flushes every line
//! appended before it, waiting at most [`STOP_WAIT`].

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer thread lets lines gather between two writes while lines keep coming.
/// A line reaches the output at most this late (plus the write itself).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// How long dropping the [`LogWriter`] waits for the last batch to be written.
pub const STOP_WAIT: Duration = Duration::from_secs(1);

/// The writer thread's name, as `top -H` and a profiler show it.
const WRITER_THREAD: &str = "zt-log-writer";

/// What the workers and the writer thread share.
struct Shared {
    /// Lines not yet taken by the writer thread.
    pending: Mutex<Vec<u8>>,
    /// The most `pending` may hold, in bytes.
    capacity: usize,
    dropped: AtomicU64,
    stopping: AtomicBool,
    /// The writer thread, to wake when a line arrives in an empty buffer.
    writer: OnceLock<Thread>,
}

impl Shared {
    fn append(&self, line: &[u8]) {
        let was_empty = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let needed = pending.len() + line.len();
            if needed > self.capacity {
                drop(pending);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if needed > pending.capacity() {
                // Grow by doubling, but never past the capacity.
                let target = pending
                    .capacity()
                    .saturating_mul(2)
                    .clamp(needed, self.capacity);
                let additional = target - pending.len();
                pending.reserve_exact(additional);
            }
            let was_empty = pending.is_empty();
            pending.extend_from_slice(line);
            was_empty
        };
        // A line in an empty buffer may find the writer thread idle. (Before the thread has
        // registered, it has not yet looked at the buffer, and will.)
        if was_empty {
            if let Some(writer) = self.writer.get() {
                writer.unpark();
            }
        }
    }

    /// The writer thread: take what gathered, write it, flush, pause; idle until woken when
    /// nothing gathered; finish when stopping and nothing is left.
    fn run(&self, mut output: impl Write, interval: Duration) {
        let _ = self.writer.set(std::thread::current());
        let mut batch = Vec::new();
        loop {
            // Read before taking the lines: every line appended before `stopping` was set is in
            // this batch or an earlier one.
            let stopping = self.stopping.load(Ordering::Acquire);
            std::mem::swap(
                &mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner),
                &mut batch,
            );
            if batch.is_empty() {
                if stopping {
                    break;
                }
                std::thread::park();
                continue;
            }
            // A failed write (standard output closed) loses this batch; there is nowhere else to
            // say so.
            let _ = output.write_all(&batch).and_then(|()| output.flush());
            batch.clear();
            self.pause(interval);
        }
        let _ = output.flush();
    }

    /// Lets the next batch gather for `interval`, unless a stop comes first (it unparks). The
    /// first line after a swap also unparks: one early wake-up per interval, slept on.
    fn pause(&self, interval: Duration) {
        let until = Instant::now() + interval;
        while !self.stopping.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::park_timeout(until - now);
        }
    }
}

/// The tracing writer: each line the subscriber formats is appended to the buffer.
#[derive(Clone)]
pub struct LogQueue(Arc<Shared>);

impl<'a> MakeWriter<'a> for LogQueue {
    type Writer = Appender<'a>;

    fn make_writer(&'a self) -> Appender<'a> {
        Appender(&self.0)
    }
}

/// One line's writer; tracing-subscriber writes each formatted line with one `write_all`.
pub struct Appender<'a>(&'a Shared);

impl Write for Appender<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer thread. Dropping it writes and flushes every line appended before, waiting at
/// most [`STOP_WAIT`], so `main` keeps it until after the last line it logs.
pub struct LogWriter {
    shared: Arc<Shared>,
    /// Disconnected when the writer thread has finished.
    finished: mpsc::Receiver<()>,
}

impl LogWriter {
    /// Lines dropped so far because the buffer was full; cheap to clone and read at any time.
    pub fn dropped_lines(&self) -> DroppedLines {
        DroppedLines(Arc::clone(&self.shared))
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(writer) = self.shared.writer.get() {
            writer.unpark();
        }
        let _ = self.finished.recv_timeout(STOP_WAIT);
    }
}

/// A reading of the count of log lines dropped because the buffer was full.
#[derive(Clone)]
pub struct DroppedLines(Arc<Shared>);

impl DroppedLines {
    pub fn count(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for DroppedLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DroppedLines").field(&self.count()).finish()
    }
}

/// A buffer of at most `capacity` bytes in front of `output`, emptied by a thread of its own
/// every `interval` while lines keep coming. Lossy: a line that does not fit is dropped and
/// counted, never waited for.
pub fn queued_writer<W: Write + Send + 'static>(
    output: W,
    capacity: usize,
    interval: Duration,
) -> std::io::Result<(LogQueue, LogWriter)> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Vec::new()),
        capacity,
        dropped: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        writer: OnceLock::new(),
    });
    let (finished_sender, finished) = mpsc::channel::<()>();
    let thread_shared = Arc::clone(&shared);
    std::thread::Builder::new()
        .name(WRITER_THREAD.to_owned())
        .spawn(move || {
            thread_shared.run(output, interval);
            drop(finished_sender);
        })?;
    Ok((
        LogQueue(Arc::clone(&shared)),
        LogWriter { shared, finished },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::metrics::{Exposition, Metrics};
    use crate::telemetry::captured::Captured as Output;

    /// Waits (at most 10 s) until the writer thread's output holds `expected`.
    fn wait_for(output: &Output, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !output.text().contains(expected) {
            assert!(
                Instant::now() < deadline,
                "{expected:?} never reached the output: {:?}",
                output.text()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// An output that reports each write and then blocks until released, so the test knows the
    /// writer thread is busy and the buffer is the only place left for new lines.
    struct StalledOutput {
        entered: mpsc::Sender<()>,
        release: mpsc::Receiver<()>,
        written: Output,
    }

    impl Write for StalledOutput {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.release.recv_timeout(Duration::from_secs(10));
            self.written.write(bytes)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log(queue: &LogQueue, line: &str) {
        queue
            .make_writer()
            .write_all(line.as_bytes())
            .expect("appending never fails");
    }

    #[test]
    fn lines_that_do_not_fit_are_dropped_counted_and_exported_and_the_rest_kept_in_order() {
        const CAPACITY: usize = 12;
        let (entered, writes_entered) = mpsc::channel();
        let (release, released) = mpsc::channel();
        let written = Output::default();
        let output = StalledOutput {
            entered,
            release: released,
            written: written.clone(),
        };
        let (queue, log_writer) = queued_writer(output, CAPACITY, FLUSH_INTERVAL).expect("thread");
        let metrics = Metrics::new();
        let dropped = log_writer.dropped_lines();
        metrics.count_dropped_log_lines(move || dropped.count());

        log(&queue, "first\n");
        writes_entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer thread took the first line and is stalled writing it");
        // 3 + 4 + 5 bytes fill the buffer exactly; it grows as they come, never past its bound
        // (Vec's own doubling would take it to 16).
        for line in ["ab\n", "cde\n", "fghi\n"] {
            log(&queue, line);
            let pending = queue.0.pending.lock().expect("not poisoned");
            assert!(pending.capacity() <= CAPACITY, "{}", pending.capacity());
        }
        // No room left: these must not wait.
        log(&queue, "j\n");
        log(&queue, "k\n");
        assert_eq!(log_writer.dropped_lines().count(), 2);
        assert_eq!(
            format!("{:?}", log_writer.dropped_lines()),
            "DroppedLines(2)"
        );
        let exposition = metrics.encode(Exposition::OpenMetrics);
        assert!(
            exposition.contains("zt_sidecar_log_lines_dropped_total 2"),
            "{exposition}"
        );

        // Released, the writer writes what it kept; dropping it waits for the rest, in order.
        for _ in 0..2 {
            let _ = release.send(());
        }
        drop(log_writer);
        assert_eq!(written.text(), "first\nab\ncde\nfghi\n");
    }

    #[test]
    fn a_small_buffer_never_grows_past_its_bound_even_from_empty() {
        // Below 8 bytes, Vec's first growth alone (to 8) would pass the bound.
        let shared = Shared {
            pending: Mutex::new(Vec::new()),
            capacity: 6,
            dropped: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            writer: OnceLock::new(),
        };
        shared.append(b"ab\n");
        shared.append(b"cd\n");
        shared.append(b"e\n");
        let pending = shared.pending.lock().expect("not poisoned");
        assert_eq!(pending.as_slice(), b"ab\ncd\n");
        assert!(pending.capacity() <= 6, "{}", pending.capacity());
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn lines_gather_for_the_interval_and_a_stop_cuts_the_pause_short() {
        let output = Output::default();
        let interval = Duration::from_secs(30);
        let (queue, log_writer) = queued_writer(output.clone(), 1024, interval).expect("thread");
        log(&queue, "first\n");
        wait_for(&output, "first\n");
        // Written once, the writer pauses for the interval: the next line waits in the buffer
        // (it wakes the writer, which goes back to its pause).
        log(&queue, "second\n");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            output.text(),
            "first\n",
            "written before the interval was over"
        );
        // A stop does not wait out the pause.
        let started = Instant::now();
        drop(log_writer);
        assert!(
            started.elapsed() < STOP_WAIT,
            "the stop waited out its bound"
        );
        assert_eq!(output.text(), "first\nsecond\n");
    }

    #[test]
    fn a_line_after_an_idle_spell_wakes_the_writer_thread() {
        let output = Output::default();
        let (queue, _log_writer) =
            queued_writer(output.clone(), 1024, Duration::from_millis(1)).expect("thread");
        for round in 0..5 {
            let line = format!("line {round}\n");
            log(&queue, &line);
            // Nothing else is logged: only the wake-up of the idle thread brings it out.
            wait_for(&output, &line);
        }
    }

    #[test]
    fn dropping_the_writer_writes_every_line_from_every_thread_whole_and_in_order() {
        let output = Output::default();
        // A long interval: the lines must come out because of the stop, not the clock.
        let (queue, log_writer) =
            queued_writer(output.clone(), 1 << 20, Duration::from_secs(30)).expect("thread");
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    for line in 0..1_000 {
                        log(&queue, &format!("thread {thread} line {line:04} end\n"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("logging thread");
        }
        let started = Instant::now();
        drop(log_writer);
        assert!(
            started.elapsed() < STOP_WAIT,
            "the stop waited out its bound"
        );
        let text = output.text();
        assert_eq!(text.lines().count(), 4_000);
        for thread in 0..4 {
            let prefix = format!("thread {thread} ");
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
            let expected: Vec<String> = (0..1_000)
                .map(|line| format!("thread {thread} line {line:04} end"))
                .collect();
            assert_eq!(
                lines, expected,
                "thread {thread}'s lines, whole and in order"
            );
        }
    }
}
