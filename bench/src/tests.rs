//! The engine against a fake protocol that records every operation, so that the keys,
//! the read/write mix, the prefill, the counting of operations and errors, the spread
//! over nodes, leader search and the failover clock are checked without a network.
//! (The wire format of each real protocol is tested where its client lives, in
//! distraft's `src/cli/bench/`.)

use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::failover::{self, Failover};
use crate::load::{self, Workload};
use crate::{find_leader, Connection, Protocol, ReadMode};

/// How the fake answers an operation, given the node's URL.
type Answer = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// A fake protocol: every connection records `PUT <url> <key> <value>` or
/// `GET <url> <key> <mode>` and answers with `answer(url)`.
struct Fake {
    answer: Answer,
    multiplexed: bool,
    leader: Option<String>,
    seen: Arc<Mutex<Vec<String>>>,
    opened: Mutex<Vec<String>>,
}

impl Fake {
    fn new(answer: Answer) -> Fake {
        Fake {
            answer,
            multiplexed: false,
            leader: None,
            seen: Arc::default(),
            opened: Mutex::default(),
        }
    }

    fn always_ok() -> Fake {
        Fake::new(Arc::new(|_| Ok(())))
    }

    fn seen(&self) -> Vec<String> {
        let mut seen = self.seen.lock().unwrap().clone();
        seen.sort();
        seen
    }
}

#[derive(Clone)]
struct FakeConnection {
    url: String,
    answer: Answer,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Protocol for Fake {
    type Name = &'static str;
    type Connection = FakeConnection;

    fn name(&self) -> &'static str {
        "fake"
    }

    fn open(&self, url: &str) -> anyhow::Result<FakeConnection> {
        self.opened.lock().unwrap().push(url.to_string());
        Ok(FakeConnection {
            url: url.to_string(),
            answer: self.answer.clone(),
            seen: self.seen.clone(),
        })
    }

    fn multiplexed(&self) -> bool {
        self.multiplexed
    }

    async fn is_leader(&self, url: &str) -> bool {
        self.leader.as_deref() == Some(url)
    }
}

impl Connection for FakeConnection {
    type Value = String;
    type Error = String;

    fn encode(value: &str) -> anyhow::Result<String> {
        Ok(format!("<{value}>"))
    }

    async fn put(&mut self, key: &str, value: &String) -> Result<(), String> {
        let op = format!("PUT {} {key} {value}", self.url);
        self.seen.lock().unwrap().push(op);
        // Like a network round trip, let the other clients run.
        tokio::task::yield_now().await;
        (self.answer)(&self.url)
    }

    async fn get(&mut self, key: &str, mode: ReadMode) -> Result<(), String> {
        let op = format!("GET {} {key} {mode:?}", self.url);
        self.seen.lock().unwrap().push(op);
        // Like a network round trip, let the other clients run.
        tokio::task::yield_now().await;
        (self.answer)(&self.url)
    }
}

fn workload(args: &[&str]) -> Workload {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        workload: Workload,
    }
    let argv = std::iter::once("bench").chain(args.iter().copied());
    Cli::try_parse_from(argv).unwrap().workload
}

fn urls(urls: &[&str]) -> Vec<String> {
    urls.iter().map(|url| url.to_string()).collect()
}

#[tokio::test]
async fn writes_go_to_the_keys_in_turn_wrapping_at_the_key_count() {
    let fake = Fake::always_ok();
    let args = [
        "--ops",
        "7",
        "--clients",
        "3",
        "--keys",
        "5",
        "--value-size",
        "5",
    ];
    let report = load::execute(&fake, urls(&["n1"]), workload(&args))
        .await
        .unwrap();
    assert_eq!((report.ok, report.errors), (7, 0));
    let mut expected: Vec<String> = [0, 1, 2, 3, 4, 0, 1]
        .iter()
        .map(|n| format!("PUT n1 bench-{n} <abcde>"))
        .collect();
    expected.sort();
    assert_eq!(fake.seen(), expected);
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.max >= report.latency_ms.p99);
    assert_eq!((report.target, report.clients, report.keys), ("fake", 3, 5));
}

#[tokio::test]
async fn reads_come_after_a_prefill_of_every_key_unless_told_not_to() {
    let fake = Fake::always_ok();
    let args = [
        "--ops",
        "10",
        "--read-percent",
        "100",
        "--keys",
        "3",
        "--value-size",
        "2",
        "--key-prefix",
        "k",
    ];
    let report = load::execute(&fake, urls(&["n1"]), workload(&args))
        .await
        .unwrap();
    assert_eq!((report.ok, report.errors), (10, 0));
    let seen = fake.seen();
    let prefill: Vec<_> = seen.iter().filter(|op| op.starts_with("PUT")).collect();
    assert_eq!(
        prefill,
        ["PUT n1 k0 <ab>", "PUT n1 k1 <ab>", "PUT n1 k2 <ab>"]
    );
    let reads: Vec<_> = seen.iter().filter(|op| op.starts_with("GET")).collect();
    assert_eq!(reads.len(), 10);
    for read in reads {
        assert!(
            [
                "GET n1 k0 Linearizable",
                "GET n1 k1 Linearizable",
                "GET n1 k2 Linearizable"
            ]
            .contains(&read.as_str()),
            "{read}"
        );
    }

    let fake = Fake::always_ok();
    let args = [
        "--ops",
        "4",
        "--read-percent",
        "100",
        "--reads",
        "stale",
        "--keys",
        "1",
        "--no-prefill",
    ];
    let report = load::execute(&fake, urls(&["n1"]), workload(&args))
        .await
        .unwrap();
    assert_eq!(report.ok, 4);
    assert_eq!(fake.seen(), vec!["GET n1 bench-0 Stale"; 4]);
}

