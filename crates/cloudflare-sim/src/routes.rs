//! The simulator's router: a pure function from method and raw path to an endpoint with decoded
//! identifiers, or to the routing error Cloudflare would give. It knows nothing of credentials or
//! stored data.

use std::borrow::Cow;

use http::Method;
use percent_encoding::percent_decode_str;

use super::SimRoute;

const PREFIX: &str = "/client/v4/";

pub(crate) const ALLOW_REFERENCE: &str = "GET, HEAD";
pub(crate) const ALLOW_COLLECTION: &str = "GET, HEAD, POST";
pub(crate) const ALLOW_ITEM: &str = "GET, HEAD, PUT, DELETE";

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    ReferenceGet { reference_id: String },
    IntegrationList,
    IntegrationCreate,
    IntegrationGet { integration_id: String },
    IntegrationUpdate { integration_id: String },
    IntegrationDelete { integration_id: String },
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RouteError {
    /// 7000: nothing is served at this path.
    NoRoute,
    /// 10405: the path is served, not with this method.
    MethodNotAllowed { allow: &'static str },
    /// 7003: the path has the right shape but an identifier in it is invalid.
    InvalidIdentifier,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Routed {
    /// The counter this request goes to, even when its identifiers are invalid.
    pub route: SimRoute,
    pub outcome: Result<(String, Endpoint), RouteError>,
}

impl Routed {
    fn unrouted(error: RouteError) -> Self {
        Routed {
            route: SimRoute::Unrouted,
            outcome: Err(error),
        }
    }
}

/// Routes a request. Literal segments are matched before identifiers, so
/// `integrations/reference_id/{ref}` is never read as an integration id. Identifiers are
/// percent-decoded exactly once (`%2F` stays inside the identifier, `+` is a plus).
pub(crate) fn route(method: &Method, path: &str) -> Routed {
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Routed::unrouted(RouteError::NoRoute);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["accounts", account, "zt_risk_scoring", "integrations"] => {
            let route = if is_get(method) {
                SimRoute::IntegrationList
            } else if method == Method::POST {
                SimRoute::IntegrationCreate
            } else {
                return Routed::unrouted(RouteError::MethodNotAllowed {
                    allow: ALLOW_COLLECTION,
                });
            };
            let endpoint = match route {
                SimRoute::IntegrationList => Endpoint::IntegrationList,
                _ => Endpoint::IntegrationCreate,
            };
            with_account(route, account, || Some(endpoint))
        }
        ["accounts", account, "zt_risk_scoring", "integrations", "reference_id", reference] => {
            if !is_get(method) {
                return Routed::unrouted(RouteError::MethodNotAllowed {
                    allow: ALLOW_REFERENCE,
                });
            }
            with_account(SimRoute::ReferenceGet, account, || {
                let reference_id = decode_once(reference)?;
                Some(Endpoint::ReferenceGet { reference_id })
            })
        }
        ["accounts", account, "zt_risk_scoring", "integrations", id] => {
            let route = if is_get(method) {
                SimRoute::IntegrationGet
            } else if method == Method::PUT {
                SimRoute::IntegrationUpdate
            } else if method == Method::DELETE {
                SimRoute::IntegrationDelete
            } else {
                return Routed::unrouted(RouteError::MethodNotAllowed { allow: ALLOW_ITEM });
            };
            with_account(route, account, || {
                let integration_id = decode_once(id).filter(|id| is_uuid(id))?;
                Some(match route {
                    SimRoute::IntegrationGet => Endpoint::IntegrationGet { integration_id },
                    SimRoute::IntegrationUpdate => Endpoint::IntegrationUpdate { integration_id },
                    _ => Endpoint::IntegrationDelete { integration_id },
                })
            })
        }
        _ => Routed::unrouted(RouteError::NoRoute),
    }
}

fn is_get(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Validates the account id, then builds the endpoint; either failing is a 7003.
fn with_account(
    route: SimRoute,
    account: &str,
    endpoint: impl FnOnce() -> Option<Endpoint>,
) -> Routed {
    let outcome = if is_account_id(account) {
        endpoint()
            .map(|endpoint| (account.to_owned(), endpoint))
            .ok_or(RouteError::InvalidIdentifier)
    } else {
        Err(RouteError::InvalidIdentifier)
    };
    Routed { route, outcome }
}

/// Cloudflare account ids are 32 lowercase hex characters.
pub(crate) fn is_account_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

/// The 8-4-4-4-12 hex shape of a UUID, in either case.
fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(index, byte)| match index {
            8 | 13 | 18 | 23 => byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

/// Percent-decodes a path segment once. Empty identifiers and ones that are not UTF-8 after
/// decoding are invalid. A `%` not followed by two hex digits is kept as it is.
fn decode_once(segment: &str) -> Option<String> {
    if segment.is_empty() {
        return None;
    }
    percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";
    const ID: &str = "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e";

    fn base() -> String {
        format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations")
    }

    fn check(method: Method, path: &str, route: SimRoute, outcome: Result<Endpoint, RouteError>) {
        let expected = Routed {
            route,
            outcome: outcome.map(|endpoint| (ACCOUNT.to_owned(), endpoint)),
        };
        assert_eq!(super::route(&method, path), expected, "{method} {path}");
    }

    fn reference(id: &str) -> Result<Endpoint, RouteError> {
        Ok(Endpoint::ReferenceGet {
            reference_id: id.to_owned(),
        })
    }

    #[test]
    fn routes_every_endpoint() {
        let base = base();
        check(
            Method::GET,
            &format!("{base}/reference_id/abc"),
            SimRoute::ReferenceGet,
            reference("abc"),
        );
        check(
            Method::HEAD,
            &format!("{base}/reference_id/abc"),
            SimRoute::ReferenceGet,
            reference("abc"),
        );
        check(
            Method::GET,
            &base,
            SimRoute::IntegrationList,
            Ok(Endpoint::IntegrationList),
        );
        check(
            Method::POST,
            &base,
            SimRoute::IntegrationCreate,
            Ok(Endpoint::IntegrationCreate),
        );
        let id = || ID.to_owned();
        check(
            Method::GET,
            &format!("{base}/{ID}"),
            SimRoute::IntegrationGet,
            Ok(Endpoint::IntegrationGet {
                integration_id: id(),
            }),
        );
        check(
            Method::PUT,
            &format!("{base}/{ID}"),
            SimRoute::IntegrationUpdate,
            Ok(Endpoint::IntegrationUpdate {
                integration_id: id(),
            }),
        );
        check(
            Method::DELETE,
            &format!("{base}/{ID}"),
            SimRoute::IntegrationDelete,
            Ok(Endpoint::IntegrationDelete {
                integration_id: id(),
            }),
        );
    }

    #[test]
    fn decodes_reference_ids_exactly_once() {
        let base = base();
        let get = |raw: &str, decoded: &str| {
            check(
                Method::GET,
                &format!("{base}/reference_id/{raw}"),
                SimRoute::ReferenceGet,
                reference(decoded),
            );
        };
        get("a%2Fb", "a/b");
        get("a%2fb", "a/b");
        get("a%20b", "a b");
        get("a+b", "a+b");
        get("a%2Bb", "a+b");
        get("a%252Fb", "a%2Fb");
        get("m%C3%BCller", "müller");
        get("100%", "100%");
        get("%zz", "%zz");
        get(ID, ID);
    }

    #[test]
    fn rejects_invalid_identifiers_with_7003() {
        let invalid = || Err(RouteError::InvalidIdentifier);
        let base = base();
        check(
            Method::GET,
            &format!("{base}/reference_id/%FF"),
            SimRoute::ReferenceGet,
            invalid(),
        );
        check(
            Method::GET,
            &format!("{base}/reference_id/"),
            SimRoute::ReferenceGet,
            invalid(),
        );
        check(
            Method::GET,
            &format!("{base}/not-a-uuid"),
            SimRoute::IntegrationGet,
            invalid(),
        );
        // Literal first: a bare `reference_id` is an (invalid) integration id.
        check(
            Method::GET,
            &format!("{base}/reference_id"),
            SimRoute::IntegrationGet,
            invalid(),
        );
        check(
            Method::DELETE,
            &format!("{base}/"),
            SimRoute::IntegrationDelete,
            invalid(),
        );

        for account in [
            "023E105F4ECEF8AD9CA31A8372D0C353",
            "023e105f",
            "",
            "023e105f4ecef8ad9ca31a8372d0c35g",
        ] {
            let path = format!(
                "/client/v4/accounts/{account}/zt_risk_scoring/integrations/reference_id/a"
            );
            assert_eq!(
                super::route(&Method::GET, &path),
                Routed {
                    route: SimRoute::ReferenceGet,
                    outcome: Err(RouteError::InvalidIdentifier)
                },
                "{path}"
            );
        }
    }

    #[test]
    fn unknown_paths_and_methods() {
        let base = base();
        let no_route = |path: &str| {
            assert_eq!(
                super::route(&Method::GET, path),
                Routed::unrouted(RouteError::NoRoute),
                "{path}"
            );
        };
        no_route("/");
        no_route("/client/v4");
        no_route("/client/v4/");
        no_route("/client/v5/accounts");
        no_route(&format!("{base}/reference_id/a/b"));
        no_route(&format!("/accounts/{ACCOUNT}/zt_risk_scoring/integrations"));
        no_route(&format!(
            "/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/summary"
        ));

        let not_allowed = |method: Method, path: &str, allow: &'static str| {
            assert_eq!(
                super::route(&method, path),
                Routed::unrouted(RouteError::MethodNotAllowed { allow }),
                "{method} {path}"
            );
        };
        not_allowed(
            Method::POST,
            &format!("{base}/reference_id/a"),
            ALLOW_REFERENCE,
        );
        not_allowed(Method::DELETE, &base, ALLOW_COLLECTION);
        not_allowed(Method::PATCH, &format!("{base}/{ID}"), ALLOW_ITEM);
        // Method errors win over identifier errors.
        not_allowed(
            Method::POST,
            "/client/v4/accounts/x/zt_risk_scoring/integrations/reference_id/a",
            ALLOW_REFERENCE,
        );
    }
}
