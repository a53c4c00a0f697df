//! The operator subcommands of the binary against a real server: sessions,
//! keys, token inspection, backup and restore, and their exit codes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};
use sessiond::pb;

use crate::helpers::*;

/// Runs `sessiond ARGS` and returns (exit code, stdout, stderr).
pub async fn sessiond(args: Vec<String>) -> (i32, String, String) {
    sessiond_with_env(args, &[]).await
}

/// Runs `sessiond ARGS` with environment variables `env` set.
pub async fn sessiond_with_env(args: Vec<String>, env: &[(&str, &str)]) -> (i32, String, String) {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args(&args)
            .env_remove("SESSIOND_API_KEY")
            .env_remove("SESSIOND_API_KEYS")
            .env_remove("SESSIOND_ADDR")
            .env_remove("SESSIOND_LISTEN")
            .env_remove("SESSIOND_DATA_DIR")
            .envs(env)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(words: &[&str], server: &TestServer, key: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    v.extend(["--addr".to_owned(), server.addr.to_string()]);
    if let Some(k) = key {
        v.extend(["--api-key".to_owned(), k.to_owned()]);
    }
    v
}

async fn keyed_server() -> TestServer {
    TestServer::start_with(|c| c.api_keys = vec![sessiond::config::ApiKey::admin("test", API_KEY)])
        .await
}

async fn keyed_session(server: &TestServer, user: &str) -> pb::CreateNewSessionResponse {
    server
        .sessions()
        .await
        .create_new_session(with_metadata(
            pb::CreateNewSessionRequest {
                user_id: user.into(),
                ..Default::default()
            },
            &[("x-api-key", API_KEY)],
        ))
        .await
        .unwrap()
        .into_inner()
}

/// `sessions list --user` shows where each session is used from and when
/// it was last active, newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_list_shows_devices_and_last_activity() {
    let server = keyed_server().await;
    let older = keyed_session(&server, "dev-user").await;
    server.clock.advance(std::time::Duration::from_secs(90));
    let newer = server
        .sessions()
        .await
        .create_new_session(with_metadata(
            pb::CreateNewSessionRequest {
                user_id: "dev-user".into(),
                device: Some(pb::Device {
                    ip_address: "198.51.100.4".into(),
                    user_agent: "Mozilla/5.0 (X11; Linux x86_64)".into(),
                    label: "Work laptop".into(),
                }),
                ..Default::default()
            },
            &[("x-api-key", API_KEY)],
        ))
        .await
        .unwrap()
        .into_inner();

    let (code, out, err) = sessiond(args(
        &["sessions", "list", "--user", "dev-user"],
        &server,
        Some(API_KEY),
    ))
    .await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("LAST ACTIVE") && lines[0].ends_with("DEVICE"),
        "{out}"
    );
    assert!(lines[1].starts_with(&handle(&newer)), "newest first: {out}");
    assert!(lines[1].ends_with("Work laptop [198.51.100.4]"), "{out}");
    assert!(
        lines[2].starts_with(&handle(&older)) && lines[2].ends_with(" -"),
        "{out}"
    );

    let (code, out, _) = sessiond(args(
        &["sessions", "list", "--user", "dev-user", "--json"],
        &server,
        Some(API_KEY),
    ))
    .await;
    assert_eq!(code, 0);
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows[0]["device"]["label"], "Work laptop");
    assert_eq!(rows[0]["device"]["ip_address"], "198.51.100.4");
    assert!(rows[1]["device"].is_null());
    assert_ne!(rows[0]["last_active"], rows[1]["last_active"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_list_and_revoke() {
    let server = keyed_server().await;
    let (a, b) = (
        keyed_session(&server, "cli-user").await,
        keyed_session(&server, "cli-user").await,
    );

    let (code, out, err) = sessiond(args(
        &["sessions", "list", "--user", "cli-user"],
        &server,
        Some(API_KEY),
    ))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HANDLE"), "{out}");
    assert!(
        out.contains(&handle(&a)) && out.contains(&handle(&b)),
        "{out}"
    );

    let (code, out, _) = sessiond(args(
        &["sessions", "list", "--user", "cli-user", "--json"],
        &server,
        Some(API_KEY),
    ))
    .await;
    assert_eq!(code, 0);
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert!(rows[0]["expires"].as_str().unwrap().ends_with('Z'));
    assert!(rows[0]["last_active"].as_str().unwrap().ends_with('Z'));

    let (code, out, err) = sessiond(args(
        &["sessions", "revoke", &handle(&a)],
        &server,
        Some(API_KEY),
    ))
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), handle(&a));
    assert_eq!(err.trim(), "revoked 1 session");
    let (_, out, _) = sessiond(args(
        &["sessions", "list", "--user", "cli-user"],
        &server,
        Some(API_KEY),
    ))
    .await;
    assert!(
        !out.contains(&handle(&a)) && out.contains(&handle(&b)),
        "{out}"
    );

    let (code, out, _) = sessiond(args(
        &["sessions", "revoke", "--user", "cli-user"],
        &server,
        Some(API_KEY),
    ))
    .await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), handle(&b));

    // A wrong key or none: exit 4. Bad usage: exit 2.
    let (code, _, err) = sessiond(args(
        &["sessions", "list", "--user", "x"],
        &server,
        Some("wrong-key-0123456789"),
    ))
    .await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("refused the API key"), "{err}");
    assert!(
        !err.contains("wrong-key-0123456789"),
        "the key is never echoed: {err}"
    );
    let (code, _, _) = sessiond(args(&["sessions", "list", "--user", "x"], &server, None)).await;
    assert_eq!(code, 4);
    let (code, _, _) = sessiond(args(&["sessions", "revoke"], &server, Some(API_KEY))).await;
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_list_and_rotate() {
    let server = keyed_server().await;
    let (code, out, err) =
        sessiond(args(&["keys", "list", "--json"], &server, Some(API_KEY))).await;
    assert_eq!(code, 0, "{err}");
    let keys: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let states: Vec<&str> = keys.iter().map(|k| k["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["signing", "static"]);
    for key in &keys {
        assert!(
            key["retires_at"].is_null(),
            "no retirement time yet is null, not a placeholder: {key}"
        );
        assert!(key["signs_from"].as_str().unwrap().ends_with('Z'), "{key}");
        for (field, value) in key.as_object().unwrap() {
            assert_ne!(value, "-", "{field} of {key}");
        }
    }

    let (code, out, err) = sessiond(args(&["keys", "rotate"], &server, Some(API_KEY))).await;
    assert_eq!(code, 0, "{err}");
    let new_kid = out.trim().to_owned();
    assert!(new_kid.starts_with("d-"));
    let (_, out, _) = sessiond(args(&["keys", "list"], &server, Some(API_KEY))).await;
    let row = out
        .lines()
        .find(|l| l.starts_with(&new_kid))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("pending"), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_inspect_says_whether_the_server_accepts_it() {
    let server = keyed_server().await;
    let created = keyed_session(&server, "inspect-me").await;
    let (code, out, err) = sessiond(args(
        &["token", "inspect", &access(&created)],
        &server,
        Some(API_KEY),
    ))
    .await;
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["accepted"], true);
    assert_eq!(report["claims"]["sub"], "inspect-me");
    assert_eq!(report["header"]["version"], "5");
    // Times stay numbers in the claims, with readable twins beside them.
    for claim in ["iat", "exp"] {
        let secs = report["claims"][claim].as_i64().unwrap();
        let readable = sessiond::cli::rfc3339(Some(&prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        }));
        assert_eq!(report["claim_times"][claim], readable.as_str(), "{claim}");
    }

    server
        .sessions()
        .await
        .revoke_session(with_metadata(
            pb::RevokeSessionRequest {
                session_handle: handle(&created),
            },
            &[("x-api-key", API_KEY)],
        ))
        .await
        .unwrap();
    let (code, out, _) = sessiond(args(
        &["token", "inspect", &access(&created)],
        &server,
        Some(API_KEY),
    ))
    .await;
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["accepted"], false);
    assert_eq!(report["reason"], "UNAUTHORISED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_subcommand_reports_an_unreachable_server() {
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b.bin");
    for words in [
        vec!["sessions", "list", "--user", "u"],
        vec!["sessions", "revoke", "--user", "u"],
        vec!["keys", "list"],
        vec!["keys", "rotate"],
        vec!["token", "inspect", "a.b.c"],
        vec!["backup", "--out", out.to_str().unwrap()],
        vec!["health"],
    ] {
        let mut a: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        a.extend([
            "--addr".to_owned(),
            nobody.clone(),
            "--timeout".to_owned(),
            "2s".to_owned(),
        ]);
        let (code, _, err) = sessiond(a).await;
        assert_eq!(code, 3, "{words:?}: {err}");
        assert!(err.contains(&nobody), "{words:?} names the address: {err}");
        assert!(
            err.contains("Connection refused"),
            "{words:?} says why, beyond \"transport error\": {err}"
        );
    }
    assert!(!out.exists(), "no backup file from a failed backup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_write_load_restores_every_session_acknowledged_before_it() {
    let server = TestServer::start().await;
    let client = server.sessions().await;
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (mut c, stop, acknowledged) = (client.clone(), stop.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 50_000 {
                    let r = create(&mut c, &format!("w{w}"), json!({"n": n})).await;
                    acknowledged.lock().unwrap().push((handle(&r), access(&r)));
                    n += 1;
                }
            })
        })
        .collect();
    wait_until("writes to be acknowledged", || {
        acknowledged.lock().unwrap().len() >= 100
    })
    .await;
    let before: Vec<(String, String)> = acknowledged.lock().unwrap().clone();
    assert!(!before.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessiond.backup");
    let (code, _, err) = sessiond(args(
        &["backup", "--out", file.to_str().unwrap()],
        &server,
        None,
    ))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("backup written"), "{err}");
    assert!(
        err.contains("2 signing keys, 2 server secrets"),
        "a rotating and the static key, and the refresh-token and page-token MAC secrets: {err}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the backup holds keys: owner-only");
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    // Restore refuses a used directory, then fills an empty one.
    let (code, _, err) = sessiond(vec![
        "restore".into(),
        file.to_str().unwrap().into(),
        "--data-dir".into(),
        server.data_dir().to_str().unwrap().into(),
    ])
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");
    let target = tempfile::tempdir().unwrap();
    let data = target.path().join("data");
    let (code, _, err) = sessiond(vec![
        "restore".into(),
        file.to_str().unwrap().into(),
        "--data-dir".into(),
        data.to_str().unwrap().into(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "a new data directory is owner-only");
    }
    std::fs::rename(&data, target.path().join("restored")).unwrap();
    let target = {
        // TestServer::start_in takes the directory holding the store.
        let restored = tempfile::tempdir().unwrap();
        std::fs::remove_dir(restored.path()).unwrap();
        std::fs::rename(target.path().join("restored"), restored.path()).unwrap();
        restored
    };

    let restored = TestServer::start_in(target, |_| {}).await;
    let mut c = restored.sessions().await;
    for (h, _) in &before {
        session_info(&mut c, h).await.unwrap_or_else(|s| {
            panic!("session {h}, acknowledged before the backup, is missing: {s:?}")
        });
    }
    // The keys came along: tokens issued before the backup still verify.
    verify(&mut c, &before[0].1, true).await.unwrap();

    // A damaged file is refused before anything is written.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = sessiond(vec![
        "restore".into(),
        file.to_str().unwrap().into(),
        "--data-dir".into(),
        empty.path().join("d").to_str().unwrap().into(),
    ])
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("checksum") || err.contains("decode"), "{err}");
    assert!(
        !empty.path().join("d").exists(),
        "nothing restored from a damaged file"
    );
}

