//! Watches on real nodes: Kv.Watch (gRPC), `GET /v1/watch` as a long-poll and as a
//! server-sent event stream, `distraft watch`; a watch from an index the node no
//! longer holds (a resync), a watcher on a follower that installs a snapshot, and a
//! watcher too slow for its buffer.

use std::collections::BTreeMap;
use std::time::Duration;

use distraft::proto::v1::kv_client::KvClient;
use distraft::proto::v1::{watch_event, WatchRequest, WatchResponse};
use serde_json::Value;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use crate::harness::{run_cli, Cluster};

/// Opens a Kv.Watch.
async fn open(
    kv: &mut KvClient<Channel>,
    key: &str,
    prefix: bool,
    start_index: u64,
) -> Streaming<WatchResponse> {
    kv.watch(WatchRequest {
        key: key.to_string(),
        prefix,
        start_index,
    })
    .await
    .expect("the watch opens")
    .into_inner()
}

/// The next response, within 10 s.
async fn next(stream: &mut Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a response within 10 s")
        .expect("no error")
        .expect("the stream goes on")
}

/// A watcher's view of its keys: changes applied, a resync replacing it.
#[derive(Default)]
struct View {
    keys: BTreeMap<String, String>,
    /// Every change up to it was seen.
    index: u64,
    /// The changes seen, by index; and the indexes of the resyncs.
    changed: Vec<u64>,
    resyncs: Vec<u64>,
    resync_pending: Option<BTreeMap<String, String>>,
}

impl View {
    fn take(&mut self, response: &WatchResponse) {
        if response.resync {
            let page = self.resync_pending.get_or_insert_with(BTreeMap::new);
            for event in &response.events {
                page.insert(event.key.clone(), event.value.clone());
            }
            if !response.more_resync {
                self.keys = self.resync_pending.take().unwrap_or_default();
                self.resyncs.push(response.index);
            }
        } else {
            for event in &response.events {
                assert!(
                    event.index > self.index || self.changed.is_empty() && self.resyncs.is_empty(),
                    "changes in index order, none twice: {event:?} after {}",
                    self.index
                );
                match event.r#type() {
                    watch_event::Type::Put => {
                        self.keys.insert(event.key.clone(), event.value.clone());
                    }
                    watch_event::Type::Delete => {
                        self.keys.remove(&event.key);
                    }
                }
                self.changed.push(event.index);
            }
        }
        if !response.more_resync {
            assert!(
                response.index >= self.index,
                "{response:?} after {}",
                self.index
            );
            self.index = response.index;
        }
    }

    /// Whether the write at `index` is in the view: delivered, or covered by a resync
    /// as of a later index.
    fn covers(&self, index: u64) -> bool {
        self.changed.contains(&index) || self.resyncs.iter().any(|r| *r >= index)
    }
}

/// Reads `stream` into `view` until it has seen `index`.
async fn follow_until(stream: &mut Streaming<WatchResponse>, view: &mut View, index: u64) {
    while view.index < index {
        view.take(&next(stream).await);
    }
}

/// Puts `key` through node `i` and returns the write's index.
async fn put(cluster: &Cluster, i: usize, key: &str, value: &str) -> u64 {
    let (code, body) = cluster.put(i, key, value).await;
    assert_eq!(code, 200, "{body}");
    body["mod_index"].as_u64().expect("the write's index")
}

