//! Mapping between the core's [`Message`]s and the Raft service's protobuf messages.
//!
//! On the wire a node is named (as in `DISTRAFT_CLUSTER`); inside, it is a [`NodeId`].
//! Requests name their sender; a response is attributed to the peer that was called.

use tonic::Status;

use crate::config::Config;
use crate::proto::v1 as pb;
use crate::raft::{Body, Entry, Message, NodeId, SnapshotMeta};

/// The id of the member called `name`, or INVALID_ARGUMENT for a stranger.
pub fn id_of(config: &Config, name: &str) -> Result<NodeId, Status> {
    config
        .member_named(name)
        .map(|m| m.id)
        .ok_or_else(|| Status::invalid_argument(format!("{name:?} is not a cluster member")))
}

fn name_of(config: &Config, id: NodeId) -> String {
    config
        .member(id)
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

pub fn entry_to_proto(entry: Entry) -> pb::Entry {
    pb::Entry {
        index: entry.index,
        term: entry.term,
        data: entry.data,
    }
}

pub fn entry_from_proto(entry: pb::Entry) -> Entry {
    Entry {
        index: entry.index,
        term: entry.term,
        data: entry.data,
    }
}

pub fn meta_to_proto(config: &Config, meta: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        index: meta.index,
        term: meta.term,
        voters: meta.voters.iter().map(|id| name_of(config, *id)).collect(),
    }
}

pub fn meta_from_proto(config: &Config, meta: pb::SnapshotMeta) -> Result<SnapshotMeta, Status> {
    let voters = meta
        .voters
        .iter()
        .map(|name| id_of(config, name))
        .collect::<Result<_, _>>()?;
    Ok(SnapshotMeta {
        index: meta.index,
        term: meta.term,
        voters,
    })
}

// --- Requests, as the sender builds them --------------------------------------------

/// The RequestVote for a (pre-)vote message.
pub fn vote_request(config: &Config, msg: &Message) -> Option<pb::VoteRequest> {
    let (last_index, last_term, pre_vote) = match msg.body {
        Body::PreVote {
            last_index,
            last_term,
        } => (last_index, last_term, true),
        Body::Vote {
            last_index,
            last_term,
        } => (last_index, last_term, false),
        _ => return None,
    };
    Some(pb::VoteRequest {
        from: config.name.clone(),
        term: msg.term,
        last_log_index: last_index,
        last_log_term: last_term,
        pre_vote,
    })
}

/// The AppendEntries stream item for an append or heartbeat message.
pub fn append_request(config: &Config, msg: Message) -> Option<pb::AppendEntriesRequest> {
    use pb::append_entries_request::Kind;
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
        _ => return None,
    };
    Some(pb::AppendEntriesRequest {
        from: config.name.clone(),
        term: msg.term,
        kind: Some(kind),
    })
}

pub fn read_index_request(config: &Config, msg: &Message) -> Option<pb::ReadIndexRequest> {
    match msg.body {
        Body::ReadIndex { id } => Some(pb::ReadIndexRequest {
            from: config.name.clone(),
            term: msg.term,
            id,
        }),
        _ => None,
    }
}

// --- Requests, as the receiver turns them into messages ------------------------------

pub fn vote_request_message(config: &Config, req: pb::VoteRequest) -> Result<Message, Status> {
    let (last_index, last_term) = (req.last_log_index, req.last_log_term);
    let body = if req.pre_vote {
        Body::PreVote {
            last_index,
            last_term,
        }
    } else {
        Body::Vote {
            last_index,
            last_term,
        }
    };
    Ok(Message {
        from: id_of(config, &req.from)?,
        to: config.id,
        term: req.term,
        body,
    })
}

pub fn append_request_message(
    config: &Config,
    req: pb::AppendEntriesRequest,
) -> Result<Message, Status> {
    use pb::append_entries_request::Kind;
    let body = match req.kind {
        Some(Kind::Append(append)) => Body::Append {
            prev_index: append.prev_log_index,
            prev_term: append.prev_log_term,
            entries: append.entries.into_iter().map(entry_from_proto).collect(),
            commit: append.leader_commit,
        },
        Some(Kind::Heartbeat(heartbeat)) => Body::Heartbeat {
            commit: heartbeat.leader_commit,
            read_seq: heartbeat.read_seq,
        },
        None => {
            return Err(Status::invalid_argument(
                "AppendEntriesRequest without a kind",
            ))
        }
    };
    Ok(Message {
        from: id_of(config, &req.from)?,
        to: config.id,
        term: req.term,
        body,
    })
}

