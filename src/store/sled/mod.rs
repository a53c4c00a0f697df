//! [`SledStore`]: the embedded store as the server holds it, one
//! [`SledInstance`] at a time, opened again after its disk failed.
//!
//! **The reserve.** With [`SledStore::set_reserved_space`], writes are
//! refused while the disk has less free space than the reserve (checked
//! every [`SPACE_EVERY`]) and taken again once a quarter more is free. The
//! store stops before sled meets a full disk, so nothing needs reopening
//! and reads go on working. The rest of these notes is for a disk that
//! fills up anyway, or fails.
//!
//! sled 0.34 keeps an I/O error (a full disk, typically) for the life of
//! the database: once one of its writes fails, every later write fails too,
//! even after space returns. And after a failed `fdatasync` of our own log
//! nothing more may be written behind it (`store::sled::wal`). So at the first
//! I/O failure — in a call, a log sync or a checkpoint — the store:
//! - takes no more writes: each is refused before it touches the trees, as
//!   [`StoreError::Unavailable`] saying why, so a refused write is never
//!   left half done in memory;
//! - goes on answering reads from the open instance;
//! - reports itself not writable ([`Durability::writable`](crate::store::Durability::writable)), which the
//!   server turns into health NOT_SERVING and a metric;
//! - checks the disk every [`PROBE_EVERY`] by writing and syncing
//!   [`PROBE_BYTES`] in the data directory, and once that succeeds, closes
//!   the instance without flushing it and opens a new one, exactly as a
//!   restart would: sled from its own files, then the write-ahead log, which
//!   holds every acknowledged write sled had not flushed. Calls that arrive
//!   during the reopen (milliseconds) are refused as unavailable.
//!
//! A write refused because the log's sync failed may have reached the log
//! whole before the failure; it is then found applied after the reopen, as
//! after any crash. A write never comes back partly applied.
//!
//! Beside this handle: `dispatch` (the store traits on it, and which calls
//! run inline and which hand the async worker over), `instance` (one
//! opening of sled: its trees, threads and calls), `wal` (the write-ahead
//! log and its archive), `record` (the stored form of a session), `format`
//! (that of keys and buckets) and `dir` (the data directory before sled
//! opens it).

pub(super) mod dir;
mod dispatch;
mod format;
mod instance;
pub(super) mod record;
pub(super) mod wal;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak, mpsc};
use std::time::Duration;

use tokio::sync::watch;

use self::dir as sled_dir;
use self::instance::{FailureHook, SledInstance};
use super::{FlushObserver, StoreError};

/// How often a store whose disk failed checks whether it can write again.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How often the free space is compared with the reserve.
const SPACE_EVERY: Duration = Duration::from_millis(250);
/// What the check writes and syncs: room for a new log segment and sled's
/// first flush.
const PROBE_BYTES: usize = 4 << 20;
/// The probe file, removed after each check.
const PROBE_FILE: &str = ".sessiond-space-check";
/// How long a reopen waits for the old instance to close, and for sled to
/// let go of its lock.
const CLOSE_WAIT: Duration = Duration::from_secs(30);
/// How long a reopen waits, after the old log failed to sync, before a new
/// instance answers durability requests (see [`SledStore::reopen`]).
const UNSYNCED_GRACE: Duration = Duration::from_secs(2);

/// The sled-backed store.
pub struct SledStore {
    dir: PathBuf,
    cache_capacity_bytes: u64,
    on_flush: Option<FlushObserver>,
    /// The open instance; `None` only while it is being opened again.
    current: RwLock<Option<Arc<SledInstance>>>,
    health: Arc<Health>,
    /// The log archive's size limit (0: no archive), shared with every
    /// instance.
    archive_limit: Arc<AtomicU64>,
    /// The store's id (`store-id` in the data directory).
    id: String,
    /// sessiond's lock on the data directory, held across reopens and
    /// released last.
    _lock: File,
}

/// Whether the store takes writes, and why not.
struct Health {
    /// An I/O failure: writes are refused until the store is opened again.
    failed: AtomicBool,
    /// Less free space than the reserve: writes are refused until there is
    /// more.
    low_space: AtomicBool,
    /// The free space below which writes are refused (0: no reserve).
    reserve: AtomicU64,
    /// What refused writes are told.
    refusal: Mutex<String>,
    writable: watch::Sender<bool>,
}

impl Health {
    fn new() -> Self {
        Self {
            failed: AtomicBool::new(false),
            low_space: AtomicBool::new(false),
            reserve: AtomicU64::new(0),
            refusal: Mutex::new(String::new()),
            writable: watch::Sender::new(true),
        }
    }

    fn set_refusal(&self, refusal: String) {
        *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = refusal;
    }

