//! Hybrid retrieval: BM25 hits from the full-text index and nearest neighbours from the vector
//! index, fused into one list (`search::fusion`: convex by default, or RRF).
//!
//! `recall` serves semantic memories and conversation messages (MemoryService.Recall);
//! `search` serves every kind (SearchService.Search), adding the vector hits of semantic
//! memories and messages to the BM25 hits by RRF (key-value memories have no vectors, so
//! scores cannot be set against each other there). Without an embedding model both fall
//! back to BM25 alone.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::cluster::ReadConsistency;
use crate::command::Cluster;
use crate::config::{Fusion, Limits, SearchConfig};
use crate::embed::{cosine, embed_units, Embedder};
use crate::error::NexusError;
use crate::memory::conversations::{self, MessageRecord};
use crate::memory::semantic::{self, SemanticRecord};
use crate::memory::validate;
use crate::search::fulltext::{FullTextIndex, Hit, HitItem, HitKind, SearchRequest};
use crate::search::fusion::{convex, rrf_weighted, Adjust, MATCH_SHARE_EXPONENT};
use crate::search::vector::{PointKind, VectorFilter, VectorHit, VectorIndexer};

/// Candidates fetched from each retriever per wanted hit, and the most ever fetched.
const OVERFETCH: usize = 4;
const MIN_FETCH: usize = 40;
const MAX_FETCH: usize = 4_096;
/// Hits of a recall that does not say how many.
const DEFAULT_K: u32 = 10;

/// Words a natural-language question is made of but that say nothing about what it asks:
/// left out of the BM25 leg of a recall, where they would match nearly every memory.
const QUESTION_STOPWORDS: &[&str] = &[
    "a", "about", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as", "at",
    "be", "been", "before", "being", "but", "by", "can", "could", "did", "do", "does", "doing",
    "done", "down", "each", "for", "from", "get", "got", "had", "has", "have", "having", "he",
    "her", "here", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "just",
    "me", "more", "most", "much", "must", "my", "no", "not", "of", "off", "on", "or", "our",
    "ours", "out", "over", "please", "same", "shall", "she", "should", "so", "some", "such",
    "tell", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this",
    "those", "to", "too", "under", "up", "us", "very", "was", "we", "were", "what", "when",
    "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your",
];

/// The words of a natural-language query that can usefully match by BM25 (the query itself
/// when nothing is left).
pub fn keywords(query: &str) -> String {
    let words: Vec<&str> = query
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .filter(|w| !QUESTION_STOPWORDS.contains(&w.to_lowercase().as_str()))
        .collect();
    if words.is_empty() {
        query.to_string()
    } else {
        words.join(" ")
    }
}

/// Which retriever found a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retriever {
    Vector,
    Bm25,
}

impl Retriever {
    pub fn name(self) -> &'static str {
        match self {
            Retriever::Vector => "vector",
            Retriever::Bm25 => "bm25",
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct RecallRequest {
    pub query: String,
    /// Hits wanted (0 = 10).
    pub k: u32,
    /// Only this namespace (empty = all).
    pub namespace: String,
    /// Only memories whose metadata holds every one of these pairs.
    pub metadata: BTreeMap<String, String>,
    /// Created at or after (0 = unbounded).
    pub since_ms: i64,
    /// Created before (0 = unbounded).
    pub until_ms: i64,
    /// Only hits whose cosine similarity to the query is at least this (0 = no minimum).
    pub min_score: f32,
    pub consistency: ReadConsistency,
    pub mode: RecallMode,
    /// How a hybrid recall fuses its lists (None = the node's `search.hybrid_fusion`).
    pub fusion: Option<Fusion>,
    /// The vector list's weight in the fusion, 0 to 1; BM25's is 1 minus it (None = the
    /// node's `search.hybrid_*_weight`).
    pub vector_weight: Option<f32>,
    /// Ranking by more than the query (0 = off, the default; see `adjust`): adds this times
    /// the memory's importance (a message counts as `semantic::DEFAULT_IMPORTANCE`).
    pub importance_weight: f32,
    /// Adds this times 0.5^(age / half-life).
    pub recency_weight: f32,
    /// The recency half-life (0 = 7 days).
    pub recency_half_life_ms: i64,
    /// What to recall: memories, messages, or both (empty = both; a namespace means memories
    /// only, a conversation messages only).
    pub sources: Vec<PointKind>,
    /// Only messages of this conversation (empty = any).
    pub conversation_id: String,
}

/// Which retrievers a recall uses.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RecallMode {
    #[default]
    Hybrid,
    Vector,
    Bm25,
}

/// What a recall found.
#[derive(Debug, Clone)]
pub enum RecallItem {
    Memory(SemanticRecord),
    Message(MessageRecord),
}

impl RecallItem {
    /// The memory's or message's id.
    pub fn id(&self) -> &str {
        match self {
            RecallItem::Memory(r) => &r.id,
            RecallItem::Message(m) => &m.id,
        }
    }

