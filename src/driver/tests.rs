//! The driver with real storage and a single-node cluster (it elects itself, so every
//! write commits locally): snapshots written off the driver thread.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use tempfile::TempDir;

use super::runner::spawn_with_storage;
use super::{storage_options, DriverError, DriverHandle, Transport};
use crate::config::{Config, NodeArgs};
use crate::kv::Kv;
use crate::proto::v1::StatusResponse;
use crate::raft::{Index, Message, SnapshotMeta};
use crate::storage::{SnapshotFile, SnapshotHook};

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
    let mut options = storage_options(config);
    options.snapshot_hook = hook;
    let (handle, done) = spawn_with_storage(config.clone(), NoPeers, options).unwrap();
    wait_for(&handle, "leadership", |s| s.is_leader).await;
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
    done: impl Fn(&StatusResponse) -> bool,
) -> StatusResponse {
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
    let command = Kv::put_command(format!("key {i}"), format!("value {i}"));
    within("a write", handle.propose(command)).await.unwrap();
}

async fn assert_all_keys(handle: &DriverHandle, count: usize) {
    for i in 0..count {
        let value = within("a read", handle.read(format!("key {i}"), false)).await;
        assert_eq!(value.unwrap(), Some(format!("value {i}")), "key {i}");
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
