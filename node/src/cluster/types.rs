//! The openraft type configuration, generic over the state machine it replicates.
//!
//! `cluster/` replicates commands it does not understand: what a command is, what applying it
//! does and on whose behalf it is made belong to a [`Machine`], implemented on the domain side
//! (`crate::command`). The layer asks of a command only its size (to bound batches), how it is
//! proposed on someone's behalf, and how to apply it into one RocksDB write batch.

use std::fmt::{Debug, Display};
use std::marker::PhantomData;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::NexusError;
use crate::store::{ApplyCtx, Store, StoreError};

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

/// What the replication layer replicates: the domain's commands, their replies, and the
/// apply step. Implemented by a marker type (`crate::command::Nexus`); nothing here depends on
/// what the commands mean.
///
/// Apply must be deterministic: it reads only the store (through the step's `ApplyCtx`) and
/// the command, so that every node applying the same log holds the same state.
pub trait Machine:
    Debug + Clone + Copy + Default + Eq + Ord + Send + Sync + Unpin + 'static
{
    /// One replicated write. Its encoding is part of the log's format.
    type Command: Debug
        + Display
        + Clone
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + Unpin
        + 'static;
    /// What applying a command produced.
    type Reply: Debug + Clone + Serialize + DeserializeOwned + Send + Sync + Unpin + 'static;
    /// On whose behalf a command is proposed. A follower forwards it with the command; the
    /// leader's [`ForwardGate`] checks it and makes the command it proposes.
    type Behalf: Debug + Clone + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The families whose contents make up the state, and so a snapshot (the order is part of
    /// the snapshot format).
    const FAMILIES: &'static [&'static str];

    /// Roughly how many bytes the command adds to a log entry, to bound proposal batches.
    fn approx_size(command: &Self::Command) -> usize;

    /// Roughly how many bytes `behalf` adds to a forwarded request.
    fn behalf_size(behalf: &Self::Behalf) -> usize;

    /// The command as the node it was made on proposes it when it leads, on behalf of whom
    /// `behalf` names (None: the node itself).
    fn local(command: Self::Command, behalf: Option<Self::Behalf>) -> Self::Command;

    /// Applies one command into the step. `Ok(Err(_))` is a rejection the state machine
    /// decided (every node decides the same); `Err(_)` is a storage failure.
    fn apply(
        ctx: &mut ApplyCtx<'_>,
        command: &Self::Command,
    ) -> Result<Result<Self::Reply, NexusError>, StoreError>;

    /// Called once an entry's commands are written (caches of the domain to invalidate).
    fn applied(store: &Store, commands: &[Self::Command]);

    /// Called after a snapshot replaced the state wholesale (derived figures to recompute,
    /// caches to drop), before the install is reported done.
    fn replaced(store: &Store) -> Result<(), StoreError>;
}

/// A command waiting to be proposed, and on whose behalf; what a follower forwards.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Forwarded<M: Machine> {
    pub command: M::Command,
    pub on_behalf: Option<M::Behalf>,
}

impl<M: Machine> Forwarded<M> {
    /// The command as this node proposes it when it leads.
    pub fn into_local(self) -> M::Command {
        M::local(self.command, self.on_behalf)
    }

    pub fn approx_size(&self) -> usize {
        M::approx_size(&self.command) + self.on_behalf.as_ref().map_or(0, M::behalf_size)
    }
}

/// What the leader checks before it proposes a command a member forwarded. A peer is a
/// member (the peer port admits only certificates naming one), but a member is not trusted
/// with principals: a forwarded command carries the caller's credential, and the gate
/// authenticates it and checks the command against the principal it finds, as the member's
/// own API would have (`auth::forward`).
#[tonic::async_trait]
pub trait ForwardGate<M: Machine>: Send + Sync {
    async fn admit(&self, forwarded: Forwarded<M>) -> Result<M::Command, NexusError>;

    /// Ok when the caller behind a forwarded cluster change (membership, leadership
    /// transfer) may administer the cluster, by its own credential.
    async fn admit_cluster_change(&self, on_behalf: Option<M::Behalf>) -> Result<(), NexusError>;
}

/// One Raft entry's payload: the commands of concurrent clients, proposed together so that
/// they share one log append and one fsync (group commit), and applied in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Proposal<M: Machine> {
    pub commands: Vec<M::Command>,
}

/// A command's outcome: a reply, or a rejection decided deterministically by the state machine.
pub type Response<M> = Result<<M as Machine>::Reply, NexusError>;

/// The openraft type configuration of a Raft group replicating `M`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct TypeConfig<M>(PhantomData<M>);

impl<M: Machine> openraft::RaftTypeConfig for TypeConfig<M> {
    type D = Proposal<M>;
    type R = Vec<Response<M>>;
    type NodeId = NodeId;
    type Node = NexusNode;
    type Entry = openraft::Entry<Self>;
    type SnapshotData = tokio::fs::File;
    type AsyncRuntime = openraft::TokioRuntime;
    type Responder = openraft::impls::OneshotResponder<Self>;
}

pub type NodeId = u64;
pub type Raft<M> = openraft::Raft<TypeConfig<M>>;
pub type Entry<M> = openraft::Entry<TypeConfig<M>>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NexusNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NexusNode>;
pub type Snapshot<M> = openraft::Snapshot<TypeConfig<M>>;
pub type StorageError = openraft::StorageError<NodeId>;

/// A machine of plain puts, for the layer's own tests: the replication layer runs without
/// any of Nexus's domain.
#[cfg(test)]
pub(crate) mod test_machine {
    use super::*;
    use crate::store::{CF_KV, CF_SM_META};

    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
    pub struct Puts;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Put {
        pub key: String,
        pub value: String,
    }

    impl std::fmt::Display for Put {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "put({})", self.key)
        }
    }

    impl Machine for Puts {
        type Command = Put;
        /// The value replaced, if any.
        type Reply = Option<String>;
        type Behalf = String;

        const FAMILIES: &'static [&'static str] = &[CF_SM_META, CF_KV];

        fn approx_size(c: &Put) -> usize {
            c.key.len() + c.value.len()
        }

        fn behalf_size(b: &String) -> usize {
            b.len()
        }

        fn local(command: Put, _: Option<String>) -> Put {
            command
        }

        fn apply(
            ctx: &mut ApplyCtx<'_>,
            c: &Put,
        ) -> Result<Result<Option<String>, NexusError>, StoreError> {
            if c.key.is_empty() {
                return Ok(Err(NexusError::invalid("key", "must not be empty")));
            }
            let old = ctx.get_decoded::<String>(CF_KV, c.key.as_bytes())?;
            ctx.put(CF_KV, c.key.as_bytes(), &c.value);
            Ok(Ok(old))
        }

        fn applied(_: &Store, _: &[Put]) {}

        fn replaced(_: &Store) -> Result<(), StoreError> {
            Ok(())
        }
    }
}
