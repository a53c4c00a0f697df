//! Storage of sessions, signing keys and server secrets.
//!
//! The store traits name no backend type: the session rules in `session/`
//! and the key ring in `token/` depend only on them. They are async and
//! split by concern ([`Sessions`], [`UserDataStore`], [`KeysAndSecrets`],
//! [`Durability`]); callers hold all four as one `Arc<dyn Store>`. Each
//! backend lives in its own module and is named after it ([`SledStore`],
//! [`PostgresStore`]),
//! decides itself how its calls run (inline or off the async worker), and
//! runs the same conformance suite (`store::conformance`).
//!
//! Rules every backend keeps:
//! - a write is visible to reads as soon as the call returns, and durable on
//!   disk once a later [`Durability::durable`] future resolves; callers
//!   acknowledge nothing to clients before that;
//! - [`Sessions::update_session`] is atomic per session: concurrent
//!   updates of one session are serialised, none is lost;
//! - the store never interprets tokens or payloads, and never logs records
//!   (they hold refresh token hashes and user data).

mod listing;
mod memory;
mod postgres;
mod sled;
mod traits;

#[cfg(test)]
mod conformance;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};

pub use self::listing::{
    Admission, ListedSession, SessionLimit, SessionQuery, SessionsPage, UserCursor, UserQuery,
    UserSession,
};
pub use self::memory::MemoryStore;
pub use self::postgres::{DEFAULT_POOL_SIZE as DEFAULT_DATABASE_POOL_SIZE, PostgresStore};
pub use self::sled::SledStore;
use self::sled::wal;
pub use self::traits::{Durability, KeysAndSecrets, Sessions, Store, UserDataStore};
pub(crate) use self::traits::{list_sessions_by_export, user_sessions_page_of};

/// Copies the write-ahead log of the data directory `from_dir`, from log
/// position `position` on (its archive, then its live log), into the data
/// directory `into_dir`, whose next open replays it: how a restored backup
/// is brought up to the last write acknowledged in `from_dir`. Refuses when
/// the archive no longer reaches back to `position`. Returns how many log
/// segments were copied.
pub fn copy_log_since(
    from_dir: &std::path::Path,
    position: u64,
    into_dir: &std::path::Path,
) -> Result<usize, StoreError> {
    wal::copy_since(from_dir, position, &into_dir.join("wal"))
}

pub use self::sled::dir::read_store_id;

/// Called with the duration of every flush.
pub type FlushObserver = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// A boxed future, for trait methods that must stay object safe.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The SHA-256 of a token (a refresh or an anti-CSRF token), as the store
/// keeps it: 32 bytes. `Debug` does not show it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// From 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut raw = [0; 32];
        hex::decode_to_slice(text, &mut raw).ok()?;
        Some(Self(raw))
    }

    /// As 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// One refresh generation: the token that is (or was) current.
#[derive(Clone, PartialEq, Eq)]
pub struct Generation {
    /// SHA-256 of the refresh token.
    pub refresh_hash: TokenHash,
    /// SHA-256 of the anti-CSRF token minted with it, when enabled.
    pub anti_csrf_hash: Option<TokenHash>,
}

/// A stored session.
#[derive(Clone, PartialEq)]
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
    /// Last recorded activity (creation, a refresh, a database-checked
    /// use), ms since the epoch.
    pub last_active_ms: u64,
    /// This session's own timeouts, when shorter than the server's.
    pub timeouts: Timeouts,
    /// Where the session is used from.
    pub device: Device,
}

/// A session's own timeouts, each in ms, 0 when it has none of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Idle timeout: the session is over this long after its last activity.
    pub idle_ms: u64,
    /// Maximum lifetime from creation.
    pub max_lifetime_ms: u64,
}

/// Where a session is used from, as its client said; empty fields are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Device {
    /// IP address, in text form.
    pub ip_address: String,
    /// User-Agent.
    pub user_agent: String,
    /// A name users recognise.
    pub label: String,
}

