//! The snapshot image of the state machine, and its format.
//!
//! Image 03 (written): magic `DKVIMG03`; the member count (u64), then per member its
//! id (u64) and record (a field: the JSON of [`Record::encode`]); the pair count
//! (u64), then per pair its key and value (fields) and `create_index`, `mod_index`,
//! `version` (LEB128 varints: 7 bytes or so for the three, where fixed u64s would take
//! 24 — for the small pairs a store mostly holds, as much again as the pair itself);
//! the section count (u64), then per section its tag (u32) and its bytes (length u64,
//! then the bytes); and last the digest (u64). A field is its length (u32) and its
//! UTF-8 bytes; every other number is little-endian.
//!
//! Sections are where later state goes: a reader refuses a tag it does not know,
//! loudly, rather than drop state it cannot read. Section 1 is the idempotency table
//! (`idempotency.rs`), as the protobuf message [`WireTable`] below; an image without
//! it has an empty table. It is outside the digest, which sums the pairs alone (the
//! snapshot file's own checksum guards the whole image).
//!
//! Images 02 (the same up to the pairs, which had no versions, and no sections) and 01
//! (no member table either) are still read: their keys get versions of zero, as the
//! entries that wrote them do ([`super::Format::Unversioned`]).

use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::Arc;

use prost::Message as _;

use super::idempotency::{Frozen, Remembered, Table};
use super::{unversioned_pair_hash, Applied, Kv, KvError, Pairs, TxnResult, Versioned, Versions};
use crate::raft::NodeId;
use crate::registry::Record;

const IMAGE_MAGIC: &[u8; 8] = b"DKVIMG03";
const IMAGE_MAGIC_V2: &[u8; 8] = b"DKVIMG02";
const IMAGE_MAGIC_V1: &[u8; 8] = b"DKVIMG01";
/// Bounds the member table an image may claim (as the snapshot header bounds its
/// member lists), so that a damaged count cannot make loading loop for long.
const MAX_IMAGE_MEMBERS: u64 = 1 << 16;
/// A corrupt length must not make loading allocate without bound.
const MAX_IMAGE_FIELD_BYTES: u32 = 256 * 1024 * 1024;

/// The contents of a [`Kv`] at one point, shared with it: write it out with
/// [`KvImage::write`] on any thread while the `Kv` goes on changing.
#[derive(Debug, Clone)]
pub struct KvImage {
    pub(super) map: Arc<Pairs>,
    digest: u64,
    members: Vec<Record>,
    idempotency: Frozen,
}

/// The tag of the idempotency table's section.
const SECTION_IDEMPOTENCY: u32 = 1;

impl KvImage {
    pub(super) fn new(
        map: Arc<Pairs>,
        digest: u64,
        members: Vec<Record>,
        idempotency: Frozen,
    ) -> KvImage {
        KvImage {
            map,
            digest,
            members,
            idempotency,
        }
    }

    /// Streams the contents as a snapshot image (image 03, described above).
    pub fn write(&self, out: impl Write) -> io::Result<()> {
        let mut out = BufWriter::with_capacity(256 * 1024, out);
        out.write_all(IMAGE_MAGIC)?;
        out.write_all(&(self.members.len() as u64).to_le_bytes())?;
        for record in &self.members {
            out.write_all(&record.member.id.to_le_bytes())?;
            let encoded = String::from_utf8(record.encode()).unwrap_or_default();
            write_field(&mut out, &encoded)?;
        }
        out.write_all(&(self.map.len() as u64).to_le_bytes())?;
        for pair in self.map.iter() {
            write_field(&mut out, pair.key())?;
            write_field(&mut out, pair.value())?;
            let versions = pair.versions;
            for number in [versions.create_index, versions.mod_index, versions.version] {
                write_varint(&mut out, number)?;
            }
        }
        // One section: the idempotency table, when it holds anything.
        match self.idempotency.len() {
            0 => out.write_all(&0u64.to_le_bytes())?,
            _ => {
                let section = WireTable::of(&self.idempotency).encode_to_vec();
                out.write_all(&1u64.to_le_bytes())?;
                out.write_all(&SECTION_IDEMPOTENCY.to_le_bytes())?;
                out.write_all(&(section.len() as u64).to_le_bytes())?;
                out.write_all(&section)?;
            }
        }
        out.write_all(&self.digest.to_le_bytes())?;
        out.flush()
    }
}

