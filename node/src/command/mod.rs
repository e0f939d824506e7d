//! The domain side of the replicated state machine: the commands Nexus replicates (`Command`,
//! `Op`), what applying them replies (`Reply`), on whose behalf they are made (`OnBehalf`),
//! and the apply step that dispatches each to memory, conversations, semantic memory, IAM,
//! secrets and audit, under the tenant's existence and quota. [`Nexus`] is the
//! [`Machine`](crate::cluster::Machine) that `cluster/` replicates, which knows none of this.
//!
//! Layering (checked by `node/src/module_graph.rs`): the state modules (`memory`, `iam`,
//! `secrets`, `audit`) know nothing of replication; this module ties them to `cluster`; the
//! services (`service`) propose through it.
//!
//! A `Command` carries everything non-deterministic already resolved by the node that proposed
//! it (ids, timestamps), so that applying the same log gives the same state on every node.

use serde::{Deserialize, Serialize};

use crate::audit::{self, AuditContext, AuditRecordOp, AuditTrimOp};
use crate::cluster::{ClusterNode, Machine};
use crate::error::NexusError;
use crate::events::{self, EventOp, EventReply};
use crate::hooks::{self, HookOp, HookReply};
use crate::iam::{self, IamOp, IamReply};
use crate::memory::conversations::{self, ConversationOp, ConversationReply};
use crate::memory::kv::{self, KvOp, KvReply};
use crate::memory::semantic::{self, SemanticOp, SemanticReply};
use crate::schedules::{self, ScheduleOp, ScheduleReply};
use crate::secrets::{self, SecretOp, SecretReply};
use crate::store::{ApplyCtx, Store, StoreError, SM_FAMILIES};
use crate::tools::{self, ToolOp, ToolReply};
use crate::workflows::{self, WorkflowOp, WorkflowReply};

/// The state machine Nexus replicates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Nexus;

/// This node's member of the Raft group that replicates [`Nexus`].
pub type Cluster = ClusterNode<Nexus>;
/// What a member forwards to the leader.
pub type Forwarded = crate::cluster::Forwarded<Nexus>;
/// A command's outcome: a reply, or a rejection decided deterministically by the state machine.
pub type Response = Result<Reply, NexusError>;

impl Machine for Nexus {
    type Command = Command;
    type Reply = Reply;
    type Behalf = OnBehalf;

    const FAMILIES: &'static [&'static str] = SM_FAMILIES;

    fn approx_size(command: &Command) -> usize {
        command.approx_size()
    }

    fn behalf_size(b: &OnBehalf) -> usize {
        b.credential.as_ref().map_or(0, String::len) + b.context.approx_size()
    }

    /// Audited with the caller's context (an `Op::Audit` record carries its own).
    fn local(command: Command, behalf: Option<OnBehalf>) -> Command {
        match behalf {
            Some(OnBehalf { context, .. })
                if !matches!(command.op, Op::Audit(_) | Op::AuditTrim(_)) =>
            {
                Command {
                    tenant: command.tenant,
                    op: Op::Audited {
                        context,
                        op: Box::new(command.op),
                    },
                }
            }
            _ => command,
        }
    }

    fn apply(ctx: &mut ApplyCtx<'_>, command: &Command) -> Result<Response, StoreError> {
        apply_op(ctx, &command.tenant, &command.op)
    }

    fn applied(store: &Store, commands: &[Command]) {
        if commands.iter().any(|c| matches!(c.op.inner(), Op::Iam(_))) {
            store.identities_changed();
        }
        // Tenants whose tool registry or schedules changed, each told once per entry.
        for (topic, concerns) in [
            ("tools", (|op| matches!(op, Op::Tool(_))) as fn(&Op) -> bool),
            ("schedules", |op| matches!(op, Op::Schedule(_))),
            ("workflows", |op| matches!(op, Op::Workflow(_))),
            ("hooks", |op| matches!(op, Op::Hook(_))),
            ("events", |op| {
                matches!(
                    op,
                    Op::Event(_)
                        | Op::Kv(_)
                        | Op::Semantic(_)
                        | Op::Conversation(_)
                        | Op::Hook(crate::hooks::HookOp::Receive { .. })
                )
            }),
        ] {
            let mut told: Vec<&str> = Vec::new();
            for c in commands {
                if concerns(c.op.inner()) && !told.contains(&c.tenant.as_str()) {
                    told.push(&c.tenant);
                    store.changed(topic, Some(&c.tenant));
                }
            }
        }
    }

    fn replaced(store: &Store) -> Result<(), StoreError> {
        // A snapshot from an older build.
        bring_up_to_date(store)?;
        store.identities_changed();
        store.changed("tools", None);
        store.changed("schedules", None);
        store.changed("events", None);
        store.changed("workflows", None);
        store.changed("hooks", None);
        Ok(())
    }
}

