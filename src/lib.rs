//! distraft: a Raft-replicated key-value store.
//!
//! The layout follows the architecture (see `docs/architecture.md`):
//! - [`raft`]: the consensus core, pure and deterministic (no I/O, no clock);
//! - [`proto`]: the gRPC wire contract generated from `proto/`.
pub mod bench;
pub mod cli;
pub mod config;
pub mod driver;
pub mod gateway;
pub mod kv;
pub mod linearizability;
pub mod node;
pub mod proto;
pub mod raft;
pub mod rpc;
pub mod storage;
