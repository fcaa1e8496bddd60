//! The hub on its own: history, resync, overflow, matching, order.

use super::*;
use crate::kv::{Change, Kv};

fn limits() -> WatchLimits {
    WatchLimits {
        history_events: 10,
        history_bytes: 1 << 20,
        max_watchers: 4,
        buffer: 8,
        resync_keys: 5,
        resync_bytes: 1 << 20,
    }
}

fn put(key: &str, value: &str) -> Change {
    Change {
        key: key.to_string(),
        value: Some(value.to_string()),
        versions: Versions::default(),
    }
}

fn delete(key: &str) -> Change {
    Change {
        key: key.to_string(),
        value: None,
        versions: Versions::default(),
    }
}

fn key(k: &str) -> Selector {
    Selector::Key(k.to_string())
}

fn prefix(p: &str) -> Selector {
    Selector::Prefix(p.to_string())
}

fn watch(hub: &mut Hub, kv: &Kv, applied: u64, selector: Selector, start: Option<u64>) -> Watch {
    hub.register(WatchRequest { selector, start }, kv, applied)
        .expect("registered")
}

/// Every message waiting, in order.
fn drain(watch: &mut Watch) -> Vec<WatchMessage> {
    let mut messages = Vec::new();
    while let Ok(Some(message)) = watch.try_next() {
        messages.push(message);
    }
    messages
}

/// The (index, key, value) of every change waiting, skipping progress messages.
fn changes(watch: &mut Watch) -> Vec<(u64, String, Option<String>)> {
    drain(watch)
        .into_iter()
        .flat_map(|message| match message {
            WatchMessage::Events { events, .. } => events
                .iter()
                .map(|e| (e.index, e.key.clone(), e.value.clone()))
                .collect(),
            WatchMessage::Progress { .. } => Vec::new(),
            WatchMessage::Resync { .. } => panic!("unexpected resync: {message:?}"),
        })
        .collect()
}

fn change(index: u64, key: &str, value: Option<&str>) -> (u64, String, Option<String>) {
    (index, key.to_string(), value.map(str::to_string))
}

/// A state machine with `keys` put at indexes 1.. (recording nothing).
fn kv_with(keys: &[(&str, &str)]) -> Kv {
    let mut kv = Kv::new();
    for (i, (k, v)) in keys.iter().enumerate() {
        let applied = kv.apply(i as u64 + 1, &Kv::put_command(k.to_string(), v.to_string()));
        assert!(matches!(applied, crate::kv::Applied::Put { .. }));
    }
    kv
}

#[test]
fn a_watch_from_now_sees_later_changes_of_its_key_or_prefix_only() {
    let kv = Kv::new();
    let mut hub = Hub::new(limits(), 0);
    let mut exact = watch(&mut hub, &kv, 0, key("a/b"), None);
    let mut under = watch(&mut hub, &kv, 0, prefix("a/"), None);
    let mut all = watch(&mut hub, &kv, 0, prefix(""), None);
    assert_eq!(drain(&mut exact), vec![WatchMessage::Progress { index: 0 }]);
    drain(&mut under);
    drain(&mut all);
    hub.applied(1, vec![put("a/b", "1")]);
    hub.applied(2, vec![put("a/bc", "2")]);
    hub.applied(3, vec![put("b", "3")]);
    hub.applied(4, vec![delete("a/b")]);
    assert_eq!(
        changes(&mut exact),
        vec![change(1, "a/b", Some("1")), change(4, "a/b", None)]
    );
    assert_eq!(
        changes(&mut under),
        vec![
            change(1, "a/b", Some("1")),
            change(2, "a/bc", Some("2")),
            change(4, "a/b", None)
        ]
    );
    assert_eq!(changes(&mut all).len(), 4);
    assert_eq!(exact.resume_index(), 5);
}

