//! [`SledInstance`]: one opening of the embedded default backend, on sled
//! 0.34 (`store::sled` holds one at a time as the `SledStore`).
//!
//! Trees: `sessions` (handle → record), `sessions_by_user_tenant_time` (the
//! first 8 bytes of the SHA-256 of the user id, the same of the tenant id,
//! the creation time inverted, handle → filed end), `keys` (kid → key
//! record), `secrets`, and `user_data` (len-prefixed tenant, len-prefixed
//! user → buckets).
//!
//! The user index lists one user's sessions in one tenant as one key range,
//! newest first, so a page of them is one range scan that reads no other
//! tenant's. It is keyed by a hash of the user id rather than the id
//! itself so that its inserts land at random places: with ids that grow
//! (as database sequences do), each insert went just after the last one,
//! sled's half-split leaves were never filled again, and 100 000 sessions
//! took 1525 bytes each against 1009 with random ids. A user's
//! sessions are still one key range; the record of each entry says whose
//! session it is, so a collision of two users' hashes lists nothing wrong.
//!
//! A session's user entry holds a time at or before its end (its filed
//! end: the refresh expiry, or the idle timeout after the last activity,
//! whichever is first). The sweep reads the user index in key order, a
//! pass spread over its calls, and looks at the record of each entry that
//! has come due: an ended session is removed, a live one filed again under
//! its real end. A refresh, which only ever moves the end later, therefore
//! rewrites the record alone; only a write that moves it earlier rewrites
//! the entry at once. There is no expiry index: in sled its entries cost
//! about as much disk as the user index's, and every create paid for one
//! more B-tree insert. Data directories written before carry older user
//! indexes (`sessions_by_user`, `sessions_by_user_hash`) and perhaps a
//! `sessions_by_expiry` tree: the first open builds the current index from
//! the records and drops them.
//!
//! No sled transaction is used: sled 0.34 writes and syncs an I/O buffer for
//! every transaction, which capped durable writes at the disk's sync rate.
//! Instead each session's writers serialise on a lock stripe, and the trees
//! are written in an order that leaves every crash state safe: index entries
//! go in before the record they point to and come out after it, so a record
//! is never unindexed; at worst an index entry dangles, and readers skip it
//! (the sweep removes a dangling entry once its filed expiry comes). sled recovers a prefix of
//! its own log, and the write-ahead log restores every acknowledged write.
//!
//! Durability comes from the write-ahead log (`store::sled::wal`), not from sled's
//! own flush: each write is applied to the trees, then its after-image is
//! appended to the log while the write's lock stripe is still held (so the
//! log orders the writes of one key as the trees did). One flusher thread
//! answers [`Durability::durable`](crate::store::Durability::durable): it answers every waiter queued before
//! it started with the result of one log write and `fdatasync` (group
//! commit). A checkpoint thread flushes sled every second and deletes the
//! log segments that flush covered; on open, what is left is replayed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::Duration;

use sled::Tree;
use tokio::sync::oneshot;

use self::trees::{SessionTrees, filed_at, handle_of_user_key};
use self::upgrade::upgrade_indexes;
use super::dir as sled_dir;
use super::record;
use super::wal::{self, Entry, TreeId, Wal};
use crate::clock::{Clock, SystemClock};
use crate::store::{Change, FlushObserver, ListedSession, StoreError};

mod calls;
mod trees;
mod upgrade;
mod write;

/// How often sled is flushed and the log behind the flush dropped.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The user index.
const USER_TREE: &str = "sessions_by_user_tenant_time";

/// Key in `meta` of the log position the last whole backup began at.
const LAST_BACKUP: &str = "last_backup_log_position";

/// Key in `meta` of the session count saved by a clean close.
const SESSION_COUNT: &str = "session_count";

/// Lock stripes ordering the log entries of concurrent writers of one key.
const STRIPES: usize = 64;

type Waiter = oneshot::Sender<Result<(), String>>;

