//! Code generated from `proto/distraft/v1/distraft.proto` by `build.rs`; and, for
//! `distraft bench --target etcd-v3`, from the slice of etcd's v3 API in
//! `proto/etcd/etcdserverpb.proto`.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("distraft.v1");

    /// The encoded descriptors of the proto files, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("distraft_descriptor");
}

/// etcd's v3 KV and Maintenance services, as much of them as the bench speaks.
#[allow(clippy::all, missing_docs)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}
