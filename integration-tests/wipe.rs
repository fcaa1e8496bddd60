//! `DISTRAFT_RESET_LOGS`: a wiped member keeps its term and vote, catches up from the
//! leader, and withholds its vote until its log holds an entry of a later term
//! (docs/storage.md, "Wiping a node").

use crate::harness::{eventually, Cluster, CONVERGE};

#[tokio::test]
async fn a_wiped_member_catches_up_and_votes_again_after_the_next_leader_change() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let wiped = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    for k in 0..20 {
        cluster
            .put_eventually(leader, &format!("k{k}"), &format!("v{k}"))
            .await;
    }
    let term_before = cluster.status(wiped).await.unwrap()["term"]
        .as_u64()
        .unwrap();
    assert!(term_before > 0);

    cluster.kill(wiped);
    cluster.restart_with(wiped, &[("DISTRAFT_RESET_LOGS", "true")]);
    // It kept its term, gave up its log, and withholds its vote...
    let status = eventually(CONVERGE, || async { cluster.status(wiped).await })
        .await
        .unwrap();
    assert!(status["term"].as_u64().unwrap() >= term_before, "{status}");
    assert_eq!(status["voting"], false, "{status}");
    // ... while it catches up from the leader: every key, read from its own state.
    for k in 0..20 {
        let (key, value) = (format!("k{k}"), format!("v{k}"));
        let done = eventually(CONVERGE, || async {
            match cluster.get_stale(wiped, &key).await {
                (200, body) if body["value"] == value.as_str() => Ok(()),
                answer => Err(format!("{answer:?}")),
            }
        })
        .await;
        done.unwrap_or_else(|e| panic!("the wiped node never applied {key}: {e}"));
    }
    // Caught up, but the leader of the wiped term may have counted its lost
    // acknowledgements: it still may not vote.
    assert_eq!(cluster.status(wiped).await.unwrap()["voting"], false);

    // A leader change (the leader restarts) brings an entry of a later term.
    cluster.kill(leader);
    cluster.restart(leader);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, wiped, "a node that may not vote cannot lead");
    cluster.put_eventually(new_leader, "after", "change").await;
    let voting = eventually(CONVERGE, || async {
        let status = cluster.status(wiped).await?;
        match status["voting"] == true {
            true => Ok(()),
            false => Err(format!("{status}")),
        }
    })
    .await;
    voting.unwrap_or_else(|e| panic!("the wiped node never voted again: {e}"));

    // Now it counts as a voter: with the original leader gone, it and the third
    // member elect a leader and keep every key.
    let old = cluster.wait_for_leader().await;
    cluster.kill(old);
    let remaining: Vec<usize> = [leader, wiped, other]
        .into_iter()
        .filter(|&i| i != old)
        .collect();
    let leader = cluster.wait_for_leader_among(&remaining).await;
    cluster.put_eventually(leader, "two", "left").await;
    for &i in &remaining {
        for k in 0..20 {
            cluster
                .assert_value_eventually(i, &format!("k{k}"), &format!("v{k}"))
                .await;
        }
    }
}

#[tokio::test]
async fn the_flag_on_new_nodes_changes_nothing() {
    // Nothing to wipe: no vote is withheld, and a cluster forms as usual.
    let cluster = Cluster::start_with(3, &[("DISTRAFT_RESET_LOGS", "true")]).await;
    let leader = cluster.wait_for_leader().await;
    cluster.put_eventually(leader, "k", "v").await;
    for i in 0..3 {
        assert_eq!(cluster.status(i).await.unwrap()["voting"], true);
        cluster.assert_value_eventually(i, "k", "v").await;
    }
}
