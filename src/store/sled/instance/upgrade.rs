//! The index layouts of earlier versions, brought to the current one when
//! a data directory written by them is opened.

use std::path::Path;

use super::trees::{SessionTrees, user_key};
use super::{backend, flush_durably};
use crate::store::sled::record;
use crate::store::{Ends, StoreError};

/// The expiry index of earlier versions, dropped on open.
pub(super) const OLD_EXPIRY_TREE: &str = "sessions_by_expiry";
/// The user indexes of earlier versions: keyed by length-prefixed user,
/// length-prefixed tenant and handle, then by a hash of the user and the
/// handle. Replaced on open.
pub(super) const OLD_USER_TREES: [&str; 2] = ["sessions_by_user", "sessions_by_user_hash"];

/// Brings the indexes of a data directory written by an earlier version to
/// the current layout: the expiry index is dropped, and the user index is
/// built again from the session records, after which the old user indexes
/// are dropped. A build cut short by a crash is made again at the next
/// open, as the old indexes go only after it.
pub(super) fn upgrade_indexes(
    db: &sled::Db,
    dir: &Path,
    sessions: &SessionTrees,
) -> Result<(), StoreError> {
    let names = db.tree_names();
    let has = |name: &str| names.iter().any(|n| n == name.as_bytes());
    let old_users: Vec<&str> = OLD_USER_TREES.into_iter().filter(|t| has(t)).collect();
    let mut rebuilt = None;
    if !old_users.is_empty() {
        let began = std::time::Instant::now();
        tracing::info!(
            "rebuilding the session index of a data directory written by an earlier \
             version (once; about 20 s and 520 MiB per million sessions)"
        );
        let mut filed = 0u64;
        for item in sessions.records.iter() {
            let (key, value) = item.map_err(backend)?;
            // A record that does not decode is left to the readers, which
            // report it; no index entry can point at it meaningfully.
            let Ok(handle) = std::str::from_utf8(&key) else {
                continue;
            };
            let Ok(head) = record::decode_head(handle, &value) else {
                tracing::warn!(session_handle = handle, "a session record does not decode");
                continue;
            };
            sessions.file(&user_key(&head), head.ends_at_ms())?;
            filed += 1;
        }
        flush_durably(db, dir)?;
        for name in &old_users {
            db.drop_tree(name).map_err(backend)?;
        }
        rebuilt = Some((filed, began));
    }
    if has(OLD_EXPIRY_TREE) {
        db.drop_tree(OLD_EXPIRY_TREE).map_err(backend)?;
    }
    if !old_users.is_empty() || has(OLD_EXPIRY_TREE) {
        flush_durably(db, dir)?;
    }
    if let Some((filed, began)) = rebuilt {
        tracing::info!(
            entries = filed,
            seconds = began.elapsed().as_secs_f64(),
            "the session index is rebuilt"
        );
    }
    Ok(())
}
