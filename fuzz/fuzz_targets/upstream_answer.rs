//! Fuzz target: what the sidecar makes of an upstream answer. Input: `STATUS\nRETRY-AFTER\nBODY`
//! (a status that is not three valid digits counts as 200). Checks `cache::storability` and
//! `cache::is_refresh_failure` against the README's caching rules, `cache::answered_integration`
//! (the integration a body names, used for write-through purges), and the 429 cool-down read
//! from `Retry-After` (raw header bytes, not necessarily UTF-8).
#![no_main]

use std::time::Duration;

use http::{HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use zt_risk_sidecar::budget::{cool_down_for, retry_after_secs, DEFAULT_COOL_DOWN, MAX_COOL_DOWN};
use zt_risk_sidecar::cache::{answered_integration, storability, Storability, TtlPolicy};
use zt_risk_sidecar_fuzz::{check_integration_id, check_storability};

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&byte| byte == b'\n') {
        Some(newline) => (&data[..newline], &data[newline + 1..]),
        None => (data, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let (status_line, rest) = split_line(data);
    let (retry_after, body) = split_line(rest);
    let status = StatusCode::from_bytes(status_line).unwrap_or(StatusCode::OK);

    let decision = storability(status, body);
    check_storability(status, body, decision);
    let policy = TtlPolicy {
        positive: Duration::from_secs(60),
        negative: Duration::from_secs(10),
        stale_while_revalidate: Duration::from_secs(30),
        stale_if_error: Duration::from_secs(86_400),
    };
    match (decision, decision.fresh_for(&policy)) {
        (Storability::Positive, Some(ttl)) => assert_eq!(ttl, policy.positive),
        (Storability::Negative, Some(ttl)) => assert_eq!(ttl, policy.negative),
        (Storability::No(_), None) => {}
        other => panic!("fresh_for disagrees with the decision: {other:?}"),
    }

    // The integration a body names: only ever `result.id` as a UUID, printed canonically.
    if let Some(answered) = answered_integration(body) {
        let envelope: serde_json::Value = serde_json::from_slice(body).expect("it parsed once");
        let id = envelope["result"]["id"]
            .as_str()
            .expect("result.id is a string");
        let canonical = answered.id.to_string();
        check_integration_id(&canonical);
        assert!(
            canonical.eq_ignore_ascii_case(id),
            "{id:?} read as {canonical}"
        );
        assert_eq!(
            answered.reference_id.as_deref(),
            envelope["result"]["reference_id"].as_str()
        );
    }

    // Retry-After as the proxy reads it: a header value, as text if it is visible ASCII.
    let text = HeaderValue::from_bytes(retry_after)
        .ok()
        .and_then(|value| value.to_str().ok().map(str::to_owned));
    let wait = cool_down_for(text.as_deref());
    assert!(wait <= MAX_COOL_DOWN, "{wait:?}");
    match text.as_deref().map(|text| text.trim().parse::<u64>()) {
        Some(Ok(secs)) => assert_eq!(wait, Duration::from_secs(secs).min(MAX_COOL_DOWN)),
        _ => assert_eq!(wait, DEFAULT_COOL_DOWN),
    }
    let secs = retry_after_secs(wait);
    assert!(Duration::from_secs(secs) >= wait);
});