/// The sled-backed store.
pub(super) struct SledInstance {
    db: sled::Db,
    /// The data directory.
    dir: PathBuf,
    sessions: SessionTrees,
    /// `session_count`, present only between a clean close and the next open.
    meta: Tree,
    keys: Tree,
    secrets: Tree,
    users: Tree,
    wal: Wal,
    stripes: Box<[Mutex<()>]>,
    /// Serialise creates of one user and tenant under a session limit.
    limit_stripes: Box<[Mutex<()>]>,
    /// Log segments waiting for a successful sled flush before deletion.
    retired: Mutex<Vec<PathBuf>>,
    flush_requests: mpsc::Sender<Waiter>,
    /// Dropped with the store, which stops the checkpoint thread.
    _checkpoints: mpsc::Sender<()>,
    /// The user index key where the last sweep call stopped at its limit.
    sweep_from: Mutex<Option<sled::IVec>>,
    /// Dropped last, once the store is closed (see [`SledInstance::on_close`]).
    closed: Mutex<Option<mpsc::Sender<()>>>,
    /// Told of every I/O failure of the log's syncs and of checkpoints.
    on_failure: FailureHook,
    /// Where flushed log segments go.
    archive: wal::Archive,
    /// Set when this instance is given up after an I/O failure: closing it
    /// then flushes nothing, so that the next open starts from what reached
    /// the disk and the log, never from a refused write left in memory.
    abandoned: AtomicBool,
}

/// Called with an I/O failure found outside a caller's request.
pub(super) type FailureHook = Arc<dyn Fn(&StoreError) + Send + Sync>;

