//! The descriptor sessiond publishes for Envoy's ext_authz API
//! ([`crate::pb::ENVOY_AUTHZ_FILE_DESCRIPTOR_SET`]) against the types it
//! serves (`envoy-types`): each message read through the descriptor shows
//! every field in its place as JSON, JSON as grpcurl or `buf curl` sends it
//! decodes as the same `envoy-types` value, and the sets reflection
//! publishes resolve `Check` together (`envoy_reflection_tests` fetches
//! them through reflection itself).

// envoy-types marks fields Envoy still sends as deprecated; the descriptor
// must carry them, so these tests set them.
#![allow(deprecated)]

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;

use envoy_types::ext_authz::v3::pb::{
    CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue,
    HeaderValueOption, HttpResponse, HttpStatus, HttpStatusCode, OkHttpResponse, QueryParameter,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, EnvoyInternalAddress, HeaderMap, Metadata, Pipe, SocketAddress, address,
    envoy_internal_address, socket_address,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
use envoy_types::pb::google::protobuf::{Any, BoolValue, StringValue, Struct, Timestamp, Value};
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage};
use prost_types::FileDescriptorSet;
use serde_json::json;

/// The sets reflection is to publish, in the order `pb` documents.
pub(super) const SERVED_SETS: [&[u8]; 4] = [
    crate::pb::FILE_DESCRIPTOR_SET,
    tonic_types::pb::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    crate::pb::ENVOY_AUTHZ_FILE_DESCRIPTOR_SET,
];

/// A pool of the served sets, keeping the first copy of each file name as
/// reflection does.
fn served_pool() -> DescriptorPool {
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for set in SERVED_SETS {
        for file in FileDescriptorSet::decode(set).unwrap().file {
            if seen.insert(file.name().to_owned()) {
                files.push(file);
            }
        }
    }
    DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: files }).unwrap()
}

fn string_struct(fields: &[(&str, &str)]) -> Struct {
    let value = |s: &str| Value {
        kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
            s.into(),
        )),
    };
    Struct {
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).into(), value(v)))
            .collect(),
    }
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

/// A request with every field of the descriptor's subset set.
pub(super) fn full_check_request() -> CheckRequest {
    let socket = SocketAddress {
        protocol: socket_address::Protocol::Udp as i32,
        address: "203.0.113.7".into(),
        resolver_name: "custom".into(),
        ipv4_compat: true,
        network_namespace_filepath: "/run/netns/blue".into(),
        port_specifier: Some(socket_address::PortSpecifier::PortValue(54321)),
    };
    let http = attribute_context::HttpRequest {
        id: "req-1".into(),
        method: "POST".into(),
        headers: map(&[("authorization", "Bearer abc.def"), ("x-tenant", "public")]),
        header_map: Some(HeaderMap {
            headers: vec![HeaderValue {
                key: "x-raw".into(),
                value: String::new(),
                raw_value: b"raw\xff".to_vec(),
            }],
        }),
        path: "/api/items?page=2".into(),
        host: "api.example.com".into(),
        scheme: "https".into(),
        query: "page=2".into(),
        fragment: "top".into(),
        size: 42,
        protocol: "HTTP/2".into(),
        body: "{\"a\":1}".into(),
        raw_body: b"\x00\x01".to_vec(),
    };
    let typed = Any {
        type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
        value: StringValue {
            value: "typed".into(),
        }
        .encode_to_vec(),
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(socket)),
                }),
                service: "frontend".into(),
                labels: map(&[("app", "web")]),
                principal: "spiffe://example.org/web".into(),
                certificate: "-----BEGIN%20CERTIFICATE-----".into(),
            }),
            destination: Some(attribute_context::Peer {
                address: Some(Address {
                    address: Some(address::Address::Pipe(Pipe {
                        path: "/run/envoy.sock".into(),
                        mode: 0o600,
                    })),
                }),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                time: Some(Timestamp {
                    seconds: 1_767_323_045,
                    nanos: 6_000,
                }),
                http: Some(http),
            }),
            context_extensions: map(&[("check_database", "true")]),
            metadata_context: Some(Metadata {
                filter_metadata: HashMap::from([(
                    "envoy.filters.http.jwt_authn".into(),
                    string_struct(&[("sub", "u1")]),
                )]),
                typed_filter_metadata: HashMap::from([("typed.filter".into(), typed)]),
            }),
            route_metadata_context: Some(Metadata {
                filter_metadata: HashMap::from([(
                    "sessiond".into(),
                    string_struct(&[("tenant", "public")]),
                )]),
                typed_filter_metadata: HashMap::new(),
            }),
            tls_session: Some(attribute_context::TlsSession {
                sni: "api.example.com".into(),
            }),
        }),
    }
}

