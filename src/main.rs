//! The `sessiond` binary: parses the command line, sets up logging and runs
//! the server (or a client subcommand). The work is in the library.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sessiond::SystemClock;
use sessiond::config::{Config, LogFormat, ServeArgs, parse_duration};

#[derive(Debug, Parser)]
#[command(
    name = "sessiond",
    version,
    about = "A gRPC session service",
    args_conflicts_with_subcommands = true
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
        /// Server address [default: SESSIOND_LISTEN with a wildcard IP made loopback, else 127.0.0.1:50051].
        #[arg(long, value_name = "ADDR")]
        addr: Option<String>,
        /// Give up after this long.
        #[arg(long, default_value = "5s", value_name = "DUR")]
        timeout: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sessiond: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Health { addr, timeout }) => runtime.block_on(health(addr, &timeout)),
        Some(Command::Serve(args)) => runtime.block_on(run(args)),
        None => runtime.block_on(run(cli.serve)),
    }
}

async fn run(args: ServeArgs) -> ExitCode {
    let config = match Config::resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sessiond: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "{},{}=info",
        config.log,
        sessiond::server::READY_TARGET
    ));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sessiond: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    match sessiond::serve(listener, config, Arc::new(SystemClock), shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("sessiond: {e}");
            ExitCode::FAILURE
        }
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

fn default_health_addr() -> String {
    match std::env::var("SESSIOND_LISTEN")
        .ok()
        .and_then(|v| v.parse::<std::net::SocketAddr>().ok())
    {
        Some(mut addr) => {
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            addr.to_string()
        }
        None => "127.0.0.1:50051".to_owned(),
    }
}

async fn health(addr: Option<String>, timeout: &str) -> ExitCode {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let timeout = match parse_duration(timeout) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sessiond health: --timeout: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = addr.unwrap_or_else(default_health_addr);
    let check = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad address {addr}: {e}"))?
            .connect_timeout(timeout.min(Duration::from_secs(5)));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot reach {addr}: {e}"))?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|s| format!("health check failed: {}", s.message()))?;
        Ok::<_, String>(reply.into_inner().status())
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(ServingStatus::Serving)) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            println!("{}", status.as_str_name());
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("sessiond health: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("sessiond health: no answer from {addr} within {timeout:?}");
            ExitCode::FAILURE
        }
    }
}