impl SledInstance {
    /// Opens the store in `dir` (which exists and which the caller has
    /// locked), replaying the write-ahead log a crash left behind, and
    /// starts the log's sync and checkpoint threads.
    pub(super) fn open(
        dir: &Path,
        cache_capacity_bytes: u64,
        on_flush: Option<FlushObserver>,
        on_failure: FailureHook,
        archive: wal::Archive,
    ) -> Result<Arc<Self>, StoreError> {
        let db = open_sled(dir, cache_capacity_bytes)?;
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let sessions = SessionTrees {
            records: tree("sessions")?,
            by_user: tree(USER_TREE)?,
            live: AtomicI64::new(0),
        };
        let (keys, secrets, users) = (tree("keys")?, tree("secrets")?, tree("user_data")?);
        let meta = tree("meta")?;
        // Before the log is replayed, so that its writes find the index in
        // the current layout.
        upgrade_indexes(&db, dir, &sessions)?;
        // The session count a clean close saved is good for this start only:
        // it is removed (durably) before anything can change the count.
        let saved_count = meta.remove(SESSION_COUNT).map_err(backend)?;
        if saved_count.is_some() {
            flush_durably(&db, dir)?;
        }
        let opened = Wal::open(&dir.join("wal"), &mut |entry: Entry| {
            let target = match entry.tree {
                TreeId::Sessions => {
                    let handle = std::str::from_utf8(&entry.key)
                        .map_err(|_| StoreError::Corrupt("logged session handle".into()))?;
                    let change = match entry.value {
                        Some(bytes) => Change::Put(Box::new(
                            record::decode_session(handle, &bytes).map_err(StoreError::Corrupt)?,
                        )),
                        None => Change::Delete,
                    };
                    sessions.apply(handle, &mut |_| change.clone())?;
                    return Ok(());
                }
                TreeId::Users => &users,
                TreeId::Keys => &keys,
                TreeId::Secrets => &secrets,
            };
            write_key(target, &entry.key, entry.value.as_deref())
        })?;
        let saved_count = saved_count
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes);
        let count = match saved_count {
            Some(n) if opened.entries == 0 => n,
            // After a crash: count them (a scan of every record).
            _ => sessions.records.len() as i64,
        };
        sessions.live.store(count, Ordering::Relaxed);
        if !opened.replayed.is_empty() {
            flush_durably(&db, dir)?;
            archive.retire(&opened.replayed)?;
        }
        let (flush_requests, waiters) = mpsc::channel();
        let (checkpoints, stop) = mpsc::channel();
        let store = Arc::new(Self {
            sessions,
            meta,
            keys,
            secrets,
            users,
            wal: opened.wal,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            limit_stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            retired: Mutex::new(Vec::new()),
            flush_requests,
            _checkpoints: checkpoints,
            sweep_from: Mutex::new(None),
            closed: Mutex::new(None),
            on_failure,
            archive,
            abandoned: AtomicBool::new(false),
            dir: dir.to_owned(),
            db,
        });
        let weak = Arc::downgrade(&store);
        spawn_thread("sessiond-wal", move || flusher(weak, waiters, on_flush))?;
        let weak = Arc::downgrade(&store);
        spawn_thread("sessiond-checkpoint", move || checkpointer(weak, stop))?;
        Ok(store)
    }

    /// Hands over a sender that is dropped when the store has closed: after
    /// its last handle went, its final flush and the saved session count.
    /// The last handle may be the checkpoint thread's, mid-flush, so a
    /// process should wait for this before it exits.
    pub(super) fn on_close(&self, closed: mpsc::Sender<()>) -> Option<mpsc::Sender<()>> {
        self.closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(closed)
    }

    /// Gives this instance up after an I/O failure (see `abandoned`).
    pub(super) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }

    /// The number of the log segment now taking writes.
    pub(super) fn log_position(&self) -> u64 {
        self.wal.position().0
    }

    /// Records a backup begun at `position` and deletes the archived
    /// segments that neither it nor the backup before it needs.
    pub(super) fn backup_taken(&self, position: u64) -> Result<(), StoreError> {
        let previous = self
            .meta
            .get(LAST_BACKUP)
            .map_err(backend)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes);
        self.meta
            .insert(LAST_BACKUP, &position.to_be_bytes())
            .map_err(backend)?;
        if let Some(previous) = previous {
            self.archive.prune_below(previous.min(position))?;
        }
        Ok(())
    }

    /// Writes and syncs what the log holds, outside the flusher.
    pub(super) fn sync_log(&self) -> Result<(), StoreError> {
        self.wal
            .sync()
            .map_err(|e| StoreError::io("write-ahead log", &e))
    }

    /// Writes (or with `None` removes) one key of a single-tree record, and
    /// logs it.
    fn put_logged(
        &self,
        tree: &Tree,
        id: TreeId,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        self.logged(id, &[key], |log| {
            write_key(tree, key, value)?;
            log.put(key, value);
            Ok(())
        })
    }

    /// The sweep's visit of one user index entry: nothing unless its filed
    /// expiry has come. Returns true when it removed an expired session.
    /// The turn of creates of one user and tenant (`key`) under a session
    /// limit. Taken before any write stripe, never while one is held.
    fn limit_turn(&self, key: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        self.limit_stripes[stripe_index(TreeId::Sessions, key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn sweep_one(
        &self,
        key: &[u8],
        filed: &[u8],
        now_ms: u64,
    ) -> Result<Option<ListedSession>, StoreError> {
        if filed_at(filed).is_some_and(|filed| filed > now_ms) {
            return Ok(None);
        }
        let Some(handle) = handle_of_user_key(key) else {
            self.sessions.by_user.remove(key).map_err(backend)?;
            return Ok(None);
        };
        let swept = self.logged(TreeId::Sessions, &[handle.as_bytes()], |log| {
            let removed = self.sessions.sweep_entry(key, handle, now_ms)?;
            if removed.is_some() {
                log.put(handle.as_bytes(), None);
            }
            Ok(removed)
        });
        match swept {
            Ok(removed) => Ok(removed),
            // One damaged record must not stop every later sweep at the
            // same place: it stays, and is reported.
            Err(StoreError::Corrupt(e)) => {
                tracing::warn!(
                    session_handle = handle,
                    error = %e,
                    "the sweeper skipped a session whose record does not decode"
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Flushes sled and deletes the log segments the flush covered. The
    /// log moves to a new segment once the current one is half full.
    fn checkpoint(&self) -> Result<(), StoreError> {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        if self.wal.wants_rotation() {
            retired.push(self.wal.rotate()?);
        }
        flush_durably(&self.db, &self.dir)?;
        self.archive.retire(&retired)?;
        retired.clear();
        Ok(())
    }
}

impl Drop for SledInstance {
    fn drop(&mut self) {
        if self.abandoned.load(Ordering::Relaxed) {
            tracing::info!("closed the store without flushing it; its log is replayed next");
            return;
        }
        // A clean close leaves no log to replay: everything it holds is in
        // the trees, which this flush makes durable.
        let closed =
            flush_durably(&self.db, &self.dir).and_then(|()| self.wal.close(&self.archive));
        if let Err(e) = closed {
            tracing::warn!(error = %e, "closing the store left a write-ahead log to replay");
            return;
        }
        // With no log to replay the count is exact: saving it spares the
        // next start a scan of every record.
        let count = self.sessions.live.load(Ordering::Relaxed).to_be_bytes();
        let saved = self
            .meta
            .insert(SESSION_COUNT, &count)
            .map_err(backend)
            .and_then(|_| flush_durably(&self.db, &self.dir));
        if let Err(e) = saved {
            tracing::warn!(error = %e, "the session count was not saved; the next start counts");
        }
    }
}

fn write_key(tree: &Tree, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
    match value {
        Some(v) => tree.insert(key, v).map(drop),
        None => tree.remove(key).map(drop),
    }
    .map_err(backend)
}

fn stripe_index(tree: TreeId, key: &[u8]) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (tree as u8).hash(&mut h);
    key.hash(&mut h);
    (h.finish() % STRIPES as u64) as usize
}

fn spawn_thread(name: &str, run: impl FnOnce() + Send + 'static) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(run)
        .map(drop)
        .map_err(|e| StoreError::Backend(format!("cannot start the {name} thread: {e}")))
}

/// The group-commit loop, on its own thread: it answers every waiter queued
/// before it started a sync with that sync's result. It holds the store only
/// while syncing, so that dropping the last handle closes the database (and
/// releases its lock); then the channel closes and the loop ends.
fn flusher(
    store: Weak<SledInstance>,
    requests: mpsc::Receiver<Waiter>,
    on_flush: Option<FlushObserver>,
) {
    while let Ok(first) = requests.recv() {
        let mut waiters = vec![first];
        waiters.extend(requests.try_iter());
        let started = std::time::Instant::now();
        let result = match store.upgrade() {
            Some(store) => store.wal.sync().map_err(|e| {
                let message = format!("write-ahead log: {e}");
                (store.on_failure)(&StoreError::Io(message.clone()));
                message
            }),
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

/// Flushes sled behind the log every [`CHECKPOINT_EVERY`] while writes come
/// in, until the store is dropped (which closes `stop`).
fn checkpointer(store: Weak<SledInstance>, stop: mpsc::Receiver<()>) {
    let mut checkpointed = None;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        let Some(store) = store.upgrade() else { return };
        let position = store.wal.position();
        if position.1 == 0 || checkpointed == Some(position) {
            continue;
        }
        match store.checkpoint() {
            Ok(()) => checkpointed = Some(position),
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint failed; the write-ahead log is kept");
                (store.on_failure)(&e);
            }
        }
    }
}

/// Opens sled in `dir` (locked by [`sled_dir::lock`]), first finishing
/// or removing the snapshots a crash interrupted and setting aside finished
/// ones that fail their checksum (see `store::sled::dir`); then syncs the
/// directory, which sled never does, so that the snapshot it just wrote is
/// the one the next start finds.
fn open_sled(dir: &Path, cache_capacity_bytes: u64) -> Result<sled::Db, StoreError> {
    for done in sled_dir::finish_interrupted_snapshots(dir)? {
        match done {
            sled_dir::Interrupted::Finished(name) => tracing::warn!(
                "finished renaming {name} in {}: a crash came after sled wrote it whole",
                dir.display()
            ),
            sled_dir::Interrupted::Removed(name) => tracing::warn!(
                "removed {name} from {}: a snapshot a crash left half-written",
                dir.display()
            ),
        }
    }
    // The quarantine folder is named after the time of day, for the
    // operator who finds it; no rule of the store depends on it, so the
    // system clock is read here rather than passed through every opener.
    let now_ms = u128::from(SystemClock.now_ms());
    match sled_dir::quarantine_damaged_snapshots(dir, now_ms)? {
        sled_dir::Snapshots::Sound => {}
        sled_dir::Snapshots::Quarantined(moved) => tracing::warn!(
            "a snapshot in {} fails its checksum: it was moved to {}, and the store is \
             opened from the sound one",
            dir.display(),
            moved.display()
        ),
        sled_dir::Snapshots::AllDamaged => return Err(damaged(dir)),
    }
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_capacity_bytes)
        .open()
        .map_err(|e| match e {
            sled::Error::Corruption { .. } => damaged(dir),
            e => open_error(dir, e),
        })?;
    sled_dir::sync_dir(dir)?;
    Ok(db)
}

/// Makes what sled has written durable: its own flush only hands the data
/// to the kernel (`sync_file_range`), which neither reaches the disk's
/// cache nor the file's size, so the log segments it covers may not be
/// deleted on its word alone.
fn flush_durably(db: &sled::Db, dir: &Path) -> Result<(), StoreError> {
    db.flush().map_err(backend)?;
    let file = dir.join("db");
    std::fs::File::open(&file)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io(format_args!("cannot sync {}", file.display()), &e))
}

/// The store does not open: what to do about it.
fn damaged(dir: &Path) -> StoreError {
    StoreError::Backend(format!(
        "cannot open {dir}: sled's files are damaged. Keep this directory as it is, \
         and restore your last backup into an empty one, replaying this directory's \
         write-ahead log on top so that no acknowledged write is lost: \
         `sessiond restore BACKUP --data-dir NEW_DIR --replay-log {dir}` \
         (README, \"Backup and restore\")",
        dir = dir.display()
    ))
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
    match e {
        sled::Error::Io(io) => StoreError::io("sled", &io),
        e => StoreError::Backend(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
