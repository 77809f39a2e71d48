//! Fuzz target: Cloudflare's rate-limit headers as the sidecar reads them. Input:
//! `RATELIMIT\nRATELIMIT-POLICY` (raw header bytes, not necessarily valid). Checks that
//! `ratelimit::read_quota` never panics, that a reading's reset is bounded, that a reading exists
//! only when `Ratelimit` is a valid header value, and that the pacing decision built on any reading
//! holds callers no longer than the reading's reset and refreshes at least as long as callers.
#![no_main]

use std::time::Duration;

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use tokio::time::Instant;
use zt_risk_sidecar::ratelimit::{
    pace, read_quota, Pace, QuotaState, Reserves, Share, Work, MAX_RESET,
};

fuzz_target!(|data: &[u8]| {
    let (ratelimit, policy) = match data.iter().position(|&byte| byte == b'\n') {
        Some(newline) => (&data[..newline], &data[newline + 1..]),
        None => (data, &[][..]),
    };
    let Some(reading) = read_quota(Some(ratelimit), Some(policy)) else {
        return;
    };
    assert!(reading.reset_after <= MAX_RESET, "{reading:?}");
    // What the parser accepted, a header map would have accepted too.
    assert!(HeaderValue::from_bytes(ratelimit).is_ok(), "{ratelimit:?}");

    let now = Instant::now();
    let state = QuotaState::from_reading(reading, now);
    let reserves = Reserves {
        caller: Share::per_mille(100).expect("10%"),
        refresh: Share::per_mille(250).expect("25%"),
    };
    let caller = pace(Some(&state), reserves, Work::Caller, now);
    let refresh = pace(Some(&state), reserves, Work::Refresh, now);
    if let Pace::Hold { retry_after } = caller {
        assert!(retry_after <= reading.reset_after);
        assert_eq!(refresh, caller, "refreshes stop no later than callers");
    }
    // Once the window has reset, nothing is held.
    let after = now + reading.reset_after + Duration::from_nanos(1);
    assert_eq!(pace(Some(&state), reserves, Work::Refresh, after), Pace::Go);
});