/// What an older build's state lacks, made on open and after a snapshot install: each
/// tenant's usage figures (format 3) and the audit log's chain per tenant (format 5).
pub fn bring_up_to_date(store: &Store) -> Result<(), StoreError> {
    if crate::store::usage::missing(store)? {
        let tenants = crate::store::usage::recompute(store)?;
        tracing::info!(
            tenants,
            "computed each tenant's stored items and bytes (kept from now on)"
        );
    }
    if audit::needs_migration(store)? {
        match audit::format4::verify(store)? {
            None => tracing::info!("the format-4 audit chain verifies; re-chaining it per tenant"),
            Some(problem) => tracing::warn!(
                %problem,
                "the format-4 audit chain does NOT verify; re-chaining it per tenant anyway (keep a copy of this data directory as evidence)"
            ),
        }
        let tenants: Vec<String> = iam::tenants(store)?
            .into_iter()
            .map(|t| t.id)
            .filter(|t| t != crate::iam::principal::DEFAULT_TENANT)
            .collect();
        let moved = audit::migrate_to_chains(store, &tenants)?;
        tracing::info!(records = moved, "audit records re-chained per tenant");
    }
    Ok(())
}

/// On whose behalf a command is proposed: the request's audit context, and the bearer
/// credential the caller sent. On the leader the command is proposed as
/// `Op::Audited { context, op }`; a follower forwards the credential instead of trusting
/// itself with the principal, and the leader authenticates it again (`auth::forward`).
#[derive(Clone, Serialize, Deserialize)]
pub struct OnBehalf {
    pub context: AuditContext,
    /// Never logged (see the `Debug` impl).
    pub credential: Option<String>,
}

impl std::fmt::Debug for OnBehalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnBehalf")
            .field("context", &self.context)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Where a write lands and whom it is made for: the tenant, and the request's caller (None:
/// the node itself). Passed explicitly from the API layer to every service that writes.
#[derive(Debug, Clone)]
pub struct Scope {
    pub tenant: String,
    pub on_behalf: Option<OnBehalf>,
}

impl Scope {
    /// A write the node makes itself (sweepers, start-up, tests): audited as nobody's.
    pub fn system(tenant: &str) -> Self {
        Scope {
            tenant: tenant.to_string(),
            on_behalf: None,
        }
    }

    /// The same caller, writing into `tenant` (an administrator acting on another tenant).
    pub fn in_tenant(&self, tenant: &str) -> Self {
        Scope {
            tenant: tenant.to_string(),
            on_behalf: self.on_behalf.clone(),
        }
    }
}

/// Proposes `op` in `scope`'s tenant, on behalf of its caller, and waits for it to apply.
pub async fn propose(cluster: &Cluster, scope: &Scope, op: Op) -> Result<Reply, NexusError> {
    let command = Command {
        tenant: scope.tenant.clone(),
        op,
    };
    cluster.propose(command, scope.on_behalf.clone()).await
}

/// One replicated write, scoped to a tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Command {
    pub tenant: String,
    pub op: Op,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    Kv(KvOp),
    Conversation(ConversationOp),
    /// Appended last: a variant's position is part of the log's encoding.
    Semantic(SemanticOp),
    Iam(IamOp),
    Secret(SecretOp),
    /// A command made on behalf of a principal: applied as `op`, with its audit record
    /// appended in the same step.
    Audited {
        context: AuditContext,
        op: Box<Op>,
    },
    /// An audit record of something that changed nothing (a denial, a secret read).
    Audit(AuditRecordOp),
    /// Retention: removes the oldest records of the command's tenant's audit chain (the
    /// leader's `service::audit_retention`, never forwarded by a member).
    AuditTrim(AuditTrimOp),
    /// The tool registry (`tools`).
    Tool(ToolOp),
    /// Schedules and their runs (`schedules`).
    Schedule(ScheduleOp),
    /// Events published through the API (`events`; memory changes add theirs in apply).
    Event(EventOp),
    /// Workflow definitions and runs (`workflows`).
    Workflow(WorkflowOp),
    /// Triggers, webhooks, inbound endpoints and deliveries (`hooks`).
    Hook(HookOp),
}

