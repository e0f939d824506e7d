//! `nexus-bench semantic`: what semantic memory costs end to end over gRPC, on one node with
//! the local embedding model: Remember and Recall latency at N memories, memories per second
//! under concurrent Remembers (and how full the embedder's batches were), and conversation
//! turns per second appended in batches. Every text and query is distinct, so no figure is
//! helped by the embedding cache.

use super::*;

#[derive(clap::Args)]
pub(crate) struct SemanticArgs {
    /// The nexus binary (default: beside this one).
    #[arg(long)]
    nexus: Option<PathBuf>,
    /// Memories loaded before the latencies are measured.
    #[arg(long, default_value_t = 10_000)]
    memories: usize,
    /// Concurrent clients loading them (their Remembers share the embedder's batches).
    #[arg(long, default_value_t = 16)]
    load_clients: usize,
    /// Requests per latency measurement (one client, one at a time).
    #[arg(long, default_value_t = 400)]
    samples: usize,
    /// Conversation turns appended, in batches of 32.
    #[arg(long, default_value_t = 2048)]
    turns: usize,
    /// Extra environment for the node (`KEY=VALUE`, repeatable), to compare settings.
    #[arg(long)]
    env: Vec<String>,
    /// Print the figures without touching the report.
    #[arg(long)]
    no_report: bool,
    #[arg(long, default_value = "target/bench")]
    work_dir: PathBuf,
    #[arg(long, default_value = "docs/benchmarks.md")]
    report: PathBuf,
}

const SUBJECTS: &[&str] = &[
    "The customer",
    "Our CFO",
    "Maria from logistics",
    "The on-call engineer",
    "The agent",
    "The design team",
    "Grandma",
    "The landlord",
    "Dr. Okafor",
    "The new intern",
    "Priya",
    "The vendor",
    "The school",
    "My brother",
    "The auditor",
    "The support bot",
];
const VERBS: &[&str] = &[
    "prefers",
    "asked about",
    "cancelled",
    "moved",
    "approved",
    "complained about",
    "forgot",
    "scheduled",
    "rejected",
    "paid for",
    "is allergic to",
    "recommended",
    "wants to revisit",
    "signed off on",
    "lost",
    "renewed",
];
const OBJECTS: &[&str] = &[
    "the quarterly budget review",
    "a window seat on long flights",
    "the database migration",
    "oat milk in the morning coffee",
    "the Berlin offsite",
    "invoice 4471",
    "the staging cluster upgrade",
    "a dentist appointment",
    "the marketing newsletter",
    "the kitchen renovation",
    "their gym membership",
    "the API rate limits",
    "the holiday rota",
    "the vintage camera",
    "the mortgage paperwork",
    "the hiking trip",
    "peanut sauce",
    "the security questionnaire",
    "the spring concert",
    "the lease renewal",
];
const DETAILS: &[&str] = &[
    "until next Tuesday",
    "because the numbers did not add up",
    "after the outage",
    "for the third time this month",
    "before the board meeting",
    "without telling anyone",
    "in the shared calendar",
    "over a long phone call",
    "with a note to follow up",
    "as discussed in the retro",
    "once the contract is signed",
    "during the snowstorm",
    "on the condition of a discount",
    "for the whole team",
    "right before lunch",
    "with two weeks' notice",
];
const QUESTIONS: &[&str] = &[
    "what does {s} think about {o}",
    "did anyone change plans for {o}",
    "who handled {o} recently",
    "is there an update on {o}",
    "remind me what happened with {o}",
    "why was {o} delayed",
];

/// Splitmix64: a reproducible stream of words.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
}

/// The i-th memory-like text: a sentence or two of 10-40 words, distinct by its number.
fn memory_text(rng: &mut Rng, i: usize) -> String {
    let mut t = format!(
        "{} {} {} {} (note {i}).",
        rng.pick(SUBJECTS),
        rng.pick(VERBS),
        rng.pick(OBJECTS),
        rng.pick(DETAILS)
    );
    if rng.next().is_multiple_of(2) {
        t += &format!(
            " {} also {} {}.",
            rng.pick(SUBJECTS),
            rng.pick(VERBS),
            rng.pick(OBJECTS)
        );
    }
    t
}

