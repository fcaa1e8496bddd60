//! The write-ahead log: its segments, the index of where each batch record lies, an
//! append (one record, one `fdatasync`) and reading entries back from disk.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::{io_error, write_error};
use super::files::sync_dir;
use super::record::{self, Record};
use super::{injected, DiskStep, Storage, StorageError};
use crate::plant::{self, Plant};
use crate::raft::{Entry, HardState, Index};

pub(super) const WAL_SUFFIX: &str = ".wal";

/// One WAL file; its name is the index the log's next entry had when it was created.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) first_index: Index,
    pub(super) path: PathBuf,
    /// Where its records end (the file may go on with zeros written ahead).
    pub(super) end: u64,
}

/// Where one batch record's entries lie: enough to read them back. The entries
/// `first..=last` of the record are live (a later record may have replaced the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RecordSpan {
    pub(super) first: Index,
    pub(super) last: Index,
    /// The `first_index` (name) of the segment holding the record.
    pub(super) segment: Index,
    /// The record's offset in that segment, and its length with the header.
    pub(super) offset: u64,
    pub(super) len: u64,
}

/// The records holding the log's live entries, in index order, without overlaps.
#[derive(Clone, Debug, Default)]
pub(super) struct RecordIndex {
    pub(super) spans: std::collections::VecDeque<RecordSpan>,
}

impl RecordIndex {
    /// A record holding entries `first..=last` was written: it replaces the entries from
    /// `first` on.
    pub(super) fn add(&mut self, span: RecordSpan) {
        while let Some(back) = self.spans.back_mut() {
            if back.first >= span.first {
                self.spans.pop_back();
            } else {
                back.last = back.last.min(span.first - 1);
                break;
            }
        }
        self.spans.push_back(span);
    }

    /// Entries up to `index` are compacted away.
    pub(super) fn compact(&mut self, index: Index) {
        while self.spans.front().is_some_and(|s| s.last <= index) {
            self.spans.pop_front();
        }
    }

    pub(super) fn clear(&mut self) {
        self.spans.clear();
    }

    /// The position of the span holding `index`, if any.
    pub(super) fn find(&self, index: Index) -> Option<usize> {
        let position = self.spans.partition_point(|s| s.last < index);
        self.spans
            .get(position)
            .filter(|s| s.first <= index)
            .map(|_| position)
    }
}

/// The active segment is filled with zeros this far ahead of its records, so that an
/// append overwrites zeros instead of growing the file. An fdatasync that must also
/// record a new file size costs a journal commit, and on a disk shared by several
/// nodes (or processes) their syncs queue for each other's commits: measured here,
/// three processes syncing 150-byte appends took about twice as long per sync as
/// when overwriting zeros. Recovery reads zeros after the last record as the end.
pub(super) const ZERO_AHEAD_BYTES: u64 = 256 * 1024;

