//! Tests of the linearizability checker: hand-made violations and good concurrent
//! histories, a brute-force oracle on small random histories, histories generated from
//! a sequential execution (linearizable by construction) and mutated, and a large
//! history for speed.
//!
//! `cargo test --release --test linearizability -- --nocapture` prints the timings.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use distraft_testkit::linearizability::{
    check, check_with_budget, CheckError, KvOp, KvOutcome, Operation, Violation,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn put(client: u64, key: &str, value: &str, call: u64, ret: u64) -> Operation {
    let op = KvOp::Put {
        key: key.into(),
        value: value.into(),
    };
    Operation {
        client,
        op,
        call,
        ret,
        outcome: KvOutcome::Put,
    }
}

fn put_unknown(client: u64, key: &str, value: &str, call: u64) -> Operation {
    Operation {
        outcome: KvOutcome::Unknown,
        ret: 0,
        ..put(client, key, value, call, call)
    }
}

fn delete(client: u64, key: &str, call: u64, ret: u64) -> Operation {
    let op = KvOp::Delete { key: key.into() };
    Operation {
        client,
        op,
        call,
        ret,
        outcome: KvOutcome::Delete,
    }
}

fn get(client: u64, key: &str, seen: Option<&str>, call: u64, ret: u64) -> Operation {
    let op = KvOp::Get { key: key.into() };
    Operation {
        client,
        op,
        call,
        ret,
        outcome: KvOutcome::Get(seen.map(Into::into)),
    }
}

fn cas(
    client: u64,
    key: &str,
    expected: Option<&str>,
    new: &str,
    (call, ret): (u64, u64),
    swapped: Option<bool>,
) -> Operation {
    let op = KvOp::Cas {
        key: key.into(),
        expected: expected.map(Into::into),
        new: new.into(),
    };
    Operation {
        client,
        op,
        call,
        ret,
        outcome: swapped.map_or(KvOutcome::Unknown, KvOutcome::Cas),
    }
}

fn list(client: u64, prefix: &str, found: &[(&str, &str)], call: u64, ret: u64) -> Operation {
    let op = KvOp::List {
        prefix: prefix.into(),
    };
    let found = found
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    Operation {
        client,
        op,
        call,
        ret,
        outcome: KvOutcome::List(found),
    }
}

/// Pairs of a key and a value (`None`: absent, or a delete).
type Pairs<'a> = &'a [(&'a str, Option<&'a str>)];

/// A transaction: `compares`, then `success` or `failure`; `succeeded: None` is
/// unanswered.
fn txn(
    client: u64,
    (compares, success, failure): (Pairs, Pairs, Pairs),
    (call, ret): (u64, u64),
    succeeded: Option<bool>,
) -> Operation {
    let owned = |pairs: Pairs| -> Vec<(String, Option<String>)> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.map(Into::into)))
            .collect()
    };
    let op = KvOp::Txn {
        compares: owned(compares),
        success: owned(success),
        failure: owned(failure),
    };
    Operation {
        client,
        op,
        call,
        ret,
        outcome: succeeded.map_or(KvOutcome::Unknown, KvOutcome::Txn),
    }
}

fn get_unknown(client: u64, key: &str, call: u64) -> Operation {
    Operation {
        outcome: KvOutcome::Unknown,
        ret: 0,
        ..get(client, key, None, call, call)
    }
}

/// The violation `history` must have; also checks that the evidence is a proof on its
/// own and names the culprit.
fn violation(history: &[Operation]) -> Violation {
    match check(history) {
        Err(CheckError::NotLinearizable(violation)) => {
            assert_evidence_is_a_proof(&violation);
            violation
        }
        other => panic!("expected a violation, got {other:?} for {history:#?}"),
    }
}

fn assert_evidence_is_a_proof(violation: &Violation) {
    assert!(violation
        .evidence
        .iter()
        .any(|(index, _)| *index == violation.culprit));
    let evidence: Vec<Operation> = violation
        .evidence
        .iter()
        .map(|(_, op)| op.clone())
        .collect();
    assert!(
        matches!(check(&evidence), Err(CheckError::NotLinearizable(_))),
        "the evidence alone should have no linearization:\n{violation}"
    );
}

fn evidence_indices(violation: &Violation) -> Vec<usize> {
    violation.evidence.iter().map(|(index, _)| *index).collect()
}

fn assert_linearizable(history: &[Operation]) {
    if let Err(error) = check(history) {
        panic!("expected linearizable, got: {error}");
    }
}

// ---- known violations ----

#[test]
fn stale_read_is_a_violation() {
    let history = [
        put(1, "k", "a", 0, 10),
        put(1, "k", "b", 20, 30),
        get(2, "k", Some("a"), 40, 50),
    ];
    let violation = violation(&history);
    assert_eq!(violation.key, "k");
    assert_eq!(violation.culprit, 2);
    assert_eq!(evidence_indices(&violation), [0, 1, 2]);
}

