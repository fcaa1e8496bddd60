//! The live member registry: who the members are (the core's [`Membership`] as this
//! node's log has it) and how to reach each (id ↔ name ↔ addresses).
//!
//! One registry per node, created with its [`Config`](crate::config::Config) and read
//! by every layer that names or reaches members: the Raft wire (`rpc::convert`), the
//! peer links (`rpc::peers`), the status report, the Admin service. The driver is its
//! only writer: it publishes the core's membership after every turn that changed it,
//! and learns the record of every member from the `ConfChange` entries that reach its
//! log and from the member table of the snapshots it loads.
//!
//! The address book only grows: a member's record stays after it is removed, because
//! ids are never reused (the next id is above every id ever recorded) and because a
//! record costs a few bytes. So a change taken back by a log truncation leaves a
//! record of a member that never was, which nothing uses: who is a member is the
//! membership's business, not the book's.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::raft::{Membership, NodeId};

/// One cluster member: its id, name and addresses (as `DISTRAFT_CLUSTER` lists them,
/// or as a membership change added it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub name: String,
    pub peer_host: String,
    pub peer_port: u16,
    pub client_host: String,
    pub client_port: u16,
}

impl Member {
    /// The URI of this member's gRPC server.
    pub fn grpc_uri(&self) -> String {
        format!("http://{}:{}", self.peer_host, self.peer_port)
    }
}

/// A member's record as it travels in the context of a `ConfChange` entry and is kept
/// in the state machine's member table: its name and addresses, and whether the
/// leader promotes it by itself once it has caught up (`DISTRAFT_AUTO_PROMOTE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub member: Member,
    pub auto_promote: bool,
}

/// The first field of an encoded record; a later layout gets another.
const RECORD_VERSION: u32 = 1;
/// Far above a real record (a name and two addresses).
const MAX_RECORD_BYTES: usize = 4096;

#[derive(Serialize, Deserialize)]
struct WireRecord {
    v: u32,
    name: String,
    peer: String,
    client: String,
    #[serde(default)]
    auto_promote: bool,
}

impl Record {
    /// The bytes of a `ConfChange` entry's context: one JSON object.
    pub fn encode(&self) -> Vec<u8> {
        let m = &self.member;
        let wire = WireRecord {
            v: RECORD_VERSION,
            name: m.name.clone(),
            peer: format!("{}:{}", m.peer_host, m.peer_port),
            client: format!("{}:{}", m.client_host, m.client_port),
            auto_promote: self.auto_promote,
        };
        // Strings and numbers only: serializing cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// The record of member `id` from a context made by [`Record::encode`]. Checked
    /// where bytes enter (the Raft port, the WAL, a snapshot image).
    pub fn decode(id: NodeId, bytes: &[u8]) -> Result<Record, String> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(format!("a member record of {} bytes", bytes.len()));
        }
        let wire: WireRecord = serde_json::from_slice(bytes)
            .map_err(|err| format!("an unreadable member record: {err}"))?;
        if wire.v != RECORD_VERSION {
            return Err(format!("a member record of unknown version {}", wire.v));
        }
        let (peer_host, peer_port) = host_port(&wire.peer)?;
        let (client_host, client_port) = host_port(&wire.client)?;
        check_name(&wire.name)?;
        Ok(Record {
            member: Member {
                id,
                name: wire.name,
                peer_host,
                peer_port,
                client_host,
                client_port,
            },
            auto_promote: wire.auto_promote,
        })
    }
}

/// A member name: what DISTRAFT_CLUSTER accepts and one segment of an HTTP path can
/// carry: 1 to 63 characters, lower case (names are lower-cased where configured),
/// no white space and none of `,=:/?#%` (the separators of DISTRAFT_CLUSTER and URLs).
pub fn check_name(name: &str) -> Result<(), String> {
    let fine = |c: char| {
        !c.is_whitespace() && !c.is_control() && !c.is_uppercase() && !",=:/?#%".contains(c)
    };
    if name.is_empty() || name.chars().count() > 63 || !name.chars().all(fine) {
        return Err(format!(
            "member name {:?} is not 1 to 63 lower-case characters without white space \
             or any of ,=:/?#%",
            name.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

/// `host:port`, as a member's address is written: a host of letters, digits, '-',
/// '_' and '.', and a port of 1 to 65535.
pub fn host_port(text: &str) -> Result<(String, u16), String> {
    let shown = || text.chars().take(64).collect::<String>();
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("address {:?} is not host:port", shown()))?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    let port = port.parse::<u16>().ok().filter(|p| *p > 0);
    match (host_ok, port) {
        (true, Some(port)) => Ok((host.to_lowercase(), port)),
        _ => Err(format!("address {:?} is not host:port", shown())),
    }
}

/// What the registry holds at one moment; readers hold an `Arc` of it, so that a
/// change never tears what they read.
#[derive(Debug, Clone, Default)]
pub struct Roster {
    /// Every member ever recorded, removed ones included.
    book: BTreeMap<NodeId, Record>,
    /// The members now, as this node's log has it.
    pub membership: Membership,
}

impl Roster {
    /// The record of `id`, member or not (any id ever recorded).
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.book.get(&id).map(|r| &r.member)
    }

    pub fn record(&self, id: NodeId) -> Option<&Record> {
        self.book.get(&id)
    }

    /// The member called `name`: the current member of that name, or else the most
    /// recently added one that ever had it (names are unique among current members;
    /// a removed member's name may be given again).
    pub fn named(&self, name: &str) -> Option<&Member> {
        let mut named = self.book.values().rev().filter(|r| r.member.name == name);
        let newest = named.clone().next();
        named
            .find(|r| self.membership.contains(r.member.id))
            .or(newest)
            .map(|r| &r.member)
    }

    /// The current members (voters, then learners), with their records.
    pub fn current(&self) -> impl Iterator<Item = &Member> {
        let m = &self.membership;
        m.voters
            .iter()
            .chain(&m.learners)
            .filter_map(|id| self.member(*id))
    }

    /// The id the next member gets: above every id ever recorded or in use.
    pub fn next_id(&self) -> NodeId {
        let recorded = self.book.keys().next_back().copied().unwrap_or(0);
        let in_use = self
            .membership
            .voters
            .iter()
            .chain(&self.membership.learners);
        in_use.copied().fold(recorded, NodeId::max) + 1
    }

    /// Every record, by id.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.book.values()
    }
}

/// The node's registry: cheap to clone, shared by every layer.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    now: Arc<RwLock<Arc<Roster>>>,
}

