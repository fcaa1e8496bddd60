//! The original README walkthrough, every node answering, and every kind of bad input.

use crate::harness::Cluster;
use serde_json::{json, Value};

/// The fields and JSON types of the original README's `GET /`.
fn assert_original_status_shape(status: &Value, cluster: &Cluster, i: usize) {
    for field in [
        "commit_index",
        "last_applied",
        "last_log_index",
        "last_log_term",
        "term",
    ] {
        assert!(status[field].is_u64(), "{field} is not a number: {status}");
    }
    assert_eq!(status["id"], cluster.nodes[i].name.as_str());
    assert!(status["is_leader"].is_boolean(), "{status}");
    assert!(status["leader"].is_string(), "{status}");
    assert!(status["match_index"].is_object(), "{status}");
    assert!(status["next_index"].is_object(), "{status}");
    let state = status["state"].as_str().unwrap_or_default();
    assert!(
        ["Follower", "Candidate", "Leader"].contains(&state),
        "{status}"
    );
    assert_eq!(status["up"], true);
    let members = status["members"].as_object().expect("members is an object");
    assert_eq!(members.len(), cluster.nodes.len());
    for node in &cluster.nodes {
        assert_eq!(
            members[&node.name],
            json!(["127.0.0.1", node.raft_port, "127.0.0.1", node.http_port]),
            "{status}"
        );
    }
}

/// An answer about a key without the versions (and index) this version adds to it:
/// the original answer, field for field.
fn original(answer: (u16, Value)) -> (u16, Value) {
    let (code, mut body) = answer;
    if let Some(fields) = body.as_object_mut() {
        for added in ["create_index", "mod_index", "version", "index"] {
            fields.remove(added);
        }
    }
    (code, body)
}

/// The original README, step by step, on a cluster of `size`.
async fn readme_walkthrough(size: usize) {
    let cluster = Cluster::start(size).await;
    let leader = cluster.wait_for_leader().await;
    for i in 0..size {
        let (code, body) = cluster.get_path(i, "/").await;
        assert_eq!(code, 200);
        assert_eq!(body["ok"], true);
        assert_original_status_shape(&body["status"], &cluster, i);
    }
    let leader_status = cluster.status(leader).await.unwrap();
    assert_eq!(leader_status["state"], "Leader");
    assert_eq!(
        leader_status["match_index"].as_object().map(|m| m.len()),
        Some(size - 1),
        "the leader tracks every follower: {leader_status}"
    );

    // Set through a follower, read through every node.
    let follower = (leader + 1) % size;
    let (code, put) = cluster.put(follower, "foo", "bar").await;
    assert_eq!(
        original((code, put.clone())),
        (200, json!({"ok": true, "key": "foo", "value": "bar"}))
    );
    assert_eq!(put["version"], 1, "{put}");
    for i in 0..size {
        let (code, body) = cluster.get(i, "foo").await;
        assert_eq!(
            original((code, body.clone())),
            (200, json!({"ok": true, "key": "foo", "value": "bar"}))
        );
        for field in ["create_index", "mod_index", "version"] {
            assert_eq!(body[field], put[field], "{field}: {body} after {put}");
        }
    }

    // Stop a follower: it still answers GET / (up: false) but no key requests.
    assert_eq!(
        cluster.get_path(follower, "/stop").await,
        (200, json!({"ok": true}))
    );
    assert_eq!(cluster.status(follower).await.unwrap()["up"], false);
    let (code, body) = cluster.get(follower, "foo").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["ok"], false);
    let (code, _) = cluster.put(follower, "foo", "nope").await;
    assert_eq!(code, 503);
    // The others go on without it.
    let other = (leader + 2) % size;
    assert_eq!(cluster.put(other, "foo", "baz").await.0, 200);

    // Start it again: it rejoins and catches up.
    assert_eq!(
        cluster.get_path(follower, "/start").await,
        (200, json!({"ok": true}))
    );
    assert_eq!(cluster.status(follower).await.unwrap()["up"], true);
    cluster
        .assert_value_eventually(follower, "foo", "baz")
        .await;
    let caught_up = crate::harness::eventually(crate::harness::CONVERGE, || async {
        match cluster.get_stale(follower, "foo").await {
            (200, body) if body["value"] == "baz" => Ok(()),
            answer => Err(format!("{answer:?}")),
        }
    })
    .await;
    caught_up.expect("the restarted node's own state machine caught up");
}

#[tokio::test]
async fn readme_walkthrough_on_3_nodes() {
    readme_walkthrough(3).await;
}

#[tokio::test]
async fn readme_walkthrough_on_5_nodes() {
    readme_walkthrough(5).await;
}

