//! The key ring: signing keys, their rotation and their publication.
//!
//! Two kinds of keys, both kept in the store so they survive restarts:
//! - **rotating** keys (`kid` `d-<created ms>`), which sign access tokens and
//!   JWTs. A successor is generated one publication delay (60 s) before the
//!   current key's interval ends and enters the JWKS at once, but signs only
//!   when the delay has passed, so verifiers that cache the JWKS see it
//!   first. A key that no longer signs keeps verifying until every token it
//!   signed has expired (`retires_at`), then leaves the JWKS and the store.
//! - the **static** key (`kid` `s-<random>`), which never rotates and signs
//!   JWTs from CreateJwt with `use_static_signing_key`.
//!
//! Every key is pinned to its algorithm: verification never takes the
//! algorithm from a token's header alone. Private keys never leave this
//! module: each is parsed once, when loaded, and signs here (jsonwebtoken
//! would parse the PKCS#8 document again for every signature).
//!
//! Layout: this file holds the ring (loading, rotation, publication,
//! retirement); `signing.rs` the keys themselves; sealing private keys
//! with the key-encryption key is [`super::seal`]'s.

mod signing;
#[cfg(test)]
mod tests;

pub use signing::{Jwk, SigningKey};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::KeyError;
use super::kek::Kek;
use super::seal::{LoadedKeys, Vault};
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::store::{KeyRecord, Store};
use crate::token::SigningAlgorithm;
use signing::generate_pkcs8;

/// How long a new rotating key is published before it signs.
pub const PUBLISH_DELAY_MS: u64 = 60_000;

/// A key's place in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published, signing later.
    Pending,
    /// Signing now.
    Signing,
    /// No longer signing; verifies the tokens it signed until it retires.
    Verifying,
    /// The static key.
    Static,
}

impl KeyState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Signing => "signing",
            Self::Verifying => "verifying",
            Self::Static => "static",
        }
    }
}

/// What an operator sees of a key (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: String,
    /// State now.
    pub state: KeyState,
    /// Creation, ms.
    pub created_ms: u64,
    /// Start of signing, ms.
    pub signs_from_ms: u64,
    /// End of verification, ms (`None` while it may still sign, or static).
    pub retires_at_ms: Option<u64>,
}

/// Settings of the key ring.
#[derive(Debug, Clone, Copy)]
pub struct KeyRingConfig {
    /// Algorithm for new keys.
    pub algorithm: SigningAlgorithm,
    /// How long a rotating key signs, ms.
    pub rotation_interval_ms: u64,
    /// Access token lifetime, ms (bounds how long a retired key must verify).
    pub access_lifetime_ms: u64,
}

/// The loaded keys at one moment.
struct KeySet {
    /// Rotating keys, oldest `signs_from` first.
    rotating: Vec<Arc<SigningKey>>,
    static_key: Arc<SigningKey>,
    by_kid: HashMap<String, Arc<SigningKey>>,
}

impl KeySet {
    fn load(records: Vec<KeyRecord>) -> Result<Option<Self>, KeyError> {
        let keys = records
            .into_iter()
            .map(|r| SigningKey::load(r).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self::new(keys))
    }

    /// `None` without a static key or a rotating one.
    fn new(keys: Vec<Arc<SigningKey>>) -> Option<Self> {
        let mut rotating = Vec::new();
        let mut static_key = None;
        for key in keys {
            if key.record.is_static {
                static_key = Some(key);
            } else {
                rotating.push(key);
            }
        }
        rotating.sort_by_key(|k| (k.record.signs_from_ms, k.record.created_at_ms));
        let static_key = static_key?;
        if rotating.is_empty() {
            return None;
        }
        let by_kid = rotating
            .iter()
            .chain(std::iter::once(&static_key))
            .map(|k| (k.record.kid.clone(), k.clone()))
            .collect();
        Some(Self {
            rotating,
            static_key,
            by_kid,
        })
    }

    /// The rotating key that signs at `now`.
    fn signer(&self, now: u64) -> &Arc<SigningKey> {
        self.rotating
            .iter()
            .rev()
            .find(|k| k.record.signs_from_ms <= now)
            .unwrap_or(&self.rotating[0])
    }

