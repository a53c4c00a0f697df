//! Criterion benchmarks of the embedded store: what one session write costs
//! in the trees, what the write-ahead log adds, and a durable write alone
//! (one write plus its own sync, the worst case of group commit), and the
//! filesystem's price for a sync that grows a file against one that
//! overwrites preallocated space (why log segments are preallocated), and
//! one sweep pass over a store where nothing is due (the sweeper's cost
//! without an expiry index).
//!
//! cargo bench --bench store

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Map, json};
use sessiond::store::{
    Change, Durability, Generation, SessionRecord, Sessions, SledStore, TokenHash,
};

fn record(n: u64) -> SessionRecord {
    let payload =
        json!({"role": "member", "plan": "pro", "region": "eu-west", "pad": "x".repeat(140)});
    SessionRecord {
        handle: format!("{n:08x}-0000-4000-8000-000000000000"),
        user_id: format!("user-{}", n % 1000),
        tenant_id: "public".into(),
        access_payload: payload.as_object().unwrap().clone(),
        data: Map::new(),
        created_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_000_000 + n,
        current: Generation {
            refresh_hash: TokenHash([0xaa; 32]),
            anti_csrf_hash: None,
        },
        previous: None,
        rotated_at_ms: 0,
        last_active_ms: 0,
        timeouts: Default::default(),
        device: Default::default(),
    }
}

fn store(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = runtime.block_on(async { SledStore::open(dir.path(), 128 << 20, None).unwrap() });
    let next = AtomicU64::new(0);

    c.bench_function("store/create_session", |b| {
        b.iter(|| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            runtime
                .block_on(store.create_session(black_box(&record(n))))
                .unwrap();
        })
    });
    // An update of an existing session; `edit` None keeps it unchanged.
    let update = |edit: Option<fn(&mut SessionRecord)>| {
        let handle = record(next.load(Ordering::Relaxed) / 2).handle;
        runtime
            .block_on(store.update_session(&handle, &mut |r| match (r, edit) {
                (Some(r), Some(edit)) => {
                    let mut r = r.clone();
                    edit(&mut r);
                    Change::Put(Box::new(r))
                }
                _ => Change::Keep,
            }))
            .unwrap();
    };
    c.bench_function("store/update_session (rotate: expiry moves)", |b| {
        b.iter(|| update(Some(|r| r.expires_at_ms += 1)))
    });
    c.bench_function("store/update_session (data only)", |b| {
        b.iter(|| update(Some(|r| r.created_at_ms += 1)))
    });
    c.bench_function("store/update_session (keep)", |b| b.iter(|| update(None)));
    c.bench_function("store/session (read)", |b| {
        b.iter(|| {
            let n = next.load(Ordering::Relaxed) / 3;
            black_box(runtime.block_on(store.session(&record(n).handle)).unwrap());
        })
    });
    c.bench_function("store/create_session + durable, alone", |b| {
        b.iter(|| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            runtime.block_on(store.create_session(&record(n))).unwrap();
            runtime.block_on(store.durable()).unwrap();
        })
    });
}

/// One pass of the sweeper over 100 000 sessions, none of them due: what a
/// sweep costs when it has nothing to remove.
fn sweep(c: &mut Criterion) {
    const SESSIONS: u64 = 100_000;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = runtime.block_on(async { SledStore::open(dir.path(), 64 << 20, None).unwrap() });
    for n in 0..SESSIONS {
        runtime.block_on(store.create_session(&record(n))).unwrap();
    }
    runtime.block_on(store.durable()).unwrap();
    let mut group = c.benchmark_group("sweep");
    group.sample_size(10);
    group.bench_function("pass over 100k sessions, none due", |b| {
        b.iter(|| {
            assert_eq!(
                runtime
                    .block_on(store.sweep_expired(1_000, 1000))
                    .unwrap()
                    .len(),
                0
            )
        })
    });
    group.finish();
}

/// A 3 KiB write and `fdatasync`, at the end of a growing file and into a
/// file of zeros already on disk (as the write-ahead log's segments are).
fn disk(c: &mut Criterion) {
    use std::io::{Seek, Write};
    let dir = tempfile::tempdir().unwrap();
    let batch = vec![b'x'; 3 << 10];
    let mut grow = std::fs::File::create(dir.path().join("grows")).unwrap();
    c.bench_function("disk/write + fdatasync, file grows", |b| {
        b.iter(|| {
            grow.write_all(&batch).unwrap();
            grow.sync_data().unwrap();
        })
    });
    let mut fixed = std::fs::File::create(dir.path().join("preallocated")).unwrap();
    let zeros = vec![0u8; 64 << 20];
    fixed.write_all(&zeros).unwrap();
    fixed.sync_all().unwrap();
    c.bench_function("disk/write + fdatasync, preallocated", |b| {
        b.iter(|| {
            // Wrap around well before the zeros run out.
            if fixed.stream_position().unwrap() + batch.len() as u64 > zeros.len() as u64 {
                fixed.rewind().unwrap();
            }
            fixed.write_all(&batch).unwrap();
            fixed.sync_data().unwrap();
        })
    });
}

criterion_group!(benches, store, sweep, disk);
criterion_main!(benches);
