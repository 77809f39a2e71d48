//! An answer as the fleet stores it in Redis (before encryption): wall-clock fetched-at,
//! fresh-until and stale-until (epoch milliseconds, so that `Age`, `ttl` and stale serving hold on
//! any host), the fetch's duration (XFetch's recompute time), status, the relayed headers, the integration it names, and the body; and the pure
//! conversions between that and a [`CacheEntry`] on Tokio's clock. Decoding never panics: bytes
//! that are not an entry are `None`. It must not do I/O.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use tokio::time::Instant;

use crate::cache::CacheEntry;
use crate::routes::IntegrationId;
use crate::upstream::UpstreamAnswer;

/// The layout's version, first byte of every encoded entry. Layout 2 adds the fetch's duration
/// after the times; layout 1 (without it) is still read, so that entries written before the
/// upgrade stay hits, and its fetch time is unknown (zero: no early refresh for it).
const LAYOUT: u8 = 2;
const LAYOUT_WITHOUT_FETCH_TIME: u8 = 1;

/// Milliseconds since the Unix epoch of `time` (0 before it).
pub fn epoch_ms(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// A stored answer's wall-clock timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallTimes {
    pub fetched_at_ms: u64,
    pub fresh_until_ms: u64,
    pub stale_until_ms: u64,
}

impl WallTimes {
    /// Pure: the wall-clock times of `entry`, given the same moment on both clocks.
    pub fn of(entry: &CacheEntry, now: Instant, now_ms: u64) -> WallTimes {
        let age = now.saturating_duration_since(entry.stored_at);
        let fetched_at_ms = now_ms.saturating_sub(millis(age));
        WallTimes {
            fetched_at_ms,
            fresh_until_ms: fetched_at_ms.saturating_add(millis(entry.fresh_for)),
            stale_until_ms: fetched_at_ms.saturating_add(millis(entry.retain_for)),
        }
    }

    /// How long Redis keeps the entry from `now_ms`: until stale-until, at least 1 ms.
    pub fn redis_ttl_ms(&self, now_ms: u64) -> u64 {
        self.stale_until_ms.saturating_sub(now_ms).max(1)
    }
}

/// A duration in whole milliseconds, saturating (the fleet's times and Redis's `PX` are in ms).
pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Pure: the entry's `stored_at` on Tokio's clock, and its freshness and retention, from its
/// wall-clock times, given the same moment on both clocks. An entry "fetched" in this host's
/// future (clock skew) counts as fetched now, so it is never older than it is.
pub fn timing_on_this_host(
    times: WallTimes,
    now: Instant,
    now_ms: u64,
) -> (Instant, Duration, Duration) {
    let age = Duration::from_millis(now_ms.saturating_sub(times.fetched_at_ms));
    let stored_at = now.checked_sub(age).unwrap_or(now);
    let fresh_for = Duration::from_millis(times.fresh_until_ms.saturating_sub(times.fetched_at_ms));
    let retain_for =
        Duration::from_millis(times.stale_until_ms.saturating_sub(times.fetched_at_ms));
    (stored_at, fresh_for, retain_for)
}

/// Pure: the bytes of `entry` with its wall-clock `times`.
pub fn encode(entry: &CacheEntry, times: WallTimes) -> Vec<u8> {
    let answer = &entry.answer;
    let mut out = Vec::with_capacity(64 + answer.body.len());
    out.push(LAYOUT);
    out.extend_from_slice(&times.fetched_at_ms.to_le_bytes());
    out.extend_from_slice(&times.fresh_until_ms.to_le_bytes());
    out.extend_from_slice(&times.stale_until_ms.to_le_bytes());
    let fetch_ms = u32::try_from(entry.fetch_time.as_millis()).unwrap_or(u32::MAX);
    out.extend_from_slice(&fetch_ms.to_le_bytes());
    out.extend_from_slice(&answer.status.as_u16().to_le_bytes());
    match entry.integration {
        Some(id) => {
            out.push(1);
            out.extend_from_slice(id.to_string().as_bytes());
        }
        None => out.push(0),
    }
    let count = u16::try_from(answer.headers.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for (name, value) in answer.headers.iter().take(usize::from(count)) {
        put_bytes(&mut out, name.as_str().as_bytes());
        put_bytes(&mut out, value.as_bytes());
    }
    put_bytes(&mut out, &answer.body);
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&bytes[..length as usize]);
}

/// Reads an encoded entry front to back; every read is checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.rest.len() < count {
            return None;
        }
        let (taken, rest) = self.rest.split_at(count);
        self.rest = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|bytes| bytes[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let length = usize::try_from(self.u32()?).ok()?;
        self.take(length)
    }
}

/// A decoded entry: the answer, the integration it names, and its wall-clock times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub answer: UpstreamAnswer,
    pub integration: Option<IntegrationId>,
    pub times: WallTimes,
    pub fetch_time: Duration,
}