    /// Publishes whether writes are taken, when that changed.
    fn publish(&self) {
        let writable =
            !self.failed.load(Ordering::SeqCst) && !self.low_space.load(Ordering::SeqCst);
        self.writable
            .send_if_modified(|w| std::mem::replace(w, writable) != writable);
    }

    /// Notes an I/O failure: from now on writes are refused until a reopen.
    fn fail(&self, e: &StoreError) {
        if !matches!(e, StoreError::Io(_)) {
            return;
        }
        if self.failed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.set_refusal(if e.is_disk_full() {
            super::DISK_FULL.to_owned()
        } else {
            "the session store cannot write to its disk: writes are refused until it can".to_owned()
        });
        tracing::error!(
            error = %e,
            "the store's disk failed: writes are refused and health is NOT_SERVING \
             until it can write again (checked every second)"
        );
        self.publish();
    }

    /// The store was opened again after a failure.
    fn recovered(&self) {
        self.failed.store(false, Ordering::SeqCst);
        self.publish();
    }

    /// Compares the free space of the disk with the reserve. Writes stop
    /// under the reserve and start again once a quarter more is free, so a
    /// disk at the edge does not flap.
    fn check_space(&self, free: u64) {
        let reserve = self.reserve.load(Ordering::Relaxed);
        let low = self.low_space.load(Ordering::SeqCst);
        if !low && free < reserve {
            if !self.failed.load(Ordering::SeqCst) {
                self.set_refusal(format!(
                    "the session store's disk is full: less than {} is free \
                     (--store-reserved-space); writes are refused until space is freed",
                    mib(reserve)
                ));
            }
            self.low_space.store(true, Ordering::SeqCst);
            tracing::error!(
                free_bytes = free,
                reserve_bytes = reserve,
                "the store's disk is nearly full: writes are refused and health is NOT_SERVING \
                 until more than the reserve is free"
            );
            self.publish();
        } else if low && free >= reserve.saturating_add(reserve / 4) {
            self.low_space.store(false, Ordering::SeqCst);
            tracing::info!(
                free_bytes = free,
                "the store's disk has room again: writes are taken"
            );
            self.publish();
        }
    }

    /// The refusal for a write, while writes are refused.
    fn refusal(&self) -> Option<StoreError> {
        (self.failed.load(Ordering::SeqCst) || self.low_space.load(Ordering::SeqCst)).then(|| {
            StoreError::Unavailable(
                self.refusal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            )
        })
    }

