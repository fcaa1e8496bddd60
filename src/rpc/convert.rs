//! Mapping between the core's [`Message`]s and the Raft service's protobuf messages.
//!
//! On the wire a node is named (as in `DISTRAFT_CLUSTER`); inside, it is a [`NodeId`].
//! Requests name their sender; a response is attributed to the peer that was called.
//!
//! Nothing decoded from the network is trusted: every request is validated here before
//! it becomes a core message (terms at most [`MAX_TERM`], entries contiguous and
//! following `prev_log_index`, entry terms non-decreasing and at most the message's
//! term, snapshot metadata naming exactly this cluster's members), so that the core's
//! assertions are about its own invariants only. A refusal is INVALID_ARGUMENT.

use std::collections::BTreeSet;

use tonic::Status;

use crate::config::Config;
use crate::plant::{self, Plant};
use crate::proto::v1 as pb;
use crate::raft::{
    AppendOutcome, Body, ConfChange, Entry, EntryKind, Index, Membership, Message, NodeId,
    RejectHint, SnapshotMeta, Term, MAX_TERM,
};
use crate::registry::Record;

/// At most 64 characters of `text`, for messages that quote what a peer sent.
fn quoted(text: &str) -> String {
    let short: String = text.chars().take(64).collect();
    format!("{short:?}")
}

/// What this build writes to the log and snapshots, as far as a peer must be able to
/// read it: raised with every change a build of the version before could not read
/// (or would read wrongly). A member refuses requests of a newer wire version, so in
/// a cluster of mixed versions the older members never take in what they cannot read
/// (docs/operations.md, "Upgrades"). 1: the formats of the KV API (versioned
/// commands, idempotency keys, image 03); builds before it send 0.
pub const WIRE_VERSION: u32 = 1;

/// A request of a newer wire version than this build's is refused, before anything
/// in it is read.
fn check_wire_version(version: u32) -> Result<(), Status> {
    if version > WIRE_VERSION && !plant::active(Plant::WireVersionUnchecked) {
        return Err(Status::failed_precondition(format!(
            "the sender runs a newer distraft (wire version {version}) than this member \
             (wire version {WIRE_VERSION}), which might not read what it sends: upgrade \
             this member"
        )));
    }
    Ok(())
}

/// A request must be meant for this cluster and this member: FAILED_PRECONDITION
/// otherwise (a misconfigured cluster that lists our address, or a request routed to
/// the wrong member).
pub fn check_addressee(
    config: &Config,
    cluster_id: u64,
    to: &str,
    to_id: NodeId,
) -> Result<(), Status> {
    if cluster_id != config.cluster_id {
        return Err(Status::failed_precondition(format!(
            "the request is for cluster {cluster_id:016x}, this is cluster {:016x}",
            config.cluster_id
        )));
    }
    if to != config.name || (to_id != 0 && to_id != config.id) {
        return Err(Status::failed_precondition(format!(
            "the request is for member {} (id {to_id}), this is {:?} (id {})",
            quoted(to),
            config.name,
            config.id
        )));
    }
    Ok(())
}

/// An answer counts only if it came from the member that was called, in this
/// cluster, with a term a request could carry; otherwise it is discarded. Returns its
/// term.
fn check_answer(config: &Config, peer: NodeId, answer: &impl Signature) -> Result<Term, Status> {
    let (from, cluster_id, term, from_id) = answer.signature();
    let called = name_of(config, peer);
    if from != called || (from_id != 0 && from_id != peer) || cluster_id != config.cluster_id {
        return Err(Status::failed_precondition(format!(
            "called {called:?} of cluster {:016x} but {} of cluster {cluster_id:016x} answered",
            config.cluster_id,
            quoted(from)
        )));
    }
    if term > MAX_TERM {
        return Err(Status::invalid_argument(format!(
            "answer with term {term} above {MAX_TERM}"
        )));
    }
    Ok(term)
}

/// The id of the member called `name`, or INVALID_ARGUMENT for a stranger.
pub fn id_of(config: &Config, name: &str) -> Result<NodeId, Status> {
    config
        .registry
        .roster()
        .named(name)
        .map(|m| m.id)
        .ok_or_else(|| {
            Status::invalid_argument(format!("{} is not a cluster member", quoted(name)))
        })
}

