//! The openraft type configuration and the replicated command set.
//!
//! A `Command` carries everything non-deterministic already resolved by the node that proposed
//! it (ids, timestamps), so that applying the same log gives the same state on every node.

use serde::{Deserialize, Serialize};

use crate::audit::{AuditContext, AuditRecordOp};
use crate::error::NexusError;
use crate::iam::{IamOp, IamReply};
use crate::memory::conversations::{ConversationOp, ConversationReply};
use crate::memory::kv::{KvOp, KvReply};
use crate::memory::semantic::{SemanticOp, SemanticReply};
use crate::secrets::{SecretOp, SecretReply};

/// A node as the cluster membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NexusNode {
    /// Address of the internal Raft service.
    pub peer_addr: String,
    /// Address of the public gRPC API.
    pub api_addr: String,
}

impl std::fmt::Display for NexusNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{{peer: {}, api: {}}}", self.peer_addr, self.api_addr)
    }
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
            Op::Audited { op, context } => {
                op.approx_size()
                    + context.request_id.len()
                    + context.principal.len()
                    + context.tenant.len()
                    + context.action.len()
                    + 32
            }
            Op::Audit(r) => r.resource.len() + r.result.len() + 128,
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
            Op::Kv(K::PurgeExpired { items, .. }) => format!("memory/{} expired", items.len()),
            Op::Conversation(C::Create { id, .. } | C::Delete { id }) => {
                format!("conversation/{id}")
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
            Op::Semantic(S::Remember { id, .. } | S::Forget { id, .. }) => {
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
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.op.name();
        write!(f, "{kind}(tenant={})", self.tenant)
    }
}

/// On whose behalf a command is proposed: the request's audit context, and the bearer
/// credential the caller sent. On the leader the command is proposed as
/// `Op::Audited { context, op }`; a follower forwards the credential instead of trusting
/// itself with the principal, and the leader authenticates it again (`ForwardGate`).
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

/// A command waiting to be proposed, and on whose behalf; what a follower forwards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded {
    pub command: Command,
    pub on_behalf: Option<OnBehalf>,
}

impl Forwarded {
    /// The command as the node it was made on proposes it when it leads: audited with its
    /// context (an `Op::Audit` record carries its own).
    pub fn into_local(self) -> Command {
        match self.on_behalf {
            Some(OnBehalf { context, .. }) if !matches!(self.command.op, Op::Audit(_)) => Command {
                tenant: self.command.tenant,
                op: Op::Audited {
                    context,
                    op: Box::new(self.command.op),
                },
            },
            _ => self.command,
        }
    }

    pub fn approx_size(&self) -> usize {
        let behalf = self.on_behalf.as_ref().map_or(0, |b| {
            b.credential.as_ref().map_or(0, String::len)
                + b.context.request_id.len()
                + b.context.principal.len()
                + b.context.tenant.len()
                + b.context.action.len()
                + 32
        });
        self.command.approx_size() + behalf
    }
}

/// What the leader checks before it proposes a command a member forwarded. A peer is a
/// member (the peer port admits only certificates naming one), but a member is not trusted
/// with principals: a forwarded command carries the caller's credential, and the gate
/// authenticates it and checks the command against the principal it finds, as the member's
/// own API would have (`auth::forward`). It never lets a member forward an audit record
/// that it wrote itself.
#[tonic::async_trait]
pub trait ForwardGate: Send + Sync {
    async fn admit(&self, forwarded: Forwarded) -> Result<Command, NexusError>;

    /// Ok when the caller behind a forwarded cluster change (membership, leadership
    /// transfer) may administer the cluster, by its own credential.
    async fn admit_cluster_change(&self, on_behalf: Option<OnBehalf>) -> Result<(), NexusError>;
}

/// One Raft entry's payload: the commands of concurrent clients, proposed together so that
/// they share one log append and one fsync (group commit), and applied in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    pub commands: Vec<Command>,
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
}

/// A command's outcome: a reply, or a rejection decided deterministically by the state machine.
pub type Response = Result<Reply, NexusError>;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Proposal,
        R = Vec<Response>,
        NodeId = u64,
        Node = NexusNode,
        SnapshotData = tokio::fs::File,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NexusNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NexusNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
