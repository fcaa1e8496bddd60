//! One benchmark client's connection to one node, for each API the bench speaks: what
//! the bench crate's [`Protocol`] and [`distraft_bench::Connection`] ask for.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::ValueEnum;
use distraft_bench::{Protocol, ReadMode};
use serde_json::Value;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::cli::{key_url, new_idempotency_key};
use crate::proto::etcd::{
    self, kv_client::KvClient as EtcdKvClient, maintenance_client::MaintenanceClient, RangeRequest,
};
use crate::proto::v1::{admin_client::AdminClient, kv_client::KvClient, GetRequest, PutRequest};
use crate::tls::ClientTls;

/// The API a benchmark speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// distraft's HTTP gateway: `POST /<key>` (form `value=`), `GET /<key>`.
    DistraftHttp,
    /// distraft's gRPC Kv service: `Put`, `Get`.
    DistraftGrpc,
    /// etcd's v2 HTTP API: `PUT /v2/keys/<key>` (form `value=`),
    /// `GET /v2/keys/<key>?quorum=true`.
    EtcdV2,
    /// etcd's v3 gRPC API: `KV/Put`, `KV/Range` (`serializable=false`, or `true` for
    /// stale reads).
    EtcdV3,
}

/// Why one operation failed; its `Display` is the label errors are counted under.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("HTTP {0}")]
    Http(u16),
    #[error("gRPC {0:?}")]
    Grpc(tonic::Code),
    #[error("timeout")]
    Timeout,
    #[error("connection failed")]
    Connect,
    #[error("transport error")]
    Transport,
    /// etcd v3 answers a read of a missing key with no key rather than an error.
    #[error("key not found")]
    NotFound,
}

impl From<reqwest::Error> for OpError {
    fn from(err: reqwest::Error) -> OpError {
        if err.is_timeout() {
            OpError::Timeout
        } else if err.is_connect() {
            OpError::Connect
        } else {
            OpError::Transport
        }
    }
}

impl From<tonic::Status> for OpError {
    fn from(status: tonic::Status) -> OpError {
        match status.code() {
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => OpError::Timeout,
            code => OpError::Grpc(code),
        }
    }
}

/// The bench's way to the nodes of one cluster over one API.
pub struct Cluster {
    api: Api,
    /// How long one request may take.
    timeout: Duration,
    /// The API token, sent with every request of the load (not with leader probes,
    /// which ask for a node's status: open to all).
    token: Option<String>,
    tls: ClientTls,
    /// Asks the nodes whether they lead, each question bounded by [`PROBE_TIMEOUT`].
    probe: reqwest::Client,
}

/// How long a node may take to say whether it leads.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl Cluster {
    /// Requests of `timeout` at most, with `token` if given, `tls` serving https:// URLs.
    pub fn new(
        api: Api,
        timeout: Duration,
        token: Option<String>,
        tls: ClientTls,
    ) -> anyhow::Result<Cluster> {
        let probe = tls
            .reqwest(reqwest::Client::builder())
            .timeout(PROBE_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Cluster {
            api,
            timeout,
            token,
            tls,
            probe,
        })
    }
}

impl Protocol for Cluster {
    type Name = Api;
    type Connection = Connection;

    fn name(&self) -> Api {
        self.api
    }

    fn open(&self, url: &str) -> anyhow::Result<Connection> {
        Connection::open(
            self.api,
            url,
            self.timeout,
            self.token.as_deref(),
            &self.tls,
        )
    }

    /// gRPC multiplexes its calls on one HTTP/2 connection.
    fn multiplexed(&self) -> bool {
        match self.api {
            Api::DistraftGrpc | Api::EtcdV3 => true,
            Api::DistraftHttp | Api::EtcdV2 => false,
        }
    }

    async fn is_leader(&self, url: &str) -> bool {
        let base = url.trim_end_matches('/');
        match self.api {
            Api::DistraftHttp => json_at(&self.probe, &format!("{base}/"))
                .await
                .and_then(|status| status.pointer("/status/is_leader")?.as_bool())
                .unwrap_or(false),
            Api::EtcdV2 => json_at(&self.probe, &format!("{base}/v2/stats/self"))
                .await
                .is_some_and(|stats| stats["state"] == "StateLeader"),
            Api::DistraftGrpc => {
                let Some(channel) = probe_channel(base, &self.tls).await else {
                    return false;
                };
                let mut request = tonic::Request::new(crate::proto::v1::StatusRequest {});
                request.set_timeout(PROBE_TIMEOUT);
                bounded(PROBE_TIMEOUT, AdminClient::new(channel).status(request))
                    .await
                    .is_ok_and(|status| status.is_leader)
            }
            // A member leads when the leader it knows of is itself.
            Api::EtcdV3 => {
                let Some(channel) = probe_channel(base, &self.tls).await else {
                    return false;
                };
                let mut request = tonic::Request::new(etcd::StatusRequest {});
                request.set_timeout(PROBE_TIMEOUT);
                bounded(
                    PROBE_TIMEOUT,
                    MaintenanceClient::new(channel).status(request),
                )
                .await
                .is_ok_and(|status| {
                    status.leader != 0
                        && status.header.is_some_and(|h| h.member_id == status.leader)
                })
            }
        }
    }
}

