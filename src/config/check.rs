//! What `zt-risk-sidecar check` prints for a valid configuration: every setting's effective
//! value, written as a configuration file would write it, with where the value came from, and
//! whether each secret is set and from where. It formats only; loading and validating are
//! `load`'s, and a secret's value is never read here.

use std::fmt::Write as _;

use super::{Cli, Config, FileConfig, TOKEN_ENV};

/// Pure: the report of a valid configuration. `cli` and `file` are what it was loaded from.
pub fn describe(cli: &Cli, file: &FileConfig, config: &Config) -> String {
    let mut text = String::from(
        "# zt-risk-sidecar check: the configuration is valid.\n\
         # The effective settings as a configuration file would write them, secrets redacted;\n\
         # after each, where its value came from.\n",
    );
    let within = file
        .path
        .as_ref()
        .map_or(String::new(), |path| format!(" of {}", path.display()));
    for (key, value) in config.settings.shown() {
        let origin = match (cli.settings.get(key), file.line_of_key(key)) {
            (Some(given), _) => given.origin.to_string(),
            (None, Some(line)) => format!("from line {line}{within}"),
            (None, None) => "default".to_owned(),
        };
        // Writing to a String cannot fail.
        let _ = match value {
            Some(value) => writeln!(text, "{key} = {value}  # {origin}"),
            None => writeln!(text, "# {key} is unset  # {origin}"),
        };
    }
    let token = match (&config.token, &config.token_file) {
        (None, _) if config.dev => "set by --dev (the simulator's)".to_owned(),
        (None, _) => "none: callers must send their own credentials".to_owned(),
        (Some(_), Some(path)) => format!("<redacted>, from token_file {}", path.display()),
        (Some(_), None) => format!("<redacted>, from the environment variable {TOKEN_ENV}"),
    };
    let admin_token = match (&config.admin_token, &config.admin_token_file) {
        (Some(_), Some(path)) => format!("<redacted>, from admin_token_file {}", path.display()),
        _ => "none: the admin listener asks for no token".to_owned(),
    };
    let _ = writeln!(text, "# the sidecar's token: {token}");
    let _ = writeln!(text, "# the admin token: {admin_token}");
    if config
        .settings
        .https_proxy
        .as_ref()
        .is_some_and(|proxy| proxy.has_credentials())
    {
        let _ = writeln!(text, "# https_proxy's credentials: <redacted>");
    }
    if config.settings.https_proxy.is_some() && config.https_proxy.is_none() {
        let _ = writeln!(
            text,
            "# https_proxy is not used: no_proxy exempts {}",
            config.upstream.host()
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_file, resolve};
    use clap::Parser;

    #[test]
    fn every_setting_is_printed_with_its_origin_and_no_secret() {
        let cli = Cli::try_parse_from([
            "zt-risk-sidecar",
            "check",
            "--cache-ttl",
            "90s",
            "--https-proxy",
            "http://user:proxy-password@proxy.corp:3128",
        ])
        .expect("valid flags");
        let file =
            parse_file("negative_ttl = \"3s\"\n\ncache_max_bytes = \"64Mi\"\n").expect("file");
        let config = resolve(&cli, file.clone(), Some("env-token-secret".into())).expect("valid");
        let text = describe(&cli, &file, &config);
        for key in config.settings.shown().iter().map(|(key, _)| *key) {
            assert!(text.contains(&format!("{key} ")), "{key} missing:\n{text}");
        }
        for line in [
            "cache_ttl = \"1m 30s\"  # from --cache-ttl",
            "negative_ttl = \"3s\"  # from line 1",
            "cache_max_bytes = 67108864  # from line 3",
            "listen = \"127.0.0.1:14480\"  # default",
            "# tls_extra_ca_file is unset  # default",
            "# the sidecar's token: <redacted>, from the environment variable CLOUDFLARE_API_TOKEN",
            "# the admin token: none",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
        assert!(text.contains("proxy.corp:3128"), "{text}");
        for secret in ["env-token-secret", "proxy-password"] {
            assert!(!text.contains(secret), "{secret} printed:\n{text}");
        }
        assert!(text.contains("https_proxy = \"http://proxy.corp:3128\"  # from --https-proxy"));
        assert!(
            text.contains("# https_proxy's credentials: <redacted>"),
            "{text}"
        );
        // What is printed reads back as a configuration file and means the same, except for
        // what is redacted (the proxy's credentials).
        let again = parse_file(&text).expect("the report is a configuration file");
        let reread = resolve(&Cli::default(), again, None).expect("valid");
        let mut expected = config.settings.clone();
        expected.https_proxy = reread.settings.https_proxy.clone();
        assert_eq!(reread.settings, expected);
        assert_eq!(
            reread.settings.https_proxy.map(|proxy| proxy.address()),
            Some("http://proxy.corp:3128".to_owned())
        );
    }

    /// The Redis URL prints as a URL that reads back, its password as `***`; the password file's
    /// and the fleet key's contents are never printed.
    #[test]
    fn the_redis_url_reads_back_without_its_password() {
        let dir = std::env::temp_dir().join(format!("zt-sidecar-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let key = dir.join("fleet-key");
        std::fs::write(&key, "fleet-key-material-".repeat(3)).expect("fleet key");
        let cli = Cli::try_parse_from([
            "zt-risk-sidecar",
            "check",
            "--redis-url",
            "redis://sidecar:url-password@127.0.0.1:6379",
            "--fleet-key-file",
            key.to_str().expect("utf-8 temp path"),
        ])
        .expect("valid flags");
        let file = parse_file("").expect("file");
        let config = resolve(&cli, file.clone(), None).expect("valid");
        let text = describe(&cli, &file, &config);
        assert!(
            text.contains("redis_url = \"redis://sidecar:***@127.0.0.1:6379\"  # from --redis-url"),
            "{text}"
        );
        for secret in ["url-password", "fleet-key-material"] {
            assert!(!text.contains(secret), "{secret} printed:\n{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
