//! Replication with openraft: the type configuration, the RocksDB log store and state machine,
//! the gRPC transport, and the node's entry points for writes (`propose`) and reads
//! (`read_barrier`). This module knows nothing of the public API's types.

pub mod log_store;
pub mod network;
pub mod snapshot;
pub mod state_machine;
pub mod types;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{ServerState, SnapshotPolicy};
use tokio::sync::watch;

use crate::config::Config;
use crate::error::NexusError;
use crate::store::Store;
pub use state_machine::AppliedState;
pub use types::{
    Command, ForwardGate, Forwarded, NexusNode, NodeId, OnBehalf, Op, Proposal, Raft, Reply,
};

type Responder = tokio::sync::oneshot::Sender<Result<Reply, NexusError>>;
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

/// This node's Raft group member.
pub struct ClusterNode {
    pub id: NodeId,
    pub raft: Raft,
    pub store: Store,
    applied: watch::Receiver<AppliedState>,
    committed: Arc<AtomicU64>,
    /// Set the first time this node has applied everything it knew committed (`is_ready`).
    caught_up: std::sync::atomic::AtomicBool,
    /// Writes waiting for the batcher (bounded: `limits.max_pending_writes`).
    proposals: tokio::sync::mpsc::Sender<(Forwarded, Responder)>,
    /// Checks the commands members forward to this node when it leads (set at start-up).
    forward_gate: std::sync::OnceLock<Arc<dyn ForwardGate>>,
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

impl ClusterNode {
    /// Opens the log and state machine on `store` and starts Raft. On the very first start
    /// (no vote, no log) the node initializes a one-member cluster of itself; afterwards it
    /// recovers its state from disk.
    /// Starts Raft on `store`; `peer_tls` (from `network::PeerTls::load`) secures the
    /// connections this node makes to its peers.
    pub async fn start(
        config: &Config,
        store: Store,
        peer_tls: Option<network::PeerTls>,
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

        let mut log_store = log_store::LogStore::new(store.clone());
        let committed = log_store.committed_index();
        let first_boot = log_store.read_vote().await?.is_none()
            && log_store.get_log_state().await?.last_log_id.is_none();
        let (state_machine, applied) =
            state_machine::StateMachine::open(store.clone(), &config.data_dir.join("snapshots"))?;
        let peers =
            network::PeerChannels::new(network::PeerTransport::new(config.peer_addr, peer_tls));
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network::NetworkFactory {
                peers: peers.clone(),
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
        tokio::spawn(batch_read_index(Arc::downgrade(&node), read_rx));
        tokio::spawn(batch_proposals(
            Arc::downgrade(&node),
            rx,
            config.raft.max_batch_commands.max(1),
            config.raft.max_batch_bytes,
        ));
        Ok(node)
    }

    /// Replicates a command and returns what applying it produced, once it is committed on a
    /// majority and applied here. Commands of concurrent callers share a log entry. Inside a
    /// request (`api::grpc::handle`) the command is made on behalf of its caller, and audited
    /// with the change.
    pub async fn propose(&self, command: Command) -> Result<Reply, NexusError> {
        let on_behalf = crate::audit::CONTEXT.try_with(|c| c.clone()).ok();
        self.propose_as(command, on_behalf).await
    }

    /// [`propose`](Self::propose) on behalf of whom `on_behalf` names (None: the node itself,
    /// such as the TTL sweeper).
    pub async fn propose_as(
        &self,
        command: Command,
        on_behalf: Option<OnBehalf>,
    ) -> Result<Reply, NexusError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stopped = || self.unavailable("the node is shutting down", None, None);
        let item = Forwarded { command, on_behalf };
        self.proposals.try_send((item, tx)).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => {
                crate::observe::metrics::SHED
                    .with_label_values(&["write"])
                    .inc();
                NexusError::ResourceExhausted {
                    limit: "limits.max_pending_writes".into(),
                    message: "too many writes are waiting on this node; retry with backoff".into(),
                }
            }
            tokio::sync::mpsc::error::TrySendError::Closed(_) => stopped(),
        })?;
        rx.await.map_err(|_| stopped())?
    }

    /// Sets what checks the commands members forward (once, at start-up; until then this
    /// node, as leader, answers forwarded proposals Unavailable).
    pub fn set_forward_gate(&self, gate: Arc<dyn ForwardGate>) {
        let _ = self.forward_gate.set(gate);
    }

    /// Proposes one entry holding `items` on the leader: here, or forwarded to it. If
    /// leadership moves while the entry is proposed here, the callers get Unavailable naming
    /// the new leader and may retry.
    async fn propose_batch(
        &self,
        items: Vec<Forwarded>,
    ) -> Result<Vec<types::Response>, NexusError> {
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l != self.id => {
                let addr = self.member_peer_addr(l).ok_or_else(|| {
                    self.unavailable("the leader's address is unknown", Some(l), None)
                })?;
                match self
                    .peers
                    .forward(
                        &addr,
                        &network::ForwardRequest::ProposeChecked(items),
                        FORWARD_TIMEOUT,
                    )
                    .await?
                {
                    network::ForwardReply::Responses(r) => Ok(r),
                    other => Err(NexusError::internal(format!("leader answered {other:?}"))),
                }
            }
            _ => {
                let commands = items.into_iter().map(Forwarded::into_local).collect();
                self.propose_local(commands).await
            }
        }
    }

    /// On the leader: runs a cluster change a member forwarded, once the forward gate has
    /// checked the credential of the request behind it.
    pub async fn forwarded_cluster_change(
        &self,
        on_behalf: Option<OnBehalf>,
        change: impl std::future::Future<Output = Result<(), NexusError>>,
    ) -> Result<network::ForwardReply, NexusError> {
        let gate = self
            .forward_gate
            .get()
            .cloned()
            .ok_or_else(|| self.unavailable("the leader is still starting", None, None))?;
        if let Err(e) = gate.admit_cluster_change(on_behalf).await {
            crate::observe::metrics::PEER_REFUSALS
                .with_label_values(&["forwarded cluster change"])
                .inc();
            return Err(e);
        }
        change.await.map(|()| network::ForwardReply::Done)
    }

    /// On the leader: proposes what a member forwarded, each command first admitted by the
    /// forward gate. A refused command gets its own error; the others are proposed together.
    pub async fn propose_forwarded(
        &self,
        items: Vec<Forwarded>,
    ) -> Result<Vec<types::Response>, NexusError> {
        let gate = self
            .forward_gate
            .get()
            .cloned()
            .ok_or_else(|| self.unavailable("the leader is still starting", None, None))?;
        let mut refusals: Vec<Option<NexusError>> = Vec::with_capacity(items.len());
        let mut admitted = Vec::with_capacity(items.len());
        for item in items {
            match gate.admit(item).await {
                Ok(command) => {
                    refusals.push(None);
                    admitted.push(command);
                }
                Err(e) => {
                    crate::observe::metrics::PEER_REFUSALS
                        .with_label_values(&["forwarded command"])
                        .inc();
                    tracing::warn!(error = %e, "refused a forwarded command");
                    refusals.push(Some(e));
                }
            }
        }
        let n = admitted.len();
        let mut results = if admitted.is_empty() {
            Vec::new()
        } else {
            self.propose_local(admitted).await?
        }
        .into_iter();
        if results.len() != n {
            return Err(NexusError::internal(format!(
                "{} results for {n} commands",
                results.len()
            )));
        }
        Ok(refusals
            .into_iter()
            .map(|refused| match refused {
                Some(e) => Err(e),
                None => results.next().expect("one result per admitted command"),
            })
            .collect())
    }

    /// Proposes on this node only (a request forwarded by a follower is not forwarded again).
    pub async fn propose_local(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<types::Response>, NexusError> {
        let started = std::time::Instant::now();
        let write = self.raft.client_write(Proposal { commands });
        let result = tokio::time::timeout(COMMIT_TIMEOUT, write).await;
        crate::observe::metrics::RAFT_COMMIT_SECONDS.observe(started.elapsed().as_secs_f64());
        let Ok(result) = result else {
            return Err(self.unavailable(
                &format!(
                    "no quorum: the write was not committed within {COMMIT_TIMEOUT:?} \
                     (its outcome is unknown: it takes effect if a quorum returns in time)"
                ),
                None,
                None,
            ));
        };
        match result {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(self
                .unavailable(
                    "this node is not the leader",
                    f.leader_id,
                    f.leader_node.map(|n| n.api_addr),
                )),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(NexusError::internal(e))
            }
            Err(RaftError::Fatal(e)) => {
                Err(self.unavailable(&format!("raft stopped: {e}"), None, None))
            }
        }
    }

    /// The read index, confirmed by this node as leader (openraft's read index: leadership
    /// confirmed with a quorum, state machine applied up to it).
    pub async fn read_index_local(&self) -> Result<u64, NexusError> {
        match self.raft.ensure_linearizable().await {
            Ok(read_log_id) => Ok(read_log_id.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(self
                .unavailable(
                    "this node is not the leader",
                    f.leader_id,
                    f.leader_node.map(|n| n.api_addr),
                )),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(self.unavailable(&format!("no quorum: {e}"), None, None))
            }
            Err(RaftError::Fatal(e)) => {
                Err(self.unavailable(&format!("raft stopped: {e}"), None, None))
            }
        }
    }

    /// Waits until this node may serve a read of the given consistency, and returns the log
    /// index the read reflects at least. A follower asks the leader for the read index and
    /// waits until it has applied that far itself.
    pub async fn read_barrier(&self, consistency: ReadConsistency) -> Result<u64, NexusError> {
        if consistency == ReadConsistency::Stale {
            return Ok(self.applied.borrow().index);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stopped = || self.unavailable("the node is shutting down", None, None);
        self.read_waiters.try_send(tx).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => {
                crate::observe::metrics::SHED.with_label_values(&["read"]).inc();
                NexusError::ResourceExhausted {
                    limit: "limits.max_pending_reads".into(),
                    message: "too many linearizable reads are waiting on this node; retry with backoff or read stale".into(),
                }
            }
            tokio::sync::mpsc::error::TrySendError::Closed(_) => stopped(),
        })?;
        let index = rx.await.map_err(|_| stopped())??;
        let leader = self.raft.metrics().borrow().current_leader;
        let mut applied = self.applied.clone();
        let caught_up = async move { applied.wait_for(|a| a.index >= index).await.map(|_| ()) };
        match tokio::time::timeout(FORWARD_TIMEOUT, caught_up).await {
            Ok(Ok(())) => Ok(index),
            _ => Err(self.unavailable(
                &format!("this node has not applied the read index {index} in time"),
                leader,
                None,
            )),
        }
    }

    /// One read-index round for every reader waiting in `batch_read_index`: confirmed here as
    /// leader, or asked of the leader.
    async fn read_index_round(&self) -> Result<u64, NexusError> {
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l == self.id => self.read_index_local().await,
            Some(l) => {
                let addr = self.member_peer_addr(l).ok_or_else(|| {
                    self.unavailable("the leader's address is unknown", Some(l), None)
                })?;
                match self
                    .peers
                    .forward(&addr, &network::ForwardRequest::ReadIndex, FORWARD_TIMEOUT)
                    .await?
                {
                    network::ForwardReply::ReadIndex(i) => Ok(i),
                    other => Err(NexusError::internal(format!("leader answered {other:?}"))),
                }
            }
            None => Err(self.unavailable("no leader is elected", None, None)),
        }
    }

    /// Changes the membership on the leader: here, or forwarded to it.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), NexusError> {
        self.on_leader(
            network::ForwardRequest::MembershipChecked(
                change.clone(),
                crate::audit::CONTEXT.try_with(|c| c.clone()).ok(),
            ),
            FORWARD_TIMEOUT * 6,
            self.change_membership_local(change),
        )
        .await
    }

    /// Hands leadership to voter `to` (see `transfer_leader_local`), from any node. Returns
    /// once the old leader saw `to` take over and this node knows it too (a follower learns
    /// of the new leader from its first append; waited for up to a few election timeouts, so
    /// that a status read right after agrees).
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), NexusError> {
        self.on_leader(
            network::ForwardRequest::TransferLeaderChecked(
                to,
                crate::audit::CONTEXT.try_with(|c| c.clone()).ok(),
            ),
            FORWARD_TIMEOUT * 3,
            self.transfer_leader_local(to),
        )
        .await?;
        let wait = Duration::from_millis(self.raft.config().election_timeout_max * 3);
        let mut metrics = self.raft.metrics();
        let _ =
            tokio::time::timeout(wait, metrics.wait_for(|m| m.current_leader == Some(to))).await;
        Ok(())
    }

    /// Runs `here` when this node leads (or knows no leader: `here` then answers for itself),
    /// or sends `request` to the leader's peer port.
    async fn on_leader(
        &self,
        request: network::ForwardRequest,
        timeout: Duration,
        here: impl std::future::Future<Output = Result<(), NexusError>>,
    ) -> Result<(), NexusError> {
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l != self.id => {
                let addr = self.member_peer_addr(l).ok_or_else(|| {
                    self.unavailable("the leader's address is unknown", Some(l), None)
                })?;
                match self.peers.forward(&addr, &request, timeout).await? {
                    network::ForwardReply::Done => Ok(()),
                    other => Err(NexusError::internal(format!("leader answered {other:?}"))),
                }
            }
            _ => here.await,
        }
    }

    /// Leadership transfer on the leader. openraft 0.9 has no transfer of its own, and a
    /// follower refuses to vote while its leader lease (election_timeout_max since it last
    /// heard from the leader) runs, so the leader:
    /// 1. waits until the target has replicated its whole log (a candidate with less log
    ///    cannot win);
    /// 2. holds elections on the other voters for a few election timeouts (they still vote,
    ///    they only do not campaign; the hold ends by itself, so a target that dies mid-way
    ///    costs one hold of availability, never safety);
    /// 3. stops its heartbeats and waits out the lease;
    /// 4. has the target campaign, and waits until it leads.
    ///
    /// Heartbeats are re-enabled whatever happens. Writes that arrive meanwhile are still
    /// replicated (and extend the lease, delaying the handover); they are not lost.
    pub async fn transfer_leader_local(&self, to: NodeId) -> Result<(), NexusError> {
        let status = self.status();
        match status.members.iter().find(|m| m.id == to) {
            None => return Err(NexusError::NotFound(format!("node {to} is not a member"))),
            Some(m) if !m.voter => {
                return Err(NexusError::precondition(
                    "id",
                    format!("node {to} is a learner; promote it first"),
                ))
            }
            Some(_) => {}
        }
        if status.role != "leader" {
            return Err(self.unavailable("this node is not the leader", status.leader_id, None));
        }
        if to == self.id {
            return Ok(());
        }
        let timers = self.raft.config();
        let lease = Duration::from_millis(timers.election_timeout_max);
        let target_addr = self
            .member_peer_addr(to)
            .ok_or_else(|| NexusError::internal(format!("node {to} has no peer address")))?;

        // 1. The target has the whole log.
        let caught_up = async {
            let mut metrics = self.raft.metrics();
            loop {
                let done = {
                    let m = metrics.borrow_and_update();
                    let last = m.last_log_index;
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&to).cloned().flatten())
                        .map(|l| l.index);
                    last.is_some() && matched >= last
                };
                if done || metrics.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(FORWARD_TIMEOUT, caught_up)
            .await
            .is_err()
        {
            return Err(self.unavailable(
                &format!("node {to} did not catch up with the log in {FORWARD_TIMEOUT:?}"),
                None,
                None,
            ));
        }

        // 2. Hold the other voters' elections.
        let hold = self.max_election_hold();
        for m in status.members.iter().filter(|m| m.voter && m.id != to) {
            if m.id == self.id {
                self.hold_elections(hold);
                continue;
            }
            let r = self
                .peers
                .forward(
                    &m.node.peer_addr,
                    &network::ForwardRequest::HoldElections(hold.as_millis() as u64),
                    FORWARD_TIMEOUT,
                )
                .await;
            if let Err(e) = r {
                // An unreachable voter may campaign; the handover may then take one more
                // election, which is still safe.
                tracing::warn!(node = m.id, error = %e, "could not hold elections");
            }
        }

        // 3-4. Let the lease run out, then the target campaigns.
        self.raft.runtime_config().heartbeat(false);
        let result = async {
            tokio::time::sleep(lease + Duration::from_millis(50)).await;
            self.peers
                .forward(
                    &target_addr,
                    &network::ForwardRequest::Elect,
                    FORWARD_TIMEOUT,
                )
                .await?;
            let mut metrics = self.raft.metrics();
            let took_over = async {
                metrics
                    .wait_for(|m| m.current_leader == Some(to))
                    .await
                    .is_ok()
            };
            match tokio::time::timeout(lease * 3 + Duration::from_secs(1), took_over).await {
                Ok(true) => Ok(()),
                _ => Err(self.unavailable(
                    &format!("node {to} did not take over leadership in time"),
                    None,
                    None,
                )),
            }
        }
        .await;
        self.raft.runtime_config().heartbeat(true);
        result
    }

    /// Does not start elections for `hold` (during a leadership transfer to another node, or
    /// while a snapshot from the leader is arriving). A hold never shortens a longer one.
    pub fn hold_elections(&self, hold: Duration) {
        let hold = hold.min(self.max_election_hold());
        let until = tokio::time::Instant::now() + hold;
        {
            let mut held = self.election_hold.lock().expect("election hold lock");
            if held.is_some_and(|t| t >= until) {
                return;
            }
            *held = Some(until);
        }
        self.raft.runtime_config().elect(false);
        let raft = self.raft.clone();
        let held = self.election_hold.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            let mut held = held.lock().expect("election hold lock");
            // A later, longer hold re-enables elections when it ends.
            if *held == Some(until) {
                *held = None;
                raft.runtime_config().elect(true);
            }
        });
    }

    /// The longest a node holds its elections when asked to (a leadership transfer asks for
    /// this much): a member that asks for more, or again and again, cannot keep a cluster
    /// without a leader for longer than a few election timeouts at a time.
    pub fn max_election_hold(&self) -> Duration {
        self.election_timeout_max * 4 + Duration::from_secs(2)
    }

    /// Runs `receive` (one snapshot chunk from the current leader) while holding this node's
    /// elections, and holds them for an election timeout after it.
    ///
    /// openraft 0.9 sends a follower no heartbeat while a snapshot is in flight to it, and the
    /// chunks do not reset the follower's election timer: only the first and the last reach
    /// Raft's core. A transfer longer than the election timeout (tens of MB, or a slow disk)
    /// therefore made the receiver campaign, which deposed the leader and restarted the
    /// transfer, forever. Treating each chunk as the heartbeat Raft says it is ends that; if
    /// the leader dies mid-transfer, the hold lapses one election timeout after the last chunk.
    /// The last chunk also installs the snapshot, which takes seconds for a large state.
    pub async fn receiving_snapshot<F: std::future::Future>(&self, receive: F) -> F::Output {
        let hold = self.election_timeout_max;
        self.hold_elections(hold);
        tokio::pin!(receive);
        let mut renew = tokio::time::interval(hold / 2);
        let out = loop {
            tokio::select! {
                out = &mut receive => break out,
                _ = renew.tick() => self.hold_elections(hold),
            }
        };
        self.hold_elections(hold);
        out
    }

    /// Starts an election now (the target of a leadership transfer).
    pub async fn campaign(&self) -> Result<(), NexusError> {
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| self.unavailable(&format!("raft stopped: {e}"), None, None))
    }

    pub async fn change_membership_local(
        &self,
        change: MembershipChange,
    ) -> Result<(), NexusError> {
        use openraft::ChangeMembers;
        use std::collections::BTreeSet;
        let status = self.status();
        let member = |id: NodeId| status.members.iter().find(|m| m.id == id);
        let result = match change {
            MembershipChange::AddLearner { id, node } => {
                if id == 0 {
                    return Err(NexusError::invalid("id", "must not be 0"));
                }
                if node.peer_addr.is_empty() {
                    return Err(NexusError::invalid("peer_addr", "must not be empty"));
                }
                if member(id).is_some_and(|m| m.voter) {
                    return Err(NexusError::AlreadyExists(format!(
                        "node {id} is already a voter"
                    )));
                }
                // openraft's blocking add_learner gives up waiting after a short while and
                // answers Ok even when the learner is unreachable, so the wait is ours.
                let addr = node.peer_addr.clone();
                let added = self
                    .raft
                    .add_learner(id, node, false)
                    .await
                    .map_err(|e| self.membership_error(e))?;
                return self.wait_for_learner(id, &addr, added.log_id.index).await;
            }
            MembershipChange::Promote { id } => {
                match member(id) {
                    None => {
                        return Err(NexusError::NotFound(format!(
                            "node {id} is not a member; add it first"
                        )))
                    }
                    Some(m) if m.voter => return Ok(()),
                    Some(_) => {}
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
            }
            MembershipChange::Remove { id } => match member(id) {
                None => return Err(NexusError::NotFound(format!("node {id} is not a member"))),
                Some(m) if m.voter => {
                    if status.members.iter().filter(|m| m.voter).count() == 1 {
                        return Err(NexusError::precondition(
                            "id",
                            format!("node {id} is the last voter"),
                        ));
                    }
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                }
                Some(_) => {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                }
            },
        };
        result.map(|_| ()).map_err(|e| self.membership_error(e))
    }

    fn membership_error(
        &self,
        e: RaftError<NodeId, ClientWriteError<NodeId, types::NexusNode>>,
    ) -> NexusError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => self.unavailable(
                "this node is not the leader",
                f.leader_id,
                f.leader_node.map(|n| n.api_addr),
            ),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                NexusError::precondition("membership", e.to_string())
            }
            RaftError::Fatal(e) => self.unavailable(&format!("raft stopped: {e}"), None, None),
        }
    }

    /// Waits until learner `id` holds the log up to `index` (the entry that added it). Fails
    /// with Unavailable when its replication makes no progress for `LEARNER_STALL` (a node
    /// that is down, unreachable, or whose TLS certificate the cluster refuses); the node then
    /// stays a learner, which costs nothing but retries, until it is removed.
    async fn wait_for_learner(&self, id: NodeId, addr: &str, index: u64) -> Result<(), NexusError> {
        let mut metrics = self.raft.metrics();
        let mut best: Option<u64> = None;
        let mut stall_deadline = tokio::time::Instant::now() + LEARNER_STALL;
        loop {
            let (leading, matched) = {
                let m = metrics.borrow_and_update();
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index);
                (m.current_leader == Some(self.id), matched)
            };
            if matched >= Some(index) {
                return Ok(());
            }
            if !leading {
                return Err(self.unavailable(
                    &format!("leadership changed while node {id} was catching up; it was added as a learner, retry to wait for it"),
                    None,
                    None,
                ));
            }
            if matched > best {
                best = matched;
                stall_deadline = tokio::time::Instant::now() + LEARNER_STALL;
            }
            match tokio::time::timeout_at(stall_deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.unavailable("raft stopped", None, None)),
                Err(_) => {
                    return Err(self.unavailable(
                        &format!(
                            "node {id} was added as a learner but has received no log for {}s: check that it runs and is reachable at {addr} (with a certificate from the cluster's CA when peer TLS is on), or remove it (nexusctl member remove {id})",
                            LEARNER_STALL.as_secs()
                        ),
                        None,
                        None,
                    ))
                }
            }
        }
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

