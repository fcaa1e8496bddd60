//! Deterministic simulation of clusters of bare Raft cores (issue #2).
//!
//! The simulator of whole nodes (`tests/simulation.rs`) runs the real driver; this one
//! drives bare `RawNode`s and carries out their `Ready`s itself, which lets it do what
//! a real driver never does and a core must survive anyway: step messages into a core
//! while that core's persist is still running, and vary the cores' flow-control limits
//! (message bytes, messages in flight), which is where commit-rule and back-off bugs
//! show (`scripts/plants.sh` relies on it for committing old-term entries by counting).
//!
//! A seeded scheduler drives 3- and 5-node clusters through a network that drops,
//! duplicates, delays and reorders messages and makes symmetric, one-way, leader-isolating
//! and bridge partitions; nodes crash (also halfway through handling a `Ready`) and restart
//! with exactly what their simulated disk acknowledged; clients write, delete and read
//! (ReadIndex) through random nodes. After every tick the safety properties of Raft are
//! checked; at the end the clients' history must be linearizable, and once the faults heal a
//! leader must emerge and commit a new write within a bounded number of ticks.
//!
//! `DISTRAFT_SIM_SEEDS=N` runs N seeds per configuration (default 2000);
//! `DISTRAFT_SIM_SEED=S` replays exactly seed S (printed on failure).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use bytes::Bytes;
use distraft::raft::{
    Body, Config, Entry, HardState, Index, LogReader, Message, NodeId, RawNode, Ready, Restored,
    Role, SnapshotMeta, Term,
};
use distraft_testkit::linearizability::{self, KvOp, KvOutcome, Operation};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

type Kv = BTreeMap<String, String>;
/// A snapshot as it travels: its metadata and the state machine image.
type SnapshotImage = (SnapshotMeta, Kv);

/// How hostile one configuration is.
#[derive(Clone, Debug)]
struct Scenario {
    nodes: u64,
    /// Ticks with faults, then ticks to heal and settle.
    fault_ticks: u64,
    heal_ticks: u64,
    clients: u64,
    keys: u64,
    drop: f64,
    duplicate: f64,
    max_delay: u64,
    crash_per_tick: f64,
    /// The share of crashes after which the node comes back wiped, as by
    /// `DISTRAFT_RESET_LOGS` (one wiped node at a time, as docs/storage.md asks).
    wipe_per_crash: f64,
    partition_per_tick: f64,
    pause_per_tick: f64,
    /// The share of persists (fsyncs) that take 1-4 ticks, during which the node keeps
    /// receiving messages: the window in which only the leader's replication is out.
    slow_fsync: f64,
    /// Entries applied since the last snapshot before a node compacts its log.
    snapshot_every: u64,
    client_timeout: u64,
    /// Flow control of the cores: small values split batches across messages, which
    /// is where commit-rule and back-off bugs show.
    max_msg_bytes: usize,
    max_inflight_msgs: usize,
    /// Payload bytes each core keeps in memory: small values evict nearly every
    /// applied entry, so that leaders read entries back from the disk all the time.
    max_cached_bytes: usize,
}

impl Scenario {
    fn new(nodes: u64) -> Scenario {
        Scenario {
            nodes,
            fault_ticks: 600,
            heal_ticks: 200,
            clients: 4,
            keys: 3,
            drop: 0.05,
            duplicate: 0.02,
            max_delay: 3,
            crash_per_tick: 0.004,
            wipe_per_crash: 0.25,
            partition_per_tick: 0.01,
            pause_per_tick: 0.003,
            slow_fsync: 0.2,
            snapshot_every: 12,
            client_timeout: 80,
            max_msg_bytes: 64 * 1024,
            max_inflight_msgs: 16,
            max_cached_bytes: usize::MAX,
        }
    }
}

/// What a node's disk holds: exactly what its storage acknowledged.
#[derive(Clone, Default)]
struct Disk {
    hard_state: HardState,
    snapshot: Option<(SnapshotMeta, Kv)>,
    /// Entries after the snapshot, contiguous.
    entries: Vec<Entry>,
    /// The term of the last wipe (storage's `reset-term` record).
    reset_term: Option<Term>,
}

impl Disk {
    fn last_term(&self) -> Term {
        self.entries
            .last()
            .map(|e| e.term)
            .or(self.snapshot.as_ref().map(|(m, _)| m.term))
            .unwrap_or(0)
    }

    /// Wiped and not yet caught up: the core withholds its vote.
    fn wiped_and_behind(&self) -> bool {
        self.reset_term.is_some_and(|t| self.last_term() <= t)
    }

    /// What `Storage::reset` does: log and snapshot gone; term and vote kept, and the
    /// term of the wipe recorded. A disk with nothing on it is left as it is.
    fn wipe(&mut self) {
        if self.entries.is_empty() && self.snapshot.is_none() && self.reset_term.is_none() {
            return;
        }
        self.reset_term = Some(self.hard_state.term);
        self.entries.clear();
        self.snapshot = None;
        self.hard_state.commit = 0;
    }

    fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |(m, _)| m.index)
    }

    fn term_at(&self, index: Index) -> Option<Term> {
        let first = self.snapshot_index() + 1;
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize).map(|e| e.term)
    }

    fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let keep = (first.index - self.snapshot_index() - 1) as usize;
        assert!(
            keep <= self.entries.len(),
            "gap in the log: append at {} after {}",
            first.index,
            self.entries.len()
        );
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
    }

    /// Storage's rule: entries up to the snapshot go; if the log does not hold the
    /// snapshot's last entry, all of it goes.
    fn install(&mut self, meta: SnapshotMeta, kv: Kv) {
        let keep_after = if self.term_at(meta.index) == Some(meta.term) {
            meta.index
        } else {
            Index::MAX
        };
        self.entries.retain(|e| e.index > keep_after);
        self.snapshot = Some((meta, kv));
    }
}

/// A core reads back the entries it evicted from its disk, as a node does from its WAL.
impl LogReader for Disk {
    fn read_entries(&mut self, from: Index, to: Index, max_bytes: usize) -> Option<Vec<Entry>> {
        let first = self.snapshot_index() + 1;
        assert!(
            from >= first && to < first + self.entries.len() as Index,
            "a core asks for entries {from}..={to}, the disk holds {first}..{}",
            first + self.entries.len() as Index
        );
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in &self.entries[(from - first) as usize..=(to - first) as usize] {
            bytes += entry.size();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Some(out)
    }
}

struct Node {
    raw: Option<RawNode>,
    disk: Disk,
    kv: Kv,
    applied: Index,
    applied_term: Term,
    restart_at: u64,
    /// Paused (as by SIGSTOP) until this tick: no ticks, no messages, no clients.
    paused_until: u64,
    /// How often this node's clock misses a tick: clocks drift apart.
    tick_skip: f64,
    /// Snapshot images delivered with `Body::Snapshot` messages, until the core says
    /// which (if any) to install.
    received_snapshots: Vec<SnapshotImage>,
    /// A Ready whose persist (fsync) is still running, the snapshot images received
    /// before it was taken, and the tick the persist completes at.
    persisting: Option<(Ready, Vec<SnapshotImage>, u64)>,
}

struct InFlight {
    deliver_at: u64,
    msg: Message,
    snapshot: Option<Kv>,
}

/// A client operation in progress.
struct Pending {
    op: KvOp,
    call: u64,
    /// The tick it started at, for the client's timeout.
    started: u64,
    node: NodeId,
    /// For writes: the index and term the entry was proposed at.
    proposal: Option<(Index, Term)>,
    read_id: Option<u64>,
}

struct Sim {
    sc: Scenario,
    rng: SmallRng,
    now: u64,
    nodes: BTreeMap<NodeId, Node>,
    net: Vec<InFlight>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    heal_partition_at: u64,
    clients: BTreeMap<u64, Option<Pending>>,
    next_value: u64,
    next_read_id: u64,
    history: Vec<Operation>,
    events: u64,
    // What the checker has learned so far.
    leaders: BTreeMap<Term, NodeId>,
    /// Every committed entry seen applied anywhere: (term, data, highest term any node
    /// had when it was first seen applied).
    committed: BTreeMap<Index, (Term, Bytes, Term)>,
    trace: Vec<String>,
}

fn encode(op: &KvOp) -> Bytes {
    match op {
        KvOp::Put { key, value } => Bytes::from(format!("P\0{key}\0{value}")),
        KvOp::Delete { key } => Bytes::from(format!("D\0{key}")),
        KvOp::Get { .. } => unreachable!("reads are not logged"),
    }
}

fn apply(kv: &mut Kv, data: &[u8]) {
    if data.is_empty() {
        return; // a leader's no-op
    }
    let text = std::str::from_utf8(data).expect("sim commands are utf-8");
    let parts: Vec<&str> = text.split('\0').collect();
    match parts.as_slice() {
        ["P", key, value] => {
            kv.insert(key.to_string(), value.to_string());
        }
        ["D", key] => {
            kv.remove(*key);
        }
        _ => panic!("bad command {text:?}"),
    }
}

impl Sim {
    fn new(sc: Scenario, seed: u64) -> Sim {
        let voters: Vec<NodeId> = (1..=sc.nodes).collect();
        let mut sim = Sim {
            rng: SmallRng::seed_from_u64(seed),
            now: 0,
            nodes: BTreeMap::new(),
            net: Vec::new(),
            blocked: BTreeSet::new(),
            heal_partition_at: 0,
            clients: (0..sc.clients).map(|c| (c, None)).collect(),
            next_value: 0,
            next_read_id: 0,
            history: Vec::new(),
            events: 0,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            trace: Vec::new(),
            sc,
        };
        for &id in &voters {
            let node = Node {
                raw: None,
                disk: Disk::default(),
                kv: Kv::new(),
                applied: 0,
                applied_term: 0,
                restart_at: 0,
                paused_until: 0,
                tick_skip: 0.0,
                received_snapshots: Vec::new(),
                persisting: None,
            };
            sim.nodes.insert(id, node);
        }
        // Each seed gets its own weather: from calm to stormy, and its own clock drift.
        let calm = sim.rng.random_range(0.0..1.0);
        let storm = |x: f64| x * 2.0 * calm;
        sim.sc.drop = storm(sim.sc.drop);
        sim.sc.crash_per_tick = storm(sim.sc.crash_per_tick);
        sim.sc.partition_per_tick = storm(sim.sc.partition_per_tick);
        sim.sc.pause_per_tick = storm(sim.sc.pause_per_tick);
        sim.sc.duplicate = storm(sim.sc.duplicate * 2.0);
        sim.sc.max_delay = [1, 3, 8][sim.rng.random_range(0..3)];
        sim.sc.max_msg_bytes = [1, 64, 64 * 1024][sim.rng.random_range(0..3)];
        sim.sc.max_inflight_msgs = [1, 4, 16][sim.rng.random_range(0..3)];
        sim.sc.max_cached_bytes = [1, 100, usize::MAX][sim.rng.random_range(0..3)];
        for &id in &voters {
            let skip = sim.rng.random_range(0.0..0.4);
            sim.nodes.get_mut(&id).expect("node exists").tick_skip = skip;
            sim.restart(id);
        }
        sim
    }

