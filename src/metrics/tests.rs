use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::proto::v1::FollowerLag;

/// A leader's status with two followers, one of them behind.
fn leader_status() -> StatusResponse {
    StatusResponse {
        id: "server1".into(),
        is_leader: true,
        leader: "server1".into(),
        up: true,
        term: 4,
        commit_index: 120,
        last_applied: 119,
        keys: 7,
        state_bytes: 321,
        proposals_pending: 2,
        followers: HashMap::from([
            (
                "server2".to_string(),
                FollowerLag {
                    lag_entries: 0,
                    lag_ms: 0,
                    last_ack_ms: Some(12),
                },
            ),
            (
                "server3".to_string(),
                FollowerLag {
                    lag_entries: 40,
                    lag_ms: 1500,
                    last_ack_ms: None,
                },
            ),
        ]),
        quorum_ack_ms: Some(12),
        ..StatusResponse::default()
    }
}

/// Touches every metric, so that every family (vectors included) is exported.
fn exercise(metrics: &Metrics) {
    metrics.observe_status(&StatusResponse {
        alarm: "NOSPACE".into(),
        backup: Some(crate::proto::v1::BackupStatus {
            newest_file: "/backups/distraft-1-2.backup".into(),
            newest_age_seconds: 5.0,
            ..Default::default()
        }),
        ..leader_status()
    });
    metrics.backups.with_label_values(&["ok"]).inc();
    metrics.leader_changed(4, "server1");
    metrics.proposals_failed.inc();
    metrics.wal_fsync_seconds.observe(0.001);
    metrics.snapshot_save_seconds.observe(0.02);
    metrics.snapshot_bytes.set(1000);
    metrics
        .peer_round_trip_seconds
        .with_label_values(&["server2"])
        .observe(0.0005);
    metrics.grpc_request(
        "distraft.v1.Kv",
        "Put",
        tonic::Code::Ok,
        Duration::from_millis(2),
    );
    metrics.http_request("/{key}", "POST", 200, Duration::from_millis(3));
    metrics.reads.with_label_values(&["linearizable"]).inc();
    metrics.writes.with_label_values(&["put"]).inc();
}

fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[test]
fn every_exported_metric_is_documented_and_every_documented_one_exported() {
    let metrics = Metrics::new();
    exercise(&metrics);
    let exported = metrics.names();
    let docs = include_str!("../../docs/metrics.md");
    // The rows of the section "Every metric" start with the metric name in backticks.
    let section = docs
        .split("\n## ")
        .find(|section| section.starts_with("Every metric"))
        .expect("docs/metrics.md has a section \"Every metric\"");
    let documented: Vec<String> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_string)
        .collect();
    let undocumented: Vec<&String> = exported
        .iter()
        .filter(|n| !documented.contains(n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "missing from docs/metrics.md: {undocumented:?}"
    );
    let stale: Vec<&String> = documented
        .iter()
        .filter(|n| !exported.contains(n))
        .collect();
    assert!(
        stale.is_empty(),
        "in docs/metrics.md but not exported: {stale:?}"
    );
}

#[test]
fn state_metrics_follow_the_status_and_forget_followers() {
    let metrics = Metrics::new();
    metrics.observe_status(&leader_status());
    let text = metrics.render();
    assert_eq!(value_of(&text, "distraft_server_is_leader"), Some(1.0));
    assert_eq!(value_of(&text, "distraft_server_has_leader"), Some(1.0));
    assert_eq!(
        value_of(&text, "distraft_server_proposals_committed_total"),
        Some(120.0)
    );
    assert_eq!(
        value_of(&text, "distraft_server_proposals_applied_total"),
        Some(119.0)
    );
    assert_eq!(
        value_of(&text, "distraft_server_proposals_pending"),
        Some(2.0)
    );
    assert_eq!(value_of(&text, "distraft_mvcc_keys_total"), Some(7.0));
    assert_eq!(
        value_of(
            &text,
            r#"distraft_replication_follower_lag_entries{follower="server3"}"#
        ),
        Some(40.0)
    );
    assert_eq!(
        value_of(
            &text,
            r#"distraft_replication_follower_lag_seconds{follower="server3"}"#
        ),
        Some(1.5)
    );
    assert_eq!(
        value_of(
            &text,
            r#"distraft_replication_follower_last_ack_seconds{follower="server2"}"#
        ),
        Some(0.012)
    );
    // Never answered: no series rather than a made-up value.
    assert!(!text.contains(r#"distraft_replication_follower_last_ack_seconds{follower="server3"}"#));
    assert_eq!(
        value_of(&text, "distraft_replication_quorum_ack_age_seconds"),
        Some(0.012)
    );

    // Deposed: the follower series and the quorum age go away.
    metrics.observe_status(&StatusResponse {
        id: "server1".into(),
        up: true,
        leader: "server2".into(),
        ..StatusResponse::default()
    });
    let text = metrics.render();
    assert_eq!(value_of(&text, "distraft_server_is_leader"), Some(0.0));
    assert_eq!(value_of(&text, "distraft_server_has_leader"), Some(1.0));
    assert!(!text.contains("distraft_replication_follower_lag_entries{"));
    assert!(!text.contains("distraft_replication_quorum_ack_age_seconds "));
}

#[test]
fn the_timeline_keeps_the_last_changes_in_order() {
    let metrics = Metrics::new();
    for term in 1..=(TIMELINE_LEN as u64 + 5) {
        metrics.leader_changed(term, if term % 2 == 0 { "a" } else { "" });
    }
    let timeline = metrics.timeline();
    assert_eq!(timeline.len(), TIMELINE_LEN);
    assert_eq!(timeline.first().map(|c| c.term), Some(6));
    assert_eq!(
        timeline.last().map(|c| c.term),
        Some(TIMELINE_LEN as u64 + 5)
    );
    assert_eq!(
        value_of(
            &metrics.render(),
            "distraft_server_leader_changes_seen_total"
        ),
        Some(TIMELINE_LEN as f64 + 5.0)
    );
}

#[test]
fn every_family_has_help_and_type() {
    let metrics = Metrics::new();
    exercise(&metrics);
    let text = metrics.render();
    for name in metrics.names() {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} has no TYPE"
        );
    }
    assert!(text.contains(r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="distraft.v1.Kv"} 1"#), "{text}");
    assert!(text.contains("distraft_disk_wal_fsync_duration_seconds_bucket{le="));
}
