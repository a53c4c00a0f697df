//! gRPC glue: the service implementations, caller authentication, and the
//! conversions between protobuf messages and domain values.
//!
//! Protobuf types stop here: handlers validate and convert requests into
//! domain calls, and convert the results back. Nothing below this module
//! imports generated code.

pub mod admin;
pub mod claims;
pub mod codec;
pub mod convert;
pub mod error;
pub mod jwt;
pub mod observe;
pub mod provider;
pub mod session;
pub mod user_session;

use crate::reload::Live;

use tonic::{Request, Status};

use crate::config::Secret;
use crate::error::Reason;
use crate::token::{ct_eq, sha256_hex};

/// Adds the tenant to the current request's span (see `observe`).
pub fn record_tenant(tenant_id: &str) {
    tracing::Span::current().record("tenant", tenant_id);
}

/// Metadata key backend callers put their API key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The configured API keys, held as SHA-256 hashes and compared in constant
/// time. With no keys configured every call is allowed (the server then
/// listens on loopback only).
#[derive(Clone)]
pub struct ApiKeys {
    hashes: Live<Vec<String>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.hashes.get().len())
    }
}

impl ApiKeys {
    /// Hashes the configured keys.
    pub fn new(keys: &[Secret]) -> Self {
        Self {
            hashes: Live::new(Self::hash(keys)),
        }
    }

    fn hash(keys: &[Secret]) -> Vec<String> {
        keys.iter()
            .map(|k| sha256_hex(k.expose().as_bytes()))
            .collect()
    }

    /// Replaces the keys (configuration reload); calls in flight finish
    /// with the keys they were checked against.
    pub fn replace(&self, keys: &[Secret]) {
        self.hashes.set(Self::hash(keys));
    }

    /// True when no key is configured (loopback-only operation).
    pub fn is_open(&self) -> bool {
        self.hashes.get().is_empty()
    }

    /// Admits the request when it carries a configured key.
    pub fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let hashes = self.hashes.get();
        if hashes.is_empty() {
            return Ok(());
        }
        let missing = |message: &str| {
            error::status(
                Reason::MissingCredentials,
                message,
                Default::default(),
                None,
            )
        };
        let Some(value) = req.metadata().get(API_KEY_HEADER) else {
            return Err(missing("this call needs an x-api-key"));
        };
        let presented = sha256_hex(value.as_bytes());
        // Compare against every key, without stopping at the first match.
        let matched = hashes.iter().fold(false, |acc, h| {
            acc | ct_eq(h.as_bytes(), presented.as_bytes())
        });
        if matched {
            Ok(())
        } else {
            Err(missing("the x-api-key is not a valid API key"))
        }
    }

    /// The key check as a tonic interceptor.
    pub fn interceptor(
        &self,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let keys = self.clone();
        move |req| keys.check(&req).map(|()| req)
    }
}
