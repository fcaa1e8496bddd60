//! The replicated state machine: a map from key to value and versions, changed only by
//! applying committed log entries, and saved to / loaded from snapshot images.
//!
//! - `command.rs`: the commands the log stores, and their format.
//! - `image.rs`: the snapshot image, and its format.
//! - `changes.rs`: the changes applied, recorded for watches (`src/watch/`).

mod changes;
mod command;
mod idempotency;
mod image;

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;

pub use changes::Change;
pub use command::{
    Command, Compare, Decoded, Format, Idempotency, Precondition, Target, Txn, TxnOp,
};
pub use idempotency::{Remembered, Seen};
pub use image::{copy_with_members, ImageSummary, KvImage};

use crate::raft::{ConfChange, Entry, EntryKind, NodeId};
use crate::registry::Record;

/// The versions of a key, as etcd keeps them: the index of the entry that created it
/// (since it last did not exist), the index of the entry that last wrote it, and how
/// many writes it has had since it was created. Writes made before versions existed
/// count as index 0 and version 0 (see [`Format::Unversioned`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub create_index: u64,
    pub mod_index: u64,
    pub version: u64,
}

/// A key's value and versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: String,
    pub versions: Versions,
}

/// Which keys a listing asks for: those in `[start, end)` that begin with `prefix`,
/// after `after` (a continuation: the last key of the page before), in key order, at
/// most `limit` of them and about `max_bytes` of keys and values (at least one key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub prefix: String,
    pub start: String,
    /// `None`: no end.
    pub end: Option<String>,
    pub after: Option<String>,
    pub limit: usize,
    pub max_bytes: usize,
    /// Leave the values out (their sizes still count toward nothing).
    pub keys_only: bool,
}

/// One key of a listing (`value` empty when the listing asked for keys only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub value: String,
    pub versions: Versions,
}

/// A page of a listing: its keys, and whether more keys follow the last one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub keys: Vec<Listed>,
    pub more: bool,
}

/// What applying one log entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The leader's no-op entry: nothing to apply.
    Noop,
    /// A membership change: its member's record is in the member table.
    Membership,
    /// The key's versions after the put.
    Put {
        versions: Versions,
    },
    Delete {
        existed: bool,
    },
    /// The write's precondition did not hold of the key: nothing changed. `current` is
    /// the key as it is (`None`: absent).
    PreconditionFailed {
        current: Option<Versioned>,
    },
    /// A transaction: which branch ran, and what each of its writes did, in order.
    Txn {
        succeeded: bool,
        results: Vec<TxnResult>,
    },
    /// The entry held no valid command. Every replica skips it alike, so the replicas
    /// stay identical; the proposer is told why.
    Rejected(String),
    /// A retry of a write with the same idempotency key: nothing changed; `index` and
    /// `outcome` are the first write's.
    Replayed {
        index: u64,
        outcome: Box<Applied>,
    },
    /// The write's idempotency key was used by a different request: nothing changed.
    IdempotencyMismatch {
        key: String,
    },
}

/// What one write of a transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnResult {
    Put { key: String, versions: Versions },
    Delete { key: String, existed: bool },
}

/// Loading a snapshot image failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("reading the snapshot image: {0}")]
    Io(#[from] io::Error),
    #[error("the snapshot image is malformed: {0}")]
    Malformed(String),
}

/// The key-value state machine, with an order-independent digest of its contents
/// (values and versions) kept up to date on every change, so that replicas can be
/// compared cheaply.
///
/// Copy-on-write, so that a snapshot costs no copy: [`Kv::capture`] shares `base` with
/// the snapshot thread, and while it is shared, changes go to `delta`; they are folded
/// into `base` by the first change after the snapshot thread let go of it.
#[derive(Debug, Default, Clone)]
pub struct Kv {
    base: Arc<Pairs>,
    /// Changes not in `base` (`None`: deleted); empty unless `base` is shared.
    delta: BTreeMap<String, Option<Versioned>>,
    len: usize,
    /// The sum of key and value bytes: what the quota limits (`state_bytes`).
    bytes: u64,
    digest: u64,
    /// Every member ever added by a membership change, by id (see `registry.rs`: the
    /// address book of the members the bootstrap list does not name).
    members: BTreeMap<NodeId, Record>,
    /// The outcomes of recent writes that carried an idempotency key.
    idempotency: idempotency::Table,
    /// The changes made since they were last taken, for watches (`changes.rs`);
    /// `None`: not recorded (nobody takes them).
    changes: Option<Vec<Change>>,
}

