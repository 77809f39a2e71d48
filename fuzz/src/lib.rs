//! The model of the fuzz targets, shared with `cargo test`: the invariants about routing, identifier
//! decoding, upstream answers, credentials, purge scopes and configuration, written once, and one
//! `check_*_input(bytes)` per target holding that target's whole body. The fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) are one call each into this file, and the root crate's property tests
//! (`tests/sidecar/properties.rs`) compile this same file as a module (`#[path]`) and feed it
//! proptest inputs, so the fuzzer and `cargo test` check the same rules. It holds no fuzz target
//! and no libFuzzer code, and must only use crates that are also the root crate's dev-dependencies.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use tokio::time::Instant;
use zt_risk_sidecar::admin::purge_scope;
use zt_risk_sidecar::budget::{
    cool_down_for, retry_after_secs, LocalBudget, DEFAULT_COOL_DOWN, MAX_COOL_DOWN,
};
use zt_risk_sidecar::cache::{
    answered_integration, is_refresh_failure, storability, CacheEntry, CacheKey, PurgeScope,
    Storability, TtlPolicy,
};
use zt_risk_sidecar::config::{parse_bytes, parse_duration, parse_file, plan_reload, resolve, Cli};
use zt_risk_sidecar::credentials::{
    self, FallbackToken, Partition, PartitionKey, Secret, CREDENTIAL_HEADERS,
};
use zt_risk_sidecar::error::{envelope_bytes, ApiError};
use zt_risk_sidecar::proxy::{check_request_head, RequestLimits};
use zt_risk_sidecar::ratelimit::Work;
use zt_risk_sidecar::resilience::{on_result, BreakerState, Health, Pass};
use zt_risk_sidecar::routes::{
    self, AccountId, Lookup, ReferenceId, Route, Subject, API_PREFIX, MAX_REFERENCE_ID_BYTES,
};
use zt_risk_sidecar::upstream::{ProxyUrl, UpstreamAnswer, UpstreamBase};

/// A valid account id, for building lookup paths around a fuzzed reference id.
pub const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";

/// The lookup path for `raw_reference` (still percent-encoded) under [`ACCOUNT`].
pub fn lookup_path(account: &str, raw_reference: &str) -> String {
    format!(
        "{API_PREFIX}/accounts/{account}/zt_risk_scoring/integrations/reference_id/{raw_reference}"
    )
}

/// The rules a decoded reference id must satisfy (README: "Reference ids"), written
/// independently of `routes.rs` so that the two can be compared.
pub fn is_valid_reference_id(decoded: &str) -> bool {
    !decoded.is_empty()
        && decoded.len() <= MAX_REFERENCE_ID_BYTES
        && !decoded.chars().any(char::is_control)
        && decoded != "."
        && decoded != ".."
}

/// RFC 3986 `pchar` without `%`: what may stay literal in a forwarded segment.
fn is_literal_pchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte)
}

/// A forwarded segment is non-empty ASCII; every byte is a literal `pchar` or starts a `%XX`
/// escape with two hex digits; so it never holds `/`, `?`, `#`, a stray `%`, a space, a control
/// character or a raw non-ASCII byte, and is never a dot segment.
pub fn assert_forwardable_segment(segment: &str) {
    let bytes = segment.as_bytes();
    assert!(!bytes.is_empty(), "empty forwarded segment");
    assert!(
        segment != "." && segment != "..",
        "dot segment forwarded: {segment:?}"
    );
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%' {
            let hex = |offset: usize| bytes.get(index + offset).is_some_and(u8::is_ascii_hexdigit);
            assert!(
                hex(1) && hex(2),
                "'%' without two hex digits at {index} in {segment:?}"
            );
            index += 3;
        } else {
            assert!(
                is_literal_pchar(byte),
                "byte {byte:#04x} left literal at {index} in {segment:?}"
            );
            index += 1;
        }
    }
}

/// Checks one decoded reference id: its rules, the forwarded segment's shape, and the round trip
/// (decoding the forwarded segment gives back the same id, and re-encoding is stable).
pub fn check_reference_id(id: &ReferenceId) {
    assert!(
        is_valid_reference_id(id.as_str()),
        "accepted an invalid reference id: {:?}",
        id.as_str()
    );
    let segment = id.to_path_segment();
    assert_forwardable_segment(&segment);
    let again = ReferenceId::decode(&segment)
        .unwrap_or_else(|error| panic!("forwarded segment {segment:?} does not decode: {error:?}"));
    assert_eq!(
        &again, id,
        "round trip changed the id (segment {segment:?})"
    );
    assert_eq!(
        again.to_path_segment(),
        segment,
        "re-encoding is not stable"
    );
}

