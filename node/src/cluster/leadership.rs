//! Leadership transfer (openraft 0.9 has none of its own), election holds, and the snapshot
//! receiver's election hold.

use std::time::Duration;

use super::{network, ClusterNode, Machine, NodeId, FORWARD_TIMEOUT};
use crate::error::NexusError;

impl<M: Machine> ClusterNode<M> {
    /// Hands leadership to voter `to` (see `transfer_leader_local`), from any node. Returns
    /// once the old leader saw `to` take over and this node knows it too (a follower learns
    /// of the new leader from its first append; waited for up to a few election timeouts, so
    /// that a status read right after agrees).
    pub async fn transfer_leader(
        &self,
        to: NodeId,
        on_behalf: Option<M::Behalf>,
    ) -> Result<(), NexusError> {
        self.on_leader(
            network::ForwardRequest::TransferLeaderChecked(to, on_behalf),
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
                    self.group,
                    &network::ForwardRequest::<M>::HoldElections(hold.as_millis() as u64),
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
                    self.group,
                    &network::ForwardRequest::<M>::Elect,
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
}