/// What a session's end is reckoned from, in whichever form it was read
/// (a whole record, a lineage, a listing).
pub trait Ends {
    /// The refresh expiry, the last recorded activity and the session's
    /// own timeouts, ms.
    fn ending(&self) -> (u64, u64, Timeouts);

    /// When the session is over with an idle timeout of `idle_ms` (0:
    /// none): its refresh expiry, or `idle_ms` after its last activity,
    /// whichever comes first.
    fn ends_at_idle(&self, idle_ms: u64) -> u64 {
        let (expires_at_ms, last_active_ms, _) = self.ending();
        if idle_ms == 0 {
            expires_at_ms
        } else {
            expires_at_ms.min(last_active_ms.saturating_add(idle_ms))
        }
    }

    /// When the store counts the session as over: with the idle timeout
    /// it was last written with.
    fn ends_at_ms(&self) -> u64 {
        self.ends_at_idle(self.ending().2.idle_ms)
    }
}

impl Ends for SessionRecord {
    fn ending(&self) -> (u64, u64, Timeouts) {
        (self.expires_at_ms, self.last_active_ms, self.timeouts)
    }
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

/// What checking an access token against the store reads of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// The session's user.
    pub user_id: String,
    /// The session's tenant.
    pub tenant_id: String,
    /// Refresh expiry, ms.
    pub expires_at_ms: u64,
    /// Hash of the current refresh token.
    pub current_refresh_hash: TokenHash,
    /// Hash of the previous refresh token, if any.
    pub previous_refresh_hash: Option<TokenHash>,
    /// Creation, ms.
    pub created_at_ms: u64,
    /// Last recorded activity, ms.
    pub last_active_ms: u64,
    /// The session's own timeouts.
    pub timeouts: Timeouts,
}

impl Lineage {
    /// The lineage of a whole record.
    pub fn of(r: &SessionRecord) -> Self {
        Self {
            user_id: r.user_id.clone(),
            tenant_id: r.tenant_id.clone(),
            expires_at_ms: r.expires_at_ms,
            current_refresh_hash: r.current.refresh_hash,
            previous_refresh_hash: r.previous.as_ref().map(|p| p.refresh_hash),
            created_at_ms: r.created_at_ms,
            last_active_ms: r.last_active_ms,
            timeouts: r.timeouts,
        }
    }
}

impl Ends for Lineage {
    fn ending(&self) -> (u64, u64, Timeouts) {
        (self.expires_at_ms, self.last_active_ms, self.timeouts)
    }
}

impl From<SessionRecord> for Lineage {
    /// The lineage of a record no longer needed: its strings move.
    fn from(r: SessionRecord) -> Self {
        Self {
            user_id: r.user_id,
            tenant_id: r.tenant_id,
            expires_at_ms: r.expires_at_ms,
            current_refresh_hash: r.current.refresh_hash,
            previous_refresh_hash: r.previous.map(|p| p.refresh_hash),
            created_at_ms: r.created_at_ms,
            last_active_ms: r.last_active_ms,
            timeouts: r.timeouts,
        }
    }
}

/// A stored signing key.
#[derive(Clone, PartialEq)]
pub struct KeyRecord {
    /// Key id: `d-<created ms>` for rotating keys, `s-<random>` for the static key.
    pub kid: String,
    /// JOSE algorithm name.
    pub alg: String,
    /// The private key as the key ring hands it over: opaque bytes the store
    /// keeps as they are (PKCS#8, or sealed under the key-encryption key).
    pub private_key: Vec<u8>,
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

impl KeyRecord {
    /// This record, keeping the longer verification window of `stored`
    /// (the record of the same key already in the store): a key's
    /// `max_token_lifetime_ms` and `max_jwt_exp_ms` only ever grow, so two
    /// processes noting tokens on one key at once never shorten it.
    pub fn widened_by(&self, stored: &KeyRecord) -> KeyRecord {
        KeyRecord {
            max_token_lifetime_ms: self.max_token_lifetime_ms.max(stored.max_token_lifetime_ms),
            max_jwt_exp_ms: self.max_jwt_exp_ms.max(stored.max_jwt_exp_ms),
            ..self.clone()
        }
    }