#[tokio::test]
async fn a_bad_setting_is_named_as_the_user_set_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for serve in [&[][..], &["serve"][..]] {
        let mut argv: Vec<String> = serve.iter().map(|w| w.to_string()).collect();
        argv.extend(["--data-dir".into(), data.into()]);
        let (code, _, err) =
            sessiond_with_env(argv.clone(), &[("SESSIOND_ACCESS_TOKEN_LIFETIME", "15")]).await;
        assert_eq!(code, 2, "{serve:?}: {err}");
        assert_eq!(
            err.trim(),
            "sessiond: invalid setting SESSIOND_ACCESS_TOKEN_LIFETIME: \
             `15` is not a duration like 30s, 15m, 1h or 100d",
            "{serve:?}"
        );

        argv.extend(["--access-token-lifetime".into(), "15".into()]);
        let (code, _, err) = sessiond(argv).await;
        assert_eq!(code, 2, "{serve:?}: {err}");
        assert!(
            err.contains("invalid setting --access-token-lifetime: `15`"),
            "{serve:?}: {err}"
        );
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the settings are valid"
    );
}

#[tokio::test]
async fn a_data_directory_in_use_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, _, _lines) = crate::durability::spawn_binary_with(dir.path(), &[]);
    let (code, _, err) = sessiond(vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.path().to_str().unwrap().into(),
    ])
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.matches("is in use by another sessiond process").count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("stop that process, or give this one another --data-dir"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_in_the_server_environment_uses_its_api_keys() {
    const VERIFY: &str = "verify-key-0123456789";
    const ADMIN: &str = "admin-key-0123456789";
    let server = TestServer::start_with(|c| {
        c.api_keys = vec![
            sessiond::config::ApiKey::parse(&format!("gw:verify:{VERIFY}"), 0).unwrap(),
            sessiond::config::ApiKey::admin("ops", ADMIN),
        ]
    })
    .await;
    let keys_list = || args(&["keys", "list"], &server, None);
    let hashed = format!("sha256:{}", "ab".repeat(32));
    let server_env = format!("gw:verify:{VERIFY},cold:admin:{hashed},ops:admin:{ADMIN}");

    let (code, out, err) =
        sessiond_with_env(keys_list(), &[("SESSIOND_API_KEYS", &server_env)]).await;
    assert_eq!(
        code, 0,
        "the admin key, not the verify key listed first: {err}"
    );
    assert!(out.starts_with("KID"), "{out}");
    let (code, _, err) = sessiond_with_env(keys_list(), &[("SESSIOND_API_KEYS", ADMIN)]).await;
    assert_eq!(code, 0, "a bare key: {err}");

    // SESSIOND_API_KEY (like --api-key) comes first.
    let (code, _, err) = sessiond_with_env(
        keys_list(),
        &[
            ("SESSIOND_API_KEYS", &server_env),
            ("SESSIOND_API_KEY", "wrong-key-0123456789"),
        ],
    )
    .await;
    assert_eq!(code, 4, "{err}");
    // Only hashed keys: nothing to send.
    let (code, _, err) = sessiond_with_env(
        keys_list(),
        &[("SESSIOND_API_KEYS", &format!("cold:admin:{hashed}"))],
    )
    .await;
    assert_eq!(code, 4, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_list_without_a_user_lists_every_users_sessions() {
    let server = keyed_server().await;
    let mut created = Vec::new();
    for user in ["list-a", "list-b", "list-c"] {
        created.push((handle(&keyed_session(&server, user).await), user));
    }
    let list = |extra: &[&str]| {
        let mut words = vec!["sessions", "list"];
        words.extend_from_slice(extra);
        args(&words, &server, Some(API_KEY))
    };

    let (code, out, err) = sessiond(list(&[])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HANDLE"), "{out}");
    for (handle, user) in &created {
        let row = out
            .lines()
            .find(|l| l.starts_with(handle.as_str()))
            .unwrap_or_else(|| panic!("{handle} in {out}"));
        assert!(row.contains(user) && row.contains("public"), "{row}");
    }
    assert!(err.is_empty(), "nothing left out: {err}");

    let (code, out, err) = sessiond(list(&["--limit", "2", "--json"])).await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    let mut handles: Vec<&str> = created.iter().map(|(h, _)| h.as_str()).collect();
    handles.sort();
    assert_eq!(rows[0]["session_handle"], handles[0]);
    assert!(rows[0]["user_id"].as_str().unwrap().starts_with("list-"));
    assert!(rows[0]["expires"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        err.trim(),
        "showing 2 sessions; more exist (raise --limit, or --limit 0 for all)"
    );

    let (code, out, err) = sessiond(list(&["--limit", "0", "--json"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(err.is_empty(), "{err}");
    let (code, out, _) = sessiond(list(&["--limit", "3", "--json"])).await;
    assert_eq!((code, out.lines().count()), (0, 3), "exactly the limit");

    let (code, out, _) = sessiond(list(&["--tenant", "elsewhere"])).await;
    assert_eq!(
        (code, out.lines().count()),
        (0, 1),
        "only the header: {out}"
    );

    // With --user the limit holds too.
    let (code, out, err) = sessiond(list(&["--user", "list-a", "--limit", "1"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "header and one row: {out}");
    assert!(err.is_empty(), "list-a has one session: {err}");
    keyed_session(&server, "list-a").await;
    let (_, out, err) = sessiond(list(&["--user", "list-a", "--limit", "1"])).await;
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(err.contains("showing 1 session; more exist"), "{err}");
}

#[tokio::test]
async fn a_flag_shows_one_default_or_none() {
    for words in [
        &["sessions", "list"][..],
        &["sessions", "revoke"],
        &["keys", "list"],
        &["keys", "rotate"],
        &["token", "inspect"],
        &["backup"],
        &["restore"],
        &["health"],
        &["serve"],
    ] {
        let mut argv: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        argv.push("--help".into());
        let (code, out, err) = sessiond(argv).await;
        assert_eq!(code, 0, "{words:?}: {err}");
        for line in out.lines() {
            assert!(
                line.matches("[default:").count() <= 1 && !line.contains("[default: \"\"]"),
                "{words:?}: {line}"
            );
        }
    }
    let (_, out, _) = sessiond(vec!["sessions".into(), "revoke".into(), "--help".into()]).await;
    let tenant = out.lines().find(|l| l.contains("--tenant")).unwrap();
    assert!(tenant.ends_with("[default: public]"), "{tenant}");
}
