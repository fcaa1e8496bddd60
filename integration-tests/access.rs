//! Who may change things, and the bounds at the edges, on real nodes: the API token on
//! every HTTP route and gRPC method, CORS preflights, the Host allowlist, the HTTP
//! connection cap, the body-read timeout and the cap on writes forwarded to the leader.
//!
//! Planted bugs these tests catch (src/plant.rs):
//! `./scripts/plants.sh open-api no-connection-cap no-body-timeout`.

use std::time::{Duration, Instant};

use crate::harness::{eventually, Cluster, CONVERGE};
use distraft::proto::v1::{DeleteRequest, GetRequest, PutRequest, StartRequest, StopRequest};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

const TOKEN: &str = "integration-test-token";
const VIEWER: &str = "http://viewer.example:8080";

/// The credentials a request is sent with.
#[derive(Debug, Clone, Copy)]
enum Credentials {
    None,
    Wrong,
    Right,
}

impl Credentials {
    fn header(self) -> Option<String> {
        match self {
            Credentials::None => None,
            Credentials::Wrong => Some(format!("Bearer {TOKEN}x")),
            Credentials::Right => Some(format!("Bearer {TOKEN}")),
        }
    }

    /// The HTTP status a protected route answers with these credentials (the route's
    /// own success code for the right ones).
    fn expected(self, success: u16) -> u16 {
        match self {
            Credentials::None => 401,
            Credentials::Wrong => 403,
            Credentials::Right => success,
        }
    }

    fn grpc<T>(self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(header) = self.header() {
            request
                .metadata_mut()
                .insert("authorization", header.parse().unwrap());
        }
        request
    }

    fn grpc_code(self) -> Code {
        match self {
            Credentials::None => Code::Unauthenticated,
            Credentials::Wrong => Code::PermissionDenied,
            Credentials::Right => Code::Ok,
        }
    }
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    result.err().map_or(Code::Ok, |status| status.code())
}

async fn send(
    cluster: &Cluster,
    request: reqwest::RequestBuilder,
    credentials: Credentials,
) -> (u16, Value) {
    let request = match credentials.header() {
        Some(header) => request.header("authorization", header),
        None => request,
    };
    cluster.answer(request).await
}

fn assert_json_error(answer: &(u16, Value), code: u16, context: &str) {
    assert_eq!(answer.0, code, "{context}: {answer:?}");
    if code >= 400 {
        assert_eq!(answer.1["ok"], false, "{context}: {answer:?}");
        assert!(answer.1["error"].is_string(), "{context}: {answer:?}");
    }
}

