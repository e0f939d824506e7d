//! Replication with openraft: the type configuration, the RocksDB log store and state machine,
//! the gRPC transport, and the node's entry points for writes (`propose`) and reads
//! (`read_barrier`).
//!
//! The layer is generic over the state machine it replicates ([`Machine`]): it imports no
//! domain module (memory, IAM, secrets, audit), and a command's meaning, its apply step and
//! on whose behalf it is made are the machine's (`crate::command`). A test checks that no
//! module of the crate depends on one that depends on it (`node/src/module_graph.rs`).

pub mod follower;
mod leadership;
pub mod log_store;
mod membership;
pub mod network;
mod propose;
mod read_index;
pub mod snapshot;
pub mod state_machine;
pub mod types;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::RaftLogStorage;
use openraft::{ServerState, SnapshotPolicy};
use tokio::sync::watch;

use crate::config::Config;
use crate::error::NexusError;
use crate::store::keys::GroupId;
use crate::store::Store;
pub use state_machine::AppliedState;
pub use types::{ForwardGate, Forwarded, Machine, NexusNode, NodeId, Proposal, Raft, Response};

type Responder<M> = tokio::sync::oneshot::Sender<Response<M>>;
type ReadWaiter = tokio::sync::oneshot::Sender<Result<u64, NexusError>>;

/// How long a follower waits for the leader on a forwarded write or read index.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the leader waits for a quorum to commit a proposal before answering Unavailable.
/// The outcome of such a write is unknown: it is committed if a quorum comes back in time.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(8);
/// A node that has caught up once stays ready while it trails the commit index by fewer
/// entries than this (`is_ready`).
const READY_MAX_LAG: u64 = 10_000;
/// `AddMember` fails when the new learner's replication makes no progress for this long.
const LEARNER_STALL: Duration = Duration::from_secs(10);

/// The members a brand-new cluster starts with: `--initial-cluster` (every node of a static
/// cluster is started with the same list), or this node alone.
fn initial_members(config: &Config) -> anyhow::Result<BTreeMap<NodeId, NexusNode>> {
    let me = NexusNode {
        peer_addr: config.peer_addr.to_string(),
        api_addr: config.grpc_addr.to_string(),
    };
    let Some(spec) = config
        .initial_cluster
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    else {
        return Ok(BTreeMap::from([(config.node_id, me)]));
    };
    let mut members = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addrs) = part.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("initial_cluster: {part:?} is not ID=PEER_ADDR[/API_ADDR]")
        })?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("initial_cluster: {id:?} is not a node id"))?;
        let (peer, api) = addrs.split_once('/').unwrap_or((addrs, ""));
        // A node's own entry is the address others reach it at; it may differ from the
        // address it listens on (`--peer-addr`) behind NAT, a proxy or a Kubernetes Service.
        let or_mine = |listed: &str, mine: &String| {
            let listed = listed.trim();
            if id == config.node_id && listed.is_empty() {
                mine.clone()
            } else {
                listed.to_string()
            }
        };
        let node = NexusNode {
            peer_addr: or_mine(peer, &me.peer_addr),
            api_addr: or_mine(api, &me.api_addr),
        };
        if members.insert(id, node).is_some() {
            anyhow::bail!("initial_cluster: node {id} is listed twice");
        }
    }
    if !members.contains_key(&config.node_id) {
        anyhow::bail!(
            "initial_cluster does not list this node (node_id {})",
            config.node_id
        );
    }
    Ok(members)
}

/// Keeps `last` at the most recent leader that `metrics` reported.
async fn remember_leader(
    mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, NexusNode>>,
    last: Arc<AtomicU64>,
) {
    loop {
        if let Some(l) = metrics.borrow_and_update().current_leader {
            last.store(l, Ordering::Relaxed);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// Reflects every write acknowledged before the read started (read index).
    #[default]
    Linearizable,
    /// Whatever this node has applied.
    Stale,
}

/// A change to the cluster's membership, made by the leader.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum MembershipChange {
    AddLearner { id: NodeId, node: NexusNode },
    Promote { id: NodeId },
    Remove { id: NodeId },
}

/// A member as `Status` reports it.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub id: NodeId,
    pub node: NexusNode,
    pub voter: bool,
}

