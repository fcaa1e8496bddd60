//! A linearizability checker for histories of key-value operations.
//!
//! A history records, for every client request, when it was invoked (`call`), when its
//! answer arrived (`ret`) and what the answer was. The history is *linearizable* if each
//! operation can be given one instant between its call and its return such that, taken
//! in that order, the answers are those of a single sequential map that starts empty. A
//! request whose answer never came ([`KvOutcome::Unknown`]: a timeout, a crash) may take
//! effect at any instant after its call, or never.
//!
//! # How it decides
//! - **Per key.** A map is linearizable iff the history of each of its keys, a single
//!   register, is (P-compositionality, Herlihy & Wing), so keys are searched one by one.
//! - **Per register**, the Wing–Gong search with Lowe's just-in-time linearization, as
//!   Porcupine does it: walk the call and return events in time order; an operation may
//!   come next in the linearization if its call precedes the earliest pending return;
//!   backtrack when the walk reaches a return. Explored configurations (the set of
//!   linearized operations and the register's value) are remembered and pruned.
//! - **Unknown operations.** An unknown write has no return event, so it can be
//!   linearized anywhere after its call; the search succeeds once every *answered*
//!   operation is linearized, leaving the remaining unknown writes out. An unknown write
//!   only matters if a read of its value comes right after it (otherwise dropping it
//!   changes nothing), so the search linearizes it only together with such a read. A
//!   configuration is also pruned when an explored one had the same answered operations
//!   and value with a subset of its unknown writes: having used fewer leaves more
//!   options. This keeps many timeouts from blowing the search up. Unknown reads
//!   constrain nothing and are dropped.
//! - **Bounded.** The search of a key stops after a step budget and the result is then
//!   [`CheckError::Inconclusive`], never a success.
//! - **Evidence.** A violation is explained by the shortest prefix of the key's history
//!   (cut at a return) that already has no linearization, shrunk to a small set of
//!   operations that still has none. A write whose value a kept read returned is kept
//!   with it, so the evidence says where the value came from.
//!
//! # Clocks
//! `call` and `ret` may come from any monotonic clock shared by all clients (nanoseconds,
//! simulator steps). An operation precedes another only if its `ret` is strictly less
//! than the other's `call`: equal times count as concurrent, so a coarse clock can hide a
//! violation but never invent one. A client's consecutive requests should therefore get
//! strictly increasing times if their order is to be checked.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A request to the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    Get { key: String },
    Put { key: String, value: String },
    Delete { key: String },
}

impl KvOp {
    /// The key the request reads or writes.
    pub fn key(&self) -> &str {
        match self {
            KvOp::Get { key } | KvOp::Put { key, .. } | KvOp::Delete { key } => key,
        }
    }
}

/// What the client learned about its request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutcome {
    /// The value read (`None`: the key was absent).
    Get(Option<String>),
    /// The put was acknowledged.
    Put,
    /// The delete was acknowledged.
    Delete,
    /// No answer (timeout, crash): the request may or may not have taken effect.
    Unknown,
}

/// One request of one client, with its invocation and completion times.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    pub client: u64,
    pub op: KvOp,
    /// When the request was sent.
    pub call: u64,
    /// When the answer arrived; ignored when `outcome` is [`KvOutcome::Unknown`].
    pub ret: u64,
    pub outcome: KvOutcome,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        if self.outcome == KvOutcome::Unknown {
            write!(f, "[{}, ?] ", self.call)?;
        } else {
            write!(f, "[{}, {}] ", self.call, self.ret)?;
        }
        match &self.op {
            KvOp::Get { .. } => write!(f, "get")?,
            KvOp::Put { value, .. } => write!(f, "put {value:?}")?,
            KvOp::Delete { .. } => write!(f, "delete")?,
        }
        match &self.outcome {
            KvOutcome::Get(Some(value)) => write!(f, " -> {value:?}"),
            KvOutcome::Get(None) => write!(f, " -> absent"),
            KvOutcome::Put | KvOutcome::Delete => write!(f, " -> ok"),
            KvOutcome::Unknown => write!(f, " -> unknown"),
        }
    }
}

