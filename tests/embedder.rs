//! The local embedder (all-MiniLM-L6-v2 on candle) against the reference implementation:
//! vectors for a fixture of sentences, computed by sentence-transformers and committed in
//! tests/fixtures/minilm_reference.json (made by tests/fixtures/make_minilm_reference.py),
//! must match with a cosine of at least 0.999 each.
//!
//! The model comes from the model cache (`NEXUS_MODEL_DIR`, or ~/.cache/nexus/models);
//! `scripts/test` fetches it first.

use nexus_node::embed::minilm::{self, MiniLm, Options};
use nexus_node::embed::{cosine, Embedder};

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    vector: Vec<f32>,
}

fn model() -> MiniLm {
    let dir = minilm::default_dir();
    MiniLm::load(&dir).unwrap_or_else(|e| panic!("{e}"))
}

/// Every fixture sentence, all at once (padded to the longest) and one by one (no padding),
/// within `min_cosine` of sentence-transformers' vector; returns the lowest cosine.
async fn check_against_reference(m: &MiniLm, min_cosine: f32) -> f32 {
    let reference: Reference = serde_json::from_str(include_str!("fixtures/minilm_reference.json"))
        .expect("the fixture parses");
    let texts: Vec<String> = reference.cases.iter().map(|c| c.text.clone()).collect();
    let batched = m.embed(&texts).await.unwrap();
    assert_eq!(batched.len(), texts.len());
    let mut worst = 1.0f32;
    for (case, got) in reference.cases.iter().zip(&batched) {
        assert_eq!(got.len(), minilm::DIMENSIONS);
        let c = cosine(got, &case.vector);
        worst = worst.min(c);
        assert!(c >= min_cosine, "cosine {c} for {:?}", case.text);
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
        let alone = m.embed(std::slice::from_ref(&case.text)).await.unwrap();
        let c = cosine(&alone[0], &case.vector);
        worst = worst.min(c);
        assert!(c >= min_cosine, "cosine {c} alone for {:?}", case.text);
    }
    eprintln!(
        "{} sentences, lowest cosine to the reference {worst:.6}",
        texts.len()
    );
    worst
}

#[tokio::test]
async fn vectors_match_the_reference_implementation() {
    check_against_reference(&model(), 0.999).await;
}

/// On one thread every batch is one forward pass; on two (the default on this machine) a
/// batch is split between them: the same vectors either way.
#[tokio::test]
async fn one_thread_and_split_batches_give_the_same_vectors() {
    let dir = minilm::default_dir();
    check_against_reference(
        &MiniLm::load_with(&dir, Options { threads: 1 }).unwrap(),
        0.999,
    )
    .await;
    check_against_reference(
        &MiniLm::load_with(&dir, Options { threads: 3 }).unwrap(),
        0.999,
    )
    .await;
}

#[test]
fn related_texts_are_closer_than_unrelated_ones() {
    let m = model();
    let v = m
        .embed_blocking(&[
            "The project deadline moved to Friday.".into(),
            "We must deliver the release by the end of the week.".into(),
            "My cat sleeps on the keyboard.".into(),
        ])
        .unwrap();
    assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.1);
}

#[test]
fn a_missing_or_altered_model_is_refused_with_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = MiniLm::load(dir.path()).err().expect("no model files");
    assert!(e.to_string().contains("nexus model pull"), "{e}");
    for (name, _) in minilm::FILES {
        std::fs::copy(minilm::default_dir().join(name), dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
    let e = MiniLm::load(dir.path()).err().expect("altered file");
    assert!(e.to_string().contains("SHA-256"), "{e}");
}

/// An OpenAI-compatible server on loopback, as Ollama, vLLM or TEI would answer: the vector of
/// text i is [len(text), i, 1.0]; replies list the items in reverse order (clients must sort
/// by `index`); requests without the right key get 401.
async fn embeddings_server(dims: usize) -> String {
    use axum::{http::HeaderMap, http::StatusCode, routing::post, Json, Router};
    async fn handle(
        headers: HeaderMap,
        Json(body): Json<serde_json::Value>,
        dims: usize,
    ) -> Result<Json<serde_json::Value>, StatusCode> {
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer sk-test") {
            return Err(StatusCode::UNAUTHORIZED);
        }
        assert_eq!(body["model"], "nomic-embed-text");
        let input = body["input"].as_array().unwrap();
        let mut data: Vec<serde_json::Value> = input
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut v = vec![t.as_str().unwrap().len() as f32, i as f32, 1.0];
                v.resize(dims, 0.0);
                serde_json::json!({"object": "embedding", "index": i, "embedding": v})
            })
            .collect();
        data.reverse();
        Ok(Json(
            serde_json::json!({"object": "list", "data": data, "model": "nomic-embed-text"}),
        ))
    }
    let app = Router::new().route("/v1/embeddings", post(move |h, b| handle(h, b, dims)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_openai_compatible_server_is_used_by_url_model_and_key() {
    use nexus_node::embed::openai::OpenAiEmbedder;
    use std::time::Duration;
    let url = embeddings_server(3).await;
    let texts: Vec<String> = (0..300).map(|i| "x".repeat(i % 7)).collect();
    let e = OpenAiEmbedder::new(
        &url,
        "nomic-embed-text",
        3,
        Some("sk-test".into()),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(e.model(), "nomic-embed-text");
    // 300 texts go in three requests; every vector comes back in input order.
    let v = e.embed(&texts).await.unwrap();
    assert_eq!(v.len(), 300);
    for (i, (t, v)) in texts.iter().zip(&v).enumerate() {
        assert_eq!(v, &vec![t.len() as f32, (i % 128) as f32, 1.0], "text {i}");
    }
    // The base URL may end in /v1.
    let e = OpenAiEmbedder::new(
        &format!("{url}/v1/"),
        "nomic-embed-text",
        3,
        Some("sk-test".into()),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(e.embed(&texts[..2]).await.unwrap().len(), 2);
    // A wrong key: the server's status in the error.
    let e = OpenAiEmbedder::new(
        &url,
        "nomic-embed-text",
        3,
        Some("sk-wrong".into()),
        Duration::from_secs(5),
    )
    .unwrap();
    let err = e.embed(&texts[..1]).await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    // Vectors of another size than configured are refused.
    let e = OpenAiEmbedder::new(
        &url,
        "nomic-embed-text",
        384,
        Some("sk-test".into()),
        Duration::from_secs(5),
    )
    .unwrap();
    let err = e.embed(&texts[..1]).await.unwrap_err().to_string();
    assert!(err.contains("3 dimensions, expected 0 and 384"), "{err}");
    // Nothing listening.
    let e =
        OpenAiEmbedder::new("http://127.0.0.1:9", "m", 3, None, Duration::from_secs(5)).unwrap();
    assert!(e.embed(&texts[..1]).await.is_err());
    assert!(OpenAiEmbedder::new("not a url", "m", 3, None, Duration::from_secs(5)).is_err());
}