/// The id of the member that sent a request, not this node. With an id (`from_id`,
/// 0 from older versions) the id identifies it: one this node has not heard of yet
/// (a member whose joining has not reached its log) is taken as it comes, one it
/// knows must carry its name. Without, the name must be a member's.
fn sender_id(config: &Config, name: &str, from_id: NodeId) -> Result<NodeId, Status> {
    let id = match from_id {
        0 => id_of(config, name)?,
        id => match config.registry.roster().member(id) {
            Some(known) if known.name != name => {
                return Err(Status::invalid_argument(format!(
                    "the request claims id {id} and name {}, but member {id} is {:?}",
                    quoted(name),
                    known.name
                )))
            }
            _ => id,
        },
    };
    if id == config.id {
        return Err(Status::invalid_argument(
            "the request claims to come from this node itself",
        ));
    }
    Ok(id)
}

/// The checked first chunk of an InstallSnapshot stream: its sender, term and
/// snapshot metadata. The declared image size must be within
/// DISTRAFT_MAX_SNAPSHOT_BYTES (RESOURCE_EXHAUSTED otherwise).
pub fn snapshot_request(
    config: &Config,
    first: &pb::InstallSnapshotChunk,
) -> Result<(NodeId, Term, SnapshotMeta), Status> {
    let from = open_request(config, first)?;
    let meta = first
        .meta
        .clone()
        .ok_or_else(|| Status::invalid_argument("the first chunk has no meta"))?;
    let meta = meta_from_proto(config, meta)?;
    check_snapshot_meta(config, first.term, &meta)?;
    if first.image_bytes > config.max_snapshot_bytes {
        return Err(Status::resource_exhausted(format!(
            "a snapshot image of {} bytes is over the limit of {} \
             (DISTRAFT_MAX_SNAPSHOT_BYTES)",
            first.image_bytes, config.max_snapshot_bytes
        )));
    }
    Ok((from, first.term, meta))
}

fn names(config: &Config, ids: &BTreeSet<NodeId>) -> Vec<String> {
    ids.iter().map(|&id| name_of(config, id)).collect()
}