/// Search steps allowed per key by [`check`]: far more than a linearizable history of
/// thousands of operations needs, and small enough to bound time and memory (about a
/// second and some hundred megabytes at worst).
pub const DEFAULT_STEPS_PER_KEY: u64 = 1_000_000;

/// What a successful check looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Operations checked (unanswered reads are not counted: they constrain nothing).
    pub ops: usize,
    /// Of those, writes without an answer.
    pub unknown: usize,
    /// Distinct keys.
    pub keys: usize,
    /// Search effort per key, in key order.
    pub per_key: Vec<KeyEffort>,
}

/// The search effort spent on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEffort {
    pub key: String,
    pub ops: usize,
    pub steps: u64,
}

/// Why a history was not declared linearizable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// Proven: no linearization exists.
    #[error("{0}")]
    NotLinearizable(Violation),
    /// The search of `key` used its whole budget without an answer either way.
    #[error(
        "key {key:?}: inconclusive after {steps} search steps over {ops} operations \
         (neither linearizable nor a violation was proven; raise the budget)"
    )]
    Inconclusive { key: String, ops: usize, steps: u64 },
    /// The history itself is malformed (a caller bug).
    #[error("operation #{index} is malformed: {reason}")]
    InvalidOperation { index: usize, reason: &'static str },
}

/// Proof that a key's history has no linearization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// Index in the history of the answered operation whose answer cannot be explained:
    /// the key's history up to its return is the shortest prefix with no linearization.
    pub culprit: usize,
    /// Operations on `key` (index in the history, operation) that together have no
    /// linearization, in call order; the culprit is among them.
    pub evidence: Vec<(usize, Operation)>,
    /// Whether the explanation finished within the budget. If not, the culprit may be a
    /// later operation than the first unexplainable one and the evidence longer than
    /// needed, but the evidence is still a proof.
    pub shrunk: bool,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {:?} is not linearizable: no order of these {} operations explains the answer of #{}",
            self.key,
            self.evidence.len(),
            self.culprit
        )?;
        for (index, op) in &self.evidence {
            write!(f, "\n  #{index} {op}")?;
        }
        if !self.shrunk {
            write!(
                f,
                "\n  (search budget ran out while shrinking this evidence)"
            )?;
        }
        Ok(())
    }
}

/// Checks `history` with [`DEFAULT_STEPS_PER_KEY`].
pub fn check(history: &[Operation]) -> Result<CheckStats, CheckError> {
    check_with_budget(history, DEFAULT_STEPS_PER_KEY)
}

/// Checks `history`, allowing `steps_per_key` search steps for each key (and as many
/// again to explain a violation). A violation is reported before an inconclusive key.
pub fn check_with_budget(
    history: &[Operation],
    steps_per_key: u64,
) -> Result<CheckStats, CheckError> {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        validate(op).map_err(|reason| CheckError::InvalidOperation { index, reason })?;
        by_key.entry(op.op.key()).or_default().push(index);
    }

    let mut stats = CheckStats {
        keys: by_key.len(),
        ..CheckStats::default()
    };
    let mut inconclusive = None;
    for (key, indices) in by_key {
        let register = to_register_history(history, &indices);
        stats.ops += register.len();
        stats.unknown += register.iter().filter(|op| op.ret.is_none()).count();
        let (verdict, steps) = search(&register, steps_per_key);
        match verdict {
            Verdict::Linearizable => stats.per_key.push(KeyEffort {
                key: key.to_string(),
                ops: register.len(),
                steps,
            }),
            Verdict::Violation => {
                return Err(CheckError::NotLinearizable(explain(
                    key,
                    history,
                    &register,
                    steps_per_key,
                )))
            }
            Verdict::Exhausted => {
                inconclusive.get_or_insert(CheckError::Inconclusive {
                    key: key.to_string(),
                    ops: register.len(),
                    steps,
                });
            }
        }
    }
    match inconclusive {
        Some(error) => Err(error),
        None => Ok(stats),
    }
}

