//! The data directory before sled opens it: sessiond's own lock, and the
//! leftovers of interrupted writes that sled 0.34.7 mishandles.
//!
//! - **Interrupted snapshots.** sled writes a snapshot (its page table) to
//!   `snap.<lsn>.generating`, syncs it, renames it to `snap.<lsn>` and
//!   deletes the older ones, without ever syncing the directory. Its
//!   listing of snapshots does not skip the `.generating` name, and it
//!   reopens such a file without truncating it, so a file that a crash left
//!   mid-write is taken for the newest snapshot, fails its checksum, and the
//!   store refuses to open ("corrupt snapshot file found", sled #1527 and
//!   #1533; the fix proposed upstream, #1389, was never merged). A
//!   `.generating` file that fails the checksum is such a leftover and is
//!   removed. One that passes it was written whole and only its rename was
//!   lost (power went before the directory reached the disk): the rename is
//!   finished. Removing it instead would leave sled to rebuild its page
//!   table from its log alone, which loses data: sled then overwrites the
//!   log segments the rebuilt table does not reference (found by the
//!   power-loss campaign, `tests/power`).
//! - **A damaged snapshot.** For the same reason a finished snapshot that
//!   fails its checksum (a disk that tore or lost it) is moved aside, to
//!   `quarantine/<ms since epoch>/`, only when a sound snapshot remains for
//!   sled to open with. With none, the store is refused, saying how to
//!   rebuild it from a backup and its write-ahead log.
//!
//! Both repairs need the directory to be this process's alone, and sled
//! takes its own lock only inside `open`: sessiond's lock
//! (`sessiond.lock`, an advisory lock on a file of its own) is taken first
//! and held for as long as the store is open.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::store::StoreError;

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
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Backend(format!("cannot sync {}: {e}", dir.display())))
}

/// What [`finish_interrupted_snapshots`] did with a `.generating` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Interrupted {
    /// Written whole: renamed to the name sled was giving it.
    Finished(String),
    /// Cut short: removed.
    Removed(String),
}

/// Finishes or removes the snapshots a crash interrupted (see the module
/// notes). Call it holding [`lock`].
pub(super) fn finish_interrupted_snapshots(dir: &Path) -> Result<Vec<Interrupted>, StoreError> {
    let mut done = Vec::new();
    for path in snapshots(dir, |name| name.ends_with(".generating"))? {
        let name = file_name(&path);
        let bytes = std::fs::read(&path)
            .map_err(|e| StoreError::io(format_args!("cannot read {}", path.display()), &e))?;
        let target = path.with_extension("");
        if snapshot_is_damaged(&bytes) || target.exists() {
            std::fs::remove_file(&path).map_err(|e| {
                StoreError::io(format_args!("cannot remove {}", path.display()), &e)
            })?;
            done.push(Interrupted::Removed(name));
        } else {
            std::fs::rename(&path, &target).map_err(|e| {
                StoreError::io(format_args!("cannot rename {}", path.display()), &e)
            })?;
            done.push(Interrupted::Finished(name));
        }
    }
    if !done.is_empty() {
        sync_dir(dir)?;
    }
    Ok(done)
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

/// What [`quarantine_damaged_snapshots`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Snapshots {
    /// Every snapshot is sound (or there is none).
    Sound,
    /// The damaged ones were moved to this folder; a sound one remains.
    Quarantined(PathBuf),
    /// Every snapshot is damaged: nothing was moved, and the store must
    /// not be opened (sled would rebuild from its log alone).
    AllDamaged,
}

/// Moves the finished snapshots of `dir` that fail their checksum into a
/// new folder under `quarantine/`, when a sound one remains (see the module
/// notes). Call it holding [`lock`].
pub(super) fn quarantine_damaged_snapshots(
    dir: &Path,
    now_ms: u128,
) -> Result<Snapshots, StoreError> {
    let mut found = Vec::new();
    let mut sound = 0;
    for path in snapshots(dir, |name| !name.ends_with(".generating"))? {
        let bytes = std::fs::read(&path)
            .map_err(|e| StoreError::io(format_args!("cannot read {}", path.display()), &e))?;
        if snapshot_is_damaged(&bytes) {
            found.push(path);
        } else {
            sound += 1;
        }
    }
    if found.is_empty() {
        return Ok(Snapshots::Sound);
    }
    if sound == 0 {
        return Ok(Snapshots::AllDamaged);
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
    Ok(Snapshots::Quarantined(target))
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
    fn interrupted_snapshots_are_finished_when_whole_and_removed_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let write =
            |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
        write("snap.0000000000001000", &snapshot(b"older"));
        write("snap.0000000000002000.generating", b"cut short");
        write("snap.0000000000003000.generating", &snapshot(b"whole"));
        write("db", b"x");
        let done = finish_interrupted_snapshots(dir.path()).unwrap();
        assert_eq!(
            done,
            [
                Interrupted::Removed("snap.0000000000002000.generating".into()),
                Interrupted::Finished("snap.0000000000003000.generating".into()),
            ]
        );
        assert_eq!(
            std::fs::read(dir.path().join("snap.0000000000003000")).unwrap(),
            snapshot(b"whole")
        );
        assert!(dir.path().join("snap.0000000000001000").exists());
        assert!(dir.path().join("db").exists());
        assert!(finish_interrupted_snapshots(dir.path()).unwrap().is_empty());
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
        assert_eq!(
            quarantine_damaged_snapshots(dir.path(), 1).unwrap(),
            Snapshots::Sound
        );
        let mut torn = snapshot(b"another page table");
        torn[3] ^= 1;
        std::fs::write(dir.path().join("snap.00000000000000BB"), &torn).unwrap();
        std::fs::write(dir.path().join("snap.00000000000000CC"), b"").unwrap();
        let Snapshots::Quarantined(moved) = quarantine_damaged_snapshots(dir.path(), 7).unwrap()
        else {
            panic!("a sound snapshot remains: the damaged ones go")
        };
        assert_eq!(moved, dir.path().join("quarantine").join("7"));
        assert!(moved.join("snap.00000000000000BB").exists());
        assert!(moved.join("snap.00000000000000CC").exists());
        assert!(dir.path().join("snap.00000000000000AA").exists());
        assert!(dir.path().join("conf").exists());
        // With no sound snapshot left, nothing moves and the store is refused.
        std::fs::rename(
            dir.path().join("snap.00000000000000AA"),
            moved.join("snap.00000000000000AA"),
        )
        .unwrap();
        std::fs::write(dir.path().join("snap.00000000000000DD"), b"torn").unwrap();
        assert_eq!(
            quarantine_damaged_snapshots(dir.path(), 8).unwrap(),
            Snapshots::AllDamaged
        );
        assert!(dir.path().join("snap.00000000000000DD").exists());
    }
}
