//! Who is in the cluster, and what a majority of them is.
//!
//! Voters elect leaders and count towards every quorum (commit, ReadIndex,
//! check-quorum); learners receive the log like any follower but never vote, campaign,
//! or count. Every quorum rule of the core goes through this file, so that "a majority
//! of the voters" is written once (raft-rs's `quorum/` and etcd-io/raft's `quorum`
//! package play the same part).

use std::collections::{BTreeMap, BTreeSet};

use super::types::NodeId;
use crate::plant::{self, Plant};

/// The members of a cluster: voters and learners, disjoint sets of node ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
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
        let counted: Box<dyn Iterator<Item = &NodeId>> =
            if plant::active(Plant::LearnerCountsTowardQuorum) {
                Box::new(self.voters.iter().chain(&self.learners))
            } else {
                Box::new(self.voters.iter())
            };
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
