//! The driver's loop, on its own thread: wait for an event, drain every event that is
//! pending, then carry out ONE `Ready` — one fsync, one round of sends, one round of
//! applies for the whole batch.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

use super::lag::ReplicationClock;
use super::trigger::{SinceSnapshot, SnapshotTrigger};
use super::{
    channel, storage_options, Alarm, Committed, DriverError, DriverHandle, Event, FollowerLag,
    NodeStatus, RaftReply, RaftReplySender, ReceivedSnapshot, RequestError, SnapshotAdmission,
    Transport, WriteKind,
};
use crate::config::Config;
use crate::kv::{Applied, Kv};
use crate::metrics::metrics;
use crate::plant::{self, Plant};
use crate::raft::{
    Body, Entry, EntryKind, Index, LogReader, Message, NodeId, RawNode, ReadId, Ready, Role,
    SnapshotMeta, Term,
};
use crate::storage::{Garbage, SnapshotFile, Storage, StorageError, StorageOptions};

/// At most this many events are folded into one turn, so that a flood of requests
/// cannot postpone ticks and fsyncs without bound.
const MAX_EVENTS_PER_TURN: usize = 4096;
/// How often abandoned requests (their callers gave up) are forgotten.
const PURGE_EVERY: Duration = Duration::from_secs(1);
/// How long Stop and shutdown wait for a snapshot being written before abandoning it
/// (well within the node's 5 s shutdown grace).
const SNAPSHOT_SETTLE: Duration = Duration::from_secs(2);
/// How often a node with the NOSPACE alarm looks whether space is back.
const SPACE_POLL: Duration = Duration::from_secs(1);
/// Space a node wants free, besides room for a few of the largest entries, before it
/// takes writes again: a WAL segment's zeros ahead several times over.
const RESUME_FREE_BYTES: u64 = 1 << 20;

/// Starts the driver thread on the node's storage. Returns the handle to talk to it
/// and a receiver that yields the driver's result when its thread ends.
pub fn spawn(
    config: Arc<Config>,
    transport: impl Transport,
) -> Result<(DriverHandle, oneshot::Receiver<Result<(), DriverError>>), DriverError> {
    let options = storage_options(&config);
    spawn_with_storage(config, transport, options)
}

/// [`spawn`] with explicit storage options (tests set hooks there).
pub(super) fn spawn_with_storage(
    config: Arc<Config>,
    transport: impl Transport,
    options: StorageOptions,
) -> Result<(DriverHandle, oneshot::Receiver<Result<(), DriverError>>), DriverError> {
    // Opened before returning, so that a damaged data directory stops start-up at once.
    let (mut driver, handle, events) = Driver::open(
        config,
        transport,
        options,
        Box::new(Threads),
        rand::random(),
    )?;
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("raft-driver".to_string())
        .spawn(move || {
            let result = driver.run(&events);
            driver.fail_everything(RequestError::ShuttingDown);
            // Not logged here: the receiver reports the error, once (see `lifecycle.rs`).
            let _ = done_tx.send(result);
        })
        .map_err(DriverError::Thread)?;
    Ok((handle, done_rx))
}

/// Where the driver's background work runs: writing a snapshot, and deleting the files
/// an adopted snapshot made useless. A node gives each job a thread of its own
/// ([`Threads`]), so that a large state never stalls the driver; the simulator runs the
/// deletions at once and the writer when its seed says (the writer's job ends by
/// posting `Event::SnapshotWritten` to the driver's own queue).
pub trait Background: Send + 'static {
    /// Starts `job`. Returns the thread to join before storage is reopened, if any.
    fn spawn(
        &self,
        kind: Job,
        job: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<Option<JoinHandle<()>>>;
}

/// The driver's kinds of background work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    SnapshotWriter,
    SnapshotCleanup,
}

/// Runs each job on a new thread.
pub struct Threads;

impl Background for Threads {
    fn spawn(
        &self,
        kind: Job,
        job: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<Option<JoinHandle<()>>> {
        let name = match kind {
            Job::SnapshotWriter => "snapshot-writer",
            Job::SnapshotCleanup => "snapshot-cleanup",
        };
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(job)
            .map(Some)
    }
}

/// A core, its storage and state machine, as recovered from disk.
struct OpenNode {
    node: RawNode,
    storage: Storage,
    kv: Kv,
    applied: Index,
    applied_term: Term,
    /// The size of the snapshot's image (0 without one).
    state_bytes: u64,
}

impl OpenNode {
    /// `seed` drives the core's randomness (its election timeouts).
    fn open(config: &Config, options: StorageOptions, seed: u64) -> Result<OpenNode, DriverError> {
        let (storage, recovered) = Storage::open(options)?;
        let (kv, applied, applied_term) = match &recovered.snapshot {
            Some(file) => (
                Kv::read_image(file.open_data()?)?,
                file.meta.index,
                file.meta.term,
            ),
            None => (Kv::new(), 0, 0),
        };
        info!(
            snapshot = applied,
            entries = recovered.restored.entries.len(),
            term = recovered.restored.hard_state.term,
            "recovered from storage"
        );
        let state_bytes = recovered
            .snapshot
            .as_ref()
            .map_or(0, SnapshotFile::data_len);
        let node = RawNode::new(config.raft_config(), recovered.restored, seed);
        Ok(OpenNode {
            node,
            storage,
            kv,
            applied,
            applied_term,
            state_bytes,
        })
    }
}

/// A proposal waiting for its entry to be applied.
struct PendingProposal {
    term: Term,
    reply: oneshot::Sender<Result<Committed, RequestError>>,
}

impl PendingProposal {
    /// Answers the client, counting a failure (or unknown outcome) in the metrics.
    fn answer(self, result: Result<Committed, RequestError>) {
        if result.is_err() {
            metrics().proposals_failed.inc();
        }
        let _ = self.reply.send(result);
    }
}

type ReadReply = oneshot::Sender<Result<Option<String>, RequestError>>;

/// Which answer a peer's request waits for. Replies are matched to waiting requests
/// per peer and kind, first come first served; every reply is self-describing (it
/// carries its index, term or read round), so the pairing only has to preserve order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ReplyKind {
    Vote,
    /// AppendEntries stream (appends and heartbeats) and InstallSnapshot.
    Replication,
}