/// Every route with no, wrong and right credentials, over HTTP and gRPC; a follower
/// forwards an authorized write; a rebound Host is refused; CORS answers the allowed
/// origin only.
#[tokio::test]
async fn the_api_token_guards_every_route_but_status() {
    let cluster = Cluster::start_with(
        3,
        &[
            ("DISTRAFT_API_TOKEN", TOKEN),
            ("DISTRAFT_CORS_ORIGINS", VIEWER),
            // One write forwarded at a time, so that a burst meets the cap.
            ("DISTRAFT_MAX_FORWARDED_REQUESTS", "1"),
        ],
    )
    .await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let http = cluster.http();
    let base = cluster.url(follower);

    // Status stays open, with or without credentials.
    for credentials in [Credentials::None, Credentials::Wrong, Credentials::Right] {
        let answer = send(&cluster, http.get(format!("{base}/")), credentials).await;
        assert_eq!(answer.0, 200, "GET / {credentials:?}: {answer:?}");
    }

    // Key routes through a follower: writes are forwarded to the leader, which checks
    // the token again.
    for credentials in [Credentials::None, Credentials::Wrong, Credentials::Right] {
        let context = format!("{credentials:?}");
        let put = http.post(format!("{base}/k")).form(&[("value", "v1")]);
        let answer = send(&cluster, put, credentials).await;
        assert_json_error(
            &answer,
            credentials.expected(200),
            &format!("POST {context}"),
        );
        let answer = send(&cluster, http.get(format!("{base}/k")), credentials).await;
        assert_json_error(
            &answer,
            credentials.expected(200),
            &format!("GET {context}"),
        );
        let answer = send(&cluster, http.delete(format!("{base}/k")), credentials).await;
        assert_json_error(
            &answer,
            credentials.expected(200),
            &format!("DELETE {context}"),
        );
        let watch = http
            .get(format!("{base}/v1/watch"))
            .query(&[("key", "k"), ("wait", "0s")]);
        let answer = send(&cluster, watch, credentials).await;
        assert_json_error(
            &answer,
            credentials.expected(200),
            &format!("watch {context}"),
        );
    }
    // The authorized write went through the leader, and nothing else did.
    let put = http
        .post(format!("{base}/forwarded"))
        .form(&[("value", "yes")]);
    assert_eq!(send(&cluster, put, Credentials::Right).await.0, 200);
    let read = http.get(format!("{}/forwarded", cluster.url(leader)));
    assert_eq!(
        send(&cluster, read, Credentials::Right).await.1["value"],
        "yes"
    );

    // A burst of writes through the follower: past the forwarding cap, a quick 503
    // that says so; the others succeed.
    let burst = (0..50).map(|i| {
        let put = http
            .post(format!("{base}/burst{i}"))
            .form(&[("value", "b")]);
        send(&cluster, put, Credentials::Right)
    });
    let answers = futures::future::join_all(burst).await;
    let refused = answers
        .iter()
        .filter(|(code, body)| {
            *code == 503 && body["error"].as_str().unwrap_or("").contains("forwarded")
        })
        .count();
    let written = answers.iter().filter(|(code, _)| *code == 200).count();
    assert!(refused > 0 && written > 0, "{answers:?}");
    assert_eq!(refused + written, answers.len(), "{answers:?}");

    // Stop and start a follower: only with the token.
    let mut up = true;
    for path in ["stop", "start"] {
        for credentials in [Credentials::None, Credentials::Wrong, Credentials::Right] {
            let answer = send(&cluster, http.get(format!("{base}/{path}")), credentials).await;
            assert_json_error(
                &answer,
                credentials.expected(200),
                &format!("/{path} {credentials:?}"),
            );
            if let Credentials::Right = credentials {
                up = path == "start";
            }
            let status = cluster.status(follower).await.unwrap();
            assert_eq!(status["up"], up, "after /{path} {credentials:?}");
        }
    }

    // Moving leadership (here: to the leader itself, which changes nothing) needs the
    // token too, asked of a follower.
    let leader_name = cluster.nodes[leader].name.clone();
    for credentials in [Credentials::None, Credentials::Wrong, Credentials::Right] {
        let transfer = http
            .post(format!("{base}/cluster/leader"))
            .json(&serde_json::json!({ "to": leader_name }));
        let answer = send(&cluster, transfer, credentials).await;
        assert_json_error(
            &answer,
            credentials.expected(200),
            &format!("/cluster/leader {credentials:?}"),
        );
    }

    // gRPC: Kv and Admin.Stop/Start/TransferLeader need the token, Admin.Status does not.
    let mut kv = cluster.kv(follower).await;
    let mut admin = cluster.admin(follower).await;
    for credentials in [Credentials::None, Credentials::Wrong, Credentials::Right] {
        let put = PutRequest {
            key: "g".into(),
            value: "v".into(),
            precondition: None,
        };
        assert_eq!(
            code(kv.put(credentials.grpc(put)).await),
            credentials.grpc_code(),
            "Put {credentials:?}"
        );
        let get = GetRequest {
            key: "g".into(),
            stale: false,
        };
        assert_eq!(
            code(kv.get(credentials.grpc(get)).await),
            credentials.grpc_code(),
            "Get {credentials:?}"
        );
        let delete = DeleteRequest {
            key: "g".into(),
            precondition: None,
        };
        assert_eq!(
            code(kv.delete(credentials.grpc(delete)).await),
            credentials.grpc_code(),
            "Delete {credentials:?}"
        );
        assert_eq!(
            code(admin.stop(credentials.grpc(StopRequest {})).await),
            credentials.grpc_code(),
            "Stop {credentials:?}"
        );
        assert_eq!(
            code(admin.start(credentials.grpc(StartRequest {})).await),
            credentials.grpc_code(),
            "Start {credentials:?}"
        );
        let watch = distraft::proto::v1::WatchRequest {
            key: "k".to_string(),
            prefix: false,
            start_index: 0,
        };
        assert_eq!(
            code(kv.watch(credentials.grpc(watch)).await),
            credentials.grpc_code(),
            "Watch {credentials:?}"
        );
        let transfer = distraft::proto::v1::TransferLeaderRequest {
            to: leader_name.clone(),
        };
        assert_eq!(
            code(admin.transfer_leader(credentials.grpc(transfer)).await),
            credentials.grpc_code(),
            "TransferLeader {credentials:?}"
        );
        let status = admin
            .status(credentials.grpc(distraft::proto::v1::StatusRequest {}))
            .await;
        assert!(status.is_ok(), "Status {credentials:?}: {status:?}");
    }

    // DNS rebinding: a page of evil.example resolved to this node; the right token
    // does not help (a browser would not have it anyway).
    for path in ["/", "/k"] {
        let request = http
            .get(format!("{base}{path}"))
            .header("host", "evil.example:5000");
        let answer = send(&cluster, request, Credentials::Right).await;
        assert_json_error(&answer, 421, &format!("Host evil.example {path}"));
    }
    let localhost = http.get(format!("{base}/")).header(
        "host",
        format!("localhost:{}", cluster.nodes[follower].http_port),
    );
    assert_eq!(send(&cluster, localhost, Credentials::None).await.0, 200);

    // CORS: the allowed origin's preflight succeeds, on every route; another origin
    // gets no CORS header; errors carry the CORS headers too.
    for path in ["/", "/k", "/stop", "/start"] {
        let preflight = |origin: &str| {
            http.request(reqwest::Method::OPTIONS, format!("{base}{path}"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                )
                .send()
        };
        let allowed = preflight(VIEWER).await.unwrap();
        assert!(allowed.status().is_success(), "{path}: {allowed:?}");
        assert_eq!(
            allowed
                .headers()
                .get("access-control-allow-origin")
                .unwrap(),
            VIEWER
        );
        let refused = preflight("http://evil.example").await.unwrap();
        assert!(
            refused
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{path}: {refused:?}"
        );
    }
    let unauthorized = http
        .get(format!("{base}/k"))
        .header("origin", VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(
        unauthorized
            .headers()
            .get("access-control-allow-origin")
            .unwrap(),
        VIEWER
    );
}

/// Reads one HTTP answer (head and `content-length` body) from `stream`.
async fn read_answer(stream: &mut TcpStream) -> Result<(u16, Value), String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| format!("no content-length: {head}"))?;
            if buffer.len() >= end + 4 + length {
                let code = head
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| format!("no status: {head}"))?;
                let body = serde_json::from_slice(&buffer[end + 4..end + 4 + length])
                    .map_err(|e| format!("not JSON: {e}"))?;
                return Ok((code, body));
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) => return Err(format!("closed after {buffer:?}")),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn get_status(stream: &mut TcpStream) -> Result<(u16, Value), String> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    read_answer(stream).await
}

