//! `sessiond token inspect`: a token's header and claims, decoded, with
//! readable twins of its time claims, and the server's verdict on it.
//!
//! This file must never trust a token it decodes: the verdict is the
//! server's.

use std::process::ExitCode;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Subcommand;
use tonic_types::StatusExt;

use crate::pb;

use super::client::{Client, Connection, from_status};
use super::output::rfc3339_secs;
use super::{EXIT_FAILED, Outcome, exit, fail};

/// `sessiond token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Decode an access token's header and claims, and ask the server
    /// whether it accepts it (exit 0 when it does, 1 when it does not).
    Inspect {
        /// The access token.
        token: String,
    },
}

pub(super) fn decode_part(part: &str) -> Option<serde_json::Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// JWT claims that hold a time in seconds since the epoch.
pub(super) const TIME_CLAIMS: [&str; 4] = ["iat", "exp", "nbf", "auth_time"];

/// Readable twins of the claims that hold times, for people reading
/// `token inspect`: RFC 3339 (UTC) for each of [`TIME_CLAIMS`], and for the
/// `t` (ms) of each claim set through the claim RPCs (`{"v": .., "t": ..}`),
/// keyed `<claim>.t`. A value that is no time between 1970 and 9999 has none.
pub(super) fn claim_times(
    claims: &serde_json::Value,
) -> serde_json::Map<String, serde_json::Value> {
    const LAST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let readable = |secs: Option<i64>| secs.filter(|s| (0..=LAST).contains(s)).map(rfc3339_secs);
    let mut out = serde_json::Map::new();
    let Some(claims) = claims.as_object() else {
        return out;
    };
    for (key, value) in claims {
        if TIME_CLAIMS.contains(&key.as_str()) {
            if let Some(time) = readable(value.as_i64()) {
                out.insert(key.clone(), time.into());
            }
        } else if let Some(set) = value.as_object().filter(|o| o.contains_key("v")) {
            let secs = set.get("t").and_then(serde_json::Value::as_i64);
            if let Some(time) = readable(secs.map(|ms| ms.div_euclid(1000))) {
                out.insert(format!("{key}.t"), time.into());
            }
        }
    }
    out
}

/// `sessiond token inspect TOKEN`
pub async fn token(command: TokenCommand, conn: &Connection) -> ExitCode {
    exit(run_token(command, conn).await)
}

pub(super) async fn run_token(command: TokenCommand, conn: &Connection) -> Outcome {
    let TokenCommand::Inspect { token } = command;
    let token = token.trim().to_owned();
    let parts: Vec<&str> = token.split('.').collect();
    let (header, claims) = match parts.as_slice() {
        [h, c, _] => (decode_part(h), decode_part(c)),
        _ => (None, None),
    };
    let client = Client::connect(conn).await?;
    let verdict = client
        .sessions()
        .get_session(client.request(pb::GetSessionRequest {
            access_token: token.clone(),
            check_database: true,
            ..Default::default()
        }))
        .await;
    let (accepted, reason, message) = match &verdict {
        Ok(_) => (true, None, None),
        Err(s) => {
            let details = s.get_error_details();
            let reason = details.error_info().map(|i| i.reason.clone());
            if reason.is_none() {
                return Err(from_status(s.clone()));
            }
            if reason.as_deref() == Some("MISSING_CREDENTIALS") {
                return Err(from_status(s.clone()));
            }
            (false, reason, Some(s.message().to_owned()))
        }
    };
    // The claims stay as the token holds them (times in epoch numbers);
    // their readable twins sit beside them in `claim_times`.
    let report = serde_json::json!({
        "header": header,
        "claims": claims,
        "claim_times": claims.as_ref().map(claim_times),
        "accepted": accepted,
        "reason": reason,
        "message": message,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("JSON values serialise")
    );
    if header.is_none() {
        eprintln!("the token is not a JWT (a refresh token is opaque and cannot be inspected)");
    }
    if accepted {
        Ok(())
    } else {
        Err(fail(
            EXIT_FAILED,
            format!(
                "the server refuses this token: {}",
                reason.unwrap_or_default()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_times_are_readable_twins_of_the_time_claims() {
        let claims = serde_json::json!({
            "sub": "alice",
            "iat": 1_795_377_429,
            "exp": 1_795_381_029,
            "st-role": {"v": ["admin"], "t": 1_795_377_429_500_i64},
            "count": 3,
            "nbf": "soon",
            "auth_time": -1,
            "big": {"v": 1, "t": 1e300},
        });
        assert_eq!(
            serde_json::Value::Object(claim_times(&claims)),
            serde_json::json!({
                "iat": "2026-11-22T19:57:09Z",
                "exp": "2026-11-22T20:57:09Z",
                "st-role.t": "2026-11-22T19:57:09Z",
            })
        );
        assert!(claim_times(&serde_json::json!("not claims")).is_empty());
    }
}
