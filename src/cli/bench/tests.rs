//! The bench's clients against fake servers on loopback that record every request, so
//! that what goes on the wire for each API (method, path, query, form body) is checked,
//! as are the labels of errors and how each API says who leads. etcd's v3 API gets a
//! fake gRPC server of its own, which records the calls and keeps what is put. (The engine itself is
//! tested in the bench crate, bench/src/tests.rs.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use distraft_bench::{find_leader, load::Report};
use warp::Filter;

use super::{client::Api, BenchArgs, Mode, TargetArgs};
use crate::proto::etcd::{
    self, kv_server::KvServer, maintenance_server::MaintenanceServer, RangeRequest,
};

/// The requests a fake server saw, as `METHOD /path?query body`.
type Seen = Arc<Mutex<Vec<String>>>;

/// How a fake server answers a request.
type Answer = Arc<dyn Fn(&str, &str) -> (u16, String) + Send + Sync>;

/// A fake node on an ephemeral loopback port: records each request and answers with
/// `answer(method, path)`.
async fn fake_node(answer: Answer) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let routes = warp::method()
        .and(warp::path::full())
        .and(raw_query)
        .and(warp::body::bytes())
        .map(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  query: String,
                  body: Bytes| {
                let query = if query.is_empty() {
                    String::new()
                } else {
                    format!("?{query}")
                };
                record.lock().unwrap().push(format!(
                    "{method} {}{query} {}",
                    path.as_str(),
                    String::from_utf8_lossy(&body)
                ));
                let (status, body) = answer(method.as_str(), path.as_str());
                warp::reply::with_status(body, warp::http::StatusCode::from_u16(status).unwrap())
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    (url, seen)
}

fn always(status: u16) -> Answer {
    Arc::new(move |_, _| (status, "{}".to_string()))
}

fn bench_args(args: &[&str]) -> BenchArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }
    let argv = std::iter::once("bench").chain(args.iter().copied());
    Cli::try_parse_from(argv).unwrap().bench
}

async fn load_report(args: &[&str]) -> Report<Api> {
    let bench = bench_args(args);
    assert!(bench.mode.is_none());
    let cluster = bench.load.target.connect().unwrap();
    let urls = bench.load.target.resolve_urls(&cluster).await.unwrap();
    distraft_bench::load::execute(&cluster, urls, bench.load.workload)
        .await
        .unwrap()
}

/// The leader among `target`'s URLs, waiting `wait` at most.
async fn leader_of(target: &TargetArgs, wait: Duration) -> anyhow::Result<String> {
    find_leader(&target.connect()?, &target.urls, wait).await
}

fn sorted(seen: &Seen) -> Vec<String> {
    let mut requests = seen.lock().unwrap().clone();
    requests.sort();
    requests
}

#[tokio::test]
async fn etcd_v2_writes_are_form_puts_to_distinct_keys() {
    let (url, seen) = fake_node(always(201)).await;
    let report = load_report(&[
        "--target",
        "etcd-v2",
        "--urls",
        &url,
        "--ops",
        "20",
        "--clients",
        "3",
        "--value-size",
        "5",
    ])
    .await;
    assert_eq!((report.ok, report.errors), (20, 0));
    let mut expected: Vec<String> = (0..20)
        .map(|n| format!("PUT /v2/keys/bench-{n} value=abcde"))
        .collect();
    expected.sort();
    assert_eq!(sorted(&seen), expected);
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.max >= report.latency_ms.p99);
    // How the report names the API (`--json`).
    assert_eq!(serde_json::to_value(&report).unwrap()["target"], "etcd-v2");
}

#[tokio::test]
async fn etcd_v2_linearizable_reads_ask_for_quorum_after_a_prefill() {
    let (url, seen) = fake_node(always(200)).await;
    let report = load_report(&[
        "--target",
        "etcd-v2",
        "--urls",
        &url,
        "--ops",
        "10",
        "--read-percent",
        "100",
        "--keys",
        "3",
        "--value-size",
        "2",
        "--key-prefix",
        "k",
    ])
    .await;
    assert_eq!((report.ok, report.errors), (10, 0));
    let requests = sorted(&seen);
    assert_eq!(requests.len(), 13);
    let reads: Vec<_> = requests.iter().filter(|r| r.starts_with("GET")).collect();
    assert_eq!(reads.len(), 10);
    for read in reads {
        assert!(
            read.starts_with("GET /v2/keys/k")
                && read.ends_with("?quorum=true ")
                && ["k0", "k1", "k2"].iter().any(|k| read.contains(k)),
            "{read}"
        );
    }
    let prefill: Vec<_> = requests.iter().filter(|r| r.starts_with("PUT")).collect();
    assert_eq!(
        prefill,
        [
            "PUT /v2/keys/k0 value=ab",
            "PUT /v2/keys/k1 value=ab",
            "PUT /v2/keys/k2 value=ab"
        ]
    );
}

