//! Embeds the texts of concurrent requests together.
//!
//! One worker takes whatever requests are queued (up to `max_batch` texts) and embeds them in
//! one call: a model pass over a batch costs less per text than one pass per text, and an HTTP
//! embedder makes one request instead of many. A lone request is embedded at once; nothing
//! waits for a batch to fill.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{EmbedError, EmbedFuture, Embedder};
use crate::observe::metrics;

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>;

struct Job {
    texts: Vec<String>,
    reply: Reply,
}

pub struct BatchingEmbedder {
    model: String,
    dimensions: usize,
    queue: mpsc::Sender<Job>,
}

impl BatchingEmbedder {
    /// Starts the worker on the current tokio runtime.
    pub fn new(inner: Arc<dyn Embedder>, max_batch: usize) -> Self {
        let (queue, rx) = mpsc::channel(1024);
        let model = inner.model().to_string();
        let dimensions = inner.dimensions();
        tokio::spawn(worker(inner, rx, max_batch.max(1)));
        BatchingEmbedder {
            model,
            dimensions,
            queue,
        }
    }
}

async fn worker(inner: Arc<dyn Embedder>, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
    while let Some(first) = rx.recv().await {
        let mut count = first.texts.len();
        let mut jobs = vec![first];
        while count < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.texts.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut texts = Vec::with_capacity(count);
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            replies.push((job.texts.len(), job.reply));
            texts.extend(job.texts);
        }
        metrics::EMBEDDING_BATCH.observe(texts.len() as f64);
        let started = std::time::Instant::now();
        let result = inner.embed(&texts).await;
        metrics::EMBEDDING_SECONDS.observe(started.elapsed().as_secs_f64());
        hand_out(replies, result);
    }
}

/// Splits one batch's result among the requests it came from, in order.
fn hand_out(replies: Vec<(usize, Reply)>, result: Result<Vec<Vec<f32>>, EmbedError>) {
    match result {
        Ok(vectors) => {
            let mut vectors = vectors.into_iter();
            for (n, reply) in replies {
                let mine: Vec<Vec<f32>> = vectors.by_ref().take(n).collect();
                let _ = reply.send(if mine.len() == n {
                    Ok(mine)
                } else {
                    Err(EmbedError::Failed(format!(
                        "the embedder returned fewer vectors than texts ({} for {n})",
                        mine.len()
                    )))
                });
            }
        }
        Err(e) => {
            let message = e.to_string();
            for (_, reply) in replies {
                let _ = reply.send(Err(EmbedError::Failed(message.clone())));
            }
        }
    }
}

impl Embedder for BatchingEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.queue
                .send(Job {
                    texts: texts.to_vec(),
                    reply,
                })
                .await
                .map_err(|_| EmbedError::Failed("the embedding worker has stopped".into()))?;
            rx.await
                .map_err(|_| EmbedError::Failed("the embedding worker has stopped".into()))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Embeds a text as [its length, 1] and records the batch sizes it was called with.
    struct Recording(Mutex<Vec<usize>>);

    impl Embedder for Recording {
        fn model(&self) -> &str {
            "recording"
        }
        fn dimensions(&self) -> usize {
            2
        }
        fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
            Box::pin(async move {
                self.0.lock().unwrap().push(texts.len());
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(texts.iter().map(|t| vec![t.len() as f32, 1.0]).collect())
            })
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_batches_and_get_their_own_vectors() {
        let inner = Arc::new(Recording(Mutex::new(Vec::new())));
        let batcher = Arc::new(BatchingEmbedder::new(inner.clone(), 8));
        let mut tasks = Vec::new();
        for i in 0..20usize {
            let b = batcher.clone();
            tasks.push(tokio::spawn(async move {
                let texts = vec!["x".repeat(i + 1)];
                let v = b.embed(&texts).await.unwrap();
                assert_eq!(v, vec![vec![(i + 1) as f32, 1.0]]);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let calls = inner.0.lock().unwrap().clone();
        assert_eq!(calls.iter().sum::<usize>(), 20);
        assert!(calls.iter().all(|&n| n <= 8), "{calls:?}");
        assert!(calls.len() < 20, "requests were batched: {calls:?}");
    }
}
