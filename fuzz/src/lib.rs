//! Shared oracles for the fuzz targets: the invariants each target asserts about routing,
//! identifier decoding, upstream answers and credentials, written once so that every target that
//! reaches the same function checks the same rules. It holds no fuzz target itself.

use std::sync::OnceLock;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};
use zt_risk_sidecar::cache::{is_refresh_failure, Storability};
use zt_risk_sidecar::credentials::{self, Partition, PartitionKey, CREDENTIAL_HEADERS};
use zt_risk_sidecar::error::{envelope_bytes, ApiError};
use zt_risk_sidecar::routes::{
    self, AccountId, Lookup, ReferenceId, Route, Subject, API_PREFIX, MAX_REFERENCE_ID_BYTES,
};

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
