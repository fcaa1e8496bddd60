//! The vocabulary of the Raft core: log entries, hard state, snapshots, messages and the
//! batch of work (`Ready`) the core hands to whoever drives it.

use bytes::Bytes;

pub use super::membership::Membership;

/// A node's identity inside the cluster. The driver maps names ("server1") to ids.
pub type NodeId = u64;
/// A Raft term (§5.1). Starts at 0; the first election makes it 1.
pub type Term = u64;
/// The highest term a node ever takes on. Messages claiming a higher term are refused
/// where they enter (the RPC layer), so no term counter can ever wrap; a node whose
/// term reached it (only data from before the ceiling existed can) stops campaigning.
/// At one election per millisecond it is 146 million years away.
pub const MAX_TERM: Term = 1 << 62;
/// A log position. Index 0 is the empty prefix; the first entry has index 1.
pub type Index = u64;
/// The driver's handle for a linearizable read, echoed back when it may be served.
pub type ReadId = u64;

/// What a log entry is for. The core reads only the kind; `data` is opaque to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A command for the state machine.
    Normal,
    /// The empty entry a new leader appends at the start of its term (§8): committing
    /// it commits everything before it. The state machine skips it.
    Noop,
    /// A change of the cluster's membership, encoded by the node that proposed it.
    ConfChange,
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: Index,
    pub term: Term,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl Entry {
    /// A command for the state machine.
    pub fn normal(index: Index, term: Term, data: Bytes) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data,
        }
    }

    /// The no-op a new leader appends at the start of its term.
    pub fn noop(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Noop,
            data: Bytes::new(),
        }
    }

    /// Size used for batching and flow-control limits (payload plus a fixed header).
    pub fn size(&self) -> usize {
        self.data.len() + 16
    }
}

/// What must survive a crash besides the log: the current term, the vote given in it
/// (so that a node never votes twice in one term, §5.2), and the commit index (an
/// optimisation: a restarted node can re-apply up to it without waiting for a leader).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: Index,
}

/// Describes a snapshot of the state machine: it holds the effect of every entry up to
/// and including `index`, whose term was `term`, and the cluster's membership as of
/// that entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    pub membership: Membership,
}

/// A message between two cores. `term` is the sender's term, except for pre-votes and
/// pre-vote responses, where it is the term the pre-candidate would campaign in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Pre-vote (thesis §9.6): "would you vote for me in `term`?" without anyone
    /// changing term, so that a node rejoining after a partition cannot depose a leader.
    PreVote {
        last_index: Index,
        last_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// RequestVote (§5.2). `transfer`: the candidate campaigns because the leader
    /// asked it to (`TimeoutNow`), so voters grant it even while they hear from that
    /// leader (thesis §3.10).
    Vote {
        last_index: Index,
        last_term: Term,
        transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    /// AppendEntries (§5.3). `commit` is the leader's commit index.
    Append {
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    },
    /// Answer to `Append`, `Snapshot`, a `Heartbeat` the follower cannot follow, or
    /// any of them with a stale term.
    AppendResponse {
        outcome: AppendOutcome,
    },
    /// Leader liveness plus the commit index the follower may safely adopt, and the
    /// read round (`read_seq`) it confirms for ReadIndex (thesis §6.4).
    Heartbeat {
        commit: Index,
        read_seq: u64,
    },
    HeartbeatResponse {
        read_seq: u64,
    },
    /// InstallSnapshot (§7). The state machine image travels beside the message: the
    /// transport attaches it when sending and delivers it with the message.
    Snapshot {
        meta: SnapshotMeta,
    },
    /// Leadership transfer (thesis §3.10): the leader tells a follower whose log is
    /// as up to date as its own to campaign at once.
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of its client.
    ReadIndex {
        id: ReadId,
    },
    /// The leader's answer: the read may be served once applied up to `index`;
    /// `None` when the leader could not confirm its leadership.
    ReadIndexResponse {
        id: ReadId,
        index: Option<Index>,
    },
}

/// What a follower answers to an append, a snapshot or a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The follower's log now matches the leader's up to `index`.
    Match { index: Index },
    /// The consistency check failed at `index`: the rejected `prev_index`, or the
    /// commit index of a heartbeat beyond the follower's log (it lost entries it had
    /// acknowledged). `hint` helps the leader skip back fast; a follower always sends
    /// one, but an answer from the wire may lack it.
    Reject {
        index: Index,
        hint: Option<RejectHint>,
    },
    /// The request came from an older term; the answer's term tells the sender ours.
    StaleTerm,
}

/// Where a rejecting follower's log parts from the leader's (§5.3, "fast back-off").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectHint {
    /// The follower's entry at the rejected index has `term`, which its log holds
    /// from `first_index` on.
    Conflict { term: Term, first_index: Index },
    /// The follower's log is too short: the next entry it needs is `next_index`.
    LogEnds { next_index: Index },
}

/// Why a proposal or read was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("leadership changed before the request could be served")]
    LeadershipLost,
    /// A membership change is proposed while an earlier one is not yet committed,
    /// or before a new leader has committed an entry of its term.
    #[error("another membership change is in progress; try again once it is committed")]
    ConfChangePending,
    /// The membership change cannot apply to the current membership.
    #[error("invalid membership change: {0}")]
    InvalidConfChange(#[from] super::membership::ConfChangeError),
    /// The leader is handing leadership over: proposals wait for the new leader.
    #[error("leadership is being transferred; try again at the new leader")]
    TransferInProgress,
    /// The transfer cannot be made (no such voter, or to the leader itself).
    #[error("cannot transfer leadership: {0}")]
    InvalidTransfer(String),
}