fn name_of(config: &Config, id: NodeId) -> String {
    config
        .registry
        .roster()
        .member(id)
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

pub fn entry_to_proto(entry: Entry) -> pb::Entry {
    let kind = match entry.kind {
        EntryKind::Normal => pb::EntryKind::Normal,
        EntryKind::Noop => pb::EntryKind::Noop,
        EntryKind::ConfChange => pb::EntryKind::ConfChange,
    };
    pb::Entry {
        index: entry.index,
        term: entry.term,
        data: entry.data,
        kind: kind.into(),
    }
}

/// A term a request may carry: 1 up to the ceiling.
pub fn check_term(term: Term) -> Result<(), Status> {
    if term == 0 || term > MAX_TERM {
        return Err(Status::invalid_argument(format!(
            "term {term} is outside 1..={MAX_TERM}"
        )));
    }
    Ok(())
}

/// The checks of an Append in a request of term `term`: `prev_log_term <= term`, and
/// the entries are exactly `prev_log_index + 1, + 2, ...` with terms that never
/// decrease, start no lower than `prev_log_term` and end no higher than `term`.
fn check_append(term: Term, append: &pb::Append) -> Result<(), Status> {
    if append.prev_log_term > term {
        return Err(Status::invalid_argument(format!(
            "prev_log_term {} is above the message's term {term}",
            append.prev_log_term
        )));
    }
    let mut expected_index = append.prev_log_index;
    let mut previous_term = append.prev_log_term;
    for entry in &append.entries {
        expected_index = expected_index
            .checked_add(1)
            .ok_or_else(|| Status::invalid_argument("entry indexes run past the largest index"))?;
        if entry.index != expected_index && !plant::active(Plant::SkipWireValidation) {
            return Err(Status::invalid_argument(format!(
                "entry index {} where {expected_index} was due: entries must follow \
                 prev_log_index {} without gaps",
                entry.index, append.prev_log_index
            )));
        }
        if entry.term < previous_term || entry.term > term {
            return Err(Status::invalid_argument(format!(
                "entry {} has term {}: terms must not decrease (previous {previous_term}) \
                 nor exceed the message's term {term}",
                entry.index, entry.term
            )));
        }
        previous_term = entry.term;
    }
    Ok(())
}

/// Whether snapshot metadata is sane for a message of term `term`: index and term
/// positive, the term at most the message's, at least one voter.
pub fn check_snapshot_meta(config: &Config, term: Term, meta: &SnapshotMeta) -> Result<(), Status> {
    if meta.index == 0 || meta.term == 0 || meta.term > term {
        return Err(Status::invalid_argument(format!(
            "snapshot at index {} of term {} in a message of term {term}",
            meta.index, meta.term
        )));
    }
    let _ = config;
    if meta.membership.voters.is_empty() {
        return Err(Status::invalid_argument("the snapshot names no voter"));
    }
    Ok(())
}

fn entry_kind(entry: &pb::Entry) -> Result<EntryKind, Status> {
    match pb::EntryKind::try_from(entry.kind) {
        Ok(pb::EntryKind::Normal) => Ok(EntryKind::Normal),
        Ok(pb::EntryKind::Noop) if entry.data.is_empty() => Ok(EntryKind::Noop),
        Ok(pb::EntryKind::Noop) => Err(Status::invalid_argument(format!(
            "entry {} is a no-op with data",
            entry.index
        ))),
        // A node of an older version sends no kind: its no-op is the empty entry.
        Ok(pb::EntryKind::Unspecified) if entry.data.is_empty() => Ok(EntryKind::Noop),
        Ok(pb::EntryKind::Unspecified) => Ok(EntryKind::Normal),
        // The core trusts the change it is given: checked here, record included.
        Ok(pb::EntryKind::ConfChange) => ConfChange::decode(&entry.data)
            .and_then(|(change, context)| Record::decode(change.id(), context))
            .map(|_| EntryKind::ConfChange)
            .map_err(|reason| {
                Status::invalid_argument(format!(
                    "entry {} is not a valid membership change: {reason}",
                    entry.index
                ))
            }),
        Err(_) => Err(Status::invalid_argument(format!(
            "entry {} has an unknown kind {}",
            entry.index, entry.kind
        ))),
    }
}

pub fn entry_from_proto(entry: pb::Entry) -> Result<Entry, Status> {
    Ok(Entry {
        index: entry.index,
        term: entry.term,
        kind: entry_kind(&entry)?,
        data: entry.data,
    })
}

pub fn meta_to_proto(config: &Config, meta: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        index: meta.index,
        term: meta.term,
        voters: names(config, &meta.membership.voters),
        learners: names(config, &meta.membership.learners),
        voter_ids: meta.membership.voters.iter().copied().collect(),
        learner_ids: meta.membership.learners.iter().copied().collect(),
    }
}

pub fn meta_from_proto(config: &Config, meta: pb::SnapshotMeta) -> Result<SnapshotMeta, Status> {
    // By id when the sender gives them (it may name members this node has not heard
    // of yet), else by name.
    let ids = |names: &[String], ids: &[NodeId]| -> Result<BTreeSet<NodeId>, Status> {
        let by_id = !meta.voter_ids.is_empty() || !meta.learner_ids.is_empty();
        if !by_id {
            return names.iter().map(|name| id_of(config, name)).collect();
        }
        if ids.len() != names.len() || ids.contains(&0) {
            return Err(Status::invalid_argument(
                "the snapshot's member ids do not match its names",
            ));
        }
        Ok(ids.iter().copied().collect())
    };
    let membership = Membership {
        voters: ids(&meta.voters, &meta.voter_ids)?,
        learners: ids(&meta.learners, &meta.learner_ids)?,
    };
    if membership.voters.len() != meta.voters.len()
        || membership.learners.len() != meta.learners.len()
        || !membership.voters.is_disjoint(&membership.learners)
    {
        return Err(Status::invalid_argument(
            "the snapshot names a member twice",
        ));
    }
    Ok(SnapshotMeta {
        index: meta.index,
        term: meta.term,
        membership,
    })
}

// --- What every request and every answer carries -------------------------------------

