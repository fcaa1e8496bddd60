//! Storage benchmark: fsynced appends per second for batches of 1, 16 and 256 entries
//! of 100 bytes, beside this disk's raw `fdatasync` rate for writes of the same size
//! in the same directory, and the time to recover a log of 1,000,000 entries.
//!
//! `cargo run --release --example storage_bench [DIR] [SECONDS_PER_RUN]`
//! DIR defaults to the current directory (use a real disk, not tmpfs); a temporary
//! directory is created inside it and removed at the end.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use distraft::raft::{Entry, HardState};
use distraft::storage::{Storage, StorageOptions};

const ENTRY_BYTES: usize = 100;
const RECOVERY_ENTRIES: u64 = 1_000_000;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let parent = PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let seconds: f64 = match args.next() {
        Some(s) => s.parse().context("SECONDS_PER_RUN must be a number")?,
        None => 3.0,
    };
    let run_for = Duration::from_secs_f64(seconds);
    let scratch = tempfile::TempDir::new_in(&parent)
        .with_context(|| format!("creating a scratch directory in {}", parent.display()))?;
    println!("directory: {}", scratch.path().display());
    println!("\nbatch  raw fdatasync/s   storage appends/s   entries/s   (write bytes)");
    for batch in [1usize, 16, 256] {
        let write_bytes = record_bytes(batch)?;
        let raw = raw_fdatasync_rate(
            &scratch.path().join(format!("raw-{batch}")),
            write_bytes,
            run_for,
        )?;
        let (appends, entries) =
            append_rate(&scratch.path().join(format!("wal-{batch}")), batch, run_for)?;
        println!("{batch:>5}  {raw:>15.0}   {appends:>17.0}   {entries:>9.0}   ({write_bytes})");
    }
    recovery(&scratch.path().join("recovery"))?;
    Ok(())
}

fn entry(index: u64) -> Entry {
    Entry::normal(index, 1, Bytes::from(vec![b'x'; ENTRY_BYTES]))
}

/// Bytes one append of `batch` entries writes: measured, not assumed, by appending
/// once to a throwaway storage.
fn record_bytes(batch: usize) -> Result<usize> {
    let dir = tempfile::TempDir::new()?;
    let (mut storage, _) = Storage::open(StorageOptions::new(
        dir.path().join("l"),
        dir.path().join("d"),
    ))?;
    let before = storage.wal_end().1;
    let entries: Vec<Entry> = (1..=batch as u64).map(entry).collect();
    storage.append(Some(&HardState::default()), &entries)?;
    Ok((storage.wal_end().1 - before) as usize)
}

/// write + fdatasync of `write_bytes` to an appended file, as often as possible.
fn raw_fdatasync_rate(path: &Path, write_bytes: usize, run_for: Duration) -> Result<f64> {
    let mut file = File::create(path)?;
    let buf = vec![b'r'; write_bytes];
    let start = Instant::now();
    let mut syncs = 0u64;
    while start.elapsed() < run_for {
        file.write_all(&buf)?;
        file.sync_data()?;
        syncs += 1;
    }
    Ok(syncs as f64 / start.elapsed().as_secs_f64())
}

/// Storage appends of `batch` entries (plus a hard state), each one durable.
fn append_rate(dir: &Path, batch: usize, run_for: Duration) -> Result<(f64, f64)> {
    let (mut storage, _) = Storage::open(StorageOptions::new(dir.join("log"), dir.join("data")))?;
    let mut next = 1u64;
    let mut appends = 0u64;
    let start = Instant::now();
    while start.elapsed() < run_for {
        let entries: Vec<Entry> = (next..next + batch as u64).map(entry).collect();
        let hs = HardState {
            term: 1,
            vote: Some(1),
            commit: next - 1,
        };
        storage.append(Some(&hs), &entries)?;
        next += batch as u64;
        appends += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((appends as f64 / secs, (next - 1) as f64 / secs))
}

fn recovery(dir: &Path) -> Result<()> {
    let opts = StorageOptions::new(dir.join("log"), dir.join("data"));
    let (mut storage, _) = Storage::open(opts.clone())?;
    let write = Instant::now();
    let chunk = 10_000u64;
    for first in (1..=RECOVERY_ENTRIES).step_by(chunk as usize) {
        let entries: Vec<Entry> = (first..first + chunk).map(entry).collect();
        storage.append(
            Some(&HardState {
                term: 1,
                vote: Some(1),
                commit: first - 1,
            }),
            &entries,
        )?;
    }
    let write = write.elapsed();
    drop(storage);
    let segments = std::fs::read_dir(&opts.log_dir)?.count();
    let bytes: u64 = std::fs::read_dir(&opts.log_dir)?
        .map(|f| Ok(f?.metadata()?.len()))
        .sum::<Result<u64>>()?;

    let open = Instant::now();
    let (storage, recovered) = Storage::open(opts)?;
    let open = open.elapsed();
    anyhow::ensure!(recovered.restored.entries.len() as u64 == RECOVERY_ENTRIES);
    anyhow::ensure!(storage.last_index() == RECOVERY_ENTRIES);
    println!(
        "\nrecovery: {RECOVERY_ENTRIES} entries of {ENTRY_BYTES} B ({:.1} MiB in {segments} segments, \
         written in {:.2} s) recovered in {:.3} s ({:.0} entries/s)",
        bytes as f64 / (1 << 20) as f64,
        write.as_secs_f64(),
        open.as_secs_f64(),
        RECOVERY_ENTRIES as f64 / open.as_secs_f64()
    );
    Ok(())
}
