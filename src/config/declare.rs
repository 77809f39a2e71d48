//! The machinery behind the settings table: the `settings!` macro and what it generates from one
//! row per setting (the typed [`Settings`](super::Settings), the file's keys, the table as data,
//! merging by precedence, the reload diff and the "keep the running value" step). It declares no
//! setting itself: every setting is a row of `table.rs`.

use std::fmt;

use super::values::{DefaultValue, SettingValue};
use super::ConfigError;

/// Whether a changed setting takes effect on SIGHUP or only at the next start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// A reload applies the new value at once.
    Live,
    /// The running value stays until a restart; a reload logs that the key changed.
    Restart,
}

impl Reload {
    /// The word the documentation uses.
    pub fn describe(self) -> &'static str {
        match self {
            Reload::Live => "live",
            Reload::Restart => "restart",
        }
    }
}

/// One row of the settings table, as data: what `--help`, the environment and the documentation
/// are generated from.
#[derive(Clone, Debug)]
pub struct Setting {
    /// The TOML key, and the name errors and reload logs use.
    pub key: &'static str,
    /// The doc comment of the row, one entry per line.
    pub doc: &'static [&'static str],
    pub default: DefaultValue,
    pub reload: Reload,
    /// The placeholder `--help` shows for the value.
    pub value_name: &'static str,
    /// The flag without its dashes, when it is not the key in kebab case.
    pub flag_override: Option<&'static str>,
    /// The environment variable, when it is not `ZT_SIDECAR_` and the key in upper case.
    pub env_override: Option<&'static str>,
    /// Whether a value may be a secret (never shown by `--help`).
    pub sensitive: bool,
    /// Whether the flag repeats and the variable is comma-separated.
    pub list: bool,
    /// The value a flag given without one means (`--allow-insecure-upstream` alone is `true`).
    pub bare_flag: Option<&'static str>,
}

impl Setting {
    /// The command-line flag, with its dashes.
    pub fn flag(&self) -> String {
        match self.flag_override {
            Some(flag) => format!("--{flag}"),
            None => format!("--{}", self.key.replace('_', "-")),
        }
    }

    /// The environment variable.
    pub fn env(&self) -> String {
        match self.env_override {
            Some(variable) => variable.to_owned(),
            None => format!("ZT_SIDECAR_{}", self.key.to_ascii_uppercase()),
        }
    }

    /// The doc comment as one line of text.
    pub fn help(&self) -> String {
        self.doc
            .iter()
            .map(|line| line.trim())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Where a flag-or-environment value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The command line, with the flag as written in `--help`.
    Flag(String),
    /// The environment, with the variable's name.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "from {flag}"),
            Origin::Env(variable) => write!(f, "from the environment variable {variable}"),
        }
    }
}

/// A value given by a flag or an environment variable (clap already applied flag > environment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Given {
    pub texts: Vec<String>,
    pub origin: Origin,
}

/// A value from the configuration file, with its line for error messages.
#[derive(Clone, Debug, PartialEq)]
pub struct FileValue {
    pub value: toml::Value,
    pub line: usize,
}

/// Picks one setting's value by precedence (flags and environment > file > default) and parses
/// it; the error names the key and, for a flag, a variable or a file line, where it came from.
pub(crate) fn merge_one<T: SettingValue>(
    key: &str,
    default: DefaultValue,
    given: Option<&Given>,
    file: Option<&FileValue>,
    path: Option<&std::path::Path>,
) -> Result<T, ConfigError> {
    if let Some(given) = given {
        return T::parse_texts(&given.texts)
            .map_err(|problem| ConfigError::new(key, format!("{problem} ({})", given.origin)));
    }
    if let Some(file) = file {
        return T::parse_toml(file.value.clone()).map_err(|problem| {
            let within = path.map_or(String::new(), |path| format!(" (in {})", path.display()));
            ConfigError::new(key, format!("{problem} at line {}{within}", file.line))
        });
    }
    T::parse_default(default).map_err(|problem| {
        ConfigError::new(
            key,
            format!(
                "the built-in default {:?} is invalid: {problem}",
                default.describe()
            ),
        )
    })
}