#[tokio::test]
async fn distraft_http_writes_post_and_stale_reads_say_so() {
    let (url, seen) = fake_node(always(200)).await;
    let writes = load_report(&["--urls", &url, "--ops", "2", "--clients", "1"]).await;
    assert_eq!(writes.ok, 2);
    assert_eq!(
        sorted(&seen),
        [
            "POST /bench-0 value=abcdefghijklmnop",
            "POST /bench-1 value=abcdefghijklmnop"
        ]
    );
    seen.lock().unwrap().clear();
    let reads = load_report(&[
        "--urls",
        &url,
        "--ops",
        "4",
        "--read-percent",
        "100",
        "--reads",
        "stale",
        "--keys",
        "1",
        "--no-prefill",
    ])
    .await;
    assert_eq!(reads.ok, 4);
    assert_eq!(sorted(&seen), vec!["GET /bench-0?stale=true "; 4]);
}

#[tokio::test]
async fn failures_are_counted_by_kind_and_not_timed() {
    let (url, _) = fake_node(always(503)).await;
    let report = load_report(&["--urls", &url, "--ops", "7", "--clients", "2"]).await;
    assert_eq!((report.ok, report.errors), (0, 7));
    assert_eq!(report.error_kinds.get("HTTP 503"), Some(&7));

    // Nobody listens on the port of a listener just closed.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let report = load_report(&["--urls", &url, "--ops", "3", "--request-timeout", "2"]).await;
    assert_eq!(report.error_kinds.get("connection failed"), Some(&3));
}

#[tokio::test]
async fn the_leader_is_found_among_the_nodes() {
    let follower: Answer = Arc::new(|_, _| {
        (
            200,
            r#"{"ok": true, "status": {"is_leader": false}}"#.to_string(),
        )
    });
    let leader: Answer = Arc::new(|_, _| {
        (
            200,
            r#"{"ok": true, "status": {"is_leader": true}}"#.to_string(),
        )
    });
    let (a, _) = fake_node(follower).await;
    let (b, _) = fake_node(leader).await;
    let (c, etcd_seen) = fake_node(Arc::new(|_, path| match path {
        "/v2/stats/self" => (200, r#"{"name": "e3", "state": "StateLeader"}"#.to_string()),
        _ => (404, "{}".to_string()),
    }))
    .await;
    let urls = format!("{a},{b}");
    let Some(Mode::Leader { target }) = bench_args(&["leader", "--urls", &urls]).mode else {
        panic!("not the leader mode");
    };
    assert_eq!(leader_of(&target, Duration::from_secs(2)).await.unwrap(), b);

    let urls = format!("{a},{c}");
    let Some(Mode::Leader { target }) =
        bench_args(&["leader", "--target", "etcd-v2", "--urls", &urls]).mode
    else {
        panic!("not the leader mode");
    };
    assert_eq!(leader_of(&target, Duration::from_secs(2)).await.unwrap(), c);
    assert!(sorted(&etcd_seen).contains(&"GET /v2/stats/self ".to_string()));

    let only_follower = bench_args(&["leader", "--urls", &a]);
    let Some(Mode::Leader { target }) = only_follower.mode else {
        panic!("not the leader mode");
    };
    assert!(leader_of(&target, Duration::from_millis(200))
        .await
        .is_err());
}

/// A fake etcd member speaking the v3 API on an ephemeral loopback port: records each
/// call as `Put key=value` or `Range key serializable=…`, keeps what is put, and names
/// `leader` as the leader in its Status (itself when `leader == member_id`).
#[derive(Clone, Default)]
struct FakeEtcd {
    seen: Seen,
    stored: Arc<Mutex<std::collections::HashMap<Bytes, Bytes>>>,
    member_id: u64,
    leader: u64,
}

impl FakeEtcd {
    fn header(&self) -> Option<etcd::ResponseHeader> {
        Some(etcd::ResponseHeader {
            member_id: self.member_id,
            ..Default::default()
        })
    }

    fn record(&self, call: String) {
        self.seen.lock().unwrap().push(call);
    }

    /// Serves on loopback; the URL and what the member saw.
    async fn start(self) -> (String, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = self.seen.clone();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(KvServer::new(self.clone()))
                .add_service(MaintenanceServer::new(self))
                .serve_with_incoming(incoming),
        );
        (url, seen)
    }
}

#[tonic::async_trait]
impl etcd::kv_server::Kv for FakeEtcd {
    async fn range(
        &self,
        request: tonic::Request<RangeRequest>,
    ) -> Result<tonic::Response<etcd::RangeResponse>, tonic::Status> {
        let request = request.into_inner();
        self.record(format!(
            "Range {} serializable={}",
            String::from_utf8_lossy(&request.key),
            request.serializable
        ));
        let value = self.stored.lock().unwrap().get(&request.key).cloned();
        let kvs: Vec<_> = value
            .map(|value| etcd::KeyValue {
                key: request.key,
                value,
                ..Default::default()
            })
            .into_iter()
            .collect();
        Ok(tonic::Response::new(etcd::RangeResponse {
            header: self.header(),
            count: kvs.len() as i64,
            kvs,
            more: false,
        }))
    }

