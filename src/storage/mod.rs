//! Durable storage for one node: a segmented write-ahead log (entries and hard state)
//! and snapshot files. The on-disk format and the fsync rules are in
//! `docs/storage.md`.
//!
//! The promise is the one Raft needs: when [`Storage::append`] or
//! [`Storage::finish_snapshot`] returns `Ok`, what it recorded survives a crash; and
//! [`Storage::open`] recovers exactly a prefix of what was written, refusing to start
//! (with the file and offset) rather than silently dropping a record that could have
//! been acknowledged.
//!
//! The Raft core keeps only a bounded cache of entry payloads in memory; the older
//! entries a slow follower still needs are read back with [`Storage::read_entries`],
//! through an index of where each batch record lies ([`RecordSpan`]).

pub mod identity;
mod lock;
mod record;
mod reset;
mod snapshot;
mod terms;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use crate::plant::{self, Plant};
use crate::raft::{Entry, HardState, Index, Restored, SnapshotMeta, Term};
use record::Record;
use snapshot::{SNAPSHOT_SUFFIX, TEMP_SUFFIX};
use terms::{LogTerms, SnapshotFit};

pub use lock::{DirLock, LockError, LOCK_FILE};
pub use snapshot::{SnapshotFile, SnapshotJob, SnapshotWriter};

const WAL_SUFFIX: &str = ".wal";
/// Default size past which the log rolls to a new segment.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// Where and how one node stores its state.
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// This node's WAL directory (`DISTRAFT_LOG_PATH/<name>`).
    pub log_dir: PathBuf,
    /// This node's snapshot directory (`DISTRAFT_DATA_PATH/<name>`).
    pub data_dir: PathBuf,
    /// Roll to a new WAL segment once the current one is past this size.
    pub segment_bytes: u64,
    /// Run by every snapshot writer before it makes its file durable (tests only).
    pub snapshot_hook: Option<SnapshotHook>,
    /// Run before every write and fsync of the WAL and of snapshot files (tests only):
    /// injects faults.
    pub disk_fault: Option<DiskFault>,
}

/// A test hook: called before each step of a write to disk (a WAL append, a snapshot
/// file) with that step; an error takes the place of the step's own result (the step
/// is not carried out). Lets tests fill the disk or fail an fsync at a chosen moment.
#[derive(Clone)]
pub struct DiskFault(pub Arc<DiskFaultFn>);

pub type DiskFaultFn = dyn Fn(DiskStep) -> io::Result<()> + Send + Sync;

/// The steps of a write to disk: those of a WAL append in order, then those of a
/// snapshot file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskStep {
    /// Zeros written ahead of the WAL's records: where the file grows.
    WalReserve,
    /// The record, over zeros already written.
    WalWrite,
    /// The WAL's fdatasync.
    WalSync,
    /// Bytes of a snapshot file (its header, image or trailer).
    SnapshotWrite,
    /// The snapshot file's fdatasync.
    SnapshotSync,
}

/// The injected fault's verdict on `step`: `Ok` without a hook.
fn injected(fault: &Option<DiskFault>, step: DiskStep) -> io::Result<()> {
    match fault {
        Some(DiskFault(fault)) => fault(step),
        None => Ok(()),
    }
}

impl std::fmt::Debug for DiskFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskFault")
    }
}

/// A test hook: called with the snapshot's meta just before its file is fsynced and
/// renamed; an error fails that snapshot. Lets tests hold a snapshot half-way
/// (deterministically, without timing) or make it fail.
#[derive(Clone)]
pub struct SnapshotHook(pub Arc<SnapshotHookFn>);

pub type SnapshotHookFn = dyn Fn(&SnapshotMeta) -> io::Result<()> + Send + Sync;

impl std::fmt::Debug for SnapshotHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotHook")
    }
}

