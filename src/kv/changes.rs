//! The changes the state machine makes, as watches see them (`src/watch/`): every put
//! and every delete of a key that existed, in the order applied. A write whose
//! precondition failed, or a delete of a missing key, changes nothing and records
//! nothing. Recorded only when asked ([`Kv::record_changes`]), so that a state machine
//! nobody drains never grows.

use super::{Kv, Versions};

/// One change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    /// `None`: deleted.
    pub value: Option<String>,
    /// The key's versions after a put (default after a delete).
    pub versions: Versions,
}

impl Kv {
    /// From now on, record every change until [`Kv::take_changes`] takes it.
    pub fn record_changes(&mut self) {
        self.changes.get_or_insert_with(Vec::new);
    }

    /// The changes made since the last call (empty unless recording).
    pub fn take_changes(&mut self) -> Vec<Change> {
        match &mut self.changes {
            Some(changes) => std::mem::take(changes),
            None => Vec::new(),
        }
    }

    pub(super) fn record_put(&mut self, key: &str, value: &str, versions: Versions) {
        if let Some(changes) = &mut self.changes {
            changes.push(Change {
                key: key.to_string(),
                value: Some(value.to_string()),
                versions,
            });
        }
    }

    pub(super) fn record_delete(&mut self, key: &str) {
        if let Some(changes) = &mut self.changes {
            changes.push(Change {
                key: key.to_string(),
                value: None,
                versions: Versions::default(),
            });
        }
    }
}
