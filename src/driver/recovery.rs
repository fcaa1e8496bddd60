//! Leaving Raft and coming back. A node recovers its core and state machine from disk
//! in one way, whether it starts, is started again after Admin.Stop, or rejoins once
//! the NOSPACE alarm clears; and it leaves Raft in one way, as if it crashed (Stop, or
//! a WAL that found the disk full), closing storage so that the return reopens it.

use rand::Rng;
use tokio::sync::oneshot;
use tracing::{error, info};

use super::trigger::SinceSnapshot;
use super::{Driver, DriverError, RequestError, Transport};
use crate::config::Config;
use crate::kv::Kv;
use crate::raft::{Index, RawNode, Term};
use crate::storage::{SnapshotFile, Storage, StorageOptions};

/// A core, its storage and state machine, as recovered from disk.
pub(super) struct OpenNode {
    pub(super) node: RawNode,
    pub(super) storage: Storage,
    pub(super) kv: Kv,
    pub(super) applied: Index,
    pub(super) applied_term: Term,
    /// The size of the snapshot's image (0 without one).
    pub(super) state_bytes: u64,
}

impl OpenNode {
    /// `seed` drives the core's randomness (its election timeouts).
    pub(super) fn open(
        config: &Config,
        options: StorageOptions,
        seed: u64,
    ) -> Result<OpenNode, DriverError> {
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
        // The records of the members the bootstrap list does not name: in the
        // snapshot's member table and in the log's membership changes.
        config.registry.learn(kv.members().cloned());
        config
            .registry
            .learn(super::members::records_in(&recovered.restored.entries));
        let node = RawNode::new(config.raft_config(), recovered.restored, seed);
        config.registry.set_membership(node.membership());
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

impl<T: Transport> Driver<T> {
    /// Admin.Stop: leaves Raft as if crashed (idempotent).
    pub(super) fn on_stop(&mut self, reply: oneshot::Sender<()>) {
        // Stopped by the operator: stays stopped when space comes back.
        if let Some(alarm) = &mut self.no_space {
            alarm.left_raft = false;
        }
        if self.up {
            info!("stopping: leaving Raft until started again");
            self.leave_raft();
        }
        let _ = reply.send(());
    }

    /// Admin.Start: rejoins Raft from the persisted state (idempotent).
    pub(super) fn on_start(&mut self, reply: oneshot::Sender<Result<(), RequestError>>) {
        let result = if self.up { Ok(()) } else { self.restart() };
        let _ = reply.send(result);
    }

    /// Leaves Raft as a crash would: every waiting request fails (a proposal's outcome
    /// becomes unknown), the snapshot being written settles, storage is closed.
    pub(super) fn leave_raft(&mut self) {
        self.up = false;
        self.fail_everything(RequestError::Stopped);
        self.settle_snapshot();
        // Closed like a crash would; coming back reopens it.
        self.storage = None;
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

    /// Takes the core, storage and state machine just recovered from disk, and goes
    /// back into Raft.
    pub(super) fn rejoin(&mut self, open: OpenNode) {
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
        // Back to the snapshot's state: the log replay re-applies what came after it.
        self.state_machine_reloaded();
        self.up = true;
    }
}
