//! The session trees of one [`SledInstance`](super::SledInstance): the
//! records and their user index, and the keys both are filed under. The
//! caller holds the session's lock stripe and writes the log; these
//! functions only order the writes of the trees (see the notes of
//! `store::sled::instance`).

use std::sync::atomic::{AtomicI64, Ordering};

use sled::Tree;

use super::backend;
use crate::store::Lineage;
use crate::store::sled::record;
use crate::store::{Change, Ends, ListedSession, SessionRecord, StoreError};

pub(super) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![record::V1];
    // Serialising plain data structs with string keys cannot fail.
    serde_json::to_writer(&mut out, value).expect("records serialise");
    out
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&record::V1, rest)) => serde_json::from_slice(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown record version {v}")),
        None => Err("empty record".to_owned()),
    }
}

pub(super) fn push_lp(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn hash8(text: &str) -> [u8; 8] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref()[..8]
        .try_into()
        .expect("a SHA-256 has 8 bytes")
}

/// Where a user's sessions are in the user index.
pub(super) fn user_prefix(user_id: &str) -> [u8; 8] {
    hash8(user_id)
}

/// Where a user's sessions in one tenant are in the user index.
pub(super) fn user_tenant_prefix(user_id: &str, tenant_id: &str) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&hash8(user_id));
    k[8..].copy_from_slice(&hash8(tenant_id));
    k
}

/// Bytes of a user index key before the handle.
const BEFORE_HANDLE: usize = 24;

/// A session's user index key: its user's and tenant's hashes, its
/// creation time inverted (so that a scan meets the newest first), then
/// its handle. None of these ever changes for a session.
pub(super) fn user_key(r: &SessionRecord) -> Vec<u8> {
    user_key_of(&r.user_id, &r.tenant_id, r.created_at_ms, &r.handle)
}

/// The user index key of the session `handle` of `user_id` in `tenant_id`,
/// created at `created_at_ms`.
pub(super) fn user_key_of(
    user_id: &str,
    tenant_id: &str,
    created_at_ms: u64,
    handle: &str,
) -> Vec<u8> {
    let mut k = Vec::with_capacity(BEFORE_HANDLE + handle.len());
    k.extend_from_slice(&user_tenant_prefix(user_id, tenant_id));
    k.extend_from_slice(&(!created_at_ms).to_be_bytes());
    k.extend_from_slice(handle.as_bytes());
    k
}

/// The handle in a user index key.
pub(super) fn handle_of_user_key(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.get(BEFORE_HANDLE..)?).ok()
}

pub(super) fn user_data_key(tenant_id: &str, user_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + tenant_id.len() + user_id.len());
    push_lp(&mut k, tenant_id);
    push_lp(&mut k, user_id);
    k
}

/// Splits a `user_data` key into tenant and user.
pub(super) fn split_user_data_key(key: &[u8]) -> Option<(String, String)> {
    let tlen = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let tenant = std::str::from_utf8(key.get(4..4 + tlen)?).ok()?;
    let rest = key.get(4 + tlen..)?;
    let ulen = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let user = std::str::from_utf8(rest.get(4..4 + ulen)?).ok()?;
    Some((tenant.to_owned(), user.to_owned()))
}

/// The session records and their user index.
pub(super) struct SessionTrees {
    pub(super) records: Tree,
    pub(super) by_user: Tree,
    /// How many records there are, kept as records come and go.
    pub(super) live: AtomicI64,
}

impl SessionTrees {
    pub(super) fn read(&self, handle: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.read_with(handle, |bytes| record::decode_session(handle, bytes))
    }

    /// Reads only what checking a token against the store needs.
    pub(super) fn lineage(&self, handle: &str) -> Result<Option<Lineage>, StoreError> {
        self.read_with(handle, record::decode_lineage)
    }

