//! The driver with real storage and a single-node cluster (it elects itself, so every
//! write commits locally): snapshots written off the driver thread.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use tempfile::TempDir;

use super::runner::spawn_with_storage;
use super::{storage_options, DriverError, DriverHandle, RequestError, Transport, WriteKind};
use super::{Alarm, NodeStatus};
use crate::config::{Config, NodeArgs};
use crate::kv::Kv;
use crate::raft::{Index, Message, SnapshotMeta};
use crate::storage::{DiskFault, DiskStep, SnapshotFile, SnapshotHook, StorageError};

/// Far longer than any answer of a driver that is not blocked.
const PATIENCE: Duration = Duration::from_secs(10);

struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, _: Message) {}
    fn send_snapshot(&self, _: Message, _: SnapshotFile) {}
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
}

fn config(dir: &Path, snapshot_threshold: u64) -> Arc<Config> {
    let (log, data) = (dir.join("log"), dir.join("data"));
    let threshold = snapshot_threshold.to_string();
    let cli = Cli::try_parse_from([
        "distraft",
        "--name",
        "solo",
        "--cluster",
        "solo=127.0.0.1:1:127.0.0.1:2",
        "--log-path",
        log.to_str().unwrap(),
        "--data-path",
        data.to_str().unwrap(),
        "--snapshot-threshold",
        &threshold,
        "--heartbeat-timeout",
        "0.02",
        "--election-timeout",
        "0.05",
    ])
    .unwrap();
    Arc::new(Config::from_args(&cli.node).unwrap())
}

type Done = tokio::sync::oneshot::Receiver<Result<(), DriverError>>;

async fn start(config: &Arc<Config>, hook: Option<SnapshotHook>) -> (DriverHandle, Done) {
    start_with_disk_fault(config, hook, None).await
}

async fn start_with_disk_fault(
    config: &Arc<Config>,
    hook: Option<SnapshotHook>,
    disk_fault: Option<DiskFault>,
) -> (DriverHandle, Done) {
    let mut options = storage_options(config);
    options.snapshot_hook = hook;
    options.disk_fault = disk_fault;
    let (handle, done) = spawn_with_storage(config.clone(), NoPeers, options).unwrap();
    wait_for(&handle, "leadership", |s| s.is_leader()).await;
    (handle, done)
}

async fn within<T>(what: &str, answer: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, answer)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {PATIENCE:?}, the driver is blocked"))
}

