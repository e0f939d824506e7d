//! The Qdrant backend against a real Qdrant server. No Qdrant can be installed on the CI
//! machines, so these run only when `QDRANT_URL` names one (its gRPC port, e.g.
//! `QDRANT_URL=http://localhost:6334 cargo test -p nexus-node --test qdrant`) and are skipped
//! with a message otherwise. What needs no server (watermark, catch-up while the index is
//! down) is tested against a failing index in tests/vector_catchup.rs.

mod common;

use common::Nexus;
use nexus_client::pb;
use nexus_node::config::VectorConfig;
use nexus_node::search::vector::qdrant::QdrantIndex;
use nexus_node::search::vector::{PointKind, VectorChange, VectorFilter, VectorIndex, VectorPoint};

fn qdrant_url() -> Option<String> {
    match std::env::var("QDRANT_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "skipped: set QDRANT_URL (e.g. http://localhost:6334) to run the Qdrant tests"
            );
            None
        }
    }
}

fn collection() -> String {
    format!(
        "nexus_test_{}_{}",
        std::process::id(),
        nexus_node::memory::now_ms()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_qdrant_index_keeps_tenants_apart_and_its_watermark() {
    let Some(url) = qdrant_url() else { return };
    let config = VectorConfig {
        backend: "qdrant".into(),
        qdrant_url: url,
        qdrant_collection: collection(),
        ..VectorConfig::default()
    };
    let index = QdrantIndex::new(&config, 7, 4).unwrap();
    let point = |tenant: &str, seq: u64, v: [f32; 4]| {
        VectorChange::Upsert(VectorPoint {
            tenant: tenant.into(),
            seq,
            kind: PointKind::Memory,
            scope: "n".into(),
            created_at_ms: seq as i64,
            vector: v.to_vec(),
        })
    };
    // The indexer's calls block (they run on its own thread); a search is async.
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        assert_eq!(index.durable_watermark().unwrap(), 0);
        index
            .apply(
                &[
                    point("a", 1, [1.0, 0.0, 0.0, 0.0]),
                    point("a", 2, [0.0, 1.0, 0.0, 0.0]),
                    point("b", 1, [1.0, 0.0, 0.0, 0.0]),
                ],
                10,
            )
            .unwrap();
        assert_eq!(index.durable_watermark().unwrap(), 10);
        let q = [1.0, 0.0, 0.0, 0.0];
        let a = rt
            .block_on(index.search("a", &q, 10, &VectorFilter::default()))
            .unwrap();
        assert_eq!(a.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![1, 2]);
        let b = rt
            .block_on(index.search("b", &q, 10, &VectorFilter::default()))
            .unwrap();
        assert_eq!(b.len(), 1);
        index
            .apply(
                &[VectorChange::Delete {
                    tenant: "a".into(),
                    seq: 1,
                }],
                11,
            )
            .unwrap();
        let a = rt
            .block_on(index.search("a", &q, 10, &VectorFilter::default()))
            .unwrap();
        assert_eq!(a.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![2]);
        let since = VectorFilter {
            since_ms: 2,
            ..Default::default()
        };
        assert_eq!(
            rt.block_on(index.search("a", &q, 10, &since))
                .unwrap()
                .len(),
            1
        );
        // Messages of a conversation: found by kind and scope, deleted together.
        let message = |seq: u64, conversation: &str| {
            VectorChange::Upsert(VectorPoint {
                tenant: "a".into(),
                seq,
                kind: PointKind::Message,
                scope: conversation.into(),
                created_at_ms: seq as i64,
                vector: vec![1.0, 0.0, 0.0, 0.0],
            })
        };
        index
            .apply(&[message(3, "c1"), message(4, "c1"), message(5, "c2")], 12)
            .unwrap();
        let in_c1 = VectorFilter {
            kind: Some(PointKind::Message),
            scope: Some("c1".into()),
            ..Default::default()
        };
        let hits = rt.block_on(index.search("a", &q, 10, &in_c1)).unwrap();
        assert_eq!(hits.len(), 2);
        assert!(hits.iter().all(|h| h.kind == PointKind::Message));
        index
            .apply(
                &[VectorChange::DeleteScope {
                    tenant: "a".into(),
                    kind: PointKind::Message,
                    scope: "c1".into(),
                }],
                13,
            )
            .unwrap();
        assert!(rt
            .block_on(index.search("a", &q, 10, &in_c1))
            .unwrap()
            .is_empty());
        let all = rt
            .block_on(index.search("a", &q, 10, &VectorFilter::default()))
            .unwrap();
        assert_eq!(all.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![5, 2]);
        index.clear().unwrap();
        assert_eq!(index.durable_watermark().unwrap(), 0);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_node_on_qdrant_recalls_across_a_restart() {
    let Some(url) = qdrant_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let collection = collection();
    let env = [
        ("NEXUS_VECTOR__BACKEND", "qdrant"),
        ("NEXUS_VECTOR__QDRANT_URL", url.as_str()),
        ("NEXUS_VECTOR__QDRANT_COLLECTION", collection.as_str()),
    ];
    let mut n = Nexus::start(dir.path(), &env).await;
    let mut c = n.client().await;
    let m = c
        .memory
        .remember(pb::RememberRequest {
            text: "The Apollo launch was pushed back to the end of March.".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .memory
        .unwrap();
    let ask = pb::RecallRequest {
        query: "when is the product release date?".into(),
        mode: pb::RecallMode::Vector as i32,
        ..Default::default()
    };
    let hits = c
        .memory
        .recall(ask.clone())
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits[0].memory().unwrap().id, m.id);
    n.kill9();
    n.restart().await;
    let mut c = n.client().await;
    let hits = c.memory.recall(ask).await.unwrap().into_inner().hits;
    assert_eq!(hits[0].memory().unwrap().id, m.id);
}
