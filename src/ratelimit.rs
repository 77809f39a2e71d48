//! Cloudflare's rate-limit headers (`Ratelimit` and `Ratelimit-Policy`, the IETF httpapi RateLimit
//! fields) read with a structured-field parser, and the pure pacing decision built on a reading.
//! It must not do I/O or keep state: the per-credential readings live in budget.rs, and a header it
//! cannot read is ignored, never an error.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use sfv::{BareItem, List, ListEntry, Parameters, Parser};
use tokio::time::Instant;

/// Cloudflare's published limit: 1,200 calls per user per window. Used as the quota when an
/// answer carries `Ratelimit` but no readable `Ratelimit-Policy`.
pub const DEFAULT_QUOTA: u64 = 1200;

/// Cloudflare's window: five minutes. Used as the reset when an item has no `t`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

/// The longest reset honoured from a header, so that a bogus `t` cannot silence a credential for
/// days: the same bound as a 429's `Retry-After`.
pub const MAX_RESET: Duration = crate::budget::MAX_COOL_DOWN;

/// Where one credential stands, as one upstream answer told it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaReading {
    /// Calls left in the current window (`r`).
    pub remaining: u64,
    /// Time until the window resets (`t`, relative, so no clock sync is needed).
    pub reset_after: Duration,
    /// The window's quota (`q` of the matching policy), when the answer named it.
    pub quota: Option<u64>,
}

/// One item of either header: its name and its two integer parameters, when both are readable.
struct LimitItem {
    name: String,
    first: u64,
    second: Option<u64>,
}

/// Parses a header as a structured-field list and keeps the items that name a limit (a string or a
/// token) and carry a non-negative integer `first` parameter; `second` is optional. Anything else,
/// including the whole header when it is not a valid list, is ignored.
fn limit_items(value: &[u8], first: &str, second: &str) -> Vec<LimitItem> {
    let Ok(list) = Parser::new(value).parse::<List>() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|entry| {
            let ListEntry::Item(item) = entry else {
                return None;
            };
            let name = match &item.bare_item {
                BareItem::String(name) => name.as_str().to_owned(),
                BareItem::Token(name) => name.as_str().to_owned(),
                _ => return None,
            };
            Some(LimitItem {
                name,
                first: whole_parameter(&item.params, first)?,
                second: whole_parameter(&item.params, second),
            })
        })
        .collect()
}

/// A parameter that is a non-negative integer; absent, negative or of another type is `None`.
fn whole_parameter(params: &Parameters, key: &str) -> Option<u64> {
    params
        .iter()
        .find(|(name, _)| name.as_str() == key)
        .and_then(|(_, value)| value.as_integer())
        .and_then(|integer| u64::try_from(i64::from(integer)).ok())
}

/// Pure: the reading of `Ratelimit` and `Ratelimit-Policy` header values. With several service
/// limits, the one with the fewest calls left decides, with the policy of the same name. `None`
/// when `Ratelimit` is absent or has no readable item.
pub fn read_quota(ratelimit: Option<&[u8]>, policy: Option<&[u8]>) -> Option<QuotaReading> {
    let strictest = limit_items(ratelimit?, "r", "t")
        .into_iter()
        .min_by_key(|item| item.first)?;
    let policy = policy
        .map(|value| limit_items(value, "q", "w"))
        .unwrap_or_default()
        .into_iter()
        .find(|item| item.name == strictest.name);
    let reset_after = strictest
        .second
        .or_else(|| policy.as_ref().and_then(|policy| policy.second))
        .map_or(DEFAULT_WINDOW, Duration::from_secs)
        .min(MAX_RESET);
    Some(QuotaReading {
        remaining: strictest.first,
        reset_after,
        quota: policy.map(|policy| policy.first),
    })
}

/// Pure: the reading of an upstream answer's headers (the first `Ratelimit` and
/// `Ratelimit-Policy` lines; Cloudflare sends one of each).
pub fn read_answer_quota(headers: &[(HeaderName, HeaderValue)]) -> Option<QuotaReading> {
    let find = |wanted: &str| {
        headers
            .iter()
            .find(|(name, _)| name.as_str() == wanted)
            .map(|(_, value)| value.as_bytes())
    };
    read_quota(find("ratelimit"), find("ratelimit-policy"))
}

