//! The Connect protocol, spoken by hand over HTTP/1.1 and HTTP/2 the way
//! `buf curl` and Connect clients speak it: unary calls in protobuf and
//! JSON, errors with their details, reflection as a Connect stream, and the
//! refusals of what is not served.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use prost::Message;
use serde_json::{Value, json};
use sessiond::config::ApiKey;
use sessiond::pb;
use tonic::Code;
use tonic_reflection::pb::v1 as reflection;

use crate::helpers::*;

const CREATE: &str = "/sessiond.v1.SessionService/CreateNewSession";
const GET: &str = "/sessiond.v1.SessionService/GetSession";
const REFLECT: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

async fn keyed_server() -> TestServer {
    TestServer::start_with(|c| c.api_keys = vec![ApiKey::admin("ops", API_KEY)]).await
}

/// An HTTP response: status, lowercased head, body (de-chunked).
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            (n.trim() == name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Reply { status, head, body }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = std::str::from_utf8(&raw[..line_end]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        raw = &raw[line_end + 2..];
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// One POST over a fresh HTTP/1.1 connection.
async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    parse_reply(&http1_exchange(addr, &req).await)
}

/// A unary Connect call in JSON, with the API key.
async fn call_json(addr: SocketAddr, path: &str, body: Value) -> Reply {
    post(
        addr,
        path,
        &[
            ("Content-Type", "application/json"),
            ("Connect-Protocol-Version", "1"),
            ("X-Api-Key", API_KEY),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

fn envelope(flags: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Splits a Connect stream into its envelopes.
fn envelopes(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

/// The details of a Connect error, decoded from their base64 values (not
/// from `debug`, which clients must not rely on).
fn error_info(error: &Value) -> tonic_types::pb::ErrorInfo {
    detail(error, "google.rpc.ErrorInfo")
}

fn bad_request_field(error: &Value) -> String {
    let bad: tonic_types::pb::BadRequest = detail(error, "google.rpc.BadRequest");
    bad.field_violations[0].field.clone()
}

fn detail<M: Message + Default>(error: &Value, type_name: &str) -> M {
    let details = error["details"].as_array().expect("details");
    let found = details
        .iter()
        .find(|d| d["type"] == type_name)
        .unwrap_or_else(|| panic!("no {type_name} in {error}"));
    let value = found["value"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(value.trim_end_matches('='))
        .unwrap();
    M::decode(bytes.as_slice()).unwrap()
}

#[tokio::test]
async fn unary_calls_in_protobuf_and_json() {
    let server = keyed_server().await;
    // Protobuf: create.
    let request = pb::CreateNewSessionRequest {
        user_id: "connect-proto".into(),
        access_token_payload: Some(obj(json!({"role": "admin"}))),
        ..Default::default()
    };
    let reply = post(
        server.addr,
        CREATE,
        &[
            ("Content-Type", "application/proto"),
            ("Connect-Protocol-Version", "1"),
            ("X-Api-Key", API_KEY),
        ],
        &request.encode_to_vec(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.header("content-type"), Some("application/proto"));
    let created = pb::CreateNewSessionResponse::decode(reply.body.as_slice()).unwrap();
    assert_eq!(created.session.as_ref().unwrap().user_id, "connect-proto");

    // JSON: get the session with the token it returned.
    let reply = call_json(
        server.addr,
        GET,
        json!({"accessToken": access(&created), "checkDatabase": true}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let got = reply.json();
    assert_eq!(got["session"]["sessionHandle"], handle(&created));
    assert_eq!(got["session"]["userId"], "connect-proto");
    assert_eq!(got["session"]["accessTokenPayload"]["role"], "admin");

    // JSON: create, then the gRPC client sees the session (one store).
    let reply = call_json(
        server.addr,
        CREATE,
        json!({"userId": "connect-json", "tenantId": "t1"}),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let created = reply.json();
    let token = created["accessToken"]["token"].as_str().unwrap();
    assert!(
        created["refreshToken"]["expiry"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let mut c = server.sessions().await;
    let verified = c
        .get_session(with_metadata(
            pb::GetSessionRequest {
                access_token: token.into(),
                check_database: true,
                ..Default::default()
            },
            &[("x-api-key", API_KEY)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.session.unwrap().tenant_id, "t1");

    // No connect-protocol-version and a charset: accepted leniently.
    let reply = post(
        server.addr,
        GET,
        &[
            ("Content-Type", "application/json; charset=utf-8"),
            ("X-Api-Key", API_KEY),
        ],
        json!({"accessToken": token}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );

    // Health answers Connect too, with no key.
    let reply = post(
        server.addr,
        "/grpc.health.v1.Health/Check",
        &[("Content-Type", "application/json")],
        b"{}",
    )
    .await;
    assert_eq!(reply.json(), json!({"status": "SERVING"}));

    // The calls ran through the same stack as gRPC ones: they are counted.
    let (_, _, metrics) = http_get(server.addr, "/metrics").await;
    let counted = |method: &str, code: &str| {
        metrics.lines().any(|l| {
            l.starts_with("sessiond_grpc_requests_total{")
                && l.contains(&format!("method=\"{method}\""))
                && l.contains(&format!("code=\"{code}\""))
        })
    };
    assert!(counted("CreateNewSession", "OK"), "{metrics}");
    assert!(counted("GetSession", "OK"), "{metrics}");
}

#[tokio::test]
async fn errors_keep_the_reason_and_field_a_grpc_client_sees() {
    let server = keyed_server().await;
    let mut c = server.sessions().await;

    // A reserved claim: the same status over gRPC and Connect.
    let grpc = assert_status(
        c.create_new_session(with_metadata(
            pb::CreateNewSessionRequest {
                user_id: "u".into(),
                access_token_payload: Some(obj(json!({"sub": "someone-else"}))),
                ..Default::default()
            },
            &[("x-api-key", API_KEY)],
        ))
        .await,
        Code::InvalidArgument,
        "PROTECTED_CLAIM",
    );
    let reply = call_json(
        server.addr,
        CREATE,
        json!({"userId": "u", "accessTokenPayload": {"sub": "someone-else"}}),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let error = reply.json();
    assert_eq!(error["code"], "invalid_argument");
    assert_eq!(error["message"], grpc.message());
    let info = error_info(&error);
    assert_eq!(info.reason, "PROTECTED_CLAIM");
    assert_eq!(info.domain, "sessiond");
    assert_eq!(info.metadata.get("claim").map(String::as_str), Some("sub"));
    assert_eq!(bad_request_field(&error), bad_field(&grpc));
    assert_eq!(bad_request_field(&error), "access_token_payload.sub");
    // The details are readable without decoding too.
    assert_eq!(error["details"][0]["debug"]["reason"], "PROTECTED_CLAIM");

    // A bad token: 401 UNAUTHORISED.
    let reply = call_json(server.addr, GET, json!({"accessToken": "not-a-jwt"})).await;
    assert_eq!(reply.status, 401);
    let error = reply.json();
    assert_eq!(error["code"], "unauthenticated");
    assert_eq!(error_info(&error).reason, "UNAUTHORISED");

    // No API key: 401 MISSING_CREDENTIALS, from the same authentication.
    let reply = post(
        server.addr,
        CREATE,
        &[("Content-Type", "application/json")],
        b"{\"userId\": \"u\"}",
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(error_info(&reply.json()).reason, "MISSING_CREDENTIALS");

    // A session that does not exist: 404 SESSION_NOT_FOUND.
    let reply = call_json(
        server.addr,
        "/sessiond.v1.SessionService/GetSessionInformation",
        json!({"sessionHandle": "6f1c2a0e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"}),
    )
    .await;
    assert_eq!(reply.status, 404);
    assert_eq!(error_info(&reply.json()).reason, "SESSION_NOT_FOUND");

    // JSON that does not fit the request type names the problem.
    for (body, names) in [
        (&b"{\"userID\": \"u\"}"[..], "userID"),
        (b"{\"userId\": 5}", "string"),
        (b"{\"userId\": \"u\"", "EOF"),
    ] {
        let reply = post(
            server.addr,
            CREATE,
            &[("Content-Type", "application/json"), ("X-Api-Key", API_KEY)],
            body,
        )
        .await;
        assert_eq!(reply.status, 400);
        let error = reply.json();
        assert_eq!(error["code"], "invalid_argument");
        assert_eq!(error_info(&error).reason, "INVALID_ARGUMENT");
        assert_eq!(bad_request_field(&error), "request");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(names), "{message}");
    }

    // Protobuf that does not decode: bad input, never INTERNAL.
    let reply = post(
        server.addr,
        CREATE,
        &[
            ("Content-Type", "application/proto"),
            ("X-Api-Key", API_KEY),
        ],
        &[0xff, 0xff, 0xff],
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(error_info(&reply.json()).reason, "INVALID_ARGUMENT");
}

#[tokio::test]
async fn a_connect_deadline_is_the_calls_deadline() {
    use crate::claims::{Provider, start_provider};
    let slow = start_provider(Provider {
        delay: Some(Duration::from_millis(1500)),
        ..Default::default()
    })
    .await;
    let server = TestServer::start_with(|c| {
        c.default_claim_provider = Some(format!("http://{slow}"));
        c.claim_provider_timeout = Duration::from_secs(5);
    })
    .await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    let started = std::time::Instant::now();
    let reply = post(
        server.addr,
        "/sessiond.v1.SessionService/FetchAndSetClaim",
        &[
            ("Content-Type", "application/json"),
            ("Connect-Timeout-Ms", "200"),
        ],
        json!({"sessionHandle": handle(&created), "claimKey": "slow"})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert!(started.elapsed() < Duration::from_millis(1200));
    assert_eq!(reply.status, 504);
    let error = reply.json();
    assert_eq!(error["code"], "deadline_exceeded");
    assert_eq!(error_info(&error).reason, "TIMEOUT");
}

#[tokio::test]
async fn bodies_over_the_message_limit_are_refused() {
    let server = TestServer::start_with(|c| c.limits.max_message_bytes = 64 * 1024).await;
    let big = json!({"userId": "x".repeat(100 * 1024)}).to_string();
    let check = |reply: Reply| {
        assert_eq!(reply.status, 400, "{}", reply.head);
        let error = reply.json();
        assert_eq!(error["code"], "out_of_range");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("too large"), "{message}");
        assert!(message.contains("65536"), "{message}");
    };
    // Announced by Content-Length: refused before it is read.
    check(
        post(
            server.addr,
            CREATE,
            &[("Content-Type", "application/json")],
            big.as_bytes(),
        )
        .await,
    );
    // Chunked, with no length announced: refused as it passes the limit.
    let mut req = format!(
        "POST {CREATE} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: application/proto\r\nTransfer-Encoding: chunked\r\n\r\n",
        server.addr
    )
    .into_bytes();
    for chunk in big.as_bytes().chunks(16 * 1024) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    check(parse_reply(&http1_exchange(server.addr, &req).await));
    // Under the limit, the same server answers.
    let reply = call_json(server.addr, "/grpc.health.v1.Health/Check", json!({})).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn unknown_methods_and_services_are_unimplemented() {
    let server = keyed_server().await;
    for (path, content_type) in [
        (
            "/sessiond.v1.SessionService/NoSuchMethod",
            "application/json",
        ),
        (
            "/sessiond.v1.SessionService/NoSuchMethod",
            "application/proto",
        ),
        ("/no.such.Service/Method", "application/json"),
        ("/no.such.Service/Method", "application/proto"),
    ] {
        let reply = post(
            server.addr,
            path,
            &[
                ("Content-Type", content_type),
                ("Connect-Protocol-Version", "1"),
                ("X-Api-Key", API_KEY),
            ],
            b"",
        )
        .await;
        assert_eq!(reply.status, 501, "{path} {content_type}: {}", reply.head);
        let error = reply.json();
        assert_eq!(error["code"], "unimplemented", "{path}");
        assert_eq!(
            error["message"],
            format!("sessiond does not serve the method `{path}`")
        );
        assert_eq!(error_info(&error).reason, "UNIMPLEMENTED");
    }
    // A stream to a path nothing serves ends with the same error.
    let reply = post(
        server.addr,
        "/no.such.Service/Stream",
        &[("Content-Type", "application/connect+proto")],
        &[],
    )
    .await;
    assert_eq!(reply.status, 200);
    let frames = envelopes(&reply.body);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, 2);
    let end: Value = serde_json::from_slice(&frames[0].1).unwrap();
    assert_eq!(end["error"]["code"], "unimplemented");
    assert_eq!(error_info(&end["error"]).reason, "UNIMPLEMENTED");
    // A JSON post that does not say it is Connect, to a path nothing
    // serves, is still a plain 404.
    let reply = post(
        server.addr,
        "/no/such/path",
        &[("Content-Type", "application/json")],
        b"{}",
    )
    .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body, b"not found\n");
}

#[tokio::test]
async fn what_is_not_served_is_refused_clearly() {
    let server = keyed_server().await;
    let health = "/grpc.health.v1.Health/Check";
    // A codec sessiond does not speak: 415, naming the ones it does.
    for content_type in [
        "application/connect+cbor",
        "application/json; charset=latin1",
    ] {
        let reply = post(
            server.addr,
            health,
            &[("Content-Type", content_type)],
            b"{}",
        )
        .await;
        assert_eq!(reply.status, 415, "{content_type}");
        assert!(
            reply
                .header("accept-post")
                .unwrap()
                .contains("application/proto")
        );
        let error = reply.json();
        assert_eq!(error["code"], "unimplemented");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("application/json")
        );
    }
    let reply = post(
        server.addr,
        health,
        &[
            ("Content-Type", "text/xml"),
            ("Connect-Protocol-Version", "1"),
        ],
        b"<x/>",
    )
    .await;
    assert_eq!(reply.status, 415);
    // Compression: unimplemented, naming the encoding.
    let reply = post(
        server.addr,
        health,
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ],
        b"\x1f\x8b",
    )
    .await;
    assert_eq!(reply.status, 501);
    assert!(reply.json()["message"].as_str().unwrap().contains("gzip"));
    // ... and in a stream, in its end-of-stream message.
    let reply = post(
        server.addr,
        REFLECT,
        &[
            ("Content-Type", "application/connect+proto"),
            ("Connect-Content-Encoding", "br"),
        ],
        &[],
    )
    .await;
    assert_eq!(reply.status, 200);
    let frames = envelopes(&reply.body);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, 2);
    let end: Value = serde_json::from_slice(&frames[0].1).unwrap();
    assert_eq!(end["error"]["code"], "unimplemented");
    assert_eq!(error_info(&end["error"]).reason, "UNIMPLEMENTED");
    // A malformed timeout or protocol version names the header.
    for (name, value) in [
        ("Connect-Timeout-Ms", "soon"),
        ("Connect-Protocol-Version", "2"),
    ] {
        let reply = post(
            server.addr,
            health,
            &[("Content-Type", "application/json"), (name, value)],
            b"{}",
        )
        .await;
        assert_eq!(reply.status, 400, "{name}");
        assert_eq!(bad_request_field(&reply.json()), name.to_lowercase());
    }
    // Connect GET: refused, pointing at POST.
    let request = format!(
        "GET {health}?connect=v1&encoding=json&message=%7B%7D HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    let reply = parse_reply(&http1_exchange(server.addr, request.as_bytes()).await);
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("post"));
    // A streaming method called as unary: told to stream.
    let reply = call_json(server.addr, REFLECT, json!({})).await;
    assert_eq!(reply.status, 501);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("application/connect+json")
    );
}

fn list_services() -> Vec<u8> {
    reflection::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            reflection::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    }
    .encode_to_vec()
}

fn file_containing(symbol: &str) -> Vec<u8> {
    reflection::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            reflection::server_reflection_request::MessageRequest::FileContainingSymbol(
                symbol.into(),
            ),
        ),
    }
    .encode_to_vec()
}

fn service_names(message: &[u8]) -> Vec<String> {
    use reflection::server_reflection_response::MessageResponse;
    let response = reflection::ServerReflectionResponse::decode(message).unwrap();
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

#[tokio::test]
async fn reflection_streams_over_http1() {
    let server = TestServer::start().await;
    // The whole request stream in one body (HTTP/1.1 is half duplex).
    let mut body = envelope(0, &list_services());
    body.extend_from_slice(&envelope(0, &file_containing("sessiond.v1.SessionService")));
    let reply = post(
        server.addr,
        REFLECT,
        &[
            ("Content-Type", "application/connect+proto"),
            ("Connect-Protocol-Version", "1"),
        ],
        &body,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("application/connect+proto")
    );
    let frames = envelopes(&reply.body);
    assert_eq!(frames.len(), 3, "two answers and the end of the stream");
    assert!(service_names(&frames[0].1).contains(&"sessiond.v1.SessionService".to_owned()));
    let file = reflection::ServerReflectionResponse::decode(frames[1].1.as_slice()).unwrap();
    assert!(matches!(
        file.message_response,
        Some(reflection::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
    ));
    assert_eq!(frames[2].0, 2);
    assert_eq!(
        serde_json::from_slice::<Value>(&frames[2].1).unwrap(),
        json!({})
    );

    // v1alpha, for older clients.
    let reply = post(
        server.addr,
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        &[("Content-Type", "application/connect+proto")],
        &envelope(0, &list_services()),
    )
    .await;
    let frames = envelopes(&reply.body);
    assert!(service_names(&frames[0].1).contains(&"grpc.health.v1.Health".to_owned()));
    assert_eq!(frames.last().unwrap().0, 2);

    // The same stream in JSON.
    let reply = post(
        server.addr,
        REFLECT,
        &[("Content-Type", "application/connect+json")],
        &envelope(0, br#"{"listServices": "*"}"#),
    )
    .await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/connect+json")
    );
    let frames = envelopes(&reply.body);
    let listed: Value = serde_json::from_slice(&frames[0].1).unwrap();
    let names: Vec<&str> = listed["listServicesResponse"]["service"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"sessiond.v1.JwtService"), "{listed}");

    // A bad envelope in a stream ends it with an error, not a hang.
    let mut body = envelope(0, br#"{"noSuchField": 1}"#);
    body.extend_from_slice(&envelope(0, br#"{"listServices": "*"}"#));
    let reply = post(
        server.addr,
        REFLECT,
        &[("Content-Type", "application/connect+json")],
        &body,
    )
    .await;
    assert_eq!(reply.status, 200);
    let frames = envelopes(&reply.body);
    let end: Value = serde_json::from_slice(&frames.last().unwrap().1).unwrap();
    assert_eq!(frames.last().unwrap().0, 2);
    assert_eq!(end["error"]["code"], "invalid_argument", "{end}");
    assert!(
        end["error"]["message"]
            .as_str()
            .unwrap()
            .contains("noSuchField")
    );
}

/// The next whole envelope of an HTTP/2 response body.
async fn next_envelope(body: &mut h2::RecvStream, buf: &mut BytesMut) -> (u8, Vec<u8>) {
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
            if buf.len() >= 5 + len {
                let frame = buf.split_to(5 + len);
                return (frame[0], frame[5..].to_vec());
            }
        }
        let data = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .expect("an envelope within 10 s")
            .expect("the stream goes on")
            .unwrap();
        let _ = body.flow_control().release_capacity(data.len());
        buf.extend_from_slice(&data);
    }
}

#[tokio::test]
async fn reflection_is_a_bidirectional_stream_over_http2() {
    let server = TestServer::start().await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{REFLECT}", server.addr))
        .header("content-type", "application/connect+proto")
        .header("connect-protocol-version", "1")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    // Each answer comes before the next request is sent, as buf curl
    // converses: the stream is full duplex.
    send.send_data(Bytes::from(envelope(0, &list_services())), false)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/connect+proto"
    );
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    let (flags, message) = next_envelope(&mut body, &mut buf).await;
    assert_eq!(flags, 0);
    assert!(service_names(&message).contains(&"sessiond.v1.UserSessionService".to_owned()));
    send.send_data(
        Bytes::from(envelope(0, &file_containing("sessiond.v1.JwtService"))),
        false,
    )
    .unwrap();
    let (flags, _) = next_envelope(&mut body, &mut buf).await;
    assert_eq!(flags, 0);
    send.send_data(Bytes::new(), true).unwrap();
    let (flags, end) = next_envelope(&mut body, &mut buf).await;
    assert_eq!(flags, 2);
    assert_eq!(serde_json::from_slice::<Value>(&end).unwrap(), json!({}));
}

#[tokio::test]
async fn browsers_may_call_over_connect_from_allowed_origins() {
    let server = TestServer::start_with(|c| {
        c.cors_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let preflight = format!(
        "OPTIONS /sessiond.v1.UserSessionService/GetUserSession HTTP/1.1\r\nHost: {}\r\n\
         Origin: https://app.example.com\r\nAccess-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: authorization,content-type,connect-protocol-version,connect-timeout-ms\r\n\
         Connection: close\r\n\r\n",
        server.addr
    );
    let reply = parse_reply(&http1_exchange(server.addr, preflight.as_bytes()).await);
    assert!(reply.status < 300, "{}", reply.head);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let allowed = reply.header("access-control-allow-headers").unwrap();
    for header in [
        "connect-protocol-version",
        "connect-timeout-ms",
        "content-type",
    ] {
        assert!(allowed.contains(header), "{allowed}");
    }
    let reply = post(
        server.addr,
        "/sessiond.v1.UserSessionService/GetUserSession",
        &[
            ("Origin", "https://app.example.com"),
            ("Content-Type", "application/json"),
            ("Connect-Protocol-Version", "1"),
            ("Authorization", "Bearer not-a-token"),
        ],
        br#"{"bucket": "BUCKET_PUBLIC"}"#,
    )
    .await;
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(reply.status, 401);
    assert_eq!(error_info(&reply.json()).reason, "UNAUTHORISED");
}
