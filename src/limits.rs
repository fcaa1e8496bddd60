//! Bounds at a node's edges, so that a flood of clients or a slow one meets a quick
//! 503 / RESOURCE_EXHAUSTED instead of slowing everyone down. The configurable ones are
//! here; every limit and its default is listed in docs/security.md.

use std::time::Duration;

use crate::config::parse::{parse_positive, parse_seconds, ConfigError};

/// HTTP/2 streams (concurrent requests) a gRPC client may open on one connection; a
/// well-behaved client queues beyond it.
pub const GRPC_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Requests served at once on one gRPC connection; past it a request is refused at
/// once with RESOURCE_EXHAUSTED (tonic's load shedding).
pub const GRPC_MAX_REQUESTS_PER_CONNECTION: usize = 1024;
/// Largest Admin request accepted (they are all empty messages).
pub const GRPC_MAX_ADMIN_MESSAGE_BYTES: usize = 64 * 1024;

/// The largest configurable count (far beyond any useful value; semaphores have a
/// ceiling).
const MAX_COUNT: usize = 1_000_000;

/// The configurable limits, as given on the command line or in the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Open HTTP connections on the client port; past it a new connection gets a 503
    /// and is closed.
    #[arg(long, env = "DISTRAFT_MAX_HTTP_CONNECTIONS", default_value = "1024")]
    pub max_http_connections: String,
    /// Seconds a client may take to send a request body once its head arrived.
    #[arg(long, env = "DISTRAFT_BODY_READ_TIMEOUT", default_value = "30")]
    pub body_read_timeout: String,
    /// Client writes this node forwards to the leader at once; past it a write is
    /// refused with 503 / RESOURCE_EXHAUSTED.
    #[arg(long, env = "DISTRAFT_MAX_FORWARDED_REQUESTS", default_value = "1024")]
    pub max_forwarded_requests: String,
}

/// The validated limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_http_connections: usize,
    pub body_read_timeout: Duration,
    pub max_forwarded_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_http_connections: 1024,
            body_read_timeout: Duration::from_secs(30),
            max_forwarded_requests: 1024,
        }
    }
}

impl Limits {
    pub fn from_args(args: &LimitArgs) -> Result<Limits, ConfigError> {
        let count = |var: &'static str, raw: &str| -> Result<usize, ConfigError> {
            match usize::try_from(parse_positive(var, raw)?) {
                Ok(n) if n <= MAX_COUNT => Ok(n),
                _ => Err(ConfigError::new(
                    var,
                    raw,
                    format!("is too large (at most {MAX_COUNT})"),
                )),
            }
        };
        Ok(Limits {
            max_http_connections: count(
                "DISTRAFT_MAX_HTTP_CONNECTIONS",
                &args.max_http_connections,
            )?,
            body_read_timeout: parse_seconds(
                "DISTRAFT_BODY_READ_TIMEOUT",
                &args.body_read_timeout,
            )?,
            max_forwarded_requests: count(
                "DISTRAFT_MAX_FORWARDED_REQUESTS",
                &args.max_forwarded_requests,
            )?,
        })
    }
}
