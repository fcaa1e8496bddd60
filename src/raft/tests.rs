//! Unit tests of single Raft rules, kept where a transcript cannot say them: the
//! protocol's behaviour is told by the transcripts in `tests/scripts/raft/` (run by
//! `tests/raft_scripts.rs`), which show every message and state change of a small
//! cluster, and whole-cluster behaviour under faults is the simulator's job
//! (`tests/simulation.rs`). What is left here needs hand-built state (logs no script
//! reaches, a wiped log, a message only the transport makes), a driver input that is
//! no message, or a look inside one `Ready`, which the transcript runner carries out
//! whole; each test says which.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::*;

fn entry(index: Index, term: Term) -> Entry {
    Entry::normal(index, term, Bytes::from(format!("e{index}")))
}

/// A node whose disk holds `entries` and `term`.
fn node(id: NodeId, n: u64, term: Term, entries: Vec<Entry>) -> RawNode {
    let restored = Restored {
        hard_state: HardState {
            term,
            vote: None,
            commit: 0,
        },
        snapshot: None,
        entries,
        reset_term: None,
    };
    RawNode::new(Config::for_tests(id, (1..=n).collect()), restored, id)
}

/// Carries out a Ready the way a driver would (persisting is implicit: the core's own
/// log is the disk here) and returns its messages and committed entries.
fn drain(node: &mut RawNode) -> (Vec<Message>, Vec<Entry>) {
    let (mut msgs, mut committed) = (Vec::new(), Vec::new());
    while node.has_ready() {
        let rd = node.ready();
        msgs.extend(rd.messages);
        msgs.extend(rd.persisted_messages);
        node.advance();
        committed.extend(rd.committed);
    }
    (msgs, committed)
}

struct Cluster {
    nodes: BTreeMap<NodeId, RawNode>,
    committed: BTreeMap<NodeId, Vec<Entry>>,
}

impl Cluster {
    fn new(nodes: Vec<RawNode>) -> Cluster {
        Cluster {
            nodes: nodes.into_iter().map(|n| (n.id(), n)).collect(),
            committed: BTreeMap::new(),
        }
    }

    /// Delivers messages until none are left.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut msgs = Vec::new();
            for (id, node) in self.nodes.iter_mut() {
                let (m, c) = drain(node);
                msgs.extend(m);
                self.committed.entry(*id).or_default().extend(c);
            }
            if msgs.is_empty() {
                return;
            }
            for m in msgs {
                if let Some(n) = self.nodes.get_mut(&m.to) {
                    n.step(m);
                }
            }
        }
        panic!("cluster did not settle");
    }

    fn elect(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).unwrap();
        for _ in 0..100 {
            if n.role() != Role::Follower {
                break;
            }
            n.tick();
        }
        self.settle();
        assert_eq!(
            self.nodes[&id].role(),
            Role::Leader,
            "n{id} should have won"
        );
    }

    fn node(&mut self, id: NodeId) -> &mut RawNode {
        self.nodes.get_mut(&id).unwrap()
    }
}

/// The transcripts show one vote per term (`election_split_vote`) and a vote that
/// survives a restart (`election_vote_persisted`); this looks inside the Ready: the
/// vote travels in its hard state, and the grant among the messages that wait for
/// that persist (`persisted_messages`), which the runner sends after persisting
/// anyway.
#[test]
fn a_vote_is_given_once_per_term() {
    let mut n = node(1, 3, 1, vec![]);
    n.step(Message {
        from: 2,
        to: 1,
        term: 2,
        body: Body::Vote {
            last_index: 0,
            last_term: 0,
            transfer: false,
        },
    });
    n.step(Message {
        from: 3,
        to: 1,
        term: 2,
        body: Body::Vote {
            last_index: 0,
            last_term: 0,
            transfer: false,
        },
    });
    let rd = n.ready();
    assert_eq!(
        rd.hard_state.map(|h| h.vote),
        Some(Some(2)),
        "the vote is persisted with the Ready"
    );
    let grants: Vec<(NodeId, bool)> = rd
        .persisted_messages
        .iter()
        .map(|m| match m.body {
            Body::VoteResponse { granted } => (m.to, granted),
            _ => panic!("unexpected {m:?}"),
        })
        .collect();
    assert_eq!(grants, vec![(2, true), (3, false)]);
}

