//! Caller authentication by method: a tower layer in front of the gRPC
//! services that checks `x-api-key` against the scope each method needs.
//!
//! tonic interceptors cannot see the method, so the rules live here:
//! health and reflection are open; GetSession, ValidateClaimsInJwtPayload,
//! GetJwks, GetOpenIdDiscoveryConfiguration and the gateway check
//! (`envoy.service.auth.v3.Authorization/Check`) need `verify`;
//! RotateSigningKey and AdminService need `admin`; every other
//! SessionService and JwtService method needs `backend`. UserSessionService
//! authenticates end users itself; a key presented to it must be valid, and
//! its identity travels to the handler in the request's extensions.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use tower::{Layer, Service};

use super::keys::Scope;
use super::{ApiKeys, KeyIdentity, missing_key};
use crate::error::Reason;

/// What a method asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing (health, reflection).
    Nothing,
    /// A key of at least this scope.
    Key(Scope),
    /// The handler decides; a presented key must be valid.
    Handler,
}

fn need(path: &str) -> Need {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Need::Nothing;
    };
    match (service, method) {
        ("sessiond.v1.SessionService", "GetSession" | "ValidateClaimsInJwtPayload") => {
            Need::Key(Scope::Verify)
        }
        ("sessiond.v1.SessionService", _) => Need::Key(Scope::Backend),
        ("sessiond.v1.JwtService", "GetJwks" | "GetOpenIdDiscoveryConfiguration") => {
            Need::Key(Scope::Verify)
        }
        ("sessiond.v1.JwtService", "RotateSigningKey") => Need::Key(Scope::Admin),
        ("sessiond.v1.JwtService", _) => Need::Key(Scope::Backend),
        ("sessiond.v1.AdminService", _) => Need::Key(Scope::Admin),
        ("sessiond.v1.UserSessionService", _) => Need::Handler,
        ("envoy.service.auth.v3.Authorization", _) => Need::Key(Scope::Verify),
        _ => Need::Nothing,
    }
}

/// Adds [`Authenticate`] to the gRPC routes.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    keys: ApiKeys,
}

impl AuthLayer {
    /// Checks callers against `keys`.
    pub fn new(keys: ApiKeys) -> Self {
        Self { keys }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            keys: self.keys.clone(),
        }
    }
}

/// The authenticating service.
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    keys: ApiKeys,
}

impl<S> Authenticate<S> {
    /// Decides a request: the identity to attach, or the status to answer.
    fn admit(&self, req: &http::Request<Body>) -> Result<Option<KeyIdentity>, tonic::Status> {
        let need = need(req.uri().path());
        if need == Need::Nothing {
            return Ok(None);
        }
        let Need::Key(scope) = need else {
            return self.keys.identify(req.headers());
        };
        require(&self.keys, req.headers(), scope)
    }
}

/// Checks that `headers` carry a key of at least `scope` among `keys`
/// (anything passes when no key is configured): the caller's identity, or
/// the status to answer. For routes outside the gRPC services, such as the
/// HTTP gateway check.
pub fn require(
    keys: &ApiKeys,
    headers: &http::HeaderMap,
    scope: Scope,
) -> Result<Option<KeyIdentity>, tonic::Status> {
    let identity = keys.identify(headers)?;
    if keys.is_open() {
        return Ok(None);
    }
    match identity {
        None => Err(missing_key("this call needs an x-api-key")),
        Some(id) if id.scope >= scope => Ok(Some(id)),
        Some(id) => Err(super::error::status(
            Reason::PermissionDenied,
            format!(
                "the API key `{}` has scope {}; this call needs scope {}",
                id.name,
                id.scope.as_str(),
                scope.as_str()
            ),
            [
                ("key_scope".to_owned(), id.scope.as_str().to_owned()),
                ("required_scope".to_owned(), scope.as_str().to_owned()),
            ]
            .into(),
            None,
        )),
    }
}

impl<S> Service<http::Request<Body>> for Authenticate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        match self.admit(&req) {
            Ok(identity) => {
                if let Some(identity) = identity {
                    req.extensions_mut().insert(identity);
                }
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Err(status) => Box::pin(async move { Ok(status.into_http::<Body>()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_need_the_documented_scopes() {
        let key = |p| need(p);
        assert_eq!(
            key("/sessiond.v1.SessionService/GetSession"),
            Need::Key(Scope::Verify)
        );
        assert_eq!(
            key("/sessiond.v1.SessionService/CreateNewSession"),
            Need::Key(Scope::Backend)
        );
        assert_eq!(
            key("/sessiond.v1.JwtService/GetJwks"),
            Need::Key(Scope::Verify)
        );
        assert_eq!(
            key("/sessiond.v1.JwtService/CreateJwt"),
            Need::Key(Scope::Backend)
        );
        assert_eq!(
            key("/sessiond.v1.JwtService/RotateSigningKey"),
            Need::Key(Scope::Admin)
        );
        assert_eq!(
            key("/sessiond.v1.AdminService/Backup"),
            Need::Key(Scope::Admin)
        );
        assert_eq!(
            key("/sessiond.v1.AdminService/ListAllSessions"),
            Need::Key(Scope::Admin),
            "it lists every user's sessions"
        );
        assert_eq!(
            key("/sessiond.v1.UserSessionService/GetUserSession"),
            Need::Handler
        );
        assert_eq!(key("/grpc.health.v1.Health/Check"), Need::Nothing);
        assert_eq!(
            key("/envoy.service.auth.v3.Authorization/Check"),
            Need::Key(Scope::Verify),
            "a gateway check verifies a session, as GetSession does"
        );
        assert_eq!(
            key("/sessiond.v1.SessionService/Unknown"),
            Need::Key(Scope::Backend)
        );
    }
}
