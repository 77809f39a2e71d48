//! How one setting's value is read from text (a flag or an environment variable), from a TOML
//! value, or from its built-in default: the [`SettingValue`] trait and its implementations for
//! every type the settings table uses. Each parser sees one value; rules that relate two settings
//! belong to `validate.rs`, and nothing here knows a setting's name.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::routes::AccountId;
use crate::server::ListenAddr;
use crate::upstream::{ProxyUrl, TlsRoots};

/// The longest duration any setting accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A built-in default as the table declares it: text parsed like a flag's value, or no value at
/// all, with what that means in words (for `--help` and the documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    Text(&'static str),
    Unset(&'static str),
}

impl DefaultValue {
    /// The default as the documentation and `--help` show it.
    pub fn describe(&self) -> &'static str {
        match self {
            DefaultValue::Text(text) | DefaultValue::Unset(text) => text,
        }
    }
}

impl From<&'static str> for DefaultValue {
    fn from(text: &'static str) -> Self {
        DefaultValue::Text(text)
    }
}

/// An optional setting's default: unset, which means `meaning` (e.g. "any", "none").
pub const fn unset(meaning: &'static str) -> DefaultValue {
    DefaultValue::Unset(meaning)
}

/// A type a setting can have. Errors are the problem only ("… is not a duration"); the caller
/// adds the key and where the value came from. `Debug` is required because `show` falls back on
/// it: a type that may hold a secret already prints it redacted there.
pub trait SettingValue: Sized + std::fmt::Debug {
    /// Whether a value may carry a secret, so that `--help` never shows what the environment holds.
    const SENSITIVE: bool = false;
    /// Whether the flag may be repeated and the environment variable comma-separated.
    const LIST: bool = false;
    /// What a flag given without a value means, for flags that may stand alone.
    const BARE_FLAG: Option<&'static str> = None;

    /// One value as written after a flag or in an environment variable.
    fn parse_text(text: &str) -> Result<Self, String>;

    /// A value from the configuration file. Most settings are written as TOML strings.
    fn parse_toml(value: toml::Value) -> Result<Self, String> {
        Self::parse_text(&wire::<String>(value)?)
    }

    /// The values of a flag given (possibly several times) or of its environment variable. A
    /// setting that is not a list takes the last one, as a repeated flag did before.
    fn parse_texts(texts: &[String]) -> Result<Self, String> {
        match texts.last() {
            Some(text) => Self::parse_text(text),
            None => Self::parse_text(""),
        }
    }

    /// The value as `check` prints it, written as in the configuration file; `None` for unset.
    /// The fallback is the `Debug` text, which never holds a secret.
    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::String(format!("{self:?}")))
    }

    /// The built-in default. A setting without a value must be an `Option`.
    fn parse_default(default: DefaultValue) -> Result<Self, String> {
        match default {
            DefaultValue::Text(text) => Self::parse_text(text),
            DefaultValue::Unset(_) => Err("has no built-in value but is not optional".to_owned()),
        }
    }
}

/// Reads a TOML value as the plain type it must be written as; the message is serde's
/// ("invalid type: integer `10`, expected a string").
fn wire<T: for<'de> Deserialize<'de>>(value: toml::Value) -> Result<T, String> {
    value
        .try_into()
        .map_err(|error: toml::de::Error| error.message().to_owned())
}

/// An optional setting: unset by default, and a blank value (`HTTPS_PROXY=`) unsets it too.
impl<T: SettingValue> SettingValue for Option<T> {
    const SENSITIVE: bool = T::SENSITIVE;
    const LIST: bool = T::LIST;
    const BARE_FLAG: Option<&'static str> = T::BARE_FLAG;

    fn parse_text(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        T::parse_text(text).map(Some)
    }

    fn parse_toml(value: toml::Value) -> Result<Self, String> {
        if value.as_str().is_some_and(|text| text.trim().is_empty()) {
            return Ok(None);
        }
        T::parse_toml(value).map(Some)
    }

    fn parse_texts(texts: &[String]) -> Result<Self, String> {
        if texts.iter().all(|text| text.trim().is_empty()) {
            return Ok(None);
        }
        T::parse_texts(texts).map(Some)
    }

    fn parse_default(default: DefaultValue) -> Result<Self, String> {
        match default {
            DefaultValue::Text(text) => T::parse_text(text).map(Some),
            DefaultValue::Unset(_) => Ok(None),
        }
    }

    fn show(&self) -> Option<toml::Value> {
        self.as_ref().and_then(T::show)
    }
}

/// A value `check` prints as a TOML string.
fn shown_text(text: impl ToString) -> Option<toml::Value> {
    Some(toml::Value::String(text.to_string()))
}