// Both matches list every message kind, so that a new one does not compile until it
// is decided whether (and how) its replies are paired.

fn request_kind(body: &Body) -> Option<ReplyKind> {
    match body {
        Body::PreVote { .. } | Body::Vote { .. } => Some(ReplyKind::Vote),
        Body::Append { .. } | Body::Heartbeat { .. } | Body::Snapshot { .. } => {
            Some(ReplyKind::Replication)
        }
        // Paired by its id instead (`waiting_read_index`).
        Body::ReadIndex { .. } => None,
        // Answers are not requests.
        Body::PreVoteResponse { .. }
        | Body::VoteResponse { .. }
        | Body::AppendResponse { .. }
        | Body::HeartbeatResponse { .. }
        | Body::ReadIndexResponse { .. } => None,
    }
}

fn response_kind(body: &Body) -> Option<ReplyKind> {
    match body {
        Body::PreVoteResponse { .. } | Body::VoteResponse { .. } => Some(ReplyKind::Vote),
        Body::AppendResponse { .. } | Body::HeartbeatResponse { .. } => {
            Some(ReplyKind::Replication)
        }
        // Paired by its id instead (`waiting_read_index`).
        Body::ReadIndexResponse { .. } => None,
        // Requests are not answers.
        Body::PreVote { .. }
        | Body::Vote { .. }
        | Body::Append { .. }
        | Body::Heartbeat { .. }
        | Body::Snapshot { .. }
        | Body::ReadIndex { .. } => None,
    }
}

/// The NOSPACE alarm: a write to this node's disk failed for lack of space.
struct NoSpaceAlarm {
    /// The WAL was full: the node left Raft (as Admin.Stop does, as if crashed) and
    /// rejoins by itself once space is back. A full disk met by a snapshot alone
    /// keeps the node in Raft (only its own writes are refused).
    left_raft: bool,
    /// The leader when the node left Raft, where linearizable reads go meanwhile.
    leader: Option<NodeId>,
}

/// A snapshot being written by the snapshot thread.
struct SnapshotInFlight {
    id: u64,
    meta: SnapshotMeta,
    /// The bytes of log applied since the previous snapshot, which this one covers.
    log_bytes: u64,
    capture: Duration,
    started: Instant,
    result: Receiver<Result<SnapshotFile, StorageError>>,
}

/// One node's driver: its core, storage and state machine, and the requests waiting on
/// them. Deterministic given its events: a node runs it on a thread of its own
/// ([`spawn`], [`Driver::run`]); the simulator (`tests/simulation.rs`) calls the same
/// steps a turn of `run` is made of ([`Driver::handle_batch`], [`Driver::tick`],
/// [`Driver::end_turn`]) in an order of its choosing.
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
    reads: HashMap<ReadId, (String, ReadReply)>,
    /// Reads confirmed by the core at an index this node has not applied yet.
    confirmed_reads: Vec<(Index, String, ReadReply)>,
    next_read_id: ReadId,
    /// Peers' requests stepped in this turn, waiting for the core's reply.
    waiting_replies: HashMap<NodeId, VecDeque<(ReplyKind, RaftReplySender)>>,
    /// Followers' ReadIndex requests: answered in a later turn, after a heartbeat round.
    waiting_read_index: HashMap<(NodeId, ReadId), RaftReplySender>,
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
}

impl<T: Transport> Driver<T> {
    /// Opens the node's storage and recovers its core and state machine from it.
    /// Returns the driver, the handle to post to it, and the queue those posts (and the
    /// snapshot writer's) arrive in. `seed` seeds the core's randomness.
    pub fn open(
        config: Arc<Config>,
        transport: T,
        storage_options: StorageOptions,
        background: Box<dyn Background>,
        seed: u64,
    ) -> Result<(Driver<T>, DriverHandle, Receiver<Event>), DriverError> {
        let mut seeds = rand::rngs::SmallRng::seed_from_u64(seed);
        let open = OpenNode::open(&config, storage_options.clone(), seeds.random())?;
        let (handle, events, leader) = channel();
        // The snapshot writer's way to wake the driver. The driver holding a sender
        // means its channel never disconnects: it ends on Event::Shutdown only.
        let wake = handle.events.clone();
        let snapshot_index = open.applied;
        let trigger = SnapshotTrigger::from_config(&config);
        let driver = Driver {
            config,
            storage_options,
            background,
            seeds,
            wake,
            transport,
            node: open.node,
            storage: Some(open.storage),
            kv: open.kv,
            applied: open.applied,
            applied_term: open.applied_term,
            snapshot_index,
            trigger,
            since_snapshot: SinceSnapshot {
                state_bytes: open.state_bytes,
                ..SinceSnapshot::default()
            },
            up: true,
            proposals: BTreeMap::new(),
            reads: HashMap::new(),
            confirmed_reads: Vec::new(),
            next_read_id: 1,
            waiting_replies: HashMap::new(),
            waiting_read_index: HashMap::new(),
            received_snapshots: Vec::new(),
            last_role: None,
            last_may_vote: true,
            snapshot_in_flight: None,
            cleanup: None,
            next_snapshot_id: 1,
            leader,
            no_space: None,
            lag: ReplicationClock::default(),
        };
        Ok((driver, handle, events))
    }

