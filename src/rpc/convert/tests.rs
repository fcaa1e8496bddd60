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
        Entry::normal(5, 2, bytes::Bytes::from_static(b"x")),
        Entry::noop(6, 3),
    ];
    let requests = [
        Body::PreVote {
            last_index: 4,
            last_term: 2,
        },
        Body::Vote {
            last_index: 4,
            last_term: 2,
            transfer: false,
        },
        Body::Vote {
            last_index: 4,
            last_term: 2,
            transfer: true,
        },
        Body::TimeoutNow,
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
        assert_eq!(
            vote_response_message(&a, 2, pre_vote, wire).unwrap(),
            Some(sent)
        );
    }
    let outcomes = [
        AppendOutcome::Match { index: 6 },
        AppendOutcome::Reject {
            index: 4,
            hint: Some(RejectHint::Conflict {
                term: 2,
                first_index: 3,
            }),
        },
        AppendOutcome::Reject {
            index: 4,
            hint: Some(RejectHint::LogEnds { next_index: 2 }),
        },
        AppendOutcome::Reject {
            index: 4,
            hint: None,
        },
        AppendOutcome::StaleTerm,
    ];
    let bodies = outcomes
        .into_iter()
        .map(|outcome| Body::AppendResponse { outcome })
        .chain([Body::HeartbeatResponse { read_seq: 7 }]);
    for body in bodies {
        let sent = Message {
            from: 2,
            to: 1,
            term: 3,
            body,
        };
        let wire = append_response(&b, Some(sent.clone()));
        assert_eq!(append_response_message(&a, 2, wire).unwrap(), Some(sent));
    }
    for index in [Some(11), None] {
        let sent = Message {
            from: 2,
            to: 1,
            term: 3,
            body: Body::ReadIndexResponse { id: 42, index },
        };
        let wire = read_index_response(&b, Some(sent.clone()));
        assert_eq!(read_index_response_message(&a, 2, 42, wire).unwrap(), sent);
    }
}

#[test]
fn append_results_read_as_they_always_were() {
    let result = |success, index, has_hint, hint_term, hint_index| pb::AppendResult {
        success,
        index,
        has_hint,
        hint_term,
        hint_index,
    };
    // A stale term's answer: no success, index 0, no hint.
    assert_eq!(
        append_outcome(result(false, 0, false, 0, 0)),
        AppendOutcome::StaleTerm
    );
    assert_eq!(
        append_result(AppendOutcome::StaleTerm),
        result(false, 0, false, 0, 0)
    );
    // A hint with term 0: the follower's log ends before the hint index.
    assert_eq!(
        append_outcome(result(false, 9, true, 0, 5)),
        AppendOutcome::Reject {
            index: 9,
            hint: Some(RejectHint::LogEnds { next_index: 5 })
        }
    );
    // A hint on success means nothing.
    assert_eq!(
        append_outcome(result(true, 9, true, 2, 5)),
        AppendOutcome::Match { index: 9 }
    );
}

#[test]
fn unanswered_requests_give_no_message() {
    let a = config("a");
    let b = config("b");
    assert_eq!(
        vote_response_message(&a, 2, false, vote_response(&b, None)).unwrap(),
        None
    );
    assert_eq!(
        append_response_message(&a, 2, append_response(&b, None)).unwrap(),
        None
    );
}

