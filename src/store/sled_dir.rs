//! The data directory before sled opens it: sessiond's own lock, and the
//! leftovers of interrupted writes that sled 0.34.7 mishandles.
//!
//! - **Partial snapshots.** sled writes a snapshot (its page table, a cache
//!   of its log) to `snap.<lsn>.generating`, syncs it and renames it to
//!   `snap.<lsn>`. Its listing of snapshots does not skip the `.generating`
//!   name, and it reopens such a file without truncating it, so a file that
//!   a crash left mid-write is taken for the newest snapshot, fails its
//!   checksum, and the store refuses to open ("corrupt snapshot file found",
//!   sled #1527 and #1533; the fix proposed upstream, #1389, was never
//!   merged). Every `.generating` file present before sled opens is such a
//!   leftover, and is removed.
//! - **A damaged snapshot.** A finished snapshot that fails its checksum
//!   anyway (a disk that tore or lost it) leaves the log it caches intact,
//!   and sled rebuilds its page table from the log when there is no
//!   snapshot. So a snapshot that fails the same check sled makes is moved
//!   to `quarantine/<ms since epoch>/` before sled opens. A sound one is
//!   never moved: were sled's log the damaged part, opening without the
//!   snapshot would succeed with whatever little the log still holds, and
//!   lose the rest without a word.
//!
//! Both repairs need the directory to be this process's alone, and sled
//! takes its own lock only inside `open`: sessiond's lock
//! (`sessiond.lock`, an advisory lock on a file of its own) is taken first
//! and held for as long as the store is open.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::StoreError;

/// The lock file in the data directory.
const LOCK_FILE: &str = "sessiond.lock";
/// The file naming the store, so that its log is never replayed into a
/// backup of another store.
const STORE_ID_FILE: &str = "store-id";
/// Where damaged snapshots are moved.
const QUARANTINE: &str = "quarantine";

/// Takes sessiond's lock on `dir` (which must exist), or says who holds it.
pub(super) fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(StoreError::Locked(dir.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Backend(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// The store's id, from `dir`'s `store-id` file, which is created (from
/// 16 random bytes) when missing. Call it holding [`lock`].
pub(super) fn store_id(dir: &Path) -> Result<String, StoreError> {
    if let Some(id) = read_store_id(dir)? {
        return Ok(id);
    }
    let id: String = crate::ids::random_bytes::<16>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = dir.join(STORE_ID_FILE);
    let partial = dir.join(format!("{STORE_ID_FILE}.partial"));
    std::fs::write(&partial, &id)
        .and_then(|()| File::open(&partial)?.sync_all())
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|e| StoreError::io(format_args!("cannot write {}", path.display()), &e))?;
    sync_dir(dir)?;
    Ok(id)
}

/// The id in `dir`'s `store-id` file, if it has one; readable while
/// another process holds the directory, or when its store does not open.
pub fn read_store_id(dir: &Path) -> Result<Option<String>, StoreError> {
    let path = dir.join(STORE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(Some(id.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(
            format_args!("cannot read {}", path.display()),
            &e,
        )),
    }
}

fn is_snapshot(name: &str) -> bool {
    name.starts_with("snap.")
}

/// The snapshot files in `dir` whose names `keep` selects.
fn snapshots(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, StoreError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StoreError::Backend(format!("cannot list {}: {e}", dir.display())))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| StoreError::Backend(format!("cannot list {}: {e}", dir.display())))?;
        if let Some(name) = entry.file_name().to_str()
            && is_snapshot(name)
            && keep(name)
        {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Makes the directory's entries durable (a removal or a rename in it).
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Backend(format!("cannot sync {}: {e}", dir.display())))
}

/// Removes the partial snapshots a crash left (see the module notes) and
/// returns their names. Call it holding [`lock`].
pub(super) fn remove_partial_snapshots(dir: &Path) -> Result<Vec<String>, StoreError> {
    let partial = snapshots(dir, |name| name.ends_with(".generating"))?;
    for path in &partial {
        std::fs::remove_file(path)
            .map_err(|e| StoreError::Backend(format!("cannot remove {}: {e}", path.display())))?;
    }
    if !partial.is_empty() {
        sync_dir(dir)?;
    }
    Ok(partial.iter().map(|p| file_name(p)).collect())
}

/// Whether the finished snapshot `bytes` fails sled's own check: its body,
/// then its length (8 bytes) and the CRC-32 of the body (4 bytes, LE).
fn snapshot_is_damaged(bytes: &[u8]) -> bool {
    let Some(body_len) = bytes.len().checked_sub(12).filter(|n| *n > 0) else {
        return true;
    };
    let stored = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().expect("4 bytes"));
    crc32fast::hash(&bytes[..body_len]) != stored
}