    /// The order of rotating keys: by when they sign, then by creation, then
    /// by id, so that every process picks the same newest key.
    pub fn rotation_order(&self) -> (u64, u64, &str) {
        (self.signs_from_ms, self.created_at_ms, &self.kid)
    }
}

/// The newest rotating key of `keys` (in [`KeyRecord::rotation_order`]).
pub fn newest_rotating(keys: &[KeyRecord]) -> Option<&KeyRecord> {
    keys.iter()
        .filter(|k| !k.is_static)
        .max_by(|a, b| a.rotation_order().cmp(&b.rotation_order()))
}

/// When [`KeysAndSecrets::add_key`] adds a key: the place in the key ring
/// it is meant for, which must still be free. Processes that race for one
/// place add one key between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot<'a> {
    /// The static key: added when the store has none.
    Static,
    /// The successor of the rotating key named (`None`: the first rotating
    /// key): added while that key is still the newest one stored.
    After(Option<&'a str>),
}

impl KeySlot<'_> {
    /// Whether this place is still free among the stored `keys`.
    pub fn is_free(self, keys: &[KeyRecord]) -> bool {
        match self {
            Self::Static => !keys.iter().any(|k| k.is_static),
            Self::After(kid) => newest_rotating(keys).map(|k| k.kid.as_str()) == kid,
        }
    }
}

/// A user's data buckets (per tenant).
#[derive(Clone, Default, PartialEq)]
pub struct UserData {
    /// Readable and writable by the user's browser.
    pub public: Map<String, Value>,
    /// Server only.
    pub private: Map<String, Value>,
    /// A display identifier of the user (such as an email).
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
    Session(Box<SessionRecord>),
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

/// What a [`Sessions::update_session`] closure decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Leave the session as it is.
    Keep,
    /// Replace the session with this record (same handle, user and tenant).
    Put(Box<SessionRecord>),
    /// Remove the session.
    Delete,
}

/// What callers are told while the store's disk is full.
pub const DISK_FULL: &str =
    "the session store's disk is full: writes are refused until space is freed";

/// Storage failures. None of them is caused by a caller's input.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data directory.
    #[error(
        "the data directory {0} is in use by another sessiond process: \
         stop that process, or give this one another --data-dir"
    )]
    Locked(String),
    /// The backend failed, other than by an I/O error.
    #[error("storage failure: {0}")]
    Backend(String),
    /// Reading or writing the disk failed (a full disk, an I/O error).
    #[error("storage I/O failure: {0}")]
    Io(String),
    /// The store takes no writes until its disk can take them again; the
    /// message says why, for callers.
    #[error("{0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// An [`StoreError::Io`] from an I/O error, with what was being done.
    pub fn io(what: impl fmt::Display, e: &std::io::Error) -> Self {
        Self::Io(format!("{what}: {e}"))
    }

    /// The same failure, its message saying which store operation met it.
    pub fn during(self, op: &str) -> Self {
        match self {
            Self::Backend(m) => Self::Backend(format!("{op}: {m}")),
            Self::Io(m) => Self::Io(format!("{op}: {m}")),
            Self::Corrupt(m) => Self::Corrupt(format!("{op}: {m}")),
            e @ (Self::Locked(_) | Self::Unavailable(_)) => e,
        }
    }

    /// Whether the failure is a full disk (or a quota), as far as the
    /// message tells (an I/O error's text carries its OS error code).
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::Io(message) | Self::Backend(message) => {
                message.contains("No space left on device")
                    || message.contains("os error 28")
                    || message.contains("Disk quota exceeded")
                    || message.contains("os error 122")
            }
            Self::Locked(_) | Self::Unavailable(_) | Self::Corrupt(_) => false,
        }
    }
}
