//! The Raft consensus core: a pure, deterministic state machine.
//!
//! No tokio, no sockets, no clock, no files: time arrives as [`RawNode::tick`], the
//! network as [`RawNode::step`], clients as [`RawNode::propose`] and
//! [`RawNode::read_index`], and randomness only from the seed given to
//! [`RawNode::new`]. Everything the core wants done comes back as a [`Ready`]: a
//! batch to persist, send, apply and answer. This is the "Ready" pattern of etcd's raft
//! and TiKV's raft-rs, and it is what lets the simulator (`tests/simulation.rs`) drive
//! whole clusters of cores through thousands of seeded schedules.
//!
//! # The driver's loop
//!
//! ```text
//! loop {
//!     feed inputs: tick() / step(msg) / propose(data) / read_index(id)   (any number)
//!     let rd = node.ready();
//!     send rd.messages                       <- the leader's appends: may go first
//!     persist rd.snapshot, rd.entries, rd.hard_state; fsync
//!     send rd.persisted_messages             <- only after the persist
//!     node.advance();
//!     apply rd.committed in order; then answer rd.reads, fail rd.failed_reads
//! }
//! ```
//!
//! **Persist before send**: a message in `Ready::persisted_messages` may promise
//! something that the same `Ready` persists (a vote, an appended entry), so none may
//! leave before the persist is durable. The exception is `Ready::messages`, the
//! leader's appends and heartbeats, which the leader sends while it writes its own log
//! (Raft thesis §10.2.1): the leader counts its own log towards a majority only for
//! entries persisted by an earlier `Ready` (that is, after `advance`), so an entry
//! commits only once a majority has it durably, whichever majority that is. The names
//! are raft-rs's.
//!
//! # Inputs
//! - [`RawNode::tick`]: one unit of logical time. Elections and heartbeats are counted
//!   in ticks ([`Config`]).
//! - [`RawNode::step`]: a message from a peer.
//! - [`RawNode::propose`]: a command for the log; on the leader it returns the index
//!   the entry will have (its term is [`RawNode::term`] at the call). The proposal has
//!   succeeded when an entry with that index *and* term is in `Ready::committed`; if a
//!   different entry is committed at that index, it is lost for good. Elsewhere it
//!   fails at once with [`RaftError::NotLeader`] and a leader hint.
//! - [`RawNode::read_index`]: a linearizable read (ReadIndex, Raft thesis §6.4). The
//!   leader records its commit index and confirms leadership with one heartbeat round
//!   shared by all reads that arrived meanwhile; a follower asks the leader. The read
//!   comes back in `Ready::reads` (serve it after applying that Ready's
//!   `committed`) or `Ready::failed_reads`.
//! - [`RawNode::compact`]: the driver has a snapshot of the state machine up to an
//!   applied index; the log up to it is dropped. A follower that needs what was dropped
//!   is sent `Body::Snapshot`; the transport attaches the image.
//!
//! # What it implements
//! Leader election with randomized timeouts, Pre-Vote and check-quorum with leader
//! stickiness; log replication with the consistency check, conflict truncation, fast
//! back-off by conflict hints, pipelining bounded per follower in messages and bytes,
//! batching of proposals into one message per follower per `Ready`, a no-op at the
//! start of each term and the commit rule of §5.4.2; ReadIndex; snapshots; learners,
//! which receive the log but never vote or count towards a quorum ([`Membership`]).
//! The membership is the bootstrap list ([`Config::voters`]) or a snapshot's; entries
//! have a kind ([`EntryKind`]), of which membership changes are not yet proposed.

mod log;
mod membership;
mod node;
mod progress;
mod read_only;
#[cfg(test)]
mod tests;
mod types;

pub use membership::VoteResult;
pub use node::{RawNode, Status};
pub use types::*;
