//! Membership on the driver's side: the registry follows the core (records learnt from
//! the `ConfChange` entries that reach the log, the membership published after every
//! turn), operators' changes pass the safety check before they are proposed, and the
//! leader promotes caught-up learners that asked for it (`DISTRAFT_AUTO_PROMOTE`).
//!
//! The safety check: a change is refused, unless forced, when the voters reachable now
//! would be short of a quorum of the configuration after it — removing a healthy voter
//! while another is down, promoting a learner that is behind or silent. Reachable
//! means the leader itself, or a follower that answered within an election timeout.

use std::time::Instant;

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::requests::PendingProposal;
use super::{Committed, Driver, RequestError, Transport};
use crate::config::Member;
use crate::raft::{ConfChange, Entry, EntryKind, Index, Membership, NodeId, Role};
use crate::registry::Record;

/// A learner within this many entries of the leader's log counts as caught up: it
/// may be promoted (by an operator without `force`, or automatically).
pub const CAUGHT_UP_ENTRIES: u64 = 64;
/// The leader looks for learners to promote this often, in ticks.
const AUTO_PROMOTE_EVERY_TICKS: u64 = 10;

/// A change an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// A new member (its id is given here, the record's is ignored), as a learner or
    /// straight as a voter.
    Add {
        record: Record,
        learner: bool,
    },
    Promote {
        name: String,
    },
    Remove {
        name: String,
    },
}

/// A change, and how to carry it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRequest {
    pub change: MemberChange,
    /// Carry it out even when the safety check advises against it.
    pub force: bool,
    /// Only answer the safety check.
    pub dry_run: bool,
}

/// How many failures a set of voters survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultTolerance {
    pub voters: usize,
    pub quorum: usize,
    /// Voters that may fail with the cluster still available.
    pub may_fail: usize,
}

impl FaultTolerance {
    fn of(membership: &Membership) -> FaultTolerance {
        let voters = membership.voters.len();
        let quorum = membership.quorum();
        FaultTolerance {
            voters,
            quorum,
            may_fail: voters.saturating_sub(quorum),
        }
    }
}

/// The safety check's answer about one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub before: FaultTolerance,
    pub after: FaultTolerance,
    /// The voters of the configuration after the change that are reachable now, and
    /// those that are not (by name).
    pub reachable: Vec<String>,
    pub unreachable: Vec<String>,
    /// Why the change is unsafe; `None`: safe.
    pub risk: Option<String>,
}

/// What a change did (or, on a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeOutcome {
    pub assessment: Assessment,
    /// The member changed (an added one with its new id).
    pub member: Member,
    /// The index of the change's entry, once applied; `None` on a dry run, or when
    /// nothing had to change (adding a member that already is one, as it is).
    pub index: Option<Index>,
}

/// How the safety check's refusal ends. A joining node recognizes it by this (the
/// refusal is temporary: members unreachable or behind now may be back soon).
pub const UNSAFE_CHANGE_HINT: &str = "add force to make the change anyway";

/// Why a change was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("no member is called {0:?}")]
    NotFound(String),
    /// The change contradicts the membership (a name or address taken, a voter
    /// promoted, ...).
    #[error("{0}")]
    Conflict(String),
    /// The safety check advises against it; `force` would carry it out.
    #[error("refused: {}; {UNSAFE_CHANGE_HINT}", .0.risk.as_deref().unwrap_or("unsafe"))]
    Unsafe(Box<Assessment>),
    /// Another change is not committed yet, or this leader's term has nothing
    /// committed yet: try again shortly.
    #[error("{0}")]
    Busy(String),
}

/// The driver's answer to a change, before it commits: the outcome so far and, when
/// an entry was proposed, where its commit will be told.
pub type ChangeReply = oneshot::Sender<Result<Proposed, ChangeError>>;

pub struct Proposed {
    pub outcome: ChangeOutcome,
    pub committed: Option<oneshot::Receiver<Result<Committed, RequestError>>>,
}

