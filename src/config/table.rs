//! The settings table: every setting of the sidecar, declared once with its type, default, reload
//! behaviour and help text. Flags, environment variables, TOML keys, defaults, the reload plan and
//! README's configuration table are all generated from it. Rules between settings do not belong
//! here: they are in `validate.rs`.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use super::declare::settings;
use super::values::{unset, FileMode, LogFilter, LogFormat};
use crate::routes::AccountId;
use crate::server::ListenAddr;
use crate::upstream::{ProxyUrl, TlsRoots};

// One row per setting: the doc comment is the help text (`--help` appends the default), then
// `key: Type = default, Live|Restart, "VALUE_NAME"`, and a `flag` or `env` only where it is not
// derived from the key. README's table follows the order of these rows.
settings! {
    /// Lookup listener: `IP:port` or `unix:/path`.
    listen: ListenAddr = "127.0.0.1:8080", Restart, "ADDR";
    /// File mode of the Unix socket, in octal.
    unix_socket_mode: FileMode = "0660", Restart, "OCTAL";
    /// Group of the Unix socket (name or number).
    unix_socket_group: Option<String> = unset("the process's"), Restart, "GROUP";
    /// Only these accounts may be looked up (repeat the flag, or comma-separate); others get a local 403.
    allowed_accounts: Option<Vec<AccountId>> = unset("any"), Live, "ACCOUNT_ID", flag = "allowed-account";
    /// Open connections at most (fast 503 beyond).
    max_connections: NonZeroUsize = "1024", Restart, "N";
    /// Lookups waiting on Cloudflare at most (fast 503 beyond; hits are never limited).
    max_pending_lookups: NonZeroUsize = "1024", Live, "N";
    /// Time to receive a request head; also the HTTP/1.1 keep-alive idle limit.
    header_read_timeout: Duration = "10s", Restart, "DURATION";
    /// Close a connection with no traffic for this long.
    idle_timeout: Duration = "60s", Restart, "DURATION";
    /// Longest request target in bytes (414 beyond).
    max_uri_bytes: NonZeroUsize = "4096", Live, "BYTES";
    /// Largest total of request header names and values in bytes (431 beyond).
    max_header_bytes: NonZeroUsize = "16384", Live, "BYTES";
    /// Most request headers (431 beyond).
    max_request_headers: NonZeroUsize = "64", Live, "N";
    /// Roots for Cloudflare's TLS: `webpki` (Mozilla's, built in) or `system`.
    tls_roots: TlsRoots = "webpki", Restart, "ROOTS";
    /// Extra PEM roots, e.g. a TLS-inspecting egress.
    tls_extra_ca_file: Option<PathBuf> = unset("none"), Restart, "PATH";
    /// `http://[user:pass@]host:port` to tunnel (CONNECT) to Cloudflare through.
    https_proxy: Option<ProxyUrl> = unset("none"), Restart, "URL", env = "HTTPS_PROXY";
    /// Admin listener (metrics, probes, purge).
    admin_listen: SocketAddr = "127.0.0.1:9901", Restart, "ADDR";
    /// File with the bearer token the admin listener requires; re-read on SIGHUP.
    admin_token_file: Option<PathBuf> = unset("none"), Live, "PATH";
    /// Cloudflare API base; `http://` only for loopback.
    upstream: String = "https://api.cloudflare.com/client/v4", Restart, "URL";
    /// Allow `http://` to a non-loopback host.
    allow_insecure_upstream: bool = "false", Restart, "BOOL";
    /// Freshness of a found integration (`0s`: don't cache).
    cache_ttl: Duration = "60s", Live, "DURATION";
    /// Freshness of "not found" (`0s`: don't cache).
    negative_ttl: Duration = "10s", Live, "DURATION";
    /// Cache bound (bodies plus a per-entry allowance), e.g. `67108864` or `64MiB`.
    cache_max_bytes: NonZeroU64 = "64MiB", Restart, "BYTES";
    /// Serve stale at once, refresh in the background (`0s`: off).
    stale_while_revalidate: Duration = "30s", Live, "DURATION";
    /// Serve stale when a refresh fails or is not allowed (`0s`: off).
    stale_if_error: Duration = "24h", Live, "DURATION";
    /// Upstream calls per credential per period.
    upstream_budget_requests: NonZeroU32 = "1000", Live, "N";
    /// The budget period.
    upstream_budget_period: Duration = "300s", Live, "DURATION";
    /// Largest burst of upstream calls per credential.
    upstream_budget_burst: NonZeroU32 = "50", Live, "N";
    /// Retries of connection failures and 502/503/504 (0 to 2).
    upstream_retries: u32 = "2", Live, "N";
    /// Consecutive failures that open the breaker (`0`: off).
    breaker_failures: u32 = "5", Live, "N";
    /// How long the open breaker fails fast before letting one probe through.
    breaker_cool_down: Duration = "10s", Live, "DURATION";
    /// Upstream connect (TCP + TLS).
    connect_timeout: Duration = "5s", Restart, "DURATION";
    /// Whole upstream request, body included.
    request_timeout: Duration = "15s", Restart, "DURATION";
    /// File with the sidecar's own token (a mounted secret); re-read on SIGHUP.
    token_file: Option<PathBuf> = unset("none"), Live, "PATH";
    /// Drain time after SIGTERM/SIGINT.
    shutdown_grace: Duration = "10s", Restart, "DURATION";
    /// `pretty` or `json`.
    log_format: LogFormat = "pretty", Restart, "FORMAT";
    /// Log filter, e.g. `info` or `zt_risk_sidecar=debug,info`.
    log_level: Option<LogFilter> = unset("`RUST_LOG`, else `info`"), Live, "FILTER";
}
