//! Workflows: each tenant's workflow definitions (a DAG of steps) and their runs, a
//! state-machine family (`workflows`, tenant-first keys) replicated through Raft. The
//! leader's driver (`service::workflows`) starts steps and records their outcomes; this
//! module holds the records, the commands and how they apply, and the definition format.
//!
//! A run's state is replicated step by step: `StepStart` records that an attempt began (and,
//! for a wait on an event, the event number it waits after), `StepFinish` its outcome, each
//! conditional on the step's state and attempt, so a deposed leader's late write changes
//! nothing and a new leader never re-runs a step whose outcome is on record
//! (docs/design.md, "Workflows").

mod apply;
pub mod definition;
pub mod template;

pub use apply::apply;
pub use definition::{Action, Condition, StepDef, WorkflowDef};

use serde::{Deserialize, Serialize};

use crate::schedules::RetryPolicy;
use crate::store::{keys, Store, StoreError, CF_WORKFLOWS};

const TAG_DEF: u8 = b'W';
const TAG_RUN: u8 = b'R';
const TAG_RUN_ID: u8 = b'I';
const TAG_ACTIVE: u8 = b'A';
const TAG_META: u8 = b'M';

/// Most finished runs a tenant keeps (older ones are removed as new ones start).
pub const KEEP_FINISHED_RUNS: u64 = 1000;
/// Most runs of a tenant in progress at once.
pub const MAX_ACTIVE_RUNS: u64 = 1000;
/// Largest output a step keeps, JSON text (a larger one fails the step: later steps read it).
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024;
/// Longest error kept on a step.
pub const MAX_ERROR_BYTES: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepState {
    /// Not started: waiting for the steps it comes after.
    Pending,
    /// An attempt is running (a tool call, a sleep, a wait for an event).
    Running,
    /// An attempt failed; the next starts at `retry_at_ms`.
    Waiting,
    Succeeded,
    /// Its condition was false.
    Skipped,
    /// Every attempt failed: the run failed.
    Failed,
    /// The run was cancelled before it finished.
    Cancelled,
}

impl StepState {
    pub fn name(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Waiting => "waiting",
            StepState::Succeeded => "succeeded",
            StepState::Skipped => "skipped",
            StepState::Failed => "failed",
            StepState::Cancelled => "cancelled",
        }
    }

    /// Done in a way that lets the steps after it run.
    pub fn lets_through(self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Skipped)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    pub state: StepState,
    /// The attempt running or last run (0: none started).
    pub attempt: u32,
    pub node: u64,
    pub first_started_ms: i64,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// JSON text (`null` until it succeeds).
    pub output: String,
    pub error: String,
    pub retry_at_ms: i64,
    /// Attempts a leader started and never finished (it died or stopped leading).
    pub interrupted: u32,
    /// A wait for an event: the tenant's last event number when the wait began; it takes the
    /// first matching event after it.
    pub after_seq: u64,
}

/// One run of a workflow, with the definition it started with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    /// Its place in the tenant's runs (the order they started in).
    pub seq: u64,
    pub workflow: String,
    pub def: WorkflowDef,
    /// JSON text (an object).
    pub input: String,
    /// Who started it; its steps call tools as this principal, with its grants at the call.
    pub owner: String,
    pub state: RunState,
    pub steps: Vec<StepRecord>,
    pub created_at_ms: i64,
    pub finished_ms: i64,
    pub error: String,
}

impl RunRecord {
    pub fn step(&self, id: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.id == id)
    }
}

/// How a finished attempt went (a schedule run's outcome: succeeded with an output, or
/// failed with a retry time, 0 for none).
pub type StepOutcome = crate::schedules::Outcome;