fn validate(op: &Operation) -> Result<(), &'static str> {
    let matches = matches!(
        (&op.op, &op.outcome),
        (_, KvOutcome::Unknown)
            | (KvOp::Get { .. }, KvOutcome::Get(_))
            | (KvOp::Put { .. }, KvOutcome::Put)
            | (KvOp::Delete { .. }, KvOutcome::Delete)
    );
    if !matches {
        return Err("its outcome is not of the kind of its request");
    }
    if op.outcome != KvOutcome::Unknown && op.ret < op.call {
        return Err("it returns before it is called");
    }
    Ok(())
}

/// A register value, interned per key; [`ABSENT`] is the absent key.
type Value = usize;
const ABSENT: Value = 0;

/// An operation on one key's register: a put or delete is a write (of [`ABSENT`] for a
/// delete), a get is a read of the value it returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegisterOp {
    Read(Value),
    Write(Value),
}

#[derive(Clone, Copy, Debug)]
struct RegisterCall {
    op: RegisterOp,
    call: u64,
    /// `None`: no answer, the operation may take effect any time after `call`, or never.
    ret: Option<u64>,
    /// Index in the caller's history.
    index: usize,
}

/// The register history of one key: values interned, unanswered reads dropped.
fn to_register_history<'a>(history: &'a [Operation], indices: &[usize]) -> Vec<RegisterCall> {
    let mut values: HashMap<&'a str, Value> = HashMap::new();
    let mut intern = |value: Option<&'a str>| match value {
        None => ABSENT,
        Some(value) => {
            let next = values.len() + 1;
            *values.entry(value).or_insert(next)
        }
    };
    let mut register = Vec::with_capacity(indices.len());
    for &index in indices {
        let entry = &history[index];
        let op = match (&entry.op, &entry.outcome) {
            (KvOp::Get { .. }, KvOutcome::Get(seen)) => RegisterOp::Read(intern(seen.as_deref())),
            (KvOp::Get { .. }, _) => continue,
            (KvOp::Put { value, .. }, _) => RegisterOp::Write(intern(Some(value))),
            (KvOp::Delete { .. }, _) => RegisterOp::Write(ABSENT),
        };
        let ret = (entry.outcome != KvOutcome::Unknown).then_some(entry.ret);
        register.push(RegisterCall {
            op,
            call: entry.call,
            ret,
            index,
        });
    }
    register
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Linearizable,
    Violation,
    Exhausted,
}

/// End of the event list.
const NIL: usize = usize::MAX;
/// The list's head sentinel.
const HEAD: usize = 0;

/// The call and return events of a register history in time order, as a doubly linked
/// list over an arena, so that linearizing an operation unlinks its events and
/// backtracking relinks them in O(1) ("dancing links"; lifts and unlifts nest). A node's
/// number is its event's rank in time order. Unknown writes have a rank but are not
/// linked: they are only ever linearized as a read's source.
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: the operation it belongs to, and whether it is its call.
    event: Vec<(usize, bool)>,
    call_node: Vec<usize>,
    ret_node: Vec<Option<usize>>,
}

impl EventList {
    fn new(ops: &[RegisterCall]) -> EventList {
        // (time, is_return, op): calls sort before returns at equal times, which makes
        // touching intervals concurrent.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, false, i));
            if let Some(ret) = op.ret {
                events.push((ret, true, i));
            }
        }
        events.sort_unstable();
        let nodes = events.len() + 1;
        let mut list = EventList {
            next: (1..=nodes)
                .map(|n| if n == nodes { NIL } else { n })
                .collect(),
            prev: (0..nodes).map(|n| n.wrapping_sub(1)).collect(),
            event: Vec::with_capacity(nodes),
            call_node: vec![NIL; ops.len()],
            ret_node: vec![None; ops.len()],
        };
        list.event.push((NIL, false));
        for (position, &(_, is_return, op)) in events.iter().enumerate() {
            let node = position + 1;
            list.event.push((op, !is_return));
            if is_return {
                list.ret_node[op] = Some(node);
            } else {
                list.call_node[op] = node;
            }
        }
        for (op, call) in ops.iter().enumerate() {
            if call.ret.is_none() {
                list.unlink(list.call_node[op]);
            }
        }
        list
    }

    /// The rank of the first return event from `node` on (`NIL` if none).
    fn first_return_from(&self, mut node: usize) -> usize {
        while let Some(&(_, true)) = self.event.get(node) {
            node = self.next[node];
        }
        node
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }

    /// Unlinks an answered operation's events.
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if let Some(ret) = self.ret_node[op] {
            self.unlink(ret);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(ret) = self.ret_node[op] {
            self.relink(ret);
        }
        self.relink(self.call_node[op]);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(len: usize) -> Bits {
        Bits(vec![0; len.div_ceil(64)].into_boxed_slice())
    }
    fn flip(&mut self, bit: usize) {
        self.0[bit / 64] ^= 1 << (bit % 64);
    }
    fn get(&self, bit: usize) -> bool {
        self.0[bit / 64] & (1 << (bit % 64)) != 0
    }
    fn is_subset_of(&self, other: &Bits) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a & !b == 0)
    }
}