pub fn read_index_request_message(
    config: &Config,
    req: pb::ReadIndexRequest,
) -> Result<Message, Status> {
    Ok(Message {
        from: id_of(config, &req.from)?,
        to: config.id,
        term: req.term,
        body: Body::ReadIndex { id: req.id },
    })
}

// --- Responses, as the receiver of the request answers -------------------------------

/// The answer to a RequestVote; `None` when the core did not answer.
pub fn vote_response(config: &Config, reply: Option<Message>) -> pb::VoteResponse {
    let mut response = pb::VoteResponse {
        from: config.name.clone(),
        ..Default::default()
    };
    if let Some(msg) = reply {
        if let Body::PreVoteResponse { granted } | Body::VoteResponse { granted } = msg.body {
            response.term = msg.term;
            response.granted = granted;
            response.answered = true;
        }
    }
    response
}

/// The answer to an append, heartbeat or snapshot; `None` when the core did not answer.
pub fn append_response(config: &Config, reply: Option<Message>) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Kind;
    let mut response = pb::AppendEntriesResponse {
        from: config.name.clone(),
        ..Default::default()
    };
    let Some(msg) = reply else { return response };
    response.term = msg.term;
    response.kind = match msg.body {
        Body::AppendResponse {
            success,
            index,
            hint,
        } => Some(Kind::Append(pb::AppendResult {
            success,
            index,
            has_hint: hint.is_some(),
            hint_term: hint.map_or(0, |(term, _)| term),
            hint_index: hint.map_or(0, |(_, index)| index),
        })),
        Body::HeartbeatResponse { read_seq } => {
            Some(Kind::Heartbeat(pb::HeartbeatResult { read_seq }))
        }
        _ => None,
    };
    response
}

/// The answer to a ReadIndex; `None` when the core did not answer.
pub fn read_index_response(reply: Option<Message>) -> pb::ReadIndexResponse {
    match reply {
        Some(Message {
            term,
            body: Body::ReadIndexResponse { index, .. },
            ..
        }) => pb::ReadIndexResponse {
            term,
            ok: index.is_some(),
            read_index: index.unwrap_or(0),
        },
        _ => pb::ReadIndexResponse::default(),
    }
}

// --- Responses, as the sender of the request hands them to its core ------------------

/// `peer` answered our (pre-)vote request; `None` when it chose not to answer.
pub fn vote_response_message(
    config: &Config,
    peer: NodeId,
    pre_vote: bool,
    response: pb::VoteResponse,
) -> Option<Message> {
    if !response.answered {
        return None;
    }
    let granted = response.granted;
    let body = if pre_vote {
        Body::PreVoteResponse { granted }
    } else {
        Body::VoteResponse { granted }
    };
    Some(Message {
        from: peer,
        to: config.id,
        term: response.term,
        body,
    })
}

/// `peer` answered an append, heartbeat or snapshot; `None` when it chose not to.
pub fn append_response_message(
    config: &Config,
    peer: NodeId,
    response: pb::AppendEntriesResponse,
) -> Option<Message> {
    use pb::append_entries_response::Kind;
    let body = match response.kind? {
        Kind::Append(result) => Body::AppendResponse {
            success: result.success,
            index: result.index,
            hint: result
                .has_hint
                .then_some((result.hint_term, result.hint_index)),
        },
        Kind::Heartbeat(result) => Body::HeartbeatResponse {
            read_seq: result.read_seq,
        },
    };
    Some(Message {
        from: peer,
        to: config.id,
        term: response.term,
        body,
    })
}