impl<T: Transport> Driver<T> {
    /// Learns the records of the membership changes in `entries` (about to be
    /// persisted, or restored), and publishes the core's membership. Called before
    /// the turn's messages leave, so that the links to new members exist when the
    /// first append for them does.
    pub(super) fn follow_membership(&self, entries: &[Entry]) {
        let registry = &self.config.registry;
        // Called on every turn: in the common case (no change) one read of the roster.
        if entries.iter().any(|e| e.kind == EntryKind::ConfChange) {
            registry.learn(entries.iter().filter_map(record_of));
        }
        let now = self.node.membership();
        let before = registry.roster();
        if before.membership == *now {
            return;
        }
        registry.set_membership(now);
        let id = self.config.id;
        if before.membership.contains(id) && !now.contains(id) {
            warn!(
                "this node was removed from the cluster: it takes no part any more; \
                 stop it, wipe its data, and join again to come back"
            );
        }
    }

    /// `Some` when this node was a member (a bootstrap voter, or added by a change
    /// this node applied) and the membership in force no longer has it.
    pub(super) fn removed_member(&self) -> Option<super::DriverError> {
        let id = self.config.id;
        let was_member = self.config.members.iter().any(|m| m.id == id)
            || self.kv.members().any(|r| r.member.id == id);
        (was_member && !self.node.membership().contains(id)).then(|| super::DriverError::Removed {
            name: self.config.name.clone(),
            id,
        })
    }

    /// An operator's change, on the leader: checked, assessed, then proposed.
    pub(super) fn on_change_membership(&mut self, request: ChangeRequest, reply: ChangeReply) {
        let _ = reply.send(self.change_membership(request));
    }

    fn change_membership(&mut self, request: ChangeRequest) -> Result<Proposed, ChangeError> {
        if !self.up {
            return Err(RequestError::Stopped.into());
        }
        if self.node.role() != Role::Leader {
            return Err(RequestError::NotLeader {
                leader: self.node.leader(),
            }
            .into());
        }
        let roster = self.config.registry.roster();
        let membership = self.node.membership().clone();
        let (change, record) = match request.change {
            MemberChange::Add { record, learner } => {
                match self.existing_member(&record, learner, &membership)? {
                    Some(member) => {
                        // Already a member, as asked: a repeated join changes nothing.
                        let assessment = self.assess(&membership, &membership);
                        return Ok(Proposed {
                            outcome: ChangeOutcome {
                                assessment,
                                member,
                                index: None,
                            },
                            committed: None,
                        });
                    }
                    None => {
                        let id = roster.next_id();
                        let record = Record {
                            member: Member {
                                id,
                                ..record.member
                            },
                            ..record
                        };
                        let change = match learner {
                            true => ConfChange::AddLearner(id),
                            false => ConfChange::AddVoter(id),
                        };
                        (change, record)
                    }
                }
            }
            MemberChange::Promote { name } => {
                let record = current_record(&roster, &membership, &name)?;
                if membership.is_voter(record.member.id) {
                    return Err(ChangeError::Conflict(format!("{name} is already a voter")));
                }
                (ConfChange::AddVoter(record.member.id), record)
            }
            MemberChange::Remove { name } => {
                let record = current_record(&roster, &membership, &name)?;
                (ConfChange::Remove(record.member.id), record)
            }
        };
        let after = membership
            .apply(change)
            .map_err(|err| ChangeError::Conflict(err.to_string()))?;
        let assessment = self.assess(&membership, &after);
        if assessment.risk.is_some() && !request.force && !request.dry_run {
            return Err(ChangeError::Unsafe(Box::new(assessment)));
        }
        if request.dry_run {
            return Ok(Proposed {
                outcome: ChangeOutcome {
                    assessment,
                    member: record.member,
                    index: None,
                },
                committed: None,
            });
        }
        let (index, committed) = self.propose_change(change, &record)?;
        info!(
            change = ?change,
            member = record.member.name,
            index,
            "membership change proposed"
        );
        Ok(Proposed {
            outcome: ChangeOutcome {
                assessment,
                member: record.member,
                index: Some(index),
            },
            committed: Some(committed),
        })
    }