/// With no configuration (the quick start) everything is open; the connection cap
/// answers a connection past it with a quick 503 while the open ones keep working;
/// a body that stalls gets a 408 within the body-read timeout.
#[tokio::test]
async fn the_edges_are_bounded_and_the_defaults_open() {
    const CAP: usize = 4;
    let cluster = Cluster::start_with(
        1,
        &[
            ("DISTRAFT_MAX_HTTP_CONNECTIONS", "4"),
            ("DISTRAFT_BODY_READ_TIMEOUT", "1"),
        ],
    )
    .await;
    let http = cluster.http();
    let base = cluster.url(0);
    let address = format!("127.0.0.1:{}", cluster.nodes[0].http_port);

    // Defaults: no token, every origin, localhost and IP literals allowed.
    assert_eq!(cluster.put(0, "open", "yes").await.0, 200);
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{base}/open"))
        .header("origin", "http://any.example")
        .header("access-control-request-method", "DELETE")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{preflight:?}");
    assert!(preflight
        .headers()
        .contains_key("access-control-allow-origin"));
    let localhost = http.get(format!("{base}/open")).header("host", "localhost");
    assert_eq!(cluster.answer(localhost).await.0, 200);
    let rebound = http
        .get(format!("{base}/open"))
        .header("host", "evil.example");
    assert_json_error(&cluster.answer(rebound).await, 421, "Host evil.example");

    // Fill the cap (the harness's own client may hold a connection too); the first
    // connection past it is answered 503 at once and closed.
    let mut working = TcpStream::connect(&address).await.unwrap();
    assert_eq!(get_status(&mut working).await.unwrap().0, 200);
    let mut idle = Vec::new();
    let refused = loop {
        assert!(
            idle.len() < CAP,
            "no connection was refused past the cap of {CAP}"
        );
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let started = Instant::now();
        let mut answer = Box::pin(read_answer(&mut stream));
        match tokio::time::timeout(Duration::from_millis(500), &mut answer).await {
            Ok(result) => break (result, started.elapsed()),
            Err(_) => {
                drop(answer);
                idle.push(stream);
            }
        }
    };
    let (answer, took) = refused;
    let answer = answer.unwrap();
    assert_json_error(&answer, 503, "past the connection cap");
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    // The connections inside the cap still work.
    assert_eq!(get_status(&mut working).await.unwrap().0, 200);

    // Once connections close, new ones are accepted again.
    drop(idle);
    drop(working);
    let mut stream = eventually(CONVERGE, || async {
        let mut stream = TcpStream::connect(&address)
            .await
            .map_err(|e| e.to_string())?;
        match get_status(&mut stream).await? {
            (200, _) => Ok(stream),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();

    // A body announced but never sent: a 408 within the body-read timeout (1 s).
    let head = "POST /slow HTTP/1.1\r\nhost: 127.0.0.1\r\n\
                content-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\nvalue=ab";
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut stream))
        .await
        .expect("no answer to a stalled body within 10 s")
        .unwrap();
    assert_json_error(&answer, 408, "stalled body");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    assert_eq!(cluster.get(0, "slow").await.0, 404);
}
