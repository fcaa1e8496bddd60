//! What elections make known: the leader published to waiting requests, log lines and
//! the leader-change metric when this node's view of role, term or leader changes, and
//! (on the leader) members that stopped answering.

use std::time::Instant;

use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{Driver, RequestError, Transport};
use crate::metrics::metrics;
use crate::raft::{NodeId, Role};

impl<T: Transport> Driver<T> {
    /// Tells waiting requests when a leader appears (or goes), so they retry at once
    /// rather than after their back-off.
    pub(super) fn publish_leader(&self) {
        let known = if self.up { self.node.leader() } else { None };
        self.leader.send_if_modified(|leader| {
            let changed = *leader != known;
            *leader = known;
            changed
        });
    }

    /// An operator asks this leader to hand over (see `RawNode::transfer_leader`).
    pub(super) fn on_transfer_leader(
        &mut self,
        to: Option<NodeId>,
        reply: oneshot::Sender<Result<NodeId, RequestError>>,
    ) {
        let answer = if self.up {
            self.node.transfer_leader(to).map_err(RequestError::from)
        } else {
            Err(RequestError::Stopped)
        };
        if let Ok(target) = answer {
            info!(to = self.name_of(target), "handing leadership over");
        }
        let _ = reply.send(answer);
    }

    /// Logs elections as this node sees them: its role, term and leader.
    pub(super) fn log_role_change(&mut self) {
        self.log_voting_change();
        let now = (self.node.role(), self.node.term(), self.node.leader());
        if self.last_role == Some(now) {
            return;
        }
        // The first look counts only if it already shows a leader.
        let leader_changed = match self.last_role {
            None => now.2.is_some(),
            Some((_, _, before)) => before != now.2,
        };
        let was_leading = self
            .last_role
            .is_some_and(|(before, _, _)| before == Role::Leader);
        self.last_role = Some(now);
        let (role, term, leader) = now;
        if was_leading != (role == Role::Leader) {
            self.lag
                .leadership_changed(role == Role::Leader, Instant::now());
        }
        let leader = leader.map(|id| self.config.name_of(id));
        let leader = leader.as_deref();
        if leader_changed {
            metrics().leader_changed(term, leader.unwrap_or(""));
        }
        match role {
            Role::Leader => info!(term, "became the leader"),
            Role::Follower => info!(term, leader = leader.unwrap_or("unknown"), "following"),
            Role::PreCandidate | Role::Candidate => debug!(term, ?role, "campaigning"),
        }
    }

    /// Logs when a wiped node withholds its vote, and when it votes again.
    fn log_voting_change(&mut self) {
        let may_vote = self.node.may_vote();
        if may_vote == self.last_may_vote {
            return;
        }
        self.last_may_vote = may_vote;
        if may_vote {
            info!(
                term = self.node.term(),
                "caught up after the wipe (DISTRAFT_RESET_LOGS): voting again"
            );
        } else {
            warn!(
                term = self.node.term(),
                "this node's log was wiped (DISTRAFT_RESET_LOGS): it neither votes nor \
                 campaigns until a leader has sent it an entry of a later term. If a \
                 majority of the members was wiped, no leader can be elected: to start \
                 a new cluster, delete every member's data directories instead \
                 (docs/storage.md, \"Wiping a node\")"
            );
        }
    }

    /// Logs (leader only) each follower that stopped answering for an election
    /// timeout; its return is logged when it answers (see `on_peer_message`).
    pub(super) fn watch_members(&mut self, now: Instant) {
        let followers: Vec<NodeId> = self.node.membership().peers_of(self.config.id).collect();
        let after = self.config.election_timeout;
        for id in self.lag.newly_silent(followers.into_iter(), now, after) {
            warn!(
                member = self.name_of(id),
                silent_ms = after.as_millis() as u64,
                "member unreachable: no answer to appends or heartbeats"
            );
        }
    }

    /// A member's name, for logs.
    pub(super) fn name_of(&self, id: NodeId) -> String {
        self.config.name_of(id)
    }
}
