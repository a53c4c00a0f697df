//! The access token verifier: the key ring's verification behind the cache
//! of verified tokens, and the one owner of that cache's policy.
//!
//! What is cached: only tokens that verified (signature, key, algorithm,
//! claims), by their exact bytes, so refusals never fill the cache. For how
//! long: until the cache's generations push them out; a hit is still
//! checked against the clock, so a cached token expires exactly as an
//! uncached one would. Nothing needs invalidating: a key retires only after
//! every token it signed has expired, and whether a session still exists is
//! the store's to say (the session rules ask it after verifying). Callers
//! above `token/` see verified claims and [`TokenError`]s, never the cache;
//! this module never logs a token.

use std::sync::Arc;

use super::TokenError;
use super::access::{self, AccessClaims};
use super::cache::TokenCache;
use super::keys::KeyRing;

/// Verifies access tokens against a key ring, remembering those that
/// verified.
#[derive(Debug)]
pub struct Verifier {
    keys: Arc<KeyRing>,
    cache: TokenCache,
}

impl Verifier {
    /// A verifier over `keys` remembering at most `cache_size` tokens (0:
    /// none).
    pub fn new(keys: Arc<KeyRing>, cache_size: usize) -> Self {
        Self {
            keys,
            cache: TokenCache::new(cache_size),
        }
    }

    /// The key ring.
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// The claims of `token` if it verifies and has not expired at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Arc<AccessClaims>, TokenError> {
        if let Some(claims) = self.cache.get(token) {
            // Verified before; only its lifetime can have run out since.
            claims.live_at(now_ms)?;
            return Ok(claims);
        }
        let claims = Arc::new(access::verify(&self.keys, token, now_ms)?);
        self.cache.insert(token, claims.clone());
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::metrics::Metrics;
    use crate::store::MemoryStore;
    use crate::token::SigningAlgorithm;
    use crate::token::keys::KeyRingConfig;

    #[tokio::test]
    async fn a_cached_token_still_expires_and_refusals_are_not_cached() {
        let clock = ManualClock::starting_now();
        let config = KeyRingConfig {
            algorithm: SigningAlgorithm::EdDSA,
            rotation_interval_ms: 86_400_000,
            access_lifetime_ms: 3_600_000,
        };
        let ring = KeyRing::open(
            MemoryStore::shared(),
            clock.clone(),
            config,
            Metrics::shared(),
        )
        .await
        .unwrap();
        let verifier = Verifier::new(Arc::new(ring), 16);
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
        let token = access::mint(&verifier.keys().signer(), &claims).unwrap();
        assert_eq!(*verifier.verify(&token, now).unwrap(), claims);
        assert_eq!(verifier.cache.len(), 1, "a verified token is remembered");
        assert_eq!(*verifier.verify(&token, now).unwrap(), claims, "a hit");
        assert_eq!(
            verifier.verify(&token, claims.exp * 1000),
            Err(TokenError::Expired),
            "expiry is checked on a hit too"
        );
        assert!(verifier.verify("not.a.token", now).is_err());
        assert_eq!(verifier.cache.len(), 1, "a refusal is not remembered");
    }
}