    /// Reads a session's record and decodes it with `decode`.
    pub(super) fn read_with<T>(
        &self,
        handle: &str,
        decode: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<Option<T>, StoreError> {
        self.records
            .get(handle)
            .map_err(backend)?
            .map(|bytes| decode(&bytes).map_err(StoreError::Corrupt))
            .transpose()
    }

    /// Stores `new` (with its encoding) in place of `old`, or removes `old`
    /// when `new` is `None`. The index entry a record needs is written
    /// before it, and an entry it no longer needs is removed after it.
    pub(super) fn write(
        &self,
        handle: &str,
        old: Option<&SessionRecord>,
        new: Option<(&SessionRecord, &[u8])>,
    ) -> Result<(), StoreError> {
        let Some((new, bytes)) = new else {
            return self.remove(handle, old.map(user_key).as_deref());
        };
        // Most edits (data, payload, claims, a refresh) leave the user
        // entry as it is: only the record is rewritten.
        let moved = !old.is_some_and(|old| still_filed(old, new));
        if moved {
            self.add_entry(new)?;
        }
        if self
            .records
            .insert(handle, bytes)
            .map_err(backend)?
            .is_none()
        {
            self.live.fetch_add(1, Ordering::Relaxed);
        }
        if let (true, Some(old)) = (moved, old) {
            self.remove_entry(old, new)?;
        }
        Ok(())
    }

    /// Stores a session under a fresh handle: no read first. Should the
    /// handle exist after all (an import over a live store), the record it
    /// replaced comes back from the insert and its user entry is fixed.
    pub(super) fn create(&self, new: &SessionRecord, bytes: &[u8]) -> Result<(), StoreError> {
        // An entry already there may index the record this insert replaces:
        // it keeps the earlier time, which is at or before both ends,
        // should a crash keep the entry and lose the record.
        let key = user_key(new);
        let ends = new.ends_at_ms();
        let filed = ends.to_be_bytes();
        let added = self
            .by_user
            .compare_and_swap(&key, None as Option<&[u8]>, Some(&filed[..]))
            .map_err(backend)?;
        if let Err(present) = added {
            let earlier = present.current.as_deref().and_then(filed_at);
            if earlier.is_none_or(|t| t > ends) {
                self.file(&key, ends)?;
            }
        }
        let replaced = self.records.insert(&new.handle, bytes).map_err(backend)?;
        if replaced.is_none() {
            self.live.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(old) = replaced {
            let old = record::decode_session(&new.handle, &old).map_err(StoreError::Corrupt)?;
            self.remove_entry(&old, new)?;
        }
        Ok(())
    }

    /// Removes a session's record, then its user entry `key` if given.
    pub(super) fn remove(&self, handle: &str, key: Option<&[u8]>) -> Result<(), StoreError> {
        if self.records.remove(handle).map_err(backend)?.is_some() {
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(key) = key {
            self.by_user.remove(key).map_err(backend)?;
        }
        Ok(())
    }

    /// Files `new` in the user index under its end.
    pub(super) fn add_entry(&self, new: &SessionRecord) -> Result<(), StoreError> {
        self.file(&user_key(new), new.ends_at_ms())
    }

    /// Sets the user entry `key`'s filed end.
    pub(super) fn file(&self, key: &[u8], ends_at_ms: u64) -> Result<(), StoreError> {
        self.by_user
            .insert(key, &ends_at_ms.to_be_bytes())
            .map_err(backend)?;
        Ok(())
    }

    /// Removes `old`'s user entry, unless `new` has the same one.
    pub(super) fn remove_entry(
        &self,
        old: &SessionRecord,
        new: &SessionRecord,
    ) -> Result<(), StoreError> {
        let key = user_key(old);
        if user_key(new) != key {
            self.by_user.remove(&key).map_err(backend)?;
        }
        Ok(())
    }

    /// Deals with the user entry `key` (of session `handle`), which has come
    /// due by `now_ms`: the session is removed if it ended, filed again
    /// under its end if it was filed early, and the entry dropped if it
    /// names no session of its user (a crash between an entry's write and
    /// its record's, or an import that moved the handle). The caller holds
    /// the session's lock stripe and logs a removal: returns the session
    /// when it was removed.
    pub(super) fn sweep_entry(
        &self,
        key: &[u8],
        handle: &str,
        now_ms: u64,
    ) -> Result<Option<ListedSession>, StoreError> {
        // The record's fixed part says all the sweep needs: no JSON is parsed.
        match self.read_with(handle, |bytes| record::decode_head(handle, bytes))? {
            Some(head) if user_key(&head) == key => {
                if head.ends_at_ms() <= now_ms {
                    self.remove(handle, Some(key))?;
                    return Ok(Some(ListedSession::of(&head)));
                }
                self.file(key, head.ends_at_ms())?;
            }
            _ => {
                self.by_user.remove(key).map_err(backend)?;
            }
        }
        Ok(None)
    }

    /// Reads a session and applies `decide`'s change to it. The caller holds
    /// the session's lock stripe. Returns the change and, for a put, the
    /// bytes stored.
    pub(super) fn apply(
        &self,
        handle: &str,
        decide: &mut dyn FnMut(Option<&SessionRecord>) -> Change,
    ) -> Result<(Change, Vec<u8>), StoreError> {
        let current = self.read(handle)?;
        let change = decide(current.as_ref());
        let mut stored = Vec::new();
        match (&change, &current) {
            (Change::Keep, _) | (Change::Delete, None) => {}
            (Change::Delete, Some(old)) => self.write(handle, Some(old), None)?,
            (Change::Put(new), old) => {
                if new.handle != handle {
                    return Err(StoreError::Corrupt(
                        "update changed the session handle".into(),
                    ));
                }
                stored = record::encode_session(new);
                self.write(handle, old.as_ref(), Some((new, &stored)))?;
            }
        }
        Ok((change, stored))
    }
}

/// True when the entry that indexes `old` still indexes `new`: the same
/// key, and an end no earlier (so the time `old` was filed under is still
/// at or before it).
pub(super) fn still_filed(old: &SessionRecord, new: &SessionRecord) -> bool {
    old.user_id == new.user_id
        && old.tenant_id == new.tenant_id
        && old.created_at_ms == new.created_at_ms
        && new.ends_at_ms() >= old.ends_at_ms()
}

/// The filed expiry a user index value holds.
pub(super) fn filed_at(value: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes)
}
