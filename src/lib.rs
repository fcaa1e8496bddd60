//! distraft: a Raft-replicated key-value store.
//!
//! The layout follows the architecture (see `docs/architecture.md`):
//! - [`raft`]: the consensus core, pure and deterministic (no I/O, no clock);
//! - [`storage`]: the write-ahead log, hard state and snapshots, with crash recovery;
//! - [`driver`]: the one place where I/O meets Raft — persist, send, apply, answer;
//! - [`rpc`]: the tonic server (Raft, Admin, Kv) and the links to peers;
//! - [`gateway`]: the original curl/JSON API, translated into Kv/Admin calls;
//! - [`dashboard`]: the live cluster view at `/ui/`, embedded in the binary;
//! - [`config`]: the `DISTRAFT_*` settings and their flags; [`lifecycle`]: a node put
//!   together, run and shut down;
//! - [`status`]: a node's status as the JSON of `GET /` and the dashboard;
//! - [`metrics`]: the Prometheus registry behind `GET /metrics`; [`health`]: `/livez`, `/readyz`;
//! - [`access`]: API token, CORS origins, Host allowlist; [`limits`]: edge bounds;
//! - [`validation`]: the rules of a client's key and value, checked once per process;
//! - [`tls`]: optional mutual TLS (certificates, tonic and gateway configurations);
//! - [`kv`]: the replicated state machine; [`proto`]: the generated wire contract;
//! - [`cli`]: client subcommands, `distraft bench`'s clients among them (the load
//!   generator itself is the `distraft-bench` crate, in bench/);
//! - [`plant`]: bugs planted on purpose (feature `plants`) to show the tests catch them.
pub mod access;
pub mod backup;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod driver;
pub mod gateway;
pub mod health;
pub mod join;
pub mod kv;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod plant;
pub mod proto;
pub mod raft;
pub mod registry;
pub mod rpc;
pub mod status;
pub mod storage;
pub mod tls;
pub mod validation;
pub mod watch;
