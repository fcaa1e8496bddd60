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
//! | `GET /<key>`     | Kv.Get        | `{"ok": true, "key": k, "value": v}`     |
//! | `POST /<key>`    | Kv.Put        | `{"ok": true, "key": k, "value": v}`     |
//! | `DELETE /<key>`  | Kv.Delete     | `{"ok": true, "key": k, "existed": b}`   |
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

mod dashboard;
mod server;

use dashboard::dashboard_routes;
pub use server::serve;

use crate::access::{Access, CorsOrigins, Denied};
use crate::dashboard::Dashboard;
use crate::limits::Limits;
use crate::proto::v1::{
    admin_server::Admin, kv_server::Kv, DeleteRequest, GetRequest, PutRequest, StartRequest,
    StatusRequest, StopRequest,
};
use crate::status::status_json;
use crate::validation::{self, InvalidRequest, RequestRules};
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};
use tonic::Code;
use warp::{
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
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

/// Header bytes (names and values) accepted per request. A head larger than hyper's own
/// ~400 KiB buffer is refused by hyper itself (made JSON by [`server`]); below that,
/// this limit refuses it here, with a more precise message.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Extra time the gateway waits beyond the request timeout it hands to the service,
/// so that the service's own, more precise answer normally arrives first.
const DEADLINE_GRACE: Duration = Duration::from_millis(500);

/// The services the gateway calls: the node's own Kv and Admin gRPC services, called in
/// process (the same code, deadlines and status codes as over gRPC).
#[derive(Clone)]
pub struct Backend {
    pub kv: Arc<dyn Kv>,
    pub admin: Arc<dyn Admin>,
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
    // The path is matched before the method everywhere, so that an unknown path is a
    // 404 and a known path with the wrong method a 405.
    let key = warp::path::param::<String>().and(warp::path::end());
    let get = key
        .and(warp::get())
        .and(authorized.clone())
        .and(warp::query::<GetOptions>())
        .and(with_gateway.clone())
        .then(
            |raw: String, options: GetOptions, gw: Arc<Gateway>| async move {
                gw.respond(gw.get(&raw, options.stale).await)
            },
        );
    // The body of a refused write is read and dropped (see `discard_body`), so the
    // token is checked inside the handler.
    let put = key
        .and(warp::post())
        .and(credentials)
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
             content_type,
             content_length,
             body,
             gw: Arc<Gateway>| async move {
                let result = gw
                    .put(&raw, authorized, content_type, content_length, body)
                    .await;
                gw.respond(result)
            },
        );
    let delete = key
        .and(warp::delete())
        .and(authorized)
        .and(with_gateway)
        .then(|raw: String, gw: Arc<Gateway>| async move { gw.respond(gw.delete(&raw).await) });

    let api = status.or(stop).unify().or(start).unify();
    let api = api.or(metrics).unify().or(livez).unify().or(readyz).unify();
    let api = api.or(dashboard).unify();
    let api = api.or(get).unify().or(put).unify().or(delete).unify();
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

/// The route a request took, as the label of the HTTP metrics: never the path itself,
/// whose keys would make unbounded label values.
fn route_name(method: &Method, path: &str) -> &'static str {
    let mut segments = path.trim_start_matches('/').split('/');
    let first = segments.next().unwrap_or_default();
    let more = segments.next().is_some_and(|s| !s.is_empty());
    match (first, more) {
        ("", false) => "/",
        ("ui", _) => "/ui",
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

/// A failed request: its HTTP status and the message for `"error"`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiError {
    status: StatusCode,
    message: String,
    /// Answer with `Connection: close`: part of the request body was left unread, so
    /// the connection cannot carry another request.
    close_connection: bool,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            close_connection: false,
        }
    }

    fn closing_connection(self) -> Self {
        Self {
            close_connection: true,
            ..self
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    fn denied(denied: Denied) -> Self {
        let status = match denied {
            Denied::Missing => StatusCode::UNAUTHORIZED,
            Denied::Wrong => StatusCode::FORBIDDEN,
        };
        Self::new(status, denied.message())
    }
}

impl From<InvalidRequest> for ApiError {
    fn from(invalid: InvalidRequest) -> Self {
        match invalid.is_too_large() {
            true => Self::too_large(invalid.to_string()),
            false => Self::bad_request(invalid.to_string()),
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let http = match status.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                StatusCode::BAD_REQUEST
            }
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            // Cancelled and Unknown are what a gRPC client sees when the deadline ran
            // out or the connection broke: like a timeout, the request may or may not
            // have happened; try again.
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // The quota, or this node's full disk: nothing was written.
            Code::ResourceExhausted
                if status
                    .metadata()
                    .contains_key(crate::rpc::INSUFFICIENT_STORAGE) =>
            {
                StatusCode::INSUFFICIENT_STORAGE
            }
            // Load: the forwarding cap or load shedding; nothing was written, try again.
            Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Ok | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match status.message() {
            "" => status.code().description().to_string(),
            message => message.to_string(),
        };
        Self::new(http, message)
    }
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

    async fn get(&self, raw_key: &str, stale: bool) -> Result<Value, ApiError> {
        let key = self.key(raw_key)?;
        let request = validation::checked(self.request(GetRequest {
            key: key.clone(),
            stale,
        }));
        let found = self.call(self.backend.kv.get(request)).await?;
        if !found.found {
            return Err(key_not_found(&key));
        }
        Ok(json!({"ok": true, "key": key, "value": found.value}))
    }

    async fn put<S, B>(
        &self,
        raw_key: &str,
        authorized: Result<(), ApiError>,
        content_type: Option<String>,
        content_length: Option<u64>,
        body: S,
    ) -> Result<Value, ApiError>
    where
        S: Stream<Item = Result<B, warp::Error>> + Unpin,
        B: Buf,
    {
        let checked = authorized.and_then(|()| self.key(raw_key)).and_then(|key| {
            match content_type.as_deref().and_then(BodyFormat::of) {
                Some(format) => Ok((key, format)),
                None => Err(ApiError::bad_request(
                    "expected a form body (Content-Type: application/x-www-form-urlencoded) with value=<value>, \
                     or a JSON body (Content-Type: application/json) {\"value\": \"<value>\"}",
                )),
            }
        });
        let (key, format) = match checked {
            Ok(checked) => checked,
            Err(error) => return Err(discard_body(body, error).await),
        };
        let body_read_timeout = match crate::plant::active(crate::plant::Plant::NoBodyTimeout) {
            true => Duration::from_secs(3600),
            false => self.settings.body_read_timeout,
        };
        let body = tokio::time::timeout(
            body_read_timeout,
            read_body(body, content_length, self.max_body_bytes()),
        )
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?}",
                    self.settings.body_read_timeout
                ),
            )
            .closing_connection()
        })??;
        let value = match format {
            BodyFormat::Form => form_value(&body)?,
            BodyFormat::Json => json_value(&body)?,
        };
        self.settings.request_rules.check_value(&value)?;
        let request = validation::checked(self.request(PutRequest {
            key: key.clone(),
            value,
        }));
        let put = self.call(self.backend.kv.put(request)).await?;
        Ok(json!({"ok": true, "key": key, "value": put.value}))
    }

    async fn delete(&self, raw_key: &str) -> Result<Value, ApiError> {
        let key = self.key(raw_key)?;
        let request = validation::checked(self.request(DeleteRequest { key: key.clone() }));
        let deleted = self.call(self.backend.kv.delete(request)).await?;
        Ok(json!({"ok": true, "key": key, "existed": deleted.existed}))
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

    fn respond(&self, result: Result<Value, ApiError>) -> Response {
        match result {
            Ok(body) => json_response(StatusCode::OK, &body, self.settings.pretty),
            Err(error) => error_response(&error, self.settings.pretty),
        }
    }
}

