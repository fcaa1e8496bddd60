//! The node driver: the one place where I/O meets Raft.
//!
//! It owns a [`RawNode`](crate::raft::RawNode), its [`Storage`](crate::storage::Storage)
//! and the [`Kv`](crate::kv::Kv) state machine, and runs them on a dedicated OS thread
//! (see [`runner`], the loop, and the files of each concern it names). Everything else — gRPC handlers, peer connections, the gateway —
//! talks to it through a [`DriverHandle`], a cheap clone that posts [`Event`]s.
//!
//! Why a thread rather than a tokio task: every turn of the loop ends in an fsync
//! (`Storage::append`) and the core itself is synchronous; on a thread, a slow disk
//! never stalls the runtime's workers that carry the network traffic, and the time one
//! fsync takes is exactly the window in which the next batch accumulates (group
//! commit falls out of the design).

mod alarm;
mod background;
mod backups;
mod lag;
mod leadership;
mod members;
mod ready;
mod recovery;
mod replies;
mod requests;
mod runner;
mod snapshots;
mod status;
#[cfg(test)]
mod tests;
mod trigger;
mod watches;

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::config::Config;
use crate::kv::{Applied, Kv, ListPage, ListQuery, Versioned};
use crate::raft::{Index, Message, NodeId, RaftError, RawNode, ReadId, Role, SnapshotMeta, Term};
use crate::storage::{SnapshotFile, SnapshotWriter, Storage, StorageError, StorageOptions};
use alarm::NoSpaceAlarm;
use lag::ReplicationClock;
use replies::WaitingReplies;
use requests::PendingProposal;
pub use requests::Read;
use snapshots::SnapshotInFlight;
use trigger::{SinceSnapshot, SnapshotTrigger};

pub use background::{Background, Job, Threads};
pub use backups::BackupSource;
pub use members::{
    Assessment, ChangeError, ChangeOutcome, ChangeRequest, FaultTolerance, MemberChange,
    CAUGHT_UP_ENTRIES, UNSAFE_CHANGE_HINT,
};
pub use runner::spawn;
pub use status::{Alarm, FollowerLag, NodeStatus};

/// How many events may wait for the driver before new ones are refused. Raft messages
/// beyond it are dropped (Raft tolerates loss), client requests fail as overloaded.
const EVENT_QUEUE: usize = 16 * 1024;

/// The driver's outgoing network: where the messages of a `Ready` go.
pub trait Transport: Send + 'static {
    /// Sends `msg` to peer `msg.to`, best effort: Raft retransmits what is lost.
    fn send(&self, msg: Message);
    /// Sends an InstallSnapshot with the image of `file`.
    fn send_snapshot(&self, msg: Message, file: SnapshotFile);
}

/// The answer to a Raft request received over gRPC.
#[derive(Debug)]
pub enum RaftReply {
    /// The core's reply, sent only after what it promises was persisted.
    Answer(Message),
    /// The core chose not to answer (for example a stale message).
    Unanswered,
}

/// Where the answer to a Raft request goes. Dropped without an answer when the node is
/// stopped or shutting down.
pub type RaftReplySender = oneshot::Sender<RaftReply>;

/// A client request that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Nothing was done; `leader` is where to go, when known.
    #[error("this node is not the leader")]
    NotLeader { leader: Option<NodeId> },
    /// Nothing was done: the leadership changed and a different entry took the slot,
    /// or a read could not be confirmed.
    #[error("leadership changed before the request completed; it was not applied")]
    LeadershipLost,
    /// The write may or may not have been applied.
    #[error("the outcome is unknown: the write may or may not have been applied")]
    Indeterminate,
    #[error("the node is stopped")]
    Stopped,
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the node is overloaded, try again")]
    Overloaded,
    /// The committed entry held no valid command (not retriable).
    #[error("the command was rejected: {0}")]
    Rejected(String),
    #[error("storage failure: {0}")]
    Storage(String),
    /// Nothing was done: the write would take the state past DISTRAFT_QUOTA_BYTES.
    #[error(
        "quota exceeded: the write would take the state to {would_be} bytes, \
         more than the quota of {quota}; delete keys to make room"
    )]
    QuotaExceeded { would_be: u64, quota: u64 },
    /// Nothing was done: this node's disk is full (the NOSPACE alarm), so it takes no
    /// write until space is freed.
    #[error("no space left on this node's disk: writes are refused until space is freed")]
    NoSpace,
    /// The write was committed but changed nothing: its precondition did not hold of
    /// the key, which is as `current` says (`None`: absent).
    #[error("precondition failed: {}", describe_key(.key, .current))]
    PreconditionFailed {
        key: String,
        current: Option<Versioned>,
    },
    /// Nothing was done: the write's idempotency key was used by a different request.
    #[error(
        "the idempotency key {key:?} was used by a different request; \
         a retry must repeat its request exactly, a new request needs a new key"
    )]
    IdempotencyMismatch { key: String },
    /// The failure of a retry: the first write's, replayed.
    #[error("{0}")]
    Replayed(Box<RequestError>),
}

