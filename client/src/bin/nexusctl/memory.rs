//! `nexusctl memory`: key-value memories, and semantic memories (remember, recall, forget).

use std::time::Duration;

use clap::Subcommand;
use nexus_client::{pb, Client, ClientError};
use serde_json::{json, Value};

use super::conv::message_json;
use super::{consistency, parse_time, print_json, table, time, truncate, Output};

#[derive(Subcommand, Clone)]
pub enum MemoryCommand {
    /// Create or replace a memory: VALUE is JSON text (quote strings: '"text"').
    Put {
        namespace: String,
        key: String,
        value: String,
        /// Time to live, e.g. 30s, 10m, 7d.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Write only if the current version is this (0 = only if the key does not exist).
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Read a memory.
    Get {
        namespace: String,
        key: String,
        /// Read this node's state without confirming with the leader.
        #[arg(long)]
        stale: bool,
    },
    /// List a namespace in key order.
    List {
        namespace: String,
        #[arg(long, default_value = "")]
        prefix: String,
        /// Most items to print (fetched page by page).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        stale: bool,
    },
    /// Delete a memory.
    Delete {
        namespace: String,
        key: String,
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Remember a text as a semantic memory (embedded by the server).
    Remember {
        text: String,
        /// Default: "default".
        #[arg(long, default_value = "")]
        namespace: String,
        /// Metadata pair, repeatable: --meta project=apollo --meta kind=decision.
        #[arg(long = "meta", value_parser = parse_pair)]
        meta: Vec<(String, String)>,
        /// 0..1 (default 0.5).
        #[arg(long)]
        importance: Option<f32>,
    },
    /// Recall the semantic memories and conversation messages most related to QUERY (vector
    /// and BM25, fused).
    Recall {
        query: String,
        /// Only memories of this namespace.
        #[arg(long, default_value = "")]
        namespace: String,
        /// Only messages of this conversation.
        #[arg(long, default_value = "")]
        conversation: String,
        /// What to recall, repeatable (default: both).
        #[arg(long = "source", value_enum)]
        sources: Vec<RecallSourceArg>,
        /// Hits wanted.
        #[arg(long, default_value_t = 10)]
        k: u32,
        /// Only memories with this metadata pair, repeatable.
        #[arg(long = "meta", value_parser = parse_pair)]
        meta: Vec<(String, String)>,
        /// Created since: 7d, 2h, an RFC 3339 time or Unix milliseconds.
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        /// Only hits with at least this cosine similarity to the query.
        #[arg(long, default_value_t = 0.0)]
        min_score: f32,
        /// Retrievers: hybrid (both, fused), vector or bm25.
        #[arg(long, value_enum, default_value = "hybrid")]
        mode: RecallModeArg,
        /// How hybrid fuses the lists (default: the node's search.hybrid_fusion).
        #[arg(long, value_enum)]
        fusion: Option<FusionArg>,
        /// The vector list's weight in the fusion, 0 to 1; BM25 gets 1 minus it (default:
        /// the node's).
        #[arg(long)]
        vector_weight: Option<f32>,
        /// Rank important memories higher: adds this (0 to 1) times a memory's importance.
        #[arg(long, default_value_t = 0.0)]
        importance_weight: f32,
        /// Rank recent items higher: adds this (0 to 1) times 0.5^(age / half-life).
        #[arg(long, default_value_t = 0.0)]
        recency_weight: f32,
        /// The recency half-life: 7d, 12h, ... (default 7 days).
        #[arg(long, value_parser = parse_duration_ms)]
        half_life: Option<i64>,
        #[arg(long)]
        stale: bool,
    },
    /// Forget a semantic memory by id.
    Forget { id: String },
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum RecallModeArg {
    Hybrid,
    Vector,
    Bm25,
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum FusionArg {
    Convex,
    Rrf,
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum RecallSourceArg {
    Memories,
    Messages,
}

/// A duration (`7d`, `12h`) in milliseconds.
fn parse_duration_ms(s: &str) -> Result<i64, String> {
    humantime::parse_duration(s)
        .map(|d| d.as_millis() as i64)
        .map_err(|e| format!("{s:?} is not a duration (7d, 12h): {e}"))
}

/// `key=value`.
fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

pub fn memory_json(i: &pb::MemoryItem) -> Value {
    json!({
        "namespace": i.namespace,
        "key": i.key,
        "value": serde_json::from_str::<Value>(&i.value).unwrap_or(Value::String(i.value.clone())),
        "version": i.version,
        "created_at_ms": i.created_at_ms,
        "updated_at_ms": i.updated_at_ms,
        "expires_at_ms": i.expires_at_ms,
    })
}

pub fn semantic_json(m: &pb::SemanticMemory) -> Value {
    let metadata: std::collections::BTreeMap<&String, &String> = m.metadata.iter().collect();
    json!({
        "id": m.id, "namespace": m.namespace, "text": m.text, "metadata": metadata,
        "importance": m.importance, "created_at_ms": m.created_at_ms, "model": m.model,
    })
}

fn print_memories(items: &[pb::MemoryItem], out: Output) {
    if out == Output::Json {
        return print_json(&Value::Array(items.iter().map(memory_json).collect()));
    }
    let mut t = table(&["NAMESPACE", "KEY", "VERSION", "UPDATED", "EXPIRES", "VALUE"]);
    for i in items {
        t.add_row(vec![
            i.namespace.clone(),
            i.key.clone(),
            i.version.to_string(),
            time(i.updated_at_ms),
            time(i.expires_at_ms),
            truncate(&i.value, 60),
        ]);
    }
    println!("{t}");
}

pub async fn run(c: &mut Client, out: Output, command: MemoryCommand) -> Result<(), ClientError> {
    match command {
        MemoryCommand::Put {
            namespace,
            key,
            value,
            ttl,
            expected_version,
        } => {
            let r = c
                .memory
                .put(pb::PutRequest {
                    namespace,
                    key,
                    value,
                    ttl_ms: ttl.map_or(0, |d| d.as_millis() as u64),
                    expected_version,
                })
                .await?
                .into_inner();
            print_memories(&r.item.into_iter().collect::<Vec<_>>(), out);
        }
        MemoryCommand::Get {
            namespace,
            key,
            stale,
        } => {
            let r = c
                .memory
                .get(pb::GetRequest {
                    namespace,
                    key,
                    consistency: consistency(stale),
                })
                .await?
                .into_inner();
            match (out, r.item) {
                (Output::Json, Some(i)) => print_json(&memory_json(&i)),
                (_, Some(i)) => print_memories(&[i], out),
                (_, None) => {}
            }
        }
        MemoryCommand::List {
            namespace,
            prefix,
            limit,
            stale,
        } => {
            let mut items = Vec::new();
            let mut token = String::new();
            while items.len() < limit {
                let page = c
                    .memory
                    .list(pb::ListRequest {
                        namespace: namespace.clone(),
                        prefix: prefix.clone(),
                        page_size: (limit - items.len()).min(1000) as u32,
                        page_token: token,
                        consistency: consistency(stale),
                    })
                    .await?
                    .into_inner();
                items.extend(page.items);
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            print_memories(&items, out);
        }
        MemoryCommand::Remember {
            text,
            namespace,
            meta,
            importance,
        } => {
            let r = c
                .memory
                .remember(pb::RememberRequest {
                    namespace,
                    text,
                    metadata: meta.into_iter().collect(),
                    importance,
                })
                .await?
                .into_inner();
            let m = r.memory.unwrap_or_default();
            if !r.notice.is_empty() {
                eprintln!("note: {}", r.notice);
            }
            if out == Output::Json {
                print_json(&semantic_json(&m));
            } else {
                println!("remembered {} in {}", m.id, m.namespace);
            }
        }
        MemoryCommand::Recall {
            query,
            namespace,
            conversation,
            sources,
            k,
            meta,
            since,
            until,
            min_score,
            mode,
            fusion,
            vector_weight,
            importance_weight,
            recency_weight,
            half_life,
            stale,
        } => {
            let r = c
                .memory
                .recall(pb::RecallRequest {
                    query,
                    k,
                    namespace,
                    metadata: meta.into_iter().collect(),
                    since_ms: since.unwrap_or(0),
                    until_ms: until.unwrap_or(0),
                    min_score,
                    consistency: consistency(stale),
                    mode: match mode {
                        RecallModeArg::Hybrid => pb::RecallMode::Hybrid,
                        RecallModeArg::Vector => pb::RecallMode::Vector,
                        RecallModeArg::Bm25 => pb::RecallMode::Bm25,
                    } as i32,
                    fusion: match fusion {
                        None => pb::Fusion::Unspecified,
                        Some(FusionArg::Convex) => pb::Fusion::Convex,
                        Some(FusionArg::Rrf) => pb::Fusion::Rrf,
                    } as i32,
                    vector_weight,
                    importance_weight,
                    recency_weight,
                    recency_half_life_ms: half_life.unwrap_or(0),
                    sources: sources
                        .iter()
                        .map(|s| match s {
                            RecallSourceArg::Memories => pb::RecallSource::Memories as i32,
                            RecallSourceArg::Messages => pb::RecallSource::Messages as i32,
                        })
                        .collect(),
                    conversation_id: conversation,
                })
                .await?
                .into_inner();
            if !r.notice.is_empty() {
                eprintln!("note: {}", r.notice);
            }
            // (kind, id, text, the item as JSON) of each hit.
            let items: Vec<(&str, String, String, Value)> = r
                .hits
                .iter()
                .map(|h| match &h.item {
                    Some(pb::recall_hit::Item::Memory(m)) => {
                        ("memory", m.id.clone(), m.text.clone(), semantic_json(m))
                    }
                    Some(pb::recall_hit::Item::Message(m)) => {
                        ("message", m.id.clone(), m.content.clone(), message_json(m))
                    }
                    None => ("", String::new(), String::new(), Value::Null),
                })
                .collect();
            if out == Output::Json {
                let hits: Vec<Value> = r
                    .hits
                    .iter()
                    .zip(&items)
                    .map(|(h, (kind, id, text, item))| {
                        json!({"kind": kind, "id": id, "text": text, "score": h.score,
                               "similarity": h.similarity, "bm25": h.bm25,
                               "retrievers": h.retrievers,
                               *kind: item})
                    })
                    .collect();
                print_json(&Value::Array(hits));
            } else {
                let mut t = table(&[
                    "SCORE",
                    "SIMILARITY",
                    "BM25",
                    "FOUND BY",
                    "KIND",
                    "ID",
                    "TEXT",
                ]);
                for (h, (kind, id, text, _)) in r.hits.iter().zip(&items) {
                    t.add_row(vec![
                        format!("{:.4}", h.score),
                        h.similarity.map_or("-".into(), |s| format!("{s:.3}")),
                        h.bm25.map_or("-".into(), |s| format!("{s:.2}")),
                        h.retrievers.join("+"),
                        kind.to_string(),
                        id.clone(),
                        truncate(text, 70),
                    ]);
                }
                println!("{t}");
            }
        }
        MemoryCommand::Forget { id } => {
            c.memory
                .forget(pb::ForgetRequest { id: id.clone() })
                .await?;
            if out == Output::Json {
                print_json(&json!({"forgotten": id}));
            } else {
                println!("forgot {id}");
            }
        }
        MemoryCommand::Delete {
            namespace,
            key,
            expected_version,
        } => {
            let r = c
                .memory
                .delete(pb::DeleteRequest {
                    namespace: namespace.clone(),
                    key: key.clone(),
                    expected_version,
                })
                .await?
                .into_inner();
            if out == Output::Json {
                print_json(
                    &json!({"namespace": namespace, "key": key, "deleted_version": r.deleted_version}),
                );
            } else {
                println!("deleted {namespace}/{key} (version {})", r.deleted_version);
            }
        }
    }
    Ok(())
}
