//! `nexus-bench recall`: recall@5/@10 and MRR of BM25, vectors and hybrid on the labelled set.

use super::*;

pub(crate) async fn recall_bench(a: RecallArgs) -> anyhow::Result<()> {
    use nexus_client::recall_eval::{evaluate, load_set, LabelledSet};
    let set = LabelledSet::load(&a.set).with_context(|| format!("reading {}", a.set.display()))?;
    let shared = set.shared_words();
    if !shared.is_empty() {
        bail!("the labelled set has queries sharing words with their answers: {shared:?}");
    }
    let bin = nexus_binary(a.nexus.clone())?;
    std::fs::create_dir_all(&a.work_dir)?;
    let data = a.work_dir.join(format!("recall-{}", std::process::id()));
    eprintln!("[1/3] starting {} on {}", bin.display(), data.display());
    let node = start_node(&bin, &data).await?;
    let mut c = Client::connect(&node.endpoint).await?;
    eprintln!("[2/3] remembering {} memories", set.memories.len());
    let started = Instant::now();
    let ids = load_set(&mut c, &set, "quality").await?;
    let remember_ms = started.elapsed().as_secs_f64() * 1000.0 / set.memories.len() as f64;
    eprintln!(
        "[3/3] {} paraphrase and {} keyword queries in each mode",
        set.queries.len(),
        set.keyword_queries.len()
    );
    let mut body = String::from("## Recall quality (issue: semantic memory)\n\n");
    body += "Command: `scripts/bench-recall` (= `nexus-bench recall` against a fresh node with the local model)\n\n";
    body += &format!(
        "Machine: {}. Node: `{}`. Set: `{}`: {} memories. Embedding model all-MiniLM-L6-v2; k = 10; RRF with the node's default weights (vector 1, BM25 1). Two query sets over the same memories:\n\n- {} paraphrases, each sharing no content word (nor 5-letter stem) with its one relevant memory (checked by the benchmark and by tests/recall_quality.rs); the other memories are distractors, many sharing words with the queries;\n- {} exact-term lookups (names, codes, numbers such as `BlueHeron42`, `extension 4455`), which do share words with their answers.\n\n",
        machine(),
        bin.display(),
        a.set.display(),
        set.memories.len(),
        set.queries.len(),
        set.keyword_queries.len(),
    );
    for (title, queries) in [
        ("Paraphrases", &set.queries),
        ("Exact-term lookups", &set.keyword_queries),
    ] {
        let mut rows = Vec::new();
        for (name, mode) in [
            ("BM25 alone", pb::RecallMode::Bm25),
            ("vectors alone", pb::RecallMode::Vector),
            ("hybrid (RRF)", pb::RecallMode::Hybrid),
        ] {
            let started = Instant::now();
            let scores = evaluate(&mut c, queries, "quality", &ids, mode).await?;
            let per_query = started.elapsed().as_secs_f64() * 1000.0 / queries.len() as f64;
            eprintln!("      {title}, {name}: {scores:?}, {per_query:.1} ms per query");
            rows.push((name, scores, per_query));
        }
        let bm25 = rows[0].1.recall_at_5;
        body += &format!("{title} ({} queries):\n\n", queries.len());
        body += "| retrieval | recall@5 | recall@10 | MRR@10 | recall@5 minus BM25's | ms per Recall |\n|---|---:|---:|---:|---:|---:|\n";
        for (name, s, per_query) in &rows {
            body += &format!(
                "| {name} | {:.2} | {:.2} | {:.3} | {:+.2} | {per_query:.1} |\n",
                s.recall_at_5,
                s.recall_at_10,
                s.mrr,
                s.recall_at_5 - bm25
            );
        }
        body += "\n";
    }
    body += &format!(
        "Remember took {remember_ms:.1} ms per memory, one at a time (embedding included).\n\n"
    );
    update_section(&a.report, "bench:recall", &body)?;
    eprintln!("wrote {}", a.report.display());
    print!("{body}");
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}
