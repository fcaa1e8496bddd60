//! Chaos runs: real `distraft` processes on loopback, concurrent clients, and a seeded
//! nemesis that kills (`kill -9`), stops (Admin), pauses (SIGSTOP) and partitions nodes
//! (symmetric, one-way, leader isolation, bridge) through a proxy on every link, whose
//! cut directions hold bytes back, reset connections or lose them for good, and, as an
//! operator, moves leadership and replaces members (removed, wiped, joined again as a
//! new member with DISTRAFT_JOIN). A replaced node advertises its own address when it
//! joins, so the links to it bypass the proxies from then on. Each run
//! then heals everything and demands that
//! - the whole history (every request's call, return and answer, plus a read of every
//!   key from every node after healing) is linearizable, as decided by
//!   `distraft_testkit::linearizability`;
//! - every request got an answer a correct node may give (never INTERNAL, DATA_LOSS or
//!   HTTP 500), and the final reads are answered;
//! - the cluster stayed available: at least [`MIN_OK_SHARE`] of the requests succeeded
//!   and no stretch longer than [`MAX_WRITE_GAP`] went without a successful write (an
//!   all-failed history is trivially linearizable);
//! - every node converges to the same state (same `last_applied` and `state_digest`
//!   after a final write);
//! - a compare-and-set counter, incremented by [`COUNTER_TASKS`] tasks meanwhile,
//!   counts every acknowledged increment and no more than the unknown ones besides,
//!   with no more conflicts than its increments can explain (`counter.rs`);
//! - a watcher of that counter, resuming on random nodes whenever its stream breaks,
//!   saw every acknowledged increment once, in order, or a resync covering it, and
//!   ends at the final counter (`watcher.rs`).
//!
//! `cargo test --test chaos` runs the CI schedule: seeds 1, 2 and 3, 45 s each.
//! Environment variables change it (for long soaks, or to replay a seed):
//! - `DISTRAFT_CHAOS_SECONDS`: the length of each run (default 45);
//! - `DISTRAFT_CHAOS_SEED`: the first seed (default 1);
//! - `DISTRAFT_CHAOS_RUNS`: how many runs, with consecutive seeds (default 3, or 1 when
//!   a seed is given);
//! - `DISTRAFT_CHAOS_NODES`: the cluster size (default 5);
//! - `DISTRAFT_CHAOS_CLIENTS`: concurrent clients (default 8).
//!
//! A second test repeats one short run with mutual TLS on every link (peers through
//! the proxies, and the clients): seed `DISTRAFT_CHAOS_TLS_SEED` (default 4) for
//! `DISTRAFT_CHAOS_TLS_SECONDS` (default 20).
//!
//! Add `-- --nocapture` to watch the nemesis and read each run's figures.

mod cluster;
mod counter;
mod heal;
mod nemesis;
mod proxy;
mod watcher;
mod workload;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use distraft::proto::v1::{kv_client::KvClient, PutRequest};
// The integration tests' harness: this target uses its ports, timings and polling.
use distraft_testkit::harness;
use distraft_testkit::linearizability::{
    check, CheckError, CheckStats, KvOp, KvOutcome, Operation,
};

use cluster::ChaosCluster;
use harness::{eventually, CONVERGE};
use nemesis::Nemesis;
use workload::{clock, final_reads, merge_failures, Client, ClientLog, TRANSPORT};

/// The least share of the clients' requests that must succeed. Measured with every
/// fault kind (Lose included) on a busy 2-core machine, 5 nodes, 8 clients: 90.7%,
/// 88.4% and 80.3% for seeds 1-3 (45 s), 79.6% for the TLS run (seed 4, 20 s).
const MIN_OK_SHARE: f64 = 0.5;
/// The longest time the cluster may go without a successful write. Measured as above:
/// 1.45 s, 1.52 s, 2.99 s and 1.57 s. A paused leader holds the requests sent to it for
/// up to the clients' 3 s timeout while the others elect a new one within an election
/// timeout or two; past this bound the cluster was unavailable, not merely faulty.
const MAX_WRITE_GAP: Duration = Duration::from_secs(8);

