//! Fuzz target: reference id decoding and re-encoding. The input is used twice: as a raw (still
//! percent-encoded) path segment, which must decode to a valid id or be refused exactly as routing
//! refuses it; and as a decoded id, which, percent-encoded the way SDKs do it and with every byte
//! escaped, must decode back to itself exactly when it satisfies the id rules.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use zt_risk_sidecar::error::ApiError;
use zt_risk_sidecar::routes::{route, ReferenceId, Route};
use zt_risk_sidecar_fuzz::{
    check_lookup, check_reference_id, is_valid_reference_id, lookup_path, routed_reference, ACCOUNT,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    // As a raw segment.
    let decoded = ReferenceId::decode(&text);
    match &decoded {
        Ok(id) => check_reference_id(id),
        Err(error) => assert!(
            matches!(error, ApiError::InvalidReferenceId { .. }),
            "{error:?}"
        ),
    }
    if !text.is_empty() && !text.contains('/') {
        let routed = route(&Method::GET, &lookup_path(ACCOUNT, &text));
        if let Ok(Route::Lookup(lookup)) = &routed {
            check_lookup(lookup);
        }
        assert_eq!(
            routed_reference(&routed),
            decoded,
            "routing and decoding disagree on {text:?}"
        );
    }

    // As a decoded id, encoded by a client.
    let valid = is_valid_reference_id(&text);
    let sdk_encoded = utf8_percent_encode(&text, NON_ALPHANUMERIC).to_string();
    let all_bytes: String = text.bytes().map(|byte| format!("%{byte:02X}")).collect();
    let lower_hex: String = text.bytes().map(|byte| format!("%{byte:02x}")).collect();
    for encoded in [sdk_encoded, all_bytes, lower_hex] {
        let result = ReferenceId::decode(&encoded);
        assert_eq!(result.is_ok(), valid, "{text:?} as {encoded:?}: {result:?}");
        if let Ok(id) = result {
            assert_eq!(id.as_str(), text, "{encoded:?}");
            check_reference_id(&id);
            let routed = route(&Method::GET, &lookup_path(ACCOUNT, &encoded));
            assert_eq!(routed_reference(&routed), Ok(id), "{encoded:?}");
        }
    }
});
