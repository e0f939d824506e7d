//! Vector indexes of semantic memories and conversation messages, and the indexer that feeds
//! them. Both kinds share a tenant's vector numbers (see `memory::conversations`), so a
//! (tenant, number) pair names one vector, and each point records its kind and scope (a
//! memory's namespace, a message's conversation) for filtered search.
//!
//! A [`VectorIndex`] is derived state, like the full-text index: the [`VectorIndexer`] thread
//! follows the state machine's applied index, reads the committed entries from the Raft log,
//! and hands the index what each entry changed, read back from the state machine (so applying
//! an entry twice is harmless). The index records the last log index it holds durably (its
//! watermark); a restarted node, or a remote index that was down, resumes from there. When the
//! log no longer holds the entries after the watermark, or a snapshot replaced the state, the
//! index is cleared and rebuilt from the state machine, which keeps every vector.
//!
//! When the index fails (a remote index is down), writes still succeed: the indexer keeps its
//! position, retries with backoff, and catches up when the index answers again.
//!
//! Backends: `local` (HNSW in process, usearch, persisted under the data directory) and
//! `qdrant` (a Qdrant collection over gRPC).

pub mod local;
pub mod qdrant;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cluster::follower::{LogFollower, Next};
use crate::command::{Nexus, Op};
use crate::error::NexusError;
use crate::iam::IamOp;
use crate::memory::conversations::{self, ConversationOp, MessageVector};
use crate::memory::semantic::{self, SemanticOp, SemanticRecord};
use crate::observe::metrics;
use crate::store::{codec, keys, Store, StoreError, CF_MESSAGE_VECTORS, CF_SEMANTIC};

/// Entries read from the log per indexing step.
const BATCH_ENTRIES: u64 = 1_000;
/// Records handed to the index per call during a rebuild.
const REBUILD_CHUNK: usize = 1_000;
/// How often the indexer looks at its stop flag while idle.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Backoff after a failing index call: first and longest wait.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// What a vector belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PointKind {
    /// A semantic memory; its scope is its namespace.
    Memory,
    /// A conversation message; its scope is its conversation id.
    Message,
}

impl PointKind {
    pub fn name(self) -> &'static str {
        match self {
            PointKind::Memory => "memory",
            PointKind::Message => "message",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "memory" => Some(PointKind::Memory),
            "message" => Some(PointKind::Message),
            _ => None,
        }
    }
}

/// One vector with what filters need.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorPoint {
    pub tenant: String,
    /// The tenant's vector number.
    pub seq: u64,
    pub kind: PointKind,
    /// A memory's namespace or a message's conversation id.
    pub scope: String,
    pub created_at_ms: i64,
    pub vector: Vec<f32>,
}

impl VectorPoint {
    fn of_memory(tenant: &str, r: &SemanticRecord) -> Self {
        VectorPoint {
            tenant: tenant.to_string(),
            seq: r.seq,
            kind: PointKind::Memory,
            scope: r.namespace.clone(),
            created_at_ms: r.created_at_ms,
            vector: r.embedding.clone(),
        }
    }