/// A share of the window's quota, in thousandths, kept back from some work. A fraction rather than
/// a count, because the quota differs by plan (Enterprise raises it) and the sidecar learns it
/// from `Ratelimit-Policy`: "10%" keeps the user's other tools the same headroom on every plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Share {
    per_mille: u16,
}

impl Share {
    pub const ZERO: Share = Share { per_mille: 0 };
    pub const TEN_PERCENT: Share = Share { per_mille: 100 };
    pub const TWENTY_FIVE_PERCENT: Share = Share { per_mille: 250 };

    /// `None` above 100 %.
    pub const fn per_mille(per_mille: u16) -> Option<Share> {
        if per_mille > 1000 {
            return None;
        }
        Some(Share { per_mille })
    }

    /// The share in thousandths (what the fleet budget's Lua script computes the reserve from).
    pub const fn as_per_mille(self) -> u16 {
        self.per_mille
    }

    /// Pure: the number of calls this share of `quota` is, rounded up (a reserve of "10%" of 5
    /// calls keeps one back, not none).
    pub fn of(self, quota: u64) -> u64 {
        let scaled = u128::from(quota) * u128::from(self.per_mille);
        u64::try_from(scaled.div_ceil(1000)).unwrap_or(u64::MAX)
    }

    /// Parses `10%`, `12.5%` or a fraction such as `0.1`.
    pub fn parse(text: &str) -> Result<Share, String> {
        let text = text.trim();
        let (number, scale) = match text.strip_suffix('%') {
            Some(percent) => (percent.trim(), 10.0),
            None => (text, 1000.0),
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a share such as \"10%\" or \"0.1\""))?;
        let per_mille = (value * scale).round();
        if !(0.0..=1000.0).contains(&per_mille) {
            return Err(format!("{text:?} is not between 0% and 100%"));
        }
        // In range and rounded, so the conversion is exact.
        Share::per_mille(per_mille as u16).ok_or_else(|| format!("{text:?} is above 100%"))
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whole = self.per_mille / 10;
        match self.per_mille % 10 {
            0 => write!(f, "{whole}%"),
            tenth => write!(f, "{whole}.{tenth}%"),
        }
    }
}

/// Which kind of work wants an upstream call: a caller waiting for its answer, or a background
/// refresh (stale-while-revalidate) that nobody waits for. Refreshes stop earlier, so that they
/// never spend the calls a caller with a cold key needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    Caller,
    Refresh,
}

/// The reserves kept back from Cloudflare's count: callers stop at `caller`, refreshes at `refresh`
/// (never below `caller`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reserves {
    pub caller: Share,
    pub refresh: Share,
}

impl Reserves {
    /// The reserve that `work` leaves untouched.
    pub fn share_for(self, work: Work) -> Share {
        match work {
            Work::Caller => self.caller,
            Work::Refresh => self.refresh.max(self.caller),
        }
    }
}

/// A credential's latest reading, with its reset as an instant on Tokio's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaState {
    pub remaining: u64,
    pub quota: u64,
    pub resets_at: Instant,
}

impl QuotaState {
    /// A reading taken at `now`.
    pub fn from_reading(reading: QuotaReading, now: Instant) -> QuotaState {
        QuotaState {
            remaining: reading.remaining,
            quota: reading.quota.unwrap_or(DEFAULT_QUOTA),
            resets_at: now + reading.reset_after,
        }
    }

    /// Pure: the state after a new reading at `now`. Within the window, the lower count wins,
    /// because answers can arrive out of order and the sidecar may have spent calls since; once
    /// the window has reset, the new reading replaces the old.
    pub fn merge(self, reading: QuotaReading, now: Instant) -> QuotaState {
        let fresh = QuotaState::from_reading(reading, now);
        if now >= self.resets_at {
            return fresh;
        }
        QuotaState {
            remaining: self.remaining.min(fresh.remaining),
            ..fresh
        }
    }

    /// Whether the reading still describes the current window.
    pub fn is_current(&self, now: Instant) -> bool {
        now < self.resets_at
    }
}

/// Whether Cloudflare's count lets one more call go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    Go,
    /// At or below the reserve: no call until the window resets, `retry_after` from now.
    Hold {
        retry_after: Duration,
    },
}

