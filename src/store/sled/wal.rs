//! A write-ahead log of the store's primary records, for cheap durability.
//!
//! Every write first lands in the backend's trees (in memory, visible to
//! reads), then its after-image (`tree`, `key`, new value or removal) is
//! appended here. A durability request writes what was appended and issues
//! one `fdatasync`; all writers queued behind it share that sync. The trees
//! themselves reach the disk later, at a checkpoint: the log moves on to a
//! fresh segment, the backend flushes, and the older segments are deleted.
//! On open, the segments left by a crash are replayed in order; replaying an
//! after-image twice is harmless, so a crash during replay is too.
//!
//! Segment files are `wal/<20-digit number>.log`, holding frames
//! `[len: u32 LE][crc32 of body: u32 LE][body]`, with body
//! `[tree: u8][op: u8][key len: u32 LE][key][value]`. Only the segment
//! written last (the newest one that is not all zeros) can end in a torn
//! frame (a crash in the middle of a write); it is dropped there, as no
//! write in it was acknowledged. A bad frame anywhere else is corruption and
//! stops the open.
//!
//! Segments are preallocated: created filled with zeros (and synced) before
//! they take writes, so that a sync overwrites blocks the file already has
//! and `fdatasync` writes the data alone, without the inode update (a second,
//! synchronous I/O) that growing the file costs. The zeros after a segment's
//! last frame are free space, not damage.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::store::StoreError;

/// The trees whose changes are logged. The numbers are part of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum TreeId {
    Sessions = 1,
    Users = 2,
    Keys = 3,
    Secrets = 4,
}

impl TreeId {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Sessions,
            2 => Self::Users,
            3 => Self::Keys,
            4 => Self::Secrets,
            _ => return None,
        })
    }
}

const OP_PUT: u8 = 1;
const OP_REMOVE: u8 = 2;
const FRAME_HEADER: usize = 8;
/// Bytes read at a time when a segment is replayed or checked for zeros.
const READ_CHUNK: usize = 256 << 10;
const BODY_HEADER: usize = 6;

/// Space preallocated for the first segment of a run.
const FIRST_SEGMENT: u64 = 1 << 20;
/// Bounds of the space preallocated for a segment: twice what the segment
/// before it took, within these.
const MIN_SEGMENT: u64 = 256 << 10;
const MAX_SEGMENT: u64 = 64 << 20;

/// One logged change: the key's new value, or its removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub tree: TreeId,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

struct Segment {
    number: u64,
    file: File,
    /// Bytes of frames written to `file` so far.
    len: u64,
    /// Bytes of zeros the segment was created with.
    allocated: u64,
    /// A write or sync of this segment failed. After a failed `fdatasync`
    /// the kernel may have dropped the pages it could not write and a later
    /// sync can still succeed, so nothing more is written behind a failure:
    /// the log takes no writes until it is opened again.
    broken: bool,
}

/// The log. `append` may be called from any thread; `sync` and `rotate`
/// serialise on the segment lock.
pub(super) struct Wal {
    dir: PathBuf,
    /// Frames appended but not yet written to the segment file.
    pending: Mutex<Vec<u8>>,
    segment: Mutex<Segment>,
    /// Held through a rotation, which prepares the next segment before it
    /// takes the segment lock.
    rotation: Mutex<()>,
}

/// What [`Wal::open`] found: the log, ready for appends, and the segments
/// replayed from a previous run, to delete once the backend has flushed.
pub(super) struct Opened {
    pub wal: Wal,
    pub replayed: Vec<PathBuf>,
    /// How many entries they held.
    pub entries: usize,
}

