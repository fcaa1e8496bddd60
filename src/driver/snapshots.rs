//! Snapshots: taking our own off the driver thread (when the trigger fires, see
//! `trigger.rs`), compacting once the file is durable, deleting what it made useless;
//! and admitting and installing the ones the leader sends. See "Snapshots off the
//! driver thread" in docs/architecture.md.

use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::background::Job;
use super::trigger::SinceSnapshot;
use super::{
    Driver, DriverError, Event, ReceivedSnapshot, RequestError, SnapshotAdmission, Transport,
};
use crate::metrics::metrics;
use crate::raft::{NodeId, SnapshotMeta, Term};
use crate::storage::{Garbage, SnapshotFile, StorageError};

/// How long Stop and shutdown wait for a snapshot being written before abandoning it
/// (well within the node's 5 s shutdown grace).
const SNAPSHOT_SETTLE: Duration = Duration::from_secs(2);

/// A snapshot being written by the snapshot thread.
pub(super) struct SnapshotInFlight {
    id: u64,
    meta: SnapshotMeta,
    /// The bytes of log applied since the previous snapshot, which this one covers.
    log_bytes: u64,
    capture: Duration,
    started: Instant,
    result: Receiver<Result<SnapshotFile, StorageError>>,
}

impl<T: Transport> Driver<T> {
    /// Whether, and where, to store a snapshot image that `from` sends in `term`:
    /// checked before a byte is stored.
    pub(super) fn on_begin_snapshot(
        &mut self,
        from: NodeId,
        term: Term,
        meta: SnapshotMeta,
        reply: oneshot::Sender<Result<SnapshotAdmission, RequestError>>,
    ) {
        let (our_term, leader) = (self.node.term(), self.node.leader());
        let writer = match (&self.storage, self.up) {
            // A stale leader (or anyone replaying its term) cannot make us write.
            (Some(_), true) if term < our_term => Ok(SnapshotAdmission::Stale { term: our_term }),
            (Some(_), true) if term == our_term && leader.is_some_and(|leader| leader != from) => {
                Ok(SnapshotAdmission::NotLeader {
                    leader: leader.unwrap_or_default(),
                })
            }
            // No newer than our own snapshot: the core will not install it (its commit
            // index is at least that far, even right after a restart).
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

    /// The snapshot thread reports snapshot `id` written (or failed).
    pub(super) fn on_snapshot_written(&mut self, id: u64) {
        // Another id is a snapshot abandoned before a Stop: nothing to do.
        if let Some(job) = self.snapshot_in_flight.take_if(|job| job.id == id) {
            // Sent just before this event.
            let written = job.result.recv().unwrap_or_else(|_| {
                Err(StorageError::Invalid("the snapshot thread vanished".into()))
            });
            self.snapshot_written(job, written);
        }
    }

    /// Makes a snapshot received from the leader durable and loads the state machine
    /// from it; the log now continues after it.
    pub(super) fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), DriverError> {
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
        // Members the snapshot's own log added: their records are in its image.
        self.config.registry.learn(kv.members().cloned());
        self.kv = kv;
        self.applied = meta.index;
        self.applied_term = meta.term;
        self.snapshot_index = meta.index;
        self.since_snapshot = SinceSnapshot {
            state_bytes: file.data_len(),
            ..SinceSnapshot::default()
        };
        // The watch history does not cover the entries the snapshot jumped over.
        self.snapshot_installed();
        self.answer_backups();
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

    /// Snapshots the state machine once enough was applied since the last one (by
    /// entries or bytes, see [`super::trigger::SnapshotTrigger`]), so that the log (and
    /// a restart's replay) stays bounded. Only the capture of the state happens here;
    /// the snapshot thread writes it, and the log is compacted when it reports back
    /// (`snapshot_written`).
    pub(super) fn maybe_snapshot(&mut self) {
        if self.snapshot_in_flight.is_some()
            || !(self.trigger.is_due(&self.since_snapshot) || self.backup_needs_snapshot())
        {
            return;
        }
        let meta = SnapshotMeta {
            index: self.applied,
            term: self.applied_term,
            // The membership in force at the applied index, not the latest one: a
            // change appended but not applied may still be taken back.
            membership: self.node.membership_at(self.applied),
        };
        // Whatever happens, the next attempt is a threshold away.
        self.snapshot_index = meta.index;
        let log_bytes = self.since_snapshot.log_bytes;
        self.since_snapshot.entries = 0;
        self.since_snapshot.log_bytes = 0;
        match self.start_snapshot(meta.clone(), log_bytes) {
            Ok(job) => self.snapshot_in_flight = Some(job),
            // Not fatal: the log just grows until the next attempt.
            Err(err) => {
                error!(index = meta.index, "taking a snapshot failed: {err}");
                self.fail_backups(meta.index, RequestError::Storage(err.to_string()));
            }
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
                self.answer_backups();
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
            Ok(None) => {
                info!(
                    index,
                    "dropped our snapshot: a newer one was installed meanwhile"
                );
                self.answer_backups();
            }
            // Not fatal, nothing lost: the log is kept, the next threshold retries.
            Err(err) => {
                error!(index, "taking a snapshot failed: {err}");
                self.fail_backups(index, RequestError::Storage(err.to_string()));
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
}
