//! A node streaming a backup: the header, then the snapshot image read from disk in
//! chunks on a blocking thread, through a bounded channel (a slow reader holds at
//! most a few chunks in memory, never the state), at the node's backup pace.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::format::BackupHeader;
use super::pace::{fill, Pace};
use crate::driver::BackupSource;

/// Bytes per chunk: as a snapshot sent to a follower.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks read ahead of the reader.
const CHUNKS_AHEAD: usize = 4;

/// A backup on its way out: its header (size and index, for the answer's headers),
/// and the file's bytes in order, the header's first. An `Err` ends it: what came
/// before is not a backup.
pub struct BackupStream {
    pub header: BackupHeader,
    pub chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
}

/// The header of a backup of `source`, made now.
pub fn header_of(cluster_id: u64, source: &BackupSource) -> BackupHeader {
    BackupHeader {
        cluster_id,
        index: source.meta.index,
        term: source.meta.term,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        image_len: source.image_len,
        image_crc: source.image_crc,
    }
}

/// Streams `source` as a backup file of `cluster_id`, at `pace`.
pub fn stream(cluster_id: u64, source: BackupSource, pace: Pace) -> BackupStream {
    let header = header_of(cluster_id, &source);
    let (tx, chunks) = mpsc::channel(CHUNKS_AHEAD);
    let first = header.encode().to_vec();
    let mut image = source.image;
    tokio::task::spawn_blocking(move || {
        if tx.blocking_send(Ok(first)).is_err() {
            return;
        }
        loop {
            let mut buf = vec![0u8; CHUNK_BYTES];
            let filled = match fill(&mut image, &mut buf) {
                Ok(filled) => filled,
                Err(err) => {
                    let _ = tx.blocking_send(Err(err));
                    return;
                }
            };
            if filled == 0 {
                return;
            }
            buf.truncate(filled);
            pace.wait(filled);
            // The reader went away: nobody wants the rest.
            if tx.blocking_send(Ok(buf)).is_err() {
                return;
            }
        }
    });
    BackupStream { header, chunks }
}
