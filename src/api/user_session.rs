//! `sessiond.v1.UserSessionService`: who the caller is, and which buckets
//! that lets them reach.
//!
//! - `x-api-key` (or, when no API key is configured, which means
//!   loopback-only, any call with neither a token nor a client secret): a
//!   backend; names any user; private allowed.
//! - `authorization: Bearer <access token>`: an end user; the token is
//!   verified against the store and reaches its own user's buckets only;
//!   private only with the tenant's `x-client-secret`.
//! - `x-client-secret` alone: a server of that tenant; names a user of it;
//!   private allowed.
//!
//! Secrets are compared as SHA-256 hashes in constant time and never echoed.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::ApiKeys;
use super::convert::{json_to_struct, opt_struct};
use super::devices;
use super::error::{invalid, status};
use super::keys::Scope;
use super::secrets::{HashedSecrets, sha256};
use crate::buckets::{Bucket, Buckets, UserBuckets, UserIdentifier};
use crate::error::Reason;
use crate::input::{self as payload, TenantId, UserId};
use crate::pb;
use crate::pb::user_session_service_server::UserSessionService;
use crate::secret::Secret;
use crate::session::{SessionManager, Verify};

/// Metadata key of a tenant's client secret.
pub const CLIENT_SECRET_HEADER: &str = "x-client-secret";

/// Client secrets by tenant, held as hashes ([`HashedSecrets`]).
#[derive(Clone, Default)]
pub struct ClientSecrets {
    by_tenant: HashedSecrets<String>,
}

impl std::fmt::Debug for ClientSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientSecrets({} tenants)", self.by_tenant.len())
    }
}

impl ClientSecrets {
    /// Hashes the configured secrets.
    pub fn new(secrets: &[(String, Secret)]) -> Self {
        Self {
            by_tenant: HashedSecrets::new(Self::hash(secrets)),
        }
    }

    /// One entry per tenant: the last secret given for it.
    fn hash(secrets: &[(String, Secret)]) -> Vec<(String, [u8; 32])> {
        let by_tenant: HashMap<_, _> = secrets
            .iter()
            .map(|(t, s)| (t.clone(), sha256(s.expose().as_bytes())))
            .collect();
        by_tenant.into_iter().collect()
    }

    /// Replaces the secrets (configuration reload).
    pub fn replace(&self, secrets: &[(String, Secret)]) {
        self.by_tenant.replace(Self::hash(secrets));
    }

    /// Whether `presented` is the client secret of `tenant_id`.
    pub fn check(&self, tenant_id: &str, presented: &[u8]) -> bool {
        self.by_tenant
            .find(presented, |tenant| tenant == tenant_id)
            .is_some()
    }
}

/// The resolved caller of a bucket call.
struct Caller {
    user_id: UserId,
    tenant_id: TenantId,
    /// May read and write the private bucket.
    private: bool,
    /// A backend or tenant server, not an end user.
    server: bool,
}

/// The gRPC face of the buckets.
#[derive(Debug, Clone)]
pub struct UserSessionApi {
    sessions: Arc<SessionManager>,
    buckets: Arc<Buckets>,
    api_keys: ApiKeys,
    client_secrets: ClientSecrets,
}

fn denied(message: &str) -> Status {
    status(Reason::PermissionDenied, message, HashMap::new(), None)
}

fn bearer(metadata: &MetadataMap) -> Result<Option<String>, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| invalid("authorization", "is not ASCII"))?;
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(invalid("authorization", "must be `Bearer <access token>`"));
    }
    Ok(Some(token.trim().to_owned()))
}

fn bucket(value: i32) -> Result<Bucket, Status> {
    match pb::Bucket::try_from(value) {
        Ok(pb::Bucket::Public) => Ok(Bucket::Public),
        Ok(pb::Bucket::Private) => Ok(Bucket::Private),
        _ => Err(invalid("bucket", "must be BUCKET_PUBLIC or BUCKET_PRIVATE")),
    }
}

/// The bucket a read names, if any: a read without one returns every
/// bucket the caller may see.
fn read_bucket(value: i32) -> Result<Option<Bucket>, Status> {
    match pb::Bucket::try_from(value) {
        Ok(pb::Bucket::Unspecified) => Ok(None),
        _ => bucket(value).map(Some),
    }
}

impl UserSessionApi {
    /// Serves the buckets; tokens are verified through `sessions`.
    pub fn new(
        sessions: Arc<SessionManager>,
        buckets: Arc<Buckets>,
        api_keys: ApiKeys,
        client_secrets: ClientSecrets,
    ) -> Self {
        Self {
            sessions,
            buckets,
            api_keys,
            client_secrets,
        }
    }

