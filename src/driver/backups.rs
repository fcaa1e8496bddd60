//! Backups: a snapshot file of the state at or after the index a backup must reflect,
//! handed to the caller open (so that a later compaction cannot delete it under the
//! reader) to stream out. A backup never copies the state in memory: it is streamed
//! from the snapshot file on disk, and when the newest snapshot is older than the
//! backup needs, one is taken first, by the same thread and code as every snapshot.

use std::io::Read;

use tokio::sync::oneshot;
use tracing::info;

use super::{Driver, RequestError, Transport};
use crate::plant::{self, Plant};
use crate::raft::{Index, SnapshotMeta};
use crate::storage::SnapshotFile;

/// Backups waiting for a snapshot at once; more are refused as overloaded (each
/// holds a connection open, and all of them wait for the same snapshot).
const MAX_WAITING_BACKUPS: usize = 16;

/// A snapshot file opened for a backup.
pub struct BackupSource {
    pub meta: SnapshotMeta,
    pub image_len: u64,
    pub image_crc: u32,
    /// The image, checked against its checksum as it is read (see
    /// [`SnapshotFile::open_data`]).
    pub image: Box<dyn Read + Send>,
}

impl std::fmt::Debug for BackupSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupSource")
            .field("meta", &self.meta)
            .field("image_len", &self.image_len)
            .finish_non_exhaustive()
    }
}

pub(super) type BackupReply = oneshot::Sender<Result<BackupSource, RequestError>>;

/// A backup waiting for a snapshot at `at_least` or later.
pub(super) struct WaitingBackup {
    at_least: Index,
    reply: BackupReply,
}

impl<T: Transport> Driver<T> {
    /// A backup whose read was confirmed (or, `stale`, not asked for): the newest
    /// snapshot if it holds everything applied now (any snapshot at all for a stale
    /// one), else a snapshot taken now.
    pub(super) fn on_backup(&mut self, stale: bool, reply: BackupReply) {
        let Some(storage) = &self.storage else {
            let _ = reply.send(Err(RequestError::Stopped));
            return;
        };
        let newest = storage.latest_snapshot().map(|s| s.meta.index);
        let stale = stale || plant::active(Plant::BackupServesOlderSnapshot);
        let at_least = match (stale, newest) {
            (true, Some(index)) => index,
            _ => self.applied,
        };
        if at_least == 0 {
            let _ = reply.send(Err(RequestError::Rejected(
                "nothing to back up yet: no entry is applied".into(),
            )));
            return;
        }
        if self.waiting_backups.len() >= MAX_WAITING_BACKUPS {
            let _ = reply.send(Err(RequestError::Overloaded));
            return;
        }
        self.waiting_backups.push(WaitingBackup { at_least, reply });
        self.answer_backups();
        self.maybe_snapshot();
    }

    /// Whether a waiting backup needs a snapshot newer than the newest one.
    pub(super) fn backup_needs_snapshot(&self) -> bool {
        let newest = self.newest_snapshot_index();
        self.waiting_backups.iter().any(|b| b.at_least > newest)
    }

    fn newest_snapshot_index(&self) -> Index {
        self.storage
            .as_ref()
            .and_then(|s| s.latest_snapshot())
            .map_or(0, |s| s.meta.index)
    }

    /// Answers the backups that the newest snapshot serves, with the file open.
    pub(super) fn answer_backups(&mut self) {
        let Some(file) = self
            .storage
            .as_ref()
            .and_then(|s| s.latest_snapshot())
            .cloned()
        else {
            return;
        };
        let (due, waiting) = std::mem::take(&mut self.waiting_backups)
            .into_iter()
            .partition(|b| b.at_least <= file.meta.index);
        self.waiting_backups = waiting;
        for backup in due {
            let _ = backup.reply.send(open_backup(&file));
        }
    }

    /// A snapshot taken for backups failed: the ones it was for fail too (a later one
    /// would meet the same disk).
    pub(super) fn fail_backups(&mut self, up_to: Index, err: RequestError) {
        let (failed, waiting) = std::mem::take(&mut self.waiting_backups)
            .into_iter()
            .partition(|b| b.at_least <= up_to);
        self.waiting_backups = waiting;
        for backup in failed {
            let _ = backup.reply.send(Err(err.clone()));
        }
    }

    /// Every waiting backup fails (the node leaves Raft or shuts down).
    pub(super) fn fail_all_backups(&mut self, err: RequestError) {
        self.fail_backups(Index::MAX, err);
    }

    pub(super) fn purge_abandoned_backups(&mut self) {
        self.waiting_backups.retain(|b| !b.reply.is_closed());
    }
}

fn open_backup(file: &SnapshotFile) -> Result<BackupSource, RequestError> {
    let image = file
        .open_data()
        .map_err(|err| RequestError::Storage(err.to_string()))?;
    info!(
        index = file.meta.index,
        bytes = file.data_len(),
        "backup: streaming a snapshot"
    );
    Ok(BackupSource {
        meta: file.meta.clone(),
        image_len: file.data_len(),
        image_crc: file.data_crc(),
        image: Box::new(image),
    })
}
