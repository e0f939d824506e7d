//! Recent embeddings by text: an agent that asks the same question again, or stores a text
//! it stored before, gets the vector without a model pass. A bounded LRU of at most
//! `embedding.cache_entries` texts of at most `MAX_CACHED_BYTES` each, keyed by the text
//! itself (no hash collisions to reason about), for one model (the node's: a model change
//! restarts the node and so empties it). Texts in one call that miss go to the model
//! together, once each.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::{EmbedFuture, Embedder};
use crate::observe::metrics;

/// Longer texts are embedded every time: they are rarely repeated, and bound the memory the
/// cache holds (entries × (this + 4 bytes per dimension)).
pub const MAX_CACHED_BYTES: usize = 2048;

pub struct CachingEmbedder {
    inner: Arc<dyn Embedder>,
    cache: Mutex<LruCache<String, Arc<[f32]>>>,
}

impl CachingEmbedder {
    pub fn new(inner: Arc<dyn Embedder>, entries: NonZeroUsize) -> Self {
        Self {
            inner,
            cache: Mutex::new(LruCache::new(entries)),
        }
    }
}

impl Embedder for CachingEmbedder {
    fn model(&self) -> &str {
        self.inner.model()
    }

    fn dimensions(&self) -> usize {
        self.inner.dimensions()
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move {
            let mut out: Vec<Option<Arc<[f32]>>> = {
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                texts.iter().map(|t| cache.get(t).cloned()).collect()
            };
            // Each missing text once, in first-seen order.
            let mut missing: Vec<String> = Vec::new();
            let mut slot: HashMap<&str, usize> = HashMap::new();
            for (t, v) in texts.iter().zip(&out) {
                if v.is_none() && !slot.contains_key(t.as_str()) {
                    slot.insert(t, missing.len());
                    missing.push(t.clone());
                }
            }
            metrics::EMBEDDING_CACHE
                .with_label_values(&["hit"])
                .inc_by((texts.len() - out.iter().filter(|v| v.is_none()).count()) as u64);
            metrics::EMBEDDING_CACHE
                .with_label_values(&["miss"])
                .inc_by(missing.len() as u64);
            if !missing.is_empty() {
                let vectors: Vec<Arc<[f32]>> = self
                    .inner
                    .embed(&missing)
                    .await?
                    .into_iter()
                    .map(Arc::from)
                    .collect();
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                for (t, v) in missing.iter().zip(&vectors) {
                    if t.len() <= MAX_CACHED_BYTES {
                        cache.put(t.clone(), v.clone());
                    }
                }
                for (t, o) in texts.iter().zip(out.iter_mut()) {
                    if o.is_none() {
                        *o = vectors.get(slot[t.as_str()]).cloned();
                    }
                }
            }
            Ok(out
                .into_iter()
                .map(|v| v.map(|v| v.to_vec()).unwrap_or_default())
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Embeds a text as [its length, calls so far], recording what it was asked.
    struct Counting(Mutex<Vec<Vec<String>>>);

    impl Embedder for Counting {
        fn model(&self) -> &str {
            "counting"
        }
        fn dimensions(&self) -> usize {
            2
        }
        fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
            Box::pin(async move {
                let mut calls = self.0.lock().unwrap();
                calls.push(texts.to_vec());
                let n = calls.len() as f32;
                Ok(texts.iter().map(|t| vec![t.len() as f32, n]).collect())
            })
        }
    }

    #[tokio::test]
    async fn repeated_texts_skip_the_model_and_keep_their_order() {
        let inner = Arc::new(Counting(Mutex::new(Vec::new())));
        let cache = CachingEmbedder::new(inner.clone(), NonZeroUsize::new(2).unwrap());
        let s = |v: &[&str]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let first = cache.embed(&s(&["ab", "abc", "ab"])).await.unwrap();
        assert_eq!(first, vec![vec![2.0, 1.0], vec![3.0, 1.0], vec![2.0, 1.0]]);
        // "ab" once in the model's call, though asked twice.
        assert_eq!(inner.0.lock().unwrap()[0], s(&["ab", "abc"]));
        // Both cached: no model call; a new text goes alone.
        let again = cache.embed(&s(&["abc", "x", "ab"])).await.unwrap();
        assert_eq!(again, vec![vec![3.0, 1.0], vec![1.0, 2.0], vec![2.0, 1.0]]);
        assert_eq!(inner.0.lock().unwrap()[1], s(&["x"]));
        // Two entries at most: "abc" was the least recently used, and went.
        cache.embed(&s(&["abc"])).await.unwrap();
        assert_eq!(inner.0.lock().unwrap().len(), 3);
        // Long texts are never kept.
        let long = "w".repeat(MAX_CACHED_BYTES + 1);
        cache.embed(&s(&[&long])).await.unwrap();
        cache.embed(&s(&[&long])).await.unwrap();
        assert_eq!(inner.0.lock().unwrap().len(), 5);
    }
}