impl Wal {
    /// Opens the log in `dir` (created when missing), hands every entry of
    /// the segments found there to `replay`, oldest first, and starts a new
    /// segment for this run.
    pub fn open(
        dir: &Path,
        replay: &mut dyn FnMut(Entry) -> Result<(), StoreError>,
    ) -> Result<Opened, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io_error("cannot create", dir, e))?;
        let found = segments(dir)?;
        let last = found.last().map(|(n, _)| *n);
        // The segment written last is the newest one holding anything but
        // zeros: a crash can come after the next segment was preallocated
        // and before it took a write, while a write to this one was torn.
        // Found newest first; the segments after it hold nothing to replay.
        // Segments are read in pieces, never whole: a preallocated one is
        // mostly zeros, up to MAX_SEGMENT of them.
        let mut replay_end = 0;
        let mut entries = 0;
        for (i, (_, path)) in found.iter().enumerate().rev() {
            if !zeros_from(path, 0)? {
                replay_end = i + 1;
                break;
            }
        }
        for (i, (_, path)) in found.iter().enumerate().take(replay_end) {
            let intact = replay_frames(path, &mut |entry| {
                entries += 1;
                replay(entry)
            })?;
            if zeros_from(path, intact)? {
                // Every frame intact; what follows is preallocated space.
                continue;
            }
            if i + 1 != replay_end {
                return Err(StoreError::Corrupt(format!(
                    "write-ahead log segment {} has a damaged frame",
                    path.display()
                )));
            }
            // Cut the torn frame off, so that once newer segments exist
            // this one does not look damaged.
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| {
                    f.set_len(intact)?;
                    f.sync_all()
                })
                .map_err(|e| io_error("cannot truncate", path, e))?;
            tracing::warn!(
                segment = %path.display(),
                "dropped a torn frame at the end of the write-ahead log (an unacknowledged write)"
            );
        }
        // Numbers go on from the newest segment, archived ones included, so
        // that a backup's position in the log stays meaningful.
        let archived = match dir.parent().map(archive_dir) {
            Some(archive) if archive.exists() => segments(&archive)?.last().map(|(n, _)| *n),
            _ => None,
        };
        let number = last.max(archived).map_or(1, |n| n + 1);
        let segment = create_segment(dir, number, FIRST_SEGMENT)?;
        Ok(Opened {
            wal: Wal {
                dir: dir.to_owned(),
                pending: Mutex::new(Vec::with_capacity(64 * 1024)),
                segment: Mutex::new(segment),
                rotation: Mutex::new(()),
            },
            replayed: found.into_iter().map(|(_, p)| p).collect(),
            entries,
        })
    }

    /// Queues a change; it is on disk after the next [`Wal::sync`].
    pub fn append(&self, tree: TreeId, key: &[u8], value: Option<&[u8]>) {
        let body_len = BODY_HEADER + key.len() + value.map_or(0, <[u8]>::len);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let start = pending.len();
        pending.extend_from_slice(&(body_len as u32).to_le_bytes());
        pending.extend_from_slice(&[0; 4]);
        pending.push(tree as u8);
        pending.push(if value.is_some() { OP_PUT } else { OP_REMOVE });
        pending.extend_from_slice(&(key.len() as u32).to_le_bytes());
        pending.extend_from_slice(key);
        if let Some(v) = value {
            pending.extend_from_slice(v);
        }
        let crc = crc32fast::hash(&pending[start + FRAME_HEADER..]);
        pending[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    }

    /// Writes every appended change and waits for the disk (blocking).
    /// Returns at once when nothing was appended since the last sync.
    pub fn sync(&self) -> std::io::Result<()> {
        let mut segment = self.segment.lock().unwrap_or_else(|e| e.into_inner());
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if segment.broken {
            return Err(std::io::Error::other(
                "an earlier write or sync of the write-ahead log failed; \
                 it takes no more writes until the store is opened again",
            ));
        }
        if batch.is_empty() {
            return Ok(());
        }
        // Into the preallocated space; past it the file grows, which is
        // slower but just as durable.
        let written = segment
            .file
            .write_all_at(&batch, segment.len)
            .and_then(|()| segment.file.sync_data());
        if let Err(e) = written {
            segment.broken = true;
            return Err(e);
        }
        segment.len += batch.len() as u64;
        // Hand the buffer back so appends reuse its capacity.
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.is_empty() {
            let mut batch = batch;
            batch.clear();
            *pending = batch;
        }
        Ok(())
    }

    /// Where the log stands: the current segment's number and length.
    pub fn position(&self) -> (u64, u64) {
        let segment = self.segment.lock().unwrap_or_else(|e| e.into_inner());
        (segment.number, segment.len)
    }

    /// True once the current segment has used half its preallocated space
    /// (or has none): rotating no sooner keeps the zeros written ahead of
    /// the log in proportion to what is logged, however slowly it fills.
    pub fn wants_rotation(&self) -> bool {
        let segment = self.segment.lock().unwrap_or_else(|e| e.into_inner());
        segment.len > 0 && segment.len.saturating_mul(2) >= segment.allocated
    }

    /// Starts a new segment; returns the path of the one it replaces. Every
    /// entry in that segment was applied to the backend before this call,
    /// so once the backend has flushed after it, the old segment can go.
    pub fn rotate(&self) -> Result<PathBuf, StoreError> {
        let _rotation = self.rotation.lock().unwrap_or_else(|e| e.into_inner());
        let (number, used) = {
            let segment = self.segment.lock().unwrap_or_else(|e| e.into_inner());
            (segment.number, segment.len)
        };
        // Zero-filled and synced while writers go on syncing the current
        // segment; the swap below is all they wait for.
        let size = used.saturating_mul(2).clamp(MIN_SEGMENT, MAX_SEGMENT);
        let mut next = create_segment(&self.dir, number + 1, size)?;
        let mut segment = self.segment.lock().unwrap_or_else(|e| e.into_inner());
        // A broken log stays broken: frames behind a failed write would
        // make its torn end look like damage to the next open.
        next.broken = segment.broken;
        let old = std::mem::replace(&mut *segment, next);
        Ok(segment_path(&self.dir, old.number))
    }

    /// Retires every segment for a clean close, after the backend has
    /// flushed everything that was appended. The current one stays behind
    /// emptied (its frames archived first, when archiving): it carries the
    /// numbering over to the next open, whose new segment follows it.
    pub fn close(&self, archive: &Archive) -> Result<(), StoreError> {
        let segment = self.segment.lock().unwrap_or_else(|e| e.into_inner());
        let older: Vec<PathBuf> = segments(&self.dir)?
            .into_iter()
            .filter(|(n, _)| *n != segment.number)
            .map(|(_, p)| p)
            .collect();
        archive.retire(&older)?;
        let path = segment_path(&self.dir, segment.number);
        archive.copy_in(&path, segment.number)?;
        segment
            .file
            .set_len(0)
            .and_then(|()| segment.file.sync_all())
            .map_err(|e| io_error("cannot empty", &path, e))
    }

    /// Bytes the log occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        segments_size(&self.dir)
    }
}

