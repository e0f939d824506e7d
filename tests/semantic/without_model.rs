//! A node without the embedding model: it serves words only and says so in every reply, and
//! what it stored is given vectors once the model is there.

use std::time::Duration;

use super::common::{self, Nexus};
use super::{create_conversation, hit_id, recall, remember, say};
use nexus_client::pb;
use tonic::Code;

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
    // Never a quiet success: every reply that could not use meaning says so, and how to fix it.
    let reply = c
        .memory
        .recall(pb::RecallRequest {
            query: "was the space mission postponed?".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.hits.is_empty());
    assert!(
        reply.notice.contains("semantic recall is off")
            && reply.notice.contains("nexus model pull"),
        "{reply:?}"
    );
    let words_only = c
        .memory
        .recall(pb::RecallRequest {
            query: "report".into(),
            mode: pb::RecallMode::Bm25 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(words_only.notice, "", "words only were asked for");
    let remembered = c
        .memory
        .remember(pb::RememberRequest {
            namespace: "n".into(),
            text: "Another fact".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        remembered.notice.contains("stored without a vector"),
        "{remembered:?}"
    );
    let tool = c
        .tools
        .call_tool(pb::CallToolRequest {
            name: "memory.recall".into(),
            args: r#"{"query": "was the space mission postponed?"}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(tool.output.contains("nexus model pull"), "{tool:?}");
    let out = std::process::Command::new(common::nexus_bin().with_file_name("nexusctl"))
        .args(["memory", "recall", "was the space mission postponed?"])
        .env("NEXUS_ENDPOINT", n.endpoint())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("semantic recall is off"),
        "nexusctl says it: {out:?}"
    );
    assert_eq!(hits[0].retrievers, vec!["bm25"]);
    assert_eq!(hits[0].similarity, None);
    // Messages are stored without vectors and recalled by their words.
    create_conversation(&mut c, "c").await;
    let said = say(&mut c, "c", "user", "Send the report to finance.", "").await;
    let hits = recall(
        &mut c,
        pb::RecallRequest {
            query: "finance report".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(hit_id(&hits[0]), said.id);
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

/// Memories stored while the node had no model are given vectors once it has one: the leader
/// re-embeds them in the background (`semantic.embed`), and they are recalled by meaning.
#[tokio::test]
async fn memories_stored_without_the_model_are_embedded_once_it_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Nexus::start(
        dir.path(),
        &[("NEXUS_EMBEDDING__MODEL_DIR", "/nonexistent/model")],
    )
    .await;
    let mut c = n.client().await;
    let stored = remember(
        &mut c,
        "work",
        "The Apollo launch slipped to the end of March",
        &[],
    )
    .await;
    assert_eq!(stored.model, "");
    create_conversation(&mut c, "c").await;
    let said = say(
        &mut c,
        "c",
        "user",
        "Our grocery budget for the week is eighty dollars.",
        "",
    )
    .await;
    // A message without text has no vector to make, then or later.
    say(&mut c, "c", "tool", "", "").await;
    let paraphrase = pb::RecallRequest {
        query: "was the space mission postponed?".into(),
        ..Default::default()
    };
    assert!(recall(&mut c, paraphrase.clone()).await.is_empty());
    assert!(n.terminate().success());

    // The same node, now with the model (the default model cache).
    n.env.clear();
    n.restart().await;
    let mut c = n.client().await;
    // Both found by meaning once the leader has re-embedded them.
    let by_messages = pb::RecallRequest {
        query: "how much money can we spend on food?".into(),
        sources: vec![pb::RecallSource::Messages as i32],
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let memories = recall(&mut c, paraphrase.clone()).await;
        let messages = recall(&mut c, by_messages.clone()).await;
        let found = |hits: &[pb::RecallHit], id: &str| {
            hits.first()
                .is_some_and(|h| hit_id(h) == id && h.similarity.is_some())
        };
        if found(&memories, &stored.id) && found(&messages, &said.id) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not re-embedded: {memories:?} {messages:?}\n{}",
            n.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = c
        .memory
        .get_semantic(pb::GetSemanticRequest {
            id: stored.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!m.model.is_empty(), "the vector records its model: {m:?}");
    // The pass that did it reports what is left: nothing (the empty message is not counted,
    // nor embedded).
    loop {
        let status = c
            .cluster
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let (ok, text) = common::http_get(&n.http("/metrics")).await;
        assert_eq!(ok, 200);
        if status.embedding_backlog == 0 && text.contains("nexus_embedding_backfilled_total 2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backlog {} and metrics:\n{text}",
            status.embedding_backlog
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