#[tokio::test]
async fn writes_and_reads_through_every_node() {
    let cluster = Cluster::start(3).await;
    let keys = [
        "plain",
        "with space",
        "ünïcödé ключ 鍵",
        "a/slash",
        "100%+&=?#",
    ];
    for (i, key) in keys.iter().enumerate() {
        let node = i % 3;
        let value = format!("value of {key} = {i} & more");
        let answer = cluster.put(node, key, &value).await;
        assert_eq!(
            original(answer),
            (200, json!({"ok": true, "key": key, "value": value}))
        );
    }
    for node in 0..3 {
        for (i, key) in keys.iter().enumerate() {
            let value = format!("value of {key} = {i} & more");
            let answer = cluster.get(node, key).await;
            assert_eq!(
                original(answer),
                (200, json!({"ok": true, "key": key, "value": value}))
            );
        }
    }
    // Delete through one node, gone everywhere; deleting again is fine.
    let answer = cluster.delete(1, "plain").await;
    assert_eq!(
        original(answer),
        (200, json!({"ok": true, "key": "plain", "existed": true}))
    );
    for node in 0..3 {
        let (code, body) = cluster.get(node, "plain").await;
        assert_eq!(code, 404, "{body}");
        assert_eq!(body["ok"], false);
    }
    let (code, body) = cluster.delete(2, "plain").await;
    assert_eq!((code, body["existed"].clone()), (200, json!(false)));
    // A URL typed by hand, as in curl: a raw space-escaped and a '+' key.
    let (code, body) = cluster.get_path(0, "/with%20space").await;
    assert_eq!((code, body["key"].clone()), (200, json!("with space")));
}

#[tokio::test]
async fn bad_input_is_rejected_and_writes_nothing() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let url = cluster.url(0);
    let http = cluster.http();
    let before = cluster.status(leader).await.unwrap()["last_log_index"].clone();

    let form = |path: &str, body: String| {
        http.post(format!("{url}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let max_key = 4096;
    let max_value = 1024 * 1024;
    let cases = vec![
        ("no body", form("/k1", String::new()), 400),
        ("empty value", form("/k1", "value=".into()), 400),
        ("no value field", form("/k1", "other=1".into()), 400),
        ("bad escape in value", form("/k1", "value=%zz".into()), 400),
        (
            "invalid UTF-8 in value",
            form("/k1", "value=%FF%FE".into()),
            400,
        ),
        ("bad escape in key", form("/k%zz", "value=v".into()), 400),
        ("invalid UTF-8 in key", form("/k%FF", "value=v".into()), 400),
        (
            "a JSON body that is no object",
            http.post(format!("{url}/k1"))
                .header("content-type", "application/json")
                .body(r#"["v"]"#),
            400,
        ),
        (
            "a body that is neither form nor JSON",
            http.post(format!("{url}/k1"))
                .header("content-type", "text/plain")
                .body("v"),
            400,
        ),
        (
            "key too large",
            form(&format!("/{}", "k".repeat(max_key + 1)), "value=v".into()),
            413,
        ),
        (
            "value too large",
            form("/k1", format!("value={}", "v".repeat(max_value + 1))),
            413,
        ),
        (
            "body too large",
            form("/k1", "v".repeat(4 * max_value)),
            413,
        ),
        ("unknown route", http.get(format!("{url}/a/b")), 404),
        ("method not allowed", http.put(format!("{url}/k1")), 405),
        (
            "never written",
            http.get(format!("{url}/never-written")),
            404,
        ),
        (
            "headers too large",
            http.get(format!("{url}/"))
                .header("x-filler", "f".repeat(100 * 1024)),
            431,
        ),
    ];
    for (what, request, expected) in cases {
        let (code, body) = cluster.answer(request).await;
        assert_eq!(code, expected, "{what}: {body}");
        assert_eq!(body["ok"], false, "{what}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
    }
    // Beyond hyper's own limits hyper answers by itself, before any route: those
    // answers are JSON too. (Raw HTTP: client libraries refuse to send such requests.)
    let port = cluster.nodes[0].http_port;
    let huge_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "k".repeat(70 * 1024));
    let huge_head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nx-filler: {}\r\n\r\n",
        "f".repeat(600 * 1024)
    );
    let raw_cases = [
        ("URI over 64 KiB", huge_uri, "414"),
        ("head over hyper's buffer", huge_head, "431"),
        ("malformed request", "NOT HTTP\r\n\r\n".to_string(), "400"),
    ];
    for (what, request, expected) in raw_cases {
        let answer = raw_http(port, &request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {expected} ")),
            "{what}: {answer:.200}"
        );
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let body: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {answer:.300}"));
        assert_eq!(body["ok"], false, "{what}: {body}");
    }

    // Nothing above reached the log, and the node still serves.
    let after = cluster.status(leader).await.unwrap()["last_log_index"].clone();
    assert_eq!(before, after, "a rejected request wrote to the log");
    for key in ["k1", "k"] {
        assert_eq!(cluster.get(0, key).await.0, 404);
    }
    // The limits themselves are accepted.
    let key = "k".repeat(max_key);
    let value = "v".repeat(max_value);
    assert_eq!(cluster.put(0, &key, &value).await.0, 200);
    let (code, body) = cluster.get(1, &key).await;
    assert_eq!(code, 200);
    assert_eq!(body["value"].as_str().map(str::len), Some(max_value));
}

/// Sends `request` as raw bytes and returns the answer's text, read until the server
/// closes the connection (bounded).
async fn raw_http(port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "no answer within 10 s");
    String::from_utf8_lossy(&answer).into_owned()
}
