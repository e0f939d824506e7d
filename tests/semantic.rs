//! Semantic memory through the real `nexus` binary: Remember / Recall / Forget with the local
//! model, conversation messages recalled the same way, filters and errors, a node without a
//! model, and recall after restarts and on followers of a 3-node cluster.
//!
//! Needs the embedding model in the model cache (`nexus model pull`; scripts/test runs it).

mod common;
#[path = "semantic/without_model.rs"]
mod without_model;

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

/// Appends one message; returns it.
async fn say(
    c: &mut nexus_client::Client,
    conversation: &str,
    role: &str,
    content: &str,
    metadata: &str,
) -> pb::Message {
    c.conversations
        .append_messages(pb::AppendMessagesRequest {
            conversation_id: conversation.into(),
            messages: vec![pb::NewMessage {
                role: role.into(),
                content: content.into(),
                metadata: metadata.into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .messages
        .remove(0)
}

async fn create_conversation(c: &mut nexus_client::Client, id: &str) {
    c.conversations
        .create_conversation(pb::CreateConversationRequest {
            id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// The id of what a hit found, memory or message.
fn hit_id(h: &pb::RecallHit) -> String {
    match (h.memory(), h.message()) {
        (Some(m), _) => m.id.clone(),
        (_, Some(m)) => m.id.clone(),
        _ => panic!("a hit without an item: {h:?}"),
    }
}

fn texts(hits: &[pb::RecallHit]) -> Vec<String> {
    hits.iter()
        .map(|h| h.memory().unwrap().text.clone())
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
    assert_eq!(top.memory().unwrap().id, deadline.id);
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
    // The default fusion: 0.75 × cosine + 0.25 × (BM25 match share)³; both words matched.
    let (similarity, share) = (hits[0].similarity.unwrap(), hits[0].bm25.unwrap());
    assert!(share > 0.9 && share <= 1.0, "{share}");
    let convex = 0.75 * similarity + 0.25 * share.powi(3);
    assert!((hits[0].score - convex).abs() < 1e-4, "{hits:?}");
    // A request may ask for reciprocal rank fusion and its own weights instead.
    let rrf = recall(
        &mut c,
        pb::RecallRequest {
            query: "Apollo launch".into(),
            k: 1,
            fusion: pb::Fusion::Rrf as i32,
            vector_weight: Some(0.5),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(rrf[0].memory().unwrap().id, deadline.id);
    assert!((rrf[0].score - 1.0 / 61.0).abs() < 1e-6, "{rrf:?}");
    // The second "Apollo launch" found its query's vector in the embedding cache.
    let (status, metrics) = common::http_get(&n.http("/metrics")).await;
    assert_eq!(status, 200);
    let hits: f64 = metrics
        .lines()
        .find(|l| l.starts_with("nexus_embedding_cache_lookups_total{result=\"hit\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(hits >= 1.0, "{metrics}");

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
    assert!(!words.iter().any(|h| h.memory().unwrap().id == deadline.id));

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
    assert!(!hits.iter().any(|h| h.memory().unwrap().id == deadline.id));
}

#[tokio::test]
async fn conversation_messages_are_embedded_and_recalled_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let n = Nexus::start(dir.path(), &[]).await;
    let mut c = n.client().await;
    create_conversation(&mut c, "standup").await;
    create_conversation(&mut c, "lunch").await;
    let ship = say(
        &mut c,
        "standup",
        "user",
        "We agreed to ship the billing dashboard on the 14th.",
        r#"{"topic": "billing", "priority": 2}"#,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mid = nexus_node::memory::now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let reply = say(
        &mut c,
        "standup",
        "assistant",
        "Noted, I will let the design team know.",
        "",
    )
    .await;
    let pasta = say(
        &mut c,
        "lunch",
        "user",
        "Let's try the new pasta place on Friday.",
        "",
    )
    .await;
    // A message without text is stored and gets no vector.
    let empty = say(&mut c, "lunch", "tool", "", "").await;
    let memory = remember(
        &mut c,
        "work",
        "The payments UI launch depends on the security review.",
        &[],
    )
    .await;

    // A paraphrase sharing no word with the message finds it by meaning.
    let ask = |query: &str| pb::RecallRequest {
        query: query.into(),
        k: 5,
        ..Default::default()
    };
    let hits = recall(&mut c, ask("when is the payments UI going live?")).await;
    let top3: Vec<String> = hits.iter().take(3).map(hit_id).collect();
    assert!(top3.contains(&ship.id), "{hits:#?}");
    assert!(
        top3.contains(&memory.id),
        "memories and messages together: {hits:#?}"
    );
    let found = hits.iter().find(|h| hit_id(h) == ship.id).unwrap();
    let m = found.message().unwrap();
    assert_eq!(m.conversation_id, "standup");
    assert_eq!(m.role, "user");
    assert_eq!(found.retrievers, vec!["vector"]);
    assert!(found.similarity.unwrap() > 0.3);
    assert!(hits.iter().all(|h| hit_id(h) != empty.id));

    // Sources: messages only, memories only.
    let only = |source: pb::RecallSource| pb::RecallRequest {
        sources: vec![source as i32],
        ..ask("when is the payments UI going live?")
    };
    let messages = recall(&mut c, only(pb::RecallSource::Messages)).await;
    assert!(!messages.is_empty() && messages.iter().all(|h| h.message().is_some()));
    assert_eq!(hit_id(&messages[0]), ship.id);
    let memories = recall(&mut c, only(pb::RecallSource::Memories)).await;
    assert!(memories.iter().all(|h| h.memory().is_some()));
    assert_eq!(hit_id(&memories[0]), memory.id);

    // A conversation filter, in every mode; a word match adds bm25.
    for mode in [
        pb::RecallMode::Hybrid,
        pb::RecallMode::Vector,
        pb::RecallMode::Bm25,
    ] {
        let hits = recall(
            &mut c,
            pb::RecallRequest {
                conversation_id: "lunch".into(),
                mode: mode as i32,
                ..ask("pasta lunch plans for the end of the week")
            },
        )
        .await;
        assert_eq!(
            hits.iter().map(hit_id).collect::<Vec<_>>(),
            vec![pasta.id.clone()],
            "{mode:?}"
        );
    }
    let both = recall(
        &mut c,
        pb::RecallRequest {
            conversation_id: "lunch".into(),
            ..ask("pasta place")
        },
    )
    .await;
    assert_eq!(both[0].retrievers, vec!["vector", "bm25"]);

    // Metadata equality on a message's JSON metadata (string values), and time.
    let tagged = recall(
        &mut c,
        pb::RecallRequest {
            metadata: [("topic".to_string(), "billing".to_string())].into(),
            ..ask("release schedule")
        },
    )
    .await;
    assert_eq!(
        tagged.iter().map(hit_id).collect::<Vec<_>>(),
        vec![ship.id.clone()]
    );
    let later = recall(
        &mut c,
        pb::RecallRequest {
            since_ms: nexus_node::memory::now_ms() + 60_000,
            ..ask("payments UI")
        },
    )
    .await;
    assert!(later.is_empty());
    let since = recall(
        &mut c,
        pb::RecallRequest {
            since_ms: mid,
            sources: vec![pb::RecallSource::Messages as i32],
            ..ask("billing dashboard")
        },
    )
    .await;
    let since: Vec<String> = since.iter().map(hit_id).collect();
    assert!(
        since.contains(&reply.id) && !since.contains(&ship.id),
        "{since:?}"
    );

    // Search fuses message vectors too.
    let searched = c
        .search
        .search(pb::SearchRequest {
            query: "when is the payments UI going live?".into(),
            kinds: vec![pb::HitKind::Message as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    let by_meaning = searched
        .iter()
        .find(|h| matches!(&h.item, Some(pb::search_hit::Item::Message(m)) if m.id == ship.id));
    assert!(
        by_meaning.is_some_and(|h| h.retrievers.contains(&"vector".to_string())),
        "{searched:#?}"
    );

    // Scope filters that contradict each other are refused, naming the field.
    for (req, field) in [
        (
            pb::RecallRequest {
                namespace: "work".into(),
                conversation_id: "standup".into(),
                ..ask("x")
            },
            "conversation_id",
        ),
        (
            pb::RecallRequest {
                namespace: "work".into(),
                sources: vec![pb::RecallSource::Messages as i32],
                ..ask("x")
            },
            "namespace",
        ),
        (
            pb::RecallRequest {
                conversation_id: "standup".into(),
                sources: vec![pb::RecallSource::Memories as i32],
                ..ask("x")
            },
            "conversation_id",
        ),
        (
            pb::RecallRequest {
                sources: vec![9],
                ..ask("x")
            },
            "sources",
        ),
        (
            pb::RecallRequest {
                conversation_id: "bad id!".into(),
                ..ask("x")
            },
            "conversation_id",
        ),
    ] {
        let err = c.memory.recall(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }

    // Deleting a conversation removes its messages from both retrievers.
    c.conversations
        .delete_conversation(pb::DeleteConversationRequest {
            id: "standup".into(),
        })
        .await
        .unwrap();
    for mode in [pb::RecallMode::Vector, pb::RecallMode::Bm25] {
        let hits = recall(
            &mut c,
            pb::RecallRequest {
                sources: vec![pb::RecallSource::Messages as i32],
                mode: mode as i32,
                ..ask("billing dashboard design team")
            },
        )
        .await;
        assert!(
            hits.iter()
                .all(|h| hit_id(h) != ship.id && hit_id(h) != reply.id),
            "{mode:?}: {hits:#?}"
        );
    }
    // A conversation made again under the same id starts empty in the index too.
    create_conversation(&mut c, "standup").await;
    let again = say(
        &mut c,
        "standup",
        "user",
        "The billing dashboard slipped a week.",
        "",
    )
    .await;
    let hits = recall(
        &mut c,
        pb::RecallRequest {
            conversation_id: "standup".into(),
            mode: pb::RecallMode::Vector as i32,
            ..ask("billing dashboard")
        },
    )
    .await;
    assert_eq!(hits.iter().map(hit_id).collect::<Vec<_>>(), vec![again.id]);
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
        (
            pb::RecallRequest {
                query: "q".into(),
                fusion: 7,
                ..Default::default()
            },
            "fusion",
        ),
        (
            pb::RecallRequest {
                query: "q".into(),
                vector_weight: Some(1.5),
                ..Default::default()
            },
            "vector_weight",
        ),
        (
            pb::RecallRequest {
                query: "q".into(),
                vector_weight: Some(f32::NAN),
                ..Default::default()
            },
            "vector_weight",
        ),
        (
            pb::RecallRequest {
                query: "q".into(),
                importance_weight: -0.5,
                ..Default::default()
            },
            "importance_weight",
        ),
        (
            pb::RecallRequest {
                query: "q".into(),
                recency_weight: 0.5,
                recency_half_life_ms: 10,
                ..Default::default()
            },
            "recency_half_life_ms",
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
    .map(hit_id)
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
    create_conversation(&mut nodes[leader].client().await, "chat").await;
    let mut written = Vec::new();
    let mut said = Vec::new();
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
        if i % 4 == 1 {
            let text = format!("Message {i}: {}", topics[i % topics.len()]);
            let m = say(&mut c, "chat", "user", &text, "").await;
            said.push((text, m.id));
        }
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
            &hits[0].memory().unwrap().id,
            id,
            "memory {i} is in the restarted index"
        );
        assert!(hits[0].similarity.unwrap() > 0.999);
    }
    // And every acknowledged message.
    for (text, id) in &said {
        let hits = recall(
            &mut c,
            pb::RecallRequest {
                query: text.clone(),
                k: 1,
                mode: pb::RecallMode::Vector as i32,
                sources: vec![pb::RecallSource::Messages as i32],
                ..Default::default()
            },
        )
        .await;
        assert_eq!(&hit_id(&hits[0]), id, "{text:?} is in the restarted index");
        assert!(hits[0].similarity.unwrap() > 0.999);
    }
}