fn key_not_found(key: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("key not found: {key}"))
}

/// CORS for the allowed origins: the methods and headers the API uses.
fn cors(origins: &CorsOrigins) -> warp::cors::Builder {
    let cors = warp::cors()
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]);
    match origins {
        CorsOrigins::Any => cors.allow_any_origin(),
        // Checked at start-up to be `scheme://host[:port]`, which warp parses.
        CorsOrigins::List(origins) => cors.allow_origins(origins.iter().map(String::as_str)),
    }
}

/// Refuses a request whose `Host` (or absolute URI) names a host this node does not
/// answer to: a page whose DNS name was rebound to this node's address.
fn allowed_host(access: Arc<Access>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::host::optional()
        .and_then(move |authority: Option<warp::host::Authority>| {
            let allowed = access.hosts.allows(authority.as_ref().map(|a| a.as_str()));
            async move {
                match allowed {
                    true => Ok(()),
                    false => Err(warp::reject::custom(ApiError::new(
                        StatusCode::MISDIRECTED_REQUEST,
                        format!(
                            "this node does not answer to the host name {:?} (see DISTRAFT_ALLOWED_HOSTS)",
                            authority.map(|a| a.host().to_string()).unwrap_or_default()
                        ),
                    ))),
                }
            }
        })
        .untuple_one()
}

