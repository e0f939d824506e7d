//! Running a search: the tantivy query a request makes (tenant, kinds, scope, time range and
//! the parsed query text), and its hits re-read from the state machine.

use super::schema::*;
use super::*;

pub(super) struct QueryParts {
    pub(super) index: Index,
    pub(super) reader: IndexReader,
    pub(super) fields: Fields,
    pub(super) store: Store,
}

impl QueryParts {
    pub(super) fn run_query(
        &self,
        tenant: &str,
        req: &SearchRequest,
        limit: usize,
    ) -> Result<Vec<Hit>, NexusError> {
        let f = &self.fields;
        let mut tokenizer = self
            .index
            .tokenizer_for_field(f.body)
            .map_err(NexusError::internal)?;
        let parsed = crate::search::query::build(&req.query, f.body, &mut tokenizer)?;
        let text_query = parsed.query;
        // Filters score nothing: a hit's score is its text's BM25 alone (a scoring tenant or
        // kind term would add an idf that depends on how many items each has).
        let term = |field: Field, value: &str| -> Box<dyn Query> {
            Box::new(ConstScoreQuery::new(
                Box::new(TermQuery::new(
                    Term::from_field_text(field, value),
                    IndexRecordOption::Basic,
                )),
                0.0,
            ))
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![
            (Occur::Must, text_query.box_clone()),
            (Occur::Must, term(f.tenant, tenant)),
        ];
        let kinds: BTreeSet<HitKind> = req.kinds.iter().copied().collect();
        if !kinds.is_empty() {
            let any: Vec<(Occur, Box<dyn Query>)> = kinds
                .iter()
                .map(|k| {
                    let name = match k {
                        HitKind::Memory => KIND_MEMORY,
                        HitKind::Message => KIND_MESSAGE,
                        HitKind::Semantic => KIND_SEMANTIC,
                    };
                    (Occur::Should, term(f.kind, name))
                })
                .collect();
            clauses.push((Occur::Must, Box::new(BooleanQuery::new(any))));
        }
        if !req.namespace.is_empty() {
            clauses.push((Occur::Must, term(f.namespace, &req.namespace)));
        }
        if !req.conversation_id.is_empty() {
            clauses.push((Occur::Must, term(f.conversation, &req.conversation_id)));
        }
        if !req.role.is_empty() {
            clauses.push((Occur::Must, term(f.role, &req.role)));
        }
        if req.since_ms != 0 || req.until_ms != 0 {
            let lower = if req.since_ms != 0 {
                Bound::Included(Term::from_field_i64(f.ts, req.since_ms))
            } else {
                Bound::Unbounded
            };
            let upper = if req.until_ms != 0 {
                Bound::Excluded(Term::from_field_i64(f.ts, req.until_ms))
            } else {
                Bound::Unbounded
            };
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(
                    Box::new(RangeQuery::new(lower, upper)),
                    0.0,
                )),
            ));
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let full_match =
            full_match_score(&searcher, &parsed.scoring).map_err(NexusError::internal)?;
        let top = searcher
            .search(
                &query,
                &TopDocs::with_limit(limit + OVERFETCH).order_by_score(),
            )
            .map_err(NexusError::internal)?;
        let mut snippets = SnippetGenerator::create(&searcher, &*text_query, f.body)
            .map_err(NexusError::internal)?;
        snippets.set_max_num_chars(SNIPPET_CHARS);
        let mut hits = Vec::with_capacity(limit);
        for (score, address) in top {
            if hits.len() == limit {
                break;
            }
            let doc: TantivyDocument = searcher.doc(address).map_err(NexusError::internal)?;
            let text = |field: Field| {
                doc.get_first(field)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let item = match text(f.kind).as_str() {
                KIND_MEMORY => {
                    let (namespace, key) = (text(f.namespace), text(f.key));
                    match kv::read(&self.store, tenant, &namespace, &key)? {
                        Some(record) => HitItem::Memory(MemoryItem {
                            namespace,
                            key,
                            record,
                        }),
                        None => continue,
                    }
                }
                KIND_MESSAGE => {
                    match conversations::read_message(&self.store, tenant, &text(f.message_id))? {
                        Some(m) => HitItem::Message(m),
                        None => continue,
                    }
                }
                KIND_SEMANTIC => {
                    let Ok(seq) = text(f.key).parse::<u64>() else {
                        continue;
                    };
                    match semantic::read(&self.store, tenant, seq)? {
                        Some(r) => HitItem::Semantic(r),
                        None => continue,
                    }
                }
                _ => continue,
            };
            let snippet = snippets.snippet(&text(f.body));
            hits.push(Hit {
                score,
                match_share: if full_match > 0.0 {
                    (score / full_match).min(1.0)
                } else {
                    0.0
                },
                snippet: snippet.fragment().to_string(),
                highlights: snippet
                    .highlighted()
                    .iter()
                    .map(|r| (r.start, r.end))
                    .collect(),
                item,
            });
        }
        Ok(hits)
    }
}

/// What an item scores that holds each of `terms` once and is of average length: the sum of
/// their BM25 idf. (tantivy weighs a term idf·(k1 + 1) and one occurrence at the average
/// length by 1 / (k1 + 1).) A hit's score over it is the share of the query's weight it
/// matched: 1 for all of it, little for one common word, whatever the index's size, so it
/// can be set against a cosine similarity (see `search::recall`).
pub(super) fn full_match_score(searcher: &Searcher, terms: &[Term]) -> tantivy::Result<f32> {
    let docs: u64 = searcher
        .segment_readers()
        .iter()
        .map(|s| u64::from(s.max_doc()))
        .sum();
    let mut sum = 0.0;
    for t in terms {
        let df = searcher.doc_freq(t)?.min(docs);
        sum += (1.0 + ((docs - df) as f32 + 0.5) / (df as f32 + 0.5)).ln();
    }
    Ok(sum)
}
