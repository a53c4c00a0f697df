//! API keys, open endpoints and health.

use serde_json::json;
use sessiond::pb;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::helpers::*;

fn with_key<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("x-api-key", MetadataValue::try_from(key).unwrap());
    req
}

#[tokio::test]
async fn api_keys_guard_session_and_jwt_services() {
    let server = TestServer::start_with(|c| {
        c.api_keys = vec![
            sessiond::config::ApiKey::admin("first", API_KEY),
            sessiond::config::ApiKey::admin("second", "second-key-abcdefghijkl"),
        ]
    })
    .await;
    let mut c = server.sessions().await;
    let req = || pb::CreateNewSessionRequest {
        user_id: "u".into(),
        ..Default::default()
    };
    assert_status(
        c.create_new_session(req()).await,
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
    );
    let s = assert_status(
        c.create_new_session(with_key(req(), "test-api-key-0123456780"))
            .await,
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
    );
    assert!(
        !s.message().contains("0123456780"),
        "the key is never echoed"
    );
    c.create_new_session(with_key(req(), API_KEY))
        .await
        .unwrap();
    c.create_new_session(with_key(req(), "second-key-abcdefghijkl"))
        .await
        .unwrap();

    let mut j = server.jwts().await;
    assert_status(
        j.get_jwks(pb::GetJwksRequest {}).await,
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
    );
    j.get_jwks(with_key(pb::GetJwksRequest {}, API_KEY))
        .await
        .unwrap();

    // Health and the HTTP routes stay open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "sessiond.v1.SessionService".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().status, 1, "SERVING");
    let (status, _, _) = http_get(server.addr, "/.well-known/jwks.json").await;
    assert!(status.contains("200"));
}

#[tokio::test]
async fn without_keys_loopback_callers_need_none() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    create(&mut c, "u", json!({})).await;
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = TestServer::start().await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply")
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    // Exactly what the port serves: not sessiond.v1.ClaimProvider, which
    // sessiond calls and applications implement.
    assert_eq!(
        names,
        [
            "envoy.service.auth.v3.Authorization",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "sessiond.v1.AdminService",
            "sessiond.v1.JwtService",
            "sessiond.v1.SessionService",
            "sessiond.v1.UserSessionService",
        ]
    );

    // Its descriptor is still there for implementers to fetch.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "sessiond.v1.ClaimProvider".into(),
        )),
    };
    let reply = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            reply.message_response,
            Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
        ),
        "{reply:?}"
    );
}

#[tokio::test]
async fn unknown_paths_are_404_for_http_and_unimplemented_for_grpc() {
    let server = TestServer::start().await;
    let (status, _, _) = http_get(server.addr, "/no/such/page").await;
    assert!(status.contains("404"), "{status}");

    // An unknown method of a served service, and an unknown service: both
    // UNIMPLEMENTED with ErrorInfo and a message naming the path.
    for path in [
        "/sessiond.v1.SessionService/NoSuchMethod",
        "/sessiond.v1.ClaimProvider/FetchClaim",
    ] {
        let mut grpc = tonic::client::Grpc::new(server.channel().await);
        grpc.ready().await.unwrap();
        let reply: Result<tonic::Response<pb::GetJwksResponse>, _> = grpc
            .unary(
                tonic::Request::new(pb::GetJwksRequest {}),
                http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await;
        let s = assert_status(reply, Code::Unimplemented, "UNIMPLEMENTED");
        assert_eq!(
            s.message(),
            format!("sessiond does not serve the method `{path}`")
        );
    }
}

#[tokio::test]
async fn health_of_an_unknown_service_is_not_found_with_a_reason() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let server = TestServer::start().await;
    let reply = HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert_status(reply, Code::NotFound, "UNKNOWN_SERVICE");
}

