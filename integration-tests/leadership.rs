//! Leadership transfer on real processes: `POST /cluster/leader`, `Admin.TransferLeader`
//! and `distraft leader transfer`, asked of any node; writes during a transfer see no
//! error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::Cluster;
use distraft::proto::v1 as pb;
use serde_json::{json, Value};

/// `POST /cluster/leader` on node `i`, with `body` as JSON (or none).
async fn transfer(cluster: &Cluster, i: usize, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}/cluster/leader", cluster.url(i));
    let mut request = cluster.http().post(&url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    cluster.answer(request).await
}

/// A follower of the current leader other than `not`.
fn other_than(cluster: &Cluster, not: &[usize]) -> usize {
    (0..cluster.nodes.len())
        .find(|i| !not.contains(i))
        .expect("a third node")
}

#[tokio::test]
async fn leadership_moves_to_a_named_member_or_the_most_up_to_date_one() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let target = other_than(&cluster, &[leader]);
    let asked = other_than(&cluster, &[leader, target]);
    // Asked of a follower: passed on to the leader.
    let to = cluster.nodes[target].name.clone();
    let (code, answer) = transfer(&cluster, asked, Some(json!({ "to": to }))).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["leader"], to.as_str(), "{answer}");
    assert_eq!(
        answer["previous"],
        cluster.nodes[leader].name.as_str(),
        "{answer}"
    );
    assert_eq!(cluster.wait_for_leader().await, target);
    // Nothing acknowledged was lost, and the new leader takes writes.
    cluster.put_eventually(asked, "after", "transfer").await;

    // Without a target: the most up-to-date voter, never the leader itself.
    let (code, answer) = transfer(&cluster, target, None).await;
    assert_eq!(code, 200, "{answer}");
    let new = cluster.wait_for_leader().await;
    assert_ne!(new, target, "{answer}");
    assert_eq!(
        answer["leader"],
        cluster.nodes[new].name.as_str(),
        "{answer}"
    );

    // Naming the leader succeeds at once; an unknown name, or a body that is not the
    // options object, is refused; so is a request without the token when one is set
    // (see access tests) — here there is none.
    let name = cluster.nodes[new].name.clone();
    let (code, answer) = transfer(&cluster, asked, Some(json!({ "to": name }))).await;
    assert_eq!((code, &answer["leader"]), (200, &json!(name)), "{answer}");
    let (code, answer) = transfer(&cluster, asked, Some(json!({ "to": "nobody" }))).await;
    assert_eq!(code, 404, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("nobody"),
        "{answer}"
    );
    let (code, answer) = transfer(&cluster, asked, Some(json!({ "to": 7 }))).await;
    assert_eq!(code, 400, "{answer}");
    let (code, answer) = cluster
        .answer(
            cluster
                .http()
                .get(format!("{}/cluster/leader", cluster.url(asked))),
        )
        .await;
    assert_eq!(code, 405, "{answer}");
    assert_eq!(cluster.wait_for_leader().await, new);
}

