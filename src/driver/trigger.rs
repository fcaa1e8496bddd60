//! When the driver takes a snapshot of its state machine: by bytes of log as well as
//! by entries, with the write amplification bounded.
//!
//! A snapshot rewrites the whole state, so taking one every N entries whatever their
//! size either lets the log (and memory, and a restart's replay) grow without bound
//! under large values, or rewrites a large state over and over under small ones. The
//! rule here: a snapshot is due when the log since the last one holds at least
//! `ratio` times the state's size as of the last snapshot (so snapshots write at most
//! 1/ratio byte per byte of log whatever the state's size, 1 + 1/ratio while the state
//! grows) and either `entries` entries or `log_bytes` bytes; or, whatever the ratio,
//! once it holds `max_log_bytes`.

use crate::config::Config;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct SnapshotTrigger {
    /// DISTRAFT_SNAPSHOT_THRESHOLD.
    pub entries: u64,
    /// DISTRAFT_SNAPSHOT_LOG_BYTES.
    pub log_bytes: u64,
    /// DISTRAFT_SNAPSHOT_LOG_RATIO.
    pub ratio: f64,
    /// DISTRAFT_SNAPSHOT_LOG_MAX_BYTES.
    pub max_log_bytes: u64,
}

/// What the log and the state hold since the last snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SinceSnapshot {
    /// Entries applied since the last snapshot.
    pub entries: u64,
    /// Their bytes (payload and header, as [`crate::raft::Entry::size`]).
    pub log_bytes: u64,
    /// The size of the last snapshot's image: the state as of then.
    pub state_bytes: u64,
}

impl SnapshotTrigger {
    pub fn from_config(config: &Config) -> SnapshotTrigger {
        SnapshotTrigger {
            entries: config.snapshot_threshold,
            log_bytes: config.snapshot_log_bytes,
            ratio: config.snapshot_log_ratio,
            max_log_bytes: config.snapshot_log_max_bytes,
        }
    }

    pub fn is_due(&self, since: &SinceSnapshot) -> bool {
        if since.entries == 0 {
            return false;
        }
        if since.log_bytes >= self.max_log_bytes {
            return true;
        }
        let amplification_bound = since.log_bytes as f64 >= self.ratio * since.state_bytes as f64;
        amplification_bound && (since.entries >= self.entries || since.log_bytes >= self.log_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn trigger() -> SnapshotTrigger {
        SnapshotTrigger {
            entries: 10_000,
            log_bytes: 64 * MIB,
            ratio: 1.0,
            max_log_bytes: 1024 * MIB,
        }
    }

    fn since(entries: u64, log_bytes: u64, state_bytes: u64) -> SinceSnapshot {
        SinceSnapshot {
            entries,
            log_bytes,
            state_bytes,
        }
    }

    #[test]
    fn small_entries_on_a_small_state_snapshot_by_count() {
        let t = trigger();
        assert!(!t.is_due(&since(9_999, 500_000, 100_000)));
        assert!(t.is_due(&since(10_000, 500_000, 100_000)));
    }

    #[test]
    fn large_entries_snapshot_by_bytes_long_before_the_count() {
        let t = trigger();
        // 1 MiB values over a 16 MiB state: every 64 MiB of log.
        assert!(!t.is_due(&since(63, 63 * MIB, 16 * MIB)));
        assert!(t.is_due(&since(64, 64 * MIB, 16 * MIB)));
    }

    #[test]
    fn a_large_state_is_not_rewritten_more_often_than_the_ratio_allows() {
        let t = trigger();
        // 200 MiB of state: 10,000 small entries are not enough, nor are 64 MiB ...
        assert!(!t.is_due(&since(10_000, MIB, 200 * MIB)));
        assert!(!t.is_due(&since(100_000, 64 * MIB, 200 * MIB)));
        // ... only as many log bytes as the state holds.
        assert!(t.is_due(&since(100_000, 200 * MIB, 200 * MIB)));
        let half = SnapshotTrigger { ratio: 0.5, ..t };
        assert!(half.is_due(&since(100_000, 100 * MIB, 200 * MIB)));
    }

    #[test]
    fn the_byte_ceiling_wins_over_the_ratio() {
        let t = trigger();
        assert!(!t.is_due(&since(5, 1023 * MIB, 4096 * MIB)));
        assert!(t.is_due(&since(5, 1024 * MIB, 4096 * MIB)));
    }

    #[test]
    fn nothing_applied_means_nothing_to_snapshot() {
        assert!(!trigger().is_due(&since(0, 0, 0)));
    }
}
