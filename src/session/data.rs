//! Session data and the access token payload: overwriting the data,
//! merging into the payload, and regenerating an access token that carries
//! it. Every change is atomic per session and durable before it returns.

use super::*;

impl SessionManager {
    /// Applies `edit` to a live session (by its stored handle); NOT_FOUND
    /// when there is none.
    pub(super) async fn edit(
        &self,
        handle: &str,
        edit: &mut (dyn FnMut(&mut SessionRecord) -> Result<()> + Send),
    ) -> Result<()> {
        let now = self.now();
        let (_, result) = self
            .store
            .update_session_with(handle, |record| match record {
                Some(r) if r.expires_at_ms > now => {
                    let mut next = r.clone();
                    match edit(&mut next) {
                        Ok(()) => (Change::Put(Box::new(next)), Ok(())),
                        Err(e) => (Change::Keep, Err(e)),
                    }
                }
                _ => (Change::Keep, Err(Error::SessionNotFound)),
            })
            .await?;
        result?;
        self.store.durable().await?;
        Ok(())
    }

    /// UpdateSessionDataInDatabase: overwrites the data.
    pub async fn update_data(&self, handle: SessionHandle, data: SessionData) -> Result<()> {
        let data = data.into_map();
        self.edit(&handle.to_string(), &mut |r| {
            r.data = data.clone();
            Ok(())
        })
        .await
    }

    /// MergeIntoAccessTokenPayload: shallow merge, `null` deletes; a
    /// merged payload over the size limit is refused and nothing changes.
    pub async fn merge_payload(&self, handle: SessionHandle, update: PayloadUpdate) -> Result<()> {
        let max = self.config.payload_limits;
        self.edit(&handle.to_string(), &mut |r| {
            for (k, v) in update.as_map() {
                if v.is_null() {
                    r.access_payload.remove(k);
                } else {
                    r.access_payload.insert(k.clone(), v.clone());
                }
            }
            match payload::oversize(&r.access_payload, max) {
                Some(problem) => Err(Error::TooLarge {
                    what: Oversized::MergedPayload,
                    problem,
                }),
                None => Ok(()),
            }
        })
        .await
    }

    /// RegenerateAccessToken: a new token with the same `exp` and lineage,
    /// carrying `new_payload` (stored) or the stored payload.
    pub async fn regenerate(
        &self,
        access_token: &str,
        new_payload: Option<AccessPayload>,
    ) -> Result<(SessionView, IssuedToken)> {
        let new_payload = new_payload.map(AccessPayload::into_map);
        let now = self.now();
        let claims = self.verified(access_token, now)?;
        let key = self.signer().await?;
        let (_, current) = self
            .store
            .update_session_with(&claims.session_handle, |record| match record {
                Some(r) if r.expires_at_ms > now => {
                    let mut next = r.clone();
                    if let Some(p) = &new_payload {
                        next.access_payload = p.clone();
                    }
                    let current = Some(next.clone());
                    if new_payload.is_some() {
                        (Change::Put(Box::new(next)), current)
                    } else {
                        (Change::Keep, current)
                    }
                }
                _ => (Change::Keep, None),
            })
            .await?;
        let record = current.ok_or_else(session_gone)?;
        let token = self.reissue(&key, &claims, record.access_payload.clone(), now)?;
        // Also when nothing was written here: the token must not carry a
        // concurrent merge that a crash could still lose.
        self.store.durable().await?;
        Ok((view(&record), token))
    }
}
