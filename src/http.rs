//! Plain HTTP routes on the gRPC port: `GET /.well-known/jwks.json` and
//! `GET /.well-known/openid-configuration`. Both are public, like the keys
//! they publish.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::jwt::JwtIssuer;

/// The HTTP routes.
pub fn router(issuer: Arc<JwtIssuer>) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .with_state(issuer)
}

async fn jwks(State(issuer): State<Arc<JwtIssuer>>) -> impl IntoResponse {
    let cache = format!("max-age={}, must-revalidate", issuer.jwks_max_age_secs());
    (
        [(header::CACHE_CONTROL, cache)],
        Json(serde_json::json!({ "keys": issuer.jwks() })),
    )
}

async fn discovery(State(issuer): State<Arc<JwtIssuer>>) -> impl IntoResponse {
    Json(issuer.discovery())
}

/// Unknown paths: gRPC callers get UNIMPLEMENTED, everyone else a 404.
pub async fn not_found(headers: HeaderMap) -> axum::response::Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc {
        tonic::Status::unimplemented("no such service or method").into_http()
    } else {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    }
}
