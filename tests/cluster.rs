//! A static 3-node cluster of real `nexus` processes on loopback: any node serves any
//! request (writes forwarded to the leader, linearizable reads through the leader's read
//! index), and the cluster survives `kill -9` of its leader with every acknowledged write.

mod common;

use std::time::{Duration, Instant};

use common::{agreed_leader, status, Nexus};
use nexus_client::{pb, Client};

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
    let _serial = common::one_cluster_at_a_time().await;
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

/// Adds node `id` (started with `--join`) through `admin` as a learner, then promotes it.
async fn add_voter(admin: &mut Client, dir: &std::path::Path, id: u64) -> Nexus {
    let mut node = Nexus::launch(
        &dir.join(format!("node{id}")),
        &[("NEXUS_NODE_ID", &id.to_string()), ("NEXUS_JOIN", "true")],
    );
    let members = admin
        .cluster
        .add_member(pb::AddMemberRequest {
            id,
            peer_addr: format!("127.0.0.1:{}", node.peer_port),
            api_addr: format!("127.0.0.1:{}", node.grpc_port),
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert!(
        members.iter().any(|m| m.id == id && !m.voter),
        "learner: {members:?}"
    );
    node.wait_ready().await;
    let members = admin
        .cluster
        .promote_member(pb::PromoteMemberRequest { id })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert!(voters(&members).contains(&id), "{members:?}");
    node
}

async fn remove_member(admin: &mut Client, id: u64) -> Vec<pb::Member> {
    let members = admin
        .cluster
        .remove_member(pb::RemoveMemberRequest { id })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert!(!members.iter().any(|m| m.id == id), "{members:?}");
    members
}

/// Grows 3 -> 5 voters, replaces a dead node, shrinks back to 3, all through a follower, while
/// a client keeps writing through that follower: no write fails, and every one is on the final
/// members.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_grows_replaces_and_shrinks_without_downtime() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let _serial = common::one_cluster_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Nexus::start_cluster(dir.path(), 3, &[]).await;
    let leader = agreed_leader(&nodes).await;
    let follower = (leader + 1) % 3;
    let mut admin = nodes[follower].client().await;
    put_retrying(&mut admin, "before", "\"grown\"").await;

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut c, stop) = (admin.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut n, mut unavailable, mut max_gap) = (0u64, 0u64, Duration::ZERO);
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                // Retrying the same key is safe: a write that was committed after all is
                // overwritten with the same value.
                match c.memory.put(put(&format!("live/{n:06}"), "1")).await {
                    Ok(_) => {
                        max_gap = max_gap.max(last.elapsed());
                        last = Instant::now();
                        n += 1;
                    }
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(s) => panic!("write live/{n:06}: {s}"),
                }
            }
            (n, unavailable, max_gap)
        })
    };

    // Grow to 5, through a follower (membership changes are forwarded to the leader).
    nodes.push(add_voter(&mut admin, dir.path(), 4).await);
    nodes.push(add_voter(&mut admin, dir.path(), 5).await);
    let members = admin
        .cluster
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(voters(&members), vec![1, 2, 3, 4, 5]);
    let mut on_fourth = nodes[3].client().await;
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
            id: 7,
            peer_addr: String::new(),
            api_addr: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // Replace a dead node: it dies, is removed, and node 6 takes its place.
    let dead = (0..3).find(|i| *i != leader && *i != follower).unwrap();
    nodes[dead].kill9();
    remove_member(&mut admin, dead as u64 + 1).await;
    nodes.push(add_voter(&mut admin, dir.path(), 6).await);

    // Shrink back to 3: remove nodes 4 and 5, then stop them.
    for id in [4u64, 5] {
        let members = remove_member(&mut admin, id).await;
        nodes[id as usize - 1].kill9();
        eprintln!("voters now {:?}", voters(&members));
    }
    let members = admin
        .cluster
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .members;
    let mut expected = vec![leader as u64 + 1, follower as u64 + 1, 6];
    expected.sort_unstable();
    assert_eq!(voters(&members), expected);

    stop.store(true, Ordering::Relaxed);
    let (written, unavailable, max_gap) = writer.await.unwrap();
    eprintln!(
        "{written} writes during the changes, {unavailable} Unavailable replies, longest gap {max_gap:?}"
    );
    assert!(written > 50, "the writer made progress: {written}");
    assert!(
        max_gap < Duration::from_secs(5),
        "writes stalled for {max_gap:?} during membership changes"
    );
    // Every write is on each final member (node 6 joined in the middle of them).
    agreed_leader(&nodes).await;
    for n in nodes.iter().filter(|n| n.is_running()) {
        let mut c = n.client().await;
        let count = count_keys(&mut c, "live/", pb::Consistency::Linearizable).await;
        // The last write may have been committed after its reply was lost (one extra key).
        assert!(
            count == written || count == written + 1,
            "{count} of {written} writes on a final member"
        );
        assert_eq!(
            get(&mut c, "from-4").await.unwrap().value,
            "\"hello from node 4\""
        );
    }
}

/// How many keys of namespace "cluster" start with `prefix`, page by page.
async fn count_keys(c: &mut Client, prefix: &str, consistency: pb::Consistency) -> u64 {
    let (mut count, mut token) = (0u64, String::new());
    loop {
        let page = c
            .memory
            .list(pb::ListRequest {
                namespace: "cluster".into(),
                prefix: prefix.into(),
                page_size: 1000,
                page_token: token,
                consistency: consistency as i32,
            })
            .await
            .unwrap()
            .into_inner();
        count += page.items.len() as u64;
        token = page.next_page_token;
        if token.is_empty() {
            return count;
        }
    }
}

