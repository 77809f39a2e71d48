//! The rules between settings, and the secrets: turns merged [`Settings`] into the typed
//! [`Config`] the program runs with (limits, policies, the upstream base), and reads the token
//! files. Values are already parsed one by one; an error names the key. Never prints a secret.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::table::Settings;
use super::{Config, ConfigError, TOKEN_ENV};
use crate::budget::BudgetPolicy;
use crate::cache::TtlPolicy;
use crate::credentials::{FallbackToken, Secret};
use crate::fleet::{FleetKey, FleetSettings};
use crate::proxy::RequestLimits;
use crate::ratelimit::Reserves;
use crate::resilience::BreakerPolicy;
use crate::server::{ListenAddr, ServerLimits, UnixSocketSettings};
use crate::upstream::{TlsSettings, UpstreamBase};

/// The most retries a lookup may make: each one spends budget and time.
const MAX_UPSTREAM_RETRIES: u32 = 2;

/// What the settings point at rather than hold: the two tokens, read from their files (or, for
/// the sidecar's token, from `CLOUDFLARE_API_TOKEN`), the extra CA file's certificates as a
/// hash, so that a reload can tell that the file changed under an unchanged setting, the Redis
/// password and the fleet key.
#[derive(Clone, Debug, Default)]
pub(crate) struct Secrets {
    pub token: Option<Secret>,
    pub admin_token: Option<Secret>,
    pub extra_ca: Option<blake3::Hash>,
    pub redis_password: Option<Secret>,
    pub fleet_key: Option<FleetKey>,
}

/// Reads what the settings name on disk: the token files, and the extra CA file (checked here
/// so that a reload keeping the running TLS settings need not read it again).
pub(crate) fn read_secrets(
    settings: &Settings,
    token_env: Option<String>,
) -> Result<Secrets, ConfigError> {
    let extra_ca = match &settings.tls_extra_ca_file {
        Some(path) => {
            let certificates = crate::upstream::read_ca_file(path)
                .map_err(|problem| ConfigError::new("tls_extra_ca_file", problem.to_string()))?;
            let mut hasher = blake3::Hasher::new();
            for certificate in &certificates {
                hasher.update(certificate.as_ref());
            }
            Some(hasher.finalize())
        }
        None => None,
    };
    let admin_token = match &settings.admin_token_file {
        Some(path) => Some(read_secret_file("admin_token_file", path)?),
        None => None,
    };
    let token = match &settings.token_file {
        Some(path) => Some(read_secret_file("token_file", path)?),
        None => token_env
            .filter(|value| !value.trim().is_empty())
            .map(|value| Secret::new(value.trim().to_owned())),
    };
    if let Some(token) = &token {
        FallbackToken::new(token).map_err(|problem| {
            ConfigError::new(token_source(&settings.token_file), problem.to_string())
        })?;
    }
    let redis_password = match &settings.redis_password_file {
        Some(path) => Some(read_secret_file("redis_password_file", path)?),
        None => None,
    };
    let fleet_key = match &settings.fleet_key_file {
        Some(path) => Some(
            FleetKey::read(path).map_err(|problem| ConfigError::new("fleet_key_file", problem))?,
        ),
        None => None,
    };
    Ok(Secrets {
        token,
        admin_token,
        extra_ca,
        redis_password,
        fleet_key,
    })
}

/// The fleet tier's settings, when `redis_url` is set: a fleet key is then required (partitions
/// and every Redis key derive from it), and the timings must make sense together.
fn fleet_settings(
    settings: &Settings,
    secrets: &Secrets,
) -> Result<Option<FleetSettings>, ConfigError> {
    let Some(redis_url) = &settings.redis_url else {
        return Ok(None);
    };
    let Some(fleet_key) = secrets.fleet_key.clone() else {
        return Err(ConfigError::new(
            "fleet_key_file",
            "is required while redis_url is set: the fleet's partitions, Redis keys and value encryption are derived from it",
        ));
    };
    let redis_timeout = not_zero("redis_timeout", settings.redis_timeout)?;
    let lease = not_zero("fleet_lease", settings.fleet_lease)?;
    if lease <= redis_timeout {
        return Err(ConfigError::new(
            "fleet_lease",
            format!(
                "{} is not longer than redis_timeout ({}): a lease would expire before it could be renewed",
                humantime::format_duration(lease),
                humantime::format_duration(redis_timeout)
            ),
        ));
    }
    Ok(Some(FleetSettings {
        redis_url: redis_url.clone(),
        redis_password: secrets.redis_password.clone(),
        fleet_key,
        fleet_size: settings.fleet_size,
        redis_timeout,
        lease,
    }))
}

