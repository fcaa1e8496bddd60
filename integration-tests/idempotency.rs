//! Exactly-once retries on a real cluster: a write sent again with the same
//! `Idempotency-Key` (HTTP) / `idempotency-key` metadata (gRPC) gets its first outcome,
//! marked `Idempotent-Replayed: true`, on any node, across a leadership transfer and a
//! restart of every node (the table comes back from the snapshot and the log); the same
//! key with another request is 422 / ALREADY_EXISTS; a malformed key is 400.

use distraft::proto::v1::{self as pb, PutRequest};
use reqwest::header::HeaderMap;
use serde_json::json;
use tonic::Code;

use crate::harness::{run_cli, Cluster};
use crate::versions::send;

fn replayed(headers: &HeaderMap) -> bool {
    headers
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true")
}

#[tokio::test]
async fn retries_with_the_same_key_apply_once_on_any_node() {
    // A small snapshot threshold, so that the table is also restored from snapshots.
    let cluster = Cluster::start_with(3, &[("DISTRAFT_SNAPSHOT_THRESHOLD", "20")]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let http = cluster.http();
    let url = |i: usize, key: &str| distraft::cli::kv_url(&cluster.url(i), key);
    let post = |i: usize, key: &str, value: &str, idempotency_key: &str| {
        http.post(url(i, key))
            .form(&[("value", value)])
            .header("idempotency-key", idempotency_key)
    };

    // A create-only write through a follower, then its retry at the leader: the retry
    // is not refused as "exists" (412) but answered with the first outcome.
    let create = |i: usize| post(i, "lock", "me", "create-1").header("if-none-match", "*");
    let (code, headers, first) = send(create(follower)).await;
    assert_eq!(code, 200, "{first}");
    assert!(!replayed(&headers));
    let (code, headers, again) = send(create(leader)).await;
    assert_eq!(code, 200, "{again}");
    assert!(replayed(&headers), "{headers:?}");
    assert_eq!(again, first);
    assert_eq!(
        headers.get("etag").and_then(|v| v.to_str().ok()),
        Some(format!("\"{}\"", first["mod_index"]).as_str())
    );

    // A later write is not undone by a late retry of an earlier one.
    let (code, _, _) = send(post(leader, "cfg", "a", "write-a")).await;
    assert_eq!(code, 200);
    let (code, _, _) = send(post(leader, "cfg", "b", "write-b")).await;
    assert_eq!(code, 200);
    let (code, headers, _) = send(post(follower, "cfg", "a", "write-a")).await;
    assert_eq!(code, 200);
    assert!(replayed(&headers));
    assert_eq!(cluster.get(leader, "cfg").await.1["value"], "b");

    // The same key with another request: 422, nothing written.
    let (code, _, refused) = send(post(leader, "cfg", "c", "write-a")).await;
    assert_eq!(code, 422, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or("")
            .contains("idempotency key"),
        "{refused}"
    );
    assert_eq!(cluster.get(leader, "cfg").await.1["value"], "b");

    // Malformed keys: 400.
    for bad in ["", "\"\"", &"x".repeat(256), "two words"] {
        let (code, _, body) = send(post(leader, "cfg", "d", bad)).await;
        assert_eq!(code, 400, "key {bad:?}: {body}");
    }

    // A failed compare-and-set is an outcome too: its retry is the same 412, replayed.
    let stale = post(leader, "cfg", "e", "cas-1").header("if-match", "\"1\"");
    let (code, headers, failed) = send(stale).await;
    assert_eq!(code, 412, "{failed}");
    assert!(!replayed(&headers));
    let stale = post(follower, "cfg", "e", "cas-1").header("if-match", "\"1\"");
    let (code, headers, again) = send(stale).await;
    assert_eq!(code, 412, "{again}");
    assert!(replayed(&headers));
    assert_eq!(again["current"], failed["current"]);

    // Deletes and transactions.
    let delete = |i: usize| {
        http.delete(url(i, "lock"))
            .header("idempotency-key", "delete-1")
    };
    let (code, _, deleted) = send(delete(leader)).await;
    assert_eq!((code, deleted["existed"].as_bool()), (200, Some(true)));
    let (code, headers, again) = send(delete(follower)).await;
    assert_eq!((code, again["existed"].as_bool()), (200, Some(true)));
    assert!(replayed(&headers));
    let txn_body = json!({
        "compare": [{"key": "n", "version": 0}],
        "success": [{"put": {"key": "n", "value": "1"}}],
        "failure": [{"put": {"key": "n", "value": "conflict"}}],
    });
    let txn = |i: usize| {
        http.post(format!("{}/v1/txn", cluster.url(i)))
            .json(&txn_body)
            .header("idempotency-key", "txn-1")
    };
    let (code, _, first_txn) = send(txn(follower)).await;
    assert_eq!((code, first_txn["succeeded"].as_bool()), (200, Some(true)));
    let (code, headers, again) = send(txn(leader)).await;
    assert_eq!(code, 200);
    assert!(replayed(&headers));
    assert_eq!(again, first_txn);
    assert_eq!(cluster.get(leader, "n").await.1["value"], "1");

    // gRPC: the metadata, the mark on the answer, ALREADY_EXISTS for another request.
    let mut kv = cluster.kv(follower).await;
    let put = |value: &str| {
        let mut request = tonic::Request::new(PutRequest {
            key: "g".into(),
            value: value.into(),
            precondition: None,
        });
        request
            .metadata_mut()
            .insert("idempotency-key", "grpc-1".parse().unwrap());
        request
    };
    let first_grpc = kv.put(put("1")).await.expect("put");
    assert!(first_grpc.metadata().get("idempotent-replayed").is_none());
    let again = kv.put(put("1")).await.expect("retry");
    assert_eq!(
        again
            .metadata()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(again.into_inner(), first_grpc.into_inner());
    let status = kv.put(put("2")).await.expect_err("another request");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    // Across a leadership transfer and a restart of every node: the table is state.
    let transfer = http.post(format!("{}/cluster/leader", cluster.url(leader)));
    let (code, _, moved) = send(transfer).await;
    assert_eq!(code, 200, "{moved}");
    let mut cluster = cluster;
    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.restart(i);
    }
    let leader = cluster.wait_for_leader().await;
    let http = cluster.http();
    let create = http
        .post(distraft::cli::kv_url(&cluster.url(leader), "lock"))
        .form(&[("value", "me")])
        .header("idempotency-key", "create-1")
        .header("if-none-match", "*");
    let (code, headers, again) = send(create).await;
    assert_eq!(code, 200, "{again}");
    assert!(replayed(&headers));
    assert_eq!(again, first);
    let mut kv = cluster.kv(leader).await;
    let mut request = tonic::Request::new(PutRequest {
        key: "g".into(),
        value: "1".into(),
        precondition: None,
    });
    request
        .metadata_mut()
        .insert("idempotency-key", "grpc-1".parse().unwrap());
    let again = kv.put(request).await.expect("retry after restart");
    assert!(again.metadata().get("idempotent-replayed").is_some());
    let _: pb::PutResponse = again.into_inner();
}

#[tokio::test]
async fn the_cli_sends_a_key_and_a_retry_with_it_is_replayed() {
    let cluster = Cluster::start(1).await;
    cluster.wait_for_leader().await;
    let url = cluster.url(0);
    let put = [
        "put",
        "--url",
        &url,
        "--idempotency-key",
        "cli-1",
        "k",
        "v1",
    ];
    let (ok, first) = run_cli(&put).await;
    assert!(ok, "{first}");
    assert!(!first.contains("applied already"), "{first}");
    let (ok, again) = run_cli(&put).await;
    assert!(ok, "{again}");
    assert!(again.contains("applied already"), "{again}");
    // Another value under the key: refused, and the exit status says so.
    let other = [
        "put",
        "--url",
        &url,
        "--idempotency-key",
        "cli-1",
        "k",
        "v2",
    ];
    let (ok, out) = run_cli(&other).await;
    assert!(!ok && out.contains("422"), "{out}");
    // Without the flag, every write gets a new key: both apply.
    for value in ["x", "y"] {
        let (ok, out) = run_cli(&["put", "--url", &url, "k", value]).await;
        assert!(ok && !out.contains("applied already"), "{out}");
    }
    assert_eq!(cluster.get(0, "k").await.1["value"], "y");

    // A transaction, as the README writes it: the first succeeds, a second (a new
    // key) takes the failure branch; its retry with the first's key is the first's.
    let txn = r#"{"compare": [{"key": "to", "version": 0}], "success": [{"put": {"key": "to", "value": "40"}}]}"#;
    let first = ["txn", "--url", &url, "--idempotency-key", "txn-1", txn];
    let (ok, out) = run_cli(&first).await;
    assert!(ok && out.contains(r#""succeeded":true"#), "{out}");
    let (ok, out) = run_cli(&["txn", "--url", &url, txn]).await;
    assert!(ok && out.contains(r#""succeeded":false"#), "{out}");
    let (ok, out) = run_cli(&first).await;
    assert!(
        ok && out.contains(r#""succeeded":true"#) && out.contains("applied already"),
        "{out}"
    );
    let (ok, out) = run_cli(&["txn", "--url", &url, "{not json"]).await;
    assert!(!ok && out.contains("not JSON"), "{out}");
    let (ok, out) = run_cli(&["txn", "--url", &url, r#"{"compare": 5}"#]).await;
    assert!(!ok && out.contains("400"), "{out}");
}
