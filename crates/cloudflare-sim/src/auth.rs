//! Which credential a request presents, read from its headers with Cloudflare's precedence. A
//! pure function of the headers: it does not know which credentials exist.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};

pub(crate) const X_AUTH_EMAIL: &str = "x-auth-email";
pub(crate) const X_AUTH_KEY: &str = "x-auth-key";
pub(crate) const X_AUTH_USER_SERVICE_KEY: &str = "x-auth-user-service-key";

/// A credential as the simulator stores and looks it up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Credential {
    ApiToken(String),
    GlobalKey { email: String, key: String },
    ServiceKey(String),
}

/// The header whose value has the wrong shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MalformedHeader {
    Authorization,
    AuthEmail,
    AuthKey,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Presented {
    /// No usable combination of credential headers.
    Missing,
    Malformed(MalformedHeader),
    /// A header that cannot name any stored credential (a service key that is not visible ASCII).
    Unrecognised,
    Credential(Credential),
}

/// Reads the credential: `X-Auth-Email` + `X-Auth-Key` when both are present, else
/// `Authorization`, else `X-Auth-User-Service-Key` (the order of Cloudflare's TypeScript SDK).
pub(crate) fn extract(headers: &HeaderMap) -> Presented {
    if let (Some(email), Some(key)) = (headers.get(X_AUTH_EMAIL), headers.get(X_AUTH_KEY)) {
        let Some(email) = visible_ascii(email) else {
            return Presented::Malformed(MalformedHeader::AuthEmail);
        };
        let Some(key) = visible_ascii(key) else {
            return Presented::Malformed(MalformedHeader::AuthKey);
        };
        return Presented::Credential(Credential::GlobalKey {
            email: email.to_owned(),
            key: key.to_owned(),
        });
    }
    if let Some(authorization) = headers.get(AUTHORIZATION) {
        return match bearer_token(authorization) {
            Some(token) => Presented::Credential(Credential::ApiToken(token.to_owned())),
            None => Presented::Malformed(MalformedHeader::Authorization),
        };
    }
    if let Some(service_key) = headers.get(X_AUTH_USER_SERVICE_KEY) {
        return match visible_ascii(service_key) {
            Some(key) => Presented::Credential(Credential::ServiceKey(key.to_owned())),
            None => Presented::Unrecognised,
        };
    }
    Presented::Missing
}

/// The token of `Bearer <token>`: the scheme in any case, one space, then a non-empty token
/// without spaces.
fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    visible_ascii_str(token)
}

fn visible_ascii(value: &HeaderValue) -> Option<&str> {
    visible_ascii_str(value.to_str().ok()?)
}

fn visible_ascii_str(text: &str) -> Option<&str> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_graphic()) {
        return None;
    }
    Some(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http::HeaderName;

    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn check(pairs: &[(&str, &[u8])], expected: Presented) {
        assert_eq!(extract(&headers(pairs)), expected, "{pairs:?}");
    }

    fn token(value: &str) -> Presented {
        Presented::Credential(Credential::ApiToken(value.to_owned()))
    }

    #[test]
    fn reads_bearer_tokens() {
        check(&[("authorization", b"Bearer abc")], token("abc"));
        check(&[("authorization", b"bearer abc")], token("abc"));
        check(&[("authorization", b"BEARER a-b_c.d")], token("a-b_c.d"));
    }

    #[test]
    fn rejects_malformed_authorization() {
        let malformed = || Presented::Malformed(MalformedHeader::Authorization);
        check(&[("authorization", b"abc")], malformed());
        check(&[("authorization", b"Basic dXNlcjpwYXNz")], malformed());
        check(&[("authorization", b"Bearer")], malformed());
        check(&[("authorization", b"Bearer ")], malformed());
        check(&[("authorization", b"Bearer  abc")], malformed());
        check(&[("authorization", b"Bearer a b")], malformed());
        check(&[("authorization", b"Bearer \xffabc")], malformed());
    }

    #[test]
    fn global_key_needs_both_headers_and_wins() {
        let global = Presented::Credential(Credential::GlobalKey {
            email: "a@example.com".into(),
            key: "k".into(),
        });
        check(
            &[("x-auth-email", b"a@example.com"), ("x-auth-key", b"k")],
            global,
        );
        let global = Presented::Credential(Credential::GlobalKey {
            email: "a@example.com".into(),
            key: "k".into(),
        });
        check(
            &[
                ("authorization", b"garbage"),
                ("x-auth-email", b"a@example.com"),
                ("x-auth-key", b"k"),
            ],
            global,
        );
        check(&[("x-auth-key", b"k")], Presented::Missing);
        check(&[("x-auth-email", b"a@example.com")], Presented::Missing);
        check(
            &[
                ("x-auth-email", b"a@example.com"),
                ("authorization", b"Bearer t"),
            ],
            token("t"),
        );
        check(
            &[("x-auth-email", b""), ("x-auth-key", b"k")],
            Presented::Malformed(MalformedHeader::AuthEmail),
        );
        check(
            &[("x-auth-email", b"a@example.com"), ("x-auth-key", b"k k")],
            Presented::Malformed(MalformedHeader::AuthKey),
        );
    }

    #[test]
    fn service_key_comes_last() {
        check(
            &[("x-auth-user-service-key", b"v1.0-abc")],
            Presented::Credential(Credential::ServiceKey("v1.0-abc".into())),
        );
        check(
            &[
                ("x-auth-user-service-key", b"v1.0-abc"),
                ("authorization", b"Bearer t"),
            ],
            token("t"),
        );
        check(
            &[("x-auth-user-service-key", b"\xff")],
            Presented::Unrecognised,
        );
        check(&[], Presented::Missing);
    }
}
