//! The plain-text log line, made cheaply: the default format when standard output is not a
//! terminal (a file, a pipe, a container runtime), where the sidecar writes one line per request.
//!
//! The layout is tracing-subscriber's `Full` format without colours, byte for byte (a test compares
//! the two), so operators and their parsers see no difference. What differs is the cost: that
//! format goes through `core::fmt` for every piece of every line (the time's seven numbers, the
//! level's padding, each field name and value), which made the access log cost about a third of a
//! hit's CPU. Here the time is formatted once a second per thread and only its microseconds per
//! line, numbers are written with `itoa`, plain strings are quoted without `Debug`'s escaping
//! machinery, and the rest is copied. Whatever this module does not handle itself (the message,
//! which tracing-subscriber sanitizes; errors and their sources; `r#` names; events inside spans,
//! from `log` records, or on a clock before 1970) goes to tracing-subscriber's own code, so the
//! output is the same in every case.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::VisitOutput;
use tracing_subscriber::fmt::format::{DefaultVisitor, Format, Full, Writer};
use tracing_subscriber::fmt::time::SystemTime as StockClock;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as `Format<Full, SystemTime>` with the target shown and no colours would.
pub struct PlainFormat {
    stock: Format<Full, StockClock>,
}

impl Default for PlainFormat {
    fn default() -> Self {
        PlainFormat {
            stock: Format::default().with_target(true).with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for PlainFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let since_epoch = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since_epoch)
                if !writer.has_ansi_escapes()
                    && writer.sanitizes_ansi_escapes()
                    && ctx.event_scope().is_none()
                    && metadata.fields().field("log.target").is_none() =>
            {
                since_epoch
            }
            _ => return self.stock.format_event(ctx, writer, event),
        };
        // The line is made in a buffer of this thread's (plain `String` pushes, which inline),
        // then handed over in one write: the writer behind `Writer` is reached through a vtable
        // per call, and a line is some forty pieces.
        LINE.with(|line| {
            let mut spare = String::new();
            let mut borrowed = line.try_borrow_mut();
            // A field's `Display` that logs would find the buffer in use: it gets its own.
            let line = match &mut borrowed {
                Ok(line) => &mut **line,
                Err(_) => &mut spare,
            };
            line.clear();
            write_time(line, since_epoch.as_secs(), since_epoch.subsec_micros());
            line.push(' ');
            line.push_str(level_text(metadata.level()));
            line.push_str(metadata.target());
            line.push_str(": ");
            let mut fields = PlainFields {
                line: &mut *line,
                is_empty: true,
                result: Ok(()),
            };
            event.record(&mut fields);
            fields.result?;
            line.push('\n');
            writer.write_str(line)
        })
    }
}

/// The level as `Full` writes it: five columns, then a space.
fn level_text(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE ",
        Level::DEBUG => "DEBUG ",
        Level::INFO => " INFO ",
        Level::WARN => " WARN ",
        Level::ERROR => "ERROR ",
    }
}

