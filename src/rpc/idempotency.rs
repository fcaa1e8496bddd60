//! Exactly-once writes: a client's idempotency key (gRPC metadata `idempotency-key`,
//! the gateway's `Idempotency-Key` header) goes into the write's command, and the
//! state machine answers a retry with the first outcome (`kv/idempotency.rs`). A
//! follower that forwards a write gives it a key of its own when the client gave none,
//! so that it may send it again after any failure that could have applied it.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::Rng as _;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Status};

use crate::driver::{Committed, RequestError};
use crate::kv::{Applied, Command};

/// The metadata of a write's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The metadata of an answer that is a retry's: the first outcome, replayed
/// (`true`); the gateway's `Idempotent-Replayed` header.
pub const REPLAYED: &str = "idempotent-replayed";
/// The longest idempotency key taken (a UUID is 36 bytes).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// A client's idempotency key, checked: 1 to [`MAX_IDEMPOTENCY_KEY_BYTES`] visible
/// ASCII characters. The draft's structured-field form (`"<key>"`, quoted) is taken
/// too, without its quotes.
pub fn client_key(metadata: &MetadataMap) -> Result<Option<String>, Status> {
    let Some(value) = metadata.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| invalid("is not visible ASCII"))?
        .trim();
    let key = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(text);
    if key.is_empty() {
        return Err(invalid("is empty"));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(invalid(&format!(
            "is {} bytes, more than {MAX_IDEMPOTENCY_KEY_BYTES}",
            key.len()
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("is not visible ASCII"));
    }
    Ok(Some(key.to_string()))
}

fn invalid(why: &str) -> Status {
    Status::invalid_argument(format!("the idempotency key {why}"))
}

/// The key a forwarding node gives a write the client gave none: random, and marked
/// as the node's so that it cannot be mistaken for a client's.
pub fn forwarding_key(node: u64) -> String {
    let random: u128 = rand::rng().random();
    format!("distraft-forward-{node}-{random:032x}")
}

/// A write's command as an entry: with the client's idempotency key, stamped with this
/// node's clock, if there is one.
pub fn entry(command: &Command, key: Option<&str>) -> Bytes {
    match key {
        Some(key) => command.encode_idempotent(key, now_ms()),
        None => command.encode(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// A committed write's index and outcome, and whether it is a retry's replay of the
/// first outcome; a key used for another request is an error, as is a replayed failure
/// (marked replayed, see [`super::status_of`]).
pub fn settle(committed: Committed) -> Result<(u64, Applied, bool), RequestError> {
    match committed.applied {
        Applied::Replayed { index, outcome } => Ok((index, *outcome, true)),
        Applied::IdempotencyMismatch { key } => Err(RequestError::IdempotencyMismatch { key }),
        applied => Ok((committed.index, applied, false)),
    }
}

/// A request forwarded with the write's idempotency key.
pub fn with_key<T>(mut request: Request<T>, key: &str) -> Request<T> {
    if let Ok(value) = MetadataValue::try_from(key) {
        request.metadata_mut().insert(IDEMPOTENCY_KEY, value);
    }
    request
}

/// Whether an answer (or a failure's metadata) says it is a replay.
pub fn replayed(metadata: &MetadataMap) -> bool {
    metadata.get(REPLAYED).is_some_and(|value| value == "true")
}

/// Marks an answer as a replay.
pub fn mark_replayed(metadata: &mut MetadataMap) {
    metadata.insert(REPLAYED, MetadataValue::from_static("true"));
}
