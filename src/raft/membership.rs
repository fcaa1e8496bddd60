//! Who is in the cluster, and what a majority of them is.
//!
//! Voters elect leaders and count towards every quorum (commit, ReadIndex,
//! check-quorum); learners receive the log like any follower but never vote, campaign,
//! or count. Every quorum rule of the core goes through this file, so that "a majority
//! of the voters" is written once (raft-rs's `quorum/` and etcd-io/raft's `quorum`
//! package play the same part).

use std::collections::{BTreeMap, BTreeSet};

// Through the parent, which re-exports it: membership.rs and types.rs use each other's
// types, and the parent is the one place both come from.
use super::NodeId;
use crate::plant::{self, Plant};

/// The members of a cluster: voters and learners, disjoint sets of node ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

/// One change of membership: the single-server changes of the Raft thesis (§4.1),
/// plus learners. It travels in a `ConfChange` entry ([`ConfChange::encode`]) with a
/// context of the node's own (the member's name and addresses), and takes effect on
/// each node as soon as the entry is in its log, committed or not (thesis §4.1;
/// docs/architecture.md, "Membership changes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChange {
    /// A new member that receives the log but does not vote.
    AddLearner(NodeId),
    /// A new voter, or a learner promoted to one.
    AddVoter(NodeId),
    /// A voter or learner leaves.
    Remove(NodeId),
}

/// The first byte of a change's encoding: a later layout gets a new version.
const CONF_CHANGE_VERSION: u8 = 1;
const OP_ADD_LEARNER: u8 = 1;
const OP_ADD_VOTER: u8 = 2;
const OP_REMOVE: u8 = 3;

impl ConfChange {
    /// The member the change is about.
    pub fn id(self) -> NodeId {
        match self {
            ConfChange::AddLearner(id) | ConfChange::AddVoter(id) | ConfChange::Remove(id) => id,
        }
    }

    /// The data of a `ConfChange` entry:
    /// `version u8 = 1 | op u8 (1 add learner, 2 add voter, 3 remove) | id u64 | context`.
    pub fn encode(self, context: &[u8]) -> bytes::Bytes {
        let (op, id) = match self {
            ConfChange::AddLearner(id) => (OP_ADD_LEARNER, id),
            ConfChange::AddVoter(id) => (OP_ADD_VOTER, id),
            ConfChange::Remove(id) => (OP_REMOVE, id),
        };
        let mut data = Vec::with_capacity(10 + context.len());
        data.push(CONF_CHANGE_VERSION);
        data.push(op);
        data.extend_from_slice(&id.to_le_bytes());
        data.extend_from_slice(context);
        data.into()
    }

    /// The change and its context, from a `ConfChange` entry's data. Bytes from the
    /// network and the disk are checked with this where they enter.
    pub fn decode(data: &[u8]) -> Result<(ConfChange, &[u8]), String> {
        let (&version, rest) = data.split_first().ok_or("an empty membership change")?;
        if version != CONF_CHANGE_VERSION {
            return Err(format!("membership change of unknown version {version}"));
        }
        let (&op, rest) = rest.split_first().ok_or("a membership change cut short")?;
        let (id, context) = rest
            .split_first_chunk::<8>()
            .ok_or("a membership change cut short")?;
        let id = NodeId::from_le_bytes(*id);
        let change = match op {
            OP_ADD_LEARNER => ConfChange::AddLearner(id),
            OP_ADD_VOTER => ConfChange::AddVoter(id),
            OP_REMOVE => ConfChange::Remove(id),
            _ => return Err(format!("membership change of unknown kind {op}")),
        };
        if id == 0 {
            return Err("a membership change of node 0".into());
        }
        Ok((change, context))
    }
}

/// Why a change cannot apply to a membership. Every replica meets the same refusal at
/// the same entry, so a refused change is skipped alike everywhere.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeError {
    #[error("node {0} is already a voter")]
    AlreadyVoter(NodeId),
    #[error("node {0} is already a learner")]
    AlreadyLearner(NodeId),
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    #[error("node {0} is the last voter: a cluster needs one")]
    LastVoter(NodeId),
}

