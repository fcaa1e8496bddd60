//! Storage and resources on real processes: one process per data directory, the
//! quota, a full disk, and the clean exit of a node that cannot go on.

use crate::harness::{eventually, Cluster, CONVERGE};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[tokio::test]
async fn a_second_process_on_a_data_directory_in_use_is_refused() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    assert_eq!(cluster.put(leader, "before", "1").await.0, 200);
    let node = (leader + 1) % 3;
    cluster.assert_value_eventually(node, "before", "1").await;

    // Same name and directories as `node`, other ports: must stop at once.
    let second = cluster.run_second_process(node, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        second.status.code().is_some_and(|code| code != 0),
        "the second process must exit non-zero by itself, got {:?}: {stderr}",
        second.status
    );
    let (log_dir, _) = cluster.node_dirs(node);
    let holder = cluster.pid(node).unwrap();
    assert!(
        stderr.contains(&log_dir.display().to_string())
            && stderr.contains(&format!("PID {holder}")),
        "the refusal must name the directory {} and the holder's PID {holder}: {stderr}",
        log_dir.display()
    );

    // Still held while the node is stopped (Admin.Stop closes its storage), and
    // after it starts again.
    assert_eq!(cluster.get_path(node, "/stop").await.0, 200);
    let second = cluster.run_second_process(node, Duration::from_secs(10));
    assert!(
        second.status.code().is_some_and(|code| code != 0),
        "refused while stopped: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(cluster.get_path(node, "/start").await.0, 200);

    // The first keeps its data (its own state machine has it again once it has
    // re-learned the commit index) and keeps serving, writes included.
    let kept = eventually(CONVERGE, || async {
        match cluster.get_stale(node, "before").await {
            (200, body) if body["value"] == "1" => Ok(()),
            answer => Err(format!("{answer:?}")),
        }
    })
    .await;
    kept.unwrap_or_else(|last| panic!("the first process lost its data: {last}"));
    cluster.put_eventually(node, "after", "2").await;
    for i in 0..3 {
        cluster.assert_value_eventually(i, "before", "1").await;
        cluster.assert_value_eventually(i, "after", "2").await;
    }
}

