//! Runtime membership on real processes: growing a cluster by joining nodes under a
//! write load, restarting it with the bootstrap list, replacing a `kill -9`'d member,
//! the safety check's refusal and dry run, and a removed member that keeps running.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{eventually, run_cli, Cluster};
use serde_json::{json, Value};

/// `GET /cluster/members` on node `i`: name → role (empty if it does not answer).
async fn roles(cluster: &Cluster, i: usize) -> BTreeMap<String, String> {
    let url = format!("{}/cluster/members", cluster.url(i));
    let Ok((200, answer)) = cluster.request(cluster.http().get(url)).await else {
        return BTreeMap::new();
    };
    answer["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_string(),
                m["role"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Waits until node `i` sees exactly `expected` (name → role).
async fn wait_for_roles(cluster: &Cluster, i: usize, expected: &[(&str, &str)]) {
    let expected: BTreeMap<String, String> = expected
        .iter()
        .map(|(n, r)| (n.to_string(), r.to_string()))
        .collect();
    let seen = eventually(Duration::from_secs(30), || async {
        let now = roles(cluster, i).await;
        (now == expected).then_some(()).ok_or(format!("{now:?}"))
    })
    .await;
    if let Err(last) = seen {
        panic!(
            "node {i} never saw {expected:?}; last {last}\n{}",
            cluster.output(i)
        );
    }
}

/// Puts keys `w0, w1, ...` through node `via` until `stop`; returns those acknowledged.
fn write_load(
    cluster: &Arc<Cluster>,
    via: usize,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let (cluster, stop) = (cluster.clone(), stop.clone());
    tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("w{n}");
            n += 1;
            if cluster.put(via, &key, "v").await.0 == 200 {
                acknowledged.push(key);
            }
        }
        acknowledged
    })
}