#[test]
fn evidence_is_shrunk_to_the_operations_that_matter() {
    let history = [
        put(1, "k", "a", 0, 10),            // 0: source of the stale value
        put(3, "other", "x", 0, 100),       // 1: other key
        get(4, "k", Some("a"), 5, 15),      // 2: fine
        put(1, "k", "b", 20, 30),           // 3: overwrites
        get(2, "other", Some("x"), 40, 50), // 4: other key
        get(4, "k", Some("b"), 35, 38),     // 5: fine
        get(2, "k", Some("a"), 40, 50),     // 6: stale
        put(1, "k", "c", 60, 70),           // 7: after the violation
        get(2, "k", Some("c"), 80, 90),     // 8: after the violation
    ];
    let violation = violation(&history);
    assert_eq!(violation.culprit, 6);
    assert!(violation.shrunk);
    assert_eq!(evidence_indices(&violation), [0, 3, 6]);
    let text = violation.to_string();
    assert!(text.contains("key \"k\""), "{text}");
    assert!(text.contains("#6 client 2 [40, 50] get -> \"a\""), "{text}");
    assert!(
        text.contains("#3 client 1 [20, 30] put \"b\" -> ok"),
        "{text}"
    );
}

#[test]
fn lost_write_is_a_violation() {
    // "b" is acknowledged, yet every later read still sees "a".
    let history = [
        put(1, "k", "a", 0, 10),
        put(1, "k", "b", 20, 30),
        get(2, "k", Some("a"), 25, 28),
        get(2, "k", Some("a"), 40, 50),
        get(3, "k", Some("a"), 60, 70),
    ];
    assert_eq!(violation(&history).culprit, 3);
}

#[test]
fn acknowledged_write_missing_from_a_later_read_is_a_violation() {
    let history = [put(1, "k", "a", 0, 10), get(2, "k", None, 20, 30)];
    assert_eq!(evidence_indices(&violation(&history)), [0, 1]);
}

#[test]
fn read_of_a_never_written_value_is_a_violation() {
    let history = [
        put(1, "k", "a", 0, 10),
        put(2, "k", "b", 5, 15),
        get(3, "k", Some("z"), 3, 20),
    ];
    let violation = violation(&history);
    assert_eq!(violation.culprit, 2);
    assert_eq!(evidence_indices(&violation), [2]);
}

#[test]
fn read_your_write_violations_are_caught_for_one_client_and_across_clients() {
    let same_client = [put(1, "k", "a", 0, 10), get(1, "k", None, 11, 12)];
    violation(&same_client);
    // Client 1's write completed before client 2 asked: client 2 must see it.
    let across_clients = [
        put(1, "k", "a", 0, 10),
        put(1, "k", "b", 11, 20),
        get(2, "k", Some("a"), 21, 30),
    ];
    violation(&across_clients);
}

#[test]
fn delete_then_read_of_the_old_value_is_a_violation() {
    let history = [
        put(1, "k", "a", 0, 10),
        delete(1, "k", 20, 30),
        get(2, "k", Some("a"), 40, 50),
    ];
    assert_eq!(evidence_indices(&violation(&history)), [0, 1, 2]);
}

#[test]
fn reads_disagreeing_on_the_order_of_concurrent_writes_are_a_violation() {
    let history = [
        put(1, "k", "a", 0, 10),
        put(2, "k", "b", 5, 15),
        get(3, "k", Some("b"), 20, 25),
        get(3, "k", Some("a"), 30, 35),
    ];
    violation(&history);
    // Within the writes' intervals, a then b then a would need "a" written twice.
    let flip_flop = [
        put(1, "k", "a", 0, 100),
        put(2, "k", "b", 0, 100),
        get(3, "k", Some("a"), 10, 20),
        get(3, "k", Some("b"), 30, 40),
        get(3, "k", Some("a"), 50, 60),
    ];
    violation(&flip_flop);
}

#[test]
fn unknown_write_cannot_take_effect_before_its_call_or_twice() {
    let before_call = [get(1, "k", Some("a"), 0, 10), put_unknown(2, "k", "a", 20)];
    violation(&before_call);
    let seen_then_unseen = [
        put_unknown(1, "k", "a", 0),
        get(2, "k", Some("a"), 10, 20),
        get(2, "k", None, 30, 40),
    ];
    violation(&seen_then_unseen);
}

// ---- known-good concurrent histories ----

#[test]
fn empty_and_sequential_histories_are_linearizable() {
    assert_linearizable(&[]);
    assert_linearizable(&[
        get(1, "k", None, 0, 1),
        put(1, "k", "a", 2, 3),
        get(2, "k", Some("a"), 4, 5),
        delete(2, "k", 6, 7),
        get(1, "k", None, 8, 9),
        put(1, "j", "a", 10, 11),
    ]);
}

#[test]
fn overlapping_writes_may_be_read_in_either_order() {
    for seen in ["a", "b"] {
        assert_linearizable(&[
            put(1, "k", "a", 0, 10),
            put(2, "k", "b", 5, 15),
            get(3, "k", Some(seen), 20, 25),
            get(4, "k", Some(seen), 30, 35),
        ]);
    }
}

#[test]
fn unknown_write_may_or_may_not_take_effect() {
    // Took effect.
    assert_linearizable(&[put_unknown(1, "k", "a", 0), get(2, "k", Some("a"), 20, 30)]);
    // Did not.
    assert_linearizable(&[put_unknown(1, "k", "a", 0), get(2, "k", None, 20, 30)]);
    // Took effect late, after reads that missed it and after its client moved on.
    assert_linearizable(&[
        put_unknown(1, "k", "a", 0),
        get(2, "k", None, 20, 30),
        put(1, "k", "b", 40, 50),
        get(2, "k", Some("b"), 55, 60),
        get(2, "k", Some("a"), 70, 80),
    ]);
}

