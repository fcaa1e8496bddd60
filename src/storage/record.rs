//! The write-ahead log's byte layout: segment headers and checksummed records.
//! `docs/storage.md` describes the same layout for humans; keep the two in step.

use bytes::Bytes;

use crate::raft::{Entry, EntryKind, HardState, Index, Term};

const SEGMENT_MAGIC: &[u8; 8] = b"DRAFTWAL";
const FORMAT_VERSION: u32 = 1;
/// magic (8) + version (4) + first index (8) + crc32c of the preceding 20 bytes (4).
pub(super) const SEGMENT_HEADER_LEN: usize = 24;
/// payload length (4) + crc32c of the payload (4) + crc32c of the preceding 8 bytes (4).
/// The header has its own checksum so that a damaged length can never pass for a torn
/// tail (a length pointing past the end of the file) and silently drop what follows.
pub(super) const RECORD_HEADER_LEN: usize = 12;

/// A batch written before entries had kinds (format 1): an entry with no data is the
/// no-op, any other a command. Still read, never written.
const KIND_BATCH_V1: u8 = 1;
const KIND_RESET: u8 = 2;
/// A batch whose entries carry their kind (`ENTRY_*`).
const KIND_BATCH: u8 = 3;
const HAS_HARD_STATE: u8 = 1;
const HARD_STATE_LEN: usize = 25;
/// index u64 | term u64 | data length u32 (format 1)
const ENTRY_HEADER_LEN_V1: usize = 20;
/// index u64 | term u64 | kind u8 | data length u32
const ENTRY_HEADER_LEN: usize = 21;
const ENTRY_NORMAL: u8 = 1;
const ENTRY_NOOP: u8 = 2;
const ENTRY_CONF_CHANGE: u8 = 3;

/// One decoded WAL record.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Record {
    /// Everything one `append` call recorded, as one checksummed unit so that a torn
    /// write loses the whole call or nothing of it. The entries replace any entry at
    /// their first index or after (conflict truncation is implicit).
    Batch {
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
    },
    /// Every entry is dropped; the log continues after a snapshot at (index, term).
    /// Written when that snapshot does not match the log (e.g. one received from the
    /// leader).
    Reset { index: Index, term: Term },
}

/// Why bytes could not be read as a record, and whether the damage looks like a write
/// cut short by a crash (nothing intact can follow it) rather than corruption.
#[derive(Debug)]
pub(super) struct Damage {
    pub reason: String,
    pub torn: bool,
}

pub(super) fn encode_segment_header(first_index: Index) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32c::crc32c(&header[..20]);
    header[20..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Decodes a segment header, returning the first index it names.
pub(super) fn decode_segment_header(buf: &[u8]) -> Result<Index, Damage> {
    let Some(header) = buf.get(..SEGMENT_HEADER_LEN) else {
        return Err(Damage {
            reason: format!(
                "segment header cut short ({} of {SEGMENT_HEADER_LEN} bytes)",
                buf.len()
            ),
            torn: true,
        });
    };
    if crc32c::crc32c(&header[..20]) != read_u32(header, 20) {
        return Err(Damage {
            reason: "segment header checksum mismatch".into(),
            torn: all_zero(buf),
        });
    }
    if &header[..8] != SEGMENT_MAGIC {
        return Err(Damage {
            reason: "not a distraft WAL segment (bad magic)".into(),
            torn: false,
        });
    }
    let version = read_u32(header, 8);
    if version != FORMAT_VERSION {
        return Err(Damage {
            reason: format!("unsupported WAL format version {version}"),
            torn: false,
        });
    }
    Ok(read_u64(header, 12))
}

/// Appends one batch record to `buf`. Fails, with the payload size, if the batch is
/// too large for one record (4 GiB); `buf` is then left as it was.
pub(super) fn encode_batch(
    buf: &mut Vec<u8>,
    hard_state: Option<&HardState>,
    entries: &[Entry],
) -> Result<(), usize> {
    let start = begin_frame(buf, KIND_BATCH);
    match hard_state {
        Some(hs) => {
            buf.push(HAS_HARD_STATE);
            buf.extend_from_slice(&hs.term.to_le_bytes());
            buf.push(u8::from(hs.vote.is_some()));
            buf.extend_from_slice(&hs.vote.unwrap_or(0).to_le_bytes());
            buf.extend_from_slice(&hs.commit.to_le_bytes());
        }
        None => buf.push(0),
    }
    for entry in entries {
        let Ok(len) = u32::try_from(entry.data.len()) else {
            let size = buf.len() - start + entry.data.len();
            buf.truncate(start);
            return Err(size);
        };
        buf.extend_from_slice(&entry.index.to_le_bytes());
        buf.extend_from_slice(&entry.term.to_le_bytes());
        buf.push(match entry.kind {
            EntryKind::Normal => ENTRY_NORMAL,
            EntryKind::Noop => ENTRY_NOOP,
            EntryKind::ConfChange => ENTRY_CONF_CHANGE,
        });
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&entry.data);
    }
    end_frame(buf, start)
}

