//! `envoy.service.auth.v3.Authorization/Check`: Envoy's and Istio's
//! external authorization over gRPC, on the main port (types from the
//! `envoy-types` crate).
//!
//! The request's `attributes.request.http` gives the method and headers
//! (Envoy lowercases header names); the route's policy comes from
//! `attributes.context_extensions` (`check_database`, `claim_validators`).
//! An allowed check answers `OK` with the identity and claim headers to set
//! upstream, each replacing the client's copies
//! (`OVERWRITE_IF_EXISTS_OR_ADD`), and the
//! claim headers of absent claims in `headers_to_remove`. A refusal answers
//! the gRPC code and a denied HTTP response: 401 or 403 with the JSON body.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use super::{
    ANTI_CSRF_HEADER, Ask, CHECK_DATABASE_EXTENSION, CLAIM_VALIDATORS_EXTENSION, Decision, Front,
    Gate,
};

/// The gRPC front end of the [`Gate`].
#[derive(Debug, Clone)]
pub struct EnvoyAuthz {
    gate: Arc<Gate>,
}

impl EnvoyAuthz {
    /// Asks `gate`.
    pub fn new(gate: Arc<Gate>) -> Self {
        Self { gate }
    }
}

fn header(key: String, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key,
            value,
            ..Default::default()
        }),
        // Replace the client's copies: never append to them.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// The answer for `decision`.
pub fn response(decision: Decision) -> CheckResponse {
    match decision {
        Decision::Allow { set, remove } => CheckResponse {
            status: Some(rpc::Status {
                code: tonic::Code::Ok as i32,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: set.into_iter().map(|(k, v)| header(k, v)).collect(),
                headers_to_remove: remove,
                ..Default::default()
            })),
            ..Default::default()
        },
        Decision::Deny(denial) => CheckResponse {
            status: Some(rpc::Status {
                code: denial.code as i32,
                message: denial.reason.clone(),
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(denial.http_status),
                }),
                headers: vec![header("content-type".into(), "application/json".into())],
                body: denial.body,
            })),
            ..Default::default()
        },
    }
}

#[tonic::async_trait]
impl Authorization for EnvoyAuthz {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let attributes = req.into_inner().attributes.unwrap_or_default();
        let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        let extensions = &attributes.context_extensions;
        let headers = &http.headers;
        let get = |name: &str| headers.get(name).map(String::as_str);
        // The call's own span (`api::observe`) is the decision's.
        let span = tracing::Span::current();
        span.record("host", http.host.as_str());
        span.record("path", http.path.split('?').next().unwrap_or_default());
        let ask = Ask {
            method: &http.method,
            authorization: get("authorization"),
            cookies: get("cookie").into_iter().collect(),
            anti_csrf: get(ANTI_CSRF_HEADER),
            check_database: extensions.get(CHECK_DATABASE_EXTENSION).map(String::as_str),
            claim_validators: extensions
                .get(CLAIM_VALIDATORS_EXTENSION)
                .map(String::as_str),
        };
        let decision = self.gate.decide(Front::Grpc, ask).await;
        Ok(Response::new(response(decision)))
    }
}
