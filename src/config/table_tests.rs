//! Table-driven tests of what the settings table generates: precedence, error origins, the flags
//! and variables clap offers, and the reload plan. They build no server and touch no process
//! environment (environment values are given as clap would report them).

use std::path::PathBuf;

use clap::{CommandFactory, Parser};

use super::declare::{Given, Origin};
use super::*;

/// Flags and environment as clap reports them: at most one source per key, the flag winning.
fn given(pairs: &[(&'static str, &str, Origin)]) -> SettingArgs {
    let mut args = SettingArgs::default();
    for (key, text, origin) in pairs {
        args.insert(
            key,
            Given {
                texts: vec![(*text).to_owned()],
                origin: origin.clone(),
            },
        );
    }
    args
}

fn flag(key: &str) -> Origin {
    Origin::Flag(format!("--{}", key.replace('_', "-")))
}

fn env(key: &str) -> Origin {
    Origin::Env(format!("ZT_SIDECAR_{}", key.to_ascii_uppercase()))
}

fn resolve_with(args: SettingArgs, file: &str) -> Result<Config, ConfigError> {
    let cli = Cli {
        settings: args,
        ..Cli::default()
    };
    resolve(&cli, parse_file(file)?, None)
}

#[test]
fn precedence_is_flag_or_environment_then_file_then_default() {
    // (flag or environment value, file value, expected cache_ttl in seconds)
    let cases = [
        (None, None, 60),
        (None, Some("\"5m\""), 300),
        (Some(("90s", flag("cache_ttl"))), Some("\"5m\""), 90),
        (Some(("2m", env("cache_ttl"))), Some("\"5m\""), 120),
        (Some(("2m", env("cache_ttl"))), None, 120),
    ];
    for (from_args, from_file, expected) in cases {
        let args = match &from_args {
            Some((text, origin)) => given(&[("cache_ttl", text, origin.clone())]),
            None => SettingArgs::default(),
        };
        let file = from_file.map_or(String::new(), |value| format!("cache_ttl = {value}\n"));
        let config = resolve_with(args, &file).expect("valid");
        assert_eq!(
            config.ttl.positive.as_secs(),
            expected,
            "{from_args:?} {from_file:?}"
        );
    }
}

#[test]
fn clap_takes_the_flag_over_the_environment_and_says_which() {
    let cli = Cli::try_parse_from(["zt-risk-sidecar", "--cache-ttl", "90s"]).expect("valid");
    assert_eq!(
        cli.settings.get("cache_ttl"),
        Some(&Given {
            texts: vec!["90s".to_owned()],
            origin: Origin::Flag("--cache-ttl".to_owned()),
        })
    );
    let repeated = Cli::try_parse_from([
        "zt-risk-sidecar",
        "--allowed-account",
        "023e105f4ecef8ad9ca31a8372d0c353",
        "--allowed-account",
        "9a7806061c88ada191ed06f989cc3dac,023e105f4ecef8ad9ca31a8372d0c354",
    ])
    .expect("valid");
    let config = resolve(&repeated, FileConfig::default(), None).expect("valid");
    assert_eq!(
        config.allowed_accounts.map(|accounts| accounts.len()),
        Some(3)
    );
    let bare =
        Cli::try_parse_from(["zt-risk-sidecar", "--allow-insecure-upstream"]).expect("valid");
    assert_eq!(
        bare.settings
            .get("allow_insecure_upstream")
            .map(|given| given.texts.clone()),
        Some(vec!["true".to_owned()])
    );
}

#[test]
fn every_setting_has_its_flag_variable_and_default_in_help() {
    let command = Cli::command();
    for setting in settings_table() {
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_id() == setting.key)
            .unwrap_or_else(|| panic!("no flag for {}", setting.key));
        assert_eq!(
            arg.get_long().map(|long| format!("--{long}")),
            Some(setting.flag())
        );
        assert_eq!(
            arg.get_env().and_then(|env| env.to_str()),
            Some(setting.env().as_str())
        );
        let help = arg
            .get_help()
            .map(|help| help.to_string())
            .unwrap_or_default();
        assert!(
            help.ends_with(&format!(
                "[default: {}]",
                setting.default.describe().replace('`', "")
            )),
            "{}: {help}",
            setting.key
        );
    }
    assert_eq!(
        command
            .get_arguments()
            .find(|arg| arg.get_id() == "https_proxy")
            .and_then(|arg| arg.get_env())
            .and_then(|env| env.to_str()),
        Some("HTTPS_PROXY")
    );
}

#[test]
fn errors_name_the_key_and_where_the_value_came_from() {
    fn check(args: SettingArgs, file: &str, key: &str, fragment: &str) {
        let error = resolve_with(args, file).expect_err(fragment);
        assert_eq!(error.key, key, "{error}");
        assert!(error.to_string().contains(fragment), "{error}");
    }
    check(
        given(&[("cache_ttl", "soon", env("cache_ttl"))]),
        "",
        "cache_ttl",
        "from the environment variable ZT_SIDECAR_CACHE_TTL",
    );
    check(
        given(&[(
            "https_proxy",
            "socks5://proxy",
            Origin::Env("HTTPS_PROXY".into()),
        )]),
        "",
        "https_proxy",
        "HTTPS_PROXY",
    );
    check(
        given(&[("max_connections", "0", flag("max_connections"))]),
        "",
        "max_connections",
        "must be at least 1 (from --max-connections)",
    );
    check(
        SettingArgs::default(),
        "listen = \"127.0.0.1:14480\"\n\nupstream_retries = 3\n",
        "upstream_retries",
        "more than 2",
    );
    check(
        SettingArgs::default(),
        "listen = \"127.0.0.1:14480\"\n\nidle_timeout = \"never\"\n",
        "idle_timeout",
        "at line 3",
    );
    // A blank environment value unsets an optional setting, as `HTTPS_PROXY=` means no proxy.
    let config = resolve_with(
        given(&[("https_proxy", "", Origin::Env("HTTPS_PROXY".into()))]),
        "",
    )
    .expect("valid");
    assert!(config.https_proxy.is_none());
}

/// Files the path-valued settings can point at, removed on drop.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = std::env::temp_dir().join(format!("zt-sidecar-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("token"), "table-token\n").expect("token");
        std::fs::write(dir.join("admin-token"), "table-admin-token\n").expect("admin token");
        std::fs::write(dir.join("redis-password"), "table-redis-password\n").expect("password");
        std::fs::write(dir.join("fleet-key"), format!("{}\n", "k".repeat(44))).expect("fleet key");
        let certificate =
            rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).expect("certificate");
        std::fs::write(dir.join("ca.pem"), certificate.cert.pem()).expect("ca");
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        format!("{:?}", self.dir.join(name).display().to_string())
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One changed value per setting, in TOML, so that every row's reload column is exercised: a
/// new setting without a line here fails the test.
fn changed_value(key: &str, files: &Files) -> Option<String> {
    let value = match key {
        "listen" => "\"127.0.0.1:14490\"".to_owned(),
        "unix_socket_mode" => "\"0600\"".to_owned(),
        "unix_socket_group" => "\"staff\"".to_owned(),
        "allowed_accounts" => "[\"023e105f4ecef8ad9ca31a8372d0c353\"]".to_owned(),
        "max_connections"
        | "max_pending_lookups"
        | "max_waiting_lookups"
        | "max_pending_writes"
        | "max_upstream_connections"
        | "http2_max_concurrent_streams" => "7".to_owned(),
        "header_read_timeout"
        | "body_read_timeout"
        | "idle_timeout"
        | "cache_ttl"
        | "negative_ttl" => "\"7s\"".to_owned(),
        "http2_stream_window" | "http2_connection_window" => "131072".to_owned(),
        "writes_with_sidecar_token" => "true".to_owned(),
        "max_uri_bytes" | "max_header_bytes" | "max_request_headers" => "70000".to_owned(),
        "tls_roots" => "\"system\"".to_owned(),
        "tls_extra_ca_file" => files.path("ca.pem"),
        "https_proxy" => "\"http://127.0.0.1:3128\"".to_owned(),
        "no_proxy" => "\"internal.example\"".to_owned(),
        "admin_listen" => "\"127.0.0.1:14491\"".to_owned(),
        "admin_token_file" => files.path("admin-token"),
        "upstream" => "\"https://api.example.test/client/v4\"".to_owned(),
        "allow_insecure_upstream" => "true".to_owned(),
        "cache_max_bytes" => "\"1MiB\"".to_owned(),
        "stale_while_revalidate"
        | "stale_if_error"
        | "breaker_cool_down"
        | "stale_after_slow_upstream" => "\"9s\"".to_owned(),
        "upstream_budget_requests" | "upstream_budget_burst" => "9".to_owned(),
        "upstream_budget_period" => "\"90s\"".to_owned(),
        "upstream_retries" | "breaker_failures" => "1".to_owned(),
        "upstream_reserve" => "\"20%\"".to_owned(),
        "upstream_refresh_reserve" => "\"30%\"".to_owned(),
        "connect_timeout" => "\"1s\"".to_owned(),
        "request_timeout" => "\"20s\"".to_owned(),
        "token_file" => files.path("token"),
        "shutdown_grace" => "\"1s\"".to_owned(),
        "log_format" => "\"json\"".to_owned(),
        "log_level" => "\"debug\"".to_owned(),
        // Redis needs the fleet key: its line carries one (see `companion`).
        "redis_url" => "\"redis://127.0.0.1:6379\"".to_owned(),
        "redis_password_file" => files.path("redis-password"),
        "fleet_key_file" => files.path("fleet-key"),
        "fleet_size" => "3".to_owned(),
        "redis_timeout" => "\"20ms\"".to_owned(),
        "fleet_lease" => "\"5s\"".to_owned(),
        _ => return None,
    };
    Some(value)
}

