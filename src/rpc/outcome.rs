//! What a failed request tells its caller: a driver's [`RequestError`] as a gRPC status,
//! with the marks a forwarding node and the gateway read back.

use tonic::{Code, Status};

use prost::Message as _;

use crate::driver::RequestError;
use crate::kv::Versioned;
use crate::proto::v1 as pb;

/// Marks a failure that certainly left the cluster unchanged (the request never made
/// it into the log), so that the node that forwarded it may try again. UNAVAILABLE
/// alone does not say so: a write whose leader lost its post after proposing it may
/// still commit, and sending it again could apply it twice (put a, put b, put a).
pub const NOT_APPLIED: &str = "x-distraft-not-applied";

/// Marks a RESOURCE_EXHAUSTED that is about storage (the quota, a full disk: HTTP 507
/// at the gateway) rather than load (the forwarding cap, load shedding: HTTP 503, try
/// again soon).
pub const INSUFFICIENT_STORAGE: &str = "x-distraft-insufficient-storage";

/// The metadata of a NOT_FOUND from `Kv.Get`: the index the answer reflects (the
/// gateway's `X-Distraft-Index`).
pub const INDEX: &str = "x-distraft-index";

/// The index a NOT_FOUND of `Kv.Get` reflects (0 from a node of an earlier version,
/// which did not say).
pub fn index_of_not_found(status: &Status) -> u64 {
    status
        .metadata()
        .get(INDEX)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

/// The gRPC status for a failed client request.
pub fn status_of(err: RequestError) -> Status {
    if let RequestError::Replayed(first) = err {
        let mut status = status_of(*first);
        super::idempotency::mark_replayed(status.metadata_mut());
        return status;
    }
    let not_applied = matches!(
        err,
        RequestError::NotLeader { .. }
            | RequestError::LeadershipLost
            | RequestError::Stopped
            | RequestError::ShuttingDown
            | RequestError::Overloaded
            | RequestError::QuotaExceeded { .. }
            | RequestError::NoSpace
            | RequestError::IdempotencyMismatch { .. }
    );
    let storage = matches!(
        err,
        RequestError::QuotaExceeded { .. } | RequestError::NoSpace
    );
    let mut status = match err {
        RequestError::NotLeader { .. } | RequestError::LeadershipLost => Status::unavailable(
            format!("{err}; no leader could serve the request, try again"),
        ),
        RequestError::Indeterminate
        | RequestError::Stopped
        | RequestError::ShuttingDown
        | RequestError::Overloaded => Status::unavailable(err.to_string()),
        RequestError::Rejected(_) | RequestError::Storage(_) => Status::internal(err.to_string()),
        // HTTP 507 at the gateway.
        RequestError::QuotaExceeded { .. } | RequestError::NoSpace => {
            Status::resource_exhausted(err.to_string())
        }
        // HTTP 422 at the gateway.
        RequestError::IdempotencyMismatch { .. } => Status::already_exists(err.to_string()),
        // Unwrapped above.
        RequestError::Replayed(_) => Status::internal(err.to_string()),
        // HTTP 412 at the gateway, which reads the key's state from the details.
        RequestError::PreconditionFailed {
            ref key,
            ref current,
        } => {
            let message = err.to_string();
            let details = RpcStatus {
                code: Code::FailedPrecondition as i32,
                message: message.clone(),
                details: vec![Any {
                    type_url: KEY_STATE_TYPE.to_string(),
                    value: key_state(key, current.as_ref()).encode_to_vec(),
                }],
            };
            Status::with_details(
                Code::FailedPrecondition,
                message,
                details.encode_to_vec().into(),
            )
        }
    };
    if not_applied {
        status.metadata_mut().insert(
            NOT_APPLIED,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    if storage {
        status.metadata_mut().insert(
            INSUFFICIENT_STORAGE,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    status
}

/// A key as a precondition failure found it, for the status details.
pub fn key_state(key: &str, current: Option<&Versioned>) -> pb::KeyState {
    match current {
        Some(current) => pb::KeyState {
            key: key.to_string(),
            found: true,
            value: current.value.clone(),
            create_index: current.versions.create_index,
            mod_index: current.versions.mod_index,
            version: current.versions.version,
        },
        None => pb::KeyState {
            key: key.to_string(),
            ..pb::KeyState::default()
        },
    }
}

/// The key state a FAILED_PRECONDITION carries, if it carries one.
pub fn precondition_failure(status: &Status) -> Option<pb::KeyState> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    let details = RpcStatus::decode(status.details()).ok()?;
    let any = details
        .details
        .into_iter()
        .find(|any| any.type_url == KEY_STATE_TYPE)?;
    pb::KeyState::decode(any.value.as_slice()).ok()
}

/// How a [`pb::KeyState`] is named in the status details.
const KEY_STATE_TYPE: &str = "type.googleapis.com/distraft.v1.KeyState";

// The status details (`grpc-status-details-bin`) are a `google.rpc.Status` whose
// `details` are `google.protobuf.Any`s, as every gRPC client expects (grpcurl refuses
// anything else). The two messages, as small as they are, defined here.

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// Whether a node that forwarded a request to the leader, and got `failure` back,
/// looks for the leader again and sends it once more (else the client gets the
/// failure): when the leader is gone, stopped or deposed (UNAVAILABLE). A write may
/// have happened all the same, but a forwarded write always travels with an
/// idempotency key (the client's, or one the forwarding node made up: see
/// `idempotency.rs`), so sending it again gets the first outcome instead of a second
/// apply. The simulator (`tests/simulation.rs`) follows the same rule.
pub fn forward_again(failure: &Status) -> bool {
    failure.code() == Code::Unavailable
}
