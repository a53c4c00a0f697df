//! Reaching a running server: the connection flags (address, timeout,
//! TLS, API key, with the fallback to a key from the server's own
//! `SESSIOND_API_KEYS`), the channel, and failures told with their causes.
//!
//! This file must never print a key, nor decide an exit code for anything
//! but reaching the server and its refusals.

use std::time::Duration;

use clap::Args;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::config::parse_duration;
use crate::pb::session_service_client::SessionServiceClient;

use super::{EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, Failure, fail};

/// How to reach the server.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Server address [default: SESSIOND_LISTEN with a wildcard IP made loopback, else 127.0.0.1:50051].
    #[arg(long, env = "SESSIOND_ADDR", value_name = "ADDR", global = true)]
    pub addr: Option<String>,
    /// API key sent as x-api-key [default: from the server's SESSIOND_API_KEYS,
    /// the first key given in full with the widest scope].
    #[arg(
        long,
        env = "SESSIOND_API_KEY",
        value_name = "KEY",
        hide_env_values = true,
        global = true
    )]
    pub api_key: Option<String>,
    /// Give up on the server after this long.
    #[arg(long, default_value = "10s", value_name = "DUR", global = true)]
    pub timeout: String,
    /// Speak TLS, trusting this PEM CA for the server's certificate.
    #[arg(long, env = "SESSIOND_TLS_CA", value_name = "FILE", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for servers that require mutual TLS.
    #[arg(
        long = "tls-client-cert",
        env = "SESSIOND_TLS_CLIENT_CERT",
        value_name = "FILE",
        global = true,
        requires = "tls_client_key"
    )]
    pub tls_client_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[arg(
        long = "tls-client-key",
        env = "SESSIOND_TLS_CLIENT_KEY",
        value_name = "FILE",
        global = true,
        requires = "tls_client_cert"
    )]
    pub tls_client_key: Option<std::path::PathBuf>,
    /// The name the server's certificate must hold [default: the host of --addr].
    #[arg(long, env = "SESSIOND_TLS_DOMAIN", value_name = "NAME", global = true)]
    pub tls_domain: Option<String>,
}

impl Connection {
    /// The address and endpoint to dial, with TLS when a CA is given.
    pub(super) fn endpoint(&self, timeout: Duration) -> Result<(String, Endpoint), Failure> {
        let addr = self.addr.clone().unwrap_or_else(default_addr);
        let scheme = if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| fail(EXIT_USAGE, format!("bad address {addr}: {e}")))?
            .connect_timeout(timeout);
        if let Some(ca) = &self.tls_ca {
            let read = |path: &std::path::Path| {
                std::fs::read(path)
                    .map_err(|e| fail(EXIT_USAGE, format!("cannot read {}: {e}", path.display())))
            };
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
            if let Some(domain) = &self.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            if let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) {
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    read(cert)?,
                    read(key)?,
                ));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| fail(EXIT_USAGE, format!("TLS settings: {e}")))?;
        }
        Ok((addr, endpoint))
    }
}

/// The server's list of API keys, which a client in its environment (such as
/// `docker exec` into its container) may take a key from.
pub const SERVER_KEYS_ENV: &str = "SESSIOND_API_KEYS";

/// The key a client can send, taken from a server's key list (`KEY` or
/// `NAME:SCOPE:KEY` entries, comma-separated): the first entry that holds the
/// key itself (a `sha256:` entry holds only its hash) among those of the
/// widest scope, since the operator subcommands include admin calls.
/// Entries the server would refuse are skipped.
pub fn key_from_server_list(list: &str) -> Option<String> {
    let mut best: Option<(crate::config::Scope, String)> = None;
    for (i, entry) in list.split(',').map(str::trim).enumerate() {
        let Ok(key) = crate::config::ApiKey::parse(entry, i) else {
            continue;
        };
        let crate::config::KeySecret::Plain(secret) = key.secret else {
            continue;
        };
        if best.as_ref().is_none_or(|(scope, _)| key.scope > *scope) {
            best = Some((key.scope, secret.expose().to_owned()));
        }
    }
    best.map(|(_, key)| key)
}