/// How an election stands after counting the answers so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority of the voters granted.
    Won,
    /// A majority of the voters refused: the election cannot be won.
    Lost,
    /// Neither yet.
    Pending,
}

impl Membership {
    /// A cluster of voters only.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// A voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Every member but `id`: whom a leader `id` replicates to.
    pub fn peers_of(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.voters
            .iter()
            .chain(&self.learners)
            .copied()
            .filter(move |&m| m != id)
    }

    /// How many voters make a majority. At least 1, so that a cluster that lost its
    /// last voter can never count an empty set as a quorum.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The highest value that a majority of the voters has reached, where `reached`
    /// gives each voter's value (a match index, an acknowledged read round); `None`
    /// for a voter counts as 0. The commit rule and ReadIndex both ask this.
    pub fn majority_value(&self, reached: impl Fn(NodeId) -> Option<u64>) -> u64 {
        // The plant counts the learners too; without it this is the voters alone,
        // with no allocation beyond the values (it runs on every acknowledgement).
        let learners_count = plant::active(Plant::LearnerCountsTowardQuorum);
        let counted = self
            .voters
            .iter()
            .chain(self.learners.iter().filter(|_| learners_count));
        let mut values: Vec<u64> = counted.map(|&v| reached(v).unwrap_or(0)).collect();
        values.sort_unstable_by(|a, b| b.cmp(a));
        // With no voters the quorum (1) is out of range: nothing is reached.
        values.get(self.quorum() - 1).copied().unwrap_or(0)
    }

