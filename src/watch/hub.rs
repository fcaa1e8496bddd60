//! The hub: the history of recent changes and the registered watchers, owned by the
//! driver thread (so it needs no lock, and sees changes, registrations and snapshot
//! installs in the one order the driver makes them).
//!
//! Delivering a change costs a few hash lookups per watched prefix *length*, plus the
//! work for the watchers it matches: never work for watchers it does not match.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;

use super::stream::{Dropped, Watch};
use super::{Selector, WatchError, WatchEvent, WatchMessage, WatchRequest};
use crate::kv::{Change, Kv, ListQuery, Listed};
use crate::metrics::metrics;
use crate::plant::{self, Plant};

/// At most this many keys in one resync message.
pub const RESYNC_PAGE_KEYS: usize = 1000;
/// A resync page ends after about this many bytes of keys and values (well under a
/// gRPC client's default 4 MiB message limit), though never before its first key.
const RESYNC_PAGE_BYTES: usize = 1024 * 1024;
/// At most about this many events in one message of history sent at registration
/// (never splitting the changes of one entry).
const CATCH_UP_EVENTS: usize = 1000;

/// The bounds of the watches of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchLimits {
    /// Changes the history keeps at most (DISTRAFT_WATCH_HISTORY_EVENTS).
    pub history_events: usize,
    /// Bytes of changes the history keeps at most (DISTRAFT_WATCH_HISTORY_BYTES).
    pub history_bytes: usize,
    /// Watchers registered at once (DISTRAFT_MAX_WATCHERS).
    pub max_watchers: usize,
    /// Messages waiting for one watcher; a watcher that falls further behind is
    /// dropped and told where to resume (DISTRAFT_WATCH_BUFFER).
    pub buffer: usize,
    /// The largest resync: keys, and bytes of keys and values.
    pub resync_keys: usize,
    pub resync_bytes: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            history_events: 100_000,
            history_bytes: 64 * 1024 * 1024,
            max_watchers: 20_000,
            buffer: 1024,
            resync_keys: 10_000,
            resync_bytes: 16 * 1024 * 1024,
        }
    }
}

/// One registered watcher.
struct Watcher {
    selector: Selector,
    messages: mpsc::Sender<WatchMessage>,
    dropped: Arc<OnceLock<Dropped>>,
    /// The first index it has not been sent: changes before it are not sent again
    /// (the replay of a restarted node's log re-applies entries it already saw).
    next: u64,
}

/// The history and the watchers of one node.
pub struct Hub {
    limits: WatchLimits,
    /// Recent changes, in index order.
    history: VecDeque<Arc<WatchEvent>>,
    history_bytes: usize,
    /// The history holds every change from this index on (to the applied one).
    history_start: u64,
    watchers: HashMap<u64, Watcher>,
    next_id: u64,
    /// Watchers of one key, by key.
    exact: HashMap<String, HashSet<u64>>,
    /// Watchers of a prefix, by prefix.
    prefixes: HashMap<String, HashSet<u64>>,
    /// How many watched prefixes have each length: a change looks up only its own
    /// prefixes of these lengths.
    prefix_lengths: BTreeMap<usize, usize>,
}

impl Hub {
    /// A hub for a state machine that has applied up to `applied` (its history starts
    /// after it: the entries replayed from the log go through [`Hub::applied`]).
    pub fn new(limits: WatchLimits, applied: u64) -> Hub {
        Hub {
            limits,
            history: VecDeque::new(),
            history_bytes: 0,
            history_start: applied + 1,
            watchers: HashMap::new(),
            next_id: 1,
            exact: HashMap::new(),
            prefixes: HashMap::new(),
            prefix_lengths: BTreeMap::new(),
        }
    }

    /// The lowest index from which the history is complete.
    pub fn history_start(&self) -> u64 {
        self.history_start
    }

    /// Registered watchers.
    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// Registers a watch on `kv`, which has applied up to `applied`. From a start the
    /// history covers: the history's matching changes from it, then live ones; from an
    /// older start: a resync as of `applied`, then live changes. Either way the
    /// watcher is then told it has everything up to `applied`.
    pub fn register(
        &mut self,
        request: WatchRequest,
        kv: &Kv,
        applied: u64,
    ) -> Result<Watch, WatchError> {
        if self.watchers.len() >= self.limits.max_watchers {
            // Closed ones may not have been swept yet.
            self.sweep();
            if self.watchers.len() >= self.limits.max_watchers {
                return Err(WatchError::TooManyWatchers {
                    limit: self.limits.max_watchers,
                });
            }
        }
        // 0 is no index: proto3's default, "from now".
        let start = request.start.filter(|start| *start > 0);
        let start = start.unwrap_or(applied + 1);
        let mut first = Vec::new();
        if start < self.history_start {
            first = self.resync(&request.selector, kv, applied)?;
        } else {
            first.extend(self.catch_up(&request.selector, start));
        }
        first.push(WatchMessage::Progress { index: applied });
        let (sender, receiver) = mpsc::channel(self.limits.buffer.max(first.len()));
        for message in first {
            // Within the capacity just made for them.
            if sender.try_send(message).is_err() {
                unreachable!("a new watcher's buffer holds its first messages");
            }
        }
        let dropped = Arc::new(OnceLock::new());
        let id = self.next_id;
        self.next_id += 1;
        self.index(id, &request.selector);
        let next = start.max(applied + 1);
        self.watchers.insert(
            id,
            Watcher {
                selector: request.selector,
                messages: sender,
                dropped: dropped.clone(),
                next,
            },
        );
        metrics().watchers.set(self.watchers.len() as i64);
        Ok(Watch::new(receiver, dropped, start))
    }

