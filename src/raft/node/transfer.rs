//! Leadership transfer (Raft thesis §3.10). The leader stops taking proposals, brings
//! the target's log up to its own, and then sends it `TimeoutNow`; the target starts
//! an election at once, skipping pre-vote, with vote requests marked as a transfer so
//! that voters who still hear from the leader grant them (a leader's lease protects
//! the cluster from disruption, and this disruption is the leader's own wish). The
//! target wins because its log is as up to date as the leader's, and no proposal can
//! have been appended since. If it has not taken over within an election timeout, the
//! leader gives up and takes proposals again: a transfer can never leave the cluster
//! without a leader for longer than an ordinary election would.

use super::*;

/// A transfer in progress, on the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Transfer {
    pub(super) target: NodeId,
    /// Ticks since it began: it is abandoned after `election_ticks_min`.
    pub(super) elapsed: u64,
}

impl RawNode {
    /// Hands leadership to `target`, or, with `None`, to the voter whose log is the
    /// most up to date (ties: the one heard from recently, then the lowest id). Returns
    /// the target. Proposals are refused with [`RaftError::TransferInProgress`] until
    /// the transfer completes (this node becomes a follower) or is abandoned after an
    /// election timeout. Asking again for the same target changes nothing; for
    /// another, the new one replaces it. Only on the leader; the target must be
    /// another voter.
    pub fn transfer_leader(&mut self, target: Option<NodeId>) -> Result<NodeId, RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        let target = match target {
            Some(id) if id == self.cfg.id => {
                return Err(RaftError::InvalidTransfer("this node already leads".into()))
            }
            Some(id) if !self.membership.is_voter(id) => {
                return Err(RaftError::InvalidTransfer(format!(
                    "node {id} is not a voter"
                )))
            }
            Some(id) => id,
            None => self
                .most_up_to_date_follower()
                .ok_or_else(|| RaftError::InvalidTransfer("there is no other voter".into()))?,
        };
        if self.transfer.is_some_and(|t| t.target == target) {
            return Ok(target);
        }
        self.transfer = Some(Transfer { target, elapsed: 0 });
        self.maybe_send_timeout_now();
        Ok(target)
    }

    /// The leadership transfer in progress on this leader, by target.
    pub fn transferring_to(&self) -> Option<NodeId> {
        self.transfer.map(|t| t.target)
    }

    fn most_up_to_date_follower(&self) -> Option<NodeId> {
        self.progress
            .iter()
            .filter(|(id, _)| self.membership.is_voter(**id))
            .max_by_key(|(id, pr)| (pr.match_index, pr.recent_active, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// Sends `TimeoutNow` once the target holds the leader's whole log (called when a
    /// transfer starts and whenever the target acknowledges entries).
    pub(super) fn maybe_send_timeout_now(&mut self) {
        let Some(transfer) = self.transfer else {
            return;
        };
        let caught_up = self
            .progress
            .get(&transfer.target)
            .is_some_and(|pr| pr.match_index == self.log.last_index());
        if caught_up || plant::active(Plant::TimeoutNowBeforeCaughtUp) {
            self.send(transfer.target, Body::TimeoutNow);
        }
    }

    /// Once per leader tick: abandons a transfer that took an election timeout.
    pub(super) fn tick_transfer(&mut self) {
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        transfer.elapsed += 1;
        if transfer.elapsed >= self.cfg.election_ticks_min {
            self.transfer = None;
        }
    }

    /// `TimeoutNow` from our leader: campaign now, as a transfer. A node that may not
    /// campaign (a learner, a wiped node) ignores it, and the leader gives up in time.
    pub(super) fn handle_timeout_now(&mut self, from: NodeId) {
        if self.role != Role::Follower
            || self.leader != Some(from)
            || !self.may_vote()
            || !self.membership.is_voter(self.cfg.id)
            || self.term >= MAX_TERM
        {
            return;
        }
        self.campaign(true);
    }
}