    fn voters(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn log(&mut self, line: String) {
        self.trace.push(format!("[{}] {line}", self.now));
    }

    // ----- node lifecycle ------------------------------------------------------------

    fn restart(&mut self, id: NodeId) {
        let voters = self.voters();
        let seed = self.rng.random();
        let node = self.nodes.get_mut(&id).expect("node exists");
        let restored = Restored {
            hard_state: node.disk.hard_state,
            snapshot: node.disk.snapshot.as_ref().map(|(m, _)| m.clone()),
            entries: node.disk.entries.clone(),
            reset_term: node.disk.reset_term,
        };
        let config = Config {
            max_msg_bytes: self.sc.max_msg_bytes,
            max_inflight_msgs: self.sc.max_inflight_msgs,
            max_cached_bytes: self.sc.max_cached_bytes,
            ..Config::for_tests(id, voters)
        };
        node.raw = Some(RawNode::new(config, restored, seed));
        node.kv = node
            .disk
            .snapshot
            .as_ref()
            .map(|(_, kv)| kv.clone())
            .unwrap_or_default();
        node.applied = node.disk.snapshot_index();
        node.applied_term = node.disk.snapshot.as_ref().map_or(0, |(m, _)| m.term);
        node.received_snapshots.clear();
        let hard_state = node.disk.hard_state;
        self.log(format!("n{id} starts: {hard_state:?}"));
    }

    fn crash(&mut self, id: NodeId) {
        // Sometimes a quick restart: the node is back while the election it took part
        // in is still running, which is when a forgotten vote would be used twice.
        let down_for = if self.rng.random_bool(0.5) {
            self.rng.random_range(1..5)
        } else {
            self.rng.random_range(5..60)
        };
        // Sometimes the operator wipes it before it comes back: one node at a time.
        let others_caught_up = self
            .nodes
            .iter()
            .all(|(&other, n)| other == id || !n.disk.wiped_and_behind());
        let wipe = others_caught_up && self.rng.random_bool(self.sc.wipe_per_crash);
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.raw = None;
        // A persist still running is lost with the process.
        node.persisting = None;
        node.restart_at = self.now + down_for;
        if wipe {
            node.disk.wipe();
        }
        self.log(format!(
            "n{id} crashes{}",
            if wipe { ", wiped" } else { "" }
        ));
        // Its connections break: most peers notice at once.
        for peer in self.voters() {
            if self.rng.random_bool(0.8) {
                self.connection_broke(id, peer);
            }
        }
        // Its clients learn nothing more: writes become indeterminate, reads are void.
        let abandoned: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, p)| p.as_ref().is_some_and(|p| p.node == id))
            .map(|(&c, _)| c)
            .collect();
        for client in abandoned {
            self.finish(client, KvOutcome::Unknown);
        }
    }

    // ----- the main loop ---------------------------------------------------------------