/// Loads a state machine from an image, checking its shape and digest.
pub(super) fn read(input: impl Read) -> Result<Kv, KvError> {
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    let version = match &magic {
        IMAGE_MAGIC => 3,
        IMAGE_MAGIC_V2 => 2,
        IMAGE_MAGIC_V1 => 1,
        _ => {
            return Err(KvError::Malformed(
                "not a distraft key-value image".to_string(),
            ))
        }
    };
    let mut kv = Kv::new();
    if version >= 2 {
        kv.members = read_members(&mut input)?;
    }
    let count = read_u64(&mut input)?;
    // What an image without versions summed in its digest.
    let mut unversioned_digest = 0u64;
    for _ in 0..count {
        let key = read_field(&mut input)?;
        let value = read_field(&mut input)?;
        let versions = match version {
            3 => Versions {
                create_index: read_varint(&mut input)?,
                mod_index: read_varint(&mut input)?,
                version: read_varint(&mut input)?,
            },
            _ => {
                unversioned_digest =
                    unversioned_digest.wrapping_add(unversioned_pair_hash(&key, &value));
                Versions::default()
            }
        };
        kv.insert(key, value, versions);
    }
    if kv.len() as u64 != count {
        return Err(KvError::Malformed("duplicate keys".to_string()));
    }
    if version == 3 {
        read_sections(&mut input, &mut kv)?;
    }
    let digest = read_u64(&mut input)?;
    let expected = match version {
        3 => kv.digest,
        _ => unversioned_digest,
    };
    if digest != expected {
        return Err(KvError::Malformed(format!(
            "digest {digest:016x} does not match the contents ({expected:016x})"
        )));
    }
    let mut rest = [0u8; 1];
    if input.read(&mut rest)? != 0 {
        return Err(KvError::Malformed(
            "trailing bytes after the digest".to_string(),
        ));
    }
    Ok(kv)
}

/// What [`copy_with_members`] found in an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageSummary {
    pub keys: u64,
    /// The key and value bytes of every pair (as `state_bytes` counts them).
    pub state_bytes: u64,
}

