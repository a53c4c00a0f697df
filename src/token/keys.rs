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

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Header};
use serde::Serialize;

use super::kek::Kek;
use super::{KeyError, b64url};
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::store::{KeyRecord, SealedKey, SessionStore};
use crate::token::SigningAlgorithm;

/// How long a new rotating key is published before it signs.
pub const PUBLISH_DELAY_MS: u64 = 60_000;

/// A public JSON Web Key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Jwk {
    /// Key type: RSA, EC or OKP.
    pub kty: &'static str,
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: &'static str,
    /// Always "sig".
    #[serde(rename = "use")]
    pub use_: &'static str,
    /// RSA modulus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA exponent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Curve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<&'static str>,
    /// X coordinate or Ed25519 public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// Y coordinate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

/// A loaded signing key.
pub struct SigningKey {
    record: KeyRecord,
    algorithm: Algorithm,
    signer: Signer,
    /// The encoded JOSE headers: `[JWT, access token (version 5)]`.
    headers: Arc<[String; 2]>,
    decoding: DecodingKey,
    jwk: Jwk,
}

/// A parsed private key.
#[derive(Clone)]
enum Signer {
    Ed25519(Arc<Ed25519KeyPair>),
    P256(Arc<EcdsaKeyPair>),
    Rsa(Arc<aws_lc_rs::rsa::KeyPair>),
}

impl Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            Self::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Self::P256(pair) => pair
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Sign),
            Self::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut signature,
                )
                .map_err(|_| KeyError::Sign)?;
                Ok(signature)
            }
        }
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.record.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key id.
    pub fn kid(&self) -> &str {
        &self.record.kid
    }

    /// The static key (never rotates; signs only CreateJwt tokens).
    pub fn is_static(&self) -> bool {
        self.record.is_static
    }

    /// The algorithm the key is pinned to.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The public key for verification.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The public JWK.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// When the key starts (or started) signing, ms.
    pub fn signs_from_ms(&self) -> u64 {
        self.record.signs_from_ms
    }

    /// Signs `claims` as a compact JWS with this key. Access tokens carry the
    /// header field `version: "5"` that SuperTokens' SDKs check.
    pub fn sign<T: Serialize>(&self, claims: &T, access_token: bool) -> Result<String, KeyError> {
        let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Sign)?;
        let header = &self.headers[usize::from(access_token)];
        let mut token = String::with_capacity(header.len() + payload.len() * 4 / 3 + 360);
        token.push_str(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self.signer.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        Ok(token)
    }

    /// This key with a later `max_jwt_exp_ms`, reusing the parsed keys.
    fn with_max_jwt_exp(&self, max_jwt_exp_ms: u64) -> Self {
        Self {
            record: KeyRecord {
                max_jwt_exp_ms,
                ..self.record.clone()
            },
            algorithm: self.algorithm,
            signer: self.signer.clone(),
            headers: self.headers.clone(),
            decoding: self.decoding.clone(),
            jwk: self.jwk.clone(),
        }
    }

    fn load(record: KeyRecord) -> Result<Self, KeyError> {
        let pkcs8 = record.private_pkcs8.as_slice();
        let kid = record.kid.clone();
        let jwk = |kty, alg| Jwk {
            kty,
            kid: kid.clone(),
            alg,
            use_: "sig",
            n: None,
            e: None,
            crv: None,
            x: None,
            y: None,
        };
        let (algorithm, signer, decoding, jwk) = match record.alg.as_str() {
            "EdDSA" => {
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
                    .map_err(|_| KeyError::Crypto("is not Ed25519"))?;
                let public = pair.public_key().as_ref().to_vec();
                let jwk = Jwk {
                    crv: Some("Ed25519"),
                    x: Some(b64url(&public)),
                    ..jwk("OKP", "EdDSA")
                };
                (
                    Algorithm::EdDSA,
                    Signer::Ed25519(Arc::new(pair)),
                    DecodingKey::from_ed_der(&public),
                    jwk,
                )
            }
            "ES256" => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                    .map_err(|_| KeyError::Crypto("is not P-256"))?;
                let point = pair.public_key().as_ref().to_vec();
                if point.len() != 65 || point[0] != 4 {
                    return Err(KeyError::Crypto("has an unexpected public point"));
                }
                let jwk = Jwk {
                    crv: Some("P-256"),
                    x: Some(b64url(&point[1..33])),
                    y: Some(b64url(&point[33..])),
                    ..jwk("EC", "ES256")
                };
                (
                    Algorithm::ES256,
                    Signer::P256(Arc::new(pair)),
                    DecodingKey::from_ec_der(&point),
                    jwk,
                )
            }
            "RS256" => {
                let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(pkcs8)
                    .map_err(|_| KeyError::Crypto("is not RSA"))?;
                let components = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                let jwk = Jwk {
                    n: Some(b64url(&components.n)),
                    e: Some(b64url(&components.e)),
                    ..jwk("RSA", "RS256")
                };
                let decoding = DecodingKey::from_rsa_der(pair.public_key().as_ref());
                (Algorithm::RS256, Signer::Rsa(Arc::new(pair)), decoding, jwk)
            }
            _ => return Err(KeyError::Crypto("has an unsupported algorithm")),
        };
        let header = |access_token: bool| {
            let mut header = Header::new(algorithm);
            header.kid = Some(record.kid.clone());
            if access_token {
                header.extras.insert("version", "5");
            }
            // A header of strings always serialises.
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("headers serialise"))
        };
        Ok(Self {
            headers: Arc::new([header(false), header(true)]),
            record,
            algorithm,
            signer,
            decoding,
            jwk,
        })
    }
}

