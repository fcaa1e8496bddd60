//! The idempotency table: the outcome of every write that carried a client's
//! idempotency key, remembered for a bounded window, so that a retry of the write (on
//! any node, across leader changes) gets the first outcome instead of a second apply.
//!
//! Every replica must hold the same table, so nothing here reads a clock or a setting
//! of its own: the window's clock is the largest proposer timestamp the log has
//! carried, and the bounds are constants. A retry is told apart from a different
//! request under the same key by the command's fingerprint.

use std::collections::{HashMap, VecDeque};

use super::command::Idempotency;
use super::Applied;

/// How long a key is remembered, on the log's clock (the largest `at_ms` applied).
pub const WINDOW_MS: u64 = 10 * 60 * 1000;
/// The most keys remembered: past it, the oldest are forgotten first.
pub const MAX_KEYS: usize = 200_000;
/// The most bytes of keys and outcomes remembered (a failed precondition's outcome
/// holds the key's value, which may be large).
pub const MAX_BYTES: usize = 64 * 1024 * 1024;
/// What one remembered key costs besides its key and outcome: the map's and the
/// queue's slots, the numbers.
const OVERHEAD_BYTES: usize = 96;

/// What is remembered of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub fingerprint: u64,
    pub at_ms: u64,
    /// The index of the entry that applied the write.
    pub index: u64,
    pub outcome: Applied,
}

/// Idempotency key → the first outcome of the write that carried it, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    by_key: HashMap<String, Remembered>,
    /// The keys in the order they were remembered: the order they are forgotten in.
    order: VecDeque<String>,
    bytes: usize,
    /// The log's clock: the largest `at_ms` applied.
    now_ms: u64,
}

/// What the table says of a write that carries an idempotency key.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not remembered: apply it, then [`Table::remember`] its outcome.
    New,
    /// A retry: answer with the first outcome, apply nothing.
    Retry { index: u64, outcome: Applied },
    /// The key was used by a different request.
    Mismatch,
}

impl Table {
    /// Whether a write with `idempotency` was seen; advances the log's clock first
    /// (forgetting what fell out of the window).
    pub fn check(&mut self, idempotency: &Idempotency) -> Seen {
        if idempotency.at_ms > self.now_ms {
            self.now_ms = idempotency.at_ms;
            self.forget_old();
        }
        let Some(remembered) = self.by_key.get(&idempotency.key) else {
            return Seen::New;
        };
        if crate::plant::active(crate::plant::Plant::RetryAppliedTwice) {
            return Seen::New;
        }
        match remembered.fingerprint == idempotency.fingerprint {
            true => Seen::Retry {
                index: remembered.index,
                outcome: remembered.outcome.clone(),
            },
            false => Seen::Mismatch,
        }
    }

    /// Remembers the outcome of a write that [`Table::check`] found new.
    pub fn remember(&mut self, idempotency: Idempotency, index: u64, outcome: Applied) {
        let remembered = Remembered {
            fingerprint: idempotency.fingerprint,
            at_ms: idempotency.at_ms,
            index,
            outcome,
        };
        self.insert(idempotency.key, remembered);
    }

    fn insert(&mut self, key: String, remembered: Remembered) {
        self.bytes += cost(&key, &remembered);
        if let Some(old) = self.by_key.insert(key.clone(), remembered) {
            // Only the planted bug remembers a key twice: keep one queue slot per key.
            self.bytes -= cost(&key, &old);
            self.order.retain(|queued| *queued != key);
        }
        self.order.push_back(key);
        self.forget_old();
    }

