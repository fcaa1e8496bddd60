//! Crashes (`kill -9`), stop/start, and losing a minority or a majority of the nodes.

use crate::harness::{eventually, Cluster, CONVERGE, REQUEST_TIMEOUT};
use std::time::{Duration, Instant};

/// Waits until node `i`'s own state machine (a stale read) has `key` = `value`:
/// proof that its log caught up, not just that it forwards to the leader.
async fn assert_caught_up(cluster: &Cluster, i: usize, key: &str, value: &str) {
    let done = eventually(CONVERGE, || async {
        match cluster.get_stale(i, key).await {
            (200, body) if body["value"] == value => Ok(()),
            answer => Err(format!("{answer:?}")),
        }
    })
    .await;
    if let Err(last) = done {
        panic!("node {i} never applied {key}={value} locally: {last}");
    }
}

/// Waits until every running node reports the same applied index and state digest.
async fn assert_replicas_converge(cluster: &Cluster) {
    let done = eventually(CONVERGE, || async {
        let mut seen = Vec::new();
        for i in cluster.running() {
            let status = cluster.status(i).await?;
            seen.push((
                status["last_applied"].clone(),
                status["state_digest"].clone(),
            ));
        }
        match seen.windows(2).all(|pair| pair[0] == pair[1]) {
            true => Ok(()),
            false => Err(format!("{seen:?}")),
        }
    })
    .await;
    if let Err(last) = done {
        panic!("replicas never converged: {last}");
    }
}

#[tokio::test]
async fn failover_after_kill_9_of_the_leader() {
    let mut cluster = Cluster::start(3).await;
    let old_leader = cluster.wait_for_leader().await;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old_leader).collect();
    assert_eq!(cluster.put(survivors[0], "before", "1").await.0, 200);

    cluster.kill(old_leader);
    let new_leader = cluster.wait_for_leader_among(&survivors).await;
    assert_ne!(new_leader, old_leader);
    for &i in &survivors {
        cluster.put_eventually(i, &format!("after-{i}"), "2").await;
    }
    for &i in &survivors {
        cluster.assert_value_eventually(i, "before", "1").await;
    }

    // The old leader comes back as a follower and catches up.
    cluster.restart(old_leader);
    let leader = cluster.wait_for_leader().await;
    assert_ne!(
        leader, old_leader,
        "a restarted node with a stale log cannot win"
    );
    for &i in &survivors {
        assert_caught_up(&cluster, old_leader, &format!("after-{i}"), "2").await;
    }
    assert_replicas_converge(&cluster).await;
}

#[tokio::test]
async fn stop_and_start_of_the_leader() {
    let cluster = Cluster::start(3).await;
    let old_leader = cluster.wait_for_leader().await;
    assert_eq!(cluster.put(old_leader, "k", "1").await.0, 200);
    assert_eq!(cluster.get_path(old_leader, "/stop").await.0, 200);
    // Stopping twice is fine.
    assert_eq!(cluster.get_path(old_leader, "/stop").await.0, 200);
    let status = cluster.status(old_leader).await.unwrap();
    assert_eq!(status["up"], false, "{status}");

    let others: Vec<usize> = (0..3).filter(|&i| i != old_leader).collect();
    let new_leader = cluster.wait_for_leader_among(&others).await;
    assert_ne!(new_leader, old_leader);
    cluster.put_eventually(others[0], "k", "2").await;
    assert_eq!(cluster.get(old_leader, "k").await.0, 503);

    assert_eq!(cluster.get_path(old_leader, "/start").await.0, 200);
    assert_eq!(cluster.get_path(old_leader, "/start").await.0, 200);
    assert_caught_up(&cluster, old_leader, "k", "2").await;
    cluster.wait_for_leader().await;
    assert_replicas_converge(&cluster).await;
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_of_every_node() {
    let mut cluster = Cluster::start(3).await;
    for n in 0..20 {
        assert_eq!(
            cluster
                .put(n % 3, &format!("key-{n}"), &format!("v{n}"))
                .await
                .0,
            200
        );
    }
    assert_eq!(cluster.put(0, "key-0", "overwritten").await.0, 200);
    assert_eq!(cluster.delete(1, "key-1").await.0, 200);

    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.wait_for_leader().await;
    for node in 0..3 {
        cluster
            .assert_value_eventually(node, "key-0", "overwritten")
            .await;
        assert_eq!(cluster.get(node, "key-1").await.0, 404);
        for n in 2..20 {
            let (code, body) = cluster.get(node, &format!("key-{n}")).await;
            assert_eq!((code, body["value"].clone()), (200, format!("v{n}").into()));
        }
    }
    assert_replicas_converge(&cluster).await;
}

#[tokio::test]
async fn losing_a_minority_keeps_serving() {
    let mut cluster = Cluster::start(5).await;
    let leader = cluster.wait_for_leader().await;
    // Lose two of five, the leader among them.
    let lost = [leader, (leader + 1) % 5];
    for &i in &lost {
        cluster.kill(i);
    }
    let alive = cluster.running();
    cluster.wait_for_leader_among(&alive).await;
    for &i in &alive {
        cluster.put_eventually(i, &format!("k{i}"), "v").await;
    }
    for &i in &alive {
        for &j in &alive {
            cluster
                .assert_value_eventually(i, &format!("k{j}"), "v")
                .await;
        }
    }
}

#[tokio::test]
async fn losing_a_majority_answers_503_in_time_then_heals() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    assert_eq!(cluster.put(leader, "k", "before").await.0, 200);
    let lost: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &lost {
        cluster.kill(i);
    }

    // The survivor can neither write nor read linearizably, and says so in time.
    let bound = REQUEST_TIMEOUT + Duration::from_millis(1500);
    let started = Instant::now();
    let (code, body) = cluster.put(leader, "k", "during").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["ok"], false);
    assert!(
        started.elapsed() < bound,
        "PUT took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let (code, body) = cluster.get(leader, "k").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        started.elapsed() < bound,
        "GET took {:?}",
        started.elapsed()
    );
    // Status still answers.
    assert!(cluster.status(leader).await.is_ok());

    // One node back is a majority again.
    cluster.restart(lost[0]);
    cluster.put_eventually(leader, "k", "after").await;
    cluster.assert_value_eventually(lost[0], "k", "after").await;
}