#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub role: &'static str,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    pub leader_addr: Option<String>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub snapshot_index: u64,
    pub members: Vec<MemberStatus>,
}

/// This node's member of one Raft group.
pub struct ClusterNode<M: Machine> {
    pub id: NodeId,
    /// The group (`store::keys::GroupId`): its log, Raft metadata and applied state are keyed
    /// by it, and every peer message names it.
    pub group: GroupId,
    pub raft: Raft<M>,
    pub store: Store,
    applied: watch::Receiver<AppliedState>,
    committed: Arc<AtomicU64>,
    /// Set the first time this node has applied everything it knew committed (`is_ready`).
    caught_up: std::sync::atomic::AtomicBool,
    /// Writes waiting for the batcher (bounded: `limits.max_pending_writes`).
    proposals: tokio::sync::mpsc::Sender<(Forwarded<M>, Responder<M>)>,
    /// Checks the commands members forward to this node when it leads (set at start-up).
    forward_gate: std::sync::OnceLock<Arc<dyn ForwardGate<M>>>,
    /// Linearizable readers waiting for a read index (`batch_read_index`).
    /// (bounded: `limits.max_pending_reads`)
    read_waiters: tokio::sync::mpsc::Sender<ReadWaiter>,
    peers: network::PeerChannels,
    /// The last leader this node knew of (0: none yet), named in Unavailable replies while no
    /// leader is known, e.g. on a node cut off in a minority.
    last_leader: Arc<AtomicU64>,
    /// Until when this node starts no election (`hold_elections`); `None` when not held.
    election_hold: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    /// The longest election timeout: a receiver of a snapshot holds its elections this long
    /// after each chunk (`receiving_snapshot`).
    election_timeout_max: Duration,
}

/// The Raft groups this node is a member of, sharing one set of peer connections: what the
/// peer service routes each message to, by the group it names.
pub struct Groups<M: Machine> {
    peers: network::PeerChannels,
    nodes: std::sync::RwLock<BTreeMap<GroupId, Arc<ClusterNode<M>>>>,
}

impl<M: Machine> Groups<M> {
    /// No group yet; `peer_tls` (from `network::PeerTls::load`) secures the connections this
    /// node makes to its peers, for every group.
    pub fn new(config: &Config, peer_tls: Option<network::PeerTls>) -> Arc<Self> {
        Arc::new(Groups {
            peers: network::PeerChannels::new(network::PeerTransport::new(
                config.peer_addr,
                peer_tls,
            )),
            nodes: Default::default(),
        })
    }

    /// Starts this node's member of `group` on `store` and routes the group's peer messages
    /// to it.
    pub async fn start(
        &self,
        config: &Config,
        store: Store,
        group: GroupId,
    ) -> anyhow::Result<Arc<ClusterNode<M>>> {
        let node = ClusterNode::start_group(config, store, self.peers.clone(), group).await?;
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, node.clone());
        Ok(node)
    }

    /// This node's member of `group`, if it has one.
    pub fn get(&self, group: GroupId) -> Option<Arc<ClusterNode<M>>> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .cloned()
    }
}

impl<M: Machine> ClusterNode<M> {
    /// Starts group 0 alone, with connections of its own (in-process tests; a server starts
    /// its groups through [`Groups`]).
    pub async fn start(
        config: &Config,
        store: Store,
        peer_tls: Option<network::PeerTls>,
    ) -> anyhow::Result<Arc<Self>> {
        Groups::new(config, peer_tls).start(config, store, 0).await
    }

