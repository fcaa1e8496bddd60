//! What a failed request tells its caller: a driver's [`RequestError`] as a gRPC status,
//! with the marks a forwarding node and the gateway read back.

use tonic::{Code, Status};

use crate::driver::RequestError;

/// Marks a failure that certainly left the cluster unchanged (the request never made
/// it into the log), so that the node that forwarded it may try again. UNAVAILABLE
/// alone does not say so: a write whose leader lost its post after proposing it may
/// still commit, and sending it again could apply it twice (put a, put b, put a).
pub const NOT_APPLIED: &str = "x-distraft-not-applied";

/// Marks a RESOURCE_EXHAUSTED that is about storage (the quota, a full disk: HTTP 507
/// at the gateway) rather than load (the forwarding cap, load shedding: HTTP 503, try
/// again soon).
pub const INSUFFICIENT_STORAGE: &str = "x-distraft-insufficient-storage";

/// The gRPC status for a failed client request.
pub fn status_of(err: RequestError) -> Status {
    let not_applied = matches!(
        err,
        RequestError::NotLeader { .. }
            | RequestError::LeadershipLost
            | RequestError::Stopped
            | RequestError::ShuttingDown
            | RequestError::Overloaded
            | RequestError::QuotaExceeded { .. }
            | RequestError::NoSpace
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

/// Whether a write forwarded to the leader certainly did not happen: the leader said
/// so, or the request never left (the connection could not be made).
/// Whether a node that forwarded a request to the leader, and got `failure` back,
/// looks for the leader again and sends it once more (else the client gets the
/// failure): only when the leader is gone, stopped or deposed (UNAVAILABLE), and, for
/// a write, only when it certainly did not happen (never apply a write twice). The
/// simulator (`tests/simulation.rs`) follows the same rule.
pub fn forward_again(write: bool, failure: &Status) -> bool {
    failure.code() == Code::Unavailable && (!write || certainly_not_applied(failure))
}

pub(super) fn certainly_not_applied(status: &Status) -> bool {
    if crate::plant::active(crate::plant::Plant::RetryAmbiguousForward) {
        return true;
    }
    if status.metadata().contains_key(NOT_APPLIED) {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{self as pb, kv_client::KvClient};

    /// Only failures that certainly left the log unchanged let a forwarded write be
    /// sent again: a write that may have committed must never be applied twice.
    #[tokio::test]
    async fn only_certain_failures_make_a_forwarded_write_retry() {
        assert!(certainly_not_applied(&status_of(RequestError::NotLeader {
            leader: None
        })));
        assert!(certainly_not_applied(&status_of(
            RequestError::LeadershipLost
        )));
        assert!(!certainly_not_applied(&status_of(
            RequestError::Indeterminate
        )));
        // A broken connection: the request may have arrived.
        assert!(!certainly_not_applied(&Status::unavailable(
            "transport error"
        )));

        // Nobody listens: the request never left.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let refused = KvClient::new(channel)
            .put(pb::PutRequest {
                key: "k".into(),
                value: "v".into(),
            })
            .await
            .unwrap_err();
        assert!(certainly_not_applied(&refused), "{refused:?}");
    }
}