    /// Forgets the oldest keys while they are out of the window or over a bound.
    fn forget_old(&mut self) {
        while let Some(oldest) = self.order.front() {
            let Some(remembered) = self.by_key.get(oldest) else {
                self.order.pop_front();
                continue;
            };
            let expired = remembered.at_ms.saturating_add(WINDOW_MS) < self.now_ms;
            if !expired && self.order.len() <= MAX_KEYS && self.bytes <= MAX_BYTES {
                break;
            }
            let cost = cost(oldest, remembered);
            self.by_key.remove(oldest);
            self.order.pop_front();
            self.bytes -= cost;
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Every remembered key in the order remembered, and the log's clock: what a
    /// snapshot image keeps.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Remembered)> {
        self.order
            .iter()
            .filter_map(|key| Some((key.as_str(), self.by_key.get(key)?)))
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The table of an image: its entries in the order remembered, and its clock.
    pub fn restore(now_ms: u64, entries: Vec<(String, Remembered)>) -> Result<Table, String> {
        let mut table = Table {
            now_ms,
            ..Table::default()
        };
        for (key, remembered) in entries {
            if table.by_key.contains_key(&key) {
                return Err(format!("idempotency key {key:?} is remembered twice"));
            }
            table.insert(key, remembered);
        }
        Ok(table)
    }
}

/// What one remembered key counts towards [`MAX_BYTES`].
fn cost(key: &str, remembered: &Remembered) -> usize {
    let outcome = match &remembered.outcome {
        Applied::PreconditionFailed {
            current: Some(current),
        } => current.value.len(),
        Applied::Txn { results, .. } => results.len() * 32,
        _ => 0,
    };
    OVERHEAD_BYTES + key.len() * 2 + outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Versions;

    fn key(name: &str, at_ms: u64, fingerprint: u64) -> Idempotency {
        Idempotency {
            key: name.to_string(),
            at_ms,
            fingerprint,
        }
    }

    fn put(index: u64) -> Applied {
        Applied::Put {
            versions: Versions {
                create_index: index,
                mod_index: index,
                version: 1,
            },
        }
    }

    #[test]
    fn a_retry_gets_the_first_outcome_and_another_request_is_refused() {
        let mut table = Table::default();
        assert_eq!(table.check(&key("a", 10, 1)), Seen::New);
        table.remember(key("a", 10, 1), 5, put(5));
        assert_eq!(
            table.check(&key("a", 20, 1)),
            Seen::Retry {
                index: 5,
                outcome: put(5)
            }
        );
        assert_eq!(table.check(&key("a", 20, 2)), Seen::Mismatch);
        assert_eq!(table.check(&key("b", 20, 1)), Seen::New);
    }

    #[test]
    fn keys_are_forgotten_after_the_window_on_the_logs_clock() {
        let mut table = Table::default();
        table.remember(key("a", 1_000, 1), 1, put(1));
        // Still inside the window.
        assert!(matches!(
            table.check(&key("x", 1_000 + WINDOW_MS, 9)),
            Seen::New
        ));
        assert!(matches!(table.check(&key("a", 0, 1)), Seen::Retry { .. }));
        // One millisecond past it: forgotten, so the same key is new again.
        assert_eq!(table.check(&key("a", 1_001 + WINDOW_MS, 1)), Seen::New);
        assert_eq!(table.len(), 0);
        // A clock that goes back (another leader's) does not bring anything back.
        assert_eq!(table.check(&key("a", 5, 1)), Seen::New);
    }

    #[test]
    fn the_oldest_keys_go_first_past_the_count() {
        let mut table = Table::default();
        for n in 0..MAX_KEYS + 3 {
            table.remember(key(&format!("k{n}"), 1, 1), n as u64, put(1));
        }
        assert_eq!(table.len(), MAX_KEYS);
        assert_eq!(table.check(&key("k2", 1, 1)), Seen::New);
        assert!(matches!(table.check(&key("k3", 1, 1)), Seen::Retry { .. }));
    }

    #[test]
    fn restoring_keeps_the_order_and_refuses_a_key_twice() {
        let mut table = Table::default();
        table.remember(key("b", 7, 1), 1, put(1));
        table.remember(key("a", 8, 2), 2, put(2));
        let entries: Vec<_> = table
            .entries()
            .map(|(k, r)| (k.to_string(), r.clone()))
            .collect();
        let restored = Table::restore(table.now_ms(), entries.clone()).unwrap();
        assert_eq!(restored, table);
        let twice = vec![entries[0].clone(), entries[0].clone()];
        assert!(Table::restore(8, twice).is_err());
    }
}
