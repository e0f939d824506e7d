//! An OpenAI-compatible `/v1/embeddings` endpoint over HTTP: OpenAI itself, Ollama, vLLM,
//! Hugging Face TEI, LiteLLM… by base URL, model name and (optional) API key.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{EmbedError, EmbedFuture, Embedder};

/// Texts per request (OpenAI accepts up to 2,048 inputs; smaller requests fail faster).
const BATCH: usize = 128;

pub struct OpenAiEmbedder {
    client: reqwest::Client,
    /// `BASE/v1/embeddings`.
    url: String,
    model: String,
    dimensions: usize,
    api_key: Option<String>,
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [String],
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: usize,
    embedding: Vec<f32>,
}

impl OpenAiEmbedder {
    /// `base_url` is the server's root (`https://api.openai.com`, `http://localhost:11434`);
    /// `dimensions` is what the model returns, checked on every reply.
    pub fn new(
        base_url: &str,
        model: &str,
        dimensions: usize,
        api_key: Option<String>,
        timeout: Duration,
    ) -> Result<Self, EmbedError> {
        let base = base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        reqwest::Url::parse(base)
            .map_err(|e| EmbedError::Model(format!("embedding URL {base_url:?}: {e}")))?;
        let client = crate::tls::http_client_builder()
            .timeout(timeout)
            .build()
            .map_err(|e| EmbedError::Model(e.to_string()))?;
        Ok(OpenAiEmbedder {
            client,
            url: format!("{base}/v1/embeddings"),
            model: model.to_string(),
            dimensions,
            api_key,
        })
    }

    async fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut request = self.client.post(&self.url).json(&Request {
            model: &self.model,
            input: texts,
        });
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| EmbedError::Failed(format!("{}: {e}", self.url)))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            return Err(EmbedError::Failed(format!(
                "{} answered {status}: {body}",
                self.url
            )));
        }
        let mut reply: Response = response
            .json()
            .await
            .map_err(|e| EmbedError::Failed(format!("{}: unexpected reply: {e}", self.url)))?;
        if reply.data.len() != texts.len() {
            return Err(EmbedError::Failed(format!(
                "{} returned {} embeddings for {} texts",
                self.url,
                reply.data.len(),
                texts.len()
            )));
        }
        reply.data.sort_by_key(|d| d.index);
        let mut out = Vec::with_capacity(texts.len());
        for (i, item) in reply.data.into_iter().enumerate() {
            if item.index != i || item.embedding.len() != self.dimensions {
                return Err(EmbedError::Failed(format!(
                    "{}: embedding {} has index {} and {} dimensions, expected {i} and {}",
                    self.url,
                    i,
                    item.index,
                    item.embedding.len(),
                    self.dimensions
                )));
            }
            out.push(item.embedding);
        }
        Ok(out)
    }
}

impl Embedder for OpenAiEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(BATCH) {
                out.extend(self.embed_batch(chunk).await?);
            }
            Ok(out)
        })
    }
}
