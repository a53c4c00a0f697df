//! Access tokens: JWTs with SuperTokens' v5 claims.
//!
//! Reserved claims sit at the top level beside the user payload: `sub`,
//! `iat`, `exp` (seconds), `sessionHandle`, `refreshTokenHash1`, `tId`,
//! `rsub` always; `antiCsrfToken`, `parentRefreshTokenHash1` and `iss` when
//! set; `stt` is reserved too. The header is
//! `{"alg", "typ": "JWT", "version": "5", "kid"}`.
//!
//! Verification looks the key up by `kid`, requires the header's algorithm
//! to be the key's own, checks the signature, then checks `exp` against the
//! injected clock with no leeway: a token is expired from the millisecond
//! `now >= exp * 1000`.

use std::collections::HashSet;

use jsonwebtoken::Validation;
use serde_json::{Map, Value};

use super::KeyError;
use super::TokenError;
use super::keys::{KeyRing, SigningKey};

// The one list of reserved claims is `input`'s; it is re-exported here,
// beside the claims it names, for callers outside the crate.
pub use crate::input::{RESERVED_CLAIMS, is_reserved};

/// The contents of an access token.
#[derive(Clone, PartialEq)]
pub struct AccessClaims {
    /// User id (`sub`, also `rsub`).
    pub user_id: String,
    /// Tenant (`tId`).
    pub tenant_id: String,
    /// Session handle.
    pub session_handle: String,
    /// SHA-256 hex of the refresh token the access token was minted with.
    pub refresh_token_hash: String,
    /// Anti-CSRF token bound to the access token.
    pub anti_csrf_token: Option<String>,
    /// Issued at, seconds.
    pub iat: u64,
    /// Expires at, seconds.
    pub exp: u64,
    /// Issuer.
    pub iss: Option<String>,
    /// The user payload (no reserved claims).
    pub payload: Map<String, Value>,
}

impl std::fmt::Debug for AccessClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessClaims")
            .field("session_handle", &self.session_handle)
            .field("exp", &self.exp)
            .finish_non_exhaustive()
    }
}

impl AccessClaims {
    /// `Expired` once `now_ms` has reached the token's `exp`.
    pub fn live_at(&self, now_ms: u64) -> Result<(), TokenError> {
        if now_ms >= self.exp.saturating_mul(1000) {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    fn to_json(&self) -> Map<String, Value> {
        let mut m = self.payload.clone();
        m.insert("sub".into(), self.user_id.clone().into());
        m.insert("rsub".into(), self.user_id.clone().into());
        m.insert("tId".into(), self.tenant_id.clone().into());
        m.insert("sessionHandle".into(), self.session_handle.clone().into());
        m.insert(
            "refreshTokenHash1".into(),
            self.refresh_token_hash.clone().into(),
        );
        if let Some(t) = &self.anti_csrf_token {
            m.insert("antiCsrfToken".into(), t.clone().into());
        }
        m.insert("iat".into(), self.iat.into());
        m.insert("exp".into(), self.exp.into());
        if let Some(iss) = &self.iss {
            m.insert("iss".into(), iss.clone().into());
        }
        m
    }

    fn from_json(mut m: Map<String, Value>) -> Result<Self, TokenError> {
        fn string(m: &mut Map<String, Value>, k: &str) -> Result<String, TokenError> {
            match m.remove(k) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s),
                _ => Err(TokenError::Malformed),
            }
        }
        fn opt_string(m: &mut Map<String, Value>, k: &str) -> Result<Option<String>, TokenError> {
            match m.remove(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                _ => Err(TokenError::Malformed),
            }
        }
        fn seconds(m: &mut Map<String, Value>, k: &str) -> Result<u64, TokenError> {
            m.remove(k)
                .and_then(|v| v.as_u64())
                .ok_or(TokenError::Malformed)
        }
        let user_id = string(&mut m, "sub")?;
        let rsub = string(&mut m, "rsub")?;
        if rsub != user_id {
            return Err(TokenError::Malformed);
        }
        let claims = Self {
            user_id,
            tenant_id: string(&mut m, "tId")?,
            session_handle: string(&mut m, "sessionHandle")?,
            refresh_token_hash: string(&mut m, "refreshTokenHash1")?,
            anti_csrf_token: opt_string(&mut m, "antiCsrfToken")?,
            iat: seconds(&mut m, "iat")?,
            exp: seconds(&mut m, "exp")?,
            iss: opt_string(&mut m, "iss")?,
            payload: Map::new(),
        };
        opt_string(&mut m, "parentRefreshTokenHash1")?;
        m.remove("stt");
        Ok(Self {
            payload: m,
            ..claims
        })
    }
}

/// Signs an access token with `key`.
pub fn mint(key: &SigningKey, claims: &AccessClaims) -> Result<String, KeyError> {
    key.sign(&claims.to_json(), true)
}

/// Verifies an access token at `now_ms`.
pub fn verify(keys: &KeyRing, token: &str, now_ms: u64) -> Result<AccessClaims, TokenError> {
    let claims = signed(keys, token)?;
    claims.live_at(now_ms)?;
    Ok(claims)
}

/// The claims of an access token this server signed, expired or not: what
/// a database check needs to tell an expired token of a live session (to
/// be refreshed) from one of a session that is over.
pub fn signed(keys: &KeyRing, token: &str) -> Result<AccessClaims, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if header
        .extras
        .get::<String>("version")
        .ok()
        .flatten()
        .as_deref()
        != Some("5")
    {
        return Err(TokenError::Malformed);
    }
    let kid = header.kid.as_deref().ok_or(TokenError::Malformed)?;
    let key = keys.verifier(kid).ok_or(TokenError::UnknownKey)?;
    // Access tokens are signed by rotating keys only: the static key, which
    // never rotates or retires, must not be able to vouch for a session.
    if key.is_static() {
        return Err(TokenError::UnknownKey);
    }
    if header.alg != key.algorithm() {
        return Err(TokenError::WrongAlgorithm);
    }
    let mut validation = Validation::new(key.algorithm());
    validation.leeway = 0;
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims = HashSet::new();
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, key.decoding_key(), &validation)
        .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
        _ => TokenError::Malformed,
    })?;
    AccessClaims::from_json(data.claims)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::metrics::Metrics;
    use crate::store::MemoryStore;
    use crate::token::SigningAlgorithm;
    use crate::token::keys::KeyRingConfig;

    #[tokio::test]
    async fn the_static_key_cannot_vouch_for_a_session() {
        let store = MemoryStore::shared();
        let clock = ManualClock::starting_now();
        let config = KeyRingConfig {
            algorithm: SigningAlgorithm::EdDSA,
            rotation_interval_ms: 86_400_000,
            access_lifetime_ms: 3_600_000,
        };
        let ring = Arc::new(
            KeyRing::open(store, clock.clone(), config, Metrics::shared())
                .await
                .unwrap(),
        );
        let now = clock.now_ms();
        let claims = AccessClaims {
            user_id: "u".into(),
            tenant_id: "public".into(),
            session_handle: "h".into(),
            refresh_token_hash: "x".into(),
            anti_csrf_token: None,
            iat: now / 1000,
            exp: now / 1000 + 60,
            iss: None,
            payload: Map::new(),
        };
        let by_rotating = mint(&ring.signer(), &claims).unwrap();
        assert_eq!(verify(&ring, &by_rotating, now).unwrap(), claims);
        let by_static = mint(&ring.static_signer(), &claims).unwrap();
        assert_eq!(verify(&ring, &by_static, now), Err(TokenError::UnknownKey));
    }
}
