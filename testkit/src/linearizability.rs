//! A linearizability checker for histories of key-value operations.
//!
//! A history records, for every client request, when it was invoked (`call`), when its
//! answer arrived (`ret`) and what the answer was. The history is *linearizable* if each
//! operation can be given one instant between its call and its return such that, taken
//! in that order, the answers are those of a single sequential map that starts empty. A
//! request whose answer never came ([`KvOutcome::Unknown`]: a timeout, a crash) may take
//! effect at any instant after its call, or never; for a compare-and-set that means
//! "swapped at some instant after its call where the key held the expected value, or
//! never" (failing changes nothing, which is the same as never).
//!
//! The operations: get, put, delete, compare-and-set on the value
//! ([`KvOp::Cas`]: `expected: None` wants the key absent; answered swapped or not),
//! listing ([`KvOp::List`]: every key under a prefix, with its value), and the atomic
//! multi-key transaction ([`KvOp::Txn`]: compares on values, then one branch of writes).
//!
//! # How it decides
//! - **Per key.** A map is linearizable iff the history of each of its keys, a single
//!   register, is (P-compositionality, Herlihy & Wing), so keys are searched one by one.
//!   That holds for operations on one key each; a compare-and-set is one.
//! - **Listings are projected onto keys.** A listing reads many keys at one instant,
//!   which no per-key search can see. It is checked as a read, on every key of the
//!   history under its prefix, of the value it returned for that key (absent if it did
//!   not return the key). That is sound (a linearizable history passes: the listing's
//!   instant serves every key) but weaker than a joint check: each key's read may be
//!   placed at a different instant, so a listing that mixes two states that never
//!   coexisted inside its interval is accepted (a test shows one). A joint search over
//!   all keys of a prefix would lose the per-key decomposition, and with it the bound
//!   on the search that lets thousands of simulator seeds be checked.
//! - **Transactions are projected onto keys** too, for the same reason: a transaction
//!   over several keys couples their histories, and a joint search over them would
//!   lose the decomposition. On each key it names, an answered transaction is the
//!   operation it amounts to there: one that succeeded is a compare-and-set on a key it
//!   compared and wrote, a read of the compared value on a key it only compared, a
//!   write on a key it only wrote; one that failed is a write on a key its failure
//!   branch wrote, and a failed compare-and-set on its key if it had a single compare.
//!   An unanswered one is, on each key a branch writes, an unknown compare-and-set (the
//!   success branch, on a compared key) or an unknown write. That is sound (the
//!   transaction's instant serves every key) and catches a transaction applied in part,
//!   or applied against a compare that did not hold, wherever one key shows it; it
//!   cannot see what only the keys together show (a failed transaction with several
//!   compares where all of them held; a torn transaction seen by a listing). A
//!   transaction that writes one key in both branches is refused as malformed: unanswered,
//!   it would be two alternative writes of that key, which no single operation is.
//! - **Per register**, the Wing–Gong search with Lowe's just-in-time linearization, as
//!   Porcupine does it: walk the call and return events in time order; an operation may
//!   come next in the linearization if its call precedes the earliest pending return;
//!   backtrack when the walk reaches a return. Explored configurations (the set of
//!   linearized operations and the register's value) are remembered and pruned.
//! - **Unknown operations.** An unknown write or compare-and-set has no return event,
//!   so it can be linearized anywhere after its call; the search succeeds once every
//!   *answered* operation is linearized, leaving the remaining unknown ones out. The
//!   search linearizes an unknown operation only when an answered operation that may
//!   come next cannot be explained by the current value and the unknown one's value
//!   explains it, or starts an unknown compare-and-set that may (see `Move` for why
//!   nothing is lost). Unknown operations with the same effect are interchangeable:
//!   the earliest-called is used first. A configuration is also pruned when an explored
//!   one had the same answered operations and value with a subset of its unknown
//!   operations: having used fewer leaves more options. This keeps many timeouts from
//!   blowing the search up. Unknown reads and listings constrain nothing and are
//!   dropped.
//! - **Bounded.** The search of a key stops after a step budget and the result is then
//!   [`CheckError::Inconclusive`], never a success.
//! - **Evidence.** A violation is explained by the shortest prefix of the key's history
//!   (cut at a return) that already has no linearization, shrunk to a small set of
//!   operations that still has none. A write whose value a kept read (or compare-and-set)
//!   expects is kept with it, so the evidence says where the value came from.
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
    Get {
        key: String,
    },
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Compare-and-set on the value: writes `new` if the key holds `expected` (`None`:
    /// if the key is absent), else changes nothing.
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
    /// Reads every key that begins with `prefix`, with its value, at one instant.
    List {
        prefix: String,
    },
    /// If every key of `compares` holds its value (`None`: is absent), the writes of
    /// `success`, else those of `failure`, at one instant; a write is a value or `None`
    /// (a delete).
    Txn {
        compares: Vec<(String, Option<String>)>,
        success: Vec<(String, Option<String>)>,
        failure: Vec<(String, Option<String>)>,
    },
}

