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

mod archive;
#[cfg(test)]
mod tests;

pub use self::archive::copy_since;
use self::archive::segments_size;
pub(super) use self::archive::{Archive, archive_dir};

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
