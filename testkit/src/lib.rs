//! distraft's test tools, kept out of the server: a dev-dependency of distraft's own
//! tests, never part of a node.
//!
//! - [`linearizability`]: the history checker the simulator and the chaos tests use;
//! - [`harness`]: real `distraft` processes on loopback, driven through HTTP and gRPC,
//!   for the integration and chaos tests.

pub mod harness;
pub mod linearizability;
