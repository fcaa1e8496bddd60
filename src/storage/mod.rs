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

mod compaction;
mod error;
mod files;
pub mod identity;
mod lock;
mod record;
mod replay;
mod reset;
mod snapshot;
mod terms;
mod wal;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use crate::raft::{HardState, Index, Restored, SnapshotMeta};
use error::io_error;
pub use files::create_dir_durably;
use files::{list_numbered, remove_files, remove_if_present, sync_dir};
use replay::{repair_torn_tail, replay_wal};
use snapshot::{SNAPSHOT_SUFFIX, TEMP_SUFFIX};
use terms::{LogTerms, SnapshotFit};
use wal::{create_segment, RecordIndex, Segment, WAL_SUFFIX};

pub use compaction::Garbage;
pub use error::StorageError;
pub use lock::{DirLock, LockError, LOCK_FILE};
pub use snapshot::{SnapshotFile, SnapshotJob, SnapshotWriter};

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

/// What [`Storage::open`] recovered.
#[derive(Debug)]
pub struct Recovered {
    /// Hard state, snapshot meta and the log entries after the snapshot.
    pub restored: Restored,
    /// The newest snapshot file, if any (its meta is `restored.snapshot`).
    pub snapshot: Option<SnapshotFile>,
}

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
    /// Whether the node's files record a membership other than `bootstrap`: a
    /// membership change in the WAL, or a snapshot of another membership. A wipe
    /// (`DISTRAFT_RESET_LOGS`) would take such a node back to the bootstrap
    /// membership, which is no longer the cluster's, so the caller refuses it.
    pub fn membership_changed(
        opts: &StorageOptions,
        bootstrap: &crate::raft::Membership,
    ) -> Result<bool, StorageError> {
        let replay = replay_wal(&opts.log_dir)?;
        if replay
            .entries
            .iter()
            .any(|e| e.kind == crate::raft::EntryKind::ConfChange)
        {
            return Ok(true);
        }
        Ok(
            match list_numbered(&opts.data_dir, SNAPSHOT_SUFFIX)?.last() {
                Some((_, path)) => SnapshotFile::load(path)?.meta.membership != *bootstrap,
                None => false,
            },
        )
    }

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

    pub fn latest_snapshot(&self) -> Option<&SnapshotFile> {
        self.snapshot.as_ref()
    }

    /// The index of the last entry (the snapshot's index if the log after it is empty).
    pub fn last_index(&self) -> Index {
        self.terms.last()
    }

    /// Where the WAL's records end: the active segment and its length in records (the
    /// file itself goes on with zeros written ahead, see [`wal::ZERO_AHEAD_BYTES`]).
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
}