/// [`full_check_request`] in the protobuf JSON mapping (camelCase names).
pub(super) fn full_check_request_json() -> serde_json::Value {
    json!({
        "attributes": {
            "source": {
                "address": {"socketAddress": {
                    "protocol": "UDP",
                    "address": "203.0.113.7",
                    "portValue": 54321,
                    "resolverName": "custom",
                    "ipv4Compat": true,
                    "networkNamespaceFilepath": "/run/netns/blue"
                }},
                "service": "frontend",
                "labels": {"app": "web"},
                "principal": "spiffe://example.org/web",
                "certificate": "-----BEGIN%20CERTIFICATE-----"
            },
            "destination": {"address": {"pipe": {"path": "/run/envoy.sock", "mode": 384}}},
            "request": {
                "time": "2026-01-02T03:04:05.000006Z",
                "http": {
                    "id": "req-1",
                    "method": "POST",
                    "headers": {"authorization": "Bearer abc.def", "x-tenant": "public"},
                    "headerMap": {"headers": [{"key": "x-raw", "rawValue": "cmF3/w=="}]},
                    "path": "/api/items?page=2",
                    "host": "api.example.com",
                    "scheme": "https",
                    "query": "page=2",
                    "fragment": "top",
                    "size": "42",
                    "protocol": "HTTP/2",
                    "body": "{\"a\":1}",
                    "rawBody": "AAE="
                }
            },
            "contextExtensions": {"check_database": "true"},
            "metadataContext": {
                "filterMetadata": {"envoy.filters.http.jwt_authn": {"sub": "u1"}},
                "typedFilterMetadata": {"typed.filter": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": "typed"
                }}
            },
            "routeMetadataContext": {"filterMetadata": {"sessiond": {"tenant": "public"}}},
            "tlsSession": {"sni": "api.example.com"}
        }
    })
}

/// Fails on any field the descriptor does not know (prost-reflect keeps
/// those aside, and JSON would silently lose them).
fn assert_all_fields_known(message: &DynamicMessage) {
    let name = message.descriptor().full_name().to_owned();
    assert_eq!(
        message.unknown_fields().count(),
        0,
        "unknown field in {name}"
    );
    for (_, value) in message.fields() {
        let mut values = vec![value];
        if let Some(list) = value.as_list() {
            values = list.iter().collect();
        } else if let Some(map) = value.as_map() {
            values = map.values().collect();
        }
        for nested in values.into_iter().filter_map(|v| v.as_message()) {
            assert_all_fields_known(nested);
        }
    }
}

/// `value` (an envoy-types message) read through the published descriptor
/// is `json`, and `json` read through it decodes as `value` again.
fn assert_both_ways<T: Message + Default + PartialEq + Debug>(
    full_name: &str,
    value: &T,
    json: serde_json::Value,
) -> serde_json::Value {
    let descriptor = served_pool().get_message_by_name(full_name).unwrap();

    let read =
        DynamicMessage::decode(descriptor.clone(), value.encode_to_vec().as_slice()).unwrap();
    assert_all_fields_known(&read);
    let seen = serde_json::to_value(&read).unwrap();
    assert_eq!(seen, json, "envoy-types bytes read as JSON");
    assert_eq!(T::decode(read.encode_to_vec().as_slice()).unwrap(), *value);

    let sent = DynamicMessage::deserialize(descriptor, json).unwrap();
    let decoded = T::decode(sent.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, *value, "JSON decoded by envoy-types");
    seen
}

#[test]
fn check_request_reads_the_same_through_the_descriptor_and_envoy_types() {
    let json = assert_both_ways(
        "envoy.service.auth.v3.CheckRequest",
        &full_check_request(),
        full_check_request_json(),
    );
    let attributes = &json["attributes"];
    let http = &attributes["request"]["http"];
    assert_eq!(http["headers"]["authorization"], "Bearer abc.def");
    assert_eq!(http["method"], "POST");
    assert_eq!(attributes["contextExtensions"]["check_database"], "true");
    assert_eq!(attributes["tlsSession"]["sni"], "api.example.com");
    assert_eq!(
        attributes["source"]["address"]["socketAddress"]["portValue"],
        54321
    );
}

