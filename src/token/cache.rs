//! A bounded cache of verified access tokens: the table only. What goes in
//! and when a hit is still good is decided by its one user,
//! [`super::verifier`].
//!
//! Verifying an access token means decoding it and checking a signature;
//! a caller (a sidecar, a gateway) verifies the same token many times during
//! its life. The cache maps the exact token bytes to their verified claims,
//! so only a token byte-for-byte identical to one already verified can hit.
//! The hash (foldhash, seeded per process) only picks where to look; keys
//! are compared whole and in constant time, so how long a lookup takes does
//! not tell a caller how much of its token matches a cached one, and only
//! tokens this service signed are ever inserted, so callers cannot choose
//! colliding keys. What the verifier keeps, whether a token hits or not:
//! - expiry is checked on every hit, against the clock, as on a miss;
//! - a revoked session is still refused with `check_database`, which reads
//!   the store after the cache (the stateless path never could tell);
//! - only successful verifications are stored, so garbage cannot fill it
//!   with refusals, and a key retires only after every token it signed has
//!   expired, so a cached token never outlives its key.
//!
//! Eviction is by generation: entries go into the current table; when it is
//! half the capacity it becomes the previous one (and the old previous is
//! dropped). A hit in the previous table moves the entry forward.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use hashbrown::HashTable;

use super::access::AccessClaims;

type Entry = (Box<str>, Arc<AccessClaims>);

#[derive(Default)]
struct Generations {
    current: HashTable<Entry>,
    previous: HashTable<Entry>,
}

/// Verified access tokens by their bytes.
pub struct TokenCache {
    generations: Mutex<Generations>,
    hasher: foldhash::fast::RandomState,
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

/// Whether an entry is this token's, compared in constant time.
fn is(token: &str) -> impl Fn(&Entry) -> bool + '_ {
    move |(key, _)| super::ct_eq(key.as_bytes(), token.as_bytes())
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0: no caching).
    pub fn new(capacity: usize) -> Self {
        Self {
            generations: Mutex::new(Generations::default()),
            hasher: foldhash::fast::RandomState::default(),
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
        let hash = self.hasher.hash_one(token);
        let mut g = self.lock();
        if let Some((_, found)) = g.current.find(hash, is(token)) {
            return Some(found.clone());
        }
        let (entry, _) = g.previous.find_entry(hash, is(token)).ok()?.remove();
        let found = entry.1.clone();
        self.put(&mut g, hash, entry);
        Some(found)
    }

    /// Remembers a token that verified.
    pub fn insert(&self, token: &str, claims: Arc<AccessClaims>) {
        if self.half == 0 {
            return;
        }
        let hash = self.hasher.hash_one(token);
        let mut g = self.lock();
        self.put(&mut g, hash, (token.into(), claims));
    }

    fn put(&self, g: &mut Generations, hash: u64, entry: Entry) {
        if g.current.len() >= self.half {
            g.previous = std::mem::take(&mut g.current);
        }
        let rehash = |(key, _): &Entry| self.hasher.hash_one(&**key);
        match g.current.entry(hash, is(&entry.0), rehash) {
            hashbrown::hash_table::Entry::Occupied(mut found) => *found.get_mut() = entry,
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(entry);
            }
        }
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

    #[test]
    fn a_token_cached_again_replaces_its_entry_and_a_hit_keeps_it() {
        let cache = TokenCache::new(4);
        cache.insert("a", claims(1));
        cache.insert("a", claims(2));
        assert_eq!(cache.len(), 1, "one entry per token");
        assert_eq!(cache.get("a").unwrap().exp, 2, "the later claims");
        cache.insert("b", claims(3));
        // "c" fills the current generation: "a" and "b" become the previous.
        cache.insert("c", claims(4));
        assert_eq!(cache.get("a").unwrap().exp, 2, "found in the previous");
        // "a" moved forward, so the next turn of generations keeps it.
        cache.insert("d", claims(5));
        cache.insert("e", claims(6));
        assert!(cache.get("a").is_some(), "a hit moved it forward");
        assert!(cache.get("b").is_none(), "not hit, so dropped");
        assert!(cache.len() <= 4);
    }
}