    fn run(&mut self) -> Result<(), String> {
        let end_of_faults = self.sc.fault_ticks;
        while self.now < end_of_faults {
            self.inject_faults();
            self.tick(true)?;
        }
        // Heal everything (partitions, losses, crashed nodes) and require progress.
        self.blocked.clear();
        self.sc.drop = 0.0;
        self.sc.duplicate = 0.0;
        for node in self.nodes.values_mut() {
            node.paused_until = 0;
        }
        let down: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raw.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in down {
            self.restart(id);
        }
        self.log("healed".into());
        // A leader must emerge and a new write must reach every node within a bound.
        // The write is proposed again if the leader it went to loses its leadership
        // before committing it (that is Raft working as intended, not a liveness bug).
        let deadline = self.now + self.sc.heal_ticks;
        let op = KvOp::Put {
            key: "final".into(),
            value: format!("v{}", self.now),
        };
        let mut proposed: Option<(NodeId, Term, Index)> = None;
        loop {
            self.tick(false)?;
            if let Some((_, _, index)) = proposed {
                let everywhere = self.nodes.values().all(|n| n.applied >= index);
                if everywhere
                    && self
                        .committed
                        .get(&index)
                        .is_some_and(|(_, data, _)| *data == encode(&op))
                {
                    break;
                }
            }
            let still_leading = proposed.is_some_and(|(id, term, _)| {
                self.nodes[&id]
                    .raw
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader && r.term() == term)
            });
            if !still_leading {
                if let Some(leader) = self.stable_leader() {
                    let raw = self
                        .nodes
                        .get_mut(&leader)
                        .and_then(|n| n.raw.as_mut())
                        .expect("leader is up");
                    let term = raw.term();
                    let index = raw
                        .propose(encode(&op))
                        .map_err(|e| format!("a leader refused a write: {e}"))?;
                    proposed = Some((leader, term, index));
                }
            }
            if self.now > deadline {
                let status: Vec<String> = self
                    .nodes
                    .values()
                    .filter_map(|n| n.raw.as_ref())
                    .map(|r| format!("{:?}", r.status()))
                    .collect();
                return Err(format!(
                    "no write committed everywhere within {} ticks of healing ({proposed:?}): {status:#?}",
                    self.sc.heal_ticks
                ));
            }
        }
        // Every replica converged.
        let first = &self.nodes[&1];
        for (id, node) in &self.nodes {
            if node.applied == first.applied && node.kv != first.kv {
                return Err(format!(
                    "n{id} state differs from n1 at the same applied index"
                ));
            }
        }
        // Settle the clients: whatever is still open is indeterminate.
        let open: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(&c, _)| c)
            .collect();
        for client in open {
            self.finish(client, KvOutcome::Unknown);
        }
        linearizability::check(&self.history)
            .map_err(|v| format!("history is not linearizable: {v}"))?;
        Ok(())
    }

    fn stable_leader(&self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raw.as_ref().is_some_and(|r| r.role() == Role::Leader))
            .map(|(&id, _)| id)
            .collect();
        let top_term = self
            .nodes
            .values()
            .filter_map(|n| n.raw.as_ref())
            .map(|r| r.term())
            .max()?;
        leaders.into_iter().find(|id| {
            self.nodes[id]
                .raw
                .as_ref()
                .is_some_and(|r| r.term() == top_term)
        })
    }

    /// `to` sees its connection from `from` break.
    fn connection_broke(&mut self, from: NodeId, to: NodeId) {
        if let Some(raw) = self.nodes.get_mut(&to).and_then(|n| n.raw.as_mut()) {
            raw.leader_disconnected(from);
        }
    }

    fn inject_faults(&mut self) {
        let n = self.sc.nodes;
        // A connection breaks while both ends live (a stream reopened, a glitch).
        if self.rng.random_bool(self.sc.partition_per_tick) {
            let (from, to) = (self.rng.random_range(1..=n), self.rng.random_range(1..=n));
            self.connection_broke(from, to);
        }
        let max_faulty = ((n - 1) / 2) as usize;
        if self.now >= self.heal_partition_at && !self.blocked.is_empty() {
            self.blocked.clear();
            self.log("partition healed".into());
        }
        if self.blocked.is_empty() && self.rng.random_bool(self.sc.partition_per_tick) {
            self.partition();
        }
        let down = self
            .nodes
            .values()
            .filter(|n| n.raw.is_none() || n.paused_until > self.now)
            .count();
        if down < max_faulty && self.rng.random_bool(self.sc.crash_per_tick * n as f64) {
            let id = self.rng.random_range(1..=n);
            if self.nodes[&id].raw.is_some() {
                self.crash(id);
            }
        }
        let faulty = self
            .nodes
            .values()
            .filter(|n| n.raw.is_none() || n.paused_until > self.now)
            .count();
        if faulty < max_faulty && self.rng.random_bool(self.sc.pause_per_tick * n as f64) {
            // Pausing the leader is the interesting case: it wakes up believing it leads.
            let id = match self.stable_leader() {
                Some(leader) if self.rng.random_bool(0.5) => leader,
                _ => self.rng.random_range(1..=n),
            };
            let pause = self.rng.random_range(5..60);
            self.nodes.get_mut(&id).expect("node exists").paused_until = self.now + pause;
            self.log(format!("n{id} pauses for {pause}"));
        }
        let due: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raw.is_none() && n.restart_at <= self.now)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.restart(id);
        }
    }

    fn partition(&mut self) {
        let mut ids = self.voters();
        let leader = self.stable_leader();
        for i in (1..ids.len()).rev() {
            let j = self.rng.random_range(0..=i);
            ids.swap(i, j);
        }
        let minority = (ids.len() - 1) / 2;
        let kind = self.rng.random_range(0..4);
        let (a, b): (Vec<NodeId>, Vec<NodeId>) = match (kind, leader) {
            // Isolate the leader.
            (0, Some(l)) => (vec![l], ids.iter().copied().filter(|&x| x != l).collect()),
            _ => (
                ids[..minority.max(1)].to_vec(),
                ids[minority.max(1)..].to_vec(),
            ),
        };
        let mut blocked = BTreeSet::new();
        for &x in &a {
            for &y in &b {
                match kind {
                    // One-way: a can hear b but not be heard.
                    1 => {
                        blocked.insert((x, y));
                    }
                    _ => {
                        blocked.insert((x, y));
                        blocked.insert((y, x));
                    }
                }
            }
        }
        if kind == 3 && b.len() >= 2 {
            // Bridge: one node of the majority still talks to both sides.
            let bridge = b[0];
            blocked.retain(|&(x, y)| x != bridge && y != bridge);
        }
        let heal_in = self.rng.random_range(10..120);
        self.heal_partition_at = self.now + heal_in;
        self.log(format!(
            "partition kind {kind}: {a:?} | {b:?} for {heal_in}"
        ));
        // Some cut connections are noticed at once (reset), others only by silence.
        for &(from, to) in &blocked {
            if self.rng.random_bool(0.5) {
                self.connection_broke(from, to);
            }
        }
        self.blocked = blocked;
    }

    fn tick(&mut self, faults: bool) -> Result<(), String> {
        self.now += 1;
        // Deliver what is due, in random order (reordering on top of random delays).
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            let paused = self
                .nodes
                .get(&self.net[i].msg.to)
                .is_some_and(|n| n.paused_until > self.now);
            if self.net[i].deliver_at <= self.now && !paused {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        for k in (1..due.len()).rev() {
            let j = self.rng.random_range(0..=k);
            due.swap(k, j);
        }
        // A process that wakes up may serve a client before it reads its sockets.
        let clients_first = self.rng.random_bool(0.5);
        if clients_first {
            self.drive_clients(faults);
        }
        for inflight in due {
            let to = inflight.msg.to;
            let Some(node) = self.nodes.get_mut(&to) else {
                continue;
            };
            let Some(raw) = node.raw.as_mut() else {
                continue;
            };
            if let (Body::Snapshot { meta }, Some(kv)) = (&inflight.msg.body, inflight.snapshot) {
                node.received_snapshots.push((meta.clone(), kv));
            }
            raw.step(inflight.msg);
        }
        // Clocks: every live node ticks, at its own rate.
        let ids = self.voters();
        for &id in &ids {
            let node = self.nodes.get_mut(&id).expect("node exists");
            let skip = node.tick_skip;
            if node.paused_until > self.now || self.rng.random_bool(skip) {
                continue;
            }
            if let Some(raw) = node.raw.as_mut() {
                raw.tick();
            }
        }
        if !clients_first {
            self.drive_clients(faults);
        }
        for &id in &ids {
            if self.nodes[&id].paused_until > self.now {
                continue;
            }
            self.process_ready(id, faults);
        }
        self.expire_clients();
        self.check_invariants()
    }

    // ----- carrying out a Ready ------------------------------------------------------

    fn process_ready(&mut self, id: NodeId, faults: bool) {
        loop {
            let Some(node) = self.nodes.get_mut(&id).filter(|n| n.raw.is_some()) else {
                return;
            };
            // A persist still running: finish it when it is due, else wait for it.
            if let Some((_, _, done_at)) = &node.persisting {
                if *done_at > self.now {
                    return;
                }
                let (rd, images, _) = node.persisting.take().expect("checked above");
                // Sometimes the process dies before a slow fsync returns: of this Ready
                // only the leader's replication happened, yet the node went on
                // receiving answers to it meanwhile.
                if faults && self.rng.random_bool(0.1) {
                    self.log(format!("n{id} crashes during a slow persist"));
                    self.crash(id);
                    return;
                }
                if !self.finish_ready(id, rd, images, faults) {
                    return;
                }
                continue;
            }
            let Node {
                raw,
                disk,
                received_snapshots,
                ..
            } = node;
            let raw = raw.as_mut().expect("checked above");
            if !raw.has_ready() {
                return;
            }
            // Evicted entries the leader must send are read back from its disk.
            let mut rd = raw.ready_with(disk);
            // The images this Ready may install; later ones wait for the next.
            let images = std::mem::take(received_snapshots);
            // The leader's replication leaves first, in parallel with its persist.
            let snapshot_image = self.nodes[&id].disk.snapshot.clone();
            for msg in std::mem::take(&mut rd.messages) {
                self.send_with_image(msg, &snapshot_image);
            }
            // Crash before the persist completes: of this Ready, only the leader's
            // replication happened.
            if faults && self.rng.random_bool(0.001) {
                self.log(format!("n{id} crashes before persisting"));
                self.crash(id);
                return;
            }
            // A slow disk: the fsync takes a few ticks, while the node goes on
            // receiving messages (answers to the replication above among them).
            let writes = rd.hard_state.is_some() || !rd.entries.is_empty();
            if faults && writes && self.rng.random_bool(self.sc.slow_fsync) {
                let done_at = self.now + self.rng.random_range(1..=4);
                let node = self.nodes.get_mut(&id).expect("node exists");
                node.persisting = Some((rd, images, done_at));
                return;
            }
            if !self.finish_ready(id, rd, images, faults) {
                return;
            }
        }
    }

    /// Persists a Ready, sends its messages, advances and applies. False when the node
    /// crashed on the way.
    fn finish_ready(
        &mut self,
        id: NodeId,
        rd: Ready,
        mut images: Vec<SnapshotImage>,
        faults: bool,
    ) -> bool {
        {
            let node = self.nodes.get_mut(&id).expect("node exists");
            if let Some(meta) = &rd.snapshot {
                let pos = images.iter().position(|(m, _)| m == meta);
                let (_, kv) =
                    images.swap_remove(pos.expect("the snapshot to install was received"));
                node.disk.install(meta.clone(), kv.clone());
                node.kv = kv;
                node.applied = meta.index;
                node.applied_term = meta.term;
            }
            node.disk.append(&rd.entries);
            if let Some(hs) = rd.hard_state {
                node.disk.hard_state = hs;
            }
            // Crash after persisting, before sending.
            if faults && self.rng.random_bool(0.001) {
                self.log(format!("n{id} crashes after persisting"));
                self.crash(id);
                return false;
            }
            let snapshot_image = node.disk.snapshot.clone();
            let granted_a_vote = rd
                .persisted_messages
                .iter()
                .any(|m| m.body == Body::VoteResponse { granted: true });
            for msg in rd.persisted_messages {
                self.send_with_image(msg, &snapshot_image);
            }
            // Crash right after voting: the vote is out, only the disk remembers it.
            if faults && granted_a_vote && self.rng.random_bool(0.2) {
                self.log(format!("n{id} crashes after voting"));
                self.crash(id);
                return false;
            }
            let voters = self.voters();
            let node = self.nodes.get_mut(&id).expect("node exists");
            let raw = node.raw.as_mut().expect("alive");
            raw.advance();
            let mut applied_now = Vec::new();
            for entry in rd.committed {
                assert_eq!(entry.index, node.applied + 1, "n{id} applies out of order");
                apply(&mut node.kv, &entry.data);
                node.applied = entry.index;
                node.applied_term = entry.term;
                applied_now.push(entry);
            }
            let reads: Vec<(u64, Option<String>, Index)> = rd
                .reads
                .iter()
                .map(|r| {
                    (r.id, None, r.index) // value filled below
                })
                .collect();
            let failed: Vec<u64> = rd.failed_reads.iter().map(|(id, _)| *id).collect();
            // Compact now and then, as the driver does.
            if node.applied >= node.disk.snapshot_index() + self.sc.snapshot_every {
                let meta = SnapshotMeta {
                    index: node.applied,
                    term: node.applied_term,
                    voters,
                };
                let kv = node.kv.clone();
                node.disk.install(meta.clone(), kv);
                node.raw.as_mut().expect("alive").compact(meta.index);
            }
            let max_term = self
                .nodes
                .values()
                .filter_map(|n| n.raw.as_ref())
                .map(|r| r.term())
                .max()
                .unwrap_or(0);
            for entry in applied_now {
                self.on_applied(id, entry, max_term);
            }
            for (read_id, _, index) in reads {
                let node = &self.nodes[&id];
                assert!(
                    node.applied >= index,
                    "n{id} serves a read at {index} before applying it"
                );
                self.on_read(id, read_id);
            }
            for read_id in failed {
                self.on_read_failed(read_id);
            }
        }
        true
    }

    /// Sends `msg`, attaching the sender's snapshot image when it is a snapshot.
    fn send_with_image(&mut self, msg: Message, image: &Option<(SnapshotMeta, Kv)>) {
        let snapshot = match &msg.body {
            Body::Snapshot { meta } => {
                let (m, kv) = image.as_ref().expect("a snapshot to send exists");
                assert_eq!(m, meta, "core sends a snapshot storage does not have");
                Some(kv.clone())
            }
            _ => None,
        };
        self.send(msg, snapshot);
    }

    fn send(&mut self, msg: Message, snapshot: Option<Kv>) {
        if self.blocked.contains(&(msg.from, msg.to)) || self.rng.random_bool(self.sc.drop) {
            return;
        }
        let copies = if self.rng.random_bool(self.sc.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.random_range(1..=self.sc.max_delay);
            self.net.push(InFlight {
                deliver_at: self.now + delay,
                msg: msg.clone(),
                snapshot: snapshot.clone(),
            });
        }
    }

    // ----- clients -------------------------------------------------------------------

    fn drive_clients(&mut self, faults: bool) {
        let clients: Vec<u64> = self.clients.keys().copied().collect();
        for client in clients {
            if self.clients[&client].is_some() || !self.rng.random_bool(0.3) {
                continue;
            }
            if !faults && self.rng.random_bool(0.5) {
                continue;
            }
            let node_id = self.rng.random_range(1..=self.sc.nodes);
            let key = format!("k{}", self.rng.random_range(0..self.sc.keys));
            let roll = self.rng.random_range(0..10);
            let op = match roll {
                0..=3 => KvOp::Get { key },
                4..=8 => {
                    self.next_value += 1;
                    KvOp::Put {
                        key,
                        value: format!("v{}", self.next_value),
                    }
                }
                _ => KvOp::Delete { key },
            };
            let now = self.now;
            let call = self.events + 1;
            let Some(raw) = self
                .nodes
                .get_mut(&node_id)
                .filter(|n| n.paused_until <= now)
                .and_then(|n| n.raw.as_mut())
            else {
                continue;
            };
            self.events = call;
            match op {
                KvOp::Get { .. } => {
                    self.next_read_id += 1;
                    let read_id = self.next_read_id;
                    raw.read_index(read_id);
                    let pending = Pending {
                        op,
                        call,
                        started: now,
                        node: node_id,
                        proposal: None,
                        read_id: Some(read_id),
                    };
                    self.clients.insert(client, Some(pending));
                }
                _ => {
                    let term = raw.term();
                    // A refused proposal never happened: it leaves no trace in the history.
                    if let Ok(index) = raw.propose(encode(&op)) {
                        let pending = Pending {
                            op,
                            call,
                            started: now,
                            node: node_id,
                            proposal: Some((index, term)),
                            read_id: None,
                        };
                        self.clients.insert(client, Some(pending));
                    }
                }
            }
        }
    }

    /// History timestamps: a counter of client events, finer than ticks, so that two
    /// operations in the same tick are still ordered when one ended before the other.
    fn next_event(&mut self) -> u64 {
        self.events += 1;
        self.events
    }

    fn finish(&mut self, client: u64, outcome: KvOutcome) {
        if let Some(p) = self.clients.get_mut(&client).and_then(Option::take) {
            if matches!((&p.op, &outcome), (KvOp::Get { .. }, KvOutcome::Unknown)) {
                return; // an unanswered read tells nothing
            }
            let ret = self.next_event();
            self.history.push(Operation {
                client,
                op: p.op,
                call: p.call,
                ret,
                outcome,
            });
        }
    }

    fn on_applied(&mut self, node: NodeId, entry: Entry, max_term: Term) {
        // State machine safety: one entry per index, everywhere.
        match self.committed.get(&entry.index) {
            Some((term, data, _)) => assert!(
                *term == entry.term && *data == entry.data,
                "n{node} applied ({}, {}) where ({term}) was applied before",
                entry.index,
                entry.term
            ),
            None => {
                self.committed
                    .insert(entry.index, (entry.term, entry.data.clone(), max_term));
            }
        }
        let done: Vec<(u64, bool)> = self
            .clients
            .iter()
            .filter_map(|(&c, p)| {
                let p = p.as_ref()?;
                let (index, term) = p.proposal?;
                (p.node == node && index == entry.index).then_some((c, term == entry.term))
            })
            .collect();
        for (client, ours) in done {
            if ours {
                let outcome = match self.clients[&client].as_ref().map(|p| &p.op) {
                    Some(KvOp::Delete { .. }) => KvOutcome::Delete,
                    _ => KvOutcome::Put,
                };
                self.finish(client, outcome);
            } else {
                // Another entry won that index: ours can never commit.
                self.clients.insert(client, None);
            }
        }
    }

    fn on_read(&mut self, node: NodeId, read_id: u64) {
        let client = self
            .clients
            .iter()
            .find(|(_, p)| p.as_ref().is_some_and(|p| p.read_id == Some(read_id)))
            .map(|(&c, _)| c);
        let Some(client) = client else { return };
        let key = match self.clients[&client].as_ref().map(|p| &p.op) {
            Some(KvOp::Get { key }) => key.clone(),
            _ => return,
        };
        let value = self.nodes[&node].kv.get(&key).cloned();
        self.finish(client, KvOutcome::Get(value));
    }

    fn on_read_failed(&mut self, read_id: u64) {
        let client = self
            .clients
            .iter()
            .find(|(_, p)| p.as_ref().is_some_and(|p| p.read_id == Some(read_id)))
            .map(|(&c, _)| c);
        if let Some(client) = client {
            self.clients.insert(client, None);
        }
    }

    fn expire_clients(&mut self) {
        let expired: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, p)| {
                p.as_ref()
                    .is_some_and(|p| self.now - p.started > self.sc.client_timeout)
            })
            .map(|(&c, _)| c)
            .collect();
        for client in expired {
            self.finish(client, KvOutcome::Unknown);
        }
    }

    // ----- safety ----------------------------------------------------------------------

    fn check_invariants(&mut self) -> Result<(), String> {
        // Election Safety: at most one leader per term, ever.
        let mut new_leaders = Vec::new();
        for (&id, node) in &self.nodes {
            let Some(raw) = node.raw.as_ref() else {
                continue;
            };
            if raw.role() != Role::Leader {
                continue;
            }
            match self.leaders.get(&raw.term()) {
                Some(&other) if other != id => {
                    return Err(format!(
                        "two leaders in term {}: n{other} and n{id}",
                        raw.term()
                    ));
                }
                Some(_) => {}
                None => new_leaders.push((raw.term(), id)),
            }
        }
        for (term, id) in new_leaders {
            self.log(format!("n{id} leads term {term}"));
            self.leaders.insert(term, id);
            // Leader Completeness: a leader elected after an entry was committed has it.
            let disk = &self.nodes[&id].disk;
            for (&index, (entry_term, _, seen_at_term)) in &self.committed {
                if term <= *seen_at_term || index <= disk.snapshot_index() {
                    continue;
                }
                if disk.term_at(index) != Some(*entry_term) {
                    return Err(format!(
                        "leader n{id} of term {term} lacks committed entry {index} (term {entry_term}, committed by term {seen_at_term})"
                    ));
                }
            }
        }
        // Log Matching, on what the disks hold: if two logs share an entry's index and
        // term, they are identical up to it.
        let disks: Vec<(NodeId, &Disk)> = self.nodes.iter().map(|(&id, n)| (id, &n.disk)).collect();
        for (i, (a_id, a)) in disks.iter().enumerate() {
            for (b_id, b) in &disks[i + 1..] {
                let lo = a.snapshot_index().max(b.snapshot_index()) + 1;
                let hi = (a.snapshot_index() + a.entries.len() as u64)
                    .min(b.snapshot_index() + b.entries.len() as u64);
                let mut matched = false;
                for index in (lo..=hi).rev() {
                    let ea = &a.entries[(index - a.snapshot_index() - 1) as usize];
                    let eb = &b.entries[(index - b.snapshot_index() - 1) as usize];
                    if matched && ea != eb {
                        return Err(format!("logs of n{a_id} and n{b_id} match at a later index but differ at {index}"));
                    }
                    matched |= ea.term == eb.term;
                    if matched && ea.data != eb.data {
                        return Err(format!(
                            "n{a_id} and n{b_id} hold different entries with term {} at {index}",
                            ea.term
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn run_seed(sc: &Scenario, seed: u64) -> Result<usize, String> {
    let mut sim = Sim::new(sc.clone(), seed);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
    let outcome = match result {
        Ok(r) => r,
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())),
    };
    match outcome {
        Ok(()) => Ok(sim.history.len()),
        Err(e) => {
            let mut report = format!("seed {seed} ({} nodes): {e}\n", sc.nodes);
            if std::env::var("DISTRAFT_SIM_TRACE").is_ok() {
                for line in &sim.trace {
                    let _ = writeln!(report, "  {line}");
                }
            }
            Err(report)
        }
    }
}

/// Runs every seed for one scenario over all cores; fails with the seeds that failed.
fn run_scenario(sc: Scenario) {
    if let Ok(seed) = std::env::var("DISTRAFT_SIM_SEED") {
        let seed: u64 = seed.parse().expect("DISTRAFT_SIM_SEED is a number");
        match run_seed(&sc, seed) {
            Ok(ops) => println!(
                "seed {seed}, {} nodes: ok, {ops} client operations",
                sc.nodes
            ),
            Err(e) => panic!("{e}"),
        }
        return;
    }
    let seeds: u64 = std::env::var("DISTRAFT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    // Stop at the first failure (scripts/plants.sh only needs to know a plant is caught).
    let fail_fast = std::env::var("DISTRAFT_SIM_FAIL_FAST").is_ok();
    let failed = std::sync::atomic::AtomicBool::new(false);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let started = std::time::Instant::now();
    let results: Vec<(Vec<String>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let sc = sc.clone();
                let failed = &failed;
                s.spawn(move || {
                    let mut failures = Vec::new();
                    let mut ops = 0;
                    for seed in (t..seeds).step_by(threads as usize) {
                        if fail_fast && failed.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        match run_seed(&sc, seed) {
                            Ok(n) => ops += n,
                            Err(e) => {
                                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                failures.push(e);
                            }
                        }
                    }
                    (failures, ops)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation thread"))
            .collect()
    });
    let ops: usize = results.iter().map(|r| r.1).sum();
    let failures: Vec<String> = results.into_iter().flat_map(|r| r.0).collect();
    println!(
        "{} nodes: {seeds} seeds, {ops} client operations checked, {} failed, {:.1} s",
        sc.nodes,
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        let shown: Vec<&String> = failures.iter().take(5).collect();
        panic!(
            "{} of {seeds} seeds failed; replay one with DISTRAFT_SIM_SEED=<seed> (add DISTRAFT_SIM_TRACE=1 for a trace):\n{}",
            failures.len(),
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
        );
    }
}

#[test]
fn three_nodes_under_faults() {
    run_scenario(Scenario::new(3));
}

#[test]
fn five_nodes_under_faults() {
    run_scenario(Scenario::new(5));
}
