//! A linearizability checker for histories of key-value register operations
//! (get, put, delete, compare-and-swap on value or on mod_revision), as the
//! store's clients see them.
//!
//! The algorithm is Wing & Gong's search with Lowe's memoisation, as
//! Porcupine implements it: walk the history's call/return events in time
//! order, try to linearize each pending call against the model, backtrack on
//! a return whose call could not be placed, and remember every
//! (linearized set, model states) pair already explored so no subtree is
//! searched twice. Linearizability is compositional, so the history is split
//! per key and each key is checked alone, which keeps 1,000+ operation
//! histories fast.
//!
//! An operation whose outcome the client never learned (a timeout) returns at
//! "infinity": it may take effect at any point after its call, or never
//! (placing it after everything else is the same as never).
//!
//! This file knows nothing of the store's API; the caller records
//! [`Operation`]s from whatever client it drives.

// Each test binary that includes this file uses only part of it.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap, HashSet};

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    Get {
        key: Vec<u8>,
    },
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Put `new` if the current value equals `expected` (a missing key
    /// never matches, as an etcd value compare).
    CompareAndSwapValue {
        key: Vec<u8>,
        expected: Vec<u8>,
        new: Vec<u8>,
    },
    /// Put `new` if the key's mod_revision equals `expected_mod_revision`
    /// (0 = the key is absent): the API server's resourceVersion CAS.
    CompareAndSwapRevision {
        key: Vec<u8>,
        expected_mod_revision: i64,
        new: Vec<u8>,
    },
}

impl Input {
    pub fn key(&self) -> &[u8] {
        match self {
            Input::Get { key }
            | Input::Put { key, .. }
            | Input::Delete { key }
            | Input::CompareAndSwapValue { key, .. }
            | Input::CompareAndSwapRevision { key, .. } => key,
        }
    }
}

/// What the client was told.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// A get's answer; an absent key reads as `None` with mod_revision 0.
    Read {
        value: Option<Vec<u8>>,
        mod_revision: i64,
    },
    /// A put's answer: the revision it wrote.
    Written { revision: i64 },
    /// A delete's answer: whether the key existed.
    Deleted { deleted: bool },
    /// A compare-and-swap's answer; `revision` is the revision written when
    /// it succeeded (ignored otherwise).
    Swapped { succeeded: bool, revision: i64 },
    /// No answer (timeout, lost connection): it may or may not have happened.
    Unknown,
}

/// One operation of the history. Times come from one clock shared by all
/// clients, in any unit; `return_time` is ignored when the output is
/// [`Output::Unknown`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    pub input: Input,
    pub output: Output,
    pub invoke_time: u64,
    pub return_time: u64,
}

/// Why a history is not linearizable (or could not be decided).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: Vec<u8>,
    /// Indexes (into the checked history) of the longest prefix of this
    /// key's operations that could be linearized, in linearization order.
    pub longest_prefix: Vec<usize>,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "key {:?}: {} (longest linearizable prefix: {:?})",
            String::from_utf8_lossy(&self.key),
            self.message,
            self.longest_prefix
        )
    }
}

/// 5 million search steps per key: a valid, heavily concurrent
/// 2,000-operation history with lost answers needs well under 100,000, and
/// an unoptimised build explores about 100,000 a second, so a pathological
/// search is reported as undecided within about a minute instead of hanging.
pub const CHECK_STEPS_MAX: u64 = 5_000_000;

/// Checks that `history` is linearizable with respect to a key-value store.
pub fn check(history: &[Operation]) -> Result<(), Violation> {
    let mut by_key: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (index, operation) in history.iter().enumerate() {
        // A get whose answer was lost has no effect and was observed by
        // nobody: leaving it out changes nothing and shrinks the search.
        if matches!(
            (&operation.input, &operation.output),
            (Input::Get { .. }, Output::Unknown)
        ) {
            continue;
        }
        by_key.entry(operation.input.key()).or_default().push(index);
    }
    let mut keys: Vec<&[u8]> = by_key.keys().copied().collect();
    keys.sort();
    for key in keys {
        check_key(history, &by_key[key], key)?;
    }
    Ok(())
}

/// One key's register: its value and mod_revision. `None` as the revision
/// means "written by an operation whose answer was lost": any later
/// observation of the revision is accepted and pins it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Register {
    value: Option<Vec<u8>>,
    mod_revision: Option<i64>,
}

impl Register {
    fn absent() -> Self {
        Register {
            value: None,
            mod_revision: Some(0),
        }
    }