/// The outcome of checking a request's API token.
fn credentials(
    access: Arc<Access>,
) -> impl Filter<Extract = (Result<(), ApiError>,), Error = Infallible> + Clone {
    warp::header::headers_cloned().map(move |headers: HeaderMap| {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        access.authorize(authorization).map_err(ApiError::denied)
    })
}

/// Refuses a request without the API token, when one is set.
fn authorized(access: Arc<Access>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    credentials(access)
        .and_then(
            |checked: Result<(), ApiError>| async move { checked.map_err(warp::reject::custom) },
        )
        .untuple_one()
}

/// Rejects requests whose URI or headers exceed what any valid request needs, with the
/// status codes hyper would use, but as JSON.
fn check_request_size() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and_then(|headers: HeaderMap| async move {
            let bytes: usize = headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len())
                .sum();
            if bytes > MAX_HEADER_BYTES {
                return Err(warp::reject::custom(ApiError::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!("request headers are {bytes} bytes, more than the maximum of {MAX_HEADER_BYTES}"),
                )));
            }
            Ok(())
        })
        .untuple_one()
}

/// How a `POST /<key>` carries its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    /// `value=<v>`, as curl -d and the original API.
    Form,
    /// `{"value": "<v>"}`, as the original viewer's later versions send it.
    Json,
}

impl BodyFormat {
    /// The format a `Content-Type` names (parameters such as `charset` ignored).
    fn of(content_type: &str) -> Option<BodyFormat> {
        let mime = content_type.split(';').next()?.trim();
        if mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            Some(BodyFormat::Form)
        } else if mime.eq_ignore_ascii_case("application/json") {
            Some(BodyFormat::Json)
        } else {
            None
        }
    }
}

/// Reads a request body of at most `limit` bytes. A larger one is refused: at once when
/// its declared length is larger than we would ever discard, else once it is
/// discarded (see [`discard_body`]).
async fn read_body<S, B>(
    mut body: S,
    content_length: Option<u64>,
    limit: usize,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let too_large = || ApiError::too_large(format!("request body is larger than {limit} bytes"));
    match content_length {
        Some(length) if length > (limit + MAX_DISCARD_BYTES) as u64 => {
            return Err(too_large().closing_connection())
        }
        Some(length) if length > limit as u64 => return Err(discard_body(body, too_large()).await),
        _ => {}
    }
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        if collected.len() + chunk.remaining() > limit {
            return Err(discard_body(body, too_large()).await);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let read = part.len();
            chunk.advance(read);
        }
    }
    Ok(collected.freeze())
}

/// At most this much of a rejected body is read and dropped, within this time; past
/// that the connection is closed instead.
const MAX_DISCARD_BYTES: usize = 16 * 1024 * 1024;
const MAX_DISCARD_TIME: Duration = Duration::from_secs(5);

/// Reads and drops the rest of a body before answering `error`: a client still sending
/// it would otherwise meet a reset connection instead of our answer (the kernel resets
/// a socket closed with unread data). Past the bounds, the answer closes the
/// connection instead.
async fn discard_body<S, B>(mut body: S, error: ApiError) -> ApiError
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let drained = tokio::time::timeout(MAX_DISCARD_TIME, async {
        let mut discarded = 0;
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else {
                return false;
            };
            discarded += chunk.remaining();
            if discarded > MAX_DISCARD_BYTES {
                return false;
            }
        }
        true
    })
    .await;
    match drained {
        Ok(true) => error,
        Ok(false) | Err(_) => error.closing_connection(),
    }
}