/// A connection for one leader probe, or none if the node cannot be reached in time.
async fn probe_channel(base: &str, tls: &ClientTls) -> Option<Channel> {
    let endpoint = grpc_endpoint(base, tls)
        .ok()?
        .connect_timeout(PROBE_TIMEOUT);
    endpoint.connect().await.ok()
}

/// A gRPC connection to `base`, made on the first call: one per client, or one shared
/// by a node's clients (see [`Protocol::multiplexed`]).
fn lazy_channel(base: &str, tls: &ClientTls, timeout: Duration) -> anyhow::Result<Channel> {
    Ok(grpc_endpoint(base, tls)?
        .tcp_nodelay(true)
        .connect_timeout(timeout)
        .connect_lazy())
}

/// A value as the APIs send it: as is (gRPC, a string for distraft's and bytes shared
/// by every write for etcd's), and form-encoded (`value=...`, HTTP).
pub struct FormValue {
    text: String,
    raw: Bytes,
    form: Bytes,
}

/// A client's way to one node. Cloning shares the underlying connection(s); build a
/// new one with [`Connection::open`] for a connection of its own.
#[derive(Clone)]
pub enum Connection {
    /// HTTP/1.1 with keep-alive; one idle connection kept, so a client that sends one
    /// request at a time uses exactly one connection.
    Http {
        api: Api,
        client: reqwest::Client,
        base: String,
    },
    /// One HTTP/2 connection; concurrent calls are multiplexed on it.
    Grpc {
        kv: KvClient<Channel>,
        timeout: Duration,
        /// `Bearer <token>` for the `authorization` metadata, if a token was given.
        authorization: Option<MetadataValue<Ascii>>,
    },
    /// etcd's v3 API: one HTTP/2 connection, as for [`Connection::Grpc`]. No token:
    /// distraft's API token means nothing to etcd, whose v3 tokens come from its Auth
    /// service (which the bench does not speak) and which would take an
    /// `authorization` metadata for one of its own.
    Etcd {
        kv: EtcdKvClient<Channel>,
        timeout: Duration,
    },
}

/// `Bearer <token>`, refused early if it cannot be a header value.
fn bearer(token: &str) -> anyhow::Result<String> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("the API token must be visible ASCII characters without spaces");
    }
    Ok(format!("Bearer {token}"))
}

impl Connection {
    /// A new connection (made lazily, on the first request) to the node at `url`,
    /// sending the API `token` with every request if given; `tls` serves https://
    /// URLs.
    pub fn open(
        api: Api,
        url: &str,
        timeout: Duration,
        token: Option<&str>,
        tls: &ClientTls,
    ) -> anyhow::Result<Connection> {
        let base = url.trim_end_matches('/').to_string();
        let bearer = token.map(bearer).transpose()?;
        match api {
            Api::DistraftHttp | Api::EtcdV2 => {
                let mut headers = reqwest::header::HeaderMap::new();
                if let Some(bearer) = &bearer {
                    let mut value = reqwest::header::HeaderValue::from_str(bearer)?;
                    value.set_sensitive(true);
                    headers.insert(reqwest::header::AUTHORIZATION, value);
                }
                let client = tls
                    .reqwest(reqwest::Client::builder())
                    .default_headers(headers)
                    .timeout(timeout)
                    .tcp_nodelay(true)
                    .pool_max_idle_per_host(1)
                    .redirect(reqwest::redirect::Policy::limited(5))
                    .build()
                    .context("building the HTTP client")?;
                Ok(Connection::Http { api, client, base })
            }
            Api::DistraftGrpc => Ok(Connection::Grpc {
                kv: KvClient::new(lazy_channel(&base, tls, timeout)?),
                timeout,
                authorization: bearer.map(|b| b.parse()).transpose()?,
            }),
            Api::EtcdV3 => Ok(Connection::Etcd {
                kv: EtcdKvClient::new(lazy_channel(&base, tls, timeout)?),
                timeout,
            }),
        }
    }
}

