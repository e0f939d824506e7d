//! Benchmark of the local vector index (HNSW, usearch) as Nexus uses it: ingest through
//! `VectorIndex::apply`, search p50/p99, recall@10 against exact search, memory; and the
//! end-to-end ingest of real texts (embed with the local model + index).
//!
//! `cargo run --release -p nexus-node --example bench_vectors -- --sizes 100000,1000000`
//!
//! Vectors are synthetic: 384-dimensional, unit length, drawn around 2,000 random centres
//! (a Gaussian mixture), which is closer to how sentence embeddings cluster than uniform
//! noise. Queries are fresh draws from the same mixture, so they are not in the index.
//! Writes the `bench:vectors` section of docs/benchmarks.md.

use std::path::PathBuf;
use std::time::Instant;

use nexus_client::report::{machine, percentile, update_section};
use nexus_node::config::VectorConfig;
use nexus_node::embed::Embedder;
use nexus_node::search::vector::local::{HnswParams, LocalIndex};
use nexus_node::search::vector::{PointKind, VectorChange, VectorFilter, VectorIndex, VectorPoint};

const DIMENSIONS: usize = 384;
const CENTRES: usize = 2_000;
const QUERIES: usize = 1_000;
const K: usize = 10;
const TENANT: &str = "bench";

/// xorshift64* and Box-Muller: enough randomness for synthetic data, no dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn gaussian(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
    }
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

struct Mixture {
    centres: Vec<Vec<f32>>,
    rng: Rng,
}

