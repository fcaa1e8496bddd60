//! The replicated state machine: a map from key to value, changed only by applying
//! committed log entries, and saved to / loaded from snapshot images.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::Arc;

use prost::Message as _;

use crate::proto::v1::{command::Op, Command, DeleteRequest, PutRequest};
use crate::raft::{ConfChange, NodeId};
use crate::registry::Record;

/// Marks the start of a snapshot image, so that a foreign file is rejected early.
/// Image 02 added the member table; 01 (pairs only) is still read.
const IMAGE_MAGIC: &[u8; 8] = b"DKVIMG02";
const IMAGE_MAGIC_V1: &[u8; 8] = b"DKVIMG01";
/// Bounds the member table an image may claim (as the snapshot header bounds its
/// member lists), so that a damaged count cannot make loading loop for long.
const MAX_IMAGE_MEMBERS: u64 = 1 << 16;
/// A corrupt length must not make loading allocate without bound.
const MAX_IMAGE_FIELD_BYTES: u32 = 256 * 1024 * 1024;

/// What applying one log entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The leader's no-op entry: nothing to apply.
    Noop,
    /// A membership change: its member's record is in the member table.
    Membership,
    Put,
    Delete {
        existed: bool,
    },
    /// The entry held no valid command. Every replica skips it alike, so the replicas
    /// stay identical; the proposer is told why.
    Rejected(String),
}

/// Loading a snapshot image failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("reading the snapshot image: {0}")]
    Io(#[from] io::Error),
    #[error("the snapshot image is malformed: {0}")]
    Malformed(String),
}

/// The key-value state machine, with an order-independent digest of its contents kept
/// up to date on every change, so that replicas can be compared cheaply.
///
/// Copy-on-write, so that a snapshot costs no copy: [`Kv::capture`] shares `base` with
/// the snapshot thread, and while it is shared, changes go to `delta`; they are folded
/// into `base` by the first change after the snapshot thread let go of it.
#[derive(Debug, Default, Clone)]
pub struct Kv {
    base: Arc<Pairs>,
    /// Changes not in `base` (`None`: deleted); empty unless `base` is shared.
    delta: BTreeMap<String, Option<String>>,
    len: usize,
    /// The sum of key and value bytes: what the quota limits (`state_bytes`).
    bytes: u64,
    digest: u64,
    /// Every member ever added by a membership change, by id (see `registry.rs`: the
    /// address book of the members the bootstrap list does not name).
    members: BTreeMap<NodeId, Record>,
}

/// A key and its value in one allocation, key first: for the short keys and values a
/// store mostly holds, half the memory of a `(String, String)` pair (one heap block
/// instead of two, each at least 32 bytes with glibc, and 24 bytes in the tree instead
/// of 48). The state machine's pairs are most of a node's memory.
#[derive(Clone, Debug)]
struct Pair {
    text: Box<str>,
    key_len: usize,
}

impl Pair {
    fn new(key: &str, value: &str) -> Pair {
        let mut text = String::with_capacity(key.len() + value.len());
        text.push_str(key);
        text.push_str(value);
        Pair {
            text: text.into_boxed_str(),
            key_len: key.len(),
        }
    }

    fn key(&self) -> &str {
        &self.text[..self.key_len]
    }

    fn value(&self) -> &str {
        &self.text[self.key_len..]
    }
}

/// Pairs are ordered, compared and looked up by key alone.
impl Borrow<str> for Pair {
    fn borrow(&self) -> &str {
        self.key()
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Pair) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Pair {}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Pair) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pair {
    fn cmp(&self, other: &Pair) -> Ordering {
        self.key().cmp(other.key())
    }
}

/// Key → value, ordered by key, stored as [`Pair`]s.
#[derive(Clone, Debug, Default)]
struct Pairs(BTreeSet<Pair>);

impl Pairs {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(Pair::value)
    }

    fn contains_key(&self, key: &str) -> bool {
        self.0.contains(key)
    }

    fn insert(&mut self, key: &str, value: &str) {
        self.0.replace(Pair::new(key, value));
    }

    fn remove(&mut self, key: &str) {
        self.0.remove(key);
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(Pair::key)
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|pair| (pair.key(), pair.value()))
    }
}

/// The contents of a [`Kv`] at one point, shared with it: write it out with
/// [`KvImage::write`] on any thread while the `Kv` goes on changing.
#[derive(Debug, Clone)]
pub struct KvImage {
    map: Arc<Pairs>,
    digest: u64,
    members: Vec<Record>,
}

