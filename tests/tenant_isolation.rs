//! Two tenants' memories and conversation messages in one full-text index and one vector
//! index: nothing of one is found, recalled, forgotten or deleted through the other. In process (the public API serves only
//! tenant `default` until authentication lands), with the real store, Raft node, indexes and
//! local model.

mod in_process;

use std::sync::Arc;
use std::time::Duration;

use in_process::Parts;
use nexus_node::cluster::ReadConsistency;
use nexus_node::command::Scope;
use nexus_node::error::NexusError;
use nexus_node::memory::conversations::NewMessageRequest;
use nexus_node::memory::semantic::RememberRequest;
use nexus_node::search::fulltext::{HitItem, SearchRequest};
use nexus_node::search::recall::{RecallMode, RecallRequest, Recaller};
use nexus_node::search::vector::local::LocalIndex;
use nexus_node::search::vector::{PointKind, VectorFilter, VectorIndex, VectorIndexer};
use nexus_node::service::conversations::ConversationService;
use nexus_node::service::iam::IamService;
use nexus_node::service::semantic::SemanticService;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_memories() {
    let parts = Parts::start(|_| {}).await;
    let (config, node, fulltext, embedder) =
        (&parts.config, &parts.node, &parts.fulltext, &parts.embedder);
    let local: Arc<dyn VectorIndex> =
        Arc::new(LocalIndex::open(&parts.dir.path().join("vectors"), parts.hnsw()).unwrap());
    let vectors = VectorIndexer::start(
        local.clone(),
        node.log_follower(0),
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

    let iam = IamService::new(node.clone());
    for t in ["tenant-a", "tenant-b"] {
        parts.create_tenant(t).await;
    }
    let remember = |tenant: &'static str, text: &'static str| {
        let semantic = &semantic;
        async move {
            semantic
                .remember(
                    &Scope::system(tenant),
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
            assert_eq!(hits[0].item.id(), own.id, "{tenant} {mode:?}");
            assert!(
                hits.iter().all(|h| h.item.id() != other.id),
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
            .await
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
            semantic.forget(&Scope::system(tenant), &other.id).await,
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

    // Conversations: the same conversation id in both tenants, so their messages share a
    // scope name in the vector index.
    let conversations =
        ConversationService::new(node.clone(), config.limits.clone(), Some(embedder.clone()));
    let mut said = Vec::new();
    for (tenant, content) in [
        ("tenant-a", "Alpha decided to move the offsite to Lisbon."),
        ("tenant-b", "Beta decided to move the offsite to Oslo."),
    ] {
        conversations
            .create(&Scope::system(tenant), "shared-conv", "", "")
            .await
            .unwrap();
        let m = conversations
            .append(
                &Scope::system(tenant),
                "shared-conv",
                vec![NewMessageRequest {
                    role: "user".into(),
                    content: content.into(),
                    metadata: String::new(),
                    input_tokens: None,
                    output_tokens: None,
                }],
            )
            .await
            .unwrap();
        said.push(m[0].id.clone());
    }
    let recall_messages = |tenant: &'static str, mode: RecallMode| {
        let recaller = &recaller;
        async move {
            recaller
                .recall(
                    tenant,
                    &RecallRequest {
                        query: "where is the team retreat being held?".into(),
                        conversation_id: "shared-conv".into(),
                        mode,
                        ..Default::default()
                    },
                )
                .await
                .unwrap()
                .into_iter()
                .map(|h| h.item.id().to_string())
                .collect::<Vec<_>>()
        }
    };
    for mode in [RecallMode::Hybrid, RecallMode::Vector] {
        assert_eq!(
            recall_messages("tenant-a", mode).await,
            vec![said[0].clone()]
        );
        assert_eq!(
            recall_messages("tenant-b", mode).await,
            vec![said[1].clone()]
        );
    }
    // Deleting tenant A's conversation leaves tenant B's message vector in place.
    conversations
        .delete(&Scope::system("tenant-a"), "shared-conv")
        .await
        .unwrap();
    assert!(recall_messages("tenant-a", RecallMode::Vector)
        .await
        .is_empty());
    assert_eq!(
        recall_messages("tenant-b", RecallMode::Vector).await,
        vec![said[1].clone()]
    );
    let messages_only = VectorFilter {
        kind: Some(PointKind::Message),
        ..Default::default()
    };
    assert_eq!(
        local
            .search("tenant-a", &b.embedding, 10, &messages_only)
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        local
            .search("tenant-b", &b.embedding, 10, &messages_only)
            .await
            .unwrap()
            .len(),
        1
    );

    // Deleting tenant B removes all of its data from both indexes; A keeps everything.
    iam.delete_tenant(&nexus_node::service::Caller::system(), "tenant-b")
        .await
        .unwrap();
    let gone = recaller
        .recall(
            "tenant-b",
            &RecallRequest {
                query: "secret launch code binder offsite".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(gone.is_empty(), "{gone:?}");
    assert!(local
        .search("tenant-b", &b.embedding, 10, &VectorFilter::default())
        .await
        .unwrap()
        .is_empty());
    let words = fulltext
        .search(
            "tenant-b",
            &SearchRequest {
                query: "binder offsite".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(words.is_empty());
    assert!(matches!(
        semantic
            .get("tenant-b", &b.id, ReadConsistency::Linearizable)
            .await,
        Err(NexusError::NotFound(_))
    ));
    // A tenant that is gone takes no new data.
    assert!(matches!(
        semantic
            .remember(
                &Scope::system("tenant-b"),
                RememberRequest {
                    text: "too late".into(),
                    ..Default::default()
                },
            )
            .await,
        Err(NexusError::NotFound(_))
    ));
    let kept = recaller
        .recall(
            "tenant-a",
            &RecallRequest {
                query: "secret launch code binder".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(kept[0].item.id(), a.id);
    vectors.shutdown();
    parts.stop().await;
}
