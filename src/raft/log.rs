//! The in-memory Raft log: a compacted prefix (the snapshot) followed by entries, plus
//! the commit/apply/persist cursors. Storage keeps the durable copy.
//!
//! The payloads are a bounded cache: the term of every entry since the snapshot stays
//! known (the consistency check, conflict hints and elections need it), but once the
//! payloads held pass `max_cached_bytes`, the oldest entries that are applied and
//! persisted are dropped, only runs of their terms kept. A leader that must send dropped entries to a
//! slow follower reads them back through a [`LogReader`] (the WAL in a node).

use std::collections::VecDeque;

use bytes::Bytes;

use super::types::{Entry, Index, LogReader, RejectHint, SnapshotMeta, Term};
use crate::plant::{self, Plant};

#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The last index and term covered by the snapshot (0, 0 when there is none).
    pub snapshot_index: Index,
    pub snapshot_term: Term,
    /// The entries whose payload is in memory: `entries[i].index == cached_from + i`.
    entries: VecDeque<Entry>,
    /// The first entry whose payload is still in memory; the ones between the
    /// snapshot and it were evicted.
    cached_from: Index,
    /// The terms of the evicted entries `(snapshot_index, cached_from)`, as runs:
    /// `(first index, term)` of each, in index order (terms change rarely, so this
    /// stays small however many entries were evicted).
    evicted_terms: VecDeque<(Index, Term)>,
    /// The payload bytes (by [`Entry::size`]) of the entries from `cached_from` on.
    cached_bytes: usize,
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
        let cached_bytes = entries.iter().map(Entry::size).sum();
        RaftLog {
            snapshot_index,
            snapshot_term,
            entries,
            cached_from: snapshot_index + 1,
            evicted_terms: VecDeque::new(),
            cached_bytes,
            commit: commit.clamp(snapshot_index, last),
            applied: snapshot_index,
            persisted: last,
            unstable_from: last + 1,
        }
    }

    pub fn last_index(&self) -> Index {
        self.cached_from - 1 + self.entries.len() as Index
    }

    pub fn last_term(&self) -> Term {
        match self.entries.back() {
            Some(e) => e.term,
            None => self.term(self.last_index()).unwrap_or(self.snapshot_term),
        }
    }

    /// The term of the entry at `index`, if the log still knows it.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index < self.snapshot_index {
            return None;
        }
        if index >= self.cached_from {
            return self
                .entries
                .get((index - self.cached_from) as usize)
                .map(|e| e.term);
        }
        let run = self
            .evicted_terms
            .partition_point(|&(first, _)| first <= index);
        self.evicted_terms
            .get(run.wrapping_sub(1))
            .map(|&(_, term)| term)
    }

    /// Entries from `from` on, at most `max_bytes` of them but always at least one
    /// (when there is one), so that a huge entry still gets through. Only for entries
    /// whose payload is in memory (see [`RaftLog::entries_to_send`]).
    pub fn entries_from(&self, from: Index, max_bytes: usize) -> Vec<Entry> {
        assert!(
            from >= self.cached_from,
            "entry {from} was evicted from the cache (cached from {})",
            self.cached_from
        );
        let mut out = Vec::new();
        let mut bytes = 0;
        let start = (from - self.cached_from) as usize;
        for e in self.entries.iter().skip(start) {
            bytes += e.size();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        out
    }

    /// The entries from `from` on for an AppendEntries, as [`RaftLog::entries_from`],
    /// reading back through `reader` those evicted from the cache. `None` when the
    /// reader cannot provide them now.
    pub fn entries_to_send(
        &self,
        from: Index,
        max_bytes: usize,
        reader: &mut dyn LogReader,
    ) -> Option<Vec<Entry>> {
        if from >= self.cached_from || from > self.last_index() {
            return Some(self.entries_from(from, max_bytes));
        }
        if plant::active(Plant::SkipReadBack) {
            // Send the evicted entries as memory holds them, without their payloads:
            // followers then apply empty commands in their place.
            return Some(
                (from..self.cached_from)
                    .map(|index| Entry::normal(index, self.term(index).unwrap_or(0), Bytes::new()))
                    .collect(),
            );
        }
        let to = self.cached_from - 1;
        let entries = reader.read_entries(from, to, max_bytes)?;
        // What storage returns is what this log handed it: the same indexes, in
        // order, with the same terms. Anything else is a bug in the storage layer.
        assert!(
            !entries.is_empty(),
            "read back no entry from {from} to {to}"
        );
        for (n, entry) in entries.iter().enumerate() {
            let index = from + n as Index;
            assert!(
                entry.index == index && index <= to && self.term(index) == Some(entry.term),
                "read back entry {}/{} where {index}/{:?} was expected",
                entry.index,
                entry.term,
                self.term(index)
            );
        }
        Some(entries)
    }

    /// Drops the payloads of the oldest entries while those held in memory exceed
    /// `max_bytes`: only entries already applied (so never needed for applying again)
    /// and persisted (so storage can give them back).
    pub fn evict(&mut self, max_bytes: usize) {
        let evictable = self.applied.min(self.persisted);
        while self.cached_bytes > max_bytes && self.cached_from <= evictable {
            let Some(entry) = self.entries.pop_front() else {
                break;
            };
            self.cached_bytes -= entry.size();
            if self
                .evicted_terms
                .back()
                .is_none_or(|&(_, term)| term != entry.term)
            {
                self.evicted_terms.push_back((entry.index, entry.term));
            }
            self.cached_from += 1;
        }
    }

    /// The payload bytes held in memory.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as up to date as
    /// ours (§5.4.1): later last term wins, equal terms compare length.
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    /// The leader appends a new entry of its own.
    pub fn append(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        self.push(entry);
    }

    fn push(&mut self, entry: Entry) {
        self.cached_bytes += entry.size();
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
                    self.push(entry);
                }
                None if entry.index <= self.snapshot_index => continue,
                None => {
                    debug_assert_eq!(entry.index, self.last_index() + 1);
                    self.push(entry);
                }
            }
        }
    }

    fn truncate_from(&mut self, index: Index) {
        // Only uncommitted entries conflict, and only applied ones are evicted.
        assert!(index >= self.cached_from, "truncating evicted entries");
        let keep = (index - self.cached_from) as usize;
        let dropped: usize = self.entries.iter().skip(keep).map(Entry::size).sum();
        self.cached_bytes -= dropped;
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(index - 1);
        self.unstable_from = self.unstable_from.min(index);
    }

    /// The hint a follower returns when the check at `prev_index` fails (§5.3,
    /// "fast back-off"): the conflicting term and the first index it holds of it, or
    /// where the log ends when it is too short.
    pub fn conflict_hint(&self, prev_index: Index) -> RejectHint {
        match self.term(prev_index) {
            None => RejectHint::LogEnds {
                next_index: (self.last_index() + 1).min(prev_index),
            },
            Some(term) => {
                let mut first = prev_index;
                while first > self.commit + 1
                    && first - 1 > self.snapshot_index
                    && self.term(first - 1) == Some(term)
                {
                    first -= 1;
                }
                RejectHint::Conflict {
                    term,
                    first_index: first,
                }
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
        assert!(
            self.applied >= self.cached_from - 1,
            "applying evicted entries"
        );
        let out: Vec<Entry> = self
            .entries
            .iter()
            .skip((self.applied + 1 - self.cached_from) as usize)
            .take((self.commit - self.applied) as usize)
            .cloned()
            .collect();
        self.applied = self.commit;
        out
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub fn install_snapshot(&mut self, meta: &SnapshotMeta) {
        self.entries.clear();
        self.evicted_terms.clear();
        self.cached_from = meta.index + 1;
        self.cached_bytes = 0;
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
        if index >= self.cached_from {
            let drop = (index + 1 - self.cached_from) as usize;
            for entry in self.entries.drain(..drop) {
                self.cached_bytes -= entry.size();
            }
            self.cached_from = index + 1;
            self.evicted_terms.clear();
        } else {
            // Runs that end at or before `index` go; the one holding `index + 1` now
            // starts there.
            while self
                .evicted_terms
                .get(1)
                .is_some_and(|&(first, _)| first <= index + 1)
            {
                self.evicted_terms.pop_front();
            }
            if let Some(front) = self.evicted_terms.front_mut() {
                front.0 = front.0.max(index + 1);
            }
            if index + 1 == self.cached_from {
                self.evicted_terms.clear();
            }
        }
        self.snapshot_index = index;
        self.snapshot_term = term;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::raft::Membership;

    fn e(index: Index, term: Term) -> Entry {
        Entry::normal(index, term, Bytes::from_static(b"x"))
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
        assert_eq!(
            log.conflict_hint(4),
            RejectHint::Conflict {
                term: 2,
                first_index: 2
            }
        );
        assert_eq!(log.conflict_hint(9), RejectHint::LogEnds { next_index: 5 });
        assert_eq!(log.last_index_of_term(1, 4), Some(1));
        assert_eq!(log.last_index_of_term(3, 4), None);
    }

    /// A reader over what "storage" holds, counting what it was asked.
    struct Disk {
        entries: Vec<Entry>,
        reads: Vec<(Index, Index)>,
    }

    impl LogReader for Disk {
        fn read_entries(&mut self, from: Index, to: Index, max_bytes: usize) -> Option<Vec<Entry>> {
            self.reads.push((from, to));
            let mut out = Vec::new();
            let mut bytes = 0;
            for e in self
                .entries
                .iter()
                .filter(|e| (from..=to).contains(&e.index))
            {
                bytes += e.size();
                if !out.is_empty() && bytes > max_bytes {
                    break;
                }
                out.push(e.clone());
            }
            Some(out)
        }
    }

    fn big(index: Index) -> Entry {
        Entry::normal(index, 1, Bytes::from(vec![index as u8; 84]))
    }

    #[test]
    fn eviction_keeps_the_budget_but_only_drops_applied_and_persisted_entries() {
        let all: Vec<Entry> = (1..=10).map(big).collect();
        let mut log = RaftLog::restore(None, all.clone(), 10);
        assert_eq!(log.cached_bytes(), 1000);
        // Nothing applied yet: nothing may go, whatever the budget.
        log.evict(0);
        assert_eq!(log.cached_bytes(), 1000);
        assert_eq!(log.take_committed().len(), 10);
        log.evict(350);
        assert_eq!(log.cached_bytes(), 300);
        assert_eq!(log.cached_from, 8);
        // Terms stay known for the consistency check and hints.
        assert_eq!(log.term(1), Some(1));
        assert_eq!(log.last_index_of_term(1, 3), Some(3));
        // New entries are cached until applied and persisted.
        log.append(big(11));
        log.append(big(12));
        log.commit_to(12);
        log.evict(0);
        assert_eq!(log.cached_from, 11, "11 and 12 are not applied yet");
        assert_eq!(log.take_unstable().len(), 2);
        assert_eq!(log.take_committed().len(), 2);
        log.evict(0);
        assert_eq!(log.cached_from, 11, "11 and 12 are not persisted yet");
        log.persisted = 12;
        log.evict(0);
        assert_eq!((log.cached_from, log.cached_bytes()), (13, 0));
    }

    #[test]
    fn evicted_entries_are_read_back_and_cached_ones_are_not() {
        let all: Vec<Entry> = (1..=10).map(big).collect();
        let mut log = RaftLog::restore(None, all.clone(), 10);
        log.take_committed();
        log.evict(300);
        let mut disk = Disk {
            entries: all.clone(),
            reads: Vec::new(),
        };
        // From memory: no read.
        assert_eq!(
            log.entries_to_send(8, 1000, &mut disk),
            Some(all[7..].to_vec())
        );
        assert!(disk.reads.is_empty());
        // Evicted: read back up to the cache, bounded by bytes, at least one.
        assert_eq!(
            log.entries_to_send(2, 250, &mut disk),
            Some(all[1..3].to_vec())
        );
        assert_eq!(
            log.entries_to_send(5, 1000, &mut disk),
            Some(all[4..7].to_vec())
        );
        assert_eq!(
            log.entries_to_send(7, 0, &mut disk),
            Some(all[6..7].to_vec())
        );
        assert_eq!(disk.reads, vec![(2, 7), (5, 7), (7, 7)]);
    }

    #[test]
    fn compaction_truncation_and_snapshots_keep_the_cache_account() {
        let all: Vec<Entry> = (1..=10).map(big).collect();
        let mut log = RaftLog::restore(None, all, 6);
        log.take_committed();
        log.evict(700);
        assert_eq!((log.cached_from, log.cached_bytes()), (4, 700));
        log.compact(5);
        assert_eq!((log.cached_from, log.cached_bytes()), (6, 500));
        // A new leader replaces 8.. with two entries of its own.
        let mut replacement = big(8);
        replacement.term = 2;
        log.append_from_leader(vec![replacement, Entry { term: 2, ..big(9) }]);
        assert_eq!((log.last_index(), log.cached_bytes()), (9, 400));
        log.install_snapshot(&SnapshotMeta {
            index: 20,
            term: 3,
            membership: Membership::with_voters([1]),
        });
        assert_eq!((log.cached_from, log.cached_bytes()), (21, 0));
    }

    #[test]
    fn evicted_entries_keep_only_runs_of_terms() {
        let terms = [1, 1, 2, 2, 2, 3, 3, 4];
        let all: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(i, &term)| Entry {
                term,
                ..big(i as Index + 1)
            })
            .collect();
        let mut log = RaftLog::restore(None, all, 8);
        log.take_committed();
        log.evict(100);
        assert_eq!(log.cached_from, 8);
        assert_eq!(log.evicted_terms, [(1, 1), (3, 2), (6, 3)]);
        for (i, &term) in terms.iter().enumerate() {
            assert_eq!(log.term(i as Index + 1), Some(term), "index {}", i + 1);
        }
        assert_eq!((log.last_index(), log.last_term()), (8, 4));
        assert_eq!(log.last_index_of_term(2, 8), Some(5));
        // Compaction into the middle of a run, then right before the next one.
        log.compact(4);
        assert_eq!(log.evicted_terms, [(5, 2), (6, 3)]);
        assert_eq!(
            (log.term(4), log.term(5), log.term(3)),
            (Some(2), Some(2), None)
        );
        log.compact(5);
        assert_eq!(log.evicted_terms, [(6, 3)]);
        log.compact(7);
        assert!(log.evicted_terms.is_empty());
        assert_eq!(
            (log.term(7), log.term(8), log.cached_from),
            (Some(3), Some(4), 8)
        );
        // Everything evicted: the last term comes from the runs.
        log.evict(0);
        assert_eq!(
            (log.last_index(), log.last_term(), log.cached_bytes()),
            (8, 4, 0)
        );
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
