//! Backups and disaster recovery: the backup file format ([`format`]), a node
//! streaming one ([`stream`]), building a new cluster's data directory from one
//! ([`restore`]), and the leader's scheduled backups ([`schedule`]).
pub mod force;
pub mod format;
pub mod pace;
pub mod restore;
pub mod schedule;
pub mod stream;

/// What a node's backups share: the schedule's state (Admin.Status shows it) and the
/// pace every backup keeps.
#[derive(Debug, Default)]
pub struct Backups {
    pub schedule: schedule::ScheduleState,
    pub pace: pace::Pace,
}

impl Backups {
    pub fn new(config: &crate::config::Config) -> Backups {
        Backups {
            schedule: schedule::ScheduleState::default(),
            pace: pace::Pace::new(config.backup_rate),
        }
    }
}
