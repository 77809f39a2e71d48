//! Credentials: which headers carry them, the sidecar's own fallback token, and the credential
//! partition (a keyed hash) that keeps one caller's cached answers away from another's.
//! A raw secret never leaves this module except as a header value on the upstream request: it is
//! never a cache key, never formatted by `Debug`, never logged.

use std::fmt;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::HeaderMap;

use crate::error::ApiError;

/// The headers Cloudflare accepts credentials in, in the fixed order used for hashing.
pub const CREDENTIAL_HEADERS: [(&str, &str); 4] = [
    ("authorization", "Authorization"),
    ("x-auth-email", "X-Auth-Email"),
    ("x-auth-key", "X-Auth-Key"),
    ("x-auth-user-service-key", "X-Auth-User-Service-Key"),
];

/// [`CREDENTIAL_HEADERS`] as header names, in the same order.
const CREDENTIAL_HEADER_NAMES: [HeaderName; 4] = [
    AUTHORIZATION,
    HeaderName::from_static("x-auth-email"),
    HeaderName::from_static("x-auth-key"),
    HeaderName::from_static("x-auth-user-service-key"),
];

/// A secret string (the sidecar's API token). `Debug` and `Display` print a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret itself. Call sites are few and reviewed: building the upstream header, and
    /// nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The credential partition: the first 128 bits of a BLAKE3 keyed hash of the credential headers.
/// The key is random per process, or with a fleet tier derived from the fleet's secret key, so a
/// partition value cannot be used to test guesses of a token offline by anyone without that key. 128 bits make an accidental collision between
/// two credentials (which would cross-serve answers) practically impossible.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Partition(u128);

impl Partition {
    /// The partition's 16 bytes, for names in a shared tier (already a keyed hash).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_le_bytes()
    }

    /// The partition of [`Partition::to_bytes`] (an invalidation received from the fleet).
    pub fn from_bytes(bytes: [u8; 16]) -> Partition {
        Partition(u128::from_le_bytes(bytes))
    }
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short and non-reversible; enough to tell partitions apart in a debug log.
        write!(f, "Partition({:08x})", (self.0 >> 96) as u32)
    }
}

/// The per-process hashing key for partitions.
#[derive(Clone)]
pub struct PartitionKey([u8; 32]);

impl PartitionKey {
    pub fn random() -> PartitionKey {
        PartitionKey(rand::random())
    }

    /// A key every sidecar of a fleet derives alike from the fleet key, so that partitions match
    /// across hosts.
    pub fn from_bytes(key: [u8; 32]) -> PartitionKey {
        PartitionKey(key)
    }

    /// The partition of these credential headers (tests of the fleet's names use it).
    #[cfg(test)]
    pub(crate) fn partition_of_headers(&self, headers: &[(HeaderName, HeaderValue)]) -> Partition {
        self.partition_of(headers)
    }

    fn partition_of(&self, headers: &[(HeaderName, HeaderValue)]) -> Partition {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        for (name, value) in headers {
            // Lengths make the encoding unambiguous: no two header lists hash the same input.
            hasher.update(&(name.as_str().len() as u64).to_le_bytes());
            hasher.update(name.as_str().as_bytes());
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(value.as_bytes());
        }
        let digest = hasher.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest.as_bytes()[..16]);
        Partition(u128::from_le_bytes(first))
    }
}

impl fmt::Debug for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PartitionKey(<redacted>)")
    }
}

/// The credential headers to forward for one request, and their partition.
#[derive(Clone)]
pub struct Credentials {
    headers: Vec<(HeaderName, HeaderValue)>,
    partition: Partition,
}

impl Credentials {
    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// Header pairs for the upstream request, each marked sensitive so that hyper's HTTP/2 encoder
    /// never puts them in its compression table and `Debug` prints `Sensitive`.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Credentials")
            .field("headers", &names)
            .field("partition", &self.partition)
            .finish()
    }
}

/// Why a token cannot be the sidecar's own credential. It never holds the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    #[error("the API token is empty")]
    Empty,
    #[error("the API token contains characters that cannot be sent in an HTTP header")]
    NotAHeaderValue,
}

/// The sidecar's own credential, used for requests that carry none.
#[derive(Clone)]
pub struct FallbackToken {
    header: HeaderValue,
}