impl Mixture {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let centres = (0..CENTRES)
            .map(|_| unit((0..DIMENSIONS).map(|_| rng.gaussian()).collect()))
            .collect();
        Mixture { centres, rng }
    }
    /// A point near a random centre (noise of about the centre's own length).
    fn draw(&mut self) -> Vec<f32> {
        let c = (self.rng.next_u64() % CENTRES as u64) as usize;
        let spread = 1.0 / (DIMENSIONS as f32).sqrt();
        let v = (0..DIMENSIONS)
            .map(|i| self.centres[c][i] + spread * self.rng.gaussian())
            .collect();
        unit(v)
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

struct Row {
    size: usize,
    ef: usize,
    ingest_per_s: f64,
    recall: f64,
    p50_us: u64,
    p99_us: u64,
    exact_p50_us: u64,
    index_mib: f64,
    rss_mib: f64,
}

fn run_size(size: usize, efs: &[usize], config: &VectorConfig) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let params = HnswParams::from_config(DIMENSIONS, config)?;
    let index = LocalIndex::open(dir.path(), params)?;
    let mut data = Mixture::new(7);
    // Drawn before the clock starts: ingest measures the index, not the generator.
    let mut points: Vec<VectorChange> = (1..=size as u64)
        .map(|seq| {
            VectorChange::Upsert(VectorPoint {
                tenant: TENANT.into(),
                seq,
                kind: PointKind::Memory,
                scope: "n".into(),
                created_at_ms: seq as i64,
                vector: data.draw(),
            })
        })
        .collect();
    let started = Instant::now();
    let mut seq = 0u64;
    for chunk in points.chunks(1_000) {
        seq += chunk.len() as u64;
        index.apply(chunk, seq)?;
        if seq.is_multiple_of(100_000) {
            eprintln!(
                "  {size}: {seq} vectors indexed, {:.0}/s",
                seq as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let ingest_per_s = size as f64 / started.elapsed().as_secs_f64();
    points.clear();
    points.shrink_to_fit();
    let index_mib = index.memory_usage() as f64 / (1 << 20) as f64;
    let rss_mib = rss_bytes() as f64 / (1 << 20) as f64;
    let queries: Vec<Vec<f32>> = (0..QUERIES).map(|_| data.draw()).collect();
    let mut exact = Vec::with_capacity(QUERIES);
    let mut exact_lat = Vec::with_capacity(QUERIES);
    for q in &queries {
        let t = Instant::now();
        exact.push(index.exact_search(TENANT, q, K)?);
        exact_lat.push(t.elapsed().as_micros() as u64);
    }
    exact_lat.sort_unstable();
    let mut rows = Vec::new();
    for &ef in efs {
        index.set_expansion_search(ef);
        let mut lat = Vec::with_capacity(QUERIES);
        let mut found = 0usize;
        for (q, truth) in queries.iter().zip(&exact) {
            let t = Instant::now();
            let hits = index.search_blocking(TENANT, q, K, &VectorFilter::default())?;
            lat.push(t.elapsed().as_micros() as u64);
            found += hits
                .iter()
                .filter(|h| truth.iter().any(|e| e.seq == h.seq))
                .count();
        }
        lat.sort_unstable();
        let row = Row {
            size,
            ef,
            ingest_per_s,
            recall: found as f64 / (QUERIES * K) as f64,
            p50_us: percentile(&lat, 0.5),
            p99_us: percentile(&lat, 0.99),
            exact_p50_us: percentile(&exact_lat, 0.5),
            index_mib,
            rss_mib,
        };
        eprintln!(
            "  {size} vectors, ef {ef}: recall@10 {:.4}, p50 {} µs, p99 {} µs",
            row.recall, row.p50_us, row.p99_us
        );
        rows.push(row);
    }
    Ok(rows)
}

/// Embeds and indexes real texts, as Remember does: items/s end to end.
async fn end_to_end(texts: usize) -> anyhow::Result<(usize, f64)> {
    let model = nexus_node::embed::minilm::MiniLm::load(&nexus_node::embed::minilm::default_dir())?;
    let dir = tempfile::tempdir()?;
    let index = LocalIndex::open(
        dir.path(),
        HnswParams::from_config(DIMENSIONS, &VectorConfig::default())?,
    )?;
    let words = [
        "meeting", "project", "deadline", "customer", "invoice", "travel", "doctor", "birthday",
        "server", "release", "budget", "dinner", "flight", "contract", "review", "garden",
    ];
    let mut rng = Rng(11);
    let corpus: Vec<String> = (0..texts)
        .map(|i| {
            let n = 8 + (rng.next_u64() % 30) as usize;
            let body: Vec<&str> = (0..n)
                .map(|_| words[(rng.next_u64() % words.len() as u64) as usize])
                .collect();
            format!("Note {i}: {}", body.join(" "))
        })
        .collect();
    let started = Instant::now();
    let mut seq = 0u64;
    for batch in corpus.chunks(32) {
        let vectors = model.embed(batch).await?;
        let changes: Vec<VectorChange> = vectors
            .into_iter()
            .map(|v| {
                seq += 1;
                VectorChange::Upsert(VectorPoint {
                    tenant: TENANT.into(),
                    seq,
                    kind: PointKind::Memory,
                    scope: "n".into(),
                    created_at_ms: 0,
                    vector: v,
                })
            })
            .collect();
        index.apply(&changes, seq)?;
    }
    Ok((texts, texts as f64 / started.elapsed().as_secs_f64()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<usize> = arg("--sizes")
        .unwrap_or_else(|| "100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let efs: Vec<usize> = arg("--ef")
        .unwrap_or_else(|| "64,128".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let config = VectorConfig::default();
    let mut rows = Vec::new();
    for &size in &sizes {
        eprintln!("indexing {size} vectors...");
        rows.extend(run_size(size, &efs, &config)?);
    }
    eprintln!("embedding and indexing 1000 texts...");
    let (texts, e2e) = end_to_end(1_000).await?;

    let mut body = String::from("## Local vector index (issue: semantic memory)\n\n");
    body +=
        &format!(
        "Command: `cargo run {}-p nexus-node --example bench_vectors -- --sizes {} --ef {}`\n\n",
        if cfg!(debug_assertions) { "" } else { "--release " },
        sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
        efs.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
    );
    body += &format!(
        "Machine: {}. Build: {}. Date: {}. usearch {} HNSW, M = {}, ef_construction = {}, {} vectors, inner product on unit vectors, one tenant. Data: {DIMENSIONS}-dimensional unit vectors drawn around {CENTRES} random centres; {QUERIES} queries drawn from the same mixture (not in the index); truth = exact search over the same index. Ingest = `VectorIndex::apply` in chunks of 1,000 on one thread, as the indexer feeds it.\n\n",
        machine(),
        if cfg!(debug_assertions) {
            "dev profile (dependencies, usearch's C++ included, at opt-level 2; Nexus's own code unoptimized)"
        } else {
            "release"
        },
        std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default(),
        usearch::version(),
        config.connectivity,
        config.expansion_add,
        config.quantization,
    );
    body += "| vectors | ef (search) | recall@10 | p50 µs | p99 µs | exact search p50 µs | ingest vectors/s | index memory MiB | process RSS MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in &rows {
        body += &format!(
            "| {} | {} | {:.4} | {} | {} | {} | {:.0} | {:.0} | {:.0} |\n",
            r.size,
            r.ef,
            r.recall,
            r.p50_us,
            r.p99_us,
            r.exact_p50_us,
            r.ingest_per_s,
            r.index_mib,
            r.rss_mib
        );
    }
    body += &format!(
        "\nEnd to end (embed with all-MiniLM-L6-v2 in batches of 32, then index): {texts} texts at {e2e:.0} items/s. The model is the bottleneck (see the embedding benchmark); indexing alone is the ingest column above.\n\n"
    );
    let report = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    update_section(&report, "bench:vectors", &body)?;
    eprintln!("wrote {}", report.display());
    print!("{body}");
    Ok(())
}
