//! The clients: concurrent tasks doing reads, writes and deletes on a few keys through
//! random nodes, half over gRPC and half over the HTTP gateway, each request with a
//! deadline. Every request becomes an [`Operation`] of the history: its call and return
//! times on one monotonic clock, and what the answer proves.
//!
//! What an answer proves: a success, or a Get's NOT_FOUND (the key is absent), is a
//! definite outcome. A node's UNAVAILABLE, DEADLINE_EXCEEDED or 503, and a transport
//! failure (refused or reset connection, timeout), are [`KvOutcome::Unknown`]: the
//! proto promises nothing about a failed write ("may or may not have been applied"),
//! and a failed read constrains nothing. The two kinds of indeterminate failure are
//! tallied apart. Answers that no correct node may give are collected as unexpected and
//! fail the run: a refused well-formed request, a malformed body, and a server error —
//! INTERNAL or DATA_LOSS from a node, HTTP 500 — which a node whose storage fails would
//! otherwise pass off as "try again".

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use distraft::proto::v1::{kv_client::KvClient, DeleteRequest, GetRequest, PutRequest};
use distraft_testkit::linearizability::{KvOp, KvOutcome, Operation};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use serde_json::Value;
use tonic::{transport::Channel, Code};

use crate::cluster::Address;

/// The keys: few enough that operations on a key overlap and conflict, enough that no
/// single key's history gets long for the checker.
pub const KEYS: [&str; 8] = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"];
/// The deadline a request carries (gRPC `grpc-timeout`); the node answers UNAVAILABLE
/// or DEADLINE_EXCEEDED by then.
const REQUEST_DEADLINE: Duration = Duration::from_millis(1500);
/// The client gives up waiting here: a paused node answers nothing at all.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(3000);
/// Pause after a failed request, so that a client facing a dead node (refused at
/// once) does not spin.
const BACKOFF: std::ops::Range<u64> = 10..100;

/// What one client did.
#[derive(Default)]
pub struct ClientLog {
    pub history: Vec<Operation>,
    /// For each operation of `history`, the node and transport it went to.
    pub routes: Vec<String>,
    /// Indeterminate failures by kind: how many, and the first one's message. A node's
    /// answers are "grpc Unavailable", "http 503", ...; transport failures (no answer
    /// from a node) start with [`TRANSPORT`].
    pub failures: BTreeMap<String, (usize, String)>,
    /// Answers no correct node gives.
    pub unexpected: Vec<String>,
}

#[derive(Clone, Copy)]
enum Via {
    Grpc,
    Http,
}

/// The prefix of the failure kinds that are transport failures rather than answers.
pub const TRANSPORT: &str = "transport: ";

/// A definite outcome, or why there is none.
enum Answer {
    Outcome(KvOutcome),
    /// Indeterminate: the kind of failure (tallied) and its message.
    Failed(String, String),
    /// Indeterminate, and a bug: no correct node answers this.
    Unexpected(String),
}

