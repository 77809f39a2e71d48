//! The fleet tier's settings as the program runs with them: the Redis URL (its password redacted
//! in every `Debug` and `Display`), the fleet key read from its file, and the timings. It parses
//! and checks values one by one; it must not connect to anything or print a secret.

use std::fmt;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use crate::credentials::Secret;

/// The fewest bytes of secret material a fleet key file must hold, after trimming whitespace.
pub const MIN_FLEET_KEY_BYTES: usize = 32;

/// Where Redis is: `redis://`, `rediss://` (TLS over rustls) or `unix://`, possibly with a user
/// and password. The password never leaves this type except in [`RedisUrl::connection_url`],
/// which only the Redis client reads.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    url: url::Url,
}

/// Why a text is not a Redis URL. It never holds the text, which may carry a password.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedisUrlError {
    #[error("not a valid URL (expected redis://host:port, rediss://host:port or unix:///path)")]
    NotAUrl,
    #[error("must be a redis://, rediss:// or unix:// URL")]
    UnsupportedScheme,
    #[error("must name a host")]
    NoHost,
    #[error("a unix:// URL must name the socket's path")]
    NoPath,
    #[error("is not accepted by the Redis client")]
    Rejected,
}

impl RedisUrl {
    /// Pure: checks the scheme and the host (or socket path), and that redis-rs accepts it.
    pub fn parse(text: &str) -> Result<RedisUrl, RedisUrlError> {
        let url = url::Url::parse(text.trim()).map_err(|_| RedisUrlError::NotAUrl)?;
        match url.scheme() {
            "redis" | "rediss" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(RedisUrlError::NoHost);
                }
            }
            "unix" => {
                if url.path().is_empty() || url.path() == "/" {
                    return Err(RedisUrlError::NoPath);
                }
            }
            _ => return Err(RedisUrlError::UnsupportedScheme),
        }
        let parsed = RedisUrl { url };
        redis::Client::open(parsed.url.as_str()).map_err(|_| RedisUrlError::Rejected)?;
        Ok(parsed)
    }

    /// Whether the connection is TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.url.scheme() == "rediss"
    }

    /// The URL the Redis client connects with: `password` (from `redis_password_file`) replaces
    /// the URL's own. This is the only way out for the password; never log the result.
    pub fn connection_url(&self, password: Option<&Secret>) -> String {
        let Some(password) = password else {
            return self.url.to_string();
        };
        let mut url = self.url.clone();
        if url.scheme() == "unix" {
            // redis-rs reads a Unix socket's credentials from the query (`user`, `pass`).
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(name, _)| name != "pass")
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .append_pair("pass", password.expose());
        } else if url.set_password(Some(password.expose())).is_err() {
            // A URL that can hold a host can hold a password; `parse` refused the others.
            return self.url.to_string();
        }
        url.to_string()
    }

    /// The URL with every credential replaced by `***`.
    fn redacted(&self) -> String {
        let mut url = self.url.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        let hidden: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if name == "pass" {
                    "***".to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        if !hidden.is_empty() {
            url.query_pairs_mut().clear().extend_pairs(hidden);
        }
        url.to_string()
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The fleet's shared secret: the bytes of the fleet key file, surrounding whitespace trimmed.
/// Every fleet key (partitions, the fleet id, entry names, the value cipher) is derived from it.
#[derive(Clone)]
pub struct FleetKey(Vec<u8>);

impl FleetKey {
    /// Pure: at least [`MIN_FLEET_KEY_BYTES`] bytes after trimming ASCII whitespace, in any
    /// encoding. The error says how short, never what the file holds.
    pub fn from_bytes(bytes: &[u8]) -> Result<FleetKey, String> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_FLEET_KEY_BYTES {
            return Err(format!(
                "holds {} bytes of key material; at least {MIN_FLEET_KEY_BYTES} are needed (e.g. `head -c 32 /dev/urandom | base64`)",
                trimmed.len()
            ));
        }
        Ok(FleetKey(trimmed.to_vec()))
    }

    /// Reads the key from its file; the error names the file, never its content.
    pub fn read(path: &Path) -> Result<FleetKey, String> {
        let bytes = std::fs::read(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        FleetKey::from_bytes(&bytes).map_err(|problem| format!("{} {problem}", path.display()))
    }

    pub(crate) fn material(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetKey(<redacted>)")
    }
}

impl PartialEq for FleetKey {
    fn eq(&self, other: &Self) -> bool {
        // Only configuration reloads compare keys; timing does not matter there.
        self.0 == other.0
    }
}

/// Everything the fleet tier runs with; `None` in the configuration when `redis_url` is unset.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetSettings {
    pub redis_url: RedisUrl,
    /// From `redis_password_file`; wins over the URL's password.
    pub redis_password: Option<Secret>,
    pub fleet_key: FleetKey,
    /// How many sidecars share one credential's budget.
    pub fleet_size: NonZeroU32,
    /// The deadline of every single Redis call.
    pub redis_timeout: Duration,
    /// The fetch lease's time to live.
    pub lease: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_are_checked_and_their_passwords_never_printed() {
        for good in [
            "redis://127.0.0.1:6379",
            "redis://user:hunter2@cache.internal:6379/2",
            "rediss://cache.internal:6380",
            "unix:///run/redis.sock",
        ] {
            let url = RedisUrl::parse(good).unwrap_or_else(|error| panic!("{good}: {error}"));
            assert!(!format!("{url:?} {url}").contains("hunter2"), "{url}");
        }
        assert_eq!(
            RedisUrl::parse("http://cache:6379"),
            Err(RedisUrlError::UnsupportedScheme)
        );
        assert_eq!(RedisUrl::parse("not a url"), Err(RedisUrlError::NotAUrl));
        assert_eq!(RedisUrl::parse("unix://"), Err(RedisUrlError::NoPath));
    }

    #[test]
    fn the_password_file_wins_over_the_urls_password() {
        let password = Secret::new("from-file".to_owned());
        let tcp = RedisUrl::parse("redis://user:in-url@cache:6379").expect("valid");
        let connect = tcp.connection_url(Some(&password));
        assert!(connect.contains("from-file") && !connect.contains("in-url"));
        let unix = RedisUrl::parse("unix:///run/redis.sock?pass=in-url&db=1").expect("valid");
        let connect = unix.connection_url(Some(&password));
        assert!(connect.contains("pass=from-file") && connect.contains("db=1"));
        assert!(!connect.contains("in-url"));
        assert!(!format!("{unix}").contains("in-url"));
    }

    #[test]
    fn a_fleet_key_needs_32_bytes_after_trimming() {
        assert!(FleetKey::from_bytes(&[b'k'; 32]).is_ok());
        let short = FleetKey::from_bytes(format!("  {}\n", "k".repeat(31)).as_bytes());
        let problem = short.expect_err("31 bytes");
        assert!(problem.contains("31 bytes") && !problem.contains("kkk"));
        let key = FleetKey::from_bytes(&[b'z'; 40]).expect("valid");
        assert_eq!(format!("{key:?}"), "FleetKey(<redacted>)");
    }
}
