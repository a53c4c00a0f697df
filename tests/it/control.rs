//! Session control through gRPC: devices, recorded activity, the paged
//! listings (ListSessions, GetAllSessionHandlesForUser) and the end
//! user's own sessions (ListMySessions, RevokeMySession,
//! RevokeMyOtherSessions). Each case is shared: it takes the store to
//! start its server on, and runs here on sled and in `postgres.rs` on
//! PostgreSQL. The listings' paging is in `control_pages.rs`, limits and
//! timeouts in `control_limits.rs`.

use std::time::Duration;

use prost_types::Timestamp;
use sessiond::config::Config;
use sessiond::pb;
use sessiond::pb::session_service_client::SessionServiceClient;
use sessiond::pb::user_session_service_client::UserSessionServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::helpers::*;

/// What a shared case's server keeps its sessions in: a change to the
/// server's configuration (none for sled, `database_url` for PostgreSQL).
pub type Backend<'a> = &'a (dyn Fn(&mut Config) + Send + Sync);

/// The embedded store, as configured by default.
pub const SLED: Backend<'static> = &|_| {};

/// A timestamp as ms since the epoch.
pub fn ms(t: Option<&Timestamp>) -> u64 {
    let t = t.expect("a timestamp");
    t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000
}

/// One page of ListSessions.
pub async fn list_page(
    c: &mut SessionServiceClient<Channel>,
    user: &str,
    tenant: &str,
    page_size: u32,
    page_token: &str,
) -> Result<pb::ListSessionsResponse, Status> {
    c.list_sessions(pb::ListSessionsRequest {
        user_id: user.into(),
        tenant_id: tenant.into(),
        page_size,
        page_token: page_token.into(),
    })
    .await
    .map(|r| r.into_inner())
}

/// A user's sessions in a tenant, in one default-sized page (which must
/// be the last).
pub async fn listed(
    c: &mut SessionServiceClient<Channel>,
    user: &str,
    tenant: &str,
) -> Vec<pb::SessionSummary> {
    let page = list_page(c, user, tenant, 0, "").await.unwrap();
    assert!(page.next_page_token.is_empty(), "one page holds them all");
    page.sessions
}

/// The handles of listed sessions, in order.
pub fn handles_of(sessions: &[pb::SessionSummary]) -> Vec<String> {
    sessions.iter().map(|s| s.session_handle.clone()).collect()
}