/// Nanoseconds since `origin`: the history's clock, shared by every client.
pub fn clock(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A client of every node, over both transports.
pub struct Client {
    id: u64,
    nodes: Arc<Vec<Address>>,
    grpc: Vec<KvClient<Channel>>,
    http: reqwest::Client,
    origin: Instant,
    /// The previous operation's return time: the next call is strictly later, so that
    /// the checker orders this client's operations.
    last_ret: u64,
    pub log: ClientLog,
}

impl Client {
    pub fn new(id: u64, nodes: Arc<Vec<Address>>, origin: Instant) -> Client {
        let grpc = nodes
            .iter()
            .map(|node| {
                let channel = node
                    .endpoint()
                    .connect_timeout(REQUEST_DEADLINE)
                    .tcp_nodelay(true)
                    .connect_lazy();
                KvClient::new(channel)
            })
            .collect();
        // Every node shares one CA: any address's TLS settings serve them all.
        let http = nodes
            .first()
            .map_or_else(reqwest::Client::builder, |node| node.http_client())
            .timeout(CLIENT_TIMEOUT)
            .build()
            .unwrap();
        Client {
            id,
            nodes,
            grpc,
            http,
            origin,
            last_ret: 0,
            log: ClientLog::default(),
        }
    }

    /// Random operations until `until`; `seed` fixes the sequence of requests.
    pub async fn run(mut self, seed: u64, until: Instant) -> ClientLog {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut written = 0;
        while Instant::now() < until {
            let key = KEYS[rng.random_range(0..KEYS.len())].to_string();
            let op = match rng.random_range(0..10) {
                0..5 => KvOp::Get { key },
                5..9 => {
                    written += 1;
                    KvOp::Put {
                        key,
                        value: format!("c{}-{written}", self.id),
                    }
                }
                _ => KvOp::Delete { key },
            };
            let node = rng.random_range(0..self.nodes.len());
            let via = match rng.random_bool(0.5) {
                true => Via::Grpc,
                false => Via::Http,
            };
            if self.perform(node, via, op).await == KvOutcome::Unknown {
                tokio::time::sleep(Duration::from_millis(rng.random_range(BACKOFF))).await;
            }
        }
        self.log
    }

    /// Sends `op` to node `node`, records it in the history and returns its outcome.
    async fn perform(&mut self, node: usize, via: Via, op: KvOp) -> KvOutcome {
        let call = clock(self.origin).max(self.last_ret + 1);
        let answer = match tokio::time::timeout(CLIENT_TIMEOUT, self.send(node, via, &op)).await {
            Ok(answer) => answer,
            Err(_) => Answer::Failed(format!("{TRANSPORT}client timeout"), String::new()),
        };
        let ret = clock(self.origin).max(call + 1);
        self.last_ret = ret;
        let via = match via {
            Via::Grpc => "gRPC",
            Via::Http => "HTTP",
        };
        let route = format!("{} over {via}", self.nodes[node].name);
        let outcome = match answer {
            Answer::Outcome(outcome) => outcome,
            Answer::Failed(kind, message) => {
                self.log.failures.entry(kind).or_insert((0, message)).0 += 1;
                KvOutcome::Unknown
            }
            Answer::Unexpected(what) => {
                self.log
                    .unexpected
                    .push(format!("{op:?} to {route}: {what}"));
                KvOutcome::Unknown
            }
        };
        self.log.routes.push(route);
        self.log.history.push(Operation {
            client: self.id,
            op,
            call,
            ret,
            outcome: outcome.clone(),
        });
        outcome
    }

    async fn send(&mut self, node: usize, via: Via, op: &KvOp) -> Answer {
        match via {
            Via::Grpc => self.send_grpc(node, op).await,
            Via::Http => self.send_http(node, op).await,
        }
    }

    async fn send_grpc(&mut self, node: usize, op: &KvOp) -> Answer {
        let client = &mut self.grpc[node];
        let result = match op {
            KvOp::Get { key } => client
                .get(with_deadline(GetRequest {
                    key: key.clone(),
                    stale: false,
                }))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    let value = r.found.then_some(r.value);
                    (r.key == *key).then_some(KvOutcome::Get(value))
                }),
            KvOp::Put { key, value } => client
                .put(with_deadline(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    precondition: None,
                }))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    (r.key == *key && r.value == *value).then_some(KvOutcome::Put)
                }),
            KvOp::Delete { key } => client
                .delete(with_deadline(DeleteRequest {
                    key: key.clone(),
                    precondition: None,
                }))
                .await
                .map(|r| (r.into_inner().key == *key).then_some(KvOutcome::Delete)),
            // The simulator's operations; this workload never draws them.
            KvOp::Cas { .. } | KvOp::List { .. } | KvOp::Txn { .. } => return unsupported(op),
        };
        match result {
            Ok(Some(outcome)) => Answer::Outcome(outcome),
            Ok(None) => Answer::Unexpected("the answer names another key or value".into()),
            // Made here, not answered by the node: the connection failed (tonic keeps
            // the transport error as the source; an h2 reset surfaces as INTERNAL).
            Err(status) if std::error::Error::source(&status).is_some() => Answer::Failed(
                format!("{TRANSPORT}grpc {:?}", status.code()),
                status.message().into(),
            ),
            Err(status) => match (status.code(), op) {
                (Code::NotFound, KvOp::Get { .. }) => Answer::Outcome(KvOutcome::Get(None)),
                // Input errors and the like: our requests are well-formed. And server
                // errors: a correct node does not fail this way.
                (
                    Code::InvalidArgument
                    | Code::NotFound
                    | Code::AlreadyExists
                    | Code::FailedPrecondition
                    | Code::OutOfRange
                    | Code::Unimplemented
                    | Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::Internal
                    | Code::DataLoss,
                    _,
                ) => Answer::Unexpected(format!("{status}")),
                // UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, and UNKNOWN: what a node
                // answers when it cannot serve the request now (or, forwarding it, lost
                // the connection to the leader).
                (code, _) => Answer::Failed(format!("grpc {code:?}"), status.message().into()),
            },
        }
    }

    async fn send_http(&mut self, node: usize, op: &KvOp) -> Answer {
        let Some(key) = op.key() else {
            return unsupported(op);
        };
        let url = distraft::cli::key_url(&self.nodes[node].url(), key);
        let request = match op {
            KvOp::Get { .. } => self.http.get(url),
            KvOp::Put { value, .. } => self.http.post(url).form(&[("value", value)]),
            KvOp::Delete { .. } => self.http.delete(url),
            KvOp::Cas { .. } | KvOp::List { .. } | KvOp::Txn { .. } => return unsupported(op),
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                return Answer::Failed(format!("{TRANSPORT}http timeout"), e.to_string())
            }
            Err(e) => return Answer::Failed(format!("{TRANSPORT}http"), e.to_string()),
        };
        let code = response.status().as_u16();
        let body: Value = match response.json().await {
            Ok(body) => body,
            Err(_) if code == 200 || code == 500 => {
                return Answer::Unexpected(format!("{code} without a JSON body"))
            }
            // The body broke off: the connection failed.
            Err(e) => {
                return Answer::Failed(format!("{TRANSPORT}http {code} (no JSON)"), e.to_string())
            }
        };
        let ok = body["ok"] == true && body["key"] == key;
        match (code, op) {
            (200, KvOp::Get { .. }) if ok => match body["value"].as_str() {
                Some(value) => Answer::Outcome(KvOutcome::Get(Some(value.to_string()))),
                None => Answer::Unexpected(format!("no value in {body}")),
            },
            // Kv.Get's NOT_FOUND (an unknown route would say "no such route").
            (404, KvOp::Get { .. })
                if body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("not found")) =>
            {
                Answer::Outcome(KvOutcome::Get(None))
            }
            (200, KvOp::Put { value, .. }) if ok && body["value"] == value.as_str() => {
                Answer::Outcome(KvOutcome::Put)
            }
            (200, KvOp::Delete { .. }) if ok => Answer::Outcome(KvOutcome::Delete),
            (200, _) => Answer::Unexpected(format!("200 {body}")),
            (502..=504, _) => Answer::Failed(format!("http {code}"), body.to_string()),
            // 500 included: a server error is a bug, never "try again".
            _ => Answer::Unexpected(format!("{code} {body}")),
        }
    }
}

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(REQUEST_DEADLINE);
    request
}

