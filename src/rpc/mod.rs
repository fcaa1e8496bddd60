//! gRPC: the server every node runs on its raft port, and its clients to the peers.
//!
//! - [`server`]: the gRPC server: every service below, reflection and health;
//! - [`raft`], [`kv`], [`admin`]: one file per service;
//! - [`outcome`], [`deadline`], [`auth`]: what the client services share (errors as
//!   statuses, deadlines, the API token);
//! - [`stop`]: the stop signal the server and its streams share;
//! - [`peers`]: one connection per peer, the driver's transport;
//! - [`convert`]: the mapping between core messages and Raft RPCs.
//!
//! The core is message-passing while gRPC is request/response. A request that arrives
//! is handed to the driver with a reply slot; the driver fills it with the reply the
//! core emits in that same turn, after persisting (or "unanswered" if the core had
//! none). Replies to our own requests come back as the RPC's response and are stepped
//! into the core as messages.

mod admin;
mod auth;
pub mod codec;
pub mod convert;
mod deadline;
pub mod idempotency;
pub mod instrument;
mod kv;
mod outcome;
pub mod peers;
mod raft;
pub mod refusals;
pub mod server;
mod stop;
mod watch;

pub use admin::AdminService;
pub use admin::BackupChunks;
pub use instrument::GrpcMetricsLayer;
pub use kv::{
    list_query, txn_command, KvService, MAX_LIST_LIMIT, MAX_TXN_COMPARES, MAX_TXN_WRITES,
};
pub use outcome::{
    forward_again, index_of_not_found, precondition_failure, status_of, INDEX,
    INSUFFICIENT_STORAGE, NOT_APPLIED,
};
pub use peers::{PeerTasks, Peers};
pub use server::{serve, ClientServices};
pub use watch::{watch_request, WatchStream, RESUME_INDEX};
