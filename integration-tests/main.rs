//! Black-box integration tests: real `distraft` processes on loopback with ephemeral
//! ports and temporary directories, driven only through HTTP and gRPC, as a user would.
//!
//! Run with `cargo test --test integration` (the README's test command runs them all).

mod access;
mod api;
mod backup;
mod faults;
mod idempotency;
mod leadership;
mod listing;
mod members;
mod observability;
mod storage;
mod tls;
mod tools;
mod upgrade;
mod versions;
mod watch;
mod wipe;
mod wire;

/// Real nodes on loopback: the test kit's harness, shared with the chaos tests.
use distraft_testkit::harness;