/// Pure: whether `work` may call upstream now, given the credential's latest reading (none: no
/// answer told us anything yet, so only the configured budget applies).
pub fn pace(state: Option<&QuotaState>, reserves: Reserves, work: Work, now: Instant) -> Pace {
    let Some(state) = state.filter(|state| state.is_current(now)) else {
        return Pace::Go;
    };
    let reserve = reserves.share_for(work).of(state.quota);
    if state.remaining <= reserve {
        return Pace::Hold {
            retry_after: state.resets_at - now,
        };
    }
    Pace::Go
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reading(remaining: u64, reset_secs: u64, quota: Option<u64>) -> QuotaReading {
        QuotaReading {
            remaining,
            reset_after: Duration::from_secs(reset_secs),
            quota,
        }
    }

    #[test]
    fn reads_the_headers_cloudflare_sends() {
        let check = |ratelimit: Option<&str>, policy: Option<&str>, expected| {
            let got = read_quota(ratelimit.map(str::as_bytes), policy.map(str::as_bytes));
            assert_eq!(got, expected, "{ratelimit:?} / {policy:?}");
        };
        let policy = Some(r#""default";q=1200;w=300"#);
        check(
            Some(r#""default";r=50;t=30"#),
            policy,
            Some(reading(50, 30, Some(1200))),
        );
        // A token name, extra spaces, unknown parameters.
        check(
            Some(r#"default;r=7;t=2;x="y""#),
            Some("default;q=100;w=60;z=1"),
            Some(reading(7, 2, Some(100))),
        );
        // Several limits: the strictest decides, with its own policy.
        check(
            Some(r#""burst";r=90;t=10, "default";r=5;t=200"#),
            Some(r#""burst";q=100;w=60, "default";q=1200;w=300"#),
            Some(reading(5, 200, Some(1200))),
        );
        // No `t`: the policy's window, else Cloudflare's.
        check(
            Some(r#""default";r=9"#),
            policy,
            Some(reading(9, 300, Some(1200))),
        );
        check(Some(r#""default";r=9"#), None, Some(reading(9, 300, None)));
        // A policy under another name tells nothing about this limit.
        check(
            Some(r#""default";r=9;t=1"#),
            Some(r#""other";q=5;w=1"#),
            Some(reading(9, 1, None)),
        );
        // A bogus reset is bounded.
        check(
            Some(r#""default";r=0;t=999999"#),
            None,
            Some(reading(0, 3600, None)),
        );
        // Ignored: absent, malformed, negative, decimal, string-valued, inner lists, no `r`.
        check(None, policy, None);
        check(Some(""), policy, None);
        check(Some("default;r=50;t=30,"), policy, None);
        check(Some(r#""default";r=-1;t=30"#), policy, None);
        check(Some(r#""default";r=1.5;t=30"#), policy, None);
        check(Some(r#""default";r="5";t=30"#), policy, None);
        check(Some(r#"("default");r=5;t=30"#), policy, None);
        check(Some(r#""default";t=30"#), policy, None);
        check(Some(r#"5;r=5;t=30"#), policy, None);
        // A malformed `t` alone is dropped, not the item.
        check(
            Some(r#""default";r=5;t=-3"#),
            policy,
            Some(reading(5, 300, Some(1200))),
        );
        // A malformed policy is ignored, the reading kept.
        check(
            Some(r#""default";r=5;t=3"#),
            Some("q=="),
            Some(reading(5, 3, None)),
        );
    }

    #[test]
    fn shares_parse_print_and_round_up() {
        let check = |text: &str, expected: Option<u16>| {
            let got = Share::parse(text).ok().map(|share| share.per_mille);
            assert_eq!(got, expected, "{text:?}");
        };
        check("10%", Some(100));
        check(" 12.5 % ", Some(125));
        check("0.1", Some(100));
        check("0", Some(0));
        check("100%", Some(1000));
        check("101%", None);
        check("-1%", None);
        check("ten", None);
        check("NaN", None);
        check("inf", None);
        assert_eq!(Share::parse("10%").expect("share").to_string(), "10%");
        assert_eq!(Share::parse("12.5%").expect("share").to_string(), "12.5%");
        let ten = Share::parse("10%").expect("share");
        assert_eq!(ten.of(1200), 120);
        assert_eq!(ten.of(5), 1);
        assert_eq!(Share::ZERO.of(1200), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_decisions() {
        let now = Instant::now();
        let reserves = Reserves {
            caller: Share::parse("10%").expect("share"),
            refresh: Share::parse("25%").expect("share"),
        };
        let at = |remaining, quota| QuotaState {
            remaining,
            quota,
            resets_at: now + Duration::from_secs(60),
        };
        let hold = Pace::Hold {
            retry_after: Duration::from_secs(60),
        };
        let check = |state: Option<QuotaState>, work, expected| {
            assert_eq!(
                pace(state.as_ref(), reserves, work, now),
                expected,
                "{state:?} {work:?}"
            );
        };
        check(None, Work::Caller, Pace::Go);
        check(Some(at(121, 1200)), Work::Caller, Pace::Go);
        check(Some(at(120, 1200)), Work::Caller, hold);
        check(Some(at(0, 1200)), Work::Caller, hold);
        // Refreshes stop at their own, larger reserve.
        check(Some(at(301, 1200)), Work::Refresh, Pace::Go);
        check(Some(at(300, 1200)), Work::Refresh, hold);
        check(Some(at(200, 1200)), Work::Caller, Pace::Go);
        // The reserve follows the quota Cloudflare names.
        check(Some(at(120, 12000)), Work::Caller, hold);
        // A reading past its reset tells nothing any more.
        let expired = QuotaState {
            remaining: 0,
            quota: 1200,
            resets_at: now,
        };
        check(Some(expired), Work::Caller, Pace::Go);
        // A refresh reserve below the caller's is raised to it.
        let odd = Reserves {
            caller: reserves.refresh,
            refresh: reserves.caller,
        };
        assert_eq!(pace(Some(&at(250, 1200)), odd, Work::Refresh, now), hold);
    }

    #[tokio::test(start_paused = true)]
    async fn merging_keeps_the_lower_count_within_a_window() {
        let now = Instant::now();
        let state = QuotaState::from_reading(reading(100, 60, Some(1200)), now);
        let later = now + Duration::from_secs(1);
        let merged = state.merge(reading(150, 59, Some(1200)), later);
        assert_eq!(merged.remaining, 100);
        assert_eq!(merged.resets_at, later + Duration::from_secs(59));
        let after_reset = now + Duration::from_secs(61);
        let merged = state.merge(reading(1199, 300, None), after_reset);
        assert_eq!(merged.remaining, 1199);
        assert_eq!(merged.quota, DEFAULT_QUOTA);
    }

    proptest! {
        /// No header value makes the parser panic, and whatever it reads is within bounds.
        #[test]
        fn any_bytes_are_read_or_ignored(
            ratelimit in proptest::collection::vec(any::<u8>(), 0..64),
            policy in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Some(reading) = read_quota(Some(&ratelimit), Some(&policy)) {
                prop_assert!(reading.reset_after <= MAX_RESET);
            }
        }

        /// Well-formed items are read exactly, whatever surrounds them.
        #[test]
        fn well_formed_items_are_read_exactly(
            remaining in 0u64..1_000_000,
            reset in 0u64..100_000,
            quota in 1u64..1_000_000,
            window in 1u64..100_000,
            name in "[a-z][a-z0-9_]{0,8}",
            quoted in any::<bool>(),
            extra in "(;x=1|;y=\"z\"|;w)?",
        ) {
            let shown = if quoted { format!("\"{name}\"") } else { name.clone() };
            let ratelimit = format!("{shown};r={remaining};t={reset}{extra}");
            let policy = format!("{shown};q={quota};w={window}{extra}");
            let reading = read_quota(Some(ratelimit.as_bytes()), Some(policy.as_bytes()));
            prop_assert_eq!(reading, Some(QuotaReading {
                remaining,
                reset_after: Duration::from_secs(reset).min(MAX_RESET),
                quota: Some(quota),
            }));
        }

        /// A share of a quota never exceeds the quota and never falls short of the exact share.
        #[test]
        fn a_share_is_the_rounded_up_fraction(per_mille in 0u16..=1000, quota in 0u64..10_000_000) {
            let share = Share::per_mille(per_mille).expect("in range");
            let calls = share.of(quota);
            prop_assert!(calls <= quota);
            prop_assert!(u128::from(calls) * 1000 >= u128::from(quota) * u128::from(per_mille));
            prop_assert_eq!(Share::parse(&share.to_string()), Ok(share));
        }
    }
}