fn token_source(token_file: &Option<PathBuf>) -> &'static str {
    if token_file.is_some() {
        "token_file"
    } else {
        TOKEN_ENV
    }
}

/// Reads a token from a file (a mounted secret), without its trailing newline. The error names
/// the key and the file, never its content.
pub fn read_secret_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigError::new(key, format!("cannot read {}: {error}", path.display()))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::new(
            key,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(Secret::new(token.to_owned()))
}

fn not_zero(key: &str, duration: Duration) -> Result<Duration, ConfigError> {
    if duration.is_zero() {
        return Err(ConfigError::new(key, "must be greater than 0s"));
    }
    Ok(duration)
}

/// An HTTP/2 flow-control window: at least the protocol's initial 65,535 bytes (a connection's
/// window cannot start lower), at most 16 MiB (what one stream or connection may hold unread).
fn http2_window(key: &str, bytes: u32) -> Result<u32, ConfigError> {
    const RANGE: std::ops::RangeInclusive<u32> = 65_535..=16 * 1024 * 1024;
    if RANGE.contains(&bytes) {
        Ok(bytes)
    } else {
        Err(ConfigError::new(
            key,
            format!("{bytes} is outside 65535..=16777216 bytes"),
        ))
    }
}

/// Pure: applies the rules between settings and builds the typed configuration.
pub(crate) fn build(
    settings: Settings,
    secrets: Secrets,
    dev: bool,
) -> Result<Config, ConfigError> {
    let server_defaults = ServerLimits::default();
    let header_read_timeout = not_zero("header_read_timeout", settings.header_read_timeout)?;
    let idle_timeout = not_zero("idle_timeout", settings.idle_timeout)?;
    let request_limits = RequestLimits {
        max_uri_bytes: settings.max_uri_bytes.get(),
        max_header_bytes: settings.max_header_bytes.get(),
        max_request_headers: settings.max_request_headers.get(),
        max_pending_lookups: settings.max_pending_lookups.get(),
        max_waiting_lookups: settings.max_waiting_lookups.get(),
        max_pending_writes: settings.max_pending_writes.get(),
        body_read_timeout: not_zero("body_read_timeout", settings.body_read_timeout)?,
    };
    let server_limits = ServerLimits {
        max_connections: settings.max_connections.get(),
        header_read_timeout,
        idle_timeout,
        // hyper's own buffers stay above the handler's limits, so that requests just over them
        // still get an envelope rather than hyper's bodiless 414/431.
        max_head_bytes: (request_limits.max_uri_bytes + request_limits.max_header_bytes)
            .saturating_mul(2)
            .max(server_defaults.max_head_bytes),
        max_headers: request_limits
            .max_request_headers
            .saturating_mul(2)
            .max(server_defaults.max_headers),
        http2_max_concurrent_streams: settings.http2_max_concurrent_streams.get(),
        http2_stream_window: http2_window("http2_stream_window", settings.http2_stream_window)?,
        http2_connection_window: http2_window(
            "http2_connection_window",
            settings.http2_connection_window,
        )?,
    };

    let admin_listen = settings.admin_listen;
    if settings.listen == ListenAddr::Tcp(admin_listen) && admin_listen.port() != 0 {
        return Err(ConfigError::new(
            "admin_listen",
            format!("{admin_listen} is the lookup listener's address; the admin listener needs its own port"),
        ));
    }
    if !admin_listen.ip().is_loopback() && secrets.admin_token.is_none() {
        return Err(ConfigError::new(
            "admin_listen",
            format!("{admin_listen} is reachable beyond this host; set admin_token_file so that purge and metrics need a token"),
        ));
    }

    let upstream = UpstreamBase::parse(&settings.upstream, settings.allow_insecure_upstream)
        .map_err(|problem| {
            ConfigError::new("upstream", format!("{:?}: {problem}", settings.upstream))
        })?;

    if settings.upstream_refresh_reserve < settings.upstream_reserve {
        return Err(ConfigError::new(
            "upstream_refresh_reserve",
            format!(
                "{} is less than upstream_reserve ({}): background refreshes would spend what callers leave",
                settings.upstream_refresh_reserve, settings.upstream_reserve
            ),
        ));
    }
    let budget = BudgetPolicy {
        requests: settings.upstream_budget_requests,
        period: not_zero("upstream_budget_period", settings.upstream_budget_period)?,
        burst: settings.upstream_budget_burst,
        reserves: Reserves {
            caller: settings.upstream_reserve,
            refresh: settings.upstream_refresh_reserve,
        },
    };
    if settings.upstream_retries > MAX_UPSTREAM_RETRIES {
        return Err(ConfigError::new(
            "upstream_retries",
            format!(
                "{} is more than {MAX_UPSTREAM_RETRIES}: each retry spends budget and time",
                settings.upstream_retries
            ),
        ));
    }
    let breaker = BreakerPolicy {
        failure_threshold: settings.breaker_failures,
        cool_down: settings.breaker_cool_down,
    };
    if breaker.failure_threshold > 0 && breaker.cool_down.is_zero() {
        return Err(ConfigError::new(
            "breaker_cool_down",
            "must be greater than 0s while the breaker is on",
        ));
    }
    let connect_timeout = not_zero("connect_timeout", settings.connect_timeout)?;
    let request_timeout = not_zero("request_timeout", settings.request_timeout)?;
    if connect_timeout > request_timeout {
        return Err(ConfigError::new(
            "connect_timeout",
            format!(
                "{} is longer than request_timeout ({}), which bounds the whole request",
                humantime::format_duration(connect_timeout),
                humantime::format_duration(request_timeout)
            ),
        ));
    }

    let fleet = fleet_settings(&settings, &secrets)?;

    Ok(Config {
        fleet,
        listen: settings.listen.clone(),
        unix_socket: UnixSocketSettings {
            mode: settings.unix_socket_mode.0,
            group: settings.unix_socket_group.clone(),
        },
        server_limits,
        request_limits,
        allowed_accounts: settings.allowed_accounts.clone(),
        tls: TlsSettings {
            roots: settings.tls_roots,
            extra_ca_file: settings.tls_extra_ca_file.clone(),
        },
        // A proxy the upstream's host is exempt from is no proxy at all for this program.
        https_proxy: settings.https_proxy.clone().filter(|_| {
            !settings
                .no_proxy
                .as_ref()
                .is_some_and(|exempt| exempt.matches(upstream.host()))
        }),
        admin_listen,
        admin_token: secrets.admin_token,
        extra_ca: secrets.extra_ca,
        admin_token_file: settings.admin_token_file.clone(),
        log_level: settings.log_level.clone().map(|filter| filter.0),
        upstream,
        ttl: TtlPolicy {
            positive: settings.cache_ttl,
            negative: settings.negative_ttl,
            stale_while_revalidate: settings.stale_while_revalidate,
            stale_if_error: settings.stale_if_error,
        },
        cache_max_bytes: settings.cache_max_bytes,
        connect_timeout,
        request_timeout,
        stale_after_slow_upstream: settings.stale_after_slow_upstream,
        max_upstream_connections: settings.max_upstream_connections,
        token: secrets.token,
        token_file: settings.token_file.clone(),
        shutdown_grace: settings.shutdown_grace,
        log_format: settings.log_format,
        dev,
        writes_with_sidecar_token: settings.writes_with_sidecar_token,
        budget,
        upstream_retries: settings.upstream_retries,
        breaker,
        settings,
    })
}
