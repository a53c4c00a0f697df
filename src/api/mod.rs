//! gRPC glue: the service implementations, caller authentication, and the
//! conversions between protobuf messages and domain values.
//!
//! Protobuf types stop here: handlers validate and convert requests into
//! domain calls, and convert the results back. Nothing below this module
//! imports generated code.

pub mod admin;
pub mod claims;
pub mod codec;
pub mod connect;
pub mod convert;
pub mod details;
pub mod error;
pub mod guard;
pub mod jwt;
pub mod keys;
pub mod observe;
pub mod provider;
pub mod session;
pub mod user_session;

pub mod auth;

use tonic::Status;

use crate::error::Reason;
use crate::reload::Live;
use crate::token::ct_eq;
use keys::{ApiKey, KeySecret, Scope};

/// Adds the tenant to the current request's span (see `observe`).
pub fn record_tenant(tenant_id: &str) {
    tracing::Span::current().record("tenant", tenant_id);
}

/// Metadata key backend callers put their API key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Who a valid API key says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    /// The key's configured name.
    pub name: String,
    /// What it may call.
    pub scope: Scope,
}

#[derive(Clone)]
struct KeyEntry {
    name: String,
    scope: Scope,
    hash: [u8; 32],
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The configured API keys, held as SHA-256 hashes and compared in constant
/// time; replaceable at run time (SIGHUP). With no keys configured every call
/// is allowed (the server then listens on loopback only).
#[derive(Clone)]
pub struct ApiKeys {
    entries: Live<Vec<KeyEntry>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.entries.get().len())
    }
}

impl ApiKeys {
    /// The configured keys.
    pub fn new(keys: &[ApiKey]) -> Self {
        Self {
            entries: Live::new(Self::entries(keys)),
        }
    }

    fn entries(keys: &[ApiKey]) -> Vec<KeyEntry> {
        keys.iter()
            .map(|k| KeyEntry {
                name: k.name.clone(),
                scope: k.scope,
                hash: match &k.secret {
                    KeySecret::Plain(secret) => sha256(secret.expose().as_bytes()),
                    KeySecret::Sha256(hash) => *hash,
                },
            })
            .collect()
    }

    /// Replaces the keys (configuration reload); calls in flight finish
    /// with the keys they were checked against.
    pub fn replace(&self, keys: &[ApiKey]) {
        self.entries.set(Self::entries(keys));
    }

    /// True when no key is configured (loopback-only operation).
    pub fn is_open(&self) -> bool {
        self.entries.get().is_empty()
    }

    /// The key the caller presents in `x-api-key`: `Ok(None)` when there is
    /// none, an UNAUTHENTICATED status when it is not a configured key.
    pub fn identify(&self, headers: &http::HeaderMap) -> Result<Option<KeyIdentity>, Status> {
        let Some(value) = headers.get(API_KEY_HEADER) else {
            return Ok(None);
        };
        let presented = sha256(value.as_bytes());
        // Compare against every key, without stopping at the first match.
        let mut found = None;
        for entry in self.entries.get().iter() {
            if ct_eq(&entry.hash, &presented) {
                found = Some(KeyIdentity {
                    name: entry.name.clone(),
                    scope: entry.scope,
                });
            }
        }
        found
            .map(Some)
            .ok_or_else(|| missing_key("the x-api-key is not a valid API key"))
    }
}

/// UNAUTHENTICATED with reason MISSING_CREDENTIALS.
pub fn missing_key(message: &str) -> Status {
    error::status(
        Reason::MissingCredentials,
        message,
        Default::default(),
        None,
    )
}
