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

pub mod spec;

use serde::{Deserialize, Serialize};

use crate::error::NexusError;
use crate::store::{keys, ApplyCtx, Store, StoreError, CF_SCHEDULES};

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

fn not_found(name: &str) -> NexusError {
    NexusError::NotFound(format!("schedule {name} not found"))
}

fn stale(what: String) -> NexusError {
    NexusError::precondition("due_ms", what)
}

pub fn apply(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    op: &ScheduleOp,
) -> Result<Result<ScheduleReply, NexusError>, StoreError> {
    match op {
        ScheduleOp::Put { schedule } => {
            let key = schedule_key(tenant, &schedule.name);
            let mut s = schedule.clone();
            if let Some(old) = ctx.get_decoded::<ScheduleRecord>(CF_SCHEDULES, &key)? {
                s.created_at_ms = old.created_at_ms;
                s.active = old.active;
                s.queued_due_ms = old.queued_due_ms;
                s.runs = old.runs;
                s.fired = old.fired;
            }
            ctx.put(CF_SCHEDULES, &key, &s);
            Ok(Ok(ScheduleReply::Schedule(s)))
        }
        ScheduleOp::Delete { name } => {
            let key = schedule_key(tenant, name);
            let Some(s) = ctx.get_decoded::<ScheduleRecord>(CF_SCHEDULES, &key)? else {
                return Ok(Err(not_found(name)));
            };
            ctx.delete(CF_SCHEDULES, &key);
            ctx.delete_prefix(CF_SCHEDULES, &runs_prefix(tenant, name));
            Ok(Ok(ScheduleReply::Deleted {
                runs: u64::from(s.runs),
            }))
        }
        ScheduleOp::SetPaused {
            name,
            paused,
            next_due_ms,
            at_ms,
        } => {
            let key = schedule_key(tenant, name);
            let Some(mut s) = ctx.get_decoded::<ScheduleRecord>(CF_SCHEDULES, &key)? else {
                return Ok(Err(not_found(name)));
            };
            if s.paused != *paused {
                s.paused = *paused;
                if !paused {
                    s.next_due_ms = *next_due_ms;
                }
                s.updated_at_ms = *at_ms;
                ctx.put(CF_SCHEDULES, &key, &s);
            }
            Ok(Ok(ScheduleReply::Schedule(s)))
        }
        ScheduleOp::Fire {
            name,
            expected_ms,
            skipped,
            skipped_through_ms,
            due_ms,
            next_due_ms,
            node,
            at_ms,
        } => {
            let key = schedule_key(tenant, name);
            let Some(mut s) = ctx.get_decoded::<ScheduleRecord>(CF_SCHEDULES, &key)? else {
                return Ok(Err(not_found(name)));
            };
            if s.paused || s.next_due_ms != *expected_ms || *expected_ms == 0 {
                return Ok(Err(stale(format!(
                    "schedule {name}'s due time {expected_ms} was fired already or is not due (next {}{})",
                    s.next_due_ms,
                    if s.paused { ", paused" } else { "" }
                ))));
            }
            if *skipped > 0 {
                let mut r = RunRecord::new(name, *expected_ms, RunState::Skipped);
                r.skipped = *skipped;
                r.skipped_through_ms = *skipped_through_ms;
                r.error = "older than the catch-up window".into();
                r.finished_ms = *at_ms;
                put_run(ctx, tenant, &mut s, &r)?;
            }
            let mut fired = None;
            if let Some(due) = due_ms {
                let mut r = RunRecord::new(name, *due, RunState::Running);
                r.node = *node;
                if s.active > 0 && s.overlap != Overlap::Allow {
                    if s.overlap == Overlap::Queue && s.queued_due_ms == 0 {
                        r.state = RunState::Queued;
                        s.queued_due_ms = *due;
                    } else {
                        r.state = RunState::Skipped;
                        r.skipped = 1;
                        r.skipped_through_ms = *due;
                        r.error = "an earlier run was in progress".into();
                        r.finished_ms = *at_ms;
                    }
                } else {
                    r.attempt = 1;
                    r.first_started_ms = *at_ms;
                    r.started_ms = *at_ms;
                    s.active += 1;
                }
                put_run(ctx, tenant, &mut s, &r)?;
                fired = Some(r);
            }
            s.fired += skipped + u64::from(due_ms.is_some());
            s.next_due_ms = *next_due_ms;
            trim_runs(ctx, tenant, &mut s)?;
            ctx.put(CF_SCHEDULES, &key, &s);
            Ok(Ok(ScheduleReply::Fired { run: fired }))
        }
        ScheduleOp::Start {
            name,
            due_ms,
            from,
            from_attempt,
            attempt,
            node,
            at_ms,
        } => {
            let key = schedule_key(tenant, name);
            let Some(mut s) = ctx.get_decoded::<ScheduleRecord>(CF_SCHEDULES, &key)? else {
                return Ok(Err(not_found(name)));
            };
            let rkey = run_key(tenant, name, *due_ms);
            let Some(mut r) = ctx.get_decoded::<RunRecord>(CF_SCHEDULES, &rkey)? else {
                return Ok(Err(NexusError::NotFound(format!(
                    "run {} not found",
                    run_id(name, *due_ms)
                ))));
            };
            if r.state != *from || r.attempt != *from_attempt {
                return Ok(Err(stale(format!(
                    "run {} is {} at attempt {}, not {} at attempt {from_attempt}",
                    r.id(),
                    r.state.name(),
                    r.attempt,
                    from.name()
                ))));
            }
            match from {
                RunState::Running => r.interrupted += 1,
                RunState::Queued => {
                    if s.queued_due_ms == *due_ms {
                        s.queued_due_ms = 0;
                    }
                    s.active += 1;
                }
                RunState::Waiting => {}
                RunState::Succeeded | RunState::Skipped | RunState::Dead => {
                    return Ok(Err(stale(format!(
                        "run {} is {}: nothing to start",
                        r.id(),
                        r.state.name()
                    ))))
                }
            }
            r.state = RunState::Running;
            r.attempt = *attempt;
            r.node = *node;
            if r.first_started_ms == 0 {
                r.first_started_ms = *at_ms;
            }
            r.started_ms = *at_ms;
            r.retry_at_ms = 0;
            ctx.put(CF_SCHEDULES, &rkey, &r);
            ctx.put(CF_SCHEDULES, &key, &s);
            Ok(Ok(ScheduleReply::Run(r)))
        }
        ScheduleOp::Replay {
            name,
            due_ms,
            at_ms,
        } => {
            let key = schedule_key(tenant, name);
            let Some(mut s) = ctx.get_decoded::<ScheduleRecord>(CF_SCHEDULES, &key)? else {
                return Ok(Err(not_found(name)));
            };
            let rkey = run_key(tenant, name, *due_ms);
            let Some(mut r) = ctx.get_decoded::<RunRecord>(CF_SCHEDULES, &rkey)? else {
                return Ok(Err(NexusError::NotFound(format!(
                    "run {} not found",
                    run_id(name, *due_ms)
                ))));
            };
            if r.state != RunState::Dead {
                return Ok(Err(NexusError::precondition(
                    "due_ms",
                    format!(
                        "run {} is {}; only a dead run is replayed",
                        r.id(),
                        r.state.name()
                    ),
                )));
            }
            r.state = RunState::Waiting;
            r.attempt = 0;
            r.first_started_ms = 0;
            r.retry_at_ms = *at_ms;
            s.active += 1;
            ctx.put(CF_SCHEDULES, &rkey, &r);
            ctx.put(CF_SCHEDULES, &key, &s);
            Ok(Ok(ScheduleReply::Run(r)))
        }
        ScheduleOp::Finish {
            name,
            due_ms,
            attempt,
            outcome,
            at_ms,
        } => {
            let key = schedule_key(tenant, name);
            let Some(mut s) = ctx.get_decoded::<ScheduleRecord>(CF_SCHEDULES, &key)? else {
                return Ok(Err(not_found(name)));
            };
            let rkey = run_key(tenant, name, *due_ms);
            let Some(mut r) = ctx.get_decoded::<RunRecord>(CF_SCHEDULES, &rkey)? else {
                return Ok(Err(NexusError::NotFound(format!(
                    "run {} not found",
                    run_id(name, *due_ms)
                ))));
            };
            if r.state != RunState::Running || r.attempt != *attempt {
                return Ok(Err(stale(format!(
                    "run {} is {} at attempt {}: attempt {attempt} is not running",
                    r.id(),
                    r.state.name(),
                    r.attempt
                ))));
            }
            r.finished_ms = *at_ms;
            match outcome {
                Outcome::Succeeded { output } => {
                    r.state = RunState::Succeeded;
                    r.output = crate::error::excerpt(output, MAX_RUN_TEXT_BYTES);
                    r.error.clear();
                }
                Outcome::Failed { error, retry_at_ms } => {
                    r.error = crate::error::excerpt(error, MAX_RUN_TEXT_BYTES);
                    r.output.clear();
                    if *retry_at_ms > 0 {
                        r.state = RunState::Waiting;
                        r.retry_at_ms = *retry_at_ms;
                    } else {
                        r.state = RunState::Dead;
                    }
                }
            }
            if !r.state.in_progress() {
                s.active = s.active.saturating_sub(1);
            }
            ctx.put(CF_SCHEDULES, &rkey, &r);
            trim_runs(ctx, tenant, &mut s)?;
            ctx.put(CF_SCHEDULES, &key, &s);
            Ok(Ok(ScheduleReply::Run(r)))
        }
    }
}

