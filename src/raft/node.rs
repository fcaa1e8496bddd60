//! The Raft state machine. (Being written: signatures are final.)
use bytes::Bytes;

use super::types::*;

/// What a node reports about itself (for `GET /` and Admin.Status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub vote: Option<NodeId>,
    pub leader: Option<NodeId>,
    pub commit: Index,
    pub applied: Index,
    pub last_index: Index,
    pub last_term: Term,
    pub snapshot_index: Index,
    /// Leader only: `(peer, match_index, next_index)` for every other voter.
    pub progress: Vec<(NodeId, Index, Index)>,
}

/// One Raft node's consensus state. See the module documentation for the contract.
pub struct RawNode {
    _config: Config,
}

impl RawNode {
    /// Creates a node from what storage recovered; `seed` drives its randomness.
    pub fn new(config: Config, restored: Restored, seed: u64) -> RawNode {
        let _ = (restored, seed);
        RawNode { _config: config }
    }
    pub fn tick(&mut self) {
        todo!()
    }
    pub fn step(&mut self, msg: Message) {
        let _ = msg;
        todo!()
    }
    pub fn propose(&mut self, data: Bytes) -> Result<Index, RaftError> {
        let _ = data;
        todo!()
    }
    pub fn read_index(&mut self, id: ReadId) {
        let _ = id;
        todo!()
    }
    /// Whether `ready()` would return work.
    pub fn has_ready(&self) -> bool {
        todo!()
    }
    pub fn ready(&mut self) -> Ready {
        todo!()
    }
    /// The last `Ready` was persisted (and its messages sent).
    pub fn advance(&mut self) {
        todo!()
    }
    /// The state machine has a snapshot at `index` (≤ the last applied index): drop
    /// the log up to it.
    pub fn compact(&mut self, index: Index) {
        let _ = index;
        todo!()
    }
    /// The snapshot the log starts after (index 0 when none).
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        todo!()
    }
    pub fn id(&self) -> NodeId {
        todo!()
    }
    pub fn term(&self) -> Term {
        todo!()
    }
    pub fn role(&self) -> Role {
        todo!()
    }
    pub fn leader(&self) -> Option<NodeId> {
        todo!()
    }
    pub fn status(&self) -> Status {
        todo!()
    }
}
