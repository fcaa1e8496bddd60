//! Connections to the other members: the driver's [`Transport`].
//!
//! One lazily connected tonic [`Channel`] (one HTTP/2 connection, reconnected by tonic
//! when it breaks) per peer carries everything: the long-lived AppendEntries stream,
//! votes, ReadIndex, snapshots, and client requests forwarded to the leader. One task
//! per peer takes the driver's messages in order and puts them on the right RPC;
//! answers go back to the driver as messages. Raft tolerates loss, so whatever cannot
//! be sent right now (peer down, back-off, full buffer) is dropped and retransmitted by
//! the core later.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use super::convert;
use super::refusals::Refusals;
use crate::config::{Config, Member};
use crate::driver::{DriverHandle, Transport};
use crate::metrics::metrics;
use crate::proto::v1::{
    self as pb, admin_client::AdminClient, kv_client::KvClient, raft_client::RaftClient,
};
use crate::raft::{Body, Message, NodeId};
use crate::storage::SnapshotFile;

/// AppendEntries requests buffered per stream before new ones are dropped.
const STREAM_BUFFER: usize = 1024;
/// Messages from the driver waiting for a peer's task; past it new ones are dropped
/// (Raft retransmits), so a slow or stuck peer never holds the driver or unbounded
/// memory. The core's own window (64 batches of at most 1 MiB per follower) bounds
/// what a full outbox can hold.
pub const PEER_OUTBOX: usize = 1024;
/// A peer's dropped messages are logged at most this often.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// Snapshot images travel in chunks of this size.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// First and largest pause before reopening a replication stream that failed. The
/// largest is what a healed peer may wait for its leader to try again: with 1 s, reads
/// through a follower healed after a long partition failed for about 1 s more.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Deadline of a unary Raft RPC (votes, ReadIndex): an answer later than an election
/// timeout is of no use.
pub fn raft_rpc_timeout(config: &Config) -> Duration {
    config
        .election_timeout
        .clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// A replication stream whose oldest request has waited this long for its answer is
/// considered dead and reopened (the peer may be paused or the network gone silent).
fn replication_timeout(config: &Config) -> Duration {
    (raft_rpc_timeout(config) * 4).max(Duration::from_secs(1))
}

/// Time allowed to send a snapshot: generous, as it scales with the image size.
pub(crate) fn snapshot_timeout(data_len: u64) -> Duration {
    Duration::from_secs(10) + Duration::from_secs(data_len / (1024 * 1024))
}

enum Outbound {
    Message(Message),
    Snapshot(Message, SnapshotFile),
}

/// The set of peer connections; cheap to clone. A link is made for each member the
/// registry knows of, when first needed: the members at start, then each one a
/// membership change adds (the driver learns its record before the first message to
/// it leaves). A removed member's link stays, idle: ids are never reused, and a link
/// costs a task and a lazy channel.
#[derive(Clone)]
pub struct Peers {
    shared: Arc<Shared>,
}

struct Shared {
    config: Arc<Config>,
    links: RwLock<HashMap<NodeId, Arc<PeerLink>>>,
    /// Where link tasks run: links are also made from the driver's thread.
    runtime: tokio::runtime::Handle,
    /// Set once the driver exists ([`PeerTasks::run`]); a link made later starts its
    /// task at once, one made before waits in `waiting`.
    driver: OnceLock<DriverHandle>,
    waiting: Mutex<Vec<(Member, Channel, mpsc::Receiver<Outbound>)>>,
}

struct PeerLink {
    outbox: mpsc::Sender<Outbound>,
    channel: Channel,
    dropped: Mutex<DroppedMessages>,
}

/// Messages dropped because a peer's outbox was full.
#[derive(Default)]
struct DroppedMessages {
    total: u64,
    /// Dropped since the last log line, and when that was.
    unlogged: u64,
    logged_at: Option<Instant>,
}

/// Starts the links' tasks once the driver exists.
pub struct PeerTasks {
    peers: Peers,
}

/// A channel to a member's gRPC server, connected on first use.
///
/// A partition can leave the connection dead for good (a docker network disconnect and
/// reconnect changes the node's address): every RPC on it then waits out its deadline
/// until the HTTP/2 keepalive closes it, and only then does tonic reconnect. So probe
/// after a heartbeat interval of silence (at least 50 ms, so that tiny heartbeats do
/// not turn into a ping storm) and give up after an RPC deadline: a healed node is
/// heard from again within about an election timeout.
///
/// With TLS the channel is https:// and presents this node's certificate; the same
/// channel carries the forwarded client requests.
fn connect_lazy(config: &Config, member: &Member) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(config.peer_uri(member))?;
    if let Some(tls) = &config.tls {
        endpoint = endpoint.tls_config(tls.grpc_client())?;
    }
    Ok(endpoint
        .connect_timeout(raft_rpc_timeout(config))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(config.heartbeat_timeout.max(Duration::from_millis(50)))
        .keep_alive_timeout(raft_rpc_timeout(config))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

impl Peers {
    /// Creates the links to the members known now (nothing connects yet). Must run
    /// inside a tokio runtime.
    pub fn new(config: Arc<Config>) -> Result<(Peers, PeerTasks), tonic::transport::Error> {
        let peers = Peers {
            shared: Arc::new(Shared {
                config: config.clone(),
                links: RwLock::new(HashMap::new()),
                runtime: tokio::runtime::Handle::current(),
                driver: OnceLock::new(),
                waiting: Mutex::new(Vec::new()),
            }),
        };
        let roster = config.registry.roster();
        for member in roster.current().filter(|m| m.id != config.id) {
            peers.make_link(member)?;
        }
        Ok((peers.clone(), PeerTasks { peers }))
    }

    /// The link to member `id`, made now if the registry knows it and none exists.
    fn link(&self, id: NodeId) -> Option<Arc<PeerLink>> {
        if let Some(link) = read(&self.shared.links).get(&id) {
            return Some(link.clone());
        }
        let config = &self.shared.config;
        let member = config.registry.roster().member(id)?.clone();
        if id == config.id {
            return None;
        }
        match self.make_link(&member) {
            Ok(link) => Some(link),
            Err(err) => {
                warn!(to = id, "cannot make a link to {}: {err}", member.name);
                None
            }
        }
    }

    fn make_link(&self, member: &Member) -> Result<Arc<PeerLink>, tonic::transport::Error> {
        let shared = &self.shared;
        let mut links = write(&shared.links);
        if let Some(link) = links.get(&member.id) {
            return Ok(link.clone());
        }
        // A lazy channel starts a worker task: in the runtime, whichever thread asks.
        let _runtime = shared.runtime.enter();
        let channel = connect_lazy(&shared.config, member)?;
        let (outbox, inbox) = mpsc::channel(PEER_OUTBOX);
        let link = Arc::new(PeerLink {
            outbox,
            channel: channel.clone(),
            dropped: Mutex::new(DroppedMessages::default()),
        });
        links.insert(member.id, link.clone());
        match shared.driver.get() {
            Some(driver) => {
                let task = LinkTask::new(
                    shared.config.clone(),
                    member.clone(),
                    channel,
                    driver.clone(),
                );
                shared.runtime.spawn(task.run(inbox));
            }
            None => lock(&shared.waiting).push((member.clone(), channel, inbox)),
        }
        Ok(link)
    }

    /// A Kv client for forwarding client requests to member `id`.
    pub fn kv_client(&self, id: NodeId, max_message_bytes: usize) -> Option<KvClient<Channel>> {
        let link = self.link(id)?;
        Some(
            KvClient::new(link.channel.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        )
    }

    /// An Admin client for member `id` (the dashboard's view of the cluster, and its
    /// stop/start buttons).
    pub fn admin_client(&self, id: NodeId) -> Option<AdminClient<Channel>> {
        let link = self.link(id)?;
        Some(
            AdminClient::new(link.channel.clone())
                .max_decoding_message_size(crate::limits::GRPC_MAX_ADMIN_MESSAGE_BYTES),
        )
    }

    /// Never blocks the driver: a message that does not fit is dropped and counted.
    fn post(&self, to: NodeId, outbound: Outbound) {
        let Some(link) = self.link(to) else {
            warn!(to, "no link to this node: the registry has no record of it");
            return;
        };
        match link.outbox.try_send(outbound) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let mut dropped = lock(&link.dropped);
                dropped.total += 1;
                dropped.unlogged += 1;
                let due = dropped
                    .logged_at
                    .is_none_or(|at| at.elapsed() >= DROP_LOG_INTERVAL);
                if due {
                    warn!(
                        to,
                        dropped = dropped.unlogged,
                        total = dropped.total,
                        "the outbox to this peer is full ({PEER_OUTBOX} messages): dropping messages"
                    );
                    dropped.unlogged = 0;
                    dropped.logged_at = Some(Instant::now());
                }
            }
            // The peer task is gone (shutting down).
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Messages to member `id` dropped so far because its outbox was full.
    pub fn dropped_messages(&self, id: NodeId) -> u64 {
        read(&self.shared.links)
            .get(&id)
            .map_or(0, |link| lock(&link.dropped).total)
    }
}

impl Transport for Peers {
    fn send(&self, msg: Message) {
        self.post(msg.to, Outbound::Message(msg));
    }

    fn send_snapshot(&self, msg: Message, file: SnapshotFile) {
        self.post(msg.to, Outbound::Snapshot(msg, file));
    }
}

impl PeerTasks {
    /// Starts one task per peer, delivering answers to `driver`.
    pub fn run(self, driver: DriverHandle) {
        let shared = &self.peers.shared;
        // Under the links' lock, so that a link made meanwhile is started once.
        let _links = write(&shared.links);
        let _ = shared.driver.set(driver.clone());
        for (member, channel, inbox) in std::mem::take(&mut *lock(&shared.waiting)) {
            let link = LinkTask::new(shared.config.clone(), member, channel, driver.clone());
            shared.runtime.spawn(link.run(inbox));
        }
    }
}

/// One open AppendEntries stream to a peer.
struct ReplicationStream {
    requests: mpsc::Sender<pb::AppendEntriesRequest>,
    /// When each unanswered request was sent, oldest first.
    unanswered: Arc<Mutex<VecDeque<Instant>>>,
    reader: JoinHandle<()>,
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Exponential back-off between attempts to (re)open a replication stream.
struct Backoff {
    next_attempt: Instant,
    delay: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next_attempt: Instant::now(),
            delay: BACKOFF_MIN,
        }
    }

    fn ready(&self) -> bool {
        Instant::now() >= self.next_attempt
    }

    fn failed(&mut self) {
        self.next_attempt = Instant::now() + self.delay;
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
    }

    fn succeeded(&mut self) {
        self.delay = BACKOFF_MIN;
    }
}

struct LinkTask {
    config: Arc<Config>,
    peer: Member,
    client: RaftClient<Channel>,
    driver: DriverHandle,
    stream: Option<ReplicationStream>,
    backoff: Backoff,
    /// Set by a stream's reader when an answer arrived (resets the back-off).
    answered: Arc<Mutex<bool>>,
    snapshot: Option<JoinHandle<()>>,
    /// Logs (rate-limited) answers that do not count: from another member or cluster.
    refusals: Arc<Refusals>,
}

impl LinkTask {
    fn new(config: Arc<Config>, peer: Member, channel: Channel, driver: DriverHandle) -> LinkTask {
        let max = config.max_message_bytes();
        let client = RaftClient::new(channel)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        LinkTask {
            config,
            peer,
            client,
            driver,
            stream: None,
            backoff: Backoff::new(),
            answered: Arc::new(Mutex::new(false)),
            snapshot: None,
            refusals: Arc::new(Refusals::default()),
        }
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Outbound>) {
        let mut watchdog = tokio::time::interval(Duration::from_millis(100));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                outbound = inbox.recv() => match outbound {
                    Some(Outbound::Message(msg)) => self.send(msg),
                    Some(Outbound::Snapshot(msg, file)) => self.send_snapshot(msg, file),
                    None => return,
                },
                _ = watchdog.tick() => self.check_stream(),
            }
        }
    }

    fn send(&mut self, msg: Message) {
        match &msg.body {
            // TimeoutNow on the replication stream: after the appends it follows.
            Body::Append { .. } | Body::Heartbeat { .. } | Body::TimeoutNow => self.replicate(msg),
            Body::PreVote { .. } | Body::Vote { .. } => self.request_vote(msg),
            Body::ReadIndex { id } => self.read_index(*id, msg),
            // The driver hands snapshots over with their image (`send_snapshot`).
            Body::Snapshot { .. } => debug!(
                to = self.peer.id,
                "dropping a snapshot sent without its image"
            ),
            // Answers travel back on the request's own RPC; one that reaches the
            // transport had no waiting request.
            Body::PreVoteResponse { .. }
            | Body::VoteResponse { .. }
            | Body::AppendResponse { .. }
            | Body::HeartbeatResponse { .. }
            | Body::ReadIndexResponse { .. } => debug!(
                to = self.peer.id,
                "dropping a reply without a waiting request"
            ),
        }
    }

    /// Puts an append or heartbeat on the replication stream, opening it if needed.
    fn replicate(&mut self, msg: Message) {
        let Some(request) = convert::append_request(&self.config, msg) else {
            return;
        };
        if self
            .stream
            .as_ref()
            .is_some_and(|s| s.reader.is_finished() || s.requests.is_closed())
        {
            self.stream = None;
            self.backoff.failed();
        }
        if self.stream.is_none() {
            if !self.backoff.ready() {
                return;
            }
            self.stream = Some(self.open_stream());
        }
        let Some(stream) = &self.stream else { return };
        match stream.requests.try_send(request) {
            Ok(()) => lock(&stream.unanswered).push_back(Instant::now()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                debug!(
                    to = self.peer.id,
                    "replication stream full: dropping a message"
                )
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.stream = None,
        }
    }

    fn open_stream(&mut self) -> ReplicationStream {
        let (requests, outgoing) = mpsc::channel(STREAM_BUFFER);
        let unanswered = Arc::new(Mutex::new(VecDeque::<Instant>::new()));
        let mut client = self.client.clone();
        let (config, driver, peer) = (self.config.clone(), self.driver.clone(), self.peer.id);
        let (pending, answered) = (unanswered.clone(), self.answered.clone());
        let refusals = self.refusals.clone();
        let peer_name = self.peer.name.clone();
        let connect_timeout = raft_rpc_timeout(&config);
        let reader = tokio::spawn(async move {
            let call = client.append_entries(ReceiverStream::new(outgoing));
            let mut responses = match tokio::time::timeout(connect_timeout, call).await {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => {
                    debug!(to = peer, "opening the replication stream failed: {status}");
                    return;
                }
                Err(_) => {
                    debug!(to = peer, "opening the replication stream timed out");
                    return;
                }
            };
            loop {
                match responses.message().await {
                    Ok(Some(response)) => {
                        if let Some(sent) = lock(&pending).pop_front() {
                            metrics()
                                .peer_round_trip_seconds
                                .with_label_values(&[peer_name.as_str()])
                                .observe(sent.elapsed().as_secs_f64());
                        }
                        *lock(&answered) = true;
                        let from = response.from.clone();
                        match convert::append_response_message(&config, peer, response) {
                            Ok(Some(msg)) => {
                                driver.step(msg, None, None);
                            }
                            Ok(None) => {}
                            Err(status) => {
                                refusals.note(&config, &from, "an answer to AppendEntries", &status)
                            }
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        debug!(to = peer, "replication stream ended: {status}");
                        return;
                    }
                }
            }
        });
        ReplicationStream {
            requests,
            unanswered,
            reader,
        }
    }

    /// Drops a stream that stopped answering, so that the next message reopens it.
    fn check_stream(&mut self) {
        if std::mem::take(&mut *lock(&self.answered)) {
            self.backoff.succeeded();
        }
        let Some(stream) = &self.stream else { return };
        let oldest = lock(&stream.unanswered).front().copied();
        let stalled = oldest.is_some_and(|sent| sent.elapsed() > replication_timeout(&self.config));
        if stalled || stream.reader.is_finished() {
            if stalled {
                info!(to = self.peer.id, "replication stream stalled; reopening");
            }
            self.stream = None;
            self.backoff.failed();
        }
    }

    fn request_vote(&self, msg: Message) {
        let Some(request) = convert::vote_request(&self.config, &msg) else {
            return;
        };
        let pre_vote = request.pre_vote;
        let mut client = self.client.clone();
        let (config, driver, peer) = (self.config.clone(), self.driver.clone(), self.peer.id);
        let refusals = self.refusals.clone();
        let peer_name = self.peer.name.clone();
        let deadline = raft_rpc_timeout(&config);
        tokio::spawn(async move {
            let mut request = tonic::Request::new(request);
            request.set_timeout(deadline);
            match tokio::time::timeout(deadline, client.request_vote(request)).await {
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    let from = response.from.clone();
                    match convert::vote_response_message(&config, peer, pre_vote, response) {
                        Ok(Some(msg)) => {
                            driver.step(msg, None, None);
                        }
                        Ok(None) => {}
                        Err(status) => {
                            refusals.note(&config, &from, "an answer to RequestVote", &status)
                        }
                    }
                }
                // Refused: another cluster or member, or this node was removed.
                Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                    refusals.note(&config, &peer_name, "a vote request", &status)
                }
                Ok(Err(status)) => debug!(to = peer, "vote request failed: {status}"),
                Err(_) => debug!(to = peer, "vote request timed out"),
            }
        });
    }

    fn read_index(&self, id: u64, msg: Message) {
        let Some(request) = convert::read_index_request(&self.config, &msg) else {
            return;
        };
        let mut client = self.client.clone();
        let (config, driver, peer) = (self.config.clone(), self.driver.clone(), self.peer.id);
        let refusals = self.refusals.clone();
        // The leader answers after a heartbeat round; allow for a slow one.
        let deadline = replication_timeout(&config);
        tokio::spawn(async move {
            let mut request = tonic::Request::new(request);
            request.set_timeout(deadline);
            let answered = match tokio::time::timeout(deadline, client.read_index(request)).await {
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    let from = response.from.clone();
                    convert::read_index_response_message(&config, peer, id, response)
                        .inspect_err(|status| {
                            refusals.note(&config, &from, "an answer to ReadIndex", status)
                        })
                        .ok()
                }
                Ok(Err(status)) => {
                    debug!(to = peer, "ReadIndex failed: {status}");
                    None
                }
                Err(_) => None,
            };
            // A failed request is reported as a refusal, so the read fails at once
            // instead of waiting for its client's deadline.
            let msg = answered.unwrap_or_else(|| convert::read_index_failed(&config, peer, id));
            driver.step(msg, None, None);
        });
    }

    /// Streams the snapshot image to the peer, one snapshot at a time per peer.
    fn send_snapshot(&mut self, msg: Message, file: SnapshotFile) {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|task| !task.is_finished())
        {
            debug!(to = self.peer.id, "a snapshot is already on its way");
            return;
        }
        let mut client = self.client.clone();
        let (config, driver, peer) = (self.config.clone(), self.driver.clone(), self.peer.id);
        let peer_name = self.peer.name.clone();
        self.snapshot = Some(tokio::spawn(async move {
            let index = file.meta.index;
            let deadline = snapshot_timeout(file.data_len());
            let first = pb::InstallSnapshotChunk {
                from: config.name.clone(),
                term: msg.term,
                meta: Some(convert::meta_to_proto(&config, &file.meta)),
                data: Vec::new(),
                cluster_id: config.cluster_id,
                to: peer_name.clone(),
                image_bytes: file.data_len(),
                image_crc32c: file.data_crc(),
                from_id: config.id,
                to_id: peer,
                wire_version: convert::WIRE_VERSION,
            };
            let (chunks, outgoing) = mpsc::channel(4);
            let (read_failed_tx, read_failed) = tokio::sync::oneshot::channel::<String>();
            tokio::task::spawn_blocking(move || {
                if let Err(err) = read_chunks(&file, first, &chunks) {
                    let _ = read_failed_tx.send(err);
                }
            });
            let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
            request.set_timeout(deadline);
            info!(to = peer, index, "sending a snapshot");
            tokio::select! {
                result = tokio::time::timeout(deadline, client.install_snapshot(request)) => match result {
                    Ok(Ok(response)) => {
                        let response = response.into_inner();
                        match convert::append_response_message(&config, peer, response) {
                            Ok(Some(msg)) => {
                                driver.step(msg, None, None);
                            }
                            Ok(None) => {}
                            Err(status) => warn!(to = peer, index, "discarded the answer to a snapshot: {status}"),
                        }
                    }
                    // A peer that is down is routine; the core asks again later.
                    Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                        debug!(to = peer, index, "snapshot not sent: {}", status.message())
                    }
                    Ok(Err(status)) => {
                        warn!(to = peer, index, "sending the snapshot failed: {status}")
                    }
                    Err(_) => warn!(to = peer, index, "sending the snapshot timed out"),
                },
                // Dropping the call aborts the stream, so a damaged image is never taken
                // for a complete one.
                Ok(err) = read_failed => warn!(to = peer, index, "reading the snapshot failed: {err}"),
            }
        }));
    }
}

