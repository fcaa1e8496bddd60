//! `distraft bench`: the load generator (the `distraft-bench` crate, in bench/) speaking
//! distraft's HTTP gateway or its gRPC Kv service or, so that each can be compared with
//! etcd's counterpart through the very same client, etcd's v2 HTTP API or its v3 gRPC
//! API.
//!
//! - `distraft bench [OPTIONS]`: C concurrent clients for a duration or an op count, with
//!   a read/write mix; prints throughput and latency percentiles, optionally as JSON.
//! - `distraft bench failover`: light write load on the survivors, `kill -9` of the
//!   leader's process, and the time until the first write a survivor acknowledges.
//! - `distraft bench leader`: prints the URL of the node that currently leads.
//!
//! Here: the flags that say which cluster and how to reach it (with distraft's TLS
//! flags), and the clients of each API ([`client`]); the workload, the measurements and
//! the reports are the bench crate's.

mod client;

use std::time::Duration;

use clap::{Args, Subcommand};
use distraft_bench::{failover::Failover, find_leader, load::Workload, positive_seconds};

use client::{Api, Cluster};

/// Options of `distraft bench`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: Option<Mode>,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Options of a load run.
#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub workload: Workload,
}

/// What `distraft bench` measures besides throughput and latency (the default).
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Kill the leader's process (SIGKILL) under light write load on the survivors and
    /// measure the time until a survivor acknowledges a write.
    Failover(FailoverArgs),
    /// Print the URL of the node that currently leads (waits for one, bounded).
    Leader {
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// Options of `distraft bench failover`.
#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// The survivors (every node but the leader) receive the probes.
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub failover: Failover,
}

/// Which cluster, over which API.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The API to speak: distraft's HTTP gateway, distraft's gRPC Kv service, etcd's v2
    /// HTTP API (`etcd --enable-v2`) or etcd's v3 gRPC API.
    #[arg(long, value_enum, default_value_t = Api::DistraftHttp)]
    pub target: Api,
    /// The nodes' URLs, comma-separated: HTTP URLs (distraft's client port, etcd's
    /// client URL) or, for distraft-grpc, the gRPC URLs (the raft port); for etcd-v3,
    /// etcd's client URLs (it serves gRPC and HTTP on one port). Clients are spread over
    /// them round-robin.
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
    /// The cluster's API token (DISTRAFT_API_TOKEN), sent as `Authorization: Bearer`
    /// (to etcd v3 not at all: it means nothing there).
    #[arg(long, env = "DISTRAFT_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For https:// URLs (a distraft cluster with TLS): --cacert, and for the gRPC
    /// port --cert/--key too.
    #[command(flatten)]
    pub tls: crate::tls::ClientTlsArgs,
}

impl TargetArgs {
    /// The way to these nodes for the bench: API, request timeout, token, TLS files
    /// loaded.
    fn connect(&self) -> anyhow::Result<Cluster> {
        Cluster::new(
            self.target,
            Duration::from_secs_f64(self.request_timeout),
            self.token.clone(),
            self.tls.load()?,
        )
    }

    /// The URLs to load: all of them, or the leader's alone with `--leader`.
    async fn resolve_urls(&self, cluster: &Cluster) -> anyhow::Result<Vec<String>> {
        if self.leader {
            let leader = find_leader(cluster, &self.urls, LEADER_WAIT).await?;
            Ok(vec![leader])
        } else {
            Ok(self.urls.clone())
        }
    }
}

/// How long `--leader` and `bench leader` wait for the cluster to have a leader.
const LEADER_WAIT: Duration = Duration::from_secs(15);

/// Runs `distraft bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.mode {
        None => {
            let LoadArgs { target, workload } = args.load;
            let cluster = target.connect()?;
            let urls = target.resolve_urls(&cluster).await?;
            distraft_bench::load::run(&cluster, urls, workload).await
        }
        Some(Mode::Failover(FailoverArgs { target, failover })) => {
            let cluster = target.connect()?;
            distraft_bench::failover::run(&cluster, target.urls, &failover).await
        }
        Some(Mode::Leader { target }) => {
            let cluster = target.connect()?;
            println!(
                "{}",
                find_leader(&cluster, &target.urls, LEADER_WAIT).await?
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