#[test]
fn the_reload_plan_and_the_kept_values_follow_the_table() {
    let files = Files::new();
    let running = Config::defaults();
    for setting in settings_table() {
        let value = changed_value(setting.key, &files)
            .unwrap_or_else(|| panic!("add a changed value for `{}`", setting.key));
        let file = format!("{} = {value}\n", setting.key);
        // A setting that is valid only with another one comes with it; the other one's change
        // is then part of the plan too.
        let (file, companion) = match setting.key {
            "redis_url" => (
                format!("{file}fleet_key_file = {}\n", files.path("fleet-key")),
                vec!["fleet_key_file"],
            ),
            _ => (file, vec![]),
        };
        let new = resolve(&Cli::default(), parse_file(&file).expect("parses"), None)
            .unwrap_or_else(|error| panic!("{file}: {error}"));
        let plan = plan_reload(&running, &new);
        // A token file also changes the token it holds.
        let secret = match setting.key {
            "token_file" => vec!["token"],
            "admin_token_file" => vec!["admin_token"],
            _ => vec![],
        };
        let (applied, needs_restart) = match setting.reload {
            Reload::Live => ([vec![setting.key], secret].concat(), vec![]),
            Reload::Restart => (secret, [vec![setting.key], companion.clone()].concat()),
        };
        assert_eq!(
            plan,
            ReloadPlan {
                applied,
                needs_restart
            },
            "{file}"
        );
        let kept = new
            .keeping_restart_values(&running)
            .unwrap_or_else(|error| panic!("{file}: {error}"));
        let expected = match setting.reload {
            Reload::Live => 1,
            Reload::Restart => 0,
        };
        assert_eq!(
            kept.settings.changed_since(&running.settings).len(),
            expected,
            "{file}"
        );
    }
}

