//! Watch benchmarks (issue #20's targets), against a running cluster (see
//! `bench/watch.sh`, which starts one and runs both):
//!
//! - `latency WRITE_GRPC WATCH_GRPC [WRITES]`: a watcher on one node (a follower, say)
//!   follows the prefix `wbench/`; writes go one at a time to another node (the
//!   leader). For each write, the time from its acknowledgement reaching the writer to
//!   its event reaching the watcher (0 when the event came first). Prints percentiles.
//! - `idle GRPC WATCHERS`: opens that many watches of distinct keys on one node,
//!   waits until every one is registered (its first progress message), prints
//!   `registered N`, holds them until standard input closes, then checks that a
//!   write to one of the keys still reaches its watcher. The script reads the node's
//!   memory meanwhile.
//!
//! Run: `cargo run --release --example watch_bench -- latency http://127.0.0.1:9001 http://127.0.0.1:9002`.

use std::collections::HashMap;
use std::io::Read as _;
use std::time::{Duration, Instant};

use distraft::proto::v1::{kv_client::KvClient, PutRequest, WatchRequest};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

const PREFIX: &str = "wbench/";
/// gRPC streams per connection in the idle test (HTTP/2 servers cap concurrent streams
/// per connection; tonic's default is far above this).
const STREAMS_PER_CONNECTION: usize = 100;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["latency", write, watch, rest @ ..] => {
            let writes = rest.first().map(|n| n.parse()).transpose()?.unwrap_or(2000);
            latency(write, watch, writes).await
        }
        ["idle", node, watchers] => idle(node, watchers.parse()?).await,
        _ => Err(
            "usage: watch_bench latency WRITE_GRPC WATCH_GRPC [WRITES] | idle GRPC WATCHERS".into(),
        ),
    }
}

async fn channel(uri: &str) -> Result<Channel, Box<dyn std::error::Error>> {
    Ok(Endpoint::from_shared(uri.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

async fn latency(
    write: &str,
    watch: &str,
    writes: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut writer = KvClient::new(channel(write).await?);
    let mut watcher = KvClient::new(channel(watch).await?);
    let mut stream = watcher
        .watch(WatchRequest {
            key: PREFIX.into(),
            prefix: true,
            start_index: 0,
        })
        .await?
        .into_inner();
    // The first message: registered, up to date.
    stream.message().await?.ok_or("the watch ended at once")?;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let reader = tokio::spawn(async move {
        while let Ok(Some(message)) = stream.message().await {
            let now = Instant::now();
            for event in message.events {
                if seen_tx.send((event.index, now)).is_err() {
                    return;
                }
            }
        }
    });
    let mut acked = Vec::with_capacity(writes);
    let started = Instant::now();
    for n in 0..writes {
        let answer = writer
            .put(PutRequest {
                key: format!("{PREFIX}{}", n % 100),
                value: format!("v{n}"),
                precondition: None,
            })
            .await?
            .into_inner();
        acked.push((answer.index, Instant::now()));
    }
    let elapsed = started.elapsed();
    let mut seen = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < writes && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), seen_rx.recv()).await {
            Ok(Some((index, at))) => {
                seen.insert(index, at);
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    reader.abort();
    let mut delays = Vec::with_capacity(writes);
    let mut first = 0;
    let mut missing = 0;
    for (index, acked_at) in &acked {
        match seen.get(index) {
            Some(at) if at >= acked_at => delays.push(*at - *acked_at),
            Some(_) => {
                first += 1;
                delays.push(Duration::ZERO);
            }
            None => missing += 1,
        }
    }
    delays.sort();
    let pct = |p: f64| {
        delays
            .get(((delays.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map(|d| format!("{:.2} ms", d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "latency: {writes} writes in {:.1} s; acknowledgement to event: p50 {} p90 {} p99 {} max {}; {first} events came before their acknowledgement; {missing} missing",
        elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0),
    );
    if missing > 0 {
        return Err(format!("{missing} events never arrived").into());
    }
    Ok(())
}

async fn idle(node: &str, watchers: usize) -> Result<(), Box<dyn std::error::Error>> {
    let connections = watchers.div_ceil(STREAMS_PER_CONNECTION).max(1);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(KvClient::new(channel(node).await?));
    }
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let (event_tx, mut event_rx) = mpsc::unbounded_channel::<String>();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(watchers);
    for n in 0..watchers {
        let mut client = clients[n % connections].clone();
        let (ready_tx, event_tx) = (ready_tx.clone(), event_tx.clone());
        tasks.push(tokio::spawn(async move {
            let key = format!("{PREFIX}idle/{n}");
            let Ok(answer) = client
                .watch(WatchRequest {
                    key: key.clone(),
                    prefix: false,
                    start_index: 0,
                })
                .await
            else {
                return;
            };
            let mut stream = answer.into_inner();
            if let Ok(Some(_)) = stream.message().await {
                let _ = ready_tx.send(());
            }
            while let Ok(Some(message)) = stream.message().await {
                if !message.events.is_empty() {
                    let _ = event_tx.send(key.clone());
                }
            }
        }));
    }
    drop(ready_tx);
    let mut registered = 0;
    while registered < watchers {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(())) => registered += 1,
            _ => break,
        }
    }
    println!(
        "registered {registered} of {watchers} watchers in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Held until the script has measured the node.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    // Still alive: a write to a watched key reaches its watcher.
    let target = format!("{PREFIX}idle/{}", watchers / 2);
    clients[0]
        .put(PutRequest {
            key: target.clone(),
            value: "wake".into(),
            precondition: None,
        })
        .await?;
    let woke = tokio::time::timeout(Duration::from_secs(10), event_rx.recv()).await;
    println!(
        "a write to {target} reached its watcher: {}",
        matches!(woke, Ok(Some(ref k)) if *k == target)
    );
    for task in tasks {
        task.abort();
    }
    if registered < watchers {
        return Err(format!("only {registered} of {watchers} watchers registered").into());
    }
    Ok(())
}
