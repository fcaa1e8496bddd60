//! Pairing peers' requests with the core's replies. A peer's request arrives with a
//! reply slot (its gRPC call waits on it); the core answers later in the same turn,
//! after the persist its answer promises, as an ordinary outgoing message. Replies are
//! matched to waiting requests per peer and kind, first come first served; every reply
//! is self-describing (it carries its index, term or read round), so the pairing only
//! has to preserve order. A ReadIndex request is paired by a token of the leader's own
//! instead of the follower's id: the leader answers it in a later turn, after a
//! heartbeat round, and a follower that restarted meanwhile numbers its reads from 1
//! again, so its new request may carry the id of an old one still waiting here. Paired
//! by (follower, id), the old read's answer (an index from before the restart, maybe
//! before writes the new read must see) went to the new request: a stale read, found
//! by the simulator at seed 28691.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use tracing::{debug, info};

use super::{Driver, RaftReply, RaftReplySender, ReceivedSnapshot, Transport};
use crate::raft::{Body, Message, NodeId, ReadId};

/// Which answer a peer's request waits for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ReplyKind {
    Vote,
    /// AppendEntries stream (appends and heartbeats) and InstallSnapshot.
    Replication,
}

// Both matches list every message kind, so that a new one does not compile until it
// is decided whether (and how) its replies are paired.

fn request_kind(body: &Body) -> Option<ReplyKind> {
    match body {
        Body::PreVote { .. } | Body::Vote { .. } => Some(ReplyKind::Vote),
        Body::Append { .. } | Body::Heartbeat { .. } | Body::Snapshot { .. } => {
            Some(ReplyKind::Replication)
        }
        // Paired by its id instead (`WaitingReplies::read_index`).
        Body::ReadIndex { .. } => None,
        // Expects no answer (the stream item is answered empty).
        Body::TimeoutNow => None,
        // Answers are not requests.
        Body::PreVoteResponse { .. }
        | Body::VoteResponse { .. }
        | Body::AppendResponse { .. }
        | Body::HeartbeatResponse { .. }
        | Body::ReadIndexResponse { .. } => None,
    }
}

fn response_kind(body: &Body) -> Option<ReplyKind> {
    match body {
        Body::PreVoteResponse { .. } | Body::VoteResponse { .. } => Some(ReplyKind::Vote),
        Body::AppendResponse { .. } | Body::HeartbeatResponse { .. } => {
            Some(ReplyKind::Replication)
        }
        // Paired by its id instead (`WaitingReplies::read_index`).
        Body::ReadIndexResponse { .. } => None,
        // Requests are not answers.
        Body::PreVote { .. }
        | Body::Vote { .. }
        | Body::Append { .. }
        | Body::Heartbeat { .. }
        | Body::Snapshot { .. }
        | Body::ReadIndex { .. }
        | Body::TimeoutNow => None,
    }
}

/// How a waiting ReadIndex request is found: by the leader's token alone, or (the
/// plant `read-index-paired-by-follower-id`, the old bug) by follower and its own id.
type ReadKey = (NodeId, ReadId);

fn read_key(follower: NodeId, id: ReadId) -> ReadKey {
    match paired_by_follower_id() {
        true => (follower, id),
        false => (0, id),
    }
}

fn paired_by_follower_id() -> bool {
    crate::plant::active(crate::plant::Plant::ReadIndexPairedByFollowerId)
}

/// Peers' requests waiting for the core's reply.
#[derive(Default)]
pub(super) struct WaitingReplies {
    /// Requests stepped in this turn, per peer, in arrival order.
    this_turn: HashMap<NodeId, VecDeque<(ReplyKind, RaftReplySender)>>,
    /// Followers' ReadIndex requests, by the token the core sees as their id: the
    /// follower and its own id, and the reply slot. Answered in a later turn, after a
    /// heartbeat round.
    read_index: HashMap<ReadKey, (NodeId, ReadId, RaftReplySender)>,
    /// The next token: unique for as long as this driver runs.
    next_read_token: ReadId,
}

impl WaitingReplies {
    /// Keeps `reply` until the core answers `msg`, a peer's request; a message that
    /// expects no answer is told so at once.
    /// A ReadIndex request's id is replaced by a token in `msg` (see the module doc).
    fn wait(&mut self, msg: &mut Message, reply: RaftReplySender) {
        match &mut msg.body {
            Body::ReadIndex { id } => {
                let token = if paired_by_follower_id() {
                    *id
                } else {
                    self.next_read_token += 1;
                    self.next_read_token
                };
                let key = read_key(msg.from, token);
                // Only the plant reuses a key: the older request is dropped unanswered.
                self.read_index.insert(key, (msg.from, *id, reply));
                *id = token;
            }
            body => match request_kind(body) {
                Some(kind) => self
                    .this_turn
                    .entry(msg.from)
                    .or_default()
                    .push_back((kind, reply)),
                None => {
                    let _ = reply.send(RaftReply::Unanswered);
                }
            },
        }
    }

