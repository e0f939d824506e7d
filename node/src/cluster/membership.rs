//! Membership changes on the leader (`nexusctl member add|promote|remove`), forwarded to it
//! from any node.

use openraft::error::{ClientWriteError, RaftError};

use super::{
    network, types, ClusterNode, Machine, MembershipChange, NodeId, FORWARD_TIMEOUT, LEARNER_STALL,
};
use crate::error::NexusError;

impl<M: Machine> ClusterNode<M> {
    /// Changes the membership on the leader: here, or forwarded to it with `on_behalf`
    /// (whom the leader checks the change against).
    pub async fn change_membership(
        &self,
        change: MembershipChange,
        on_behalf: Option<M::Behalf>,
    ) -> Result<(), NexusError> {
        self.on_leader(
            network::ForwardRequest::MembershipChecked(change.clone(), on_behalf),
            FORWARD_TIMEOUT * 6,
            self.change_membership_local(change),
        )
        .await
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
}