/// The log archive, `<data-dir>/wal-archive`: where segments whose entries
/// the backend has made durable go instead of being deleted, so that a
/// backup restored elsewhere can be brought up to the last acknowledged
/// write by replaying them ([`copy_since`]). Each segment is trimmed to its
/// frames. The archive is kept under `max_bytes` by deleting its oldest
/// segments, and trimmed to what the last two backups need; the highest
/// number ever deleted from it is kept in `pruned`, so that a replay can
/// tell a complete log from one with a hole. With `max_bytes` 0 segments
/// are deleted, not archived.
#[derive(Clone)]
pub(super) struct Archive {
    dir: PathBuf,
    max_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The archive's record of the highest segment number it deleted.
const PRUNED: &str = "pruned";

impl Archive {
    /// The archive of the data directory `data_dir`, archiving while
    /// `max_bytes` (shared, changeable) is above 0.
    pub fn new(data_dir: &Path, max_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self {
            dir: archive_dir(data_dir),
            max_bytes,
        }
    }

    fn limit(&self) -> u64 {
        self.max_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Archives (or, with archiving off, deletes) segments whose entries
    /// the backend has made durable. Empty segments are deleted.
    pub fn retire(&self, paths: &[PathBuf]) -> Result<(), StoreError> {
        if self.limit() == 0 {
            return remove_segments(paths);
        }
        let mut moved = false;
        for path in paths {
            let Some(number) = segment_number(path) else {
                continue;
            };
            let frames = match replay_frames(path, &mut |_| Ok(())) {
                Ok(n) => n,
                Err(StoreError::Io(_)) if !path.exists() => continue,
                Err(e) => return Err(e),
            };
            if frames == 0 {
                remove_segments(std::slice::from_ref(path))?;
                continue;
            }
            self.make_dir()?;
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| {
                    f.set_len(frames)?;
                    f.sync_all()
                })
                .map_err(|e| io_error("cannot trim", path, e))?;
            let to = segment_path(&self.dir, number);
            fs::rename(path, &to).map_err(|e| io_error("cannot archive", path, e))?;
            moved = true;
        }
        if moved {
            sync_dir(&self.dir)?;
            if let Some(parent) = paths.first().and_then(|p| p.parent()) {
                sync_dir(parent)?;
            }
            self.keep_under_limit()?;
        }
        Ok(())
    }

    /// Copies the frames of the segment at `path` into the archive as
    /// segment `number` (for the current segment at a clean close).
    fn copy_in(&self, path: &Path, number: u64) -> Result<(), StoreError> {
        if self.limit() == 0 {
            return Ok(());
        }
        let frames = replay_frames(path, &mut |_| Ok(()))?;
        if frames == 0 {
            return Ok(());
        }
        self.make_dir()?;
        let mut bytes = vec![0; frames as usize];
        File::open(path)
            .and_then(|f| f.read_exact_at(&mut bytes, 0))
            .map_err(|e| io_error("cannot read", path, e))?;
        let to = segment_path(&self.dir, number);
        let partial = to.with_extension("partial");
        File::create(&partial)
            .and_then(|mut f| {
                f.write_all(&bytes)?;
                f.sync_all()
            })
            .map_err(|e| io_error("cannot write", &partial, e))?;
        fs::rename(&partial, &to).map_err(|e| io_error("cannot archive", &to, e))?;
        sync_dir(&self.dir)?;
        self.keep_under_limit()
    }

    fn make_dir(&self) -> Result<(), StoreError> {
        fs::create_dir_all(&self.dir).map_err(|e| io_error("cannot create", &self.dir, e))
    }

