//! A linearizability checker for the memory API's registers (Wing & Gong's search with Lowe's
//! memoization, as Knossos and Porcupine do), used by the fault tests.
//!
//! Keys are independent registers, so a history is checked key by key (P-compositionality).
//! A register's state is `None` (absent) or `(value, version)`. Operations:
//! - `Put(v)` succeeds and returns the new version;
//! - `Cas { expected, value }` returns the new version or fails with FailedPrecondition;
//! - `Get` returns the state it saw.
//!
//! An operation whose outcome is unknown (a write that timed out or got Unavailable after it
//! may have been committed) has no return time: it may take effect at any point after its call,
//! or never.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};

pub type State = Option<(String, u64)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { value: String },
    Cas { expected: u64, value: String },
    Get,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A write succeeded with this version.
    Written(u64),
    /// A compare-and-set was refused.
    CasFailed,
    /// A read saw this state.
    Read(State),
    /// Unknown: it may or may not have taken effect.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub key: String,
    pub op: Op,
    pub call: u64,
    /// `None` when the outcome is unknown.
    pub ret: Option<u64>,
    pub outcome: Outcome,
}

/// Applies `op` to `state`; returns the next state if `outcome` is possible from `state`.
fn step(state: &State, op: &Op, outcome: &Outcome) -> Option<State> {
    let next_version = state.as_ref().map_or(1, |(_, v)| v + 1);
    match (op, outcome) {
        (Op::Get, Outcome::Read(seen)) => (seen == state).then(|| state.clone()),
        // An operation with an unknown outcome need not be linearized at all, so taking it as
        // one that changed nothing adds only orders to search, never an explanation.
        (Op::Get, Outcome::Unknown) => None,
        (Op::Put { value }, Outcome::Written(v)) => {
            (*v == next_version).then(|| Some((value.clone(), *v)))
        }
        (Op::Put { value }, Outcome::Unknown) => Some(Some((value.clone(), next_version))),
        (Op::Cas { expected, value }, Outcome::Written(v)) => {
            let current = state.as_ref().map_or(0, |(_, v)| *v);
            (current == *expected && *v == next_version).then(|| Some((value.clone(), *v)))
        }
        (Op::Cas { expected, .. }, Outcome::CasFailed) => {
            let current = state.as_ref().map_or(0, |(_, v)| *v);
            (current != *expected).then(|| state.clone())
        }
        (Op::Cas { expected, value }, Outcome::Unknown) => {
            let current = state.as_ref().map_or(0, |(_, v)| *v);
            (current == *expected).then(|| Some((value.clone(), next_version)))
        }
        _ => None,
    }
}

/// Stands for the value of a write whose outcome is unknown and whose value nobody read.
const UNOBSERVED: &str = "\u{0}unobserved";

/// Checks one register's history, starting from `initial`.
///
/// Writes with an unknown outcome make the search blow up (each may or may not have happened,
/// at any point after its call), so those whose value no read saw are made interchangeable:
/// their value is replaced by one placeholder, and within a group of them with the same
/// effect (a put, or a compare-and-set from the same version) only the earliest-called one
/// not yet linearized may go next. This loses no solution: swapping two such operations in a
/// linearization keeps it valid (neither has a return time, the earlier call fits wherever the
/// later one did, and no read tells their values apart).
pub fn check_register(initial: State, events: &[Event]) -> Result<(), String> {
    let observed: HashSet<&str> = events
        .iter()
        .filter_map(|e| match &e.outcome {
            Outcome::Read(Some((v, _))) => Some(v.as_str()),
            _ => None,
        })
        .collect();
    let mut ops: Vec<Event> = events.to_vec();
    ops.sort_by_key(|e| e.call);
    // Group of each interchangeable operation, and the previous member of its group.
    let mut previous_in_group: Vec<Option<usize>> = vec![None; ops.len()];
    let mut last_of_group: BTreeMap<Option<u64>, usize> = BTreeMap::new();
    for (i, e) in ops.iter_mut().enumerate() {
        if e.outcome != Outcome::Unknown {
            continue;
        }
        let group = match &mut e.op {
            Op::Put { value } if !observed.contains(value.as_str()) => {
                *value = UNOBSERVED.into();
                None
            }
            Op::Cas { expected, value } if !observed.contains(value.as_str()) => {
                *value = UNOBSERVED.into();
                Some(*expected)
            }
            _ => continue,
        };
        previous_in_group[i] = last_of_group.insert(group, i);
    }
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let mut done = vec![0u64; words];
    let is_done = |done: &[u64], i: usize| done[i / 64] >> (i % 64) & 1 == 1;
    let known = ops.iter().filter(|e| e.ret.is_some()).count();
    let mut known_done = 0usize;
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    // Depth-first search over linearization orders, with an explicit stack of choices.
    let mut stack: Vec<(usize, State)> = Vec::new(); // (op index chosen, state before it)
    let mut state = initial;
    let mut next_candidate = 0usize;
    let mut first_pending = 0usize;
    loop {
        // Every operation with a known outcome is linearized: the rest are unknown and may
        // never have happened.
        if known_done == known {
            return Ok(());
        }
        while is_done(&done, first_pending) {
            first_pending += 1;
        }
        // The earliest return among pending operations bounds which may go next (operations
        // are sorted by call, and a return comes after its call, so the scan stops early).
        let mut min_ret = u64::MAX;
        for (i, e) in ops.iter().enumerate().skip(first_pending) {
            if e.call > min_ret {
                break;
            }
            if !is_done(&done, i) {
                if let Some(r) = e.ret {
                    min_ret = min_ret.min(r);
                }
            }
        }
        let mut advanced = false;
        let mut i = next_candidate.max(first_pending);
        while i < n && ops[i].call <= min_ret {
            let ready =
                !is_done(&done, i) && previous_in_group[i].is_none_or(|p| is_done(&done, p));
            if ready {
                if let Some(next) = step(&state, &ops[i].op, &ops[i].outcome) {
                    done[i / 64] |= 1 << (i % 64);
                    if seen.insert((done.clone(), next.clone())) {
                        stack.push((i, state.clone()));
                        state = next;
                        known_done += usize::from(ops[i].ret.is_some());
                        next_candidate = 0;
                        advanced = true;
                        break;
                    }
                    done[i / 64] &= !(1 << (i % 64));
                }
            }
            i += 1;
        }
        if advanced {
            continue;
        }
        // Backtrack.
        match stack.pop() {
            Some((i, before)) => {
                done[i / 64] &= !(1 << (i % 64));
                known_done -= usize::from(ops[i].ret.is_some());
                first_pending = first_pending.min(i);
                state = before;
                next_candidate = i + 1;
            }
            None => {
                return Err(format!(
                "not linearizable: no order of these {n} operations explains their results:\n{}",
                ops.iter()
                    .map(|e| format!("  {e:?}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
            }
        }
    }
}

/// Checks a whole history key by key; every key starts absent.
pub fn check(events: &[Event]) -> Result<(), String> {
    let mut by_key: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
    for e in events {
        by_key.entry(&e.key).or_default().push(e.clone());
    }
    for (key, evs) in by_key {
        check_register(None, &evs).map_err(|e| format!("key {key}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
pub fn ev(key: &str, op: Op, call: u64, ret: Option<u64>, outcome: Outcome) -> Event {
    Event {
        key: key.into(),
        op,
        call,
        ret,
        outcome,
    }
}
