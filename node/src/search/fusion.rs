//! How hybrid retrieval fuses its two lists into one, and adjusts the result.
//!
//! Two fusions (`config::Fusion`), chosen per node (`search.hybrid_fusion`) or per request:
//! - **convex** (the default): a candidate's score is `w·cosine + (1 − w)·share³`, where
//!   the match share is its BM25 score over what an item holding every query word once would
//!   score (`fulltext::query::full_match_score`, at most 1), cubed (`MATCH_SHARE_EXPONENT`).
//!   Both parts are absolute, so a weak BM25 match (one common word) adds next to nothing and
//!   a full match of a rare name adds a lot, query by query; a candidate found by BM25 alone
//!   still gets its true cosine (its vector is read with it). Bruch et al. 2023 found a
//!   convex combination of normalized scores ahead of RRF; docs/benchmarks.md measures both
//!   on three query sets.
//! - **rrf**: reciprocal rank fusion (Cormack et al. 2009), the sum over the lists of
//!   weight / (60 + rank), over each list's best k.
//!
//! `Adjust` then adds importance and recency when a request asks.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;

use crate::error::NexusError;

/// Convex fusion counts a BM25 match by the cube of its match share: an item that matches
/// all of the query counts fully, one that matches a third of it (one word of three) 1/27.
/// Partial word matches are what misleads fusion: on the paraphrase set every BM25 hit is a
/// distractor sharing a word or two with the query. Chosen with the weight on the three sets
/// of docs/benchmarks.md, from a flat region (exponents 3 to 3.5, vector weights 0.65 to 0.8
/// within 0.004 of each other); a linear share at any weight lost to vectors alone on the
/// paraphrases or to BM25 on exact terms.
pub const MATCH_SHARE_EXPONENT: i32 = 3;
/// RRF's rank offset; 60 is the value of the original paper and of most engines since.
pub const RRF_K: f32 = 60.0;

/// Fuses ranked lists (best first) into one, best first, with each key's score and the
/// indexes of the lists that held it.
pub fn rrf<K: Clone + Eq + Hash>(lists: &[Vec<K>]) -> Vec<(K, f32, Vec<usize>)> {
    rrf_weighted(lists, &vec![1.0; lists.len()])
}

/// Weighted RRF: a key's score is the sum over lists of weight / (60 + rank).
pub fn rrf_weighted<K: Clone + Eq + Hash>(
    lists: &[Vec<K>],
    weights: &[f32],
) -> Vec<(K, f32, Vec<usize>)> {
    let mut fused: HashMap<K, (f32, Vec<usize>, usize)> = HashMap::new();
    let mut order = 0;
    for (list_no, list) in lists.iter().enumerate() {
        for (rank, key) in list.iter().enumerate() {
            let e = fused.entry(key.clone()).or_insert_with(|| {
                order += 1;
                (0.0, Vec::new(), order)
            });
            e.0 += weights[list_no] / (RRF_K + rank as f32 + 1.0);
            if !e.1.contains(&list_no) {
                e.1.push(list_no);
            }
        }
    }
    let mut out: Vec<(K, f32, Vec<usize>, usize)> = fused
        .into_iter()
        .map(|(k, (score, from, first))| (k, score, from, first))
        .collect();
    // Ties keep the order in which keys were first seen, so results are deterministic.
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.3.cmp(&b.3)));
    out.into_iter()
        .map(|(k, s, from, _)| (k, s, from))
        .collect()
}