#[test]
fn strangers_and_malformed_requests_are_refused() {
    let a = config("a");
    let stranger = pb::VoteRequest {
        from: "z".into(),
        term: 1,
        cluster_id: a.cluster_id,
        to: "a".into(),
        ..Default::default()
    };
    assert_eq!(
        vote_request_message(&a, stranger).unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let no_kind = pb::AppendEntriesRequest {
        from_id: 0,
        to_id: 0,
        wire_version: 0,
        from: "b".into(),
        term: 1,
        kind: None,
        cluster_id: a.cluster_id,
        to: "a".into(),
    };
    assert_eq!(
        append_request_message(&a, no_kind).unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let meta = pb::SnapshotMeta {
        learner_ids: Vec::new(),
        voter_ids: Vec::new(),
        index: 1,
        term: 1,
        voters: vec!["a".into(), "q".into()],
        learners: vec![],
    };
    assert!(meta_from_proto(&a, meta).is_err());
    for (voters, learners) in [(vec!["a", "a"], vec![]), (vec!["a", "b"], vec!["b"])] {
        let twice = pb::SnapshotMeta {
            learner_ids: Vec::new(),
            voter_ids: Vec::new(),
            index: 1,
            term: 1,
            voters: voters.into_iter().map(String::from).collect(),
            learners: learners.into_iter().map(String::from).collect(),
        };
        assert!(meta_from_proto(&a, twice).is_err());
    }
    let meta = SnapshotMeta {
        index: 9,
        term: 2,
        membership: Membership {
            voters: [1, 2].into(),
            learners: [3].into(),
        },
    };
    assert_eq!(meta_from_proto(&a, meta_to_proto(&a, &meta)).unwrap(), meta);
}

/// An append from b to a in term `term`, with `(index, term)` entries.
fn append(
    a: &Config,
    term: Term,
    prev: (Index, Term),
    entries: &[(Index, Term)],
    commit: Index,
) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        from_id: 0,
        to_id: 0,
        wire_version: 0,
        from: "b".into(),
        term,
        cluster_id: a.cluster_id,
        to: "a".into(),
        kind: Some(pb::append_entries_request::Kind::Append(pb::Append {
            prev_log_index: prev.0,
            prev_log_term: prev.1,
            entries: entries
                .iter()
                .map(|&(index, term)| pb::Entry {
                    index,
                    term,
                    data: bytes::Bytes::new(),
                    kind: pb::EntryKind::Noop.into(),
                })
                .collect(),
            leader_commit: commit,
        })),
    }
}

/// The hostile requests of issue #11, one by one: each is refused with the right
/// code before it becomes a message.
#[test]
fn hostile_appends_are_refused() {
    let a = config("a");
    let code = |req| append_request_message(&a, req).unwrap_err().code();
    use tonic::Code::{FailedPrecondition, InvalidArgument};
    let cases = [
        (
            "term near 2^64",
            append(&a, u64::MAX, (0, 0), &[], 0),
            InvalidArgument,
        ),
        (
            "term above the ceiling",
            append(&a, MAX_TERM + 1, (0, 0), &[], 0),
            InvalidArgument,
        ),
        ("term 0", append(&a, 0, (0, 0), &[], 0), InvalidArgument),
        (
            "index 0",
            append(&a, 2, (0, 0), &[(0, 1)], 0),
            InvalidArgument,
        ),
        (
            "a gap",
            append(&a, 2, (0, 0), &[(1, 1), (3, 1)], 0),
            InvalidArgument,
        ),
        (
            "decreasing",
            append(&a, 2, (0, 0), &[(2, 1), (1, 1)], 0),
            InvalidArgument,
        ),
        (
            "not after prev",
            append(&a, 2, (4, 1), &[(4, 1)], 0),
            InvalidArgument,
        ),
        (
            "entry term above the message's",
            append(&a, 2, (0, 0), &[(1, 3)], 0),
            InvalidArgument,
        ),
        (
            "entry terms decreasing",
            append(&a, 3, (0, 0), &[(1, 2), (2, 1)], 0),
            InvalidArgument,
        ),
        (
            "prev_log_term above the term",
            append(&a, 2, (1, 3), &[], 0),
            InvalidArgument,
        ),
        (
            "indexes overflow",
            append(&a, 2, (u64::MAX, 1), &[(0, 1)], 0),
            InvalidArgument,
        ),
    ];
    for (what, req, expected) in cases {
        assert_eq!(code(req), expected, "{what}");
    }
    let mut foreign = append(&a, 2, (0, 0), &[], 0);
    foreign.cluster_id ^= 1;
    assert_eq!(code(foreign), FailedPrecondition, "another cluster");
    let mut misrouted = append(&a, 2, (0, 0), &[], 0);
    misrouted.to = "c".into();
    assert_eq!(code(misrouted), FailedPrecondition, "meant for c");
    let mut myself = append(&a, 2, (0, 0), &[], 0);
    myself.from = "a".into();
    assert_eq!(code(myself), InvalidArgument, "from this node itself");
    // A newer build's request is refused (it may hold what this one cannot read); an
    // older build's, and this one's, are taken.
    let mut newer = append(&a, 2, (0, 0), &[], 0);
    newer.wire_version = WIRE_VERSION + 1;
    assert_eq!(code(newer), FailedPrecondition, "a newer wire version");
    for version in [0, WIRE_VERSION] {
        let mut known = append(&a, 2, (0, 0), &[], 0);
        known.wire_version = version;
        assert!(
            append_request_message(&a, known).is_ok(),
            "wire version {version}"
        );
    }

    // A huge commit index is clamped to what the message shows.
    let msg =
        append_request_message(&a, append(&a, 2, (0, 0), &[(1, 1), (2, 2)], u64::MAX)).unwrap();
    assert!(
        matches!(msg.body, Body::Append { commit: 2, .. }),
        "{msg:?}"
    );
}

