//! `sessiond.v1.SessionService`: validates requests, converts them into
//! domain calls on [`SessionManager`], converts the answers back.
//!
//! Every check on a request's fields happens here, in the order the
//! fields' errors have always been reported, so the domain receives only
//! checked values and the field paths clients see are named only here.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{json_to_struct, opt_struct, timestamp};
use super::devices;
use crate::buckets::UserIdentifier;
use crate::claims::{ClaimKey, ClaimValue};
use crate::ids::SessionHandle;
use crate::input::{
    self as payload, AccessPayload, JsonLimits, PayloadUpdate, SessionData, TenantId, UserId,
};
use crate::pb;
use crate::pb::session_service_server::SessionService;
use crate::session::{
    IssuedToken, NewSession, Refresh, SessionManager, SessionView, Tokens, Verify,
};

/// The gRPC face of the session rules.
#[derive(Debug, Clone)]
pub struct SessionApi {
    manager: Arc<SessionManager>,
}

impl SessionApi {
    /// Serves `manager`.
    pub fn new(manager: Arc<SessionManager>) -> Self {
        Self { manager }
    }
}

fn session(v: SessionView) -> pb::Session {
    pb::Session {
        session_handle: v.handle,
        user_id: v.user_id,
        tenant_id: v.tenant_id,
        access_token_payload: Some(json_to_struct(&v.access_payload)),
    }
}