    /// Hands an outgoing message that answers a peer's request to the request's slot
    /// (or drops it, when its request is gone). Returns the message back when it
    /// answers nothing: a new message for the transport.
    pub(super) fn answer(&mut self, msg: Message) -> Option<Message> {
        if let Body::ReadIndexResponse { id, index } = msg.body {
            match self.read_index.remove(&read_key(msg.to, id)) {
                Some((follower, original, reply)) if follower == msg.to => {
                    let body = Body::ReadIndexResponse {
                        id: original,
                        index,
                    };
                    let _ = reply.send(RaftReply::Answer(Message { body, ..msg }));
                }
                Some(_) => debug!(
                    to = msg.to,
                    "dropping a read index answer for another member"
                ),
                None => debug!(
                    to = msg.to,
                    "dropping a read index answer whose request is gone"
                ),
            }
            return None;
        }
        let Some(kind) = response_kind(&msg.body) else {
            return Some(msg);
        };
        let waiting = self.this_turn.get_mut(&msg.to);
        let slot = waiting.and_then(|queue| {
            let position = queue.iter().position(|(k, _)| *k == kind)?;
            queue.remove(position)
        });
        match slot {
            Some((_, reply)) => {
                let _ = reply.send(RaftReply::Answer(msg));
            }
            None => debug!(to = msg.to, "dropping a reply whose request is gone"),
        }
        None
    }

    /// Requests this turn did not answer get an explicit "no answer", so that their
    /// callers (and the ordered AppendEntries streams) need not wait.
    pub(super) fn answer_unanswered(&mut self) {
        for (_, queue) in self.this_turn.drain() {
            for (_, reply) in queue {
                let _ = reply.send(RaftReply::Unanswered);
            }
        }
    }

    /// Forgets ReadIndex requests whose callers gave up waiting.
    pub(super) fn purge_abandoned(&mut self) {
        self.read_index
            .retain(|_, (_, _, reply)| !reply.is_closed());
    }

    /// Drops every waiting request unanswered (their callers see the node as crashed).
    pub(super) fn clear(&mut self) {
        self.this_turn.clear();
        self.read_index.clear();
    }
}

impl<T: Transport> Driver<T> {
    /// A message from a peer; `reply` when the peer waits for the answer (a request).
    pub(super) fn on_peer_message(
        &mut self,
        mut msg: Message,
        reply: Option<RaftReplySender>,
        snapshot: Option<Box<ReceivedSnapshot>>,
    ) {
        // Stopped: the node is as good as crashed; dropping `reply` tells the handler so.
        if !self.up {
            return;
        }
        if let Some(reply) = reply {
            self.replies.wait(&mut msg, reply);
        }
        self.received_snapshots
            .extend(snapshot.map(|received| *received));
        // An answer to our replication (an append or a heartbeat), whatever it says:
        // the follower is alive and talking to us.
        let replication_answer = response_kind(&msg.body) == Some(ReplyKind::Replication);
        if replication_answer && self.lag.answered(msg.from, Instant::now()) {
            info!(member = self.name_of(msg.from), "member reachable again");
        }
        self.node.step(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn read_index(from: NodeId, id: ReadId) -> Message {
        Message {
            from,
            to: 1,
            term: 1,
            body: Body::ReadIndex { id },
        }
    }

    fn token(msg: &Message) -> ReadId {
        match msg.body {
            Body::ReadIndex { id } => id,
            ref other => panic!("not a read index request: {other:?}"),
        }
    }

    /// A follower that restarted numbers its reads from 1 again, so its new read may
    /// carry the id of an old one still waiting at the leader. The old read's answer
    /// (the index of a round from before the restart, perhaps before writes the new
    /// read must see) must never reach the new read: that was the stale read of
    /// simulator seed 28691, and what the plant `read-index-paired-by-follower-id`
    /// brings back.
    #[test]
    fn a_restarted_followers_new_read_never_gets_its_old_reads_answer() {
        let mut waiting = WaitingReplies::default();
        let (old_reply, _old_answer) = oneshot::channel();
        let mut old = read_index(2, 1);
        waiting.wait(&mut old, old_reply);
        // Restarted: the same id again.
        let (new_reply, mut new_answer) = oneshot::channel();
        let mut new = read_index(2, 1);
        waiting.wait(&mut new, new_reply);
        let answer = |msg: &Message, index| Message {
            from: 1,
            to: 2,
            term: 1,
            body: Body::ReadIndexResponse {
                id: token(msg),
                index: Some(index),
            },
        };
        // The old round completes first, then the new one, at a later index.
        assert!(waiting.answer(answer(&old, 5)).is_none());
        assert!(waiting.answer(answer(&new, 9)).is_none());
        match new_answer.try_recv() {
            Ok(RaftReply::Answer(Message {
                body: Body::ReadIndexResponse { id, index },
                ..
            })) => {
                assert_eq!(id, 1, "the follower's own id comes back");
                assert_eq!(index, Some(9), "the new read got the old read's index");
            }
            other => panic!("the new read got {other:?}"),
        }
    }
}