/// Writes a run record (a new one counts in `s.runs`).
fn put_run(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    s: &mut ScheduleRecord,
    r: &RunRecord,
) -> Result<(), StoreError> {
    let key = run_key(tenant, &s.name, r.due_ms);
    if ctx.get_raw_value(CF_SCHEDULES, &key)?.is_none() {
        s.runs += 1;
    }
    ctx.put(CF_SCHEDULES, &key, r);
    Ok(())
}

/// Removes the oldest finished runs beyond `keep_runs` (runs in progress or queued stay).
fn trim_runs(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    s: &mut ScheduleRecord,
) -> Result<(), StoreError> {
    if s.runs <= s.keep_runs {
        return Ok(());
    }
    let mut over = s.runs - s.keep_runs;
    for (k, v) in ctx.scan_prefix(CF_SCHEDULES, &runs_prefix(tenant, &s.name))? {
        if over == 0 {
            break;
        }
        let r: RunRecord = crate::store::codec::decode(&v)?;
        if r.state.in_progress() || r.state == RunState::Queued {
            continue;
        }
        ctx.delete(CF_SCHEDULES, &k);
        s.runs -= 1;
        over -= 1;
    }
    Ok(())
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
mod tests {
    use super::*;

    fn schedule(name: &str, overlap: Overlap) -> ScheduleRecord {
        ScheduleRecord {
            name: name.into(),
            description: String::new(),
            spec: Spec::Every { every_ms: 1000 },
            tool: "time.now".into(),
            args: "{}".into(),
            owner: "local".into(),
            overlap,
            jitter_ms: 0,
            catch_up_ms: 60_000,
            retry: RetryPolicy::default(),
            keep_runs: 3,
            paused: false,
            next_due_ms: 1000,
            active: 0,
            queued_due_ms: 0,
            runs: 0,
            fired: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn fire(expected: i64, next: i64) -> ScheduleOp {
        ScheduleOp::Fire {
            name: "tick".into(),
            expected_ms: expected,
            skipped: 0,
            skipped_through_ms: 0,
            due_ms: Some(expected),
            next_due_ms: next,
            node: 1,
            at_ms: expected,
        }
    }

    fn finish(due: i64, attempt: u32, outcome: Outcome) -> ScheduleOp {
        ScheduleOp::Finish {
            name: "tick".into(),
            due_ms: due,
            attempt,
            outcome,
            at_ms: due + 5,
        }
    }

    fn ok() -> Outcome {
        Outcome::Succeeded {
            output: "{}".into(),
        }
    }

    #[test]
    fn a_due_time_fires_once_and_runs_are_kept_by_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let step = |op: ScheduleOp| {
            let mut c = ApplyCtx::new(&store);
            let r = apply(&mut c, "acme", &op).unwrap();
            store.db().write(c.finish().unwrap()).unwrap();
            r
        };
        step(ScheduleOp::Put {
            schedule: schedule("tick", Overlap::Skip),
        })
        .unwrap();
        step(fire(1000, 2000)).unwrap();
        // A second leader firing the same due time is refused by the state machine.
        let err = step(fire(1000, 2000)).unwrap_err();
        assert!(
            matches!(err, NexusError::FailedPrecondition { .. }),
            "{err}"
        );
        // While it runs, the next due time is skipped (overlap skip).
        let ScheduleReply::Fired { run: Some(r) } = step(fire(2000, 3000)).unwrap() else {
            panic!()
        };
        assert_eq!(r.state, RunState::Skipped);
        // A stale finish (wrong attempt) is refused; the right one is recorded.
        assert!(step(finish(1000, 2, ok())).is_err());
        step(finish(1000, 1, ok())).unwrap();
        assert!(step(finish(1000, 1, ok())).is_err(), "finished once");
        for due in [3000, 4000, 5000] {
            step(fire(due, due + 1000)).unwrap();
            step(finish(due, 1, ok())).unwrap();
        }
        let kept = runs(&store, "acme", "tick", 10).unwrap();
        assert_eq!(
            kept.iter().map(|r| r.due_ms).collect::<Vec<_>>(),
            vec![5000, 4000, 3000],
            "the newest three"
        );
        let s = read(&store, "acme", "tick").unwrap().unwrap();
        assert_eq!((s.runs, s.active, s.fired, s.next_due_ms), (3, 0, 5, 6000));
        assert!(runs(&store, "other", "tick", 10).unwrap().is_empty());
    }

    #[test]
    fn retries_interruptions_queue_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let step = |op: ScheduleOp| {
            let mut c = ApplyCtx::new(&store);
            let r = apply(&mut c, "acme", &op).unwrap();
            store.db().write(c.finish().unwrap()).unwrap();
            r
        };
        let mut s = schedule("tick", Overlap::Queue);
        s.keep_runs = 10;
        step(ScheduleOp::Put { schedule: s }).unwrap();
        step(fire(1000, 2000)).unwrap();
        let failed = |retry_at_ms| Outcome::Failed {
            error: "boom".into(),
            retry_at_ms,
        };
        step(finish(1000, 1, failed(1500))).unwrap();
        // Queued while the first waits for its retry; a third is skipped.
        let ScheduleReply::Fired { run: Some(q) } = step(fire(2000, 3000)).unwrap() else {
            panic!()
        };
        assert_eq!(q.state, RunState::Queued);
        let ScheduleReply::Fired { run: Some(k) } = step(fire(3000, 4000)).unwrap() else {
            panic!()
        };
        assert_eq!(k.state, RunState::Skipped);
        let start = |due: i64, from: RunState, from_attempt: u32, attempt: u32| ScheduleOp::Start {
            name: "tick".into(),
            due_ms: due,
            from,
            from_attempt,
            attempt,
            node: 2,
            at_ms: due + 600,
        };
        // Attempt 2, then a new leader finds it running and starts attempt 3.
        step(start(1000, RunState::Waiting, 1, 2)).unwrap();
        assert!(step(start(1000, RunState::Waiting, 1, 2)).is_err(), "once");
        step(start(1000, RunState::Running, 2, 3)).unwrap();
        assert!(
            step(finish(1000, 2, ok())).is_err(),
            "the old attempt's finish"
        );
        step(finish(1000, 3, failed(0))).unwrap();
        let dead = run(&store, "acme", "tick", 1000).unwrap().unwrap();
        assert_eq!(
            (dead.state, dead.attempt, dead.interrupted),
            (RunState::Dead, 3, 1)
        );
        // The queued one starts once nothing is in progress.
        step(start(2000, RunState::Queued, 0, 1)).unwrap();
        step(finish(2000, 1, ok())).unwrap();
        // Replaying the dead run: it waits for a first attempt, which starts as a retry's.
        assert!(
            step(ScheduleOp::Replay {
                name: "tick".into(),
                due_ms: 2000,
                at_ms: 9000
            })
            .is_err(),
            "only a dead run"
        );
        step(ScheduleOp::Replay {
            name: "tick".into(),
            due_ms: 1000,
            at_ms: 9000,
        })
        .unwrap();
        step(start(1000, RunState::Waiting, 0, 1)).unwrap();
        step(finish(1000, 1, ok())).unwrap();
        let s = read(&store, "acme", "tick").unwrap().unwrap();
        assert_eq!((s.active, s.queued_due_ms), (0, 0));
        // Deleting takes the runs along.
        step(ScheduleOp::Delete {
            name: "tick".into(),
        })
        .unwrap();
        assert!(runs(&store, "acme", "tick", 10).unwrap().is_empty());
    }

    #[test]
    fn names_and_backoff() {
        for ok in ["nightly", "a", "report-2.daily_x"] {
            validate_name("name", ok).unwrap();
        }
        for bad in ["", "Nightly", "-x", "a b", "a/b", &"x".repeat(129)] {
            assert!(validate_name("name", bad).is_err(), "{bad}");
        }
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            timeout_ms: 1000,
        };
        let b: Vec<u64> = (1..=6).map(|a| p.backoff_ms(a, 0)).collect();
        assert_eq!(b, vec![100, 200, 400, 800, 1000, 1000]);
        for seed in 0..50 {
            let j = p.backoff_ms(3, seed);
            assert!((320..=400).contains(&j), "{j}");
        }
    }
}