#[tokio::test]
async fn a_cluster_grows_from_three_to_five_under_writes_and_restarts_with_its_bootstrap_list() {
    // Writes go on while two nodes join (through different members, one a follower).
    let mut owned = Cluster::start(3).await;
    let leader = owned.wait_for_leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    owned.put_eventually(0, "before", "growing").await;
    let four = owned.join_node("node4", &[leader], &[]);
    let five = owned.join_node("node5", &[follower], &[]);
    let shared = Arc::new(owned);
    let stop = Arc::new(AtomicBool::new(false));
    let load = write_load(&shared, follower, &stop);
    for i in [0, four, five] {
        wait_for_roles(
            &shared,
            i,
            &[
                ("node1", "voter"),
                ("node2", "voter"),
                ("node3", "voter"),
                ("node4", "voter"),
                ("node5", "voter"),
            ],
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let acknowledged = load.await.unwrap();
    assert!(!acknowledged.is_empty(), "no write succeeded while growing");
    let mut grown = Arc::try_unwrap(shared).ok().expect("the only owner");
    // Every acknowledged write is on every node, the new ones included.
    for i in 0..5 {
        for key in acknowledged.iter().step_by(7).chain(acknowledged.last()) {
            grown.assert_value_eventually(i, key, "v").await;
        }
        grown.assert_value_eventually(i, "before", "growing").await;
    }
    // `GET /` shows five voters with their ids, no learner.
    let status = grown.status(four).await.unwrap();
    assert_eq!(status["members"].as_object().unwrap().len(), 5, "{status}");
    assert_eq!(status["learners"], json!({}), "{status}");
    // The joined ones got the next ids, in the order they were added.
    let mut new_ids = [
        &status["member_ids"]["node4"],
        &status["member_ids"]["node5"],
    ];
    new_ids.sort_by_key(|id| id.as_u64());
    assert_eq!(new_ids, [&json!(4), &json!(5)], "{status}");

    // Restart all five with their first environment: the three bootstrap members
    // with the 3-member list, the joined ones with DISTRAFT_JOIN (now ignored).
    for i in 0..5 {
        grown.terminate(i);
    }
    for i in 0..5 {
        grown.restart(i);
    }
    let leader = grown.wait_for_leader_among(&[0, 1, 2, 3, 4]).await;
    grown.put_eventually(leader, "after", "restart").await;
    for i in 0..5 {
        grown.assert_value_eventually(i, "after", "restart").await;
    }
    assert!(
        grown.output(four).contains("a member that joined"),
        "{}",
        grown.output(four)
    );

    // A bootstrap member may also restart with the current membership as its list;
    // any other list is refused, naming both lists.
    let spec = |nodes: &[usize]| {
        nodes
            .iter()
            .map(|&i| {
                let n = &grown.nodes[i];
                format!(
                    "{}=127.0.0.1:{}:127.0.0.1:{}",
                    n.name, n.raft_port, n.http_port
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let (current, wrong) = (spec(&[0, 1, 2, 3, 4]), spec(&[0, 1, 2, 3]));
    grown.terminate(0);
    grown.restart_with(0, &[("DISTRAFT_CLUSTER", &current)]);
    grown.put_eventually(0, "listed", "currently").await;
    grown.terminate(1);
    grown.restart_with(1, &[("DISTRAFT_CLUSTER", &wrong)]);
    let mut exited = false;
    for _ in 0..100 {
        if !grown.alive(1) {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = grown.output(1);
    assert!(
        exited && out.contains("neither the list this node was bootstrapped with"),
        "{out}"
    );
}

#[tokio::test]
async fn a_dead_member_is_replaced_and_unsafe_changes_are_refused_unless_forced() {
    let mut cluster = Cluster::start(3).await;
    cluster.put_eventually(0, "k", "v").await;
    // node3 dies for good, and the leader notices (no answer for an election timeout).
    cluster.kill(2);
    let leader = cluster.wait_for_leader_among(&[0, 1]).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let healthy = 1 - leader;
    let url = |cluster: &Cluster, i: usize, path: &str| format!("{}{path}", cluster.url(i));
    let other = cluster.nodes[healthy].name.clone();

    // Removing the healthy voter while node3 is down would leave 1 reachable voter
    // of 2: refused (409), naming the quorum; the dry run says so and changes nothing.
    let delete = |path: String| cluster.http().delete(path);
    let (code, answer) = cluster
        .answer(delete(url(
            &cluster,
            leader,
            &format!("/cluster/members/{other}"),
        )))
        .await;
    assert_eq!(code, 409, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("quorum") && error.contains("force"),
        "{answer}"
    );
    let (code, answer) = cluster
        .answer(delete(url(
            &cluster,
            healthy,
            &format!("/cluster/members/{other}?dry_run=true"),
        )))
        .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["dry_run"], true, "{answer}");
    assert_eq!(answer["assessment"]["safe"], false, "{answer}");
    assert_eq!(answer["assessment"]["before"]["voters"], 3, "{answer}");
    assert_eq!(answer["assessment"]["after"]["quorum"], 2, "{answer}");
    assert!(answer["assessment"]["unreachable"]
        .to_string()
        .contains("node3"));
    assert_eq!(roles(&cluster, leader).await.len(), 3);

    // Removing the dead one is safe (2 of 2 reachable), asked of a follower.
    let (code, answer) = cluster
        .answer(delete(url(&cluster, healthy, "/cluster/members/node3")))
        .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["assessment"]["safe"], true, "{answer}");
    assert_eq!(answer["assessment"]["after"]["may_fail"], 0, "{answer}");
    wait_for_roles(&cluster, healthy, &[("node1", "voter"), ("node2", "voter")]).await;
    // Removing a member that is not one any more: 404.
    let (code, answer) = cluster
        .answer(delete(url(&cluster, leader, "/cluster/members/node3")))
        .await;
    assert_eq!(code, 404, "{answer}");

    // Its replacement joins, catches up and is promoted: three voters again.
    let four = cluster.join_node("node4", &[healthy, leader], &[]);
    wait_for_roles(
        &cluster,
        four,
        &[("node1", "voter"), ("node2", "voter"), ("node4", "voter")],
    )
    .await;
    cluster.assert_value_eventually(four, "k", "v").await;
    let term = cluster.status(leader).await.unwrap()["term"].clone();

    // The removed node comes back with its old data: it never learnt of its removal,
    // but the members ignore its campaigns, so it moves no term.
    cluster.restart(2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = cluster.wait_for_leader_among(&[0, 1, 3]).await;
    assert_eq!(
        cluster.status(now).await.unwrap()["term"],
        term,
        "the removed member disturbed the cluster"
    );
    cluster.put_eventually(four, "still", "fine").await;
    // Its campaigns are refused with the reason, which its log shows.
    let told = eventually(Duration::from_secs(10), || async {
        let out = cluster.output(2);
        out.contains("was removed from the cluster")
            .then_some(())
            .ok_or(String::new())
    })
    .await;
    assert!(told.is_ok(), "{}", cluster.output(2));
    cluster.kill(2);

    let me = &cluster.nodes[four];
    let body = json!({
        "name": "node4",
        "peer": format!("127.0.0.1:{}", me.raft_port),
        "client": format!("127.0.0.1:{}", me.http_port),
        "learner": true,
    });
    let (code, answer) = cluster
        .answer(
            cluster
                .http()
                .post(url(&cluster, 0, "/cluster/members"))
                .json(&body),
        )
        .await;
    // node4 is a voter: a join of it means it lost its data. Refused, since a voter
    // with an empty log must never vote under its old id.
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer["error"].to_string().contains("remove it"),
        "{answer}"
    );
    // The same name with other addresses is a conflict; a malformed one a bad request.
    let taken = json!({"name": "node4", "peer": "127.0.0.1:1", "client": "127.0.0.1:2"});
    let (code, answer) = cluster
        .answer(
            cluster
                .http()
                .post(url(&cluster, 0, "/cluster/members"))
                .json(&taken),
        )
        .await;
    assert_eq!(code, 409, "{answer}");
    let bad = json!({"name": "x/y", "peer": "nowhere", "client": "127.0.0.1:2"});
    let (code, answer) = cluster
        .answer(
            cluster
                .http()
                .post(url(&cluster, 0, "/cluster/members"))
                .json(&bad),
        )
        .await;
    assert_eq!(code, 400, "{answer}");
}

#[tokio::test]
async fn learners_stay_learners_until_promoted_and_a_joining_node_killed_mid_catch_up_continues() {
    let mut cluster = Cluster::start(3).await;
    for n in 0..50 {
        cluster.put_eventually(0, &format!("k{n}"), "v").await;
    }
    // Joins without auto-promotion, is killed at once, and restarts as the same member.
    let four = cluster.join_node("node4", &[0], &[("DISTRAFT_AUTO_PROMOTE", "false")]);
    let joined = eventually(Duration::from_secs(20), || async {
        let roles = roles(&cluster, 0).await;
        roles
            .contains_key("node4")
            .then_some(())
            .ok_or(format!("{roles:?}"))
    })
    .await;
    assert!(joined.is_ok(), "{joined:?}\n{}", cluster.output(four));
    cluster.kill(four);
    cluster.restart(four);
    let caught_up = eventually(Duration::from_secs(20), || async {
        let url = distraft::cli::key_url(&cluster.url(four), "k49");
        match cluster
            .request(cluster.http().get(url).query(&[("stale", "true")]))
            .await
        {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(caught_up.is_ok(), "{caught_up:?}\n{}", cluster.output(four));
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_for_roles(
        &cluster,
        0,
        &[
            ("node1", "voter"),
            ("node2", "voter"),
            ("node3", "voter"),
            ("node4", "learner"),
        ],
    )
    .await;
    // A second join of the learner (it may have died before it recorded its identity)
    // is a no-op, answered with the member as it is.
    let me = &cluster.nodes[four];
    let again = json!({
        "name": "node4",
        "peer": format!("127.0.0.1:{}", me.raft_port),
        "client": format!("127.0.0.1:{}", me.http_port),
        "learner": true,
    });
    let members_url = format!("{}/cluster/members", cluster.url(1));
    let (code, answer) = cluster
        .answer(cluster.http().post(&members_url).json(&again))
        .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["index"], 0, "{answer}");
    assert_eq!(answer["member"]["id"], 4, "{answer}");
    // `GET /` lists it among the learners, in the members' shape.
    let status = cluster.status(four).await.unwrap();
    assert_eq!(
        status["learners"]["node4"][1],
        cluster.nodes[four].raft_port
    );
    // The CLI: a learner added by hand (not started: adding a learner costs no
    // quorum), listed, assessed and removed; node4 promoted, asked of the learner.
    let url = |i: usize| cluster.url(i);
    let (ok, out) = run_cli(&[
        "member",
        "add",
        "node9",
        "--peer",
        "127.0.0.1:1",
        "--client",
        "127.0.0.1:2",
        "--learner",
        "--url",
        &url(2),
    ])
    .await;
    assert!(ok && out.contains("\"safe\":true"), "{out}");
    let (ok, out) = run_cli(&["member", "list", "--url", &url(0)]).await;
    assert!(ok && out.contains("\"name\":\"node9\""), "{out}");
    let (ok, out) = run_cli(&["member", "remove", "node9", "--dry-run", "--url", &url(0)]).await;
    assert!(ok && out.contains("\"dry_run\":true"), "{out}");
    let (ok, out) = run_cli(&["member", "remove", "node9", "--url", &url(1)]).await;
    assert!(ok, "{out}");
    let (ok, out) = run_cli(&["member", "remove", "node9", "--url", &url(1)]).await;
    assert!(!ok && out.contains("404"), "removing it twice: {out}");
    let (ok, out) = run_cli(&["member", "promote", "node4", "--url", &url(four)]).await;
    assert!(ok, "{out}");
    let answer: Value = serde_json::from_str(out.lines().next().unwrap_or_default()).unwrap();
    assert_eq!(answer["assessment"]["after"]["voters"], 4, "{answer}");
    wait_for_roles(
        &cluster,
        four,
        &[
            ("node1", "voter"),
            ("node2", "voter"),
            ("node3", "voter"),
            ("node4", "voter"),
        ],
    )
    .await;
    let promote = format!("{}/cluster/members/node4/promote", cluster.url(four));
    let (code, answer) = cluster.answer(cluster.http().post(&promote)).await;
    assert_eq!(code, 409, "promoting a voter again: {answer}");

    // A wipe would take a member back to the bootstrap membership, no longer the
    // cluster's: refused, saying how to replace the member instead.
    cluster.terminate(2);
    cluster.restart_with(2, &[("DISTRAFT_RESET_LOGS", "true")]);
    let mut exited = false;
    for _ in 0..100 {
        if !cluster.alive(2) {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cluster.output(2);
    assert!(
        exited && out.contains("DISTRAFT_RESET_LOGS refused") && out.contains("member remove"),
        "{out}"
    );
}
