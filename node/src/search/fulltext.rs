//! The full-text (BM25) index of memories and messages, built with tantivy.
//!
//! It is derived state: the indexer thread follows the state machine's applied index, reads
//! the committed entries from the Raft log, and re-indexes whatever each entry touched from the
//! state machine's current state (so re-indexing an entry twice is harmless). Every tantivy
//! commit carries the last log index it contains as its payload: that is the watermark a
//! restarted node resumes from. When the log no longer holds the entries after the watermark
//! (compacted into a snapshot) or a snapshot replaced the state, the index is rebuilt from
//! the state machine.
//!
//! Hits are checked against the state machine before they are returned, so a memory that
//! expired or was deleted after it was indexed is never shown.

use std::collections::{BTreeSet, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::EntryPayload;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, Value, FAST, INDEXED, STORED, STRING, TEXT,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use tokio::sync::watch;

use crate::cluster::follower::{LogFollower, Next};
use crate::cluster::ReadConsistency;
use crate::command::{Cluster, Nexus, Op};
use crate::config::SearchConfig;
use crate::error::NexusError;
use crate::iam::IamOp;
use crate::memory::conversations::{self, ConversationOp, MessageRecord};
use crate::memory::kv::{self, MemoryItem, MemoryRecord};
use crate::memory::semantic::{self, SemanticOp, SemanticRecord};
use crate::observe::metrics;
use crate::store::{codec, keys, Store, StoreError, CF_KV, CF_MESSAGES, CF_SEMANTIC};

/// Entries read from the log per indexing step.
const INDEX_BATCH_ENTRIES: u64 = 2_000;
/// How long new entries wait to be indexed together when no search asks for them.
const INDEX_DELAY: Duration = Duration::from_millis(50);
/// How often the indexer thread looks at its stop flag while idle.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Characters of a snippet.
const SNIPPET_CHARS: usize = 200;
/// Extra hits fetched beyond the limit, to make up for stale hits that are skipped.
const OVERFETCH: usize = 16;

const KIND_MEMORY: &str = "memory";
const KIND_MESSAGE: &str = "message";
const KIND_SEMANTIC: &str = "semantic";
const SEP: char = '\u{1f}';

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HitKind {
    Memory,
    Message,
    Semantic,
}

#[derive(Debug, Default, Clone)]
pub struct SearchRequest {
    pub query: String,
    /// Empty = every kind.
    pub kinds: Vec<HitKind>,
    pub namespace: String,
    pub conversation_id: String,
    pub role: String,
    pub since_ms: i64,
    pub until_ms: i64,
    pub limit: u32,
    pub consistency: ReadConsistency,
}

#[derive(Debug, Clone)]
pub enum HitItem {
    Memory(MemoryItem),
    Message(MessageRecord),
    Semantic(SemanticRecord),
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub score: f32,
    pub snippet: String,
    /// Byte ranges of `snippet` that matched.
    pub highlights: Vec<(usize, usize)>,
    pub item: HitItem,
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    tenant: Field,
    kind: Field,
    namespace: Field,
    key: Field,
    conversation: Field,
    conversation_scope: Field,
    role: Field,
    message_id: Field,
    body: Field,
    ts: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED),
        tenant: b.add_text_field("tenant", STRING),
        kind: b.add_text_field("kind", STRING | STORED),
        namespace: b.add_text_field("namespace", STRING | STORED),
        key: b.add_text_field("key", STORED),
        conversation: b.add_text_field("conversation", STRING),
        conversation_scope: b.add_text_field("conversation_scope", STRING),
        role: b.add_text_field("role", STRING),
        message_id: b.add_text_field("message_id", STORED),
        body: b.add_text_field("body", TEXT | STORED),
        ts: b.add_i64_field("ts", INDEXED | FAST),
    };
    (b.build(), fields)
}

fn memory_doc_id(tenant: &str, namespace: &str, key: &str) -> String {
    format!("m{SEP}{tenant}{SEP}{namespace}{SEP}{key}")
}

fn message_doc_id(tenant: &str, message_id: &str) -> String {
    format!("g{SEP}{tenant}{SEP}{message_id}")
}

fn semantic_doc_id(tenant: &str, seq: u64) -> String {
    format!("s{SEP}{tenant}{SEP}{seq}")
}