/// Where an operation's "linearized" bit lives: answered and unknown operations are
/// kept apart so that configurations can be compared by their unknown writes alone.
#[derive(Clone, Copy)]
enum Slot {
    Answered(usize),
    Unknown(usize),
}

/// Explored configurations: for each (answered operations linearized, value), the sets
/// of unknown writes linearized with them, none a subset of another.
#[derive(Default)]
struct Memo(HashMap<(Bits, Value), Vec<Bits>>);

impl Memo {
    /// Records a configuration; false if an explored one already covers it.
    fn visit(&mut self, answered: &Bits, unknown: &Bits, value: Value) -> bool {
        let explored = self.0.entry((answered.clone(), value)).or_default();
        if explored.iter().any(|used| used.is_subset_of(unknown)) {
            return false;
        }
        explored.retain(|used| !unknown.is_subset_of(used));
        explored.push(unknown.clone());
        true
    }
}

/// One step of a linearization: an answered operation, preceded, for a read, by the
/// unknown write whose value it returned (`source`). An unknown write is linearized only
/// that way: if anything but a read of its value came next, dropping it would change
/// nothing, and unknown writes may be dropped. Trying them anywhere else only wastes the
/// search's time.
#[derive(Clone, Copy)]
struct Move {
    source: Option<usize>,
    op: usize,
    /// A read of the current value, made without considering alternatives: such a read
    /// can be moved to the front of any linearization from here (its call precedes
    /// every pending return, and reads change nothing), so if none follows it, none
    /// exists from here at all.
    forced: bool,
}