/// `peer` (the leader) answered our ReadIndex request `id`. A zero term means the
/// leader did not answer at all; the read then simply fails.
pub fn read_index_response_message(
    config: &Config,
    peer: NodeId,
    id: u64,
    response: pb::ReadIndexResponse,
) -> Message {
    Message {
        from: peer,
        to: config.id,
        term: response.term,
        body: Body::ReadIndexResponse {
            id,
            index: response.ok.then_some(response.read_index),
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::NodeArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn config(name: &str) -> Config {
        let cluster = "a=h:1:h:2,b=h:3:h:4,c=h:5:h:6";
        let args = Cli::try_parse_from(["x", "--name", name, "--cluster", cluster])
            .unwrap()
            .node;
        Config::from_args(&args).unwrap()
    }

    /// Every message survives the trip sender → wire → receiver unchanged.
    #[test]
    fn requests_and_responses_round_trip() {
        let (a, b) = (config("a"), config("b"));
        let entries = vec![
            Entry {
                index: 5,
                term: 2,
                data: bytes::Bytes::from_static(b"x"),
            },
            Entry {
                index: 6,
                term: 3,
                data: bytes::Bytes::new(),
            },
        ];
        let requests = [
            Body::PreVote {
                last_index: 4,
                last_term: 2,
            },
            Body::Vote {
                last_index: 4,
                last_term: 2,
            },
            Body::Append {
                prev_index: 4,
                prev_term: 2,
                entries,
                commit: 3,
            },
            Body::Heartbeat {
                commit: 9,
                read_seq: 7,
            },
            Body::ReadIndex { id: 42 },
        ];
        for body in requests {
            let sent = Message {
                from: 1,
                to: 2,
                term: 3,
                body,
            };
            let received = match &sent.body {
                Body::PreVote { .. } | Body::Vote { .. } => {
                    vote_request_message(&b, vote_request(&a, &sent).unwrap())
                }
                Body::ReadIndex { .. } => {
                    read_index_request_message(&b, read_index_request(&a, &sent).unwrap())
                }
                _ => append_request_message(&b, append_request(&a, sent.clone()).unwrap()),
            };
            assert_eq!(received.unwrap(), sent);
        }

        let responses = [
            (Body::PreVoteResponse { granted: true }, true),
            (Body::VoteResponse { granted: false }, false),
        ];
        for (body, pre_vote) in responses {
            let sent = Message {
                from: 2,
                to: 1,
                term: 3,
                body,
            };
            let wire = vote_response(&b, Some(sent.clone()));
            assert_eq!(vote_response_message(&a, 2, pre_vote, wire), Some(sent));
        }
        for body in [
            Body::AppendResponse {
                success: false,
                index: 4,
                hint: Some((2, 3)),
            },
            Body::AppendResponse {
                success: true,
                index: 6,
                hint: None,
            },
            Body::HeartbeatResponse { read_seq: 7 },
        ] {
            let sent = Message {
                from: 2,
                to: 1,
                term: 3,
                body,
            };
            let wire = append_response(&b, Some(sent.clone()));
            assert_eq!(append_response_message(&a, 2, wire), Some(sent));
        }
        for index in [Some(11), None] {
            let sent = Message {
                from: 2,
                to: 1,
                term: 3,
                body: Body::ReadIndexResponse { id: 42, index },
            };
            let wire = read_index_response(Some(sent.clone()));
            assert_eq!(read_index_response_message(&a, 2, 42, wire), sent);
        }
    }

    #[test]
    fn unanswered_requests_give_no_message() {
        let a = config("a");
        assert_eq!(
            vote_response_message(&a, 2, false, vote_response(&a, None)),
            None
        );
        assert_eq!(
            append_response_message(&a, 2, append_response(&a, None)),
            None
        );
    }

    #[test]
    fn strangers_and_malformed_requests_are_refused() {
        let a = config("a");
        let stranger = pb::VoteRequest {
            from: "z".into(),
            ..Default::default()
        };
        assert_eq!(
            vote_request_message(&a, stranger).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let no_kind = pb::AppendEntriesRequest {
            from: "b".into(),
            term: 1,
            kind: None,
        };
        assert_eq!(
            append_request_message(&a, no_kind).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let meta = pb::SnapshotMeta {
            index: 1,
            term: 1,
            voters: vec!["a".into(), "q".into()],
        };
        assert!(meta_from_proto(&a, meta).is_err());
        let meta = SnapshotMeta {
            index: 9,
            term: 2,
            voters: vec![1, 2, 3],
        };
        assert_eq!(meta_from_proto(&a, meta_to_proto(&a, &meta)).unwrap(), meta);
    }
}