#[tokio::test]
async fn grpc_and_the_cli_transfer_leadership() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let target = other_than(&cluster, &[leader]);
    let mut admin = cluster.admin(leader).await;
    let answer = admin
        .transfer_leader(pb::TransferLeaderRequest {
            to: cluster.nodes[target].name.clone(),
        })
        .await
        .expect("TransferLeader")
        .into_inner();
    assert_eq!(answer.leader, cluster.nodes[target].name);
    assert_eq!(cluster.wait_for_leader().await, target);
    let refused = admin
        .transfer_leader(pb::TransferLeaderRequest {
            to: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");

    let back = cluster.nodes[leader].name.clone();
    let output = tokio::process::Command::from(crate::harness::distraft_command())
        .args([
            "leader",
            "transfer",
            "--url",
            &cluster.url(target),
            "--to",
            &back,
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("\"leader\":\"{back}\"")),
        "{stdout}"
    );
    assert_eq!(cluster.wait_for_leader().await, leader);
}

/// Writes keep going, one after another, through a node that is not involved, while
/// leadership moves back and forth: every write succeeds (they wait for the new leader
/// instead of failing), and the longest gap between two successful writes is printed
/// (`cargo test --test integration writes_see_no_error -- --nocapture`).
#[tokio::test]
async fn writes_see_no_error_while_leadership_moves() {
    let cluster = Arc::new(Cluster::start(3).await);
    let leader = cluster.wait_for_leader().await;
    let target = other_than(&cluster, &[leader]);
    let writer_node = other_than(&cluster, &[leader, target]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (cluster, stop) = (cluster.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut failures, mut written, mut longest) = (Vec::new(), 0u64, Duration::ZERO);
            let mut last = Instant::now();
            // Bounded: at most 20 s, however the transfers go.
            let end = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let (code, body) = cluster.put(writer_node, "k", &written.to_string()).await;
                if code == 200 {
                    written += 1;
                    longest = longest.max(last.elapsed());
                    last = Instant::now();
                } else {
                    failures.push(format!("{code} {body}"));
                }
            }
            (failures, written, longest)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (from, to) in [(leader, target), (target, leader), (leader, target)] {
        let to_name = cluster.nodes[to].name.clone();
        let (code, answer) = transfer(&cluster, from, Some(json!({ "to": to_name }))).await;
        assert_eq!(code, 200, "{answer}");
        assert_eq!(cluster.wait_for_leader().await, to);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (failures, written, longest) = writer.await.unwrap();
    println!("writes during 3 transfers: {written} ok, longest gap {longest:?}");
    assert!(
        failures.is_empty(),
        "writes failed during transfers: {failures:?}"
    );
    assert!(written > 0);
    let (code, body) = cluster.get(writer_node, "k").await;
    assert_eq!(
        (code, &body["value"]),
        (200, &json!((written - 1).to_string())),
        "{body}"
    );
}

/// A rolling restart with SIGTERM (as `docker stop` does it): each leader hands
/// leadership over before it stops, so no election timeout is waited out. A writer
/// keeps writing through whichever node answers; the longest gap between two
/// successful writes is printed (`-- --nocapture`), and every acknowledged write is
/// there at the end. Two worker threads: `terminate` waits for the process by
/// blocking its thread, and the writer must keep writing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_leadership_over_first() {
    let mut cluster = Cluster::start(3).await;
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let http = cluster.http().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut written, mut longest, mut node) = (0u64, Duration::ZERO, 0);
            let mut last = Instant::now();
            // Bounded: at most 60 s, however the restarts go.
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let url = format!("{}/k", urls[node]);
                let answer = http
                    .post(&url)
                    .form(&[("value", written.to_string())])
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                match answer {
                    Ok(response) if response.status() == 200 => {
                        written += 1;
                        longest = longest.max(last.elapsed());
                        last = Instant::now();
                    }
                    // Stopping or down: try the next node.
                    _ => {
                        node = (node + 1) % urls.len();
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            (written, longest)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let leader = cluster.wait_for_leader().await;
        let status = cluster.terminate(leader);
        assert!(status.success(), "{status:?}: {}", cluster.output(leader));
        let output = cluster.output(leader);
        assert!(
            output.contains("handed leadership over before stopping"),
            "{output}"
        );
        let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        cluster.wait_for_leader_among(&others).await;
        cluster.restart(leader);
        cluster.wait_for_leader().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (written, longest) = writer.await.unwrap();
    println!("rolling restart with SIGTERM: {written} writes, longest gap {longest:?}");
    assert!(written > 0);
    let leader = cluster.wait_for_leader().await;
    let (code, body) = cluster.get(leader, "k").await;
    assert_eq!(
        (code, &body["value"]),
        (200, &json!((written - 1).to_string())),
        "{body}"
    );
}
