//! Configuration: command-line flags, `ZT_SIDECAR_*` environment variables and a TOML file, merged
//! with precedence flags > environment > file > defaults, then validated into types that can only
//! hold valid values. Errors name the key and the problem; secrets are never printed.

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::budget::BudgetPolicy;
use crate::cache::TtlPolicy;
use crate::credentials::Secret;
use crate::proxy::RequestLimits;
use crate::resilience::BreakerPolicy;
use crate::routes::AccountId;
use crate::server::{ListenAddr, ServerLimits, UnixSocketSettings};
use crate::upstream::{ProxyUrl, TlsRoots, TlsSettings, UpstreamBase, DEFAULT_UPSTREAM};

/// Environment variable holding the sidecar's own Cloudflare API token.
pub const TOKEN_ENV: &str = "CLOUDFLARE_API_TOKEN";

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(10);
const DEFAULT_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_STALE_WHILE_REVALIDATE: Duration = Duration::from_secs(30);
const DEFAULT_BUDGET_REQUESTS: u32 = 1000;
const DEFAULT_BUDGET_PERIOD: Duration = Duration::from_secs(300);
const DEFAULT_BUDGET_BURST: u32 = 50;
const DEFAULT_UPSTREAM_RETRIES: u32 = 2;
const MAX_UPSTREAM_RETRIES: u32 = 2;
const DEFAULT_BREAKER_FAILURES: u32 = 5;
const DEFAULT_BREAKER_COOL_DOWN: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Command-line flags. Every value flag can also come from its `ZT_SIDECAR_*` variable; none has a
/// clap default, so that an unset flag falls through to the file and then to the built-in default.
#[derive(Parser, Debug, Default)]
#[command(
    name = "zt-risk-sidecar",
    version,
    about = "Loopback caching sidecar for Cloudflare's Zero Trust risk-score integration lookups",
    after_help = "The sidecar's own token comes from CLOUDFLARE_API_TOKEN or token_file; \
                  callers' own credential headers take precedence."
)]
pub struct Cli {
    /// TOML configuration file (see config/sidecar.toml).
    #[arg(long, env = "ZT_SIDECAR_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Run against a built-in simulated Cloudflare API: no token, no network needed.
    #[arg(long)]
    pub dev: bool,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ZT_SIDECAR_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Mode of the Unix domain socket file when listen is unix:/path, in octal [default: 0660].
    #[arg(long, env = "ZT_SIDECAR_UNIX_SOCKET_MODE", value_name = "OCTAL")]
    pub unix_socket_mode: Option<String>,
    /// Group that owns the Unix domain socket file (name or number) [default: the process's].
    #[arg(long, env = "ZT_SIDECAR_UNIX_SOCKET_GROUP", value_name = "GROUP")]
    pub unix_socket_group: Option<String>,
    /// Open connections at most; more get a fast 503 [default: 1024].
    #[arg(long, env = "ZT_SIDECAR_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Lookups waiting on Cloudflare at most; more get a fast 503 (hits are never limited) [default: 1024].
    #[arg(long, env = "ZT_SIDECAR_MAX_PENDING_LOOKUPS", value_name = "N")]
    pub max_pending_lookups: Option<usize>,
    /// Time to receive a request head; also the HTTP/1.1 keep-alive idle limit [default: 10s].
    #[arg(long, env = "ZT_SIDECAR_HEADER_READ_TIMEOUT", value_name = "DURATION")]
    pub header_read_timeout: Option<String>,
    /// Close a connection with no traffic for this long [default: 60s].
    #[arg(long, env = "ZT_SIDECAR_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Time for a request body to arrive whole; 408 beyond [default: 10s].
    #[arg(long, env = "ZT_SIDECAR_BODY_READ_TIMEOUT", value_name = "DURATION")]
    pub body_read_timeout: Option<String>,
    /// Longest request target in bytes (414 beyond) [default: 4096].
    #[arg(long, env = "ZT_SIDECAR_MAX_URI_BYTES", value_name = "BYTES")]
    pub max_uri_bytes: Option<usize>,
    /// Largest total of request header names and values in bytes (431 beyond) [default: 16384].
    #[arg(long, env = "ZT_SIDECAR_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most request headers (431 beyond) [default: 64].
    #[arg(long, env = "ZT_SIDECAR_MAX_REQUEST_HEADERS", value_name = "N")]
    pub max_request_headers: Option<usize>,
    /// Only these accounts may be looked up (repeat the flag, or comma-separate) [default: any].
    #[arg(
        long = "allowed-account",
        env = "ZT_SIDECAR_ALLOWED_ACCOUNTS",
        value_delimiter = ',',
        value_name = "ACCOUNT_ID"
    )]
    pub allowed_accounts: Option<Vec<String>>,
    /// Root certificates for Cloudflare's TLS: webpki (built in) or system [default: webpki].
    #[arg(long, env = "ZT_SIDECAR_TLS_ROOTS", value_name = "ROOTS")]
    pub tls_roots: Option<String>,
    /// Extra CA certificates (PEM) trusted for Cloudflare's TLS, e.g. a TLS-inspecting egress.
    #[arg(long, env = "ZT_SIDECAR_TLS_EXTRA_CA_FILE", value_name = "PATH")]
    pub tls_extra_ca_file: Option<PathBuf>,
    /// HTTP proxy (http://host:port) to tunnel HTTPS to Cloudflare through [default: none].
    #[arg(long, env = "HTTPS_PROXY", value_name = "URL", hide_env_values = true)]
    pub https_proxy: Option<String>,
    /// Address of the admin listener (metrics, health, purge) [default: 127.0.0.1:9901].
    #[arg(long, env = "ZT_SIDECAR_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// File holding the bearer token the admin listener requires (none: no token required).
    #[arg(long, env = "ZT_SIDECAR_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Log filter, e.g. info or zt_risk_sidecar=debug,info [default: RUST_LOG, else info].
    #[arg(long, env = "ZT_SIDECAR_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Cloudflare API base URL [default: https://api.cloudflare.com/client/v4].
    #[arg(long, env = "ZT_SIDECAR_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,
    /// Allow a plain http:// upstream on a non-loopback host.
    #[arg(long, env = "ZT_SIDECAR_ALLOW_INSECURE_UPSTREAM", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub allow_insecure_upstream: Option<bool>,
    /// How long a found integration stays fresh [default: 60s].
    #[arg(long, env = "ZT_SIDECAR_CACHE_TTL", value_name = "DURATION")]
    pub cache_ttl: Option<String>,
    /// How long "not found" stays fresh [default: 10s].
    #[arg(long, env = "ZT_SIDECAR_NEGATIVE_TTL", value_name = "DURATION")]
    pub negative_ttl: Option<String>,
    /// Bound of the cache in bytes (64MiB, 1048576, ...) [default: 64MiB].
    #[arg(long, env = "ZT_SIDECAR_CACHE_MAX_BYTES", value_name = "BYTES")]
    pub cache_max_bytes: Option<String>,
    /// Upstream connect timeout [default: 5s].
    #[arg(long, env = "ZT_SIDECAR_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// Whole upstream request timeout [default: 15s].
    #[arg(long, env = "ZT_SIDECAR_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// File holding the sidecar's API token (e.g. a mounted secret).
    #[arg(long, env = "ZT_SIDECAR_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// How long in-flight requests may take to finish on shutdown [default: 10s].
    #[arg(long, env = "ZT_SIDECAR_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<String>,
    /// Log format [default: pretty].
    #[arg(long, env = "ZT_SIDECAR_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Serve an expired entry when a refresh fails, up to this long past expiry; 0s: off [default: 24h].
    #[arg(long, env = "ZT_SIDECAR_STALE_IF_ERROR", value_name = "DURATION")]
    pub stale_if_error: Option<String>,
    /// Serve an expired entry at once and refresh it in the background, up to this long past
    /// expiry; 0s: off [default: 30s].
    #[arg(
        long,
        env = "ZT_SIDECAR_STALE_WHILE_REVALIDATE",
        value_name = "DURATION"
    )]
    pub stale_while_revalidate: Option<String>,
    /// Upstream calls each credential may make per budget period [default: 1000].
    #[arg(long, env = "ZT_SIDECAR_UPSTREAM_BUDGET_REQUESTS", value_name = "N")]
    pub upstream_budget_requests: Option<u32>,
    /// The budget period [default: 300s].
    #[arg(
        long,
        env = "ZT_SIDECAR_UPSTREAM_BUDGET_PERIOD",
        value_name = "DURATION"
    )]
    pub upstream_budget_period: Option<String>,
    /// Upstream calls a credential may make in a burst [default: 50].
    #[arg(long, env = "ZT_SIDECAR_UPSTREAM_BUDGET_BURST", value_name = "N")]
    pub upstream_budget_burst: Option<u32>,
    /// Retries after a connection failure or a 502/503/504, 0 to 2 [default: 2].
    #[arg(long, env = "ZT_SIDECAR_UPSTREAM_RETRIES", value_name = "N")]
    pub upstream_retries: Option<u32>,
    /// Consecutive upstream failures that open the circuit breaker; 0: off [default: 5].
    #[arg(long, env = "ZT_SIDECAR_BREAKER_FAILURES", value_name = "N")]
    pub breaker_failures: Option<u32>,
    /// How long the open breaker fails fast before letting one probe through [default: 10s].
    #[arg(long, env = "ZT_SIDECAR_BREAKER_COOL_DOWN", value_name = "DURATION")]
    pub breaker_cool_down: Option<String>,
}

