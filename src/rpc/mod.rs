//! gRPC: the server every node runs on its raft port, and its clients to the peers.
//!
//! - [`server`]: the Raft, Kv and Admin services, reflection and health;
//! - [`peers`]: one connection per peer, the driver's transport;
//! - [`convert`]: the mapping between core messages and Raft RPCs.
//!
//! The core is message-passing while gRPC is request/response. A request that arrives
//! is handed to the driver with a reply slot; the driver fills it with the reply the
//! core emits in that same turn, after persisting (or "unanswered" if the core had
//! none). Replies to our own requests come back as the RPC's response and are stepped
//! into the core as messages.

pub mod codec;
pub mod convert;
pub mod instrument;
pub mod peers;
pub mod refusals;
pub mod server;

pub use instrument::GrpcMetricsLayer;
pub use peers::{PeerTasks, Peers};
pub use server::{serve, ClientServices, INSUFFICIENT_STORAGE};
