//! The gateway examples in `deploy/envoy/` and `deploy/istio/`, kept valid
//! without an Envoy or Istio binary (neither installs here).
//!
//! `envoy.yaml` is read the way Envoy reads a bootstrap: YAML to JSON, then
//! the protobuf JSON mapping into `envoy.config.bootstrap.v3.Bootstrap`,
//! with unknown fields refused and every `@type` resolved, then the
//! `validate` rules of the fields (a subset of them: required messages and
//! oneofs, string and list lengths, enum values, number and duration
//! bounds) and no deprecated field. The schema is Envoy's own: the v3
//! `.proto` files that the `envoy-types` crate ships, compiled here with
//! protox. Then the links between its parts, and, for each route, the Check
//! that Envoy would send, sent to a real sessiond, whose answer must be the
//! one the route's comment promises.
//!
//! The Istio files are checked for shape against the fields of Istio's API,
//! and the HTTP providers' checks are made against a real sessiond.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value as Field,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sessiond::config::ApiKey;
use sessiond::pb;
use tonic::Code;

use crate::helpers::*;

const ENVOY_YAML: &str = "deploy/envoy/envoy.yaml";
const MESH_CONFIG_YAML: &str = "deploy/istio/mesh-config.yaml";
const POLICY_YAML: &str = "deploy/istio/authorization-policy.yaml";

/// The placeholder that the examples ask operators to replace (with
/// `envsubst`) by a `verify`-scoped API key.
const KEY_PLACEHOLDER: &str = "${SESSIOND_VERIFY_KEY}";
const VERIFY_KEY: &str = "verify-key-for-the-gateway-examples";

/// The Envoy messages the example names, directly or in an `@type`;
/// protox adds what they import.
const ENVOY_FILES: [&str; 6] = [
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
];

/// The directories of envoy-types' `proto/` that hold import roots.
const PROTO_ROOTS: [&str; 7] = [
    "data-plane-api",
    "xds",
    "protoc-gen-validate",
    "googleapis",
    "cel-spec/proto",
    "opentelemetry-proto",
    "client_model",
];

const EXT_AUTHZ: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const EXT_AUTHZ_PER_ROUTE: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const IDENTITY_HEADERS: [&str; 3] = ["x-session-handle", "x-user-id", "x-tenant-id"];

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `proto/` directory of the envoy-types crate this build uses.
fn envoy_types_protos() -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
    let package = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types is a dependency");
    let manifest = Path::new(package["manifest_path"].as_str().unwrap());
    manifest.parent().unwrap().join("proto")
}

/// Envoy's v3 API, compiled from envoy-types' `.proto` files (once per run).
fn envoy_api() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let root = envoy_types_protos();
        let mut compiler = protox::Compiler::new(PROTO_ROOTS.map(|d| root.join(d)))
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        compiler.include_imports(true);
        compiler
            .open_files(ENVOY_FILES)
            .unwrap_or_else(|e| panic!("compiling Envoy's API: {e}"));
        compiler.descriptor_pool()
    })
}

fn message(name: &str) -> MessageDescriptor {
    envoy_api()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is not in Envoy's API"))
}

/// Reads `yaml` as Envoy reads its bootstrap, and returns it in canonical
/// protobuf JSON (proto field names, every `Any` with its `@type`), or
/// every problem found.
fn load_bootstrap(yaml: &str) -> Result<Value, String> {
    let json: Value = serde_norway::from_str(yaml).map_err(|e| format!("YAML: {e}"))?;
    let bootstrap =
        DynamicMessage::deserialize(message("envoy.config.bootstrap.v3.Bootstrap"), json)
            .map_err(|e| format!("not an envoy.config.bootstrap.v3.Bootstrap: {e}"))?;
    let mut problems = Vec::new();
    validate(&bootstrap, "", &mut problems);
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    // envoy-types' generated structs read it too.
    bootstrap
        .transcode_to::<Bootstrap>()
        .map_err(|e| format!("envoy-types' Bootstrap: {e}"))?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    Ok(bootstrap
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap())
}

