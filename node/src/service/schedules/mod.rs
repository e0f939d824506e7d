//! Schedules: what the API calls (add, update, pause, resume, delete, preview, runs, replay)
//! and the leader's scheduler, which fires due times and runs their targets.
//!
//! The scheduler is in `scheduler.rs`.

mod scheduler;

pub use scheduler::jitter_ms;
use scheduler::Running;

use std::sync::Arc;

use serde_json::Value;

use crate::cluster::ReadConsistency;
use crate::command::{self, Cluster, Op, Reply, Scope};
use crate::error::NexusError;
use crate::iam;
use crate::memory::now_ms;
use crate::schedules::{
    self, Overlap, RetryPolicy, RunRecord, RunState, ScheduleOp, ScheduleRecord, ScheduleReply,
    Spec,
};
use crate::store::blocking;

use super::tools::ToolService;
use super::Caller;

/// Most schedules a tenant may have (each is read by every pass of the leader).
pub const MAX_SCHEDULES_PER_TENANT: usize = 1000;
/// Longest description.
const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Largest arguments, JSON text.
const MAX_ARGS_BYTES: usize = 64 * 1024;
/// Longest jitter and catch-up window.
const MAX_JITTER_MS: u64 = 3_600_000;
const MAX_CATCH_UP_MS: u64 = 7 * 24 * 3_600_000;
/// Catch-up window when a schedule does not say.
pub const DEFAULT_CATCH_UP_MS: u64 = 60_000;
/// Most due times a preview lists.
pub const MAX_PREVIEW: usize = 100;

/// What a person asks for; the service fills in the rest.
#[derive(Debug, Clone)]
pub struct ScheduleInput {
    pub name: String,
    pub description: String,
    pub spec: Spec,
    pub tool: String,
    pub args: String,
    pub overlap: Overlap,
    pub jitter_ms: u64,
    /// None: [`DEFAULT_CATCH_UP_MS`].
    pub catch_up_ms: Option<u64>,
    pub retry: RetryPolicy,
    /// 0: [`schedules::DEFAULT_KEEP_RUNS`].
    pub keep_runs: u32,
    pub paused: bool,
}

pub struct ScheduleService {
    node: Arc<Cluster>,
    tools: Arc<ToolService>,
    running: Arc<Running>,
}

impl ScheduleService {
    pub fn new(node: Arc<Cluster>, tools: Arc<ToolService>) -> Arc<Self> {
        Arc::new(ScheduleService {
            node,
            tools,
            running: Arc::default(),
        })
    }

