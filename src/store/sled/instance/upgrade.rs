//! The index layouts of earlier versions, brought to the current one when
//! a data directory written by them is opened.

use std::path::Path;

use sled::Tree;

use super::trees::user_key_of;
use super::{backend, flush_durably};
use crate::store::StoreError;

/// The expiry index of earlier versions, dropped on open.
pub(super) const OLD_EXPIRY_TREE: &str = "sessions_by_expiry";
/// The user index of earlier versions (length-prefixed user, length-prefixed
/// tenant, handle → filed expiry), moved to [`USER_TREE`](super::USER_TREE) on open.
pub(super) const OLD_USER_TREE: &str = "sessions_by_user";

/// Brings the indexes of a data directory written by an earlier version to
/// the current layout: the expiry index is dropped, and the user index is
/// copied into the hashed one and then dropped. A copy cut short by a crash
/// is made again at the next open, as the old index goes only after it.
pub(super) fn upgrade_indexes(db: &sled::Db, dir: &Path, by_user: &Tree) -> Result<(), StoreError> {
    let names = db.tree_names();
    let has = |name: &str| names.iter().any(|n| n == name.as_bytes());
    let mut rebuilt = None;
    if has(OLD_USER_TREE) {
        let old = db.open_tree(OLD_USER_TREE).map_err(backend)?;
        let began = std::time::Instant::now();
        tracing::info!(
            "rebuilding the session index of a data directory written by an earlier \
             version (once; about 20 s and 800 MiB per million sessions)"
        );
        let mut copied = 0u64;
        for item in old.iter() {
            let (key, filed) = item.map_err(backend)?;
            // A key that does not parse names no session anyone can find.
            if let Some((user_id, handle)) = split_old_user_key(&key) {
                by_user
                    .insert(user_key_of(user_id, handle), filed)
                    .map_err(backend)?;
                copied += 1;
            }
        }
        flush_durably(db, dir)?;
        drop(old);
        db.drop_tree(OLD_USER_TREE).map_err(backend)?;
        rebuilt = Some((copied, began));
    }
    if has(OLD_EXPIRY_TREE) {
        db.drop_tree(OLD_EXPIRY_TREE).map_err(backend)?;
    }
    if has(OLD_USER_TREE) || has(OLD_EXPIRY_TREE) {
        flush_durably(db, dir)?;
    }
    if let Some((copied, began)) = rebuilt {
        tracing::info!(
            entries = copied,
            seconds = began.elapsed().as_secs_f64(),
            "the session index is rebuilt"
        );
    }
    Ok(())
}

/// Splits a key of the earlier user index into user and handle.
fn split_old_user_key(key: &[u8]) -> Option<(&str, &str)> {
    let ulen = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let user = std::str::from_utf8(key.get(4..4 + ulen)?).ok()?;
    let rest = key.get(4 + ulen..)?;
    let tlen = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let handle = std::str::from_utf8(rest.get(4 + tlen..)?).ok()?;
    Some((user, handle))
}