    /// Deletes the oldest segments until the archive is within its limit.
    fn keep_under_limit(&self) -> Result<(), StoreError> {
        let found = segments(&self.dir)?;
        let sizes: Vec<u64> = found
            .iter()
            .map(|(_, p)| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .collect();
        let mut total: u64 = sizes.iter().sum();
        let mut cut = 0;
        while total > self.limit() && cut + 1 < found.len() {
            total -= sizes[cut];
            cut += 1;
        }
        if cut > 0 {
            tracing::warn!(
                removed_through = found[cut - 1].0,
                "the write-ahead log archive reached --log-archive-size and its oldest segments \
                 were removed: a backup older than them can no longer be brought up to date \
                 with --replay-log; take a backup"
            );
            self.remove_through(found[cut - 1].0)?;
        }
        Ok(())
    }

    /// Deletes the archived segments numbered below `number`: those no
    /// backup still needs (see the store's backup bookkeeping).
    pub fn prune_below(&self, number: u64) -> Result<(), StoreError> {
        if number == 0 || !self.dir.exists() {
            return Ok(());
        }
        self.remove_through(number - 1)
    }

    fn remove_through(&self, last: u64) -> Result<(), StoreError> {
        // The record first: a crash between the two leaves it claiming a
        // hole that is not there yet, never the reverse.
        if last > pruned(&self.dir)? {
            let record = self.dir.join(PRUNED);
            let partial = record.with_extension("partial");
            fs::write(&partial, last.to_string())
                .and_then(|()| File::open(&partial)?.sync_all())
                .and_then(|()| fs::rename(&partial, &record))
                .map_err(|e| io_error("cannot write", &record, e))?;
            sync_dir(&self.dir)?;
        }
        let doomed: Vec<PathBuf> = segments(&self.dir)?
            .into_iter()
            .filter(|(n, _)| *n <= last)
            .map(|(_, p)| p)
            .collect();
        remove_segments(&doomed)
    }

    /// Bytes the archive occupies.
    pub fn size_on_disk(&self) -> u64 {
        segments_size(&self.dir)
    }
}

/// Bytes the segments in `dir` occupy (0 when it does not exist).
fn segments_size(dir: &Path) -> u64 {
    segments(dir)
        .map(|found| {
            found
                .iter()
                .filter_map(|(_, p)| fs::metadata(p).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The log archive of the data directory `data_dir`.
pub fn archive_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal-archive")
}

/// The highest segment number deleted from the archive in `dir` (0: none).
fn pruned(dir: &Path) -> Result<u64, StoreError> {
    let record = dir.join(PRUNED);
    match fs::read_to_string(&record) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("{} is not a number", record.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_error("cannot read", &record, e)),
    }
}

/// Copies the log of the data directory `data_dir` from segment `from` on
/// (archived segments, then the live ones) into the log directory `wal_dir`
/// of another, whose next open replays them. Refuses when segments since
/// `from` were deleted from the archive. Returns how many were copied.
pub fn copy_since(data_dir: &Path, from: u64, wal_dir: &Path) -> Result<usize, StoreError> {
    let archive = archive_dir(data_dir);
    if archive.exists() {
        let gone = pruned(&archive)?;
        if gone >= from {
            return Err(StoreError::Backend(format!(
                "the log archive in {} no longer reaches back to this backup: its segments \
                 up to {gone} were removed, and the backup needs them from {from} on",
                archive.display()
            )));
        }
    }
    let mut found = Vec::new();
    for dir in [archive, data_dir.join("wal")] {
        if dir.exists() {
            found.extend(segments(&dir)?.into_iter().filter(|(n, _)| *n >= from));
        }
    }
    found.sort();
    found.dedup_by_key(|(n, _)| *n);
    // Segments that never took a write hold nothing to replay.
    let mut kept = Vec::with_capacity(found.len());
    for (number, path) in found {
        if !zeros_from(&path, 0)? {
            kept.push((number, path));
        }
    }
    let found = kept;
    fs::create_dir_all(wal_dir).map_err(|e| io_error("cannot create", wal_dir, e))?;
    for (number, path) in &found {
        let to = segment_path(wal_dir, *number);
        fs::copy(path, &to).map_err(|e| io_error("cannot copy", path, e))?;
        File::open(&to)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error("cannot sync", &to, e))?;
    }
    sync_dir(wal_dir)?;
    Ok(found.len())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot sync", dir, e))
}

fn segment_number(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Deletes segments whose entries the backend has made durable.
pub(super) fn remove_segments(paths: &[PathBuf]) -> Result<(), StoreError> {
    for path in paths {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("cannot remove", path, e)),
        }
    }
    Ok(())
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.log"))
}

/// Creates segment `number` with `size` bytes of zeros, on disk with its
/// name before it is returned. Should the zeros not fit (a full disk), the
/// segment starts empty and grows as segments did before preallocation:
/// refusing it would stop the checkpoints that free the disk.
fn create_segment(dir: &Path, number: u64, size: u64) -> Result<Segment, StoreError> {
    create_segment_with(dir, number, size, preallocate)
}

fn create_segment_with(
    dir: &Path,
    number: u64,
    size: u64,
    fill: fn(&File, u64) -> std::io::Result<()>,
) -> Result<Segment, StoreError> {
    let path = segment_path(dir, number);
    let open = || {
        OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("cannot create", &path, e))
    };
    let mut file = open()?;
    let mut allocated = size;
    if let Err(e) = fill(&file, size) {
        tracing::warn!(
            segment = %path.display(),
            error = %e,
            "cannot preallocate a write-ahead log segment; it grows as it is written"
        );
        drop(file);
        fs::remove_file(&path).map_err(|e| io_error("cannot remove", &path, e))?;
        file = open()?;
        allocated = 0;
    }
    // The new name must survive a crash before anything acknowledged is
    // written under it.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot sync", dir, e))?;
    Ok(Segment {
        number,
        file,
        len: 0,
        allocated,
        broken: false,
    })
}

/// Fills `file` with `size` zero bytes and syncs it. Zeros written, not a
/// sparse `set_len` or `fallocate`: writing into a hole or an unwritten
/// extent changes the inode just as growing the file does.
fn preallocate(mut file: &File, size: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 64 << 10];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut found = Vec::new();
    for item in fs::read_dir(dir).map_err(|e| io_error("cannot list", dir, e))? {
        let item = item.map_err(|e| io_error("cannot list", dir, e))?;
        let name = item.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((number, item.path()));
    }
    found.sort();
    Ok(found)
}