async fn wait_for(
    handle: &DriverHandle,
    what: &str,
    done: impl Fn(&NodeStatus) -> bool,
) -> NodeStatus {
    for _ in 0..500 {
        let status = within(what, handle.status()).await.unwrap();
        if done(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not reached in 10 s");
}

async fn put(handle: &DriverHandle, i: usize) {
    try_put(handle, format!("key {i}"), format!("value {i}"))
        .await
        .unwrap();
}

async fn try_put(handle: &DriverHandle, key: String, value: String) -> Result<(), RequestError> {
    let kind = WriteKind::Put {
        key: key.clone(),
        value_bytes: value.len(),
    };
    let command = Kv::put_command(key, value);
    within("a write", handle.propose(command, kind))
        .await
        .map(|_| ())
}

/// A WAL fault layer: while `full` is set, the disk is full (ENOSPC where the WAL
/// grows); while `broken` is set, every fsync fails with EIO.
fn disk_fault(full: &Arc<AtomicBool>, broken: &Arc<AtomicBool>) -> DiskFault {
    let (full, broken) = (full.clone(), broken.clone());
    DiskFault(Arc::new(move |step| match step {
        DiskStep::WalReserve if full.load(Ordering::SeqCst) => {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
        DiskStep::WalSync if broken.load(Ordering::SeqCst) => {
            Err(std::io::Error::from_raw_os_error(libc::EIO))
        }
        _ => Ok(()),
    }))
}

async fn assert_all_keys(handle: &DriverHandle, count: usize) {
    for i in 0..count {
        let value = within("a read", handle.read(format!("key {i}"), false)).await;
        let found = value.unwrap().found.map(|found| found.value);
        assert_eq!(found, Some(format!("value {i}")), "key {i}");
    }
}

async fn shut_down(handle: DriverHandle, done: Done) {
    handle.shutdown();
    within("shutdown", done).await.unwrap().unwrap();
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    found.sort();
    found
}

/// Holds every snapshot writer just before its fsync, reporting its index, until
/// released: a snapshot "being written" for as long as the test wants.
struct Gate {
    entered: mpsc::Receiver<Index>,
    release: mpsc::Sender<()>,
}

fn gate() -> (SnapshotHook, Gate) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
    let hook = SnapshotHook(Arc::new(move |meta: &SnapshotMeta| {
        let _ = entered_tx.lock().unwrap().send(meta.index);
        // Returns at once once `release` is dropped.
        let _ = release_rx.lock().unwrap().recv();
        Ok(())
    }));
    (hook, Gate { entered, release })
}

#[tokio::test]
async fn the_driver_keeps_serving_while_a_snapshot_is_written() {
    let dir = TempDir::new().unwrap();
    let config = config(dir.path(), 10);
    let (hook, gate) = gate();
    let (handle, done) = start(&config, Some(hook)).await;
    for i in 0..10 {
        put(&handle, i).await;
    }
    let index = gate
        .entered
        .recv_timeout(PATIENCE)
        .expect("a snapshot is started past the threshold");

    // The snapshot is held half-written: the driver still commits, applies and reads.
    for i in 10..40 {
        put(&handle, i).await;
    }
    assert_all_keys(&handle, 40).await;
    let status = within("status", handle.status()).await.unwrap();
    assert!(status.last_applied >= index + 30, "{status:?}");
    // Nothing is compacted before the snapshot is durable.
    assert_eq!(status.snapshot_index, 0);
    assert!(files(&config.data_dir, ".snap").is_empty());

    drop(gate.release);
    wait_for(&handle, "the snapshot adopted", |s| {
        s.snapshot_index >= index
    })
    .await;
    shut_down(handle, done).await;
}

#[tokio::test]
async fn a_failed_snapshot_is_retried_at_the_next_threshold_and_loses_nothing() {
    let dir = TempDir::new().unwrap();
    let config = config(dir.path(), 10);
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = attempts.clone();
    let failures = AtomicUsize::new(0);
    let hook = SnapshotHook(Arc::new(move |meta: &SnapshotMeta| {
        seen.lock().unwrap().push(meta.index);
        if failures.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(std::io::Error::other("injected failure"));
        }
        Ok(())
    }));
    let (handle, done) = start(&config, Some(hook)).await;
    for i in 0..40 {
        put(&handle, i).await;
    }
    let status = wait_for(&handle, "a snapshot", |s| s.snapshot_index > 0).await;
    let attempts = attempts.lock().unwrap().clone();
    assert!(attempts.len() >= 2, "{attempts:?}");
    assert!(attempts[1] >= attempts[0] + 10, "{attempts:?}");
    assert!(status.snapshot_index >= attempts[1]);
    assert_all_keys(&handle, 40).await;
    shut_down(handle, done).await;
    // The failed attempt left no file behind (shutdown settled any later one).
    assert!(files(&config.data_dir, ".tmp").is_empty());
    assert_eq!(files(&config.data_dir, ".snap").len(), 1);

    let (handle, done) = start(&config, None).await;
    assert_all_keys(&handle, 40).await;
    shut_down(handle, done).await;
}

#[tokio::test]
async fn shutdown_abandons_a_stuck_snapshot_safely() {
    let dir = TempDir::new().unwrap();
    let config = config(dir.path(), 10);
    let (hook, gate) = gate();
    let (handle, done) = start(&config, Some(hook)).await;
    for i in 0..15 {
        put(&handle, i).await;
    }
    gate.entered.recv_timeout(PATIENCE).unwrap();
    // The writer stays stuck: shutdown waits a bounded time, then leaves it behind.
    shut_down(handle, done).await;
    assert_eq!(files(&config.data_dir, ".tmp").len(), 1);
    assert!(files(&config.data_dir, ".snap").is_empty());

    // A restart (no snapshot of its own: a high threshold) ignores and removes the
    // half-written file and recovers everything from the log.
    let restarted = self::config(dir.path(), 1000);
    let (handle, done) = start(&restarted, None).await;
    assert!(files(&config.data_dir, ".tmp").is_empty());
    assert_all_keys(&handle, 15).await;
    // Released now, the abandoned writer finds its file gone and leaves nothing.
    drop(gate.release);
    put(&handle, 15).await;
    assert_all_keys(&handle, 16).await;
    shut_down(handle, done).await;
}

#[tokio::test]
async fn an_fsync_error_stops_the_driver_naming_the_file_and_loses_nothing() {
    let dir = TempDir::new().unwrap();
    let config = config(dir.path(), 1000);
    let (full, broken) = (Arc::default(), Arc::new(AtomicBool::new(false)));
    let fault = disk_fault(&full, &broken);
    let (handle, done) = start_with_disk_fault(&config, None, Some(fault)).await;
    for i in 0..10 {
        put(&handle, i).await;
    }
    broken.store(true, Ordering::SeqCst);
    // Never acknowledged: the fsync behind it failed.
    assert!(try_put(&handle, "lost".into(), "?".into()).await.is_err());
    // Fail-stop: the driver ends with the error, naming the WAL file and the cause.
    let err = within("the driver's end", done).await.unwrap().unwrap_err();
    match &err {
        DriverError::Storage(StorageError::Io { path, source }) => {
            assert!(path.to_string_lossy().ends_with(".wal"), "{err}");
            assert_eq!(source.raw_os_error(), Some(libc::EIO), "{err}");
        }
        other => panic!("expected the WAL's I/O error, got {other}"),
    }
    assert!(err.to_string().contains(".wal"), "{err}");
    // Gone for good: nothing more is accepted.
    assert!(try_put(&handle, "after".into(), "?".into()).await.is_err());

    // Recovery keeps every acknowledged write.
    let (handle, done) = start(&config, None).await;
    assert_all_keys(&handle, 10).await;
    shut_down(handle, done).await;
}

#[tokio::test]
async fn a_full_disk_raises_the_alarm_keeps_reads_and_resumes_when_space_is_back() {
    let dir = TempDir::new().unwrap();
    let config = config(dir.path(), 1000);
    let (full, broken) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let fault = disk_fault(&full, &broken);
    let (handle, done) = start_with_disk_fault(&config, None, Some(fault)).await;
    for i in 0..10 {
        put(&handle, i).await;
    }
    full.store(true, Ordering::SeqCst);
    // Larger than the zeros written ahead: the WAL must grow, and cannot.
    let big = "x".repeat(400 * 1024);
    let refused = try_put(&handle, "big".into(), big.clone()).await;
    assert_eq!(refused, Err(RequestError::Indeterminate));
    let status = wait_for(&handle, "the alarm", |s| s.alarm == Some(Alarm::NoSpace)).await;
    assert!(
        !status.up,
        "out of Raft while the WAL cannot be written: {status:?}"
    );

    // Writes are refused; stale reads are served; linearizable ones go to a leader
    // (this single node was it, so there is none to go to).
    let refused = try_put(&handle, "key 0".into(), "new".into()).await;
    assert_eq!(refused, Err(RequestError::NoSpace));
    let stale = within("a stale read", handle.read("key 3".into(), true)).await;
    let stale = stale.map(|answer| answer.found.map(|found| found.value));
    assert_eq!(stale, Ok(Some("value 3".to_string())));
    let linearizable = within("a read", handle.read("key 3".into(), false)).await;
    assert_eq!(linearizable, Err(RequestError::NotLeader { leader: None }));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = within("status", handle.status()).await.unwrap();
    assert_eq!(
        status.alarm,
        Some(Alarm::NoSpace),
        "no space yet: still alarmed"
    );

    // Space is back: the node clears the alarm and rejoins by itself.
    full.store(false, Ordering::SeqCst);
    wait_for(&handle, "the alarm cleared", |s| {
        s.alarm.is_none() && s.up && s.is_leader()
    })
    .await;
    assert_all_keys(&handle, 10).await;
    put(&handle, 10).await;
    try_put(&handle, "big".into(), big).await.unwrap();
    shut_down(handle, done).await;

    let (handle, done) = start(&config, None).await;
    assert_all_keys(&handle, 11).await;
    shut_down(handle, done).await;
}