#[tokio::test]
async fn concurrent_writers_lose_nothing() {
    let cluster = std::sync::Arc::new(Cluster::start(3).await);
    const WRITERS: usize = 6;
    const KEYS_PER_WRITER: usize = 30;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let cluster = cluster.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..KEYS_PER_WRITER {
                let node = (writer + n) % 3;
                cluster
                    .put_eventually(node, &format!("w{writer}-{n}"), &format!("{writer}:{n}"))
                    .await;
                // Everyone also overwrites one shared key: the last write must win.
                cluster
                    .put_eventually(node, "shared", &format!("{writer}:{n}"))
                    .await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for node in 0..3 {
        for writer in 0..WRITERS {
            for n in 0..KEYS_PER_WRITER {
                let (code, body) = cluster.get(node, &format!("w{writer}-{n}")).await;
                assert_eq!(code, 200, "w{writer}-{n} on node {node}: {body}");
                assert_eq!(body["value"], format!("{writer}:{n}"));
            }
        }
    }
    let (_, shared) = cluster.get(0, "shared").await;
    let last_writes: Vec<String> = (0..WRITERS)
        .map(|w| format!("{w}:{}", KEYS_PER_WRITER - 1))
        .collect();
    assert!(
        last_writes.iter().any(|v| shared["value"] == v.as_str()),
        "the shared key holds a writer's last value: {shared}"
    );
    assert_replicas_converge(&cluster).await;
}

/// A follower that was down while the leader wrote far more than its log cache holds
/// (DISTRAFT_LOG_CACHE_BYTES) catches up from entries the leader reads back from its
/// WAL, not from a snapshot (there is none: the thresholds are out of reach).
#[tokio::test]
async fn a_follower_catches_up_from_the_leaders_wal_after_eviction() {
    let mut cluster = Cluster::start_with(
        3,
        &[
            ("DISTRAFT_LOG_CACHE_BYTES", "4096"),
            ("DISTRAFT_SNAPSHOT_THRESHOLD", "1000000"),
            ("DISTRAFT_SNAPSHOT_LOG_BYTES", "1000000000"),
        ],
    )
    .await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    // 150 KiB of log: the leader keeps about 4 of these entries in memory.
    let value = |i: usize| format!("{i:04}-{}", "x".repeat(1000));
    for i in 0..150 {
        cluster
            .put_eventually(leader, &format!("key{i}"), &value(i))
            .await;
    }
    cluster.restart(follower);
    cluster.wait_for_leader().await;
    // The first and the last write, applied by the follower itself.
    assert_caught_up(&cluster, follower, "key0", &value(0)).await;
    assert_caught_up(&cluster, follower, "key149", &value(149)).await;
    assert_replicas_converge(&cluster).await;
    let status = cluster.status(follower).await.unwrap();
    assert_eq!(
        status["snapshot_index"], 0,
        "caught up by a snapshot: {status}"
    );
}