    /// The driver's loop on its thread: wait for an event or the next tick, then one
    /// turn. Ends on `Event::Shutdown` (Ok) or a fatal error.
    pub fn run(&mut self, events: &Receiver<Event>) -> Result<(), DriverError> {
        let tick = self.config.tick();
        let mut next_tick = Instant::now() + tick;
        let mut next_purge = Instant::now() + PURGE_EVERY;
        let mut next_space_check = Instant::now() + SPACE_POLL;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match events.recv_timeout(wait) {
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let batch = first
                .into_iter()
                .chain(events.try_iter().take(MAX_EVENTS_PER_TURN));
            if self.handle_batch(batch)? {
                info!("driver shutting down");
                self.settle_snapshot();
                return Ok(());
            }

            let now = Instant::now();
            if now >= next_tick {
                self.tick(now);
                // After a long turn (a slow fsync), resume the cadence instead of
                // firing a burst of catch-up ticks.
                next_tick = (next_tick + tick).max(now);
            }
            if now >= next_purge {
                self.purge_abandoned();
                next_purge = now + PURGE_EVERY;
            }
            if now >= next_space_check {
                self.check_space()?;
                next_space_check = now + SPACE_POLL;
            }
            self.end_turn()?;
        }
    }

    /// The first step of a turn: handles `events` in order. True when one of them was
    /// `Event::Shutdown` (those after it are dropped): the caller ends the driver.
    pub fn handle_batch(
        &mut self,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<bool, DriverError> {
        for event in events {
            if matches!(event, Event::Shutdown) {
                return Ok(true);
            }
            self.handle(event)?;
        }
        Ok(false)
    }

    /// One tick of the node's clock (heartbeats, election timeouts), when it is in Raft.
    /// `now` only dates the warnings about silent members.
    pub fn tick(&mut self, now: Instant) {
        if self.up {
            self.node.tick();
            self.watch_members(now);
        }
    }

    /// The last step of a turn: carries out the core's Readys (persist, send, apply,
    /// answer), then answers what the turn left unanswered and publishes the leader.
    pub fn end_turn(&mut self) -> Result<(), DriverError> {
        // Advancing can make more work (the leader's own persist may commit
        // entries): carry it out now rather than at the next event or tick.
        while self.up && self.node.has_ready() {
            let ready = self.next_ready()?;
            match self.process(ready) {
                Ok(()) => self.log_role_change(),
                // A full disk met by the WAL: not fatal (see `leave_raft_for_space`).
                Err(DriverError::Storage(err @ StorageError::NoSpace { .. }))
                    if !plant::active(Plant::NospaceFatal) =>
                {
                    self.leave_raft_for_space(&err);
                }
                Err(err) => return Err(err),
            }
        }
        // The core had its chance to install these in this turn's Ready.
        self.received_snapshots.clear();
        self.answer_unanswered();
        self.publish_leader();
        Ok(())
    }

    /// The core, for the simulator's safety checks.
    pub fn core(&self) -> &RawNode {
        &self.node
    }

    /// Where the WAL's records end (the file and the offset past the last record), for
    /// the simulator to tear or drop what a crash caught unsynced. `None` while
    /// storage is closed.
    pub fn wal_end(&self) -> Option<(std::path::PathBuf, u64)> {
        let (path, offset) = self.storage.as_ref()?.wal_end();
        Some((path.to_path_buf(), offset))
    }

    /// Whether the node takes part in Raft (not stopped, not out for lack of space).
    pub fn is_up(&self) -> bool {
        self.up
    }

    fn handle(&mut self, event: Event) -> Result<(), DriverError> {
        match event {
            Event::Raft {
                msg,
                reply,
                snapshot,
            } => {
                // Stopped: the node is as good as crashed; dropping `reply` tells the
                // handler so.
                if !self.up {
                    return Ok(());
                }
                if let Some(reply) = reply {
                    match &msg.body {
                        Body::ReadIndex { id } => {
                            self.waiting_read_index.insert((msg.from, *id), reply);
                        }
                        body => match request_kind(body) {
                            Some(kind) => self
                                .waiting_replies
                                .entry(msg.from)
                                .or_default()
                                .push_back((kind, reply)),
                            None => {
                                let _ = reply.send(RaftReply::Unanswered);
                            }
                        },
                    }
                }
                self.received_snapshots
                    .extend(snapshot.map(|received| *received));
                // An answer to our replication (an append or a heartbeat), whatever it
                // says: the follower is alive and talking to us.
                let replication_answer = response_kind(&msg.body) == Some(ReplyKind::Replication);
                if replication_answer && self.lag.answered(msg.from, Instant::now()) {
                    info!(member = self.name_of(msg.from), "member reachable again");
                }
                self.node.step(msg);
            }
            Event::ConnectionLost { from } => {
                if self.up {
                    self.node.leader_disconnected(from);
                }
            }
            Event::Propose { data, kind, reply } => {
                if self.no_space.is_some() {
                    let _ = reply.send(Err(RequestError::NoSpace));
                    return Ok(());
                }
                if !self.up {
                    let _ = reply.send(Err(RequestError::Stopped));
                    return Ok(());
                }
                if let Err(err) = self.check_quota(&kind) {
                    let _ = reply.send(Err(err));
                    return Ok(());
                }
                if plant::active(Plant::WritesFailInternally) && self.applied.is_multiple_of(4) {
                    let planted = "planted: writes-fail-internally".to_string();
                    let _ = reply.send(Err(RequestError::Storage(planted)));
                    return Ok(());
                }
                let term = self.node.term();
                match self.node.propose(data) {
                    Ok(index) => {
                        // A proposal still waiting at this index was overwritten
                        // before it was applied: it is lost for good.
                        if let Some(old) = self
                            .proposals
                            .insert(index, PendingProposal { term, reply })
                        {
                            old.answer(Err(RequestError::LeadershipLost));
                        }
                    }
                    Err(err) => {
                        let _ = reply.send(Err(err.into()));
                    }
                }
            }
            Event::Read { key, stale, reply } => {
                let left_raft_for_space = self.no_space.as_ref().is_some_and(|a| a.left_raft);
                if !self.up && left_raft_for_space {
                    // Out of Raft for lack of space, but the state machine holds what
                    // was applied: stale reads are served from it, linearizable ones
                    // are sent elsewhere.
                    let answer = match stale {
                        true => Ok(self.kv.get(&key).map(str::to_string)),
                        false => Err(RequestError::NotLeader {
                            leader: self.read_elsewhere(),
                        }),
                    };
                    let _ = reply.send(answer);
                } else if !self.up {
                    let _ = reply.send(Err(RequestError::Stopped));
                } else if stale {
                    let _ = reply.send(Ok(self.kv.get(&key).map(str::to_string)));
                } else {
                    let id = self.next_read_id;
                    self.next_read_id += 1;
                    self.reads.insert(id, (key, reply));
                    self.node.read_index(id);
                }
            }
            Event::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Event::Stop { reply } => {
                // Stopped by the operator: stays stopped when space comes back.
                if let Some(alarm) = &mut self.no_space {
                    alarm.left_raft = false;
                }
                if self.up {
                    info!("stopping: leaving Raft until started again");
                    self.up = false;
                    self.fail_everything(RequestError::Stopped);
                    self.settle_snapshot();
                    // Closed like a crash would; Start reopens it.
                    self.storage = None;
                }
                let _ = reply.send(());
            }
            Event::Start { reply } => {
                let result = if self.up { Ok(()) } else { self.restart() };
                let _ = reply.send(result);
            }
            Event::BeginSnapshot {
                from,
                term,
                meta,
                reply,
            } => {
                let (our_term, leader) = (self.node.term(), self.node.leader());
                let writer = match (&self.storage, self.up) {
                    // Checked before a byte is stored: a stale leader (or anyone
                    // replaying its term) cannot make us write.
                    (Some(_), true) if term < our_term => {
                        Ok(SnapshotAdmission::Stale { term: our_term })
                    }
                    (Some(_), true)
                        if term == our_term && leader.is_some_and(|leader| leader != from) =>
                    {
                        Ok(SnapshotAdmission::NotLeader {
                            leader: leader.unwrap_or_default(),
                        })
                    }
                    // No newer than our own snapshot: the core will not install it (its
                    // commit index is at least that far, even right after a restart).
                    (Some(storage), true)
                        if storage
                            .latest_snapshot()
                            .is_some_and(|s| meta.index <= s.meta.index) =>
                    {
                        Ok(SnapshotAdmission::NotNeeded)
                    }
                    (Some(storage), true) => storage
                        .begin_snapshot(meta)
                        .map(SnapshotAdmission::Write)
                        .map_err(|err| RequestError::Storage(err.to_string())),
                    _ => Err(RequestError::Stopped),
                };
                let _ = reply.send(writer);
            }
            Event::SnapshotWritten { id } => {
                // Another id is a snapshot abandoned before a Stop: nothing to do.
                if let Some(job) = self.snapshot_in_flight.take_if(|job| job.id == id) {
                    // Sent just before this event.
                    let written = job.result.recv().unwrap_or_else(|_| {
                        Err(StorageError::Invalid("the snapshot thread vanished".into()))
                    });
                    self.snapshot_written(job, written);
                }
            }
            Event::Shutdown => {}
        }
        Ok(())
    }

    /// Logs elections as this node sees them: its role, term and leader.
    /// Tells waiting requests when a leader appears (or goes), so they retry at once
    /// rather than after their back-off.
    fn publish_leader(&self) {
        let known = if self.up { self.node.leader() } else { None };
        self.leader.send_if_modified(|leader| {
            let changed = *leader != known;
            *leader = known;
            changed
        });
    }

    fn log_role_change(&mut self) {
        let may_vote = self.node.may_vote();
        if may_vote != self.last_may_vote {
            self.last_may_vote = may_vote;
            if may_vote {
                info!(
                    term = self.node.term(),
                    "caught up after the wipe (DISTRAFT_RESET_LOGS): voting again"
                );
            } else {
                warn!(
                    term = self.node.term(),
                    "this node's log was wiped (DISTRAFT_RESET_LOGS): it neither votes nor \
                     campaigns until a leader has sent it an entry of a later term. If a \
                     majority of the members was wiped, no leader can be elected: to start \
                     a new cluster, delete every member's data directories instead \
                     (docs/storage.md, \"Wiping a node\")"
                );
            }
        }
        let now = (self.node.role(), self.node.term(), self.node.leader());
        if self.last_role == Some(now) {
            return;
        }
        // The first look counts only if it already shows a leader.
        let leader_changed = match self.last_role {
            None => now.2.is_some(),
            Some((_, _, before)) => before != now.2,
        };
        let was_leading = self
            .last_role
            .is_some_and(|(before, _, _)| before == Role::Leader);
        self.last_role = Some(now);
        let (role, term, leader) = now;
        if was_leading != (role == Role::Leader) {
            self.lag
                .leadership_changed(role == Role::Leader, Instant::now());
        }
        let leader = leader
            .and_then(|id| self.config.member(id))
            .map(|m| m.name.as_str());
        if leader_changed {
            metrics().leader_changed(term, leader.unwrap_or(""));
        }
        match role {
            Role::Leader => info!(term, "became the leader"),
            Role::Follower => info!(term, leader = leader.unwrap_or("unknown"), "following"),
            Role::PreCandidate | Role::Candidate => debug!(term, ?role, "campaigning"),
        }
    }

    /// Logs (leader only) each follower that stopped answering for an election
    /// timeout; its return is logged when it answers (see `handle`).
    fn watch_members(&mut self, now: Instant) {
        let followers = self.config.peers().map(|m| m.id);
        let after = self.config.election_timeout;
        for id in self.lag.newly_silent(followers, now, after) {
            warn!(
                member = self.name_of(id),
                silent_ms = after.as_millis() as u64,
                "member unreachable: no answer to appends or heartbeats"
            );
        }
    }

    /// A member's name, for logs.
    fn name_of(&self, id: NodeId) -> &str {
        self.config.member(id).map_or("?", |m| m.name.as_str())
    }

    /// Refuses a put that would take the state past the quota. Checked where the
    /// leader accepts proposals (followers forward theirs), against the applied
    /// state: writes proposed but not yet applied are not counted, so the state may
    /// pass the quota by at most what is in flight when it is reached.
    fn check_quota(&self, kind: &WriteKind) -> Result<(), RequestError> {
        let WriteKind::Put { key, value_bytes } = kind else {
            return Ok(());
        };
        if self.node.role() != Role::Leader || plant::active(Plant::NoQuota) {
            return Ok(());
        }
        let quota = self.config.quota_bytes;
        let would_be = self.kv.bytes_after_put(key, *value_bytes);
        // A put that does not grow the state is fine even past the quota (which a
        // lowered DISTRAFT_QUOTA_BYTES can leave behind).
        if would_be > quota && would_be > self.kv.state_bytes() {
            return Err(RequestError::QuotaExceeded { would_be, quota });
        }
        Ok(())
    }

    /// Rebuilds the core from storage, exactly as a restart of the process would.
    fn restart(&mut self) -> Result<(), RequestError> {
        let seed = self.seeds.random();
        match OpenNode::open(&self.config, self.storage_options.clone(), seed) {
            Ok(open) => {
                self.rejoin(open);
                // Whatever the disk was short of, the next write will say again.
                self.no_space = None;
                info!("started: rejoining Raft from the persisted state");
                Ok(())
            }
            Err(err) => {
                error!("cannot start: {err}");
                Err(RequestError::Storage(err.to_string()))
            }
        }
    }

    /// The core's next Ready. Entries it evicted from memory and must send to a slow
    /// follower are read back from the WAL; a failed read stops the node like any
    /// other storage error.
    fn next_ready(&mut self) -> Result<Ready, DriverError> {
        let storage = self.storage.as_ref().ok_or(DriverError::NotOpen)?;
        let mut wal = WalReader {
            storage,
            failure: None,
        };
        let ready = self.node.ready_with(&mut wal);
        match wal.failure {
            Some(err) => {
                error!("reading log entries back from the WAL failed: {err}");
                Err(err.into())
            }
            None => Ok(ready),
        }
    }

    /// Takes the core, storage and state machine just recovered from disk, and goes
    /// back into Raft.
    fn rejoin(&mut self, open: OpenNode) {
        self.node = open.node;
        self.storage = Some(open.storage);
        self.kv = open.kv;
        self.applied = open.applied;
        self.applied_term = open.applied_term;
        self.snapshot_index = open.applied;
        self.since_snapshot = SinceSnapshot {
            state_bytes: open.state_bytes,
            ..SinceSnapshot::default()
        };
        self.up = true;
    }

    /// The WAL could not be written for lack of space. Going on is not possible (what
    /// is on disk past the last fsync is unknown until reopened), and neither is it
    /// necessary to exit: nothing acknowledged is lost, as no fsync failed. So the
    /// node leaves Raft exactly as Admin.Stop does (as if it crashed, which Raft always
    /// tolerates), raises the NOSPACE alarm, keeps serving reads and status, and
    /// rejoins from disk once space is back (`check_space`).
    fn leave_raft_for_space(&mut self, err: &StorageError) {
        error!(
            "{err}: leaving Raft and refusing writes until space is freed (NOSPACE alarm); \
             reads and status are still served"
        );
        self.no_space = Some(NoSpaceAlarm {
            left_raft: true,
            leader: self.node.leader(),
        });
        self.up = false;
        // Proposals may still commit through the others: they become indeterminate.
        self.fail_everything(RequestError::Stopped);
        self.settle_snapshot();
        self.storage = None;
    }

    /// Where a node out of Raft sends a linearizable read: the leader it knew, else
    /// any other member in turn (a follower serves linearizable reads too, by
    /// ReadIndex), so that a retried read tries them all.
    fn read_elsewhere(&mut self) -> Option<NodeId> {
        let me = self.config.id;
        if let Some(leader) = self.no_space.as_ref().and_then(|a| a.leader) {
            if leader != me {
                return Some(leader);
            }
        }
        let peers: Vec<NodeId> = self.config.peers().map(|m| m.id).collect();
        let turn = self.next_read_id as usize;
        self.next_read_id += 1;
        peers.get(turn.checked_rem(peers.len())?).copied()
    }

    /// Raises the NOSPACE alarm for a snapshot that found the disk full; the node stays
    /// in Raft, keeps its older snapshot and log, and tries again at the next threshold.
    fn raise_snapshot_no_space(&mut self) {
        if self.no_space.is_none() {
            error!("the disk is full: NOSPACE alarm raised, writes refused until space is freed");
            self.no_space = Some(NoSpaceAlarm {
                left_raft: false,
                leader: None,
            });
        }
    }

    /// While the NOSPACE alarm is raised: once both directories have room again,
    /// reopens storage from disk (repairing a torn tail) and rejoins Raft if the alarm
    /// took the node out of it, then clears the alarm.
    pub fn check_space(&mut self) -> Result<(), DriverError> {
        let Some(alarm) = &self.no_space else {
            return Ok(());
        };
        let largest_entry = self.config.request_rules.largest_pair_bytes() as u64;
        let wanted = largest_entry
            .saturating_mul(4)
            .saturating_add(RESUME_FREE_BYTES);
        match self.storage_options.has_free_space(wanted) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(err) => {
                warn!("checking free space: {err}");
                return Ok(());
            }
        }
        if alarm.left_raft && !self.up {
            let seed = self.seeds.random();
            match OpenNode::open(&self.config, self.storage_options.clone(), seed) {
                Ok(open) => self.rejoin(open),
                Err(DriverError::Storage(err)) if err.is_out_of_space() => {
                    warn!("space is back but reopening storage found none: {err}");
                    return Ok(());
                }
                Err(err) => return Err(err),
            }
            info!("space is back: NOSPACE alarm cleared, rejoining Raft from the persisted state");
        } else {
            info!("space is back: NOSPACE alarm cleared");
        }
        self.no_space = None;
        Ok(())
    }