    /// Makes a schedule (`replace`: or replaces the one of that name, keeping its runs).
    pub async fn put(
        &self,
        caller: &Caller,
        input: ScheduleInput,
        replace: bool,
    ) -> Result<ScheduleRecord, NexusError> {
        schedules::validate_name("name", &input.name)?;
        input.spec.validate()?;
        if input.description.len() > MAX_DESCRIPTION_BYTES {
            return Err(NexusError::invalid(
                "description",
                format!(
                    "is {} bytes; at most {MAX_DESCRIPTION_BYTES}",
                    input.description.len()
                ),
            ));
        }
        validate_args(&input.args)?;
        if input.jitter_ms > MAX_JITTER_MS {
            return Err(NexusError::invalid("jitter", "is longer than an hour"));
        }
        let catch_up_ms = input.catch_up_ms.unwrap_or(DEFAULT_CATCH_UP_MS);
        if catch_up_ms > MAX_CATCH_UP_MS {
            return Err(NexusError::invalid("catch_up", "is longer than 7 days"));
        }
        super::automation::validate_retry("retry", &input.retry)?;
        let keep_runs = match input.keep_runs {
            0 => schedules::DEFAULT_KEEP_RUNS,
            n if n > schedules::MAX_KEEP_RUNS => {
                return Err(NexusError::invalid(
                    "keep_runs",
                    format!("is {n}; at most {}", schedules::MAX_KEEP_RUNS),
                ))
            }
            n => n,
        };
        // The tool must exist for the caller, and the caller must be allowed to call it: a
        // schedule calls nothing its maker could not.
        if input.tool.is_empty() {
            return Err(NexusError::invalid("tool", "is required"));
        }
        self.tools
            .describe(caller, &input.tool, ReadConsistency::Linearizable)
            .await
            .map_err(|e| match e {
                NexusError::NotFound(m) => NexusError::invalid("tool", m),
                NexusError::InvalidArgument { message, .. } => NexusError::invalid("tool", message),
                other => other,
            })?;
        iam::rbac::authorize("tools.call", &input.tool, caller)?;
        let tenant = caller.tenant.clone();
        self.node
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let existing = schedules::read(&self.node.store, &tenant, &input.name)?;
        match (&existing, replace) {
            (Some(_), false) => {
                return Err(NexusError::AlreadyExists(format!(
                    "schedule {} exists; update it or delete it first",
                    input.name
                )))
            }
            (None, true) => {
                return Err(NexusError::NotFound(format!(
                    "schedule {} not found",
                    input.name
                )))
            }
            (None, false) => {
                let (store, t) = (self.node.store.clone(), tenant.clone());
                let count = blocking(move || schedules::list(&store, &t)).await?.len();
                if count >= MAX_SCHEDULES_PER_TENANT {
                    return Err(NexusError::ResourceExhausted {
                        limit: "schedules per tenant".into(),
                        message: format!(
                            "tenant {tenant} has {count} schedules, the most it may have"
                        ),
                    });
                }
            }
            (Some(_), true) => {}
        }
        let now = now_ms();
        // An interval counts from when the schedule was first made.
        let anchor = existing.as_ref().map_or(now, |s| s.created_at_ms);
        let next_due_ms = input.spec.next_after(anchor, now)?.unwrap_or(0);
        if next_due_ms == 0 {
            let field = if matches!(input.spec, Spec::At { .. }) {
                "at"
            } else {
                "cron"
            };
            return Err(NexusError::invalid(field, "is never due after now"));
        }
        let record = ScheduleRecord {
            name: input.name,
            description: input.description,
            spec: input.spec,
            tool: input.tool,
            args: input.args,
            owner: caller.subject.clone(),
            overlap: input.overlap,
            jitter_ms: input.jitter_ms,
            catch_up_ms,
            retry: input.retry,
            keep_runs,
            paused: input.paused,
            next_due_ms,
            active: 0,
            queued_due_ms: 0,
            runs: 0,
            fired: 0,
            created_at_ms: now,
            updated_at_ms: now,
        };
        match self
            .propose(&caller.scope(), ScheduleOp::Put { schedule: record })
            .await?
        {
            ScheduleReply::Schedule(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete(&self, caller: &Caller, name: &str) -> Result<u64, NexusError> {
        schedules::validate_name("name", name)?;
        match self
            .propose(&caller.scope(), ScheduleOp::Delete { name: name.into() })
            .await?
        {
            ScheduleReply::Deleted { runs } => Ok(runs),
            other => Err(unexpected(other)),
        }
    }

    /// Pauses or resumes; a resumed schedule's next due time is the first after now.
    pub async fn set_paused(
        &self,
        caller: &Caller,
        name: &str,
        paused: bool,
    ) -> Result<ScheduleRecord, NexusError> {
        let s = self
            .get(&caller.tenant, name, ReadConsistency::Linearizable)
            .await?;
        let now = now_ms();
        let next_due_ms = s.spec.next_after(s.created_at_ms, now)?.unwrap_or(0);
        match self
            .propose(
                &caller.scope(),
                ScheduleOp::SetPaused {
                    name: name.into(),
                    paused,
                    next_due_ms,
                    at_ms: now,
                },
            )
            .await?
        {
            ScheduleReply::Schedule(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a dead run again (its first attempt at once, then its retries).
    pub async fn replay(
        &self,
        caller: &Caller,
        name: &str,
        due_ms: i64,
    ) -> Result<RunRecord, NexusError> {
        schedules::validate_name("name", name)?;
        match self
            .propose(
                &caller.scope(),
                ScheduleOp::Replay {
                    name: name.into(),
                    due_ms,
                    at_ms: now_ms(),
                },
            )
            .await?
        {
            ScheduleReply::Run(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn get(
        &self,
        tenant: &str,
        name: &str,
        consistency: ReadConsistency,
    ) -> Result<ScheduleRecord, NexusError> {
        schedules::validate_name("name", name)?;
        self.node.read_barrier(consistency).await?;
        schedules::read(&self.node.store, tenant, name)?
            .ok_or_else(|| NexusError::NotFound(format!("schedule {name} not found")))
    }

    pub async fn list(
        &self,
        tenant: &str,
        consistency: ReadConsistency,
    ) -> Result<Vec<ScheduleRecord>, NexusError> {
        self.node.read_barrier(consistency).await?;
        let (store, tenant) = (self.node.store.clone(), tenant.to_string());
        Ok(blocking(move || schedules::list(&store, &tenant)).await?)
    }

    /// The next `count` due times from now (each with its jitter: when it will start).
    pub async fn preview(
        &self,
        tenant: &str,
        name: &str,
        count: usize,
    ) -> Result<Vec<(i64, i64)>, NexusError> {
        if count == 0 || count > MAX_PREVIEW {
            return Err(NexusError::invalid(
                "count",
                format!("is {count}; 1 to {MAX_PREVIEW}"),
            ));
        }
        let s = self.get(tenant, name, ReadConsistency::Stale).await?;
        let mut out = Vec::with_capacity(count);
        let mut due = s.next_due_ms;
        while due != 0 && out.len() < count {
            out.push((
                due,
                due + jitter_ms(tenant, &s.name, due, s.jitter_ms) as i64,
            ));
            due = s.spec.next_after(s.created_at_ms, due)?.unwrap_or(0);
        }
        Ok(out)
    }

    /// A schedule's runs, newest first (`dead`: only the dead-letter list).
    pub async fn runs(
        &self,
        tenant: &str,
        name: &str,
        limit: usize,
        dead: bool,
        consistency: ReadConsistency,
    ) -> Result<Vec<RunRecord>, NexusError> {
        self.get(tenant, name, consistency).await?;
        let (store, t, n) = (
            self.node.store.clone(),
            tenant.to_string(),
            name.to_string(),
        );
        let mut runs = blocking(move || {
            schedules::runs(&store, &t, &n, schedules::MAX_KEEP_RUNS as usize + 8)
        })
        .await?;
        if dead {
            runs.retain(|r| r.state == RunState::Dead);
        }
        runs.truncate(limit);
        Ok(runs)
    }

    async fn propose(&self, scope: &Scope, op: ScheduleOp) -> Result<ScheduleReply, NexusError> {
        match command::propose(&self.node, scope, Op::Schedule(op)).await? {
            Reply::Schedule(r) => Ok(r),
            other => Err(NexusError::internal(format!("unexpected reply: {other:?}"))),
        }
    }
}

fn unexpected(reply: ScheduleReply) -> NexusError {
    NexusError::internal(format!("unexpected reply: {reply:?}"))
}

/// Arguments: a JSON object, or text with placeholders (`${secrets.NAME}`, `${run.id}`) that
/// makes one once they are filled.
fn validate_args(args: &str) -> Result<(), NexusError> {
    if args.len() > MAX_ARGS_BYTES {
        return Err(NexusError::invalid(
            "args",
            format!("is {} bytes; at most {MAX_ARGS_BYTES}", args.len()),
        ));
    }
    if args.trim().is_empty() || args.contains("${") {
        return Ok(());
    }
    match serde_json::from_str::<Value>(args) {
        Ok(v) if v.is_object() => Ok(()),
        Ok(_) => Err(NexusError::invalid("args", "must be a JSON object")),
        Err(e) => Err(NexusError::invalid("args", format!("is not JSON: {e}"))),
    }
}