/// A linearizable read that may now be served: answer it from the state machine once
/// it has applied up to `index` (which `Ready::committed` guarantees).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub id: ReadId,
    pub index: Index,
}

/// A batch of work from the core. The driver must carry it out in this order:
///
/// 0. send `messages` (they may leave at once, in parallel with step 1);
/// 1. persist: install `snapshot` (if any), then write `entries` (truncating any log
///    suffix from the first entry's index on) and `hard_state`, and fsync;
/// 2. send `persisted_messages` (never before step 1: they may promise what step 1
///    stores);
/// 3. call [`crate::raft::RawNode::advance`] with this Ready;
/// 4. apply `committed` to the state machine, in order;
/// 5. answer `reads` (after step 4, so the state machine has caught up with them)
///    and fail `failed_reads`.
#[derive(Debug, Default)]
pub struct Ready {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotMeta>,
    pub entries: Vec<Entry>,
    /// Messages that may be sent at once, *before* the persist, in parallel with it
    /// (Raft thesis §10.2.1): the leader's replication (appends, heartbeats,
    /// snapshots) in its current term. They promise nothing this `Ready` persists, and
    /// the leader counts its own log towards a majority only after `advance`. (The
    /// same split and names as raft-rs's `messages` / `persisted_messages`.)
    pub messages: Vec<Message>,
    /// Everything else (votes, append acknowledgements, ...): send only once the
    /// persist is durable.
    pub persisted_messages: Vec<Message>,
    pub committed: Vec<Entry>,
    pub reads: Vec<ReadState>,
    pub failed_reads: Vec<(ReadId, RaftError)>,
}

impl Ready {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed.is_empty()
            && self.reads.is_empty()
            && self.failed_reads.is_empty()
    }
}

/// The role a node plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    /// Collecting pre-votes; its term has not changed yet.
    PreCandidate,
    Candidate,
    Leader,
}

/// Tuning of one core, in ticks (the driver decides how long a tick is).
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The voters a new cluster starts with (this node included); a node restored
    /// from a snapshot takes the snapshot's membership instead.
    pub voters: Vec<NodeId>,
    /// A follower that hears no leader for a random number of ticks in
    /// `[election_ticks_min, election_ticks_max)` starts a (pre-)election.
    pub election_ticks_min: u64,
    pub election_ticks_max: u64,
    /// A leader sends heartbeats this often.
    pub heartbeat_ticks: u64,
    /// A leader that heard from no majority within this many ticks steps down
    /// (check-quorum).
    pub check_quorum_ticks: u64,
    /// Per follower: at most this many AppendEntries in flight ...
    pub max_inflight_msgs: usize,
    /// ... each carrying at most this many bytes of entries (at least one entry).
    pub max_msg_bytes: usize,
    /// Payload bytes of log entries kept in memory; the oldest applied and persisted
    /// ones beyond this are dropped and read back through a [`LogReader`] when needed.
    pub max_cached_bytes: usize,
    /// Heartbeat intervals in which a follower that is behind made no progress before
    /// the leader presumes its in-flight AppendEntries lost and probes again.
    /// [`STALLED_HEARTBEATS`] everywhere but in the simulator's measurement of it
    /// (issue #24: a longer timer halves re-sends on slow links but converges no faster).
    pub stalled_heartbeats: u32,
}

/// The default of [`Config::stalled_heartbeats`].
pub const STALLED_HEARTBEATS: u32 = 2;

impl Config {
    /// Defaults for tests and simulations: 10-tick elections, 2-tick heartbeats.
    pub fn for_tests(id: NodeId, voters: Vec<NodeId>) -> Config {
        Config {
            id,
            voters,
            election_ticks_min: 10,
            election_ticks_max: 20,
            heartbeat_ticks: 2,
            check_quorum_ticks: 10,
            max_inflight_msgs: 16,
            max_msg_bytes: 64 * 1024,
            max_cached_bytes: usize::MAX,
            stalled_heartbeats: STALLED_HEARTBEATS,
        }
    }
}

/// Where the core reads back the log entries it dropped from memory (see
/// [`Config::max_cached_bytes`]): the WAL in a node, an in-memory log in the core's
/// unit tests. Called synchronously from [`crate::raft::RawNode::ready_with`], only for
/// entries that are persisted and applied.
pub trait LogReader {
    /// The entries from `from` up to `to` (inclusive), in order and starting at `from`,
    /// stopping once they hold more than `max_bytes` (by [`Entry::size`]) but with at
    /// least one. `None` if they cannot be read now: the core then sends nothing this
    /// time, and the reader's owner deals with the cause (a node stops, as on any
    /// storage error).
    fn read_entries(&mut self, from: Index, to: Index, max_bytes: usize) -> Option<Vec<Entry>>;
}

/// For cores whose cache holds every entry ([`Config::max_cached_bytes`] unbounded):
/// being asked for an entry is a bug.
pub struct NothingEvicted;

impl LogReader for NothingEvicted {
    fn read_entries(&mut self, from: Index, to: Index, _: usize) -> Option<Vec<Entry>> {
        panic!("entries {from}..={to} were evicted, but ready() was given no LogReader")
    }
}

/// What a node recovered from storage at start.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    pub hard_state: HardState,
    /// The newest snapshot, if any; the log continues after its index.
    pub snapshot: Option<SnapshotMeta>,
    /// The log entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Set when this node's log was wiped (`DISTRAFT_RESET_LOGS`) while its term was
    /// this: see [`crate::raft::RawNode::may_vote`].
    pub reset_term: Option<Term>,
}
