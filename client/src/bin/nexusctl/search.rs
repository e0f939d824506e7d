//! `nexusctl search`: full-text, vector or hybrid search over memories and messages.

use clap::ValueEnum;
use nexus_client::{pb, Client, ClientError};
use serde_json::{json, Value};

use super::conv::message_json;
use super::memory::{memory_json, semantic_json};
use super::{consistency, parse_time, print_json, table, Output};

#[derive(clap::Args, Clone)]
pub struct SearchArgs {
    query: String,
    /// memory, message or semantic (repeatable; default all).
    #[arg(long, value_enum)]
    kind: Vec<Kind>,
    #[arg(long, default_value = "")]
    namespace: String,
    #[arg(long, default_value = "")]
    conversation: String,
    #[arg(long, default_value = "")]
    role: String,
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    #[arg(long, default_value_t = 10)]
    limit: u32,
    #[arg(long)]
    stale: bool,
    /// Retrievers: hybrid (words and meaning, fused), bm25 (exact words) or vector.
    #[arg(long, value_enum, default_value_t = Mode::Hybrid)]
    mode: Mode,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Hybrid,
    Bm25,
    Vector,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Memory,
    Message,
    Semantic,
}

/// Marks the highlighted byte ranges of a snippet with `**`.
fn highlight(snippet: &str, ranges: &[pb::Highlight]) -> String {
    let mut out = String::new();
    let mut at = 0usize;
    for r in ranges {
        let (s, e) = (r.start as usize, r.end as usize);
        if s < at
            || e > snippet.len()
            || !snippet.is_char_boundary(s)
            || !snippet.is_char_boundary(e)
        {
            continue;
        }
        out.push_str(&snippet[at..s]);
        out.push_str("**");
        out.push_str(&snippet[s..e]);
        out.push_str("**");
        at = e;
    }
    out.push_str(&snippet[at..]);
    out
}

pub async fn run(c: &mut Client, out: Output, a: SearchArgs) -> Result<(), ClientError> {
    let kinds = a
        .kind
        .iter()
        .map(|k| match k {
            Kind::Memory => pb::HitKind::Memory as i32,
            Kind::Message => pb::HitKind::Message as i32,
            Kind::Semantic => pb::HitKind::Semantic as i32,
        })
        .collect();
    let r = c
        .search
        .search(pb::SearchRequest {
            query: a.query,
            kinds,
            namespace: a.namespace,
            conversation_id: a.conversation,
            role: a.role,
            since_ms: a.since.unwrap_or(0),
            until_ms: a.until.unwrap_or(0),
            limit: a.limit,
            consistency: consistency(a.stale),
            mode: match a.mode {
                Mode::Hybrid => pb::RecallMode::Hybrid,
                Mode::Bm25 => pb::RecallMode::Bm25,
                Mode::Vector => pb::RecallMode::Vector,
            } as i32,
        })
        .await?
        .into_inner();
    if out == Output::Json {
        let hits: Vec<Value> = r
                .hits
                .iter()
                .map(|h| {
                    let (kind, item) = match &h.item {
                        Some(pb::search_hit::Item::Memory(m)) => ("memory", memory_json(m)),
                        Some(pb::search_hit::Item::Message(m)) => ("message", message_json(m)),
                        Some(pb::search_hit::Item::Semantic(m)) => ("semantic", semantic_json(m)),
                        None => ("unknown", Value::Null),
                    };
                    json!({"kind": kind, "score": h.score, "snippet": h.snippet,
                           "highlights": h.highlights.iter().map(|x| [x.start, x.end]).collect::<Vec<_>>(),
                           "retrievers": h.retrievers, "item": item})
                })
                .collect();
        print_json(&Value::Array(hits));
    } else {
        let mut t = table(&["SCORE", "KIND", "WHERE", "FOUND BY", "SNIPPET"]);
        for h in &r.hits {
            let (kind, place) = match &h.item {
                Some(pb::search_hit::Item::Memory(m)) => {
                    ("memory", format!("{}/{}", m.namespace, m.key))
                }
                Some(pb::search_hit::Item::Message(m)) => (
                    "message",
                    format!("{}#{} {}", m.conversation_id, m.seq, m.role),
                ),
                Some(pb::search_hit::Item::Semantic(m)) => {
                    ("semantic", format!("{}/{}", m.namespace, m.id))
                }
                None => ("?", String::new()),
            };
            t.add_row(vec![
                format!("{:.3}", h.score),
                kind.to_string(),
                place,
                h.retrievers.join("+"),
                highlight(&h.snippet, &h.highlights),
            ]);
        }
        println!("{t}");
    }
    Ok(())
}
