//! The Kv service: Get, Put and Delete for clients (and for the gateway, in process).
//! Reads are served here by ReadIndex; writes on a follower are forwarded to the leader.
//! Each request's key and value are checked here ([`crate::validation`]), unless the
//! gateway of this node already checked them and marked the request so.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tracing::debug;

use super::auth::{authorize, AUTHORIZATION};
use super::deadline::{Backoff, Deadline};
use super::idempotency::{self, settle, WriteAttempts};
use super::outcome::{forward_again, index_of_not_found, status_of, INDEX, NOT_APPLIED};
use super::peers::Peers;
use crate::config::Config;
use crate::driver::{DriverHandle, ListAnswer, ReadAnswer, RequestError, WriteKind};
use crate::kv::{
    Applied, Command, Compare, ListQuery, Precondition, Target, Txn, TxnOp, TxnResult,
};
use crate::metrics::metrics;
use crate::proto::v1::{self as pb, kv_client::KvClient};
use crate::validation::{KeyValue, RequestRules};

/// Marks a client request that a follower forwarded to the leader, so that it is
/// never forwarded a second time (a leader that lost its post answers UNAVAILABLE and
/// the first node retries with its fresher view).
pub(super) const FORWARDED: &str = "x-distraft-forwarded";

pub struct KvService {
    config: Arc<Config>,
    driver: DriverHandle,
    peers: Peers,
    /// One permit per write being forwarded to the leader (DISTRAFT_MAX_FORWARDED_REQUESTS).
    forwarding: Arc<Semaphore>,
}

impl KvService {
    pub(super) fn new(
        config: Arc<Config>,
        driver: DriverHandle,
        peers: Peers,
        forwarding: Arc<Semaphore>,
    ) -> KvService {
        KvService {
            config,
            driver,
            peers,
            forwarding,
        }
    }

    /// What every request opens with: the API token checked, its deadline, whether
    /// another node forwarded it, and its key and value checked unless this node's
    /// gateway did; then its message.
    fn open<M: KeyValue>(&self, request: Request<M>) -> Result<(Deadline, bool, M), Status> {
        // The token first: a client without it learns nothing about its input.
        let checked = self.config.request_rules.check_unless_checked(&request);
        let opened = self.begin(request)?;
        checked?;
        Ok(opened)
    }

    /// The API token checked, the request's deadline, whether another node forwarded
    /// it, and its message (whose fields the caller checks).
    fn begin<M>(&self, request: Request<M>) -> Result<(Deadline, bool, M), Status> {
        authorize(&self.config, &request)?;
        let deadline = Deadline::of(&request, self.config.request_timeout);
        let forwarded = request.metadata().contains_key(FORWARDED);
        Ok((deadline, forwarded, request.into_inner()))
    }

    /// Runs `local` until it succeeds, fails for good, or the deadline passes. While
    /// there is no leader it retries; when another node leads, a write is forwarded to
    /// it once per attempt (never from a request that was itself forwarded), straight
    /// away when the driver has published that leader. A forwarded write is sent again
    /// only after a failure that certainly left the log unchanged.
    async fn run<R, LocalFut, ForwardFut>(
        &self,
        deadline: &Deadline,
        forwarded: bool,
        write: bool,
        mut local: impl FnMut() -> LocalFut,
        mut forward: impl FnMut(KvClient<Channel>, Duration) -> ForwardFut,
    ) -> Result<R, Status>
    where
        LocalFut: Future<Output = Result<R, RequestError>>,
        ForwardFut: Future<Output = Result<R, Status>>,
    {
        let mut backoff = Backoff::new();
        // Whether an earlier forward failed in a way that may have applied the write:
        // then a later "not applied" speaks for its own attempt only.
        let mut maybe_applied = false;
        loop {
            // Watched from before the attempt, so that a leader elected meanwhile
            // cuts the pause short.
            let mut leader = self.driver.leader_watch();
            // A write on a follower goes straight to the leader the driver published
            // (only while this node takes part in Raft: stopped or out of space, it
            // publishes none and its driver answers): posting it to our own driver
            // first would only learn the same NotLeader one driver turn later.
            let published = *leader.borrow();
            let outcome = match published {
                Some(other) if write && !forwarded && other != self.config.id => {
                    Err(RequestError::NotLeader {
                        leader: Some(other),
                    })
                }
                _ => tokio::time::timeout_at(deadline.at, local())
                    .await
                    .map_err(|_| deadline.expired(write))?,
            };
            match outcome {
                Ok(result) => return Ok(result),
                Err(RequestError::NotLeader {
                    leader: Some(leader),
                }) if !forwarded && leader != self.config.id => {
                    let max = self.config.max_message_bytes();
                    if let Some(client) = self.peers.kv_client(leader, max) {
                        // Bounded: past the cap the write is refused at once (it was
                        // not sent, so the client may safely retry).
                        let Ok(_permit) = self.forwarding.try_acquire() else {
                            return Err(Status::resource_exhausted(format!(
                                "too many writes are being forwarded to the leader (at most {}); try again",
                                self.config.limits.max_forwarded_requests
                            )));
                        };
                        match forward(client, deadline.remaining()).await {
                            Ok(result) => return Ok(result),
                            Err(_) if deadline.remaining().is_zero() => {
                                return Err(deadline.expired(write))
                            }
                            // The leader is gone, stopped or deposed: look again (a
                            // write carries its idempotency key: never applied twice).
                            Err(status) if forward_again(&status) => {
                                debug!(leader, "forwarding to the leader failed: {status}");
                                maybe_applied |=
                                    write && !status.metadata().contains_key(NOT_APPLIED);
                            }
                            Err(status) => return Err(unsettled(status, maybe_applied)),
                        }
                    }
                }
                // The first node retries with its own, fresher view.
                Err(err) if forwarded => return Err(status_of(err)),
                Err(
                    RequestError::NotLeader { .. }
                    | RequestError::LeadershipLost
                    | RequestError::Overloaded,
                ) => {}
                Err(err) => return Err(unsettled(status_of(err), maybe_applied)),
            }
            backoff
                .wait(deadline, &mut leader, write)
                .await
                .map_err(|status| unsettled(status, maybe_applied))?;
        }
    }
}

