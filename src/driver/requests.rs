//! Clients' requests: writes proposed to the core and answered once applied, reads
//! answered once the core confirmed them (ReadIndex) and the state machine caught up,
//! and what happens to both when their callers give up or the node leaves Raft.

use bytes::Bytes;
use tokio::sync::oneshot;

use super::backups::BackupReply;
use super::{Committed, Driver, ListAnswer, ReadAnswer, RequestError, Transport, WriteKind};
use crate::kv::{Kv, ListQuery};
use crate::metrics::metrics;
use crate::plant::{self, Plant};
use crate::raft::{Index, Role, Term};

/// A proposal waiting for its entry to be applied.
pub(super) struct PendingProposal {
    pub(super) term: Term,
    pub(super) reply: oneshot::Sender<Result<Committed, RequestError>>,
}

impl PendingProposal {
    /// Answers the client, counting a failure (or unknown outcome) in the metrics.
    pub(super) fn answer(self, result: Result<Committed, RequestError>) {
        if result.is_err() {
            metrics().proposals_failed.inc();
        }
        let _ = self.reply.send(result);
    }
}

/// A client's read: what it asks, and where its answer goes.
pub enum Read {
    Get {
        key: String,
        reply: oneshot::Sender<Result<ReadAnswer, RequestError>>,
    },
    List {
        query: ListQuery,
        reply: oneshot::Sender<Result<ListAnswer, RequestError>>,
    },
    /// A backup: a snapshot file holding at least the confirmed index (see
    /// `backups.rs`); `stale`: any snapshot.
    Backup { stale: bool, reply: BackupReply },
}

impl Read {
    /// Answers from the state machine as it is, `applied` the last entry in it; a
    /// backup is handed back, for the driver to find it a snapshot.
    fn serve(self, kv: &Kv, applied: Index) -> Option<(bool, BackupReply)> {
        match self {
            Read::Get { key, reply } => {
                let found = kv.versioned(&key);
                let _ = reply.send(Ok(ReadAnswer {
                    index: applied,
                    found,
                }));
            }
            Read::List { query, reply } => {
                let page = kv.list(&query);
                let _ = reply.send(Ok(ListAnswer {
                    index: applied,
                    page,
                }));
            }
            Read::Backup { stale, reply } => return Some((stale, reply)),
        }
        None
    }

