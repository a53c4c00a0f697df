//! The log archive: the segments a checkpoint made redundant, kept so that
//! a restored backup can be brought up to the last acknowledged write.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{
    io_error, remove_segments, replay_frames, segment_number, segment_path, segments, sync_dir,
    zeros_from,
};
use crate::store::StoreError;

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
pub struct Archive {
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
    pub(super) fn copy_in(&self, path: &Path, number: u64) -> Result<(), StoreError> {
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
pub(super) fn segments_size(dir: &Path) -> u64 {
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
pub(super) fn pruned(dir: &Path) -> Result<u64, StoreError> {
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