/// Copies an image from `input` to `output` with its member table replaced by
/// `members`, checking everything as [`read`] does (shape, order, digest, sections)
/// but holding one pair at a time: a restore of a large state needs no more memory
/// than its largest pair. An image of an older format is loaded whole and written
/// anew (images 01 and 02 come only from old snapshots, which were small).
pub fn copy_with_members(
    input: impl Read,
    output: impl Write,
    members: &[Record],
) -> Result<ImageSummary, KvError> {
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let mut out = BufWriter::with_capacity(256 * 1024, output);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic != IMAGE_MAGIC {
        // The whole older image, as a state machine (a chained reader puts the magic
        // back in front).
        let mut kv = read(io::Cursor::new(magic).chain(input))?;
        kv.members = members.iter().map(|r| (r.member.id, r.clone())).collect();
        let summary = ImageSummary {
            keys: kv.len() as u64,
            state_bytes: kv.state_bytes(),
        };
        kv.capture().write(&mut out)?;
        return Ok(summary);
    }
    out.write_all(IMAGE_MAGIC)?;
    // The old table is checked, then replaced.
    read_members(&mut input)?;
    out.write_all(&(members.len() as u64).to_le_bytes())?;
    for record in members {
        out.write_all(&record.member.id.to_le_bytes())?;
        write_field(&mut out, &String::from_utf8_lossy(&record.encode()))?;
    }
    let count = read_u64(&mut input)?;
    out.write_all(&count.to_le_bytes())?;
    let mut summary = ImageSummary::default();
    let mut digest = 0u64;
    let mut previous: Option<String> = None;
    for _ in 0..count {
        let key = read_field(&mut input)?;
        let value = read_field(&mut input)?;
        let versions = Versions {
            create_index: read_varint(&mut input)?,
            mod_index: read_varint(&mut input)?,
            version: read_varint(&mut input)?,
        };
        // Written in key order: anything else is damage (a duplicate among them).
        if previous.as_ref().is_some_and(|p| *p >= key) {
            return Err(KvError::Malformed("keys out of order or twice".to_string()));
        }
        digest = digest.wrapping_add(super::pair_hash(&key, &value, versions));
        summary.keys += 1;
        summary.state_bytes += (key.len() + value.len()) as u64;
        write_field(&mut out, &key)?;
        write_field(&mut out, &value)?;
        for number in [versions.create_index, versions.mod_index, versions.version] {
            write_varint(&mut out, number)?;
        }
        previous = Some(key);
    }
    // The sections, checked by loading them into an empty state machine, then
    // written as they came.
    let mut sections = Vec::new();
    let mut tee = TeeReader {
        input: &mut input,
        copy: &mut sections,
    };
    read_sections(&mut tee, &mut Kv::new())?;
    out.write_all(&sections)?;
    let stored = read_u64(&mut input)?;
    if stored != digest {
        return Err(KvError::Malformed(format!(
            "digest {stored:016x} does not match the contents ({digest:016x})"
        )));
    }
    out.write_all(&stored.to_le_bytes())?;
    let mut rest = [0u8; 1];
    if input.read(&mut rest)? != 0 {
        return Err(KvError::Malformed(
            "trailing bytes after the digest".to_string(),
        ));
    }
    out.flush()?;
    Ok(summary)
}

/// Reads through to `input`, keeping a copy of every byte read.
struct TeeReader<'a, R> {
    input: &'a mut R,
    copy: &'a mut Vec<u8>,
}

impl<R: Read> Read for TeeReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        self.copy.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// The sections of an image, into `kv`: the idempotency table; any other tag is
/// refused, as is a section twice.
fn read_sections(input: &mut impl Read, kv: &mut Kv) -> Result<(), KvError> {
    let count = read_u64(input)?;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..count {
        let mut tag = [0u8; 4];
        input.read_exact(&mut tag)?;
        let tag = u32::from_le_bytes(tag);
        if tag != SECTION_IDEMPOTENCY {
            return Err(KvError::Malformed(format!(
                "section {tag} is unknown (written by a newer version of distraft?)"
            )));
        }
        if !seen.insert(tag) {
            return Err(KvError::Malformed(format!("section {tag} twice")));
        }
        let len = read_u64(input)?;
        if len > u64::from(MAX_IMAGE_FIELD_BYTES) {
            return Err(KvError::Malformed(format!(
                "section {tag} claims {len} bytes"
            )));
        }
        let mut bytes = vec![0u8; len as usize];
        input.read_exact(&mut bytes)?;
        let wire = WireTable::decode(bytes.as_slice())
            .map_err(|err| KvError::Malformed(format!("the idempotency table: {err}")))?;
        kv.idempotency = wire
            .into_table()
            .map_err(|reason| KvError::Malformed(format!("the idempotency table: {reason}")))?;
    }
    Ok(())
}

// Section 1, the idempotency table. Field numbers are forever.