/// The state of the depth-first search over one register history.
struct Search<'a> {
    ops: &'a [RegisterCall],
    slots: Vec<Slot>,
    list: EventList,
    memo: Memo,
    answered: Bits,
    unknown: Bits,
    /// Unknown writes by the value they write, in call order.
    unknown_writes: HashMap<Value, Vec<usize>>,
    answered_total: usize,
    answered_done: usize,
    value: Value,
    /// The linearization so far: each move with the value before it.
    linearized: Vec<(Move, Value)>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [RegisterCall]) -> Search<'a> {
        let mut slots = Vec::with_capacity(ops.len());
        let (mut answered_total, mut unknown_total) = (0, 0);
        for op in ops {
            if op.ret.is_some() {
                slots.push(Slot::Answered(answered_total));
                answered_total += 1;
            } else {
                slots.push(Slot::Unknown(unknown_total));
                unknown_total += 1;
            }
        }
        let mut unknown_writes: HashMap<Value, Vec<usize>> = HashMap::new();
        let list = EventList::new(ops);
        for (op, call) in ops.iter().enumerate() {
            if let (None, RegisterOp::Write(value)) = (call.ret, call.op) {
                unknown_writes.entry(value).or_default().push(op);
            }
        }
        for writes in unknown_writes.values_mut() {
            writes.sort_by_key(|&op| list.call_node[op]);
        }
        let mut search = Search {
            ops,
            unknown_writes,
            slots,
            list,
            memo: Memo::default(),
            answered: Bits::new(answered_total),
            unknown: Bits::new(unknown_total),
            answered_total,
            answered_done: 0,
            value: ABSENT,
            linearized: Vec::new(),
        };
        search.memo.visit(&search.answered, &search.unknown, ABSENT);
        search
    }

    /// The move that would linearize `op`, whose call is at `node`, next from this value.
    fn move_for(&self, op: usize, node: usize) -> Option<Move> {
        match self.ops[op].op {
            RegisterOp::Write(_) => Some(Move {
                source: None,
                op,
                forced: false,
            }),
            RegisterOp::Read(seen) if seen == self.value => Some(Move {
                source: None,
                op,
                forced: false,
            }),
            RegisterOp::Read(seen) => {
                // Any unused unknown write of `seen` called before the earliest pending
                // return will do: none of them ever returns, so they stay
                // interchangeable for the rest of the search.
                let horizon = self.list.first_return_from(node);
                self.unknown_writes
                    .get(&seen)?
                    .iter()
                    .take_while(|&&write| self.list.call_node[write] < horizon)
                    .find(|&&write| !self.is_linearized(write))
                    .map(|&write| Move {
                        source: Some(write),
                        op,
                        forced: false,
                    })
            }
        }
    }

    fn is_linearized(&self, op: usize) -> bool {
        match self.slots[op] {
            Slot::Answered(bit) => self.answered.get(bit),
            Slot::Unknown(bit) => self.unknown.get(bit),
        }
    }

    fn flip(&mut self, mv: Move) {
        for op in mv.source.into_iter().chain([mv.op]) {
            match self.slots[op] {
                Slot::Answered(bit) => self.answered.flip(bit),
                Slot::Unknown(bit) => self.unknown.flip(bit),
            }
        }
    }

    /// Makes the move unless an explored configuration covers the one it leads to.
    fn try_move(&mut self, mv: Move) -> bool {
        let after = match self.ops[mv.op].op {
            RegisterOp::Read(seen) => seen,
            RegisterOp::Write(written) => written,
        };
        self.flip(mv);
        if !self.memo.visit(&self.answered, &self.unknown, after) {
            self.flip(mv);
            return false;
        }
        self.linearized.push((mv, self.value));
        self.value = after;
        self.answered_done += 1;
        self.list.lift(mv.op);
        true
    }

    /// A pending read of the current value, if any.
    fn read_of_current_value(&self) -> Option<usize> {
        let mut node = self.list.next[HEAD];
        while let Some(&(op, true)) = self.list.event.get(node) {
            if self.ops[op].op == RegisterOp::Read(self.value) {
                return Some(op);
            }
            node = self.list.next[node];
        }
        None
    }

    /// Takes back moves up to the last one that has alternatives; returns the node to
    /// resume the walk from, or `None` when the root is exhausted.
    fn backtrack(&mut self) -> Option<usize> {
        loop {
            let (mv, before) = self.linearized.pop()?;
            self.flip(mv);
            self.value = before;
            self.answered_done -= 1;
            self.list.unlift(mv.op);
            if !mv.forced {
                return Some(self.list.next[self.list.call_node[mv.op]]);
            }
        }
    }

    /// Runs for at most `budget` steps; returns the verdict and the steps used.
    fn run(&mut self, budget: u64) -> (Verdict, u64) {
        let mut node = self.list.next[HEAD];
        // Whether `node` is the start of a configuration just reached.
        let mut fresh = true;
        let mut steps = 0;
        loop {
            if self.answered_done == self.answered_total {
                return (Verdict::Linearizable, steps);
            }
            if steps >= budget {
                return (Verdict::Exhausted, steps);
            }
            steps += 1;
            if std::mem::take(&mut fresh) {
                if let Some(read) = self.read_of_current_value() {
                    if self.try_move(Move {
                        source: None,
                        op: read,
                        forced: true,
                    }) {
                        node = self.list.next[HEAD];
                        fresh = true;
                        continue;
                    }
                    // Covered by an explored configuration that failed: so does this one.
                    match self.backtrack() {
                        Some(resume) => node = resume,
                        None => return (Verdict::Violation, steps),
                    }
                    continue;
                }
            }
            // A call before the first pending return may be linearized next; reaching a
            // return (or the end) means its operation had to come before all that is
            // left, so the last choice was wrong.
            match self.list.event.get(node) {
                Some(&(op, true)) => {
                    if self.move_for(op, node).is_some_and(|mv| self.try_move(mv)) {
                        node = self.list.next[HEAD];
                        fresh = true;
                    } else {
                        node = self.list.next[node];
                    }
                }
                _ => match self.backtrack() {
                    Some(resume) => node = resume,
                    None => return (Verdict::Violation, steps),
                },
            }
        }
    }
}

