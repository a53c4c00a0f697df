//! The translation piece by piece: sorting requests, headers, errors,
//! envelopes and transcoding.

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::Method;
use http::header::HeaderMap;
use prost::Message;
use tonic::Code;

use super::codec::*;
use super::errors::*;
use super::request::*;
use super::stream::*;
use super::*;

fn headers(entries: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in entries {
        h.append(*k, v.parse().unwrap());
    }
    h
}

#[test]
fn requests_are_sorted_by_content_type() {
    let post = |entries: &[(&'static str, &str)]| classify(&Method::POST, &headers(entries), None);
    assert_eq!(
        post(&[("content-type", "application/proto")]),
        Kind::Unary(Codec::Proto)
    );
    assert_eq!(
        post(&[("content-type", "application/json; charset=utf-8")]),
        Kind::Unary(Codec::Json)
    );
    assert_eq!(
        post(&[("content-type", "Application/JSON")]),
        Kind::Unary(Codec::Json)
    );
    assert_eq!(
        post(&[("content-type", "application/connect+proto")]),
        Kind::Stream(Codec::Proto)
    );
    assert_eq!(
        post(&[("content-type", "application/connect+json")]),
        Kind::Stream(Codec::Json)
    );
    assert!(matches!(
        post(&[("content-type", "application/json; charset=latin1")]),
        Kind::Unsupported(_)
    ));
    assert!(matches!(
        post(&[("content-type", "application/connect+cbor")]),
        Kind::Unsupported(_)
    ));
    assert!(matches!(
        post(&[("content-type", "text/xml"), (PROTOCOL_VERSION, "1")]),
        Kind::Unsupported(_)
    ));
    // gRPC, gRPC-Web and unmarked others pass untouched.
    for ct in [
        "application/grpc",
        "application/grpc-web+proto",
        "text/plain",
    ] {
        assert_eq!(post(&[("content-type", ct)]), Kind::Other, "{ct}");
    }
    assert_eq!(post(&[]), Kind::Other);
    let get = |q| classify(&Method::GET, &HeaderMap::new(), q);
    assert_eq!(
        get(Some("encoding=json&message=%7B%7D&connect=v1")),
        Kind::Get
    );
    assert_eq!(get(None), Kind::Other);
}

#[test]
fn timeouts_become_grpc_timeouts() {
    let t = |v: &str| grpc_timeout(&headers(&[(TIMEOUT_MS, v)]));
    assert_eq!(t("1500").unwrap().unwrap(), "1500m");
    assert_eq!(t("99999999").unwrap().unwrap(), "99999999m");
    assert_eq!(t("9999999999").unwrap().unwrap(), "10000000S");
    for bad in ["0", "-5", "1.5", "12345678901", "", "soon"] {
        let status = t(bad).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
    }
    assert_eq!(grpc_timeout(&HeaderMap::new()).unwrap(), None);
}

#[test]
fn codes_map_to_the_protocols_http_statuses() {
    let cases = [
        (Code::Cancelled, "canceled", 499),
        (Code::Unknown, "unknown", 500),
        (Code::InvalidArgument, "invalid_argument", 400),
        (Code::DeadlineExceeded, "deadline_exceeded", 504),
        (Code::NotFound, "not_found", 404),
        (Code::AlreadyExists, "already_exists", 409),
        (Code::PermissionDenied, "permission_denied", 403),
        (Code::ResourceExhausted, "resource_exhausted", 429),
        (Code::FailedPrecondition, "failed_precondition", 400),
        (Code::Aborted, "aborted", 409),
        (Code::OutOfRange, "out_of_range", 400),
        (Code::Unimplemented, "unimplemented", 501),
        (Code::Internal, "internal", 500),
        (Code::Unavailable, "unavailable", 503),
        (Code::DataLoss, "data_loss", 500),
        (Code::Unauthenticated, "unauthenticated", 401),
    ];
    for (code, name, http) in cases {
        assert_eq!(code_name(code), name);
        assert_eq!(http_status(code).as_u16(), http, "{name}");
    }
}

#[test]
fn errors_keep_every_detail() {
    let pool = descriptors().unwrap();
    let status = crate::api::error::invalid("user_id", "must not be empty");
    let status = CallStatus::from(&status);
    let json = serde_json::to_value(error_json(Some(&pool), &status)).unwrap();
    assert_eq!(json["code"], "invalid_argument");
    assert_eq!(json["message"], "user_id: must not be empty");
    let details = json["details"].as_array().unwrap();
    let types: Vec<&str> = details
        .iter()
        .map(|d| d["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["google.rpc.ErrorInfo", "google.rpc.BadRequest"]);
    assert_eq!(details[0]["debug"]["reason"], "INVALID_ARGUMENT");
    assert_eq!(
        details[1]["debug"]["fieldViolations"][0]["field"],
        "user_id"
    );
    // The value is the detail itself, unpadded base64.
    let value = details[0]["value"].as_str().unwrap();
    assert!(!value.ends_with('='));
    let info =
        tonic_types::pb::ErrorInfo::decode(BASE64.decode(value).unwrap().as_slice()).unwrap();
    assert_eq!(info.domain, "sessiond");
}

#[test]
fn statuses_are_read_from_grpc_headers() {
    let status = crate::api::error::invalid("x", "100% wrong");
    let mut h = HeaderMap::new();
    status.add_header(&mut h).unwrap();
    let read = CallStatus::from_headers(&h).unwrap();
    assert_eq!(read.code, Code::InvalidArgument);
    assert_eq!(read.message, "x: 100% wrong");
    assert_eq!(read.details.len(), 2);
    assert_eq!(percent_decode(b"a%20b%zz%"), "a b%zz%");
    assert!(CallStatus::from_headers(&HeaderMap::new()).is_none());
}

#[test]
fn end_of_stream_carries_the_error_and_the_trailers() {
    let trailers = headers(&[("grpc-status", "0"), ("x-cost", "3"), ("x-cost", "4")]);
    let ok = CallStatus::new(Code::Ok, "");
    let frame = end_stream(None, Some(&ok), &trailers);
    assert_eq!(frame[0], FLAG_END_STREAM);
    let json: serde_json::Value = serde_json::from_slice(&frame[5..]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"metadata": {"x-cost": ["3", "4"]}})
    );
    let failed = CallStatus::new(Code::Unavailable, "later");
    let frame = end_stream(None, Some(&failed), &HeaderMap::new());
    let json: serde_json::Value = serde_json::from_slice(&frame[5..]).unwrap();
    assert_eq!(json["error"]["code"], "unavailable");
    assert_eq!(json["error"]["message"], "later");
    // Made here without details, it still carries ErrorInfo.
    assert_eq!(json["error"]["details"][0]["type"], "google.rpc.ErrorInfo");
}

#[test]
fn envelopes_are_taken_whole() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&envelope(0, b"abc"));
    buf.extend_from_slice(&envelope(2, b"de")[..4]);
    assert_eq!(
        take_envelope(&mut buf),
        Some((0, Bytes::from_static(b"abc")))
    );
    assert_eq!(take_envelope(&mut buf), None);
    buf.extend_from_slice(&[2, b'd', b'e']);
    assert_eq!(
        take_envelope(&mut buf),
        Some((2, Bytes::from_static(b"de")))
    );
    assert!(buf.is_empty());
}

#[test]
fn json_follows_the_protobuf_mapping() {
    let pool = descriptors().unwrap();
    let method = Shared {
        pool,
        max_message: 1024,
    }
    .method("/sessiond.v1.SessionService/CreateNewSession")
    .unwrap();
    let proto = json_to_proto(
        &method.input(),
        br#"{"userId": "alice", "accessTokenPayload": {"role": "admin"}}"#,
    )
    .unwrap();
    let request = crate::pb::CreateNewSessionRequest::decode(proto.as_slice()).unwrap();
    assert_eq!(request.user_id, "alice");
    // Unknown fields and trailing junk are named, not ignored.
    let status = json_to_proto(&method.input(), br#"{"userID": "alice"}"#).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("userID"), "{}", status.message());
    assert!(json_to_proto(&method.input(), b"{} {}").is_err());
    // An empty body is the empty message.
    assert!(json_to_proto(&method.input(), b"").unwrap().is_empty());
    // Nesting deep enough to exhaust a stack is bad input.
    let deep = format!(
        r#"{{"accessTokenPayload": {{"a": {}{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let status = json_to_proto(&method.input(), deep.as_bytes()).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}