impl FallbackToken {
    /// Builds `Authorization: Bearer <token>`. The error never contains the token.
    pub fn new(token: &Secret) -> Result<FallbackToken, InvalidToken> {
        let token = token.expose().trim();
        if token.is_empty() {
            return Err(InvalidToken::Empty);
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| InvalidToken::NotAHeaderValue)?;
        header.set_sensitive(true);
        Ok(FallbackToken { header })
    }
}

impl fmt::Debug for FallbackToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FallbackToken(<redacted>)")
    }
}

/// Takes the credential headers a request carries, or the fallback token when it carries none.
///
/// Every credential header present is forwarded and hashed, so two callers share a partition only
/// when they send exactly the same credential headers. A repeated credential header is rejected:
/// which copy Cloudflare would honour is not documented, and guessing could cross partitions.
pub fn extract(
    request_headers: &HeaderMap,
    fallback: Option<&FallbackToken>,
    key: &PartitionKey,
) -> Result<Credentials, ApiError> {
    let mut headers = Vec::with_capacity(2);
    for (name, (_, display)) in CREDENTIAL_HEADER_NAMES.iter().zip(CREDENTIAL_HEADERS) {
        // A `HeaderName` is looked up as it is; a `&str` would be parsed first, on every request.
        let mut values = request_headers.get_all(name).iter();
        let Some(value) = values.next() else {
            continue;
        };
        if values.next().is_some() {
            return Err(ApiError::InvalidCredentialHeaders { header: display });
        }
        let mut value = value.clone();
        value.set_sensitive(true);
        headers.push((name.clone(), value));
    }
    if headers.is_empty() {
        let Some(fallback) = fallback else {
            return Err(ApiError::MissingCredentials);
        };
        headers.push((AUTHORIZATION, fallback.header.clone()));
    }
    let partition = key.partition_of(&headers);
    Ok(Credentials { headers, partition })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("valid header"));
        }
        map
    }

    fn partition(pairs: &[(&'static str, &str)], key: &PartitionKey) -> Partition {
        extract(&headers(pairs), None, key)
            .expect("credentials present")
            .partition()
    }

    #[test]
    fn header_names_match_the_listed_headers() {
        for (name, (lower, _)) in CREDENTIAL_HEADER_NAMES.iter().zip(CREDENTIAL_HEADERS) {
            assert_eq!(name.as_str(), lower);
        }
    }

    #[test]
    fn same_credential_same_partition_different_credential_different_partition() {
        let key = PartitionKey::random();
        let a = partition(&[("authorization", "Bearer token-a")], &key);
        assert_eq!(a, partition(&[("authorization", "Bearer token-a")], &key));
        assert_ne!(a, partition(&[("authorization", "Bearer token-b")], &key));
        let email_key = partition(
            &[("x-auth-email", "a@example.com"), ("x-auth-key", "k1")],
            &key,
        );
        assert_ne!(
            email_key,
            partition(
                &[("x-auth-email", "a@example.com"), ("x-auth-key", "k2")],
                &key
            )
        );
        assert_ne!(
            email_key,
            partition(
                &[("x-auth-email", "b@example.com"), ("x-auth-key", "k1")],
                &key
            )
        );
        // The same key with a bearer token added is a different credential set.
        assert_ne!(
            email_key,
            partition(
                &[
                    ("x-auth-email", "a@example.com"),
                    ("x-auth-key", "k1"),
                    ("authorization", "Bearer t")
                ],
                &key
            )
        );
    }

    #[test]
    fn header_boundaries_are_unambiguous() {
        let key = PartitionKey::random();
        let split_one = partition(&[("x-auth-email", "ab"), ("x-auth-key", "c")], &key);
        let split_two = partition(&[("x-auth-email", "a"), ("x-auth-key", "bc")], &key);
        assert_ne!(split_one, split_two);
        // The same value under another header name is another partition.
        assert_ne!(
            partition(&[("x-auth-key", "same")], &key),
            partition(&[("x-auth-user-service-key", "same")], &key)
        );
    }

    #[test]
    fn partitions_depend_on_the_process_key() {
        let pairs = [("authorization", "Bearer token-a")];
        assert_ne!(
            partition(&pairs, &PartitionKey::random()),
            partition(&pairs, &PartitionKey::random())
        );
    }

    #[test]
    fn unrelated_headers_do_not_change_the_partition() {
        let key = PartitionKey::random();
        let plain = partition(&[("authorization", "Bearer t")], &key);
        let mut with_extras = headers(&[("authorization", "Bearer t")]);
        with_extras.insert("x-stainless-retry-count", HeaderValue::from_static("1"));
        with_extras.insert("api-version", HeaderValue::from_static("2026-11-28"));
        with_extras.insert("user-agent", HeaderValue::from_static("Cloudflare/JS 5.0"));
        let extracted = extract(&with_extras, None, &key).expect("credentials");
        assert_eq!(extracted.partition(), plain);
        assert_eq!(extracted.headers().len(), 1);
    }

    #[test]
    fn missing_credentials_use_the_fallback_or_fail() {
        let key = PartitionKey::random();
        assert_eq!(
            extract(&HeaderMap::new(), None, &key).map(|c| c.partition()),
            Err(ApiError::MissingCredentials)
        );
        let fallback = FallbackToken::new(&Secret::new("sidecar-token".into())).expect("valid");
        let used = extract(&HeaderMap::new(), Some(&fallback), &key).expect("fallback");
        assert_eq!(used.headers()[0].0, AUTHORIZATION);
        assert_eq!(used.headers()[0].1.as_bytes(), b"Bearer sidecar-token");
        // A caller that sends the same bearer token explicitly shares the partition: same credential.
        assert_eq!(
            used.partition(),
            partition(&[("authorization", "Bearer sidecar-token")], &key)
        );
        // A caller's own credential wins over the fallback.
        let own = extract(
            &headers(&[("authorization", "Bearer mine")]),
            Some(&fallback),
            &key,
        )
        .expect("own");
        assert_eq!(own.headers()[0].1.as_bytes(), b"Bearer mine");
    }

    #[test]
    fn repeated_credential_headers_are_rejected() {
        let key = PartitionKey::random();
        let repeated = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(
            extract(&repeated, None, &key).map(|c| c.partition()),
            Err(ApiError::InvalidCredentialHeaders {
                header: "Authorization"
            })
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let key = PartitionKey::random();
        let secret = Secret::new("super-secret-token".into());
        let fallback = FallbackToken::new(&secret).expect("valid");
        let credentials = extract(
            &headers(&[("authorization", "Bearer super-secret-token")]),
            None,
            &key,
        )
        .expect("credentials");
        for text in [
            format!("{secret:?}"),
            format!("{secret}"),
            format!("{fallback:?}"),
            format!("{credentials:?}"),
            format!("{key:?}"),
            format!("{:?}", credentials.headers()),
        ] {
            assert!(!text.contains("super-secret-token"), "{text}");
        }
    }

    /// Pins what each redacting `Debug`/`Display` prints: a placeholder naming the type, never the
    /// secret and never nothing (a formatter replaced by an empty one, or one that leaks the value,
    /// fails here).
    #[test]
    fn redacting_formatters_print_their_placeholders() {
        let key = PartitionKey::random();
        let secret = Secret::new("super-secret-token".into());
        let fallback = FallbackToken::new(&secret).expect("valid");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{fallback:?}"), "FallbackToken(<redacted>)");
        assert_eq!(format!("{key:?}"), "PartitionKey(<redacted>)");

        let credentials = extract(
            &headers(&[
                ("x-auth-email", "someone@example.com"),
                ("x-auth-key", "super-secret-token"),
            ]),
            None,
            &key,
        )
        .expect("credentials");
        let partition = credentials.partition();
        // The partition prints its top 32 bits (its first four big-endian bytes) as eight hex
        // digits: short and one-way.
        let top: String = partition.0.to_be_bytes()[..4]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(format!("{partition:?}"), format!("Partition({top})"));
        // The credentials print the header names and the partition, never the values.
        assert_eq!(
            format!("{credentials:?}"),
            format!(
                "Credentials {{ headers: [\"x-auth-email\", \"x-auth-key\"], partition: {partition:?} }}"
            )
        );
    }

    /// Two credentials' partitions print differently, so a debug log can tell them apart (a
    /// formatter that printed the same bits for every partition, e.g. the low end shifted away,
    /// fails here; two random 32-bit prefixes collide once in four billion runs).
    #[test]
    fn different_partitions_print_differently() {
        let key = PartitionKey::random();
        let a = partition(&[("authorization", "Bearer token-a")], &key);
        let b = partition(&[("authorization", "Bearer token-b")], &key);
        assert_ne!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn fallback_token_errors_do_not_echo_the_token() {
        let error =
            FallbackToken::new(&Secret::new("bad\ntoken-value".into())).expect_err("invalid");
        assert!(!error.to_string().contains("token-value"));
        assert!(FallbackToken::new(&Secret::new("   ".into())).is_err());
    }
}
