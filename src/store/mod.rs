//! Storage of sessions, signing keys and server secrets.
//!
//! The [`SessionStore`] trait names no backend type: the session rules in
//! `session/` and the key ring in `token/` depend only on it. Each backend
//! lives in its own module and is named after it ([`SledStore`]); every
//! backend runs the same conformance suite (`store::conformance`).
//!
//! Rules every backend keeps:
//! - a write is visible to reads as soon as the call returns, and durable on
//!   disk once a later [`SessionStore::durable`] future resolves; callers
//!   acknowledge nothing to clients before that;
//! - [`SessionStore::update_session`] is atomic per session: concurrent
//!   updates of one session are serialised, none is lost;
//! - the store never interprets tokens or payloads, and never logs records
//!   (they hold refresh token hashes and user data).

mod record;
mod sled;
mod wal;

#[cfg(test)]
mod conformance;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use self::record::Lineage;
pub use self::sled::SledStore;

/// Called with the duration of every flush.
pub type FlushObserver = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// A boxed future, for trait methods that must stay object safe.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One refresh generation: the token that is (or was) current.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// SHA-256 (hex) of the refresh token.
    pub refresh_hash: String,
    /// SHA-256 (hex) of the anti-CSRF token minted with it, when enabled.
    pub anti_csrf_hash: Option<String>,
}

/// A stored session.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Random, unguessable id (UUID form).
    pub handle: String,
    /// The user the session belongs to.
    pub user_id: String,
    /// The tenant of the session.
    pub tenant_id: String,
    /// The user part of the access token payload.
    pub access_payload: Map<String, Value>,
    /// Database-only session data.
    pub data: Map<String, Value>,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// Expiry of the refresh token, ms since the epoch; slides on rotation.
    pub expires_at_ms: u64,
    /// The current refresh generation.
    pub current: Generation,
    /// The generation `current` replaced, if any.
    pub previous: Option<Generation>,
    /// When `previous` was rotated out, ms since the epoch.
    pub rotated_at_ms: u64,
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads and hashes stay out of debug output.
        f.debug_struct("SessionRecord")
            .field("handle", &self.handle)
            .field("tenant_id", &self.tenant_id)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// A stored signing key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Key id: `d-<created ms>` for rotating keys, `s-<random>` for the static key.
    pub kid: String,
    /// JOSE algorithm name.
    pub alg: String,
    /// PKCS#8 DER private key, base64 in the stored form; empty when sealed.
    #[serde(with = "b64", default)]
    pub private_pkcs8: Vec<u8>,
    /// The private key encrypted with the key-encryption key, when one is
    /// configured (then `private_pkcs8` is empty in the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<SealedKey>,
    /// Creation time, ms.
    pub created_at_ms: u64,
    /// When the key starts signing, ms.
    pub signs_from_ms: u64,
    /// Longest lifetime of an access token this key may have signed, ms.
    pub max_token_lifetime_ms: u64,
    /// Latest `exp` (ms) of a long-lived JWT this key signed through CreateJwt.
    pub max_jwt_exp_ms: u64,
    /// The static key: never rotates.
    pub is_static: bool,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("signs_from_ms", &self.signs_from_ms)
            .finish_non_exhaustive()
    }
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// A user's data buckets (per tenant).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserData {
    /// Readable and writable by the user's browser.
    #[serde(default)]
    pub public: Map<String, Value>,
    /// Server only.
    #[serde(default)]
    pub private: Map<String, Value>,
    /// A display identifier of the user (such as an email).
    #[serde(default)]
    pub user_identifier: Option<String>,
}

impl fmt::Debug for UserData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserData([redacted])")
    }
}

/// One record of a store export (a backup); indexes are derived, not exported.
#[derive(Debug, Clone, PartialEq)]
pub enum Exported {
    /// A session.
    Session(SessionRecord),
    /// A user's buckets.
    UserData {
        /// Tenant.
        tenant_id: String,
        /// User.
        user_id: String,
        /// The buckets.
        data: UserData,
    },
    /// A signing key.
    Key(KeyRecord),
    /// A server secret.
    Secret {
        /// Its name.
        name: String,
        /// Its bytes.
        value: Vec<u8>,
    },
}

/// A private key encrypted with the key-encryption key (AES-256-GCM).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKey {
    /// The GCM nonce.
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    /// Ciphertext and tag.
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealedKey(..)")
    }
}

/// What an [`SessionStore::update_session`] closure decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Leave the session as it is.
    Keep,
    /// Replace the session with this record (same handle, user and tenant).
    Put(Box<SessionRecord>),
    /// Remove the session.
    Delete,
}

