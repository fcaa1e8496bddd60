//! The gRPC services every node serves on its raft port: Raft (between nodes), Kv and
//! Admin (for clients), plus reflection and health.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::debug;

use super::convert;
use super::instrument::GrpcMetricsLayer;
use super::peers::{raft_rpc_timeout, snapshot_timeout, Peers};
use super::refusals::Refusals;
use crate::config::Config;
use crate::driver::{
    DriverHandle, RaftReply, ReceivedSnapshot, RequestError, SnapshotAdmission, WriteKind,
};
use crate::kv::{Applied, Kv};
use crate::limits::{
    GRPC_MAX_ADMIN_MESSAGE_BYTES, GRPC_MAX_CONCURRENT_STREAMS, GRPC_MAX_REQUESTS_PER_CONNECTION,
};
use crate::metrics::metrics;
use crate::proto::v1::{
    self as pb, admin_server::AdminServer, kv_client::KvClient, kv_server::KvServer,
    raft_server::RaftServer,
};
use crate::raft::{AppendOutcome, Body, Message};

/// Marks a client request that a follower forwarded to the leader, so that it is
/// never forwarded a second time (a leader that lost its post answers UNAVAILABLE and
/// the first node retries with its fresher view).
const FORWARDED: &str = "x-distraft-forwarded";
/// The gRPC metadata carrying the API token: `Bearer <token>`.
const AUTHORIZATION: &str = "authorization";
/// Pause between attempts while the cluster has no leader, doubling up to the max;
/// cut short when this node learns of a leader.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(100);
/// How much earlier than the client's own deadline a request gives up (at most).
const CLIENT_DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// The client-facing services of a node, shared by the gRPC server and the HTTP
/// gateway (which calls them in process).
#[derive(Clone)]
pub struct ClientServices {
    pub kv: Arc<KvService>,
    pub admin: Arc<AdminService>,
}

impl ClientServices {
    pub fn new(config: Arc<Config>, driver: DriverHandle, peers: Peers) -> ClientServices {
        let forwarding = Arc::new(Semaphore::new(config.limits.max_forwarded_requests));
        ClientServices {
            kv: Arc::new(KvService {
                config: config.clone(),
                driver: driver.clone(),
                peers,
                forwarding,
            }),
            admin: Arc::new(AdminService { config, driver }),
        }
    }
}

/// Serves every service on `listener` until `stop` turns true.
pub async fn serve(
    config: Arc<Config>,
    driver: DriverHandle,
    services: ClientServices,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let max = config.max_message_bytes();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    // grpcurl 1.8 still speaks the v1alpha protocol.
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
        .await;
    tokio::spawn(report_health(health_reporter, driver.clone(), stop.clone()));

    let mut server = Server::builder();
    if let Some(tls) = &config.tls {
        // Mutual TLS: every client, peer or not, must present a certificate the CA signed.
        server = server.tls_config(tls.grpc_server())?;
    }
    let raft = RaftService {
        config,
        driver,
        stop: stop.clone(),
        refusals: Arc::new(Refusals::default()),
    };
    // At the caps, a request is refused at once (RESOURCE_EXHAUSTED) rather than
    // queued behind the others.
    server
        .layer(GrpcMetricsLayer)
        .tcp_nodelay(true)
        .max_concurrent_streams(GRPC_MAX_CONCURRENT_STREAMS)
        .concurrency_limit_per_connection(GRPC_MAX_REQUESTS_PER_CONNECTION)
        .load_shed(true)
        .add_service(
            RaftServer::new(raft)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            KvServer::from_arc(services.kv)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            AdminServer::from_arc(services.admin)
                .max_decoding_message_size(GRPC_MAX_ADMIN_MESSAGE_BYTES),
        )
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped(stop),
        )
        .await?;
    Ok(())
}

/// How often the health service's per-service answers are refreshed.
const HEALTH_EVERY: Duration = Duration::from_millis(200);