#[test]
fn a_transaction_comes_as_one_message_and_multibyte_keys_match_by_prefix() {
    let kv = Kv::new();
    let mut hub = Hub::new(limits(), 0);
    let mut w = watch(&mut hub, &kv, 0, prefix("é"), None);
    drain(&mut w);
    hub.applied(1, vec![put("éa", "1"), put("x", "2"), delete("éb")]);
    let messages = drain(&mut w);
    assert_eq!(messages.len(), 1, "{messages:?}");
    let WatchMessage::Events { index, events } = &messages[0] else {
        panic!("{messages:?}");
    };
    assert_eq!(*index, 1);
    let keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["éa", "éb"]);
}

#[test]
fn a_watch_from_an_index_in_the_history_gets_the_history_then_live_changes() {
    let kv = Kv::new();
    let mut hub = Hub::new(limits(), 0);
    for i in 1..=6 {
        hub.applied(i, vec![put(&format!("k{}", i % 2), &i.to_string())]);
    }
    let mut w = watch(&mut hub, &kv, 6, key("k1"), Some(2));
    hub.applied(7, vec![put("k1", "7")]);
    assert_eq!(
        changes(&mut w),
        vec![
            change(3, "k1", Some("3")),
            change(5, "k1", Some("5")),
            change(7, "k1", Some("7"))
        ]
    );
}

#[test]
fn a_watch_from_before_the_history_gets_a_resync_then_the_changes_after_it() {
    let kv = kv_with(&[("p/a", "1"), ("p/b", "2"), ("q", "3")]);
    // The node restarted from a snapshot at 3: its history starts at 4.
    let mut hub = Hub::new(limits(), 3);
    assert_eq!(hub.history_start(), 4);
    let mut w = watch(&mut hub, &kv, 3, prefix("p/"), Some(1));
    let messages = drain(&mut w);
    let WatchMessage::Resync { index, keys, more } = &messages[0] else {
        panic!("{messages:?}");
    };
    assert_eq!((*index, *more), (3, false));
    let keys: Vec<(&str, &str)> = keys
        .iter()
        .map(|l| (l.key.as_str(), l.value.as_str()))
        .collect();
    assert_eq!(keys, [("p/a", "1"), ("p/b", "2")]);
    assert_eq!(messages[1], WatchMessage::Progress { index: 3 });
    assert_eq!(w.resume_index(), 4);
    hub.applied(4, vec![put("p/c", "4")]);
    assert_eq!(changes(&mut w), vec![change(4, "p/c", Some("4"))]);
}

#[test]
fn the_history_evicts_whole_entries_and_moves_its_start() {
    let kv = Kv::new();
    let mut hub = Hub::new(limits(), 0);
    // 12 changes in 6 entries: the history keeps 10, so entry 1 goes.
    for i in 1..=6 {
        hub.applied(i, vec![put("a", "x"), put("b", "y")]);
    }
    assert_eq!(hub.history_start(), 2);
    let mut from_history = watch(&mut hub, &kv, 6, key("a"), Some(2));
    assert_eq!(changes(&mut from_history).len(), 5);
    let mut resynced = watch(&mut hub, &kv, 6, key("a"), Some(1));
    assert!(matches!(
        drain(&mut resynced)[0],
        WatchMessage::Resync { .. }
    ));
}

#[test]
fn a_resync_larger_than_its_bound_is_refused() {
    let kv = kv_with(&[
        ("k1", "v"),
        ("k2", "v"),
        ("k3", "v"),
        ("k4", "v"),
        ("k5", "v"),
        ("k6", "v"),
    ]);
    let mut hub = Hub::new(limits(), 6);
    let refused = hub.register(
        WatchRequest {
            selector: prefix("k"),
            start: Some(1),
        },
        &kv,
        6,
    );
    assert!(matches!(refused, Err(WatchError::ResyncTooLarge { .. })));
    // From now, no resync is needed.
    watch(&mut hub, &kv, 6, prefix("k"), None);
}