/// The configuration file. Every key is optional; an unknown key is an error.
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub unix_socket_mode: Option<String>,
    pub unix_socket_group: Option<String>,
    pub max_connections: Option<usize>,
    pub max_pending_lookups: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub max_uri_bytes: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_request_headers: Option<usize>,
    pub allowed_accounts: Option<Vec<String>>,
    pub tls_roots: Option<String>,
    pub tls_extra_ca_file: Option<PathBuf>,
    pub https_proxy: Option<String>,
    pub admin_listen: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub upstream: Option<String>,
    pub allow_insecure_upstream: Option<bool>,
    pub cache_ttl: Option<String>,
    pub negative_ttl: Option<String>,
    pub cache_max_bytes: Option<ByteCount>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub token_file: Option<PathBuf>,
    pub shutdown_grace: Option<String>,
    pub log_format: Option<LogFormat>,
    pub stale_if_error: Option<String>,
    pub stale_while_revalidate: Option<String>,
    pub upstream_budget_requests: Option<u32>,
    pub upstream_budget_period: Option<String>,
    pub upstream_budget_burst: Option<u32>,
    pub upstream_retries: Option<u32>,
    pub breaker_failures: Option<u32>,
    pub breaker_cool_down: Option<String>,
}

/// A byte count written as an integer or a string with a unit (`"64MiB"`).
#[derive(Deserialize, Debug, PartialEq, Clone)]
#[serde(untagged)]
pub enum ByteCount {
    Number(u64),
    Text(String),
}

