//! Revocation: one session, several, or all of a user's; every removal is
//! durable before it is acknowledged. Never sees protobuf types.

use super::*;

impl SessionManager {
    /// RevokeSession.
    pub async fn revoke(&self, handle: SessionHandle) -> Result<bool> {
        let removed = self.delete(&[handle.to_string()]).await?;
        Ok(!removed.is_empty())
    }

    /// RevokeMultipleSessions (the edge bounds how many, see
    /// [`SessionManager::max_handles_per_call`]).
    pub async fn revoke_many(&self, handles: &[SessionHandle]) -> Result<Vec<String>> {
        let handles: Vec<String> = handles.iter().map(SessionHandle::to_string).collect();
        self.delete(&handles).await
    }

    /// RevokeAllSessionsForUser: of one tenant, or of every tenant when
    /// `tenant` is `None`.
    pub async fn revoke_user(
        &self,
        user_id: &UserId,
        tenant: Option<&TenantId>,
    ) -> Result<Vec<String>> {
        let handles: Vec<String> = self
            .store
            .user_sessions(user_id.as_str(), tenant.map(TenantId::as_str))
            .await?
            .into_iter()
            .map(|s| s.handle)
            .collect();
        self.delete(&handles).await
    }

    /// RevokeOtherSessions: the user's other sessions in the tenant of
    /// `keep`, which must be live.
    pub async fn revoke_others(&self, keep: SessionHandle) -> Result<Vec<String>> {
        let keep = keep.to_string();
        let now = self.now();
        let kept = self
            .store
            .session_lineage(&keep)
            .await?
            .filter(|l| self.ends_at(l) > now)
            .ok_or(Error::SessionNotFound)?;
        let others: Vec<String> = self
            .store
            .user_sessions(&kept.user_id, Some(&kept.tenant_id))
            .await?
            .into_iter()
            .map(|s| s.handle)
            .filter(|h| *h != keep)
            .collect();
        self.delete(&others).await
    }

    /// Deletes sessions durably; returns the handles of those that were live
    /// (expired ones are removed too, but were already invisible).
    pub(super) async fn delete(&self, handles: &[String]) -> Result<Vec<String>> {
        let removed = self.store.delete_sessions(handles).await?;
        self.store.durable().await?;
        let now = self.now();
        let live: Vec<String> = removed
            .into_iter()
            .filter(|s| s.expires_at_ms > now)
            .map(|s| s.handle)
            .collect();
        self.metrics.revoked(live.len() as u64);
        Ok(live)
    }
}