/// The first `value` field of an `application/x-www-form-urlencoded` body (as Flask's
/// `request.form['value']`), which must be present and valid UTF-8 once decoded (an
/// empty one is refused with the other rules of values, in `Gateway::put`).
fn form_value(body: &[u8]) -> Result<String, ApiError> {
    for pair in body.split(|&b| b == b'&') {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        let name = percent_decode_utf8(name, true)
            .map_err(|e| ApiError::bad_request(format!("invalid form field name: {e}")))?;
        if name != "value" {
            continue;
        }
        return percent_decode_utf8(value, true)
            .map_err(|e| ApiError::bad_request(format!("invalid value: {e}")));
    }
    Err(ApiError::bad_request("missing form field: value"))
}

/// The `value` of a JSON body `{"value": "<v>"}`: an object whose `value` is a string
/// (other members are ignored, as other form fields are; an empty one is refused with
/// the other rules of values, in `Gateway::put`).
fn json_value(body: &[u8]) -> Result<String, ApiError> {
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let Value::Object(mut members) = parsed else {
        return Err(ApiError::bad_request(
            "invalid JSON body: expected an object {\"value\": \"<value>\"}",
        ));
    };
    match members.remove("value") {
        None | Some(Value::Null) => Err(ApiError::bad_request("missing JSON member: value")),
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(ApiError::bad_request("value must be a JSON string")),
    }
}

/// Why a URL- or form-encoded string could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum DecodeError {
    #[error("'%' at byte {0} is not followed by two hex digits")]
    BadEscape(usize),
    #[error("not valid UTF-8 once decoded")]
    NotUtf8,
}

/// Strict percent-decoding: unlike the lenient decoders (which keep a malformed `%zz`
/// or replace invalid UTF-8), a malformed escape or invalid UTF-8 is an error, so a
/// client never stores something other than what it meant. In form bodies `+` is a
/// space; in paths it is a `+`.
fn percent_decode_utf8(input: &[u8], plus_is_space: bool) -> Result<String, DecodeError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' => {
                let high = input.get(i + 1).and_then(|&b| hex_digit(b));
                let low = input.get(i + 2).and_then(|&b| hex_digit(b));
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(DecodeError::BadEscape(i));
                };
                out.push(high << 4 | low);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::NotUtf8)
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
}

/// Turns a rejection (ours, or one warp made by itself) into the JSON error answer.
fn rejection_response(rejection: Rejection, pretty: bool) -> Response {
    use warp::reject;
    // A combined rejection holds one reason per route tried. The routes whose path and
    // method matched know best, so their reasons come first; a wrong method only
    // matters when no route matched further, and an unknown path last of all.
    let error = if let Some(error) = rejection.find::<ApiError>() {
        error.clone()
    } else if let Some(e) = rejection.find::<reject::InvalidQuery>() {
        ApiError::bad_request(e.to_string())
    } else if let Some(e) = rejection.find::<reject::InvalidHeader>() {
        ApiError::bad_request(e.to_string())
    } else if let Some(e) = rejection.find::<reject::PayloadTooLarge>() {
        ApiError::too_large(e.to_string())
    } else if let Some(e) = rejection.find::<reject::LengthRequired>() {
        ApiError::new(StatusCode::LENGTH_REQUIRED, e.to_string())
    } else if let Some(e) = rejection.find::<reject::UnsupportedMediaType>() {
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string())
    } else if let Some(e) = rejection.find::<warp::filters::cors::CorsForbidden>() {
        ApiError::new(StatusCode::FORBIDDEN, e.to_string())
    } else if rejection.find::<reject::MethodNotAllowed>().is_some() {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else if rejection.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "no such route")
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{rejection:?}"))
    };
    error_response(&error, pretty)
}

fn error_response(error: &ApiError, pretty: bool) -> Response {
    let mut response = json_response(
        error.status,
        &json!({"ok": false, "error": error.message}),
        pretty,
    );
    if error.close_connection {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A plain answer (metrics, health) of `content_type`.
fn text_response(status: StatusCode, text: String, content_type: &'static str) -> Response {
    let mut response = warp::reply::with_status(text, status).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON answer; keys come out sorted (as Flask's `jsonify` did), with a final newline
/// for terminals.
fn json_response(status: StatusCode, body: &Value, pretty: bool) -> Response {
    let mut text = if pretty {
        serde_json::to_string_pretty(body)
    } else {
        serde_json::to_string(body)
    }
    // A `Value` always encodes (its keys are strings); this is only a safe fallback.
    .unwrap_or_else(|_| r#"{"ok": false, "error": "could not encode the answer"}"#.to_string());
    text.push('\n');
    let mut response = warp::reply::with_status(text, status).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests;