#[test]
fn reads_concurrent_with_a_write_may_see_old_or_new() {
    for seen in ["a", "b"] {
        assert_linearizable(&[
            put(1, "k", "a", 0, 10),
            put(1, "k", "b", 20, 40),
            get(2, "k", Some(seen), 25, 30),
        ]);
    }
    let never_absent = [
        put(1, "k", "a", 0, 10),
        put(1, "k", "b", 20, 40),
        get(2, "k", None, 25, 30),
    ];
    violation(&never_absent);
}

#[test]
fn unanswered_reads_constrain_nothing() {
    let history = [
        put(1, "k", "a", 0, 10),
        get_unknown(2, "k", 20),
        get(2, "k", Some("a"), 30, 40),
    ];
    let stats = check(&history).expect("linearizable");
    assert_eq!((stats.ops, stats.unknown, stats.keys), (2, 0, 1));
}

#[test]
fn touching_intervals_are_concurrent() {
    assert_linearizable(&[put(1, "k", "a", 0, 10), get(2, "k", None, 10, 20)]);
    violation(&[put(1, "k", "a", 0, 10), get(2, "k", None, 11, 20)]);
}

#[test]
fn stats_count_operations_keys_and_unknown_writes() {
    let history = [
        put(1, "a", "1", 0, 10),
        put_unknown(2, "b", "2", 0),
        get(3, "a", Some("1"), 20, 30),
        get(3, "c", None, 20, 30),
    ];
    let stats = check(&history).expect("linearizable");
    assert_eq!((stats.ops, stats.unknown, stats.keys), (4, 1, 3));
    let keys: Vec<(&str, usize)> = stats
        .per_key
        .iter()
        .map(|k| (k.key.as_str(), k.ops))
        .collect();
    assert_eq!(keys, [("a", 2), ("b", 1), ("c", 1)]);
}

// ---- malformed input and budget ----

#[test]
fn malformed_operations_are_rejected() {
    let returns_before_call = [put(1, "k", "a", 0, 10), get(1, "k", None, 20, 19)];
    assert!(matches!(
        check(&returns_before_call),
        Err(CheckError::InvalidOperation { index: 1, .. })
    ));
    let wrong_outcome = [Operation {
        outcome: KvOutcome::Put,
        ..get(1, "k", None, 0, 1)
    }];
    assert!(matches!(
        check(&wrong_outcome),
        Err(CheckError::InvalidOperation { index: 0, .. })
    ));
}

#[test]
fn exhausted_budget_is_inconclusive_never_success() {
    let good = [
        put(1, "k", "a", 0, 10),
        put(2, "k", "b", 5, 15),
        get(3, "k", Some("a"), 20, 25),
    ];
    assert!(matches!(
        check_with_budget(&good, 2),
        Err(CheckError::Inconclusive { .. })
    ));
    assert!(check_with_budget(&good, 100).is_ok());
}

#[test]
fn a_violation_is_reported_before_an_inconclusive_key() {
    let mut history: Vec<Operation> = (0..20).map(|i| put(i, "a", "x", 0, 100)).collect();
    history.push(get(1, "b", Some("never"), 0, 1));
    let error = check_with_budget(&history, 5).expect_err("not linearizable");
    assert!(
        matches!(error, CheckError::NotLinearizable(ref v) if v.key == "b"),
        "{error}"
    );
}

// ---- compare-and-set ----

#[test]
fn compare_and_set_reported_failed_whose_value_is_read_is_a_violation() {
    // A retry applied twice: the first apply swapped, the second found its own value
    // and reported failure; "b" has no other writer. A concurrent write may explain
    // the failure, but not the read.
    let history = [
        put(1, "k", "a", 0, 10),
        cas(2, "k", Some("a"), "b", (20, 30), Some(false)),
        put(4, "k", "c", 20, 30),
        get(3, "k", Some("b"), 40, 50),
    ];
    let violation = violation(&history);
    assert_eq!(violation.culprit, 3);
    // The failed swap is kept as the only operation that names "b".
    assert_eq!(evidence_indices(&violation), [1, 3]);
    assert!(violation
        .to_string()
        .contains("cas \"a\" -> \"b\" -> compare failed"));
}

#[test]
fn compare_and_set_failing_on_its_expected_value_is_a_violation() {
    let history = [
        put(1, "k", "a", 0, 10),
        cas(2, "k", Some("a"), "b", (20, 30), Some(false)),
        get(3, "k", Some("a"), 40, 50),
    ];
    assert_eq!(evidence_indices(&violation(&history)), [0, 1]);
    // Absent expected on an absent key.
    violation(&[cas(1, "k", None, "b", (0, 10), Some(false))]);
}

#[test]
fn two_compare_and_sets_from_one_value_cannot_both_swap() {
    let history = [
        put(1, "k", "a", 0, 10),
        cas(2, "k", Some("a"), "b", (20, 30), Some(true)),
        cas(3, "k", Some("a"), "c", (20, 30), Some(true)),
    ];
    violation(&history);
    // Unless something wrote the value back in between.
    let history = [
        put(1, "k", "a", 0, 10),
        cas(2, "k", Some("a"), "b", (20, 30), Some(true)),
        cas(3, "k", Some("a"), "c", (20, 30), Some(true)),
        put(4, "k", "a", 20, 30),
    ];
    assert_linearizable(&history);
}

