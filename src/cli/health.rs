//! `sessiond health`: asks a running server for its health, for scripts
//! and container health checks.
//!
//! This file must never change anything on the server.

use std::process::ExitCode;

use crate::config::parse_duration;

use super::client::{Connection, status_with_causes, with_causes};
use super::{EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, Failure, exit, fail};

/// `sessiond health`: exit 0 when the server reports SERVING.
pub async fn health(conn: &Connection) -> ExitCode {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let timeout = match parse_duration(&conn.timeout) {
        Ok(t) => t,
        Err(e) => return exit(Err(fail(EXIT_USAGE, format!("--timeout: {e}")))),
    };
    let (addr, endpoint) = match conn.endpoint(timeout) {
        Ok(dial) => dial,
        Err(f) => return exit(Err(f)),
    };
    let check = async {
        let channel = endpoint.connect().await.map_err(|e| {
            fail(
                EXIT_UNREACHABLE,
                format!("cannot reach {addr}: {}", with_causes(&e)),
            )
        })?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|s| {
                fail(
                    EXIT_FAILED,
                    format!("health check failed: {}", status_with_causes(&s)),
                )
            })?;
        Ok::<_, Failure>(reply.into_inner().status())
    };
    let outcome = match tokio::time::timeout(timeout, check).await {
        Ok(Ok(ServingStatus::Serving)) => {
            println!("SERVING");
            Ok(())
        }
        Ok(Ok(status)) => {
            println!("{}", status.as_str_name());
            Err(fail(
                EXIT_FAILED,
                format!("the server is {}", status.as_str_name()),
            ))
        }
        Ok(Err(f)) => Err(f),
        Err(_) => Err(fail(
            EXIT_UNREACHABLE,
            format!("no answer from {addr} within {timeout:?}"),
        )),
    };
    exit(outcome)
}