/// The lookup a route names by reference id, if it is one.
pub fn routed_reference(routed: &Result<Route, ApiError>) -> Result<ReferenceId, ApiError> {
    match routed {
        Ok(Route::Lookup(Lookup {
            subject: Subject::Reference(reference_id),
            ..
        })) => Ok(reference_id.clone()),
        Ok(other) => panic!("a reference id path routed to {other:?}"),
        Err(error) => Err(error.clone()),
    }
}

/// Checks an upstream path: it starts with `/accounts/`, has `segments` segments, the first five
/// of Cloudflare's family, and builds a valid URI (no query, no fragment) the way `upstream.rs`
/// does, which treats a failure there as a bug.
fn check_upstream_path(path: &str, account_id: AccountId, segments: usize) -> Vec<String> {
    assert!(path.starts_with("/accounts/"), "{path:?}");
    let pieces: Vec<String> = path.split('/').skip(1).map(str::to_owned).collect();
    assert_eq!(pieces.len(), segments, "not {segments} segments: {path:?}");
    let account = account_id.to_string();
    assert_eq!(account.len(), 32);
    assert!(account
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(
        pieces[..4],
        [
            "accounts".to_owned(),
            account,
            "zt_risk_scoring".to_owned(),
            "integrations".to_owned()
        ]
    );
    let uri = Uri::builder()
        .scheme("https")
        .authority("api.cloudflare.com")
        .path_and_query(format!("/client/v4{path}"))
        .build()
        .unwrap_or_else(|error| panic!("upstream URI for {path:?} does not build: {error}"));
    assert_eq!(uri.path(), format!("/client/v4{path}"));
    assert_eq!(
        uri.query(),
        None,
        "the forwarded path grew a query: {path:?}"
    );
    pieces
}

/// Checks a routed lookup. By reference id: the upstream path has exactly the six segments of
/// Cloudflare's route and ends in the forwardable, round-tripping reference segment. By
/// integration id: five segments ending in the canonical (lowercase, hyphenated) UUID.
pub fn check_lookup(lookup: &Lookup) {
    let path = lookup.upstream_path();
    match &lookup.subject {
        Subject::Reference(reference_id) => {
            check_reference_id(reference_id);
            let pieces = check_upstream_path(&path, lookup.account_id, 6);
            assert_eq!(pieces[4], "reference_id");
            assert_eq!(pieces[5], reference_id.to_path_segment());
        }
        Subject::Integration(integration_id) => {
            let pieces = check_upstream_path(&path, lookup.account_id, 5);
            check_integration_id(&pieces[4]);
            assert_eq!(pieces[4], integration_id.to_string());
        }
    }
}

/// A canonical integration id: 36 characters, lowercase hex in 8-4-4-4-12 groups, that parses
/// back to itself.
pub fn check_integration_id(text: &str) {
    assert_eq!(text.len(), 36, "{text:?}");
    for (index, byte) in text.bytes().enumerate() {
        if matches!(index, 8 | 13 | 18 | 23) {
            assert_eq!(byte, b'-', "{text:?}");
        } else {
            assert!(
                byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte),
                "{text:?}"
            );
        }
    }
    let parsed = routes::IntegrationId::parse(text).expect("a canonical id parses");
    assert_eq!(parsed.to_string(), text);
}

/// Every local error renders a Cloudflare failure envelope with its own code and a 4xx/5xx status.
pub fn check_api_error(error: &ApiError) {
    let response = error.to_response();
    assert_eq!(response.status(), error.status());
    assert!(error.status().is_client_error() || error.status().is_server_error());
    let body = envelope_bytes(error.code(), &error.message());
    let envelope: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("envelope is not JSON: {e}"));
    assert_eq!(envelope["success"], serde_json::Value::Bool(false));
    assert_eq!(envelope["errors"][0]["code"], error.code());
    assert_eq!(envelope["result"], serde_json::Value::Null);
}

