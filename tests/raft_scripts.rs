//! Transcript tests of the Raft core, in the style of etcd-raft's datadriven tests and
//! toyDB's goldenscripts: each file in `tests/scripts/raft/` drives a small in-memory
//! cluster of real `RawNode`s with commands (tick, campaign, propose, read, deliver,
//! partition, crash, compact, change, ...) and records what happened: every message
//! sent, every change of a node's role, term, vote, leader, log, commit index or
//! membership, every entry applied and every read served. The recorded output is the
//! expected transcript, so a script reads as a walk through the protocol.
//!
//! After a change that alters a transcript on purpose, regenerate the files and
//! review the diff:
//!
//! ```sh
//! UPDATE_GOLDENFILES=1 cargo test --test raft_scripts
//! ```
//!
//! Every node's Ready is carried out as soon as it has one, as the driver does:
//! persisted to its simulated disk, its messages queued on the network, applied.
//! Messages move only when a script delivers them, so the order of events is the
//! script's. Commands (node lists are ids like `1 2`, or `all` where noted):
//!
//! - `cluster N [max_msg_bytes=B]`: a fresh cluster of voters 1..=N (each script
//!   starts with 3); `max_msg_bytes=1` makes every append carry one entry.
//!   Elections time out after exactly 10 ticks, heartbeats go every 2, and a leader
//!   checks its quorum every 10, so scripts can count ticks.
//! - `join ID`: a new node with an empty disk that is no member yet. It starts, as
//!   every node does, from the cluster's bootstrap list (`Config::voters`, 1..=N), in
//!   which it is not: it never campaigns, and learns its membership from the log once
//!   a `change` adds it. (The bootstrap voters are in no entry, so a node that knew
//!   none would rebuild the membership of the log on an empty set and, once promoted,
//!   count itself the only voter.) Messages to a node that does not exist are dropped.
//! - `tick IDS|all [n=N]`: N ticks (default 1) on each node (`all`: every node,
//!   joined ones too).
//! - `campaign ID`: ticks the node until its election timer fires.
//! - `transfer ID [to=ID]`: asks leader ID to hand leadership over (to the most up
//!   to date voter when `to` is not given).
//! - `propose ID DATA`: a client's write; `read ID READ_ID...`: linearizable reads,
//!   arriving together.
//! - `change ID add-learner=N | add-voter=N | remove=N`: proposes a membership change
//!   at node ID (with no context); prints the index it got, or why the core refused
//!   it (not the leader, another change pending, a change that cannot apply).
//! - `deliver [from=ID] [to=ID]`: delivers the messages in flight (those between
//!   the given nodes), once; the answers they cause stay in flight.
//! - `stabilize`: delivers until nothing is in flight.
//! - `drop [from=ID] [to=ID]`: loses the messages in flight.
//! - `partition IDS`: cuts the given nodes off from the others; `heal` reconnects.
//!   Messages over a cut link are lost when delivered.
//! - `crash ID`: the node stops, keeping only its disk; `restart ID` starts it
//!   again from the disk.
//! - `compact ID INDEX`: the node snapshots its state machine at an applied index
//!   and drops its log up to there; prints the membership the snapshot records.
//! - `status [IDS]`, `log [IDS]`: a node's full state (its membership too when it is
//!   not the bootstrap one), or its disk (log, and the snapshot with the commands it
//!   holds).
//!
//! A node's membership (`voters=[..] learners=[..]`) is printed whenever it changes,
//! like the rest of its state; until then it is the bootstrap list.
//!
//! One scenario per file, named for the behaviour. A scenario that continues from an
//! earlier one replays that one's commands silently first (goldenscript's `(command)`
//! prints nothing) and says in its opening comment where things stand.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;

use bytes::Bytes;
use distraft::raft::{
    AppendOutcome, Body, ConfChange, Config, Entry, EntryKind, HardState, Index, Membership,
    Message, NodeId, RawNode, ReadId, RejectHint, Restored, Role, SnapshotMeta,
};
use goldenscript::{Argument, Command};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The state machine: every command applied, with its index. A snapshot is a copy.
type Applied = Vec<(Index, String)>;