impl Op {
    /// The command itself, without its audit wrapping.
    pub fn inner(&self) -> &Op {
        match self {
            Op::Audited { op, .. } => op.inner(),
            other => other,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::Kv(op) => op.name(),
            Op::Conversation(op) => op.name(),
            Op::Semantic(op) => op.name(),
            Op::Iam(op) => op.name(),
            Op::Secret(op) => op.name(),
            Op::Audited { op, .. } => op.name(),
            Op::Audit(_) => "audit.record",
            Op::AuditTrim(_) => "audit.trim",
            Op::Tool(op) => op.name(),
            Op::Schedule(op) => op.name(),
            Op::Event(op) => op.name(),
            Op::Workflow(op) => op.name(),
            Op::Hook(op) => op.name(),
        }
    }

    /// Roughly how many bytes the op takes in a log entry.
    pub fn approx_size(&self) -> usize {
        match self {
            Op::Kv(op) => op.approx_size(),
            Op::Conversation(op) => op.approx_size(),
            Op::Semantic(op) => op.approx_size(),
            Op::Iam(op) => op.approx_size(),
            Op::Secret(op) => op.approx_size(),
            Op::Audited { op, context } => op.approx_size() + context.approx_size(),
            Op::Audit(r) => r.resource.len() + r.result.len() + 128,
            Op::AuditTrim(_) => 24,
            Op::Tool(op) => op.approx_size(),
            Op::Schedule(op) => op.approx_size(),
            Op::Event(op) => op.approx_size(),
            Op::Workflow(op) => op.approx_size(),
            Op::Hook(op) => op.approx_size(),
        }
    }

    /// What the command acts on, for the audit log.
    pub fn resource(&self, tenant: &str) -> String {
        use crate::iam::IamOp as I;
        use crate::memory::conversations::ConversationOp as C;
        use crate::memory::kv::KvOp as K;
        use crate::memory::semantic::SemanticOp as S;
        match self {
            Op::Kv(K::Put { namespace, key, .. } | K::Delete { namespace, key, .. }) => {
                format!("memory/{namespace}/{key}")
            }
            Op::Kv(K::PurgeExpired { items, .. }) => {
                // The first few by name, bounded: a sweep removes up to a thousand.
                let names: Vec<String> = items
                    .iter()
                    .take(8)
                    .map(|(namespace, key, _)| format!("memory/{namespace}/{key}"))
                    .collect();
                let more = items.len().saturating_sub(names.len());
                match more {
                    0 => format!("{} expired", names.join(", ")),
                    n => format!("{} and {n} more expired", names.join(", ")),
                }
            }
            Op::Conversation(C::Create { id, .. } | C::Delete { id }) => {
                format!("conversation/{id}")
            }
            Op::Conversation(C::EmbedMessages { items, .. }) => {
                format!("{} message vectors", items.len())
            }
            Op::Conversation(
                C::Append {
                    conversation_id,
                    messages,
                    ..
                }
                | C::AppendWithVectors {
                    conversation_id,
                    messages,
                    ..
                },
            ) => format!(
                "conversation/{conversation_id} +{} messages",
                messages.len()
            ),
            Op::Semantic(S::Remember { id, .. } | S::Forget { id, .. } | S::Embed { id, .. }) => {
                format!("semantic/{id}")
            }
            Op::Iam(
                I::CreateTenant { .. }
                | I::SetTenantState { .. }
                | I::DeleteTenant
                | I::SetTenantLimits { .. },
            ) => format!("tenant/{tenant}"),
            Op::Iam(I::CreateKey {
                id,
                service_account,
                ..
            }) => format!("key/{id} sa:{service_account}"),
            Op::Iam(I::RevokeKey { id, .. }) => format!("key/{id}"),
            Op::Iam(I::PutRole { name, .. } | I::DeleteRole { name }) => format!("role/{name}"),
            Op::Iam(
                I::CreateBinding {
                    principal, role, ..
                }
                | I::DeleteBinding { principal, role },
            ) => format!("binding/{principal}/{role}"),
            Op::Secret(
                crate::secrets::SecretOp::Set { name, .. }
                | crate::secrets::SecretOp::Delete { name },
            ) => format!("secret/{name}"),
            Op::Secret(crate::secrets::SecretOp::Rewrap { .. }) => "data key".into(),
            Op::Audited { op, .. } => op.resource(tenant),
            Op::Audit(r) => r.resource.clone(),
            Op::AuditTrim(t) => format!("audit/{tenant} through {}", t.through_seq),
            Op::Tool(op) => op.resource(),
            Op::Schedule(op) => op.resource(),
            Op::Event(op) => op.resource(),
            Op::Workflow(op) => op.resource(),
            Op::Hook(op) => op.resource(),
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.op.name();
        write!(f, "{kind}(tenant={})", self.tenant)
    }
}

impl Command {
    /// Roughly how many bytes this command adds to a log entry, to bound proposal batches.
    pub fn approx_size(&self) -> usize {
        self.tenant.len() + self.op.approx_size() + 16
    }
}

/// What applying a command produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    Kv(KvReply),
    Conversation(ConversationReply),
    Semantic(SemanticReply),
    Iam(IamReply),
    Secret(SecretReply),
    /// An audit record was appended.
    Audited,
    /// Retention removed this many audit records.
    AuditTrimmed {
        removed: u64,
    },
    Tool(ToolReply),
    Schedule(ScheduleReply),
    Event(EventReply),
    Workflow(WorkflowReply),
    Hook(HookReply),
}

