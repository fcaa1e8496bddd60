//! The Raft service: the requests of the other members, checked (`convert`) and handed
//! to the driver, whose reply is the response.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::deadline::Deadline;
use super::outcome::status_of;
use super::peers::{raft_rpc_timeout, snapshot_timeout};
use super::refusals::Refusals;
use super::stop::stopped;
use crate::config::Config;
use crate::driver::{DriverHandle, RaftReply, ReceivedSnapshot, SnapshotAdmission};
use crate::kv::Kv;
use crate::proto::v1 as pb;
use crate::raft::{AppendOutcome, Body, Message};
use crate::storage::SnapshotWriter;

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
    pub(super) fn new(
        config: Arc<Config>,
        driver: DriverHandle,
        stop: watch::Receiver<bool>,
    ) -> RaftService {
        RaftService {
            config,
            driver,
            stop,
            refusals: Arc::new(Refusals::default()),
        }
    }

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

/// Reads a received snapshot image back and parses it into a state machine.
fn parse_image(mut writer: SnapshotWriter) -> Result<ReceivedSnapshot, Status> {
    let kv = writer
        .read_back()
        .map_err(|err| Status::internal(err.to_string()))
        .and_then(|image| {
            Kv::read_image(image).map_err(|err| {
                Status::invalid_argument(format!("the snapshot image does not parse: {err}"))
            })
        })?;
    Ok(ReceivedSnapshot { writer, kv })
}

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
            Some(writer) => {
                // Parsed before the core sees it: a bad image never replaces anything.
                let parsed = tokio::task::spawn_blocking(move || parse_image(writer))
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
