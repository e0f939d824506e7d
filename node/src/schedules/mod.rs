//! Schedules: each tenant's schedules and their runs, a state-machine family (`schedules`,
//! tenant-first keys) replicated through Raft. What fires them and runs their targets is the
//! leader's (`service::schedules`); this module holds the records, the commands and how they
//! apply, and when a spec is due next ([`spec`]).
//!
//! The guarantee (docs/design.md, "Schedules"): every due time is recorded once. `Fire` is
//! the commit point: it applies only when the schedule's stored next due time is the one the
//! proposer read, and it records the run and the next due time in the same step, so two
//! leaders (an old one not yet aware it was deposed) cannot both fire one due time: every
//! state machine rejects the second alike. A run's later attempts (`Start`) and its outcome
//! (`Finish`) are conditional the same way, on the run's state and attempt.

mod apply;
pub mod spec;

pub use apply::apply;

use serde::{Deserialize, Serialize};

use crate::error::NexusError;
use crate::store::{keys, Store, StoreError, CF_SCHEDULES};

pub use spec::Spec;

const TAG_SCHEDULE: u8 = b'S';
const TAG_RUN: u8 = b'R';

/// Longest schedule name.
pub const MAX_NAME_BYTES: usize = 128;
/// Most runs a schedule keeps (`keep_runs`).
pub const MAX_KEEP_RUNS: u32 = 1000;
/// Runs kept when a schedule does not say.
pub const DEFAULT_KEEP_RUNS: u32 = 100;
/// Longest output or error kept on a run, bytes (longer ones are cut).
pub const MAX_RUN_TEXT_BYTES: usize = 2048;

/// What a due time does while an earlier run of the schedule is still in progress (running,
/// or waiting for a retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overlap {
    /// Recorded as skipped.
    Skip,
    /// Kept waiting, one at most (a later one while one waits is skipped), and started when
    /// no run is in progress.
    Queue,
    /// Started regardless.
    Allow,
}

impl Overlap {
    pub fn name(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
            Overlap::Allow => "allow",
        }
    }
}

/// How a failed attempt is retried: attempt N+1 starts `backoff(N)` after attempt N failed,
/// `initial_backoff_ms * 2^(N-1)` capped at `max_backoff_ms`, less up to a fifth of it
/// (jitter); after `max_attempts` the run is dead (the dead-letter list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Longest one attempt may take.
    pub timeout_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            timeout_ms: 30_000,
        }
    }
}

impl RetryPolicy {
    /// How long after attempt `attempt` (1-based) failed the next one starts, with a jitter
    /// drawn from `seed` (the same on every node for the same run and attempt).
    pub fn backoff_ms(&self, attempt: u32, seed: u64) -> u64 {
        let exp = attempt.saturating_sub(1).min(32);
        let full = self
            .initial_backoff_ms
            .saturating_mul(1u64 << exp)
            .min(self.max_backoff_ms.max(self.initial_backoff_ms));
        full - (seed % (full / 5 + 1))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub name: String,
    pub description: String,
    pub spec: Spec,
    /// The tool each run calls, with `args` (a JSON object, text; `${secrets.NAME}` resolved
    /// and `${run.id}`, `${run.due_ms}`, `${run.attempt}` filled in at run time).
    pub tool: String,
    pub args: String,
    /// The principal that made the schedule; runs call the tool as it, with its grants as
    /// they are at the run.
    pub owner: String,
    pub overlap: Overlap,
    /// Each due time's start is delayed by up to this much (the same on every node).
    pub jitter_ms: u64,
    /// After downtime, due times up to this old are still run; older ones are skipped.
    pub catch_up_ms: u64,
    pub retry: RetryPolicy,
    pub keep_runs: u32,
    pub paused: bool,
    /// The next due time not yet fired (0: none, a one-shot that fired).
    pub next_due_ms: i64,
    /// Runs in progress: started and not finished, or waiting for a retry.
    pub active: u32,
    /// A due time kept waiting by `Overlap::Queue` (0: none).
    pub queued_due_ms: i64,
    /// Runs recorded (kept ones; trimmed to `keep_runs`).
    pub runs: u32,
    /// Due times fired (started, queued or skipped) since the schedule was made.
    pub fired: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// An attempt was started and has not finished.
    Running,
    /// An attempt failed; the next starts at `retry_at_ms`.
    Waiting,
    Succeeded,
    /// Every attempt failed (the dead-letter list); `Replay` runs it again.
    Dead,
    /// Not run: another was in progress (overlap `skip`), or it was older than the catch-up
    /// window (`skipped` says how many due times the record stands for).
    Skipped,
    /// Kept waiting for the run in progress (overlap `queue`).
    Queued,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Waiting => "waiting",
            RunState::Succeeded => "succeeded",
            RunState::Dead => "dead",
            RunState::Skipped => "skipped",
            RunState::Queued => "queued",
        }
    }

    /// In progress: counted in the schedule's `active`.
    pub fn in_progress(self) -> bool {
        matches!(self, RunState::Running | RunState::Waiting)
    }
}

