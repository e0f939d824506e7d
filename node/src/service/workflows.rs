//! Workflows: what the API calls (define, start, cancel, status, history) and the leader's
//! driver, which runs each run's steps.
//!
//! The driver runs on every node and acts while its node leads. Each pass reads the runs in
//! progress of every tenant and, for each: starts the steps whose `after` steps are done
//! (`StepStart`, or `StepSkip` when a step's condition is false), starts due retries, and
//! starts again the attempts a deposed leader never finished. Each started attempt runs in a
//! task of its own and records its outcome (`StepFinish`). A sleep waits out what is left of
//! it from the step's first start, and a wait for an event takes the first match after the
//! number recorded when the step first started, so a new leader resumes both where they
//! were; a tool step an old leader was running is called again (at-least-once, with the
//! step's id and attempt in the audit record). A step whose outcome is on record never runs
//! again.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::ReadConsistency;
use crate::command::{self, Cluster, Op, Reply, Scope};
use crate::error::NexusError;
use crate::events;
use crate::iam;
use crate::memory::now_ms;
use crate::observe::metrics;
use crate::store::blocking;
use crate::workflows::{
    self, definition, template, Action, RunRecord, StepOutcome, StepRecord, StepState, WorkflowDef,
    WorkflowOp, WorkflowReply,
};

use super::automation::{self, Attempts, Driver};
use super::tools::ToolService;
use super::Caller;

/// Most definitions a tenant may have.
pub const MAX_WORKFLOWS_PER_TENANT: usize = 1000;
/// Largest input of a run, JSON text.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;
/// Longest run id.
pub const MAX_RUN_ID_BYTES: usize = 128;
/// Most runs listed at once.
pub const MAX_LIST: usize = 1000;
/// How soon a step whose start failed is looked at again.
const RETRY_START: Duration = Duration::from_millis(200);

/// An attempt this node runs: (tenant, run, step).
type Key = (String, String, String);

pub struct WorkflowService {
    node: Arc<Cluster>,
    tools: Arc<ToolService>,
    attempts: Arc<Attempts<Key>>,
}

impl WorkflowService {
    pub fn new(node: Arc<Cluster>, tools: Arc<ToolService>) -> Arc<Self> {
        Arc::new(WorkflowService {
            node,
            tools,
            attempts: Arc::default(),
        })
    }