/// A value `check` prints as a TOML integer (saturating, which no setting comes near).
fn shown_number(number: impl TryInto<i64>) -> Option<toml::Value> {
    Some(toml::Value::Integer(number.try_into().unwrap_or(i64::MAX)))
}

/// Shares are written like `10%`, `12.5%` or `0.1`.
impl SettingValue for crate::ratelimit::Share {
    fn parse_text(text: &str) -> Result<Self, String> {
        crate::ratelimit::Share::parse(text)
    }

    fn show(&self) -> Option<toml::Value> {
        shown_text(self)
    }
}

/// Durations are written like `500ms`, `60s`, `24h`, `1h 30m`.
impl SettingValue for Duration {
    fn parse_text(text: &str) -> Result<Self, String> {
        let duration = humantime::parse_duration(text.trim()).map_err(|error| {
            format!("{text:?} is not a duration like 500ms, 60s or 24h ({error})")
        })?;
        // Every duration ends up added to an Instant; far beyond any sensible setting, that would
        // overflow at run time. Ten years is longer than any of these settings can mean.
        if duration > MAX_DURATION {
            return Err(format!(
                "{text:?} is longer than the 10 years any setting here can use"
            ));
        }
        Ok(duration)
    }

    fn show(&self) -> Option<toml::Value> {
        shown_text(humantime::format_duration(*self))
    }
}

/// Byte counts are a plain integer or a number with a unit: B, kB/KB, MB, GB (powers of 1000) or
/// Ki, Mi, Gi and KiB, MiB, GiB (powers of 1024, as Kubernetes and systemd write them). In the
/// file they may also be a TOML integer.
pub fn parse_byte_count(text: &str) -> Result<u64, String> {
    let invalid = || format!("{text:?} is not a byte count like 67108864, 64Mi or 64MiB");
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
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        _ => return Err(invalid()),
    };
    number.checked_mul(multiplier).ok_or_else(invalid)
}

/// A byte count that must not be zero (the cache bound).
impl SettingValue for NonZeroU64 {
    fn parse_text(text: &str) -> Result<Self, String> {
        non_zero_bytes(parse_byte_count(text)?)
    }

    fn parse_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Integer(number) => non_zero_bytes(
                u64::try_from(number).map_err(|_| format!("{number} is not a byte count"))?,
            ),
            other => Self::parse_text(&wire::<String>(other)?),
        }
    }

    fn show(&self) -> Option<toml::Value> {
        shown_number(self.get())
    }
}

fn non_zero_bytes(count: u64) -> Result<NonZeroU64, String> {
    NonZeroU64::new(count).ok_or_else(|| "must be greater than 0".to_owned())
}

/// Whole numbers are TOML integers in the file and decimal text after a flag.
fn parse_whole<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number in range"))
}

impl SettingValue for u32 {
    fn parse_text(text: &str) -> Result<Self, String> {
        parse_whole(text)
    }

    fn parse_toml(value: toml::Value) -> Result<Self, String> {
        wire(value)
    }

    fn show(&self) -> Option<toml::Value> {
        shown_number(*self)
    }
}

impl SettingValue for NonZeroU32 {
    fn parse_text(text: &str) -> Result<Self, String> {
        at_least_one(u32::parse_text(text)?)
    }

    fn parse_toml(value: toml::Value) -> Result<Self, String> {
        at_least_one(u32::parse_toml(value)?)
    }

    fn show(&self) -> Option<toml::Value> {
        shown_number(self.get())
    }
}

impl SettingValue for NonZeroUsize {
    fn parse_text(text: &str) -> Result<Self, String> {
        at_least_one(parse_whole::<usize>(text)?)
    }

    fn parse_toml(value: toml::Value) -> Result<Self, String> {
        at_least_one(wire::<usize>(value)?)
    }

    fn show(&self) -> Option<toml::Value> {
        shown_number(self.get())
    }
}

fn at_least_one<T: TryInto<N> + Copy, N>(value: T) -> Result<N, String> {
    value
        .try_into()
        .map_err(|_| "must be at least 1".to_owned())
}

/// Booleans are TOML booleans in the file, or text there as after a flag or in the environment:
/// `true`/`false`, `yes`/`no`, `on`/`off` or `1`/`0`, in any case (`ZT_SIDECAR_X=1` is how
/// container environments usually say yes). A bare `--allow-insecure-upstream` means `true`.
impl SettingValue for bool {
    const BARE_FLAG: Option<&'static str> = Some("true");

