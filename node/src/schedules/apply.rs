//! How schedule commands apply: each reads what it acts on in this step, checks the
//! condition it carries (the stored next due time, a run's state and attempt), and writes.

use crate::error::NexusError;
use crate::store::{ApplyCtx, StoreError, CF_SCHEDULES};

use super::{
    run_id, run_key, runs_prefix, schedule_key, Overlap, RunRecord, RunState, ScheduleOp,
    ScheduleRecord, ScheduleReply, MAX_RUN_TEXT_BYTES,
};

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
            let Some(mut s) = load(ctx, tenant, name)? else {
                return Ok(Err(not_found(name)));
            };
            if s.paused != *paused {
                s.paused = *paused;
                if !paused {
                    s.next_due_ms = *next_due_ms;
                }
                s.updated_at_ms = *at_ms;
                save(ctx, tenant, &s);
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
            let Some(mut s) = load(ctx, tenant, name)? else {
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
            save(ctx, tenant, &s);
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
            let (mut s, mut r) = match load_run(ctx, tenant, name, *due_ms)? {
                Ok(found) => found,
                Err(e) => return Ok(Err(e)),
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
            save_run(ctx, tenant, &s, &r);
            Ok(Ok(ScheduleReply::Run(r)))
        }
        ScheduleOp::Replay {
            name,
            due_ms,
            at_ms,
        } => {
            let (mut s, mut r) = match load_run(ctx, tenant, name, *due_ms)? {
                Ok(found) => found,
                Err(e) => return Ok(Err(e)),
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
            save_run(ctx, tenant, &s, &r);
            Ok(Ok(ScheduleReply::Run(r)))
        }
        ScheduleOp::Finish {
            name,
            due_ms,
            attempt,
            outcome,
            at_ms,
        } => {
            let (mut s, mut r) = match load_run(ctx, tenant, name, *due_ms)? {
                Ok(found) => found,
                Err(e) => return Ok(Err(e)),
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
            let settled = outcome.settle(MAX_RUN_TEXT_BYTES);
            r.state = settled.state;
            r.output = settled.output;
            r.error = settled.error;
            if settled.state == RunState::Waiting {
                r.retry_at_ms = settled.retry_at_ms;
            }
            if !r.state.in_progress() {
                s.active = s.active.saturating_sub(1);
            }
            ctx.put(CF_SCHEDULES, &run_key(tenant, name, *due_ms), &r);
            trim_runs(ctx, tenant, &mut s)?;
            save(ctx, tenant, &s);
            Ok(Ok(ScheduleReply::Run(r)))
        }
    }
}

/// A schedule as this step sees it.
fn load(
    ctx: &ApplyCtx<'_>,
    tenant: &str,
    name: &str,
) -> Result<Option<ScheduleRecord>, StoreError> {
    ctx.get_decoded(CF_SCHEDULES, &schedule_key(tenant, name))
}

/// A schedule and its run at `due_ms`, or NotFound naming which is missing.
fn load_run(
    ctx: &ApplyCtx<'_>,
    tenant: &str,
    name: &str,
    due_ms: i64,
) -> Result<Result<(ScheduleRecord, RunRecord), NexusError>, StoreError> {
    let Some(s) = load(ctx, tenant, name)? else {
        return Ok(Err(not_found(name)));
    };
    match ctx.get_decoded::<RunRecord>(CF_SCHEDULES, &run_key(tenant, name, due_ms))? {
        Some(r) => Ok(Ok((s, r))),
        None => Ok(Err(NexusError::NotFound(format!(
            "run {} not found",
            run_id(name, due_ms)
        )))),
    }
}

fn save(ctx: &mut ApplyCtx<'_>, tenant: &str, s: &ScheduleRecord) {
    ctx.put(CF_SCHEDULES, &schedule_key(tenant, &s.name), s);
}

/// Writes an existing run back with its schedule.
fn save_run(ctx: &mut ApplyCtx<'_>, tenant: &str, s: &ScheduleRecord, r: &RunRecord) {
    ctx.put(CF_SCHEDULES, &run_key(tenant, &s.name, r.due_ms), r);
    save(ctx, tenant, s);
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