#[test]
fn answers_count_only_from_the_member_called() {
    let (a, b, c) = (config("a"), config("b"), config("c"));
    let answer = Message {
        from: 3,
        to: 1,
        term: 3,
        body: Body::VoteResponse { granted: true },
    };
    // c answered a call to b.
    let wire = vote_response(&c, Some(answer.clone()));
    assert!(vote_response_message(&a, 2, false, wire).is_err());
    let mut wire = vote_response(&b, Some(answer.clone()));
    wire.cluster_id ^= 1;
    assert!(vote_response_message(&a, 2, false, wire).is_err());
    let mut wire = vote_response(&b, Some(answer));
    wire.term = u64::MAX;
    assert!(vote_response_message(&a, 2, false, wire).is_err());
    let wire = append_response(&c, None);
    assert!(append_response_message(&a, 2, wire).is_err());
    let wire = read_index_response(&c, None);
    assert!(read_index_response_message(&a, 2, 1, wire).is_err());
}

#[test]
fn snapshot_requests_are_checked() {
    let a = config("a");
    let first =
        |index, term, snapshot_term, voters: &[&str], image_bytes| pb::InstallSnapshotChunk {
            from_id: 0,
            to_id: 0,
            wire_version: 0,
            from: "b".into(),
            term,
            meta: Some(pb::SnapshotMeta {
                learner_ids: Vec::new(),
                voter_ids: Vec::new(),
                index,
                term: snapshot_term,
                voters: voters.iter().map(|v| v.to_string()).collect(),
                learners: vec![],
            }),
            data: Vec::new(),
            cluster_id: a.cluster_id,
            to: "a".into(),
            image_bytes,
            image_crc32c: 0,
        };
    let all = ["a", "b", "c"];
    assert!(snapshot_request(&a, &first(5, 2, 2, &all, 10)).is_ok());
    assert!(snapshot_request(&a, &first(5, 2, 2, &["a", "b"], 10)).is_ok());
    use tonic::Code::{InvalidArgument, ResourceExhausted};
    let cases = [
        ("index 0", first(0, 2, 2, &all, 10), InvalidArgument),
        ("term 0", first(5, 2, 0, &all, 10), InvalidArgument),
        (
            "snapshot term above the message's",
            first(5, 2, 3, &all, 10),
            InvalidArgument,
        ),
        // Any membership may be a snapshot's (members come and go), but not none.
        ("no voter", first(5, 2, 2, &[], 10), InvalidArgument),
        (
            "a voter twice",
            first(5, 2, 2, &["a", "b", "b"], 10),
            InvalidArgument,
        ),
        (
            "a stranger",
            first(5, 2, 2, &["a", "b", "z"], 10),
            InvalidArgument,
        ),
        (
            "oversized",
            first(5, 2, 2, &all, a.max_snapshot_bytes + 1),
            ResourceExhausted,
        ),
    ];
    for (what, chunk, expected) in cases {
        assert_eq!(
            snapshot_request(&a, &chunk).unwrap_err().code(),
            expected,
            "{what}"
        );
    }
}

mod arbitrary_wire_messages {
    //! Arbitrary decoded wire messages, through this layer into a real core: never
    //! a panic, and the core's invariants hold after every step.
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::raft::{self, HardState, RawNode, Restored, Role};

    fn index() -> impl Strategy<Value = u64> {
        prop_oneof![8 => 0..8u64, 1 => Just(u64::MAX), 1 => any::<u64>()]
    }

    fn term() -> impl Strategy<Value = u64> {
        prop_oneof![
            12 => 0..7u64,
            1 => Just(MAX_TERM),
            1 => Just(MAX_TERM + 1),
            1 => Just(u64::MAX),
            1 => any::<u64>(),
        ]
    }

    /// Mostly right, so that most messages get past the addressing checks.
    fn addressing(a: &Config) -> impl Strategy<Value = (u64, String)> {
        let id = a.cluster_id;
        prop_oneof![
            9 => Just((id, "a".to_string())),
            1 => (any::<u64>(), "[a-d]{0,2}"),
        ]
    }

    fn sender() -> impl Strategy<Value = String> {
        prop_oneof![8 => Just("b".to_string()), 4 => Just("c".to_string()), 1 => "[a-z]{0,3}"]
    }

