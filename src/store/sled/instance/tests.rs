use serde_json::Map;

use super::trees::{encode, push_lp, user_data_key, user_key, user_prefix};
use super::upgrade::{OLD_EXPIRY_TREE, OLD_USER_TREES};
use super::*;
use crate::store::{SessionRecord, UserData};

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
            refresh_hash: crate::store::TokenHash([7; 32]),
            anti_csrf_hash: None,
        },
        previous: None,
        rotated_at_ms: 1,
        last_active_ms: 1,
        timeouts: Default::default(),
        device: Default::default(),
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
        Some(&encode(&crate::store::sled::format::StoredUserData::from(
            &data,
        ))),
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
    assert_eq!(store.sweep_expired(50, 10).unwrap().len(), 0);
    assert_eq!(store.user_data("public", "alice").unwrap(), Some(data));
    assert_eq!(
        store.secret("s", &mut || b"other".to_vec()).unwrap(),
        b"secret bytes"
    );
    // After a crash the count comes from a scan.
    assert_eq!(store.count_sessions().unwrap(), 1);
    assert_eq!(store.sweep_expired(100, 10).unwrap().len(), 1);
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
        store.sweep_expired(50, 10).unwrap().len(),
        0,
        "nothing real was due"
    );
    assert!(trees.by_user.get(user_key(&ghost)).unwrap().is_none());
    assert!(trees.by_user.get(user_key(&stolen)).unwrap().is_some());
    assert_eq!(store.sweep_expired(60, 10).unwrap().len(), 0);
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

    assert_eq!(store.sweep_expired(200, 10).unwrap().len(), 0);
    assert_eq!(filed_under(&store, &first), Some(500));
    assert!(store.session("s").unwrap().is_some());

    assert_eq!(store.sweep_expired(500, 10).unwrap().len(), 1);
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
    assert_eq!(store.sweep_expired(99, 10).unwrap().len(), 0);
    assert_eq!(store.sweep_expired(100, 10).unwrap().len(), 1);
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
    assert_eq!(store.sweep_expired(50, 2).unwrap().len(), 1);
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

    assert_eq!(store.sweep_expired(50, 1).unwrap().len(), 1);
    assert!(gone(&u[1]) && !gone(&u[2]));
    // Due, but before the point where the pass stands now: a call that
    // started from the beginning would take it first.
    store.create_session(&record(&u[0], &u[0], 20)).unwrap();
    assert_eq!(store.sweep_expired(50, 1).unwrap().len(), 1);
    assert!(gone(&u[2]) && !gone(&u[0]));
    assert_eq!(store.sweep_expired(50, 1).unwrap().len(), 1);
    assert!(gone(&u[3]) && !gone(&u[0]));
    // Round past the end to where the pass began.
    assert_eq!(store.sweep_expired(50, 1).unwrap().len(), 1);
    assert!(gone(&u[0]));
    assert_eq!(store.sweep_expired(50, 1).unwrap().len(), 0);
    assert_eq!(store.count_sessions().unwrap(), 1);
    assert!(store.session("live").unwrap().is_some());

    // A pass that ran to its end begins at the start again.
    store.create_session(&record(&u[0], &u[0], 60)).unwrap();
    assert_eq!(store.sweep_expired(70, 10).unwrap().len(), 1);
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
    assert_eq!(store.sweep_expired(50, 10).unwrap().len(), 2);
    store.create_session(&record("late", &u[1], 20)).unwrap();
    assert_eq!(store.sweep_expired(50, 10).unwrap().len(), 1);
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
    assert_eq!(store.sweep_expired(50, 10).unwrap().len(), 1);
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
    assert_eq!(store.sweep_expired(60, 10).unwrap().len(), 1);
}

/// The tenant is part of the index key (a tenant's sessions are one key
/// range): should a write move a session to another tenant, its entry
/// moves with it.
#[tokio::test]
async fn a_tenant_change_moves_the_entry() {
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
    assert_eq!(filed_under(&store, &first), None);
    let mut moved = first.clone();
    moved.tenant_id = "acme".into();
    assert_eq!(filed_under(&store, &moved), Some(500));
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
/// keyed by the user id itself, one keyed by its hash and the handle,
/// perhaps a build cut short) opens with its index built from the records.
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
    let old = store.db.open_tree(OLD_USER_TREES[0]).unwrap();
    let hashed = store.db.open_tree(OLD_USER_TREES[1]).unwrap();
    for item in store.sessions.by_user.iter() {
        let (key, filed) = item.unwrap();
        let handle = handle_of_user_key(&key).unwrap();
        let r = store.session(handle).unwrap().unwrap();
        let mut old_key = Vec::new();
        push_lp(&mut old_key, &r.user_id);
        push_lp(&mut old_key, &r.tenant_id);
        old_key.extend_from_slice(handle.as_bytes());
        old.insert(old_key, filed.clone()).unwrap();
        let mut hashed_key = user_prefix(&r.user_id).to_vec();
        hashed_key.extend_from_slice(handle.as_bytes());
        hashed.insert(hashed_key, filed).unwrap();
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
    drop((old, hashed, expiry, store));

    let store = reopen(dir.path());
    let names = store.db.tree_names();
    assert!(!names.iter().any(|n| n == OLD_EXPIRY_TREE.as_bytes()));
    for old in OLD_USER_TREES {
        assert!(!names.iter().any(|n| n == old.as_bytes()));
    }
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
    assert_eq!(store.sweep_expired(100, 10).unwrap().len(), 1);
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