#[test]
fn check_request_json_with_proto_field_names_decodes_in_envoy_types() {
    let descriptor = served_pool()
        .get_message_by_name("envoy.service.auth.v3.CheckRequest")
        .unwrap();
    let sent = json!({"attributes": {
        "source": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 443}}},
        "request": {"http": {
            "headers": {"authorization": "Bearer t"},
            "header_map": {"headers": [{"key": "k", "raw_value": "dg=="}]},
            "raw_body": "AAE="
        }},
        "context_extensions": {"check_database": "false"},
        "route_metadata_context": {"filter_metadata": {"f": {"k": "v"}}},
        "tls_session": {"sni": "sni.example"}
    }});
    let message = DynamicMessage::deserialize(descriptor, sent).unwrap();
    let request = CheckRequest::decode(message.encode_to_vec().as_slice()).unwrap();

    let attributes = request.attributes.unwrap();
    let Some(address::Address::SocketAddress(socket)) =
        attributes.source.unwrap().address.unwrap().address
    else {
        panic!("no socket address")
    };
    assert_eq!(socket.address, "10.0.0.1");
    assert_eq!(
        socket.port_specifier,
        Some(socket_address::PortSpecifier::PortValue(443))
    );
    let http = attributes.request.unwrap().http.unwrap();
    assert_eq!(http.headers["authorization"], "Bearer t");
    assert_eq!(http.header_map.unwrap().headers[0].raw_value, b"v");
    assert_eq!(http.raw_body, b"\x00\x01");
    assert_eq!(attributes.context_extensions["check_database"], "false");
    assert_eq!(
        attributes.route_metadata_context.unwrap().filter_metadata["f"],
        string_struct(&[("k", "v")])
    );
    assert_eq!(attributes.tls_session.unwrap().sni, "sni.example");
}

#[test]
fn every_kind_of_address_reads_the_same_both_ways() {
    let socket = SocketAddress {
        address: "::1".into(),
        port_specifier: Some(socket_address::PortSpecifier::NamedPort("https".into())),
        ..Default::default()
    };
    let internal = EnvoyInternalAddress {
        endpoint_id: "ep-1".into(),
        address_name_specifier: Some(
            envoy_internal_address::AddressNameSpecifier::ServerListenerName("inner".into()),
        ),
    };
    let cases = [
        (
            address::Address::SocketAddress(socket),
            json!({"socketAddress": {"address": "::1", "namedPort": "https"}}),
        ),
        (
            address::Address::Pipe(Pipe {
                path: "@abstract".into(),
                mode: 0,
            }),
            json!({"pipe": {"path": "@abstract"}}),
        ),
        (
            address::Address::EnvoyInternalAddress(internal),
            json!({"envoyInternalAddress": {"serverListenerName": "inner", "endpointId": "ep-1"}}),
        ),
    ];
    for (variant, json) in cases {
        let value = Address {
            address: Some(variant),
        };
        assert_both_ways("envoy.config.core.v3.Address", &value, json);
    }
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: action as i32,
        keep_empty_value: false,
    }
}

#[test]
fn ok_response_reads_the_same_both_ways() {
    let mut kept = header("x-empty", "", HeaderAppendAction::AddIfAbsent);
    kept.keep_empty_value = true;
    kept.append = Some(BoolValue { value: false });
    let response = CheckResponse {
        status: Some(Status {
            code: 0,
            message: String::new(),
            details: Vec::new(),
        }),
        dynamic_metadata: Some(string_struct(&[("session_handle", "h-1")])),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![
                header(
                    "x-user-id",
                    "u1",
                    HeaderAppendAction::OverwriteIfExistsOrAdd,
                ),
                kept,
            ],
            headers_to_remove: vec!["authorization".into()],
            dynamic_metadata: Some(string_struct(&[("old", "style")])),
            response_headers_to_add: vec![header(
                "x-session",
                "refreshed",
                HeaderAppendAction::AppendIfExistsOrAdd,
            )],
            query_parameters_to_set: vec![QueryParameter {
                key: "tenant".into(),
                value: "public".into(),
            }],
            query_parameters_to_remove: vec!["token".into()],
        })),
    };
    let json = assert_both_ways(
        "envoy.service.auth.v3.CheckResponse",
        &response,
        json!({
            "status": {},
            "dynamicMetadata": {"session_handle": "h-1"},
            "okResponse": {
                "headers": [
                    {
                        "header": {"key": "x-user-id", "value": "u1"},
                        "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"
                    },
                    {
                        "header": {"key": "x-empty"},
                        "append": false,
                        "appendAction": "ADD_IF_ABSENT",
                        "keepEmptyValue": true
                    }
                ],
                "headersToRemove": ["authorization"],
                "dynamicMetadata": {"old": "style"},
                "responseHeadersToAdd": [{"header": {"key": "x-session", "value": "refreshed"}}],
                "queryParametersToSet": [{"key": "tenant", "value": "public"}],
                "queryParametersToRemove": ["token"]
            }
        }),
    );
    // Code 0 (OK) is the default, so JSON leaves it out; the status is there.
    assert_eq!(json["status"], json!({}));
}

