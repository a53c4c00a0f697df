//! The calls the scenarios make, and the sessions they make them with.

use std::sync::Arc;

use http::Uri;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use prost_types::Struct;
use prost_types::value::Kind;
use sessiond::pb;
use tonic::Status;
use tonic_health::pb::HealthCheckRequest;

use crate::conn::{Conn, decode};

/// A session of the population.
#[derive(Clone)]
pub(crate) struct Member {
    pub(crate) handle: String,
    pub(crate) access: String,
    pub(crate) refresh: String,
}

/// The access token payload of created sessions: three short claims, padded
/// with a `pad` claim to about `bytes` bytes of JSON when that is larger
/// (filled per session by [`varied`]).
pub(crate) fn payload(bytes: usize) -> Struct {
    let mut s = Struct::default();
    let claims = [("role", "member"), ("plan", "pro"), ("region", "eu-west")];
    // {"role":"member","plan":"pro","region":"eu-west"}, and ,"pad":"" adds 9.
    let unpadded = 2 + claims
        .iter()
        .map(|(k, v)| k.len() + v.len() + 6)
        .sum::<usize>()
        - 1;
    let pad = "x".repeat(bytes.saturating_sub(unpadded + 9));
    let padding = (!pad.is_empty()).then_some(("pad", pad.as_str()));
    for (k, v) in claims.into_iter().chain(padding) {
        s.fields.insert(
            k.into(),
            prost_types::Value {
                kind: Some(Kind::StringValue(v.into())),
            },
        );
    }
    s
}

/// `payload` with its `pad` claim refilled with pseudo-random letters and
/// digits, different for every session, as real payloads (ids, emails) are:
/// a pad repeated across sessions would compress and dedupe unrealistically.
pub(crate) fn varied(payload: &Struct) -> Struct {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut out = payload.clone();
    let Some(Kind::StringValue(pad)) = out.fields.get_mut("pad").and_then(|v| v.kind.as_mut())
    else {
        return out;
    };
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = NEXT
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    *pad = (0..pad.len())
        .map(|_| {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            char::from(ALPHABET[(r >> 58) as usize % ALPHABET.len()])
        })
        .collect();
    out
}

/// The methods the scenarios call, as absolute URIs on the server.
pub(crate) struct Methods {
    pub(crate) health: Uri,
    pub(crate) create: Uri,
    pub(crate) get: Uri,
    pub(crate) refresh: Uri,
    pub(crate) revoke: Uri,
    pub(crate) bucket_get: Uri,
    pub(crate) bucket_update: Uri,
    pub(crate) authz_grpc: Uri,
    pub(crate) authz_http: Uri,
}

impl Methods {
    pub(crate) fn on(addr: &str) -> Self {
        let uri = |path: &str| -> Uri {
            format!("http://{addr}{path}")
                .parse()
                .unwrap_or_else(|e| panic!("--addr {addr}: {e}"))
        };
        let session = |m: &str| uri(&format!("/sessiond.v1.SessionService/{m}"));
        let user = |m: &str| uri(&format!("/sessiond.v1.UserSessionService/{m}"));
        Self {
            health: uri("/grpc.health.v1.Health/Check"),
            create: session("CreateNewSession"),
            get: session("GetSession"),
            refresh: session("RefreshSession"),
            revoke: session("RevokeSession"),
            bucket_get: user("GetUserSession"),
            bucket_update: user("UpdateUserSession"),
            authz_grpc: uri("/envoy.service.auth.v3.Authorization/Check"),
            authz_http: uri("/authz/orders"),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) conn: Conn,
    pub(crate) methods: Arc<Methods>,
    pub(crate) api_key: Option<HeaderValue>,
    pub(crate) payload: Struct,
}

impl Client {
    /// Authentication of server calls: the API key, when there is one.
    pub(crate) fn server(&self) -> Option<(HeaderName, HeaderValue)> {
        self.api_key
            .clone()
            .map(|key| (HeaderName::from_static("x-api-key"), key))
    }

    pub(crate) fn bearer(token: &str) -> Option<(HeaderName, HeaderValue)> {
        let value = format!("Bearer {token}").parse().expect("tokens are ASCII");
        Some((AUTHORIZATION, value))
    }

