//! The store calls on one [`SledInstance`], synchronous. Each write goes
//! through the one write primitive (`write.rs`), which takes the lock
//! stripe of what it writes and appends the after-images it is handed to the
//! write-ahead log before it lets the stripe go; these calls only decide
//! what to write.

use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::trees::{
    decode, encode, handle_of_user_key, split_user_data_key, user_data_key, user_key, user_key_of,
    user_prefix, user_tenant_prefix,
};
use super::{SledInstance, backend, write_key};
use crate::store::Lineage;
use crate::store::sled::format::{StoredKey, StoredUserData};
use crate::store::sled::record;
use crate::store::sled::wal::TreeId;
use crate::store::{
    Admission, BoxFuture, Change, Ends, Exported, KeyRecord, KeySlot, ListedSession, SessionLimit,
    SessionQuery, SessionRecord, SessionsPage, StoreError, UserData, UserQuery, UserSession,
};

/// The lock stripe key of the key ring as a whole: every key write takes it.
const RING: &[u8] = b"";

impl SledInstance {
    pub(crate) fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let bytes = record::encode_session(record);
        let key = record.handle.as_bytes();
        self.logged(TreeId::Sessions, &[key], |log| {
            self.sessions.create(record, &bytes)?;
            log.put(key, Some(&bytes));
            Ok(())
        })
    }

    pub(crate) fn session(&self, handle: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.sessions.read(handle)
    }

    pub(crate) fn session_lineage(&self, handle: &str) -> Result<Option<Lineage>, StoreError> {
        self.sessions.lineage(handle)
    }

    pub(crate) fn update_session(
        &self,
        handle: &str,
        decide: &mut dyn FnMut(Option<&SessionRecord>) -> Change,
    ) -> Result<Change, StoreError> {
        let key = handle.as_bytes();
        self.logged(TreeId::Sessions, &[key], |log| {
            let (change, stored) = self.sessions.apply(handle, decide)?;
            match change {
                Change::Keep => {}
                Change::Put(_) => log.put(key, Some(&stored)),
                Change::Delete => log.put(key, None),
            }
            Ok(change)
        })
    }

    pub(crate) fn delete_sessions(
        &self,
        handles: &[String],
    ) -> Result<Vec<UserSession>, StoreError> {
        let keys: Vec<&[u8]> = handles.iter().map(|h| h.as_bytes()).collect();
        self.logged(TreeId::Sessions, &keys, |log| {
            let mut removed = Vec::new();
            for handle in handles {
                if let Some(old) = self.sessions.read(handle)? {
                    self.sessions.write(handle, Some(&old), None)?;
                    removed.push(UserSession {
                        handle: old.handle,
                        tenant_id: old.tenant_id,
                        expires_at_ms: old.expires_at_ms,
                    });
                }
            }
            for gone in &removed {
                log.put(gone.handle.as_bytes(), None);
            }
            Ok(removed)
        })
    }

    pub(crate) fn user_sessions(
        &self,
        user_id: &str,
        tenant_id: Option<&str>,
    ) -> Result<Vec<UserSession>, StoreError> {
        let mut out = Vec::new();
        self.scan_user(user_id, tenant_id, None, &mut |head| {
            out.push(UserSession {
                handle: head.handle.clone(),
                tenant_id: head.tenant_id.clone(),
                expires_at_ms: head.expires_at_ms,
            });
            true
        })?;
        Ok(out)
    }

    pub(crate) fn user_sessions_page(
        &self,
        query: &UserQuery<'_>,
    ) -> Result<SessionsPage, StoreError> {
        let mut page = SessionsPage::default();
        self.scan_user(query.user_id, query.tenant_id, query.after, &mut |head| {
            let listed = ListedSession::of(head);
            listed.ends_at_ms() <= query.live_at_ms || page.offer(listed, query.limit)
        })?;
        Ok(page)
    }

    /// Hands `visit` the heads (no payload or data) of the sessions of
    /// `user_id` (in `tenant_id`, or in every tenant) in index order, from
    /// just after `after`, until it returns false. The record decides what
    /// an entry means: an entry left by a crash in the middle of a write may
    /// name no session, or (when two ids share a hash, or after an import
    /// moved a handle) somebody else's, and is skipped.
    fn scan_user(
        &self,
        user_id: &str,
        tenant_id: Option<&str>,
        after: Option<&crate::store::UserCursor>,
        visit: &mut dyn FnMut(&SessionRecord) -> bool,
    ) -> Result<(), StoreError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let prefix: Vec<u8> = match tenant_id {
            Some(t) => user_tenant_prefix(user_id, t).to_vec(),
            None => user_prefix(user_id).to_vec(),
        };
        let start = match after {
            Some(c) => Excluded(user_key_of(
                user_id,
                &c.tenant_id,
                c.created_at_ms,
                &c.handle,
            )),
            None => Included(prefix.clone()),
        };
        for entry in self
            .sessions
            .by_user
            .range::<Vec<u8>, _>((start, Unbounded))
        {
            let (key, _) = entry.map_err(backend)?;
            if !key.starts_with(&prefix) {
                break;
            }
            let handle = handle_of_user_key(&key)
                .ok_or_else(|| StoreError::Corrupt("user index key".into()))?;
            let Some(head) = self
                .sessions
                .read_with(handle, |bytes| record::decode_head(handle, bytes))?
            else {
                continue;
            };
            if head.user_id != user_id || user_key(&head) != key.as_ref() {
                continue;
            }
            if !visit(&head) {
                break;
            }
        }
        Ok(())
    }

    pub(crate) fn create_session_within(
        &self,
        record: &SessionRecord,
        limit: &SessionLimit,
    ) -> Result<Admission, StoreError> {
        // Creates of one user and tenant under a limit take their turn
        // here, before any write stripe: count, make room, create.
        let _turn = self.limit_turn(&user_tenant_prefix(&record.user_id, &record.tenant_id));
        let mut live = Vec::new();
        self.scan_user(
            &record.user_id,
            Some(&record.tenant_id),
            None,
            &mut |head| {
                if head.tenant_id == record.tenant_id && head.ends_at_ms() > limit.live_at_ms {
                    live.push(ListedSession::of(head));
                }
                true
            },
        )?;
        let Some(evicted) = limit.make_room(live) else {
            return Ok(Admission::Refused);
        };
        if !evicted.is_empty() {
            let handles: Vec<String> = evicted.iter().map(|s| s.handle.clone()).collect();
            self.delete_sessions(&handles)?;
        }
        self.create_session(record)?;
        Ok(Admission::Created { evicted })
    }

    pub(crate) fn list_sessions(
        &self,
        query: &SessionQuery<'_>,
    ) -> Result<SessionsPage, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        // The records tree is keyed by handle: the page is one range scan
        // from just after the cursor, reading each record's fixed part only.
        let start = query.after.map_or(Unbounded, |h| Excluded(h.as_bytes()));
        let mut page = SessionsPage::default();
        for item in self.sessions.records.range::<&[u8], _>((start, Unbounded)) {
            let (key, value) = item.map_err(backend)?;
            let handle = std::str::from_utf8(&key)
                .map_err(|_| StoreError::Corrupt("session handle".into()))?;
            let head = record::decode_head(handle, &value).map_err(StoreError::Corrupt)?;
            let listed = ListedSession::of(&head);
            if query.matches(&listed) && !page.offer(listed, query.limit) {
                break;
            }
        }
        Ok(page)
    }

    pub(crate) fn sweep_expired(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<ListedSession>, StoreError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let mut removed = Vec::new();
        if limit == 0 {
            return Ok(removed);
        }
        // One pass over the user index, from where a call that met its limit
        // (or an error) stopped, round to where it started. Entries not yet
        // due cost a read of the index alone; sessions filed again do not
        // count against `limit`.
        let mut from = self.sweep_from.lock().unwrap_or_else(|e| e.into_inner());
        let start = from.take();
        let legs = match &start {
            None => vec![(Unbounded, Unbounded)],
            Some(k) => vec![
                (Included(k.clone()), Unbounded),
                (Unbounded, Excluded(k.clone())),
            ],
        };
        for range in legs {
            for entry in self.sessions.by_user.range::<sled::IVec, _>(range) {
                let (key, value) = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        *from = start;
                        return Err(backend(e));
                    }
                };
                match self.sweep_one(&key, &value, now_ms) {
                    Ok(None) => {}
                    Ok(Some(gone)) => {
                        removed.push(gone);
                        if removed.len() == limit {
                            *from = Some(key);
                            return Ok(removed);
                        }
                    }
                    Err(e) => {
                        *from = Some(key);
                        return Err(e);
                    }
                }
            }
        }
        Ok(removed)
    }

    pub(crate) fn user_data(
        &self,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Option<UserData>, StoreError> {
        match self
            .users
            .get(user_data_key(tenant_id, user_id))
            .map_err(backend)?
        {
            Some(bytes) => decode::<StoredUserData>(&bytes)
                .map(|d| Some(d.into()))
                .map_err(StoreError::Corrupt),
            None => Ok(None),
        }
    }

    pub(crate) fn update_user_data(
        &self,
        tenant_id: &str,
        user_id: &str,
        change: &mut dyn FnMut(&UserData) -> Option<UserData>,
    ) -> Result<UserData, StoreError> {
        let key = user_data_key(tenant_id, user_id);
        self.logged(TreeId::Users, &[&key], |log| {
            // Compare-and-swap until no concurrent writer got in between.
            loop {
                let old = self.users.get(&key).map_err(backend)?;
                let current = match &old {
                    Some(bytes) => decode::<StoredUserData>(bytes)
                        .map_err(StoreError::Corrupt)?
                        .into(),
                    None => UserData::default(),
                };
                let Some(next) = change(&current) else {
                    return Ok(current);
                };
                let bytes = encode(&StoredUserData::from(&next));
                let swapped = self
                    .users
                    .compare_and_swap(&key, old.as_ref(), Some(bytes.as_slice()))
                    .map_err(backend)?;
                if swapped.is_ok() {
                    log.put(&key, Some(&bytes));
                    return Ok(next);
                }
            }
        })
    }

    pub(crate) fn export(
        &self,
        visit: &mut dyn FnMut(Exported) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.sessions.records.iter() {
            let (key, value) = item.map_err(backend)?;
            let handle = std::str::from_utf8(&key)
                .map_err(|_| StoreError::Corrupt("session handle".into()))?;
            visit(Exported::Session(Box::new(
                record::decode_session(handle, &value).map_err(StoreError::Corrupt)?,
            )))?;
        }
        for item in self.users.iter() {
            let (key, value) = item.map_err(backend)?;
            let (tenant_id, user_id) = split_user_data_key(&key)
                .ok_or_else(|| StoreError::Corrupt("user data key".into()))?;
            visit(Exported::UserData {
                tenant_id,
                user_id,
                data: decode::<StoredUserData>(&value)
                    .map_err(StoreError::Corrupt)?
                    .into(),
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

    pub(crate) fn import(&self, item: Exported) -> Result<(), StoreError> {
        match item {
            Exported::Session(record) => self.create_session(&record),
            Exported::UserData {
                tenant_id,
                user_id,
                data,
            } => self.put_logged(
                &self.users,
                TreeId::Users,
                &user_data_key(&tenant_id, &user_id),
                Some(&encode(&StoredUserData::from(&data))),
            ),
            Exported::Key(key) => self.put_key(&key),
            Exported::Secret { name, value } => self.put_logged(
                &self.secrets,
                TreeId::Secrets,
                name.as_bytes(),
                Some(&value),
            ),
        }
    }

    pub(crate) fn count_sessions(&self) -> Result<u64, StoreError> {
        Ok(self.sessions.live.load(Ordering::Relaxed).max(0) as u64)
    }

    pub(crate) fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk().map_err(backend)?
            + self.wal.size_on_disk()
            + self.archive.size_on_disk())
    }

    pub(crate) fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.keys
            .iter()
            .values()
            .map(|v| {
                let v = v.map_err(backend)?;
                decode::<StoredKey>(&v)
                    .map(KeyRecord::from)
                    .map_err(StoreError::Corrupt)
            })
            .collect()
    }

    /// Writes `key` under the key ring's stripe (which every key write
    /// takes), so that reading the ring and the write that depends on it are
    /// one step.
    fn write_ring_key(
        &self,
        key: &KeyRecord,
        decide: impl FnOnce(&[KeyRecord]) -> Option<KeyRecord>,
    ) -> Result<bool, StoreError> {
        self.logged(TreeId::Keys, &[RING, key.kid.as_bytes()], |log| {
            let Some(key) = decide(&self.keys()?) else {
                return Ok(false);
            };
            let value = encode(&StoredKey::from(&key));
            write_key(&self.keys, key.kid.as_bytes(), Some(&value))?;
            log.put(key.kid.as_bytes(), Some(&value));
            Ok(true)
        })
    }

    pub(crate) fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.write_ring_key(key, |keys| {
            Some(match keys.iter().find(|k| k.kid == key.kid) {
                Some(stored) => key.widened_by(stored),
                None => key.clone(),
            })
        })
        .map(drop)
    }

    pub(crate) fn add_key(&self, key: &KeyRecord, slot: KeySlot<'_>) -> Result<bool, StoreError> {
        self.write_ring_key(key, |keys| {
            (slot.is_free(keys) && !keys.iter().any(|k| k.kid == key.kid)).then(|| key.clone())
        })
    }

    pub(crate) fn delete_key(&self, kid: &str) -> Result<(), StoreError> {
        self.logged(TreeId::Keys, &[RING, kid.as_bytes()], |log| {
            write_key(&self.keys, kid.as_bytes(), None)?;
            log.put(kid.as_bytes(), None);
            Ok(())
        })
    }

    pub(crate) fn secret(
        &self,
        name: &str,
        make: &mut dyn FnMut() -> Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        if let Some(v) = self.secrets.get(name).map_err(backend)? {
            return Ok(v.to_vec());
        }
        let fresh = make();
        self.logged(TreeId::Secrets, &[name.as_bytes()], |log| {
            match self
                .secrets
                .compare_and_swap(name, None as Option<&[u8]>, Some(fresh.as_slice()))
                .map_err(backend)?
            {
                Ok(()) => {
                    log.put(name.as_bytes(), Some(&fresh));
                    Ok(fresh)
                }
                Err(cas) => cas
                    .current
                    .map(|v| v.to_vec())
                    .ok_or_else(|| StoreError::Corrupt(format!("secret {name} vanished"))),
            }
        })
    }

    pub(crate) fn replace_secret(
        &self,
        name: &str,
        current: &[u8],
        new: &[u8],
    ) -> Result<bool, StoreError> {
        self.logged(TreeId::Secrets, &[name.as_bytes()], |log| {
            let swapped = self
                .secrets
                .compare_and_swap(name, Some(current), Some(new))
                .map_err(backend)?;
            if swapped.is_ok() {
                log.put(name.as_bytes(), Some(new));
            }
            Ok(swapped.is_ok())
        })
    }

    pub(crate) fn durable(&self) -> BoxFuture<Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.flush_requests.send(tx);
        Box::pin(async move {
            sent.map_err(|_| StoreError::Backend("the flusher has stopped".into()))?;
            rx.await
                .map_err(|_| StoreError::Backend("the flusher has stopped".into()))?
                .map_err(StoreError::Io)
        })
    }
}