    #[derive(Debug, Clone)]
    enum Input {
        Tick(u8),
        Vote(pb::VoteRequest),
        Append(pb::AppendEntriesRequest),
        ReadIndex(pb::ReadIndexRequest),
        VoteAnswer(bool, pb::VoteResponse),
        AppendAnswer(pb::AppendEntriesResponse),
    }

    fn entries() -> impl Strategy<Value = (bool, Vec<(u64, u64)>)> {
        // Half the time shaped to pass the checks (contiguous, non-decreasing
        // terms), so that the core sees many valid appends as well.
        (
            any::<bool>(),
            prop::collection::vec((index(), term()), 0..5),
        )
    }

    fn input(a: &Config) -> impl Strategy<Value = Input> {
        let vote = (
            addressing(a),
            sender(),
            term(),
            index(),
            term(),
            (any::<bool>(), any::<bool>()),
        )
            .prop_map(
                |(
                    (cluster_id, to),
                    from,
                    term,
                    last_log_index,
                    last_log_term,
                    (pre_vote, transfer),
                )| {
                    Input::Vote(pb::VoteRequest {
                        from_id: 0,
                        to_id: 0,
                        wire_version: 0,
                        from,
                        term,
                        last_log_index,
                        last_log_term,
                        pre_vote,
                        cluster_id,
                        to,
                        transfer,
                    })
                },
            );
        let append = (
            addressing(a),
            sender(),
            term(),
            index(),
            term(),
            entries(),
            index(),
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(
                |(
                    (cluster_id, to),
                    from,
                    term,
                    prev_index,
                    prev_term,
                    (shaped, entries),
                    commit,
                    heartbeat,
                    read_seq,
                )| {
                    use pb::append_entries_request::Kind;
                    let kind = if heartbeat {
                        Kind::Heartbeat(pb::Heartbeat {
                            leader_commit: commit,
                            read_seq,
                        })
                    } else {
                        let mut next = prev_index;
                        let mut last_term = prev_term.min(term);
                        let entries = entries
                            .into_iter()
                            .map(|(index, entry_term)| {
                                if shaped {
                                    next = next.saturating_add(1);
                                    last_term = last_term.max(entry_term.min(term));
                                    pb::Entry {
                                        index: next,
                                        term: last_term,
                                        data: bytes::Bytes::new(),
                                        kind: pb::EntryKind::Noop.into(),
                                    }
                                } else {
                                    pb::Entry {
                                        index,
                                        term: entry_term,
                                        data: bytes::Bytes::new(),
                                        kind: pb::EntryKind::Noop.into(),
                                    }
                                }
                            })
                            .collect();
                        Kind::Append(pb::Append {
                            prev_log_index: prev_index,
                            prev_log_term: if shaped {
                                prev_term.min(term)
                            } else {
                                prev_term
                            },
                            entries,
                            leader_commit: commit,
                        })
                    };
                    Input::Append(pb::AppendEntriesRequest {
                        from_id: 0,
                        to_id: 0,
                        wire_version: 0,
                        from,
                        term,
                        kind: Some(kind),
                        cluster_id,
                        to,
                    })
                },
            );
        let read = (addressing(a), sender(), term(), any::<u64>()).prop_map(
            |((cluster_id, to), from, term, id)| {
                Input::ReadIndex(pb::ReadIndexRequest {
                    from_id: 0,
                    to_id: 0,
                    wire_version: 0,
                    from,
                    term,
                    id,
                    cluster_id,
                    to,
                })
            },
        );
        let id = a.cluster_id;
        let vote_answer = (
            any::<bool>(),
            sender(),
            term(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(move |(pre_vote, from, term, granted, answered)| {
                Input::VoteAnswer(
                    pre_vote,
                    pb::VoteResponse {
                        from_id: 0,
                        from,
                        term,
                        granted,
                        answered,
                        cluster_id: id,
                    },
                )
            });
        let append_answer = (
            sender(),
            term(),
            any::<bool>(),
            index(),
            any::<bool>(),
            term(),
            index(),
            any::<u64>(),
            any::<bool>(),
        )
            .prop_map(
                move |(
                    from,
                    term,
                    success,
                    index,
                    has_hint,
                    hint_term,
                    hint_index,
                    read_seq,
                    heartbeat,
                )| {
                    use pb::append_entries_response::Kind;
                    let kind = if heartbeat {
                        Kind::Heartbeat(pb::HeartbeatResult { read_seq })
                    } else {
                        Kind::Append(pb::AppendResult {
                            success,
                            index,
                            has_hint,
                            hint_term,
                            hint_index,
                        })
                    };
                    Input::AppendAnswer(pb::AppendEntriesResponse {
                        from_id: 0,
                        from,
                        term,
                        kind: Some(kind),
                        cluster_id: id,
                    })
                },
            );
        prop_oneof![
            1 => (0..30u8).prop_map(Input::Tick),
            2 => vote,
            5 => append,
            1 => read,
            2 => vote_answer,
            3 => append_answer,
        ]
    }

    /// What the node's persisted log looks like, rebuilt from its Readys.
    struct Shadow {
        log: BTreeMap<Index, Term>,
        term: Term,
        commit: Index,
        applied: Index,
    }

    impl Shadow {
        /// Takes the node's Ready, checks it and the node against the invariants,
        /// and returns the messages it sends.
        fn check(&mut self, node: &mut RawNode) -> Vec<Message> {
            let rd = node.ready();
            if let Some(meta) = &rd.snapshot {
                self.log.clear();
                self.log.insert(meta.index, meta.term);
                self.applied = meta.index;
            }
            if let Some(first) = rd.entries.first() {
                let _ = self.log.split_off(&first.index);
                if let Some((&last, _)) = self.log.last_key_value() {
                    assert_eq!(first.index, last + 1, "the log would have a gap");
                }
            }
            for entry in &rd.entries {
                if let Some((&last, &last_term)) = self.log.last_key_value() {
                    assert_eq!(entry.index, last + 1, "entries not contiguous");
                    assert!(entry.term >= last_term, "terms decrease in the log");
                }
                self.log.insert(entry.index, entry.term);
            }
            for entry in &rd.committed {
                assert_eq!(entry.index, self.applied + 1, "committed out of order");
                self.applied = entry.index;
            }
            node.advance();
            let status = node.status();
            assert!(status.term >= self.term, "the term went back");
            assert!(status.term <= MAX_TERM, "the term passed the ceiling");
            assert!(status.commit >= self.commit, "the commit index went back");
            assert!(status.commit <= status.last_index, "committed past the log");
            self.term = status.term;
            self.commit = status.commit;
            rd.persisted_messages
        }
    }

    fn entry(index: Index, term: Term) -> Entry {
        Entry::noop(index, term)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn the_core_survives_any_wire_message(
            inputs in prop::collection::vec(input(&config("a")), 1..40),
            leader in any::<bool>(),
        ) {
            let a = config("a");
            let restored = Restored {
                hard_state: HardState { term: 3, vote: None, commit: 1 },
                snapshot: None,
                entries: vec![entry(1, 1), entry(2, 2), entry(3, 3)],
                reset_term: None,
            };
            let mut node = RawNode::new(raft::Config::for_tests(1, vec![1, 2, 3]), restored, 7);
            let mut shadow = Shadow { log: (1..=3).zip(1..=3).collect(), term: 3, commit: 1, applied: 0 };
            if leader {
                // Win an election with real answers, so that answers to a leader
                // get exercised too.
                for _ in 0..40 {
                    node.tick();
                    if node.role() != Role::Follower { break; }
                }
                for msg in shadow.check(&mut node) {
                    let body = match msg.body {
                        Body::PreVote { .. } => Body::PreVoteResponse { granted: true },
                        _ => Body::VoteResponse { granted: true },
                    };
                    node.step(Message { from: msg.to, to: 1, term: msg.term, body });
                }
                for msg in shadow.check(&mut node) {
                    if let Body::Vote { .. } = msg.body {
                        let body = Body::VoteResponse { granted: true };
                        node.step(Message { from: msg.to, to: 1, term: msg.term, body });
                    }
                }
                shadow.check(&mut node);
            }
            for input in inputs {
                match input {
                    Input::Tick(n) => (0..n).for_each(|_| node.tick()),
                    Input::Vote(req) => { if let Ok(msg) = vote_request_message(&a, req) { node.step(msg) } }
                    Input::Append(req) => { if let Ok(msg) = append_request_message(&a, req) { node.step(msg) } }
                    Input::ReadIndex(req) => { if let Ok(msg) = read_index_request_message(&a, req) { node.step(msg) } }
                    Input::VoteAnswer(pre_vote, resp) => {
                        if let Ok(Some(msg)) = vote_response_message(&a, 2, pre_vote, resp) { node.step(msg) }
                    }
                    Input::AppendAnswer(resp) => {
                        if let Ok(Some(msg)) = append_response_message(&a, 2, resp) { node.step(msg) }
                    }
                }
                shadow.check(&mut node);
            }
        }
    }
}
