//! Restarts, the data directory lock, and crashes under write load.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use sessiond::pb;
use sessiond::pb::session_service_client::SessionServiceClient;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::helpers::*;

#[tokio::test]
async fn a_restart_keeps_sessions_and_keys() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "rita", json!({"k": 1})).await;
    let before = server
        .jwts()
        .await
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    drop(c);

    let server = server.restart().await;
    let mut c = server.sessions().await;
    verify(&mut c, &access(&created), true)
        .await
        .expect("the access token verifies after a restart");
    let after = server
        .jwts()
        .await
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(before, after, "the same keys");
    let refreshed = refresh(&mut c, &refresh_token(&created)).await.unwrap();
    assert_eq!(claims(&refreshed.access_token.unwrap().token)["k"], 1);
    let listed = c
        .get_all_session_handles_for_user(pb::GetAllSessionHandlesForUserRequest {
            user_id: "rita".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_handles;
    assert_eq!(listed, [handle(&created)]);
}

/// Creates `n` sessions, restarts the server after `damage` to its data
/// directory, and checks every session is there and refreshes.
async fn sessions_survive(
    damage: impl FnOnce(&std::path::Path),
    n: usize,
) -> (TestServer, std::path::PathBuf) {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let mut created = Vec::new();
    for i in 0..n {
        created.push(create(&mut c, &format!("u{i}"), json!({"i": i})).await);
    }
    drop(c);
    let server = server.restart_after(damage).await;
    let mut c = server.sessions().await;
    for s in &created {
        verify(&mut c, &access(s), true)
            .await
            .expect("every session is there after the restart");
        refresh(&mut c, &refresh_token(s)).await.unwrap();
    }
    let dir = server.data_dir();
    (server, dir)
}

fn snapshots(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snap."))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_snapshot_a_crash_left_half_written_does_not_stop_the_store() {
    // A kill while sled writes a snapshot leaves `snap.<lsn>.generating`,
    // which sled 0.34.7 takes for its newest snapshot and then refuses to
    // open the store over ("corrupt snapshot file found"; sled #1527): one
    // cut short, and one killed before its first byte.
    let (_server, dir) = sessions_survive(
        |dir| {
            let partial: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
            std::fs::write(dir.join("snap.7FFFFFFFFFFFFFFF.generating"), partial).unwrap();
            std::fs::write(dir.join("snap.7FFFFFFFFFFFFFFE.generating"), b"").unwrap();
        },
        20,
    )
    .await;
    assert!(
        snapshots(&dir).iter().all(|n| !n.ends_with(".generating")),
        "{:?}",
        snapshots(&dir)
    );
}

#[tokio::test]
async fn a_damaged_snapshot_is_set_aside_beside_a_sound_one_and_refused_alone() {
    // sled writes a snapshot when a start finds its log grown.
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let mut created = Vec::new();
    for i in 0..20 {
        created.push(create(&mut c, &format!("u{i}"), json!({"i": i})).await);
    }
    drop(c);
    let server = server.restart().await;
    let mut c = server.sessions().await;
    created.push(create(&mut c, "later", json!({})).await);
    drop(c);
    // A newer finished snapshot that fails its checksum (a torn disk
    // write), beside the sound one: set aside, and the store opens with
    // the sound one.
    let server = server
        .restart_after(|dir| {
            assert!(!snapshots(dir).is_empty(), "a sound snapshot to open with");
            std::fs::write(dir.join("snap.7FFFFFFFFFFFFFFF"), vec![0x5a; 4096]).unwrap();
        })
        .await;
    let mut c = server.sessions().await;
    for s in &created {
        verify(&mut c, &access(s), true)
            .await
            .expect("every session is there after the restart");
    }
    drop(c);
    let dir = server.data_dir();
    assert!(!snapshots(&dir).contains(&"snap.7FFFFFFFFFFFFFFF".to_owned()));
    let quarantined: Vec<_> = std::fs::read_dir(dir.join("quarantine"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        quarantined.contains(&"snap.7FFFFFFFFFFFFFFF".to_owned()),
        "{quarantined:?}"
    );

    // The only snapshot damaged: sled would rebuild from its log alone,
    // which loses data, so the start is refused, saying what to do, and
    // nothing is moved.
    let (_dir, clock, config) = server.stop().await;
    for name in snapshots(&dir) {
        std::fs::write(dir.join(&name), vec![0x5a; 4096]).unwrap();
    }
    let before = snapshots(&dir);
    let refused = refused_start(&config, clock).await;
    assert!(refused.contains("--replay-log"), "{refused}");
    assert_eq!(snapshots(&dir), before);
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let server = TestServer::start().await;
    let mut config = server.config.clone();
    config.data_dir = server.data_dir();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = sessiond::serve(
        listener,
        config,
        server.clock.clone(),
        std::future::pending(),
    )
    .await
    .expect_err("the data directory is locked");
    let text = err.to_string();
    assert!(
        text.contains("in use by another sessiond process"),
        "{text}"
    );
}

/// The `sessiond` binary, started on port 0; returns the child and the address
/// from its ready line.
fn spawn_binary(data_dir: &std::path::Path) -> (Child, String) {
    let (child, addr, _) = spawn_binary_with(data_dir, &[]);
    (child, addr)
}

/// Like [`spawn_binary`] with extra arguments; also returns every log line,
/// from the first.
pub fn spawn_binary_with(
    data_dir: &std::path::Path,
    extra: &[&str],
) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env_remove("SESSIOND_API_KEYS")
        .env("SESSIOND_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut early = Vec::new();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server exited before it was ready")
            .unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().to_owned();
            early.push(line);
            break addr;
        }
        early.push(line);
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    for line in early {
        let _ = tx.send(line);
    }
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, addr, rx)
}