/// A tenant's runs: how many, the next place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunsMeta {
    pub next_seq: u64,
    /// The oldest place that may still hold a run.
    pub first_seq: u64,
    pub active: u64,
    pub finished: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WorkflowOp {
    /// Makes or replaces a definition (runs keep the one they started with).
    Put {
        def: WorkflowDef,
    },
    Delete {
        name: String,
    },
    /// Starts a run of `workflow` (as stored when this applies) under `id`; a run of that
    /// id already on record is the reply instead (an idempotent start).
    Start {
        id: String,
        workflow: String,
        input: String,
        owner: String,
        at_ms: i64,
    },
    /// Starts attempt `attempt` of step `step`, which must be `from` at `from_attempt`: a
    /// first attempt (Pending), a retry (Waiting), an attempt a deposed leader never finished
    /// (Running). `after_seq` is recorded on a first attempt only.
    StepStart {
        run: String,
        step: String,
        from: StepState,
        from_attempt: u32,
        attempt: u32,
        after_seq: u64,
        node: u64,
        at_ms: i64,
    },
    /// Skips a pending step whose condition was false.
    StepSkip {
        run: String,
        step: String,
        at_ms: i64,
    },
    /// Records attempt `attempt`'s outcome (applies only while that attempt runs).
    StepFinish {
        run: String,
        step: String,
        attempt: u32,
        outcome: StepOutcome,
        at_ms: i64,
    },
    Cancel {
        run: String,
        reason: String,
        at_ms: i64,
    },
}