thread_local! {
    /// The line being made on this thread.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };

    /// The second last formatted on this thread, and its text up to and including the dot:
    /// `2026-11-30T17:21:17.` (RFC 3339, UTC, as tracing-subscriber writes it).
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-11-30T17:21:17.123456Z` from seconds and microseconds since the epoch.
fn write_time(line: &mut String, seconds: u64, micros: u32) {
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != seconds {
            let time = UNIX_EPOCH + std::time::Duration::from_secs(seconds);
            // `2026-11-30T17:21:17Z`: drop the `Z`, keep room for the fraction.
            let text = humantime::format_rfc3339_seconds(time).to_string();
            second.1.clear();
            second.1.push_str(text.trim_end_matches('Z'));
            second.1.push('.');
            second.0 = seconds;
        }
        line.push_str(&second.1);
    });
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for digit in digits.iter_mut().rev() {
        // `rest % 10` is below 10, so the cast is exact.
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    // Six ASCII digits: valid UTF-8.
    line.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
    line.push('Z');
}

/// Writes fields as tracing-subscriber's `DefaultVisitor` does, numbers and plain strings itself
/// and everything else through a `DefaultVisitor` on the same line.
struct PlainFields<'l> {
    line: &'l mut String,
    /// No field written yet (the first one is not preceded by a space).
    is_empty: bool,
    result: fmt::Result,
}

impl PlainFields<'_> {
    /// Whether this module writes the field itself: not the message (tracing-subscriber escapes
    /// its terminal control sequences), not a raw identifier (`r#type` is written `type`), not a
    /// `log` record's metadata (skipped), and only after every earlier field was written.
    fn takes(&self, field: &Field) -> bool {
        let name = field.name();
        self.result.is_ok()
            && name != "message"
            && !name.starts_with("r#")
            && !name.starts_with("log.")
    }

    /// `name=` after a space unless it is the first field.
    fn write_name(&mut self, field: &Field) {
        #[cfg(test)]
        tests::WRITTEN_HERE.with(|written| written.set(written.get() + 1));
        if self.is_empty {
            self.is_empty = false;
        } else {
            self.line.push(' ');
        }
        self.line.push_str(field.name());
        self.line.push('=');
    }

    fn write_number(&mut self, field: &Field, number: impl itoa::Integer) {
        self.write_name(field);
        self.line.push_str(itoa::Buffer::new().format(number));
    }

    /// The field as `DefaultVisitor` writes it (on a `Writer` that sanitizes and has no colours,
    /// as the one given to `format_event` was checked to be).
    fn stock(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(Writer::new(&mut *self.line), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        // `DefaultVisitor` writes every field but a `log.` one, which it skips.
        if !field.name().starts_with("log.") {
            self.is_empty = false;
        }
    }
}

/// A string that `Debug` writes as itself between quotes: printable ASCII, no quote or backslash.
fn is_plain(text: &str) -> bool {
    // Every byte is looked at (no early exit), which lets the compiler check many at once.
    let awkward = text.bytes().fold(false, |awkward, byte| {
        awkward | !(b' '..=b'~').contains(&byte) | (byte == b'"') | (byte == b'\\')
    });
    !awkward
}

impl Visit for PlainFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.takes(field) && is_plain(value) {
            self.write_name(field);
            self.line.push('"');
            self.line.push_str(value);
            self.line.push('"');
        } else {
            self.stock(field, |visitor| visitor.record_str(field, value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.takes(field) {
            self.write_number(field, value);
        } else {
            self.stock(field, |visitor| visitor.record_u64(field, value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.takes(field) {
            self.write_number(field, value);
        } else {
            self.stock(field, |visitor| visitor.record_i64(field, value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.takes(field) {
            self.write_name(field);
            self.line.push_str(if value { "true" } else { "false" });
        } else {
            self.stock(field, |visitor| visitor.record_bool(field, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.stock(field, |visitor| visitor.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.takes(field) {
            // `%value` arrives here: its `Debug` is its `Display`.
            self.write_name(field);
            self.result = write!(self.line, "{value:?}");
        } else {
            self.stock(field, |visitor| visitor.record_debug(field, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::telemetry::captured::Captured;
    use tracing_subscriber::fmt::format::DefaultFields;
    use tracing_subscriber::fmt::time::FormatTime;

    /// A clock stopped at one instant, for both formats: what differs then is only the format.
    #[derive(Clone, Copy)]
    struct Stopped(SystemTime);

    impl FormatTime for Stopped {
        fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
            let since = self.0.duration_since(UNIX_EPOCH).map_err(|_| fmt::Error)?;
            let mut text = String::new();
            write_time(&mut text, since.as_secs(), since.subsec_micros());
            writer.write_str(&text)
        }
    }

    fn lines(
        format: impl FormatEvent<tracing_subscriber::Registry, DefaultFields> + Send + Sync + 'static,
        events: impl Fn(),
    ) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .event_format(format)
            .finish();
        tracing::subscriber::with_default(subscriber, events);
        captured.text()
    }

    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the upstream call failed")
        }
    }
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("connection refused")
        }
    }
    impl std::error::Error for Inner {}
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Every kind of field the sidecar logs, and the awkward ones it might.
    fn events() {
        let error = Outer(Inner);
        tracing::info!(
            method = %http::Method::GET,
            route = "/client/v4/accounts/{account_id}/zt_risk_scoring/integrations/reference_id/{reference_id}",
            account_id = %"023e105f4ecef8ad9ca31a8372d0c353",
            status = 200_u16,
            cache = "hit",
            stale_reason = None::<&str>,
            upstream_status = Some(200_u16),
            cf_ray = "8a1b2c3d4e5f6a7b-SJC",
            latency_us = 187_u64,
            "request"
        );
        tracing::warn!(error = %"Cloudflare answered 429", retry_after_s = 30_i64, "cooling down");
        tracing::error!(
            panic = "a \"quoted\" \\ message\n\u{1b}[31m",
            location = "src/x.rs:1",
            "a bug"
        );
        tracing::debug!(
            negative = -7_i64,
            ok = true,
            bad = false,
            ratio = 0.25_f64,
            "numbers"
        );
        tracing::info!(
            error = &error as &(dyn std::error::Error + 'static),
            "an error with its source"
        );
        tracing::info!(r#type = "raw", "a raw identifier");
        tracing::info!(
            message_like = "message",
            "a message with \u{1b}[2J an escape"
        );
        tracing::trace!(list = ?["a", "b"], unicode = "café", empty = "", "debug values");
        tracing::info!("no fields");
        // `log.` fields are skipped, and a skipped first field leaves the next one first.
        tracing::info!(log.origin = 2_u64, after = 3_u64);
        tracing::warn!(target: "zt_risk_sidecar::other", spaced = "a b c", "another target");
        let span = tracing::info_span!("outer", id = 7);
        span.in_scope(|| tracing::info!(inside = 1_u64, "in a span"));
    }

    #[test]
    fn lines_are_byte_for_byte_those_of_the_stock_full_format_without_colours() {
        let at = UNIX_EPOCH + std::time::Duration::from_micros(1_796_059_277_012_345);
        let stock = lines(
            Format::default()
                .with_target(true)
                .with_ansi(false)
                .with_timer(Stopped(at)),
            events,
        );
        // Ours reads the real clock: replace each line's time by the stopped one.
        let ours = lines(PlainFormat::default(), events);
        let stopped = our_time(at) + " ";
        let ours: String = ours
            .lines()
            .map(|line| {
                let (_, rest) = line.split_at(28);
                format!("{stopped}{rest}\n")
            })
            .collect();
        assert_eq!(stopped, "2026-11-30T17:21:17.012345Z ");
        assert_eq!(ours.lines().count(), 12, "{ours}");
        assert_eq!(ours, stock);
    }

    fn our_time(at: SystemTime) -> String {
        let since = at.duration_since(UNIX_EPOCH).expect("after 1970");
        let mut text = String::new();
        write_time(&mut text, since.as_secs(), since.subsec_micros());
        text
    }

    #[test]
    fn the_time_is_rfc_3339_utc_to_the_microsecond_as_tracing_subscriber_writes_it() {
        // Leap day, the epoch, a microsecond either side of a second, the year 2100.
        for micros in [
            0_u64,
            1,
            999_999,
            951_782_400_000_001,
            1_796_059_277_012_345,
            4_102_444_799_999_999,
        ] {
            let at = UNIX_EPOCH + std::time::Duration::from_micros(micros);
            assert_eq!(
                our_time(at),
                humantime::format_rfc3339_micros(at).to_string()
            );
            // The same thread again: the second it cached must not leak into another second.
            let next = at + std::time::Duration::from_micros(1);
            assert_eq!(
                our_time(next),
                humantime::format_rfc3339_micros(next).to_string()
            );
        }
        // tracing-subscriber's own clock reads the real time: the same text, up to the
        // microseconds that passed between the two readings (retried across a second's edge).
        let agreed = (0..3).any(|_| {
            let mut stock = String::new();
            StockClock
                .format_time(&mut Writer::new(&mut stock))
                .expect("formats");
            let ours = our_time(SystemTime::now());
            stock.len() == ours.len() && stock[..20] == ours[..20]
        });
        assert!(agreed, "the stock clock and ours disagree on the second");
    }

    thread_local! {
        /// Fields this module wrote itself on this thread (the rest went to `DefaultVisitor`):
        /// both make the same bytes, so only this tells the cheap path is taken.
        pub(super) static WRITTEN_HERE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn written_here(ansi: bool, events: impl Fn()) -> usize {
        WRITTEN_HERE.with(|written| written.set(0));
        let subscriber = tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_ansi(ansi)
            .with_max_level(tracing::Level::TRACE)
            .event_format(PlainFormat::default())
            .finish();
        tracing::subscriber::with_default(subscriber, events);
        WRITTEN_HERE.with(std::cell::Cell::get)
    }

    #[test]
    fn the_request_event_is_made_here_and_what_tracing_subscriber_escapes_is_left_to_it() {
        let request = || {
            tracing::info!(
                method = %http::Method::GET,
                route = "/client/v4/accounts/{account_id}",
                status = 200_u16,
                cache = "hit",
                stale_reason = None::<&str>,
                latency_us = 187_u64,
                negative = -1_i64,
                ok = true,
                "request"
            );
        };
        // Every field but the message (and the absent one).
        assert_eq!(written_here(false, request), 7);
        // Colours: tracing-subscriber's own format, whole.
        assert_eq!(written_here(true, request), 0);
        // Inside a span: the same.
        assert_eq!(
            written_here(false, || tracing::info_span!("outer").in_scope(request)),
            0
        );
        // Strings `Debug` would escape go to `DefaultVisitor`; `r#type` from tracing's macros is
        // named `type` already, and written here.
        assert_eq!(
            written_here(false, || tracing::info!(
                a = "tab\t",
                b = "quote\"",
                r#type = 1_u64
            )),
            1
        );
    }

    #[test]
    fn numbers_and_plain_strings_are_written_here_and_the_rest_is_escaped_as_debug_escapes() {
        assert!(is_plain("GET /client/v4 {x}"));
        assert!(is_plain(""));
        assert!(!is_plain("a\"b"));
        assert!(!is_plain("a\\b"));
        assert!(!is_plain("tab\t"));
        assert!(!is_plain("café"));
        assert!(!is_plain("\u{7f}"));
        // Two awkward bytes are no better than one.
        assert!(!is_plain("\t\t"));
        assert!(!is_plain("a\"b\"c"));
        assert!(!is_plain("\\\\"));
        assert_eq!(level_text(&Level::INFO), " INFO ");
        assert_eq!(level_text(&Level::ERROR), "ERROR ");
    }
}