struct Settings {
    seconds: u64,
    first_seed: u64,
    runs: u64,
    nodes: usize,
    clients: u64,
}

impl Settings {
    fn from_env() -> Settings {
        let seed = env_number("DISTRAFT_CHAOS_SEED");
        Settings {
            seconds: env_number("DISTRAFT_CHAOS_SECONDS").unwrap_or(45),
            first_seed: seed.unwrap_or(1),
            runs: env_number("DISTRAFT_CHAOS_RUNS").unwrap_or(if seed.is_some() { 1 } else { 3 }),
            nodes: env_number("DISTRAFT_CHAOS_NODES").map_or(5, |n| n as usize),
            clients: env_number("DISTRAFT_CHAOS_CLIENTS").unwrap_or(8),
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(number) => Some(number),
        Err(e) => panic!("{name}={value:?}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_under_faults_are_linearizable_and_replicas_converge() {
    let settings = Settings::from_env();
    assert!(settings.nodes >= 3, "chaos needs at least 3 nodes");
    let mut summaries = Vec::new();
    for seed in settings.first_seed..settings.first_seed + settings.runs {
        summaries.push(run(seed, &settings, false).await);
    }
    println!("\n===== chaos: {} runs", summaries.len());
    for summary in &summaries {
        println!("{summary}");
    }
}

/// The same checks with mutual TLS on: handshakes go through the faulty proxies too,
/// and reconnecting after a partition or a restart means a new handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_mutual_tls_histories_under_faults_are_linearizable_and_replicas_converge() {
    let settings = Settings {
        seconds: env_number("DISTRAFT_CHAOS_TLS_SECONDS").unwrap_or(20),
        ..Settings::from_env()
    };
    let seed = env_number("DISTRAFT_CHAOS_TLS_SEED").unwrap_or(4);
    println!(
        "\n===== chaos with TLS: {}",
        run(seed, &settings, true).await
    );
}

/// One run (with mutual TLS if `tls`): returns its one-line summary, panics with the
/// evidence on failure.
/// Compare-and-set increment tasks beside the clients (`counter.rs`).
const COUNTER_TASKS: u64 = 2;

async fn run(seed: u64, settings: &Settings, tls: bool) -> String {
    println!(
        "===== chaos run: seed {seed}, {} s, {} nodes, {} clients{}",
        settings.seconds,
        settings.nodes,
        settings.clients,
        if tls { ", mutual TLS" } else { "" }
    );
    let mut cluster = match tls {
        true => ChaosCluster::start_tls(settings.nodes).await,
        false => ChaosCluster::start(settings.nodes).await,
    };
    let leader = eventually(CONVERGE, || async {
        cluster
            .leader()
            .await
            .ok_or_else(|| "no leader".to_string())
    })
    .await;
    if let Err(e) = leader {
        fail(
            &cluster,
            &format!("the cluster never elected a leader: {e}"),
        );
    }

    let origin = Instant::now();
    let until = origin + Duration::from_secs(settings.seconds);
    let nodes = Arc::new(cluster.addresses());
    let clients: Vec<_> = (0..settings.clients)
        .map(|id| {
            let client = Client::new(id, nodes.clone(), origin);
            tokio::spawn(client.run(seed * 1000 + id, until))
        })
        .collect();
    let counters: Vec<_> = (0..COUNTER_TASKS)
        .map(|task| {
            tokio::spawn(counter::increment(
                nodes.clone(),
                seed * 1000 + 500 + task,
                until,
            ))
        })
        .collect();
    // The counter's watcher: resumes on random nodes until it has seen the final
    // counter (the index is sent once the counter is read after healing).
    let (watch_until, watch_stop) = tokio::sync::watch::channel(None);
    let watcher = tokio::spawn(watcher::follow(
        nodes.clone(),
        seed * 1000 + 900,
        watch_stop,
        until + 4 * CONVERGE,
    ));
    let mut nemesis = Nemesis::new(seed, origin);
    nemesis.run(&mut cluster, until).await;
    let end = clock(origin);
    let mut logs = Vec::new();
    for client in clients {
        logs.push(client.await.unwrap());
    }
    let mut tally = counter::Tally::default();
    let mut acked = Vec::new();
    for task in counters {
        let (counted, increments, unexpected) = task.await.unwrap();
        tally.add(counted);
        acked.extend(increments);
        logs.push(ClientLog {
            unexpected,
            ..ClientLog::default()
        });
    }

    // Safety before liveness: the history is judged before any complaint about
    // unanswered requests or diverging replicas.
    logs.push(final_reads(nodes.clone(), origin, settings.clients, CONVERGE).await);
    let figures = Figures::of(&logs[..logs.len() - 1], end);
    let unexpected: Vec<String> = logs.iter().flat_map(|l| l.unexpected.clone()).collect();
    let routes: Vec<String> = logs.iter().flat_map(|l| l.routes.clone()).collect();
    let history: Vec<Operation> = logs.into_iter().flat_map(|l| l.history).collect();
    let checked = Instant::now();
    let verdict = tokio::task::spawn_blocking(move || check(&history))
        .await
        .unwrap();
    let stats = match verdict {
        Ok(stats) => stats,
        Err(CheckError::NotLinearizable(violation)) => {
            let sent: Vec<String> = violation
                .evidence
                .iter()
                .map(|(index, _)| format!("  #{index} went to {}", routes[*index]))
                .collect();
            fail(
                &cluster,
                &format!("seed {seed}: {violation}\n{}", sent.join("\n")),
            )
        }
        Err(e) => fail(&cluster, &format!("seed {seed}: {e}")),
    };
    let check_time = checked.elapsed();
    if let Some(first) = unexpected.first() {
        let count = unexpected.len();
        fail(
            &cluster,
            &format!("{count} answers no correct node gives, first: {first}"),
        );
    }
    for (kind, (count, first)) in &figures.failures {
        println!("  {count:5} × {kind}, first: {first}");
    }
    let ok_share = figures.ok as f64 / figures.ops.max(1) as f64;
    if ok_share < MIN_OK_SHARE {
        fail(
            &cluster,
            &format!(
                "seed {seed}: only {} of {} requests succeeded ({:.1}%, at least {:.0}% expected)",
                figures.ok,
                figures.ops,
                100.0 * ok_share,
                100.0 * MIN_OK_SHARE
            ),
        );
    }
    if figures.longest_without_write > MAX_WRITE_GAP {
        fail(
            &cluster,
            &format!(
                "seed {seed}: {:.2} s without a successful write (at most {:.2?} expected)",
                figures.longest_without_write.as_secs_f64(),
                MAX_WRITE_GAP
            ),
        );
    }
    let (applied, digest) = converge(&cluster, seed).await;
    let (count, counter_index) = match counter::final_value(&nodes, CONVERGE).await {
        Ok(read) => read,
        Err(e) => fail(
            &cluster,
            &format!("seed {seed}: reading the CAS counter: {e}"),
        ),
    };
    if let Err(e) = counter::judge(count, tally, COUNTER_TASKS) {
        fail(&cluster, &format!("seed {seed}: {e}"));
    }
    let _ = watch_until.send(Some(counter_index));
    let watched = watcher.await.unwrap();
    if let Some(first) = watched.unexpected.first() {
        fail(&cluster, &format!("seed {seed}: the watcher: {first}"));
    }
    if let Err(e) = watcher::judge(&watched, &acked, count) {
        fail(&cluster, &format!("seed {seed}: {e}"));
    }

    let summary = format!(
        "seed {seed}: {} ops, {} ok ({:.1}% available), {} failed indeterminately ({} of them \
         transport failures), {} unknown writes, longest without a successful write {:.2} s; \
         faults {:?}; checked {} ops on {} keys in {:.2} s (max {} steps/key): linearizable; \
         {} nodes converged at index {applied}, digest {digest}; CAS counter {count}: {} \
         increments acknowledged, {} unknown, {} conflicts; its watcher saw {} changes \
         and {} resyncs over {} streams",
        figures.ops,
        figures.ok,
        100.0 * ok_share,
        figures.ops - figures.ok,
        figures.transport,
        stats.unknown,
        figures.longest_without_write.as_secs_f64(),
        nemesis.injected,
        stats.ops,
        stats.keys,
        check_time.as_secs_f64(),
        max_steps(&stats),
        settings.nodes,
        tally.acked,
        tally.unknown,
        tally.conflicts,
        watched.seen.len() as u64 - watched.resyncs,
        watched.resyncs,
        watched.streams,
    );
    println!("{summary}");
    summary
}

/// After healing: a final write, then every node up and at the same applied index with
/// the same state digest. Returns that index and digest.
async fn converge(cluster: &ChaosCluster, seed: u64) -> (u64, String) {
    let nodes = cluster.addresses();
    let written = eventually(CONVERGE, || async {
        let channel = nodes[0].endpoint().connect().await;
        let mut kv = KvClient::new(channel.map_err(|e| e.to_string())?);
        let put = PutRequest {
            key: "chaos-final".into(),
            value: format!("seed {seed}"),
            precondition: None,
        };
        let answer = kv.put(put).await.map_err(|s| s.to_string())?;
        Ok(answer.into_inner().index)
    })
    .await;
    let index = written.unwrap_or_else(|e| fail(cluster, &format!("no final write: {e}")));
    let converged = eventually(CONVERGE, || async {
        let mut states = Vec::new();
        for i in 0..cluster.size() {
            let status = cluster.status(i).await.map_err(|s| s.to_string())?;
            if !status.up || status.last_applied < index {
                return Err(format!("{} is behind: {status:?}", status.id));
            }
            states.push((status.id, status.last_applied, status.state_digest));
        }
        let (_, applied, digest) = states[0].clone();
        match states.iter().all(|(_, a, d)| (*a, d) == (applied, &digest)) {
            true => Ok((applied, digest)),
            false => Err(format!("replicas differ: {states:?}")),
        }
    })
    .await;
    converged.unwrap_or_else(|e| fail(cluster, &format!("no convergence: {e}")))
}

/// Availability figures of the clients' requests (the final reads are not counted).
struct Figures {
    ops: usize,
    ok: usize,
    longest_without_write: Duration,
    /// Indeterminate failures by kind (see [`ClientLog::failures`]).
    failures: BTreeMap<String, (usize, String)>,
    /// How many of them were transport failures rather than a node's answer.
    transport: usize,
}

impl Figures {
    fn of(logs: &[ClientLog], end: u64) -> Figures {
        let ops = logs.iter().flat_map(|l| &l.history);
        let ok = ops
            .clone()
            .filter(|op| op.outcome != KvOutcome::Unknown)
            .count();
        let mut writes: Vec<u64> = ops
            .clone()
            .filter(|op| !matches!(op.op, KvOp::Get { .. }) && op.outcome != KvOutcome::Unknown)
            .map(|op| op.ret)
            .collect();
        writes.sort_unstable();
        let mut longest = 0;
        let mut previous = 0;
        for ret in writes.into_iter().chain([end]) {
            longest = longest.max(ret.saturating_sub(previous));
            previous = ret;
        }
        let mut failures = BTreeMap::new();
        for log in logs {
            merge_failures(&mut failures, log.failures.clone());
        }
        let transport = failures
            .iter()
            .filter(|(kind, _)| kind.starts_with(TRANSPORT))
            .map(|(_, (count, _))| count)
            .sum();
        Figures {
            ops: ops.count(),
            ok,
            longest_without_write: Duration::from_nanos(longest),
            failures,
            transport,
        }
    }
}

fn max_steps(stats: &CheckStats) -> u64 {
    stats.per_key.iter().map(|k| k.steps).max().unwrap_or(0)
}

/// Fails the run with `reason` (see [`ChaosCluster::fail`]).
fn fail(cluster: &ChaosCluster, reason: &str) -> ! {
    cluster.fail(reason)
}
