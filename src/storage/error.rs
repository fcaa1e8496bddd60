//! What can go wrong in storage, and the wrappers that attach to an I/O error the path
//! it happened on.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Damage that is not a torn tail: the node must not start on this data.
    #[error("corrupt storage: {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A write (never an fsync) failed for lack of space (ENOSPC): nothing was lost,
    /// as no fsync failed, but the storage is unusable until reopened once space is
    /// back (what is on disk past the last fsync is unknown until then).
    #[error("no space left on the device of {}: {source}", path.display())]
    NoSpace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A request that would break the log's invariants (a caller bug); nothing was
    /// written.
    #[error("invalid storage request: {0}")]
    Invalid(String),
    /// An earlier write or fsync failed, so what is on disk is unknown (after a failed
    /// fsync the kernel may have dropped the dirty pages): reopen to recover.
    #[error("storage is unusable after an earlier I/O failure; restart to recover")]
    Poisoned,
}

/// Wraps an I/O error with the path it happened on.
pub(super) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Wraps the error of a write (not of an fsync): a full disk is `NoSpace`.
pub(super) fn write_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| match source.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StorageError::NoSpace {
            path: path.to_path_buf(),
            source,
        },
        _ => StorageError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

impl StorageError {
    /// Whether this is a full disk (or a disk quota) rather than a broken one. For a
    /// snapshot file any step may say so, even its fsync: a failed snapshot is thrown
    /// away and a later one written anew, so no failed fsync is ever trusted.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            StorageError::NoSpace { .. } => true,
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            StorageError::Corrupt { .. } | StorageError::Invalid(_) | StorageError::Poisoned => {
                false
            }
        }
    }
}