    async fn put(
        &self,
        request: tonic::Request<etcd::PutRequest>,
    ) -> Result<tonic::Response<etcd::PutResponse>, tonic::Status> {
        let request = request.into_inner();
        self.record(format!(
            "Put {}={}",
            String::from_utf8_lossy(&request.key),
            String::from_utf8_lossy(&request.value)
        ));
        self.stored
            .lock()
            .unwrap()
            .insert(request.key, request.value);
        Ok(tonic::Response::new(etcd::PutResponse {
            header: self.header(),
        }))
    }
}

#[tonic::async_trait]
impl etcd::maintenance_server::Maintenance for FakeEtcd {
    async fn status(
        &self,
        _: tonic::Request<etcd::StatusRequest>,
    ) -> Result<tonic::Response<etcd::StatusResponse>, tonic::Status> {
        Ok(tonic::Response::new(etcd::StatusResponse {
            header: self.header(),
            leader: self.leader,
            ..Default::default()
        }))
    }
}

#[tokio::test]
async fn etcd_v3_writes_are_puts_to_distinct_keys() {
    let (url, seen) = FakeEtcd::default().start().await;
    let report = load_report(&[
        "--target",
        "etcd-v3",
        "--urls",
        &url,
        "--ops",
        "20",
        "--clients",
        "3",
        "--value-size",
        "5",
    ])
    .await;
    assert_eq!((report.ok, report.errors), (20, 0));
    let mut expected: Vec<String> = (0..20).map(|n| format!("Put bench-{n}=abcde")).collect();
    expected.sort();
    assert_eq!(sorted(&seen), expected);
    assert_eq!(serde_json::to_value(&report).unwrap()["target"], "etcd-v3");
}

#[tokio::test]
async fn etcd_v3_reads_are_ranges_serializable_only_when_stale() {
    let (url, seen) = FakeEtcd::default().start().await;
    let linearizable = load_report(&[
        "--target",
        "etcd-v3",
        "--urls",
        &url,
        "--ops",
        "10",
        "--read-percent",
        "100",
        "--keys",
        "3",
        "--value-size",
        "2",
        "--key-prefix",
        "k",
    ])
    .await;
    assert_eq!((linearizable.ok, linearizable.errors), (10, 0));
    let requests = sorted(&seen);
    let prefill: Vec<_> = requests.iter().filter(|r| r.starts_with("Put")).collect();
    assert_eq!(prefill, ["Put k0=ab", "Put k1=ab", "Put k2=ab"]);
    let reads: Vec<_> = requests.iter().filter(|r| r.starts_with("Range")).collect();
    assert_eq!(reads.len(), 10);
    for read in reads {
        assert!(
            ["k0", "k1", "k2"]
                .iter()
                .any(|k| *read == format!("Range {k} serializable=false")),
            "{read}"
        );
    }

    seen.lock().unwrap().clear();
    let stale = load_report(&[
        "--target",
        "etcd-v3",
        "--urls",
        &url,
        "--ops",
        "4",
        "--read-percent",
        "100",
        "--reads",
        "stale",
        "--keys",
        "1",
        "--no-prefill",
        "--key-prefix",
        "k",
    ])
    .await;
    assert_eq!((stale.ok, stale.errors), (4, 0));
    assert_eq!(sorted(&seen), vec!["Range k0 serializable=true"; 4]);

    // etcd answers a missing key with no kvs, not with an error status.
    let missing = load_report(&[
        "--target",
        "etcd-v3",
        "--urls",
        &url,
        "--ops",
        "2",
        "--read-percent",
        "100",
        "--no-prefill",
        "--key-prefix",
        "absent",
    ])
    .await;
    assert_eq!((missing.ok, missing.errors), (0, 2));
    assert_eq!(missing.error_kinds.get("key not found"), Some(&2));
}

#[tokio::test]
async fn the_etcd_v3_leader_is_the_member_that_names_itself() {
    let (follower, _) = FakeEtcd {
        member_id: 1,
        leader: 2,
        ..Default::default()
    }
    .start()
    .await;
    let (leader, _) = FakeEtcd {
        member_id: 2,
        leader: 2,
        ..Default::default()
    }
    .start()
    .await;
    // A member that knows no leader names none (0), which is not itself either.
    let (lost, _) = FakeEtcd::default().start().await;
    let urls = format!("{follower},{lost},{leader}");
    let Some(Mode::Leader { target }) =
        bench_args(&["leader", "--target", "etcd-v3", "--urls", &urls]).mode
    else {
        panic!("not the leader mode");
    };
    assert_eq!(
        leader_of(&target, Duration::from_secs(2)).await.unwrap(),
        leader
    );

    let urls = format!("{follower},{lost}");
    let Some(Mode::Leader { target }) =
        bench_args(&["leader", "--target", "etcd-v3", "--urls", &urls]).mode
    else {
        panic!("not the leader mode");
    };
    assert!(leader_of(&target, Duration::from_millis(300))
        .await
        .is_err());
}
