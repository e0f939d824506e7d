//! Embedding throughput and latency of the local model (all-MiniLM-L6-v2 on candle, CPU), the
//! cost that semantic memory adds to every write on the proposing node. Rewrites the
//! `bench:embed` section of docs/benchmarks.md.
//!
//! `cargo run --release -p nexus-node --example bench_embed` (the dev profile works too, and
//! says so in its figures). Needs `nexus model pull` first. Compares Nexus's forward pass with
//! candle-transformers' `BertModel` (what it replaced), on one thread and on every core, and
//! checks each against sentence-transformers' vectors.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use nexus_client::report::{machine, percentile, update_section};
use nexus_node::embed::cosine;
use nexus_node::embed::minilm::{self, MiniLm, Options};

/// Memory-like texts of 5 to 60 words, varied so that batches pad to different lengths.
fn corpus(n: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        "project",
        "deadline",
        "customer",
        "meeting",
        "release",
        "invoice",
        "agent",
        "tool",
        "schedule",
        "prefers",
        "morning",
        "Berlin",
        "database",
        "migration",
        "budget",
        "review",
        "the",
        "a",
        "with",
        "after",
        "before",
        "next",
        "week",
        "asked",
        "about",
        "notes",
    ];
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = 5 + (rng % 56) as usize;
            (0..len)
                .map(|i| WORDS[((rng >> (i % 48)) as usize + i * 7) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    vector: Vec<f32>,
}

/// candle-transformers' `BertModel` with the same tokenizer and pooling: the embedder before
/// Nexus had a forward pass of its own (`embed/bert.rs`), measured beside it.
struct CandleBert {
    model: candle_transformers::models::bert::BertModel,
    tokenizer: tokenizers::Tokenizer,
    pool: rayon::ThreadPool,
}

impl CandleBert {
    fn load(threads: usize) -> anyhow::Result<Self> {
        use candle_nn::VarBuilder;
        use tokenizers::{PaddingParams, PaddingStrategy, TruncationParams};
        let dir = minilm::default_dir();
        let config = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: 256,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // SAFETY: read-only mapping of a file nothing modifies while the benchmark runs.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )?
        };
        Ok(CandleBert {
            model: candle_transformers::models::bert::BertModel::load(vb, &config)?,
            tokenizer,
            pool: rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?,
        })
    }

    fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.pool.install(|| {
            let mut order: Vec<usize> = (0..texts.len()).collect();
            order.sort_by_key(|&i| texts[i].len());
            let mut out = vec![Vec::new(); texts.len()];
            for chunk in order.chunks(32) {
                let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
                let enc = self
                    .tokenizer
                    .encode_batch(batch, true)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let rows = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> anyhow::Result<Tensor> {
                    let r = enc
                        .iter()
                        .map(|e| Tensor::new(f(e), &Device::Cpu))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(Tensor::stack(&r, 0)?)
                };
                let ids = rows(&|e| e.get_ids())?;
                let mask = rows(&|e| e.get_attention_mask())?;
                let hidden = self.model.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
                let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let mean = hidden
                    .broadcast_mul(&mask)?
                    .sum(1)?
                    .broadcast_div(&mask.sum(1)?)?;
                let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
                for (&i, v) in chunk
                    .iter()
                    .zip(mean.broadcast_div(&norms)?.to_vec2::<f32>()?)
                {
                    out[i] = v;
                }
            }
            Ok(out)
        })
    }
}

struct Figures {
    single_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    batch_per_sec: f64,
    worst_cosine: f32,
}

type EmbedFn<'a> = &'a dyn Fn(&[String]) -> anyhow::Result<Vec<Vec<f32>>>;

fn measure(embed: EmbedFn, texts: &[String], reference: &Reference) -> anyhow::Result<Figures> {
    embed(&texts[..64])?; // warm-up
                          // One text at a time: the latency a single Remember or Recall adds.
    let mut lat = Vec::new();
    let started = Instant::now();
    for t in &texts[..300] {
        let t0 = Instant::now();
        embed(std::slice::from_ref(t))?;
        lat.push(t0.elapsed().as_micros() as u64);
    }
    let single_per_sec = 300.0 / started.elapsed().as_secs_f64();
    lat.sort_unstable();
    // Batches of 32 (the embedder's batch), as a burst of writes or a rebuild would use.
    let started = Instant::now();
    let v = embed(texts)?;
    let batch_per_sec = texts.len() as f64 / started.elapsed().as_secs_f64();
    assert_eq!(v.len(), texts.len());
    // Against sentence-transformers' vectors, each text alone.
    let mut worst_cosine = 1.0f32;
    for case in &reference.cases {
        let got = embed(std::slice::from_ref(&case.text))?;
        worst_cosine = worst_cosine.min(cosine(&got[0], &case.vector));
    }
    Ok(Figures {
        single_per_sec,
        p50_ms: percentile(&lat, 0.5) as f64 / 1000.0,
        p99_ms: percentile(&lat, 0.99) as f64 / 1000.0,
        batch_per_sec,
        worst_cosine,
    })
}

fn main() -> anyhow::Result<()> {
    let texts = corpus(2_000);
    let words: usize = texts.iter().map(|t| t.split(' ').count()).sum();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let reference: Reference = serde_json::from_slice(&std::fs::read(
        root.join("tests/fixtures/minilm_reference.json"),
    )?)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = String::new();
    let mut threads = vec![1];
    if cores > 1 {
        threads.push(cores);
    }
    for &t in &threads {
        for ours in [false, true] {
            let f = if ours {
                let m = MiniLm::load_with(&minilm::default_dir(), Options { threads: t })?;
                measure(&|x: &[String]| Ok(m.embed_blocking(x)?), &texts, &reference)?
            } else {
                let m = CandleBert::load(t)?;
                measure(&|x: &[String]| m.embed(x), &texts, &reference)?
            };
            let name = if ours {
                "Nexus's forward (`embed/bert.rs`), batches split among threads"
            } else {
                "candle-transformers `BertModel` (before)"
            };
            let row = format!(
                "| {name} | {t} | {:.0} | {:.2} | {:.2} | {:.0} | {:.5} |\n",
                f.single_per_sec, f.p50_ms, f.p99_ms, f.batch_per_sec, f.worst_cosine
            );
            eprint!("{row}");
            rows += &row;
        }
    }

    let command = if cfg!(debug_assertions) {
        "`cargo run -p nexus-node --example bench_embed` (dev profile: dependencies at \
         opt-level 2, with debug assertions)"
    } else {
        "`cargo run --release -p nexus-node --example bench_embed`"
    };
    let body = format!(
        "## Local embeddings (issue: semantic memory)\n\n\
         Command: {command}\n\n\
         Machine: {}. all-MiniLM-L6-v2 (384 dimensions) on candle, CPU, f32. {} memory-like texts of 5-60 words ({:.0} words on average). \
         One text per call: 300 texts, one at a time (the latency a Remember or a Recall adds). \
         Batches: all texts in one call, grouped by length into batches of 32. Lowest cosine: \
         against sentence-transformers' vectors of the {} sentences of \
         tests/fixtures/minilm_reference.json.\n\n\
         | forward pass | threads | one per call: texts/s | p50 ms | p99 ms | batches: texts/s | lowest cosine |\n\
         |---|---:|---:|---:|---:|---:|---:|\n{rows}\n",
        machine(),
        texts.len(),
        words as f64 / texts.len() as f64,
        reference.cases.len(),
    );
    update_section(&root.join("docs/benchmarks.md"), "bench:embed", &body)?;
    print!("{body}");
    Ok(())
}