/// The validated configuration the program runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: ListenAddr,
    pub unix_socket: UnixSocketSettings,
    pub server_limits: ServerLimits,
    pub request_limits: RequestLimits,
    /// `None`: every account may be looked up.
    pub allowed_accounts: Option<Vec<AccountId>>,
    pub tls: TlsSettings,
    pub https_proxy: Option<ProxyUrl>,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<Secret>,
    pub admin_token_file: Option<PathBuf>,
    /// The log filter from the configuration; `None` leaves it to `RUST_LOG` (else `info`).
    pub log_level: Option<String>,
    pub upstream: UpstreamBase,
    pub ttl: TtlPolicy,
    pub cache_max_bytes: NonZeroU64,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub dev: bool,
    /// Whether writes without caller credentials go upstream with the sidecar's token.
    pub writes_with_sidecar_token: bool,
    pub budget: BudgetPolicy,
    pub upstream_retries: u32,
    pub breaker: BreakerPolicy,
}

/// A configuration error: which key, and what is wrong with it. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    fn new(key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.to_owned(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration error in `{}`: {}", self.key, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Reads the file named by the flags (if any), the token, and validates everything.
/// `token_env` is the value of `CLOUDFLARE_API_TOKEN`, passed in so tests need not touch the
/// process environment.
pub fn load(cli: &Cli, token_env: Option<String>) -> Result<Config, ConfigError> {
    let file = match &cli.config {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    resolve(cli, file, token_env)
}

/// Parses a configuration file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigError::new("config", format!("cannot read {}: {error}", path.display()))
    })?;
    parse_file(&text).map_err(|error| ConfigError {
        problem: format!("{} (in {})", error.problem, path.display()),
        ..error
    })
}

/// Parses configuration file text.
pub fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|error| {
        let message = error.message().to_owned();
        let start = error.span().map_or(0, |span| span.start.min(text.len()));
        let before = text.get(..start).unwrap_or("");
        let line_number = before.matches('\n').count() + 1;
        // The key is the one on the line the error points at; an unknown key is also named in
        // backticks in toml's message.
        let line_start = before.rfind('\n').map_or(0, |index| index + 1);
        let line = text
            .get(line_start..)
            .and_then(|rest| rest.lines().next())
            .unwrap_or("");
        let on_line = line
            .split_once('=')
            .map(|(key, _)| key.trim().trim_matches('"').trim())
            .filter(|key| !key.is_empty());
        let key = match on_line {
            Some(key) => key.to_owned(),
            None => key_named_in(&message)
                .filter(|key| !key.trim().is_empty())
                .unwrap_or_else(|| "config".to_owned()),
        };
        ConfigError::new(&key, format!("{message} at line {line_number}"))
    })
}

fn key_named_in(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let length = message[start..].find('`')?;
    Some(message[start..start + length].to_owned())
}

