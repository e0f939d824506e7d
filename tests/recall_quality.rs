//! Retrieval quality through a real `nexus` with the local model, on three query sets:
//! paraphrases and exact-term lookups over tests/fixtures/recall_quality.json (205 memories;
//! the paraphrases share no content word with their answers), and questions over the long
//! conversations of tests/fixtures/recall_conversations.json. The node's default hybrid
//! recall must be at least as good as the better of BM25 and vectors on each set (within
//! noise). `nexus-bench recall` measures the same, with the fusions it was chosen from, and
//! writes the figures to docs/benchmarks.md.

mod common;

use std::path::Path;

use common::Nexus;
use nexus_client::pb::RecallMode;
use nexus_client::recall_eval::{
    evaluate, load_conversations, load_set, ConversationSet, LabelledSet, Retrieval, Scores,
};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn set() -> LabelledSet {
    LabelledSet::load(&fixture("recall_quality.json")).unwrap()
}

fn conversations() -> ConversationSet {
    ConversationSet::load(&fixture("recall_conversations.json")).unwrap()
}

#[test]
fn the_labelled_set_is_what_it_claims() {
    let set = set();
    assert!(set.memories.len() >= 200, "{}", set.memories.len());
    assert!(set.queries.len() >= 50, "{}", set.queries.len());
    let shared = set.shared_words();
    assert!(
        shared.is_empty(),
        "queries share words with their answers: {shared:?}"
    );
}

#[test]
fn the_conversation_set_is_what_it_claims() {
    let set = conversations();
    assert!(set.turns() >= 1000, "{} turns", set.turns());
    assert!(set.questions.len() >= 200, "{}", set.questions.len());
    let turns: std::collections::HashMap<&str, &str> = set
        .conversations
        .iter()
        .flat_map(|c| &c.sessions)
        .flat_map(|s| &s.turns)
        .map(|t| (t.id.as_str(), t.content.as_str()))
        .collect();
    for q in &set.questions {
        assert!(!q.evidence.is_empty(), "{q:?}");
        for e in &q.evidence {
            // Evidence is a turn of the question's own conversation.
            assert!(turns.contains_key(e.as_str()), "{q:?}");
            assert!(e.starts_with(&format!("{}/", q.conversation)), "{q:?}");
        }
    }
    assert!(set.conversations.iter().all(|c| c.sessions.len() >= 5));
}

#[tokio::test]
async fn hybrid_recall_is_as_good_as_the_better_retriever_on_every_set() {
    let set = set();
    let conv = conversations();
    let dir = tempfile::tempdir().unwrap();
    let n = Nexus::start(dir.path(), &[]).await;
    let mut c = n.client().await;
    let mut ids = load_set(&mut c, &set, "quality").await.unwrap();
    ids.extend(load_conversations(&mut c, &conv, |_| {}).await.unwrap());
    let sets = [
        (
            "paraphrases",
            LabelledSet::as_queries(&set.queries, "quality"),
        ),
        (
            "exact terms",
            LabelledSet::as_queries(&set.keyword_queries, "quality"),
        ),
        ("conversations", conv.queries(None)),
    ];
    let mut scores: Vec<[Scores; 3]> = Vec::new();
    for (name, queries) in &sets {
        let mut by_mode = [Scores::default(); 3];
        for (i, mode) in [RecallMode::Bm25, RecallMode::Vector, RecallMode::Hybrid]
            .into_iter()
            .enumerate()
        {
            by_mode[i] = evaluate(&mut c, queries, &ids, Retrieval::mode(mode))
                .await
                .unwrap();
            println!("{name}, {mode:?}: {:?}", by_mode[i]);
        }
        scores.push(by_mode);
    }
    // The paraphrases share no word with their answers, so BM25 cannot find them...
    let [bm25, _, hybrid] = scores[0];
    assert!(bm25.hit_at_5 < 0.1, "{bm25:?}");
    // ...and hybrid retrieval does, through the vectors.
    assert!(hybrid.hit_at_5 >= bm25.hit_at_5 + 0.5, "{hybrid:?}");
    // On exact-term lookups BM25 is strong.
    assert!(scores[1][0].hit_at_5 >= 0.9, "{:?}", scores[1][0]);
    // On every set, hybrid is at least as good as the better single retriever, within noise
    // (one query of 50 in the first two sets).
    for ((name, _), [bm25, vector, hybrid]) in sets.iter().zip(&scores) {
        for (metric, of) in [
            ("hit@10", (|s: &Scores| s.hit_at_10) as fn(&Scores) -> f64),
            ("recall@10", |s: &Scores| s.recall_at_10),
            ("MRR@10", |s: &Scores| s.mrr),
        ] {
            let best = of(bm25).max(of(vector));
            assert!(
                of(hybrid) >= best - 0.02,
                "{name}: hybrid {metric} {:.3} is below the better retriever's {best:.3}",
                of(hybrid)
            );
        }
    }
    // The bar for agent memory: the answer in the first 10 for 85% of questions.
    assert!(scores[2][2].hit_at_10 >= 0.85, "{:?}", scores[2][2]);
}
