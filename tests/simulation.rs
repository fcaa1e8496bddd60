//! Deterministic simulation of whole distraft nodes (issues #2 and #14).
//!
//! Every simulated node is the real thing minus its threads and sockets: the real
//! driver ([`Driver`], the code a node runs on its driver thread) with its real reply
//! pairing, the real `Kv` state machine, and the real `Storage` on a RAM disk, recovered
//! at every restart through the driver's own recovery path (`Driver::open`). What is
//! simulated is around it, from a seed:
//!
//! - the network: messages dropped, duplicated, delayed and reordered; symmetric,
//!   one-way, leader-isolating and bridge partitions; broken connections. A request
//!   carries a reply slot as gRPC does, and the driver's answer travels back the same
//!   way; snapshots are streamed into the receiver's storage as the gRPC handler does;
//! - the disk, through the storage's fault hook: a process that dies halfway through
//!   a WAL append (before the write, or between the write and the fsync, after which
//!   the unsynced tail is lost, torn or kept), a slow fsync (the leader's replication
//!   is out and answered while it runs; the crash during it loses the turn's writes),
//!   and a full disk, for the WAL (the driver's NOSPACE path: out of Raft, back once
//!   there is room) and for snapshot files alike (its own snapshot fails and raises
//!   the alarm; a leader's snapshot fails to arrive, or to be installed);
//! - the processes: crashes, quick restarts, restarts wiped by `DISTRAFT_RESET_LOGS`
//!   (the real `Storage::reset`), pauses, clocks that drift;
//! - the cores' flow-control limits (bytes per message, messages in flight), which
//!   when small split batches the way commit-rule and back-off bugs need;
//! - the clients: they talk to any node, as real clients do; a node that is not the
//!   leader forwards a write to the leader it knows, and a failed forward is sent again
//!   only by the rule the gRPC service follows (`rpc::server::forward_again`).
//!
//! Safety is checked after every event a driver handles (each delivered message, each
//! client request) and after every turn: Election Safety (at most one leader per term,
//! ever observed), State Machine Safety (one entry term per committed index, anywhere),
//! and Leader Completeness against the term each entry was committed in (recorded when
//! first seen committed; every leader of a later term must hold it). After every tick:
//! Log Matching over the cores' logs. At the end, once the faults heal, a write must
//! commit everywhere within a bounded number of ticks, EVERY node must reach the same
//! applied index and state digest, and the clients' history must be linearizable.
//!
//! `DISTRAFT_SIM_SEEDS=N` runs N seeds per configuration (default 2000);
//! `DISTRAFT_SIM_SEED=S` replays exactly seed S (a failure prints the command);
//! `DISTRAFT_SIM_TRACE=1` adds the seed's event trace to a failure;
//! `DISTRAFT_SIM_FAIL_FAST=1` stops at the first failed seed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use clap::Parser;
use distraft::config::{Config, NodeArgs};
use distraft::driver::{
    Background, Committed, Driver, DriverError, Event, Job, RaftReply, ReceivedSnapshot,
    RequestError, SnapshotAdmission, Transport, WriteKind,
};
use distraft::kv::Kv;
use distraft::raft::{
    AppendOutcome, Body, Index, Message, NodeId, RawNode, Role, SnapshotMeta, Term,
};
use distraft::rpc::{forward_again, status_of, NOT_APPLIED};
use distraft::storage::{DiskFault, DiskStep, SnapshotFile, Storage, StorageOptions};
use distraft_testkit::linearizability::{self, KvOp, KvOutcome, Operation};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot::{self, error::TryRecvError};

/// How hostile one configuration is.
#[derive(Clone, Debug)]
struct Scenario {
    nodes: u64,
    /// Ticks with faults, then at most this many to heal and commit a write everywhere.
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
    /// The share of turns that write whose fsync takes 1-4 ticks, during which the
    /// node's replication is out and answered, and the rest of the turn waits.
    slow_fsync: f64,
    /// The share of turns in which the process dies at a step of its WAL append.
    crash_in_append: f64,
    /// How often a node's disk fills up (per node and tick), for 5-40 ticks.
    disk_full_per_tick: f64,
    /// DISTRAFT_SNAPSHOT_THRESHOLD of every node.
    snapshot_every: u64,
    /// DISTRAFT_LOG_CACHE_BYTES: small values evict nearly every applied entry, so that
    /// leaders read entries back from the WAL all the time.
    log_cache_bytes: usize,
    /// The cores' flow control (`Config::max_msg_bytes`, `Config::max_inflight_msgs`;
    /// `None`: the node's own): small values split batches across messages, which is
    /// where commit-rule and back-off bugs show.
    max_msg_bytes: Option<usize>,
    max_inflight_msgs: Option<usize>,
    client_timeout: u64,
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
            crash_in_append: 0.002,
            disk_full_per_tick: 0.0005,
            snapshot_every: 12,
            log_cache_bytes: usize::MAX,
            max_msg_bytes: None,
            max_inflight_msgs: None,
            client_timeout: 80,
        }
    }
}

// ----- what a driver shares with the simulator -----------------------------------------

/// One node's I/O as its driver sees it: the transport's outbox, the snapshot writer's
/// jobs, and the faults of its disk. Shared with the simulator, which carries it out.
#[derive(Default)]
struct Io {
    outbox: Mutex<Vec<Outgoing>>,
    jobs: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    disk: Mutex<DiskState>,
}

#[derive(Default)]
struct DiskState {
    fault: Fault,
    /// A WAL fsync was started in this turn: what the driver sends from now on waits
    /// for it (the driver sends nothing a persist promises before it is durable).
    synced: bool,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    #[default]
    None,
    /// No space: writes fail (ENOSPC), to the WAL and to snapshot files alike; fsyncs
    /// still work.
    Full,
    /// The process dies just before this step of the next append.
    CrashAt(DiskStep),
    /// The process died: nothing more reaches the disk.
    Crashed,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A message leaving a node.
struct Outgoing {
    msg: Message,
    /// The image of a `Body::Snapshot`.
    snapshot: Option<SnapshotFile>,
    /// A request (the receiver answers through a reply slot) or an answer.
    request: bool,
    /// Sent after this turn's fsync started: leaves only once it returns.
    after_persist: bool,
    /// The incarnation of the process that sent a request, or that waits for an
    /// answer: as over a gRPC call, an answer reaches only the process that asked.
    incarnation: u64,
}

impl Io {
    fn send(&self, msg: Message, snapshot: Option<SnapshotFile>, request: bool) {
        let after_persist = lock(&self.disk).synced;
        lock(&self.outbox).push(Outgoing {
            msg,
            snapshot,
            request,
            after_persist,
            // Set when the simulator collects it.
            incarnation: 0,
        });
    }

