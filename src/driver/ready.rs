//! Carrying out the core's `Ready` in the order its contract prescribes (see
//! `src/raft/mod.rs`): the leader's appends leave first, then persist (one fsync),
//! send what the persist promised, advance, apply committed entries, answer reads.

use std::time::Instant;

use tracing::{error, warn};

use super::{Committed, Driver, DriverError, RequestError, Transport};
use crate::kv::Applied;
use crate::raft::{Body, Entry, Index, LogReader, Message, Ready};
use crate::storage::{Storage, StorageError};

impl<T: Transport> Driver<T> {
    /// The core's next Ready. Entries it evicted from memory and must send to a slow
    /// follower are read back from the WAL; a failed read stops the node like any
    /// other storage error.
    pub(super) fn next_ready(&mut self) -> Result<Ready, DriverError> {
        let storage = self.storage.as_ref().ok_or(DriverError::NotOpen)?;
        let mut wal = WalReader {
            storage,
            failure: None,
        };
        let ready = self.node.ready_with(&mut wal);
        match wal.failure {
            Some(err) => {
                error!("reading log entries back from the WAL failed: {err}");
                Err(err.into())
            }
            None => Ok(ready),
        }
    }

    /// Carries out one Ready in the order its documentation prescribes.
    pub(super) fn process(&mut self, ready: Ready) -> Result<(), DriverError> {
        let Ready {
            hard_state,
            snapshot,
            entries,
            messages,
            persisted_messages,
            committed,
            reads,
            failed_reads,
        } = ready;
        // The members these entries add must be known before any message leaves.
        self.follow_membership(&entries);
        // 0. The leader's appends go out first: the followers write them while we do
        //    (Raft thesis §10.2.1; the core counts our copy only after `advance`).
        for msg in messages {
            self.dispatch(msg);
        }

        // 1. Persist: the snapshot, then entries and hard state, in one fsync.
        if let Some(meta) = snapshot {
            self.install_snapshot(meta)?;
        }
        if hard_state.is_some() || !entries.is_empty() {
            self.storage()?.append(hard_state.as_ref(), &entries)?;
        }
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            self.lag.appended(first.index, last.index, Instant::now());
        }

        // 2. Send the rest, now that everything those messages promise is durable.
        for msg in persisted_messages {
            self.dispatch(msg);
        }

        // 3.
        self.node.advance();

        // 4. Apply.
        for entry in committed {
            self.apply(entry);
        }

        // 5. Answer reads, now that the state machine has caught up with them.
        for read in reads {
            if let Some(waiting) = self.reads.remove(&read.id) {
                self.confirmed_reads.push((read.index, waiting));
            }
        }
        self.serve_confirmed_reads();
        for (id, err) in failed_reads {
            if let Some(read) = self.reads.remove(&id) {
                read.fail(err.into());
            }
        }

        self.maybe_snapshot();
        Ok(())
    }

    /// The open storage; only a stopped node has none, and a stopped node is not driven.
    pub(super) fn storage(&mut self) -> Result<&mut Storage, DriverError> {
        self.storage.as_mut().ok_or(DriverError::NotOpen)
    }

    /// Routes one outgoing message: a reply to a waiting peer request, or a new message
    /// for the transport.
    fn dispatch(&mut self, msg: Message) {
        let Some(msg) = self.replies.answer(msg) else {
            return;
        };
        if let Body::Snapshot { .. } = &msg.body {
            match self.storage.as_ref().and_then(Storage::latest_snapshot) {
                Some(file) => self.transport.send_snapshot(msg, file.clone()),
                None => warn!(
                    to = msg.to,
                    "the core asked to send a snapshot, but none exists"
                ),
            }
            return;
        }
        self.transport.send(msg);
    }

    /// Applies one committed entry to the state machine and answers its proposal, if
    /// it was proposed here.
    fn apply(&mut self, entry: Entry) {
        if entry.index <= self.applied {
            // Already in the state machine (restored from a snapshot).
            return;
        }
        self.since_snapshot.entries += 1;
        self.since_snapshot.log_bytes += entry.size() as u64;
        let applied = self.kv.apply_entry(&entry);
        self.watch_applied(entry.index);
        if let Applied::Rejected(reason) = &applied {
            warn!(
                index = entry.index,
                "skipped an entry without a valid command: {reason}"
            );
        }
        self.applied = entry.index;
        self.applied_term = entry.term;
        if let Some(proposal) = self.proposals.remove(&entry.index) {
            let result = if proposal.term != entry.term {
                Err(RequestError::LeadershipLost)
            } else if let Applied::Rejected(reason) = applied {
                Err(RequestError::Rejected(reason))
            } else {
                Ok(Committed {
                    index: entry.index,
                    applied,
                })
            };
            proposal.answer(result);
        }
    }
}

/// The core's way back to the entries it evicted from memory: the WAL. A failure is
/// kept for the driver, which stops (the core just sends nothing meanwhile).
struct WalReader<'a> {
    storage: &'a Storage,
    failure: Option<StorageError>,
}

impl LogReader for WalReader<'_> {
    fn read_entries(&mut self, from: Index, to: Index, max_bytes: usize) -> Option<Vec<Entry>> {
        if self.failure.is_some() {
            return None;
        }
        match self.storage.read_entries(from, to, max_bytes) {
            Ok(entries) => Some(entries),
            Err(err) => {
                self.failure = Some(err);
                None
            }
        }
    }
}