/// How a precondition failure describes the key it found.
fn describe_key(key: &str, current: &Option<Versioned>) -> String {
    match current {
        Some(current) => format!(
            "key {key:?} has mod_index {} (version {})",
            current.versions.mod_index, current.versions.version
        ),
        None => format!("key {key:?} does not exist"),
    }
}

/// What a proposed write does to the state's size, for the quota check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteKind {
    Put {
        key: String,
        value_bytes: usize,
    },
    /// Never refused by the quota: it is how room is made.
    Delete,
    /// A transaction: the puts (key, value size) of each branch; the larger growth
    /// counts.
    Txn {
        branches: Vec<Vec<(String, usize)>>,
    },
}

impl From<RaftError> for RequestError {
    fn from(err: RaftError) -> RequestError {
        match err {
            RaftError::NotLeader { leader } => RequestError::NotLeader { leader },
            RaftError::LeadershipLost => RequestError::LeadershipLost,
            // Nothing was done; only a membership change can meet it.
            RaftError::ConfChangePending
            | RaftError::InvalidConfChange(_)
            | RaftError::InvalidTransfer(_) => RequestError::Rejected(err.to_string()),
            // Not appended: the client's request waits (the Kv service retries until
            // its deadline) and goes to the new leader once it is known.
            RaftError::TransferInProgress => RequestError::NotLeader { leader: None },
        }
    }
}

/// A read's answer: the key's value and versions, if it exists, as of `index`
/// (the last entry applied when it was served).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAnswer {
    pub index: Index,
    pub found: Option<Versioned>,
}

/// A page of a listing, as of `index` (the last entry applied when it was served).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListAnswer {
    pub index: Index,
    pub page: ListPage,
}

/// A write that was committed and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub index: Index,
    pub applied: Applied,
}

/// What the driver can be asked to do. Built by [`DriverHandle`]'s methods.
pub enum Event {
    /// A message from a peer; `reply` when the peer waits for the answer (a request).
    /// `snapshot` carries the received image of a `Body::Snapshot`.
    Raft {
        msg: Message,
        reply: Option<RaftReplySender>,
        /// Boxed: rare and large, and every slot of the event queue is as large as
        /// the largest event.
        snapshot: Option<Box<ReceivedSnapshot>>,
    },
    /// The connection carrying `from`'s appends broke (see
    /// [`crate::raft::RawNode::leader_disconnected`]).
    ConnectionLost {
        from: NodeId,
    },
    Propose {
        data: Bytes,
        kind: WriteKind,
        reply: oneshot::Sender<Result<Committed, RequestError>>,
    },
    Read {
        read: Read,
        stale: bool,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
    /// Hand leadership to `to` (or the most up-to-date voter): answered as soon as the
    /// transfer began, with its target (the caller watches the leader change).
    TransferLeader {
        to: Option<NodeId>,
        reply: oneshot::Sender<Result<NodeId, RequestError>>,
    },
    Start {
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    /// An operator's membership change (on the leader): answered with the safety
    /// check's assessment and, when proposed, where its commit will be told.
    ChangeMembership {
        request: ChangeRequest,
        reply: members::ChangeReply,
    },
    BeginSnapshot {
        from: NodeId,
        term: Term,
        meta: SnapshotMeta,
        reply: oneshot::Sender<Result<SnapshotAdmission, RequestError>>,
    },
    /// Posted by the driver's own snapshot thread when snapshot `id` is written (or
    /// failed): the driver then collects the result and compacts.
    SnapshotWritten {
        id: u64,
    },
    /// A client's watch (see `watches.rs`).
    Watch {
        request: crate::watch::WatchRequest,
        reply: oneshot::Sender<Result<crate::watch::Watch, crate::watch::WatchError>>,
    },
    Shutdown,
}

/// The driver's fatal failure (the node cannot go on safely).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("loading the state machine from the snapshot: {0}")]
    Snapshot(#[from] crate::kv::KvError),
    #[error("the Raft core installed snapshot {0} that was never received")]
    UnknownSnapshot(Index),
    #[error("storage is closed while the node is up")]
    NotOpen,
    #[error("starting the driver thread: {0}")]
    Thread(std::io::Error),
    #[error(
        "this data directory belongs to {name} (member id {id}), which the cluster \
         removed: it cannot take part again. Wipe its data and log directories and \
         join again with DISTRAFT_JOIN (docs/operations.md, \"Replacing a member\")"
    )]
    Removed { name: String, id: NodeId },
}

