//! Backups and disaster recovery: the backup file format ([`format`]), a node
//! streaming one ([`stream`]), building a new cluster's data directory from one
//! ([`restore`]), and the leader's scheduled backups ([`schedule`]).
pub mod force;
pub mod format;
pub mod restore;
pub mod schedule;
pub mod stream;