impl KvOp {
    /// The one key the request reads or writes; `None` for a listing (many keys).
    pub fn key(&self) -> Option<&str> {
        match self {
            KvOp::Get { key }
            | KvOp::Put { key, .. }
            | KvOp::Delete { key }
            | KvOp::Cas { key, .. } => Some(key),
            KvOp::List { .. } | KvOp::Txn { .. } => None,
        }
    }

    /// Every key the request names (a listing's keys are only known from its answer).
    fn keys(&self) -> Vec<&str> {
        match self {
            KvOp::Txn {
                compares,
                success,
                failure,
            } => {
                let mut keys: Vec<&str> = [compares, success, failure]
                    .into_iter()
                    .flatten()
                    .map(|(key, _)| key.as_str())
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                keys
            }
            op => op.key().into_iter().collect(),
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
    /// Whether the compare-and-set found its expected value (and wrote).
    Cas(bool),
    /// The keys a listing found, with their values, in any order.
    List(Vec<(String, String)>),
    /// Whether the transaction's compares all held (its success branch was applied).
    Txn(bool),
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
            KvOp::Cas { expected, new, .. } => match expected {
                Some(expected) => write!(f, "cas {expected:?} -> {new:?}")?,
                None => write!(f, "cas absent -> {new:?}")?,
            },
            KvOp::List { prefix } => write!(f, "list {prefix:?}")?,
            KvOp::Txn {
                compares,
                success,
                failure,
            } => {
                let show = |pairs: &[(String, Option<String>)]| {
                    let shown: Vec<String> = pairs
                        .iter()
                        .map(|(key, value)| match value {
                            Some(value) => format!("{key}={value:?}"),
                            None => format!("{key}=absent"),
                        })
                        .collect();
                    format!("[{}]", shown.join(" "))
                };
                write!(
                    f,
                    "txn if {} then {} else {}",
                    show(compares),
                    show(success),
                    show(failure)
                )?
            }
        }
        match &self.outcome {
            KvOutcome::Get(Some(value)) => write!(f, " -> {value:?}"),
            KvOutcome::Get(None) => write!(f, " -> absent"),
            KvOutcome::Put | KvOutcome::Delete => write!(f, " -> ok"),
            KvOutcome::Cas(true) => write!(f, " -> swapped"),
            KvOutcome::Cas(false) => write!(f, " -> compare failed"),
            KvOutcome::List(found) => write!(f, " -> {found:?}"),
            KvOutcome::Txn(true) => write!(f, " -> succeeded"),
            KvOutcome::Txn(false) => write!(f, " -> failed"),
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
    // Every key the history names: a listing is a read of each of them under its prefix
    // (absent if the listing did not return it).
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        validate(op).map_err(|reason| CheckError::InvalidOperation { index, reason })?;
        for key in op.op.keys() {
            by_key.entry(key).or_default();
        }
        if let KvOutcome::List(found) = &op.outcome {
            for (key, _) in found {
                by_key.entry(key).or_default();
            }
        }
    }
    for (index, op) in history.iter().enumerate() {
        match (&op.op, &op.outcome) {
            // An unanswered listing constrains nothing.
            (KvOp::List { .. }, KvOutcome::Unknown) => {}
            (KvOp::List { prefix }, _) => {
                for (key, indices) in by_key.iter_mut() {
                    if key.starts_with(prefix.as_str()) {
                        indices.push(index);
                    }
                }
            }
            (op, _) => {
                for key in op.keys() {
                    if let Some(indices) = by_key.get_mut(key) {
                        indices.push(index);
                    }
                }
            }
        }
    }

    let mut stats = CheckStats {
        keys: by_key.len(),
        ..CheckStats::default()
    };
    let mut inconclusive = None;
    for (key, indices) in by_key {
        let register = to_register_history(history, key, &indices);
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
            | (KvOp::Cas { .. }, KvOutcome::Cas(_))
            | (KvOp::List { .. }, KvOutcome::List(_))
            | (KvOp::Txn { .. }, KvOutcome::Txn(_))
    );
    if !matches {
        return Err("its outcome is not of the kind of its request");
    }
    if op.outcome != KvOutcome::Unknown && op.ret < op.call {
        return Err("it returns before it is called");
    }
    if let (KvOp::List { prefix }, KvOutcome::List(found)) = (&op.op, &op.outcome) {
        if found
            .iter()
            .any(|(key, _)| !key.starts_with(prefix.as_str()))
        {
            return Err("a listing returned a key outside its prefix");
        }
        if names_a_key_twice(found) {
            return Err("a listing returned a key twice");
        }
    }
    if let KvOp::Txn {
        compares,
        success,
        failure,
    } = &op.op
    {
        if names_a_key_twice(compares) {
            return Err("a transaction compares a key twice");
        }
        if names_a_key_twice(success) || names_a_key_twice(failure) {
            return Err("a transaction's branch writes a key twice");
        }
        if success
            .iter()
            .any(|(key, _)| failure.iter().any(|(other, _)| other == key))
        {
            return Err("a transaction writes a key in both branches (not supported)");
        }
    }
    Ok(())
}

/// Whether some key appears twice among `pairs` (key first).
fn names_a_key_twice<V>(pairs: &[(String, V)]) -> bool {
    let mut keys: Vec<&str> = pairs.iter().map(|(key, _)| key.as_str()).collect();
    keys.sort_unstable();
    keys.windows(2).any(|pair| pair[0] == pair[1])
}

/// A register value, interned per key; [`ABSENT`] is the absent key.
type Value = usize;
const ABSENT: Value = 0;

/// An operation on one key's register. A put or delete is a write (of [`ABSENT`] for a
/// delete), a get (or a listing, for each key under its prefix) a read of the value it
/// returned, a compare-and-set that swapped a [`RegisterOp::Cas`], one that did not a
/// [`RegisterOp::CasFailed`]. An unanswered compare-and-set is a [`RegisterOp::Cas`]
/// that may also never take effect, which is what failing would amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum RegisterOp {
    Read(Value),
    Write(Value),
    Cas {
        expected: Value,
        new: Value,
    },
    /// `new` changes nothing; it is kept for the evidence (see [`keeps_sources`]).
    CasFailed {
        expected: Value,
        new: Value,
    },
}

