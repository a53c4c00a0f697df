//! A full disk, for real: the data directory on a small tmpfs, filled up,
//! then freed, twice: down to the free-space reserve (the store stops
//! before sled meets the full disk), and all the way with no reserve (sled
//! meets it, and the store is opened again once space returns). Writes are
//! refused as UNAVAILABLE / STORE_UNAVAILABLE, health is NOT_SERVING and
//! `sessiond_store_writable` 0; once space returns, writes are taken again
//! without a restart, and nothing acknowledged is lost or refused
//! half-applied.
//!
//! Mounting needs root: `cargo test --test it disk_full -- --ignored`, which
//! `.ci/run` runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sessiond::pb;
use tonic::Code;

use crate::helpers::*;

/// A tmpfs of `mib` MiB, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root"
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system under `dir` with a file until `leave` bytes are
/// left (0: until it is full); returns its path.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("ballast");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x42u8; 1 << 20];
    let free = || {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .unwrap()
    };
    while free() > leave + chunk.len() as u64 && file.write_all(&chunk).is_ok() {
        file.sync_all().unwrap();
    }
    if leave == 0 {
        // The last partial chunk may have left a few KiB: take those too.
        while file.write_all(&chunk[..4096]).is_ok() {}
    }
    let _ = file.sync_all();
    path
}

async fn writable_metric(server: &TestServer) -> String {
    let (_, _, body) = http_get(server.addr, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with("sessiond_store_writable "))
        .unwrap_or_default()
        .to_owned()
}

fn refused_for_a_full_disk(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        tonic_types::StatusExt::get_details_error_info(status)
            .unwrap()
            .reason,
        "STORE_UNAVAILABLE"
    );
    assert!(status.message().contains("disk is full"), "{status:?}");
}

#[tokio::test]
#[ignore = "needs root: mounts a tmpfs as the data directory"]
async fn under_the_reserve_writes_stop_reads_go_on_and_writes_resume_with_no_reopen() {
    full_disk(8 << 20, 3 << 20, true).await;
}

#[tokio::test]
#[ignore = "needs root: mounts a tmpfs as the data directory"]
async fn a_disk_full_to_the_last_byte_is_survived_by_opening_the_store_again() {
    full_disk(0, 0, false).await;
}