    /// Passes `result` on, noting an I/O failure in it.
    fn watch<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            self.fail(e);
        }
        result
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, replaying the write-ahead log a
    /// crash left behind, and starts its threads.
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
            // Its name is an entry of the parent directory: durable only
            // once that is synced.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sled_dir::sync_dir(parent)?;
            }
        }
        let lock = sled_dir::lock(dir)?;
        let id = sled_dir::store_id(dir)?;
        let health = Arc::new(Health::new());
        let archive_limit = Arc::new(AtomicU64::new(0));
        let instance = SledInstance::open(
            dir,
            cache_capacity_bytes,
            on_flush.clone(),
            failure_hook(&health),
            wal::Archive::new(dir, archive_limit.clone()),
        )?;
        let store = Arc::new(Self {
            dir: dir.to_owned(),
            cache_capacity_bytes,
            on_flush,
            current: RwLock::new(Some(instance)),
            health,
            archive_limit,
            id,
            _lock: lock,
        });
        let weak = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("sessiond-recovery".to_owned())
            .spawn(move || recovery(weak))
            .map_err(|e| StoreError::Backend(format!("cannot start the recovery thread: {e}")))?;
        Ok(store)
    }

    /// Refuses writes while the disk has less than `bytes` free (0: never),
    /// checked every [`SPACE_EVERY`]. Stopping short of a full disk keeps
    /// sled from its sticky I/O error, so reads go on working and writes
    /// resume with no reopen as soon as space returns.
    pub fn set_reserved_space(&self, bytes: u64) {
        self.health.reserve.store(bytes, Ordering::Relaxed);
        if bytes == 0 {
            self.health.check_space(u64::MAX);
        }
    }

    /// Keeps flushed log segments, up to `bytes` (0: deletes them), so that
    /// a backup restored elsewhere can be brought up to the last
    /// acknowledged write (`sessiond restore --replay-log`).
    pub fn set_log_archive_size(&self, bytes: u64) {
        self.archive_limit.store(bytes, Ordering::Relaxed);
    }

    /// Hands over a sender that is dropped when the store has closed: after
    /// its last handle went, its final flush and the saved session count.
    /// The last handle may be the checkpoint thread's, mid-flush, so a
    /// process should wait for this before it exits.
    pub fn on_close(&self, closed: mpsc::Sender<()>) {
        if let Ok(instance) = self.instance() {
            instance.on_close(closed);
        }
    }

    fn instance(&self) -> Result<Arc<SledInstance>, StoreError> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                StoreError::Unavailable(
                    "the session store is being opened again after a disk failure; retry".into(),
                )
            })
    }

    /// A call that only reads; a failure names the operation `op`.
    fn read<T>(
        &self,
        op: &'static str,
        call: impl FnOnce(&SledInstance) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let instance = self.instance()?;
        self.health.watch(call(&instance).map_err(|e| e.during(op)))
    }

    /// A call that may write: refused at once while writes are refused.
    fn write<T>(
        &self,
        op: &'static str,
        call: impl FnOnce(&SledInstance) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Some(refused) = self.health.refusal() {
            return Err(refused);
        }
        self.read(op, call)
    }

    /// Closes the failed instance without flushing it and opens a new one
    /// from the disk and the log. Returns whether the store takes writes
    /// again.
    fn reopen(&self) -> bool {
        let Some(old) = self
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return self.open_again(None);
        };
        old.abandon();
        // Calls that took the old instance before it was taken out finish
        // on it; then what its log holds unsynced is synced, so that a
        // write applied before the failure is durable whichever instance
        // its caller's durability request reaches.
        let deadline = std::time::Instant::now() + CLOSE_WAIT;
        while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Err(e) = old.sync_log() {
            // Those writes are lost, and their callers are refused: their
            // durability requests reach the broken log, or no instance.
            // Give any caller between its write and its request time to
            // make it before a new instance answers requests.
            tracing::warn!(
                error = %e,
                "the failed store's log could not be synced; the writes it held are refused"
            );
            std::thread::sleep(UNSYNCED_GRACE);
        }
        // Swap the process's close signal for one of our own, to learn
        // when the old instance (held by its threads for a moment) is gone
        // and sled has let go of the files.
        let (gone, closed) = mpsc::channel();
        let kept = old.on_close(gone);
        drop(old);
        if closed.recv_timeout(CLOSE_WAIT) == Err(mpsc::RecvTimeoutError::Timeout) {
            tracing::warn!("the failed store instance did not close within 30 s");
        }
        self.open_again(kept)
    }

    /// Opens a new instance, retrying while sled's threads of the old one
    /// still hold its lock.
    fn open_again(&self, closed: Option<mpsc::Sender<()>>) -> bool {
        let deadline = std::time::Instant::now() + CLOSE_WAIT;
        let opened = loop {
            match SledInstance::open(
                &self.dir,
                self.cache_capacity_bytes,
                self.on_flush.clone(),
                failure_hook(&self.health),
                wal::Archive::new(&self.dir, self.archive_limit.clone()),
            ) {
                Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                opened => break opened,
            }
        };
        match opened {
            Ok(instance) => {
                if let Some(closed) = closed {
                    instance.on_close(closed);
                }
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(instance);
                self.health.recovered();
                tracing::info!(
                    "the store was opened again from its disk and log: writes are taken again"
                );
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "opening the store again failed; retrying");
                // The close signal must not be lost with a failed attempt:
                // without an instance to hold it, dropping it now tells the
                // process the store is closed, which it is.
                drop(closed);
                false
            }
        }
    }
}

fn failure_hook(health: &Arc<Health>) -> FailureHook {
    let health = Arc::downgrade(health);
    Arc::new(move |e| {
        if let Some(health) = health.upgrade() {
            health.fail(e);
        }
    })
}

/// Whether the disk under `dir` takes [`PROBE_BYTES`] again.
fn disk_takes_writes(dir: &Path) -> bool {
    let path = dir.join(PROBE_FILE);
    let written = File::create(&path)
        .and_then(|mut f| {
            f.write_all(&vec![0; PROBE_BYTES])?;
            f.sync_all()
        })
        .is_ok();
    let _ = std::fs::remove_file(&path);
    written
}

/// Free bytes for an unprivileged writer on the file system under `dir`.
fn free_space(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The disk-watching loop, on its own thread, until the store is dropped:
/// the free space against the reserve every [`SPACE_EVERY`], and, after an
/// I/O failure, a probe and a reopen every [`PROBE_EVERY`].
fn recovery(store: Weak<SledStore>) {
    let probe_every = PROBE_EVERY.as_millis() / SPACE_EVERY.as_millis();
    for tick in 1u128.. {
        std::thread::sleep(SPACE_EVERY);
        let Some(store) = store.upgrade() else { return };
        if store.health.reserve.load(Ordering::Relaxed) > 0
            && let Some(free) = free_space(&store.dir)
        {
            store.health.check_space(free);
        }
        if tick % probe_every == 0
            && store.health.failed.load(Ordering::SeqCst)
            && disk_takes_writes(&store.dir)
        {
            store.reopen();
        }
    }
}