/// Hands each intact frame of the segment at `path` to `replay`, in order;
/// returns how many bytes from the start were intact frames (it stops at
/// the first frame that is not: a torn write, damage, or the zeros of
/// preallocated space).
fn replay_frames(
    path: &Path,
    replay: &mut dyn FnMut(Entry) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let io = |e| io_error("cannot read", path, e);
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::with_capacity(READ_CHUNK, file);
    let mut at = 0u64;
    let mut body = Vec::new();
    while len - at >= FRAME_HEADER as u64 {
        let mut header = [0u8; FRAME_HEADER];
        reader.read_exact(&mut header).map_err(io)?;
        let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
        let body_len = u64::from(u32::from_le_bytes([l0, l1, l2, l3]));
        // A length running past the end is a torn or damaged header: stop
        // before allocating for it.
        if body_len > len - at - FRAME_HEADER as u64 {
            break;
        }
        body.resize(body_len as usize, 0);
        reader.read_exact(&mut body).map_err(io)?;
        if crc32fast::hash(&body) != u32::from_le_bytes([c0, c1, c2, c3]) {
            break;
        }
        let Some(entry) = parse_body(&body) else {
            break;
        };
        replay(entry)?;
        at += FRAME_HEADER as u64 + body_len;
    }
    Ok(at)
}

/// Whether the file at `path` holds only zeros from `offset` to its end.
fn zeros_from(path: &Path, offset: u64) -> Result<bool, StoreError> {
    let io = |e| io_error("cannot read", path, e);
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = match file.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            return Ok(true);
        }
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

