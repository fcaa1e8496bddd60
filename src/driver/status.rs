//! What a node reports about itself: plain data, no wire types. The rpc layer turns it
//! into `Admin.Status`'s answer (`src/rpc/admin.rs`), which the gateway shows as `GET /`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Driver, Transport};
use crate::raft::{Index, NodeId, Role, Term};

/// A raised alarm: a condition that keeps the node from serving writes until it clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    /// The disk is full: out of Raft, writes refused, reads served; cleared by the
    /// driver once space is freed.
    NoSpace,
}

/// A snapshot of a node's state, taken by the driver between two turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// `Follower` whenever the node is out of Raft (`up` false), as if crashed.
    pub role: Role,
    pub term: Term,
    /// The leader's name as this node knows it; `None` when unknown or out of Raft.
    pub leader: Option<String>,
    pub commit_index: Index,
    pub last_applied: Index,
    pub last_log_index: Index,
    pub last_log_term: Term,
    /// Leader only (empty elsewhere), per follower name: the highest index known to be
    /// replicated there, and the next index to send.
    pub match_index: BTreeMap<String, Index>,
    pub next_index: BTreeMap<String, Index>,
    /// False while stopped (`Admin.Stop`) or out of Raft for lack of space.
    pub up: bool,
    /// The index of the newest snapshot (0: none).
    pub snapshot_index: Index,
    /// A digest of the state machine at `last_applied` (hex).
    pub state_digest: String,
    /// False while a wiped node withholds its vote.
    pub voting: bool,
    pub cluster_id: u64,
    /// The size of the state machine as the quota counts it.
    pub state_bytes: u64,
    pub alarm: Option<Alarm>,
    /// Keys in the state machine.
    pub keys: u64,
    /// Leader only (empty elsewhere), per follower name: how far behind it is.
    pub followers: BTreeMap<String, FollowerLag>,
    /// Leader only: milliseconds since a majority (this node included) last answered.
    pub quorum_ack_ms: Option<u64>,
    /// Writes proposed here and not yet answered.
    pub proposals_pending: u64,
}

/// How far a follower is behind the leader, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerLag {
    /// Entries in the leader's log the follower is not known to hold.
    pub lag_entries: u64,
    /// Milliseconds since the oldest of those entries reached the leader's log.
    pub lag_ms: u64,
    /// Milliseconds since the follower last answered, if it has since this node led.
    pub last_ack_ms: Option<u64>,
}

impl NodeStatus {
    /// The role names of the original's status (`GET /` shows them).
    pub fn role_name(&self) -> &'static str {
        match self.role {
            Role::Follower => "Follower",
            // The original had no pre-vote; a pre-candidate is campaigning.
            Role::PreCandidate | Role::Candidate => "Candidate",
            Role::Leader => "Leader",
        }
    }

    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
}

impl Alarm {
    /// The alarm's name in `Admin.Status` (`GET /`).
    pub fn name(self) -> &'static str {
        match self {
            Alarm::NoSpace => "NOSPACE",
        }
    }
}

impl<T: Transport> Driver<T> {
    /// This node's report, as `Event::Status` answers it.
    pub(super) fn status(&self) -> NodeStatus {
        let config = &self.config;
        let roster = config.registry.roster();
        let name_of = |id: NodeId| {
            roster
                .member(id)
                .map(|m| m.name.clone())
                .unwrap_or_default()
        };
        let status = self.node.status();
        let now = Instant::now();
        let followers = status
            .progress
            .iter()
            .map(|&(id, matched, _)| {
                let lag = FollowerLag {
                    lag_entries: status.last_index.saturating_sub(matched),
                    lag_ms: millis(self.lag.lag(matched, now)),
                    last_ack_ms: self.lag.last_answer(id, now).map(millis),
                };
                (name_of(id), lag)
            })
            .collect();
        let mut report = NodeStatus {
            role: status.role,
            term: status.term,
            leader: status.leader.map(name_of),
            commit_index: status.commit,
            last_applied: self.applied,
            last_log_index: status.last_index,
            last_log_term: status.last_term,
            match_index: status
                .progress
                .iter()
                .map(|(id, m, _)| (name_of(*id), *m))
                .collect(),
            next_index: status
                .progress
                .iter()
                .map(|(id, _, n)| (name_of(*id), *n))
                .collect(),
            up: self.up,
            snapshot_index: status.snapshot_index,
            state_digest: self.kv.digest_hex(),
            voting: status.may_vote,
            cluster_id: config.cluster_id,
            state_bytes: self.kv.state_bytes(),
            alarm: self.no_space.as_ref().map(|_| Alarm::NoSpace),
            keys: self.kv.len() as u64,
            followers,
            quorum_ack_ms: match status.role {
                Role::Leader => self
                    .lag
                    .quorum_ack_age(
                        config.id,
                        self.node.membership().voters.iter().copied(),
                        now,
                    )
                    .map(millis),
                Role::Follower | Role::PreCandidate | Role::Candidate => None,
            },
            proposals_pending: self.proposals.len() as u64,
        };
        if !self.up {
            // As if crashed: no role, no leader, whatever the core last believed.
            report.role = Role::Follower;
            report.leader = None;
            report.match_index.clear();
            report.next_index.clear();
            report.followers.clear();
            report.quorum_ack_ms = None;
        }
        report
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
