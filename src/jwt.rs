//! JWTs for applications (CreateJwt), the JWKS and OpenID discovery.
//!
//! JWTs are signed with the same keys as access tokens. So that a JWT can
//! never pass as an access token, CreateJwt refuses the access token's
//! session claims, and access tokens carry a header (`version: "5"`) that
//! CreateJwt never sets.
//!
//! [`JwtIssuer::create`] takes a [`NewJwt`], checked at the edge; this
//! module never names a request's fields.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::input::{self as payload, InputError};
use crate::token::keys::{Jwk, KeyRing};

/// Default JWT validity: 100 years, as in SuperTokens.
pub const DEFAULT_VALIDITY_MS: u64 = 100 * 365 * 86_400_000;

/// Reserved access token claims a JWT's caller may still set: CreateJwt
/// sets `iat` and `exp` itself and refuses the access token's session
/// claims, but `sub` and `iss` are the caller's.
const CALLERS_CLAIMS: [&str; 2] = ["sub", "iss"];

/// A checked CreateJwt request.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJwt {
    claims: Map<String, Value>,
    validity_ms: u64,
    use_static: bool,
}

impl NewJwt {
    /// Checks the claims (errors name `claims_field`) and the validity
    /// (errors name `validity_field`; none means the default).
    pub fn parse(
        claims_field: &str,
        claims: Map<String, Value>,
        validity_field: &str,
        validity_ms: Option<u64>,
        use_static: bool,
        limits: payload::JsonLimits,
    ) -> Result<Self, InputError> {
        payload::refuse_reserved_except(claims_field, &claims, &CALLERS_CLAIMS)?;
        payload::limit_size(claims_field, &claims, limits)?;
        let validity_ms = validity_ms.unwrap_or(DEFAULT_VALIDITY_MS);
        if validity_ms < 1000 {
            return Err(InputError::invalid(validity_field, "must be at least 1s"));
        }
        if validity_ms > 2 * DEFAULT_VALIDITY_MS {
            return Err(InputError::invalid(
                validity_field,
                "must be at most 200 years",
            ));
        }
        Ok(Self {
            claims,
            validity_ms,
            use_static,
        })
    }
}

/// The OpenID discovery document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Discovery {
    /// Issuer URL.
    pub issuer: String,
    /// JWKS URL.
    pub jwks_uri: String,
}

/// Issues application JWTs and publishes the keys.
#[derive(Debug)]
pub struct JwtIssuer {
    keys: Arc<KeyRing>,
    clock: SharedClock,
    issuer: String,
    limits: payload::JsonLimits,
}

impl JwtIssuer {
    /// A JWT issuer over the key ring.
    pub fn new(
        keys: Arc<KeyRing>,
        clock: SharedClock,
        issuer: String,
        limits: payload::JsonLimits,
    ) -> Self {
        Self {
            keys,
            clock,
            issuer,
            limits,
        }
    }

    /// Size and depth limits of JWT payloads.
    pub fn limits(&self) -> payload::JsonLimits {
        self.limits
    }

    /// CreateJwt.
    pub async fn create(&self, req: NewJwt) -> Result<String> {
        let NewJwt {
            mut claims,
            validity_ms: validity,
            use_static,
        } = req;
        self.keys.maintain().await?;
        let now = self.clock.now_ms();
        let exp_s = (now + validity) / 1000;
        claims.insert("iat".into(), (now / 1000).into());
        claims.insert("exp".into(), exp_s.into());
        claims
            .entry("iss")
            .or_insert_with(|| self.issuer.clone().into());
        let key = if use_static {
            self.keys.static_signer()
        } else {
            // A rotating key stays published until its last JWT expires: a
            // long validity would keep a key that should retire alive for
            // years, so long-lived JWTs belong to the static key.
            let most = self.keys.rotation_interval_ms();
            if validity > most {
                return Err(Error::JwtOutlivesKey { most_ms: most });
            }
            let key = self.keys.signer();
            self.keys.note_jwt_expiry(key.kid(), exp_s * 1000).await?;
            key
        };
        Ok(key.sign(&claims, false)?)
    }

    /// The published keys.
    pub fn jwks(&self) -> Vec<Jwk> {
        self.keys.jwks()
    }

    /// Seconds a JWKS response may be cached.
    pub fn jwks_max_age_secs(&self) -> u64 {
        self.keys.jwks_max_age_secs()
    }

    /// The discovery document.
    pub fn discovery(&self) -> Discovery {
        Discovery {
            issuer: self.issuer.clone(),
            jwks_uri: format!("{}/.well-known/jwks.json", self.issuer),
        }
    }
}

impl JwtIssuer {
    /// Starts a key rotation now.
    pub async fn rotate(&self) -> Result<Arc<crate::token::keys::SigningKey>> {
        Ok(self.keys.rotate_now().await?)
    }
}
