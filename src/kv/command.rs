//! The commands the log stores: the state machine's own, versioned type, kept apart
//! from the client-facing request messages of `proto/`, so that a field added for
//! clients can never change what the log holds by accident.
//!
//! An entry of kind `Normal` holds one command: the format byte [`FORMAT_1`] and then
//! the protobuf encoding of [`WireCommand`] (defined here, not in `proto/`: no client
//! ever sees it). Entries written before the format byte existed hold a bare
//! `Command` message of the old client proto (a Put or Delete request); they are still
//! read ([`Format::Unversioned`], see docs/storage.md). No such entry can start with
//! byte 1: that would be field number 0, which protobuf forbids.

use bytes::Bytes;
use prost::Message as _;

/// The first byte of a command in format 1.
const FORMAT_1: u8 = 0x01;

/// What a write expects of its key's current state; checked when the entry is
/// applied, the same on every replica. A write whose expectation fails changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The key exists and was last written at this index (HTTP `If-Match: "<index>"`).
    ModIndex(u64),
    /// The key does not exist (HTTP `If-None-Match: *`).
    Absent,
    /// The key exists, whatever its value (HTTP `If-Match: *`).
    Exists,
}

impl Precondition {
    /// Whether the expectation holds of a key last written at `current` (`None`:
    /// absent).
    pub fn holds(self, current: Option<u64>) -> bool {
        match (self, current) {
            (Precondition::ModIndex(expected), Some(mod_index)) => expected == mod_index,
            (Precondition::ModIndex(_), None) => false,
            (Precondition::Absent, current) => current.is_none(),
            (Precondition::Exists, current) => current.is_some(),
        }
    }
}

/// What a transaction compares a key with, as the key is when it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The key exists with this value.
    Value(String),
    /// The key's version is this (0: the key does not exist).
    Version(u64),
    /// The key exists and was last written at this index.
    ModIndex(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub target: Target,
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put { key: String, value: String },
    Delete { key: String },
}

impl TxnOp {
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// Writes applied atomically: `success` if every comparison holds, else `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// A client's idempotency key on a write (the `Idempotency-Key` header, gRPC metadata
/// `idempotency-key`), with what the state machine needs to remember it the same way
/// on every replica: the proposer's clock (the table's only clock: no replica reads
/// its own) and a fingerprint of the request, to tell a retry from a different request
/// under the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    /// Milliseconds since the Unix epoch, on the proposer's clock.
    pub at_ms: u64,
    pub fingerprint: u64,
}

/// One command of the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Put {
        key: String,
        value: String,
        precondition: Option<Precondition>,
    },
    Delete {
        key: String,
        precondition: Option<Precondition>,
    },
    Txn(Txn),
}

/// Which format an entry's command was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Format 1: the entry's index becomes the key's `mod_index`.
    Versioned,
    /// Written before versions existed: such writes carry no versions (all zero), so
    /// that a replica that applies the entry and one that loads a snapshot holding its
    /// result (an image without versions) agree.
    Unversioned,
}

impl Command {
    /// The command as an entry's data: the format byte, then the protobuf encoding.
    pub fn encode(&self) -> Bytes {
        WireCommand {
            op: Some(self.wire_op()),
            ..WireCommand::default()
        }
        .to_entry()
    }

    /// The command with a client's idempotency key (see [`Idempotency`]), stamped
    /// with `at_ms`; its fingerprint is a hash of the command's own encoding.
    pub fn encode_idempotent(&self, key: &str, at_ms: u64) -> Bytes {
        let op = self.wire_op();
        let fingerprint = super::fnv1a(op_bytes(&op).iter());
        WireCommand {
            op: Some(op),
            idempotency_key: key.to_string(),
            at_ms,
            fingerprint,
        }
        .to_entry()
    }

    fn wire_op(&self) -> WireOp {
        match self {
            Command::Put {
                key,
                value,
                precondition,
            } => WireOp::Put(WirePut {
                key: key.clone(),
                value: value.clone(),
                precondition: precondition.map(WirePrecondition::from),
            }),
            Command::Delete { key, precondition } => WireOp::Delete(WireDelete {
                key: key.clone(),
                precondition: precondition.map(WirePrecondition::from),
            }),
            Command::Txn(txn) => WireOp::Txn(WireTxn {
                compares: txn.compares.iter().map(WireCompare::from).collect(),
                success: txn.success.iter().map(WireTxnOp::from).collect(),
                failure: txn.failure.iter().map(WireTxnOp::from).collect(),
            }),
        }
    }