/// Keeps the gRPC health service's answers per service true: Kv and Raft are
/// SERVING only while the node takes part in Raft (not after Admin.Stop, nor while
/// out of Raft for a full disk); Admin always serves (it is how a node is started
/// again). The overall answer (service "") stays SERVING while the process runs.
async fn report_health(
    reporter: tonic_health::server::HealthReporter,
    driver: DriverHandle,
    stop: watch::Receiver<bool>,
) {
    let mut serving = None;
    let mut every = tokio::time::interval(HEALTH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !*stop.borrow() {
        every.tick().await;
        // No answer from the driver (it is gone, or stuck): not serving.
        let up = matches!(
            tokio::time::timeout(HEALTH_EVERY, driver.status()).await,
            Ok(Ok(status)) if status.up
        );
        if serving == Some(up) {
            continue;
        }
        serving = Some(up);
        if up {
            reporter.set_serving::<KvServer<KvService>>().await;
            reporter.set_serving::<RaftServer<RaftService>>().await;
        } else {
            reporter.set_not_serving::<KvServer<KvService>>().await;
            reporter.set_not_serving::<RaftServer<RaftService>>().await;
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Marks a failure that certainly left the cluster unchanged (the request never made
/// it into the log), so that the node that forwarded it may try again. UNAVAILABLE
/// alone does not say so: a write whose leader lost its post after proposing it may
/// still commit, and sending it again could apply it twice (put a, put b, put a).
pub const NOT_APPLIED: &str = "x-distraft-not-applied";

/// Marks a RESOURCE_EXHAUSTED that is about storage (the quota, a full disk: HTTP 507
/// at the gateway) rather than load (the forwarding cap, load shedding: HTTP 503, try
/// again soon).
pub const INSUFFICIENT_STORAGE: &str = "x-distraft-insufficient-storage";

/// The gRPC status for a failed client request.
pub fn status_of(err: RequestError) -> Status {
    let not_applied = matches!(
        err,
        RequestError::NotLeader { .. }
            | RequestError::LeadershipLost
            | RequestError::Stopped
            | RequestError::ShuttingDown
            | RequestError::Overloaded
            | RequestError::QuotaExceeded { .. }
            | RequestError::NoSpace
    );
    let storage = matches!(
        err,
        RequestError::QuotaExceeded { .. } | RequestError::NoSpace
    );
    let mut status = match err {
        RequestError::NotLeader { .. } | RequestError::LeadershipLost => Status::unavailable(
            format!("{err}; no leader could serve the request, try again"),
        ),
        RequestError::Indeterminate
        | RequestError::Stopped
        | RequestError::ShuttingDown
        | RequestError::Overloaded => Status::unavailable(err.to_string()),
        RequestError::Rejected(_) | RequestError::Storage(_) => Status::internal(err.to_string()),
        // HTTP 507 at the gateway.
        RequestError::QuotaExceeded { .. } | RequestError::NoSpace => {
            Status::resource_exhausted(err.to_string())
        }
    };
    if not_applied {
        status.metadata_mut().insert(
            NOT_APPLIED,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    if storage {
        status.metadata_mut().insert(
            INSUFFICIENT_STORAGE,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    status
}

/// Whether a node that forwarded a request to the leader, and got `failure` back,
/// looks for the leader again and sends it once more (else the client gets the
/// failure): only when the leader is gone, stopped or deposed (UNAVAILABLE), and, for
/// a write, only when it certainly did not happen (never apply a write twice). The
/// simulator (`tests/simulation.rs`) follows the same rule.
pub fn forward_again(write: bool, failure: &Status) -> bool {
    failure.code() == Code::Unavailable && (!write || certainly_not_applied(failure))
}

/// Counts a client request served, at the node the client called only: a request
/// another node forwarded here was counted there.
fn count_served(forwarded: bool, counter: &prometheus::IntCounterVec, label: &str) {
    if !forwarded {
        counter.with_label_values(&[label]).inc();
    }
}

/// Whether a write forwarded to the leader certainly did not happen: the leader said
/// so, or the request never left (the connection could not be made).
fn certainly_not_applied(status: &Status) -> bool {
    if crate::plant::active(crate::plant::Plant::RetryAmbiguousForward) {
        return true;
    }
    if status.metadata().contains_key(NOT_APPLIED) {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// How long a client request may take: the node's request timeout, or less when the
/// client set a shorter deadline (`grpc-timeout`).
struct Deadline {
    at: Instant,
    timeout: Duration,
    /// The client's own deadline is the binding one.
    client_bound: bool,
}

impl Deadline {
    fn of<T>(request: &Request<T>, request_timeout: Duration) -> Deadline {
        let client = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            // Answer a little before the client's deadline, so that our explanation
            // reaches it rather than a bare cancellation.
            .map(|client| client.saturating_sub((client / 10).min(CLIENT_DEADLINE_MARGIN)));
        let (timeout, client_bound) = match client {
            Some(client) if client < request_timeout => (client, true),
            _ => (request_timeout, false),
        };
        Deadline {
            at: Instant::now() + timeout,
            timeout,
            client_bound,
        }
    }

    fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The answer once the deadline has passed; a write may still commit later.
    fn expired(&self, write: bool) -> Status {
        let outcome = if write {
            "; the write may or may not have been applied"
        } else {
            ""
        };
        let message = format!(
            "no leader with a majority answered within {:.1?}{outcome}",
            self.timeout
        );
        if self.client_bound {
            Status::deadline_exceeded(message)
        } else {
            Status::unavailable(message)
        }
    }
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

// --- Kv ------------------------------------------------------------------------------

pub struct KvService {
    config: Arc<Config>,
    driver: DriverHandle,
    peers: Peers,
    /// One permit per write being forwarded to the leader (DISTRAFT_MAX_FORWARDED_REQUESTS).
    forwarding: Arc<Semaphore>,
}

/// Refuses a protected request without the node's API token (if one is set).
fn authorize<T>(config: &Config, request: &Request<T>) -> Result<(), Status> {
    let authorization = request
        .metadata()
        .get(AUTHORIZATION)
        .map(|value| value.as_bytes());
    config
        .access
        .authorize(authorization)
        .map_err(|denied| denied.status())
}

/// Refuses an empty key or value, or one over its configured limit.
fn check_size(what: &str, text: &str, limit: usize) -> Result<(), Status> {
    if text.is_empty() {
        return Err(Status::invalid_argument(format!("the {what} is empty")));
    }
    if text.len() > limit {
        return Err(Status::invalid_argument(format!(
            "the {what} is {} bytes, more than the limit of {limit}",
            text.len()
        )));
    }
    Ok(())
}

impl KvService {
    fn check_key(&self, key: &str) -> Result<(), Status> {
        check_size("key", key, self.config.max_key_bytes)
    }

    fn check_value(&self, value: &str) -> Result<(), Status> {
        check_size("value", value, self.config.max_value_bytes)
    }

    /// Runs `local` until it succeeds, fails for good, or the deadline passes. While
    /// there is no leader it retries; when another node leads, a write is forwarded to
    /// it once per attempt (never from a request that was itself forwarded).
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
        let mut pause = RETRY_MIN;
        loop {
            // Watched from before the attempt, so that a leader elected meanwhile
            // cuts the pause short.
            let mut leader = self.driver.leader_watch();
            let outcome = tokio::time::timeout_at(deadline.at, local())
                .await
                .map_err(|_| deadline.expired(write))?;
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
                            // The leader is gone, stopped or deposed: look again, unless
                            // the write may have happened (never apply it twice).
                            Err(status) if forward_again(write, &status) => {
                                debug!(leader, "forwarding to the leader failed: {status}");
                            }
                            Err(status) => return Err(status),
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
                Err(err) => return Err(status_of(err)),
            }
            if deadline.remaining() <= pause {
                return Err(deadline.expired(write));
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = leader.changed() => {}
            }
            pause = (pause * 2).min(RETRY_MAX);
        }
    }
}

/// A request forwarded to the leader, keeping what is left of the deadline, with this
/// node's API token (the client's request was authorized here).
fn forwarded_request<T>(config: &Config, message: T, remaining: Duration) -> Request<T> {
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

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        authorize(&self.config, &request)?;
        let deadline = Deadline::of(&request, self.config.request_timeout);
        let forwarded = request.metadata().contains_key(FORWARDED);
        let pb::GetRequest { key, stale } = request.into_inner();
        self.check_key(&key)?;
        // Linearizable reads are served here by ReadIndex (the core asks the leader to
        // confirm the read index), which spreads read load over the replicas and never
        // ships the value twice. They are forwarded to the leader only when this node
        // cannot take part (out of Raft for lack of space: the NOSPACE alarm).
        let value = self
            .run(
                &deadline,
                forwarded,
                false,
                || self.driver.read(key.clone(), stale),
                |mut client, remaining| {
                    let request = pb::GetRequest {
                        key: key.clone(),
                        stale,
                    };
                    let request = forwarded_request(&self.config, request, remaining);
                    async move {
                        match client.get(request).await {
                            Ok(found) => Ok(Some(found.into_inner().value)),
                            Err(status) if status.code() == Code::NotFound => Ok(None),
                            Err(status) => Err(status),
                        }
                    }
                },
            )
            .await?;
        let consistency = if stale { "stale" } else { "linearizable" };
        count_served(forwarded, &metrics().reads, consistency);
        match value {
            Some(value) => Ok(Response::new(pb::GetResponse {
                key,
                value,
                found: true,
            })),
            None => Err(Status::not_found(format!("key {key:?} not found"))),
        }
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        authorize(&self.config, &request)?;
        let deadline = Deadline::of(&request, self.config.request_timeout);
        let forwarded = request.metadata().contains_key(FORWARDED);
        let pb::PutRequest { key, value } = request.into_inner();
        self.check_key(&key)?;
        self.check_value(&value)?;
        let command = Kv::put_command(key.clone(), value.clone());
        let response = self
            .run(
                &deadline,
                forwarded,
                true,
                || async {
                    let kind = WriteKind::Put {
                        key: key.clone(),
                        value_bytes: value.len(),
                    };
                    let committed = self.driver.propose(command.clone(), kind).await?;
                    Ok(pb::PutResponse {
                        key: key.clone(),
                        value: value.clone(),
                        index: committed.index,
                    })
                },
                |mut client, remaining| {
                    let request = pb::PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                    };
                    let request = forwarded_request(&self.config, request, remaining);
                    async move { Ok(client.put(request).await?.into_inner()) }
                },
            )
            .await?;
        count_served(forwarded, &metrics().writes, "put");
        Ok(Response::new(response))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        authorize(&self.config, &request)?;
        let deadline = Deadline::of(&request, self.config.request_timeout);
        let forwarded = request.metadata().contains_key(FORWARDED);
        let pb::DeleteRequest { key } = request.into_inner();
        self.check_key(&key)?;
        let command = Kv::delete_command(key.clone());
        let response = self
            .run(
                &deadline,
                forwarded,
                true,
                || async {
                    let committed = self
                        .driver
                        .propose(command.clone(), WriteKind::Delete)
                        .await?;
                    let existed = matches!(committed.applied, Applied::Delete { existed: true });
                    Ok(pb::DeleteResponse {
                        key: key.clone(),
                        existed,
                        index: committed.index,
                    })
                },
                |mut client, remaining| {
                    let request = pb::DeleteRequest { key: key.clone() };
                    let request = forwarded_request(&self.config, request, remaining);
                    async move { Ok(client.delete(request).await?.into_inner()) }
                },
            )
            .await?;
        count_served(forwarded, &metrics().writes, "delete");
        Ok(Response::new(response))
    }
}

// --- Admin ---------------------------------------------------------------------------

/// Stop and Start need the API token (if set); Status stays open, as `GET /` does
/// (it names the members and the leader, nothing secret, and viewers poll it).
pub struct AdminService {
    config: Arc<Config>,
    driver: DriverHandle,
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn stop(
        &self,
        request: Request<pb::StopRequest>,
    ) -> Result<Response<pb::StopResponse>, Status> {
        authorize(&self.config, &request)?;
        self.driver.stop().await.map_err(status_of)?;
        Ok(Response::new(pb::StopResponse {}))
    }

    async fn start(
        &self,
        request: Request<pb::StartRequest>,
    ) -> Result<Response<pb::StartResponse>, Status> {
        authorize(&self.config, &request)?;
        self.driver.start().await.map_err(status_of)?;
        Ok(Response::new(pb::StartResponse {}))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let mut status = self.driver.status().await.map_err(status_of)?;
        let metrics = metrics();
        status.reads_total = counter_sum(&metrics.reads);
        status.writes_total = counter_sum(&metrics.writes);
        Ok(Response::new(status))
    }
}

/// The sum of a counter over all its labels.
fn counter_sum(counter: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    counter
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}

// --- Raft ----------------------------------------------------------------------------

pub struct RaftService {
    config: Arc<Config>,
    driver: DriverHandle,
    /// Ends the long-lived AppendEntries streams at shutdown, which a graceful server
    /// shutdown would otherwise wait for.
    stop: watch::Receiver<bool>,
    /// Logs refused requests, rate-limited.
    refusals: Arc<Refusals>,
}

/// Why a Raft request got no answer from the driver.
fn not_answered() -> Status {
    Status::unavailable("the node is stopped or shutting down")
}

impl RaftService {
    /// Logs (rate-limited) a request refused with `status`, and passes the status on.
    fn refuse(&self, from: &str, what: &'static str, status: Status) -> Status {
        self.refusals.note(&self.config, from, what, &status);
        status
    }

    /// Steps a request and waits (bounded) for the core's reply to it.
    async fn ask(&self, msg: Message, timeout: Duration) -> Result<Option<Message>, Status> {
        let (reply, answer) = oneshot::channel();
        if !self.driver.step(msg, Some(reply), None) {
            return Err(Status::unavailable("the node is overloaded"));
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(RaftReply::Answer(msg))) => Ok(Some(msg)),
            Ok(Ok(RaftReply::Unanswered)) => Ok(None),
            Ok(Err(_)) => Err(not_answered()),
            Err(_) => Err(Status::deadline_exceeded("no answer in time")),
        }
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn request_vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let request = request.into_inner();
        let from = request.from.clone();
        let msg = convert::vote_request_message(&self.config, request)
            .map_err(|status| self.refuse(&from, "a RequestVote", status))?;
        let reply = self.ask(msg, raft_rpc_timeout(&self.config)).await?;
        Ok(Response::new(convert::vote_response(&self.config, reply)))
    }

    type AppendEntriesStream = ResponseStream<pb::AppendEntriesResponse>;

    /// Each request is stepped as it arrives; the answers are awaited and sent in the
    /// order of the requests, so pipelined batches stay in order both ways.
    async fn append_entries(
        &self,
        request: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::AppendEntriesStream>, Status> {
        let mut requests = request.into_inner();
        let (answers_tx, answers) =
            mpsc::channel::<Result<oneshot::Receiver<RaftReply>, Status>>(1024);
        let (config, driver) = (self.config.clone(), self.driver.clone());
        let (stop, refusals) = (self.stop.clone(), self.refusals.clone());
        tokio::spawn(async move {
            let mut stopping = std::pin::pin!(stopped(stop));
            // The sender, once known: if the stream breaks, it may have died.
            let mut sender = None;
            loop {
                let next = tokio::select! {
                    next = requests.message() => next,
                    () = &mut stopping => return,
                };
                let ended = !matches!(next, Ok(Some(_)));
                if let (true, Some(from)) = (ended, sender) {
                    driver.connection_lost(from);
                }
                let next = match next {
                    Ok(Some(request)) => {
                        let from = request.from.clone();
                        convert::append_request_message(&config, request).inspect_err(|status| {
                            refusals.note(&config, &from, "an AppendEntries", status)
                        })
                    }
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                if let Ok(msg) = &next {
                    sender = Some(msg.from);
                }
                let answer = next.and_then(|msg| {
                    let (reply, answer) = oneshot::channel();
                    if driver.step(msg, Some(reply), None) {
                        Ok(answer)
                    } else {
                        Err(Status::unavailable("the node is overloaded"))
                    }
                });
                let failed = answer.is_err();
                if answers_tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        let config = self.config.clone();
        let responses = ReceiverStream::new(answers).then(move |answer| {
            let config = config.clone();
            async move {
                match answer?.await {
                    Ok(RaftReply::Answer(msg)) => Ok(convert::append_response(&config, Some(msg))),
                    Ok(RaftReply::Unanswered) => Ok(convert::append_response(&config, None)),
                    Err(_) => Err(not_answered()),
                }
            }
        });
        // The first error ends the stream: the leader reopens it after a back-off.
        let responses = responses.scan(false, |failed, item| {
            let emit = if *failed { None } else { Some(item) };
            if emit.as_ref().is_some_and(Result::is_err) {
                *failed = true;
            }
            futures::future::ready(emit)
        });
        Ok(Response::new(Box::pin(responses)))
    }

    /// Checks the first chunk and asks the driver whether to store the image before
    /// anything is written; streams the image (bounded in size and time) into a
    /// snapshot writer; verifies its length and checksum and parses it; only then lets
    /// the core decide whether to install it. A refused stream stores nothing.
    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::InstallSnapshotChunk>>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("InstallSnapshot without chunks"))?;
        let claimed_from = first.from.clone();
        let refuse = |status| self.refuse(&claimed_from, "an InstallSnapshot", status);
        let (from, term, meta) = convert::snapshot_request(&self.config, &first).map_err(refuse)?;
        let admission = self
            .driver
            .begin_snapshot(from, term, meta.clone())
            .await
            .map_err(status_of)?;
        let mut writer = match admission {
            SnapshotAdmission::Write(writer) => Some(writer),
            SnapshotAdmission::NotNeeded => None,
            SnapshotAdmission::Stale { term } => {
                // As the core answers a stale leader's append: our term, no success.
                let reply = Message {
                    from: self.config.id,
                    to: from,
                    term,
                    body: Body::AppendResponse {
                        outcome: AppendOutcome::StaleTerm,
                    },
                };
                return Ok(Response::new(convert::append_response(
                    &self.config,
                    Some(reply),
                )));
            }
            SnapshotAdmission::NotLeader { leader } => {
                return Err(refuse(Status::failed_precondition(format!(
                    "{:?} is not the leader of term {term} (member {leader} is)",
                    first.from
                ))));
            }
        };
        let declared = first.image_bytes;
        let receive = async {
            let (mut received, mut crc) = (0u64, 0u32);
            let mut data = first.data;
            loop {
                received = received.saturating_add(data.len() as u64);
                if received > declared {
                    return Err(Status::invalid_argument(format!(
                        "the image is longer than the {declared} bytes declared"
                    )));
                }
                crc = crc32c::crc32c_append(crc, &data);
                // A snapshot this node does not need is read to the end and not stored.
                if let Some(mut w) = writer.take() {
                    writer = Some(
                        tokio::task::spawn_blocking(move || {
                            std::io::Write::write_all(&mut w, &data).map(|()| w)
                        })
                        .await
                        .map_err(|err| Status::internal(err.to_string()))?
                        .map_err(|err| Status::internal(format!("writing the snapshot: {err}")))?,
                    );
                }
                // An aborted stream is an error here, so a partial image is never used.
                match chunks.message().await? {
                    Some(chunk) => data = chunk.data,
                    None => break,
                }
            }
            Ok((received, crc))
        };
        let (received, crc) = tokio::time::timeout(snapshot_timeout(declared), receive)
            .await
            .map_err(|_| Status::deadline_exceeded("the snapshot stream took too long"))?
            .map_err(refuse)?;
        if received != declared || crc != first.image_crc32c {
            return Err(refuse(Status::invalid_argument(format!(
                "the image is {received} bytes with crc32c {crc:08x}; \
                 {declared} bytes with crc32c {:08x} were declared",
                first.image_crc32c
            ))));
        }
        let received = match writer {
            None => None,
            Some(mut writer) => {
                // Parsed before the core sees it: a bad image never replaces anything.
                let parsed = tokio::task::spawn_blocking(move || {
                    let kv = writer
                        .read_back()
                        .map_err(|err| Status::internal(err.to_string()))
                        .and_then(|image| {
                            Kv::read_image(image).map_err(|err| {
                                Status::invalid_argument(format!(
                                    "the snapshot image does not parse: {err}"
                                ))
                            })
                        })?;
                    Ok::<_, Status>(ReceivedSnapshot { writer, kv })
                })
                .await
                .map_err(|err| Status::internal(err.to_string()))?;
                Some(parsed.map_err(refuse)?)
            }
        };
        let msg = Message {
            from,
            to: self.config.id,
            term,
            body: Body::Snapshot { meta },
        };
        let (reply, answer) = oneshot::channel();
        if !self.driver.step(msg, Some(reply), received) {
            return Err(Status::unavailable("the node is overloaded"));
        }
        match answer.await {
            Ok(RaftReply::Answer(msg)) => Ok(Response::new(convert::append_response(
                &self.config,
                Some(msg),
            ))),
            Ok(RaftReply::Unanswered) => {
                Ok(Response::new(convert::append_response(&self.config, None)))
            }
            Err(_) => Err(not_answered()),
        }
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let deadline = Deadline::of(&request, self.config.request_timeout);
        let request = request.into_inner();
        let from = request.from.clone();
        let msg = convert::read_index_request_message(&self.config, request)
            .map_err(|status| self.refuse(&from, "a ReadIndex", status))?;
        // Answered after a heartbeat round, in a later turn of the driver.
        let reply = self.ask(msg, deadline.remaining()).await?;
        Ok(Response::new(convert::read_index_response(
            &self.config,
            reply,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shorter_deadline_binds_and_answers_before_the_client_gives_up() {
        let own = Duration::from_secs(3);
        let plain = Deadline::of(&Request::new(()), own);
        assert_eq!((plain.timeout, plain.client_bound), (own, false));
        assert_eq!(plain.expired(false).code(), Code::Unavailable);

        let mut request = Request::new(());
        request.set_timeout(Duration::from_millis(1000));
        let client = Deadline::of(&request, own);
        assert_eq!(
            (client.timeout, client.client_bound),
            (Duration::from_millis(950), true)
        );
        let status = client.expired(true);
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(status
            .message()
            .contains("may or may not have been applied"));

        let mut request = Request::new(());
        request.set_timeout(Duration::from_secs(10));
        assert_eq!(Deadline::of(&request, own).timeout, own);
    }

    /// Only failures that certainly left the log unchanged let a forwarded write be
    /// sent again: a write that may have committed must never be applied twice.
    #[tokio::test]
    async fn only_certain_failures_make_a_forwarded_write_retry() {
        assert!(certainly_not_applied(&status_of(RequestError::NotLeader {
            leader: None
        })));
        assert!(certainly_not_applied(&status_of(
            RequestError::LeadershipLost
        )));
        assert!(!certainly_not_applied(&status_of(
            RequestError::Indeterminate
        )));
        // A broken connection: the request may have arrived.
        assert!(!certainly_not_applied(&Status::unavailable(
            "transport error"
        )));

        // Nobody listens: the request never left.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let refused = KvClient::new(channel)
            .put(pb::PutRequest {
                key: "k".into(),
                value: "v".into(),
            })
            .await
            .unwrap_err();
        assert!(certainly_not_applied(&refused), "{refused:?}");
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(
            parse_grpc_timeout("2999m"),
            Some(Duration::from_millis(2999))
        );
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "10", "10x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
