//! The driver's loop, on its own thread: wait for an event, drain every event that is
//! pending, then carry out ONE `Ready` — one fsync, one round of sends, one round of
//! applies for the whole batch.
//!
//! This file is the loop and the dispatch of events only: each event has one method,
//! in the file of its concern (`replies.rs`: peers' messages and the pairing of their
//! answers; `requests.rs`: clients' writes and reads; `recovery.rs`: Stop, Start and
//! opening storage; `snapshots.rs`: our snapshots and the leader's; `alarm.rs`: the
//! NOSPACE alarm; `ready.rs`: carrying out a `Ready`; `leadership.rs`: what elections
//! make known; `status.rs`: the status report). The [`Driver`] they share is defined in
//! `mod.rs`, the parent of them all, so that none of them imports another's home.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;
use tracing::info;

use super::alarm::SPACE_POLL;
use super::background::{Background, Threads};
use super::lag::ReplicationClock;
use super::recovery::OpenNode;
use super::replies::WaitingReplies;
use super::trigger::{SinceSnapshot, SnapshotTrigger};
use super::{
    channel, storage_options, Driver, DriverError, DriverHandle, Event, RequestError, Transport,
};
use crate::config::Config;
use crate::plant::{self, Plant};
use crate::raft::{NodeId, RawNode};
use crate::storage::{StorageError, StorageOptions};

/// At most this many events are folded into one turn, so that a flood of requests
/// cannot postpone ticks and fsyncs without bound.
const MAX_EVENTS_PER_TURN: usize = 4096;
/// How often abandoned requests (their callers gave up) are forgotten.
const PURGE_EVERY: Duration = Duration::from_secs(1);

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
    // A process, not a restart inside one (Admin.Start, the simulator): a member the
    // cluster removed does not come back on its old data.
    if let Some(removed) = driver.removed_member() {
        return Err(removed);
    }
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
        let watches = crate::watch::Hub::new(config.limits.watch.clone(), open.applied);
        let mut kv = open.kv;
        // Entries replayed from the log are changes the watch history keeps.
        kv.record_changes();
        let driver = Driver {
            config,
            storage_options,
            background,
            seeds,
            wake,
            transport,
            node: open.node,
            storage: Some(open.storage),
            kv,
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
            replies: WaitingReplies::default(),
            received_snapshots: Vec::new(),
            last_role: None,
            last_may_vote: true,
            snapshot_in_flight: None,
            waiting_backups: Vec::new(),
            cleanup: None,
            next_snapshot_id: 1,
            leader,
            no_space: None,
            lag: ReplicationClock::default(),
            ticks_since_promote_check: 0,
            watches,
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
            self.handle(event);
        }
        Ok(false)
    }

    /// One tick of the node's clock (heartbeats, election timeouts), when it is in Raft.
    /// `now` only dates the warnings about silent members.
    pub fn tick(&mut self, now: Instant) {
        if self.up {
            self.node.tick();
            self.watch_members(now);
            self.auto_promote();
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
        self.replies.answer_unanswered();
        self.publish_leader();
        self.follow_membership(&[]);
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

    /// One event, handed to the method of its concern. None of them is fatal: what
    /// fails here fails the request that asked, and storage errors that stop the node
    /// surface when the turn carries out its Ready (`end_turn`).
    fn handle(&mut self, event: Event) {
        match event {
            Event::Raft {
                msg,
                reply,
                snapshot,
            } => self.on_peer_message(msg, reply, snapshot),
            Event::ConnectionLost { from } => self.on_connection_lost(from),
            Event::Propose { data, kind, reply } => self.on_propose(data, kind, reply),
            Event::Read { read, stale } => self.on_read(read, stale),
            Event::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Event::Stop { reply } => self.on_stop(reply),
            Event::TransferLeader { to, reply } => self.on_transfer_leader(to, reply),
            Event::Start { reply } => self.on_start(reply),
            Event::ChangeMembership { request, reply } => self.on_change_membership(request, reply),
            Event::BeginSnapshot {
                from,
                term,
                meta,
                reply,
            } => self.on_begin_snapshot(from, term, meta, reply),
            Event::SnapshotWritten { id } => self.on_snapshot_written(id),
            Event::Watch { request, reply } => self.on_watch(request, reply),
            Event::Shutdown => {}
        }
    }

    /// The stream of appends from `from` broke: if it led, look for a new leader soon.
    fn on_connection_lost(&mut self, from: NodeId) {
        if self.up {
            self.node.leader_disconnected(from);
        }
    }
}
