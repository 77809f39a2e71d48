//! Request routing: a pure function from (method, path) to the one lookup this sidecar serves, with
//! the identifier rules (account id format, reference id decoding and re-encoding). It does no I/O
//! and knows nothing of credentials or the cache.

use std::fmt;
use std::sync::Arc;

use http::Method;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::ApiError;

/// The prefix Cloudflare serves its API under. The route is also served without it.
pub const API_PREFIX: &str = "/client/v4";

/// The route template, used in logs and metrics instead of the concrete path (which holds ids).
pub const REFERENCE_ROUTE: &str =
    "/client/v4/accounts/{account_id}/zt_risk_scoring/integrations/reference_id/{reference_id}";

/// Methods the lookup route answers; the value of `Allow` on a 405.
pub const LOOKUP_ALLOW: &str = "GET, HEAD";

/// The longest reference id accepted, in bytes after percent-decoding.
pub const MAX_REFERENCE_ID_BYTES: usize = 1024;

/// A Cloudflare account identifier: 32 lowercase hex characters, kept as its 16 bytes so that a cache
/// key is small and cheap to hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccountId([u8; 16]);

impl AccountId {
    /// Parses Cloudflare's identifier format; anything else is `None`.
    pub fn parse(text: &str) -> Option<AccountId> {
        let bytes = text.as_bytes();
        if bytes.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (index, pair) in bytes.chunks_exact(2).enumerate() {
            out[index] = (lower_hex_value(pair[0])? << 4) | lower_hex_value(pair[1])?;
        }
        Some(AccountId(out))
    }
}

fn lower_hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for AccountId {
    /// 32 lowercase hex digits, written at once (it is in every request's log line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 32];
        for (pair, byte) in text.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({self})")
    }
}

/// A reference id after exactly one percent-decoding: non-empty, valid UTF-8, no control
/// characters, at most [`MAX_REFERENCE_ID_BYTES`], and never `.` or `..`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ReferenceId(Arc<str>);

/// Characters that stay literal when a reference id is forwarded: RFC 3986 `pchar` without `%`
/// (unreserved, sub-delims, `:` and `@`). Cloudflare's SDKs leave the same set literal, so the
/// forwarded path looks like the one a direct SDK call would send. `/`, `?`, `#`, `%`, space and
/// every non-ASCII byte are encoded, so the id always stays one path segment.
const SEGMENT_KEEP_LITERAL: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

impl ReferenceId {
    /// Decodes one raw path segment. Every `%` must start a valid `%XX` escape: a lenient decoder
    /// would turn `%zz` into a different id upstream than the one the caller meant.
    pub fn decode(raw_segment: &str) -> Result<ReferenceId, ApiError> {
        let invalid = |reason| Err(ApiError::InvalidReferenceId { reason });
        if raw_segment.is_empty() {
            return invalid("must not be empty");
        }
        if !escapes_are_well_formed(raw_segment.as_bytes()) {
            return invalid("malformed percent-encoding");
        }
        let Ok(decoded) = percent_decode_str(raw_segment).decode_utf8() else {
            return invalid("must be valid UTF-8");
        };
        if decoded.len() > MAX_REFERENCE_ID_BYTES {
            return invalid("must be at most 1024 bytes");
        }
        if decoded.chars().any(char::is_control) {
            return invalid("must not contain control characters");
        }
        if decoded == "." || decoded == ".." {
            return invalid("must not be a dot segment");
        }
        Ok(ReferenceId(Arc::from(decoded.as_ref())))
    }

    /// Validates an id that is already decoded (as Cloudflare returns it in `result.reference_id`).
    pub fn from_decoded(decoded: &str) -> Option<ReferenceId> {
        let valid = !decoded.is_empty()
            && decoded.len() <= MAX_REFERENCE_ID_BYTES
            && !decoded.chars().any(char::is_control)
            && decoded != "."
            && decoded != "..";
        valid.then(|| ReferenceId(Arc::from(decoded)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id encoded as a single path segment for the upstream request.
    pub fn to_path_segment(&self) -> String {
        utf8_percent_encode(&self.0, SEGMENT_KEEP_LITERAL).to_string()
    }
}

fn escapes_are_well_formed(bytes: &[u8]) -> bool {
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = |offset: usize| bytes.get(index + offset).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(1) && hex(2)) {
                return false;
            }
            index += 3;
        } else {
            index += 1;
        }
    }
    true
}

