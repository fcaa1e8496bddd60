//! The idempotency table: the outcome of every write that carried a client's
//! idempotency key, remembered for a bounded window, so that a retry of the write (on
//! any node, across leader changes) gets the first outcome instead of a second apply.
//!
//! Every replica must hold the same table, so nothing here reads a clock or a setting
//! of its own: the window's clock is the largest proposer timestamp the log has
//! carried, and the bounds are constants. A retry is told apart from a different
//! request under the same key by the command's fingerprint.
//!
//! The remembered writes sit in order in shared chunks, so that a snapshot's
//! [`Table::freeze`] copies a pointer per chunk, not the table: the driver thread takes
//! it, and a full table (200,000 keys) cost it 40–125 ms when it was copied whole.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

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
/// Remembered writes per chunk: what a write after a freeze may copy (the last chunk,
/// once), and how many forgotten writes a chunk may hold on to before it is dropped.
const CHUNK_SLOTS: usize = 1024;

/// What is remembered of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub fingerprint: u64,
    pub at_ms: u64,
    /// The index of the entry that applied the write.
    pub index: u64,
    pub outcome: Applied,
}

/// One remembered write in the order; `None`: replaced by a later one with the same key
/// (only the planted bug remembers a key twice).
type Slot = Option<(Arc<str>, Remembered)>;

/// Idempotency key → the first outcome of the write that carried it, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Key → its slot's sequence number.
    by_key: HashMap<Arc<str>, u64>,
    /// The writes in the order they were remembered: the order they are forgotten in.
    /// Every chunk but the last holds [`CHUNK_SLOTS`] slots; those of the first before
    /// `skip` are forgotten.
    chunks: VecDeque<Arc<Vec<Slot>>>,
    skip: usize,
    /// Those of the first chunk before this are freed (`None`): at most `skip`.
    freed: usize,
    /// The sequence number of the first chunk's first slot.
    first_seq: u64,
    bytes: usize,
    /// The log's clock: the largest `at_ms` applied.
    now_ms: u64,
}

/// The table at one point, for a snapshot image: shares the chunks with the table.
#[derive(Debug, Clone, Default)]
pub struct Frozen {
    chunks: Vec<Arc<Vec<Slot>>>,
    skip: usize,
    len: usize,
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
        let Some(remembered) = self.get(&idempotency.key) else {
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
        self.insert(idempotency.key.into(), remembered);
    }

    fn get(&self, key: &str) -> Option<&Remembered> {
        let seq = *self.by_key.get(key)?;
        let (chunk, slot) = self.position(seq)?;
        let (_, remembered) = self.chunks.get(chunk)?.get(slot)?.as_ref()?;
        Some(remembered)
    }

    /// Where the slot numbered `seq` is: its chunk and its place in it.
    fn position(&self, seq: u64) -> Option<(usize, usize)> {
        let offset = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        Some((offset / CHUNK_SLOTS, offset % CHUNK_SLOTS))
    }

    fn insert(&mut self, key: Arc<str>, remembered: Remembered) {
        self.bytes += cost(&key, &remembered);
        if let Some(old_seq) = self.by_key.get(&key).copied() {
            // Only the planted bug remembers a key twice: keep one slot per key.
            if let Some((chunk, slot)) = self.position(old_seq) {
                if let Some(chunk) = self.chunks.get_mut(chunk) {
                    if let Some(Some((old_key, old))) =
                        Arc::make_mut(chunk).get_mut(slot).map(Option::take)
                    {
                        self.bytes -= cost(&old_key, &old);
                    }
                }
            }
        }
        if self
            .chunks
            .back()
            .is_none_or(|last| last.len() == CHUNK_SLOTS)
        {
            self.chunks
                .push_back(Arc::new(Vec::with_capacity(CHUNK_SLOTS)));
        }
        let seq = self.end_seq();
        if let Some(last) = self.chunks.back_mut() {
            // Copies the last chunk if a snapshot still holds it: once per snapshot.
            Arc::make_mut(last).push(Some((key.clone(), remembered)));
        }
        self.by_key.insert(key, seq);
        self.forget_old();
    }

