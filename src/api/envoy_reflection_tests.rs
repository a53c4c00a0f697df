//! Reflection serving the Envoy descriptor set beside the others
//! ([`crate::pb::ENVOY_AUTHZ_FILE_DESCRIPTOR_SET`]): a client that starts
//! from the service's name and fetches each import by file name, as grpcurl
//! (v1alpha) and `buf curl` (v1) do, ends with every file it needs to call
//! `Check` with JSON.

use std::collections::HashSet;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use prost_types::{FileDescriptorProto, FileDescriptorSet};

use super::envoy_descriptor_tests::{SERVED_SETS, full_check_request, full_check_request_json};

/// A file a reflection client asked for: by symbol first, then each
/// import by file name, as grpcurl and `buf curl` do.
enum Ask {
    Symbol(String),
    File(String),
}

/// The reflection calls of one protocol version (v1 and v1alpha share
/// their message shapes, not their types).
macro_rules! reflection_client {
    ($version:ident) => {
        mod $version {
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

            /// Lists the services, then fetches `first` and, for each file
            /// received, what `next` asks for after reading it; panics on a
            /// symbol or file the server does not have.
            pub async fn fetch(
                channel: tonic::transport::Channel,
                first: super::Ask,
                mut next: impl FnMut(&[u8]) -> Vec<super::Ask>,
            ) -> Vec<String> {
                let mut client = ServerReflectionClient::new(channel);
                let mut call = async |request| {
                    let request = ServerReflectionRequest {
                        host: String::new(),
                        message_request: Some(request),
                    };
                    client
                        .server_reflection_info(tokio_stream::iter([request]))
                        .await
                        .unwrap()
                        .into_inner()
                        .message()
                        .await
                        .unwrap()
                        .unwrap()
                        .message_response
                        .unwrap()
                };
                let MessageResponse::ListServicesResponse(list) =
                    call(MessageRequest::ListServices(String::new())).await
                else {
                    panic!("no service list")
                };
                let mut queue = std::collections::VecDeque::from([first]);
                while let Some(ask) = queue.pop_front() {
                    let request = match ask {
                        super::Ask::Symbol(s) => MessageRequest::FileContainingSymbol(s),
                        super::Ask::File(f) => MessageRequest::FileByFilename(f),
                    };
                    let asked = format!("{request:?}");
                    match call(request).await {
                        MessageResponse::FileDescriptorResponse(files) => {
                            for file in files.file_descriptor_proto {
                                queue.extend(next(&file));
                            }
                        }
                        other => panic!("{asked}: {other:?}"),
                    }
                }
                list.service.into_iter().map(|s| s.name).collect()
            }
        }
    };
}
reflection_client!(v1);
reflection_client!(v1alpha);

#[tokio::test]
async fn reflection_serves_check_with_every_file_it_imports() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let builder = || {
        SERVED_SETS.into_iter().fold(
            tonic_reflection::server::Builder::configure(),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
    };
    let server = tonic::transport::Server::builder()
        .add_service(builder().build_v1().unwrap())
        .add_service(builder().build_v1alpha().unwrap())
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server = tokio::spawn(server);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    for version in ["v1", "v1alpha"] {
        let mut files: Vec<FileDescriptorProto> = Vec::new();
        let mut asked = HashSet::new();
        let next = |bytes: &[u8]| {
            let file = FileDescriptorProto::decode(bytes).unwrap();
            let imports: Vec<Ask> = file
                .dependency
                .iter()
                .filter(|d| asked.insert((*d).clone()))
                .map(|d| Ask::File(d.clone()))
                .collect();
            files.push(file);
            imports
        };
        let first = Ask::Symbol("envoy.service.auth.v3.Authorization".into());
        let services = match version {
            "v1" => v1::fetch(channel.clone(), first, next).await,
            _ => v1alpha::fetch(channel.clone(), first, next).await,
        };
        assert!(
            services
                .iter()
                .any(|s| s == "envoy.service.auth.v3.Authorization"),
            "{version}: {services:?}"
        );

        // What a client builds from those files alone calls Check with JSON.
        let pool = DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: files })
            .unwrap_or_else(|e| panic!("{version}: {e}"));
        let check = pool
            .get_service_by_name("envoy.service.auth.v3.Authorization")
            .unwrap()
            .methods()
            .find(|m| m.name() == "Check")
            .unwrap();
        let request =
            DynamicMessage::deserialize(check.input(), full_check_request_json()).unwrap();
        let decoded = CheckRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, full_check_request(), "{version}");
    }
    server.abort();
}
