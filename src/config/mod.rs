//! Configuration: raw settings from flags, `SESSIOND_*` environment variables
//! and an optional TOML file, resolved into one [`Config`] that holds what
//! the server runs with, already parsed and loaded.
//!
//! Precedence is flag or environment variable, then the file, then the
//! default. Every error names the setting it is about as the user gave it
//! (flag, environment variable or file key), and nothing listens
//! before the whole configuration is valid. Secrets are held in [`Secret`],
//! whose `Debug` never prints them; the TLS files and the key-encryption
//! key are read and parsed here once, and [`Config`] carries the results.
//!
//! # Layout
//!
//! - `args`: the command-line arguments and their environment twins, raw
//!   ([`ServeArgs`]).
//! - `file`: the TOML file, raw.
//! - `resolve`: merging the two over the defaults, parsing and loading
//!   ([`Config::resolve`]); `validate`: the ranges and relations of settings.
//! - `error`: errors naming the setting and where its value came from
//!   ([`ConfigError`]).
//! - `units`: durations and sizes as written ([`parse_duration`]).
//!
//! This module must never start anything: it reads files, never listens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod args;
mod error;
mod file;
mod resolve;
mod units;
mod validate;

#[cfg(test)]
mod tests;

pub use crate::api::keys::{ApiKey, KeySecret, Scope};
pub use crate::secret::Secret;
pub use crate::token::SigningAlgorithm;
pub use args::{ServeArgs, Sources};
pub use error::{ConfigError, Origin};
pub use units::{parse_duration, parse_size};

use crate::tls::ServerTls;
use crate::token::kek::Kek;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the request span's fields.
    Json,
}

/// Limits on what callers may ask of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest decoded gRPC request, bytes.
    pub max_message_bytes: usize,
    /// Deepest JSON nesting in payloads and buckets.
    pub max_json_depth: usize,
    /// Most handles per RevokeMultipleSessions call.
    pub max_handles_per_call: usize,
    /// Calls served at once.
    pub max_concurrent_requests: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Connections at once.
    pub max_connections: usize,
    /// Largest HTTP/2 header list, bytes.
    pub max_header_list_bytes: u32,
    /// Longest a call may run.
    pub request_timeout: Duration,
    /// Longest a client may stay silent on a connection.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_json_depth: 32,
            max_handles_per_call: 1000,
            max_concurrent_requests: 1024,
            max_concurrent_streams: 256,
            max_connections: 10_000,
            max_header_list_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Default bytes of the embedded store's page cache.