/// What a node's Readys persisted: all that survives a crash.
#[derive(Default)]
struct Disk {
    hard_state: HardState,
    snapshot: Option<(SnapshotMeta, Applied)>,
    entries: BTreeMap<Index, Entry>,
}

struct Node {
    /// `None` while crashed.
    raw: Option<RawNode>,
    disk: Disk,
    applied: Applied,
    /// The image of a snapshot delivered to this node, until its Ready installs it.
    incoming_image: Option<Applied>,
    /// The state last printed, to print only changes.
    shown: String,
    /// The membership last printed (at first, the bootstrap voters).
    shown_membership: Membership,
    starts: u64,
}

/// A message in flight, with the state machine image a snapshot carries.
struct InFlight {
    msg: Message,
    image: Option<Applied>,
}

struct Cluster {
    settings: Settings,
    /// The bootstrap list every node starts from (`Config::voters`): 1..=N.
    voters: Vec<NodeId>,
    nodes: BTreeMap<NodeId, Node>,
    network: VecDeque<InFlight>,
    /// Links cut by a partition, both directions listed.
    cut: BTreeSet<(NodeId, NodeId)>,
}

/// Settings a script may change with `cluster`.
#[derive(Clone, Copy)]
struct Settings {
    /// Bytes of entries per append (at least one entry): 1 sends one entry at a time.
    max_msg_bytes: usize,
}

impl Settings {
    const DEFAULT: Settings = Settings {
        max_msg_bytes: 64 * 1024,
    };
}

fn config(id: NodeId, voters: &[NodeId], settings: Settings) -> Config {
    let mut cfg = Config::for_tests(id, voters.to_vec());
    // An exact election timeout, so that scripts can count ticks.
    cfg.election_ticks_min = 10;
    cfg.election_ticks_max = 11;
    cfg.max_msg_bytes = settings.max_msg_bytes;
    cfg
}

impl Node {
    /// A node with an empty disk, started from the bootstrap list `voters`.
    fn fresh(id: NodeId, voters: &[NodeId], settings: Settings) -> Node {
        let raw = RawNode::new(config(id, voters, settings), Restored::default(), id);
        Node {
            shown_membership: raw.membership().clone(),
            raw: Some(raw),
            disk: Disk::default(),
            applied: Vec::new(),
            incoming_image: None,
            shown: String::new(),
            starts: 1,
        }
    }
}

impl Cluster {
    fn new(n: u64, settings: Settings) -> Cluster {
        let voters: Vec<NodeId> = (1..=n).collect();
        let nodes = voters
            .iter()
            .map(|&id| (id, Node::fresh(id, &voters, settings)))
            .collect();
        Cluster {
            settings,
            voters,
            nodes,
            network: VecDeque::new(),
            cut: BTreeSet::new(),
        }
    }

