//! The backup file: one snapshot image of the state machine, with what a restore
//! needs to trust it and place it.
//!
//! ```text
//! header (64 bytes): magic "DRAFTBAK" | version u32 = 1 | cluster id u64 | index u64
//!                    | term u64 | created (unix ms) u64 | image length u64
//!                    | crc32c(image) u32 | reserved u32 = 0 | crc32c(previous 60 bytes) u32
//! image:             the snapshot image (`src/kv/image.rs`), image length bytes
//! ```
//!
//! Nothing follows the image: a file longer or shorter than the header says is
//! refused, so a truncated download can never pass for a smaller backup. The image's
//! checksum is in the header (a node sends the header before the image, and knows it
//! from its snapshot file), so a reader learns the total size first (a progress bar)
//! and checks the image as it streams by.

use std::io::{self, Read};

/// The header's size in bytes.
pub const HEADER_BYTES: usize = 64;
const MAGIC: &[u8; 8] = b"DRAFTBAK";
/// The format this build writes; it reads every version up to it.
pub const FORMAT_VERSION: u32 = 1;

/// What a backup's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupHeader {
    /// The cluster the backup was taken from.
    pub cluster_id: u64,
    /// The last entry whose effect the image holds: every write acknowledged before
    /// the backup began (a linearizable backup) is at or below it.
    pub index: u64,
    pub term: u64,
    pub created_unix_ms: u64,
    pub image_len: u64,
    pub image_crc: u32,
}

/// Why a backup file is refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a distraft backup (no DRAFTBAK header)")]
    NotABackup,
    #[error(
        "backup format version {0} is newer than this distraft reads (up to \
         {FORMAT_VERSION}): use a newer distraft"
    )]
    NewerFormat(u32),
    #[error("the backup's header is damaged (checksum mismatch)")]
    DamagedHeader,
    #[error("the backup is truncated: {missing} of its {expected} image bytes are missing")]
    Truncated { expected: u64, missing: u64 },
    #[error("the backup has bytes after its image: not a file this distraft wrote")]
    TrailingBytes,
    #[error("the backup's image is damaged (checksum mismatch)")]
    DamagedImage,
    #[error("the backup's image is malformed: {0}")]
    Malformed(String),
    #[error("reading the backup: {0}")]
    Io(#[from] io::Error),
}

