//! The Raft state machine: roles, elections, replication, commit, ReadIndex and
//! snapshots. See the module documentation of [`crate::raft`] for the contract.
//! Building and advancing a `Ready` is in `node/ready.rs`; the reads' bookkeeping in
//! `read_only.rs`.

mod conf;
mod ready;
mod replication;
mod transfer;

use std::collections::BTreeMap;

use bytes::Bytes;

use super::log::RaftLog;
use super::membership::VoteResult;
use super::progress::{Mode, Progress};
use super::read_only::ReadOnly;
use super::types::*;
use crate::plant::{self, Plant};
use transfer::Transfer;

/// A snapshot still unacknowledged after this many heartbeat intervals is sent again.
const SNAPSHOT_RETRY_HEARTBEATS: u32 = 10;

/// What a node reports about itself (for `GET /` and Admin.Status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub vote: Option<NodeId>,
    pub leader: Option<NodeId>,
    pub commit: Index,
    pub applied: Index,
    pub last_index: Index,
    pub last_term: Term,
    pub snapshot_index: Index,
    /// False while a wiped node withholds its vote (see [`RawNode::may_vote`]).
    pub may_vote: bool,
    /// Payload bytes of log entries held in memory (see [`Config::max_cached_bytes`]).
    pub cached_bytes: usize,
    /// Leader only: `(peer, match_index, next_index)` for every other member.
    pub progress: Vec<(NodeId, Index, Index)>,
}

/// One Raft node's consensus state. See the module documentation for the contract.
pub struct RawNode {
    cfg: Config,
    /// Who votes and who only learns: the membership of the latest change in the log
    /// (node/conf.rs), else the snapshot's, else the bootstrap voters.
    membership: Membership,
    /// The membership at the snapshot's index, then after each change in the log, by
    /// index: what a truncation goes back to and what a snapshot records.
    conf_history: Vec<(Index, Membership)>,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    rng: u64,
    /// The term this node's log was wiped in, if it was (see [`RawNode::may_vote`]).
    reset_term: Option<Term>,

    /// Ticks since we last heard from a leader (follower) or started campaigning.
    election_elapsed: u64,
    randomized_timeout: u64,
    heartbeat_elapsed: u64,
    /// Leader: ticks since the last check-quorum.
    quorum_elapsed: u64,

    /// Candidate / pre-candidate: the answers so far.
    votes: BTreeMap<NodeId, bool>,
    /// Leader: one per other voter.
    progress: BTreeMap<NodeId, Progress>,
    /// Leader: the leadership transfer in progress (node/transfer.rs).
    transfer: Option<Transfer>,

    msgs: Vec<Message>,
    /// The hard state last handed out in a Ready.
    saved_hard_state: HardState,
    /// A snapshot received from the leader, to hand out in the next Ready.
    snapshot_to_install: Option<SnapshotMeta>,
    /// The last log index handed out by `ready()`, persisted once `advance()` is called.
    handed_out: Option<Index>,

    /// Linearizable reads on their way (ReadIndex).
    reads: ReadOnly,
}