    fn parse_text(text: &str) -> Result<Self, String> {
        const TRUE: [&str; 4] = ["true", "yes", "on", "1"];
        const FALSE: [&str; 4] = ["false", "no", "off", "0"];
        let word = text.trim();
        if TRUE.iter().any(|yes| word.eq_ignore_ascii_case(yes)) {
            return Ok(true);
        }
        if FALSE.iter().any(|no| word.eq_ignore_ascii_case(no)) {
            return Ok(false);
        }
        Err(format!(
            "{text:?} is not a boolean (true/false, yes/no, on/off or 1/0)"
        ))
    }

    fn parse_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Boolean(flag) => Ok(flag),
            toml::Value::Integer(number) => Self::parse_text(&number.to_string()),
            other => Self::parse_text(&wire::<String>(other)?),
        }
    }

    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::Boolean(*self))
    }
}

impl SettingValue for String {
    fn parse_text(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }

    fn show(&self) -> Option<toml::Value> {
        shown_text(self)
    }
}

impl SettingValue for PathBuf {
    fn parse_text(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }

    fn show(&self) -> Option<toml::Value> {
        shown_text(self.display())
    }
}

impl SettingValue for ListenAddr {
    fn parse_text(text: &str) -> Result<Self, String> {
        ListenAddr::parse(text).map_err(|error| error.to_string())
    }

    fn show(&self) -> Option<toml::Value> {
        shown_text(self)
    }
}

impl SettingValue for SocketAddr {
    fn parse_text(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|_| format!("{text:?} is not an IP address and port (e.g. 127.0.0.1:14481)"))
    }

    fn show(&self) -> Option<toml::Value> {
        shown_text(self)
    }
}

/// The mode of a Unix socket file, written in octal (`0660`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl SettingValue for FileMode {
    fn parse_text(text: &str) -> Result<Self, String> {
        u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .map(FileMode)
            .ok_or_else(|| format!("{text:?} is not an octal file mode like 0660"))
    }

    fn show(&self) -> Option<toml::Value> {
        shown_text(format!("{:04o}", self.0))
    }
}

impl SettingValue for TlsRoots {
    fn parse_text(text: &str) -> Result<Self, String> {
        match text {
            "webpki" => Ok(TlsRoots::Webpki),
            "system" => Ok(TlsRoots::System),
            other => Err(format!("{other:?} is not webpki or system")),
        }
    }

    fn show(&self) -> Option<toml::Value> {
        shown_text(match self {
            TlsRoots::Webpki => "webpki",
            TlsRoots::System => "system",
        })
    }
}

/// A proxy URL may carry `user:password@`: it is a secret.
impl SettingValue for ProxyUrl {
    const SENSITIVE: bool = true;

    fn parse_text(text: &str) -> Result<Self, String> {
        ProxyUrl::parse(text.trim()).map_err(|error| error.to_string())
    }

    /// The address only: credentials are never printed (`check` says whether there are some).
    fn show(&self) -> Option<toml::Value> {
        shown_text(self.address())
    }
}

/// The hosts reached without the HTTPS proxy (`NO_PROXY`): comma-separated names, each matching
/// the host itself and every host below it (`example.com` and `.example.com` both match
/// `api.example.com`), or `*` for every host. A port after a name is ignored, as curl does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoProxy(Vec<String>);

impl NoProxy {
    /// Pure: whether `host` (a name or an IP address, brackets allowed) is reached directly.
    pub fn matches(&self, host: &str) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.0.iter().any(|entry| {
            entry == "*"
                || host == *entry
                || host
                    .strip_suffix(entry.as_str())
                    .is_some_and(|above| above.ends_with('.'))
        })
    }
}

impl SettingValue for NoProxy {
    fn parse_text(text: &str) -> Result<Self, String> {
        let entries = text
            .split(',')
            .map(|entry| {
                let entry = entry.trim();
                // `host:port` and `[v6]:port`: the port is ignored; a bare IPv6 address keeps
                // its colons.
                let host = match entry.strip_prefix('[') {
                    Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
                    None if entry.matches(':').count() == 1 => {
                        entry.split(':').next().unwrap_or("")
                    }
                    None => entry,
                };
                host.trim_start_matches('.')
                    .trim_end_matches('.')
                    .to_ascii_lowercase()
            })
            .filter(|host| !host.is_empty())
            .collect::<Vec<_>>();
        if let Some(bad) = entries
            .iter()
            .find(|host| host.contains(|c: char| c.is_whitespace() || c == '/'))
        {
            return Err(format!("{bad:?} is not a host name, address or *"));
        }
        Ok(NoProxy(entries))
    }

    fn show(&self) -> Option<toml::Value> {
        shown_text(self.0.join(","))
    }
}