/// The comparison of §5.4.1 on hand-built logs. `election_log_check` shows a shorter
/// log of the same last term refused; the longer log of an older last term is met
/// here only.
#[test]
fn votes_go_only_to_candidates_with_up_to_date_logs() {
    // Our log ends at (2, term 2).
    let mut n = node(1, 3, 2, vec![entry(1, 1), entry(2, 2)]);
    // Longer log but older last term: refused (§5.4.1).
    n.step(Message {
        from: 2,
        to: 1,
        term: 3,
        body: Body::Vote {
            last_index: 5,
            last_term: 1,
            transfer: false,
        },
    });
    // Same last term, shorter: refused.
    n.step(Message {
        from: 3,
        to: 1,
        term: 4,
        body: Body::Vote {
            last_index: 1,
            last_term: 2,
            transfer: false,
        },
    });
    let (msgs, _) = drain(&mut n);
    assert!(
        msgs.iter()
            .all(|m| m.body == Body::VoteResponse { granted: false }),
        "{msgs:?}"
    );
    // Same last term and as long: granted.
    n.step(Message {
        from: 3,
        to: 1,
        term: 5,
        body: Body::Vote {
            last_index: 2,
            last_term: 2,
            transfer: false,
        },
    });
    let (msgs, _) = drain(&mut n);
    assert_eq!(msgs[0].body, Body::VoteResponse { granted: true });
}

/// Looks inside one Ready (one persist for the whole batch, one append per follower);
/// the transcript runner carries a Ready out whole, one per command.
#[test]
fn proposals_are_batched_into_one_append_per_follower() {
    let mut c = Cluster::new((1..=3).map(|i| node(i, 3, 0, vec![])).collect());
    c.elect(1);
    for i in 0..50 {
        c.node(1).propose(Bytes::from(format!("w{i}"))).unwrap();
    }
    let rd = c.node(1).ready();
    assert_eq!(rd.entries.len(), 50, "one persist for the whole batch");
    let appends: Vec<&Message> = rd
        .messages
        .iter()
        .filter(|m| matches!(m.body, Body::Append { .. }))
        .collect();
    assert_eq!(appends.len(), 2, "one message per follower: {appends:?}");
    c.node(1).advance();
    for m in rd.messages {
        c.node(m.to).step(m);
    }
    c.settle();
    assert_eq!(c.nodes[&1].status().commit, 51);
    assert_eq!(c.committed[&3].len(), 51);
}

/// Hand-built: the message the transport makes of a failed request, which no core
/// sends.
#[test]
fn a_forwarded_read_fails_at_once_when_the_transport_reports_a_failure() {
    let mut c = Cluster::new((1..=3).map(|i| node(i, 3, 0, vec![])).collect());
    c.elect(1);
    c.node(2).read_index(9);
    drain(c.node(2));
    // What the transport hands the core when the request failed
    // (`rpc::convert::read_index_failed`): a refusal with term 0.
    c.node(2).step(Message {
        from: 1,
        to: 2,
        term: 0,
        body: Body::ReadIndexResponse { id: 9, index: None },
    });
    let rd = c.node(2).ready();
    assert_eq!(
        rd.failed_reads,
        vec![(9, RaftError::NotLeader { leader: Some(1) })]
    );
}

/// §10.2.1: the leader's appends leave before its own persist, so its own copy must
/// not count until `advance`; a follower's acknowledgement must wait for the
/// follower's persist. Steps a core between its `ready` and its `advance`, which the
/// transcript runner never does (it carries each Ready out whole).
#[test]
fn replication_may_leave_before_the_leaders_persist_but_acks_may_not() {
    let mut c = Cluster::new((1..=3).map(|i| node(i, 3, 0, vec![])).collect());
    c.elect(1);
    let index = c.node(1).propose(Bytes::from("w")).unwrap();
    let rd = c.node(1).ready();
    assert_eq!(rd.entries.len(), 1);
    assert!(
        rd.persisted_messages.is_empty(),
        "{:?}",
        rd.persisted_messages
    );
    let to_2 = rd.messages.into_iter().find(|m| m.to == 2).unwrap();
    // The follower answers only after its persist: the answer is not in `messages`.
    c.node(2).step(to_2);
    let follower = c.node(2).ready();
    assert!(follower.messages.is_empty());
    assert!(follower
        .persisted_messages
        .iter()
        .any(|m| matches!(m.body, Body::AppendResponse { .. })));
    c.node(2).advance();
    // Before the leader's own advance, one follower plus the leader's unpersisted
    // copy is no majority ...
    let ack = follower.persisted_messages.into_iter().next().unwrap();
    c.node(1).step(ack.clone());
    assert!(c.nodes[&1].status().commit < index);
    // ... but two durable copies are, once the leader's own persist is done.
    c.node(1).advance();
    assert_eq!(c.nodes[&1].status().commit, index);
}