/// The envelope of every Raft request: sender and addressee by name, the cluster id
/// and the sender's term. Built and checked once here for every kind.
trait Envelope {
    /// `(from, to, cluster_id, term)`.
    fn envelope(&self) -> (&str, &str, u64, Term);
    /// `(from_id, to_id)`.
    fn ids(&self) -> (NodeId, NodeId);
    fn wire_version(&self) -> u32;
    fn address(&mut self, from: String, to: String, cluster_id: u64, term: Term);
    fn address_ids(&mut self, from_id: NodeId, to_id: NodeId);
}

/// The signature of every answer: who answered, in which cluster, at which term.
trait Signature: Default {
    /// `(from, cluster_id, term, from_id)`.
    fn signature(&self) -> (&str, u64, Term, NodeId);
    fn sign(&mut self, from: String, cluster_id: u64, from_id: NodeId);
}

macro_rules! envelope {
    ($($request:ty),*) => {$(
        impl Envelope for $request {
            fn envelope(&self) -> (&str, &str, u64, Term) {
                (&self.from, &self.to, self.cluster_id, self.term)
            }
            fn ids(&self) -> (NodeId, NodeId) {
                (self.from_id, self.to_id)
            }
            fn wire_version(&self) -> u32 {
                self.wire_version
            }
            fn address(&mut self, from: String, to: String, cluster_id: u64, term: Term) {
                (self.from, self.to, self.cluster_id, self.term) = (from, to, cluster_id, term);
                self.wire_version = WIRE_VERSION;
            }
            fn address_ids(&mut self, from_id: NodeId, to_id: NodeId) {
                (self.from_id, self.to_id) = (from_id, to_id);
            }
        }
    )*};
}

macro_rules! signature {
    ($($response:ty),*) => {$(
        impl Signature for $response {
            fn signature(&self) -> (&str, u64, Term, NodeId) {
                (&self.from, self.cluster_id, self.term, self.from_id)
            }
            fn sign(&mut self, from: String, cluster_id: u64, from_id: NodeId) {
                (self.from, self.cluster_id, self.from_id) = (from, cluster_id, from_id);
            }
        }
    )*};
}

envelope!(
    pb::VoteRequest,
    pb::AppendEntriesRequest,
    pb::ReadIndexRequest,
    pb::InstallSnapshotChunk
);
signature!(
    pb::VoteResponse,
    pb::AppendEntriesResponse,
    pb::ReadIndexResponse
);

/// `request` sent as `msg`: from this node, to `msg`'s addressee, in this cluster, at
/// `msg`'s term.
fn addressed<R: Envelope>(config: &Config, msg: &Message, mut request: R) -> R {
    let to = name_of(config, msg.to);
    request.address(config.name.clone(), to, config.cluster_id, msg.term);
    request.address_ids(config.id, msg.to);
    request
}

/// The checks every request passes before its own fields are read: meant for this
/// cluster and member ([`check_addressee`]), a term in range ([`check_term`]), from
/// another member. Returns the sender.
fn open_request(config: &Config, request: &impl Envelope) -> Result<NodeId, Status> {
    let (from, to, cluster_id, term) = request.envelope();
    let (from_id, to_id) = request.ids();
    check_wire_version(request.wire_version())?;
    check_addressee(config, cluster_id, to, to_id)?;
    check_term(term)?;
    sender_id(config, from, from_id)
}

/// The core message a checked request of `from` at `term` becomes.
fn received(config: &Config, from: NodeId, term: Term, body: Body) -> Message {
    Message {
        from,
        to: config.id,
        term,
        body,
    }
}

/// An answer of this node that says nothing yet (an unanswered request, as it stays
/// when the core did not answer).
fn unanswered<R: Signature>(config: &Config) -> R {
    let mut response = R::default();
    response.sign(config.name.clone(), config.cluster_id, config.id);
    response
}

/// The core message an answer of `peer` at `term` becomes, once checked
/// ([`check_answer`]).
fn answered(config: &Config, peer: NodeId, term: Term, body: Body) -> Message {
    Message {
        from: peer,
        to: config.id,
        term,
        body,
    }
}

// --- Requests, as the sender builds them --------------------------------------------

