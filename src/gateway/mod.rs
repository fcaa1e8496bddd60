//! The HTTP/JSON gateway: the original distraft API (`curl -L` keeps working), served
//! with warp on the client port and translated, route by route, into calls of *this*
//! node's Kv/Admin gRPC services — made in process, not over the network (a loopback
//! gRPC hop used to cost more CPU than the write itself) — which forward to the leader
//! themselves, so any node answers directly.
//!
//! | route            | gRPC          | success                                  |
//! |------------------|---------------|------------------------------------------|
//! | `GET /`          | Admin.Status  | `{"ok": true, "status": {...}}`          |
//! | `GET /stop`      | Admin.Stop    | `{"ok": true}`                           |
//! | `GET /start`     | Admin.Start   | `{"ok": true}`                           |
//! | `POST /cluster/leader` | Admin.TransferLeader | `{"ok": true, "leader": l, "previous": p}` |
//! | `GET /<key>`     | Kv.Get        | `{"ok": true, "key": k, "value": v, ...}`|
//! | `POST /<key>`    | Kv.Put        | `{"ok": true, "key": k, "value": v, ...}`|
//! | `DELETE /<key>`  | Kv.Delete     | `{"ok": true, "key": k, "existed": b}`   |
//! | `… /v1/kv/<key>` | the same      | the same, for every key (`stop` too)     |
//! | `GET /v1/watch`  | Kv.Watch      | long-poll `{"events": [...], "next": n}`, or server-sent events (`watch.rs`) |
//!
//! Key answers carry the key's versions, `ETag` and `X-Distraft-Index`; writes take
//! `If-Match` / `If-None-Match` (`conditions.rs`).
//!
//! Every failure, including the ones warp itself makes (unknown route, wrong method),
//! is `{"ok": false, "error": "..."}` with a fitting status code. All input is checked
//! here before any gRPC call, so bad input never reaches the log; the Kv requests are
//! marked as checked ([`crate::validation`]), so that the service does not check them
//! again.
//!
//! Access (see [`crate::access`] and docs/security.md): the `Host` header must be an
//! allowed name (else 421), every route but `GET /` needs the API token when one is set
//! (401 without, 403 with a wrong one), and CORS answers only the allowed origins.

mod backup;
mod body;
mod conditions;
mod dashboard;
mod decode;
mod guard;
mod members;
mod response;
mod server;
mod watch;

use body::{
    discard_body, form_value, json_value, optional_json_string, read_body_within, BodyFormat,
};
use conditions::{precondition_failed, version_headers, versions_json};
use dashboard::dashboard_routes;
use decode::percent_decode_utf8;
use guard::{allowed_host, authorized, check_request_size, cors, credentials};
use response::{
    error_response, json_response, json_response_with, rejection_response, text_response, ApiError,
};
pub use server::serve;

use crate::access::Access;
use crate::dashboard::Dashboard;
use crate::limits::Limits;
use crate::proto::v1::{
    admin_server::Admin, kv_server::Kv, DeleteRequest, GetRequest, ListRequest, Precondition,
    PutRequest, StartRequest, StatusRequest, StopRequest, TransferLeaderRequest, TxnRequest,
};
use crate::rpc::idempotency;
use crate::status::status_json;
use crate::validation::{self, RequestRules};
use bytes::Buf;
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};
use warp::{
    http::{header, HeaderName, HeaderValue, Method, StatusCode},
    reply::Response,
    Filter, Rejection, Reply,
};

/// What the gateway needs from the node's configuration.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The limits of keys and values (DISTRAFT_MAX_KEY_BYTES, DISTRAFT_MAX_VALUE_BYTES).
    pub request_rules: RequestRules,
    /// How long a request may wait for the cluster (DISTRAFT_REQUEST_TIMEOUT); after
    /// that it answers 503.
    pub request_timeout: Duration,
    /// Indent JSON answers (DISTRAFT_PRETTY_PRINT_RESPONSES).
    pub pretty: bool,
    /// API token, CORS origins, allowed Host names.
    pub access: Access,
    /// How long a client may take to send a request body (DISTRAFT_BODY_READ_TIMEOUT).
    pub body_read_timeout: Duration,
    /// Open connections accepted at once (DISTRAFT_MAX_HTTP_CONNECTIONS).
    pub max_connections: usize,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            request_rules: RequestRules::default(),
            request_timeout: Duration::from_secs(3),
            pretty: false,
            access: Access::default(),
            body_read_timeout: Limits::default().body_read_timeout,
            max_connections: Limits::default().max_http_connections,
        }
    }
}