fn parse_body(body: &[u8]) -> Option<Entry> {
    let tree = TreeId::from_byte(*body.first()?)?;
    let op = *body.get(1)?;
    let key_len = u32::from_le_bytes(body.get(2..BODY_HEADER)?.try_into().ok()?) as usize;
    let key = body
        .get(BODY_HEADER..BODY_HEADER.checked_add(key_len)?)?
        .to_vec();
    let rest = &body[BODY_HEADER + key_len..];
    let value = match op {
        OP_PUT => Some(rest.to_vec()),
        OP_REMOVE if rest.is_empty() => None,
        _ => return None,
    };
    Some(Entry { tree, key, value })
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::io(format_args!("{what} {}", path.display()), &e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(dir: &Path) -> (Opened, Vec<Entry>) {
        let mut seen = Vec::new();
        let opened = Wal::open(dir, &mut |e| {
            seen.push(e);
            Ok(())
        })
        .unwrap();
        (opened, seen)
    }

    /// Logs `entries` as puts in a new log in `dir`, syncs and closes it;
    /// returns the length of segment 1.
    fn logged(dir: &Path, entries: &[(TreeId, &str, &str)]) -> u64 {
        let wal = collect(dir).0.wal;
        for (tree, key, value) in entries {
            wal.append(*tree, key.as_bytes(), Some(value.as_bytes()));
        }
        wal.sync().unwrap();
        wal.position().1
    }

    /// Damages segment 1: the byte at `at` xor `mask`.
    fn flip(dir: &Path, at: usize, mask: u8) {
        let path = segment_path(dir, 1);
        let mut bytes = fs::read(&path).unwrap();
        bytes[at] ^= mask;
        fs::write(&path, bytes).unwrap();
    }

    fn put(tree: TreeId, key: &str, value: &str) -> Entry {
        Entry {
            tree,
            key: key.as_bytes().to_vec(),
            value: Some(value.as_bytes().to_vec()),
        }
    }

    #[test]
    fn synced_entries_are_replayed_in_order_and_unsynced_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (opened, seen) = collect(dir.path());
        assert!(seen.is_empty());
        let wal = opened.wal;
        wal.append(TreeId::Sessions, b"h1", Some(b"one"));
        wal.append(TreeId::Users, b"u1", Some(b""));
        wal.append(TreeId::Sessions, b"h1", None);
        wal.sync().unwrap();
        wal.append(TreeId::Keys, b"never-synced", Some(b"x"));
        drop(wal);

        let (opened, seen) = collect(dir.path());
        assert_eq!(
            seen,
            vec![
                put(TreeId::Sessions, "h1", "one"),
                put(TreeId::Users, "u1", ""),
                Entry {
                    tree: TreeId::Sessions,
                    key: b"h1".to_vec(),
                    value: None
                },
            ]
        );
        assert_eq!(opened.replayed.len(), 1);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_stays_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let len = logged(
            dir.path(),
            &[
                (TreeId::Secrets, "a", "kept"),
                (TreeId::Secrets, "b", "torn"),
            ],
        );
        let path = segment_path(dir.path(), 1);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 2)
            .unwrap();

        let (opened, seen) = collect(dir.path());
        assert_eq!(seen, vec![put(TreeId::Secrets, "a", "kept")]);
        // Segment 1 is no longer the newest once segment 2 holds data; it
        // was truncated to its intact frames, so it still opens.
        opened.wal.append(TreeId::Secrets, b"c", Some(b"later"));
        opened.wal.sync().unwrap();
        drop(opened);
        let seen = collect(dir.path()).1;
        assert_eq!(
            seen,
            vec![
                put(TreeId::Secrets, "a", "kept"),
                put(TreeId::Secrets, "c", "later")
            ]
        );
    }

    #[test]
    fn values_ending_in_zeros_and_segments_larger_than_a_read_are_replayed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let wal = collect(dir.path()).0.wal;
        // Frames spanning several reads, the last value ending in zeros
        // (as a record's big-endian expiry can), before preallocated zeros.
        let big = vec![7u8; READ_CHUNK + 100];
        let zeros_at_the_end = [1u8, 0, 0, 0, 0];
        wal.append(TreeId::Sessions, b"big", Some(&big));
        wal.append(TreeId::Sessions, b"z", Some(&zeros_at_the_end));
        wal.sync().unwrap();
        drop(wal);
        let path = segment_path(dir.path(), 1);
        let before = fs::metadata(&path).unwrap().len();
        let seen = collect(dir.path()).1;
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            before,
            "nothing taken for a torn frame"
        );
        assert_eq!(
            seen,
            vec![
                Entry {
                    tree: TreeId::Sessions,
                    key: b"big".to_vec(),
                    value: Some(big),
                },
                Entry {
                    tree: TreeId::Sessions,
                    key: b"z".to_vec(),
                    value: Some(zeros_at_the_end.to_vec()),
                },
            ]
        );
    }

    #[test]
    fn a_torn_header_claiming_a_huge_frame_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let len = logged(dir.path(), &[(TreeId::Secrets, "a", "kept")]);
        // A header torn into a length of 4 GiB, in the segment written last.
        let path = segment_path(dir.path(), 1);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4], len)
            .unwrap();
        drop(file);
        let seen = collect(dir.path()).1;
        assert_eq!(seen, vec![put(TreeId::Secrets, "a", "kept")]);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            len,
            "cut at the last intact frame"
        );
    }

    /// Writes one non-zero byte into segment `n` at `at`.
    fn poke(dir: &Path, n: u64, at: u64) {
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir, n))
            .unwrap();
        file.write_all_at(&[0x5a], at).unwrap();
    }

    #[test]
    fn bytes_past_the_first_read_count_as_written() {
        // In the segment written last: a torn write, cut off.
        let dir = tempfile::tempdir().unwrap();
        let len = logged(dir.path(), &[(TreeId::Secrets, "a", "kept")]);
        poke(dir.path(), 1, len + READ_CHUNK as u64 + 1);
        let (opened, seen) = collect(dir.path());
        assert_eq!(seen, vec![put(TreeId::Secrets, "a", "kept")]);
        let segment_1 = segment_path(dir.path(), 1);
        assert_eq!(fs::metadata(&segment_1).unwrap().len(), len, "cut off");

        // A segment whose only written byte lies past the first read is
        // still the one written last (a torn write whose later sector
        // landed): segment 2 is cut to nothing, segment 1 replayed whole.
        drop(opened);
        poke(dir.path(), 2, READ_CHUNK as u64 + 10);
        let (opened, seen) = collect(dir.path());
        assert_eq!(seen, vec![put(TreeId::Secrets, "a", "kept")]);
        let segment_2 = segment_path(dir.path(), 2);
        assert_eq!(fs::metadata(&segment_2).unwrap().len(), 0, "cut off");

        // Before the segment written last, the same byte is damage.
        opened.wal.append(TreeId::Secrets, b"b", Some(b"later"));
        opened.wal.sync().unwrap();
        drop(opened);
        poke(dir.path(), 1, len + READ_CHUNK as u64 + 1);
        let err = Wal::open(dir.path(), &mut |_| Ok(())).err().unwrap();
        assert!(matches!(err, StoreError::Corrupt(m) if m.contains("damaged frame")));
    }

    #[test]
    fn damage_before_the_newest_segment_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let wal = collect(dir.path()).0.wal;
        wal.append(TreeId::Keys, b"k1", Some(b"1"));
        wal.append(TreeId::Keys, b"k2", Some(b"2"));
        wal.sync().unwrap();
        wal.rotate().unwrap();
        wal.append(TreeId::Keys, b"k3", Some(b"3"));
        wal.sync().unwrap();
        drop(wal);
        flip(dir.path(), FRAME_HEADER + 1, 0x40);
        let err = Wal::open(dir.path(), &mut |_| Ok(())).err().unwrap();
        assert!(matches!(err, StoreError::Corrupt(m) if m.contains("damaged frame")));
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let len = logged(dir.path(), &[(TreeId::Keys, "k", "value")]);
        flip(dir.path(), len as usize - 1, 1);
        assert!(collect(dir.path()).1.is_empty());
    }

    /// A crash while the next segment is being prepared can leave a torn
    /// write in the current one and a newer segment of zeros only.
    #[test]
    fn a_torn_tail_before_a_never_written_segment_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let len = logged(
            dir.path(),
            &[(TreeId::Keys, "k1", "kept"), (TreeId::Keys, "k2", "torn")],
        );
        flip(dir.path(), len as usize - 1, 0xff);
        create_segment(dir.path(), 2, MIN_SEGMENT).unwrap();

        let (opened, seen) = collect(dir.path());
        assert_eq!(seen, vec![put(TreeId::Keys, "k1", "kept")]);
        drop(opened);
        // Once cut, segment 1 opens cleanly behind newer segments.
        assert_eq!(collect(dir.path()).1, vec![put(TreeId::Keys, "k1", "kept")]);
    }

    #[test]
    fn a_segment_that_cannot_be_preallocated_starts_empty_and_grows() {
        let dir = tempfile::tempdir().unwrap();
        let wal = collect(dir.path()).0.wal;
        let full_disk: fn(&File, u64) -> std::io::Result<()> = |file, _| {
            // Some zeros made it before the disk filled up.
            let mut file = file;
            file.write_all(&[0; 100])?;
            Err(std::io::Error::other("no space left on device"))
        };
        let segment = create_segment_with(dir.path(), 2, MIN_SEGMENT, full_disk).unwrap();
        assert_eq!(segment.allocated, 0);
        let path = segment_path(dir.path(), 2);
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        // The log goes on in it.
        *wal.segment.lock().unwrap() = segment;
        wal.append(TreeId::Keys, b"k", Some(b"v"));
        wal.sync().unwrap();
        assert!(wal.wants_rotation());
        drop(wal);
        assert_eq!(collect(dir.path()).1, vec![put(TreeId::Keys, "k", "v")]);
    }

    #[test]
    fn a_failed_write_breaks_the_log_until_it_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let wal = collect(dir.path()).0.wal;
        wal.append(TreeId::Keys, b"before", Some(b"1"));
        wal.sync().unwrap();
        // The segment's file handle now refuses writes, as a full disk or a
        // failing device would.
        let path = segment_path(dir.path(), 1);
        let writable = std::mem::replace(
            &mut wal.segment.lock().unwrap().file,
            File::open(&path).unwrap(),
        );
        wal.append(TreeId::Keys, b"refused", Some(b"2"));
        assert!(wal.sync().is_err());
        // Writable again, it still takes nothing, rotation included: a sync
        // after a failed one proves nothing about the pages before it.
        wal.segment.lock().unwrap().file = writable;
        wal.append(TreeId::Keys, b"after", Some(b"3"));
        let refused = wal.sync().unwrap_err().to_string();
        assert!(refused.contains("opened again"), "{refused}");
        wal.rotate().unwrap();
        wal.append(TreeId::Keys, b"rotated", Some(b"4"));
        assert!(wal.sync().is_err());
        drop(wal);
        // Opened again: what was synced before the failure, nothing after,
        // and a log that takes writes.
        let (opened, replayed) = collect(dir.path());
        assert_eq!(replayed, [put(TreeId::Keys, "before", "1")]);
        opened.wal.append(TreeId::Keys, b"next", Some(b"5"));
        opened.wal.sync().unwrap();
    }

    fn archive_in(data: &Path, limit: u64) -> Archive {
        Archive::new(
            data,
            std::sync::Arc::new(std::sync::atomic::AtomicU64::new(limit)),
        )
    }

    #[test]
    fn flushed_segments_are_archived_trimmed_and_replayed_into_another_log() {
        let data = tempfile::tempdir().unwrap();
        let live = data.path().join("wal");
        let archive = archive_in(data.path(), 1 << 30);
        let wal = collect(&live).0.wal;
        wal.append(TreeId::Keys, b"k1", Some(b"1"));
        wal.sync().unwrap();
        let first = wal.rotate().unwrap();
        wal.append(TreeId::Keys, b"k2", Some(b"2"));
        wal.sync().unwrap();
        archive.retire(&[first]).unwrap();
        // Trimmed to its frames: the preallocated zeros are not kept.
        let archived = segment_path(&archive_dir(data.path()), 1);
        assert!(fs::metadata(&archived).unwrap().len() < 64);
        // A clean close archives the current segment too, and leaves it
        // behind empty, so that numbering goes on past the archive.
        wal.close(&archive).unwrap();
        drop(wal);
        let (opened, replayed) = collect(&live);
        assert!(replayed.is_empty());
        assert_eq!(opened.wal.position().0, 3);
        archive.retire(&opened.replayed).unwrap();

        // Another data directory gets the log from segment 1 on, and its
        // open replays every entry in order.
        let other = tempfile::tempdir().unwrap();
        let copied = copy_since(data.path(), 1, &other.path().join("wal")).unwrap();
        assert_eq!(copied, 2);
        let (_, replayed) = collect(&other.path().join("wal"));
        assert_eq!(
            replayed,
            [put(TreeId::Keys, "k1", "1"), put(TreeId::Keys, "k2", "2")]
        );
        // From segment 2 on: only what came after.
        let third = tempfile::tempdir().unwrap();
        copy_since(data.path(), 2, &third.path().join("wal")).unwrap();
        assert_eq!(
            collect(&third.path().join("wal")).1,
            [put(TreeId::Keys, "k2", "2")]
        );
    }

    #[test]
    fn an_archive_past_its_limit_or_a_backup_drops_its_oldest_and_says_so() {
        let data = tempfile::tempdir().unwrap();
        let live = data.path().join("wal");
        let limit = 3 * 1024;
        let archive = archive_in(data.path(), limit);
        let wal = collect(&live).0.wal;
        for i in 0..6 {
            wal.append(
                TreeId::Keys,
                format!("k{i}").as_bytes(),
                Some(&[b'v'; 1000]),
            );
            wal.sync().unwrap();
            let retired = wal.rotate().unwrap();
            archive.retire(&[retired]).unwrap();
        }
        assert!(archive.size_on_disk() <= limit);
        let gone = pruned(&archive_dir(data.path())).unwrap();
        assert!(gone >= 3, "the oldest segments went: {gone}");
        // A replay from a position the archive no longer reaches is refused.
        let other = tempfile::tempdir().unwrap();
        let refused = copy_since(data.path(), 1, &other.path().join("wal")).unwrap_err();
        assert!(
            refused.to_string().contains("no longer reaches back"),
            "{refused}"
        );
        copy_since(data.path(), gone + 1, &other.path().join("wal")).unwrap();
        // A backup at segment 6 lets segments before 6 go.
        archive.prune_below(6).unwrap();
        assert_eq!(pruned(&archive_dir(data.path())).unwrap(), 5);
        // With archiving off, flushed segments are deleted.
        let off = archive_in(data.path(), 0);
        wal.append(TreeId::Keys, b"k", Some(b"v"));
        wal.sync().unwrap();
        let retired = wal.rotate().unwrap();
        off.retire(std::slice::from_ref(&retired)).unwrap();
        assert!(!retired.exists());
        assert!(!segment_path(&archive_dir(data.path()), 7).exists());
    }

    #[test]
    fn rotation_waits_for_half_the_preallocated_space() {
        let dir = tempfile::tempdir().unwrap();
        let wal = collect(dir.path()).0.wal;
        assert!(!wal.wants_rotation(), "an empty segment needs no rotation");
        wal.append(TreeId::Keys, b"small", Some(b"1"));
        wal.sync().unwrap();
        assert!(!wal.wants_rotation());
        let half = vec![b'v'; FIRST_SEGMENT as usize / 2];
        wal.append(TreeId::Keys, b"big", Some(&half));
        wal.sync().unwrap();
        assert!(wal.wants_rotation());
        wal.rotate().unwrap();
        assert!(!wal.wants_rotation());
    }

    #[test]
    fn segments_are_preallocated_and_their_free_space_is_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let wal = collect(dir.path()).0.wal;
        let first = segment_path(dir.path(), 1);
        assert_eq!(fs::metadata(&first).unwrap().len(), FIRST_SEGMENT);
        wal.append(TreeId::Keys, b"k1", Some(b"1"));
        wal.sync().unwrap();
        // A sync writes into the zeros; the file does not grow.
        assert_eq!(fs::metadata(&first).unwrap().len(), FIRST_SEGMENT);
        wal.rotate().unwrap();
        let second = segment_path(dir.path(), 2);
        assert_eq!(fs::metadata(&second).unwrap().len(), MIN_SEGMENT);
        // A batch larger than the space left grows the file.
        let big = vec![b'v'; MIN_SEGMENT as usize];
        wal.append(TreeId::Keys, b"k2", Some(&big));
        wal.sync().unwrap();
        assert!(fs::metadata(&second).unwrap().len() > MIN_SEGMENT);
        let grown = wal.position().1;
        wal.rotate().unwrap();
        assert_eq!(
            fs::metadata(segment_path(dir.path(), 3)).unwrap().len(),
            (grown * 2).clamp(MIN_SEGMENT, MAX_SEGMENT)
        );
        drop(wal);
        // Segment 1, no longer the newest, ends in zeros: it opens, and
        // every entry comes back.
        let seen = collect(dir.path()).1;
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], put(TreeId::Keys, "k1", "1"));
        assert_eq!(seen[1].value.as_deref(), Some(big.as_slice()));
    }

    #[test]
    fn rotation_leaves_older_segments_to_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let wal = collect(dir.path()).0.wal;
        wal.append(TreeId::Keys, b"k1", Some(b"1"));
        wal.sync().unwrap();
        let old = wal.rotate().unwrap();
        wal.append(TreeId::Keys, b"k2", Some(b"2"));
        wal.sync().unwrap();
        assert!(wal.position().1 > 0);
        remove_segments(&[old]).unwrap();
        drop(wal);
        assert_eq!(collect(dir.path()).1, vec![put(TreeId::Keys, "k2", "2")]);
    }
}