    async fn caller<T>(
        &self,
        req: &Request<T>,
        user_id: &str,
        tenant_id: &str,
    ) -> Result<Caller, Status> {
        let metadata = req.metadata();
        let token = bearer(metadata)?;
        let secret = metadata
            .get(CLIENT_SECRET_HEADER)
            .map(|v| v.as_bytes().to_vec());
        let named = |private| -> Result<Caller, Status> {
            if user_id.is_empty() {
                return Err(invalid(
                    "user_id",
                    "must name the user when calling without an access token",
                ));
            }
            Ok(Caller {
                user_id: UserId::parse("user_id", user_id)?,
                tenant_id: TenantId::parse("tenant_id", tenant_id)?,
                private,
                server: true,
            })
        };

        // A valid x-api-key was checked by the auth layer, which attached
        // its identity; with no key configured, a call without a token is a
        // backend's (the server is on loopback only).
        if let Some(key) = req.extensions().get::<super::KeyIdentity>() {
            if key.scope < Scope::Backend {
                return Err(denied(&format!(
                    "the API key `{}` has scope {}; bucket calls need scope backend",
                    key.name,
                    key.scope.as_str()
                )));
            }
            return named(true);
        }
        if metadata.contains_key(super::API_KEY_HEADER) {
            return Err(super::missing_key("the x-api-key is not a valid API key"));
        }
        // A client secret that is sent is checked, key-less or not: a wrong
        // one is refused rather than ignored.
        if self.api_keys.is_open() && token.is_none() && secret.is_none() {
            return named(true);
        }
        if let Some(token) = token {
            let session = &self.verified(token).await?;
            if (!user_id.is_empty() && user_id != session.user_id)
                || (!tenant_id.is_empty() && tenant_id != session.tenant_id)
            {
                return Err(denied(
                    "an access token reaches its own user's buckets only",
                ));
            }
            let private = match secret {
                None => false,
                Some(s) if self.client_secrets.check(&session.tenant_id, &s) => true,
                Some(_) => {
                    return Err(denied(
                        "the x-client-secret is not this tenant's client secret",
                    ));
                }
            };
            return Ok(Caller {
                user_id: UserId::parse("user_id", session.user_id.clone())?,
                tenant_id: TenantId::parse("tenant_id", &session.tenant_id)?,
                private,
                server: false,
            });
        }
        if let Some(s) = secret {
            let tenant = payload::tenant_id("tenant_id", tenant_id)?;
            if !self.client_secrets.check(&tenant, &s) {
                return Err(denied(
                    "the x-client-secret is not this tenant's client secret",
                ));
            }
            return named(true);
        }
        Err(status(
            Reason::MissingCredentials,
            "this call needs `authorization: Bearer <access token>`, an x-client-secret or an x-api-key",
            HashMap::new(),
            None,
        ))
    }

    /// The claims of an end user's access token, checked against the
    /// store (a revoked session's token is refused).
    async fn verified(
        &self,
        token: String,
    ) -> Result<Arc<crate::token::access::AccessClaims>, Status> {
        let verified = self
            .sessions
            .verify(Verify {
                access_token: token,
                check_database: true,
                ..Default::default()
            })
            .await?;
        Ok(verified.claims)
    }

    /// Whether the caller may reach `bucket` (a read naming none reaches
    /// what the caller may see).
    fn allow(caller: &Caller, bucket: Option<Bucket>) -> Result<(), Status> {
        super::record_tenant(caller.tenant_id.as_str());
        if bucket == Some(Bucket::Private) && !caller.private {
            return Err(denied(
                "the private bucket needs the tenant's x-client-secret or a backend API key",
            ));
        }
        Ok(())
    }
}

/// The three bucket answers have the same fields.
macro_rules! bucket_reply {
    ($($response:ty),+) => {$(
        impl From<UserBuckets> for $response {
            fn from(b: UserBuckets) -> Self {
                Self {
                    public: Some(json_to_struct(&b.public)),
                    private: b.private.as_ref().map(json_to_struct),
                    user_id: b.user_id,
                    user_identifier: b.user_identifier,
                }
            }
        }
    )+};
}

bucket_reply!(
    pb::GetUserSessionResponse,
    pb::UpdateUserSessionResponse,
    pb::ClearUserSessionResponse
);

#[tonic::async_trait]
impl UserSessionService for UserSessionApi {
    async fn get_user_session(
        &self,
        req: Request<pb::GetUserSessionRequest>,
    ) -> Result<Response<pb::GetUserSessionResponse>, Status> {
        let caller = self
            .caller(&req, &req.get_ref().user_id, &req.get_ref().tenant_id)
            .await?;
        Self::allow(&caller, read_bucket(req.get_ref().bucket)?)?;
        let found = self
            .buckets
            .get(&caller.tenant_id, &caller.user_id, caller.private)
            .await?;
        Ok(Response::new(found.into()))
    }

