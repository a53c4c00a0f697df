//! Gateway checks: one decision for every proxy that asks whether a
//! request may pass. Two front ends ask it: Envoy and Istio's external
//! authorization over gRPC (`envoy.service.auth.v3.Authorization/Check`,
//! [`envoy`]) and HTTP forward authentication on `/authz` (nginx
//! `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth`, Envoy's
//! HTTP ext_authz), served by `crate::http`.
//!
//! The decision ([`Gate::decide`]):
//! - the access token comes from `authorization: Bearer`, else from the
//!   configured cookie (`--authz-cookie-name`, SuperTokens' `sAccessToken`
//!   by default);
//! - a token that came in a cookie, on a method other than GET, HEAD or
//!   OPTIONS, must come with the session's anti-CSRF token in `anti-csrf`
//!   when the session has one;
//! - it is verified exactly as GetSession verifies (the same cache of
//!   verified tokens, `check_database` and claim validators, per route);
//! - allowed: the identity headers ([`IDENTITY_HEADERS`]) and the configured
//!   claim headers, which replace whatever the client sent under those
//!   names; denied: 401 (`TRY_REFRESH_TOKEN`, `UNAUTHORISED`) or 403
//!   (`INVALID_CLAIMS`) with a JSON body, and nothing of the session.
//!
//! Never logs or records a token: a decision's span has the front end, the
//! route's host and path (without its query) and the outcome.

pub mod envoy;

use std::sync::Arc;
use std::time::Instant;

use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::{Map, Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::claims::Validators;
use crate::error::Reason;
use crate::metrics::{AuthzRecorder, Metrics};
use crate::pb;
use crate::session::{SessionManager, Verify};

/// The headers an allowed check sets upstream: the session, its user and
/// its tenant.
pub const IDENTITY_HEADERS: [&str; 3] = ["x-session-handle", "x-user-id", "x-tenant-id"];

/// The HTTP front end's per-location `check_database` (`true` or `false`).
pub const CHECK_DATABASE_HEADER: &str = "x-sessiond-check-database";

/// The HTTP front end's per-location claim validators (a JSON array of
/// `ClaimValidator` in protobuf JSON form).
pub const CLAIM_VALIDATORS_HEADER: &str = "x-sessiond-claim-validators";

/// The gRPC front end's context extension for `check_database`.
pub const CHECK_DATABASE_EXTENSION: &str = "check_database";

/// The gRPC front end's context extension for claim validators.
pub const CLAIM_VALIDATORS_EXTENSION: &str = "claim_validators";

/// The request header carrying the anti-CSRF token.
pub const ANTI_CSRF_HEADER: &str = "anti-csrf";

/// Which front end asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// `envoy.service.auth.v3.Authorization/Check`.
    Grpc = 0,
    /// `/authz`.
    Http = 1,
}

impl Front {
    /// The front end's metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

/// What a proxy asks about one request, read from it by a front end.
#[derive(Debug)]
pub struct Ask<'a> {
    /// The original request's method.
    pub method: &'a str,
    /// Its `authorization` header.
    pub authorization: Option<&'a str>,
    /// Its `cookie` headers.
    pub cookies: Vec<&'a str>,
    /// Its `anti-csrf` header.
    pub anti_csrf: Option<&'a str>,
    /// The route's policy, unparsed.
    pub check_database: Option<&'a str>,
    /// The route's claim validators, unparsed.
    pub claim_validators: Option<&'a str>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through with these headers set upstream (each
    /// replacing the client's copies), and these removed.
    Allow {
        /// Header name and value.
        set: Vec<(String, String)>,
        /// Claim headers of claims the token does not have.
        remove: Vec<String>,
    },
    /// Refuse it.
    Deny(Denial),
}

/// A refusal, as both front ends answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The HTTP status the client gets.
    pub http_status: u16,
    /// The matching gRPC code (for the gRPC front end's `status`).
    pub code: Code,
    /// The error reason, as GetSession's.
    pub reason: String,
    /// The JSON body: `reason`, `message`, and `claim_validation_errors`
    /// for INVALID_CLAIMS.
    pub body: String,
}

impl Denial {
    fn new(
        http_status: u16,
        code: Code,
        reason: &str,
        message: &str,
        extra: Map<String, Value>,
    ) -> Self {
        let mut body = Map::new();
        body.insert("reason".into(), reason.into());
        body.insert("message".into(), message.into());
        body.extend(extra);
        Self {
            http_status,
            code,
            reason: reason.to_owned(),
            body: Value::Object(body).to_string(),
        }
    }