impl distraft_bench::Connection for Connection {
    type Value = FormValue;
    type Error = OpError;

    fn encode(value: &str) -> anyhow::Result<FormValue> {
        let form = serde_urlencoded::to_string([("value", value)])
            .context("encoding the value as a form")?;
        Ok(FormValue {
            text: value.to_string(),
            raw: Bytes::copy_from_slice(value.as_bytes()),
            form: Bytes::from(form),
        })
    }

    async fn put(&mut self, key: &str, value: &FormValue) -> Result<(), OpError> {
        match self {
            Connection::Http { api, client, base } => {
                // Every distraft write carries an idempotency key, as the CLI's do, so
                // that the benchmark pays what exactly-once retries cost.
                let request = match api {
                    Api::EtcdV2 => client.put(key_url(&format!("{base}/v2/keys"), key)),
                    _ => client
                        .post(key_url(base, key))
                        .header("idempotency-key", new_idempotency_key()),
                };
                let response = request
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(value.form.clone())
                    .send()
                    .await?;
                finish(response).await
            }
            Connection::Grpc {
                kv,
                timeout,
                authorization,
            } => {
                let request = grpc_request(
                    PutRequest {
                        key: key.to_string(),
                        value: value.text.clone(),
                        precondition: None,
                    },
                    *timeout,
                    authorization.as_ref(),
                );
                let request = crate::rpc::idempotency::with_key(request, &new_idempotency_key());
                bounded(*timeout, kv.put(request)).await.map(drop)
            }
            Connection::Etcd { kv, timeout } => {
                let request = grpc_request(
                    etcd::PutRequest {
                        key: Bytes::from(key.to_string()),
                        value: value.raw.clone(),
                    },
                    *timeout,
                    None,
                );
                bounded(*timeout, kv.put(request)).await.map(drop)
            }
        }
    }

    async fn get(&mut self, key: &str, mode: ReadMode) -> Result<(), OpError> {
        let stale = mode == ReadMode::Stale;
        match self {
            Connection::Http { api, client, base } => {
                let request = match (api, stale) {
                    (Api::EtcdV2, false) => client
                        .get(key_url(&format!("{base}/v2/keys"), key))
                        .query(&[("quorum", "true")]),
                    (Api::EtcdV2, true) => client.get(key_url(&format!("{base}/v2/keys"), key)),
                    (_, false) => client.get(key_url(base, key)),
                    (_, true) => client.get(key_url(base, key)).query(&[("stale", "true")]),
                };
                finish(request.send().await?).await
            }
            Connection::Grpc {
                kv,
                timeout,
                authorization,
            } => {
                let request = grpc_request(
                    GetRequest {
                        key: key.to_string(),
                        stale,
                    },
                    *timeout,
                    authorization.as_ref(),
                );
                bounded(*timeout, kv.get(request)).await.map(drop)
            }
            // Linearizable: etcd's default, a ReadIndex on the leader before the read;
            // serializable: the member's own state, as distraft's stale reads.
            Connection::Etcd { kv, timeout } => {
                let request = grpc_request(
                    RangeRequest {
                        key: Bytes::from(key.to_string()),
                        serializable: stale,
                        ..RangeRequest::default()
                    },
                    *timeout,
                    None,
                );
                let found = bounded(*timeout, kv.range(request)).await?;
                if found.kvs.is_empty() {
                    Err(OpError::NotFound)
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// A gRPC request for `message` with the deadline `timeout` and the token's metadata.
fn grpc_request<T>(
    message: T,
    timeout: Duration,
    authorization: Option<&MetadataValue<Ascii>>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    if let Some(authorization) = authorization {
        request
            .metadata_mut()
            .insert("authorization", authorization.clone());
    }
    request
}

/// Reads the whole answer (so that the connection can be reused) and checks its status.
async fn finish(response: reqwest::Response) -> Result<(), OpError> {
    let status = response.status();
    response.bytes().await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(OpError::Http(status.as_u16()))
    }
}

/// Awaits a gRPC call, bounded even if the server ignores the deadline it was given.
async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, OpError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status.into()),
        Err(_elapsed) => Err(OpError::Timeout),
    }
}

/// A gRPC endpoint for `url`, with client TLS (used for https:// URLs) if given.
fn grpc_endpoint(url: &str, tls: &ClientTls) -> anyhow::Result<Endpoint> {
    let endpoint = Channel::from_shared(url.to_string())
        .with_context(|| format!("{url:?} is not a valid gRPC URL"))?;
    match tls.tonic() {
        Some(config) => endpoint
            .tls_config(config)
            .context("configuring TLS for the gRPC client"),
        None => Ok(endpoint),
    }
}

async fn json_at(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}