/// The shape of a path as the README describes the integrations family, written independently of
/// `routes.rs`: the collection, one integration, or a lookup by reference id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Collection,
    Item,
    ByReference,
}

fn shape_of(path: &str) -> Option<(Shape, &str, &str)> {
    let below = path.strip_prefix(API_PREFIX).unwrap_or(path);
    let pieces: Vec<&str> = below.split('/').collect();
    match pieces.as_slice() {
        ["", "accounts", account, "zt_risk_scoring", "integrations"] if !account.is_empty() => {
            Some((Shape::Collection, account, ""))
        }
        ["", "accounts", account, "zt_risk_scoring", "integrations", item]
            if !account.is_empty() && !item.is_empty() =>
        {
            Some((Shape::Item, account, item))
        }
        ["", "accounts", account, "zt_risk_scoring", "integrations", "reference_id", reference]
            if !account.is_empty() && !reference.is_empty() =>
        {
            Some((Shape::ByReference, account, reference))
        }
        _ => None,
    }
}

fn allowed_methods(shape: Shape) -> &'static [Method] {
    match shape {
        Shape::Collection => &[Method::GET, Method::HEAD, Method::POST],
        Shape::Item => &[Method::GET, Method::HEAD, Method::PUT, Method::DELETE],
        Shape::ByReference => &[Method::GET, Method::HEAD],
    }
}

/// Routes `path` with `method` and checks the answer against the path's shape: no shape is a 404
/// for every method; a method the shape does not take is a 405 whose `Allow` lists the ones it
/// does; an invalid account is a 400; otherwise the route names what the path said, and its
/// upstream path is well-formed. GET and HEAD always agree.
pub fn check_route(method: &Method, path: &str) {
    let result = routes::route(method, path);
    let Some((shape, raw_account, raw_last)) = shape_of(path) else {
        assert_eq!(result, Err(ApiError::NoRoute), "{method} {path:?}");
        return;
    };
    let allowed = allowed_methods(shape);
    if !allowed.contains(method) {
        match &result {
            Err(ApiError::MethodNotAllowed { allow }) => {
                let listed: Vec<&str> = allow.split(", ").collect();
                let expected: Vec<&str> = allowed.iter().map(Method::as_str).collect();
                assert_eq!(listed, expected, "{method} {path:?}");
            }
            other => panic!("{method} {path:?}: expected 405, got {other:?}"),
        }
        return;
    }
    assert_eq!(
        routes::route(&Method::HEAD, path),
        routes::route(&Method::GET, path),
        "HEAD and GET differ on {path:?}"
    );
    let Some(account_id) = AccountId::parse(raw_account) else {
        assert!(
            matches!(result, Err(ApiError::InvalidAccountId { .. })),
            "{method} {path:?}: {result:?}"
        );
        check_api_error(&result.expect_err("checked"));
        return;
    };
    let route = match result {
        Ok(route) => route,
        Err(error) => {
            // Only the last segment (reference or integration id) can still be refused.
            match shape {
                Shape::ByReference => assert_eq!(Err(error.clone()), ReferenceId::decode(raw_last)),
                Shape::Item => {
                    assert!(routes::IntegrationId::parse(raw_last).is_none());
                    assert!(
                        matches!(error, ApiError::InvalidAccountId { .. }),
                        "{error:?}"
                    );
                }
                Shape::Collection => panic!("{method} {path:?}: {error:?}"),
            }
            check_api_error(&error);
            return;
        }
    };
    assert_eq!(route.account_id(), account_id);
    let upstream = route.upstream_path();
    match (&route, shape) {
        (Route::Lookup(lookup), Shape::ByReference | Shape::Item) => {
            assert!(*method == Method::GET || *method == Method::HEAD);
            check_lookup(lookup);
            match &lookup.subject {
                Subject::Reference(reference_id) => {
                    assert_eq!(shape, Shape::ByReference);
                    assert_eq!(ReferenceId::decode(raw_last).as_ref(), Ok(reference_id));
                }
                Subject::Integration(integration_id) => {
                    assert_eq!(shape, Shape::Item);
                    assert_eq!(
                        routes::IntegrationId::parse(raw_last),
                        Some(*integration_id)
                    );
                }
            }
        }
        (Route::List { .. }, Shape::Collection) | (Route::Create { .. }, Shape::Collection) => {
            let expected = if matches!(route, Route::List { .. }) {
                *method == Method::GET || *method == Method::HEAD
            } else {
                *method == Method::POST
            };
            assert!(expected, "{method} routed to {route:?}");
            check_upstream_path(&upstream, account_id, 4);
        }
        (Route::Update { integration_id, .. }, Shape::Item)
        | (Route::Delete { integration_id, .. }, Shape::Item) => {
            let expected = if matches!(route, Route::Update { .. }) {
                Method::PUT
            } else {
                Method::DELETE
            };
            assert_eq!(*method, expected, "{method} routed to {route:?}");
            let pieces = check_upstream_path(&upstream, account_id, 5);
            assert_eq!(pieces[4], integration_id.to_string());
        }
        (route, shape) => panic!("{method} {path:?}: {shape:?} routed to {route:?}"),
    }
}

