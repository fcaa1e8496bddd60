//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so that building
//! distraft needs no system `protoc`; the descriptor set is kept for gRPC reflection.
//! Also compiles the slice of etcd's v3 API that `distraft bench --target etcd-v3`
//! speaks (proto/etcd/), kept apart: it is no part of distraft's own contract.
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

    // etcd's KV and Maintenance services: the client for the bench, the server for the
    // bench's tests (a fake etcd that records what it is sent).
    let etcd = "proto/etcd/etcdserverpb.proto";
    println!("cargo:rerun-if-changed={etcd}");
    tonic_prost_build::configure()
        .bytes(".etcdserverpb")
        .compile_fds(protox::compile([etcd], ["proto"])?)?;
    Ok(())
}