    /// The storage's fault hook (WAL appends and snapshot files): the simulated disk.
    fn disk_fault(io: Arc<Io>) -> DiskFault {
        DiskFault(Arc::new(move |step| {
            let mut disk = lock(&io.disk);
            match disk.fault {
                // Writes fail for lack of space; fsyncs still work.
                Fault::Full
                    if matches!(
                        step,
                        DiskStep::WalReserve | DiskStep::WalWrite | DiskStep::SnapshotWrite
                    ) =>
                {
                    Err(io::Error::from(io::ErrorKind::StorageFull))
                }
                Fault::CrashAt(at) if at == step => {
                    disk.fault = Fault::Crashed;
                    Err(io::Error::other("the simulated process died here"))
                }
                Fault::Crashed => Err(io::Error::other("the simulated process is dead")),
                _ => {
                    disk.synced |= step == DiskStep::WalSync;
                    Ok(())
                }
            }
        }))
    }
}

struct SimTransport(Arc<Io>);

impl Transport for SimTransport {
    fn send(&self, msg: Message) {
        self.0.send(msg, None, true);
    }

    fn send_snapshot(&self, msg: Message, file: SnapshotFile) {
        self.0.send(msg, Some(file), true);
    }
}

/// No threads: the snapshot writer runs when the simulator says so, deletions at once.
struct SimBackground(Arc<Io>);

impl Background for SimBackground {
    fn spawn(
        &self,
        kind: Job,
        job: Box<dyn FnOnce() + Send>,
    ) -> io::Result<Option<JoinHandle<()>>> {
        match kind {
            Job::SnapshotWriter => lock(&self.0.jobs).push(job),
            Job::SnapshotCleanup => job(),
        }
        Ok(None)
    }
}

// ----- the simulated cluster --------------------------------------------------------------

/// A running node: its driver and what waits on it.
struct Live {
    driver: Driver<SimTransport>,
    /// The driver's own queue: the snapshot writer's "done".
    wake: Receiver<Event>,
    /// Reply slots of the peers' requests handed to this driver, with the incarnation
    /// of the asking process.
    answers: Vec<(oneshot::Receiver<RaftReply>, u64)>,
    /// Where the WAL's records ended after the last completed turn: all of it synced.
    wal_end: Option<(PathBuf, u64)>,
}

struct Node {
    config: Arc<Config>,
    options: StorageOptions,
    io: Arc<Io>,
    live: Option<Live>,
    /// Counts the node's processes: one more at every restart.
    incarnation: u64,
    restart_at: u64,
    /// Paused (as by SIGSTOP) until this tick: no ticks, no messages, no clients.
    paused_until: u64,
    /// A slow fsync runs until this tick; the turn's later messages wait in `held`.
    busy_until: u64,
    held: Vec<Outgoing>,
    /// Where the synced WAL ended before the turn whose fsync is slow.
    wal_before_slow: Option<(PathBuf, u64)>,
    /// The disk is full until this tick.
    full_until: u64,
    /// How often this node's clock misses a tick: clocks drift apart.
    tick_skip: f64,
    /// Came back wiped and has not caught up yet (one such node at a time).
    wiped: bool,
    /// The commit index up to which this node's log was checked against `committed`.
    seen_commit: Index,
}

struct InFlight {
    deliver_at: u64,
    out: Outgoing,
}

type ProposeAnswer = oneshot::Receiver<Result<Committed, RequestError>>;

/// A client's request in progress, as the node it talks to (`origin`) handles it.
struct Pending {
    op: KvOp,
    call: u64,
    started: u64,
    origin: NodeId,
    state: Waiting,
}

enum Waiting {
    Write {
        at: NodeId,
        answer: ProposeAnswer,
    },
    Read {
        at: NodeId,
        answer: oneshot::Receiver<Result<Option<String>, RequestError>>,
    },
    /// Waits for a leader, then tries again at the origin.
    Retry {
        at_tick: u64,
    },
}

struct Sim {
    sc: Scenario,
    rng: SmallRng,
    now: u64,
    /// Every node's directories, deleted with the simulation.
    dir: tempfile::TempDir,
    nodes: BTreeMap<NodeId, Node>,
    net: Vec<InFlight>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    heal_partition_at: u64,
    clients: BTreeMap<u64, Option<Pending>>,
    next_value: u64,
    history: Vec<Operation>,
    events: u64,
    /// The leader of every term ever observed.
    leaders: BTreeMap<Term, NodeId>,
    /// Every index seen committed: its entry's term, and the term of the node that
    /// first saw it committed (leaders of later terms must hold it).
    committed: BTreeMap<Index, (Term, Term)>,
    successes: u64,
    /// The final write committed: clients start nothing new, so that the nodes can
    /// settle on one state (with small flow-control limits replication may trail a
    /// steady stream of writes for good).
    settling: bool,
    trace: Vec<String>,
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
}

/// A node's configuration, as its command line would give it.
fn node_config(sc: &Scenario, id: NodeId, dir: &Path) -> Result<Config, String> {
    let cluster: Vec<String> = (1..=sc.nodes)
        .map(|n| format!("n{n}=127.0.0.1:{}:127.0.0.1:{}", 9000 + n, 5000 + n))
        .collect();
    let home = dir.join(format!("n{id}"));
    let (log, data) = (home.join("log"), home.join("data"));
    let args = [
        "distraft".to_string(),
        format!("--name=n{id}"),
        format!("--cluster={}", cluster.join(",")),
        format!("--log-path={}", log.display()),
        format!("--data-path={}", data.display()),
        format!("--snapshot-threshold={}", sc.snapshot_every),
        format!(
            "--log-cache-bytes={}",
            sc.log_cache_bytes.min(u32::MAX as usize)
        ),
        // Ticks of 10 ms: 2-tick heartbeats, 10-21-tick elections, check-quorum after
        // 10 ticks (5 missed heartbeats), as the core's own tests.
        "--heartbeat-timeout=0.02".to_string(),
        "--election-timeout=0.1".to_string(),
    ];
    let cli = Cli::try_parse_from(args).map_err(|e| format!("node arguments: {e}"))?;
    let mut config = Config::from_args(&cli.node).map_err(|e| format!("node config: {e}"))?;
    // Each node's own directories (the flags name the parents of all nodes' ones).
    config.log_dir = log;
    config.data_dir = data;
    // No flag sets these: the simulator alone varies them.
    config.max_msg_bytes = sc.max_msg_bytes.unwrap_or(config.max_msg_bytes);
    config.max_inflight_msgs = sc.max_inflight_msgs.unwrap_or(config.max_inflight_msgs);
    Ok(config)
}

impl Sim {
    fn new(sc: Scenario, seed: u64) -> Result<Sim, String> {
        let shm = Path::new("/dev/shm");
        let dir = match shm.is_dir() {
            true => tempfile::tempdir_in(shm),
            false => tempfile::tempdir(),
        }
        .map_err(|e| format!("temp dir: {e}"))?;
        let mut sim = Sim {
            rng: SmallRng::seed_from_u64(seed),
            now: 0,
            nodes: BTreeMap::new(),
            net: Vec::new(),
            blocked: BTreeSet::new(),
            heal_partition_at: 0,
            clients: (0..sc.clients).map(|c| (c, None)).collect(),
            next_value: 0,
            history: Vec::new(),
            events: 0,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            successes: 0,
            settling: false,
            trace: Vec::new(),
            dir,
            sc,
        };
        // Each seed gets its own weather: from calm to stormy.
        let calm = sim.rng.random_range(0.0..1.0);
        let storm = |x: f64| x * 2.0 * calm;
        sim.sc.drop = storm(sim.sc.drop);
        sim.sc.crash_per_tick = storm(sim.sc.crash_per_tick);
        sim.sc.partition_per_tick = storm(sim.sc.partition_per_tick);
        sim.sc.pause_per_tick = storm(sim.sc.pause_per_tick);
        sim.sc.duplicate = storm(sim.sc.duplicate * 2.0);
        sim.sc.crash_in_append = storm(sim.sc.crash_in_append);
        sim.sc.max_delay = [1, 3, 8][sim.rng.random_range(0..3)];
        sim.sc.log_cache_bytes = [1, 100, usize::MAX][sim.rng.random_range(0..3)];
        sim.sc.max_msg_bytes = [Some(1), Some(64), None][sim.rng.random_range(0..3)];
        sim.sc.max_inflight_msgs = [Some(1), Some(4), None][sim.rng.random_range(0..3)];
        for id in 1..=sim.sc.nodes {
            let config = node_config(&sim.sc, id, sim.dir.path())?;
            let io = Arc::new(Io::default());
            let mut options = StorageOptions::new(&config.log_dir, &config.data_dir);
            options.disk_fault = Some(Io::disk_fault(io.clone()));
            let node = Node {
                config: Arc::new(config),
                options,
                io,
                live: None,
                incarnation: 0,
                restart_at: 0,
                paused_until: 0,
                busy_until: 0,
                held: Vec::new(),
                wal_before_slow: None,
                full_until: 0,
                tick_skip: sim.rng.random_range(0.0..0.4),
                wiped: false,
                seen_commit: 0,
            };
            sim.nodes.insert(id, node);
        }
        for id in 1..=sim.sc.nodes {
            sim.restart(id)?;
        }
        Ok(sim)
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn log(&mut self, line: String) {
        self.trace.push(format!("[{}] {line}", self.now));
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .expect("the simulator only names its own nodes")
    }

    /// Whether `id` can take events now (up, not paused, not inside a slow fsync).
    fn ready(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| {
            n.live.is_some() && n.paused_until <= self.now && n.busy_until <= self.now
        })
    }

