//! Watches: a client follows the changes of a key, or of every key under a prefix,
//! from an index on, in index order, with no gap and no duplicate, and can resume from
//! the last index it saw. Any node serves them, from its own applied state.
//!
//! - `hub.rs`: the [`Hub`], owned by the driver thread: the history of recent changes,
//!   the registered watchers, and what each of them is sent.
//! - `stream.rs`: the watcher's end, [`Watch`]: the messages, and why a watch ended.
//!
//! A watch that asks for an index the history no longer holds (compacted away, or
//! the node restarted or installed a snapshot since) is never refused for it: it gets
//! a *resync*, the current state of its keys as of one index, then every change after.

mod hub;
mod stream;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use hub::{Hub, WatchLimits};
pub use stream::{Ended, Watch};

use crate::kv::{Listed, Versions};

/// Which keys a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Key(String),
    /// Every key that begins with it (the empty prefix: every key).
    Prefix(String),
}

impl Selector {
    pub fn matches(&self, key: &str) -> bool {
        match self {
            Selector::Key(k) => k == key,
            Selector::Prefix(prefix) => key.starts_with(prefix.as_str()),
        }
    }
}

/// One change of one key, made by the entry at `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub index: u64,
    pub key: String,
    /// `None`: deleted.
    pub value: Option<String>,
    /// The key's versions after a put (zero after a delete).
    pub versions: Versions,
}

impl WatchEvent {
    /// What the event costs the history: its text and about the size of its frame.
    pub fn bytes(&self) -> usize {
        const OVERHEAD: usize = 96;
        self.key.len() + self.value.as_ref().map_or(0, String::len) + OVERHEAD
    }
}

/// What a watcher is sent, in this order: either the history's changes from where it
/// asked to start or a resync, then `Progress` (as of the node's applied index when
/// it registered), then live changes (and after a snapshot install, a resync and
/// `Progress` again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// The watcher has been sent every matching change up to `index`.
    Progress { index: u64 },
    /// Changes, in index order, never splitting the changes of one entry; the watcher
    /// has now seen every matching change up to `index`.
    Events {
        index: u64,
        events: Vec<Arc<WatchEvent>>,
    },
    /// A page of the watched keys as they are at `index` (in key order); `more`: more
    /// pages of the same resync follow. The watcher replaces its view of its keys with
    /// the resync (a key it knew but the resync lacks was deleted), then continues
    /// with the changes after `index`.
    Resync {
        index: u64,
        keys: Vec<Listed>,
        more: bool,
    },
}

/// What a client asks to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRequest {
    pub selector: Selector,
    /// The first index of interest; `None`: from the next entry applied.
    pub start: Option<u64>,
}

/// Why a watch could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("too many watchers on this node (at most {limit}); try another node or later")]
    TooManyWatchers { limit: usize },
    /// The resync the watch needs is too large to send.
    #[error(
        "the watch needs a resync of more than {keys} keys or {bytes} bytes: list the \
         keys first (GET /v1/keys, Kv.List), then watch from the listing's index + 1"
    )]
    ResyncTooLarge { keys: usize, bytes: usize },
    #[error("the node is overloaded, try again")]
    Overloaded,
    #[error("the node is shutting down")]
    ShuttingDown,
}
