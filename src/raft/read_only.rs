//! ReadIndex bookkeeping (Raft thesis §6.4), like raft-rs's `read_only.rs`: which
//! reads wait for which heartbeat round at the leader, which a follower forwarded to
//! the leader, and which may now be served or have failed. The protocol itself (when
//! a round is confirmed, what is sent to whom) stays in `node.rs`.

use std::collections::VecDeque;

use super::types::{Index, NodeId, RaftError, ReadId, ReadState};

/// A read waiting at the leader for its heartbeat round to be confirmed.
#[derive(Debug)]
pub struct PendingRead {
    pub id: ReadId,
    /// Who asked: this node, or a follower that forwarded it.
    pub from: NodeId,
    /// The heartbeat round that must be acknowledged by a majority.
    pub seq: u64,
    /// The commit index at arrival; `None` until this leader has committed an entry
    /// of its own term (before that its commit index may be behind, §6.4 step 1).
    pub index: Option<Index>,
}

#[derive(Debug, Default)]
pub struct ReadOnly {
    /// Leader: the current ReadIndex round and whether a new one must start.
    pub seq: u64,
    round_needed: bool,
    pending: VecDeque<PendingRead>,
    /// Follower: reads forwarded to the leader, awaiting its answer.
    forwarded: Vec<ReadId>,
    /// Reads with a known index, waiting for the commit index to reach it.
    waiting: Vec<ReadState>,
    ready: Vec<ReadState>,
    failed: Vec<(ReadId, RaftError)>,
}

impl ReadOnly {
    /// Leader: a read from `from` (this node or a follower), to be confirmed by the
    /// next heartbeat round; `index` as in [`PendingRead::index`].
    pub fn add(&mut self, id: ReadId, from: NodeId, index: Option<Index>) {
        self.pending.push_back(PendingRead {
            id,
            from,
            seq: self.seq + 1,
            index,
        });
        self.round_needed = true;
    }

    /// Leader: it committed up to `commit` in its own term, so every pending read
    /// without an index may use this one.
    pub fn committed(&mut self, commit: Index) {
        for read in self.pending.iter_mut() {
            read.index.get_or_insert(commit);
        }
    }

    /// Leader: the oldest pending read if heartbeat round `confirmed` covers it and
    /// its index is known; reads are served in order.
    pub fn pop_confirmed(&mut self, confirmed: u64) -> Option<(PendingRead, Index)> {
        let read = self.pending.front()?;
        let index = read.index?;
        if read.seq > confirmed {
            return None;
        }
        let read = self.pending.pop_front()?;
        Some((read, index))
    }

    /// Whether a read waits for a heartbeat round that has not started.
    pub fn round_needed(&self) -> bool {
        self.round_needed
    }

    /// Leader: starts the round the pending reads wait for, if any; its number.
    pub fn start_round(&mut self) -> Option<u64> {
        if !self.round_needed {
            return None;
        }
        self.round_needed = false;
        self.seq += 1;
        Some(self.seq)
    }

    /// No longer the leader: this node's own pending reads fail; a follower's are
    /// dropped (it gives up on them when it learns of the new term).
    pub fn leadership_lost(&mut self, me: NodeId) {
        for read in self.pending.drain(..) {
            if read.from == me {
                self.failed.push((read.id, RaftError::LeadershipLost));
            }
        }
        self.round_needed = false;
    }

    /// A newer term began: answers to forwarded reads would come from an older one.
    pub fn term_changed(&mut self) {
        for id in self.forwarded.drain(..) {
            self.failed.push((id, RaftError::LeadershipLost));
        }
    }

    /// Follower: a read forwarded to the leader.
    pub fn forward(&mut self, id: ReadId) {
        self.forwarded.push(id);
    }

    /// Became leader: the forwarded reads, which it now answers itself.
    pub fn take_forwarded(&mut self) -> Vec<ReadId> {
        std::mem::take(&mut self.forwarded)
    }

    /// Follower: the leader answered forwarded read `id` with its index, or `None`
    /// when it could not confirm its leadership. Answers to reads not (or no
    /// longer) forwarded are ignored.
    pub fn answered(&mut self, id: ReadId, index: Option<Index>, leader: Option<NodeId>) {
        let Some(pos) = self.forwarded.iter().position(|&r| r == id) else {
            return;
        };
        self.forwarded.swap_remove(pos);
        match index {
            Some(index) => self.waiting.push(ReadState { id, index }),
            None => self.failed.push((id, RaftError::NotLeader { leader })),
        }
    }

    /// Leader: its own read is confirmed at `index`.
    pub fn confirmed(&mut self, read: ReadState) {
        self.ready.push(read);
    }

    pub fn fail(&mut self, id: ReadId, err: RaftError) {
        self.failed.push((id, err));
    }

    /// Whether [`ReadOnly::take_ready`] would return anything at commit index `commit`.
    pub fn has_ready(&self, commit: Index) -> bool {
        !self.failed.is_empty()
            || !self.ready.is_empty()
            || self.waiting.iter().any(|r| r.index <= commit)
    }

    /// The reads that may be served once the state machine applied up to `commit`,
    /// and those that failed.
    pub fn take_ready(&mut self, commit: Index) -> (Vec<ReadState>, Vec<(ReadId, RaftError)>) {
        let (now, later): (Vec<ReadState>, Vec<ReadState>) =
            self.waiting.drain(..).partition(|r| r.index <= commit);
        self.waiting = later;
        let mut reads = std::mem::take(&mut self.ready);
        reads.extend(now);
        (reads, std::mem::take(&mut self.failed))
    }
}
