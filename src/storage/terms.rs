//! Which indexes the log holds and with which terms, without the payloads: enough to
//! validate appends, roll segments and decide whether a snapshot matches the log.

use crate::raft::{Index, Term};

/// The log `(base, last]`, as runs of equal terms (terms change rarely, so this stays
/// small however long the log is). Entries at or below `base` are covered by a
/// snapshot or lie in segments that were deleted.
#[derive(Clone, Debug)]
pub(super) struct LogTerms {
    base: Index,
    /// The term of the entry at `base` when known (the snapshot's term).
    base_term: Option<Term>,
    last: Index,
    /// `(first index, term)` of each run, in index order; the last run ends at `last`.
    runs: Vec<(Index, Term)>,
}

/// How a snapshot at `(index, term)` relates to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SnapshotFit {
    /// The log holds the snapshot's last entry, or starts right after it: keep the
    /// entries after it.
    Keep,
    /// The log disagrees with the snapshot or ends before it: drop every entry.
    Reset,
    /// The log starts after the snapshot's index: entries in between are missing.
    Missing,
}

impl LogTerms {
    /// An empty log that continues at `base + 1`; the term at `base` is unknown.
    pub(super) fn new(base: Index) -> LogTerms {
        LogTerms {
            base,
            base_term: None,
            last: base,
            runs: Vec::new(),
        }
    }

    pub(super) fn base(&self) -> Index {
        self.base
    }

    pub(super) fn last(&self) -> Index {
        self.last
    }

    /// The term of the entry at `index`, if the log holds it (or it is the base and
    /// its term is known).
    pub(super) fn term(&self, index: Index) -> Option<Term> {
        if index == self.base {
            return self.base_term;
        }
        if index < self.base || index > self.last {
            return None;
        }
        let run = self.runs.partition_point(|&(first, _)| first <= index);
        self.runs.get(run.wrapping_sub(1)).map(|&(_, term)| term)
    }

    /// Appends an entry, replacing the entries at `index` and after. An index at or
    /// below `base` restarts the log there (replay of a rewrite of entries whose
    /// predecessors were compacted away). Fails if it would leave a gap.
    pub(super) fn append(&mut self, index: Index, term: Term) -> Result<(), String> {
        if index == 0 {
            return Err("entry with index 0".into());
        }
        if index > self.last + 1 {
            return Err(format!("entry {index} leaves a gap after {}", self.last));
        }
        if index <= self.base {
            *self = LogTerms::new(index - 1);
        }
        self.truncate_from(index);
        if self.runs.last().is_none_or(|&(_, t)| t != term) {
            self.runs.push((index, term));
        }
        self.last = index;
        Ok(())
    }

    /// Drops every entry; the log continues after a snapshot at (base, term).
    pub(super) fn reset(&mut self, base: Index, term: Term) {
        *self = LogTerms {
            base_term: Some(term),
            ..LogTerms::new(base)
        };
    }

    /// Forgets the entries up to a snapshot at (index, term).
    pub(super) fn compact(&mut self, index: Index, term: Term) {
        if index >= self.last {
            self.reset(index, term);
            return;
        }
        if index <= self.base {
            self.base_term = Some(term);
            return;
        }
        // Keep the run containing index + 1 and those after it.
        let first_kept = self.runs.partition_point(|&(first, _)| first <= index + 1) - 1;
        self.runs.drain(..first_kept);
        self.runs[0].0 = index + 1;
        self.base = index;
        self.base_term = Some(term);
    }

    pub(super) fn fit(&self, index: Index, term: Term) -> SnapshotFit {
        match self.term(index) {
            Some(t) if t == term => SnapshotFit::Keep,
            Some(_) => SnapshotFit::Reset,
            // The log was compacted to exactly this point (on replay the base's term is
            // unknown: it is the snapshot the compaction was for).
            None if self.base == index => SnapshotFit::Keep,
            None if self.base > index => SnapshotFit::Missing,
            None => SnapshotFit::Reset,
        }
    }

    fn truncate_from(&mut self, index: Index) {
        let keep = self.runs.partition_point(|&(first, _)| first < index);
        self.runs.truncate(keep);
        self.last = self.last.min(index - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(terms: &[Term]) -> LogTerms {
        let mut log = LogTerms::new(0);
        for (i, &t) in terms.iter().enumerate() {
            log.append(i as Index + 1, t).unwrap();
        }
        log
    }

    #[test]
    fn terms_follow_appends_and_truncation() {
        let mut l = log(&[1, 1, 2, 2, 3]);
        assert_eq!(
            (1..=6).map(|i| l.term(i)).collect::<Vec<_>>(),
            [Some(1), Some(1), Some(2), Some(2), Some(3), None]
        );
        l.append(3, 4).unwrap();
        assert_eq!(l.last(), 3);
        assert_eq!(l.term(2), Some(1));
        assert_eq!(l.term(3), Some(4));
        assert_eq!(l.term(4), None);
        assert!(l.append(5, 4).is_err());
        assert!(l.append(0, 4).is_err());
    }

    #[test]
    fn compaction_keeps_the_suffix() {
        let mut l = log(&[1, 1, 2, 2, 3]);
        l.compact(3, 2);
        assert_eq!((l.base(), l.last()), (3, 5));
        assert_eq!(l.term(2), None);
        assert_eq!(l.term(3), Some(2));
        assert_eq!(l.term(4), Some(2));
        assert_eq!(l.term(5), Some(3));
        l.compact(9, 4);
        assert_eq!(
            (l.base(), l.last(), l.term(5), l.term(9)),
            (9, 9, None, Some(4))
        );
    }

    #[test]
    fn snapshot_fit() {
        let l = log(&[1, 1, 2]);
        assert_eq!(l.fit(2, 1), SnapshotFit::Keep);
        assert_eq!(l.fit(2, 2), SnapshotFit::Reset);
        assert_eq!(l.fit(7, 2), SnapshotFit::Reset);
        assert_eq!(l.fit(0, 0), SnapshotFit::Keep);
        let mut l = l;
        l.compact(2, 1);
        assert_eq!(l.fit(2, 1), SnapshotFit::Keep);
        assert_eq!(l.fit(2, 9), SnapshotFit::Reset);
        assert_eq!(l.fit(1, 1), SnapshotFit::Missing);
        // After replay the base's term is unknown: trusted as the snapshot's.
        assert_eq!(LogTerms::new(5).fit(5, 3), SnapshotFit::Keep);
    }

    #[test]
    fn append_below_base_restarts_the_window() {
        let mut l = LogTerms::new(10);
        l.append(11, 1).unwrap();
        l.append(5, 2).unwrap();
        assert_eq!((l.base(), l.last(), l.term(5)), (4, 5, Some(2)));
    }
}
