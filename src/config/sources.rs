//! Where settings come from: the command line and the environment (one clap flag and one
//! variable per row of the settings table, generated at start) and the TOML file. It reads and
//! reports where each value came from; it does not decide precedence or validity.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, Parser, Subcommand};

use super::declare::{Given, Origin};
use super::table::{self, FileConfig, FileKeys};
use super::ConfigError;

/// Command-line flags. The settings come from the table (each also from its environment
/// variable); `--config` and `--dev` are not settings: they say where the file is and which mode
/// to run in. Every flag is global, so that `check` takes the same flags as the service.
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
    #[arg(long, env = "ZT_SIDECAR_CONFIG", value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Run against a built-in simulated Cloudflare API: no token, no network needed.
    #[cfg(feature = "dev")]
    #[arg(long, global = true)]
    pub dev: bool,
    #[command(flatten)]
    pub settings: SettingArgs,
    /// Without a command, the service runs.
    #[command(subcommand)]
    pub command: Option<CliCommand>,
}

/// What to do instead of running the service.
#[derive(Subcommand, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CliCommand {
    /// Validate flags, environment and file as start-up does (token files and CA file read, the
    /// upstream client built), print the effective configuration with secrets redacted, and exit
    /// 0, or print the errors and exit 2. Binds nothing.
    Check,
}

impl Cli {
    /// Whether `--dev` was given; always false in a build without the `dev` feature, which has no
    /// such flag.
    pub fn dev_mode(&self) -> bool {
        #[cfg(feature = "dev")]
        return self.dev;
        #[cfg(not(feature = "dev"))]
        return false;
    }
}

/// The settings given by flags or environment variables, by key. None has a clap default, so
/// that an unset flag falls through to the file and then to the built-in default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettingArgs {
    given: BTreeMap<&'static str, Given>,
}

impl SettingArgs {
    pub(crate) fn get(&self, key: &str) -> Option<&Given> {
        self.given.get(key)
    }

    /// Gives a value as clap would have reported it, for tests that must not touch the process
    /// environment.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, key: &'static str, given: Given) {
        self.given.insert(key, given);
    }
}

impl Args for SettingArgs {
    fn augment_args(command: Command) -> Command {
        table::all().into_iter().fold(command, |command, setting| {
            let mut arg = Arg::new(setting.key)
                .long(setting.flag().trim_start_matches('-').to_owned())
                .env(setting.env())
                .value_name(setting.value_name)
                .help(format!(
                    "{} [default: {}]",
                    setting.help().replace('`', ""),
                    setting.default.describe().replace('`', "")
                ))
                .hide_env_values(setting.sensitive)
                .global(true);
            arg = if setting.list {
                arg.action(ArgAction::Append).value_delimiter(',')
            } else {
                arg.action(ArgAction::Set)
            };
            if let Some(bare) = setting.bare_flag {
                arg = arg.num_args(0..=1).default_missing_value(bare);
            }
            command.arg(arg)
        })
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for SettingArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = BTreeMap::new();
        for setting in table::all() {
            let origin = match matches.value_source(setting.key) {
                Some(ValueSource::CommandLine) => Origin::Flag(setting.flag()),
                Some(ValueSource::EnvVariable) => Origin::Env(setting.env()),
                _ => {
                    if let Some(alias) = lowercase_alias(&setting.env()) {
                        given.insert(setting.key, alias);
                    }
                    continue;
                }
            };
            let texts = matches
                .get_many::<String>(setting.key)
                .map(|values| values.cloned().collect())
                .unwrap_or_default();
            given.insert(setting.key, Given { texts, origin });
        }
        Ok(SettingArgs { given })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = SettingArgs::from_arg_matches(matches)?;
        Ok(())
    }
}

/// The proxy variables that tools also read in lower case (curl, Go, Python); clap reads one
/// name per flag, so the lower-case one is looked up here when the upper-case one is unset.
const LOWERCASE_ALIASES: [&str; 2] = ["HTTPS_PROXY", "NO_PROXY"];

/// `https_proxy` or `no_proxy` from the environment, when `variable` is one of those two.
fn lowercase_alias(variable: &str) -> Option<Given> {
    if !LOWERCASE_ALIASES.contains(&variable) {
        return None;
    }
    let lower = variable.to_ascii_lowercase();
    let value = std::env::var(&lower).ok()?;
    Some(Given {
        texts: vec![value],
        origin: Origin::Env(lower),
    })
}

/// Parses a configuration file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigError::new("config", format!("cannot read {}: {error}", path.display()))
    })?;
    let file = parse_file(&text).map_err(|error| ConfigError {
        problem: format!("{} (in {})", error.problem, path.display()),
        ..error
    })?;
    Ok(FileConfig {
        path: Some(path.to_owned()),
        ..file
    })
}

/// Parses configuration file text: TOML syntax and known keys. Values are parsed when merged.
pub fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
    let keys: FileKeys = toml::from_str(text).map_err(|error| {
        let message = error.message().to_owned();
        let start = error.span().map_or(0, |span| span.start.min(text.len()));
        let before = text.get(..start).unwrap_or("");
        let line_start = before.rfind('\n').map_or(0, |index| index + 1);
        // The key is the one on the line the error points at; an unknown key is also named in
        // backticks in toml's message.
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
        ConfigError::new(&key, format!("{message} at line {}", line_of(text, start)))
    })?;
    Ok(keys.into_file(|offset| line_of(text, offset)))
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .unwrap_or("")
        .matches('\n')
        .count()
        + 1
}

fn key_named_in(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let length = message[start..].find('`')?;
    Some(message[start..start + length].to_owned())
}
