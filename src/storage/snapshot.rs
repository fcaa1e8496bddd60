//! Snapshot files: `header | image | trailer`, written through a temp file that is
//! fsynced and then renamed into place, so a snapshot file either is whole or does not
//! exist under its final name.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::raft::{Index, Membership, SnapshotMeta};

use super::error::{io_error, write_error};
use super::files::sync_dir;
use super::{injected, DiskFault, DiskStep, SnapshotHook, StorageError};

const SNAPSHOT_MAGIC: &[u8; 8] = b"DRAFTSNP";
/// Format 2 added the learners to the header; format 1 is still read.
const FORMAT_VERSION: u32 = 2;
const FORMAT_VERSION_V1: u32 = 1;
/// Bytes before the voter list: magic, version, index, term, voter count.
const HEADER_FIXED_LEN: usize = 8 + 4 + 8 + 8 + 4;
/// image length (8) + crc32c of the image (4) + crc32c of the preceding 12 bytes (4).
const TRAILER_LEN: usize = 16;
/// Bounds each member list a header may claim, so a damaged count cannot make us
/// allocate wildly before the header checksum is checked.
const MAX_VOTERS: usize = 4096;
const READ_CHUNK: usize = 1 << 20;

pub(super) const SNAPSHOT_SUFFIX: &str = ".snap";
pub(super) const TEMP_SUFFIX: &str = ".tmp";

/// Final name of the snapshot at `index`.
pub(super) fn snapshot_path(dir: &Path, index: Index) -> PathBuf {
    dir.join(format!("{index:020}{SNAPSHOT_SUFFIX}"))
}

/// A complete, checksum-verified snapshot file.
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    pub meta: SnapshotMeta,
    pub path: PathBuf,
    data_offset: u64,
    data_len: u64,
    data_crc: u32,
}

impl SnapshotFile {
    /// Reader over the state-machine image. It verifies the image checksum as it
    /// reads: a mismatch (or a file cut short) surfaces as an `InvalidData` /
    /// `UnexpectedEof` error from `read` at the end of the image.
    pub fn open_data(&self) -> Result<impl Read + Send + 'static, StorageError> {
        let mut file = File::open(&self.path).map_err(io_error(&self.path))?;
        file.seek(SeekFrom::Start(self.data_offset))
            .map_err(io_error(&self.path))?;
        Ok(SnapshotReader {
            inner: BufReader::with_capacity(READ_CHUNK, file).take(self.data_len),
            remaining: self.data_len,
            crc: 0,
            expected_crc: self.data_crc,
            path: self.path.clone(),
        })
    }

    /// Size in bytes of the image.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The crc32c of the image (sent along with it to a follower).
    pub fn data_crc(&self) -> u32 {
        self.data_crc
    }

    /// Opens and fully verifies the snapshot file at `path` (header, trailer and image
    /// checksum), reading the image in bounded chunks.
    pub(super) fn load(path: &Path) -> Result<SnapshotFile, StorageError> {
        let corrupt = |offset: u64, reason: String| StorageError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        let file = File::open(path).map_err(io_error(path))?;
        let file_len = file.metadata().map_err(io_error(path))?.len();
        let mut reader = BufReader::with_capacity(READ_CHUNK, file);

        let mut fixed = [0u8; HEADER_FIXED_LEN];
        reader
            .read_exact(&mut fixed)
            .map_err(|e| corrupt(0, format!("snapshot header unreadable: {e}")))?;
        if &fixed[..8] != SNAPSHOT_MAGIC {
            return Err(corrupt(0, "not a distraft snapshot (bad magic)".into()));
        }
        let version = u32_at(&fixed, 8);
        if !(FORMAT_VERSION_V1..=FORMAT_VERSION).contains(&version) {
            return Err(corrupt(
                8,
                format!(
                    "unsupported snapshot format version {version} (this build reads \
                     {FORMAT_VERSION_V1} to {FORMAT_VERSION}): written by a newer distraft?"
                ),
            ));
        }
        // The member lists after the fixed part; the checksum covers all of it.
        let mut header = HeaderReader {
            reader: &mut reader,
            crc: crc32c::crc32c(&fixed),
            offset: HEADER_FIXED_LEN as u64,
            path,
        };
        let voters = header.ids(u32_at(&fixed, 28), "voter")?;
        // Format 1 had no learners.
        let learners = if version == FORMAT_VERSION_V1 {
            Vec::new()
        } else {
            let count = header.bytes(4)?;
            header.ids(u32_at(&count, 0), "learner")?
        };
        let crc = header.crc;
        let stored_crc = header.bytes(4)?;
        let offset = header.offset;
        if crc.to_le_bytes()[..] != stored_crc[..] {
            return Err(corrupt(0, "snapshot header checksum mismatch".into()));
        }
        let meta = SnapshotMeta {
            index: u64_at(&fixed, 12),
            term: u64_at(&fixed, 20),
            membership: Membership {
                voters: voters.into_iter().collect(),
                learners: learners.into_iter().collect(),
            },
        };
        let data_offset = offset;
        if path != snapshot_path(path.parent().unwrap_or(Path::new("")), meta.index) {
            return Err(corrupt(
                0,
                format!("file name does not match its index {}", meta.index),
            ));
        }

        let Some(data_len) = file_len.checked_sub(data_offset + TRAILER_LEN as u64) else {
            return Err(corrupt(
                file_len,
                "snapshot file cut short before its trailer".into(),
            ));
        };
        let mut image = (&mut reader).take(data_len);
        let mut crc = 0u32;
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let n = image.read(&mut chunk).map_err(io_error(path))?;
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &chunk[..n]);
        }
        let mut trailer = [0u8; TRAILER_LEN];
        let trailer_offset = data_offset + data_len;
        reader
            .read_exact(&mut trailer)
            .map_err(|e| corrupt(trailer_offset, format!("snapshot trailer unreadable: {e}")))?;
        if crc32c::crc32c(&trailer[..12]).to_le_bytes() != trailer[12..] {
            return Err(corrupt(
                trailer_offset,
                "snapshot trailer checksum mismatch".into(),
            ));
        }
        if u64_at(&trailer, 0) != data_len {
            return Err(corrupt(
                trailer_offset,
                format!(
                    "image is {data_len} bytes, trailer says {}",
                    u64_at(&trailer, 0)
                ),
            ));
        }
        let data_crc = u32_at(&trailer, 8);
        if crc != data_crc {
            return Err(corrupt(
                data_offset,
                "snapshot image checksum mismatch".into(),
            ));
        }
        Ok(SnapshotFile {
            meta,
            path: path.to_path_buf(),
            data_offset,
            data_len,
            data_crc,
        })
    }
}

