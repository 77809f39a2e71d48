//! Configuration: command-line flags, `ZT_SIDECAR_*` environment variables and a TOML file, merged
//! with precedence flags > environment > file > defaults, then validated into types that can only
//! hold valid values. Every setting is one row of `table.rs`; this module ties the steps together
//! and owns the [`Config`] the program runs with. Errors name the key and the problem; secrets are
//! never printed.

mod check;
mod declare;
mod docs;
mod reload;
mod sources;
mod table;
#[cfg(test)]
mod table_tests;
mod validate;
mod values;

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

pub use check::describe;
pub use declare::{Reload, Setting};
pub use docs::settings_markdown;
pub use reload::{plan_reload, ReloadPlan};
pub use sources::{parse_file, read_file, Cli, CliCommand, SettingArgs};
pub use table::{all as settings_table, FileConfig, Settings};
pub use validate::read_secret_file;
pub use values::{FileMode, LogFilter, LogFormat, SettingValue, MAX_DURATION};

use crate::budget::BudgetPolicy;
use crate::cache::TtlPolicy;
use crate::credentials::Secret;
use crate::proxy::RequestLimits;
use crate::resilience::BreakerPolicy;
use crate::routes::AccountId;
use crate::server::{ListenAddr, ServerLimits, UnixSocketSettings};
use crate::upstream::{ProxyUrl, TlsSettings, UpstreamBase};

/// Environment variable holding the sidecar's own Cloudflare API token.
pub const TOKEN_ENV: &str = "CLOUDFLARE_API_TOKEN";

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
    /// The hash of the extra CA file's certificates as read: a reload compares it, because the
    /// file can change under an unchanged `tls_extra_ca_file`.
    pub extra_ca: Option<blake3::Hash>,
    /// The log filter from the configuration; `None` leaves it to `RUST_LOG` (else `info`).
    pub log_level: Option<String>,
    pub upstream: UpstreamBase,
    pub ttl: TtlPolicy,
    pub cache_max_bytes: NonZeroU64,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Upstream requests in flight at most (and so HTTP/1.1 connections).
    pub max_upstream_connections: std::num::NonZeroUsize,
    /// How long a caller with a stale entry waits for its refresh before the entry answers.
    pub stale_after_slow_upstream: Duration,
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
    /// The fleet tier (Redis, the fleet key, its timings); `None` when `redis_url` is unset.
    pub fleet: Option<crate::fleet::FleetSettings>,
    /// The settings this configuration was built from, as merged. Reload compares these, so a
    /// field set directly on a `Config` (as tests do) is not seen by [`plan_reload`].
    pub settings: Settings,
}

impl Config {
    /// The configuration with every setting at its default and no token: what tests start from.
    pub fn defaults() -> Config {
        // The table's defaults are constants, and a unit test checks that they resolve.
        resolve(&Cli::default(), FileConfig::default(), None)
            .expect("the built-in defaults are valid")
    }

    /// Points the configuration at another upstream with its own token (`--dev`'s simulator),
    /// as if both had been configured, so that a reload keeps them like any other setting.
    pub fn replace_upstream(&mut self, upstream: UpstreamBase, token: Option<Secret>) {
        self.settings.upstream = upstream.to_string();
        self.upstream = upstream;
        self.token = token;
    }
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
    load_with_file(cli, token_env).map(|(config, _)| config)
}