pub(super) fn encode_reset(buf: &mut Vec<u8>, index: Index, term: Term) {
    let start = begin_frame(buf, KIND_RESET);
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(&term.to_le_bytes());
    // Seventeen bytes of payload always fit the length field.
    let _ = end_frame(buf, start);
}

/// Reserves the record header and writes the kind; the caller appends the body and
/// calls [`end_frame`] with the returned start.
fn begin_frame(buf: &mut Vec<u8>, kind: u8) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    buf.push(kind);
    start
}

/// Fills in `[len][payload crc][header crc]` for the record at `start`. If the payload
/// does not fit the u32 length field, removes the record and returns its size.
fn end_frame(buf: &mut Vec<u8>, start: usize) -> Result<(), usize> {
    let payload_len = buf.len() - start - RECORD_HEADER_LEN;
    let Ok(len) = u32::try_from(payload_len) else {
        buf.truncate(start);
        return Err(payload_len);
    };
    let payload_crc = crc32c::crc32c(&buf[start + RECORD_HEADER_LEN..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&buf[start..start + 8]);
    buf[start + 8..start + 12].copy_from_slice(&header_crc.to_le_bytes());
    Ok(())
}

/// Decodes the record at `offset` of a segment image. `Ok(None)` at the exact end of
/// the data; otherwise the record and the offset just past it.
pub(super) fn decode_record(buf: &[u8], offset: usize) -> Result<Option<(Record, usize)>, Damage> {
    let rest = &buf[offset..];
    // The end: nothing, or zeros written ahead of the records (a valid record header
    // is never zeros: its checksum of zeros is not zero).
    if rest.iter().take(RECORD_HEADER_LEN).all(|&b| b == 0) && all_zero(rest) {
        return Ok(None);
    }
    if rest.len() < RECORD_HEADER_LEN {
        return Err(Damage {
            reason: format!(
                "record header cut short ({} of {RECORD_HEADER_LEN} bytes)",
                rest.len()
            ),
            torn: true,
        });
    }
    if crc32c::crc32c(&rest[..8]) != read_u32(rest, 8) {
        // Unwritten blocks read back as zeros; anything else after the header means
        // data was written past this point, so this is not a cut-off write.
        return Err(Damage {
            reason: "record header checksum mismatch".into(),
            torn: all_zero(&rest[RECORD_HEADER_LEN..]),
        });
    }
    let len = read_u32(rest, 0) as usize;
    let Some(payload) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) else {
        return Err(Damage {
            reason: format!(
                "record of {len} bytes cut short ({} bytes present)",
                rest.len() - RECORD_HEADER_LEN
            ),
            torn: true,
        });
    };
    let end = offset + RECORD_HEADER_LEN + len;
    if crc32c::crc32c(payload) != read_u32(rest, 4) {
        return Err(Damage {
            reason: "record checksum mismatch".into(),
            torn: all_zero(&buf[end..]),
        });
    }
    // The checksum held, so a payload that does not parse is a format error, never a
    // torn write.
    let malformed = |what: &str| Damage {
        reason: format!("malformed {what} record"),
        torn: false,
    };
    let (&kind, body) = payload.split_first().ok_or_else(|| malformed("empty"))?;
    let record = match kind {
        KIND_BATCH => decode_batch(body, decode_entry).ok_or_else(|| malformed("batch"))?,
        KIND_BATCH_V1 => decode_batch(body, decode_entry_v1).ok_or_else(|| malformed("batch"))?,
        KIND_RESET if body.len() == 16 => Record::Reset {
            index: read_u64(body, 0),
            term: read_u64(body, 8),
        },
        KIND_RESET => return Err(malformed("reset")),
        other => {
            return Err(Damage {
                reason: format!("unknown record type {other}"),
                torn: false,
            })
        }
    };
    Ok(Some((record, end)))
}

/// Decodes the entry at the start of `bytes`, returning it and the bytes after it.
type EntryDecoder = fn(&[u8]) -> Option<(Entry, &[u8])>;

fn decode_entry(bytes: &[u8]) -> Option<(Entry, &[u8])> {
    let header = bytes.get(..ENTRY_HEADER_LEN)?;
    let kind = match header[16] {
        ENTRY_NORMAL => EntryKind::Normal,
        ENTRY_NOOP => EntryKind::Noop,
        ENTRY_CONF_CHANGE => EntryKind::ConfChange,
        _ => return None,
    };
    let len = read_u32(header, 17) as usize;
    let data = bytes.get(ENTRY_HEADER_LEN..ENTRY_HEADER_LEN.checked_add(len)?)?;
    let entry = Entry {
        index: read_u64(header, 0),
        term: read_u64(header, 8),
        kind,
        data: Bytes::copy_from_slice(data),
    };
    Some((entry, &bytes[ENTRY_HEADER_LEN + len..]))
}

