//! `nexus-bench recall`: retrieval quality of BM25, vectors and the hybrid fusions (RRF, and
//! convex combinations at several weights) on three query sets: paraphrases and exact-term
//! lookups over memories, and questions over long multi-session conversations.

use super::*;
use nexus_client::recall_eval::{
    evaluate, hit_id, load_conversations, load_set, request, ConversationSet, LabelledSet, Query,
    Retrieval, Scores,
};

pub(crate) async fn recall_bench(a: RecallArgs) -> anyhow::Result<()> {
    let set = LabelledSet::load(&a.set).with_context(|| format!("reading {}", a.set.display()))?;
    let shared = set.shared_words();
    if !shared.is_empty() {
        bail!("the labelled set has queries sharing words with their answers: {shared:?}");
    }
    let conv = ConversationSet::load(&a.conversations)
        .with_context(|| format!("reading {}", a.conversations.display()))?;
    let bin = nexus_binary(a.nexus.clone())?;
    std::fs::create_dir_all(&a.work_dir)?;
    let data = a.work_dir.join(format!("recall-{}", std::process::id()));
    eprintln!("[1/4] starting {} on {}", bin.display(), data.display());
    let node = start_node(&bin, &data).await?;
    let mut c = Client::connect(&node.endpoint).await?;
    eprintln!("[2/4] remembering {} memories", set.memories.len());
    let started = Instant::now();
    let mut ids = load_set(&mut c, &set, "quality").await?;
    let remember_ms = started.elapsed().as_secs_f64() * 1000.0 / set.memories.len() as f64;
    eprintln!(
        "[3/4] appending {} turns of {} conversations",
        conv.turns(),
        conv.conversations.len()
    );
    let started = Instant::now();
    let total = conv.turns();
    ids.extend(
        load_conversations(&mut c, &conv, |n| {
            if n % 256 < 32 {
                eprintln!("      {n}/{total} turns");
            }
        })
        .await?,
    );
    let append_s = started.elapsed().as_secs_f64();

    let mut retrievals = vec![
        (
            "BM25 alone".to_string(),
            Retrieval::mode(pb::RecallMode::Bm25),
        ),
        (
            "vectors alone".to_string(),
            Retrieval::mode(pb::RecallMode::Vector),
        ),
        (
            "hybrid, RRF (k = 60, 1:1)".to_string(),
            Retrieval::hybrid(pb::Fusion::Rrf, Some(0.5)),
        ),
    ];
    for w in &a.weights {
        retrievals.push((
            format!("hybrid, convex, w = {w}"),
            Retrieval::hybrid(pb::Fusion::Convex, Some(*w)),
        ));
    }
    retrievals.push((
        "**hybrid, the node's default** (convex, w = 0.75)".to_string(),
        Retrieval::mode(pb::RecallMode::Hybrid),
    ));
    let sets: Vec<(&str, Vec<Query>)> = vec![
        (
            "Paraphrases over memories",
            LabelledSet::as_queries(&set.queries, "quality"),
        ),
        (
            "Exact-term lookups over memories",
            LabelledSet::as_queries(&set.keyword_queries, "quality"),
        ),
        ("Questions over conversations", conv.queries(None)),
    ];
    eprintln!(
        "[4/4] {} retrievals over {} query sets",
        retrievals.len(),
        sets.len()
    );

    let mut body = String::from("## Recall quality (issue: retrieval)\n\n");
    body += "Command: `scripts/bench-recall` (= `nexus-bench recall` against a fresh node with the local model)\n\n";
    body += &format!(
        "Machine: {}. Node: `{}`. Embedding model all-MiniLM-L6-v2; k = 10. Three query sets:\n\n\
         - {} paraphrases over the {} memories of `{}`, each sharing no content word (nor 5-letter stem) with its one relevant memory (checked by the benchmark and by tests/recall_quality.rs); the other memories are distractors, many sharing words with the queries;\n\
         - {} exact-term lookups over the same memories (names, codes, numbers such as `BlueHeron42`, `extension 4455`), which share words with their answers;\n\
         - {} questions over `{}`: {} conversations of 6 sessions, {} turns in all, between a user and an assistant; each question is scoped to its conversation and names the turns that answer it ({}).\n\n\
         hit@k: share of questions with an answering item in the first k hits; recall@k: mean share of a question's answering items in the first k; MRR@10: mean reciprocal rank of the first answering hit. Convex: score = w·cosine + (1 − w)·share³, the share being the hit's BM25 score over what an item holding every query word once would score (at most 1); RRF: sum of 1/(60 + rank) over each list's first 10. ms per Recall: wall time per query through gRPC; the node keeps recent query embeddings (`embedding.cache_entries`), so the vectors-alone row pays the model pass for each query and the rows after it find the query's vector in the cache.\n\n",
        machine(),
        bin.display(),
        set.queries.len(),
        set.memories.len(),
        a.set.display(),
        set.keyword_queries.len(),
        conv.questions.len(),
        a.conversations.display(),
        conv.conversations.len(),
        conv.turns(),
        styles(&conv),
    );
    if let Some(path) = &a.dump {
        let mut out = String::new();
        for (title, queries) in &sets {
            for q in queries {
                let candidates = candidates(&mut c, q, &ids).await?;
                out +=
                    &serde_json::json!({"set": title, "query": q.text, "candidates": candidates})
                        .to_string();
                out.push('\n');
            }
        }
        std::fs::write(path, out)?;
        eprintln!("      wrote the candidates to {}", path.display());
    }
    let mut best: Vec<(String, f64)> = vec![(String::new(), 0.0); retrievals.len()];
    for (title, queries) in &sets {
        let mut rows: Vec<(&str, Scores)> = Vec::new();
        for (name, how) in &retrievals {
            let s = evaluate(&mut c, queries, &ids, *how).await?;
            eprintln!("      {title}, {name}: {s:?}");
            rows.push((name, s));
        }
        body += &format!("{title} ({} queries):\n\n", queries.len());
        body += "| retrieval | hit@5 | hit@10 | recall@10 | MRR@10 | ms per Recall |\n|---|---:|---:|---:|---:|---:|\n";
        let best_single = rows[0].1.mrr.max(rows[1].1.mrr);
        for (i, (name, s)) in rows.iter().enumerate() {
            body += &format!(
                "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} |\n",
                s.hit_at_5, s.hit_at_10, s.recall_at_10, s.mrr, s.ms_per_query
            );
            best[i].0 = name.to_string();
            best[i].1 += s.mrr - best_single;
        }
        body += "\n";
    }
    body += "Conversation questions by style, hit@10 / MRR@10:\n\n| retrieval | lexical | paraphrase | update |\n|---|---:|---:|---:|\n";
    for (name, how) in [
        &retrievals[0],
        &retrievals[1],
        &retrievals[2],
        retrievals.last().unwrap(),
    ] {
        let mut cells = Vec::new();
        for style in ["lexical", "paraphrase", "update"] {
            let s = evaluate(&mut c, &conv.queries(Some(style)), &ids, *how).await?;
            cells.push(format!("{:.3} / {:.3}", s.hit_at_10, s.mrr));
        }
        body += &format!("| {name} | {} |\n", cells.join(" | "));
    }
    body += "\nMRR@10 minus the better single retriever's, summed over the three sets (positive: the fusion beats the better of BM25 and vectors on balance):\n\n| retrieval | sum |\n|---|---:|\n";
    for (name, sum) in best.iter().skip(2) {
        body += &format!("| {name} | {sum:+.3} |\n");
    }
    body += &format!(
        "\nRemember took {remember_ms:.1} ms per memory, one at a time (embedding included); appending the {} turns in batches of up to 32 took {append_s:.1} s ({:.0} turns/s).\n\n",
        conv.turns(),
        conv.turns() as f64 / append_s
    );
    update_section(&a.report, "bench:recall", &body)?;
    eprintln!("wrote {}", a.report.display());
    print!("{body}");
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// A query's first 100 hybrid candidates: [answers, cosine, BM25 match share].
async fn candidates(
    c: &mut Client,
    q: &Query,
    ids: &std::collections::HashMap<String, String>,
) -> anyhow::Result<Vec<(bool, f32, f32)>> {
    let relevant: Vec<&str> = q
        .relevant
        .iter()
        .filter_map(|r| ids.get(r).map(String::as_str))
        .collect();
    let how = Retrieval::hybrid(pb::Fusion::Convex, Some(0.5));
    let hits = c
        .memory
        .recall(request(q, how, 100))
        .await?
        .into_inner()
        .hits;
    Ok(hits
        .iter()
        .map(|h| {
            (
                relevant.contains(&hit_id(h)),
                h.similarity.unwrap_or(0.0),
                h.bm25.unwrap_or(0.0),
            )
        })
        .collect())
}

fn styles(set: &ConversationSet) -> String {
    let mut by: std::collections::BTreeMap<&str, usize> = Default::default();
    for q in &set.questions {
        *by.entry(q.style.as_str()).or_default() += 1;
    }
    by.iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}
