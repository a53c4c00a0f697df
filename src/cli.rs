//! The operator subcommands of the `sessiond` binary: clients of a running
//! server (sessions, keys, token inspection, backup, health) and the offline
//! restore.
//!
//! Exit codes scripts can rely on: 0 success; 1 the operation failed (a
//! refused token, a bad backup file, an error from the server); 2 bad usage;
//! 3 the server could not be reached; 4 the server refused the API key.
//! Output for people goes to stdout, diagnostics to stderr.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Args, Subcommand};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::config::parse_duration;
use crate::pb;
use crate::pb::admin_service_client::AdminServiceClient;
use crate::pb::jwt_service_client::JwtServiceClient;
use crate::pb::session_service_client::SessionServiceClient;

/// Exit code: the operation failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the server could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: the server refused the API key.
pub const EXIT_REFUSED: u8 = 4;

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
    fn endpoint(&self, timeout: Duration) -> Result<(String, Endpoint), Failure> {
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

/// `sessiond sessions ...`
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions with their creation and expiry times: a user's, or
    /// without --user every user's (an admin key's call).
    List {
        /// Only this user's sessions.
        #[arg(long)]
        user: Option<String>,
        /// Only sessions of this tenant (with --user, public unless given;
        /// without, every tenant unless given).
        #[arg(long)]
        tenant: Option<String>,
        /// Every tenant (what listing without --user does anyway).
        #[arg(long)]
        all_tenants: bool,
        /// Show at most N sessions, and say when there are more (0: show all).
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke sessions by handle, or every session of a user.
    Revoke {
        /// Session handles.
        #[arg(required_unless_present = "user")]
        handles: Vec<String>,
        /// Revoke every session of this user instead.
        #[arg(long, conflicts_with = "handles")]
        user: Option<String>,
        /// The user's tenant.
        #[arg(long, default_value = "public")]
        tenant: String,
        /// In every tenant.
        #[arg(long)]
        all_tenants: bool,
    },
}

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
struct Client {
    channel: Channel,
    api_key: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    timeout: Duration,
}

impl Client {
    async fn connect(conn: &Connection) -> Result<Self, Failure> {
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

    fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        req.set_timeout(self.timeout);
        if let Some(key) = &self.api_key {
            req.metadata_mut()
                .insert(crate::api::API_KEY_HEADER, key.clone());
        }
        req
    }

    fn sessions(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel.clone())
    }
}

/// An error followed by its causes (`source()`, outermost first), each after
/// `: `, so that "transport error" goes on to say what failed: connection
/// refused, a TLS handshake, a name lookup, a timeout. A cause whose text the
/// line already holds is not repeated.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    append_causes(&mut text, error.source());
    text
}

/// A status's message followed by the causes of its transport error, if any.
fn status_with_causes(status: &Status) -> String {
    let mut text = status.message().to_owned();
    append_causes(&mut text, std::error::Error::source(status));
    text
}