/// The i-th query: a question, distinct by its number.
fn query_text(rng: &mut Rng, i: usize) -> String {
    let s = rng.pick(SUBJECTS).to_lowercase();
    let o = rng.pick(OBJECTS);
    format!(
        "{} (case {i})?",
        rng.pick(QUESTIONS).replace("{s}", &s).replace("{o}", o)
    )
}

/// p50, p95 and p99 of one Recall per query, in `mode`.
async fn recall_latency(
    c: &mut Client,
    queries: &[String],
    mode: pb::RecallMode,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut lat = Vec::with_capacity(queries.len());
    for query in queries {
        let t = Instant::now();
        let hits = c
            .memory
            .recall(pb::RecallRequest {
                namespace: "bench".into(),
                query: query.clone(),
                k: 10,
                mode: mode as i32,
                ..Default::default()
            })
            .await?
            .into_inner()
            .hits;
        lat.push(t.elapsed().as_micros() as u64);
        if hits.is_empty() {
            bail!("Recall ({mode:?}) of {query:?} found nothing");
        }
    }
    Ok(sorted_ms(lat))
}

fn sorted_ms(mut lat: Vec<u64>) -> (f64, f64, f64) {
    lat.sort_unstable();
    let at = |p| percentile(&lat, p) as f64 / 1000.0;
    (at(0.5), at(0.95), at(0.99))
}