    /// Every node, members or not.
    fn all(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn node(&mut self, id: NodeId) -> Result<&mut Node> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| format!("no node {id}").into())
    }

    fn raw(&mut self, id: NodeId) -> Result<&mut RawNode> {
        self.node(id)?
            .raw
            .as_mut()
            .ok_or_else(|| format!("n{id} is down").into())
    }

    /// Prints the node's state if it changed since last printed.
    fn show_changes(&mut self, id: NodeId, out: &mut String) -> Result<()> {
        let node = self.node(id)?;
        let state = match &node.raw {
            Some(raw) => summary(raw),
            None => "down".to_string(),
        };
        if state != node.shown {
            writeln!(out, "n{id}: {state}")?;
            node.shown = state;
        }
        if let Some(raw) = &node.raw {
            if *raw.membership() != node.shown_membership {
                writeln!(out, "n{id}: {}", show_membership(raw.membership()))?;
                node.shown_membership = raw.membership().clone();
            }
        }
        Ok(())
    }

    /// Carries out every Ready the node has, as the driver would, printing it.
    fn process(&mut self, id: NodeId, out: &mut String) -> Result<()> {
        self.show_changes(id, out)?;
        let mut sent = Vec::new();
        let node = self.node(id)?;
        let Some(raw) = node.raw.as_mut() else {
            return Ok(());
        };
        while raw.has_ready() {
            let rd = raw.ready();
            // 1. Persist.
            if let Some(meta) = rd.snapshot {
                let image = node
                    .incoming_image
                    .take()
                    .ok_or("a snapshot to install without its image")?;
                writeln!(out, "n{id}: installs snapshot {}@{}", meta.index, meta.term)?;
                node.disk.entries.retain(|&index, _| index > meta.index);
                node.applied = image.clone();
                node.disk.snapshot = Some((meta, image));
            }
            if let Some(first) = rd.entries.first() {
                node.disk.entries.split_off(&first.index);
            }
            for entry in rd.entries {
                node.disk.entries.insert(entry.index, entry);
            }
            if let Some(hs) = rd.hard_state {
                node.disk.hard_state = hs;
            }
            // 2. Send; a snapshot carries the image the node's disk holds.
            for msg in rd.messages.into_iter().chain(rd.persisted_messages) {
                let image = match msg.body {
                    Body::Snapshot { .. } => node.disk.snapshot.as_ref().map(|(_, i)| i.clone()),
                    _ => None,
                };
                writeln!(out, "{}", show_message(&msg))?;
                sent.push(InFlight { msg, image });
            }
            // 3.
            raw.advance();
            // 4. Apply, 5. answer reads.
            for entry in rd.committed {
                let data = String::from_utf8_lossy(&entry.data).into_owned();
                writeln!(out, "n{id}: applies {}", show_entry(&entry))?;
                // The state machine holds the commands; no-ops and membership
                // changes are the core's.
                if entry.kind == EntryKind::Normal {
                    node.applied.push((entry.index, data));
                }
            }
            for read in rd.reads {
                writeln!(
                    out,
                    "n{id}: read {} served at index {}",
                    read.id, read.index
                )?;
            }
            for (read, err) in rd.failed_reads {
                writeln!(out, "n{id}: read {read} failed: {err}")?;
            }
        }
        self.network.extend(sent);
        self.show_changes(id, out)
    }

    /// Delivers the messages in flight that `filter` selects, once each.
    fn deliver(&mut self, filter: &Filter, out: &mut String) -> Result<()> {
        let (now, later): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|f| filter.matches(&f.msg));
        self.network = later;
        for InFlight { msg, image } in now {
            let (from, to) = (msg.from, msg.to);
            if self.cut.contains(&(from, to)) {
                writeln!(out, "dropped (partition): {}", show_message(&msg))?;
                continue;
            }
            let Some(node) = self.nodes.get_mut(&to) else {
                writeln!(out, "dropped (no n{to}): {}", show_message(&msg))?;
                continue;
            };
            let Some(raw) = node.raw.as_mut() else {
                writeln!(out, "dropped (n{to} is down): {}", show_message(&msg))?;
                continue;
            };
            if image.is_some() {
                node.incoming_image = image;
            }
            raw.step(msg);
            self.process(to, out)?;
        }
        Ok(())
    }

    fn compact(&mut self, id: NodeId, index: Index, out: &mut String) -> Result<()> {
        let node = self.node(id)?;
        let raw = node.raw.as_mut().ok_or("the node is down")?;
        if index > raw.status().applied {
            return Err(format!("n{id} has not applied {index}").into());
        }
        if !node.disk.entries.contains_key(&index) {
            return Err(format!("n{id} has no entry {index} on disk").into());
        }
        raw.compact(index);
        // What the core says a snapshot at `index` holds: its term, and the
        // membership as of that entry.
        let meta = raw.snapshot_meta();
        let image: Applied = node
            .applied
            .iter()
            .filter(|(i, _)| *i <= index)
            .cloned()
            .collect();
        writeln!(
            out,
            "n{id}: snapshot at {}@{} ({}), log compacted",
            meta.index,
            meta.term,
            show_membership(&meta.membership)
        )?;
        node.disk.entries.retain(|&i, _| i > index);
        node.disk.snapshot = Some((meta, image));
        Ok(())
    }

    fn restart(&mut self, id: NodeId, out: &mut String) -> Result<()> {
        let cfg = config(id, &self.voters, self.settings);
        let node = self.node(id)?;
        if node.raw.is_some() {
            return Err(format!("n{id} is up").into());
        }
        let restored = Restored {
            hard_state: node.disk.hard_state,
            snapshot: node.disk.snapshot.as_ref().map(|(m, _)| m.clone()),
            entries: node.disk.entries.values().cloned().collect(),
            reset_term: None,
        };
        node.applied = node
            .disk
            .snapshot
            .as_ref()
            .map(|(_, image)| image.clone())
            .unwrap_or_default();
        node.starts += 1;
        let seed = id + 100 * node.starts;
        node.raw = Some(RawNode::new(cfg, restored, seed));
        self.process(id, out)
    }
}

