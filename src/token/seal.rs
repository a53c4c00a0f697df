//! Sealing: the one place where what the store holds secret — signing
//! keys and server secrets such as the refresh-token MAC secret — passes
//! through the key-encryption key on its way in and out.
//!
//! [`Vault`] owns the rules both kinds share:
//! - with a KEK, everything is written sealed (AES-256-GCM, bound to the
//!   key id or the secret's name);
//! - what was stored in plaintext before a KEK was configured, or sealed
//!   under the KEK being replaced, is sealed under the current KEK when it
//!   is next opened;
//! - something sealed, without the KEK that sealed it, is refused, never
//!   replaced: new keys or a new secret would end every session.
//!
//! Keys and secrets are sealed into one format, a single value
//! ([`Kek::seal_value`], laid out as [`crate::secret::sealed`] says), which
//! the store keeps as opaque bytes. This module never logs or returns in an
//! error a key, secret or plaintext.

use std::sync::Arc;

use super::KeyError;
use super::kek::{self, Kek};
use crate::store::{KeyRecord, KeySlot, Store, StoreError};

/// The store's keys and secrets, through the key-encryption key when there
/// is one.
pub struct Vault {
    store: Arc<dyn Store>,
    kek: Option<Arc<Kek>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("sealed", &self.kek.is_some())
            .finish_non_exhaustive()
    }
}

/// Stored keys as [`Vault::load_keys`] opened them.
pub struct LoadedKeys {
    /// The keys, with their private keys in plaintext.
    pub records: Vec<KeyRecord>,
    /// How many were stored in plaintext.
    pub plaintext: usize,
    /// How many were sealed under the previous KEK.
    pub stale: usize,
}

impl LoadedKeys {
    /// Whether some keys must be written again to be sealed under the
    /// current KEK.
    pub fn need_sealing(&self, vault: &Vault) -> bool {
        vault.kek.is_some() && self.plaintext + self.stale > 0
    }
}

impl Vault {
    /// The vault of `store`, sealing with `kek` when given.
    pub fn new(store: Arc<dyn Store>, kek: Option<Arc<Kek>>) -> Self {
        Self { store, kek }
    }

    /// The key-encryption key, if any.
    pub fn kek(&self) -> Option<&Arc<Kek>> {
        self.kek.as_ref()
    }

    /// The stored keys, opened.
    pub async fn load_keys(&self) -> Result<LoadedKeys, KeyError> {
        let mut plaintext = 0;
        let mut stale = 0;
        let records = self
            .store
            .keys()
            .await?
            .into_iter()
            .map(|mut r| {
                if !kek::is_sealed_value(&r.private_key) {
                    plaintext += 1;
                    return Ok(r);
                }
                let what = if self.kek.is_some() {
                    format!("signing key {}", r.kid)
                } else {
                    "the signing keys".to_owned()
                };
                let opened = open(self.kek.as_deref(), &what, |kek| {
                    kek.open_value(r.kid.as_bytes(), &r.private_key)
                })?;
                stale += usize::from(opened.stale);
                r.private_key = opened.plaintext;
                Ok(r)
            })
            .collect::<Result<Vec<_>, KeyError>>()?;
        Ok(LoadedKeys {
            records,
            plaintext,
            stale,
        })
    }

    /// Stores a key, sealed when there is a KEK.
    pub async fn put_key(&self, record: &KeyRecord) -> Result<(), KeyError> {
        Ok(self.store.put_key(&self.stored(record)).await?)
    }

    /// Adds a new key to the store, sealed as [`Vault::put_key`] seals it,
    /// if `slot` is still free
    /// ([`KeysAndSecrets::add_key`](crate::store::KeysAndSecrets::add_key)).
    pub async fn add_key(&self, record: &KeyRecord, slot: KeySlot<'_>) -> Result<bool, KeyError> {
        Ok(self.store.add_key(&self.stored(record), slot).await?)
    }

    /// A key as the store keeps it: sealed when a KEK is configured.
    fn stored(&self, record: &KeyRecord) -> KeyRecord {
        match &self.kek {
            None => record.clone(),
            Some(kek) => KeyRecord {
                private_key: kek.seal_value(record.kid.as_bytes(), &record.private_key),
                ..record.clone()
            },
        }
    }

    /// The server secret called `name`; see [`secret`].
    pub async fn secret(&self, name: &str, what: &str) -> Result<Vec<u8>, KeyError> {
        secret(self.store.as_ref(), self.kek.as_deref(), name, what).await
    }
}

/// Opens what a KEK sealed, through `open`; `what` names it in refusals
/// (no KEK, or one that does not open it).
fn open(
    kek: Option<&Kek>,
    what: &str,
    open: impl FnOnce(&Kek) -> Option<kek::Opened>,
) -> Result<kek::Opened, KeyError> {
    let Some(kek) = kek else {
        return Err(KeyError::Sealed(kek::missing(what)));
    };
    open(kek).ok_or_else(|| KeyError::Sealed(kek.refusal(what)))
}