/// A key, its value and its versions in one allocation, key first: for the short keys
/// and values a store mostly holds, far less memory than separate strings (one heap
/// block instead of two, each at least 32 bytes with glibc). The state machine's pairs
/// are most of a node's memory.
#[derive(Clone, Debug)]
struct Pair {
    text: Box<str>,
    key_len: usize,
    versions: Versions,
}

impl Pair {
    fn new(key: &str, value: &str, versions: Versions) -> Pair {
        let mut text = String::with_capacity(key.len() + value.len());
        text.push_str(key);
        text.push_str(value);
        Pair {
            text: text.into_boxed_str(),
            key_len: key.len(),
            versions,
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

/// Key → value and versions, ordered by key, stored as [`Pair`]s.
#[derive(Clone, Debug, Default)]
struct Pairs(BTreeSet<Pair>);

impl Pairs {
    fn get(&self, key: &str) -> Option<(&str, Versions)> {
        self.0.get(key).map(|pair| (pair.value(), pair.versions))
    }

    fn contains_key(&self, key: &str) -> bool {
        self.0.contains(key)
    }

    fn insert(&mut self, key: &str, value: &str, versions: Versions) {
        self.0.replace(Pair::new(key, value, versions));
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

    fn iter(&self) -> impl Iterator<Item = &Pair> {
        self.0.iter()
    }
}

impl PartialEq for Kv {
    fn eq(&self, other: &Kv) -> bool {
        // Equal sizes, and every key this one has or had the same in the other.
        self.len == other.len
            && self.digest == other.digest
            && self.members == other.members
            && self.idempotency == other.idempotency
            && (self
                .base
                .keys()
                .chain(self.delta.keys().map(String::as_str)))
            .all(|k| self.entry(k) == other.entry(k))
    }
}

impl Eq for Kv {}

impl Kv {
    pub fn new() -> Kv {
        Kv::default()
    }

    /// Encodes an unconditional Put command for a log entry.
    pub fn put_command(key: String, value: String) -> bytes::Bytes {
        Command::Put {
            key,
            value,
            precondition: None,
        }
        .encode()
    }

    /// Encodes an unconditional Delete command for a log entry.
    pub fn delete_command(key: String) -> bytes::Bytes {
        Command::Delete {
            key,
            precondition: None,
        }
        .encode()
    }

    /// Applies the command of the committed entry of kind `Normal` at `index`. A write
    /// with an idempotency key already remembered is not applied again: a retry gets
    /// the first outcome, a different request under the key is refused.
    pub fn apply(&mut self, index: u64, data: &[u8]) -> Applied {
        let Decoded {
            command,
            format,
            idempotency,
        } = match Command::decode(data) {
            Ok(decoded) => decoded,
            Err(reason) => return Applied::Rejected(reason),
        };
        let Some(idempotency) = idempotency else {
            return self.apply_command(index, command, format);
        };
        match self.idempotency.check(&idempotency) {
            Seen::New => {
                let applied = self.apply_command(index, command, format);
                self.idempotency
                    .remember(idempotency, index, applied.clone());
                applied
            }
            Seen::Retry { index, outcome } => Applied::Replayed {
                index,
                outcome: Box::new(outcome),
            },
            Seen::Mismatch => Applied::IdempotencyMismatch {
                key: idempotency.key,
            },
        }
    }

    fn apply_command(&mut self, index: u64, command: Command, format: Format) -> Applied {
        let at = match format {
            Format::Versioned => index,
            Format::Unversioned => 0,
        };
        match command {
            Command::Put {
                key,
                value,
                precondition,
            } => {
                if let Some(failed) = self.unmet(&key, precondition) {
                    return failed;
                }
                let versions = self.versions_after_put(&key, at);
                self.insert(key, value, versions);
                Applied::Put { versions }
            }
            Command::Delete { key, precondition } => {
                if let Some(failed) = self.unmet(&key, precondition) {
                    return failed;
                }
                let existed = self.remove(&key);
                Applied::Delete { existed }
            }
            Command::Txn(txn) => {
                // Every comparison sees the state before any write of the branch.
                let succeeded = txn.compares.iter().all(|compare| self.holds(compare));
                let writes = match succeeded {
                    true => txn.success,
                    false => txn.failure,
                };
                let applied =
                    match crate::plant::active(crate::plant::Plant::TxnAppliesPartOfABranch) {
                        true => 1,
                        false => writes.len(),
                    };
                let results = writes
                    .into_iter()
                    .take(applied)
                    .map(|write| match write {
                        TxnOp::Put { key, value } => {
                            let versions = self.versions_after_put(&key, at);
                            self.insert(key.clone(), value, versions);
                            TxnResult::Put { key, versions }
                        }
                        TxnOp::Delete { key } => {
                            let existed = self.remove(&key);
                            TxnResult::Delete { key, existed }
                        }
                    })
                    .collect();
                Applied::Txn { succeeded, results }
            }
        }
    }

    /// Whether a transaction's comparison holds of the state now.
    fn holds(&self, compare: &Compare) -> bool {
        let current = self.entry(&compare.key);
        match (&compare.target, current) {
            (Target::Value(expected), Some((value, _))) => expected == value,
            (Target::Version(expected), Some((_, versions))) => *expected == versions.version,
            (Target::ModIndex(expected), Some((_, versions))) => *expected == versions.mod_index,
            (Target::Version(expected), None) => *expected == 0,
            (Target::Value(_) | Target::ModIndex(_), None) => false,
        }
    }

    /// The failure of a write whose precondition does not hold, if it does not.
    fn unmet(&self, key: &str, precondition: Option<Precondition>) -> Option<Applied> {
        let precondition = precondition?;
        let current = self.entry(key);
        let mut compared = current.map(|(_, versions)| versions.mod_index);
        if crate::plant::active(crate::plant::Plant::CasComparesStaleVersion) {
            // The version the key had before its last write, as a replica that read
            // its versions from an old copy would see them.
            compared = compared.map(|mod_index| mod_index.saturating_sub(1));
        }
        match precondition.holds(compared) {
            true => None,
            false => Some(Applied::PreconditionFailed {
                current: current.map(|(value, versions)| Versioned {
                    value: value.to_string(),
                    versions,
                }),
            }),
        }
    }

    /// The versions of `key` once written at index `at` (0: a write without versions).
    fn versions_after_put(&self, key: &str, at: u64) -> Versions {
        if at == 0 {
            return Versions::default();
        }
        match self.entry(key) {
            Some((_, old)) => Versions {
                create_index: old.create_index,
                mod_index: at,
                version: old.version + 1,
            },
            None => Versions {
                create_index: at,
                mod_index: at,
                version: 1,
            },
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

    /// Applies a committed entry of any kind: a command, the no-op of a new leader, or
    /// a membership change (whose member's record the member table keeps).
    pub fn apply_entry(&mut self, entry: &Entry) -> Applied {
        match entry.kind {
            EntryKind::Normal => self.apply(entry.index, &entry.data),
            EntryKind::Noop => Applied::Noop,
            // In force since it reached the log (`raft/node/conf.rs`).
            EntryKind::ConfChange => self.apply_conf_change(&entry.data),
        }
    }

    /// How many idempotency keys the state machine remembers now.
    pub fn idempotency_keys(&self) -> usize {
        self.idempotency.len()
    }

    /// The member table: every member a membership change ever added.
    pub fn members(&self) -> impl Iterator<Item = &Record> {
        self.members.values()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entry(key).map(|(value, _)| value)
    }

    /// The value and versions of `key`, if it exists.
    pub fn versioned(&self, key: &str) -> Option<Versioned> {
        self.entry(key).map(|(value, versions)| Versioned {
            value: value.to_string(),
            versions,
        })
    }

    /// A page of the keys `query` asks for, as of now.
    pub fn list(&self, query: &ListQuery) -> ListPage {
        use std::ops::Bound;
        // The first key that may be listed: the largest of the lower bounds.
        let mut from = Bound::Included(query.start.as_str());
        if query.prefix.as_str() > query.start.as_str() {
            from = Bound::Included(query.prefix.as_str());
        }
        if let Some(after) = query.after.as_deref() {
            let later = match from {
                Bound::Included(lower) => after >= lower,
                _ => true,
            };
            if later {
                from = Bound::Excluded(after);
            }
        }
        let in_range = |key: &str| {
            key.starts_with(query.prefix.as_str())
                && query.end.as_deref().is_none_or(|end| key < end)
        };
        // The base, with the changes a snapshot in progress keeps aside merged in
        // (a change overrides the base's pair of its key; `None`: deleted).
        let mut base = self
            .base
            .0
            .range::<str, _>((from, Bound::Unbounded))
            .map(|pair| (pair.key(), Some((pair.value(), pair.versions))))
            .peekable();
        let mut delta = self
            .delta
            .range::<str, _>((from, Bound::Unbounded))
            .map(|(key, change)| {
                let change = change.as_ref().map(|v| (v.value.as_str(), v.versions));
                (key.as_str(), change)
            })
            .peekable();
        let mut page = ListPage::default();
        let mut bytes = 0usize;
        loop {
            let next = match (base.peek(), delta.peek()) {
                (None, None) => break,
                (Some(_), None) => base.next(),
                (None, Some(_)) => delta.next(),
                (Some((b, _)), Some((d, _))) => match (*b).cmp(*d) {
                    Ordering::Less => base.next(),
                    Ordering::Greater => delta.next(),
                    Ordering::Equal => {
                        base.next();
                        delta.next()
                    }
                },
            };
            let Some((key, Some((value, versions)))) = next else {
                continue;
            };
            if !in_range(key) {
                // Keys come in order: past the range, nothing further is in it.
                break;
            }
            if page.keys.len() >= query.limit.max(1)
                || (!page.keys.is_empty() && bytes >= query.max_bytes)
            {
                page.more = true;
                break;
            }
            bytes += key.len() + if query.keys_only { 0 } else { value.len() };
            page.keys.push(Listed {
                key: key.to_string(),
                value: match query.keys_only {
                    true => String::new(),
                    false => value.to_string(),
                },
                versions,
            });
        }
        page
    }

    fn entry(&self, key: &str) -> Option<(&str, Versions)> {
        match self.delta.get(key) {
            Some(changed) => changed.as_ref().map(|v| (v.value.as_str(), v.versions)),
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

    fn insert(&mut self, key: String, value: String, versions: Versions) {
        self.bytes = self.bytes_after_put(&key, value.len());
        match self.entry(&key) {
            Some((old, old_versions)) => {
                self.digest = self.digest.wrapping_sub(pair_hash(&key, old, old_versions))
            }
            None => self.len += 1,
        }
        self.digest = self.digest.wrapping_add(pair_hash(&key, &value, versions));
        self.record_put(&key, &value, versions);
        match self.writable_base() {
            Some(base) => base.insert(&key, &value, versions),
            None => {
                self.delta.insert(key, Some(Versioned { value, versions }));
            }
        }
    }

    fn remove(&mut self, key: &str) -> bool {
        let Some((old, old_versions)) = self.entry(key) else {
            return false;
        };
        let old_bytes = (key.len() + old.len()) as u64;
        self.digest = self.digest.wrapping_sub(pair_hash(key, old, old_versions));
        self.bytes -= old_bytes;
        self.len -= 1;
        self.record_delete(key);
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
                Some(Versioned { value, versions }) => base.insert(&key, &value, versions),
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
        KvImage::new(
            self.base.clone(),
            self.digest,
            self.members.values().cloned().collect(),
            self.idempotency.freeze(),
        )
    }

    /// Loads a state machine from an image written by [`KvImage::write`], checking its
    /// shape and digest.
    pub fn read_image(input: impl io::Read) -> Result<Kv, KvError> {
        image::read(input)
    }
}

/// A stable 64-bit hash of one pair with its versions (FNV-1a over the length-prefixed
/// key, the value and the versions, then a 64-bit finalizer so that the sum over pairs
/// mixes well). Summing per-pair hashes makes the digest independent of insertion
/// order and cheap to update.
fn pair_hash(key: &str, value: &str, versions: Versions) -> u64 {
    let key_len = (key.len() as u64).to_le_bytes();
    let numbers =
        [versions.create_index, versions.mod_index, versions.version].map(u64::to_le_bytes);
    finalize(fnv1a(
        key_len
            .iter()
            .chain(key.as_bytes())
            .chain(value.as_bytes())
            .chain(numbers.iter().flatten()),
    ))
}

/// The pair hash of images 01 and 02, which held no versions: what their digest sums.
fn unversioned_pair_hash(key: &str, value: &str) -> u64 {
    let key_len = (key.len() as u64).to_le_bytes();
    finalize(fnv1a(
        key_len.iter().chain(key.as_bytes()).chain(value.as_bytes()),
    ))
}

fn fnv1a<'a>(bytes: impl Iterator<Item = &'a u8>) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// splitmix64's finalizer.
fn finalize(mut hash: u64) -> u64 {
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests;
