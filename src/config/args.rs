//! The server's command-line arguments (clap derive, each with its
//! `SESSIOND_*` environment twin), kept as the raw text the user gave, and
//! where each came from.
//!
//! This file only declares what can be given; it must never interpret a
//! value (that is [`super::resolve`]'s job), so that every setting is parsed
//! and checked in one place, with its origin named.

use std::path::PathBuf;

use clap::Args;
use clap::parser::ValueSource;

use crate::secret::Secret;

/// A value that may hold a password, wrapped as it is read so that no
/// `Debug` of the arguments shows it.
fn secret_value(text: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(text))
}

/// Server settings as given on the command line or in the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file with settings; flags and environment variables override it.
    #[arg(long, env = "SESSIOND_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on for gRPC, gRPC-Web and HTTP [default: 127.0.0.1:50051].
    #[arg(long, env = "SESSIOND_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory of the embedded store [default: ./data].
    #[arg(long, env = "SESSIOND_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL database for sessions, buckets, keys and secrets, as
    /// postgres://user:password@host:port/db?sslmode=disable|prefer|require|verify-full;
    /// then --data-dir is not used [default: the embedded store in --data-dir].
    #[arg(
        long,
        env = "SESSIOND_DATABASE_URL",
        value_name = "URL",
        value_parser = secret_value,
        hide_env_values = true
    )]
    pub database_url: Option<Secret>,
    /// Connections to the database each process keeps at most [default: 16].
    #[arg(long, env = "SESSIOND_DATABASE_POOL_SIZE", value_name = "N")]
    pub database_pool_size: Option<String>,
    /// API key callers send as `x-api-key` (repeatable): KEY for an admin key, or
    /// NAME:SCOPE:KEY with SCOPE verify, backend or admin; KEY may be sha256:<hex>.
    #[arg(
        long = "api-key",
        env = "SESSIOND_API_KEYS",
        value_name = "KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Access token lifetime [default: 1h].
    #[arg(long, env = "SESSIOND_ACCESS_TOKEN_LIFETIME", value_name = "DUR")]
    pub access_token_lifetime: Option<String>,
    /// Longest a session lives from its creation, however often it is refreshed (0s: no limit) [default: 0s].
    #[arg(long, env = "SESSIOND_SESSION_MAX_LIFETIME", value_name = "DUR")]
    pub session_max_lifetime: Option<String>,
    /// A session with no refresh and no database-checked use for this long is over (0s: off) [default: 0s].
    #[arg(long, env = "SESSIOND_SESSION_IDLE_TIMEOUT", value_name = "DUR")]
    pub session_idle_timeout: Option<String>,
    /// Most live sessions a user may hold per tenant (0: no limit) [default: 0].
    #[arg(long, env = "SESSIOND_MAX_SESSIONS_PER_USER", value_name = "N")]
    pub max_sessions_per_user: Option<String>,
    /// What creating a session over --max-sessions-per-user does: evict-oldest (end the least recently active) or refuse [default: evict-oldest].
    #[arg(long, env = "SESSIOND_SESSION_LIMIT_ACTION", value_name = "ACTION")]
    pub session_limit_action: Option<String>,
    /// Refresh token lifetime, sliding on every refresh [default: 100d].
    #[arg(long, env = "SESSIOND_REFRESH_TOKEN_LIFETIME", value_name = "DUR")]
    pub refresh_token_lifetime: Option<String>,
    /// How long a rotated-out refresh token may rotate again [default: 30s, at most 300s].
    #[arg(long, env = "SESSIOND_REFRESH_GRACE_PERIOD", value_name = "DUR")]
    pub refresh_grace_period: Option<String>,
    /// RS256, ES256 or EdDSA [default: ES256].
    #[arg(long, env = "SESSIOND_SIGNING_ALGORITHM", value_name = "ALG")]
    pub signing_algorithm: Option<String>,
    /// How often the rotating signing key is replaced [default: 168h].
    #[arg(long, env = "SESSIOND_KEY_ROTATION_INTERVAL", value_name = "DUR")]
    pub key_rotation_interval: Option<String>,
    /// Issuer URL placed in `iss` and the discovery document [default: http://<listen address>].
    #[arg(long, env = "SESSIOND_ISSUER", value_name = "URL")]
    pub issuer: Option<String>,
    /// Largest access token payload, session data or JWT payload, in bytes of JSON [default: 16KiB].
    #[arg(long, env = "SESSIOND_MAX_PAYLOAD_SIZE", value_name = "BYTES")]
    pub max_payload_size: Option<String>,
    /// How often expired sessions are removed from the store [default: 10m].
    #[arg(long, env = "SESSIOND_SWEEP_INTERVAL", value_name = "DUR")]
    pub sweep_interval: Option<String>,
    /// How long in-flight requests may run after SIGTERM/SIGINT [default: 10s].
    #[arg(long, env = "SESSIOND_DRAIN_TIMEOUT", value_name = "DUR")]
    pub drain_timeout: Option<String>,
    /// Log filter, such as `info` or `sessiond=debug` [default: info].
    #[arg(long = "log", env = "SESSIOND_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "SESSIOND_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// ClaimProvider for one claim key, as KEY=URL (repeatable).
    #[arg(
        long = "claim-provider",
        env = "SESSIOND_CLAIM_PROVIDERS",
        value_name = "KEY=URL",
        value_delimiter = ','
    )]
    pub claim_providers: Vec<String>,
    /// ClaimProvider for every claim key without its own.
    #[arg(long, env = "SESSIOND_DEFAULT_CLAIM_PROVIDER", value_name = "URL")]
    pub default_claim_provider: Option<String>,
    /// Deadline of each ClaimProvider call [default: 2s].
    #[arg(long, env = "SESSIOND_CLAIM_PROVIDER_TIMEOUT", value_name = "DUR")]
    pub claim_provider_timeout: Option<String>,
    /// A tenant's client secret for private buckets, as TENANT=SECRET (repeatable).
    #[arg(
        long = "client-secret",
        env = "SESSIOND_CLIENT_SECRETS",
        value_name = "TENANT=SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub client_secrets: Vec<String>,
    /// Browser origin allowed to call over gRPC-Web, such as https://app.example.com (repeatable).
    #[arg(
        long = "cors-origin",
        env = "SESSIOND_CORS_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Cookie the gateway checks (ext_authz, /authz) read an access token from when no Bearer token is sent [default: sAccessToken].
    #[arg(long, env = "SESSIOND_AUTHZ_COOKIE_NAME", value_name = "NAME")]
    pub authz_cookie_name: Option<String>,
    /// Access token claim a gateway check forwards upstream as a header, such as st-role=x-user-roles (repeatable).
    #[arg(
        long = "authz-claim-header",
        env = "SESSIOND_AUTHZ_CLAIM_HEADERS",
        value_name = "CLAIM=HEADER",
        value_delimiter = ','
    )]
    pub authz_claim_headers: Vec<String>,
    /// Largest public or private bucket, in bytes of JSON [default: 64KiB].
    #[arg(long, env = "SESSIOND_MAX_BUCKET_SIZE", value_name = "BYTES")]
    pub max_bucket_size: Option<String>,
    /// Memory for the embedded store's page cache [default: 40MiB].
    #[arg(long, env = "SESSIOND_STORE_CACHE_SIZE", value_name = "BYTES")]
    pub store_cache_size: Option<String>,
    /// Disk kept for flushed write-ahead log segments, replayed by `restore --replay-log` (0 disables) [default: 1GiB].
    #[arg(long, env = "SESSIOND_LOG_ARCHIVE_SIZE", value_name = "BYTES")]
    pub log_archive_size: Option<String>,
    /// Free disk space under which the embedded store refuses writes (0 disables) [default: 64MiB].
    #[arg(long, env = "SESSIOND_STORE_RESERVED_SPACE", value_name = "BYTES")]
    pub store_reserved_space: Option<String>,
    /// Largest gRPC request message, decoded [default: 4MiB].
    #[arg(long, env = "SESSIOND_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    pub max_message_size: Option<String>,
    /// Deepest nesting of JSON objects and arrays in payloads and buckets [default: 32].
    #[arg(long, env = "SESSIOND_MAX_JSON_DEPTH", value_name = "N")]
    pub max_json_depth: Option<String>,
    /// Most session handles in one RevokeMultipleSessions call [default: 1000].
    #[arg(long, env = "SESSIOND_MAX_HANDLES_PER_CALL", value_name = "N")]
    pub max_handles_per_call: Option<String>,
    /// Calls served at once; more are refused with RESOURCE_EXHAUSTED [default: 1024].
    #[arg(long, env = "SESSIOND_MAX_CONCURRENT_REQUESTS", value_name = "N")]
    pub max_concurrent_requests: Option<String>,
    /// Connections open at once (TLS handshakes included); more wait to be accepted [default: 10000].
    #[arg(long, env = "SESSIOND_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,
    /// HTTP/2 streams one connection may have open [default: 256].
    #[arg(long, env = "SESSIOND_MAX_CONCURRENT_STREAMS", value_name = "N")]
    pub max_concurrent_streams: Option<String>,
    /// Largest HTTP/2 header list a client may send [default: 16KiB].
    #[arg(long, env = "SESSIOND_MAX_HEADER_LIST_SIZE", value_name = "BYTES")]
    pub max_header_list_size: Option<String>,
    /// Longest a call may run before DEADLINE_EXCEEDED (or the client's grpc-timeout, if shorter) [default: 30s].
    #[arg(long, env = "SESSIOND_REQUEST_TIMEOUT", value_name = "DUR")]
    pub request_timeout: Option<String>,
    /// Close connections on which the client sends nothing for this long [default: 10m].
    #[arg(long, env = "SESSIOND_IDLE_TIMEOUT", value_name = "DUR")]
    pub idle_timeout: Option<String>,
    /// Verified access tokens remembered, so a token seen again skips its signature check (0 disables) [default: 10000].
    #[arg(long, env = "SESSIOND_TOKEN_CACHE_SIZE", value_name = "N")]
    pub token_cache_size: Option<String>,
    /// PEM certificate chain: serve TLS (gRPC, gRPC-Web and HTTP) on the port.
    #[arg(
        long,
        env = "SESSIOND_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(
        long,
        env = "SESSIOND_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: require every client to present a certificate they issued (mutual TLS).
    #[arg(long, env = "SESSIOND_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// File holding the key-encryption key (32 bytes, base64 or hex) that seals
    /// signing keys in the store; or set SESSIOND_KEY_ENCRYPTION_KEY.
    #[arg(long, env = "SESSIOND_KEY_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub key_encryption_key_file: Option<PathBuf>,
    /// File holding the key-encryption key being replaced: what it sealed is
    /// sealed again under --key-encryption-key-file at start; or set
    /// SESSIOND_PREVIOUS_KEY_ENCRYPTION_KEY.
    #[arg(
        long,
        env = "SESSIOND_PREVIOUS_KEY_ENCRYPTION_KEY_FILE",
        value_name = "FILE"
    )]
    pub previous_key_encryption_key_file: Option<PathBuf>,
    /// Which settings came from a flag and which from an environment
    /// variable, so that an error names what the user actually set.
    #[arg(skip)]
    pub sources: Sources,
}

impl ServeArgs {
    /// Records where each setting in `matches` (the matches these arguments
    /// were parsed from) came from.
    pub fn with_sources(mut self, matches: &clap::ArgMatches) -> Self {
        self.sources = Sources::from_matches(matches);
        self
    }
}

/// Where the settings of a [`ServeArgs`] came from: for each one given, a
/// flag or an environment variable, as clap saw it. Arguments built in code
/// have no record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// By clap id (the field name); `None` when nothing was recorded.
    pub(super) given: Option<std::collections::BTreeMap<String, ValueSource>>,
}

impl Sources {
    /// The sources of the settings present in `matches`.
    pub fn from_matches(matches: &clap::ArgMatches) -> Self {
        let given = matches
            .ids()
            .filter_map(|id| {
                let id = id.as_str();
                Some((id.to_owned(), matches.value_source(id)?))
            })
            .collect();
        Self { given: Some(given) }
    }

    /// Sources as given, by clap id (for tests).
    #[cfg(test)]
    pub(super) fn of(given: &[(&str, ValueSource)]) -> Self {
        Self {
            given: Some(given.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
        }
    }
}