impl KvImage {
    /// Streams the contents as a snapshot image: magic (`DKVIMG02`), the member
    /// count (u64), then per member its id (u64) and record (length u32, the JSON of
    /// [`Record::encode`]); the pair count (u64), then per pair key length (u32), key,
    /// value length (u32), value; and finally the digest (u64), all little-endian.
    /// Image 01 was the same without the member table.
    pub fn write(&self, out: impl Write) -> io::Result<()> {
        write_image(self, out)
    }
}

impl PartialEq for Kv {
    fn eq(&self, other: &Kv) -> bool {
        // Equal sizes, and every key this one has or had the same in the other.
        self.len == other.len
            && self.digest == other.digest
            && self.members == other.members
            && (self
                .base
                .keys()
                .chain(self.delta.keys().map(String::as_str)))
            .all(|k| self.get(k) == other.get(k))
    }
}

impl Eq for Kv {}

impl Kv {
    pub fn new() -> Kv {
        Kv::default()
    }

    /// Encodes a command for a log entry.
    pub fn encode(op: Op) -> bytes::Bytes {
        Command { op: Some(op) }.encode_to_vec().into()
    }

    /// Encodes a Put command.
    pub fn put_command(key: String, value: String) -> bytes::Bytes {
        Kv::encode(Op::Put(PutRequest { key, value }))
    }

    /// Encodes a Delete command.
    pub fn delete_command(key: String) -> bytes::Bytes {
        Kv::encode(Op::Delete(DeleteRequest { key }))
    }

    /// Applies the command of one committed entry of kind `Normal`.
    pub fn apply(&mut self, data: &[u8]) -> Applied {
        let command = match Command::decode(data) {
            Ok(command) => command,
            Err(err) => return Applied::Rejected(format!("undecodable command: {err}")),
        };
        match command.op {
            Some(Op::Put(PutRequest { key, value })) => {
                self.insert(key, value);
                Applied::Put
            }
            Some(Op::Delete(DeleteRequest { key })) => {
                let existed = self.remove(&key);
                Applied::Delete { existed }
            }
            None => Applied::Rejected("command without an operation".to_string()),
        }
    }

    /// Applies the change of one committed entry of kind `ConfChange`: its member's
    /// record goes into the member table (kept after a removal: ids are never reused).
    pub fn apply_conf_change(&mut self, data: &[u8]) -> Applied {
        let record = ConfChange::decode(data)
            .and_then(|(change, context)| Record::decode(change.id(), context));
        match record {
            Ok(record) => {
                // The first record of a member is its record (the one its addition
                // carried); later changes of it carry the same member.
                self.members.entry(record.member.id).or_insert(record);
                Applied::Membership
            }
            Err(reason) => Applied::Rejected(reason),
        }
    }