/// A Redis URL may carry `user:password@`: it is a secret.
impl SettingValue for crate::fleet::RedisUrl {
    const SENSITIVE: bool = true;

    fn parse_text(text: &str) -> Result<Self, String> {
        crate::fleet::RedisUrl::parse(text).map_err(|error| error.to_string())
    }

    /// The URL with its password replaced by `***` (its `Display`), not the `Debug` wrapper.
    fn show(&self) -> Option<toml::Value> {
        shown_text(self)
    }
}

/// The account allow-list: a TOML array of strings, a repeated flag, or a comma-separated list.
impl SettingValue for Vec<AccountId> {
    const LIST: bool = true;

    fn parse_text(text: &str) -> Result<Self, String> {
        let texts: Vec<String> = text.split(',').map(str::to_owned).collect();
        Self::parse_texts(&texts)
    }

    fn parse_toml(value: toml::Value) -> Result<Self, String> {
        Self::parse_texts(&wire::<Vec<String>>(value)?)
    }

    fn parse_texts(texts: &[String]) -> Result<Self, String> {
        texts
            .iter()
            .map(|text| {
                AccountId::parse(text.trim()).ok_or_else(|| {
                    format!("{text:?} is not an account id (32 lowercase hex characters)")
                })
            })
            .collect()
    }

    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::Array(
            self.iter()
                .map(|account| toml::Value::String(account.to_string()))
                .collect(),
        ))
    }
}

/// The log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

impl SettingValue for LogFormat {
    fn parse_text(text: &str) -> Result<Self, String> {
        match text {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown variant `{other}`, expected `pretty` or `json`"
            )),
        }
    }

    fn show(&self) -> Option<toml::Value> {
        shown_text(match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        })
    }
}

/// A log filter in tracing's `EnvFilter` syntax, checked when read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFilter(pub String);

impl SettingValue for LogFilter {
    fn parse_text(text: &str) -> Result<Self, String> {
        check_log_filter(text)?;
        tracing_subscriber::EnvFilter::try_new(text)
            .map(|_| LogFilter(text.to_owned()))
            .map_err(|error| format!("{text:?} is not a log filter ({error})"))
    }

    fn show(&self) -> Option<toml::Value> {
        shown_text(&self.0)
    }
}

/// The level names a bare directive may be, as the message for a wrong one lists them.
const LOG_LEVELS: &str = "trace, debug, info, warn, error or off";