    /// Carries out one Ready in the order its documentation prescribes.
    fn process(&mut self, ready: Ready) -> Result<(), DriverError> {
        let Ready {
            hard_state,
            snapshot,
            entries,
            messages,
            persisted_messages,
            committed,
            reads,
            failed_reads,
        } = ready;
        // 0. The leader's appends go out first: the followers write them while we do
        //    (Raft thesis §10.2.1; the core counts our copy only after `advance`).
        for msg in messages {
            self.dispatch(msg);
        }

        // 1. Persist: the snapshot, then entries and hard state, in one fsync.
        if let Some(meta) = snapshot {
            self.install_snapshot(meta)?;
        }
        if hard_state.is_some() || !entries.is_empty() {
            self.storage()?.append(hard_state.as_ref(), &entries)?;
        }
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            self.lag.appended(first.index, last.index, Instant::now());
        }

        // 2. Send the rest, now that everything those messages promise is durable.
        for msg in persisted_messages {
            self.dispatch(msg);
        }

        // 3.
        self.node.advance();

        // 4. Apply.
        for entry in committed {
            self.apply(entry);
        }

        // 5. Answer reads, now that the state machine has caught up with them.
        for read in reads {
            if let Some((key, reply)) = self.reads.remove(&read.id) {
                self.confirmed_reads.push((read.index, key, reply));
            }
        }
        self.serve_confirmed_reads();
        for (id, err) in failed_reads {
            if let Some((_, reply)) = self.reads.remove(&id) {
                let _ = reply.send(Err(err.into()));
            }
        }

