//! Plain HTTP on the gRPC port: `GET /.well-known/jwks.json` and
//! `GET /.well-known/openid-configuration` (public, like the keys they
//! publish), `/metrics`, the gateway check on `/authz` ([`authz`]), the 404
//! for unknown paths, and CORS for browser origins.

use std::sync::Arc;

use axum::extract::State;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::{Json, Router};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub mod authz;

pub use authz::Authz;

use crate::jwt::JwtIssuer;
use crate::metrics::Metrics;
use crate::reload::Live;

/// Request headers browsers may send: gRPC-Web's and Connect's own, and the
/// credentials of UserSessionService.
const CORS_ALLOWED_HEADERS: [&str; 9] = [
    "content-type",
    "authorization",
    "x-client-secret",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "grpc-accept-encoding",
    "connect-protocol-version",
    "connect-timeout-ms",
];

/// Response headers browsers may read: the gRPC status and its details.
const CORS_EXPOSED_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// CORS for the browser origins in `origins` (`*` allows any), read at each
/// request so a reload takes effect at once. With no origin configured no
/// `Access-Control-Allow-Origin` is sent, and browsers keep their
/// same-origin rule.
pub fn cors(origins: Live<Vec<String>>) -> CorsLayer {
    let allow_origin = AllowOrigin::predicate(move |origin: &HeaderValue, _| {
        let allowed = origins.get();
        allowed
            .iter()
            .any(|o| o == "*" || o.as_bytes() == origin.as_bytes())
    });
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(CORS_ALLOWED_HEADERS.map(HeaderName::from_static))
        .expose_headers(CORS_EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(Duration::from_secs(600))
}

/// What the HTTP routes read.
#[derive(Debug, Clone)]
struct Shared {
    issuer: Arc<JwtIssuer>,
    metrics: Arc<Metrics>,
}

/// The HTTP routes.
pub fn router(issuer: Arc<JwtIssuer>, metrics: Arc<Metrics>, authz: Authz) -> Router {
    let gateway = Router::new()
        .route("/authz", any(authz::check))
        .route("/authz/", any(authz::check))
        .route("/authz/{*path}", any(authz::check))
        .with_state(authz);
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/metrics", get(prometheus))
        .with_state(Shared { issuer, metrics })
        .merge(gateway)
}

async fn prometheus(State(shared): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode().await,
    )
}

async fn jwks(State(Shared { issuer, .. }): State<Shared>) -> impl IntoResponse {
    let cache = format!("max-age={}, must-revalidate", issuer.jwks_max_age_secs());
    (
        [(header::CACHE_CONTROL, cache)],
        Json(serde_json::json!({ "keys": issuer.jwks() })),
    )
}

async fn discovery(State(Shared { issuer, .. }): State<Shared>) -> impl IntoResponse {
    Json(issuer.discovery())
}

/// Unknown paths: gRPC and Connect callers get UNIMPLEMENTED, everyone else
/// a 404.
pub async fn not_found(uri: http::Uri, headers: HeaderMap) -> axum::response::Response {
    if let Some(answer) = crate::api::connect::unknown_path(uri.path(), &headers) {
        return answer;
    }
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc {
        // The gRPC answer for a method this server does not have.
        crate::api::details::unimplemented(uri.path()).into_http()
    } else {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    }
}