    // ----- node lifecycle ----------------------------------------------------------

    /// Starts a node from what its disk holds, through the driver's recovery path.
    fn restart(&mut self, id: NodeId) -> Result<(), String> {
        let seed = self.rng.random();
        let now = self.now;
        let node = self.node(id);
        let transport = SimTransport(node.io.clone());
        let background = Box::new(SimBackground(node.io.clone()));
        let opened = Driver::open(
            node.config.clone(),
            transport,
            node.options.clone(),
            background,
            seed,
        );
        let (driver, _handle, wake) = match opened {
            Ok(opened) => opened,
            // Repairing a torn tail needs room: the process fails to start until
            // there is (an operator frees space and starts it again).
            Err(DriverError::Storage(e)) if e.is_out_of_space() => {
                node.restart_at = now + 5;
                self.log(format!("n{id} cannot start: {e}"));
                return Ok(());
            }
            Err(e) => return Err(format!("n{id} cannot recover from its disk: {e}")),
        };
        node.seen_commit = 0;
        node.incarnation += 1;
        let wal_end = driver.wal_end();
        let hard = driver.core().status();
        node.live = Some(Live {
            driver,
            wake,
            answers: Vec::new(),
            wal_end,
        });
        self.log(format!(
            "n{id} starts: term {} vote {:?} commit {} last {}",
            hard.term, hard.vote, hard.commit, hard.last_index
        ));
        Ok(())
    }

    /// The process dies. `unsynced`: where the synced WAL ended, when the crash caught
    /// writes that were not (yet) synced: they are lost, torn or kept.
    fn crash(&mut self, id: NodeId, unsynced: Option<(PathBuf, u64)>, why: &str) {
        let down_for = if self.rng.random_bool(0.5) {
            // Back while the election it took part in still runs: when a forgotten
            // vote would be used twice.
            self.rng.random_range(1..5)
        } else {
            self.rng.random_range(5..60)
        };
        let others_wiped = self.nodes.iter().any(|(&o, n)| o != id && n.wiped);
        let wipe = !others_wiped && self.rng.random_bool(self.sc.wipe_per_crash);
        // Of unsynced writes: all lost, torn somewhere, or all kept.
        let torn_at = [0.0, self.rng.random_range(0.0..1.0), 1.0][self.rng.random_range(0..3)];
        let now = self.now;
        let node = self.node(id);
        let current_end = node.live.as_ref().and_then(|l| l.driver.wal_end());
        node.live = None;
        node.held.clear();
        node.busy_until = 0;
        node.wal_before_slow = None;
        lock(&node.io.outbox).clear();
        lock(&node.io.jobs).clear();
        {
            let mut disk = lock(&node.io.disk);
            disk.synced = false;
            if disk.fault != Fault::Full {
                disk.fault = Fault::None;
            }
        }
        node.restart_at = now + down_for;
        // Unsynced writes: only within the same segment (a roll or a snapshot install
        // in between is left as it is, as if its fsyncs had completed).
        let mut lost = String::new();
        if let (Some((path, synced)), Some((current_path, written))) = (unsynced, current_end) {
            if path == current_path && written > synced {
                let keep = synced + ((written - synced) as f64 * torn_at) as u64;
                // Zeros from there on, as a file the kernel never wrote back reads.
                let cut = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|file| {
                        let len = file.metadata()?.len();
                        file.set_len(keep)?;
                        file.set_len(len)
                    });
                if let Err(e) = cut {
                    panic!("n{id}: cutting the WAL: {e}");
                }
                lost = format!(", WAL cut at {keep} (synced {synced}, written {written})");
            }
        }
        if wipe {
            match Storage::reset(&node.options) {
                Ok(true) => node.wiped = true,
                Ok(false) => {}
                Err(e) => panic!("n{id}: wiping: {e}"),
            }
        }
        let wiped = node.wiped && wipe;
        self.log(format!(
            "n{id} crashes ({why}){lost}{}",
            if wiped { ", wiped" } else { "" }
        ));
        // Its connections break: most peers notice at once.
        for peer in self.ids() {
            if peer != id && self.rng.random_bool(0.8) {
                self.connection_broke(id, peer);
            }
        }
        // Its clients lose their connection: writes are indeterminate, reads void.
        // Nodes that forwarded a request to it see the call break, whatever answer
        // the dead process may have put in its reply slot.
        for client in 0..self.sc.clients {
            let Some(pending) = self.clients.get(&client).and_then(Option::as_ref) else {
                continue;
            };
            let at = match &pending.state {
                Waiting::Write { at, .. } | Waiting::Read { at, .. } => Some(*at),
                Waiting::Retry { .. } => None,
            };
            if pending.origin == id {
                self.finish(client, KvOutcome::Unknown);
            } else if at == Some(id) {
                let write = !matches!(pending.op, KvOp::Get { .. });
                let status = tonic::Status::unavailable("the connection broke");
                if forward_again(write, &status) {
                    let retry = Waiting::Retry {
                        at_tick: self.now + 2,
                    };
                    self.set_state(client, retry);
                } else {
                    self.fail(client, &status);
                }
            }
        }
    }