#[test]
fn a_swap_of_a_value_not_there_is_a_violation() {
    let history = [
        put(1, "k", "a", 0, 10),
        cas(2, "k", Some("z"), "b", (20, 30), Some(true)),
    ];
    violation(&history);
    // An unknown one cannot take effect either: "b" cannot be read.
    let history = [
        put(1, "k", "a", 0, 10),
        cas(2, "k", Some("z"), "b", (20, 30), None),
        get(3, "k", Some("b"), 40, 50),
    ];
    violation(&history);
}

#[test]
fn concurrent_compare_and_sets_are_ordered_by_what_they_saw() {
    let history = [
        put(1, "k", "a", 0, 10),
        cas(2, "k", Some("a"), "b", (20, 40), Some(true)),
        cas(3, "k", Some("a"), "c", (25, 35), Some(false)),
        cas(4, "k", None, "d", (26, 36), Some(false)),
        get(5, "k", Some("b"), 45, 50),
        cas(5, "k", Some("b"), "e", (51, 52), Some(true)),
        get(5, "k", Some("e"), 53, 54),
    ];
    assert_linearizable(&history);
    // A failed compare-and-set is explained by a write concurrent with it.
    let history = [
        put(1, "k", "a", 0, 10),
        put(2, "k", "z", 15, 40),
        cas(3, "k", Some("a"), "c", (20, 30), Some(false)),
        get(4, "k", Some("a"), 21, 29),
    ];
    assert_linearizable(&history);
}

#[test]
fn unknown_compare_and_sets_may_take_effect_in_a_chain_or_not_at_all() {
    // An unknown delete and an unknown swap from absent explain the read of "x".
    let history = [
        put(1, "k", "a", 0, 10),
        delete(2, "k", 20, 25),
        put(2, "k", "b", 26, 30),
        Operation {
            outcome: KvOutcome::Unknown,
            ..delete(3, "k", 31, 31)
        },
        cas(4, "k", None, "x", (32, 0), None),
        get(5, "k", Some("x"), 50, 60),
    ];
    assert_linearizable(&history);
    // Never taking effect.
    let history = [
        put(1, "k", "a", 0, 10),
        cas(2, "k", Some("a"), "b", (20, 0), None),
        get(3, "k", Some("a"), 40, 50),
    ];
    assert_linearizable(&history);
    // An unknown write explains a failed compare-and-set.
    let history = [
        put(1, "k", "a", 0, 10),
        put_unknown(2, "k", "q", 15),
        cas(3, "k", Some("a"), "c", (20, 30), Some(false)),
        get(4, "k", Some("q"), 40, 50),
    ];
    assert_linearizable(&history);
}

// ---- listings ----

#[test]
fn listings_read_every_key_under_their_prefix() {
    let history = [
        put(1, "k1", "a", 0, 10),
        put(1, "k2", "b", 11, 20),
        put(1, "other", "c", 21, 30),
        list(2, "k", &[("k1", "a"), ("k2", "b")], 40, 50),
        delete(1, "k1", 51, 60),
        list(2, "k", &[("k2", "b")], 61, 70),
    ];
    assert_linearizable(&history);
}

#[test]
fn listings_missing_or_keeping_keys_are_violations() {
    // An acknowledged key is missing.
    let history = [
        put(1, "k1", "a", 0, 10),
        put(1, "k2", "b", 11, 20),
        list(2, "k", &[("k2", "b")], 40, 50),
    ];
    let missing = violation(&history);
    assert_eq!((missing.key.as_str(), missing.culprit), ("k1", 2));
    // A deleted key is still there.
    let history = [
        put(1, "k1", "a", 0, 10),
        delete(1, "k1", 11, 20),
        list(2, "k", &[("k1", "a")], 40, 50),
    ];
    violation(&history);
    // A key nobody wrote.
    violation(&[list(2, "k", &[("k9", "a")], 40, 50)]);
}

#[test]
fn listings_are_checked_key_by_key() {
    // The caveat of the per-key projection: each key's part of this listing has a
    // linearization, yet no single instant had "k1" absent and "k2" present (client 4
    // saw "k1" written before "k2" was). Accepted, though a joint check would refuse it.
    let history = [
        put(1, "k1", "a", 0, 20),
        put(2, "k2", "b", 0, 20),
        get(4, "k1", Some("a"), 1, 2),
        get(4, "k2", None, 3, 4),
        list(3, "k", &[("k2", "b")], 0, 30),
    ];
    assert_linearizable(&history);
}

#[test]
fn malformed_listings_are_rejected() {
    let outside = [list(1, "k", &[("z", "a")], 0, 1)];
    assert!(matches!(
        check(&outside),
        Err(CheckError::InvalidOperation { index: 0, .. })
    ));
    let twice = [list(1, "k", &[("k1", "a"), ("k1", "b")], 0, 1)];
    assert!(matches!(
        check(&twice),
        Err(CheckError::InvalidOperation { index: 0, .. })
    ));
    let wrong_kind = [Operation {
        outcome: KvOutcome::Cas(true),
        ..list(1, "k", &[], 0, 1)
    }];
    assert!(matches!(
        check(&wrong_kind),
        Err(CheckError::InvalidOperation { index: 0, .. })
    ));
}

// ---- transactions ----

