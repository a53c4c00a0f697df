//! A user's sessions a page at a time: ListSessions,
//! GetAllSessionHandlesForUser, and the caller's own sessions
//! (ListMySessions, RevokeMySession, RevokeMyOtherSessions). Pages come
//! newest first within a tenant, continue through opaque page tokens
//! (`pages`), and read only the user's sessions (of the one tenant asked
//! for). Never sees protobuf types.

use super::pages::{self, Scope};
use super::*;
use crate::store::{Device, ListedSession, UserQuery};

/// Which page to list.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// At most this many (the edge bounds it; at least 1).
    pub size: usize,
    /// The previous page's `next_page_token`; `None` for the first page.
    pub token: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Listing<T> {
    /// What the page holds.
    pub items: Vec<T>,
    /// Set when more follow.
    pub next_page_token: Option<String>,
}

/// A session as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSummary {
    /// Handle.
    pub handle: String,
    /// Tenant.
    pub tenant_id: String,
    /// Creation, ms.
    pub created_ms: u64,
    /// When it is over unless refreshed or used, ms.
    pub expiry_ms: u64,
    /// Last recorded activity, ms.
    pub last_active_ms: u64,
    /// Where it is used from.
    pub device: Device,
    /// The session of the caller's own access token (ListMySessions).
    pub current: bool,
}

/// The caller of the self-service calls: the session of a verified
/// access token.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The token's user.
    pub user_id: &'a UserId,
    /// The token's tenant.
    pub tenant_id: &'a TenantId,
    /// The token's session.
    pub session_handle: &'a str,
}

impl SessionManager {
    /// ListSessions: the user's live sessions in `tenant`, newest first.
    pub async fn list_sessions(
        &self,
        user_id: &UserId,
        tenant: &TenantId,
        page: Page,
    ) -> Result<Listing<SessionSummary>> {
        let scope = Scope {
            kind: pages::Kind::Sessions,
            user_id: user_id.as_str(),
            tenant_id: Some(tenant.as_str()),
        };
        let listed = self.page_of(&scope, page).await?;
        Ok(Listing {
            items: listed.items.iter().map(|s| self.summary(s)).collect(),
            next_page_token: listed.next_page_token,
        })
    }

    /// GetAllSessionHandlesForUser: of one tenant (newest first), or of
    /// every tenant when `tenant` is `None` (tenant by tenant).
    pub async fn handles_for_user(
        &self,
        user_id: &UserId,
        tenant: Option<&TenantId>,
        page: Page,
    ) -> Result<Listing<String>> {
        let scope = Scope {
            kind: pages::Kind::Handles,
            user_id: user_id.as_str(),
            tenant_id: tenant.map(TenantId::as_str),
        };
        let listed = self.page_of(&scope, page).await?;
        Ok(Listing {
            items: listed.items.into_iter().map(|s| s.handle).collect(),
            next_page_token: listed.next_page_token,
        })
    }

    /// ListMySessions: the caller's own sessions in its tenant, its own
    /// marked current.
    pub async fn list_mine(
        &self,
        caller: Caller<'_>,
        page: Page,
    ) -> Result<Listing<SessionSummary>> {
        let mut listing = self
            .list_sessions(caller.user_id, caller.tenant_id, page)
            .await?;
        for s in &mut listing.items {
            s.current = s.handle == caller.session_handle;
        }
        Ok(listing)
    }

    /// RevokeMySession: only a live session of the caller's own user and
    /// tenant; any other handle, whether or not it names a session, is
    /// [`Error::NotYourSession`].
    pub async fn revoke_mine(&self, caller: Caller<'_>, handle: SessionHandle) -> Result<bool> {
        let handle = handle.to_string();
        let now = self.now();
        let theirs = self.store.session_lineage(&handle).await?.filter(|l| {
            l.user_id == caller.user_id.as_str()
                && l.tenant_id == caller.tenant_id.as_str()
                && self.ends_at(l) > now
        });
        if theirs.is_none() {
            return Err(Error::NotYourSession);
        }
        Ok(!self.delete(&[handle]).await?.is_empty())
    }

    /// One page of the sessions `scope` lists, live now.
    async fn page_of(&self, scope: &Scope<'_>, page: Page) -> Result<Listing<ListedSession>> {
        let after = match &page.token {
            Some(token) => Some(self.pages.open(scope, token)?),
            None => None,
        };
        let now = self.now();
        let found = self
            .store
            .user_sessions_page(&UserQuery {
                user_id: scope.user_id,
                tenant_id: scope.tenant_id,
                after: after.as_ref(),
                live_at_ms: now,
                limit: page.size.max(1),
            })
            .await?;
        let next_page_token = match found.sessions.last() {
            Some(last) if found.more => Some(self.pages.seal(scope, &last.cursor())),
            _ => None,
        };
        // The store goes by the timeouts a session was last written with;
        // the server's may be shorter now.
        let items = found
            .sessions
            .into_iter()
            .filter(|s| self.ends_at(s) > now)
            .collect();
        Ok(Listing {
            items,
            next_page_token,
        })
    }

    fn summary(&self, s: &ListedSession) -> SessionSummary {
        SessionSummary {
            handle: s.handle.clone(),
            tenant_id: s.tenant_id.clone(),
            created_ms: s.created_at_ms,
            expiry_ms: self.ends_at(s),
            last_active_ms: s.last_active_ms,
            device: s.device.clone(),
            current: false,
        }
    }
}