/// Applies one command in this step: its change and, when audited, its audit record.
fn apply_op(ctx: &mut ApplyCtx<'_>, tenant: &str, op: &Op) -> Result<Response, StoreError> {
    match op {
        Op::Audited { context, op } => {
            let response = apply_op(ctx, tenant, op)?;
            let mut resource = op.resource(tenant);
            if tenant != context.tenant {
                resource = format!("{resource} (tenant {tenant})");
            }
            audit::append(ctx, context, resource, audit::result_text(&response))?;
            return Ok(response);
        }
        Op::Audit(r) => {
            audit::append(ctx, &r.context, r.resource.clone(), r.result.clone())?;
            return Ok(Ok(Reply::Audited));
        }
        Op::AuditTrim(t) => {
            let removed = audit::trim(ctx, tenant, t)?;
            return Ok(Ok(Reply::AuditTrimmed { removed }));
        }
        _ => {}
    }
    // A tenant deleted while a request was in flight takes no new data.
    if !matches!(op, Op::Iam(_)) && !iam::tenant_exists_in(ctx, tenant)? {
        return Ok(Err(NexusError::NotFound(format!(
            "tenant {tenant} not found"
        ))));
    }
    // Data stays within the tenant's stored items and bytes, or is undone. Not limited:
    // identities, and re-wrapping data keys (a master-key rotation must reach every tenant).
    // Nor a vector the node itself adds to a memory stored without one (re-embedding): the
    // tenant stored the memory within its limits. Nor the leader's records of a schedule's
    // runs: the tenant made the schedule within them, and its runs are kept by count.
    let limits = match op {
        Op::Iam(_)
        | Op::Secret(crate::secrets::SecretOp::Rewrap { .. })
        | Op::Semantic(crate::memory::semantic::SemanticOp::Embed { .. })
        | Op::Conversation(crate::memory::conversations::ConversationOp::EmbedMessages {
            ..
        }) => None,
        Op::Schedule(op) if op.is_the_leaders() => None,
        Op::Workflow(op) if op.is_the_leaders() => None,
        Op::Hook(op) if op.is_the_leaders() => None,
        _ => iam::limits_in(ctx, tenant)?.filter(|l| l.max_items > 0 || l.max_bytes > 0),
    };
    let Some(limits) = limits else {
        return apply_data(ctx, tenant, op);
    };
    let before = ctx.usage(tenant)?;
    let savepoint = ctx.savepoint();
    let response = apply_data(ctx, tenant, op)?;
    let after = ctx.usage(tenant)?;
    let over = |limit: &str, max: u64, before: u64, after: u64, unit: &str| {
        (max > 0 && after > before && after > max).then(|| NexusError::ResourceExhausted {
            limit: limit.to_string(),
            message: format!(
                "tenant {tenant} would store {after} {unit}, over its limit of {max} \
                 (now {before}); delete some or raise {limit}"
            ),
        })
    };
    let refused = over(
        "quotas.max_items",
        limits.max_items,
        before.items,
        after.items,
        "items",
    )
    .or_else(|| {
        over(
            "quotas.max_bytes",
            limits.max_bytes,
            before.bytes,
            after.bytes,
            "bytes",
        )
    });
    match refused {
        Some(e) if response.is_ok() => {
            ctx.rollback(savepoint);
            Ok(Err(e))
        }
        _ => {
            ctx.release(savepoint);
            Ok(response)
        }
    }
}

