//! [`SledStore`]: the embedded default backend, on sled 0.34.
//!
//! Trees: `sessions` (handle → record), `sessions_by_user`
//! (len-prefixed user, len-prefixed tenant, handle → expiry), `sessions_by_expiry`
//! (expiry, handle → empty), `keys` (kid → key record), `secrets`, and
//! `user_data` (len-prefixed tenant, len-prefixed user → buckets).
//! Multi-tree changes run in sled transactions. Durability comes from one
//! flusher task: callers of [`SessionStore::durable`] queue a waiter, and the
//! flusher answers every waiter queued before it started a flush with that
//! flush's result (group commit: concurrent writers share one fsync).

use std::path::Path;
use std::sync::{Arc, Weak};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};
use tokio::sync::{mpsc, oneshot};

use super::{
    BoxFuture, Change, Exported, FlushObserver, KeyRecord, SessionRecord, SessionStore, StoreError,
    UserData, UserSession,
};

/// Version byte in front of every encoded record.
const RECORD_V1: u8 = 1;

type Waiter = oneshot::Sender<Result<(), String>>;

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    sessions: Tree,
    by_user: Tree,
    by_expiry: Tree,
    keys: Tree,
    secrets: Tree,
    users: Tree,
    flush_requests: mpsc::UnboundedSender<Waiter>,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. Must run inside a Tokio runtime:
    /// it starts the flusher task.
    pub fn open(
        dir: &Path,
        cache_capacity_bytes: u64,
        on_flush: Option<FlushObserver>,
    ) -> Result<Arc<Self>, StoreError> {
        // A new data directory is readable by its owner only: it holds
        // signing keys and the refresh MAC secret.
        if !dir.exists() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity_bytes)
            .open()
            .map_err(|e| open_error(dir, e))?;
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let (flush_requests, waiters) = mpsc::unbounded_channel();
        let store = Arc::new(Self {
            sessions: tree("sessions")?,
            by_user: tree("sessions_by_user")?,
            by_expiry: tree("sessions_by_expiry")?,
            keys: tree("keys")?,
            secrets: tree("secrets")?,
            users: tree("user_data")?,
            flush_requests,
            db,
        });
        tokio::spawn(flusher(Arc::downgrade(&store), waiters, on_flush));
        Ok(store)
    }
}

/// The group-commit loop. It holds the store only while flushing, so that
/// dropping the last handle closes the database (and releases its lock).
async fn flusher(
    store: Weak<SledStore>,
    mut requests: mpsc::UnboundedReceiver<Waiter>,
    on_flush: Option<FlushObserver>,
) {
    while let Some(first) = requests.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = requests.try_recv() {
            waiters.push(w);
        }
        let started = std::time::Instant::now();
        let result = match store.upgrade() {
            Some(store) => match tokio::task::spawn_blocking(move || store.db.flush()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            None => Err("the store is closed".to_owned()),
        };
        if let Some(observe) = &on_flush {
            observe(started.elapsed());
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

fn open_error(dir: &Path, e: sled::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("could not acquire lock") {
        StoreError::Locked(dir.display().to_string())
    } else {
        StoreError::Backend(format!("cannot open {}: {text}", dir.display()))
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn tx_error(e: TransactionError<String>) -> StoreError {
    match e {
        TransactionError::Abort(msg) => StoreError::Corrupt(msg),
        TransactionError::Storage(e) => backend(e),
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_V1];
    // Serialising plain data structs with string keys cannot fail.
    serde_json::to_writer(&mut out, value).expect("records serialise");
    out
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&RECORD_V1, rest)) => serde_json::from_slice(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown record version {v}")),
        None => Err("empty record".to_owned()),
    }
}

fn push_lp(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn user_prefix(user_id: &str, tenant_id: Option<&str>) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + user_id.len() + tenant_id.map_or(0, str::len));
    push_lp(&mut k, user_id);
    if let Some(t) = tenant_id {
        push_lp(&mut k, t);
    }
    k
}

fn user_key(r: &SessionRecord) -> Vec<u8> {
    let mut k = user_prefix(&r.user_id, Some(&r.tenant_id));
    k.extend_from_slice(r.handle.as_bytes());
    k
}

fn expiry_key(expires_at_ms: u64, handle: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + handle.len());
    k.extend_from_slice(&expires_at_ms.to_be_bytes());
    k.extend_from_slice(handle.as_bytes());
    k
}

fn user_data_key(tenant_id: &str, user_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + tenant_id.len() + user_id.len());
    push_lp(&mut k, tenant_id);
    push_lp(&mut k, user_id);
    k
}