/// An integration id: a UUID, kept as its 16 bytes, printed in lowercase hyphenated form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IntegrationId([u8; 16]);

impl IntegrationId {
    /// Parses `8-4-4-4-12` hex digits (either case); anything else is `None`.
    pub fn parse(text: &str) -> Option<IntegrationId> {
        let bytes = text.as_bytes();
        if bytes.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0;
        for (index, byte) in bytes.iter().enumerate() {
            if matches!(index, 8 | 13 | 18 | 23) {
                if *byte != b'-' {
                    return None;
                }
                continue;
            }
            let value = match byte {
                b'0'..=b'9' => byte - b'0',
                b'a'..=b'f' => byte - b'a' + 10,
                b'A'..=b'F' => byte - b'A' + 10,
                _ => return None,
            };
            out[nibbles / 2] |= if nibbles % 2 == 0 { value << 4 } else { value };
            nibbles += 1;
        }
        Some(IntegrationId(out))
    }
}

impl fmt::Display for IntegrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, byte) in self.0.iter().enumerate() {
            if matches!(index, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for IntegrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IntegrationId({self})")
    }
}

/// What a cached lookup names: an integration by its reference id, or by its own id.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Subject {
    Reference(ReferenceId),
    Integration(IntegrationId),
}

/// A cacheable lookup (GET or HEAD).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Lookup {
    pub account_id: AccountId,
    pub subject: Subject,
}

impl Lookup {
    /// The upstream path below the configured base (which ends in `/client/v4`).
    pub fn upstream_path(&self) -> String {
        match &self.subject {
            Subject::Reference(reference_id) => format!(
                "/accounts/{}/zt_risk_scoring/integrations/reference_id/{}",
                self.account_id,
                reference_id.to_path_segment()
            ),
            Subject::Integration(integration_id) => format!(
                "/accounts/{}/zt_risk_scoring/integrations/{integration_id}",
                self.account_id
            ),
        }
    }

    /// The route template, for logs and metrics.
    pub fn template(&self) -> &'static str {
        match self.subject {
            Subject::Reference(_) => REFERENCE_ROUTE,
            Subject::Integration(_) => INTEGRATION_ROUTE,
        }
    }

    /// The reference id, for a lookup by reference id.
    pub fn reference_id(&self) -> Option<&ReferenceId> {
        match &self.subject {
            Subject::Reference(reference_id) => Some(reference_id),
            Subject::Integration(_) => None,
        }
    }
}

/// The route template of the integrations collection.
pub const INTEGRATIONS_ROUTE: &str =
    "/client/v4/accounts/{account_id}/zt_risk_scoring/integrations";

/// The route template of one integration.
pub const INTEGRATION_ROUTE: &str =
    "/client/v4/accounts/{account_id}/zt_risk_scoring/integrations/{integration_id}";

/// Methods the collection answers.
pub const COLLECTION_ALLOW: &str = "GET, HEAD, POST";

/// Methods one integration answers.
pub const ITEM_ALLOW: &str = "GET, HEAD, PUT, DELETE";

/// Every request this sidecar serves: cached lookups, and the rest of the integrations family,
/// which passes through uncached.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Route {
    /// GET or HEAD by reference id or by id: cached.
    Lookup(Lookup),
    /// GET or HEAD of the collection: passed through, not cached.
    List { account_id: AccountId },
    /// POST to the collection.
    Create { account_id: AccountId },
    /// PUT of one integration.
    Update {
        account_id: AccountId,
        integration_id: IntegrationId,
    },
    /// DELETE of one integration.
    Delete {
        account_id: AccountId,
        integration_id: IntegrationId,
    },
}