    /// The sequence number the next slot gets.
    fn end_seq(&self) -> u64 {
        let full = self.chunks.len().saturating_sub(1) * CHUNK_SLOTS;
        let last = self.chunks.back().map_or(0, |last| last.len());
        self.first_seq + (full + last) as u64
    }

    /// Forgets the oldest keys while they are out of the window or over a bound.
    fn forget_old(&mut self) {
        while let Some(first) = self.chunks.front_mut() {
            let Some(slot) = first.get(self.skip) else {
                // Every slot of the first chunk is forgotten: drop it, unless it is the
                // last one and still filling.
                if first.len() < CHUNK_SLOTS {
                    break;
                }
                self.chunks.pop_front();
                self.first_seq += CHUNK_SLOTS as u64;
                (self.skip, self.freed) = (0, 0);
                continue;
            };
            if let Some((key, remembered)) = slot {
                let expired = remembered.at_ms.saturating_add(WINDOW_MS) < self.now_ms;
                if !expired && self.by_key.len() <= MAX_KEYS && self.bytes <= MAX_BYTES {
                    break;
                }
                self.bytes -= cost(key, remembered);
                self.by_key.remove(key);
            }
            self.skip += 1;
            // Forgotten slots are freed as soon as no snapshot holds their chunk: an
            // outcome may hold a value of up to 1 MiB, and they would otherwise outlive
            // MAX_BYTES until the chunk's last slot is forgotten.
            if let Some(chunk) = Arc::get_mut(first) {
                for slot in chunk.iter_mut().take(self.skip).skip(self.freed) {
                    *slot = None;
                }
                self.freed = self.skip;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The table as it is now, for a snapshot image: a pointer per chunk is copied.
    pub fn freeze(&self) -> Frozen {
        Frozen {
            chunks: self.chunks.iter().cloned().collect(),
            skip: self.skip,
            len: self.len(),
            now_ms: self.now_ms,
        }
    }

    /// Every remembered key in the order remembered.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Remembered)> {
        slots_from(self.chunks.iter().map(|chunk| chunk.as_slice()), self.skip)
    }

    #[cfg(test)]
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
            if table.by_key.contains_key(key.as_str()) {
                return Err(format!("idempotency key {key:?} is remembered twice"));
            }
            table.insert(key.into(), remembered);
        }
        Ok(table)
    }
}

/// Two tables are equal when they remember the same writes in the same order, on the
/// same clock: how they are laid out in chunks does not matter.
impl PartialEq for Table {
    fn eq(&self, other: &Table) -> bool {
        self.now_ms == other.now_ms
            && self.bytes == other.bytes
            && self.entries().eq(other.entries())
    }
}

impl Eq for Table {}

impl Frozen {
    /// How many keys it remembers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Every remembered key in the order remembered: what a snapshot image keeps.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Remembered)> {
        slots_from(self.chunks.iter().map(|chunk| chunk.as_slice()), self.skip)
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }
}