impl RegisterOp {
    /// The value after this operation, from `value`; `None` if its answer cannot be
    /// given from `value`.
    fn step(self, value: Value) -> Option<Value> {
        match self {
            RegisterOp::Read(seen) => (seen == value).then_some(value),
            RegisterOp::Write(written) => Some(written),
            RegisterOp::Cas { expected, new } => (expected == value).then_some(new),
            RegisterOp::CasFailed { expected, .. } => (expected != value).then_some(value),
        }
    }

    fn accepts(self, value: Value) -> bool {
        self.step(value).is_some()
    }

    /// Whether it never changes the value (a read, a failed compare-and-set).
    fn preserves(self) -> bool {
        match self {
            RegisterOp::Read(_) | RegisterOp::CasFailed { .. } => true,
            RegisterOp::Write(_) | RegisterOp::Cas { .. } => false,
        }
    }

    /// The values it needs to find to be explained (for the evidence).
    fn needs(self) -> Option<Value> {
        match self {
            RegisterOp::Read(seen) => Some(seen),
            RegisterOp::Cas { expected, .. } => Some(expected),
            RegisterOp::Write(_) | RegisterOp::CasFailed { .. } => None,
        }
    }

    /// The value it writes, or would have written (a failed compare-and-set: when a
    /// value is read that only such a one names, the evidence shows it).
    fn names(self) -> Option<Value> {
        match self {
            RegisterOp::Write(value)
            | RegisterOp::Cas { new: value, .. }
            | RegisterOp::CasFailed { new: value, .. } => Some(value),
            RegisterOp::Read(_) => None,
        }
    }
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

/// The register history of `key`: values interned, unanswered reads dropped.
fn to_register_history<'a>(
    history: &'a [Operation],
    key: &str,
    indices: &[usize],
) -> Vec<RegisterCall> {
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
            (KvOp::List { .. }, KvOutcome::List(found)) => {
                let seen = found
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.as_str());
                RegisterOp::Read(intern(seen))
            }
            (KvOp::Get { .. } | KvOp::List { .. }, _) => continue,
            (KvOp::Put { value, .. }, _) => RegisterOp::Write(intern(Some(value))),
            (KvOp::Delete { .. }, _) => RegisterOp::Write(ABSENT),
            (KvOp::Cas { expected, new, .. }, KvOutcome::Cas(false)) => RegisterOp::CasFailed {
                expected: intern(expected.as_deref()),
                new: intern(Some(new)),
            },
            (KvOp::Cas { expected, new, .. }, _) => RegisterOp::Cas {
                expected: intern(expected.as_deref()),
                new: intern(Some(new)),
            },
            (
                KvOp::Txn {
                    compares,
                    success,
                    failure,
                },
                outcome,
            ) => {
                // What the transaction amounts to on this key (the module's doc).
                let on = |pairs: &'a [(String, Option<String>)]| {
                    pairs
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, value)| value.as_deref())
                };
                let (compared, then, otherwise) = (on(compares), on(success), on(failure));
                match (outcome, compared, then, otherwise) {
                    (KvOutcome::Txn(true), Some(expected), Some(new), _) => RegisterOp::Cas {
                        expected: intern(expected),
                        new: intern(new),
                    },
                    (KvOutcome::Txn(true), Some(seen), None, _) => RegisterOp::Read(intern(seen)),
                    (KvOutcome::Txn(true), None, Some(new), _) => RegisterOp::Write(intern(new)),
                    (KvOutcome::Txn(false), _, _, Some(new)) => RegisterOp::Write(intern(new)),
                    (KvOutcome::Txn(false), Some(expected), then, None) if compares.len() == 1 => {
                        RegisterOp::CasFailed {
                            expected: intern(expected),
                            new: intern(then.unwrap_or(expected)),
                        }
                    }
                    (KvOutcome::Txn(_), _, _, _) => continue,
                    (_, Some(expected), Some(new), _) => RegisterOp::Cas {
                        expected: intern(expected),
                        new: intern(new),
                    },
                    (_, _, Some(new), _) | (_, _, None, Some(new)) => {
                        RegisterOp::Write(intern(new))
                    }
                    (_, _, None, None) => continue,
                }
            }
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

