//! The load generator behind `distraft bench`, generic over the protocol it speaks.
//!
//! - [`load`]: C concurrent clients for a duration or an op count, with a read/write
//!   mix; throughput and latency percentiles, printed and optionally as JSON.
//! - [`failover`]: light write load on the survivors, `kill -9` of the leader's
//!   process, and the time until the first write a survivor acknowledges.
//! - [`find_leader`]: which of the nodes currently leads.
//!
//! The caller plugs in a [`Protocol`] (how to reach a node, and ask it whether it leads)
//! and its [`Connection`]s (put and get); `distraft` does so for its HTTP gateway, its
//! gRPC Kv service and etcd's v2 and v3 APIs (in its `src/cli/bench/`). This crate
//! knows none of them, so that the load generator and its dependencies stay out of the
//! server.

pub mod failover;
mod leader;
pub mod load;

use std::fmt::{Debug, Display};
use std::future::Future;

use clap::ValueEnum;
use serde::Serialize;

pub use leader::find_leader;

/// How the clients reach the nodes of one cluster.
pub trait Protocol: Sync {
    /// How the reports name the protocol: `target` in the JSON (serde), the first word
    /// of the text (`Debug`).
    type Name: Serialize + Debug + Copy;
    type Connection: Connection;

    fn name(&self) -> Self::Name;

    /// A new connection to the node at `url` (which may connect lazily).
    fn open(&self, url: &str) -> anyhow::Result<Self::Connection>;

    /// Whether the clients on one node share one connection (a multiplexing protocol,
    /// like gRPC's HTTP/2) rather than each opening its own.
    fn multiplexed(&self) -> bool;

    /// Whether the node at `url` says it is the leader; false when it cannot be asked.
    fn is_leader(&self, url: &str) -> impl Future<Output = bool> + Send;
}

/// One client's way to one node. Cloning shares the underlying connection(s).
pub trait Connection: Clone + Send + 'static {
    /// A value as the protocol sends it, encoded once per run rather than per write.
    type Value: Send + Sync + 'static;
    /// Why one operation failed; its `Display` is the label errors are counted under.
    type Error: Display + Send;

    fn encode(value: &str) -> anyhow::Result<Self::Value>;

    /// Sets `key` to `value`; succeeds once the node acknowledged the write.
    fn put(
        &mut self,
        key: &str,
        value: &Self::Value,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Reads `key`, which must exist.
    fn get(
        &mut self,
        key: &str,
        mode: ReadMode,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Whether a read must be linearizable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadMode {
    /// distraft: ReadIndex; etcd v2: `?quorum=true`; etcd v3: `serializable=false`.
    Linearizable,
    /// Served from the contacted node's own state: distraft `?stale=true`, etcd v2
    /// without `quorum`, etcd v3 `serializable=true`.
    Stale,
}

/// Parses a flag's number of seconds, refusing what is not a positive finite number.
pub fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => Ok(seconds),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

/// Writes a report as pretty JSON to `path`, as `--json` asks.
fn write_json(path: &std::path::Path, report: &impl Serialize) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = serde_json::to_string_pretty(report).context("encoding the report")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests;
