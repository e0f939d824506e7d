//! Embedding throughput and latency of the local model (all-MiniLM-L6-v2 on candle, CPU), the
//! cost that semantic memory adds to every write on the proposing node. Rewrites the
//! `bench:embed` section of docs/benchmarks.md.
//!
//! `cargo run --release -p nexus-node --example bench_embed` (the dev profile works too, and
//! says so in its figures). Needs `nexus model pull` first.

use std::time::Instant;

use nexus_client::report::{machine, percentile, update_section};
use nexus_node::embed::minilm::{self, MiniLm};

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

fn main() -> anyhow::Result<()> {
    let model = MiniLm::load(&minilm::default_dir())?;
    let texts = corpus(2_000);
    let words: usize = texts.iter().map(|t| t.split(' ').count()).sum();
    model.embed_blocking(&texts[..64])?; // warm-up

    // One text at a time: the latency a single Remember would add.
    let mut lat = Vec::new();
    let started = Instant::now();
    for t in &texts[..300] {
        let t0 = Instant::now();
        model.embed_blocking(std::slice::from_ref(t))?;
        lat.push(t0.elapsed().as_micros() as u64);
    }
    let single_per_sec = 300.0 / started.elapsed().as_secs_f64();
    lat.sort_unstable();

    // Batches of 32 (the embedder's batch), as a burst of writes or a rebuild would use.
    let started = Instant::now();
    let v = model.embed_blocking(&texts)?;
    let batch_per_sec = texts.len() as f64 / started.elapsed().as_secs_f64();
    assert_eq!(v.len(), texts.len());

    let command = if cfg!(debug_assertions) {
        "`cargo run -p nexus-node --example bench_embed` (dev profile: dependencies at \
         opt-level 2, with debug assertions)"
    } else {
        "`cargo run --release -p nexus-node --example bench_embed`"
    };
    let body = format!(
        "## Local embeddings (issue: semantic memory)\n\n\
         Command: {command}\n\n\
         Machine: {}. all-MiniLM-L6-v2 (384 dimensions) on candle, CPU. \
         {} memory-like texts of 5-60 words ({:.0} words on average).\n\n\
         | mode | texts/s | p50 ms | p99 ms |\n|---|---:|---:|---:|\n\
         | one text per call | {:.0} | {:.2} | {:.2} |\n\
         | batches of 32, texts grouped by length | {:.0} | | |\n\n",
        machine(),
        texts.len(),
        words as f64 / texts.len() as f64,
        single_per_sec,
        percentile(&lat, 0.5) as f64 / 1000.0,
        percentile(&lat, 0.99) as f64 / 1000.0,
        batch_per_sec,
    );
    let report = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    update_section(&report, "bench:embed", &body)?;
    print!("{body}");
    Ok(())
}