/// The remembered writes in `chunks`, past the first `skip` slots.
fn slots_from<'a>(
    chunks: impl Iterator<Item = &'a [Slot]>,
    skip: usize,
) -> impl Iterator<Item = (&'a str, &'a Remembered)> {
    chunks
        .flatten()
        .skip(skip)
        .filter_map(|slot| slot.as_ref().map(|(key, remembered)| (&**key, remembered)))
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

    #[test]
    fn a_frozen_table_shares_its_chunks_and_keeps_its_contents() {
        let mut table = Table::default();
        for n in 0..3 * CHUNK_SLOTS as u64 + 5 {
            table.remember(key(&format!("k{n}"), n, 1), n, put(n));
        }
        let frozen = table.freeze();
        let before: Vec<_> = frozen
            .entries()
            .map(|(k, r)| (k.to_string(), r.clone()))
            .collect();
        assert_eq!(before.len(), 3 * CHUNK_SLOTS + 5);
        // Nothing was copied: the frozen table points at the table's chunks.
        assert!(Arc::ptr_eq(&frozen.chunks[0], &table.chunks[0]));
        // The table goes on: past the window, most keys are forgotten; more come.
        let later = WINDOW_MS + 2 * CHUNK_SLOTS as u64;
        for n in 0..10u64 {
            let new = key(&format!("new{n}"), later + n, 1);
            assert_eq!(table.check(&new), Seen::New);
            table.remember(new, 10_000 + n, put(n));
        }
        assert!(table.len() < before.len());
        let after: Vec<_> = frozen
            .entries()
            .map(|(k, r)| (k.to_string(), r.clone()))
            .collect();
        assert_eq!(after, before, "a snapshot's table changed under it");
        assert_eq!(frozen.len(), before.len());
        // Only the full chunks still remembered are shared; the last one was copied.
        assert!(Arc::ptr_eq(&frozen.chunks[2], &table.chunks[0]));
    }

    #[test]
    fn forgotten_writes_are_freed_unless_a_snapshot_holds_them() {
        let mut table = Table::default();
        for n in 0..4u64 {
            table.remember(key(&format!("k{n}"), n, 1), n, put(n));
        }
        let frozen = table.freeze();
        let past_window = key("new", 2 + WINDOW_MS, 1);
        assert_eq!(table.check(&past_window), Seen::New);
        // k0 and k1 fell out of the window: the frozen table still holds them (and the
        // table copied its chunk on the way), the table no longer does.
        assert_eq!(table.len(), 2);
        assert_eq!(frozen.entries().count(), 4);
        drop(frozen);
        assert!(table.chunks[0].iter().take(2).all(Option::is_some));
        // Once nothing else holds the chunk, the next forgetting frees all of them.
        assert_eq!(table.check(&key("newer", 3 + WINDOW_MS, 1)), Seen::New);
        assert_eq!((table.skip, table.freed), (3, 3));
        assert!(table.chunks[0].iter().take(3).all(Option::is_none));
        assert!(table.chunks[0].get(3).is_some_and(Option::is_some));
    }

    /// The table against the simplest model of it (a map and a queue), over random
    /// writes and retries, across chunk boundaries and the window.
    #[test]
    fn the_chunked_table_behaves_as_a_map_and_a_queue() {
        use rand::{Rng, SeedableRng};
        for seed in 0..20u64 {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let mut table = Table::default();
            let mut model: VecDeque<(String, u64, u64)> = VecDeque::new();
            let mut now = 0u64;
            for step in 0..6_000u64 {
                now += rng.random_range(0..WINDOW_MS / 1_000);
                let name = format!("k{}", rng.random_range(0..4_000u32));
                let fingerprint = rng.random_range(0..2u64);
                let seen = table.check(&key(&name, now, fingerprint));
                model.retain(|(_, at_ms, _)| at_ms.saturating_add(WINDOW_MS) >= now);
                let expected = match model.iter().find(|(k, _, _)| *k == name) {
                    None => Seen::New,
                    Some((_, _, f)) if *f == fingerprint => Seen::Retry {
                        index: step,
                        outcome: put(step),
                    },
                    Some(_) => Seen::Mismatch,
                };
                match (&seen, &expected) {
                    (Seen::Retry { .. }, Seen::Retry { .. }) => {}
                    _ => assert_eq!(seen, expected, "seed {seed} step {step}"),
                }
                if seen == Seen::New {
                    table.remember(key(&name, now, fingerprint), step, put(step));
                    model.push_back((name, now, fingerprint));
                }
                assert_eq!(table.len(), model.len(), "seed {seed} step {step}");
            }
            let keys: Vec<_> = table.entries().map(|(k, _)| k.to_string()).collect();
            let expected: Vec<_> = model.iter().map(|(k, _, _)| k.clone()).collect();
            assert_eq!(keys, expected, "seed {seed}");
            assert_eq!(table.freeze().entries().count(), model.len());
        }
    }
}