#[tokio::test]
async fn a_watcher_that_falls_behind_is_dropped_and_told_where_to_resume() {
    let kv = Kv::new();
    let mut hub = Hub::new(
        WatchLimits {
            history_events: 100,
            ..limits()
        },
        0,
    );
    let mut slow = watch(&mut hub, &kv, 0, key("k"), None);
    let mut other = watch(&mut hub, &kv, 0, key("other"), None);
    drain(&mut other);
    // The buffer holds 8 messages: the progress message and 7 changes.
    for i in 1..=20 {
        hub.applied(i, vec![put("k", &i.to_string())]);
    }
    assert_eq!(hub.len(), 1, "the slow watcher is gone, the other stays");
    let mut seen = 0;
    let ended = loop {
        match slow.next().await {
            Ok(WatchMessage::Events { .. }) => seen += 1,
            Ok(_) => {}
            Err(ended) => break ended,
        }
    };
    assert_eq!(seen, 7);
    assert_eq!(ended, Ended::TooSlow { resume: 8 });
    // Resuming from there misses nothing (the history holds the rest).
    let mut resumed = watch(&mut hub, &kv, 20, key("k"), Some(8));
    let indexes: Vec<u64> = changes(&mut resumed).iter().map(|c| c.0).collect();
    assert_eq!(indexes, (8..=20).collect::<Vec<u64>>());
}

#[test]
fn the_watcher_limit_holds_and_closed_watchers_make_room() {
    let kv = Kv::new();
    let mut hub = Hub::new(limits(), 0);
    let mut held: Vec<Watch> = (0..4)
        .map(|_| watch(&mut hub, &kv, 0, key("k"), None))
        .collect();
    let refused = hub.register(
        WatchRequest {
            selector: key("k"),
            start: None,
        },
        &kv,
        0,
    );
    assert_eq!(
        refused.err(),
        Some(WatchError::TooManyWatchers { limit: 4 })
    );
    held.pop();
    watch(&mut hub, &kv, 0, key("k"), None);
    assert_eq!(hub.len(), 4);
}

#[test]
fn a_snapshot_install_resyncs_the_watchers_behind_it() {
    let mut hub = Hub::new(limits(), 0);
    let empty = Kv::new();
    let mut w = watch(&mut hub, &empty, 0, prefix("p/"), None);
    drain(&mut w);
    hub.applied(1, vec![put("p/a", "1")]);
    assert_eq!(changes(&mut w), vec![change(1, "p/a", Some("1"))]);
    // The snapshot at 3 has p/b (p/a deleted, q written in between).
    let mut kv = kv_with(&[("p/b", "2"), ("q", "3")]);
    kv.record_changes();
    hub.jumped(&kv, 3);
    assert_eq!(hub.history_start(), 4);
    let messages = drain(&mut w);
    let WatchMessage::Resync {
        index: 3,
        keys,
        more: false,
    } = &messages[0]
    else {
        panic!("{messages:?}");
    };
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key, "p/b");
    assert_eq!(messages[1], WatchMessage::Progress { index: 3 });
    hub.applied(4, vec![put("p/c", "4")]);
    assert_eq!(changes(&mut w), vec![change(4, "p/c", Some("4"))]);
}

#[test]
fn a_restart_replays_changes_the_watchers_already_saw_without_repeating_them() {
    let kv = Kv::new();
    let mut hub = Hub::new(limits(), 0);
    let mut w = watch(&mut hub, &kv, 0, key("k"), None);
    drain(&mut w);
    for i in 1..=3 {
        hub.applied(i, vec![put("k", &i.to_string())]);
    }
    assert_eq!(changes(&mut w).len(), 3);
    // Back to a snapshot at 1; the log replays 2 and 3, then 4 is new.
    hub.restarted(1);
    for i in 2..=4 {
        hub.applied(i, vec![put("k", &i.to_string())]);
    }
    assert_eq!(changes(&mut w), vec![change(4, "k", Some("4"))]);
    // The history was rebuilt by the replay.
    let mut late = watch(&mut hub, &kv, 4, key("k"), Some(2));
    assert_eq!(changes(&mut late).len(), 3);
}