/// A handle to post work to the driver; cheap to clone.
#[derive(Clone)]
pub struct DriverHandle {
    events: mpsc::SyncSender<Event>,
    /// The leader this node knows of, updated after every turn.
    leader: watch::Receiver<Option<NodeId>>,
}

impl DriverHandle {
    fn post(&self, event: Event) -> Result<(), RequestError> {
        self.events.try_send(event).map_err(|err| match err {
            mpsc::TrySendError::Full(_) => RequestError::Overloaded,
            mpsc::TrySendError::Disconnected(_) => RequestError::ShuttingDown,
        })
    }

    /// Hands a peer's message to the core. Returns false when it was dropped.
    pub fn step(
        &self,
        msg: Message,
        reply: Option<RaftReplySender>,
        snapshot: Option<ReceivedSnapshot>,
    ) -> bool {
        self.post(Event::Raft {
            msg,
            reply,
            snapshot: snapshot.map(Box::new),
        })
        .is_ok()
    }

    /// Watches the leader this node knows of; `changed()` resolves at the next change
    /// after this call.
    pub fn leader_watch(&self) -> watch::Receiver<Option<NodeId>> {
        let mut leader = self.leader.clone();
        leader.mark_unchanged();
        leader
    }

    /// The stream of appends from `from` ended without us asking: its process may have
    /// died, so if it led, look for a new leader soon.
    pub fn connection_lost(&self, from: NodeId) {
        let _ = self.post(Event::ConnectionLost { from });
    }

