//! [`MemoryStore`]: a [`Store`](super::Store) held in memory, for tests of the
//! layers above the store (sessions, keys, buckets) that need no disk.
//!
//! It keeps the rules of the trait: every call runs under one lock, so
//! [`Sessions::update_session`] and [`UserDataStore::update_user_data`]
//! are atomic and concurrent updates lose nothing; a write is visible as
//! soon as the call returns; and, since nothing is ever written to a disk,
//! [`Durability::durable`] resolves at once. Every call runs inline: none
//! waits for anything but the lock. It must never be used where
//! data has to survive the process: it keeps nothing across a restart.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    Admission, BoxFuture, Change, Durability, Ends, Exported, KeyRecord, KeySlot, KeysAndSecrets,
    ListedSession, SessionLimit, SessionQuery, SessionRecord, Sessions, SessionsPage, StoreError,
    UserData, UserDataStore, UserQuery, UserSession,
};

#[derive(Default)]
struct Records {
    sessions: BTreeMap<String, SessionRecord>,
    /// By (tenant, user).
    user_data: BTreeMap<(String, String), UserData>,
    keys: BTreeMap<String, KeyRecord>,
    secrets: BTreeMap<String, Vec<u8>>,
}

/// A store that lives in memory only; see the module documentation.
#[derive(Default)]
pub struct MemoryStore {
    records: Mutex<Records>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

fn listed(r: &SessionRecord) -> UserSession {
    UserSession {
        handle: r.handle.clone(),
        tenant_id: r.tenant_id.clone(),
        expires_at_ms: r.expires_at_ms,
    }
}

impl MemoryStore {
    /// An empty store, shared.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        // A panic in a caller's closure leaves the records as they were
        // before the call (nothing is written until the closure returns).
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Sessions for MemoryStore {
    async fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.lock()
            .sessions
            .insert(record.handle.clone(), record.clone());
        Ok(())
    }

    async fn session(&self, handle: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.lock().sessions.get(handle).cloned())
    }

    async fn update_session(
        &self,
        handle: &str,
        decide: &mut (dyn for<'r> FnMut(Option<&'r SessionRecord>) -> Change + Send),
    ) -> Result<Change, StoreError> {
        let mut records = self.lock();
        let change = decide(records.sessions.get(handle));
        match &change {
            Change::Keep => {}
            Change::Put(next) => {
                records.sessions.insert(handle.to_owned(), (**next).clone());
            }
            Change::Delete => {
                records.sessions.remove(handle);
            }
        }
        Ok(change)
    }

    async fn delete_sessions(&self, handles: &[String]) -> Result<Vec<UserSession>, StoreError> {
        let mut records = self.lock();
        Ok(handles
            .iter()
            .filter_map(|h| records.sessions.remove(h))
            .map(|r| listed(&r))
            .collect())
    }

    async fn user_sessions(
        &self,
        user_id: &str,
        tenant_id: Option<&str>,
    ) -> Result<Vec<UserSession>, StoreError> {
        Ok(self
            .lock()
            .sessions
            .values()
            .filter(|r| r.user_id == user_id && tenant_id.is_none_or(|t| t == r.tenant_id))
            .map(listed)
            .collect())
    }

    async fn sweep_expired(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<ListedSession>, StoreError> {
        let mut records = self.lock();
        let expired: Vec<ListedSession> = records
            .sessions
            .values()
            .filter(|r| r.ends_at_ms() <= now_ms)
            .take(limit)
            .map(ListedSession::of)
            .collect();
        for gone in &expired {
            records.sessions.remove(&gone.handle);
        }
        Ok(expired)
    }

    async fn user_sessions_page(&self, query: &UserQuery<'_>) -> Result<SessionsPage, StoreError> {
        let records = self.lock();
        let sessions = records.sessions.values().map(ListedSession::of);
        Ok(super::user_sessions_page_of(sessions, query))
    }

    async fn create_session_within(
        &self,
        record: &SessionRecord,
        limit: &SessionLimit,
    ) -> Result<Admission, StoreError> {
        let mut records = self.lock();
        let live: Vec<ListedSession> = records
            .sessions
            .values()
            .filter(|r| {
                r.user_id == record.user_id
                    && r.tenant_id == record.tenant_id
                    && r.ends_at_ms() > limit.live_at_ms
            })
            .map(ListedSession::of)
            .collect();
        let Some(evicted) = limit.make_room(live) else {
            return Ok(Admission::Refused);
        };
        for gone in &evicted {
            records.sessions.remove(&gone.handle);
        }
        records
            .sessions
            .insert(record.handle.clone(), record.clone());
        Ok(Admission::Created { evicted })
    }

    async fn count_sessions(&self) -> Result<u64, StoreError> {
        Ok(self.lock().sessions.len() as u64)
    }

    async fn list_sessions(&self, query: &SessionQuery<'_>) -> Result<SessionsPage, StoreError> {
        super::list_sessions_by_export(self, query).await
    }
}

