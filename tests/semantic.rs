//! Semantic memory through the real `nexus` binary: Remember / Recall / Forget with the local
//! model, filters and errors, a node without a model, and recall after restarts and on
//! followers of a 3-node cluster.
//!
//! Needs the embedding model in the model cache (`nexus model pull`; scripts/test runs it).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{agreed_leader, one_cluster_at_a_time, Nexus};
use nexus_client::pb;
use tonic::Code;

async fn remember(
    c: &mut nexus_client::Client,
    namespace: &str,
    text: &str,
    meta: &[(&str, &str)],
) -> pb::SemanticMemory {
    c.memory
        .remember(pb::RememberRequest {
            namespace: namespace.into(),
            text: text.into(),
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            importance: None,
        })
        .await
        .unwrap()
        .into_inner()
        .memory
        .unwrap()
}

async fn recall(c: &mut nexus_client::Client, req: pb::RecallRequest) -> Vec<pb::RecallHit> {
    c.memory.recall(req).await.unwrap().into_inner().hits
}

fn texts(hits: &[pb::RecallHit]) -> Vec<String> {
    hits.iter()
        .map(|h| h.memory.as_ref().unwrap().text.clone())
        .collect()
}

#[tokio::test]
async fn remember_recall_and_forget() {
    let dir = tempfile::tempdir().unwrap();
    let n = Nexus::start(dir.path(), &[]).await;
    let mut c = n.client().await;

    let deadline = remember(
        &mut c,
        "work",
        "The Apollo launch was pushed back to the end of March.",
        &[("project", "apollo")],
    )
    .await;
    assert_eq!(deadline.namespace, "work");
    assert_eq!(deadline.model, "all-MiniLM-L6-v2");
    assert_eq!(deadline.importance, 0.5);
    remember(
        &mut c,
        "work",
        "Lunch with the design team is on Thursday.",
        &[("project", "hermes")],
    )
    .await;
    remember(&mut c, "home", "Buy oat milk and eggs.", &[]).await;
    let default_ns = remember(&mut c, "", "The cat's vet visit is next week.", &[]).await;
    assert_eq!(default_ns.namespace, "default");

    // A paraphrase with no content word in common finds it, by vector.
    let hits = recall(
        &mut c,
        pb::RecallRequest {
            query: "was the space mission postponed?".into(),
            k: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(hits.len(), 2);
    let top = &hits[0];
    assert_eq!(top.memory.as_ref().unwrap().id, deadline.id);
    assert!(top.retrievers.contains(&"vector".to_string()));
    assert!(top.similarity.unwrap() > 0.2, "{:?}", top.similarity);
    assert!(top.score > 0.0);

    // A shared word brings BM25 in as well.
    let hits = recall(
        &mut c,
        pb::RecallRequest {
            query: "Apollo launch".into(),
            k: 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(hits[0].retrievers, vec!["vector", "bm25"]);

    // Filters: namespace, metadata, time, minimum similarity.
    let only_home = recall(
        &mut c,
        pb::RecallRequest {
            query: "release date".into(),
            namespace: "home".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(texts(&only_home), vec!["Buy oat milk and eggs."]);
    let hermes = recall(
        &mut c,
        pb::RecallRequest {
            query: "release date".into(),
            metadata: [("project".to_string(), "hermes".to_string())].into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        texts(&hermes),
        vec!["Lunch with the design team is on Thursday."]
    );
    let future = recall(
        &mut c,
        pb::RecallRequest {
            query: "release date".into(),
            since_ms: deadline.created_at_ms + 3_600_000,
            ..Default::default()
        },
    )
    .await;
    assert!(future.is_empty());
    let close = recall(
        &mut c,
        pb::RecallRequest {
            query: "was the space mission postponed?".into(),
            min_score: 0.3,
            ..Default::default()
        },
    )
    .await;
    assert!(!close.is_empty());
    assert!(close.iter().all(|h| h.similarity.unwrap() >= 0.3));
    assert!(close.len() < 4, "unrelated memories are below 0.3");

    // The modes on their own.
    let words = recall(
        &mut c,
        pb::RecallRequest {
            query: "was the space mission postponed?".into(),
            mode: pb::RecallMode::Bm25 as i32,
            ..Default::default()
        },
    )
    .await;
    assert!(words.iter().all(|h| h.retrievers == vec!["bm25"]));
    assert!(!words
        .iter()
        .any(|h| h.memory.as_ref().unwrap().id == deadline.id));

    // Search fuses vector hits of semantic memories with BM25 hits of everything.
    c.memory
        .put(pb::PutRequest {
            namespace: "kv".into(),
            key: "release".into(),
            value: "\"release checklist\"".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let found = c
        .search
        .search(pb::SearchRequest {
            query: "release date".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    let kinds: Vec<i32> = found.iter().map(|h| h.kind).collect();
    assert!(kinds.contains(&(pb::HitKind::Memory as i32)));
    assert!(kinds.contains(&(pb::HitKind::Semantic as i32)));
    assert!(found
        .iter()
        .any(|h| h.retrievers.contains(&"vector".to_string())));

    // Get, forget, and it is gone from both retrievers.
    let got = c
        .memory
        .get_semantic(pb::GetSemanticRequest {
            id: deadline.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, deadline);
    c.memory
        .forget(pb::ForgetRequest {
            id: deadline.id.clone(),
        })
        .await
        .unwrap();
    let again = c
        .memory
        .forget(pb::ForgetRequest {
            id: deadline.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    let hits = recall(
        &mut c,
        pb::RecallRequest {
            query: "Apollo launch".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(!hits
        .iter()
        .any(|h| h.memory.as_ref().unwrap().id == deadline.id));
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = Nexus::start(dir.path(), &[]).await;
    let mut c = n.client().await;
    let cases: Vec<(pb::RememberRequest, &str)> = vec![
        (
            pb::RememberRequest {
                text: "  ".into(),
                ..Default::default()
            },
            "text",
        ),
        (
            pb::RememberRequest {
                text: "x".repeat(70_000),
                ..Default::default()
            },
            "limits.max_text_bytes",
        ),
        (
            pb::RememberRequest {
                text: "ok".into(),
                namespace: "bad namespace".into(),
                ..Default::default()
            },
            "namespace",
        ),
        (
            pb::RememberRequest {
                text: "ok".into(),
                importance: Some(1.5),
                ..Default::default()
            },
            "importance",
        ),
        (
            pb::RememberRequest {
                text: "ok".into(),
                metadata: [(String::new(), "v".to_string())].into(),
                ..Default::default()
            },
            "metadata",
        ),
    ];
    for (req, field) in cases {
        let err = c.memory.remember(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(err.message().contains(field), "{}", err.message());
    }
    let bad_recalls: Vec<(pb::RecallRequest, &str)> = vec![
        (pb::RecallRequest::default(), "query"),
        (
            pb::RecallRequest {
                query: "q".into(),
                k: 5_000,
                ..Default::default()
            },
            "k",
        ),
        (
            pb::RecallRequest {
                query: "q".into(),
                min_score: 2.0,
                ..Default::default()
            },
            "min_score",
        ),
        (
            pb::RecallRequest {
                query: "q".into(),
                since_ms: 10,
                until_ms: 5,
                ..Default::default()
            },
            "until_ms",
        ),
        (
            pb::RecallRequest {
                query: "q".into(),
                mode: 9,
                ..Default::default()
            },
            "mode",
        ),
    ];
    for (req, field) in bad_recalls {
        let err = c.memory.recall(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(err.message().contains(field), "{}", err.message());
    }
    let err = c
        .memory
        .forget(pb::ForgetRequest {
            id: "not-a-uuid".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("id"));
    // Nothing was stored.
    let hits = recall(
        &mut c,
        pb::RecallRequest {
            query: "ok".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(hits.is_empty(), "{hits:?}");
}

#[tokio::test]
async fn a_node_without_the_model_serves_words_only_and_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let n = Nexus::start(
        dir.path(),
        &[("NEXUS_EMBEDDING__MODEL_DIR", "/nonexistent/model")],
    )
    .await;
    assert!(
        n.log_text().contains("nexus model pull"),
        "the log says how to get the model"
    );
    let mut c = n.client().await;
    let m = remember(&mut c, "n", "The quarterly report is due Friday.", &[]).await;
    assert_eq!(m.model, "");
    let hits = recall(
        &mut c,
        pb::RecallRequest {
            query: "report".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].retrievers, vec!["bm25"]);
    assert_eq!(hits[0].similarity, None);
    for req in [
        pb::RecallRequest {
            query: "report".into(),
            min_score: 0.5,
            ..Default::default()
        },
        pb::RecallRequest {
            query: "report".into(),
            mode: pb::RecallMode::Vector as i32,
            ..Default::default()
        },
    ] {
        let err = c.memory.recall(req).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(
            err.message().contains("nexus model pull"),
            "{}",
            err.message()
        );
    }
}

/// Ids of the hits of one query, as a node answers it.
async fn ids(n: &Nexus, query: &str) -> Vec<String> {
    let mut c = n.client().await;
    recall(
        &mut c,
        pb::RecallRequest {
            query: query.into(),
            k: 20,
            ..Default::default()
        },
    )
    .await
    .iter()
    .map(|h| h.memory.as_ref().unwrap().id.clone())
    .collect()
}

#[tokio::test]
async fn followers_recall_what_the_leader_does_and_restarts_lose_nothing() {
    let _guard = one_cluster_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    // Save the vector index often, so that restarts load it and replay only the rest.
    let env = [("NEXUS_VECTOR__PERSIST_INTERVAL_MS", "500")];
    let mut nodes = Nexus::start_cluster(dir.path(), 3, &env).await;
    let leader = agreed_leader(&nodes).await;
    let topics = [
        "planning the team offsite in the mountains",
        "the database migration failed during the night",
        "a recipe for lemon cake with poppy seeds",
        "renewing the passport before the trip abroad",
    ];
    let mut written = Vec::new();
    for i in 0..60 {
        // Through every node: followers forward, and embed before forwarding.
        let mut c = nodes[i % 3].client().await;
        let m = remember(
            &mut c,
            "cluster",
            &format!("Note {i}: {}", topics[i % topics.len()]),
            &[],
        )
        .await;
        written.push(m.id);
    }
    let queries = [
        "holiday travel documents",
        "baking dessert",
        "server outage",
    ];
    let mut expected = HashMap::new();
    for q in queries {
        let on_leader = ids(&nodes[leader], q).await;
        assert_eq!(on_leader.len(), 20);
        for n in &nodes {
            assert_eq!(ids(n, q).await, on_leader, "a follower answers {q:?} alike");
        }
        expected.insert(q, on_leader);
    }

    // kill -9 a follower and the leader; acknowledged memories are all found again.
    let follower = (leader + 1) % 3;
    nodes[follower].kill9();
    nodes[follower].restart().await;
    nodes[leader].kill9();
    nodes[leader].restart().await;
    let _ = agreed_leader(&nodes).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for q in queries {
        for n in &nodes {
            assert_eq!(ids(n, q).await, expected[q], "after restarts, {q:?}");
        }
    }
    // Every acknowledged memory is still recallable by its own text.
    let mut c = nodes[follower].client().await;
    for (i, id) in written.iter().enumerate().step_by(7) {
        let hits = recall(
            &mut c,
            pb::RecallRequest {
                query: format!("Note {i}: {}", topics[i % topics.len()]),
                k: 1,
                mode: pb::RecallMode::Vector as i32,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            &hits[0].memory.as_ref().unwrap().id,
            id,
            "memory {i} is in the restarted index"
        );
        assert!(hits[0].similarity.unwrap() > 0.999);
    }
}