/// One due time of a schedule, and every attempt at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub schedule: String,
    pub due_ms: i64,
    pub state: RunState,
    /// The attempt running or last run (0: none started).
    pub attempt: u32,
    /// The node whose leader started the attempt.
    pub node: u64,
    /// When the first attempt started, and the current one.
    pub first_started_ms: i64,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// The last attempt's output (JSON text) or error, cut to [`MAX_RUN_TEXT_BYTES`].
    pub output: String,
    pub error: String,
    pub retry_at_ms: i64,
    /// Attempts a leader started and never finished (it died or lost leadership meanwhile).
    pub interrupted: u32,
    /// For a skipped record: how many due times it stands for, the last of them.
    pub skipped: u64,
    pub skipped_through_ms: i64,
}

impl RunRecord {
    /// The run's id: `SCHEDULE/DUE_MS`, the same for every attempt (a target's idempotency
    /// key; the tenant is the caller's).
    pub fn id(&self) -> String {
        run_id(&self.schedule, self.due_ms)
    }

    fn new(schedule: &str, due_ms: i64, state: RunState) -> Self {
        RunRecord {
            schedule: schedule.to_string(),
            due_ms,
            state,
            attempt: 0,
            node: 0,
            first_started_ms: 0,
            started_ms: 0,
            finished_ms: 0,
            output: String::new(),
            error: String::new(),
            retry_at_ms: 0,
            interrupted: 0,
            skipped: 0,
            skipped_through_ms: 0,
        }
    }
}

pub fn run_id(schedule: &str, due_ms: i64) -> String {
    format!("{schedule}/{due_ms}")
}

/// How a finished attempt went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded {
        output: String,
    },
    /// Failed; `retry_at_ms` > 0 schedules the next attempt, 0 makes the run dead.
    Failed {
        error: String,
        retry_at_ms: i64,
    },
}

/// What a finished attempt leaves on its record.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// Succeeded, Waiting (for a retry at `retry_at_ms`) or Dead.
    pub state: RunState,
    pub output: String,
    pub error: String,
    pub retry_at_ms: i64,
}