fn decode_entry_v1(bytes: &[u8]) -> Option<(Entry, &[u8])> {
    let header = bytes.get(..ENTRY_HEADER_LEN_V1)?;
    let len = read_u32(header, 16) as usize;
    let data = bytes.get(ENTRY_HEADER_LEN_V1..ENTRY_HEADER_LEN_V1.checked_add(len)?)?;
    let (index, term) = (read_u64(header, 0), read_u64(header, 8));
    let entry = if data.is_empty() {
        Entry::noop(index, term)
    } else {
        Entry::normal(index, term, Bytes::copy_from_slice(data))
    };
    Some((entry, &bytes[ENTRY_HEADER_LEN_V1 + len..]))
}

fn decode_batch(body: &[u8], decode_entry: EntryDecoder) -> Option<Record> {
    let (&flags, mut rest) = body.split_first()?;
    let hard_state = match flags {
        0 => None,
        HAS_HARD_STATE => {
            let hs = rest.get(..HARD_STATE_LEN)?;
            rest = &rest[HARD_STATE_LEN..];
            Some(HardState {
                term: read_u64(hs, 0),
                vote: match hs[8] {
                    0 => None,
                    1 => Some(read_u64(hs, 9)),
                    _ => return None,
                },
                commit: read_u64(hs, 17),
            })
        }
        _ => return None,
    };
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let (entry, after) = decode_entry(rest)?;
        entries.push(entry);
        rest = after;
    }
    Some(Record::Batch {
        hard_state,
        entries,
    })
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Callers check the length first; the slice conversions cannot fail.
fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: Index, term: u64, data: &'static [u8]) -> Entry {
        Entry::normal(index, term, Bytes::from_static(data))
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        let conf = Entry {
            kind: EntryKind::ConfChange,
            ..entry(10, 4, b"conf")
        };
        let entries = vec![
            entry(7, 3, b"hello"),
            Entry::noop(8, 3),
            entry(9, 4, b""),
            conf,
        ];
        let hs = HardState {
            term: 3,
            vote: Some(0),
            commit: 6,
        };
        encode_batch(&mut buf, Some(&hs), &entries).unwrap();
        encode_batch(&mut buf, None, &entries[..1]).unwrap();
        encode_batch(&mut buf, Some(&HardState::default()), &[]).unwrap();
        encode_reset(&mut buf, 42, 5);
        let mut offset = 0;
        let mut records = Vec::new();
        while let Some((record, end)) = decode_record(&buf, offset).unwrap() {
            records.push(record);
            offset = end;
        }
        assert_eq!(
            records,
            vec![
                Record::Batch {
                    hard_state: Some(hs),
                    entries: entries.clone()
                },
                Record::Batch {
                    hard_state: None,
                    entries: entries[..1].to_vec()
                },
                Record::Batch {
                    hard_state: Some(HardState::default()),
                    entries: vec![]
                },
                Record::Reset { index: 42, term: 5 }
            ]
        );
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let header = encode_segment_header(1234);
        assert_eq!(decode_segment_header(&header).unwrap(), 1234);
        let mut bad = header;
        bad[13] ^= 1;
        assert!(!decode_segment_header(&bad).unwrap_err().torn);
        assert!(decode_segment_header(&header[..10]).unwrap_err().torn);
        assert!(
            decode_segment_header(&[0u8; SEGMENT_HEADER_LEN])
                .unwrap_err()
                .torn
        );
    }

    #[test]
    fn damaged_length_is_not_taken_for_a_torn_tail() {
        let mut buf = Vec::new();
        encode_batch(&mut buf, None, &[entry(1, 1, b"first")]).unwrap();
        encode_batch(&mut buf, None, &[entry(2, 1, b"second")]).unwrap();
        // A length pointing far past the end would look torn without the header crc.
        buf[3] = 0x7f;
        let damage = decode_record(&buf, 0).unwrap_err();
        assert!(!damage.torn, "{damage:?}");
    }

    #[test]
    fn cut_or_zeroed_tail_is_torn() {
        let mut buf = Vec::new();
        encode_batch(&mut buf, None, &[entry(1, 1, b"payload")]).unwrap();
        for cut in 1..buf.len() {
            assert!(
                decode_record(&buf[..cut], 0).unwrap_err().torn,
                "cut at {cut}"
            );
        }
        let mut zeroed = buf.clone();
        zeroed[RECORD_HEADER_LEN..].fill(0);
        zeroed.extend_from_slice(&[0u8; 100]);
        assert!(decode_record(&zeroed, 0).unwrap_err().torn);
    }
}
