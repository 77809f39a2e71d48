//! The settings table: every setting of the sidecar, declared once with its type, default, reload
//! behaviour and help text. Flags, environment variables, TOML keys, defaults, the reload plan and
//! README's configuration table are all generated from it. Rules between settings do not belong
//! here: they are in `validate.rs`.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use super::declare::settings;
use super::values::{unset, FileMode, LogFilter, LogFormat, NoProxy};
use crate::fleet::RedisUrl;
use crate::ratelimit::Share;
use crate::routes::AccountId;
use crate::server::ListenAddr;
use crate::upstream::{ProxyUrl, TlsRoots};

// One row per setting: the doc comment is the help text (`--help` appends the default), then
// `key: Type = default, Live|Restart, "VALUE_NAME"`, and a `flag` or `env` only where it is not
// derived from the key. README's table follows the order of these rows.
settings! {
    /// Lookup listener: `IP:port` or `unix:/path`.
    listen: ListenAddr = "127.0.0.1:14480", Restart, "ADDR";
    /// File mode of the Unix socket, in octal.
    unix_socket_mode: FileMode = "0660", Restart, "OCTAL";
    /// Group of the Unix socket (name or number).
    unix_socket_group: Option<String> = unset("the process's"), Restart, "GROUP";
    /// Only these accounts may be looked up (repeat the flag, or comma-separate); others get a local 403.
    allowed_accounts: Option<Vec<AccountId>> = unset("any"), Live, "ACCOUNT_ID", flag = "allowed-account";
    /// Open connections at most (fast 503 beyond).
    max_connections: NonZeroUsize = "1024", Restart, "N";
    /// Upstream fetches for lookups in flight at most, one per key however many callers wait on it (fast 503 beyond; hits are never limited).
    max_pending_lookups: NonZeroUsize = "1024", Live, "N";
    /// Callers waiting on those fetches at most (fast 503 beyond).
    max_waiting_lookups: NonZeroUsize = "4096", Live, "N";
    /// Writes being read or relayed at most (fast 503 beyond); with the 64 KiB body bound, also the request-body bytes held at once.
    max_pending_writes: NonZeroUsize = "64", Live, "N";
    /// Time to receive a request head, counted from the accept for a connection's first request; also the HTTP/1.1 keep-alive idle limit, and how long a closing connection may take.
    header_read_timeout: Duration = "10s", Restart, "DURATION";
    /// Time for a request body to arrive whole, however it trickles (408 beyond).
    body_read_timeout: Duration = "10s", Live, "DURATION";
    /// Close a connection with no request in flight for this long (HTTP/2: GOAWAY first).
    idle_timeout: Duration = "60s", Restart, "DURATION";
    /// Streams one HTTP/2 connection may have open at once.
    http2_max_concurrent_streams: NonZeroU32 = "64", Restart, "N";
    /// HTTP/2 flow-control window per stream, in bytes (65535 to 16777216): request body a peer may send before it is read.
    http2_stream_window: u32 = "65535", Restart, "BYTES";
    /// HTTP/2 flow-control window per connection, in bytes (65535 to 16777216).
    http2_connection_window: u32 = "65535", Restart, "BYTES";
    /// Longest request target in bytes (414 beyond).
    max_uri_bytes: NonZeroUsize = "4096", Live, "BYTES";
    /// Largest total of request header names and values in bytes (431 beyond).
    max_header_bytes: NonZeroUsize = "16384", Live, "BYTES";
    /// Most request headers (431 beyond).
    max_request_headers: NonZeroUsize = "64", Live, "N";
    /// Roots for Cloudflare's TLS: `webpki` (Mozilla's, built in) or `system`.
    tls_roots: TlsRoots = "webpki", Restart, "ROOTS";
    /// Extra PEM roots, e.g. a TLS-inspecting egress; watched, and re-read on change or reload (new connections verify against the new roots).
    tls_extra_ca_file: Option<PathBuf> = unset("none"), Live, "PATH";
    /// `http://[user:pass@]host:port` (or `host:port`) to tunnel (CONNECT) to Cloudflare through; `https_proxy` is read when `HTTPS_PROXY` is unset.
    https_proxy: Option<ProxyUrl> = unset("none"), Restart, "URL", env = "HTTPS_PROXY";
    /// Hosts reached without `https_proxy`: comma-separated names (each also matching its subdomains, with or without a leading dot) or `*`; `no_proxy` is read when `NO_PROXY` is unset.
    no_proxy: Option<NoProxy> = unset("none"), Restart, "HOSTS", env = "NO_PROXY";
    /// Admin listener (metrics, probes, purge, reload).
    admin_listen: SocketAddr = "127.0.0.1:14481", Restart, "ADDR";
    /// File with the bearer token the admin listener requires; re-read when it changes, on SIGHUP and on `POST /reload`.
    admin_token_file: Option<PathBuf> = unset("none"), Live, "PATH";
    /// Cloudflare API base; `http://` only for loopback.
    upstream: String = "https://api.cloudflare.com/client/v4", Restart, "URL";
    /// Allow `http://` to a non-loopback host.
    allow_insecure_upstream: bool = "false", Restart, "BOOL";
    /// Freshness of a found integration (`0s`: don't cache).
    cache_ttl: Duration = "60s", Live, "DURATION";
    /// Freshness of "not found" (`0s`: don't cache).
    negative_ttl: Duration = "10s", Live, "DURATION";
    /// Cache bound (bodies plus a per-entry allowance), e.g. `67108864`, `64Mi` or `64MiB`.
    cache_max_bytes: NonZeroU64 = "64MiB", Restart, "BYTES";
    /// Serve stale at once, refresh in the background (`0s`: off).
    stale_while_revalidate: Duration = "30s", Live, "DURATION";
    /// Serve stale when a refresh fails or is not allowed (`0s`: off).
    stale_if_error: Duration = "24h", Live, "DURATION";
    /// Serve a stale entry (within `stale_if_error`) when its refresh takes longer than this; the refresh goes on in the background (`0s`: off, callers wait up to `request_timeout`).
    stale_after_slow_upstream: Duration = "1s", Live, "DURATION";
    /// Upstream calls per credential per period.
    upstream_budget_requests: NonZeroU32 = "1000", Live, "N";
    /// The budget period.
    upstream_budget_period: Duration = "300s", Live, "DURATION";
    /// Largest burst of upstream calls per credential.
    upstream_budget_burst: NonZeroU32 = "50", Live, "N";
    /// Share of Cloudflare's own per-user quota (its `Ratelimit-Policy` `q`) that the sidecar leaves to the user's other tools: at or below it (its `Ratelimit` `r`), no upstream call for that credential until the window resets. A share, not a count, so that it follows the quota of every plan.
    upstream_reserve: Share = "10%", Live, "SHARE";
    /// Share of Cloudflare's quota that background refreshes leave to callers (at least `upstream_reserve`); refreshes also use at most the rest of the configured budget.
    upstream_refresh_reserve: Share = "25%", Live, "SHARE";
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
    /// Upstream requests in flight at most, and so HTTP/1.1 connections open to Cloudflare at most; the rest queue within their deadlines.
    max_upstream_connections: NonZeroUsize = "32", Restart, "N";
    /// File with the sidecar's own token (a mounted secret); re-read when it changes, on SIGHUP and on `POST /reload`.
    token_file: Option<PathBuf> = unset("none"), Live, "PATH";
    /// Let writes (POST, PUT, DELETE) without caller credentials go upstream with the sidecar's own token. Off: that token only reads, and any local process that reaches the listener cannot change or delete the user's integrations with it.
    writes_with_sidecar_token: bool = "false", Live, "BOOL";
    /// Redis (or Valkey) shared by a fleet of sidecars: `redis://`, `rediss://` (TLS) or `unix://`, user and password allowed in the URL. Unset: no fleet tier.
    redis_url: Option<RedisUrl> = unset("none"), Restart, "URL";
    /// File with the Redis password (wins over the URL's).
    redis_password_file: Option<PathBuf> = unset("none"), Restart, "PATH";
    /// File with the fleet's shared secret (at least 32 bytes in any encoding, e.g. 32 random bytes in base64); required with `redis_url`. Partitions and every Redis key and value are derived from it.
    fleet_key_file: Option<PathBuf> = unset("none"), Restart, "PATH";
    /// Sidecars sharing one credential's budget: while Redis is unreachable, each spends at most the budget divided by this.
    fleet_size: NonZeroU32 = "1", Restart, "N";
    /// Deadline of every single Redis call; a slower Redis is treated as absent.
    redis_timeout: Duration = "50ms", Restart, "DURATION";
    /// The fleet's fetch lease: one sidecar fetches a key while the others wait, at most this long if it dies.
    fleet_lease: Duration = "2s", Restart, "DURATION";
    /// Drain time after SIGTERM/SIGINT.
    shutdown_grace: Duration = "10s", Restart, "DURATION";
    /// `pretty` or `json`.
    log_format: LogFormat = "pretty", Restart, "FORMAT";
    /// Log filter, e.g. `info` or `zt_risk_sidecar=debug,info`.
    log_level: Option<LogFilter> = unset("`RUST_LOG`, else `info`"), Live, "FILTER";
}
