//! Fuzz target: credential extraction over arbitrary header maps. Input: lines of `name: value`
//! (raw bytes, not necessarily UTF-8; lines that are not a valid header are skipped); a line
//! `@fallback TOKEN` configures the sidecar's own token. Checks `credentials::extract` for
//! determinism, independence from order and unrelated headers, the repeated-header rule, what is
//! forwarded, and that any credential change moves the partition. The same header map goes
//! through `proxy::check_request_head` (the 431 bounds).
#![no_main]

use http::header::{HeaderName, HeaderValue};
use http::Uri;
use libfuzzer_sys::fuzz_target;
use zt_risk_sidecar::credentials::{FallbackToken, Secret};
use zt_risk_sidecar::error::ApiError;
use zt_risk_sidecar::proxy::{check_request_head, RequestLimits};
use zt_risk_sidecar_fuzz::{check_credentials, header_map};

fuzz_target!(|data: &[u8]| {
    let mut pairs = Vec::new();
    let mut fallback = None;
    for line in data.split(|&byte| byte == b'\n') {
        if let Some(token) = line.strip_prefix(b"@fallback ") {
            let token = String::from_utf8_lossy(token).into_owned();
            match FallbackToken::new(&Secret::new(token)) {
                Ok(token) => fallback = Some(token),
                Err(error) => {
                    let message = error.to_string();
                    assert!(
                        message == "the API token is empty"
                            || message
                                == "the API token contains characters that cannot be sent in an HTTP header",
                        "unexpected message {message:?}"
                    )
                }
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&byte| byte == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            pairs.push((name, value));
        }
    }
    check_credentials(&pairs, None);

    // The request-head bounds, with limits small enough for fuzzed inputs to cross.
    let map = header_map(&pairs);
    let limits = RequestLimits {
        max_header_bytes: 256,
        max_request_headers: 8,
        ..RequestLimits::default()
    };
    let bytes: usize = pairs
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let expected = if pairs.len() > limits.max_request_headers || bytes > limits.max_header_bytes {
        Err(ApiError::HeadersTooLarge)
    } else {
        Ok(())
    };
    assert_eq!(
        check_request_head(&Uri::from_static("/"), &map, &limits),
        expected
    );
    if fallback.is_some() {
        check_credentials(&pairs, fallback.as_ref());
    }
});