/// Checks `message` and everything under it (inside `Any`s too) against
/// the fields' `validate` rules; a subset of protoc-gen-validate's rules,
/// those this kind of configuration meets.
fn validate(message: &DynamicMessage, path: &str, problems: &mut Vec<String>) {
    let pool = envoy_api();
    let rules = pool.get_extension_by_name("validate.rules").unwrap();
    let required = pool.get_extension_by_name("validate.required").unwrap();
    let descriptor = message.descriptor();
    for oneof in descriptor.oneofs().filter(|o| !o.is_synthetic()) {
        let must = oneof.options().get_extension(&required).as_bool() == Some(true);
        if must && !oneof.fields().any(|f| message.has_field(&f)) {
            problems.push(format!("{path}: one of `{}` is required", oneof.name()));
        }
    }
    for field in descriptor.fields() {
        let at = if path.is_empty() {
            field.name().to_owned()
        } else {
            format!("{path}.{}", field.name())
        };
        let set = message.has_field(&field);
        let options = field.options();
        if set
            && options
                .get_field_by_name("deprecated")
                .and_then(|v| v.as_bool())
                == Some(true)
        {
            problems.push(format!("{at}: deprecated"));
        }
        // Rules of an unset oneof member do not apply.
        let applies = set || field.containing_oneof().is_none();
        if applies
            && options.has_extension(&rules)
            && let Some(field_rules) = options.get_extension(&rules).as_message()
        {
            check_rules(message, &field, field_rules, &at, problems);
        }
        if !set {
            continue;
        }
        match &*message.get_field(&field) {
            Field::Message(m) => visit(m, &at, problems),
            Field::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Field::Message(m) = item {
                        visit(m, &format!("{at}[{i}]"), problems);
                    }
                }
            }
            Field::Map(entries) => {
                for (key, value) in entries {
                    if let Field::Message(m) = value {
                        visit(m, &format!("{at}[{key:?}]"), problems);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Validates `message`, or the message packed in it when it is an `Any`.
fn visit(message: &DynamicMessage, path: &str, problems: &mut Vec<String>) {
    if message.descriptor().full_name() != "google.protobuf.Any" {
        return validate(message, path, problems);
    }
    let type_url = message.get_field_by_name("type_url").unwrap();
    let type_url = type_url.as_str().unwrap_or_default();
    let name = type_url.rsplit('/').next().unwrap_or_default();
    let Some(descriptor) = envoy_api().get_message_by_name(name) else {
        return problems.push(format!("{path}: unknown type {type_url}"));
    };
    let value = message.get_field_by_name("value").unwrap();
    match DynamicMessage::decode(descriptor, value.as_bytes().unwrap().clone()) {
        Ok(inner) => validate(&inner, &format!("{path}({name})"), problems),
        Err(e) => problems.push(format!("{path}: {e}")),
    }
}

/// One field's `validate.FieldRules`.
fn check_rules(
    message: &DynamicMessage,
    field: &FieldDescriptor,
    rules: &DynamicMessage,
    at: &str,
    problems: &mut Vec<String>,
) {
    let value = message.get_field(field);
    let rule = |kind: &str, name: &str| -> Option<Field> {
        let kind_rules = rules.get_field_by_name(kind)?;
        let kind_rules = kind_rules.as_message()?;
        if !rules.has_field_by_name(kind) {
            return None;
        }
        kind_rules
            .has_field_by_name(name)
            .then(|| kind_rules.get_field_by_name(name).unwrap().into_owned())
    };
    let mut fail = |what: String| problems.push(format!("{at}: {what}"));

    if rule("message", "required").and_then(|v| v.as_bool()) == Some(true)
        && !message.has_field(field)
    {
        fail("is required".into());
    }
    // Sizes: (rule kind, rule, the value's size, what is counted).
    let sizes = match &*value {
        Field::String(s) => vec![
            ("string", "min_len", s.chars().count(), "characters"),
            ("string", "min_bytes", s.len(), "bytes"),
            ("string", "max_bytes", s.len(), "bytes"),
        ],
        Field::List(items) => vec![("repeated", "min_items", items.len(), "items")],
        Field::Map(entries) => vec![("map", "min_pairs", entries.len(), "entries")],
        _ => vec![],
    };
    for (kind, name, size, what) in sizes {
        let Some(n) = rule(kind, name).and_then(|v| v.as_u64()) else {
            continue;
        };
        let size = size as u64;
        if (name.starts_with("min") && size < n) || (name.starts_with("max") && size > n) {
            fail(format!("{name} {n} {what}, has {size}"));
        }
    }
    if let (Field::EnumNumber(n), Kind::Enum(e)) = (&*value, field.kind())
        && rule("enum", "defined_only").and_then(|v| v.as_bool()) == Some(true)
        && e.get_value(*n).is_none()
    {
        fail(format!("{n} is not a value of {}", e.full_name()));
    }
    let number = match &*value {
        Field::U32(n) => Some((i128::from(*n), "uint32")),
        Field::I32(n) => Some((i128::from(*n), "int32")),
        Field::U64(n) => Some((i128::from(*n), "uint64")),
        Field::I64(n) => Some((i128::from(*n), "int64")),
        _ => None,
    };
    if let Some((n, kind)) = number {
        let bound = |name| {
            rule(kind, name).and_then(|v| match v {
                Field::U32(b) => Some(i128::from(b)),
                Field::I32(b) => Some(i128::from(b)),
                Field::U64(b) => Some(i128::from(b)),
                Field::I64(b) => Some(i128::from(b)),
                _ => None,
            })
        };
        let bad = bound("gt").is_some_and(|b| n <= b)
            || bound("gte").is_some_and(|b| n < b)
            || bound("lt").is_some_and(|b| n >= b)
            || bound("lte").is_some_and(|b| n > b);
        if bad {
            fail(format!("{n} is out of range"));
        }
    }
    if let Field::Message(d) = &*value
        && d.descriptor().full_name() == "google.protobuf.Duration"
        && message.has_field(field)
    {
        let nanos = |m: &DynamicMessage| {
            let s = m.get_field_by_name("seconds").unwrap().as_i64().unwrap();
            let n = m.get_field_by_name("nanos").unwrap().as_i32().unwrap();
            i128::from(s) * 1_000_000_000 + i128::from(n)
        };
        let n = nanos(d);
        let bound = |name| rule("duration", name).map(|v| nanos(v.as_message().unwrap()));
        let bad = bound("gt").is_some_and(|b| n <= b)
            || bound("gte").is_some_and(|b| n < b)
            || bound("lt").is_some_and(|b| n >= b)
            || bound("lte").is_some_and(|b| n > b);
        if bad {
            fail("duration out of range".into());
        }
    }
}

/// `text` with the commented block between the two marker lines
/// (`# ---- TLS to sessiond: from here ----` ... `to here ----`)
/// uncommented.
fn uncomment_tls(text: &str) -> String {
    let mut inside = false;
    let mut found = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line
            .trim_start()
            .starts_with("# ---- TLS to sessiond: from here")
        {
            inside = true;
            found = true;
            continue;
        }
        if line
            .trim_start()
            .starts_with("# ---- TLS to sessiond: to here")
        {
            inside = false;
            continue;
        }
        if inside {
            let indent = line.len() - line.trim_start().len();
            let rest = line.trim_start();
            let rest = rest
                .strip_prefix("# ")
                .unwrap_or_else(|| panic!("not commented: {line}"));
            out.push(format!("{}{rest}", " ".repeat(indent)));
        } else {
            out.push(line.to_owned());
        }
    }
    assert!(found && !inside, "the TLS block's marker lines");
    out.join("\n")
}

/// The `typed_config` of an `@type`, checked.
fn typed<'a>(config: &'a Value, type_name: &str) -> &'a Value {
    assert_eq!(
        config["@type"],
        format!("type.googleapis.com/{type_name}"),
        "{config}"
    );
    config
}

/// What the example configures, as the checks below need it.
struct Example {
    bootstrap: Value,
    ext_authz: Value,
    ext_authz_filter: String,
    routes: Vec<Value>,
}

impl Example {
    fn load(text: &str) -> Self {
        let bootstrap = load_bootstrap(text).unwrap_or_else(|e| panic!("{ENVOY_YAML}:\n{e}"));
        let listeners = bootstrap["static_resources"]["listeners"]
            .as_array()
            .unwrap();
        assert_eq!(listeners.len(), 1);
        let filters = listeners[0]["filter_chains"][0]["filters"]
            .as_array()
            .unwrap();
        let hcm = typed(
            &filters[0]["typed_config"],
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        );
        let http_filters = hcm["http_filters"].as_array().unwrap();
        let last = &http_filters.last().unwrap()["typed_config"];
        typed(last, "envoy.extensions.filters.http.router.v3.Router");
        let authz: Vec<_> = http_filters
            .iter()
            .filter(|f| f["typed_config"]["@type"] == format!("type.googleapis.com/{EXT_AUTHZ}"))
            .collect();
        assert_eq!(authz.len(), 1, "one ext_authz filter");
        let routes = hcm["route_config"]["virtual_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|vh| {
                // Header changes of a virtual host apply after ext_authz: one
                // that removed the identity headers would remove sessiond's.
                let removed = vh["request_headers_to_remove"].as_array();
                for h in removed.into_iter().flatten() {
                    assert!(!IDENTITY_HEADERS.contains(&h.as_str().unwrap()), "{vh}");
                }
                assert!(
                    vh.get("typed_per_filter_config").is_none(),
                    "per-route settings only, so each route says its policy"
                );
                vh["routes"].as_array().unwrap().clone()
            })
            .collect();
        Self {
            ext_authz: authz[0]["typed_config"].clone(),
            ext_authz_filter: authz[0]["name"].as_str().unwrap().to_owned(),
            routes,
            bootstrap,
        }
    }

    fn cluster(&self, name: &str) -> &Value {
        self.bootstrap["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }

    /// The route's ExtAuthzPerRoute, if it has one.
    fn per_route(&self, route: &Value) -> Option<Value> {
        let configs = route.get("typed_per_filter_config")?.as_object()?;
        for (name, config) in configs {
            assert_eq!(
                name, &self.ext_authz_filter,
                "a per-route config for a filter that is not there"
            );
            typed(config, EXT_AUTHZ_PER_ROUTE);
        }
        configs.get(&self.ext_authz_filter).cloned()
    }
}

/// A route's policy, as sessiond reads it: checked for what sessiond
/// accepts, returned as the Check's context_extensions.
fn context_extensions(per_route: Option<&Value>) -> BTreeMap<String, String> {
    let Some(extensions) = per_route.and_then(|c| c["check_settings"].get("context_extensions"))
    else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for (key, value) in extensions.as_object().unwrap() {
        let value = value.as_str().expect("context_extensions are strings");
        match key.as_str() {
            "check_database" => assert!(["true", "false"].contains(&value), "{value}"),
            "claim_validators" => {
                let items: Vec<Value> = serde_json::from_str(value)
                    .unwrap_or_else(|e| panic!("claim_validators is not JSON: {e}"));
                assert!(!items.is_empty());
                for item in &items {
                    assert!(
                        item.get("claimKey").or(item.get("claim_key")).is_some(),
                        "a validator names its claim: {item}"
                    );
                }
            }
            other => panic!("sessiond reads no context extension {other:?}"),
        }
        out.insert(key.clone(), value.to_owned());
    }
    out
}

#[test]
fn the_envoy_example_is_a_valid_bootstrap_whose_parts_fit_together() {
    let text = read(ENVOY_YAML);
    let example = Example::load(&text);
    let authz = typed(&example.ext_authz, EXT_AUTHZ);
    assert_eq!(authz["transport_api_version"], "V3");
    assert_eq!(authz.get("failure_mode_allow"), None, "false (the default)");
    assert_eq!(authz.get("with_request_body"), None);
    let grpc = &authz["grpc_service"];
    let metadata = grpc["initial_metadata"].as_array().unwrap();
    assert_eq!(
        metadata.as_slice(),
        [json!({"key": "x-api-key", "value": KEY_PLACEHOLDER})]
    );

    // The authorization cluster: sessiond's port, over HTTP/2.
    let cluster = example.cluster(grpc["envoy_grpc"]["cluster_name"].as_str().unwrap());
    let options = typed(
        &cluster["typed_extension_protocol_options"][HTTP_PROTOCOL_OPTIONS],
        HTTP_PROTOCOL_OPTIONS,
    );
    assert!(
        options["explicit_http_config"]
            .get("http2_protocol_options")
            .is_some(),
        "gRPC needs HTTP/2: {options}"
    );
    let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(address["address"], "sessiond");
    assert_eq!(address["port_value"], 50051);
    assert!(
        cluster["health_checks"][0]
            .get("grpc_health_check")
            .is_some()
    );

    // Every route goes to a cluster that exists, with a policy sessiond
    // accepts; a route without the check cannot pass forged identities on.
    let mut names = Vec::new();
    for route in &example.routes {
        example.cluster(route["route"]["cluster"].as_str().unwrap());
        let per_route = example.per_route(route);
        context_extensions(per_route.as_ref());
        if per_route.as_ref().is_some_and(|c| c["disabled"] == true) {
            let removed = route["request_headers_to_remove"].as_array().unwrap();
            for h in IDENTITY_HEADERS {
                assert!(removed.contains(&json!(h)), "{route}");
            }
        }
        names.push(route["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(names, ["public", "account", "admin", "default"]);

    // The commented TLS block is valid where it stands.
    let tls = Example::load(&uncomment_tls(&text));
    let socket = &tls.cluster("sessiond")["transport_socket"];
    let context = typed(
        &socket["typed_config"],
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    );
    assert_eq!(
        context["common_tls_context"]["alpn_protocols"],
        json!(["h2"])
    );
}

#[test]
fn the_envoy_loader_refuses_what_envoy_would_refuse() {
    let text = read(ENVOY_YAML);
    let broken = |from: &str, to: &str| {
        assert!(text.contains(from), "{from}");
        load_bootstrap(&text.replacen(from, to, 1)).expect_err(to)
    };
    // A misspelt field, at the top and deep inside an `Any`.
    assert!(broken("static_resources:", "static_resource:").contains("static_resource"));
    let e = broken("failure_mode_allow: false", "failure_mode_alow: false");
    assert!(e.contains("failure_mode_alow"), "{e}");
    // A wrong `@type`, and a per-route config of the wrong type.
    let e = broken(
        "ext_authz.v3.ExtAuthzPerRoute",
        "ext_authz.v3.ExtAuthzPerRout",
    );
    assert!(e.contains("ExtAuthzPerRout"), "{e}");
    assert!(
        load_bootstrap(&text.replacen(
            "ext_authz.v3.ExtAuthzPerRoute\n                              disabled",
            "ext_authz.v3.ExtAuthz\n                              disabled",
            1
        ))
        .is_err()
    );
    // A context extension that YAML reads as a boolean, not a string.
    broken(r#"check_database: "true""#, "check_database: true");
    // A wrong enum name.
    broken("transport_api_version: V3", "transport_api_version: V4");
    // A field's validate rules: a required name left empty; a timeout of 0.
    let e = broken("stat_prefix: ingress_http", "stat_prefix: \"\"");
    assert!(e.contains("stat_prefix"), "{e}");
    let e = broken("connect_timeout: 1s", "connect_timeout: 0s");
    assert!(e.contains("connect_timeout"), "{e}");
    // A deprecated field.
    let e = broken(
        "      connect_timeout: 1s\n",
        "      connect_timeout: 1s\n      http2_protocol_options: {}\n",
    );
    assert!(e.contains("deprecated"), "{e}");
    // And the file as it is loads.
    load_bootstrap(&text).unwrap();
}

/// A Check as Envoy sends it for a GET on `path` with `headers`, with the
/// filter's initial metadata (its key placeholder replaced by `key`) and
/// the route's context extensions.
async fn envoy_check(
    server: &TestServer,
    example: &Example,
    key: &str,
    path: &str,
    headers: &[(&str, &str)],
    extensions: &BTreeMap<String, String>,
) -> Result<CheckResponse, tonic::Status> {
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    host: "app.example.com".into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions.clone().into_iter().collect(),
            ..Default::default()
        }),
    };
    let mut request = tonic::Request::new(request);
    let metadata = example.ext_authz["grpc_service"]["initial_metadata"]
        .as_array()
        .unwrap();
    for entry in metadata {
        let value = entry["value"]
            .as_str()
            .unwrap()
            .replace(KEY_PLACEHOLDER, key);
        request.metadata_mut().insert(
            tonic::metadata::MetadataKey::from_bytes(entry["key"].as_str().unwrap().as_bytes())
                .unwrap(),
            value.parse().unwrap(),
        );
    }
    AuthorizationClient::new(server.channel().await)
        .check(request)
        .await
        .map(tonic::Response::into_inner)
}

/// What sessiond answered: `Ok(user id)` or `Err((HTTP status, reason))`.
type Answer = Result<String, (i32, String)>;

/// `Ok(user id)` for an allowed check, `Err((HTTP status, reason))` for a
/// denied one.
fn outcome(response: &CheckResponse) -> Answer {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => Ok(ok
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "x-user-id")
            .map(|h| h.value.clone())
            .unwrap()),
        Some(HttpResponse::DeniedResponse(denied)) => {
            let body: Value = serde_json::from_str(&denied.body).unwrap();
            Err((
                denied.status.as_ref().unwrap().code,
                body["reason"].as_str().unwrap().to_owned(),
            ))
        }
        other => panic!("{other:?}"),
    }
}

async fn gateway_server() -> TestServer {
    TestServer::start_with(|c| {
        c.api_keys = vec![
            ApiKey::admin("ops", API_KEY),
            ApiKey::parse(&format!("gateway:verify:{VERIFY_KEY}"), 1).unwrap(),
        ];
    })
    .await
}

/// A session of `user`, with an `st-role` claim of `roles`; returns its
/// access token.
async fn session_of(
    server: &TestServer,
    user: &str,
    roles: &[&str],
) -> pb::CreateNewSessionResponse {
    let mut c = server.sessions().await;
    c.create_new_session(with_metadata(
        pb::CreateNewSessionRequest {
            user_id: user.into(),
            access_token_payload: Some(obj(json!({"st-role": {"v": roles, "t": 1}}))),
            disable_anti_csrf: true,
            ..Default::default()
        },
        &[("x-api-key", API_KEY)],
    ))
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn each_envoy_route_gets_the_answer_its_policy_promises_from_sessiond() {
    let example = Example::load(&read(ENVOY_YAML));
    let server = gateway_server().await;
    let admin = session_of(&server, "ada", &["admin"]).await;
    let user = session_of(&server, "bob", &["user"]).await;
    let revoked = session_of(&server, "eve", &["admin"]).await;
    server
        .sessions()
        .await
        .revoke_session(with_metadata(
            pb::RevokeSessionRequest {
                session_handle: handle(&revoked),
            },
            &[("x-api-key", API_KEY)],
        ))
        .await
        .unwrap();
    let bearer = |s: &pb::CreateNewSessionResponse| format!("Bearer {}", access(s));
    let (admin, user, revoked) = (bearer(&admin), bearer(&user), bearer(&revoked));
    let unauthorised = Err((401, "UNAUTHORISED".to_owned()));

    // Each route, in the file's order: (who asks, what sessiond answers).
    let expected: BTreeMap<&str, Vec<(&str, Answer)>> = [
        ("public", vec![]),
        (
            "account",
            vec![
                (admin.as_str(), Ok("ada".to_owned())),
                (user.as_str(), Ok("bob".to_owned())),
                (revoked.as_str(), unauthorised.clone()),
            ],
        ),
        (
            "admin",
            vec![
                (admin.as_str(), Ok("ada".to_owned())),
                (user.as_str(), Err((403, "INVALID_CLAIMS".to_owned()))),
                (revoked.as_str(), unauthorised.clone()),
            ],
        ),
        (
            "default",
            vec![
                (user.as_str(), Ok("bob".to_owned())),
                // No store read here: a revoked session's token passes
                // until it expires.
                (revoked.as_str(), Ok("eve".to_owned())),
                ("Bearer not-a-token", unauthorised.clone()),
            ],
        ),
    ]
    .into_iter()
    .collect();

    for route in &example.routes {
        let name = route["name"].as_str().unwrap();
        let cases = expected
            .get(name)
            .unwrap_or_else(|| panic!("route {name} has no expected answers here"));
        let per_route = example.per_route(route);
        if per_route.as_ref().is_some_and(|c| c["disabled"] == true) {
            assert!(cases.is_empty(), "{name}: Envoy asks nothing");
            continue;
        }
        let extensions = context_extensions(per_route.as_ref());
        let prefix = route["match"]["prefix"].as_str().unwrap();
        let path = format!("{prefix}page");
        for (authorization, answer) in cases {
            let headers = [("authorization", *authorization), ("x-user-id", "forged")];
            let response = envoy_check(&server, &example, VERIFY_KEY, &path, &headers, &extensions)
                .await
                .unwrap();
            assert_eq!(&outcome(&response), answer, "{name}: {authorization}");
        }
    }

    // The placeholder left in: sessiond refuses the caller, which Envoy
    // counts as a failed check (503 with status_on_error, never allowed).
    let refused = envoy_check(
        &server,
        &example,
        KEY_PLACEHOLDER,
        "/",
        &[("authorization", &user)],
        &BTreeMap::new(),
    )
    .await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        example.ext_authz["status_on_error"]["code"],
        "ServiceUnavailable"
    );

    // The cluster's health check asks for the server as a whole.
    let reply = tonic_health::pb::health_client::HealthClient::new(server.channel().await)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(reply.into_inner().status, 1, "SERVING");
}

/// Every YAML document in `text`.
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Fails on a key of `object` that is not among `known`.
fn only_keys(object: &Value, known: &[&str], what: &str) {
    for key in object
        .as_object()
        .unwrap_or_else(|| panic!("{what}: {object}"))
        .keys()
    {
        assert!(
            known.contains(&key.as_str()),
            "{what}: unknown field {key:?}"
        );
    }
}

/// The extension providers of `mesh-config.yaml`, by name.
fn mesh_providers() -> BTreeMap<String, Value> {
    let docs = documents(&read(MESH_CONFIG_YAML));
    assert_eq!(docs.len(), 1);
    let operator = &docs[0];
    assert_eq!(operator["apiVersion"], "install.istio.io/v1alpha1");
    assert_eq!(operator["kind"], "IstioOperator");
    only_keys(&operator["spec"], &["meshConfig"], "spec");
    only_keys(
        &operator["spec"]["meshConfig"],
        &["extensionProviders"],
        "meshConfig",
    );
    let mut providers = BTreeMap::new();
    for provider in operator["spec"]["meshConfig"]["extensionProviders"]
        .as_array()
        .unwrap()
    {
        let name = provider["name"].as_str().unwrap().to_owned();
        // Fields of istio.mesh.v1alpha1.MeshConfig.ExtensionProvider's
        // Envoy ext_authz providers, in their JSON names.
        if let Some(grpc) = provider.get("envoyExtAuthzGrpc") {
            only_keys(provider, &["name", "envoyExtAuthzGrpc"], &name);
            only_keys(
                grpc,
                &[
                    "service",
                    "port",
                    "timeout",
                    "failOpen",
                    "statusOnError",
                    "includeRequestBodyInCheck",
                ],
                &name,
            );
        } else {
            only_keys(provider, &["name", "envoyExtAuthzHttp"], &name);
            only_keys(
                &provider["envoyExtAuthzHttp"],
                &[
                    "service",
                    "port",
                    "timeout",
                    "pathPrefix",
                    "failOpen",
                    "statusOnError",
                    "includeRequestHeadersInCheck",
                    "includeAdditionalHeadersInCheck",
                    "includeRequestBodyInCheck",
                    "headersToUpstreamOnAllow",
                    "headersToDownstreamOnDeny",
                    "headersToDownstreamOnAllow",
                ],
                &name,
            );
        }
        let config = provider
            .get("envoyExtAuthzGrpc")
            .or(provider.get("envoyExtAuthzHttp"))
            .unwrap();
        assert_eq!(config["service"], "sessiond.sessiond.svc.cluster.local");
        assert_eq!(config["port"], 50051);
        assert_eq!(config["failOpen"], false);
        assert!(config["timeout"].as_str().unwrap().ends_with('s'));
        assert!(
            providers.insert(name.clone(), provider.clone()).is_none(),
            "{name} twice"
        );
    }
    assert!(providers["sessiond"].get("envoyExtAuthzGrpc").is_some());
    providers
}

#[test]
fn the_istio_policies_name_providers_that_the_mesh_config_defines() {
    let providers = mesh_providers();
    let docs = documents(&read(POLICY_YAML));
    let mut custom = 0;
    for doc in &docs {
        assert_eq!(doc["apiVersion"], "security.istio.io/v1", "{doc}");
        assert_eq!(doc["kind"], "AuthorizationPolicy", "{doc}");
        let spec = &doc["spec"];
        only_keys(
            spec,
            &["selector", "targetRefs", "action", "provider", "rules"],
            "spec",
        );
        for rule in spec["rules"].as_array().unwrap() {
            only_keys(rule, &["from", "to", "when"], "rule");
            for to in rule["to"].as_array().into_iter().flatten() {
                only_keys(
                    &to["operation"],
                    &[
                        "hosts",
                        "notHosts",
                        "ports",
                        "notPorts",
                        "methods",
                        "notMethods",
                        "paths",
                        "notPaths",
                    ],
                    "operation",
                );
            }
        }
        if spec["action"] == "CUSTOM" {
            custom += 1;
            let name = spec["provider"]["name"].as_str().unwrap();
            assert!(providers.contains_key(name), "no provider {name}");
        } else {
            assert!(["ALLOW", "DENY"].contains(&spec["action"].as_str().unwrap()));
            assert!(spec.get("provider").is_none());
        }
    }
    assert!(custom >= 1);
}

/// A forward-authentication request as Envoy's HTTP ext_authz makes it for
/// `provider`: the original method, the path prefix before the path, the
/// client's headers that the provider lets through, and its fixed headers.
async fn istio_http_check(
    server: &TestServer,
    provider: &Value,
    path: &str,
    client_headers: &[(&str, &str)],
) -> (u16, std::collections::HashMap<String, String>) {
    let http = &provider["envoyExtAuthzHttp"];
    let allowed: Vec<&str> = http["includeRequestHeadersInCheck"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    let mut request = format!(
        "GET {}{path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\nContent-Length: 0\r\n",
        http["pathPrefix"].as_str().unwrap()
    );
    let fixed = http["includeAdditionalHeadersInCheck"].as_object().unwrap();
    for (k, v) in client_headers {
        if allowed.contains(k) && !fixed.contains_key(*k) {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    for (k, v) in fixed {
        let v = v.as_str().unwrap().replace(KEY_PLACEHOLDER, VERIFY_KEY);
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let (code, headers, _) = http1_answer(&http1_exchange(server.addr, request.as_bytes()).await);
    (code, headers)
}

#[tokio::test]
async fn the_istio_http_providers_get_the_answers_they_promise_from_sessiond() {
    let providers = mesh_providers();
    let server = gateway_server().await;
    let admin = format!(
        "Bearer {}",
        access(&session_of(&server, "ada", &["admin"]).await)
    );
    let user = format!(
        "Bearer {}",
        access(&session_of(&server, "bob", &["user"]).await)
    );

    let http = &providers["sessiond-http"];
    let upstream = http["envoyExtAuthzHttp"]["headersToUpstreamOnAllow"]
        .as_array()
        .unwrap();
    for h in IDENTITY_HEADERS {
        assert!(upstream.contains(&json!(h)), "{h} reaches the service");
    }
    // A client's own policy header is not passed on: it cannot loosen it.
    let forged = [
        ("authorization", user.as_str()),
        ("x-sessiond-claim-validators", "[]"),
    ];
    let (code, headers) = istio_http_check(&server, http, "/orders", &forged).await;
    assert_eq!(code, 200);
    assert_eq!(headers["x-user-id"], "bob");
    let (code, _) = istio_http_check(&server, http, "/orders", &[]).await;
    assert_eq!(code, 401);

    let admin_only = &providers["sessiond-http-admin"];
    let (code, headers) =
        istio_http_check(&server, admin_only, "/admin", &[("authorization", &admin)]).await;
    assert_eq!((code, headers["x-user-id"].as_str()), (200, "ada"));
    let (code, _) = istio_http_check(&server, admin_only, "/admin", &forged).await;
    assert_eq!(code, 403, "the provider's fixed validators apply");
}

#[test]
fn the_keyless_setup_delivers_to_loopback_and_lets_only_named_callers_in() {
    let docs = documents(&read("deploy/istio/sessiond-without-keys.yaml"));
    let kinds: Vec<_> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["Sidecar", "PeerAuthentication", "AuthorizationPolicy"]
    );
    assert_eq!(docs[0]["apiVersion"], "networking.istio.io/v1");
    let ingress = &docs[0]["spec"]["ingress"][0];
    assert_eq!(ingress["port"]["number"], 50051);
    // sessiond without keys listens on loopback only.
    let endpoint: std::net::SocketAddr = ingress["defaultEndpoint"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(endpoint.ip().is_loopback() && endpoint.port() == 50051);
    assert_eq!(docs[1]["spec"]["mtls"]["mode"], "STRICT");
    let policy = &docs[2]["spec"];
    assert_eq!(policy["action"], "ALLOW");
    let rules = policy["rules"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .all(|r| r["from"][0]["source"]["principals"].is_array())
    );
    assert_eq!(
        rules[0]["to"][0]["operation"]["paths"],
        json!(["/envoy.service.auth.v3.Authorization/Check"])
    );
    for doc in &docs {
        assert_eq!(doc["metadata"]["namespace"], "sessiond");
        assert_eq!(
            doc["spec"]
                .get("selector")
                .map_or(
                    &doc["spec"]["workloadSelector"]["labels"],
                    |s| &s["matchLabels"]
                ),
            &json!({"app.kubernetes.io/name": "sessiond"})
        );
    }
}