/// The scenario on a 32 MiB tmpfs, with `reserve` bytes of free-space
/// reserve, filled until `leave` bytes are left. With `reads_served`, every
/// read must be answered during the outage; otherwise (sled has met the
/// full disk, and a read that makes it consolidate a page fails like a
/// write) a read may be refused, as unavailable and never as internal.
async fn full_disk(reserve: u64, leave: u64, reads_served: bool) {
    let disk = Tmpfs::mount(32);
    let data = tempfile::tempdir_in(disk.path()).unwrap();
    let server = TestServer::start_in(data, |c| {
        c.store_cache_bytes = 4 << 20;
        c.store_reserved_bytes = reserve;
    })
    .await;
    let mut c = server.sessions().await;
    let mut b = server.buckets().await;

    // Sessions written while there is room: acknowledged.
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let s = create(&mut c, &format!("before-{i}"), json!({"i": i})).await;
        c.update_session_data_in_database(data_update(&handle(&s), "kept"))
            .await
            .unwrap();
        acknowledged.push(s);
    }

    // Space runs out. Writes go on until the store notices (the reserve
    // is checked four times a second; with none, sled's flush meets the
    // full disk); from then on every write is refused.
    let ballast = fill(disk.path(), leave);
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        assert!(
            Instant::now() < deadline,
            "no write was refused within 60 s of a full disk"
        );
        let user = format!("during-{}", acknowledged.len());
        let reply = c
            .create_new_session(pb::CreateNewSessionRequest {
                user_id: user.clone(),
                session_data_in_database: Some(obj(json!({"pad": "x".repeat(2000)}))),
                ..Default::default()
            })
            .await;
        match reply {
            Ok(r) => acknowledged.push(r.into_inner()),
            Err(status) => break (user, status),
        }
    };
    refused_for_a_full_disk(&refused.1);
    if reserve > 0 {
        assert!(
            refused.1.message().contains("--store-reserved-space"),
            "{:?}",
            refused.1
        );
    }
    let refused_users = vec![refused.0];

    // Health and the metric say so (the store reports at once; health
    // follows through a task).
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&server).await != 2 {
        assert!(Instant::now() < deadline, "health stayed SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(writable_metric(&server).await, "sessiond_store_writable 0");

    // Every kind of write is refused, before it changes anything.
    let first = &acknowledged[0];
    refused_for_a_full_disk(
        &c.update_session_data_in_database(data_update(&handle(first), "refused"))
            .await
            .unwrap_err(),
    );
    refused_for_a_full_disk(&refresh(&mut c, &refresh_token(first)).await.unwrap_err());
    refused_for_a_full_disk(
        &b.update_user_session(pb::UpdateUserSessionRequest {
            bucket: pb::Bucket::Public as i32,
            user_id: "before-0".into(),
            data: Some(obj(json!({"refused": true}))),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    refused_for_a_full_disk(
        &c.revoke_session(pb::RevokeSessionRequest {
            session_handle: handle(first),
        })
        .await
        .unwrap_err(),
    );

    // Reads that need no write: served (under the reserve), or at worst
    // unavailable, never internal.
    for s in &acknowledged[..5] {
        let read = verify(&mut c, &access(s), true).await.map(drop);
        let listed = c
            .get_all_session_handles_for_user(pb::GetAllSessionHandlesForUserRequest {
                user_id: s.session.as_ref().unwrap().user_id.clone(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().session_handles);
        let bucket = b
            .get_user_session(pb::GetUserSessionRequest {
                user_id: "before-0".into(),
                ..Default::default()
            })
            .await
            .map(drop);
        if reads_served {
            read.unwrap();
            assert_eq!(listed.unwrap(), [handle(s)]);
            bucket.unwrap();
        } else {
            for failed in [read.err(), listed.err(), bucket.err()]
                .into_iter()
                .flatten()
            {
                assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
            }
        }
    }

    // Space returns: within seconds, writes are taken again, with no
    // restart.
    std::fs::remove_file(ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        assert!(
            Instant::now() < deadline,
            "writes were still refused 30 s after space returned"
        );
        match c
            .create_new_session(pb::CreateNewSessionRequest {
                user_id: "after".into(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    acknowledged.push(after);
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&server).await != 1 {
        assert!(Instant::now() < deadline, "health stayed NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(writable_metric(&server).await, "sessiond_store_writable 1");

    // Nothing acknowledged is lost and nothing refused was applied, now
    // and after a restart.
    check_writes(&server, &acknowledged, &refused_users).await;
    let server = server.restart().await;
    check_writes(&server, &acknowledged, &refused_users).await;
    server.stop().await;
}

async fn check_writes(
    server: &TestServer,
    acknowledged: &[pb::CreateNewSessionResponse],
    refused_users: &[String],
) {
    let mut c = server.sessions().await;
    for s in acknowledged {
        verify(&mut c, &access(s), true)
            .await
            .unwrap_or_else(|e| panic!("session {} lost: {e:?}", handle(s)));
    }
    assert_eq!(
        session_data(&mut c, &handle(&acknowledged[0])).await,
        json!({"v": "kept"}),
        "a refused data update was applied"
    );
    for user in refused_users {
        let listed = c
            .get_all_session_handles_for_user(pb::GetAllSessionHandlesForUserRequest {
                user_id: user.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .session_handles;
        assert!(listed.is_empty(), "a refused create left {listed:?}");
    }
    let bucket = server
        .buckets()
        .await
        .get_user_session(pb::GetUserSessionRequest {
            user_id: "before-0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(json(bucket.public.as_ref().unwrap()), json!({}));
    // The refresh that was refused did not rotate: the token still does.
    refresh(&mut c, &refresh_token(&acknowledged[0]))
        .await
        .unwrap();
}