/// Waits (at most 10 s) for a log line containing `text`.
pub fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(text) => return,
            Ok(_) => {}
            Err(_) => panic!("no log line with `{text}` within 10 s"),
        }
    }
}

async fn connect(addr: &str) -> SessionServiceClient<tonic::transport::Channel> {
    SessionServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// Starts `writers` tasks creating sessions until `stop` is set or a call
/// fails, which `on_error` inspects; joining them gives every handle the
/// server acknowledged.
fn write_load(
    client: &SessionServiceClient<Channel>,
    writers: usize,
    stop: &Arc<AtomicBool>,
    progress: &Arc<AtomicUsize>,
    on_error: fn(&Status),
) -> Vec<JoinHandle<Vec<String>>> {
    (0..writers)
        .map(|w| {
            let mut c = client.clone();
            let (stop, progress) = (stop.clone(), progress.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                while !stop.load(Ordering::Relaxed) && acknowledged.len() < 100_000 {
                    let reply = c
                        .create_new_session(pb::CreateNewSessionRequest {
                            user_id: format!("writer-{w}"),
                            session_data_in_database: Some(obj(json!({"n": acknowledged.len()}))),
                            ..Default::default()
                        })
                        .await;
                    match reply {
                        Ok(r) => {
                            acknowledged.push(handle(&r.into_inner()));
                            progress.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(s) => {
                            on_error(&s);
                            break;
                        }
                    }
                }
                acknowledged
            })
        })
        .collect()
}

async fn joined(writers: Vec<JoinHandle<Vec<String>>>) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await.unwrap());
    }
    acknowledged
}