/// Splits a `user_data` key into tenant and user.
fn split_user_data_key(key: &[u8]) -> Option<(String, String)> {
    let tlen = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let tenant = std::str::from_utf8(key.get(4..4 + tlen)?).ok()?;
    let rest = key.get(4 + tlen..)?;
    let ulen = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let user = std::str::from_utf8(rest.get(4..4 + ulen)?).ok()?;
    Some((tenant.to_owned(), user.to_owned()))
}

/// Splits a `sessions_by_user` key after the user prefix into tenant and handle.
fn split_user_key(key: &[u8]) -> Option<(String, String)> {
    let ulen = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let rest = key.get(4 + ulen..)?;
    let tlen = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let tenant = std::str::from_utf8(rest.get(4..4 + tlen)?).ok()?;
    let handle = std::str::from_utf8(rest.get(4 + tlen..)?).ok()?;
    Some((tenant.to_owned(), handle.to_owned()))
}

type Abort = ConflictableTransactionError<String>;

fn index(u: &TransactionalTree, e: &TransactionalTree, r: &SessionRecord) -> Result<(), Abort> {
    u.insert(user_key(r), &r.expires_at_ms.to_be_bytes())?;
    e.insert(expiry_key(r.expires_at_ms, &r.handle), &[])?;
    Ok(())
}

fn unindex(u: &TransactionalTree, e: &TransactionalTree, r: &SessionRecord) -> Result<(), Abort> {
    u.remove(user_key(r))?;
    e.remove(expiry_key(r.expires_at_ms, &r.handle))?;
    Ok(())
}

/// True when two versions of a session have the same index entries.
fn indexed_alike(a: &SessionRecord, b: &SessionRecord) -> bool {
    a.user_id == b.user_id && a.tenant_id == b.tenant_id && a.expires_at_ms == b.expires_at_ms
}

fn read_record(s: &TransactionalTree, handle: &str) -> Result<Option<SessionRecord>, Abort> {
    match s.get(handle)? {
        Some(bytes) => decode(&bytes).map(Some).map_err(Abort::Abort),
        None => Ok(None),
    }
}