        self.maybe_snapshot();
        Ok(())
    }
}

impl<T: Transport> Driver<T> {
    /// The open storage; only a stopped node has none, and a stopped node is not driven.
    fn storage(&mut self) -> Result<&mut Storage, DriverError> {
        self.storage.as_mut().ok_or(DriverError::NotOpen)
    }

    /// Makes a snapshot received from the leader durable and loads the state machine
    /// from it; the log now continues after it.
    fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), DriverError> {
        let position = self
            .received_snapshots
            .iter()
            .position(|received| *received.writer.meta() == meta)
            .ok_or(DriverError::UnknownSnapshot(meta.index))?;
        // The image was verified and parsed on arrival, so nothing below can fail on
        // its contents; the old snapshot and log go only once the new file is durable
        // (and a crash in between recovers one or the other, see finish_snapshot).
        let ReceivedSnapshot { writer, kv } = self.received_snapshots.swap_remove(position);
        let file = self.storage()?.finish_snapshot(writer)?;
        self.kv = kv;
        self.applied = meta.index;
        self.applied_term = meta.term;
        self.snapshot_index = meta.index;
        self.since_snapshot = SinceSnapshot {
            state_bytes: file.data_len(),
            ..SinceSnapshot::default()
        };
        // Proposals the snapshot jumped over may or may not be in it.
        let kept = self.proposals.split_off(&(meta.index + 1));
        for (_, proposal) in std::mem::replace(&mut self.proposals, kept) {
            proposal.answer(Err(RequestError::Indeterminate));
        }
        info!(
            index = meta.index,
            term = meta.term,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    /// Routes one outgoing message: a reply to a waiting peer request, or a new message
    /// for the transport.
    fn dispatch(&mut self, msg: Message) {
        if let Body::ReadIndexResponse { id, .. } = &msg.body {
            if let Some(reply) = self.waiting_read_index.remove(&(msg.to, *id)) {
                let _ = reply.send(RaftReply::Answer(msg));
            }
            return;
        }
        if let Some(kind) = response_kind(&msg.body) {
            let waiting = self.waiting_replies.get_mut(&msg.to);
            let slot = waiting.and_then(|queue| {
                let position = queue.iter().position(|(k, _)| *k == kind)?;
                queue.remove(position)
            });
            match slot {
                Some((_, reply)) => {
                    let _ = reply.send(RaftReply::Answer(msg));
                }
                None => debug!(to = msg.to, "dropping a reply whose request is gone"),
            }
            return;
        }
        if let Body::Snapshot { .. } = &msg.body {
            match self.storage.as_ref().and_then(Storage::latest_snapshot) {
                Some(file) => self.transport.send_snapshot(msg, file.clone()),
                None => warn!(
                    to = msg.to,
                    "the core asked to send a snapshot, but none exists"
                ),
            }
            return;
        }
        self.transport.send(msg);
    }

    /// Requests this turn did not answer get an explicit "no answer", so that their
    /// callers (and the ordered AppendEntries streams) need not wait.
    fn answer_unanswered(&mut self) {
        for (_, queue) in self.waiting_replies.drain() {
            for (_, reply) in queue {
                let _ = reply.send(RaftReply::Unanswered);
            }
        }
    }

    fn apply(&mut self, entry: Entry) {
        if entry.index <= self.applied {
            // Already in the state machine (restored from a snapshot).
            return;
        }
        self.since_snapshot.entries += 1;
        self.since_snapshot.log_bytes += entry.size() as u64;
        let applied = match entry.kind {
            EntryKind::Normal => self.kv.apply(&entry.data),
            EntryKind::Noop => Applied::Noop,
            // The wire refuses them (`rpc::convert`) and nothing here proposes one.
            EntryKind::ConfChange => {
                Applied::Rejected("membership changes are not supported by this version".into())
            }
        };
        if let Applied::Rejected(reason) = &applied {
            warn!(
                index = entry.index,
                "skipped an entry without a valid command: {reason}"
            );
        }
        self.applied = entry.index;
        self.applied_term = entry.term;
        if let Some(proposal) = self.proposals.remove(&entry.index) {
            let result = if proposal.term != entry.term {
                Err(RequestError::LeadershipLost)
            } else if let Applied::Rejected(reason) = applied {
                Err(RequestError::Rejected(reason))
            } else {
                Ok(Committed {
                    index: entry.index,
                    applied,
                })
            };
            proposal.answer(result);
        }
    }

    /// Serves the confirmed reads whose index has been applied.
    fn serve_confirmed_reads(&mut self) {
        let applied = self.applied;
        let (due, waiting) = std::mem::take(&mut self.confirmed_reads)
            .into_iter()
            .partition(|(index, _, _)| *index <= applied);
        self.confirmed_reads = waiting;
        for (_, key, reply) in due {
            let _ = reply.send(Ok(self.kv.get(&key).map(str::to_string)));
        }
    }

    /// Snapshots the state machine once enough was applied since the last one (by
    /// entries or bytes, see [`SnapshotTrigger`]), so that the log (and a restart's
    /// replay) stays bounded. Only the capture of the state happens here; the snapshot
    /// thread writes it, and the log is compacted when it reports back
    /// (`snapshot_written`).
    fn maybe_snapshot(&mut self) {
        if self.snapshot_in_flight.is_some() || !self.trigger.is_due(&self.since_snapshot) {
            return;
        }
        let meta = SnapshotMeta {
            index: self.applied,
            term: self.applied_term,
            membership: self.node.membership().clone(),
        };
        // Whatever happens, the next attempt is a threshold away.
        self.snapshot_index = meta.index;
        let log_bytes = self.since_snapshot.log_bytes;
        self.since_snapshot.entries = 0;
        self.since_snapshot.log_bytes = 0;
        match self.start_snapshot(meta.clone(), log_bytes) {
            Ok(job) => self.snapshot_in_flight = Some(job),
            // Not fatal: the log just grows until the next attempt.
            Err(err) => error!(index = meta.index, "taking a snapshot failed: {err}"),
        }
    }

    /// Captures the state machine at the applied index and hands it to a new snapshot
    /// thread, which writes and fsyncs it while this loop goes on.
    fn start_snapshot(
        &mut self,
        meta: SnapshotMeta,
        log_bytes: u64,
    ) -> Result<SnapshotInFlight, DriverError> {
        let job = self.storage()?.snapshot_job(meta.clone())?;
        // The only part on the driver, and no copy of the state (`Kv::capture` shares
        // it): measured under 1 µs at 200 MB, where copying it into a buffer took
        // 100-700 ms (~0.5-3.5 ms per MB) and stalled writes as long as writing it had.
        let captured = Instant::now();
        let image = self.kv.capture();
        let capture = captured.elapsed();
        let id = self.next_snapshot_id;
        self.next_snapshot_id += 1;
        let (result_tx, result) = mpsc::channel();
        let wake = self.wake.clone();
        self.background
            .spawn(
                Job::SnapshotWriter,
                Box::new(move || {
                    let written = job.write(|out| image.write(out));
                    // Let go of the state before saying so: the driver's next change can
                    // then update it in place again.
                    drop(image);
                    let _ = result_tx.send(written);
                    // Blocks only while the queue is full (the driver keeps draining it);
                    // fails once the driver is gone, which then no longer needs to know.
                    let _ = wake.send(Event::SnapshotWritten { id });
                }),
            )
            .map_err(DriverError::Thread)?;
        Ok(SnapshotInFlight {
            id,
            meta,
            log_bytes,
            capture,
            started: Instant::now(),
            result,
        })
    }

    /// The snapshot thread is done: once the file is durable, the log before it can go.
    fn snapshot_written(
        &mut self,
        job: SnapshotInFlight,
        written: Result<SnapshotFile, StorageError>,
    ) {
        let index = job.meta.index;
        let write = job.started.elapsed();
        let compacting = Instant::now();
        let adopted = written.map_err(DriverError::from).and_then(|file| {
            let bytes = file.data_len();
            Ok(self.storage()?.adopt_snapshot(file)?.map(|g| (g, bytes)))
        });
        match adopted {
            Ok(Some((garbage, bytes))) => {
                self.node.compact(index);
                self.delete_in_background(garbage);
                self.since_snapshot.state_bytes = bytes;
                let metrics = metrics();
                metrics.snapshot_save_seconds.observe(write.as_secs_f64());
                metrics
                    .snapshot_bytes
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
                info!(
                    index,
                    keys = self.kv.len(),
                    bytes,
                    log_bytes = job.log_bytes,
                    capture_us = job.capture.as_micros() as u64,
                    write_ms = write.as_millis() as u64,
                    compact_ms = compacting.elapsed().as_millis() as u64,
                    "took a snapshot"
                );
            }
            Ok(None) => info!(
                index,
                "dropped our snapshot: a newer one was installed meanwhile"
            ),
            // Not fatal, nothing lost: the log is kept, the next threshold retries.
            Err(err) => {
                error!(index, "taking a snapshot failed: {err}");
                if matches!(&err, DriverError::Storage(err) if err.is_out_of_space()) {
                    self.raise_snapshot_no_space();
                }
            }
        }
    }

    /// Deletes an older snapshot and dead segments on a thread of their own: unlinking
    /// a large file and fsyncing directories took 70-200 ms on the driver (200 MB).
    fn delete_in_background(&mut self, garbage: Garbage) {
        self.join_cleanup();
        let delete = Box::new(move || {
            if let Err(err) = garbage.delete() {
                // Harmless: they are ignored, and deleted at the next open.
                warn!("deleting files a snapshot made useless: {err}");
            }
        });
        match self.background.spawn(Job::SnapshotCleanup, delete) {
            Ok(cleanup) => self.cleanup = cleanup,
            Err(err) => warn!("no thread to delete old snapshot files: {err}"),
        }
    }

    /// Waits for the deletions of `delete_in_background` (a few unlinks and fsyncs),
    /// so that storage is never reopened while files in it are being deleted.
    fn join_cleanup(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            let _ = cleanup.join();
        }
    }

    /// Before Stop or shutdown: waits, bounded, for the snapshot being written and
    /// adopts it. Past the bound it is abandoned, which is safe: its thread ends on its
    /// own, and leaves either a temp file (deleted at open) or a complete snapshot of
    /// committed state (which recovery may use like any other).
    pub fn settle_snapshot(&mut self) {
        if let Some(job) = self.snapshot_in_flight.take() {
            match job.result.recv_timeout(SNAPSHOT_SETTLE) {
                Ok(written) => self.snapshot_written(job, written),
                Err(_) => warn!(
                    index = job.meta.index,
                    "abandoning the snapshot still being written"
                ),
            }
        }
        self.join_cleanup();
    }

    /// Forgets requests whose callers gave up waiting.
    pub fn purge_abandoned(&mut self) {
        self.proposals.retain(|_, p| !p.reply.is_closed());
        self.reads.retain(|_, (_, reply)| !reply.is_closed());
        self.confirmed_reads
            .retain(|(_, _, reply)| !reply.is_closed());
        self.waiting_read_index
            .retain(|_, reply| !reply.is_closed());
    }

    /// Fails every waiting client request and drops every waiting peer request.
    pub fn fail_everything(&mut self, err: RequestError) {
        // A proposal that was handed to the core may still commit.
        let proposal_err = match err {
            RequestError::Stopped | RequestError::ShuttingDown => RequestError::Indeterminate,
            ref other => other.clone(),
        };
        for (_, proposal) in std::mem::take(&mut self.proposals) {
            proposal.answer(Err(proposal_err.clone()));
        }
        for (_, (_, reply)) in self.reads.drain() {
            let _ = reply.send(Err(err.clone()));
        }
        for (_, _, reply) in self.confirmed_reads.drain(..) {
            let _ = reply.send(Err(err.clone()));
        }
        self.waiting_replies.clear();
        self.waiting_read_index.clear();
        self.received_snapshots.clear();
    }

    fn status(&self) -> NodeStatus {
        let config = &self.config;
        let name_of = |id: NodeId| {
            config
                .member(id)
                .map(|m| m.name.clone())
                .unwrap_or_default()
        };
        let status = self.node.status();
        let now = Instant::now();
        let followers = status
            .progress
            .iter()
            .map(|&(id, matched, _)| {
                let lag = FollowerLag {
                    lag_entries: status.last_index.saturating_sub(matched),
                    lag_ms: millis(self.lag.lag(matched, now)),
                    last_ack_ms: self.lag.last_answer(id, now).map(millis),
                };
                (name_of(id), lag)
            })
            .collect();
        let mut report = NodeStatus {
            role: status.role,
            term: status.term,
            leader: status.leader.map(name_of),
            commit_index: status.commit,
            last_applied: self.applied,
            last_log_index: status.last_index,
            last_log_term: status.last_term,
            match_index: status
                .progress
                .iter()
                .map(|(id, m, _)| (name_of(*id), *m))
                .collect(),
            next_index: status
                .progress
                .iter()
                .map(|(id, _, n)| (name_of(*id), *n))
                .collect(),
            up: self.up,
            snapshot_index: status.snapshot_index,
            state_digest: self.kv.digest_hex(),
            voting: status.may_vote,
            cluster_id: config.cluster_id,
            state_bytes: self.kv.state_bytes(),
            alarm: self.no_space.as_ref().map(|_| Alarm::NoSpace),
            keys: self.kv.len() as u64,
            followers,
            quorum_ack_ms: match status.role {
                Role::Leader => self
                    .lag
                    .quorum_ack_age(config.id, config.members.iter().map(|m| m.id), now)
                    .map(millis),
                Role::Follower | Role::PreCandidate | Role::Candidate => None,
            },
            proposals_pending: self.proposals.len() as u64,
        };
        if !self.up {
            // As if crashed: no role, no leader, whatever the core last believed.
            report.role = Role::Follower;
            report.leader = None;
            report.match_index.clear();
            report.next_index.clear();
            report.followers.clear();
            report.quorum_ack_ms = None;
        }
        report
    }
}

/// The core's way back to the entries it evicted from memory: the WAL. A failure is
/// kept for the driver, which stops (the core just sends nothing meanwhile).
struct WalReader<'a> {
    storage: &'a Storage,
    failure: Option<StorageError>,
}

impl LogReader for WalReader<'_> {
    fn read_entries(&mut self, from: Index, to: Index, max_bytes: usize) -> Option<Vec<Entry>> {
        if self.failure.is_some() {
            return None;
        }
        match self.storage.read_entries(from, to, max_bytes) {
            Ok(entries) => Some(entries),
            Err(err) => {
                self.failure = Some(err);
                None
            }
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