/// Moves the finished snapshots of `dir` that fail their checksum into a
/// new folder under `quarantine/`, and returns that folder, or `None` when
/// every snapshot is sound. sled rebuilds what a snapshot caches from its
/// log; a sound snapshot is never moved, as without it a damaged log would
/// open with whatever little it still holds. Call it holding [`lock`].
pub(super) fn quarantine_damaged_snapshots(
    dir: &Path,
    now_ms: u128,
) -> Result<Option<PathBuf>, StoreError> {
    let mut found = Vec::new();
    for path in snapshots(dir, |name| !name.ends_with(".generating"))? {
        let bytes = std::fs::read(&path)
            .map_err(|e| StoreError::io(format_args!("cannot read {}", path.display()), &e))?;
        if snapshot_is_damaged(&bytes) {
            found.push(path);
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    let target = dir.join(QUARANTINE).join(now_ms.to_string());
    std::fs::create_dir_all(&target)
        .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", target.display())))?;
    for path in &found {
        let to = target.join(file_name(path));
        std::fs::rename(path, &to).map_err(|e| {
            StoreError::Backend(format!(
                "cannot move {} to {}: {e}",
                path.display(),
                to.display()
            ))
        })?;
    }
    sync_dir(&target)?;
    sync_dir(dir)?;
    Ok(Some(target))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        assert!(matches!(lock(dir.path()), Err(StoreError::Locked(_))));
        drop(first);
        lock(dir.path()).unwrap();
    }

    #[test]
    fn partial_snapshots_are_removed_and_finished_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| std::fs::write(dir.path().join(name), b"x").unwrap();
        write("snap.0000000000001000");
        write("snap.0000000000002000.generating");
        write("db");
        let removed = remove_partial_snapshots(dir.path()).unwrap();
        assert_eq!(removed, ["snap.0000000000002000.generating"]);
        assert!(dir.path().join("snap.0000000000001000").exists());
        assert!(dir.path().join("db").exists());
        assert!(remove_partial_snapshots(dir.path()).unwrap().is_empty());
    }

    /// A snapshot as sled writes it: body, length, CRC-32 of the body.
    fn snapshot(body: &[u8]) -> Vec<u8> {
        let mut out = body.to_vec();
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        out
    }

    #[test]
    fn only_snapshots_that_fail_their_checksum_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let sound = snapshot(b"a page table");
        std::fs::write(dir.path().join("snap.00000000000000AA"), &sound).unwrap();
        std::fs::write(dir.path().join("conf"), b"x").unwrap();
        assert_eq!(quarantine_damaged_snapshots(dir.path(), 1).unwrap(), None);
        let mut torn = snapshot(b"another page table");
        torn[3] ^= 1;
        std::fs::write(dir.path().join("snap.00000000000000BB"), &torn).unwrap();
        std::fs::write(dir.path().join("snap.00000000000000CC"), b"").unwrap();
        let moved = quarantine_damaged_snapshots(dir.path(), 7)
            .unwrap()
            .unwrap();
        assert_eq!(moved, dir.path().join("quarantine").join("7"));
        assert!(moved.join("snap.00000000000000BB").exists());
        assert!(moved.join("snap.00000000000000CC").exists());
        assert!(dir.path().join("snap.00000000000000AA").exists());
        assert!(dir.path().join("conf").exists());
    }
}