#[derive(Clone, PartialEq, prost::Message)]
struct WireTable {
    #[prost(uint64, tag = "1")]
    now_ms: u64,
    /// In the order remembered (the order they are forgotten in).
    #[prost(message, repeated, tag = "2")]
    entries: Vec<WireRemembered>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireRemembered {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(fixed64, tag = "2")]
    fingerprint: u64,
    #[prost(uint64, tag = "3")]
    at_ms: u64,
    #[prost(uint64, tag = "4")]
    index: u64,
    #[prost(oneof = "WireOutcome", tags = "5, 6, 7, 8")]
    outcome: Option<WireOutcome>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum WireOutcome {
    #[prost(message, tag = "5")]
    Put(WireVersions),
    #[prost(bool, tag = "6")]
    Delete(bool),
    #[prost(message, tag = "7")]
    PreconditionFailed(WireCurrent),
    #[prost(message, tag = "8")]
    Txn(WireTxnOutcome),
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireVersions {
    #[prost(uint64, tag = "1")]
    create_index: u64,
    #[prost(uint64, tag = "2")]
    mod_index: u64,
    #[prost(uint64, tag = "3")]
    version: u64,
}

/// The key as a failed precondition found it (`exists` false: absent).
#[derive(Clone, PartialEq, prost::Message)]
struct WireCurrent {
    #[prost(bool, tag = "1")]
    exists: bool,
    #[prost(string, tag = "2")]
    value: String,
    #[prost(message, optional, tag = "3")]
    versions: Option<WireVersions>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireTxnOutcome {
    #[prost(bool, tag = "1")]
    succeeded: bool,
    #[prost(message, repeated, tag = "2")]
    results: Vec<WireTxnResult>,
}

/// A put (with versions) or a delete (with `existed`) of a transaction.
#[derive(Clone, PartialEq, prost::Message)]
struct WireTxnResult {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    put: Option<WireVersions>,
    #[prost(bool, tag = "3")]
    existed: bool,
}

impl From<Versions> for WireVersions {
    fn from(v: Versions) -> WireVersions {
        WireVersions {
            create_index: v.create_index,
            mod_index: v.mod_index,
            version: v.version,
        }
    }
}

impl From<WireVersions> for Versions {
    fn from(v: WireVersions) -> Versions {
        Versions {
            create_index: v.create_index,
            mod_index: v.mod_index,
            version: v.version,
        }
    }
}

impl WireTable {
    fn of(table: &Frozen) -> WireTable {
        let entries = table
            .entries()
            .map(|(key, remembered)| WireRemembered {
                key: key.to_string(),
                fingerprint: remembered.fingerprint,
                at_ms: remembered.at_ms,
                index: remembered.index,
                outcome: wire_outcome(&remembered.outcome),
            })
            .collect();
        WireTable {
            now_ms: table.now_ms(),
            entries,
        }
    }

    fn into_table(self) -> Result<Table, String> {
        let mut entries = Vec::with_capacity(self.entries.len());
        for wire in self.entries {
            let outcome = match wire.outcome {
                Some(WireOutcome::Put(versions)) => Applied::Put {
                    versions: versions.into(),
                },
                Some(WireOutcome::Delete(existed)) => Applied::Delete { existed },
                Some(WireOutcome::PreconditionFailed(current)) => Applied::PreconditionFailed {
                    current: current.exists.then(|| Versioned {
                        value: current.value,
                        versions: current.versions.unwrap_or_default().into(),
                    }),
                },
                Some(WireOutcome::Txn(txn)) => Applied::Txn {
                    succeeded: txn.succeeded,
                    results: txn
                        .results
                        .into_iter()
                        .map(|result| match result.put {
                            Some(versions) => TxnResult::Put {
                                key: result.key,
                                versions: versions.into(),
                            },
                            None => TxnResult::Delete {
                                key: result.key,
                                existed: result.existed,
                            },
                        })
                        .collect(),
                },
                None => return Err(format!("key {:?} has no outcome", wire.key)),
            };
            let remembered = Remembered {
                fingerprint: wire.fingerprint,
                at_ms: wire.at_ms,
                index: wire.index,
                outcome,
            };
            entries.push((wire.key, remembered));
        }
        Table::restore(self.now_ms, entries)
    }
}

/// A remembered outcome on the wire: only writes' outcomes are ever remembered.
fn wire_outcome(outcome: &Applied) -> Option<WireOutcome> {
    match outcome {
        Applied::Put { versions } => Some(WireOutcome::Put((*versions).into())),
        Applied::Delete { existed } => Some(WireOutcome::Delete(*existed)),
        Applied::PreconditionFailed { current } => {
            Some(WireOutcome::PreconditionFailed(match current {
                Some(current) => WireCurrent {
                    exists: true,
                    value: current.value.clone(),
                    versions: Some(current.versions.into()),
                },
                None => WireCurrent::default(),
            }))
        }
        Applied::Txn { succeeded, results } => Some(WireOutcome::Txn(WireTxnOutcome {
            succeeded: *succeeded,
            results: results
                .iter()
                .map(|result| match result {
                    TxnResult::Put { key, versions } => WireTxnResult {
                        key: key.clone(),
                        put: Some((*versions).into()),
                        existed: false,
                    },
                    TxnResult::Delete { key, existed } => WireTxnResult {
                        key: key.clone(),
                        put: None,
                        existed: *existed,
                    },
                })
                .collect(),
        })),
        Applied::Noop
        | Applied::Membership
        | Applied::Rejected(_)
        | Applied::Replayed { .. }
        | Applied::IdempotencyMismatch { .. } => None,
    }
}

/// The member table of an image, each record checked as the wire checks it.
fn read_members(input: &mut impl Read) -> Result<BTreeMap<NodeId, Record>, KvError> {
    let count = read_u64(input)?;
    if count > MAX_IMAGE_MEMBERS {
        return Err(KvError::Malformed(format!(
            "{count} members (at most {MAX_IMAGE_MEMBERS})"
        )));
    }
    let mut members = BTreeMap::new();
    for _ in 0..count {
        let id = read_u64(input)?;
        let record = Record::decode(id, read_field(input)?.as_bytes())
            .map_err(|reason| KvError::Malformed(format!("member {id}: {reason}")))?;
        if id == 0 || members.insert(id, record).is_some() {
            return Err(KvError::Malformed(format!(
                "member id {id} is invalid or twice"
            )));
        }
    }
    Ok(members)
}

fn write_field(out: &mut impl Write, field: &str) -> io::Result<()> {
    let len = u32::try_from(field.len())
        .ok()
        .filter(|len| *len <= MAX_IMAGE_FIELD_BYTES)
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "field too large for an image")
        })?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(field.as_bytes())
}

