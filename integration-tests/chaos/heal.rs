//! A follower cut off from every peer and then healed must serve linearizable reads
//! again within about one heartbeat/election round (issue #4, item 2: it answered 503
//! for up to 6 s).
//!
//! One cluster goes through a cut-and-heal cycle for each of [`CUTS`] (or
//! `DISTRAFT_HEAL_TRIALS` cycles of `DISTRAFT_HEAL_CUT_MS`); each prints its time to the
//! first successful read after healing. `DISTRAFT_HEAL_LOGS=DIR`
//! keeps the nodes' output there (with `DISTRAFT_CHAOS_LOG_LEVEL=debug` to study it);
//! `DISTRAFT_HEAL_FLOW=drop|reject` cuts with another [`Flow`] than `Lose`.

use std::time::{Duration, Instant};

use distraft::proto::v1::{kv_client::KvClient, GetRequest, PutRequest};
use tonic::transport::Channel;

use crate::cluster::{Address, ChaosCluster};
use crate::harness::{eventually, CONVERGE};
use crate::proxy::Flow;

/// What a healed follower may take to serve a read again: a couple of election
/// timeouts (harness: 0.25 s, spread up to 0.5 s) plus slack for a busy 2-core machine.
const HEALED_WITHIN: Duration = Duration::from_secs(1);
/// How long each trial cuts the follower off: shorter than the time a dead connection
/// takes to be noticed (it is still dead after the heal), and longer (noticed and
/// replaced while cut off, and the follower campaigned in vain).
const CUTS: [Duration; 4] = [
    Duration::from_millis(300),
    Duration::from_millis(700),
    Duration::from_millis(1200),
    Duration::from_millis(3000),
];
/// Deadline of each probing read: short, so that a read stuck in a dead path does not
/// hide a faster one.
const PROBE_DEADLINE: Duration = Duration::from_millis(300);

fn kv(node: &Address) -> KvClient<Channel> {
    let channel = node
        .endpoint()
        .connect_timeout(PROBE_DEADLINE)
        .connect_lazy();
    KvClient::new(channel)
}

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// Reads `key` through `client` until it returns `value`; the time it took and the
/// failures seen on the way.
async fn first_read(
    client: &mut KvClient<Channel>,
    key: &str,
    value: &str,
    within: Duration,
) -> (Option<Duration>, Vec<String>) {
    let start = Instant::now();
    let mut failures = Vec::new();
    while start.elapsed() < within {
        let get = GetRequest {
            key: key.into(),
            stale: false,
        };
        // The client's own timeout as well: the answer must not hang past the deadline.
        let answer = tokio::time::timeout(
            PROBE_DEADLINE * 2,
            client.get(with_deadline(get, PROBE_DEADLINE)),
        )
        .await;
        let at = start.elapsed();
        match answer {
            Ok(Ok(answer)) if answer.get_ref().value == value => return (Some(at), failures),
            Ok(Ok(answer)) => failures.push(format!("{at:.2?}: stale {:?}", answer.get_ref())),
            Ok(Err(status)) => failures.push(format!(
                "{at:.2?}: {:?} {}",
                status.code(),
                status.message()
            )),
            Err(_) => failures.push(format!("{at:.2?}: no answer")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (None, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_follower_serves_reads_promptly() {
    let flow = match std::env::var("DISTRAFT_HEAL_FLOW").as_deref() {
        Ok("drop") => Flow::Drop,
        Ok("reject") => Flow::Reject,
        _ => Flow::Lose,
    };
    let env = |name| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let cuts = match (env("DISTRAFT_HEAL_CUT_MS"), env("DISTRAFT_HEAL_TRIALS")) {
        (Some(ms), trials) => vec![Duration::from_millis(ms); trials.unwrap_or(1) as usize],
        (None, _) => CUTS.to_vec(),
    };
    let cluster = ChaosCluster::start(3).await;
    let nodes = cluster.addresses();
    let mut report = Vec::new();
    for (trial, cut_for) in cuts.into_iter().enumerate() {
        let leader = eventually(CONVERGE, || async {
            cluster
                .leader()
                .await
                .ok_or_else(|| "no leader".to_string())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.outputs()));
        let follower = (leader + 1) % nodes.len();
        let mut reads = kv(&nodes[follower]);
        let mut writes = kv(&nodes[leader]);
        let key = format!("heal-{trial}");

        // Warm: the follower serves reads, its peer connections are up.
        let put = |value: &str| PutRequest {
            key: key.clone(),
            value: value.into(),
            precondition: None,
        };
        writes.put(put("before")).await.unwrap();
        let (warm, failures) = first_read(&mut reads, &key, "before", CONVERGE).await;
        assert!(warm.is_some(), "no read before the cut: {failures:?}");

        // A network that loses everything around the follower, as `docker network
        // disconnect` does: its open connections stay dead after the heal.
        let cuts: Vec<(usize, usize)> = (0..nodes.len())
            .filter(|&peer| peer != follower)
            .flat_map(|peer| [(follower, peer), (peer, follower)])
            .collect();
        cluster.network().apply(&cuts, flow);
        println!(
            "trial {trial}: {} cut off for {cut_for:?}",
            nodes[follower].name
        );
        // Written while cut off: the follower has to catch up before it can serve it.
        writes.put(put("during")).await.unwrap();
        tokio::time::sleep(cut_for).await;

        cluster.network().heal();
        println!("trial {trial}: healed");
        let (took, failures) = first_read(&mut reads, &key, "during", CONVERGE).await;
        println!("trial {trial}: first read after {took:?}; failures before it: {failures:?}");
        report.push((trial, took, failures));
    }
    // Keep the nodes' full output for study (the cluster's directory is deleted).
    if let Ok(dir) = std::env::var("DISTRAFT_HEAL_LOGS") {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, node) in nodes.iter().enumerate() {
            let to = std::path::Path::new(&dir).join(format!("{}.out", node.name));
            std::fs::copy(cluster.output(i), to).unwrap();
        }
    }
    for (trial, took, failures) in &report {
        assert!(
            took.is_some_and(|t| t < HEALED_WITHIN),
            "trial {trial}: the healed follower served its first read after {took:?} \
             (bound {HEALED_WITHIN:?}); failures: {failures:?}\n{}",
            cluster.outputs()
        );
    }
}