impl BackupHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let numbers = [
            self.cluster_id,
            self.index,
            self.term,
            self.created_unix_ms,
            self.image_len,
        ];
        for (slot, number) in out[12..52].chunks_exact_mut(8).zip(numbers) {
            slot.copy_from_slice(&number.to_le_bytes());
        }
        out[52..56].copy_from_slice(&self.image_crc.to_le_bytes());
        // 56..60: reserved, zero.
        let crc = crc32c::crc32c(&out[..60]);
        out[60..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads and checks a header (not the image after it).
    pub fn read(input: &mut impl Read) -> Result<BackupHeader, BackupError> {
        let mut bytes = [0u8; HEADER_BYTES];
        let mut filled = 0;
        while filled < HEADER_BYTES {
            match input.read(&mut bytes[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        }
        if filled < MAGIC.len() || &bytes[..8] != MAGIC {
            return Err(BackupError::NotABackup);
        }
        if filled < HEADER_BYTES {
            return Err(BackupError::Truncated {
                expected: HEADER_BYTES as u64,
                missing: (HEADER_BYTES - filled) as u64,
            });
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        if crc32c::crc32c(&bytes[..60]) != u32_at(60) {
            return Err(BackupError::DamagedHeader);
        }
        let version = u32_at(8);
        if version == 0 || version > FORMAT_VERSION {
            return Err(BackupError::NewerFormat(version));
        }
        Ok(BackupHeader {
            cluster_id: u64_at(12),
            index: u64_at(20),
            term: u64_at(28),
            created_unix_ms: u64_at(36),
            image_len: u64_at(44),
            image_crc: u32_at(52),
        })
    }

    /// The whole file's size.
    pub fn file_len(&self) -> u64 {
        HEADER_BYTES as u64 + self.image_len
    }
}

/// Reads a backup's image, checking it against its header as it goes: at the end of
/// the image, a missing byte, a byte too many or a checksum mismatch is an error from
/// `read` (`InvalidData`, carrying the [`BackupError`]), never a clean end.
pub struct ImageReader<R> {
    input: R,
    header: BackupHeader,
    remaining: u64,
    crc: u32,
}

impl<R: Read> ImageReader<R> {
    pub fn new(input: R, header: BackupHeader) -> ImageReader<R> {
        ImageReader {
            input,
            header,
            remaining: header.image_len,
            crc: 0,
        }
    }

    fn fail(err: BackupError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }

    /// Checks what follows the image: nothing.
    fn check_end(&mut self) -> io::Result<()> {
        if self.crc != self.header.image_crc {
            return Err(Self::fail(BackupError::DamagedImage));
        }
        let mut extra = [0u8; 1];
        loop {
            match self.input.read(&mut extra) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(Self::fail(BackupError::TrailingBytes)),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }
}

impl<R: Read> Read for ImageReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            self.check_end()?;
            return Ok(0);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.input.read(&mut buf[..want])?;
        if n == 0 {
            return Err(Self::fail(BackupError::Truncated {
                expected: self.header.image_len,
                missing: self.remaining,
            }));
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// The [`BackupError`] an I/O error from [`ImageReader`] (or anything reading
/// through it) carries, or the I/O error itself.
pub fn backup_error(err: io::Error) -> BackupError {
    if err.get_ref().is_some_and(|inner| inner.is::<BackupError>()) {
        if let Some(inner) = err.into_inner() {
            if let Ok(err) = inner.downcast::<BackupError>() {
                return *err;
            }
        }
        return BackupError::Malformed("unreadable".into());
    }
    BackupError::Io(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> BackupHeader {
        BackupHeader {
            cluster_id: 0x1234,
            index: 42,
            term: 3,
            created_unix_ms: 1_700_000_000_000,
            image_len: 5,
            image_crc: crc32c::crc32c(b"hello"),
        }
    }

    fn file(header: &BackupHeader, image: &[u8]) -> Vec<u8> {
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(image);
        bytes
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<u8>, BackupError> {
        let mut input = bytes;
        let header = BackupHeader::read(&mut input)?;
        let mut image = Vec::new();
        ImageReader::new(input, header)
            .read_to_end(&mut image)
            .map_err(backup_error)?;
        Ok(image)
    }

    #[test]
    fn a_header_reads_back_and_the_image_is_checked() {
        let h = header();
        let bytes = file(&h, b"hello");
        assert_eq!(BackupHeader::read(&mut bytes.as_slice()).unwrap(), h);
        assert_eq!(read_all(&bytes).unwrap(), b"hello");
        assert_eq!(h.file_len(), bytes.len() as u64);
    }

    #[test]
    fn damage_truncation_and_extra_bytes_are_refused() {
        let h = header();
        let good = file(&h, b"hello");
        let mut flipped = good.clone();
        flipped[HEADER_BYTES + 1] ^= 1;
        assert!(matches!(read_all(&flipped), Err(BackupError::DamagedImage)));
        let mut header_flip = good.clone();
        header_flip[21] ^= 1;
        assert!(matches!(
            read_all(&header_flip),
            Err(BackupError::DamagedHeader)
        ));
        assert!(matches!(
            read_all(&good[..good.len() - 2]),
            Err(BackupError::Truncated { missing: 2, .. })
        ));
        assert!(matches!(
            read_all(&good[..30]),
            Err(BackupError::Truncated { .. })
        ));
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(read_all(&longer), Err(BackupError::TrailingBytes)));
        assert!(matches!(
            read_all(b"DRAFTSNP and more"),
            Err(BackupError::NotABackup)
        ));
        assert!(matches!(read_all(b""), Err(BackupError::NotABackup)));
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let mut bytes = header().encode();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..60]);
        bytes[60..].copy_from_slice(&crc.to_le_bytes());
        let err = BackupHeader::read(&mut bytes.as_slice()).unwrap_err();
        assert!(matches!(err, BackupError::NewerFormat(2)), "{err}");
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