impl RawNode {
    /// Creates a node from what storage recovered; `seed` drives its randomness.
    pub fn new(cfg: Config, restored: Restored, seed: u64) -> RawNode {
        let (base_index, membership) = match &restored.snapshot {
            Some(snapshot) => (snapshot.index, snapshot.membership.clone()),
            None => (0, Membership::with_voters(cfg.voters.iter().copied())),
        };
        let conf_entries: Vec<Entry> = restored
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::ConfChange)
            .cloned()
            .collect();
        let log = RaftLog::restore(
            restored.snapshot.as_ref(),
            restored.entries,
            restored.hard_state.commit,
        );
        let mut node = RawNode {
            conf_history: vec![(base_index, membership.clone())],
            membership,
            term: restored.hard_state.term,
            vote: restored.hard_state.vote,
            role: Role::Follower,
            leader: None,
            saved_hard_state: HardState {
                commit: log.commit,
                ..restored.hard_state
            },
            log,
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            reset_term: restored.reset_term,
            election_elapsed: 0,
            randomized_timeout: 0,
            heartbeat_elapsed: 0,
            quorum_elapsed: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            transfer: None,
            msgs: Vec::new(),
            snapshot_to_install: None,
            handed_out: None,
            reads: ReadOnly::default(),
            cfg,
        };
        node.conf_restored(&conf_entries);
        node.reset_election_timer();
        node
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Whether this node may grant (pre-)votes and campaign. Always, unless its log was
    /// wiped (`DISTRAFT_RESET_LOGS`): the wipe kept its term and vote (so it cannot vote
    /// twice in a term) but lost entries whose acknowledgements may have counted
    /// towards a commit, and may still count, at a leader of a term up to the one it
    /// was wiped in. With a vote and an empty log it could elect a leader that lacks
    /// them. So it withholds its vote until its log holds an entry of a later term:
    /// such an entry comes from a leader elected without this node's vote, which
    /// therefore holds every entry those acknowledgements could have committed, and
    /// by the Log Matching property so does our log up to it. Evaluated on the current
    /// log, so a truncation back to older terms withholds the vote again. A
    /// single-node cluster has no other copy to protect: the wipe is a fresh start.
    /// (docs/storage.md, "Wiping a node")
    pub fn may_vote(&self) -> bool {
        if plant::active(Plant::ResetNodeVotes) {
            return true;
        }
        match self.reset_term {
            Some(term) => self.membership.voters.len() == 1 || self.log.last_term() > term,
            None => true,
        }
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.cfg.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit: self.log.commit,
            applied: self.log.applied,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            snapshot_index: self.log.snapshot_index,
            may_vote: self.may_vote(),
            cached_bytes: self.log.cached_bytes(),
            progress: self
                .progress
                .iter()
                .map(|(&id, pr)| (id, pr.match_index, pr.next_index))
                .collect(),
        }
    }

    /// Who votes and who only learns.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The highest index known to be committed.
    pub fn commit_index(&self) -> Index {
        self.log.commit
    }

    /// The term of the entry at `index`, while the log holds it (the snapshot's last
    /// entry included); `None` before the snapshot or past the end.
    pub fn log_term(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }

    /// The snapshot the log starts after (index 0 when none).
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            index: self.log.snapshot_index,
            term: self.log.snapshot_term,
            membership: self.membership_at(self.log.snapshot_index),
        }
    }

    // ----- inputs ---------------------------------------------------------------------

    /// One unit of logical time.
    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => {
                self.election_elapsed += 1;
                if self.election_elapsed >= self.randomized_timeout {
                    self.campaign_pre_vote();
                }
            }
        }
    }

    fn tick_leader(&mut self) {
        self.tick_transfer();
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
            self.check_stalled_followers();
        }
        self.quorum_elapsed += 1;
        if self.quorum_elapsed >= self.cfg.check_quorum_ticks {
            self.quorum_elapsed = 0;
            // Check-quorum: a leader cut off from a majority steps down, so that it
            // stops serving and its clients look elsewhere.
            let active = self.membership.active_voters(|id| {
                id == self.cfg.id || self.progress.get(&id).is_some_and(|pr| pr.recent_active)
            });
            for pr in self.progress.values_mut() {
                pr.recent_active = false;
            }
            if active < self.quorum() {
                self.become_follower(self.term, None);
            }
        }
    }

    /// Proposes a command. On the leader, returns the index its entry will have (with
    /// the current term); anywhere else fails with the leader as a hint.
    pub fn propose(&mut self, data: Bytes) -> Result<Index, RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(RaftError::TransferInProgress);
        }
        let index = self.log.last_index() + 1;
        self.log.append(Entry::normal(index, self.term, data));
        Ok(index)
    }

    /// Asks for a linearizable read; it comes back in `Ready::reads` or
    /// `Ready::failed_reads` under the same `id`.
    pub fn read_index(&mut self, id: ReadId) {
        match (self.role, self.leader) {
            (Role::Leader, _) => self.leader_read(id, self.cfg.id),
            (Role::Follower, Some(leader)) => {
                self.reads.forward(id);
                self.send(leader, Body::ReadIndex { id });
            }
            _ => self.reads.fail(
                id,
                RaftError::NotLeader {
                    leader: self.leader,
                },
            ),
        }
    }

    /// The driver saw the connection from `from` break (its process died, or the link
    /// did). If `from` is our leader, its lease no longer holds: we grant (pre-)votes
    /// to others at once and campaign after a short random delay (up to one heartbeat
    /// interval) instead of a whole election timeout, so a crashed leader is replaced
    /// in about a heartbeat rather than an election timeout. Timing never decides
    /// safety; a live leader's next heartbeat restores it, and pre-vote keeps a lone
    /// suspicious follower from disrupting a leader the others still hear.
    pub fn leader_disconnected(&mut self, from: NodeId) {
        if self.role != Role::Follower || self.leader != Some(from) {
            return;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.randomized_timeout = 1 + self.next_random() % self.cfg.heartbeat_ticks.max(1);
    }

    /// A message from a peer.
    pub fn step(&mut self, m: Message) {
        if m.to != self.cfg.id || m.from == self.cfg.id {
            return;
        }
        // Messages from non-members are heard: a leader that removed itself leads
        // until its removal commits, and a new member hears from a leader it does
        // not know yet. But only voters may ask for votes: a learner never campaigns,
        // and a removed node must not be able to disrupt the cluster. Unless the
        // asker's log is ahead of ours: then it may know a membership we do not yet
        // (a learner promoted while behind does not know the members added since, and
        // a node must not ignore the only candidates that can win), and a removed node
        // is never ahead of the members that hold its removal.
        let asker_ahead = match m.body {
            Body::Vote {
                last_index,
                last_term,
                ..
            }
            | Body::PreVote {
                last_index,
                last_term,
            } => (last_term, last_index) > (self.log.last_term(), self.log.last_index()),
            _ => false,
        };
        if matches!(m.body, Body::Vote { .. } | Body::PreVote { .. })
            && !self.membership.is_voter(m.from)
            && !asker_ahead
            && !plant::active(Plant::NonVoterVotesHeard)
        {
            return;
        }
        // The RPC layer refuses such terms; a caller that did not is ignored here too.
        if m.term > MAX_TERM {
            return;
        }
        if !self.step_term(&m) {
            return;
        }

        match m.body {
            Body::PreVote {
                last_index,
                last_term,
            } => self.handle_pre_vote(&m, last_index, last_term),
            Body::Vote {
                last_index,
                last_term,
                transfer,
            } => self.handle_vote(m.from, last_index, last_term, transfer),
            Body::PreVoteResponse { granted } => {
                if self.role == Role::PreCandidate && m.term == self.term + 1 {
                    self.count_vote(m.from, granted);
                }
            }
            Body::VoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.count_vote(m.from, granted);
                }
            }
            Body::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.follow(m.from);
                self.handle_append(m.from, prev_index, prev_term, entries, commit);
            }
            Body::Heartbeat { commit, read_seq } => {
                self.follow(m.from);
                self.handle_heartbeat(m.from, commit, read_seq);
            }
            Body::Snapshot { meta } => {
                self.follow(m.from);
                self.handle_snapshot(m.from, meta);
            }
            Body::AppendResponse { outcome } => {
                if self.role == Role::Leader {
                    self.handle_append_response(m.from, outcome);
                }
            }
            Body::HeartbeatResponse { read_seq } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(m.from, read_seq);
                }
            }
            Body::ReadIndex { id } => {
                if self.role == Role::Leader {
                    self.leader_read(id, m.from);
                } else {
                    self.send(m.from, Body::ReadIndexResponse { id, index: None });
                }
            }
            Body::ReadIndexResponse { id, index } => self.reads.answered(id, index, self.leader),
            Body::TimeoutNow => self.handle_timeout_now(m.from),
        }
    }

    /// Brings our term in line with a message's, as §5.1 says (a newer term makes us a
    /// follower, except for pre-votes and stickiness), and answers a message of an
    /// older term. Returns whether the message still needs handling.
    fn step_term(&mut self, m: &Message) -> bool {
        if m.term > self.term {
            let is_vote = matches!(
                m.body,
                Body::Vote {
                    transfer: false,
                    ..
                } | Body::PreVote { .. }
            );
            if is_vote && self.in_lease() {
                // Leader stickiness: while we hear from a live leader, ignore anyone
                // trying to replace it.
                return false;
            }
            match m.body {
                Body::PreVote { .. } | Body::PreVoteResponse { granted: true } => {}
                Body::Append { .. }
                | Body::Heartbeat { .. }
                | Body::Snapshot { .. }
                | Body::TimeoutNow => self.become_follower(m.term, Some(m.from)),
                Body::PreVoteResponse { granted: false }
                | Body::Vote { .. }
                | Body::VoteResponse { .. }
                | Body::AppendResponse { .. }
                | Body::HeartbeatResponse { .. }
                | Body::ReadIndex { .. }
                | Body::ReadIndexResponse { .. } => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                // A stale leader learns our term and steps down; with pre-vote and
                // check-quorum it would otherwise never find out.
                Body::Append { .. } | Body::Heartbeat { .. } | Body::Snapshot { .. } => self.send(
                    m.from,
                    Body::AppendResponse {
                        outcome: AppendOutcome::StaleTerm,
                    },
                ),
                Body::PreVote { .. } => self.send(m.from, Body::PreVoteResponse { granted: false }),
                Body::ReadIndex { id } => {
                    self.send(m.from, Body::ReadIndexResponse { id, index: None })
                }
                // A refusal of a forwarded read counts whatever its term: failing a
                // read is always safe, and the transport reports a request that failed
                // this way, with term 0 (`rpc::convert::read_index_failed`).
                Body::ReadIndexResponse { id, index: None } => {
                    self.reads.answered(id, None, self.leader)
                }
                // Votes for an old term and answers to our requests of one: moot; so
                // is an old leader's wish to hand over.
                Body::PreVoteResponse { .. }
                | Body::TimeoutNow
                | Body::Vote { .. }
                | Body::VoteResponse { .. }
                | Body::AppendResponse { .. }
                | Body::HeartbeatResponse { .. }
                | Body::ReadIndexResponse { index: Some(_), .. } => {}
            }
            return false;
        }
        true
    }

    /// A pre-candidate asks whether we would vote for it in the next term.
    fn handle_pre_vote(&mut self, m: &Message, last_index: Index, last_term: Term) {
        let granted = m.term > self.term
            && self.may_vote()
            && (self.log.is_up_to_date(last_index, last_term)
                || plant::active(Plant::VoteWithoutLogCheck));
        let term = if granted { m.term } else { self.term };
        self.msgs.push(Message {
            from: self.cfg.id,
            to: m.from,
            term,
            body: Body::PreVoteResponse { granted },
        });
    }

    /// A candidate asks for our vote in this term (§5.2, §5.4.1).
    fn handle_vote(&mut self, from: NodeId, last_index: Index, last_term: Term, transfer: bool) {
        let forced = transfer && plant::active(Plant::TransferVoteIgnoresEarlierVote);
        let granted = (self.vote.is_none_or(|v| v == from) || forced)
            && self.may_vote()
            && (self.log.is_up_to_date(last_index, last_term)
                || plant::active(Plant::VoteWithoutLogCheck));
        if granted {
            self.vote = Some(from);
            self.election_elapsed = 0;
        }
        self.send(from, Body::VoteResponse { granted });
    }

    /// The leader's heartbeat: its commit index and a read round to confirm.
    fn handle_heartbeat(&mut self, from: NodeId, commit: Index, read_seq: u64) {
        let last_index = self.log.last_index();
        if commit > last_index {
            // The leader sends a commit index up to what we acknowledged, so we
            // acknowledged entries we no longer hold: our log was wiped. Say so
            // (instead of confirming the read round), or, with no new writes to
            // send, the leader would never send them again.
            self.send(
                from,
                Body::AppendResponse {
                    outcome: AppendOutcome::Reject {
                        index: commit,
                        hint: Some(RejectHint::LogEnds {
                            next_index: last_index + 1,
                        }),
                    },
                },
            );
        } else {
            self.log.commit_to(commit);
            self.conf_committed();
            self.send(from, Body::HeartbeatResponse { read_seq });
        }
    }

    /// The state machine has a snapshot at `index` (≤ the last applied index): drop
    /// the log up to it.
    pub fn compact(&mut self, index: Index) {
        self.log.compact(index);
        self.conf_compacted(self.log.snapshot_index);
    }

    // ----- elections ------------------------------------------------------------------

    fn quorum(&self) -> usize {
        self.membership.quorum()
    }

    fn in_lease(&self) -> bool {
        match self.role {
            Role::Leader => true,
            _ => self.leader.is_some() && self.election_elapsed < self.cfg.election_ticks_min,
        }
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64: tiny, good enough, and keeps the core free of dependencies.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let span = self
            .cfg
            .election_ticks_max
            .saturating_sub(self.cfg.election_ticks_min)
            .max(1);
        self.randomized_timeout = self.cfg.election_ticks_min + self.next_random() % span;
    }

    /// Starts an election with a pre-vote round (thesis §9.6): only if a majority would
    /// vote for us do we bump the term, so a node that was cut off cannot disrupt.
    fn campaign_pre_vote(&mut self) {
        // A wiped node that may not vote must not ask for votes either; and only a
        // term persisted before the ceiling existed can be at it: stay a follower
        // rather than take a term past it.
        if !self.may_vote() || !self.may_campaign() || self.term >= MAX_TERM {
            // No word from a leader for a whole election timeout: it is gone, as far as
            // we know. Forget it, or we would keep claiming its lease and ignore the
            // votes a successor needs: a learner (never campaigning, so never changing
            // term by itself) refused a promoted voter's vote requests for good.
            if !plant::active(Plant::NonCampaignerKeepsLeader) {
                self.leader = None;
            }
            self.reset_election_timer();
            return;
        }
        self.become_follower(self.term, None);
        self.role = Role::PreCandidate;
        self.votes.clear();
        self.count_vote(self.cfg.id, true);
        if self.role != Role::PreCandidate {
            return; // a single-node cluster is already leader
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.other_voters() {
            self.msgs.push(Message {
                from: self.cfg.id,
                to: peer,
                term: self.term + 1,
                body: Body::PreVote {
                    last_index,
                    last_term,
                },
            });
        }
    }

    /// Campaigns in the next term; `transfer`: at the leader's request (`TimeoutNow`),
    /// which lets voters that still hear from it grant their votes.
    fn campaign(&mut self, transfer: bool) {
        // Terms from outside are at most MAX_TERM (checked where they enter, and in
        // `step`), and pre-campaigns stop below it.
        assert!(self.term < MAX_TERM, "campaigning past the term ceiling");
        self.term += 1;
        self.vote = Some(self.cfg.id);
        self.leader = None;
        self.role = Role::Candidate;
        self.reset_election_timer();
        self.votes.clear();
        self.count_vote(self.cfg.id, true);
        if self.role != Role::Candidate {
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.other_voters() {
            self.send(
                peer,
                Body::Vote {
                    last_index,
                    last_term,
                    transfer,
                },
            );
        }
    }

    fn count_vote(&mut self, from: NodeId, granted: bool) {
        self.votes.insert(from, granted);
        match self.membership.vote_result(&self.votes) {
            VoteResult::Won => match self.role {
                Role::PreCandidate => self.campaign(false),
                Role::Candidate => self.become_leader(),
                _ => {}
            },
            VoteResult::Lost => self.become_follower(self.term, None),
            VoteResult::Pending => {}
        }
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.reads.term_changed();
        }
        if self.role == Role::Leader {
            self.reads.leadership_lost(self.cfg.id);
            self.progress.clear();
            self.transfer = None;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.reset_election_timer();
    }

    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.heartbeat_elapsed = 0;
        self.quorum_elapsed = 0;
        let next = self.log.last_index() + 1;
        self.progress = self
            .membership
            .peers_of(self.cfg.id)
            .map(|p| (p, Progress::new(next)))
            .collect();
        // The no-op of §8: committing it commits everything before it and tells us
        // our commit index is current, which ReadIndex needs.
        self.log.append(Entry::noop(next, self.term));
        // Reads forwarded while we were a follower: we are now the one to ask.
        for id in self.reads.take_forwarded() {
            self.leader_read(id, self.cfg.id);
        }
    }

    /// A valid leader for our term spoke: follow it and restart the election timer.
    fn follow(&mut self, leader: NodeId) {
        if self.role != Role::Follower || self.leader != Some(leader) {
            self.become_follower(self.term, Some(leader));
        }
        self.election_elapsed = 0;
    }

    // ----- ReadIndex --------------------------------------------------------------------

    fn committed_in_term(&self) -> bool {
        self.log.term(self.log.commit) == Some(self.term)
    }

    fn leader_read(&mut self, id: ReadId, from: NodeId) {
        let index = self.committed_in_term().then_some(self.log.commit);
        self.reads.add(id, from, index);
        self.complete_reads();
    }

    /// Serves every pending read whose heartbeat round a majority has acknowledged
    /// (the leader was still the leader when the round went out, after the read came).
    fn complete_reads(&mut self) {
        // The leader has seen every round it started; a single-voter cluster thus
        // confirms its rounds by itself.
        let confirmed = if plant::active(Plant::ReadWithoutConfirmingLeadership) {
            u64::MAX
        } else {
            self.membership.majority_value(|id| {
                if id == self.cfg.id {
                    Some(u64::MAX)
                } else {
                    self.progress.get(&id).map(|pr| pr.read_acked)
                }
            })
        };
        while let Some((read, index)) = self.reads.pop_confirmed(confirmed) {
            if read.from == self.cfg.id {
                self.reads.confirmed(ReadState { id: read.id, index });
            } else {
                self.send(
                    read.from,
                    Body::ReadIndexResponse {
                        id: read.id,
                        index: Some(index),
                    },
                );
            }
        }
    }

    // ----- helpers ----------------------------------------------------------------------

    /// Whom a (pre-)candidate asks for votes.
    fn other_voters(&self) -> Vec<NodeId> {
        let me = self.cfg.id;
        self.membership
            .voters
            .iter()
            .copied()
            .filter(|&v| v != me)
            .collect()
    }

    /// A successful AppendResponse: our log matches the sender's up to `index`.
    fn ack(&mut self, to: NodeId, index: Index) {
        let body = Body::AppendResponse {
            outcome: AppendOutcome::Match { index },
        };
        self.send(to, body);
    }

    fn send(&mut self, to: NodeId, body: Body) {
        self.msgs.push(Message {
            from: self.cfg.id,
            to,
            term: self.term,
            body,
        });
    }
}
