//! What a leader knows about each follower's log, and how it paces replication to it.

use std::collections::VecDeque;

use super::types::Index;

/// How the leader is currently talking to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The match point is unknown: one AppendEntries at a time until one succeeds.
    Probe,
    /// The match point is known: stream entries, pipelined, up to the in-flight limits.
    Replicate,
    /// The follower needs entries we compacted: a snapshot is on its way.
    Snapshot,
}

#[derive(Debug)]
pub(crate) struct Progress {
    /// Highest index known to be replicated on the follower.
    pub match_index: Index,
    /// Next index to send.
    pub next_index: Index,
    pub mode: Mode,
    /// Probe: an AppendEntries is outstanding; wait for its answer or the next heartbeat.
    pub probe_sent: bool,
    /// Replicate: the last index of each AppendEntries in flight, oldest first.
    pub inflight: VecDeque<Index>,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Highest ReadIndex round the follower has acknowledged.
    pub read_acked: u64,
    /// Heartbeat intervals in a row in which it was behind and made no progress: after
    /// a few, in-flight messages are presumed lost and we probe again.
    pub stalled: u32,
    /// `match_index` at the last stall check.
    pub match_at_check: Index,
    /// The commit index last sent to it, so that a commit advance is passed on promptly.
    pub sent_commit: Index,
}

impl Progress {
    pub fn new(next_index: Index) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            mode: Mode::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            read_acked: 0,
            stalled: 0,
            match_at_check: 0,
            sent_commit: 0,
        }
    }

    /// A successful AppendEntries answer for `index`. Returns whether it taught us
    /// something new.
    pub fn on_success(&mut self, index: Index) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
        }
        self.next_index = self.next_index.max(index + 1);
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        match self.mode {
            Mode::Probe => self.become_replicate(),
            Mode::Snapshot if self.match_index + 1 >= self.next_index => self.become_replicate(),
            _ => {}
        }
        advanced
    }

    fn become_replicate(&mut self) {
        self.mode = Mode::Replicate;
        self.probe_sent = false;
        self.inflight.clear();
        self.next_index = self.match_index + 1;
    }

    /// The follower's log ends at `last`: whatever it acknowledged beyond is gone.
    pub fn forget_match_beyond(&mut self, last: Index) {
        self.match_index = self.match_index.min(last);
    }

    /// Back to probing from `next_index` (after a rejection or a presumed loss).
    pub fn become_probe(&mut self, next_index: Index) {
        self.mode = Mode::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.stalled = 0;
        self.next_index = next_index.max(self.match_index + 1);
    }

    pub fn become_snapshot(&mut self, snapshot_index: Index) {
        self.mode = Mode::Snapshot;
        self.inflight.clear();
        self.stalled = 0;
        self.next_index = snapshot_index + 1;
    }
}