/// What `storability` may answer, stated from the README's rules: only 200 and 404, only a JSON
/// object with `errors` and `messages` arrays; Positive only for `success: true` with an object
/// `result`; Negative only for a 200 `success: true` or a 404 `success: false` with a null or
/// absent `result`. Also checks `is_refresh_failure` against the same answer.
pub fn check_storability(status: StatusCode, body: &[u8], decision: Storability) {
    let envelope = serde_json::from_slice::<serde_json::Value>(body).ok();
    let object = envelope.as_ref().and_then(serde_json::Value::as_object);
    let lists_present = object.is_some_and(|object| {
        object
            .get("errors")
            .is_some_and(serde_json::Value::is_array)
            && object
                .get("messages")
                .is_some_and(serde_json::Value::is_array)
    });
    let success = object.and_then(|object| object.get("success")?.as_bool());
    let result = object.and_then(|object| object.get("result"));
    let result_is_null = matches!(result, None | Some(serde_json::Value::Null));
    match decision {
        Storability::Positive => {
            assert_eq!(status, StatusCode::OK);
            assert!(lists_present, "Positive without an envelope");
            assert_eq!(success, Some(true));
            assert!(matches!(result, Some(serde_json::Value::Object(_))));
        }
        Storability::Negative => {
            assert!(lists_present, "Negative without an envelope");
            assert!(result_is_null);
            match status {
                StatusCode::OK => assert_eq!(success, Some(true)),
                StatusCode::NOT_FOUND => assert_eq!(success, Some(false)),
                other => panic!("Negative for status {other}"),
            }
        }
        Storability::No(reason) => {
            assert!(!reason.is_empty());
            // Every envelope the rules accept must have been accepted.
            let positive = status == StatusCode::OK
                && lists_present
                && success == Some(true)
                && matches!(result, Some(serde_json::Value::Object(_)));
            let negative = lists_present
                && result_is_null
                && ((status == StatusCode::OK && success == Some(true))
                    || (status == StatusCode::NOT_FOUND && success == Some(false)));
            assert!(
                !positive && !negative,
                "a storable answer was refused ({reason})"
            );
        }
    }
    let failure = is_refresh_failure(status, decision);
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        assert!(failure, "{status} is not a refresh failure");
    } else if matches!(decision, Storability::Positive | Storability::Negative) {
        assert!(!failure, "a storable answer is a refresh failure");
    } else if status == StatusCode::OK || status == StatusCode::NOT_FOUND {
        assert!(failure, "an unusable {status} is not a refresh failure");
    } else {
        // 401, 403, 400, 3xx...: relayed, never papered over with stale data.
        assert!(!failure, "{status} counted as a refresh failure");
    }
}

/// The per-process partition key all targets share, so partitions compare within one run.
pub fn partition_key() -> &'static PartitionKey {
    static KEY: OnceLock<PartitionKey> = OnceLock::new();
    KEY.get_or_init(PartitionKey::random)
}

/// A partition, or the error, as a comparable value.
pub fn partition_of(
    headers: &HeaderMap,
    fallback: Option<&credentials::FallbackToken>,
) -> Result<Partition, ApiError> {
    credentials::extract(headers, fallback, partition_key()).map(|c| c.partition())
}

/// Builds a header map from `(name, value)` pairs in order (append, so repeats are kept).
pub fn header_map<'a>(pairs: impl IntoIterator<Item = &'a (HeaderName, HeaderValue)>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(name.clone(), value.clone());
    }
    map
}