    pub(super) fn fail(self, err: RequestError) {
        match self {
            Read::Get { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Read::List { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Read::Backup { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
    }

    /// Whether the caller gave up waiting.
    fn abandoned(&self) -> bool {
        match self {
            Read::Get { reply, .. } => reply.is_closed(),
            Read::List { reply, .. } => reply.is_closed(),
            Read::Backup { reply, .. } => reply.is_closed(),
        }
    }
}

impl<T: Transport> Driver<T> {
    /// A client's write: refused at once when this node cannot take it, else handed to
    /// the core; `reply` waits in `proposals` for the entry to be applied.
    pub(super) fn on_propose(
        &mut self,
        data: Bytes,
        kind: WriteKind,
        reply: oneshot::Sender<Result<Committed, RequestError>>,
    ) {
        if self.no_space.is_some() {
            let _ = reply.send(Err(RequestError::NoSpace));
            return;
        }
        if !self.up {
            let _ = reply.send(Err(RequestError::Stopped));
            return;
        }
        if let Err(err) = self.check_quota(&kind) {
            let _ = reply.send(Err(err));
            return;
        }
        if plant::active(Plant::WritesFailInternally) && self.applied.is_multiple_of(4) {
            let planted = "planted: writes-fail-internally".to_string();
            let _ = reply.send(Err(RequestError::Storage(planted)));
            return;
        }
        let term = self.node.term();
        match self.node.propose(data) {
            Ok(index) => {
                // A proposal still waiting at this index was overwritten before it was
                // applied: it is lost for good.
                if let Some(old) = self
                    .proposals
                    .insert(index, PendingProposal { term, reply })
                {
                    old.answer(Err(RequestError::LeadershipLost));
                }
            }
            Err(err) => {
                let _ = reply.send(Err(err.into()));
            }
        }
    }

    /// A client's read: stale ones are served from the state machine at once,
    /// linearizable ones go to the core for a read index.
    pub(super) fn on_read(&mut self, read: Read, stale: bool) {
        if self.left_raft_for_space() {
            // Out of Raft for lack of space, but the state machine holds what was
            // applied: stale reads are served from it, linearizable ones are sent
            // elsewhere.
            match stale {
                true => self.serve_read(read),
                false => read.fail(RequestError::NotLeader {
                    leader: self.read_elsewhere(),
                }),
            }
        } else if !self.up {
            read.fail(RequestError::Stopped);
        } else if stale {
            self.serve_read(read);
        } else {
            let id = self.next_read_id;
            self.next_read_id += 1;
            self.reads.insert(id, read);
            self.node.read_index(id);
        }
    }

    /// Refuses a put that would take the state past the quota. Checked where the
    /// leader accepts proposals (followers forward theirs), against the applied
    /// state: writes proposed but not yet applied are not counted, so the state may
    /// pass the quota by at most what is in flight when it is reached.
    fn check_quota(&self, kind: &WriteKind) -> Result<(), RequestError> {
        if self.node.role() != Role::Leader || plant::active(Plant::NoQuota) {
            return Ok(());
        }
        let quota = self.config.quota_bytes;
        let now = self.kv.state_bytes();
        // What a branch's puts add (keys are distinct within a branch; its deletes,
        // which only make room, are not counted).
        let after_puts = |puts: &[(String, usize)]| {
            puts.iter().fold(now, |total, (key, value_bytes)| {
                let after = self.kv.bytes_after_put(key, *value_bytes);
                total.saturating_add(after).saturating_sub(now)
            })
        };
        let would_be = match kind {
            WriteKind::Put { key, value_bytes } => self.kv.bytes_after_put(key, *value_bytes),
            WriteKind::Delete => return Ok(()),
            WriteKind::Txn { branches } => branches
                .iter()
                .map(|puts| after_puts(puts))
                .max()
                .unwrap_or(now),
        };
        // A put that does not grow the state is fine even past the quota (which a
        // lowered DISTRAFT_QUOTA_BYTES can leave behind).
        if would_be > quota && would_be > self.kv.state_bytes() {
            return Err(RequestError::QuotaExceeded { would_be, quota });
        }
        Ok(())
    }

    /// Serves the confirmed reads whose index has been applied.
    pub(super) fn serve_confirmed_reads(&mut self) {
        let applied = self.applied;
        let (due, waiting) = std::mem::take(&mut self.confirmed_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.confirmed_reads = waiting;
        for (_, read) in due {
            self.serve_read(read);
        }
    }

    /// Serves a read from the state machine as it is now.
    fn serve_read(&mut self, read: Read) {
        if let Some((stale, reply)) = read.serve(&self.kv, self.applied) {
            self.on_backup(stale, reply);
        }
    }

    /// Forgets requests whose callers gave up waiting.
    pub fn purge_abandoned(&mut self) {
        self.proposals.retain(|_, p| !p.reply.is_closed());
        self.reads.retain(|_, read| !read.abandoned());
        self.confirmed_reads.retain(|(_, read)| !read.abandoned());
        self.replies.purge_abandoned();
        self.watches.sweep();
        self.purge_abandoned_backups();
    }

    /// Fails every waiting client request and drops every waiting peer request.
    pub fn fail_everything(&mut self, err: RequestError) {
        // A proposal that was handed to the core may still commit.
        let proposal_err = match err {
            RequestError::Stopped | RequestError::ShuttingDown => RequestError::Indeterminate,
            ref other => other.clone(),
        };
        for (_, proposal) in std::mem::take(&mut self.proposals) {
            proposal.answer(Err(proposal_err.clone()));
        }
        for (_, read) in self.reads.drain() {
            read.fail(err.clone());
        }
        for (_, read) in self.confirmed_reads.drain(..) {
            read.fail(err.clone());
        }
        self.replies.clear();
        self.received_snapshots.clear();
        self.fail_all_backups(err);
    }
}
