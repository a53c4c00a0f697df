//! The one table of hashed secrets that callers are checked against: API
//! keys (`x-api-key`) and tenants' client secrets (`x-client-secret`).
//!
//! Secrets are kept only as SHA-256 hashes, each under a label (who the
//! secret says the caller is); a presented secret is hashed and compared
//! with every entry in constant time, and the table is replaced whole at a
//! configuration reload while calls in flight keep the one they read. This
//! file must never keep a secret itself, nor print one: its `Debug` shows
//! only how many entries there are.

use crate::reload::Live;
use crate::token::ct_eq;

/// SHA-256 of `bytes`, as secrets are held and compared.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Hashed secrets under their labels, replaceable at run time (SIGHUP).
pub struct HashedSecrets<L> {
    entries: Live<Vec<(L, [u8; 32])>>,
}

impl<L> Clone for HashedSecrets<L> {
    fn clone(&self) -> Self {
        Self {
            entries: self.entries.clone(),
        }
    }
}

impl<L> Default for HashedSecrets<L> {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl<L> std::fmt::Debug for HashedSecrets<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HashedSecrets({} entries)", self.len())
    }
}

impl<L> HashedSecrets<L> {
    /// A table of `(label, SHA-256 of the secret)` entries.
    pub fn new(entries: Vec<(L, [u8; 32])>) -> Self {
        Self {
            entries: Live::new(entries),
        }
    }

    /// Replaces every entry (configuration reload); calls in flight finish
    /// with the entries they were checked against.
    pub fn replace(&self, entries: Vec<(L, [u8; 32])>) {
        self.entries.set(entries);
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.get().len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The label of the entry whose secret `presented` is, among those
    /// `accept` allows. `presented` is compared with every entry, without
    /// stopping at the first match; when several match, the last one wins.
    pub fn find(&self, presented: &[u8], accept: impl Fn(&L) -> bool) -> Option<L>
    where
        L: Clone,
    {
        let presented = sha256(presented);
        let mut found = None;
        for (label, hash) in self.entries.get().iter() {
            if ct_eq(hash, &presented) && accept(label) {
                found = Some(label.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_label_of_a_presented_secret_and_never_shows_one() {
        let table = HashedSecrets::new(vec![
            ("a", sha256(b"first-secret-0123")),
            ("b", sha256(b"second-secret-0123")),
        ]);
        assert_eq!(table.find(b"second-secret-0123", |_| true), Some("b"));
        assert_eq!(table.find(b"second-secret-0123", |l| *l == "a"), None);
        assert_eq!(table.find(b"second-secret-012", |_| true), None);
        let seen = table.clone();
        table.replace(vec![("c", sha256(b"third-secret-0123"))]);
        assert_eq!(seen.find(b"third-secret-0123", |_| true), Some("c"));
        assert_eq!(seen.find(b"first-secret-0123", |_| true), None);
        let shown = format!("{table:?}");
        assert_eq!(shown, "HashedSecrets(1 entries)");
        assert!(!shown.contains("third"));
    }
}