/// The server secret called `name` in `store` (32 random bytes, made on a
/// new store), sealed with `kek` when there is one; `what` names it for the
/// operator. The caller makes a first write durable.
pub async fn secret(
    store: &dyn Store,
    kek: Option<&Kek>,
    name: &str,
    what: &str,
) -> Result<Vec<u8>, KeyError> {
    let aad = name.as_bytes();
    // Bounded: only a concurrent writer of the same secret can make a
    // replacement miss, and one data directory has one server.
    for _ in 0..3 {
        let stored = store
            .secret(name, &mut || {
                let fresh = super::random_bytes::<32>().to_vec();
                match kek {
                    Some(kek) => kek.seal_value(aad, &fresh),
                    None => fresh,
                }
            })
            .await?;
        let sealed = kek::is_sealed_value(&stored);
        let Some(kek) = kek else {
            if sealed {
                return Err(KeyError::Sealed(kek::missing(what)));
            }
            return Ok(stored);
        };
        let (plaintext, was) = if sealed {
            let opened = open(Some(kek), what, |kek| kek.open_value(aad, &stored))?;
            if !opened.stale {
                return Ok(opened.plaintext);
            }
            (opened.plaintext, "under the previous key-encryption key")
        } else {
            (stored.clone(), "in plaintext")
        };
        if store
            .replace_secret(name, &stored, &kek.seal_value(aad, &plaintext))
            .await?
        {
            tracing::info!(was, "sealed {what} with the key-encryption key");
            return Ok(plaintext);
        }
    }
    Err(StoreError::Backend(format!("{what} kept changing while it was being sealed")).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{KeysAndSecrets, MemoryStore};
    use crate::token::kek;
    use crate::token::refresh::RefreshTokens;

    fn kek(byte: u8) -> Kek {
        Kek::from_text(&format!("{byte:02x}").repeat(32)).unwrap()
    }

    async fn stored(store: &dyn Store) -> Vec<u8> {
        store
            .secret(RefreshTokens::SECRET_NAME, &mut || panic!("made already"))
            .await
            .unwrap()
    }

    /// The refresh-token MAC secret, as the session rules open it.
    async fn mac_secret(store: &dyn Store, kek: Option<&Kek>) -> Result<Vec<u8>, KeyError> {
        secret(
            store,
            kek,
            RefreshTokens::SECRET_NAME,
            RefreshTokens::SECRET_WHAT,
        )
        .await
    }

    #[tokio::test]
    async fn the_secret_is_sealed_with_a_kek_and_refused_without_it() {
        let store = MemoryStore::shared();

        // Made on a new store: plaintext without a KEK, then sealed once
        // one is configured, and the same secret either way.
        let plain = mac_secret(store.as_ref(), None).await.unwrap();
        assert_eq!(stored(store.as_ref()).await, plain);
        assert_eq!(
            mac_secret(store.as_ref(), Some(&kek(1))).await.unwrap(),
            plain
        );
        let sealed = stored(store.as_ref()).await;
        assert!(kek::is_sealed_value(&sealed), "sealed in the store");
        assert_eq!(
            mac_secret(store.as_ref(), Some(&kek(1))).await.unwrap(),
            plain
        );
        assert_eq!(stored(store.as_ref()).await, sealed, "sealed once");

        // Without the KEK, or with another, the start stops; nothing changes.
        for (other, says) in [
            (None, "no key-encryption key"),
            (Some(kek(2)), "does not open"),
        ] {
            let err = mac_secret(store.as_ref(), other.as_ref())
                .await
                .unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
            assert_eq!(stored(store.as_ref()).await, sealed, "never replaced");
        }

        // A new KEK with the replaced one as its predecessor seals the
        // secret again under the new one; the old KEK alone no longer opens it.
        let rotating = kek(3).with_previous(kek(1));
        assert_eq!(
            mac_secret(store.as_ref(), Some(&rotating)).await.unwrap(),
            plain
        );
        let resealed = stored(store.as_ref()).await;
        assert_ne!(resealed, sealed);
        assert_eq!(
            mac_secret(store.as_ref(), Some(&kek(3))).await.unwrap(),
            plain
        );
        assert_eq!(stored(store.as_ref()).await, resealed, "sealed again once");
        let err = mac_secret(store.as_ref(), Some(&kek(1))).await.unwrap_err();
        assert!(err.to_string().contains("does not open"), "{err}");

        // A new store with a KEK never holds the secret in plaintext.
        let store = MemoryStore::shared();
        let secret = mac_secret(store.as_ref(), Some(&kek(1))).await.unwrap();
        assert_eq!(secret.len(), 32);
        let value = stored(store.as_ref()).await;
        assert!(kek::is_sealed_value(&value) && !value.windows(32).any(|w| w == secret));
    }

    /// The formats data directories hold today keep opening: a secret
    /// sealed whole into one value, and a key record's nonce and ciphertext.
    #[tokio::test]
    async fn both_stored_formats_open_and_a_key_without_its_kek_is_refused() {
        let store = MemoryStore::shared();
        let value = kek(1).seal_value(b"other-secret", &[5u8; 32]);
        store
            .secret("other-secret", &mut || value.clone())
            .await
            .unwrap();
        let vault = Vault::new(store.clone(), Some(Arc::new(kek(1))));
        assert_eq!(vault.secret("other-secret", "it").await.unwrap(), [5u8; 32]);

        let record = KeyRecord {
            kid: "d-1".into(),
            alg: "EdDSA".into(),
            private_key: kek(1).seal_value(b"d-1", b"pkcs8"),
            created_at_ms: 1,
            signs_from_ms: 1,
            max_token_lifetime_ms: 1,
            max_jwt_exp_ms: 0,
            is_static: false,
        };
        store.put_key(&record).await.unwrap();
        let loaded = vault.load_keys().await.unwrap();
        assert_eq!(loaded.records[0].private_key, b"pkcs8");
        assert!(!loaded.need_sealing(&vault));

        let err = Vault::new(store.clone(), None)
            .load_keys()
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("no key-encryption key"), "{err}");
    }
}