/// A node's state in one line.
fn summary(raw: &RawNode) -> String {
    let s = raw.status();
    let role = match s.role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    };
    let id = |v: Option<NodeId>| v.map_or("-".to_string(), |v| v.to_string());
    format!(
        "{role} term={} vote={} leader={} last={}@{} commit={} applied={}",
        s.term,
        id(s.vote),
        id(s.leader),
        s.last_index,
        s.last_term,
        s.commit,
        s.applied
    )
}

fn show_entry(e: &Entry) -> String {
    let what = match e.kind {
        EntryKind::Noop => "no-op".to_string(),
        EntryKind::Normal => String::from_utf8_lossy(&e.data).into_owned(),
        EntryKind::ConfChange => match ConfChange::decode(&e.data) {
            Ok((change, _)) => show_change(change),
            Err(err) => format!("<bad membership change: {err}>"),
        },
    };
    format!("{}@{} {what}", e.index, e.term)
}

/// A membership change as a script writes it.
fn show_change(change: ConfChange) -> String {
    match change {
        ConfChange::AddLearner(id) => format!("add-learner={id}"),
        ConfChange::AddVoter(id) => format!("add-voter={id}"),
        ConfChange::Remove(id) => format!("remove={id}"),
    }
}

fn show_membership(m: &Membership) -> String {
    let list = |ids: &BTreeSet<NodeId>| {
        let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        ids.join(" ")
    };
    format!(
        "voters=[{}] learners=[{}]",
        list(&m.voters),
        list(&m.learners)
    )
}

/// One message, every kind spelled out (a new kind does not compile until it is
/// shown here).
fn show_message(m: &Message) -> String {
    let yes_no = |granted: bool| if granted { "granted" } else { "rejected" };
    let body = match &m.body {
        Body::PreVote {
            last_index,
            last_term,
        } => format!("PreVote last={last_index}@{last_term}"),
        Body::PreVoteResponse { granted } => format!("PreVoteResponse {}", yes_no(*granted)),
        Body::Vote {
            last_index,
            last_term,
            transfer,
        } => format!(
            "Vote last={last_index}@{last_term}{}",
            if *transfer { " transfer" } else { "" }
        ),
        Body::VoteResponse { granted } => format!("VoteResponse {}", yes_no(*granted)),
        Body::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => {
            let entries: Vec<String> = entries.iter().map(show_entry).collect();
            format!(
                "Append prev={prev_index}@{prev_term} [{}] commit={commit}",
                entries.join(", ")
            )
        }
        Body::AppendResponse { outcome } => match outcome {
            AppendOutcome::Match { index } => format!("AppendResponse match={index}"),
            AppendOutcome::Reject { index, hint } => {
                let hint = match hint {
                    Some(RejectHint::Conflict { term, first_index }) => {
                        format!(" hint=(term {term} from {first_index})")
                    }
                    Some(RejectHint::LogEnds { next_index }) => {
                        format!(" hint=(log ends before {next_index})")
                    }
                    None => String::new(),
                };
                format!("AppendResponse reject={index}{hint}")
            }
            AppendOutcome::StaleTerm => "AppendResponse stale-term".to_string(),
        },
        Body::Heartbeat { commit, read_seq } => {
            format!("Heartbeat commit={commit} read_seq={read_seq}")
        }
        Body::HeartbeatResponse { read_seq } => format!("HeartbeatResponse read_seq={read_seq}"),
        Body::Snapshot { meta } => format!("Snapshot {}@{}", meta.index, meta.term),
        Body::TimeoutNow => "TimeoutNow".to_string(),
        Body::ReadIndex { id } => format!("ReadIndex id={id}"),
        Body::ReadIndexResponse { id, index } => match index {
            Some(index) => format!("ReadIndexResponse id={id} index={index}"),
            None => format!("ReadIndexResponse id={id} failed"),
        },
    };
    format!("n{} → n{} term={} {body}", m.from, m.to, m.term)
}