    fn written(value: &[u8], revision: Option<i64>) -> Self {
        Register {
            value: Some(value.to_vec()),
            mod_revision: revision,
        }
    }

    /// A new write's revision must exceed the key's current one.
    fn accepts_revision(&self, revision: i64) -> bool {
        self.mod_revision.is_none_or(|current| revision > current)
    }
}

/// The register states `input` with `output` can lead to from `state`
/// (empty if the output is impossible there).
fn step(state: &Register, input: &Input, output: &Output) -> Vec<Register> {
    match (input, output) {
        (
            Input::Get { .. },
            Output::Read {
                value,
                mod_revision,
            },
        ) => {
            let revision_matches = state.mod_revision.is_none_or(|r| r == *mod_revision);
            if state.value == *value && revision_matches {
                vec![Register {
                    value: value.clone(),
                    mod_revision: Some(*mod_revision),
                }]
            } else {
                vec![]
            }
        }
        (Input::Get { .. }, Output::Unknown) => vec![state.clone()],
        (Input::Put { value, .. }, Output::Written { revision }) => {
            if state.accepts_revision(*revision) {
                vec![Register::written(value, Some(*revision))]
            } else {
                vec![]
            }
        }
        (Input::Put { value, .. }, Output::Unknown) => vec![Register::written(value, None)],
        (Input::Delete { .. }, Output::Deleted { deleted }) => {
            if state.value.is_some() == *deleted {
                vec![Register::absent()]
            } else {
                vec![]
            }
        }
        (Input::Delete { .. }, Output::Unknown) => vec![Register::absent()],
        (Input::CompareAndSwapValue { expected, new, .. }, output) => {
            let holds = state.value.as_deref() == Some(expected.as_slice());
            swap(state, new, [holds].into_iter().collect(), output)
        }
        (
            Input::CompareAndSwapRevision {
                expected_mod_revision,
                new,
                ..
            },
            output,
        ) => {
            let possible: BTreeSet<bool> = match state.mod_revision {
                Some(current) => [current == *expected_mod_revision].into_iter().collect(),
                None => [true, false].into_iter().collect(),
            };
            swap(state, new, possible, output)
        }
        _ => vec![],
    }
}

/// Successors of a compare-and-swap whose guard may evaluate to any of
/// `possible`.
fn swap(state: &Register, new: &[u8], possible: BTreeSet<bool>, output: &Output) -> Vec<Register> {
    match output {
        Output::Swapped {
            succeeded: true,
            revision,
        } if possible.contains(&true) && state.accepts_revision(*revision) => {
            vec![Register::written(new, Some(*revision))]
        }
        Output::Swapped {
            succeeded: false, ..
        } if possible.contains(&false) => vec![state.clone()],
        Output::Unknown => possible
            .into_iter()
            .map(|holds| {
                if holds {
                    Register::written(new, None)
                } else {
                    state.clone()
                }
            })
            .collect(),
        _ => vec![],
    }
}

/// A set of possible register states: nondeterminism (lost answers) is
/// handled by tracking every state the model could be in, as Porcupine's
/// nondeterministic models do.
type States = BTreeSet<Register>;

fn step_all(states: &States, operation: &Operation) -> States {
    states
        .iter()
        .flat_map(|state| step(state, &operation.input, &operation.output))
        .collect()
}

/// A call or return event in the doubly linked event list.
#[derive(Clone, Copy, Debug)]
struct Event {
    /// Position in this key's operation list.
    operation: usize,
    is_call: bool,
    /// For a call: the index of its return event.
    matching: usize,
    prev: usize,
    next: usize,
}

/// The events of one key, linked so that linearized operations can be
/// lifted out and put back in O(1). Index 0 is the head sentinel.
struct EventList {
    events: Vec<Event>,
}

const NONE: usize = usize::MAX;

impl EventList {
    fn new(history: &[Operation], operations: &[usize]) -> Self {
        // (time, is_return, operation): a call sorts before a return at the
        // same time, so touching operations count as concurrent.
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(operations.len() * 2);
        for (position, index) in operations.iter().enumerate() {
            let operation = &history[*index];
            let return_time = if operation.output == Output::Unknown {
                u64::MAX
            } else {
                operation.return_time.max(operation.invoke_time)
            };
            order.push((operation.invoke_time, false, position));
            order.push((return_time, true, position));
        }
        order.sort();
        let mut events = vec![Event {
            operation: NONE,
            is_call: false,
            matching: NONE,
            prev: NONE,
            next: NONE,
        }];
        let mut call_of = vec![NONE; operations.len()];
        for (time_index, (_, is_return, position)) in order.into_iter().enumerate() {
            let slot = time_index + 1;
            events.push(Event {
                operation: position,
                is_call: !is_return,
                matching: NONE,
                prev: slot - 1,
                next: NONE,
            });
            events[slot - 1].next = slot;
            if is_return {
                events[call_of[position]].matching = slot;
            } else {
                call_of[position] = slot;
            }
        }
        EventList { events }
    }