/// Extra time the gateway waits beyond the request timeout it hands to the service,
/// so that the service's own, more precise answer normally arrives first.
const DEADLINE_GRACE: Duration = Duration::from_millis(500);

/// The services the gateway calls: the node's own Kv and Admin gRPC services, called in
/// process (the same code, deadlines and status codes as over gRPC).
#[derive(Clone)]
pub struct Backend {
    pub kv: Arc<dyn Kv<WatchStream = crate::rpc::WatchStream>>,
    pub admin: Arc<dyn Admin<BackupStream = crate::rpc::BackupChunks>>,
    /// The dashboard at `/ui/`, with its view of the other members.
    pub dashboard: Arc<Dashboard>,
}

/// Every route of the gateway, with JSON errors and CORS headers.
pub fn routes(
    settings: GatewaySettings,
    backend: Backend,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let pretty = settings.pretty;
    let access = Arc::new(settings.access.clone());
    let cors = cors(&access.cors);
    let allowed_host = allowed_host(access.clone());
    let authorized = authorized(access.clone());
    let credentials = credentials(access);
    let dashboard = dashboard_routes(backend.dashboard.clone(), authorized.clone(), pretty);
    let gateway = Arc::new(Gateway { backend, settings });
    let with_gateway = warp::any().map(move || gateway.clone());

    let api = operation_routes(with_gateway.clone(), authorized.clone())
        .or(dashboard)
        .unify()
        .or(cluster_routes(with_gateway.clone(), credentials.clone()))
        .unify()
        .or(members::member_routes(
            with_gateway.clone(),
            credentials.clone(),
        ))
        .unify()
        .or(list_route(with_gateway.clone(), authorized.clone()))
        .unify()
        .or(txn_route(with_gateway.clone(), credentials.clone()))
        .unify()
        .or(watch::watch_route(with_gateway.clone(), authorized.clone()))
        .unify()
        .or(backup::backup_route(
            with_gateway.clone(),
            authorized.clone(),
        ))
        .unify()
        .or(key_routes(with_gateway, authorized, credentials))
        .unify();
    // The first recover turns route rejections into JSON *inside* the CORS wrapper, so
    // that browsers can read those errors too; the second one catches what the CORS
    // filter itself rejects (a disallowed origin: no CORS headers). A preflight from an
    // allowed origin is answered by the CORS filter itself, on every route.
    check_request_size()
        .and(allowed_host)
        .and(api)
        .recover(move |rejection| async move {
            Ok::<_, Infallible>(rejection_response(rejection, pretty))
        })
        .unify()
        .with(cors)
        .recover(move |rejection| async move {
            Ok::<_, Infallible>(rejection_response(rejection, pretty))
        })
        .with(warp::log::custom(|info| {
            crate::metrics::metrics().http_request(
                route_name(info.method(), info.path()),
                info.method().as_str(),
                info.status().as_u16(),
                info.elapsed(),
            )
        }))
}

/// `/`, `/stop`, `/start`, `/metrics`, `/livez` and `/readyz`.
fn operation_routes(
    with_gateway: impl Filter<Extract = (Arc<Gateway>,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    authorized: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    // Operations routes, next to `/`, `/stop` and `/start`: GET of the keys `metrics`,
    // `livez` and `readyz` is theirs (those keys are read over gRPC).
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_gateway.clone())
        .then(|gw: Arc<Gateway>| async move { gw.metrics().await });
    let livez = warp::path!("livez")
        .and(warp::get())
        .and(verbose())
        .and(with_gateway.clone())
        .then(|verbose, gw: Arc<Gateway>| async move { gw.health(Probe::Live, verbose).await });
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(verbose())
        .and(with_gateway.clone())
        .then(|verbose, gw: Arc<Gateway>| async move { gw.health(Probe::Ready, verbose).await });

    let status = warp::path::end()
        .and(warp::get())
        .and(with_gateway.clone())
        .then(|gw: Arc<Gateway>| async move { gw.respond(gw.status().await) });
    let stop = warp::path!("stop")
        .and(warp::get())
        .and(authorized.clone())
        .and(with_gateway.clone())
        .then(|gw: Arc<Gateway>| async move { gw.respond(gw.stop().await) });
    let start = warp::path!("start")
        .and(warp::get())
        .and(authorized.clone())
        .and(with_gateway.clone())
        .then(|gw: Arc<Gateway>| async move { gw.respond(gw.start().await) });
    status
        .or(stop)
        .unify()
        .or(start)
        .unify()
        .or(metrics)
        .unify()
        .or(livez)
        .unify()
        .or(readyz)
        .unify()
}

