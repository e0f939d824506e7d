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

pub mod batch;
pub mod bert;
pub mod cache;
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

/// Embeds `texts` for storage or search: one unit-length vector per text, checked to have the
/// model's dimensions and finite values. A failing model is Unavailable (the caller may retry).
pub async fn embed_units(
    e: &dyn Embedder,
    texts: &[String],
) -> Result<Vec<Vec<f32>>, crate::error::NexusError> {
    use crate::error::NexusError;
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    let vectors = e
        .embed(texts)
        .await
        .map_err(|err| NexusError::unavailable(format!("embedding the text: {err}")))?;
    if vectors.len() != texts.len() {
        return Err(NexusError::internal(format!(
            "the embedder returned {} vectors for {} texts",
            vectors.len(),
            texts.len()
        )));
    }
    vectors
        .into_iter()
        .map(|v| {
            if v.len() != e.dimensions() || v.iter().any(|x| !x.is_finite()) {
                return Err(NexusError::internal(format!(
                    "the embedder returned a vector of {} values (expected {} finite ones)",
                    v.len(),
                    e.dimensions()
                )));
            }
            Ok(normalized(v))
        })
        .collect()
}

/// Scales a vector to unit length (cosine similarity becomes a dot product).
pub fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// The embedder `config` names, batching concurrent requests; None for provider `none`, or
/// when the local model is not in the model cache (then memories are found by words only, and
/// the log says how to get the model). A wrong configuration is an error.
pub fn from_config(
    config: &crate::config::EmbeddingConfig,
) -> Result<Option<std::sync::Arc<dyn Embedder>>, EmbedError> {
    use std::sync::Arc;
    let inner: Arc<dyn Embedder> = match config.provider.as_str() {
        "none" => return Ok(None),
        "local" => {
            let dir = config.model_dir.clone().unwrap_or_else(minilm::default_dir);
            let options = minilm::Options {
                threads: config.threads,
            };
            match minilm::MiniLm::load_with(&dir, options) {
                Ok(m) => Arc::new(m),
                Err(EmbedError::ModelMissing(why)) => {
                    tracing::warn!(
                        "semantic recall is off: {why}. Run `nexus model pull` to download the embedding model, or set [embedding] provider = \"openai\" or \"none\""
                    );
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        "openai" => {
            let missing = |key: &str| {
                EmbedError::Model(format!(
                    "embedding.provider = \"openai\" needs embedding.{key}"
                ))
            };
            if config.url.is_empty() {
                return Err(missing("url"));
            }
            if config.model.is_empty() {
                return Err(missing("model"));
            }
            if config.dimensions == 0 {
                return Err(missing("dimensions"));
            }
            let key = std::env::var(&config.api_key_env)
                .ok()
                .filter(|k| !k.is_empty());
            Arc::new(openai::OpenAiEmbedder::new(
                &config.url,
                &config.model,
                config.dimensions,
                key,
                std::time::Duration::from_millis(config.timeout_ms),
            )?)
        }
        other => {
            return Err(EmbedError::Model(format!(
                "embedding.provider {other:?}: use local, openai or none"
            )))
        }
    };
    tracing::info!(
        model = inner.model(),
        dimensions = inner.dimensions(),
        "embedding model ready"
    );
    let batched: Arc<dyn Embedder> =
        Arc::new(batch::BatchingEmbedder::new(inner, config.max_batch));
    Ok(Some(
        match std::num::NonZeroUsize::new(config.cache_entries) {
            Some(entries) => Arc::new(cache::CachingEmbedder::new(batched, entries)),
            None => batched,
        },
    ))
}