/// Which messages in flight a `deliver` or `drop` is about.
#[derive(Default)]
struct Filter {
    from: Option<NodeId>,
    to: Option<NodeId>,
}

impl Filter {
    fn parse(command: &Command) -> Result<Filter> {
        let mut args = command.consume_args();
        let filter = Filter {
            from: args.lookup_parse("from")?,
            to: args.lookup_parse("to")?,
        };
        args.reject_rest()?;
        Ok(filter)
    }

    fn matches(&self, m: &Message) -> bool {
        self.from.is_none_or(|f| f == m.from) && self.to.is_none_or(|t| t == m.to)
    }
}

/// Node ids among positional arguments; `all` means every node.
fn ids(cluster: &Cluster, args: &[&Argument]) -> Result<Vec<NodeId>> {
    if args.iter().any(|a| a.value == "all") {
        return Ok(cluster.all());
    }
    args.iter().map(|a| a.parse()).collect()
}

impl goldenscript::Runner for Cluster {
    fn start_script(&mut self) -> Result<()> {
        *self = Cluster::new(3, Settings::DEFAULT);
        Ok(())
    }

    fn run(&mut self, command: &Command) -> Result<String> {
        let mut out = String::new();
        match command.name.as_str() {
            "cluster" => {
                let mut args = command.consume_args();
                let n: u64 = args.next_pos().ok_or("cluster N")?.parse()?;
                let max_msg_bytes = args
                    .lookup_parse("max_msg_bytes")?
                    .unwrap_or(Settings::DEFAULT.max_msg_bytes);
                args.reject_rest()?;
                *self = Cluster::new(n, Settings { max_msg_bytes });
                for id in self.voters.clone() {
                    self.show_changes(id, &mut out)?;
                }
            }
            "tick" => {
                let mut args = command.consume_args();
                let n: u64 = args.lookup_parse("n")?.unwrap_or(1);
                let ids = ids(self, &args.rest_pos())?;
                args.reject_rest()?;
                for id in ids {
                    for _ in 0..n {
                        self.raw(id)?.tick();
                        self.process(id, &mut out)?;
                    }
                }
            }
            "campaign" => {
                let mut args = command.consume_args();
                let id: NodeId = args.next_pos().ok_or("campaign ID")?.parse()?;
                args.reject_rest()?;
                for ticks in 1..=100 {
                    let raw = self.raw(id)?;
                    let term = raw.term();
                    raw.tick();
                    // The timer fired: the node asks for (pre-)votes, or, alone in
                    // its cluster, simply takes the next term.
                    let campaigned = raw.has_ready() && raw.term() != term
                        || raw.role() == Role::PreCandidate && raw.has_ready();
                    if campaigned {
                        writeln!(out, "n{id}: election timeout after {ticks} ticks")?;
                        return self.process(id, &mut out).map(|()| out);
                    }
                    self.process(id, &mut out)?;
                }
                // With what the ticks did print, which an error would hide.
                return Err(format!("{out}n{id} did not campaign in 100 ticks").into());
            }
            "propose" => {
                let mut args = command.consume_args();
                let id: NodeId = args.next_pos().ok_or("propose ID DATA")?.parse()?;
                let data = args.next_pos().ok_or("propose ID DATA")?.value.clone();
                args.reject_rest()?;
                let raw = self.raw(id)?;
                match raw.propose(Bytes::from(data)) {
                    Ok(index) => writeln!(out, "n{id}: proposed at {index}@{}", raw.term())?,
                    Err(err) => writeln!(out, "n{id}: proposal refused: {err}")?,
                }
                self.process(id, &mut out)?;
            }
            "transfer" => {
                let mut args = command.consume_args();
                let id: NodeId = args.next_pos().ok_or("transfer ID [to=ID]")?.parse()?;
                let to: Option<NodeId> = args.lookup_parse("to")?;
                args.reject_rest()?;
                match self.raw(id)?.transfer_leader(to) {
                    Ok(target) => writeln!(out, "n{id}: transferring leadership to n{target}")?,
                    Err(err) => writeln!(out, "n{id}: transfer refused: {err}")?,
                }
                self.process(id, &mut out)?;
            }
            "change" => {
                let mut args = command.consume_args();
                let usage = "change ID add-learner=N | add-voter=N | remove=N";
                let id: NodeId = args.next_pos().ok_or(usage)?.parse()?;
                let change = match (
                    args.lookup_parse("add-learner")?,
                    args.lookup_parse("add-voter")?,
                    args.lookup_parse("remove")?,
                ) {
                    (Some(n), None, None) => ConfChange::AddLearner(n),
                    (None, Some(n), None) => ConfChange::AddVoter(n),
                    (None, None, Some(n)) => ConfChange::Remove(n),
                    _ => return Err(usage.into()),
                };
                args.reject_rest()?;
                let raw = self.raw(id)?;
                match raw.propose_conf_change(change, b"") {
                    Ok(index) => writeln!(
                        out,
                        "n{id}: proposed {} at {index}@{}",
                        show_change(change),
                        raw.term()
                    )?,
                    Err(err) => writeln!(out, "n{id}: change refused: {err}")?,
                }
                self.process(id, &mut out)?;
            }
            "join" => {
                let mut args = command.consume_args();
                let id: NodeId = args.next_pos().ok_or("join ID")?.parse()?;
                args.reject_rest()?;
                if self.nodes.contains_key(&id) {
                    return Err(format!("n{id} exists").into());
                }
                let node = Node::fresh(id, &self.voters, self.settings);
                self.nodes.insert(id, node);
                self.process(id, &mut out)?;
            }
            "read" => {
                let mut args = command.consume_args();
                let id: NodeId = args.next_pos().ok_or("read ID READ_ID...")?.parse()?;
                let reads = args.rest_pos();
                args.reject_rest()?;
                // All arrive before the node's next Ready, as in one driver turn.
                for read in reads {
                    let read: ReadId = read.parse()?;
                    self.raw(id)?.read_index(read);
                }
                self.process(id, &mut out)?;
            }
            "deliver" => {
                let filter = Filter::parse(command)?;
                self.deliver(&filter, &mut out)?;
            }
            "stabilize" => {
                command.consume_args().reject_rest()?;
                for _ in 0..100 {
                    if self.network.is_empty() {
                        return Ok(out);
                    }
                    self.deliver(&Filter::default(), &mut out)?;
                }
                return Err("still messages in flight after 100 rounds".into());
            }
            "drop" => {
                let filter = Filter::parse(command)?;
                self.network.retain(|f| !filter.matches(&f.msg));
            }
            "partition" => {
                let group = ids(self, &command.consume_args().rest_pos())?;
                let others: Vec<NodeId> = self
                    .all()
                    .into_iter()
                    .filter(|v| !group.contains(v))
                    .collect();
                for &a in &group {
                    for &b in &others {
                        self.cut.insert((a, b));
                        self.cut.insert((b, a));
                    }
                }
            }
            "heal" => {
                command.consume_args().reject_rest()?;
                self.cut.clear();
            }
            "crash" => {
                let mut args = command.consume_args();
                let id: NodeId = args.next_pos().ok_or("crash ID")?.parse()?;
                args.reject_rest()?;
                let node = self.node(id)?;
                node.raw = None;
                node.incoming_image = None;
                self.show_changes(id, &mut out)?;
            }
            "restart" => {
                let mut args = command.consume_args();
                let id: NodeId = args.next_pos().ok_or("restart ID")?.parse()?;
                args.reject_rest()?;
                self.restart(id, &mut out)?;
            }
            "compact" => {
                let mut args = command.consume_args();
                let id: NodeId = args.next_pos().ok_or("compact ID INDEX")?.parse()?;
                let index: Index = args.next_pos().ok_or("compact ID INDEX")?.parse()?;
                args.reject_rest()?;
                self.compact(id, index, &mut out)?;
            }
            "status" => {
                let ids = ids(self, &command.consume_args().rest_pos())?;
                let ids = if ids.is_empty() { self.all() } else { ids };
                let bootstrap = Membership::with_voters(self.voters.iter().copied());
                for id in ids {
                    let node = self.node(id)?;
                    let Some(raw) = &node.raw else {
                        writeln!(out, "n{id}: down")?;
                        continue;
                    };
                    let s = raw.status();
                    writeln!(out, "n{id}: {} snapshot={}", summary(raw), s.snapshot_index)?;
                    if *raw.membership() != bootstrap {
                        writeln!(out, "    {}", show_membership(raw.membership()))?;
                    }
                    for (peer, matched, next) in s.progress {
                        writeln!(out, "    n{peer}: match={matched} next={next}")?;
                    }
                }
            }
            "log" => {
                let ids = ids(self, &command.consume_args().rest_pos())?;
                let ids = if ids.is_empty() { self.all() } else { ids };
                for id in ids {
                    let disk = &self.node(id)?.disk;
                    let mut line = format!("n{id}:");
                    if let Some((meta, image)) = &disk.snapshot {
                        let image: Vec<&str> = image.iter().map(|(_, d)| d.as_str()).collect();
                        write!(
                            line,
                            " [snapshot {}@{}: {}]",
                            meta.index,
                            meta.term,
                            image.join(" ")
                        )?;
                    }
                    for entry in disk.entries.values() {
                        write!(line, " {}", show_entry(entry))?;
                    }
                    writeln!(out, "{line}")?;
                }
            }
            name => return Err(format!("unknown command {name}").into()),
        }
        Ok(out)
    }
}

