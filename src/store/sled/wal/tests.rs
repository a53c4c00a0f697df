use super::archive::pruned;
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