/// [`load`], also returning the file as read, which says where each value came from.
pub fn load_with_file(
    cli: &Cli,
    token_env: Option<String>,
) -> Result<(Config, FileConfig), ConfigError> {
    let file = match &cli.config {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    resolve(cli, file.clone(), token_env).map(|config| (config, file))
}

/// Merges flags (which clap already merged with the environment) over the file over defaults,
/// reads the token files, and applies the rules between settings.
pub fn resolve(
    cli: &Cli,
    file: FileConfig,
    token_env: Option<String>,
) -> Result<Config, ConfigError> {
    let settings = Settings::merge(&cli.settings, &file)?;
    let secrets = validate::read_secrets(&settings, token_env)?;
    validate::build(settings, secrets, cli.dev_mode())
}

/// The environment variable that sets the log filter when `log_level` does not.
pub const RUST_LOG: &str = "RUST_LOG";

/// The log filter in force: `log_level` when configured, else `RUST_LOG` (`rust_log`, passed in
/// so tests need not touch the process environment) when set, else `None` (meaning `info`). A
/// `RUST_LOG` that is not a filter is an error naming it, as a bad `log_level` is: a typo there
/// would otherwise turn every log line off, the fatal ones included.
pub fn effective_log_filter(
    log_level: Option<&str>,
    rust_log: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    if let Some(configured) = log_level {
        return Ok(Some(configured.to_owned()));
    }
    match rust_log.map(str::trim).filter(|text| !text.is_empty()) {
        None => Ok(None),
        Some(text) => LogFilter::parse_text(text)
            .map(|filter| Some(filter.0))
            .map_err(|problem| {
                ConfigError::new(RUST_LOG, format!("{problem} (from the environment)"))
            }),
    }
}

/// Durations are written like `500ms`, `60s`, `24h`, `1h 30m`.
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    Duration::parse_text(text).map_err(|problem| ConfigError::new(key, problem))
}

/// Byte counts are a plain integer or a number with a unit: B, KB, MB, GB (powers of 1000) or
/// KiB, MiB, GiB (powers of 1024).
pub fn parse_bytes(key: &str, text: &str) -> Result<u64, ConfigError> {
    values::parse_byte_count(text).map_err(|problem| ConfigError::new(key, problem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{TlsRoots, DEFAULT_UPSTREAM};
    use clap::Parser;

    /// `log_level` wins over `RUST_LOG`; a bad `RUST_LOG` is an error naming it and the directive.
    #[test]
    fn the_log_filter_comes_from_log_level_else_rust_log() {
        assert_eq!(
            effective_log_filter(Some("debug"), Some("warning")),
            Ok(Some("debug".to_owned()))
        );
        assert_eq!(
            effective_log_filter(None, Some("hyper=warn")),
            Ok(Some("hyper=warn".to_owned()))
        );
        assert_eq!(effective_log_filter(None, Some("  ")), Ok(None));
        assert_eq!(effective_log_filter(None, None), Ok(None));
        let error = effective_log_filter(None, Some("warning")).expect_err("not a level");
        assert_eq!(error.key, "RUST_LOG");
        assert!(error.to_string().contains("\"warning\""), "{error}");
    }

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["zt-risk-sidecar"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("valid flags")
    }

    #[test]
    fn defaults() {
        let config = resolve(&Cli::default(), FileConfig::default(), None).expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:14480");
        assert_eq!(config.admin_listen.to_string(), "127.0.0.1:14481");
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
            "cache_ttl = \"5m\"\nlisten = \"127.0.0.1:14490\"\nupstream_budget_burst = 7\nlog_level = \"debug\"\n",
        )
        .expect("valid");
        let changed = resolve(&Cli::default(), file, Some("new-token".into())).expect("valid");
        let plan = plan_reload(&running, &changed);
        assert_eq!(
            plan.applied,
            vec!["cache_ttl", "upstream_budget_burst", "log_level", "token"]
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
            ListenAddr::parse("127.0.0.1:14480"),
            Ok(ListenAddr::Tcp("127.0.0.1:14480".parse().expect("addr")))
        );
        assert_eq!(
            ListenAddr::parse("unix:/run/zt/sidecar.sock"),
            Ok(ListenAddr::Unix(PathBuf::from("/run/zt/sidecar.sock")))
        );
        assert!(ListenAddr::parse("localhost:14480").is_err());
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
        let file = parse_file(&format!("token_file = {:?}", path.display().to_string()))
            .expect("valid file");
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
        let text = include_str!("../../config/sidecar.toml");
        let file = parse_file(text).expect("config/sidecar.toml is valid");
        resolve(&Cli::default(), file, None).expect("config/sidecar.toml resolves");
    }
}