/// Group commit above openraft: openraft 0.9 makes each log entry durable before it takes the
/// next one, so the commands that arrive while one entry is being fsynced are proposed
/// together as the next entry (up to `max_commands` / `max_bytes`). One entry is in flight
/// at a time; under load the batches grow by themselves, and a lone client pays no wait.
/// Serves linearizable readers in rounds, as etcd does: every reader waiting when a round
/// starts shares its read index (one quorum confirmation on the leader, or one `Forward`
/// to it from a follower); readers that arrive during a round wait for the next one, since
/// a round that began before a read arrived may miss a write acknowledged before it.
async fn batch_read_index(
    node: std::sync::Weak<ClusterNode>,
    mut rx: tokio::sync::mpsc::Receiver<ReadWaiter>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let Some(node) = node.upgrade() else { return };
        crate::observe::metrics::READ_INDEX_BATCH_READS.observe(waiters.len() as f64);
        let result = match tokio::time::timeout(FORWARD_TIMEOUT, node.read_index_round()).await {
            Ok(r) => r,
            Err(_) => Err(node.unavailable(
                &format!("no quorum confirmed the read index within {FORWARD_TIMEOUT:?}"),
                None,
                None,
            )),
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

async fn batch_proposals(
    node: std::sync::Weak<ClusterNode>,
    mut rx: tokio::sync::mpsc::Receiver<(Forwarded, Responder)>,
    max_commands: usize,
    max_bytes: usize,
) {
    let mut carry: Option<(Forwarded, Responder)> = None;
    // `batch` below is bounded by max_commands and max_bytes.
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.0.approx_size();
        let mut batch = vec![first];
        while batch.len() < max_commands {
            match rx.try_recv() {
                Ok(p) => {
                    let size = p.0.approx_size();
                    if bytes + size > max_bytes {
                        carry = Some(p);
                        break;
                    }
                    bytes += size;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        // A write whose client has given up (its deadline passed, it hung up) is not proposed:
        // nobody would learn its outcome.
        let before = batch.len();
        batch.retain(|(_, tx)| !tx.is_closed());
        if batch.len() < before {
            crate::observe::metrics::SHED
                .with_label_values(&["abandoned write"])
                .inc_by((before - batch.len()) as u64);
        }
        if batch.is_empty() {
            continue;
        }
        let (commands, responders): (Vec<Forwarded>, Vec<Responder>) = batch.into_iter().unzip();
        let n = commands.len();
        crate::observe::metrics::PROPOSAL_BATCH_COMMANDS.observe(n as f64);
        match node.propose_batch(commands).await {
            Ok(results) if results.len() == n => {
                for (tx, r) in responders.into_iter().zip(results) {
                    let _ = tx.send(r);
                }
            }
            Ok(results) => {
                let e = NexusError::internal(format!("{} results for {n} commands", results.len()));
                for tx in responders {
                    let _ = tx.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for tx in responders {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}
