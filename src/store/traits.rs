//! The store's interfaces, split by concern: [`Sessions`], [`UserDataStore`],
//! [`KeysAndSecrets`] and [`Durability`], and [`Store`], which is all four
//! and is what callers hold (`Arc<dyn Store>`).
//!
//! Every method is async, so that a backend that talks to a server can wait
//! on it; a backend whose calls only touch memory simply does not wait. How
//! a call runs (inline, or handing the worker thread over first) is the
//! backend's decision, never the caller's. These traits must never name a
//! backend type, nor carry a backend's stored format: they take and return
//! the plain records of `store`.

use async_trait::async_trait;

use super::{
    Admission, BoxFuture, Change, Ends, Exported, KeyRecord, KeySlot, Lineage, ListedSession,
    SessionLimit, SessionQuery, SessionRecord, SessionsPage, StoreError, UserData, UserQuery,
    UserSession,
};

/// Sessions: created, read, updated atomically, listed, removed and swept.
#[async_trait]
pub trait Sessions: Send + Sync {
    /// Inserts a new session and indexes it by user and by expiry.
    async fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError>;

    /// Reads a session, expired or not.
    async fn session(&self, handle: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// What checking an access token against the store needs of a session
    /// (expired or not), read without decoding its payload and data.
    async fn session_lineage(&self, handle: &str) -> Result<Option<Lineage>, StoreError> {
        Ok(self.session(handle).await?.as_ref().map(Lineage::of))
    }

    /// Atomically reads a session and applies the closure's decision.
    ///
    /// The closure may run several times (on conflicts) and must not have
    /// side effects beyond overwriting its own captured results. Returns the
    /// decision that was applied. Callers that want a result out of the
    /// closure use `update_session_with` (on `dyn Store`).
    async fn update_session(
        &self,
        handle: &str,
        decide: &mut (dyn for<'r> FnMut(Option<&'r SessionRecord>) -> Change + Send),
    ) -> Result<Change, StoreError>;

    /// Removes sessions atomically; returns those that existed (expired or not).
    async fn delete_sessions(&self, handles: &[String]) -> Result<Vec<UserSession>, StoreError>;

    /// Lists a user's sessions in one tenant, or in all tenants with `None`.
    async fn user_sessions(
        &self,
        user_id: &str,
        tenant_id: Option<&str>,
    ) -> Result<Vec<UserSession>, StoreError>;