    /// `to` sees its connection from `from` break.
    fn connection_broke(&mut self, from: NodeId, to: NodeId) {
        if !self.ready(to) {
            return;
        }
        if let Err(e) = self.handle(to, Event::ConnectionLost { from }) {
            // Checked again at the node's next turn.
            self.log(format!("n{to}: {e}"));
        }
    }

    // ----- the main loop -----------------------------------------------------------

    fn run(&mut self) -> Result<(), String> {
        while self.now < self.sc.fault_ticks {
            self.inject_faults()?;
            self.tick(true)?;
        }
        self.heal()?;
        // A leader must emerge and a new write must reach every node within a bound.
        // The write is proposed again if the leader it went to loses its post before
        // committing it (Raft working as intended, not a liveness bug).
        let deadline = self.now + self.sc.heal_ticks;
        let data = Kv::put_command("final".into(), format!("v{}", self.now));
        let mut proposed: Option<(NodeId, Term, ProposeAnswer)> = None;
        let index = loop {
            self.tick(false)?;
            let mut lost = false;
            if let Some((leader, term, answer)) = proposed.as_mut() {
                match answer.try_recv() {
                    Ok(Ok(committed)) => break committed.index,
                    Err(TryRecvError::Empty) => lost = !self.leads(*leader, *term),
                    _ => lost = true,
                }
            }
            if lost {
                proposed = None;
            }
            if proposed.is_none() {
                if let Some(leader) = self.stable_leader() {
                    let term = self.core(leader).map_or(0, |c| c.term());
                    let (reply, answer) = oneshot::channel();
                    let event = Event::Propose {
                        data: data.clone(),
                        kind: WriteKind::Put {
                            key: "final".into(),
                            value_bytes: 8,
                        },
                        reply,
                    };
                    self.handle(leader, event)?;
                    proposed = Some((leader, term, answer));
                }
            }
            if self.now > deadline {
                return Err(format!(
                    "no write committed within {} ticks of healing: {}",
                    self.sc.heal_ticks,
                    self.statuses()
                ));
            }
        };
        self.settling = true;
        // Every node applies it, and then every node holds the same state (a node
        // wiped just before healing may need a snapshot first).
        let deadline = deadline.max(self.now + 100);
        loop {
            let applied = self.applied_and_digests();
            let first = applied.first().cloned();
            let all_same = applied.iter().all(|a| Some(a) == first.as_ref());
            if all_same && first.is_some_and(|(i, _)| i >= index) {
                break;
            }
            if self.now > deadline {
                return Err(format!(
                    "the nodes did not converge within {} ticks of healing (write at {index}): {applied:?}",
                    self.sc.heal_ticks
                ));
            }
            self.tick(false)?;
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

    /// Ends every fault: partitions, losses, pauses, full disks; crashed nodes restart.
    fn heal(&mut self) -> Result<(), String> {
        self.blocked.clear();
        self.sc.drop = 0.0;
        self.sc.duplicate = 0.0;
        let now = self.now;
        for node in self.nodes.values_mut() {
            node.paused_until = 0;
            node.full_until = now;
        }
        for id in self.ids() {
            self.update_disk(id);
            if self.nodes[&id].live.is_none() {
                self.restart(id)?;
            }
        }
        self.log("healed".into());
        Ok(())
    }

    /// Each node's applied index and state digest, from its status (as `GET /` shows).
    fn applied_and_digests(&mut self) -> Vec<(Index, String)> {
        let mut out = Vec::new();
        for id in self.ids() {
            let Some(live) = self.node(id).live.as_mut() else {
                continue;
            };
            let (reply, mut answer) = oneshot::channel();
            if live.driver.handle_batch([Event::Status { reply }]).is_err() {
                continue;
            }
            if let Ok(status) = answer.try_recv() {
                out.push((status.last_applied, status.state_digest));
            }
        }
        out
    }

    fn statuses(&self) -> String {
        let mut out = String::new();
        for (id, node) in &self.nodes {
            match &node.live {
                Some(live) => {
                    let _ = write!(
                        out,
                        "\n  n{id}: up {} {:?}",
                        live.driver.is_up(),
                        live.driver.core().status()
                    );
                }
                None => {
                    let _ = write!(out, "\n  n{id}: down");
                }
            }
        }
        out
    }

    /// The core of a node that takes part in Raft.
    fn core(&self, id: NodeId) -> Option<&RawNode> {
        let live = self.nodes.get(&id)?.live.as_ref()?;
        live.driver.is_up().then(|| live.driver.core())
    }

    fn leads(&self, id: NodeId, term: Term) -> bool {
        self.core(id)
            .is_some_and(|c| c.role() == Role::Leader && c.term() == term)
    }

    fn stable_leader(&self) -> Option<NodeId> {
        let cores = self
            .nodes
            .iter()
            .filter_map(|(&id, n)| Some((id, n.live.as_ref()?)))
            .filter(|(_, l)| l.driver.is_up())
            .map(|(id, l)| (id, l.driver.core()));
        let top_term = cores.clone().map(|(_, c)| c.term()).max()?;
        cores
            .filter(|(_, c)| c.role() == Role::Leader && c.term() == top_term)
            .map(|(id, _)| id)
            .next()
    }

    fn inject_faults(&mut self) -> Result<(), String> {
        let n = self.sc.nodes;
        // A connection breaks while both ends live (a stream reopened, a glitch).
        if self.rng.random_bool(self.sc.partition_per_tick) {
            let (from, to) = (self.rng.random_range(1..=n), self.rng.random_range(1..=n));
            if from != to {
                self.connection_broke(from, to);
            }
        }
        let max_faulty = ((n - 1) / 2) as usize;
        if self.now >= self.heal_partition_at && !self.blocked.is_empty() {
            self.blocked.clear();
            self.log("partition healed".into());
        }
        if self.blocked.is_empty() && self.rng.random_bool(self.sc.partition_per_tick) {
            self.partition();
        }
        let faulty = |sim: &Sim| {
            sim.nodes
                .values()
                .filter(|n| n.live.is_none() || n.paused_until > sim.now)
                .count()
        };
        if faulty(self) < max_faulty && self.rng.random_bool(self.sc.crash_per_tick * n as f64) {
            let id = self.rng.random_range(1..=n);
            if self.nodes[&id].live.is_some() {
                self.crash(id, None, "killed");
            }
        }
        if faulty(self) < max_faulty && self.rng.random_bool(self.sc.pause_per_tick * n as f64) {
            // Pausing the leader is the interesting case: it wakes up believing it leads.
            let id = match self.stable_leader() {
                Some(leader) if self.rng.random_bool(0.5) => leader,
                _ => self.rng.random_range(1..=n),
            };
            let pause = self.rng.random_range(5..60);
            let now = self.now;
            self.node(id).paused_until = now + pause;
            self.log(format!("n{id} pauses for {pause}"));
        }
        if self
            .rng
            .random_bool((self.sc.disk_full_per_tick * n as f64).min(1.0))
        {
            let id = self.rng.random_range(1..=n);
            let ticks = self.rng.random_range(5..40);
            let now = self.now;
            self.node(id).full_until = now + ticks;
            self.log(format!("n{id}'s disk is full for {ticks}"));
        }
        for id in self.ids() {
            self.update_disk(id);
            let node = &self.nodes[&id];
            if node.live.is_none() && node.restart_at <= self.now {
                self.restart(id)?;
            }
        }
        Ok(())
    }

    /// Fills or frees a node's disk as `full_until` says.
    fn update_disk(&mut self, id: NodeId) {
        let now = self.now;
        let node = self.node(id);
        let full = node.full_until > now;
        let mut disk = lock(&node.io.disk);
        match (full, disk.fault) {
            (true, Fault::None) => disk.fault = Fault::Full,
            (false, Fault::Full) => disk.fault = Fault::None,
            _ => {}
        }
    }

    fn partition(&mut self) {
        let mut ids = self.ids();
        let leader = self.stable_leader();
        for i in (1..ids.len()).rev() {
            let j = self.rng.random_range(0..=i);
            ids.swap(i, j);
        }
        let minority = ((ids.len() - 1) / 2).max(1);
        let kind = self.rng.random_range(0..4);
        let (a, b): (Vec<NodeId>, Vec<NodeId>) = match (kind, leader) {
            // Isolate the leader.
            (0, Some(l)) => (vec![l], ids.iter().copied().filter(|&x| x != l).collect()),
            _ => (ids[..minority].to_vec(), ids[minority..].to_vec()),
        };
        let mut blocked = BTreeSet::new();
        for &x in &a {
            for &y in &b {
                blocked.insert((x, y));
                // One-way: a hears b but is not heard.
                if kind != 1 {
                    blocked.insert((y, x));
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
        // Slow fsyncs that return now: the rest of their turn leaves. Sometimes the
        // process dies first, and the turn's writes may be lost with it.
        for id in self.ids() {
            let node = &self.nodes[&id];
            if node.busy_until == 0 || node.busy_until > self.now || node.live.is_none() {
                continue;
            }
            if faults && self.rng.random_bool(0.1) {
                let before = self.node(id).wal_before_slow.take();
                self.crash(id, before, "during a slow fsync");
                continue;
            }
            let node = self.node(id);
            node.busy_until = 0;
            node.wal_before_slow = None;
            let held = std::mem::take(&mut node.held);
            for out in held {
                self.send(id, out);
            }
            self.poll_clients(id)?;
        }
        // Deliver what is due, in random order (reordering on top of random delays).
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            let to = self.net[i].out.msg.to;
            let waiting = self
                .nodes
                .get(&to)
                .is_some_and(|n| n.paused_until > self.now || n.busy_until > self.now);
            if self.net[i].deliver_at <= self.now && !waiting {
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
            self.drive_clients(faults)?;
        }
        for inflight in due {
            let to = inflight.out.msg.to;
            self.deliver(inflight.out)?;
            // Sometimes a turn ends after each message, sometimes many share one.
            if self.ready(to) && self.rng.random_bool(0.3) {
                self.turn(to, faults)?;
            }
        }
        // The snapshot writers that finish now.
        for id in self.ids() {
            if self.rng.random_bool(0.3) {
                let jobs = std::mem::take(&mut *lock(&self.nodes[&id].io.jobs));
                for job in jobs {
                    job();
                }
            }
        }
        // Clocks: every live node ticks, at its own rate.
        for id in self.ids() {
            let skip = self.nodes[&id].tick_skip;
            if !self.ready(id) || self.rng.random_bool(skip) {
                continue;
            }
            if let Some(live) = self.node(id).live.as_mut() {
                live.driver.tick(std::time::Instant::now());
            }
            self.check_node(id)?;
        }
        if !clients_first {
            self.drive_clients(faults)?;
        }
        let poll_space = self.now.is_multiple_of(10);
        for id in self.ids() {
            if !self.ready(id) {
                continue;
            }
            if poll_space {
                // As the driver's loop does every second while the NOSPACE alarm is up.
                let live = self.node(id).live.as_mut().expect("ready means live");
                if let Err(e) = live.driver.check_space() {
                    return Err(format!("n{id}: checking for space: {e}"));
                }
            }
            self.turn(id, faults)?;
        }
        self.expire_clients();
        self.check_logs()
    }

    /// Hands one event to a node's driver, and checks safety right after it.
    fn handle(&mut self, id: NodeId, event: Event) -> Result<(), String> {
        let Some(live) = self.node(id).live.as_mut() else {
            return Ok(());
        };
        live.driver
            .handle_batch([event])
            .map_err(|e| format!("n{id}'s driver failed handling an event: {e}"))?;
        self.check_node(id)
    }

    /// Delivers a message: a request with a reply slot (and, for a snapshot, its
    /// image streamed into the receiver's storage as the gRPC handler does), or an
    /// answer to one of the receiver's requests.
    fn deliver(&mut self, out: Outgoing) -> Result<(), String> {
        let to = out.msg.to;
        if !self.ready(to) {
            return Ok(());
        }
        if !out.request {
            if out.incarnation != self.nodes[&to].incarnation {
                // The process that asked is gone, and its call with it.
                return Ok(());
            }
            let event = Event::Raft {
                msg: out.msg,
                reply: None,
                snapshot: None,
            };
            return self.handle(to, event);
        }
        let received = match (&out.msg.body, out.snapshot) {
            (Body::Snapshot { meta }, Some(file)) => {
                match self.receive_snapshot(to, &out.msg, meta.clone(), file, out.incarnation)? {
                    Received::Image(image) => Some(image),
                    Received::NotNeeded => None,
                    Received::Answered => return Ok(()),
                }
            }
            _ => None,
        };
        let (reply, answer) = oneshot::channel();
        let event = Event::Raft {
            msg: out.msg,
            reply: Some(reply),
            snapshot: received,
        };
        let asker = out.incarnation;
        if let Some(live) = self.node(to).live.as_mut() {
            live.answers.push((answer, asker));
        }
        self.handle(to, event)
    }

    /// What `rpc::server`'s InstallSnapshot does before the core sees the message.
    fn receive_snapshot(
        &mut self,
        to: NodeId,
        msg: &Message,
        meta: SnapshotMeta,
        file: SnapshotFile,
        asker: u64,
    ) -> Result<Received, String> {
        let (reply, mut answer) = oneshot::channel();
        let event = Event::BeginSnapshot {
            from: msg.from,
            term: msg.term,
            meta,
            reply,
        };
        self.handle(to, event)?;
        let admission = match answer.try_recv() {
            Ok(Ok(admission)) => admission,
            // Refused (stopped) or a storage failure: the leader tries again later.
            _ => return Ok(Received::Answered),
        };
        let mut writer = match admission {
            SnapshotAdmission::Write(writer) => writer,
            SnapshotAdmission::NotNeeded => return Ok(Received::NotNeeded),
            SnapshotAdmission::Stale { term } => {
                // As the core answers a stale leader's append: our term, no success.
                let answer = Message {
                    from: to,
                    to: msg.from,
                    term,
                    body: Body::AppendResponse {
                        outcome: AppendOutcome::StaleTerm,
                    },
                };
                self.send(
                    to,
                    Outgoing {
                        msg: answer,
                        snapshot: None,
                        request: false,
                        after_persist: false,
                        incarnation: asker,
                    },
                );
                return Ok(Received::Answered);
            }
            SnapshotAdmission::NotLeader { .. } => return Ok(Received::Answered),
        };
        // The sender's file may be gone (compacted away since): the stream breaks.
        let Ok(mut image) = file.open_data() else {
            return Ok(Received::Answered);
        };
        if let Err(e) = io::copy(&mut image, &mut writer) {
            // A full disk: the stream fails, as it would over gRPC.
            self.log(format!("n{to}: storing a snapshot: {e}"));
            return Ok(Received::Answered);
        }
        let kv = writer
            .read_back()
            .map_err(|e| format!("n{to}: reading back a snapshot: {e}"))
            .and_then(|image| Kv::read_image(image).map_err(|e| format!("n{to}: {e}")))?;
        Ok(Received::Image(Box::new(ReceivedSnapshot { writer, kv })))
    }

    /// The end of a node's turn: its Readys carried out (with a disk fault, sometimes),
    /// what it sent put on the network, its answers collected.
    fn turn(&mut self, id: NodeId, faults: bool) -> Result<(), String> {
        let crash_at = match faults && self.rng.random_bool(self.sc.crash_in_append) {
            true => Some(
                [DiskStep::WalReserve, DiskStep::WalWrite, DiskStep::WalSync]
                    [self.rng.random_range(0..3)],
            ),
            false => None,
        };
        let slow = faults && self.rng.random_bool(self.sc.slow_fsync);
        let node = self.node(id);
        let Some(live) = node.live.as_mut() else {
            return Ok(());
        };
        {
            let mut disk = lock(&node.io.disk);
            disk.synced = false;
            if let (Some(step), Fault::None) = (crash_at, disk.fault) {
                disk.fault = Fault::CrashAt(step);
            }
        }
        let woken: Vec<Event> = live.wake.try_iter().collect();
        let handled = live.driver.handle_batch(woken);
        let result = handled.and_then(|_| live.driver.end_turn());
        let synced_before = live.wal_end.clone();
        let (died, synced) = {
            let mut disk = lock(&node.io.disk);
            let died = disk.fault == Fault::Crashed;
            if matches!(disk.fault, Fault::CrashAt(_)) {
                disk.fault = Fault::None;
            }
            (died, disk.synced)
        };
        if died {
            // Whatever the driver made of the failure, the process is gone. What this
            // append wrote unsynced may be lost or torn; not so after an fsync of an
            // earlier Ready of the turn (where that one ended is not known here).
            let unsynced = if synced { None } else { synced_before };
            self.crash(id, unsynced, "halfway through a WAL append");
            return Ok(());
        }
        if let Err(e) = result {
            return Err(format!("n{id}'s driver failed: {e}"));
        }
        // The turn is over: its writes are synced.
        let node = self.node(id);
        let live = node.live.as_mut().expect("checked above");
        live.wal_end = live.driver.wal_end();
        let mut outgoing = std::mem::take(&mut *lock(&node.io.outbox));
        for out in &mut outgoing {
            out.incarnation = node.incarnation;
        }
        live.answers
            .retain_mut(|(answer, asker)| match answer.try_recv() {
                Ok(RaftReply::Answer(msg)) => {
                    outgoing.push(Outgoing {
                        msg,
                        snapshot: None,
                        request: false,
                        after_persist: true,
                        incarnation: *asker,
                    });
                    false
                }
                Err(TryRecvError::Empty) => true,
                Ok(RaftReply::Unanswered) | Err(TryRecvError::Closed) => false,
            });
        let slow = slow && synced;
        if slow {
            let ticks = self.rng.random_range(1..=4);
            let now = self.now;
            let node = self.node(id);
            node.busy_until = now + ticks;
            node.wal_before_slow = synced_before;
        }
        let granted_a_vote = outgoing
            .iter()
            .any(|out| out.msg.body == Body::VoteResponse { granted: true });
        for out in outgoing {
            if slow && out.after_persist {
                self.node(id).held.push(out);
            } else {
                self.send(id, out);
            }
        }
        self.check_node(id)?;
        // Right after voting: the vote is out, only the disk remembers it.
        if faults && granted_a_vote && !slow && self.rng.random_bool(0.2) {
            self.crash(id, None, "right after voting");
            return Ok(());
        }
        if !slow {
            self.poll_clients(id)?;
        }
        // Caught up after a wipe, durably (a turn that ended in Raft, its fsync
        // returned): another node may be wiped now.
        let node = self.node(id);
        let durable_vote = node
            .live
            .as_ref()
            .is_some_and(|l| l.driver.is_up() && l.driver.core().may_vote());
        if node.wiped && !slow && durable_vote {
            node.wiped = false;
        }
        Ok(())
    }

    fn send(&mut self, from: NodeId, out: Outgoing) {
        let to = out.msg.to;
        if self.blocked.contains(&(from, to)) || self.rng.random_bool(self.sc.drop) {
            return;
        }
        if self.rng.random_bool(self.sc.duplicate) {
            let copy = Outgoing {
                msg: out.msg.clone(),
                snapshot: out.snapshot.clone(),
                ..out
            };
            let delay = self.rng.random_range(1..=self.sc.max_delay);
            self.net.push(InFlight {
                deliver_at: self.now + delay,
                out: copy,
            });
        }
        let delay = self.rng.random_range(1..=self.sc.max_delay);
        self.net.push(InFlight {
            deliver_at: self.now + delay,
            out,
        });
    }

    // ----- clients -----------------------------------------------------------------

    fn drive_clients(&mut self, faults: bool) -> Result<(), String> {
        for client in 0..self.sc.clients {
            match &self.clients[&client] {
                Some(Pending {
                    state: Waiting::Retry { at_tick },
                    origin,
                    ..
                }) if *at_tick <= self.now => {
                    let origin = *origin;
                    if self.ready(origin) {
                        self.submit(client, origin)?;
                    }
                    continue;
                }
                Some(_) => continue,
                None => {}
            }
            if self.settling || !self.rng.random_bool(0.3) || (!faults && self.rng.random_bool(0.5))
            {
                continue;
            }
            let origin = self.rng.random_range(1..=self.sc.nodes);
            if !self.ready(origin) {
                continue;
            }
            let key = format!("k{}", self.rng.random_range(0..self.sc.keys));
            let op = match self.rng.random_range(0..10) {
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
            let call = self.next_event();
            let pending = Pending {
                op,
                call,
                started: self.now,
                origin,
                state: Waiting::Retry { at_tick: self.now },
            };
            self.clients.insert(client, Some(pending));
            self.submit(client, origin)?;
        }
        Ok(())
    }

    /// Hands a client's request to the driver of `at`, as the Kv service does.
    fn submit(&mut self, client: u64, at: NodeId) -> Result<(), String> {
        let Some(pending) = self.clients.get_mut(&client).and_then(Option::as_mut) else {
            return Ok(());
        };
        let (event, state) = match &pending.op {
            KvOp::Get { key } => {
                let (reply, answer) = oneshot::channel();
                let event = Event::Read {
                    key: key.clone(),
                    stale: false,
                    reply,
                };
                (event, Waiting::Read { at, answer })
            }
            KvOp::Put { key, value } => {
                let (reply, answer) = oneshot::channel();
                let event = Event::Propose {
                    data: Kv::put_command(key.clone(), value.clone()),
                    kind: WriteKind::Put {
                        key: key.clone(),
                        value_bytes: value.len(),
                    },
                    reply,
                };
                (event, Waiting::Write { at, answer })
            }
            KvOp::Delete { key } => {
                let (reply, answer) = oneshot::channel();
                let event = Event::Propose {
                    data: Kv::delete_command(key.clone()),
                    kind: WriteKind::Delete,
                    reply,
                };
                (event, Waiting::Write { at, answer })
            }
        };
        pending.state = state;
        let line = format!("client {client}: {:?} to n{at}", pending.op);
        self.log(line);
        self.handle(at, event)?;
        self.poll_clients(at)
    }

    /// Collects the answers `at` gave its clients, and acts on them as the Kv service
    /// does: forward to the leader, retry, or answer the client.
    fn poll_clients(&mut self, at: NodeId) -> Result<(), String> {
        for client in 0..self.sc.clients {
            let Some(pending) = self.clients.get_mut(&client).and_then(Option::as_mut) else {
                continue;
            };
            let origin = pending.origin;
            let write = !matches!(pending.op, KvOp::Get { .. });
            let result = match &mut pending.state {
                Waiting::Write { at: node, answer } if *node == at => match answer.try_recv() {
                    Err(TryRecvError::Empty) => continue,
                    Ok(Ok(_)) => Ok(match pending.op {
                        KvOp::Delete { .. } => KvOutcome::Delete,
                        _ => KvOutcome::Put,
                    }),
                    Ok(Err(err)) => Err(err),
                    // The node died with the request (see DriverHandle::propose).
                    Err(TryRecvError::Closed) => Err(RequestError::Indeterminate),
                },
                Waiting::Read { at: node, answer } if *node == at => match answer.try_recv() {
                    Err(TryRecvError::Empty) => continue,
                    Ok(Ok(value)) => Ok(KvOutcome::Get(value)),
                    Ok(Err(err)) => Err(err),
                    Err(TryRecvError::Closed) => Err(RequestError::ShuttingDown),
                },
                _ => continue,
            };
            let retry = Waiting::Retry {
                at_tick: self.now + 2,
            };
            self.log(format!("client {client}: n{at} answers {result:?}"));
            match result {
                Ok(outcome) => {
                    self.successes += 1;
                    self.finish(client, outcome);
                }
                // Forwarded: the origin gets the leader's failure over gRPC.
                Err(err) if at != origin => {
                    let status = status_of(err);
                    if forward_again(write, &status) {
                        self.set_state(client, retry);
                    } else {
                        self.fail(client, &status);
                    }
                }
                Err(RequestError::NotLeader {
                    leader: Some(leader),
                }) if leader != origin => {
                    if self.ready(leader) {
                        self.submit(client, leader)?;
                    } else {
                        // Refused or unreachable: certainly not sent.
                        self.set_state(client, retry);
                    }
                }
                Err(
                    RequestError::NotLeader { .. }
                    | RequestError::LeadershipLost
                    | RequestError::Overloaded,
                ) => self.set_state(client, retry),
                Err(err) => self.fail(client, &status_of(err)),
            }
        }
        Ok(())
    }

    fn set_state(&mut self, client: u64, state: Waiting) {
        if let Some(pending) = self.clients.get_mut(&client).and_then(Option::as_mut) {
            pending.state = state;
        }
    }

    /// The client gets a failure: a write that certainly did not happen leaves no
    /// trace in the history; any other is indeterminate.
    fn fail(&mut self, client: u64, status: &tonic::Status) {
        let not_applied = status.metadata().contains_key(NOT_APPLIED);
        if not_applied {
            self.clients.insert(client, None);
        } else {
            self.finish(client, KvOutcome::Unknown);
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
            let line = format!(
                "client {client}: #{} {:?} [{}, {ret}] -> {outcome:?}",
                self.history.len(),
                p.op,
                p.call
            );
            self.log(line);
            self.history.push(Operation {
                client,
                op: p.op,
                call: p.call,
                ret,
                outcome,
            });
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

    // ----- safety --------------------------------------------------------------------

    /// After every event and turn of `id`: Election Safety, State Machine Safety and
    /// Leader Completeness as far as this node shows them.
    fn check_node(&mut self, id: NodeId) -> Result<(), String> {
        let Some(core) = self.core(id) else {
            return Ok(());
        };
        let (role, term, commit) = (core.role(), core.term(), core.commit_index());
        if role == Role::Leader {
            match self.leaders.get(&term) {
                Some(&other) if other != id => {
                    return Err(format!("two leaders in term {term}: n{other} and n{id}"));
                }
                Some(_) => {}
                None => {
                    // Leader Completeness: every entry committed in an earlier term.
                    for (&index, &(entry_term, committed_in)) in &self.committed {
                        if committed_in < term && !holds(core, index, entry_term) {
                            return Err(format!(
                                "leader n{id} of term {term} lacks entry {index} of term {entry_term}, committed in term {committed_in}"
                            ));
                        }
                    }
                    self.leaders.insert(term, id);
                    self.log(format!("n{id} leads term {term}"));
                }
            }
        }
        let seen = self.nodes[&id].seen_commit;
        if commit <= seen {
            return Ok(());
        }
        let core = self.core(id).expect("checked above");
        let mut new = Vec::new();
        for index in seen + 1..=commit {
            // Compacted into the snapshot: checked by whoever saw it committed first.
            let Some(entry_term) = core.log_term(index) else {
                continue;
            };
            match self.committed.get(&index) {
                Some(&(known, _)) if known != entry_term => {
                    return Err(format!(
                        "n{id} committed entry {index} of term {entry_term}, where one of term {known} was committed"
                    ));
                }
                Some(_) => {}
                None => new.push((index, entry_term)),
            }
        }
        for &(index, entry_term) in &new {
            // Leaders of later terms that already lead must hold it too.
            for &other in self.nodes.keys() {
                let Some(c) = self.core(other) else { continue };
                if c.role() == Role::Leader && c.term() > term && !holds(c, index, entry_term) {
                    return Err(format!(
                        "leader n{other} of term {} lacks entry {index} of term {entry_term}, committed in term {term}",
                        c.term()
                    ));
                }
            }
        }
        for (index, entry_term) in new {
            self.committed.insert(index, (entry_term, term));
        }
        self.node(id).seen_commit = commit;
        Ok(())
    }

    /// Log Matching over the cores' logs: where two logs hold an entry of the same term
    /// at an index, they hold the same terms before it.
    fn check_logs(&self) -> Result<(), String> {
        let cores: Vec<(NodeId, &RawNode)> = self
            .nodes
            .iter()
            .filter_map(|(&id, n)| Some((id, n.live.as_ref()?.driver.core())))
            .collect();
        for (i, (a_id, a)) in cores.iter().enumerate() {
            let a_status = a.status();
            let (a_first, a_last) = (a_status.snapshot_index, a_status.last_index);
            for (b_id, b) in &cores[i + 1..] {
                let b_status = b.status();
                let (b_first, b_last) = (b_status.snapshot_index, b_status.last_index);
                let (lo, hi) = (a_first.max(b_first), a_last.min(b_last));
                let mut matched = false;
                for index in (lo..=hi).rev() {
                    let (ta, tb) = (a.log_term(index), b.log_term(index));
                    if matched && ta != tb {
                        return Err(format!(
                            "logs of n{a_id} and n{b_id} match at a later index but differ at {index}: {ta:?} {tb:?}"
                        ));
                    }
                    matched |= ta.is_some() && ta == tb;
                }
            }
        }
        Ok(())
    }
}

/// Whether a core's log holds the entry of `term` at `index` (or a snapshot past it).
fn holds(core: &RawNode, index: Index, term: Term) -> bool {
    match core.log_term(index) {
        Some(t) => t == term,
        None => index < core.status().snapshot_index,
    }
}

enum Received {
    Image(Box<ReceivedSnapshot>),
    NotNeeded,
    /// Dealt with before the core (refused, stale, not stored).
    Answered,
}

/// What one seed's run came to.
struct Outcome {
    operations: usize,
    successes: u64,
}

fn run_seed(sc: &Scenario, seed: u64) -> Result<Outcome, String> {
    let mut trace = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sim = Sim::new(sc.clone(), seed)?;
        let result = sim.run();
        trace = std::mem::take(&mut sim.trace);
        result.map(|()| Outcome {
            operations: sim.history.len(),
            successes: sim.successes,
        })
    }));
    let outcome = match result {
        Ok(r) => r,
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())),
    };
    outcome.map_err(|e| {
        let mut report = format!(
            "seed {seed} ({} nodes): {e}\n  replay: DISTRAFT_SIM_SEED={seed} DISTRAFT_SIM_TRACE=1 cargo test --test simulation {}\n",
            sc.nodes,
            test_name(sc)
        );
        if std::env::var("DISTRAFT_SIM_TRACE").is_ok() {
            for line in &trace {
                let _ = writeln!(report, "  {line}");
            }
        }
        report
    })
}

fn test_name(sc: &Scenario) -> &'static str {
    match sc.nodes {
        3 => "three_nodes_under_faults",
        _ => "five_nodes_under_faults",
    }
}

/// Runs every seed for one scenario; fails with the seeds that failed.
fn run_scenario(sc: Scenario) {
    if let Ok(seed) = std::env::var("DISTRAFT_SIM_SEED") {
        let seed: u64 = seed.parse().expect("DISTRAFT_SIM_SEED is a number");
        match run_seed(&sc, seed) {
            Ok(o) => println!(
                "seed {seed}, {} nodes: ok, {} client operations, {} succeeded",
                sc.nodes, o.operations, o.successes
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
    let results: Vec<(Vec<String>, usize, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let sc = sc.clone();
                let failed = &failed;
                s.spawn(move || {
                    let mut failures = Vec::new();
                    let (mut ops, mut successes) = (0, 0);
                    for seed in (t..seeds).step_by(threads as usize) {
                        if fail_fast && failed.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        match run_seed(&sc, seed) {
                            Ok(o) => {
                                ops += o.operations;
                                successes += o.successes;
                            }
                            Err(e) => {
                                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                failures.push(e);
                            }
                        }
                    }
                    (failures, ops, successes)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation thread"))
            .collect()
    });
    let ops: usize = results.iter().map(|r| r.1).sum();
    let successes: u64 = results.iter().map(|r| r.2).sum();
    let failures: Vec<String> = results.into_iter().flat_map(|r| r.0).collect();
    println!(
        "{} nodes: {seeds} seeds, {ops} client operations checked ({successes} succeeded), {} failed, {:.1} s",
        sc.nodes,
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        let shown: Vec<&String> = failures.iter().take(5).collect();
        panic!(
            "{} of {seeds} seeds failed:\n{}",
            failures.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
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
