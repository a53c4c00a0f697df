//! `sessiond.v1.JwtService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{duration_ms, opt_struct, timestamp};
use crate::jwt::{JwtIssuer, NewJwt};
use crate::pb;
use crate::pb::jwt_service_server::JwtService;
use crate::token::keys::Jwk;

/// The gRPC face of the JWT issuer.
#[derive(Debug, Clone)]
pub struct JwtApi {
    issuer: Arc<JwtIssuer>,
}

impl JwtApi {
    /// Serves `issuer`.
    pub fn new(issuer: Arc<JwtIssuer>) -> Self {
        Self { issuer }
    }
}

fn jwk(k: Jwk) -> pb::Jwk {
    pb::Jwk {
        kty: k.kty.to_owned(),
        kid: k.kid,
        alg: k.alg.to_owned(),
        r#use: k.use_.to_owned(),
        n: k.n.unwrap_or_default(),
        e: k.e.unwrap_or_default(),
        crv: k.crv.unwrap_or_default().to_owned(),
        x: k.x.unwrap_or_default(),
        y: k.y.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl JwtService for JwtApi {
    async fn create_jwt(
        &self,
        req: Request<pb::CreateJwtRequest>,
    ) -> Result<Response<pb::CreateJwtResponse>, Status> {
        let r = req.into_inner();
        let claims = opt_struct("payload", r.payload)?;
        let validity = r
            .validity
            .as_ref()
            .map(|d| duration_ms("validity", d))
            .transpose()?;
        // Like SuperTokens, the static key unless the caller asks otherwise.
        let use_static = r.use_static_signing_key.unwrap_or(true);
        let req = NewJwt::parse(
            "payload",
            claims,
            "validity",
            validity,
            use_static,
            self.issuer.limits(),
        )?;
        let jwt = self.issuer.create(req).await?;
        Ok(Response::new(pb::CreateJwtResponse { jwt }))
    }

    async fn get_jwks(
        &self,
        _req: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            keys: self.issuer.jwks().into_iter().map(jwk).collect(),
        }))
    }

    async fn get_open_id_discovery_configuration(
        &self,
        _req: Request<pb::GetOpenIdDiscoveryConfigurationRequest>,
    ) -> Result<Response<pb::GetOpenIdDiscoveryConfigurationResponse>, Status> {
        let d = self.issuer.discovery();
        Ok(Response::new(pb::GetOpenIdDiscoveryConfigurationResponse {
            issuer: d.issuer,
            jwks_uri: d.jwks_uri,
        }))
    }

    async fn rotate_signing_key(
        &self,
        _req: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let key = self.issuer.rotate().await?;
        Ok(Response::new(pb::RotateSigningKeyResponse {
            kid: key.kid().to_owned(),
            signs_from: Some(timestamp(key.signs_from_ms())),
        }))
    }
}
