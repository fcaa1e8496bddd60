//! The pace of backups: every backup a node streams or writes (`Admin.Backup`,
//! `GET /v1/backup`, the schedule) shares one rate, DISTRAFT_BACKUP_RATE, so that a
//! backup, however fast its reader, leaves the machine to the writes it serves. On a
//! busy node a backup takes CPU and disk in proportion to its speed: measured at 1 GiB,
//! backups back to back at full speed cost 65–70 % of the writes' throughput
//! (docs/performance.md).

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One rate shared by every backup of this node; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Pace(Option<Arc<Shared>>);

#[derive(Debug)]
struct Shared {
    bytes_per_sec: u64,
    /// When the bytes reserved so far have all gone at the rate.
    next: Mutex<Option<Instant>>,
}

impl Pace {
    /// At most `bytes_per_sec` for all backups together; `None` or 0: as fast as the
    /// readers take them.
    pub fn new(bytes_per_sec: Option<u64>) -> Pace {
        Pace(bytes_per_sec.filter(|rate| *rate > 0).map(|bytes_per_sec| {
            Arc::new(Shared {
                bytes_per_sec,
                next: Mutex::new(None),
            })
        }))
    }

    /// Reserves the time `bytes` take at the rate, after what was reserved before:
    /// how long to wait, from `now`, before sending them.
    fn reserve(&self, bytes: usize, now: Instant) -> Duration {
        let Some(shared) = &self.0 else {
            return Duration::ZERO;
        };
        if crate::plant::active(crate::plant::Plant::BackupIgnoresPace) {
            return Duration::ZERO;
        }
        let mut next = shared.next.lock().unwrap_or_else(PoisonError::into_inner);
        let start = next.map_or(now, |next| next.max(now));
        let nanos = (bytes as u128 * 1_000_000_000) / u128::from(shared.bytes_per_sec);
        let takes = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        *next = Some(start + takes);
        start - now
    }

    /// Blocks this thread (a blocking one, never the runtime's) until `bytes` may go.
    pub fn wait(&self, bytes: usize) {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// Copies `input` into `out` at the pace, in chunks of `chunk` bytes; the bytes
    /// copied.
    pub fn copy(
        &self,
        input: &mut impl Read,
        out: &mut impl Write,
        chunk: usize,
    ) -> io::Result<u64> {
        let mut buf = vec![0u8; chunk];
        let mut copied = 0u64;
        loop {
            let filled = fill(input, &mut buf)?;
            if filled == 0 {
                return Ok(copied);
            }
            self.wait(filled);
            out.write_all(buf.get(..filled).unwrap_or_default())?;
            copied += filled as u64;
        }
    }
}

/// Reads until `buf` is full or the input ends (the snapshot reader's final read
/// checks the checksum, so the end is read too).
pub fn fill(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(buf.get_mut(filled..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn unlimited_never_waits() {
        let pace = Pace::new(None);
        assert_eq!(pace.reserve(100 * MIB, Instant::now()), Duration::ZERO);
        assert_eq!(
            Pace::new(Some(0)).reserve(MIB, Instant::now()),
            Duration::ZERO
        );
    }

    #[test]
    fn backups_at_once_share_the_rate() {
        let pace = Pace::new(Some(10 * MIB as u64));
        let other = pace.clone();
        let t0 = Instant::now();
        // The first chunk goes at once; each after it waits for those before.
        assert_eq!(pace.reserve(MIB, t0), Duration::ZERO);
        assert_eq!(other.reserve(MIB, t0), Duration::from_millis(100));
        assert_eq!(pace.reserve(MIB, t0), Duration::from_millis(200));
        // Time that passed with nothing sent is not saved up for a burst.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(pace.reserve(MIB, later), Duration::ZERO);
        assert_eq!(pace.reserve(MIB / 2, later), Duration::from_millis(100));
    }

    #[test]
    fn copy_copies_everything() {
        let data: Vec<u8> = (0..3 * MIB + 7).map(|n| n as u8).collect();
        let mut out = Vec::new();
        let copied = Pace::new(Some(1 << 40))
            .copy(&mut data.as_slice(), &mut out, MIB)
            .unwrap();
        assert_eq!(copied, data.len() as u64);
        assert_eq!(out, data);
    }
}