    /// The changes the entry at `index` made, once applied: into the history, and to
    /// the watchers they match.
    pub fn applied(&mut self, index: u64, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let events: Vec<Arc<WatchEvent>> = changes
            .into_iter()
            .map(|change| {
                Arc::new(WatchEvent {
                    index,
                    key: change.key,
                    value: change.value,
                    versions: change.versions,
                })
            })
            .collect();
        if !self.watchers.is_empty() {
            let mut outgoing: HashMap<u64, Vec<Arc<WatchEvent>>> = HashMap::new();
            for event in &events {
                for id in self.matching(&event.key) {
                    outgoing.entry(id).or_default().push(event.clone());
                }
            }
            for (id, events) in outgoing {
                self.send(id, index, WatchMessage::Events { index, events });
            }
        }
        for event in events {
            self.remember(event);
        }
    }

    /// The state machine went back to the snapshot at `applied` and will replay its
    /// log from there (a restart from disk, as after Admin.Start). The history starts
    /// again after it; the watchers need nothing: the replay makes the same changes
    /// again, and each watcher skips those before its `next`, which it was sent.
    pub fn restarted(&mut self, applied: u64) {
        self.history.clear();
        self.history_bytes = 0;
        self.history_start = applied + 1;
    }

    /// The state machine jumped ahead to `applied` without going through the entries
    /// in between (a snapshot install): the history does not cover the jump, so every
    /// watcher that may have missed part of it gets a resync of its keys as of
    /// `applied`.
    pub fn jumped(&mut self, kv: &Kv, applied: u64) {
        self.restarted(applied);
        if plant::active(Plant::WatchSkipsEventAfterSnapshotInstall) {
            return;
        }
        let behind: Vec<u64> = self
            .watchers
            .iter()
            .filter(|(_, watcher)| watcher.next <= applied)
            .map(|(id, _)| *id)
            .collect();
        for id in behind {
            let Some(selector) = self.watchers.get(&id).map(|w| w.selector.clone()) else {
                continue;
            };
            match self.resync(&selector, kv, applied) {
                Ok(pages) => {
                    if let Some(watcher) = self.watchers.get_mut(&id) {
                        watcher.next = applied + 1;
                    }
                    for page in pages {
                        if !self.send(id, applied, page) {
                            break;
                        }
                    }
                    self.send(id, applied, WatchMessage::Progress { index: applied });
                }
                Err(WatchError::ResyncTooLarge { keys, bytes }) => {
                    self.drop_watcher(id, Some(Dropped::ResyncTooLarge { keys, bytes }))
                }
                Err(_) => self.drop_watcher(id, None),
            }
        }
    }