    /// Proposes a command and waits until it is applied (or known to have failed).
    /// The caller bounds the wait; giving up makes the outcome indeterminate.
    pub async fn propose(&self, data: Bytes, kind: WriteKind) -> Result<Committed, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.post(Event::Propose { data, kind, reply })?;
        // A reply dropped unanswered: the proposal may have made it into the log.
        answer.await.unwrap_or(Err(RequestError::Indeterminate))
    }

    /// Reads a key: linearizable (ReadIndex) unless `stale`.
    pub async fn read(&self, key: String, stale: bool) -> Result<ReadAnswer, RequestError> {
        let (reply, answer) = oneshot::channel();
        let read = Read::Get { key, reply };
        self.post(Event::Read { read, stale })?;
        answer.await.unwrap_or(Err(RequestError::ShuttingDown))
    }

    /// Lists keys: linearizable (ReadIndex) unless `stale`.
    pub async fn list(&self, query: ListQuery, stale: bool) -> Result<ListAnswer, RequestError> {
        let (reply, answer) = oneshot::channel();
        let read = Read::List { query, reply };
        self.post(Event::Read { read, stale })?;
        answer.await.unwrap_or(Err(RequestError::ShuttingDown))
    }

    /// Opens a snapshot file for a backup: one at or after the index a linearizable
    /// read would confirm now (any snapshot if `stale`), taking one if need be.
    pub async fn backup(&self, stale: bool) -> Result<BackupSource, RequestError> {
        let (reply, answer) = oneshot::channel();
        let read = Read::Backup { stale, reply };
        self.post(Event::Read { read, stale })?;
        answer.await.unwrap_or(Err(RequestError::ShuttingDown))
    }

    pub async fn status(&self) -> Result<NodeStatus, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.post(Event::Status { reply })?;
        answer.await.map_err(|_| RequestError::ShuttingDown)
    }

    /// Begins handing leadership to `to` (or to the most up-to-date voter), on the
    /// leader; returns the target. Watch [`DriverHandle::leader_watch`] for the outcome.
    pub async fn transfer_leader(&self, to: Option<NodeId>) -> Result<NodeId, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.post(Event::TransferLeader { to, reply })?;
        answer.await.unwrap_or(Err(RequestError::ShuttingDown))
    }

    /// Waits, at most `within`, until a member other than `me` is known to lead (after
    /// a transfer); returns it, or `None` when none did in time.
    pub async fn other_leader(&self, me: NodeId, within: std::time::Duration) -> Option<NodeId> {
        let mut leader = self.leader_watch();
        let wait = async {
            loop {
                if let Some(current) = *leader.borrow_and_update() {
                    if current != me {
                        return Some(current);
                    }
                }
                if leader.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(within, wait).await.ok().flatten()
    }

    /// Leaves Raft as if crashed (idempotent).
    pub async fn stop(&self) -> Result<(), RequestError> {
        let (reply, answer) = oneshot::channel();
        self.post(Event::Stop { reply })?;
        answer.await.map_err(|_| RequestError::ShuttingDown)
    }

    /// Makes a membership change on the leader and waits until it is applied (a dry
    /// run: only its assessment). The caller bounds the wait; giving up makes the
    /// outcome unknown.
    pub async fn change_membership(
        &self,
        request: ChangeRequest,
    ) -> Result<ChangeOutcome, ChangeError> {
        let (reply, answer) = oneshot::channel();
        self.post(Event::ChangeMembership { request, reply })?;
        let proposed = answer
            .await
            .unwrap_or(Err(RequestError::ShuttingDown.into()))?;
        if let Some(committed) = proposed.committed {
            committed
                .await
                .unwrap_or(Err(RequestError::Indeterminate))?;
        }
        Ok(proposed.outcome)
    }

    /// Rejoins Raft from the persisted state (idempotent).
    pub async fn start(&self) -> Result<(), RequestError> {
        let (reply, answer) = oneshot::channel();
        self.post(Event::Start { reply })?;
        answer.await.unwrap_or(Err(RequestError::ShuttingDown))
    }

    /// Whether, and where, to store a snapshot image that `from` sends in `term`
    /// (see [`SnapshotAdmission`]). Asked before the first byte is stored.
    pub async fn begin_snapshot(
        &self,
        from: NodeId,
        term: Term,
        meta: SnapshotMeta,
    ) -> Result<SnapshotAdmission, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.post(Event::BeginSnapshot {
            from,
            term,
            meta,
            reply,
        })?;
        answer.await.unwrap_or(Err(RequestError::ShuttingDown))
    }

    /// Registers a watch on this node's applied state.
    pub async fn watch(
        &self,
        request: crate::watch::WatchRequest,
    ) -> Result<crate::watch::Watch, crate::watch::WatchError> {
        use crate::watch::WatchError;
        let (reply, answer) = oneshot::channel();
        self.post(Event::Watch { request, reply })
            .map_err(|err| match err {
                RequestError::Overloaded => WatchError::Overloaded,
                _ => WatchError::ShuttingDown,
            })?;
        answer.await.unwrap_or(Err(WatchError::ShuttingDown))
    }

    /// Asks the driver to fail what is pending and exit. Blocks only if the queue is
    /// full, which it cannot stay for long as the driver keeps draining it.
    pub fn shutdown(&self) {
        let _ = self.events.send(Event::Shutdown);
    }
}