/// Reads the image into chunks; the first chunk carries the metadata.
fn read_chunks(
    file: &SnapshotFile,
    first: pb::InstallSnapshotChunk,
    chunks: &mpsc::Sender<pb::InstallSnapshotChunk>,
) -> Result<(), String> {
    let mut data = file.open_data().map_err(|err| err.to_string())?;
    let mut header = Some(first);
    loop {
        let mut buf = vec![0u8; SNAPSHOT_CHUNK];
        let mut filled = 0;
        while filled < buf.len() {
            match data.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err.to_string()),
            }
        }
        buf.truncate(filled);
        let last = filled < SNAPSHOT_CHUNK;
        let mut chunk = header.take().unwrap_or_default();
        chunk.data = buf;
        if chunks.blocking_send(chunk).is_err() {
            // The call ended (failed or timed out); nobody wants the rest.
            return Ok(());
        }
        if last {
            return Ok(());
        }
    }
}

/// Locks a mutex that only guards plain data (no invariant can be broken by a panic).
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        node: NodeArgs,
    }

    /// A peer that takes nothing (its task never runs) fills its outbox; further
    /// messages are dropped and counted at once, without blocking the sender.
    #[tokio::test]
    async fn a_full_peer_outbox_drops_messages_without_blocking() {
        let args = Args::parse_from([
            "distraft",
            "--name",
            "a",
            "--cluster",
            "a=127.0.0.1:1:127.0.0.1:2,b=127.0.0.1:3:127.0.0.1:4",
        ]);
        let config = Arc::new(Config::from_args(&args.node).unwrap());
        let (peers, _tasks_never_run) = Peers::new(config).unwrap();
        let heartbeat = Message {
            from: 1,
            to: 2,
            term: 1,
            body: Body::Heartbeat {
                commit: 0,
                read_seq: 0,
            },
        };
        let started = Instant::now();
        for _ in 0..PEER_OUTBOX + 10 {
            peers.send(heartbeat.clone());
        }
        assert_eq!(peers.dropped_messages(2), 10);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(peers.dropped_messages(7), 0);
    }
}
