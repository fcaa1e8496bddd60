//! Where the driver's background work runs: the seam between a node, which gives each
//! job a thread, and the simulator, which runs jobs when its seed says.

use std::thread::JoinHandle;

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
