//! Assertions on a whole answer: the Cloudflare failure envelope and the Cache-Status header. Each
//! reports the caller's line and the full answer when it fails; none of them sends anything.

use http::StatusCode;

use super::client::Reply;

/// Asserts a failure answer as callers see it: the status, a JSON Content-Type, and Cloudflare's
/// envelope with `success: false`, `result: null` and `code` as the first error, with a message.
#[track_caller]
pub fn assert_error(reply: &Reply, status: StatusCode, code: i64) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{reply:?}"
    );
    let json = reply.json();
    assert_eq!(json["success"], false, "{json}");
    assert_eq!(json["result"], serde_json::Value::Null, "{json}");
    assert_eq!(json["errors"][0]["code"].as_i64(), Some(code), "{json}");
    assert!(json["errors"][0]["message"].is_string(), "{json}");
}

/// Asserts the whole Cache-Status header.
#[track_caller]
pub fn assert_cache_status(reply: &Reply, expected: &str) {
    assert_eq!(reply.cache_status(), expected, "{reply:?}");
}

/// Asserts a fresh hit (`zt-risk-sidecar; hit; ttl=N`) whose remaining TTL lies in `ttl`, for a
/// server on the real clock, where the exact second depends on how fast the machine is.
#[track_caller]
pub fn assert_fresh_hit_within(reply: &Reply, ttl: std::ops::RangeInclusive<i64>) {
    let remaining = reply.cache_ttl();
    assert_cache_status(reply, &format!("zt-risk-sidecar; hit; ttl={remaining}"));
    assert!(
        ttl.contains(&remaining),
        "remaining TTL {remaining} s is outside {ttl:?}"
    );
}

/// Asserts that the Cache-Status header contains `part` (an outcome such as `hit` or `stored`, or a
/// `detail=` parameter), for answers whose remaining-TTL parameter the test does not pin.
#[track_caller]
pub fn assert_cache_status_contains(reply: &Reply, part: &str) {
    assert!(
        reply.cache_status().contains(part),
        "Cache-Status {:?} lacks {part:?}",
        reply.cache_status()
    );
}