impl SessionStore for SledStore {
    fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let bytes = encode(record);
        (&self.sessions, &self.by_user, &self.by_expiry)
            .transaction(|(s, u, e)| {
                s.insert(record.handle.as_bytes(), bytes.as_slice())?;
                index(u, e, record)
            })
            .map_err(tx_error)
    }

    fn session(&self, handle: &str) -> Result<Option<SessionRecord>, StoreError> {
        match self.sessions.get(handle).map_err(backend)? {
            Some(bytes) => decode(&bytes).map(Some).map_err(StoreError::Corrupt),
            None => Ok(None),
        }
    }

    fn update_session(
        &self,
        handle: &str,
        decide: &mut dyn FnMut(Option<&SessionRecord>) -> Change,
    ) -> Result<Change, StoreError> {
        // sled may run the transaction closure several times; it takes an
        // `Fn`, so the caller's `FnMut` is borrowed through a cell.
        let decide = std::cell::RefCell::new(decide);
        (&self.sessions, &self.by_user, &self.by_expiry)
            .transaction(|(s, u, e)| {
                let current = read_record(s, handle)?;
                let change = (decide.borrow_mut())(current.as_ref());
                match (&change, &current) {
                    (Change::Keep, _) | (Change::Delete, None) => {}
                    (Change::Delete, Some(old)) => {
                        s.remove(handle.as_bytes())?;
                        unindex(u, e, old)?;
                    }
                    (Change::Put(new), old) => {
                        if new.handle != handle {
                            return Err(Abort::Abort("update changed the session handle".into()));
                        }
                        s.insert(handle.as_bytes(), encode(new))?;
                        match old {
                            // Most edits (data, payload, claims) leave the
                            // index entries as they are: skip rewriting them.
                            Some(old) if indexed_alike(old, new) => {}
                            Some(old) => {
                                unindex(u, e, old)?;
                                index(u, e, new)?;
                            }
                            None => index(u, e, new)?,
                        }
                    }
                }
                Ok(change)
            })
            .map_err(tx_error)
    }

    fn delete_sessions(&self, handles: &[String]) -> Result<Vec<UserSession>, StoreError> {
        (&self.sessions, &self.by_user, &self.by_expiry)
            .transaction(|(s, u, e)| {
                let mut removed = Vec::new();
                for handle in handles {
                    if let Some(old) = read_record(s, handle)? {
                        s.remove(handle.as_bytes())?;
                        unindex(u, e, &old)?;
                        removed.push(UserSession {
                            handle: old.handle,
                            tenant_id: old.tenant_id,
                            expires_at_ms: old.expires_at_ms,
                        });
                    }
                }
                Ok(removed)
            })
            .map_err(tx_error)
    }

    fn user_sessions(
        &self,
        user_id: &str,
        tenant_id: Option<&str>,
    ) -> Result<Vec<UserSession>, StoreError> {
        let mut out = Vec::new();
        for item in self.by_user.scan_prefix(user_prefix(user_id, tenant_id)) {
            let (key, value) = item.map_err(backend)?;
            let (tenant_id, handle) =
                split_user_key(&key).ok_or_else(|| StoreError::Corrupt("user index key".into()))?;
            let expires_at_ms = u64::from_be_bytes(
                value
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("user index value".into()))?,
            );
            out.push(UserSession {
                handle,
                tenant_id,
                expires_at_ms,
            });
        }
        Ok(out)
    }

    fn sweep_expired(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let end = (now_ms.saturating_add(1)).to_be_bytes();
        let mut removed = 0;
        let due: Vec<sled::IVec> = self
            .by_expiry
            .range(..end.as_slice())
            .keys()
            .take(limit)
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        for key in due {
            let Some(handle) = key.get(8..).and_then(|h| std::str::from_utf8(h).ok()) else {
                self.by_expiry.remove(&key).map_err(backend)?;
                continue;
            };
            let change = self.update_session(handle, &mut |r| match r {
                Some(r) if r.expires_at_ms <= now_ms => Change::Delete,
                _ => Change::Keep,
            })?;
            if change == Change::Delete {
                removed += 1;
            } else {
                // A stale index entry (the session is gone or was extended).
                let (s, e) = (&self.sessions, &self.by_expiry);
                (s, e)
                    .transaction(|(s, e)| {
                        let live = read_record(s, handle)?.is_some_and(|r| {
                            expiry_key(r.expires_at_ms, &r.handle) == key.as_ref()
                        });
                        if !live {
                            e.remove(&key)?;
                        }
                        Ok(())
                    })
                    .map_err(tx_error)?;
            }
        }
        Ok(removed)
    }

    fn user_data(&self, tenant_id: &str, user_id: &str) -> Result<Option<UserData>, StoreError> {
        match self
            .users
            .get(user_data_key(tenant_id, user_id))
            .map_err(backend)?
        {
            Some(bytes) => decode(&bytes).map(Some).map_err(StoreError::Corrupt),
            None => Ok(None),
        }
    }

    fn update_user_data(
        &self,
        tenant_id: &str,
        user_id: &str,
        change: &mut dyn FnMut(&UserData) -> Option<UserData>,
    ) -> Result<UserData, StoreError> {
        let key = user_data_key(tenant_id, user_id);
        // Compare-and-swap until no concurrent writer got in between.
        loop {
            let old = self.users.get(&key).map_err(backend)?;
            let current = match &old {
                Some(bytes) => decode(bytes).map_err(StoreError::Corrupt)?,
                None => UserData::default(),
            };
            let Some(next) = change(&current) else {
                return Ok(current);
            };
            let swapped = self
                .users
                .compare_and_swap(&key, old.as_ref(), Some(encode(&next)))
                .map_err(backend)?;
            if swapped.is_ok() {
                return Ok(next);
            }
        }
    }

    fn export(
        &self,
        visit: &mut dyn FnMut(Exported) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.sessions.iter() {
            let (_, value) = item.map_err(backend)?;
            visit(Exported::Session(
                decode(&value).map_err(StoreError::Corrupt)?,
            ))?;
        }
        for item in self.users.iter() {
            let (key, value) = item.map_err(backend)?;
            let (tenant_id, user_id) = split_user_data_key(&key)
                .ok_or_else(|| StoreError::Corrupt("user data key".into()))?;
            visit(Exported::UserData {
                tenant_id,
                user_id,
                data: decode(&value).map_err(StoreError::Corrupt)?,
            })?;
        }
        for key in self.keys()? {
            visit(Exported::Key(key))?;
        }
        for item in self.secrets.iter() {
            let (name, value) = item.map_err(backend)?;
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| StoreError::Corrupt("secret name".into()))?;
            visit(Exported::Secret {
                name,
                value: value.to_vec(),
            })?;
        }
        Ok(())
    }

    fn import(&self, item: Exported) -> Result<(), StoreError> {
        match item {
            Exported::Session(record) => self.create_session(&record),
            Exported::UserData {
                tenant_id,
                user_id,
                data,
            } => {
                self.users
                    .insert(user_data_key(&tenant_id, &user_id), encode(&data))
                    .map_err(backend)?;
                Ok(())
            }
            Exported::Key(key) => self.put_key(&key),
            Exported::Secret { name, value } => {
                self.secrets
                    .insert(name.as_bytes(), value)
                    .map_err(backend)?;
                Ok(())
            }
        }
    }

    fn count_sessions(&self) -> Result<u64, StoreError> {
        Ok(self.sessions.len() as u64)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(backend)
    }

    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.keys
            .iter()
            .values()
            .map(|v| {
                let v = v.map_err(backend)?;
                decode(&v).map_err(StoreError::Corrupt)
            })
            .collect()
    }

    fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.keys
            .insert(key.kid.as_bytes(), encode(key))
            .map_err(backend)?;
        Ok(())
    }

    fn delete_key(&self, kid: &str) -> Result<(), StoreError> {
        self.keys.remove(kid.as_bytes()).map_err(backend)?;
        Ok(())
    }

    fn secret(&self, name: &str, make: &mut dyn FnMut() -> Vec<u8>) -> Result<Vec<u8>, StoreError> {
        if let Some(v) = self.secrets.get(name).map_err(backend)? {
            return Ok(v.to_vec());
        }
        let fresh = make();
        match self
            .secrets
            .compare_and_swap(name, None as Option<&[u8]>, Some(fresh.as_slice()))
            .map_err(backend)?
        {
            Ok(()) => Ok(fresh),
            Err(cas) => cas
                .current
                .map(|v| v.to_vec())
                .ok_or_else(|| StoreError::Corrupt(format!("secret {name} vanished"))),
        }
    }

    fn durable(&self) -> BoxFuture<Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.flush_requests.send(tx);
        Box::pin(async move {
            sent.map_err(|_| StoreError::Backend("the flusher has stopped".into()))?;
            rx.await
                .map_err(|_| StoreError::Backend("the flusher has stopped".into()))?
                .map_err(StoreError::Backend)
        })
    }
}