/// Every key under `prefix` and its value, read through node `i`.
async fn listing(cluster: &Cluster, i: usize, prefix: &str) -> BTreeMap<String, String> {
    let url = format!("{}/v1/keys", cluster.url(i));
    let (code, body) = cluster
        .answer(
            cluster
                .http()
                .get(url)
                .query(&[("prefix", prefix), ("limit", "10000")]),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["key"].as_str().unwrap().into(),
                k["value"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[tokio::test]
async fn watches_over_grpc_http_sse_and_the_cli_see_every_change_in_order() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut kv = cluster.kv(follower).await;

    // gRPC, from now, on a follower: a progress message, then the changes.
    let mut stream = open(&mut kv, "w/", true, 0).await;
    let first = next(&mut stream).await;
    assert!(first.events.is_empty() && !first.resync, "{first:?}");
    let a = put(&cluster, leader, "w/a", "1").await;
    let _ = put(&cluster, leader, "other", "x").await;
    let b = put(&cluster, follower, "w/b", "2").await;
    let (code, body) = cluster.delete(leader, "w/a").await;
    assert_eq!(code, 200, "{body}");
    let d = body["index"].as_u64().unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let response = next(&mut stream).await;
        for event in response.events {
            seen.push((event.index, event.key, event.value, event.r#type));
        }
    }
    let put_type = watch_event::Type::Put as i32;
    let delete_type = watch_event::Type::Delete as i32;
    assert_eq!(
        seen,
        vec![
            (a, "w/a".into(), "1".into(), put_type),
            (b, "w/b".into(), "2".into(), put_type),
            (d, "w/a".into(), String::new(), delete_type),
        ]
    );

    // Resumed from an index: the history from it, on another node.
    let mut kv_leader = cluster.kv(leader).await;
    let mut resumed = open(&mut kv_leader, "w/b", false, a).await;
    let response = next(&mut resumed).await;
    assert_eq!(response.events.len(), 1, "{response:?}");
    assert_eq!(
        (response.events[0].index, response.events[0].version),
        (b, 1)
    );

    // Bad input.
    for (key, prefix) in [("", false), (&*"k".repeat(5000), true)] {
        let Err(refused) = kv
            .watch(WatchRequest {
                key: key.to_string(),
                prefix,
                start_index: 0,
            })
            .await
        else {
            panic!("a watch of {key:?} (prefix: {prefix}) was accepted");
        };
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }

    // HTTP long-poll: at once from an index the node has.
    let url = format!("{}/v1/watch", cluster.url(follower));
    let http = cluster.http();
    let a_text = a.to_string();
    let response = http
        .get(&url)
        .query(&[("prefix", "w/"), ("index", a_text.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers().contains_key("x-distraft-index"));
    let body: Value = response.json().await.unwrap();
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{body}");
    assert_eq!(events[0]["type"], "put");
    assert_eq!(events[0]["key"], "w/a");
    assert_eq!(events[0]["value"], "1");
    assert_eq!(events[0]["version"], 1);
    assert_eq!(events[2]["type"], "delete");
    assert_eq!(body["resync"], false);
    let next_index = body["next"].as_u64().unwrap();
    assert!(next_index > d, "{body}");

    // A long-poll that waits: answered by the next change.
    let waiting = {
        let http = http.clone();
        let url = url.clone();
        let index = next_index.to_string();
        tokio::spawn(async move {
            let response = http
                .get(&url)
                .query(&[("key", "w/c"), ("index", index.as_str()), ("wait", "20s")])
                .send()
                .await
                .unwrap();
            response.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = put(&cluster, leader, "w/c", "3").await;
    let body = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered by the change")
        .unwrap();
    assert_eq!(body["events"][0]["index"], c, "{body}");
    assert_eq!(body["next"], c + 1, "{body}");

    // A long-poll that runs out of time: no events, the same place to go on from.
    let later = (c + 1).to_string();
    let (code, body) = cluster
        .answer(http.get(&url).query(&[
            ("key", "w/zzz"),
            ("index", later.as_str()),
            ("wait", "200ms"),
        ]))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["events"], serde_json::json!([]));
    assert!(body["next"].as_u64() >= Some(c + 1), "{body}");

    // Bad input: 400 with a JSON error.
    for query in [
        vec![("index", "1")],
        vec![("key", "a"), ("prefix", "b")],
        vec![("key", "a"), ("wait", "soon")],
        vec![("key", "a"), ("wait", "10m")],
        vec![("key", "a"), ("index", "-3")],
        vec![("key", "a"), ("color", "blue")],
    ] {
        let (code, body) = cluster.answer(http.get(&url).query(&query)).await;
        assert_eq!(code, 400, "{query:?}: {body}");
        assert_eq!(body["ok"], false, "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }

    // Server-sent events, read by curl: from index a, resumed after the first put.
    let sse = |last_event_id: Option<u64>| {
        let mut curl = tokio::process::Command::new("curl");
        curl.args(["-sN", "--max-time", "2", "-H", "Accept: text/event-stream"]);
        if let Some(id) = last_event_id {
            curl.args(["-H", &format!("Last-Event-ID: {id}")]);
        }
        curl.arg(format!("{url}?prefix=w/&index={a}"));
        curl
    };
    let output = sse(None).output().await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(text.contains("event:put\n"), "{text}");
    assert!(text.contains(&format!("id:{a}\n")), "{text}");
    assert!(text.contains("event:delete\n"), "{text}");
    assert!(text.contains("\"key\":\"w/c\""), "{text}");
    assert!(text.contains("event:progress\n"), "{text}");
    let output = sse(Some(b)).output().await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        !text.contains(&format!("id:{a}\n")),
        "resumed after b: {text}"
    );
    assert!(text.contains(&format!("id:{d}\n")), "{text}");

    // The CLI: from index a, three changes, one JSON line each.
    let node = cluster.url(follower);
    let a_arg = a.to_string();
    let (ok, out) = run_cli(&[
        "watch", "--url", &node, "w/", "--prefix", "--index", &a_arg, "--count", "3",
    ])
    .await;
    assert!(ok, "{out}");
    let lines: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0]["key"], "w/a");
    assert_eq!(lines[2]["type"], "delete");

    // Every client gone (curl ended its streams, the gRPC ones are dropped): the node
    // lets go of every watcher, idle ones included.
    drop((stream, resumed));
    let metrics = format!("{}/metrics", cluster.url(follower));
    crate::harness::eventually(Duration::from_secs(5), || async {
        let text = http.get(&metrics).send().await.map_err(|e| e.to_string())?;
        let text = text.text().await.map_err(|e| e.to_string())?;
        match text.lines().any(|line| line == "distraft_watchers 0") {
            true => Ok(()),
            false => Err(text),
        }
    })
    .await
    .expect("no watcher left");
}

#[tokio::test]
async fn a_watch_resumed_from_a_compacted_index_gets_a_resync_then_the_changes() {
    // A history of 5 changes: the first writes fall out of it.
    let cluster = Cluster::start_with(1, &[("DISTRAFT_WATCH_HISTORY_EVENTS", "5")]).await;
    cluster.wait_for_leader().await;
    let first = put(&cluster, 0, "r/0", "v0").await;
    for i in 1..12 {
        put(&cluster, 0, &format!("r/{i}"), &format!("v{i}")).await;
    }
    let (code, _) = cluster.delete(0, "r/3").await;
    assert_eq!(code, 200);
    let mut kv = cluster.kv(0).await;
    let mut stream = open(&mut kv, "r/", true, first).await;
    let mut view = View::default();
    let resync = next(&mut stream).await;
    assert!(resync.resync, "{resync:?}");
    view.take(&resync);
    assert_eq!(view.keys, listing(&cluster, 0, "r/").await);
    let last = put(&cluster, 0, "r/new", "n").await;
    follow_until(&mut stream, &mut view, last).await;
    assert_eq!(view.keys, listing(&cluster, 0, "r/").await);

    // Over HTTP the same: a resync answer, then `next` goes on from it.
    let url = format!("{}/v1/watch", cluster.url(0));
    let first = first.to_string();
    let (code, body) = cluster
        .answer(
            cluster
                .http()
                .get(&url)
                .query(&[("prefix", "r/"), ("index", first.as_str())]),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["resync"], true, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 12, "{body}");
    assert!(body["next"].as_u64() > Some(last), "{body}");

    // A resync of more than one page (1,088 keys, written 64 to a transaction) comes
    // whole in one long-poll answer.
    let txn_url = format!("{}/v1/txn", cluster.url(0));
    for t in 0..17 {
        let puts: Vec<Value> = (0..64)
            .map(
                |i| serde_json::json!({"put": {"key": format!("big/{t:02}/{i:02}"), "value": "v"}}),
            )
            .collect();
        let (code, body) = cluster
            .answer(
                cluster
                    .http()
                    .post(&txn_url)
                    .json(&serde_json::json!({"success": puts})),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, body) = cluster
        .answer(
            cluster
                .http()
                .get(&url)
                .query(&[("prefix", "big/"), ("index", "1")]),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["resync"], true, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 17 * 64);
}

#[tokio::test]
async fn watch_on_a_follower_survives_a_snapshot_install() {
    let cluster = Cluster::start_with(3, &[("DISTRAFT_SNAPSHOT_THRESHOLD", "20")]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut kv = cluster.kv(follower).await;
    let mut stream = open(&mut kv, "s/", true, 0).await;
    let mut view = View::default();
    view.take(&next(&mut stream).await);
    let mut written = Vec::new();
    for i in 0..5 {
        written.push(put(&cluster, leader, &format!("s/{i}"), "before").await);
    }
    follow_until(&mut stream, &mut view, *written.last().unwrap()).await;

    // The follower sleeps while the leader writes and compacts past its log.
    let pid = cluster.pid(follower).expect("running").to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let other = (leader + 2) % 3;
    for i in 0..80 {
        let key = format!("s/{}", i % 30);
        written.push(
            put(
                &cluster,
                if i % 2 == 0 { leader } else { other },
                &key,
                &format!("v{i}"),
            )
            .await,
        );
    }
    signal("-CONT");
    for i in 0..5 {
        written.push(put(&cluster, leader, &format!("s/after{i}"), "after").await);
    }
    let last = *written.last().unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        follow_until(&mut stream, &mut view, last),
    )
    .await
    .expect("the watcher catches up");
    assert!(
        cluster
            .output(follower)
            .contains("installed a snapshot from the leader"),
        "the follower installed a snapshot"
    );
    assert_eq!(
        view.keys,
        listing(&cluster, leader, "s/").await,
        "the view is the state"
    );
    for index in written {
        assert!(
            view.covers(index),
            "write {index} was delivered or resynced"
        );
    }
    assert!(!view.resyncs.is_empty(), "the install resynced the watcher");
}

#[tokio::test]
async fn a_watcher_too_slow_for_its_buffer_is_told_where_to_resume() {
    let cluster = Cluster::start_with(1, &[("DISTRAFT_WATCH_BUFFER", "4")]).await;
    cluster.wait_for_leader().await;
    let mut kv = cluster.kv(0).await;
    let first = put(&cluster, 0, "slow/first", "x").await;
    let mut stream = open(&mut kv, "slow/", true, first + 1).await;
    // Unread, far more than HTTP/2's windows and the buffer hold.
    let value = "v".repeat(16 * 1024);
    let writes = (0..120).map(|i| {
        let (cluster, value) = (&cluster, value.clone());
        async move { put(cluster, 0, &format!("slow/{i}"), &value).await }
    });
    let indexes = futures::future::join_all(writes).await;
    let last = indexes.into_iter().max().unwrap();
    let mut view = View::default();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(response))) => view.take(&response),
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the stream neither went on nor ended"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let resume: u64 = status
        .metadata()
        .get("x-distraft-resume-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("the resume index");
    assert_eq!(
        resume,
        view.index + 1,
        "resume right after the last index seen"
    );
    // Resumed from there, nothing is missed.
    let mut stream = open(&mut kv, "slow/", true, resume).await;
    let mut resumed = View {
        index: resume - 1,
        ..View::default()
    };
    follow_until(&mut stream, &mut resumed, last).await;
    let mut all: Vec<u64> = view.changed.into_iter().chain(resumed.changed).collect();
    all.dedup();
    assert_eq!(all.len(), 120, "every write once");
}
