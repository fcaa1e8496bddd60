//! Unit tests of the individual Raft rules. Whole-cluster behaviour under faults is the
//! simulator's job (`tests/simulation.rs`).

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
fn drain(node: &mut RawNode) -> (Vec<Message>, Vec<Entry>, Vec<ReadState>) {
    let (mut msgs, mut committed, mut reads) = (Vec::new(), Vec::new(), Vec::new());
    while node.has_ready() {
        let rd = node.ready();
        msgs.extend(rd.messages);
        msgs.extend(rd.persisted_messages);
        node.advance();
        committed.extend(rd.committed);
        reads.extend(rd.reads);
    }
    (msgs, committed, reads)
}

struct Cluster {
    nodes: BTreeMap<NodeId, RawNode>,
    /// Messages for which this returns false are dropped.
    filter: Box<dyn Fn(&Message) -> bool>,
    committed: BTreeMap<NodeId, Vec<Entry>>,
}

impl Cluster {
    fn new(nodes: Vec<RawNode>) -> Cluster {
        Cluster {
            nodes: nodes.into_iter().map(|n| (n.id(), n)).collect(),
            filter: Box::new(|_| true),
            committed: BTreeMap::new(),
        }
    }

    /// Delivers messages until none are left.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut msgs = Vec::new();
            for (id, node) in self.nodes.iter_mut() {
                let (m, c, _) = drain(node);
                msgs.extend(m);
                self.committed.entry(*id).or_default().extend(c);
            }
            if msgs.is_empty() {
                return;
            }
            for m in msgs {
                if (self.filter)(&m) {
                    if let Some(n) = self.nodes.get_mut(&m.to) {
                        n.step(m);
                    }
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

#[test]
fn a_restarted_node_remembers_its_vote() {
    let restored = Restored {
        hard_state: HardState {
            term: 2,
            vote: Some(2),
            commit: 0,
        },
        ..Default::default()
    };
    let mut n = RawNode::new(Config::for_tests(1, vec![1, 2, 3]), restored, 7);
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
        rd.persisted_messages[0].body,
        Body::VoteResponse { granted: false }
    );
}

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
    let (msgs, _, _) = drain(&mut n);
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
    let (msgs, _, _) = drain(&mut n);
    assert_eq!(msgs[0].body, Body::VoteResponse { granted: true });
}

#[test]
fn pre_vote_does_not_change_terms_and_a_partitioned_node_cannot_disrupt() {
    let mut c = Cluster::new((1..=3).map(|i| node(i, 3, 0, vec![])).collect());
    c.elect(1);
    let term = c.nodes[&1].term();
    // Node 3 is cut off and times out repeatedly: it only ever pre-votes.
    c.filter = Box::new(|m| m.from != 3 && m.to != 3);
    for _ in 0..200 {
        c.node(3).tick();
        c.node(1).tick();
        c.node(2).tick();
        c.settle();
    }
    assert_eq!(
        c.nodes[&3].term(),
        term,
        "a pre-candidate does not bump its term"
    );
    // Healed: node 3 rejoins without deposing the leader.
    c.filter = Box::new(|_| true);
    for _ in 0..50 {
        for id in 1..=3 {
            c.node(id).tick();
        }
        c.settle();
    }
    assert_eq!(c.nodes[&1].role(), Role::Leader);
    assert_eq!(c.nodes[&1].term(), term);
    assert_eq!(c.nodes[&3].leader(), Some(1));
}

#[test]
fn leader_stickiness_ignores_votes_while_the_leader_is_heard() {
    let mut c = Cluster::new((1..=3).map(|i| node(i, 3, 0, vec![])).collect());
    c.elect(1);
    let term = c.nodes[&1].term();
    c.node(2).step(Message {
        from: 3,
        to: 2,
        term: term + 1,
        body: Body::Vote {
            last_index: 9,
            last_term: 9,
            transfer: false,
        },
    });
    assert_eq!(c.nodes[&2].term(), term);
    assert_eq!(c.nodes[&2].leader(), Some(1));
}

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

#[test]
fn followers_refuse_appends_that_do_not_match_and_hint_the_conflict() {
    let mut n = node(2, 3, 2, vec![entry(1, 1), entry(2, 2), entry(3, 2)]);
    n.step(Message {
        from: 1,
        to: 2,
        term: 3,
        body: Body::Append {
            prev_index: 3,
            prev_term: 3,
            entries: vec![],
            commit: 0,
        },
    });
    let (msgs, _, _) = drain(&mut n);
    assert_eq!(
        msgs[0].body,
        Body::AppendResponse {
            outcome: AppendOutcome::Reject {
                index: 3,
                hint: Some(RejectHint::Conflict {
                    term: 2,
                    first_index: 2
                })
            }
        }
    );
    // The leader's matching suffix replaces the conflicting one.
    n.step(Message {
        from: 1,
        to: 2,
        term: 3,
        body: Body::Append {
            prev_index: 1,
            prev_term: 1,
            entries: vec![entry(2, 3)],
            commit: 2,
        },
    });
    let rd = n.ready();
    assert_eq!(rd.entries, vec![entry(2, 3)]);
    assert_eq!(
        rd.committed.iter().map(|e| e.term).collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert_eq!(n.status().last_index, 2);
}

#[test]
fn read_index_waits_for_a_heartbeat_round_and_is_refused_when_partitioned() {
    let mut c = Cluster::new((1..=3).map(|i| node(i, 3, 0, vec![])).collect());
    c.elect(1);
    c.node(1).read_index(7);
    // Without any answer from the followers the read is not served.
    let rd = c.node(1).ready();
    assert!(rd.reads.is_empty());
    assert!(rd.persisted_messages.is_empty());
    assert!(rd
        .messages
        .iter()
        .all(|m| matches!(m.body, Body::Heartbeat { read_seq: 1, .. })));
    c.node(1).advance();
    // One follower confirms: with the leader that is a majority.
    let m = rd.messages.into_iter().find(|m| m.to == 2).unwrap();
    c.node(2).step(m);
    let (answers, _, _) = drain(c.node(2));
    for a in answers {
        c.node(1).step(a);
    }
    let (_, _, reads) = drain(c.node(1));
    assert_eq!(reads, vec![ReadState { id: 7, index: 1 }]);
}

#[test]
fn a_follower_read_asks_the_leader_and_waits_for_its_own_commit() {
    let mut c = Cluster::new((1..=3).map(|i| node(i, 3, 0, vec![])).collect());
    c.elect(1);
    c.node(2).read_index(9);
    let mut served = Vec::new();
    for _ in 0..20 {
        let mut msgs = Vec::new();
        for id in 1..=3 {
            let (m, _, r) = drain(c.node(id));
            msgs.extend(m);
            if id == 2 {
                served.extend(r);
            }
        }
        for m in msgs {
            c.node(m.to).step(m);
        }
    }
    assert_eq!(served, vec![ReadState { id: 9, index: 1 }]);
}

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

#[test]
fn a_non_leader_refuses_proposals_with_a_hint() {
    let mut c = Cluster::new((1..=3).map(|i| node(i, 3, 0, vec![])).collect());
    c.elect(2);
    assert_eq!(
        c.node(1).propose(Bytes::from_static(b"x")),
        Err(RaftError::NotLeader { leader: Some(2) })
    );
}

/// §10.2.1: the leader's appends leave before its own persist, so its own copy must
/// not count until `advance`; a follower's acknowledgement must wait for the
/// follower's persist.
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
    let (answers, _, _) = drain(c.node(2));
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