fn denied(status: Status, http: HttpStatusCode, body: &str) -> CheckResponse {
    CheckResponse {
        status: Some(status),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers: vec![header(
                "www-authenticate",
                "Bearer",
                HeaderAppendAction::OverwriteIfExistsOrAdd,
            )],
            body: body.into(),
        })),
    }
}

#[test]
fn unauthenticated_denial_reads_the_same_both_ways() {
    let status = Status {
        code: tonic::Code::Unauthenticated as i32,
        message: "try refresh token".into(),
        details: Vec::new(),
    };
    let response = denied(
        status,
        HttpStatusCode::Unauthorized,
        "{\"error\":\"expired\"}",
    );
    assert_both_ways(
        "envoy.service.auth.v3.CheckResponse",
        &response,
        json!({
            "status": {"code": 16, "message": "try refresh token"},
            "deniedResponse": {
                "status": {"code": "Unauthorized"},
                "headers": [{
                    "header": {"key": "www-authenticate", "value": "Bearer"},
                    "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"
                }],
                "body": "{\"error\":\"expired\"}"
            }
        }),
    );
}

#[test]
fn permission_denial_with_details_reads_the_same_both_ways() {
    // The details resolve through tonic-types' descriptors, which reflection
    // publishes beside the Envoy set.
    let info = tonic_types::pb::ErrorInfo {
        reason: "SESSION_REVOKED".into(),
        domain: "sessiond".into(),
        metadata: HashMap::new(),
    };
    let status = Status {
        code: tonic::Code::PermissionDenied as i32,
        message: "session revoked".into(),
        details: vec![Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
            value: info.encode_to_vec(),
        }],
    };
    let mut response = denied(status, HttpStatusCode::Forbidden, "");
    // The same fields go out as an error response (tag 5).
    let Some(HttpResponse::DeniedResponse(body)) = response.http_response.take() else {
        unreachable!()
    };
    for (variant, key) in [
        (HttpResponse::DeniedResponse(body.clone()), "deniedResponse"),
        (HttpResponse::ErrorResponse(body.clone()), "errorResponse"),
    ] {
        response.http_response = Some(variant);
        assert_both_ways(
            "envoy.service.auth.v3.CheckResponse",
            &response,
            json!({
                "status": {
                    "code": 7,
                    "message": "session revoked",
                    "details": [{
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "SESSION_REVOKED",
                        "domain": "sessiond"
                    }]
                },
                key: {
                    "status": {"code": "Forbidden"},
                    "headers": [{
                        "header": {"key": "www-authenticate", "value": "Bearer"},
                        "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"
                    }]
                }
            }),
        );
    }
}

#[test]
fn the_served_sets_resolve_check() {
    let pool = served_pool();
    let service = pool
        .get_service_by_name("envoy.service.auth.v3.Authorization")
        .unwrap();
    let methods: Vec<_> = service.methods().collect();
    assert_eq!(methods.len(), 1);
    let check = &methods[0];
    assert_eq!(check.name(), "Check");
    assert_eq!(
        check.input().full_name(),
        "envoy.service.auth.v3.CheckRequest"
    );
    assert_eq!(
        check.output().full_name(),
        "envoy.service.auth.v3.CheckResponse"
    );
    assert!(!check.is_client_streaming() && !check.is_server_streaming());
}

#[test]
fn google_rpc_status_comes_from_the_tonic_types_file() {
    let envoy = FileDescriptorSet::decode(crate::pb::ENVOY_AUTHZ_FILE_DESCRIPTOR_SET).unwrap();
    let names: Vec<&str> = envoy.file.iter().map(|f| f.name()).collect();
    assert!(!names.contains(&"google/rpc/status.proto"), "{names:?}");
    let external_auth = envoy
        .file
        .iter()
        .find(|f| f.name() == "envoy/service/auth/v3/external_auth.proto")
        .unwrap();
    assert!(external_auth.dependency.iter().any(|d| d == "status.proto"));

    let status = served_pool()
        .get_message_by_name("google.rpc.Status")
        .unwrap();
    assert_eq!(status.parent_file().name(), "status.proto");
    let fields: Vec<_> = status
        .fields()
        .map(|f| {
            (
                f.number(),
                f.name().to_owned(),
                format!("{:?}", f.kind()),
                f.is_list(),
            )
        })
        .collect();
    assert_eq!(
        fields,
        [
            (1, "code".to_owned(), "int32".to_owned(), false),
            (2, "message".to_owned(), "string".to_owned(), false),
            (
                3,
                "details".to_owned(),
                "google.protobuf.Any".to_owned(),
                true
            ),
        ]
    );
}