    fn first(&self) -> usize {
        self.events[0].next
    }

    fn unlink(&mut self, slot: usize) {
        let Event { prev, next, .. } = self.events[slot];
        self.events[prev].next = next;
        if next != NONE {
            self.events[next].prev = prev;
        }
    }

    fn relink(&mut self, slot: usize) {
        let Event { prev, next, .. } = self.events[slot];
        self.events[prev].next = slot;
        if next != NONE {
            self.events[next].prev = slot;
        }
    }

    /// Removes a call and its return (the operation is linearized).
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.events[call].matching);
    }

    /// Puts back what [`EventList::lift`] removed (in reverse order).
    fn unlift(&mut self, call: usize) {
        self.relink(self.events[call].matching);
        self.relink(call);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(bits: usize) -> Self {
        Bitset(vec![0; bits.div_ceil(64)])
    }

    fn flip(&mut self, bit: usize) {
        self.0[bit / 64] ^= 1 << (bit % 64);
    }
}

/// A read of a value no operation on the key ever wrote cannot be
/// linearized anywhere: say so at once, naming it, instead of searching.
fn check_reads_were_written(
    history: &[Operation],
    operations: &[usize],
    key: &[u8],
) -> Result<(), Violation> {
    let written: HashSet<&[u8]> = operations
        .iter()
        .filter_map(|index| match &history[*index].input {
            Input::Put { value, .. } => Some(value.as_slice()),
            Input::CompareAndSwapValue { new, .. } | Input::CompareAndSwapRevision { new, .. } => {
                Some(new.as_slice())
            }
            _ => None,
        })
        .collect();
    for index in operations {
        if let Output::Read {
            value: Some(value), ..
        } = &history[*index].output
            && !written.contains(value.as_slice())
        {
            return Err(Violation {
                key: key.to_vec(),
                longest_prefix: Vec::new(),
                message: format!(
                    "operation {index} read {:?}, which no operation wrote",
                    String::from_utf8_lossy(value)
                ),
            });
        }
    }
    Ok(())
}

fn check_key(history: &[Operation], operations: &[usize], key: &[u8]) -> Result<(), Violation> {
    check_reads_were_written(history, operations, key)?;
    let mut list = EventList::new(history, operations);
    let mut states: States = [Register::absent()].into_iter().collect();
    let mut linearized = Bitset::new(operations.len());
    let mut seen: HashSet<(Bitset, States)> = HashSet::new();
    // (call event, states before it) for every linearized operation.
    let mut stack: Vec<(usize, States)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut cursor = list.first();
    let mut steps: u64 = 0;
    let violation = |longest: &Vec<usize>, message: String| Violation {
        key: key.to_vec(),
        longest_prefix: longest.clone(),
        message,
    };
    while cursor != NONE {
        steps += 1;
        if steps > CHECK_STEPS_MAX {
            return Err(violation(
                &longest,
                format!("undecided after {CHECK_STEPS_MAX} search steps"),
            ));
        }
        let event = list.events[cursor];
        if event.is_call {
            let operation = &history[operations[event.operation]];
            let next_states = step_all(&states, operation);
            if !next_states.is_empty() {
                let mut next_linearized = linearized.clone();
                next_linearized.flip(event.operation);
                if seen.insert((next_linearized.clone(), next_states.clone())) {
                    stack.push((cursor, std::mem::replace(&mut states, next_states)));
                    linearized = next_linearized;
                    list.lift(cursor);
                    if stack.len() > longest.len() {
                        longest = stack
                            .iter()
                            .map(|(call, _)| operations[list.events[*call].operation])
                            .collect();
                    }
                    cursor = list.first();
                    continue;
                }
            }
            cursor = event.next;
        } else {
            // A return whose call is still pending: that operation had to
            // take effect before now and cannot; undo the last choice.
            let Some((call, previous)) = stack.pop() else {
                return Err(violation(
                    &longest,
                    "no linearization: some operation cannot take effect within its interval"
                        .into(),
                ));
            };
            states = previous;
            linearized.flip(list.events[call].operation);
            list.unlift(call);
            cursor = list.events[call].next;
        }
    }
    Ok(())
}