impl Storage {
    /// Durably records one `Ready`: if `entries` starts at or before the last index,
    /// the log from there on is replaced; then the entries and the hard state. The call
    /// is one checksummed record, so a crash keeps all of it or none (the replacement
    /// is implicit in it, hence as crash-safe as the append). One write and one
    /// `fdatasync` cover the whole call: everything the driver gathered while the
    /// previous call ran shares it (group commit). Returns once durable.
    pub fn append(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        self.check_usable()?;
        if hard_state.is_none() && entries.is_empty() {
            return Ok(());
        }
        // Validate against a copy, so that nothing changes if the request is refused.
        let mut terms = self.terms.clone();
        if let Some(first) = entries.first() {
            if first.index <= terms.base() {
                return Err(StorageError::Invalid(format!(
                    "append at index {} which a snapshot already covers (up to {})",
                    first.index,
                    terms.base()
                )));
            }
        }
        for (n, entry) in entries.iter().enumerate() {
            if n > 0 && entry.index != entries[n - 1].index + 1 {
                return Err(StorageError::Invalid(format!(
                    "entries not contiguous: {} follows {}",
                    entry.index,
                    entries[n - 1].index
                )));
            }
            terms
                .append(entry.index, entry.term)
                .map_err(StorageError::Invalid)?;
        }
        self.buf.clear();
        record::encode_batch(&mut self.buf, hard_state, entries).map_err(|size| {
            StorageError::Invalid(format!("batch of {size} bytes is too large for one record"))
        })?;

        self.poison_on_error(|s| {
            if s.active_len >= s.segment_bytes {
                s.roll()?;
            }
            s.write_buf()
        })?;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            let len = self.buf.len() as u64;
            self.records.add(RecordSpan {
                first: first.index,
                last: last.index,
                segment: self.segments[self.segments.len() - 1].first_index,
                offset: self.active_len - len,
                len,
            });
        }
        self.terms = terms;
        if let Some(hs) = hard_state {
            self.hard_state = *hs;
        }
        Ok(())
    }

    /// Reads back the entries from `from` up to `to` (inclusive), stopping once they
    /// hold more than `max_bytes` (by [`Entry::size`]) but with at least one. Each
    /// record read is one bounded `pread` of its known length, checksum verified, and
    /// every entry is checked against the index and term the log has for it: anything
    /// else is [`StorageError::Corrupt`].
    pub fn read_entries(
        &self,
        from: Index,
        to: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.check_usable()?;
        if from <= self.terms.base() || to > self.terms.last() || from > to {
            return Err(StorageError::Invalid(format!(
                "read of entries {from}..={to} outside the log ({}..={})",
                self.terms.base() + 1,
                self.terms.last()
            )));
        }
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        let mut next = from;
        let mut position = self.records.find(from);
        while next <= to {
            let span = position
                .and_then(|p| self.records.spans.get(p))
                .filter(|s| s.first <= next && next <= s.last)
                .copied()
                .ok_or_else(|| {
                    StorageError::Invalid(format!("no WAL record is known to hold entry {next}"))
                })?;
            let segment = self
                .segments
                .iter()
                .find(|s| s.first_index == span.segment)
                .ok_or_else(|| {
                    StorageError::Invalid(format!(
                        "entry {next} is in segment {} which is gone",
                        span.segment
                    ))
                })?;
            let corrupt = |reason: String| StorageError::Corrupt {
                path: segment.path.clone(),
                offset: span.offset,
                reason,
            };
            for entry in read_batch(&segment.path, span.offset, span.len)? {
                if entry.index < next || entry.index > span.last.min(to) {
                    continue;
                }
                if entry.index != next || self.terms.term(next) != Some(entry.term) {
                    return Err(corrupt(format!(
                        "read back entry {}/{} where entry {next}/{:?} was expected",
                        entry.index,
                        entry.term,
                        self.terms.term(next)
                    )));
                }
                bytes += entry.size();
                if !out.is_empty() && bytes > max_bytes {
                    return Ok(out);
                }
                out.push(entry);
                next += 1;
            }
            if next <= span.last.min(to) {
                return Err(corrupt(format!("the record lacks entry {next}")));
            }
            position = position.map(|p| p + 1);
        }
        Ok(out)
    }

    /// Writes `buf` to the active segment and fdatasyncs it.
    pub(super) fn write_buf(&mut self) -> Result<(), StorageError> {
        let segment = self.segments.len() - 1;
        let path = &self.segments[segment].path;
        let end = self.active_len + self.buf.len() as u64;
        let fault = |step| injected(&self.disk_fault, step);
        if end > self.zeroed_to {
            // Zeros first, then the record over them; one fdatasync covers both. The
            // zeros allocate the blocks, so a full disk shows here, before the record.
            let zero_to = end.max(self.zeroed_to + ZERO_AHEAD_BYTES);
            fault(DiskStep::WalReserve)
                .and_then(|()| write_zeros(&self.active, self.zeroed_to, zero_to))
                .map_err(write_error(path))?;
            self.zeroed_to = zero_to;
        }
        fault(DiskStep::WalWrite)
            .and_then(|()| self.active.write_all_at(&self.buf, self.active_len))
            .map_err(write_error(path))?;
        // Never `NoSpace`: whatever an fsync failed with, it is not retried.
        let fsync_started = std::time::Instant::now();
        let synced = fault(DiskStep::WalSync).and_then(|()| self.active.sync_data());
        crate::metrics::metrics()
            .wal_fsync_seconds
            .observe(fsync_started.elapsed().as_secs_f64());
        if plant::active(Plant::FsyncErrorRecoverable) {
            synced.map_err(|source| StorageError::NoSpace {
                path: path.to_path_buf(),
                source,
            })?;
        } else {
            synced.map_err(io_error(path))?;
        }
        self.active_len = end;
        self.segments[segment].end = end;
        Ok(())
    }

    /// Starts a new segment named after the next index. Segment names must increase,
    /// so while the log has not grown past the active segment's start (a rewrite of
    /// its entries, or only hard-state records) the active segment keeps growing.
    pub(super) fn roll(&mut self) -> Result<(), StorageError> {
        let first_index = self.terms.last() + 1;
        if first_index <= self.segments[self.segments.len() - 1].first_index {
            return Ok(());
        }
        // The finished segment's zeros are not needed; if this is lost in a crash,
        // recovery reads them as its end all the same.
        let finished = &self.segments[self.segments.len() - 1];
        self.active
            .set_len(self.active_len)
            .map_err(io_error(&finished.path))?;
        let (segment, file) = create_segment(&self.log_dir, first_index, &self.hard_state)?;
        self.active_len = segment.end;
        self.zeroed_to = segment.end;
        self.segments.push(segment);
        self.active = file;
        Ok(())
    }
}

/// Reads the batch record of `len` bytes at `offset` of the segment at `path` and
/// returns its entries, its checksums verified.
pub(super) fn read_batch(path: &Path, offset: u64, len: u64) -> Result<Vec<Entry>, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let len = usize::try_from(len).map_err(|_| corrupt(format!("record of {len} bytes")))?;
    let file = File::open(path).map_err(io_error(path))?;
    let mut image = vec![0u8; len];
    file.read_exact_at(&mut image, offset)
        .map_err(io_error(path))?;
    match record::decode_record(&image, 0) {
        Ok(Some((Record::Batch { entries, .. }, end))) if end == len => Ok(entries),
        Ok(Some(_)) | Ok(None) => Err(corrupt(
            "the record there is not the batch that was written".into(),
        )),
        Err(damage) => Err(corrupt(damage.reason)),
    }
}

/// Writes zeros to `file` over `[from, to)`.
pub(super) fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Creates a segment starting with the current hard state (so that deleting older
/// segments never loses it) and makes it durable, directory entry included.
pub(super) fn create_segment(
    log_dir: &Path,
    first_index: Index,
    hard_state: &HardState,
) -> Result<(Segment, File), StorageError> {
    let path = log_dir.join(format!("{first_index:020}{WAL_SUFFIX}"));
    let mut image = record::encode_segment_header(first_index).to_vec();
    // A hard state alone is a few dozen bytes: it always fits a record.
    let _ = record::encode_batch(&mut image, Some(hard_state), &[]);
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_error(&path))?;
    file.write_all_at(&image, 0).map_err(write_error(&path))?;
    file.sync_data().map_err(io_error(&path))?;
    sync_dir(log_dir)?;
    let end = image.len() as u64;
    Ok((
        Segment {
            first_index,
            path,
            end,
        },
        file,
    ))
}