/// A write's final failure, when an earlier attempt may have applied it: whatever the
/// last attempt says, the write may have happened, so it is not marked as certainly not
/// applied (nor as a storage failure: the gateway's 507 says "nothing was written").
fn unsettled(status: Status, maybe_applied: bool) -> Status {
    if !maybe_applied || !status.metadata().contains_key(NOT_APPLIED) {
        return status;
    }
    Status::unavailable(format!(
        "{}; an earlier attempt of this write may have been applied: send it again with \
         the same Idempotency-Key to learn its outcome",
        status.message()
    ))
}

/// Counts a client request served, at the node the client called only: a request
/// another node forwarded here was counted there.
fn count_served(forwarded: bool, counter: &prometheus::IntCounterVec, label: &str) {
    if !forwarded {
        counter.with_label_values(&[label]).inc();
    }
}

/// A request forwarded to the leader, keeping what is left of the deadline, with this
/// node's API token (the client's request was authorized here).
pub(super) fn forwarded_request<T>(config: &Config, message: T, remaining: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(remaining);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    let bearer = config.access.bearer().and_then(|b| b.parse().ok());
    if let Some(bearer) = bearer {
        request.metadata_mut().insert(AUTHORIZATION, bearer);
    }
    request
}

/// A read's answer as the Get response (`found` false when the key is absent).
fn get_response(key: &str, answer: ReadAnswer) -> pb::GetResponse {
    match answer.found {
        Some(found) => pb::GetResponse {
            key: key.to_string(),
            value: found.value,
            found: true,
            create_index: found.versions.create_index,
            mod_index: found.versions.mod_index,
            version: found.versions.version,
            index: answer.index,
        },
        None => pb::GetResponse {
            key: key.to_string(),
            index: answer.index,
            ..pb::GetResponse::default()
        },
    }
}

/// A write's precondition, checked: a precondition that names no condition (or one
/// set to false) is refused, so that a client's mistake is never taken for "no
/// condition".
fn precondition(wire: Option<pb::Precondition>) -> Result<Option<Precondition>, Status> {
    use pb::precondition::Must;
    let Some(wire) = wire else {
        return Ok(None);
    };
    match wire.must {
        Some(Must::ModIndex(index)) => Ok(Some(Precondition::ModIndex(index))),
        Some(Must::Absent(true)) => Ok(Some(Precondition::Absent)),
        Some(Must::Exists(true)) => Ok(Some(Precondition::Exists)),
        Some(Must::Absent(false) | Must::Exists(false)) | None => Err(Status::invalid_argument(
            "precondition: set one of mod_index, absent: true or exists: true",
        )),
    }
}

/// What a write's outcome is when its entry applied as something else than the write:
/// a failed precondition, or (never expected) another kind of outcome; marked when it
/// is a retry's replay.
fn unexpected(key: &str, applied: Applied, replayed: bool) -> RequestError {
    let error = match applied {
        Applied::PreconditionFailed { current } => RequestError::PreconditionFailed {
            key: key.to_string(),
            current,
        },
        other => RequestError::Rejected(format!("the write applied as {other:?}")),
    };
    match replayed {
        true => RequestError::Replayed(Box::new(error)),
        false => error,
    }
}

