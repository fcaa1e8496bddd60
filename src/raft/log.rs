//! The in-memory Raft log: a compacted prefix (the snapshot) followed by entries, plus
//! the commit/apply/persist cursors. Storage keeps the durable copy; the core keeps this
//! one so that it never needs to read from disk.

use std::collections::VecDeque;

use super::types::{Entry, Index, SnapshotMeta, Term};

#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The last index and term covered by the snapshot (0, 0 when there is none).
    pub snapshot_index: Index,
    pub snapshot_term: Term,
    /// `entries[i].index == snapshot_index + 1 + i`.
    entries: VecDeque<Entry>,
    /// Highest index known to be committed (§5.3).
    pub commit: Index,
    /// Highest index handed out for applying.
    pub applied: Index,
    /// Highest index known to be durable in storage.
    pub persisted: Index,
    /// First index not yet handed to storage; `last_index() + 1` when all are handed.
    unstable_from: Index,
}

impl RaftLog {
    /// A log as recovered from storage: everything in it is already persisted.
    pub fn restore(snapshot: Option<&SnapshotMeta>, entries: Vec<Entry>, commit: Index) -> RaftLog {
        let (snapshot_index, snapshot_term) = snapshot.map_or((0, 0), |s| (s.index, s.term));
        let entries: VecDeque<Entry> = entries
            .into_iter()
            .filter(|e| e.index > snapshot_index)
            .collect();
        let last = snapshot_index + entries.len() as Index;
        RaftLog {
            snapshot_index,
            snapshot_term,
            entries,
            commit: commit.clamp(snapshot_index, last),
            applied: snapshot_index,
            persisted: last,
            unstable_from: last + 1,
        }
    }

    pub fn last_index(&self) -> Index {
        self.snapshot_index + self.entries.len() as Index
    }

    pub fn last_term(&self) -> Term {
        self.entries.back().map_or(self.snapshot_term, |e| e.term)
    }

    /// The term of the entry at `index`, if the log still knows it.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|e| e.term)
    }

    fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    /// Entries from `from` on, at most `max_bytes` of them but always at least one
    /// (when there is one), so that a huge entry still gets through.
    pub fn entries_from(&self, from: Index, max_bytes: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let start = from.saturating_sub(self.snapshot_index + 1) as usize;
        for e in self.entries.iter().skip(start) {
            bytes += e.size();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        out
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as up to date as
    /// ours (§5.4.1): later last term wins, equal terms compare length.
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    /// The leader appends a new entry of its own.
    pub fn append(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        self.entries.push_back(entry);
    }

    /// Appends entries received from the leader after a successful consistency check at
    /// their predecessor: entries already present are skipped, the first conflicting
    /// entry and everything after it are replaced (§5.3 step 3).
    pub fn append_from_leader(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            match self.term(entry.index) {
                Some(t) if t == entry.term => continue,
                Some(_) => {
                    // Raft guarantees committed entries never conflict.
                    assert!(
                        entry.index > self.commit,
                        "conflict at committed index {}",
                        entry.index
                    );
                    self.truncate_from(entry.index);
                    self.entries.push_back(entry);
                }
                None if entry.index <= self.snapshot_index => continue,
                None => {
                    debug_assert_eq!(entry.index, self.last_index() + 1);
                    self.entries.push_back(entry);
                }
            }
        }
    }

    fn truncate_from(&mut self, index: Index) {
        self.entries
            .truncate((index - self.snapshot_index - 1) as usize);
        self.persisted = self.persisted.min(index - 1);
        self.unstable_from = self.unstable_from.min(index);
    }

    /// The hint a follower returns when the check at `prev_index` fails (§5.3,
    /// "fast back-off"): the conflicting term and the first index it holds of it, or
    /// `(0, last_index + 1)` when the log is too short.
    pub fn conflict_hint(&self, prev_index: Index) -> (Term, Index) {
        match self.term(prev_index) {
            None => (0, (self.last_index() + 1).min(prev_index)),
            Some(term) => {
                let mut first = prev_index;
                while first > self.commit + 1
                    && first - 1 > self.snapshot_index
                    && self.term(first - 1) == Some(term)
                {
                    first -= 1;
                }
                (term, first)
            }
        }
    }

    /// The last index holding `term`, searching down from `at_most`.
    pub fn last_index_of_term(&self, term: Term, at_most: Index) -> Option<Index> {
        let mut i = at_most.min(self.last_index());
        while i > self.snapshot_index {
            match self.term(i) {
                Some(t) if t == term => return Some(i),
                Some(t) if t < term => return None,
                _ => i -= 1,
            }
        }
        None
    }

    pub fn commit_to(&mut self, index: Index) {
        if index > self.commit {
            debug_assert!(index <= self.last_index());
            self.commit = index;
        }
    }

    /// Entries not yet handed to storage; marks them handed.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let out = self.entries_from(self.unstable_from, usize::MAX);
        self.unstable_from = self.last_index() + 1;
        if self.unstable_from <= self.snapshot_index {
            self.unstable_from = self.snapshot_index + 1;
        }
        out
    }

    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Committed entries not yet handed out for applying; marks them handed.
    pub fn take_committed(&mut self) -> Vec<Entry> {
        if self.commit <= self.applied {
            return Vec::new();
        }
        let out: Vec<Entry> = self
            .entries
            .iter()
            .skip((self.applied - self.snapshot_index) as usize)
            .take((self.commit - self.applied) as usize)
            .cloned()
            .collect();
        self.applied = self.commit;
        out
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub fn install_snapshot(&mut self, meta: &SnapshotMeta) {
        self.entries.clear();
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
        self.commit = meta.index;
        self.applied = meta.index;
        self.persisted = meta.index;
        self.unstable_from = meta.index + 1;
    }

    /// Drops entries up to `index`, which the state machine's snapshot now covers.
    pub fn compact(&mut self, index: Index) {
        if index <= self.snapshot_index || index > self.applied {
            return;
        }
        let Some(term) = self.term(index) else { return };
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn e(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn conflicting_suffix_is_replaced_and_marked_unstable() {
        let mut log = RaftLog::restore(None, vec![e(1, 1), e(2, 1), e(3, 2)], 1);
        assert_eq!(log.persisted, 3);
        log.append_from_leader(vec![e(2, 1), e(3, 3), e(4, 3)]);
        assert_eq!(log.term(3), Some(3));
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.persisted, 2);
        let unstable = log.take_unstable();
        assert_eq!(
            unstable.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![3, 4]
        );
    }

    #[test]
    fn hints_point_at_the_start_of_the_conflicting_term() {
        let log = RaftLog::restore(None, vec![e(1, 1), e(2, 2), e(3, 2), e(4, 2)], 0);
        assert_eq!(log.conflict_hint(4), (2, 2));
        assert_eq!(log.conflict_hint(9), (0, 5));
        assert_eq!(log.last_index_of_term(1, 4), Some(1));
        assert_eq!(log.last_index_of_term(3, 4), None);
    }

    #[test]
    fn compaction_keeps_terms_and_indexes() {
        let mut log = RaftLog::restore(None, vec![e(1, 1), e(2, 1), e(3, 2)], 3);
        assert_eq!(log.take_committed().len(), 3);
        log.compact(2);
        assert_eq!((log.snapshot_index, log.snapshot_term), (2, 1));
        assert_eq!(log.term(2), Some(1));
        assert_eq!(log.term(1), None);
        assert_eq!(log.entries_from(3, 0).len(), 1);
        assert_eq!(log.last_index(), 3);
    }
}
