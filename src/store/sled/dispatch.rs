//! The store traits on [`SledStore`]: each call goes to the open instance
//! through `SledStore::read` or `SledStore::write`, and this file alone
//! decides how it runs on the async runtime. Calls that touch one record run
//! inline; scans over many records run through [`blocking`]. It must never
//! add `spawn_blocking` to a call, nor do any work of its own beyond routing.

use async_trait::async_trait;
use tokio::sync::watch;

use super::SledStore;
use crate::store::{
    Admission, BoxFuture, Change, Durability, Exported, KeyRecord, KeySlot, KeysAndSecrets,
    Lineage, ListedSession, SessionLimit, SessionQuery, SessionRecord, Sessions, SessionsPage,
    StoreError, UserData, UserDataStore, UserQuery, UserSession,
};

/// Runs a call that touches many records (a revocation of hundreds of
/// sessions, a sweep batch, an export) without stalling the async worker's
/// other tasks: on the multi-threaded runtime the worker hands its tasks
/// over first; elsewhere (single-threaded test runtimes, a blocking thread)
/// it simply runs.
///
/// Single-record calls do not use it: a sled write only touches memory (the
/// disk work is the log's sync, awaited through [`Durability::durable`]),
/// and handing the worker over costs more CPU than such a call (measured:
/// about 70 µs of server CPU per durable write). Never `spawn_blocking`
/// here: that costs the same hand-over on every call.
fn blocking<R>(call: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(call),
        _ => call(),
    }
}

#[async_trait]
impl Sessions for SledStore {
    async fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.write("create_session", |s| s.create_session(record))
    }

    async fn session(&self, handle: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.read("session", |s| s.session(handle))
    }

    async fn session_lineage(&self, handle: &str) -> Result<Option<Lineage>, StoreError> {
        self.read("session_lineage", |s| s.session_lineage(handle))
    }

    async fn update_session(
        &self,
        handle: &str,
        decide: &mut (dyn for<'r> FnMut(Option<&'r SessionRecord>) -> Change + Send),
    ) -> Result<Change, StoreError> {
        self.write("update_session", |s| s.update_session(handle, decide))
    }

    async fn delete_sessions(&self, handles: &[String]) -> Result<Vec<UserSession>, StoreError> {
        blocking(|| self.write("delete_sessions", |s| s.delete_sessions(handles)))
    }

    async fn user_sessions(
        &self,
        user_id: &str,
        tenant_id: Option<&str>,
    ) -> Result<Vec<UserSession>, StoreError> {
        self.read("user_sessions", |s| s.user_sessions(user_id, tenant_id))
    }

    async fn list_sessions(&self, query: &SessionQuery<'_>) -> Result<SessionsPage, StoreError> {
        blocking(|| self.read("list_sessions", |s| s.list_sessions(query)))
    }

    async fn user_sessions_page(&self, query: &UserQuery<'_>) -> Result<SessionsPage, StoreError> {
        blocking(|| self.read("user_sessions_page", |s| s.user_sessions_page(query)))
    }

    async fn create_session_within(
        &self,
        record: &SessionRecord,
        limit: &SessionLimit,
    ) -> Result<Admission, StoreError> {
        blocking(|| {
            self.write("create_session_within", |s| {
                s.create_session_within(record, limit)
            })
        })
    }

    async fn sweep_expired(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<ListedSession>, StoreError> {
        blocking(|| self.write("sweep_expired", |s| s.sweep_expired(now_ms, limit)))
    }

    async fn count_sessions(&self) -> Result<u64, StoreError> {
        self.read("count_sessions", |s| s.count_sessions())
    }
}

#[async_trait]
impl UserDataStore for SledStore {
    async fn user_data(
        &self,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Option<UserData>, StoreError> {
        self.read("user_data", |s| s.user_data(tenant_id, user_id))
    }

    async fn update_user_data(
        &self,
        tenant_id: &str,
        user_id: &str,
        change: &mut (dyn for<'r> FnMut(&'r UserData) -> Option<UserData> + Send),
    ) -> Result<UserData, StoreError> {
        self.write("update_user_data", |s| {
            s.update_user_data(tenant_id, user_id, change)
        })
    }
}

#[async_trait]
impl KeysAndSecrets for SledStore {
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.read("keys", |s| s.keys())
    }

    async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.write("put_key", |s| s.put_key(key))
    }

    async fn add_key(&self, key: &KeyRecord, slot: KeySlot<'_>) -> Result<bool, StoreError> {
        self.write("add_key", |s| s.add_key(key, slot))
    }

    async fn delete_key(&self, kid: &str) -> Result<(), StoreError> {
        self.write("delete_key", |s| s.delete_key(kid))
    }

    async fn secret(
        &self,
        name: &str,
        make: &mut (dyn FnMut() -> Vec<u8> + Send),
    ) -> Result<Vec<u8>, StoreError> {
        self.write("secret", |s| s.secret(name, make))
    }

    async fn replace_secret(
        &self,
        name: &str,
        current: &[u8],
        new: &[u8],
    ) -> Result<bool, StoreError> {
        self.write("replace_secret", |s| s.replace_secret(name, current, new))
    }
}

#[async_trait]
impl Durability for SledStore {
    fn durable(&self) -> BoxFuture<Result<(), StoreError>> {
        let waited = self.instance().map(|s| s.durable());
        let health = self.health.clone();
        Box::pin(async move { health.watch(waited?.await.map_err(|e| e.during("durable"))) })
    }

    async fn writable(&self) -> Option<watch::Receiver<bool>> {
        Some(self.health.writable.subscribe())
    }

    async fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.read("size_on_disk", |s| s.size_on_disk())
    }

    async fn export(
        &self,
        visit: &mut (dyn FnMut(Exported) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError> {
        blocking(|| self.read("export", |s| s.export(visit)))
    }

    async fn import(&self, item: Exported) -> Result<(), StoreError> {
        self.write("import", |s| s.import(item))
    }

    async fn store_id(&self) -> Option<String> {
        Some(self.id.clone())
    }

    async fn log_position(&self) -> Option<u64> {
        self.instance().ok().map(|s| s.log_position())
    }

    async fn backup_taken(&self, position: u64) -> Result<(), StoreError> {
        self.write("backup_taken", |s| s.backup_taken(position))
    }
}
