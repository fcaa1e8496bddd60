//! The NOSPACE alarm: a write to this node's disk failed for lack of space. Met by the
//! WAL, the node leaves Raft (as Admin.Stop does) and rejoins by itself once space is
//! back; met by a snapshot alone, it stays in Raft and only refuses writes. Either way
//! the driver polls for free space and clears the alarm (see docs/storage.md).

use std::time::Duration;

use rand::Rng;
use tracing::{error, info, warn};

use super::recovery::OpenNode;
use super::{Driver, DriverError, Transport};
use crate::raft::NodeId;
use crate::storage::StorageError;

/// How often a node with the NOSPACE alarm looks whether space is back.
pub(super) const SPACE_POLL: Duration = Duration::from_secs(1);
/// Space a node wants free, besides room for a few of the largest entries, before it
/// takes writes again: a WAL segment's zeros ahead several times over.
const RESUME_FREE_BYTES: u64 = 1 << 20;

/// The raised alarm.
pub(super) struct NoSpaceAlarm {
    /// The WAL was full: the node left Raft (as Admin.Stop does, as if crashed) and
    /// rejoins by itself once space is back. A full disk met by a snapshot alone
    /// keeps the node in Raft (only its own writes are refused).
    pub(super) left_raft: bool,
    /// The leader when the node left Raft, where linearizable reads go meanwhile.
    pub(super) leader: Option<NodeId>,
}

impl<T: Transport> Driver<T> {
    /// The WAL could not be written for lack of space. Going on is not possible (what
    /// is on disk past the last fsync is unknown until reopened), and neither is it
    /// necessary to exit: nothing acknowledged is lost, as no fsync failed. So the
    /// node leaves Raft exactly as Admin.Stop does (as if it crashed, which Raft always
    /// tolerates), raises the NOSPACE alarm, keeps serving reads and status, and
    /// rejoins from disk once space is back (`check_space`).
    pub(super) fn leave_raft_for_space(&mut self, err: &StorageError) {
        error!(
            "{err}: leaving Raft and refusing writes until space is freed (NOSPACE alarm); \
             reads and status are still served"
        );
        self.no_space = Some(NoSpaceAlarm {
            left_raft: true,
            leader: self.node.leader(),
        });
        // Proposals may still commit through the others: they become indeterminate.
        self.leave_raft();
    }

    /// Whether the node is out of Raft for lack of space (not stopped by the operator).
    pub(super) fn left_raft_for_space(&self) -> bool {
        !self.up && self.no_space.as_ref().is_some_and(|a| a.left_raft)
    }

    /// Where a node out of Raft sends a linearizable read: the leader it knew, else
    /// any other member in turn (a follower serves linearizable reads too, by
    /// ReadIndex), so that a retried read tries them all.
    pub(super) fn read_elsewhere(&mut self) -> Option<NodeId> {
        let me = self.config.id;
        if let Some(leader) = self.no_space.as_ref().and_then(|a| a.leader) {
            if leader != me {
                return Some(leader);
            }
        }
        let peers: Vec<NodeId> = self.node.membership().peers_of(me).collect();
        let turn = self.next_read_id as usize;
        self.next_read_id += 1;
        peers.get(turn.checked_rem(peers.len())?).copied()
    }

    /// Raises the NOSPACE alarm for a snapshot that found the disk full; the node stays
    /// in Raft, keeps its older snapshot and log, and tries again at the next threshold.
    pub(super) fn raise_snapshot_no_space(&mut self) {
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
}
