//! One process per data directory: an advisory lock (`flock`) on a file in each
//! directory a node uses, held for the life of the process.
//!
//! Two processes writing one WAL interleave their records, and the result is a log
//! that refuses to open (or worse, one that opens with entries neither wrote): the
//! lock makes the second process stop before it reads or writes anything. `flock` is
//! released by the kernel when the process dies, however it dies, so a `kill -9` never
//! leaves a stale lock behind; the PID in the file is only there to tell the operator
//! who holds it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use fs4::{FileExt, TryLockError};

/// The lock file's name, in each directory.
pub const LOCK_FILE: &str = "distraft.lock";

/// How much of a lock file is read to find the holder's PID: a PID and a newline.
const MAX_PID_TEXT: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{} is in use by another distraft process (PID {holder}): only one node may use \
         a data directory at a time",
        dir.display()
    )]
    InUse { dir: PathBuf, holder: String },
    #[error(transparent)]
    CreateDir(#[from] super::StorageError),
    #[error("locking {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The locks of a node's directories; released when dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    /// Kept open: closing a file releases its lock.
    _files: Vec<File>,
}

impl DirLock {
    /// Locks every directory in `dirs` (created if missing; one named twice, or by two
    /// spellings, is locked once) and writes this process's PID into each lock file.
    /// Fails at once, naming the directory and the holder's PID, if another process
    /// holds one of them.
    pub fn acquire(dirs: &[&Path]) -> Result<DirLock, LockError> {
        let mut locked: Vec<PathBuf> = Vec::new();
        let mut files = Vec::new();
        for dir in dirs {
            super::files::create_dir_durably(dir)?;
            let canonical = dir.canonicalize().map_err(|source| LockError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            if locked.contains(&canonical) {
                continue;
            }
            files.push(lock_dir(dir)?);
            locked.push(canonical);
        }
        Ok(DirLock { _files: files })
    }
}

fn lock_dir(dir: &Path) -> Result<File, LockError> {
    let path = dir.join(LOCK_FILE);
    let io_error = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    // Not truncated on open: the holder's PID must still be there to report.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error)?;
    // Fully qualified: the standard library's own `File::try_lock` is newer than the
    // oldest Rust this crate supports.
    match FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(LockError::InUse {
                dir: dir.to_path_buf(),
                holder: read_holder(&mut file),
            })
        }
        Err(TryLockError::Error(source)) => return Err(io_error(source)),
    }
    // Ours now: say who holds it. Not fsynced, as the lock itself does not outlive
    // the process; the PID is advice for the operator.
    file.set_len(0).map_err(io_error)?;
    file.rewind().map_err(io_error)?;
    writeln!(file, "{}", std::process::id()).map_err(io_error)?;
    Ok(file)
}

/// The PID the holder wrote, as text; "unknown" if it is not (yet) a number.
fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let read = file.take(MAX_PID_TEXT).read_to_string(&mut text);
    match read.ok().and_then(|_| text.trim().parse::<u32>().ok()) {
        Some(pid) => pid.to_string(),
        None => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_directory_is_refused_with_the_holders_pid() {
        let root = tempfile::tempdir().unwrap();
        let log = root.path().join("log/node1");
        let data = root.path().join("data/node1");
        let first = DirLock::acquire(&[&log, &data]).unwrap();
        // flock locks belong to the open file, so a second open in this process
        // conflicts just as another process would.
        for dir in [&log, &data] {
            match DirLock::acquire(&[dir]) {
                Err(LockError::InUse { dir: named, holder }) => {
                    assert_eq!(&named, dir);
                    assert_eq!(holder, std::process::id().to_string());
                }
                other => panic!("expected InUse, got {other:?}"),
            }
        }
        drop(first);
        DirLock::acquire(&[&log, &data]).unwrap();
    }

    #[test]
    fn one_directory_named_twice_is_locked_once() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("node1");
        let same = root.path().join("./node1");
        let lock = DirLock::acquire(&[&dir, &same]).unwrap();
        assert_eq!(lock._files.len(), 1);
    }
}