/// Checks `credentials::extract` on `pairs` against the rules in `credentials.rs` and the README:
/// the result does not depend on header order or on unrelated headers; a repeated credential
/// header is a 400 naming the first such header in the fixed order; the forwarded headers are the
/// credential headers present, in the fixed order, values untouched and marked sensitive; and a
/// change to any credential value changes the partition.
pub fn check_credentials(
    pairs: &[(HeaderName, HeaderValue)],
    fallback: Option<&credentials::FallbackToken>,
) {
    let key = partition_key();
    let map = header_map(pairs);
    let result = credentials::extract(&map, fallback, key);
    let partition = result.as_ref().map(|c| c.partition()).map_err(Clone::clone);

    // Deterministic, order-independent, blind to unrelated headers.
    assert_eq!(partition_of(&map, fallback), partition, "not deterministic");
    let reversed = header_map(pairs.iter().rev());
    assert_eq!(
        partition_of(&reversed, fallback),
        partition,
        "order matters"
    );
    let credential_only: Vec<_> = pairs
        .iter()
        .filter(|(name, _)| CREDENTIAL_HEADERS.iter().any(|(lower, _)| name == lower))
        .cloned()
        .collect();
    assert_eq!(
        partition_of(&header_map(&credential_only), fallback),
        partition,
        "unrelated headers matter"
    );

    let present: Vec<(&str, &str, Vec<&HeaderValue>)> = CREDENTIAL_HEADERS
        .iter()
        .map(|(lower, display)| {
            let values = credential_only
                .iter()
                .filter(|(name, _)| name == lower)
                .map(|(_, value)| value)
                .collect();
            (*lower, *display, values)
        })
        .collect();
    if let Some((_, display, _)) = present.iter().find(|(_, _, values)| values.len() > 1) {
        assert_eq!(
            partition,
            Err(ApiError::InvalidCredentialHeaders { header: display })
        );
        return;
    }
    let expected: Vec<(&str, &HeaderValue)> = present
        .iter()
        .filter_map(|(lower, _, values)| values.first().map(|value| (*lower, *value)))
        .collect();
    if expected.is_empty() && fallback.is_none() {
        assert_eq!(partition, Err(ApiError::MissingCredentials));
        return;
    }
    let credentials = result.unwrap_or_else(|error| panic!("extract failed: {error:?}"));
    let forwarded = credentials.headers();
    if expected.is_empty() {
        assert_eq!(forwarded.len(), 1);
        assert_eq!(forwarded[0].0, http::header::AUTHORIZATION);
        assert!(forwarded[0].1.is_sensitive());
        return;
    }
    assert_eq!(forwarded.len(), expected.len());
    for ((name, value), (lower, original)) in forwarded.iter().zip(&expected) {
        assert_eq!(name, lower);
        assert_eq!(value.as_bytes(), original.as_bytes());
        assert!(value.is_sensitive(), "{name} not marked sensitive");
    }
    let debug = format!("{credentials:?} {forwarded:?}");
    for (_, value) in forwarded {
        let bytes = value.as_bytes();
        // Short values can occur in the header names themselves; long ones must never show.
        if bytes.len() >= 24 {
            if let Ok(text) = std::str::from_utf8(bytes) {
                assert!(!debug.contains(text), "a credential shows in Debug output");
            }
        }
    }

    // Changing any one credential value moves the request to another partition.
    for index in 0..credential_only.len() {
        let mut changed = credential_only.clone();
        let mut bytes = changed[index].1.as_bytes().to_vec();
        bytes.push(b'x');
        changed[index].1 = HeaderValue::from_bytes(&bytes).expect("appending 'x' stays valid");
        assert_ne!(
            partition_of(&header_map(&changed), fallback),
            partition,
            "a changed {} kept the partition",
            changed[index].0
        );
    }
}

// One function per fuzz target: the target's whole body, taking the raw input bytes. The targets
// call these; so do the property tests, with inputs proptest builds.