#[test]
fn a_reload_keeps_restart_values_in_the_typed_configuration() {
    let running = Config::defaults();
    let file = "listen = \"127.0.0.1:14490\"\ncache_ttl = \"7s\"\nmax_uri_bytes = 9000\n";
    let new = resolve(&Cli::default(), parse_file(file).expect("parses"), None).expect("valid");
    let kept = new.keeping_restart_values(&running).expect("valid");
    assert_eq!(kept.listen, running.listen);
    assert_eq!(kept.ttl.positive.as_secs(), 7);
    assert_eq!(kept.request_limits.max_uri_bytes, 9000);
    // hyper's buffers are fixed at start: the derived limit follows the request limits, but the
    // server keeps the limits it was started with.
    assert_eq!(
        kept.server_limits.max_connections,
        running.server_limits.max_connections
    );
}

#[test]
fn a_reload_is_rejected_when_the_kept_values_break_a_rule() {
    let files = Files::new();
    let running = resolve(
        &Cli::default(),
        parse_file(&format!(
            "admin_listen = \"0.0.0.0:14481\"\nadmin_token_file = {}\n",
            files.path("admin-token")
        ))
        .expect("parses"),
        None,
    )
    .expect("valid");
    // The new file moves the admin listener to loopback, which needs a restart, and drops the
    // token, which applies at once: the mix would be a public admin listener without a token.
    let new = Config::defaults();
    let error = new
        .keeping_restart_values(&running)
        .expect_err("public admin listener without a token");
    assert_eq!(error.key, "admin_listen");
}