    /// Proposes `change` with `record` as its context; the receiver learns when it
    /// is applied.
    fn propose_change(
        &mut self,
        change: ConfChange,
        record: &Record,
    ) -> Result<(Index, oneshot::Receiver<Result<Committed, RequestError>>), ChangeError> {
        let context = record.encode();
        // What every follower's wire check will ask of it, asked here first: a record
        // they would refuse must not reach the log.
        Record::decode(record.member.id, &context).map_err(ChangeError::Conflict)?;
        let term = self.node.term();
        let index = self
            .node
            .propose_conf_change(change, &context)
            .map_err(|err| match err {
                crate::raft::RaftError::ConfChangePending => ChangeError::Busy(err.to_string()),
                crate::raft::RaftError::TransferInProgress => ChangeError::Busy(
                    "leadership is being handed over; try again once it is done".into(),
                ),
                crate::raft::RaftError::InvalidConfChange(err) => {
                    ChangeError::Conflict(err.to_string())
                }
                other => ChangeError::Request(other.into()),
            })?;
        // The links to a new member must know where it is before the core's first
        // append to it leaves, at the end of this very turn. Learnt only now, so that
        // a refused proposal leaves no record behind (and takes no id).
        self.config.registry.learn([record.clone()]);
        self.config.registry.set_membership(self.node.membership());
        let (reply, committed) = oneshot::channel();
        if let Some(old) = self
            .proposals
            .insert(index, PendingProposal { term, reply })
        {
            old.answer(Err(RequestError::LeadershipLost));
        }
        Ok((index, committed))
    }

    /// The member `record` names, if it already is one exactly as asked (a repeated
    /// join); an error if its name or an address belongs to another member.
    fn existing_member(
        &self,
        record: &Record,
        learner: bool,
        membership: &Membership,
    ) -> Result<Option<Member>, ChangeError> {
        let roster = self.config.registry.roster();
        let wanted = &record.member;
        for member in roster.current() {
            let same_name = member.name == wanted.name;
            let same_peer =
                (&member.peer_host, member.peer_port) == (&wanted.peer_host, wanted.peer_port);
            let same_client = (&member.client_host, member.client_port)
                == (&wanted.client_host, wanted.client_port);
            if same_name && same_peer && same_client {
                let is_learner = membership.learners.contains(&member.id);
                return match (learner, is_learner) {
                    // A repeated join: the node may have died before it recorded its
                    // identity. A learner that lost its data only catches up again.
                    (true, true) => Ok(Some(member.clone())),
                    // A voter that asks to join again has lost its data (a node that
                    // holds data never asks): taking its old id back would let a
                    // voter with an empty log vote, which Raft's safety cannot allow.
                    (true, false) => Err(ChangeError::Conflict(format!(
                        "{} (id {}) is already a voter; if it lost its data, remove it \
                         and let it join again",
                        member.name, member.id
                    ))),
                    (false, true) => Err(ChangeError::Conflict(format!(
                        "{} is already a learner: promote it",
                        member.name
                    ))),
                    // Added as a voter again, as it is: nothing to do.
                    (false, false) => Ok(Some(member.clone())),
                };
            }
            if same_name || same_peer || same_client {
                return Err(ChangeError::Conflict(format!(
                    "member {} (id {}) already has {}; names and addresses are unique \
                     among the members",
                    member.name,
                    member.id,
                    if same_name {
                        format!("the name {}", wanted.name)
                    } else if same_peer {
                        format!("the peer address {}:{}", wanted.peer_host, wanted.peer_port)
                    } else {
                        format!(
                            "the client address {}:{}",
                            wanted.client_host, wanted.client_port
                        )
                    }
                )));
            }
        }
        Ok(None)
    }