/// The `route` target: `METHOD\nPATH` (no newline: the whole input is a GET path). Checks the
/// route shape, the account and reference id decoding, the forwarded upstream path,
/// GET/HEAD/other-method agreement, and the error envelopes.
pub fn check_route_input(data: &[u8]) {
    let (method, path) = match data.iter().position(|&byte| byte == b'\n') {
        Some(newline) => (
            Method::from_bytes(&data[..newline]).unwrap_or(Method::GET),
            &data[newline + 1..],
        ),
        None => (Method::GET, data),
    };
    // hyper hands routing a `&str`; lossy conversion keeps non-UTF-8 inputs useful.
    let path = String::from_utf8_lossy(path);
    check_route(&method, &path);
}

/// The `reference_id` target. The input is used twice: as a raw (still percent-encoded) path
/// segment, which must decode to a valid id or be refused exactly as routing refuses it; and as a
/// decoded id, which, percent-encoded the way SDKs do it and with every byte escaped, must decode
/// back to itself exactly when it satisfies the id rules.
pub fn check_reference_id_input(data: &[u8]) {
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
        let routed = routes::route(&Method::GET, &lookup_path(ACCOUNT, &text));
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
            let routed = routes::route(&Method::GET, &lookup_path(ACCOUNT, &encoded));
            assert_eq!(routed_reference(&routed), Ok(id), "{encoded:?}");
        }
    }
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&byte| byte == b'\n') {
        Some(newline) => (&data[..newline], &data[newline + 1..]),
        None => (data, &[]),
    }
}

/// The `upstream_answer` target: `STATUS\nRETRY-AFTER\nBODY` (a status that is not three valid
/// digits counts as 200). Checks `cache::storability` and `cache::is_refresh_failure` against the
/// README's caching rules, `cache::answered_integration` (the integration a body names, used for
/// write-through purges), and the 429 cool-down read from `Retry-After` (raw header bytes, not
/// necessarily UTF-8).
pub fn check_upstream_answer_input(data: &[u8]) {
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
}

/// The `credentials` target: lines of `name: value` (raw bytes, not necessarily UTF-8; lines
/// that are not a valid header are skipped); a line `@fallback TOKEN` configures the sidecar's own
/// token. Checks `credentials::extract` with [`check_credentials`], and the same header map
/// through `proxy::check_request_head` (the 431 bounds).
pub fn check_credentials_input(data: &[u8]) {
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
}

/// The `purge_scope` target: the admin purge query (`admin::purge_scope`). Checks that it never
/// panics, that a lookup purge names a valid account and reference id decoded exactly as the
/// lookup path decodes it, and that the scope matches the cache key of that lookup.
pub fn check_purge_scope_input(data: &[u8]) {
    let query = String::from_utf8_lossy(data);
    let Ok(scope) = purge_scope(&query) else {
        return;
    };
    let pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect();
    let value_of = |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| *value)
    };
    match &scope {
        PurgeScope::All => {
            assert!(
                pairs.iter().all(|pair| *pair == ("all", "true")),
                "{query:?}"
            );
        }
        PurgeScope::Account { account_id } => {
            assert_eq!(
                value_of("account_id"),
                Some(account_id.to_string().as_str())
            );
            assert_eq!(value_of("reference_id"), None);
        }
        PurgeScope::Lookup {
            account_id,
            reference_id,
        } => {
            let account = account_id.to_string();
            assert_eq!(value_of("account_id"), Some(account.as_str()));
            let form = value_of("reference_id").expect("a lookup purge names a reference id");
            check_reference_id(reference_id);
            // A purge's query is a form: `+` is a space, which a path writes `%20`. Past that,
            // the operator's encoding means what the caller's did.
            let raw = form.replace('+', "%20");
            assert_eq!(ReferenceId::decode(&raw).as_ref(), Ok(reference_id));
            if !raw.contains('/') {
                let routed = routes::route(&Method::GET, &lookup_path(&account, &raw));
                if let Ok(Route::Lookup(lookup)) = &routed {
                    check_lookup(lookup);
                }
                assert_eq!(
                    routed_reference(&routed).as_ref(),
                    Ok(reference_id),
                    "{raw:?}"
                );
            }
            let mut headers = HeaderMap::new();
            headers.insert("authorization", HeaderValue::from_static("Bearer fuzz"));
            let credentials =
                credentials::extract(&headers, None, partition_key()).expect("credentials");
            let lookup = Lookup {
                account_id: *account_id,
                subject: Subject::Reference(reference_id.clone()),
            };
            let entry = CacheEntry {
                answer: Arc::new(UpstreamAnswer {
                    status: StatusCode::NOT_FOUND,
                    headers: Vec::new(),
                    body: Default::default(),
                }),
                stored_at: Instant::now(),
                fresh_for: Duration::from_secs(10),
                retain_for: Duration::from_secs(10),
                integration: None,
                fetch_time: Duration::ZERO,
            };
            let key = CacheKey::new(credentials.partition(), &lookup);
            assert!(scope.matches(&key, &entry));
        }
        // The operator's query names an account, a lookup or everything; never an integration
        // (only a write purges by integration) and never a credential partition (only a 401 or
        // 403 from Cloudflare does).
        PurgeScope::Integration { .. } | PurgeScope::Partition { .. } => {
            panic!("{query:?} gave the write-through or refusal scope {scope:?}")
        }
    }
}

