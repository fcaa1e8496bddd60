//! Membership changes. The rule (Raft thesis §4.1; docs/architecture.md, "Membership
//! changes"): a node uses the membership of the latest change in its log, committed
//! or not, from the moment the entry is in its log; a truncation that drops the entry
//! takes the change back. Changes are single-server (one voter or learner added,
//! promoted or removed), and two guards make that safe:
//!
//! 1. One change at a time: the leader proposes a change only once the latest one in
//!    its log is committed. Any two memberships in use then differ by at most one
//!    voter, so every majority of one overlaps every majority of the other.
//! 2. A new leader proposes no change before an entry of its own term (its no-op) is
//!    committed. That is the known fix of the single-server bug (Ongaro, raft-dev,
//!    2015): without it a new leader could add a change on top of a membership whose
//!    own change an older leader appended but never committed, and two leaders could
//!    be elected by disjoint majorities.
//!
//! A leader that is not a voter of its latest membership (it removed itself) keeps
//! leading, without counting itself, until that membership is committed, then steps
//! down. A node that is not a voter never campaigns (but for one removed by a change
//! it does not know committed: see [`RawNode::may_campaign`]), and vote requests from
//! non-voters are ignored, so a removed node can neither win nor disrupt an election
//! among the members that know of its removal.

use super::*;
use crate::raft::membership::{ConfChange, ConfChangeError};