impl Route {
    pub fn account_id(&self) -> AccountId {
        match self {
            Route::Lookup(lookup) => lookup.account_id,
            Route::List { account_id }
            | Route::Create { account_id }
            | Route::Update { account_id, .. }
            | Route::Delete { account_id, .. } => *account_id,
        }
    }

    /// Whether the route changes Cloudflare's state (create, update, delete).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Route::Create { .. } | Route::Update { .. } | Route::Delete { .. }
        )
    }

    /// The route template, for logs and metrics.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Lookup(lookup) => lookup.template(),
            Route::List { .. } | Route::Create { .. } => INTEGRATIONS_ROUTE,
            Route::Update { .. } | Route::Delete { .. } => INTEGRATION_ROUTE,
        }
    }

    /// The upstream path below the configured base.
    pub fn upstream_path(&self) -> String {
        match self {
            Route::Lookup(lookup) => lookup.upstream_path(),
            Route::List { account_id } | Route::Create { account_id } => {
                format!("/accounts/{account_id}/zt_risk_scoring/integrations")
            }
            Route::Update {
                account_id,
                integration_id,
            }
            | Route::Delete {
                account_id,
                integration_id,
            } => format!("/accounts/{account_id}/zt_risk_scoring/integrations/{integration_id}"),
        }
    }
}