fn run_script(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts/raft")
        .join(format!("{name}.txt"));
    let mut cluster = Cluster::new(3, Settings::DEFAULT);
    if let Err(err) = goldenscript::run(&mut cluster, &path) {
        panic!("{}: {err}", path.display());
    }
}

macro_rules! scripts {
    ($($name:ident),* $(,)?) => {
        $(#[test]
        fn $name() {
            run_script(stringify!($name));
        })*

        /// Every script in the folder has its test above.
        #[test]
        fn every_script_runs() {
            let listed = [$(stringify!($name)),*];
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/raft");
            for entry in std::fs::read_dir(&dir).expect("tests/scripts/raft exists") {
                let path = entry.expect("readable directory").path();
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                assert!(listed.contains(&stem), "{} has no test in raft_scripts.rs", path.display());
            }
        }
    };
}

scripts!(
    election,
    election_split_vote,
    election_log_check,
    election_vote_persisted,
    election_stickiness,
    pre_vote,
    check_quorum,
    check_quorum_new_leader,
    check_quorum_stale_leader,
    replication,
    log_repair_uncommitted,
    log_repair_diverged,
    log_repair_behind,
    commit_rule,
    read_index,
    read_index_refused,
    snapshot_compaction,
    snapshot_install,
    transfer,
    transfer_catch_up,
    transfer_abandoned,
    membership_learner,
    membership_learner_quorum,
    membership_learner_vote,
    membership_promote,
    membership_one_at_a_time,
    membership_noop_first,
    membership_remove_leader,
    membership_removed_node,
    membership_removed_voter_not_counted,
    membership_truncated_change,
);
