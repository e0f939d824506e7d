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

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, Value, FAST, INDEXED, STORED, STRING, TEXT,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::{
    doc, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term,
};
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

mod indexer;
mod query;
mod schema;

use indexer::{Indexer, INDEX_BATCH_ENTRIES};
use query::QueryParts;
use schema::{schema, Fields};

/// Characters of a snippet.
const SNIPPET_CHARS: usize = 200;
/// Extra hits fetched beyond the limit, to make up for stale hits that are skipped.
const OVERFETCH: usize = 16;

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
    /// BM25 score (0 for a hit that another retriever found).
    pub score: f32,
    /// The score over what an item holding every query term once would score, at most 1:
    /// how much of the query the hit matched (0 for a hit that another retriever found).
    pub match_share: f32,
    pub snippet: String,
    /// Byte ranges of `snippet` that matched.
    pub highlights: Vec<(usize, usize)>,
    pub item: HitItem,
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