/// After the faults: every key read from every node (linearizable Gets over gRPC,
/// retried until answered), recorded as more history. A write that was acknowledged and
/// then lost, or a replica that serves a stale value, shows up here at the latest.
pub async fn final_reads(
    nodes: Arc<Vec<Address>>,
    origin: Instant,
    first_client_id: u64,
    within: Duration,
) -> ClientLog {
    let mut log = ClientLog::default();
    for node in 0..nodes.len() {
        let mut client = Client::new(first_client_id + node as u64, nodes.clone(), origin);
        let deadline = Instant::now() + within;
        for key in KEYS {
            loop {
                let op = KvOp::Get {
                    key: key.to_string(),
                };
                if client.perform(node, Via::Grpc, op).await != KvOutcome::Unknown {
                    break;
                }
                if Instant::now() >= deadline {
                    let name = &nodes[node].name;
                    client.log.unexpected.push(format!(
                        "{name} did not answer a Get of {key} within {within:?} of healing"
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        log.history.append(&mut client.log.history);
        log.routes.append(&mut client.log.routes);
        log.unexpected.append(&mut client.log.unexpected);
        merge_failures(&mut log.failures, client.log.failures);
    }
    log
}

/// Adds the failures of `more` to `into`, keeping the first message of each kind.
pub fn merge_failures(
    into: &mut BTreeMap<String, (usize, String)>,
    more: BTreeMap<String, (usize, String)>,
) {
    for (kind, (count, message)) in more {
        into.entry(kind).or_insert((0, message)).0 += count;
    }
}

/// The checker's compare-and-set and listing are the simulator's; this workload draws
/// only gets, puts and deletes.
fn unsupported(op: &KvOp) -> Answer {
    Answer::Unexpected(format!("the chaos workload does not send {op:?}"))
}
