//! gRPC glue: the service implementations, caller authentication, and the
//! conversions between protobuf messages and domain values.
//!
//! Protobuf types stop here: handlers validate and convert requests into
//! domain calls, and convert the results back. Nothing below this module
//! imports generated code.

pub mod admin;
pub mod authz;
pub mod claims;
pub mod codec;
pub mod connect;
pub mod convert;
pub mod details;
pub mod devices;
pub mod error;
pub mod guard;
pub mod jwt;
pub mod keys;
pub mod observe;
pub mod provider;
pub mod secrets;
pub mod session;
pub mod user_session;

pub mod auth;

#[cfg(test)]
mod envoy_descriptor_tests;
#[cfg(test)]
mod envoy_reflection_tests;

use tonic::Status;

use crate::error::Reason;
use keys::{ApiKey, KeySecret, Scope};
use secrets::{HashedSecrets, sha256};

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

/// The configured API keys, held as SHA-256 hashes and compared in constant
/// time ([`HashedSecrets`]); replaceable at run time (SIGHUP). With no keys
/// configured every call is allowed (the server then listens on loopback
/// only).
#[derive(Clone)]
pub struct ApiKeys {
    table: HashedSecrets<KeyIdentity>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.table.len())
    }
}

impl ApiKeys {
    /// The configured keys.
    pub fn new(keys: &[ApiKey]) -> Self {
        Self {
            table: HashedSecrets::new(Self::entries(keys)),
        }
    }

    fn entries(keys: &[ApiKey]) -> Vec<(KeyIdentity, [u8; 32])> {
        keys.iter()
            .map(|k| {
                let identity = KeyIdentity {
                    name: k.name.clone(),
                    scope: k.scope,
                };
                let hash = match &k.secret {
                    KeySecret::Plain(secret) => sha256(secret.expose().as_bytes()),
                    KeySecret::Sha256(hash) => *hash,
                };
                (identity, hash)
            })
            .collect()
    }

    /// Replaces the keys (configuration reload); calls in flight finish
    /// with the keys they were checked against.
    pub fn replace(&self, keys: &[ApiKey]) {
        self.table.replace(Self::entries(keys));
    }

    /// True when no key is configured (loopback-only operation).
    pub fn is_open(&self) -> bool {
        self.table.is_empty()
    }

    /// The key the caller presents in `x-api-key`: `Ok(None)` when there is
    /// none, an UNAUTHENTICATED status when it is not a configured key.
    pub fn identify(&self, headers: &http::HeaderMap) -> Result<Option<KeyIdentity>, Status> {
        let Some(value) = headers.get(API_KEY_HEADER) else {
            return Ok(None);
        };
        self.table
            .find(value.as_bytes(), |_| true)
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