/// Creates a session of `user` in `tenant` (without anti-CSRF).
pub async fn create_in(
    c: &mut SessionServiceClient<Channel>,
    user: &str,
    tenant: &str,
) -> pb::CreateNewSessionResponse {
    c.create_new_session(pb::CreateNewSessionRequest {
        user_id: user.into(),
        tenant_id: tenant.into(),
        disable_anti_csrf: true,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

fn with_device(user: &str, device: pb::Device) -> pb::CreateNewSessionRequest {
    pb::CreateNewSessionRequest {
        user_id: user.into(),
        device: Some(device),
        disable_anti_csrf: true,
        ..Default::default()
    }
}

fn refresh_with(token: &str, device: pb::Device) -> pb::RefreshSessionRequest {
    pb::RefreshSessionRequest {
        refresh_token: token.into(),
        disable_anti_csrf: true,
        device: Some(device),
        ..Default::default()
    }
}

/// The one listed session with `handle`.
fn find<'a>(sessions: &'a [pb::SessionSummary], handle: &str) -> &'a pb::SessionSummary {
    let found: Vec<_> = sessions
        .iter()
        .filter(|s| s.session_handle == handle)
        .collect();
    assert_eq!(found.len(), 1, "{handle} in {sessions:?}");
    found[0]
}

/// Created with a device, a session is listed with it, its creation time,
/// its expiry and its last activity; a refresh with a device replaces the
/// fields it gives and keeps the others.
pub async fn devices_are_listed_and_refresh_updates_the_fields_given(backend: Backend<'_>) {
    let server = TestServer::start_with(backend).await;
    let mut c = server.sessions().await;
    let laptop = pb::Device {
        ip_address: "203.0.113.7".into(),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0".into(),
        label: "Firefox on Linux".into(),
    };
    let created = c
        .create_new_session(with_device("dora", laptop.clone()))
        .await
        .unwrap()
        .into_inner();
    let born = ms(created.access_token.as_ref().unwrap().created_time.as_ref());
    server.clock.advance(Duration::from_secs(5));
    let plain = create_in(&mut c, "dora", "public").await;

    let sessions = listed(&mut c, "dora", "public").await;
    assert_eq!(
        handles_of(&sessions),
        [handle(&plain), handle(&created)],
        "newest first"
    );
    let s = &sessions[1];
    assert_eq!(s.tenant_id, "public");
    assert_eq!(s.device.as_ref(), Some(&laptop));
    assert_eq!(ms(s.time_created.as_ref()), born);
    assert_eq!(
        ms(s.last_active_time.as_ref()),
        born,
        "creation is activity"
    );
    assert_eq!(
        ms(s.expiry.as_ref()),
        ms(created.refresh_token.as_ref().unwrap().expiry.as_ref())
    );
    assert!(!s.current, "ListSessions marks no session current");
    assert_eq!(sessions[0].device, None, "created without a device");

    // A new address only: the user agent and label stay.
    server.clock.advance(Duration::from_secs(90));
    let moved = c
        .refresh_session(refresh_with(
            &refresh_token(&created),
            pb::Device {
                ip_address: "2001:db8::1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let sessions = listed(&mut c, "dora", "public").await;
    let s = find(&sessions, &handle(&created));
    assert_eq!(
        s.device.as_ref(),
        Some(&pb::Device {
            ip_address: "2001:db8::1".into(),
            ..laptop.clone()
        })
    );
    assert_eq!(ms(s.time_created.as_ref()), born);
    assert_eq!(ms(s.last_active_time.as_ref()), born + 95_000);
    let new_expiry = ms(moved.refresh_token.as_ref().unwrap().expiry.as_ref());
    assert_eq!(ms(s.expiry.as_ref()), new_expiry);
    assert_eq!(
        new_expiry,
        ms(created.refresh_token.as_ref().unwrap().expiry.as_ref()) + 95_000,
        "the expiry slid with the refresh"
    );

    // Every field given: all replaced. No device: nothing changes.
    let phone = pb::Device {
        ip_address: "198.51.100.20".into(),
        user_agent: "Mozilla/5.0 (Android 14; Mobile) Firefox/128.0".into(),
        label: "Firefox on Android".into(),
    };
    let next = c
        .refresh_session(refresh_with(
            &moved.refresh_token.unwrap().token,
            phone.clone(),
        ))
        .await
        .unwrap()
        .into_inner();
    refresh(&mut c, &next.refresh_token.unwrap().token)
        .await
        .unwrap();
    let sessions = listed(&mut c, "dora", "public").await;
    assert_eq!(find(&sessions, &handle(&created)).device, Some(phone));
    assert_eq!(find(&sessions, &handle(&plain)).device, None);
}

/// A bad device is refused on create and on refresh, naming the field;
/// a refused refresh leaves the refresh token usable; the longest values
/// allowed are kept intact.
pub async fn bad_devices_are_refused_naming_the_field(backend: Backend<'_>) {
    let server = TestServer::start_with(backend).await;
    let mut c = server.sessions().await;
    let created = create_in(&mut c, "eve", "public").await;
    let bad = [
        (
            pb::Device {
                ip_address: "999.1.1.1".into(),
                ..Default::default()
            },
            "device.ip_address",
        ),
        (
            pb::Device {
                ip_address: "localhost".into(),
                ..Default::default()
            },
            "device.ip_address",
        ),
        (
            pb::Device {
                user_agent: "x".repeat(513),
                ..Default::default()
            },
            "device.user_agent",
        ),
        (
            pb::Device {
                label: "é".repeat(129),
                ..Default::default()
            },
            "device.label",
        ),
    ];
    for (device, field) in bad {
        let s = assert_status(
            c.create_new_session(with_device("eve", device.clone()))
                .await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(bad_field(&s), field);
        let s = assert_status(
            c.refresh_session(refresh_with(&refresh_token(&created), device))
                .await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(bad_field(&s), field);
    }
    assert_eq!(listed(&mut c, "eve", "public").await.len(), 1);
    refresh(&mut c, &refresh_token(&created))
        .await
        .expect("a refused refresh did not spend the token");

    // 512 bytes of user agent; 128 characters (256 bytes) of label.
    let longest = pb::Device {
        ip_address: "2001:db8:85a3::8a2e:370:7334".into(),
        user_agent: "u".repeat(512),
        label: "é".repeat(128),
    };
    let kept = c
        .create_new_session(with_device("eve", longest.clone()))
        .await
        .unwrap()
        .into_inner();
    let sessions = listed(&mut c, "eve", "public").await;
    assert_eq!(find(&sessions, &handle(&kept)).device, Some(longest));
}

/// A refresh records activity at once; a database-checked GetSession
/// records it only when the recorded time is at least a minute old; a
/// stateless GetSession never does.
pub async fn activity_is_recorded_by_refresh_and_by_checked_use_to_the_minute(
    backend: Backend<'_>,
) {
    let server = TestServer::start_with(backend).await;
    let mut c = server.sessions().await;
    let created = create_in(&mut c, "fay", "public").await;
    let born = ms(created.access_token.as_ref().unwrap().created_time.as_ref());
    let token = access(&created);
    let last_active = |sessions: Vec<pb::SessionSummary>| {
        assert_eq!(sessions.len(), 1);
        ms(sessions[0].last_active_time.as_ref())
    };

    server.clock.advance(Duration::from_secs(30));
    verify(&mut c, &token, true).await.unwrap();
    assert_eq!(
        last_active(listed(&mut c, "fay", "public").await),
        born,
        "30 s after the last recorded activity: not written"
    );
    server.clock.advance(Duration::from_secs(31));
    verify(&mut c, &token, true).await.unwrap();
    assert_eq!(
        last_active(listed(&mut c, "fay", "public").await),
        born + 61_000,
        "61 s after: written"
    );

    server.clock.advance(Duration::from_secs(200));
    verify(&mut c, &token, false).await.unwrap();
    assert_eq!(
        last_active(listed(&mut c, "fay", "public").await),
        born + 61_000,
        "a stateless check reads no store and records nothing"
    );

    refresh(&mut c, &refresh_token(&created)).await.unwrap();
    assert_eq!(
        last_active(listed(&mut c, "fay", "public").await),
        born + 261_000,
        "a refresh always records"
    );
}

/// `msg` sent with `authorization: Bearer <access>`.
fn as_user<T>(msg: T, access: &str) -> tonic::Request<T> {
    with_metadata(msg, &[("authorization", &format!("Bearer {access}"))])
}

async fn my_sessions(
    me: &mut UserSessionServiceClient<Channel>,
    token: &str,
) -> Result<Vec<pb::SessionSummary>, Status> {
    let page = me
        .list_my_sessions(as_user(pb::ListMySessionsRequest::default(), token))
        .await?
        .into_inner();
    assert!(page.next_page_token.is_empty());
    Ok(page.sessions)
}

async fn revoke_mine(
    me: &mut UserSessionServiceClient<Channel>,
    token: &str,
    handle: &str,
) -> Result<bool, Status> {
    let req = pb::RevokeMySessionRequest {
        session_handle: handle.into(),
    };
    Ok(me
        .revoke_my_session(as_user(req, token))
        .await?
        .into_inner()
        .revoked)
}

/// The handles listed as current.
fn current(sessions: &[pb::SessionSummary]) -> Vec<String> {
    handles_of(sessions)
        .into_iter()
        .zip(sessions)
        .filter_map(|(h, s)| s.current.then_some(h))
        .collect()
}

/// An end user, with an access token, lists their own sessions (the
/// calling one marked current) and signs out of their own, never of
/// anyone else's: another user's, another tenant's and an unknown handle
/// are refused alike, so the answer tells nothing about them.
pub async fn end_users_list_and_revoke_their_own_sessions_only(backend: Backend<'_>) {
    let server = TestServer::start_with(backend).await;
    let (mut c, mut me) = (server.sessions().await, server.buckets().await);
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(create_in(&mut c, "gus", "public").await);
        server.clock.advance(Duration::from_secs(1));
    }
    let (a, b, third) = (&mine[2], &mine[1], &mine[0]);
    let elsewhere = create_in(&mut c, "gus", "acme").await;
    let someone_else = create_in(&mut c, "hal", "public").await;

    for caller in &mine {
        let listed = my_sessions(&mut me, &access(caller)).await.unwrap();
        assert_eq!(
            handles_of(&listed),
            [handle(a), handle(b), handle(third)],
            "the caller's own, in its tenant, newest first"
        );
        assert_eq!(current(&listed), [handle(caller)]);
    }

    let unknown = sessiond::ids::SessionHandle::random().to_string();
    let mut refusals = Vec::new();
    for handle in [handle(&someone_else), handle(&elsewhere), unknown] {
        let s = assert_status(
            revoke_mine(&mut me, &access(a), &handle).await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
        refusals.push(s.message().to_owned());
    }
    assert!(
        refusals.iter().all(|m| *m == refusals[0]),
        "one answer for every handle not one's own: {refusals:?}"
    );
    for untouched in [&someone_else, &elsewhere] {
        verify(&mut c, &access(untouched), true)
            .await
            .expect("a refused revocation changes nothing");
    }

    assert!(revoke_mine(&mut me, &access(a), &handle(b)).await.unwrap());
    assert_status(
        verify(&mut c, &access(b), true).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    assert_status(
        my_sessions(&mut me, &access(b)).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    let s = assert_status(
        revoke_mine(&mut me, &access(a), &handle(b)).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert_eq!(s.message(), refusals[0], "a session gone is refused alike");

    let revoked = me
        .revoke_my_other_sessions(as_user(pb::RevokeMyOtherSessionsRequest {}, &access(a)))
        .await
        .unwrap()
        .into_inner()
        .session_handles_revoked;
    assert_eq!(revoked, [handle(third)]);
    let listed = my_sessions(&mut me, &access(a)).await.unwrap();
    assert_eq!(handles_of(&listed), [handle(a)]);
    assert_eq!(current(&listed), [handle(a)]);
    for kept in [a, &elsewhere, &someone_else] {
        verify(&mut c, &access(kept), true)
            .await
            .expect("the calling session, and other tenants' and users', stay");
    }
    assert_status(
        verify(&mut c, &access(third), true).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );

    // Without a Bearer token none of the three answers.
    assert_status(
        me.list_my_sessions(pb::ListMySessionsRequest::default())
            .await,
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
    );
    assert_status(
        me.revoke_my_session(pb::RevokeMySessionRequest {
            session_handle: handle(a),
        })
        .await,
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
    );
    assert_status(
        me.revoke_my_other_sessions(pb::RevokeMyOtherSessionsRequest {})
            .await,
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
    );
    verify(&mut c, &access(a), true).await.unwrap();
}

#[tokio::test]
async fn devices_on_sled() {
    devices_are_listed_and_refresh_updates_the_fields_given(SLED).await;
}

#[tokio::test]
async fn bad_devices_on_sled() {
    bad_devices_are_refused_naming_the_field(SLED).await;
}

#[tokio::test]
async fn activity_on_sled() {
    activity_is_recorded_by_refresh_and_by_checked_use_to_the_minute(SLED).await;
}

#[tokio::test]
async fn my_sessions_on_sled() {
    end_users_list_and_revoke_their_own_sessions_only(SLED).await;
}
