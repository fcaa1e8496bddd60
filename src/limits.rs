//! Bounds at a node's edges, so that a flood of clients or a slow one meets a quick
//! 503 / RESOURCE_EXHAUSTED instead of slowing everyone down. The configurable ones are
//! here; every limit and its default is listed in docs/security.md.

use std::time::Duration;

use crate::config::parse::{parse_positive, parse_seconds, ConfigError};
use crate::watch::WatchLimits;

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
/// The largest configurable size in bytes (16 GiB).
const MAX_BYTES: usize = 16 << 30;

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
    /// Watchers (gRPC Kv.Watch streams, HTTP long-polls and event streams) this node
    /// serves at once; past it a new watch is refused with 503 / RESOURCE_EXHAUSTED.
    #[arg(long, env = "DISTRAFT_MAX_WATCHERS", default_value = "20000")]
    pub max_watchers: String,
    /// Changes the watch history keeps; a watch from an older index gets a resync.
    #[arg(long, env = "DISTRAFT_WATCH_HISTORY_EVENTS", default_value = "100000")]
    pub watch_history_events: String,
    /// Bytes of changes (keys, values, ~100 bytes each of overhead) the watch history
    /// keeps.
    #[arg(long, env = "DISTRAFT_WATCH_HISTORY_BYTES", default_value = "67108864")]
    pub watch_history_bytes: String,
    /// Messages buffered for one watcher; a watcher further behind is dropped and told
    /// the index to resume from.
    #[arg(long, env = "DISTRAFT_WATCH_BUFFER", default_value = "1024")]
    pub watch_buffer: String,
}

/// The validated limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_http_connections: usize,
    pub body_read_timeout: Duration,
    pub max_forwarded_requests: usize,
    pub watch: WatchLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_http_connections: 1024,
            body_read_timeout: Duration::from_secs(30),
            max_forwarded_requests: 1024,
            watch: WatchLimits::default(),
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
        let bytes = |var: &'static str, raw: &str| -> Result<usize, ConfigError> {
            match usize::try_from(parse_positive(var, raw)?) {
                Ok(n) if n <= MAX_BYTES => Ok(n),
                _ => Err(ConfigError::new(
                    var,
                    raw,
                    format!("is too large (at most {MAX_BYTES})"),
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
            watch: WatchLimits {
                max_watchers: count("DISTRAFT_MAX_WATCHERS", &args.max_watchers)?,
                history_events: count("DISTRAFT_WATCH_HISTORY_EVENTS", &args.watch_history_events)?,
                history_bytes: bytes("DISTRAFT_WATCH_HISTORY_BYTES", &args.watch_history_bytes)?,
                buffer: count("DISTRAFT_WATCH_BUFFER", &args.watch_buffer)?,
                ..WatchLimits::default()
            },
        })
    }
}