impl RawNode {
    /// Proposes a membership change, with `context` (the node's own record of the
    /// member) carried beside it. On the leader, returns the index its entry will have;
    /// it takes effect at once. Fails elsewhere, with [`RaftError::ConfChangePending`]
    /// while another change is uncommitted or this leader's term has nothing committed
    /// yet, and with [`RaftError::InvalidConfChange`] for a change that cannot apply.
    pub fn propose_conf_change(
        &mut self,
        change: ConfChange,
        context: &[u8],
    ) -> Result<Index, RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        let pending = self.latest_conf_index() > self.log.commit
            && !plant::active(Plant::TwoConfChangesInFlight);
        let term_unconfirmed =
            !self.committed_in_term() && !plant::active(Plant::ConfChangeWithoutNoop);
        if pending || term_unconfirmed {
            return Err(RaftError::ConfChangePending);
        }
        if self.transfer.is_some() {
            return Err(RaftError::TransferInProgress);
        }
        self.membership
            .apply(change)
            .map_err(RaftError::InvalidConfChange)?;
        let index = self.log.last_index() + 1;
        self.log.append(Entry {
            kind: EntryKind::ConfChange,
            ..Entry::normal(index, self.term, change.encode(context))
        });
        self.conf_entry_appended(index, change);
        Ok(index)
    }

    /// The membership in force after the log's entry `index` (at least the snapshot's
    /// index): what a snapshot taken at `index` records.
    pub fn membership_at(&self, index: Index) -> Membership {
        self.conf_history
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .map_or_else(Membership::default, |(_, m)| m.clone())
    }

    /// The index of the latest membership change in the log (the snapshot's index when
    /// the log holds none).
    pub(super) fn latest_conf_index(&self) -> Index {
        self.conf_history.last().map_or(0, |(at, _)| *at)
    }

    /// A change entry is now in the log at `index`: its membership takes effect. A
    /// change that cannot apply (see [`ConfChangeError`]) changes nothing, on every
    /// node alike.
    fn conf_entry_appended(&mut self, index: Index, change: ConfChange) {
        // (Under the plant the membership in force lags the log's: a change applies
        // to the latest one in the log.)
        let latest = self.conf_history.last().map(|(_, m)| m.clone());
        let base = match latest {
            Some(latest) if plant::active(Plant::ConfChangeOnCommit) => latest,
            _ => self.membership.clone(),
        };
        let next = base
            .apply(change)
            .unwrap_or_else(|_: ConfChangeError| base.clone());
        self.conf_history.push((index, next.clone()));
        if plant::active(Plant::ConfChangeOnCommit) {
            // The plant: the membership waits for the commit index (`conf_committed`).
            return;
        }
        self.set_membership(next);
    }

    /// The commit index moved. Only the plant `conf-change-on-commit` acts on it: the
    /// membership of the latest committed change takes effect.
    pub(super) fn conf_committed(&mut self) {
        if plant::active(Plant::ConfChangeOnCommit) {
            let committed = self.membership_at(self.log.commit);
            if committed != self.membership {
                self.set_membership(committed);
            }
        }
    }

    /// Entries from `from` to the end of the log were just written (appended, or
    /// replacing a conflicting suffix): the changes among them take effect, and those
    /// of the entries they replaced are taken back.
    pub(super) fn conf_log_rewritten(&mut self, from: Index) {
        let kept = self.conf_history.len()
            - self
                .conf_history
                .iter()
                .skip(1)
                .rev()
                .take_while(|(at, _)| *at >= from)
                .count();
        if kept < self.conf_history.len() {
            self.conf_history.truncate(kept);
            let back = self.conf_history.last().map(|(_, m)| m.clone());
            self.set_membership(back.unwrap_or_default());
        }
        let changes: Vec<(Index, ConfChange)> = self
            .log
            .entries_from(from, usize::MAX)
            .iter()
            .filter(|e| e.kind == EntryKind::ConfChange)
            .map(|e| (e.index, decode(e)))
            .collect();
        for (index, change) in changes {
            self.conf_entry_appended(index, change);
        }
    }

    /// The changes in entries restored from disk, at start.
    pub(super) fn conf_restored(&mut self, entries: &[Entry]) {
        for entry in entries.iter().filter(|e| e.kind == EntryKind::ConfChange) {
            self.conf_entry_appended(entry.index, decode(entry));
        }
    }

    /// A snapshot replaced the log: its membership is the one in force.
    pub(super) fn conf_snapshot_installed(&mut self, meta: &SnapshotMeta) {
        self.conf_history = vec![(meta.index, meta.membership.clone())];
        self.set_membership(meta.membership.clone());
    }

    /// The log up to `index` was compacted: the membership in force there becomes the
    /// base, and older ones are forgotten.
    pub(super) fn conf_compacted(&mut self, index: Index) {
        let base = self.membership_at(index);
        self.conf_history.retain(|(at, _)| *at > index);
        self.conf_history.insert(0, (index, base));
    }

    /// Whether this node may stand for election: a voter of its latest membership,
    /// or a node that an uncommitted change removed while it was a voter. That one
    /// may still be needed to commit its own removal (thesis §4.2.2): a leader that
    /// removed itself from two voters and lost its post before the other one got the
    /// entry holds the only log that can win, and the other cannot be elected without
    /// its vote, which it refuses (the other's log is behind). It counts the votes of
    /// its latest membership only, so it wins only as any candidate of it would, then
    /// leads without counting itself and steps down once the removal commits.
    /// Members that hold the removal ignore its requests (it is no voter of theirs).
    pub(super) fn may_campaign(&self) -> bool {
        self.membership.is_voter(self.cfg.id)
            || (self.latest_conf_index() > self.log.commit
                && self.membership_at(self.log.commit).is_voter(self.cfg.id))
    }

    /// The commit index moved: a leader that removed itself steps down once its
    /// removal is committed, first telling the others the commit index, so that they
    /// apply the removal (and elect a leader of their own) without waiting.
    pub(super) fn conf_check_commit(&mut self) {
        if self.role == Role::Leader
            && !self.membership.is_voter(self.cfg.id)
            && self.latest_conf_index() <= self.log.commit
        {
            self.broadcast_heartbeat();
            self.become_follower(self.term, None);
        }
    }

    /// Makes `membership` the one in force; a leader starts or stops replicating to
    /// the members it gained or lost.
    fn set_membership(&mut self, membership: Membership) {
        self.membership = membership;
        if self.role != Role::Leader {
            return;
        }
        let next_index = self.log.last_index() + 1;
        let peers: Vec<NodeId> = self.membership.peers_of(self.cfg.id).collect();
        let keep_removed = plant::active(Plant::LeaderCountsRemovedVoter);
        self.progress
            .retain(|id, _| peers.contains(id) || keep_removed);
        for id in peers {
            self.progress
                .entry(id)
                .or_insert_with(|| Progress::new(next_index));
        }
    }
}

/// The change in an entry of kind `ConfChange`. Its data was checked where it entered
/// (the Raft port, the WAL's decoder) or made by `propose_conf_change`.
fn decode(entry: &Entry) -> ConfChange {
    match ConfChange::decode(&entry.data) {
        Ok((change, _)) => change,
        Err(reason) => panic!(
            "entry {} holds an unchecked membership change: {reason}",
            entry.index
        ),
    }
}
