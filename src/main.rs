//! The `sessiond` binary: parses the command line, sets up logging and runs
//! the server or an operator subcommand. The work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sessiond::SystemClock;
use sessiond::cli::{self, Connection, KeysCommand, SessionsCommand, TokenCommand};
use sessiond::config::{Config, ServeArgs};
use sessiond::logging::FilterHandle;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, Parser)]
#[command(
    name = "sessiond",
    version,
    about = "A gRPC session service",
    args_conflicts_with_subcommands = true,
    after_help = "Exit codes of the client subcommands: 0 ok, 1 failed, 2 bad usage, \
                  3 server unreachable, 4 API key refused."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

// Parsed once at start-up: the size difference between variants is irrelevant.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Ask a running server for its health; exits 0 when it is SERVING.
    Health {
        #[command(flatten)]
        conn: Connection,
    },
    /// List or revoke sessions on a running server.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// List or rotate a running server's signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Inspect a token against a running server.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Write an online backup of a running server to a file.
    Backup {
        /// The backup file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        conn: Connection,
    },
    /// Restore a backup file into an empty data directory (server stopped).
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The data directory to create.
        #[arg(
            long,
            env = "SESSIOND_DATA_DIR",
            default_value = "./data",
            value_name = "DIR"
        )]
        data_dir: PathBuf,
        /// The data directory the backup was taken of: its write-ahead log
        /// (archive included) since the backup is replayed on top, so that
        /// no write acknowledged there is lost. Its server must be stopped.
        #[arg(long, value_name = "OLD_DATA_DIR")]
        replay_log: Option<PathBuf>,
    },
}

/// mimalloc: the store and the HTTP/2 stack allocate on every call, and
/// glibc's allocator cost measurably more CPU per write (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Parsed through the matches, which also say where each server setting
    // came from (flag or environment), for errors that name it.
    let matches = Cli::command().get_matches();
    let cli =
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sessiond: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            None => run(cli.serve.with_sources(&matches)).await,
            Some(Command::Serve(args)) => {
                let serve = matches.subcommand_matches("serve").unwrap_or(&matches);
                run(args.with_sources(serve)).await
            }
            Some(Command::Health { conn }) => cli::health(&conn).await,
            Some(Command::Sessions { command, conn }) => cli::sessions(command, &conn).await,
            Some(Command::Keys { command, conn }) => cli::keys(command, &conn).await,
            Some(Command::Token { command, conn }) => cli::token(command, &conn).await,
            Some(Command::Backup { out, conn }) => cli::backup(&out, &conn).await,
            Some(Command::Restore {
                file,
                data_dir,
                replay_log,
            }) => cli::restore(&file, &data_dir, replay_log.as_deref()).await,
        }
    })
}

async fn run(args: ServeArgs) -> ExitCode {
    let config = match Config::resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sessiond: {e}");
            return ExitCode::from(2);
        }
    };
    let log_filter = sessiond::logging::init(&config);
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sessiond: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(reload_on_sighup(args, log_filter, reload_tx));
    let served = sessiond::serve_with_reload(
        listener,
        config,
        Arc::new(SystemClock),
        shutdown_signal(),
        Some(reload_rx),
    )
    .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logging writes to stderr already: one line, in the configured
            // format, and on the target no log filter silences.
            tracing::error!(target: sessiond::server::LIFECYCLE_TARGET, "{e}");
            ExitCode::FAILURE
        }
    }
}

/// On SIGHUP, reads the configuration again (the file may have changed) and
/// applies the log filter here and the API keys, client secrets, CORS
/// origins and TLS files in the server. A configuration that does not
/// validate is refused and the running one kept.
async fn reload_on_sighup(
    args: ServeArgs,
    log_filter: FilterHandle,
    server: UnboundedSender<Config>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            match Config::resolve(&args) {
                Ok(config) => {
                    if let Err(e) = log_filter.reload(sessiond::logging::filter(&config)) {
                        tracing::error!("cannot change the log filter: {e}");
                    }
                    if server.send(config).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(target: sessiond::server::LIFECYCLE_TARGET, "configuration reload refused: {e}")
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (args, log_filter, server);
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
