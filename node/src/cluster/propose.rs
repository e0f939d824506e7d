//! The write path: group commit above openraft (`batch_proposals`), forwarding to the leader,
//! and the leader's side of what members forward (checked by the `ForwardGate`).

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};

use super::{network, ClusterNode, ForwardGate, Forwarded, Machine, Proposal, Responder, Response};
use super::{COMMIT_TIMEOUT, FORWARD_TIMEOUT};
use crate::error::NexusError;

impl<M: Machine> ClusterNode<M> {
    /// Replicates a command and returns what applying it produced, once it is committed on a
    /// majority and applied here. Commands of concurrent callers share a log entry. The
    /// command is made on behalf of whom `on_behalf` names (a request's caller, audited with
    /// the change by the machine; None: the node itself, such as the TTL sweeper).
    pub async fn propose(
        &self,
        command: M::Command,
        on_behalf: Option<M::Behalf>,
    ) -> Result<M::Reply, NexusError> {
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
    pub fn set_forward_gate(&self, gate: Arc<dyn ForwardGate<M>>) {
        let _ = self.forward_gate.set(gate);
    }

    /// Proposes one entry holding `items` on the leader: here, or forwarded to it. If
    /// leadership moves while the entry is proposed here, the callers get Unavailable naming
    /// the new leader and may retry.
    async fn propose_batch(
        &self,
        items: Vec<Forwarded<M>>,
    ) -> Result<Vec<Response<M>>, NexusError> {
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l != self.id => {
                let request = network::ForwardRequest::ProposeChecked(items);
                match self.forward_to_leader(l, &request, FORWARD_TIMEOUT).await? {
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
        on_behalf: Option<M::Behalf>,
        change: impl std::future::Future<Output = Result<(), NexusError>>,
    ) -> Result<network::ForwardReply<M>, NexusError> {
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
        items: Vec<Forwarded<M>>,
    ) -> Result<Vec<Response<M>>, NexusError> {
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
        commands: Vec<M::Command>,
    ) -> Result<Vec<Response<M>>, NexusError> {
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
}

/// Group commit above openraft: openraft 0.9 makes each log entry durable before it takes the
/// next one, so the commands that arrive while one entry is being fsynced are proposed
/// together as the next entry (up to `max_commands` / `max_bytes`). One entry is in flight
/// at a time; under load the batches grow by themselves, and a lone client pays no wait.
pub(super) async fn batch_proposals<M: Machine>(
    node: std::sync::Weak<ClusterNode<M>>,
    mut rx: tokio::sync::mpsc::Receiver<(Forwarded<M>, Responder<M>)>,
    max_commands: usize,
    max_bytes: usize,
) {
    let mut carry: Option<(Forwarded<M>, Responder<M>)> = None;
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
        let (commands, responders): (Vec<Forwarded<M>>, Vec<Responder<M>>) =
            batch.into_iter().unzip();
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