/// A session of a user, as listed by the per-user index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSession {
    /// The session handle.
    pub handle: String,
    /// The session's tenant.
    pub tenant_id: String,
    /// Refresh expiry, ms.
    pub expires_at_ms: u64,
}

/// Storage failures. None of them is caused by a caller's input.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data directory.
    #[error(
        "the data directory {0} is in use by another sessiond process: \
         stop that process, or give this one another --data-dir"
    )]
    Locked(String),
    /// The backend failed (disk, I/O).
    #[error("storage failure: {0}")]
    Backend(String),
    /// A stored record could not be decoded.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// The storage interface of sessiond.
pub trait SessionStore: Send + Sync + 'static {
    /// Inserts a new session and indexes it by user and by expiry.
    fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError>;

    /// Reads a session, expired or not.
    fn session(&self, handle: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// What checking an access token against the store needs of a session
    /// (expired or not), read without decoding its payload and data.
    fn session_lineage(&self, handle: &str) -> Result<Option<Lineage>, StoreError> {
        Ok(self.session(handle)?.as_ref().map(Lineage::of))
    }

    /// Atomically reads a session and applies the closure's decision.
    ///
    /// The closure may run several times (on conflicts) and must not have
    /// side effects beyond overwriting its own captured results. Returns the
    /// decision that was applied.
    fn update_session(
        &self,
        handle: &str,
        decide: &mut dyn FnMut(Option<&SessionRecord>) -> Change,
    ) -> Result<Change, StoreError>;

    /// Removes sessions atomically; returns those that existed (expired or not).
    fn delete_sessions(&self, handles: &[String]) -> Result<Vec<UserSession>, StoreError>;

    /// Lists a user's sessions in one tenant, or in all tenants with `None`.
    fn user_sessions(
        &self,
        user_id: &str,
        tenant_id: Option<&str>,
    ) -> Result<Vec<UserSession>, StoreError>;

    /// Removes up to `limit` sessions whose refresh expiry is at or before
    /// `now_ms`; returns how many were removed.
    fn sweep_expired(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError>;

    /// A user's buckets, if any were ever written.
    fn user_data(&self, tenant_id: &str, user_id: &str) -> Result<Option<UserData>, StoreError>;

    /// Atomically replaces a user's buckets with what `change` makes of the
    /// current ones (empty when there are none); `None` keeps them. The
    /// closure may run several times and must be pure. Returns what is stored.
    fn update_user_data(
        &self,
        tenant_id: &str,
        user_id: &str,
        change: &mut dyn FnMut(&UserData) -> Option<UserData>,
    ) -> Result<UserData, StoreError>;

    /// Hands every primary record to `visit`: sessions, buckets, keys,
    /// secrets. Records present for the whole export are all visited.
    fn export(
        &self,
        visit: &mut dyn FnMut(Exported) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// Writes one exported record back, rebuilding its indexes.
    fn import(&self, item: Exported) -> Result<(), StoreError>;

    /// How many sessions are stored, expired or not.
    fn count_sessions(&self) -> Result<u64, StoreError>;

    /// Bytes the store occupies on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;

    /// All stored signing keys.
    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// Inserts or replaces a signing key.
    fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError>;

    /// Removes a signing key.
    fn delete_key(&self, kid: &str) -> Result<(), StoreError>;

    /// Returns the server secret called `name`, creating it with `make` the
    /// first time (atomically: concurrent first calls agree on one value).
    fn secret(&self, name: &str, make: &mut dyn FnMut() -> Vec<u8>) -> Result<Vec<u8>, StoreError>;

    /// Replaces the secret called `name` with `new` if it is still
    /// `current`; false (and nothing written) when it is not.
    fn replace_secret(&self, name: &str, current: &[u8], new: &[u8]) -> Result<bool, StoreError>;

    /// Resolves once every write that returned before this call is durable.
    /// Concurrent callers share one flush.
    fn durable(&self) -> BoxFuture<Result<(), StoreError>>;
}

/// Runs a store call that touches many records (a revocation of hundreds of
/// sessions, a sweep batch) without stalling the async worker's other
/// tasks: on the multi-threaded runtime the worker hands its tasks over
/// first; elsewhere (single-threaded test runtimes) it simply runs.
///
/// Single-record calls do not use it: a write only touches memory (the disk
/// work is the log's sync, awaited through [`SessionStore::durable`]), and
/// handing the worker over costs more CPU than such a call (measured: about
/// 70 µs of server CPU per durable write).
pub fn blocking<R>(call: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(call),
        _ => call(),
    }
}