fn token(t: IssuedToken) -> pb::Token {
    pb::Token {
        token: t.token,
        expiry: Some(timestamp(t.expiry_ms)),
        created_time: Some(timestamp(t.created_ms)),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<Tokens> for pb::CreateNewSessionResponse {
    fn from(t: Tokens) -> Self {
        Self {
            session: Some(session(t.session)),
            access_token: Some(token(t.access)),
            refresh_token: Some(token(t.refresh)),
            anti_csrf_token: t.anti_csrf,
        }
    }
}

impl From<Tokens> for pb::RefreshSessionResponse {
    fn from(t: Tokens) -> Self {
        Self {
            session: Some(session(t.session)),
            access_token: Some(token(t.access)),
            refresh_token: Some(token(t.refresh)),
            anti_csrf_token: t.anti_csrf,
        }
    }
}

/// A session handle named by `field`.
fn handle(field: &str, value: &str) -> Result<SessionHandle, Status> {
    Ok(payload::handle(field, value)?)
}

/// The user and the tenant scope of a per-user call: every tenant when
/// `all_tenants` is set (the tenant field is then not looked at).
fn user_scope(
    user_id: String,
    tenant_id: &str,
    all_tenants: bool,
) -> Result<(UserId, Option<TenantId>), Status> {
    let user = UserId::parse("user_id", user_id)?;
    let tenant = if all_tenants {
        None
    } else {
        Some(TenantId::parse("tenant_id", tenant_id)?)
    };
    Ok((user, tenant))
}

/// CreateNewSession's request, checked against the payload limits and the
/// server's timeouts (`(idle, max lifetime)`, ms).
fn new_session(
    r: pb::CreateNewSessionRequest,
    limits: JsonLimits,
    timeouts: (Option<u64>, Option<u64>),
) -> Result<NewSession, Status> {
    let access_payload = opt_struct("access_token_payload", r.access_token_payload)?;
    let data = opt_struct("session_data_in_database", r.session_data_in_database)?;
    let user_id = UserId::parse("user_id", r.user_id)?;
    let tenant_id = TenantId::parse("tenant_id", &r.tenant_id)?;
    let access_payload = AccessPayload::parse("access_token_payload", access_payload, limits)?;
    let data = SessionData::parse("session_data_in_database", data, limits)?;
    let user_identifier = non_empty(r.user_identifier)
        .map(|id| UserIdentifier::parse("user_identifier", id))
        .transpose()?;
    let device = devices::device("device", r.device)?;
    let timeouts = devices::own_timeouts(r.session_idle_timeout, r.session_max_lifetime, timeouts)?;
    Ok(NewSession {
        user_id,
        tenant_id,
        access_payload,
        data,
        anti_csrf: !r.disable_anti_csrf,
        user_identifier,
        device,
        timeouts,
    })
}

impl TryFrom<pb::GetSessionRequest> for Verify {
    type Error = Status;
    fn try_from(r: pb::GetSessionRequest) -> Result<Self, Status> {
        if r.access_token.is_empty() {
            return Err(super::error::invalid("access_token", "must not be empty"));
        }
        Ok(Self {
            validators: super::claims::checked_validators("claim_validators", r.claim_validators)?,
            access_token: r.access_token,
            anti_csrf_token: non_empty(r.anti_csrf_token),
            check_anti_csrf: r.do_anti_csrf_check,
            check_database: r.check_database,
        })
    }
}

impl TryFrom<pb::RefreshSessionRequest> for Refresh {
    type Error = Status;
    fn try_from(r: pb::RefreshSessionRequest) -> Result<Self, Status> {
        if r.refresh_token.is_empty() {
            return Err(super::error::invalid("refresh_token", "must not be empty"));
        }
        let device = r
            .device
            .map(|d| devices::device("device", Some(d)))
            .transpose()?;
        Ok(Self {
            refresh_token: r.refresh_token,
            anti_csrf_token: non_empty(r.anti_csrf_token),
            disable_anti_csrf: r.disable_anti_csrf,
            device,
        })
    }
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn create_new_session(
        &self,
        req: Request<pb::CreateNewSessionRequest>,
    ) -> Result<Response<pb::CreateNewSessionResponse>, Status> {
        let new = new_session(
            req.into_inner(),
            self.manager.payload_limits(),
            self.manager.configured_timeouts(),
        )?;
        let tokens = self.manager.create(new).await?;
        super::record_tenant(&tokens.session.tenant_id);
        Ok(Response::new(tokens.into()))
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let verify = Verify::try_from(req.into_inner())?;
        let verified = self.manager.verify(verify).await?;
        let claims = &verified.claims;
        super::record_tenant(&claims.tenant_id);
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(pb::Session {
                session_handle: claims.session_handle.clone(),
                user_id: claims.user_id.clone(),
                tenant_id: claims.tenant_id.clone(),
                access_token_payload: Some(json_to_struct(verified.payload())),
            }),
            access_token: verified.new_access.map(token),
        }))
    }

    async fn refresh_session(
        &self,
        req: Request<pb::RefreshSessionRequest>,
    ) -> Result<Response<pb::RefreshSessionResponse>, Status> {
        let refresh = Refresh::try_from(req.into_inner())?;
        let tokens = self.manager.refresh(refresh).await?;
        super::record_tenant(&tokens.session.tenant_id);
        Ok(Response::new(tokens.into()))
    }

    async fn revoke_session(
        &self,
        req: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let handle = handle("session_handle", &req.into_inner().session_handle)?;
        let revoked = self.manager.revoke(handle).await?;
        Ok(Response::new(pb::RevokeSessionResponse { revoked }))
    }

    async fn revoke_all_sessions_for_user(
        &self,
        req: Request<pb::RevokeAllSessionsForUserRequest>,
    ) -> Result<Response<pb::RevokeAllSessionsForUserResponse>, Status> {
        let r = req.into_inner();
        let (user, tenant) = user_scope(r.user_id, &r.tenant_id, r.revoke_across_all_tenants)?;
        let revoked = self.manager.revoke_user(&user, tenant.as_ref()).await?;
        Ok(Response::new(pb::RevokeAllSessionsForUserResponse {
            session_handles_revoked: revoked,
        }))
    }

    async fn revoke_multiple_sessions(
        &self,
        req: Request<pb::RevokeMultipleSessionsRequest>,
    ) -> Result<Response<pb::RevokeMultipleSessionsResponse>, Status> {
        let handles = req.into_inner().session_handles;
        let most = self.manager.max_handles_per_call();
        if handles.len() > most {
            return Err(super::error::invalid(
                "session_handles",
                &format!(
                    "at most {} per call",
                    crate::text::count(most as u64, "handle", "handles")
                ),
            ));
        }
        let handles = handles
            .iter()
            .enumerate()
            .map(|(i, h)| handle(&format!("session_handles[{i}]"), h))
            .collect::<Result<Vec<_>, Status>>()?;
        let revoked = self.manager.revoke_many(&handles).await?;
        Ok(Response::new(pb::RevokeMultipleSessionsResponse {
            session_handles_revoked: revoked,
        }))
    }

    async fn get_all_session_handles_for_user(
        &self,
        req: Request<pb::GetAllSessionHandlesForUserRequest>,
    ) -> Result<Response<pb::GetAllSessionHandlesForUserResponse>, Status> {
        let r = req.into_inner();
        let (user, tenant) = user_scope(r.user_id, &r.tenant_id, r.fetch_across_all_tenants)?;
        let page = devices::page(r.page_size, r.page_token, devices::HANDLES_PAGE);
        let handles = self
            .manager
            .handles_for_user(&user, tenant.as_ref(), page)
            .await?;
        Ok(Response::new(pb::GetAllSessionHandlesForUserResponse {
            session_handles: handles.items,
            next_page_token: handles.next_page_token.unwrap_or_default(),
        }))
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let r = req.into_inner();
        let user = UserId::parse("user_id", r.user_id)?;
        let tenant = TenantId::parse("tenant_id", &r.tenant_id)?;
        let page = devices::page(r.page_size, r.page_token, devices::SESSIONS_PAGE);
        let listed = self.manager.list_sessions(&user, &tenant, page).await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: listed.items.into_iter().map(devices::summary).collect(),
            next_page_token: listed.next_page_token.unwrap_or_default(),
        }))
    }

    async fn revoke_other_sessions(
        &self,
        req: Request<pb::RevokeOtherSessionsRequest>,
    ) -> Result<Response<pb::RevokeOtherSessionsResponse>, Status> {
        let keep = handle("session_handle", &req.into_inner().session_handle)?;
        let revoked = self.manager.revoke_others(keep).await?;
        Ok(Response::new(pb::RevokeOtherSessionsResponse {
            session_handles_revoked: revoked,
        }))
    }

    async fn get_session_information(
        &self,
        req: Request<pb::GetSessionInformationRequest>,
    ) -> Result<Response<pb::GetSessionInformationResponse>, Status> {
        let handle = handle("session_handle", &req.into_inner().session_handle)?;
        let info = self.manager.info(handle).await?;
        Ok(Response::new(pb::GetSessionInformationResponse {
            session_handle: info.handle,
            user_id: info.user_id,
            tenant_id: info.tenant_id,
            session_data_in_database: Some(json_to_struct(&info.data)),
            custom_claims_in_access_token_payload: Some(json_to_struct(&info.access_payload)),
            time_created: Some(timestamp(info.created_ms)),
            expiry: Some(timestamp(info.expires_ms)),
            last_active_time: Some(timestamp(info.last_active_ms)),
            device: devices::pb_device(info.device),
        }))
    }

    async fn update_session_data_in_database(
        &self,
        req: Request<pb::UpdateSessionDataInDatabaseRequest>,
    ) -> Result<Response<pb::UpdateSessionDataInDatabaseResponse>, Status> {
        let r = req.into_inner();
        let data = opt_struct("new_session_data", r.new_session_data)?;
        let data = SessionData::parse("new_session_data", data, self.manager.payload_limits())?;
        let handle = handle("session_handle", &r.session_handle)?;
        self.manager.update_data(handle, data).await?;
        Ok(Response::new(pb::UpdateSessionDataInDatabaseResponse {
            updated: true,
        }))
    }

    async fn merge_into_access_token_payload(
        &self,
        req: Request<pb::MergeIntoAccessTokenPayloadRequest>,
    ) -> Result<Response<pb::MergeIntoAccessTokenPayloadResponse>, Status> {
        let r = req.into_inner();
        let update = opt_struct("access_token_payload_update", r.access_token_payload_update)?;
        let update = PayloadUpdate::parse("access_token_payload_update", update)?;
        let handle = handle("session_handle", &r.session_handle)?;
        self.manager.merge_payload(handle, update).await?;
        Ok(Response::new(pb::MergeIntoAccessTokenPayloadResponse {
            updated: true,
        }))
    }

    async fn regenerate_access_token(
        &self,
        req: Request<pb::RegenerateAccessTokenRequest>,
    ) -> Result<Response<pb::RegenerateAccessTokenResponse>, Status> {
        let r = req.into_inner();
        if r.access_token.is_empty() {
            return Err(super::error::invalid("access_token", "must not be empty"));
        }
        let payload = r
            .new_access_token_payload
            .map(|p| -> Result<AccessPayload, Status> {
                let p = super::convert::struct_to_json("new_access_token_payload", p)?;
                Ok(AccessPayload::parse(
                    "new_access_token_payload",
                    p,
                    self.manager.payload_limits(),
                )?)
            })
            .transpose()?;
        let (view, access) = self.manager.regenerate(&r.access_token, payload).await?;
        Ok(Response::new(pb::RegenerateAccessTokenResponse {
            session: Some(session(view)),
            access_token: Some(token(access)),
        }))
    }

    async fn set_claim_value(
        &self,
        req: Request<pb::SetClaimValueRequest>,
    ) -> Result<Response<pb::SetClaimValueResponse>, Status> {
        let r = req.into_inner();
        let value = r
            .value
            .ok_or_else(|| super::error::invalid("value", "must be set"))?;
        let value = super::convert::value_to_json("value", value)?;
        let key = ClaimKey::parse("claim_key", r.claim_key)?;
        let claim = ClaimValue::parse("value", key, value)?;
        let handle = handle("session_handle", &r.session_handle)?;
        self.manager.set_claim(handle, claim).await?;
        Ok(Response::new(pb::SetClaimValueResponse { updated: true }))
    }

    async fn get_claim_value(
        &self,
        req: Request<pb::GetClaimValueRequest>,
    ) -> Result<Response<pb::GetClaimValueResponse>, Status> {
        let r = req.into_inner();
        let key = ClaimKey::parse("claim_key", r.claim_key)?;
        let handle = handle("session_handle", &r.session_handle)?;
        let found = self.manager.get_claim(handle, &key).await?;
        Ok(Response::new(match found {
            Some((value, set_at)) => pb::GetClaimValueResponse {
                value: Some(super::convert::json_to_value(&value)),
                set_at: set_at.map(timestamp),
            },
            None => pb::GetClaimValueResponse::default(),
        }))
    }

    async fn remove_claim(
        &self,
        req: Request<pb::RemoveClaimRequest>,
    ) -> Result<Response<pb::RemoveClaimResponse>, Status> {
        let r = req.into_inner();
        let key = ClaimKey::parse("claim_key", r.claim_key)?;
        let handle = handle("session_handle", &r.session_handle)?;
        let updated = self.manager.remove_claim(handle, &key).await?;
        Ok(Response::new(pb::RemoveClaimResponse { updated }))
    }

    async fn fetch_and_set_claim(
        &self,
        req: Request<pb::FetchAndSetClaimRequest>,
    ) -> Result<Response<pb::FetchAndSetClaimResponse>, Status> {
        let r = req.into_inner();
        let key = ClaimKey::parse("claim_key", r.claim_key)?;
        let handle = handle("session_handle", &r.session_handle)?;
        let updated = self.manager.fetch_and_set_claim(handle, &key).await?;
        Ok(Response::new(pb::FetchAndSetClaimResponse { updated }))
    }

    async fn validate_claims(
        &self,
        req: Request<pb::ValidateClaimsRequest>,
    ) -> Result<Response<pb::ValidateClaimsResponse>, Status> {
        let r = req.into_inner();
        let validators = super::claims::checked_validators("claim_validators", r.claim_validators)?;
        let handle = handle("session_handle", &r.session_handle)?;
        let (failed, update) = self.manager.validate_claims(handle, &validators).await?;
        Ok(Response::new(pb::ValidateClaimsResponse {
            invalid_claims: failed
                .into_iter()
                .map(super::claims::invalid_claim)
                .collect(),
            access_token_payload_update: update.as_ref().map(json_to_struct),
        }))
    }

    async fn validate_claims_in_jwt_payload(
        &self,
        req: Request<pb::ValidateClaimsInJwtPayloadRequest>,
    ) -> Result<Response<pb::ValidateClaimsInJwtPayloadResponse>, Status> {
        let r = req.into_inner();
        let payload = opt_struct("jwt_payload", r.jwt_payload)?;
        let validators = super::claims::validators("claim_validators", r.claim_validators)?;
        let user = UserId::parse("user_id", r.user_id)?;
        let validators = crate::claims::Validators::check("claim_validators", validators)?;
        let failed = self
            .manager
            .validate_claims_in_payload(&user, &payload, &validators)?;
        Ok(Response::new(pb::ValidateClaimsInJwtPayloadResponse {
            invalid_claims: failed
                .into_iter()
                .map(super::claims::invalid_claim)
                .collect(),
        }))
    }
}
