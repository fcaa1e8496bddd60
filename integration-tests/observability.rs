//! Seeing the cluster (issue #13) on real processes: `/metrics` under load, parsed by the
//! official Prometheus Python client's parser; `/livez` and `/readyz` on healthy,
//! stopped and leaderless nodes; gRPC health per service; JSON logs; the original
//! viewer's requests (JSON bodies, CORS preflights); the dashboard's API.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use futures::future::join_all;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

use crate::harness::{eventually, Cluster, CONVERGE};
use crate::tools::{python_has, python_script, test_python};

/// One sample as the Prometheus parser read it.
#[derive(Debug, Clone)]
struct Sample {
    family: String,
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Node `i`'s `/metrics`, parsed by `prometheus_client.parser` (PyPI).
async fn scrape(cluster: &Cluster, i: usize) -> Vec<Sample> {
    assert!(
        python_has(&["prometheus_client"]),
        "this test parses /metrics with the PyPI package prometheus-client: run the README's \
         test command (./scripts/test.sh), which installs it, or `python3 -m pip install \
         prometheus-client`"
    );
    let response = cluster
        .http()
        .get(format!("{}/metrics", cluster.url(i)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let mut parser = tokio::process::Command::new(test_python())
        .arg(python_script("parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = parser.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let output = parser.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    samples
        .into_iter()
        .map(|s| Sample {
            family: s["family"].as_str().unwrap().to_string(),
            kind: s["type"].as_str().unwrap().to_string(),
            name: s["name"].as_str().unwrap().to_string(),
            labels: serde_json::from_value(s["labels"].clone()).unwrap(),
            value: s["value"].as_f64().unwrap_or(f64::NAN),
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include `labels`.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn series<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name).collect()
}

fn kind_of(samples: &[Sample], family: &str) -> String {
    samples
        .iter()
        .find(|s| s.family == family)
        .map(|s| s.kind.clone())
        .unwrap_or_else(|| panic!("no family {family}"))
}

#[tokio::test]
async fn metrics_move_under_load_and_parse_with_the_prometheus_parser() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let (leader_name, follower_name) = (
        cluster.nodes[leader].name.clone(),
        cluster.nodes[follower].name.clone(),
    );
    let leader_before = scrape(&cluster, leader).await;
    let follower_before = scrape(&cluster, follower).await;

    // Load: 100 writes through each of the two nodes, 50 reads through the follower.
    const WRITES: usize = 100;
    let writes = (0..2 * WRITES).map(|n| {
        let node = if n % 2 == 0 { leader } else { follower };
        let cluster = &cluster;
        async move { cluster.put(node, &format!("load-{n}"), "v").await }
    });
    for (code, body) in join_all(writes).await {
        assert_eq!(code, 200, "{body}");
    }
    let reads = (0..50).map(|n| {
        let cluster = &cluster;
        async move { cluster.get(follower, &format!("load-{}", 2 * n)).await }
    });
    for (code, body) in join_all(reads).await {
        assert_eq!(code, 200, "{body}");
    }
    let leader_after = scrape(&cluster, leader).await;
    let follower_after = scrape(&cluster, follower).await;
    let moved = |before: &[Sample], after: &[Sample], name: &str, labels: &[(&str, &str)]| {
        sum(after, name, labels) - sum(before, name, labels)
    };

    // Roles.
    assert_eq!(sum(&leader_after, "distraft_server_is_leader", &[]), 1.0);
    assert_eq!(sum(&follower_after, "distraft_server_is_leader", &[]), 0.0);
    for samples in [&leader_after, &follower_after] {
        assert_eq!(sum(samples, "distraft_server_has_leader", &[]), 1.0);
        assert_eq!(sum(samples, "distraft_server_up", &[]), 1.0);
        assert!(sum(samples, "distraft_server_leader_changes_seen_total", &[]) >= 1.0);
        assert!(sum(samples, "process_resident_memory_bytes", &[]) > 0.0);
    }
    assert_eq!(
        kind_of(&leader_after, "distraft_server_has_leader"),
        "gauge"
    );
    assert_eq!(
        kind_of(&leader_after, "distraft_server_leader_changes_seen"),
        "counter"
    );
    assert_eq!(
        kind_of(&leader_after, "distraft_disk_wal_fsync_duration_seconds"),
        "histogram"
    );

    // Raft moved: every write committed and applied, and fsynced on both nodes.
    let committed = moved(
        &leader_before,
        &leader_after,
        "distraft_server_proposals_committed_total",
        &[],
    );
    assert!(
        committed >= (2 * WRITES) as f64,
        "commit index moved by {committed}"
    );
    assert!(
        sum(
            &follower_after,
            "distraft_server_proposals_applied_total",
            &[]
        ) >= sum(
            &leader_before,
            "distraft_server_proposals_committed_total",
            &[]
        ) + (2 * WRITES) as f64
            - 1.0
    );
    for (before, after) in [
        (&leader_before, &leader_after),
        (&follower_before, &follower_after),
    ] {
        let fsyncs = moved(
            before,
            after,
            "distraft_disk_wal_fsync_duration_seconds_count",
            &[],
        );
        assert!(fsyncs >= 1.0, "no WAL fsync counted");
    }
    assert_eq!(
        sum(&leader_after, "distraft_mvcc_keys_total", &[]),
        (2 * WRITES) as f64
    );
    assert!(
        sum(
            &leader_after,
            "distraft_mvcc_db_total_size_in_use_in_bytes",
            &[]
        ) > 0.0
    );

    // Client traffic, counted once, where the client sent it.
    for (before, after) in [
        (&leader_before, &leader_after),
        (&follower_before, &follower_after),
    ] {
        let puts = moved(before, after, "distraft_kv_writes_total", &[("op", "put")]);
        assert_eq!(puts, WRITES as f64);
    }
    let reads = moved(
        &follower_before,
        &follower_after,
        "distraft_kv_reads_total",
        &[("consistency", "linearizable")],
    );
    assert_eq!(reads, 50.0);
    let http_posts = moved(
        &follower_before,
        &follower_after,
        "distraft_http_requests_total",
        &[("route", "/{key}"), ("method", "POST"), ("code", "200")],
    );
    assert_eq!(http_posts, WRITES as f64);
    let http_seconds = moved(
        &follower_before,
        &follower_after,
        "distraft_http_request_duration_seconds_count",
        &[("route", "/{key}"), ("method", "POST")],
    );
    assert_eq!(http_seconds, WRITES as f64);
    // The follower forwarded its writes to the leader over gRPC.
    let forwarded = moved(
        &leader_before,
        &leader_after,
        "grpc_server_handled_total",
        &[
            ("grpc_service", "distraft.v1.Kv"),
            ("grpc_method", "Put"),
            ("grpc_code", "OK"),
        ],
    );
    assert_eq!(forwarded, WRITES as f64);

    // Replication as the leader sees it, and only the leader.
    let lag = series(&leader_after, "distraft_replication_follower_lag_entries");
    let mut followers: Vec<&str> = lag.iter().map(|s| s.labels["follower"].as_str()).collect();
    followers.sort();
    assert_eq!(followers.len(), 2, "{lag:?}");
    assert!(followers.contains(&follower_name.as_str()));
    assert!(!followers.contains(&leader_name.as_str()));
    assert_eq!(
        series(&leader_after, "distraft_replication_follower_lag_seconds").len(),
        2
    );
    let quorum = sum(
        &leader_after,
        "distraft_replication_quorum_ack_age_seconds",
        &[],
    );
    assert!((0.0..1.0).contains(&quorum), "quorum ack age {quorum}");
    assert!(series(&follower_after, "distraft_replication_follower_lag_entries").is_empty());
    assert!(series(
        &follower_after,
        "distraft_replication_quorum_ack_age_seconds"
    )
    .is_empty());
    let round_trips = moved(
        &leader_before,
        &leader_after,
        "distraft_network_peer_round_trip_time_seconds_count",
        &[("To", &follower_name)],
    );
    assert!(
        round_trips >= 1.0,
        "no round trip to {follower_name} measured"
    );
}

/// `GET` of a health route: the status code and the text.
async fn probe(cluster: &Cluster, i: usize, path: &str) -> (u16, String) {
    let response = cluster
        .http()
        .get(format!("{}{path}", cluster.url(i)))
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    (code, response.text().await.unwrap())
}

async fn serving(cluster: &Cluster, i: usize, service: &str) -> ServingStatus {
    let answer = cluster
        .health(i)
        .await
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(answer.status).unwrap()
}

#[tokio::test]
async fn livez_and_readyz_say_what_is_wrong() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let other = (leader + 1) % 3;
    let third = (leader + 2) % 3;

    // Healthy.
    for i in 0..3 {
        assert_eq!(probe(&cluster, i, "/livez").await, (200, "ok\n".into()));
        assert_eq!(probe(&cluster, i, "/readyz").await, (200, "ok\n".into()));
    }
    let (code, text) = probe(&cluster, other, "/readyz?verbose").await;
    assert_eq!(code, 200);
    assert_eq!(
        text,
        "[+]driver ok\n[+]up ok\n[+]leader ok\n[+]applied ok\n[+]storage ok\nreadyz check passed\n"
    );
    assert_eq!(
        serving(&cluster, other, "distraft.v1.Kv").await,
        ServingStatus::Serving
    );

    // Stopped: live, not ready; Kv and Raft not serving over gRPC, Admin still.
    assert_eq!(cluster.get_path(other, "/stop").await.0, 200);
    assert_eq!(probe(&cluster, other, "/livez").await, (200, "ok\n".into()));
    let (code, text) = probe(&cluster, other, "/readyz").await;
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("[-]up failed: the node is stopped"), "{text}");
    assert!(text.ends_with("readyz check failed\n"), "{text}");
    let (code, text) = probe(&cluster, other, "/livez?verbose").await;
    assert_eq!(
        (code, text.as_str()),
        (200, "[+]driver ok\nlivez check passed\n")
    );
    eventually(CONVERGE, || async {
        match serving(&cluster, other, "distraft.v1.Kv").await {
            ServingStatus::NotServing => Ok(()),
            status => Err(format!("{status:?}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(
        serving(&cluster, other, "distraft.v1.Raft").await,
        ServingStatus::NotServing
    );
    assert_eq!(
        serving(&cluster, other, "distraft.v1.Admin").await,
        ServingStatus::Serving
    );
    assert_eq!(serving(&cluster, other, "").await, ServingStatus::Serving);

    // Started again: ready again.
    assert_eq!(cluster.get_path(other, "/start").await.0, 200);
    eventually(CONVERGE, || async {
        match probe(&cluster, other, "/readyz").await {
            (200, _) => Ok(()),
            answer => Err(format!("{answer:?}")),
        }
    })
    .await
    .unwrap();
    eventually(CONVERGE, || async {
        match serving(&cluster, other, "distraft.v1.Kv").await {
            ServingStatus::Serving => Ok(()),
            status => Err(format!("{status:?}")),
        }
    })
    .await
    .unwrap();

    // Without a majority, the last node knows no leader: live, not ready, saying why.
    cluster.kill(leader);
    cluster.kill(other);
    let text = eventually(CONVERGE, || async {
        match probe(&cluster, third, "/readyz?verbose").await {
            (503, text) if text.contains("[-]leader failed: no leader known") => Ok(text),
            answer => Err(format!("{answer:?}")),
        }
    })
    .await
    .unwrap();
    assert!(
        text.contains("[+]up ok") && text.contains("[+]driver ok"),
        "{text}"
    );
    assert_eq!(probe(&cluster, third, "/livez").await, (200, "ok\n".into()));
}

#[tokio::test]
async fn the_original_viewers_requests_work() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let http = cluster.http();
    let key_url = |key: &str| format!("{}/{key}", cluster.url(follower));

    // A JSON body, as the viewer's later versions send it.
    let (code, body) = cluster
        .answer(
            http.post(key_url("viewer"))
                .header("Content-Type", "application/json")
                .body(r#"{"value": "from the viewer"}"#),
        )
        .await;
    assert_eq!(
        (code, &body["value"]),
        (200, &Value::from("from the viewer")),
        "{body}"
    );
    cluster
        .assert_value_eventually(leader, "viewer", "from the viewer")
        .await;
    for (bad, why) in [
        (r#"{"value": 5}"#, "value must be a JSON string"),
        (r#"{"value": ""}"#, "the value is empty"),
        (r#"{"other": "x"}"#, "missing JSON member: value"),
        ("value=form-in-json", "invalid JSON body"),
    ] {
        let (code, body) = cluster
            .answer(
                http.post(key_url("viewer"))
                    .header("Content-Type", "application/json; charset=utf-8")
                    .body(bad),
            )
            .await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(why),
            "{bad}: {body}"
        );
    }
    cluster
        .assert_value_eventually(follower, "viewer", "from the viewer")
        .await;

    // Preflights on every route, answered by the node itself (2xx, never a redirect).
    let origin = "http://viewer.example:4200";
    for path in [
        "/",
        "/stop",
        "/start",
        "/viewer",
        "/metrics",
        "/livez",
        "/readyz",
        "/ui/",
        "/ui/api/cluster",
        "/ui/api/members/node1/stop",
        "/no/such/route",
    ] {
        let response = http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}{path}", cluster.url(follower)),
            )
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let allowed = response.headers().get("access-control-allow-origin");
        assert!(allowed.is_some(), "{path}: no CORS answer");
        assert!(response.headers().get("location").is_none(), "{path}");
    }
    // CORS headers on errors too, so that the viewer can read them.
    let response = http
        .get(key_url("never-written"))
        .header("Origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_some());
    // The status fields the viewer reads.
    let status = cluster.status(leader).await.unwrap();
    for field in [
        "is_leader",
        "members",
        "match_index",
        "next_index",
        "up",
        "state",
        "term",
    ] {
        assert!(
            status.get(field).is_some(),
            "status lacks {field}: {status}"
        );
    }
}

/// The dashboard's view of the cluster, through node `i`.
async fn dashboard_view(cluster: &Cluster, i: usize) -> Value {
    let url = format!("{}/ui/api/cluster", cluster.url(i));
    let (code, view) = cluster.answer(cluster.http().get(url)).await;
    assert_eq!(code, 200, "{view}");
    view
}

/// Node `i`'s card in a dashboard view.
fn card(cluster: &Cluster, view: &Value, i: usize) -> Value {
    view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == cluster.nodes[i].name)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn the_dashboard_sees_every_member_through_one_node() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let third = (leader + 2) % 3;
    let http = cluster.http().clone();
    let base = cluster.url(follower);

    for (path, content_type) in [
        ("/ui/", "text/html"),
        ("/ui", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}"
        );
        assert!(headers.get("content-security-policy").is_some(), "{path}");
    }

    let first = dashboard_view(&cluster, follower).await;
    assert_eq!(first["served_by"], cluster.nodes[follower].name);
    assert_eq!(first["members"].as_array().unwrap().len(), 3);
    let leader_card = card(&cluster, &first, leader);
    assert_eq!(leader_card["status"]["is_leader"], true, "{first}");
    assert_eq!(
        leader_card["status"]["followers"]
            .as_object()
            .unwrap()
            .len(),
        2
    );
    assert!(!first["timeline"].as_array().unwrap().is_empty(), "{first}");

    // The event stream sends the same view.
    let mut events = http
        .get(format!("{base}/ui/api/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert!(events.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk())
        .await
        .expect("no event within 5 s")
        .unwrap()
        .unwrap();
    let chunk = String::from_utf8_lossy(&chunk).into_owned();
    assert!(
        chunk.starts_with("event:cluster\ndata:{") || chunk.starts_with("event: cluster\ndata: {"),
        "{chunk:?}"
    );
    drop(events);

    // Stopping the leader from the page: it shows stopped and another member leads.
    let leader_name = cluster.nodes[leader].name.clone();
    let (code, body) = cluster
        .answer(http.post(format!("{base}/ui/api/members/{leader_name}/stop")))
        .await;
    assert_eq!(code, 200, "{body}");
    eventually(CONVERGE, || async {
        let view = dashboard_view(&cluster, follower).await;
        let old = card(&cluster, &view, leader);
        let new_leader = [follower, third]
            .into_iter()
            .any(|i| card(&cluster, &view, i)["status"]["is_leader"] == true);
        match (old["status"]["up"] == false, new_leader) {
            (true, true) => Ok(()),
            _ => Err(format!("{view}")),
        }
    })
    .await
    .unwrap();
    let (code, _) = cluster
        .answer(http.post(format!("{base}/ui/api/members/{leader_name}/start")))
        .await;
    assert_eq!(code, 200);
    let (code, body) = cluster
        .answer(http.post(format!("{base}/ui/api/members/nobody/stop")))
        .await;
    assert_eq!(code, 404, "{body}");

    // A killed member shows unreachable (after the failover: a majority stays up).
    cluster.kill(third);
    eventually(CONVERGE, || async {
        match card(&cluster, &dashboard_view(&cluster, follower).await, third)["reachable"] == false
        {
            true => Ok(()),
            false => Err("still reachable".to_string()),
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn dashboard_actions_need_the_token_when_one_is_set() {
    let cluster = Cluster::start_with(3, &[("DISTRAFT_API_TOKEN", "s3cret-token-for-tests")]).await;
    let http = cluster.http();
    let url = format!("{}/ui/api/members/node1/stop", cluster.url(1));
    assert_eq!(cluster.answer(http.post(&url)).await.0, 401);
    assert_eq!(
        cluster.answer(http.post(&url).bearer_auth("wrong")).await.0,
        403
    );
    // Reading needs none, as GET / does.
    assert_eq!(
        cluster
            .answer(http.get(format!("{}/ui/api/cluster", cluster.url(1))))
            .await
            .0,
        200
    );
    let (code, body) = cluster
        .answer(http.post(&url).bearer_auth("s3cret-token-for-tests"))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(cluster.status(0).await.unwrap()["up"], false);
}

#[tokio::test]
async fn json_logs_have_one_line_per_event() {
    let mut cluster = Cluster::start_with(3, &[("DISTRAFT_LOG_FORMAT", "json")]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let lines = |cluster: &Cluster, i: usize| -> Vec<Value> {
        cluster
            .output(i)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
            })
            .collect()
    };
    let has = |lines: &[Value], message: &str| {
        lines.iter().any(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
    };
    let leader_lines = lines(&cluster, leader);
    assert!(has(&leader_lines, "became the leader"), "{leader_lines:?}");
    let became = leader_lines
        .iter()
        .find(|l| l["message"] == "became the leader")
        .unwrap();
    assert_eq!(became["level"], "INFO");
    assert!(
        became["term"].as_u64().is_some() && became["timestamp"].is_string(),
        "{became}"
    );
    assert!(has(&lines(&cluster, follower), "following"));

    // A member the leader stops hearing from, and its return: one line each.
    cluster.kill(follower);
    let name = cluster.nodes[follower].name.clone();
    let silent = eventually(CONVERGE, || async {
        lines(&cluster, leader)
            .into_iter()
            .find(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("member unreachable"))
            })
            .ok_or_else(|| "no 'member unreachable' line yet".to_string())
    })
    .await
    .unwrap();
    assert_eq!(silent["member"], name.as_str());
    cluster.restart(follower);
    eventually(CONVERGE, || async {
        match has(&lines(&cluster, leader), "member reachable again") {
            true => Ok(()),
            false => Err("no 'member reachable again' line yet".to_string()),
        }
    })
    .await
    .unwrap();
}

/// Exit code of integration-tests/python/dashboard.py when no browser can run.
const NO_BROWSER: i32 = 3;

#[tokio::test]
async fn the_dashboard_in_a_real_browser_shows_a_failover() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let serving = (leader + 1) % 3;
    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/dashboard");
    let members: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    let output = tokio::process::Command::new(test_python())
        .arg(python_script("dashboard.py"))
        .args(["--url", &cluster.url(serving)])
        .args(["--members", &members.join(",")])
        .args(["--leader", &cluster.nodes[leader].name])
        .arg("--artifacts")
        .arg(&artifacts)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("the browser test did not finish within 120 s")
        .expect("running python");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(NO_BROWSER) {
        // Where no browser can be installed; CI installs one (scripts/test.sh), so
        // there a missing browser is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the browser test, but: {stderr}"
        );
        eprintln!(
            "SKIPPED the_dashboard_in_a_real_browser_shows_a_failover: {stderr} \
             (./scripts/test.sh installs Debian's chromium and chromium-driver and PyPI's selenium)"
        );
        return;
    }
    assert!(
        output.status.success(),
        "{stderr}\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    eprintln!(
        "browser: {} (screenshots in {})",
        String::from_utf8_lossy(&output.stdout).trim(),
        artifacts.display()
    );
}
