//! Versions and conditional writes on a real cluster: every key's answers carry its
//! versions, its ETag and the index they reflect; `If-Match` / `If-None-Match` (HTTP),
//! a `precondition` (gRPC) and `--if-match` / `--if-absent` (CLI) make a write
//! conditional, on whichever node it is sent to.

use distraft::proto::v1::{
    precondition::Must, DeleteRequest, GetRequest, Precondition, PutRequest,
};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tonic::Code;

use crate::harness::{run_cli, Cluster};

/// An answer's status, headers and JSON body.
pub(crate) async fn send(request: reqwest::RequestBuilder) -> (u16, HeaderMap, Value) {
    let response = request.send().await.expect("an answer");
    let code = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.expect("a JSON answer");
    (code, headers, body)
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|value| value.to_str().unwrap_or_default().to_string())
}

fn index_header(headers: &HeaderMap) -> u64 {
    header(headers, "x-distraft-index")
        .and_then(|index| index.parse().ok())
        .expect("X-Distraft-Index")
}

#[tokio::test]
async fn versions_and_conditional_writes_over_http_grpc_and_the_cli() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let http = cluster.http();
    let key_url = |i: usize, key: &str| distraft::cli::key_url(&cluster.url(i), key);
    let post =
        |i: usize, key: &str, value: &str| http.post(key_url(i, key)).form(&[("value", value)]);

    // Created through a follower: its versions, ETag and index.
    let (code, headers, created) = send(post(follower, "cfg", "v1")).await;
    assert_eq!(code, 200, "{created}");
    let first = created["mod_index"].as_u64().expect("mod_index");
    assert_eq!(
        created,
        json!({"ok": true, "key": "cfg", "value": "v1", "create_index": first, "mod_index": first, "version": 1})
    );
    assert_eq!(header(&headers, "etag"), Some(format!("\"{first}\"")));
    assert_eq!(index_header(&headers), first);

    // Every node reads the same versions, as of an index at least as new.
    for i in 0..3 {
        let (code, headers, read) = send(http.get(key_url(i, "cfg"))).await;
        assert_eq!(code, 200, "{read}");
        assert_eq!(
            (read["mod_index"].as_u64(), read["version"].as_u64()),
            (Some(first), Some(1))
        );
        assert_eq!(header(&headers, "etag"), Some(format!("\"{first}\"")));
        assert!(index_header(&headers) >= first, "{headers:?}");
    }

    // Compare-and-set: the right version wins, the stale one is 412 with the key as
    // it is, and changes nothing.
    let etag = format!("\"{first}\"");
    let (code, headers, updated) = send(post(leader, "cfg", "v2").header("if-match", &etag)).await;
    assert_eq!(code, 200, "{updated}");
    let second = updated["mod_index"].as_u64().expect("mod_index");
    assert!(second > first);
    assert_eq!(
        (
            updated["create_index"].as_u64(),
            updated["version"].as_u64()
        ),
        (Some(first), Some(2))
    );
    assert_eq!(header(&headers, "etag"), Some(format!("\"{second}\"")));
    for i in [leader, follower] {
        let (code, headers, refused) =
            send(post(i, "cfg", "stale").header("if-match", &etag)).await;
        assert_eq!(code, 412, "{refused}");
        assert_eq!(refused["ok"], false);
        assert_eq!(
            refused["current"],
            json!({"value": "v2", "create_index": first, "mod_index": second, "version": 2})
        );
        assert_eq!(header(&headers, "etag"), Some(format!("\"{second}\"")));
    }
    let (_, _, read) = send(http.get(key_url(follower, "cfg"))).await;
    assert_eq!(
        (read["value"].as_str(), read["version"].as_u64()),
        (Some("v2"), Some(2))
    );

    // Create only, and "exists" with If-Match: *.
    let (code, _, body) = send(post(follower, "lock", "me").header("if-none-match", "*")).await;
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = send(post(leader, "lock", "you").header("if-none-match", "*")).await;
    assert_eq!(
        (code, body["current"]["value"].clone()),
        (412, json!("me")),
        "{body}"
    );
    let (code, _, body) = send(post(leader, "nothing", "x").header("if-match", "*")).await;
    assert_eq!(
        (code, body["current"].clone()),
        (412, Value::Null),
        "{body}"
    );

    // A conditional delete, then the key is gone: 404 with the index it reflects.
    let (code, _, body) = send(
        http.delete(key_url(follower, "cfg"))
            .header("if-match", &etag),
    )
    .await;
    assert_eq!(code, 412, "{body}");
    let (code, headers, body) = send(
        http.delete(key_url(follower, "cfg"))
            .header("if-match", format!("\"{second}\"")),
    )
    .await;
    assert_eq!(
        (code, body["existed"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let deleted_at = index_header(&headers);
    let (code, headers, body) = send(http.get(key_url(leader, "cfg"))).await;
    assert_eq!(code, 404, "{body}");
    assert!(index_header(&headers) >= deleted_at);

    // Malformed conditions are 400, before anything is written.
    for (name, value) in [
        ("if-match", "12"),
        ("if-match", "W/\"12\""),
        ("if-none-match", "\"3\""),
    ] {
        let (code, _, body) = send(post(leader, "lock", "bad").header(name, value)).await;
        assert_eq!(code, 400, "{name}: {value}: {body}");
    }
    let (_, _, body) = send(http.get(key_url(leader, "lock"))).await;
    assert_eq!(body["value"], "me");

    // gRPC, through a follower (forwarded to the leader) and the leader.
    for i in [follower, leader] {
        let mut kv = cluster.kv(i).await;
        let found = kv
            .get(GetRequest {
                key: "lock".into(),
                stale: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(found.found && found.version == 1 && found.index >= found.mod_index);
        let stale_expectation = Precondition {
            must: Some(Must::ModIndex(found.mod_index + 1_000_000)),
        };
        let refused = kv
            .put(PutRequest {
                key: "lock".into(),
                value: "grpc".into(),
                precondition: Some(stale_expectation),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        let state = distraft::rpc::precondition_failure(&refused).expect("a KeyState");
        assert_eq!(
            (state.found, state.value.as_str(), state.mod_index),
            (true, "me", found.mod_index)
        );
        let empty = kv
            .delete(DeleteRequest {
                key: "lock".into(),
                precondition: Some(Precondition { must: None }),
            })
            .await
            .unwrap_err();
        assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");
        let missing = kv
            .get(GetRequest {
                key: "never".into(),
                stale: true,
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        assert!(
            missing.metadata().get("x-distraft-index").is_some(),
            "{missing:?}"
        );
    }
    let mut kv = cluster.kv(follower).await;
    let (_, _, lock) = send(http.get(key_url(leader, "lock"))).await;
    let put = kv
        .put(PutRequest {
            key: "lock".into(),
            value: "grpc".into(),
            precondition: Some(Precondition {
                must: Some(Must::ModIndex(lock["mod_index"].as_u64().unwrap())),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (put.version, put.create_index),
        (2, lock["create_index"].as_u64().unwrap())
    );

    // The CLI: --if-absent, --if-match, and a failed condition is a failed command.
    let url = cluster.url(follower);
    let (ok, out) = run_cli(&["put", "--url", &url, "cli", "one", "--if-absent"]).await;
    assert!(ok, "{out}");
    let made: Value = serde_json::from_str(out.trim()).expect("the JSON answer");
    let (ok, out) = run_cli(&["put", "--url", &url, "cli", "two", "--if-absent"]).await;
    assert!(!ok && out.contains("412"), "{out}");
    let index = made["mod_index"].to_string();
    let (ok, out) = run_cli(&["put", "--url", &url, "cli", "two", "--if-match", &index]).await;
    assert!(ok, "{out}");
    let (ok, out) = run_cli(&["delete", "--url", &url, "cli", "--if-match", &index]).await;
    assert!(!ok && out.contains("412"), "{out}");
    // Every key is reachable: the CLI goes by /v1/kv/<key>, so `get stop` reads the
    // key `stop` (GET /stop would stop the node).
    let (ok, out) = run_cli(&["put", "--url", &url, "stop", "a key"]).await;
    assert!(ok, "{out}");
    let (ok, out) = run_cli(&["get", "--url", &url, "stop"]).await;
    assert!(ok && out.contains("a key"), "{out}");
    assert_eq!(cluster.status(follower).await.unwrap()["up"], true);
    let (code, _, body) = send(http.get(format!("{}/v1/kv/stop", cluster.url(leader)))).await;
    assert_eq!((code, body["value"].clone()), (200, json!("a key")));
    let (ok, out) = run_cli(&[
        "put",
        "--url",
        &url,
        "cli",
        "x",
        "--if-absent",
        "--if-match",
        "1",
    ])
    .await;
    assert!(!ok && out.contains("cannot be used with"), "{out}");
}

/// Transactions on a real cluster: the branch the comparisons choose is written whole,
/// through any node, over HTTP and gRPC; bad transactions are refused before anything
/// is written.
#[tokio::test]
async fn transactions_compare_and_write_atomically() {
    use distraft::proto::v1::{compare::Target, txn_op::Op, Compare, TxnOp, TxnPut, TxnRequest};

    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let http = cluster.http();
    let txn_url = |i: usize| format!("{}/v1/txn", cluster.url(i));
    let (code, created) = cluster.put(leader, "from", "100").await;
    assert_eq!(code, 200, "{created}");
    let from_index = created["mod_index"].as_u64().unwrap();

    // A transfer: both keys or neither. Through a follower.
    let transfer = json!({
        "compare": [{"key": "from", "mod_index": from_index}, {"key": "to", "version": 0}],
        "success": [{"put": {"key": "from", "value": "60"}}, {"put": {"key": "to", "value": "40"}}],
        "failure": [{"put": {"key": "conflicts", "value": "1"}}],
    });
    let (code, headers, done) = send(http.post(txn_url(follower)).json(&transfer)).await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["succeeded"], true, "{done}");
    let index = done["index"].as_u64().unwrap();
    assert_eq!(index_header(&headers), index);
    assert_eq!(
        done["results"],
        json!([
            {"key": "from", "create_index": from_index, "mod_index": index, "version": 2},
            {"key": "to", "create_index": index, "mod_index": index, "version": 1},
        ])
    );
    for i in 0..3 {
        assert_eq!(cluster.get(i, "to").await.1["value"], "40");
        assert_eq!(cluster.get(i, "from").await.1["mod_index"], index);
    }
    // The same again: its comparisons no longer hold, so only the failure branch.
    let (code, _, again) = send(http.post(txn_url(leader)).json(&transfer)).await;
    assert_eq!(
        (code, again["succeeded"].clone()),
        (200, json!(false)),
        "{again}"
    );
    assert_eq!(cluster.get(follower, "from").await.1["value"], "60");
    assert_eq!(cluster.get(follower, "conflicts").await.1["value"], "1");

    // Bad transactions: 400, nothing written.
    let writes_twice = json!({"success": [
        {"put": {"key": "x", "value": "1"}}, {"delete": {"key": "x"}}
    ]});
    let too_many: Vec<Value> = (0..65)
        .map(|i| json!({"put": {"key": format!("k{i}"), "value": "v"}}))
        .collect();
    for bad in [
        writes_twice,
        json!({"success": too_many}),
        json!({"compare": [{"key": "a", "value": "1", "version": 1}]}),
        json!({"compare": [{"key": "a"}]}),
        json!({"success": [{"put": {"key": "a", "value": "1"}, "delete": {"key": "b"}}]}),
        json!({"success": [{"put": {"key": "", "value": "1"}}]}),
        json!({"success": [{"put": {"key": "a", "value": ""}}]}),
        json!({"unknown": []}),
    ] {
        let (code, _, body) = send(http.post(txn_url(leader)).json(&bad)).await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
    let (code, _, body) = send(http.post(txn_url(leader)).body("not json")).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(cluster.get(leader, "x").await.0, 404);
    assert_eq!(cluster.get(leader, "k0").await.0, 404);

    // gRPC, through a follower: compare on the value.
    let mut kv = cluster.kv(follower).await;
    let put = |key: &str, value: &str| TxnOp {
        op: Some(Op::Put(TxnPut {
            key: key.into(),
            value: value.into(),
        })),
    };
    let answer = kv
        .txn(TxnRequest {
            compare: vec![Compare {
                key: "to".into(),
                target: Some(Target::Value("40".into())),
            }],
            success: vec![put("to", "41"), put("audit", "moved one")],
            failure: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.succeeded);
    assert_eq!(answer.results.len(), 2);
    assert_eq!(
        (answer.results[0].version, answer.results[1].version),
        (2, 1)
    );
    let refused = kv
        .txn(TxnRequest {
            success: vec![put("a", "1"), put("a", "2")],
            ..TxnRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}