/// Declares the settings. Each row is a doc comment (the help text), then
/// `key: Type = default, Live|Restart, "VALUE_NAME"` and optionally `, flag = "..."` and
/// `, env = "..."`, ending in `;`. The default is text parsed like a flag's value, or
/// `unset("meaning")` for an `Option`.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $key:ident: $ty:ty = $default:expr, $reload:ident, $value_name:literal
            $(, flag = $flag:literal)? $(, env = $env:literal)?;
    )*) => {
        /// Every setting with its merged value (flags > environment > file > default), each
        /// parsed on its own; the rules between settings are applied by `validate.rs`.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Settings {
            $($(#[doc = $doc])+ pub $key: $ty,)*
        }

        /// The configuration file: every key is optional. Values stay TOML until merged, so
        /// that an error can name the key and its line.
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct FileConfig {
            $(pub $key: Option<$crate::config::declare::FileValue>,)*
            /// The file the values came from, named in errors; not a key.
            pub path: Option<std::path::PathBuf>,
        }

        /// The file's keys as serde reads them: an unknown key is an error.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct FileKeys {
            $($key: Option<toml::Spanned<toml::Value>>,)*
        }

        impl FileConfig {
            /// The line of the file that set `key`, when the file set it.
            pub(crate) fn line_of_key(&self, key: &str) -> Option<usize> {
                match key {
                    $(stringify!($key) => self.$key.as_ref().map(|value| value.line),)*
                    _ => None,
                }
            }
        }

        impl FileKeys {
            /// Keeps each value with its line; `line_of` maps a byte offset to a line number.
            pub(crate) fn into_file(self, line_of: impl Fn(usize) -> usize) -> FileConfig {
                FileConfig {
                    $($key: self.$key.map(|spanned| $crate::config::declare::FileValue {
                        line: line_of(spanned.span().start),
                        value: spanned.into_inner(),
                    }),)*
                    path: None,
                }
            }
        }

        /// The table as data, in declaration order.
        pub fn all() -> Vec<$crate::config::declare::Setting> {
            use $crate::config::values::SettingValue as _;
            vec![$($crate::config::declare::Setting {
                key: stringify!($key),
                doc: &[$($doc),+],
                default: $crate::config::values::DefaultValue::from($default),
                reload: $crate::config::declare::Reload::$reload,
                value_name: $value_name,
                flag_override: None $(.or(Some($flag)))?,
                env_override: None $(.or(Some($env)))?,
                sensitive: <$ty>::SENSITIVE,
                list: <$ty>::LIST,
                bare_flag: <$ty>::BARE_FLAG,
            },)*]
        }

        impl Settings {
            /// Merges the flags and environment (`given`, by key) over the file over the
            /// defaults, parsing each value.
            pub(crate) fn merge(
                given: &$crate::config::sources::SettingArgs,
                file: &FileConfig,
            ) -> Result<Settings, $crate::config::ConfigError> {
                Ok(Settings {
                    $($key: $crate::config::declare::merge_one::<$ty>(
                        stringify!($key),
                        $crate::config::values::DefaultValue::from($default),
                        given.get(stringify!($key)),
                        file.$key.as_ref(),
                        file.path.as_deref(),
                    )?,)*
                })
            }

            /// The keys whose values differ from `running`'s, each with how it reloads.
            pub(crate) fn changed_since(
                &self,
                running: &Settings,
            ) -> Vec<(&'static str, $crate::config::declare::Reload)> {
                let mut changed = Vec::new();
                $(if self.$key != running.$key {
                    changed.push((stringify!($key), $crate::config::declare::Reload::$reload));
                })*
                changed
            }

            /// Every setting's value as `check` prints it (`None`: unset), in table order.
            pub(crate) fn shown(&self) -> Vec<(&'static str, Option<toml::Value>)> {
                use $crate::config::values::SettingValue as _;
                vec![$((stringify!($key), self.$key.show()),)*]
            }

            /// Takes `running`'s value for every setting that only a restart changes.
            pub(crate) fn keep_restart_values(&mut self, running: &Settings) {
                $(if $crate::config::declare::Reload::$reload
                    == $crate::config::declare::Reload::Restart
                {
                    self.$key = running.$key.clone();
                })*
            }
        }
    };
}

pub(crate) use settings;
