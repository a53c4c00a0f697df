//! Session control through gRPC, the paged listings: ListSessions and
//! GetAllSessionHandlesForUser page newest first, page tokens continue
//! only their own listing, and a user with 200 000 sessions pages within a
//! client's default 4 MiB. Shared cases (see `control.rs`), run here on
//! sled and in `postgres.rs` on PostgreSQL.

use std::collections::HashSet;
use std::time::Duration;

use prost::Message;
use sessiond::Clock;
use sessiond::pb;
use sessiond::pb::session_service_client::SessionServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::control::{Backend, SLED, create_in, handles_of, list_page, listed};
use crate::helpers::*;

/// Creates 5 sessions of `lister` in public (a second apart), 2 in acme,
/// and 2 of `other` in public. Returns lister's public ones, newest first,
/// and its acme ones, newest first.
async fn listing_fixture(
    server: &TestServer,
    c: &mut SessionServiceClient<Channel>,
) -> (Vec<String>, Vec<String>) {
    let mut public = Vec::new();
    let mut acme = Vec::new();
    for i in 0..5 {
        public.push(handle(&create_in(c, "lister", "public").await));
        if i < 2 {
            acme.push(handle(&create_in(c, "lister", "acme").await));
            create_in(c, "other", "public").await;
        }
        server.clock.advance(Duration::from_secs(1));
    }
    public.reverse();
    acme.reverse();
    (public, acme)
}

/// ListSessions pages through a user's sessions of one tenant newest
/// first; page_size 0 is the default page (50).
pub async fn sessions_are_listed_newest_first_a_page_at_a_time(backend: Backend<'_>) {
    let server = TestServer::start_with(backend).await;
    let mut c = server.sessions().await;
    let (public, acme) = listing_fixture(&server, &mut c).await;

    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = list_page(&mut c, "lister", "public", 2, &token)
            .await
            .unwrap();
        assert!(page.sessions.iter().all(|s| s.tenant_id == "public"));
        pages.push(handles_of(&page.sessions));
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(pages.len() < 5, "the listing does not end");
        token = page.next_page_token;
    }
    assert_eq!(pages, [&public[0..2], &public[2..4], &public[4..5]]);

    assert_eq!(
        handles_of(&listed(&mut c, "lister", "public").await),
        public
    );
    assert_eq!(handles_of(&listed(&mut c, "lister", "acme").await), acme);
    assert!(listed(&mut c, "nobody", "public").await.is_empty());

    // A tenant's sessions do not show in another's, even for 60 sessions
    // (more than one default page).
    for _ in 0..55 {
        create_in(&mut c, "lister", "public").await;
    }
    let first = list_page(&mut c, "lister", "public", 0, "").await.unwrap();
    assert_eq!(first.sessions.len(), 50, "the default page");
    let rest = list_page(&mut c, "lister", "public", 0, &first.next_page_token)
        .await
        .unwrap();
    assert_eq!(rest.sessions.len(), 10);
    assert!(rest.next_page_token.is_empty());
    assert_eq!(handles_of(&rest.sessions[5..]), public);
    assert_eq!(handles_of(&listed(&mut c, "lister", "acme").await), acme);
}

/// `token` with one character in its middle changed.
fn tampered(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[track_caller]
fn assert_bad_page_token<T: std::fmt::Debug>(result: Result<T, Status>) {
    let s = assert_status(result, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_field(&s), "page_token");
}

/// A page token is refused when changed, or when handed to another
/// user's, tenant's or kind of listing.
pub async fn page_tokens_only_continue_their_own_listing(backend: Backend<'_>) {
    let server = TestServer::start_with(backend).await;
    let mut c = server.sessions().await;
    let (public, _) = listing_fixture(&server, &mut c).await;
    let token = |page: pb::ListSessionsResponse| {
        assert!(!page.next_page_token.is_empty());
        page.next_page_token
    };
    let mine = token(list_page(&mut c, "lister", "public", 2, "").await.unwrap());
    let others = token(list_page(&mut c, "other", "public", 1, "").await.unwrap());
    let acme = token(list_page(&mut c, "lister", "acme", 1, "").await.unwrap());

    assert_bad_page_token(list_page(&mut c, "lister", "public", 2, &tampered(&mine)).await);
    assert_bad_page_token(list_page(&mut c, "lister", "public", 2, &others).await);
    assert_bad_page_token(list_page(&mut c, "lister", "public", 2, &acme).await);
    assert_bad_page_token(list_page(&mut c, "lister", "public", 2, "not a token").await);
    assert_bad_page_token(
        c.get_all_session_handles_for_user(pb::GetAllSessionHandlesForUserRequest {
            user_id: "lister".into(),
            page_size: 2,
            page_token: mine.clone(),
            ..Default::default()
        })
        .await,
    );
    let next = list_page(&mut c, "lister", "public", 2, &mine)
        .await
        .expect("the token as it came still works");
    assert_eq!(handles_of(&next.sessions), &public[2..4]);
}

async fn handles_page(
    c: &mut SessionServiceClient<Channel>,
    req: pb::GetAllSessionHandlesForUserRequest,
) -> pb::GetAllSessionHandlesForUserResponse {
    c.get_all_session_handles_for_user(req)
        .await
        .unwrap()
        .into_inner()
}

/// Pages of GetAllSessionHandlesForUser from `first` on, to the end.
async fn handle_pages(
    c: &mut SessionServiceClient<Channel>,
    first: pb::GetAllSessionHandlesForUserRequest,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut req = first;
    loop {
        let page = handles_page(c, req.clone()).await;
        pages.push(page.session_handles);
        if page.next_page_token.is_empty() {
            return pages;
        }
        assert!(pages.len() < 100, "the listing does not end");
        req.page_token = page.next_page_token;
    }
}

/// GetAllSessionHandlesForUser pages like ListSessions, in one tenant or
/// across every tenant (tenant by tenant, newest first in each).
pub async fn handles_are_paged_in_one_tenant_and_across_all(backend: Backend<'_>) {
    let server = TestServer::start_with(backend).await;
    let mut c = server.sessions().await;
    let (public, acme) = listing_fixture(&server, &mut c).await;
    let req = |page_size, all| pb::GetAllSessionHandlesForUserRequest {
        user_id: "lister".into(),
        tenant_id: "public".into(),
        fetch_across_all_tenants: all,
        page_size,
        page_token: String::new(),
    };

    let pages = handle_pages(&mut c, req(2, false)).await;
    assert_eq!(pages, [&public[0..2], &public[2..4], &public[4..5]]);
    assert_eq!(handle_pages(&mut c, req(0, false)).await, [&public[..]]);

    let pages = handle_pages(&mut c, req(3, true)).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [3, 3, 1],
        "{pages:?}"
    );
    let all: Vec<String> = pages.concat();
    let (acme_first, public_first) = (
        [&acme[..], &public[..]].concat(),
        [&public[..], &acme[..]].concat(),
    );
    assert!(
        all == acme_first || all == public_first,
        "tenant by tenant, newest first in each: {all:?}"
    );
    assert_eq!(handle_pages(&mut c, req(0, true)).await, [all]);
}

