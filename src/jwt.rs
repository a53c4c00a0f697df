//! JWTs for applications (CreateJwt), the JWKS and OpenID discovery.
//!
//! JWTs are signed with the same keys as access tokens. So that a JWT can
//! never pass as an access token, CreateJwt refuses the access token's
//! session claims, and access tokens carry a header (`version: "5"`) that
//! CreateJwt never sets.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::input as payload;
use crate::token::keys::{Jwk, KeyRing};

/// Default JWT validity: 100 years, as in SuperTokens.
pub const DEFAULT_VALIDITY_MS: u64 = 100 * 365 * 86_400_000;

/// Whether CreateJwt refuses a claim: it sets `iat` and `exp` itself, and
/// refuses the access token's session claims; `sub` and `iss` are the
/// caller's to set.
fn refused(claim: &str) -> bool {
    crate::token::access::is_reserved(claim) && !matches!(claim, "sub" | "iss")
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

    /// CreateJwt.
    pub async fn create(
        &self,
        mut claims: Map<String, Value>,
        validity_ms: Option<u64>,
        use_static: bool,
    ) -> Result<String> {
        if let Some(claim) = claims.keys().find(|k| refused(k)) {
            return Err(Error::ProtectedClaim {
                field: format!("payload.{claim}"),
                claim: claim.clone(),
            });
        }
        payload::limit_size("payload", &claims, self.limits)?;
        let validity = validity_ms.unwrap_or(DEFAULT_VALIDITY_MS);
        if validity < 1000 {
            return Err(Error::invalid("validity", "must be at least 1s"));
        }
        if validity > 2 * DEFAULT_VALIDITY_MS {
            return Err(Error::invalid("validity", "must be at most 200 years"));
        }
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
                return Err(Error::invalid(
                    "validity",
                    format!(
                        "a JWT signed by the rotating key may live at most as long as the key rotation \
                         interval ({}s); use the static key for longer",
                        most / 1000
                    ),
                ));
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