/// A broken connection from the leader ends its lease and hastens an election, but
/// changes nothing Raft's safety rests on: the follower's vote of this term holds.
/// The input is the driver's report of the broken connection, not a message, and the
/// vote request is hand-made.
#[test]
fn leader_disconnected_keeps_the_vote_and_only_shortens_the_wait() {
    let mut c = Cluster::new((1..=3).map(|i| node(i, 3, 0, vec![])).collect());
    c.elect(1);
    let term = c.nodes[&1].term();
    assert_eq!(c.nodes[&2].status().leader, Some(1));
    // Another node's disconnection is no news about the leader.
    c.node(2).leader_disconnected(3);
    assert_eq!(c.nodes[&2].status().leader, Some(1));

    c.node(2).leader_disconnected(1);
    assert_eq!(c.nodes[&2].status().leader, None);
    // A rival for the same term is still refused: node 2 voted in this term.
    c.node(2).step(Message {
        from: 3,
        to: 2,
        term,
        body: Body::Vote {
            last_index: 100,
            last_term: term,
            transfer: false,
        },
    });
    let (answers, _) = drain(c.node(2));
    assert!(
        answers
            .iter()
            .all(|m| m.body != Body::VoteResponse { granted: true }),
        "{answers:?}"
    );
    // It campaigns within a heartbeat interval instead of an election timeout.
    let heartbeat = Config::for_tests(2, vec![1, 2, 3]).heartbeat_ticks;
    for _ in 0..heartbeat {
        c.node(2).tick();
    }
    assert_ne!(c.nodes[&2].role(), Role::Follower);
}

/// Hand-built: a node restored wiped (`reset_term`), with hand-made messages.
#[test]
fn a_wiped_node_withholds_its_vote_until_it_holds_an_entry_of_a_later_term() {
    // Wiped in term 3 (DISTRAFT_RESET_LOGS): term and vote kept, log gone.
    let restored = Restored {
        hard_state: HardState {
            term: 3,
            vote: Some(2),
            commit: 0,
        },
        reset_term: Some(3),
        ..Default::default()
    };
    let mut n = RawNode::new(Config::for_tests(1, vec![1, 2, 3]), restored, 7);
    let vote = |term| Message {
        from: 3,
        to: 1,
        term,
        body: Body::Vote {
            last_index: 0,
            last_term: 0,
            transfer: false,
        },
    };
    let granted = |msgs: Vec<Message>| {
        msgs.iter()
            .any(|m| matches!(m.body, Body::VoteResponse { granted: true }))
    };
    assert!(!n.may_vote());
    n.step(vote(4));
    assert!(
        !granted(drain(&mut n).0),
        "an empty log must not elect anyone"
    );
    // It never campaigns either, however long it waits.
    for _ in 0..100 {
        n.tick();
    }
    assert_eq!(n.role(), Role::Follower);
    assert!(drain(&mut n).0.is_empty());

    // Entries of the wiped term do not lift the ban: they may come from the very
    // leader that counted the lost acknowledgements.
    let append = |term, prev_index, prev_term, entries: Vec<Entry>| Message {
        from: 2,
        to: 1,
        term,
        body: Body::Append {
            prev_index,
            prev_term,
            entries,
            commit: 0,
        },
    };
    n.step(append(4, 0, 0, vec![entry(1, 3)]));
    drain(&mut n);
    assert!(!n.may_vote());
    // An entry of a later term does.
    n.step(append(4, 1, 3, vec![entry(2, 4)]));
    drain(&mut n);
    assert!(n.may_vote());
    // (Past the leader's lease, so that votes are considered at all.)
    for _ in 0..10 {
        n.tick();
    }
    drain(&mut n);
    n.step(vote(5));
    assert!(!granted(drain(&mut n).0), "candidate's log is behind ours");
    let mut up_to_date = vote(6);
    up_to_date.body = Body::Vote {
        last_index: 2,
        last_term: 4,
        transfer: false,
    };
    n.step(up_to_date);
    assert!(granted(drain(&mut n).0));
}

/// A node outside the membership (a removed one that never learnt of its removal, and
/// keeps campaigning) is not heard when it asks for votes, unless its log is ahead of
/// ours: its vote requests neither raise our term nor get an answer, so it cannot
/// disrupt the members (`membership_removed_node` shows its pre-votes ignored; here
/// its votes, of a higher term). The plant `non-voter-votes-heard` breaks this.
#[test]
fn vote_requests_of_a_non_member_are_not_heard() {
    let mut n = node(1, 3, 1, vec![entry(1, 1)]);
    let _ = drain(&mut n);
    for body in [
        Body::Vote {
            last_index: 1,
            last_term: 1,
            transfer: false,
        },
        Body::PreVote {
            last_index: 1,
            last_term: 1,
        },
    ] {
        n.step(Message {
            from: 9,
            to: 1,
            term: 7,
            body,
        });
    }
    let rd = n.ready();
    assert_eq!(
        rd.hard_state, None,
        "a non-member's vote request moved our term"
    );
    assert!(rd.messages.is_empty() && rd.persisted_messages.is_empty());
}