    /// The member table: every member a membership change ever added.
    pub fn members(&self) -> impl Iterator<Item = &Record> {
        self.members.values()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        match self.delta.get(key) {
            Some(changed) => changed.as_deref(),
            None => self.base.get(key),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The size of the state as the quota counts it: the sum of key and value bytes
    /// (not the memory or the snapshot file, which add a few bytes per pair).
    pub fn state_bytes(&self) -> u64 {
        self.bytes
    }

    /// What [`Kv::state_bytes`] would be after putting a value of `value_bytes` at
    /// `key` (replacing the value it has, if any).
    pub fn bytes_after_put(&self, key: &str, value_bytes: usize) -> u64 {
        let old = match self.get(key) {
            Some(old) => (key.len() + old.len()) as u64,
            None => 0,
        };
        self.bytes - old + (key.len() + value_bytes) as u64
    }

    /// A digest of the contents (not of the history), as 16 hex digits.
    pub fn digest_hex(&self) -> String {
        format!("{:016x}", self.digest)
    }

    fn insert(&mut self, key: String, value: String) {
        self.bytes = self.bytes_after_put(&key, value.len());
        match self.get(&key) {
            Some(old) => self.digest = self.digest.wrapping_sub(pair_hash(&key, old)),
            None => self.len += 1,
        }
        self.digest = self.digest.wrapping_add(pair_hash(&key, &value));
        match self.writable_base() {
            Some(base) => base.insert(&key, &value),
            None => {
                self.delta.insert(key, Some(value));
            }
        }
    }

    fn remove(&mut self, key: &str) -> bool {
        let Some(old) = self.get(key) else {
            return false;
        };
        let old_bytes = (key.len() + old.len()) as u64;
        self.digest = self.digest.wrapping_sub(pair_hash(key, old));
        self.bytes -= old_bytes;
        self.len -= 1;
        if let Some(base) = self.writable_base() {
            base.remove(key);
        } else if self.base.contains_key(key) {
            self.delta.insert(key.to_string(), None);
        } else {
            self.delta.remove(key);
        }
        true
    }

    /// `base`, up to date, if no snapshot shares it any more (else changes go to
    /// `delta`). The fold costs one map operation per change made while it was shared.
    fn writable_base(&mut self) -> Option<&mut Pairs> {
        let base = Arc::get_mut(&mut self.base)?;
        for (key, change) in std::mem::take(&mut self.delta) {
            match change {
                Some(value) => base.insert(&key, &value),
                None => base.remove(&key),
            }
        }
        Some(base)
    }

    /// The contents now, for a snapshot: no copy, only the changes made while the
    /// previous image was still shared are folded in first (one map operation each);
    /// if that image is still held (abandoned), the map is copied once.
    pub fn capture(&mut self) -> KvImage {
        Arc::make_mut(&mut self.base);
        let _ = self.writable_base();
        KvImage {
            map: self.base.clone(),
            digest: self.digest,
            members: self.members.values().cloned().collect(),
        }
    }

    /// Loads a state machine from an image written by [`KvImage::write`], checking its
    /// shape and digest.
    pub fn read_image(input: impl Read) -> Result<Kv, KvError> {
        let mut input = BufReader::with_capacity(256 * 1024, input);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        let mut kv = Kv::new();
        if &magic == IMAGE_MAGIC {
            kv.members = read_members(&mut input)?;
        } else if &magic != IMAGE_MAGIC_V1 {
            return Err(KvError::Malformed(
                "not a distraft key-value image".to_string(),
            ));
        }
        let count = read_u64(&mut input)?;
        for _ in 0..count {
            let key = read_field(&mut input)?;
            let value = read_field(&mut input)?;
            kv.insert(key, value);
        }
        if kv.len() as u64 != count {
            return Err(KvError::Malformed("duplicate keys".to_string()));
        }
        let digest = read_u64(&mut input)?;
        if digest != kv.digest {
            return Err(KvError::Malformed(format!(
                "digest {digest:016x} does not match the contents ({:016x})",
                kv.digest
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
}

fn write_image(image: &KvImage, out: impl Write) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(256 * 1024, out);
    out.write_all(IMAGE_MAGIC)?;
    out.write_all(&(image.members.len() as u64).to_le_bytes())?;
    for record in &image.members {
        out.write_all(&record.member.id.to_le_bytes())?;
        let encoded = String::from_utf8(record.encode()).unwrap_or_default();
        write_field(&mut out, &encoded)?;
    }
    out.write_all(&(image.map.len() as u64).to_le_bytes())?;
    for (key, value) in image.map.iter() {
        write_field(&mut out, key)?;
        write_field(&mut out, value)?;
    }
    out.write_all(&image.digest.to_le_bytes())?;
    out.flush()
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

/// A stable 64-bit hash of one pair (FNV-1a over the length-prefixed key and value, then
/// a 64-bit finalizer so that the sum over pairs mixes well). Summing per-pair hashes
/// makes the digest independent of insertion order and cheap to update.
fn pair_hash(key: &str, value: &str) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    let key_len = (key.len() as u64).to_le_bytes();
    for byte in key_len.iter().chain(key.as_bytes()).chain(value.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    // splitmix64's finalizer.
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(kv: &mut Kv, key: &str, value: &str) -> Applied {
        kv.apply(&Kv::put_command(key.to_string(), value.to_string()))
    }

    fn delete(kv: &mut Kv, key: &str) -> Applied {
        kv.apply(&Kv::delete_command(key.to_string()))
    }

    #[test]
    fn put_get_delete() {
        let mut kv = Kv::new();
        assert!(matches!(kv.apply(&[]), Applied::Rejected(_)));
        assert_eq!(put(&mut kv, "a", "1"), Applied::Put);
        assert_eq!(put(&mut kv, "a", "2"), Applied::Put);
        assert_eq!(kv.get("a"), Some("2"));
        assert_eq!(delete(&mut kv, "a"), Applied::Delete { existed: true });
        assert_eq!(delete(&mut kv, "a"), Applied::Delete { existed: false });
        assert_eq!(kv.get("a"), None);
        assert!(kv.is_empty());
    }

    #[test]
    fn state_bytes_count_keys_and_values() {
        let mut kv = Kv::new();
        assert_eq!(kv.state_bytes(), 0);
        put(&mut kv, "ab", "123");
        assert_eq!(kv.state_bytes(), 5);
        assert_eq!(
            kv.bytes_after_put("ab", 1),
            3,
            "a replaced value no longer counts"
        );
        assert_eq!(kv.bytes_after_put("c", 4), 10);
        put(&mut kv, "ab", "1");
        put(&mut kv, "c", "4444");
        assert_eq!(kv.state_bytes(), 8);
        delete(&mut kv, "ab");
        delete(&mut kv, "missing");
        assert_eq!(kv.state_bytes(), 5);
        // A snapshot image restores the count.
        let mut image = Vec::new();
        kv.capture().write(&mut image).unwrap();
        assert_eq!(Kv::read_image(&image[..]).unwrap().state_bytes(), 5);
    }

    #[test]
    fn garbage_is_rejected_without_changing_state() {
        let mut kv = Kv::new();
        put(&mut kv, "k", "v");
        let before = kv.clone();
        assert!(matches!(
            kv.apply(&[0xff, 0xff, 0xff]),
            Applied::Rejected(_)
        ));
        // A well-formed message without an operation (only an unknown field).
        assert!(matches!(kv.apply(&[0x1a, 0x00]), Applied::Rejected(_)));
        assert_eq!(kv, before);
    }

    #[test]
    fn digest_depends_on_contents_not_history() {
        let mut one = Kv::new();
        put(&mut one, "a", "1");
        put(&mut one, "b", "2");
        let mut two = Kv::new();
        put(&mut two, "b", "x");
        put(&mut two, "c", "3");
        put(&mut two, "a", "1");
        assert_ne!(one.digest_hex(), two.digest_hex());
        put(&mut two, "b", "2");
        delete(&mut two, "c");
        assert_eq!(one.digest_hex(), two.digest_hex());
        assert_eq!(Kv::new().digest_hex(), "0000000000000000");
        delete(&mut two, "a");
        delete(&mut two, "b");
        assert_eq!(two.digest_hex(), "0000000000000000");
        // Moving bytes between key and value changes the digest.
        let (mut x, mut y) = (Kv::new(), Kv::new());
        put(&mut x, "ab", "c");
        put(&mut y, "a", "bc");
        assert_ne!(x.digest_hex(), y.digest_hex());
    }

    #[test]
    fn image_round_trip() {
        let mut kv = Kv::new();
        for i in 0..1000 {
            put(&mut kv, &format!("key {i} ü"), &"v".repeat(i % 37));
        }
        put(&mut kv, "", "empty key survives too");
        let mut image = Vec::new();
        kv.capture().write(&mut image).unwrap();
        let loaded = Kv::read_image(image.as_slice()).unwrap();
        assert_eq!(loaded, kv);

        let mut empty = Vec::new();
        Kv::new().capture().write(&mut empty).unwrap();
        assert_eq!(Kv::read_image(empty.as_slice()).unwrap(), Kv::new());
    }

    #[test]
    fn a_captured_image_does_not_change_and_costs_no_copy() {
        let mut kv = Kv::new();
        for i in 0..100 {
            put(&mut kv, &format!("k{i}"), "before");
        }
        let before = kv.clone();
        let image = kv.capture();
        assert!(Arc::ptr_eq(&image.map, &kv.base), "shared, not copied");
        // Changes while the image is held: overwrite, delete, add, add then delete.
        put(&mut kv, "k1", "after");
        delete(&mut kv, "k2");
        put(&mut kv, "new", "after");
        put(&mut kv, "gone", "x");
        delete(&mut kv, "gone");
        let mut expected = before.clone();
        put(&mut expected, "k1", "after");
        delete(&mut expected, "k2");
        put(&mut expected, "new", "after");
        assert_eq!(kv, expected);
        assert_eq!((kv.len(), kv.get("k2"), kv.get("gone")), (100, None, None));
        assert_eq!(kv.digest_hex(), expected.digest_hex());
        let mut held = Vec::new();
        image.write(&mut held).unwrap();
        assert_eq!(Kv::read_image(held.as_slice()).unwrap(), before);
        let mut merged = Vec::new();
        // A copy made while the image is held captures the changes as well.
        kv.clone().capture().write(&mut merged).unwrap();
        assert_eq!(Kv::read_image(merged.as_slice()).unwrap(), expected);

        // Released, the next change folds the others into the map itself.
        drop(image);
        put(&mut kv, "k3", "after");
        put(&mut expected, "k3", "after");
        assert!(kv.delta.is_empty());
        assert_eq!(kv, expected);
        assert_eq!(kv.capture().map.len(), 100);
    }

    #[test]
    fn damaged_images_are_refused() {
        let mut kv = Kv::new();
        put(&mut kv, "alpha", "one");
        put(&mut kv, "beta", "two");
        let mut image = Vec::new();
        kv.capture().write(&mut image).unwrap();

        // Every truncation fails.
        for cut in 0..image.len() {
            assert!(Kv::read_image(&image[..cut]).is_err(), "cut at {cut}");
        }
        // Every single-byte change fails (magic, lengths, contents or digest).
        for at in 0..image.len() {
            let mut bad = image.clone();
            bad[at] ^= 0x01;
            assert!(Kv::read_image(bad.as_slice()).is_err(), "flip at {at}");
        }
        let mut longer = image.clone();
        longer.push(0);
        assert!(Kv::read_image(longer.as_slice()).is_err());
    }
}
