//! Reads of stored sessions: every session a page at a time, one
//! session's information. Nothing here writes.

use super::*;

/// A stored session, for admin reads.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// Handle.
    pub handle: String,
    /// User.
    pub user_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Database-only data.
    pub data: Map<String, Value>,
    /// Stored access token payload.
    pub access_payload: Map<String, Value>,
    /// Creation, ms.
    pub created_ms: u64,
    /// Refresh expiry, ms.
    pub expires_ms: u64,
    /// Last recorded activity, ms.
    pub last_active_ms: u64,
    /// Where it is used from.
    pub device: crate::store::Device,
}

impl SessionManager {
    /// ListAllSessions: the live sessions of every user (of one tenant when
    /// `tenant_id` is given), in handle order, from just after `after`, at
    /// most `limit` of them.
    pub async fn list_all(
        &self,
        tenant: Option<&TenantId>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<store::SessionsPage> {
        let query = store::SessionQuery {
            after,
            tenant_id: tenant.map(TenantId::as_str),
            live_at_ms: self.now(),
            limit,
        };
        Ok(self.store.list_sessions(&query).await?)
    }

    /// GetSessionInformation.
    pub async fn info(&self, handle: SessionHandle) -> Result<SessionInfo> {
        let r = self
            .live(self.store.session(&handle.to_string()).await?)
            .ok_or(Error::SessionNotFound)?;
        Ok(SessionInfo {
            handle: r.handle,
            user_id: r.user_id,
            tenant_id: r.tenant_id,
            data: r.data,
            access_payload: r.access_payload,
            created_ms: r.created_at_ms,
            expires_ms: r.expires_at_ms,
            last_active_ms: r.last_active_ms,
            device: r.device,
        })
    }
}
