//! Three sessiond processes on loopback sharing one PostgreSQL database,
//! as replicas behind a load balancer run: what one replica acknowledges
//! the others see, theft and revocation found through one replica hold on
//! all of them, concurrent refreshes spread over them leave one lineage,
//! and a replica killed with SIGKILL under load loses nothing it
//! acknowledged while the others keep serving, and creates spread over
//! them stay within one per-user session limit.
//!
//! Each replica is a real process of the binary, so nothing is shared but
//! the database: each has its own cache of verified tokens and its own key
//! ring in memory. Every replica gets the same API key; the signing keys and
//! the refresh-token MAC secret come from the database.

use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::json;
use sessiond::Clock;
use sessiond::pb;
use sessiond::pb::session_service_client::SessionServiceClient;
use sessiond::pb::user_session_service_client::UserSessionServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::durability::spawn_binary_with;
use crate::helpers::{
    API_KEY, access, assert_status, handle, http_get, json, obj, refresh_token, wait_until,
};
use crate::postgres::harness;

type Key = fn(Request<()>) -> Result<Request<()>, Status>;
type Sessions = SessionServiceClient<InterceptedService<Channel, Key>>;
type Buckets = UserSessionServiceClient<InterceptedService<Channel, Key>>;

/// Every call is a backend's, with the API key all replicas share.
fn api_key(mut req: Request<()>) -> Result<Request<()>, Status> {
    req.metadata_mut()
        .insert("x-api-key", MetadataValue::from_static(API_KEY));
    Ok(req)
}

/// One sessiond process of the binary.
struct Replica {
    name: &'static str,
    args: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    addr: String,
    channel: Channel,
}

impl Replica {
    /// Starts the binary with `args` and waits for its ready line.
    async fn start(name: &'static str, args: Vec<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (child, addr) = spawn(dir.path(), &args).await;
        let channel = connect(&addr).await;
        Self {
            name,
            args,
            dir,
            child: Some(child),
            addr,
            channel,
        }
    }

    fn sessions(&self) -> Sessions {
        SessionServiceClient::with_interceptor(self.channel.clone(), api_key as Key)
    }

    fn buckets(&self) -> Buckets {
        UserSessionServiceClient::with_interceptor(self.channel.clone(), api_key as Key)
    }

    /// SIGKILL: no shutdown, no draining, connections cut.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("the replica runs");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts the binary again with the same arguments (on a new port).
    async fn restart(&mut self) {
        assert!(self.child.is_none(), "replica {} still runs", self.name);
        let (child, addr) = spawn(self.dir.path(), &self.args).await;
        self.channel = connect(&addr).await;
        self.child = Some(child);
        self.addr = addr;
    }

    /// The value of a counter series (`name{labels}`) on `/metrics`.
    async fn counter(&self, series: &str) -> u64 {
        let (status, _, body) = http_get(self.addr.parse().unwrap(), "/metrics").await;
        assert!(status.contains("200"), "{status}");
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0, |v| v.trim().parse().unwrap())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn spawn(dir: &std::path::Path, args: &[String]) -> (Child, String) {
    let (dir, args) = (dir.to_owned(), args.to_vec());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (child, addr, _lines) = spawn_binary_with(&dir, &args);
        (child, addr)
    })
    .await
    .unwrap()
}

