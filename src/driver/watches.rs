//! Watches on the driver: registering them against the applied state, handing them
//! each applied entry's changes, and resyncing them when the state machine jumps (a
//! snapshot install, a restart). The hub itself is `src/watch/hub.rs`; it lives on
//! this thread so that history, state and registrations are seen in one order.

use tokio::sync::oneshot;

use super::{Driver, Transport};
use crate::watch::{Watch, WatchError, WatchRequest};

impl<T: Transport> Driver<T> {
    /// A client's watch: registered at once against this node's own applied state (no
    /// ReadIndex: a watch is as fresh as the node serving it, and any node serves it).
    pub(super) fn on_watch(
        &mut self,
        request: WatchRequest,
        reply: oneshot::Sender<Result<Watch, WatchError>>,
    ) {
        let registered = self.watches.register(request, &self.kv, self.applied);
        // A caller that gave up drops the watch here, which its sweep notices.
        let _ = reply.send(registered);
    }

    /// The state machine was replaced by the leader's snapshot at `self.applied`: its
    /// changes are recorded again, and the watchers resync.
    pub(super) fn snapshot_installed(&mut self) {
        self.kv.record_changes();
        self.watches.jumped(&self.kv, self.applied);
    }

    /// The state machine was reloaded from disk at `self.applied` (Admin.Start): its
    /// changes are recorded again, and the watch history restarts there.
    pub(super) fn state_machine_reloaded(&mut self) {
        self.kv.record_changes();
        self.watches.restarted(self.applied);
    }

    /// Hands the changes of the entry at `index`, just applied, to the watches.
    pub(super) fn watch_applied(&mut self, index: u64) {
        let changes = self.kv.take_changes();
        self.watches.applied(index, changes);
    }
}
