//! A static 3-node cluster of real `nexus` processes on loopback: any node serves any
//! request (writes forwarded to the leader, linearizable reads through the leader's read
//! index), and the cluster survives `kill -9` of its leader with every acknowledged write.

mod common;

use std::time::{Duration, Instant};

use common::Nexus;
use nexus_client::{pb, Client};

async fn status(n: &Nexus) -> Option<pb::StatusResponse> {
    let mut c = Client::connect(&n.endpoint()).await.ok()?;
    c.cluster
        .status(pb::StatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Waits until every running node agrees on one leader, and returns its index in `nodes`.
async fn agreed_leader(nodes: &[Nexus]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = Vec::new();
        for n in nodes.iter().filter(|n| n.is_running()) {
            leaders.push(status(n).await.map_or(0, |s| s.leader_id));
        }
        if leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
            let id = leaders[0] as usize;
            if nodes[id - 1].is_running() {
                return id - 1;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        namespace: "cluster".into(),
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

/// A write that retries while the cluster elects a leader (Unavailable).
async fn put_retrying(c: &mut Client, key: &str, value: &str) -> pb::MemoryItem {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.memory.put(put(key, value)).await {
            Ok(r) => return r.into_inner().item.unwrap(),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("put {key}: {s}"),
        }
    }
}

async fn get(c: &mut Client, key: &str) -> Result<pb::MemoryItem, tonic::Status> {
    c.memory
        .get(pb::GetRequest {
            namespace: "cluster".into(),
            key: key.into(),
            consistency: 0,
        })
        .await
        .map(|r| r.into_inner().item.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_serve_any_request_and_survive_losing_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Nexus::start_cluster(dir.path(), 3, &[]).await;
    let leader = agreed_leader(&nodes).await;
    let s = status(&nodes[leader]).await.unwrap();
    assert_eq!(s.role, "leader");
    assert_eq!(s.members.iter().filter(|m| m.voter).count(), 3);
    for (i, n) in nodes.iter().enumerate() {
        if i != leader {
            assert_eq!(status(n).await.unwrap().role, "follower");
        }
    }

    // Writes through every node; each is read back linearizably from every node.
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(n.client().await);
    }
    let mut acked = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        for j in 0..20 {
            let key = format!("via{i}-{j}");
            let value = format!("\"written through node {} number {j} okapi{i}x{j}\"", i + 1);
            let item = put_retrying(c, &key, &value).await;
            assert_eq!(item.version, 1);
            acked.push((key, value));
        }
    }
    for c in clients.iter_mut() {
        for (key, value) in &acked {
            assert_eq!(&get(c, key).await.unwrap().value, value, "{key}");
        }
    }
    // A follower's search finds what was written through another node.
    let follower = (leader + 1) % 3;
    let hits = clients[follower]
        .search
        .search(pb::SearchRequest {
            query: "okapi0x7".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 1);
    // Compare-and-set through a follower is decided by the one log.
    let mut cas = put("via0-0", "\"cas\"");
    cas.expected_version = Some(1);
    assert_eq!(
        clients[follower]
            .memory
            .put(cas.clone())
            .await
            .unwrap()
            .into_inner()
            .item
            .unwrap()
            .version,
        2
    );
    assert_eq!(
        clients[leader].memory.put(cas).await.unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );
    acked[0].1 = "\"cas\"".into();

    // kill -9 the leader: the other two elect a new one and keep every acknowledged write.
    nodes[leader].kill9();
    let new_leader = agreed_leader(&nodes).await;
    assert_ne!(new_leader, leader);
    let survivor = (0..3).find(|i| *i != leader && *i != new_leader).unwrap();
    for (key, value) in &acked {
        assert_eq!(
            &get(&mut clients[survivor], key).await.unwrap().value,
            value,
            "{key} after failover"
        );
    }
    for j in 0..20 {
        let key = format!("after-{j}");
        let value = format!("\"after failover {j}\"");
        put_retrying(&mut clients[survivor], &key, &value).await;
        acked.push((key, value));
    }

    // The old leader comes back as a follower and catches up.
    nodes[leader].restart().await;
    agreed_leader(&nodes).await;
    let mut back = nodes[leader].client().await;
    for (key, value) in &acked {
        assert_eq!(
            &get(&mut back, key).await.unwrap().value,
            value,
            "{key} on the restarted node"
        );
    }
}

fn voters(members: &[pb::Member]) -> Vec<u64> {
    members.iter().filter(|m| m.voter).map(|m| m.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_grows_and_shrinks_without_downtime() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = Nexus::start_cluster(dir.path(), 3, &[]).await;
    let leader = agreed_leader(&nodes).await;
    let follower = (leader + 1) % 3;
    let mut admin = nodes[follower].client().await;
    put_retrying(&mut admin, "before", "\"grown\"").await;

    let mut fourth = Nexus::launch(
        &dir.path().join("node4"),
        &[("NEXUS_NODE_ID", "4"), ("NEXUS_JOIN", "true")],
    );
    // Membership changes go through any node (a follower forwards them).
    let members = admin
        .cluster
        .add_member(pb::AddMemberRequest {
            id: 4,
            peer_addr: format!("127.0.0.1:{}", fourth.peer_port),
            api_addr: format!("127.0.0.1:{}", fourth.grpc_port),
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert!(
        members.iter().any(|m| m.id == 4 && !m.voter),
        "learner: {members:?}"
    );
    fourth.wait_ready().await;
    let members = admin
        .cluster
        .promote_member(pb::PromoteMemberRequest { id: 4 })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(voters(&members), vec![1, 2, 3, 4]);
    let mut on_fourth = fourth.client().await;
    assert_eq!(
        get(&mut on_fourth, "before").await.unwrap().value,
        "\"grown\""
    );
    put_retrying(&mut on_fourth, "from-4", "\"hello from node 4\"").await;

    // Errors name what is wrong and change nothing.
    let e = admin
        .cluster
        .promote_member(pb::PromoteMemberRequest { id: 9 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = admin
        .cluster
        .remove_member(pb::RemoveMemberRequest { id: 9 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = admin
        .cluster
        .add_member(pb::AddMemberRequest {
            id: 5,
            peer_addr: String::new(),
            api_addr: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // Shrink: remove a node that is not the admin's; the rest keep serving.
    let removed = (0..3).find(|i| *i != follower).unwrap() as u64 + 1;
    let members = admin
        .cluster
        .remove_member(pb::RemoveMemberRequest { id: removed })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert!(!members.iter().any(|m| m.id == removed), "{members:?}");
    assert_eq!(voters(&members).len(), 3);
    agreed_leader(&nodes).await;
    put_retrying(&mut admin, "after-shrink", "\"still serving\"").await;
    assert_eq!(
        get(&mut on_fourth, "after-shrink").await.unwrap().value,
        "\"still serving\""
    );
    assert_eq!(
        get(&mut on_fourth, "from-4").await.unwrap().value,
        "\"hello from node 4\""
    );
}
