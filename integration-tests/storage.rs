//! Storage and resources on real processes: one process per data directory, the
//! quota, a full disk, and the clean exit of a node that cannot go on.

use crate::harness::Cluster;
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

    // The first keeps its data and keeps serving, writes included.
    assert_eq!(cluster.get_stale(node, "before").await.1["value"], "1");
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
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );

    // Deletes still work and make room.
    assert_eq!(cluster.delete(follower, "key-1").await.0, 200);
    assert_eq!(cluster.put(follower, "key-3", &value).await.0, 200);
    for i in 0..3 {
        cluster.assert_value_eventually(i, "key-3", &value).await;
    }
}