#[test]
fn transactions_apply_one_branch_at_one_instant() {
    let history = [
        put(1, "x", "a", 0, 10),
        // Compares x and y (absent): both hold, so x and y are written.
        txn(
            2,
            (
                &[("x", Some("a")), ("y", None)],
                &[("x", Some("b")), ("y", Some("c"))],
                &[("z", Some("d"))],
            ),
            (11, 20),
            Some(true),
        ),
        get(3, "y", Some("c"), 21, 22),
        get(3, "z", None, 23, 24),
        // Compares x with a value it no longer holds: the failure branch deletes y.
        txn(
            2,
            (&[("x", Some("a"))], &[("x", Some("e"))], &[("y", None)]),
            (30, 40),
            Some(false),
        ),
        get(3, "x", Some("b"), 41, 42),
        get(3, "y", None, 43, 44),
    ];
    assert_linearizable(&history);
}

#[test]
fn a_transaction_applied_in_part_is_a_violation() {
    // Acknowledged as succeeded, but its write of y never shows.
    let history = [
        txn(
            1,
            (&[("x", None)], &[("x", Some("a")), ("y", Some("b"))], &[]),
            (0, 10),
            Some(true),
        ),
        get(2, "x", Some("a"), 11, 12),
        get(2, "y", None, 13, 14),
    ];
    let v = violation(&history);
    assert_eq!((v.key.as_str(), v.culprit), ("y", 2));
    // Its failure branch, acknowledged, never shows either.
    let history = [
        put(1, "x", "a", 0, 10),
        txn(
            1,
            (&[("x", None)], &[], &[("y", Some("b"))]),
            (11, 20),
            Some(false),
        ),
        get(2, "y", None, 21, 22),
    ];
    violation(&history);
}

#[test]
fn a_transaction_against_a_compare_that_did_not_hold_is_a_violation() {
    // It succeeded although x held "a", not "z".
    let history = [
        put(1, "x", "a", 0, 10),
        txn(
            2,
            (&[("x", Some("z"))], &[("y", Some("b"))], &[]),
            (11, 20),
            Some(true),
        ),
    ];
    assert_eq!(violation(&history).key, "x");
    // It failed although its one compare held.
    let history = [
        put(1, "x", "a", 0, 10),
        txn(
            2,
            (&[("x", Some("a"))], &[("y", Some("b"))], &[]),
            (11, 20),
            Some(false),
        ),
    ];
    violation(&history);
}

#[test]
fn unanswered_transactions_may_take_effect_or_not() {
    let written = txn(
        1,
        (
            &[("x", None)],
            &[("x", Some("a")), ("y", Some("b"))],
            &[("z", Some("c"))],
        ),
        (0, 10),
        None,
    );
    // Taken effect (success branch), or never.
    assert_linearizable(&[written.clone(), get(2, "y", Some("b"), 20, 21)]);
    assert_linearizable(&[written.clone(), get(2, "y", None, 20, 21)]);
    // Or the failure branch, after a concurrent put of x.
    assert_linearizable(&[
        put(3, "x", "q", 0, 10),
        written.clone(),
        get(2, "z", Some("c"), 20, 21),
    ]);
    // Never before its call.
    let later = Operation { call: 5, ..written };
    violation(&[get(2, "y", Some("b"), 0, 1), later]);
}

#[test]
fn transactions_are_checked_key_by_key() {
    // The caveat of the projection: with two compares, a failure is explained on each
    // key alone (one of them failed), though here both held.
    let history = [
        put(1, "x", "a", 0, 10),
        put(1, "y", "b", 11, 20),
        txn(
            2,
            (
                &[("x", Some("a")), ("y", Some("b"))],
                &[("x", Some("c"))],
                &[],
            ),
            (21, 30),
            Some(false),
        ),
    ];
    assert_linearizable(&history);
}

#[test]
fn malformed_transactions_are_rejected() {
    let refused = |history: &[Operation]| {
        matches!(
            check(history),
            Err(CheckError::InvalidOperation { index: 0, .. })
        )
    };
    let both_branches = txn(1, (&[], &[("x", Some("a"))], &[("x", None)]), (0, 1), None);
    assert!(refused(&[both_branches]));
    let compared_twice = txn(
        1,
        (&[("x", None), ("x", Some("a"))], &[], &[]),
        (0, 1),
        Some(true),
    );
    assert!(refused(&[compared_twice]));
    let written_twice = txn(
        1,
        (&[], &[("x", Some("a")), ("x", None)], &[]),
        (0, 1),
        Some(true),
    );
    assert!(refused(&[written_twice]));
    let wrong_kind = Operation {
        outcome: KvOutcome::Cas(true),
        ..txn(1, (&[], &[], &[]), (0, 1), Some(true))
    };
    assert!(refused(&[wrong_kind]));
}

// ---- a brute-force oracle on small random histories ----

