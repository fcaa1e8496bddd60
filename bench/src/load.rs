//! The load run: C clients, each with its own connection, each sending one request at
//! a time (closed loop) until the duration or the op count is used up.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use serde::Serialize;

use crate::{Connection, Protocol, ReadMode};

/// What a load run does (the cluster and protocol are the caller's).
#[derive(Debug, Args)]
pub struct Workload {
    /// Concurrent clients, each with its own connection and one request in flight.
    #[arg(long, short = 'c', default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,
    /// Seconds to run (ignored with --ops).
    #[arg(long, short = 'd', default_value_t = 10.0, value_parser = crate::positive_seconds)]
    pub duration: f64,
    /// Stop after this many operations instead of after --duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: Option<u64>,
    /// Percentage of operations that are reads (the rest are writes).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub read_percent: u8,
    /// How reads are served.
    #[arg(long, value_enum, default_value_t = ReadMode::Linearizable)]
    pub reads: ReadMode,
    /// Keys in play. Writes go to key 0, 1, 2, … in turn (distinct keys until the count
    /// wraps); reads pick keys at random.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub value_size: u64,
    /// Prefix of every key, so that runs can use separate key spaces.
    #[arg(long, default_value = "bench-")]
    pub key_prefix: String,
    /// Do not write every key before a run with reads (reads of missing keys fail).
    #[arg(long)]
    pub no_prefill: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What the clients share while running; `V` is the value as the protocol sends it.
struct Shared<V> {
    workload: Workload,
    value: V,
    /// Operations started (for --ops).
    started: AtomicU64,
    /// Next key to write.
    next_write: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl<V> Shared<V> {
    fn key(&self, n: u64) -> String {
        format!("{}{}", self.workload.key_prefix, n % self.workload.keys)
    }

    /// Claims the right to start one more operation.
    fn claim(&self, until: Instant) -> bool {
        match self.workload.ops {
            Some(ops) => self.started.fetch_add(1, Ordering::Relaxed) < ops,
            None => Instant::now() < until,
        }
    }
}

/// One client's results.
struct ClientResult {
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

/// Latencies are recorded in microseconds, from 1 µs to 10 min, 3 significant digits.
fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("creating a latency histogram")
}

/// Runs `workload` against the nodes at `urls`, prints the report (and writes it as
/// JSON with --json); fails if no operation succeeded.
pub async fn run<P: Protocol>(
    protocol: &P,
    urls: Vec<String>,
    workload: Workload,
) -> anyhow::Result<()> {
    let json = workload.json.clone();
    let report = execute(protocol, urls, workload).await?;
    report.print();
    if let Some(path) = &json {
        crate::write_json(path, &report)?;
    }
    if report.ok == 0 {
        bail!("no operation succeeded");
    }
    Ok(())
}

/// Prefills if needed, runs the clients, and gathers their results.
pub async fn execute<P: Protocol>(
    protocol: &P,
    urls: Vec<String>,
    workload: Workload,
) -> anyhow::Result<Report<P::Name>> {
    if urls.is_empty() {
        bail!("no URL to load");
    }
    let value = P::Connection::encode(&bench_value(workload.value_size))?;
    let connections = open_connections(protocol, workload.clients, &urls)?;
    let shared = Arc::new(Shared {
        workload,
        value,
        started: AtomicU64::new(0),
        next_write: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    if shared.workload.read_percent > 0 && !shared.workload.no_prefill {
        prefill(&shared, &connections).await?;
    }

    let progress = progress_bar(&shared.workload);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(shared.workload.duration);
    let clients: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(index, connection)| {
            let shared = shared.clone();
            tokio::spawn(client(shared, connection, until, index as u64))
        })
        .collect();
    let ticker = progress.clone().map(|bar| {
        let shared = shared.clone();
        tokio::spawn(async move { show_progress(&bar, &shared, started).await })
    });

    let mut latency_us = new_histogram()?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for handle in clients {
        let result = handle.await.context("a client task failed")??;
        latency_us
            .add(&result.latency_us)
            .context("merging latency histograms")?;
        for (label, count) in result.errors {
            *errors.entry(label).or_default() += count;
        }
    }
    let elapsed = started.elapsed();
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }

    Ok(Report::new(
        protocol.name(),
        &shared.workload,
        urls,
        elapsed,
        &latency_us,
        errors,
    ))
}

/// A value of `size` printable bytes (no form escaping needed, like a typical value).
fn bench_value(size: u64) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..size)
        .map(|i| char::from(ALPHABET[(i % ALPHABET.len() as u64) as usize]))
        .collect()
}

/// One connection per client, spread round-robin over the nodes (`urls` is not empty).
fn open_connections<P: Protocol>(
    protocol: &P,
    clients: u32,
    urls: &[String],
) -> anyhow::Result<Vec<P::Connection>> {
    // A multiplexing protocol: clients on the same node share its one connection.
    let per_node = match protocol.multiplexed() {
        true => Some(
            urls.iter()
                .map(|url| protocol.open(url))
                .collect::<anyhow::Result<Vec<_>>>()?,
        ),
        false => None,
    };
    (0..clients as usize)
        .map(|client| {
            let node = client % urls.len();
            match &per_node {
                Some(connections) => Ok(connections[node].clone()),
                None => protocol.open(&urls[node]),
            }
        })
        .collect()
}