    pub(crate) async fn health(&self) -> Result<(), Status> {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        self.conn
            .unary(&self.methods.health, &request, None)
            .await
            .map(drop)
    }

    pub(crate) async fn create(&self, user: String) -> Result<Member, Status> {
        self.create_on(user, None).await
    }

    /// CreateNewSession naming the device it is made on, if any.
    pub(crate) async fn create_on(
        &self,
        user: String,
        device: Option<pb::Device>,
    ) -> Result<Member, Status> {
        let request = pb::CreateNewSessionRequest {
            user_id: user,
            access_token_payload: Some(varied(&self.payload)),
            disable_anti_csrf: true,
            device,
            ..Default::default()
        };
        let reply = self
            .conn
            .unary(&self.methods.create, &request, self.server())
            .await?;
        let r: pb::CreateNewSessionResponse = decode(reply)?;
        Ok(Member {
            handle: r.session.map(|s| s.session_handle).unwrap_or_default(),
            access: r.access_token.map(|t| t.token).unwrap_or_default(),
            refresh: r.refresh_token.map(|t| t.token).unwrap_or_default(),
        })
    }

    pub(crate) async fn get(&self, token: &str, check_database: bool) -> Result<(), Status> {
        let request = pb::GetSessionRequest {
            access_token: token.to_owned(),
            check_database,
            ..Default::default()
        };
        self.conn
            .unary(&self.methods.get, &request, self.server())
            .await
            .map(drop)
    }

    /// RefreshSession naming the device it is made from, if any.
    pub(crate) async fn refresh_on(
        &self,
        member: &mut Member,
        device: Option<pb::Device>,
    ) -> Result<(), Status> {
        let request = pb::RefreshSessionRequest {
            refresh_token: member.refresh.clone(),
            disable_anti_csrf: true,
            device,
            ..Default::default()
        };
        let reply = self
            .conn
            .unary(&self.methods.refresh, &request, self.server())
            .await?;
        let r: pb::RefreshSessionResponse = decode(reply)?;
        member.refresh = r.refresh_token.map(|t| t.token).unwrap_or_default();
        member.access = r.access_token.map(|t| t.token).unwrap_or_default();
        Ok(())
    }

    /// An Envoy ext_authz Check of a GET with `token` as its Bearer token;
    /// a denial is an error.
    pub(crate) async fn authz_grpc(&self, token: &str) -> Result<(), Status> {
        use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
        use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
        use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        path: "/orders".into(),
                        host: "app.example.com".into(),
                        headers: [("authorization".to_owned(), format!("Bearer {token}"))].into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let reply = self
            .conn
            .unary(&self.methods.authz_grpc, &request, self.server())
            .await?;
        let r: CheckResponse = decode(reply)?;
        match r.status.map_or(0, |s| s.code) {
            0 => Ok(()),
            code => Err(Status::new(code.into(), "the check denied the request")),
        }
    }

    /// A forward-auth check (`/authz`) of a GET with `token` as its Bearer
    /// token, over the same HTTP/2 connection; a denial is an error.
    pub(crate) async fn authz_http(&self, token: &str) -> Result<(), Status> {
        let mut headers = vec![Self::bearer(token).expect("a bearer header")];
        headers.extend(self.server());
        self.conn.get(&self.methods.authz_http, headers).await
    }

    pub(crate) async fn revoke(&self, handle: String) -> Result<(), Status> {
        let request = pb::RevokeSessionRequest {
            session_handle: handle,
        };
        self.conn
            .unary(&self.methods.revoke, &request, self.server())
            .await
            .map(drop)
    }

    pub(crate) async fn bucket_get(&self, token: &str) -> Result<(), Status> {
        let request = pb::GetUserSessionRequest {
            bucket: pb::Bucket::Public as i32,
            ..Default::default()
        };
        self.conn
            .unary(&self.methods.bucket_get, &request, Self::bearer(token))
            .await
            .map(drop)
    }

    pub(crate) async fn bucket_update(&self, token: &str, data: Struct) -> Result<(), Status> {
        let request = pb::UpdateUserSessionRequest {
            bucket: pb::Bucket::Public as i32,
            data: Some(data),
            ..Default::default()
        };
        self.conn
            .unary(&self.methods.bucket_update, &request, Self::bearer(token))
            .await
            .map(drop)
    }
}
