//! How workflow commands apply: each reads the run it acts on in this step, checks the
//! condition it carries (the run's state, the step's state and attempt), and writes.

use crate::error::NexusError;
use crate::store::{ApplyCtx, StoreError, CF_WORKFLOWS};

use super::{
    active_key, def_key, meta_key, run_id_key, run_key, RunRecord, RunState, RunsMeta, StepOutcome,
    StepRecord, StepState, WorkflowDef, WorkflowOp, WorkflowReply, KEEP_FINISHED_RUNS,
    MAX_ACTIVE_RUNS, MAX_ERROR_BYTES, MAX_OUTPUT_BYTES,
};

/// Most places one start looks at to remove old finished runs.
const TRIM_SCAN: usize = 64;

fn stale(what: String) -> NexusError {
    NexusError::precondition("run", what)
}

pub fn apply(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    op: &WorkflowOp,
) -> Result<Result<WorkflowReply, NexusError>, StoreError> {
    match op {
        WorkflowOp::Put { def } => {
            let key = def_key(tenant, &def.name);
            let mut d = def.clone();
            if let Some(old) = ctx.get_decoded::<WorkflowDef>(CF_WORKFLOWS, &key)? {
                d.created_at_ms = old.created_at_ms;
            }
            ctx.put(CF_WORKFLOWS, &key, &d);
            Ok(Ok(WorkflowReply::Workflow(d)))
        }
        WorkflowOp::Delete { name } => {
            let key = def_key(tenant, name);
            if ctx.get_raw_value(CF_WORKFLOWS, &key)?.is_none() {
                return Ok(Err(NexusError::NotFound(format!(
                    "workflow {name} not found"
                ))));
            }
            ctx.delete(CF_WORKFLOWS, &key);
            Ok(Ok(WorkflowReply::Deleted))
        }
        WorkflowOp::Start {
            id,
            workflow,
            input,
            owner,
            at_ms,
        } => {
            if let Some(run) = load(ctx, tenant, id)? {
                return Ok(Ok(WorkflowReply::Run {
                    run,
                    existing: true,
                }));
            }
            let Some(def) =
                ctx.get_decoded::<WorkflowDef>(CF_WORKFLOWS, &def_key(tenant, workflow))?
            else {
                return Ok(Err(NexusError::NotFound(format!(
                    "workflow {workflow} not found"
                ))));
            };
            let mkey = meta_key(tenant);
            let mut meta: RunsMeta = ctx.get_decoded(CF_WORKFLOWS, &mkey)?.unwrap_or_default();
            if meta.active >= MAX_ACTIVE_RUNS {
                return Ok(Err(NexusError::ResourceExhausted {
                    limit: "workflows.max_active_runs".into(),
                    message: format!(
                        "tenant {tenant} has {} workflow runs in progress, the most it may; wait for some to finish or cancel some",
                        meta.active
                    ),
                }));
            }
            let seq = meta.next_seq;
            meta.next_seq += 1;
            meta.active += 1;
            let steps = def
                .steps
                .iter()
                .map(|s| StepRecord {
                    id: s.id.clone(),
                    state: StepState::Pending,
                    attempt: 0,
                    node: 0,
                    first_started_ms: 0,
                    started_ms: 0,
                    finished_ms: 0,
                    output: "null".into(),
                    error: String::new(),
                    retry_at_ms: 0,
                    interrupted: 0,
                    after_seq: 0,
                })
                .collect();
            let run = RunRecord {
                id: id.clone(),
                seq,
                workflow: workflow.clone(),
                def,
                input: input.clone(),
                owner: owner.clone(),
                state: RunState::Running,
                steps,
                created_at_ms: *at_ms,
                finished_ms: 0,
                error: String::new(),
            };
            ctx.put(CF_WORKFLOWS, &run_key(tenant, seq), &run);
            ctx.put(CF_WORKFLOWS, &run_id_key(tenant, id), &seq);
            ctx.put(CF_WORKFLOWS, &active_key(tenant, seq), &());
            trim(ctx, tenant, &mut meta)?;
            ctx.put(CF_WORKFLOWS, &mkey, &meta);
            Ok(Ok(WorkflowReply::Run {
                run,
                existing: false,
            }))
        }
        WorkflowOp::StepStart {
            run,
            step,
            from,
            from_attempt,
            attempt,
            after_seq,
            node,
            at_ms,
        } => step_op(ctx, tenant, run, step, |_, s| {
            if s.state != *from || s.attempt != *from_attempt {
                return Err(stale(format!(
                    "step {} is {} at attempt {}, not {} at attempt {from_attempt}",
                    s.id,
                    s.state.name(),
                    s.attempt,
                    from.name()
                )));
            }
            match from {
                StepState::Pending => s.after_seq = *after_seq,
                StepState::Running => s.interrupted += 1,
                StepState::Waiting => {}
                _ => {
                    return Err(stale(format!(
                        "step {} is {}: nothing to start",
                        s.id,
                        s.state.name()
                    )))
                }
            }
            s.state = StepState::Running;
            s.attempt = *attempt;
            s.node = *node;
            if s.first_started_ms == 0 {
                s.first_started_ms = *at_ms;
            }
            s.started_ms = *at_ms;
            s.retry_at_ms = 0;
            Ok(())
        }),
        WorkflowOp::StepSkip { run, step, at_ms } => step_op(ctx, tenant, run, step, |_, s| {
            if s.state != StepState::Pending {
                return Err(stale(format!(
                    "step {} is {}, not pending",
                    s.id,
                    s.state.name()
                )));
            }
            s.state = StepState::Skipped;
            s.finished_ms = *at_ms;
            Ok(())
        }),
        WorkflowOp::StepFinish {
            run,
            step,
            attempt,
            outcome,
            at_ms,
        } => step_op(ctx, tenant, run, step, |run_error, s| {
            if s.state != StepState::Running || s.attempt != *attempt {
                return Err(stale(format!(
                    "step {} is {} at attempt {}: attempt {attempt} is not running",
                    s.id,
                    s.state.name(),
                    s.attempt
                )));
            }
            s.finished_ms = *at_ms;
            match outcome {
                StepOutcome::Succeeded { output } if output.len() > MAX_OUTPUT_BYTES => {
                    s.state = StepState::Failed;
                    s.error = format!(
                        "its output is {} bytes; a step keeps at most {MAX_OUTPUT_BYTES}",
                        output.len()
                    );
                }
                StepOutcome::Succeeded { output } => {
                    s.state = StepState::Succeeded;
                    s.output = output.clone();
                    s.error.clear();
                }
                StepOutcome::Failed { error, retry_at_ms } => {
                    s.error = crate::error::excerpt(error, MAX_ERROR_BYTES);
                    if *retry_at_ms > 0 {
                        s.state = StepState::Waiting;
                        s.retry_at_ms = *retry_at_ms;
                    } else {
                        s.state = StepState::Failed;
                    }
                }
            }
            if s.state == StepState::Failed {
                *run_error = format!("step {} failed: {}", s.id, s.error);
            }
            Ok(())
        }),
        WorkflowOp::Cancel { run, reason, at_ms } => {
            let Some(mut r) = load(ctx, tenant, run)? else {
                return Ok(Err(not_found(run)));
            };
            if r.state != RunState::Running {
                return Ok(Err(NexusError::precondition(
                    "run",
                    format!(
                        "run {run} is {}; only a running run is cancelled",
                        r.state.name()
                    ),
                )));
            }
            r.error = crate::error::excerpt(reason, MAX_ERROR_BYTES);
            finish(ctx, tenant, &mut r, RunState::Cancelled, *at_ms)?;
            Ok(Ok(WorkflowReply::Run {
                run: r,
                existing: false,
            }))
        }
    }
}