/// Writes every key once, so that reads find them; fails on the first error.
async fn prefill<C: Connection>(
    shared: &Arc<Shared<C::Value>>,
    connections: &[C],
) -> anyhow::Result<()> {
    let keys = shared.workload.keys;
    let writers = connections.len() as u64;
    let tasks: Vec<_> = connections
        .iter()
        .cloned()
        .enumerate()
        .map(|(index, mut connection)| {
            let shared = shared.clone();
            tokio::spawn(async move {
                for n in (index as u64..keys).step_by(writers as usize) {
                    let key = shared.key(n);
                    connection
                        .put(&key, &shared.value)
                        .await
                        .map_err(|err| anyhow::anyhow!("prefilling {key}: {err}"))?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await.context("a prefill task failed")??;
    }
    Ok(())
}

/// One closed-loop client.
async fn client<C: Connection>(
    shared: Arc<Shared<C::Value>>,
    mut connection: C,
    until: Instant,
    seed: u64,
) -> anyhow::Result<ClientResult> {
    let workload = &shared.workload;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut latency_us = new_histogram()?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    while shared.claim(until) {
        let read = rng.random_range(0..100u8) < workload.read_percent;
        let began = Instant::now();
        let outcome: Result<(), C::Error> = if read {
            let key = shared.key(rng.random_range(0..workload.keys));
            connection.get(&key, workload.reads).await
        } else {
            let key = shared.key(shared.next_write.fetch_add(1, Ordering::Relaxed));
            connection.put(&key, &shared.value).await
        };
        match outcome {
            Ok(()) => {
                let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                latency_us.saturating_record(micros.max(1));
                shared.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                *errors.entry(err.to_string()).or_default() += 1;
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(ClientResult { latency_us, errors })
}

/// A progress bar on stderr, only when it is a terminal.
fn progress_bar(workload: &Workload) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let (length, template) = match workload.ops {
        Some(ops) => (ops, "{bar:40} {pos}/{len} ops  {msg}"),
        None => (
            (workload.duration * 10.0).ceil() as u64,
            "{bar:40} {elapsed}  {msg}",
        ),
    };
    let style = ProgressStyle::with_template(template).ok()?;
    Some(ProgressBar::new(length).with_style(style))
}

async fn show_progress<V>(bar: &ProgressBar, shared: &Shared<V>, started: Instant) {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        interval.tick().await;
        let ok = shared.ok.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let seconds = started.elapsed().as_secs_f64();
        match shared.workload.ops {
            Some(_) => bar.set_position(ok + failed),
            None => bar.set_position((seconds * 10.0) as u64),
        }
        bar.set_message(format!(
            "{ok} ok, {failed} errors, {:.0} ops/s",
            ok as f64 / seconds.max(1e-3)
        ));
    }
}

/// The results of a run, as printed and as JSON; `N` names the protocol.
#[derive(Debug, Serialize)]
pub struct Report<N> {
    pub target: N,
    pub urls: Vec<String>,
    pub clients: u32,
    pub read_percent: u8,
    pub reads: ReadMode,
    pub keys: u64,
    pub value_size: u64,
    pub elapsed_s: f64,
    pub ok: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    /// Successful operations per second.
    pub throughput: f64,
    pub latency_ms: Latency,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl<N: std::fmt::Debug> Report<N> {
    fn new(
        target: N,
        workload: &Workload,
        urls: Vec<String>,
        elapsed: Duration,
        latency_us: &Histogram<u64>,
        error_kinds: BTreeMap<String, u64>,
    ) -> Report<N> {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let ok = latency_us.len();
        let elapsed_s = elapsed.as_secs_f64();
        Report {
            target,
            urls,
            clients: workload.clients,
            read_percent: workload.read_percent,
            reads: workload.reads,
            keys: workload.keys,
            value_size: workload.value_size,
            elapsed_s,
            ok,
            errors: error_kinds.values().sum(),
            error_kinds,
            throughput: ok as f64 / elapsed_s.max(1e-9),
            latency_ms: Latency {
                mean: latency_us.mean() / 1000.0,
                p50: ms(latency_us.value_at_quantile(0.50)),
                p90: ms(latency_us.value_at_quantile(0.90)),
                p99: ms(latency_us.value_at_quantile(0.99)),
                p99_9: ms(latency_us.value_at_quantile(0.999)),
                max: ms(latency_us.max()),
            },
        }
    }

    fn print(&self) {
        let mix = match self.read_percent {
            0 => "writes".to_string(),
            100 => format!("{:?} reads", self.reads).to_lowercase(),
            reads => format!("{reads}% {:?} reads", self.reads).to_lowercase(),
        };
        println!(
            "{:?} at {}: {} clients, {mix}, {}-byte values, {} keys, {:.1} s",
            self.target,
            self.urls.join(","),
            self.clients,
            self.value_size,
            self.keys,
            self.elapsed_s
        );
        println!(
            "  {:.0} ops/s ({} ok, {} errors)",
            self.throughput, self.ok, self.errors
        );
        let l = &self.latency_ms;
        println!(
            "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
            l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean
        );
        for (label, count) in &self.error_kinds {
            println!("  error {label}: {count}");
        }
    }
}
