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
//! Sections are where later state goes (none is defined yet): a reader refuses a tag
//! it does not know, loudly, rather than drop state it cannot read.
//!
//! Images 02 (the same up to the pairs, which had no versions, and no sections) and 01
//! (no member table either) are still read: their keys get versions of zero, as the
//! entries that wrote them do ([`super::Format::Unversioned`]).

use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::Arc;

use super::{unversioned_pair_hash, Kv, KvError, Pairs, Versions};
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
}

impl KvImage {
    pub(super) fn new(map: Arc<Pairs>, digest: u64, members: Vec<Record>) -> KvImage {
        KvImage {
            map,
            digest,
            members,
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
        // No sections yet.
        out.write_all(&0u64.to_le_bytes())?;
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
        read_sections(&mut input)?;
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

/// The sections of an image: none is known to this version, so any is refused.
fn read_sections(input: &mut impl Read) -> Result<(), KvError> {
    let count = read_u64(input)?;
    if count == 0 {
        return Ok(());
    }
    let mut tag = [0u8; 4];
    input.read_exact(&mut tag)?;
    Err(KvError::Malformed(format!(
        "section {} of {count} is unknown (written by a newer version of distraft?)",
        u32::from_le_bytes(tag)
    )))
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