pub(crate) async fn semantic_bench(a: SemanticArgs) -> anyhow::Result<()> {
    let bin = nexus_binary(a.nexus.clone())?;
    std::fs::create_dir_all(&a.work_dir)?;
    let data = a.work_dir.join(format!("semantic-{}", std::process::id()));
    let env: Vec<(&str, String)> = a
        .env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k, v.to_string()))
                .with_context(|| format!("--env {kv}: expected KEY=VALUE"))
        })
        .collect::<anyhow::Result<_>>()?;
    eprintln!("[1/5] starting {} on {}", bin.display(), data.display());
    let ports = (free_port()?, free_port()?, free_port()?);
    let node = spawn_nexus(&bin, &data, ports, &env)?;
    wait_for_leader(&node).await?;
    let mut c = Client::connect(&node.endpoint).await?;
    // The model must be there: without it Remember succeeds without a vector and every
    // figure here would be meaningless.
    let probe = c
        .memory
        .remember(pb::RememberRequest {
            namespace: "bench".into(),
            text: "warm-up".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    if !probe.notice.is_empty() || probe.memory.is_none_or(|m| m.model.is_empty()) {
        bail!(
            "the node stored a memory without a vector: {}",
            probe.notice
        );
    }

    eprintln!(
        "[2/5] remembering {} memories from {} clients",
        a.memories, a.load_clients
    );
    let batches_before = metric(&node.http, "nexus_embedding_batch_texts_count").await?;
    let texts_before = metric(&node.http, "nexus_embedding_batch_texts_sum").await?;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..a.load_clients {
        let mut c = Client::connect(&node.endpoint).await?;
        let next = next.clone();
        let total = a.memories;
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(w as u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                if i.is_multiple_of(1000) {
                    eprintln!("      {i}/{total}");
                }
                c.memory
                    .remember(pb::RememberRequest {
                        namespace: "bench".into(),
                        text: memory_text(&mut rng, i),
                        ..Default::default()
                    })
                    .await?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let load_per_sec = a.memories as f64 / started.elapsed().as_secs_f64();
    let batches = metric(&node.http, "nexus_embedding_batch_texts_count").await? - batches_before;
    let batch_texts = metric(&node.http, "nexus_embedding_batch_texts_sum").await? - texts_before;
    let mean_batch = batch_texts / batches.max(1.0);

    eprintln!("[3/5] {} Remembers, one at a time", a.samples);
    let mut rng = Rng(1 << 40);
    let mut lat = Vec::with_capacity(a.samples);
    for i in 0..a.samples {
        let text = memory_text(&mut rng, a.memories + i);
        let t = Instant::now();
        c.memory
            .remember(pb::RememberRequest {
                namespace: "bench".into(),
                text,
                ..Default::default()
            })
            .await?;
        lat.push(t.elapsed().as_micros() as u64);
    }
    let remember = sorted_ms(lat);

    eprintln!(
        "[4/5] {} Recalls (hybrid, k = 10), one at a time",
        a.samples
    );
    let queries: Vec<String> = (0..a.samples).map(|i| query_text(&mut rng, i)).collect();
    // New queries (a model pass each), the same again (their vectors in the embedding
    // cache: what the rest of a Recall costs), and BM25 alone.
    let recall = recall_latency(&mut c, &queries, pb::RecallMode::Hybrid).await?;
    let cached = recall_latency(&mut c, &queries, pb::RecallMode::Hybrid).await?;
    let words = recall_latency(&mut c, &queries, pb::RecallMode::Bm25).await?;

    eprintln!("[5/5] appending {} turns in batches of 32", a.turns);
    c.conversations
        .create_conversation(pb::CreateConversationRequest {
            id: "bench".into(),
            title: "bench".into(),
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut n = 0;
    while n < a.turns {
        let batch = (n..(n + 32).min(a.turns))
            .map(|i| pb::NewMessage {
                role: if i % 2 == 0 { "user" } else { "assistant" }.into(),
                content: memory_text(&mut rng, 1_000_000 + i),
                ..Default::default()
            })
            .collect::<Vec<_>>();
        n += batch.len();
        c.conversations
            .append_messages(pb::AppendMessagesRequest {
                conversation_id: "bench".into(),
                messages: batch,
            })
            .await?;
    }
    let turns_per_sec = a.turns as f64 / started.elapsed().as_secs_f64();

    let settings = if a.env.is_empty() {
        "defaults".to_string()
    } else {
        format!("`{}`", a.env.join(" "))
    };
    let mut body = String::from("## Semantic memory latency (issue 16)\n\n");
    body += &format!(
        "Command: `scripts/bench-semantic` (= `nexus-bench semantic --memories {} --samples {}` against a fresh release node with the local model; settings: {settings})\n\n\
         Machine: {}. all-MiniLM-L6-v2 on candle, CPU. Every text and query is distinct (no embedding-cache hits); memories are 10-40 words. Latency is end to end over gRPC on loopback, one client, one request at a time, after {} memories were loaded.\n\n\
         | measurement | figure | target |\n|---|---:|---:|\n\
         | Remember p50 / p99 | {:.1} / {:.1} ms | p99 ≤ 15 ms |\n\
         | Recall (hybrid, k = 10) p50 / p95 / p99 | {:.1} / {:.1} / {:.1} ms | p95 ≤ 10 ms |\n\
         | the same queries again (vectors from the embedding cache) p50 / p95 | {:.1} / {:.1} ms | |\n\
         | the same queries, BM25 alone p50 / p95 | {:.1} / {:.1} ms | |\n\
         | conversation turns appended in batches of 32 | {:.0} turns/s | ≥ 200 turns/s |\n\
         | memories loaded by {} concurrent clients | {:.0} memories/s | |\n\
         | texts per embedder batch during that load | {:.1} | |\n\n",
        a.memories,
        a.samples,
        machine(),
        a.memories,
        remember.0,
        remember.2,
        recall.0,
        recall.1,
        recall.2,
        cached.0,
        cached.1,
        words.0,
        words.1,
        turns_per_sec,
        a.load_clients,
        load_per_sec,
        mean_batch,
    );
    if !a.no_report {
        update_section(&a.report, "bench:semantic", &body)?;
        eprintln!("wrote {}", a.report.display());
    }
    print!("{body}");
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}