/// Convex fusion: a key's score is the sum over lists of weight × `score(list, key)` (each
/// retriever's score for the key, 0 to 1, whether or not its list holds it), over every key
/// of every list; best first, with the indexes of the lists that held it. Ties keep the order
/// in which keys were first seen.
pub fn convex<K: Clone + Eq + Hash>(
    lists: &[Vec<K>],
    weights: &[f32],
    score: impl Fn(usize, &K) -> f32,
) -> Vec<(K, f32, Vec<usize>)> {
    let mut order: Vec<(K, Vec<usize>)> = Vec::new();
    let mut seen: HashMap<K, usize> = HashMap::new();
    for (list_no, list) in lists.iter().enumerate() {
        for key in list {
            match seen.entry(key.clone()) {
                Entry::Occupied(e) => {
                    let from = &mut order[*e.get()].1;
                    if !from.contains(&list_no) {
                        from.push(list_no);
                    }
                }
                Entry::Vacant(e) => {
                    e.insert(order.len());
                    order.push((key.clone(), vec![list_no]));
                }
            }
        }
    }
    let mut out: Vec<(K, f32, Vec<usize>)> = order
        .into_iter()
        .map(|(key, from)| {
            let s = weights
                .iter()
                .enumerate()
                .map(|(list, w)| w * score(list, &key))
                .sum();
            (key, s, from)
        })
        .collect();
    // A stable sort: ties stay in first-seen order.
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// Importance and recency in ranking, off unless a request asks (their weights are not
/// measured to help on the sets of docs/benchmarks.md, which hold no such signal): a hit's
/// score gains `importance_weight × importance + recency_weight × 0.5^(age / half-life)`,
/// as Park et al.'s generative agents rank memories by relevance, importance and recency.
pub struct Adjust {
    importance: f32,
    recency: f32,
    half_life_ms: f64,
    now_ms: i64,
}

const DEFAULT_HALF_LIFE_MS: i64 = 7 * 24 * 3600 * 1000;

impl Adjust {
    /// The adjustment a request asks for (None when both weights are 0), its fields checked.
    pub fn of(
        importance_weight: f32,
        recency_weight: f32,
        recency_half_life_ms: i64,
    ) -> Result<Option<Self>, NexusError> {
        for (field, w) in [
            ("importance_weight", importance_weight),
            ("recency_weight", recency_weight),
        ] {
            if !w.is_finite() || !(0.0..=1.0).contains(&w) {
                return Err(NexusError::invalid(
                    field,
                    format!("{w} is not a weight between 0 and 1"),
                ));
            }
        }
        let half_life_ms = match recency_half_life_ms {
            0 => DEFAULT_HALF_LIFE_MS,
            h if (60_000..=10 * 365 * 24 * 3600 * 1000).contains(&h) => h,
            h => {
                return Err(NexusError::invalid(
                    "recency_half_life_ms",
                    format!("{h} is not between a minute and ten years"),
                ))
            }
        };
        if importance_weight == 0.0 && recency_weight == 0.0 {
            return Ok(None);
        }
        Ok(Some(Self {
            importance: importance_weight,
            recency: recency_weight,
            half_life_ms: half_life_ms as f64,
            now_ms: crate::memory::now_ms(),
        }))
    }

    /// The fused list re-scored and re-ordered (stable: ties keep the fused order);
    /// `signals` gives a key's importance and creation time.
    pub fn apply<K>(
        &self,
        fused: Vec<(K, f32, Vec<usize>)>,
        signals: impl Fn(&K) -> Option<(f32, i64)>,
    ) -> Vec<(K, f32, Vec<usize>)> {
        let mut out: Vec<(K, f32, Vec<usize>)> = fused
            .into_iter()
            .map(|(key, score, from)| {
                let (importance, created) = signals(&key).unwrap_or((0.0, 0));
                let age = (self.now_ms - created).max(0) as f64;
                let fresh = 0.5f64.powf(age / self.half_life_ms) as f32;
                (
                    key,
                    score + self.importance * importance + self.recency * fresh,
                    from,
                )
            })
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrf_rewards_agreement_and_keeps_ties_stable() {
        let fused = rrf(&[vec!["a", "b", "c"], vec!["c", "d"]]);
        let keys: Vec<&str> = fused.iter().map(|(k, _, _)| *k).collect();
        // c is in both lists, so it beats a (first in one list only).
        assert_eq!(keys, vec!["c", "a", "b", "d"]);
        assert_eq!(fused[0].2, vec![0, 1]);
        assert!((fused[0].1 - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-6);
        // b and d have equal ranks (2nd); b was seen first.
        let tie = rrf(&[vec!["x", "b"], vec!["y", "d"]]);
        let keys: Vec<&str> = tie.iter().map(|(k, _, _)| *k).collect();
        assert_eq!(keys, vec!["x", "y", "b", "d"]);
        assert!(rrf::<u32>(&[vec![], vec![]]).is_empty());
    }

    #[test]
    fn weights_tilt_the_fusion() {
        let fused = rrf_weighted(&[vec!["v"], vec!["b"]], &[1.0, 0.5]);
        assert_eq!(fused[0].0, "v");
        let fused = rrf_weighted(&[vec!["v"], vec!["b"]], &[0.5, 1.0]);
        assert_eq!(fused[0].0, "b");
    }

    #[test]
    fn convex_fusion_adds_weighted_scores_over_every_candidate() {
        let sim = HashMap::from([("a", 0.9), ("b", 0.5), ("c", 0.4), ("d", 0.1)]);
        let share = HashMap::from([("c", 1.0), ("d", 0.2)]);
        let score = |list: usize, k: &&str| match list {
            0 => sim.get(k).copied().unwrap_or(0.0),
            _ => share.get(k).copied().unwrap_or(0.0),
        };
        let fused = convex(&[vec!["a", "b"], vec!["c", "d"]], &[0.5, 0.5], score);
        let keys: Vec<&str> = fused.iter().map(|(k, _, _)| *k).collect();
        // c: 0.5·0.4 + 0.5·1.0 = 0.7 beats a: 0.45; d (0.15) found by BM25 alone still gets
        // its similarity.
        assert_eq!(keys, vec!["c", "a", "b", "d"]);
        assert!((fused[0].1 - 0.7).abs() < 1e-6);
        assert!((fused[3].1 - 0.15).abs() < 1e-6);
        assert_eq!(fused[0].2, vec![1]);
        // All weight on vectors: the BM25 list only adds candidates.
        let fused = convex(&[vec!["a", "b"], vec!["c", "d"]], &[1.0, 0.0], score);
        let keys: Vec<&str> = fused.iter().map(|(k, _, _)| *k).collect();
        assert_eq!(keys, vec!["a", "b", "c", "d"]);
        // Keys in both lists are scored once and remember both.
        let fused = convex(&[vec!["a"], vec!["a"]], &[0.5, 0.5], |_, _| 1.0);
        assert_eq!(fused, vec![("a", 1.0, vec![0, 1])]);
    }

    #[test]
    fn importance_and_recency_reorder_only_when_asked() {
        let now = crate::memory::now_ms();
        let day = 24 * 3600 * 1000;
        // "old" is a bit more relevant; "new" is a week younger and more important.
        let signals = HashMap::from([
            ("old", (0.2, now - 14 * day)),
            ("new", (0.9, now - 7 * day)),
        ]);
        let fused = vec![("old", 0.60, vec![0]), ("new", 0.55, vec![0])];
        assert!(Adjust::of(0.0, 0.0, 0).unwrap().is_none());
        let by_importance = Adjust::of(0.1, 0.0, 0).unwrap().unwrap();
        let out = by_importance.apply(fused.clone(), |k| signals.get(k).copied());
        assert_eq!(out[0].0, "new");
        assert!((out[0].1 - (0.55 + 0.09)).abs() < 1e-4, "{out:?}");
        // A week's half-life (the default): 0.5 for "new", 0.25 for "old".
        let by_recency = Adjust::of(0.0, 0.4, 0).unwrap().unwrap();
        let out = by_recency.apply(fused, |k| signals.get(k).copied());
        assert_eq!(out[0].0, "new");
        assert!((out[0].1 - (0.55 + 0.2)).abs() < 1e-3, "{out:?}");
        assert!((out[1].1 - (0.60 + 0.1)).abs() < 1e-3, "{out:?}");
        for (importance, recency, half_life) in [
            (1.5, 0.0, 0),
            (0.0, -0.1, 0),
            (f32::NAN, 0.0, 0),
            (0.0, 0.0, 5),
        ] {
            assert!(Adjust::of(importance, recency, half_life).is_err());
        }
    }
}
