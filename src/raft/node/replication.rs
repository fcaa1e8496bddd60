//! Replication: the follower's side (appends and snapshots from the leader) and the
//! leader's (pacing appends to each follower, answers, stalls, the commit rule).

use super::*;

impl RawNode {
    // ----- replication: follower side --------------------------------------------------

    pub(super) fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    ) {
        if prev_index < self.log.commit {
            // Everything up to our commit index matches any leader's log already.
            let index = self.log.commit;
            self.ack(from, index);
            return;
        }
        if self.log.term(prev_index) != Some(prev_term) {
            let hint = self.log.conflict_hint(prev_index);
            self.send(
                from,
                Body::AppendResponse {
                    outcome: AppendOutcome::Reject {
                        index: prev_index,
                        hint: Some(hint),
                    },
                },
            );
            return;
        }
        let last_new = prev_index + entries.len() as Index;
        if let Some(first_written) = self.log.append_from_leader(entries) {
            self.conf_log_rewritten(first_written);
        }
        self.log.commit_to(commit.min(last_new));
        self.conf_committed();
        self.ack(from, last_new);
    }

    pub(super) fn handle_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        if meta.index <= self.log.commit {
            let index = self.log.commit;
            self.ack(from, index);
            return;
        }
        if self.log.term(meta.index) == Some(meta.term) {
            // We already have the snapshot's last entry: our log matches up to there.
            self.log.commit_to(meta.index);
            self.conf_committed();
        } else {
            self.log.install_snapshot(&meta);
            self.conf_snapshot_installed(&meta);
            self.snapshot_to_install = Some(meta.clone());
        }
        self.ack(from, meta.index);
    }

    // ----- replication: leader side ----------------------------------------------------

    pub(super) fn handle_append_response(&mut self, from: NodeId, outcome: AppendOutcome) {
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        let (index, hint) = match outcome {
            AppendOutcome::Match { index } => {
                if pr.on_success(index.min(last_index)) {
                    self.maybe_commit();
                    if self.transfer.is_some_and(|t| t.target == from) {
                        self.maybe_send_timeout_now();
                    }
                }
                return;
            }
            // Its newer term (handled in `step`) is all it tells.
            AppendOutcome::StaleTerm => return,
            AppendOutcome::Reject { index, hint } => (index, hint),
        };
        if let Some(RejectHint::LogEnds {
            next_index: follower_next,
        }) = hint
        {
            if follower_next <= pr.match_index {
                // Its log ends below what it acknowledged: it lost entries (it was wiped,
                // DISTRAFT_RESET_LOGS). Believe it, or we would never send them again.
                // A lower match only delays commits, never hastens one; if this answer
                // was merely old, the next probe's success restores the match.
                pr.forget_match_beyond(follower_next.saturating_sub(1));
                pr.become_probe(follower_next);
                return;
            }
        }
        // A rejection is stale if it is about an index we already know matches, or
        // not the probe we are waiting for. Index 0, the empty prefix, matches
        // every log: a rejection there is bogus.
        let stale = match pr.mode {
            Mode::Replicate => index <= pr.match_index,
            Mode::Probe => index.checked_add(1) != Some(pr.next_index),
            Mode::Snapshot => true,
        };
        if stale || index == 0 {
            return;
        }
        let next = match hint {
            Some(RejectHint::LogEnds { next_index }) => next_index,
            Some(RejectHint::Conflict { term, first_index }) => {
                match self.log.last_index_of_term(term, index) {
                    Some(last_of_term) => last_of_term + 1,
                    None => first_index,
                }
            }
            None => index,
        };
        let pr = self.progress.get_mut(&from).expect("checked above");
        pr.become_probe(next.min(index));
    }

    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, read_seq: u64) {
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        // A follower cannot have seen a round we have not started.
        pr.read_acked = pr.read_acked.max(read_seq.min(self.reads.seq));
        self.complete_reads();
    }

    /// Once per heartbeat interval: resend probes, and presume lost what a follower
    /// that is behind has not acknowledged for a while.
    pub(super) fn check_stalled_followers(&mut self) {
        let last_index = self.log.last_index();
        for pr in self.progress.values_mut() {
            let progressed = pr.match_index != pr.match_at_check;
            pr.match_at_check = pr.match_index;
            if progressed || pr.match_index >= last_index {
                pr.stalled = 0;
                continue;
            }
            pr.stalled += 1;
            match pr.mode {
                // Probe again from where we were: the match point is still unknown, and
                // falling back to `match_index + 1` (0 + 1 for a new leader) would send
                // a snapshot to a follower that may well have every entry.
                Mode::Probe => pr.probe_sent = false,
                Mode::Replicate if pr.stalled >= self.cfg.stalled_heartbeats => {
                    let next = pr.match_index + 1;
                    pr.become_probe(next);
                }
                Mode::Snapshot if pr.stalled >= SNAPSHOT_RETRY_HEARTBEATS => {
                    let next = pr.match_index + 1;
                    pr.become_probe(next);
                }
                _ => {}
            }
        }
    }

    /// The plant `leader-starves-follower`: the highest-numbered follower gets nothing.
    pub(super) fn starved_by_plant(&self, peer: NodeId) -> bool {
        plant::active(Plant::LeaderStarvesFollower)
            && self.progress.keys().next_back() == Some(&peer)
    }

    /// Whether `send_appends(peer)` would send anything.
    pub(super) fn wants_to_send(&self, peer: NodeId) -> bool {
        if self.starved_by_plant(peer) {
            return false;
        }
        self.progress.get(&peer).is_some_and(|pr| {
            self.may_send_entries(pr)
                || (pr.mode == Mode::Replicate
                    && pr.sent_commit < self.log.commit.min(pr.match_index))
        })
    }

    /// Whether the pacing of `pr` allows another AppendEntries (or snapshot) now.
    pub(super) fn may_send_entries(&self, pr: &Progress) -> bool {
        match pr.mode {
            Mode::Probe => !pr.probe_sent,
            Mode::Replicate => {
                pr.next_index <= self.log.last_index()
                    && pr.inflight.len() < self.cfg.max_inflight_msgs
            }
            Mode::Snapshot => false,
        }
    }

    /// Sends what `peer` is due: a probe, a window of pipelined batches, a snapshot,
    /// or just the news that the commit index moved.
    pub(super) fn send_appends(&mut self, peer: NodeId, log: &mut dyn LogReader) {
        if self.starved_by_plant(peer) {
            return;
        }
        let commit = self.log.commit;
        loop {
            let Some(pr) = self.progress.get(&peer) else {
                return;
            };
            if !self.may_send_entries(pr) {
                break;
            }
            let prev_index = pr.next_index - 1;
            let Some(prev_term) = self.log.term(prev_index) else {
                // Compacted away: only a snapshot can bring this follower up to date.
                let meta = self.snapshot_meta();
                if let Some(pr) = self.progress.get_mut(&peer) {
                    pr.become_snapshot(meta.index);
                }
                self.send(peer, Body::Snapshot { meta });
                return;
            };
            let Some(entries) =
                self.log
                    .entries_to_send(pr.next_index, self.cfg.max_msg_bytes, log)
            else {
                // Not readable now: the owner of `log` knows why; try again later.
                return;
            };
            let last = prev_index + entries.len() as Index;
            let pr = self.progress.get_mut(&peer).expect("checked above");
            pr.sent_commit = commit;
            match pr.mode {
                Mode::Probe => pr.probe_sent = true,
                _ => {
                    pr.inflight.push_back(last);
                    pr.next_index = last + 1;
                }
            }
            self.send(
                peer,
                Body::Append {
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                },
            );
        }
        // Nothing new to send but the commit index moved: say so now rather than at the
        // next heartbeat, so that followers apply (and serve reads) promptly.
        if let Some(pr) = self.progress.get_mut(&peer) {
            let commit_for_peer = commit.min(pr.match_index);
            if pr.mode == Mode::Replicate && pr.sent_commit < commit_for_peer {
                pr.sent_commit = commit_for_peer;
                let read_seq = self.reads.seq;
                self.send(
                    peer,
                    Body::Heartbeat {
                        commit: commit_for_peer,
                        read_seq,
                    },
                );
            }
        }
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        let commit = self.log.commit;
        let read_seq = self.reads.seq;
        let peers: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .map(|(&p, pr)| (p, pr.match_index))
            .collect();
        for (peer, match_index) in peers {
            // Never tell a follower to commit past what we know it shares with us.
            self.send(
                peer,
                Body::Heartbeat {
                    commit: commit.min(match_index),
                    read_seq,
                },
            );
        }
    }

    /// The commit rule (§5.3, §5.4.2): the highest index stored on a majority, but only
    /// if it is from the current term; older entries commit with it, never by counting.
    pub(super) fn maybe_commit(&mut self) {
        let own = if plant::active(Plant::LeaderCountsUnpersisted) {
            self.log.last_index()
        } else {
            self.log.persisted
        };
        let mut candidate = self.membership.majority_value(|id| {
            if id == self.cfg.id {
                Some(own)
            } else {
                self.progress.get(&id).map(|pr| pr.match_index)
            }
        });
        if plant::active(Plant::LeaderCountsRemovedVoter) {
            // The plant: the voters it still tracks (removed ones too) count, against
            // the quorum of the voters it has.
            let mut values: Vec<Index> = self
                .progress
                .iter()
                .filter(|(id, _)| !self.membership.learners.contains(id))
                .map(|(_, pr)| pr.match_index)
                .chain(self.membership.is_voter(self.cfg.id).then_some(own))
                .collect();
            values.sort_unstable_by(|a, b| b.cmp(a));
            candidate = values
                .get(self.membership.quorum() - 1)
                .copied()
                .unwrap_or(0);
        }
        let of_this_term = self.log.term(candidate) == Some(self.term)
            || plant::active(Plant::CommitByCountingOldTerms);
        if candidate > self.log.commit && of_this_term {
            self.log.commit_to(candidate);
            self.conf_committed();
            self.reads.committed(self.log.commit);
            self.complete_reads();
            self.conf_check_commit();
        }
    }
}