/// The RequestVote for a (pre-)vote message.
pub fn vote_request(config: &Config, msg: &Message) -> Option<pb::VoteRequest> {
    let (last_index, last_term, pre_vote, transfer) = match msg.body {
        Body::PreVote {
            last_index,
            last_term,
        } => (last_index, last_term, true, false),
        Body::Vote {
            last_index,
            last_term,
            transfer,
        } => (last_index, last_term, false, transfer),
        Body::PreVoteResponse { .. }
        | Body::VoteResponse { .. }
        | Body::Append { .. }
        | Body::AppendResponse { .. }
        | Body::Heartbeat { .. }
        | Body::HeartbeatResponse { .. }
        | Body::Snapshot { .. }
        | Body::ReadIndex { .. }
        | Body::ReadIndexResponse { .. }
        | Body::TimeoutNow => return None,
    };
    let request = pb::VoteRequest {
        last_log_index: last_index,
        last_log_term: last_term,
        pre_vote,
        transfer,
        ..Default::default()
    };
    Some(addressed(config, msg, request))
}

/// The AppendEntries stream item for an append or heartbeat message.
pub fn append_request(config: &Config, msg: Message) -> Option<pb::AppendEntriesRequest> {
    use pb::append_entries_request::Kind;
    let request = pb::AppendEntriesRequest::default();
    let request = addressed(config, &msg, request);
    let kind = match msg.body {
        Body::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => Kind::Append(pb::Append {
            prev_log_index: prev_index,
            prev_log_term: prev_term,
            entries: entries.into_iter().map(entry_to_proto).collect(),
            leader_commit: commit,
        }),
        Body::Heartbeat { commit, read_seq } => Kind::Heartbeat(pb::Heartbeat {
            leader_commit: commit,
            read_seq,
        }),
        Body::TimeoutNow => Kind::TimeoutNow(pb::TimeoutNow {}),
        Body::PreVote { .. }
        | Body::PreVoteResponse { .. }
        | Body::Vote { .. }
        | Body::VoteResponse { .. }
        | Body::AppendResponse { .. }
        | Body::HeartbeatResponse { .. }
        | Body::Snapshot { .. }
        | Body::ReadIndex { .. }
        | Body::ReadIndexResponse { .. } => return None,
    };
    Some(pb::AppendEntriesRequest {
        kind: Some(kind),
        ..request
    })
}

pub fn read_index_request(config: &Config, msg: &Message) -> Option<pb::ReadIndexRequest> {
    match msg.body {
        Body::ReadIndex { id } => Some(addressed(
            config,
            msg,
            pb::ReadIndexRequest {
                id,
                ..Default::default()
            },
        )),
        Body::PreVote { .. }
        | Body::PreVoteResponse { .. }
        | Body::Vote { .. }
        | Body::VoteResponse { .. }
        | Body::Append { .. }
        | Body::AppendResponse { .. }
        | Body::Heartbeat { .. }
        | Body::HeartbeatResponse { .. }
        | Body::Snapshot { .. }
        | Body::ReadIndexResponse { .. }
        | Body::TimeoutNow => None,
    }
}

// --- Requests, as the receiver turns them into messages ------------------------------

pub fn vote_request_message(config: &Config, req: pb::VoteRequest) -> Result<Message, Status> {
    let from = open_request(config, &req)?;
    // The core ignores a non-voter's campaign anyway; a member this node knows was
    // removed is told so, so that its log says why it gets no vote (it never learns
    // of its removal otherwise: the leader stops replicating to it at once).
    let roster = config.registry.roster();
    if let Some(removed) = roster
        .member(from)
        .filter(|_| !roster.membership.contains(from))
    {
        return Err(Status::failed_precondition(format!(
            "{:?} (member id {from}) was removed from the cluster: stop it, wipe its \
             data and log directories, and join again with DISTRAFT_JOIN",
            removed.name
        )));
    }
    let (last_index, last_term) = (req.last_log_index, req.last_log_term);
    if last_term > req.term {
        return Err(Status::invalid_argument(format!(
            "last_log_term {last_term} is above the candidate's term {}",
            req.term
        )));
    }
    let body = if req.pre_vote {
        Body::PreVote {
            last_index,
            last_term,
        }
    } else {
        Body::Vote {
            last_index,
            last_term,
            transfer: req.transfer,
        }
    };
    Ok(received(config, from, req.term, body))
}