    /// Opens `group`'s log and state machine on `store` and starts its Raft, reaching peers
    /// through `peers`. On the very first start (no vote, no log) the node initializes the
    /// group with the initial members; afterwards it recovers its state from disk.
    async fn start_group(
        config: &Config,
        store: Store,
        peers: network::PeerChannels,
        group: GroupId,
    ) -> anyhow::Result<Arc<Self>> {
        let raft_config = openraft::Config {
            cluster_name: "nexus".into(),
            heartbeat_interval: config.raft.heartbeat_interval_ms,
            election_timeout_min: config.raft.election_timeout_min_ms,
            election_timeout_max: config.raft.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.raft.snapshot_every_entries),
            max_in_snapshot_log_to_keep: config.raft.keep_entries_after_snapshot,
            max_payload_entries: config.raft.max_append_entries,
            snapshot_max_chunk_size: config.raft.snapshot_chunk_bytes,
            install_snapshot_timeout: config.raft.install_snapshot_timeout_ms,
            ..Default::default()
        }
        .validate()?;

        let mut log_store = log_store::LogStore::<M>::new(store.clone(), group);
        let committed = log_store.committed_index();
        let first_boot = log_store.read_vote().await?.is_none()
            && log_store.get_log_state().await?.last_log_id.is_none();
        // Group 0 keeps the directory of the single-group releases.
        let snapshot_dir = match group {
            0 => config.data_dir.join("snapshots"),
            g => config.data_dir.join(format!("snapshots-g{g}")),
        };
        let (state_machine, applied) =
            state_machine::StateMachine::<M>::open(store.clone(), group, &snapshot_dir)?;
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network::NetworkFactory {
                peers: peers.clone(),
                group,
                machine: std::marker::PhantomData,
            },
            log_store,
            state_machine,
        )
        .await?;
        if first_boot && config.join {
            tracing::info!(
                node_id = config.node_id,
                "first start with --join: waiting to be added to a cluster (nexusctl member add)"
            );
        } else if first_boot {
            let members = initial_members(config)?;
            tracing::info!(
                node_id = config.node_id,
                "first start: initializing a one-member cluster"
            );
            raft.initialize(members).await?;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(config.limits.max_pending_writes.max(1));
        let (read_tx, read_rx) = tokio::sync::mpsc::channel(config.limits.max_pending_reads.max(1));
        let node = Arc::new(Self {
            id: config.node_id,
            group,
            raft,
            store,
            applied,
            committed,
            caught_up: std::sync::atomic::AtomicBool::new(false),
            proposals: tx,
            forward_gate: std::sync::OnceLock::new(),
            read_waiters: read_tx,
            peers,
            last_leader: Arc::new(AtomicU64::new(0)),
            election_hold: Arc::default(),
            election_timeout_max: Duration::from_millis(config.raft.election_timeout_max_ms),
        });
        tokio::spawn(remember_leader(
            node.raft.metrics(),
            node.last_leader.clone(),
        ));
        tokio::spawn(read_index::batch_read_index(Arc::downgrade(&node), read_rx));
        tokio::spawn(propose::batch_proposals(
            Arc::downgrade(&node),
            rx,
            config.raft.max_batch_commands.max(1),
            config.raft.max_batch_bytes,
        ));
        Ok(node)
    }

    /// Runs `here` when this node leads (or knows no leader: `here` then answers for itself),
    /// or sends `request` to the leader's peer port.
    async fn on_leader(
        &self,
        request: network::ForwardRequest<M>,
        timeout: Duration,
        here: impl std::future::Future<Output = Result<(), NexusError>>,
    ) -> Result<(), NexusError> {
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l != self.id => match self.forward_to_leader(l, &request, timeout).await? {
                network::ForwardReply::Done => Ok(()),
                other => Err(NexusError::internal(format!("leader answered {other:?}"))),
            },
            _ => here.await,
        }
    }

    /// Sends `request` to the peer port of `leader`, for this node's group.
    async fn forward_to_leader(
        &self,
        leader: NodeId,
        request: &network::ForwardRequest<M>,
        timeout: Duration,
    ) -> Result<network::ForwardReply<M>, NexusError> {
        let addr = self.member_peer_addr(leader).ok_or_else(|| {
            self.unavailable("the leader's address is unknown", Some(leader), None)
        })?;
        self.peers
            .forward(&addr, self.group, request, timeout)
            .await
    }

    fn member_peer_addr(&self, id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.peer_addr.clone())
    }

    fn unavailable(
        &self,
        message: &str,
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    ) -> NexusError {
        let (leader_id, leader_addr) = match (leader_id, leader_addr) {
            (Some(id), None) => (Some(id), self.member_api_addr(id)),
            other => other,
        };
        let last = self.last_leader.load(Ordering::Relaxed);
        let hint = match (&leader_id, &leader_addr) {
            (Some(id), Some(addr)) => format!("; the leader is node {id} at {addr}"),
            (Some(id), None) => format!("; the leader is node {id}"),
            _ if last != 0 => match self.member_api_addr(last) {
                Some(addr) => {
                    format!("; no leader is known now, the last was node {last} at {addr}")
                }
                None => format!("; no leader is known now, the last was node {last}"),
            },
            _ => "; no leader is known".to_string(),
        };
        NexusError::Unavailable {
            message: format!("{message}{hint}"),
            leader_id,
            leader_addr,
        }
    }

    fn member_api_addr(&self, id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.api_addr.clone())
    }

    /// Follows the applied index (and snapshot installs) of the local state machine.
    pub fn applied(&self) -> watch::Receiver<AppliedState> {
        self.applied.clone()
    }

    /// A follower of this group's log from `watermark`, for a derived index.
    pub fn log_follower(&self, watermark: u64) -> follower::LogFollower<M> {
        follower::LogFollower::new(self.store.clone(), self.group, self.applied(), watermark)
    }

    /// True once this node knows a leader and has applied everything it knows is committed.
    ///
    /// Once caught up, a node stays ready while it knows a leader and trails the commit index
    /// by fewer than `READY_MAX_LAG` entries: under a heavy write load applied always trails
    /// committed by a few entries, and a readiness that flapped with that would have a load
    /// balancer take a busy node out of service exactly when it is needed.
    pub fn is_ready(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let applied = m.last_applied.map_or(0, |l| l.index);
        let committed = self.committed.load(Ordering::Relaxed);
        if m.current_leader.is_none() {
            return false;
        }
        if applied >= committed {
            self.caught_up.store(true, Ordering::Relaxed);
            return true;
        }
        self.caught_up.load(Ordering::Relaxed) && committed - applied < READY_MAX_LAG
    }

    pub fn status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                node: node.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let leader_addr = m
            .current_leader
            .and_then(|id| membership.get_node(&id).map(|n| n.api_addr.clone()));
        ClusterStatus {
            node_id: self.id,
            role,
            term: m.current_term,
            leader_id: m.current_leader,
            leader_addr,
            commit_index: self.committed.load(Ordering::Relaxed),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            members,
        }
    }

    /// Waits until this node sees a leader, for start-up and tests.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, NexusError> {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map_err(|e| NexusError::Unavailable {
                message: format!("no leader: {e}"),
                leader_id: None,
                leader_addr: None,
            })?
            .current_leader
            .ok_or_else(|| NexusError::internal("leader vanished"))
    }
}

