//! [`SledInstance`]: one opening of the embedded default backend, on sled
//! 0.34 (`store::sled` holds one at a time as the `SledStore`).
//!
//! Trees: `sessions` (handle → record), `sessions_by_user_hash` (the first
//! 8 bytes of the SHA-256 of the user id, handle → filed expiry), `keys`
//! (kid → key record), `secrets`, and `user_data` (len-prefixed tenant,
//! len-prefixed user → buckets).
//!
//! The user index is keyed by a hash of the user id rather than the id
//! itself so that its inserts land at random places: with ids that grow
//! (as database sequences do), each insert went just after the last one,
//! sled's half-split leaves were never filled again, and 100 000 sessions
//! took 1525 bytes each against 1009 with random ids. A user's
//! sessions are still one key range; the record of each entry says whose
//! session it is, so a collision of two users' hashes lists nothing wrong.
//!
//! A session's user entry holds a time at or before its expiry (its filed
//! expiry). The sweep reads the user index in key order, a pass spread over
//! its calls, and looks at the record of each entry that has come due: an
//! expired session is removed, a live one filed again under its real
//! expiry. A refresh, which only ever moves expiry later, therefore
//! rewrites the record alone; only a write that moves expiry earlier (or
//! changes the user) rewrites the entry at once. There is no expiry index:
//! in sled its entries cost about as much disk as the user index's, and
//! every create paid for one more B-tree insert. Data directories written
//! before carry a `sessions_by_expiry` tree, which the first open drops,
//! and a `sessions_by_user` tree keyed by the user id itself, which it
//! copies into the hashed index before dropping it.
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
//! answers [`SessionStore::durable`]: it answers every waiter queued before
//! it started with the result of one log write and `fdatasync` (group
//! commit). A checkpoint thread flushes sled every second and deletes the
//! log segments that flush covered; on open, what is left is replayed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak, mpsc};
use std::time::Duration;

use sled::Tree;
use tokio::sync::oneshot;

use super::dir as sled_dir;
use super::record::{self, Lineage};
use super::wal::{self, Entry, TreeId, Wal};
use crate::store::{
    BoxFuture, Change, Exported, FlushObserver, KeyRecord, ListedSession, SessionQuery,
    SessionRecord, SessionStore, SessionsPage, StoreError, UserData, UserSession,
};

/// How often sled is flushed and the log behind the flush dropped.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The expiry index of earlier versions, dropped on open.
const OLD_EXPIRY_TREE: &str = "sessions_by_expiry";
/// The user index of earlier versions (length-prefixed user, length-prefixed
/// tenant, handle → filed expiry), moved to [`USER_TREE`] on open.
const OLD_USER_TREE: &str = "sessions_by_user";
/// The user index.
const USER_TREE: &str = "sessions_by_user_hash";

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
        upgrade_indexes(&db, dir, &sessions.by_user)?;
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

    /// The lock stripe of one key of one tree.
    fn stripe(&self, tree: TreeId, key: &[u8]) -> MutexGuard<'_, ()> {
        self.lock_stripe(stripe_index(tree, key))
    }

    fn lock_stripe(&self, index: usize) -> MutexGuard<'_, ()> {
        self.stripes[index]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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
        let _order = self.stripe(id, key);
        write_key(tree, key, value)?;
        self.wal.append(id, key, value);
        Ok(())
    }

    /// The sweep's visit of one user index entry: nothing unless its filed
    /// expiry has come. Returns true when it removed an expired session.
    fn sweep_one(&self, key: &[u8], filed: &[u8], now_ms: u64) -> Result<bool, StoreError> {
        if filed_at(filed).is_some_and(|filed| filed > now_ms) {
            return Ok(false);
        }
        let Some(handle) = handle_of_user_key(key) else {
            self.sessions.by_user.remove(key).map_err(backend)?;
            return Ok(false);
        };
        let _order = self.stripe(TreeId::Sessions, handle.as_bytes());
        match self.sessions.sweep_entry(key, handle, now_ms) {
            Ok(true) => {
                self.wal.append(TreeId::Sessions, handle.as_bytes(), None);
                Ok(true)
            }
            Ok(false) => Ok(false),
            // One damaged record must not stop every later sweep at the
            // same place: it stays, and is reported.
            Err(StoreError::Corrupt(e)) => {
                tracing::warn!(
                    session_handle = handle,
                    error = %e,
                    "the sweeper skipped a session whose record does not decode"
                );
                Ok(false)
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
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
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

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![record::V1];
    // Serialising plain data structs with string keys cannot fail.
    serde_json::to_writer(&mut out, value).expect("records serialise");
    out
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&record::V1, rest)) => serde_json::from_slice(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown record version {v}")),
        None => Err("empty record".to_owned()),
    }
}

