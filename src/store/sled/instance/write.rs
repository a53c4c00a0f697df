//! The one write primitive of a [`SledInstance`]: [`SledInstance::logged`]
//! takes the lock stripes of the keys a write touches, runs the write, which
//! changes the trees and hands each after-image to the [`Log`] it is given,
//! and appends those to the write-ahead log before it lets the stripes go.
//! The log therefore orders the writes of one key as the trees saw them.
//!
//! Every write path goes through it; none may lock a stripe or append to
//! the log by itself, and the log is only reachable here. It never decides
//! what to write.

use std::sync::MutexGuard;

use super::{SledInstance, stripe_index};
use crate::store::StoreError;
use crate::store::sled::wal::{TreeId, Wal};

/// The log as a write sees it: after-images of keys of one tree, appended
/// while the write's stripes are held.
pub(super) struct Log<'a> {
    wal: &'a Wal,
    tree: TreeId,
}

impl Log<'_> {
    /// Logs that `key` now holds `value` (`None`: it was removed). Called
    /// once the trees hold the change.
    pub(super) fn put(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.wal.append(self.tree, key, value);
    }
}

impl SledInstance {
    /// Runs `write` over keys `keys` of `tree` under their lock stripes,
    /// appending what it logs before the stripes go. Several keys' stripes
    /// are taken in index order, so two writes of many keys cannot deadlock.
    pub(super) fn logged<T>(
        &self,
        tree: TreeId,
        keys: &[&[u8]],
        write: impl FnOnce(&mut Log<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Held until the write and its log appends are done: one stripe
        // for a single-key write (no allocation on the hot path).
        let _one: MutexGuard<'_, ()>;
        let _many: Vec<MutexGuard<'_, ()>>;
        if let [key] = keys {
            _one = self.lock_stripe(stripe_index(tree, key));
        } else {
            let mut stripes: Vec<usize> = keys.iter().map(|k| stripe_index(tree, k)).collect();
            stripes.sort_unstable();
            stripes.dedup();
            _many = stripes.into_iter().map(|i| self.lock_stripe(i)).collect();
        }
        write(&mut Log {
            wal: &self.wal,
            tree,
        })
    }

    fn lock_stripe(&self, index: usize) -> MutexGuard<'_, ()> {
        self.stripes[index]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}