#[tokio::test]
async fn an_undecodable_request_is_invalid_argument_not_internal() {
    let server = TestServer::start().await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    // Field 1 (user_id, a string) carrying bytes that are not UTF-8.
    let garbage: Vec<u8> = vec![0xff, 0xfe, 0xfd];
    let path = http::uri::PathAndQuery::from_static("/sessiond.v1.SessionService/CreateNewSession");
    let reply: Result<tonic::Response<pb::CreateNewSessionResponse>, _> = grpc
        .unary(
            tonic::Request::new(garbage),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let s = assert_status(reply, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_field(&s), "request");
}

#[tokio::test]
async fn health_turns_not_serving_when_shutdown_begins() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let server =
        TestServer::start_with(|c| c.drain_timeout = std::time::Duration::from_millis(300)).await;
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "sessiond.v1.SessionService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, 1, "SERVING");
    // The open Watch stream is an in-flight call: it outlives the drain
    // timeout, which bounds the shutdown.
    let stopping = tokio::spawn(server.stop());
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        2,
        "NOT_SERVING"
    );
    stopping.await.unwrap();
}

#[tokio::test]
async fn without_keys_serve_refuses_a_non_loopback_listener() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = sessiond::serve(
        listener,
        sessiond::Config::with_data_dir(dir.path()),
        sessiond::ManualClock::starting_now(),
        std::future::pending(),
    )
    .await
    .expect_err("an unprotected server on a public address");
    assert!(err.to_string().contains("only on loopback"), "{err}");
}

#[tokio::test]
async fn scoped_keys_reach_only_their_scope() {
    use aws_lc_rs::digest::{SHA256, digest};
    use sessiond::config::ApiKey;
    const ADMIN: &str = "admin-key-0123456789abcdef";
    const BACKEND: &str = "backend-key-0123456789abcdef";
    const VERIFY: &str = "verify-key-0123456789abcdef";
    let backend_hash: String = digest(&SHA256, BACKEND.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let server = TestServer::start_with(|c| {
        c.api_keys = vec![
            ApiKey::admin("ops", ADMIN),
            // Configured by hash: the key itself is not in the configuration.
            ApiKey::parse(&format!("app:backend:sha256:{backend_hash}"), 1).unwrap(),
            ApiKey::parse(&format!("sidecar:verify:{VERIFY}"), 2).unwrap(),
        ]
    })
    .await;
    let mut c = server.sessions().await;
    let mut j = server.jwts().await;
    let mut admin =
        sessiond::pb::admin_service_client::AdminServiceClient::new(server.channel().await);
    let new = || pb::CreateNewSessionRequest {
        user_id: "u".into(),
        ..Default::default()
    };

    let created = c
        .create_new_session(with_key(new(), BACKEND))
        .await
        .unwrap()
        .into_inner();
    let token = created.access_token.unwrap().token;
    let get = || pb::GetSessionRequest {
        access_token: token.clone(),
        check_database: true,
        ..Default::default()
    };

    // verify: the verifying calls only.
    c.get_session(with_key(get(), VERIFY)).await.unwrap();
    j.get_jwks(with_key(pb::GetJwksRequest {}, VERIFY))
        .await
        .unwrap();
    let s = assert_status(
        c.create_new_session(with_key(new(), VERIFY)).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert!(
        s.message().contains("`sidecar` has scope verify")
            && s.message().contains("needs scope backend"),
        "{}",
        s.message()
    );
    let details = tonic_types::StatusExt::get_error_details(&s);
    assert_eq!(
        details.error_info().unwrap().metadata["required_scope"],
        "backend"
    );
    assert!(!s.message().contains(VERIFY));
    assert_status(
        server
            .buckets()
            .await
            .get_user_session(with_key(
                pb::GetUserSessionRequest {
                    bucket: pb::Bucket::Public as i32,
                    user_id: "u".into(),
                    ..Default::default()
                },
                VERIFY,
            ))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );

    // backend: sessions and JWTs, not key rotation or admin calls.
    c.get_session(with_key(get(), BACKEND)).await.unwrap();
    assert_status(
        j.rotate_signing_key(with_key(pb::RotateSigningKeyRequest {}, BACKEND))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert_status(
        admin
            .list_signing_keys(with_key(pb::ListSigningKeysRequest {}, BACKEND))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );

    // admin: everything.
    j.rotate_signing_key(with_key(pb::RotateSigningKeyRequest {}, ADMIN))
        .await
        .unwrap();
    admin
        .list_signing_keys(with_key(pb::ListSigningKeysRequest {}, ADMIN))
        .await
        .unwrap();
    c.create_new_session(with_key(new(), ADMIN)).await.unwrap();
}
