//! Text embeddings for semantic memory.
//!
//! `Embedder` turns texts into vectors. Embeddings are computed on the node that proposes a
//! write and travel in the Raft command, so followers never re-embed (and a model change
//! cannot make replicas disagree). Implementations:
//! - `minilm::MiniLm`: sentence-transformers all-MiniLM-L6-v2, in process, pure Rust (candle):
//!   BERT, mean pooling over the attention mask, L2 normalisation; 384 dimensions.
//! - `openai::OpenAiEmbedder`: any OpenAI-compatible `/v1/embeddings` server over HTTP.
//!
//! The model files live in the model cache (`model_dir`); `nexus model pull` fetches them.

pub mod minilm;
pub mod openai;
pub mod pull;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model's files are not in the model cache.
    #[error("{0}")]
    ModelMissing(String),
    #[error("embedding model: {0}")]
    Model(String),
    #[error("embedding: {0}")]
    Failed(String),
}

pub type EmbedFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send + 'a>>;

/// Turns texts into vectors of `dimensions()` floats, one per text, in order.
pub trait Embedder: Send + Sync {
    /// The model's name, recorded with every vector.
    fn model(&self) -> &str;
    fn dimensions(&self) -> usize;
    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a>;
}

/// The model cache: `$NEXUS_MODEL_DIR`, else `$XDG_CACHE_HOME/nexus/models`, else
/// `~/.cache/nexus/models`.
pub fn model_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("NEXUS_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("nexus").join("models")
}

/// Cosine similarity of two vectors (1 for the same direction).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na * nb)
}
