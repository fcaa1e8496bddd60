//! Reading the WAL back at open: every segment's records replayed in order, a torn
//! tail of the last write found and cut off, any other damage refused.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use tracing::warn;

use super::error::io_error;
use super::files::{list_numbered, sync_dir};
use super::record::{self, Record};
use super::terms::LogTerms;
use super::wal::{RecordIndex, RecordSpan, Segment, WAL_SUFFIX};
use super::StorageError;
use crate::raft::{Entry, HardState};

/// The state of the WAL as read back.
pub(super) struct Replay {
    /// Every segment that holds a valid header, oldest first.
    pub(super) segments: Vec<Segment>,
    pub(super) terms: LogTerms,
    pub(super) records: RecordIndex,
    /// The entries `(terms.base(), terms.last()]`.
    pub(super) entries: Vec<Entry>,
    pub(super) hard_state: HardState,
    pub(super) torn: Option<TornTail>,
}

/// A crash cut the last write short.
pub(super) struct TornTail {
    pub(super) path: PathBuf,
    /// Bytes of the segment that are intact.
    pub(super) valid_len: u64,
    pub(super) reason: String,
}

pub(super) fn replay_wal(log_dir: &Path) -> Result<Replay, StorageError> {
    let files = list_numbered(log_dir, WAL_SUFFIX)?;
    let mut replay = Replay {
        segments: Vec::new(),
        terms: LogTerms::new(
            files
                .first()
                .map_or(0, |(first, _)| first.saturating_sub(1)),
        ),
        records: RecordIndex::default(),
        entries: Vec::new(),
        hard_state: HardState::default(),
        torn: None,
    };
    for (n, (first_index, path)) in files.iter().enumerate() {
        let is_last = n + 1 == files.len();
        let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason,
        };
        if is_last {
            // Only the last segment can hold writes never fsynced (a process that died,
            // or a full disk, between a write and its fsync): make them durable before
            // trusting what the page cache gives back. Earlier segments were fsynced
            // before the next one was created.
            File::open(path)
                .and_then(|file| file.sync_all())
                .map_err(io_error(path))?;
        }
        let image = fs::read(path).map_err(io_error(path))?;
        match record::decode_segment_header(&image) {
            Ok(named) if named == *first_index => {}
            Ok(named) => {
                return Err(corrupt(0, format!("segment header names index {named}")));
            }
            Err(damage) if is_last && damage.torn => {
                replay.torn = Some(TornTail {
                    path: path.clone(),
                    valid_len: 0,
                    reason: damage.reason,
                });
                break;
            }
            Err(damage) => return Err(corrupt(0, damage.reason)),
        }
        if n > 0 && *first_index != replay.terms.last() + 1 {
            return Err(corrupt(
                0,
                format!(
                    "segment starts at index {first_index} but the log before it ends at {}: \
                     a segment is missing",
                    replay.terms.last()
                ),
            ));
        }
        let mut offset = record::SEGMENT_HEADER_LEN;
        loop {
            match record::decode_record(&image, offset) {
                Ok(None) => break,
                Ok(Some((record, end))) => {
                    let span = RecordSpan {
                        first: 0,
                        last: 0,
                        segment: *first_index,
                        offset: offset as u64,
                        len: (end - offset) as u64,
                    };
                    apply_record(&mut replay, record, span)
                        .map_err(|reason| corrupt(offset, reason))?;
                    offset = end;
                }
                Err(damage) if is_last && damage.torn => {
                    replay.torn = Some(TornTail {
                        path: path.clone(),
                        valid_len: offset as u64,
                        reason: damage.reason,
                    });
                    break;
                }
                Err(damage) => return Err(corrupt(offset, damage.reason)),
            }
        }
        // Every segment starts with a hard-state record, written with its header.
        if offset == record::SEGMENT_HEADER_LEN && replay.torn.is_none() {
            let reason = "segment holds no record".to_string();
            if !is_last {
                return Err(corrupt(offset, reason));
            }
            replay.torn = Some(TornTail {
                path: path.clone(),
                valid_len: offset as u64,
                reason,
            });
        }
        replay.segments.push(Segment {
            first_index: *first_index,
            path: path.clone(),
            end: offset as u64,
        });
    }
    Ok(replay)
}

/// Replays one record; `span` says where it lies (its entries' range is filled in).
pub(super) fn apply_record(
    replay: &mut Replay,
    record: Record,
    span: RecordSpan,
) -> Result<(), String> {
    match record {
        Record::Batch {
            hard_state,
            entries,
        } => {
            if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
                replay.records.add(RecordSpan {
                    first: first.index,
                    last: last.index,
                    ..span
                });
            }
            for entry in entries {
                replay.terms.append(entry.index, entry.term)?;
                let kept = entry.index - 1 - replay.terms.base();
                replay.entries.truncate(kept as usize);
                replay.entries.push(entry);
            }
            if let Some(hs) = hard_state {
                replay.hard_state = hs;
            }
        }
        Record::Reset { index, term } => {
            replay.terms.reset(index, term);
            replay.records.clear();
            replay.entries.clear();
        }
    }
    Ok(())
}

/// Cuts a torn tail off. A segment left without its first record (the hard state)
/// was being created by a roll that never completed: it is removed, so that every
/// segment keeps starting with the hard state.
pub(super) fn repair_torn_tail(log_dir: &Path, replay: &mut Replay) -> Result<(), StorageError> {
    let Some(torn) = replay.torn.take() else {
        return Ok(());
    };
    if torn.valid_len <= record::SEGMENT_HEADER_LEN as u64 {
        warn!(
            segment = %torn.path.display(),
            reason = %torn.reason,
            "WAL segment was being created when the node stopped: removing it"
        );
        if replay.segments.last().is_some_and(|s| s.path == torn.path) {
            replay.segments.pop();
        }
        fs::remove_file(&torn.path).map_err(io_error(&torn.path))?;
        sync_dir(log_dir)?;
    } else {
        warn!(
            segment = %torn.path.display(),
            offset = torn.valid_len,
            reason = %torn.reason,
            "WAL ends in a torn write (a crash during an append that was never \
             acknowledged): cutting it off"
        );
        let file = File::options()
            .write(true)
            .open(&torn.path)
            .map_err(io_error(&torn.path))?;
        file.set_len(torn.valid_len).map_err(io_error(&torn.path))?;
        file.sync_all().map_err(io_error(&torn.path))?;
        if let Some(last) = replay.segments.last_mut().filter(|s| s.path == torn.path) {
            last.end = torn.valid_len;
        }
    }
    Ok(())
}
