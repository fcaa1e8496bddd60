//! The status view: a node's `Admin.Status` answer as the JSON object that `GET /`
//! returns and the dashboard streams for every member. (Metrics and the health checks
//! read the same `StatusResponse` fields; see [`crate::metrics`], [`crate::health`].)

use serde_json::{json, Value};

use crate::proto::v1::StatusResponse;

/// The JSON `status` object of `GET /`: the original's fields and types, plus
/// `snapshot_index`, `state_digest`, `cluster_id`, `voting`, `state_bytes`, `alarm`,
/// `keys`, `followers`, `quorum_ack_ms`, `proposals_pending`, `reads_total`,
/// `writes_total`, `learners`, `member_ids` and `backup` (docs/api.md). `members` holds the
/// voters, `learners` the learners, in the original's shape.
pub fn status_json(status: StatusResponse) -> Value {
    let followers: serde_json::Map<String, Value> = status
        .followers
        .into_iter()
        .map(|(name, lag)| {
            let lag = json!({
                "lag_entries": lag.lag_entries,
                "lag_ms": lag.lag_ms,
                "last_ack_ms": lag.last_ack_ms,
            });
            (name, lag)
        })
        .collect();
    // The original's shape: name → [peer host, peer port, client host, client port].
    let shape = |members: &std::collections::HashMap<String, crate::proto::v1::Member>| {
        members
            .iter()
            .map(|(name, m)| {
                let addresses = json!([m.peer_host, m.peer_port, m.client_host, m.client_port]);
                (name.clone(), addresses)
            })
            .collect::<serde_json::Map<String, Value>>()
    };
    let member_ids: serde_json::Map<String, Value> = status
        .members
        .iter()
        .chain(&status.learners)
        .map(|(name, m)| (name.clone(), json!(m.id)))
        .collect();
    let backup = status.backup.as_ref().map(|b| {
        json!({
            "dir": b.dir,
            "active": b.active,
            "newest_file": b.newest_file,
            "newest_index": b.newest_index,
            "newest_bytes": b.newest_bytes,
            "newest_age_seconds": b.newest_age_seconds,
            "last_error": b.last_error,
            "max_age_seconds": b.max_age_seconds,
            "overdue": b.overdue,
        })
    });
    let members = shape(&status.members);
    let learners = shape(&status.learners);
    json!({
        "commit_index": status.commit_index,
        "id": status.id,
        "is_leader": status.is_leader,
        "last_applied": status.last_applied,
        "last_log_index": status.last_log_index,
        "last_log_term": status.last_log_term,
        "leader": status.leader,
        "match_index": status.match_index,
        "members": members,
        "learners": learners,
        "member_ids": member_ids,
        "next_index": status.next_index,
        "state": status.state,
        "term": status.term,
        "up": status.up,
        "snapshot_index": status.snapshot_index,
        "state_digest": status.state_digest,
        "voting": status.voting,
        "cluster_id": status.cluster_id,
        "state_bytes": status.state_bytes,
        "alarm": status.alarm,
        "keys": status.keys,
        "followers": followers,
        "quorum_ack_ms": status.quorum_ack_ms,
        "proposals_pending": status.proposals_pending,
        "reads_total": status.reads_total,
        "writes_total": status.writes_total,
        "backup": backup,
    })
}
