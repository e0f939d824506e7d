//! `nexusctl status | member | cluster`: the node's view of the cluster, membership, and
//! leadership transfer.

use clap::Subcommand;
use nexus_client::{pb, Client, ClientError};
use serde_json::{json, Value};

use super::{print_json, table, Output};

#[derive(Subcommand, Clone)]
pub enum ClusterCommand {
    /// Hand leadership to voter ID (e.g. before restarting the leader's machine).
    TransferLeader { id: u64 },
}

#[derive(Subcommand, Clone)]
pub enum MemberCommand {
    /// Add a node (started with `nexus serve --join`) as a learner; returns once it caught up.
    Add {
        id: u64,
        /// host:port of its peer port.
        peer_addr: String,
        /// host:port of its gRPC API.
        #[arg(long, default_value = "")]
        api_addr: String,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a member.
    Remove { id: u64 },
    /// List the members.
    List,
}

fn member_json(m: &pb::Member) -> Value {
    json!({"id": m.id, "peer_addr": m.peer_addr, "api_addr": m.api_addr, "voter": m.voter})
}

fn print_members(members: &[pb::Member], out: Output) {
    if out == Output::Json {
        return print_json(&Value::Array(members.iter().map(member_json).collect()));
    }
    let mut t = table(&["MEMBER", "API", "PEER", "VOTER"]);
    for x in members {
        t.add_row(vec![
            x.id.to_string(),
            x.api_addr.clone(),
            x.peer_addr.clone(),
            x.voter.to_string(),
        ]);
    }
    println!("{t}");
}

pub async fn status(c: &mut Client, out: Output) -> Result<(), ClientError> {
    let s = c.cluster.status(pb::StatusRequest {}).await?.into_inner();
    let members: Vec<Value> = s.members.iter().map(member_json).collect();
    if out == Output::Json {
        print_json(&json!({
            "node_id": s.node_id, "role": s.role, "term": s.term, "leader_id": s.leader_id,
            "leader_addr": s.leader_addr, "commit_index": s.commit_index,
            "applied_index": s.applied_index, "last_log_index": s.last_log_index,
            "snapshot_index": s.snapshot_index, "search_index_watermark": s.search_index_watermark,
            "members": members, "version": s.version, "embedding_backlog": s.embedding_backlog,
        }));
    } else {
        let mut t = table(&[
            "NODE", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "SNAPSHOT", "SEARCH", "VERSION",
        ]);
        t.add_row(vec![
            s.node_id.to_string(),
            s.role.clone(),
            s.term.to_string(),
            format!("{} ({})", s.leader_id, s.leader_addr),
            s.commit_index.to_string(),
            s.applied_index.to_string(),
            s.snapshot_index.to_string(),
            s.search_index_watermark.to_string(),
            s.version.clone(),
        ]);
        println!("{t}");
        if s.embedding_backlog > 0 {
            println!(
                "re-embedding: {} memories and messages still to be given a vector of the current model",
                s.embedding_backlog
            );
        }
        print_members(&s.members, out);
    }
    Ok(())
}

pub async fn member(
    c: &mut Client,
    out: Output,
    command: MemberCommand,
) -> Result<(), ClientError> {
    let members = match command {
        MemberCommand::Add {
            id,
            peer_addr,
            api_addr,
        } => {
            eprintln!("adding node {id} as a learner; waiting for it to catch up...");
            c.cluster
                .add_member(pb::AddMemberRequest {
                    id,
                    peer_addr,
                    api_addr,
                })
                .await?
                .into_inner()
                .members
        }
        MemberCommand::Promote { id } => {
            c.cluster
                .promote_member(pb::PromoteMemberRequest { id })
                .await?
                .into_inner()
                .members
        }
        MemberCommand::Remove { id } => {
            c.cluster
                .remove_member(pb::RemoveMemberRequest { id })
                .await?
                .into_inner()
                .members
        }
        MemberCommand::List => {
            c.cluster
                .status(pb::StatusRequest {})
                .await?
                .into_inner()
                .members
        }
    };
    print_members(&members, out);
    Ok(())
}

pub async fn transfer_leader(c: &mut Client, out: Output, id: u64) -> Result<(), ClientError> {
    eprintln!("handing leadership to node {id}...");
    let r = c
        .cluster
        .transfer_leader(pb::TransferLeaderRequest { id })
        .await?
        .into_inner();
    if out == Output::Json {
        print_json(&json!({"leader_id": r.leader_id, "term": r.term}));
    } else {
        println!("node {} leads (term {})", r.leader_id, r.term);
    }
    Ok(())
}
