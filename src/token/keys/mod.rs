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
//! Replicas sharing a store share one ring. Each place in it (the static
//! key, the successor of the newest rotating key) is filled once: the store
//! checks the place is free and writes the key in one step
//! ([`KeysAndSecrets::add_key`](crate::store::KeysAndSecrets::add_key)), and
//! a process that loses the race reads the ring again and takes the winner's
//! key. Every server reads the ring again every [`RELOAD_INTERVAL`] and
//! before any rotation or retirement, so a key one replica adds is published
//! by all of them well before it signs, and no replica retires a key that
//! another one has since signed a long-lived JWT with.
//!
//! Layout: this file holds the ring (loading, rotation, publication,
//! retirement); `set.rs` the keys at one moment; `signing.rs` the keys
//! themselves; sealing private keys with the key-encryption key is
//! [`super::seal`]'s.

mod set;
mod signing;
#[cfg(test)]
mod tests;

pub use signing::{Jwk, SigningKey};

use std::sync::{Arc, RwLock};

use super::KeyError;
use super::kek::Kek;
use super::seal::{LoadedKeys, Vault};
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::store::{KeyRecord, KeySlot, Store};
use crate::token::SigningAlgorithm;
use set::KeySet;
use signing::generate_pkcs8;

/// How long a new rotating key is published before it signs.
pub const PUBLISH_DELAY_MS: u64 = 60_000;

/// How often a server reads the key ring again from the store
/// ([`KeyRing::reload`]), to take keys that other replicas sharing it
/// added or retired: well inside [`PUBLISH_DELAY_MS`], so that every replica
/// publishes a new key long before any replica signs with it.
pub const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// How many times [`KeyRing::rotate_now`] tries to add a key when other
/// processes keep adding theirs first.
const ROTATE_TRIES: usize = 5;

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
        // Processes sharing a new store race to make its first keys: each
        // place is filled once, and the losers take the winners' keys.
        let mut added = false;
        if !records.iter().any(|r| r.is_static) {
            let suffix = super::random_bytes::<8>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            let key = new_record(format!("s-{suffix}"), config, now, now, true).await?;
            vault.add_key(&key, KeySlot::Static).await?;
            added = true;
        }
        if !records.iter().any(|r| !r.is_static) {
            let key = new_record(format!("d-{now}"), config, now, now, false).await?;
            vault.add_key(&key, KeySlot::After(None)).await?;
            added = true;
        }
        if added {
            records = vault.load_keys().await?.records;
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
    /// delay less the [`RELOAD_INTERVAL`], so that a key published by an
    /// unscheduled rotation (the RotateSigningKey RPC, an algorithm change)
    /// on any replica is in every cache before it signs: every replica
    /// publishes it within one reload interval, and a JWKS fetched before
    /// then expires before the delay ends.
    pub fn jwks_max_age_secs(&self) -> u64 {
        let set = self.snapshot();
        let next = self.next_rotation_ms(&set);
        let cap = PUBLISH_DELAY_MS - RELOAD_INTERVAL.as_millis() as u64;
        next.saturating_sub(self.clock.now_ms()).min(cap) / 1000
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
        self.rotation_due(&set, now) || set.rotating.iter().any(|k| !set.is_live(k, now))
    }

    /// Whether `set` needs a successor key at `now`: its interval ends
    /// within the publication delay, or the configured algorithm changed.
    /// A change of algorithm waits until the newest key signs, so that
    /// replicas configured differently for a while (a rolling change) add a
    /// key at most once per publication delay between them.
    fn rotation_due(&self, set: &KeySet, now: u64) -> bool {
        let latest = set.latest();
        now >= self.next_rotation_ms(set)
            || (latest.jwk().alg != self.config.algorithm.as_str()
                && latest.record.signs_from_ms <= now)
    }

    /// Reads the ring again from the store, to take what other processes
    /// sharing it did: keys they added, noted or retired. Keys whose record
    /// did not change are kept as they are (not parsed again).
    pub async fn reload(&self) -> Result<(), KeyError> {
        let _guard = self.writer.lock().await;
        self.reload_locked().await
    }

    /// [`KeyRing::reload`], for a caller holding the writer lock.
    async fn reload_locked(&self) -> Result<(), KeyError> {
        let records = self.vault.load_keys().await?.records;
        let current = self.snapshot();
        let keys = records
            .into_iter()
            .map(|r| match current.by_kid.get(&r.kid) {
                Some(key) if key.record == r => Ok(key.clone()),
                _ => SigningKey::load(r).map(Arc::new),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.replace(keys)
    }

    /// Starts a rotation when one is due (or the configured algorithm
    /// changed) and removes keys that no longer verify anything. Cheap when
    /// there is nothing to do, so callers about to sign may call it freely.
    pub async fn maintain(&self) -> Result<(), KeyError> {
        if !self.needs_maintenance() {
            return Ok(());
        }
        let _guard = self.writer.lock().await;
        // Another process sharing the store may have done the work already.
        self.reload_locked().await?;
        if !self.needs_maintenance() {
            return Ok(());
        }
        let set = self.snapshot();
        let now = self.clock.now_ms();
        if self.rotation_due(&set, now) {
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
        // Each lost race reloads the ring, so the next try follows the key
        // that won it; only a store changing faster than that runs out.
        for _ in 0..ROTATE_TRIES {
            let set = self.snapshot();
            if let Some(key) = self.add_successor(&set, self.clock.now_ms()).await? {
                return Ok(key);
            }
        }
        Err(KeyError::Crypto(
            "rotation: other processes kept adding keys; try again",
        ))
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
        // The store keeps the longer window if another process noted one.
        self.vault.put_key(&updated.record).await?;
        self.store.durable().await?;
        let mut keys = keys_except(&set, |k| k.kid() == kid);
        keys.push(Arc::new(updated));
        self.replace(keys)
    }

    /// Adds a successor to the newest key of `set`, which signs after the
    /// publication delay. `None` when another process sharing the store
    /// added one first: the ring is then reloaded and holds that one.
    async fn add_successor(
        &self,
        set: &KeySet,
        now: u64,
    ) -> Result<Option<Arc<SigningKey>>, KeyError> {
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
        let after = KeySlot::After(Some(set.latest().kid()));
        if !self.vault.add_key(&record, after).await? {
            self.reload_locked().await?;
            return Ok(None);
        }
        self.store.durable().await?;
        let kid = record.kid.clone();
        let mut keys = keys_except(set, |_| false);
        keys.push(Arc::new(SigningKey::load(record)?));
        self.replace(keys)?;
        self.metrics.key_rotated();
        tracing::info!(kid = %kid, signs_from_ms = signs_from, "published a new signing key");
        Ok(Some(self.snapshot().by_kid[&kid].clone()))
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
        private_key: private_pkcs8,
        created_at_ms,
        signs_from_ms,
        max_token_lifetime_ms: config.access_lifetime_ms,
        max_jwt_exp_ms: 0,
        is_static,
    })
}
