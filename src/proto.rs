//! Code generated from `proto/distraft/v1/distraft.proto` by `build.rs`.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("distraft.v1");

    /// The encoded descriptors of the proto files, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("distraft_descriptor");
}