#[tokio::test]
async fn writes_past_the_quota_are_refused_and_deletes_make_room() {
    // Room for 3 pairs of "key-N" (5 bytes) and 100-byte values, not 4.
    let cluster = Cluster::start_with(3, &[("DISTRAFT_QUOTA_BYTES", "400")]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let value = "v".repeat(100);
    for n in 0..3 {
        assert_eq!(
            cluster.put(leader, &format!("key-{n}"), &value).await.0,
            200
        );
    }
    // Through the leader and through a follower (forwarded): 507, nothing written.
    for i in [leader, follower] {
        let (code, body) = cluster.put(i, "key-3", &value).await;
        assert_eq!(code, 507, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("quota exceeded"),
            "{body}"
        );
    }
    assert_eq!(cluster.get(leader, "key-3").await.0, 404);
    // A put that does not grow the state is fine.
    assert_eq!(cluster.put(follower, "key-0", "short").await.0, 200);
    let status = cluster.status(leader).await.unwrap();
    assert_eq!(status["state_bytes"], 3 * 5 + 2 * 100 + 5, "{status}");

    // gRPC says RESOURCE_EXHAUSTED.
    let mut kv = cluster.kv(follower).await;
    let refused = kv
        .put(distraft::proto::v1::PutRequest {
            key: "key-3".into(),
            value: value.repeat(2),
            precondition: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );

    // A transaction whose larger branch would pass the quota: 507 too, nothing written
    // (its other branch would fit, but which runs is known only when it applies).
    let txn = serde_json::json!({
        "compare": [{"key": "key-0", "version": 0}],
        "success": [{"put": {"key": "t1", "value": "x"}}],
        "failure": [{"put": {"key": "t2", "value": value.repeat(2)}}],
    });
    let url = format!("{}/v1/txn", cluster.url(follower));
    let (code, body) = cluster.answer(cluster.http().post(url).json(&txn)).await;
    assert_eq!(code, 507, "{body}");
    assert_eq!(cluster.get(leader, "t1").await.0, 404);

    // Deletes still work and make room.
    assert_eq!(cluster.delete(follower, "key-1").await.0, 200);
    assert_eq!(cluster.put(follower, "key-3", &value).await.0, 200);
    for i in 0..3 {
        cluster.assert_value_eventually(i, "key-3", &value).await;
    }
}

/// A tmpfs mounted for one test, unmounted when dropped (also when the test fails).
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "24m"), or returns `None` (with a message) when
    /// not root; in CI (`CI` set, where the tests run as root) that is a failure.
    fn mount(size: &str) -> Option<Tmpfs> {
        // /proc/self belongs to the process's effective user.
        let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
        if uid != 0 {
            assert!(
                std::env::var_os("CI").is_none(),
                "this test mounts a tmpfs and must run as root in CI"
            );
            eprintln!("SKIPPED: mounting a tmpfs needs root; run as root to test a full disk");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("running mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Some(Tmpfs { _dir: dir, path })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file must not leave the mount behind.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills `dir`'s filesystem with a file until `leave` bytes are available.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let available = fs4::available_space(dir).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut left = available.saturating_sub(leave);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    file.sync_all().unwrap();
    path
}

#[tokio::test]
async fn a_full_disk_raises_the_alarm_keeps_reads_and_catches_up_once_space_is_freed() {
    // Declared before the cluster: dropped after its nodes are killed.
    let Some(tmpfs) = Tmpfs::mount("24m") else {
        return;
    };
    const FULL: usize = 2;
    let full_dir = tmpfs.path.display().to_string();
    let cluster = Cluster::start_with_node_env(3, &[], |i, _| match i {
        FULL => vec![
            ("DISTRAFT_LOG_PATH".into(), full_dir.clone()),
            ("DISTRAFT_DATA_PATH".into(), full_dir.clone()),
        ],
        _ => Vec::new(),
    })
    .await;
    let others = [0, 1];
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    cluster.put_eventually(0, "first", "1").await;
    acknowledged.push(("first".into(), "1".into()));
    cluster.assert_value_eventually(FULL, "first", "1").await;

    let filler = fill(&tmpfs.path, 1536 * 1024);
    // 128 KiB values through the others until the full node's WAL cannot grow. Only
    // 200s are acknowledged; a 503 while a new leader is elected (if the full node
    // led) may or may not have been applied, and is not checked.
    let mut alarmed = false;
    for n in 0..80 {
        let (key, value) = (
            format!("big-{n}"),
            format!("{n}-{}", "v".repeat(128 * 1024)),
        );
        if cluster.put(others[n % 2], &key, &value).await.0 == 200 {
            acknowledged.push((key, value));
        }
        if cluster.status(FULL).await.unwrap()["alarm"] == "NOSPACE" {
            alarmed = true;
            break;
        }
    }
    assert!(alarmed, "the full node never raised the NOSPACE alarm");

    // The full node: status and reads served, writes refused with 507.
    let status = cluster.status(FULL).await.unwrap();
    assert_eq!(status["up"], false, "{status}");
    assert_eq!(cluster.get_stale(FULL, "first").await.1["value"], "1");
    let (code, body) = cluster.put(FULL, "refused", "x").await;
    assert_eq!(code, 507, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no space"),
        "{body}"
    );
    // The others' majority keeps taking writes, and the full node's linearizable reads
    // see them (it sends them on).
    cluster.wait_for_leader_among(&others).await;
    cluster.put_eventually(0, "during", "2").await;
    acknowledged.push(("during".into(), "2".into()));
    cluster.assert_value_eventually(FULL, "during", "2").await;
    let status = cluster.status(FULL).await.unwrap();
    assert_eq!(status["alarm"], "NOSPACE", "{status}");

    // Space is freed: the node clears the alarm, rejoins and catches up by itself.
    std::fs::remove_file(&filler).unwrap();
    let cleared = eventually(CONVERGE, || async {
        let status = cluster.status(FULL).await?;
        match status["alarm"] == "" && status["up"] == true {
            true => Ok(()),
            false => Err(format!("{status}")),
        }
    })
    .await;
    if let Err(status) = cleared {
        panic!("the alarm never cleared: {status}");
    }
    let caught_up = eventually(CONVERGE, || async {
        match cluster.get_stale(FULL, "during").await {
            (200, body) if body["value"] == "2" => Ok(()),
            answer => Err(format!("{answer:?}")),
        }
    })
    .await;
    caught_up.unwrap_or_else(|last| panic!("the full node never caught up: {last}"));
    cluster.put_eventually(FULL, "after", "3").await;
    acknowledged.push(("after".into(), "3".into()));

    // No acknowledged write lost, on any node.
    for i in 0..3 {
        for (key, value) in &acknowledged {
            cluster.assert_value_eventually(i, key, value).await;
        }
    }
}
