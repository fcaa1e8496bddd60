//! The gateway against fake in-memory Kv/Admin services: JSON shapes, input validation
//! (which must never reach the services), status code mapping, CORS, and hyper's own
//! rejections over a real connection.

use super::body::MAX_DISCARD_BYTES;
use super::decode::DecodeError;
use super::guard::MAX_HEADER_BYTES;
use super::*;
use crate::proto::v1::{
    DeleteResponse, FollowerLag, GetResponse, Member, PutResponse, StartResponse, StatusResponse,
    StopResponse, TransferLeaderRequest, TransferLeaderResponse,
};
use std::{collections::HashMap, sync::Mutex, time::Instant};
use tonic::{Code, Request, Status};

/// An in-memory stand-in for a node's services. `Get` of the key `hang` never answers,
/// of `broken` fails as a broken connection does; `Put` of the key `unavailable` fails
/// as a leaderless node would.
#[derive(Default)]
struct FakeNode {
    data: Mutex<HashMap<String, String>>,
    writes: Mutex<usize>,
    /// Kv requests that came without the gateway's mark of a checked request (the
    /// real service would check them a second time).
    unmarked: Mutex<usize>,
}

impl FakeNode {
    fn note_mark<M>(&self, request: &Request<M>) {
        if !validation::is_checked(request) {
            *self.unmarked.lock().unwrap() += 1;
        }
    }
}

#[tonic::async_trait]
impl Kv for Arc<FakeNode> {
    type WatchStream = crate::rpc::WatchStream;