    /// When a key stops verifying; `None` while it may still sign.
    fn retires_at(&self, key: &SigningKey) -> Option<u64> {
        if key.record.is_static {
            return None;
        }
        let successor = self
            .rotating
            .iter()
            .find(|k| k.record.signs_from_ms > key.record.signs_from_ms)?;
        let from = successor.record.signs_from_ms;
        Some((from + key.record.max_token_lifetime_ms).max(key.record.max_jwt_exp_ms))
    }

    fn is_live(&self, key: &SigningKey, now: u64) -> bool {
        self.retires_at(key).is_none_or(|t| now < t)
    }

    fn latest(&self) -> &Arc<SigningKey> {
        self.rotating.last().expect("a key set has a rotating key")
    }
}

/// The signing keys of the server.
pub struct KeyRing {
    store: Arc<dyn Store>,
    vault: Vault,
    clock: SharedClock,
    config: KeyRingConfig,
    set: RwLock<Arc<KeySet>>,
    writer: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// The key-encryption key the ring keeps its private keys sealed with.
    pub fn kek(&self) -> Option<&Arc<Kek>> {
        self.vault.kek()
    }

    /// The vault the ring keeps its private keys in, which keeps the
    /// store's other secrets too.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// Loads the keys from the store, generating the first ones on a new store.
    pub async fn open(
        store: Arc<dyn Store>,
        clock: SharedClock,
        config: KeyRingConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KeyError> {
        Self::open_sealed(store, clock, config, metrics, None).await
    }

    /// [`KeyRing::open`], keeping private keys encrypted with `kek` in the
    /// store. Plaintext keys found in the store are sealed at once. Sealed
    /// keys without a KEK, or with another one, are an error: keys are never
    /// regenerated in their place, which would end every session.
    pub async fn open_sealed(
        store: Arc<dyn Store>,
        clock: SharedClock,
        config: KeyRingConfig,
        metrics: Arc<Metrics>,
        kek: Option<Arc<Kek>>,
    ) -> Result<Self, KeyError> {
        let vault = Vault::new(store.clone(), kek);
        let now = clock.now_ms();
        let loaded = vault.load_keys().await?;
        let reseal = loaded.need_sealing(&vault);
        let LoadedKeys {
            mut records,
            plaintext,
            stale,
        } = loaded;
        let mut changed = false;
        if reseal {
            for r in &records {
                vault.put_key(r).await?;
            }
            changed = true;
            if plaintext > 0 {
                tracing::info!(
                    keys = plaintext,
                    "sealed the stored signing keys with the key-encryption key"
                );
            }
            if stale > 0 {
                tracing::info!(
                    keys = stale,
                    "sealed the signing keys sealed under the previous key-encryption key again under the current one"
                );
            }
        } else if vault.kek().is_some_and(|k| k.has_previous()) {
            tracing::info!(
                "a previous key-encryption key is configured, but no signing key was sealed under it"
            );
        }
        if !records.iter().any(|r| r.is_static) {
            let suffix = super::random_bytes::<8>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            records.push(new_record(format!("s-{suffix}"), config, now, now, true).await?);
            vault.put_key(records.last().expect("pushed")).await?;
            changed = true;
        }
        if !records.iter().any(|r| !r.is_static) {
            records.push(new_record(format!("d-{now}"), config, now, now, false).await?);
            vault.put_key(records.last().expect("pushed")).await?;
            changed = true;
        }
        // Keys that may still sign must stay verifiable for the configured
        // access token lifetime, even if it grew since they were made.
        let latest_signing = records
            .iter()
            .filter(|r| !r.is_static && r.signs_from_ms <= now)
            .map(|r| r.signs_from_ms)
            .max()
            .unwrap_or(0);
        for r in records.iter_mut() {
            if !r.is_static
                && r.signs_from_ms >= latest_signing
                && r.max_token_lifetime_ms < config.access_lifetime_ms
            {
                r.max_token_lifetime_ms = config.access_lifetime_ms;
                vault.put_key(r).await?;
                changed = true;
            }
        }
        if changed {
            store.durable().await?;
        }
        let set = KeySet::load(records)?.ok_or(KeyError::Crypto("set is incomplete"))?;
        let ring = Self {
            store,
            vault,
            clock,
            config,
            set: RwLock::new(Arc::new(set)),
            writer: tokio::sync::Mutex::new(()),
            metrics,
        };
        ring.maintain().await?;
        Ok(ring)
    }

    fn snapshot(&self) -> Arc<KeySet> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The rotating key that signs now.
    pub fn signer(&self) -> Arc<SigningKey> {
        self.snapshot().signer(self.clock.now_ms()).clone()
    }

    /// How long a rotating key signs, ms.
    pub fn rotation_interval_ms(&self) -> u64 {
        self.config.rotation_interval_ms
    }

    /// The static key.
    pub fn static_signer(&self) -> Arc<SigningKey> {
        self.snapshot().static_key.clone()
    }

    /// The key with this id, if it still verifies.
    pub fn verifier(&self, kid: &str) -> Option<Arc<SigningKey>> {
        let set = self.snapshot();
        let key = set.by_kid.get(kid)?;
        set.is_live(key, self.clock.now_ms()).then(|| key.clone())
    }

    /// The published keys: every key that still verifies, and keys that will
    /// sign soon. Newest first, the static key last.
    pub fn jwks(&self) -> Vec<Jwk> {
        let set = self.snapshot();
        let now = self.clock.now_ms();
        set.rotating
            .iter()
            .rev()
            .filter(|k| set.is_live(k, now))
            .chain(std::iter::once(&set.static_key))
            .map(|k| k.jwk().clone())
            .collect()
    }

    /// Every key that still verifies, newest first, the static key last.
    pub fn list(&self) -> Vec<KeyInfo> {
        let set = self.snapshot();
        let now = self.clock.now_ms();
        let signer = set.signer(now).kid().to_owned();
        set.rotating
            .iter()
            .rev()
            .filter(|k| set.is_live(k, now))
            .chain(std::iter::once(&set.static_key))
            .map(|k| KeyInfo {
                kid: k.kid().to_owned(),
                alg: k.record.alg.clone(),
                state: if k.record.is_static {
                    KeyState::Static
                } else if k.kid() == signer {
                    KeyState::Signing
                } else if k.record.signs_from_ms > now {
                    KeyState::Pending
                } else {
                    KeyState::Verifying
                },
                created_ms: k.record.created_at_ms,
                signs_from_ms: k.record.signs_from_ms,
                retires_at_ms: set.retires_at(k),
            })
            .collect()
    }

    /// Seconds a JWKS response may be cached (`Cache-Control: max-age`):
    /// until the next scheduled key, and never longer than the publication
    /// delay, so that a key published by an unscheduled rotation (the
    /// RotateSigningKey RPC, an algorithm change) is in every cache before it
    /// signs.
    pub fn jwks_max_age_secs(&self) -> u64 {
        let set = self.snapshot();
        let next = self.next_rotation_ms(&set);
        next.saturating_sub(self.clock.now_ms())
            .min(PUBLISH_DELAY_MS)
            / 1000
    }

    fn next_rotation_ms(&self, set: &KeySet) -> u64 {
        let latest = set.latest();
        (latest.record.signs_from_ms + self.config.rotation_interval_ms)
            .saturating_sub(PUBLISH_DELAY_MS)
    }

    /// True when [`KeyRing::maintain`] has work to do.
    fn needs_maintenance(&self) -> bool {
        let set = self.snapshot();
        let now = self.clock.now_ms();
        let latest = set.latest();
        now >= self.next_rotation_ms(&set)
            || latest.jwk().alg != self.config.algorithm.as_str()
            || set.rotating.iter().any(|k| !set.is_live(k, now))
    }

    /// Starts a rotation when one is due (or the configured algorithm
    /// changed) and removes keys that no longer verify anything. Cheap when
    /// there is nothing to do, so callers about to sign may call it freely.
    pub async fn maintain(&self) -> Result<(), KeyError> {
        if !self.needs_maintenance() {
            return Ok(());
        }
        let _guard = self.writer.lock().await;
        let set = self.snapshot();
        let now = self.clock.now_ms();
        let latest = set.latest();
        if now >= self.next_rotation_ms(&set) || latest.jwk().alg != self.config.algorithm.as_str()
        {
            self.add_successor(&set, now).await?;
        }
        let set = self.snapshot();
        let retired: Vec<_> = set
            .rotating
            .iter()
            .filter(|k| !set.is_live(k, now))
            .cloned()
            .collect();
        if !retired.is_empty() {
            for k in &retired {
                self.store.delete_key(k.kid()).await?;
            }
            self.store.durable().await?;
            let keys = keys_except(&set, |k| retired.iter().any(|r| r.kid() == k.kid()));
            self.replace(keys)?;
            tracing::info!(
                retired = retired.len(),
                "retired signing keys that no longer verify any token"
            );
        }
        Ok(())
    }

    /// Starts a rotation now; returns the new key, which signs after the
    /// publication delay.
    pub async fn rotate_now(&self) -> Result<Arc<SigningKey>, KeyError> {
        let _guard = self.writer.lock().await;
        let set = self.snapshot();
        self.add_successor(&set, self.clock.now_ms()).await
    }

    /// Records that `kid` signed a JWT expiring at `exp_ms`, so the key keeps
    /// verifying until then. Returns once that is durable.
    pub async fn note_jwt_expiry(&self, kid: &str, exp_ms: u64) -> Result<(), KeyError> {
        let noted = |set: &KeySet| {
            set.by_kid
                .get(kid)
                .is_none_or(|key| key.record.is_static || key.record.max_jwt_exp_ms >= exp_ms)
        };
        // Most calls fall within a second already noted: no lock for them.
        if noted(&self.snapshot()) {
            return Ok(());
        }
        let _guard = self.writer.lock().await;
        let set = self.snapshot();
        if noted(&set) {
            return Ok(());
        }
        let updated = set.by_kid[kid].with_max_jwt_exp(exp_ms);
        self.vault.put_key(&updated.record).await?;
        self.store.durable().await?;
        let mut keys = keys_except(&set, |k| k.kid() == kid);
        keys.push(Arc::new(updated));
        self.replace(keys)
    }

    async fn add_successor(&self, set: &KeySet, now: u64) -> Result<Arc<SigningKey>, KeyError> {
        let mut created = now;
        while set.by_kid.contains_key(&format!("d-{created}")) {
            created += 1;
        }
        let signs_from = now + PUBLISH_DELAY_MS;
        let record = new_record(
            format!("d-{created}"),
            self.config,
            created,
            signs_from,
            false,
        )
        .await?;
        self.vault.put_key(&record).await?;
        self.store.durable().await?;
        let kid = record.kid.clone();
        let mut keys = keys_except(set, |_| false);
        keys.push(Arc::new(SigningKey::load(record)?));
        self.replace(keys)?;
        self.metrics.key_rotated();
        tracing::info!(kid = %kid, signs_from_ms = signs_from, "published a new signing key");
        Ok(self.snapshot().by_kid[&kid].clone())
    }

    fn replace(&self, keys: Vec<Arc<SigningKey>>) -> Result<(), KeyError> {
        let set = KeySet::new(keys).ok_or(KeyError::Crypto("set is incomplete"))?;
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(())
    }
}

/// The keys of `set` that `drop` does not pick.
fn keys_except(set: &KeySet, drop: impl Fn(&SigningKey) -> bool) -> Vec<Arc<SigningKey>> {
    set.by_kid.values().filter(|k| !drop(k)).cloned().collect()
}

async fn new_record(
    kid: String,
    config: KeyRingConfig,
    created_at_ms: u64,
    signs_from_ms: u64,
    is_static: bool,
) -> Result<KeyRecord, KeyError> {
    let alg = config.algorithm;
    let private_pkcs8 = tokio::task::spawn_blocking(move || generate_pkcs8(alg))
        .await
        .map_err(|_| KeyError::Crypto("generation was interrupted"))??;
    Ok(KeyRecord {
        kid,
        alg: alg.as_str().to_owned(),
        private_pkcs8,
        sealed: None,
        created_at_ms,
        signs_from_ms,
        max_token_lifetime_ms: config.access_lifetime_ms,
        max_jwt_exp_ms: 0,
        is_static,
    })
}