    /// Lists the sessions `query` matches, across users, in handle order.
    async fn list_sessions(&self, query: &SessionQuery<'_>) -> Result<SessionsPage, StoreError>;

    /// One page of a user's sessions that `query` matches: tenant by
    /// tenant (in the backend's order of tenants), newest first within a
    /// tenant, then by handle. Reads no other tenant's sessions when
    /// `query.tenant_id` is given, and no other user's.
    async fn user_sessions_page(&self, query: &UserQuery<'_>) -> Result<SessionsPage, StoreError>;

    /// Creates a session unless its user already holds `limit.max` live
    /// sessions in its tenant; then either the least recently active of
    /// them are removed first ([`SessionLimit::make_room`]) or nothing is
    /// written. Checked and written in one step against every concurrent
    /// create of the same user and tenant, from any process sharing the
    /// store.
    async fn create_session_within(
        &self,
        record: &SessionRecord,
        limit: &SessionLimit,
    ) -> Result<Admission, StoreError>;

    /// Removes up to `limit` sessions that end ([`Ends::ends_at_ms`])
    /// at or before `now_ms`; returns those it removed.
    async fn sweep_expired(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<ListedSession>, StoreError>;

    /// How many sessions are stored, expired or not.
    async fn count_sessions(&self) -> Result<u64, StoreError>;
}

/// Users' data buckets, per tenant.
#[async_trait]
pub trait UserDataStore: Send + Sync {
    /// A user's buckets, if any were ever written.
    async fn user_data(
        &self,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Option<UserData>, StoreError>;

    /// Atomically replaces a user's buckets with what `change` makes of the
    /// current ones (empty when there are none); `None` keeps them. The
    /// closure may run several times and must be pure. Returns what is stored.
    async fn update_user_data(
        &self,
        tenant_id: &str,
        user_id: &str,
        change: &mut (dyn for<'r> FnMut(&'r UserData) -> Option<UserData> + Send),
    ) -> Result<UserData, StoreError>;
}

/// Signing keys and server secrets.
#[async_trait]
pub trait KeysAndSecrets: Send + Sync {
    /// All stored signing keys.
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// Inserts or replaces a signing key. A stored key's verification
    /// window is never shortened ([`KeyRecord::widened_by`]).
    async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError>;

    /// Inserts a new signing key if `slot` is still free
    /// ([`KeySlot::is_free`]), checked and written in one step against every
    /// other process sharing the store. Returns whether it was added.
    async fn add_key(&self, key: &KeyRecord, slot: KeySlot<'_>) -> Result<bool, StoreError>;

    /// Removes a signing key.
    async fn delete_key(&self, kid: &str) -> Result<(), StoreError>;

    /// Returns the server secret called `name`, creating it with `make` the
    /// first time (atomically: concurrent first calls agree on one value).
    async fn secret(
        &self,
        name: &str,
        make: &mut (dyn FnMut() -> Vec<u8> + Send),
    ) -> Result<Vec<u8>, StoreError>;

    /// Replaces the secret called `name` with `new` if it is still
    /// `current`; false (and nothing written) when it is not.
    async fn replace_secret(
        &self,
        name: &str,
        current: &[u8],
        new: &[u8],
    ) -> Result<bool, StoreError>;
}

/// When writes are durable, whether writes are taken, and whole-store
/// export and import (backups).
#[async_trait]
pub trait Durability: Send + Sync {
    /// Resolves once every write that returned before this call is durable.
    /// Concurrent callers share one flush. The returned future holds no
    /// borrow of the store.
    fn durable(&self) -> BoxFuture<Result<(), StoreError>>;

    /// Whether the store takes writes now, and its changes; `None` for a
    /// store that never stops taking them (or cannot tell).
    async fn writable(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }

    /// Bytes the store occupies on disk.
    async fn size_on_disk(&self) -> Result<u64, StoreError>;

    /// Hands every primary record to `visit`: sessions, buckets, keys,
    /// secrets. Records present for the whole export are all visited.
    async fn export(
        &self,
        visit: &mut (dyn FnMut(Exported) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError>;

    /// Writes one exported record back, rebuilding its indexes.
    async fn import(&self, item: Exported) -> Result<(), StoreError>;

    /// The store's own id, which its backups carry, so that the log of one
    /// store is never replayed into a backup of another.
    async fn store_id(&self) -> Option<String> {
        None
    }

    /// Where the store's write-ahead log stands: a backup taken now is
    /// brought up to date by replaying the log from here. `None` for a
    /// store without such a log.
    async fn log_position(&self) -> Option<u64> {
        None
    }

    /// A backup begun at log `position` was written whole: the log before
    /// the previous backup's position is no longer needed.
    async fn backup_taken(&self, position: u64) -> Result<(), StoreError> {
        let _ = position;
        Ok(())
    }
}

/// The whole storage interface of sessiond; every backend is one through
/// the blanket implementation.
pub trait Store: Sessions + UserDataStore + KeysAndSecrets + Durability + 'static {}

impl<T: Sessions + UserDataStore + KeysAndSecrets + Durability + 'static + ?Sized> Store for T {}

impl dyn Store {
    /// [`Sessions::update_session`] whose closure also returns a value: the
    /// one from the run whose decision was applied is returned with it.
    ///
    /// The closure may run several times, like `update_session`'s; only the
    /// last run's value is kept. The captured result lives here, and only
    /// here.
    pub async fn update_session_with<R: Send>(
        &self,
        handle: &str,
        mut decide: impl FnMut(Option<&SessionRecord>) -> (Change, R) + Send,
    ) -> Result<(Change, R), StoreError> {
        let mut result = None;
        let change = self
            .update_session(handle, &mut |current| {
                let (change, value) = decide(current);
                result = Some(value);
                change
            })
            .await?;
        Ok((change, ran(result)?))
    }

    /// [`UserDataStore::update_user_data`] whose closure also returns a
    /// value, returned with what is stored; as
    /// [`update_session_with`](Self::update_session_with).
    pub async fn update_user_data_with<R: Send>(
        &self,
        tenant_id: &str,
        user_id: &str,
        mut change: impl FnMut(&UserData) -> (Option<UserData>, R) + Send,
    ) -> Result<(UserData, R), StoreError> {
        let mut result = None;
        let stored = self
            .update_user_data(tenant_id, user_id, &mut |current| {
                let (next, value) = change(current);
                result = Some(value);
                next
            })
            .await?;
        Ok((stored, ran(result)?))
    }
}

/// The value of a closure the backend must have run once at least.
fn ran<R>(result: Option<R>) -> Result<R, StoreError> {
    result.ok_or_else(|| StoreError::Backend("the store applied an update it never decided".into()))
}

/// [`Sessions::user_sessions_page`] over every session of the user (any
/// tenant) in `sessions`, for a backend that holds them all at hand.
pub(crate) fn user_sessions_page_of(
    sessions: impl Iterator<Item = ListedSession>,
    query: &UserQuery<'_>,
) -> SessionsPage {
    let mut found: Vec<ListedSession> = sessions
        .filter(|s| {
            s.user_id == query.user_id
                && query.tenant_id.is_none_or(|t| t == s.tenant_id)
                && s.ends_at_ms() > query.live_at_ms
        })
        .collect();
    found.sort_by(|a, b| order_in_user(a).cmp(&order_in_user(b)));
    let mut page = SessionsPage::default();
    for session in found {
        if let Some(after) = query.after
            && order_in_user(&session)
                <= (
                    &after.tenant_id,
                    std::cmp::Reverse(after.created_at_ms),
                    &after.handle,
                )
        {
            continue;
        }
        if !page.offer(session, query.limit) {
            break;
        }
    }
    page
}

/// The order of one user's sessions where tenants sort by name.
fn order_in_user(s: &ListedSession) -> (&str, std::cmp::Reverse<u64>, &str) {
    (&s.tenant_id, std::cmp::Reverse(s.created_at_ms), &s.handle)
}

/// [`Sessions::list_sessions`] for a backend with no ordered scan of its
/// own: reads every record through [`Durability::export`].
pub(crate) async fn list_sessions_by_export(
    store: &(impl Durability + ?Sized),
    query: &SessionQuery<'_>,
) -> Result<SessionsPage, StoreError> {
    let mut found = Vec::new();
    store
        .export(&mut |item| {
            if let Exported::Session(r) = item {
                let listed = super::ListedSession::of(&r);
                if query.after.is_none_or(|a| listed.handle.as_str() > a) && query.matches(&listed)
                {
                    found.push(listed);
                }
            }
            Ok(())
        })
        .await?;
    found.sort_by(|a, b| a.handle.cmp(&b.handle));
    let mut page = SessionsPage::default();
    for session in found {
        if !page.offer(session, query.limit) {
            break;
        }
    }
    Ok(page)
}