    async fn watch(
        &self,
        _: Request<crate::proto::v1::WatchRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("the fake node has no watches"))
    }

    async fn get(
        &self,
        request: Request<GetRequest>,
    ) -> Result<tonic::Response<GetResponse>, Status> {
        self.note_mark(&request);
        let GetRequest { key, .. } = request.into_inner();
        if key == "hang" {
            std::future::pending::<()>().await;
        }
        if key == "broken" {
            return Err(Status::unknown("connection reset"));
        }
        match self.data.lock().unwrap().get(&key) {
            Some(value) => Ok(tonic::Response::new(GetResponse {
                key,
                value: value.clone(),
                found: true,
                create_index: 5,
                mod_index: 7,
                version: 2,
                index: 9,
            })),
            None => Err(Status::not_found(format!("key not found: {key}"))),
        }
    }

    async fn put(
        &self,
        request: Request<PutRequest>,
    ) -> Result<tonic::Response<PutResponse>, Status> {
        self.note_mark(&request);
        let PutRequest { key, value, .. } = request.into_inner();
        if key == "unavailable" {
            return Err(Status::unavailable("no leader"));
        }
        if key == "conflict" {
            let current = crate::kv::Versioned {
                value: "theirs".to_string(),
                versions: crate::kv::Versions {
                    create_index: 3,
                    mod_index: 4,
                    version: 2,
                },
            };
            return Err(crate::rpc::status_of(
                crate::driver::RequestError::PreconditionFailed {
                    key,
                    current: Some(current),
                },
            ));
        }
        *self.writes.lock().unwrap() += 1;
        self.data.lock().unwrap().insert(key.clone(), value.clone());
        Ok(tonic::Response::new(PutResponse {
            key,
            value,
            index: 7,
            create_index: 5,
            version: 2,
        }))
    }

    async fn txn(
        &self,
        _: Request<crate::proto::v1::TxnRequest>,
    ) -> Result<tonic::Response<crate::proto::v1::TxnResponse>, Status> {
        Err(Status::unimplemented("the fake node has no transactions"))
    }

    async fn list(
        &self,
        request: Request<crate::proto::v1::ListRequest>,
    ) -> Result<tonic::Response<crate::proto::v1::ListResponse>, Status> {
        self.note_mark(&request);
        let request = request.into_inner();
        let data = self.data.lock().unwrap();
        let mut keys: Vec<_> = data
            .iter()
            .filter(|(key, _)| key.starts_with(&request.prefix) && **key > request.after)
            .map(|(key, value)| crate::proto::v1::KeyValue {
                key: key.clone(),
                value: match request.keys_only {
                    true => String::new(),
                    false => value.clone(),
                },
                create_index: 1,
                mod_index: 2,
                version: 3,
            })
            .collect();
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        let limit = request.limit.max(1) as usize;
        let next = match keys.len() > limit {
            true => keys[limit - 1].key.clone(),
            false => String::new(),
        };
        keys.truncate(limit);
        Ok(tonic::Response::new(crate::proto::v1::ListResponse {
            keys,
            next,
            index: 11,
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<tonic::Response<DeleteResponse>, Status> {
        self.note_mark(&request);
        let DeleteRequest { key, .. } = request.into_inner();
        *self.writes.lock().unwrap() += 1;
        let existed = self.data.lock().unwrap().remove(&key).is_some();
        Ok(tonic::Response::new(DeleteResponse {
            key,
            existed,
            index: 8,
        }))
    }
}

#[tonic::async_trait]
impl Admin for Arc<FakeNode> {
    type BackupStream = crate::rpc::BackupChunks;

    // Backups are tested on real nodes (integration-tests/backup.rs).
    async fn backup(
        &self,
        _: Request<crate::proto::v1::BackupRequest>,
    ) -> Result<tonic::Response<crate::rpc::BackupChunks>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn stop(&self, _: Request<StopRequest>) -> Result<tonic::Response<StopResponse>, Status> {
        Ok(tonic::Response::new(StopResponse {}))
    }

    async fn start(
        &self,
        _: Request<StartRequest>,
    ) -> Result<tonic::Response<StartResponse>, Status> {
        Ok(tonic::Response::new(StartResponse {}))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<tonic::Response<TransferLeaderResponse>, Status> {
        let to = request.into_inner().to;
        if to == "nobody" {
            return Err(Status::not_found("no member is named \"nobody\""));
        }
        Ok(tonic::Response::new(TransferLeaderResponse {
            leader: if to.is_empty() { "server2".into() } else { to },
            previous: "server1".into(),
        }))
    }

    // The membership routes are tested on real nodes (integration-tests/members.rs).
    async fn list_members(
        &self,
        _: Request<crate::proto::v1::ListMembersRequest>,
    ) -> Result<tonic::Response<crate::proto::v1::ListMembersResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn add_member(
        &self,
        _: Request<crate::proto::v1::AddMemberRequest>,
    ) -> Result<tonic::Response<crate::proto::v1::MemberChangeResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn promote_member(
        &self,
        _: Request<crate::proto::v1::PromoteMemberRequest>,
    ) -> Result<tonic::Response<crate::proto::v1::MemberChangeResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn remove_member(
        &self,
        _: Request<crate::proto::v1::RemoveMemberRequest>,
    ) -> Result<tonic::Response<crate::proto::v1::MemberChangeResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn status(
        &self,
        _: Request<StatusRequest>,
    ) -> Result<tonic::Response<StatusResponse>, Status> {
        let member = |n: u32| Member {
            peer_host: "127.0.0.1".into(),
            peer_port: 9000 + n,
            client_host: "127.0.0.1".into(),
            client_port: 5000 + n,
            id: u64::from(n),
        };
        Ok(tonic::Response::new(StatusResponse {
            learners: HashMap::new(),
            id: "server1".into(),
            state: "Leader".into(),
            term: 3,
            is_leader: true,
            leader: "server1".into(),
            commit_index: 5,
            last_applied: 5,
            last_log_index: 6,
            last_log_term: 3,
            match_index: HashMap::from([("server2".to_string(), 5)]),
            next_index: HashMap::from([("server2".to_string(), 6)]),
            members: HashMap::from([
                ("server1".to_string(), member(1)),
                ("server2".to_string(), member(2)),
            ]),
            up: true,
            snapshot_index: 0,
            state_digest: "00ff".into(),
            voting: true,
            cluster_id: "0123456789abcdef".into(),
            state_bytes: 42,
            alarm: String::new(),
            keys: 3,
            followers: HashMap::from([(
                "server2".to_string(),
                FollowerLag {
                    lag_entries: 1,
                    lag_ms: 20,
                    last_ack_ms: Some(5),
                },
            )]),
            quorum_ack_ms: Some(5),
            proposals_pending: 0,
            reads_total: 10,
            writes_total: 4,
            backup: None,
        }))
    }
}

/// A fake node and the gateway's backend calling it.
fn fake_node() -> (Arc<FakeNode>, Backend) {
    let node = Arc::new(FakeNode::default());
    let admin: Arc<dyn Admin<BackupStream = crate::rpc::BackupChunks>> = Arc::new(node.clone());
    let (_, stopping) = tokio::sync::watch::channel(false);
    let no_others: crate::dashboard::Members = Arc::new(|| crate::dashboard::MemberList {
        others: Vec::new(),
        learners: Vec::new(),
    });
    let dashboard = Dashboard::new("server1".into(), admin.clone(), no_others, None, stopping);
    let backend = Backend {
        kv: Arc::new(node.clone()),
        admin,
        dashboard: Arc::new(dashboard),
    };
    (node, backend)
}

fn settings() -> GatewaySettings {
    GatewaySettings {
        request_rules: RequestRules {
            max_key_bytes: 16,
            max_value_bytes: 32,
        },
        request_timeout: Duration::from_millis(300),
        pretty: false,
        ..GatewaySettings::default()
    }
}

/// Sends a request, returning the status and the parsed JSON body.
async fn send(
    routes: &(impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone + 'static),
    request: warp::test::RequestBuilder,
) -> (StatusCode, Value) {
    let response = request.reply(routes).await;
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "every answer is JSON: {response:?}"
    );
    let body: Value = serde_json::from_slice(response.body()).unwrap();
    (response.status(), body)
}

fn post_form(path: &str, body: &str) -> warp::test::RequestBuilder {
    warp::test::request()
        .method("POST")
        .path(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
}

fn assert_error(answer: (StatusCode, Value), status: StatusCode, fragment: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["ok"], false, "{}", answer.1);
    let error = answer.1["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(fragment),
        "error {error:?} lacks {fragment:?}"
    );
}

#[tokio::test]
async fn status_has_every_original_field_with_its_type() {
    let (_, backend) = fake_node();
    let routes = routes(settings(), backend);
    let (code, body) = send(&routes, warp::test::request().path("/")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["ok"], true);
    let status = &body["status"];
    for field in [
        "commit_index",
        "last_applied",
        "last_log_index",
        "last_log_term",
        "term",
    ] {
        assert!(status[field].is_u64(), "{field}: {status}");
    }
    for field in ["id", "leader", "state"] {
        assert!(status[field].is_string(), "{field}: {status}");
    }
    assert_eq!(status["is_leader"], true);
    assert_eq!(status["up"], true);
    assert_eq!(status["match_index"], json!({"server2": 5}));
    assert_eq!(status["next_index"], json!({"server2": 6}));
    assert_eq!(
        status["members"]["server2"],
        json!(["127.0.0.1", 9002, "127.0.0.1", 5002])
    );
    assert_eq!(status["snapshot_index"], 0);
    assert_eq!(status["state_digest"], "00ff");
    assert_eq!(status["voting"], true);
    assert_eq!(status["cluster_id"], "0123456789abcdef");
    assert_eq!(status["state_bytes"], 42);
    assert_eq!(status["alarm"], "");
}

#[tokio::test]
async fn put_get_delete_round_trip_with_decoded_keys_and_values() {
    let (node, backend) = fake_node();
    let routes = routes(settings(), backend);
    // A path keeps '+', a form body turns it into a space.
    let (code, body) = send(&routes, post_form("/a%20b+%C3%A9", "value=x+y%26z&other=1")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"ok": true, "key": "a b+é", "value": "x y&z", "create_index": 5, "mod_index": 7, "version": 2})
    );
    assert_eq!(
        node.data.lock().unwrap().get("a b+é").map(String::as_str),
        Some("x y&z")
    );

    let (code, body) = send(&routes, warp::test::request().path("/a%20b+%C3%A9")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        body,
        json!({"ok": true, "key": "a b+é", "value": "x y&z", "create_index": 5, "mod_index": 7, "version": 2})
    );

    let delete = || warp::test::request().method("DELETE").path("/a%20b+%C3%A9");
    let (code, body) = send(&routes, delete()).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        body,
        json!({"ok": true, "key": "a b+é", "existed": true, "index": 8})
    );
    let (_, body) = send(&routes, delete()).await;
    assert_eq!(body["existed"], false);

    let missing = send(&routes, warp::test::request().path("/a%20b+%C3%A9")).await;
    assert_error(missing, StatusCode::NOT_FOUND, "not found");
}

/// The gateway checks a request's key and value itself and marks the Kv requests it
/// makes, so that the in-process service does not check them a second time (the
/// service's side: `validation::tests`).
#[tokio::test]
async fn kv_requests_reach_the_service_marked_as_checked() {
    let (node, backend) = fake_node();
    let routes = routes(settings(), backend);
    let requests = [
        post_form("/k", "value=v"),
        warp::test::request().path("/k"),
        warp::test::request().path("/k?stale=true"),
        warp::test::request().method("DELETE").path("/k"),
    ];
    for request in requests {
        let (code, body) = send(&routes, request).await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    assert_eq!(*node.writes.lock().unwrap(), 2);
    assert_eq!(*node.unmarked.lock().unwrap(), 0);
}

#[tokio::test]
async fn stop_and_start_answer_ok() {
    let (_, backend) = fake_node();
    let routes = routes(settings(), backend);
    for path in ["/stop", "/start"] {
        let (code, body) = send(&routes, warp::test::request().path(path)).await;
        assert_eq!((code, body), (StatusCode::OK, json!({"ok": true})));
    }
}

#[tokio::test]
async fn bad_input_is_rejected_before_reaching_the_cluster() {
    let (node, backend) = fake_node();
    let routes = routes(settings(), backend);
    let bad_requests = [
        (
            post_form("/k", ""),
            StatusCode::BAD_REQUEST,
            "missing form field",
        ),
        (
            post_form("/k", "other=1"),
            StatusCode::BAD_REQUEST,
            "missing form field",
        ),
        (
            post_form("/k", "value="),
            StatusCode::BAD_REQUEST,
            "the value is empty",
        ),
        (
            post_form("/k", "value=%zz"),
            StatusCode::BAD_REQUEST,
            "invalid value",
        ),
        (
            post_form("/k", "value=%4"),
            StatusCode::BAD_REQUEST,
            "invalid value",
        ),
        (
            post_form("/k", "value=%FF"),
            StatusCode::BAD_REQUEST,
            "UTF-8",
        ),
        (
            post_form("/k%", "value=v"),
            StatusCode::BAD_REQUEST,
            "invalid key",
        ),
        (
            post_form("/k%C3", "value=v"),
            StatusCode::BAD_REQUEST,
            "UTF-8",
        ),
        (
            warp::test::request()
                .method("POST")
                .path("/k")
                .header("content-type", "text/plain")
                .body("v"),
            StatusCode::BAD_REQUEST,
            "form body",
        ),
        (
            warp::test::request()
                .method("POST")
                .path("/k")
                .body("value=v"),
            StatusCode::BAD_REQUEST,
            "form body",
        ),
        (
            post_form("/12345678901234567", "value=v"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "the key is 17 bytes, more than the limit of 16",
        ),
        (
            post_form("/k", &format!("value={}", "v".repeat(33))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "the value is 33 bytes, more than the limit of 32",
        ),
        (
            post_form("/k", &format!("value={}", "%41".repeat(33))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "value is 33 bytes",
        ),
        (
            post_form("/k", &"v".repeat(2000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body is larger",
        ),
    ];
    for (request, status, fragment) in bad_requests {
        assert_error(send(&routes, request).await, status, fragment);
    }
    // A rejected body is read to its end, so the connection stays usable; one too
    // large even to discard closes it.
    let discarded = post_form("/k", &"v".repeat(2000)).reply(&routes).await;
    assert_eq!(discarded.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(discarded.headers().get(header::CONNECTION), None);
    let huge = post_form("/k", "value=v")
        .header("content-length", (MAX_DISCARD_BYTES + 2000).to_string())
        .reply(&routes)
        .await;
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let connection = huge.headers().get(header::CONNECTION);
    assert_eq!(connection.map(|v| v.as_bytes()), Some(&b"close"[..]));
    for path in ["/%zz", "/%FF", "/12345678901234567"] {
        let answer = send(&routes, warp::test::request().path(path)).await;
        assert!(answer.0.is_client_error(), "GET {path}: {answer:?}");
        let answer = send(&routes, warp::test::request().method("DELETE").path(path)).await;
        assert!(answer.0.is_client_error(), "DELETE {path}: {answer:?}");
    }
    assert_eq!(
        *node.writes.lock().unwrap(),
        0,
        "a bad request reached the cluster"
    );
    // The boundaries themselves are accepted.
    let (code, body) = send(
        &routes,
        post_form("/1234567890123456", &format!("value={}", "v".repeat(32))),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn what_warp_rejects_by_itself_is_json_too() {
    let (_, backend) = fake_node();
    let routes = routes(settings(), backend);
    let no_route = send(&routes, warp::test::request().path("/a/b")).await;
    assert_error(no_route, StatusCode::NOT_FOUND, "no such route");
    let wrong_method = send(&routes, warp::test::request().method("PUT").path("/k")).await;
    assert_error(wrong_method, StatusCode::METHOD_NOT_ALLOWED, "method");
    let post_root = send(&routes, post_form("/", "value=v")).await;
    assert_error(post_root, StatusCode::METHOD_NOT_ALLOWED, "method");
    let bad_query = send(&routes, warp::test::request().path("/k?stale=maybe")).await;
    assert_error(bad_query, StatusCode::BAD_REQUEST, "query");
    let huge_header = warp::test::request()
        .path("/")
        .header("x-filler", "f".repeat(MAX_HEADER_BYTES + 1));
    let huge_header = send(&routes, huge_header).await;
    assert_error(
        huge_header,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers",
    );
}

#[tokio::test]
async fn cluster_failures_map_to_503_within_the_timeout() {
    let (_, backend) = fake_node();
    let routes = routes(settings(), backend);
    let no_leader = send(&routes, post_form("/unavailable", "value=v")).await;
    assert_error(no_leader, StatusCode::SERVICE_UNAVAILABLE, "no leader");

    let started = Instant::now();
    let hung = send(&routes, warp::test::request().path("/hang")).await;
    assert_eq!(hung.0, StatusCode::SERVICE_UNAVAILABLE, "{}", hung.1);
    let bound = settings().request_timeout + DEADLINE_GRACE + Duration::from_millis(500);
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());

    let broken = send(&routes, warp::test::request().path("/broken")).await;
    assert_error(broken, StatusCode::SERVICE_UNAVAILABLE, "connection");
}

#[tokio::test]
async fn pretty_printing_and_cors() {
    let (_, backend) = fake_node();
    let pretty = GatewaySettings {
        pretty: true,
        ..settings()
    };
    let routes = routes(pretty, backend);
    let response = warp::test::request()
        .path("/stop")
        .header("origin", "http://dashboard.example")
        .reply(&routes)
        .await;
    assert_eq!(response.body().as_ref(), b"{\n  \"ok\": true\n}\n");
    assert!(response
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));

    let preflight = warp::test::request()
        .method("OPTIONS")
        .path("/k")
        .header("origin", "http://dashboard.example")
        .header("access-control-request-method", "DELETE")
        .reply(&routes)
        .await;
    assert_eq!(preflight.status(), StatusCode::OK);
    assert!(preflight
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));

    let error = warp::test::request()
        .path("/a/b")
        .header("origin", "http://dashboard.example")
        .reply(&routes)
        .await;
    assert_eq!(error.status(), StatusCode::NOT_FOUND);
    assert!(
        error
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
        "errors are readable cross-origin"
    );
}

#[test]
fn grpc_codes_map_to_http() {
    let cases = [
        (Code::InvalidArgument, StatusCode::BAD_REQUEST),
        (Code::NotFound, StatusCode::NOT_FOUND),
        (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
        (Code::DeadlineExceeded, StatusCode::SERVICE_UNAVAILABLE),
        (Code::Cancelled, StatusCode::SERVICE_UNAVAILABLE),
        (Code::Unknown, StatusCode::SERVICE_UNAVAILABLE),
        // Load (the forwarding cap, load shedding): try again soon.
        (Code::ResourceExhausted, StatusCode::SERVICE_UNAVAILABLE),
        (Code::Internal, StatusCode::INTERNAL_SERVER_ERROR),
    ];
    for (code, http) in cases {
        assert_eq!(
            ApiError::from(Status::new(code, "x")).status,
            http,
            "{code:?}"
        );
    }
    // The quota or a full disk: marked as storage by the Kv service.
    let mut storage = Status::resource_exhausted("quota exceeded");
    storage.metadata_mut().insert(
        crate::rpc::INSUFFICIENT_STORAGE,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    assert_eq!(
        ApiError::from(storage).status,
        StatusCode::INSUFFICIENT_STORAGE
    );
    assert_eq!(
        ApiError::from(Status::new(Code::Unavailable, "")).message,
        "The service is currently unavailable"
    );
}

#[test]
fn strict_percent_decoding() {
    assert_eq!(percent_decode_utf8(b"a%20b+c", false).unwrap(), "a b+c");
    assert_eq!(percent_decode_utf8(b"a%20b+c", true).unwrap(), "a b c");
    assert_eq!(percent_decode_utf8(b"%e2%82%AC", false).unwrap(), "€");
    assert_eq!(
        percent_decode_utf8(b"%+1", false),
        Err(DecodeError::BadEscape(0))
    );
    assert_eq!(
        percent_decode_utf8(b"ab%", false),
        Err(DecodeError::BadEscape(2))
    );
    assert_eq!(
        percent_decode_utf8(b"%c3%28", false),
        Err(DecodeError::NotUtf8)
    );
}

/// Every origin `DISTRAFT_CORS_ORIGINS` accepts is one warp can use (its parser panics
/// on others), and exactly those get the CORS headers.
#[tokio::test]
async fn configured_cors_origins_are_usable() {
    let origins = "http://viewer.example:8080, https://[::1]:3000, http://10.0.0.1, https://a-b.c/";
    let args = crate::access::AccessArgs {
        api_token: None,
        api_token_file: None,
        cors_origins: origins.to_string(),
        allowed_hosts: None,
    };
    let settings = GatewaySettings {
        access: Access::from_args(&args, &[], &[]).unwrap(),
        ..settings()
    };
    let (_, backend) = fake_node();
    let routes = routes(settings, backend);
    let preflight = |origin: &'static str| {
        warp::test::request()
            .method("OPTIONS")
            .path("/k")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .reply(&routes)
    };
    for allowed in [
        "http://viewer.example:8080",
        "https://[::1]:3000",
        "http://10.0.0.1",
        "https://a-b.c",
    ] {
        let answer = preflight(allowed).await;
        assert_eq!(answer.status(), StatusCode::OK, "{allowed}");
        assert_eq!(
            answer.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            allowed
        );
    }
    let refused = preflight("http://viewer.example").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(!refused
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
}

fn post_json(path: &str, body: &str) -> warp::test::RequestBuilder {
    warp::test::request()
        .method("POST")
        .path(path)
        .header("content-type", "application/json")
        .body(body)
}

#[tokio::test]
async fn a_json_body_puts_like_a_form() {
    let (node, backend) = fake_node();
    let routes = routes(settings(), backend);
    let (code, body) = send(
        &routes,
        post_json("/k", r#"{"value": "x y&z", "other": 1}"#),
    )
    .await;
    assert_eq!(
        (code, body),
        (
            StatusCode::OK,
            json!({"ok": true, "key": "k", "value": "x y&z", "create_index": 5, "mod_index": 7, "version": 2})
        )
    );
    for (bad, fragment) in [
        (r#"{"value": 1}"#, "JSON string"),
        (r#"{"value": null}"#, "missing JSON member"),
        (r#"["value"]"#, "invalid JSON body"),
        (r#"{"value": "ab"#, "invalid JSON body"),
        (r#"{"value": ""}"#, "the value is empty"),
        (
            r#"{"value": "this value is longer than thirty-two bytes"}"#,
            "more than the limit",
        ),
    ] {
        let answer = send(&routes, post_json("/k", bad)).await;
        let status = match fragment {
            "more than the limit" => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        assert_error(answer, status, fragment);
    }
    assert_eq!(
        *node.writes.lock().unwrap(),
        1,
        "bad input reached the service"
    );
}

#[tokio::test]
async fn metrics_and_health_answer_in_their_own_formats() {
    let (_, backend) = fake_node();
    let routes = routes(settings(), backend);
    let response = warp::test::request().path("/metrics").reply(&routes).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        crate::metrics::CONTENT_TYPE
    );
    let text = String::from_utf8_lossy(response.body()).into_owned();
    assert!(text.contains("distraft_server_is_leader 1"), "{text}");

    for path in ["/livez", "/readyz"] {
        let response = warp::test::request().path(path).reply(&routes).await;
        assert_eq!(
            (response.status(), response.body().as_ref()),
            (StatusCode::OK, &b"ok\n"[..])
        );
    }
    let response = warp::test::request()
        .path("/readyz?verbose")
        .reply(&routes)
        .await;
    let text = String::from_utf8_lossy(response.body()).into_owned();
    assert!(
        text.starts_with("[+]driver ok\n") && text.ends_with("readyz check passed\n"),
        "{text}"
    );
    // Other methods on those names are the key routes, as for /stop.
    let (code, _) = send(&routes, post_form("/metrics", "value=v")).await;
    assert_eq!(code, StatusCode::OK);
}

#[test]
fn http_metrics_label_routes_not_paths() {
    let get = Method::GET;
    assert_eq!(route_name(&get, "/"), "/");
    assert_eq!(route_name(&get, "/metrics"), "/metrics");
    assert_eq!(route_name(&Method::POST, "/metrics"), "/{key}");
    assert_eq!(route_name(&get, "/some%20key"), "/{key}");
    assert_eq!(route_name(&get, "/ui/"), "/ui");
    assert_eq!(route_name(&get, "/ui/api/events"), "/ui");
    assert_eq!(route_name(&get, "/a/b"), "other");
    assert_eq!(route_name(&get, "/stop"), "/stop");
    assert_eq!(route_name(&get, "/v1/kv/stop"), "/v1/kv/{key}");
    assert_eq!(route_name(&get, "/v1/kv/a/b"), "other");
}

/// Every key has the path `/v1/kv/<key>`, the names of the operations routes too.
#[tokio::test]
async fn every_key_is_reachable_under_v1_kv() {
    let (node, backend) = fake_node();
    let routes = routes(settings(), backend);
    for key in ["stop", "metrics", "a%2Fb", "v1"] {
        let path = format!("/v1/kv/{key}");
        let (code, body) = send(&routes, post_form(&path, "value=x")).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let (code, body) = send(&routes, warp::test::request().path(&path)).await;
        assert_eq!((code, body["value"].clone()), (StatusCode::OK, json!("x")));
    }
    assert!(node.data.lock().unwrap().contains_key("a/b"));
    let (code, body) = send(
        &routes,
        warp::test::request().method("DELETE").path("/v1/kv/stop"),
    )
    .await;
    assert_eq!(
        (code, body["existed"].clone()),
        (StatusCode::OK, json!(true))
    );
    let nested = send(&routes, warp::test::request().path("/v1/kv/a/b")).await;
    assert_error(nested, StatusCode::NOT_FOUND, "no such route");
}

/// A key's answers carry its ETag and the index they reflect; the conditional headers
/// are checked before anything is sent, and a failed precondition is 412 with the key
/// as the write found it.
#[tokio::test]
async fn versions_and_conditional_writes_over_http() {
    let (node, backend) = fake_node();
    let routes = routes(settings(), backend);
    let header_of = |response: &warp::http::Response<bytes::Bytes>, name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };

    let put = post_form("/k", "value=v").header("if-match", "\"6\"");
    let response = put.reply(&routes).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_of(&response, "etag").as_deref(), Some("\"7\""));
    assert_eq!(
        header_of(&response, "x-distraft-index").as_deref(),
        Some("7")
    );
    let response = warp::test::request().path("/k").reply(&routes).await;
    assert_eq!(header_of(&response, "etag").as_deref(), Some("\"7\""));
    assert_eq!(
        header_of(&response, "x-distraft-index").as_deref(),
        Some("9")
    );

    let response = post_form("/conflict", "value=mine")
        .header("if-none-match", "*")
        .reply(&routes)
        .await;
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(header_of(&response, "etag").as_deref(), Some("\"4\""));
    let body: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(
        body,
        json!({
            "ok": false,
            "error": "precondition failed: key \"conflict\" has mod_index 4 (version 2)",
            "key": "conflict",
            "current": {"value": "theirs", "create_index": 3, "mod_index": 4, "version": 2},
        })
    );

    let writes = *node.writes.lock().unwrap();
    for (name, value) in [
        ("if-match", "7"),
        ("if-match", "W/\"7\""),
        ("if-match", "\"1\", \"2\""),
        ("if-none-match", "\"7\""),
    ] {
        let post = send(&routes, post_form("/k", "value=v").header(name, value)).await;
        assert_error(post, StatusCode::BAD_REQUEST, "If-");
        let delete = warp::test::request()
            .method("DELETE")
            .path("/k")
            .header(name, value);
        assert_error(send(&routes, delete).await, StatusCode::BAD_REQUEST, "If-");
    }
    let both = post_form("/k", "value=v")
        .header("if-match", "*")
        .header("if-none-match", "*");
    assert_error(
        send(&routes, both).await,
        StatusCode::BAD_REQUEST,
        "not both",
    );
    assert_eq!(*node.writes.lock().unwrap(), writes, "nothing was sent");
}