    fn of_message(tenant: &str, v: &MessageVector) -> Self {
        VectorPoint {
            tenant: tenant.to_string(),
            seq: v.seq,
            kind: PointKind::Message,
            scope: v.conversation_id.clone(),
            created_at_ms: v.created_at_ms,
            vector: v.embedding.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum VectorChange {
    Upsert(VectorPoint),
    Delete {
        tenant: String,
        seq: u64,
    },
    /// Every point of this kind and scope (a deleted conversation's messages).
    DeleteScope {
        tenant: String,
        kind: PointKind,
        scope: String,
    },
    /// Every point of a deleted tenant.
    DeleteTenant {
        tenant: String,
    },
}

/// Restricts a search; empty fields restrict nothing.
#[derive(Debug, Default, Clone)]
pub struct VectorFilter {
    pub kind: Option<PointKind>,
    /// Only this scope (with `kind`: a namespace of memories, a conversation of messages).
    pub scope: Option<String>,
    /// Created at or after (0 = unbounded).
    pub since_ms: i64,
    /// Created before (0 = unbounded).
    pub until_ms: i64,
}

impl VectorFilter {
    pub fn accepts(&self, kind: PointKind, scope: &str, created_at_ms: i64) -> bool {
        self.kind.is_none_or(|k| k == kind)
            && self.scope.as_deref().is_none_or(|s| s == scope)
            && (self.since_ms == 0 || created_at_ms >= self.since_ms)
            && (self.until_ms == 0 || created_at_ms < self.until_ms)
    }

    /// Whether the filter lets every point through.
    pub fn is_empty(&self) -> bool {
        self.kind.is_none() && self.scope.is_none() && self.since_ms == 0 && self.until_ms == 0
    }
}

/// A nearest neighbour: its vector number and kind, and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VectorHit {
    pub seq: u64,
    pub kind: PointKind,
    pub similarity: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("vector index unavailable: {0}")]
    Unavailable(String),
    #[error("vector index: {0}")]
    Failed(String),
    #[error("vector index: {0}")]
    Store(#[from] StoreError),
    #[error("vector index I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<VectorError> for NexusError {
    fn from(e: VectorError) -> Self {
        match e {
            VectorError::Unavailable(m) => {
                NexusError::unavailable(format!("vector index unavailable: {m}"))
            }
            other => NexusError::internal(other),
        }
    }
}

/// A vector index of every tenant's semantic memories. Every search is scoped to one tenant.
///
/// `search` is what requests call: async, so a remote backend (Qdrant) awaits its client on
/// the request's task and a local one runs its CPU-bound search on the blocking pool. The
/// rest is the indexer's (`VectorIndexer`), which runs on a thread of its own and may block
/// it (a remote backend waits there for its server, within its timeout).
#[tonic::async_trait]
pub trait VectorIndex: Send + Sync {
    /// `local` or `qdrant`.
    fn backend(&self) -> &'static str;
    /// The last log index whose changes the index holds durably (0 when empty).
    fn durable_watermark(&self) -> Result<u64, VectorError>;
    /// Applies the changes of the log entries up to `upto`, in order. Applying them again is
    /// harmless. Once this returns Ok they are searchable.
    fn apply(&self, changes: &[VectorChange], upto: u64) -> Result<(), VectorError>;
    /// Makes what `apply` did durable, with its watermark.
    fn persist(&self) -> Result<(), VectorError>;
    /// Removes every vector and resets the watermark to 0, before a rebuild from the state
    /// machine.
    fn clear(&self) -> Result<(), VectorError>;
    /// The `k` nearest vectors of `tenant` to `query` (unit length) that pass `filter`.
    async fn search(
        &self,
        tenant: &str,
        query: &[f32],
        k: usize,
        filter: &VectorFilter,
    ) -> Result<Vec<VectorHit>, VectorError>;
}

/// What the log entries in `entries` changed, as the state machine holds it now.
pub fn changes_of(
    store: &Store,
    entries: &[crate::cluster::types::Entry<Nexus>],
) -> Result<Vec<VectorChange>, StoreError> {
    // The last change per vector wins; order is kept for the rest. Scope deletions are kept
    // in place, so that what they delete is what came before them.
    let mut out: Vec<VectorChange> = Vec::new();
    let mut at: HashMap<(String, u64), usize> = HashMap::new();
    let mut push = |change: VectorChange, out: &mut Vec<VectorChange>| {
        let key = match &change {
            VectorChange::Upsert(p) => (p.tenant.clone(), p.seq),
            VectorChange::Delete { tenant, seq } => (tenant.clone(), *seq),
            VectorChange::DeleteScope { .. } | VectorChange::DeleteTenant { .. } => {
                out.push(change);
                return;
            }
        };
        match at.get(&key) {
            Some(&i) => out[i] = change,
            None => {
                at.insert(key, out.len());
                out.push(change);
            }
        }
    };
    for cmd in crate::cluster::follower::commands(entries) {
        let tenant = &cmd.tenant;
        match cmd.op.inner() {
            Op::Semantic(SemanticOp::Remember { id, .. } | SemanticOp::Embed { id, .. }) => {
                // Gone since (forgotten later): the later Forget removes it.
                let Some(seq) = semantic::seq_of(store, tenant, id)? else {
                    continue;
                };
                match semantic::read(store, tenant, seq)? {
                    Some(r) if !r.embedding.is_empty() => push(
                        VectorChange::Upsert(VectorPoint::of_memory(tenant, &r)),
                        &mut out,
                    ),
                    _ => {}
                }
            }
            Op::Semantic(SemanticOp::Forget { seq, .. }) => push(
                VectorChange::Delete {
                    tenant: tenant.clone(),
                    seq: *seq,
                },
                &mut out,
            ),
            Op::Conversation(ConversationOp::AppendWithVectors { messages, .. }) => {
                for m in messages {
                    // Gone since (conversation deleted later): that deletion removes it.
                    if let Some(v) = conversations::read_vector_of(store, tenant, &m.id)? {
                        push(
                            VectorChange::Upsert(VectorPoint::of_message(tenant, &v)),
                            &mut out,
                        );
                    }
                }
            }
            Op::Conversation(ConversationOp::EmbedMessages { items, .. }) => {
                for m in items {
                    if let Some(v) = conversations::read_vector_of(store, tenant, &m.message_id)? {
                        push(
                            VectorChange::Upsert(VectorPoint::of_message(tenant, &v)),
                            &mut out,
                        );
                    }
                }
            }
            Op::Conversation(ConversationOp::Delete { id }) => push(
                VectorChange::DeleteScope {
                    tenant: tenant.clone(),
                    kind: PointKind::Message,
                    scope: id.clone(),
                },
                &mut out,
            ),
            Op::Iam(IamOp::DeleteTenant) => push(
                VectorChange::DeleteTenant {
                    tenant: tenant.clone(),
                },
                &mut out,
            ),
            Op::Conversation(_)
            | Op::Kv(_)
            | Op::Iam(_)
            | Op::Secret(_)
            | Op::Audit(_)
            | Op::AuditTrim(_)
            | Op::Tool(_)
            | Op::Schedule(_)
            | Op::Workflow(_)
            | Op::Hook(_)
            | Op::Event(_)
            | Op::Audited { .. } => {}
        }
    }
    Ok(out)
}

/// Follows the applied log and keeps a [`VectorIndex`] up to date.
pub struct VectorIndexer {
    index: Arc<dyn VectorIndex>,
    indexed: watch::Receiver<u64>,
    wait_timeout: Duration,
    stop: Arc<AtomicBool>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl VectorIndexer {
    /// Starts the indexer thread. It resumes from the index's durable watermark, read by the
    /// thread itself, so that a remote index that is down does not hold up the node's start.
    /// `log` follows the group whose state the index reflects (`ClusterNode::log_follower`).
    pub fn start(
        index: Arc<dyn VectorIndex>,
        log: LogFollower<Nexus>,
        persist_interval: Duration,
        wait_timeout: Duration,
    ) -> Result<Arc<Self>, VectorError> {
        let (indexed_tx, indexed) = watch::channel(0);
        let stop = Arc::new(AtomicBool::new(false));
        let mut feeder = Feeder {
            index: index.clone(),
            store: log.store().clone(),
            log: log.with_max_entries(BATCH_ENTRIES),
            opened: false,
            indexed: indexed_tx,
            persist_interval,
            stop: stop.clone(),
        };
        let handle = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name("nexus-vectors".into())
            .spawn(move || feeder.run(&handle))?;
        Ok(Arc::new(Self {
            index,
            indexed,
            wait_timeout,
            stop,
            thread: std::sync::Mutex::new(Some(thread)),
        }))
    }

    pub fn index(&self) -> &Arc<dyn VectorIndex> {
        &self.index
    }

    /// The last log index the index holds (searchable, not necessarily durable yet).
    pub fn watermark(&self) -> u64 {
        *self.indexed.borrow()
    }

    /// Waits until the index holds log index `index`, or fails with Unavailable.
    pub async fn wait_for(&self, index: u64) -> Result<(), NexusError> {
        let what = format!("vector index ({})", self.index.backend());
        super::wait_for_watermark(&self.indexed, index, self.wait_timeout, &what).await
    }

    /// Stops the indexer after persisting what it holds.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

struct Feeder {
    index: Arc<dyn VectorIndex>,
    store: Store,
    /// The last log index applied to the index, and what comes after it.
    log: LogFollower<Nexus>,
    /// The index's durable watermark was read (the follower starts from it).
    opened: bool,
    indexed: watch::Sender<u64>,
    persist_interval: Duration,
    stop: Arc<AtomicBool>,
}

impl Feeder {
    fn run(&mut self, rt: &tokio::runtime::Handle) {
        let mut retry = RETRY_FIRST;
        let mut dirty = false;
        let mut last_persist = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            match self.step() {
                Ok(progressed) => {
                    retry = RETRY_FIRST;
                    dirty |= progressed;
                    if dirty && last_persist.elapsed() >= self.persist_interval {
                        match self.index.persist() {
                            Ok(()) => {
                                dirty = false;
                                last_persist = Instant::now();
                            }
                            Err(e) => tracing::warn!(error = %e, "persisting the vector index"),
                        }
                    }
                    if progressed {
                        continue;
                    }
                    self.log.wait(rt, IDLE_POLL);
                }
                Err(e) => {
                    metrics::VECTOR_INDEX_ERRORS.inc();
                    tracing::warn!(
                        error = %e,
                        position = self.log.watermark(),
                        retry_ms = retry.as_millis() as u64,
                        "vector index: will retry from the same position"
                    );
                    let deadline = Instant::now() + retry;
                    while Instant::now() < deadline && !self.stop.load(Ordering::Relaxed) {
                        std::thread::sleep(IDLE_POLL.min(retry));
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        if dirty {
            if let Err(e) = self.index.persist() {
                tracing::warn!(error = %e, "persisting the vector index at shutdown");
            }
        }
    }

    /// Does one unit of work; Ok(true) when it moved forward.
    fn step(&mut self) -> Result<bool, VectorError> {
        if !self.opened {
            let watermark = self.index.durable_watermark()?;
            tracing::info!(
                backend = self.index.backend(),
                watermark,
                "vector index opened; catching up from its watermark"
            );
            self.opened = true;
            self.advance(watermark);
            return Ok(true);
        }
        match self.log.step()? {
            Next::CaughtUp => Ok(false),
            Next::Rebuild(reason) => {
                tracing::info!(
                    position = self.log.watermark(),
                    "{reason}: rebuilding the vector index"
                );
                self.rebuild()?;
                Ok(true)
            }
            Next::Entries(entries) => {
                let last = entries
                    .last()
                    .map_or(self.log.watermark(), |e| e.log_id.index);
                let changes = changes_of(&self.store, &entries)?;
                self.index.apply(&changes, last)?;
                self.advance(last);
                Ok(true)
            }
        }
    }

    fn advance(&mut self, to: u64) {
        self.log.advance(to);
        metrics::VECTOR_WATERMARK.set(to as i64);
        self.indexed.send_replace(to);
    }

    /// Clears the index and loads every vector of a consistent view of the state machine.
    fn rebuild(&mut self) -> Result<(), VectorError> {
        let started = Instant::now();
        self.index.clear()?;
        let view = self.log.rebuild_view()?;
        let snapshot = &view.snapshot;
        let upto = view.index;
        let mut chunk = Vec::with_capacity(REBUILD_CHUNK);
        let mut count = 0u64;
        for cf in [CF_SEMANTIC, CF_MESSAGE_VECTORS] {
            for item in snapshot.iterator_cf(self.store.cf(cf), rocksdb::IteratorMode::Start) {
                let (k, v) = item.map_err(StoreError::from)?;
                let Some((tenant, _)) = keys::parse_semantic_key(&k) else {
                    continue;
                };
                let point = if cf == CF_SEMANTIC {
                    let r: SemanticRecord = codec::decode(&v).map_err(StoreError::from)?;
                    if r.embedding.is_empty() {
                        continue;
                    }
                    VectorPoint::of_memory(&tenant, &r)
                } else {
                    let m: MessageVector = codec::decode(&v).map_err(StoreError::from)?;
                    VectorPoint::of_message(&tenant, &m)
                };
                chunk.push(VectorChange::Upsert(point));
                count += 1;
                if chunk.len() == REBUILD_CHUNK {
                    // Watermark 0 until the last chunk: a crash halfway rebuilds again.
                    self.index.apply(&chunk, 0)?;
                    chunk.clear();
                }
            }
        }
        drop(view);
        self.index.apply(&chunk, upto)?;
        self.index.persist()?;
        self.log.rebuilt(upto);
        self.advance(upto);
        tracing::info!(
            vectors = count,
            watermark = upto,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rebuilt the vector index"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_accept_what_they_should() {
        let f = VectorFilter {
            kind: Some(PointKind::Memory),
            scope: Some("a".into()),
            since_ms: 10,
            until_ms: 20,
        };
        assert!(f.accepts(PointKind::Memory, "a", 10));
        assert!(!f.accepts(PointKind::Memory, "a", 20));
        assert!(!f.accepts(PointKind::Memory, "b", 15));
        assert!(!f.accepts(PointKind::Message, "a", 15));
        assert!(VectorFilter::default().accepts(PointKind::Message, "x", 0));
        assert!(VectorFilter::default().is_empty());
        assert!(!f.is_empty());
    }
}