    /// Decodes an entry's data: the command, its format and its idempotency key, if it
    /// has one; what is not a command (damaged, or written by a newer version) is
    /// refused with the reason.
    pub fn decode(data: &[u8]) -> Result<Decoded, String> {
        match data.split_first() {
            None => Err("an empty command".to_string()),
            Some((&FORMAT_1, rest)) => {
                let wire = WireCommand::decode(rest)
                    .map_err(|err| format!("undecodable command: {err}"))?;
                let command = match wire.op {
                    Some(WireOp::Put(put)) => Command::Put {
                        key: put.key,
                        value: put.value,
                        precondition: precondition(put.precondition)?,
                    },
                    Some(WireOp::Delete(delete)) => Command::Delete {
                        key: delete.key,
                        precondition: precondition(delete.precondition)?,
                    },
                    Some(WireOp::Txn(txn)) => Command::Txn(Txn {
                        compares: txn
                            .compares
                            .into_iter()
                            .map(Compare::try_from)
                            .collect::<Result<_, _>>()?,
                        success: txn
                            .success
                            .into_iter()
                            .map(TxnOp::try_from)
                            .collect::<Result<_, _>>()?,
                        failure: txn
                            .failure
                            .into_iter()
                            .map(TxnOp::try_from)
                            .collect::<Result<_, _>>()?,
                    }),
                    None => return Err("a command without an operation".to_string()),
                };
                let idempotency = match wire.idempotency_key.is_empty() {
                    true => None,
                    false => Some(Idempotency {
                        key: wire.idempotency_key,
                        at_ms: wire.at_ms,
                        fingerprint: wire.fingerprint,
                    }),
                };
                Ok(Decoded {
                    command,
                    format: Format::Versioned,
                    idempotency,
                })
            }
            Some(_) => {
                let legacy = LegacyCommand::decode(data)
                    .map_err(|err| format!("undecodable command: {err}"))?;
                let command = match legacy.op {
                    Some(LegacyOp::Put(put)) => Command::Put {
                        key: put.key,
                        value: put.value,
                        precondition: None,
                    },
                    Some(LegacyOp::Delete(delete)) => Command::Delete {
                        key: delete.key,
                        precondition: None,
                    },
                    None => return Err("a command without an operation".to_string()),
                };
                Ok(Decoded {
                    command,
                    format: Format::Unversioned,
                    idempotency: None,
                })
            }
        }
    }
}

/// An entry's command, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub command: Command,
    pub format: Format,
    pub idempotency: Option<Idempotency>,
}

impl WireCommand {
    fn to_entry(&self) -> Bytes {
        let mut data = Vec::with_capacity(1 + self.encoded_len());
        data.push(FORMAT_1);
        self.encode(&mut data)
            .expect("a Vec grows to hold any encoding");
        data.into()
    }
}

/// The protobuf encoding of an operation alone: what a fingerprint hashes (prost
/// encodes the same fields the same way, always).
fn op_bytes(op: &WireOp) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(op.encoded_len());
    op.encode(&mut bytes);
    bytes
}

fn precondition(wire: Option<WirePrecondition>) -> Result<Option<Precondition>, String> {
    let Some(wire) = wire else {
        return Ok(None);
    };
    match wire.must {
        Some(WireMust::ModIndex(index)) => Ok(Some(Precondition::ModIndex(index))),
        Some(WireMust::Absent(true)) => Ok(Some(Precondition::Absent)),
        Some(WireMust::Exists(true)) => Ok(Some(Precondition::Exists)),
        Some(WireMust::Absent(false) | WireMust::Exists(false)) | None => {
            Err("a precondition without a condition".to_string())
        }
    }
}

impl From<Precondition> for WirePrecondition {
    fn from(precondition: Precondition) -> WirePrecondition {
        let must = match precondition {
            Precondition::ModIndex(index) => WireMust::ModIndex(index),
            Precondition::Absent => WireMust::Absent(true),
            Precondition::Exists => WireMust::Exists(true),
        };
        WirePrecondition { must: Some(must) }
    }
}

impl From<&Compare> for WireCompare {
    fn from(compare: &Compare) -> WireCompare {
        let target = match &compare.target {
            Target::Value(value) => WireTarget::Value(value.clone()),
            Target::Version(version) => WireTarget::Version(*version),
            Target::ModIndex(index) => WireTarget::ModIndex(*index),
        };
        WireCompare {
            key: compare.key.clone(),
            target: Some(target),
        }
    }
}