impl WorkflowOp {
    pub fn name(&self) -> &'static str {
        match self {
            WorkflowOp::Put { .. } => "workflows.put",
            WorkflowOp::Delete { .. } => "workflows.delete",
            WorkflowOp::Start { .. } => "workflows.start",
            WorkflowOp::StepStart { .. } => "workflows.step_start",
            WorkflowOp::StepSkip { .. } => "workflows.step_skip",
            WorkflowOp::StepFinish { .. } => "workflows.step_finish",
            WorkflowOp::Cancel { .. } => "workflows.cancel",
        }
    }

    /// Made by the leader's driver itself: never forwarded, outside the tenant's quota (the
    /// tenant started the run within it; a run's size is bounded by its steps' outputs).
    pub fn is_the_leaders(&self) -> bool {
        matches!(
            self,
            WorkflowOp::StepStart { .. }
                | WorkflowOp::StepSkip { .. }
                | WorkflowOp::StepFinish { .. }
        )
    }

    pub fn approx_size(&self) -> usize {
        match self {
            WorkflowOp::Put { def } => def.approx_size(),
            WorkflowOp::Delete { name } => name.len() + 16,
            WorkflowOp::Start {
                id,
                workflow,
                input,
                owner,
                ..
            } => id.len() + workflow.len() + input.len() + owner.len() + 32,
            WorkflowOp::StepStart { run, step, .. } | WorkflowOp::StepSkip { run, step, .. } => {
                run.len() + step.len() + 48
            }
            WorkflowOp::StepFinish {
                run, step, outcome, ..
            } => {
                run.len()
                    + step.len()
                    + 32
                    + match outcome {
                        StepOutcome::Succeeded { output } => output.len(),
                        StepOutcome::Failed { error, .. } => error.len(),
                    }
            }
            WorkflowOp::Cancel { run, reason, .. } => run.len() + reason.len() + 16,
        }
    }

    /// What the op acts on, for the audit log.
    pub fn resource(&self) -> String {
        match self {
            WorkflowOp::Put { def } => format!("workflow/{}", def.name),
            WorkflowOp::Delete { name } => format!("workflow/{name}"),
            WorkflowOp::Start { id, workflow, .. } => format!("workflow/{workflow} run {id}"),
            WorkflowOp::StepStart {
                run, step, attempt, ..
            }
            | WorkflowOp::StepFinish {
                run, step, attempt, ..
            } => format!("workflow run {run} step {step} attempt {attempt}"),
            WorkflowOp::StepSkip { run, step, .. } => {
                format!("workflow run {run} step {step} skipped")
            }
            WorkflowOp::Cancel { run, .. } => format!("workflow run {run} cancelled"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WorkflowReply {
    Workflow(WorkflowDef),
    Deleted,
    /// A run; `existing`: a start found it on record already.
    Run {
        run: RunRecord,
        existing: bool,
    },
}

fn def_key(tenant: &str, name: &str) -> Vec<u8> {
    keys::tenant_tagged(tenant, TAG_DEF, name.as_bytes())
}

fn run_key(tenant: &str, seq: u64) -> Vec<u8> {
    keys::tenant_tagged(tenant, TAG_RUN, &seq.to_be_bytes())
}

fn run_id_key(tenant: &str, id: &str) -> Vec<u8> {
    keys::tenant_tagged(tenant, TAG_RUN_ID, id.as_bytes())
}

fn active_key(tenant: &str, seq: u64) -> Vec<u8> {
    keys::tenant_tagged(tenant, TAG_ACTIVE, &seq.to_be_bytes())
}

fn meta_key(tenant: &str) -> Vec<u8> {
    keys::tenant_tagged(tenant, TAG_META, &[])
}

fn decode<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, StoreError> {
    crate::store::codec::decode(v).map_err(StoreError::from)
}

/// A definition of `tenant`.
pub fn read(store: &Store, tenant: &str, name: &str) -> Result<Option<WorkflowDef>, StoreError> {
    store.get_decoded(CF_WORKFLOWS, &def_key(tenant, name))
}

/// Every definition of `tenant`, by name.
pub fn list(store: &Store, tenant: &str) -> Result<Vec<WorkflowDef>, StoreError> {
    let prefix = keys::tenant_tagged(tenant, TAG_DEF, &[]);
    store
        .scan_prefix(CF_WORKFLOWS, &prefix, &prefix, usize::MAX)?
        .iter()
        .map(|(_, v)| decode(v))
        .collect()
}

/// A run of `tenant` by id.
pub fn run(store: &Store, tenant: &str, id: &str) -> Result<Option<RunRecord>, StoreError> {
    let Some(seq) = store.get_decoded::<u64>(CF_WORKFLOWS, &run_id_key(tenant, id))? else {
        return Ok(None);
    };
    store.get_decoded(CF_WORKFLOWS, &run_key(tenant, seq))
}

/// Runs of `tenant`, newest first, at most `limit`, of `workflow` when not empty.
pub fn runs(
    store: &Store,
    tenant: &str,
    workflow: &str,
    limit: usize,
) -> Result<Vec<RunRecord>, StoreError> {
    let prefix = keys::tenant_tagged(tenant, TAG_RUN, &[]);
    let mut out = Vec::new();
    // Newest first: walk back from the end, a page at a time.
    let meta = runs_meta(store, tenant)?;
    let mut end = meta.next_seq;
    while out.len() < limit && end > meta.first_seq {
        let start = end.saturating_sub(256).max(meta.first_seq);
        let page = store.scan_prefix(
            CF_WORKFLOWS,
            &prefix,
            &run_key(tenant, start),
            (end - start) as usize,
        )?;
        for (_, v) in page.iter().rev() {
            let r: RunRecord = decode(v)?;
            if r.seq < end && (workflow.is_empty() || r.workflow == workflow) {
                out.push(r);
                if out.len() == limit {
                    break;
                }
            }
        }
        end = start;
    }
    Ok(out)
}

/// Runs of `tenant` in progress, oldest first.
pub fn active(store: &Store, tenant: &str) -> Result<Vec<RunRecord>, StoreError> {
    let prefix = keys::tenant_tagged(tenant, TAG_ACTIVE, &[]);
    let mut out = Vec::new();
    for (k, _) in store.scan_prefix(CF_WORKFLOWS, &prefix, &prefix, usize::MAX)? {
        let Some(seq) = k.get(prefix.len()..).and_then(|b| b.try_into().ok()) else {
            continue;
        };
        if let Some(r) =
            store.get_decoded(CF_WORKFLOWS, &run_key(tenant, u64::from_be_bytes(seq)))?
        {
            out.push(r);
        }
    }
    Ok(out)
}

pub fn runs_meta(store: &Store, tenant: &str) -> Result<RunsMeta, StoreError> {
    Ok(store
        .get_decoded(CF_WORKFLOWS, &meta_key(tenant))?
        .unwrap_or_default())
}

/// The retry policy a step runs under: its own, else its workflow's.
pub fn retry_of(def: &WorkflowDef, step: &StepDef) -> RetryPolicy {
    step.retry.unwrap_or(def.retry)
}

#[cfg(test)]
mod tests;