/// Pure: refuses the directives `EnvFilter` would accept but nobody means. `EnvFilter` reads a
/// bare word as a target enabled at every level, so `warning` or `debug2` would silently turn
/// the process's own logs off; here a directive without `=` must be a level, and the text after
/// the last `=` must be one too (`EnvFilter` also accepts the numbers 0 to 5, as we do).
fn check_log_filter(text: &str) -> Result<(), String> {
    // Targets are Rust module paths and levels are words: a filter is ASCII. Refusing the rest
    // here also keeps `EnvFilter`'s parser away from text it panics on (it slices field lists at
    // byte offsets that can fall inside a multi-byte character; found by fuzzing the config).
    if !text.is_ascii() {
        return Err(format!(
            "{text:?} is not a log filter: targets and levels are ASCII"
        ));
    }
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match directive.rsplit_once('=') {
            // `=` inside a span's field list (`[span{field=value}]`) is no level.
            Some((_, level)) if !level.contains(']') && !level.contains('}') => level,
            Some(_) => continue,
            None => directive,
        };
        let level = level.trim();
        if level.is_empty()
            || level
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .is_err()
        {
            return Err(format!(
                "{text:?} is not a log filter: in the directive {directive:?}, {level:?} is not \
                 a level ({LOG_LEVELS}); write `target=level` to filter one target"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_values_are_unset_by_a_blank() {
        assert_eq!(<Option<String>>::parse_text("  "), Ok(None));
        assert_eq!(
            <Option<String>>::parse_text("staff"),
            Ok(Some("staff".to_owned()))
        );
        assert_eq!(
            <Option<String>>::parse_default(unset("the process's")),
            Ok(None)
        );
        assert!(String::parse_default(unset("nothing")).is_err());
    }

    /// Booleans read the words operators write, in any case, from text and from the file.
    #[test]
    fn booleans_accept_the_usual_words_in_any_case() {
        for yes in ["true", "TRUE", "yes", "Yes", "on", "ON", "1", " true "] {
            assert_eq!(bool::parse_text(yes), Ok(true), "{yes}");
        }
        for no in ["false", "False", "no", "NO", "off", "Off", "0"] {
            assert_eq!(bool::parse_text(no), Ok(false), "{no}");
        }
        for bad in ["", "2", "maybe", "yess", "t"] {
            let problem = bool::parse_text(bad).expect_err(bad);
            assert!(problem.contains("yes/no"), "{bad}: {problem}");
        }
        assert_eq!(bool::parse_toml(toml::Value::Boolean(true)), Ok(true));
        assert_eq!(
            bool::parse_toml(toml::Value::String("off".into())),
            Ok(false)
        );
        assert_eq!(bool::parse_toml(toml::Value::Integer(1)), Ok(true));
        assert!(bool::parse_toml(toml::Value::Integer(7)).is_err());
        assert!(bool::parse_toml(toml::Value::Float(1.0)).is_err());
    }

    /// Sizes take Kubernetes' `Mi` as well as `MiB`, and decimal `kB`/`MB`/`GB`.
    #[test]
    fn byte_counts_take_binary_and_decimal_units() {
        for (text, bytes) in [
            ("0", 0),
            ("512", 512),
            ("512B", 512),
            ("4Ki", 4096),
            ("4KiB", 4096),
            ("64Mi", 64 << 20),
            ("64 MiB", 64 << 20),
            ("2Gi", 2 << 30),
            ("2GiB", 2 << 30),
            ("3kB", 3_000),
            ("3KB", 3_000),
            ("5MB", 5_000_000),
            ("1GB", 1_000_000_000),
        ] {
            assert_eq!(parse_byte_count(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "Mi",
            "64mi",
            "64M",
            "64 XB",
            "1.5Mi",
            "-1",
            "99999999999999999999Gi",
        ] {
            assert!(parse_byte_count(bad).is_err(), "{bad}");
        }
    }

    /// `NO_PROXY` as curl reads it: exact hosts, domains with or without a leading dot, `*`.
    #[test]
    fn no_proxy_matches_hosts_and_domains() {
        let list = NoProxy::parse_text(" .corp.example , Localhost:3000,10.0.0.1,[::1]:443, ")
            .expect("valid");
        for direct in [
            "corp.example",
            "api.corp.example",
            "API.Corp.Example.",
            "localhost",
            "10.0.0.1",
            "[::1]",
        ] {
            assert!(list.matches(direct), "{direct}");
        }
        for proxied in [
            "api.cloudflare.com",
            "xcorp.example",
            "10.0.0.10",
            "corp.example.org",
        ] {
            assert!(!list.matches(proxied), "{proxied}");
        }
        let cloudflare = NoProxy::parse_text("cloudflare.com").expect("valid");
        assert!(cloudflare.matches("api.cloudflare.com"));
        assert!(!cloudflare.matches("notcloudflare.com"));
        assert!(NoProxy::parse_text("*")
            .expect("valid")
            .matches("api.cloudflare.com"));
        assert!(!NoProxy::parse_text("")
            .expect("valid")
            .matches("api.cloudflare.com"));
        assert!(NoProxy::parse_text("a b").is_err());
    }

    /// A bare word is a level or nothing: `EnvFilter` alone would take `warning` for a target
    /// and log nothing at all.
    #[test]
    fn log_filters_name_levels_or_targets_with_levels() {
        for good in [
            "info",
            "WARN",
            "off",
            "3",
            "info,zt_risk_sidecar=debug",
            "hyper=warn,zt_risk_sidecar::proxy=trace,",
            "zt_risk_sidecar[request{status=502}]=debug",
        ] {
            assert_eq!(
                LogFilter::parse_text(good),
                Ok(LogFilter(good.to_owned())),
                "{good}"
            );
        }
        for (bad, directive) in [
            ("warning", "\"warning\""),
            ("debug2", "\"debug2\""),
            ("info,zt_risk_sidecar", "\"zt_risk_sidecar\""),
            ("hyper=loud", "\"hyper=loud\""),
            ("hyper=", "\"hyper=\""),
        ] {
            let problem = LogFilter::parse_text(bad).expect_err(bad);
            assert!(problem.contains(directive), "{bad}: {problem}");
            assert!(problem.contains("is not a level"), "{bad}: {problem}");
        }
    }

    /// Found by fuzzing: `EnvFilter`'s parser panicked on a field list holding a multi-byte
    /// character. Such a filter is refused by name before it gets there.
    #[test]
    fn non_ascii_log_filters_are_refused_before_the_parser_sees_them() {
        for bad in [
            " z\u{de}[::0s ={3:0g_]|[:\u{fe}:1]:0}at",
            "info,caf\u{e9}=debug",
        ] {
            let problem = LogFilter::parse_text(bad).expect_err(bad);
            assert!(problem.contains("ASCII"), "{bad}: {problem}");
        }
    }
}
