//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so that building
//! distraft needs no system `protoc`; the descriptor set is kept for gRPC reflection.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/distraft/v1/distraft.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("distraft_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .bytes(".distraft.v1.Entry.data")
        // Undecodable bytes are the sender's fault: INVALID_ARGUMENT (src/rpc/codec.rs).
        .codec_path("crate::rpc::codec::WireCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
