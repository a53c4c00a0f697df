//! Compiles `proto/` with the pure-Rust `protox` compiler (no `protoc` needed)
//! and writes the encoded descriptor sets that the reflection service serves:
//! sessiond's own (with generated Rust code), and Envoy's authorization API
//! (descriptor only: its Rust types come from the `envoy-types` crate).

use std::path::PathBuf;

use prost::Message;

/// The Envoy files sessiond publishes; protox adds what they import.
const ENVOY_FILES: [&str; 2] = [
    "proto/envoy/service/auth/v3/external_auth.proto",
    "proto/envoy/service/auth/v3/attribute_context.proto",
];

/// Our copy of google.rpc.Status, needed to compile the Envoy files ...
const RPC_STATUS_FILE: &str = "google/rpc/status.proto";
/// ... and the file name under which `tonic_types::pb::FILE_DESCRIPTOR_SET`
/// already defines the same message.
const TONIC_TYPES_STATUS_FILE: &str = "status.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/sessiond/v1/session.proto",
        "proto/sessiond/v1/jwt.proto",
        "proto/sessiond/v1/claims.proto",
        "proto/sessiond/v1/user_session.proto",
        "proto/sessiond/v1/admin.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    for file in files.iter().chain(&ENVOY_FILES) {
        println!("cargo:rerun-if-changed={file}");
    }

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    // Envoy's ext_authz API. Reflection resolves imports by file name across
    // every registered set, and a descriptor pool refuses a type defined in
    // two files; tonic-types defines google.rpc.Status in `status.proto`, so
    // that file replaces our `google/rpc/status.proto` here. Only the import
    // line's file name changes: fields name the type by its full name.
    let mut envoy = protox::compile(ENVOY_FILES, ["proto"])?;
    envoy.file.retain(|file| file.name() != RPC_STATUS_FILE);
    for file in &mut envoy.file {
        for dependency in &mut file.dependency {
            if dependency == RPC_STATUS_FILE {
                TONIC_TYPES_STATUS_FILE.clone_into(dependency);
            }
        }
    }
    std::fs::write(
        out_dir.join("envoy_authz_descriptor.bin"),
        envoy.encode_to_vec(),
    )?;

    let fds = protox::compile(files, ["proto"])?;
    std::fs::write(out_dir.join("sessiond_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .codec_path("crate::api::codec::SessiondCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
