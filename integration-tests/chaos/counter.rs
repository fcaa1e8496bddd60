//! A compare-and-set counter under the same faults (issue #20): tasks that read the
//! counter and write it + 1 with the precondition that it is still at the version they
//! read (`mod_index`, or absent for the first). A write applies only to the version it
//! read, so each one that applies adds exactly one: at the end the counter is at least
//! the acknowledged increments, and at most those plus the increments whose outcome
//! stayed unknown. A conflict (FAILED_PRECONDITION) applied nothing — so a node that
//! applied a write and then answered with a conflict (a write sent twice) shows as a
//! counter above that bound.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use distraft::proto::v1::{
    kv_client::KvClient, precondition::Must, GetRequest, Precondition, PutRequest,
};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use tonic::{transport::Channel, Code};

use crate::cluster::Address;

/// The counter's key: not one of the linearizability workload's keys.
pub const COUNTER: &str = "counter";
const REQUEST_DEADLINE: Duration = Duration::from_millis(1500);
const CLIENT_TIMEOUT: Duration = Duration::from_millis(3000);

/// What the increments of one task came to.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Acknowledged: applied.
    pub acked: u64,
    /// Failed without saying whether: applied or not.
    pub unknown: u64,
    /// FAILED_PRECONDITION: another increment came first; not applied.
    pub conflicts: u64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.acked += other.acked;
        self.unknown += other.unknown;
        self.conflicts += other.conflicts;
    }
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(REQUEST_DEADLINE);
    request
}

fn clients(nodes: &[Address]) -> Vec<KvClient<Channel>> {
    nodes
        .iter()
        .map(|node| {
            KvClient::new(
                node.endpoint()
                    .connect_timeout(REQUEST_DEADLINE)
                    .connect_lazy(),
            )
        })
        .collect()
}

/// The counter as node `client` reads it (linearizable): its value and the
/// precondition that says "still this version". `Err`: no answer, or an answer no
/// correct node gives (the `bool` says which: true for the latter).
async fn read(client: &mut KvClient<Channel>) -> Result<(u64, Precondition), (bool, String)> {
    let answer = tokio::time::timeout(
        CLIENT_TIMEOUT,
        client.get(request(GetRequest {
            key: COUNTER.into(),
            stale: false,
        })),
    )
    .await
    .map_err(|_| (false, "client timeout".to_string()))?;
    match answer {
        Ok(found) => {
            let found = found.into_inner();
            let value = found
                .value
                .parse()
                .map_err(|_| (true, format!("the counter holds {:?}", found.value)))?;
            let must = Must::ModIndex(found.mod_index);
            Ok((value, Precondition { must: Some(must) }))
        }
        Err(status) if status.code() == Code::NotFound => {
            let must = Must::Absent(true);
            Ok((0, Precondition { must: Some(must) }))
        }
        Err(status) => Err((false, status.to_string())),
    }
}

/// Increments until `until` through random nodes; answers no correct node gives go to
/// `unexpected`.
/// Also returns the acknowledged increments: their index and the value they wrote
/// (what the watcher, `watcher.rs`, must have seen).
pub async fn increment(
    nodes: Arc<Vec<Address>>,
    seed: u64,
    until: Instant,
) -> (Tally, Vec<(u64, u64)>, Vec<String>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut grpc = clients(&nodes);
    let mut tally = Tally::default();
    let mut acked = Vec::new();
    let mut unexpected = Vec::new();
    while Instant::now() < until {
        let node = rng.random_range(0..nodes.len());
        let (value, precondition) = match read(&mut grpc[node]).await {
            Ok(read) => read,
            Err((bug, what)) => {
                if bug {
                    unexpected.push(format!("counter read from {}: {what}", nodes[node].name));
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(10..100))).await;
                continue;
            }
        };
        let node = rng.random_range(0..nodes.len());
        let put = PutRequest {
            key: COUNTER.into(),
            value: (value + 1).to_string(),
            precondition: Some(precondition),
        };
        let answer = tokio::time::timeout(CLIENT_TIMEOUT, grpc[node].put(request(put))).await;
        match answer {
            Ok(Ok(answer)) => {
                tally.acked += 1;
                acked.push((answer.into_inner().index, value + 1));
            }
            Ok(Err(status)) if status.code() == Code::FailedPrecondition => {
                tally.conflicts += 1;
                if distraft::rpc::precondition_failure(&status).is_none() {
                    unexpected.push(format!("a conflict without the key's state: {status}"));
                }
            }
            // Whatever else: maybe applied, maybe not.
            Ok(Err(_)) | Err(_) => {
                tally.unknown += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(10..100))).await;
            }
        }
    }
    (tally, acked, unexpected)
}

/// The counter at the end (after healing), read from node 0 until it answers: its
/// value and its `mod_index` (0: never written).
pub async fn final_value(nodes: &[Address], within: Duration) -> Result<(u64, u64), String> {
    let mut grpc = clients(nodes);
    let deadline = Instant::now() + within;
    loop {
        match read(&mut grpc[0]).await {
            Ok((value, precondition)) => {
                let mod_index = match precondition.must {
                    Some(Must::ModIndex(index)) => index,
                    _ => 0,
                };
                return Ok((value, mod_index));
            }
            Err((true, what)) => return Err(what),
            Err((false, what)) if Instant::now() >= deadline => {
                return Err(format!("no answer within {within:?}: {what}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Whether the final counter is what the tallies of `tasks` tasks allow: every
/// acknowledged increment, perhaps some unknown ones, nothing else; at least one
/// increment went through; and no more conflicts than the increments applied can
/// explain. A conflict needs an increment applied between the task's read and its
/// write, and one increment can come between the read and the write of each task
/// once at most (a task's reads follow each other), so there are at most `value`
/// (the increments applied) × `tasks` conflicts. A precondition compared with the
/// wrong version makes far more.
pub fn judge(value: u64, tally: Tally, tasks: u64) -> Result<(), String> {
    let most = tally.acked + tally.unknown;
    if value < tally.acked || value > most {
        return Err(format!(
            "the CAS counter is {value}, but {} increments were acknowledged and {} unknown \
             (it must be within {}..={most}); {} conflicts",
            tally.acked, tally.unknown, tally.acked, tally.conflicts
        ));
    }
    if tally.conflicts > value * tasks {
        return Err(format!(
            "{} compare-and-set conflicts, more than the {value} increments applied can \
             cause with {tasks} tasks ({} acknowledged, {} unknown)",
            tally.conflicts, tally.acked, tally.unknown
        ));
    }
    if tally.acked == 0 {
        return Err(format!(
            "no compare-and-set increment succeeded ({} conflicts, {} unknown)",
            tally.conflicts, tally.unknown
        ));
    }
    Ok(())
}