/// Restarts the binary on `dir` and returns the acknowledged handles it no
/// longer knows.
async fn lost_after_restart(dir: &std::path::Path, acknowledged: &[String]) -> Vec<String> {
    let (mut child, addr) = spawn_binary(dir);
    let mut c = connect(&addr).await;
    let mut lost = Vec::new();
    for h in acknowledged {
        match session_info(&mut c, h).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => lost.push(h.clone()),
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_write_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_binary(dir.path());
    let client = connect(&addr).await;

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let writers = write_load(&client, 16, &stop, &progress, |_| {});
    wait_until("the load to get going", || {
        progress.load(Ordering::Relaxed) >= 500
    })
    .await;
    child.kill().unwrap(); // SIGKILL: no shutdown, no final flush.
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let acknowledged = joined(writers).await;
    assert!(
        acknowledged.len() > 50,
        "the load ran ({} writes)",
        acknowledged.len()
    );

    let lost = lost_after_restart(dir.path(), &acknowledged).await;
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged sessions were lost",
        lost.len(),
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_finishes_in_flight_calls_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_binary(dir.path());
    let client = connect(&addr).await;
    let stop = Arc::new(AtomicBool::new(false));
    // After the signal: refused (GOAWAY) or cut, never a fault inside
    // sessiond, whose statuses carry ErrorInfo. (tonic's client reports a
    // GOAWAY as INTERNAL itself.)
    let progress = Arc::new(AtomicUsize::new(0));
    let writers = write_load(&client, 8, &stop, &progress, |s| {
        assert!(
            s.get_error_details().error_info().is_none(),
            "the server failed a call while draining: {s:?}"
        );
    });
    wait_until("the load to get going", || {
        progress.load(Ordering::Relaxed) >= 100
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        exit.success(),
        "sessiond exited with {exit:?} after SIGTERM"
    );
    stop.store(true, Ordering::Relaxed);
    let acknowledged = joined(writers).await;
    assert!(!acknowledged.is_empty());

    // Everything acknowledged before and during the drain is there.
    let lost = lost_after_restart(dir.path(), &acknowledged).await;
    assert!(lost.is_empty(), "acknowledged sessions lost: {lost:?}");
}

#[tokio::test]
async fn keys_and_the_mac_secret_are_sealed_and_a_wrong_kek_refuses_to_start() {
    use base64::Engine;
    use sessiond::store::KeysAndSecrets;
    use sessiond::token::kek::Kek;
    let owned = |byte: u8| {
        Kek::from_text(&base64::engine::general_purpose::STANDARD.encode([byte; 32])).unwrap()
    };
    let kek = |byte: u8| Arc::new(owned(byte));

    // A store made without a KEK: its keys are sealed at the first start with one.
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    drop(c);
    let (dir, clock, mut config) = server.stop().await;
    config.key_encryption_key = Some(kek(1));
    let dir = Arc::try_unwrap(dir).expect("the test holds the only handle");
    let data = dir.path().to_owned();
    let mac = async |data: &std::path::Path| {
        let store = open_store(data);
        store
            .secret("refresh-token-mac", &mut || panic!("the secret exists"))
            .await
            .unwrap()
    };
    let plain_mac = mac(&data).await;
    assert_eq!(plain_mac.len(), 32, "stored in plaintext without a KEK");
    let server = TestServer::start_in(dir, |c| c.key_encryption_key = Some(kek(1))).await;
    let mut c = server.sessions().await;
    verify(&mut c, &access(&created), true)
        .await
        .expect("old tokens verify with sealed keys");
    refresh(&mut c, &refresh_token(&created))
        .await
        .expect("an old refresh token refreshes once its MAC secret is sealed");
    drop(c);
    let (dir, _, _) = server.stop().await;

    let sealed = {
        let store = open_store(&data);
        let keys = store.keys().await.unwrap();
        assert!(
            keys.iter()
                .all(|k| sessiond::secret::sealed::is_sealed(&k.private_key)),
            "no plaintext key left"
        );
        keys
    };
    let sealed_mac = mac(&data).await;
    assert!(
        sealed_mac.starts_with(b"sealed:") && !sealed_mac.windows(32).any(|w| w == plain_mac),
        "the MAC secret is sealed, not stored beside its sealed form"
    );

    // A wrong KEK, or none, refuses to start, and changes nothing.
    for wrong in [Some(kek(2)), None] {
        let mut config = config.clone();
        config.key_encryption_key = wrong.clone();
        let text = refused_start(&config, clock.clone()).await;
        assert!(
            text.contains(if wrong.is_some() {
                "does not open"
            } else {
                "no key-encryption key"
            }),
            "{text}"
        );
        let store = open_store(&data);
        assert_eq!(
            store.keys().await.unwrap(),
            sealed,
            "keys untouched, never regenerated"
        );
        drop(store);
        assert_eq!(mac(&data).await, sealed_mac, "the MAC secret untouched");
    }
    drop(dir);
}

#[tokio::test]
async fn a_kek_is_replaced_by_starting_with_the_old_one_as_previous() {
    use base64::Engine;
    use sessiond::token::kek::Kek;
    let owned = |byte: u8| {
        Kek::from_text(&base64::engine::general_purpose::STANDARD.encode([byte; 32])).unwrap()
    };
    let kek = |byte: u8| Arc::new(owned(byte));

    let server = TestServer::start_with(|c| c.key_encryption_key = Some(kek(1))).await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    drop(c);
    let (dir, clock, mut config) = server.stop().await;

    // The new KEK alone cannot open what the old one sealed, and says where
    // the old one goes.
    config.key_encryption_key = Some(kek(2));
    let text = refused_start(&config, clock.clone()).await;
    assert!(
        text.contains("does not open") && text.contains("--previous-key-encryption-key-file"),
        "{text}"
    );

    // With the old one as previous, everything is sealed again under the new.
    let dir = Arc::try_unwrap(dir).expect("the test holds the only handle");
    let server = TestServer::start_in(dir, |c| {
        c.key_encryption_key = Some(Arc::new(owned(2).with_previous(owned(1))));
    })
    .await;
    let mut c = server.sessions().await;
    verify(&mut c, &access(&created), true)
        .await
        .expect("tokens signed before the change verify");
    let refreshed = refresh(&mut c, &refresh_token(&created))
        .await
        .expect("refresh tokens issued before the change refresh");
    drop(c);
    let (dir, clock, mut config) = server.stop().await;

    // From now on the new KEK alone starts it, and the old one no longer does.
    config.key_encryption_key = Some(kek(1));
    let text = refused_start(&config, clock.clone()).await;
    assert!(text.contains("does not open"), "{text}");
    let dir = Arc::try_unwrap(dir).expect("the test holds the only handle");
    let server = TestServer::start_in(dir, |c| c.key_encryption_key = Some(kek(2))).await;
    let mut c = server.sessions().await;
    let rotated = refreshed.refresh_token.unwrap().token;
    refresh(&mut c, &rotated)
        .await
        .expect("the refresh token from the changeover refreshes under the new KEK alone");
}

/// Stops a spawned server with SIGTERM (a clean close) and waits for it.
fn terminate(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn a_store_that_does_not_open_is_rebuilt_from_the_last_backup_and_its_log() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    let (child, addr) = spawn_binary(&data);
    let mut c = connect(&addr).await;
    let mut before = Vec::new();
    for i in 0..5 {
        let s = create(&mut c, &format!("before-{i}"), json!({})).await;
        set_data(&mut c, &handle(&s), "before").await;
        before.push(s);
    }
    let backup = base.path().join("sessiond.backup");
    let (code, _, err) = crate::cli::sessiond(vec![
        "backup".into(),
        "--out".into(),
        backup.to_str().unwrap().into(),
        "--addr".into(),
        addr.clone(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");

    // Acknowledged after the backup: some before a clean restart (their log
    // is archived by then), some after it and before a crash (still in the
    // live log).
    let mut after = Vec::new();
    for i in 0..3 {
        after.push(create(&mut c, &format!("after-{i}"), json!({})).await);
    }
    set_data(&mut c, &handle(&before[0]), "changed before the restart").await;
    c.revoke_session(pb::RevokeSessionRequest {
        session_handle: handle(&before[1]),
    })
    .await
    .unwrap();
    drop(c);
    terminate(child);
    let (mut child, addr) = spawn_binary(&data);
    let mut c = connect(&addr).await;
    for i in 3..6 {
        after.push(create(&mut c, &format!("after-{i}"), json!({})).await);
    }
    set_data(&mut c, &handle(&before[2]), "changed before the crash").await;
    drop(c);
    child.kill().unwrap();
    child.wait().unwrap();

    // The store's own files are damaged (its file cut short): it does not
    // open, and says what to do.
    let db = data.join("db");
    let file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.set_len(1000).unwrap();
    drop(file);
    let mut refused = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while refused.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            refused.kill().unwrap();
            panic!("a store cut short was opened and served, its lost writes unnoticed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = refused.wait_with_output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("--replay-log"), "{said}");

    // The way back: the last backup, with the damaged store's log replayed
    // on top.
    let restored = base.path().join("restored");
    let (code, _, err) = crate::cli::sessiond(vec![
        "restore".into(),
        backup.to_str().unwrap().into(),
        "--data-dir".into(),
        restored.to_str().unwrap().into(),
        "--replay-log".into(),
        data.to_str().unwrap().into(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("replayed"), "{err}");

    let (mut child, addr) = spawn_binary(&restored);
    let mut c = connect(&addr).await;
    for s in before
        .iter()
        .chain(&after)
        .filter(|s| handle(s) != handle(&before[1]))
    {
        verify(&mut c, &access(s), true)
            .await
            .unwrap_or_else(|e| panic!("session {} lost: {e:?}", handle(s)));
    }
    assert!(
        verify(&mut c, &access(&before[1]), true).await.is_err(),
        "a session revoked after the backup came back"
    );
    assert_eq!(
        session_data(&mut c, &handle(&before[0])).await,
        json!({"v": "changed before the restart"})
    );
    assert_eq!(
        session_data(&mut c, &handle(&before[2])).await,
        json!({"v": "changed before the crash"})
    );
    assert_eq!(
        session_data(&mut c, &handle(&before[3])).await,
        json!({"v": "before"})
    );
    drop(c);
    child.kill().unwrap();
    child.wait().unwrap();

    // A log is only replayed onto a backup of its own store.
    let (code, _, err) = crate::cli::sessiond(vec![
        "restore".into(),
        backup.to_str().unwrap().into(),
        "--data-dir".into(),
        base.path().join("elsewhere").to_str().unwrap().into(),
        "--replay-log".into(),
        restored.to_str().unwrap().into(),
    ])
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("is not the data directory"), "{err}");
}