pub fn append_request_message(
    config: &Config,
    req: pb::AppendEntriesRequest,
) -> Result<Message, Status> {
    use pb::append_entries_request::Kind;
    let from = open_request(config, &req)?;
    let body = match req.kind {
        Some(Kind::Append(append)) => {
            check_append(req.term, &append)?;
            // A follower commits no further than this message shows it (the core
            // clamps the same way); checked above not to overflow.
            let last_new: Index = append
                .prev_log_index
                .saturating_add(append.entries.len() as Index);
            Body::Append {
                prev_index: append.prev_log_index,
                prev_term: append.prev_log_term,
                entries: append
                    .entries
                    .into_iter()
                    .map(entry_from_proto)
                    .collect::<Result<_, _>>()?,
                commit: append.leader_commit.min(last_new),
            }
        }
        Some(Kind::Heartbeat(heartbeat)) => Body::Heartbeat {
            commit: heartbeat.leader_commit,
            read_seq: heartbeat.read_seq,
        },
        Some(Kind::TimeoutNow(pb::TimeoutNow {})) => Body::TimeoutNow,
        None => {
            return Err(Status::invalid_argument(
                "AppendEntriesRequest without a kind",
            ))
        }
    };
    Ok(received(config, from, req.term, body))
}

pub fn read_index_request_message(
    config: &Config,
    req: pb::ReadIndexRequest,
) -> Result<Message, Status> {
    let from = open_request(config, &req)?;
    Ok(received(
        config,
        from,
        req.term,
        Body::ReadIndex { id: req.id },
    ))
}

// --- Responses, as the receiver of the request answers -------------------------------

/// The answer to a RequestVote; `None` when the core did not answer.
pub fn vote_response(config: &Config, reply: Option<Message>) -> pb::VoteResponse {
    let mut response: pb::VoteResponse = unanswered(config);
    let Some(msg) = reply else { return response };
    match msg.body {
        Body::PreVoteResponse { granted } | Body::VoteResponse { granted } => {
            response.term = msg.term;
            response.granted = granted;
            response.answered = true;
        }
        // Not an answer to a vote: leave it unanswered.
        Body::PreVote { .. }
        | Body::Vote { .. }
        | Body::Append { .. }
        | Body::AppendResponse { .. }
        | Body::Heartbeat { .. }
        | Body::HeartbeatResponse { .. }
        | Body::Snapshot { .. }
        | Body::ReadIndex { .. }
        | Body::ReadIndexResponse { .. }
        | Body::TimeoutNow => {}
    }
    response
}

/// The answer to an append, heartbeat or snapshot; `None` when the core did not answer.
pub fn append_response(config: &Config, reply: Option<Message>) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Kind;
    let mut response: pb::AppendEntriesResponse = unanswered(config);
    let Some(msg) = reply else { return response };
    response.term = msg.term;
    response.kind = match msg.body {
        Body::AppendResponse { outcome } => Some(Kind::Append(append_result(outcome))),
        Body::HeartbeatResponse { read_seq } => {
            Some(Kind::Heartbeat(pb::HeartbeatResult { read_seq }))
        }
        // Not an answer to an append: leave it unanswered.
        Body::PreVote { .. }
        | Body::PreVoteResponse { .. }
        | Body::Vote { .. }
        | Body::VoteResponse { .. }
        | Body::Append { .. }
        | Body::Heartbeat { .. }
        | Body::Snapshot { .. }
        | Body::ReadIndex { .. }
        | Body::ReadIndexResponse { .. }
        | Body::TimeoutNow => None,
    };
    response
}

/// The wire form of an [`AppendOutcome`]: `success` and the matching `index`; a
/// rejection's `index` and hint, where a hint term of 0 says the log ends before
/// `hint_index`; and a stale term as a rejection at index 0 without a hint.
fn append_result(outcome: AppendOutcome) -> pb::AppendResult {
    let rejected = |index: Index, hint: Option<RejectHint>| {
        let (hint_term, hint_index) = match hint {
            Some(RejectHint::Conflict { term, first_index }) => (term, first_index),
            Some(RejectHint::LogEnds { next_index }) => (0, next_index),
            None => (0, 0),
        };
        pb::AppendResult {
            success: false,
            index,
            has_hint: hint.is_some(),
            hint_term,
            hint_index,
        }
    };
    match outcome {
        AppendOutcome::Match { index } => pb::AppendResult {
            success: true,
            index,
            ..Default::default()
        },
        AppendOutcome::Reject { index, hint } => rejected(index, hint),
        AppendOutcome::StaleTerm => rejected(0, None),
    }
}

