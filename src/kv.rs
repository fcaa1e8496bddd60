//! The replicated state machine: a map from key to value, changed only by applying
//! committed log entries, and saved to / loaded from snapshot images.

use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Write};

use prost::Message as _;

use crate::proto::v1::{command::Op, Command, DeleteRequest, PutRequest};

/// Marks the start of a snapshot image, so that a foreign file is rejected early.
const IMAGE_MAGIC: &[u8; 8] = b"DKVIMG01";
/// A corrupt length must not make loading allocate without bound.
const MAX_IMAGE_FIELD_BYTES: u32 = 256 * 1024 * 1024;

/// What applying one log entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The leader's no-op entry (empty data).
    Noop,
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
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Kv {
    map: BTreeMap<String, String>,
    digest: u64,
}

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

    /// Applies the data of one committed entry.
    pub fn apply(&mut self, data: &[u8]) -> Applied {
        if data.is_empty() {
            return Applied::Noop;
        }
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

    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A digest of the contents (not of the history), as 16 hex digits.
    pub fn digest_hex(&self) -> String {
        format!("{:016x}", self.digest)
    }

    fn insert(&mut self, key: String, value: String) {
        let added = pair_hash(&key, &value);
        if let Some(old) = self.map.get(&key) {
            self.digest = self.digest.wrapping_sub(pair_hash(&key, old));
        }
        self.digest = self.digest.wrapping_add(added);
        self.map.insert(key, value);
    }

    fn remove(&mut self, key: &str) -> bool {
        match self.map.remove(key) {
            Some(old) => {
                self.digest = self.digest.wrapping_sub(pair_hash(key, &old));
                true
            }
            None => false,
        }
    }

    /// Streams the contents as a snapshot image:
    /// magic, count (u64), then per pair key length (u32), key, value length (u32),
    /// value, and finally the digest (u64), all little-endian. Pairs are written
    /// straight from the map, so no second copy of the state is made.
    pub fn write_image(&self, out: impl Write) -> io::Result<()> {
        let mut out = BufWriter::with_capacity(256 * 1024, out);
        self.encode_image(&mut out)?;
        out.flush()
    }

    /// The snapshot image of [`Kv::write_image`], in memory: the state at this point,
    /// to be written to disk by another thread while this one goes on applying. One
    /// pass over the map into a buffer sized up front (no regrowth); it needs as much
    /// memory again as the image for as long as it is kept.
    pub fn image(&self) -> io::Result<Vec<u8>> {
        let pairs: usize = self.map.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        let mut image = Vec::with_capacity(IMAGE_MAGIC.len() + 8 + pairs + 8);
        self.encode_image(&mut image)?;
        Ok(image)
    }

    fn encode_image(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(IMAGE_MAGIC)?;
        out.write_all(&(self.map.len() as u64).to_le_bytes())?;
        for (key, value) in &self.map {
            write_field(out, key)?;
            write_field(out, value)?;
        }
        out.write_all(&self.digest.to_le_bytes())
    }

    /// Loads a state machine from an image written by [`Kv::write_image`], checking its
    /// shape and digest.
    pub fn read_image(input: impl Read) -> Result<Kv, KvError> {
        let mut input = BufReader::with_capacity(256 * 1024, input);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != IMAGE_MAGIC {
            return Err(KvError::Malformed(
                "not a distraft key-value image".to_string(),
            ));
        }
        let count = read_u64(&mut input)?;
        let mut kv = Kv::new();
        for _ in 0..count {
            let key = read_field(&mut input)?;
            let value = read_field(&mut input)?;
            kv.insert(key, value);
        }
        if kv.map.len() as u64 != count {
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
        assert_eq!(kv.apply(&[]), Applied::Noop);
        assert_eq!(put(&mut kv, "a", "1"), Applied::Put);
        assert_eq!(put(&mut kv, "a", "2"), Applied::Put);
        assert_eq!(kv.get("a"), Some("2"));
        assert_eq!(delete(&mut kv, "a"), Applied::Delete { existed: true });
        assert_eq!(delete(&mut kv, "a"), Applied::Delete { existed: false });
        assert_eq!(kv.get("a"), None);
        assert!(kv.is_empty());
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
        kv.write_image(&mut image).unwrap();
        let loaded = Kv::read_image(image.as_slice()).unwrap();
        assert_eq!(loaded, kv);
        // The in-memory image is the same bytes, in a buffer of exactly its size.
        let in_memory = kv.image().unwrap();
        assert_eq!(in_memory, image);
        assert_eq!(in_memory.capacity(), in_memory.len());

        let mut empty = Vec::new();
        Kv::new().write_image(&mut empty).unwrap();
        assert_eq!(Kv::read_image(empty.as_slice()).unwrap(), Kv::new());
    }

    #[test]
    fn damaged_images_are_refused() {
        let mut kv = Kv::new();
        put(&mut kv, "alpha", "one");
        put(&mut kv, "beta", "two");
        let mut image = Vec::new();
        kv.write_image(&mut image).unwrap();

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
