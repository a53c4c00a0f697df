//! Errors of configuration: the setting at fault, what is wrong with it,
//! and where its value came from (flag, environment variable, file key or
//! nowhere), so that the message names it as the user gave it.
//!
//! This file only describes and locates errors; it must never decide
//! whether a value is valid.

use std::fmt;
use std::path::PathBuf;

use clap::Args;
use clap::parser::ValueSource;

use super::args::{ServeArgs, Sources};
use super::file::FileKeys;
use super::{KEK_ENV, PREVIOUS_KEK_ENV};

/// A configuration error naming the setting at fault, as the user set it:
/// its flag, its environment variable or its key in the configuration file.
#[derive(Debug)]
pub struct ConfigError {
    /// The flag name of the setting (without `--`).
    pub setting: &'static str,
    /// What is wrong with it.
    pub message: String,
    /// Where the value at fault came from.
    pub origin: Origin,
}

/// Where the value of a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Not worked out (the error was made outside [`Config::resolve`](super::Config::resolve)).
    Unknown,
    /// A flag on the command line, such as `--access-token-lifetime`.
    Flag(String),
    /// An environment variable, such as `SESSIOND_ACCESS_TOKEN_LIFETIME`.
    Env(String),
    /// A key of the configuration file.
    File {
        /// The key, such as `access_token_lifetime`.
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// Nowhere: the setting is at its default (or was set in code), and is
    /// named by its flag and environment variable.
    Unset {
        /// The flag.
        flag: String,
        /// Its environment twin.
        env: Option<String>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid setting ")?;
        match &self.origin {
            Origin::Unknown => write!(f, "`{}`", self.setting)?,
            Origin::Flag(name) | Origin::Env(name) => f.write_str(name)?,
            Origin::File { key, path } => write!(f, "{key} in {}", path.display())?,
            Origin::Unset { flag, env: None } => f.write_str(flag)?,
            Origin::Unset {
                flag,
                env: Some(env),
            } => write!(f, "{flag} ({env})")?,
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// An error about `setting`, located later by `ConfigError::locate`.
pub(super) fn bad(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        message: message.into(),
        origin: Origin::Unknown,
    }
}

/// Settings whose value may also be given directly in an environment
/// variable instead of through the file their flag names: (setting, flag
/// of the file, variable).
const TEXT_IN_ENV: [(&str, &str, &str); 2] = [
    ("key-encryption-key", "key-encryption-key-file", KEK_ENV),
    (
        "previous-key-encryption-key",
        "previous-key-encryption-key-file",
        PREVIOUS_KEK_ENV,
    ),
];

impl ConfigError {
    /// Works out where the value at fault came from: the command line or
    /// the environment (as `sources` recorded them), else the file, else
    /// nowhere. A setting is found by its flag; its file key is its clap
    /// id, which [`FileConfig`] shares.
    pub(super) fn locate(mut self, sources: &Sources, file: Option<&FileKeys<'_>>) -> Self {
        let alias = TEXT_IN_ENV.iter().find(|(s, _, _)| *s == self.setting);
        let flag = alias.map_or(self.setting, |(_, flag, _)| flag);
        let command = ServeArgs::augment_args(clap::Command::new("sessiond"));
        let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(flag)) else {
            return self;
        };
        let id = arg.get_id().as_str();
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        let in_file = file.filter(|f| f.keys.contains(id));
        self.origin = match (sources.given.as_ref().map(|g| g.get(id)), in_file) {
            (Some(Some(ValueSource::CommandLine)), _) => Origin::Flag(format!("--{flag}")),
            (Some(Some(ValueSource::EnvVariable)), _) if env.is_some() => {
                Origin::Env(env.expect("checked"))
            }
            // Not given on the command line (or built in code): the file's
            // value is the one in force, if it has one.
            (_, Some(file)) => Origin::File {
                key: id.to_owned(),
                path: file.path.to_owned(),
            },
            _ => match alias {
                Some((_, _, variable)) if std::env::var_os(variable).is_some() => {
                    Origin::Env((*variable).to_owned())
                }
                _ => Origin::Unset {
                    flag: format!("--{flag}"),
                    env,
                },
            },
        };
        self
    }
}