/// Tries every order of the operations that respects real time, over the whole map.
fn brute_force_linearizable(history: &[Operation]) -> bool {
    fn answered(op: &Operation) -> bool {
        op.outcome != KvOutcome::Unknown
    }
    fn extend(
        history: &[Operation],
        done: &mut [bool],
        map: &mut BTreeMap<String, String>,
    ) -> bool {
        if history
            .iter()
            .zip(done.iter())
            .all(|(op, done)| *done || !answered(op))
        {
            return true;
        }
        for i in 0..history.len() {
            let op = &history[i];
            let blocked = (0..history.len())
                .any(|j| j != i && !done[j] && answered(&history[j]) && history[j].ret < op.call);
            let unanswered_read =
                matches!(op.op, KvOp::Get { .. } | KvOp::List { .. }) && !answered(op);
            if done[i] || blocked || unanswered_read {
                continue;
            }
            let before = map.clone();
            match (&op.op, &op.outcome) {
                (KvOp::Get { key }, KvOutcome::Get(seen)) if map.get(key) != seen.as_ref() => {
                    continue
                }
                (KvOp::List { prefix }, KvOutcome::List(found)) => {
                    let mut found = found.clone();
                    found.sort();
                    let present: Vec<(String, String)> = map
                        .iter()
                        .filter(|(key, _)| key.starts_with(prefix.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if present != found {
                        continue;
                    }
                }
                (KvOp::Put { key, value }, _) => {
                    map.insert(key.clone(), value.clone());
                }
                (KvOp::Delete { key }, _) => {
                    map.remove(key);
                }
                (
                    KvOp::Txn {
                        compares,
                        success,
                        failure,
                    },
                    outcome,
                ) => {
                    let holds = compares
                        .iter()
                        .all(|(key, expected)| map.get(key) == expected.as_ref());
                    if *outcome == KvOutcome::Txn(!holds) {
                        continue;
                    }
                    let branch = if holds { success } else { failure };
                    for (key, value) in branch {
                        match value {
                            Some(value) => map.insert(key.clone(), value.clone()),
                            None => map.remove(key),
                        };
                    }
                }
                (KvOp::Cas { key, expected, new }, outcome) => {
                    let holds = map.get(key) == expected.as_ref();
                    match outcome {
                        KvOutcome::Cas(false) if holds => continue,
                        KvOutcome::Cas(true) if !holds => continue,
                        // An unknown one that does not hold is one that did not happen.
                        KvOutcome::Unknown if !holds => {}
                        _ => {
                            if holds {
                                map.insert(key.clone(), new.clone());
                            }
                        }
                    }
                }
                _ => {}
            }
            done[i] = true;
            let found = extend(history, done, map);
            done[i] = false;
            *map = before;
            if found {
                return true;
            }
        }
        false
    }
    extend(
        history,
        &mut vec![false; history.len()],
        &mut BTreeMap::new(),
    )
}

/// `with_cas`: compare-and-sets and listings too.
fn random_small_history(rng: &mut SmallRng, with_cas: bool) -> Vec<Operation> {
    let values = ["a", "b", "c"];
    (0..rng.random_range(1..=7))
        .map(|i| {
            let key = if rng.random_ratio(4, 5) { "x" } else { "y" };
            let call = rng.random_range(0..20);
            let ret = call + rng.random_range(0..10);
            let mut op = match rng.random_range(0..if with_cas { 16 } else { 10 }) {
                0..5 => {
                    let seen = rng.random_range(0..=values.len());
                    get(i, key, values.get(seen).copied(), call, ret)
                }
                5..9 => put(i, key, values[rng.random_range(0..2)], call, ret),
                9 => delete(i, key, call, ret),
                10..14 => {
                    let expected = values.get(rng.random_range(0..=values.len())).copied();
                    let new = values[rng.random_range(0..values.len())];
                    cas(
                        i,
                        key,
                        expected,
                        new,
                        (call, ret),
                        Some(rng.random_bool(0.5)),
                    )
                }
                _ => {
                    let mut found: Vec<(&str, &str)> = Vec::new();
                    for key in ["x", "y"] {
                        if rng.random_bool(0.5) {
                            found.push((key, values[rng.random_range(0..values.len())]));
                        }
                    }
                    list(i, "", &found, call, ret)
                }
            };
            if rng.random_ratio(1, 5) {
                op.outcome = KvOutcome::Unknown;
            }
            op
        })
        .collect()
}

/// Histories over x and y with transactions among gets and puts: compares on one or
/// both keys, writes on either.
fn random_small_history_with_txns(rng: &mut SmallRng) -> Vec<Operation> {
    let values = ["a", "b", "c"];
    let value = |rng: &mut SmallRng| values.get(rng.random_range(0..=values.len())).copied();
    (0..rng.random_range(1..=6))
        .map(|i| {
            let key = if rng.random_bool(0.5) { "x" } else { "y" };
            let call = rng.random_range(0..20);
            let ret = call + rng.random_range(0..10);
            let mut op = match rng.random_range(0..10) {
                0..4 => get(i, key, value(rng), call, ret),
                4..6 => put(i, key, values[rng.random_range(0..values.len())], call, ret),
                _ => {
                    let mut compares = vec![(key, value(rng))];
                    if rng.random_bool(0.5) {
                        compares.push((if key == "x" { "y" } else { "x" }, value(rng)));
                    }
                    let mut success = Vec::new();
                    let mut failure = Vec::new();
                    for key in ["x", "y"] {
                        match rng.random_range(0..3) {
                            0 => success.push((key, value(rng))),
                            1 => failure.push((key, value(rng))),
                            _ => {}
                        }
                    }
                    txn(
                        i,
                        (&compares, &success, &failure),
                        (call, ret),
                        Some(rng.random_bool(0.5)),
                    )
                }
            };
            if rng.random_ratio(1, 5) {
                op.outcome = KvOutcome::Unknown;
            }
            op
        })
        .collect()
}

/// The projection of transactions onto keys is sound: whatever the brute force calls
/// linearizable the checker does, and every violation it reports is one. It is weaker:
/// the share of violations only the joint search sees is printed.
#[test]
fn transactions_are_judged_soundly_against_brute_force() {
    let mut rng = SmallRng::seed_from_u64(11);
    let (mut good, mut caught, mut missed) = (0, 0, 0);
    for _ in 0..20_000 {
        let history = random_small_history_with_txns(&mut rng);
        let expected = brute_force_linearizable(&history);
        match check(&history) {
            Ok(_) if expected => good += 1,
            Ok(_) => missed += 1,
            Err(CheckError::NotLinearizable(violation)) if !expected => {
                assert_evidence_is_a_proof(&violation);
                caught += 1;
            }
            result => panic!("brute force says {expected}, checker says {result:?}: {history:#?}"),
        }
    }
    println!("transactions against brute force: {good} linearizable, {caught} violations caught, {missed} seen only jointly");
    assert!(
        good > 500 && caught > 500,
        "both verdicts exercised: {good} good, {caught} caught"
    );
    assert!(
        caught > 4 * missed,
        "the projection should see most violations: {caught} caught, {missed} missed"
    );
}

#[test]
fn agrees_with_brute_force_on_small_random_histories() {
    agrees_with_brute_force(false, 5_000);
}

#[test]
fn agrees_with_brute_force_with_compare_and_sets_and_listings() {
    agrees_with_brute_force(true, 20_000);
}

fn agrees_with_brute_force(with_cas: bool, histories: usize) {
    let mut rng = SmallRng::seed_from_u64(7);
    let (mut good, mut bad) = (0, 0);
    for _ in 0..histories {
        let history = random_small_history(&mut rng, with_cas);
        let expected = brute_force_linearizable(&history);
        match check(&history) {
            Ok(_) if expected => good += 1,
            Err(CheckError::NotLinearizable(violation)) if !expected => {
                assert_evidence_is_a_proof(&violation);
                bad += 1;
            }
            result => panic!("brute force says {expected}, checker says {result:?}: {history:#?}"),
        }
    }
    println!("brute-force agreement: {good} linearizable, {bad} not");
    assert!(
        good > 500 && bad > 500,
        "both verdicts exercised: {good} good, {bad} bad"
    );
}

// ---- histories generated from a sequential execution ----

struct Shape {
    ops: usize,
    keys: usize,
    clients: usize,
    /// Per cent of requests whose answer is lost, before or after taking effect.
    unknown_percent: u32,
}

/// A history from a sequential map whose operations each take effect at one instant
/// inside their client's interval: linearizable by construction. Written values are
/// unique, so every read names the write it saw.
fn generate(rng: &mut SmallRng, shape: &Shape) -> Vec<Operation> {
    let mut history: Vec<Operation> = Vec::with_capacity(shape.ops);
    let mut map: HashMap<String, String> = HashMap::new();
    // Per client: the request in flight and whether it has taken effect.
    let mut in_flight: Vec<Option<(usize, bool)>> = vec![None; shape.clients];
    let mut time = 0;
    while history.len() < shape.ops || in_flight.iter().any(Option::is_some) {
        // Several events may share an instant, as with a coarse clock.
        if rng.random_ratio(7, 10) {
            time += 1;
        }
        let client = rng.random_range(0..shape.clients);
        match in_flight[client] {
            None if history.len() < shape.ops => {
                let key = format!("k{}", rng.random_range(0..shape.keys));
                let op = match rng.random_range(0..10) {
                    0..5 => KvOp::Get { key },
                    5..9 => KvOp::Put {
                        key,
                        value: format!("v{}", history.len()),
                    },
                    _ => KvOp::Delete { key },
                };
                in_flight[client] = Some((history.len(), false));
                let client = client as u64;
                history.push(Operation {
                    client,
                    op,
                    call: time,
                    ret: time,
                    outcome: KvOutcome::Unknown,
                });
            }
            None => {}
            Some((index, false)) => {
                if rng.random_ratio(shape.unknown_percent, 200) {
                    // Lost before taking effect.
                    in_flight[client] = None;
                    continue;
                }
                let entry = &mut history[index];
                entry.outcome = match &entry.op {
                    KvOp::Get { key } => KvOutcome::Get(map.get(key).cloned()),
                    KvOp::Put { key, value } => {
                        map.insert(key.clone(), value.clone());
                        KvOutcome::Put
                    }
                    KvOp::Delete { key } => {
                        map.remove(key);
                        KvOutcome::Delete
                    }
                    KvOp::Cas { .. } | KvOp::List { .. } | KvOp::Txn { .. } => {
                        unreachable!("not drawn here")
                    }
                };
                in_flight[client] = Some((index, true));
            }
            Some((index, true)) => {
                history[index].ret = time;
                if rng.random_ratio(shape.unknown_percent, 200) {
                    // Took effect, but the answer was lost.
                    history[index].outcome = KvOutcome::Unknown;
                }
                in_flight[client] = None;
            }
        }
    }
    history
}

/// The only value the read at `read` can return in any linearization, when the writes
/// on its key are all answered and totally ordered before it or called after it.
fn forced_value(history: &[Operation], read: usize) -> Option<Option<String>> {
    let (key, call, ret) = (
        history[read].op.key(),
        history[read].call,
        history[read].ret,
    );
    let before: Vec<&Operation> = history
        .iter()
        .filter(|op| op.op.key() == key && !matches!(op.op, KvOp::Get { .. }) && op.call <= ret)
        .collect();
    if before
        .iter()
        .any(|op| op.outcome == KvOutcome::Unknown || op.ret >= call)
    {
        return None;
    }
    let Some(last) = before.iter().max_by_key(|op| op.ret) else {
        return Some(None);
    };
    if before
        .iter()
        .any(|op| !std::ptr::eq(*op, *last) && op.ret >= last.call)
    {
        return None;
    }
    Some(match &last.op {
        KvOp::Put { value, .. } => Some(value.clone()),
        _ => None,
    })
}

fn answered_reads(history: &[Operation]) -> Vec<usize> {
    (0..history.len())
        .filter(|&i| matches!(history[i].outcome, KvOutcome::Get(_)))
        .collect()
}

fn with_read(history: &[Operation], read: usize, seen: Option<String>) -> Vec<Operation> {
    let mut mutated = history.to_vec();
    mutated[read].outcome = KvOutcome::Get(seen);
    mutated
}

#[test]
fn generated_histories_pass_and_mutated_reads_fail() {
    let mut rng = SmallRng::seed_from_u64(42);
    let (mut mutations, mut caught, mut forced, mut fresh) = (0, 0, 0, 0);
    for _ in 0..150 {
        let shape = Shape {
            ops: rng.random_range(20..300),
            keys: rng.random_range(1..5),
            clients: rng.random_range(1..9),
            unknown_percent: rng.random_range(0..20),
        };
        let history = generate(&mut rng, &shape);
        assert_linearizable(&history);

        let reads = answered_reads(&history);
        for _ in 0..reads.len().min(3) {
            let read = reads[rng.random_range(0..reads.len())];
            // A value nobody wrote: always a violation, explained by the read alone.
            let never_written = with_read(&history, read, Some("never-written".into()));
            let violation = violation(&never_written);
            assert_eq!(
                (violation.culprit, evidence_indices(&violation)),
                (read, vec![read]),
                "{violation}"
            );
            fresh += 1;

            // Another value of the same key (or absent): a violation at least whenever
            // the original value was the only possible one.
            let key = history[read].op.key();
            let mut others: Vec<Option<String>> = history
                .iter()
                .filter_map(|op| match &op.op {
                    KvOp::Put { key: k, value } if Some(k.as_str()) == key => {
                        Some(Some(value.clone()))
                    }
                    _ => None,
                })
                .collect();
            others.push(None);
            let KvOutcome::Get(original) = &history[read].outcome else {
                unreachable!()
            };
            others.retain(|value| value != original);
            let other = others[rng.random_range(0..others.len())].clone();
            let mutated = with_read(&history, read, other);
            mutations += 1;
            let is_forced = forced_value(&history, read).is_some();
            match check(&mutated) {
                Err(CheckError::NotLinearizable(violation)) => {
                    assert_evidence_is_a_proof(&violation);
                    // Only this read changed, so no earlier prefix can violate.
                    assert!(
                        mutated[violation.culprit].ret >= history[read].ret,
                        "{violation}"
                    );
                    caught += 1;
                    forced += usize::from(is_forced);
                }
                Ok(_) if !is_forced => {}
                result => panic!("read #{read} had a forced value, yet: {result:?}"),
            }
        }
    }
    println!("never-written reads caught: {fresh}; other-value mutations caught: {caught}/{mutations} ({forced} forced)");
    assert!(forced > 50, "the forced case is exercised: {forced}");
    assert!(
        caught * 2 > mutations,
        "mutations usually fail: {caught}/{mutations}"
    );
}

// ---- size ----

fn timed_check(name: &str, history: &[Operation]) -> Result<(), CheckError> {
    let started = Instant::now();
    let result = check(history);
    let elapsed = started.elapsed();
    match &result {
        Ok(stats) => {
            let steps: u64 = stats.per_key.iter().map(|k| k.steps).sum();
            let max = stats.per_key.iter().map(|k| k.steps).max().unwrap_or(0);
            println!(
                "{name}: linearizable, {} ops ({} unknown writes), {} keys, {steps} steps (max {max} per key) in {elapsed:?}",
                stats.ops, stats.unknown, stats.keys
            );
        }
        Err(error) => println!(
            "{name}: {} in {elapsed:?}",
            error.to_string().lines().next().unwrap_or("")
        ),
    }
    result.map(|_| ())
}

#[test]
fn large_histories_complete() {
    let mut rng = SmallRng::seed_from_u64(5_000);
    let shape = Shape {
        ops: 5_000,
        keys: 10,
        clients: 10,
        unknown_percent: 5,
    };
    let history = generate(&mut rng, &shape);
    timed_check("5000 ops, 10 keys, 10 clients", &history).expect("linearizable");

    // A read of a value never written, near the end: found and explained by itself.
    let reads = answered_reads(&history);
    let read = reads[reads.len() - 10];
    let mutated = with_read(&history, read, Some("never-written".into()));
    let error = timed_check("same, one read mutated", &mutated).expect_err("not linearizable");
    assert!(
        matches!(error, CheckError::NotLinearizable(ref v) if v.culprit == read),
        "{error}"
    );

    // All ten clients on one key: every operation overlaps nine others.
    let contended = Shape {
        ops: 3_000,
        keys: 1,
        clients: 10,
        unknown_percent: 10,
    };
    let history = generate(&mut rng, &contended);
    timed_check("3000 ops, 1 key, 10 clients, 10% unknown", &history).expect("linearizable");
}