/// `/cluster/…`: what changes the cluster rather than a key.
fn cluster_routes(
    with_gateway: impl Filter<Extract = (Arc<Gateway>,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    credentials: impl Filter<Extract = (Result<(), ApiError>,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    // Cluster operations live under `/cluster/`, which no key can be (a key is one
    // path segment, so `GET /cluster` is the key "cluster").
    let transfer = warp::path!("cluster" / "leader")
        .and(warp::post())
        .and(credentials.clone())
        .and(warp::header::optional::<u64>(
            header::CONTENT_LENGTH.as_str(),
        ))
        .and(warp::body::stream())
        .and(with_gateway.clone())
        .then(
            |authorized: Result<(), ApiError>, content_length, body, gw: Arc<Gateway>| async move {
                gw.respond(gw.transfer_leader(authorized, content_length, body).await)
            },
        );
    transfer
}

/// `GET`, `POST` and `DELETE /<key>`, and the same at `/v1/kv/<key>`: the path that
/// reaches every key, `stop` and `metrics` included (the single-segment routes of the
/// operations come first).
fn key_routes(
    with_gateway: impl Filter<Extract = (Arc<Gateway>,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    authorized: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
    credentials: impl Filter<Extract = (Result<(), ApiError>,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    // The path is matched before the method everywhere, so that an unknown path is a
    // 404 and a known path with the wrong method a 405.
    let key = warp::path::param::<String>()
        .and(warp::path::end())
        .or(warp::path!("v1" / "kv" / String))
        .unify();
    let get = key
        .and(warp::get())
        .and(authorized.clone())
        .and(warp::query::<GetOptions>())
        .and(with_gateway.clone())
        .then(
            |raw: String, options: GetOptions, gw: Arc<Gateway>| async move {
                gw.respond_with(gw.get(&raw, options.stale).await)
            },
        );
    // The body of a refused write is read and dropped (see `discard_body`), so the
    // token is checked inside the handler.
    let put = key
        .and(warp::post())
        .and(credentials)
        .and(conditions())
        .and(warp::header::optional::<String>(
            header::CONTENT_TYPE.as_str(),
        ))
        .and(warp::header::optional::<u64>(
            header::CONTENT_LENGTH.as_str(),
        ))
        .and(warp::body::stream())
        .and(with_gateway.clone())
        .then(
            |raw: String,
             authorized: Result<(), ApiError>,
             conditions: Conditions,
             content_type,
             content_length,
             body,
             gw: Arc<Gateway>| async move {
                let authorized = authorized.and_then(|()| conditions.precondition());
                let result = gw
                    .put(
                        &raw,
                        authorized,
                        conditions.idempotency_key,
                        content_type,
                        content_length,
                        body,
                    )
                    .await;
                gw.respond_with(result)
            },
        );
    let delete = key
        .and(warp::delete())
        .and(authorized)
        .and(conditions())
        .and(with_gateway)
        .then(
            |raw: String, conditions: Conditions, gw: Arc<Gateway>| async move {
                gw.respond_with(gw.delete(&raw, conditions).await)
            },
        );
    get.or(put).unify().or(delete).unify()
}

/// `GET /v1/keys`: a page of a listing (a path no key can be: two segments).
fn list_route(
    with_gateway: impl Filter<Extract = (Arc<Gateway>,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    authorized: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "keys")
        .and(warp::get())
        .and(authorized)
        .and(warp::query::<ListOptions>())
        .and(with_gateway)
        .then(|options: ListOptions, gw: Arc<Gateway>| async move {
            gw.respond_with(gw.list(options).await)
        })
}

/// `POST /v1/txn` with a JSON body: a transaction (a path no key can be).
fn txn_route(
    with_gateway: impl Filter<Extract = (Arc<Gateway>,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    credentials: impl Filter<Extract = (Result<(), ApiError>,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "txn")
        .and(warp::post())
        .and(credentials)
        .and(conditions())
        .and(warp::header::optional::<u64>(
            header::CONTENT_LENGTH.as_str(),
        ))
        .and(warp::body::stream())
        .and(with_gateway)
        .then(
            |authorized: Result<(), ApiError>,
             conditions: Conditions,
             content_length,
             body,
             gw: Arc<Gateway>| async move {
                // A transaction's conditions are its comparisons.
                let authorized = authorized.and_then(|()| match conditions.precondition()? {
                    Some(_) => Err(ApiError::bad_request(
                        "a transaction takes no If-Match or If-None-Match: put its conditions in \"compare\"",
                    )),
                    None => Ok(()),
                });
                let key = conditions.idempotency_key;
                gw.respond_with(gw.txn(authorized, key, content_length, body).await)
            },
        )
}

/// The JSON of `POST /v1/txn`: `{"compare": [...], "success": [...], "failure": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    #[serde(default)]
    compare: Vec<CompareBody>,
    #[serde(default)]
    success: Vec<TxnOpBody>,
    #[serde(default)]
    failure: Vec<TxnOpBody>,
}

/// `{"key": k, "value": v}`, `{"key": k, "version": n}` or `{"key": k, "mod_index": i}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareBody {
    key: String,
    value: Option<String>,
    version: Option<u64>,
    mod_index: Option<u64>,
}

/// `{"put": {"key": k, "value": v}}` or `{"delete": {"key": k}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnOpBody {
    put: Option<TxnPutBody>,
    delete: Option<TxnDeleteBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnPutBody {
    key: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnDeleteBody {
    key: String,
}

impl TxnBody {
    /// The request it stands for; a comparison or write that is not exactly one thing
    /// is refused.
    fn into_request(self) -> Result<TxnRequest, ApiError> {
        use crate::proto::v1::{compare::Target, txn_op::Op, Compare, TxnDelete, TxnOp, TxnPut};
        let compare = self
            .compare
            .into_iter()
            .map(|c| {
                let target = match (c.value, c.version, c.mod_index) {
                    (Some(value), None, None) => Target::Value(value),
                    (None, Some(version), None) => Target::Version(version),
                    (None, None, Some(index)) => Target::ModIndex(index),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                        "the comparison of {:?} needs exactly one of value, version and mod_index",
                        c.key
                    )))
                    }
                };
                Ok(Compare {
                    key: c.key,
                    target: Some(target),
                })
            })
            .collect::<Result<_, _>>()?;
        let ops = |ops: Vec<TxnOpBody>| {
            ops.into_iter()
                .map(|op| match (op.put, op.delete) {
                    (Some(put), None) => Ok(TxnOp {
                        op: Some(Op::Put(TxnPut {
                            key: put.key,
                            value: put.value,
                        })),
                    }),
                    (None, Some(delete)) => Ok(TxnOp {
                        op: Some(Op::Delete(TxnDelete { key: delete.key })),
                    }),
                    _ => Err(ApiError::bad_request(
                        "each write is exactly one of {\"put\": {...}} and {\"delete\": {...}}",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(TxnRequest {
            compare,
            success: ops(self.success)?,
            failure: ops(self.failure)?,
        })
    }
}

/// Query options of `GET /v1/keys` (as `Kv.List`'s request).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListOptions {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    start: String,
    #[serde(default)]
    end: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    keys_only: bool,
    #[serde(default)]
    stale: bool,
}

/// The headers that qualify a write: its conditional-request headers, parsed in its
/// handler (so that a refused write's body is still read and dropped first), and its
/// `Idempotency-Key` (checked where the Kv service checks it).
#[derive(Debug, Clone, Default)]
struct Conditions {
    if_match: Option<String>,
    if_none_match: Option<String>,
    idempotency_key: Option<String>,
}

impl Conditions {
    fn precondition(&self) -> Result<Option<Precondition>, ApiError> {
        conditions::precondition(self.if_match.as_deref(), self.if_none_match.as_deref())
    }
}

fn conditions() -> impl Filter<Extract = (Conditions,), Error = Rejection> + Clone {
    warp::header::optional::<String>(header::IF_MATCH.as_str())
        .and(warp::header::optional::<String>(
            header::IF_NONE_MATCH.as_str(),
        ))
        .and(warp::header::optional::<String>(IDEMPOTENCY_KEY))
        .map(|if_match, if_none_match, idempotency_key| Conditions {
            if_match,
            if_none_match,
            idempotency_key,
        })
}

/// The route a request took, as the label of the HTTP metrics: never the path itself,
/// whose keys would make unbounded label values.
fn route_name(method: &Method, path: &str) -> &'static str {
    let mut segments = path.trim_start_matches('/').split('/');
    let first = segments.next().unwrap_or_default();
    let more = segments.next().is_some_and(|s| !s.is_empty());
    match (first, more) {
        ("", false) => "/",
        ("ui", _) => "/ui",
        ("cluster", true) if path.trim_end_matches('/') == "/cluster/leader" => "/cluster/leader",
        ("v1", true) if path.starts_with("/v1/kv/") && path.matches('/').count() == 3 => {
            "/v1/kv/{key}"
        }
        ("v1", true) if path == "/v1/keys" => "/v1/keys",
        ("v1", true) if path == "/v1/txn" => "/v1/txn",
        ("v1", true) if path == "/v1/watch" => "/v1/watch",
        ("v1", true) if path == "/v1/backup" => "/v1/backup",
        (_, true) => "other",
        (name, false) if *method == Method::GET => match name {
            "stop" => "/stop",
            "start" => "/start",
            "metrics" => "/metrics",
            "livez" => "/livez",
            "readyz" => "/readyz",
            _ => "/{key}",
        },
        (_, false) => "/{key}",
    }
}

/// Whether `?verbose` was asked for (with or without a value, as Kubernetes takes it).
fn verbose() -> impl Filter<Extract = (bool,), Error = Infallible> + Clone {
    warp::query::raw()
        .map(|query: String| {
            query
                .split('&')
                .any(|pair| pair.split('=').next() == Some("verbose"))
        })
        .or(warp::any().map(|| false))
        .unify()
}

/// Which health answer is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Live,
    Ready,
}

/// The largest body of an operations route's options (`{"to": "<member>"}`).
pub(super) const MAX_OPTIONS_BODY_BYTES: usize = 4096;

/// How long the health routes wait for the driver before calling it stuck.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Query options of `GET /<key>`.
#[derive(Debug, Deserialize)]
struct GetOptions {
    /// Serve from this node's state machine (may be stale) instead of a linearizable
    /// read.
    #[serde(default)]
    stale: bool,
}

/// The shared state of every route.
struct Gateway {
    settings: GatewaySettings,
    backend: Backend,
}

impl Gateway {
    async fn status(&self) -> Result<Value, ApiError> {
        let status = self
            .call(self.backend.admin.status(self.request(StatusRequest {})))
            .await?;
        Ok(json!({"ok": true, "status": status_json(status)}))
    }

    async fn stop(&self) -> Result<Value, ApiError> {
        self.call(self.backend.admin.stop(self.request(StopRequest {})))
            .await?;
        Ok(json!({"ok": true}))
    }

    /// `GET /metrics`: the registry, with the state-derived metrics refreshed from
    /// this node's status first.
    async fn metrics(&self) -> Response {
        let metrics = crate::metrics::metrics();
        // Without a status the state metrics keep their last values: the counters and
        // histograms are still worth scraping, and /livez says the driver is stuck.
        match self
            .call(self.backend.admin.status(self.request(StatusRequest {})))
            .await
        {
            Ok(status) => metrics.observe_status(&status),
            Err(error) => tracing::warn!(
                "GET /metrics: no status from the driver ({}); state metrics are stale",
                error.message
            ),
        }
        text_response(
            StatusCode::OK,
            metrics.render(),
            crate::metrics::CONTENT_TYPE,
        )
    }

    /// `GET /livez`, `GET /readyz`: 200 when every check passes, else 503.
    async fn health(&self, probe: Probe, verbose: bool) -> Response {
        let mut request = tonic::Request::new(StatusRequest {});
        request.set_timeout(HEALTH_TIMEOUT);
        let answer =
            match tokio::time::timeout(HEALTH_TIMEOUT, self.backend.admin.status(request)).await {
                Ok(Ok(status)) => Ok(status.into_inner()),
                Ok(Err(status)) => Err(format!("the driver did not answer: {}", status.message())),
                Err(_) => Err(format!(
                    "the driver did not answer within {HEALTH_TIMEOUT:?}"
                )),
            };
        let answer = answer.as_ref().map_err(Clone::clone);
        let (passed, text) = match probe {
            Probe::Live => {
                crate::health::render("livez", &crate::health::liveness(answer), verbose)
            }
            Probe::Ready => {
                crate::health::render("readyz", &crate::health::readiness(answer), verbose)
            }
        };
        let code = match passed {
            true => StatusCode::OK,
            false => StatusCode::SERVICE_UNAVAILABLE,
        };
        text_response(code, text, "text/plain; charset=utf-8")
    }

    async fn start(&self) -> Result<Value, ApiError> {
        self.call(self.backend.admin.start(self.request(StartRequest {})))
            .await?;
        Ok(json!({"ok": true}))
    }

    async fn get(&self, raw_key: &str, stale: bool) -> Result<Answer, ApiError> {
        let key = self.key(raw_key)?;
        let request = validation::checked(self.request(GetRequest {
            key: key.clone(),
            stale,
        }));
        let found = match self.call_kv(self.backend.kv.get(request)).await {
            Ok(found) if found.found => found,
            // An answer without the key is one the service did not send; taken as
            // absent all the same.
            Ok(found) => return Err(key_not_found(&key, found.index)),
            Err(status) if status.code() == tonic::Code::NotFound => {
                return Err(key_not_found(&key, crate::rpc::index_of_not_found(&status)))
            }
            Err(status) => return Err(ApiError::from(status)),
        };
        let mut body = versions_json(found.create_index, found.mod_index, found.version);
        body["ok"] = Value::Bool(true);
        body["key"] = Value::String(key);
        body["value"] = Value::String(found.value);
        Ok((body, version_headers(Some(found.mod_index), found.index)))
    }

    /// `POST /<key>`; `checked` is the token check and the write's precondition (from
    /// its headers), refused before the body is read.
    async fn put<S, B>(
        &self,
        raw_key: &str,
        checked: Result<Option<Precondition>, ApiError>,
        idempotency_key: Option<String>,
        content_type: Option<String>,
        content_length: Option<u64>,
        body: S,
    ) -> Result<Answer, ApiError>
    where
        S: Stream<Item = Result<B, warp::Error>> + Unpin,
        B: Buf,
    {
        let checked = checked.and_then(|precondition| {
            let key = self.key(raw_key)?;
            match content_type.as_deref().and_then(BodyFormat::of) {
                Some(format) => Ok((key, format, precondition)),
                None => Err(ApiError::bad_request(
                    "expected a form body (Content-Type: application/x-www-form-urlencoded) with value=<value>, \
                     or a JSON body (Content-Type: application/json) {\"value\": \"<value>\"}",
                )),
            }
        });
        let (key, format, precondition) = match checked {
            Ok(checked) => checked,
            Err(error) => return Err(discard_body(body, error).await),
        };
        let body_read_timeout = match crate::plant::active(crate::plant::Plant::NoBodyTimeout) {
            true => Duration::from_secs(3600),
            false => self.settings.body_read_timeout,
        };
        let body = read_body_within(
            body,
            content_length,
            self.max_body_bytes(),
            body_read_timeout,
        )
        .await?;
        let value = match format {
            BodyFormat::Form => form_value(&body)?,
            BodyFormat::Json => json_value(&body)?,
        };
        self.settings.request_rules.check_value(&value)?;
        let request = validation::checked(self.request(PutRequest {
            key: key.clone(),
            value,
            precondition,
        }));
        let request = with_idempotency_key(request, idempotency_key)?;
        let (put, replayed) = self.call_kv_write(self.backend.kv.put(request)).await?;
        let mut body = versions_json(put.create_index, put.index, put.version);
        body["ok"] = Value::Bool(true);
        body["key"] = Value::String(key);
        body["value"] = Value::String(put.value);
        let headers = version_headers(Some(put.index), put.index);
        Ok((body, replay_headers(headers, replayed)))
    }

    /// `POST /cluster/leader` with an optional JSON body `{"to": "<member>"}`.
    async fn transfer_leader<S, B>(
        &self,
        authorized: Result<(), ApiError>,
        content_length: Option<u64>,
        body: S,
    ) -> Result<Value, ApiError>
    where
        S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
        B: Buf,
    {
        let body = self
            .authorized_body(authorized, content_length, body, MAX_OPTIONS_BODY_BYTES)
            .await?;
        let to = optional_json_string(&body, "to")?.unwrap_or_default();
        let request = self.request(TransferLeaderRequest { to });
        let answer = self
            .call(self.backend.admin.transfer_leader(request))
            .await?;
        Ok(json!({"ok": true, "leader": answer.leader, "previous": answer.previous}))
    }

    async fn delete(&self, raw_key: &str, conditions: Conditions) -> Result<Answer, ApiError> {
        let precondition = conditions.precondition()?;
        let key = self.key(raw_key)?;
        let request = validation::checked(self.request(DeleteRequest {
            key: key.clone(),
            precondition,
        }));
        let request = with_idempotency_key(request, conditions.idempotency_key)?;
        let (deleted, replayed) = self.call_kv_write(self.backend.kv.delete(request)).await?;
        let body =
            json!({"ok": true, "key": key, "existed": deleted.existed, "index": deleted.index});
        let headers = version_headers(None, deleted.index);
        Ok((body, replay_headers(headers, replayed)))
    }

    /// `GET /v1/keys`: `{"ok": true, "keys": [...], "next": token or null, "index": i}`.
    async fn list(&self, options: ListOptions) -> Result<Answer, ApiError> {
        let request = ListRequest {
            prefix: options.prefix,
            start: options.start,
            end: options.end,
            after: options.after,
            limit: options.limit,
            keys_only: options.keys_only,
            stale: options.stale,
        };
        // Checked here as the service checks it, so that bad input is a 400 before
        // any call.
        crate::rpc::list_query(&self.settings.request_rules, &request)
            .map_err(|status| ApiError::bad_request(status.message()))?;
        let keys_only = request.keys_only;
        let page = self
            .call_kv(self.backend.kv.list(self.request(request)))
            .await
            .map_err(ApiError::from)?;
        let keys: Vec<Value> = page
            .keys
            .into_iter()
            .map(|listed| {
                let mut item = versions_json(listed.create_index, listed.mod_index, listed.version);
                item["key"] = Value::String(listed.key);
                if !keys_only {
                    item["value"] = Value::String(listed.value);
                }
                item
            })
            .collect();
        let next = match page.next.is_empty() {
            true => Value::Null,
            false => Value::String(page.next),
        };
        let body = json!({"ok": true, "keys": keys, "next": next, "index": page.index});
        Ok((body, version_headers(None, page.index)))
    }

    /// `POST /v1/txn`: `{"ok": true, "succeeded": b, "index": i, "results": [...]}`.
    async fn txn<S, B>(
        &self,
        authorized: Result<(), ApiError>,
        idempotency_key: Option<String>,
        content_length: Option<u64>,
        body: S,
    ) -> Result<Answer, ApiError>
    where
        S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
        B: Buf,
    {
        let max = self.max_body_bytes();
        let body = self
            .authorized_body(authorized, content_length, body, max)
            .await?;
        let parsed: TxnBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid transaction: {e}")))?;
        let request = parsed.into_request()?;
        // Checked here as the service checks it: bad input is a 400 before any call.
        crate::rpc::txn_command(&self.settings.request_rules, &request)
            .map_err(|status| ApiError::bad_request(status.message()))?;
        let request = with_idempotency_key(self.request(request), idempotency_key)?;
        let (answer, replayed) = self.call_kv_write(self.backend.kv.txn(request)).await?;
        let results: Vec<Value> = answer
            .results
            .into_iter()
            .map(|result| match result.put {
                true => {
                    let mut item =
                        versions_json(result.create_index, result.mod_index, result.version);
                    item["key"] = Value::String(result.key);
                    item
                }
                false => json!({"key": result.key, "existed": result.existed}),
            })
            .collect();
        let body = json!({
            "ok": true,
            "succeeded": answer.succeeded,
            "index": answer.index,
            "results": results,
        });
        let headers = version_headers(None, answer.index);
        Ok((body, replay_headers(headers, replayed)))
    }

    /// The body of a request with a JSON body, read within `max_bytes` and the body read
    /// timeout; a refused request's body is read and dropped first ([`discard_body`]).
    async fn authorized_body<S, B>(
        &self,
        authorized: Result<(), ApiError>,
        content_length: Option<u64>,
        body: S,
        max_bytes: usize,
    ) -> Result<bytes::Bytes, ApiError>
    where
        S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
        B: Buf,
    {
        if let Err(error) = authorized {
            return Err(discard_body(body, error).await);
        }
        read_body_within(
            body,
            content_length,
            max_bytes,
            self.settings.body_read_timeout,
        )
        .await
    }

    /// Decodes a key from its path segment and checks it.
    fn key(&self, raw: &str) -> Result<String, ApiError> {
        let key = percent_decode_utf8(raw.as_bytes(), false)
            .map_err(|e| ApiError::bad_request(format!("invalid key: {e}")))?;
        self.settings.request_rules.check_key(&key)?;
        Ok(key)
    }

    /// The largest form body that may still decode to an acceptable value: every byte
    /// of the value percent-encoded (3 bytes each), plus room for `value=` and a few
    /// other fields.
    fn max_body_bytes(&self) -> usize {
        self.settings
            .request_rules
            .max_value_bytes
            .saturating_mul(3)
            .saturating_add(1024)
    }

    /// A request carrying the request timeout as its deadline (`grpc-timeout`, read by
    /// the services as over the network), and the API token: the gateway checked the
    /// client's already, and the services check it again, as for any gRPC client.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.settings.request_timeout);
        let bearer = self.settings.access.bearer().and_then(|b| b.parse().ok());
        if let Some(bearer) = bearer {
            request.metadata_mut().insert("authorization", bearer);
        }
        request
    }

    /// Awaits a service call, bounded even if it never answers.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.settings.request_timeout + DEADLINE_GRACE, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status.into()),
            Err(_elapsed) => Err(ApiError::unavailable(format!(
                "no answer from the cluster within {:?}",
                self.settings.request_timeout
            ))),
        }
    }

    /// Awaits a Kv call, bounded even if it never answers, keeping its status whole
    /// (its metadata and details say more than an [`ApiError`] holds).
    async fn call_kv<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        match tokio::time::timeout(self.settings.request_timeout + DEADLINE_GRACE, call).await {
            Ok(answer) => answer.map(tonic::Response::into_inner),
            Err(_elapsed) => Err(tonic::Status::unavailable(format!(
                "no answer from the cluster within {:?}",
                self.settings.request_timeout
            ))),
        }
    }

    /// Awaits a write, bounded: its answer and whether it is a retry's replay of the
    /// first outcome, or its failure as HTTP (412, 422), marked when replayed.
    async fn call_kv_write<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<(T, bool), ApiError> {
        let call = async {
            call.await.map(|response| {
                let replayed = idempotency::replayed(response.metadata());
                tonic::Response::new((response.into_inner(), replayed))
            })
        };
        self.call_kv(call).await.map_err(write_failure)
    }

    fn respond_with(&self, result: Result<Answer, ApiError>) -> Response {
        match result {
            Ok((body, headers)) => json_response_with(&body, headers, self.settings.pretty),
            Err(error) => error_response(&error, self.settings.pretty),
        }
    }

    fn respond(&self, result: Result<Value, ApiError>) -> Response {
        match result {
            Ok(body) => json_response(StatusCode::OK, &body, self.settings.pretty),
            Err(error) => error_response(&error, self.settings.pretty),
        }
    }
}