/// Generates a PKCS#8 private key for `alg`.
fn generate_pkcs8(alg: SigningAlgorithm) -> Result<Vec<u8>, KeyError> {
    let rng = SystemRandom::new();
    match alg {
        SigningAlgorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| KeyError::Crypto("generation failed")),
        SigningAlgorithm::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| KeyError::Crypto("generation failed"))
        }
        SigningAlgorithm::RS256 => aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048)
            .and_then(|k| k.as_der())
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| KeyError::Crypto("generation failed")),
    }
}

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

/// The store's key tree, through the key-encryption key when there is one.
struct Vault {
    store: Arc<dyn SessionStore>,
    kek: Option<Arc<Kek>>,
}

impl Vault {
    /// The stored keys, opened; and how many were stored in plaintext, and
    /// how many sealed under the previous KEK.
    fn load(&self) -> Result<(Vec<KeyRecord>, usize, usize), KeyError> {
        let mut plaintext = 0;
        let mut stale = 0;
        let records = self
            .store
            .keys()?
            .into_iter()
            .map(|mut r| {
                match (&r.sealed, &self.kek) {
                    (None, _) => plaintext += 1,
                    (Some(_), None) => {
                        return Err(KeyError::Sealed(super::kek::missing("the signing keys")));
                    }
                    (Some(sealed), Some(kek)) => {
                        let opened = kek
                            .open(r.kid.as_bytes(), &sealed.nonce, &sealed.ciphertext)
                            .ok_or_else(|| {
                                KeyError::Sealed(kek.refusal(&format!("signing key {}", r.kid)))
                            })?;
                        stale += usize::from(opened.stale);
                        r.private_pkcs8 = opened.plaintext;
                        r.sealed = None;
                    }
                }
                Ok(r)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((records, plaintext, stale))
    }

    /// Stores a key, sealed when there is a KEK.
    fn put(&self, record: &KeyRecord) -> Result<(), KeyError> {
        match &self.kek {
            None => self.store.put_key(record)?,
            Some(kek) => {
                let (nonce, ciphertext) = kek.seal(record.kid.as_bytes(), &record.private_pkcs8);
                let sealed = KeyRecord {
                    private_pkcs8: Vec::new(),
                    sealed: Some(SealedKey { nonce, ciphertext }),
                    ..record.clone()
                };
                self.store.put_key(&sealed)?;
            }
        }
        Ok(())
    }
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
    store: Arc<dyn SessionStore>,
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
        self.vault.kek.as_ref()
    }

    /// Loads the keys from the store, generating the first ones on a new store.
    pub async fn open(
        store: Arc<dyn SessionStore>,
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
        store: Arc<dyn SessionStore>,
        clock: SharedClock,
        config: KeyRingConfig,
        metrics: Arc<Metrics>,
        kek: Option<Arc<Kek>>,
    ) -> Result<Self, KeyError> {
        let vault = Vault {
            store: store.clone(),
            kek,
        };
        let now = clock.now_ms();
        let (mut records, plaintext, stale) = vault.load()?;
        let mut changed = false;
        if vault.kek.is_some() && plaintext + stale > 0 {
            for r in &records {
                vault.put(r)?;
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
        } else if vault.kek.as_ref().is_some_and(|k| k.has_previous()) {
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
            vault.put(records.last().expect("pushed"))?;
            changed = true;
        }
        if !records.iter().any(|r| !r.is_static) {
            records.push(new_record(format!("d-{now}"), config, now, now, false).await?);
            vault.put(records.last().expect("pushed"))?;
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
                vault.put(r)?;
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
            .map(|k| k.jwk.clone())
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
            || latest.jwk.alg != self.config.algorithm.as_str()
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
        if now >= self.next_rotation_ms(&set) || latest.jwk.alg != self.config.algorithm.as_str() {
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
                self.store.delete_key(k.kid())?;
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
        self.vault.put(&updated.record)?;
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
        self.vault.put(&record)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::MemoryStore;
    use std::time::Duration;

    const HOUR: u64 = 3_600_000;

    async fn ring(alg: SigningAlgorithm) -> (Arc<ManualClock>, KeyRing) {
        let store = MemoryStore::shared();
        let clock = ManualClock::starting_now();
        let config = KeyRingConfig {
            algorithm: alg,
            rotation_interval_ms: 24 * HOUR,
            access_lifetime_ms: HOUR,
        };
        let ring = KeyRing::open(store, clock.clone(), config, Metrics::shared())
            .await
            .unwrap();
        (clock, ring)
    }

    #[tokio::test]
    async fn every_algorithm_signs_and_verifies() {
        for alg in [
            SigningAlgorithm::EdDSA,
            SigningAlgorithm::ES256,
            SigningAlgorithm::RS256,
        ] {
            let (_clock, ring) = ring(alg).await;
            let key = ring.signer();
            let claims = serde_json::json!({"sub": "u"});
            let token = key.sign(&claims, true).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.kid.as_deref(), Some(key.kid()));
            assert_eq!(
                header.extras.get::<String>("version").unwrap().as_deref(),
                Some("5")
            );
            let mut v = jsonwebtoken::Validation::new(key.algorithm());
            v.required_spec_claims.clear();
            v.validate_exp = false;
            jsonwebtoken::decode::<serde_json::Value>(&token, key.decoding_key(), &v).unwrap();
            let jwks = ring.jwks();
            assert_eq!(jwks.len(), 2, "{alg:?}: a rotating and a static key");
            assert!(jwks.iter().all(|k| k.alg == alg.as_str()));
            // The published key verifies too (what an outside verifier does).
            let published: jsonwebtoken::jwk::Jwk =
                serde_json::from_value(serde_json::to_value(&jwks[0]).unwrap()).unwrap();
            let dk = DecodingKey::from_jwk(&published).unwrap();
            jsonwebtoken::decode::<serde_json::Value>(&token, &dk, &v).unwrap();
        }
    }

    #[tokio::test]
    async fn rotation_publishes_before_signing_and_retires_after_the_last_token() {
        let (clock, ring) = ring(SigningAlgorithm::EdDSA).await;
        let first = ring.signer();
        assert!(first.kid().starts_with("d-"));
        assert!(ring.static_signer().kid().starts_with("s-"));

        clock.advance(Duration::from_millis(24 * HOUR - PUBLISH_DELAY_MS));
        assert!(ring.needs_maintenance());
        ring.maintain().await.unwrap();
        let kids: Vec<_> = ring.jwks().into_iter().map(|k| k.kid).collect();
        assert_eq!(kids.len(), 3, "the successor is published: {kids:?}");
        assert_eq!(ring.signer().kid(), first.kid(), "but does not sign yet");

        clock.advance(Duration::from_millis(PUBLISH_DELAY_MS));
        let second = ring.signer();
        assert_ne!(second.kid(), first.kid());
        assert!(
            ring.verifier(first.kid()).is_some(),
            "old tokens still verify"
        );

        clock.advance(Duration::from_millis(HOUR));
        assert!(
            ring.verifier(first.kid()).is_none(),
            "retired after the access lifetime"
        );
        ring.maintain().await.unwrap();
        assert!(!ring.jwks().iter().any(|k| k.kid == first.kid()));
        assert!(ring.verifier(second.kid()).is_some());
    }

    #[tokio::test]
    async fn keys_left_under_either_kek_are_sealed_again_under_the_new_one() {
        let store: Arc<dyn SessionStore> = MemoryStore::shared();
        let clock = ManualClock::starting_now();
        let config = KeyRingConfig {
            algorithm: SigningAlgorithm::EdDSA,
            rotation_interval_ms: 24 * HOUR,
            access_lifetime_ms: HOUR,
        };
        let kek = |byte: u8| Arc::new(Kek::from_text(&format!("{byte:02x}").repeat(32)).unwrap());
        let open = |kek: Arc<Kek>| {
            KeyRing::open_sealed(
                store.clone(),
                clock.clone(),
                config,
                Metrics::shared(),
                Some(kek),
            )
        };
        let kids = |ring: &KeyRing| {
            let mut kids: Vec<String> = ring.jwks().iter().map(|k| k.kid.clone()).collect();
            kids.sort();
            kids
        };
        let before = kids(&open(kek(1)).await.unwrap());

        // A change cut short: one key already sealed under the new KEK, the
        // others still under the old one.
        let mut records = store.keys().unwrap();
        assert!(records.len() >= 2);
        let first = &mut records[0];
        let sealed = first.sealed.take().unwrap();
        let plain = kek(1)
            .open(first.kid.as_bytes(), &sealed.nonce, &sealed.ciphertext)
            .unwrap()
            .plaintext;
        let (nonce, ciphertext) = kek(2).seal(first.kid.as_bytes(), &plain);
        first.sealed = Some(SealedKey { nonce, ciphertext });
        store.put_key(first).unwrap();

        for alone in [1, 2] {
            let err = open(kek(alone)).await.unwrap_err().to_string();
            assert!(err.contains("does not open"), "KEK {alone} alone: {err}");
        }
        let rotating = Arc::new(
            Kek::from_text(&"02".repeat(32))
                .unwrap()
                .with_previous(Kek::from_text(&"01".repeat(32)).unwrap()),
        );
        assert_eq!(kids(&open(rotating).await.unwrap()), before);
        assert_eq!(
            kids(&open(kek(2)).await.unwrap()),
            before,
            "the new KEK alone now"
        );
        let err = open(kek(1)).await.unwrap_err().to_string();
        assert!(err.contains("does not open"), "{err}");
    }
}