fn append_causes(text: &mut String, mut next: Option<&(dyn std::error::Error + 'static)>) {
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
fn from_status(status: Status) -> Failure {
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

/// RFC 3339 (UTC, seconds) from a protobuf timestamp, `-` when it is unset
/// (for tables).
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(|| "-".to_owned(), |ts| rfc3339_secs(ts.seconds))
}

/// RFC 3339 from a protobuf timestamp for JSON output: `null` when unset.
fn json_time(ts: Option<&prost_types::Timestamp>) -> serde_json::Value {
    ts.map_or(serde_json::Value::Null, |ts| {
        rfc3339_secs(ts.seconds).into()
    })
}

/// RFC 3339 (UTC, seconds) from seconds since the epoch.
fn rfc3339_secs(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `sessiond sessions ...`
pub async fn sessions(command: SessionsCommand, conn: &Connection) -> ExitCode {
    exit(run_sessions(command, conn).await)
}

async fn run_sessions(command: SessionsCommand, conn: &Connection) -> Outcome {
    let client = Client::connect(conn).await?;
    let mut sessions = client.sessions();
    match command {
        SessionsCommand::List {
            user,
            tenant,
            all_tenants,
            limit,
            json,
        } => {
            let mut out = SessionTable::new(json, limit);
            match user {
                Some(user) => {
                    list_user_sessions(&client, user, tenant, all_tenants, &mut out).await?
                }
                None => {
                    let tenant = if all_tenants { None } else { tenant };
                    list_all_sessions(&client, tenant, &mut out).await?
                }
            }
            out.finish();
            Ok(())
        }
        SessionsCommand::Revoke {
            handles,
            user,
            tenant,
            all_tenants,
        } => {
            let revoked = match user {
                Some(user_id) => {
                    sessions
                        .revoke_all_sessions_for_user(client.request(
                            pb::RevokeAllSessionsForUserRequest {
                                user_id,
                                tenant_id: tenant,
                                revoke_across_all_tenants: all_tenants,
                            },
                        ))
                        .await
                        .map_err(from_status)?
                        .into_inner()
                        .session_handles_revoked
                }
                None => {
                    sessions
                        .revoke_multiple_sessions(client.request(
                            pb::RevokeMultipleSessionsRequest {
                                session_handles: handles,
                            },
                        ))
                        .await
                        .map_err(from_status)?
                        .into_inner()
                        .session_handles_revoked
                }
            };
            for handle in &revoked {
                println!("{handle}");
            }
            eprintln!(
                "revoked {}",
                crate::text::count(revoked.len() as u64, "session", "sessions")
            );
            Ok(())
        }
    }
}

/// The rows `sessions list` prints: a table or JSON lines, up to a limit.
struct SessionTable {
    json: bool,
    /// Most rows to print; 0 for no limit.
    limit: usize,
    shown: usize,
    /// True once a session past the limit is known to exist.
    more: bool,
}

impl SessionTable {
    fn new(json: bool, limit: usize) -> Self {
        if !json {
            println!(
                "{:<36}  {:<20}  {:<16}  {:<20}  {:<20}",
                "HANDLE", "USER", "TENANT", "CREATED", "EXPIRES"
            );
        }
        Self {
            json,
            limit,
            shown: 0,
            more: false,
        }
    }

    /// Rows still to print before the limit (`usize::MAX` without one).
    fn room(&self) -> usize {
        match self.limit {
            0 => usize::MAX,
            limit => limit.saturating_sub(self.shown),
        }
    }

    fn row(
        &mut self,
        handle: &str,
        user_id: &str,
        tenant_id: &str,
        created: Option<&prost_types::Timestamp>,
        expiry: Option<&prost_types::Timestamp>,
    ) {
        if self.room() == 0 {
            self.more = true;
            return;
        }
        self.shown += 1;
        if self.json {
            let line = serde_json::json!({
                "session_handle": handle,
                "user_id": user_id,
                "tenant_id": tenant_id,
                "created": json_time(created),
                "expires": json_time(expiry),
            });
            println!("{line}");
        } else {
            println!(
                "{handle:<36}  {user_id:<20}  {tenant_id:<16}  {:<20}  {:<20}",
                rfc3339(created),
                rfc3339(expiry)
            );
        }
    }

    /// Says on stderr when sessions were left out.
    fn finish(self) {
        if self.more {
            eprintln!(
                "showing {}; more exist (raise --limit, or --limit 0 for all)",
                crate::text::count(self.shown as u64, "session", "sessions")
            );
        }
    }
}

/// A user's sessions: their handles, then each one's information.
async fn list_user_sessions(
    client: &Client,
    user_id: String,
    tenant: Option<String>,
    all_tenants: bool,
    out: &mut SessionTable,
) -> Outcome {
    let mut sessions = client.sessions();
    let handles = sessions
        .get_all_session_handles_for_user(client.request(pb::GetAllSessionHandlesForUserRequest {
            user_id,
            tenant_id: tenant.unwrap_or_default(),
            fetch_across_all_tenants: all_tenants,
        }))
        .await
        .map_err(from_status)?
        .into_inner()
        .session_handles;
    for handle in handles {
        if out.room() == 0 {
            // Known to exist a moment ago; not worth a call to confirm.
            out.more = true;
            break;
        }
        let info = match sessions
            .get_session_information(client.request(pb::GetSessionInformationRequest {
                session_handle: handle,
            }))
            .await
        {
            Ok(info) => info.into_inner(),
            // Revoked or expired between the two calls.
            Err(s) if s.code() == Code::NotFound => continue,
            Err(s) => return Err(from_status(s)),
        };
        out.row(
            &info.session_handle,
            &info.user_id,
            &info.tenant_id,
            info.time_created.as_ref(),
            info.expiry.as_ref(),
        );
    }
    Ok(())
}

/// Every user's sessions (of one tenant when given), page by page.
async fn list_all_sessions(
    client: &Client,
    tenant_id: Option<String>,
    out: &mut SessionTable,
) -> Outcome {
    const MOST_PER_PAGE: usize = crate::api::admin::MAX_PAGE_SIZE;
    let mut admin = AdminServiceClient::new(client.channel.clone());
    let mut page_token = String::new();
    loop {
        // At least 1: the loop stops once the limit is reached.
        let page_size = out.room().min(MOST_PER_PAGE);
        let page = admin
            .list_all_sessions(client.request(pb::ListAllSessionsRequest {
                tenant_id: tenant_id.clone(),
                page_size: page_size as i32,
                page_token,
            }))
            .await
            .map_err(from_status)?
            .into_inner();
        for s in &page.sessions {
            out.row(
                &s.session_handle,
                &s.user_id,
                &s.tenant_id,
                s.time_created.as_ref(),
                s.expiry.as_ref(),
            );
        }
        // The server sets a token only when more sessions follow.
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        if out.room() == 0 {
            out.more = true;
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}

/// `sessiond keys ...`
pub async fn keys(command: KeysCommand, conn: &Connection) -> ExitCode {
    exit(run_keys(command, conn).await)
}

async fn run_keys(command: KeysCommand, conn: &Connection) -> Outcome {
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

fn decode_part(part: &str) -> Option<serde_json::Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// JWT claims that hold a time in seconds since the epoch.
const TIME_CLAIMS: [&str; 4] = ["iat", "exp", "nbf", "auth_time"];

/// Readable twins of the claims that hold times, for people reading
/// `token inspect`: RFC 3339 (UTC) for each of [`TIME_CLAIMS`], and for the
/// `t` (ms) of each claim set through the claim RPCs (`{"v": .., "t": ..}`),
/// keyed `<claim>.t`. A value that is no time between 1970 and 9999 has none.
fn claim_times(claims: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
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

async fn run_token(command: TokenCommand, conn: &Connection) -> Outcome {
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

/// `sessiond backup --out FILE`: an online backup of a running server.
pub async fn backup(out: &Path, conn: &Connection) -> ExitCode {
    exit(run_backup(out, conn).await)
}

async fn run_backup(out: &Path, conn: &Connection) -> Outcome {
    use tokio::io::AsyncWriteExt;
    let client = Client::connect(conn).await?;
    let mut request = Request::new(pb::BackupRequest {});
    if let Some(key) = &client.api_key {
        request
            .metadata_mut()
            .insert(crate::api::API_KEY_HEADER, key.clone());
    }
    let mut stream = AdminServiceClient::new(client.channel.clone())
        .backup(request)
        .await
        .map_err(from_status)?
        .into_inner();
    let partial = out.with_extension("partial");
    let io = |e: std::io::Error| {
        fail(
            EXIT_FAILED,
            format!("cannot write {}: {e}", partial.display()),
        )
    };
    // The backup holds signing keys (unless sealed) and the refresh MAC
    // secret: readable by its owner only.
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&partial).await.map_err(io)?;
    while let Some(chunk) = stream.message().await.map_err(from_status)? {
        file.write_all(&chunk.data).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    drop(file);
    let check = partial.clone();
    let summary = tokio::task::spawn_blocking(move || {
        std::fs::File::open(&check)
            .map_err(crate::backup::BackupError::from)
            .and_then(|f| crate::backup::verify(std::io::BufReader::new(f)))
    })
    .await
    .map_err(|e| fail(EXIT_FAILED, e.to_string()))?
    .map_err(|e| {
        fail(
            EXIT_FAILED,
            format!("the backup received is not intact: {e}"),
        )
    })?;
    tokio::fs::rename(&partial, out).await.map_err(|e| {
        fail(
            EXIT_FAILED,
            format!("cannot move the backup to {}: {e}", out.display()),
        )
    })?;
    println!("{}", out.display());
    eprintln!("backup written: {summary}");
    Ok(())
}

/// `sessiond restore FILE`: restores a backup into an empty data directory
/// (the server must not be running on it), and with `--replay-log` brings
/// it up to the last write acknowledged in the store the backup was taken
/// of.
pub async fn restore(file: &Path, data_dir: &Path, replay_log: Option<&Path>) -> ExitCode {
    exit(run_restore(file, data_dir, replay_log).await)
}

/// Opens the store in `data_dir`, runs `work` on it, and waits until it is
/// closed (its final flush done and its lock let go).
async fn with_store<T>(
    data_dir: &Path,
    work: impl AsyncFnOnce(&dyn crate::store::SessionStore) -> Outcome<T>,
) -> Outcome<T> {
    // sled's threads may hold the directory for a moment after an earlier
    // handle's close.
    let mut attempts = 0;
    let store = loop {
        match crate::store::SledStore::open(
            data_dir,
            crate::config::DEFAULT_STORE_CACHE_BYTES,
            None,
        ) {
            Err(crate::store::StoreError::Locked(_)) if attempts < 250 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            opened => break opened.map_err(|e| fail(EXIT_FAILED, e.to_string()))?,
        }
    };
    let (closed_tx, closed) = std::sync::mpsc::channel::<()>();
    store.on_close(closed_tx);
    let outcome = work(store.as_ref()).await;
    drop(store);
    let _ = tokio::task::spawn_blocking(move || {
        closed.recv_timeout(std::time::Duration::from_secs(30))
    })
    .await;
    outcome
}

async fn run_restore(file: &Path, data_dir: &Path, replay_log: Option<&Path>) -> Outcome {
    let open = |path: &Path| {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|e| fail(EXIT_FAILED, format!("cannot read {}: {e}", path.display())))
    };
    let checked = crate::backup::verify(open(file)?)
        .map_err(|e| fail(EXIT_FAILED, format!("{}: {e}", file.display())))?;
    if std::fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(fail(
            EXIT_FAILED,
            format!(
                "the data directory {} is not empty; restore only into an empty one",
                data_dir.display()
            ),
        ));
    }
    let replay = match replay_log {
        Some(from) => Some((from, replay_position(file, &checked, from)?)),
        None => None,
    };
    let summary = with_store(data_dir, async |store| {
        crate::backup::restore(store, open(file)?)
            .await
            .map_err(|e| fail(EXIT_FAILED, format!("restore failed: {e}")))
    })
    .await?;
    eprintln!("restored {summary}");
    if let Some((from, position)) = replay {
        let copied = crate::store::copy_log_since(from, position, data_dir)
            .map_err(|e| fail(EXIT_FAILED, format!("--replay-log: {e}")))?;
        // Opening the store replays the copied log; closing it flushes.
        with_store(data_dir, async |_| Ok(())).await?;
        eprintln!(
            "replayed {} of {} since the backup",
            crate::text::count(copied as u64, "log segment", "log segments"),
            from.display()
        );
    }
    println!("{}", data_dir.display());
    Ok(())
}

/// Where in the log of `from` a replay onto the backup in `file` starts,
/// after checking that the log is that store's.
fn replay_position(file: &Path, backup: &crate::backup::Summary, from: &Path) -> Outcome<u64> {
    let (Some(position), Some(id)) = (backup.log_position, &backup.store_id) else {
        return Err(fail(
            EXIT_FAILED,
            format!(
                "{} records no log position (it was taken by an earlier version): \
                 restore it without --replay-log",
                file.display()
            ),
        ));
    };
    let theirs = crate::store::read_store_id(from)
        .map_err(|e| fail(EXIT_FAILED, format!("--replay-log: {e}")))?;
    if theirs.as_deref() != Some(id.as_str()) {
        return Err(fail(
            EXIT_FAILED,
            format!(
                "--replay-log: {} is not the data directory {} was taken of",
                from.display(),
                file.display()
            ),
        ));
    }
    Ok(position)
}

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

    #[test]
    fn rfc3339_dates() {
        let at = |seconds| rfc3339(Some(&prost_types::Timestamp { seconds, nanos: 0 }));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_377_429), "2026-11-22T19:57:09Z");
        assert_eq!(rfc3339(None), "-");
        assert_eq!(json_time(None), serde_json::Value::Null);
        assert_eq!(rfc3339_secs(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(
            json_time(Some(&prost_types::Timestamp {
                seconds: 0,
                nanos: 0
            })),
            "1970-01-01T00:00:00Z"
        );
    }
}