/// LEB128: seven bits a byte, low first, the high bit set on every byte but the last.
fn write_varint(out: &mut impl Write, mut number: u64) -> io::Result<()> {
    let mut bytes = [0u8; 10];
    let mut len = 0;
    loop {
        let low = (number & 0x7f) as u8;
        number >>= 7;
        if number == 0 {
            bytes[len] = low;
            len += 1;
            break;
        }
        bytes[len] = low | 0x80;
        len += 1;
    }
    out.write_all(&bytes[..len])
}

/// A varint of [`write_varint`]; more than ten bytes, or more than 64 bits, is damage.
fn read_varint(input: &mut impl Read) -> Result<u64, KvError> {
    let mut number = 0u64;
    for shift in (0..64).step_by(7) {
        let mut byte = [0u8; 1];
        input.read_exact(&mut byte)?;
        let low = u64::from(byte[0] & 0x7f);
        if shift == 63 && low > 1 {
            break;
        }
        number |= low << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(number);
        }
    }
    Err(KvError::Malformed(
        "a version number is damaged".to_string(),
    ))
}

fn read_u64(input: &mut impl Read) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    input.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

fn read_field(input: &mut impl Read) -> Result<String, KvError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_IMAGE_FIELD_BYTES {
        return Err(KvError::Malformed(format!(
            "field length {len} is implausible"
        )));
    }
    let mut bytes = vec![0u8; len as usize];
    input.read_exact(&mut bytes)?;
    String::from_utf8(bytes).map_err(|_| KvError::Malformed("a field is not UTF-8".to_string()))
}