/// One step of a linearization: an answered operation, or an unknown one.
///
/// An unknown operation is linearized only where it is needed: when some answered
/// operation that may come next cannot give its answer from the current value, and the
/// unknown operation's value is one it (or an unknown compare-and-set expecting it) can
/// start from. That loses no linearization: in one that uses the fewest unknown
/// operations, an unknown operation followed by an operation that accepts the value
/// before it could be moved after that operation or dropped (a write overwrites it; a
/// successful compare-and-set writes the same either way; a read or a failed
/// compare-and-set can go first instead, as unknown operations have no return to keep
/// them early), so every run of unknown operations ends just before an answered one
/// that needs it.
#[derive(Clone, Copy)]
struct Move {
    op: usize,
    /// An answered read or failed compare-and-set that the current value explains,
    /// made without considering alternatives: it changes nothing and its call precedes
    /// every pending return, so it can be moved to the front of any linearization from
    /// here; if none follows it, none exists from here at all.
    forced: bool,
    /// For an unknown operation: its place in [`Search::unknowns`], where the search
    /// for alternatives resumes.
    unknown_at: Option<usize>,
}

/// The state of the depth-first search over one register history.
struct Search<'a> {
    ops: &'a [RegisterCall],
    slots: Vec<Slot>,
    list: EventList,
    memo: Memo,
    answered: Bits,
    unknown: Bits,
    /// The unknown operations, in call order.
    unknowns: Vec<usize>,
    /// For each unknown operation, the one called last before it with the same effect.
    /// Neither ever returns, so they are interchangeable and the earlier is always
    /// linearized first: the search never tries a later one while an earlier is unused.
    previous_alike: Vec<Option<usize>>,
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
        let list = EventList::new(ops);
        let mut unknowns: Vec<usize> = (0..ops.len()).filter(|&op| ops[op].ret.is_none()).collect();
        unknowns.sort_by_key(|&op| list.call_node[op]);
        let mut previous_alike = vec![None; ops.len()];
        let mut last_alike: HashMap<RegisterOp, usize> = HashMap::new();
        for &op in &unknowns {
            previous_alike[op] = last_alike.insert(ops[op].op, op);
        }
        let mut search = Search {
            ops,
            slots,
            list,
            memo: Memo::default(),
            answered: Bits::new(answered_total),
            unknown: Bits::new(unknown_total),
            unknowns,
            previous_alike,
            answered_total,
            answered_done: 0,
            value: ABSENT,
            linearized: Vec::new(),
        };
        search.memo.visit(&search.answered, &search.unknown, ABSENT);
        search
    }

    fn is_linearized(&self, op: usize) -> bool {
        match self.slots[op] {
            Slot::Answered(bit) => self.answered.get(bit),
            Slot::Unknown(bit) => self.unknown.get(bit),
        }
    }

    fn flip(&mut self, op: usize) {
        match self.slots[op] {
            Slot::Answered(bit) => self.answered.flip(bit),
            Slot::Unknown(bit) => self.unknown.flip(bit),
        }
    }

    /// Makes the move unless its operation cannot answer from the current value or an
    /// explored configuration covers the one it leads to.
    fn try_move(&mut self, mv: Move) -> bool {
        let Some(after) = self.ops[mv.op].op.step(self.value) else {
            return false;
        };
        self.flip(mv.op);
        if !self.memo.visit(&self.answered, &self.unknown, after) {
            self.flip(mv.op);
            return false;
        }
        self.linearized.push((mv, self.value));
        self.value = after;
        if mv.unknown_at.is_none() {
            self.answered_done += 1;
            self.list.lift(mv.op);
        }
        true
    }

    /// The answered operations that may come next: those called before the earliest
    /// pending return.
    fn candidates(&self) -> Vec<usize> {
        let mut ops = Vec::new();
        let mut node = self.list.next[HEAD];
        while let Some(&(op, true)) = self.list.event.get(node) {
            ops.push(op);
            node = self.list.next[node];
        }
        ops
    }

    /// A candidate that the current value explains and that changes nothing, if any.
    fn preserving_candidate(&self) -> Option<usize> {
        self.candidates().into_iter().find(|&op| {
            let op = self.ops[op].op;
            op.preserves() && op.accepts(self.value)
        })
    }

    /// The first unknown operation from `unknowns[from]` on that is worth linearizing
    /// next (see [`Move`]); `horizon` is the earliest pending return's node.
    fn next_unknown(&self, horizon: usize, from: usize) -> Option<usize> {
        let value = self.value;
        let candidates = self.candidates();
        if candidates.iter().all(|&op| self.ops[op].op.accepts(value)) {
            return None;
        }
        let callable = |&&op: &&usize| self.list.call_node[op] < horizon;
        let useful = |after: Value| {
            candidates.iter().any(|&op| {
                let op = self.ops[op].op;
                !op.accepts(value) && op.accepts(after)
            }) || self.unknowns.iter().take_while(callable).any(|&op| {
                !self.is_linearized(op)
                    && matches!(self.ops[op].op, RegisterOp::Cas { expected, .. } if expected == after)
            })
        };
        (from..self.unknowns.len())
            .take_while(|&at| self.list.call_node[self.unknowns[at]] < horizon)
            .find(|&at| {
                let op = self.unknowns[at];
                if self.is_linearized(op)
                    || self.previous_alike[op].is_some_and(|alike| !self.is_linearized(alike))
                {
                    return false;
                }
                match self.ops[op].op.step(value) {
                    Some(after) => after != value && useful(after),
                    None => false,
                }
            })
    }

    /// Takes back moves up to the last one that has alternatives; returns where to
    /// resume: the node of the walk over answered operations and the place in
    /// `unknowns`; `None` when the root is exhausted.
    fn backtrack(&mut self) -> Option<(usize, usize)> {
        loop {
            let (mv, before) = self.linearized.pop()?;
            self.flip(mv.op);
            self.value = before;
            match mv.unknown_at {
                Some(at) => {
                    let horizon = self.list.first_return_from(self.list.next[HEAD]);
                    return Some((horizon, at + 1));
                }
                None => {
                    self.answered_done -= 1;
                    self.list.unlift(mv.op);
                    if !mv.forced {
                        return Some((self.list.next[self.list.call_node[mv.op]], 0));
                    }
                }
            }
        }
    }

    /// Runs for at most `budget` steps; returns the verdict and the steps used.
    fn run(&mut self, budget: u64) -> (Verdict, u64) {
        let mut node = self.list.next[HEAD];
        // Whether `node` is the start of a configuration just reached.
        let mut fresh = true;
        // Where the turn of unknown operations resumes, once the answered ones were
        // tried.
        let mut unknown_from = 0;
        let mut steps = 0;
        loop {
            if self.answered_done == self.answered_total {
                return (Verdict::Linearizable, steps);
            }
            if steps >= budget {
                return (Verdict::Exhausted, steps);
            }
            steps += 1;
            let mut moved = None;
            if std::mem::take(&mut fresh) {
                if let Some(op) = self.preserving_candidate() {
                    // Covered by an explored configuration that failed: so does this one.
                    moved = Some(self.try_move(Move {
                        op,
                        forced: true,
                        unknown_at: None,
                    }));
                }
            }
            if moved.is_none() {
                // A call before the first pending return may be linearized next;
                // reaching a return (or the end) means its operation had to come before
                // all that is left: then an unknown operation may have to come first.
                moved = match self.list.event.get(node) {
                    Some(&(op, true)) => {
                        let made = self.try_move(Move {
                            op,
                            forced: false,
                            unknown_at: None,
                        });
                        if !made {
                            node = self.list.next[node];
                            continue;
                        }
                        Some(true)
                    }
                    _ => match self.next_unknown(node, unknown_from) {
                        Some(at) => {
                            unknown_from = at + 1;
                            let made = self.try_move(Move {
                                op: self.unknowns[at],
                                forced: false,
                                unknown_at: Some(at),
                            });
                            if !made {
                                continue;
                            }
                            Some(true)
                        }
                        None => Some(false),
                    },
                };
            }
            if moved == Some(true) {
                node = self.list.next[HEAD];
                fresh = true;
                unknown_from = 0;
            } else {
                match self.backtrack() {
                    Some((resume, from)) => (node, unknown_from) = (resume, from),
                    None => return (Verdict::Violation, steps),
                }
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
        } else if !op.op.preserves() {
            // Not yet answered: it may or may not have taken effect.
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

/// Whether every value read (or expected) in `after` that some write in `before` wrote
/// (or a failed compare-and-set would have written) is still named in `after`.
fn keeps_sources(before: &[RegisterCall], after: &[RegisterCall]) -> bool {
    let writes = |ops: &[RegisterCall], value| ops.iter().any(|op| op.op.names() == Some(value));
    after.iter().all(|op| match op.op.needs() {
        Some(value) if value != ABSENT => !writes(before, value) || writes(after, value),
        _ => true,
    })
}