    /// Counts an election's answers; answers from non-voters do not count.
    pub fn vote_result(&self, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
        let (mut yes, mut no) = (0, 0);
        for (id, &granted) in votes {
            if self.is_voter(*id) {
                if granted {
                    yes += 1;
                } else {
                    no += 1;
                }
            }
        }
        if yes >= self.quorum() {
            VoteResult::Won
        } else if no >= self.quorum() {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    /// The membership after `change`, or why it cannot apply.
    pub fn apply(&self, change: ConfChange) -> Result<Membership, ConfChangeError> {
        let mut next = self.clone();
        match change {
            ConfChange::AddLearner(id) if self.is_voter(id) => {
                return Err(ConfChangeError::AlreadyVoter(id))
            }
            ConfChange::AddLearner(id) if self.learners.contains(&id) => {
                return Err(ConfChangeError::AlreadyLearner(id))
            }
            ConfChange::AddLearner(id) => {
                next.learners.insert(id);
            }
            ConfChange::AddVoter(id) if self.is_voter(id) => {
                return Err(ConfChangeError::AlreadyVoter(id))
            }
            ConfChange::AddVoter(id) => {
                next.learners.remove(&id);
                next.voters.insert(id);
            }
            ConfChange::Remove(id) if !self.contains(id) => {
                return Err(ConfChangeError::NotMember(id))
            }
            ConfChange::Remove(id) if self.voters.len() == 1 && self.is_voter(id) => {
                return Err(ConfChangeError::LastVoter(id))
            }
            ConfChange::Remove(id) => {
                next.voters.remove(&id);
                next.learners.remove(&id);
            }
        }
        Ok(next)
    }

    /// How many of the voters `active` says are active.
    pub fn active_voters(&self, active: impl Fn(NodeId) -> bool) -> usize {
        let counted = self.voters.iter().filter(|&&v| active(v)).count();
        if plant::active(Plant::LearnerCountsTowardQuorum) {
            counted + self.learners.iter().filter(|&&l| active(l)).count()
        } else {
            counted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(voters: &[NodeId], learners: &[NodeId]) -> Membership {
        Membership {
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
        }
    }

    #[test]
    fn learners_never_count_towards_a_majority() {
        let m = membership(&[1, 2, 3], &[4, 5]);
        assert_eq!(m.quorum(), 2);
        // Voter 1 at 10, the learners far ahead: only 1 of 3 voters reached 10.
        let reached = |id| match id {
            1 => Some(10),
            4 | 5 => Some(20),
            _ => None,
        };
        assert_eq!(m.majority_value(reached), 0);
        let reached = |id| match id {
            1 | 2 => Some(10),
            3 => Some(7),
            _ => Some(20),
        };
        assert_eq!(m.majority_value(reached), 10);
        let votes = BTreeMap::from([(1, true), (4, true), (5, true)]);
        assert_eq!(m.vote_result(&votes), VoteResult::Pending);
        let votes = BTreeMap::from([(1, true), (2, true)]);
        assert_eq!(m.vote_result(&votes), VoteResult::Won);
        let votes = BTreeMap::from([(1, true), (2, false), (3, false)]);
        assert_eq!(m.vote_result(&votes), VoteResult::Lost);
        assert_eq!(m.active_voters(|id| id != 2), 2);
        assert_eq!(m.peers_of(1).collect::<Vec<_>>(), [2, 3, 4, 5]);
    }

    #[test]
    fn changes_apply_one_member_at_a_time_and_refuse_what_cannot_be() {
        use ConfChange::*;
        let m = membership(&[1, 2, 3], &[4]);
        assert_eq!(m.apply(AddLearner(5)), Ok(membership(&[1, 2, 3], &[4, 5])));
        assert_eq!(m.apply(AddVoter(4)), Ok(membership(&[1, 2, 3, 4], &[])));
        assert_eq!(m.apply(AddVoter(5)), Ok(membership(&[1, 2, 3, 5], &[4])));
        assert_eq!(m.apply(Remove(2)), Ok(membership(&[1, 3], &[4])));
        assert_eq!(m.apply(Remove(4)), Ok(membership(&[1, 2, 3], &[])));
        assert_eq!(
            m.apply(AddLearner(1)),
            Err(ConfChangeError::AlreadyVoter(1))
        );
        assert_eq!(
            m.apply(AddLearner(4)),
            Err(ConfChangeError::AlreadyLearner(4))
        );
        assert_eq!(m.apply(AddVoter(2)), Err(ConfChangeError::AlreadyVoter(2)));
        assert_eq!(m.apply(Remove(9)), Err(ConfChangeError::NotMember(9)));
        let last = membership(&[1], &[2]);
        assert_eq!(last.apply(Remove(1)), Err(ConfChangeError::LastVoter(1)));
        assert_eq!(last.apply(Remove(2)), Ok(membership(&[1], &[])));
    }

    #[test]
    fn changes_round_trip_and_damage_is_refused() {
        for change in [
            ConfChange::AddLearner(7),
            ConfChange::AddVoter(u64::MAX),
            ConfChange::Remove(1),
        ] {
            let data = change.encode(b"ctx");
            assert_eq!(ConfChange::decode(&data), Ok((change, &b"ctx"[..])));
            for cut in 0..10 {
                assert!(ConfChange::decode(&data[..cut]).is_err(), "cut at {cut}");
            }
        }
        let mut bad = ConfChange::Remove(1).encode(&[]).to_vec();
        bad[1] = 9;
        assert!(ConfChange::decode(&bad).is_err());
        bad[0] = 2;
        assert!(ConfChange::decode(&bad).is_err());
        assert!(ConfChange::decode(&ConfChange::Remove(0).encode(&[])).is_err());
    }

    #[test]
    fn majorities_of_odd_and_even_clusters() {
        for (n, quorum) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)] {
            let m = Membership::with_voters(1..=n);
            assert_eq!(m.quorum(), quorum, "{n} voters");
            // Voter i has reached i: the quorum-th highest is n - quorum + 1.
            assert_eq!(m.majority_value(Some), n - quorum as u64 + 1);
        }
        // No voters: nothing is ever reached or won.
        let none = Membership::default();
        assert_eq!(none.majority_value(|_| Some(5)), 0);
        assert_eq!(none.vote_result(&BTreeMap::new()), VoteResult::Pending);
    }
}