#[tokio::test]
async fn a_failed_prefill_stops_the_run() {
    let fake = Fake::new(Arc::new(|_| Err("refused".to_string())));
    let args = ["--ops", "5", "--read-percent", "50", "--keys", "3"];
    let err = load::execute(&fake, urls(&["n1"]), workload(&args))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}

#[tokio::test]
async fn failures_are_counted_by_label_and_not_timed() {
    let fake = Fake::new(Arc::new(|url| match url {
        "bad" => Err("HTTP 503".to_string()),
        _ => Ok(()),
    }));
    let args = ["--ops", "8", "--clients", "2"];
    let report = load::execute(&fake, urls(&["bad", "good"]), workload(&args))
        .await
        .unwrap();
    assert_eq!(report.ok + report.errors, 8);
    assert!(report.ok > 0 && report.errors > 0);
    assert_eq!(report.error_kinds.get("HTTP 503"), Some(&report.errors));
    assert_eq!(report.error_kinds.len(), 1);

    let fake = Fake::new(Arc::new(|_| Err("timeout".to_string())));
    let report = load::execute(&fake, urls(&["n1"]), workload(&["--ops", "3"]))
        .await
        .unwrap();
    assert_eq!((report.ok, report.errors), (0, 3));
    assert_eq!(report.latency_ms.max, 0.0);
}

#[tokio::test]
async fn clients_are_spread_over_the_nodes_and_share_a_multiplexed_connection() {
    let fake = Fake::always_ok();
    let args = ["--ops", "4", "--clients", "5"];
    load::execute(&fake, urls(&["a", "b"]), workload(&args))
        .await
        .unwrap();
    let mut opened = fake.opened.lock().unwrap().clone();
    opened.sort();
    assert_eq!(opened, ["a", "a", "a", "b", "b"]);

    let mut fake = Fake::always_ok();
    fake.multiplexed = true;
    load::execute(&fake, urls(&["a", "b"]), workload(&args))
        .await
        .unwrap();
    assert_eq!(*fake.opened.lock().unwrap(), ["a", "b"]);

    let err = load::execute(&fake, Vec::new(), workload(&args))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no URL"), "{err}");
}

#[tokio::test]
async fn a_duration_run_stops_on_time() {
    let fake = Fake::new(Arc::new(|_| {
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    }));
    let began = Instant::now();
    let args = ["--duration", "0.3", "--clients", "4"];
    let report = load::execute(&fake, urls(&["n1"]), workload(&args))
        .await
        .unwrap();
    assert!(report.ok > 0);
    assert!(report.elapsed_s >= 0.3);
    assert!(began.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn the_leader_is_found_among_the_nodes_or_not_within_the_wait() {
    let mut fake = Fake::always_ok();
    fake.leader = Some("b".to_string());
    let leader = find_leader(&fake, &urls(&["a", "b"]), Duration::from_secs(2)).await;
    assert_eq!(leader.unwrap(), "b");

    let began = Instant::now();
    let err = find_leader(&fake, &urls(&["a", "c"]), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(began.elapsed() >= Duration::from_millis(200));
    assert_eq!(err.to_string(), "none of a, c leads (waited 200ms)");
}

/// Acknowledges writes while `victim` runs, refuses them for `outage` once it has died,
/// then acknowledges them again.
fn outage_after_death(victim: Child, outage: Duration) -> Answer {
    let state = Mutex::new((victim, None::<Instant>));
    Arc::new(move |_| {
        let mut state = state.lock().unwrap();
        let (victim, died) = &mut *state;
        if died.is_none() && victim.try_wait().unwrap().is_some() {
            *died = Some(Instant::now());
        }
        match died {
            Some(at) if at.elapsed() < outage => Err("HTTP 503".to_string()),
            _ => Ok(()),
        }
    })
}

fn failover_args(args: &[&str]) -> Failover {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        failover: Failover,
    }
    let argv = std::iter::once("failover").chain(args.iter().copied());
    Cli::try_parse_from(argv).unwrap().failover
}

#[tokio::test]
async fn failover_times_the_first_write_acknowledged_after_the_kill() {
    let victim = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = victim.id().to_string();
    let outage = Duration::from_millis(300);
    let fake = Fake::new(outage_after_death(victim, outage));
    let args = failover_args(&[
        "--kill-pid",
        &pid,
        "--warmup",
        "0.2",
        "--interval-ms",
        "5",
        "--max-wait",
        "10",
    ]);
    let report = failover::execute(&fake, urls(&["n1"]), &args)
        .await
        .unwrap();
    assert!(report.acknowledged_before_kill > 0);
    // The fake notices the death at its first probe after the kill (≤ 5 ms later).
    assert!(
        report.failover_ms >= 300.0 && report.failover_ms < 3000.0,
        "{}",
        report.failover_ms
    );
    assert!(fake.seen()[0].ends_with("<failover-probe>"));
}

#[tokio::test]
async fn failover_refuses_a_cluster_that_acknowledges_nothing() {
    let victim = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = victim.id().to_string();
    let fake = Fake::new(Arc::new(|_| Err("HTTP 503".to_string())));
    let args = failover_args(&["--kill-pid", &pid, "--warmup", "0.1"]);
    let err = failover::execute(&fake, urls(&["n1"]), &args)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("warm-up"), "{err}");
    // Nothing was killed.
    let mut victim = victim;
    assert!(victim.try_wait().unwrap().is_none());
    victim.kill().unwrap();
    victim.wait().unwrap();

    let args = failover_args(&["--kill-pid", "1"]);
    let err = failover::execute(&fake, urls(&["n1"]), &args)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a process to kill"), "{err}");
}