/// How many sessions the user of the 4 MiB cases has.
pub const MANY: usize = 200_000;

/// Pages through the handles of `user` with the default page size and a
/// client at tonic's defaults (4 MiB the most it decodes): every reply is
/// under 4 MiB, more than one is needed (all 200 000 handles in one reply
/// would be about 7.6 MB), and together they hold `made`, each once.
pub async fn every_handle_pages_within_the_default_4_mib(
    server: &TestServer,
    user: &str,
    made: &HashSet<String>,
) {
    let mut c = SessionServiceClient::new(server.channel().await);
    let started = std::time::Instant::now();
    let mut seen = HashSet::new();
    let mut pages = 0;
    let mut page_token = String::new();
    loop {
        let page = handles_page(
            &mut c,
            pb::GetAllSessionHandlesForUserRequest {
                user_id: user.into(),
                page_token,
                ..Default::default()
            },
        )
        .await;
        assert!(page.encoded_len() < 4 << 20, "{} bytes", page.encoded_len());
        pages += 1;
        for h in page.session_handles {
            assert!(seen.insert(h), "a handle listed twice");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), made.len());
    assert!(seen == *made, "the handles listed are the sessions made");
    assert!(pages > 1, "no single reply holds them all");
    eprintln!(
        "{} handles in {pages} pages: {:?}",
        made.len(),
        started.elapsed()
    );
}

/// Creates 10 sessions of `user` through gRPC; returns their handles.
pub async fn a_few_through_grpc(server: &TestServer, user: &str) -> HashSet<String> {
    let mut c = server.sessions().await;
    let mut made = HashSet::new();
    for _ in 0..10 {
        made.insert(handle(&create_in(&mut c, user, "public").await));
    }
    made
}

/// A user with 200 000 sessions on sled pages within a client's default
/// 4 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_sessions_page_within_the_default_4_mib() {
    let server = TestServer::start().await;
    let mut made = a_few_through_grpc(&server, "many").await;
    // Creating 200 000 sessions through gRPC takes about 100 s in a debug
    // build on two cores, even 256 at a time; the rest are written through
    // the server's own store while it is stopped (the records a create
    // writes), which takes seconds. Every read is through gRPC.
    let stopped = server.stop().await;
    let now = stopped.1.now_ms();
    {
        let store = open_store(stopped.0.path());
        for i in 0..MANY - made.len() {
            // Three at a time share a creation time: pages must not
            // split or repeat them.
            let record = bulk_record("many", now - (i as u64 / 3));
            made.insert(record.handle.clone());
            sessiond::store::Sessions::create_session(store.as_ref(), &record)
                .await
                .unwrap();
        }
        sessiond::store::Durability::durable(store.as_ref())
            .await
            .unwrap();
    }
    let server = TestServer::start_again(stopped).await;
    every_handle_pages_within_the_default_4_mib(&server, "many", &made).await;
}

/// A stored session of `user` created at `created_ms`, as CreateNewSession
/// writes one (the tokens it would carry are not needed to list it).
pub fn bulk_record(user: &str, created_ms: u64) -> sessiond::store::SessionRecord {
    use sessiond::store::{Generation, SessionRecord};
    let handle = sessiond::ids::SessionHandle::random().to_string();
    SessionRecord {
        handle,
        user_id: user.into(),
        tenant_id: "public".into(),
        access_payload: Default::default(),
        data: Default::default(),
        created_at_ms: created_ms,
        expires_at_ms: created_ms + 100 * 86_400_000,
        current: Generation {
            refresh_hash: sessiond::token::refresh::hash(&format!(
                "bulk refresh token {created_ms}"
            )),
            anti_csrf_hash: None,
        },
        previous: None,
        rotated_at_ms: created_ms,
        last_active_ms: created_ms,
        timeouts: Default::default(),
        device: Default::default(),
    }
}

#[tokio::test]
async fn list_sessions_on_sled() {
    sessions_are_listed_newest_first_a_page_at_a_time(SLED).await;
}

#[tokio::test]
async fn page_tokens_on_sled() {
    page_tokens_only_continue_their_own_listing(SLED).await;
}

#[tokio::test]
async fn handle_pages_on_sled() {
    handles_are_paged_in_one_tenant_and_across_all(SLED).await;
}