/// The shape of a path below `/accounts/{account_id}/zt_risk_scoring/integrations`.
enum Shape<'a> {
    Collection,
    ByReference(&'a str),
    Item(&'a str),
}

/// Routes a request. `path` is the raw, still percent-encoded path without the query string.
///
/// Order of checks: the path shape (else 404), the method (else 405 with `Allow`), the account id
/// (else 400 7003), the reference or integration id (else 400 7003). A query string is ignored on
/// lookups by design: they take no parameters, so it is neither forwarded nor part of the key.
pub fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let below_prefix = path.strip_prefix(API_PREFIX).unwrap_or(path);
    let mut segments = below_prefix.split('/');
    // A path that does not start with '/' has a non-empty first piece and matches nothing.
    let head = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    );
    let raw_account = match head {
        (
            Some(""),
            Some("accounts"),
            Some(account),
            Some("zt_risk_scoring"),
            Some("integrations"),
        ) if !account.is_empty() => account,
        _ => return Err(ApiError::NoRoute),
    };
    let tail = (segments.next(), segments.next(), segments.next());
    let shape = match tail {
        (None, None, None) => Shape::Collection,
        (Some("reference_id"), Some(reference), None) if !reference.is_empty() => {
            Shape::ByReference(reference)
        }
        (Some(item), None, None) if !item.is_empty() => Shape::Item(item),
        _ => return Err(ApiError::NoRoute),
    };
    let is_read = method == Method::GET || method == Method::HEAD;
    let allowed = match shape {
        Shape::Collection => is_read || method == Method::POST,
        Shape::ByReference(_) => is_read,
        Shape::Item(_) => is_read || method == Method::PUT || method == Method::DELETE,
    };
    if !allowed {
        let allow = match shape {
            Shape::Collection => COLLECTION_ALLOW,
            Shape::ByReference(_) => LOOKUP_ALLOW,
            Shape::Item(_) => ITEM_ALLOW,
        };
        return Err(ApiError::MethodNotAllowed { allow });
    }
    let Some(account_id) = AccountId::parse(raw_account) else {
        return Err(ApiError::InvalidAccountId {
            path: path.to_owned(),
        });
    };
    let item = |raw: &str| {
        IntegrationId::parse(raw).ok_or_else(|| ApiError::InvalidAccountId {
            path: path.to_owned(),
        })
    };
    Ok(match shape {
        Shape::Collection if is_read => Route::List { account_id },
        Shape::Collection => Route::Create { account_id },
        Shape::ByReference(raw) => Route::Lookup(Lookup {
            account_id,
            subject: Subject::Reference(ReferenceId::decode(raw)?),
        }),
        Shape::Item(raw) if is_read => Route::Lookup(Lookup {
            account_id,
            subject: Subject::Integration(item(raw)?),
        }),
        Shape::Item(raw) if method == Method::PUT => Route::Update {
            account_id,
            integration_id: item(raw)?,
        },
        Shape::Item(raw) => Route::Delete {
            account_id,
            integration_id: item(raw)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";

    fn check(method: Method, path: &str, expected: Result<(&str, &str), ApiError>) {
        let actual = route(&method, path).map(|route| match route {
            Route::Lookup(Lookup {
                account_id,
                subject: Subject::Reference(reference_id),
            }) => (account_id.to_string(), reference_id.as_str().to_owned()),
            other => panic!("{method} {path} routed to {other:?}"),
        });
        let expected = expected.map(|(a, r)| (a.to_owned(), r.to_owned()));
        assert_eq!(actual, expected, "{method} {path}");
    }

    fn lookup_path(reference: &str) -> String {
        format!(
            "/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/{reference}"
        )
    }

    #[test]
    fn routes_the_lookup_with_and_without_prefix() {
        check(Method::GET, &lookup_path("abc"), Ok((ACCOUNT, "abc")));
        check(Method::HEAD, &lookup_path("abc"), Ok((ACCOUNT, "abc")));
        check(
            Method::GET,
            &format!("/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/abc"),
            Ok((ACCOUNT, "abc")),
        );
    }

    #[test]
    fn other_paths_are_not_routes() {
        for path in [
            "/",
            "",
            "*",
            "/client/v4",
            "/client/v4/accounts",
            &format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/summary"),
            &format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/"),
            &format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/a/b"),
            &format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/"),
            "/client/v4/accounts//zt_risk_scoring/integrations/reference_id/x",
            &lookup_path("abc/"),
            &lookup_path("a/b"),
            &format!("/client/v4//accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/x"),
            &format!("/client/v5/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/x"),
            &format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/x/.."),
            &format!("client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/x"),
            &format!("/client/v4/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/x"),
        ] {
            check(Method::GET, path, Err(ApiError::NoRoute));
        }
    }

    #[test]
    fn other_methods_on_the_route_are_405() {
        for method in [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ] {
            check(
                method,
                &lookup_path("abc"),
                Err(ApiError::MethodNotAllowed {
                    allow: LOOKUP_ALLOW,
                }),
            );
        }
    }

    #[test]
    fn account_ids_must_be_32_lowercase_hex() {
        for account in [
            "023E105F4ECEF8AD9CA31A8372D0C353",
            "023e105f4ecef8ad9ca31a8372d0c35",
            "023e105f4ecef8ad9ca31a8372d0c3533",
            "023e105f4ecef8ad9ca31a8372d0c35g",
            "%30%32%33e105f4ecef8ad9ca31a8372d0c3",
            "not-an-account",
        ] {
            let path = format!(
                "/client/v4/accounts/{account}/zt_risk_scoring/integrations/reference_id/x"
            );
            check(
                Method::GET,
                &path,
                Err(ApiError::InvalidAccountId { path: path.clone() }),
            );
        }
    }

    #[test]
    fn reference_ids_are_decoded_exactly_once() {
        for (raw, decoded) in [
            ("a%2Fb", "a/b"),
            ("a%2fb", "a/b"),
            ("with%20space", "with space"),
            ("a+b", "a+b"),
            ("a%2Bb", "a+b"),
            ("literal%2520", "literal%20"),
            ("caf%C3%A9", "café"),
            ("%E2%9C%93", "✓"),
            (
                "3701e70b-5de4-4d9d-8972-f5aa994d9057",
                "3701e70b-5de4-4d9d-8972-f5aa994d9057",
            ),
            ("!$&'()*+,;=:@", "!$&'()*+,;=:@"),
            ("...", "..."),
            ("%2E%2E%2Fx", "../x"),
        ] {
            check(Method::GET, &lookup_path(raw), Ok((ACCOUNT, decoded)));
        }
    }

    #[test]
    fn bad_reference_ids_are_400() {
        for (raw, reason) in [
            ("%zz", "malformed percent-encoding"),
            ("abc%", "malformed percent-encoding"),
            ("abc%2", "malformed percent-encoding"),
            ("%FF", "must be valid UTF-8"),
            ("%C0%AF", "must be valid UTF-8"),
            ("%00", "must not contain control characters"),
            ("a%0Ab", "must not contain control characters"),
            ("%7F", "must not contain control characters"),
            ("%C2%85", "must not contain control characters"),
            (".", "must not be a dot segment"),
            ("%2E", "must not be a dot segment"),
            ("%2e%2E", "must not be a dot segment"),
            ("..", "must not be a dot segment"),
        ] {
            check(
                Method::GET,
                &lookup_path(raw),
                Err(ApiError::InvalidReferenceId { reason }),
            );
        }
    }

    #[test]
    fn reference_id_length_bound_is_on_decoded_bytes() {
        let at_limit = "a".repeat(MAX_REFERENCE_ID_BYTES);
        assert!(route(&Method::GET, &lookup_path(&at_limit)).is_ok());
        let over = "a".repeat(MAX_REFERENCE_ID_BYTES + 1);
        check(
            Method::GET,
            &lookup_path(&over),
            Err(ApiError::InvalidReferenceId {
                reason: "must be at most 1024 bytes",
            }),
        );
        // 400 encoded bytes that decode to 400 two-byte characters: 800 bytes, accepted.
        let encoded_two_byte = "%C3%A9".repeat(400);
        assert!(route(&Method::GET, &lookup_path(&encoded_two_byte)).is_ok());
    }

    #[test]
    fn forwarded_segment_names_the_same_single_segment() {
        for (decoded, segment) in [
            ("a/b", "a%2Fb"),
            ("with space", "with%20space"),
            ("a+b", "a+b"),
            ("literal%20", "literal%2520"),
            ("café", "caf%C3%A9"),
            ("q?x#y", "q%3Fx%23y"),
            ("back\\slash", "back%5Cslash"),
            ("!$&'()*+,;=:@-._~", "!$&'()*+,;=:@-._~"),
        ] {
            let id =
                ReferenceId::decode(&utf8_percent_encode(decoded, NON_ALPHANUMERIC).to_string())
                    .expect("valid id");
            assert_eq!(id.as_str(), decoded);
            assert_eq!(id.to_path_segment(), segment, "{decoded}");
            // Decoding the forwarded segment gives back the same id: a round trip.
            assert_eq!(
                ReferenceId::decode(segment).expect("valid").as_str(),
                decoded
            );
        }
    }

    #[test]
    fn upstream_path_uses_canonical_account_and_encoded_reference() {
        let lookup = route(&Method::GET, &lookup_path("a%2Fb")).expect("routes");
        assert_eq!(
            lookup.upstream_path(),
            format!("/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/a%2Fb")
        );
    }

    const ID: &str = "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e";

    #[test]
    fn the_integrations_family_routes_by_method() {
        let account = AccountId::parse(ACCOUNT).expect("account");
        let id = IntegrationId::parse(ID).expect("id");
        let collection = format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations");
        let item = format!("{collection}/{ID}");
        let check = |method: Method, path: &str, expected: Result<Route, ApiError>| {
            assert_eq!(route(&method, path), expected, "{method} {path}");
        };
        check(
            Method::GET,
            &collection,
            Ok(Route::List {
                account_id: account,
            }),
        );
        check(
            Method::HEAD,
            &collection,
            Ok(Route::List {
                account_id: account,
            }),
        );
        check(
            Method::POST,
            &collection,
            Ok(Route::Create {
                account_id: account,
            }),
        );
        check(
            Method::PUT,
            &collection,
            Err(ApiError::MethodNotAllowed {
                allow: COLLECTION_ALLOW,
            }),
        );
        let by_id = Route::Lookup(Lookup {
            account_id: account,
            subject: Subject::Integration(id),
        });
        check(Method::GET, &item, Ok(by_id.clone()));
        check(
            Method::GET,
            &format!("{collection}/{}", ID.to_uppercase()),
            Ok(by_id),
        );
        check(
            Method::PUT,
            &item,
            Ok(Route::Update {
                account_id: account,
                integration_id: id,
            }),
        );
        check(
            Method::DELETE,
            &item,
            Ok(Route::Delete {
                account_id: account,
                integration_id: id,
            }),
        );
        check(
            Method::POST,
            &item,
            Err(ApiError::MethodNotAllowed { allow: ITEM_ALLOW }),
        );
        check(
            Method::PATCH,
            &item,
            Err(ApiError::MethodNotAllowed { allow: ITEM_ALLOW }),
        );
        for bad in [
            "not-a-uuid",
            "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26",
            "182bd5e56e1a4fe4a799aa6d9a6ab26e0000",
            "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab2zz",
            "reference_id",
        ] {
            let path = format!("{collection}/{bad}");
            check(
                Method::GET,
                &path,
                Err(ApiError::InvalidAccountId { path: path.clone() }),
            );
        }
        assert_eq!(
            route(&Method::PUT, &item).expect("routes").upstream_path(),
            format!("/accounts/{ACCOUNT}/zt_risk_scoring/integrations/{ID}")
        );
        assert_eq!(
            IntegrationId::parse(&ID.to_uppercase()).map(|id| id.to_string()),
            Some(ID.to_owned())
        );
    }

    /// An id Cloudflare returned (already decoded) passes the same rules as one from a path: not
    /// empty, at most 1024 bytes, no control characters, not a dot segment.
    #[test]
    fn decoded_reference_ids_are_validated() {
        let longest = "r".repeat(MAX_REFERENCE_ID_BYTES);
        for valid in [
            "okta-production",
            "team a/okta+1",
            ".hidden",
            "...",
            longest.as_str(),
        ] {
            assert_eq!(
                ReferenceId::from_decoded(valid)
                    .as_ref()
                    .map(ReferenceId::as_str),
                Some(valid),
                "{valid:?}"
            );
        }
        let too_long = "r".repeat(MAX_REFERENCE_ID_BYTES + 1);
        for invalid in ["", too_long.as_str(), "a\u{7}b", "line\n", ".", ".."] {
            assert!(ReferenceId::from_decoded(invalid).is_none(), "{invalid:?}");
        }
    }

    /// An account id's `Debug` names the type and shows the id (it is not a secret).
    #[test]
    fn account_ids_debug_as_their_hex() {
        let account = AccountId::parse("023e105f4ecef8ad9ca31a8372d0c353").expect("account");
        assert_eq!(
            format!("{account:?}"),
            "AccountId(023e105f4ecef8ad9ca31a8372d0c353)"
        );
    }

    /// What the request path reads off a route: its template (the log's and the metrics' `route`),
    /// whether it writes, and a lookup's reference id; and an integration id's `Debug`.
    #[test]
    fn routes_name_their_template_writes_and_reference_id() {
        const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";
        const ID: &str = "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e";
        let base = format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations");
        let by_reference = format!("{base}/reference_id/okta");
        let by_id = format!("{base}/{ID}");
        for (method, path, template, writes) in [
            (Method::GET, by_reference.as_str(), REFERENCE_ROUTE, false),
            (Method::GET, by_id.as_str(), INTEGRATION_ROUTE, false),
            (Method::GET, base.as_str(), INTEGRATIONS_ROUTE, false),
            (Method::POST, base.as_str(), INTEGRATIONS_ROUTE, true),
            (Method::PUT, by_id.as_str(), INTEGRATION_ROUTE, true),
            (Method::DELETE, by_id.as_str(), INTEGRATION_ROUTE, true),
        ] {
            let routed = route(&method, path).expect("routed");
            assert_eq!(routed.template(), template, "{method} {path}");
            assert_eq!(routed.is_write(), writes, "{method} {path}");
        }
        let Ok(Route::Lookup(lookup)) = route(&Method::GET, &by_reference) else {
            panic!("a lookup");
        };
        assert_eq!(lookup.reference_id().map(ReferenceId::as_str), Some("okta"));
        let Ok(Route::Lookup(lookup)) = route(&Method::GET, &by_id) else {
            panic!("a lookup");
        };
        assert_eq!(lookup.reference_id(), None);
        let id = IntegrationId::parse(ID).expect("id");
        assert_eq!(format!("{id:?}"), format!("IntegrationId({ID})"));
    }
}