/// The most keys a page of a listing holds.
pub const MAX_LIST_LIMIT: u32 = 10_000;
/// The keys a page holds when the request does not say.
const DEFAULT_LIST_LIMIT: u32 = 1_000;
/// About how many bytes of keys and values a page holds at most (always below the
/// largest gRPC message, which fits the largest pair).
const LIST_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// A listing's query, checked: a bound longer than any key may be, or a limit over
/// [`MAX_LIST_LIMIT`], is refused.
pub fn list_query(rules: &RequestRules, request: &pb::ListRequest) -> Result<ListQuery, Status> {
    for (name, bound) in [
        ("prefix", &request.prefix),
        ("start", &request.start),
        ("end", &request.end),
        ("after", &request.after),
    ] {
        if bound.len() > rules.max_key_bytes {
            return Err(Status::invalid_argument(format!(
                "the {name} is {} bytes, more than a key may be ({})",
                bound.len(),
                rules.max_key_bytes
            )));
        }
    }
    let limit = match request.limit {
        0 => DEFAULT_LIST_LIMIT,
        limit if limit > MAX_LIST_LIMIT => {
            return Err(Status::invalid_argument(format!(
                "the limit is {limit}, more than {MAX_LIST_LIMIT}"
            )))
        }
        limit => limit,
    };
    let optional = |bound: &str| (!bound.is_empty()).then(|| bound.to_string());
    Ok(ListQuery {
        prefix: request.prefix.clone(),
        start: request.start.clone(),
        end: optional(&request.end),
        after: optional(&request.after),
        limit: limit as usize,
        max_bytes: LIST_PAGE_BYTES,
        keys_only: request.keys_only,
    })
}

/// The most comparisons of a transaction, and the most writes of each branch.
pub const MAX_TXN_COMPARES: usize = 64;
pub const MAX_TXN_WRITES: usize = 64;

