//! Retrieval quality on the labelled set tests/fixtures/recall_quality.json (205 memories, 50
//! queries that share no content word with their answers), through a real `nexus` with the
//! local model: hybrid recall must be clearly above BM25 alone. `nexus-bench recall` measures
//! the same and writes the figures to docs/benchmarks.md.

mod common;

use std::path::Path;

use common::Nexus;
use nexus_client::pb::RecallMode;
use nexus_client::recall_eval::{evaluate, load_set, LabelledSet};

fn set() -> LabelledSet {
    LabelledSet::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/recall_quality.json"),
    )
    .unwrap()
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

#[tokio::test]
async fn hybrid_recall_is_clearly_above_bm25_alone() {
    let set = set();
    let dir = tempfile::tempdir().unwrap();
    let n = Nexus::start(dir.path(), &[]).await;
    let mut c = n.client().await;
    let ids = load_set(&mut c, &set, "quality").await.unwrap();
    let mut scores = Vec::new();
    for queries in [&set.queries, &set.keyword_queries] {
        let mut by_mode = Vec::new();
        for mode in [RecallMode::Bm25, RecallMode::Vector, RecallMode::Hybrid] {
            let s = evaluate(&mut c, queries, "quality", &ids, mode)
                .await
                .unwrap();
            println!("{} queries, {mode:?}: {s:?}", queries.len());
            by_mode.push(s);
        }
        scores.push(by_mode);
    }
    let [bm25, _vector, hybrid] = scores[0][..] else {
        unreachable!()
    };
    // The paraphrases share no word with their answers, so BM25 cannot find them...
    assert!(bm25.recall_at_5 < 0.1, "{bm25:?}");
    // ...and hybrid retrieval does, through the vectors.
    assert!(
        hybrid.recall_at_5 >= bm25.recall_at_5 + 0.5,
        "hybrid {hybrid:?} against bm25 {bm25:?}"
    );
    // On exact-term lookups BM25 is strong, and fusing it in loses nothing against vectors.
    let [bm25, vector, hybrid] = scores[1][..] else {
        unreachable!()
    };
    assert!(bm25.recall_at_5 >= 0.9, "{bm25:?}");
    assert!(
        hybrid.recall_at_5 >= vector.recall_at_5,
        "hybrid {hybrid:?} against vectors {vector:?}"
    );
}