fn conversation_scope(tenant: &str, conversation_id: &str) -> String {
    format!("{tenant}{SEP}{conversation_id}")
}

/// The searchable text of a memory: its key and every string (and object key) in its value.
fn memory_text(key: &str, value: &str) -> String {
    fn walk(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::String(s) => {
                out.push(' ');
                out.push_str(s);
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| {
                out.push(' ');
                out.push_str(k);
                walk(x, out)
            }),
            serde_json::Value::Number(n) => {
                out.push(' ');
                out.push_str(&n.to_string());
            }
            _ => {}
        }
    }
    let mut out = key.to_string();
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(v) => walk(&v, &mut out),
        Err(_) => {
            out.push(' ');
            out.push_str(value);
        }
    }
    out
}

pub struct FullTextIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    node: Arc<Cluster>,
    indexed: watch::Receiver<u64>,
    /// The highest log index a waiting search needs searchable: the indexer commits as soon
    /// as it has indexed that far, instead of waiting for its commit interval.
    wanted: watch::Sender<u64>,
    config: SearchConfig,
    max_limit: u32,
    stop: Arc<AtomicBool>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("search index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("search index: {0}")]
    Store(#[from] StoreError),
    #[error("search index: {0}")]
    Io(#[from] std::io::Error),
    #[error("search index directory: {0}")]
    OpenDir(#[from] tantivy::directory::error::OpenDirectoryError),
}

impl From<IndexError> for NexusError {
    fn from(e: IndexError) -> Self {
        NexusError::internal(e)
    }
}

impl FullTextIndex {
    /// Opens (or creates) the index in `dir` and starts the indexer thread.
    pub fn open(
        dir: &Path,
        node: Arc<Cluster>,
        config: SearchConfig,
        max_limit: u32,
    ) -> Result<Arc<Self>, IndexError> {
        std::fs::create_dir_all(dir)?;
        let (schema, fields) = schema();
        let directory = tantivy::directory::MmapDirectory::open(dir)?;
        let index = Index::open_or_create(directory, schema)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let watermark = index
            .load_metas()?
            .payload
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(0);
        tracing::info!(watermark, "opened full-text index");
        metrics::SEARCH_WATERMARK.set(watermark as i64);
        let (indexed_tx, indexed) = watch::channel(watermark);
        let (wanted, wanted_rx) = watch::channel(watermark);
        // One indexing thread: every thread makes a segment (with its own hash table, sized
        // from its share of the budget) per commit, and the merges that follow cost more than
        // a second thread saves on the small documents we index.
        let writer: IndexWriter =
            index.writer_with_num_threads(1, config.writer_memory_mb.max(15) << 20)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut indexer = Indexer {
            writer,
            reader: reader.clone(),
            fields,
            store: node.store.clone(),
            log: node
                .log_follower(watermark)
                .with_max_entries(INDEX_BATCH_ENTRIES),
            indexed: indexed_tx,
            wanted: wanted_rx,
            commit_interval: Duration::from_millis(config.commit_interval_ms),
            stop: stop.clone(),
        };
        let handle = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name("nexus-indexer".into())
            .spawn(move || {
                if let Err(e) = indexer.run(&handle) {
                    tracing::error!(error = %e, "full-text indexer stopped");
                }
            })?;
        Ok(Arc::new(Self {
            index,
            reader,
            fields,
            node,
            indexed,
            wanted,
            config,
            max_limit,
            stop,
            thread: std::sync::Mutex::new(Some(thread)),
        }))
    }

    /// Last log index the searchable index contains.
    pub fn watermark(&self) -> u64 {
        *self.indexed.borrow()
    }

    /// Stops the indexer after a final commit.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    pub async fn search(&self, tenant: &str, req: &SearchRequest) -> Result<Vec<Hit>, NexusError> {
        let limit = self.validate(req)?;
        let read_index = self.node.read_barrier(req.consistency).await?;
        let wait = (req.consistency == ReadConsistency::Linearizable).then_some(read_index);
        self.search_at(tenant, req, limit, wait).await
    }

    /// Checks a request; returns its limit.
    pub fn validate(&self, req: &SearchRequest) -> Result<usize, NexusError> {
        if req.query.trim().is_empty() {
            return Err(NexusError::invalid("query", "must not be empty"));
        }
        if req.query.len() > 4096 {
            return Err(NexusError::invalid("query", "is longer than 4096 bytes"));
        }
        crate::memory::validate::time_range(req.since_ms, req.until_ms)?;
        let limit = crate::memory::validate::count("limit", req.limit, 10, self.max_limit)?;
        if !req.namespace.is_empty() {
            crate::memory::validate::namespace("namespace", &req.namespace)?;
        }
        if !req.conversation_id.is_empty() {
            crate::memory::validate::conversation_id("conversation_id", &req.conversation_id)?;
        }
        if !req.role.is_empty() {
            crate::memory::validate::role("role", &req.role)?;
        }
        Ok(limit)
    }

    /// Runs a validated request after the caller's read barrier, first waiting until the index
    /// holds log index `wait_for` when given.
    pub async fn search_at(
        &self,
        tenant: &str,
        req: &SearchRequest,
        limit: usize,
        wait_for: Option<u64>,
    ) -> Result<Vec<Hit>, NexusError> {
        if let Some(index) = wait_for {
            self.wait_for(index).await?;
        }
        let this = self.clone_parts();
        let tenant = tenant.to_string();
        let req = req.clone();
        tokio::task::spawn_blocking(move || this.run_query(&tenant, &req, limit))
            .await
            .map_err(NexusError::internal)?
    }

    async fn wait_for(&self, index: u64) -> Result<(), NexusError> {
        if *self.indexed.borrow() >= index {
            return Ok(());
        }
        self.wanted.send_if_modified(|w| {
            let raise = *w < index;
            if raise {
                *w = index;
            }
            raise
        });
        super::wait_for_watermark(
            &self.indexed,
            index,
            Duration::from_millis(self.config.wait_timeout_ms),
            "search index",
        )
        .await
    }

    fn clone_parts(&self) -> QueryParts {
        QueryParts {
            index: self.index.clone(),
            reader: self.reader.clone(),
            fields: self.fields,
            store: self.node.store.clone(),
        }
    }
}

struct QueryParts {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    store: Store,
}

impl QueryParts {
    fn run_query(
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
        let text_query = super::query::build(&req.query, f.body, &mut tokenizer)?;
        let term = |field: Field, value: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, value),
                IndexRecordOption::Basic,
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
            clauses.push((Occur::Must, Box::new(RangeQuery::new(lower, upper))));
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
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

/// The indexer thread's state.
struct Indexer {
    writer: IndexWriter,
    reader: IndexReader,
    fields: Fields,
    store: Store,
    /// The indexed log position, and what comes after it.
    log: LogFollower<Nexus>,
    indexed: watch::Sender<u64>,
    wanted: watch::Receiver<u64>,
    commit_interval: Duration,
    stop: Arc<AtomicBool>,
}

impl Indexer {
    fn run(&mut self, rt: &tokio::runtime::Handle) -> Result<(), IndexError> {
        let mut pending = false;
        let mut last_commit = Instant::now();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                if pending {
                    self.commit()?;
                }
                return Ok(());
            }
            match self.log.step()? {
                Next::Rebuild(reason) => {
                    tracing::info!(
                        watermark = self.log.watermark(),
                        "{reason}: rebuilding the full-text index"
                    );
                    self.rebuild()?;
                    pending = false;
                    last_commit = Instant::now();
                    continue;
                }
                Next::CaughtUp => {}
                Next::Entries(entries) => {
                    self.index_entries(&entries)?;
                    pending = true;
                    if last_commit.elapsed() >= self.commit_interval || self.searcher_waits() {
                        self.commit()?;
                        pending = false;
                        last_commit = Instant::now();
                    }
                    continue;
                }
            }
            // Caught up. Commit what is pending when a search waits for it, or once the
            // interval has passed: a stream of writes with nobody searching does not commit
            // (a new segment, then merges) once per write.
            let wait = if pending {
                self.commit_interval.saturating_sub(last_commit.elapsed())
            } else {
                IDLE_POLL
            };
            if pending && (wait.is_zero() || self.searcher_waits()) {
                self.commit()?;
                pending = false;
                last_commit = Instant::now();
                continue;
            }
            let mut applied = self.log.applied();
            let mut wanted = self.wanted.clone();
            let _ = rt.block_on(async {
                tokio::time::timeout(wait, async {
                    tokio::select! {
                        // New entries are indexed a little later, in one batch with whatever
                        // follows, unless a search asks for them first: a thread wake-up (and
                        // one to tantivy's) per write would compete with the write path.
                        _ = async {
                            let _ = applied.changed().await;
                            tokio::time::sleep(INDEX_DELAY).await;
                        } => {}
                        _ = wanted.changed() => {}
                    }
                })
                .await
            });
        }
    }

    /// A search waits for an index this indexer has reached but not committed.
    fn searcher_waits(&mut self) -> bool {
        let wanted = *self.wanted.borrow_and_update();
        wanted > *self.indexed.borrow() && wanted <= self.log.watermark()
    }

    fn index_entries(
        &mut self,
        entries: &[crate::cluster::types::Entry<Nexus>],
    ) -> Result<(), IndexError> {
        let f = self.fields;
        let mut memories: Vec<(String, String, String)> = Vec::new();
        let mut messages: Vec<(String, String)> = Vec::new();
        let mut semantics: Vec<(String, u64)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for entry in entries {
            let EntryPayload::Normal(proposal) = &entry.payload else {
                continue;
            };
            for cmd in &proposal.commands {
                let tenant = &cmd.tenant;
                match cmd.op.inner() {
                    Op::Iam(IamOp::DeleteTenant) => {
                        // Deletions first, like a conversation's: the tenant's every document.
                        self.writer
                            .delete_term(Term::from_field_text(f.tenant, tenant));
                    }
                    Op::Iam(_) | Op::Secret(_) | Op::Audit(_) | Op::Audited { .. } => {}
                    Op::Kv(op) => {
                        for (ns, key) in op.touched() {
                            let id = memory_doc_id(tenant, ns, key);
                            if seen.insert(id) {
                                memories.push((tenant.clone(), ns.to_string(), key.to_string()));
                            }
                        }
                    }
                    Op::Conversation(ConversationOp::Delete { id }) => {
                        // Deletions first: every addition below reflects the current state.
                        self.writer.delete_term(Term::from_field_text(
                            f.conversation_scope,
                            &conversation_scope(tenant, id),
                        ));
                    }
                    Op::Conversation(op) => {
                        for m in op.appended() {
                            if seen.insert(message_doc_id(tenant, &m.id)) {
                                messages.push((tenant.clone(), m.id.clone()));
                            }
                        }
                    }
                    Op::Semantic(SemanticOp::Remember { id, .. }) => {
                        // Gone since: a later Forget in the log removes it.
                        if let Some(seq) = semantic::seq_of(&self.store, tenant, id)? {
                            if seen.insert(semantic_doc_id(tenant, seq)) {
                                semantics.push((tenant.clone(), seq));
                            }
                        }
                    }
                    Op::Semantic(SemanticOp::Forget { seq, .. }) => {
                        if seen.insert(semantic_doc_id(tenant, *seq)) {
                            semantics.push((tenant.clone(), *seq));
                        }
                    }
                }
            }
        }
        for (tenant, ns, key) in memories {
            self.writer.delete_term(Term::from_field_text(
                f.id,
                &memory_doc_id(&tenant, &ns, &key),
            ));
            let record: Option<MemoryRecord> = kv::read(&self.store, &tenant, &ns, &key)?;
            if let Some(record) = record {
                self.add_memory(&tenant, &ns, &key, &record)?;
            }
        }
        for (tenant, id) in messages {
            self.writer
                .delete_term(Term::from_field_text(f.id, &message_doc_id(&tenant, &id)));
            if let Some(m) = conversations::read_message(&self.store, &tenant, &id)? {
                self.add_message(&tenant, &m)?;
            }
        }
        for (tenant, seq) in semantics {
            self.writer
                .delete_term(Term::from_field_text(f.id, &semantic_doc_id(&tenant, seq)));
            if let Some(r) = semantic::read(&self.store, &tenant, seq)? {
                self.add_semantic(&tenant, &r)?;
            }
        }
        if let Some(last) = entries.last() {
            self.log.advance(last.log_id.index);
        }
        Ok(())
    }

    fn add_semantic(&self, tenant: &str, r: &SemanticRecord) -> Result<(), IndexError> {
        let f = self.fields;
        let mut body = r.text.clone();
        for v in r.metadata.values() {
            body.push(' ');
            body.push_str(v);
        }
        self.writer.add_document(doc!(
            f.id => semantic_doc_id(tenant, r.seq),
            f.tenant => tenant,
            f.kind => KIND_SEMANTIC,
            f.namespace => r.namespace.as_str(),
            f.key => r.seq.to_string(),
            f.body => body,
            f.ts => r.created_at_ms,
        ))?;
        Ok(())
    }

    fn add_memory(
        &self,
        tenant: &str,
        ns: &str,
        key: &str,
        r: &MemoryRecord,
    ) -> Result<(), IndexError> {
        let f = self.fields;
        self.writer.add_document(doc!(
            f.id => memory_doc_id(tenant, ns, key),
            f.tenant => tenant,
            f.kind => KIND_MEMORY,
            f.namespace => ns,
            f.key => key,
            f.body => memory_text(key, &r.value),
            f.ts => r.updated_at_ms,
        ))?;
        Ok(())
    }

    fn add_message(&self, tenant: &str, m: &MessageRecord) -> Result<(), IndexError> {
        let f = self.fields;
        self.writer.add_document(doc!(
            f.id => message_doc_id(tenant, &m.id),
            f.tenant => tenant,
            f.kind => KIND_MESSAGE,
            f.conversation => m.conversation_id.as_str(),
            f.conversation_scope => conversation_scope(tenant, &m.conversation_id),
            f.role => m.role.as_str(),
            f.message_id => m.id.as_str(),
            f.body => m.content.as_str(),
            f.ts => m.created_at_ms,
        ))?;
        Ok(())
    }

    /// Re-creates the index from a consistent view of the state machine.
    fn rebuild(&mut self) -> Result<(), IndexError> {
        let started = Instant::now();
        // Drop what was indexed since the last commit first: delete_all_documents removes
        // committed segments only, and documents still in the indexing pipeline would
        // survive it and be added again below (duplicate hits after a rebuild that starts
        // mid-batch, e.g. when a snapshot purges the log the indexer was working through).
        self.writer.rollback()?;
        self.writer.delete_all_documents()?;
        let view = self.log.rebuild_view()?;
        let db_snapshot = &view.snapshot;
        let mut docs = 0u64;
        for item in db_snapshot.iterator_cf(self.store.cf(CF_KV), rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(StoreError::from)?;
            let Some((tenant, ns, key)) = keys::parse_kv_key(&k) else {
                continue;
            };
            let record: MemoryRecord = codec::decode(&v).map_err(StoreError::from)?;
            if !record.is_expired(crate::memory::now_ms()) {
                self.add_memory(&tenant, &ns, &key, &record)?;
                docs += 1;
            }
        }
        for item in
            db_snapshot.iterator_cf(self.store.cf(CF_MESSAGES), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.map_err(StoreError::from)?;
            let Some(tenant) = keys::parse_tenant(&k) else {
                continue;
            };
            let m: MessageRecord = codec::decode(&v).map_err(StoreError::from)?;
            self.add_message(&tenant, &m)?;
            docs += 1;
        }
        for item in
            db_snapshot.iterator_cf(self.store.cf(CF_SEMANTIC), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.map_err(StoreError::from)?;
            let Some((tenant, _)) = keys::parse_semantic_key(&k) else {
                continue;
            };
            let r: SemanticRecord = codec::decode(&v).map_err(StoreError::from)?;
            self.add_semantic(&tenant, &r)?;
            docs += 1;
        }
        let index = view.index;
        drop(view);
        self.log.rebuilt(index);
        self.commit()?;
        tracing::info!(
            docs,
            watermark = index,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rebuilt the full-text index"
        );
        Ok(())
    }

    fn commit(&mut self) -> Result<(), IndexError> {
        let mut prepared = self.writer.prepare_commit()?;
        let watermark = self.log.watermark();
        prepared.set_payload(&watermark.to_string());
        prepared.commit()?;
        self.reader.reload()?;
        metrics::SEARCH_COMMITS.inc();
        metrics::SEARCH_WATERMARK.set(watermark as i64);
        self.indexed.send_replace(watermark);
        Ok(())
    }
}