impl StorageOptions {
    /// Options with the default segment size.
    pub fn new(log_dir: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> StorageOptions {
        StorageOptions {
            log_dir: log_dir.into(),
            data_dir: data_dir.into(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            snapshot_hook: None,
            disk_fault: None,
        }
    }

    /// Whether both directories have at least `bytes` available to this process (and
    /// no injected fault says the disk is full, see [`DiskFault`]).
    pub fn has_free_space(&self, bytes: u64) -> Result<bool, StorageError> {
        if injected(&self.disk_fault, DiskStep::WalReserve).is_err() {
            return Ok(false);
        }
        for dir in [&self.log_dir, &self.data_dir] {
            if fs4::available_space(dir).map_err(io_error(dir))? < bytes {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Damage that is not a torn tail: the node must not start on this data.
    #[error("corrupt storage: {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A write (never an fsync) failed for lack of space (ENOSPC): nothing was lost,
    /// as no fsync failed, but the storage is unusable until reopened once space is
    /// back (what is on disk past the last fsync is unknown until then).
    #[error("no space left on the device of {}: {source}", path.display())]
    NoSpace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A request that would break the log's invariants (a caller bug); nothing was
    /// written.
    #[error("invalid storage request: {0}")]
    Invalid(String),
    /// An earlier write or fsync failed, so what is on disk is unknown (after a failed
    /// fsync the kernel may have dropped the dirty pages): reopen to recover.
    #[error("storage is unusable after an earlier I/O failure; restart to recover")]
    Poisoned,
}

/// Wraps an I/O error with the path it happened on.
fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Wraps the error of a write (not of an fsync): a full disk is `NoSpace`.
fn write_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| match source.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StorageError::NoSpace {
            path: path.to_path_buf(),
            source,
        },
        _ => StorageError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

impl StorageError {
    /// Whether this is a full disk (or a disk quota) rather than a broken one. For a
    /// snapshot file any step may say so, even its fsync: a failed snapshot is thrown
    /// away and a later one written anew, so no failed fsync is ever trusted.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            StorageError::NoSpace { .. } => true,
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            StorageError::Corrupt { .. } | StorageError::Invalid(_) | StorageError::Poisoned => {
                false
            }
        }
    }
}

/// What [`Storage::open`] recovered.
#[derive(Debug)]
pub struct Recovered {
    /// Hard state, snapshot meta and the log entries after the snapshot.
    pub restored: Restored,
    /// The newest snapshot file, if any (its meta is `restored.snapshot`).
    pub snapshot: Option<SnapshotFile>,
}

/// One WAL file; its name is the index the log's next entry had when it was created.
#[derive(Debug)]
struct Segment {
    first_index: Index,
    path: PathBuf,
    /// Where its records end (the file may go on with zeros written ahead).
    end: u64,
}

/// Where one batch record's entries lie: enough to read them back. The entries
/// `first..=last` of the record are live (a later record may have replaced the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RecordSpan {
    first: Index,
    last: Index,
    /// The `first_index` (name) of the segment holding the record.
    segment: Index,
    /// The record's offset in that segment, and its length with the header.
    offset: u64,
    len: u64,
}

/// The records holding the log's live entries, in index order, without overlaps.
#[derive(Clone, Debug, Default)]
struct RecordIndex {
    spans: std::collections::VecDeque<RecordSpan>,
}

impl RecordIndex {
    /// A record holding entries `first..=last` was written: it replaces the entries from
    /// `first` on.
    fn add(&mut self, span: RecordSpan) {
        while let Some(back) = self.spans.back_mut() {
            if back.first >= span.first {
                self.spans.pop_back();
            } else {
                back.last = back.last.min(span.first - 1);
                break;
            }
        }
        self.spans.push_back(span);
    }

    /// Entries up to `index` are compacted away.
    fn compact(&mut self, index: Index) {
        while self.spans.front().is_some_and(|s| s.last <= index) {
            self.spans.pop_front();
        }
    }

    fn clear(&mut self) {
        self.spans.clear();
    }

    /// The position of the span holding `index`, if any.
    fn find(&self, index: Index) -> Option<usize> {
        let position = self.spans.partition_point(|s| s.last < index);
        self.spans
            .get(position)
            .filter(|s| s.first <= index)
            .map(|_| position)
    }
}

/// The active segment is filled with zeros this far ahead of its records, so that an
/// append overwrites zeros instead of growing the file. An fdatasync that must also
/// record a new file size costs a journal commit, and on a disk shared by several
/// nodes (or processes) their syncs queue for each other's commits: measured here,
/// three processes syncing 150-byte appends took about twice as long per sync as
/// when overwriting zeros. Recovery reads zeros after the last record as the end.
const ZERO_AHEAD_BYTES: u64 = 256 * 1024;

/// A node's WAL and snapshots. Single writer: one `Storage` per directory.
pub struct Storage {
    log_dir: PathBuf,
    data_dir: PathBuf,
    segment_bytes: u64,
    /// Oldest first; the last one is `active`.
    segments: Vec<Segment>,
    active: File,
    active_len: u64,
    /// The active file's length: zeros from `active_len` up to here.
    zeroed_to: u64,
    terms: LogTerms,
    /// Where the live entries' records are, for [`Storage::read_entries`].
    records: RecordIndex,
    hard_state: HardState,
    snapshot: Option<SnapshotFile>,
    /// Reused encoding buffer: one `write` per `append`.
    buf: Vec<u8>,
    poisoned: bool,
    snapshot_hook: Option<SnapshotHook>,
    disk_fault: Option<DiskFault>,
}

impl Storage {
    /// Wipes this node's log and snapshots (`DISTRAFT_RESET_LOGS=true`) but keeps its
    /// term and vote, and records the term of the wipe: until its log holds an entry
    /// of a later term the node neither votes nor campaigns (`RawNode::may_vote`;
    /// docs/storage.md, "Wiping a node"). Only distraft's own files are removed, so a
    /// misconfigured path cannot wipe anything else. Returns false when there was no
    /// data to wipe (a new node), in which case nothing changes.
    pub fn reset(opts: &StorageOptions) -> Result<bool, StorageError> {
        // The term and vote to keep: the WAL's, or those of an earlier wipe if it had
        // a later term (a wipe cut short by a crash, its WAL partly deleted). Only the
        // WAL is read, not checked against the snapshot: a half-finished wipe leaves
        // them mismatched. A damaged WAL is an error: its term and vote are unknown.
        create_dir_durably(&opts.log_dir)?;
        create_dir_durably(&opts.data_dir)?;
        let earlier = reset::read(&opts.log_dir)?;
        let replay = replay_wal(&opts.log_dir)?;
        let has_snapshot = !list_numbered(&opts.data_dir, SNAPSHOT_SUFFIX)?.is_empty();
        if replay.terms.last() == 0 && !has_snapshot && earlier.is_none() {
            return Ok(false);
        }
        let from_wal = reset::ResetRecord {
            term: replay.hard_state.term,
            vote: replay.hard_state.vote,
        };
        let record = match earlier {
            Some(earlier) if earlier.term > from_wal.term => earlier,
            _ => from_wal,
        };
        // The record first: from here on a crash leaves the wipe in force.
        reset::write(&opts.log_dir, &record)?;
        // Snapshots next: a crash half-way leaves a WAL without snapshot, which open()
        // refuses if they do not fit; a second wipe then finishes from the record.
        remove_files(&opts.data_dir, |name| {
            name.ends_with(SNAPSHOT_SUFFIX) || name.ends_with(TEMP_SUFFIX)
        })?;
        remove_files(&opts.log_dir, |name| name.ends_with(WAL_SUFFIX))?;
        Ok(true)
    }

    /// Opens the node's storage, creating the directories if missing, and recovers:
    /// newest snapshot (fully verified), then WAL replay. A torn tail of the last
    /// segment is cut off (with a warning); any other damage is an error naming the
    /// file and offset.
    pub fn open(opts: StorageOptions) -> Result<(Storage, Recovered), StorageError> {
        create_dir_durably(&opts.log_dir)?;
        create_dir_durably(&opts.data_dir)?;
        remove_files(&opts.data_dir, |name| name.ends_with(TEMP_SUFFIX))?;
        let wiped = reset::read(&opts.log_dir)?;

        let snapshot = match list_numbered(&opts.data_dir, SNAPSHOT_SUFFIX)?.last() {
            Some((_, path)) => Some(SnapshotFile::load(path)?),
            None => None,
        };
        let (snap_index, snap_term) = snapshot
            .as_ref()
            .map_or((0, 0), |s| (s.meta.index, s.meta.term));

        let mut replay = replay_wal(&opts.log_dir)?;
        let fit = replay.terms.fit(snap_index, snap_term);
        if fit == SnapshotFit::Missing {
            let path = replay
                .segments
                .first()
                .map_or(opts.log_dir.clone(), |s| s.path.clone());
            return Err(StorageError::Corrupt {
                path,
                offset: 0,
                reason: format!(
                    "the log starts after index {} but the newest snapshot ends at {snap_index}: \
                     entries in between are missing",
                    replay.terms.base()
                ),
            });
        }
        repair_torn_tail(&opts.log_dir, &mut replay)?;
        if replay.segments.is_empty() && snapshot.is_some() {
            return Err(StorageError::Corrupt {
                path: opts.log_dir.clone(),
                offset: 0,
                reason: format!(
                    "snapshot at index {snap_index} but no WAL segment: the hard state \
                     (term, vote) is missing"
                ),
            });
        }

        let (active, active_len, zeroed_to) = match replay.segments.last() {
            Some(last) => {
                let file = File::options()
                    .write(true)
                    .open(&last.path)
                    .map_err(io_error(&last.path))?;
                let len = file.metadata().map_err(io_error(&last.path))?.len();
                (file, last.end, len)
            }
            None => {
                // A new WAL: after a wipe it starts from the term and vote it kept.
                if let Some(record) = wiped {
                    replay.hard_state = HardState {
                        term: record.term,
                        vote: record.vote,
                        commit: 0,
                    };
                }
                let first_index = replay.terms.last() + 1;
                let (segment, file) =
                    create_segment(&opts.log_dir, first_index, &replay.hard_state)?;
                let end = segment.end;
                replay.segments.push(segment);
                (file, end, end)
            }
        };

        // Entries up to the snapshot are in it; a log that disagrees with it is dropped.
        let mut entries = replay.entries;
        match fit {
            SnapshotFit::Keep => {
                let covered = snap_index.saturating_sub(replay.terms.base()) as usize;
                entries.drain(..covered.min(entries.len()));
            }
            SnapshotFit::Reset | SnapshotFit::Missing => {
                warn!(
                    snapshot_index = snap_index,
                    dropped = entries.len(),
                    "the log does not match the newest snapshot: dropping it"
                );
                entries.clear();
            }
        }
        let mut storage = Storage {
            log_dir: opts.log_dir,
            data_dir: opts.data_dir,
            segment_bytes: opts.segment_bytes,
            segments: replay.segments,
            active,
            active_len,
            zeroed_to,
            terms: replay.terms,
            records: replay.records,
            hard_state: replay.hard_state,
            snapshot,
            buf: Vec::new(),
            poisoned: false,
            snapshot_hook: opts.snapshot_hook,
            disk_fault: opts.disk_fault,
        };
        // Finish whatever compaction a crash interrupted (the same rule as
        // finish_snapshot), so the WAL is clean before anything new is appended.
        storage.compact_log(snap_index, snap_term)?.delete()?;
        storage.other_snapshots()?.delete()?;

        let recovered = Recovered {
            restored: Restored {
                hard_state: storage.hard_state,
                snapshot: storage.snapshot.as_ref().map(|s| s.meta.clone()),
                entries,
                reset_term: wiped.map(|record| record.term),
            },
            snapshot: storage.snapshot.clone(),
        };
        Ok((storage, recovered))
    }

    /// Durably records one `Ready`: if `entries` starts at or before the last index,
    /// the log from there on is replaced; then the entries and the hard state. The call
    /// is one checksummed record, so a crash keeps all of it or none (the replacement
    /// is implicit in it, hence as crash-safe as the append). One write and one
    /// `fdatasync` cover the whole call: everything the driver gathered while the
    /// previous call ran shares it (group commit). Returns once durable.
    pub fn append(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        self.check_usable()?;
        if hard_state.is_none() && entries.is_empty() {
            return Ok(());
        }
        // Validate against a copy, so that nothing changes if the request is refused.
        let mut terms = self.terms.clone();
        if let Some(first) = entries.first() {
            if first.index <= terms.base() {
                return Err(StorageError::Invalid(format!(
                    "append at index {} which a snapshot already covers (up to {})",
                    first.index,
                    terms.base()
                )));
            }
        }
        for (n, entry) in entries.iter().enumerate() {
            if n > 0 && entry.index != entries[n - 1].index + 1 {
                return Err(StorageError::Invalid(format!(
                    "entries not contiguous: {} follows {}",
                    entry.index,
                    entries[n - 1].index
                )));
            }
            terms
                .append(entry.index, entry.term)
                .map_err(StorageError::Invalid)?;
        }
        self.buf.clear();
        record::encode_batch(&mut self.buf, hard_state, entries).map_err(|size| {
            StorageError::Invalid(format!("batch of {size} bytes is too large for one record"))
        })?;

        self.poison_on_error(|s| {
            if s.active_len >= s.segment_bytes {
                s.roll()?;
            }
            s.write_buf()
        })?;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            let len = self.buf.len() as u64;
            self.records.add(RecordSpan {
                first: first.index,
                last: last.index,
                segment: self.segments[self.segments.len() - 1].first_index,
                offset: self.active_len - len,
                len,
            });
        }
        self.terms = terms;
        if let Some(hs) = hard_state {
            self.hard_state = *hs;
        }
        Ok(())
    }

    /// Starts writing a snapshot image to a temp file in the data directory.
    pub fn begin_snapshot(&self, meta: SnapshotMeta) -> Result<SnapshotWriter, StorageError> {
        self.check_usable()?;
        self.check_not_stale(meta.index)?;
        SnapshotWriter::create(
            &self.data_dir,
            meta,
            self.snapshot_hook.clone(),
            self.disk_fault.clone(),
        )
    }

    /// Makes a snapshot durable (fsync file, rename into place, fsync directory), then
    /// compacts the log: entries up to the snapshot are dropped (whole segments
    /// deleted, the rest skipped on replay); if the log has no entry (index, term) —
    /// a snapshot received from the leader — the whole log is dropped and continues at
    /// `index + 1`. Older snapshot files are removed. Recovery applies the same rule,
    /// so a crash at any point in between is safe.
    pub fn finish_snapshot(
        &mut self,
        writer: SnapshotWriter,
    ) -> Result<SnapshotFile, StorageError> {
        self.check_usable()?;
        self.check_not_stale(writer.meta().index)?;
        let file = writer.commit(&self.data_dir)?;
        self.poison_on_error(|s| {
            sync_dir(&s.data_dir)?;
            s.install_snapshot(file.clone())?.delete()
        })?;
        Ok(file)
    }

    /// Prepares a snapshot of this node's own state machine, to be written by
    /// [`SnapshotJob::write`] on another thread while this storage keeps appending;
    /// then hand the file to [`Storage::adopt_snapshot`]. Touches no file.
    pub fn snapshot_job(&self, meta: SnapshotMeta) -> Result<SnapshotJob, StorageError> {
        self.check_usable()?;
        self.check_not_stale(meta.index)?;
        Ok(SnapshotJob {
            data_dir: self.data_dir.clone(),
            meta,
            hook: self.snapshot_hook.clone(),
            fault: self.disk_fault.clone(),
        })
    }

    /// Takes a snapshot file made durable by [`SnapshotJob::write`] as the current
    /// snapshot and compacts the log up to it, as [`Storage::finish_snapshot`] does,
    /// except that the files this makes useless (older snapshots, dead segments) are
    /// returned for the caller to delete off its hot path. `None`, and the file is
    /// deleted, when a snapshot at least as new was installed meanwhile (one received
    /// from the leader).
    pub fn adopt_snapshot(&mut self, file: SnapshotFile) -> Result<Option<Garbage>, StorageError> {
        self.check_usable()?;
        if let Some(current) = &self.snapshot {
            if file.meta.index <= current.meta.index {
                if file.path != current.path {
                    remove_if_present(&file.path)?;
                }
                return Ok(None);
            }
        }
        self.poison_on_error(|s| s.install_snapshot(file)).map(Some)
    }

    /// Reads back the entries from `from` up to `to` (inclusive), stopping once they
    /// hold more than `max_bytes` (by [`Entry::size`]) but with at least one. Each
    /// record read is one bounded `pread` of its known length, checksum verified, and
    /// every entry is checked against the index and term the log has for it: anything
    /// else is [`StorageError::Corrupt`].
    pub fn read_entries(
        &self,
        from: Index,
        to: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.check_usable()?;
        if from <= self.terms.base() || to > self.terms.last() || from > to {
            return Err(StorageError::Invalid(format!(
                "read of entries {from}..={to} outside the log ({}..={})",
                self.terms.base() + 1,
                self.terms.last()
            )));
        }
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        let mut next = from;
        let mut position = self.records.find(from);
        while next <= to {
            let span = position
                .and_then(|p| self.records.spans.get(p))
                .filter(|s| s.first <= next && next <= s.last)
                .copied()
                .ok_or_else(|| {
                    StorageError::Invalid(format!("no WAL record is known to hold entry {next}"))
                })?;
            let segment = self
                .segments
                .iter()
                .find(|s| s.first_index == span.segment)
                .ok_or_else(|| {
                    StorageError::Invalid(format!(
                        "entry {next} is in segment {} which is gone",
                        span.segment
                    ))
                })?;
            let corrupt = |reason: String| StorageError::Corrupt {
                path: segment.path.clone(),
                offset: span.offset,
                reason,
            };
            for entry in read_batch(&segment.path, span.offset, span.len)? {
                if entry.index < next || entry.index > span.last.min(to) {
                    continue;
                }
                if entry.index != next || self.terms.term(next) != Some(entry.term) {
                    return Err(corrupt(format!(
                        "read back entry {}/{} where entry {next}/{:?} was expected",
                        entry.index,
                        entry.term,
                        self.terms.term(next)
                    )));
                }
                bytes += entry.size();
                if !out.is_empty() && bytes > max_bytes {
                    return Ok(out);
                }
                out.push(entry);
                next += 1;
            }
            if next <= span.last.min(to) {
                return Err(corrupt(format!("the record lacks entry {next}")));
            }
            position = position.map(|p| p + 1);
        }
        Ok(out)
    }

    pub fn latest_snapshot(&self) -> Option<&SnapshotFile> {
        self.snapshot.as_ref()
    }

    /// The index of the last entry (the snapshot's index if the log after it is empty).
    pub fn last_index(&self) -> Index {
        self.terms.last()
    }

    /// Where the WAL's records end: the active segment and its length in records (the
    /// file itself goes on with zeros written ahead, see [`ZERO_AHEAD_BYTES`]).
    pub fn wal_end(&self) -> (&Path, u64) {
        let active = &self.segments[self.segments.len() - 1];
        (&active.path, active.end)
    }

    /// The last hard state recorded.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn check_usable(&self) -> Result<(), StorageError> {
        if self.poisoned {
            Err(StorageError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn check_not_stale(&self, index: Index) -> Result<(), StorageError> {
        let current = self.snapshot.as_ref().map_or(0, |s| s.meta.index);
        if index < current {
            return Err(StorageError::Invalid(format!(
                "snapshot at {index} is older than the current one at {current}"
            )));
        }
        Ok(())
    }

    /// Runs `f`; if it fails with an I/O error, what is on disk is unknown, so the
    /// storage refuses further use.
    fn poison_on_error<T>(
        &mut self,
        f: impl FnOnce(&mut Storage) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let result = f(self);
        if matches!(
            result,
            Err(StorageError::Io { .. } | StorageError::NoSpace { .. })
        ) {
            self.poisoned = true;
        }
        result
    }

    /// Writes `buf` to the active segment and fdatasyncs it.
    fn write_buf(&mut self) -> Result<(), StorageError> {
        let segment = self.segments.len() - 1;
        let path = &self.segments[segment].path;
        let end = self.active_len + self.buf.len() as u64;
        let fault = |step| injected(&self.disk_fault, step);
        if end > self.zeroed_to {
            // Zeros first, then the record over them; one fdatasync covers both. The
            // zeros allocate the blocks, so a full disk shows here, before the record.
            let zero_to = end.max(self.zeroed_to + ZERO_AHEAD_BYTES);
            fault(DiskStep::WalReserve)
                .and_then(|()| write_zeros(&self.active, self.zeroed_to, zero_to))
                .map_err(write_error(path))?;
            self.zeroed_to = zero_to;
        }
        fault(DiskStep::WalWrite)
            .and_then(|()| self.active.write_all_at(&self.buf, self.active_len))
            .map_err(write_error(path))?;
        // Never `NoSpace`: whatever an fsync failed with, it is not retried.
        let fsync_started = std::time::Instant::now();
        let synced = fault(DiskStep::WalSync).and_then(|()| self.active.sync_data());
        crate::metrics::metrics()
            .wal_fsync_seconds
            .observe(fsync_started.elapsed().as_secs_f64());
        if plant::active(Plant::FsyncErrorRecoverable) {
            synced.map_err(|source| StorageError::NoSpace {
                path: path.to_path_buf(),
                source,
            })?;
        } else {
            synced.map_err(io_error(path))?;
        }
        self.active_len = end;
        self.segments[segment].end = end;
        Ok(())
    }

    /// Starts a new segment named after the next index. Segment names must increase,
    /// so while the log has not grown past the active segment's start (a rewrite of
    /// its entries, or only hard-state records) the active segment keeps growing.
    fn roll(&mut self) -> Result<(), StorageError> {
        let first_index = self.terms.last() + 1;
        if first_index <= self.segments[self.segments.len() - 1].first_index {
            return Ok(());
        }
        // The finished segment's zeros are not needed; if this is lost in a crash,
        // recovery reads them as its end all the same.
        let finished = &self.segments[self.segments.len() - 1];
        self.active
            .set_len(self.active_len)
            .map_err(io_error(&finished.path))?;
        let (segment, file) = create_segment(&self.log_dir, first_index, &self.hard_state)?;
        self.active_len = segment.end;
        self.zeroed_to = segment.end;
        self.segments.push(segment);
        self.active = file;
        Ok(())
    }

    /// Makes a durable snapshot file the current one and compacts the log up to it.
    /// Returns the files this made useless: older snapshots and dead segments.
    fn install_snapshot(&mut self, file: SnapshotFile) -> Result<Garbage, StorageError> {
        let (index, term) = (file.meta.index, file.meta.term);
        self.snapshot = Some(file);
        let mut garbage = self.compact_log(index, term)?;
        garbage.files.extend(self.other_snapshots()?.files);
        Ok(garbage)
    }

    /// Drops the log up to a durable snapshot at (index, term); see `finish_snapshot`.
    /// Returns the segments that are now dead, to delete.
    fn compact_log(&mut self, index: Index, term: Term) -> Result<Garbage, StorageError> {
        let drop_all = match self.terms.fit(index, term) {
            SnapshotFit::Keep => {
                self.terms.compact(index, term);
                self.records.compact(index);
                false
            }
            SnapshotFit::Reset => {
                self.buf.clear();
                record::encode_reset(&mut self.buf, index, term);
                self.write_buf()?;
                self.terms.reset(index, term);
                self.records.clear();
                true
            }
            SnapshotFit::Missing => {
                return Err(StorageError::Invalid(format!(
                    "snapshot at {index} is older than the start of the log ({})",
                    self.terms.base()
                )))
            }
        };
        // A segment holds no live entry above the next segment's name minus one (the
        // log's last index when that one was created), and every segment starts with
        // the hard state of its time, so this prefix is dead. The active segment stays.
        let dead = if drop_all {
            self.segments.len() - 1
        } else {
            self.segments[1..]
                .iter()
                .take_while(|next| next.first_index <= index + 1)
                .count()
        };
        Ok(Garbage {
            files: self.segments.drain(..dead).map(|s| s.path).collect(),
        })
    }

    /// The snapshot files other than the current one.
    fn other_snapshots(&self) -> Result<Garbage, StorageError> {
        let keep = self.snapshot.as_ref().map(|s| &s.path);
        let files = list_numbered(&self.data_dir, SNAPSHOT_SUFFIX)?
            .into_iter()
            .map(|(_, path)| path)
            .filter(|path| Some(path) != keep)
            .collect();
        Ok(Garbage { files })
    }
}

/// Files that no longer hold anything needed (older snapshots, compacted segments).
/// Deleting them can wait and run on any thread: until it is done they are only
/// ignored, and recovery deletes them too if a crash comes first.
#[derive(Debug, Default)]
#[must_use = "the files are left on disk until deleted"]
pub struct Garbage {
    files: Vec<PathBuf>,
}

impl Garbage {
    /// Deletes the files (one already gone is fine), then makes that durable.
    pub fn delete(self) -> Result<(), StorageError> {
        let mut dirs = Vec::new();
        for path in &self.files {
            remove_if_present(path)?;
            if let Some(dir) = path.parent() {
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
        for dir in dirs {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

/// The state of the WAL as read back.
struct Replay {
    /// Every segment that holds a valid header, oldest first.
    segments: Vec<Segment>,
    terms: LogTerms,
    records: RecordIndex,
    /// The entries `(terms.base(), terms.last()]`.
    entries: Vec<Entry>,
    hard_state: HardState,
    torn: Option<TornTail>,
}

/// A crash cut the last write short.
struct TornTail {
    path: PathBuf,
    /// Bytes of the segment that are intact.
    valid_len: u64,
    reason: String,
}

fn replay_wal(log_dir: &Path) -> Result<Replay, StorageError> {
    let files = list_numbered(log_dir, WAL_SUFFIX)?;
    let mut replay = Replay {
        segments: Vec::new(),
        terms: LogTerms::new(
            files
                .first()
                .map_or(0, |(first, _)| first.saturating_sub(1)),
        ),
        records: RecordIndex::default(),
        entries: Vec::new(),
        hard_state: HardState::default(),
        torn: None,
    };
    for (n, (first_index, path)) in files.iter().enumerate() {
        let is_last = n + 1 == files.len();
        let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason,
        };
        if is_last {
            // Only the last segment can hold writes never fsynced (a process that died,
            // or a full disk, between a write and its fsync): make them durable before
            // trusting what the page cache gives back. Earlier segments were fsynced
            // before the next one was created.
            File::open(path)
                .and_then(|file| file.sync_all())
                .map_err(io_error(path))?;
        }
        let image = fs::read(path).map_err(io_error(path))?;
        match record::decode_segment_header(&image) {
            Ok(named) if named == *first_index => {}
            Ok(named) => {
                return Err(corrupt(0, format!("segment header names index {named}")));
            }
            Err(damage) if is_last && damage.torn => {
                replay.torn = Some(TornTail {
                    path: path.clone(),
                    valid_len: 0,
                    reason: damage.reason,
                });
                break;
            }
            Err(damage) => return Err(corrupt(0, damage.reason)),
        }
        if n > 0 && *first_index != replay.terms.last() + 1 {
            return Err(corrupt(
                0,
                format!(
                    "segment starts at index {first_index} but the log before it ends at {}: \
                     a segment is missing",
                    replay.terms.last()
                ),
            ));
        }
        let mut offset = record::SEGMENT_HEADER_LEN;
        loop {
            match record::decode_record(&image, offset) {
                Ok(None) => break,
                Ok(Some((record, end))) => {
                    let span = RecordSpan {
                        first: 0,
                        last: 0,
                        segment: *first_index,
                        offset: offset as u64,
                        len: (end - offset) as u64,
                    };
                    apply_record(&mut replay, record, span)
                        .map_err(|reason| corrupt(offset, reason))?;
                    offset = end;
                }
                Err(damage) if is_last && damage.torn => {
                    replay.torn = Some(TornTail {
                        path: path.clone(),
                        valid_len: offset as u64,
                        reason: damage.reason,
                    });
                    break;
                }
                Err(damage) => return Err(corrupt(offset, damage.reason)),
            }
        }
        // Every segment starts with a hard-state record, written with its header.
        if offset == record::SEGMENT_HEADER_LEN && replay.torn.is_none() {
            let reason = "segment holds no record".to_string();
            if !is_last {
                return Err(corrupt(offset, reason));
            }
            replay.torn = Some(TornTail {
                path: path.clone(),
                valid_len: offset as u64,
                reason,
            });
        }
        replay.segments.push(Segment {
            first_index: *first_index,
            path: path.clone(),
            end: offset as u64,
        });
    }
    Ok(replay)
}

/// Replays one record; `span` says where it lies (its entries' range is filled in).
fn apply_record(replay: &mut Replay, record: Record, span: RecordSpan) -> Result<(), String> {
    match record {
        Record::Batch {
            hard_state,
            entries,
        } => {
            if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
                replay.records.add(RecordSpan {
                    first: first.index,
                    last: last.index,
                    ..span
                });
            }
            for entry in entries {
                replay.terms.append(entry.index, entry.term)?;
                let kept = entry.index - 1 - replay.terms.base();
                replay.entries.truncate(kept as usize);
                replay.entries.push(entry);
            }
            if let Some(hs) = hard_state {
                replay.hard_state = hs;
            }
        }
        Record::Reset { index, term } => {
            replay.terms.reset(index, term);
            replay.records.clear();
            replay.entries.clear();
        }
    }
    Ok(())
}

/// Cuts a torn tail off. A segment left without its first record (the hard state)
/// was being created by a roll that never completed: it is removed, so that every
/// segment keeps starting with the hard state.
fn repair_torn_tail(log_dir: &Path, replay: &mut Replay) -> Result<(), StorageError> {
    let Some(torn) = replay.torn.take() else {
        return Ok(());
    };
    if torn.valid_len <= record::SEGMENT_HEADER_LEN as u64 {
        warn!(
            segment = %torn.path.display(),
            reason = %torn.reason,
            "WAL segment was being created when the node stopped: removing it"
        );
        if replay.segments.last().is_some_and(|s| s.path == torn.path) {
            replay.segments.pop();
        }
        fs::remove_file(&torn.path).map_err(io_error(&torn.path))?;
        sync_dir(log_dir)?;
    } else {
        warn!(
            segment = %torn.path.display(),
            offset = torn.valid_len,
            reason = %torn.reason,
            "WAL ends in a torn write (a crash during an append that was never \
             acknowledged): cutting it off"
        );
        let file = File::options()
            .write(true)
            .open(&torn.path)
            .map_err(io_error(&torn.path))?;
        file.set_len(torn.valid_len).map_err(io_error(&torn.path))?;
        file.sync_all().map_err(io_error(&torn.path))?;
        if let Some(last) = replay.segments.last_mut().filter(|s| s.path == torn.path) {
            last.end = torn.valid_len;
        }
    }
    Ok(())
}

/// Reads the batch record of `len` bytes at `offset` of the segment at `path` and
/// returns its entries, its checksums verified.
fn read_batch(path: &Path, offset: u64, len: u64) -> Result<Vec<Entry>, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let len = usize::try_from(len).map_err(|_| corrupt(format!("record of {len} bytes")))?;
    let file = File::open(path).map_err(io_error(path))?;
    let mut image = vec![0u8; len];
    file.read_exact_at(&mut image, offset)
        .map_err(io_error(path))?;
    match record::decode_record(&image, 0) {
        Ok(Some((Record::Batch { entries, .. }, end))) if end == len => Ok(entries),
        Ok(Some(_)) | Ok(None) => Err(corrupt(
            "the record there is not the batch that was written".into(),
        )),
        Err(damage) => Err(corrupt(damage.reason)),
    }
}

/// Writes zeros to `file` over `[from, to)`.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Creates a segment starting with the current hard state (so that deleting older
/// segments never loses it) and makes it durable, directory entry included.
fn create_segment(
    log_dir: &Path,
    first_index: Index,
    hard_state: &HardState,
) -> Result<(Segment, File), StorageError> {
    let path = log_dir.join(format!("{first_index:020}{WAL_SUFFIX}"));
    let mut image = record::encode_segment_header(first_index).to_vec();
    // A hard state alone is a few dozen bytes: it always fits a record.
    let _ = record::encode_batch(&mut image, Some(hard_state), &[]);
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_error(&path))?;
    file.write_all_at(&image, 0).map_err(write_error(&path))?;
    file.sync_data().map_err(io_error(&path))?;
    sync_dir(log_dir)?;
    let end = image.len() as u64;
    Ok((
        Segment {
            first_index,
            path,
            end,
        },
        file,
    ))
}

/// Files named `<20-digit number><suffix>` in `dir`, sorted by number. Other files
/// are not ours and are left alone.
fn list_numbered(dir: &Path, suffix: &str) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut found = Vec::new();
    for dirent in fs::read_dir(dir).map_err(io_error(dir))? {
        let dirent = dirent.map_err(io_error(dir))?;
        let name = dirent.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(number) = stem.parse() {
                found.push((number, dirent.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Removes the files in `dir` whose name satisfies `ours`; a missing dir is empty.
fn remove_files(dir: &Path, ours: impl Fn(&str) -> bool) -> Result<(), StorageError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(dir)(e)),
    };
    let mut removed = false;
    for dirent in entries {
        let dirent = dirent.map_err(io_error(dir))?;
        if dirent.file_name().to_str().is_some_and(&ours) {
            let path = dirent.path();
            fs::remove_file(&path).map_err(io_error(&path))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Deletes a file; one already gone is fine. The caller fsyncs the directory if it
/// must be durable.
fn remove_if_present(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(path)(e)),
        _ => Ok(()),
    }
}

/// Durably replaces `dir/name` with `bytes`: a temporary file (`<name>.new`, never a
/// `.tmp` that open() sweeps), fsynced, renamed over the old one, and `dir` fsynced; a
/// crash leaves the old file or the new one.
fn replace_file_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}.new"));
    let mut file = File::create(&temp).map_err(io_error(&temp))?;
    io::Write::write_all(&mut file, bytes).map_err(io_error(&temp))?;
    file.sync_all().map_err(io_error(&temp))?;
    drop(file);
    fs::rename(&temp, &path).map_err(io_error(&path))?;
    sync_dir(dir)
}

/// Makes file creations, renames and deletions in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Creates `dir` and any missing parents, fsyncing each new directory's parent so the
/// directories themselves survive a crash.
fn create_dir_durably(dir: &Path) -> Result<(), StorageError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}