/// The `config` target: configuration text. `config::parse_file` on arbitrary text, then
/// `config::resolve` of whatever parses (file paths removed: no I/O), then the arithmetic the
/// running sidecar does with an accepted configuration (deadlines, idle timers, the breaker, the
/// budget), which must not panic. The same text also goes through `parse_duration`,
/// `parse_bytes`, `cool_down_for`, `UpstreamBase::parse` and `ProxyUrl::parse` (whose `Debug`
/// must never show the credentials).
pub fn check_config_input(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = parse_duration("fuzz", &text);
    let _ = parse_bytes("fuzz", &text);
    assert!(cool_down_for(Some(&text)) <= MAX_COOL_DOWN);
    let _ = UpstreamBase::parse(&text, false);
    let _ = UpstreamBase::parse(&text, true);
    if let Ok(proxy) = ProxyUrl::parse(&text) {
        // `http://user:password@host`: the part before the last '@' of the authority is secret.
        let authority = text
            .trim_start_matches("http://")
            .split(['/', '?', '#'])
            .next()
            .unwrap_or("");
        if let Some((credentials, host)) = authority.rsplit_once('@') {
            let shown = format!("{proxy:?}");
            if credentials.len() >= 4
                && !host.contains(credentials)
                && !"ProxyUrl(http:// (with credentials))".contains(credentials)
            {
                assert!(
                    !shown.contains(credentials),
                    "{shown} shows {credentials:?}"
                );
            }
        }
    }

    let mut file = match parse_file(&text) {
        Ok(file) => file,
        Err(error) => {
            assert!(!error.key.is_empty());
            let _ = error.to_string();
            return;
        }
    };
    file.token_file = None;
    file.admin_token_file = None;
    file.tls_extra_ca_file = None;
    let Ok(config) = resolve(&Cli::default(), file, None) else {
        return;
    };
    assert!(plan_reload(&config, &config) == Default::default());

    // proxy.rs: `Instant::now() + request_timeout` is every fetch's deadline.
    let now = Instant::now();
    assert!(
        now.checked_add(config.request_timeout).is_some(),
        "request_timeout {:?} overflows a deadline",
        config.request_timeout
    );
    // server.rs: every connection's idle watchdog computes `last_activity + idle_timeout`.
    assert!(
        now.checked_add(config.server_limits.idle_timeout).is_some(),
        "idle_timeout {:?} overflows",
        config.server_limits.idle_timeout
    );
    // hyper's HTTP/1 server computes `Instant::now() + header_read_timeout` for every request head.
    assert!(
        now.checked_add(config.server_limits.header_read_timeout)
            .is_some(),
        "header_read_timeout {:?} overflows",
        config.server_limits.header_read_timeout
    );
    // resilience.rs: an opening breaker computes `now + cool_down`.
    assert!(
        now.checked_add(config.breaker.cool_down).is_some(),
        "breaker_cool_down {:?} overflows",
        config.breaker.cool_down
    );
    let _ = on_result(
        BreakerState::Closed {
            consecutive_failures: 0,
        },
        Pass::Probe,
        Health::Unhealthy,
        &config.breaker,
        now,
    );
    let _ = config.ttl.retain_for(config.ttl.positive);
    let _ = config.ttl.stale_use(config.ttl.negative);

    // The budget as the sidecar builds it, spent a few times for one credential.
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer fuzz"));
    let partition = partition_of(&headers, None).expect("credentials");
    let budget = LocalBudget::new(config.budget);
    for _ in 0..3 {
        let _ = budget.admit_now(partition, Work::Caller);
    }
}