/// A JSON answer and its headers.
type Answer = (
    Value,
    Vec<(warp::http::HeaderName, warp::http::HeaderValue)>,
);

fn key_not_found(key: &str, index: u64) -> ApiError {
    let mut error = ApiError::new(StatusCode::NOT_FOUND, format!("key not found: {key}"));
    for (name, value) in version_headers(None, index) {
        error = error.with_header(name, value);
    }
    error
}

/// A failed write as HTTP: a failed precondition is 412 with the key as it is, an
/// idempotency key used by another request 422; a retry's replayed failure is marked.
fn write_failure(status: tonic::Status) -> ApiError {
    let replayed = idempotency::replayed(status.metadata());
    let error = match crate::rpc::precondition_failure(&status) {
        Some(state) => precondition_failed(status.message().to_string(), state),
        None if status.code() == tonic::Code::AlreadyExists => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, status.message())
        }
        None => ApiError::from(status),
    };
    match replayed {
        true => error.with_header(idempotent_replayed(), HeaderValue::from_static("true")),
        false => error,
    }
}

/// `Idempotency-Key` (IETF httpapi draft): a write sent again with the same key is
/// answered with its first outcome instead of being applied again.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn idempotent_replayed() -> HeaderName {
    HeaderName::from_static(idempotency::REPLAYED)
}

/// A write's request with the client's idempotency key, as the Kv service reads it.
fn with_idempotency_key<T>(
    mut request: tonic::Request<T>,
    key: Option<String>,
) -> Result<tonic::Request<T>, ApiError> {
    if let Some(key) = key {
        let value = tonic::metadata::MetadataValue::try_from(key.as_str())
            .map_err(|_| ApiError::bad_request("the Idempotency-Key is not visible ASCII"))?;
        request
            .metadata_mut()
            .insert(idempotency::IDEMPOTENCY_KEY, value);
    }
    Ok(request)
}

/// An answer's headers, with `Idempotent-Replayed: true` when it is a retry's.
fn replay_headers(
    mut headers: Vec<(HeaderName, HeaderValue)>,
    replayed: bool,
) -> Vec<(HeaderName, HeaderValue)> {
    if replayed {
        headers.push((idempotent_replayed(), HeaderValue::from_static("true")));
    }
    headers
}

#[cfg(test)]
mod tests;
