//! HTTP forward authentication: any method on `/authz` and any path below
//! it, for nginx `auth_request`, Traefik `forwardAuth`, Caddy
//! `forward_auth` and Envoy's HTTP ext_authz (which appends the original
//! path to the prefix). The decision is [`Gate`]'s, as for the gRPC check.
//!
//! - The caller (the proxy) shows a `verify`-scoped `x-api-key`, or none
//!   when the server has no keys (mutual TLS then decides who connects).
//! - The original method comes from `x-forwarded-method` or
//!   `x-original-method` when the proxy sends one, else it is the
//!   sub-request's own; the route's policy from `x-sessiond-check-database`
//!   and `x-sessiond-claim-validators`.
//! - Allowed: 200 with `x-session-handle`, `x-user-id`, `x-tenant-id` and
//!   every configured claim header (empty when the token lacks the claim),
//!   so that a proxy copying them upstream replaces whatever the client sent.
//! - Refused: 401 or 403 (400 for a location's bad policy, 503 while the
//!   store is unavailable) with the JSON body `reason`, `message`, and the
//!   reason again in [`REASON_HEADER`]: nginx's `auth_request` drops the
//!   body of the answer it asked for, but can read a header of it
//!   (`auth_request_set`) and put it in the refusal it sends.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::api::ApiKeys;
use crate::api::authz::{
    ANTI_CSRF_HEADER, Ask, CHECK_DATABASE_HEADER, CLAIM_VALIDATORS_HEADER, Decision, Denial, Front,
    Gate,
};
use crate::api::keys::Scope;

/// The response header that repeats a refusal's `reason`.
pub const REASON_HEADER: &str = "x-sessiond-reason";

/// What the `/authz` routes need.
#[derive(Debug, Clone)]
pub struct Authz {
    /// The decision.
    pub gate: Arc<Gate>,
    /// The callers' keys.
    pub keys: ApiKeys,
}

/// The first of `names` the request has, as text.
fn first<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()))
}

/// Answers one forward-authentication sub-request.
pub async fn check(
    State(authz): State<Authz>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(status) = crate::api::auth::require(&authz.keys, &headers, Scope::Verify) {
        return refusal(Denial::from_status(&status));
    }
    let original_method =
        first(&headers, &["x-forwarded-method", "x-original-method"]).unwrap_or(method.as_str());
    let suffix = uri.path().strip_prefix("/authz").unwrap_or_default();
    let path = first(&headers, &["x-original-uri", "x-forwarded-uri"])
        .unwrap_or(if suffix.is_empty() { "/" } else { suffix });
    let path = path.split('?').next().unwrap_or_default();
    let host = first(&headers, &["x-forwarded-host", "host"]).unwrap_or_default();
    let span = tracing::info_span!(
        "authz",
        front = "http",
        host = %host,
        path = %path,
        outcome = tracing::field::Empty,
    );
    let ask = Ask {
        method: original_method,
        authorization: first(&headers, &["authorization"]),
        cookies: headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect(),
        anti_csrf: first(&headers, &[ANTI_CSRF_HEADER]),
        check_database: first(&headers, &[CHECK_DATABASE_HEADER]),
        claim_validators: first(&headers, &[CLAIM_VALIDATORS_HEADER]),
    };
    match authz.gate.decide(Front::Http, ask).instrument(span).await {
        Decision::Allow { set, remove } => {
            let mut response = StatusCode::OK.into_response();
            let out = response.headers_mut();
            let pairs = set
                .into_iter()
                .chain(remove.into_iter().map(|h| (h, String::new())));
            for (name, value) in pairs {
                // Names are checked at start-up, values by the gate.
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_bytes(value.as_bytes()),
                ) {
                    out.insert(name, value);
                }
            }
            response
        }
        Decision::Deny(denial) => refusal(denial),
    }
}

fn refusal(denial: Denial) -> Response {
    let status =
        StatusCode::from_u16(denial.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(REASON_HEADER, denial.reason.as_str())
        .body(Body::from(denial.body))
        .unwrap_or_else(|_| status.into_response())
}