    /// Makes a workflow from its JSON document (`replace`: or replaces the one of that name;
    /// runs in progress keep the definition they started with).
    pub async fn put(
        &self,
        caller: &Caller,
        document: &str,
        replace: bool,
    ) -> Result<WorkflowDef, NexusError> {
        if document.len() > 256 * 1024 {
            return Err(NexusError::invalid(
                "definition",
                format!("is {} bytes; at most 256 KiB", document.len()),
            ));
        }
        let def = definition::parse(document, now_ms())?;
        automation::validate_retry("retry", &def.retry)?;
        for (i, step) in def.steps.iter().enumerate() {
            if let Some(r) = &step.retry {
                automation::validate_retry(&format!("steps[{i}].retry"), r)?;
            }
            // A workflow calls nothing its maker could not.
            if let Action::Tool { tool, .. } = &step.action {
                let field = format!("steps[{i}].tool");
                self.tools
                    .describe(caller, tool, ReadConsistency::Linearizable)
                    .await
                    .map_err(|e| match e {
                        NexusError::NotFound(m) => NexusError::invalid(&field, m),
                        NexusError::InvalidArgument { message, .. } => {
                            NexusError::invalid(&field, message)
                        }
                        other => other,
                    })?;
                iam::rbac::authorize("tools.call", tool, caller)?;
            }
        }
        self.node
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let tenant = caller.tenant.clone();
        let existing = workflows::read(&self.node.store, &tenant, &def.name)?;
        match (&existing, replace) {
            (Some(_), false) => {
                return Err(NexusError::AlreadyExists(format!(
                    "workflow {} exists; update it or delete it first",
                    def.name
                )))
            }
            (None, true) => {
                return Err(NexusError::NotFound(format!(
                    "workflow {} not found",
                    def.name
                )))
            }
            (None, false) => {
                let (store, t) = (self.node.store.clone(), tenant.clone());
                let count = blocking(move || workflows::list(&store, &t)).await?.len();
                if count >= MAX_WORKFLOWS_PER_TENANT {
                    return Err(NexusError::ResourceExhausted {
                        limit: "workflows per tenant".into(),
                        message: format!(
                            "tenant {tenant} has {count} workflows, the most it may have"
                        ),
                    });
                }
            }
            (Some(_), true) => {}
        }
        match self
            .propose(&caller.scope(), WorkflowOp::Put { def })
            .await?
        {
            WorkflowReply::Workflow(d) => Ok(d),
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete(&self, caller: &Caller, name: &str) -> Result<(), NexusError> {
        definition::validate_id("name", name, true)?;
        self.propose(&caller.scope(), WorkflowOp::Delete { name: name.into() })
            .await?;
        Ok(())
    }

    pub async fn get(
        &self,
        tenant: &str,
        name: &str,
        consistency: ReadConsistency,
    ) -> Result<WorkflowDef, NexusError> {
        definition::validate_id("name", name, true)?;
        self.node.read_barrier(consistency).await?;
        workflows::read(&self.node.store, tenant, name)?
            .ok_or_else(|| NexusError::NotFound(format!("workflow {name} not found")))
    }

    pub async fn list(
        &self,
        tenant: &str,
        consistency: ReadConsistency,
    ) -> Result<Vec<WorkflowDef>, NexusError> {
        self.node.read_barrier(consistency).await?;
        let (store, tenant) = (self.node.store.clone(), tenant.to_string());
        Ok(blocking(move || workflows::list(&store, &tenant)).await?)
    }

    /// Starts a run of `workflow` with `input` (a JSON object, text; empty: `{}`) under `id`
    /// (empty: a new UUIDv7). A run of that id on record already is returned instead, with
    /// `true`: a start is idempotent by its id (a schedule's run id, a trigger's event).
    pub async fn start(
        &self,
        caller: &Caller,
        workflow: &str,
        input: &str,
        id: &str,
    ) -> Result<(RunRecord, bool), NexusError> {
        definition::validate_id("workflow", workflow, true)?;
        let input = if input.trim().is_empty() {
            "{}".to_string()
        } else {
            input.to_string()
        };
        if input.len() > MAX_INPUT_BYTES {
            return Err(NexusError::invalid(
                "input",
                format!("is {} bytes; at most {MAX_INPUT_BYTES}", input.len()),
            ));
        }
        match serde_json::from_str::<Value>(&input) {
            Ok(v) if v.is_object() => {}
            Ok(_) => return Err(NexusError::invalid("input", "must be a JSON object")),
            Err(e) => return Err(NexusError::invalid("input", format!("is not JSON: {e}"))),
        }
        let id = if id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            validate_run_id(id)?;
            id.to_string()
        };
        let op = WorkflowOp::Start {
            id,
            workflow: workflow.to_string(),
            input,
            owner: caller.subject.clone(),
            at_ms: now_ms(),
        };
        match self.propose(&caller.scope(), op).await? {
            WorkflowReply::Run { run, existing } => {
                if !existing {
                    metrics::WORKFLOW_RUNS.with_label_values(&["started"]).inc();
                }
                Ok((run, existing))
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn cancel(
        &self,
        caller: &Caller,
        id: &str,
        reason: &str,
    ) -> Result<RunRecord, NexusError> {
        validate_run_id(id)?;
        let reason = if reason.is_empty() {
            format!("cancelled by {}", caller.subject)
        } else {
            crate::error::excerpt(reason, 512)
        };
        let op = WorkflowOp::Cancel {
            run: id.to_string(),
            reason,
            at_ms: now_ms(),
        };
        match self.propose(&caller.scope(), op).await? {
            WorkflowReply::Run { run, .. } => {
                metrics::WORKFLOW_RUNS
                    .with_label_values(&["cancelled"])
                    .inc();
                Ok(run)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn run(
        &self,
        tenant: &str,
        id: &str,
        consistency: ReadConsistency,
    ) -> Result<RunRecord, NexusError> {
        validate_run_id(id)?;
        self.node.read_barrier(consistency).await?;
        workflows::run(&self.node.store, tenant, id)?
            .ok_or_else(|| NexusError::NotFound(format!("workflow run {id} not found")))
    }

    /// Runs, newest first (of `workflow` when not empty; `state` when not empty).
    pub async fn runs(
        &self,
        tenant: &str,
        workflow: &str,
        state: &str,
        limit: usize,
        consistency: ReadConsistency,
    ) -> Result<Vec<RunRecord>, NexusError> {
        if !workflow.is_empty() {
            definition::validate_id("workflow", workflow, true)?;
        }
        if !["", "running", "succeeded", "failed", "cancelled"].contains(&state) {
            return Err(NexusError::invalid(
                "state",
                format!("{state:?} is not running, succeeded, failed or cancelled"),
            ));
        }
        let limit = match limit {
            0 => 100,
            n => n.min(MAX_LIST),
        };
        self.node.read_barrier(consistency).await?;
        let (store, t, w, state) = (
            self.node.store.clone(),
            tenant.to_string(),
            workflow.to_string(),
            state.to_string(),
        );
        Ok(blocking(move || {
            let mut runs = workflows::runs(
                &store,
                &t,
                &w,
                if state.is_empty() { limit } else { usize::MAX },
            )?;
            runs.retain(|r| state.is_empty() || r.state.name() == state);
            runs.truncate(limit);
            Ok::<_, crate::store::StoreError>(runs)
        })
        .await?)
    }

    async fn propose(&self, scope: &Scope, op: WorkflowOp) -> Result<WorkflowReply, NexusError> {
        match command::propose(&self.node, scope, Op::Workflow(op)).await? {
            Reply::Workflow(r) => Ok(r),
            other => Err(NexusError::internal(format!("unexpected reply: {other:?}"))),
        }
    }
}

impl Driver for WorkflowService {
    const TOPICS: &'static [&'static str] = &["workflows"];
    const NAME: &'static str = "workflow driver";

    fn node(&self) -> &Cluster {
        &self.node
    }

    async fn pass(self: &Arc<Self>) -> Result<Duration, NexusError> {
        let store = self.node.store.clone();
        let active = blocking(move || {
            let mut out = Vec::new();
            for t in iam::tenants(&store)? {
                for r in workflows::active(&store, &t.id)? {
                    out.push((t.id.clone(), r));
                }
            }
            Ok::<_, crate::store::StoreError>(out)
        })
        .await?;
        // Attempts of runs that ended (cancelled, or failed by another step) stop.
        let live: std::collections::HashSet<(String, String)> = active
            .iter()
            .map(|(t, r)| (t.clone(), r.id.clone()))
            .collect();
        self.attempts
            .abort_where(|(t, run, _)| !live.contains(&(t.clone(), run.clone())));
        let now = now_ms();
        let mut wake = now + automation::MAX_IDLE.as_millis() as i64;
        for (tenant, run) in active {
            match self.tend(&tenant, run, now).await {
                Ok(next) => wake = wake.min(next),
                Err(e) => {
                    tracing::debug!(error = %e, tenant, "tending a workflow run");
                    wake = wake.min(now + RETRY_START.as_millis() as i64);
                }
            }
        }
        Ok(Duration::from_millis((wake - now_ms()).max(0) as u64))
    }

    fn abort_all(&self) {
        self.attempts.abort_all();
    }
}

impl WorkflowService {
    /// The driver: on every node, acting while the node leads, until `stop`.
    pub async fn drive(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        automation::drive(self, stop).await
    }

    /// Starts what run `run` is ready for; returns when to look at it again.
    async fn tend(
        self: &Arc<Self>,
        tenant: &str,
        mut run: RunRecord,
        now: i64,
    ) -> Result<i64, NexusError> {
        let mut wake = i64::MAX;
        for i in 0..run.steps.len() {
            let (def, step) = (run.def.steps[i].clone(), run.steps[i].clone());
            let from = step.state;
            match from {
                StepState::Pending => {
                    let ready = def
                        .after
                        .iter()
                        .all(|a| run.step(a).is_some_and(|s| s.state.lets_through()));
                    if !ready {
                        continue;
                    }
                    if let Some(when) = &def.when {
                        if !when.holds(&context(&run)?) {
                            let op = WorkflowOp::StepSkip {
                                run: run.id.clone(),
                                step: def.id.clone(),
                                at_ms: now,
                            };
                            run = self.step_op(tenant, op).await?;
                            metrics::WORKFLOW_STEPS
                                .with_label_values(&["skipped"])
                                .inc();
                            continue;
                        }
                    }
                }
                StepState::Waiting if step.retry_at_ms > now => {
                    wake = wake.min(step.retry_at_ms);
                    continue;
                }
                StepState::Waiting => {}
                StepState::Running => {
                    let key = (tenant.to_string(), run.id.clone(), def.id.clone());
                    if self.attempts.runs(&key, step.attempt) {
                        continue;
                    }
                    // A deposed leader's attempt. A sleep or a wait resumes where it was;
                    // a tool call is made again if the policy has an attempt left.
                    let retry = workflows::retry_of(&run.def, &def);
                    let resumes = !matches!(def.action, Action::Tool { .. });
                    if !resumes && step.attempt >= retry.max_attempts {
                        let op = WorkflowOp::StepFinish {
                            run: run.id.clone(),
                            step: def.id.clone(),
                            attempt: step.attempt,
                            outcome: StepOutcome::Failed {
                                error: "the leader running its last attempt stopped leading before it finished".into(),
                                retry_at_ms: 0,
                            },
                            at_ms: now,
                        };
                        run = self.step_op(tenant, op).await?;
                        continue;
                    }
                    tracing::warn!(tenant, run = run.id, step = def.id, attempt = step.attempt, "a step's attempt was started by a leader that stopped leading; starting it again");
                }
                _ => continue,
            }
            let after_seq =
                if from == StepState::Pending && matches!(def.action, Action::Event { .. }) {
                    let (store, t) = (self.node.store.clone(), tenant.to_string());
                    blocking(move || events::log(&store, &t)).await?.last_seq()
                } else {
                    0
                };
            let op = WorkflowOp::StepStart {
                run: run.id.clone(),
                step: def.id.clone(),
                from,
                from_attempt: step.attempt,
                attempt: step.attempt + 1,
                after_seq,
                node: self.node.id,
                at_ms: now,
            };
            run = self.step_op(tenant, op).await?;
            if run.state == workflows::RunState::Running {
                self.spawn(tenant, run.clone(), i);
            }
        }
        Ok(wake)
    }

    async fn step_op(&self, tenant: &str, op: WorkflowOp) -> Result<RunRecord, NexusError> {
        match self.propose(&Scope::system(tenant), op).await? {
            WorkflowReply::Run { run, .. } => {
                if run.state != workflows::RunState::Running {
                    metrics::WORKFLOW_RUNS
                        .with_label_values(&[run.state.name()])
                        .inc();
                }
                Ok(run)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Runs step `i`'s started attempt in a task of its own and records its outcome.
    fn spawn(self: &Arc<Self>, tenant: &str, run: RunRecord, i: usize) {
        let step = run.steps[i].clone();
        let key = (tenant.to_string(), run.id.clone(), step.id.clone());
        let this = self.clone();
        let tenant = tenant.to_string();
        self.attempts.spawn(key, step.attempt, async move {
            let def = &run.def.steps[i];
            let retry = workflows::retry_of(&run.def, def);
            let result = this.execute(&tenant, &run, i, &step).await;
            let now = now_ms();
            let outcome = match result {
                Ok(output) => StepOutcome::Succeeded { output },
                Err((e, final_)) => StepOutcome::Failed {
                    retry_at_ms: if final_ {
                        0
                    } else {
                        automation::retry_at(
                            &retry,
                            step.attempt,
                            &e,
                            automation::seed(&tenant, &format!("{}/{}", run.id, step.id), 0, u64::from(step.attempt)),
                            now,
                        )
                    },
                    error: e.to_string(),
                },
            };
            let label = match &outcome {
                StepOutcome::Succeeded { .. } => "succeeded",
                StepOutcome::Failed { retry_at_ms: 0, .. } => "failed",
                StepOutcome::Failed { .. } => "retried",
            };
            metrics::WORKFLOW_STEPS.with_label_values(&[label]).inc();
            let op = WorkflowOp::StepFinish {
                run: run.id.clone(),
                step: step.id.clone(),
                attempt: step.attempt,
                outcome,
                at_ms: now,
            };
            if let Err(e) = this.step_op(&tenant, op).await {
                // The next leader finds the attempt running and starts it again.
                tracing::warn!(error = %e, tenant, run = run.id, step = step.id, "recording a step's outcome");
            }
        });
    }

    /// Runs one attempt of a step; an error with `true` fails the step without a retry.
    async fn execute(
        &self,
        tenant: &str,
        run: &RunRecord,
        i: usize,
        step: &StepRecord,
    ) -> Result<String, (NexusError, bool)> {
        let def = &run.def.steps[i];
        let ctx = context(run).map_err(|e| (e, true))?;
        match &def.action {
            Action::Tool { tool, args } => {
                let field = format!("steps.{}.args", def.id);
                let args: Value =
                    serde_json::from_str(args).map_err(|e| (NexusError::internal(e), true))?;
                let args = template::fill(&args, &ctx, &field).map_err(|e| (e, true))?;
                let retry = workflows::retry_of(&run.def, def);
                automation::within(
                    retry.timeout_ms,
                    automation::call_as_owner(
                        &self.tools,
                        &self.node.store,
                        automation::Acting {
                            tenant,
                            owner: &run.owner,
                            request_id: format!("{}/{}#{}", run.id, def.id, step.attempt),
                            action: "workflows.step",
                        },
                        tool,
                        &args.to_string(),
                    ),
                )
                .await
                .map_err(|e| (e, false))
            }
            Action::Sleep { ms } => {
                let until = step.first_started_ms + *ms as i64;
                let left = (until - now_ms()).max(0) as u64;
                tokio::time::sleep(Duration::from_millis(left)).await;
                Ok(json!({"slept_ms": ms}).to_string())
            }
            Action::Event { topic, timeout_ms } => {
                let field = format!("steps.{}.wait_event.topic", def.id);
                let pattern = template::fill_text(topic, &ctx, &field).map_err(|e| (e, true))?;
                let deadline = step.first_started_ms + *timeout_ms as i64;
                self.wait_event(tenant, &pattern, step.after_seq, deadline)
                    .await
            }
        }
    }

    /// The first event matching `pattern` numbered after `after_seq`, waiting for it until
    /// `deadline_ms`.
    async fn wait_event(
        &self,
        tenant: &str,
        pattern: &str,
        after_seq: u64,
        deadline_ms: i64,
    ) -> Result<String, (NexusError, bool)> {
        let mut changes = self.node.store.watch_changes();
        let mut cursor = after_seq;
        loop {
            let (store, t, p) = (
                self.node.store.clone(),
                tenant.to_string(),
                pattern.to_string(),
            );
            let (found, last) = blocking(move || {
                events::read_after(&store, &t, cursor, 1, 1024, |topic| {
                    events::matches(&p, topic)
                })
            })
            .await
            .map_err(|e| (NexusError::from(e), false))?;
            if let Some(e) = found.into_iter().next() {
                return Ok(json!({
                    "seq": e.seq,
                    "topic": e.topic,
                    "data": serde_json::from_str::<Value>(&e.data).unwrap_or(Value::String(e.data.clone())),
                    "source": e.source,
                    "at_ms": e.at_ms,
                })
                .to_string());
            }
            cursor = last;
            let left = deadline_ms - now_ms();
            if left <= 0 {
                return Err((
                    NexusError::unavailable(format!(
                        "no event matching {pattern} came within the step's wait"
                    )),
                    true,
                ));
            }
            // Until an event of this tenant applies, the deadline, or a second (a missed
            // notice costs at most that).
            let wait = Duration::from_millis(left.min(1000) as u64);
            let _ = tokio::time::timeout(wait, async {
                loop {
                    match changes.recv().await {
                        Ok(c) if c.concerns("events", tenant) => break,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
            .await;
        }
    }
}

/// What a run's placeholders and conditions read: `input`, `run.id`, `workflow`, and each
/// step's `output` and `state`.
fn context(run: &RunRecord) -> Result<Value, NexusError> {
    let input: Value = serde_json::from_str(&run.input).map_err(NexusError::internal)?;
    let steps: serde_json::Map<String, Value> = run
        .steps
        .iter()
        .map(|s| {
            let output = serde_json::from_str::<Value>(&s.output).unwrap_or(Value::Null);
            (
                s.id.clone(),
                json!({"output": output, "state": s.state.name()}),
            )
        })
        .collect();
    Ok(json!({"input": input, "run": {"id": run.id}, "workflow": run.workflow, "steps": steps}))
}

/// A run id: 1 to [`MAX_RUN_ID_BYTES`] of letters, digits, and `-_.:/`.
fn validate_run_id(id: &str) -> Result<(), NexusError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_RUN_ID_BYTES
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(NexusError::invalid(
            "id",
            format!(
                "{:?} is not a run id: 1 to {MAX_RUN_ID_BYTES} of letters, digits, '-', '_', '.', ':' and '/'",
                crate::error::excerpt(id, 64)
            ),
        ))
    }
}

fn unexpected(reply: WorkflowReply) -> NexusError {
    NexusError::internal(format!("unexpected reply: {reply:?}"))
}