fn push_lp(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Where a user's sessions are in the user index.
fn user_prefix(user_id: &str) -> [u8; 8] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, user_id.as_bytes());
    digest.as_ref()[..8]
        .try_into()
        .expect("a SHA-256 has 8 bytes")
}

fn user_key(r: &SessionRecord) -> Vec<u8> {
    user_key_of(&r.user_id, &r.handle)
}

fn user_key_of(user_id: &str, handle: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + handle.len());
    k.extend_from_slice(&user_prefix(user_id));
    k.extend_from_slice(handle.as_bytes());
    k
}

/// The handle in a user index key.
fn handle_of_user_key(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.get(8..)?).ok()
}

/// Brings the indexes of a data directory written by an earlier version to
/// the current layout: the expiry index is dropped, and the user index is
/// copied into the hashed one and then dropped. A copy cut short by a crash
/// is made again at the next open, as the old index goes only after it.
fn upgrade_indexes(db: &sled::Db, dir: &Path, by_user: &Tree) -> Result<(), StoreError> {
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

/// The session records and their user index.
struct SessionTrees {
    records: Tree,
    by_user: Tree,
    /// How many records there are, kept as records come and go.
    live: AtomicI64,
}

impl SessionTrees {
    fn read(&self, handle: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.read_with(handle, |bytes| record::decode_session(handle, bytes))
    }

    /// Reads only what checking a token against the store needs.
    fn lineage(&self, handle: &str) -> Result<Option<Lineage>, StoreError> {
        self.read_with(handle, record::decode_lineage)
    }

    /// Reads a session's record and decodes it with `decode`.
    fn read_with<T>(
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
    fn write(
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
    fn create(&self, new: &SessionRecord, bytes: &[u8]) -> Result<(), StoreError> {
        // An entry already there may index the record this insert replaces:
        // it keeps the earlier time, which is at or before both expiries,
        // should a crash keep the entry and lose the record.
        let key = user_key(new);
        let filed = new.expires_at_ms.to_be_bytes();
        let added = self
            .by_user
            .compare_and_swap(&key, None as Option<&[u8]>, Some(&filed[..]))
            .map_err(backend)?;
        if let Err(present) = added {
            let earlier = present.current.as_deref().and_then(filed_at);
            if earlier.is_none_or(|t| t > new.expires_at_ms) {
                self.file(&key, new.expires_at_ms)?;
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
    fn remove(&self, handle: &str, key: Option<&[u8]>) -> Result<(), StoreError> {
        if self.records.remove(handle).map_err(backend)?.is_some() {
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(key) = key {
            self.by_user.remove(key).map_err(backend)?;
        }
        Ok(())
    }

    /// Files `new` in the user index under its expiry.
    fn add_entry(&self, new: &SessionRecord) -> Result<(), StoreError> {
        self.file(&user_key(new), new.expires_at_ms)
    }

    /// Sets the user entry `key`'s filed expiry.
    fn file(&self, key: &[u8], expires_at_ms: u64) -> Result<(), StoreError> {
        self.by_user
            .insert(key, &expires_at_ms.to_be_bytes())
            .map_err(backend)?;
        Ok(())
    }

    /// Removes `old`'s user entry, unless `new` has the same one.
    fn remove_entry(&self, old: &SessionRecord, new: &SessionRecord) -> Result<(), StoreError> {
        let key = user_key(old);
        if user_key(new) != key {
            self.by_user.remove(&key).map_err(backend)?;
        }
        Ok(())
    }

    /// Deals with the user entry `key` (of session `handle`), which has come
    /// due by `now_ms`: the session is removed if it expired, filed again
    /// under its expiry if it was filed early, and the entry dropped if it
    /// names no session of its user (a crash between an entry's write and
    /// its record's, or an import that moved the handle). The caller holds
    /// the session's lock stripe and logs a removal: returns true when the
    /// session was removed.
    fn sweep_entry(&self, key: &[u8], handle: &str, now_ms: u64) -> Result<bool, StoreError> {
        // The record's fixed part says all the sweep needs: no JSON is parsed.
        match self.lineage(handle)? {
            Some(l) if user_key_of(&l.user_id, handle) == key => {
                if l.expires_at_ms <= now_ms {
                    self.remove(handle, Some(key))?;
                    return Ok(true);
                }
                self.file(key, l.expires_at_ms)?;
            }
            _ => {
                self.by_user.remove(key).map_err(backend)?;
            }
        }
        Ok(false)
    }

    /// Reads a session and applies `decide`'s change to it. The caller holds
    /// the session's lock stripe. Returns the change and, for a put, the
    /// bytes stored.
    fn apply(
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
/// user (the tenant is not in the key), and an expiry no earlier (so the
/// time `old` was filed under is still at or before it).
fn still_filed(old: &SessionRecord, new: &SessionRecord) -> bool {
    old.user_id == new.user_id && new.expires_at_ms >= old.expires_at_ms
}

/// The filed expiry a user index value holds.
fn filed_at(value: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes)
}

impl SessionStore for SledInstance {
    fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let bytes = record::encode_session(record);
        let key = record.handle.as_bytes();
        let _order = self.stripe(TreeId::Sessions, key);
        self.sessions.create(record, &bytes)?;
        self.wal.append(TreeId::Sessions, key, Some(&bytes));
        Ok(())
    }

    fn session(&self, handle: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.sessions.read(handle)
    }

    fn session_lineage(&self, handle: &str) -> Result<Option<Lineage>, StoreError> {
        self.sessions.lineage(handle)
    }

    fn update_session(
        &self,
        handle: &str,
        decide: &mut dyn FnMut(Option<&SessionRecord>) -> Change,
    ) -> Result<Change, StoreError> {
        let key = handle.as_bytes();
        let _order = self.stripe(TreeId::Sessions, key);
        let (change, stored) = self.sessions.apply(handle, decide)?;
        match change {
            Change::Keep => {}
            Change::Put(_) => self.wal.append(TreeId::Sessions, key, Some(&stored)),
            Change::Delete => self.wal.append(TreeId::Sessions, key, None),
        }
        Ok(change)
    }

    fn delete_sessions(&self, handles: &[String]) -> Result<Vec<UserSession>, StoreError> {
        let mut stripes: Vec<usize> = handles
            .iter()
            .map(|h| stripe_index(TreeId::Sessions, h.as_bytes()))
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        // Taken in index order, so two multi-session deletes cannot deadlock.
        let _order: Vec<_> = stripes.into_iter().map(|i| self.lock_stripe(i)).collect();
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
            self.wal
                .append(TreeId::Sessions, gone.handle.as_bytes(), None);
        }
        Ok(removed)
    }

    fn user_sessions(
        &self,
        user_id: &str,
        tenant_id: Option<&str>,
    ) -> Result<Vec<UserSession>, StoreError> {
        let mut out = Vec::new();
        for key in self
            .sessions
            .by_user
            .scan_prefix(user_prefix(user_id))
            .keys()
        {
            let key = key.map_err(backend)?;
            let handle = handle_of_user_key(&key)
                .ok_or_else(|| StoreError::Corrupt("user index key".into()))?;
            // The record decides: an entry left by a crash in the middle of
            // a write may name no session, or (after an import moved a
            // handle to another user, or when two user ids share a hash)
            // somebody else's session.
            let Some(lineage) = self.sessions.lineage(handle)? else {
                continue;
            };
            if lineage.user_id != user_id || tenant_id.is_some_and(|t| t != lineage.tenant_id) {
                continue;
            }
            out.push(UserSession {
                handle: handle.to_owned(),
                tenant_id: lineage.tenant_id,
                expires_at_ms: lineage.expires_at_ms,
            });
        }
        Ok(out)
    }

    fn list_sessions(&self, query: &SessionQuery<'_>) -> Result<SessionsPage, StoreError> {
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

    fn sweep_expired(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        if limit == 0 {
            return Ok(0);
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
        let mut removed = 0;
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
                    Ok(false) => {}
                    Ok(true) => {
                        removed += 1;
                        if removed == limit {
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
        let _order = self.stripe(TreeId::Users, &key);
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
            let bytes = encode(&next);
            let swapped = self
                .users
                .compare_and_swap(&key, old.as_ref(), Some(bytes.as_slice()))
                .map_err(backend)?;
            if swapped.is_ok() {
                self.wal.append(TreeId::Users, &key, Some(&bytes));
                return Ok(next);
            }
        }
    }

    fn export(
        &self,
        visit: &mut dyn FnMut(Exported) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.sessions.records.iter() {
            let (key, value) = item.map_err(backend)?;
            let handle = std::str::from_utf8(&key)
                .map_err(|_| StoreError::Corrupt("session handle".into()))?;
            visit(Exported::Session(
                record::decode_session(handle, &value).map_err(StoreError::Corrupt)?,
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
            } => self.put_logged(
                &self.users,
                TreeId::Users,
                &user_data_key(&tenant_id, &user_id),
                Some(&encode(&data)),
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

    fn count_sessions(&self) -> Result<u64, StoreError> {
        Ok(self.sessions.live.load(Ordering::Relaxed).max(0) as u64)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk().map_err(backend)?
            + self.wal.size_on_disk()
            + self.archive.size_on_disk())
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
        self.put_logged(
            &self.keys,
            TreeId::Keys,
            key.kid.as_bytes(),
            Some(&encode(key)),
        )
    }

    fn delete_key(&self, kid: &str) -> Result<(), StoreError> {
        self.put_logged(&self.keys, TreeId::Keys, kid.as_bytes(), None)
    }

    fn secret(&self, name: &str, make: &mut dyn FnMut() -> Vec<u8>) -> Result<Vec<u8>, StoreError> {
        if let Some(v) = self.secrets.get(name).map_err(backend)? {
            return Ok(v.to_vec());
        }
        let fresh = make();
        let _order = self.stripe(TreeId::Secrets, name.as_bytes());
        match self
            .secrets
            .compare_and_swap(name, None as Option<&[u8]>, Some(fresh.as_slice()))
            .map_err(backend)?
        {
            Ok(()) => {
                self.wal
                    .append(TreeId::Secrets, name.as_bytes(), Some(&fresh));
                Ok(fresh)
            }
            Err(cas) => cas
                .current
                .map(|v| v.to_vec())
                .ok_or_else(|| StoreError::Corrupt(format!("secret {name} vanished"))),
        }
    }

    fn replace_secret(&self, name: &str, current: &[u8], new: &[u8]) -> Result<bool, StoreError> {
        let _order = self.stripe(TreeId::Secrets, name.as_bytes());
        let swapped = self
            .secrets
            .compare_and_swap(name, Some(current), Some(new))
            .map_err(backend)?;
        if swapped.is_ok() {
            self.wal.append(TreeId::Secrets, name.as_bytes(), Some(new));
        }
        Ok(swapped.is_ok())
    }

    fn durable(&self) -> BoxFuture<Result<(), StoreError>> {
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

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    /// The instance alone, as the store opens it (the directory lock is
    /// the caller's, which these tests do without).
    struct SledStore;

    impl SledStore {
        fn open(
            dir: &Path,
            cache_capacity_bytes: u64,
            on_flush: Option<FlushObserver>,
        ) -> Result<Arc<SledInstance>, StoreError> {
            let archive = wal::Archive::new(dir, Arc::new(std::sync::atomic::AtomicU64::new(0)));
            SledInstance::open(
                dir,
                cache_capacity_bytes,
                on_flush,
                Arc::new(|_| {}),
                archive,
            )
        }
    }
    use crate::store::Generation;

    fn record(handle: &str, user: &str, expires_at_ms: u64) -> SessionRecord {
        SessionRecord {
            handle: handle.to_owned(),
            user_id: user.to_owned(),
            tenant_id: "public".to_owned(),
            access_payload: Map::new(),
            data: Map::new(),
            created_at_ms: 1,
            expires_at_ms,
            current: Generation {
                refresh_hash: "h".into(),
                anti_csrf_hash: None,
            },
            previous: None,
            rotated_at_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_replaced_secret_is_in_the_log_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        store.secret("s", &mut || b"plain".to_vec()).unwrap();
        assert!(store.replace_secret("s", b"plain", b"sealed").unwrap());
        store.durable().await.unwrap();
        // What a crash now would replay: the log as it stands (a small log
        // is not rotated away by checkpoints).
        let copy = tempfile::tempdir().unwrap();
        for file in std::fs::read_dir(dir.path().join("wal")).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), copy.path().join(file.file_name())).unwrap();
        }
        let mut logged = Vec::new();
        Wal::open(copy.path(), &mut |e| {
            logged.push(e);
            Ok(())
        })
        .unwrap();
        let replaced = Entry {
            tree: TreeId::Secrets,
            key: b"s".to_vec(),
            value: Some(b"sealed".to_vec()),
        };
        assert_eq!(logged.last(), Some(&replaced), "{logged:?}");
    }

    /// The state a crash leaves when the log was synced but sled was not
    /// flushed: the log is replayed on open, indexes included, and consumed.
    #[tokio::test]
    async fn a_log_left_by_a_crash_is_replayed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        store.create_session(&record("gone", "bob", 50)).unwrap();
        store.durable().await.unwrap();
        drop(store);

        // Writes that reached the log only.
        let wal = Wal::open(&dir.path().join("wal"), &mut |_| Ok(()))
            .unwrap()
            .wal;
        let moved = record("a", "alice", 100);
        wal.append(
            TreeId::Sessions,
            b"a",
            Some(&record::encode_session(&record("a", "alice", 10))),
        );
        wal.append(
            TreeId::Sessions,
            b"a",
            Some(&record::encode_session(&moved)),
        );
        wal.append(TreeId::Sessions, b"gone", None);
        let data = UserData {
            user_identifier: Some("alice@example.com".into()),
            ..UserData::default()
        };
        wal.append(
            TreeId::Users,
            &user_data_key("public", "alice"),
            Some(&encode(&data)),
        );
        wal.append(TreeId::Secrets, b"s", Some(b"secret bytes"));
        wal.sync().unwrap();
        drop(wal);

        let store = SledStore::open(dir.path(), 8 << 20, None)
            .map_err(|e| e.to_string())
            .unwrap();
        assert_eq!(store.session("a").unwrap(), Some(moved));
        assert_eq!(store.session("gone").unwrap(), None);
        let listed = store.user_sessions("alice", None).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].expires_at_ms, 100);
        assert!(store.user_sessions("bob", None).unwrap().is_empty());
        // The user index follows the last image: nothing is due at 50.
        assert_eq!(store.sweep_expired(50, 10).unwrap(), 0);
        assert_eq!(store.user_data("public", "alice").unwrap(), Some(data));
        assert_eq!(
            store.secret("s", &mut || b"other".to_vec()).unwrap(),
            b"secret bytes"
        );
        // After a crash the count comes from a scan.
        assert_eq!(store.count_sessions().unwrap(), 1);
        assert_eq!(store.sweep_expired(100, 10).unwrap(), 1);
        assert_eq!(store.count_sessions().unwrap(), 0);
        // The replayed segments are gone once sled holds their writes.
        let left = std::fs::read_dir(dir.path().join("wal")).unwrap().count();
        assert_eq!(left, 1, "only this run's segment remains");
    }

    /// A crash between an index write and its record's write leaves an
    /// entry that names no session: readers skip it and the sweep drops it.
    #[tokio::test]
    async fn dangling_index_entries_are_skipped_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        store.create_session(&record("live", "alice", 100)).unwrap();
        let ghost = record("ghost", "alice", 40);
        let trees = &store.sessions;
        trees
            .by_user
            .insert(user_key(&ghost), &40u64.to_be_bytes())
            .unwrap();

        // An entry naming another user's session (an import that moved the
        // handle, cut short by a crash) does not list it either.
        let stolen = record("live", "mallory", 60);
        trees
            .by_user
            .insert(user_key(&stolen), &60u64.to_be_bytes())
            .unwrap();
        assert!(store.user_sessions("mallory", None).unwrap().is_empty());

        let listed = store.user_sessions("alice", Some("public")).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].handle, "live");
        assert_eq!(
            store.sweep_expired(50, 10).unwrap(),
            0,
            "nothing real was due"
        );
        assert!(trees.by_user.get(user_key(&ghost)).unwrap().is_none());
        assert!(trees.by_user.get(user_key(&stolen)).unwrap().is_some());
        assert_eq!(store.sweep_expired(60, 10).unwrap(), 0);
        assert!(trees.by_user.get(user_key(&stolen)).unwrap().is_none());
        assert!(store.session("live").unwrap().is_some());
        assert_eq!(store.user_sessions("alice", None).unwrap().len(), 1);
    }

    fn filed_under(store: &SledInstance, r: &SessionRecord) -> Option<u64> {
        let value = store.sessions.by_user.get(user_key(r)).unwrap()?;
        filed_at(&value)
    }

    /// Sets a stored session's expiry, as a refresh (later) or an edit
    /// (earlier) would.
    fn set_expiry(store: &SledInstance, handle: &str, expires_at_ms: u64) {
        let applied = store
            .update_session(handle, &mut |r| {
                let mut r = r.expect("the session exists").clone();
                r.expires_at_ms = expires_at_ms;
                Change::Put(Box::new(r))
            })
            .unwrap();
        assert!(matches!(applied, Change::Put(_)));
    }

    /// A refresh moves expiry later and rewrites the record alone; the
    /// sweep files the session again when its early entry comes due.
    #[tokio::test]
    async fn a_later_expiry_keeps_the_entries_until_the_sweep_refiles() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        let first = record("s", "alice", 100);
        store.create_session(&first).unwrap();
        set_expiry(&store, "s", 500);
        assert_eq!(filed_under(&store, &first), Some(100));

        assert_eq!(store.sweep_expired(200, 10).unwrap(), 0);
        assert_eq!(filed_under(&store, &first), Some(500));
        assert!(store.session("s").unwrap().is_some());

        assert_eq!(store.sweep_expired(500, 10).unwrap(), 1);
        assert!(store.sessions.by_user.is_empty());
    }

    /// An earlier expiry moves the entries at once, or the sweep would
    /// find the session late.
    #[tokio::test]
    async fn an_earlier_expiry_moves_the_entries_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        let first = record("s", "alice", 500);
        store.create_session(&first).unwrap();
        set_expiry(&store, "s", 100);
        assert_eq!(filed_under(&store, &first), Some(100));
        assert_eq!(store.sweep_expired(99, 10).unwrap(), 0);
        assert_eq!(store.sweep_expired(100, 10).unwrap(), 1);
        assert!(store.sessions.by_user.is_empty());
    }

    /// Sessions filed early do not use up the sweep's limit.
    #[tokio::test]
    async fn refiled_sessions_do_not_hide_expired_ones_from_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        for i in 0..5 {
            let handle = format!("a{i}");
            store.create_session(&record(&handle, "u", 10)).unwrap();
            set_expiry(&store, &handle, 1_000);
        }
        // Filed at 10 like the extended ones, but sorted after them.
        store.create_session(&record("z", "u", 10)).unwrap();
        assert_eq!(store.sweep_expired(50, 2).unwrap(), 1);
        assert!(store.session("z").unwrap().is_none());
        assert_eq!(store.count_sessions().unwrap(), 5);
    }

    /// Users whose index keys sort in the order given.
    fn users_in_key_order(n: usize) -> Vec<String> {
        let mut users: Vec<String> = (0..n).map(|i| format!("user-{i}")).collect();
        users.sort_by_key(|u| user_prefix(u));
        users
    }

    /// A sweep call that stops at its limit leaves the rest of the pass to
    /// the next call, which goes on round to where the pass began.
    #[tokio::test]
    async fn a_sweep_pass_continues_where_the_limit_stopped_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        let u = users_in_key_order(4);
        for user in &u[1..] {
            store.create_session(&record(user, user, 10)).unwrap();
        }
        store.create_session(&record("live", &u[2], 100)).unwrap();
        let gone = |user: &str| store.session(user).unwrap().is_none();

        assert_eq!(store.sweep_expired(50, 1).unwrap(), 1);
        assert!(gone(&u[1]) && !gone(&u[2]));
        // Due, but before the point where the pass stands now: a call that
        // started from the beginning would take it first.
        store.create_session(&record(&u[0], &u[0], 20)).unwrap();
        assert_eq!(store.sweep_expired(50, 1).unwrap(), 1);
        assert!(gone(&u[2]) && !gone(&u[0]));
        assert_eq!(store.sweep_expired(50, 1).unwrap(), 1);
        assert!(gone(&u[3]) && !gone(&u[0]));
        // Round past the end to where the pass began.
        assert_eq!(store.sweep_expired(50, 1).unwrap(), 1);
        assert!(gone(&u[0]));
        assert_eq!(store.sweep_expired(50, 1).unwrap(), 0);
        assert_eq!(store.count_sessions().unwrap(), 1);
        assert!(store.session("live").unwrap().is_some());

        // A pass that ran to its end begins at the start again.
        store.create_session(&record(&u[0], &u[0], 60)).unwrap();
        assert_eq!(store.sweep_expired(70, 10).unwrap(), 1);
        assert_eq!(store.count_sessions().unwrap(), 1);
    }

    /// A record that does not decode is reported and left; the sweep goes on
    /// past it, in this call and in the next.
    #[tokio::test]
    async fn a_damaged_record_does_not_stop_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        let u = users_in_key_order(3);
        for user in &u {
            store.create_session(&record(user, user, 10)).unwrap();
        }
        store
            .sessions
            .records
            .insert(u[0].as_bytes(), &[9, 9])
            .unwrap();
        assert_eq!(store.sweep_expired(50, 10).unwrap(), 2);
        store.create_session(&record("late", &u[1], 20)).unwrap();
        assert_eq!(store.sweep_expired(50, 10).unwrap(), 1);
        assert!(store.session("late").unwrap().is_none());
    }

    /// The sweep reads a due session's fixed fields only: an expired
    /// session whose data no longer parses is still removed.
    #[tokio::test]
    async fn an_expired_session_with_damaged_data_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        let r = record("s", "alice", 10);
        store.create_session(&r).unwrap();
        let mut bytes = record::encode_session(&r);
        *bytes.last_mut().unwrap() = b'!';
        store.sessions.records.insert("s", bytes).unwrap();
        assert!(matches!(store.session("s"), Err(StoreError::Corrupt(_))));
        assert_eq!(store.sweep_expired(50, 10).unwrap(), 1);
        assert_eq!(store.session("s").unwrap(), None);
        assert_eq!(store.count_sessions().unwrap(), 0);
        assert!(store.sessions.by_user.is_empty());
    }

    /// Creating a session over a handle that exists (an import) keeps the
    /// earlier of the two filed times, so a crash that keeps the index
    /// entry and loses the record leaves the old record swept in time.
    #[tokio::test]
    async fn a_create_over_a_handle_keeps_the_earlier_filed_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        let first = record("s", "alice", 100);
        store.create_session(&first).unwrap();
        store.create_session(&record("s", "alice", 900)).unwrap();
        assert_eq!(filed_under(&store, &first), Some(100));
        store.create_session(&record("s", "alice", 50)).unwrap();
        assert_eq!(filed_under(&store, &first), Some(50));
        assert_eq!(store.sweep_expired(60, 10).unwrap(), 1);
    }

    /// A tenant is not part of the index key: moving a session to another
    /// tenant of the same user rewrites the record alone.
    #[tokio::test]
    async fn a_tenant_change_keeps_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        let first = record("s", "alice", 100);
        store.create_session(&first).unwrap();
        store
            .update_session("s", &mut |r| {
                let mut r = r.unwrap().clone();
                r.tenant_id = "acme".into();
                r.expires_at_ms = 500;
                Change::Put(Box::new(r))
            })
            .unwrap();
        assert_eq!(filed_under(&store, &first), Some(100));
        let listed = store.user_sessions("alice", Some("acme")).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].expires_at_ms, 500);
        assert!(
            store
                .user_sessions("alice", Some("public"))
                .unwrap()
                .is_empty()
        );
    }

    /// A data directory of an earlier version (an expiry index, a user index
    /// keyed by the user id itself, perhaps a copy cut short) opens with its
    /// indexes upgraded.
    #[tokio::test]
    async fn an_older_data_directory_is_upgraded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        let mut other_tenant = record("t", "alice", 300);
        other_tenant.tenant_id = "acme".into();
        for r in [
            record("s", "alice", 100),
            record("b", "bob", 200),
            other_tenant,
        ] {
            store.create_session(&r).unwrap();
        }
        store.durable().await.unwrap();
        // Rewrite the index as earlier versions kept it.
        let old = store.db.open_tree(OLD_USER_TREE).unwrap();
        for item in store.sessions.by_user.iter() {
            let (key, filed) = item.unwrap();
            let handle = handle_of_user_key(&key).unwrap();
            let r = store.session(handle).unwrap().unwrap();
            let mut old_key = Vec::new();
            push_lp(&mut old_key, &r.user_id);
            push_lp(&mut old_key, &r.tenant_id);
            old_key.extend_from_slice(handle.as_bytes());
            old.insert(old_key, filed).unwrap();
        }
        old.insert(b"not a key", &[]).unwrap();
        store.sessions.by_user.clear().unwrap();
        // As a copy cut short by a crash leaves it: one entry made it over.
        let copied = record("b", "bob", 200);
        store
            .sessions
            .by_user
            .insert(user_key(&copied), &200u64.to_be_bytes())
            .unwrap();
        let expiry = store.db.open_tree(OLD_EXPIRY_TREE).unwrap();
        expiry.insert(100u64.to_be_bytes(), &[]).unwrap();
        store.db.flush().unwrap();
        drop((old, expiry, store));

        let store = reopen(dir.path());
        let names = store.db.tree_names();
        assert!(!names.iter().any(|n| n == OLD_EXPIRY_TREE.as_bytes()));
        assert!(!names.iter().any(|n| n == OLD_USER_TREE.as_bytes()));
        assert_eq!(store.sessions.by_user.len(), 3);
        let mut alice: Vec<_> = store
            .user_sessions("alice", None)
            .unwrap()
            .into_iter()
            .map(|s| (s.handle, s.tenant_id))
            .collect();
        alice.sort();
        assert_eq!(
            alice,
            [("s".into(), "public".into()), ("t".into(), "acme".into())]
        );
        let acme = store.user_sessions("alice", Some("acme")).unwrap();
        assert_eq!(acme.len(), 1);
        assert_eq!(store.sweep_expired(100, 10).unwrap(), 1);
        assert!(store.session("s").unwrap().is_none());
        assert_eq!(store.user_sessions("bob", None).unwrap()[0].handle, "b");
    }

    /// Opens the store again; sled's I/O threads may hold the directory's
    /// lock for a moment after its last handle is dropped.
    fn reopen(dir: &Path) -> Arc<SledInstance> {
        let mut attempts = 0;
        loop {
            match SledStore::open(dir, 8 << 20, None) {
                Err(StoreError::Locked(_)) if attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                opened => break opened.unwrap(),
            }
        }
    }

    /// A clean close saves the session count, so the next start need not
    /// scan every record; the saved count serves one start only.
    #[tokio::test]
    async fn the_count_saved_at_a_clean_close_serves_one_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        for h in ["a", "b", "c"] {
            store.create_session(&record(h, "alice", 100)).unwrap();
        }
        store.delete_sessions(&["b".into(), "zz".into()]).unwrap();
        store
            .update_session("c", &mut |_| {
                Change::Put(Box::new(record("c", "alice", 200)))
            })
            .unwrap();
        assert_eq!(store.count_sessions().unwrap(), 2);
        drop(store);

        // Plant a different count where the clean close saved it: the next
        // open must take it as is (no scan) and remove it.
        let db = sled::open(dir.path()).unwrap();
        let meta = db.open_tree("meta").unwrap();
        assert_eq!(
            meta.get(SESSION_COUNT).unwrap().unwrap().as_ref(),
            2i64.to_be_bytes()
        );
        meta.insert(SESSION_COUNT, &7i64.to_be_bytes()).unwrap();
        db.flush().unwrap();
        drop((meta, db));

        let store = reopen(dir.path());
        assert_eq!(store.count_sessions().unwrap(), 7);
        assert!(store.meta.get(SESSION_COUNT).unwrap().is_none());
    }

    /// The close signal goes only once the last handle (here a stand-in for
    /// the checkpoint thread's) is dropped and the store has closed cleanly.
    #[tokio::test]
    async fn the_close_signal_waits_for_the_last_handle() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        store.create_session(&record("a", "alice", 100)).unwrap();
        let (closed, store_closed) = mpsc::channel::<()>();
        store.on_close(closed);
        let checkpoint = store.clone();
        drop(store);
        assert_eq!(store_closed.try_recv(), Err(mpsc::TryRecvError::Empty));
        drop(checkpoint);
        assert_eq!(
            store_closed.try_recv(),
            Err(mpsc::TryRecvError::Disconnected)
        );
        // Closed cleanly: no log to replay, the count saved.
        assert_eq!(log_bytes(dir.path()), 0);
        let store = reopen(dir.path());
        assert_eq!(store.count_sessions().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_clean_close_leaves_no_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        store.create_session(&record("a", "alice", 100)).unwrap();
        store.durable().await.unwrap();
        drop(store);
        // Only the emptied last segment is left, carrying the numbering.
        assert_eq!(log_bytes(dir.path()), 0);
        assert_eq!(
            std::fs::read_dir(dir.path().join("wal")).unwrap().count(),
            1
        );
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        assert!(store.session("a").unwrap().is_some());
        assert_eq!(store.log_position(), 2, "numbering goes on");
    }

    /// Bytes in the data directory's live log.
    fn log_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir.join("wal"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }
}
