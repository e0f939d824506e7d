//! Two tenants' memories in one full-text index and one vector index: nothing of one is
//! found, recalled or forgotten through the other. In process (the public API serves only
//! tenant `default` until authentication lands), with the real store, Raft node, indexes and
//! local model.

use std::sync::Arc;
use std::time::Duration;

use nexus_node::cluster::{ClusterNode, ReadConsistency};
use nexus_node::config::Config;
use nexus_node::error::NexusError;
use nexus_node::memory::semantic::{RememberRequest, SemanticService};
use nexus_node::search::fulltext::{FullTextIndex, HitItem, SearchRequest};
use nexus_node::search::recall::{RecallMode, RecallRequest, Recaller};
use nexus_node::search::vector::local::{HnswParams, LocalIndex};
use nexus_node::search::vector::{VectorFilter, VectorIndex, VectorIndexer};
use nexus_node::store::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_memories() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let store = Store::open(&dir.path().join("db")).unwrap();
    let node = ClusterNode::start(&config, store, None).await.unwrap();
    node.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let fulltext = FullTextIndex::open(
        &dir.path().join("search"),
        node.clone(),
        config.search.clone(),
        1000,
    )
    .unwrap();
    let embedder = nexus_node::embed::from_config(&config.embedding)
        .unwrap()
        .expect("the model is in the cache (nexus model pull)");
    let local: Arc<dyn VectorIndex> = Arc::new(
        LocalIndex::open(
            &dir.path().join("vectors"),
            HnswParams::from_config(embedder.dimensions(), &config.vector).unwrap(),
        )
        .unwrap(),
    );
    let vectors = VectorIndexer::start(
        local.clone(),
        node.store.clone(),
        node.applied(),
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
    .unwrap();
    let semantic =
        SemanticService::new(node.clone(), config.limits.clone(), Some(embedder.clone()));
    let recaller = Recaller::new(
        node.clone(),
        fulltext.clone(),
        Some(vectors.clone()),
        Some(embedder.clone()),
        config.limits.clone(),
        &config.search,
    );

    let remember = |tenant: &'static str, text: &'static str| {
        let semantic = &semantic;
        async move {
            semantic
                .remember(
                    tenant,
                    RememberRequest {
                        namespace: "shared-name".into(),
                        text: text.into(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap()
        }
    };
    let a = remember(
        "tenant-a",
        "Alpha's secret launch code is kept in the red binder.",
    )
    .await;
    remember("tenant-a", "Alpha's team meets on Mondays.").await;
    let b = remember(
        "tenant-b",
        "Beta's secret launch code is kept in the blue binder.",
    )
    .await;
    // Same sequence number in both tenants: keys of the vector index overlap on purpose.
    assert_eq!(a.seq, b.seq);

    for (tenant, own, other) in [("tenant-a", &a, &b), ("tenant-b", &b, &a)] {
        for mode in [RecallMode::Hybrid, RecallMode::Vector, RecallMode::Bm25] {
            let hits = recaller
                .recall(
                    tenant,
                    &RecallRequest {
                        query: "secret launch code binder".into(),
                        k: 10,
                        mode,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert!(!hits.is_empty(), "{tenant} {mode:?}");
            assert_eq!(hits[0].record.id, own.id, "{tenant} {mode:?}");
            assert!(
                hits.iter().all(|h| h.record.id != other.id),
                "{tenant} {mode:?} sees the other tenant"
            );
        }
        // The full-text index alone.
        let words = fulltext
            .search(
                tenant,
                &SearchRequest {
                    query: "binder".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(words.len(), 1);
        assert!(matches!(&words[0].item, HitItem::Semantic(r) if r.id == own.id));
        // The vector index alone.
        let near = local
            .search(tenant, &own.embedding, 10, &VectorFilter::default())
            .unwrap();
        let own_count = if tenant == "tenant-a" { 2 } else { 1 };
        assert_eq!(near.len(), own_count);
        // Reading and forgetting by the other tenant's id: not found.
        assert!(matches!(
            semantic
                .get(tenant, &other.id, ReadConsistency::Linearizable)
                .await,
            Err(NexusError::NotFound(_))
        ));
        assert!(matches!(
            semantic.forget(tenant, &other.id).await,
            Err(NexusError::NotFound(_))
        ));
    }
    // A tenant with nothing finds nothing.
    let none = recaller
        .recall(
            "tenant-c",
            &RecallRequest {
                query: "secret launch code".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    vectors.shutdown();
    fulltext.shutdown();
    node.raft.shutdown().await.unwrap();
}