/// Decides whether a register history is linearizable within `budget` steps; returns
/// the verdict and the steps used.
fn search(ops: &[RegisterCall], budget: u64) -> (Verdict, u64) {
    Search::new(ops).run(budget)
}

/// The key's history as observed up to the return of `answered[..cut]`'s last
/// operation: those are answered, others already called are pending (writes become
/// unknown, reads are dropped), later ones are left out. If this prefix has no
/// linearization, neither has the whole history.
fn prefix(ops: &[RegisterCall], answered: &[usize], cut: usize) -> Vec<RegisterCall> {
    let Some(&last) = answered[..cut].last() else {
        return Vec::new();
    };
    let horizon = ops[last].ret.unwrap_or(u64::MAX);
    let mut complete = vec![false; ops.len()];
    for &i in &answered[..cut] {
        complete[i] = true;
    }
    let mut kept = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if op.call > horizon {
            continue;
        }
        if complete[i] || op.ret.is_none() {
            kept.push(*op);
        } else if let RegisterOp::Write(_) = op.op {
            kept.push(RegisterCall { ret: None, ..*op });
        }
    }
    kept
}

/// Builds the evidence for a key whose register history `ops` has no linearization.
fn explain(key: &str, history: &[Operation], ops: &[RegisterCall], budget: u64) -> Violation {
    let mut remaining = budget;
    let violates = |candidate: &[RegisterCall], remaining: &mut u64| {
        let (verdict, steps) = search(candidate, *remaining);
        *remaining -= steps;
        verdict == Verdict::Violation
    };

    // The shortest violating prefix, by bisection: prefixes grow monotonically worse.
    let mut answered: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].ret.is_some()).collect();
    answered.sort_by_key(|&i| (ops[i].ret, i));
    let (mut good, mut bad) = (0, answered.len());
    while bad - good > 1 && remaining > 0 {
        let mid = good + (bad - good) / 2;
        if violates(&prefix(ops, &answered, mid), &mut remaining) {
            bad = mid;
        } else {
            good = mid;
        }
    }
    let culprit = ops[answered[bad - 1]].index;
    let mut evidence = prefix(ops, &answered, bad);
    evidence.sort_by_key(|op| (op.call, op.index));

    // Shrink: drop chunks of operations, halving the chunk size, as long as what is
    // left still violates and every value still read keeps a write of it. Single
    // operations are retried until none goes: dropping a read can free its write.
    let mut chunk = evidence.len().div_ceil(2).max(1);
    loop {
        let before = evidence.len();
        let mut start = 0;
        while start < evidence.len() && remaining > 0 {
            let end = (start + chunk).min(evidence.len());
            let candidate: Vec<RegisterCall> = evidence[..start]
                .iter()
                .chain(evidence[start..end].iter().filter(|op| op.index == culprit))
                .chain(&evidence[end..])
                .copied()
                .collect();
            if candidate.len() < evidence.len()
                && keeps_sources(&evidence, &candidate)
                && violates(&candidate, &mut remaining)
            {
                evidence = candidate;
            } else {
                start = end;
            }
        }
        if remaining == 0 || (chunk == 1 && evidence.len() == before) {
            break;
        }
        chunk = chunk.div_ceil(2);
    }

    Violation {
        key: key.to_string(),
        culprit,
        evidence: evidence
            .iter()
            .map(|op| (op.index, history[op.index].clone()))
            .collect(),
        shrunk: remaining > 0,
    }
}

/// Whether every value read in `after` that some write in `before` wrote is still
/// written in `after`.
fn keeps_sources(before: &[RegisterCall], after: &[RegisterCall]) -> bool {
    let writes =
        |ops: &[RegisterCall], value| ops.iter().any(|op| op.op == RegisterOp::Write(value));
    after.iter().all(|op| match op.op {
        RegisterOp::Read(value) if value != ABSENT => {
            !writes(before, value) || writes(after, value)
        }
        _ => true,
    })
}