/// Reads the variable part of a snapshot header, keeping its checksum and offset.
struct HeaderReader<'a, R> {
    reader: &'a mut R,
    crc: u32,
    offset: u64,
    path: &'a Path,
}

impl<R: Read> HeaderReader<'_, R> {
    fn bytes(&mut self, len: usize) -> Result<Vec<u8>, StorageError> {
        let mut bytes = vec![0u8; len];
        self.reader
            .read_exact(&mut bytes)
            .map_err(|e| StorageError::Corrupt {
                path: self.path.to_path_buf(),
                offset: self.offset,
                reason: format!("snapshot header unreadable: {e}"),
            })?;
        self.crc = crc32c::crc32c_append(self.crc, &bytes);
        self.offset += len as u64;
        Ok(bytes)
    }

    /// A list of `count` node ids (the count itself already read).
    fn ids(&mut self, count: u32, what: &str) -> Result<Vec<u64>, StorageError> {
        let count = count as usize;
        if count > MAX_VOTERS {
            return Err(StorageError::Corrupt {
                path: self.path.to_path_buf(),
                offset: self.offset,
                reason: format!("implausible {what} count {count}"),
            });
        }
        let bytes = self.bytes(count * 8)?;
        Ok(bytes.chunks_exact(8).map(|c| u64_at(c, 0)).collect())
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(word)
}

struct SnapshotReader {
    inner: io::Take<BufReader<File>>,
    remaining: u64,
    crc: u32,
    expected_crc: u32,
    path: PathBuf,
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            if self.remaining > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("snapshot {} is shorter than its image", self.path.display()),
                ));
            }
            if self.crc != self.expected_crc {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("snapshot {}: image checksum mismatch", self.path.display()),
                ));
            }
            return Ok(0);
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Streams a snapshot image to a temp file in the data directory; hand it to
/// [`super::Storage::finish_snapshot`] to make it durable. Dropped unfinished, it
/// deletes its temp file.
pub struct SnapshotWriter {
    meta: SnapshotMeta,
    out: BufWriter<File>,
    temp_path: PathBuf,
    crc: u32,
    len: u64,
    data_offset: u64,
    committed: bool,
    hook: Option<SnapshotHook>,
    fault: Option<DiskFault>,
}

impl SnapshotWriter {
    pub(super) fn create(
        dir: &Path,
        meta: SnapshotMeta,
        hook: Option<SnapshotHook>,
        fault: Option<DiskFault>,
    ) -> Result<SnapshotWriter, StorageError> {
        let members = &meta.membership;
        if members.voters.len() > MAX_VOTERS || members.learners.len() > MAX_VOTERS {
            return Err(StorageError::Invalid(format!(
                "snapshot with {} voters and {} learners (at most {MAX_VOTERS} each)",
                members.voters.len(),
                members.learners.len()
            )));
        }
        // Unique per writer, so that concurrent writers never share a temp file.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let temp_path = dir.join(format!(
            "{:020}.{}-{}{TEMP_SUFFIX}",
            meta.index,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(io_error(&temp_path))?;
        let header = encode_header(&meta);
        let mut writer = SnapshotWriter {
            meta,
            out: BufWriter::with_capacity(READ_CHUNK, file),
            temp_path,
            crc: 0,
            len: 0,
            data_offset: header.len() as u64,
            committed: false,
            hook,
            fault,
        };
        // On failure the writer is dropped, which removes the temp file.
        injected(&writer.fault, DiskStep::SnapshotWrite)
            .and_then(|()| writer.out.write_all(&header))
            .map_err(write_error(&writer.temp_path))?;
        Ok(writer)
    }

    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The length and crc32c of the image written so far.
    pub fn image_len_and_crc(&self) -> (u64, u32) {
        (self.len, self.crc)
    }

