//! A bounded cache of verified access tokens.
//!
//! Verifying an access token means decoding it and checking a signature;
//! a caller (a sidecar, a gateway) verifies the same token many times during
//! its life. The cache maps the exact token bytes to their verified claims,
//! so only a token byte-for-byte identical to one already verified can hit
//! (keys are compared whole; the hash, foldhash with a per-process seed, only
//! picks the bucket, and only tokens this service signed are ever inserted,
//! so callers cannot choose colliding keys). What it cannot change:
//! - expiry is checked on every hit, against the clock, as on a miss;
//! - a revoked session is still refused with `check_database`, which reads
//!   the store after the cache (the stateless path never could tell);
//! - only successful verifications are stored, so garbage cannot fill it
//!   with refusals, and a key retires only after every token it signed has
//!   expired, so a cached token never outlives its key.
//!
//! Eviction is by generation: entries go into the current map; when it is
//! half the capacity it becomes the previous one (and the old previous is
//! dropped). A hit in the previous map moves the entry forward.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::access::AccessClaims;

type Entries = HashMap<Box<str>, Arc<AccessClaims>, foldhash::fast::RandomState>;

#[derive(Default)]
struct Generations {
    current: Entries,
    previous: Entries,
}

/// Verified access tokens by their bytes.
pub struct TokenCache {
    generations: Mutex<Generations>,
    /// Entries per generation; 0 disables the cache.
    half: usize,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("capacity", &(self.half * 2))
            .finish()
    }
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0: no caching).
    pub fn new(capacity: usize) -> Self {
        Self {
            generations: Mutex::new(Generations::default()),
            half: capacity / 2,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.generations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The verified claims of exactly this token, if cached.
    pub fn get(&self, token: &str) -> Option<Arc<AccessClaims>> {
        if self.half == 0 {
            return None;
        }
        let mut g = self.lock();
        if let Some(found) = g.current.get(token) {
            return Some(found.clone());
        }
        let (key, found) = g.previous.remove_entry(token)?;
        Self::put(&mut g, self.half, key, found.clone());
        Some(found)
    }

    /// Remembers a token that verified.
    pub fn insert(&self, token: &str, claims: Arc<AccessClaims>) {
        if self.half == 0 {
            return;
        }
        let mut g = self.lock();
        Self::put(&mut g, self.half, token.into(), claims);
    }

    fn put(g: &mut Generations, half: usize, key: Box<str>, claims: Arc<AccessClaims>) {
        if g.current.len() >= half {
            g.previous = std::mem::take(&mut g.current);
        }
        g.current.insert(key, claims);
    }

    /// Tokens cached now.
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn claims(n: u64) -> Arc<AccessClaims> {
        Arc::new(AccessClaims {
            user_id: format!("u{n}"),
            tenant_id: "public".into(),
            session_handle: "h".into(),
            refresh_token_hash: "r".into(),
            anti_csrf_token: None,
            iat: 0,
            exp: n,
            iss: None,
            payload: Map::new(),
        })
    }

    #[test]
    fn exact_tokens_hit_and_the_size_stays_bounded() {
        let cache = TokenCache::new(4);
        cache.insert("a", claims(1));
        assert_eq!(cache.get("a").unwrap().exp, 1);
        assert!(cache.get("a ").is_none(), "only the exact bytes hit");
        for (i, t) in ["b", "c", "d", "e", "f"].iter().enumerate() {
            cache.insert(t, claims(i as u64 + 2));
            assert!(cache.len() <= 4, "bounded");
        }
        assert!(cache.get("f").is_some(), "the newest stays");
        assert!(cache.get("a").is_none(), "the oldest went");
        let off = TokenCache::new(0);
        off.insert("a", claims(1));
        assert!(off.get("a").is_none());
    }
}