    /// Forgets the watchers whose clients went away.
    pub fn sweep(&mut self) {
        let closed: Vec<u64> = self
            .watchers
            .iter()
            .filter(|(_, watcher)| watcher.messages.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in closed {
            self.drop_watcher(id, None);
        }
    }

    /// Sends `message` (which completes `index`) to watcher `id`; drops the watcher
    /// if it is too slow or gone. True when sent.
    fn send(&mut self, id: u64, index: u64, message: WatchMessage) -> bool {
        let Some(watcher) = self.watchers.get_mut(&id) else {
            return false;
        };
        if index < watcher.next && matches!(message, WatchMessage::Events { .. }) {
            // Already sent (a replayed entry), or before where it asked to start.
            return true;
        }
        match watcher.messages.try_send(message) {
            Ok(()) => {
                watcher.next = watcher.next.max(index + 1);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics().watchers_dropped_slow.inc();
                self.drop_watcher(id, Some(Dropped::TooSlow));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.drop_watcher(id, None);
                false
            }
        }
    }

    fn drop_watcher(&mut self, id: u64, why: Option<Dropped>) {
        let Some(watcher) = self.watchers.remove(&id) else {
            return;
        };
        if let Some(why) = why {
            let _ = watcher.dropped.set(why);
        }
        self.unindex(id, &watcher.selector);
        metrics().watchers.set(self.watchers.len() as i64);
        // Dropping the sender ends the watcher's stream once it read what was sent.
    }

    fn index(&mut self, id: u64, selector: &Selector) {
        match selector {
            Selector::Key(key) => {
                self.exact.entry(key.clone()).or_default().insert(id);
            }
            Selector::Prefix(prefix) => {
                let ids = self.prefixes.entry(prefix.clone()).or_default();
                if ids.is_empty() {
                    *self.prefix_lengths.entry(prefix.len()).or_default() += 1;
                }
                ids.insert(id);
            }
        }
    }

    fn unindex(&mut self, id: u64, selector: &Selector) {
        match selector {
            Selector::Key(key) => {
                if let Some(ids) = self.exact.get_mut(key) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.exact.remove(key);
                    }
                }
            }
            Selector::Prefix(prefix) => {
                let Some(ids) = self.prefixes.get_mut(prefix) else {
                    return;
                };
                ids.remove(&id);
                if !ids.is_empty() {
                    return;
                }
                self.prefixes.remove(prefix);
                if let Some(count) = self.prefix_lengths.get_mut(&prefix.len()) {
                    *count -= 1;
                    if *count == 0 {
                        self.prefix_lengths.remove(&prefix.len());
                    }
                }
            }
        }
    }

    /// The watchers a change of `key` matches: those of the key, and those of each of
    /// its prefixes that some watcher watches.
    fn matching(&self, key: &str) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .exact
            .get(key)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        for &len in self.prefix_lengths.keys() {
            if len > key.len() {
                break;
            }
            let Some(prefix) = key.get(..len) else {
                // Not on a character boundary: no prefix of this length.
                continue;
            };
            if let Some(watchers) = self.prefixes.get(prefix) {
                ids.extend(watchers.iter().copied());
            }
        }
        ids
    }

    /// Keeps `event` in the history, evicting the oldest entries' changes past its
    /// bounds (all the changes of an entry at once).
    fn remember(&mut self, event: Arc<WatchEvent>) {
        self.history_bytes += event.bytes();
        self.history.push_back(event);
        while self.history.len() > self.limits.history_events
            || self.history_bytes > self.limits.history_bytes
        {
            let Some(oldest) = self.history.pop_front() else {
                break;
            };
            self.history_bytes -= oldest.bytes();
            self.history_start = self.history_start.max(oldest.index + 1);
            while let Some(front) = self.history.front() {
                if front.index >= self.history_start {
                    break;
                }
                self.history_bytes -= front.bytes();
                self.history.pop_front();
            }
        }
    }

    /// The history's changes from `start` on that `selector` matches, in messages of
    /// about [`CATCH_UP_EVENTS`] (the changes of one entry kept together).
    fn catch_up(&self, selector: &Selector, start: u64) -> Vec<WatchMessage> {
        let from = self.history.partition_point(|event| event.index < start);
        let mut messages = Vec::new();
        let mut batch: Vec<Arc<WatchEvent>> = Vec::new();
        for event in self.history.range(from..) {
            if !selector.matches(&event.key) {
                continue;
            }
            let last = batch.last().map(|last| last.index);
            if batch.len() >= CATCH_UP_EVENTS && last != Some(event.index) {
                let index = last.unwrap_or(event.index);
                messages.push(WatchMessage::Events {
                    index,
                    events: std::mem::take(&mut batch),
                });
            }
            batch.push(event.clone());
        }
        if let Some(index) = batch.last().map(|last| last.index) {
            messages.push(WatchMessage::Events {
                index,
                events: batch,
            });
        }
        messages
    }

    /// The keys `selector` matches as they are in `kv` (at `applied`), as resync
    /// pages; refused past the resync bounds.
    fn resync(
        &self,
        selector: &Selector,
        kv: &Kv,
        applied: u64,
    ) -> Result<Vec<WatchMessage>, WatchError> {
        let too_large = WatchError::ResyncTooLarge {
            keys: self.limits.resync_keys,
            bytes: self.limits.resync_bytes,
        };
        let mut pages: Vec<Vec<Listed>> = Vec::new();
        match selector {
            Selector::Key(key) => {
                let keys = kv
                    .versioned(key)
                    .map(|found| Listed {
                        key: key.clone(),
                        value: found.value,
                        versions: found.versions,
                    })
                    .into_iter()
                    .collect();
                pages.push(keys);
            }
            Selector::Prefix(prefix) => {
                let mut query = ListQuery {
                    prefix: prefix.clone(),
                    limit: RESYNC_PAGE_KEYS,
                    max_bytes: RESYNC_PAGE_BYTES,
                    ..ListQuery::default()
                };
                let (mut keys, mut bytes) = (0usize, 0usize);
                loop {
                    let page = kv.list(&query);
                    keys += page.keys.len();
                    bytes += page
                        .keys
                        .iter()
                        .map(|listed| listed.key.len() + listed.value.len())
                        .sum::<usize>();
                    if keys > self.limits.resync_keys || bytes > self.limits.resync_bytes {
                        return Err(too_large);
                    }
                    query.after = page.keys.last().map(|last| last.key.clone());
                    let more = page.more;
                    pages.push(page.keys);
                    if !more {
                        break;
                    }
                }
            }
        }
        let last = pages.len().saturating_sub(1);
        Ok(pages
            .into_iter()
            .enumerate()
            .map(|(i, keys)| WatchMessage::Resync {
                index: applied,
                keys,
                more: i < last,
            })
            .collect())
    }
}
