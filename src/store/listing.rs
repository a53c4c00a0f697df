//! How sessions are listed: a user's (by the per-user index, a page at a
//! time), every user's (in handle order), and the per-user limit a create
//! may be held to.

use super::{Device, Ends, SessionRecord, Timeouts};

/// A session of a user, as listed by the per-user index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSession {
    /// The session handle.
    pub handle: String,
    /// The session's tenant.
    pub tenant_id: String,
    /// Refresh expiry, ms.
    pub expires_at_ms: u64,
}

/// A session as listed: who, when and where from, without tokens, payload
/// or data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSession {
    /// The session handle.
    pub handle: String,
    /// The session's user.
    pub user_id: String,
    /// The session's tenant.
    pub tenant_id: String,
    /// Creation, ms.
    pub created_at_ms: u64,
    /// Refresh expiry, ms.
    pub expires_at_ms: u64,
    /// Last recorded activity, ms.
    pub last_active_ms: u64,
    /// The session's own timeouts.
    pub timeouts: Timeouts,
    /// Where it is used from.
    pub device: Device,
}

impl ListedSession {
    /// The listing of a record.
    pub fn of(r: &SessionRecord) -> Self {
        Self {
            handle: r.handle.clone(),
            user_id: r.user_id.clone(),
            tenant_id: r.tenant_id.clone(),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            last_active_ms: r.last_active_ms,
            timeouts: r.timeouts,
            device: r.device.clone(),
        }
    }

    /// Where a listing of its user's sessions continues after it.
    pub fn cursor(&self) -> UserCursor {
        UserCursor {
            tenant_id: self.tenant_id.clone(),
            created_at_ms: self.created_at_ms,
            handle: self.handle.clone(),
        }
    }
}

impl Ends for ListedSession {
    fn ending(&self) -> (u64, u64, Timeouts) {
        (self.expires_at_ms, self.last_active_ms, self.timeouts)
    }
}

/// A place in the listing of one user's sessions
/// ([`Sessions::user_sessions_page`](super::Sessions::user_sessions_page)): tenant, then newest first, then
/// handle. The order of tenants is the backend's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCursor {
    /// The session's tenant.
    pub tenant_id: String,
    /// Its creation, ms.
    pub created_at_ms: u64,
    /// Its handle.
    pub handle: String,
}

/// Which of one user's sessions [`Sessions::user_sessions_page`](super::Sessions::user_sessions_page) lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserQuery<'a> {
    /// The user.
    pub user_id: &'a str,
    /// Only this tenant (`None`: every tenant).
    pub tenant_id: Option<&'a str>,
    /// Only sessions after this place (`None`: from the first).
    pub after: Option<&'a UserCursor>,
    /// Only sessions that end ([`Ends::ends_at_ms`]) after this, ms.
    pub live_at_ms: u64,
    /// At most this many.
    pub limit: usize,
}

/// How many sessions a user may hold in a tenant, for
/// [`Sessions::create_session_within`](super::Sessions::create_session_within).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimit {
    /// At most this many live sessions per user and tenant (at least 1).
    pub max: usize,
    /// Over the limit: end the least recently active sessions (true), or
    /// refuse the new one (false).
    pub evict: bool,
    /// Sessions that end at or before this time (ms) do not count.
    pub live_at_ms: u64,
}

/// What [`Sessions::create_session_within`](super::Sessions::create_session_within) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The session was created; these sessions were removed to make room.
    Created {
        /// The removed sessions, least recently active first.
        evicted: Vec<ListedSession>,
    },
    /// The user is at the limit and the session was not created.
    Refused,
}

impl SessionLimit {
    /// Which of a user's `live` sessions in one tenant make room for one
    /// more: none when under the limit, else the least recently active
    /// ones (`None`: refuse).
    pub fn make_room(&self, mut live: Vec<ListedSession>) -> Option<Vec<ListedSession>> {
        let over = (live.len() + 1).saturating_sub(self.max);
        if over == 0 {
            return Some(Vec::new());
        }
        if !self.evict {
            return None;
        }
        live.sort_by(|a, b| {
            (a.last_active_ms, a.created_at_ms, &a.handle).cmp(&(
                b.last_active_ms,
                b.created_at_ms,
                &b.handle,
            ))
        });
        live.truncate(over);
        Some(live)
    }
}

/// Which sessions [`Sessions::list_sessions`](super::Sessions::list_sessions) lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionQuery<'a> {
    /// Only handles after this one (`None`: from the first). It need not
    /// name a session that still exists.
    pub after: Option<&'a str>,
    /// Only sessions of this tenant (`None`: every tenant).
    pub tenant_id: Option<&'a str>,
    /// Only sessions whose refresh expiry is after this time, ms.
    pub live_at_ms: u64,
    /// At most this many.
    pub limit: usize,
}

impl SessionQuery<'_> {
    pub(crate) fn matches(&self, s: &ListedSession) -> bool {
        s.ends_at_ms() > self.live_at_ms && self.tenant_id.is_none_or(|t| t == s.tenant_id)
    }
}

/// One page of [`Sessions::list_sessions`](super::Sessions::list_sessions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionsPage {
    /// The sessions, in handle order (byte order).
    pub sessions: Vec<ListedSession>,
    /// True when a session the query matches follows the last one listed:
    /// the next page starts after that last handle.
    pub more: bool,
}

impl SessionsPage {
    /// Adds `session` if the page has room, else marks that more follow.
    /// Returns false once the page is full and the scan can stop.
    pub(crate) fn offer(&mut self, session: ListedSession, limit: usize) -> bool {
        if self.sessions.len() >= limit {
            self.more = true;
            return false;
        }
        self.sessions.push(session);
        true
    }
}
