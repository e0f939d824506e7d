//! Linearizable reads: the read index, confirmed by the leader for every reader waiting when
//! a round starts (`batch_read_index`), and the wait until this node has applied that far.

use openraft::error::{CheckIsLeaderError, RaftError};

use super::{network, ClusterNode, Machine, ReadConsistency, ReadWaiter, FORWARD_TIMEOUT};
use crate::error::NexusError;

impl<M: Machine> ClusterNode<M> {
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
                let request = network::ForwardRequest::<M>::ReadIndex;
                match self.forward_to_leader(l, &request, FORWARD_TIMEOUT).await? {
                    network::ForwardReply::ReadIndex(i) => Ok(i),
                    other => Err(NexusError::internal(format!("leader answered {other:?}"))),
                }
            }
            None => Err(self.unavailable("no leader is elected", None, None)),
        }
    }
}

/// Serves linearizable readers in rounds, as etcd does: every reader waiting when a round
/// starts shares its read index (one quorum confirmation on the leader, or one `Forward`
/// to it from a follower); readers that arrive during a round wait for the next one, since
/// a round that began before a read arrived may miss a write acknowledged before it.
pub(super) async fn batch_read_index<M: Machine>(
    node: std::sync::Weak<ClusterNode<M>>,
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