impl TryFrom<WireCompare> for Compare {
    type Error = String;
    fn try_from(wire: WireCompare) -> Result<Compare, String> {
        let target = match wire.target {
            Some(WireTarget::Value(value)) => Target::Value(value),
            Some(WireTarget::Version(version)) => Target::Version(version),
            Some(WireTarget::ModIndex(index)) => Target::ModIndex(index),
            None => return Err("a comparison without a target".to_string()),
        };
        Ok(Compare {
            key: wire.key,
            target,
        })
    }
}

impl From<&TxnOp> for WireTxnOp {
    fn from(op: &TxnOp) -> WireTxnOp {
        let op = match op {
            TxnOp::Put { key, value } => WireTxnOpKind::Put(WireKeyValue {
                key: key.clone(),
                value: value.clone(),
            }),
            TxnOp::Delete { key } => WireTxnOpKind::Delete(WireKey { key: key.clone() }),
        };
        WireTxnOp { op: Some(op) }
    }
}

impl TryFrom<WireTxnOp> for TxnOp {
    type Error = String;
    fn try_from(wire: WireTxnOp) -> Result<TxnOp, String> {
        match wire.op {
            Some(WireTxnOpKind::Put(put)) => Ok(TxnOp::Put {
                key: put.key,
                value: put.value,
            }),
            Some(WireTxnOpKind::Delete(delete)) => Ok(TxnOp::Delete { key: delete.key }),
            None => Err("a transaction write without an operation".to_string()),
        }
    }
}

// Format 1 on the wire. Field numbers are forever: add, never renumber or reuse.

