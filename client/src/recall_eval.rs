//! Retrieval quality of `Recall` on a labelled set: recall@k and mean reciprocal rank, per
//! retrieval mode, measured through the public API of a running node. Used by the recall
//! quality test (tests/recall_quality.rs) and by `nexus-bench recall`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::Deserialize;

use crate::{pb, Client, ClientError};

/// The labelled set (tests/fixtures/recall_quality.json).
#[derive(Debug, Deserialize)]
pub struct LabelledSet {
    pub description: String,
    pub stopwords: Vec<String>,
    pub memories: Vec<LabelledMemory>,
    /// Paraphrases that share no content word with their answers.
    pub queries: Vec<LabelledQuery>,
    /// Terse lookups of rare exact terms (names, codes), which do share words with their
    /// answers: where BM25 helps the vectors.
    #[serde(default)]
    pub keyword_queries: Vec<LabelledQuery>,
}

#[derive(Debug, Deserialize)]
pub struct LabelledMemory {
    pub id: String,
    pub text: String,
}

#[derive(Debug, Deserialize)]
pub struct LabelledQuery {
    pub query: String,
    /// Ids (of `memories`) that answer the query.
    pub relevant: Vec<String>,
}

impl LabelledSet {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    }

    fn words(&self, text: &str) -> BTreeSet<String> {
        text.to_lowercase()
            .replace("'s", "")
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty() && !self.stopwords.iter().any(|s| s == w))
            .map(str::to_string)
            .collect()
    }

    /// Content words (or 5-letter stems) a query shares with one of its relevant memories:
    /// the set is meant to have none, so that words alone cannot find the answers.
    pub fn shared_words(&self) -> Vec<(String, String, BTreeSet<String>)> {
        let text: HashMap<&str, &str> = self
            .memories
            .iter()
            .map(|m| (m.id.as_str(), m.text.as_str()))
            .collect();
        let stems = |w: &BTreeSet<String>| -> BTreeSet<String> {
            w.iter()
                .filter(|t| t.len() >= 4)
                .map(|t| t.chars().take(5).collect())
                .collect()
        };
        let mut out = Vec::new();
        for q in &self.queries {
            let qw = self.words(&q.query);
            for id in &q.relevant {
                let mw = self.words(text.get(id.as_str()).copied().unwrap_or_default());
                let mut shared: BTreeSet<String> = qw.intersection(&mw).cloned().collect();
                shared.extend(stems(&qw).intersection(&stems(&mw)).cloned());
                if !shared.is_empty() {
                    out.push((q.query.clone(), id.clone(), shared));
                }
            }
        }
        out
    }
}

/// The conversation set (tests/fixtures/recall_conversations.json): multi-session
/// conversations, and questions about them with the turns that answer each.
#[derive(Debug, Deserialize)]
pub struct ConversationSet {
    pub description: String,
    pub conversations: Vec<SetConversation>,
    pub questions: Vec<SetQuestion>,
}

#[derive(Debug, Deserialize)]
pub struct SetConversation {
    pub id: String,
    pub user: String,
    pub sessions: Vec<SetSession>,
}

#[derive(Debug, Deserialize)]
pub struct SetSession {
    pub session: u32,
    pub turns: Vec<SetTurn>,
}

#[derive(Debug, Deserialize)]
pub struct SetTurn {
    pub id: String,
    pub role: String,
    pub content: String,
}

#[derive(Debug, Deserialize)]
pub struct SetQuestion {
    /// The conversation it is asked in (recall is scoped to it).
    pub conversation: String,
    /// lexical (reuses a word of the fact), paraphrase, or update (a fact that changed).
    pub style: String,
    pub kind: String,
    pub question: String,
    /// The turns that hold the answer.
    pub evidence: Vec<String>,
}

impl ConversationSet {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    }

    pub fn turns(&self) -> usize {
        self.conversations
            .iter()
            .flat_map(|c| &c.sessions)
            .map(|s| s.turns.len())
            .sum()
    }

    /// The questions as recall queries, scoped to their conversations.
    pub fn queries(&self, style: Option<&str>) -> Vec<Query> {
        self.questions
            .iter()
            .filter(|q| style.is_none_or(|s| q.style == s))
            .map(|q| Query {
                text: q.question.clone(),
                scope: Scope::Conversation(q.conversation.clone()),
                relevant: q.evidence.clone(),
            })
            .collect()
    }
}

/// Appends every conversation of the set (one append per session, in batches of 32 turns);
/// returns turn id -> message id. `progress` is told how many turns are in.
pub async fn load_conversations(
    client: &mut Client,
    set: &ConversationSet,
    mut progress: impl FnMut(usize),
) -> Result<HashMap<String, String>, ClientError> {
    let mut ids = HashMap::new();
    for c in &set.conversations {
        client
            .conversations
            .create_conversation(pb::CreateConversationRequest {
                id: c.id.clone(),
                title: format!("{} and the assistant", c.user),
                ..Default::default()
            })
            .await?;
        for s in &c.sessions {
            for batch in s.turns.chunks(32) {
                let appended = client
                    .conversations
                    .append_messages(pb::AppendMessagesRequest {
                        conversation_id: c.id.clone(),
                        messages: batch
                            .iter()
                            .map(|t| pb::NewMessage {
                                role: t.role.clone(),
                                content: t.content.clone(),
                                metadata: format!("{{\"session\":\"{}\"}}", s.session),
                                ..Default::default()
                            })
                            .collect(),
                    })
                    .await?
                    .into_inner()
                    .messages;
                for (t, m) in batch.iter().zip(appended) {
                    ids.insert(t.id.clone(), m.id);
                }
                progress(ids.len());
            }
        }
    }
    Ok(ids)
}

