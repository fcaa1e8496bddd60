//! The record of a wipe (`DISTRAFT_RESET_LOGS`): the term and vote the node had when
//! its log and snapshots were deleted.
//!
//! A wipe keeps the term and vote, so that the node can never vote twice in a term, and
//! remembers the term it happened in, because until the node's log holds an entry of a
//! later term it must not vote at all (see `RawNode::may_vote`). The record lives in its
//! own small file beside the WAL, written before the WAL is deleted, so a crash at any
//! point of the wipe leaves it in force; a node that never was wiped has no such file.
//!
//! File `reset-term` (little-endian): magic `DRRESET1`, term u64, vote flag u8 (0 or 1),
//! vote u64, crc32c u32 of everything before it. A damaged file is an error, never
//! ignored: without it the node could vote with a wiped log.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::error::io_error;
use super::files::replace_file_durably;
use super::StorageError;
use crate::raft::{NodeId, Term};

const FILE_NAME: &str = "reset-term";
const MAGIC: &[u8; 8] = b"DRRESET1";
const LEN: usize = 8 + 8 + 1 + 8 + 4;

/// The term and vote a node had when its log was wiped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ResetRecord {
    pub term: Term,
    pub vote: Option<NodeId>,
}

fn path(log_dir: &Path) -> PathBuf {
    log_dir.join(FILE_NAME)
}

fn encode(record: &ResetRecord) -> Vec<u8> {
    let mut buf = Vec::with_capacity(LEN);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&record.term.to_le_bytes());
    buf.push(u8::from(record.vote.is_some()));
    buf.extend_from_slice(&record.vote.unwrap_or(0).to_le_bytes());
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

fn decode(buf: &[u8]) -> Result<ResetRecord, String> {
    let buf: &[u8; LEN] = buf
        .try_into()
        .map_err(|_| format!("{} bytes, expected {LEN}", buf.len()))?;
    let (body, crc) = buf.split_at(LEN - 4);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "short checksum")?);
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    if &body[..8] != MAGIC {
        return Err("not a reset record (bad magic)".into());
    }
    let u64_at = |at: usize| -> Result<u64, String> {
        body.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| "truncated".to_string())
    };
    let vote = match body.get(16) {
        Some(0) => None,
        Some(1) => Some(u64_at(17)?),
        _ => return Err("bad vote flag".into()),
    };
    Ok(ResetRecord {
        term: u64_at(8)?,
        vote,
    })
}

/// The record in `log_dir`, if the node was ever wiped.
pub(super) fn read(log_dir: &Path) -> Result<Option<ResetRecord>, StorageError> {
    let path = path(log_dir);
    match fs::read(&path) {
        Ok(buf) => decode(&buf)
            .map(Some)
            .map_err(|reason| StorageError::Corrupt {
                path,
                offset: 0,
                reason,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&path)(e)),
    }
}

/// Durably replaces the record (a crash leaves the old one or the new one).
pub(super) fn write(log_dir: &Path, record: &ResetRecord) -> Result<(), StorageError> {
    replace_file_durably(log_dir, FILE_NAME, &encode(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        for record in [
            ResetRecord {
                term: 7,
                vote: Some(3),
            },
            ResetRecord {
                term: 9,
                vote: None,
            },
        ] {
            write(dir.path(), &record).unwrap();
            assert_eq!(read(dir.path()).unwrap(), Some(record));
        }
        let mut bytes = fs::read(path(dir.path())).unwrap();
        bytes[9] ^= 1;
        fs::write(path(dir.path()), &bytes).unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(StorageError::Corrupt { .. })
        ));
        fs::write(path(dir.path()), &bytes[..10]).unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