impl Registry {
    /// A registry that knows `records` and the membership `membership`.
    pub fn new(records: impl IntoIterator<Item = Record>, membership: Membership) -> Registry {
        let registry = Registry::default();
        registry.update(|roster| {
            roster.membership = membership;
            for record in records {
                roster.book.insert(record.member.id, record);
            }
        });
        registry
    }

    /// The roster now.
    pub fn roster(&self) -> Arc<Roster> {
        match self.now.read() {
            Ok(now) => now.clone(),
            // A writer panicked mid-update: what it left is still a whole roster.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Records members. A record already held is kept: an id names one member for
    /// good, and the addresses this node was configured with for a bootstrap member
    /// (its own view, maybe through a proxy or a NAT) stay its own, whatever view of
    /// them the leader wrote into a later change of that member.
    ///
    /// One exception: a record of another *name* replaces the one held. An addition
    /// that never committed can be taken back by a truncation, and a later leader
    /// that never saw it may give its id to another member; the newer entry then
    /// speaks for the id.
    pub fn learn(&self, records: impl IntoIterator<Item = Record>) {
        let roster = self.roster();
        let new: Vec<Record> = records
            .into_iter()
            .filter(|r| {
                roster
                    .book
                    .get(&r.member.id)
                    .is_none_or(|held| held.member.name != r.member.name)
            })
            .collect();
        if new.is_empty() {
            return;
        }
        self.update(|roster| {
            for record in new {
                roster.book.insert(record.member.id, record);
            }
        });
    }

    /// Publishes the membership in force, when it changed.
    pub fn set_membership(&self, membership: &Membership) {
        if self.roster().membership != *membership {
            self.update(|roster| roster.membership = membership.clone());
        }
    }

    fn update(&self, change: impl FnOnce(&mut Roster)) {
        let mut guard = match self.now.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = Roster::clone(&guard);
        change(&mut next);
        *guard = Arc::new(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: NodeId, name: &str) -> Record {
        Record {
            member: Member {
                id,
                name: name.into(),
                peer_host: "h".into(),
                peer_port: 1000 + id as u16,
                client_host: "h".into(),
                client_port: 2000 + id as u16,
            },
            auto_promote: id.is_multiple_of(2),
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let r = record(4, "d");
        assert_eq!(Record::decode(4, &r.encode()), Ok(r));
        for bad in [
            &b""[..],
            b"{}",
            br#"{"v":2,"name":"d","peer":"h:1","client":"h:2"}"#,
            br#"{"v":1,"name":"D","peer":"h:1","client":"h:2"}"#,
            br#"{"v":1,"name":"d","peer":"h:0","client":"h:2"}"#,
            br#"{"v":1,"name":"d","peer":"h","client":"h:2"}"#,
            br#"{"v":1,"name":"d/e","peer":"h:1","client":"h:2"}"#,
            br#"{"v":1,"name":"d","peer":"h:1","client":"h h:2"}"#,
        ] {
            assert!(
                Record::decode(4, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn names_resolve_to_the_current_member_and_ids_are_never_reused() {
        let registry = Registry::new(
            [record(1, "a"), record(2, "b"), record(3, "c")],
            Membership::with_voters([1, 2, 3]),
        );
        // c (3) is removed and replaced by a new c (4).
        registry.learn([record(4, "c")]);
        registry.set_membership(&Membership::with_voters([1, 2, 4]));
        let roster = registry.roster();
        assert_eq!(roster.named("c").map(|m| m.id), Some(4));
        assert_eq!(roster.member(3).map(|m| m.name.as_str()), Some("c"));
        assert_eq!(roster.next_id(), 5);
        assert_eq!(
            roster.current().map(|m| m.id).collect::<Vec<_>>(),
            [1, 2, 4]
        );
        // With neither c a member, the newest answers to the name.
        registry.set_membership(&Membership::with_voters([1, 2]));
        assert_eq!(registry.roster().named("c").map(|m| m.id), Some(4));
        assert_eq!(registry.roster().named("z"), None);
    }
}
