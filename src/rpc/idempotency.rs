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

/// One client write through all its attempts (`rpc::kv`'s retry loop): proposed here
/// while this node leads, forwarded while another does. Every attempt after one that
/// may have applied it must carry the same idempotency key, or it applies twice: a
/// write the client gave no key is forwarded under a key of this node's making (made at
/// the first forward), and once it has been, a later proposal here carries that key
/// too. (It did not: a write forwarded to a leader that applied it and then fell behind
/// a partition was proposed again, bare, when this node took over, and applied a second
/// time after a later delete, found by the chaos test.)
pub struct WriteAttempts {
    command: Command,
    client_key: Option<String>,
    node: u64,
    /// The entry of a proposal before any forward: with the client's key, if any.
    first_entry: Bytes,
    forwarding_key: std::sync::OnceLock<String>,
    /// The key a first forward takes when the client gave none: random unless given
    /// ([`WriteAttempts::with_own_key`]).
    own_key: Option<String>,
}

impl WriteAttempts {
    pub fn new(command: Command, client_key: Option<String>, node: u64) -> WriteAttempts {
        WriteAttempts {
            first_entry: entry(&command, client_key.as_deref()),
            command,
            client_key,
            node,
            forwarding_key: std::sync::OnceLock::new(),
            own_key: None,
        }
    }

    /// The key to forward under, should the write be forwarded without a client's key,
    /// instead of a random one: for a simulator, whose runs must replay exactly.
    pub fn with_own_key(mut self, key: String) -> WriteAttempts {
        self.own_key = Some(key);
        self
    }

    /// The entry this node proposes: under the key its forwards carried, once there
    /// was one (the client's, or this node's own), stamped `at_ms` (this node's clock,
    /// [`now_ms`]).
    pub fn entry(&self, at_ms: u64) -> Bytes {
        let forgets = crate::plant::active(crate::plant::Plant::LocalRetryForgetsForwardingKey);
        match (&self.client_key, self.forwarding_key.get()) {
            (None, Some(key)) if !forgets => self.command.encode_idempotent(key, at_ms),
            _ => self.first_entry.clone(),
        }
    }

    /// The key a forward carries: the client's, or a new one of this node's, made at
    /// the first forward (not for every write: most are proposed here) and the same for
    /// every later one, so that a forward may be sent again after any failure (see
    /// [`super::forward_again`]).
    pub fn forwarding_key(&self) -> &str {
        match &self.client_key {
            Some(key) => key,
            None => self.forwarding_key.get_or_init(|| match &self.own_key {
                Some(key) => key.clone(),
                None => forwarding_key(self.node),
            }),
        }
    }
}

/// This node's clock, in milliseconds since the Unix epoch (0 before it).
pub fn now_ms() -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn idempotency_of(entry: &[u8]) -> Option<crate::kv::Idempotency> {
        Command::decode(entry).ok()?.idempotency
    }

    fn key_of(entry: &[u8]) -> Option<String> {
        idempotency_of(entry).map(|i| i.key)
    }

    #[test]
    fn every_attempt_after_a_forward_carries_the_forwarding_key() {
        let put = Command::Put {
            key: "k".into(),
            value: "v".into(),
            precondition: None,
        };
        // No key from the client: proposed bare until it is forwarded, then under the
        // forward's key, which the leader would have stamped on the same command (the
        // same fingerprint: the retry is recognized, not refused as another request).
        let attempts = WriteAttempts::new(put.clone(), None, 3);
        assert_eq!(key_of(&attempts.entry(now_ms())), None);
        let forwarded = attempts.forwarding_key().to_string();
        assert!(forwarded.starts_with("distraft-forward-3-"), "{forwarded}");
        assert_eq!(
            attempts.forwarding_key(),
            forwarded,
            "one key for every forward"
        );
        let local = idempotency_of(&attempts.entry(now_ms()));
        let at_leader = idempotency_of(&entry(&put, Some(&forwarded)));
        assert_eq!(local.as_ref().map(|i| &i.key), Some(&forwarded));
        assert_eq!(
            local.map(|i| i.fingerprint),
            at_leader.map(|i| i.fingerprint)
        );
        // The client's key: every attempt carries it.
        let attempts = WriteAttempts::new(put, Some("client-1".into()), 3);
        assert_eq!(
            key_of(&attempts.entry(now_ms())).as_deref(),
            Some("client-1")
        );
        assert_eq!(attempts.forwarding_key(), "client-1");
        assert_eq!(
            key_of(&attempts.entry(now_ms())).as_deref(),
            Some("client-1")
        );
    }
}