impl Outcome {
    /// The record's state and texts after this outcome (texts cut to `max` bytes): a
    /// schedule's run and a hook's delivery alike.
    pub fn settle(&self, max: usize) -> Settled {
        match self {
            Outcome::Succeeded { output } => Settled {
                state: RunState::Succeeded,
                output: crate::error::excerpt(output, max),
                error: String::new(),
                retry_at_ms: 0,
            },
            Outcome::Failed { error, retry_at_ms } => Settled {
                state: if *retry_at_ms > 0 {
                    RunState::Waiting
                } else {
                    RunState::Dead
                },
                output: String::new(),
                error: crate::error::excerpt(error, max),
                retry_at_ms: *retry_at_ms,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ScheduleOp {
    /// Makes or replaces a schedule (a replacement keeps its creation time, its runs and
    /// what is in progress; the proposer computed `next_due_ms` from the new spec).
    Put { schedule: ScheduleRecord },
    /// Removes a schedule and its runs (an attempt in progress finishes unrecorded).
    Delete { name: String },
    /// Pauses (no due time fires) or resumes from `next_due_ms` (the proposer's next due
    /// time after now: the paused ones are not caught up).
    SetPaused {
        name: String,
        paused: bool,
        next_due_ms: i64,
        at_ms: i64,
    },
    /// The leader fires the stored next due time `expected_ms` (applies only if it still is
    /// the next): `skipped` due times from it on are recorded as one skipped record (older
    /// than the catch-up window), then `due_ms` (if any) is started, queued or skipped by
    /// the overlap policy, and `next_due_ms` is the next due time after them all.
    Fire {
        name: String,
        expected_ms: i64,
        skipped: u64,
        skipped_through_ms: i64,
        due_ms: Option<i64>,
        next_due_ms: i64,
        node: u64,
        at_ms: i64,
    },
    /// Starts attempt `attempt` of the run at `due_ms`, which must be in state `from` at
    /// attempt `from_attempt`: a retry or a replay (Waiting), a leader's attempt that never
    /// finished (Running), a queued due time (Queued).
    Start {
        name: String,
        due_ms: i64,
        from: RunState,
        from_attempt: u32,
        attempt: u32,
        node: u64,
        at_ms: i64,
    },
    /// A dead run is made to wait for a new first attempt, at once (a person's replay).
    Replay {
        name: String,
        due_ms: i64,
        at_ms: i64,
    },
    /// Records attempt `attempt`'s outcome (applies only while that attempt is running).
    Finish {
        name: String,
        due_ms: i64,
        attempt: u32,
        outcome: Outcome,
        at_ms: i64,
    },
}

impl ScheduleOp {
    pub fn name(&self) -> &'static str {
        match self {
            ScheduleOp::Put { .. } => "schedules.put",
            ScheduleOp::Delete { .. } => "schedules.delete",
            ScheduleOp::SetPaused { .. } => "schedules.pause",
            ScheduleOp::Fire { .. } => "schedules.fire",
            ScheduleOp::Start { .. } => "schedules.start",
            ScheduleOp::Finish { .. } => "schedules.finish",
            ScheduleOp::Replay { .. } => "schedules.replay",
        }
    }

    /// Made by the leader itself (fires, attempts, outcomes), never forwarded by a member
    /// and outside the tenant's quota: the tenant made the schedule within it, and its runs
    /// are bounded by `keep_runs`.
    pub fn is_the_leaders(&self) -> bool {
        matches!(
            self,
            ScheduleOp::Fire { .. } | ScheduleOp::Start { .. } | ScheduleOp::Finish { .. }
        )
    }

    pub fn approx_size(&self) -> usize {
        match self {
            ScheduleOp::Put { schedule } => {
                schedule.name.len()
                    + schedule.description.len()
                    + schedule.spec.approx_size()
                    + schedule.tool.len()
                    + schedule.args.len()
                    + schedule.owner.len()
                    + 128
            }
            ScheduleOp::Delete { name } => name.len() + 16,
            ScheduleOp::SetPaused { name, .. } => name.len() + 32,
            ScheduleOp::Fire { name, .. } => name.len() + 64,
            ScheduleOp::Start { name, .. } | ScheduleOp::Replay { name, .. } => name.len() + 48,
            ScheduleOp::Finish { name, outcome, .. } => {
                name.len()
                    + 48
                    + match outcome {
                        Outcome::Succeeded { output } => output.len(),
                        Outcome::Failed { error, .. } => error.len(),
                    }
            }
        }
    }

    /// What the op acts on, for the audit log.
    pub fn resource(&self) -> String {
        match self {
            ScheduleOp::Put { schedule } => {
                format!("schedule/{} -> {}", schedule.name, schedule.tool)
            }
            ScheduleOp::Delete { name } => format!("schedule/{name}"),
            ScheduleOp::SetPaused { name, paused, .. } => {
                format!(
                    "schedule/{name} {}",
                    if *paused { "paused" } else { "resumed" }
                )
            }
            ScheduleOp::Fire {
                name, expected_ms, ..
            } => format!("schedule/{name}/{expected_ms}"),
            ScheduleOp::Replay { name, due_ms, .. } => format!("schedule/{name}/{due_ms} replayed"),
            ScheduleOp::Start {
                name,
                due_ms,
                attempt,
                ..
            }
            | ScheduleOp::Finish {
                name,
                due_ms,
                attempt,
                ..
            } => format!("schedule/{name}/{due_ms} attempt {attempt}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ScheduleReply {
    Schedule(ScheduleRecord),
    Deleted {
        runs: u64,
    },
    /// What a `Fire` did with its due time: the run as recorded (started, queued or skipped),
    /// None when it only skipped old ones.
    Fired {
        run: Option<RunRecord>,
    },
    Run(RunRecord),
}

fn schedule_key(tenant: &str, name: &str) -> Vec<u8> {
    keys::tenant_tagged(tenant, TAG_SCHEDULE, name.as_bytes())
}

fn runs_prefix(tenant: &str, name: &str) -> Vec<u8> {
    let mut rest = Vec::with_capacity(name.len() + 1);
    rest.extend_from_slice(name.as_bytes());
    // Names hold no NUL: the name ends here, so one schedule's prefix is not another's.
    rest.push(0);
    keys::tenant_tagged(tenant, TAG_RUN, &rest)
}

/// Runs sort by due time: the time is written with its sign bit flipped, big-endian.
fn run_key(tenant: &str, name: &str, due_ms: i64) -> Vec<u8> {
    let mut k = runs_prefix(tenant, name);
    k.extend_from_slice(&((due_ms as u64) ^ (1 << 63)).to_be_bytes());
    k
}

/// A schedule of `tenant`.
pub fn read(store: &Store, tenant: &str, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
    store.get_decoded(CF_SCHEDULES, &schedule_key(tenant, name))
}

/// Every schedule of `tenant`, by name.
pub fn list(store: &Store, tenant: &str) -> Result<Vec<ScheduleRecord>, StoreError> {
    let prefix = keys::tenant_tagged(tenant, TAG_SCHEDULE, &[]);
    store
        .scan_prefix(CF_SCHEDULES, &prefix, &prefix, usize::MAX)?
        .iter()
        .map(|(_, v)| crate::store::codec::decode(v).map_err(StoreError::from))
        .collect()
}

/// Every schedule of every tenant (the leader's scheduler): (tenant, schedule).
pub fn all(store: &Store) -> Result<Vec<(String, ScheduleRecord)>, StoreError> {
    let mut out = Vec::new();
    store.scan_all(CF_SCHEDULES, |k, v| {
        let Some(tenant) = keys::parse_tenant(k) else {
            return Ok(());
        };
        if k.get(keys::tenant_prefix(&tenant).len()) == Some(&TAG_SCHEDULE) {
            out.push((tenant, crate::store::codec::decode(v)?));
        }
        Ok(())
    })?;
    Ok(out)
}

/// A schedule's runs, newest first, at most `limit`.
pub fn runs(
    store: &Store,
    tenant: &str,
    name: &str,
    limit: usize,
) -> Result<Vec<RunRecord>, StoreError> {
    let prefix = runs_prefix(tenant, name);
    let mut all: Vec<RunRecord> = store
        .scan_prefix(CF_SCHEDULES, &prefix, &prefix, usize::MAX)?
        .iter()
        .map(|(_, v)| crate::store::codec::decode(v).map_err(StoreError::from))
        .collect::<Result<_, _>>()?;
    all.reverse();
    all.truncate(limit);
    Ok(all)
}

/// One run of a schedule.
pub fn run(
    store: &Store,
    tenant: &str,
    name: &str,
    due_ms: i64,
) -> Result<Option<RunRecord>, StoreError> {
    store.get_decoded(CF_SCHEDULES, &run_key(tenant, name, due_ms))
}

/// A schedule name: 1 to [`MAX_NAME_BYTES`] of `a-z`, `0-9`, `-`, `_` and `.`, starting with
/// a letter or digit.
pub fn validate_name(field: &str, name: &str) -> Result<(), NexusError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(NexusError::invalid(
            field,
            format!(
                "{:?} is not a schedule name: 1 to {MAX_NAME_BYTES} of a-z, 0-9, '-', '_' and '.', starting with a letter or digit",
                crate::error::excerpt(name, 64)
            ),
        ))
    }
}

#[cfg(test)]
mod tests;
