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