fn not_found(run: &str) -> NexusError {
    NexusError::NotFound(format!("workflow run {run} not found"))
}

fn load(ctx: &ApplyCtx<'_>, tenant: &str, id: &str) -> Result<Option<RunRecord>, StoreError> {
    let Some(seq) = ctx.get_decoded::<u64>(CF_WORKFLOWS, &run_id_key(tenant, id))? else {
        return Ok(None);
    };
    ctx.get_decoded(CF_WORKFLOWS, &run_key(tenant, seq))
}

/// Applies `change` to step `step` of running run `run` (it may set the run's error, which
/// fails the run), then finishes the run when its steps say so, and saves it.
fn step_op(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    run: &str,
    step: &str,
    change: impl FnOnce(&mut String, &mut StepRecord) -> Result<(), NexusError>,
) -> Result<Result<WorkflowReply, NexusError>, StoreError> {
    let Some(mut r) = load(ctx, tenant, run)? else {
        return Ok(Err(not_found(run)));
    };
    if r.state != RunState::Running {
        return Ok(Err(stale(format!("run {run} is {}", r.state.name()))));
    }
    let Some(s) = r.steps.iter_mut().find(|s| s.id == step) else {
        return Ok(Err(NexusError::NotFound(format!(
            "run {run} has no step {step}"
        ))));
    };
    let mut run_error = String::new();
    let at_ms = match change(&mut run_error, s) {
        Ok(()) => s.finished_ms.max(s.started_ms),
        Err(e) => return Ok(Err(e)),
    };
    if !run_error.is_empty() {
        r.error = run_error;
        finish(ctx, tenant, &mut r, RunState::Failed, at_ms)?;
    } else if r.steps.iter().all(|s| s.state.lets_through()) {
        finish(ctx, tenant, &mut r, RunState::Succeeded, at_ms)?;
    } else {
        ctx.put(CF_WORKFLOWS, &run_key(tenant, r.seq), &r);
    }
    Ok(Ok(WorkflowReply::Run {
        run: r,
        existing: false,
    }))
}

