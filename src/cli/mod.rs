//! The operator subcommands of the `sessiond` binary: clients of a running
//! server (sessions, keys, token inspection, backup, health) and the offline
//! restore.
//!
//! Exit codes scripts can rely on: 0 success; 1 the operation failed (a
//! refused token, a bad backup file, an error from the server); 2 bad usage;
//! 3 the server could not be reached; 4 the server refused the API key.
//! Output for people goes to stdout, diagnostics to stderr.
//!
//! # Layout
//!
//! - `client`: the connection flags and reaching the server;
//! - `sessions`, `keys`, `token`, `health`: the subcommands of those names;
//! - `backup`: `backup` and the offline `restore`;
//! - `output`: times as people and JSON read them.

use std::process::ExitCode;

mod backup;
mod client;
mod health;
mod keys;
mod output;
mod sessions;
mod token;

pub use backup::{backup, restore};
pub use client::{Connection, SERVER_KEYS_ENV, default_addr, key_from_server_list};
pub use health::health;
pub use keys::{KeysCommand, keys};
pub use output::rfc3339;
pub use sessions::{SessionsCommand, sessions};
pub use token::{TokenCommand, token};

/// Exit code: the operation failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the server could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: the server refused the API key.
pub const EXIT_REFUSED: u8 = 4;

/// A failed subcommand: its exit code and message.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

type Outcome<T = ()> = Result<T, Failure>;

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn exit(outcome: Outcome) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("sessiond: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