#[derive(Clone, PartialEq, prost::Message)]
struct WireCommand {
    #[prost(oneof = "WireOp", tags = "1, 2, 3")]
    op: Option<WireOp>,
    /// Empty: none. See [`Idempotency`].
    #[prost(string, tag = "4")]
    idempotency_key: String,
    #[prost(uint64, tag = "5")]
    at_ms: u64,
    #[prost(fixed64, tag = "6")]
    fingerprint: u64,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum WireOp {
    #[prost(message, tag = "1")]
    Put(WirePut),
    #[prost(message, tag = "2")]
    Delete(WireDelete),
    #[prost(message, tag = "3")]
    Txn(WireTxn),
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireTxn {
    #[prost(message, repeated, tag = "1")]
    compares: Vec<WireCompare>,
    #[prost(message, repeated, tag = "2")]
    success: Vec<WireTxnOp>,
    #[prost(message, repeated, tag = "3")]
    failure: Vec<WireTxnOp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireCompare {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(oneof = "WireTarget", tags = "2, 3, 4")]
    target: Option<WireTarget>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum WireTarget {
    #[prost(string, tag = "2")]
    Value(String),
    #[prost(uint64, tag = "3")]
    Version(u64),
    #[prost(uint64, tag = "4")]
    ModIndex(u64),
}

/// A write of a transaction: a put (key, value) or a delete (key), spelled as the
/// format before spells its Put and Delete.
#[derive(Clone, PartialEq, prost::Message)]
struct WireTxnOp {
    #[prost(oneof = "WireTxnOpKind", tags = "1, 2")]
    op: Option<WireTxnOpKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum WireTxnOpKind {
    #[prost(message, tag = "1")]
    Put(WireKeyValue),
    #[prost(message, tag = "2")]
    Delete(WireKey),
}

#[derive(Clone, PartialEq, prost::Message)]
struct WirePut {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
    #[prost(message, optional, tag = "3")]
    precondition: Option<WirePrecondition>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireDelete {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    precondition: Option<WirePrecondition>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WirePrecondition {
    #[prost(oneof = "WireMust", tags = "1, 2, 3")]
    must: Option<WireMust>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum WireMust {
    #[prost(uint64, tag = "1")]
    ModIndex(u64),
    #[prost(bool, tag = "2")]
    Absent(bool),
    #[prost(bool, tag = "3")]
    Exists(bool),
}

// The format before: `distraft.v1.Command` of the client proto as it was, holding the
// client's own Put and Delete requests. Read only.

#[derive(Clone, PartialEq, prost::Message)]
struct LegacyCommand {
    #[prost(oneof = "LegacyOp", tags = "1, 2")]
    op: Option<LegacyOp>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum LegacyOp {
    #[prost(message, tag = "1")]
    Put(WireKeyValue),
    #[prost(message, tag = "2")]
    Delete(WireKey),
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireKeyValue {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireKey {
    #[prost(string, tag = "1")]
    key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let commands = [
            Command::Put {
                key: "k".into(),
                value: "v".into(),
                precondition: None,
            },
            Command::Put {
                key: "".into(),
                value: "".into(),
                precondition: Some(Precondition::Absent),
            },
            Command::Put {
                key: "k".into(),
                value: "ü".into(),
                precondition: Some(Precondition::ModIndex(0)),
            },
            Command::Delete {
                key: "k".into(),
                precondition: Some(Precondition::ModIndex(u64::MAX)),
            },
            Command::Delete {
                key: "k".into(),
                precondition: Some(Precondition::Exists),
            },
            Command::Delete {
                key: "k".into(),
                precondition: None,
            },
            Command::Txn(Txn::default()),
            Command::Txn(Txn {
                compares: vec![
                    Compare {
                        key: "a".into(),
                        target: Target::Value("x".into()),
                    },
                    Compare {
                        key: "b".into(),
                        target: Target::Version(0),
                    },
                    Compare {
                        key: "c".into(),
                        target: Target::ModIndex(9),
                    },
                ],
                success: vec![
                    TxnOp::Put {
                        key: "a".into(),
                        value: "y".into(),
                    },
                    TxnOp::Delete { key: "c".into() },
                ],
                failure: vec![TxnOp::Delete { key: "a".into() }],
            }),
        ];
        for command in commands {
            let data = command.encode();
            assert_eq!(data[0], FORMAT_1);
            assert_eq!(
                Command::decode(&data),
                Ok(plain(command.clone(), Format::Versioned))
            );
            let data = command.encode_idempotent("retry-1", 77);
            let decoded = Command::decode(&data).unwrap();
            assert_eq!(
                (decoded.command, decoded.format),
                (command, Format::Versioned)
            );
            let idempotency = decoded.idempotency.unwrap();
            assert_eq!(
                (idempotency.key.as_str(), idempotency.at_ms),
                ("retry-1", 77)
            );
        }
    }

    fn plain(command: Command, format: Format) -> Decoded {
        Decoded {
            command,
            format,
            idempotency: None,
        }
    }

    /// The same request has the same fingerprint whenever and under whatever key it is
    /// sent; a different one (another value, another precondition) has another.
    #[test]
    fn fingerprints_tell_requests_apart() {
        let fingerprint = |command: &Command, key: &str, at_ms: u64| {
            let data = command.encode_idempotent(key, at_ms);
            Command::decode(&data)
                .unwrap()
                .idempotency
                .unwrap()
                .fingerprint
        };
        let put = |value: &str, precondition| Command::Put {
            key: "k".into(),
            value: value.into(),
            precondition,
        };
        let a = fingerprint(&put("v", None), "x", 1);
        assert_eq!(a, fingerprint(&put("v", None), "y", 99));
        assert_ne!(a, fingerprint(&put("w", None), "x", 1));
        assert_ne!(
            a,
            fingerprint(&put("v", Some(Precondition::Absent)), "x", 1)
        );
        let delete = Command::Delete {
            key: "k".into(),
            precondition: None,
        };
        assert_ne!(a, fingerprint(&delete, "x", 1));
    }

    /// Bytes exactly as the version before wrote them (a `distraft.v1.Command` with a
    /// PutRequest / DeleteRequest), spelled out, so that no change of ours can alter
    /// what they mean.
    #[test]
    fn entries_of_the_format_before_are_read() {
        // field 1 (put), length 7: field 1 "ab", field 2 "c".
        let put = [0x0a, 0x07, 0x0a, 0x02, b'a', b'b', 0x12, 0x01, b'c'];
        assert_eq!(
            Command::decode(&put),
            Ok(plain(
                Command::Put {
                    key: "ab".into(),
                    value: "c".into(),
                    precondition: None
                },
                Format::Unversioned
            ))
        );
        // field 2 (delete): field 1 "ab".
        let delete = [0x12, 0x04, 0x0a, 0x02, b'a', b'b'];
        assert_eq!(
            Command::decode(&delete),
            Ok(plain(
                Command::Delete {
                    key: "ab".into(),
                    precondition: None
                },
                Format::Unversioned
            ))
        );
    }

    #[test]
    fn what_is_not_a_command_is_refused() {
        for bad in [
            &[][..],
            &[0xff, 0xff, 0xff],
            &[FORMAT_1],
            &[FORMAT_1, 0xff],
            // Format 1, a Put whose precondition names no condition.
            &[FORMAT_1, 0x0a, 0x02, 0x1a, 0x00],
            // Only an unknown field: no operation.
            &[0x1a, 0x00],
        ] {
            assert!(Command::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn preconditions() {
        use Precondition::*;
        assert!(ModIndex(5).holds(Some(5)));
        assert!(!ModIndex(5).holds(Some(6)));
        assert!(!ModIndex(0).holds(None));
        assert!(Absent.holds(None) && !Absent.holds(Some(1)));
        assert!(Exists.holds(Some(0)) && !Exists.holds(None));
    }
}