/// One labelled recall query.
#[derive(Debug, Clone)]
pub struct Query {
    pub text: String,
    pub scope: Scope,
    /// Set ids of what answers it.
    pub relevant: Vec<String>,
}

/// Where a query recalls from.
#[derive(Debug, Clone)]
pub enum Scope {
    Namespace(String),
    Conversation(String),
}

impl LabelledSet {
    /// Labelled queries over the memories of `namespace`.
    pub fn as_queries(queries: &[LabelledQuery], namespace: &str) -> Vec<Query> {
        queries
            .iter()
            .map(|q| Query {
                text: q.query.clone(),
                scope: Scope::Namespace(namespace.to_string()),
                relevant: q.relevant.clone(),
            })
            .collect()
    }
}

/// How recall is asked to retrieve: a mode, and for hybrid a fusion and weight (None = the
/// node's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retrieval {
    pub mode: pb::RecallMode,
    pub fusion: pb::Fusion,
    pub vector_weight: Option<f32>,
}

impl Retrieval {
    pub fn mode(mode: pb::RecallMode) -> Self {
        Self {
            mode,
            fusion: pb::Fusion::Unspecified,
            vector_weight: None,
        }
    }

    pub fn hybrid(fusion: pb::Fusion, vector_weight: Option<f32>) -> Self {
        Self {
            mode: pb::RecallMode::Hybrid,
            fusion,
            vector_weight,
        }
    }
}

/// Quality of one retrieval over a query set (k = 10).
#[derive(Debug, Clone, Copy, Default)]
pub struct Scores {
    /// Share of queries with something relevant in the first 5 (10) hits.
    pub hit_at_5: f64,
    pub hit_at_10: f64,
    /// Mean share of a query's relevant items in the first 5 (10) hits.
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    /// Mean reciprocal rank of the first relevant hit (within the first 10).
    pub mrr: f64,
    /// Wall time per recall, in milliseconds.
    pub ms_per_query: f64,
}

/// Remembers every memory of the set in `namespace`; returns set id -> memory id.
pub async fn load_set(
    client: &mut Client,
    set: &LabelledSet,
    namespace: &str,
) -> Result<HashMap<String, String>, ClientError> {
    let mut ids = HashMap::new();
    for m in &set.memories {
        let r = client
            .memory
            .remember(pb::RememberRequest {
                namespace: namespace.to_string(),
                text: m.text.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        ids.insert(m.id.clone(), r.memory.unwrap_or_default().id);
    }
    Ok(ids)
}

/// The recall request for one query: its first `k` hits, retrieved `how`.
pub fn request(q: &Query, how: Retrieval, k: u32) -> pb::RecallRequest {
    let (namespace, conversation_id, source) = match &q.scope {
        Scope::Namespace(n) => (n.clone(), String::new(), pb::RecallSource::Memories),
        Scope::Conversation(c) => (String::new(), c.clone(), pb::RecallSource::Messages),
    };
    pb::RecallRequest {
        query: q.text.clone(),
        k,
        namespace,
        conversation_id,
        sources: vec![source as i32],
        mode: how.mode as i32,
        fusion: how.fusion as i32,
        vector_weight: how.vector_weight,
        ..Default::default()
    }
}

/// The id of a hit's memory or message.
pub fn hit_id(h: &pb::RecallHit) -> &str {
    match &h.item {
        Some(pb::recall_hit::Item::Memory(m)) => &m.id,
        Some(pb::recall_hit::Item::Message(m)) => &m.id,
        None => "",
    }
}

/// The ids of one query's first 10 hits, best first.
pub async fn recall_ids(
    client: &mut Client,
    q: &Query,
    how: Retrieval,
) -> Result<Vec<String>, ClientError> {
    let hits = client
        .memory
        .recall(request(q, how, 10))
        .await?
        .into_inner()
        .hits;
    Ok(hits.iter().map(|h| hit_id(h).to_string()).collect())
}

/// Runs `queries` retrieving `how` and scores the hits; `ids` maps set ids to stored ids.
pub async fn evaluate(
    client: &mut Client,
    queries: &[Query],
    ids: &HashMap<String, String>,
    how: Retrieval,
) -> Result<Scores, ClientError> {
    let mut s = Scores::default();
    let started = std::time::Instant::now();
    for q in queries {
        let hits = recall_ids(client, q, how).await?;
        let relevant: BTreeSet<&str> = q
            .relevant
            .iter()
            .filter_map(|r| ids.get(r).map(String::as_str))
            .collect();
        let ranks: Vec<usize> = hits
            .iter()
            .enumerate()
            .filter(|(_, id)| relevant.contains(id.as_str()))
            .map(|(i, _)| i + 1)
            .collect();
        let found = |k: usize| ranks.iter().filter(|&&r| r <= k).count() as f64;
        let n = relevant.len().max(1) as f64;
        s.hit_at_5 += f64::from(u8::from(found(5) > 0.0));
        s.hit_at_10 += f64::from(u8::from(found(10) > 0.0));
        s.recall_at_5 += found(5) / n;
        s.recall_at_10 += found(10) / n;
        s.mrr += ranks.first().map_or(0.0, |&r| 1.0 / r as f64);
    }
    let n = queries.len().max(1) as f64;
    s.hit_at_5 /= n;
    s.hit_at_10 /= n;
    s.recall_at_5 /= n;
    s.recall_at_10 /= n;
    s.mrr /= n;
    s.ms_per_query = started.elapsed().as_secs_f64() * 1000.0 / n;
    Ok(s)
}
