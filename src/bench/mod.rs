//! `distraft bench`: a load generator for distraft (its HTTP gateway or its gRPC Kv
//! service) and, so that the two can be compared with the very same client, for etcd's
//! v2 HTTP API.
//!
//! - `distraft bench [OPTIONS]`: C concurrent clients for a duration or an op count, with
//!   a read/write mix; prints throughput and latency percentiles, optionally as JSON.
//! - `distraft bench failover`: light write load on the survivors, `kill -9` of the
//!   leader's process, and the time until the first write a survivor acknowledges.
//! - `distraft bench leader`: prints the URL of the node that currently leads.

mod client;
mod failover;
mod load;

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

pub use client::{Api, Connection, OpError};

/// Options of `distraft bench`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: Option<Mode>,
    #[command(flatten)]
    pub load: load::LoadArgs,
}

/// What `distraft bench` measures besides throughput and latency (the default).
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Kill the leader's process (SIGKILL) under light write load on the survivors and
    /// measure the time until a survivor acknowledges a write.
    Failover(failover::FailoverArgs),
    /// Print the URL of the node that currently leads (waits for one, bounded).
    Leader {
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// Which cluster, over which API.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The API to speak: distraft's HTTP gateway, distraft's gRPC Kv service, or etcd's
    /// v2 HTTP API (`etcd --enable-v2`).
    #[arg(long, value_enum, default_value_t = Api::DistraftHttp)]
    pub target: Api,
    /// The nodes' URLs, comma-separated: HTTP URLs (distraft's client port, etcd's
    /// client URL) or, for distraft-grpc, the gRPC URLs (the raft port). Clients are
    /// spread over them round-robin.
    #[arg(
        long,
        value_delimiter = ',',
        num_args = 1..,
        default_value = "http://127.0.0.1:5001"
    )]
    pub urls: Vec<String>,
    /// Send every request to the current leader only (found at start-up).
    #[arg(long)]
    pub leader: bool,
    /// Seconds a single request may take before it counts as an error.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    pub request_timeout: f64,
    /// The cluster's API token (DISTRAFT_API_TOKEN), sent as `Authorization: Bearer`.
    #[arg(long, env = "DISTRAFT_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For https:// URLs (a distraft cluster with TLS): --cacert, and for the gRPC
    /// port --cert/--key too.
    #[command(flatten)]
    pub tls: crate::tls::ClientTlsArgs,
}

impl TargetArgs {
    fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout)
    }

    /// A new connection to the node at `url` with these settings (API, request
    /// timeout, token) and the loaded TLS files.
    fn open(&self, url: &str, tls: &crate::tls::ClientTls) -> anyhow::Result<client::Connection> {
        let token = self.token.as_deref();
        client::Connection::open(self.target, url, self.request_timeout(), token, tls)
    }

    /// The URLs to load: all of them, or the leader's alone with `--leader`.
    async fn resolve_urls(&self) -> anyhow::Result<Vec<String>> {
        if self.leader {
            let leader = client::find_leader(self, LEADER_WAIT).await?;
            Ok(vec![leader])
        } else {
            Ok(self.urls.clone())
        }
    }
}

/// How long `--leader` and `bench leader` wait for the cluster to have a leader.
const LEADER_WAIT: Duration = Duration::from_secs(15);

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => Ok(seconds),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

/// Whether a read must be linearizable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadMode {
    /// distraft: ReadIndex; etcd v2: `?quorum=true`.
    Linearizable,
    /// Served from the contacted node's own state: distraft `?stale=true`, etcd v2
    /// without `quorum`.
    Stale,
}

/// Runs `distraft bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.mode {
        None => load::run(args.load).await,
        Some(Mode::Failover(failover)) => failover::run(failover).await,
        Some(Mode::Leader { target }) => {
            println!("{}", client::find_leader(&target, LEADER_WAIT).await?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
