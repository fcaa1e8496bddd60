//! Backups and disaster recovery: the backup file format ([`format`]), a node
//! streaming one ([`stream`]), building a new cluster's data directory from one
//! ([`restore`]).
pub mod format;
pub mod restore;
pub mod stream;
