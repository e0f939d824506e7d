//! The openraft type configuration and the replicated command set.
//!
//! A `Command` carries everything non-deterministic already resolved by the node that proposed
//! it (ids, timestamps), so that applying the same log gives the same state on every node.

use serde::{Deserialize, Serialize};

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
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.op {
            Op::Kv(op) => op.name(),
            Op::Conversation(op) => op.name(),
            Op::Semantic(op) => op.name(),
            Op::Iam(op) => op.name(),
            Op::Secret(op) => op.name(),
        };
        write!(f, "{kind}(tenant={})", self.tenant)
    }
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
        let body = match &self.op {
            Op::Kv(op) => op.approx_size(),
            Op::Conversation(op) => op.approx_size(),
            Op::Semantic(op) => op.approx_size(),
            Op::Iam(op) => op.approx_size(),
            Op::Secret(op) => op.approx_size(),
        };
        self.tenant.len() + body + 16
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