/// Merges flags (which clap already merged with the environment) over the file over defaults.
pub fn resolve(
    cli: &Cli,
    file: FileConfig,
    token_env: Option<String>,
) -> Result<Config, ConfigError> {
    let listen_text = pick(cli.listen.clone(), file.listen, DEFAULT_LISTEN.to_owned());
    let listen =
        ListenAddr::parse(&listen_text).map_err(|problem| ConfigError::new("listen", problem))?;
    let mode_text = pick(
        cli.unix_socket_mode.clone(),
        file.unix_socket_mode,
        "0660".to_owned(),
    );
    let mode = u32::from_str_radix(mode_text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| {
            ConfigError::new(
                "unix_socket_mode",
                format!("{mode_text:?} is not an octal file mode like 0660"),
            )
        })?;
    let unix_socket = UnixSocketSettings {
        mode,
        group: cli.unix_socket_group.clone().or(file.unix_socket_group),
    };
    let positive = |key: &str, value: usize| {
        if value == 0 {
            Err(ConfigError::new(key, "must be at least 1"))
        } else {
            Ok(value)
        }
    };
    let server_defaults = ServerLimits::default();
    let request_defaults = RequestLimits::default();
    let header_read_timeout = match cli.header_read_timeout.clone().or(file.header_read_timeout) {
        Some(text) => parse_duration("header_read_timeout", &text)?,
        None => server_defaults.header_read_timeout,
    };
    let idle_timeout = match cli.idle_timeout.clone().or(file.idle_timeout) {
        Some(text) => parse_duration("idle_timeout", &text)?,
        None => server_defaults.idle_timeout,
    };
    if header_read_timeout.is_zero() {
        return Err(ConfigError::new(
            "header_read_timeout",
            "must be greater than 0s",
        ));
    }
    if idle_timeout.is_zero() {
        return Err(ConfigError::new("idle_timeout", "must be greater than 0s"));
    }
    let body_read_timeout = match cli.body_read_timeout.clone().or(file.body_read_timeout) {
        Some(text) => parse_duration("body_read_timeout", &text)?,
        None => request_defaults.body_read_timeout,
    };
    if body_read_timeout.is_zero() {
        return Err(ConfigError::new(
            "body_read_timeout",
            "must be greater than 0s",
        ));
    }
    let request_limits = RequestLimits {
        body_read_timeout,
        max_uri_bytes: positive(
            "max_uri_bytes",
            pick(
                cli.max_uri_bytes,
                file.max_uri_bytes,
                request_defaults.max_uri_bytes,
            ),
        )?,
        max_header_bytes: positive(
            "max_header_bytes",
            pick(
                cli.max_header_bytes,
                file.max_header_bytes,
                request_defaults.max_header_bytes,
            ),
        )?,
        max_request_headers: positive(
            "max_request_headers",
            pick(
                cli.max_request_headers,
                file.max_request_headers,
                request_defaults.max_request_headers,
            ),
        )?,
        max_pending_lookups: positive(
            "max_pending_lookups",
            pick(
                cli.max_pending_lookups,
                file.max_pending_lookups,
                request_defaults.max_pending_lookups,
            ),
        )?,
        ..request_defaults
    };
    let server_limits = ServerLimits {
        max_connections: positive(
            "max_connections",
            pick(
                cli.max_connections,
                file.max_connections,
                server_defaults.max_connections,
            ),
        )?,
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
        ..server_defaults
    };
    let allowed_accounts = match cli.allowed_accounts.clone().or(file.allowed_accounts) {
        None => None,
        Some(texts) => Some(
            texts
                .iter()
                .map(|text| {
                    AccountId::parse(text.trim()).ok_or_else(|| {
                        ConfigError::new(
                            "allowed_accounts",
                            format!("{text:?} is not an account id (32 lowercase hex characters)"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let roots = match pick(cli.tls_roots.clone(), file.tls_roots, "webpki".to_owned()).as_str() {
        "webpki" => TlsRoots::Webpki,
        "system" => TlsRoots::System,
        other => {
            return Err(ConfigError::new(
                "tls_roots",
                format!("{other:?} is not webpki or system"),
            ))
        }
    };
    let tls = TlsSettings {
        roots,
        extra_ca_file: cli.tls_extra_ca_file.clone().or(file.tls_extra_ca_file),
    };
    if let Some(path) = &tls.extra_ca_file {
        crate::upstream::read_ca_file(path)
            .map_err(|problem| ConfigError::new("tls_extra_ca_file", problem))?;
    }
    let https_proxy = match cli.https_proxy.clone().or(file.https_proxy) {
        Some(text) if !text.trim().is_empty() => Some(
            ProxyUrl::parse(text.trim())
                .map_err(|problem| ConfigError::new("https_proxy", problem))?,
        ),
        _ => None,
    };

    let admin_text = pick(
        cli.admin_listen.clone(),
        file.admin_listen,
        DEFAULT_ADMIN_LISTEN.to_owned(),
    );
    let admin_listen: SocketAddr = admin_text.parse().map_err(|_| {
        ConfigError::new(
            "admin_listen",
            format!("{admin_text:?} is not an IP address and port (e.g. 127.0.0.1:9901)"),
        )
    })?;
    if listen == ListenAddr::Tcp(admin_listen) && admin_listen.port() != 0 {
        return Err(ConfigError::new(
            "admin_listen",
            format!("{admin_listen} is the lookup listener's address; the admin listener needs its own port"),
        ));
    }
    let admin_token_file = cli.admin_token_file.clone().or(file.admin_token_file);
    let admin_token = match &admin_token_file {
        Some(path) => Some(read_secret_file("admin_token_file", path)?),
        None => None,
    };
    if !admin_listen.ip().is_loopback() && admin_token.is_none() {
        return Err(ConfigError::new(
            "admin_listen",
            format!("{admin_listen} is reachable beyond this host; set admin_token_file so that purge and metrics need a token"),
        ));
    }
    let log_level = cli.log_level.clone().or(file.log_level);
    if let Some(filter) = &log_level {
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|error| {
            ConfigError::new(
                "log_level",
                format!("{filter:?} is not a log filter ({error})"),
            )
        })?;
    }

    let allow_insecure_upstream = pick(
        cli.allow_insecure_upstream,
        file.allow_insecure_upstream,
        false,
    );
    let upstream_text = pick(
        cli.upstream.clone(),
        file.upstream,
        DEFAULT_UPSTREAM.to_owned(),
    );
    let upstream = UpstreamBase::parse(&upstream_text, allow_insecure_upstream)
        .map_err(|problem| ConfigError::new("upstream", format!("{upstream_text:?}: {problem}")))?;

    let duration =
        |key: &str, flag: &Option<String>, file: Option<String>, default: Duration| match flag
            .clone()
            .or(file)
        {
            Some(text) => parse_duration(key, &text),
            None => Ok(default),
        };
    let positive = duration(
        "cache_ttl",
        &cli.cache_ttl,
        file.cache_ttl,
        DEFAULT_CACHE_TTL,
    )?;
    let negative = duration(
        "negative_ttl",
        &cli.negative_ttl,
        file.negative_ttl,
        DEFAULT_NEGATIVE_TTL,
    )?;
    let connect_timeout = duration(
        "connect_timeout",
        &cli.connect_timeout,
        file.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
    )?;
    let request_timeout = duration(
        "request_timeout",
        &cli.request_timeout,
        file.request_timeout,
        DEFAULT_REQUEST_TIMEOUT,
    )?;
    let shutdown_grace = duration(
        "shutdown_grace",
        &cli.shutdown_grace,
        file.shutdown_grace,
        DEFAULT_SHUTDOWN_GRACE,
    )?;
    let stale_if_error = duration(
        "stale_if_error",
        &cli.stale_if_error,
        file.stale_if_error,
        DEFAULT_STALE_IF_ERROR,
    )?;
    let stale_while_revalidate = duration(
        "stale_while_revalidate",
        &cli.stale_while_revalidate,
        file.stale_while_revalidate,
        DEFAULT_STALE_WHILE_REVALIDATE,
    )?;
    let budget_period = duration(
        "upstream_budget_period",
        &cli.upstream_budget_period,
        file.upstream_budget_period,
        DEFAULT_BUDGET_PERIOD,
    )?;
    if budget_period.is_zero() {
        return Err(ConfigError::new(
            "upstream_budget_period",
            "must be greater than 0s",
        ));
    }
    let non_zero = |key: &str, value: u32| {
        NonZeroU32::new(value).ok_or_else(|| ConfigError::new(key, "must be at least 1"))
    };
    let budget = BudgetPolicy {
        requests: non_zero(
            "upstream_budget_requests",
            pick(
                cli.upstream_budget_requests,
                file.upstream_budget_requests,
                DEFAULT_BUDGET_REQUESTS,
            ),
        )?,
        period: budget_period,
        burst: non_zero(
            "upstream_budget_burst",
            pick(
                cli.upstream_budget_burst,
                file.upstream_budget_burst,
                DEFAULT_BUDGET_BURST,
            ),
        )?,
    };
    let upstream_retries = pick(
        cli.upstream_retries,
        file.upstream_retries,
        DEFAULT_UPSTREAM_RETRIES,
    );
    if upstream_retries > MAX_UPSTREAM_RETRIES {
        return Err(ConfigError::new(
            "upstream_retries",
            format!("{upstream_retries} is more than {MAX_UPSTREAM_RETRIES}: each retry spends budget and time"),
        ));
    }
    let breaker = BreakerPolicy {
        failure_threshold: pick(
            cli.breaker_failures,
            file.breaker_failures,
            DEFAULT_BREAKER_FAILURES,
        ),
        cool_down: duration(
            "breaker_cool_down",
            &cli.breaker_cool_down,
            file.breaker_cool_down,
            DEFAULT_BREAKER_COOL_DOWN,
        )?,
    };
    if breaker.failure_threshold > 0 && breaker.cool_down.is_zero() {
        return Err(ConfigError::new(
            "breaker_cool_down",
            "must be greater than 0s while the breaker is on",
        ));
    }
    if connect_timeout.is_zero() {
        return Err(ConfigError::new(
            "connect_timeout",
            "must be greater than 0s",
        ));
    }
    if request_timeout.is_zero() {
        return Err(ConfigError::new(
            "request_timeout",
            "must be greater than 0s",
        ));
    }
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

    let cache_max_bytes = match (cli.cache_max_bytes.clone(), file.cache_max_bytes) {
        (Some(text), _) => parse_bytes("cache_max_bytes", &text)?,
        (None, Some(ByteCount::Number(number))) => number,
        (None, Some(ByteCount::Text(text))) => parse_bytes("cache_max_bytes", &text)?,
        (None, None) => DEFAULT_CACHE_MAX_BYTES,
    };
    let cache_max_bytes = NonZeroU64::new(cache_max_bytes)
        .ok_or_else(|| ConfigError::new("cache_max_bytes", "must be greater than 0"))?;

    let token_file = cli.token_file.clone().or(file.token_file);
    let token = match &token_file {
        Some(path) => Some(read_secret_file("token_file", path)?),
        None => token_env
            .filter(|value| !value.trim().is_empty())
            .map(|value| Secret::new(value.trim().to_owned())),
    };
    if let Some(token) = &token {
        crate::credentials::FallbackToken::new(token)
            .map_err(|problem| ConfigError::new(token_source(&token_file), problem))?;
    }

    Ok(Config {
        listen,
        unix_socket,
        server_limits,
        request_limits,
        allowed_accounts,
        tls,
        https_proxy,
        admin_listen,
        admin_token,
        admin_token_file,
        log_level,
        upstream,
        ttl: TtlPolicy {
            positive,
            negative,
            stale_while_revalidate,
            stale_if_error,
        },
        cache_max_bytes,
        connect_timeout,
        request_timeout,
        token,
        token_file,
        shutdown_grace,
        log_format: pick(cli.log_format, file.log_format, LogFormat::Pretty),
        dev: cli.dev,
        writes_with_sidecar_token: false,
        budget,
        upstream_retries,
        breaker,
    })
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

/// What changed between two configurations, as reload sees it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Keys whose new values take effect now.
    pub applied: Vec<&'static str>,
    /// Keys whose new values need a restart (listen addresses, upstream, cache size, ...).
    pub needs_restart: Vec<&'static str>,
}

/// Pure: which keys changed, split into those a reload applies and those that need a restart.
pub fn plan_reload(running: &Config, new: &Config) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    let mut note = |key: &'static str, changed: bool, live: bool| {
        if changed {
            if live {
                plan.applied.push(key);
            } else {
                plan.needs_restart.push(key);
            }
        }
    };
    note("listen", running.listen != new.listen, false);
    note("unix_socket", running.unix_socket != new.unix_socket, false);
    note(
        "server_limits",
        running.server_limits != new.server_limits,
        false,
    );
    note("tls", running.tls != new.tls, false);
    note("https_proxy", running.https_proxy != new.https_proxy, false);
    note(
        "request_limits",
        running.request_limits != new.request_limits,
        true,
    );
    note(
        "allowed_accounts",
        running.allowed_accounts != new.allowed_accounts,
        true,
    );
    note(
        "admin_listen",
        running.admin_listen != new.admin_listen,
        false,
    );
    note("upstream", running.upstream != new.upstream, false);
    note(
        "connect_timeout",
        running.connect_timeout != new.connect_timeout,
        false,
    );
    note(
        "request_timeout",
        running.request_timeout != new.request_timeout,
        false,
    );
    note(
        "cache_max_bytes",
        running.cache_max_bytes != new.cache_max_bytes,
        false,
    );
    note("log_format", running.log_format != new.log_format, false);
    note(
        "shutdown_grace",
        running.shutdown_grace != new.shutdown_grace,
        false,
    );
    note("cache_ttl", running.ttl.positive != new.ttl.positive, true);
    note(
        "negative_ttl",
        running.ttl.negative != new.ttl.negative,
        true,
    );
    note(
        "stale_if_error",
        running.ttl.stale_if_error != new.ttl.stale_if_error,
        true,
    );
    note(
        "stale_while_revalidate",
        running.ttl.stale_while_revalidate != new.ttl.stale_while_revalidate,
        true,
    );
    note("upstream_budget", running.budget != new.budget, true);
    note(
        "upstream_retries",
        running.upstream_retries != new.upstream_retries,
        true,
    );
    note("breaker", running.breaker != new.breaker, true);
    note("token", running.token != new.token, true);
    note("admin_token", running.admin_token != new.admin_token, true);
    note("log_level", running.log_level != new.log_level, true);
    plan
}

fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

/// Durations are written like `500ms`, `60s`, `24h`, `1h 30m`.
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let duration = humantime::parse_duration(text.trim()).map_err(|error| {
        ConfigError::new(
            key,
            format!("{text:?} is not a duration like 500ms, 60s or 24h ({error})"),
        )
    })?;
    // Every duration ends up added to an Instant; far beyond any sensible setting, that would
    // overflow at run time. Ten years is longer than any of these settings can mean.
    if duration > MAX_DURATION {
        return Err(ConfigError::new(
            key,
            format!("{text:?} is longer than the 10 years any setting here can use"),
        ));
    }
    Ok(duration)
}

/// The longest duration any setting accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Byte counts are a plain integer or a number with a unit: B, KB, MB, GB (powers of 1000) or
/// KiB, MiB, GiB (powers of 1024).
pub fn parse_bytes(key: &str, text: &str) -> Result<u64, ConfigError> {
    let invalid = || {
        ConfigError::new(
            key,
            format!("{text:?} is not a byte count like 67108864 or 64MiB"),
        )
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(invalid()),
    };
    number.checked_mul(multiplier).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["zt-risk-sidecar"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("valid flags")
    }

    #[test]
    fn defaults() {
        let config = resolve(&Cli::default(), FileConfig::default(), None).expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.admin_listen.to_string(), "127.0.0.1:9901");
        assert_eq!(config.unix_socket.mode, 0o660);
        assert_eq!(config.server_limits, ServerLimits::default());
        assert_eq!(config.request_limits, RequestLimits::default());
        assert_eq!(config.allowed_accounts, None);
        assert_eq!(config.tls.roots, TlsRoots::Webpki);
        assert!(config.https_proxy.is_none());
        assert_eq!(config.upstream.to_string(), DEFAULT_UPSTREAM);
        assert_eq!(config.ttl.positive, Duration::from_secs(60));
        assert_eq!(config.ttl.negative, Duration::from_secs(10));
        assert_eq!(config.cache_max_bytes.get(), 64 * 1024 * 1024);
        assert_eq!(config.connect_timeout, Duration::from_secs(5));
        assert_eq!(config.request_timeout, Duration::from_secs(15));
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert!(config.token.is_none());
        assert_eq!(config.ttl.stale_if_error, Duration::from_secs(86_400));
        assert_eq!(config.ttl.stale_while_revalidate, Duration::from_secs(30));
        assert_eq!(config.budget.requests.get(), 1000);
        assert_eq!(config.budget.period, Duration::from_secs(300));
        assert_eq!(config.budget.burst.get(), 50);
        assert_eq!(config.upstream_retries, 2);
        assert_eq!(config.breaker.failure_threshold, 5);
        assert_eq!(config.breaker.cool_down, Duration::from_secs(10));
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let file =
            parse_file("cache_ttl = \"5m\"\nnegative_ttl = \"3s\"\ncache_max_bytes = \"1MiB\"\n")
                .expect("valid file");
        let config = resolve(&cli(&["--cache-ttl", "90s"]), file, None).expect("valid");
        assert_eq!(config.ttl.positive, Duration::from_secs(90));
        assert_eq!(config.ttl.negative, Duration::from_secs(3));
        assert_eq!(config.cache_max_bytes.get(), 1 << 20);
    }

    #[test]
    fn reload_plans_split_live_keys_from_restart_keys() {
        let running = resolve(&Cli::default(), FileConfig::default(), None).expect("valid");
        let same = resolve(&Cli::default(), FileConfig::default(), None).expect("valid");
        assert_eq!(plan_reload(&running, &same), ReloadPlan::default());
        let file = parse_file(
            "cache_ttl = \"5m\"\nlisten = \"127.0.0.1:18080\"\nupstream_budget_burst = 7\nlog_level = \"debug\"\n",
        )
        .expect("valid");
        let changed = resolve(&Cli::default(), file, Some("new-token".into())).expect("valid");
        let plan = plan_reload(&running, &changed);
        assert_eq!(
            plan.applied,
            vec!["cache_ttl", "upstream_budget", "token", "log_level"]
        );
        assert_eq!(plan.needs_restart, vec!["listen"]);
    }

    #[test]
    fn zero_turns_the_stale_windows_and_the_breaker_off() {
        let config = resolve(
            &cli(&[
                "--stale-if-error",
                "0s",
                "--stale-while-revalidate",
                "0s",
                "--breaker-failures",
                "0",
            ]),
            FileConfig::default(),
            None,
        )
        .expect("valid");
        assert_eq!(config.ttl.stale_if_error, Duration::ZERO);
        assert_eq!(config.ttl.stale_while_revalidate, Duration::ZERO);
        assert_eq!(config.breaker.failure_threshold, 0);
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = parse_file("cache_tll = \"5m\"\n").expect_err("unknown key");
        assert_eq!(error.key, "cache_tll");
        assert!(error.problem.contains("line 1"), "{error}");
    }

    #[test]
    fn bad_values_are_named() {
        fn check(file: &str, key: &str, fragment: &str) {
            let error = parse_file(file)
                .and_then(|file| resolve(&Cli::default(), file, None))
                .expect_err(file);
            assert_eq!(error.key, key, "{file}: {error}");
            assert!(error.problem.contains(fragment), "{file}: {error}");
        }
        check("cache_ttl = \"soon\"", "cache_ttl", "not a duration");
        check("negative_ttl = 10", "negative_ttl", "invalid type");
        check("listen = \"localhost\"", "listen", "not an IP address");
        check(
            "upstream = \"http://api.cloudflare.com\"",
            "upstream",
            "loopback",
        );
        check(
            "cache_max_bytes = \"lots\"",
            "cache_max_bytes",
            "byte count",
        );
        check("cache_max_bytes = 0", "cache_max_bytes", "greater than 0");
        check(
            "connect_timeout = \"20s\"",
            "connect_timeout",
            "longer than request_timeout",
        );
        check(
            "request_timeout = \"0s\"",
            "request_timeout",
            "greater than 0s",
        );
        check("log_format = \"xml\"", "log_format", "unknown variant");
        check(
            "token_file = \"/nonexistent/token\"",
            "token_file",
            "cannot read",
        );
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            ListenAddr::parse("127.0.0.1:8080"),
            Ok(ListenAddr::Tcp("127.0.0.1:8080".parse().expect("addr")))
        );
        assert_eq!(
            ListenAddr::parse("unix:/run/zt/sidecar.sock"),
            Ok(ListenAddr::Unix(PathBuf::from("/run/zt/sidecar.sock")))
        );
        assert!(ListenAddr::parse("localhost:8080").is_err());
        let config = resolve(
            &cli(&[
                "--listen",
                "unix:/tmp/zt.sock",
                "--unix-socket-mode",
                "0600",
                "--allowed-account",
                "023e105f4ecef8ad9ca31a8372d0c353,9a7806061c88ada191ed06f989cc3dac",
            ]),
            FileConfig::default(),
            None,
        )
        .expect("valid");
        assert_eq!(config.listen.to_string(), "unix:/tmp/zt.sock");
        assert_eq!(config.unix_socket.mode, 0o600);
        assert_eq!(
            config.allowed_accounts.map(|accounts| accounts.len()),
            Some(2)
        );
    }

    #[test]
    fn durations_and_bytes() {
        assert_eq!(parse_duration("k", "500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("k", "24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("k", "0s"), Ok(Duration::ZERO));
        assert!(parse_duration("k", "-1s").is_err());
        assert!(parse_duration("k", "3650days").is_ok());
        assert!(parse_duration("k", "11years").is_err());
        assert_eq!(parse_bytes("k", "67108864"), Ok(67_108_864));
        assert_eq!(parse_bytes("k", "64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("k", "64 MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("k", "2GB"), Ok(2_000_000_000));
        assert!(parse_bytes("k", "64XB").is_err());
        assert!(parse_bytes("k", "").is_err());
        assert!(parse_bytes("k", "99999999999999999999GiB").is_err());
    }

    #[test]
    fn token_comes_from_env_or_file_and_is_never_printed() {
        let dir = std::env::temp_dir().join(format!("zt-sidecar-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("token");
        std::fs::write(&path, "file-secret-token\n").expect("write token");
        let from_env = resolve(
            &Cli::default(),
            FileConfig::default(),
            Some("env-secret".into()),
        )
        .expect("valid");
        assert_eq!(
            from_env.token.as_ref().map(Secret::expose),
            Some("env-secret")
        );
        let file = FileConfig {
            token_file: Some(path.clone()),
            ..FileConfig::default()
        };
        let from_file = resolve(&Cli::default(), file, Some("env-secret".into())).expect("valid");
        assert_eq!(
            from_file.token.as_ref().map(Secret::expose),
            Some("file-secret-token")
        );
        let printed = format!("{from_file:?} {from_env:?}");
        assert!(
            !printed.contains("file-secret-token") && !printed.contains("env-secret"),
            "{printed}"
        );
        let bad = resolve(
            &Cli::default(),
            FileConfig::default(),
            Some("bad\u{7f}secret".into()),
        )
        .expect_err("invalid token");
        assert!(!bad.to_string().contains("secret"), "{bad}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn the_documented_example_file_parses() {
        let text = include_str!("../config/sidecar.toml");
        let file = parse_file(text).expect("config/sidecar.toml is valid");
        resolve(&Cli::default(), file, None).expect("config/sidecar.toml resolves");
    }
}