pub const DEFAULT_STORE_CACHE_BYTES: u64 = 40 * 1024 * 1024;

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// The PostgreSQL database to keep the store in instead of the
    /// embedded one; its URL may hold a password.
    pub database_url: Option<Secret>,
    /// Connections to that database each process keeps at most.
    pub database_pool_size: usize,
    /// Accepted `x-api-key` values; empty means loopback-only, no key needed.
    pub api_keys: Vec<ApiKey>,
    /// Access token lifetime.
    pub access_token_lifetime: Duration,
    /// Refresh token lifetime (sliding).
    pub refresh_token_lifetime: Duration,
    /// Longest a session lives from its creation (zero: no limit).
    pub session_max_lifetime: Duration,
    /// A session unused this long is over (zero: no idle timeout).
    pub session_idle_timeout: Duration,
    /// Most live sessions per user and tenant (0: no limit).
    pub max_sessions_per_user: usize,
    /// What a create over the limit does.
    pub session_limit_action: crate::session::LimitAction,
    /// Window in which a rotated-out refresh token may rotate again.
    pub refresh_grace_period: Duration,
    /// Algorithm of newly generated signing keys.
    pub signing_algorithm: SigningAlgorithm,
    /// Rotating key lifetime as a signer.
    pub key_rotation_interval: Duration,
    /// Issuer URL; `None` means `http://<bound address>`.
    pub issuer: Option<String>,
    /// Largest JSON payload accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Interval of the expired-session sweeper.
    pub sweep_interval: Duration,
    /// Limit on draining in-flight requests at shutdown.
    pub drain_timeout: Duration,
    /// Log filter.
    pub log: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// ClaimProvider addresses by claim key.
    pub claim_providers: Vec<(String, String)>,
    /// ClaimProvider for other claim keys.
    pub default_claim_provider: Option<String>,
    /// Deadline of a ClaimProvider call.
    pub claim_provider_timeout: Duration,
    /// Client secrets by tenant, for private buckets.
    pub client_secrets: Vec<(String, Secret)>,
    /// Browser origins allowed by CORS.
    pub cors_origins: Vec<String>,
    /// Cookie a gateway check reads the access token from, after the
    /// `authorization: Bearer` header.
    pub authz_cookie_name: String,
    /// Claims a gateway check forwards upstream: (claim, header name).
    pub authz_claim_headers: Vec<(String, String)>,
    /// Largest bucket, bytes of JSON.
    pub max_bucket_bytes: usize,
    /// Bytes of the embedded store's page cache.
    pub store_cache_bytes: u64,
    /// Free bytes of the store's disk under which writes are refused.
    pub store_reserved_bytes: u64,
    /// Bytes of flushed log segments the store keeps (0: none).
    pub log_archive_bytes: u64,
    /// Limits on calls and connections.
    pub limits: Limits,
    /// The key-encryption key, when signing keys are sealed; it also opens
    /// what the key it replaces sealed (`--previous-key-encryption-key-file`),
    /// so that is sealed again under it.
    pub key_encryption_key: Option<Arc<Kek>>,
    /// TLS, when configured: its files, loaded.
    pub tls: Option<ServerTls>,
    /// Verified access tokens remembered.
    pub token_cache_size: usize,
}

/// The environment variable that may hold the key-encryption key itself.
pub const KEK_ENV: &str = "SESSIOND_KEY_ENCRYPTION_KEY";
/// The environment variable that may hold the previous key-encryption key.
pub const PREVIOUS_KEK_ENV: &str = "SESSIOND_PREVIOUS_KEY_ENCRYPTION_KEY";

/// Bounds on the refresh grace period (SuperTokens allows 0 to 300 s).
pub const MAX_REFRESH_GRACE: Duration = Duration::from_secs(300);

impl Config {
    /// The defaults, with the store in `data_dir`.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: data_dir.into(),
            database_url: None,
            database_pool_size: crate::store::DEFAULT_DATABASE_POOL_SIZE,
            api_keys: Vec::new(),
            access_token_lifetime: Duration::from_secs(3600),
            refresh_token_lifetime: Duration::from_secs(100 * 86_400),
            session_max_lifetime: Duration::ZERO,
            session_idle_timeout: Duration::ZERO,
            max_sessions_per_user: 0,
            session_limit_action: crate::session::LimitAction::EvictOldest,
            refresh_grace_period: Duration::from_secs(30),
            signing_algorithm: SigningAlgorithm::ES256,
            key_rotation_interval: Duration::from_secs(168 * 3600),
            issuer: None,
            max_payload_bytes: 16 * 1024,
            sweep_interval: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(10),
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            claim_providers: Vec::new(),
            default_claim_provider: None,
            claim_provider_timeout: Duration::from_secs(2),
            client_secrets: Vec::new(),
            cors_origins: Vec::new(),
            authz_cookie_name: "sAccessToken".to_owned(),
            authz_claim_headers: Vec::new(),
            max_bucket_bytes: 64 * 1024,
            store_cache_bytes: DEFAULT_STORE_CACHE_BYTES,
            store_reserved_bytes: 64 << 20,
            log_archive_bytes: 1 << 30,
            limits: Limits::default(),
            key_encryption_key: None,
            tls: None,
            token_cache_size: 10_000,
        }
    }
}