    /// The memory's text or the message's content.
    pub fn text(&self) -> &str {
        match self {
            RecallItem::Memory(r) => &r.text,
            RecallItem::Message(m) => &m.content,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RecallHit {
    pub item: RecallItem,
    /// The fused score (see `Fusion`).
    pub score: f32,
    /// Cosine similarity of the item's vector to the query's, when both exist.
    pub similarity: Option<f32>,
    /// The item's BM25 match share (0 to 1) when BM25 found it.
    pub bm25: Option<f32>,
    pub retrievers: Vec<Retriever>,
}

/// A search hit with the retrievers that found it.
#[derive(Debug, Clone)]
pub struct FusedHit {
    pub hit: Hit,
    pub retrievers: Vec<Retriever>,
}

pub struct Recaller {
    fusion: Fusion,
    /// Weights of the vector and BM25 lists, summing to 1.
    weights: [f32; 2],
    node: Arc<Cluster>,
    fulltext: Arc<FullTextIndex>,
    vectors: Option<Arc<VectorIndexer>>,
    embedder: Option<Arc<dyn Embedder>>,
    limits: Limits,
}

impl Recaller {
    pub fn new(
        node: Arc<Cluster>,
        fulltext: Arc<FullTextIndex>,
        vectors: Option<Arc<VectorIndexer>>,
        embedder: Option<Arc<dyn Embedder>>,
        limits: Limits,
        search: &SearchConfig,
    ) -> Self {
        let sum = search.hybrid_vector_weight + search.hybrid_bm25_weight;
        Self {
            fusion: search.hybrid_fusion,
            weights: [
                search.hybrid_vector_weight / sum,
                search.hybrid_bm25_weight / sum,
            ],
            node,
            fulltext,
            // One without the other cannot serve vector search.
            vectors: vectors.filter(|_| embedder.is_some()),
            embedder,
            limits,
        }
    }

    /// Whether vector search is on.
    pub fn semantic(&self) -> bool {
        self.vectors.is_some()
    }

    /// What a reply says when it could not use meaning because this node has no embedding
    /// model (a recall in `mode`, or a remember: None for the mode): None when it could, or
    /// when the caller asked for words only.
    pub fn notice(&self, mode: Option<RecallMode>) -> Option<&'static str> {
        if self.semantic() || mode == Some(RecallMode::Bm25) {
            return None;
        }
        Some(if mode.is_some() {
            "semantic recall is off on this node (no embedding model): these hits match words only. Run `nexus model pull` on the node and restart it (or set [embedding] provider = \"openai\")"
        } else {
            "stored without a vector: semantic recall is off on this node (no embedding model), so it is found by its words only. Run `nexus model pull` on the node and restart it (or set [embedding] provider = \"openai\")"
        })
    }

    async fn embed_query(&self, query: &str) -> Result<Option<Vec<f32>>, NexusError> {
        let Some(e) = self.embedder.as_ref().filter(|_| self.vectors.is_some()) else {
            return Ok(None);
        };
        let mut v = embed_units(e.as_ref(), &[query.to_string()]).await?;
        Ok(v.pop())
    }

    async fn nearest(
        &self,
        tenant: &str,
        query: &[f32],
        fetch: usize,
        filter: &VectorFilter,
        wait_for: Option<u64>,
    ) -> Result<Vec<VectorHit>, NexusError> {
        let Some(vectors) = &self.vectors else {
            return Ok(Vec::new());
        };
        if let Some(index) = wait_for {
            vectors.wait_for(index).await?;
        }
        vectors
            .index()
            .search(tenant, query, fetch, filter)
            .await
            .map_err(NexusError::from)
    }

    /// Semantic memories and conversation messages related to the query, best first.
    pub async fn recall(
        &self,
        tenant: &str,
        req: &RecallRequest,
    ) -> Result<Vec<RecallHit>, NexusError> {
        let k = validate::count("k", req.k, DEFAULT_K, self.limits.max_page_size)?;
        let sources = recall_sources(req)?;
        let mut text = SearchRequest {
            query: keywords(&req.query),
            kinds: sources
                .iter()
                .map(|s| match s {
                    PointKind::Memory => HitKind::Semantic,
                    PointKind::Message => HitKind::Message,
                })
                .collect(),
            namespace: req.namespace.clone(),
            conversation_id: req.conversation_id.clone(),
            since_ms: req.since_ms,
            until_ms: req.until_ms,
            limit: 1,
            consistency: req.consistency,
            ..Default::default()
        };
        self.fulltext.validate(&text)?;
        semantic::validate_metadata("metadata", &req.metadata, &self.limits)?;
        if !req.min_score.is_finite() || !(-1.0..=1.0).contains(&req.min_score) {
            return Err(NexusError::invalid(
                "min_score",
                format!(
                    "{} is not a cosine similarity between -1 and 1",
                    req.min_score
                ),
            ));
        }
        for (needs, field) in [
            (req.min_score != 0.0, "min_score"),
            (req.mode == RecallMode::Vector, "mode"),
        ] {
            if needs && !self.semantic() {
                return Err(NexusError::precondition(
                    field,
                    "needs an embedding model, and this node has none (see `nexus model pull` and [embedding])",
                ));
            }
        }
        let fusion = req.fusion.unwrap_or(self.fusion);
        let weights = match req.vector_weight {
            None => self.weights,
            Some(w) if w.is_finite() && (0.0..=1.0).contains(&w) => [w, 1.0 - w],
            Some(w) => {
                return Err(NexusError::invalid(
                    "vector_weight",
                    format!("{w} is not a weight between 0 and 1 (BM25 gets 1 minus it)"),
                ))
            }
        };
        let adjust = Adjust::of(
            req.importance_weight,
            req.recency_weight,
            req.recency_half_life_ms,
        )?;
        // The query's model pass overlaps the read barrier (a heartbeat round on a leader of
        // several, a round trip to it on a follower): neither needs the other.
        let (read_index, query_vector) =
            tokio::try_join!(self.node.read_barrier(req.consistency), async {
                match req.mode {
                    RecallMode::Bm25 => Ok(None),
                    _ => self.embed_query(&req.query).await,
                }
            })?;
        let wait_for = (req.consistency == ReadConsistency::Linearizable).then_some(read_index);
        let use_words = req.mode != RecallMode::Vector;
        let filter = VectorFilter {
            kind: (sources.len() == 1).then(|| sources[0]),
            scope: [&req.namespace, &req.conversation_id]
                .into_iter()
                .find(|s| !s.is_empty())
                .cloned(),
            since_ms: req.since_ms,
            until_ms: req.until_ms,
        };
        let store = &self.node.store;
        let mut fetch = (k * OVERFETCH).max(MIN_FETCH);
        loop {
            text.limit = fetch as u32;
            // Both retrievers at once (a Qdrant index is a network round trip).
            let (near, words) = tokio::try_join!(
                async {
                    match &query_vector {
                        Some(q) => self.nearest(tenant, q, fetch, &filter, wait_for).await,
                        None => Ok(Vec::new()),
                    }
                },
                async {
                    if use_words {
                        self.fulltext
                            .search_at(tenant, &text, fetch, wait_for)
                            .await
                    } else {
                        Ok(Vec::new())
                    }
                }
            )?;
            let exhausted = near.len() < fetch && words.len() < fetch;

            // Each candidate with its vector (for the similarity), when it passes the
            // metadata filter.
            let mut found: HashMap<ItemKey, (RecallItem, Vec<f32>)> = HashMap::new();
            let mut vector_list = Vec::new();
            for h in &near {
                let candidate = match h.kind {
                    PointKind::Memory => semantic::read(store, tenant, h.seq)?.map(|r| {
                        let v = r.embedding.clone();
                        (RecallItem::Memory(r), v)
                    }),
                    PointKind::Message => match conversations::read_vector(store, tenant, h.seq)? {
                        Some(v) => conversations::read_message(store, tenant, &v.message_id)?
                            .map(|m| (RecallItem::Message(m), v.embedding)),
                        None => None,
                    },
                };
                if let Some((item, v)) = candidate.filter(|(item, _)| has_metadata(item, req)) {
                    let key = ItemKey::of(&item);
                    vector_list.push(key.clone());
                    found.insert(key, (item, v));
                }
            }
            let mut word_list = Vec::new();
            let mut shares = HashMap::new();
            for h in words {
                let item = match h.item {
                    HitItem::Semantic(r) => RecallItem::Memory(r),
                    HitItem::Message(m) => RecallItem::Message(m),
                    HitItem::Memory(_) => continue,
                };
                if !has_metadata(&item, req) {
                    continue;
                }
                let key = ItemKey::of(&item);
                word_list.push(key.clone());
                shares.insert(key.clone(), h.match_share);
                if let Entry::Vacant(slot) = found.entry(key) {
                    let v = match &item {
                        RecallItem::Memory(r) => r.embedding.clone(),
                        RecallItem::Message(m) => {
                            conversations::read_vector_of(store, tenant, &m.id)?
                                .map(|v| v.embedding)
                                .unwrap_or_default()
                        }
                    };
                    slot.insert((item, v));
                }
            }
            let similarity_of = |vector: &[f32]| {
                query_vector
                    .as_ref()
                    .filter(|q| q.len() == vector.len())
                    .map(|q| cosine(q, vector))
            };
            let fused = match fusion {
                Fusion::Convex => {
                    let similarities: HashMap<&ItemKey, f32> = found
                        .iter()
                        .filter_map(|(key, (_, v))| Some((key, similarity_of(v)?)))
                        .collect();
                    convex(
                        &[vector_list, word_list],
                        &weights,
                        |list, key| match list {
                            0 => similarities.get(key).copied().unwrap_or(0.0).max(0.0),
                            _ => shares
                                .get(key)
                                .copied()
                                .unwrap_or(0.0)
                                .powi(MATCH_SHARE_EXPONENT),
                        },
                    )
                }
                Fusion::Rrf => {
                    // Each retriever's best k only (Elasticsearch's rank_window_size
                    // default): deeper ranks carry little evidence, but anything in both
                    // deep lists would outrank what one retriever placed first.
                    vector_list.truncate(k);
                    word_list.truncate(k);
                    rrf_weighted(&[vector_list, word_list], &weights)
                }
            };
            let fused = match &adjust {
                Some(a) => a.apply(fused, |key| {
                    found.get(key).map(|(item, _)| match item {
                        RecallItem::Memory(r) => (r.importance, r.created_at_ms),
                        RecallItem::Message(m) => (semantic::DEFAULT_IMPORTANCE, m.created_at_ms),
                    })
                }),
                None => fused,
            };
            let mut hits = Vec::new();
            for (key, score, from) in fused {
                let bm25 = shares.get(&key).copied();
                let Some((item, vector)) = found.remove(&key) else {
                    continue;
                };
                let similarity = similarity_of(&vector);
                if req.min_score != 0.0 && similarity.is_none_or(|s| s < req.min_score) {
                    continue;
                }
                hits.push(RecallHit {
                    item,
                    score,
                    similarity,
                    bm25,
                    retrievers: from
                        .into_iter()
                        .map(|i| [Retriever::Vector, Retriever::Bm25][i])
                        .collect(),
                });
                if hits.len() == k {
                    break;
                }
            }
            if hits.len() == k || exhausted || fetch >= MAX_FETCH {
                return Ok(hits);
            }
            // Filters dropped candidates: look further down both lists.
            fetch = (fetch * OVERFETCH).min(MAX_FETCH);
        }
    }

    /// Full-text search over every kind, with the vector hits of semantic memories and
    /// conversation messages fused in when the request admits them and a model is configured.
    pub async fn search(
        &self,
        tenant: &str,
        req: &SearchRequest,
        mode: RecallMode,
    ) -> Result<Vec<FusedHit>, NexusError> {
        let limit = self.fulltext.validate(req)?;
        if mode == RecallMode::Vector && !self.semantic() {
            return Err(NexusError::precondition(
                "mode",
                "needs an embedding model, and this node has none (see `nexus model pull` and [embedding])",
            ));
        }
        let read_index = self.node.read_barrier(req.consistency).await?;
        let wait_for = (req.consistency == ReadConsistency::Linearizable).then_some(read_index);
        let wants = |k: HitKind| req.kinds.is_empty() || req.kinds.contains(&k);
        // Conversation filters exclude memories, a namespace excludes messages. A query that
        // uses the query language ("phrases", +required, -excluded, field:value) asks for
        // exact matches, which nearest neighbours would dilute: words only.
        let mut vector_kinds = Vec::new();
        if mode == RecallMode::Bm25 || (mode == RecallMode::Hybrid && uses_query_syntax(&req.query))
        {
            return Ok(self
                .fulltext
                .search_at(tenant, req, limit, wait_for)
                .await?
                .into_iter()
                .map(|hit| FusedHit {
                    hit,
                    retrievers: vec![Retriever::Bm25],
                })
                .collect());
        }
        if wants(HitKind::Semantic) && req.conversation_id.is_empty() && req.role.is_empty() {
            vector_kinds.push(PointKind::Memory);
        }
        if wants(HitKind::Message) && req.namespace.is_empty() {
            vector_kinds.push(PointKind::Message);
        }
        let words = if mode == RecallMode::Vector {
            Vec::new()
        } else {
            self.fulltext
                .search_at(tenant, req, limit, wait_for)
                .await?
        };
        let query_vector = if vector_kinds.is_empty() {
            None
        } else {
            self.embed_query(&req.query).await?
        };
        let Some(q) = query_vector else {
            return Ok(words
                .into_iter()
                .map(|hit| FusedHit {
                    hit,
                    retrievers: vec![Retriever::Bm25],
                })
                .collect());
        };
        let filter = VectorFilter {
            kind: (vector_kinds.len() == 1).then(|| vector_kinds[0]),
            scope: [&req.namespace, &req.conversation_id]
                .into_iter()
                .find(|s| !s.is_empty())
                .cloned(),
            since_ms: req.since_ms,
            until_ms: req.until_ms,
        };
        let near = self.nearest(tenant, &q, limit, &filter, wait_for).await?;

        #[derive(Clone, PartialEq, Eq, Hash)]
        enum Key {
            Memory(String, String),
            Message(String),
            Semantic(u64),
        }
        let key_of = |item: &HitItem| match item {
            HitItem::Memory(m) => Key::Memory(m.namespace.clone(), m.key.clone()),
            HitItem::Message(m) => Key::Message(m.id.clone()),
            HitItem::Semantic(r) => Key::Semantic(r.seq),
        };
        let mut by_key: HashMap<Key, Hit> = HashMap::new();
        let mut word_list = Vec::new();
        for h in words {
            let key = key_of(&h.item);
            word_list.push(key.clone());
            by_key.insert(key, h);
        }
        let store = &self.node.store;
        let mut vector_list = Vec::new();
        for h in near {
            let item = match h.kind {
                PointKind::Memory => semantic::read(store, tenant, h.seq)?.map(HitItem::Semantic),
                PointKind::Message => match conversations::read_vector(store, tenant, h.seq)? {
                    Some(v) => conversations::read_message(store, tenant, &v.message_id)?
                        .filter(|m| req.role.is_empty() || m.role == req.role)
                        .map(HitItem::Message),
                    None => None,
                },
            };
            let Some(item) = item else { continue };
            let key = key_of(&item);
            if !by_key.contains_key(&key) {
                let text = match &item {
                    HitItem::Semantic(r) => r.text.as_str(),
                    HitItem::Message(m) => m.content.as_str(),
                    HitItem::Memory(_) => unreachable!("kv memories have no vectors"),
                };
                by_key.insert(
                    key.clone(),
                    Hit {
                        score: 0.0,
                        match_share: 0.0,
                        snippet: snippet(text),
                        highlights: Vec::new(),
                        item,
                    },
                );
            }
            vector_list.push(key);
        }
        Ok(rrf_weighted(&[vector_list, word_list], &self.weights)
            .into_iter()
            .take(limit)
            .filter_map(|(key, score, from)| {
                let mut hit = by_key.remove(&key)?;
                hit.score = score;
                Some(FusedHit {
                    hit,
                    retrievers: from
                        .into_iter()
                        .map(|i| [Retriever::Vector, Retriever::Bm25][i])
                        .collect(),
                })
            })
            .collect())
    }
}

/// Whether a search query uses the query language: quotes, a leading `+` or `-`, or
/// `field:value`.
pub fn uses_query_syntax(query: &str) -> bool {
    query.contains('"')
        || query.split_whitespace().any(|w| {
            w.starts_with('+')
                || (w.starts_with('-') && w.len() > 1)
                || w.trim_end_matches(':').contains(':')
        })
}

/// What a recall hit is, for fusing the two retrievers' lists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ItemKey {
    Memory(u64),
    Message(String),
}

impl ItemKey {
    fn of(item: &RecallItem) -> Self {
        match item {
            RecallItem::Memory(r) => ItemKey::Memory(r.seq),
            RecallItem::Message(m) => ItemKey::Message(m.id.clone()),
        }
    }
}

/// The sources a recall covers, checked against its scope filters.
fn recall_sources(req: &RecallRequest) -> Result<Vec<PointKind>, NexusError> {
    let mut sources: Vec<PointKind> = if req.sources.is_empty() {
        vec![PointKind::Memory, PointKind::Message]
    } else {
        let mut s = req.sources.clone();
        s.sort_by_key(|k| *k as u8);
        s.dedup();
        s
    };
    match (req.namespace.is_empty(), req.conversation_id.is_empty()) {
        (false, false) => Err(NexusError::invalid(
            "conversation_id",
            "cannot be combined with namespace: memories have namespaces, messages conversations",
        )),
        (false, true) => {
            if !sources.contains(&PointKind::Memory) {
                return Err(NexusError::invalid(
                    "namespace",
                    "applies to memories, and the sources exclude them",
                ));
            }
            sources.retain(|k| *k == PointKind::Memory);
            Ok(sources)
        }
        (true, false) => {
            if !sources.contains(&PointKind::Message) {
                return Err(NexusError::invalid(
                    "conversation_id",
                    "applies to messages, and the sources exclude them",
                ));
            }
            sources.retain(|k| *k == PointKind::Message);
            Ok(sources)
        }
        (true, true) => Ok(sources),
    }
}

/// Whether an item's metadata holds every pair the request asks for (a message's metadata
/// is a JSON object: its string values count).
fn has_metadata(item: &RecallItem, req: &RecallRequest) -> bool {
    if req.metadata.is_empty() {
        return true;
    }
    match item {
        RecallItem::Memory(r) => req
            .metadata
            .iter()
            .all(|(k, v)| r.metadata.get(k) == Some(v)),
        RecallItem::Message(m) => {
            let Ok(serde_json::Value::Object(object)) = serde_json::from_str(&m.metadata) else {
                return false;
            };
            req.metadata
                .iter()
                .all(|(k, v)| object.get(k).and_then(|x| x.as_str()) == Some(v.as_str()))
        }
    }
}

/// The first 200 characters of a text, cut at a character boundary.
fn snippet(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((i, _)) => text[..i].to_string(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_drop_the_words_of_the_question() {
        assert_eq!(
            keywords("When does her plane depart for Portugal?"),
            "plane depart Portugal"
        );
        assert_eq!(keywords("what is it?"), "what is it?");
        assert_eq!(keywords("Maria's flight"), "Maria's flight");
    }

    #[test]
    fn query_syntax_is_recognised() {
        for q in [
            "\"launch deadline\"",
            "+launch",
            "deadline -march",
            "role:user hi",
        ] {
            assert!(uses_query_syntax(q), "{q}");
        }
        for q in ["launch deadline", "when is it? - soon", "note:", "a-b"] {
            assert!(!uses_query_syntax(q), "{q}");
        }
    }

    #[test]
    fn snippets_cut_at_characters() {
        let s = "é".repeat(300);
        assert_eq!(snippet(&s).chars().count(), 200);
        assert_eq!(snippet("short"), "short");
    }
}