    async fn update_user_session(
        &self,
        req: Request<pb::UpdateUserSessionRequest>,
    ) -> Result<Response<pb::UpdateUserSessionResponse>, Status> {
        let caller = self
            .caller(&req, &req.get_ref().user_id, &req.get_ref().tenant_id)
            .await?;
        let r = req.into_inner();
        let which = bucket(r.bucket)?;
        Self::allow(&caller, Some(which))?;
        if r.user_identifier.is_some() && !caller.server {
            return Err(denied("only servers may set the user identifier"));
        }
        let data = r
            .data
            .ok_or_else(|| invalid("data", "must be a JSON object"))?;
        let patch = opt_struct("data", Some(data))?;
        let user_identifier = r
            .user_identifier
            .map(|id| UserIdentifier::parse("user_identifier", id))
            .transpose()?;
        let merged = self
            .buckets
            .update(
                &caller.tenant_id,
                &caller.user_id,
                which,
                patch,
                user_identifier,
                caller.private,
            )
            .await?;
        Ok(Response::new(merged.into()))
    }

    async fn clear_user_session(
        &self,
        req: Request<pb::ClearUserSessionRequest>,
    ) -> Result<Response<pb::ClearUserSessionResponse>, Status> {
        let caller = self
            .caller(&req, &req.get_ref().user_id, &req.get_ref().tenant_id)
            .await?;
        let which = bucket(req.get_ref().bucket)?;
        Self::allow(&caller, Some(which))?;
        let cleared = self
            .buckets
            .clear(&caller.tenant_id, &caller.user_id, which, caller.private)
            .await?;
        Ok(Response::new(cleared.into()))
    }

    async fn list_my_sessions(
        &self,
        req: Request<pb::ListMySessionsRequest>,
    ) -> Result<Response<pb::ListMySessionsResponse>, Status> {
        let me = self.me(&req).await?;
        let r = req.into_inner();
        let page = devices::page(r.page_size, r.page_token, devices::SESSIONS_PAGE);
        let listed = self.sessions.list_mine(me.caller(), page).await?;
        Ok(Response::new(pb::ListMySessionsResponse {
            sessions: listed.items.into_iter().map(devices::summary).collect(),
            next_page_token: listed.next_page_token.unwrap_or_default(),
        }))
    }

    async fn revoke_my_session(
        &self,
        req: Request<pb::RevokeMySessionRequest>,
    ) -> Result<Response<pb::RevokeMySessionResponse>, Status> {
        let me = self.me(&req).await?;
        let handle = payload::handle("session_handle", &req.get_ref().session_handle)?;
        let revoked = self.sessions.revoke_mine(me.caller(), handle).await?;
        Ok(Response::new(pb::RevokeMySessionResponse { revoked }))
    }

    async fn revoke_my_other_sessions(
        &self,
        req: Request<pb::RevokeMyOtherSessionsRequest>,
    ) -> Result<Response<pb::RevokeMyOtherSessionsResponse>, Status> {
        let me = self.me(&req).await?;
        let keep = payload::handle("session_handle", &me.session_handle)?;
        let revoked = self.sessions.revoke_others(keep).await?;
        let (session_handles_revoked, revoked_count) = devices::at_most_a_page(revoked);
        Ok(Response::new(pb::RevokeMyOtherSessionsResponse {
            session_handles_revoked,
            revoked_count,
        }))
    }
}

/// The end user of a self-service call: the session of its access token.
struct Me {
    user_id: UserId,
    tenant_id: TenantId,
    session_handle: String,
}

impl Me {
    fn caller(&self) -> crate::session::Caller<'_> {
        crate::session::Caller {
            user_id: &self.user_id,
            tenant_id: &self.tenant_id,
            session_handle: &self.session_handle,
        }
    }
}

impl UserSessionApi {
    /// The caller of a self-service call, from its Bearer access token,
    /// checked against the store (a revoked session's token is refused).
    /// Only end users call these: an API key or client secret alone names
    /// no session.
    async fn me<T>(&self, req: &Request<T>) -> Result<Me, Status> {
        let Some(token) = bearer(req.metadata())? else {
            return Err(status(
                Reason::MissingCredentials,
                "this call is an end user's: it needs `authorization: Bearer <access token>`",
                HashMap::new(),
                None,
            ));
        };
        let claims = self.verified(token).await?;
        super::record_tenant(&claims.tenant_id);
        Ok(Me {
            user_id: UserId::parse("user_id", claims.user_id.clone())?,
            tenant_id: TenantId::parse("tenant_id", &claims.tenant_id)?,
            session_handle: claims.session_handle.clone(),
        })
    }
}
