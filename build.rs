//! Compiles `proto/` with the pure-Rust `protox` compiler (no `protoc` needed)
//! and writes the encoded descriptor set that the reflection service serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/sessiond/v1/session.proto",
        "proto/sessiond/v1/jwt.proto",
        "proto/sessiond/v1/claims.proto",
        "proto/sessiond/v1/user_session.proto",
        "proto/sessiond/v1/admin.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }

    let fds = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("sessiond_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .codec_path("crate::api::codec::SessiondCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