fn apply_data(ctx: &mut ApplyCtx<'_>, tenant: &str, op: &Op) -> Result<Response, StoreError> {
    // A forgotten memory's namespace, for its event, read before it goes.
    let forgotten = match op {
        Op::Semantic(crate::memory::semantic::SemanticOp::Forget { seq, .. }) => ctx
            .get_decoded::<crate::memory::semantic::SemanticRecord>(
                crate::store::CF_SEMANTIC,
                &crate::store::keys::semantic_key(tenant, *seq),
            )?
            .map(|r| r.namespace),
        _ => None,
    };
    let response = apply_family(ctx, tenant, op)?;
    // A memory change publishes its event in the same step: a subscriber sees every change
    // that applied, in order, on every node.
    if response.is_ok() {
        let (changes, at_ms) = memory_events(op, forgotten.as_deref());
        if !changes.is_empty() {
            events::append(ctx, tenant, &changes, "nexus", at_ms)?;
        }
    }
    Ok(response)
}

fn apply_family(ctx: &mut ApplyCtx<'_>, tenant: &str, op: &Op) -> Result<Response, StoreError> {
    Ok(match op {
        Op::Kv(op) => kv::apply(ctx, tenant, op)?.map(Reply::Kv),
        Op::Conversation(op) => conversations::apply(ctx, tenant, op)?.map(Reply::Conversation),
        Op::Semantic(op) => semantic::apply(ctx, tenant, op)?.map(Reply::Semantic),
        Op::Iam(op) => iam::apply(ctx, tenant, op)?.map(Reply::Iam),
        Op::Secret(op) => secrets::apply(ctx, tenant, op)?.map(Reply::Secret),
        Op::Tool(op) => tools::apply(ctx, tenant, op)?.map(Reply::Tool),
        Op::Schedule(op) => schedules::apply(ctx, tenant, op)?.map(Reply::Schedule),
        Op::Event(op) => events::apply(ctx, tenant, op)?.map(Reply::Event),
        Op::Workflow(op) => workflows::apply(ctx, tenant, op)?.map(Reply::Workflow),
        Op::Hook(op) => hooks::apply(ctx, tenant, op)?.map(Reply::Hook),
        Op::Audited { .. } | Op::Audit(_) | Op::AuditTrim(_) => unreachable!("handled above"),
    })
}

/// The state machine's own events for a memory change that applied, given what the op
/// removed (a forgotten memory's namespace, read before it applied), and the op's time.
pub fn memory_events(
    op: &Op,
    forgotten_namespace: Option<&str>,
) -> (Vec<events::NewEvent>, Option<i64>) {
    use crate::memory::conversations::ConversationOp as C;
    use crate::memory::kv::KvOp as K;
    use crate::memory::semantic::SemanticOp as S;
    let event = |topic: String, data: serde_json::Value| events::NewEvent {
        topic,
        data: data.to_string(),
    };
    let events = match op {
        Op::Kv(K::Put { namespace, key, .. }) => vec![event(
            format!("memory.put.{namespace}"),
            serde_json::json!({"namespace": namespace, "key": key}),
        )],
        Op::Kv(K::Delete { namespace, key, .. }) => vec![event(
            format!("memory.delete.{namespace}"),
            serde_json::json!({"namespace": namespace, "key": key}),
        )],
        Op::Semantic(S::Remember { id, namespace, .. }) => vec![event(
            format!("memory.remember.{namespace}"),
            serde_json::json!({"namespace": namespace, "id": id}),
        )],
        Op::Semantic(S::Forget { id, .. }) => match forgotten_namespace {
            Some(namespace) => vec![event(
                format!("memory.forget.{namespace}"),
                serde_json::json!({"namespace": namespace, "id": id}),
            )],
            None => Vec::new(),
        },
        Op::Conversation(
            C::Append {
                conversation_id,
                messages,
                ..
            }
            | C::AppendWithVectors {
                conversation_id,
                messages,
                ..
            },
        ) => vec![event(
            format!("conversation.append.{conversation_id}"),
            serde_json::json!({"conversation_id": conversation_id, "messages": messages.len()}),
        )],
        _ => Vec::new(),
    };
    let at = match op {
        Op::Kv(K::Put { now_ms, .. } | K::Delete { now_ms, .. })
        | Op::Semantic(S::Remember { now_ms, .. })
        | Op::Conversation(C::Append { now_ms, .. } | C::AppendWithVectors { now_ms, .. }) => {
            Some(*now_ms)
        }
        _ => None,
    };
    (events, at)
}