/// [`append_result`] read back: any combination of fields means one outcome, as
/// the core has always read them (a hint on success is ignored).
fn append_outcome(result: pb::AppendResult) -> AppendOutcome {
    if result.success {
        return AppendOutcome::Match {
            index: result.index,
        };
    }
    let hint = result.has_hint.then_some(if result.hint_term == 0 {
        RejectHint::LogEnds {
            next_index: result.hint_index,
        }
    } else {
        RejectHint::Conflict {
            term: result.hint_term,
            first_index: result.hint_index,
        }
    });
    match (result.index, hint) {
        (0, None) => AppendOutcome::StaleTerm,
        (index, hint) => AppendOutcome::Reject { index, hint },
    }
}

/// The answer to a ReadIndex; `None` when the core did not answer.
pub fn read_index_response(config: &Config, reply: Option<Message>) -> pb::ReadIndexResponse {
    let empty: pb::ReadIndexResponse = unanswered(config);
    let Some(msg) = reply else { return empty };
    match msg.body {
        Body::ReadIndexResponse { index, .. } => pb::ReadIndexResponse {
            term: msg.term,
            ok: index.is_some(),
            read_index: index.unwrap_or(0),
            ..empty
        },
        // Not an answer to a ReadIndex: leave it unanswered.
        Body::PreVote { .. }
        | Body::PreVoteResponse { .. }
        | Body::Vote { .. }
        | Body::VoteResponse { .. }
        | Body::Append { .. }
        | Body::AppendResponse { .. }
        | Body::Heartbeat { .. }
        | Body::HeartbeatResponse { .. }
        | Body::Snapshot { .. }
        | Body::ReadIndex { .. }
        | Body::TimeoutNow => empty,
    }
}

// --- Responses, as the sender of the request hands them to its core ------------------

/// `peer` answered our (pre-)vote request; `None` when it chose not to answer; an
/// error when the answer does not count (see `check_answer`).
pub fn vote_response_message(
    config: &Config,
    peer: NodeId,
    pre_vote: bool,
    response: pb::VoteResponse,
) -> Result<Option<Message>, Status> {
    let term = check_answer(config, peer, &response)?;
    if !response.answered {
        return Ok(None);
    }
    let granted = response.granted;
    let body = if pre_vote {
        Body::PreVoteResponse { granted }
    } else {
        Body::VoteResponse { granted }
    };
    Ok(Some(answered(config, peer, term, body)))
}

/// `peer` answered an append, heartbeat or snapshot; `None` when it chose not to; an
/// error when the answer does not count (see `check_answer`).
pub fn append_response_message(
    config: &Config,
    peer: NodeId,
    response: pb::AppendEntriesResponse,
) -> Result<Option<Message>, Status> {
    use pb::append_entries_response::Kind;
    let term = check_answer(config, peer, &response)?;
    let Some(kind) = response.kind else {
        return Ok(None);
    };
    let body = match kind {
        Kind::Append(result) => Body::AppendResponse {
            outcome: append_outcome(result),
        },
        Kind::Heartbeat(result) => Body::HeartbeatResponse {
            read_seq: result.read_seq,
        },
    };
    Ok(Some(answered(config, peer, term, body)))
}

/// `peer` (the leader) answered our ReadIndex request `id`; an error when the answer
/// does not count (see `check_answer`).
pub fn read_index_response_message(
    config: &Config,
    peer: NodeId,
    id: u64,
    response: pb::ReadIndexResponse,
) -> Result<Message, Status> {
    let term = check_answer(config, peer, &response)?;
    let index = response.ok.then_some(response.read_index);
    Ok(answered(
        config,
        peer,
        term,
        Body::ReadIndexResponse { id, index },
    ))
}

/// Our ReadIndex request `id` to `peer` got no usable answer: a refusal with a zero
/// term, so that the read simply fails (the core takes a refusal at any term) and no
/// term is learnt.
pub fn read_index_failed(config: &Config, peer: NodeId, id: u64) -> Message {
    answered(config, peer, 0, Body::ReadIndexResponse { id, index: None })
}

#[cfg(test)]
mod tests;
