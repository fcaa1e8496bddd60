//! The watcher's end of a watch: the messages the hub sends, and why they stopped.

use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;

use super::WatchMessage;

/// Why the hub let go of a watcher. Set before its sender is dropped, so that the
/// receiver reads it once the messages run out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Its buffer was full: it did not keep up.
    TooSlow,
    /// A snapshot install needed a resync of it larger than a resync may be.
    ResyncTooLarge { keys: usize, bytes: usize },
}

/// Why a watch ended, as its client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ended {
    /// The watcher fell more than its buffer behind; nothing was lost: resuming from
    /// `resume` (the index after the last one it saw) continues where it stopped.
    #[error("the watcher fell too far behind; resume from index {resume}")]
    TooSlow { resume: u64 },
    #[error(
        "the watch needed a resync of more than {keys} keys or {bytes} bytes after a \
         snapshot install: list the keys, then watch from the listing's index + 1"
    )]
    ResyncTooLarge { keys: usize, bytes: usize },
    /// The node is going away; resume elsewhere from `resume`.
    #[error("the node stopped serving the watch; resume from index {resume}")]
    Closed { resume: u64 },
}

/// A registered watch: its messages in order, and the index to resume from.
pub struct Watch {
    messages: mpsc::Receiver<WatchMessage>,
    dropped: Arc<OnceLock<Dropped>>,
    /// The first index this watcher has not seen in full.
    next: u64,
}

impl Watch {
    pub(super) fn new(
        messages: mpsc::Receiver<WatchMessage>,
        dropped: Arc<OnceLock<Dropped>>,
        next: u64,
    ) -> Watch {
        Watch {
            messages,
            dropped,
            next,
        }
    }

    /// The next message, or why there is none any more.
    pub async fn next(&mut self) -> Result<WatchMessage, Ended> {
        match self.messages.recv().await {
            Some(message) => {
                self.saw(&message);
                Ok(message)
            }
            None => Err(self.ended()),
        }
    }

    /// The next message if one is waiting, without waiting; `Ok(None)` when none is.
    pub fn try_next(&mut self) -> Result<Option<WatchMessage>, Ended> {
        match self.messages.try_recv() {
            Ok(message) => {
                self.saw(&message);
                Ok(Some(message))
            }
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(self.ended()),
        }
    }

    /// The index to resume from: the first one not yet seen in full.
    pub fn resume_index(&self) -> u64 {
        self.next
    }

    fn saw(&mut self, message: &WatchMessage) {
        match message {
            WatchMessage::Progress { index } | WatchMessage::Events { index, .. } => {
                self.next = self.next.max(index + 1)
            }
            // Only the last page completes a resync.
            WatchMessage::Resync { index, more, .. } => {
                if !more {
                    self.next = self.next.max(index + 1);
                }
            }
        }
    }

    fn ended(&self) -> Ended {
        let resume = self.next;
        match self.dropped.get() {
            Some(Dropped::TooSlow) => Ended::TooSlow { resume },
            Some(Dropped::ResyncTooLarge { keys, bytes }) => Ended::ResyncTooLarge {
                keys: *keys,
                bytes: *bytes,
            },
            None => Ended::Closed { resume },
        }
    }
}