/// `NO_PROXY` exempting Cloudflare's host drops the proxy; one that names other hosts keeps it.
/// Both variables come from the environment, as a container's would.
#[test]
fn no_proxy_exempts_the_upstream_host_from_the_proxy() {
    let with = |no_proxy: &str| {
        resolve_with(
            given(&[
                (
                    "https_proxy",
                    "proxy.corp:3128",
                    Origin::Env("HTTPS_PROXY".into()),
                ),
                ("no_proxy", no_proxy, Origin::Env("NO_PROXY".into())),
            ]),
            "",
        )
        .expect("valid")
        .https_proxy
    };
    assert!(with("localhost,.cloudflare.com").is_none());
    assert!(with("api.cloudflare.com").is_none());
    assert!(with("*").is_none());
    assert!(with("internal.example,localhost").is_some());
    assert!(with("").is_some());
}

#[test]
fn redis_needs_a_fleet_key_and_a_lease_longer_than_its_timeout() {
    let files = Files::new();
    let error = resolve_with(
        SettingArgs::default(),
        "redis_url = \"redis://127.0.0.1:6379\"\n",
    )
    .expect_err("no fleet key");
    assert_eq!(error.key, "fleet_key_file");
    let with_key = format!(
        "redis_url = \"redis://user:hunter2@127.0.0.1:6379\"\nfleet_key_file = {}\n",
        files.path("fleet-key")
    );
    let config = resolve_with(SettingArgs::default(), &with_key).expect("valid");
    let fleet = config.fleet.as_ref().expect("fleet tier on");
    assert_eq!(fleet.redis_timeout.as_millis(), 50);
    assert!(!format!("{config:?}").contains("hunter2"));
    let short_lease = format!("{with_key}fleet_lease = \"50ms\"\n");
    let error = resolve_with(SettingArgs::default(), &short_lease).expect_err("lease too short");
    assert_eq!(error.key, "fleet_lease");
    std::fs::write(files.dir.join("short-key"), "too short\n").expect("short key");
    let short_key = format!(
        "redis_url = \"redis://127.0.0.1:6379\"\nfleet_key_file = {}\n",
        files.path("short-key")
    );
    let error = resolve_with(SettingArgs::default(), &short_key).expect_err("short key");
    assert_eq!(error.key, "fleet_key_file");
    assert!(!error.problem.contains("too short"), "{}", error.problem);
    let error = resolve_with(
        SettingArgs::default(),
        "redis_url = \"http://cache:6379\"\n",
    )
    .expect_err("scheme");
    assert_eq!(error.key, "redis_url");
}
