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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
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

/// One lookup: the only thing this sidecar forwards.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Lookup {
    pub account_id: AccountId,
    pub reference_id: ReferenceId,
}

impl Lookup {
    /// The upstream path below the configured base (which ends in `/client/v4`).
    pub fn upstream_path(&self) -> String {
        format!(
            "/accounts/{}/zt_risk_scoring/integrations/reference_id/{}",
            self.account_id,
            self.reference_id.to_path_segment()
        )
    }
}

/// Routes a request. `path` is the raw, still percent-encoded path without the query string.
///
/// Order of checks: the path shape (else 404), the method (else 405), the account id (else 400
/// 7003), the reference id (else 400 7003). A query string is ignored by design: the endpoint takes
/// no parameters, it is neither forwarded nor part of the cache key.
pub fn route(method: &Method, path: &str) -> Result<Lookup, ApiError> {
    let below_prefix = path.strip_prefix(API_PREFIX).unwrap_or(path);
    let mut segments = below_prefix.split('/');
    // A path that does not start with '/' has a non-empty first piece and matches nothing.
    let shape = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    );
    let (raw_account, raw_reference) = match shape {
        (
            Some(""),
            Some("accounts"),
            Some(account),
            Some("zt_risk_scoring"),
            Some("integrations"),
            Some("reference_id"),
            Some(reference),
            None,
        ) if !account.is_empty() && !reference.is_empty() => (account, reference),
        _ => return Err(ApiError::NoRoute),
    };
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::MethodNotAllowed {
            allow: LOOKUP_ALLOW,
        });
    }
    let Some(account_id) = AccountId::parse(raw_account) else {
        return Err(ApiError::InvalidAccountId {
            path: path.to_owned(),
        });
    };
    let reference_id = ReferenceId::decode(raw_reference)?;
    Ok(Lookup {
        account_id,
        reference_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";

    fn check(method: Method, path: &str, expected: Result<(&str, &str), ApiError>) {
        let actual = route(&method, path).map(|lookup| {
            (
                lookup.account_id.to_string(),
                lookup.reference_id.as_str().to_owned(),
            )
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
            &format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations"),
            &format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id"),
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
}