/// Ends a run: what has not finished is cancelled, it leaves the active set.
fn finish(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    r: &mut RunRecord,
    state: RunState,
    at_ms: i64,
) -> Result<(), StoreError> {
    for s in &mut r.steps {
        if matches!(
            s.state,
            StepState::Pending | StepState::Running | StepState::Waiting
        ) {
            s.state = StepState::Cancelled;
        }
    }
    r.state = state;
    r.finished_ms = at_ms;
    ctx.put(CF_WORKFLOWS, &run_key(tenant, r.seq), &*r);
    ctx.delete(CF_WORKFLOWS, &active_key(tenant, r.seq));
    let mkey = meta_key(tenant);
    let mut meta: RunsMeta = ctx.get_decoded(CF_WORKFLOWS, &mkey)?.unwrap_or_default();
    meta.active = meta.active.saturating_sub(1);
    meta.finished += 1;
    ctx.put(CF_WORKFLOWS, &mkey, &meta);
    Ok(())
}

/// Removes the oldest finished runs beyond [`KEEP_FINISHED_RUNS`], looking at a bounded
/// number from the oldest kept place on.
fn trim(ctx: &mut ApplyCtx<'_>, tenant: &str, meta: &mut RunsMeta) -> Result<(), StoreError> {
    if meta.finished <= KEEP_FINISHED_RUNS {
        return Ok(());
    }
    let mut contiguous = true;
    let end = meta.next_seq.min(meta.first_seq + TRIM_SCAN as u64);
    for seq in meta.first_seq..end {
        if meta.finished <= KEEP_FINISHED_RUNS {
            break;
        }
        let key = run_key(tenant, seq);
        let Some(r) = ctx.get_decoded::<RunRecord>(CF_WORKFLOWS, &key)? else {
            if contiguous {
                meta.first_seq = seq + 1;
            }
            continue;
        };
        if r.state == RunState::Running {
            contiguous = false;
            continue;
        }
        ctx.delete(CF_WORKFLOWS, &key);
        ctx.delete(CF_WORKFLOWS, &run_id_key(tenant, &r.id));
        meta.finished -= 1;
        if contiguous {
            meta.first_seq = seq + 1;
        }
    }
    Ok(())
}