/// The driver's answer to an incoming snapshot stream, before anything is stored.
pub enum SnapshotAdmission {
    /// Store the image here.
    Write(SnapshotWriter),
    /// This node's own snapshot already covers it: the core just answers how far it
    /// is (Raft's InstallSnapshot rule), so the leader moves on instead of retrying.
    NotNeeded,
    /// The stream's term is older than ours: answer with our term (so a stale leader
    /// steps down) and store nothing.
    Stale { term: Term },
    /// Another member leads this term: the stream is not from the leader.
    NotLeader { leader: NodeId },
}

/// A snapshot image received in full: stored in a temp file, its length and checksum
/// verified and the state machine parsed from it, before the core may install it (so
/// that a bad image never replaces the old state).
pub struct ReceivedSnapshot {
    pub writer: SnapshotWriter,
    pub kv: crate::kv::Kv,
}

/// Creates the event channel of a driver.
fn channel() -> (
    DriverHandle,
    mpsc::Receiver<Event>,
    watch::Sender<Option<NodeId>>,
) {
    let (events, receiver) = mpsc::sync_channel(EVENT_QUEUE);
    let (leader_tx, leader) = watch::channel(None);
    (DriverHandle { events, leader }, receiver, leader_tx)
}

/// Where this node's log and snapshots live.
pub fn storage_options(config: &Config) -> crate::storage::StorageOptions {
    crate::storage::StorageOptions::new(&config.log_dir, &config.data_dir)
}

/// One node's driver: its core, storage and state machine, and the requests waiting on
/// them. Deterministic given its events: a node runs it on a thread of its own
/// ([`spawn`], [`Driver::run`]); the simulator (`tests/simulation.rs`) calls the same
/// steps a turn of `run` is made of ([`Driver::handle_batch`], [`Driver::tick`],
/// [`Driver::end_turn`]) in an order of its choosing.
///
/// The fields are private to `driver/`: its files, each of which handles one concern
/// of the same state, see them as the children of this module.
pub struct Driver<T> {
    config: Arc<Config>,
    storage_options: StorageOptions,
    /// Runs the snapshot writer.
    background: Box<dyn Background>,
    /// Seeds the core at every (re)start, so that a simulated node is reproducible.
    seeds: rand::rngs::SmallRng,
    /// Posts to this driver's own queue (see `Event::SnapshotWritten`).
    wake: SyncSender<Event>,
    transport: T,
    node: RawNode,
    /// `None` only while stopped (closed so that Start reopens it as a restart would).
    storage: Option<Storage>,
    kv: Kv,
    applied: Index,
    applied_term: Term,
    snapshot_index: Index,
    /// When to snapshot, and what was applied since the last snapshot.
    trigger: SnapshotTrigger,
    since_snapshot: SinceSnapshot,
    up: bool,
    proposals: BTreeMap<Index, PendingProposal>,
    /// Linearizable reads handed to the core, by read id.
    reads: HashMap<ReadId, Read>,
    /// Reads confirmed by the core at an index this node has not applied yet.
    confirmed_reads: Vec<(Index, Read)>,
    next_read_id: ReadId,
    /// Peers' requests waiting for the core's reply.
    replies: WaitingReplies,
    /// Snapshot images received in this turn, for the core to install (or not).
    received_snapshots: Vec<ReceivedSnapshot>,
    /// Role, term and leader last logged.
    last_role: Option<(Role, Term, Option<NodeId>)>,
    /// Whether the core may vote, as last logged (false only after a wipe).
    last_may_vote: bool,
    /// At most one snapshot of our own is written at a time.
    snapshot_in_flight: Option<SnapshotInFlight>,
    /// Deletes the files the last adopted snapshot made useless.
    cleanup: Option<JoinHandle<()>>,
    next_snapshot_id: u64,
    /// The leader as published to waiting requests ([`DriverHandle::leader_watch`]).
    leader: watch::Sender<Option<NodeId>>,
    /// Raised while this node's disk is full.
    no_space: Option<NoSpaceAlarm>,
    /// Replication lag in time (leader only), for status and metrics.
    lag: ReplicationClock,
    /// Ticks since the leader last looked for learners to promote.
    ticks_since_promote_check: u64,
    /// The watch history and watchers (`watches.rs`).
    watches: crate::watch::Hub,
    /// Backups waiting for a snapshot (`backups.rs`).
    waiting_backups: Vec<backups::WaitingBackup>,
}