    /// The safety check of going from `before` to `after`, as this leader sees the
    /// members now.
    pub(super) fn assess(&self, before: &Membership, after: &Membership) -> Assessment {
        let now = Instant::now();
        let roster = self.config.registry.roster();
        let name = |id: NodeId| {
            roster
                .member(id)
                .map_or_else(|| id.to_string(), |m| m.name.clone())
        };
        let mut reachable = Vec::new();
        let mut unreachable = Vec::new();
        for &id in &after.voters {
            if self.reachable(id, now) && (before.is_voter(id) || self.caught_up(id)) {
                reachable.push(name(id));
            } else {
                unreachable.push(name(id));
            }
        }
        let (before_ft, after_ft) = (FaultTolerance::of(before), FaultTolerance::of(after));
        let risk = (reachable.len() < after_ft.quorum).then(|| {
            format!(
                "after the change {} of its {} voters must agree (its quorum), but only {} \
                 would be reachable and up to date ({}); unreachable or behind: {}",
                after_ft.quorum,
                after_ft.voters,
                reachable.len(),
                list(&reachable),
                list(&unreachable)
            )
        });
        Assessment {
            before: before_ft,
            after: after_ft,
            reachable,
            unreachable,
            risk,
        }
    }

    /// Whether member `id` answers: this node, or a follower heard from within an
    /// election timeout.
    fn reachable(&self, id: NodeId, now: Instant) -> bool {
        id == self.config.id
            || self
                .lag
                .last_answer(id, now)
                .is_some_and(|age| age < self.config.election_timeout)
    }

    /// Whether member `id` holds the leader's log but for the last few entries.
    fn caught_up(&self, id: NodeId) -> bool {
        let status = self.node.status();
        status.progress.iter().any(|&(peer, matched, _)| {
            peer == id && matched + CAUGHT_UP_ENTRIES >= status.last_index
        })
    }

    /// On the leader, every few ticks: promotes one learner that asked for it
    /// (`DISTRAFT_AUTO_PROMOTE`) once it is caught up and reachable, when the safety
    /// check agrees.
    pub(super) fn auto_promote(&mut self) {
        self.ticks_since_promote_check += 1;
        if self.ticks_since_promote_check < AUTO_PROMOTE_EVERY_TICKS
            || self.node.role() != Role::Leader
            || !self.up
        {
            return;
        }
        self.ticks_since_promote_check = 0;
        let roster = self.config.registry.roster();
        let membership = self.node.membership().clone();
        let now = Instant::now();
        let candidate = membership.learners.iter().copied().find(|&id| {
            roster.record(id).is_some_and(|r| r.auto_promote)
                && self.reachable(id, now)
                && self.caught_up(id)
        });
        let Some(id) = candidate else { return };
        let Some(record) = roster.record(id).cloned() else {
            return;
        };
        let change = ConfChange::AddVoter(id);
        let Ok(after) = membership.apply(change) else {
            return;
        };
        if let Some(risk) = self.assess(&membership, &after).risk {
            warn!(
                member = record.member.name,
                "not promoting the learner: {risk}"
            );
            return;
        }
        match self.propose_change(change, &record) {
            Ok((index, _)) => info!(
                member = record.member.name,
                index, "promoting the caught-up learner to voter (DISTRAFT_AUTO_PROMOTE)"
            ),
            // Another change in flight, or a transfer: the next look tries again.
            Err(ChangeError::Busy(_)) => {}
            Err(err) => warn!(
                member = record.member.name,
                "cannot promote the learner: {err}"
            ),
        }
    }
}

/// The record a `ConfChange` entry carries (checked where it entered).
fn record_of(entry: &Entry) -> Option<Record> {
    if entry.kind != EntryKind::ConfChange {
        return None;
    }
    let (change, context) = ConfChange::decode(&entry.data).ok()?;
    Record::decode(change.id(), context).ok()
}

/// The records of the `ConfChange` entries among `entries`.
pub(super) fn records_in(entries: &[Entry]) -> Vec<Record> {
    entries.iter().filter_map(record_of).collect()
}

/// The record of the current member called `name`.
fn current_record(
    roster: &crate::registry::Roster,
    membership: &Membership,
    name: &str,
) -> Result<Record, ChangeError> {
    roster
        .named(name)
        .filter(|m| membership.contains(m.id))
        .and_then(|m| roster.record(m.id))
        .cloned()
        .ok_or_else(|| ChangeError::NotFound(name.to_string()))
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}