/// Pure: the entry in `bytes`, or `None` for anything that is not one of this layout.
pub fn decode(bytes: &[u8]) -> Option<Decoded> {
    let mut reader = Reader { rest: bytes };
    let layout = reader.u8()?;
    if layout != LAYOUT && layout != LAYOUT_WITHOUT_FETCH_TIME {
        return None;
    }
    let times = WallTimes {
        fetched_at_ms: reader.u64()?,
        fresh_until_ms: reader.u64()?,
        stale_until_ms: reader.u64()?,
    };
    let fetch_time = match layout {
        LAYOUT => Duration::from_millis(u64::from(reader.u32()?)),
        _ => Duration::ZERO,
    };
    if times.fresh_until_ms < times.fetched_at_ms || times.stale_until_ms < times.fresh_until_ms {
        return None;
    }
    let status = StatusCode::from_u16(reader.u16()?).ok()?;
    let integration = match reader.u8()? {
        0 => None,
        1 => Some(IntegrationId::parse(
            std::str::from_utf8(reader.take(36)?).ok()?,
        )?),
        _ => return None,
    };
    let count = reader.u16()?;
    let mut headers = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        let name = HeaderName::from_bytes(reader.bytes()?).ok()?;
        let value = HeaderValue::from_bytes(reader.bytes()?).ok()?;
        headers.push((name, value));
    }
    let body = Bytes::copy_from_slice(reader.bytes()?);
    if !reader.rest.is_empty() {
        return None;
    }
    Some(Decoded {
        answer: UpstreamAnswer {
            status,
            headers,
            body,
        },
        integration,
        times,
        fetch_time,
    })
}

impl Decoded {
    /// Pure: the entry on this host's Tokio clock, given the same moment on both clocks.
    pub fn into_entry(self, now: Instant, now_ms: u64) -> CacheEntry {
        let (stored_at, fresh_for, retain_for) = timing_on_this_host(self.times, now, now_ms);
        CacheEntry {
            answer: Arc::new(self.answer),
            stored_at,
            fresh_for,
            retain_for,
            integration: self.integration,
            fetch_time: self.fetch_time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(now: Instant) -> CacheEntry {
        CacheEntry {
            answer: Arc::new(UpstreamAnswer {
                status: StatusCode::OK,
                headers: vec![(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body: Bytes::from_static(br#"{"success":true}"#),
            }),
            stored_at: now - Duration::from_secs(10),
            fresh_for: Duration::from_secs(60),
            retain_for: Duration::from_secs(90),
            integration: IntegrationId::parse("182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e"),
            fetch_time: Duration::from_millis(37),
        }
    }

    #[test]
    fn an_entry_round_trips_with_its_age_on_another_host() {
        let here = Instant::now();
        let original = entry(here);
        let now_ms = 1_700_000_000_000;
        let times = WallTimes::of(&original, here, now_ms);
        assert_eq!(times.fetched_at_ms, now_ms - 10_000);
        assert_eq!(times.fresh_until_ms, now_ms + 50_000);
        assert_eq!(times.stale_until_ms, now_ms + 80_000);
        assert_eq!(times.redis_ttl_ms(now_ms), 80_000);
        let bytes = encode(&original, times);
        let decoded = decode(&bytes).expect("decodes");
        assert_eq!(decoded.times, times);
        assert_eq!(decoded.integration, original.integration);
        assert_eq!(decoded.answer, *original.answer);
        assert_eq!(decoded.fetch_time, Duration::from_millis(37));
        // Another host, 3 s later by both its clocks: the entry is 13 s old there.
        let there = Instant::now() + Duration::from_secs(100);
        let copy = decoded.into_entry(there, now_ms + 3_000);
        assert_eq!(there - copy.stored_at, Duration::from_secs(13));
        assert_eq!(copy.fresh_for, Duration::from_secs(60));
        assert_eq!(copy.retain_for, Duration::from_secs(90));
        assert_eq!(copy.fetch_time, Duration::from_millis(37));
    }

    #[test]
    fn an_entry_of_the_layout_before_the_fetch_time_still_reads() {
        let now = Instant::now();
        let original = entry(now);
        let times = WallTimes::of(&original, now, 1_000_000);
        let mut bytes = encode(&original, times);
        // Layout 1 is layout 2 without the four bytes of the fetch time after the three times.
        bytes.drain(25..29);
        bytes[0] = LAYOUT_WITHOUT_FETCH_TIME;
        let decoded = decode(&bytes).expect("layout 1 decodes");
        assert_eq!(decoded.times, times);
        assert_eq!(decoded.answer, *original.answer);
        assert_eq!(decoded.fetch_time, Duration::ZERO, "unknown");
    }

    #[test]
    fn an_entry_from_the_future_is_fetched_now() {
        let now = Instant::now();
        let times = WallTimes {
            fetched_at_ms: 5_000,
            fresh_until_ms: 65_000,
            stale_until_ms: 95_000,
        };
        let (stored_at, fresh_for, _) = timing_on_this_host(times, now, 1_000);
        assert_eq!(stored_at, now);
        assert_eq!(fresh_for, Duration::from_secs(60));
    }

    #[test]
    fn garbage_is_no_entry() {
        let now = Instant::now();
        let bytes = encode(&entry(now), WallTimes::of(&entry(now), now, 1_000_000));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None);
        let mut other_layout = bytes;
        other_layout[0] = 9;
        assert_eq!(decode(&other_layout), None);
        assert_eq!(decode(b""), None);
    }
}