    /// Reads back the image written so far (flushed first), to check it before it is
    /// made durable and replaces anything.
    pub fn read_back(&mut self) -> Result<impl Read + Send + 'static, StorageError> {
        self.out.flush().map_err(io_error(&self.temp_path))?;
        let mut file = File::open(&self.temp_path).map_err(io_error(&self.temp_path))?;
        file.seek(SeekFrom::Start(self.data_offset))
            .map_err(io_error(&self.temp_path))?;
        Ok(BufReader::with_capacity(READ_CHUNK, file).take(self.len))
    }

    /// Writes the trailer, fsyncs and renames the file to its final name. The caller
    /// fsyncs the directory.
    pub(super) fn commit(mut self, dir: &Path) -> Result<SnapshotFile, StorageError> {
        if let Some(SnapshotHook(hook)) = &self.hook {
            hook(&self.meta).map_err(io_error(&self.temp_path))?;
        }
        let mut trailer = [0u8; TRAILER_LEN];
        trailer[..8].copy_from_slice(&self.len.to_le_bytes());
        trailer[8..12].copy_from_slice(&self.crc.to_le_bytes());
        let trailer_crc = crc32c::crc32c(&trailer[..12]);
        trailer[12..].copy_from_slice(&trailer_crc.to_le_bytes());
        // Writes: a full disk is `NoSpace` (the driver's alarm), not a broken one.
        injected(&self.fault, DiskStep::SnapshotWrite)
            .and_then(|()| self.out.write_all(&trailer))
            .and_then(|()| self.out.flush())
            .map_err(write_error(&self.temp_path))?;
        injected(&self.fault, DiskStep::SnapshotSync)
            .and_then(|()| self.out.get_ref().sync_data())
            .map_err(io_error(&self.temp_path))?;
        let path = snapshot_path(dir, self.meta.index);
        fs::rename(&self.temp_path, &path).map_err(io_error(&path))?;
        self.committed = true;
        Ok(SnapshotFile {
            meta: self.meta.clone(),
            path,
            data_offset: self.data_offset,
            data_len: self.len,
            data_crc: self.crc,
        })
    }
}

/// A snapshot of this node's own state to write off the driver thread (from
/// [`super::Storage::snapshot_job`]). It only creates, writes and renames its own file,
/// so it runs concurrently with the storage's appends; the log is compacted later, by
/// [`super::Storage::adopt_snapshot`], once the file is durable.
pub struct SnapshotJob {
    pub(super) data_dir: PathBuf,
    pub(super) meta: SnapshotMeta,
    pub(super) hook: Option<SnapshotHook>,
    pub(super) fault: Option<DiskFault>,
}

impl SnapshotJob {
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Writes the snapshot file, its image streamed by `image`, and makes it durable:
    /// fsync, rename into place, fsync of the directory. On failure the temp file is
    /// removed (or, after a crash, swept at open); the log is untouched either way.
    pub fn write(
        self,
        image: impl FnOnce(&mut SnapshotWriter) -> io::Result<()>,
    ) -> Result<SnapshotFile, StorageError> {
        let mut writer = SnapshotWriter::create(&self.data_dir, self.meta, self.hook, self.fault)?;
        image(&mut writer).map_err(write_error(&writer.temp_path))?;
        let file = writer.commit(&self.data_dir)?;
        sync_dir(&self.data_dir)?;
        Ok(file)
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        injected(&self.fault, DiskStep::SnapshotWrite)?;
        let n = self.out.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        // Unfinished or failed: the temp file is garbage (the data dir is also swept
        // of temp files at open, in case we never get here).
        if !self.committed {
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

fn encode_header(meta: &SnapshotMeta) -> Vec<u8> {
    let Membership { voters, learners } = &meta.membership;
    let ids = voters.len() + learners.len();
    let mut header = Vec::with_capacity(HEADER_FIXED_LEN + ids * 8 + 8);
    header.extend_from_slice(SNAPSHOT_MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&meta.index.to_le_bytes());
    header.extend_from_slice(&meta.term.to_le_bytes());
    // At most MAX_VOTERS each (checked by `create`): the counts fit.
    header.extend_from_slice(&(voters.len() as u32).to_le_bytes());
    for voter in voters {
        header.extend_from_slice(&voter.to_le_bytes());
    }
    header.extend_from_slice(&(learners.len() as u32).to_le_bytes());
    for learner in learners {
        header.extend_from_slice(&learner.to_le_bytes());
    }
    let crc = crc32c::crc32c(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    header
}