    /// A refusal for what the session rules (or the caller's check)
    /// answered.
    pub fn from_status(status: &Status) -> Self {
        let http_status = match status.code() {
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            Code::InvalidArgument | Code::OutOfRange => 400,
            Code::Unavailable => 503,
            Code::ResourceExhausted => 429,
            Code::DeadlineExceeded => 504,
            _ => 500,
        };
        let details = status.get_error_details();
        let reason = details.error_info().map_or_else(
            || Reason::Internal.as_str().to_owned(),
            |i| i.reason.clone(),
        );
        let mut extra = Map::new();
        if let Some(failed) = details.precondition_failure() {
            let claims = failed
                .violations
                .iter()
                .map(|v| {
                    let why = serde_json::from_str(&v.description).unwrap_or(Value::Null);
                    json!({ "id": v.subject, "message": v.r#type, "reason": why })
                })
                .collect();
            extra.insert("claim_validation_errors".into(), Value::Array(claims));
        }
        if let Some(bad) = details.bad_request()
            && let Some(v) = bad.field_violations.first()
        {
            extra.insert("field".into(), v.field.clone().into());
        }
        Self::new(http_status, status.code(), &reason, status.message(), extra)
    }

    /// A refusal of a route whose policy is not valid (the proxy's
    /// configuration, not the client, is at fault).
    fn bad_policy(setting: &str, problem: &str) -> Self {
        let mut extra = Map::new();
        extra.insert("field".into(), setting.into());
        Self::new(
            400,
            Code::InvalidArgument,
            Reason::InvalidArgument.as_str(),
            &format!("{setting}: {problem}"),
            extra,
        )
    }
}

/// The decision both front ends share; see the module documentation.
pub struct Gate {
    manager: Arc<SessionManager>,
    cookie_name: String,
    claim_headers: Vec<(String, String)>,
    validator: MessageDescriptor,
    /// The decisions' metrics, by front end: gRPC, HTTP.
    recorders: [AuthzRecorder; 2],
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("cookie_name", &self.cookie_name)
            .field("claim_headers", &self.claim_headers)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// Decides with `manager`'s rules, reading the token from the cookie
    /// `cookie_name` when no Bearer token is sent, and forwarding each
    /// `(claim, header)` of `claim_headers` upstream; claim validators are
    /// read from JSON with `descriptors` (those of
    /// [`connect::descriptors`](super::connect::descriptors)).
    pub fn new(
        descriptors: &prost_reflect::DescriptorPool,
        manager: Arc<SessionManager>,
        cookie_name: String,
        claim_headers: Vec<(String, String)>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let validator = descriptors
            .get_message_by_name("sessiond.v1.ClaimValidator")
            .ok_or_else(|| "the descriptors lack sessiond.v1.ClaimValidator".to_owned())?;
        Ok(Self {
            manager,
            cookie_name,
            claim_headers,
            validator,
            recorders: [Front::Grpc, Front::Http]
                .map(|front| metrics.authz(front.as_str(), &OUTCOMES)),
        })
    }

    /// Decides one request for `front`, counting and timing the decision.
    pub async fn decide(&self, front: Front, ask: Ask<'_>) -> Decision {
        let started = Instant::now();
        let decision = self.decide_uncounted(front, ask).await;
        let outcome = match &decision {
            Decision::Allow { .. } => 0,
            Decision::Deny(d) => outcome_of(&d.reason),
        };
        tracing::Span::current().record("outcome", OUTCOMES[outcome]);
        self.recorders[front as usize].record(outcome, started.elapsed());
        decision
    }

    async fn decide_uncounted(&self, front: Front, ask: Ask<'_>) -> Decision {
        let (check_database, validators) =
            match self.policy(front, ask.check_database, ask.claim_validators) {
                Ok(policy) => policy,
                Err(denial) => return Decision::Deny(denial),
            };
        let bearer = ask.authorization.and_then(bearer_token);
        let (token, from_cookie) = match bearer {
            Some(token) => (token, false),
            None => match cookie(&ask.cookies, &self.cookie_name) {
                Some(token) => (token, true),
                None => {
                    return Decision::Deny(Denial::new(
                        401,
                        Code::Unauthenticated,
                        Reason::Unauthorised.as_str(),
                        &format!(
                            "no access token: send `authorization: Bearer <token>` or the `{}` cookie",
                            self.cookie_name
                        ),
                        Map::new(),
                    ));
                }
            },
        };
        let verify = Verify {
            validators,
            access_token: token.to_owned(),
            anti_csrf_token: ask.anti_csrf.map(str::to_owned),
            check_anti_csrf: from_cookie && !safe_method(ask.method),
            check_database,
        };
        match self.manager.verify(verify).await {
            Ok(verified) => {
                let claims = &verified.claims;
                let mut set = vec![
                    (
                        IDENTITY_HEADERS[0].to_owned(),
                        claims.session_handle.clone(),
                    ),
                    (IDENTITY_HEADERS[1].to_owned(), claims.user_id.clone()),
                    (IDENTITY_HEADERS[2].to_owned(), claims.tenant_id.clone()),
                ];
                let mut remove = Vec::new();
                for (claim, header) in &self.claim_headers {
                    // A claim (`{"v": value, "t": set at}`) forwards its
                    // value; any other payload key, itself.
                    let payload = verified.payload();
                    let value = crate::claims::read(payload, claim)
                        .map(|(value, _)| value)
                        .or_else(|| payload.get(claim).cloned());
                    match value {
                        Some(Value::String(s)) => set.push((header.clone(), s)),
                        Some(Value::Null) | None => remove.push(header.clone()),
                        Some(other) => set.push((header.clone(), other.to_string())),
                    }
                }
                if let Some((header, _)) = set.iter().find(|(_, v)| !sendable(v)) {
                    return Decision::Deny(Denial::new(
                        500,
                        Code::Internal,
                        Reason::Internal.as_str(),
                        &format!("the session's value for `{header}` cannot be sent as a header"),
                        Map::new(),
                    ));
                }
                Decision::Allow { set, remove }
            }
            Err(e) => Decision::Deny(Denial::from_status(&Status::from(e))),
        }
    }

    /// The route's `check_database` and claim validators.
    fn policy(
        &self,
        front: Front,
        check_database: Option<&str>,
        claim_validators: Option<&str>,
    ) -> Result<(bool, Validators), Denial> {
        let (database_setting, validators_setting) = match front {
            Front::Grpc => (CHECK_DATABASE_EXTENSION, CLAIM_VALIDATORS_EXTENSION),
            Front::Http => (CHECK_DATABASE_HEADER, CLAIM_VALIDATORS_HEADER),
        };
        let check_database = match check_database.map(str::trim) {
            None | Some("") | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(Denial::bad_policy(
                    database_setting,
                    "must be `true` or `false`",
                ));
            }
        };
        let validators = match claim_validators.map(str::trim) {
            None | Some("") => Validators::default(),
            Some(json) => self.validators(validators_setting, json)?,
        };
        Ok((check_database, validators))
    }

    /// Claim validators from their protobuf JSON form, named `setting` in
    /// refusals.
    fn validators(&self, setting: &str, json: &str) -> Result<Validators, Denial> {
        let bad = |problem: &str| Denial::bad_policy(setting, problem);
        let Ok(Value::Array(items)) = serde_json::from_str::<Value>(json) else {
            return Err(bad("must be a JSON array of ClaimValidator"));
        };
        let validators = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let message = DynamicMessage::deserialize(self.validator.clone(), item)
                    .map_err(|e| bad(&format!("[{i}] is not a ClaimValidator: {e}")))?;
                message
                    .transcode_to::<pb::ClaimValidator>()
                    .map_err(|e| bad(&format!("[{i}] is not a ClaimValidator: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        super::claims::checked_validators(setting, validators)
            .map_err(|status| Denial::from_status(&status))
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of the cookie `name` in the `cookie` headers.
fn cookie<'a>(headers: &[&'a str], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// Whether `value` may be an HTTP header value (no control characters).
fn sendable(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Methods that change nothing, which need no anti-CSRF token.
fn safe_method(method: &str) -> bool {
    ["GET", "HEAD", "OPTIONS"]
        .iter()
        .any(|m| m.eq_ignore_ascii_case(method.trim()))
}

/// The outcomes of a decision, as metrics and spans name them.
const OUTCOMES: [&str; 7] = [
    "allowed",
    "unauthorised",
    "try_refresh_token",
    "invalid_claims",
    "bad_policy",
    "store_unavailable",
    "error",
];

/// The outcome (an index in [`OUTCOMES`]) of a refusal for `reason`.
fn outcome_of(reason: &str) -> usize {
    match reason {
        "UNAUTHORISED" => 1,
        "TRY_REFRESH_TOKEN" => 2,
        "INVALID_CLAIMS" => 3,
        "INVALID_ARGUMENT" => 4,
        "STORE_UNAVAILABLE" => 5,
        _ => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_a_bearer_header_or_the_named_cookie() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        let headers = ["a=1; sAccessToken=tok", "other=2"];
        assert_eq!(cookie(&headers, "sAccessToken"), Some("tok"));
        assert_eq!(cookie(&["sAccessTokenX=no"], "sAccessToken"), None);
        assert_eq!(cookie(&["sAccessToken="], "sAccessToken"), None);
        assert_eq!(cookie(&[], "sAccessToken"), None);
    }

    #[test]
    fn only_unsafe_methods_need_the_anti_csrf_token() {
        for m in ["GET", "head", "OPTIONS"] {
            assert!(safe_method(m), "{m}");
        }
        for m in ["POST", "PUT", "PATCH", "DELETE", ""] {
            assert!(!safe_method(m), "{m}");
        }
    }
}