async fn connect(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The arguments every replica on `db` gets, then `extra`.
fn replica_args(db: &harness::Database, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--database-url",
        &db.url,
        "--database-pool-size",
        "8",
        "--api-key",
        API_KEY,
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// A database of the test's own and three replicas A, B and C on it, each
/// with `extra` arguments; `None` when PostgreSQL is missing (and not
/// required). All three start together on the empty database, as a new
/// deployment's replicas do, and agree on the keys and secrets one of them
/// made.
async fn three_replicas(test: &str, extra: &[&str]) -> Option<(harness::Database, [Replica; 3])> {
    let db = harness::postgres(test)?;
    let args = replica_args(&db, extra);
    let (a, b, c) = tokio::join!(
        Replica::start("A", args.clone()),
        Replica::start("B", args.clone()),
        Replica::start("C", args.clone()),
    );
    Some((db, [a, b, c]))
}

async fn create(
    c: &mut Sessions,
    user: &str,
    data: serde_json::Value,
) -> pb::CreateNewSessionResponse {
    c.create_new_session(pb::CreateNewSessionRequest {
        user_id: user.into(),
        access_token_payload: Some(obj(json!({"role": "reader"}))),
        session_data_in_database: Some(obj(data)),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

/// GetSession.
async fn check(
    c: &mut Sessions,
    access: &str,
    check_database: bool,
) -> Result<pb::GetSessionResponse, Status> {
    c.get_session(pb::GetSessionRequest {
        access_token: access.into(),
        check_database,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn refresh(c: &mut Sessions, token: &str) -> Result<pb::RefreshSessionResponse, Status> {
    c.refresh_session(pb::RefreshSessionRequest {
        refresh_token: token.into(),
        disable_anti_csrf: true,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn info(c: &mut Sessions, handle: &str) -> Result<pb::GetSessionInformationResponse, Status> {
    c.get_session_information(pb::GetSessionInformationRequest {
        session_handle: handle.into(),
    })
    .await
    .map(|r| r.into_inner())
}

/// (access token, refresh token) of a refresh.
fn tokens(r: &pb::RefreshSessionResponse) -> (String, String) {
    (
        r.access_token.clone().unwrap().token,
        r.refresh_token.clone().unwrap().token,
    )
}

/// The time a token was made, ms since the epoch.
fn created_ms(token: &pb::Token) -> u64 {
    let t = token.created_time.as_ref().unwrap();
    t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_replica_is_checked_and_refreshed_on_the_others() {
    let test = "a_session_made_on_one_replica_is_checked_and_refreshed_on_the_others";
    let Some((_db, [a, b, c])) = three_replicas(test, &[]).await else {
        return;
    };
    let created = create(&mut a.sessions(), "alice", json!({"plan": "pro"})).await;

    let got = check(&mut b.sessions(), &access(&created), true)
        .await
        .expect("B checks in the database a session A made");
    let session = got.session.unwrap();
    assert_eq!(session.session_handle, handle(&created));
    assert_eq!(session.user_id, "alice");
    assert_eq!(
        json(session.access_token_payload.as_ref().unwrap())["role"],
        "reader"
    );

    let refreshed = refresh(&mut c.sessions(), &refresh_token(&created))
        .await
        .expect("C refreshes a session A made");
    assert_eq!(
        refreshed.session.as_ref().unwrap().session_handle,
        handle(&created)
    );
    let (new_access, new_refresh) = tokens(&refreshed);
    assert_ne!(new_access, access(&created));
    for r in [&a, &b, &c] {
        check(&mut r.sessions(), &new_access, true)
            .await
            .unwrap_or_else(|s| panic!("{} checks the token C issued: {s:?}", r.name));
        let info = info(&mut r.sessions(), &handle(&created)).await.unwrap();
        assert_eq!(info.user_id, "alice");
        assert_eq!(
            json(info.session_data_in_database.as_ref().unwrap()),
            json!({"plan": "pro"})
        );
    }

    // The lineage goes on wherever the next refresh lands.
    let (third_access, _) = tokens(
        &refresh(&mut a.sessions(), &new_refresh)
            .await
            .expect("A refreshes the token C issued"),
    );
    check(&mut b.sessions(), &third_access, true)
        .await
        .expect("B checks the token A issued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_reused_on_another_replica_is_theft_and_the_session_is_gone_everywhere() {
    let test =
        "a_refresh_token_reused_on_another_replica_is_theft_and_the_session_is_gone_everywhere";
    // No grace period: any reuse of a rotated-out token is theft.
    let Some((_db, [a, b, c])) = three_replicas(test, &["--refresh-grace-period", "0s"]).await
    else {
        return;
    };
    let created = create(&mut a.sessions(), "victim", json!({})).await;
    let first_refresh = refresh_token(&created);
    let refreshed = refresh(&mut c.sessions(), &first_refresh).await.unwrap();
    let (new_access, new_refresh) = tokens(&refreshed);

    // The window is `now <= rotated_at + 0`: a reuse within the very
    // millisecond C rotated in would still be in it. Every replica reads
    // the same system clock, so wait for it to pass that millisecond.
    let rotated_at = created_ms(refreshed.refresh_token.as_ref().unwrap());
    wait_until("the clock to pass the rotation", || {
        sessiond::SystemClock.now_ms() > rotated_at
    })
    .await;
    let status = assert_status(
        refresh(&mut a.sessions(), &first_refresh).await,
        Code::Unauthenticated,
        "TOKEN_THEFT_DETECTED",
    );
    let details = status.get_error_details();
    let info_of_theft = details.error_info().unwrap();
    assert_eq!(info_of_theft.metadata["session_handle"], handle(&created));
    assert_eq!(info_of_theft.metadata["user_id"], "victim");

    for r in [&b, &c] {
        for token in [&new_access, &access(&created)] {
            assert_status(
                check(&mut r.sessions(), token, true).await,
                Code::Unauthenticated,
                "UNAUTHORISED",
            );
        }
        assert_status(
            info(&mut r.sessions(), &handle(&created)).await,
            Code::NotFound,
            "SESSION_NOT_FOUND",
        );
    }
    // The legitimate branch died with the session.
    assert_status(
        refresh(&mut b.sessions(), &new_refresh).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_revoked_on_one_replica_is_refused_by_check_database_on_another() {
    let test = "a_session_revoked_on_one_replica_is_refused_by_check_database_on_another";
    let Some((_db, [a, b, c])) = three_replicas(test, &[]).await else {
        return;
    };
    let created = create(&mut a.sessions(), "bob", json!({})).await;
    // C has verified the token (and keeps it in its cache) before B revokes.
    check(&mut c.sessions(), &access(&created), false)
        .await
        .unwrap();
    check(&mut c.sessions(), &access(&created), true)
        .await
        .unwrap();

    let revoked = b
        .sessions()
        .revoke_session(pb::RevokeSessionRequest {
            session_handle: handle(&created),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);

    assert_status(
        check(&mut c.sessions(), &access(&created), true).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    check(&mut c.sessions(), &access(&created), false)
        .await
        .expect("without check_database a token verifies until it expires (documented)");
    assert_status(
        refresh(&mut a.sessions(), &refresh_token(&created)).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    assert_status(
        info(&mut a.sessions(), &handle(&created)).await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refreshes_of_one_token_spread_over_three_replicas_leave_one_lineage() {
    let test = "concurrent_refreshes_of_one_token_spread_over_three_replicas_leave_one_lineage";
    // The longest grace period there is, so that every racer is within it
    // however slow the machine.
    let Some((_db, r)) = three_replicas(test, &["--refresh-grace-period", "300s"]).await else {
        return;
    };
    let r = Arc::new(r);
    let created = create(&mut r[0].sessions(), "racer", json!({})).await;
    let first_refresh = refresh_token(&created);
    const RACERS: usize = 32;
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let mut client = r[i % 3].sessions();
            let (token, start) = (first_refresh.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                refresh(&mut client, &token).await
            })
        })
        .collect();
    let mut issued = Vec::new();
    for (i, racer) in racers.into_iter().enumerate() {
        match racer.await.unwrap() {
            Ok(refreshed) => issued.push(tokens(&refreshed)),
            Err(s) => panic!(
                "racer {i} on {}: within the grace period a refresh of the token \
                 rotates or rotates again, never fails: {s:?}",
                r[i % 3].name
            ),
        }
    }

    // One rotation of the current token; every other racer found it
    // rotated already and rotated its previous token again.
    let mut rotated = 0;
    let mut retried = 0;
    for replica in r.iter() {
        rotated += replica
            .counter("sessiond_refreshes_total{outcome=\"rotated\"}")
            .await;
        retried += replica
            .counter("sessiond_refreshes_total{outcome=\"retried\"}")
            .await;
    }
    assert_eq!((rotated, retried), (1, RACERS as u64 - 1));

    // Exactly one of the 32 lineages is live, and every replica agrees
    // which.
    let mut live_on = Vec::new();
    for replica in r.iter() {
        let mut client = replica.sessions();
        let mut live = Vec::new();
        for (i, (access_token, _)) in issued.iter().enumerate() {
            match check(&mut client, access_token, true).await {
                Ok(_) => live.push(i),
                Err(s) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
            }
        }
        assert_eq!(live.len(), 1, "live lineages on {}: {live:?}", replica.name);
        live_on.push(live[0]);
    }
    assert!(live_on.iter().all(|&l| l == live_on[0]), "{live_on:?}");

    // No rotation was lost: the first token is still the previous one (two
    // rotations of the current token would have made it two generations
    // old, and its use theft), so it may rotate again, and what that gives
    // continues the lineage on another replica.
    let (again_access, again_refresh) = tokens(
        &refresh(&mut r[1].sessions(), &first_refresh)
            .await
            .expect("the first token is still the previous one"),
    );
    check(&mut r[2].sessions(), &again_access, true)
        .await
        .unwrap();
    let (next_access, _) = tokens(&refresh(&mut r[0].sessions(), &again_refresh).await.unwrap());
    check(&mut r[1].sessions(), &next_access, true)
        .await
        .unwrap();
}

/// What a writer of the load had acknowledged for one session.
struct Acked {
    handle: String,
    data: serde_json::Value,
    access: String,
    refresh: String,
    /// A refresh of it was in flight when its replica died: whether it was
    /// applied is unknown.
    in_doubt: bool,
}

/// What one writer had acknowledged: sessions, and the keys it merged into
/// a public bucket that writers on the other replicas merge into too.
struct Written {
    replica: usize,
    user: String,
    sessions: Vec<Acked>,
    bucket_user: String,
    bucket_keys: Vec<String>,
    failure: Option<Status>,
}

/// A writer on one replica: creates a session of `user`, refreshes it,
/// merges a key of its own into the bucket of `bucket_user`, and again,
/// until `stop` is set (or 10,000 rounds) or a call fails.
async fn writer(
    replica: usize,
    mut sessions: Sessions,
    mut buckets: Buckets,
    (user, bucket_user): (String, String),
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
) -> Written {
    let mut w = Written {
        replica,
        user,
        sessions: Vec::new(),
        bucket_user,
        bucket_keys: Vec::new(),
        failure: None,
    };
    for i in 0..10_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let data = json!({"user": w.user, "round": i.to_string()});
        let created = sessions
            .create_new_session(pb::CreateNewSessionRequest {
                user_id: w.user.clone(),
                session_data_in_database: Some(obj(data.clone())),
                ..Default::default()
            })
            .await;
        let created = match created {
            Ok(c) => c.into_inner(),
            Err(s) => {
                w.failure = Some(s);
                break;
            }
        };
        w.sessions.push(Acked {
            handle: handle(&created),
            data,
            access: access(&created),
            refresh: refresh_token(&created),
            in_doubt: false,
        });
        let last = w.sessions.last_mut().unwrap();
        match refresh(&mut sessions, &last.refresh).await {
            Ok(r) => (last.access, last.refresh) = tokens(&r),
            Err(s) => {
                last.in_doubt = true;
                w.failure = Some(s);
                break;
            }
        }
        let key = format!("{}-{i}", w.user);
        let merged = buckets
            .update_user_session(pb::UpdateUserSessionRequest {
                bucket: pb::Bucket::Public as i32,
                data: Some(obj(json!({ key.clone(): i }))),
                user_id: w.bucket_user.clone(),
                ..Default::default()
            })
            .await;
        if let Err(s) = merged {
            w.failure = Some(s);
            break;
        }
        w.bucket_keys.push(key);
        rounds.fetch_add(1, Ordering::Relaxed);
    }
    w
}

/// Checks through `replica` that every acknowledged write is there.
async fn everything_acknowledged_is_on(replica: &Replica, written: &[Written]) {
    let (mut sessions, mut buckets) = (replica.sessions(), replica.buckets());
    for w in written {
        for s in &w.sessions {
            let info = info(&mut sessions, &s.handle).await.unwrap_or_else(|e| {
                panic!(
                    "{}: session {} acknowledged by replica {} is lost: {e:?}",
                    replica.name, s.handle, w.replica
                )
            });
            assert_eq!(
                json(info.session_data_in_database.as_ref().unwrap()),
                s.data
            );
            check(&mut sessions, &s.access, true)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: the last acknowledged access token of session {} is refused: {e:?}",
                        replica.name, s.handle
                    )
                });
        }
        let bucket = buckets
            .get_user_session(pb::GetUserSessionRequest {
                bucket: pb::Bucket::Public as i32,
                user_id: w.bucket_user.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let public = json(bucket.public.as_ref().unwrap());
        for key in &w.bucket_keys {
            assert!(
                public.get(key).is_some(),
                "{}: key {key} of bucket {} acknowledged by replica {} is lost",
                replica.name,
                w.bucket_user,
                w.replica
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_replica_under_load_loses_nothing_acknowledged() {
    let test = "kill_9_of_a_replica_under_load_loses_nothing_acknowledged";
    let Some((_db, mut r)) = three_replicas(test, &[]).await else {
        return;
    };
    let before = create(&mut r[0].sessions(), "early", json!({})).await;

    const WRITERS_EACH: usize = 3;
    let stop = Arc::new(AtomicBool::new(false));
    let rounds: [Arc<AtomicUsize>; 3] = Default::default();
    let writers: Vec<_> = (0..3 * WRITERS_EACH)
        .map(|w| {
            let at = w % 3;
            tokio::spawn(writer(
                at,
                r[at].sessions(),
                r[at].buckets(),
                (format!("writer-{w}"), format!("bucket-{}", w / 3)),
                stop.clone(),
                rounds[at].clone(),
            ))
        })
        .collect();
    wait_until("the load to get going on every replica", || {
        rounds.iter().all(|n| n.load(Ordering::Relaxed) >= 20)
    })
    .await;
    r[0].kill();

    // The other two keep serving: their writers go on, and a session A made
    // before it died is checked and refreshed on them.
    let (b_then, c_then) = (
        rounds[1].load(Ordering::Relaxed),
        rounds[2].load(Ordering::Relaxed),
    );
    wait_until("B and C to go on writing after A died", || {
        rounds[1].load(Ordering::Relaxed) >= b_then + 50
            && rounds[2].load(Ordering::Relaxed) >= c_then + 50
    })
    .await;
    for replica in &r[1..] {
        let mut c = replica.sessions();
        check(&mut c, &access(&before), true).await.unwrap();
        let made = create(&mut c, "after-the-kill", json!({})).await;
        check(&mut c, &access(&made), true).await.unwrap();
    }
    refresh(&mut r[2].sessions(), &refresh_token(&before))
        .await
        .expect("C refreshes a session A made before it died");
    stop.store(true, Ordering::Relaxed);
    let mut written = Vec::new();
    for w in writers {
        written.push(w.await.unwrap());
    }
    for w in &written {
        if w.replica != 0 {
            assert!(
                w.failure.is_none(),
                "a writer on a live replica failed: {:?}",
                w.failure
            );
        } else {
            // Cut off by the kill, not refused by sessiond (whose statuses
            // carry ErrorInfo).
            let failure = w.failure.as_ref().expect("the kill stopped A's writers");
            assert!(
                failure.get_error_details().error_info().is_none(),
                "{failure:?}"
            );
        }
    }
    // The killed replica starts again into the same state.
    r[0].restart().await;
    for replica in r.iter() {
        everything_acknowledged_is_on(replica, &written).await;
    }
    let made = create(&mut r[0].sessions(), "after-the-restart", json!({})).await;
    check(&mut r[1].sessions(), &access(&made), true)
        .await
        .expect("the restarted replica serves again");
    // Every acknowledged refresh token is the session's current one: each
    // refreshes, on a replica other than the one that issued it.
    for w in &written {
        let mut c = r[(w.replica + 1) % 3].sessions();
        for s in w.sessions.iter().filter(|s| !s.in_doubt) {
            refresh(&mut c, &s.refresh).await.unwrap_or_else(|e| {
                panic!(
                    "the acknowledged refresh token of {} is refused: {e:?}",
                    s.handle
                )
            });
        }
    }
}

/// The replicas of a new deployment often start at once on an empty
/// database. Each finds no signing key, and all race to make the first
/// ones: one static and one rotating key must come out, which every replica
/// signs with, so a token any of them issues verifies on all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_on_an_empty_database_verify_each_others_tokens() {
    let test = "replicas_started_together_on_an_empty_database_verify_each_others_tokens";
    let Some(db) = harness::postgres(test) else {
        return;
    };
    let args = replica_args(&db, &[]);
    let r = tokio::join!(
        Replica::start("A", args.clone()),
        Replica::start("B", args.clone()),
        Replica::start("C", args.clone()),
    );
    let r = [r.0, r.1, r.2];
    for from in &r {
        let made = create(&mut from.sessions(), "u", json!({})).await;
        for to in &r {
            check(&mut to.sessions(), &access(&made), true)
                .await
                .unwrap_or_else(|s| panic!("{} made, {} checked: {s:?}", from.name, to.name));
        }
    }
}

/// 32 creates for one user at once, spread over the three replicas,
/// against `--max-sessions-per-user 3` with `action`: every replica
/// serialises through the database, so the limit holds across processes.
/// Returns how many creates succeeded, after checking that exactly 3
/// sessions are live and every replica lists and accepts the same 3;
/// `None` when PostgreSQL is missing (and not required).
async fn creates_over_three_replicas_within_the_limit(test: &str, action: &str) -> Option<usize> {
    const RACERS: usize = 32;
    let limit = [
        "--max-sessions-per-user",
        "3",
        "--session-limit-action",
        action,
    ];
    let (_db, r) = three_replicas(test, &limit).await?;
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let (mut client, start) = (r[i % 3].sessions(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                client
                    .create_new_session(pb::CreateNewSessionRequest {
                        user_id: "crowd".into(),
                        ..Default::default()
                    })
                    .await
            })
        })
        .collect();
    let mut created = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            Ok(made) => created.push(made.into_inner()),
            Err(s) => {
                assert_eq!(action, "refuse", "evict-oldest refuses nothing: {s:?}");
                assert_status::<()>(Err(s), Code::ResourceExhausted, "SESSION_LIMIT_REACHED");
            }
        }
    }
    let mut live_on = Vec::new();
    for replica in &r {
        let mut c = replica.sessions();
        let mut live: Vec<String> = Vec::new();
        for made in &created {
            if check(&mut c, &access(made), true).await.is_ok() {
                live.push(handle(made));
            }
        }
        live.sort();
        let mut listed: Vec<String> = c
            .list_sessions(pb::ListSessionsRequest {
                user_id: "crowd".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .sessions
            .into_iter()
            .map(|s| s.session_handle)
            .collect();
        listed.sort();
        assert_eq!(listed, live, "{} lists what it accepts", replica.name);
        assert_eq!(live.len(), 3, "live on {}: {live:?}", replica.name);
        live_on.push(live);
    }
    assert!(live_on.iter().all(|l| *l == live_on[0]), "{live_on:?}");
    let mut evicted = 0;
    for replica in &r {
        evicted += replica.counter("sessiond_sessions_evicted_total").await;
    }
    assert_eq!(
        evicted as usize,
        created.len() - 3,
        "each session is evicted once, by one replica"
    );
    Some(created.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refuse_holds_the_per_user_limit_across_replicas() {
    let test = "refuse_holds_the_per_user_limit_across_replicas";
    if let Some(created) = creates_over_three_replicas_within_the_limit(test, "refuse").await {
        assert_eq!(created, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evict_oldest_holds_the_per_user_limit_across_replicas() {
    let test = "evict_oldest_holds_the_per_user_limit_across_replicas";
    if let Some(created) = creates_over_three_replicas_within_the_limit(test, "evict-oldest").await
    {
        assert_eq!(created, 32);
    }
}
