//! Counts every gRPC request the server answers, by service, method and status code
//! (`grpc_server_handled_total`, `grpc_server_handling_seconds`, the names of
//! go-grpc-prometheus that etcd exports): a tower layer around the whole server.
//!
//! The code is read from the response head: tonic puts `grpc-status` there when a call
//! fails before answering (every refusal, every unary error). A unary success, and a
//! stream, carry it in the trailers instead and count as OK; a stream that fails after
//! it started (a replication stream cut by a shutdown) is not told apart.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tonic::Code;
use tower::{Layer, Service};

use crate::metrics::metrics;

/// The services this server has: any other name is counted as "unknown", so that a
/// client cannot create label values at will.
const SERVICES: [&str; 6] = [
    "distraft.v1.Raft",
    "distraft.v1.Kv",
    "distraft.v1.Admin",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for GrpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = labels(request.uri().path());
        let method = method.to_string();
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let result = answer.await;
            let code = match &result {
                Ok(response) => code_of(response.headers()),
                // The transport failed under the service: nothing was answered.
                Err(_) => Code::Unavailable,
            };
            // An unknown method of a known service: do not keep the client's name.
            let method = match code {
                Code::Unimplemented => "unknown",
                _ => method.as_str(),
            };
            metrics().grpc_request(service, method, code, started.elapsed());
            result
        })
    }
}

/// The service and method of a request path `/<service>/<method>`, with unknown
/// services (and their methods) as "unknown".
fn labels(path: &str) -> (&'static str, &str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    match SERVICES.iter().find(|known| **known == service) {
        Some(known) if !method.is_empty() && !method.contains('/') => (known, method),
        Some(known) => (known, "unknown"),
        None => ("unknown", "unknown"),
    }
}

fn code_of(headers: &http::HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_never_take_a_clients_words() {
        assert_eq!(labels("/distraft.v1.Kv/Put"), ("distraft.v1.Kv", "Put"));
        assert_eq!(
            labels("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        assert_eq!(labels("/evil.Service/Anything"), ("unknown", "unknown"));
        assert_eq!(labels("/distraft.v1.Kv/"), ("distraft.v1.Kv", "unknown"));
        assert_eq!(labels("/distraft.v1.Kv/a/b"), ("distraft.v1.Kv", "unknown"));
        assert_eq!(labels(""), ("unknown", "unknown"));
    }

    #[test]
    fn the_code_comes_from_the_head() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(code_of(&headers), Code::Ok);
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert_eq!(code_of(&headers), Code::Unavailable);
        headers.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(code_of(&headers), Code::Ok);
    }
}
