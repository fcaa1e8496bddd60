//! Ready bookkeeping: what the core hands out in a [`Ready`], which of its messages may
//! leave before the persist and which only after (`messages` / `persisted_messages`),
//! and what `advance` learns once it is durable. The protocol is in `node.rs`.

use super::*;
use crate::plant::{self, Plant};

impl RawNode {
    /// Whether `ready()` would return work.
    pub fn has_ready(&self) -> bool {
        !self.msgs.is_empty()
            || self.hard_state_changed()
            || self.snapshot_to_install.is_some()
            || self.log.has_unstable()
            || self.log.commit > self.log.applied
            || self.reads.has_ready(self.log.commit)
            || (self.role == Role::Leader
                && (self.reads.round_needed()
                    || self.progress.keys().any(|&p| self.wants_to_send(p))))
    }

    /// Takes the next batch of work. See [`Ready`] for what to do with it, and call
    /// [`RawNode::advance`] once it is persisted and sent. For a core whose cache holds
    /// every entry; otherwise use [`RawNode::ready_with`].
    pub fn ready(&mut self) -> Ready {
        self.ready_with(&mut NothingEvicted)
    }

    /// [`RawNode::ready`], reading entries evicted from the cache back through `log`
    /// when a follower needs them.
    pub fn ready_with(&mut self, log: &mut dyn LogReader) -> Ready {
        if self.role == Role::Leader {
            if self.reads.start_round().is_some() {
                self.broadcast_heartbeat();
            }
            let peers: Vec<NodeId> = self.progress.keys().copied().collect();
            for peer in peers {
                self.send_appends(peer, log);
            }
        }
        let snapshot = self.snapshot_to_install.take();
        let entries = self.log.take_unstable();
        let current = self.hard_state();
        let saved = self.saved_hard_state;
        let vote_changed = (current.term, current.vote) != (saved.term, saved.vote);
        let commit_worth_saving =
            current.commit != saved.commit && (!entries.is_empty() || snapshot.is_some());
        let hard_state = (vote_changed || commit_worth_saving).then(|| {
            self.saved_hard_state = current;
            if plant::active(Plant::VoteNotPersisted) {
                return HardState {
                    vote: None,
                    ..current
                };
            }
            current
        });
        if !entries.is_empty() || snapshot.is_some() {
            self.handed_out = Some(self.log.last_index());
        }
        let committed = self.log.take_committed();
        let (reads, failed_reads) = self.reads.take_ready(self.log.commit);
        let (messages, persisted_messages) = std::mem::take(&mut self.msgs)
            .into_iter()
            .partition(|msg| self.may_send_before_persist(msg));
        Ready {
            hard_state,
            snapshot,
            entries,
            messages,
            persisted_messages,
            committed,
            reads,
            failed_reads,
        }
    }

    /// A message that may leave before the persist of its `Ready` (see
    /// [`Ready::messages`]). A leader's term and vote were persisted before it could
    /// win its election, so its replication depends on nothing unpersisted; every
    /// answer to a peer (a vote, an append acknowledgement) does.
    fn may_send_before_persist(&self, msg: &Message) -> bool {
        self.role == Role::Leader
            && msg.term == self.term
            && matches!(
                msg.body,
                Body::Append { .. } | Body::Heartbeat { .. } | Body::Snapshot { .. }
            )
    }

    /// The last `Ready` was persisted (and its messages sent). The leader may now count
    /// its own log towards a majority.
    pub fn advance(&mut self) {
        if let Some(last) = self.handed_out.take() {
            self.log.persisted = last.min(self.log.last_index());
            if self.role == Role::Leader {
                self.maybe_commit();
            }
        }
        self.log.evict(self.cfg.max_cached_bytes);
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.commit,
        }
    }

    fn hard_state_changed(&self) -> bool {
        let s = self.saved_hard_state;
        (self.term, self.vote) != (s.term, s.vote)
    }
}