#[async_trait]
impl UserDataStore for MemoryStore {
    async fn user_data(
        &self,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Option<UserData>, StoreError> {
        Ok(self
            .lock()
            .user_data
            .get(&(tenant_id.to_owned(), user_id.to_owned()))
            .cloned())
    }

    async fn update_user_data(
        &self,
        tenant_id: &str,
        user_id: &str,
        change: &mut (dyn for<'r> FnMut(&'r UserData) -> Option<UserData> + Send),
    ) -> Result<UserData, StoreError> {
        let mut records = self.lock();
        let id = (tenant_id.to_owned(), user_id.to_owned());
        let current = records.user_data.get(&id).cloned().unwrap_or_default();
        match change(&current) {
            Some(next) => {
                records.user_data.insert(id, next.clone());
                Ok(next)
            }
            None => Ok(current),
        }
    }
}

#[async_trait]
impl KeysAndSecrets for MemoryStore {
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(self.lock().keys.values().cloned().collect())
    }

    async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let mut records = self.lock();
        let key = match records.keys.get(&key.kid) {
            Some(stored) => key.widened_by(stored),
            None => key.clone(),
        };
        records.keys.insert(key.kid.clone(), key);
        Ok(())
    }

    async fn add_key(&self, key: &KeyRecord, slot: KeySlot<'_>) -> Result<bool, StoreError> {
        let mut records = self.lock();
        let keys: Vec<KeyRecord> = records.keys.values().cloned().collect();
        if !slot.is_free(&keys) || records.keys.contains_key(&key.kid) {
            return Ok(false);
        }
        records.keys.insert(key.kid.clone(), key.clone());
        Ok(true)
    }

    async fn delete_key(&self, kid: &str) -> Result<(), StoreError> {
        self.lock().keys.remove(kid);
        Ok(())
    }

    async fn secret(
        &self,
        name: &str,
        make: &mut (dyn FnMut() -> Vec<u8> + Send),
    ) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .lock()
            .secrets
            .entry(name.to_owned())
            .or_insert_with(make)
            .clone())
    }

    async fn replace_secret(
        &self,
        name: &str,
        current: &[u8],
        new: &[u8],
    ) -> Result<bool, StoreError> {
        let mut records = self.lock();
        match records.secrets.get_mut(name) {
            Some(value) if value.as_slice() == current => {
                *value = new.to_vec();
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl Durability for MemoryStore {
    fn durable(&self) -> BoxFuture<Result<(), StoreError>> {
        // Nothing is ever written to a disk: every write is as durable as
        // this store makes it once the call returned.
        Box::pin(async { Ok(()) })
    }

    async fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn export(
        &self,
        visit: &mut (dyn FnMut(Exported) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError> {
        // A snapshot, so that `visit` may call the store.
        let items: Vec<Exported> = {
            let records = self.lock();
            let sessions =
                (records.sessions.values().cloned()).map(|r| Exported::Session(Box::new(r)));
            let buckets =
                records
                    .user_data
                    .iter()
                    .map(|((tenant, user), data)| Exported::UserData {
                        tenant_id: tenant.clone(),
                        user_id: user.clone(),
                        data: data.clone(),
                    });
            let keys = records.keys.values().cloned().map(Exported::Key);
            let secrets = records
                .secrets
                .iter()
                .map(|(name, value)| Exported::Secret {
                    name: name.clone(),
                    value: value.clone(),
                });
            sessions.chain(buckets).chain(keys).chain(secrets).collect()
        };
        items.into_iter().try_for_each(visit)
    }

    async fn import(&self, item: Exported) -> Result<(), StoreError> {
        let mut records = self.lock();
        match item {
            Exported::Session(r) => {
                records.sessions.insert(r.handle.clone(), *r);
            }
            Exported::UserData {
                tenant_id,
                user_id,
                data,
            } => {
                records.user_data.insert((tenant_id, user_id), data);
            }
            Exported::Key(k) => {
                records.keys.insert(k.kid.clone(), k);
            }
            Exported::Secret { name, value } => {
                records.secrets.insert(name, value);
            }
        }
        Ok(())
    }
}