/// The address from `SESSIOND_LISTEN`, with a wildcard IP made loopback.
pub fn default_addr() -> String {
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

/// A connected channel and the API key to send.
pub(super) struct Client {
    pub(super) channel: Channel,
    pub(super) api_key: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    pub(super) timeout: Duration,
}

impl Client {
    pub(super) async fn connect(conn: &Connection) -> Result<Self, Failure> {
        let timeout = parse_duration(&conn.timeout)
            .map_err(|e| fail(EXIT_USAGE, format!("--timeout: {e}")))?;
        let (addr, endpoint) = conn.endpoint(timeout)?;
        // --api-key or SESSIOND_API_KEY first; else a key of the server's own
        // list, when the client runs in the server's environment.
        let from_server = || {
            std::env::var(SERVER_KEYS_ENV)
                .ok()
                .and_then(|list| key_from_server_list(&list))
        };
        let api_key = conn
            .api_key
            .clone()
            .or_else(from_server)
            .map(|k| {
                k.parse().map_err(|_| {
                    fail(
                        EXIT_USAGE,
                        "--api-key holds characters a header cannot carry",
                    )
                })
            })
            .transpose()?;
        let channel = endpoint.connect().await.map_err(|e| {
            fail(
                EXIT_UNREACHABLE,
                format!("cannot reach sessiond at {addr}: {}", with_causes(&e)),
            )
        })?;
        Ok(Self {
            channel,
            api_key,
            timeout,
        })
    }

    pub(super) fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        req.set_timeout(self.timeout);
        if let Some(key) = &self.api_key {
            req.metadata_mut()
                .insert(crate::api::API_KEY_HEADER, key.clone());
        }
        req
    }

    pub(super) fn sessions(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel.clone())
    }
}

/// An error followed by its causes (`source()`, outermost first), each after
/// `: `, so that "transport error" goes on to say what failed: connection
/// refused, a TLS handshake, a name lookup, a timeout. A cause whose text the
/// line already holds is not repeated.
pub(super) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    append_causes(&mut text, error.source());
    text
}

/// A status's message followed by the causes of its transport error, if any.
pub(super) fn status_with_causes(status: &Status) -> String {
    let mut text = status.message().to_owned();
    append_causes(&mut text, std::error::Error::source(status));
    text
}

pub(super) fn append_causes(
    text: &mut String,
    mut next: Option<&(dyn std::error::Error + 'static)>,
) {
    while let Some(cause) = next {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        next = cause.source();
    }
}

/// What a status means for the operator.
pub(super) fn from_status(status: Status) -> Failure {
    let details = status.get_error_details();
    let reason = details.error_info().map(|i| i.reason.clone());
    match (status.code(), reason.as_deref()) {
        (Code::Unauthenticated, Some("MISSING_CREDENTIALS")) | (Code::PermissionDenied, _) => fail(
            EXIT_REFUSED,
            format!(
                "the server refused the API key ({}); pass --api-key or set SESSIOND_API_KEY \
                 (or SESSIOND_API_KEYS)",
                status.message()
            ),
        ),
        (Code::Unavailable, None) => fail(
            EXIT_UNREACHABLE,
            format!("cannot reach sessiond: {}", status_with_causes(&status)),
        ),
        (code, reason) => fail(
            EXIT_FAILED,
            format!("{code:?} {}: {}", reason.unwrap_or("-"), status.message()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_takes_a_full_key_of_the_widest_scope_from_the_server_list() {
        let (a, b, c) = ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "cccccccccccccccc");
        let hashed = format!("sha256:{}", "ab".repeat(32));
        let pick = |list: &str| key_from_server_list(list);
        assert_eq!(pick(a).as_deref(), Some(a), "a bare key is an admin key");
        assert_eq!(
            pick(&format!(
                "gw:verify:{a}, ops:admin:{hashed} ,be:backend:{b}"
            ))
            .as_deref(),
            Some(b),
            "hashed entries cannot be sent"
        );
        assert_eq!(
            pick(&format!("gw:verify:{a},ops:admin:{b},ci:admin:{c}")).as_deref(),
            Some(b),
            "the first of the widest scope"
        );
        assert_eq!(pick(&format!("ops:admin:{hashed}")), None);
        assert_eq!(pick("short,,"), None, "keys the server would refuse");
        assert_eq!(pick(""), None);
    }
}