#[cfg(test)]
mod tests {
    use super::network::PeerService;
    use super::types::test_machine::{Put, Puts};
    use super::*;
    use crate::store::{keys, CF_KV, CF_RAFT_LOG};

    /// Admits every forwarded command (the test machine has no principals).
    struct OpenGate;

    #[tonic::async_trait]
    impl ForwardGate<Puts> for OpenGate {
        async fn admit(&self, forwarded: Forwarded<Puts>) -> Result<Put, NexusError> {
            Ok(forwarded.command)
        }

        async fn admit_cluster_change(&self, _: Option<String>) -> Result<(), NexusError> {
            Ok(())
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Two nodes, each a member of groups 0 and 1 over one peer port: each group elects its
    /// own leader, replicates its own log (keyed by group in the shared RocksDB), and a write
    /// to either group from either node (forwarded to that group's leader) reaches both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_node_runs_two_groups_over_the_same_peer_connections() {
        let dir = tempfile::tempdir().unwrap();
        let ports = [free_port(), free_port()];
        let initial = format!("1=127.0.0.1:{},2=127.0.0.1:{}", ports[0], ports[1]);
        let mut nodes = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let config = Config {
                node_id: id,
                data_dir: dir.path().join(format!("n{id}")),
                peer_addr: format!("127.0.0.1:{port}").parse().unwrap(),
                initial_cluster: Some(initial.clone()),
                ..Config::default()
            };
            let store = Store::open(&config.data_dir.join("db")).unwrap();
            let groups = Groups::<Puts>::new(&config, None);
            let mut members = Vec::new();
            for group in [0, 1] {
                let node = groups.start(&config, store.clone(), group).await.unwrap();
                node.set_forward_gate(Arc::new(OpenGate));
                members.push(node);
            }
            let listener = tokio::net::TcpListener::bind(config.peer_addr)
                .await
                .unwrap();
            let service = nexus_proto::raft::v1::raft_service_server::RaftServiceServer::new(
                PeerService::new(groups.clone()),
            );
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            nodes.push((store, members));
        }
        for (_, members) in &nodes {
            for m in members {
                m.wait_for_leader(Duration::from_secs(20)).await.unwrap();
            }
        }
        // Each group through each node; node 2's writes to a group it does not lead are
        // forwarded to that group's leader, naming the group.
        for (n, (_, members)) in nodes.iter().enumerate() {
            for (g, member) in members.iter().enumerate() {
                let put = Put {
                    key: format!("g{g}-from-n{}", n + 1),
                    value: format!("{g}"),
                };
                assert_eq!(member.propose(put, None).await.unwrap(), None);
            }
        }
        for (store, members) in &nodes {
            for m in members {
                let target = m.raft.metrics().borrow().last_log_index.unwrap_or(0);
                let mut applied = m.applied();
                tokio::time::timeout(
                    Duration::from_secs(10),
                    applied.wait_for(|a| a.index >= target),
                )
                .await
                .unwrap()
                .unwrap();
            }
            for g in 0..2 {
                for n in 1..=2 {
                    let key = format!("g{g}-from-n{n}");
                    assert_eq!(
                        store.get_decoded::<String>(CF_KV, key.as_bytes()).unwrap(),
                        Some(g.to_string()),
                        "{key}"
                    );
                }
            }
            // Each group's log, apart in the one database, holds its own writes and only
            // those: a forwarded write went to the leader of the group it was made for.
            let groups_in_log: std::collections::BTreeSet<u32> = store
                .db()
                .iterator_cf(store.cf(CF_RAFT_LOG), rocksdb::IteratorMode::Start)
                .map(|r| keys::parse_log_key(&r.unwrap().0).unwrap().0)
                .collect();
            assert_eq!(groups_in_log, [0, 1].into());
            for g in 0..2u32 {
                let entries =
                    log_store::LogStore::<Puts>::read_range(store, g, 0, u64::MAX).unwrap();
                let mut put: Vec<String> = follower::commands(&entries)
                    .map(|p| p.key.clone())
                    .collect();
                put.sort();
                assert_eq!(put, [format!("g{g}-from-n1"), format!("g{g}-from-n2")]);
            }
        }
        for (_, members) in nodes {
            for m in members {
                m.raft.shutdown().await.unwrap();
            }
        }
    }
}
