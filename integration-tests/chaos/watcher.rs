//! A watcher of the compare-and-set counter under the same faults (issue #20): it
//! follows `counter` with `Kv.Watch` on a random node, and whenever its stream breaks
//! (a node killed, paused, cut off, too slow a watcher) it resumes on another random
//! node from the last index it saw + 1. Each applied increment adds exactly one, so the
//! changes it sees must count up by one, in index order, each once; a start older than
//! a node's history (a restart, a snapshot install) may give a resync instead — the
//! counter as of one index — after which the count goes on from there. Judged at the
//! end: every acknowledged increment seen (at its index, with its value) or covered by
//! a resync at or after its index, and the last value the final counter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use distraft::proto::v1::{kv_client::KvClient, watch_event::Type, WatchRequest};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use tokio::sync::watch;

use crate::cluster::Address;
use crate::counter::COUNTER;

/// How long one stream may stay silent before it is re-opened elsewhere: a paused node
/// keeps its connection open and says nothing, and a quiet counter looks the same, so
/// a silent stream is simply resumed on another node (which costs a replay from that
/// node's history, or a resync).
const SILENCE: Duration = Duration::from_secs(2);

/// What the watcher saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The counter was set to `value` by the entry at `index`.
    Change { index: u64, value: u64 },
    /// The counter as of `index` (`None`: absent).
    Resync { index: u64, value: Option<u64> },
}

#[derive(Debug, Default)]
pub struct Watched {
    pub seen: Vec<Seen>,
    /// Streams opened (the first, and every resumption).
    pub streams: u64,
    pub resyncs: u64,
    /// Answers no correct node gives.
    pub unexpected: Vec<String>,
}

/// Follows the counter until `stop` says the index to reach and it has been reached
/// (or `give_up` passes).
pub async fn follow(
    nodes: Arc<Vec<Address>>,
    seed: u64,
    mut stop: watch::Receiver<Option<u64>>,
    give_up: Instant,
) -> Watched {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut watched = Watched::default();
    // The next index of interest: from the start of the log.
    let mut next = 1u64;
    // A resync is being received (its pages share one index).
    let mut resync_value: Option<u64> = None;
    loop {
        if let Some(target) = *stop.borrow_and_update() {
            if next > target {
                return watched;
            }
        }
        if Instant::now() >= give_up {
            return watched;
        }
        let node = &nodes[rng.random_range(0..nodes.len())];
        let channel = node
            .endpoint()
            .connect_timeout(Duration::from_millis(500))
            .connect_lazy();
        let mut client = KvClient::new(channel);
        let request = WatchRequest {
            key: COUNTER.into(),
            prefix: false,
            start_index: next,
        };
        let opened = tokio::time::timeout(SILENCE, client.watch(request)).await;
        let mut stream = match opened {
            Ok(Ok(answer)) => answer.into_inner(),
            Ok(Err(_)) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
                continue;
            }
        };
        watched.streams += 1;
        loop {
            let message = tokio::select! {
                message = tokio::time::timeout(SILENCE, stream.message()) => message,
                _ = stop.changed() => break,
            };
            let message = match message {
                Ok(Ok(Some(message))) => message,
                // Ended, broken or silent: resume elsewhere.
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
            };
            if message.resync {
                for event in &message.events {
                    if event.key != COUNTER {
                        watched
                            .unexpected
                            .push(format!("a resync of the counter holds {:?}", event.key));
                        continue;
                    }
                    match event.value.parse() {
                        Ok(value) => resync_value = Some(value),
                        Err(_) => watched
                            .unexpected
                            .push(format!("the counter holds {:?}", event.value)),
                    }
                }
                if !message.more_resync {
                    watched.resyncs += 1;
                    watched.seen.push(Seen::Resync {
                        index: message.index,
                        value: resync_value.take(),
                    });
                    next = next.max(message.index + 1);
                }
                continue;
            }
            for event in &message.events {
                let value = match (event.r#type(), event.value.parse()) {
                    (Type::Put, Ok(value)) if event.key == COUNTER => value,
                    _ => {
                        watched.unexpected.push(format!(
                            "a change of the counter that is not one: {event:?}"
                        ));
                        continue;
                    }
                };
                watched.seen.push(Seen::Change {
                    index: event.index,
                    value,
                });
                next = next.max(event.index + 1);
            }
            // A progress message: every change up to its index was sent.
            next = next.max(message.index + 1);
        }
    }
}

/// Whether what the watcher saw is every acknowledged increment (index, value), in
/// order, each once, ending at `final_value`.
pub fn judge(watched: &Watched, acked: &[(u64, u64)], final_value: u64) -> Result<(), String> {
    let mut last_index = 0u64;
    let mut value: Option<u64> = None;
    let mut changes = std::collections::BTreeMap::new();
    let mut resyncs = Vec::new();
    for (n, seen) in watched.seen.iter().enumerate() {
        match *seen {
            Seen::Change { index, value: v } => {
                if index <= last_index {
                    return Err(format!(
                        "watch: change #{n} at index {index} after index {last_index} (out of order or twice)"
                    ));
                }
                if let Some(before) = value {
                    if v != before + 1 {
                        return Err(format!(
                            "watch: the counter went from {before} to {v} at index {index}: a change was skipped or repeated"
                        ));
                    }
                }
                changes.insert(index, v);
                value = Some(v);
                last_index = index;
            }
            Seen::Resync { index, value: v } => {
                if index < last_index {
                    return Err(format!(
                        "watch: a resync as of index {index} after a change at {last_index}"
                    ));
                }
                if let (Some(before), Some(now)) = (value, v) {
                    if now < before {
                        return Err(format!(
                            "watch: a resync at index {index} has the counter at {now}, below the {before} seen"
                        ));
                    }
                }
                resyncs.push(index);
                value = v;
                last_index = index;
            }
        }
    }
    for &(index, v) in acked {
        match changes.get(&index) {
            Some(&seen) if seen == v => {}
            Some(&seen) => {
                return Err(format!(
                    "watch: the increment to {v} acknowledged at index {index} was seen as {seen}"
                ))
            }
            None if resyncs.iter().any(|&r| r >= index) => {}
            None => {
                return Err(format!(
                    "watch: the increment to {v} acknowledged at index {index} was never seen (last index seen {last_index})"
                ))
            }
        }
    }
    if value != Some(final_value) && !(final_value == 0 && value.is_none()) {
        return Err(format!(
            "watch: the watcher ended at {value:?}, the counter is {final_value}"
        ));
    }
    Ok(())
}
