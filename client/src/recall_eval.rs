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

/// Quality of one mode over the set.
#[derive(Debug, Clone, Copy)]
pub struct Scores {
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    /// Mean reciprocal rank of the first relevant hit (within the first 10).
    pub mrr: f64,
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

/// Runs `queries` in `mode` and scores the hits.
pub async fn evaluate(
    client: &mut Client,
    queries: &[LabelledQuery],
    namespace: &str,
    ids: &HashMap<String, String>,
    mode: pb::RecallMode,
) -> Result<Scores, ClientError> {
    let (mut at5, mut at10, mut rr) = (0.0, 0.0, 0.0);
    for q in queries {
        let hits = client
            .memory
            .recall(pb::RecallRequest {
                query: q.query.clone(),
                k: 10,
                namespace: namespace.to_string(),
                mode: mode as i32,
                ..Default::default()
            })
            .await?
            .into_inner()
            .hits;
        let relevant: BTreeSet<&str> = q
            .relevant
            .iter()
            .filter_map(|r| ids.get(r).map(String::as_str))
            .collect();
        let ranks: Vec<usize> = hits
            .iter()
            .enumerate()
            .filter(|(_, h)| h.memory().is_some_and(|m| relevant.contains(m.id.as_str())))
            .map(|(i, _)| i + 1)
            .collect();
        let found = |k: usize| ranks.iter().filter(|&&r| r <= k).count() as f64;
        at5 += found(5) / relevant.len().max(1) as f64;
        at10 += found(10) / relevant.len().max(1) as f64;
        rr += ranks.first().map_or(0.0, |&r| 1.0 / r as f64);
    }
    let n = queries.len().max(1) as f64;
    Ok(Scores {
        recall_at_5: at5 / n,
        recall_at_10: at10 / n,
        mrr: rr / n,
    })
}
