//! Compaction: a durable snapshot becomes the current one, the log before it is
//! dropped, and the files this makes useless are returned as [`Garbage`] to delete.

use std::path::PathBuf;

use super::files::{list_numbered, remove_if_present, sync_dir};
use super::record;
use super::snapshot::SNAPSHOT_SUFFIX;
use super::terms::SnapshotFit;
use super::{SnapshotFile, Storage, StorageError};
use crate::raft::{Index, Term};

impl Storage {
    /// Makes a durable snapshot file the current one and compacts the log up to it.
    /// Returns the files this made useless: older snapshots and dead segments.
    pub(super) fn install_snapshot(&mut self, file: SnapshotFile) -> Result<Garbage, StorageError> {
        let (index, term) = (file.meta.index, file.meta.term);
        self.snapshot = Some(file);
        let mut garbage = self.compact_log(index, term)?;
        garbage.files.extend(self.other_snapshots()?.files);
        Ok(garbage)
    }

    /// Drops the log up to a durable snapshot at (index, term); see `finish_snapshot`.
    /// Returns the segments that are now dead, to delete.
    pub(super) fn compact_log(
        &mut self,
        index: Index,
        term: Term,
    ) -> Result<Garbage, StorageError> {
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
    pub(super) fn other_snapshots(&self) -> Result<Garbage, StorageError> {
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