/// A transaction's command and what it does to the state's size, checked: every key
/// and value as a put's, at most [`MAX_TXN_COMPARES`] comparisons and
/// [`MAX_TXN_WRITES`] writes a branch, no key written twice in a branch, and no more
/// bytes of keys and values in all than the largest single put (so that its entry is
/// no larger than any the log already carries).
pub fn txn_command(
    rules: &RequestRules,
    request: &pb::TxnRequest,
) -> Result<(Command, WriteKind), Status> {
    use pb::{compare::Target as WireTarget, txn_op::Op};
    let invalid = |message: String| Status::invalid_argument(message);
    if request.compare.len() > MAX_TXN_COMPARES {
        return Err(invalid(format!(
            "{} comparisons, more than {MAX_TXN_COMPARES}",
            request.compare.len()
        )));
    }
    let mut bytes = 0usize;
    let mut compares = Vec::with_capacity(request.compare.len());
    for compare in &request.compare {
        rules.check_key(&compare.key)?;
        bytes += compare.key.len();
        let target = match &compare.target {
            Some(WireTarget::Value(value)) => {
                bytes += value.len();
                Target::Value(value.clone())
            }
            Some(WireTarget::Version(version)) => Target::Version(*version),
            Some(WireTarget::ModIndex(index)) => Target::ModIndex(*index),
            None => {
                return Err(invalid(format!(
                    "the comparison of {:?} names no target: value, version or mod_index",
                    compare.key
                )))
            }
        };
        compares.push(Compare {
            key: compare.key.clone(),
            target,
        });
    }
    let mut branches = Vec::with_capacity(2);
    let mut writes = Vec::with_capacity(2);
    for (name, ops) in [("success", &request.success), ("failure", &request.failure)] {
        if ops.len() > MAX_TXN_WRITES {
            return Err(invalid(format!(
                "{} writes in {name}, more than {MAX_TXN_WRITES}",
                ops.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        let mut puts = Vec::new();
        let mut branch = Vec::with_capacity(ops.len());
        for op in ops {
            let write = match &op.op {
                Some(Op::Put(put)) => {
                    rules.check_key(&put.key)?;
                    rules.check_value(&put.value)?;
                    bytes += put.key.len() + put.value.len();
                    puts.push((put.key.clone(), put.value.len()));
                    TxnOp::Put {
                        key: put.key.clone(),
                        value: put.value.clone(),
                    }
                }
                Some(Op::Delete(delete)) => {
                    rules.check_key(&delete.key)?;
                    bytes += delete.key.len();
                    TxnOp::Delete {
                        key: delete.key.clone(),
                    }
                }
                None => return Err(invalid(format!("a write in {name} names no operation"))),
            };
            if !seen.insert(write.key().to_string()) {
                return Err(invalid(format!(
                    "{name} writes the key {:?} twice",
                    write.key()
                )));
            }
            branch.push(write);
        }
        branches.push(puts);
        writes.push(branch);
    }
    let largest = rules.largest_pair_bytes();
    if bytes > largest {
        return Err(invalid(format!(
            "the transaction carries {bytes} bytes of keys and values, more than the largest put ({largest})"
        )));
    }
    let failure = writes.pop().unwrap_or_default();
    let success = writes.pop().unwrap_or_default();
    let txn = Txn {
        compares,
        success,
        failure,
    };
    Ok((Command::Txn(txn), WriteKind::Txn { branches }))
}

fn txn_response(index: u64, applied: Applied, key: &str) -> Result<pb::TxnResponse, RequestError> {
    let Applied::Txn { succeeded, results } = applied else {
        return Err(unexpected(key, applied, false));
    };
    let results = results
        .into_iter()
        .map(|result| match result {
            TxnResult::Put { key, versions } => pb::TxnOpResult {
                key,
                put: true,
                create_index: versions.create_index,
                mod_index: versions.mod_index,
                version: versions.version,
                existed: false,
            },
            TxnResult::Delete { key, existed } => pb::TxnOpResult {
                key,
                existed,
                ..pb::TxnOpResult::default()
            },
        })
        .collect();
    Ok(pb::TxnResponse {
        succeeded,
        index,
        results,
    })
}

fn list_response(answer: ListAnswer) -> pb::ListResponse {
    let next = match answer.page.more {
        true => answer
            .page
            .keys
            .last()
            .map(|last| last.key.clone())
            .unwrap_or_default(),
        false => String::new(),
    };
    let keys = answer
        .page
        .keys
        .into_iter()
        .map(|listed| pb::KeyValue {
            key: listed.key,
            value: listed.value,
            create_index: listed.versions.create_index,
            mod_index: listed.versions.mod_index,
            version: listed.versions.version,
        })
        .collect();
    pb::ListResponse {
        keys,
        next,
        index: answer.index,
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    type WatchStream = super::WatchStream;

    /// Served by `watch.rs`.
    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<super::WatchStream>, Status> {
        super::watch::watch(&self.config, &self.driver, request).await
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let client_key = idempotency::client_key(request.metadata())?;
        let (deadline, forwarded, wire) = self.begin(request)?;
        let (command, kind) = txn_command(&self.config.request_rules, &wire)?;
        let attempts = WriteAttempts::new(command, client_key, self.config.id);
        let answer = self
            .run(
                &deadline,
                forwarded,
                true,
                || async {
                    let committed = self
                        .driver
                        .propose(attempts.entry(idempotency::now_ms()), kind.clone())
                        .await?;
                    let (index, applied, replayed) = settle(committed)?;
                    txn_response(index, applied, "a transaction").map(|r| (r, replayed))
                },
                |mut client, remaining| {
                    let request = forwarded_request(&self.config, wire.clone(), remaining);
                    let request = idempotency::with_key(request, attempts.forwarding_key());
                    async move { forwarded_answer(client.txn(request).await) }
                },
            )
            .await?;
        count_served(forwarded, &metrics().writes, "txn");
        Ok(write_response(answer))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let (deadline, forwarded, wire) = self.begin(request)?;
        let query = list_query(&self.config.request_rules, &wire)?;
        let stale = wire.stale;
        // Served here by ReadIndex, as Get is.
        let answer = self
            .run(
                &deadline,
                forwarded,
                false,
                || async { Ok(list_response(self.driver.list(query.clone(), stale).await?)) },
                |mut client, remaining| {
                    let request = forwarded_request(&self.config, wire.clone(), remaining);
                    async move { Ok(client.list(request).await?.into_inner()) }
                },
            )
            .await?;
        let consistency = if stale { "stale" } else { "linearizable" };
        count_served(forwarded, &metrics().reads, consistency);
        Ok(Response::new(answer))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let (deadline, forwarded, pb::GetRequest { key, stale }) = self.open(request)?;
        // Linearizable reads are served here by ReadIndex (the core asks the leader to
        // confirm the read index), which spreads read load over the replicas and never
        // ships the value twice. They are forwarded to the leader only when this node
        // cannot take part (out of Raft for lack of space: the NOSPACE alarm).
        let answer = self
            .run(
                &deadline,
                forwarded,
                false,
                || async {
                    Ok(get_response(
                        &key,
                        self.driver.read(key.clone(), stale).await?,
                    ))
                },
                |mut client, remaining| {
                    let request = pb::GetRequest {
                        key: key.clone(),
                        stale,
                    };
                    let request = forwarded_request(&self.config, request, remaining);
                    let key = key.clone();
                    async move {
                        match client.get(request).await {
                            Ok(found) => Ok(found.into_inner()),
                            Err(status) if status.code() == Code::NotFound => Ok(pb::GetResponse {
                                key,
                                index: index_of_not_found(&status),
                                ..pb::GetResponse::default()
                            }),
                            Err(status) => Err(status),
                        }
                    }
                },
            )
            .await?;
        let consistency = if stale { "stale" } else { "linearizable" };
        count_served(forwarded, &metrics().reads, consistency);
        if answer.found {
            return Ok(Response::new(answer));
        }
        let mut status = Status::not_found(format!("key {key:?} not found"));
        status
            .metadata_mut()
            .insert(INDEX, tonic::metadata::MetadataValue::from(answer.index));
        Err(status)
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let client_key = idempotency::client_key(request.metadata())?;
        let (
            deadline,
            forwarded,
            pb::PutRequest {
                key,
                value,
                precondition: wire_precondition,
            },
        ) = self.open(request)?;
        let command = Command::Put {
            key: key.clone(),
            value: value.clone(),
            precondition: precondition(wire_precondition)?,
        };
        let attempts = WriteAttempts::new(command, client_key, self.config.id);
        let answer = self
            .run(
                &deadline,
                forwarded,
                true,
                || async {
                    let kind = WriteKind::Put {
                        key: key.clone(),
                        value_bytes: value.len(),
                    };
                    let committed = self
                        .driver
                        .propose(attempts.entry(idempotency::now_ms()), kind)
                        .await?;
                    let (index, applied, replayed) = settle(committed)?;
                    match applied {
                        Applied::Put { versions } => Ok((
                            pb::PutResponse {
                                key: key.clone(),
                                value: value.clone(),
                                index,
                                create_index: versions.create_index,
                                version: versions.version,
                            },
                            replayed,
                        )),
                        other => Err(unexpected(&key, other, replayed)),
                    }
                },
                |mut client, remaining| {
                    let request = pb::PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                        precondition: wire_precondition,
                    };
                    let request = forwarded_request(&self.config, request, remaining);
                    let request = idempotency::with_key(request, attempts.forwarding_key());
                    async move { forwarded_answer(client.put(request).await) }
                },
            )
            .await?;
        count_served(forwarded, &metrics().writes, "put");
        Ok(write_response(answer))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let client_key = idempotency::client_key(request.metadata())?;
        let (
            deadline,
            forwarded,
            pb::DeleteRequest {
                key,
                precondition: wire_precondition,
            },
        ) = self.open(request)?;
        let command = Command::Delete {
            key: key.clone(),
            precondition: precondition(wire_precondition)?,
        };
        let attempts = WriteAttempts::new(command, client_key, self.config.id);
        let answer = self
            .run(
                &deadline,
                forwarded,
                true,
                || async {
                    let committed = self
                        .driver
                        .propose(attempts.entry(idempotency::now_ms()), WriteKind::Delete)
                        .await?;
                    let (index, applied, replayed) = settle(committed)?;
                    match applied {
                        Applied::Delete { existed } => Ok((
                            pb::DeleteResponse {
                                key: key.clone(),
                                existed,
                                index,
                            },
                            replayed,
                        )),
                        other => Err(unexpected(&key, other, replayed)),
                    }
                },
                |mut client, remaining| {
                    let request = pb::DeleteRequest {
                        key: key.clone(),
                        precondition: wire_precondition,
                    };
                    let request = forwarded_request(&self.config, request, remaining);
                    let request = idempotency::with_key(request, attempts.forwarding_key());
                    async move { forwarded_answer(client.delete(request).await) }
                },
            )
            .await?;
        count_served(forwarded, &metrics().writes, "delete");
        Ok(write_response(answer))
    }
}

/// A write's answer, marked when it is a retry's replay of the first outcome.
fn write_response<T>((message, replayed): (T, bool)) -> Response<T> {
    let mut response = Response::new(message);
    if replayed {
        idempotency::mark_replayed(response.metadata_mut());
    }
    response
}

/// The leader's answer to a forwarded write, with its replay mark.
fn forwarded_answer<T>(answer: Result<Response<T>, Status>) -> Result<(T, bool), Status> {
    let answer = answer?;
    let replayed = idempotency::replayed(answer.metadata());
    Ok((answer.into_inner(), replayed))
}
