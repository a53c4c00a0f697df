//! `sessiond keys ...`: listing a running server's signing keys and
//! rotating them.
//!
//! This file must never print private key material (the server never
//! sends it).

use std::process::ExitCode;

use clap::Subcommand;

use crate::pb;
use crate::pb::admin_service_client::AdminServiceClient;
use crate::pb::jwt_service_client::JwtServiceClient;

use super::client::{Client, Connection, from_status};
use super::output::{json_time, rfc3339};
use super::{Outcome, exit};

/// `sessiond keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List the signing keys and their states.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Publish a new rotating key now; it signs after the publication delay.
    Rotate,
}

/// `sessiond keys ...`
pub async fn keys(command: KeysCommand, conn: &Connection) -> ExitCode {
    exit(run_keys(command, conn).await)
}

pub(super) async fn run_keys(command: KeysCommand, conn: &Connection) -> Outcome {
    let client = Client::connect(conn).await?;
    match command {
        KeysCommand::List { json } => {
            let keys = AdminServiceClient::new(client.channel.clone())
                .list_signing_keys(client.request(pb::ListSigningKeysRequest {}))
                .await
                .map_err(from_status)?
                .into_inner()
                .keys;
            if !json {
                println!(
                    "{:<22}  {:<5}  {:<9}  {:<20}  {:<20}",
                    "KID", "ALG", "STATE", "SIGNS FROM", "RETIRES"
                );
            }
            for k in keys {
                if json {
                    // An unset time is null, never the table's `-`.
                    let line = serde_json::json!({
                        "kid": k.kid, "alg": k.alg, "state": k.state,
                        "created": json_time(k.created.as_ref()),
                        "signs_from": json_time(k.signs_from.as_ref()),
                        "retires_at": json_time(k.retires_at.as_ref()),
                    });
                    println!("{line}");
                } else {
                    let (from, retires) = (
                        rfc3339(k.signs_from.as_ref()),
                        rfc3339(k.retires_at.as_ref()),
                    );
                    println!(
                        "{:<22}  {:<5}  {:<9}  {from:<20}  {retires:<20}",
                        k.kid, k.alg, k.state
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Rotate => {
            let rotated = JwtServiceClient::new(client.channel.clone())
                .rotate_signing_key(client.request(pb::RotateSigningKeyRequest {}))
                .await
                .map_err(from_status)?
                .into_inner();
            println!("{}", rotated.kid);
            eprintln!(
                "published {}; it signs from {}",
                rotated.kid,
                rfc3339(rotated.signs_from.as_ref())
            );
            Ok(())
        }
    }
}