/// Reads a counter or gauge from a node's `/metrics`.
async fn metric(n: &Nexus, name: &str) -> f64 {
    let (code, body) = common::http_get(&n.http("/metrics")).await;
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in /metrics"))
}

/// A follower that was down while the cluster took 100,000 writes comes back after the
/// leader has compacted its log past the follower's last entry: it catches up by installing
/// the leader's snapshot (streamed in chunks), then serves every write locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_down_for_100k_writes_catches_up_through_a_snapshot() {
    let _serial = common::one_cluster_at_a_time().await;
    const WRITES: usize = 100_000;
    const WRITERS: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        // Snapshot and compact often, and stream the snapshot in many chunks.
        ("NEXUS_RAFT__SNAPSHOT_EVERY_ENTRIES", "500"),
        ("NEXUS_RAFT__KEEP_ENTRIES_AFTER_SNAPSHOT", "50"),
        ("NEXUS_RAFT__SNAPSHOT_CHUNK_BYTES", "262144"),
        // With authentication every write is also audited, which doubles the state to send.
        ("NEXUS_AUTH__ENABLED", "true"),
        ("NEXUS_ROOT_KEY", "cluster-test-root-key-0123456789abcdef"),
    ];
    let mut nodes = Nexus::start_cluster(dir.path(), 3, &env).await;
    let leader = agreed_leader(&nodes).await;
    let down = (leader + 1) % 3;
    let mut c = nodes[leader].client().await;
    put_retrying(&mut c, "before", "1").await;
    nodes[down].kill9();
    let before = status(&nodes[leader]).await.unwrap();

    let started = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut c = c.clone();
            tokio::spawn(async move {
                for i in (w..WRITES).step_by(WRITERS) {
                    let value = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(64));
                    c.memory
                        .put(put(&format!("w{i:06}"), &value))
                        .await
                        .unwrap_or_else(|s| panic!("write {i}: {s}"));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let after = status(&nodes[leader]).await.unwrap();
    eprintln!(
        "{WRITES} writes in {:.1?} while node {} was down: log {} -> {}, leader's snapshot at {}",
        started.elapsed(),
        down + 1,
        before.last_log_index,
        after.last_log_index,
        after.snapshot_index
    );
    assert!(
        after.snapshot_index > before.last_log_index + 50,
        "the leader compacted its log past the follower's last entry"
    );

    nodes[down].restart().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(&nodes[down]).await.unwrap();
        if s.applied_index >= after.commit_index {
            break;
        }
        if Instant::now() >= deadline {
            let log = nodes[down].log_text();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("vote changed"))
                .rev()
                .take(30)
                .collect();
            panic!(
                "the follower did not catch up: applied {} of {}; its log ends:\n{}",
                s.applied_index,
                after.commit_index,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        metric(&nodes[down], "nexus_raft_snapshots_installed_total").await >= 1.0,
        "the follower caught up through a snapshot"
    );
    // Every write is in the follower's own state machine (stale reads are served locally).
    let mut f = nodes[down].client().await;
    for i in (0..WRITES).step_by(997).chain([WRITES - 1]) {
        let item = f
            .memory
            .get(pb::GetRequest {
                namespace: "cluster".into(),
                key: format!("w{i:06}"),
                consistency: pb::Consistency::Stale as i32,
            })
            .await
            .unwrap_or_else(|s| panic!("w{i:06} on the follower: {s}"))
            .into_inner()
            .item
            .unwrap();
        assert!(
            item.value.starts_with(&format!("{{\"i\":{i},")),
            "{}",
            item.value
        );
    }
    let count = count_keys(&mut f, "w", pb::Consistency::Stale).await;
    assert_eq!(count, WRITES as u64, "every write is on the follower");
    // And it takes part in the cluster again: a write through it is readable everywhere.
    put_retrying(&mut f, "after", "2").await;
    for n in &nodes {
        let mut c = n.client().await;
        assert_eq!(get(&mut c, "after").await.unwrap().value, "2");
    }
}

async fn transfer(c: &mut Client, id: u64) -> Result<pb::TransferLeaderResponse, tonic::Status> {
    c.cluster
        .transfer_leader(pb::TransferLeaderRequest { id })
        .await
        .map(|r| r.into_inner())
}

/// `TransferLeader` hands leadership to the chosen voter, asked through any node, and the
/// cluster goes on serving writes; bad targets are refused and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_is_transferred_on_request() {
    let _serial = common::one_cluster_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let nodes = Nexus::start_cluster(dir.path(), 3, &[]).await;
    let leader = agreed_leader(&nodes).await;
    let mut c = nodes[leader].client().await;
    put_retrying(&mut c, "t", "1").await;

    // Asked through a follower, for the other follower.
    let via = (leader + 1) % 3;
    let target = (leader + 2) % 3;
    let mut f = nodes[via].client().await;
    for (id, code) in [
        (0, tonic::Code::InvalidArgument),
        (9, tonic::Code::NotFound),
    ] {
        let e = transfer(&mut f, id).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
    }
    assert_eq!(
        agreed_leader(&nodes).await,
        leader,
        "a refused transfer changes nothing"
    );

    let started = Instant::now();
    let r = transfer(&mut f, target as u64 + 1).await.unwrap();
    eprintln!("transfer took {:?}", started.elapsed());
    assert_eq!(r.leader_id, target as u64 + 1);
    assert_eq!(agreed_leader(&nodes).await, target);
    // It stays put (the old leader does not take it back when its hold ends) and serves writes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(agreed_leader(&nodes).await, target);
    let item = put_retrying(&mut c, "t", "2").await;
    assert_eq!(item.version, 2);
    // Transferring to the leader itself is a no-op.
    let r = transfer(&mut c, target as u64 + 1).await.unwrap();
    assert_eq!(r.leader_id, target as u64 + 1);
}
